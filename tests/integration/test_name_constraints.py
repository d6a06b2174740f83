"""A CA with nameConstraints (made by openssl, imported) signs only what verifiers accept.

certctl writes no name constraints, but imports CAs that have them. Before, ``cert issue``
signed any name under such a CA, and ``openssl verify`` refused the result with "permitted
subtree violation": the user learned it at the first handshake.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._tools import openssl_req, run
from tests.integration.conftest import (
    certctl,
    certctl_ok,
    openssl_root_and_leaf,
    openssl_server_certificate,
)

pytestmark = pytest.mark.integration

CONSTRAINTS = (
    "nameConstraints=critical,permitted;DNS:.corp.example,permitted;IP:10.0.0.0/255.0.0.0,"
    "permitted;email:corp.example,permitted;URI:.corp.example,excluded;DNS:.secret.corp.example"
)


@pytest.fixture(scope="module")
def constrained_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imported root limited to .corp.example (DNS, URI hosts), 10/8, @corp.example."""
    base = tmp_path_factory.mktemp("constrained")
    openssl_req(
        base / "ca.key", base / "ca.crt", "/CN=Corp Constrained CA", "-days", "30",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", CONSTRAINTS,
        x509=True,
    )  # fmt: skip
    out = base / "ca"
    certctl_ok("ca", "import", "--cert", base / "ca.crt", "--key", base / "ca.key", "--out", out)
    return out


