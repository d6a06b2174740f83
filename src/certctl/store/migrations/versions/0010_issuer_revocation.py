"""revocable intermediate issuers

An intermediate issuer whose key was compromised could not be revoked: nothing put it on its
parent's CRL, and it went on issuing. ``revoked_at`` and ``revocation_reason`` record its
revocation (the parent's CRL lists its serial with the reason, and it issues nothing more);
``parent_id`` names the issuer that signed it, whose CRL that is. It is set for intermediates
created from now on; for those created before, and for imports, it is found by signature when
one is revoked, so no back-fill is needed.

Nullable columns added in place. During a rolling update, a replica still running an older
certctl does not read them: it keeps issuing from an intermediate revoked elsewhere until it
is upgraded.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("issuers", sa.Column("parent_id", sa.String(64), nullable=True))
    op.add_column("issuers", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("issuers", sa.Column("revocation_reason", sa.String(40), nullable=True))


def downgrade() -> None:
    # SQLite (3.35 and later) drops a column in place when no index or constraint names it.
    op.drop_column("issuers", "revocation_reason")
    op.drop_column("issuers", "revoked_at")
    op.drop_column("issuers", "parent_id")
