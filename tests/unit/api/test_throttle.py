"""AuthFailureLimiter: N failures within the window block an address for one window."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from certctl.api import throttle
from certctl.api.throttle import NETWORK_FACTOR, AuthFailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_blocks_at_the_limit_for_one_window() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(3, 60, clock=clock)
    assert [limiter.record_failure("a") for _ in range(3)] == [False, False, True]
    assert limiter.retry_after("a") == 60
    assert limiter.retry_after("b") == 0.0
    clock.now += 59.5
    assert limiter.retry_after("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.retry_after("a") == 0.0
    # The count starts again from zero after a block.
    assert limiter.record_failure("a") is False


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(3, 10, clock=clock)
    limiter.record_failure("a")
    limiter.record_failure("a")
    clock.now += 10
    assert limiter.record_failure("a") is False  # the first two have left the window
    clock.now += 1
    assert limiter.record_failure("a") is False
    assert limiter.record_failure("a") is True
    assert limiter.retry_after("a") == 10


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(2, 10, max_sources=100, clock=clock)
    for n in range(1000):
        limiter.record_failure(f"10.0.{n // 256}.{n % 256}")
        limiter.record_failure(f"10.0.{n // 256}.{n % 256}")  # blocked
    assert len(limiter._failures) <= 100
    assert len(limiter._blocked) <= 100
    assert limiter.retry_after("10.0.3.231") == 10  # the newest blocks are kept
    for n in range(1000):
        limiter.record_failure(f"192.0.2.{n}")  # one failure each: tracked, not blocked
    assert len(limiter._failures) <= 100


def test_a_full_table_drops_the_stale_first_then_the_least_recently_failing() -> None:
    """Before: with nothing stale, the address seen first was dropped however recently it
    failed, so filling the table with fresh addresses wiped the count of one still guessing."""
    clock = Clock()
    limiter = AuthFailureLimiter(3, 10, max_sources=3, clock=clock)
    for source in ("a", "b", "c"):
        limiter.record_failure(source)
        clock.now += 1
    clock.now = 1009  # a fails again: seen first, but no longer stale
    limiter.record_failure("a")
    clock.now = 1011.5  # b (failed at 1001) has left the window; c (1002) has not
    limiter.record_failure("d")
    assert set(limiter._failures) == {"a", "c", "d"}
    # Nothing stale: c goes, quiet since 1002; a, failing at 1009, keeps its count.
    limiter.record_failure("e")
    assert set(limiter._failures) == {"a", "d", "e"}
    clock.now = 1012
    assert limiter.record_failure("a") is False  # 1000 has left the window: 1009, 1012
    assert limiter.record_failure("a") is True  # the third within it
    limiter.record_failure("g")  # full again: d, e, g
    # Everything stale goes at once, not only what makes room for one.
    clock.now = 1100
    limiter.record_failure("f")
    assert list(limiter._failures) == ["f"]


def _lines_run(call: Callable[[], object]) -> int:
    """Lines of certctl.api.throttle that ``call`` runs (loop iterations each count)."""
    count = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        count += event == "line"
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == throttle.__file__ else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(previous)
    return count


@pytest.mark.parametrize(
    "fresh",
    [lambda n: f"10.1.{n // 256}.{n % 256}", lambda n: f"2001:db8:{n:x}::1"],
    ids=["ipv4", "ipv6-two-units-each"],
)
def test_a_new_address_costs_the_same_with_a_full_table(fresh: Callable[[int], str]) -> None:
    """Every new address scanned the whole table once it was full: an attacker rotating
    addresses made each failed request cost ``max_sources`` steps on the event loop."""
    clock = Clock()
    limiter = AuthFailureLimiter(3, 10, max_sources=2000, clock=clock)
    empty = _lines_run(lambda: limiter.record_failure(fresh(0)))
    for n in range(1, 2000):  # full: nothing stale, nothing blocked
        limiter.record_failure(fresh(n))
    assert len(limiter._failures) == 2000
    full = [_lines_run(lambda n=n: limiter.record_failure(fresh(n))) for n in range(2000, 2100)]
    assert max(full) <= 2 * empty, (empty, max(full))
    # All stale: dropping them costs once, not again for every new address.
    clock.now += 10
    stale = [_lines_run(lambda n=n: limiter.record_failure(fresh(n))) for n in range(3000, 3100)]
    assert sum(stale) <= 100 * 2 * empty + 8 * 2000, (empty, sum(stale))
    assert len(limiter._failures) <= 2000


@pytest.mark.parametrize(
    ("limit", "window", "message"),
    [(0, 10, "limit"), (3, 0, "window_s"), (3, -1, "window_s")],
)
def test_refuses_bad_settings(limit: int, window: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuthFailureLimiter(limit, window)


def _in_64(n: int) -> str:
    return f"2001:db8:1:2::{n:x}"


def test_addresses_of_one_ipv6_64_share_a_budget() -> None:
    """One IPv6 host holds a whole /64: one failure per address was never throttled."""
    clock = Clock()
    limiter = AuthFailureLimiter(3, 60, clock=clock)
    budget = 3 * NETWORK_FACTOR
    assert not any(limiter.record_failure(_in_64(n)) for n in range(1, budget))
    assert limiter.record_failure(_in_64(budget)) is True
    # Every address of that /64 is refused now, fresh ones too; the next /64 is not.
    assert limiter.retry_after(_in_64(0xFFFF)) == 60
    assert limiter.retry_after("2001:db8:1:2:ffff:ffff:ffff:ffff") == 60
    assert limiter.retry_after("2001:db8:1:3::1") == 0.0
    clock.now += 60
    assert limiter.retry_after(_in_64(1)) == 0.0


def test_one_ipv6_address_still_has_its_own_limit() -> None:
    """One client failing again and again is blocked alone, not its /64 (a node's pods)."""
    limiter = AuthFailureLimiter(3, 60, clock=Clock())
    assert [limiter.record_failure(_in_64(1)) for _ in range(3)] == [False, False, True]
    assert limiter.retry_after(_in_64(1)) == 60
    assert limiter.retry_after(_in_64(2)) == 0.0
    # Refused requests are not failures: a blocked client adds nothing more to its /64.
    for n in range(2, NETWORK_FACTOR):
        assert [limiter.record_failure(_in_64(n)) for _ in range(3)] == [False, False, True]
    assert limiter.retry_after(_in_64(0xFFFF)) == 0.0


@pytest.mark.parametrize("form", ["::ffff:192.0.2.{n}", "192.0.2.{n}"])
def test_ipv4_clients_are_never_grouped(form: str) -> None:
    """A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d, all in one IPv6 /64."""
    limiter = AuthFailureLimiter(3, 60, clock=Clock())
    for n in range(1, 250):
        limiter.record_failure(form.format(n=n))
        limiter.record_failure(form.format(n=n))
    assert limiter.retry_after(form.format(n=250)) == 0.0
    assert limiter.retry_after(form.format(n=1)) == 0.0
    assert limiter.record_failure(form.format(n=1)) is True
    assert limiter.retry_after(form.format(n=1)) == 60
    assert limiter.retry_after(form.format(n=2)) == 0.0


def test_sources_that_are_no_address_are_counted_as_given() -> None:
    limiter = AuthFailureLimiter(2, 60, clock=Clock())
    assert [limiter.record_failure("testclient") for _ in range(2)] == [False, True]
    assert limiter.retry_after("testclient") == 60
    assert limiter.retry_after("unix:/run/certctl.sock") == 0.0
