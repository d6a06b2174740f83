"""Revoke an issuer, and the other issuers holding its certificate or key."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from certctl.errors import Conflict, NotFound
from certctl.metrics.registry import REVOCATIONS
from certctl.services.audit import record
from certctl.services.blocked_keys import block_key
from certctl.services.context import Principal, Services
from certctl.services.issuers import ISSUERS, MANAGED_ISSUER_PREFIX, stored_certificates
from certctl.services.revocation import (
    COMPROMISE,
    check_reason,
    parsed_ca,
    spki,
    top_signed_by,
)
from certctl.store.db import REVOCATION_LOCK, lock_for_write, lock_issuer_rows
from certctl.store.models import Issuer

__all__ = [
    "revoke_issuer",
]

log = logging.getLogger("certctl.services")


def revoke_issuer(
    services: Services, caller: Principal, issuer_id: str, reason: str | None
) -> Issuer:
    """Revoke intermediate issuer ``issuer_id``: on its parent's next CRL, it issues no more.

    Nothing more: no certificate, renewal or intermediate below it. Its own CRL stays
    served, so clients can still check what it issued before. Other processes and replicas
    that cached it drop it at their next issuer refresh. An issuer already revoked for a
    reason other than a compromise gets keyCompromise or cACompromise as its reason, its
    revocation date kept, as a certificate gets keyCompromise (CA/B Forum Baseline
    Requirements 4.9.1.1, Mozilla Root Store Policy 6.1.1: a reason may later become
    keyCompromise); no other reason replaces one.

    Raises:
        NotFound: no issuer ``issuer_id``.
        InvalidRequest: ``reason`` is not one of ISSUER_REVOCATION_REASONS.
        Conflict: a managed service's CA, a root (no CRL above it can list it), an issuer
            revoked already (unless for no compromise, and this one is keyCompromise or
            cACompromise), or one whose parent certctl does not hold.
    """
    caller.require("issuer.revoke")
    reason = check_reason(reason, issuer=True)
    now = services.clock()
    with services.revoking(), services.sessions.begin() as session:
        # One revocation at a time (of certificates too), and the issuer rows it writes locked
        # in one order before the first write: see _lock_rows. SQLite: the write lock first.
        lock_for_write(session, REVOCATION_LOCK)
        row = session.get(Issuer, issuer_id)
        if row is None:
            raise NotFound(f"issuer {issuer_id} not found")
        if issuer_id.startswith(MANAGED_ISSUER_PREFIX):
            service = issuer_id.removeprefix(MANAGED_ISSUER_PREFIX)
            raise Conflict(
                f"issuer {issuer_id} is the CA of managed service {service}, which only its "
                "reconciler manages: it cannot be revoked; delete the service to retire it"
            )
        # Unreadable (cut short or written over in the database): a 409 naming it. Its
        # serial is stored beside it (0025), but whether it is a root, which issuer signed
        # it and what else holds its key are read from it; restored, it is revoked as any other.
        cert, _ = stored_certificates(services, issuer_id, row.certificate_pem, row.chain_pem)
        if cert.issuer == cert.subject and not row.chain_pem:
            raise Conflict(
                f"issuer {issuer_id} is a root CA (self-signed): no CRL above it can list it; "
                "remove its certificate from the clients' trust stores instead"
            )
        before: str | None = None  # the reason keyCompromise replaced
        newly_under: str | None = None  # the parent whose CRL lists it from now on
        parent_id = row.parent_id
        if row.revoked_at is None:
            parent_id = parent_id or _parent_of(session, issuer_id, cert)
            if parent_id is None:
                raise Conflict(
                    f"issuer {issuer_id} was signed by {cert.issuer.rfc4514_string()}, which "
                    "is not a certctl issuer: no CRL here can list it; revoke it at that CA"
                )
        # Read before any write: what a compromise revokes with it, each under its parent.
        twins = _twins(session, issuer_id, cert) if reason in COMPROMISE else []
        _lock_rows(session, (issuer_id, row.parent_id, parent_id), twins)
        if row.revoked_at is not None:
            before = _upgrade_to_key_compromise(session, issuer_id, reason)
        else:
            # Only if nobody revoked it since it was read (SQLite takes no row lock on a
            # read): the first revocation, its time and reason, stands.
            revoked = session.connection().execute(
                update(ISSUERS)
                .where(ISSUERS.c.id == issuer_id, ISSUERS.c.revoked_at.is_(None))
                .values(revoked_at=now, revocation_reason=reason, parent_id=parent_id)
            )
            if revoked.rowcount == 1:
                newly_under = parent_id
            else:  # revoked meanwhile: keyCompromise may still replace its reason
                before = _upgrade_to_key_compromise(session, issuer_id, reason)
        # A compromise is stored as its reason now (else a 409 above).
        revoked_twins = _revoke_twins(session, twins, reason, now)
        if reason in COMPROMISE:
            # Its key certifies nothing more: no leaf from a CSR of it (blocked_keys), in
            # this transaction. The twins hold the same key: one row.
            block_key(
                session.connection(),
                spki(cert),
                at=now,
                reason=reason,
                actor=caller.actor_id,
                issuer_id=issuer_id,
            )
        detail = reason
        if before is not None:  # worded as for a certificate's (_revoke_key)
            detail = f"{reason} (reason was {before}, revocation date kept)"
        if revoked_twins:
            detail += f"; also revoked, the same key: {', '.join(t for t, _ in revoked_twins)}"
        record(
            session,
            at=now,
            actor=caller.actor_id,
            action="issuer.revoke",
            target=issuer_id,
            detail=detail,
            source=caller.source,
            credential=caller.credential,
        )
        session.expire_all()
        session.refresh(row)
    # Dropped here even for a changed reason: the cached revocation names it in refusals.
    services.forget_issuer(issuer_id)  # reloaded as revoked at its next use here
    key = spki(cert) if reason in COMPROMISE else None
    for other_id, ca in services.cached_issuers().items():
        if (
            cert == ca.certificate
            or cert in ca.chain
            or (
                key is not None
                and (
                    key in {spki(c) for c in (ca.certificate, *ca.chain)}
                    or top_signed_by(ca.certificate, ca.chain, cert)
                )
            )
        ):
            # Below it, it imported again, or its compromised key (or below that): reloaded
            # as refusing too.
            services.forget_issuer(other_id)
    for parent_id in (newly_under, *(p for _, p in revoked_twins)):
        if parent_id is not None:  # a changed reason is no new revocation
            REVOCATIONS.labels(parent_id).inc()  # a certificate the parent signed, now revoked
    return row


class _Twin(NamedTuple):
    id: str
    stored_parent: str | None  # its parent_id as read (None: unknown until revoked)
    parent: str  # the issuer whose CRL lists it


def _twins(session: Session, issuer_id: str, cert: x509.Certificate) -> list[_Twin]:
    """The other issuers' certificates of ``cert``'s key that a compromise of it revokes.

    Re-issued or cross-signed certificates of the compromised key whose parent certctl holds:
    that parent's CRL lists them from now on (RFC 5280 5.3.1: the key's certificates are
    all revoked, as ``_revoke_key`` does for a certificate's key). Those signed elsewhere
    (or roots) no CRL here can list: they refuse to issue all the same (``revoked_above``
    matches the key). Read under REVOCATION_LOCK: no other revocation changes them meanwhile.
    """
    key = spki(cert)
    found: list[_Twin] = []
    rows = session.execute(
        select(ISSUERS.c.id, ISSUERS.c.certificate_pem, ISSUERS.c.chain_pem, ISSUERS.c.parent_id)
        .where(ISSUERS.c.id != issuer_id)
        .order_by(ISSUERS.c.id)
    ).all()
    for twin_id, pem, chain_pem, stored_parent in rows:
        try:
            twin, _, twin_key = parsed_ca(pem)
        except ValueError:
            # Its stored certificate cut short or written over in the database (which made
            # every compromise revocation a 500): its key cannot be compared. It signs
            # nothing while so (a 409 naming it), and no CRL could list it.
            log.warning(
                "issuer %s: its stored certificate cannot be read, so whether it holds the "
                "key revoked with issuer %s cannot be told; restore it and revoke it too if so",
                twin_id,
                issuer_id,
            )
            continue
        if twin == cert or twin_key != key or twin_id.startswith(MANAGED_ISSUER_PREFIX):
            continue  # the same certificate is on the CRL once already
        if twin.issuer == twin.subject and not chain_pem:
            continue  # a root: on no CRL
        parent_id = stored_parent or _parent_of(session, twin_id, twin)
        if parent_id is None:
            continue  # signed elsewhere: revoke it at that CA
        found.append(_Twin(twin_id, stored_parent, parent_id))
    return found


def _lock_rows(session: Session, rows: Iterable[str | None], twins: Iterable[_Twin]) -> None:
    """Lock every issuer row the revocation writes, in one order, before the first write.

    The issuer and its twins, and their parents: migration 0020's trigger bumps a parent's
    CRL count in the statement that revokes a child. Written one after the other, an
    intermediate's revocation and a keyCompromise of its twin (the same parent) each held
    its own row and waited for the other's (PostgreSQL rolled one back: a 503).
    """
    named = [*rows, *(i for twin in twins for i in (twin.id, twin.stored_parent, twin.parent))]
    lock_issuer_rows(session.connection(), named)


def _revoke_twins(
    session: Session, twins: Iterable[_Twin], reason: str, now: datetime
) -> list[tuple[str, str | None]]:
    """Revoke ``twins`` for ``reason`` (a compromise).

    One revoked already for another reason gets this one, its date kept.

    Returns:
        (id, the parent that lists it from now on, None for a changed reason) per issuer.
    """
    done: list[tuple[str, str | None]] = []
    connection = session.connection()
    for twin_id, _stored, parent_id in twins:
        revoked = connection.execute(
            update(ISSUERS)
            .where(ISSUERS.c.id == twin_id, ISSUERS.c.revoked_at.is_(None))
            .values(revoked_at=now, revocation_reason=reason, parent_id=parent_id)
        )
        if revoked.rowcount == 1:
            done.append((twin_id, parent_id))
            continue
        upgraded = connection.execute(
            update(ISSUERS)
            .where(
                ISSUERS.c.id == twin_id,
                or_(
                    ISSUERS.c.revocation_reason.is_(None),
                    ISSUERS.c.revocation_reason.not_in(COMPROMISE),
                ),
            )
            .values(revocation_reason=reason)
        )
        if upgraded.rowcount == 1:
            done.append((twin_id, None))
    return done


def _upgrade_to_key_compromise(session: Session, issuer_id: str, reason: str) -> str:
    """Give revoked issuer ``issuer_id`` ``reason``, a compromise, as its reason, its date kept.

    Returns:
        Its reason before.

    Raises:
        Conflict: ``reason`` is no compromise, or the issuer was revoked for one already.
    """
    connection = session.connection()
    revoked_at, before = connection.execute(
        select(ISSUERS.c.revoked_at, ISSUERS.c.revocation_reason).where(ISSUERS.c.id == issuer_id)
    ).one()
    before = before or "unspecified"
    if reason in COMPROMISE and before not in COMPROMISE:
        # Only if its reason is still the one read: two upgrades at once write one row and
        # one audit event; the other gets the 409 below.
        changed = connection.execute(
            update(ISSUERS)
            .where(
                ISSUERS.c.id == issuer_id,
                ISSUERS.c.revoked_at.is_not(None),
                or_(
                    ISSUERS.c.revocation_reason.is_(None),
                    ISSUERS.c.revocation_reason.not_in(COMPROMISE),
                ),
            )
            .values(revocation_reason=reason)
        )
        if changed.rowcount == 1:
            return str(before)
        before = connection.execute(
            select(ISSUERS.c.revocation_reason).where(ISSUERS.c.id == issuer_id)
        ).scalar_one()
    held = (
        ", and it was revoked for a compromise already"
        if before in COMPROMISE
        else " (its date stays)"
    )
    raise Conflict(
        f"issuer {issuer_id} is already revoked ({before}, on {revoked_at:%Y-%m-%d %H:%M}Z): "
        f"only keyCompromise or cACompromise can replace a revocation's reason{held}"
    )


def _parent_of(session: Session, issuer_id: str, cert: x509.Certificate) -> str | None:
    """The issuer whose key signed ``cert`` (an import, or created before migration 0010)."""
    candidates = session.execute(
        select(Issuer.id, Issuer.certificate_pem)
        .where(Issuer.subject == cert.issuer.rfc4514_string(), Issuer.id != issuer_id)
        .order_by(Issuer.id)
    )
    for candidate_id, pem in candidates:
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(pem.encode()))
        except (ValueError, TypeError, InvalidSignature):
            continue  # the same name on another key
        return str(candidate_id)
    return None
