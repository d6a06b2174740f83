"""Prometheus metrics (DESIGN §5) on certctl's own registry.

Cardinality is bounded by issuers, statuses, routes and results — never by certificates.
Certificate counts and managed-service states come from snapshots refreshed in the background
(see ``CertificateGauges``, ``ServiceGauges``), so a scrape never touches the store.

With ``workers > 1`` (``PROMETHEUS_MULTIPROC_DIR`` set before this module is imported, see
``certctl.server.workers``) every worker writes its counters to memory-mapped files and a
scrape, whichever worker answers it, sums them; gauges report the value last set by any
worker (``mostrecent``). Process metrics (``process_*``) are left out then: they would describe
only the worker that happened to answer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from certctl import __version__

__all__ = [
    "API_KEYS",
    "AUTH_FAILURES",
    "DELIVERIES",
    "HTTP_CONNECTIONS_REFUSED",
    "HTTP_DURATION",
    "HTTP_REQUESTS",
    "ISSUANCE",
    "ISSUANCE_DURATION",
    "OCSP_RESPONSES",
    "REGISTRY",
    "RENEWALS",
    "REVOCATIONS",
    "TLS_AUTO_RENEWED",
    "TLS_HANDSHAKE_FAILURES",
    "TLS_NOT_AFTER",
    "TLS_RELOADS",
    "CertificateGauges",
    "ServiceGauges",
    "certificate_gauges",
    "exposition_registry",
    "service_gauges",
]

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

# prometheus_client exports a `<name>_created` timestamp beside every counter and histogram
# child in the text format; Prometheus ingests each as a series of its own. That doubled the
# counter series (one per method × route × status) for a value no dashboard reads, and the
# multi-process mode (workers > 1) never exported them, so a scrape's series changed with
# --workers. Process-wide, which is what certctl serve is.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
if MULTIPROCESS_DIR is None:
    ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

ISSUANCE = Counter(
    "certctl_issuance", "Certificates issued", ["issuer", "result"], registry=REGISTRY
)
ISSUANCE_DURATION = Histogram(
    "certctl_issuance_duration_seconds",
    "Time to issue and persist one certificate",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
REVOCATIONS = Counter("certctl_revocations", "Certificates revoked", ["issuer"], registry=REGISTRY)
OCSP_RESPONSES = Counter(
    "certctl_ocsp_responses",
    "OCSP responses, by what they said: good, revoked, unknown, malformed, unauthorized, "
    "trylater, internalerror",
    ["status"],
    registry=REGISTRY,
)
RENEWALS = Counter("certctl_renewals", "Certificate renewals", ["result"], registry=REGISTRY)
HTTP_REQUESTS = Counter(
    "certctl_http_requests", "HTTP requests", ["method", "route", "status"], registry=REGISTRY
)
HTTP_DURATION = Histogram(
    "certctl_http_request_duration_seconds",
    "HTTP request duration",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "certctl_http_connections_refused",
    "New connections closed at once because http.max-connections were open",
    ["listener"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "certctl_auth_failures",
    "Authentication and authorization failures",
    ["reason"],
    registry=REGISTRY,
)
API_KEYS = Gauge(
    "certctl_api_keys",
    "API keys by state",
    ["state"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
TLS_NOT_AFTER = Gauge(
    "certctl_tls_certificate_not_after_timestamp_seconds",
    "NotAfter of the certificate each listener serves",
    ["listener"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
# Beside TLS_NOT_AFTER: an alert on the served certificate needs to know who renews it.
# certctl renews its self-signed one 24 h ahead (an alert a week ahead fired before every
# renewal); a custom one is the operator's, who needs the week (12 h ahead was too late).
TLS_AUTO_RENEWED = Gauge(
    "certctl_tls_certificate_auto_renewed",
    "1 when certctl renews the certificate each listener serves (tls.mode self-signed), "
    "0 when it is the operator's (custom)",
    ["listener"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
DELIVERIES = Counter(
    "certctl_target_deliveries", "Bundle deliveries to targets", ["result"], registry=REGISTRY
)
TLS_RELOADS = Counter(
    "certctl_tls_reloads", "TLS certificate reloads", ["result"], registry=REGISTRY
)
TLS_HANDSHAKE_FAILURES = Counter(
    "certctl_tls_handshake_failures",
    "TLS handshakes that failed, by what failed (server.handshake_failures.REASONS)",
    ["listener", "reason"],
    registry=REGISTRY,
)
Gauge(
    "certctl_build_info",
    "certctl build",
    ["version"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
).labels(__version__).set(1)

# Every reason is exported from the start at 0: a series born at its first failure hides that
# failure from increase() and rate(), so an alert on the first throttling never fired.
for _reason in ("missing", "invalid", "expired", "revoked", "forbidden", "ratelimited"):
    AUTH_FAILURES.labels(_reason)
for _result in ("success", "error"):
    TLS_RELOADS.labels(_result)
    RENEWALS.labels(_result)
    DELIVERIES.labels(_result)


class CertificateGauges(Collector):
    """Serves the latest snapshot of certificate counts; refreshed off the scrape path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._next_expiry: dict[str, float] = {}
        self._issuer_not_after: dict[str, float] = {}
        self._revoked_issuers: frozenset[str] = frozenset()

    def update(
        self,
        counts: dict[tuple[str, str], int],
        next_expiry: dict[str, datetime],
        issuer_not_after: dict[str, datetime],
        revoked_issuers: Iterable[str] = (),
    ) -> None:
        """Replace the snapshot.

        ``counts``: (issuer, status) → count; ``next_expiry``: issuer → earliest notAfter among
        its unexpired, unrevoked, not renewed certificates (the ``expiring`` ones too);
        ``issuer_not_after``: issuer → its own certificate's notAfter; ``revoked_issuers``:
        the issuers revoked, or below a revoked CA.
        """
        with self._lock:
            self._counts = dict(counts)
            self._next_expiry = {k: v.timestamp() for k, v in next_expiry.items()}
            self._issuer_not_after = {k: v.timestamp() for k, v in issuer_not_after.items()}
            self._revoked_issuers = frozenset(revoked_issuers)

    def collect(self) -> Iterable[Metric]:
        """Yield the gauges from the snapshot."""
        with self._lock:
            counts, expiry = self._counts, self._next_expiry
            issuers, revoked = self._issuer_not_after, self._revoked_issuers
        family = GaugeMetricFamily(
            "certctl_certificates", "Certificates by issuer and status", labels=["issuer", "status"]
        )
        for (issuer, status), value in sorted(counts.items()):
            family.add_metric([issuer, status], value)
        yield family
        nxt = GaugeMetricFamily(
            "certctl_certificate_next_expiry_timestamp_seconds",
            "Earliest notAfter per issuer among its unexpired, unrevoked certificates that were "
            "not renewed (expiring ones included)",
            labels=["issuer"],
        )
        for issuer, ts in sorted(expiry.items()):
            nxt.add_metric([issuer], ts)
        yield nxt
        # Imported and intermediate issuers are not renewed by the server: alert on this.
        own = GaugeMetricFamily(
            "certctl_issuer_not_after_timestamp_seconds",
            "NotAfter of each issuer's own CA certificate",
            labels=["issuer"],
        )
        for issuer, ts in sorted(issuers.items()):
            own.add_metric([issuer], ts)
        yield own
        # A revoked intermediate (the way to retire one: issuers are never deleted) signs
        # nothing more, yet an alert on the notAfter above fired for it, and went on firing
        # once it expired: the rules leave out the issuers this says are revoked.
        retired = GaugeMetricFamily(
            "certctl_issuer_revoked",
            "1 when the issuer is revoked, or below a revoked CA: it signs nothing more",
            labels=["issuer"],
        )
        for issuer in sorted(issuers):
            retired.add_metric([issuer], 1 if issuer in revoked else 0)
        yield retired
        # certctl_certificates counts each certificate by its own status (its issuer's CRL
        # does not list those below a revoked CA): what to re-issue elsewhere, counted apart.
        under = GaugeMetricFamily(
            "certctl_certificates_under_revoked_issuer",
            "Unexpired, unrevoked certificates whose issuer, or a CA above it, is revoked "
            "(clients checking the whole chain's CRLs refuse them)",
            labels=["issuer"],
        )
        for issuer in sorted({issuer for issuer, _ in counts}):
            live = counts.get((issuer, "active"), 0) + counts.get((issuer, "expiring"), 0)
            under.add_metric([issuer], live if issuer in revoked else 0)
        yield under

    def describe(self) -> Iterable[Metric]:
        """Describe without collecting (keeps registration cheap)."""
        return []


