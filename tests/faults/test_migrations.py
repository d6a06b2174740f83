"""Upgrades: a migration killed half-way leaves the store as it was; old replicas beside new.

The store is made by ``certctl serve`` at head, then taken back to revision 0004 with the real
downgrade, so the next start runs migration 0005 (a column, two indexes, a back-fill). A
process running ``migrate`` is SIGKILLed by its own SQLite trace hook just before the revision
is written, i.e. after every ALTER and CREATE of the step; then ``certctl serve`` starts on the
same data dir. Before, pysqlite ran the DDL outside any transaction: the column stayed, the
revision did not, and every later start failed on "duplicate column name: renewed_by".
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from certctl.errors import CertctlError
from certctl.store import db
from tests.api.conftest import PostgresCluster
from tests.faults.conftest import FaultServer, sqlite_integrity
from tests.unit.store.test_migration_head import (
    CERTIFICATE_ROW,
    ISSUER_ROW,
    downgrade_store,
    issuer_serials_from_0024,
    renewed_by,
    revocable_issuers_from_0009,
    upgrade_from_0007_numbers_crls,
)

# Run in a child process: kills itself (SIGKILL, no clean-up) when the migration is about to
# record its new revision.
_KILLED_MIGRATION = textwrap.dedent(
    """
    import os, signal, sys
    from sqlalchemy import event
    from certctl.store import db

    engine = db.create_store_engine(f"sqlite:///{sys.argv[1]}")

    @event.listens_for(engine, "connect")
    def _trace(dbapi_connection, _record):
        def hook(statement):
            if statement.startswith("UPDATE alembic_version"):
                os.kill(os.getpid(), signal.SIGKILL)
        dbapi_connection.set_trace_callback(hook)

    db.migrate(engine)
    """
)


def _revision(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])
    finally:
        conn.close()


def _columns(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[1] for row in conn.execute("PRAGMA table_info(certificates)")}
    finally:
        conn.close()


def _store_at_0004(server: FaultServer) -> tuple[Path, str]:
    """A stopped server's store at revision 0004, holding a renewed 10-day certificate."""
    server.start()
    with server.client() as client:
        issued = client.post(
            "/api/v1/certificates",
            json={"common_name": "old.example", "dns_names": ["old.example"], "validity": "10D"},
        )
        assert issued.status_code == 201, issued.text
        renewed = client.post(f"/api/v1/certificates/{issued.json()['id']}/renew", json={})
        assert renewed.status_code == 201, renewed.text
    server.stop()
    path = server.data_dir / "certctl.db"
    config = Config()
    config.set_main_option("script_location", str(db._MIGRATIONS))
    engine = db.create_store_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0004")
    finally:
        engine.dispose()
    assert _revision(path) == "0004"
    assert "renewed_by" not in _columns(path)
    return path, str(issued.json()["id"])


def test_a_migration_killed_half_way_is_rolled_back_and_rerun(
    fault_server: FaultServer,
) -> None:
    path, renewed_id = _store_at_0004(fault_server)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MIGRATION, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Nothing of the step is left: not the column, not the revision.
    assert _revision(path) == "0004"
    assert "renewed_by" not in _columns(path)
    assert sqlite_integrity(path) == ["ok"]

    fault_server.start()  # the next start runs the whole step again
    with fault_server.client() as client:
        old = client.get(f"/api/v1/certificates/{renewed_id}")
    assert old.status_code == 200, old.text
    assert old.json()["status"] == "active"  # back-filled: renewed, so no longer expiring
    fault_server.stop()
    assert _revision(path) == db._head_revision()


def test_a_renewal_by_an_older_replica_on_postgresql_records_its_successor(
    postgres_cluster: PostgresCluster,
) -> None:
    # A rolling update on the shared database: the new replica has migrated, a replica still
    # running certctl from before 0005 renews (its INSERT knows no renewed_by).
    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        db.migrate(engine)
        with engine.begin() as connection:
            connection.execute(text(ISSUER_ROW), {"key": b"\0"})
            for cert_id, status, renewed_from in (
                ("a1", "active", None),
                ("a2", "active", "a1"),
                ("b1", "active", None),
                ("b2", "revoked", "b1"),
            ):
                connection.execute(
                    text(CERTIFICATE_ROW),
                    {"id": cert_id, "status": status, "renewed_from": renewed_from},
                )
        assert renewed_by(engine) == {"a1": "a2", "a2": None, "b1": None, "b2": None}
    finally:
        engine.dispose()


def test_0008_adds_the_crl_number_counter_to_a_postgresql_store(
    postgres_cluster: PostgresCluster,
) -> None:
    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        upgrade_from_0007_numbers_crls(engine)
    finally:
        engine.dispose()


def test_0010_adds_issuer_revocation_to_a_postgresql_store_and_takes_it_back(
    postgres_cluster: PostgresCluster,
) -> None:
    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        revocable_issuers_from_0009(engine)
    finally:
        engine.dispose()


