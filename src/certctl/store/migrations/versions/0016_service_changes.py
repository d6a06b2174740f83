"""service changes told to the reconciling process

An API request changing a managed service (a spec created, edited or deleted, a renewal
requested, replaced CAs dropped, a client added or removed) woke the scheduler of the process
that answered it; with ``--workers`` or several replicas the reconciling process is often
another, which saw the change only at its next periodic pass (``reconcile-interval``).
Triggers, as for the credential counter of 0003, so every write path (the API of any worker or
replica, a fix made in ``sqlite3`` or ``psql``) is told:

* SQLite: a one-row counter, ``service_generation``, bumped in the transaction of the change;
  the reconciling worker polls it every second (``server.service_changes``).
* PostgreSQL: ``pg_notify('certctl_services', '')``, sent at commit to the leader, which
  LISTENs on a connection of its own. No counter row there: every change would update one row
  and hold its lock until commit, serialising unrelated services' writes for nothing.

What counts is what makes a service due (``service_schedule.due``), and not what the reconciler
itself writes after a pass, or each pass would wake the next: a row inserted or deleted, a new
spec ``generation``, a ``renew_at`` brought forward (``services renew``; a first issue sets it
too, which costs one pass with nothing to do), a ``retired_ca_until`` brought forward
(``services drop-retired-ca``), a client trusted or no longer trusted.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

BUMP = "UPDATE service_generation SET value = value + 1 WHERE id = 1"
NOTIFY = "PERFORM pg_notify('certctl_services', '')"
# An update of a service row that makes it due sooner (the reconciler's own writes do not).
DUE_SOONER = (
    "OLD.generation IS DISTINCT FROM NEW.generation"
    " OR (NEW.renew_at IS NOT NULL AND (OLD.renew_at IS NULL OR NEW.renew_at < OLD.renew_at))"
    " OR NEW.retired_ca_until < OLD.retired_ca_until"
)
DUE_COLUMNS = "generation, renew_at, retired_ca_until"
# SQLite trigger name -> its event.
SQLITE_TRIGGERS = {
    "service_generation_services_insert": "INSERT ON managed_services",
    "service_generation_services_delete": "DELETE ON managed_services",
    "service_generation_services_update": f"UPDATE OF {DUE_COLUMNS} ON managed_services",
    "service_generation_clients_insert": "INSERT ON service_clients",
    "service_generation_clients_delete": "DELETE ON service_clients",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.create_table(
            "service_generation",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("value", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.execute("INSERT INTO service_generation (id, value) VALUES (1, 0)")
        # SQLite has no IS DISTINCT FROM before 3.39: IS NOT is its null-safe comparison.
        when = f" WHEN {DUE_SOONER.replace('IS DISTINCT FROM', 'IS NOT')}"
        for name, event in SQLITE_TRIGGERS.items():
            condition = when if name.endswith("_update") else ""
            op.execute(f"CREATE TRIGGER {name} AFTER {event}{condition} BEGIN {BUMP}; END")
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION certctl_services_changed() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN {NOTIFY}; RETURN NULL; END $$"
        )
        # Statement-level where no condition is needed (one notification per statement;
        # PostgreSQL folds identical ones of a transaction into one), TRUNCATE included (0013).
        for table in ("managed_services", "service_clients"):
            op.execute(
                f"CREATE TRIGGER services_changed_{table} AFTER INSERT OR DELETE OR TRUNCATE "
                f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION certctl_services_changed()"
            )
        op.execute(
            f"CREATE TRIGGER services_changed_managed_services_update AFTER UPDATE OF "
            f"{DUE_COLUMNS} ON managed_services FOR EACH ROW WHEN ({DUE_SOONER}) "
            "EXECUTE FUNCTION certctl_services_changed()"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.drop_table("service_generation")
    elif dialect == "postgresql":
        for trigger, table in (
            ("services_changed_managed_services", "managed_services"),
            ("services_changed_service_clients", "service_clients"),
            ("services_changed_managed_services_update", "managed_services"),
        ):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS certctl_services_changed()")
