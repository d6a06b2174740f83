"""nginx serving a certificate from ``cert issue --in … --pem`` on IPv4 and IPv6, probed by curl."""

from __future__ import annotations

import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._nginx import loopback_listener, nginx_conf, port_of, running_nginx
from tests._tools import run
from tests.integration.conftest import Pki, certctl_ok

pytestmark = pytest.mark.integration

INSTANCES = """\
instances:
  - name: web
    dns: [localhost, web.example.com]
    ip: ["127.0.0.1", "::1"]
  - name: other
    dns: [other.example.com]
"""

SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        listen [::1]:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "hello\\n"; }}
    }}
"""


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def served(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    if not _has_ipv6_loopback():
        # As for a missing tool: fail and say how to fix the host, never skip silently.
        pytest.fail(
            "no IPv6 loopback (::1) on this host: enable it with "
            "'sysctl -w net.ipv6.conf.lo.disable_ipv6=0'",
            pytrace=False,
        )
    d = tmp_path_factory.mktemp("nginx-instances")
    (d / "instances.yml").write_text(INSTANCES)
    certctl_ok(
        "cert", "issue", "--ca", pki.chain("ec-p256").inter, "--in", d / "instances.yml",
        "--out", d / "certs.zip", "--pem",
    )  # fmt: skip
    with zipfile.ZipFile(d / "certs.zip") as archive:
        archive.extractall(d / "certs")
    web = d / "certs" / "web"
    listener = loopback_listener()  # held for nginx: see tests._nginx
    port = port_of(listener)
    conf = d / "nginx.conf"
    conf.write_text(
        nginx_conf(d, SERVER.format(port=port, cert=web / "tls.crt", key=web / "tls.key"))
    )
    with running_nginx(conf, d, listener):
        yield port, web / "ca.crt"


@pytest.mark.parametrize(
    ("url_host", "resolve"),
    [
        ("127.0.0.1", None),
        ("[::1]", None),
        ("localhost", "127.0.0.1"),
        ("web.example.com", "[::1]"),
    ],
)
def test_curl_verifies_every_name_of_the_instance(
    served: tuple[int, Path], url_host: str, resolve: str | None
) -> None:
    port, ca = served
    pin = ["--resolve", f"{url_host}:{port}:{resolve}"] if resolve else []
    result = run("curl", "-sS", "--max-time", "10", "--cacert", ca, *pin,
                 f"https://{url_host}:{port}/", timeout=20)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"


def test_curl_refuses_a_name_of_another_instance(served: tuple[int, Path]) -> None:
    port, ca = served
    result = run("curl", "-sS", "--max-time", "10", "--cacert", ca,
                 "--resolve", f"other.example.com:{port}:127.0.0.1",
                 f"https://other.example.com:{port}/", timeout=20)  # fmt: skip
    assert result.returncode == 60, result.stderr  # CURLE_PEER_FAILED_VERIFICATION
    assert "other.example.com" in result.stderr
