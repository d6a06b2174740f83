"""The HTTPS listener seen by ``openssl s_client``: protocol floor, certificate, hostname."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests._tools import free_port, run
from tests.e2e.conftest import CertctlServer, StartServer, certctl_cli

pytestmark = pytest.mark.e2e


def s_client(port: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """One ``openssl s_client`` handshake (stdin closed, so it quits right after)."""
    return run("openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args, input="", timeout=20)


def established(result: subprocess.CompletedProcess[str], version: str) -> bool:
    """True when the handshake completed with protocol ``version`` (e.g. ``TLSv1.3``)."""
    line = re.search(r"^New, (\S+), Cipher is (\S+)$", result.stdout, re.M)
    return (
        result.returncode == 0
        and line is not None
        and line.group(1) == version
        and line.group(2) != "(NONE)"
    )


def verify_code(result: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"Verify return code: (\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return int(match.group(1))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("other-ca") / "ca"
    certctl_cli("ca", "create", "--out", out, "--cn", "certctl internal CA")
    return out / "ca.crt"


def test_tls11_is_refused(default_server: CertctlServer) -> None:
    old = s_client(default_server.port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert old.returncode != 0, old.stdout
    assert not established(old, "TLSv1.1"), old.stdout
    assert "Cipher is (NONE)" in old.stdout or "alert" in old.stderr, old.stdout + old.stderr
    # Twin: TLS 1.2 with a modern suite works on the default (min-version 1.2) listener.
    tls12 = s_client(default_server.port, "-tls1_2", "-CAfile", default_server.ca)
    assert established(tls12, "TLSv1.2"), tls12.stdout + tls12.stderr


def test_server_certificate_verifies_against_the_ca(default_server: CertctlServer) -> None:
    args = ("-CAfile", default_server.ca, "-servername", "certctl-server")
    good = s_client(default_server.port, *args, "-verify_hostname", "certctl-server")
    assert re.search(r"^subject=CN\s*=\s*certctl-server$", good.stdout, re.M), good.stdout
    assert verify_code(good) == 0, good.stdout
    assert "Verify return code: 0 (ok)" in good.stdout


def test_wrong_ca_and_wrong_hostname_fail_verification(
    default_server: CertctlServer, other_ca: Path
) -> None:
    # Same CA name, other key: the chain must not verify.
    wrong_ca = s_client(default_server.port, "-CAfile", other_ca, "-servername", "certctl-server")
    assert verify_code(wrong_ca) != 0, wrong_ca.stdout
    wrong_host = s_client(
        default_server.port,
        *("-CAfile", default_server.ca, "-servername", "evil.example.com"),
        *("-verify_hostname", "evil.example.com"),
    )
    assert verify_code(wrong_host) == 62, wrong_host.stdout  # X509_V_ERR_HOSTNAME_MISMATCH


def test_min_version_13_refuses_tls12(start_server: StartServer) -> None:
    server = start_server(config={"tls": {"min-version": "1.3"}})
    tls12 = s_client(server.port, "-tls1_2", "-CAfile", server.ca)
    assert tls12.returncode != 0, tls12.stdout
    assert not established(tls12, "TLSv1.2"), tls12.stdout
    tls13 = s_client(server.port, "-tls1_3", "-CAfile", server.ca, "-servername", "localhost")
    assert established(tls13, "TLSv1.3"), tls13.stdout + tls13.stderr
    assert verify_code(tls13) == 0


def _with_host_name(base: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next server see ``name`` as its host name (a ``sitecustomize`` on its path)."""
    site = base / f"host-{name}"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(
        f"import socket\nsocket.gethostname = lambda: {name!r}\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site))


def _curl_healthz(server: CertctlServer, host: str) -> subprocess.CompletedProcess[str]:
    return run("curl", "-sS", "--cacert", server.ca, "--resolve", f"{host}:{server.port}:127.0.0.1",
               f"https://{host}:{server.port}/healthz", timeout=20)  # fmt: skip


@pytest.mark.parametrize(
    ("host", "in_certificate"), [("build_agent_1", False), ("certctl-node-1", True)]
)
def test_a_host_name_that_is_no_dns_name_does_not_stop_the_server(
    start_server: StartServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    in_certificate: bool,
) -> None:
    # A host named build_agent_1 made every self-signed start fail ("invalid DNS name"),
    # after the CA and the admin key had been created, with nothing to configure around it.
    _with_host_name(tmp_path, host, monkeypatch)
    server = start_server()
    sans = run("openssl", "x509", "-noout", "-ext", "subjectAltName",
               "-in", server.data_dir / "tls" / "tls.crt").stdout  # fmt: skip
    assert "DNS:certctl-server, DNS:localhost" in sans, sans
    assert "IP Address:127.0.0.1" in sans, sans
    assert (f"DNS:{host}" in sans) is in_certificate, sans
    assert _curl_healthz(server, "localhost").stdout == "ok"
    by_host_name = _curl_healthz(server, host)
    _, err = server.logs()
    if in_certificate:
        assert by_host_name.stdout == "ok", by_host_name.stderr
        assert "host name left out" not in err
    else:
        assert by_host_name.returncode == 60, by_host_name.stderr  # not a name it serves
        assert err.count("host name left out of the server certificate: build_agent_1") == 1


def test_plain_http_on_the_https_port_gets_a_400_saying_to_use_https(
    start_server: StartServer,
) -> None:
    # curl http://… against the HTTPS port printed "Empty reply from server": the request line
    # went into the TLS handshake, which failed, and the connection closed without a word.
    # A function: a metrics port another process takes before the server binds it is picked
    # again (a fixed one failed the start, "Address already in use", with no retry).
    server = start_server(
        config=lambda: {"metrics": {"listen": f"127.0.0.1:{free_port()}", "secure": False}}
    )
    metrics_port = server.configured_port("metrics.listen")
    plain = run("curl", "-sS", "-i", f"http://127.0.0.1:{server.port}/healthz", timeout=20)
    assert plain.returncode == 0, plain.stderr
    head, _, body = plain.stdout.partition("\n\n")  # text mode: \r\n read as \n
    assert head.startswith("HTTP/1.1 400 Bad Request\n"), plain.stdout
    assert "connection: close" in head.lower(), head
    assert json.loads(body)["detail"] == (
        "plain HTTP request sent to an HTTPS port: use https:// instead of http://"
    )
    # curl -f reports it as the HTTP error it is; a request with a body that is still being
    # sent when the 400 goes out gets the 400 too, not a reset.
    failing = run("curl", "-sSf", f"http://127.0.0.1:{server.port}/healthz", timeout=20)
    assert failing.returncode == 22, failing.stderr
    assert "400" in failing.stderr, failing.stderr
    # HEAD: the same head, without the content (RFC 9110 9.3.2); it had the JSON body.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head_only, _, content = answer.partition(b"\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert b"content-length: " in head_only.lower(), answer
    assert content == b"", answer
    posted = run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary",
                 "@-", f"http://127.0.0.1:{server.port}/api/v1/auth/roles",
                 input="x" * 2_000_000, timeout=20)  # fmt: skip
    assert posted.stdout == "400", posted.stdout + posted.stderr
    # The twins: https:// on the same port, openssl s_client, and the plain-HTTP metrics
    # listener (metrics.secure: false) are served as before.
    tls = run("curl", "-sS", "--cacert", server.ca, f"{server.url}/healthz", timeout=20)
    assert tls.stdout == "ok", tls.stderr
    handshake = s_client(server.port, "-CAfile", server.ca)
    assert established(handshake, "TLSv1.3"), handshake.stdout + handshake.stderr
    metrics_url = f"http://127.0.0.1:{metrics_port}/api/v1/metrics/prometheus"
    metrics = run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", metrics_url, timeout=20)
    assert metrics.stdout == "401", metrics.stdout + metrics.stderr
    # Each 400 has its access-log line and its count, as every answer the app gives has; an
    # operator grepping for the client's failed calls found nothing before.
    _, err = server.logs()
    access = [line for line in err.splitlines() if "certctl.access:" in line]
    assert sum("127.0.0.1 GET /healthz 400 actor=-" in line for line in access) == 2, access
    assert sum("127.0.0.1 HEAD /healthz 400 actor=-" in line for line in access) == 1, access
    assert sum("127.0.0.1 POST /api/v1/auth/roles 400" in line for line in access) == 1, access
    scrape = run("curl", "-sS", "-H", f"Authorization: Bearer {server.admin_key}",
                 metrics_url, timeout=20).stdout  # fmt: skip
    counted = [
        line
        for line in scrape.splitlines()
        if line.startswith("certctl_http_requests_total{")
        and 'route="unmatched"' in line
        and 'status="400"' in line
    ]
    assert any('method="GET"' in line and line.endswith(" 2.0") for line in counted), counted


