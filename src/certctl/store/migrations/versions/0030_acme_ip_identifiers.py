"""acme_authorizations.identifier_type: "dns", or "ip" for an IP address identifier (RFC 8738)

An order may name IP addresses (``{"type": "ip", "value": "10.0.0.5"}``); their
authorizations offer http-01 only and are shown with type "ip". The authorizations made
before this revision are all of DNS names (IP identifiers were refused at new-order), so the
column starts "dns" for them.

Revision ID: 0030
Revises: 0029
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "acme_authorizations",
        sa.Column("identifier_type", sa.String(8), nullable=False, server_default="dns"),
    )


def downgrade() -> None:
    # An authorization of an address would be read back as one of a DNS name (shown so, and
    # offered dns-01): orders holding one go, with their authorizations and challenges (by
    # hand: SQLite enforces no ON DELETE CASCADE unless told to), as 0029 does for wildcards.
    ip = "SELECT order_id FROM acme_authorizations WHERE identifier_type = 'ip'"
    op.execute(
        "DELETE FROM acme_challenges WHERE authorization_id IN "
        f"(SELECT id FROM acme_authorizations WHERE order_id IN ({ip}))"
    )
    op.execute(f"CREATE TEMPORARY TABLE ip_orders AS {ip}")
    op.execute("DELETE FROM acme_authorizations WHERE order_id IN (SELECT order_id FROM ip_orders)")
    op.execute("DELETE FROM acme_orders WHERE id IN (SELECT order_id FROM ip_orders)")
    op.execute("DROP TABLE ip_orders")
    # ALTER TABLE … DROP COLUMN on SQLite too (3.35+), as 0025 does, not a batch: the batch
    # rebuilds the table, and dropping the old one with foreign keys on (as certctl opens a
    # store) cascaded to acme_challenges, taking the challenges of every order kept.
    op.drop_column("acme_authorizations", "identifier_type")
