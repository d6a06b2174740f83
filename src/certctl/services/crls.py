"""CRLs: sign an issuer's, and how long it and a CA certificate may be cached."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Connection, Table, bindparam, case, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from certctl.errors import Conflict, InvalidRequest, NotFound
from certctl.pki import CertificateAuthority, format_serial
from certctl.pki.crl import RevokedEntry, create_crl, is_crl_serial
from certctl.pki.issue import BACKDATE
from certctl.services.context import Services, SignedCrl
from certctl.services.issuance import CERTIFICATES
from certctl.services.issuers import ISSUERS, forget_if_changed, load_issuer
from certctl.services.revocation import COMPROMISE, REASONS
from certctl.store.db import PoolTimeout, storage_error
from certctl.store.models import IssuerCrl

__all__ = [
    "CA_CERT_MAX_AGE",
    "CRL_PERIOD",
    "CRL_REUSE",
    "ca_max_age_s",
    "crl_for",
    "crl_max_age_s",
    "served_crl",
]


# How long a signed CRL is served again while its list and its CA stay the same. The CRL
# route is public: signing anew on every fetch let anyone make certctl take a number in the
# store (a write holding SQLite's single write lock, then an fsync) and sign, as often as
# they liked, while issuance waited for the lock. A revocation shows at once: it changes
# the list. The CRL served is at most this old, its nextUpdate days ahead.
CRL_REUSE = timedelta(minutes=10)

# How far ahead a CRL's nextUpdate is (clipped to its CA's notAfter): the CRL period. A
# revoked certificate is left off the CRLs whose thisUpdate is more than one period past its
# notAfter and that follow one issued after it (see :func:`_left_off`). Its ageing out
# counts as no change (the issuer's count stays): the stored CRL is served at most
# CRL_REUSE, and the next one signed leaves it off.
CRL_PERIOD = timedelta(days=7)


def crl_for(services: Services, issuer_id: str) -> x509.CertificateRevocationList:
    """The issuer's CRL (see :func:`served_crl`)."""
    return served_crl(services, issuer_id).crl


def served_crl(services: Services, issuer_id: str) -> SignedCrl:
    """The issuer's CRL (see :func:`_served_crl`); while the store fails, the last one served.

    A database that cannot be reached (or refuses writes) records no revocation through
    this process, so the CRL the store last showed it to be the newest is served for a
    while, with a warning once per outage and issuer. It answered 503, and a client
    checking revocation (a TLS server fetching the CRL, a browser) failed closed or gave up
    its check for as long as the database was down. An issuer this process never served a
    CRL of still gets the 503.

    Only while :func:`_kept_current` holds: CRLs are signed at a fetch, not at a
    revocation, so the CRL served last leaves off what was revoked since; "nothing can be
    revoked meanwhile" held for no revocation made before the outage (served for its 7 days
    without it), nor for other replicas when only this one is cut off (a partition, a
    password or pg_hba refusing it, a failover it has not followed).
    """
    generation = services.revocations_here  # before the read: see Services.revoking
    asked = services.clock()
    try:
        served = _served_crl(services, issuer_id)
    except (DBAPIError, PoolTimeout) as exc:
        kept = services.signed_crls.get(issuer_id)
        fault = storage_error(exc)
        now = services.clock()
        if (
            fault is None
            or not fault.detail.startswith(_NO_WRITES_ANYWHERE)
            or kept is None
            or (kept.crl.next_update_utc or now) <= now
        ):
            raise
        # Asked only of a store that answers reads: one that cannot be reached would keep
        # the fetch waiting for a second connect_timeout.
        reads = fault.detail.startswith(_READS_ANSWERED)
        shown = _stored_and_current(services, issuer_id, kept) if reads else None
        if shown is False:
            # The store, answering reads (read-only, full), shows a revocation (or another
            # CRL) since: committed before it failed, or by a role or session it lets write.
            raise
        if shown:
            # The write that failed was signing it anew (10 minutes old): served as long as
            # reads show it current, not 10 minutes only.
            services.crl_confirmed[issuer_id] = (kept.number, asked, generation)
        if not _kept_current(services, issuer_id, kept, now):
            if (_KEPT, issuer_id) in services.logged and services.logged.first(
                (_KEPT_ENDED, issuer_id)
            ):
                log.warning(
                    "issuer %s: no longer serving the CRL numbered %d: the store has not "
                    "shown it current for %d minutes, or a revocation was made here since; "
                    "CRL fetches answer 503 until the store answers again",
                    issuer_id,
                    kept.number,
                    CRL_REUSE // timedelta(minutes=1),
                )
            raise
        if services.logged.first((_KEPT, issuer_id)):
            log.warning(
                "issuer %s: serving the CRL numbered %d served last, for at most %d minutes "
                "after the store last showed it current, until the store answers again (%s)",
                issuer_id,
                kept.number,
                CRL_REUSE // timedelta(minutes=1),
                fault.detail,
            )
        return kept
    services.crl_confirmed[issuer_id] = (served.number, asked, generation)
    if services.logged.forget((_KEPT, issuer_id)):
        services.logged.forget((_KEPT_ENDED, issuer_id))
        log.info("issuer %s: CRLs come from the store again", issuer_id)
    return served


