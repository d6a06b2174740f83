"""auth generation: also bumped by a TRUNCATE (PostgreSQL)

PostgreSQL fires no row or statement DELETE trigger for a ``TRUNCATE``: an operator emptying
``api_keys`` (every key revoked at once) or ``actors`` in psql left the counter of 0003 and
0012 where it was, and every process kept authenticating the keys and client certificates
it remembered. Statement-level TRUNCATE triggers on the same tables bump it too. SQLite has
no TRUNCATE: its ``DELETE`` without ``WHERE`` fires the DELETE triggers (a table with
triggers is never emptied by its truncate optimisation).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The tables whose rows 0003 and 0012 watch.
TABLES = ("roles", "actors", "api_keys", "certificates", "issuers")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        # certctl_bump_auth_generation() is 0003's.
        op.execute(
            f"CREATE TRIGGER auth_generation_{table}_truncate AFTER TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION certctl_bump_auth_generation()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS auth_generation_{table}_truncate ON {table}")
