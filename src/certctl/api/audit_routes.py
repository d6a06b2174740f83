"""The audit log: ``GET /api/v1/audit``."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from certctl.api import schemas
from certctl.api._common import ApiRoute, listed
from certctl.api._common import json_response as _json
from certctl.api._common import page_limit as _limit
from certctl.auth.apikeys import check_audit_credential
from certctl.errors import InvalidRequest
from certctl.services import audit
from certctl.services.context import Principal

__all__ = ["AUDIT_ROUTES"]


def _instant(name: str, value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        # An unencoded "+" in a query string arrives as a space: say how to send the zone.
        raise InvalidRequest(
            f"{name}={value[:40]}: not an ISO 8601 time (2026-12-05T15:00:00Z; a +01:00 "
            "offset must be sent as %2B01:00)"
        ) from None
    # A time without a zone is UTC, as the audit log's own times are.
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00+01:00 is before datetime's first UTC instant: a 400, not a 500.
        raise InvalidRequest(f"{name}={value[:40]}: out of range") from None


def _filter(request: Request) -> audit.AuditFilter | None:
    params = request.query_params
    if not any(name in params for name in _FILTERS):
        return None
    for name in _FILTERS:
        # Empty is no filter to guess at (?actor=$WHO with the variable unset).
        if params.get(name) == "":
            raise InvalidRequest(f"{name}: empty (leave it out for no filter)")
    since, until = params.get("since"), params.get("until")
    after = _instant("since", since) if since else None
    before = _instant("until", until) if until else None
    if after is not None and before is not None and after >= before:
        # Swapped, or a typo: no event can match, and "no events" read as an answer.
        raise InvalidRequest(
            f"since={(since or '')[:40]} is not before until={(until or '')[:40]}: "
            "no event can match (since is inclusive, until exclusive)"
        )
    credential = params.get("credential")
    return audit.AuditFilter(
        actor=params.get("actor"),
        credential=check_audit_credential(credential) if credential else None,
        action=params.get("action"),
        outcome=params.get("outcome"),
        target=params.get("target"),
        since=after,
        until=before,
    )


_FILTERS = ("actor", "credential", "action", "outcome", "target", "since", "until")


async def list_audit(request: Request, principal: Principal | None) -> Response:
    cursor = request.query_params.get("cursor")
    # Compared with the ids as a 64-bit integer (services.audit.list_audit): anything longer
    # would overflow it.
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise InvalidRequest("cursor: not a cursor returned by this API")
    limit = _limit(request)

    after = int(cursor) if cursor else None
    where = _filter(request)
    rows = await listed(
        request, lambda s: audit.list_audit(s, limit=limit + 1, after=after, where=where)
    )
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return _json(
        {"items": [schemas.audit_json(r) for r in rows[:limit]], "next_cursor": next_cursor}
    )


AUDIT_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/api/v1/audit", "audit.read", list_audit, "Audit log"),
)