def _stored_and_current(services: Services, issuer_id: str, kept: SignedCrl) -> bool | None:
    """Whether the store shows ``kept`` as the issuer's CRL to serve; None: it cannot be read.

    Stored under its number, and the issuer's count of changes to its list what it was
    when ``kept`` was signed: a revocation committed since is not on it.
    """
    try:
        with services.engine.connect() as connection:
            row = connection.execute(_STORED_CRL, {"issuer_id": issuer_id}).first()
    except (DBAPIError, PoolTimeout):
        return None
    return row is not None and row[1] == kept.number and row[4] is not None and row[4] == row[0]


def _kept_current(services: Services, issuer_id: str, kept: SignedCrl, now: datetime) -> bool:
    """Whether ``kept`` may be served while the store fails: no revocation left off for long.

    The store showed it to be the issuer's newest CRL less than :data:`CRL_REUSE` ago (by
    a fetch that began then), and this process revoked nothing since that fetch began. A
    revocation through another process or replica just before the store failed (or while
    only this process is cut off) is left off for CRL_REUSE at most: as long as a CDN or
    proxy in front keeps a CRL anyway (its max-age, see :func:`crl_max_age_s`), so the CRL
    route lags a revocation no longer than it does without an outage.
    """
    confirmed = services.crl_confirmed.get(issuer_id)
    if confirmed is None:
        return False
    number, at, generation = confirmed
    return (
        number == kept.number
        and generation == services.revocations_here
        and at <= now < at + CRL_REUSE
    )


def _served_crl(services: Services, issuer_id: str) -> SignedCrl:
    """The issuer's CRL: the newest one signed, by any process on the store, while fresh.

    With its bytes, as every process serves them (the route's body and strong ETag).

    Signed anew, numbered by the store, when none is stored, its list (the issuer's count of
    changes to it, see :func:`_current`) or its CA's name or key changed, or it is
    :data:`CRL_REUSE` old (or past its nextUpdate, or its thisUpdate is ahead of this clock)
    and this process signed none in the last CRL_REUSE (see :func:`_reused`). Every process
    serves the stored one: each used to serve the CRL it had signed itself, and a client
    load-balanced over workers or replicas saw the number go down and up again for one
    unchanged list (RFC 5280 5.2.3 wants it to increase).
    """
    ca = load_issuer(services, issuer_id)
    crl = _stored_if_reused(services, ca, issuer_id)
    if crl is not None:
        return crl
    # One signer per issuer in this process: a flood of fetches finding the CRL stale (the
    # public route) waits for it and serves what it stored, instead of each signing.
    with services.crl_signer(issuer_id):
        crl = _stored_if_reused(services, ca, issuer_id)
        if crl is not None:
            return crl
        # About to sign: with the CA as stored now. Another process may have made a new CA
        # under this id (a managed service deleted and applied again: a new key), which this
        # one would drop from its cache only at its next issuer refresh (a minute), signing
        # with the old key meanwhile: clients refused those CRLs, and the processes holding
        # the new CA found them changed and signed anew on every fetch, in turn with it.
        forget_if_changed(services, issuer_id)
        ca = load_issuer(services, issuer_id)
        try:
            return _sign(services, ca, issuer_id)
        except InvalidRequest as exc:  # an expired issuer: the request was fine, the issuer not
            raise Conflict(f"issuer {issuer_id}: {exc.detail}") from None


