"""installation id: who wrote a Kubernetes Secret, among certctl installations

Two certctl installations (two Helm releases, each its own database) delivering into one
namespace told their Secrets apart by nothing: both label them managed-by=certctl, so a
service of one took over the other's Secret of the same name, and the two swapped it at
every reconcile. Each installation records this id on every Secret it writes
(``certctl.io/owner``) and refuses one that carries another id.

A random id made once, here: the migration runs once per database (under the start-up
lock), so every replica and worker of one installation reads the same id, and a database
restored from a backup keeps it. Nothing already stored could serve: the default CA's
fingerprint changes when the CA is renewed or replaced.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "uid": str(uuid.uuid4())}])


def downgrade() -> None:
    op.drop_table("installation")
