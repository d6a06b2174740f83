"""Migration 0027 adds the ACME tables and takes them back (SQLite; PostgreSQL in faults)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect

from certctl.store import db
from tests.unit.store.test_migration_head import downgrade_store

ACME_TABLES = {
    "acme_accounts",
    "acme_orders",
    "acme_authorizations",
    "acme_challenges",
    "acme_nonces",
}


def test_0027_adds_the_acme_tables_and_takes_them_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    try:
        db.migrate(engine)
        assert ACME_TABLES <= set(inspect(engine).get_table_names())
        unique = inspect(engine).get_unique_constraints("acme_accounts")
        assert [c["column_names"] for c in unique] == [["thumbprint"]]
        downgrade_store(engine, "0026")
        assert not ACME_TABLES & set(inspect(engine).get_table_names())
        db.migrate(engine)
        assert ACME_TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_0028_adds_the_eab_keys_and_takes_them_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    try:
        db.migrate(engine)
        assert "acme_eab_keys" in inspect(engine).get_table_names()
        assert "eab_key_id" in {c["name"] for c in inspect(engine).get_columns("acme_accounts")}
        unique = inspect(engine).get_unique_constraints("acme_eab_keys")
        assert [c["column_names"] for c in unique] == [["account_id"]]
        downgrade_store(engine, "0027")
        assert "acme_eab_keys" not in inspect(engine).get_table_names()
        assert "eab_key_id" not in {c["name"] for c in inspect(engine).get_columns("acme_accounts")}
        assert ACME_TABLES <= set(inspect(engine).get_table_names())
        db.migrate(engine)
        assert "acme_eab_keys" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