def _resumed(port: int, ca: Path, session: Path) -> bool:
    """Whether a TLS 1.2 handshake offering the ticket in ``session`` resumed it."""
    again = s_client(port, "-tls1_2", "-CAfile", ca, "-sess_in", session)
    assert again.returncode == 0, again.stdout + again.stderr
    return re.search(r"^Reused, TLSv1\.2,", again.stdout, re.M) is not None


def _new_session(port: int, ca: Path, session: Path) -> None:
    first = s_client(port, "-tls1_2", "-CAfile", ca, "-sess_out", session)
    assert established(first, "TLSv1.2"), first.stdout + first.stderr


def test_the_session_ticket_key_rotates(
    default_server: CertctlServer, start_server: StartServer, tmp_path: Path
) -> None:
    # OpenSSL keeps one ticket key per context for the life of the process: whoever read it
    # could decrypt every TLS 1.2 session ever resumed (no key exchange on resumption).
    session = tmp_path / "session.pem"
    # Twin first: with the default rotation (1h) a ticket resumes, so the check below is not
    # just resumption failing for some other reason.
    _new_session(default_server.port, default_server.ca, session)
    assert _resumed(default_server.port, default_server.ca, session)
    server = start_server(config={"tls": {"ticket-key-rotation": "1s"}})
    # Resumption works on this server too, between two rotations.
    for _ in range(10):
        _new_session(server.port, server.ca, session)
        if _resumed(server.port, server.ca, session):
            break
    else:
        pytest.fail("no TLS 1.2 session resumed on the rotating server")
    # Once the key has rotated, that ticket no longer resumes: a full handshake instead.
    deadline = time.monotonic() + 15
    while _resumed(server.port, server.ca, session):
        assert time.monotonic() < deadline, "the ticket still resumes 15 s later"
        time.sleep(0.5)
    # The server kept serving throughout.
    served = run("curl", "-sS", "--cacert", server.ca, f"{server.url}/healthz", timeout=20)
    assert served.stdout == "ok", served.stderr


