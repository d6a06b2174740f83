"""a replaced CA a service's ca.crt keeps trusting for a while

When a service's issuing CA is replaced by another (a custom ``ca.crt`` + ``ca.key`` with a
new key), the old CA stays in the ``ca.crt`` its targets get, after the new one, until
``retired_ca_until``: servers not yet reloaded still present leaves under it.

Nullable columns added in place: services stored before have no CA being retired.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("managed_services", sa.Column("retired_ca_pem", sa.Text(), nullable=True))
    op.add_column(
        "managed_services", sa.Column("retired_ca_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("managed_services", "retired_ca_until")
    op.drop_column("managed_services", "retired_ca_pem")