def _openssl_verify(ca: Path, leaf: Path, purpose: str) -> tuple[int, str]:
    result = run(
        "openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", ca / "ca.crt",
        "-untrusted", leaf, leaf,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "purpose"),
    [
        (
            ["--cn", "web.corp.example", "--dns", "web.corp.example", "--ip", "10.1.2.3"],
            "sslserver",
        ),
        (["--cn", "svc.corp.example", "--uri", "spiffe://svc.corp.example/api"], "sslserver"),
        (
            ["--cn", "Alice Smith", "--profile", "client", "--email", "alice@corp.example"],
            "sslclient",
        ),
        # A common name that is no host name is not held to the DNS constraints.
        (["--cn", "batch job", "--profile", "client"], "sslclient"),
    ],
)
def test_names_inside_the_constraints_are_issued_and_verify(
    constrained_ca: Path, tmp_path: Path, args: list[str], purpose: str
) -> None:
    out = tmp_path / "leaf"
    certctl_ok("cert", "issue", "--ca", constrained_ca, "--out", out, *args)
    assert _openssl_verify(constrained_ca, out / "tls.crt", purpose) == (
        0,
        f"{out / 'tls.crt'}: OK\n",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--cn", "web.example.com", "--dns", "web.example.com"],
            "DNS name web.example.com is outside the issuing CA's name constraints "
            "(permitted: DNS .corp.example)",
        ),
        (
            # ".corp.example" covers the names below it, not the apex (OpenSSL, Go).
            ["--cn", "corp.example"],
            "DNS name corp.example is outside the issuing CA's name constraints "
            "(permitted: DNS .corp.example)",
        ),
        (
            ["--cn", "db.secret.corp.example", "--dns", "db.secret.corp.example"],
            "DNS name db.secret.corp.example is excluded by the issuing CA's name constraints "
            "(DNS .secret.corp.example)",
        ),
        (
            ["--cn", "web.corp.example", "--dns", "web.corp.example", "--ip", "192.168.1.1"],
            "IP address 192.168.1.1 is outside the issuing CA's name constraints "
            "(permitted: IP 10.0.0.0/8)",
        ),
        (
            ["--cn", "web.corp.example", "--dns", "web.corp.example", "--ip", "::1"],
            "IP address ::1 is outside the issuing CA's name constraints "
            "(permitted: IP 10.0.0.0/8)",
        ),
        (
            ["--cn", "Mallory", "--profile", "client", "--email", "m@evil.example"],
            "e-mail address m@evil.example is outside the issuing CA's name constraints "
            "(permitted: email corp.example)",
        ),
        (
            ["--cn", "svc.corp.example", "--uri", "spiffe://evil.example/api"],
            "URI spiffe://evil.example/api is outside the issuing CA's name constraints "
            "(permitted: URI .corp.example)",
        ),
        (
            # No DNS SAN: OpenSSL holds a host-like common name to the DNS constraints.
            ["--cn", "web.example.com", "--profile", "client"],
            "DNS name web.example.com is outside the issuing CA's name constraints "
            "(permitted: DNS .corp.example)",
        ),
    ],
)
def test_names_outside_the_constraints_are_refused_in_one_line(
    constrained_ca: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "leaf"
    result = certctl("cert", "issue", "--ca", constrained_ca, "--out", out, *args)
    assert result.code == 1
    assert result.err == (f"certctl: error: {message}: no client would accept the certificate\n")
    assert not out.exists()


def test_openssl_refuses_what_certctl_now_refuses(constrained_ca: Path, tmp_path: Path) -> None:
    # Negative twin: the same name signed by openssl itself under the constrained CA fails
    # `openssl verify`, so the refusal above spares the user a certificate nothing accepts.
    crt = openssl_server_certificate(constrained_ca, tmp_path)
    code, output = _openssl_verify(constrained_ca, crt, "sslserver")
    assert code != 0
    assert "permitted subtree violation" in output


def test_an_intermediate_below_a_constrained_ca_is_held_to_its_constraints(
    constrained_ca: Path, tmp_path: Path
) -> None:
    inter = tmp_path / "inter"
    certctl_ok("ca", "create", "--parent", constrained_ca, "--out", inter, "--cn", "Corp Sub CA")
    inside = tmp_path / "inside"
    certctl_ok("cert", "issue", "--ca", inter, "--out", inside, "--cn", "a.corp.example")
    code, output = _openssl_verify(constrained_ca, inside / "tls.crt", "sslserver")
    assert (code, output) == (0, f"{inside / 'tls.crt'}: OK\n")
    refused = certctl("cert", "issue", "--ca", inter, "--out", tmp_path / "x", "--cn", "a.example")
    assert refused.code == 1
    assert "DNS name a.example is outside the issuing CA's name constraints" in refused.err


def test_a_directory_name_constraint_holds_the_subject(tmp_path: Path) -> None:
    # Compared as OpenSSL compares names: "o=example  corp" is inside "O=Example Corp".
    config = tmp_path / "ca.cnf"
    config.write_text(
        "[req]\ndistinguished_name = dn\n[dn]\n"
        "[ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "nameConstraints = critical,permitted;dirName:corp\n"
        "[corp]\nC = US\nO = Example Corp\n"
    )
    openssl_req(
        tmp_path / "ca.key", tmp_path / "ca.crt", "/C=US/O=Example Corp/CN=Corp DN CA",
        "-config", config, "-extensions", "ext", "-days", "30", x509=True,
    )  # fmt: skip
    ca = tmp_path / "ca"
    certctl_ok(
        "ca", "import", "--cert", tmp_path / "ca.crt", "--key", tmp_path / "ca.key", "--out", ca
    )
    inside = tmp_path / "inside"
    subject = "CN=Build Bot,OU=ci,O=example  corp,C=US"
    certctl_ok(
        "cert", "issue", "--ca", ca, "--out", inside, "--profile", "client", "--subject", subject
    )
    assert _openssl_verify(ca, inside / "tls.crt", "sslclient") == (
        0,
        f"{inside / 'tls.crt'}: OK\n",
    )
    refused = certctl(
        "cert", "issue", "--ca", ca, "--out", tmp_path / "x", "--profile", "client",
        "--subject", "CN=Build Bot,O=Other Corp,C=US",
    )  # fmt: skip
    assert refused.code == 1
    assert refused.err == (
        "certctl: error: subject CN=Build Bot,O=Other Corp,C=US is outside the issuing CA's "
        "name constraints (permitted: DirName O=Example Corp,C=US): no client would accept "
        "the certificate\n"
    )


_LEAF_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
)


def _openssl_chain(
    tmp_path: Path, key: tuple[str, ...], ca_extensions: str, leaf_subject: str, leaf_san: str
) -> tuple[Path, Path]:
    return openssl_root_and_leaf(
        tmp_path, key, ca_extensions, leaf_subject, f"{_LEAF_EXTENSIONS}subjectAltName = {leaf_san}"
    )


_KU = "keyUsage = critical,keyCertSign,cRLSign\n"
_EC = ("ec", "-pkeyopt", "ec_paramgen_curve:P-256")


