"""the certificate a service's "expiring" event was sent for

Whether the event had been sent was read from the time of the service's Ready condition,
rewritten by every reconcile pass: the pass before was inside the expiring window, so it
had sent it. Condition times now change only when the condition does (as Kubernetes'
lastTransitionTime), so the memory is this column: the serial of the certificate the event
was sent for, once per certificate across restarts and replicas.

A nullable column added in place. Whether a stored service was told cannot be decided here:
it depends on ``cert-rotate-before``, a server setting no column holds. So each service with a
certificate starts with the marker ``UNKNOWN_BEFORE_0009`` instead of NULL (which told it
once more, one extra webhook per service already inside its window), and its first
successful pass judges it by the rule of before, with the margin configured then.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Also service_reconcile.EXPIRING_UNKNOWN; a migration keeps its own copy (it must not change).
UNKNOWN_BEFORE_0009 = "unknown: stored before 0009"


def upgrade() -> None:
    op.add_column("managed_services", sa.Column("expiring_serial", sa.String(42), nullable=True))
    op.execute(
        sa.text(
            "UPDATE managed_services SET expiring_serial = :marker"
            " WHERE serial IS NOT NULL AND not_after IS NOT NULL"
        ).bindparams(marker=UNKNOWN_BEFORE_0009)
    )


def downgrade() -> None:
    op.drop_column("managed_services", "expiring_serial")
