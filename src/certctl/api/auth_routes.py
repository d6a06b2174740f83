"""Roles, actors, API keys and whoami: ``/api/v1/auth`` (DESIGN §4)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from certctl.api import schemas
from certctl.api._common import (
    AUTHENTICATED,
    ApiRoute,
    in_write_thread,
    json_bytes,
    listed,
    utc_expiry,
)
from certctl.api._common import caller_of as _caller
from certctl.api._common import created as _created
from certctl.api._common import json_response as _json
from certctl.api._common import not_found as _not_found
from certctl.api._common import read_body as _body
from certctl.api._common import services_of as _services
from certctl.auth.permissions import PERMISSIONS
from certctl.errors import InvalidRequest
from certctl.services import actors, api_keys, roles
from certctl.services.context import Principal
from certctl.store.models import Actor, ApiKey, Role

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["AUTH_ROUTES"]


# Rendered whoami answers (body and headers) by identity: the same few principals ask again
# and again, and sorting and encoding ~20 permissions cost more than the rest of the handler.
_WhoamiKey = tuple[str, tuple[str, ...], frozenset[str], str, tuple[str, ...]]
_WhoamiAnswer = tuple[bytes, tuple[tuple[bytes, bytes], ...]]
_WHOAMI_ANSWERS: dict[_WhoamiKey, _WhoamiAnswer] = {}
_WHOAMI_MAX = 1024
# The last principal answered and its answer. The key cache hands out the same frozen
# Principal for a key (per source), so most requests are answered after one identity test;
# holding the object keeps its id from being reused by another.
_whoami_last: tuple[Principal, _WhoamiAnswer] | None = None


class _Rendered(Response):
    """A response whose body and headers were rendered before (``init_headers`` skipped)."""

    def __init__(self, body: bytes, raw_headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        # A fresh list per response: middleware may add headers to it.
        self.raw_headers = list(raw_headers)


def _whoami_answer(p: Principal) -> _WhoamiAnswer:
    key = (p.actor_id, p.roles, p.permissions, p.auth_method, p.missing_roles)
    answer = _WHOAMI_ANSWERS.get(key)
    if answer is None:
        body = json_bytes(
            {
                "actor_id": p.actor_id,
                "roles": list(p.roles),
                "permissions": sorted(p.permissions),
                "auth_method": p.auth_method,
                # A client-cert mapping's roles that are no role (a typo): "roles" lists
                # them as mapped, and only this said they grant nothing.
                "missing_roles": list(p.missing_roles),
            }
        )
        answer = (body, tuple(Response(body, media_type="application/json").raw_headers))
        if len(_WHOAMI_ANSWERS) >= _WHOAMI_MAX:
            _WHOAMI_ANSWERS.clear()
        _WHOAMI_ANSWERS[key] = answer
    return answer


async def whoami(request: Request, principal: Principal | None) -> Response:
    global _whoami_last
    p = _caller(principal)
    last = _whoami_last
    if last is not None and last[0] is p:
        answer = last[1]
    else:
        answer = _whoami_answer(p)
        _whoami_last = (p, answer)
    return _Rendered(*answer)


async def list_permissions(request: Request, principal: Principal | None) -> Response:
    # One page, but the shape of every list: a client pages them all alike (DESIGN §4).
    return _json({"items": list(PERMISSIONS), "next_cursor": None})


def _role_json(role: Role) -> dict[str, Any]:
    return {
        "id": role.id,
        "name": role.name,
        "permissions": role.permissions,
        "builtin": role.builtin,
        "constraints": role.constraints,
    }


async def list_roles(request: Request, principal: Principal | None) -> Response:
    roles = await listed(request, lambda s: s.query(Role).order_by(Role.id).all())
    return _json({"items": [_role_json(r) for r in roles], "next_cursor": None})


async def get_role(request: Request, principal: Principal | None) -> Response:
    with _services(request).sessions() as session:
        role = session.get(Role, request.path_params["id"])
    if role is None:
        raise _not_found("role", request.path_params["id"])
    return _json(_role_json(role))


async def create_role(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.RoleCreate)
    services, caller = _services(request), _caller(principal)
    constraints = body.constraints.stored() if body.constraints is not None else None
    role = await in_write_thread(
        request,
        roles.create_role,
        services,
        caller,
        body.id,
        body.name,
        body.permissions,
        constraints,
    )
    return _created(_role_json(role), "/api/v1/auth/roles", role.id)


async def update_role(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.RoleUpdate)
    constraints = body.constraints.stored() if body.constraints is not None else None
    role = await in_write_thread(
        request,
        functools.partial(
            roles.update_role, set_constraints="constraints" in body.model_fields_set
        ),
        _services(request),
        _caller(principal),
        request.path_params["id"],
        body.name,
        body.permissions,
        constraints,
    )
    return _json(_role_json(role))


async def delete_role(request: Request, principal: Principal | None) -> Response:
    await in_write_thread(
        request,
        roles.delete_role,
        _services(request),
        _caller(principal),
        request.path_params["id"],
    )
    return Response(status_code=204)


def _actor_json(actor: Actor) -> dict[str, Any]:
    return {
        "id": actor.id,
        "name": actor.name,
        "roles": actor.roles,
        "created_at": actor.created_at.isoformat(),
    }


async def list_actors(request: Request, principal: Principal | None) -> Response:
    actors = await listed(request, lambda s: s.query(Actor).order_by(Actor.id).all())
    return _json({"items": [_actor_json(a) for a in actors], "next_cursor": None})


async def get_actor(request: Request, principal: Principal | None) -> Response:
    with _services(request).sessions() as session:
        actor = session.get(Actor, request.path_params["id"])
    if actor is None:
        raise _not_found("actor", request.path_params["id"])
    return _json(_actor_json(actor))


async def create_actor(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.ActorCreate)
    actor = await in_write_thread(
        request,
        actors.create_actor,
        _services(request),
        _caller(principal),
        body.id,
        body.name,
        body.roles,
    )
    return _created(_actor_json(actor), "/api/v1/auth/actors", actor.id)


async def patch_actor(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.ActorPatch)
    actor = await in_write_thread(
        request,
        actors.update_actor,
        _services(request),
        _caller(principal),
        request.path_params["id"],
        body.name,
        body.roles,
    )
    return _json(_actor_json(actor))


async def delete_actor(request: Request, principal: Principal | None) -> Response:
    await in_write_thread(
        request,
        actors.delete_actor,
        _services(request),
        _caller(principal),
        request.path_params["id"],
    )
    return Response(status_code=204)


async def list_apikeys(request: Request, principal: Principal | None) -> Response:
    actor = request.query_params.get("actor_id")
    if actor == "":  # not "every actor": a script whose variable was unset would see all keys
        raise InvalidRequest("actor_id: empty (leave it out for every actor's keys)")

    def read(session: Session) -> list[ApiKey]:
        q = session.query(ApiKey).order_by(ApiKey.created_at)
        if actor is not None:
            q = q.filter(ApiKey.actor_id == actor)
        return q.all()

    rows = await listed(request, read)
    return _json({"items": [schemas.apikey_json(r) for r in rows], "next_cursor": None})


async def get_apikey(request: Request, principal: Principal | None) -> Response:
    with _services(request).sessions() as session:
        row = session.get(ApiKey, request.path_params["id"])
    if row is None:
        raise _not_found("API key", request.path_params["id"])
    return _json(schemas.apikey_json(row))


async def create_apikey(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.ApiKeyCreate)
    expires = utc_expiry(body.expires_at)
    result = await in_write_thread(
        request,
        api_keys.mint_api_key,
        _services(request),
        _caller(principal),
        body.actor_id,
        body.name,
        expires,
    )
    data = schemas.apikey_json(result.row)
    data["key_value"] = result.minted.value  # shown once, here only
    data.pop("last_used_at")
    data.pop("revoked_at")
    return _created(data, "/api/v1/auth/apikeys", result.row.id)


async def revoke_apikey(request: Request, principal: Principal | None) -> Response:
    row = await in_write_thread(
        request,
        api_keys.revoke_api_key,
        _services(request),
        _caller(principal),
        request.path_params["id"],
    )
    return _json(schemas.apikey_json(row))


AUTH_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/api/v1/auth/whoami", AUTHENTICATED, whoami, "Who am I"),
    ApiRoute(
        "GET",
        "/api/v1/auth/permissions",
        "auth.role.read",
        list_permissions,
        "Permission catalogue",
    ),
    ApiRoute("GET", "/api/v1/auth/roles", "auth.role.read", list_roles, "List roles"),
    ApiRoute(
        "POST",
        "/api/v1/auth/roles",
        "auth.role.create",
        create_role,
        "Create a role",
        schemas.RoleCreate,
        201,
        action="role.create",
    ),
    ApiRoute("GET", "/api/v1/auth/roles/{id}", "auth.role.read", get_role, "Get a role"),
    ApiRoute(
        "PUT",
        "/api/v1/auth/roles/{id}",
        "auth.role.edit",
        update_role,
        "Update a role",
        schemas.RoleUpdate,
        action="role.edit",
    ),
    ApiRoute(
        "DELETE",
        "/api/v1/auth/roles/{id}",
        "auth.role.delete",
        delete_role,
        "Delete a role",
        None,
        204,
        action="role.delete",
    ),
    ApiRoute("GET", "/api/v1/auth/actors", "auth.actor.read", list_actors, "List actors"),
    ApiRoute(
        "POST",
        "/api/v1/auth/actors",
        "auth.actor.create",
        create_actor,
        "Create an actor",
        schemas.ActorCreate,
        201,
        action="actor.create",
    ),
    ApiRoute("GET", "/api/v1/auth/actors/{id}", "auth.actor.read", get_actor, "Get an actor"),
    ApiRoute(
        "PATCH",
        "/api/v1/auth/actors/{id}",
        "auth.actor.edit",
        patch_actor,
        "Update an actor",
        schemas.ActorPatch,
        action="actor.edit",
    ),
    ApiRoute(
        "DELETE",
        "/api/v1/auth/actors/{id}",
        "auth.actor.delete",
        delete_actor,
        "Delete an actor",
        None,
        204,
        action="actor.delete",
    ),
    ApiRoute("GET", "/api/v1/auth/apikeys", "auth.apikey.read", list_apikeys, "List API keys"),
    ApiRoute(
        "POST",
        "/api/v1/auth/apikeys",
        "auth.apikey.create",
        create_apikey,
        "Mint an API key (key_value shown once)",
        schemas.ApiKeyCreate,
        201,
        action="apikey.create",
    ),
    ApiRoute("GET", "/api/v1/auth/apikeys/{id}", "auth.apikey.read", get_apikey, "Get an API key"),
    ApiRoute(
        "DELETE",
        "/api/v1/auth/apikeys/{id}",
        "auth.apikey.revoke",
        revoke_apikey,
        "Revoke an API key",
        action="apikey.revoke",
    ),
)
