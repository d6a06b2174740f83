"""CSRs made by ``openssl req`` signed by ``certctl csr sign``, and ours read by openssl."""

from __future__ import annotations

import base64
import subprocess
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from tests._tools import EC_P256, ok, run
from tests.integration.conftest import Pki, certctl_exe, certctl_ok
from tests.integration.test_openssl_x509 import x509_extensions

pytestmark = pytest.mark.integration

GREEDY_EXTENSIONS = [
    "-addext", "subjectAltName=DNS:x.example.com",
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign",
]  # fmt: skip


def openssl_csr(
    directory: Path, *key_args: str, subject: str = "/CN=x", extra: list[str] | None = None
) -> Path:
    """``openssl req -new`` with a fresh key (``directory``/req.key); returns the PEM CSR."""
    directory.mkdir(parents=True, exist_ok=True)
    csr = directory / "req.csr"
    result = run(
        "openssl", "req", "-new", *key_args, "-nodes", "-keyout", directory / "req.key",
        "-out", csr, "-subj", subject, *(extra or []),
    )  # fmt: skip
    ok(result)
    return csr


def tamper(csr: Path, out: Path) -> Path:
    """Flip one bit of the signature (near the end of the DER) and re-encode as PEM."""
    lines = csr.read_text().strip().splitlines()
    der = bytearray(base64.b64decode("".join(lines[1:-1])))
    der[-3] ^= 0x01
    body = "\n".join(textwrap.wrap(base64.b64encode(bytes(der)).decode(), 64))
    out.write_text(
        f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"
    )
    return out


def test_sign_drops_requested_ca_extensions(pki: Pki, tmp_path: Path) -> None:
    chain = pki.chain("ec-p256")
    csr = openssl_csr(tmp_path, *EC_P256, extra=GREEDY_EXTENSIONS)
    out = tmp_path / "signed"
    result = certctl_exe(
        "csr", "sign", "--ca", chain.inter, "--csr", csr, "--profile", "server", "--out", out
    )
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr
    assert "ignored" in result.stderr
    assert "basicConstraints" in result.stderr
    assert "keyUsage" in result.stderr
    ext = x509_extensions(out / "tls.crt")
    assert ext["X509v3 Basic Constraints"] == (True, "CA:FALSE")
    assert ext["X509v3 Key Usage"] == (True, "Digital Signature")
    assert "Certificate Sign" not in ext["X509v3 Key Usage"][1]
    assert ext["X509v3 Subject Alternative Name"] == (False, "DNS:x.example.com")
    assert ext["X509v3 Extended Key Usage"] == (False, "TLS Web Server Authentication")
    result = run(
        "openssl", "verify", "-purpose", "sslserver", "-CAfile", chain.root / "ca.crt",
        "-untrusted", chain.inter / "ca.crt", out / "tls.crt",
    )  # fmt: skip
    ok(result)


def test_sign_refuses_an_rsa_1024_csr(pki: Pki, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path / "weak", "-newkey", "rsa:1024")
    out = tmp_path / "signed"
    inter = pki.chain("ec-p256").inter
    result = certctl_exe("csr", "sign", "--ca", inter, "--csr", csr, "--out", out)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("certctl: error:")
    assert "2048" in lines[0]
    assert not out.exists()


def test_sign_accepts_an_rsa_2048_csr(pki: Pki, tmp_path: Path) -> None:
    # Positive twin of the RSA-1024 refusal.
    csr = openssl_csr(tmp_path / "rsa", "-newkey", "rsa:2048")
    out = tmp_path / "signed"
    certctl_ok("csr", "sign", "--ca", pki.chain("ec-p256").inter, "--csr", csr, "--out", out)
    assert "Key Encipherment" in x509_extensions(out / "tls.crt")["X509v3 Key Usage"][1]


@pytest.mark.parametrize(
    "key_args",
    [list(EC_P256), ["-newkey", "rsa:2048"]],
    ids=["ec", "rsa"],
)
def test_sign_refuses_a_tampered_csr(pki: Pki, tmp_path: Path, key_args: list[str]) -> None:
    csr = openssl_csr(tmp_path / "req", *key_args)
    bad = tamper(csr, tmp_path / "tampered.csr")
    # The file still parses for openssl: only the signature is wrong. (OpenSSL 3.0's
    # `req -verify` exits 0 either way, so read its verdict.)
    check = run("openssl", "req", "-verify", "-noout", "-in", bad)
    assert "self-signature verify failure" in check.stdout + check.stderr
    out = tmp_path / "signed"
    inter = pki.chain("ec-p256").inter
    result = certctl_exe("csr", "sign", "--ca", inter, "--csr", bad, "--out", out)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "signature" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "ed25519", "rsa-2048"])
