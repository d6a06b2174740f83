"""The start-up fast path's idea of the newest migration matches Alembic's."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from certctl.store import db


def test_head_revision_matches_alembic() -> None:
    config = Config()
    config.set_main_option("script_location", str(db._MIGRATIONS))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert heads == [db._head_revision()]


def test_migrate_skips_alembic_only_at_head(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    assert not db._at_head(engine)  # empty database
    db.migrate(engine)
    assert db._at_head(engine)
    with engine.begin() as connection:  # a store at 0003: alembic must run again
        connection.execute(text("UPDATE alembic_version SET version_num = '0003'"))
        connection.execute(text("DROP INDEX ix_certificates_issuer_status_not_after"))
        connection.execute(
            text("CREATE INDEX ix_certificates_issuer_status ON certificates (issuer_id, status)")
        )
    assert not db._at_head(engine)
    db.migrate(engine)
    assert db._at_head(engine)
    with engine.connect() as connection:
        indexes = connection.execute(
            text(
                "SELECT name FROM sqlite_master WHERE tbl_name = 'certificates' AND type = 'index'"
            )
        ).scalars()
        assert "ix_certificates_issuer_status_not_after" in set(indexes)
