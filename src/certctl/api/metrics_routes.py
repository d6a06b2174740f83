"""Liveness, readiness and metrics (DESIGN §5): what a ``metrics.listen`` listener serves."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from certctl.api._common import PUBLIC, ApiRoute
from certctl.api._common import json_response as _json
from certctl.api.problems import problem
from certctl.metrics.registry import exposition_registry
from certctl.services.context import Principal

__all__ = ["HEALTH_ROUTES", "METRICS_PATHS", "METRICS_ROUTES"]


async def metrics_prometheus(request: Request, principal: Principal | None) -> Response:
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(exposition_registry()), media_type=CONTENT_TYPE_LATEST)


async def metrics_json(request: Request, principal: Principal | None) -> Response:
    from certctl.metrics.registry import certificate_gauges

    snapshot: dict[str, dict[str, int]] = {}
    for metric in certificate_gauges.collect():
        if metric.name == "certctl_certificates":
            for sample in metric.samples:
                issuer, status = sample.labels["issuer"], sample.labels["status"]
                snapshot.setdefault(issuer, {})[status] = int(sample.value)
    return _json({"certificates": snapshot})


async def healthz(request: Request, principal: Principal | None) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request, principal: Principal | None) -> Response:
    # Every other route needs the store (API keys live there): without it, not ready, so a
    # load balancer or Kubernetes sends clients elsewhere instead of to a stream of 503s.
    # /healthz stays up: restarting the process would not bring the database back.
    if not getattr(request.app.state, "ready", False):
        return problem(503, "not ready")
    if not await request.app.state.database_probe.reachable():
        return problem(503, "not ready")
    return PlainTextResponse("ready")


HEALTH_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/healthz", PUBLIC, healthz, "Liveness"),
    ApiRoute("GET", "/readyz", PUBLIC, readyz, "Readiness"),
)

METRICS_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/api/v1/metrics", "metrics.read", metrics_json, "Metrics summary (JSON)"),
    ApiRoute(
        "GET",
        "/api/v1/metrics/prometheus",
        "metrics.read",
        metrics_prometheus,
        "Prometheus metrics",
    ),
)

# What a separate ``metrics.listen`` listener serves.
METRICS_PATHS = frozenset({"/healthz", "/readyz", "/api/v1/metrics", "/api/v1/metrics/prometheus"})
