"""Service changes made by other processes, told to the one that reconciles.

An API request that changes a managed service wakes the scheduler of the process that
answered it. With ``--workers`` or several replicas the reconciling process (worker 0; on
PostgreSQL the holder of the leader lock) is often another one, which used to see the change
only at its next periodic pass (``reconcile-interval``). Migration 0016's triggers mark every
such change in the database, whichever process (or ``psql``) made it, and the reconciling
process watches for them:

* SQLite (``--workers`` on one host): it reads the ``service_generation`` counter every
  second on a connection of its own (a few microseconds; no writes, no pool connection).
* PostgreSQL: it LISTENs on ``certctl_services`` on a connection of its own, opened only
  while it leads (one connection for the whole deployment, outside ``database-pool-size``),
  reopened when it drops, and closed before a leader that steps down or stops goes on. Its
  wait also watches the leader lock's session: one ended from outside (a cut,
  ``pg_terminate_backend``) is seen at once, not at the next pass.

The periodic pass stays the safety net: a change made while the connection was down, or
that the counter could not be read for, is reconciled at the latest then (and a reconnected
listener wakes one pass itself, for what it may have missed).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from certctl.server.outage import OutageLog
from certctl.store.db import (
    SERVICE_CHANGES_CHANNEL,
    SERVICE_GENERATION_SQL,
    PoolTimeout,
    detached_session,
    storage_error,
)

__all__ = ["POLL_S", "STOP_WAIT_S", "ChangeWatch", "watch_changes"]

log = logging.getLogger("certctl.scheduler")

# How often the SQLite counter is read, and how often the PostgreSQL listener looks up from
# its wait to check it still should listen (leadership) or stop.
POLL_S = 1.0
# How long a leader that steps down or stops waits for its listening connection to close:
# milliseconds, unless the thread is opening one to a database that does not answer
# (connect_timeout), which a stop need not wait for.
STOP_WAIT_S = 2.0
# A listening connection that cannot be opened is tried again after this, doubling up to
# RETRY_MAX_S while it keeps failing.
RETRY_S = 1.0
RETRY_MAX_S = 30.0
# Linux's "the peer closed its side" poll event; elsewhere a lost lock session is found at
# the next leadership check, as before.
_RDHUP: int = getattr(select, "POLLRDHUP", 0)


class ChangeWatch:
    """Calls ``wake`` soon after a service change commits, from any process; a thread.

    ``leading`` says whether this process reconciles now: a follower has nothing to be woken
    for (and on PostgreSQL holds no listening connection meanwhile).
    """

    def __init__(self, wake: Callable[[], None], leading: Callable[[], bool]) -> None:
        self._wake = wake
        self._leading = leading
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Set while the watch holds no connection it would have to close for a follower
        # (always on SQLite: a file, no session counted against a connection budget).
        self._idle = threading.Event()
        self._idle.set()

    def start(self) -> None:
        """Begin watching. Blocking (a first read): call it before the first pass.

        Changes committed from then on wake a pass; the first pass reads what came before.
        """
        self._prime()
        self._thread = threading.Thread(
            target=self._run, name="certctl-service-changes", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop watching: the thread closes its connection and ends at once (``join()``)."""
        self._stop.set()
        self._interrupt()

    def join(self, timeout_s: float) -> bool:
        """Wait for the thread to end after ``stop()``; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    def step_down(self, timeout_s: float) -> bool:
        """This process stopped leading (``leading()`` says so now): close the connection.

        Waits for it, up to ``timeout_s`` (the thread may be opening one to a database that
        does not answer). True once the watch holds none, so neither will it open one while
        ``leading()`` stays false: a new leader's listener is then the deployment's only one.
        """
        if self._idle.is_set():
            return True
        self._interrupt()
        return self._idle.wait(timeout_s)

    def _interrupt(self) -> None:
        """End the thread's current wait for a change, so it looks up at once."""

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:
            # A bug, not the store failing (each watch handles those): the periodic pass
            # goes on reconciling every change, later.
            log.exception("watching for service changes stopped")
        finally:
            self._close()

    def _prime(self) -> None:
        """Read where changes stand now (SQLite), before the first pass."""

    def _watch(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Close the watch's own connection, if open."""


class _SQLiteWatch(ChangeWatch):
    """Polls migration 0016's ``service_generation`` counter every ``POLL_S``."""

    def __init__(
        self, database: str, wake: Callable[[], None], leading: Callable[[], bool]
    ) -> None:
        super().__init__(wake, leading)
        self._database = database
        self._connection: sqlite3.Connection | None = None
        self._seen: int | None = None
        self._outage = OutageLog(
            log,
            "watching for service changes from other workers",
            POLL_S,
            "service changes from other workers are watched again",
        )

    def _read(self) -> int | None:
        try:
            if self._connection is None:
                # Autocommit and never writing, outside the pool (as the credential counter's,
                # services.credential_counter): between reads it holds no snapshot that would
                # keep a checkpoint from finishing. Opened by start() and read by the watch thread.
                self._connection = sqlite3.connect(
                    self._database, check_same_thread=False, isolation_level=None, timeout=5
                )
            found = self._connection.execute(SERVICE_GENERATION_SQL).fetchone()
        except sqlite3.Error as exc:
            # Changes are then reconciled at the periodic pass, as before this watch.
            self._outage.failed(str(exc))
            self._close()
            return None
        self._outage.worked()
        return int(found[0]) if found else None

    def _prime(self) -> None:
        self._seen = self._read()

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            if not self._leading():
                continue
            value = self._read()
            if value is not None and value != self._seen:
                if self._seen is not None:
                    self._wake()
                self._seen = value

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()


class _PostgresWatch(ChangeWatch):
    """LISTENs on ``certctl_services`` while this process leads; reconnects when cut."""

    def __init__(
        self,
        engine: Engine,
        wake: Callable[[], None],
        leading: Callable[[], bool],
        *,
        lock_session: Callable[[], int | None] | None = None,
        session_ended: Callable[[], None] | None = None,
    ):
        super().__init__(wake, leading)
        self._engine = engine
        self._lock_session = lock_session
        self._session_ended = session_ended
        self._connection: Any = None  # the watch thread's alone
        # Written to by stop() and step_down() to end the thread's wait for a notification
        # (psycopg's notifies() has no way to be interrupted).
        self._poke_r, self._poke_w = socket.socketpair()
        self._poke_r.setblocking(False)
        self._poke_w.setblocking(False)
        self._failed = False
        self._retry_s = RETRY_S
        self._errors: tuple[type[Exception], ...] = (
            DBAPIError,
            PoolTimeout,
            engine.dialect.loaded_dbapi.Error,
        )

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self._connection is None:
                # Cleared before leading() is asked: a step_down() that found it set saw no
                # connection, and none is opened once leading() said no.
                self._idle.clear()
            if not self._leading():
                self._close()  # a follower holds no connection for this
                self._stop.wait(POLL_S)
                continue
            try:
                if self._connection is None:
                    self._listen()
                    self._retry_s = RETRY_S
                    if self._failed:
                        self._failed = False
                        log.info("listening for service changes again")
                    # What committed between the last pass's read and this LISTEN (or while
                    # the connection was down) sent its notification to nobody: one pass.
                    self._wake()
                if self._wait_readable(POLL_S):
                    # timeout=0: what arrived, without waiting again.
                    for _ in self._connection.notifies(timeout=0):
                        self._wake()
            except self._errors as exc:
                self._failure(exc)
                self._stop.wait(self._retry_s)
                self._retry_s = min(2 * self._retry_s, RETRY_MAX_S)

    def _run(self) -> None:
        try:
            super()._run()
        finally:
            self._poke_r.close()
            self._poke_w.close()  # a later stop() or step_down() finds it closed: no-op

    def _wait_readable(self, timeout_s: float) -> bool:
        """Wait until the connection has input or the watch is interrupted; True for input.

        The leader lock's session is watched too: the server closing it (its half of the
        TCP connection shut: POLLRDHUP) or it failing (POLLHUP, POLLERR) calls
        ``session_ended``. Not its input (POLLIN): every answer to the scheduler's own
        statements would wake this wait. Before, a leader whose lock session was ended from
        outside found out at its next pass (``reconcile-interval``), its listener open next
        to its successor's meanwhile.
        """
        # poll(), not select(): a server's descriptors go past 1023 under load (run.py).
        waiting = select.poll()
        listening = self._connection.fileno()
        waiting.register(listening, select.POLLIN)
        waiting.register(self._poke_r, select.POLLIN)
        session = self._lock_session() if self._lock_session is not None else None
        if session is not None and session != listening and _RDHUP:
            # Only the hang-up: POLLHUP, POLLERR and POLLNVAL are always reported.
            waiting.register(session, _RDHUP)
        else:
            session = None
        ready = {fd for fd, _events in waiting.poll(timeout_s * 1000)}
        if session in ready and self._session_ended is not None:
            # Confirmed by the scheduler's next leadership check: the descriptor may be
            # another connection's by now, the lock released and taken again since.
            self._session_ended()
            return False  # the loop looks up first: leading() may say no now
        if self._poke_r.fileno() in ready:
            with contextlib.suppress(OSError):  # BlockingIOError: drained
                while self._poke_r.recv(64):
                    pass
            return False  # the loop looks up first; input waits for the next round
        return bool(ready)

    def _interrupt(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: a poke is pending already
            self._poke_w.send(b"x")

    def _listen(self) -> None:
        # Outside database-pool-size, as the credential counter's (services.credential_counter);
        # exempt from idle_session_timeout, which would end it at every period, each time a
        # warning and a reconnection, the changes made meanwhile waiting for the periodic pass.
        connection = detached_session(self._engine)
        try:
            connection.execute(f"LISTEN {SERVICE_CHANGES_CHANNEL}")
        except Exception:
            with contextlib.suppress(Exception):
                connection.close()
            raise
        self._connection = connection

    def _failure(self, exc: Exception) -> None:
        self._close()
        if not self._failed:  # once per outage
            self._failed = True
            # The driver's own message (a raw connection: not wrapped by SQLAlchemy) names
            # the host and the failure, never the password.
            fault = storage_error(exc)
            reason = fault.detail if fault is not None else str(exc).strip().split("\n")[0]
            reason = reason or type(exc).__name__
            log.warning(
                "listening for service changes failed (%s); changes made through other "
                "workers or replicas wait for the periodic pass until it works again",
                reason,
            )

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                connection.close()
        self._idle.set()


def watch_changes(
    engine: Engine,
    wake: Callable[[], None],
    leading: Callable[[], bool],
    *,
    lock_session: Callable[[], int | None] | None = None,
    session_ended: Callable[[], None] | None = None,
) -> ChangeWatch | None:
    """The watch for this store's backend; None where there is nothing to watch.

    On PostgreSQL, ``lock_session`` gives the socket of the leader lock's session, and
    ``session_ended`` is called (from the watch's thread) when that socket says the server
    closed it or it failed.
    """
    if engine.dialect.name == "postgresql":
        return _PostgresWatch(
            engine, wake, leading, lock_session=lock_session, session_ended=session_ended
        )
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        return _SQLiteWatch(engine.url.database, wake, leading)
    return None