@pytest.mark.parametrize(
    ("key", "ca_extensions", "subject", "san", "refused"),
    [
        # Ed25519 (and a CA without keyUsage, below) take certctl's own RFC 5280 path check,
        # which checked no name constraints: a leaf outside them verified.
        (("ed25519",), f"{_KU}nameConstraints = critical,permitted;DNS:good.example",
         "/CN=www.evil.example", "DNS:www.evil.example",
         "DNS name www.evil.example is outside the name constraints of "
         "CN=Constrained Root,O=Example Corp (permitted: DNS good.example)"),
        (("ed25519",), f"{_KU}nameConstraints = critical,permitted;DNS:good.example",
         "/CN=www.good.example", "DNS:www.good.example", None),
        # cryptography's own refusal named neither the name nor the constraint: "candidates
        # exhausted: excluded name constraint matched SAN".
        (_EC, f"{_KU}nameConstraints = critical,excluded;DNS:bad.good.example",
         "/CN=x.bad.good.example", "DNS:x.bad.good.example",
         "DNS name x.bad.good.example is excluded by the name constraints of "
         "CN=Constrained Root,O=Example Corp (DNS bad.good.example)"),
        (_EC, "nameConstraints = critical,excluded;IP:10.0.0.0/255.0.0.0",
         "/CN=web.example", "DNS:web.example,IP:10.1.2.3",
         "IP address 10.1.2.3 is excluded by the name constraints of "
         "CN=Constrained Root,O=Example Corp (IP 10.0.0.0/8)"),
        (_EC, "nameConstraints = critical,permitted;dirName:corp\n[corp]\nO = Example Corp",
         "/O=Other Corp/CN=web.example", "DNS:web.example",
         "subject CN=web.example,O=Other Corp is outside the name constraints of "
         "CN=Constrained Root,O=Example Corp (permitted: DirName O=Example Corp)"),
        # The leading-dot form (OpenSSL's and Windows' own, and what certctl issues under)
        # is "malformed" to cryptography's verifier: a valid leaf was refused.
        (_EC, f"{_KU}nameConstraints = critical,permitted;DNS:.corp.example",
         "/CN=web.corp.example", "DNS:web.corp.example", None),
        (_EC, f"{_KU}nameConstraints = critical,permitted;DNS:.corp.example",
         "/CN=corp.example", "DNS:corp.example",
         "DNS name corp.example is outside the name constraints of "
         "CN=Constrained Root,O=Example Corp (permitted: DNS .corp.example)"),
        # OpenSSL holds an emailAddress attribute of the subject to the rfc822Name
        # constraints as it does an e-mail SAN; neither cryptography's verifier nor certctl's
        # own path check did, and these verified.
        (_EC, f"{_KU}nameConstraints = critical,permitted;email:corp.example",
         "/CN=web.example/emailAddress=m@evil.example", "DNS:web.example",
         "subject e-mail address m@evil.example is outside the name constraints of "
         "CN=Constrained Root,O=Example Corp (permitted: email corp.example)"),
        (("ed25519",), f"{_KU}nameConstraints = critical,excluded;email:evil.example",
         "/CN=web.example/emailAddress=m@evil.example", "DNS:web.example",
         "subject e-mail address m@evil.example is excluded by the name constraints of "
         "CN=Constrained Root,O=Example Corp (email evil.example)"),
        (("ed25519",), f"{_KU}nameConstraints = critical,permitted;email:corp.example",
         "/CN=web.example/emailAddress=alice@corp.example", "DNS:web.example", None),
    ],
)  # fmt: skip
def test_verify_holds_name_constraints_as_openssl_does(
    tmp_path: Path,
    key: tuple[str, ...],
    ca_extensions: str,
    subject: str,
    san: str,
    refused: str | None,
) -> None:
    ca, leaf = _openssl_chain(tmp_path, key, ca_extensions, subject, san)
    reference = run("openssl", "verify", "-purpose", "sslserver", "-CAfile", ca, leaf)
    assert (reference.returncode == 0) is (refused is None), reference.stdout + reference.stderr
    result = certctl("verify", "--ca", ca, leaf)
    if refused is None:
        assert (result.code, result.err) == (0, "")
    else:
        assert (result.code, result.err) == (1, f"certctl: error: verification failed: {refused}\n")
