"""The reconcile loop inside ``certctl serve``, with leadership across replicas.

With PostgreSQL several replicas share one database; exactly one of them (the holder of a
session-level advisory lock) reconciles services and sends webhooks. The lock lives on a
dedicated connection: if the leader dies, PostgreSQL drops its session and the lock, and
another replica takes over on its next attempt. SQLite means a single process: it leads.
(With ``--workers``, on either backend, only worker 0 runs a scheduler.) A service change
answered by another process reaches the leader through the database within about a second
(``server.service_changes``); the periodic pass is the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from certctl.errors import NotFound, StorageUnavailable
from certctl.server import service_changes
from certctl.server.outage import OutageLog
from certctl.services import (
    custom_certificates,
    service_reconcile,
    service_rows,
    service_schedule,
    service_settings,
)
from certctl.services.context import Services
from certctl.services.notify import Webhook, dispatch_pending
from certctl.store.db import (
    LEADER_LOCK,
    PoolTimeout,
    exempt_from_idle_session_timeout,
    storage_error,
)
from certctl.store.models import ManagedService

__all__ = ["Leadership", "Scheduler"]

log = logging.getLogger("certctl.scheduler")
# pg_advisory_lock key: "certctl" as an integer, so other applications rarely collide.
_LOCK_KEY = LEADER_LOCK
# How long a stopping leader waits for the webhook event in flight (most receivers answer in
# milliseconds) before giving up the leadership without its answer.
DISPATCH_STOP_WAIT_S = 2.0


class Leadership:
    """Who runs the reconciler: always this process on SQLite; the lock holder on PostgreSQL."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._connection: Any = None
        self.is_postgres = services.engine.dialect.name == "postgresql"
        # The tick thread and the webhook thread both ask; one lock session, one at a time.
        self._lock = threading.Lock()
        # Whether the last check failed: while the database is down, a replica that does not
        # lead says so once, not at every pass (and never "stepping down": it led nothing).
        self._failing = False

    def check(self) -> bool:
        """Try to become (or stay) the leader; True when this process leads."""
        if not self.is_postgres:
            return True
        with self._lock:
            return self._check()

    def still_leads(self) -> bool:
        """True while this process holds the lock (asks the database; never takes the lock).

        Asked before each webhook event: a leader whose lock session ended (network cut,
        ``pg_terminate_backend``) stops sending at once, not at its next reconcile pass,
        while its successor sends the same events.
        """
        if not self.is_postgres:
            return True
        with self._lock:
            if self._connection is None:
                return False
            try:
                self._connection.execute(text("SELECT 1"))
            except Exception as exc:
                log.warning("leadership lost (%s); stepping down", type(exc).__name__)
                self._release()
                return False
            return True

    def session_fd(self) -> int | None:
        """The socket of the lock's session while this process leads, else None.

        For the change watch's thread, which waits on it for the session's end (a cut,
        ``pg_terminate_backend``). Not under the lock, which a check may hold for as long as
        a connection takes to open: what the watch sees is confirmed by the next check().
        """
        connection = self._connection
        if connection is None:
            return None
        try:
            return int(connection.connection.driver_connection.fileno())
        except Exception:  # released or invalidated meanwhile
            return None

    def _check(self) -> bool:
        try:
            if self._connection is not None:
                # The lock lives exactly as long as this session: a lost session raises here.
                self._connection.execute(text("SELECT 1"))
                return True
            # Autocommit: the probes above must not leave the session "idle in transaction"
            # (idle_in_transaction_session_timeout would end it, and the leadership with it).
            connection = self.services.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            )
            try:
                got = connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": _LOCK_KEY}
                ).scalar()
            except BaseException:
                with contextlib.suppress(Exception):  # a broken session: not kept until GC
                    connection.invalidate()
                    connection.close()
                raise
            if got:
                self._connection = connection  # first: a failure below invalidates it
                # Pinged once a pass only: an idle_session_timeout shorter than
                # reconcile-interval would end the session, and the leadership, every pass.
                exempt_from_idle_session_timeout(connection)
                self._failing = False
                log.info("this replica is now the leader")
                return True
            connection.close()
            if self._failing:
                self._failing = False
                log.info("leadership checks work again; another replica leads")
            return False
        except (PoolTimeout, DBAPIError) as exc:
            # No pooled connection came free (database-pool-size: the store is busy, not
            # broken), or the session is gone (pg_terminate_backend, a restart, a cut): a line
            # per pass, no traceback. The words before the colon are what
            # tests/soak/test_replicas.py waits for.
            fault = storage_error(exc)
            if fault is None:  # a bug, not the storage: its traceback
                log.exception("leadership check failed; stepping down")
            elif self._connection is not None:
                log.warning("leadership check failed; stepping down: %s", _reason(exc, fault))
            elif not self._failing:
                log.warning(
                    "leadership check failed: %s; this replica does not lead, and tries "
                    "again at every pass (said once it works)",
                    _reason(exc, fault),
                )
            self._failing = fault is not None
            self._release()
            return False
        except Exception:
            log.exception("leadership check failed; stepping down")
            self._release()
            return False

    def release(self) -> bool:
        """Give up leadership: end the session, which releases the lock. True if it held it.

        The connection is invalidated, not returned to the pool: a pooled session would keep
        holding the lock, and no replica could lead while it sits there.
        """
        with self._lock:
            return self._release()

    def _release(self) -> bool:
        if self._connection is None:
            return False
        try:
            self._connection.invalidate()
            self._connection.close()
        except Exception:
            log.debug("closing the leader connection failed", exc_info=True)
        self._connection = None
        return True


