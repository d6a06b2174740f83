"""the CAs a service's ca.crt keeps after a second replacement within the overlap

0011 kept one replaced CA (``retired_ca_pem`` until ``retired_ca_until``): a CA replaced
twice within the overlap (A, then B, then C) dropped A at the second replacement, hours
before its ``retired_ca_until``, while a server not reloaded since still presented a leaf
under A. The CAs retired before the newest one, each until its own end, are a JSON list of
``{"pem": ..., "until": ISO 8601}``, newest first.

A nullable column added in place (no table rewrite, no lock held beyond the ALTER):
services stored before keep the one CA of 0011 and no earlier ones.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("managed_services", sa.Column("earlier_retired_cas", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("managed_services", "earlier_retired_cas")
