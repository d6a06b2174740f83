"""A database pool with no connection free (database-pool-size) during a reconcile pass.

Before, the scheduler took SQLAlchemy's pool timeout for a bug: a traceback for every service
of the pass (each one waiting the pool timeout again), the services backed off as crashed,
and a traceback per pass when the pass could not even list them; on PostgreSQL a follower's
leadership check logged one too. Now the pass ends at the first one, in one warning line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine
from sqlalchemy.pool import QueuePool

from certctl.server.scheduler import Leadership, Scheduler
from certctl.services import service_reconcile
from certctl.services.context import Services
from certctl.store.db import PoolTimeout
from tests.services.conftest import Env, _make_env, service_doc

BUSY = "storage is busy: no database connection came free in time"


@contextmanager
def _every_connection_taken(engine: Engine) -> Iterator[None]:
    """Check out every pooled connection; a checkout then times out after 50 ms, not 10 s."""
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    pool._timeout = 0.05  # the pool timeout, private in SQLAlchemy; 10 s in certctl
    held: list[Connection] = []
    try:
        while True:
            try:
                held.append(engine.connect())
            except PoolTimeout:
                break
        yield
    finally:
        for connection in held:
            connection.close()


def test_a_pool_timeout_ends_the_pass_without_a_traceback(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env.put(service_doc("a"))
    env.put(service_doc("b"))
    real = service_reconcile.reconcile_service
    tried: list[str] = []

    def busy(services: Services, settings: Any, name: str, now: datetime) -> Any:
        # The services were listed; every connection is taken before the first reconcile.
        tried.append(name)
        with _every_connection_taken(services.engine):
            return real(services, settings, name, now)

    monkeypatch.setattr(service_reconcile, "reconcile_service", busy)
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    with pytest.raises(PoolTimeout):
        scheduler.tick()  # for run() to log, once
    assert tried == ["a"]  # not b too, after another wait for a connection
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert scheduler._crashed == {}  # not backed off: the store was busy, not the service
    monkeypatch.undo()
    assert scheduler.tick() == 2


def test_pool_timeouts_of_passes_are_one_warning_until_a_pass_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="certctl.scheduler")
    outcomes: list[BaseException | None] = [PoolTimeout("QueuePool limit")] * 2 + [None]
    scheduler = Scheduler(services=None, settings=None, interval_s=0.001)  # type: ignore[arg-type]
    done = asyncio.Event()

    def tick(**_: Any) -> int:
        if not outcomes:
            loop.call_soon_threadsafe(done.set)
            return 0
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return 0

    scheduler.tick = tick  # type: ignore[method-assign]

    async def main() -> None:
        runner = asyncio.create_task(scheduler.run())
        await asyncio.wait_for(done.wait(), timeout=10)
        # done is set inside the last pass: cancelled before that pass has returned, run()
        # also (rightly) logs that it waits for it, which is not what this test is about.
        while scheduler._pass is not None and not scheduler._pass.done():
            await asyncio.sleep(0.001)
        runner.cancel()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    lines = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert lines == [
        ("WARNING", f"reconcile pass failed: {BUSY}; retrying every 0 s", None),
        ("INFO", "reconcile passes work again", None),
    ]


@pytest.fixture
def pg_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    yield from _make_env(request, tmp_path, "postgresql")


def test_a_leadership_check_without_a_free_connection_is_one_warning(
    pg_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "certctl.scheduler")
    leadership = Leadership(pg_env.services)
    with _every_connection_taken(pg_env.services.engine):
        assert leadership.check() is False
        assert leadership.check() is False  # the next pass: nothing more said
    lines = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    # A replica that did not lead said "stepping down" at every pass while the store failed.
    assert lines == [
        (
            "WARNING",
            f"leadership check failed: {BUSY}; this replica does not lead, and tries again at "
            "every pass (said once it works)",
            None,
        )
    ]
    caplog.clear()
    assert leadership.check() is True  # a connection free again: it leads
    assert [r.getMessage() for r in caplog.records] == ["this replica is now the leader"]
    leadership.release()
    other = Leadership(pg_env.services)
    assert other.check() is True  # another replica leads now
    with _every_connection_taken(pg_env.services.engine):
        assert leadership.check() is False
    assert leadership.check() is False
    other.release()
    lines = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert lines[-2:] == [
        (
            "WARNING",
            f"leadership check failed: {BUSY}; this replica does not lead, and tries again at "
            "every pass (said once it works)",
            None,
        ),
        ("INFO", "leadership checks work again; another replica leads", None),
    ]
