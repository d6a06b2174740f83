"""Managed TLS services: ``/api/v1/services`` (DESIGN §4, §7)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from certctl.api._common import (
    ApiRoute,
    caller_of,
    created,
    in_list_thread,
    in_write_thread,
    json_response,
    read_body,
    services_of,
)
from certctl.errors import InvalidRequest, NotFound
from certctl.pki import display_dn_text
from certctl.services import service_clients, service_delivery, service_specs, service_status
from certctl.services.context import Principal, Services
from certctl.services.tls_spec import TLSServiceSpec
from certctl.store.models import ManagedService, ServiceClient

__all__ = ["SERVICE_ROUTES", "ServiceClientAdd"]


class ServiceClientAdd(BaseModel):
    """``POST /api/v1/services/{name}/clients``: PEM certificate(s) to trust."""

    model_config = ConfigDict(extra="forbid")

    certificate_pem: str = Field(min_length=1, max_length=200_000)


class _AnyDocument(BaseModel):
    """A TLSService document; validated by the spec model after parsing."""

    model_config = ConfigDict(extra="allow")


def _wake(request: Request) -> None:
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.wake()


async def list_services(request: Request, principal: Principal | None) -> Response:
    rows = await in_list_thread(
        request, service_specs.list_services, services_of(request), caller_of(principal)
    )
    return json_response(
        {"items": [service_status.service_json(r) for r in rows], "next_cursor": None}
    )


async def get_service(request: Request, principal: Principal | None) -> Response:
    row = service_specs.get_service(
        services_of(request), caller_of(principal), request.path_params["name"]
    )
    return json_response(service_status.service_json(row))


async def put_service(request: Request, principal: Principal | None) -> Response:
    # Given once at most: the router refuses a repeated parameter ("dry_run=true&dry_run=false"
    # read as its last value turned a check into a write).
    dry_run = request.query_params.get("dry_run", "false")
    if dry_run not in ("true", "false"):
        raise InvalidRequest(f"dry_run={dry_run[:40]}: must be true or false")
    body = await read_body(request, _AnyDocument)
    services, caller = services_of(request), caller_of(principal)
    name, policy = request.path_params["name"], request.app.state.service_policy

    def put() -> tuple[bool, ManagedService]:
        # Not get_service: that needs service.read, and this route only needs service.edit.
        with services.sessions() as session:
            existed = session.get(ManagedService, name) is not None
        return existed, service_specs.put_service(
            services, caller, name, body.model_dump(), policy, dry_run=dry_run == "true"
        )

    # Writes wait for SQLite's write lock: in a worker thread, as every mutating route.
    existed, row = await in_write_thread(request, put)
    if dry_run == "false":
        _wake(request)
    # A dry run answers as the write would (201: it would create the service).
    if existed:
        return json_response(service_status.service_json(row))
    return created(service_status.service_json(row), "/api/v1/services", row.name)


async def delete_service(request: Request, principal: Principal | None) -> Response:
    await in_write_thread(
        request,
        service_specs.delete_service,
        services_of(request),
        caller_of(principal),
        request.path_params["name"],
    )
    return Response(status_code=204)


async def _service_action(
    request: Request,
    principal: Principal | None,
    action: Callable[[Services, Principal, str], ManagedService],
    warnings: Callable[[ManagedService], list[str]] | None = None,
) -> Response:
    """Mark service ``{name}`` for work (``action``), wake the reconciler: 202 and the service."""
    row = await in_write_thread(
        request, action, services_of(request), caller_of(principal), request.path_params["name"]
    )
    _wake(request)
    body = service_status.service_json(row)
    if warnings is not None and (found := warnings(row)):
        body["warnings"] = found
    return json_response(body, 202)


async def renew_service(request: Request, principal: Principal | None) -> Response:
    return await _service_action(
        request, principal, service_specs.request_renewal, service_specs.renewal_warnings
    )


async def drop_retired_ca(request: Request, principal: Principal | None) -> Response:
    return await _service_action(request, principal, service_specs.drop_retired_ca)


async def list_clients(request: Request, principal: Principal | None) -> Response:
    from sqlalchemy import select

    services = services_of(request)
    name = request.path_params["name"]
    service_specs.get_service(services, caller_of(principal), name)
    with services.sessions() as session:
        rows = session.scalars(
            select(ServiceClient)
            .where(ServiceClient.service == name)
            .order_by(ServiceClient.fingerprint)
        ).all()
    return json_response({"items": [_client_json(c) for c in rows], "next_cursor": None})


def _client_json(client: Any) -> dict[str, Any]:
    return {
        "fingerprint": client.fingerprint,
        "subject": display_dn_text(client.subject),  # named as certificates' subjects are
        "is_ca": client.is_ca,
        "added_at": client.added_at.isoformat(),
    }


async def add_client(request: Request, principal: Principal | None) -> Response:
    request_body = await read_body(request, ServiceClientAdd)
    services, caller = services_of(request), caller_of(principal)
    name = request.path_params["name"]

    def add() -> tuple[list[ServiceClient], list[str]]:
        added = service_clients.add_client(services, caller, name, request_body.certificate_pem)
        return added, service_clients.client_trust_warnings(services, name)

    added, warnings = await in_write_thread(request, add)
    _wake(request)
    body = {"items": [_client_json(c) for c in added], "warnings": warnings}
    if not added:
        # Every certificate was trusted already: nothing was created, so no 201 and no
        # Location (RFC 9110 15.3.2); the empty items say so too.
        return json_response(body)
    # The clients added have no URL of their own to GET (there may be several, one per
    # certificate in the PEM): Location names the list that shows them.
    return created(body, f"/api/v1/services/{quote(name, safe='')}/clients")


async def remove_client(request: Request, principal: Principal | None) -> Response:
    await in_write_thread(
        request,
        service_clients.remove_client,
        services_of(request),
        caller_of(principal),
        request.path_params["name"],
        request.path_params["fingerprint"],
    )
    _wake(request)
    return Response(status_code=204)


# The outputs GET …/outputs/{output} serves (the OpenAPI document lists them as its enum).
PUBLIC_OUTPUTS = ("certs-public", "client-trust")


async def get_output(request: Request, principal: Principal | None) -> Response:
    """The public outputs only; keys never leave through the API."""
    services = services_of(request)
    name, output = request.path_params["name"], request.path_params["output"]
    if output not in PUBLIC_OUTPUTS:
        raise InvalidRequest(
            f"{output}: only {', '.join(sorted(PUBLIC_OUTPUTS))} can be read through the API"
        )
    row = service_specs.get_service(services, caller_of(principal), name)
    # In a listing thread: bounded, as every thread holding a pooled connection is.
    outputs = await in_list_thread(request, service_delivery.outputs_for, services, row)
    if output not in outputs:
        raise NotFound(service_delivery.why_no_output(row, output))
    files = {k: v.decode() for k, v in outputs[output].items()}
    return Response(
        json.dumps({"name": f"{name}-http-{output}", "data": files}), media_type="application/json"
    )


SERVICE_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/api/v1/services", "service.read", list_services, "List services"),
    ApiRoute(
        "GET",
        "/api/v1/services/{name}",
        "service.read",
        get_service,
        "Get a service: spec and status",
    ),
    ApiRoute(
        "PUT",
        "/api/v1/services/{name}",
        "service.edit",
        put_service,
        "Create or replace a service (TLSService document)",
        TLSServiceSpec,
        action="service.edit",
    ),
    ApiRoute(
        "DELETE",
        "/api/v1/services/{name}",
        "service.delete",
        delete_service,
        "Delete a service",
        None,
        204,
        action="service.delete",
    ),
    ApiRoute(
        "POST",
        "/api/v1/services/{name}/renew",
        "service.edit",
        renew_service,
        "Reissue the service certificate now",
        None,
        202,
        action="service.renew",
    ),
    ApiRoute(
        "DELETE",
        "/api/v1/services/{name}/retired-ca",
        "service.edit",
        drop_retired_ca,
        "Stop trusting the replaced CAs now (ends their overlap in ca.crt at the next pass)",
        None,
        202,
        action="service.drop-retired-ca",
    ),
    ApiRoute(
        "GET",
        "/api/v1/services/{name}/clients",
        "service.read",
        list_clients,
        "List trusted client certificates",
    ),
    ApiRoute(
        "POST",
        "/api/v1/services/{name}/clients",
        "service.edit",
        add_client,
        "Trust client certificates or CAs",
        ServiceClientAdd,
        201,
        action="service.client.add",
    ),
    ApiRoute(
        "DELETE",
        "/api/v1/services/{name}/clients/{fingerprint}",
        "service.edit",
        remove_client,
        "Stop trusting a client certificate",
        None,
        204,
        action="service.client.remove",
    ),
    ApiRoute(
        "GET",
        "/api/v1/services/{name}/outputs/{output}",
        "service.read",
        get_output,
        "A public output (certs-public, client-trust)",
    ),
)
