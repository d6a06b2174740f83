"""nginx serving a ``certctl http`` bundle with ``ssl_verify_client on``, probed by curl."""

from __future__ import annotations

import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._nginx import loopback_listener, nginx_conf, port_of, running_nginx
from tests._tools import run
from tests.integration.conftest import Pki, certctl_ok

pytestmark = pytest.mark.integration

# The inside of the http block; tests._nginx.nginx_conf adds the rest.
NGINX_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {client_ca};
        ssl_verify_client on;
        # Client leaves come from an intermediate: leaf -> intermediate -> root.
        ssl_verify_depth 2;
        location / {{ return 200 "hello from nginx\\n"; }}
    }}
"""


@dataclass(frozen=True)
class Nginx:
    port: int
    ca: Path  # root CA certificate clients trust (client/ca.crt of the bundle)
    directory: Path


@pytest.fixture(scope="module")
def nginx(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    d = tmp_path_factory.mktemp("nginx")
    chain = pki.chain("ec-p256")
    bundle = d / "bundle.zip"
    certctl_ok(
        "http", "--non-interactive", "--pem", "--profile", "generic", "--node", "node-1",
        "--dns", "localhost", "--ip", "127.0.0.1", "--out", bundle, "--ca", chain.inter,
    )  # fmt: skip
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(d / "bundle")
    node, client = d / "bundle" / "node-1", d / "bundle" / "client"
    listener = loopback_listener()  # held for nginx: see tests._nginx
    port = port_of(listener)
    conf = d / "nginx.conf"
    server = NGINX_SERVER.format(
        port=port, cert=node / "http.crt", key=node / "http.key", client_ca=chain.root / "ca.crt"
    )
    conf.write_text(nginx_conf(d, server))
    with running_nginx(conf, d, listener):
        yield Nginx(port, client / "ca.crt", d)


def curl(
    server: Nginx, *args: str | Path, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    """GET / over HTTPS; stdout is the body followed by ``\\nHTTP <status>``."""
    resolve = [] if host == "127.0.0.1" else ["--resolve", f"{host}:{server.port}:127.0.0.1"]
    return run(
        "curl", "-sS", "--max-time", "10", "-w", "\\nHTTP %{http_code}", *resolve, *args,
        f"https://{host}:{server.port}/",
        timeout=20,
    )  # fmt: skip


def assert_refused(server: Nginx, result: subprocess.CompletedProcess[str], reason: str) -> None:
    # TLS 1.3: nginx completes the handshake, then answers 400 and logs why.
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("HTTP 400")
    assert "The SSL certificate error" in result.stdout
    log = (server.directory / "error.log").read_text()
    errors = [line for line in log.splitlines() if "client SSL certificate verify error" in line]
    assert errors, log
    assert reason in errors[-1]


def client_args(leaf: Path) -> list[str | Path]:
    return ["--cert", leaf / "tls.crt", "--key", leaf / "tls.key"]


@pytest.mark.parametrize("profile", ["client", "server+client"])
def test_curl_with_client_certificate_gets_200(pki: Pki, nginx: Nginx, profile: str) -> None:
    leaf = pki.chain("ec-p256").leaves[profile]
    result = curl(nginx, "--cacert", nginx.ca, *client_args(leaf))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from nginx\n\nHTTP 200"


def test_curl_by_dns_name_gets_200(pki: Pki, nginx: Nginx) -> None:
    leaf = pki.chain("ec-p256").leaves["client"]
    result = curl(nginx, "--cacert", nginx.ca, *client_args(leaf), host="localhost")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("HTTP 200")


def test_curl_without_client_certificate_gets_400(nginx: Nginx) -> None:
    result = curl(nginx, "--cacert", nginx.ca)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("HTTP 400")
    assert "No required SSL certificate was sent" in result.stdout


def test_curl_with_client_certificate_of_another_ca_is_refused(
    pki: Pki, nginx: Nginx, other_root: Path
) -> None:
    leaf = pki.issue(other_root, "foreign-client", profile="client", dns=["client.example.com"])
    result = curl(nginx, "--cacert", nginx.ca, *client_args(leaf))
    assert_refused(nginx, result, "unable to verify the first certificate")


def test_curl_with_server_only_certificate_as_client_is_refused(pki: Pki, nginx: Nginx) -> None:
    # Same CA, wrong purpose: the server profile has no clientAuth EKU.
    leaf = pki.chain("ec-p256").leaves["server"]
    result = curl(nginx, "--cacert", nginx.ca, *client_args(leaf))
    assert_refused(nginx, result, "unsuitable certificate purpose")


def test_curl_with_wrong_cacert_fails_verification(
    pki: Pki, nginx: Nginx, other_root: Path
) -> None:
    leaf = pki.chain("ec-p256").leaves["client"]
    result = curl(nginx, "--cacert", other_root / "ca.crt", *client_args(leaf))
    assert result.returncode == 60, result.stderr  # CURLE_PEER_FAILED_VERIFICATION
    assert "unable to get local issuer certificate" in result.stderr


def test_curl_with_a_name_not_in_the_certificate_fails(pki: Pki, nginx: Nginx) -> None:
    leaf = pki.chain("ec-p256").leaves["client"]
    result = curl(nginx, "--cacert", nginx.ca, *client_args(leaf), host="wrong.example.com")
    assert result.returncode == 60, result.stderr
    assert "no alternative certificate subject name matches" in result.stderr
