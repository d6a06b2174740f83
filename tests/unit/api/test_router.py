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
