"""``certctl inspect``: what is in a certificate, key, CSR, CRL or PKCS#12 file."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from certctl.cli._common import read_material, read_password, utcnow
from certctl.cli._stdin import STDIN_HELP, password_file_option

if TYPE_CHECKING:
    from datetime import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        CertificatePublicKeyTypes,
    )

    from certctl.pki import Material

__all__ = [
    "certificate_summary",
    "crl_summary",
    "csr_summary",
    "inspect_command",
    "material_summaries",
    "private_key_summary",
    "read_protected",
]


# Tried in this order when no password is given: the variable of PKCS#12 files and keys,
# then the one every CA command reads, so a ca.key (or the ca.p12 of certctl http) written
# with CERTCTL_CA_PASSWORD opens in the shell that wrote it.
PASSWORD_VARIABLES = ("CERTCTL_PASSWORD", "CERTCTL_CA_PASSWORD")


def read_protected(
    path: Path,
    password_file: Path | None,
    password: str | None,
    what: str = "file",
    *,
    optional: bool = False,
) -> Material:
    """Read ``path`` with the password given on the command line, or else from the variables.

    Without --password-file or --password, CERTCTL_PASSWORD is tried, then
    CERTCTL_CA_PASSWORD (``PASSWORD_VARIABLES``). They are defaults, often set for other
    commands: a file that needs no password opens without them, and a wrong one says where
    it came from. ``optional``: a file that needs no password opens without even a password
    given.
    """
    from certctl.errors import InvalidRequest, WrongPassword

    if password_file is not None or password is not None:
        secret = read_password(password_file, password)
        return read_material(path, secret, what, password_optional=optional)
    tried: list[str] = []
    failure: WrongPassword | None = None
    seen: set[bytes] = set()
    for env in PASSWORD_VARIABLES:
        secret = read_password(None, env=env)
        if secret is None:
            continue
        if secret in seen:
            # The same password failed already (every one tried so far did): not tried
            # again, but named, as the user may have set this variable for this file.
            tried.append(env)
            continue
        seen.add(secret)
        try:
            return read_material(path, secret, what, password_optional=True)
        except WrongPassword as exc:
            tried.append(env)
            failure = failure or exc
    if failure is None:
        try:
            return read_material(path, None, what, password_optional=True)
        except InvalidRequest as exc:
            # Name the variables where the message names the option (a key's "give its
            # password (--password-file)", a PKCS#12 file's "give --password-file").
            hint = f"--password-file, or {' or '.join(PASSWORD_VARIABLES)}"
            detail = exc.detail.replace("(--password-file)", f"({hint})").replace(
                "give --password-file", f"give {hint}"
            )
            if detail == exc.detail:
                raise
            raise exc.with_detail(detail) from exc
    source = " and ".join(tried)
    came = "passwords came" if len(tried) > 1 else "password came"
    raise failure.with_detail(f"{failure.detail} (the {came} from {source})") from failure


def _fingerprint(data: bytes) -> str:
    from cryptography.hazmat.primitives import hashes

    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    # openssl's -fingerprint spelling, so the two can be compared by eye or with grep.
    return digest.finalize().hex(":").upper()


def _key_fields(item: x509.Certificate | x509.CertificateSigningRequest) -> dict[str, Any]:
    """``key_type`` and ``public_key_fingerprint_sha256`` of a certificate's or a CSR's key.

    A key cryptography cannot load (a curve such as prime239v1 that openssl still makes) is
    named, with no fingerprint: the rest of the file is still shown. Before, such a
    certificate failed the whole command with "internal error (UnsupportedAlgorithm: …)".
    """
    from cryptography.exceptions import UnsupportedAlgorithm

    from certctl.pki import key_type_of

    try:
        key = item.public_key()
    except UnsupportedAlgorithm as exc:
        return {"key_type": f"unsupported ({exc})", "public_key_fingerprint_sha256": None}
    return {
        "key_type": key_type_of(key),
        "public_key_fingerprint_sha256": _public_key_fingerprint(key),
    }


def _public_key_fingerprint(key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo: the same for a key, its CSR and certificate."""
    from cryptography.hazmat.primitives import serialization

    return _fingerprint(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _sans(extensions: x509.Extensions) -> dict[str, list[str]]:
    from cryptography import x509 as _x509

    from certctl.pki import SubjectAltNames

    try:
        ext = extensions.get_extension_for_class(_x509.SubjectAlternativeName).value
    except _x509.ExtensionNotFound:
        return SubjectAltNames().as_dict()
    # As found, not re-validated: inspect must show a bad name, not refuse the file.
    return SubjectAltNames.from_extension(ext).as_dict()


def _signature_algorithm(oid: x509.ObjectIdentifier) -> str:
    """The signature algorithm as ``openssl x509 -text`` names it, else the dotted OID."""
    from certctl.pki.purposes import oid_name

    name = oid_name(oid)
    # openssl upper-cases the EdDSA names; the others are spelt as pyca spells them.
    return name.upper() if name in ("ed25519", "ed448") else name


def _name_constraints(extensions: x509.Extensions) -> dict[str, list[str]] | None:
    """A CA's permitted and excluded subtrees (``DNS .corp.example``), or None without any."""
    from cryptography import x509 as _x509

    from certctl.pki.constraints import describe_general_name

    try:
        value = extensions.get_extension_for_class(_x509.NameConstraints).value
    except _x509.ExtensionNotFound:
        return None
    return {
        "permitted": [describe_general_name(b) for b in value.permitted_subtrees or ()],
        "excluded": [describe_general_name(b) for b in value.excluded_subtrees or ()],
    }


def certificate_summary(cert: x509.Certificate) -> dict[str, Any]:
    """The JSON view of a certificate (`inspect --json`)."""
    from cryptography import x509 as _x509
    from cryptography.hazmat.primitives import serialization

    from certctl.pki import display_dn, format_serial
    from certctl.pki.purposes import eku_name

    ext = cert.extensions
    try:
        bc = ext.get_extension_for_class(_x509.BasicConstraints).value
        is_ca = bc.ca
        path_length = bc.path_length if bc.ca else None
    except _x509.ExtensionNotFound:
        is_ca, path_length = False, None
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
        # RFC 5280 4.2.1.3: encipherOnly/decipherOnly mean something only with keyAgreement,
        # and cryptography raises ValueError on reading them without it (a certificate with
        # either bit but no keyAgreement is refused when loaded, as malformed).
        if ku.key_agreement:
            usages += [attr for attr in ("encipher_only", "decipher_only") if getattr(ku, attr)]
    except _x509.ExtensionNotFound:
        pass
    try:
        eku = [eku_name(oid) for oid in ext.get_extension_for_class(_x509.ExtendedKeyUsage).value]
    except _x509.ExtensionNotFound:
        eku = []
    key_fields = _key_fields(cert)
    if cert.serial_number <= 0:
        from certctl.cli._common import warn

        warn(
            f"certificate {display_dn(cert.subject)}: serial number "
            f"{format_serial(cert.serial_number)} is not positive, which RFC 5280 4.1.2.2 "
            "forbids; some clients refuse it"
        )
    return {
        "kind": "certificate",
        # Attribute types as openssl names them (emailAddress=, not 1.2.840.113549.1.9.1=).
        "subject": display_dn(cert.subject),
        "issuer": display_dn(cert.issuer),
        "serial": format_serial(cert.serial_number),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sans": _sans(ext),
        "key_type": key_fields["key_type"],
        "is_ca": is_ca,
        # None on a CA: no limit on the intermediates below it.
        "path_length": path_length,
        "name_constraints": _name_constraints(ext),
        "signature_algorithm": _signature_algorithm(cert.signature_algorithm_oid),
        "key_usage": usages,
        "extended_key_usage": eku,
        "fingerprint_sha256": _fingerprint(cert.public_bytes(serialization.Encoding.DER)),
        "public_key_fingerprint_sha256": key_fields["public_key_fingerprint_sha256"],
    }


def private_key_summary(
    key: CertificateIssuerPrivateKeyTypes, *, encrypted: bool
) -> dict[str, Any]:
    """What a private key is, never any of its secret material."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from certctl.pki import key_type_of

    return {
        "kind": "private-key",
        "key_type": key_type_of(key),
        "size": getattr(key, "key_size", None),  # bits; Ed25519/Ed448 have none to speak of
        "curve": key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else None,
        "encrypted": encrypted,
        "public_key_fingerprint_sha256": _public_key_fingerprint(key.public_key()),
    }


def csr_summary(csr: x509.CertificateSigningRequest) -> dict[str, Any]:
    """The JSON view of a certificate signing request."""
    from certctl.errors import InvalidRequest
    from certctl.pki import display_dn

    try:
        sans = _sans(csr.extensions)
    except ValueError as exc:  # the attributes parse lazily, on first access
        raise InvalidRequest(f"CSR has malformed extensions: {exc}") from exc
    key_fields = _key_fields(csr)
    return {
        "kind": "csr",
        "subject": display_dn(csr.subject),
        "sans": sans,
        "key_type": key_fields["key_type"],
        # None: the key is of a kind the signature cannot be checked with.
        "signature_valid": None
        if key_fields["public_key_fingerprint_sha256"] is None
        else csr.is_signature_valid,
        "public_key_fingerprint_sha256": key_fields["public_key_fingerprint_sha256"],
    }


def crl_summary(crl: x509.CertificateRevocationList) -> dict[str, Any]:
    """The JSON view of a CRL, every revoked serial included."""
    from cryptography import x509 as _x509

    from certctl.pki import display_dn, format_serial

    try:
        number: int | None = crl.extensions.get_extension_for_class(
            _x509.CRLNumber
        ).value.crl_number
    except _x509.ExtensionNotFound:
        number = None
    revoked = []
    for entry in crl:
        try:
            reason: str | None = entry.extensions.get_extension_for_class(
                _x509.CRLReason
            ).value.reason.value
        except _x509.ExtensionNotFound:
            reason = None
        revoked.append(
            {
                "serial": format_serial(entry.serial_number),
                "revocation_date": entry.revocation_date_utc.isoformat(),
                "reason": reason,
            }
        )
    next_update = crl.next_update_utc
    return {
        "kind": "crl",
        "issuer": display_dn(crl.issuer),
        "crl_number": number,
        "last_update": crl.last_update_utc.isoformat(),
        "next_update": next_update.isoformat() if next_update else None,
        "revoked": revoked,
    }


def material_summaries(material: Material, *, everything: bool = False) -> list[dict[str, Any]]:
    """The JSON list: one object per certificate; for a file without any, its other items.

    DESIGN §6's contract is "one object per certificate": scripts run ``.[].not_after`` over
    it, so a certificate file (a PEM with its key, a PKCS#12) lists certificates only. A key,
    CSR or CRL file, which printed ``[]`` before, lists what it holds, each with its ``kind``.
    ``everything``: every item of any file (the readable output).
    """
    items = [certificate_summary(c) for c in material.certificates]
    if everything or not items:
        if material.private_key is not None:
            items.append(
                private_key_summary(material.private_key, encrypted=material.key_encrypted)
            )
        items += [csr_summary(c) for c in material.csrs]
        items += [crl_summary(c) for c in material.crls]
    for item in items:
        item["format"] = material.format
    return items


def _names(sans: dict[str, list[str]]) -> str:
    prefixes = {"dns": "DNS", "ip": "IP", "email": "email", "uri": "URI"}
    return ", ".join(f"{prefixes[k]}:{v}" for k, values in sans.items() for v in values) or "-"


def _ca_row(item: dict[str, Any]) -> str:
    if not item["is_ca"]:
        return "no"
    if item["path_length"] is None:
        return "yes (no path length limit)"
    return f"yes (path length {item['path_length']})"


def _constraint_rows(constraints: dict[str, list[str]] | None) -> list[tuple[str, str]]:
    if constraints is None:
        return []
    return [
        (f"{kind} names", ", ".join(constraints[kind]))
        for kind in ("permitted", "excluded")
        if constraints[kind]
    ]


def _signature_row(valid: bool | None) -> str:
    if valid is None:
        return "not checked (unsupported key)"
    return "valid" if valid else "INVALID"


# RFC 5280's names, as the extended key usages beside them (serverAuth), openssl's
# keyUsage= configuration and verify's messages spell them; the JSON keeps its values.
_KEY_USAGE_NAMES = {
    "digital_signature": "digitalSignature",
    "content_commitment": "nonRepudiation",
    "key_encipherment": "keyEncipherment",
    "data_encipherment": "dataEncipherment",
    "key_agreement": "keyAgreement",
    "key_cert_sign": "keyCertSign",
    "crl_sign": "cRLSign",
    "encipher_only": "encipherOnly",
    "decipher_only": "decipherOnly",
}


def _validity(item: dict[str, Any], now: datetime) -> str:
    # Said outright: an expired CA or leaf read like a current one, and the dates alone
    # had to be compared with today's by eye.
    from datetime import datetime

    shown = f"{item['not_before']} → {item['not_after']}"
    if datetime.fromisoformat(item["not_after"]) <= now:
        return f"{shown} (expired)"
    if datetime.fromisoformat(item["not_before"]) > now:
        return f"{shown} (not yet valid)"
    return shown


def _next_update(next_update: str | None, now: datetime) -> str:
    # As a certificate's "(expired)": verify --crl refuses such a CRL, and clients too.
    from datetime import datetime

    if next_update is None:
        return "-"
    if datetime.fromisoformat(next_update) <= now:
        return f"{next_update} (passed: the CRL is out of date)"
    return next_update


def _rows(item: dict[str, Any], now: datetime) -> list[tuple[str, str]]:
    kind = item["kind"]
    if kind == "certificate":
        return [
            ("subject", item["subject"]),
            ("issuer", item["issuer"]),
            ("serial", item["serial"]),
            ("valid", _validity(item, now)),
            ("SANs", _names(item["sans"])),
            ("key", item["key_type"]),
            ("CA", _ca_row(item)),
            *_constraint_rows(item["name_constraints"]),
            ("key usage", ", ".join(_KEY_USAGE_NAMES[u] for u in item["key_usage"]) or "-"),
            ("ext. key usage", ", ".join(item["extended_key_usage"]) or "-"),
            ("signature", item["signature_algorithm"]),
            ("SHA-256", item["fingerprint_sha256"]),
        ]
    if kind == "private-key":
        return [
            ("key", item["key_type"]),
            ("encrypted", "yes" if item["encrypted"] else "no"),
            ("public SHA-256", item["public_key_fingerprint_sha256"]),
        ]
    if kind == "csr":
        return [
            ("subject", item["subject"]),
            ("SANs", _names(item["sans"])),
            ("key", item["key_type"]),
            ("signature", _signature_row(item["signature_valid"])),
            ("public SHA-256", item["public_key_fingerprint_sha256"] or "-"),
        ]
    rows = [
        ("issuer", item["issuer"]),
        ("CRL number", "-" if item["crl_number"] is None else str(item["crl_number"])),
        ("last update", item["last_update"]),
        ("next update", _next_update(item["next_update"], now)),
        ("revoked", str(len(item["revoked"]))),
    ]
    for entry in item["revoked"]:
        reason = f", {entry['reason']}" if entry["reason"] else ""
        rows.append(("  serial", f"{entry['serial']} ({entry['revocation_date']}{reason})"))
    return rows


_TITLES = {"certificate": "certificate", "private-key": "private key", "csr": "CSR", "crl": "CRL"}


def inspect_command(
    file: Path = typer.Argument(
        ..., metavar="FILE", help="PEM, DER, PKCS#12 or PKCS#7 (.p7b) file."
    ),
    password_file: Path = typer.Option(
        None,
        "--password-file",
        callback=password_file_option,
        help="Password for PKCS#12 or an encrypted key "
        "(default: $CERTCTL_PASSWORD, then $CERTCTL_CA_PASSWORD)." + STDIN_HELP,
    ),
    password: str = typer.Option(
        None, "--password", help="Password on the command line (demos only)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help='Print JSON: a list of objects, each with a "kind" (see above).'
    ),
) -> None:
    """Show what a file holds: certificates, a key, CSRs, CRLs (PEM, DER, PKCS#12, PKCS#7).

    Values are never cut to the terminal width: a long one runs on past it.

    --json prints a list of objects, each with a "kind" and the file's "format" (pem, der,
    pkcs12 or pkcs7): one "certificate" object (subject, issuer, serial, not_before,
    not_after, sans, key_type, is_ca, path_length, name_constraints, signature_algorithm,
    key_usage, extended_key_usage, fingerprint_sha256, public_key_fingerprint_sha256) per
    certificate; a file without certificates lists its "private-key" (key_type, size, curve,
    encrypted, public_key_fingerprint_sha256: never the key itself), "csr" (subject, sans,
    key_type, public_key_fingerprint_sha256, signature_valid) or "crl" (issuer, crl_number,
    last_update, next_update, revoked) instead, each revoked entry with its serial,
    revocation_date and reason. The readable output shows everything.
    Serials are lower-case hex with an even number of digits (openssl's digits);
    fingerprints are SHA-256 of the DER, as openssl prints them.

    The password of an encrypted key or a PKCS#12 file is read from --password-file,
    --password, or else the CERTCTL_PASSWORD environment variable, then CERTCTL_CA_PASSWORD
    (the one the CA commands read): the first that opens the file is used.
    """
    material = read_protected(file, password_file, password)
    with _collector_paused():
        items = material_summaries(material, everything=not as_json)
        if as_json:
            typer.echo(json.dumps(items, indent=2))
            return
        _print_readable(items, material.format)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Run the block with Python's cyclic garbage collector off (back on after it).

    A summary is a few dicts and lists that hold no cycles, yet each allocation counts towards
    a collection, and the full ones walk every object still alive: all of a bundle's
    certificates and the summaries built so far. For 20,000 certificates that was 2.6 of
    ``--json``'s 6 s; nothing is left for the collector to free.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _print_readable(items: list[dict[str, Any]], file_format: str) -> None:
    """Print ``items`` for people: a bold title per item, then its label/value lines.

    Written as Rich printed ``Text.assemble((label, "bold"), value)`` with ``soft_wrap`` (the
    same bytes, styled on a terminal only, NO_COLOR and FORCE_COLOR honoured), but without a
    ``Console.print`` per line: its ~60 µs of option, size and terminal checks took 17 of the
    22 s that a 20,000-certificate bundle took to print.
    """
    import sys

    from rich.console import Console

    from certctl.cli._listing import printable

    console = Console(highlight=False)
    # Rich styles only what goes to a terminal (color_system None otherwise); bold has no
    # colour, so NO_COLOR keeps it, as in Rich.
    bold_on, bold_off = ("\x1b[1m", "\x1b[0m") if console.color_system else ("", "")
    counts = {kind: sum(1 for i in items if i["kind"] == kind) for kind in _TITLES}
    seen = dict.fromkeys(_TITLES, 0)
    write = sys.stdout.write
    now = utcnow()
    for index, item in enumerate(items):
        kind = item["kind"]
        seen[kind] += 1
        title = _TITLES[kind]
        if counts[kind] > 1 or kind == "certificate":
            title += f" {seen[kind]} of {counts[kind]}"
        lines = ["\n"] if index else []
        lines.append(f"{bold_on}{title} ({file_format}){bold_off}\n")
        for label, value in _rows(item, now):
            # Never cut or re-wrapped (a fingerprint is wider than 80 columns): the terminal
            # folds the line, and copying it gives the whole value back. printable: a
            # certificate is someone else's text, and an escape sequence in its subject or
            # SANs must show as \x1b, not act on the terminal.
            lines.append(f"{bold_on}  {label.ljust(16)}{bold_off}{printable(value)}\n")
        write("".join(lines))
