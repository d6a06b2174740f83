"""ACME accounts as operators see them: listed, read, and cut off (deactivated) over the API.

An ACME account's holder may deactivate it (RFC 8555 7.3.6, ``services.acme.update_account``);
these are the operator's side: when an account key leaks (a cert-manager's Secret copied), the
operator deactivates the account, and revoking the External Account Binding key that bound
it does so too. Deactivation is final, as the RFC makes it: the account's next request, on any
replica, is refused ``unauthorized`` (accounts are read from the store on each request, never
cached), and what it had under way is cancelled: its pending authorizations are deactivated,
its pending and ready orders invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from certctl.errors import Conflict, InvalidRequest, NotFound
from certctl.services.audit import record_call
from certctl.services.certificates import revoke_certificate
from certctl.services.context import Principal, Services
from certctl.services.revocation import check_reason
from certctl.spelling import did_you_mean
from certctl.store.models import AcmeAccount, AcmeAuthorization, AcmeOrder, CertificateRecord

__all__ = [
    "ACCOUNT_STATUSES",
    "AccountSummary",
    "NotRevoked",
    "cut_off",
    "deactivate_account",
    "get_account",
    "hold_valid",
    "list_accounts",
]

ACCOUNT_STATUSES = ("valid", "deactivated")


@dataclass(frozen=True)
class AccountSummary:
    """An account as listed: its row's public columns and what it ordered (counts)."""

    id: str
    status: str
    contact: tuple[str, ...]
    created_at: datetime
    thumbprint: str  # RFC 7638 SHA-256 of the account key, base64url
    eab_key_id: str | None  # the External Account Binding key that bound it
    orders: int
    certificates: int  # its orders that were finalized (a certificate issued)
    # When it was deactivated; None while valid, or deactivated before certctl recorded it
    # with its audit event gone (migration 0032).
    deactivated_at: datetime | None


@dataclass(frozen=True)
class NotRevoked:
    """A certificate of the account a deactivation was asked to revoke and did not, and why."""

    id: str
    detail: str  # the refusal's, e.g. its key has more certificates than one revocation takes


