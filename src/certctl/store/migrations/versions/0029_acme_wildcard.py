"""acme_authorizations.wildcard: the authorization of a wildcard identifier (RFC 8555 7.1.4)

An order for ``*.example.com`` has an authorization whose identifier is ``example.com`` with
``wildcard`` true: it offers dns-01 only, and only it lets finalize issue the ``*.example.com``
SAN. The authorizations made before this revision are all of plain names (wildcards were
refused at new-order), so the column starts false for them.

Revision ID: 0029
Revises: 0028
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "acme_authorizations",
        sa.Column("wildcard", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # An authorization of a wildcard would be read back as one of its base name (proving it
    # by http-01 too): orders holding one go, with their authorizations and challenges (by
    # hand: SQLite enforces no ON DELETE CASCADE unless told to).
    wild = "SELECT order_id FROM acme_authorizations WHERE wildcard"
    op.execute(
        "DELETE FROM acme_challenges WHERE authorization_id IN "
        f"(SELECT id FROM acme_authorizations WHERE order_id IN ({wild}))"
    )
    op.execute(f"CREATE TEMPORARY TABLE wildcard_orders AS {wild}")
    op.execute(
        "DELETE FROM acme_authorizations WHERE order_id IN (SELECT order_id FROM wildcard_orders)"
    )
    op.execute("DELETE FROM acme_orders WHERE id IN (SELECT order_id FROM wildcard_orders)")
    op.execute("DROP TABLE wildcard_orders")
    # ALTER TABLE … DROP COLUMN on SQLite too (3.35+), as 0025 does, not a batch: the batch
    # rebuilds the table, and dropping the old one with foreign keys on (as certctl opens a
    # store) cascaded to acme_challenges, taking the challenges of every order kept.
    op.drop_column("acme_authorizations", "wildcard")
