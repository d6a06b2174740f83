"""Readiness: whether the store answers, asked at most once a second and never for long."""

from __future__ import annotations

import logging
import math
import time

import anyio
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from certctl.store.db import connection_reason

__all__ = ["READY_CHECK_TIMEOUT_S", "READY_CHECK_TTL_S", "DatabaseProbe"]

READY_CHECK_TTL_S = 1.0
READY_CHECK_TIMEOUT_S = 2.0
_ready_log = logging.getLogger("certctl.server")


class DatabaseProbe:
    """Whether the store answers ``SELECT 1``, for ``/readyz``.

    An answer is reused for ``READY_CHECK_TTL_S``, so probes from every kubelet and load
    balancer cost one query a second at most; at most one ping is in flight, so a database
    that does not answer ties up one thread, not one per probe; one slower than
    ``READY_CHECK_TIMEOUT_S`` counts as unreachable.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reachable = True
        self._checked_at = -math.inf
        self._in_flight_since: float | None = None
        self._why = ""  # the last failed ping's reason, " (…)" or ""

    async def reachable(self) -> bool:
        """The last answer if fresh, else a new one (False while a ping hangs)."""
        now = time.monotonic()
        if now - self._checked_at < READY_CHECK_TTL_S:
            return self._reachable
        started = self._in_flight_since
        if started is not None:
            return self._reachable and now - started < READY_CHECK_TIMEOUT_S
        self._in_flight_since = now
        reachable = False
        with anyio.move_on_after(READY_CHECK_TIMEOUT_S):
            reachable = await anyio.to_thread.run_sync(self._ping, abandon_on_cancel=True)
        if reachable != self._reachable:
            if reachable:
                _ready_log.info("the database answers again: ready")
            else:
                _ready_log.warning(
                    "the database does not answer%s: /readyz reports not ready", self._why
                )
        self._reachable, self._checked_at = reachable, time.monotonic()
        return reachable

    def _ping(self) -> bool:
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            # PostgreSQL's or libpq's reason, for the log line (never the probe's answer).
            self._why = connection_reason(exc)
            return False
        finally:
            self._in_flight_since = None
        return True
