"""The start-up fast path's idea of the newest migration matches Alembic's."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text

from certctl.errors import CertctlError
from certctl.store import db


def test_head_revision_matches_alembic() -> None:
    config = Config()
    config.set_main_option("script_location", str(db._MIGRATIONS))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert heads == [db._head_revision()]


def _at_head(engine: Engine) -> bool:
    return db._stored_revisions(engine) == [db._head_revision()]


def _to_0004(engine: Engine) -> None:
    """Take a store at head back to revision 0004 (before certificates.renewed_by)."""
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0004'"))
        connection.execute(text("DROP INDEX ix_certificates_counts"))
        connection.execute(text("DROP INDEX ix_certificates_renewed_from"))
        connection.execute(text("ALTER TABLE certificates DROP COLUMN renewed_by"))
        connection.execute(
            text(
                "CREATE INDEX ix_certificates_issuer_status_not_after "
                "ON certificates (issuer_id, status, not_after)"
            )
        )


def test_migrate_skips_alembic_only_at_head(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    assert not _at_head(engine)  # empty database
    db.migrate(engine)
    assert _at_head(engine)
    _to_0004(engine)
    assert not _at_head(engine)
    db.migrate(engine)
    assert _at_head(engine)
    with engine.connect() as connection:
        indexes = connection.execute(
            text(
                "SELECT name FROM sqlite_master WHERE tbl_name = 'certificates' AND type = 'index'"
            )
        ).scalars()
        names = set(indexes)
    assert "ix_certificates_counts" in names
    assert "ix_certificates_issuer_status_not_after" not in names


def test_0005_back_fills_the_successor_of_each_renewed_certificate(tmp_path: Path) -> None:
    """Renewals made before 0005 are found: the latest live successor is recorded."""
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    _to_0004(engine)
    row = (
        "INSERT INTO certificates (id, issuer_id, serial, common_name, subject, sans, profile,"
        " status, not_before, not_after, certificate_pem, created_at, created_by, renewed_from)"
        " VALUES (:id, 'default', :id, 'x', 'CN=x', '{}', 'server', :status,"
        " '2026-01-01 00:00:00', '2027-01-01 00:00:00', 'pem', '2026-01-01 00:00:00', 'admin',"
        " :renewed_from)"
    )
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO issuers (id, name, subject, certificate_pem, chain_pem, wrapped_key,"
                " key_type, not_after, created_at) VALUES ('default', 'd', 'CN=d', 'pem', '',"
                " x'00', 'ec-p256', '2027-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
        for cert_id, status, renewed_from in (
            ("a1", "active", None),  # renewed twice: a3 is the latest
            ("a2", "active", "a1"),
            ("a3", "active", "a1"),
            ("b1", "active", None),  # its only successor was revoked: not renewed
            ("b2", "revoked", "b1"),
            ("c1", "active", None),  # never renewed
        ):
            connection.execute(
                text(row), {"id": cert_id, "status": status, "renewed_from": renewed_from}
            )
    db.migrate(engine)
    with engine.connect() as connection:
        renewed_by = dict(
            tuple(r) for r in connection.execute(text("SELECT id, renewed_by FROM certificates"))
        )
    assert renewed_by == {"a1": "a3", "a2": None, "a3": None, "b1": None, "b2": None, "c1": None}


def test_a_store_migrated_by_the_first_0005_gets_the_renewed_from_index(tmp_path: Path) -> None:
    # 0005 as first released (0e27081) had no index on renewed_from; it was added to 0005
    # later, so such a store, already at 0005, never got it: revocations scanned the table.
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0005'"))
        connection.execute(text("DROP INDEX ix_certificates_renewed_from"))
    db.migrate(engine)
    assert _at_head(engine)
    with engine.connect() as connection:
        plan = connection.execute(
            text("EXPLAIN QUERY PLAN SELECT id FROM certificates WHERE renewed_from = 'x'")
        ).all()
    assert "ix_certificates_renewed_from" in str(plan), plan


def test_a_database_from_a_newer_certctl_is_refused_with_what_to_do(tmp_path: Path) -> None:
    # A rollback after an upgrade: Alembic alone said "Can't locate revision '0099'".
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(CertctlError, match=r"^the database schema is at revision 0099, newer "):
        db.migrate(engine)
    with engine.connect() as connection:  # left as it was
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("0099",)
        ]
