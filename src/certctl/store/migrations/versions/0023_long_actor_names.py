"""long actor names: ``audit_events.actor`` and ``certificates.created_by`` become TEXT

A client certificate's actor is ``cert:<its subject>`` and a ServiceAccount's
``kubernetes:system:serviceaccount:<namespace>:<name>``: either can pass 64 characters
(``cert:CN=ops-automation-runner-for-prod-cluster-7.example.internal`` is 65). On PostgreSQL
the VARCHAR(64) columns refused such a value: every issuance by such a certificate was a 500,
any other mutation of it was refused the same way by its audit row, and its 403s went
unaudited (a warning in the log). SQLite never enforced the length.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

COLUMNS = (("audit_events", "actor"), ("certificates", "created_by"))


def _triggers_on(table: str, column: str) -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER statement) of each trigger naming ``column`` (``UPDATE OF``).

    PostgreSQL refuses to change the type of such a column (0022's trigger watches
    ``created_by``): they are dropped and made again, exactly as they were.
    """
    rows = op.get_bind().execute(
        sa.text(
            "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
            "JOIN pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = ANY(t.tgattr) "
            "WHERE t.tgrelid = CAST(:table AS regclass) AND a.attname = :column "
            "AND NOT t.tgisinternal"
        ),
        {"table": table, "column": column},
    )
    return [(str(name), str(definition)) for name, definition in rows]


def _retype(type_: sa.types.TypeEngine[str], existing: sa.types.TypeEngine[str]) -> None:
    for table, column in COLUMNS:
        triggers = _triggers_on(table, column)
        for name, _ in triggers:
            op.execute(f'DROP TRIGGER "{name}" ON {table}')
        op.alter_column(table, column, type_=type_, existing_type=existing)
        for _, definition in triggers:
            op.execute(definition)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite does not enforce a VARCHAR's length
    # VARCHAR to TEXT is binary-compatible: no table rewrite, no index rebuild.
    _retype(sa.Text(), sa.String(64))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        # Longer values are cut, as a downgrade must fit them back into VARCHAR(64).
        op.execute(f"UPDATE {table} SET {column} = left({column}, 64) WHERE length({column}) > 64")
    _retype(sa.String(64), sa.Text())
