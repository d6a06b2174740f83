"""auth generation counter

A one-row counter that database triggers bump whenever a role, an actor or an API key's
credentials change (not on ``last_used_at`` bookkeeping). The API-key cache compares it on
each request instead of SQLite's ``data_version``, which every commit changes: with
``data_version`` each issued certificate emptied the cache and the next request paid a
database read. Triggers, not application code, so no write path (present or future, or a
manual fix in ``sqlite3``) can change credentials without invalidating the cache.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BUMP = "UPDATE auth_generation SET value = value + 1 WHERE id = 1"
# (table, events): api_keys changes that matter for authentication only.
WATCHED = (
    ("roles", ("INSERT", "UPDATE", "DELETE")),
    ("actors", ("INSERT", "UPDATE", "DELETE")),
    ("api_keys", ("INSERT", "DELETE", "UPDATE OF actor_id, secret_sha256, expires_at, revoked_at")),
)


def _name(table: str, event: str) -> str:
    return f"auth_generation_{table}_{event.split()[0].lower()}"


def upgrade() -> None:
    op.create_table(
        "auth_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO auth_generation (id, value) VALUES (1, 0)")
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table, events in WATCHED:
            for event in events:
                op.execute(
                    f"CREATE TRIGGER {_name(table, event)} AFTER {event} ON {table} "
                    f"BEGIN {BUMP}; END"
                )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION certctl_bump_auth_generation() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        for table, events in WATCHED:
            op.execute(
                f"CREATE TRIGGER auth_generation_{table} AFTER {' OR '.join(events)} ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION certctl_bump_auth_generation()"
            )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table, events in WATCHED:
            for event in events:
                op.execute(f"DROP TRIGGER IF EXISTS {_name(table, event)}")
    elif dialect == "postgresql":
        for table, _ in WATCHED:
            op.execute(f"DROP TRIGGER IF EXISTS auth_generation_{table} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS certctl_bump_auth_generation()")
    op.drop_table("auth_generation")
