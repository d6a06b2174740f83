"""Migration 0034 adds roles.constraints and takes it back (SQLite; PostgreSQL in faults)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session

from certctl.store import db
from certctl.store.models import Role
from tests.unit.store.test_acme_migration import _before
from tests.unit.store.test_migration_head import downgrade_store


def _columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("roles")}


def check_0034(engine: Engine) -> None:
    """0034 on ``engine``: constraints added NULL (unrestricted), kept, taken back."""
    db.migrate(engine)
    downgrade_store(engine, _before("0034"))
    assert "constraints" not in _columns(engine)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO roles (id, name, permissions, builtin, created_at)"
                " VALUES ('team-a', 'Team A', '[\"cert.issue\"]', false, '2026-01-01 00:00:00')"
            )
        )
    db.migrate(engine)
    with Session(engine) as session:
        role = session.get(Role, "team-a")
        assert role is not None
        assert role.constraints is None  # a role before 0034 is unrestricted
        role.constraints = {"issuers": ["team-ca"], "names": ["*.team-a.example.internal"]}
        session.commit()
    with Session(engine) as session:
        found = session.scalar(select(Role.constraints).where(Role.id == "team-a"))
        assert found == {"issuers": ["team-ca"], "names": ["*.team-a.example.internal"]}
    downgrade_store(engine, _before("0034"))
    assert "constraints" not in _columns(engine)
    with engine.connect() as connection:
        kept = connection.execute(text("SELECT permissions FROM roles WHERE id = 'team-a'"))
        permissions = kept.scalar()  # JSON: text on SQLite, decoded on PostgreSQL
        assert (json.loads(permissions) if isinstance(permissions, str) else permissions) == [
            "cert.issue"
        ]
    db.migrate(engine)
    assert "constraints" in _columns(engine)


def test_0034_adds_the_role_constraints_and_takes_them_back(tmp_path: Path) -> None:
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    try:
        check_0034(engine)
    finally:
        engine.dispose()