certificate_gauges = CertificateGauges()
REGISTRY.register(certificate_gauges)


class ServiceGauges(Collector):
    """Managed services (TLSService) as last read from the store; refreshed off the scrape path.

    Built from the store rather than set by the reconciler: every worker and every replica
    reports the same series (only the leader reconciles), and a deleted service's series go
    with it instead of reporting its last state until the process restarts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[tuple[str, bool, float | None, float | None]] = []

    def update(self, rows: Iterable[tuple[str, bool, datetime | None, datetime | None]]) -> None:
        """Replace the snapshot: (name, ready, certificate notAfter, next renewal) per service."""
        snapshot = [
            (
                name,
                ready,
                None if not_after is None else not_after.timestamp(),
                None if renew_at is None else renew_at.timestamp(),
            )
            for name, ready, not_after, renew_at in rows
        ]
        with self._lock:
            self._rows = sorted(snapshot)

    def collect(self) -> Iterable[Metric]:
        """Yield the gauges from the snapshot."""
        with self._lock:
            rows = self._rows
        ready = GaugeMetricFamily(
            "certctl_service_ready", "1 when a managed service is Ready", labels=["service"]
        )
        not_after = GaugeMetricFamily(
            "certctl_service_certificate_not_after_timestamp_seconds",
            "NotAfter of each managed service's serving certificate",
            labels=["service"],
        )
        renewal = GaugeMetricFamily(
            "certctl_service_next_renewal_timestamp_seconds",
            "When each managed service's certificate is renewed next",
            labels=["service"],
        )
        for name, is_ready, expires, renews in rows:
            ready.add_metric([name], 1 if is_ready else 0)
            if expires is not None:
                not_after.add_metric([name], expires)
            if renews is not None:
                renewal.add_metric([name], renews)
        yield ready
        yield not_after
        yield renewal

    def describe(self) -> Iterable[Metric]:
        """Describe without collecting (keeps registration cheap)."""
        return []


service_gauges = ServiceGauges()
REGISTRY.register(service_gauges)


_MULTIPROCESS_REGISTRY: CollectorRegistry | None = None


def exposition_registry() -> CollectorRegistry:
    """What a scrape serializes: this process's registry, or every worker's values summed."""
    global _MULTIPROCESS_REGISTRY
    if MULTIPROCESS_DIR is None:
        return REGISTRY
    if _MULTIPROCESS_REGISTRY is None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
        PlatformCollector(registry=registry)
        registry.register(certificate_gauges)
        registry.register(service_gauges)
        _MULTIPROCESS_REGISTRY = registry
    return _MULTIPROCESS_REGISTRY