def test_openssl_verifies_certctl_csr(tmp_path: Path, key_type: str) -> None:
    out = tmp_path / "csr"
    certctl_ok(
        "csr", "create", "--cn", "app.example.com", "--dns", "app.example.com",
        "--ip", "10.0.0.1", "--key-type", key_type, "--out", out,
    )  # fmt: skip
    result = ok(run("openssl", "req", "-verify", "-noout", "-text", "-in", out / "tls.csr"))
    assert "self-signature verify OK" in result.stdout + result.stderr
    assert "DNS:app.example.com, IP Address:10.0.0.1" in result.stdout
    assert "Subject: CN = app.example.com" in result.stdout
    # The key written next to the CSR is the CSR's key.
    csr_pub = ok(run("openssl", "req", "-in", out / "tls.csr", "-noout", "-pubkey")).stdout
    key_pub = ok(run("openssl", "pkey", "-in", out / "tls.key", "-pubout")).stdout
    assert csr_pub == key_pub


def test_sign_names_the_requested_names_it_leaves_out(pki: Pki, tmp_path: Path) -> None:
    # A Windows smart-card request carries its UPN as an otherName SAN; certctl issues
    # DNS, IP, e-mail and URI names only, and dropped the rest without a word.
    (tmp_path / "req.cnf").write_text(
        "[req]\ndistinguished_name=dn\n[dn]\n[dir_sect]\nCN=Directory Name\n"
    )
    csr = openssl_csr(
        tmp_path, *EC_P256,
        extra=["-config", str(tmp_path / "req.cnf"), "-addext",
               "subjectAltName=DNS:x.example.com,otherName:1.3.6.1.4.1.311.20.2.3;UTF8:u@corp,"
               "RID:1.2.3.4,dirName:dir_sect,email:u@corp.example"],
    )  # fmt: skip
    out = tmp_path / "signed"
    result = certctl_exe("csr", "sign", "--ca", pki.chain("ec-p256").inter, "--csr", csr,
                         "--profile", "server+client", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "certctl: warning: CSR subjectAltName entries left out (certctl issues DNS, IP, "
        "e-mail and URI names only): otherName 1.3.6.1.4.1.311.20.2.3, registeredID "
        "1.2.3.4, directoryName CN=Directory Name\n"
    )
    shown = ok(run("openssl", "x509", "-in", out / "tls.crt", "-noout", "-ext",
                   "subjectAltName")).stdout  # fmt: skip
    assert shown.split("\n", 1)[1].strip() == "DNS:x.example.com, email:u@corp.example"
    # Its twin: a request of those four types only is signed without a word.
    names = "subjectAltName=DNS:x.example.com,IP:10.0.0.1,URI:spiffe://x/y"
    plain = openssl_csr(tmp_path / "plain", *EC_P256, extra=["-addext", names])  # fmt: skip
    result = certctl_exe("csr", "sign", "--ca", pki.chain("ec-p256").inter, "--csr", plain,
                         "--out", tmp_path / "plain-signed")  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")


