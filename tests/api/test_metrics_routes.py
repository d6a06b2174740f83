"""/api/v1/metrics/prometheus and /api/v1/metrics: access rules and content (DESIGN §5)."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from certctl.server.periodic import refresh_metrics
from certctl.services import issuers
from tests.api.conftest import Api, assert_problem

PROM = "/api/v1/metrics/prometheus"
# DESIGN §5 (and the issuer expiry gauge beyond it): family name as the parser reports it
# (counters without the _total suffix) -> (type, label names).
DESIGN_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "certctl_certificates": ("gauge", frozenset({"issuer", "status"})),
    "certctl_certificate_next_expiry_timestamp_seconds": ("gauge", frozenset({"issuer"})),
    "certctl_issuer_not_after_timestamp_seconds": ("gauge", frozenset({"issuer"})),
    "certctl_issuance": ("counter", frozenset({"issuer", "result"})),
    "certctl_issuance_duration_seconds": ("histogram", frozenset()),
    "certctl_revocations": ("counter", frozenset({"issuer"})),
    "certctl_renewals": ("counter", frozenset({"result"})),
    "certctl_http_requests": ("counter", frozenset({"method", "route", "status"})),
    "certctl_http_request_duration_seconds": ("histogram", frozenset({"route"})),
    "certctl_auth_failures": ("counter", frozenset({"reason"})),
    "certctl_api_keys": ("gauge", frozenset({"state"})),
    "certctl_tls_certificate_not_after_timestamp_seconds": ("gauge", frozenset({"listener"})),
    "certctl_tls_reloads": ("counter", frozenset({"result"})),
    "certctl_build_info": ("gauge", frozenset({"version"})),
}


def _metric_objects() -> dict[str, object]:
    """The prometheus_client metrics of certctl.metrics.registry, by family name."""
    from certctl.metrics import registry

    found = (getattr(registry, name) for name in registry.__all__)
    return {m._name: m for m in found if isinstance(m, Counter | Gauge | Histogram)}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_prometheus_requires_metrics_read(api: Api) -> None:
    body = assert_problem(api.get(PROM), 401)
    assert "Bearer" in body["detail"]
    assert_problem(api.get(PROM, "cctl_0000000000000000_" + "x" * 43), 401)
    auditor = api.actor_key("aud", ["r-auditor"])
    assert "metrics.read" in assert_problem(api.get(PROM, auditor), 403)["detail"]
    assert_problem(api.get("/api/v1/metrics", auditor), 403)
    for actor, role in (("prom", "r-metrics-read"), ("viewer", "r-viewer"), ("op", "r-operator")):
        key = api.actor_key(actor, [role])
        r = api.get(PROM, key)
        assert r.status_code == 200, (role, r.text)
        assert r.headers["content-type"].startswith("text/plain; version=")
        assert api.get("/api/v1/metrics", key).status_code == 200


def test_prometheus_output_parses_and_names_design_metrics(api: Api) -> None:
    key = api.actor_key("prom", ["r-metrics-read"])
    cert = api.issue()
    api.post(f"/api/v1/certificates/{cert['id']}/revoke", api.admin_key, json={})
    api.issue(common_name="kept.example.com")  # a next expiry to show
    refresh_metrics(api.services)
    r = api.get(PROM, key)
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    missing = set(DESIGN_METRICS) - set(families)
    assert not missing, missing
    for name, (kind, labels) in DESIGN_METRICS.items():
        assert families[name].type == kind, name
        # A family without a child yet (no listener in-process) has its label names only
        # on the metric object.
        shown = {label for sample in families[name].samples for label in sample.labels} - {"le"}
        declared = set(getattr(_metric_objects().get(name), "_labelnames", ()))
        assert (shown or declared) == labels, name
    assert {s.labels["status"] for s in families["certctl_certificates"].samples} == {
        "active",
        "expiring",
        "expired",
        "revoked",
    }
    # Bounded cardinality: no label carries a certificate id, serial or key.
    for family in families.values():
        for sample in family.samples:
            for value in sample.labels.values():
                assert cert["id"] not in value
                assert cert["serial"] not in value
    assert api.admin_key not in r.text
    assert key not in r.text


def test_certificate_gauge_follows_issuance_and_revocation(api: Api) -> None:
    key = api.actor_key("prom", ["r-metrics-read"])
    issued = [api.issue(common_name=f"g{i}.example.com")["id"] for i in range(4)]
    api.issue(common_name="soon.example.com", validity="10D")
    for cert_id in issued[:2]:
        r = api.post(f"/api/v1/certificates/{cert_id}/revoke", api.admin_key, json={})
        assert r.status_code == 200
    refresh_metrics(api.services)
    samples = _samples(api.get(PROM, key).text)

    def gauge(status: str, issuer: str = "default") -> float:
        return samples[("certctl_certificates", (("issuer", issuer), ("status", status)))]

    assert gauge("active") == 2
    assert gauge("expiring") == 1
    assert gauge("revoked") == 2
    assert gauge("expired") == 0
    next_expiry = samples[
        ("certctl_certificate_next_expiry_timestamp_seconds", (("issuer", "default"),))
    ]
    assert abs(next_expiry - (api.clock().timestamp() + 10 * 86400)) < 1
    assert samples[("certctl_api_keys", (("state", "active"),))] == 2  # admin + prom
    assert samples[("certctl_api_keys", (("state", "revoked"),))] == 0

    summary = api.get("/api/v1/metrics", key)
    assert summary.status_code == 200
    assert summary.json()["certificates"]["default"] == {
        "active": 2,
        "expiring": 1,
        "expired": 0,
        "revoked": 2,
    }

    # Time passes: the 10-day certificate expires; a new issuer appears with zeros.
    api.clock.advance(days=11)
    assert api.post("/api/v1/issuers", api.admin_key, json={"id": "second"}).status_code == 201
    refresh_metrics(api.services)
    samples = _samples(api.get(PROM, key).text)
    assert gauge("expired") == 1
    assert gauge("expiring") == 0
    assert gauge("active", "second") == 0


def test_a_renewed_certificate_is_no_longer_expiring(api: Api) -> None:
    """Renewing takes a certificate out of ``expiring`` and of the next-expiry gauge.

    It stays valid until its notAfter, and used to keep an expiry alert firing although
    its successor was already issued. Revoking the successor puts it back.
    """
    key = api.actor_key("prom", ["r-metrics-read"])
    old = api.issue(common_name="renewed.example.com", validity="10D")
    api.issue(common_name="later.example.com", validity="20D")
    api.clock.advance(days=2)  # the old one ends in 8 days, its successor in 10
    r = api.post(f"/api/v1/certificates/{old['id']}/renew", api.admin_key, json={})
    assert r.status_code == 201, r.text
    successor = r.json()

    def state() -> tuple[float, float, float]:
        refresh_metrics(api.services)
        samples = _samples(api.get(PROM, key).text)
        expiry = ("certctl_certificate_next_expiry_timestamp_seconds", (("issuer", "default"),))
        return (
            samples[("certctl_certificates", (("issuer", "default"), ("status", "expiring")))],
            samples[("certctl_certificates", (("issuer", "default"), ("status", "active")))],
            round((samples[expiry] - api.clock().timestamp()) / 86400),
        )

    def listed(**params: str) -> set[str]:
        r = api.get("/api/v1/certificates", api.admin_key, params=params)
        return {c["id"] for c in r.json()["items"]}

    # The successor and later.example.com are expiring; the renewed one counts as active,
    # and the next expiry is the successor's, 10 days out (not the renewed one's 8).
    assert state() == (2, 1, 10)
    got = api.get(f"/api/v1/certificates/{old['id']}", api.admin_key).json()
    assert (got["status"], got["renewed_by"]) == ("active", successor["id"])
    assert old["id"] not in listed(status="expiring")
    assert old["id"] not in listed(expiring_within="30D")
    assert old["id"] in listed(status="active")

    # The successor revoked: the old certificate needs renewing again, and says so.
    revoke = f"/api/v1/certificates/{successor['id']}/revoke"
    assert api.post(revoke, api.admin_key, json={}).status_code == 200
    assert state() == (2, 0, 8)
    got = api.get(f"/api/v1/certificates/{old['id']}", api.admin_key).json()
    assert (got["status"], got["renewed_by"]) == ("expiring", None)
    assert old["id"] in listed(expiring_within="30D")


def test_issuer_expiry_gauge_follows_each_issuer_and_its_renewal(api: Api) -> None:
    key = api.actor_key("prom", ["r-metrics-read"])
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": "second", "validity": "720h"})
    assert r.status_code == 201, r.text
    refresh_metrics(api.services)
    samples = _samples(api.get(PROM, key).text)

    def not_after(issuer: str) -> float:
        return samples[("certctl_issuer_not_after_timestamp_seconds", (("issuer", issuer),))]

    default = issuers.load_issuer(api.services, issuers.DEFAULT_ISSUER)
    assert not_after("default") == default.certificate.not_valid_after_utc.timestamp()
    assert abs(not_after("second") - (api.clock().timestamp() + 720 * 3600)) < 1
    # Renewed: the next refresh shows the new notAfter.
    when = api.clock.advance(days=300)
    renewed, _ = issuers.renew_root_issuer(
        api.services, "default", default, validity=timedelta(days=400), now=when
    )
    refresh_metrics(api.services)
    samples = _samples(api.get(PROM, key).text)
    assert not_after("default") == renewed.certificate.not_valid_after_utc.timestamp()
    assert not_after("default") > default.certificate.not_valid_after_utc.timestamp()


def test_auth_failure_counter_counts_reasons(api: Api) -> None:
    key = api.actor_key("prom", ["r-metrics-read"])
    auditor = api.actor_key("aud", ["r-auditor"])

    def failures() -> dict[str, float]:
        samples = _samples(api.get(PROM, key).text)
        return {
            dict(labels)["reason"]: value
            for (name, labels), value in samples.items()
            if name == "certctl_auth_failures_total"
        }

    before = failures()
    api.get(PROM)
    api.get(PROM, "garbage")
    api.get(PROM, auditor)
    after = failures()
    assert after["missing"] - before["missing"] == 1
    assert after["invalid"] - before["invalid"] == 1
    assert after["forbidden"] - before["forbidden"] == 1
    # Every reason is there before its first failure (increase() needs the 0), the 429 too.
    assert set(after) == {"missing", "invalid", "expired", "revoked", "forbidden", "ratelimited"}


def test_auth_failure_counter_counts_refusals_decided_past_the_route(api: Api) -> None:
    """A 403 from a service's check (no escalation) counts as forbidden, as the route's does.

    Before, only a route's own permission check was counted: an actor allowed to create roles
    and mint keys trying to grant itself more got its 403s (and audit rows) but no sample, so
    an alert on increase(certctl_auth_failures_total{reason="forbidden"}) missed exactly the
    escalation attempts.
    """
    key = api.actor_key("prom", ["r-metrics-read"])
    manager = api.key_with_permissions("mgr", ["auth.role.create", "auth.apikey.create"])

    def forbidden() -> float:
        samples = _samples(api.get(PROM, key).text)
        return samples[("certctl_auth_failures_total", (("reason", "forbidden"),))]

    before = forbidden()
    escalate = {"id": "r-esc", "name": "esc", "permissions": ["auth.role.assign"]}
    refused = api.post("/api/v1/auth/roles", manager, json=escalate)
    assert "auth.role.assign" in assert_problem(refused, 403)["detail"]
    assert_problem(api.post("/api/v1/auth/apikeys", manager, json={"actor_id": "admin"}), 403)
    assert_problem(api.get("/api/v1/auth/roles", manager), 403)  # the route's own check
    assert forbidden() - before == 3


def test_readyz_reports_a_database_that_is_down_or_hangs(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certctl.api import readiness as app_module

    state = api.client.app.app.state  # type: ignore[attr-defined]  # inside the access-log layer
    assert api.get("/readyz").text == "ready"

    # Nothing listens there: not ready, without saying why (DESIGN §4); alive all the same.
    state.database_probe = app_module.DatabaseProbe(
        create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    )
    body = assert_problem(api.get("/readyz"), 503)
    assert body["detail"] == "not ready"
    assert api.get("/healthz").status_code == 200

    # A database that does not answer: not ready after the timeout, and later probes do not
    # start a thread each while the first ping hangs.
    monkeypatch.setattr(app_module, "READY_CHECK_TIMEOUT_S", 0.3)
    monkeypatch.setattr(app_module, "READY_CHECK_TTL_S", 0.0)
    release = threading.Event()
    connects = []

    def hang() -> sqlite3.Connection:
        connects.append(1)
        release.wait(10)
        return sqlite3.connect(":memory:")

    engine = create_engine("sqlite://", creator=hang, poolclass=NullPool)
    state.database_probe = app_module.DatabaseProbe(engine)
    started = time.monotonic()
    assert_problem(api.get("/readyz"), 503)
    assert time.monotonic() - started < 3
    assert_problem(api.get("/readyz"), 503)
    assert len(connects) == 1
    release.set()
    deadline = time.monotonic() + 5
    while api.get("/readyz").status_code != 200:  # bounded: 5 s
        assert time.monotonic() < deadline
        time.sleep(0.05)
    engine.dispose()


def test_readme_lists_every_exported_certctl_metric(api: Api) -> None:
    """The README's metrics table and the exposition name the same families."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `certctl_")]
    documented = {
        name.removesuffix("_total")
        for line in table
        for name in re.findall(r"`(certctl_\w+)`", line)
    }
    api.issue()
    refresh_metrics(api.services)
    key = api.actor_key("prom", ["r-metrics-read"])
    exported = {
        family.name
        for family in text_string_to_metric_families(api.get(PROM, key).text)
        if family.name.startswith("certctl_")
    }
    assert documented == exported


