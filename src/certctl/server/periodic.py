"""Background passes: the loop each periodic task runs in, and the metrics refresh it runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from certctl.errors import CertctlError
from certctl.metrics.registry import API_KEYS, certificate_gauges, service_gauges
from certctl.server.outage import OutageLog
from certctl.services import certificates, revocation
from certctl.services.context import Services
from certctl.store.db import PoolTimeout, connection_reason, storage_error
from certctl.store.models import ApiKey, Issuer, ManagedService

__all__ = ["refresh_metrics", "run_periodically"]

log = logging.getLogger("certctl.server")


_ISSUER_EXPIRY = select(Issuer.id, Issuer.not_after)
_SERVICE_STATES = select(
    ManagedService.name,
    ManagedService.conditions,
    ManagedService.not_after,
    ManagedService.renew_at,
)


def refresh_metrics(services: Services) -> None:
    """Recompute the certificate, managed-service and API-key gauges (off the scrape path)."""
    counts, nxt = certificates.certificate_counts(services)
    revoked_issuers = revocation.issuer_revocations(services)
    now = services.clock()
    with services.sessions() as session:
        issuers = {row.id: row.not_after for row in session.execute(_ISSUER_EXPIRY)}
        certificate_gauges.update(counts, nxt, issuers, revoked_issuers)
        service_gauges.update(
            (
                row.name,
                bool((row.conditions or {}).get("Ready", {}).get("status")),
                row.not_after,
                row.renew_at,
            )
            for row in session.execute(_SERVICE_STATES)
        )
        revoked = session.scalar(select(func.count()).where(ApiKey.revoked_at.is_not(None))) or 0
        expired = (
            session.scalar(
                select(func.count()).where(
                    ApiKey.revoked_at.is_(None),
                    ApiKey.expires_at.is_not(None),
                    ApiKey.expires_at <= now,
                )
            )
            or 0
        )
        total = session.scalar(select(func.count()).select_from(ApiKey)) or 0
    API_KEYS.labels("active").set(total - revoked - expired)
    API_KEYS.labels("expired").set(expired)
    API_KEYS.labels("revoked").set(revoked)


async def run_periodically(interval_s: float, work: Callable[[], Any], what: str) -> None:
    """Run ``work`` in a thread every ``interval_s`` seconds, forever; its failures logged.

    ``what`` names the work in the log lines.
    """
    # A database outage fails every pass of every worker: one line when it starts (and when
    # its reason changes) and one when it ends, not a traceback every ``interval_s``. So does
    # any error certctl raises on purpose; only bugs keep their traceback.
    outage = OutageLog(log, what, interval_s, f"{what} works again")
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(work)
        except (DBAPIError, PoolTimeout) as exc:  # PoolTimeout: a busy, smaller pool
            fault = storage_error(exc)
            if fault is None:
                log.exception("%s failed; will retry", what)
            else:
                outage.failed(fault.detail + connection_reason(exc))  # PostgreSQL's reason too
            continue
        except CertctlError as exc:
            # A failure certctl names (the Kubernetes API unreachable or refusing the CA
            # Secret, RBAC not there yet): its reason once, not a traceback every pass.
            outage.failed(exc.detail)
            continue
        except Exception:
            log.exception("%s failed; will retry", what)
            continue
        outage.worked()
