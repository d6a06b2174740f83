"""The PostgreSQL connections a leader holds: the leader lock's and the service-change listener's.

The Helm chart's connection budget counts one listening connection for the whole deployment
(docs/kubernetes.md). Here: a leader that steps down or stops has closed its listener by the
time it says so (before, the listener saw it at its next look-up, up to ``POLL_S`` later,
while a new leader could already listen).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from certctl.server import service_changes
from certctl.server.scheduler import Scheduler
from certctl.server.service_changes import _PostgresWatch, watch_changes
from tests.services.conftest import Env, _make_env

# Far longer than the test: only what the test asks for makes a pass.
INTERVAL_S = 120.0


@pytest.fixture
def pg_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    yield from _make_env(request, tmp_path, "postgresql")


def _waited(what: str, check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s", pytrace=False)
        time.sleep(0.02)


def _listener(scheduler: Scheduler) -> Any:
    watch = scheduler._changes
    assert isinstance(watch, _PostgresWatch)
    return watch._connection


def test_a_leader_that_steps_down_has_closed_its_listener_when_its_pass_returns(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service_changes, "POLL_S", 0.2)  # becoming leader: listens sooner
    services = pg_env.services
    scheduler = Scheduler(services, pg_env.settings, INTERVAL_S)
    scheduler._changes = watch_changes(services.engine, lambda: None, scheduler._leading.is_set)
    assert scheduler._changes is not None
    scheduler._changes.start()
    try:
        scheduler.tick()  # leads
        _waited("the leader to listen", lambda: _listener(scheduler) is not None)
        listening = _listener(scheduler)
        leadership = scheduler.leadership
        assert leadership is not None
        lock_pid = leadership._connection.connection.driver_connection.info.backend_pid
        admin_url = services.engine.url.set(drivername="postgresql")
        with psycopg.connect(admin_url.render_as_string(hide_password=False)) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (lock_pid,))
        caplog.set_level(logging.CRITICAL, "certctl.scheduler")  # the check's traceback
        assert scheduler.tick() == 0  # the lock's session ended: it steps down
        # Before, the listener was still open here, up to POLL_S more, while another
        # replica could take the lock and listen too.
        assert listening.closed, "the old leader still listens after stepping down"
        assert _listener(scheduler) is None
    finally:
        scheduler._changes.stop()
        assert scheduler._changes.join(10)
        if scheduler.leadership is not None:
            scheduler.leadership.release()


def test_a_stopped_scheduler_has_closed_its_listener_when_run_returns(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_changes, "POLL_S", 0.2)  # becoming leader: listens sooner
    scheduler = Scheduler(pg_env.services, pg_env.settings, INTERVAL_S, watch_changes=True)
    loop = asyncio.new_event_loop()
    task = loop.create_task(scheduler.run())
    thread = threading.Thread(
        target=lambda: loop.run_until_complete(asyncio.wait([task])), daemon=True
    )
    thread.start()
    try:
        _waited(
            "the leader to listen",
            lambda: scheduler._changes is not None and bool(_listener(scheduler)),
        )
        listening = _listener(scheduler)
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the scheduler loop did not stop when cancelled"
        # Before, run() returned at once and the listener went on for up to POLL_S.
        assert listening.closed, "the listener outlived the scheduler's run()"
        assert scheduler._changes is not None
        assert scheduler._changes.join(0)
    finally:
        # The pass in flight when cancelled goes on in its thread: done before the store goes.
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        if scheduler.leadership is not None:
            scheduler.leadership.release()
