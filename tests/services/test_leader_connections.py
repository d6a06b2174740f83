"""The PostgreSQL connections a leader holds: the leader lock's and the service-change listener's.

The Helm chart's connection budget counts one listening connection for the whole deployment
(docs/kubernetes.md), and the leader lock lives exactly as long as its session. Here: a
leader that steps down or stops has closed its listener by the time it says so (before, the
listener saw it at its next look-up, up to ``POLL_S`` later, while a new leader could already
listen), a leader whose lock session is ended from outside steps down at once while another
replica takes over (before, it went on saying it led until its next pass), and an
``idle_session_timeout`` shorter than the reconcile interval no longer ends
the sessions that hold the advisory locks (before, it ended the leadership every pass).
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
from sqlalchemy import Engine, text

from certctl.server import service_changes
from certctl.server.kek_rotation import _no_leader
from certctl.server.scheduler import Leadership, Scheduler
from certctl.server.service_changes import _PostgresWatch, watch_changes
from certctl.services.context import Services
from certctl.services.credential_counter import PostgresCounter
from certctl.store.db import (
    LEADER_LOCK,
    SERVICE_CHANGES_CHANNEL,
    STARTUP_LOCK,
    create_store_engine,
    session_factory,
    startup_lock,
)
from tests.services.conftest import Env, _make_env, service_doc

# Far longer than the test: only what the test asks for makes a pass.
INTERVAL_S = 120.0
# The idle_session_timeout the tests give their sessions (ms), as a role or database setting
# would: far shorter than any reconcile interval. It applies from each session's start, so it
# must also outlast the longest wait between two statements of a session being opened (its
# connect-time SETs, the lock, the exempting SET): 3-11 ms alone, up to 237 ms measured on the
# 2-core machine under a load average above 10, where 200 ms ended sessions before the
# product could exempt them.
IDLE_MS = 1000
# Idle for longer than that: a session left under the timeout is ended meanwhile (each test
# shows it on one of its own), one that is exempt is not.
IDLE_WAIT_S = 1.5 * IDLE_MS / 1000
# A follower's reconcile interval where a test needs one to take over soon.
FOLLOWER_S = 0.2


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


def test_a_leader_whose_lock_session_ends_steps_down_at_once_and_another_leads(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Two replicas, as certctl serve runs them (run(), with the change watch). The leader's
    # lock session is ended from outside (pg_terminate_backend; a cut seen by its keepalives
    # is the same end, later): it must stop acting as leader before its next pass, here
    # reconcile-interval (2 minutes) away, while the other replica takes over.
    monkeypatch.setattr(service_changes, "POLL_S", 0.2)  # becoming leader: listens sooner
    caplog.set_level(logging.INFO, "certctl.scheduler")
    leader = Scheduler(pg_env.services, pg_env.settings, INTERVAL_S, watch_changes=True)
    lead_run = _run(leader)
    # A follower that tries the lock every FOLLOWER_S: it takes over at its next pass.
    follower = Scheduler(pg_env.services, pg_env.settings, FOLLOWER_S, watch_changes=True)
    follow_run: tuple[asyncio.AbstractEventLoop, asyncio.Task[None], Any] | None = None
    try:
        _waited(
            "the leader to listen",
            lambda: leader._changes is not None and bool(_listener(leader)),
        )
        follow_run = _run(follower)
        _waited("the follower's first pass", lambda: follower.leadership is not None)
        time.sleep(3 * FOLLOWER_S)
        assert not follower._leading.is_set(), "two leaders before the lock session ended"
        listening = _listener(leader)
        leadership = leader.leadership
        assert leadership is not None
        lock_pid = leadership._connection.connection.driver_connection.info.backend_pid
        admin_url = pg_env.services.engine.url.set(drivername="postgresql")
        with psycopg.connect(admin_url.render_as_string(hide_password=False)) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (lock_pid,))
        # Before, the old leader found out at its next pass: its listener stayed open next
        # to the new leader's, and its webhook dispatcher went on asking a lock it had not.
        # Now the watch sees the lock's session end, and the pass it wakes steps down.
        _waited("the old leader to stop leading", lambda: not leader._leading.is_set(), 3)
        _waited("the old leader to close its listener", lambda: listening.closed, 3)
        _waited("the old leader to step down", lambda: leader._since is None, 3)
        _waited("the other replica to lead", follower._leading.is_set, 5)
        _waited(
            "the other replica to listen",
            lambda: follower._changes is not None and bool(_listener(follower)),
            5,
        )
        # One leader, and one listening connection for the deployment, from then on: the
        # old one does not take the lock back.
        _waited("one listener left", lambda: _listeners(pg_env) == 1, 3)
        deadline = time.monotonic() + 5 * FOLLOWER_S
        while time.monotonic() < deadline:
            assert not leader._leading.is_set(), "the old leader leads again"
            assert follower._leading.is_set(), "the new leader stepped down"
            time.sleep(0.02)
        assert _listeners(pg_env) == 1
    finally:
        if follow_run is not None:
            _end(follower, *follow_run)
        _end(leader, *lead_run)
    records = [r for r in caplog.records if r.name == "certctl.scheduler"]
    messages = [r.getMessage() for r in records]
    # One line naming why, no traceback: the session's end is the database's doing, not a bug.
    lost = [r for r in records if r.getMessage().startswith("leadership check failed")]
    assert [r.getMessage() for r in lost] == [
        "leadership check failed; stepping down: terminating connection due to administrator "
        "command"
    ], messages
    assert lost[0].levelname == "WARNING"
    assert lost[0].exc_info is None
    assert messages.count("this replica is now the leader") == 2, messages


def _listeners(env: Env) -> int:
    """The sessions of this database LISTENing for service changes (their last statement)."""
    with env.services.engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query = :listen"
                ),
                {"listen": f"LISTEN {SERVICE_CHANGES_CHANNEL}"},
            ).scalar_one()
        )


def _run(scheduler: Scheduler) -> tuple[asyncio.AbstractEventLoop, asyncio.Task[None], Any]:
    """``scheduler.run()`` in an event loop of its own thread, as certctl serve runs it."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(scheduler.run())
    thread = threading.Thread(
        target=lambda: loop.run_until_complete(asyncio.wait([task])), daemon=True
    )
    thread.start()
    return loop, task, thread


