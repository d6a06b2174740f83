"""renewals recorded by the database

A renewal records its successor on the renewed certificate (``renewed_by``, 0005), which
takes it out of the expiring counts. During a rolling update, replicas still running a
certctl from before 0005 keep renewing certificates after a new replica has migrated the
shared database, and they know nothing of that column: each of those renewals left the
renewed certificate 'expiring' (and its expiry alert firing) until it expired. A trigger
now records every inserted successor, whichever certctl wrote it; the renewals such
replicas made before this migration are back-filled the way 0005 did.

SQLite drops a table's triggers with the table: a later migration that rebuilds
``certificates`` (``batch_alter_table`` with recreate) must create this one again.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The successor being inserted is the latest; HEAD's renewal has set it already (no write).
RECORD = (
    "UPDATE certificates SET renewed_by = NEW.id WHERE id = NEW.renewed_from "
    "AND (renewed_by IS NULL OR renewed_by <> NEW.id)"
)
WHEN = "NEW.renewed_from IS NOT NULL AND NEW.status <> 'revoked'"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(
            "CREATE TRIGGER certificates_renewed_by AFTER INSERT ON certificates "
            f"WHEN {WHEN} BEGIN {RECORD}; END"
        )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION certctl_record_renewal() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN {RECORD}; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER certificates_renewed_by AFTER INSERT ON certificates "
            f"FOR EACH ROW WHEN ({WHEN}) EXECUTE FUNCTION certctl_record_renewal()"
        )
    # Renewed by an older replica since 0005 ran: the latest live successor, as in 0005.
    bind = op.get_bind()
    successors = bind.execute(
        sa.text(
            "SELECT s.renewed_from, s.id FROM certificates s "
            "JOIN certificates p ON p.id = s.renewed_from "
            "WHERE s.renewed_from IS NOT NULL AND s.status <> 'revoked' "
            "AND p.renewed_by IS NULL ORDER BY s.id"
        )
    ).all()
    latest = {old: new for old, new in successors}  # ids sort by creation: the last wins
    if latest:
        bind.execute(
            sa.text("UPDATE certificates SET renewed_by = :new WHERE id = :old"),
            [{"old": old, "new": new} for old, new in latest.items()],
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS certificates_renewed_by")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS certificates_renewed_by ON certificates")
        op.execute("DROP FUNCTION IF EXISTS certctl_record_renewal()")
