"""The ASGI application: the route table, problem+json errors, access log, limits.

Each route is declared once, with its permission, in the module of its resource
(``auth_routes``, ``issuer_routes``, ``certificate_routes``, ``audit_routes``,
``metrics_routes``, ``service_routes``); ``ROUTES`` joins them, and the router (``router``),
the OpenAPI document and the authorization tests are all generated from that table.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certctl.api._common import (
    PUBLIC,
    ApiRoute,
    in_write_thread,
    list_limiter,
    write_limiter,
)
from certctl.api._common import json_response as _json
from certctl.api._common import services_of as _services
from certctl.api.access_log import logged_path_of, write_line
from certctl.api.acme_account_routes import ACME_ACCOUNT_ROUTES
from certctl.api.acme_eab_routes import ACME_EAB_ROUTES
from certctl.api.audit_routes import AUDIT_ROUTES
from certctl.api.auth_routes import AUTH_ROUTES
from certctl.api.authentication import (
    FAILURE_AUDIT,
    AuthSettings,
    ClientCertMapping,
    audit_failure,
    source_of,
)
from certctl.api.certificate_routes import CERTIFICATE_ROUTES, KEYGEN_THREADS
from certctl.api.issuer_routes import CA_READ_THREADS, ISSUER_ROUTES
from certctl.api.metrics_routes import HEALTH_ROUTES, METRICS_ROUTES
from certctl.api.problems import problem, problem_from_error
from certctl.api.readiness import DatabaseProbe
from certctl.api.router import AUDIT_ACTION, PRINCIPAL, ApiRouter, route_endpoint
from certctl.api.service_routes import SERVICE_ROUTES
from certctl.api.throttle import AuthFailureLimiter
from certctl.auth.apikeys import redact_keys
from certctl.auth.kubernetes import TokenReviewAuthenticator
from certctl.errors import CertctlError, PermissionDenied
from certctl.metrics.registry import AUTH_FAILURES, HTTP_DURATION, HTTP_REQUESTS
from certctl.services import audit
from certctl.services.acme import AcmeSettings
from certctl.services.context import Principal, Services
from certctl.services.target_policy import TargetPolicy
from certctl.store.db import (
    PoolTimeout,
    connection_reason,
    constraint_conflict,
    storage_error,
    value_refusal,
)

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "ROUTES",
    "create_app",
]

MAX_BODY_BYTES = 1024 * 1024
# Request line plus headers. uvicorn's h11 parser refuses a larger head only while it is still
# incomplete (400); one that arrives whole in a single read is refused here (431).
MAX_HEADER_BYTES = 16 * 1024


async def openapi(request: Request, principal: Principal | None) -> Response:
    from certctl.api.openapi import build_openapi

    return _json(build_openapi(ROUTES))


ROUTES: tuple[ApiRoute, ...] = (
    *HEALTH_ROUTES,
    ApiRoute("GET", "/api/v1/openapi.json", PUBLIC, openapi, "OpenAPI document"),
    *AUTH_ROUTES,
    *ISSUER_ROUTES,
    *CERTIFICATE_ROUTES,
    *AUDIT_ROUTES,
    *METRICS_ROUTES,
    *SERVICE_ROUTES,
    *ACME_EAB_ROUTES,
    *ACME_ACCOUNT_ROUTES,
)


# --- middleware --------------------------------------------------------------------------


# On every response: no MIME sniffing of JSON, PEM or problem bodies into something a browser
# would render. On the answers to authenticated requests (minted API keys, server-generated
# private keys, the audit log …): no copy kept by a browser, proxy or client cache either.
_PUBLIC: tuple[tuple[bytes, bytes], ...] = ((b"x-content-type-options", b"nosniff"),)
_PRIVATE = (*_PUBLIC, (b"cache-control", b"no-store"))


class AccessLogAndLimits:
    """Body-size limit, metrics and one access-log line per request (never headers)."""

    def __init__(self, app: ASGIApp, json_logs: bool = False) -> None:
        self.app = app
        self.json_logs = json_logs
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = [0]  # the response status, once started
        # Whether the request has a body the app has not read to its end yet. A response sent
        # before that (401, 404, 413 …) closes the connection: on a kept-alive one, the rest of
        # the body would keep it open for as long as the client trickles it, and a client that
        # sent ``Expect: 100-continue`` and so never sends the body would see its next request
        # read as that body (RFC 9110 10.1.1: say so, or read the body).
        body_pending = False
        too_large = False
        hosts = 0
        for name, value in scope.get("headers", []):
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                if not value.isdigit() or int(value) > MAX_BODY_BYTES:
                    too_large = True
                body_pending = value.strip(b"0") != b""
            elif name == b"transfer-encoding":
                body_pending = True
        received = 0

        async def limited_receive() -> Message:
            nonlocal received, body_pending
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _TooLarge
                if not message.get("more_body", False):
                    body_pending = False
            return message

        async def capture_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                extra = _PRIVATE if "certctl.actor" in scope else _PUBLIC
                if body_pending:
                    extra = (*extra, (b"connection", b"close"))
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        if _head_size(scope) > MAX_HEADER_BYTES:
            await problem(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")(
                scope, receive, capture_send
            )
            self._log(scope, 431, started)
            return
        if hosts > 1 or (hosts == 0 and scope.get("http_version") not in _HOSTLESS_VERSIONS):
            # RFC 9112 3.2: an HTTP/1.1 request without Host, or any with two, MUST get 400;
            # a proxy in front may route by one Host and certctl would see another.
            await problem(400, "an HTTP/1.1 request needs exactly one Host header")(
                scope, receive, capture_send
            )
            self._log(scope, 400, started)
            return
        if too_large:
            await problem(413, f"request body over {MAX_BODY_BYTES} bytes")(
                scope, receive, capture_send
            )
            self._log(scope, 413, started)
            return

        try:
            await self.app(scope, limited_receive, capture_send)
        except _TooLarge:
            status_holder[0] = 413
            await problem(413, f"request body over {MAX_BODY_BYTES} bytes")(
                scope, receive, capture_send
            )
        except Exception:
            # Starlette sends the 500 (from ``_unexpected``, which logged the traceback once)
            # and then re-raises for the server to log it again. Stop it here: one traceback,
            # and the 500 still gets its access-log line and its count.
            if not status_holder[0]:
                raise
            # A failure after a 200 had started still failed: the client got a cut answer.
            status_holder[0] = 500
        self._log(scope, status_holder[0], started)

    def _log(self, scope: Scope, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("certctl.route", "unmatched")
        method = scope.get("method", "")
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:  # labels() locks and builds tuples: resolve each series once
            children = self._children[key] = (
                HTTP_REQUESTS.labels(method, route, str(status)),
                HTTP_DURATION.labels(route),
            )
        children[0].inc()
        children[1].observe(elapsed)
        client = scope.get("client") or ("-", 0)
        write_line(
            method,
            logged_path_of(scope),
            status,
            scope.get("certctl.actor", "-"),
            elapsed,
            client[0],
            json_logs=self.json_logs,
        )


def _head_size(scope: Scope) -> int:
    """Bytes of the request line and header block as sent (to within separators)."""
    size = len(scope.get("method", "")) + len(scope.get("raw_path", b"")) + 16
    size += len(scope.get("query_string", b""))
    return size + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", []))


class _TooLarge(CertctlError):
    # A CertctlError, so a handler reading an oversized chunked body gets the 413 problem
    # from the exception middleware instead of a 500 from the catch-all handler.
    status = 413
    title = "Payload too large"

    def __init__(self) -> None:
        super().__init__(f"request body over {MAX_BODY_BYTES} bytes")


# Versions whose requests may lack Host: every other (1.1, and "HTTP/2.0" or "HTTP/1.9" text
# request lines, which llhttp parses as HTTP/1) must carry exactly one.
_HOSTLESS_VERSIONS = frozenset({"1.0", "0.9"})

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _certctl_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CertctlError)
    failure = request.scope.pop(FAILURE_AUDIT, None)
    if failure is not None:
        # A refused authentication's row (see _count_failure), written before the 401 leaves.
        await anyio.to_thread.run_sync(
            audit_failure, _services(request), failure, limiter=_failure_audits(request)
        )
    actor = request.scope.get("certctl.actor")
    if exc.status == 403:
        principal = request.scope.get(PRINCIPAL)
        if isinstance(principal, Principal):
            # Here, not where each is raised: the route's check and every service's alike
            # (a service's refusal said "you lack" with no word of the role that is no role).
            exc = PermissionDenied(principal.explained(exc.detail))
        # Every refusal of an authenticated caller, wherever it was decided: the route's
        # permission, or a service's check (a role or key above the caller's own permissions,
        # a directory target the policy refuses). Escalation attempts are the ones to alert on.
        AUTH_FAILURES.labels("forbidden").inc()
    if request.method in _MUTATING and actor is not None and exc.status == 403:
        # A mutation refused for lack of permission is a security event: audit it. Bad input
        # (400/404/409/415) is not recorded, so a refused request leaves the store unchanged.
        # Authentication failures were recorded where they happened (no actor yet).
        await in_write_thread(request, _audit_refusal, request, actor, exc)
    return await _acme_answer(request, problem_from_error(exc))


async def _acme_answer(request: Request, response: Response) -> Response:
    """An ACME route's storage 503 with a nonce, as its other answers (RFC 8555 6.5).

    Minting one needs no store (an HMAC): without it, a client had to ask new-nonce again
    before it could retry.
    """
    if request.app.state.acme is None:
        return response
    from certctl.api.acme_routes import is_acme_path, with_acme_headers

    return (
        await with_acme_headers(request, response) if is_acme_path(request.url.path) else response
    )


def _failure_audits(request: Request) -> anyio.CapacityLimiter:
    limiter: anyio.CapacityLimiter = request.app.state.failure_audits
    return limiter


def _refused_action(request: Request) -> str:
    """The action a 403 is recorded under: its route's, as a success records it.

    The method and route only for a route that names none: a refusal recorded as
    ``POST /api/v1/issuers`` was missed by an auditor filtering on ``issuer.create``.
    """
    action = request.scope.get(AUDIT_ACTION)
    if isinstance(action, str) and action:
        return action
    return f"{request.method} {request.scope.get('certctl.route', request.url.path)}"


def _audit_refusal(request: Request, actor: str, exc: CertctlError) -> None:
    services = _services(request)
    outcome = "denied"
    credential = request.scope.get("certctl.credential", "")
    try:
        audit.record_refusal(
            services.sessions,
            at=services.clock(),
            actor=actor,
            action=_refused_action(request),
            target=logged_path_of(request.scope)[:200],
            outcome=outcome,
            source=source_of(request),
            # Redacted as the 403's own detail is (api.problems): the refusal may quote
            # a key pasted where its id belongs (DELETE /api/v1/auth/apikeys/<key>).
            detail=redact_keys(exc.detail)[:500],
            credential=credential if isinstance(credential, str) else "",
        )
    except Exception:
        # Never turn a 4xx into a 500 because the audit write failed (e.g. storage full).
        logging.getLogger("certctl.api").warning("could not audit a refused request", exc_info=True)


async def _database_error(request: Request, exc: Exception) -> Response:
    return await _acme_answer(request, await _database_problem(request, exc))


async def _database_problem(request: Request, exc: Exception) -> Response:
    fault = storage_error(exc)
    if fault is None:
        conflict = constraint_conflict(exc)
        if conflict is not None:
            # A concurrent request (another worker or replica) wrote the same row first.
            return problem_from_error(conflict)
        refused = value_refusal(exc)
        if refused is not None:
            # Nothing was written (the transaction rolled back): the database's encoding or
            # its byte-counted lengths, not a bug. Named here for the operator, never the value.
            logging.getLogger("certctl.api").warning(
                "value refused by the database on %s %s: %s",
                request.method,
                logged_path_of(request.scope),
                refused.detail,
            )
            return problem_from_error(refused)
        return await _unexpected(request, exc)
    # One line without the statement or its parameters (those may hold key material).
    # With PostgreSQL's or libpq's reason (a password rotated under the replicas): the log
    # said only "cannot be reached"; the client's 503 keeps the bare detail.
    logging.getLogger("certctl.api").warning(
        "storage fault on %s %s: %s%s (%s)",
        request.method,
        logged_path_of(request.scope),
        fault.detail,
        connection_reason(exc),
        type(getattr(exc, "orig", exc)).__name__,
    )
    return problem_from_error(fault)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and request.app.state.only_paths is not None:
        # A client pointed at the metrics port (CERTCTL_URL, a curl to test a key) got a
        # bare "Not Found" for a route the main listener serves: say where it is.
        served = dict.fromkeys(r.path for r in request.app.router.routes if isinstance(r, Route))
        return problem(
            404,
            "not found on the metrics listener (metrics.listen), which serves only "
            f"{', '.join(served)}; the rest of the API is on the main listener (listen)",
        )
    allowed = ""
    if exc.status_code == 405:
        # RFC 9110 15.5.6: a 405 lists the methods the resource has. Starlette's lists those
        # of the first route matching the path, but each of ours has one method.
        allowed = ", ".join(
            sorted(
                {
                    method
                    for route in request.app.router.routes
                    if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE
                    for method in route.methods or ()
                }
            )
        )
    if request.app.state.acme is not None and exc.status_code in (404, 405):
        from certctl.api.acme_routes import is_acme_path, routing_problem

        if is_acme_path(request.url.path):
            return await routing_problem(request, exc.status_code, allowed)
    response = problem(exc.status_code, exc.detail or "error")
    if exc.status_code == 405:
        response.headers["Allow"] = allowed
    return response


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection before sending its whole body: nothing to answer and
    # nothing wrong with the server. 499 (nginx's "client closed request") in the access log.
    logging.getLogger("certctl.api").info(
        "client disconnected during %s %s", request.method, logged_path_of(request.scope)
    )
    return problem(499, "the client closed the connection")


async def _unexpected(request: Request, exc: Exception) -> Response:
    logging.getLogger("certctl.api").exception(
        "unhandled error on %s %s", request.method, logged_path_of(request.scope)
    )
    if request.app.state.acme is not None:
        from certctl.api.acme_routes import is_acme_path, unexpected_problem

        if is_acme_path(request.url.path):
            return await unexpected_problem(request)
    return problem(500, "internal error; see the server log")


def create_app(
    services: Services,
    *,
    client_cert_mappings: tuple[ClientCertMapping, ...] = (),
    json_logs: bool = False,
    only_paths: frozenset[str] | None = None,
    kubernetes_authenticator: TokenReviewAuthenticator | None = None,
    auth_failure_limiter: AuthFailureLimiter | None = None,
    service_policy: TargetPolicy | None = None,
    acme: AcmeSettings | None = None,
) -> ASGIApp:
    """Build the ASGI app around ``services``; ``only_paths`` limits it to those routes.

    ``auth_failure_limiter`` (shared by every listener of one server) throttles addresses
    that fail to authenticate too often; None turns the throttle off. ``service_policy``
    says which directory targets and reload commands a service editor may set. ``acme``
    (``acme.enabled``) mounts the ACME endpoint under ``/acme/``; None leaves it out (404).
    """
    auth = AuthSettings(
        services,
        auth_failure_limiter,
        client_cert_mappings,
        kubernetes_authenticator,
    )
    routes = [
        Route(r.starlette_path, route_endpoint(r, auth), methods=[r.method])
        for r in ROUTES
        if only_paths is None or r.path in only_paths
    ]
    if acme is not None and only_paths is None:
        from certctl.api.acme_routes import acme_routes

        routes += acme_routes()
    app = Starlette(
        routes=routes,
        exception_handlers={
            CertctlError: _certctl_error,
            DBAPIError: _database_error,
            PoolTimeout: _database_error,
            HTTPException: _http_error,
            ClientDisconnect: _client_gone,
            Exception: _unexpected,
        },
    )
    app.router = ApiRouter(routes)
    app.state.services = services
    app.state.only_paths = only_paths
    app.state.client_cert_mappings = client_cert_mappings
    app.state.kubernetes_authenticator = kubernetes_authenticator
    app.state.auth_failure_limiter = auth_failure_limiter
    app.state.service_policy = service_policy or TargetPolicy()
    app.state.database_probe = DatabaseProbe(services.engine)
    app.state.ca_reads = anyio.CapacityLimiter(CA_READ_THREADS)
    app.state.crl_reads = anyio.CapacityLimiter(CA_READ_THREADS)
    app.state.ocsp_reads = anyio.CapacityLimiter(CA_READ_THREADS)
    app.state.writes = write_limiter()
    app.state.lists = list_limiter()
    app.state.keygens = anyio.CapacityLimiter(KEYGEN_THREADS)
    app.state.auth_reads = auth.reads
    app.state.failure_audits = auth.audits
    app.state.acme = acme
    if acme is not None:
        from certctl.api.acme_routes import ACCOUNTS_PER_HOUR, VALIDATION_LIMIT, VALIDATION_QUEUE

        app.state.acme_validations = anyio.CapacityLimiter(VALIDATION_LIMIT)
        app.state.acme_account_limiter = AuthFailureLimiter(ACCOUNTS_PER_HOUR, 3600)
        app.state.acme_validation_queue = VALIDATION_QUEUE
        app.state.acme_tasks = {}
    app.state.ready = True
    return AccessLogAndLimits(app, json_logs=json_logs)
