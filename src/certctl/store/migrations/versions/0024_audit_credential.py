"""audit credential: which of an actor's API keys made each audited call

``audit_events.actor`` names the actor; an actor holds several keys (one per machine, one
rotated in), and after a key leaks the question is what that key did. The new column holds
``apikey <key id>`` for a call made with an API key, empty otherwise (and for the events
recorded before it).

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: no table rewrite on PostgreSQL 11+, a plain ADD COLUMN on SQLite.
    op.add_column(
        "audit_events",
        sa.Column("credential", sa.String(64), nullable=False, server_default=""),
    )


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("credential")
