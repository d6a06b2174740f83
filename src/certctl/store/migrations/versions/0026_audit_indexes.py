"""audit indexes: the log's exact filters (actor, credential, action, outcome) by index

``GET /api/v1/audit?actor=…`` (and credential, action, outcome) read the table backwards by id
and kept the matching rows: a rare actor's page read every row (25–50 ms at 200,000 events,
0.2–0.9 ms now; docs/performance.md, session 27). Each index is (column, id), as
``list_audit`` orders (``id DESC``) and pages (``id < cursor``): a filtered page reads its own
rows and stops.

``actor`` is TEXT of any length (0023: a client certificate's ``cert:<subject>``), and a
PostgreSQL B-tree entry cannot pass 2,704 bytes: an index on the column itself would make
such an actor's every audited call fail. Its first 200 characters are indexed instead, and
``list_audit`` matches them as well as the whole value. ``target`` (a substring, folded)
cannot use a B-tree, and ``since``/``until`` have the ``at`` index since 0001.

Revision ID: 0026
Revises: 0025
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
# The lead rewires this to 0025 when merging the parallel 0025.
down_revision = "0025"
branch_labels = None
depends_on = None

# As models.AuditEvent declares them; the actor's expression is services.audit's, verbatim.
INDEXES: dict[str, list[str | sa.TextClause]] = {
    "ix_audit_events_actor": [sa.text("substr(actor, 1, 200)"), "id"],
    "ix_audit_events_credential": ["credential", "id"],
    "ix_audit_events_action": ["action", "id"],
    "ix_audit_events_outcome": ["outcome", "id"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "audit_events", columns)
    if op.get_bind().dialect.name == "postgresql":
        # Statistics on the actor's expression, which only ANALYZE gathers: without them
        # PostgreSQL took every actor as rare, and sorted a frequent one's events (all of
        # them) for a page it could read in order from the index. SQLite plans without.
        op.execute("ANALYZE audit_events")


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="audit_events")
