"""the last CRL signed for each issuer, kept in the store for every process to serve

Each process (``--workers``, replicas on PostgreSQL) served the CRL it had signed itself
for up to 10 minutes: a client load-balanced over them saw the CRL number of one unchanged
list go down and up (N_B, N_A, N_B), where RFC 5280 5.2.3 wants it to increase and a relying
party keeping the highest number seen (Windows, some Java) ignores or distrusts a lower one.
The CRL now signed is stored here, with its number, when it was signed, its nextUpdate and a
digest of what it was signed from (the CA's name and key, the revoked list); every process
serves the stored one while it is fresh and its list unchanged, and signs anew otherwise.

One row per issuer, replaced whole; gone with its issuer. A cache: dropping it loses nothing
(the next fetch signs anew, numbered by issuers.crl_number as before).

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issuer_crls",
        sa.Column("issuer_id", sa.String(64), nullable=False),
        sa.Column("crl_number", sa.BigInteger(), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("basis", sa.String(64), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["issuer_id"], ["issuers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("issuer_id"),
    )


def downgrade() -> None:
    op.drop_table("issuer_crls")