def _stored_if_reused(
    services: Services, ca: CertificateAuthority, issuer_id: str
) -> SignedCrl | None:
    """The stored CRL if it is served as it is (:func:`_reused`), else None: sign one."""
    now = services.clock()
    with services.engine.connect() as connection:
        # The stored CRL and the issuer's count in one statement (one snapshot): a fetch
        # reads two rows by their keys, not the revoked list (65 ms at 20,000 revoked).
        row = connection.execute(_STORED_CRL, {"issuer_id": issuer_id}).first()
        if row is None:  # the issuer deleted since it was loaded: _sign says so
            return None
        current = (int(row[0]), _signer(ca))
        stored = None if row[1] is None else _StoredCrl(*row[1:])
        if stored is not None and _reused(services, issuer_id, stored, current, now):
            return _served(services, connection, ca, issuer_id, stored.crl_number)
    return None


def _sign(
    services: Services, ca: CertificateAuthority, issuer_id: str, *, reuse: bool = True
) -> SignedCrl:
    """Take the issuer's next number, sign its CRL and store it unless a higher one is.

    The number and the list are read in one transaction, which holds the number (a row lock
    on PostgreSQL, the write lock on SQLite) until its commit: a CRL numbered higher never
    lists less. The signature is made after it (a CRL of 100,000 entries takes over a
    second, which the lock would have kept issuance waiting on SQLite). Stored only above
    the stored number: a process that signed a lower one meanwhile serves the higher one.
    ``reuse`` False: signed even when the stored one is fresh (it is no CRL of ``ca``).
    """
    now = services.clock()
    # Before the number: a refused CRL is no write (the route is public; never cached).
    ca.check_can_sign(now, crls=True)
    with services.engine.connect() as connection:
        with connection.begin() as transaction:
            number = _next_crl_number(connection, issuer_id, now)
            # The count before the list, both under the number's lock (which every change
            # the count follows waits for, as it writes the issuer's row): the list is at
            # least the one counted, so a count found different later is a change since.
            current = (_current(connection, issuer_id), _signer(ca))
            stored = _stored_crl(connection, issuer_id)
            # The time after the number, for what is judged by this clock once the lock is
            # held (a process may have waited for it); the CRL's own time follows the number.
            now = max(now, services.clock())
            signed_at = _signed_at(number, now)
            revoked = _revoked_of(services, connection, issuer_id, *_left_off(signed_at, stored))
            reused = (
                reuse and stored is not None and _reused(services, issuer_id, stored, current, now)
            )
            if reused:  # another process stored one meanwhile: no number spent
                transaction.rollback()
        if reused:
            served = _served(services, connection, ca, issuer_id, None)
            if served is not None:
                return served
    if reused:  # what is stored is no CRL of this CA (see _served): one numbered above it
        return _sign(services, ca, issuer_id, reuse=False)
    entries = [
        RevokedEntry(serial_number, revoked_at, REASONS.get(reason or "unspecified"))
        for serial, revoked_at, reason, holder in revoked
        if revoked_at is not None
        and (serial_number := _listed_serial(issuer_id, serial, holder)) is not None
    ]
    crl = create_crl(ca, entries, now=signed_at, next_update=CRL_PERIOD, crl_number=number)
    der = crl.public_bytes(Encoding.DER)
    values = {
        "crl_number": number,
        "signed_at": signed_at,
        "next_update": crl.next_update_utc or signed_at,
        "basis": _basis(ca, revoked),  # what a release before 0020 compares
        "revocations": current[0],
        "signer": current[1],
        "der": der,
    }
    signed = SignedCrl(number, crl, der)
    with services.engine.begin() as connection:
        stored_here = _store(connection, issuer_id, values)
        if not stored_here:  # the higher one, unless it is no CRL of this CA
            signed = _served(services, connection, ca, issuer_id, None) or signed
    # Once stored (or a higher one found): set before, a thread of this process finding the
    # CRL stale while this one was signing took the one stored before for one signed here
    # (see _reused) and served it, 10 minutes old, beside this one.
    services.crl_signed_here[issuer_id] = now
    if stored_here:
        # Once committed: one whose commit failed must not be served as the stored CRL.
        services.signed_crls[issuer_id] = signed
    return signed