def test_readme_example_of_the_json_metrics_route_is_its_shape(api: Api) -> None:
    """The README shows what GET /api/v1/metrics returns (it did not say before)."""
    import json

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    (example,) = re.findall(r"\(`(\{\"certificates\": .*?)`, as\n`certctl_certificates`\)", readme)
    api.issue()
    refresh_metrics(api.services)
    key = api.actor_key("prom", ["r-metrics-read"])
    answer = api.get("/api/v1/metrics", key)
    assert answer.status_code == 200
    assert answer.json() == json.loads(example)


def test_scrape_has_no_created_series(api: Api) -> None:
    """No ``<counter>_created`` gauges: one more series per child that nothing reads.

    prometheus_client exports them by default in a single process (not with workers > 1),
    which doubled the ``certctl_http_requests_total`` series.
    """
    api.issue()
    key = api.actor_key("prom", ["r-metrics-read"])
    api.get(PROM, key)
    text = api.get(PROM, key).text
    assert "certctl_http_requests_total{" in text
    assert "certctl_issuance_total{" in text
    assert [line for line in text.splitlines() if "_created" in line] == []


def test_revoking_the_latest_successor_falls_back_to_an_earlier_one(api: Api) -> None:
    """A certificate renewed twice stays renewed while one of its successors is unrevoked.

    Revoking the latest successor used to clear ``renewed_by`` although the first successor
    was still valid, so the old certificate counted as expiring again (migration 0005's
    back-fill picks the latest unrevoked successor: the API now does the same).
    """
    old = api.issue(common_name="twice.example.com", validity="10D")
    renew = f"/api/v1/certificates/{old['id']}/renew"
    first = api.post(renew, api.admin_key, json={})
    assert first.status_code == 201, first.text
    second = api.post(renew, api.admin_key, json={})
    assert second.status_code == 201, second.text

    revoke = f"/api/v1/certificates/{second.json()['id']}/revoke"
    assert api.post(revoke, api.admin_key, json={}).status_code == 200
    got = api.get(f"/api/v1/certificates/{old['id']}", api.admin_key).json()
    assert (got["status"], got["renewed_by"]) == ("active", first.json()["id"])

    # With no unrevoked successor left, it needs renewing again.
    revoke = f"/api/v1/certificates/{first.json()['id']}/revoke"
    assert api.post(revoke, api.admin_key, json={}).status_code == 200
    got = api.get(f"/api/v1/certificates/{old['id']}", api.admin_key).json()
    assert (got["status"], got["renewed_by"]) == ("expiring", None)


