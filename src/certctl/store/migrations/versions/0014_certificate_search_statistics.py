"""certificate search: statistics on the folded columns q is matched against (PostgreSQL)

PostgreSQL keeps no statistics on ``lower(common_name)`` and the other expressions
``list_certificates`` matches q against: it guessed a few rows for any substring and sorted
every match (a parallel scan of the whole table, ~90 ms at 100,000 certificates) even where
the newest 50 rows by id all matched. Expression statistics (PostgreSQL 14+) let ANALYZE
sample what the folded values hold: a frequent substring now reads the id index backwards
and stops at the page (0.2 ms); a rare one is still found by a scan. Statistics change
plans only, never results. SQLite plans without them.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Each as list_certificates writes it for an ASCII q (store/db.py's json_text_like for sans):
# the planner matches a statistics expression to the query's by its parsed form.
EXPRESSIONS = {
    "certificates_lower_common_name": "lower(common_name)",
    "certificates_lower_subject": "lower(subject)",
    "certificates_lower_sans": 'lower(CAST(sans AS TEXT) COLLATE "C")',
}


def _applies() -> bool:
    bind = op.get_bind()
    # Statistics on an expression came with PostgreSQL 14; before it, plans stay as they were.
    version = bind.dialect.server_version_info or (0,)
    return bind.dialect.name == "postgresql" and version >= (14,)


def upgrade() -> None:
    if not _applies():
        return
    for name, expression in EXPRESSIONS.items():
        op.execute(f"CREATE STATISTICS {name} ON ({expression}) FROM certificates")
    op.execute("ANALYZE certificates")


def downgrade() -> None:
    if not _applies():
        return
    for name in EXPRESSIONS:
        op.execute(f"DROP STATISTICS IF EXISTS {name}")