def _signed_at(number: int, now: datetime) -> datetime:
    """When the CRL numbered ``number`` is signed, at ``now`` by this clock: the number's time.

    A number is the microseconds since 1970 of the clock that took it, or one more than the
    one before (see :func:`_next_crl_number`), so the time it reads grows with it: a CRL
    numbered higher never carries an earlier thisUpdate, whichever replica signed it and
    whatever was stored meanwhile (the CRL stored when the number was taken may be older
    than the one another process is signing outside the lock; following that one let N+1
    carry an earlier thisUpdate than N, signed by a clock a little ahead). Up to BACKDATE
    ahead of this clock, as thisUpdate is BACKDATE before it: still in the past for clients.
    Further ahead (a clock that was ahead, or stepped back since), a CRL following it would
    be refused by every client as not yet valid, so it is signed at this clock's time.

    In whole seconds, as thisUpdate says it: CRLs numbered within one second share it, and
    one signed CRL_REUSE after another is stale then, not a few microseconds later.
    """
    if number > (now + BACKDATE - _EPOCH) // timedelta(microseconds=1):
        return now.replace(microsecond=0)
    return (_EPOCH + timedelta(microseconds=number)).replace(microsecond=0)


def _left_off(signed_at: datetime, stored: _StoredCrl | None) -> tuple[datetime, datetime]:
    """(notAfter, revocation date) before both of which an entry is left off this CRL.

    The CRL signed at ``signed_at``, following ``stored``. RFC 5280 3.3: an entry MUST NOT
    go until it has appeared on one CRL issued after the certificate expired. CRLs are
    signed when fetched, so one CRL period after the expiry (the CRL's thisUpdate minus
    CRL_PERIOD: a client's CRL from before the expiry is past its nextUpdate by then), and
    only once ``stored``, the CRL before this one, was issued after it and after its
    revocation (both before its thisUpdate): that one listed it, or left it off by the same
    rule. With none fetched in the period after the expiry (a quiet month), the next CRL
    left it off, and no CRL issued after the expiry ever listed it; one revoked after it
    expired (a key compromised, with the expired certificates of its renewal chain) was on
    no CRL at all. None stored: every revocation is listed. Kept forever, a CA's CRL grew
    with every revocation it ever made.

    Both bounds go up with the CRL number: thisUpdate never goes back as the number goes up
    (see :func:`_signed_at`; unless the CRL before was signed by a clock more than BACKDATE
    ahead), and the stored CRL read under the number's lock is never one numbered lower than
    the one read by a CRL numbered below. So no CRL lists again an entry that one numbered
    below it left off.
    """
    if stored is None:
        return _LONG_AGO, _LONG_AGO
    listed_at = stored.signed_at - BACKDATE  # its thisUpdate
    return min(signed_at - BACKDATE - CRL_PERIOD, listed_at), listed_at


# Before any certificate's notAfter (X.509 times start in 1950), on both stores.
_LONG_AGO = datetime(1, 1, 1, tzinfo=UTC)


