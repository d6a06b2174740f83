"""Per-address throttle on failed authentications (``auth.failure-limit`` per ``failure-window``).

After ``limit`` failed authentications from one client address within ``window_s`` seconds,
that address is refused (429 with ``Retry-After``) on every authenticated route for
``window_s`` seconds; then its count starts again from zero. State is in memory, per process,
and bounded: at most ``max_sources`` addresses are tracked (the stalest are dropped first).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["AuthFailureLimiter"]

MAX_SOURCES = 10_000


class AuthFailureLimiter:
    """Counts authentication failures per client address and blocks noisy addresses."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Allow fewer than ``limit`` failures per ``window_s`` seconds per address.

        Raises:
            ValueError: ``limit`` or ``max_sources`` below 1, ``window_s`` not positive.
        """
        if limit < 1 or max_sources < 1:
            raise ValueError("limit and max_sources must be at least 1")
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.limit = limit
        self.window_s = window_s
        self.max_sources = max_sources
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._blocked: dict[str, float] = {}  # address → monotonic time the block ends
        self._lock = threading.Lock()

    def retry_after(self, source: str) -> float:
        """Seconds until ``source`` may try again; 0.0 when it is not blocked."""
        if not self._blocked:  # the common case, without the lock (one atomic read)
            return 0.0
        now = self._clock()
        with self._lock:
            until = self._blocked.get(source)
            if until is None:
                return 0.0
            if until > now:
                return until - now
            del self._blocked[source]
            return 0.0

    def record_failure(self, source: str) -> bool:
        """Count one failure from ``source``; True when it makes ``source`` blocked."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(source)
            if times is None:
                self._make_room(now)
                times = self._failures[source] = deque(maxlen=self.limit)
            times.append(now)
            if len(times) < self.limit or times[0] <= now - self.window_s:
                return False
            del self._failures[source]
            self._blocked[source] = now + self.window_s
            while len(self._blocked) > self.max_sources:
                del self._blocked[next(iter(self._blocked))]  # the block that ends first
            return True

    def _make_room(self, now: float) -> None:
        if len(self._failures) < self.max_sources:
            return
        horizon = now - self.window_s
        for stale in [s for s, times in self._failures.items() if times[-1] <= horizon]:
            del self._failures[stale]
        while len(self._failures) >= self.max_sources:
            del self._failures[next(iter(self._failures))]  # the address seen first
