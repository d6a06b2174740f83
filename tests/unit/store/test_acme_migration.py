"""Migrations 0027-0032 add the ACME tables and columns and take them back (SQLite;
PostgreSQL in faults)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, select, text
from sqlalchemy.orm import Session

from certctl.store import db
from certctl.store.models import AcmeAccount
from tests.unit.store.test_migration_head import _config, downgrade_store

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


def _columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def check_0029(engine: Engine) -> None:
    """0029 on ``engine`` (at head): wildcard added false, taken back with wildcard orders."""
    db.migrate(engine)
    assert "wildcard" in _columns(engine, "acme_authorizations")
    downgrade_store(engine, "0028")
    assert "wildcard" not in _columns(engine, "acme_authorizations")
    now = "2026-01-01 00:00:00"
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO acme_accounts (id, thumbprint, jwk, status, contact, created_at)"
                " VALUES ('a', 't', '{}', 'valid', '[]', :now)"
            ),
            {"now": now},
        )
        for order in ("plain", "wild"):
            connection.execute(
                text(
                    "INSERT INTO acme_orders (id, account_id, status, identifiers, expires,"
                    " created_at) VALUES (:id, 'a', 'pending', '[]', :now, :now)"
                ),
                {"id": order, "now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO acme_authorizations (id, order_id, identifier, status, expires)"
                    " VALUES (:id, :id, 'example.internal', 'pending', :now)"
                ),
                {"id": order, "now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO acme_challenges (id, authorization_id, type, token, status)"
                    " VALUES (:id, :id, 'dns-01', :id, 'pending')"
                ),
                {"id": order},
            )
    db.migrate(engine)  # rows made before it are of plain names: false
    with engine.begin() as connection:
        rows = connection.execute(text("SELECT id, wildcard FROM acme_authorizations"))
        assert sorted((i, bool(w)) for i, w in rows) == [("plain", False), ("wild", False)]
        connection.execute(text("UPDATE acme_authorizations SET wildcard = true WHERE id = 'wild'"))
    downgrade_store(engine, "0028")
    # An order of a wildcard would read as one of its base name: it goes, the other stays.
    with engine.connect() as connection:
        assert [r[0] for r in connection.execute(text("SELECT id FROM acme_orders"))] == ["plain"]
        authzs = connection.execute(text("SELECT id FROM acme_authorizations"))
        assert [r[0] for r in authzs] == ["plain"]
        # Its challenges too (deleted by hand: a plain engine applies no ON DELETE CASCADE);
        # the other order's stay.
        challenges = connection.execute(text("SELECT id FROM acme_challenges"))
        assert [r[0] for r in challenges] == ["plain"]
    db.migrate(engine)
    assert "wildcard" in _columns(engine, "acme_authorizations")


def test_0029_adds_the_wildcard_authorizations_and_takes_them_back(tmp_path: Path) -> None:
    # Foreign keys on, as certctl opens a store (see 0030's test).
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    try:
        check_0029(engine)
    finally:
        engine.dispose()


def check_0030(engine: Engine) -> None:
    """0030 on ``engine`` (at head): identifier_type added "dns", taken back with IP orders."""
    db.migrate(engine)
    assert "identifier_type" in _columns(engine, "acme_authorizations")
    downgrade_store(engine, "0029")
    assert "identifier_type" not in _columns(engine, "acme_authorizations")
    now = "2026-01-01 00:00:00"
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO acme_accounts (id, thumbprint, jwk, status, contact, created_at)"
                " VALUES ('a', 't', '{}', 'valid', '[]', :now)"
            ),
            {"now": now},
        )
        for order, value in (("name", "app.example.internal"), ("ip", "10.0.0.5")):
            connection.execute(
                text(
                    "INSERT INTO acme_orders (id, account_id, status, identifiers, expires,"
                    " created_at) VALUES (:id, 'a', 'pending', '[]', :now, :now)"
                ),
                {"id": order, "now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO acme_authorizations (id, order_id, identifier, status, expires)"
                    " VALUES (:id, :id, :value, 'pending', :now)"
                ),
                {"id": order, "value": value, "now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO acme_challenges (id, authorization_id, type, token, status)"
                    " VALUES (:id, :id, 'http-01', :id, 'pending')"
                ),
                {"id": order},
            )
    db.migrate(engine)  # rows made before it are of DNS names
    with engine.begin() as connection:
        rows = connection.execute(text("SELECT id, identifier_type FROM acme_authorizations"))
        assert sorted(rows) == [("ip", "dns"), ("name", "dns")]
        connection.execute(
            text("UPDATE acme_authorizations SET identifier_type = 'ip' WHERE id = 'ip'")
        )
    downgrade_store(engine, "0029")
    # An order of an address would read as one of a DNS name: it goes, the other stays.
    with engine.connect() as connection:
        assert [r[0] for r in connection.execute(text("SELECT id FROM acme_orders"))] == ["name"]
        authzs = connection.execute(text("SELECT id FROM acme_authorizations"))
        assert [r[0] for r in authzs] == ["name"]
        challenges = connection.execute(text("SELECT id FROM acme_challenges"))
        assert [r[0] for r in challenges] == ["name"]
    db.migrate(engine)
    assert "identifier_type" in _columns(engine, "acme_authorizations")


def test_0030_adds_the_identifier_type_and_takes_the_ip_orders_back(tmp_path: Path) -> None:
    # Opened as certctl opens it: foreign keys on, so ON DELETE CASCADE applies (a table
    # rebuilt to drop a column took every challenge with it).
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    try:
        check_0030(engine)
    finally:
        engine.dispose()


def check_0031(engine: Engine) -> None:
    """0031 on ``engine`` (at head): acme_orders.replaces added null, indexed; taken back with
    the orders kept.

    Down to 0030 (the revision 0031 follows) and up again.
    """
    db.migrate(engine)
    assert "replaces" in _columns(engine, "acme_orders")
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("acme_orders")}
    assert indexes["ix_acme_orders_replaces"] == ["replaces"]
    downgrade_store(engine, "0030")
    assert "replaces" not in _columns(engine, "acme_orders")
    now = "2026-01-01 00:00:00"
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO acme_accounts (id, thumbprint, jwk, status, contact, created_at)"
                " VALUES ('a', 't', '{}', 'valid', '[]', :now)"
            ),
            {"now": now},
        )
        for order in ("old", "renewal"):
            connection.execute(
                text(
                    "INSERT INTO acme_orders (id, account_id, status, identifiers, expires,"
                    " created_at) VALUES (:id, 'a', 'pending', '[]', :now, :now)"
                ),
                {"id": order, "now": now},
            )
    db.migrate(engine)  # orders made before it replaced nothing: null
    with engine.begin() as connection:
        rows = connection.execute(text("SELECT id, replaces FROM acme_orders ORDER BY id"))
        assert [tuple(r) for r in rows] == [("old", None), ("renewal", None)]
        connection.execute(text("UPDATE acme_orders SET replaces = 'c1' WHERE id = 'renewal'"))
        # The renewal's authorization and challenge: rows of tables that cascade from orders.
        connection.execute(
            text(
                "INSERT INTO acme_authorizations (id, order_id, identifier, identifier_type,"
                " status, expires, wildcard) VALUES ('z', 'renewal', 'app.example.internal',"
                " 'dns', 'pending', :now, false)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO acme_challenges (id, authorization_id, type, token, status)"
                " VALUES ('c', 'z', 'http-01', 'tok', 'pending')"
            )
        )
    downgrade_store(engine, "0030")
    # The orders, their authorizations and challenges stay; only which certificate one
    # renewed is forgotten.
    with engine.connect() as connection:
        ids = [r[0] for r in connection.execute(text("SELECT id FROM acme_orders ORDER BY id"))]
        assert ids == ["old", "renewal"]
        authz = connection.execute(text("SELECT id, order_id FROM acme_authorizations"))
        assert [tuple(r) for r in authz] == [("z", "renewal")]
        challenges = connection.execute(text("SELECT id FROM acme_challenges")).scalars()
        assert list(challenges) == ["c"]
    assert "ix_acme_orders_replaces" not in {
        i["name"] for i in inspect(engine).get_indexes("acme_orders")
    }
    db.migrate(engine)
    assert "replaces" in _columns(engine, "acme_orders")


def test_0031_adds_the_replaced_certificate_of_an_order_and_takes_it_back(tmp_path: Path) -> None:
    # certctl's own engine: foreign keys on, as a store is run (a recreated acme_orders
    # would cascade its drop to the authorizations).
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    try:
        check_0031(engine)
    finally:
        engine.dispose()


def _before(revision: str) -> str:
    """The revision ``revision`` follows, as its script says (merges may rechain it)."""
    down = ScriptDirectory.from_config(_config()).get_revision(revision).down_revision
    assert isinstance(down, str)
    return down


def check_0032(engine: Engine) -> None:
    """0032 on ``engine`` (at head): deactivated_at added, taken from the audit log."""
    db.migrate(engine)
    assert "deactivated_at" in _columns(engine, "acme_accounts")
    downgrade_store(engine, _before("0032"))
    assert "deactivated_at" not in _columns(engine, "acme_accounts")
    with engine.begin() as connection:
        for account, status in (("on", "valid"), ("off", "deactivated"), ("lost", "deactivated")):
            connection.execute(
                text(
                    "INSERT INTO acme_accounts (id, thumbprint, jwk, status, contact, created_at)"
                    " VALUES (:id, :id, '{}', :status, '[]', '2026-01-01 00:00:00')"
                ),
                {"id": account, "status": status},
            )
        # (at, target, outcome, detail): the one that deactivated "off" is the 10:00 one; a
        # refused call before and the "already" of an operator asking again after are not.
        for at, target, outcome, detail in (
            ("2026-02-01 09:00:00", "off", "denied", "missing permission cert.revoke"),
            ("2026-02-01 10:00:00", "off", "success", "0 pending authorization(s) deactivated"),
            ("2026-02-02 08:00:00", "off", "success", "already deactivated"),
            ("2026-02-01 07:00:00", "on", "success", "already valid, oddly"),
            ("2026-02-01 07:00:00", "off-by-one", "success", ""),
        ):
            connection.execute(
                text(
                    "INSERT INTO audit_events (at, actor, action, target, outcome, source, detail)"
                    " VALUES (:at, 'admin', 'acme.account.deactivate', :target, :outcome, '',"
                    " :detail)"
                ),
                {"at": at, "target": target, "outcome": outcome, "detail": detail},
            )
    db.migrate(engine)
    with Session(engine) as session:
        found = dict(session.execute(select(AcmeAccount.id, AcmeAccount.deactivated_at)).all())
    # A valid account has none; one whose event is gone stays unknown (NULL).
    assert found == {"on": None, "off": datetime(2026, 2, 1, 10, tzinfo=UTC), "lost": None}
    downgrade_store(engine, _before("0032"))
    assert "deactivated_at" not in _columns(engine, "acme_accounts")
    with engine.connect() as connection:
        ids = connection.execute(text("SELECT id FROM acme_accounts ORDER BY id"))
        assert [r[0] for r in ids] == ["lost", "off", "on"]
    db.migrate(engine)
    assert "deactivated_at" in _columns(engine, "acme_accounts")


def test_0032_adds_the_accounts_deactivation_time_and_takes_it_back(tmp_path: Path) -> None:
    # Opened as certctl opens it: foreign keys on (a rebuilt acme_accounts could not be
    # dropped under the orders that reference it).
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    try:
        check_0032(engine)
    finally:
        engine.dispose()