def _store(connection: Connection, issuer_id: str, values: dict[str, Any]) -> bool:
    """Store the issuer's CRL unless one numbered higher is stored; whether it was.

    One statement (an upsert), as two processes may store at once.
    """
    insert = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
    statement = insert(ISSUER_CRLS).values(issuer_id=issuer_id, **values)
    statement = statement.on_conflict_do_update(
        index_elements=[ISSUER_CRLS.c.issuer_id],
        set_=values,
        where=ISSUER_CRLS.c.crl_number < statement.excluded.crl_number,
    )
    return connection.execute(statement.returning(ISSUER_CRLS.c.crl_number)).first() is not None


def crl_max_age_s(crl: x509.CertificateRevocationList, now: datetime) -> int:
    """How long an HTTP cache may keep ``crl``: as long as :func:`crl_for` would reuse it.

    Signed at thisUpdate + BACKDATE; reused for up to CRL_REUSE, never past nextUpdate.
    """
    signed_at = crl.last_update_utc + BACKDATE
    until = min(signed_at + CRL_REUSE, crl.next_update_utc or signed_at + CRL_REUSE)
    # Never above CRL_REUSE: one signed by a clock a little ahead (see _sign) is fresh longer.
    reuse = int(CRL_REUSE.total_seconds())
    return max(0, min(reuse, int((until - now).total_seconds())))


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


ISSUER_CRLS: Table = IssuerCrl.__table__  # type: ignore[assignment]


class _StoredCrl(NamedTuple):
    crl_number: int
    signed_at: datetime
    next_update: datetime
    revocations: int | None  # None: stored by a release before 0020, signed anew
    signer: str | None


_STORED_COLUMNS = (
    ISSUER_CRLS.c.crl_number,
    ISSUER_CRLS.c.signed_at,
    ISSUER_CRLS.c.next_update,
    ISSUER_CRLS.c.revocations,
    ISSUER_CRLS.c.signer,
)


def _stored_crl(connection: Connection, issuer_id: str) -> _StoredCrl | None:
    """The issuer's stored CRL, without its bytes (read once per CRL and process)."""
    row = connection.execute(
        select(*_STORED_COLUMNS).where(ISSUER_CRLS.c.issuer_id == issuer_id)
    ).first()
    return None if row is None else _StoredCrl(*row)


# The issuer's count and its stored CRL (NULLs: none stored); no row: no issuer.
_STORED_CRL = (
    select(ISSUERS.c.revocations, *_STORED_COLUMNS)
    .select_from(ISSUERS.outerjoin(ISSUER_CRLS, ISSUER_CRLS.c.issuer_id == ISSUERS.c.id))
    .where(ISSUERS.c.id == bindparam("issuer_id"))
)


def _current(connection: Connection, issuer_id: str) -> int:
    """The issuer's count of changes to what its CRL lists (triggers of migrations 0020-0021).

    Triggers, so a revocation through any process, replica, older release or a manual
    fix counts; a fetch compares it with the stored CRL's instead of reading the list.
    """
    count = connection.execute(
        select(ISSUERS.c.revocations).where(ISSUERS.c.id == issuer_id)
    ).scalar()
    if count is None:  # deleted since: _next_crl_number found it, this is the same lock
        raise NotFound(f"issuer {issuer_id} not found")
    return int(count)


def _fresh(stored: _StoredCrl, now: datetime) -> bool:
    """Whether the stored CRL is served at ``now`` (see :func:`crl_for`).

    Not once its thisUpdate (BACKDATE before it was signed) is ahead of this clock: a clock
    stepped back, or one far ahead that signed it, whose CRL clients refuse as not yet valid.
    """
    return (
        stored.signed_at - BACKDATE <= now < stored.signed_at + CRL_REUSE
        and now < stored.next_update
    )


