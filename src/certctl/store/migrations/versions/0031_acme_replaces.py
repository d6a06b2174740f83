"""acme_orders.replaces: the certificate an order renews (RFC 9773 5, ACME Renewal Information)

A client renewing with ARI names the certificate it replaces in new-order (``replaces``, its
certID); certctl keeps that certificate's id so that a second order replacing it is refused
(``alreadyReplaced``). Orders made before this revision replaced nothing: the column starts
null for them. Indexed: new-order looks up the orders replacing a certificate.

Revision ID: 0031
Revises: 0030
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("acme_orders", sa.Column("replaces", sa.String(32), nullable=True))
    op.create_index("ix_acme_orders_replaces", "acme_orders", ["replaces"])


def downgrade() -> None:
    # Nothing else reads it: the orders stay, forgetting which certificate they renewed (a
    # later order may then replace that certificate again, as before ARI).
    op.drop_index("ix_acme_orders_replaces", table_name="acme_orders")
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        # No DROP COLUMN before SQLite 3.35: the table is copied, and the authorizations
        # are lost to the drop of the old one (ON DELETE CASCADE) when foreign keys are on.
        with op.batch_alter_table("acme_orders") as batch:
            batch.drop_column("replaces")
    else:
        # In place: a batch copy of acme_orders drops the old table, whose implicit DELETE
        # cascades to every authorization and challenge on SQLite with foreign keys on.
        op.drop_column("acme_orders", "replaces")