def test_0025_fills_the_issuer_serial_on_a_postgresql_store_and_takes_it_back(
    postgres_cluster: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        issuer_serials_from_0024(engine, caplog)
    finally:
        engine.dispose()


def test_a_table_locked_by_another_session_bounds_the_wait_of_every_replica(
    postgres_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A transaction that has read certificates (pg_dump, a psql left open) holds off the
    # migration's ALTER TABLE, and every query of the replicas still serving queued behind
    # the ALTER: they hung as long as that transaction lasted.
    monkeypatch.setattr(db, "PG_MIGRATION_LOCK_TIMEOUT_MS", 500, raising=False)
    monkeypatch.setattr(db, "PG_MIGRATION_PAUSE_S", 0.5, raising=False)
    monkeypatch.setattr(db, "PG_MIGRATION_ATTEMPTS", 3, raising=False)
    database = postgres_cluster.create_database()
    engine = db.create_store_engine(postgres_cluster.url(database))
    dsn = f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/{database}"
    try:
        db.migrate(engine)
        downgrade_store(engine, "0004")
        with psycopg.connect(dsn, application_name="report") as blocker:
            blocker.execute("SELECT count(*) FROM certificates").fetchall()  # tx left open
            outcome: list[BaseException | None] = []

            def upgrade() -> None:
                try:
                    db.migrate(engine)
                    outcome.append(None)
                except BaseException as exc:  # reported below
                    outcome.append(exc)

            migrating = threading.Thread(target=upgrade, daemon=True)
            migrating.start()
            waits = []
            with psycopg.connect(dsn, autocommit=True) as replica:
                replica.execute("SET statement_timeout = 3000")  # fails the test, not hangs it
                while migrating.is_alive() and len(waits) < 40:
                    started = time.monotonic()
                    replica.execute("SELECT count(*) FROM certificates").fetchall()
                    waits.append(time.monotonic() - started)
                    time.sleep(0.05)
            migrating.join(timeout=5)
            assert not migrating.is_alive(), "the migration waited for the lock without bound"
            assert max(waits) < 1.5, waits  # a request waits one lock timeout at most
            assert len(outcome) == 1, outcome
            assert isinstance(outcome[0], CertctlError), outcome
            assert str(outcome[0]).startswith(
                "cannot migrate the database: a table it changes stayed locked by another "
                f"session (pid {blocker.info.backend_pid}: report, idle in transaction)"
            ), outcome[0]
        db.migrate(engine)  # the transaction ended: the next start migrates
        with engine.connect() as connection:
            revision = connection.execute(text("SELECT version_num FROM alembic_version"))
            assert revision.scalar() == db._head_revision()
    finally:
        engine.dispose()


def test_a_postgresql_store_in_a_schema_whose_name_needs_quotes_migrates_and_back(
    postgres_cluster: PostgresCluster,
) -> None:
    # certctl migrates into the schema its role's search_path names (ALTER ROLE … SET
    # search_path). 0021 looked its functions up by casting that name to regnamespace, which
    # reads it as an identifier, folding "Certctl-Store" to certctl-store, which does not
    # exist: every start failed to migrate (or pinned another schema's functions, if it did).
    schema = "Certctl-Store"
    database = postgres_cluster.create_database()
    dsn = f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/{database}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        admin.execute(f'ALTER DATABASE "{database}" SET search_path TO "{schema}"')
    engine = db.create_store_engine(postgres_cluster.url(database))
    functions = (
        "SELECT proname, array_to_string(proconfig, ' ') FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE nspname = :schema AND proname LIKE 'certctl%'"
    )
    try:
        db.migrate(engine)
        with engine.connect() as connection:
            pinned = dict(connection.execute(text(functions), {"schema": schema}).all())
        assert len(pinned) >= 5, pinned
        assert set(pinned.values()) == {f'search_path="{schema}", pg_temp'}, pinned
        # As pg_restore runs them: search_path empty, each name qualified.
        with psycopg.connect(dsn, autocommit=True) as restore:
            restore.execute("SET search_path = ''")
            restore.execute(
                ISSUER_ROW.replace("issuers", f'"{schema}".issuers').replace(":key", "'\\x00'")
            )
            restore.execute(
                f'INSERT INTO "{schema}".issuers (id, name, subject, certificate_pem, '
                "chain_pem, wrapped_key, key_type, not_after, created_at, parent_id, revoked_at) "
                "SELECT 'sub', name, subject, certificate_pem, chain_pem, wrapped_key, key_type, "
                f'not_after, created_at, id, created_at FROM "{schema}".issuers'
            )
            counted = restore.execute(
                f"SELECT revocations FROM \"{schema}\".issuers WHERE id = 'default'"
            ).fetchone()
        assert counted == (1,)  # the revoked intermediate, counted by its trigger
        downgrade_store(engine, "0020")
        with engine.connect() as connection:
            reset = dict(connection.execute(text(functions), {"schema": schema}).all())
        assert set(reset.values()) == {None}, reset
        db.migrate(engine)
        with engine.connect() as connection:
            again = dict(connection.execute(text(functions), {"schema": schema}).all())
        assert again == pinned
    finally:
        engine.dispose()


def test_0023_widens_the_actor_columns_keeping_the_certificate_trigger_and_takes_it_back(
    postgres_cluster: PostgresCluster,
) -> None:
    # PostgreSQL refuses to retype a column a trigger watches (0022's, on created_by): the
    # migration drops the triggers naming it and makes them again, as they were.
    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    triggers = (
        "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
        "WHERE tgrelid = 'certificates'::regclass AND NOT tgisinternal ORDER BY 1"
    )
    widths = (
        "SELECT table_name, character_maximum_length FROM information_schema.columns "
        "WHERE (table_name, column_name) IN "
        "(('audit_events', 'actor'), ('certificates', 'created_by')) ORDER BY 1"
    )

    def same(rows: list[Any]) -> list[tuple[str, str]]:
        # The WHEN clause reads (old.created_by)::text on VARCHAR, old.created_by on TEXT.
        return [(name, re.sub(r"[()]|::text", "", definition)) for name, definition in rows]

    try:
        db.migrate(engine)
        with engine.connect() as connection:
            at_head = same(connection.execute(text(triggers)).all())
            assert connection.execute(text(widths)).all() == [
                ("audit_events", None),
                ("certificates", None),
            ]
            connection.execute(
                text(
                    "INSERT INTO audit_events (at, actor, action, target, outcome, source, "
                    "detail) VALUES (now(), :actor, 'x', '', 'success', '', '')"
                ),
                {"actor": "cert:CN=" + "a" * 80},
            )
            connection.commit()
        assert any("created_by" in definition for _, definition in at_head)
        downgrade_store(engine, "0022")
        with engine.connect() as connection:
            assert same(connection.execute(text(triggers)).all()) == at_head
            assert connection.execute(text(widths)).all() == [
                ("audit_events", 64),
                ("certificates", 64),
            ]
            assert (
                connection.execute(text("SELECT max(length(actor)) FROM audit_events")).scalar()
                == 64
            )
        db.migrate(engine)
        with engine.connect() as connection:
            assert same(connection.execute(text(triggers)).all()) == at_head
    finally:
        engine.dispose()


def test_0027_adds_the_acme_tables_to_a_postgresql_store_and_takes_them_back(
    postgres_cluster: PostgresCluster,
) -> None:
    from sqlalchemy import inspect

    from tests.unit.store.test_acme_migration import ACME_TABLES

    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        db.migrate(engine)
        assert ACME_TABLES <= set(inspect(engine).get_table_names())
        downgrade_store(engine, "0026")
        assert not ACME_TABLES & set(inspect(engine).get_table_names())
        db.migrate(engine)
        assert ACME_TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_0028_adds_the_eab_keys_to_a_postgresql_store_and_takes_them_back(
    postgres_cluster: PostgresCluster,
) -> None:
    from sqlalchemy import inspect

    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        db.migrate(engine)
        assert "acme_eab_keys" in inspect(engine).get_table_names()
        downgrade_store(engine, "0027")
        assert "acme_eab_keys" not in inspect(engine).get_table_names()
        assert "eab_key_id" not in {c["name"] for c in inspect(engine).get_columns("acme_accounts")}
        db.migrate(engine)
        assert "eab_key_id" in {c["name"] for c in inspect(engine).get_columns("acme_accounts")}
    finally:
        engine.dispose()


def test_0029_adds_the_wildcard_authorizations_to_a_postgresql_store_and_takes_them_back(
    postgres_cluster: PostgresCluster,
) -> None:
    from tests.unit.store.test_acme_migration import check_0029

    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        check_0029(engine)
    finally:
        engine.dispose()


def test_0030_adds_the_identifier_type_to_a_postgresql_store_and_takes_the_ip_orders_back(
    postgres_cluster: PostgresCluster,
) -> None:
    from tests.unit.store.test_acme_migration import check_0030

    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        check_0030(engine)
    finally:
        engine.dispose()


def test_0031_adds_the_replaced_certificate_of_an_order_to_a_postgresql_store_and_takes_it_back(
    postgres_cluster: PostgresCluster,
) -> None:
    from tests.unit.store.test_acme_migration import check_0031

    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        check_0031(engine)
    finally:
        engine.dispose()


def test_0032_adds_the_accounts_deactivation_time_to_a_postgresql_store_and_takes_it_back(
    postgres_cluster: PostgresCluster,
) -> None:
    from tests.unit.store.test_acme_migration import check_0032

    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        check_0032(engine)
    finally:
        engine.dispose()


def test_0033_adds_the_blocked_keys_to_a_postgresql_store_and_takes_them_back(
    postgres_cluster: PostgresCluster,
) -> None:
    from tests.unit.store.test_blocked_keys_migration import check_0033

    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        check_0033(engine)
    finally:
        engine.dispose()


def test_0034_adds_the_role_constraints_to_a_postgresql_store_and_takes_them_back(
    postgres_cluster: PostgresCluster,
) -> None:
    from tests.unit.store.test_role_constraints_migration import check_0034

    engine = db.create_store_engine(postgres_cluster.url(postgres_cluster.create_database()))
    try:
        check_0034(engine)
    finally:
        engine.dispose()
