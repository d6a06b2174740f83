"""ACME Renewal Information (RFC 9773, "ARI"): when a client should renew, and ``replaces``.

``GET <renewalInfo>/<certID>`` answers a window in which to renew a certificate issued through
ACME: the last third of its lifetime while it stands, a window already over once it (or its
issuer, or one above it) is revoked, so that ARI-aware clients (certbot 4.1 and later) renew at
their next run rather than at two thirds of the lifetime. ``replaces`` in new-order (RFC 9773
5) names the certificate an order renews: the same account's, and renewed by one order at a
time (``alreadyReplaced``).

The certID (RFC 9773 4.1) is base64url(the AuthorityKeyIdentifier's keyIdentifier) "."
base64url(the DER of the serial's INTEGER value, without tag and length), unpadded.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from certctl.errors import AcmeError
from certctl.pki import format_serial
from certctl.services.context import Services
from certctl.services.revocation import issuer_revocations
from certctl.store.models import AcmeAuthorization, AcmeOrder, CertificateRecord, Issuer

__all__ = [
    "RETRY_AFTER",
    "RenewalWindow",
    "cert_id_of",
    "check_not_replaced",
    "parse_cert_id",
    "renewal_window",
    "replaced_certificate",
]

# How long a client waits before asking again (Retry-After, RFC 9773 4.3): Let's Encrypt's
# six hours. A revocation is seen by a client within this, plus its own run interval
# (certbot's timer: twice a day).
RETRY_AFTER = timedelta(hours=6)
# A live certificate's window: from two thirds of its lifetime (where certbot renews without
# ARI, so nothing changes for a client that runs daily) to three quarters, spreading
# renewals over a twelfth of the lifetime (7.5 days of 90) and leaving a quarter for retries.
WINDOW_START = 2 / 3
WINDOW_END = 3 / 4
# A revoked certificate's window ended a day ago: in the past on the client's clock too,
# unless it runs a day behind (RFC 9773 4.2: a window whose end is past means renew now).
REVOKED_WINDOW_START = timedelta(days=2)
REVOKED_WINDOW_END = timedelta(days=1)
# keyIdentifier: SHA-1 (20 bytes) by RFC 5280's method, anything up to this; serial: 20
# octets at most (RFC 5280 4.1.2.2), one more for a sign octet.
_MAX_KEY_ID = 64
_MAX_SERIAL = 21
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class RenewalWindow:
    """A certificate's suggested renewal window; ``revoked`` when it is over on purpose."""

    start: datetime
    end: datetime
    revoked: bool


