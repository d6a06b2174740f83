"""Everything survives a restart on the same data directory; the admin key is shown once."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._poll import wait_until
from tests.e2e.conftest import StartServer, assert_no_secrets, key_traces, secret_of
from tests.services.conftest import service_doc

pytestmark = pytest.mark.e2e

COUNT = 100


def list_all(client: httpx.Client, limit: int = 30) -> list[dict[str, Any]]:
    """Every certificate, following ``next_cursor``."""
    items: list[dict[str, Any]] = []
    params: dict[str, str | int] = {"limit": limit}
    for _ in range(COUNT // limit + 5):
        response = client.get("/api/v1/certificates", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]
    raise AssertionError(f"pagination did not end after {len(items)} items")


def test_restart_keeps_certificates_and_admin_key(start_server: StartServer) -> None:
    first = start_server()
    admin_key = first.admin_key
    assert admin_key
    assert f"  {admin_key}\n" in first.logs()[0]
    issued: dict[str, str] = {}
    key_pems: list[str] = []
    with first.client(admin_key) as client:
        for n in range(COUNT):
            response = client.post(
                "/api/v1/certificates",
                json={
                    "issuer": "default",
                    "common_name": f"svc-{n}.example.com",
                    "dns_names": [f"svc-{n}.example.com"],
                    "validity": "30D",
                },
            )
            assert response.status_code == 201, response.text
            body = response.json()
            issued[body["id"]] = body["serial"]
            key_pems.append(body["private_key_pem"])
        before = list_all(client)
    assert len(issued) == COUNT
    assert {c["id"]: c["serial"] for c in before} == issued
    assert all("private_key_pem" not in c for c in before)
    # A graceful stop is the normal end of a server: exit 0, as with --workers above 1. Before,
    # one process died of the SIGTERM uvicorn re-raises (-15): `make run` said "Terminated".
    assert first.stop() == 0
    assert "Finished server process" in first.logs()[1]

    second = start_server(data_dir=first.data_dir)
    out, _ = second.logs()
    assert secret_of(admin_key) not in out
    assert "admin-api-key" in out
    assert second.admin_key == admin_key  # the file is unchanged
    with second.client(admin_key) as client:
        whoami = client.get("/api/v1/auth/whoami")
        assert whoami.status_code == 200, whoami.text
        assert whoami.json()["actor_id"] == "admin"
        after = list_all(client)
    assert {c["id"]: c["serial"] for c in after} == issued
    assert len(after) == COUNT

    secrets: list[str | bytes] = [admin_key, secret_of(admin_key)]
    secrets += [trace for pem in key_pems for trace in key_traces(pem)]
    stored = [c["serial"] for c in after]
    # Ctrl-C too (SIGINT): before, "certctl: error: interrupted" and exit 130.
    second.proc.send_signal(signal.SIGINT)
    second.exit_code = second.proc.wait(timeout=30)
    assert second.exit_code == 0
    assert "Finished server process" in second.logs()[1]
    assert "certctl: error" not in second.logs()[1]
    assert_no_secrets(first, secrets, first_start=True, stored=stored)
    assert_no_secrets(second, secrets, first_start=False, stored=stored)


@pytest.mark.parametrize(
    ("sig", "workers", "code", "said"),
    [
        (signal.SIGINT, 1, -signal.SIGINT, "second Ctrl-C: exiting without waiting"),
        (signal.SIGTERM, 1, 0, "SIGTERM during shutdown: exiting without waiting"),
        (signal.SIGTERM, 2, 0, "SIGTERM during shutdown: stopping the workers at once"),
    ],
    ids=["ctrl-c", "sigterm", "sigterm-workers"],
)
def test_a_second_stop_signal_ends_a_server_waiting_for_work_in_progress(
    start_server: StartServer,
    tmp_path: Path,
    sig: signal.Signals,
    workers: int,
    code: int,
    said: str,
) -> None:
    # Before: after the first stop signal stopped the listeners, the process waited for the
    # reload command a delivery was running (up to its reloadTimeout, 10 min at most), and
    # every later Ctrl-C or SIGTERM only asked again for the stop under way: nothing but
    # SIGKILL ended it. A second SIGTERM now ends it as the first would have (exit 0).
    server = start_server(config={"workers": workers, "reconcile-interval": "1s"})
    pid_file = tmp_path / "reload.pid"
    reload = f"sh -c 'echo $$ > {pid_file}; exec sleep 60'"
    target = {"directory": str(tmp_path / "out" / "web"), "reload": reload, "reloadTimeout": "2m"}
    with server.client(server.admin_key) as client:
        r = client.put("/api/v1/services/web", json=service_doc("web", targets=[target]))
        assert r.status_code == 201, r.text  # created
    try:
        wait_until(lambda: pid_file.is_file() and pid_file.read_text().strip() != "",
                   "the reload command to start", 20)  # fmt: skip
        server.proc.send_signal(sig)
        wait_until(lambda: server.logs()[1].count("Finished server process") == workers,
                   "the listeners to stop", 10)  # fmt: skip
        assert server.proc.poll() is None  # still waiting for the reload, as it should
        server.proc.send_signal(sig)
        server.exit_code = server.proc.wait(timeout=10)
        assert server.exit_code == code
        assert said in server.logs()[1]
    finally:
        with contextlib.suppress(ValueError, ProcessLookupError, FileNotFoundError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.parametrize(
    ("config", "signals", "said"),
    [
        ({}, 2, "SIGTERM while open requests drain: not waiting for them"),
        ({"http": {"shutdown-timeout": "1s"}}, 1, "timeout graceful shutdown exceeded"),
    ],
    ids=["second-sigterm", "shutdown-timeout"],
)
def test_a_stop_does_not_wait_for_ever_for_a_request_held_open(
    start_server: StartServer, config: dict[str, Any], signals: int, said: str
) -> None:
    # A client that sent a request's headers but not its body holds it open: uvicorn drains
    # open requests before the listeners count as stopped. Before, a second SIGTERM then was
    # ignored (uvicorn forces only on a second SIGINT) and nothing bounded the wait but
    # http.body-timeout (60 s; a slow response, nothing): only SIGKILL ended it sooner.
    import socket
    import ssl
    import time

    server = start_server(config=config)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with server.ssl_context().wrap_socket(raw, server_hostname="localhost") as held:
        held.sendall(
            b"POST /api/v1/auth/roles HTTP/1.1\r\nHost: localhost\r\n"
            + f"Authorization: Bearer {server.admin_key}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        time.sleep(0.2)  # the request reached the app, which waits for the rest of its body
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "Waiting for connections to close" in server.logs()[1],
                   "the listener to drain the held request", 10)  # fmt: skip
        time.sleep(0.2)
        assert server.proc.poll() is None  # it waits for the request, as it should
        if signals == 2:
            server.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        server.exit_code = server.proc.wait(timeout=10)
        assert time.monotonic() - started < 5
        assert server.exit_code == 0
        assert said in server.logs()[1]
        assert "Traceback" not in server.logs()[1]
        with contextlib.suppress(OSError, ssl.SSLError):
            held.recv(1)  # closed by the server (no answer due to a request never completed)


def test_a_stop_does_not_wait_for_idle_kept_alive_tls_clients(start_server: StartServer) -> None:
    # A client idle between requests on a kept-alive TLS connection (Prometheus between
    # scrapes, a pooled client) never answers the server's close_notify: each stop waited
    # for it the whole TLS shutdown timeout (http.handshake-timeout, 10 s), then exited.
    import socket
    import ssl
    import time

    server = start_server()
    held = []
    for _ in range(2):
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn = server.ssl_context().wrap_socket(raw, server_hostname="localhost")
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200 "), "no answer to /healthz"
        held.append(conn)  # kept open, and not read from again until the server is gone
    try:
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.exit_code = server.proc.wait(timeout=30)
        took = time.monotonic() - started
        assert server.exit_code == 0
        assert took < 5, f"the stop took {took:.1f} s with two idle clients"
        assert "Traceback" not in server.logs()[1]
        for conn in held:  # closed by the server: its close_notify (or the drop) is there
            with contextlib.suppress(OSError, ssl.SSLError):
                assert conn.recv(1) == b""
    finally:
        for conn in held:
            conn.close()


def test_one_stop_signal_stops_the_main_and_the_metrics_listener_at_once(
    start_server: StartServer,
) -> None:
    # uvicorn's listeners each install their signal handler, the last one (metrics) chaining
    # to the one it replaced only once it has drained. Before, a SIGTERM while a request held
    # the metrics listener open stopped only that one: the main listener went on accepting
    # API requests until metrics had drained (http.shutdown-timeout, 25 s).
    import socket
    import ssl
    import time

    from tests._tools import free_port

    server = start_server(config=lambda: {"metrics": {"listen": f"127.0.0.1:{free_port()}"}})
    metrics_port = server.configured_port("metrics.listen")
    raw = socket.create_connection(("127.0.0.1", metrics_port), timeout=5)
    with server.ssl_context().wrap_socket(raw, server_hostname="localhost") as held:
        held.sendall(
            b"GET /api/v1/metrics HTTP/1.1\r\nHost: localhost\r\n"
            + f"Authorization: Bearer {server.admin_key}\r\n".encode()
            + b"Content-Length: 100\r\n\r\n{"
        )
        time.sleep(0.2)  # the request reached the app
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "Waiting for connections to close" in server.logs()[1],
                   "the metrics listener to drain the held request", 10)  # fmt: skip

        def main_refuses() -> bool:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_until(main_refuses, "the main listener to stop accepting", 5)
        assert server.proc.poll() is None  # metrics still drains its request
        server.proc.send_signal(signal.SIGTERM)  # a second one: not waiting for it (Listener)
        server.exit_code = server.proc.wait(timeout=10)
        assert server.exit_code == 0
        assert "SIGTERM while open requests drain: not waiting for them" in server.logs()[1]
        assert "Traceback" not in server.logs()[1]
        with contextlib.suppress(OSError, ssl.SSLError):
            held.recv(1)
