"""The audit log: ``GET /api/v1/audit``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from certctl.api import schemas
from certctl.api._common import ApiRoute, listed
from certctl.api._common import json_response as _json
from certctl.api._common import page_limit as _limit
from certctl.errors import InvalidRequest
from certctl.services import audit
from certctl.services.context import Principal

__all__ = ["AUDIT_ROUTES"]


async def list_audit(request: Request, principal: Principal | None) -> Response:
    cursor = request.query_params.get("cursor")
    # Audit ids are 64-bit integers: anything longer would overflow the database parameter.
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise InvalidRequest("cursor: not a cursor returned by this API")
    limit = _limit(request)

    after = int(cursor) if cursor else None
    rows = await listed(request, lambda s: audit.list_audit(s, limit=limit + 1, after=after))
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return _json(
        {"items": [schemas.audit_json(r) for r in rows[:limit]], "next_cursor": next_cursor}
    )


AUDIT_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/api/v1/audit", "audit.read", list_audit, "Audit log"),
)
