"""The HTTPS listener seen by ``openssl s_client``: protocol floor, certificate, hostname."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests._tools import run
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
