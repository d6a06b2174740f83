"""``ConnectionGate``: the count, the refusal callback and the once-a-minute log line."""

from __future__ import annotations

import asyncio
import logging

import pytest

from certctl.server.protocol import ConnectionGate


def test_refuses_beyond_the_limit_until_one_is_released(caplog: pytest.LogCaptureFixture) -> None:
    refused: list[str] = []
    gate = ConnectionGate(2, refused=refused.append)
    assert gate.admit("main")
    assert gate.admit("main")
    with caplog.at_level(logging.WARNING, logger="certctl.server"):
        assert not gate.admit("main")
        assert not gate.admit("main")
    assert refused == ["main", "main"]
    assert gate.open == 2
    # Once a minute: the second refusal is counted, not logged.
    assert [r.getMessage() for r in caplog.records] == [
        "refusing new connections: 2 open, http.max-connections is 2 "
        "(this line at most once a minute)"
    ]
    gate.release()
    assert gate.admit("main")
    assert gate.open == 2


def test_headroom_and_the_next_line_counts_what_was_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = ConnectionGate(1)
    assert gate.admit("main")
    assert not gate.admit("main")
    assert gate.admit("metrics", headroom=1)  # the metrics listener's own room
    assert not gate.admit("metrics", headroom=1)
    gate.LOG_EVERY_S = 0.0  # the minute has passed
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="certctl.server"):
        assert not gate.admit("main")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("refused 2 new connections in the last 0 s: 2 open")


def test_a_burst_that_ends_is_still_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    # The count of refusals after the first line waited for the next refusal, maybe forever.
    async def burst() -> list[str]:
        gate = ConnectionGate(1)
        gate.LOG_EVERY_S = 0.2
        assert gate.admit("main")
        with caplog.at_level(logging.WARNING, logger="certctl.server"):
            for _ in range(3):
                assert not gate.admit("main")
            await asyncio.sleep(0.7)  # the burst is over; no refusal comes to write the count
            assert not gate.admit("main")  # a new burst starts with its own first line
        return [r.getMessage() for r in caplog.records]

    first, summary, again = asyncio.run(burst())
    assert first.startswith("refusing new connections: 1 open")
    assert summary.startswith("refused 2 new connections in the last 0 s: 1 open")
    assert again.startswith("refusing new connections: 1 open")
