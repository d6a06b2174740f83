"""A CA limited by its own extendedKeyUsage (made by openssl, imported) signs only those usages.

OpenSSL, Go and Windows hold a leaf's usage to the EKUs of the CAs above it. Before, a CA
limited to clientAuth signed server certificates that ``openssl verify -purpose sslserver``
refused with "unsuitable certificate purpose".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._tools import openssl_req, run
from tests.integration.conftest import certctl, certctl_ok, openssl_server_certificate

pytestmark = pytest.mark.integration


def _imported_ca(base: Path, eku: str) -> Path:
    openssl_req(
        base / "ca.key", base / "ca.crt", f"/CN={eku} CA", "-days", "30",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", f"extendedKeyUsage={eku}",
        x509=True,
    )  # fmt: skip
    out = base / "ca"
    certctl_ok("ca", "import", "--cert", base / "ca.crt", "--key", base / "ca.key", "--out", out)
    return out


def _purpose_verifies(ca: Path, leaf: Path, purpose: str) -> bool:
    result = run(
        "openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", ca / "ca.crt",
        "-untrusted", leaf, leaf,
    )  # fmt: skip
    return result.returncode == 0


def test_a_client_auth_ca_refuses_server_certificates(tmp_path: Path) -> None:
    ca = _imported_ca(tmp_path, "clientAuth")
    client = tmp_path / "client"
    certctl_ok("cert", "issue", "--ca", ca, "--out", client, "--profile", "client", "--cn", "bot")
    assert _purpose_verifies(ca, client / "tls.crt", "sslclient")
    for profile in ("server", "server+client"):
        out = tmp_path / profile
        result = certctl(
            "cert", "issue", "--ca", ca, "--out", out, "--profile", profile,
            "--cn", "web.example.com",
        )  # fmt: skip
        assert result.code == 1
        assert result.err == (
            "certctl: error: CN=clientAuth CA limits its certificates to clientAuth, not "
            "serverAuth: no client would accept the certificate\n"
        )
        assert not out.exists()
    # An intermediate below it carries no EKU and is made; its leaves are held all the same.
    inter = tmp_path / "inter"
    certctl_ok("ca", "create", "--parent", ca, "--out", inter, "--cn", "Sub CA")
    refused = certctl("cert", "issue", "--ca", inter, "--out", tmp_path / "x", "--cn", "w.example")
    assert refused.code == 1
    assert "CN=clientAuth CA limits its certificates to clientAuth" in refused.err


def test_openssl_refuses_a_server_certificate_below_a_client_auth_ca(tmp_path: Path) -> None:
    # Negative twin: what certctl refuses, openssl itself signs and then does not accept.
    ca = _imported_ca(tmp_path, "clientAuth")
    crt = openssl_server_certificate(ca, tmp_path)
    assert not _purpose_verifies(ca, crt, "sslserver")


def test_a_ca_allowing_both_usages_issues_every_profile(tmp_path: Path) -> None:
    # (anyExtendedKeyUsage is let through too, as Go reads it, with a warning: see below.)
    ca = _imported_ca(tmp_path, "serverAuth,clientAuth")
    out = tmp_path / "peer"
    certctl_ok(
        "cert", "issue", "--ca", ca, "--out", out, "--profile", "server+client",
        "--cn", "peer.example.com",
    )  # fmt: skip
    assert _purpose_verifies(ca, out / "tls.crt", "sslserver")
    assert _purpose_verifies(ca, out / "tls.crt", "sslclient")


def test_a_ca_listing_only_any_extended_key_usage_issues_with_a_warning(tmp_path: Path) -> None:
    # Go reads anyExtendedKeyUsage on a CA as every usage; OpenSSL's purpose check (nginx,
    # curl, Python's ssl, certctl verify) as none. certctl issued below such a CA without a
    # word, and openssl clients then refused the certificate: now it says so as it issues.
    ca = _imported_ca(tmp_path, "anyExtendedKeyUsage")
    out = tmp_path / "web"
    result = certctl(
        "cert", "issue", "--ca", ca, "--out", out, "--cn", "web.example.com",
        "--dns", "web.example.com",
    )  # fmt: skip
    assert result.code == 0, result.err
    # (The CA's 30 days also clip the leaf's validity: warned about on the lines before.)
    assert result.err.splitlines()[-1] == (
        "certctl: warning: CN=anyExtendedKeyUsage CA lists anyExtendedKeyUsage, not "
        "serverAuth: OpenSSL-based clients (nginx, curl, Python's ssl; certctl verify) refuse "
        "the certificates below it as of an unsuitable purpose (Go's accept them)"
    )
    # The warning's claim, checked: openssl refuses, and so does certctl verify.
    assert not _purpose_verifies(ca, out / "tls.crt", "sslserver")
    refused = certctl("verify", "--ca", ca / "ca.crt", out / "tls.crt")
    assert refused.code == 1
    assert "anyExtendedKeyUsage stands for no TLS purpose" in refused.err
    # A CA that also lists the usage: no warning.
    both = tmp_path / "both"
    both.mkdir()
    ca = _imported_ca(both, "anyExtendedKeyUsage,serverAuth")
    result = certctl("cert", "issue", "--ca", ca, "--out", both / "web", "--cn", "web.example.com")
    assert result.code == 0, result.err
    assert "anyExtendedKeyUsage" not in result.err
