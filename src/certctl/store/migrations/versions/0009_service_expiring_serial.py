"""the certificate a service's "expiring" event was sent for

Whether the event had been sent was read from the time of the service's Ready condition,
rewritten by every reconcile pass: the pass before was inside the expiring window, so it
had sent it. Condition times now change only when the condition does (as Kubernetes'
lastTransitionTime), so the memory is this column: the serial of the certificate the event
was sent for, once per certificate across restarts and replicas.

A nullable column added in place; rows of older stores start without it, and a service
already told about its certificate before the upgrade is told once more.

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


def upgrade() -> None:
    op.add_column("managed_services", sa.Column("expiring_serial", sa.String(42), nullable=True))


def downgrade() -> None:
    op.drop_column("managed_services", "expiring_serial")
