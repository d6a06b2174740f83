"""The audit log: every mutation and every authentication failure, never a secret."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Text, func, literal, literal_column, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from certctl.services.context import Principal
from certctl.store.db import contains_pattern, unicode_lower, value_refusal
from certctl.store.models import AuditEvent

__all__ = ["AuditFilter", "event_values", "list_audit", "record", "record_refusal"]


def record(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str = "",
    outcome: str = "success",
    source: str = "",
    detail: str = "",
    credential: str = "",
) -> None:
    """Add an audit event to ``session`` (committed with the caller's transaction)."""
    session.add(
        AuditEvent(
            **event_values(
                at=at,
                actor=actor,
                action=action,
                target=target,
                outcome=outcome,
                source=source,
                detail=detail,
                credential=credential,
            )
        )
    )


def record_refusal(
    sessions: sessionmaker[Session],
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    source: str,
    detail: str,
    credential: str,
) -> None:
    r"""Record a refused request (401, 403) in a transaction of its own.

    A database whose encoding has no byte for a character of the path or the detail (a
    LATIN1 one given ``/actors/日``) refused the row: the refusal answered 400 instead, and
    the attempt went unrecorded. Then written again with those characters escaped (``\u65e5``).
    """
    values = {"target": target, "detail": detail, "actor": actor, "credential": credential}
    try:
        with sessions.begin() as session:
            record(session, at=at, action=action, outcome=outcome, source=source, **values)
    except DBAPIError as exc:
        if value_refusal(exc) is None:
            raise
        escaped = {
            name: value.encode("ascii", "backslashreplace").decode()
            for name, value in values.items()
        }
        with sessions.begin() as session:
            record(session, at=at, action=action, outcome=outcome, source=source, **escaped)


def event_values(
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str = "",
    outcome: str = "success",
    source: str = "",
    detail: str = "",
    credential: str = "",
) -> dict[str, Any]:
    """The columns of an audit event, for a caller that inserts it with other rows later.

    ``credential``: which of the actor's credentials made the call (``apikey <key id>``);
    empty when the actor says it all (a client certificate's subject, a ServiceAccount,
    ``system``).
    """
    return {
        "at": at,
        "actor": actor or "anonymous",
        "action": action,
        "target": _fit(target, 200),
        "outcome": outcome,
        "source": _fit(source, 64),
        "detail": detail,
        "credential": _fit(credential, 64),
    }


def _fit(value: str, length: int) -> str:
    # At most ``length`` characters and UTF-8 bytes: a SQL_ASCII PostgreSQL database counts
    # the bytes of a VARCHAR. Cut by characters alone, a refused request's path of 200
    # characters with accents made the audit write fail: a 500 instead of the 401, and the
    # attempt never recorded.
    cut = value[:length]
    if len(cut.encode(errors="surrogatepass")) <= length:
        return cut
    return cut.encode(errors="surrogatepass")[:length].decode(errors="ignore")


def record_call(
    session: Session,
    caller: Principal,
    at: datetime,
    action: str,
    target: str,
    detail: str = "",
) -> None:
    """Record a successful mutation made by ``caller``."""
    record(
        session,
        at=at,
        actor=caller.actor_id,
        action=action,
        target=target,
        source=caller.source,
        credential=caller.credential,
        detail=detail,
    )


# How much of ``actor`` (TEXT, any length) its index holds (migration 0026): a PostgreSQL
# B-tree entry cannot pass 2,704 bytes, and a longer client certificate subject would have
# made every audited call of its actor fail.
_ACTOR_INDEXED = 200


def _actor_prefix() -> ColumnElement[str]:
    """``substr(actor, 1, 200)``, as migration 0026 indexes it.

    Literals, not bound parameters: SQLite and PostgreSQL match an index's expression only
    to the same expression, and ``substr(actor, ?, ?)`` is not that.
    """
    return func.substr(AuditEvent.actor, literal_column("1"), literal_column(str(_ACTOR_INDEXED)))


def _actor_is(actor: str) -> list[ColumnElement[bool]]:
    # The indexed first 200 characters, never "actor = ?" itself: given that, SQLite
    # substitutes the value into substr(actor, …) (constant propagation), which then matches
    # no index, and scanned the table. Shorter than 200 bytes (so than 200 characters too),
    # the prefix is the whole actor: one condition, whose statistics PostgreSQL has (0026's
    # ANALYZE); a second one it would take as independent of it, and think a frequent actor
    # rare.
    if len(actor.encode(errors="surrogatepass")) < _ACTOR_INDEXED:
        return [_actor_prefix() == actor]
    # Cut by the database as it cut the stored actors: substr counts characters on SQLite and
    # in a UTF-8 PostgreSQL database, bytes in a SQL_ASCII one, where a prefix cut by Python
    # was another and an actor with accents past 200 bytes was never found.
    value = literal(actor, Text)
    length: ColumnElement[int] = literal_column(str(_ACTOR_INDEXED))
    start: ColumnElement[int] = literal_column(str(_ACTOR_INDEXED + 1))
    return [
        _actor_prefix() == func.substr(value, literal_column("1"), length),
        func.substr(AuditEvent.actor, start) == func.substr(value, start),
    ]


@dataclass(frozen=True)
class AuditFilter:
    """Which audit events a listing returns; None is no filter.

    ``actor``, ``credential``, ``action`` and ``outcome`` match exactly; ``target`` is a
    substring, in either case (an id appears in the targets of every event about it:
    ``<cert id> serial … renewing <id>``);
    ``since`` is inclusive, ``until`` exclusive, both aware datetimes.
    """

    actor: str | None = None
    credential: str | None = None
    action: str | None = None
    outcome: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_audit(
    session: Session, *, limit: int, after: int | None, where: AuditFilter | None = None
) -> list[AuditEvent]:
    """Audit events newest first, keyset-paginated by id, matching ``where``."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if after is not None:
        # Sent as a 64-bit value: PostgreSQL's ids are 32-bit, and a cursor beyond them bound
        # as one failed ("integer out of range"); compared as 64-bit, it is past every id.
        query = query.where(AuditEvent.id < literal(after, BigInteger))
    if where is not None:
        if where.actor is not None:
            query = query.where(*_actor_is(where.actor))
        if where.credential is not None:
            query = query.where(AuditEvent.credential == where.credential)
        if where.action is not None:
            query = query.where(AuditEvent.action == where.action)
        if where.outcome is not None:
            outcome: ColumnElement[str] = AuditEvent.outcome.expression
            if any(f is not None for f in (where.actor, where.credential, where.action)):
                # Checked on the rows the other filter's index finds: SQLite plans without
                # statistics and took the outcome's index for ?actor=<rare>&outcome=success,
                # reading every success (60 ms at 200,000 events, from 25 ms by the table).
                outcome = outcome.concat("")
            query = query.where(outcome == where.outcome)
        if where.target is not None:
            # In either case on every backend, as `certs list -q`: SQLite's LIKE folds ASCII
            # letters and PostgreSQL's none, so an upper-case serial (openssl x509 -serial)
            # found its events on SQLite only. A "_" or "%" is itself, not a wildcard.
            target = where.target
            lower = func.lower if target.isascii() else unicode_lower
            query = query.where(
                lower(AuditEvent.target).like(contains_pattern(target.lower()), escape="\\")
            )
        if where.since is not None:
            query = query.where(AuditEvent.at >= where.since)
        if where.until is not None:
            query = query.where(AuditEvent.at < where.until)
    return list(session.scalars(query))
