"""AuthFailureLimiter: N failures within the window block an address for one window."""

from __future__ import annotations

import pytest

from certctl.api.throttle import AuthFailureLimiter


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


@pytest.mark.parametrize(
    ("limit", "window", "message"),
    [(0, 10, "limit"), (3, 0, "window_s"), (3, -1, "window_s")],
)
def test_refuses_bad_settings(limit: int, window: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuthFailureLimiter(limit, window)