def _end(scheduler: Scheduler, loop: asyncio.AbstractEventLoop, task: Any, thread: Any) -> None:
    """What a test's ``_run`` left: stopped, its threads done, its lock given back."""
    if thread.is_alive():  # the test failed before stopping it
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=30)
    # A pass in flight when cancelled goes on in its thread: done before the store goes.
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
    if scheduler.leadership is not None:
        scheduler.leadership.release()


def test_a_stopped_scheduler_has_closed_its_listener_when_run_returns(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_changes, "POLL_S", 0.2)  # becoming leader: listens sooner
    scheduler = Scheduler(pg_env.services, pg_env.settings, INTERVAL_S, watch_changes=True)
    loop, task, thread = _run(scheduler)
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


def test_a_stopped_scheduler_gives_up_the_leadership_when_run_returns(
    pg_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # A rolling update: the old leader is told to stop, and its process then goes on for a
    # while (open requests drain for up to http.shutdown-timeout, then the work in progress).
    caplog.set_level(logging.INFO, "certctl.scheduler")
    scheduler = Scheduler(pg_env.services, pg_env.settings, INTERVAL_S)
    successor = Leadership(pg_env.services)
    loop, task, thread = _run(scheduler)
    try:
        _waited("the scheduler to lead", scheduler._leading.is_set)
        assert successor.check() is False
        loop.call_soon_threadsafe(scheduler.stop)
        thread.join(timeout=10)
        assert not thread.is_alive(), "run() did not return when stopped"
        # Before, the lock stayed with the stopped scheduler until its process ended: no
        # replica reconciled or sent webhooks meanwhile. (Released by ending the session:
        # its backend frees the lock as it exits, milliseconds later.)
        _waited("another replica to take the lock", successor.check, timeout_s=2)
    finally:
        successor.release()
        _end(scheduler, loop, task, thread)
    messages = [r.getMessage() for r in caplog.records if r.name == "certctl.scheduler"]
    assert "stopping: gave up the leadership; another replica can take it over" in messages


def test_a_scheduler_cancelled_as_it_is_woken_gives_up_the_leadership_when_run_returns(
    pg_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # The cancel and a wake (a service change, the listener's first LISTEN) handled in the
    # same turn of the event loop, as happens when it runs late on a loaded machine. Before,
    # Python 3.11's asyncio.wait_for returned the wake and dropped the cancel: run() went on
    # for another pass and then a whole reconcile-interval, the lock kept all that time.
    caplog.set_level(logging.INFO, "certctl.scheduler")
    scheduler = Scheduler(pg_env.services, pg_env.settings, INTERVAL_S)
    successor = Leadership(pg_env.services)
    loop, task, thread = _run(scheduler)
    try:
        _waited("the first pass", lambda: scheduler._pass is not None and scheduler._pass.done())
        assert scheduler._leading.is_set()
        time.sleep(0.2)  # run() waits for the next wake or interval now

        def woken_and_cancelled() -> None:
            scheduler.wake()
            task.cancel()

        loop.call_soon_threadsafe(woken_and_cancelled)
        thread.join(timeout=10)
        assert not thread.is_alive(), "run() went on after it was cancelled"
        _waited("another replica to take the lock", successor.check, timeout_s=2)
    finally:
        successor.release()
        _end(scheduler, loop, task, thread)
    messages = [r.getMessage() for r in caplog.records if r.name == "certctl.scheduler"]
    assert "stopping: gave up the leadership; another replica can take it over" in messages


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_a_scheduler_stopped_mid_pass_leads_until_its_reconcile_ends_then_gives_up(
    pg_env: Env,
) -> None:
    # Stopped while a service's reload command runs (a delivery as leader): the leadership
    # is kept until that reconcile ends (a successor would reconcile the service beside it),
    # no other service is started, and then the leadership is given up at once.
    tmp = pg_env.tmp
    started, go = tmp / "started", tmp / "go"
    # Bounded: a test that fails leaves no command waiting for ever.
    reload = _script(
        tmp / "reload.sh",
        f"touch {started}; i=0; while [ ! -e {go} ] && [ $i -lt 200 ]; do sleep 0.05; "
        "i=$((i+1)); done",
    )
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    pg_env.put(service_doc("a", targets=[{"directory": str(tmp / "a" / "tls"), "reload": reload}]))
    pg_env.put(service_doc("b", targets=[{"directory": str(tmp / "b" / "tls")}]))
    scheduler = Scheduler(pg_env.services, pg_env.settings, INTERVAL_S)
    successor = Leadership(pg_env.services)
    loop, task, thread = _run(scheduler)
    try:
        _waited("the reload command of service a to run", started.exists)
        # As certctl serve's own stop, once its listeners drained: the task is cancelled.
        loop.call_soon_threadsafe(task.cancel)
        time.sleep(0.3)
        assert thread.is_alive(), "run() returned while a reconcile was still running"
        assert successor.check() is False, "leadership given up during a reconcile"
        go.touch()
        thread.join(timeout=10)
        assert not thread.is_alive(), "run() did not return once the reconcile ended"
        _waited("another replica to take the lock", successor.check, timeout_s=2)
    finally:
        go.touch()
        successor.release()
        _end(scheduler, loop, task, thread)
    assert pg_env.row("a").certificate_pem is not None
    assert pg_env.row("b").certificate_pem is None, "a stopping scheduler began another service"


def _short_idle_engine(env: Env) -> Engine:
    # As an idle_session_timeout set for the role or database (ALTER ROLE/DATABASE ... SET)
    # would, on every session of this engine, without changing the database other tests share.
    url = env.services.engine.url.update_query_dict(
        {"options": f"-c idle_session_timeout={IDLE_MS}"}
    )
    return create_store_engine(url.render_as_string(hide_password=False))


def _idle_past_the_timeout(engine: Engine) -> None:
    """Sleep past ``engine``'s idle_session_timeout; a session nothing exempts ends meanwhile.

    That control shows the wait was long enough: the sessions a test checks after it would
    have been ended too, had the product not exempted them.
    """
    url = engine.url.set(drivername="postgresql", query={})
    options = str(engine.url.query["options"])  # as is: the rendered URL would quote it
    dsn = url.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True, options=options) as control:
        time.sleep(IDLE_WAIT_S)
        try:
            control.execute("SELECT 1")
        except psycopg.OperationalError:
            return
    pytest.fail("a session under the timeout outlived the wait: it shows nothing", pytrace=False)


def _advisory_locks(env: Env) -> set[int]:
    """The session-level advisory locks held now, by any session (as 64-bit keys)."""
    with env.services.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted"
            )
        ).all()
    return {row[0] for row in rows}


