"""``certctl inspect``: what is in a certificate, key, CSR, CRL or PKCS#12 file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from certctl.cli._common import read_material, read_password

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["certificate_summary", "inspect_command"]


def certificate_summary(cert: x509.Certificate) -> dict[str, Any]:
    """The DESIGN §6 JSON view of a certificate."""
    from cryptography import x509 as _x509
    from cryptography.hazmat.primitives import hashes

    from certctl.pki import SubjectAltNames, format_serial, key_type_of

    ext = cert.extensions
    try:
        sans = SubjectAltNames.from_extension(
            ext.get_extension_for_class(_x509.SubjectAlternativeName).value
        )
    except _x509.ExtensionNotFound:
        sans = SubjectAltNames()
    try:
        bc = ext.get_extension_for_class(_x509.BasicConstraints).value
        is_ca = bc.ca
    except _x509.ExtensionNotFound:
        is_ca = False
    usages: list[str] = []
    try:
        ku = ext.get_extension_for_class(_x509.KeyUsage).value
        for attr in (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        ):
            if getattr(ku, attr):
                usages.append(attr)
    except _x509.ExtensionNotFound:
        pass
    try:
        eku = [
            getattr(oid, "_name", oid.dotted_string)
            for oid in ext.get_extension_for_class(_x509.ExtendedKeyUsage).value
        ]
    except _x509.ExtensionNotFound:
        eku = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format_serial(cert.serial_number),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sans": sans.as_dict(),
        "key_type": key_type_of(cert.public_key()),
        "is_ca": is_ca,
        "key_usage": usages,
        "extended_key_usage": eku,
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    }


def inspect_command(
    file: Path = typer.Argument(..., help="PEM, DER or PKCS#12 file."),
    password_file: Path = typer.Option(
        None, "--password-file", help="Password for PKCS#12 or an encrypted key."
    ),
    password: str = typer.Option(
        None, "--password", help="Password on the command line (demos only)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per certificate."),
) -> None:
    """Show the certificates (and keys, CSRs, CRLs) in a file."""
    from certctl.pki import SubjectAltNames, csr_sans, key_type_of

    material = read_material(file, read_password(password_file, password))
    summaries = [certificate_summary(c) for c in material.certificates]
    if as_json:
        typer.echo(json.dumps(summaries, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for index, summary in enumerate(summaries, start=1):
        table = Table(
            title=f"certificate {index} of {len(summaries)} ({material.format})",
            show_header=False,
            title_justify="left",
        )
        table.add_column(style="bold")
        table.add_column()
        sans = summary["sans"]
        san_text = ", ".join(
            [f"DNS:{v}" for v in sans["dns"]]
            + [f"IP:{v}" for v in sans["ip"]]
            + [f"email:{v}" for v in sans["email"]]
            + [f"URI:{v}" for v in sans["uri"]]
        )
        rows = [
            ("subject", summary["subject"]),
            ("issuer", summary["issuer"]),
            ("serial", summary["serial"]),
            ("valid", f"{summary['not_before']} → {summary['not_after']}"),
            ("SANs", san_text or "-"),
            ("key", summary["key_type"]),
            ("CA", "yes" if summary["is_ca"] else "no"),
            ("key usage", ", ".join(summary["key_usage"]) or "-"),
            ("ext. key usage", ", ".join(summary["extended_key_usage"]) or "-"),
            ("SHA-256", summary["fingerprint_sha256"]),
        ]
        for label, value in rows:
            table.add_row(label, value)
        console.print(table)
    if material.private_key is not None:
        console.print(f"private key: {key_type_of(material.private_key)}")
    for csr in material.csrs:
        sans_text = ", ".join(v for vs in csr_sans(csr).as_dict().values() for v in vs)
        console.print(
            f"CSR: subject {csr.subject.rfc4514_string()}, key {key_type_of(csr.public_key())}, "
            f"SANs {sans_text or '-'}, signature {'valid' if csr.is_signature_valid else 'INVALID'}"
        )
    for crl in material.crls:
        console.print(
            f"CRL: issuer {crl.issuer.rfc4514_string()}, {len(crl)} revoked, "
            f"next update {crl.next_update_utc}"
        )
    _ = SubjectAltNames
