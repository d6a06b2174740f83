"""When a service is due for a reconcile: renewal times, resync spread, back-off."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from certctl.services.service_ca import retired_cas
from certctl.services.service_rows import MALFORMED, stored_certificate
from certctl.store.models import ManagedService

__all__ = ["RESYNC_INTERVAL", "backoff", "due"]


_MAX_BACKOFF = timedelta(minutes=5)
_FIRST_BACKOFF = timedelta(seconds=5)
RESYNC_INTERVAL = timedelta(minutes=10)


def backoff(attempts: int) -> timedelta:
    """Delay before retry ``attempts``: 5 s doubling up to 5 minutes."""
    delay: timedelta = _FIRST_BACKOFF * (2 ** min(max(0, attempts - 1), 10))
    return min(delay, _MAX_BACKOFF)


def due(
    row: ManagedService,
    now: datetime,
    *,
    resync: timedelta | None = None,
    last_pass: datetime | None = None,
    since: datetime | None = None,
    secret_unchanged: bool = False,
) -> bool:
    """Whether the scheduler should reconcile this service now.

    ``resync``: also when the last reconcile is at least this old (the scheduler passes
    ``RESYNC_INTERVAL``), so a target deleted or overwritten by hand is delivered again
    soon, not at the next renewal months later; as Kubernetes controllers resync.
    ``last_pass``: when the caller last reconciled it; unknown (a scheduler that has not
    yet, after a start or a change of leader), the latest condition time, which no pass
    since moved: the latest pass that changed something. Kept apart from the conditions,
    which change only when the service does.
    ``since``: when the caller started reconciling (its start, or its election as leader).
    A service's resyncs then fall on ``since`` + an offset fixed by its name + k ``resync``:
    the first such point after its last pass (never more than ``resync`` after it), so
    services reconciled in one pass (created together) do not resync together ever after.
    A service it has not reconciled yet and whose resync is due by the conditions' time
    gets it at its point of ``[since, since + resync)``: most services are, and all of them
    in the first pass was a burst of reconciles and reloads at every restart. A service
    with work to do (above) is never held back.
    ``secret_unchanged``: the caller read the custom certificate's secret and it holds what
    it held at its last reconcile, with no validity boundary passed since
    (``custom_secret_unchanged``); the service is then due by the other rules only. Otherwise
    a service with a custom certificate is due at every pass.
    """
    if row.generation != row.reconciled_generation:
        return True  # new or changed spec
    if row.next_attempt_at is not None:
        return now >= row.next_attempt_at  # retrying after a failure, with back-off
    certificate = stored_certificate(row)
    if certificate is MALFORMED:
        # Edited in the database: its reconcile says why (Failed) and backs it off; read
        # here with .get(), it raised in every pass, for every service.
        return True
    if certificate and not secret_unchanged:
        return True  # a custom secret can change at any time
    ends = [until for _, until in retired_cas(row)]
    if any(t is not None and now >= t for t in (row.renew_at, row.ca_renew_at, *ends)):
        return True
    if resync is None:
        return False
    if last_pass is not None:
        if since is None or resync <= timedelta(0):
            return now - last_pass >= resync
        # The resyncs of a service fall on its own points, ``since`` + its offset + k
        # intervals: at most one interval after its last pass, whatever that pass was for.
        # Counted from each last pass, services reconciled in one pass (created together,
        # or a new CA) were resynced together for good, every interval.
        offset = since + _resync_offset(row.name, resync)
        return last_pass < offset + (now - offset) // resync * resync
    last = _last_transition(row)
    natural = None if last is None else last + resync
    if since is None:
        return natural is None or now >= natural
    first = since + _resync_offset(row.name, resync)
    if natural is not None and natural > since:
        first = min(first, natural)  # due later anyway: kept, or spread sooner
    return now >= first


def _resync_offset(name: str, resync: timedelta) -> timedelta:
    """Where in each resync interval of a scheduler ``name`` is resynced.

    From a hash of the name, so every restart and every replica puts it at the same point
    and the services spread evenly, however many there are.
    """
    digest = int.from_bytes(hashlib.sha256(f"resync:{name}".encode()).digest()[:8], "big")
    span = resync // timedelta(microseconds=1)
    return timedelta(microseconds=digest % span) if span > 0 else timedelta(0)


def _last_transition(row: ManagedService) -> datetime | None:
    conditions = row.conditions if isinstance(row.conditions, dict) else {}
    times = [c.get("at") for c in conditions.values() if isinstance(c, dict)]
    try:
        parsed = [datetime.fromisoformat(t) for t in times if isinstance(t, str)]
    except ValueError:  # edited in the database: resync rather than fail every pass
        return None
    return max((t if t.tzinfo else t.replace(tzinfo=UTC) for t in parsed), default=None)
