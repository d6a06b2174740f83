"""``certctl inspect``'s readable output is what one Rich ``print`` per line printed.

Printing a 20,000-certificate bundle through Rich, one ``Console.print`` per line (~60 µs
each, 13 lines a certificate), took 17 of its 22 s; the lines are now written directly. This
pins the bytes to what Rich printed, plain (a pipe) and styled (a terminal), for a bundle of
the odd kinds a bundle holds: a certificate twice, a chain out of order, unrelated
certificates, a subject with a terminal escape in it, a key, a CSR and a CRL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certctl.cli.main import run

NOW = datetime.now(UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(x509.NameOID.EMAIL_ADDRESS, f"{cn[:4]}@example.com"),
            x509.NameAttribute(x509.NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=subject != "web", path_length=None), critical=True)
    )
    if subject == "web":
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("web.example"), x509.DNSName("b\x1b]0")]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root_key, inter_key, leaf_key, other_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in "1234"
    )
    root = _cert("Root", "Root", root_key, root_key)
    inter = _cert("Inter", "Root", inter_key, root_key)
    leaf = _cert("web", "Inter", leaf_key, inter_key)
    other = _cert("Other\x1b[2J", "Other\x1b[2J", other_key, other_key)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name("csr"))
        .sign(leaf_key, hashes.SHA256())
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(NOW)
        .next_update(NOW + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(31).revocation_date(NOW).build()
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM)
        for c in (leaf, root, other, inter, leaf, csr, crl)
    ) + leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path_factory.mktemp("bundle") / "bundle.pem"
    path.write_bytes(pem)
    return path


def _as_rich_printed(path: Path) -> str:
    """The readable output as the per-line Rich printer wrote it (before the fast writer)."""
    import io

    from rich.console import Console
    from rich.text import Text

    from certctl.cli._common import read_material
    from certctl.cli._listing import printable
    from certctl.cli.inspect import _TITLES, _rows, material_summaries

    material = read_material(path, None, "file")
    items = material_summaries(material, everything=True)
    out = io.StringIO()
    console = Console(highlight=False, file=out)
    counts = {kind: sum(1 for i in items if i["kind"] == kind) for kind in _TITLES}
    seen = dict.fromkeys(_TITLES, 0)
    for index, item in enumerate(items):
        if index:
            console.print()
        kind = item["kind"]
        seen[kind] += 1
        title = _TITLES[kind]
        if counts[kind] > 1 or kind == "certificate":
            title += f" {seen[kind]} of {counts[kind]}"
        console.print(Text(f"{title} ({material.format})", style="bold"))
        for label, value in _rows(item, NOW):
            line = Text.assemble(("  " + label.ljust(16), "bold"), printable(value))
            console.print(line, soft_wrap=True)
    return out.getvalue()


@pytest.mark.parametrize(
    ("environment", "styled"),
    [
        ({}, False),
        ({"FORCE_COLOR": "1", "TERM": "xterm-256color"}, True),
        ({"FORCE_COLOR": "1", "TERM": "xterm-256color", "NO_COLOR": "1"}, True),  # bold stays
        ({"FORCE_COLOR": "1", "TERM": "dumb"}, False),
    ],
    ids=["pipe", "terminal", "no-color", "dumb"],
)
def test_readable_output_is_what_rich_printed(
    bundle: Path,
    environment: dict[str, str],
    styled: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for variable in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TERM", "COLUMNS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("COLUMNS", "40")  # values run on past the width, never folded
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    expected = _as_rich_printed(bundle)
    assert ("\x1b[1m" in expected) is styled  # the reference did style, or did not
    assert run(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert out == expected
    assert out.count("certificate ") >= 5
    assert "CN=Other\\x1b[2J" in out
    assert "private key (pem)" in out
