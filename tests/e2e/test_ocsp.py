"""README "OCSP": openssl ocsp, curl and nginx (ssl_ocsp) against a real ``certctl serve``.

The README's openssl command against the responder a leaf's AIA names (``good``, then
``revoked`` with its reason right after the API revokes it, ``unknown`` for a serial the
issuer never issued), the GET form through curl, and nginx verifying client certificates with
``ssl_ocsp on`` through a plain-HTTP proxy location of its own: a revocation refuses the very
next request, without an nginx reload; and nginx stapling certctl's answer about a server
certificate the default (root) issuer signed, fetched through that proxy location.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests._nginx import loopback_listener, nginx_conf, port_of, start_nginx, wait_serving
from tests._tools import ok, run, stop
from tests.e2e.conftest import CertctlServer, StartServer

pytestmark = pytest.mark.e2e

OCSP_CONFIG = {"ocsp": {"enabled": True}, "public-url": "https://127.0.0.1:{port}"}


def _post(server: CertctlServer, path: str, body: dict[str, Any] | None = None) -> Any:
    with server.client(server.admin_key) as client:
        r = client.post(path, json=body) if body is not None else client.post(path)
    assert r.status_code in (200, 201), r.text
    return r.json()


def _openssl_ocsp(*args: str | Path) -> str:
    """``openssl ocsp ARGS``: its stdout and stderr together (it splits its report)."""
    result = ok(run("openssl", "ocsp", *args, timeout=30))
    return result.stdout + result.stderr


def test_openssl_ocsp_sees_good_revoked_and_unknown(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(config=OCSP_CONFIG)
    issued = _post(server, "/api/v1/certificates", {"common_name": "ocsp-leaf.example.com"})
    ca, leaf = server.ca, tmp_path / "tls.crt"  # ca.crt: the default issuer's certificate
    leaf.write_text(issued["certificate_pem"])
    url = ok(run("openssl", "x509", "-in", leaf, "-noout", "-ocsp_uri")).stdout.strip()
    assert url == f"{server.url}/api/v1/issuers/default/ocsp"

    # The README's command, verbatim but for the paths.
    readme = ("-issuer", ca, "-cert", leaf, "-CAfile", ca, "-no_nonce", "-url", url)
    shown = _openssl_ocsp(*readme)
    assert "Response verify OK" in shown
    assert f"{leaf}: good" in shown
    assert "This Update:" in shown
    assert "Next Update:" in shown
    # Without -no_nonce openssl sends one, which certctl ignores (RFC 5019): a warning.
    warned = _openssl_ocsp("-issuer", ca, "-cert", leaf, "-CAfile", ca, "-url", url)
    assert "WARNING: no nonce in response" in warned
    assert f"{leaf}: good" in warned

    _post(server, f"/api/v1/certificates/{issued['id']}/revoke", {"reason": "keyCompromise"})
    shown = _openssl_ocsp(*readme)
    assert "Response verify OK" in shown
    assert f"{leaf}: revoked" in shown
    assert "Reason: keyCompromise" in shown
    assert "Revocation Time:" in shown

    # A serial the issuer never issued.
    shown = _openssl_ocsp("-issuer", ca, "-serial", "0x0123456789abcdef", "-CAfile", ca,
                          "-no_nonce", "-url", url)  # fmt: skip
    assert "Response verify OK" in shown
    assert "0x0123456789abcdef: unknown" in shown

    # The GET form (RFC 6960 A.1) through curl: the request's base64, URL-encoded.
    request, response = tmp_path / "req.der", tmp_path / "resp.der"
    _openssl_ocsp("-issuer", ca, "-cert", leaf, "-no_nonce", "-reqout", request)
    encoded = quote(base64.b64encode(request.read_bytes()).decode(), safe="")
    got = run("curl", "-sS", "--fail", "--cacert", ca, "-o", response, "-w", "%{content_type}",
              f"{url}/{encoded}", timeout=30)  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert got.stdout == "application/ocsp-response"
    shown = _openssl_ocsp("-respin", response, "-issuer", ca, "-cert", leaf, "-CAfile", ca,
                          "-no_nonce")  # fmt: skip
    assert "Response verify OK" in shown
    assert f"{leaf}: revoked" in shown

    # Garbage is an OCSP malformedRequest (HTTP 200), never a 500.
    got = run("curl", "-sS", "--cacert", ca, "-o", response, "-w", "%{http_code}",
              "--data-binary", "garbage", "-H", "Content-Type: application/ocsp-request",
              url, timeout=30)  # fmt: skip
    assert got.stdout == "200"
    shown = run("openssl", "ocsp", "-respin", response, "-resp_text", "-noverify")
    assert shown.stdout == "Responder Error: malformedrequest (1)\n", shown


# nginx's OCSP client speaks plain HTTP only: a plain-HTTP location proxying certctl's
# OCSP routes (the "plain-HTTP proxy" docs/configuration.md public-url recommends).
NGINX_PROXY = """\
    server {{
        listen 127.0.0.1:{proxy_port};
        location /api/v1/issuers/ {{
            proxy_pass https://127.0.0.1:{certctl_port};
            proxy_ssl_trusted_certificate {certctl_ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
        }}
    }}
"""


# A plain-HTTP location proxying certctl's OCSP route (nginx's OCSP client speaks plain HTTP
# only), and the TLS server checking its clients with ssl_ocsp through it.
NGINX_SERVERS = (
    NGINX_PROXY
    + """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
        ssl_ocsp on;
        ssl_ocsp_responder http://127.0.0.1:{proxy_port}/api/v1/issuers/ocsp-clients/ocsp;
        location / {{ return 200 "hello $ssl_client_s_dn\\n"; }}
    }}