def _reason(exc: BaseException, fault: StorageUnavailable) -> str:
    """Why a leadership check failed, in one line.

    The driver's own first line for a lost session (it names the cause, never a password:
    "terminating connection due to administrator command"), else the storage fault's.
    """
    orig = getattr(exc, "orig", None)
    first = str(orig).strip().split("\n")[0] if orig is not None else ""
    return first or fault.detail


@dataclass
class Scheduler:
    """Reconciles due services every ``interval_s`` (or sooner when woken)."""

    services: Services
    settings: service_settings.ServiceSettings
    interval_s: float
    webhook: Webhook | None = None
    clock: Callable[[], datetime] | None = None
    leadership: Leadership | None = None
    # Whether run() also watches the store for service changes that other processes commit
    # (server.service_changes): certctl serve's does; a test of the loop alone need not.
    watch_changes: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Services whose reconcile raised something unexpected (a bug, not a delivery failure,
    # which the service's own status and backoff record): name → (failures, retry at, what
    # was asked). A new spec generation or a renewal request is tried at once.
    _crashed: dict[str, tuple[int, datetime, tuple[int, datetime | None]]] = field(
        default_factory=dict
    )
    # When this scheduler last reconciled each service: the resync clock (due()'s
    # last_pass). In memory, not in the row: written by every pass, it was one UPDATE per
    # pass for services read on every pass (custom certificates). A new leader or a restart
    # starts from the conditions' time. Resyncs fall at each service's point of the
    # interval from _since (service_schedule.due), so they stay spread.
    _passes: dict[str, datetime] = field(default_factory=dict)
    # The custom certificate's secret of each service as read for its last reconcile: one
    # that still holds the same is not reconciled again (custom_certificates.SecretSeen). In
    # memory too: a restart or a new leader reconciles each such service once.
    _secrets: dict[str, custom_certificates.SecretSeen] = field(default_factory=dict)
    # When this scheduler last became the leader (its first pass on SQLite): due()'s since.
    _since: datetime | None = None
    _dispatcher: threading.Thread | None = None
    # What the last leadership check of the tick thread said; the dispatcher thread reads
    # it before each event (Leadership itself is not for two threads).
    _leading: threading.Event = field(default_factory=threading.Event)
    # Service changes committed by other processes (server.service_changes), while run() runs.
    _changes: service_changes.ChangeWatch | None = None
    # Set when run() is told to stop (stop(), or its task cancelled): the pass in progress
    # reconciles no further service and the dispatcher sends no further event, so the
    # leadership can be given up once they end, while the process goes on stopping.
    _stopping: threading.Event = field(default_factory=threading.Event)
    # The pass run() is waiting for (the tick in its thread), kept apart from run()'s own
    # await: a cancelled run() still knows when that thread stops writing as the leader.
    _pass: asyncio.Future[int] | None = None

    def wake(self) -> None:
        """Reconcile soon (a spec changed; changes through other processes wake it too)."""
        self._wake.set()

    def stop(self) -> None:
        """End run(): no further pass nor service; then the leadership is given up.

        From run()'s event loop (``call_soon_threadsafe`` elsewhere). A stopping server asks
        this at its first signal, so another replica takes over while it drains its requests
        and finishes its work in progress, not once its process has ended.
        """
        if not self._stopping.is_set() and self._pass is not None and not self._pass.done():
            # Said here: run() awaits that pass itself, so _resign finds it ended.
            log.info("stopping: waiting for the reconcile in progress before giving up leadership")
        self._stopping.set()
        self._wake.set()

    def tick(self, *, dispatch_in_background: bool = False) -> int:
        """One pass over the services (blocking; run it in a thread). Returns reconciles done.

        Pending webhook events are sent after it, in the same thread, or with
        ``dispatch_in_background`` in a thread of their own (at most one at a time) so a slow
        receiver never delays the next pass's reconciles.
        """
        if self._stopping.is_set():
            return 0  # run() stops: not the lock taken again as it is being given up
        leadership = self.leadership or Leadership(self.services)
        self.leadership = leadership
        if not leadership.check():
            self._step_down()
            return 0
        self._leading.set()
        now = (self.clock or self.services.clock)()
        # One reader of custom secrets for the pass: Kubernetes Secrets are listed once at
        # its first read, not fetched one by one (one request per service every 10 s).
        settings = self.settings.for_pass()
        if self._since is None:
            self._since = now
        with self.services.sessions() as session:
            rows = list(session.scalars(select(ManagedService).order_by(ManagedService.name)))
        done = 0
        names = {row.name for row in rows}
        for gone in self._crashed.keys() - names:
            del self._crashed[gone]
        for gone in self._passes.keys() - names:
            del self._passes[gone]
        for gone in self._secrets.keys() - names:
            del self._secrets[gone]
        for row in rows:
            asked = (row.generation, row.renew_at)
            crashed = self._crashed.get(row.name)
            if crashed is not None and crashed[2] != asked:
                crashed = None  # changed since it crashed: a fresh start
            if crashed is not None and now < crashed[1]:
                continue
            if not self._due(row, now):
                continue
            # A custom certificate's secret is read (cheap) rather than reconciled (~2 ms of
            # CPU and five statements) at every pass: reconciled only when it changed, or
            # when the other rules (resync, renewal, retry...) say so.
            seen = None
            first_sight = False
            previous = self._secrets.pop(row.name, None)
            if service_rows.custom_secret_name(row) is not None:
                try:
                    seen = custom_certificates.read_custom_secret(settings, row, now, previous)
                except Exception:
                    # Not this pass's to handle: the reconcile reads it again, and backs
                    # off whatever it raises there, service by service.
                    log.debug("reading the secret of service %s failed", row.name, exc_info=True)
                unchanged = custom_certificates.custom_secret_unchanged(
                    settings, row, previous, seen
                )
                only_if_changed = not self._due(row, now, secret_unchanged=True)
                if unchanged and only_if_changed:
                    assert previous is not None  # unchanged says so
                    self._secrets[row.name] = previous
                    continue
                # Reconciled only because this scheduler has not read it yet (its first
                # pass as leader): not counted as a resync, so the resyncs of these services
                # spread over the interval from _since as the others' do, instead of all
                # falling in one pass every 10 minutes.
                first_sight = previous is None and seen is not None and only_if_changed
            if self._stopping.is_set():
                log.info("stopping: the reconcile pass ends before service %s", row.name)
                return done
            # Re-checked per service: a leader whose lock session was lost mid-pass (network
            # cut, pg_terminate_backend) stops at once instead of racing its successor.
            if not leadership.check():
                self._step_down()
                log.warning("lost leadership during a reconcile pass; stopping it")
                return done
            try:
                row = service_reconcile.reconcile_service(self.services, settings, row.name, now)
                done += 1
                if not first_sight:
                    self._passes[row.name] = now
                self._crashed.pop(row.name, None)
                if seen is not None:
                    # Read before the reconcile: a change made while it ran is seen
                    # as one at the next pass, never missed.
                    self._secrets[row.name] = seen
            except NotFound:
                # Deleted while it was being reconciled (a slow reload): nothing to do.
                log.info("service %s was deleted during its reconcile", row.name)
                continue
            except PoolTimeout:
                # The store is busy, not this service broken: the pass ends here (each next
                # service would wait the pool timeout again) and run() logs it in one line;
                # the services are tried at the next pass, not backed off.
                raise
            except Exception as exc:
                # Backed off like a failed delivery, so one broken service neither floods
                # the log with a traceback every tick nor repeats its side effects.
                failures = (crashed[0] if crashed else 0) + 1
                retry = now + service_schedule.backoff(failures)
                self._crashed[row.name] = (failures, retry, asked)
                if failures == 1:
                    log.exception("reconciling service %s failed", row.name)
                else:
                    log.error(
                        "reconciling service %s failed again (%s: %s); next try at %s",
                        row.name,
                        type(exc).__name__,
                        exc,
                        retry.isoformat(timespec="seconds"),
                    )
        if self.webhook is not None:
            if not dispatch_in_background:
                dispatch_pending(self.services, self.webhook)
            elif self._dispatcher is None or not self._dispatcher.is_alive():
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="certctl-webhook", daemon=True
                )
                self._dispatcher.start()
        return done

    def _due(self, row: ManagedService, now: datetime, *, secret_unchanged: bool = False) -> bool:
        return service_schedule.due(
            row,
            now,
            resync=service_schedule.RESYNC_INTERVAL,
            last_pass=self._passes.get(row.name),
            since=self._since,
            secret_unchanged=secret_unchanged,
        )

    def _step_down(self) -> None:
        self._leading.clear()
        # The listener closed before the pass returns: another replica, taking the lock now,
        # listens on the deployment's one listening connection (the Helm chart counts one),
        # not next to this one for up to a second.
        if self._changes is not None and not self._changes.step_down(service_changes.STOP_WAIT_S):
            log.debug("the listening connection was still opening when this replica stepped down")
        # Elected again later, it is a new leader: its passes from before are as old as the
        # time it did not lead, and would all be due in its first pass, a burst again.
        self._since = None
        self._passes.clear()
        self._secrets.clear()

    def _dispatch(self) -> None:
        assert self.webhook is not None
        assert self.leadership is not None
        leadership = self.leadership

        def leading() -> bool:
            return (
                self._leading.is_set() and not self._stopping.is_set() and leadership.still_leads()
            )

        try:
            dispatch_pending(self.services, self.webhook, leading=leading)
        except PoolTimeout as exc:
            fault = storage_error(exc)
            assert fault is not None  # a pool timeout always is one
            log.warning("sending webhook events failed: %s; will retry", fault.detail)
        except Exception:
            log.exception("sending webhook events failed; will retry")

    async def run(self) -> None:
        """Loop forever; errors are logged and the loop goes on.

        A pass that fails for the storage (no pooled connection free, the database down) is
        one warning when it starts (and when its reason changes) and one line when a pass
        works again, as the other periodic passes (server.periodic): not a traceback every pass.
        """
        outage = OutageLog(log, "reconcile pass", self.interval_s, "reconcile passes work again")
        loop = asyncio.get_running_loop()

        def woken() -> None:  # from the watch's thread
            # The loop may have closed since this run() ended: no pass is left to wake then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

        # Changes answered by other workers or replicas wake this loop too (their API request
        # could only wake their own scheduler), while this process leads.
        def session_ended() -> None:  # from the watch's thread
            # The lock's session is gone (or going): not leading, so the watch closes its
            # listener at once and the dispatcher sends no further event; the woken pass
            # checks the lock and steps down (a later pass takes it again if it is free).
            self._leading.clear()
            woken()

        if self.watch_changes:
            self._changes = service_changes.watch_changes(
                self.services.engine,
                woken,
                self._leading.is_set,
                lock_session=lambda: self.leadership.session_fd() if self.leadership else None,
                session_ended=session_ended,
            )
        try:
            if self._changes is not None:
                await asyncio.to_thread(self._changes.start)  # before the first pass reads
            await self._loop(outage)
        finally:
            # Stopped (stop()) or cancelled (a stopping server's last step): the pass in
            # progress, if any, ends after its current service.
            self._stopping.set()
            if self._changes is not None:
                self._changes.stop()
                # Closed when run() returns (a stopping server then waits for reload
                # commands, webhooks...), not up to a second later. Bounded: a thread still
                # opening a connection to a database that does not answer is a daemon.
                await asyncio.to_thread(self._changes.join, service_changes.STOP_WAIT_S)
            await self._resign()

    async def _resign(self) -> None:
        """Give up the leadership once nothing writes as the leader any more.

        Before, the lock stayed until the process ended: after its requests drained (up to
        http.shutdown-timeout) and its work in progress, no replica reconciled nor sent
        webhooks. Never while a pass or a webhook event is still on its way: the successor
        would reconcile the same service, or send the same event, beside it. Cancelled
        again meanwhile (a stop that will not wait), the lock goes with the process.
        """
        if self._pass is not None and not self._pass.done():
            log.info("stopping: waiting for the reconcile in progress before giving up leadership")
            try:
                await asyncio.shield(self._pass)
            except Exception:
                log.exception("scheduler tick failed")
        if self._dispatcher is not None and self._dispatcher.is_alive():
            # Its current event at most: it asks leading() before each. Not for as long as
            # that takes (notifications.webhook.timeout): a receiver that never answers held
            # the leadership and the process's end for all of it, where the process used to
            # end at once. Left then, unanswered, the event stays pending in the store and
            # the next leader sends it, with the same delivery id (at least once, as around
            # any hand-over).
            await asyncio.to_thread(self._dispatcher.join, DISPATCH_STOP_WAIT_S)
            if self._dispatcher.is_alive():
                log.warning(
                    "stopping: not waiting longer than %g s for the webhook receiver to "
                    "answer the event in flight; the next leader sends it again",
                    DISPATCH_STOP_WAIT_S,
                )
        self._leading.clear()
        if self.leadership is not None and await asyncio.to_thread(self.leadership.release):
            log.info("stopping: gave up the leadership; another replica can take it over")

    async def _loop(self, outage: OutageLog) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            # Cleared before the pass, not after: a wake() while it runs (the next document
            # of an apply, a client added) is then seen at once instead of waiting a whole
            # interval for a pass that reads the store as it was.
            self._wake.clear()
            try:
                # As asyncio.to_thread, but shielded: cancelling run() leaves self._pass
                # pending until the thread's pass has really ended (_resign waits for it).
                tick = functools.partial(self.tick, dispatch_in_background=True)
                self._pass = loop.run_in_executor(None, contextvars.copy_context().run, tick)
                await asyncio.shield(self._pass)
            except (DBAPIError, PoolTimeout) as exc:
                fault = storage_error(exc)
                if fault is None:
                    log.exception("scheduler tick failed")
                else:
                    outage.failed(fault.detail)
            except Exception:
                log.exception("scheduler tick failed")
            else:
                outage.worked()
            # Not asyncio.wait_for: on Python 3.11 it lost a cancel that came with a wake (a
            # change seen as the server stops), and run() went on for another pass and a
            # whole reconcile-interval, still leading. asyncio.timeout passes the cancel on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
