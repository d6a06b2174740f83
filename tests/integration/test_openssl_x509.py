"""``openssl verify`` and ``openssl x509 -text`` on CLI-built chains: every key type, profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._tools import failed, ok, run
from tests.integration.conftest import KEY_TYPES, LEAF_NAMES, LEAF_PROFILES, Pki

pytestmark = pytest.mark.integration

PURPOSES = {
    "server": ("sslserver",),
    "client": ("sslclient",),
    "server+client": ("sslserver", "sslclient"),
}
EKU_TEXT = {
    "server": "TLS Web Server Authentication",
    "client": "TLS Web Client Authentication",
    "server+client": "TLS Web Server Authentication, TLS Web Client Authentication",
}


def x509_extensions(cert: Path) -> dict[str, tuple[bool, str]]:
    """``{extension name: (critical, value text)}`` as ``openssl x509 -text`` prints them."""
    text = ok(run("openssl", "x509", "-in", cert, "-noout", "-text")).stdout
    lines = text.split("X509v3 extensions:\n", 1)[1].splitlines()
    extensions: dict[str, tuple[bool, str]] = {}
    name = ""
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if indent <= 8:  # "Signature Algorithm:" closes the block
            break
        if indent == 12:
            name, _, flag = line.strip().partition(":")
            extensions[name] = (flag.strip() == "critical", "")
        else:
            critical, value = extensions[name]
            extensions[name] = (critical, (value + " " + line.strip()).strip())
    return extensions


def verify(ca: Path, untrusted: Path, cert: Path, *extra: str) -> tuple[int, str]:
    result = run(
        "openssl", "verify", "-x509_strict", *extra, "-CAfile", ca / "ca.crt",
        "-untrusted", untrusted / "ca.crt", cert,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("profile", LEAF_PROFILES)
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_verifies_root_intermediate_leaf(pki: Pki, key_type: str, profile: str) -> None:
    chain = pki.chain(key_type)
    for purpose in PURPOSES[profile]:
        code, output = verify(chain.root, chain.inter, chain.leaf(profile), "-purpose", purpose)
        assert code == 0, output
        assert output.strip().endswith(": OK")


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_verify_fails_against_another_root(
    pki: Pki, other_root: Path, key_type: str
) -> None:
    chain = pki.chain(key_type)
    code, output = verify(other_root, chain.inter, chain.leaf("server"))
    assert code != 0
    assert "unable to get local issuer certificate" in output


def test_openssl_verify_fails_against_a_same_name_root(pki: Pki, impostor_root: Path) -> None:
    chain = pki.chain("ec-p256")
    code, output = verify(impostor_root, chain.inter, chain.leaf("server"))
    assert code != 0, output
    assert "error" in output


def test_openssl_verify_fails_for_the_wrong_purpose(pki: Pki) -> None:
    chain = pki.chain("ec-p256")
    code, output = verify(chain.root, chain.inter, chain.leaf("client"), "-purpose", "sslserver")
    assert code != 0
    assert "unsuitable certificate purpose" in output


def test_openssl_verify_fails_without_the_intermediate(pki: Pki) -> None:
    chain = pki.chain("ec-p256")
    leaf_only = chain.leaves["server"] / "leaf-only.crt"
    ok(run("openssl", "x509", "-in", chain.leaf("server"), "-out", leaf_only))
    result = failed(run("openssl", "verify", "-CAfile", chain.root / "ca.crt", leaf_only))
    assert "unable to get local issuer certificate" in result.stdout + result.stderr


@pytest.mark.parametrize("profile", LEAF_PROFILES)
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_text_shows_leaf_extensions(pki: Pki, key_type: str, profile: str) -> None:
    ext = x509_extensions(pki.chain(key_type).leaf(profile))
    assert ext["X509v3 Basic Constraints"] == (True, "CA:FALSE")
    is_rsa_server = key_type.startswith("rsa") and "server" in profile
    usage = "Digital Signature, Key Encipherment" if is_rsa_server else "Digital Signature"
    assert ext["X509v3 Key Usage"] == (True, usage)
    assert ext["X509v3 Extended Key Usage"] == (False, EKU_TEXT[profile])
    assert ext["X509v3 Subject Alternative Name"] == (
        False,
        f"DNS:{LEAF_NAMES[profile]}, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1",
    )
    assert "X509v3 Subject Key Identifier" in ext
    assert "X509v3 Authority Key Identifier" in ext


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_text_shows_ca_extensions(pki: Pki, key_type: str) -> None:
    chain = pki.chain(key_type)
    root = x509_extensions(chain.root / "ca.crt")
    inter = x509_extensions(chain.inter / "ca.crt")
    assert root["X509v3 Basic Constraints"] == (True, "CA:TRUE")
    assert inter["X509v3 Basic Constraints"] == (True, "CA:TRUE, pathlen:0")
    for ext in (root, inter):
        assert ext["X509v3 Key Usage"] == (True, "Digital Signature, Certificate Sign, CRL Sign")
        assert "X509v3 Extended Key Usage" not in ext
        assert "X509v3 Subject Alternative Name" not in ext
    # The intermediate names its issuer's key.
    root_ski = root["X509v3 Subject Key Identifier"][1]
    assert inter["X509v3 Authority Key Identifier"][1].removeprefix("keyid:") == root_ski


def test_comma_separated_names_as_certutil_gives_them(pki: Pki, tmp_path: Path) -> None:
    # elasticsearch-certutil cert --dns a,b --ip x,y: a migrating script keeps that form.
    # Before, the whole list was one name, refused as an invalid DNS name.
    chain = pki.chain("ec-p256")
    out = tmp_path / "leaf"
    result = run(
        "certctl", "cert", "issue", "--ca", chain.inter, "--cn", "a.example.com",
        "--dns", "a.example.com,b.example.com", "--ip", "10.0.0.1, ::1",
        # --email too, as `certs issue` takes it (before: one address, refused); a URI keeps
        # its comma.
        "--email", "ops@example.com,dev@example.com", "--uri", "urn:example:a,b", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert x509_extensions(out / "tls.crt")["X509v3 Subject Alternative Name"] == (
        False,
        "DNS:a.example.com, DNS:b.example.com, IP Address:10.0.0.1, IP Address:0:0:0:0:0:0:0:1, "
        "email:ops@example.com, email:dev@example.com, URI:urn:example:a,b",
    )
    for check in (["-verify_hostname", "b.example.com"], ["-verify_ip", "::1"]):
        code, output = verify(chain.root, chain.inter, out / "tls.crt", *check)
        assert code == 0, output
    # The negative twin: the list itself names no host.
    code, output = verify(
        chain.root, chain.inter, out / "tls.crt", "-verify_hostname", "a.example.com,b.example.com"
    )
    assert code != 0
    assert "hostname mismatch" in output