def test_an_idle_session_timeout_does_not_end_the_leadership(
    pg_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _short_idle_engine(pg_env)
    caplog.set_level(logging.INFO, "certctl.scheduler")
    leadership = Leadership(Services(engine, session_factory(engine), pg_env.services.wrapper))
    try:
        assert leadership.check() is True
        # Idle between passes for longer than the timeout, as with any reconcile interval:
        # before, PostgreSQL ended the session, and the leadership with it, each time.
        _idle_past_the_timeout(engine)
        assert leadership.check() is True
        assert leadership.still_leads() is True
    finally:
        leadership.release()
        engine.dispose()
    messages = [r.getMessage() for r in caplog.records if r.name == "certctl.scheduler"]
    assert messages == ["this replica is now the leader"], messages


def test_an_idle_session_timeout_does_not_end_the_start_up_or_rotation_locks(
    pg_env: Env,
) -> None:
    # Both are held on a session of their own, idle while the work goes on on others
    # (migrations and bootstrap; a KEK rotation's re-encryption).
    engine = _short_idle_engine(pg_env)
    try:
        with startup_lock(engine), _no_leader(engine):
            _idle_past_the_timeout(engine)
            assert {STARTUP_LOCK, LEADER_LOCK} <= _advisory_locks(pg_env)
    finally:
        engine.dispose()


def test_an_idle_session_timeout_does_not_end_the_credential_counters_session(
    pg_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # The counter's connection is held for the life of the process and idle whenever no
    # request comes: before, a quiet spell longer than the timeout ended it, the next read
    # answered None (no key caching) with a warning, and it was opened again a second later.
    engine = _short_idle_engine(pg_env)
    caplog.set_level(logging.WARNING, "certctl")
    counter = PostgresCounter(engine)
    try:
        first = counter.read()
        assert first is not None
        pid = counter._connection.info.backend_pid
        _idle_past_the_timeout(engine)
        assert counter.read() == first
        assert counter._connection.info.backend_pid == pid
    finally:
        counter._close()
        engine.dispose()
    assert not [r.getMessage() for r in caplog.records], "no warning expected"
