"""Per-address throttle on failed authentications (``auth.failure-limit`` per ``failure-window``).

After ``limit`` failed authentications from one client address within ``window_s`` seconds,
that address is refused (429 with ``Retry-After``) on every authenticated route for
``window_s`` seconds; then its count starts again from zero. An IPv6 address is also counted
in its /64, which blocks the whole /64 after ``NETWORK_FACTOR`` times ``limit`` failures: one
host or subscriber is handed a /64, and could otherwise use a fresh address for every guess.
State is in memory, per process, and bounded: at most ``max_sources`` addresses and networks
are tracked (when full, those with no failure left in the window are dropped, then the one
that failed least recently), and a new one costs the same however full the table is.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["NETWORK_FACTOR", "AuthFailureLimiter", "Block", "client_unit"]

MAX_SOURCES = 10_000
# Failures a whole IPv6 /64 may make, in limits of one address: not 1, or a Kubernetes node
# (its pods share the node's /64) would be blocked for one pod with a stale key, which its
# own limit stops after ``limit`` failures (refused requests are no failures).
NETWORK_FACTOR = 16
# What one host or subscriber is handed (RFC 6177, SLAAC): the unit of an IPv6 client.
IPV6_PREFIX = 64


@dataclass(frozen=True)
class Block:
    """What a failure blocked: the address, or its IPv6 /64, after ``failures`` failures."""

    unit: str
    failures: int


@functools.lru_cache(maxsize=4096)
def _network(source: str) -> str | None:
    """The IPv6 /64 ``source`` is in; None for IPv4 (mapped too) and what is no address."""
    try:
        address = ipaddress.IPv6Address(source)
    except ValueError:
        return None
    if address.ipv4_mapped is not None:
        # A dual-stack listener sees every IPv4 client in ::ffff:0:0/96: not one host.
        return None
    host_bits = 128 - IPV6_PREFIX
    network = ipaddress.IPv6Network((int(address) >> host_bits << host_bits, IPV6_PREFIX))
    return str(network)


def client_unit(source: str) -> str:
    """What one client holds: an IPv6 address's /64, else the address (IPv4, mapped too)."""
    return (_network(source) if ":" in source else None) or source


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
        # In the order of each unit's latest failure, the stale first (the clock is
        # monotonic): a full table drops from its front in O(1). A full table scanned every
        # unit for stale ones once: each new address then cost ``max_sources`` steps on the
        # event loop. With nothing stale it dropped the unit seen first, however recently it
        # failed: filling the table with fresh addresses wiped the count of one still
        # guessing. The unit quiet the longest is now dropped: to wipe a count, every other
        # unit of the table must fail after it (each failure a guess of its own).
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # address → monotonic time the block ends; in that order, as every block is one window
        self._blocked: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, source: str) -> float:
        """Seconds until ``source`` may try again; 0.0 when it is not blocked."""
        if not self._blocked:  # the common case, without the lock (one atomic read)
            return 0.0
        network = _network(source) if ":" in source else None
        now = self._clock()
        with self._lock:
            wait = self._wait(source, now)
            return wait if network is None else max(wait, self._wait(network, now))

    def _wait(self, unit: str, now: float) -> float:
        until = self._blocked.get(unit)
        if until is None:
            return 0.0
        if until > now:
            return until - now
        del self._blocked[unit]
        return 0.0

    def record_failure(self, source: str) -> bool:
        """Count one failure from ``source``; True when it blocks ``source`` (or its /64)."""
        return self.record(source) is not None

    def record(self, source: str) -> Block | None:
        """Count one failure from ``source``; what it blocked (the address or its /64), if any."""
        network = _network(source) if ":" in source else None
        now = self._clock()
        with self._lock:
            block = self._count(source, self.limit, now)
            if network is not None:
                block = self._count(network, self.limit * NETWORK_FACTOR, now) or block
            return block

    def _count(self, unit: str, limit: int, now: float) -> Block | None:
        times = self._failures.get(unit)
        if times is None:
            self._make_room(now)
            times = self._failures[unit] = deque(maxlen=limit)
        times.append(now)
        self._failures.move_to_end(unit)
        if len(times) < limit or times[0] <= now - self.window_s:
            return None
        del self._failures[unit]
        self._blocked[unit] = now + self.window_s
        while len(self._blocked) > self.max_sources:
            self._blocked.popitem(last=False)  # the block that ends first
        return Block(unit, limit)

    def _make_room(self, now: float) -> None:
        if len(self._failures) < self.max_sources:
            return
        horizon = now - self.window_s
        # Every stale unit, each looked at once: the scan stops at the first that is not.
        while self._failures:
            stale, times = next(iter(self._failures.items()))
            if times[-1] > horizon:
                break
            del self._failures[stale]
        while len(self._failures) >= self.max_sources:
            self._failures.popitem(last=False)  # the one quiet the longest
