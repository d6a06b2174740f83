"""ACME External Account Binding keys: ``/api/v1/acme/eab-keys`` (RFC 8555 7.3.4).

Authenticated API routes, unlike ``/acme/``: minting a key is how a certctl caller lets an
ACME client make an account (``acme.external-account-required``). Permissions: minting takes
``cert.issue`` (the key's holder gets certificates of ``acme.issuer`` through ACME, as the
caller could through the API), listing ``cert.read``, revoking ``cert.revoke`` (which also
deactivates the account the key bound: ``services.acme_accounts``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from certctl.api import schemas
from certctl.api._common import ApiRoute, in_write_thread, listed, utc_expiry
from certctl.api._common import caller_of as _caller
from certctl.api._common import created as _created
from certctl.api._common import json_response as _json
from certctl.api._common import not_found as _not_found
from certctl.api._common import read_body as _body
from certctl.api._common import services_of as _services
from certctl.services import acme_eab
from certctl.services.context import Principal
from certctl.store.models import AcmeEabKey

__all__ = ["ACME_EAB_ROUTES"]

_PATH = "/api/v1/acme/eab-keys"


async def list_eab_keys(request: Request, principal: Principal | None) -> Response:
    rows = await listed(request, acme_eab.list_eab_keys)
    return _json({"items": [schemas.eab_key_json(r) for r in rows], "next_cursor": None})


async def get_eab_key(request: Request, principal: Principal | None) -> Response:
    with _services(request).sessions() as session:
        row = session.get(AcmeEabKey, request.path_params["id"])
    if row is None:
        raise _not_found("EAB key", request.path_params["id"])
    return _json(schemas.eab_key_json(row))


async def create_eab_key(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.AcmeEabCreate)
    expires = utc_expiry(body.expires_at)
    minted = await in_write_thread(
        request, acme_eab.mint_eab_key, _services(request), _caller(principal), body.name, expires
    )
    data = schemas.eab_key_json(minted.row)
    data["hmac_key"] = minted.hmac_key  # shown once, here only
    for unset in ("account_id", "used_at", "revoked_at"):
        data.pop(unset)
    return _created(data, _PATH, minted.row.id)


async def revoke_eab_key(request: Request, principal: Principal | None) -> Response:
    row = await in_write_thread(
        request,
        acme_eab.revoke_eab_key,
        _services(request),
        _caller(principal),
        request.path_params["id"],
    )
    return _json(schemas.eab_key_json(row))


ACME_EAB_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", _PATH, "cert.read", list_eab_keys, "List ACME EAB keys (no HMAC key)"),
    ApiRoute(
        "POST",
        _PATH,
        "cert.issue",
        create_eab_key,
        "Mint an ACME External Account Binding key (hmac_key shown once)",
        schemas.AcmeEabCreate,
        201,
        action="acme.eab.create",
    ),
    ApiRoute("GET", _PATH + "/{id}", "cert.read", get_eab_key, "Get an ACME EAB key (no HMAC key)"),
    ApiRoute(
        "DELETE",
        _PATH + "/{id}",
        "cert.revoke",
        revoke_eab_key,
        "Revoke an ACME EAB key; the account it bound is deactivated",
        action="acme.eab.revoke",
    ),
)
