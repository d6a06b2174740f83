"""The credential generation counter (auth_generation), read on a connection of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import sqlite3
import sys
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError

from certctl.store.db import PoolTimeout, detached_session

__all__ = [
    "GENERATION_SQL",
    "WAL_INDEX_HEADER",
    "Generation",
    "PostgresCounter",
    "SQLiteCounter",
    "wal_index",
]

log = logging.getLogger("certctl.services")


# The WAL-index header (https://sqlite.org/walformat.html, "The WAL-Index Header"): the first
# 48 bytes of the ``-shm`` file, which SQLite rewrites at every commit, whichever process or
# connection makes it; its change counter (iChange) grows by one per commit, so equal bytes
# mean that nothing was committed in between.
WAL_INDEX_HEADER = 48
_WAL_INDEX_VERSION = 3007000  # iVersion, in native byte order; isInit (byte 12) is 1
# Read-only maps of WAL-index files by (device, inode), made once and never closed, nor their
# descriptors: closing any descriptor of a file drops every POSIX lock this process holds on
# it, including the locks SQLite's own connections hold on the ``-shm`` file (and a map keeps
# a descriptor of its own). A server has one database; past _WAL_INDEX_MAX (a test run opens
# many), a database's cache reads the counter on every request instead.
_WAL_INDEX_MAPS: dict[tuple[int, int], mmap.mmap | None] = {}
_WAL_INDEX_MAX = 64
_WAL_INDEX_FDS: list[int] = []
_WAL_INDEX_LOCK = threading.Lock()


def wal_index(database: str) -> mmap.mmap | None:
    """A read-only map of the database's WAL-index header; None when there is none."""
    # SQLite names the file after the database path with symbolic links resolved.
    path = os.path.realpath(database) + "-shm"
    with _WAL_INDEX_LOCK:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        if key not in _WAL_INDEX_MAPS:
            if len(_WAL_INDEX_MAPS) >= _WAL_INDEX_MAX:
                return None
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return None
            _WAL_INDEX_FDS.append(fd)
            try:
                _WAL_INDEX_MAPS[key] = mmap.mmap(fd, WAL_INDEX_HEADER, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # ValueError: the file is shorter than a header
                _WAL_INDEX_MAPS[key] = None
        view = _WAL_INDEX_MAPS[key]
    if view is None:
        return None
    header = view[:WAL_INDEX_HEADER]
    if int.from_bytes(header[:4], sys.byteorder) != _WAL_INDEX_VERSION or header[12] != 1:
        return None  # not an initialised WAL index: the counter is read on every request
    return view


class SQLiteCounter:
    """The ``auth_generation`` counter of a SQLite database, on a connection that never writes.

    The connection keeps the database open in WAL mode, which holds a shared lock on the
    database and on the ``-shm`` file: while it lives, no other process can leave WAL mode,
    delete the file or truncate it (SQLite maps the same file itself, see
    ``key_authentication._KeyCache``).
    """

    def __init__(self, database: str) -> None:
        self._connection = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        mode = self._connection.execute("PRAGMA journal_mode").fetchone()
        self.wal = mode is not None and str(mode[0]).lower() == "wal"

    def read(self, sql: str | None = None) -> int | None:
        """The counter's value (or ``sql``'s, another one-row counter); None when unreadable."""
        try:
            with self._lock:
                found = self._connection.execute(sql or GENERATION_SQL).fetchone()
        except sqlite3.Error:
            return None
        return int(found[0]) if found else None


class PostgresCounter:
    """The ``auth_generation`` counter of a PostgreSQL database, on a connection of its own.

    In autocommit, one round trip per read (psycopg prepares the statement after a few):
    ~25 µs CPU in-process, against ~200 µs through the pool (a checkout's ping, BEGIN, the
    read, the ROLLBACK of the return). Each read is a statement of its own, so it sees every
    transaction committed before it, from any replica; the key read after it sees at least
    those. Taken from the engine's pool and detached (its connect arguments and session
    settings: the timeouts of ``store.db``), so a process holds one connection more than its
    pool. Closed with the engine's pool (``Engine.dispose``) and opened again when next read.
    Any failure (a restart, a cut) closes it and answers None, so that the caller reads the
    store through the pool, which reports the outage. It is opened again a second later, and
    each failure to open it doubles that wait, up to RETRY_MAX. Opening it waits as long as
    a pooled connection does (up to ``connect_timeout``, 5 s, against a database that does
    not answer): asked on the event loop, it is opened in a thread of its own and the reads
    meanwhile answer None (before, the request that reopened it after an outage stalled
    every other request of the process that long). A worker thread opens it itself.
    """

    RETRY_AFTER = 1.0
    RETRY_MAX = 30.0

    def __init__(self, engine: Engine) -> None:
        # Weak: the cache is the value of a WeakKeyDictionary keyed by the engine.
        self._engine = weakref.ref(engine)
        self._lock = threading.Lock()
        self._connection: Any = None
        self._cursor: Any = None
        self._retry_at = 0.0
        self._retry_after = self.RETRY_AFTER
        self._failed = False
        self._opening = False  # a thread is opening the connection
        self._disposals = 0  # a connection opened before a disposal is not kept
        # What a connection that fails raises: the driver's own errors, SQLAlchemy's wrapped,
        # and (opening it) no pooled connection free in time (database-pool-size).
        self._errors: tuple[type[Exception], ...] = (
            DBAPIError,
            PoolTimeout,
            engine.dialect.loaded_dbapi.Error,
        )
        event.listen(engine, "engine_disposed", self._disposed)

    def read(self, sql: str | None = None) -> int | None:
        """The counter's value (or ``sql``'s, another one-row counter); None when unreadable.

        Another counter is read on the same connection: a process holds one connection
        more than its pool, not one per counter.
        """
        with self._lock:
            try:
                cursor = self._cursor
                if cursor is None:
                    cursor = self._connect()
                    if cursor is None:
                        return None
                cursor.execute(sql or GENERATION_SQL)
                found = cursor.fetchone()
            except self._errors as exc:
                self._failure(exc, reopening=self._connection is None)
                return None
            self._failed, self._retry_after = False, self.RETRY_AFTER
        return int(found[0]) if found else None

    def _failure(self, exc: Exception, *, reopening: bool) -> None:
        """Under ``_lock``: close, and try again after a while (longer if opening failed)."""
        self._close()
        self._retry_at = time.monotonic() + self._retry_after
        if reopening:
            self._retry_after = min(2 * self._retry_after, self.RETRY_MAX)
        if not self._failed:  # once per outage, not once per request
            self._failed = True
            log.warning("credential generation not read (no caching meanwhile): %s", exc)

    def _connect(self) -> Any:
        """Under ``_lock``: the cursor, opened here, or None (opening in a thread, or later)."""
        engine = self._engine()
        if engine is None or self._opening or time.monotonic() < self._retry_at:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: it may wait for the connection
            self._connection = self._open(engine)
            self._cursor = self._connection.cursor()
            return self._cursor
        self._opening = True
        threading.Thread(
            target=self._open_aside,
            args=(engine, self._disposals),
            name="certctl-credential-counter",
            daemon=True,  # bounded by connect_timeout; nothing to finish at exit
        ).start()
        return None

    def _open_aside(self, engine: Engine, disposals: int) -> None:
        try:
            connection = self._open(engine)
        except Exception as exc:
            with self._lock:
                self._opening = False
                if isinstance(exc, self._errors):
                    self._failure(exc, reopening=True)
                    return
            log.exception("credential generation connection not opened")
            return
        with self._lock:
            self._opening = False
            if disposals == self._disposals and self._connection is None:
                self._connection, self._cursor = connection, connection.cursor()
                return
        with contextlib.suppress(Exception):  # the engine was disposed meanwhile
            connection.close()

    @staticmethod
    def _open(engine: Engine) -> Any:
        # Held for the life of the process, idle whenever no request comes.
        return detached_session(engine)

    def _close(self) -> None:
        connection, self._connection, self._cursor = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                connection.close()

    def _disposed(self, _engine: Engine) -> None:
        with self._lock:
            self._disposals += 1
            self._close()

    def __del__(self) -> None:
        self._close()


GENERATION_SQL = "SELECT value FROM auth_generation WHERE id = 1"


class Generation:
    """A one-row store counter read as a version that never goes back, for a cache's entries.

    ``version()`` is the counter plus an offset that grows whenever the counter is seen to go
    back (a database restored from a backup, a failover to a standby that lagged, its
    migration undone and applied again): the rows at a value it reaches again need not be
    those an entry was read from, and entries compare versions for equality. So versions
    never decrease, and the last one handed out is also the largest.

    With ``wal_index`` (SQLite in WAL mode) the counter is read only when the WAL-index header
    changed since the last read: any commit changes it, and while it is unchanged the counter
    cannot have moved. The key cache and the certificate cache each keep one, on the same
    connection, over their own counters.
    """

    def __init__(
        self,
        counter: SQLiteCounter | PostgresCounter,
        *,
        sql: str | None = None,
        name: str,
        forgotten: str,
    ) -> None:
        self._counter = counter
        self._sql = sql
        self._name = name  # "credential generation": for the warning
        self._forgotten = forgotten  # what is read again after the counter went back
        self._lock = threading.Lock()
        self._last_raw = -1
        self._offset = 0
        # (WAL-index header, generation read after it) at the last read of the counter.
        self._seen: tuple[bytes, int] | None = None
        self.wal_index: mmap.mmap | None = None

    def version(self) -> int | None:
        """The generation, or None when it cannot be read (no caching then)."""
        header = None
        if self.wal_index is not None:
            header = self.wal_index[:WAL_INDEX_HEADER]
            seen = self._seen
            if seen is not None and header == seen[0]:
                return seen[1]
        generation = self.read()
        if generation is not None and header is not None:
            # The header was copied before the counter was read: a commit in between
            # changes the header again, so the pair never vouches for a stale generation.
            self._seen = (header, generation)
        return generation

    def last_version(self) -> int | None:
        """The version ``version()`` or ``read()`` handed out last, reading nothing.

        None before the first read; else what a request that just authenticated saw.
        """
        with self._lock:
            return None if self._last_raw < 0 else self._last_raw + self._offset

    def read(self) -> int | None:
        """The counter read now (never the WAL-index shortcut), as a version."""
        raw = self._counter.read(self._sql)
        if raw is None:
            return None
        with self._lock:
            if raw < self._last_raw:
                self._offset += self._last_raw + 1 - raw
                log.warning(
                    "%s went back (%d -> %d): %s are read again",
                    self._name,
                    self._last_raw,
                    raw,
                    self._forgotten,
                )
            self._last_raw = raw
            return raw + self._offset
