"""storage_error: storage faults become StorageUnavailable (503), SQL mistakes stay bugs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from certctl.errors import StorageUnavailable
from certctl.store.db import create_store_engine, storage_error


def _sqlite_error(name: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("message")
    exc.sqlite_errorname = name
    return exc


@pytest.mark.parametrize(
    ("name", "words", "retry_after_s"),
    [
        ("SQLITE_FULL", "storage is full", 5),
        ("SQLITE_READONLY", "storage is read-only", 5),
        ("SQLITE_READONLY_DBMOVED", "storage is read-only", 5),
        ("SQLITE_IOERR_WRITE", "storage I/O error", 5),
        ("SQLITE_IOERR_SHMSIZE", "storage is full", 5),  # what a full disk gives at start
        ("SQLITE_CORRUPT", "storage is damaged", 5),
        ("SQLITE_CANTOPEN", "cannot open the database file", 5),
        ("SQLITE_BUSY", "storage is busy", 1),  # another writer past busy_timeout: soon over
        ("SQLITE_LOCKED", "storage is busy", 1),
    ],
)
def test_sqlite_faults(name: str, words: str, retry_after_s: int) -> None:
    fault = storage_error(OperationalError("INSERT …", {}, _sqlite_error(name)))
    assert isinstance(fault, StorageUnavailable)
    assert fault.status == 503
    assert words in fault.detail
    assert "INSERT" not in fault.detail
    # Each 503 says when to try again (Retry-After); these had none.
    assert fault.retry_after_s == retry_after_s


def test_sqlite_sql_mistake_is_a_bug() -> None:
    engine = create_engine("sqlite://")
    with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
        conn.execute(text("SELEC 1"))
    assert storage_error(caught.value) is None
    with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
        conn.execute(text("SELECT * FROM missing"))
    assert storage_error(caught.value) is None


def test_postgresql_faults() -> None:
    full = storage_error(OperationalError("x", {}, psycopg.errors.DiskFull("no space")))
    assert full is not None
    assert full.detail.startswith("storage is full")
    ro = storage_error(DBAPIError("x", {}, psycopg.errors.ReadOnlySqlTransaction("read-only")))
    assert ro is not None
    assert ro.detail.startswith("storage is read-only")
    down = storage_error(OperationalError("x", {}, psycopg.OperationalError("refused")))
    assert down is not None
    assert "cannot be reached" in down.detail
    assert (full.retry_after_s, ro.retry_after_s, down.retry_after_s) == (5, 5, 5)
    dupe = IntegrityError("x", {}, psycopg.errors.UniqueViolation("duplicate"))
    assert storage_error(dupe) is None


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (psycopg.errors.DeadlockDetected("deadlock detected"), "deadlocked with a concurrent"),
        (
            psycopg.errors.SerializationFailure("could not serialize"),
            "conflicted with a concurrent",
        ),
    ],
)
def test_a_postgresql_transaction_ended_for_another_is_busy_not_unreachable(
    error: psycopg.Error, words: str
) -> None:
    # OperationalErrors both, which said "the database cannot be reached": the database
    # answered, and rolled this transaction back for another's sake.
    fault = storage_error(OperationalError("UPDATE …", {}, error))
    assert fault is not None
    assert fault.detail.startswith("storage is busy: ")
    assert words in fault.detail
    assert "cannot be reached" not in fault.detail
    assert fault.retry_after_s == 1


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
            "held longer than the database's lock_timeout",
        ),
        (
            psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
            "ran past the database's statement_timeout",
        ),
    ],
)
def test_a_postgresql_statement_cancelled_at_its_timeout_is_busy_not_unreachable(
    error: psycopg.Error, words: str
) -> None:
    # OperationalErrors both, which said "the database cannot be reached": it answered, and
    # cancelled the statement at a limit set for the role or database.
    fault = storage_error(OperationalError("SELECT pg_advisory_xact_lock …", {}, error))
    assert fault is not None
    assert fault.detail.startswith("storage is busy: ")
    assert words in fault.detail
    assert "cannot be reached" not in fault.detail
    assert fault.retry_after_s == 1


def test_not_a_database_error() -> None:
    assert storage_error(OSError(28, "No space left on device")) is None


def test_a_file_that_is_no_database_is_damaged_storage(tmp_path: Path) -> None:
    # A certctl.db replaced by garbage (a bad restore) gave "internal error (DatabaseError:
    # ... file is not a database (Background on this error at: https://sqlalche.me/...))".
    db = tmp_path / "certctl.db"
    db.write_bytes(bytes(range(256)) * 64)
    engine = create_store_engine(f"sqlite:///{db}")
    with pytest.raises(DBAPIError) as caught, engine.connect() as conn:
        conn.execute(text("SELECT 1 FROM actors"))
    engine.dispose()
    fault = storage_error(caught.value)
    assert fault is not None
    assert fault.detail == "storage is damaged: the database file is not an SQLite database"
