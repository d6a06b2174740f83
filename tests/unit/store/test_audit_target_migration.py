"""Migration 0033 indexes the audit log's target filter, and takes the index back (SQLite;
PostgreSQL in faults). The plan checked is that of the statement list_audit runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, delete, event, insert, inspect, text
from sqlalchemy.orm import Session

from certctl.services.audit import AuditFilter, list_audit
from certctl.store import db
from certctl.store.models import AuditEvent
from tests.unit.store.test_migration_head import _config, downgrade_store


def _before(revision: str) -> str:
    """The revision ``revision`` follows, as its script says (merges may rechain it)."""
    down = ScriptDirectory.from_config(_config()).get_revision(revision).down_revision
    assert isinstance(down, str)
    return down


def _event(i: int, target: str) -> dict[str, Any]:
    return {
        "at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i),
        "actor": "ci",
        "action": "certificate.issue",
        "target": target,
        "outcome": "success",
        "source": "",
        "detail": "",
        "credential": "",
    }


def _fill(engine: Engine, rows: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            insert(AuditEvent), [_event(i, f"{i * 7919:016x} serial {i:08x}") for i in range(rows)]
        )
        connection.execute(insert(AuditEvent), [_event(rows, "Rare-Target 0A1B serial 77")])
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE audit_events"))


def _targets(engine: Engine, target: str) -> list[str]:
    with Session(engine) as session:
        found = list_audit(session, limit=50, after=None, where=AuditFilter(target=target))
        return [e.target for e in found]


def _plan(engine: Engine, target: str) -> str:
    """EXPLAIN of the statement list_audit runs for ``?target=``, as it sent it."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM audit_events" in statement:
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        _targets(engine, target)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = sent[-1]
    explain = "EXPLAIN" if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            # At 30,000 events a sequential scan still costs less to the planner (at 200,000
            # it takes the index by itself: bench/audit_filter.py); not the primary key's
            # order either: the trigram index serves this very statement.
            connection.exec_driver_sql("SET enable_seqscan = off")
        rows = connection.exec_driver_sql(f"{explain} {statement}", parameters).all()
    return " | ".join(str(row[-1]) for row in rows)


def check_0033(engine: Engine) -> None:
    """0033 on ``engine`` (at head): the target filter planned by the trigram index."""
    db.migrate(engine)
    _fill(engine, 30_000)
    plan = _plan(engine, "rare-target 0a1b")
    if engine.dialect.name == "postgresql":
        assert "Bitmap Index Scan on ix_audit_events_target_trgm" in plan, plan
    else:
        # The FTS5 table's LIKE by its index (L), newest first (192: ORDER BY rowid DESC,
        # no sort: the page's end stops it), then each candidate's event by primary key.
        assert "SCAN audit_events_target_fts VIRTUAL TABLE INDEX 192:L" in plan, plan
        assert "SEARCH audit_events USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    assert _targets(engine, "rare-target 0a1b") == ["Rare-Target 0A1B serial 77"]
    assert _targets(engine, "RARE-TARGET") == ["Rare-Target 0A1B serial 77"]
    # Kept by triggers: an event added, changed, removed after the migration.
    with engine.begin() as connection:
        connection.execute(insert(AuditEvent), [_event(9000, "later-target x")])
    assert _targets(engine, "later-targ") == ["later-target x"]
    with engine.begin() as connection:
        connection.execute(delete(AuditEvent).where(AuditEvent.target == "later-target x"))
    assert _targets(engine, "later-targ") == []
    # "_" and "%" are themselves (no index then on SQLite, the same rows).
    assert _targets(engine, "rare_target") == []
    downgrade_store(engine, _before("0033"))
    if engine.dialect.name == "postgresql":
        assert "ix_audit_events_target_trgm" not in {
            i["name"] for i in inspect(engine).get_indexes("audit_events")
        }
    else:
        with engine.connect() as connection:
            left = connection.execute(
                text("SELECT name FROM sqlite_master WHERE name LIKE 'audit_events_target%'")
            ).all()
        assert left == []
    with engine.begin() as connection:  # no trigger left behind
        connection.execute(insert(AuditEvent), [_event(9001, "made while down")])
    db.migrate(engine)  # the index rebuilt with what was added meanwhile
    assert _targets(engine, "while down") == ["made while down"]


def test_0033_indexes_the_audit_target_filter_and_takes_it_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    try:
        check_0033(engine)
    finally:
        engine.dispose()
