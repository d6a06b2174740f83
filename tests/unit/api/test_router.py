"""The router's dictionary of parameterless paths picks the route Starlette's scan would pick."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Match, Route

from certctl.api.app import create_app
from certctl.api.router import ApiRouter
from certctl.server.bootstrap import bootstrap
from certctl.server.config import load_config


def _first_full_match(routes: list[BaseRoute], path: str, method: str) -> BaseRoute | None:
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            return route
    return None


def test_every_static_entry_is_the_first_full_match(tmp_path: Path) -> None:
    services = bootstrap(load_config(None, {"data-dir": str(tmp_path)})).services
    app = create_app(services)
    router = app.app.router  # type: ignore[attr-defined]
    assert isinstance(router, ApiRouter)
    assert router._static, "no parameterless route found"
    for (path, method), route in router._static.items():
        assert _first_full_match(router.routes, path, method) is route, (path, method)
    # A static path listed after a template that matches it stays with the template.
    first = Route("/things/{id}", lambda request: None, methods=["GET"])
    later = Route("/things/new", lambda request: None, methods=["GET", "POST"])
    shadowed = ApiRouter([first, later])
    assert ("/things/new", "GET") not in shadowed._static
    assert shadowed._static[("/things/new", "POST")] is later


def _starlette_choice(routes: list[BaseRoute], scope: dict[str, str]) -> object:
    """What Starlette's Router.app hands the request to: the first FULL, else first PARTIAL."""
    partial = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return route, child
        if match is Match.PARTIAL and partial is None:
            partial = (route, child)
    return partial


def test_a_templated_path_goes_where_starlettes_scan_sends_it(tmp_path: Path) -> None:
    services = bootstrap(load_config(None, {"data-dir": str(tmp_path)})).services
    router = create_app(services).app.router  # type: ignore[attr-defined]
    assert isinstance(router, ApiRouter)
    paths = {"/", "/api", "/api/v1/nothing/here", "/api/v1/certificates/a/b"}
    for route in router.routes:
        assert isinstance(route, Route)
        for value in ("abc", "new", "a.b", "%2F"):
            paths.add(route.path.split("{", 1)[0] + value)
            filled = route.path
            while "{" in filled:
                head, _, rest = filled.partition("{")
                filled = head + value + rest.partition("}")[2]
            paths.add(filled)
            paths.add(filled + "/extra")
    methods = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    templated = 0
    for path in sorted(paths):
        for method in methods:
            scope = {"type": "http", "path": path, "method": method, "root_path": ""}
            expected = _starlette_choice(router.routes, scope)
            assert router.route_for(scope) == expected, (method, path)
            templated += expected is not None and bool(expected[0].param_convertors)
    assert templated > 50  # the templates were reached, not only 404s
