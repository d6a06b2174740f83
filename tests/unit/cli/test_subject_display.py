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