def _reused(
    services: Services,
    issuer_id: str,
    stored: _StoredCrl,
    current: tuple[int, str],
    now: datetime,
) -> bool:
    """Whether the stored CRL is served rather than one signed anew.

    ``current``: the issuer's count (:func:`_current`) and its CA's :func:`_signer`. Never
    once its list or its CA's name or key changed, nor past its nextUpdate. While
    fresh by this clock; and, stale or ahead by it, while this process signed one less than
    CRL_REUSE ago: two replicas whose clocks are more than CRL_REUSE apart each found the
    other's CRL stale (or not yet valid) and signed, a write and a signature on every fetch
    of the public route. The stored one is the newest either way.
    """
    if (stored.revocations, stored.signer) != current or now >= stored.next_update:
        return False
    if _fresh(stored, now):
        return True
    signed_here = services.crl_signed_here.get(issuer_id)
    return signed_here is not None and signed_here <= now < signed_here + CRL_REUSE


def _served(
    services: Services,
    connection: Connection,
    ca: CertificateAuthority,
    issuer_id: str,
    number: int | None,
) -> SignedCrl | None:
    """The stored CRL numbered ``number`` (None: whichever is stored), parsed once per process.

    Read with its bytes only when this process has not parsed it yet. Replaced meanwhile by
    a higher-numbered one: that one, which lists at least as much. None (logged) when its
    bytes are no CRL ``ca`` signed under its number (see :func:`_checked`): signed anew.
    """
    last = services.signed_crls.get(issuer_id)
    if last is not None and number is not None and last.number == number:
        return last
    row = connection.execute(_STORED_DER, {"issuer_id": issuer_id}).first()
    if row is None:  # the issuer deleted since: as _next_crl_number says it
        raise NotFound(f"issuer {issuer_id} not found")
    stored_number, der = int(row[0]), bytes(row[1])
    if last is not None and last.number == stored_number:
        return last
    crl = _checked(der, ca, stored_number)
    if crl is None:
        if services.logged.first(("unusable stored CRL", issuer_id, stored_number)):
            log.warning(
                "issuer %s: the stored CRL numbered %d is not one its CA signed under that "
                "number (changed outside certctl?); a new one is signed in its place",
                issuer_id,
                stored_number,
            )
        return None
    served = SignedCrl(stored_number, crl, der)
    services.signed_crls[issuer_id] = served
    return served


def _checked(
    der: bytes, ca: CertificateAuthority, number: int
) -> x509.CertificateRevocationList | None:
    """``der`` parsed if it is a CRL ``ca`` signed, numbered ``number``; else None.

    The stored CRL is a cache in a plain column: bytes cut short or written over there (a
    restore, an edit) made every fetch a 500 until it went stale, and another CA's CRL or
    an older one of this CA was served as the current one (refused by clients, or numbered
    below the CRL they hold). Checked once per process and number, as it is parsed.
    """
    try:
        crl = x509.load_der_x509_crl(der)
        signed = crl.is_signature_valid(ca.private_key.public_key())
        crl_number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (ValueError, x509.ExtensionNotFound):
        return None
    if not signed or crl.issuer != ca.certificate.subject or crl_number != number:
        return None
    return crl


log = logging.getLogger("certctl.services")
# Services.logged keys (with the issuer id): its CRL served last is served while the store
# fails, and then no longer served; each said once per outage.
_KEPT = "CRL kept"
_KEPT_ENDED = "CRL kept no longer"
# Store faults under which no process can record a revocation either (the database is down,
# read-only or full), so the CRL served last is still the newest. Not a busy store (a pool,
# lock or statement timeout): another process may just have committed a revocation, which
# a CRL kept from before would leave off; that fetch still gets its 503.
# Of those, the faults under which the store still answers reads.
_READS_ANSWERED = ("storage is read-only", "storage is full")
_NO_WRITES_ANYWHERE = (
    "storage is unavailable",
    "storage is read-only",
    "storage is full",
    "storage I/O error",
)


_STORED_DER = select(ISSUER_CRLS.c.crl_number, ISSUER_CRLS.c.der).where(
    ISSUER_CRLS.c.issuer_id == bindparam("issuer_id")
)


