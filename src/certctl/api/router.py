"""Routing: each route's endpoint (authentication, authorization, query checks), the router."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match, Route, Router
from starlette.types import Receive, Scope, Send

from certctl.api._common import AUTHENTICATED, PUBLIC, ApiRoute
from certctl.api.authentication import (
    KUBERNETES_TOKEN_PATHS,
    AuthSettings,
    authenticate,
    authenticate_from_store,
    authenticate_kubernetes,
)
from certctl.errors import InvalidRequest, PermissionDenied
from certctl.services.context import Principal

__all__ = ["AUDIT_ACTION", "PRINCIPAL", "ApiRouter", "route_endpoint"]

# The scope key of a caller whose 403s have more to say: a client certificate mapping's roles
# that do not exist (Principal.missing_roles), which the error handler names in each of them.
PRINCIPAL = "certctl.principal"
# The scope key of a mutating route's audit action (ApiRoute.action), which its 403 is
# recorded under: the action its success records, not the method and route.
AUDIT_ACTION = "certctl.audit_action"


def route_endpoint(route: ApiRoute, auth: AuthSettings) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of ``route``: authenticates, authorizes, checks the query."""
    kubernetes = route.path in KUBERNETES_TOKEN_PATHS
    from certctl.api.openapi import query_names

    allowed_query = query_names(route.method, route.path)

    async def endpoint(request: Request) -> Response:
        scope = request.scope
        scope["certctl.route"] = route.path
        if route.action:
            scope[AUDIT_ACTION] = route.action  # for a refusal's audit row
        # From the scope, not request.url / query_params: building those costs more than a
        # cached API-key check. The path is already percent-decoded, the query is not.
        query = scope.get("query_string", b"")
        if "\x00" in scope["path"] or (query and (b"\x00" in query or b"%00" in query)):
            raise InvalidRequest("NUL character in the request path or query")
        principal: Principal | None = None
        if route.permission != PUBLIC:
            if kubernetes:
                principal = await authenticate_kubernetes(request, route, auth)
            else:
                principal = authenticate(request, auth)
                if principal is None:
                    principal = await authenticate_from_store(request, auth)
            scope["certctl.actor"] = principal.actor_id
            scope["certctl.credential"] = principal.credential  # for a refusal's audit row
            if principal.missing_roles:
                # For its 403s, wherever raised, to name them (see _certctl_error).
                scope[PRINCIPAL] = principal
            if route.permission != AUTHENTICATED and route.permission not in principal.permissions:
                raise PermissionDenied(f"missing permission {route.permission}")
        if query and allowed_query:
            # A misspelt filter (?stauts=revoked) must not silently return everything. Routes
            # without filters ignore a query: probes and scrapers add their own (?_=1,
            # Prometheus params). After authentication, as a body is checked: a caller
            # without a valid key gets its 401 (audited), one without the permission its 403.
            unknown = set(request.query_params) - allowed_query
            if unknown:
                names = ", ".join(sorted(n[:40] for n in unknown))
                raise InvalidRequest(f"unknown query parameter(s): {names}")
            # Starlette reads the last of a repeated parameter, a proxy or a client library
            # may read the first, and a client may mean both (?status=expiring&status=expired):
            # whichever is taken, some caller silently gets another answer than it asked for.
            given = Counter(name for name, _ in request.query_params.multi_items())
            repeated = sorted(name for name, times in given.items() if times > 1)
            if repeated:
                raise InvalidRequest(f"{', '.join(repeated)} given more than once")
        return await route.handler(request, principal)

    endpoint.__name__ = route.handler.__name__
    return endpoint


class ApiRouter(Router):
    """Starlette's router with a dictionary in front for the paths without parameters.

    Starlette tries each route's regular expression in turn (~0.4 µs each, and
    ``/api/v1/audit`` is route 40). A request whose (path, method) is a route without path
    parameters that no earlier route would have taken goes straight to it; anything else
    (templated paths, 404, 405) takes Starlette's scan as before.

    Any other path is matched against the routes whose literal beginning (the path up to its
    first parameter) it starts with, in their order, as Starlette's scan would: a route
    whose beginning differs cannot match (the regular expression is anchored and escapes
    the literal part). ``GET /api/v1/certificates/{id}`` tried 29 expressions (~17 µs of a
    ~150 µs request in-process) before its own.

    A path that matches a route once its trailing slashes are dropped gets a 307 to that
    path, as Starlette's own redirect gives, but with a relative ``Location``: Starlette
    builds an absolute one from the request's Host header, which a client or a cache in
    front could be made to follow to another host.
    """

    def __init__(self, routes: list[Route]) -> None:
        super().__init__(routes=routes, redirect_slashes=False)
        self._static: dict[tuple[str, str], Route] = {}
        self._beginnings = [(route.path.split("{", 1)[0], route) for route in routes]
        for index, route in enumerate(routes):
            if route.param_convertors:
                continue
            for method in route.methods or ():
                key = (route.path, method)
                if key not in self._static and not any(
                    earlier.path_regex.match(route.path)
                    and (earlier.methods is None or method in earlier.methods)
                    for earlier in routes[:index]
                ):
                    self._static[key] = route

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one request: a static path at once, a stray trailing slash to a 307."""
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self._static.get((scope["path"], scope["method"]))
            if route is not None:
                # What Router.app sets for a full match without path parameters.
                scope.setdefault("router", self)
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = dict(scope.get("path_params", {}))
                await route.handle(scope, receive, send)
                return
            location = self._without_trailing_slash(scope)
            if location is not None:
                await RedirectResponse(location, status_code=307)(scope, receive, send)
                return
            await self._scan(scope, receive, send)
            return
        await super().app(scope, receive, send)

    async def _scan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Router.app's scan (redirect_slashes off), over the routes that can match."""
        scope.setdefault("router", self)
        found = self.route_for(scope)
        if found is None:
            await self.default(scope, receive, send)
            return
        scope["route"] = found[0]
        scope.update(found[1])
        await found[0].handle(scope, receive, send)  # a PARTIAL match answers 405

    def route_for(self, scope: Scope) -> tuple[Route, Scope] | None:
        """The first full match, else the first partial one (another method), else None."""
        path: str = scope["path"]
        partial: tuple[Route, Scope] | None = None
        for beginning, route in self._beginnings:
            if not path.startswith(beginning):
                continue
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return route, child_scope
            if match is Match.PARTIAL and partial is None:
                partial = (route, child_scope)
        return partial

    def _without_trailing_slash(self, scope: Scope) -> str | None:
        """Where a path with trailing slashes that no route takes goes, else None."""
        path: str = scope["path"]
        if len(path) < 2 or not path.endswith("/"):
            return None
        stripped = {**scope, "path": path.rstrip("/") or "/"}
        routes = self.routes
        if any(r.matches(scope)[0] != Match.NONE for r in routes) or not any(
            r.matches(stripped)[0] != Match.NONE for r in routes
        ):
            return None
        raw: bytes = scope.get("raw_path") or path.encode()
        if not raw.endswith(b"/"):
            # The slash was sent encoded (/certificates%2F): the Location built from the raw
            # path would be the request's own, and a client following it would loop.
            return None
        # One leading slash: "//host/x" would be a network-path reference to another host.
        location = "/" + raw.decode("latin-1").strip("/")
        query: bytes = scope.get("query_string", b"")
        return f"{location}?{query.decode('latin-1')}" if query else location
