"""CRLs: sign an issuer's, and how long it and a CA certificate may be cached."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from sqlalchemy import Connection, bindparam, case, select, update

from certctl.errors import Conflict, InvalidRequest, NotFound
from certctl.pki import format_serial
from certctl.pki.crl import RevokedEntry, create_crl
from certctl.pki.issue import BACKDATE
from certctl.services.context import Services, SignedCrl
from certctl.services.issuance import CERTIFICATES
from certctl.services.issuers import ISSUERS, load_issuer
from certctl.services.revocation import COMPROMISE, REASONS

__all__ = ["CA_CERT_MAX_AGE", "CRL_REUSE", "ca_max_age_s", "crl_for", "crl_max_age_s"]


# How long a signed CRL is served again while its list and its CA stay the same. The CRL
# route is public: signing anew on every fetch let anyone make certctl take a number in the
# store (a write holding SQLite's single write lock, then an fsync) and sign, as often as
# they liked, while issuance waited for the lock. A revocation shows at once: it changes
# the list. The CRL served is at most this old, its nextUpdate days ahead.
CRL_REUSE = timedelta(minutes=10)


def crl_for(services: Services, issuer_id: str) -> x509.CertificateRevocationList:
    """The issuer's CRL: signed anew, numbered by the store, when its list or CA changed.

    Otherwise the CRL this process signed last, for up to :data:`CRL_REUSE` (and never
    past its nextUpdate, nor once the clock went back before it was signed).
    """
    ca = load_issuer(services, issuer_id)
    now = services.clock()
    with services.engine.connect() as connection:
        revoked = _revoked_of(connection, issuer_id)
    last = services.signed_crls.get(issuer_id)
    if (
        last is not None
        and last.ca is ca
        and last.revoked == revoked
        and last.signed_at <= now < last.signed_at + CRL_REUSE
        and now < (last.crl.next_update_utc or now)
    ):
        return last.crl
    try:
        # Before the number: a refused CRL is no write (the route is public; never cached).
        ca.check_can_sign(now, crls=True)
    except InvalidRequest as exc:  # an expired issuer: the request was fine, the issuer is not
        raise Conflict(f"issuer {issuer_id}: {exc.detail}") from None
    with services.engine.begin() as connection:
        # The number first: it locks the issuer's row (PostgreSQL) or the database (SQLite)
        # until the commit, so a CRL numbered higher never lists less than this one.
        number = _next_crl_number(connection, issuer_id, now)
        revoked = _revoked_of(connection, issuer_id)
    entries = [
        RevokedEntry(int(serial, 16), revoked_at, REASONS.get(reason or "unspecified"))
        for serial, revoked_at, reason in revoked
        if revoked_at is not None
    ]
    crl = create_crl(ca, entries, now=now, crl_number=number)
    services.signed_crls[issuer_id] = SignedCrl(ca, revoked, now, crl)
    return crl


def crl_max_age_s(crl: x509.CertificateRevocationList, now: datetime) -> int:
    """How long an HTTP cache may keep ``crl``: as long as :func:`crl_for` would reuse it.

    Signed at thisUpdate + BACKDATE; reused for up to CRL_REUSE, never past nextUpdate.
    """
    signed_at = crl.last_update_utc + BACKDATE
    until = min(signed_at + CRL_REUSE, crl.next_update_utc or signed_at + CRL_REUSE)
    return max(0, int((until - now).total_seconds()))


# How long an HTTP cache may keep an issuer's certificate (ca.pem, ca.der). It changes only
# when the CA is renewed, with the same key and subject, so what it signed verifies under the
# old copy as under the new one, and ca-cert-rotate-before ahead of its notAfter; or when its
# issuer is deleted. An hour keeps every TLS client following a caIssuers URI, and every CDN in
# front, to one revalidation (a 304) an hour; each process sees another's renewal within a
# minute (ISSUER_CACHE_CHECK_S), well inside it.
CA_CERT_MAX_AGE = timedelta(hours=1)


def ca_max_age_s(certificate: x509.Certificate, now: datetime) -> int:
    """How long an HTTP cache may keep ``certificate``: an hour, never past its notAfter.

    A copy kept past it would fail every chain while the renewed one is served already.
    """
    until = min(now + CA_CERT_MAX_AGE, certificate.not_valid_after_utc)
    return max(0, int((until - now).total_seconds()))


def _revoked_of(connection: Connection, issuer_id: str) -> tuple[tuple[Any, ...], ...]:
    """(serial, revoked_at, reason) of the issuer's revoked certificates, by serial.

    Its revoked intermediates included: they are certificates it signed too, kept in the
    issuers table (few rows; the serial read from the certificate).
    """
    rows = [tuple(row) for row in connection.execute(_REVOKED_OF_ISSUER, {"issuer_id": issuer_id})]
    listed = {row[0] for row in rows}
    children: dict[str, tuple[Any, ...]] = {}
    for pem, revoked_at, reason in connection.execute(_REVOKED_CHILDREN, {"issuer_id": issuer_id}):
        serial = format_serial(x509.load_pem_x509_certificate(pem.encode()).serial_number)
        if serial in listed:
            continue  # a serial appears once in a CRL (RFC 5280 5.1.2.6)
        first = children.get(serial)
        if first is None:
            children[serial] = (serial, revoked_at, reason)
        elif reason in COMPROMISE and first[2] not in COMPROMISE:
            # The same intermediate imported under two ids and revoked under both: a serial
            # appears once in a CRL (RFC 5280 5.1.2.6), with the first revocation's date;
            # a compromise under either id is the key's (the same certificate), and the
            # most appropriate reason (CA/B Forum BR 7.2.2) whichever id was revoked first.
            children[serial] = (serial, first[1], reason)
    return (*rows, *children.values())


_REVOKED_OF_ISSUER = (
    select(CERTIFICATES.c.serial, CERTIFICATES.c.revoked_at, CERTIFICATES.c.revocation_reason)
    .where(CERTIFICATES.c.issuer_id == bindparam("issuer_id"), CERTIFICATES.c.status == "revoked")
    .order_by(CERTIFICATES.c.serial)  # one order for both reads crl_for compares
)
_REVOKED_CHILDREN = (
    select(ISSUERS.c.certificate_pem, ISSUERS.c.revoked_at, ISSUERS.c.revocation_reason)
    .where(ISSUERS.c.parent_id == bindparam("issuer_id"), ISSUERS.c.revoked_at.is_not(None))
    .order_by(ISSUERS.c.revoked_at, ISSUERS.c.id)  # the first revocation of a twin first
)


def _next_crl_number(connection: Connection, issuer_id: str, now: datetime) -> int:
    """The issuer's next CRL number (RFC 5280 5.2.3), counted in the store.

    One more than the last, and never below ``now`` in microseconds since the epoch. Every
    process signed with its own clock's microseconds: replicas whose clocks differ, or a
    clock stepped back, published a number below (or equal to) one already out. The
    floor keeps the series above the numbers signed that way, before migration 0008 or by
    replicas still running an older certctl during a rolling update.

    Raises:
        NotFound: no issuer ``issuer_id``.
    """
    floor = (now - _EPOCH) // timedelta(microseconds=1)
    following = ISSUERS.c.crl_number + 1
    number = connection.execute(
        update(ISSUERS)
        .where(ISSUERS.c.id == issuer_id)
        .values(crl_number=case((following > floor, following), else_=floor))
        .returning(ISSUERS.c.crl_number)
    ).scalar()
    if number is None:  # deleted since it was loaded
        raise NotFound(f"issuer {issuer_id} not found")
    return int(number)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
