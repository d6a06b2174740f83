"""A service change made through another process reaches the reconciling one within seconds.

``certctl serve --workers 2`` (SQLite or PostgreSQL) or several replicas on PostgreSQL: the API
request lands on whichever process the kernel or the load balancer picks, and the reconciler
runs in one of them only (worker 0; on PostgreSQL the holder of the leader lock). The request
wakes its own process's scheduler; the reconciling one used to wait for its next periodic pass
(``reconcile-interval``). Here two store handles on one database stand for the two processes:
``leader`` runs the real scheduler loop with an interval far longer than the test, ``other``
takes the changes, as the API routes do.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from sqlalchemy import text

from certctl.server import service_changes
from certctl.server.scheduler import Scheduler
from certctl.server.service_changes import _PostgresWatch, watch_changes
from certctl.services import service_clients, service_specs
from certctl.services.context import Services
from certctl.store.db import SERVICE_GENERATION_SQL, create_store_engine, session_factory
from tests.services.conftest import Env, _make_env, make_ca, service_doc

# Far longer than any wait below: a change seen at all was seen through the new path.
INTERVAL_S = 120.0
# The SQLite poll is 1 s; a reconcile issues a CA and a leaf (tens of ms). Generous for a
# loaded 2-core CI machine, still far below the interval.
PROMPT_S = 5.0


@contextmanager
def running(scheduler: Scheduler) -> Iterator[None]:
    """``scheduler.run()`` on an event loop of its own thread (the server's worker 0)."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(scheduler.run())

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=main, name="test-scheduler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the scheduler loop did not stop when cancelled"
        # A pass in flight when cancelled goes on in its thread: over before the test's
        # store is disposed (the watch's join below used to wait up to a second for it).
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        # run() stopped the watch, and waited for it, before it returned.
        assert scheduler._changes is not None
        assert scheduler._changes.join(0), "the change watch did not stop"


def _other_process(env: Env) -> Services:
    """A second handle on the same store: the process the API request reaches."""
    url = env.services.engine.url.render_as_string(hide_password=False)
    engine = create_store_engine(url)
    return Services(engine, session_factory(engine), env.services.wrapper, clock=env.clock)


def _served(target: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate((target / "tls.crt").read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def _waited(what: str, check: object, timeout_s: float = PROMPT_S) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout_s``."""
    assert callable(check)
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            pytest.fail(
                f"{what}: not reconciled within {timeout_s:.0f} s (the reconciling process "
                f"waited for its periodic pass, every {INTERVAL_S:.0f} s)",
                pytrace=False,
            )
        time.sleep(0.02)
    return time.monotonic() - start


def _dns_names(cert: x509.Certificate | None) -> set[str]:
    if cert is None:
        return set()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(sans.get_values_for_type(x509.DNSName))


def test_changes_through_another_process_are_delivered_within_seconds(
    any_env: Env, tmp_path: Path
) -> None:
    env = any_env
    other = _other_process(env)
    target = tmp_path / "target"
    doc = service_doc("web", dns=("web.example.com",), targets=[{"directory": str(target)}])
    scheduler = Scheduler(env.services, env.settings, INTERVAL_S, watch_changes=True)
    latencies: dict[str, float] = {}
    try:
        with running(scheduler):
            # The first pass (nothing to do yet) is over before the change is made.
            _waited("the first pass", scheduler._leading.is_set)
            watch = scheduler._changes
            if isinstance(watch, _PostgresWatch):  # it listens once it leads
                _waited("the leader to listen", lambda: watch._connection is not None)
            time.sleep(0.2)

            service_specs.put_service(other, env.admin, "web", doc)
            latencies["create"] = _waited("a created service", lambda: _served(target))

            doc["spec"]["http"]["tls"]["selfSignedCertificate"]["subjectAltNames"].append(
                {"dns": "www.example.com"}
            )
            service_specs.put_service(other, env.admin, "web", doc)
            latencies["edit"] = _waited(
                "an edited spec", lambda: "www.example.com" in _dns_names(_served(target))
            )

            served = _served(target)
            assert served is not None
            service_specs.request_renewal(other, env.admin, "web")
            latencies["renew"] = _waited(
                "a renewal request",
                lambda: (
                    (now := _served(target)) is not None
                    and now.serial_number != served.serial_number
                ),
            )
    finally:
        if scheduler.leadership is not None:
            scheduler.leadership.release()  # the lock's session, held until released
        other.engine.dispose()
    print(f"\n[{env.backend}] change -> delivered files: {latencies}")
    assert set(latencies) == {"create", "edit", "renew"}


class _Signals:
    """The change signals migration 0016's triggers gave since the last ``taken()``.

    SQLite: how far the ``service_generation`` counter moved. PostgreSQL: notifications on
    ``certctl_services`` received on a listening connection of the test's own (PostgreSQL
    folds those of one transaction into one).
    """

    def __init__(self, env: Env) -> None:
        self._env = env
        self._listener: psycopg.Connection[Any] | None = None
        if env.backend == "postgresql":
            url = env.services.engine.url.set(drivername="postgresql")
            self._listener = psycopg.connect(
                url.render_as_string(hide_password=False), autocommit=True
            )
            self._listener.execute("LISTEN certctl_services")
        self._last = self._counter()

    def _counter(self) -> int:
        if self._listener is not None:
            return 0
        with self._env.services.engine.connect() as connection:
            return int(connection.execute(text(SERVICE_GENERATION_SQL)).scalar_one())

    def taken(self) -> int:
        if self._listener is not None:
            # Delivered in commit order: those before a mark sent now are all of them.
            self._listener.execute("NOTIFY certctl_services, 'mark'")
            received = 0
            for notify in self._listener.notifies(timeout=10):
                if notify.payload == "mark":
                    return received
                received += 1
            raise AssertionError("the mark's notification never came")
        now = self._counter()
        moved, self._last = now - self._last, now
        return moved

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()


def test_what_makes_a_service_due_is_signalled_and_a_pass_s_own_writes_are_not(
    any_env: Env, tmp_path: Path
) -> None:
    env = any_env
    signals = _Signals(env)
    try:
        doc = service_doc("web", dns=("web.example.com",), client_auth=True)
        env.put(doc)
        assert signals.taken() == 1, "created"
        env.put(doc)
        assert signals.taken() == 0, "the same spec again: no new generation, nothing to do"
        doc["spec"]["http"]["tls"]["selfSignedCertificate"]["subjectAltNames"].append(
            {"dns": "www.example.com"}
        )
        env.put(doc)
        assert signals.taken() == 1, "edited"
        # The first issue sets renew_at (one pass more, with nothing to do; documented).
        env.reconcile("web")
        assert signals.taken() == 1, "first issue"
        env.reconcile("web")
        assert signals.taken() == 0, "a pass that changes nothing"
        service_specs.request_renewal(env.services, env.admin, "web")
        assert signals.taken() == 1, "renewal requested"
        env.reconcile("web")
        assert signals.taken() == 0, "the renewal done: renew_at moves later"
        # A renewal that failed (its renew_at past, backing off): asked again once the cause
        # is fixed, renew_at moves later but the back-off is lifted, so it is due at once.
        with env.services.engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE managed_services SET renew_at = :past, attempts = 3,"
                    " next_attempt_at = :later"
                ),
                {"past": env.now - timedelta(hours=1), "later": env.now + timedelta(hours=1)},
            )
        signals.taken()  # renew_at brought forward, by hand
        service_specs.request_renewal(env.services, env.admin, "web")
        assert signals.taken() == 1, "a failed renewal asked again: the back-off lifted"
        env.reconcile("web")
        assert signals.taken() == 0, "the renewal done, its failures forgotten"
        client = make_ca("Client CA", env.now)
        added = service_clients.add_client(env.services, env.admin, "web", client.cert_pem.decode())
        assert signals.taken() == 1, "client trusted"
        env.reconcile("web")
        assert signals.taken() == 0, "the new trust bundle delivered"
        service_clients.remove_client(env.services, env.admin, "web", added[0].fingerprint)
        assert signals.taken() == 1, "client no longer trusted"
        # drop-retired-ca brings retired_ca_until forward; a CA replacement sets it later.
        until = env.now + timedelta(hours=1)
        with env.services.engine.begin() as connection:
            update = text("UPDATE managed_services SET retired_ca_until = :until")
            connection.execute(update, {"until": until})
            assert signals.taken() == 0, "nothing is committed before the commit"
        assert signals.taken() == 0, "a replaced CA kept for a while"
        with env.services.engine.begin() as connection:
            connection.execute(update, {"until": env.now})
        assert signals.taken() == 1, "the replaced CAs dropped"
        service_specs.delete_service(env.services, env.admin, "web")
        assert signals.taken() == 1, "deleted"
    finally:
        signals.close()


@pytest.fixture
def pg_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """A fresh store on PostgreSQL (a listening connection is PostgreSQL's alone)."""
    yield from _make_env(request, tmp_path, "postgresql")


def test_the_listener_comes_back_when_its_connection_is_cut(
    pg_env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = pg_env
    # Shorter waits than a server's (1 s): the reconnection and the stop are what is tested.
    monkeypatch.setattr(service_changes, "RETRY_S", 0.1)
    monkeypatch.setattr(service_changes, "POLL_S", 0.2)
    caplog.set_level(logging.INFO, "certctl.scheduler")
    wakes: list[float] = []
    watch = watch_changes(env.services.engine, lambda: wakes.append(time.monotonic()), lambda: True)
    assert watch is not None
    admin = env.services.engine.url.set(drivername="postgresql")

    def listener_pids() -> list[int]:
        with psycopg.connect(admin.render_as_string(hide_password=False)) as connection:
            rows = connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN certctl_services'"
            ).fetchall()
        return [row[0] for row in rows]

    watch.start()
    try:
        _waited("the listener to connect", lambda: len(listener_pids()) == 1 and wakes)
        (first,) = listener_pids()
        with psycopg.connect(admin.render_as_string(hide_password=False)) as connection:
            connection.execute("SELECT pg_terminate_backend(%s)", (first,))
        _waited("a new listening connection", lambda: listener_pids() not in ([], [first]))
        before = len(wakes)
        env.put(service_doc("web", dns=("web.example.com",)))
        _waited("a wake from the new connection", lambda: len(wakes) > before)
    finally:
        watch.stop()
        assert watch.join(10)
    messages = [r.getMessage() for r in caplog.records if r.name == "certctl.scheduler"]
    assert any(m.startswith("listening for service changes failed") for m in messages), messages
    assert "listening for service changes again" in messages


def test_an_idle_session_timeout_does_not_cut_the_listener(
    pg_env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL 14+'s idle_session_timeout, set for the role or database (here through the
    # URL's options), ended the listening connection, idle by design, each time it expired:
    # a warning and a reconnection every period, changes waiting meanwhile.
    monkeypatch.setattr(service_changes, "RETRY_S", 0.1)
    monkeypatch.setattr(service_changes, "POLL_S", 0.2)
    caplog.set_level(logging.INFO, "certctl.scheduler")
    # 1 s, not less: it applies from the session's start, before the watch's SET exempts it,
    # and opening the session waited up to 237 ms between statements on a loaded 2-core
    # machine (test_leader_connections.IDLE_MS).
    url = pg_env.services.engine.url.update_query_dict({"options": "-c idle_session_timeout=1000"})
    engine = create_store_engine(url.render_as_string(hide_password=False))
    wakes: list[float] = []
    watch = watch_changes(engine, lambda: wakes.append(time.monotonic()), lambda: True)
    assert watch is not None
    watch.start()
    try:
        _waited("the listener to connect", lambda: bool(wakes))
        time.sleep(1.5)  # past the timeout: a session it applied to would have ended
        before = len(wakes)
        pg_env.put(service_doc("web", dns=("web.example.com",)))
        _waited("a wake from the same connection", lambda: len(wakes) > before)
    finally:
        watch.stop()
        assert watch.join(10)
        engine.dispose()
    messages = [r.getMessage() for r in caplog.records if r.name == "certctl.scheduler"]
    assert not [m for m in messages if m.startswith("listening for service changes")], messages
