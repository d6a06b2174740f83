"""Certificate revocation lists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from cryptography import x509

from certctl.errors import InvalidRequest
from certctl.pki.formats import is_bare_base64_der, load_material
from certctl.pki.issue import BACKDATE, CertificateAuthority

__all__ = [
    "PreviousCrl",
    "RevokedEntry",
    "create_crl",
    "is_crl_serial",
    "load_previous_crl",
    "parse_serial",
]

REASONS = {r.value: r for r in x509.ReasonFlags}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked serial with when and why."""

    serial_number: int
    revocation_date: datetime
    reason: x509.ReasonFlags | None = None


def is_crl_serial(serial: int) -> bool:
    """Whether ``serial`` can be listed in a CRL: positive, at most 20 octets in DER.

    RFC 5280 4.1.2.2: 20 octets, the sign bit included, so 2^159 - 1 at most; cryptography's
    RevokedCertificateBuilder refuses any other (a ValueError from :func:`create_crl`).
    """
    return serial > 0 and serial.bit_length() <= 159


def parse_serial(text: str) -> int:
    """Parse a serial given as hex (``3f:a1…``, ``0x3fa1``, ``3FA1``) or ``dec:1234``.

    Digits alone are hex, as openssl prints serials; a decimal one too long for that (as
    cfssl prints them) is refused naming its ``dec:`` form rather than guessed at.

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
    if not is_crl_serial(value):
        hint = ""
        if raw.isdigit() and is_crl_serial(int(raw, 10)):
            # cfssl's log and certinfo, and Go's crypto/x509, print serials in decimal: read
            # as hex, a 159-bit one has 48 digits, some 24 octets, and "at most 20 octets"
            # alone did not say why a serial straight from cfssl was refused.
            hint = (
                f"; read as hex, this one has {(value.bit_length() + 8) // 8}: if it is "
                f"decimal, as cfssl prints serials, write dec:{raw}"
            )
        raise InvalidRequest(f"{text}: serial numbers are positive and at most 20 octets{hint}")
    return value


class PreviousCrl(NamedTuple):
    """What a new CRL carries over from the one before it."""

    entries: list[RevokedEntry]
    crl_number: int | None


def load_previous_crl(data: bytes, ca: CertificateAuthority) -> PreviousCrl:
    """The entries of a CRL (PEM or DER) that ``ca`` signed, with their dates and reasons.

    For a new CRL that keeps what an earlier one said: regenerating from serials alone would
    move every revocation date to now, and a client comparing dates would see them change.
    Its CRL number too: the next one must be higher (RFC 5280 5.2.3) even when this clock
    is behind the one that signed it.

    Raises:
        InvalidRequest: not a CRL, or not signed by ``ca``.
    """
    try:
        crls = load_material(data).crls
    except InvalidRequest:
        if is_bare_base64_der(data):
            raise  # cfssl gencrl's CRL: the loader says how to decode it
        crls = []
    if len(crls) != 1:
        raise InvalidRequest("not a PEM or DER certificate revocation list")
    crl = crls[0]
    if crl.issuer != ca.certificate.subject or not crl.is_signature_valid(
        ca.certificate.public_key()  # type: ignore[arg-type]
    ):
        raise InvalidRequest(
            f"the CRL of {crl.issuer.rfc4514_string()} was not signed by this CA "
            f"({ca.certificate.subject.rfc4514_string()})"
        )
    entries = []
    for revoked in crl:
        try:
            reason: x509.ReasonFlags | None = revoked.extensions.get_extension_for_class(
                x509.CRLReason
            ).value.reason
        except x509.ExtensionNotFound:
            reason = None
        entries.append(RevokedEntry(revoked.serial_number, revoked.revocation_date_utc, reason))
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return PreviousCrl(entries, number)


def create_crl(
    ca: CertificateAuthority,
    revoked: Sequence[RevokedEntry],
    *,
    now: datetime,
    next_update: timedelta = timedelta(days=7),
    crl_number: int | None = None,
    previous_number: int | None = None,
) -> x509.CertificateRevocationList:
    """Sign a CRL listing ``revoked`` under ``ca``; the next update is clipped to its notAfter.

    ``crl_number`` defaults to the issue time in microseconds since the epoch, for the
    offline ``crl create``, which keeps no state: it grows as RFC 5280 5.2.3 requires only
    while that one clock does. The server passes the number its store counts per issuer
    (several processes and replicas, clocks stepped back). Not seconds: two CRLs signed
    within one second (a script revoking in a loop) carried one number for different
    lists, and a client holding the first kept it. Numbers in microseconds are above every
    number in seconds issued before. ``previous_number``: the number of the CRL this one
    follows (``crl create --from``); the new one is above it even when the clock that signed
    it was ahead of this one.

    Raises:
        InvalidRequest: the CA has expired, or ``next_update`` is not positive.
    """
    if next_update <= timedelta(0):
        raise InvalidRequest("CRL next update must be in the future")
    ca.check_can_sign(now, crls=True)
    ca_end = ca.certificate.not_valid_after_utc
    number = crl_number if crl_number is not None else (now - _EPOCH) // _MICROSECOND
    if previous_number is not None:
        number = max(number, previous_number + 1)
    revoked_certificates: list[x509.RevokedCertificate] = []
    for entry in revoked:
        item = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial_number)
            .revocation_date(entry.revocation_date)
        )
        if entry.reason is not None and entry.reason is not x509.ReasonFlags.unspecified:
            item = item.add_extension(x509.CRLReason(entry.reason), critical=False)
        revoked_certificates.append(item.build())
    builder = (
        # The list goes to the constructor: add_revoked_certificate() copies the whole list
        # into a new builder on every call, which made 100,000 entries take 20-39 s.
        x509.CertificateRevocationListBuilder(revoked_certificates=revoked_certificates)
        .issuer_name(ca.certificate.subject)
        .last_update(now - BACKDATE)
        # Never after the CA's notAfter: the next CRL must come from the renewed CA.
        .next_update(min(now + next_update, ca_end))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
    )
    return builder.sign(ca.private_key, ca.signature_hash)
