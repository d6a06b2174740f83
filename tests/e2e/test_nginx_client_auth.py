"""README "Mutual TLS in front of your own service": nginx trusting a certctl issuer.

The recipe as the README gives it, with the certctl CLI against a real ``certctl serve`` and a
real nginx (``ssl_verify_client on``, ``ssl_crl`` from certctl's CRL route), probed by curl:
a client certificate with a server-made key and one from an ``openssl req`` CSR get in; one
revoked is refused once the CRL is fetched again and nginx reloaded; a renewed one gets in;
a client certificate of the ``default`` issuer does not. Also why the README asks for a root:
an intermediate's CRL alone makes nginx refuse every client.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests._nginx import loopback_listener, nginx_argv, nginx_conf, port_of, running_nginx
from tests._poll import wait_until
from tests._tools import ok, run
from tests.e2e.conftest import CertctlServer

pytestmark = pytest.mark.e2e

NGINX_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
        ssl_crl {crl};
        location / {{ return 200 "hello $ssl_client_s_dn\\n"; }}
    }}
"""


def _certctl(server: CertctlServer, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return server.cli(*args)


def _get(port: int, trust: Path, client: Path | None) -> str:
    """curl's body and status (``… HTTP 200``) for GET / through nginx as ``client``."""
    cert = [] if client is None else ["--cert", client / "tls.crt", "--key", client / "tls.key"]
    result = run(
        "curl", "-sS", "--max-time", "10", "--cacert", trust, *cert, "-w", "HTTP %{http_code}",
        f"https://127.0.0.1:{port}/", timeout=20,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def _reload(conf: Path, directory: Path) -> None:
    """``nginx -s reload``, then wait until the old worker is gone: it served the old CRL."""
    pid_file = directory / "nginx.pid"
    master = int(pid_file.read_text())
    before = _workers(master)
    ok(run(*nginx_argv(conf, directory), "-s", "reload", timeout=30))
    wait_until(
        lambda: bool(_workers(master)) and not (_workers(master) & before),
        "nginx's workers replaced after its reload",
        30,
    )


def _workers(master: int) -> set[int]:
    listed = run("ps", "-o", "pid=", "--ppid", str(master), timeout=10)
    return {int(pid) for pid in listed.stdout.split()}


def test_the_readme_recipe_protects_nginx_with_a_certctl_client_root(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    server = default_server
    # An id of its own: default_server is shared by the session.
    ok(_certctl(server, "issuers", "create", "readme-api-clients", "--cn", "API Clients CA"))
    api, alice, ci = tmp_path / "api", tmp_path / "alice", tmp_path / "ci-runner"
    ok(_certctl(server, "certs", "issue", "--cn", "localhost", "--dns", "localhost",
                "--ip", "127.0.0.1", "--out", api))  # fmt: skip
    issued = _certctl(server, "certs", "issue", "--cn", "ci-runner", "--profile", "client",
                      "--issuer", "readme-api-clients", "--out", ci)  # fmt: skip
    ci_json = json.loads(ok(issued).stdout)
    alice.mkdir()
    ok(run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", alice / "tls.key", "-out", alice / "tls.csr",
           "-subj", "/O=Example/CN=alice"))  # fmt: skip
    issued = _certctl(server, "certs", "issue", "--csr", alice / "tls.csr", "--profile", "client",
                      "--issuer", "readme-api-clients", "--out", alice)  # fmt: skip
    alice_json = json.loads(ok(issued).stdout)
    # A client certificate of another issuer under the same root as nginx's own certificate.
    intruder = tmp_path / "intruder"
    ok(_certctl(server, "certs", "issue", "--cn", "intruder", "--profile", "client",
                "--out", intruder))  # fmt: skip
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    client_ca, crl = nginx_dir / "api-clients-ca.pem", nginx_dir / "api-clients.crl"
    ok(_certctl(server, "issuers", "ca", "readme-api-clients", "--out", client_ca))
    ok(_certctl(server, "issuers", "crl", "readme-api-clients", "--pem", "--out", crl))

    listener = loopback_listener()
    port = port_of(listener)
    conf = nginx_dir / "nginx.conf"
    inside = NGINX_SERVER.format(
        port=port, cert=api / "tls.crt", key=api / "tls.key", client_ca=client_ca, crl=crl
    )
    conf.write_text(nginx_conf(nginx_dir, inside))
    trust = api / "ca.crt"
    with running_nginx(conf, nginx_dir, listener):
        assert _get(port, trust, ci) == "hello CN=ci-runner\nHTTP 200"
        assert _get(port, trust, alice) == "hello CN=alice,O=Example\nHTTP 200"
        assert "No required SSL certificate was sent" in _get(port, trust, None)
        assert "The SSL certificate error" in _get(port, trust, intruder)

        ok(_certctl(server, "certs", "revoke", ci_json["id"], "--reason", "keyCompromise"))
        assert _get(port, trust, ci).endswith("HTTP 200")  # nginx still reads the old CRL
        ok(_certctl(server, "issuers", "crl", "readme-api-clients", "--pem", "--out", crl,
                    "--force"))  # fmt: skip
        _reload(conf, nginx_dir)
        refused = _get(port, trust, ci)
        assert "The SSL certificate error" in refused, refused
        assert "(23:certificate revoked)" in (nginx_dir / "error.log").read_text()

        ok(_certctl(server, "certs", "renew", alice_json["id"], "--out", alice, "--force"))
        assert _get(port, trust, alice) == "hello CN=alice,O=Example\nHTTP 200"


def test_an_intermediates_crl_alone_makes_nginx_refuse_every_client(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # Why the README gives clients a root: nginx checks the CRL of every CA of the chain once
    # ssl_crl is set, so an intermediate under `default` also needs default's CRL, and
    # trusting `default` lets in every client certificate it or its intermediates issue.
    server = default_server
    ok(_certctl(server, "issuers", "create", "readme-sub-clients", "--parent", "default"))
    api, client = tmp_path / "api", tmp_path / "client"
    ok(_certctl(server, "certs", "issue", "--cn", "localhost", "--dns", "localhost",
                "--ip", "127.0.0.1", "--out", api))  # fmt: skip
    ok(_certctl(server, "certs", "issue", "--cn", "sub-client", "--profile", "client",
                "--issuer", "readme-sub-clients", "--out", client))  # fmt: skip
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    chain, crl = nginx_dir / "chain.pem", nginx_dir / "clients.crl"
    ok(_certctl(server, "issuers", "ca", "readme-sub-clients", "--chain", "--out", chain))
    ok(_certctl(server, "issuers", "crl", "readme-sub-clients", "--pem", "--out", crl))
    listener = loopback_listener()
    port = port_of(listener)
    conf = nginx_dir / "nginx.conf"
    inside = NGINX_SERVER.format(
        port=port, cert=api / "tls.crt", key=api / "tls.key", client_ca=chain, crl=crl
    )
    conf.write_text(nginx_conf(nginx_dir, inside))
    with running_nginx(conf, nginx_dir, listener):
        assert "The SSL certificate error" in _get(port, api / "ca.crt", client)
        assert "(3:unable to get certificate CRL)" in (nginx_dir / "error.log").read_text()
        both = ok(_certctl(server, "issuers", "crl", "default", "--pem")).stdout
        crl.write_text(crl.read_text() + both)
        _reload(conf, nginx_dir)
        assert _get(port, api / "ca.crt", client) == "hello CN=sub-client\nHTTP 200"