def _b64url(part: str, what: str) -> bytes:
    # Only the one unpadded spelling: "=" or an alias of the last character's unused bits is
    # another certID for the same certificate, which RFC 9773 4.1 does not allow.
    if _B64URL.fullmatch(part) is None:
        raise AcmeError(f"certID: the {what} is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except ValueError:
        raise AcmeError(f"certID: the {what} is not unpadded base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != part:
        raise AcmeError(f"certID: the {what} is not unpadded base64url")
    return raw


def parse_cert_id(cert_id: str) -> tuple[bytes, int]:
    """The keyIdentifier and the serial a certID (RFC 9773 4.1) names.

    Raises:
        AcmeError: malformed (not two base64url parts, an empty or overlong part, a serial
            not positive or not in its shortest DER form).
    """
    parts = cert_id.split(".")
    if len(parts) != 2 or not all(parts):
        raise AcmeError(
            "certID: expected base64url(keyIdentifier) '.' base64url(serial) (RFC 9773 4.1)"
        )
    key_id = _b64url(parts[0], "keyIdentifier")
    serial_der = _b64url(parts[1], "serial")
    if len(key_id) > _MAX_KEY_ID:
        raise AcmeError(f"certID: a keyIdentifier of {len(key_id)} bytes; at most {_MAX_KEY_ID}")
    if len(serial_der) > _MAX_SERIAL:
        raise AcmeError(f"certID: a serial of {len(serial_der)} bytes; at most {_MAX_SERIAL}")
    serial = int.from_bytes(serial_der, "big", signed=True)
    if serial <= 0:
        raise AcmeError("certID: the serial is not a positive INTEGER")
    # DER's INTEGER is the shortest two's complement: a leading 0x00 only before a high bit.
    if serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True) != serial_der:
        raise AcmeError("certID: the serial is not in its DER form (no extra leading zero)")
    return key_id, serial


@functools.lru_cache(maxsize=256)
def cert_id_of(certificate_pem: str) -> str:
    """The certID (RFC 9773 4.1) of a certificate certctl issued: how a client names it.

    What an order's ``replaces`` gave, since :func:`parse_cert_id` takes only this one
    spelling; cached by PEM, as an order is fetched at every poll.
    """
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = cert.serial_number
    serial_der = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # room for a sign bit
    return ".".join(
        base64.urlsafe_b64encode(part).rstrip(b"=").decode()
        for part in (aki.key_identifier or b"", serial_der)
    )


@functools.lru_cache(maxsize=256)
def _key_identifier(certificate_pem: str) -> bytes | None:
    # What a leaf's AuthorityKeyIdentifier holds: the issuer's SubjectKeyIdentifier, else the
    # SHA-1 of its key (pki.issue does the same). Cached by PEM: issuers are few and read by
    # every lookup.
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
        return bytes(ski.digest)
    except ValueError:
        return None  # unreadable: it signs nothing (issuers refuse to load it)


def _acme_certificate(services: Services, cert_id: str) -> CertificateRecord:
    """The certificate issued through ACME that ``cert_id`` names.

    Looked up by issuer (the AKI matched against each issuer's key identifier) and serial:
    the unique (issuer, serial) index, not a scan of every certificate.

    Raises:
        AcmeError: malformed (400) for a certID that is not one, 404 for no such certificate.
    """
    key_id, serial = parse_cert_id(cert_id)
    with services.sessions() as session:
        issuers = [
            issuer_id
            for issuer_id, pem in session.execute(select(Issuer.id, Issuer.certificate_pem))
            if _key_identifier(pem) == key_id
        ]
        row = None
        if issuers:
            row = session.scalar(
                select(CertificateRecord)
                .where(
                    CertificateRecord.issuer_id.in_(issuers),
                    CertificateRecord.serial == format_serial(serial),
                    exists().where(AcmeOrder.certificate_id == CertificateRecord.id),
                )
                .limit(1)
            )
    if row is None:
        # Certificates the API, a managed service or certctl's listener got are renewed by
        # certctl or their owner, not by an ACME client: not answered either.
        raise AcmeError(
            f"certID {cert_id[:120]}: no certificate issued here through ACME", "malformed", 404
        )
    return row


def renewal_window(services: Services, cert_id: str) -> RenewalWindow:
    """The suggested renewal window (RFC 9773 4.2) of the ACME certificate ``cert_id`` names.

    Raises:
        AcmeError: malformed, 400 for a certID that is not one, 404 for an unknown certificate.
    """
    row = _acme_certificate(services, cert_id)
    now = services.clock().replace(microsecond=0)
    revoked = row.status == "revoked" or row.revoked_at is not None
    if not revoked:
        # The issuer or one above it revoked: the certificate no longer verifies anywhere
        # that reads the CRLs, whatever its own status. ACME issues from another issuer
        # then (acme.issuer), which the renewal gets.
        revoked = row.issuer_id in issuer_revocations(services)
    if revoked:
        return RenewalWindow(now - REVOKED_WINDOW_START, now - REVOKED_WINDOW_END, True)
    lifetime = row.not_after - row.not_before
    start = row.not_before + lifetime * WINDOW_START
    end = row.not_before + lifetime * WINDOW_END
    return RenewalWindow(start.replace(microsecond=0), end.replace(microsecond=0), False)


def replaced_certificate(
    services: Services, account_id: str, value: object, names: list[str]
) -> CertificateRecord:
    """The certificate a new order of ``names`` by ``account_id`` replaces (RFC 9773 5).

    ``names``: the order's identifiers' values, DNS names and IP addresses (RFC 8738).

    Raises:
        AcmeError: malformed (not a certID, no name in common), 404 malformed (no such ACME
            certificate), unauthorized (403: another account's).
    """
    if not isinstance(value, str):
        raise AcmeError("replaces: expected a certID string (RFC 9773 4.1)")
    row = _acme_certificate(services, value)
    with services.sessions() as session:
        owners = set(
            session.scalars(select(AcmeOrder.account_id).where(AcmeOrder.certificate_id == row.id))
        )
    if account_id not in owners:
        raise AcmeError(
            f"replaces: certificate {row.serial} was not ordered by this account",
            "unauthorized",
            403,
        )
    cert = x509.load_pem_x509_certificate(row.certificate_pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        held = {str(name).lower() for name in san.get_values_for_type(x509.DNSName)}
        held |= {str(address) for address in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        held = set()
    if not held & set(names):
        raise AcmeError(f"replaces: certificate {row.serial} has no name in common with this order")
    return row


def check_not_replaced(session: Session, row: CertificateRecord, now: datetime) -> None:
    """Refuse a second order replacing ``row`` while one that is not invalid does (RFC 9773 5).

    Called in new-order's transaction, after its account row is held (``hold_valid``): two
    orders of one account replacing the same certificate at once are taken one after the
    other, and the second sees the first (only its ordering account may replace it).

    Raises:
        AcmeError: alreadyReplaced (409).
    """
    # Not invalid: valid, or ready and unexpired, or pending, unexpired and with no pending
    # authorization past its time (what order_view shows as invalid).
    expired_authz = exists().where(
        AcmeAuthorization.order_id == AcmeOrder.id,
        AcmeAuthorization.status == "pending",
        AcmeAuthorization.expires <= now,
    )
    standing = or_(
        AcmeOrder.status == "valid",
        and_(AcmeOrder.status == "ready", AcmeOrder.expires > now),
        and_(AcmeOrder.status == "pending", AcmeOrder.expires > now, ~expired_authz),
    )
    other = session.scalar(
        select(AcmeOrder.id).where(AcmeOrder.replaces == row.id, standing).limit(1)
    )
    if other is not None:
        raise AcmeError(
            f"replaces: certificate {row.serial} is replaced by order {other} already; "
            "finish that order, or order again without replaces",
            "alreadyReplaced",
            409,
        )