def _signer(ca: CertificateAuthority) -> str:
    """SHA-256 (hex) of what identifies the CA signing a CRL: its name, key and key id.

    The name, key and authority key identifier, not the certificate: a CA renewed (same key
    and name) verifies the CRL signed before, and processes still holding the old certificate
    for up to a minute (ISSUER_CACHE_CHECK_S) would otherwise sign in turn on every fetch.
    """
    return _signer_digest(ca).hexdigest()


def _signer_digest(ca: CertificateAuthority) -> hashlib._Hash:
    digest = hashlib.sha256()
    certificate = ca.certificate
    digest.update(certificate.subject.public_bytes())
    digest.update(
        certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    digest.update(ca.authority_key_identifier.key_identifier or b"")
    return digest


def _listed_serial(issuer_id: str, serial: str, holder: str) -> int | None:
    """``serial`` (hex, as stored) as its CRL entry lists it; None (logged) if none can.

    A serial stored by hand (or imported from a CA that broke RFC 5280's 20 octets) that no
    CRL entry can carry made every fetch of the issuer's CRL a 500, hiding every other
    revocation: it is left off instead, and the log names the row to fix.
    """
    try:
        number = int(serial, 16)
    except ValueError:
        number = 0
    if is_crl_serial(number):
        return number
    log.warning(
        "issuer %s: %s is left off its CRL: its serial %r is no positive number "
        "of at most 20 octets (RFC 5280 4.1.2.2)",
        issuer_id,
        holder,
        serial,
    )
    return None


def _basis(ca: CertificateAuthority, revoked: tuple[tuple[Any, ...], ...]) -> str:
    """SHA-256 (hex) of the CA's :func:`_signer` and the revoked list, as 0019 stored it.

    Compared by a release before 0020 (a replica not yet replaced in a rolling update): it
    serves the CRL this one stored while the list is unchanged, not one signed on each fetch.
    Once an entry is left off (see :func:`_left_off`), such a release, which lists every
    revocation, finds it changed and signs one of its own, stored over this one's basis but
    not its count: this release then serves that one while fresh (once per CRL_REUSE each).
    The revocation dates are stored aware UTC on every backend: one text for one list.
    """
    digest = _signer_digest(ca)
    for serial, revoked_at, reason, _holder in revoked:
        when = revoked_at.isoformat() if revoked_at is not None else ""
        digest.update(f"\n{serial}|{when}|{reason}".encode())
    return digest.hexdigest()


def _revoked_of(
    services: Services,
    connection: Connection,
    issuer_id: str,
    expired_before: datetime,
    revoked_before: datetime,
) -> tuple[tuple[Any, ...], ...]:
    """(serial, revoked_at, reason, holder) of the issuer's revoked certificates, by serial.

    Its revoked intermediates included: they are certificates it signed too, kept in the
    issuers table (few rows; the serial stored beside the certificate). ``holder`` names the
    row for the log (``certificate ID``, ``intermediate ID``). Those whose notAfter is
    before ``expired_before`` and whose revocation is before ``revoked_before`` are left out
    by the query (see :func:`_left_off`).
    """
    parameters = {
        "issuer_id": issuer_id,
        "expired_before": expired_before,
        "revoked_before": revoked_before,
    }
    rows = [
        (serial, revoked_at, reason, f"certificate {row_id}")
        for serial, revoked_at, reason, row_id in connection.execute(_REVOKED_OF_ISSUER, parameters)
    ]
    listed = {row[0] for row in rows}
    children: dict[str, tuple[Any, ...]] = {}
    for child_id, stored, pem, revoked_at, reason in connection.execute(
        _REVOKED_CHILDREN, parameters
    ):
        # The serial stored beside its PEM (migration 0025); the PEM is not read. Read from
        # it, a PEM cut short or written over in the store (a restore, a hand edit) left
        # nothing to list, and this CRL was a 409 until it was restored. One that is no
        # serial (written over by hand) is not listed either: the PEM's then, or the 409.
        serial = (
            stored
            if stored is not None and _is_listable(stored)
            else _serial_of(services, issuer_id, child_id, pem, stored)
        )
        if serial in listed:
            continue  # a serial appears once in a CRL (RFC 5280 5.1.2.6)
        first = children.get(serial)
        if first is None:
            children[serial] = (serial, revoked_at, reason, f"intermediate {child_id}")
        elif reason in COMPROMISE and first[2] not in COMPROMISE:
            # The same intermediate imported under two ids and revoked under both: a serial
            # appears once in a CRL (RFC 5280 5.1.2.6), with the first revocation's date;
            # a compromise under either id is the key's (the same certificate), and the
            # most appropriate reason (CA/B Forum BR 7.2.2) whichever id was revoked first.
            children[serial] = (serial, first[1], reason, first[3])
    return (*rows, *children.values())


def _is_listable(serial: str) -> bool:
    """Whether ``serial`` (hex, as stored) is one a CRL entry can carry."""
    try:
        return is_crl_serial(int(serial, 16))
    except ValueError:
        return False


def _serial_of(
    services: Services, issuer_id: str, child_id: str, pem: str, stored: str | None
) -> str:
    """Revoked intermediate ``child_id``'s serial, read from its PEM: none usable was stored.

    ``stored`` is None or none a CRL can list (written over by hand). A row stored before
    migration 0025 whose PEM could not be read then, or one written by an older release (a
    replica during a rolling update). Its PEM restored, it is listed.

    Raises:
        Conflict: the PEM cannot be read either, naming the row to restore (logged once per
            process, row and stored text). A CRL leaving it off would have every client
            checking the chain accept the certificates of a CA revoked (perhaps
            compromised) with one WARNING in a log: no CRL is signed.
    """
    try:
        return format_serial(x509.load_pem_x509_certificate(pem.encode()).serial_number)
    except ValueError:
        pass  # refused below, outside this block: the parser's error is no part of the 409
    why = (
        "its serial was not stored (a row from before migration 0025, or written by an older "
        "release)"
        if stored is None
        else f"its stored serial {stored[:80]!r} is no serial a CRL can list"
    )
    message = (
        f"issuer {issuer_id}: its revoked intermediate {child_id} has a stored "
        "certificate that cannot be read (cut short or written over in the database "
        f"outside certctl), and {why}, so no CRL of {issuer_id} can list it"
    )
    services.logged.refuse(
        ("unlistable intermediate", issuer_id, child_id, hashlib.sha256(pem.encode()).digest()),
        message,
        "none is signed until it is restored",
        f"none is signed: restore intermediate {child_id}'s certificate from a backup",
    )


_REVOKED_OF_ISSUER = (
    select(
        CERTIFICATES.c.serial,
        CERTIFICATES.c.revoked_at,
        CERTIFICATES.c.revocation_reason,
        CERTIFICATES.c.id,
    )
    .where(
        CERTIFICATES.c.issuer_id == bindparam("issuer_id"),
        CERTIFICATES.c.status == "revoked",
        or_(
            CERTIFICATES.c.not_after >= bindparam("expired_before"),
            CERTIFICATES.c.revoked_at >= bindparam("revoked_before"),
        ),
    )
    .order_by(CERTIFICATES.c.serial)  # one order for every read whose digest crl_for compares
)
_REVOKED_CHILDREN = (
    select(
        ISSUERS.c.id,
        ISSUERS.c.serial,
        ISSUERS.c.certificate_pem,
        ISSUERS.c.revoked_at,
        ISSUERS.c.revocation_reason,
    )
    .where(
        ISSUERS.c.parent_id == bindparam("issuer_id"),
        ISSUERS.c.revoked_at.is_not(None),
        or_(
            ISSUERS.c.not_after >= bindparam("expired_before"),
            ISSUERS.c.revoked_at >= bindparam("revoked_before"),
        ),
    )
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
