"""Stored certificates: list, get, revoke, renew; client certificates; counts."""

from __future__ import annotations

import time
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from sqlalchemy import (
    Connection,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from certctl.errors import BlockedKey, Conflict, InvalidRequest, NotFound
from certctl.metrics.registry import ISSUANCE, ISSUANCE_DURATION, RENEWALS, REVOCATIONS
from certctl.pki import (
    KeyType,
    SubjectAltNames,
    format_serial,
    generate_private_key,
    get_profile,
    key_to_pem,
    key_type_of,
)
from certctl.pki.dn_display import stored_dn_search
from certctl.pki.issue import BACKDATE
from certctl.pki.subject_alt_names import SAN_KINDS, san_search_forms
from certctl.pki.template import spki_of
from certctl.services.audit import event_values, record
from certctl.services.blocked_keys import block_key, check_key_unblocked
from certctl.services.certificate_cache import certificate_cache
from certctl.services.certificate_import import IMPORTED_PROFILE
from certctl.services.context import IssuerRevocation, Principal, Services, connected
from certctl.services.issuance import (
    AUDIT_EVENTS,
    CERTIFICATES,
    IssueResult,
    ca_chain_pem,
    check_server_names,
    new_rows,
)
from certctl.services.issue_constraints import check_certificate
from certctl.services.issuers import (
    ISSUERS,
    check_not_managed,
    check_unexpired,
    check_unrevoked,
    load_issuer_state,
)
from certctl.services.revocation import check_reason, issuer_revocations, revocations_by_issuer
from certctl.spelling import did_you_mean
from certctl.store.db import (
    REVOCATION_LOCK,
    contains_pattern,
    json_string_contains,
    lock_for_write,
    lock_issuer_rows,
    unicode_lower,
)
from certctl.store.groupcommit import write_rows
from certctl.store.models import Actor, CertificateRecord, Issuer

__all__ = [
    "EXPIRING_WINDOW",
    "CertificateView",
    "IssuedClientCertificate",
    "Revocation",
    "certificate_counts",
    "certificates_by_id",
    "effective_status",
    "get_certificate",
    "issued_client_certificate",
    "list_certificates",
    "record_renewal",
    "renew_certificate",
    "revoke_certificate",
]
EXPIRING_WINDOW = timedelta(days=30)


class _HasExpiry(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def renewed_by(self) -> str | None: ...


class CertificateView(Protocol):
    """The public columns of a stored certificate (an ORM object or a Core row)."""

    id: str
    issuer_id: str
    serial: str
    common_name: str
    subject: str
    sans: dict[str, list[str]]
    profile: str
    status: str
    not_before: datetime
    not_after: datetime
    certificate_pem: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revocation_reason: str | None
    renewed_from: str | None
    renewed_by: str | None


def effective_status(row: _HasExpiry, now: datetime) -> str:
    """``revoked``, ``expired``, ``expiring`` (within 30 days, not renewed) or ``active``."""
    if row.status == "revoked":
        return "revoked"
    if row.not_after <= now:
        return "expired"
    if row.not_after - now <= EXPIRING_WINDOW and row.renewed_by is None:
        return "expiring"
    return "active"


_CERT_COLUMNS = [c for c in CERTIFICATES.c if c.key != "wrapped_key"]
# A listed row as a named tuple: reading a SQLAlchemy Row's columns by name cost the list's
# JSON more than the ORM objects' did (~2.5 µs an item); a named tuple's cost less.
_ListedRow = namedtuple("_ListedRow", [c.key for c in _CERT_COLUMNS])  # type: ignore[misc]


def list_certificates(
    services: Services,
    caller: Principal,
    *,
    status: str | None,
    issuer: str | None,
    expiring_within: timedelta | None,
    q: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[CertificateView], str | None]:
    """Certificates newest first, keyset-paginated by id (their public columns)."""
    caller.require("cert.read")
    now = services.clock()
    # Core rows of the shown columns, as get_certificate reads: ORM objects (and each one's
    # wrapped key) cost more than the rest of a list's work per item.
    query = select(*_CERT_COLUMNS).order_by(CertificateRecord.id.desc()).limit(limit + 1)
    if cursor is not None:
        query = query.where(CertificateRecord.id < cursor)
    if issuer is not None:
        query = query.where(CertificateRecord.issuer_id == issuer)
    if status == "revoked":
        query = query.where(CertificateRecord.status == "revoked")
    elif status == "expired":
        query = query.where(
            and_(CertificateRecord.status == "active", CertificateRecord.not_after <= now)
        )
    elif status == "expiring":
        query = query.where(
            and_(
                CertificateRecord.status == "active",
                CertificateRecord.not_after > now,
                CertificateRecord.not_after <= now + EXPIRING_WINDOW,
                CertificateRecord.renewed_by.is_(None),
            )
        )
    elif status == "active":
        query = query.where(
            and_(
                CertificateRecord.status == "active",
                CertificateRecord.not_after > now,
                or_(
                    CertificateRecord.not_after > now + EXPIRING_WINDOW,
                    CertificateRecord.renewed_by.is_not(None),
                ),
            )
        )
    elif status is not None:
        statuses = ("active", "expiring", "expired", "revoked")
        # `--status Revoked` or `revokd`: the one meant, as an unknown revocation reason does.
        hint = did_you_mean(status, statuses)
        meant = f"{hint} " if hint else ""
        raise InvalidRequest(f"{status}: unknown status ({meant}{', '.join(statuses)})")
    if expiring_within is not None:
        query = query.where(
            and_(
                CertificateRecord.status == "active",
                CertificateRecord.not_after <= now + expiring_within,
                CertificateRecord.renewed_by.is_(None),  # renewed already: nothing to do
            )
        )
    if q:
        # q is a substring, not a pattern: "_" and "%" match themselves.
        like = contains_pattern(q.lower())
        # An ASCII q can only match ASCII letters, which the built-in lower() folds: the
        # Python function SQLite needs for the others is called per row only when needed.
        lower = func.lower if q.isascii() else unicode_lower
        # Subjects are shown with emailAddress=, serialNumber= … but stored with the dotted
        # types: a subject copied from the display is looked for as stored as well.
        stored = stored_dn_search(q)
        query = query.where(
            or_(
                lower(CertificateRecord.common_name).like(like, escape="\\"),
                lower(CertificateRecord.subject).like(like, escape="\\"),
                *(
                    ()
                    if stored is None
                    else (
                        lower(CertificateRecord.subject).like(
                            contains_pattern(stored), escape="\\"
                        ),
                    )
                ),
                CertificateRecord.serial.in_(_serial_forms(q)),
                # Every name the certificate covers: its SAN values as stored (A-labels,
                # canonical IP addresses), which q in another spelling is turned into.
                *(
                    json_string_contains(CertificateRecord.sans, form, SAN_KINDS)
                    for form in san_search_forms(q)
                ),
            )
        )
    with services.engine.connect() as connection:
        rows = cast(
            list[CertificateView], [_ListedRow._make(row) for row in connection.execute(query)]
        )
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


_CERT_BY_ID = select(*_CERT_COLUMNS).where(CERTIFICATES.c.id == bindparam("cert_id"))
# The same, and whether any issuer is revoked at all: usually none is, and the judgement of
# which issuers are below a revocation (revocations_by_issuer, a statement of its own: ~26 µs
# of a ~72 µs read in-process) is then skipped. It answers {} when no issuer is revoked.
_CERT_BY_ID_ANY_REVOKED = select(
    *_CERT_COLUMNS, exists().where(Issuer.revoked_at.is_not(None)).label("any_issuer_revoked")
).where(CERTIFICATES.c.id == bindparam("cert_id"))


def get_certificate(
    services: Services, caller: Principal, cert_id: str, *, issuer_revoked: bool = True
) -> tuple[CertificateView, IssuerRevocation | None]:
    """One certificate by id (its public columns), and the revocation of its issuer if any.

    Remembered per process (``certificate_cache``) at the certificate generation: a change
    by any process or replica, or by hand, is seen by the next call.

    A Core row, not an ORM object: loading through a Session cost more than the rest of
    the request together (``docs/performance.md``). The issuer's revocation (its own, or a
    CA's above it) is read on the same connection: usually no issuer is revoked. Not read
    with ``issuer_revoked=False`` (always ``None`` then): a PEM download does not show it.
    """
    caller.require("cert.read")
    # Remembered while migration 0022's counter, read first, stays put: what this GET shows
    # cannot have changed in any process since (certificate_cache.CertificateCache).
    cache = certificate_cache(services.engine)
    version = cache.version() if cache is not None else None
    if cache is not None and version is not None:
        found = cache.get(cert_id, version)
        if found is not None:
            return found[0], found[1] if issuer_revoked else None
    # Remembered, the row serves both formats: the JSON's issuer revocation is read too.
    read_revoked = issuer_revoked or version is not None
    with services.engine.connect() as connection:
        if not read_revoked:
            row = connection.execute(_CERT_BY_ID, {"cert_id": cert_id}).first()
        else:
            row = connection.execute(_CERT_BY_ID_ANY_REVOKED, {"cert_id": cert_id}).first()
        if row is None:
            raise NotFound(f"certificate {cert_id} not found")
        revoked = None
        if read_revoked and row.any_issuer_revoked:
            revoked = revocations_by_issuer(connection).get(row.issuer_id)
    if cache is not None and version is not None:
        cache.put(cert_id, version, row, revoked)
    return cast(CertificateView, row), revoked if issuer_revoked else None


def _load_certificate(services: Services, cert_id: str) -> CertificateRecord:
    with services.sessions() as session:
        row = session.get(CertificateRecord, cert_id)
    if row is None:
        raise NotFound(f"certificate {cert_id} not found")
    return row


@dataclass(frozen=True)
class Revocation:
    """A revoked certificate, and the others revoked with it (``also_revoked``, by id).

    A ``keyCompromise`` revocation also revokes every other certificate certctl issued for
    the same key: the renewals of a CSR-issued certificate certify the requester's key again.
    """

    certificate: CertificateRecord
    also_revoked: tuple[str, ...]
    issuer_revoked: IssuerRevocation | None = None


def revoke_certificate(
    services: Services, caller: Principal, cert_id: str, reason: str | None
) -> Revocation:
    """Revoke a certificate; it appears on its issuer's next CRL.

    With ``keyCompromise``, the unrevoked certificates of the same key (its renewal chain
    while renewals kept the CSR's key) are revoked too, in the same transaction: the key is
    what was compromised, and a successor certifying it would still be trusted. A
    certificate already revoked for another reason gets keyCompromise as its reason, its
    revocation date kept (as Let's Encrypt's Boulder does), and the rest of its key is
    revoked: a client checking the reason learns the key is not to be trusted.
    """
    caller.require("cert.revoke")
    reason = check_reason(reason)
    now = services.clock()
    also: list[str] = []
    with services.revoking(), services.sessions.begin() as session:
        # One revocation at a time across workers and replicas: two revoking links of one
        # chain (keyCompromise takes them all) each held its own row and waited for the
        # other's, and PostgreSQL aborted one as a deadlock (a 503 to its client).
        lock_for_write(session, REVOCATION_LOCK)
        row = session.get(CertificateRecord, cert_id)
        if row is None:
            raise NotFound(f"certificate {cert_id} not found")
        if reason == "keyCompromise":
            also, revoked = _revoke_key(session, caller, row, now)
        elif row.status == "revoked" or not _revoke_one(session.connection(), row, reason, now):
            raise Conflict(f"certificate {cert_id} is already revoked")
        else:
            revoked = 1
            record(
                session,
                at=now,
                actor=caller.actor_id,
                action="certificate.revoke",
                target=cert_id,
                detail=reason,
                source=caller.source,
                credential=caller.credential,
            )
        session.expire_all()
        session.refresh(row)
    REVOCATIONS.labels(row.issuer_id).inc(revoked)  # a changed reason is no new revocation
    return Revocation(row, tuple(also), issuer_revocations(services).get(row.issuer_id))


# Ids per statement in the bulk updates of a keyCompromise revocation: far below SQLite's
# 32766 bound variables and PostgreSQL's 65535 parameters.
_BULK = 500


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _BULK):
        yield ids[start : start + _BULK]


def _revoke_key(
    session: Session, caller: Principal, row: CertificateRecord, now: datetime
) -> tuple[list[str], int]:
    """Revoke ``row`` and the other certificates of its key for keyCompromise, and audit it.

    Those already revoked for another reason keep their revocation date and get
    keyCompromise as their reason. A few statements per pass, whatever the length of the
    chain: each certificate revoked one at a time (and its predecessors' ``renewed_by``
    handed over one link at a time) took 9 s for a chain of 256 renewals on PostgreSQL. The
    chain is walked again after each pass until it holds nothing new: a renewal that another
    worker or replica committed after a walk listed its predecessor, while this transaction
    waited for that predecessor's row lock (PostgreSQL), shows up only then; once a link is
    revoked here, no renewal of it can commit any more.

    Returns:
        The ids of the other certificates revoked or given keyCompromise, and how many
        certificates were newly revoked (``row`` included).

    Raises:
        Conflict: ``row`` is already revoked for keyCompromise, or its key has more
            certificates than one revocation takes (then nothing is revoked).
    """
    if row.status == "revoked" and row.revocation_reason == "keyCompromise":
        raise Conflict(f"certificate {row.id} is already revoked (keyCompromise)")
    connection = session.connection()
    done: set[str] = set()
    changed: dict[str, str | None] = {}  # id → reason before (None: it was not revoked)
    keys: dict[str, bool] = {}  # the chain's certificates compared with row's key so far
    while fresh := [i for i in (row.id, *_same_key(connection, row, keys)) if i not in done]:
        done.update(fresh)
        # Their issuers' rows before theirs (the CRL counts the trigger bumps), in one order:
        # see store.db.REVOCATION_LOCK. One issuer in practice (a renewal keeps its issuer);
        # a later pass holds it already.
        lock_issuer_rows(connection, _issuers_of(connection, fresh))
        changed.update(_revoke_all(connection, fresh, now))
    if row.wrapped_key is None:
        # Every certificate of the key is revoked now. Those they stood for as renewed_by
        # (theirs among them) fall back as _hand_over does, for all of them in a few
        # statements: to their own latest live successor, else to the live one that
        # renewed the revoked one in turn (an ACME order replacing it with a new key,
        # RFC 9773, carries the names on), else need renewing again.
        sibling = CERTIFICATES.alias("sibling")
        latest = (  # correlated with the row being updated
            select(func.max(sibling.c.id))
            .where(sibling.c.renewed_from == CERTIFICATES.c.id, sibling.c.status != "revoked")
            .scalar_subquery()
        )
        by_successor: dict[str | None, list[str]] = {}
        for cert_id, successor in _carried_on(connection, done).items():
            by_successor.setdefault(successor, []).append(cert_id)
        for successor, revoked_ids in by_successor.items():
            for ids in _chunks(sorted(revoked_ids)):
                connection.execute(
                    update(CERTIFICATES)
                    .where(CERTIFICATES.c.renewed_by.in_(ids))
                    .values(renewed_by=func.coalesce(latest, successor))
                )
    elif changed.get(row.id, "") is None:
        # A key of its own: its renewals have other keys and stay valid; its predecessors
        # fall back to them as for any other reason.
        _hand_over(connection, row)

    try:
        key_der = _public_key_der(row.certificate_pem)
    except (ValueError, UnsupportedAlgorithm):
        # A PEM edited in the database, or an imported certificate of a key cryptography
        # does not read (an SM2 curve): no key to block, and none certctl could certify
        # (load_csr_with_key refuses such a CSR). Revoked all the same: its CRL lists it.
        key_der = None
    if key_der is not None:
        # In this transaction: the key is refused from the commit on, whatever certifies
        # it next (a CSR of it, another certificate's renewal, an ACME order).
        block_key(
            connection,
            key_der,
            at=now,
            reason="keyCompromise",
            actor=caller.actor_id,
            certificate_id=row.id,
        )

    def detail(cert_id: str) -> str:
        said = "" if cert_id == row.id else f"same key as {row.id}"
        before = changed[cert_id]
        if before is not None:
            said += f"{'; ' if said else ''}reason was {before}, revocation date kept"
        return f"keyCompromise ({said})" if said else "keyCompromise"

    connection.execute(
        insert(AUDIT_EVENTS),
        [
            event_values(
                at=now,
                actor=caller.actor_id,
                action="certificate.revoke",
                target=cert_id,
                detail=detail(cert_id),
                source=caller.source,
                credential=caller.credential,
            )
            for cert_id in (row.id, *sorted(i for i in changed if i != row.id))
        ],
    )
    revoked = sum(1 for before in changed.values() if before is None)
    return sorted(i for i in changed if i != row.id), revoked


def _carried_on(connection: Connection, done: set[str]) -> dict[str, str | None]:
    """For each of ``done`` (revoked together), the live certificate renewing it, if any.

    Its renewed_by, followed through those of ``done`` (same-key renewals revoked with
    it) to the first one outside them, which is live or names none: a revocation hands
    renewed_by over to a live successor (_hand_over) or clears it.
    """
    renewed_by: dict[str, str | None] = {}
    for chunk in _chunks(sorted(done)):
        for cert_id, successor in connection.execute(
            select(CERTIFICATES.c.id, CERTIFICATES.c.renewed_by).where(CERTIFICATES.c.id.in_(chunk))
        ):
            renewed_by[cert_id] = successor
    carried: dict[str, str | None] = {}
    for cert_id in done:  # each link resolved once: a chain of 10 000 stays linear
        path: dict[str, None] = {}  # ordered, and a set: a store edited into a cycle
        successor = cert_id
        while successor in done and successor not in carried and successor not in path:
            path[successor] = None
            successor = renewed_by.get(successor)
        end = carried.get(successor) if successor in done else successor
        carried.update(dict.fromkeys(path, end))
    outside = sorted({s for s in carried.values() if s is not None})
    live: set[str] = set()
    for chunk in _chunks(outside):
        live.update(
            connection.execute(
                select(CERTIFICATES.c.id).where(
                    CERTIFICATES.c.id.in_(chunk), CERTIFICATES.c.status != "revoked"
                )
            ).scalars()
        )
    return {i: s if s in live else None for i, s in carried.items()}


def _issuers_of(connection: Connection, ids: list[str]) -> set[str]:
    """The issuers of the certificates ``ids``."""
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(
            connection.execute(
                select(CERTIFICATES.c.issuer_id).where(CERTIFICATES.c.id.in_(chunk)).distinct()
            ).scalars()
        )
    return found


def _revoke_all(connection: Connection, ids: list[str], now: datetime) -> dict[str, str | None]:
    """Revoke the certificates among ``ids`` for keyCompromise.

    The unrevoked ones are revoked now; those revoked for another reason keep their
    revocation date and get keyCompromise: RFC 5280 5.3.1 and the CA/B Forum's Baseline
    Requirements 7.2.2 want the most appropriate reason on the CRL, and relying parties
    that treat keyCompromise apart (back-dating trust decisions) must see it. Read, then
    written, under REVOCATION_LOCK: no other revocation runs meanwhile, and a renewal
    changes no status.

    Returns:
        Each certificate changed, with its reason before (None: it was not revoked).
    """
    certs = CERTIFICATES
    changed: dict[str, str | None] = {}
    for chunk in _chunks(ids):
        rows = connection.execute(
            select(certs.c.id, certs.c.status, certs.c.revocation_reason).where(
                certs.c.id.in_(chunk),
                or_(
                    certs.c.status != "revoked",
                    certs.c.revocation_reason.is_(None),
                    certs.c.revocation_reason != "keyCompromise",
                ),
            )
        )
        for cert_id, status, before in rows:
            changed[cert_id] = None if status != "revoked" else (before or "unspecified")
    fresh = [i for i, before in changed.items() if before is None]
    for chunk in _chunks(fresh):
        connection.execute(
            update(certs)
            .where(certs.c.id.in_(chunk))
            .values(status="revoked", revoked_at=now, revocation_reason="keyCompromise")
        )
    for chunk in _chunks([i for i, before in changed.items() if before is not None]):
        connection.execute(
            update(certs).where(certs.c.id.in_(chunk)).values(revocation_reason="keyCompromise")
        )
    return changed


def _revoke_one(connection: Connection, row: CertificateRecord, reason: str, now: datetime) -> bool:
    """Mark ``row`` revoked and hand its renewals back; False if someone revoked it first."""
    # Only if nobody revoked it since it was read: another worker or replica revoking it
    # at the same moment would otherwise be overwritten, its reason and time replaced
    # after a CRL carried them. The first revocation stands; this one is a 409. Its
    # issuer's row first (the CRL count the trigger bumps): see store.db.REVOCATION_LOCK.
    lock_issuer_rows(connection, [row.issuer_id])
    revoked = connection.execute(
        update(CERTIFICATES)
        .where(CERTIFICATES.c.id == row.id, CERTIFICATES.c.status != "revoked")
        .values(status="revoked", revoked_at=now, revocation_reason=reason)
    )
    if revoked.rowcount != 1:
        return False
    _hand_over(connection, row)
    return True


def _hand_over(connection: Connection, row: CertificateRecord) -> None:
    """Point the certificates ``row`` (now revoked) stood for as renewed_by at a live one."""
    # A revoked successor renews nothing. Each certificate it stood for as renewed_by
    # (its predecessor, or one further up a chain that handed over to it) falls back to
    # its own latest unrevoked successor, as migration 0005 back-fills, else to the one
    # that renewed this certificate in turn (A → B → C, B revoked: C carries the same
    # names on), else needs renewing again.
    renewed_by = connection.execute(
        select(CERTIFICATES.c.renewed_by).where(CERTIFICATES.c.id == row.id)
    ).scalar()
    ancestors = _ancestors(connection, row.renewed_from)
    if ancestors:
        sibling = CERTIFICATES.alias("sibling")
        latest = (  # correlated with the row being updated
            select(func.max(sibling.c.id))
            .where(sibling.c.renewed_from == CERTIFICATES.c.id, sibling.c.status != "revoked")
            .scalar_subquery()
        )
        connection.execute(
            update(CERTIFICATES)
            .where(CERTIFICATES.c.id.in_(ancestors), CERTIFICATES.c.renewed_by == row.id)
            .values(renewed_by=func.coalesce(latest, renewed_by))
        )


def _key_family() -> Select[Any]:
    """The certificates of one key, given one of them (``id``, CSR-issued): one statement.

    Up the chain while each link was CSR-issued, then down through every renewal that kept
    the key. UNION (not UNION ALL) ends the recursion at a row already found, so even a
    store edited by hand into a cycle is walked once.
    """
    certs = CERTIFICATES
    start = select(sql_cast(bindparam("id"), certs.c.id.type).label("id"))
    up = start.cte("key_up", recursive=True)
    link = certs.alias("link")
    up = up.union(
        select(link.c.renewed_from).where(
            link.c.id == up.alias().c.id,
            link.c.wrapped_key.is_(None),
            link.c.renewed_from.is_not(None),
        )
    )
    down = select(up.c.id).cte("key_down", recursive=True)
    child = certs.alias("child")
    down = down.union(
        select(child.c.id).where(
            child.c.renewed_from == down.alias().c.id,
            child.c.renewed_from.is_not(None),  # the partial index's predicate
            child.c.wrapped_key.is_(None),
        )
    )
    return (
        select(certs.c.id)
        .where(certs.c.id.in_(select(down.c.id)), certs.c.id != bindparam("id"))
        .order_by(certs.c.id)
        .limit(bindparam("limit"))
    )


_KEY_FAMILY = _key_family()


def _same_key(
    connection: Connection, row: CertificateRecord, keys: dict[str, bool] | None = None
) -> list[str]:
    """The other certificates certctl issued for ``row``'s key, oldest first.

    A certificate whose key certctl made has a key of its own (a renewal makes a new one).
    One issued from a CSR shares its key with the renewals that kept it: up the chain while
    each link was CSR-issued, then down through every renewal that kept the key. A CSR
    submitted again outside a renewal is not followed (certctl does not index keys).
    ``keys`` remembers, across calls for one ``row``, which of the chain hold its key.

    Raises:
        Conflict: the key has more than ``_MAX_SAME_KEY`` certificates; the caller's
            transaction must then change nothing.
    """
    if row.wrapped_key is not None:
        return []
    found = connection.execute(_KEY_FAMILY, {"id": row.id, "limit": _MAX_SAME_KEY})
    others = [other_id for (other_id,) in found]
    if len(others) >= _MAX_SAME_KEY:
        raise Conflict(
            f"certificate {row.id}: more than {_MAX_SAME_KEY} certificates certify its key "
            f"(renewals that kept it), and a keyCompromise revocation takes at most "
            f"{_MAX_SAME_KEY}: nothing was revoked"
        )
    return _holding_key(connection, row, others, {} if keys is None else keys)


def _holding_key(
    connection: Connection, row: CertificateRecord, ids: list[str], keys: dict[str, bool]
) -> list[str]:
    """Those of ``ids`` that certify ``row``'s public key (``keys``: those compared already).

    A renewal through the API keeps a CSR's key, but an ACME order replacing a certificate
    (RFC 9773 ``replaces``) renews it from a CSR of the client's choosing, usually with a new
    key (certbot makes one at each renewal): the chain alone would revoke, with a compromised
    key, the very certificate issued to replace it.
    """
    unread = [i for i in ids if i not in keys]
    if unread:
        key = _public_key_der(row.certificate_pem)
        for chunk in _chunks(unread):
            for cert_id, pem in connection.execute(
                select(CERTIFICATES.c.id, CERTIFICATES.c.certificate_pem).where(
                    CERTIFICATES.c.id.in_(chunk)
                )
            ):
                keys[cert_id] = _public_key_der(pem) == key
    return [i for i in ids if keys.get(i, False)]


def _public_key_der(certificate_pem: str) -> bytes:
    public_key = x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


_MAX_CHAIN = 64  # renewals followed up a chain; a longer one stops there (and a cycle too)
# Certificates of one key a keyCompromise revocation takes, the first among them: a renewal
# a day for 27 years. Past it the revocation is refused whole, never cut short: revoking
# 256 and leaving the older ones valid with nothing said (as before) kept them certifying
# the compromised key, and an answer flagging it would be missed by a client reading the
# status alone.
_MAX_SAME_KEY = 10_000
_RENEWED_FROM = select(CERTIFICATES.c.renewed_from).where(CERTIFICATES.c.id == bindparam("id"))


def _ancestors(connection: Connection, first: str | None) -> list[str]:
    """``first`` and the certificates it renewed in turn, by primary key (never a scan)."""
    found: list[str] = []
    while first is not None and first not in found and len(found) < _MAX_CHAIN:
        found.append(first)
        first = connection.execute(_RENEWED_FROM, {"id": first}).scalar()
    return found


def certificates_by_id(services: Services, ids: list[str]) -> list[CertificateRecord]:
    """The records of ``ids`` (those that exist), detached from their session."""
    with services.sessions() as session:
        rows = list(session.scalars(select(CertificateRecord).where(CertificateRecord.id.in_(ids))))
        session.expunge_all()
    return rows


def renew_certificate(
    services: Services, caller: Principal, cert_id: str, validity: timedelta | None
) -> IssueResult:
    """Issue a successor with the same subject, SANs and profile.

    A certificate whose key certctl generated gets a fresh key (returned once); one issued
    from a CSR keeps the requester's public key. Counted in ``certctl_renewals_total`` and,
    as the issuance it is, in ``certctl_issuance_total{issuer}`` and the issuance duration.
    """
    caller.require("cert.issue")
    started = time.perf_counter()
    # The route needs cert.issue only (DESIGN §4); do not demand cert.read on top.
    old = _load_certificate(services, cert_id)
    if old.status == "revoked":
        # A CSR-issued successor keeps the requester's key: renewing a certificate revoked
        # for keyCompromise would re-certify the compromised key.
        raise Conflict(f"certificate {cert_id} is revoked and cannot be renewed")
    if old.profile == IMPORTED_PROFILE:
        # Issued outside certctl: no certctl profile says which extensions its successor
        # should carry, and re-signing under one would change them without a word.
        raise Conflict(
            f"certificate {cert_id} was imported (issued before certctl held its issuer) and "
            "is not renewed here: issue its successor with POST /api/v1/certificates "
            "(its CSR, or a key made here), then revoke it if it is to go"
        )
    old_cert = x509.load_pem_x509_certificate(old.certificate_pem.encode())
    if caller.issue_limits is not None:
        # A role's constraints hold for a renewal as for an issuance: the successor has the
        # same issuer and names, which the renewer's roles may not allow (a team renewing
        # another team's certificate).
        check_certificate(caller, old.issuer_id, old_cert)
    ca, revoked = load_issuer_state(services, check_not_managed(old.issuer_id))
    # notBefore is backdated by BACKDATE at issuance: leave it out, or each renewal would
    # lengthen the lifetime by another BACKDATE.
    lifetime = validity or (old.not_after - old.not_before - BACKDATE)
    sans = SubjectAltNames.parse(
        dns=old.sans.get("dns", []),
        ip=old.sans.get("ip", []),
        email=old.sans.get("email", []),
        uri=old.sans.get("uri", []),
    )
    now = services.clock()
    try:
        check_unexpired(ca, old.issuer_id, now)
        check_unrevoked(revoked, old.issuer_id)
    except Conflict:
        RENEWALS.labels("error").inc()
        ISSUANCE.labels(old.issuer_id, "error").inc()  # refused by the issuer, as prepare_*
        raise
    key_pem: bytes | None = None
    spki: bytes | None = None  # the kept key's, once checked
    if old.wrapped_key is not None:
        key = generate_private_key(KeyType(key_type_of(old_cert.public_key())))
        public_key = key.public_key()
        key_pem = key_to_pem(key)
    else:
        public_key = old_cert.public_key()  # type: ignore[assignment]
        try:
            # The requester's key again: refused once blocked (revoked for keyCompromise
            # with another certificate of it). 409, as the revoked certificate's own renewal:
            # the request is right, the stored key's state refuses it.
            spki = spki_of(public_key)
            check_key_unblocked(services, spki)
        except BlockedKey as exc:
            RENEWALS.labels("error").inc()
            ISSUANCE.labels(old.issuer_id, "error").inc()
            detail = f"certificate {cert_id} cannot be renewed with its key: {exc.detail}"
            raise Conflict(detail) from None
    try:
        issued = ca.issue(
            public_key,
            old_cert.subject,
            profile=get_profile(old.profile),
            validity=lifetime,
            now=now,
            sans=sans,
            crl_urls=services.crl_urls(old.issuer_id),
            ca_issuers_urls=services.ca_issuers_urls(old.issuer_id),
            ocsp_urls=services.ocsp_urls(old.issuer_id),
            # The names are the predecessor's, and a renewal takes none: the warnings about
            # them were given at issuance, with advice this call cannot follow.
            name_hint=None,
            spki_der=spki,
        )
    except InvalidRequest:
        RENEWALS.labels("error").inc()
        ISSUANCE.labels(old.issuer_id, "error").inc()
        raise
    if key_pem is not None:
        # A new key, returned to the renewer. A renewal that keeps the key certifies it
        # again for whoever had it issued, and hands the renewer nothing it can pose with.
        check_server_names(services, caller, ca, get_profile(old.profile), issued)
    record, rows = new_rows(
        services, caller, old.issuer_id, issued, old.profile, key_pem, renewed_from=cert_id
    )
    with services.engine.begin() as connection:
        # Still not revoked, checked where it is written: a revocation (keyCompromise) landing
        # from another request since the read above must not get a successor. This UPDATE
        # also locks the row (PostgreSQL) or the database (SQLite) until the commit,
        # so a revocation arriving now waits and follows the renewal.
        if not record_renewal(connection, cert_id, record.id):
            RENEWALS.labels("error").inc()
            raise Conflict(f"certificate {cert_id} is revoked and cannot be renewed")
        write_rows(connection, rows)
    RENEWALS.labels("success").inc()
    ISSUANCE.labels(old.issuer_id, "success").inc()
    ISSUANCE_DURATION.observe(time.perf_counter() - started)
    return IssueResult(
        record,
        ca_chain_pem(ca),
        key_pem.decode() if key_pem else None,
        issued.warnings,
    )


def record_renewal(
    connection: Connection, renewed: str, successor: str, *, revoked_too: bool = False
) -> bool:
    """Record ``successor`` as the latest renewal of ``renewed`` (its ``renewed_by``).

    Called in the transaction that writes the successor's row (``renewed_from`` =
    ``renewed``), before that row: the UPDATE locks the renewed row (PostgreSQL) or the
    database (SQLite) until the commit, so a revocation arriving meanwhile waits and follows
    the renewal. Renewed, a certificate is no longer counted or listed as expiring. The
    latest successor wins, as migration 0007's trigger records any inserted one.

    ``revoked_too``: a revoked ``renewed`` is linked as well (an ACME order may replace a
    revoked certificate, RFC 9773); otherwise it is left alone and False returned, as for
    a certificate that does not exist.
    """
    query = update(CERTIFICATES).where(CERTIFICATES.c.id == renewed)
    if not revoked_too:
        query = query.where(CERTIFICATES.c.status != "revoked")
    return connection.execute(query.values(renewed_by=successor)).rowcount == 1


def _serial_forms(q: str) -> list[str]:
    """How a serial typed as ``q`` may be stored.

    In whole octets (``0dd0…``, as openssl prints it and as rows are written now), or without
    the leading zero (rows written before).
    """
    digits = q.lower().replace(":", "").removeprefix("0x")
    bare = digits.lstrip("0") or "0"
    return sorted({bare, bare if len(bare) % 2 == 0 else f"0{bare}"})


_ACTORS: Table = Actor.__table__  # type: ignore[assignment]
_CLIENT_CERT_BY_ISSUER_DN = (
    select(
        CERTIFICATES.c.status,
        _ACTORS.c.roles,
        # A renewal that kept the requester's key (a CSR's) names its predecessor here.
        case((CERTIFICATES.c.wrapped_key.is_(None), CERTIFICATES.c.renewed_from), else_=None),
        CERTIFICATES.c.profile == IMPORTED_PROFILE,
    )
    .join(ISSUERS, ISSUERS.c.id == CERTIFICATES.c.issuer_id)
    .outerjoin(_ACTORS, _ACTORS.c.id == CERTIFICATES.c.created_by)
    .where(
        ISSUERS.c.subject == bindparam("issuer"),
        CERTIFICATES.c.serial.in_(bindparam("serials", expanding=True)),
    )
)
_KEY_PREDECESSOR = (
    select(
        _ACTORS.c.roles,
        case((CERTIFICATES.c.wrapped_key.is_(None), CERTIFICATES.c.renewed_from), else_=None),
    )
    .select_from(CERTIFICATES.outerjoin(_ACTORS, _ACTORS.c.id == CERTIFICATES.c.created_by))
    .where(CERTIFICATES.c.id == bindparam("id"))
)


@dataclass(frozen=True)
class IssuedClientCertificate:
    """What certctl knows of a client certificate one of its issuers issued."""

    revoked: bool
    # The roles of the actor that had it issued, as they are now (one tuple per stored row:
    # two issuers may share a subject DN); None for a creator that is no actor any more, or
    # never was one (a client-certificate principal).
    creator_roles: tuple[tuple[str, ...] | None, ...]


def issued_client_certificate(
    services: Services, issuer_dn: str, serial: int, connection: Connection | None = None
) -> IssuedClientCertificate | None:
    """The stored certificate ``serial`` of one of certctl's issuers (by subject DN), or None.

    The TLS handshake only checks a client certificate against ``tls.client-ca``: a
    certificate revoked through the API would otherwise keep authenticating until it expires,
    and one that any ``cert.issue`` holder had issued with a mapped subject would carry that
    mapping's roles, whatever its requester held. A certificate certctl did not issue (an
    offline CA, another PKI) is not known here: None. Read on ``connection`` if given.
    """
    with connected(services, connection) as conn:
        rows = conn.execute(
            _CLIENT_CERT_BY_ISSUER_DN,
            {"issuer": issuer_dn, "serials": _serial_forms(format_serial(serial))},
        ).all()
        # An imported row's creator recorded it, it did not have it issued: its certificate
        # carries the mapped roles as before the import (as one of a CA certctl does not
        # hold), where an importer lacking them cut an administrator's login down to theirs.
        creators = [roles for _, roles, _, imported in rows if not imported]
        for _, _, predecessor, _ in rows:
            creators += _key_holders_before(conn, predecessor)
    if not rows:
        return None
    return IssuedClientCertificate(
        any(status == "revoked" for status, _, _, _ in rows),
        tuple(None if roles is None else tuple(roles) for roles in creators),
    )


def _key_holders_before(connection: Connection, cert_id: str | None) -> list[Any]:
    """The roles of whoever had each earlier certificate of this key issued, newest first.

    A renewal of a CSR-issued certificate certifies the same key again, which its first
    requester holds: an administrator renewing an operator's ``CN=ci-admin`` must not make
    that operator's key an administrator's. Server-made keys are new at each renewal.
    """
    found: list[Any] = []
    seen: set[str] = set()
    while cert_id is not None and cert_id not in seen:
        if len(seen) == _MAX_CHAIN:
            return [*found, None]  # requesters not looked up: as if no actor (no permission)
        seen.add(cert_id)
        row = connection.execute(_KEY_PREDECESSOR, {"id": cert_id}).first()
        if row is None:
            break
        found.append(row[0])
        cert_id = row[1]
    return found


def certificate_counts(
    services: Services,
) -> tuple[dict[tuple[str, str], int], dict[str, datetime]]:
    """Aggregate counts per (issuer, status) and the next expiry per issuer (for metrics)."""
    now = services.clock()
    soon = now + EXPIRING_WINDOW
    status_expr = CertificateRecord.status
    counts: dict[tuple[str, str], int] = {}
    nxt: dict[str, datetime] = {}
    with services.sessions() as session:
        for issuer_id, status, expired, expiring, total in session.execute(
            select(
                CertificateRecord.issuer_id,
                status_expr,
                func.sum((CertificateRecord.not_after <= now).cast(Integer)),
                func.sum(
                    and_(
                        CertificateRecord.not_after > now,
                        CertificateRecord.not_after <= soon,
                        CertificateRecord.renewed_by.is_(None),  # renewed: active to its end
                    ).cast(Integer)
                ),
                func.count(),
            ).group_by(CertificateRecord.issuer_id, status_expr)
        ):
            if status == "revoked":
                counts[(issuer_id, "revoked")] = counts.get((issuer_id, "revoked"), 0) + total
                continue
            expired, expiring = int(expired or 0), int(expiring or 0)
            counts[(issuer_id, "expired")] = expired
            counts[(issuer_id, "expiring")] = expiring
            counts[(issuer_id, "active")] = total - expired - expiring
        for issuer_id, earliest in session.execute(
            select(CertificateRecord.issuer_id, func.min(CertificateRecord.not_after))
            .where(
                CertificateRecord.status == "active",
                CertificateRecord.not_after > now,
                CertificateRecord.renewed_by.is_(None),
            )
            .group_by(CertificateRecord.issuer_id)
        ):
            if earliest is not None:
                # Aggregates bypass the column type: SQLite hands back a naive string/datetime.
                if isinstance(earliest, str):
                    earliest = datetime.fromisoformat(earliest)
                nxt[issuer_id] = (
                    earliest.replace(tzinfo=UTC) if earliest.tzinfo is None else earliest
                )
        for (issuer_id,) in session.execute(select(Issuer.id)):
            for status in ("active", "expiring", "expired", "revoked"):
                counts.setdefault((issuer_id, status), 0)
    return counts, nxt
