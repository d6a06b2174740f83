"""Scheduler.run: a wake() that arrives while a pass runs starts the next pass at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from certctl.server.scheduler import Scheduler


def test_a_wake_during_a_pass_is_not_lost() -> None:
    # `certctl apply -f` with two documents PUTs the second while the pass the first woke
    # is running (a reload command can hold it for up to 30 s). That wake was cleared when
    # the pass ended, so the second service waited a whole reconcile-interval (10 s).
    interval = 30.0
    scheduler = Scheduler(services=None, settings=None, interval_s=interval)  # type: ignore[arg-type]
    passes: list[float] = []

    def tick(**_: Any) -> int:
        passes.append(time.monotonic())
        if len(passes) == 1:
            scheduler.wake()  # a PUT answered while this pass runs
        return 0

    scheduler.tick = tick  # type: ignore[method-assign]

    async def main() -> None:
        runner = asyncio.create_task(scheduler.run())
        try:
            for _ in range(200):
                if len(passes) >= 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            runner.cancel()

    asyncio.run(main())
    assert len(passes) >= 2, f"the woken pass waited for the {interval:.0f} s interval"
    assert passes[1] - passes[0] < 1.0
