"""Managed-service gauges: read from the store, the same in every process, gone with the service."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from certctl.metrics.registry import REGISTRY
from certctl.server.periodic import refresh_metrics
from certctl.services import service_specs
from tests.services.conftest import Env, service_doc

SERVICE_FAMILIES = (
    "certctl_service_ready",
    "certctl_service_certificate_not_after_timestamp_seconds",
    "certctl_service_next_renewal_timestamp_seconds",
)


def _service_samples() -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        if family.name in SERVICE_FAMILIES:
            for sample in family.samples:
                out[(sample.name, sample.labels["service"])] = sample.value
    return out


def test_service_gauges_follow_the_store_and_drop_a_deleted_service(env: Env) -> None:
    env.put(service_doc("web", dns=("web.example.internal",)))
    env.put(service_doc("api", dns=("api.example.internal",)))
    web = env.reconcile("web")
    # No reconciler ran in this process (as on a worker or replica that is not the leader):
    # the states still come from the store.
    refresh_metrics(env.services)
    samples = _service_samples()
    assert samples[("certctl_service_ready", "web")] == 1
    assert samples[("certctl_service_ready", "api")] == 0  # not reconciled yet
    assert web.not_after is not None
    assert web.renew_at is not None
    assert samples[("certctl_service_certificate_not_after_timestamp_seconds", "web")] == (
        web.not_after.timestamp()
    )
    assert samples[("certctl_service_next_renewal_timestamp_seconds", "web")] == (
        web.renew_at.timestamp()
    )
    assert ("certctl_service_certificate_not_after_timestamp_seconds", "api") not in samples

    # Deleted: its series go at the next refresh instead of reporting "web" until a restart
    # (an alert on certctl_service_ready == 0 would otherwise never clear for "api").
    service_specs.delete_service(env.services, env.admin, "api")
    refresh_metrics(env.services)
    samples = _service_samples()
    assert {name for _, name in samples} == {"web"}
