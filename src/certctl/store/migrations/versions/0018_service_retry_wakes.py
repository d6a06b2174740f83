"""a renewal asked again while a failed one backs off is told to the reconciling process

0016's triggers signal what makes a service due sooner, renew_at brought forward among
them. A renewal that failed (issuing refused; renew_at already past) backs off: asked again
once the cause is fixed (``services renew``), renew_at moves *later* (to now) and the
back-off is lifted (``next_attempt_at`` cleared), which makes the service due at once, but
no trigger fired, so the reconciling process saw it only at its next periodic pass.

The update trigger now also fires when ``next_attempt_at`` is cleared while ``attempts`` stays
above 0: only such a request does that. The reconciler clears it together with ``attempts``
(a pass that worked), which still signals nothing.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

BUMP = "UPDATE service_generation SET value = value + 1 WHERE id = 1"
# 0016's condition and columns, and what this migration adds to them.
DUE_SOONER_0016 = (
    "OLD.generation IS DISTINCT FROM NEW.generation"
    " OR (NEW.renew_at IS NOT NULL AND (OLD.renew_at IS NULL OR NEW.renew_at < OLD.renew_at))"
    " OR NEW.retired_ca_until < OLD.retired_ca_until"
)
COLUMNS_0016 = "generation, renew_at, retired_ca_until"
RETRY_LIFTED = (
    " OR (NEW.next_attempt_at IS NULL AND OLD.next_attempt_at IS NOT NULL AND NEW.attempts > 0)"
)
SQLITE_TRIGGER = "service_generation_services_update"
PG_TRIGGER = "services_changed_managed_services_update"


def _create(dialect: str, condition: str, columns: str) -> None:
    if dialect == "sqlite":
        # SQLite has no IS DISTINCT FROM before 3.39: IS NOT is its null-safe comparison.
        when = condition.replace("IS DISTINCT FROM", "IS NOT")
        op.execute(f"DROP TRIGGER IF EXISTS {SQLITE_TRIGGER}")
        op.execute(
            f"CREATE TRIGGER {SQLITE_TRIGGER} AFTER UPDATE OF {columns} ON managed_services"
            f" WHEN {when} BEGIN {BUMP}; END"
        )
    elif dialect == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {PG_TRIGGER} ON managed_services")
        op.execute(
            f"CREATE TRIGGER {PG_TRIGGER} AFTER UPDATE OF {columns} ON managed_services"
            f" FOR EACH ROW WHEN ({condition}) EXECUTE FUNCTION certctl_services_changed()"
        )


def upgrade() -> None:
    _create(
        op.get_bind().dialect.name,
        DUE_SOONER_0016 + RETRY_LIFTED,
        f"{COLUMNS_0016}, next_attempt_at",
    )


def downgrade() -> None:
    _create(op.get_bind().dialect.name, DUE_SOONER_0016, COLUMNS_0016)
