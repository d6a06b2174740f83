"""The audit log's filters at N events, before and after migration 0026's indexes.

    .venv/bin/python bench/audit_filter.py                  # SQLite, 200,000 events
    .venv/bin/python bench/audit_filter.py --rows 2000000
    .venv/bin/python bench/audit_filter.py --url postgresql+psycopg://…/empty_db

Fills an empty store at revision 0024 (Alembic's own upgrade), times one page of each filter
(services.audit.list_audit, what GET /api/v1/audit runs; median of --repeat) with its plan,
applies the later migrations (timed: what an upgrade costs), and times them again. Not part
of make test or make bench: run it by hand when the audit queries or their indexes change.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

import certctl.store
from certctl.services.audit import AuditFilter, list_audit
from certctl.store import db
from certctl.store.models import AuditEvent

ACTIONS = (
    "certificate.issue",
    "certificate.revoke",
    "service.certificate",
    "service.edit",
    "apikey.create",
    "actor.edit",
)
# What an auditor looks for: one each, rare (a few rows among N) or common.
FILTERS = {
    "actor, rare": AuditFilter(actor="rare-bot"),
    "actor, common": AuditFilter(actor="ci-0"),
    "credential, rare": AuditFilter(credential="apikey 00000000deadbeef"),
    "action, rare": AuditFilter(action="kek.rotate"),
    "outcome, rare": AuditFilter(outcome="denied"),
    "actor rare + outcome common": AuditFilter(actor="rare-bot", outcome="success"),
    "target (substring, no index)": AuditFilter(target="RARE-TARGET"),
    "no filter": AuditFilter(),
}
# A later page: keyset by id, as next_cursor sends it (the newest ci-0 events are skipped).
LATER_PAGE = "actor, common, at a cursor"


def _config(connection_url: str) -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(Path(certctl.store.__file__).parent / "migrations")
    )
    config.set_main_option("sqlalchemy.url", connection_url)
    return config


def _upgrade(engine: Engine, revision: str) -> None:
    config = _config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _fill(engine: Engine, rows: int) -> None:
    rng = random.Random(26)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rare = set(rng.sample(range(rows), 3))
    batch: list[dict[str, object]] = []
    with engine.begin() as connection:
        for i in range(rows):
            actor = "rare-bot" if i in rare else f"ci-{min(int(rng.expovariate(0.3)), 40)}"
            batch.append(
                {
                    "at": start + timedelta(seconds=i),
                    "actor": actor,
                    "action": "kek.rotate" if i in rare else rng.choice(ACTIONS),
                    "target": f"RARE-TARGET {i}" if i in rare else f"{rng.getrandbits(64):016x}",
                    "outcome": "denied" if i in rare else "success",
                    "source": "192.0.2.7",
                    "detail": "",
                    "credential": (
                        "apikey 00000000deadbeef"
                        if i in rare
                        else f"apikey {hash(actor):016x}"[:23]
                    ),
                }
            )
            if len(batch) == 10_000:
                connection.execute(insert(AuditEvent), batch)
                batch.clear()
        if batch:
            connection.execute(insert(AuditEvent), batch)
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE audit_events"))


def _write_cost(engine: Engine, events: int = 20_000) -> float:
    """µs per event added, 100 a transaction: what the indexes cost every audited call."""
    row = {
        "at": datetime(2027, 1, 1, tzinfo=UTC),
        "actor": "ci-1",
        "action": "certificate.issue",
        "target": "0123456789abcdef serial 0123",
        "outcome": "success",
        "source": "192.0.2.7",
        "detail": "",
        "credential": "apikey 0123456789abcdef",
    }
    began = time.perf_counter()
    for _ in range(events // 100):
        with engine.begin() as connection:
            connection.execute(insert(AuditEvent), [row] * 100)
    return (time.perf_counter() - began) / events * 1e6


def _plan(engine: Engine, where: AuditFilter, after: int | None = None) -> str:
    # The statement list_audit runs, with its values inlined for EXPLAIN.
    captured: list[str] = []
    dialect = postgresql.dialect() if engine.dialect.name == "postgresql" else sqlite.dialect()

    class _Capture(Session):
        def scalars(self, statement, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            captured.append(
                str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            )
            return super().scalars(select(AuditEvent).where(text("0 = 1")))

    with _Capture(engine) as session:
        list_audit(session, limit=51, after=after, where=where)
    explain = "EXPLAIN" if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
    with engine.connect() as connection:
        rows = connection.execute(text(f"{explain} {captured[0]}")).all()
    return " | ".join(str(row[-1]) for row in rows)


def _time(
    engine: Engine, where: AuditFilter, repeat: int, after: int | None = None
) -> tuple[float, int]:
    times = []
    found = 0
    with Session(engine) as session:
        for _ in range(repeat):
            began = time.perf_counter()
            found = len(list_audit(session, limit=51, after=after, where=where))
            times.append(time.perf_counter() - began)
            session.rollback()
    return statistics.median(times) * 1000, found


def _report(engine: Engine, title: str, repeat: int, rows: int) -> dict[str, float]:
    print(f"\n{title}")
    result = {}
    cases = [(name, where, None) for name, where in FILTERS.items()]
    cases.append((LATER_PAGE, AuditFilter(actor="ci-0"), rows // 2))
    for name, where, after in cases:
        ms, found = _time(engine, where, repeat, after)
        result[name] = ms
        print(f"  {name:32} {ms:9.3f} ms  ({found} rows)  {_plan(engine, where, after)}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--url", help="an empty database (default: a temporary SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'certctl.db'}"
        engine = db.create_store_engine(url)
        try:
            _upgrade(engine, "0024")
            began = time.perf_counter()
            _fill(engine, args.rows)
            took = time.perf_counter() - began
            print(f"{engine.dialect.name}: {args.rows:,} events written in {took:.1f} s")
            before = _report(engine, "at 0024 (no index on the filters)", args.repeat, args.rows)
            written = _write_cost(engine)
            began = time.perf_counter()
            db.migrate(engine)
            print(f"\nmigrated to head in {time.perf_counter() - began:.2f} s")
            print(f"writes: {written:.1f} µs an event before, {_write_cost(engine):.1f} after")
            after = _report(engine, "at head", args.repeat, args.rows)
            print("\nratio before/after")
            for name in after:
                print(f"  {name:32} {before[name] / after[name]:8.1f}x")
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
