"""a CRL number counter per issuer

Each process numbered the CRLs it signed from its own clock (microseconds since the epoch).
Two replicas whose clocks differ, or one clock stepped back (NTP, a VM restored), signed a
CRL with a lower or the same number as one already published, where RFC 5280 5.2.3 wants
the numbers of an issuer's CRLs to increase. The number now comes from this column,
incremented in the database for every CRL signed, and never below the clock's microseconds:
the numbers go on above those issued before this migration and those of replicas still
running an older certctl during a rolling update.

A column added in place (not a rebuilt table): SQLite keeps the triggers of 0007, which sit
on certificates anyway.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "issuers",
        sa.Column("crl_number", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.drop_column("issuers", "crl_number")
