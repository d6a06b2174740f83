"""acme_accounts.deactivated_at: when the account was deactivated (RFC 8555 7.3.6)

Set by every deactivation (its holder's, an operator's, its EAB key's revocation): the
operator's view of an account shows when it was cut off. Accounts deactivated before this
revision get the time of the audit event that deactivated them: each of those three paths
audited ``acme.account.deactivate`` on the account, in the transaction that deactivated it
(asked again it says ``already deactivated``: not that one). One whose event is gone (the
audit table emptied by hand) stays NULL, shown as unknown.

Revision ID: 0032
Revises: 0031
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "acme_accounts", sa.Column("deactivated_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute(
        "UPDATE acme_accounts SET deactivated_at = ("
        "SELECT min(e.at) FROM audit_events e WHERE e.action = 'acme.account.deactivate'"
        " AND e.target = acme_accounts.id AND e.outcome = 'success'"
        " AND e.detail NOT LIKE 'already %') "
        "WHERE status = 'deactivated'"
    )


def downgrade() -> None:
    # ALTER TABLE … DROP COLUMN on SQLite too (3.35+), as 0025 and 0030 do, not a batch: the
    # batch rebuilds the table, and dropping the old acme_accounts with foreign keys on (as
    # certctl opens a store) failed on the orders that reference it.
    op.drop_column("acme_accounts", "deactivated_at")
