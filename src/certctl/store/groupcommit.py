"""Group commit: rows of concurrent requests share one transaction, so one commit (one fsync).

With ``synchronous=FULL`` every SQLite commit waits for an fsync of the WAL, which costs more
than signing a certificate. Requests that finish their work while a commit is in flight queue
their rows; the next commit writes them all. A request is answered only after the commit that
holds its rows has returned, so durability is unchanged, and an idle server commits at once
(no timer, no added latency). The commit runs in a worker thread: the event loop keeps parsing
and signing meanwhile.

A group that fails on a row is retried one request at a time, so a row that breaks a
constraint fails only its own request; a storage fault fails the whole group with its error.

Rows are ``(table, column values)`` pairs written with Core ``INSERT``s (executemany per
table): ORM objects and the unit of work would cost more CPU than the inserts themselves for
rows that are never updated in the same transaction. On SQLite the ``INSERT`` is compiled once
per table and column set and its parameters bound by the columns' own types (what Core does
per statement, see ``_Plan``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert

from certctl.store.db import storage_error

__all__ = ["GroupCommit", "Insert", "write_rows"]

# A row to insert: its table and its column values.
Insert = tuple[Table, dict[str, Any]]


@dataclass
class _Queue:
    pending: list[tuple[list[Insert], asyncio.Future[None]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class GroupCommit:
    """Write ORM rows for many concurrent requests in as few transactions as possible."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        database = engine.url.database
        self._lock_path: str | None = None
        if engine.dialect.name == "sqlite" and database and database != ":memory:":
            self._lock_path = f"{database}.commit-lock"
        self._lock_owner = 0
        self._lock_fd = -1
        # One queue per event loop (tests may run several loops over one Services).
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
            weakref.WeakKeyDictionary()
        )

    async def add(self, rows: list[Insert]) -> None:
        """Insert ``rows`` (one request's new rows); return once they are committed.

        Raises:
            Whatever the commit raised (``DBAPIError`` for a storage fault).
        """
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        future: asyncio.Future[None] = loop.create_future()
        queue.pending.append((rows, future))
        if queue.task is None:
            queue.task = loop.create_task(self._drain(loop, queue))
        await future

    async def _drain(self, loop: asyncio.AbstractEventLoop, queue: _Queue) -> None:
        try:
            while queue.pending:
                group, queue.pending = queue.pending, []
                try:
                    await loop.run_in_executor(
                        None, self._commit, [row for rows, _ in group for row in rows]
                    )
                except Exception as exc:
                    if len(group) == 1 or storage_error(exc) is not None:
                        # A full, read-only or unreachable database fails them all alike:
                        # retried one by one it would only fail again, once per request
                        # (seconds each when PostgreSQL cannot be reached).
                        for _, future in group:
                            _settle(future, exc)
                        continue
                    for rows, future in group:  # one by one: only the bad rows fail
                        try:
                            await loop.run_in_executor(None, self._commit, rows)
                        except Exception as single:
                            _settle(future, single)
                        else:
                            _settle(future, None)
                    continue
                for _, future in group:
                    _settle(future, None)
        finally:
            queue.task = None

    def _commit(self, rows: list[Insert]) -> None:
        with self._writer_turn(), self._engine.begin() as connection:
            write_rows(connection, rows)

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On a SQLite file, wait for the other processes' commits in a queue (``flock``).

        SQLite lets one writer in at a time and makes the others poll: its busy handler
        sleeps 1, 2, 5, 10 … ms between tries, so with several workers a commit that finds
        the lock taken waits milliseconds after it was freed, and its whole group of
        requests with it. ``flock`` wakes the next waiter as soon as the lock is released.
        The lock file is opened per process: a descriptor inherited through ``fork`` would
        share its lock with the parent.
        """
        if self._lock_path is None:
            yield
            return
        if self._lock_owner != os.getpid():
            try:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                # A read-only or full disk: no queue, and the commit itself reports the
                # storage fault (503) as it would without one. Tried again next commit.
                yield
                return
            self._lock_fd, self._lock_owner = fd, os.getpid()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)


def write_rows(connection: Connection, rows: Sequence[Insert]) -> None:
    """Insert ``rows`` on ``connection``: one executemany per table and column set."""
    groups: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = {}
    for table, values in rows:
        groups.setdefault((table, tuple(values)), []).append(values)
    sqlite = connection.dialect.name == "sqlite"
    for (table, columns), params in groups.items():
        plan = _plan(connection.engine, table, columns) if sqlite else None
        if plan is not None:
            try:
                bound = [plan.bind(values) for values in params]
            except Exception:
                # A value its type refuses (a naive datetime): Core raises its own error for
                # it, the one the caller has always seen.
                bound = None
            if bound is not None:
                connection.exec_driver_sql(plan.sql, bound)
                continue
        connection.execute(insert(table), params)


@dataclass(frozen=True)
class _Plan:
    """An ``INSERT`` of one table and column set, compiled for SQLite, and its binding.

    Core compiles (or finds in its cache) the statement and binds every parameter through
    the column types' processors on each execution; in the group commit that was most of the
    CPU its thread spent in Python, more than SQLite's own inserts. The statement text and
    the processors are the ones Core would use, taken from Core once: the same SQL, the
    same values stored (tests/unit/store/test_write_rows.py compares both), and the same
    ``DBAPIError`` from ``exec_driver_sql`` for a row the database refuses.
    """

    sql: str
    steps: tuple[tuple[str, Any], ...]  # (column, its type's bind processor or None)

    def bind(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            [
                values[name] if process is None else process(values[name])
                for name, process in self.steps
            ]
        )


# Per engine (its dialect's processors may depend on the engine's settings), at most a few
# tables and column sets each, dropped with the engine. Not keyed by the dialect: the plans'
# processors hold it, so a weak key to it never died and kept every engine's plans for good.
_plans: weakref.WeakKeyDictionary[Engine, dict[tuple[Table, tuple[str, ...]], _Plan | None]] = (
    weakref.WeakKeyDictionary()
)


def _plan(engine: Engine, table: Table, columns: tuple[str, ...]) -> _Plan | None:
    """The compiled ``INSERT`` of ``columns`` into ``table``, or None where Core must run it.

    None when the compiled statement takes any parameter beyond ``columns`` (a column left
    out whose Python-side default Core computes per row) or names one differently.
    """
    dialect = engine.dialect
    plans = _plans.get(engine)
    if plans is None:
        plans = _plans[engine] = {}
    key = (table, columns)
    if key in plans:
        return plans[key]
    compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
    order = compiled.positiontup
    plan = None
    if (
        dialect.paramstyle == "qmark"
        and order is not None
        and sorted(order) == sorted(columns)
        and all(table.c[name].key == name for name in order)
    ):
        plan = _Plan(
            compiled.string,
            tuple(
                (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
                for name in order
            ),
        )
    plans[key] = plan
    return plan


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client gone): nothing to tell it
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
