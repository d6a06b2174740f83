"""ACME accounts for operators: ``/api/v1/acme/accounts`` (list, get, deactivate).

Authenticated API routes, unlike ``/acme/`` (the accounts' own protocol). Permissions follow
the EAB keys' and the certificates': reading takes ``cert.read``; deactivating, which stops an
account's ordering and so its certificates' renewal, takes ``cert.revoke`` (revoking an EAB
key, which deactivates its account as well, takes it too).
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from certctl.api import schemas
from certctl.api._common import ApiRoute, in_list_thread, in_write_thread, optional_body
from certctl.api._common import caller_of as _caller
from certctl.api._common import json_response as _json
from certctl.api._common import page_limit as _limit
from certctl.api._common import services_of as _services
from certctl.errors import InvalidRequest
from certctl.services import acme_accounts
from certctl.services.acme_accounts import AccountSummary
from certctl.services.context import Principal

__all__ = ["ACME_ACCOUNT_ROUTES", "account_json"]

_PATH = "/api/v1/acme/accounts"


def account_json(account: AccountSummary) -> dict[str, Any]:
    """An ACME account as the API shows it (never its key: the thumbprint names it)."""
    return {
        "id": account.id,
        "status": account.status,
        "contact": list(account.contact),
        "created_at": account.created_at.isoformat(),
        "thumbprint": account.thumbprint,
        "eab_key_id": account.eab_key_id,
        "orders": account.orders,
        "certificates": account.certificates,
        "deactivated_at": (
            account.deactivated_at.isoformat() if account.deactivated_at is not None else None
        ),
    }


async def list_accounts(request: Request, principal: Principal | None) -> Response:
    params = request.query_params  # names checked against the route's OpenAPI parameters
    cursor = params.get("cursor")
    # Ids are services.issuance.new_id's 24 hex digits: anything else came from elsewhere.
    if cursor is not None and (
        len(cursor) != 24 or any(c not in "0123456789abcdef" for c in cursor)
    ):
        raise InvalidRequest("cursor: not a cursor returned by this API")
    status = params.get("status")
    if status == "":
        # ?status=$STATUS with the variable unset: no filter to guess at (as certificates).
        raise InvalidRequest("status: empty (leave it out for no filter)")
    listing = functools.partial(
        acme_accounts.list_accounts,
        _services(request),
        _caller(principal),
        status=status,
        limit=_limit(request),
        cursor=cursor,
    )
    rows, next_cursor = await in_list_thread(request, listing)
    return _json({"items": [account_json(r) for r in rows], "next_cursor": next_cursor})


async def get_account(request: Request, principal: Principal | None) -> Response:
    account = acme_accounts.get_account(
        _services(request), _caller(principal), request.path_params["id"]
    )
    return _json(account_json(account))


async def deactivate_account(request: Request, principal: Principal | None) -> Response:
    body = await optional_body(request, schemas.AcmeAccountDeactivate)
    account, revoked, not_revoked = await in_write_thread(
        request,
        functools.partial(
            acme_accounts.deactivate_account,
            revoke_certificates=body.revoke_certificates,
            reason=body.reason,
        ),
        _services(request),
        _caller(principal),
        request.path_params["id"],
    )
    return _json(
        {
            **account_json(account),
            "revoked_certificates": revoked,
            "not_revoked": [{"id": n.id, "detail": n.detail} for n in not_revoked],
        }
    )


ACME_ACCOUNT_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", _PATH, "cert.read", list_accounts, "List ACME accounts, newest first"),
    ApiRoute("GET", _PATH + "/{id}", "cert.read", get_account, "Get an ACME account"),
    ApiRoute(
        "POST",
        _PATH + "/{id}/deactivate",
        "cert.revoke",
        deactivate_account,
        "Deactivate an ACME account for good (RFC 8555 7.3.6): its next request is refused, "
        "its pending authorizations and orders cancelled; an account deactivated already is "
        "answered as it is. revoke_certificates: its certificates too",
        schemas.AcmeAccountDeactivate,
        action="acme.account.deactivate",
    ),
)
