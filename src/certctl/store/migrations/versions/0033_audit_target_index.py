"""audit target index: ``GET /api/v1/audit?target=…`` by index, not a read of every event

``target`` matches a substring in either case (an id appears in the targets of every event
about it), which no B-tree serves: a rare target's page read the whole table (~0.1 s at
200,000 events). A trigram index does:

- PostgreSQL: ``pg_trgm``'s GIN index on ``lower(target)``, the expression ``list_audit``
  matches with LIKE; the planner takes it for a rare target and the id order for a common one.
- SQLite: an FTS5 table with the ``trigram`` tokenizer (SQLite 3.34) over ``audit_events``
  (external content: the targets are not stored twice), kept by triggers; ``list_audit``
  asks it for the candidate ids and checks each as before.

Either may be missing (PostgreSQL without the contrib extension or a role that may not create
it; SQLite built without FTS5): the migration then leaves it out, saying so, and the filter
works as before, unindexed. ``services.audit`` looks for the SQLite table, not the revision.

Revision ID: 0033
Revises: 0032
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0033"
# The brief's 0029, chained after this branch's 0032 to keep one head; the lead rewires it
# when merging the parallel 0030 and 0031.
down_revision = "0032"
branch_labels = None
depends_on = None

log = logging.getLogger("certctl.store")

# As services.audit names them.
PG_INDEX = "ix_audit_events_target_trgm"
FTS_TABLE = "audit_events_target_fts"
_TRIGGERS = {
    "audit_events_target_fts_insert": (
        "AFTER INSERT ON audit_events BEGIN "
        f"INSERT INTO {FTS_TABLE} (rowid, target) VALUES (new.id, new.target); END"
    ),
    "audit_events_target_fts_delete": (
        "AFTER DELETE ON audit_events BEGIN "
        f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}, rowid, target) "
        "VALUES ('delete', old.id, old.target); END"
    ),
    "audit_events_target_fts_update": (
        "AFTER UPDATE OF target ON audit_events BEGIN "
        f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}, rowid, target) "
        "VALUES ('delete', old.id, old.target); "
        f"INSERT INTO {FTS_TABLE} (rowid, target) VALUES (new.id, new.target); END"
    ),
}


def upgrade() -> None:
    bind = op.get_bind()
    # A savepoint: the whole upgrade is one transaction (store.db.migrate), which a failed
    # CREATE would otherwise abort on PostgreSQL.
    try:
        with bind.begin_nested():
            if bind.dialect.name == "postgresql":
                op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                op.execute(
                    f"CREATE INDEX {PG_INDEX} ON audit_events "
                    "USING gin (lower(target) gin_trgm_ops)"
                )
                op.execute("ANALYZE audit_events")
            else:
                op.execute(
                    f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(target, "
                    "content='audit_events', content_rowid='id', "
                    "tokenize='trigram case_sensitive 0')"
                )
                op.execute(f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}) VALUES ('rebuild')")
                for name, body in _TRIGGERS.items():
                    op.execute(f"CREATE TRIGGER {name} {body}")
    except DBAPIError as exc:
        log.warning(
            "no index for the audit log's target filter (%s): it reads every event, as before",
            str(exc.orig).strip().splitlines()[0] if exc.orig else exc,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")  # the extension stays: others may use it
    else:
        for name in _TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")
