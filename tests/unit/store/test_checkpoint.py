"""``store.db.checkpoint``: what a stopping server does to its SQLite write-ahead log."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, text

from certctl.store.db import checkpoint, create_store_engine


def _engine_with_rows(path: Path, rows: int) -> Engine:
    engine = create_store_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (v INTEGER)"))
        for value in range(rows):
            connection.execute(text("INSERT INTO t VALUES (:v)"), {"v": value})
    return engine


def test_checkpoint_moves_every_commit_into_the_database_file(tmp_path: Path) -> None:
    db = tmp_path / "certctl.db"
    engine = _engine_with_rows(db, 50)
    checkpoint(engine)
    assert (tmp_path / "certctl.db-wal").stat().st_size == 0
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())  # the cold copy a backup takes: the database file alone
    assert sqlite3.connect(copy).execute("SELECT count(*) FROM t").fetchone() == (50,)


def test_a_transaction_left_open_delays_the_stop_by_seconds_not_the_busy_timeout(
    tmp_path: Path,
) -> None:
    # A scheduler pass cut by SIGTERM can leave a write open: the checkpoint waited for the
    # engine's 30 s busy timeout, past a Kubernetes pod's 30 s grace period (then SIGKILL).
    db = tmp_path / "certctl.db"
    engine = _engine_with_rows(db, 5)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (99)")
    try:
        started = time.monotonic()
        checkpoint(engine)
        took = time.monotonic() - started
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert 1.5 < took < 10, took
    with engine.connect() as connection:
        # The engine's own busy timeout is back for whatever still runs.
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_the_connection_returned_last_is_handed_out_first(tmp_path: Path) -> None:
    # It wrote last, so its page cache is still good: another connection would throw its own
    # away and read the pages again (store/db.py, create_store_engine).
    engine = create_store_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    first, second = engine.connect(), engine.connect()
    first_dbapi, second_dbapi = (
        first.connection.dbapi_connection,
        second.connection.dbapi_connection,
    )
    first.close()
    second.close()
    with engine.connect() as again:
        assert again.connection.dbapi_connection is second_dbapi
        assert again.connection.dbapi_connection is not first_dbapi
