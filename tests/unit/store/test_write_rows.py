"""write_rows on SQLite binds through a compiled plan: the same rows Core's INSERT stores."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Table, create_engine, insert
from sqlalchemy.exc import StatementError

from certctl.services.audit import event_values
from certctl.store.db import migrate
from certctl.store.groupcommit import Insert, _plan, write_rows
from certctl.store.models import AuditEvent, CertificateRecord

# A declarative model's __table__ is typed as a FromClause; it is a Table.
CERTIFICATES: Table = CertificateRecord.__table__  # type: ignore[assignment]
EVENTS: Table = AuditEvent.__table__  # type: ignore[assignment]


def _engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}")
    migrate(engine)
    return engine


def _certificate(n: int, **changes: Any) -> dict[str, Any]:
    at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC) + timedelta(minutes=n)
    row: dict[str, Any] = {
        "id": f"{n:032x}",
        "issuer_id": "default",
        "serial": f"{n:040x}",
        "common_name": f"node-{n}.example.com",
        "subject": f"CN=node-{n}.example.com,O=Ünïcode",
        "sans": {"dns": [f"node-{n}.example.com", "b.internal"], "ip": ["10.0.0.1"]},
        "profile": "server",
        "status": "active",
        "not_before": at,
        # Another offset: stored converted to UTC, as the column type does.
        "not_after": at.astimezone(timezone(timedelta(hours=-5))) + timedelta(days=90),
        "certificate_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "wrapped_key": b"\x00\x01wrapped" if n % 2 else None,
        "created_at": at,
        "created_by": "admin",
        "revoked_at": None if n % 3 else at + timedelta(days=1),
        "revocation_reason": None if n % 3 else "keyCompromise",
        "renewed_from": None,
        "renewed_by": None,
    }
    row.update(changes)
    return row


def _rows(n: int) -> list[Insert]:
    cert = _certificate(n)
    audit = event_values(
        at=cert["created_at"], actor="admin", action="certificate.issue", target=cert["id"]
    )
    return [(CERTIFICATES, cert), (EVENTS, audit)]


def _stored(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row as SQLite holds it: each value with its storage class."""
    with sqlite3.connect(path) as db:
        out = {}
        for table in ("certificates", "audit_events"):
            names = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            columns = ", ".join(f"{n}, typeof({n})" for n in names)
            out[table] = db.execute(f"SELECT {columns} FROM {table} ORDER BY 1").fetchall()
        return out


def _core(engine: Engine, rows: list[Insert]) -> None:
    with engine.begin() as connection:
        for table, values in rows:
            connection.execute(insert(table), [values])


def test_the_plan_stores_what_core_stores(tmp_path: Path) -> None:
    rows = [row for n in range(6) for row in _rows(n)]
    planned, core = _engine(tmp_path / "planned.db"), _engine(tmp_path / "core.db")
    # The fast path is the one taken for the issuance rows (else this compares Core to Core).
    for table, values in rows[:2]:
        assert _plan(planned, table, tuple(values)) is not None
    with planned.begin() as connection:
        write_rows(connection, rows[:2])  # one request's rows: single-row execute
        write_rows(connection, rows[2:])  # a group: executemany
    _core(core, rows)
    stored = _stored(tmp_path / "planned.db")
    assert len(stored["certificates"]) == 6
    assert len(stored["audit_events"]) == 6
    assert stored == _stored(tmp_path / "core.db")


def test_a_column_left_out_gets_its_default_as_with_core(tmp_path: Path) -> None:
    # status and common_name have Python-side defaults that Core computes per row.
    cert = _certificate(1)
    del cert["status"], cert["common_name"]
    rows: list[Insert] = [(CERTIFICATES, cert), (CERTIFICATES, dict(cert, id="2" * 32, serial="2"))]
    planned, core = _engine(tmp_path / "planned.db"), _engine(tmp_path / "core.db")
    with planned.begin() as connection:
        write_rows(connection, rows)
    _core(core, rows)
    stored = _stored(tmp_path / "planned.db")
    assert [(r[14], r[6]) for r in stored["certificates"]] == [("active", "")] * 2
    assert stored == _stored(tmp_path / "core.db")


def test_a_value_its_type_refuses_fails_as_with_core(tmp_path: Path) -> None:
    naive = _certificate(1, not_before=datetime(2026, 1, 1))  # naive: refused
    errors = []
    for name, write in (
        ("planned", lambda c: write_rows(c, [(CERTIFICATES, naive)])),
        ("core", lambda c: c.execute(insert(CERTIFICATES), [naive])),
    ):
        engine = _engine(tmp_path / f"{name}.db")
        with engine.begin() as connection, pytest.raises(StatementError) as raised:
            write(connection)
        errors.append((type(raised.value), str(raised.value.orig)))
    assert errors[0] == errors[1]
    assert "naive datetime" in errors[0][1]


def test_an_engine_let_go_leaves_no_plan_behind(tmp_path: Path) -> None:
    # The plans were kept in a WeakKeyDictionary keyed by the dialect, whose values (the
    # types' bind processors) hold that dialect: no entry was ever dropped, and every engine
    # that wrote rows kept its dialect and plans in memory for good.
    import gc
    import weakref

    from certctl.store import groupcommit

    engine = _engine(tmp_path / "gone.db")
    with engine.begin() as connection:
        write_rows(connection, _rows(1))
    dialect = weakref.ref(engine.dialect)
    assert any(e.dialect is dialect() for e in groupcommit._plans)
    engine.dispose()
    del engine, connection
    for _ in range(2):  # the entry goes with the engine; its plans (and dialect) at the next
        gc.collect()
    assert dialect() is None  # the plans hold it: they are gone too
