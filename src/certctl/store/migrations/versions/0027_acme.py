"""acme: accounts, orders, authorizations, challenges and nonces of the ACME endpoint

The opt-in ACME server (RFC 8555, ``acme.enabled``) keeps its state in the store, as every
replica of a PostgreSQL store must see it: an account made through one replica orders through
another, and a nonce one replica handed out is accepted once by any (``acme_nonces`` holds
the used ones: the INSERT of its row is the one acceptance). Certificates it issues are
ordinary ``certificates`` rows; an order names its own (``certificate_id``, no foreign key:
``TRUNCATE certificates`` by hand stays possible, and an order whose certificate row is gone
serves none).

Revision ID: 0027
Revises: 0026
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("thumbprint", sa.String(64), nullable=False, unique=True),
        sa.Column("jwk", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("contact", sa.JSON(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
    )
    op.create_table(
        "acme_orders",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("acme_accounts.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("identifiers", sa.JSON(), nullable=False),
        sa.Column("expires", _TIME, nullable=False),
        # No foreign key: TRUNCATE certificates (0021 counts it) must keep working.
        sa.Column("certificate_id", sa.String(32), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
    )
    op.create_index("ix_acme_orders_account_id", "acme_orders", ["account_id"])
    op.create_index("ix_acme_orders_certificate_id", "acme_orders", ["certificate_id"])
    op.create_table(
        "acme_authorizations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "order_id",
            sa.String(32),
            sa.ForeignKey("acme_orders.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("identifier", sa.String(253), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("expires", _TIME, nullable=False),
    )
    op.create_index("ix_acme_authorizations_order_id", "acme_authorizations", ["order_id"])
    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "authorization_id",
            sa.String(32),
            sa.ForeignKey("acme_authorizations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("token", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("validated_at", _TIME, nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
    )
    op.create_index("ix_acme_challenges_authorization_id", "acme_challenges", ["authorization_id"])
    op.create_table(
        "acme_nonces",
        sa.Column("value", sa.String(64), primary_key=True),
        sa.Column("expires", _TIME, nullable=False),
    )
    op.create_index("ix_acme_nonces_expires", "acme_nonces", ["expires"])


def downgrade() -> None:
    for table in (
        "acme_nonces",
        "acme_challenges",
        "acme_authorizations",
        "acme_orders",
        "acme_accounts",
    ):
        op.drop_table(table)
