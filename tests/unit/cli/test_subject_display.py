"""Subjects printed for people name emailAddress as OpenSSL does, not by its dotted OID.

cryptography's rfc4514_string() knows no short name for emailAddress (RFC 4514 lists none),
so 'certctl csr sign' printed "for 1.2.840.113549.1.9.1=ops@example.com,CN=Web". The
summaries and messages of the CLI use the name OpenSSL prints; what certctl stores, and the
strings client-certificate mappings match, stay rfc4514_string()'s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from certctl.cli.main import run

OID = "1.2.840.113549.1.9.1"
SUBJECT = "emailAddress=ops@example.com,CN=Web"
# --subject takes the dotted OID (parse_dn knows no emailAddress): the printed form differs.
GIVEN = f"{OID}=ops@example.com,CN=Web"


def test_ca_csr_and_verify_summaries_name_email_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca, req, signed = tmp_path / "ca", tmp_path / "req", tmp_path / "signed"
    assert run(["ca", "create", "--out", str(ca), "--subject", f"{OID}=pki@example.com,CN=R"]) == 0
    assert run(["csr", "create", "--out", str(req), "--subject", GIVEN, "--dns", "web"]) == 0
    csr = str(req / "tls.csr")
    assert run(["csr", "sign", "--csr", csr, "--ca", str(ca), "--out", str(signed)]) == 0
    assert run(["verify", str(signed / "tls.crt"), "--ca", str(ca / "ca.crt")]) == 0
    out = capsys.readouterr().out
    assert OID not in out, out
    lines = out.splitlines()
    assert "created root CA emailAddress=pki@example.com,CN=R in " in lines[0], lines
    assert f"created CSR for {SUBJECT}" in lines, lines
    assert any(line.endswith(f" for {SUBJECT}") for line in lines), lines
    assert f"{SUBJECT} <- emailAddress=pki@example.com,CN=R" in out, out


def test_terminal_escapes_in_a_certificate_are_shown_not_acted_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A certificate is someone else's text: a CN or SAN holding an escape sequence (clear
    # the screen, set the window title) or a right-to-left override reached the terminal
    # as it was from inspect, verify and ca import, which escape nothing on a terminal
    # (click strips ANSI only when stdout is not one). Errors and warnings escaped already.
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ca\x1b[2J\u202eevil")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("a.example"), x509.DNSName("b\x1b]0;t\x07")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem, key_pem = tmp_path / "ca.pem", tmp_path / "ca.key"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert run(["inspect", str(pem)]) == 0
    assert run(["verify", "--ca", str(pem), "--hostname", "a.example", str(pem)]) == 0
    imported = tmp_path / "imported"
    assert (
        run(["ca", "import", "--cert", str(pem), "--key", str(key_pem), "--out", str(imported)])
        == 0
    )
    out = capsys.readouterr().out
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in out
    assert out.count("CN=ca\\x1b[2J\\u202eevil") == 4, out  # subject, issuer, path, import
    assert "DNS:b\\x1b]0;t\\x07" in out