def test_an_error_after_the_handshake_is_no_failed_handshake(
    default_server: CertctlServer,
) -> None:
    # Before: a connection whose handshake succeeded and that then sent a record that does
    # not decrypt was counted in certctl_tls_handshake_failures_total{reason="other"} and
    # logged as "TLS handshake from ... failed ... DECRYPTION_FAILED_OR_BAD_RECORD_MAC".
    from tests.e2e.test_mtls import _handshake_failures

    before = _handshake_failures(default_server)
    with socket.create_connection(("127.0.0.1", default_server.port), timeout=10) as raw:
        tls = default_server.ssl_context().wrap_socket(raw, server_hostname="localhost")
        # The handshake is over on both sides once the server answered a request.
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 200")
        plain = socket.socket(fileno=tls.detach())
        plain.sendall(b"\x17\x03\x03\x00\x20" + b"A" * 32)  # application data, not decryptable
        plain.settimeout(10)
        while plain.recv(4096):  # until the server closes the connection
            pass
        plain.close()
    # The server's side of the close is done before the next request on a new connection.
    time.sleep(0.2)
    assert _handshake_failures(default_server) == before
    assert "DECRYPTION_FAILED_OR_BAD_RECORD_MAC" not in "".join(default_server.logs())


def test_an_api_route_on_the_metrics_listener_says_where_the_api_is(
    start_server: StartServer,
) -> None:
    # A key tried against the metrics port (CERTCTL_URL set to it, curl …/whoami) got
    # 404 "Not Found", as for a typo, with nothing saying that port serves metrics alone.
    server = start_server(config=lambda: {"metrics": {"listen": f"127.0.0.1:{free_port()}"}})
    metrics = f"https://127.0.0.1:{server.configured_port('metrics.listen')}"
    auth = ["-H", f"Authorization: Bearer {server.admin_key}", "--cacert", str(server.ca)]
    for path in ("/api/v1/auth/whoami", "/api/v1/no-such-route"):
        answer = run("curl", "-sS", "-i", *auth, metrics + path, timeout=20)
        head, _, body = answer.stdout.partition("\n\n")
        assert head.startswith("HTTP/1.1 404 Not Found\n"), answer.stdout + answer.stderr
        assert "application/problem+json" in head, head
        assert json.loads(body)["detail"] == (
            "not found on the metrics listener (metrics.listen), which serves only /healthz, "
            "/readyz, /api/v1/metrics, /api/v1/metrics/prometheus; the rest of the API is on "
            "the main listener (listen)"
        )
    # The routes it serves are answered; the main listener's 404 stays as it was.
    scrape = run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *auth,
                 metrics + "/api/v1/metrics/prometheus", timeout=20)  # fmt: skip
    assert scrape.stdout == "200", scrape.stderr
    with server.client(server.admin_key) as http:
        assert http.get("/api/v1/auth/whoami").status_code == 200
        main_404 = http.get("/api/v1/no-such-route")
    assert main_404.status_code == 404
    assert main_404.json()["detail"] == "Not Found"


