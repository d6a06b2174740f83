"""roles.constraints: what a role's cert.issue may issue (issuers, name patterns)

NULL for every role before this revision: unrestricted, as they were.

Revision ID: 0034
Revises: 0032
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("roles", sa.Column("constraints", sa.JSON(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE … DROP COLUMN on SQLite too (3.35+), as 0025, 0030 and 0032 do, not a batch
    # (which rebuilds the table, and the auth_generation triggers with it).
    op.drop_column("roles", "constraints")