"""
)


def _get(port: int, trust: Path, client: Path) -> str:
    """curl's body and status (``… HTTP 200``) for GET / through nginx as ``client``."""
    result = run(
        "curl", "-sS", "--max-time", "10", "--cacert", trust, "--cert", client / "tls.crt",
        "--key", client / "tls.key", "-w", "HTTP %{http_code}", f"https://127.0.0.1:{port}/",
        timeout=20,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def _write(directory: Path, issued: dict[str, Any]) -> Path:
    directory.mkdir()
    (directory / "tls.crt").write_text(issued["certificate_pem"])
    (directory / "tls.key").write_text(issued["private_key_pem"])
    (directory / "tls.key").chmod(0o600)
    return directory


def test_nginx_ssl_ocsp_refuses_a_client_at_the_request_after_its_revocation(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(config={"ocsp": {"enabled": True}})
    _post(server, "/api/v1/issuers", {"id": "ocsp-clients", "common_name": "OCSP Clients CA"})
    web = _write(tmp_path / "web", _post(server, "/api/v1/certificates", {
        "common_name": "localhost", "dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"],
    }))  # fmt: skip
    issued = _post(server, "/api/v1/certificates", {
        "issuer": "ocsp-clients", "common_name": "ci-runner", "profile": "client",
    })  # fmt: skip
    client = _write(tmp_path / "ci-runner", issued)
    other = _write(tmp_path / "alice", _post(server, "/api/v1/certificates", {
        "issuer": "ocsp-clients", "common_name": "alice", "profile": "client",
    }))  # fmt: skip
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    client_ca = nginx_dir / "ocsp-clients-ca.pem"
    with server.client() as anonymous:
        client_ca.write_text(anonymous.get("/api/v1/issuers/ocsp-clients/ca.pem").text)

    proxy, tls = loopback_listener(), loopback_listener()
    proxy_port, port = port_of(proxy), port_of(tls)
    inside = NGINX_SERVERS.format(
        proxy_port=proxy_port, certctl_port=server.port, certctl_ca=server.ca, port=port,
        cert=web / "tls.crt", key=web / "tls.key", client_ca=client_ca,
    )  # fmt: skip
    conf = nginx_dir / "nginx.conf"
    conf.write_text(nginx_conf(nginx_dir, inside))
    proc = start_nginx(conf, nginx_dir, [proxy, tls])
    try:
        wait_serving(proc, nginx_dir, proxy_port)
        wait_serving(proc, nginx_dir, port)
        trust = server.ca
        assert _get(port, trust, client) == "hello CN=ci-runner\nHTTP 200"
        assert _get(port, trust, other) == "hello CN=alice\nHTTP 200"

        _post(server, f"/api/v1/certificates/{issued['id']}/revoke", {"reason": "keyCompromise"})
        # The very next request, nginx not reloaded: refused, alice still let in.
        refused = _get(port, trust, client)
        assert "The SSL certificate error" in refused, refused
        assert refused.endswith("HTTP 400")
        assert _get(port, trust, other) == "hello CN=alice\nHTTP 200"
        log = (nginx_dir / "error.log").read_text()
        assert "client SSL certificate verify error: certificate revoked" in log, log[-2000:]
    finally:
        stop(proc)
    # nginx asked through its proxy location, in the GET form (RFC 6960 A.1).
    access = (nginx_dir / "access.log").read_text()
    # One per handshake (no ssl_ocsp_cache): the two before, the refused one and alice's.
    assert access.count("GET /api/v1/issuers/ocsp-clients/ocsp/") == 4, access


def _intermediate_client_ca(server: CertctlServer, tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """An intermediate ``ocsp-clients`` under ``default``, a web server certificate and a
    client certificate of it: (web dir, client dir, nginx dir, the intermediate and the root
    above it as nginx's client CA file)."""
    _post(server, "/api/v1/issuers", {
        "id": "ocsp-clients", "common_name": "OCSP Clients CA", "parent": "default",
    })  # fmt: skip
    web = _write(tmp_path / "web", _post(server, "/api/v1/certificates", {
        "common_name": "localhost", "dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"],
    }))  # fmt: skip
    client = _write(tmp_path / "ci-runner", _post(server, "/api/v1/certificates", {
        "issuer": "ocsp-clients", "common_name": "ci-runner", "profile": "client",
    }))  # fmt: skip
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    client_ca = nginx_dir / "ocsp-clients-ca.pem"
    with server.client() as anonymous:
        r = anonymous.get("/api/v1/issuers/ocsp-clients/ca.pem", params={"chain": "true"})
        client_ca.write_text(r.text)
    return web, client, nginx_dir, client_ca


def test_nginx_ssl_ocsp_leaf_with_an_intermediate_client_ca_and_a_fixed_responder(
    start_server: StartServer, tmp_path: Path
) -> None:
    """``ssl_ocsp on`` asks the fixed responder about the intermediate too: refused (README)."""
    server = start_server(config={"ocsp": {"enabled": True}})
    web, client, nginx_dir, client_ca = _intermediate_client_ca(server, tmp_path)
    assert client_ca.read_text().count("BEGIN CERTIFICATE") == 2
    proxy, on, leaf = loopback_listener(), loopback_listener(), loopback_listener()
    proxy_port, on_port, leaf_port = port_of(proxy), port_of(on), port_of(leaf)
    servers = NGINX_SERVERS.format(
        proxy_port=proxy_port, certctl_port=server.port, certctl_ca=server.ca, port=on_port,
        cert=web / "tls.crt", key=web / "tls.key", client_ca=client_ca,
    )  # fmt: skip
    # The same TLS server once more, on another port, checking the client's certificate only.
    tls_server = "    server {" + servers.split("    server {")[2]
    servers += tls_server.replace(str(on_port), str(leaf_port)).replace(
        "ssl_ocsp on;", "ssl_ocsp leaf;"
    )
    conf = nginx_dir / "nginx.conf"
    conf.write_text(nginx_conf(nginx_dir, servers))
    proc = start_nginx(conf, nginx_dir, [proxy, on, leaf])
    try:
        for port in (proxy_port, on_port, leaf_port):
            wait_serving(proc, nginx_dir, port)
        assert _get(leaf_port, server.ca, client) == "hello CN=ci-runner\nHTTP 200"
        refused = _get(on_port, server.ca, client)
        assert refused.endswith("HTTP 400"), refused
    finally:
        stop(proc)
    log = (nginx_dir / "error.log").read_text()
    # The intermediate's own certificate, asked of its own responder: only its parent answers.
    assert "OCSP response not successful (6: unauthorized)" in log, log[-2000:]


def test_nginx_ssl_ocsp_on_without_a_fixed_responder_follows_each_certificates_aia(
    start_server: StartServer, tmp_path: Path
) -> None:
    """public-url at nginx's plain-HTTP location: the leaf asked of its intermediate, that of
    the root; revoking the intermediate refuses its clients at the next request."""
    proxy, tls = loopback_listener(), loopback_listener()
    proxy_port, port = port_of(proxy), port_of(tls)
    server = start_server(config={
        "ocsp": {"enabled": True}, "public-url": f"http://127.0.0.1:{proxy_port}",
    })  # fmt: skip
    web, client, nginx_dir, client_ca = _intermediate_client_ca(server, tmp_path)
    servers = NGINX_SERVERS.format(
        proxy_port=proxy_port, certctl_port=server.port, certctl_ca=server.ca, port=port,
        cert=web / "tls.crt", key=web / "tls.key", client_ca=client_ca,
    )  # fmt: skip
    fixed = [line for line in servers.splitlines() if "ssl_ocsp_responder" in line]
    assert len(fixed) == 1
    servers = servers.replace(fixed[0] + "\n", "")
    conf = nginx_dir / "nginx.conf"
    conf.write_text(nginx_conf(nginx_dir, servers))
    proc = start_nginx(conf, nginx_dir, [proxy, tls])
    try:
        wait_serving(proc, nginx_dir, proxy_port)
        wait_serving(proc, nginx_dir, port)
        assert _get(port, server.ca, client) == "hello CN=ci-runner\nHTTP 200"
        _post(server, "/api/v1/issuers/ocsp-clients/revoke", {"reason": "cACompromise"})
        refused = _get(port, server.ca, client)
        assert refused.endswith("HTTP 400"), refused
    finally:
        stop(proc)
    log = (nginx_dir / "error.log").read_text()
    assert "client SSL certificate verify error: certificate revoked" in log, log[-2000:]
    access = (nginx_dir / "access.log").read_text()
    assert "GET /api/v1/issuers/ocsp-clients/ocsp/" in access, access
    assert "GET /api/v1/issuers/default/ocsp/" in access, access


def test_the_readme_shows_the_commands_and_directives_these_tests_run() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("\n## OCSP\n", 1)[1].split("\n## ", 1)[0]
    assert "openssl ocsp -issuer ca.crt -cert tls.crt -CAfile ca.crt -no_nonce \\\n" in section
    assert "  -url https://127.0.0.1:8443/api/v1/issuers/default/ocsp\n" in section
    for directive in (
        "proxy_ssl_verify on;",
        "proxy_ssl_name localhost;",
        "ssl_verify_client on;",
        "ssl_ocsp on;",
        "ssl_ocsp_responder http://127.0.0.1:8080/api/v1/issuers/api-clients/ocsp;",
        "ssl_ocsp leaf;",
    ):
        assert directive in section, directive
        if directive != "ssl_ocsp leaf;":  # the test above writes it in place of "on"
            assert directive.split(" http")[0] in NGINX_SERVERS, directive
    for directive in ("ssl_stapling on;", "ssl_stapling_verify on;", "ssl_stapling_responder"):
        assert directive in section, directive
        assert directive in NGINX_STAPLING, directive


# nginx stapling certctl's answer about its own server certificate: fetched through the same
# kind of plain-HTTP proxy location, verified against the issuer (ssl_stapling_verify).
NGINX_STAPLING = (
    NGINX_PROXY
    + """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_stapling on;
        ssl_stapling_verify on;
        ssl_trusted_certificate {certctl_ca};
        ssl_stapling_responder http://127.0.0.1:{proxy_port}/api/v1/issuers/default/ocsp;
        location / {{ return 200 "stapled\\n"; }}
    }}
"""
)


def _stapled(port: int, trust: Path) -> str:
    """What ``openssl s_client -status`` says of the OCSP response nginx stapled."""
    result = run(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
        "-status", "-CAfile", trust, "-verify_return_error",
        input="", timeout=20,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_nginx_staples_certctls_answer_for_its_server_certificate(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(config={"ocsp": {"enabled": True}})
    web = _write(tmp_path / "web", _post(server, "/api/v1/certificates", {
        "common_name": "localhost", "dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"],
    }))  # fmt: skip
    # The leaf alone, as certctl hands it out: its issuer is a root, which no chain carries.
    assert (web / "tls.crt").read_text().count("BEGIN CERTIFICATE") == 1
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    proxy, tls = loopback_listener(), loopback_listener()
    proxy_port, port = port_of(proxy), port_of(tls)
    inside = NGINX_STAPLING.format(
        proxy_port=proxy_port, certctl_port=server.port, certctl_ca=server.ca, port=port,
        cert=web / "tls.crt", key=web / "tls.key",
    )  # fmt: skip
    conf = nginx_dir / "nginx.conf"
    conf.write_text(nginx_conf(nginx_dir, inside))
    proc = start_nginx(conf, nginx_dir, [proxy, tls])
    try:
        wait_serving(proc, nginx_dir, proxy_port)
        wait_serving(proc, nginx_dir, port)
        # nginx fetches the response at the first handshake and staples it from the next.
        deadline = time.monotonic() + 20
        shown = _stapled(port, server.ca)
        while "OCSP Response Status: successful" not in shown and time.monotonic() < deadline:
            time.sleep(0.2)
            shown = _stapled(port, server.ca)
        assert "OCSP Response Status: successful" in shown, (nginx_dir / "error.log").read_text()
        assert "Cert Status: good" in shown
        assert "Responder Id:" in shown
    finally:
        stop(proc)
    log = (nginx_dir / "error.log").read_text()
    assert "OCSP_basic_verify() failed" not in log, log[-2000:]
    # Asked through the proxy location, in the GET form.
    access = (nginx_dir / "access.log").read_text()
    assert "GET /api/v1/issuers/default/ocsp/" in access, access
