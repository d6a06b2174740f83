"""The cap on a process's open connections (``http.max-connections``), counted from accept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

__all__ = ["ConnectionGate"]

log = logging.getLogger("certctl.server")


class ConnectionGate:
    """The open connections of one process, at most ``limit`` (``http.max-connections``).

    Without a bound, a client opening thousands of idle connections used up the process's
    file descriptors (``RLIMIT_NOFILE``): accept() then failed for everyone, Prometheus
    included, and so did every file the server opens (SQLite, certificates), silently. Counted
    from accept, before the TLS handshake, since a descriptor is held from then on; beyond
    the limit a connection is closed at once, before any TLS work (a refusal costs microseconds,
    a handshake a millisecond of CPU), logged at most once a minute and counted in
    ``certctl_http_connections_refused_total{listener}``. One gate serves every listener of
    the process; a listener may be given ``headroom`` above the limit (the metrics listener,
    so that Prometheus still gets in while the main listener is full).
    """

    LOG_EVERY_S = 60.0

    def __init__(self, limit: int, refused: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.open = 0
        self._refused = refused
        self._unlogged = 0
        self._logged_at: float | None = None
        # Writes the count of refusals not logged yet once the minute is over, so a burst
        # that ends is still reported (not only when the next refusal comes, maybe never).
        self._summary: asyncio.TimerHandle | None = None

    def admit(self, listener: str, headroom: int = 0) -> bool:
        """Count one more open connection, or refuse it: False when ``limit`` are open."""
        if self.open < self.limit + headroom:
            self.open += 1
            return True
        if self._refused is not None:
            self._refused(listener)
        self._unlogged += 1
        now = time.monotonic()
        quiet = self._logged_at is None or now - self._logged_at >= self.LOG_EVERY_S
        if quiet and self._unlogged == 1:  # the first refusal of a burst
            log.warning(
                "refusing new connections: %d open, http.max-connections is %d "
                "(this line at most once a minute)",
                self.open,
                self.limit,
            )
            self._logged_at = now
            self._unlogged = 0
        elif quiet:
            self._log_summary()
        elif self._summary is None and self._logged_at is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next refusal logs
                self._summary = asyncio.get_running_loop().call_later(
                    self.LOG_EVERY_S - (now - self._logged_at), self._log_summary
                )
        return False

    def _log_summary(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if not self._unlogged or self._logged_at is None:
            return
        now = time.monotonic()
        log.warning(
            "refused %d new connections in the last %.0f s: %d open, http.max-connections is %d",
            self._unlogged,
            now - self._logged_at,
            self.open,
            self.limit,
        )
        self._logged_at = now
        self._unlogged = 0

    def release(self) -> None:
        """One counted connection closed."""
        self.open -= 1