def test_the_servers_own_certificate_cannot_be_imported_and_so_revoked(
    start_server: StartServer,
) -> None:
    # tls.crt (issued by the internal CA at start, kept out of the certificates table) was
    # recorded by `certs import` like any leaf of a held issuer: then any cert.revoke holder
    # could put it on the default CA's CRL, and every client checking that CRL stopped
    # trusting certctl itself.
    server = start_server()
    tls_crt = server.data_dir / "tls" / "tls.crt"
    refused = server.cli("certs", "import", tls_crt)
    assert refused.returncode == 1, refused.stdout
    assert refused.stdout == ""
    (line,) = refused.stderr.splitlines()
    assert line.startswith("certctl: error: HTTP 409: certificate 1 (CN=certctl-server, serial ")
    assert "certctl's own server certificate" in line
    with server.client(server.admin_key) as api:
        r = api.post("/api/v1/certificates/import", json={"certificate_pem": tls_crt.read_text()})
        assert r.status_code == 409, r.text
        assert "certctl's own server certificate" in r.json()["detail"]
        listed = api.get("/api/v1/certificates", params={"issuer": "default"}).json()
        assert listed["items"] == []
        crl = api.get("/api/v1/issuers/default/crl")
    crl_file = server.data_dir / "default.crl"
    crl_file.write_bytes(crl.content)
    # Clients checking the CRL still trust the server.
    checked = s_client(
        server.port, "-CAfile", server.ca, "-crl_check", "-CRL", crl_file, "-CRLform", "DER"
    )
    assert verify_code(checked) == 0, checked.stdout