def _summaries(session: Session, where: Any, limit: int | None = None) -> list[AccountSummary]:
    # The counts in the same query (a LEFT JOIN grouped by account): per account a query
    # each made a page of 500 cost 500 round trips. count(certificate_id) skips the NULLs.
    query = (
        select(
            AcmeAccount.id,
            AcmeAccount.status,
            AcmeAccount.contact,
            AcmeAccount.created_at,
            AcmeAccount.thumbprint,
            AcmeAccount.eab_key_id,
            func.count(AcmeOrder.id),
            func.count(AcmeOrder.certificate_id),
            AcmeAccount.deactivated_at,
        )
        .outerjoin(AcmeOrder, AcmeOrder.account_id == AcmeAccount.id)
        .where(where)
        .group_by(AcmeAccount.id)
        .order_by(AcmeAccount.id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        AccountSummary(
            id=row[0],
            status=row[1],
            contact=tuple(row[2] or ()),
            created_at=row[3],
            thumbprint=row[4],
            eab_key_id=row[5],
            orders=int(row[6]),
            certificates=int(row[7]),
            deactivated_at=row[8],
        )
        for row in session.execute(query)
    ]


def list_accounts(
    services: Services,
    caller: Principal,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[AccountSummary], str | None]:
    """Accounts newest first, keyset-paginated by id (ids sort by creation time).

    Raises:
        InvalidRequest: an unknown ``status``.
    """
    caller.require("cert.read")
    where: Any = AcmeAccount.id.is_not(None)
    if status is not None:
        if status not in ACCOUNT_STATUSES:
            hint = did_you_mean(status, ACCOUNT_STATUSES)
            meant = f"{hint} " if hint else ""
            raise InvalidRequest(
                f"{status[:40]}: unknown status ({meant}{', '.join(ACCOUNT_STATUSES)})"
            )
        where = where & (AcmeAccount.status == status)
    if cursor is not None:
        where = where & (AcmeAccount.id < cursor)
    with services.sessions() as session:
        rows = _summaries(session, where, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, rows[-1].id if more else None


def get_account(services: Services, caller: Principal, account_id: str) -> AccountSummary:
    """The account ``account_id``.

    Raises:
        NotFound: no such account.
    """
    caller.require("cert.read")
    return _summary(services, account_id)


def _summary(services: Services, account_id: str) -> AccountSummary:
    with services.sessions() as session:
        found = _summaries(session, AcmeAccount.id == account_id)
    if not found:
        raise NotFound(f"ACME account {account_id[:64]} not found")
    return found[0]


def cut_off(session: Session, account: AcmeAccount, now: datetime) -> str:
    """Deactivate ``account`` (locked by the caller) and cancel what it had under way.

    RFC 8555 7.3.6: the server "SHOULD cancel any pending operations authorized by the
    account's key, such as certificate orders": its unexpired pending authorizations become
    ``deactivated``, its pending and ready orders ``invalid`` (7.1.6). Valid authorizations
    and issued certificates stay as they are (the certificates are revoked through the API).

    Returns:
        What was cancelled, for the audit event's detail.
    """
    account.status = "deactivated"
    account.deactivated_at = now
    orders = select(AcmeOrder.id).where(AcmeOrder.account_id == account.id).scalar_subquery()
    authzs = session.execute(
        update(AcmeAuthorization)
        .where(
            AcmeAuthorization.order_id.in_(orders),
            AcmeAuthorization.status == "pending",
            AcmeAuthorization.expires > now,
        )
        .values(status="deactivated")
        .execution_options(synchronize_session=False)
    )
    cancelled = session.execute(
        update(AcmeOrder)
        .where(
            AcmeOrder.account_id == account.id,
            AcmeOrder.status.in_(("pending", "ready")),
            AcmeOrder.expires > now,
        )
        .values(status="invalid")
        .execution_options(synchronize_session=False)
    )
    return (
        f"{authzs.rowcount} pending authorization(s) deactivated, "  # type: ignore[attr-defined]
        f"{cancelled.rowcount} order(s) invalid"  # type: ignore[attr-defined]
    )


def hold_valid(session: Session, account_id: str) -> bool:
    """Whether ``account_id`` is still valid, its row held so until ``session`` commits.

    A request read its account valid (``acme.find_account``) outside its write transaction:
    a deactivation committed in between would be missed, and the cut-off account left with
    an order made after it. A conditional UPDATE, first in the transaction, closes that on
    both stores: PostgreSQL waits for a deactivation holding the row and sees its outcome
    (READ COMMITTED re-reads the row), and the deactivation waits for this one in turn;
    SQLite takes its write lock here, before anything is read (a SELECT would read outside
    the transaction pysqlite opens at the first write).
    """
    held = session.execute(
        update(AcmeAccount)
        .where(AcmeAccount.id == account_id, AcmeAccount.status == "valid")
        .values(status="valid")
        .execution_options(synchronize_session=False)
    )
    return bool(held.rowcount == 1)  # type: ignore[attr-defined]


def deactivate_account(
    services: Services,
    caller: Principal,
    account_id: str,
    *,
    revoke_certificates: bool = False,
    reason: str | None = None,
) -> tuple[AccountSummary, list[str], list[NotRevoked]]:
    """Deactivate the account ``account_id`` for good (RFC 8555 7.3.6), audited.

    An account deactivated already (by its holder, the operator, or its EAB key's revocation)
    is answered as it is, and the call audited with that said: deactivation is final, so
    asking again has nothing to change.

    ``revoke_certificates``: its unrevoked certificates are revoked too, each as
    ``POST /api/v1/certificates/{id}/revoke`` would (``reason``; audited, on the CRL), once
    the account is deactivated: were the store to fail midway, asking again revokes the rest.

    Returns:
        The account, the ids of the certificates revoked now, and those it was asked to
        revoke and did not, with why (the deactivation stays done).

    Raises:
        InvalidRequest: a ``reason`` without ``revoke_certificates``, or an unknown one
            (nothing changed).
        NotFound: no such account.
    """
    caller.require("cert.revoke")
    if reason is not None and not revoke_certificates:
        raise InvalidRequest("reason: given only with revoke_certificates")
    reason = check_reason(reason)  # before anything changes
    now = services.clock()
    with services.sessions.begin() as session:
        row = session.get(AcmeAccount, account_id, with_for_update=True)
        if row is None:
            raise NotFound(f"ACME account {account_id[:64]} not found")
        if row.status == "valid":
            detail = cut_off(session, row, now)
        else:
            detail = f"already {row.status}"
        record_call(session, caller, now, "acme.account.deactivate", account_id, detail)
    revoked, not_revoked = (
        _revoke_certificates(services, caller, account_id, reason)
        if revoke_certificates
        else ([], [])
    )
    # The answer shows what cert.revoke acted on: no cert.read needed to see it.
    return _summary(services, account_id), revoked, not_revoked


def _revoke_certificates(
    services: Services, caller: Principal, account_id: str, reason: str
) -> tuple[list[str], list[NotRevoked]]:
    """Revoke the unrevoked certificates of ``account_id``'s orders.

    With ``keyCompromise``, those revoked for another reason too: their reason becomes it.

    Returns:
        Their ids, and those keyCompromise revoked with them (the same key's others); and
        those refused, with the refusal's detail (a keyCompromise whose key has more
        certificates than one revocation takes), unless another caller revoked them meanwhile.
    """
    to_revoke = CertificateRecord.status != "revoked"
    if reason == "keyCompromise":
        # As the certificate route: one revoked before for another reason gets keyCompromise
        # (and the rest of its key is revoked), or the CRL kept saying its key was never
        # compromised when the operator, learning it was, asked again.
        to_revoke = to_revoke | CertificateRecord.revocation_reason.is_distinct_from(
            "keyCompromise"
        )
    with services.sessions() as session:
        ids = list(
            session.scalars(
                select(CertificateRecord.id)
                .join(AcmeOrder, AcmeOrder.certificate_id == CertificateRecord.id)
                .where(AcmeOrder.account_id == account_id, to_revoke)
                .order_by(CertificateRecord.id)
            )
        )
    revoked: list[str] = []
    not_revoked: list[NotRevoked] = []
    for cert_id in ids:
        if cert_id in revoked:
            continue  # revoked with an earlier one of the same key (keyCompromise)
        try:
            done = revoke_certificate(services, caller, cert_id, reason)
        except Conflict as exc:
            # Quiet only when another caller did what was asked meanwhile: a Conflict is also
            # a keyCompromise refused whole (too many certificates of its key), and skipping
            # that left a certificate of a leaked key valid with nothing said.
            if not _revoked_as_asked(services, cert_id, reason):
                not_revoked.append(NotRevoked(cert_id, exc.detail))
            continue
        revoked += [done.certificate.id, *done.also_revoked]
    return revoked, not_revoked


def _revoked_as_asked(services: Services, cert_id: str, reason: str) -> bool:
    """Whether ``cert_id`` is revoked now as a revocation for ``reason`` would leave it."""
    with services.sessions() as session:
        row = session.get(CertificateRecord, cert_id)
        if row is None or row.status != "revoked":
            return False
        return reason != "keyCompromise" or row.revocation_reason == "keyCompromise"