def test_a_revoked_link_in_a_renewal_chain_hands_over_to_the_next(api: Api) -> None:
    """A → B → C, then B revoked: A stays renewed, by C, which carries the same names on."""
    a = api.issue(common_name="chain.example.com", validity="10D")
    b = api.post(f"/api/v1/certificates/{a['id']}/renew", api.admin_key, json={}).json()
    c = api.post(f"/api/v1/certificates/{b['id']}/renew", api.admin_key, json={}).json()
    assert (
        api.post(f"/api/v1/certificates/{b['id']}/revoke", api.admin_key, json={}).status_code
        == 200
    )
    got = api.get(f"/api/v1/certificates/{a['id']}", api.admin_key).json()
    assert (got["status"], got["renewed_by"]) == ("active", c["id"])
    # Twin: C revoked too, nothing carries A's names on: A needs renewing again.
    revoke_c = f"/api/v1/certificates/{c['id']}/revoke"
    assert api.post(revoke_c, api.admin_key, json={}).status_code == 200
    for cert in (a, b):
        got = api.get(f"/api/v1/certificates/{cert['id']}", api.admin_key).json()
        assert got["renewed_by"] is None, cert["id"]
    assert api.get(f"/api/v1/certificates/{a['id']}", api.admin_key).json()["status"] == "expiring"
