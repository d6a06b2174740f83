"""Certificate revocation lists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from certctl.errors import InvalidRequest
from certctl.pki.issue import BACKDATE, CertificateAuthority

__all__ = ["RevokedEntry", "create_crl", "parse_serial"]

REASONS = {r.value: r for r in x509.ReasonFlags}


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked serial with when and why."""

    serial_number: int
    revocation_date: datetime
    reason: x509.ReasonFlags | None = None


def parse_serial(text: str) -> int:
    """Parse a serial given as hex (``3f:a1…``, ``0x3fa1``, ``3FA1``) or ``dec:1234``.

    Raises:
        InvalidRequest: not a positive number of at most 20 octets.
    """
    raw = text.strip().lower()
    try:
        if raw.startswith("dec:"):
            value = int(raw[4:], 10)
        else:
            value = int(raw.removeprefix("0x").replace(":", ""), 16)
    except ValueError:
        raise InvalidRequest(f"{text}: not a serial number (hex, or dec:NNN)") from None
    if value <= 0 or value.bit_length() > 159:
        raise InvalidRequest(f"{text}: serial numbers are positive and at most 20 octets")
    return value


def create_crl(
    ca: CertificateAuthority,
    revoked: Sequence[RevokedEntry],
    *,
    now: datetime,
    next_update: timedelta = timedelta(days=7),
    crl_number: int | None = None,
) -> x509.CertificateRevocationList:
    """Sign a CRL listing ``revoked`` under ``ca``.

    ``crl_number`` defaults to the issue time in seconds, which grows monotonically
    as RFC 5280 5.2.3 requires without keeping state.
    """
    if next_update <= timedelta(0):
        raise InvalidRequest("CRL next update must be in the future")
    number = crl_number if crl_number is not None else int(now.timestamp())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - BACKDATE)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
    )
    for entry in revoked:
        item = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial_number)
            .revocation_date(entry.revocation_date)
        )
        if entry.reason is not None and entry.reason is not x509.ReasonFlags.unspecified:
            item = item.add_extension(x509.CRLReason(entry.reason), critical=False)
        builder = builder.add_revoked_certificate(item.build())
    return builder.sign(ca.private_key, ca.signature_hash)
