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
    with engine.begin() as connection:  # an older store: alembic must run again
        connection.execute(text("UPDATE alembic_version SET version_num = '0002'"))
        connection.execute(text("DROP TABLE auth_generation"))
        for name in connection.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        ).scalars():
            connection.execute(text(f"DROP TRIGGER {name}"))
    assert not db._at_head(engine)
    db.migrate(engine)
    assert db._at_head(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT value FROM auth_generation")).scalar() == 0
