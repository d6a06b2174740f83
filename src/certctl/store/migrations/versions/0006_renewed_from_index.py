"""the renewed_from index for stores migrated by the first 0005

Migration 0005 as first released (commit 0e27081) added ``renewed_by`` without the partial
index on ``renewed_from``; the index was added to 0005 afterwards, but a store already at
0005 never runs it again. Without it each revocation of a renewed certificate scans the
certificates table to hand its predecessor over. Created here when missing.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The same index as 0005's (and the model's); a store 0005 gave it keeps it.
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_certificates_renewed_from ON certificates "
        "(renewed_from) WHERE renewed_from IS NOT NULL"
    )


def downgrade() -> None:
    pass  # 0005's index: dropped by 0005's downgrade
