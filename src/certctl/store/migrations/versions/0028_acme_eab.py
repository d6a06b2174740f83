"""acme_eab_keys: External Account Binding keys (RFC 8555 7.3.4) minted over the API

An operator's caller mints one (``POST /api/v1/acme/eab-keys``); its HMAC key is stored
wrapped under the KEK (``wrapped_key``, context ``acme-eab:<id>``, re-wrapped by KEK rotation
like every other key). A key binds at most one account (``account_id`` unique, set when
new-account accepts the binding); ``actor_id`` is who minted it, the certctl actor the bound
account answers to. ``acme_accounts.eab_key_id`` names the key that bound an account.

Revision ID: 0028
Revises: 0027
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "acme_eab_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("actor_id", sa.String(200), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=True),
        sa.Column(
            "account_id",
            sa.String(32),
            sa.ForeignKey("acme_accounts.id"),
            nullable=True,
            unique=True,
        ),
        sa.Column("used_at", _TIME, nullable=True),
        sa.Column("revoked_at", _TIME, nullable=True),
    )
    # The key that bound an account (its view and audit name the minter); no foreign key,
    # the two tables would reference each other.
    op.add_column("acme_accounts", sa.Column("eab_key_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("acme_accounts") as batch:
        batch.drop_column("eab_key_id")
    op.drop_table("acme_eab_keys")
