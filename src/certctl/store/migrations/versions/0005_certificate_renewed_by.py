"""certificates.renewed_by: the successor of a renewed certificate

A renewed certificate stays valid until its notAfter, so it used to count as ``expiring`` and
hold ``certctl_certificate_next_expiry_timestamp_seconds`` down until then: an expiry alert
fired for every certificate that had already been renewed. The renewal now records its
successor on the old row, and those counts leave such rows out.

The covering index of the counts gains the column, so the metrics refresh still reads the
index alone; ``renewed_from`` gets an index, for the revocation that hands a renewal over to
another successor. Existing renewals are back-filled in one pass over the successors (an
UPDATE with a correlated subquery would scan the table once per row).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("renewed_by", sa.String(length=32), nullable=True))
        batch_op.create_index(
            "ix_certificates_counts",
            ["issuer_id", "status", "not_after", "renewed_by"],
            unique=False,
        )
        batch_op.drop_index("ix_certificates_issuer_status_not_after")
        batch_op.create_index(
            "ix_certificates_renewed_from",
            ["renewed_from"],
            unique=False,
            sqlite_where=sa.text("renewed_from IS NOT NULL"),
            postgresql_where=sa.text("renewed_from IS NOT NULL"),
        )
    bind = op.get_bind()
    successors = bind.execute(
        sa.text(
            "SELECT renewed_from, id FROM certificates "
            "WHERE renewed_from IS NOT NULL AND status <> 'revoked' ORDER BY id"
        )
    ).all()
    latest = {old: new for old, new in successors}  # ids sort by creation: the last wins
    if latest:
        bind.execute(
            sa.text("UPDATE certificates SET renewed_by = :new WHERE id = :old"),
            [{"old": old, "new": new} for old, new in latest.items()],
        )


def downgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(
            "ix_certificates_issuer_status_not_after",
            ["issuer_id", "status", "not_after"],
            unique=False,
        )
        batch_op.drop_index("ix_certificates_renewed_from")
        batch_op.drop_index("ix_certificates_counts")
        batch_op.drop_column("renewed_by")