def test_sign_makes_an_address_common_name_the_ip_san(pki: Pki, tmp_path: Path) -> None:
    # A hand-rolled script's `openssl req -subj /CN=127.0.0.1` with no SANs: openssl matches
    # an address against IP SANs only. Before, the CN became no SAN at all (a DNS name was
    # tried and refused) and no client could reach the server by that address.
    out = tmp_path / "signed"
    csr = openssl_csr(tmp_path / "ip", *EC_P256, subject="/CN=127.0.0.1")
    chain = pki.chain("ec-p256")
    result = certctl_exe("csr", "sign", "--ca", chain.inter, "--csr", csr, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "without a DNS or IP name" not in result.stderr
    assert x509_extensions(out / "tls.crt")["X509v3 Subject Alternative Name"] == (
        False,
        "IP Address:127.0.0.1",
    )

    def verify_ip(address: str) -> subprocess.CompletedProcess[str]:
        return run(
            "openssl", "verify", "-purpose", "sslserver", "-verify_ip", address,
            "-CAfile", chain.root / "ca.crt", "-untrusted", chain.inter / "ca.crt",
            out / "tls.crt",
        )  # fmt: skip

    ok(verify_ip("127.0.0.1"))
    other = verify_ip("127.0.0.2")  # the negative twin: another address
    assert other.returncode != 0
    assert "IP address mismatch" in other.stdout + other.stderr


def test_csr_create_splits_comma_separated_names(tmp_path: Path) -> None:
    # As elasticsearch-certutil csr --dns a,b --ip x,y does.
    out = tmp_path / "csr"
    certctl_ok(
        "csr", "create", "--cn", "app.example.com", "--dns", "app.example.com,api.example.com",
        "--ip", "10.0.0.1,2001:db8::1", "--email", "ops@example.com,dev@example.com",
        "--out", out,
    )  # fmt: skip
    result = ok(run("openssl", "req", "-verify", "-noout", "-text", "-in", out / "tls.csr"))
    assert (
        "DNS:app.example.com, DNS:api.example.com, IP Address:10.0.0.1, "
        "IP Address:2001:DB8:0:0:0:0:0:1, email:ops@example.com, email:dev@example.com"
    ) in result.stdout


def _pair_matches(directory: Path) -> bool:
    """What a server loading tls.crt with tls.key finds: the same public key in both."""
    cert = ok(run("openssl", "x509", "-in", directory / "tls.crt", "-noout", "-pubkey"))
    key = ok(run("openssl", "pkey", "-in", directory / "tls.key", "-pubout"))
    return cert.stdout == key.stdout


def test_csr_commands_warn_when_they_leave_a_mismatched_pair(pki: Pki, tmp_path: Path) -> None:
    # A renewal in the live directory: csr create --force writes a new tls.key beside the
    # old tls.crt; csr sign --out another certificate's directory writes a tls.crt beside
    # a key that is not the CSR's. Before, both left a pair no server loads, without a word.
    inter = pki.chain("ec-p256").inter
    live = tmp_path / "live"
    certctl_ok("cert", "issue", "--ca", inter, "--cn", "web.example.com", "--out", live)
    renewed = certctl_exe("csr", "create", "--cn", "web.example.com", "--out", live, "--force")
    assert renewed.returncode == 0, renewed.stderr
    assert not _pair_matches(live)
    assert renewed.stderr == (
        f"certctl: warning: {live}/tls.crt is the certificate of the replaced key: it does not "
        f"go with the new {live}/tls.key until the certificate for {live}/tls.csr replaces it\n"
    )
    # Signing that CSR into the directory puts the pair right again: no warning.
    signed = certctl_exe("csr", "sign", "--ca", inter, "--csr", live / "tls.csr", "--out", live,
                         "--force")  # fmt: skip
    assert (signed.returncode, signed.stderr) == (0, "")
    assert _pair_matches(live)
    # Another CSR signed into it leaves the key of the first beside the new certificate.
    other = openssl_csr(tmp_path / "other", *EC_P256)
    mixed = certctl_exe("csr", "sign", "--ca", inter, "--csr", other, "--out", live, "--force")
    assert mixed.returncode == 0, mixed.stderr
    assert not _pair_matches(live)
    assert mixed.stderr.endswith(
        f"certctl: warning: {live}/tls.key is not the CSR's key: it does not go with the new "
        f"{live}/tls.crt (put the certificate beside the key the CSR was made with)\n"
    )


def test_csr_create_force_keeps_a_key_waiting_for_its_certificate(pki: Pki, tmp_path: Path) -> None:
    # csr create --force replaced it without a word: the CSR may be at a CA already, and the
    # certificate it sends back then goes with no key. Refused, as cert issue refuses it.
    inter = pki.chain("ec-p256").inter
    web = tmp_path / "web"
    certctl_ok("csr", "create", "--cn", "web.example.com", "--out", web)
    before = {name: (web / name).read_bytes() for name in ("tls.csr", "tls.key")}
    for force in ([], ["--force"]):  # without --force, not "use --force" (that led here)
        again = certctl_exe("csr", "create", "--cn", "web.example.com", "--out", web, *force)
        assert (again.returncode, again.stdout) == (1, "")
        assert again.stderr == (
            f"certctl: error: {web}/tls.key is the key of {web}/tls.csr, which has no "
            f"certificate yet: a new key and CSR in {web} would lose it (nothing was written); "
            f"get its certificate first ('certctl csr sign --ca CA_DIR --csr {web}/tls.csr "
            f"--out {web}', or from the CA it went to), or give another --out; to give the "
            f"request up, delete {web}/tls.csr\n"
        )
        assert {name: (web / name).read_bytes() for name in before} == before
    # The command it names, with the CA, certifies the kept key: the pair loads.
    certctl_ok("csr", "sign", "--ca", inter, "--csr", web / "tls.csr", "--out", web)
    assert _pair_matches(web)
    # Certified, the key waits for nothing: a renewal in place is the --force it was.
    certctl_ok("csr", "create", "--cn", "web.example.com", "--out", web, "--force")
    # That new request waits in turn; with the old tls.crt there, the command adds --force.
    refused = certctl_exe("csr", "create", "--cn", "web.example.com", "--out", web, "--force")
    assert refused.returncode == 1
    assert f"--out {web} --force', or from the CA it went to)" in refused.stderr
    # Given up deliberately (its CSR deleted), the directory takes a new key and CSR.
    (web / "tls.csr").unlink()
    certctl_ok("csr", "create", "--cn", "web.example.com", "--out", web, "--force")
    # openssl req without -nodes: an encrypted key beside its CSR, not readable here, is kept.
    enc = tmp_path / "enc"
    enc.mkdir()
    ok(
        run(
            "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-passout", "pass:secret", "-keyout", enc / "tls.key", "-subj", "/CN=enc",
            "-out", enc / "tls.csr",
        )
    )  # fmt: skip
    assert b"ENCRYPTED" in (enc / "tls.key").read_bytes()
    kept = certctl_exe("csr", "create", "--cn", "enc", "--out", enc, "--force")
    assert kept.returncode == 1
    assert kept.stderr.startswith(
        f"certctl: error: {enc}/tls.key is encrypted and {enc}/tls.csr beside it has no "
        "certificate yet: taken for the CSR's key (not checked without its password), a new "
        f"key and CSR in {enc} would lose it (nothing was written)"
    )
    assert b"ENCRYPTED" in (enc / "tls.key").read_bytes()


def test_a_der_certificate_of_the_key_is_its_certificate(pki: Pki, tmp_path: Path) -> None:
    # A CA may return DER (a Windows CA's .cer): saved as tls.crt, the key was still taken
    # for one waiting for its certificate, and the renewal in place refused.
    inter = pki.chain("ec-p256").inter
    web = tmp_path / "web"
    certctl_ok("csr", "create", "--cn", "web.example.com", "--out", web)
    ok(
        run(
            "openssl", "x509", "-req", "-in", web / "tls.csr", "-CA", inter / "ca.crt",
            "-CAkey", inter / "ca.key", "-days", "30", "-outform", "DER", "-out", web / "tls.crt",
        )
    )  # fmt: skip
    assert not (web / "tls.crt").read_bytes().startswith(b"-----")
    certctl_ok("csr", "create", "--cn", "web.example.com", "--out", web, "--force")
    # The new key's request waits in turn: a DER certificate of another key changes nothing.
    again = certctl_exe("csr", "create", "--cn", "web.example.com", "--out", web, "--force")
    assert again.returncode == 1
    assert "which has no certificate yet" in again.stderr


def test_a_csr_with_a_repeated_extension_is_refused_in_one_line(pki: Pki, tmp_path: Path) -> None:
    # openssl req writes two subjectAltName extensions when asked (-addext under two names);
    # before, inspect and csr sign failed with "internal error (DuplicateExtension: …)".
    csr = openssl_csr(
        tmp_path, *EC_P256,
        extra=["-addext", "subjectAltName=DNS:x.example.com",
               "-addext", "2.5.29.17=DER:300F820D622E6578616D706C652E636F6D"],
    )  # fmt: skip
    shown = ok(run("openssl", "req", "-in", csr, "-noout", "-verify", "-text"))
    assert shown.stdout.count("X509v3 Subject Alternative Name") == 2
    expected = (
        f"certctl: error: {csr}: CSR CN=x has malformed extensions "
        "(Duplicate 2.5.29.17 extension found)\n"
    )
    out = tmp_path / "signed"
    signed = certctl_exe("csr", "sign", "--ca", pki.chain("ec-p256").inter, "--csr", csr,
                         "--out", out)  # fmt: skip
    assert (signed.returncode, signed.stderr) == (1, expected)
    assert not out.exists()
    inspected = certctl_exe("inspect", csr)
    assert (inspected.returncode, inspected.stderr) == (1, expected)


def test_an_intermediate_gets_a_ca_lifetime_by_default(pki: Pki, tmp_path: Path) -> None:
    # It got the leaves' 90D, where ca create --parent gives 5Y, at most the parent's life.
    root = pki.root("long-root")
    csr = openssl_csr(tmp_path, *EC_P256, subject="/CN=Sub CA")
    result = certctl_exe(
        "csr", "sign", "--ca", root, "--csr", csr, "--profile", "intermediate",
        "--out", tmp_path / "sub",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # clipped to the root's end without a word, as ca create
    ends = [
        ok(run("openssl", "x509", "-in", cert, "-noout", "-enddate")).stdout
        for cert in (root / "ca.crt", tmp_path / "sub" / "tls.crt")
    ]
    assert ends[0] == ends[1]
    ok(run("openssl", "verify", "-CAfile", root / "ca.crt", tmp_path / "sub" / "tls.crt"))
    # A leaf keeps 90D.
    leaf = certctl_exe("csr", "sign", "--ca", root, "--csr", csr, "--out", tmp_path / "leaf")
    assert leaf.returncode == 0, leaf.stderr
    dates = ok(run("openssl", "x509", "-in", tmp_path / "leaf" / "tls.crt", "-noout", "-dates"))
    begin, end = (line.split("=", 1)[1] for line in dates.stdout.splitlines())
    fmt = "%b %d %H:%M:%S %Y GMT"
    span = datetime.strptime(end.replace("  ", " "), fmt) - datetime.strptime(
        begin.replace("  ", " "), fmt
    )
    assert span.days == 90
