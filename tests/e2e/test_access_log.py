"""The access log a real server writes: one line per request, whatever the client sends.

Operators grep it (``GET /api/v1/metrics/prometheus``) and ship it to log stores, so a client
must not be able to forge a line (``%0a`` in a path), put a key secret in it (a key pasted
where its id belongs), or turn an aborted upload into a traceback.
"""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest

from tests._poll import wait_until
from tests.e2e.conftest import CertctlServer, StartServer, secret_of

pytestmark = pytest.mark.e2e

ACCESS = " INFO certctl.access: "


def _access_lines(server: CertctlServer) -> list[str]:
    return [line for line in server.logs()[1].splitlines() if ACCESS in line]


def _wait_for_line(server: CertctlServer, fragment: str) -> str:
    def found() -> str | None:
        return next((line for line in _access_lines(server) if fragment in line), None)

    wait_until(lambda: found() is not None, f"an access-log line with {fragment!r}", 10)
    line = found()
    assert line is not None
    return line


def test_one_escaped_line_per_request_and_no_key_secret(start_server: StartServer) -> None:
    server = start_server()
    forged = "2026-12-03 03:30:00,000 INFO certctl.access: 127.0.0.1 DELETE /x 204 actor=admin"
    with server.client(server.admin_key) as client:
        assert client.get("/api/v1/metrics/prometheus").status_code == 200
        path = "/api/v1/issuers/x%0a" + forged.replace(" ", "%20") + "%00/ca.pem"
        assert client.get(path).status_code == 404
        # Spaces would let the path supply the status and actor a reader sees first.
        spoof = "/wp-login.php%20200%20actor=admin%200.1ms"
        assert client.get(spoof).status_code == 404
        r = client.delete(f"/api/v1/auth/apikeys/{server.admin_key}")
        assert r.status_code == 404
        # The key without its prefix, and with its id cut short: still a secret.
        bare = server.admin_key.removeprefix("cctl_")
        for pasted in (bare, bare[2:]):
            r = client.get(f"/api/v1/auth/apikeys/{pasted}")
            assert r.status_code == 404
            assert secret_of(server.admin_key) not in r.text
    # A line is written once its response has gone out: wait for the last request's.
    _wait_for_line(server, f"GET /api/v1/auth/apikeys/{server.admin_key.split('_')[1][2:]}_")
    lines = _access_lines(server)
    assert any(
        line.endswith("ms") and "127.0.0.1 GET /api/v1/metrics/prometheus 200 actor=admin" in line
        for line in lines
    )
    issuer_lines = [line for line in lines if "/api/v1/issuers/x" in line]
    assert len(issuer_lines) == 1
    assert "/api/v1/issuers/x\\n2026-12-03%2003:30:00,000%20INFO" in issuer_lines[0]
    assert "\\x00/ca.pem 404 actor=-" in issuer_lines[0]
    assert not any(line.startswith("2026-12-03 03:30:00,000") for line in lines)
    spoofed = [line for line in lines if "/wp-login.php" in line]
    assert len(spoofed) == 1
    assert " GET /wp-login.php%20200%20actor=admin%200.1ms 404 actor=- " in spoofed[0]
    assert " 200 actor=admin" not in spoofed[0]
    err = server.logs()[1]  # stdout has the first-start banner, which shows the key once
    assert "\x00" not in err
    assert secret_of(server.admin_key) not in err
    key_id = server.admin_key.split("_")[1]
    assert f"DELETE /api/v1/auth/apikeys/cctl_{key_id}_… 404 actor=admin" in err
    assert f"GET /api/v1/auth/apikeys/{key_id}_… 404 actor=admin" in err
    assert f"GET /api/v1/auth/apikeys/{key_id[2:]}_… 404 actor=admin" in err


def test_json_log_format_writes_one_object_per_line(start_server: StartServer) -> None:
    server = start_server(config={"log-format": "json"})
    with server.client(server.admin_key) as client:
        assert client.get("/api/v1/issuers/a%0ab/ca.pem").status_code == 404

    def entries() -> list[dict[str, object]]:
        lines = [line for line in server.logs()[1].splitlines() if line.strip()]
        return [json.loads(line) for line in lines]  # every line, uvicorn's and alembic's too

    def access() -> dict[str, object] | None:
        return next((e for e in entries() if "/api/v1/issuers/" in str(e.get("path"))), None)

    wait_until(lambda: access() is not None, "a JSON access-log line", 10)
    record = access()
    assert record is not None
    assert record["path"] == "/api/v1/issuers/a\\nb/ca.pem"
    assert (record["method"], record["status"], record["actor"]) == ("GET", 404, "-")
    assert record["client"] == "127.0.0.1"
    assert isinstance(record["duration_ms"], float)
    assert record["level"] == "INFO"
    assert {e["logger"] for e in entries()} >= {"certctl.access", "uvicorn.error"}


def test_a_client_gone_mid_body_is_one_line_not_a_traceback(start_server: StartServer) -> None:
    server = start_server()
    context = ssl.create_default_context(cafile=str(server.ca))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(
            b"POST /api/v1/certificates HTTP/1.1\r\nHost: localhost\r\n"
            + f"Authorization: Bearer {server.admin_key}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            + b'{"common_n'
        )
        time.sleep(0.3)  # the handler is now waiting for the other 90 bytes
    line = _wait_for_line(server, "POST /api/v1/certificates 499")
    assert "actor=admin" in line
    err = server.logs()[1]
    assert "client disconnected during POST /api/v1/certificates" in err
    assert "Traceback" not in err
    assert "ClientDisconnect" not in err
    with server.client(server.admin_key) as client:  # and the server serves on
        assert client.get("/api/v1/auth/whoami").status_code == 200
