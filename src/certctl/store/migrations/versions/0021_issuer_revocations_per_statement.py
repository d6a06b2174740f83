"""the CRL counter of 0020: certificates inserted revoked counted per statement (PostgreSQL)

0020 counted a certificate inserted revoked once per row on PostgreSQL, as certctl never
inserts one (it issues, then revokes): but a restore of the table's data (``pg_restore
--data-only`` with its triggers on, one ``COPY``) or rows copied in by hand in one statement
wrote the issuer's row once per revoked row, each write following the versions the ones
before it made of that row in the transaction: 20,000 rows took 5.2 s (18-22 s on a busy
machine), 0.49 s without the trigger. Counted per statement now, from the statement's
transition table, once per issuer named, as 0020 already counts updates and deletions:
0.24-0.49 s. SQLite is unchanged: per row (its triggers have no other kind), and fast there
(20,000 rows: 0.15-0.4 s, with the trigger or without).

The cost moves to every insert: the trigger runs for each statement, an issuance's too
(10-20 us of PostgreSQL's time), where the row trigger's condition kept an active
certificate from calling anything.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

INSERTED = "crl_revocations_certificates_insert"  # 0020's name, kept: its downgrade drops it
BUMP = "UPDATE issuers SET revocations = revocations + 1 WHERE id IN ({ids})"


def _replace(body: str, trigger: str) -> None:
    op.execute(f"DROP TRIGGER IF EXISTS {INSERTED} ON certificates")
    op.execute(f"DROP FUNCTION IF EXISTS certctl_{INSERTED}()")
    op.execute(
        f"CREATE FUNCTION certctl_{INSERTED}() RETURNS trigger LANGUAGE plpgsql "
        f"AS $$ BEGIN {body}; RETURN NULL; END $$"
    )
    op.execute(
        f"CREATE TRIGGER {INSERTED} AFTER INSERT ON certificates {trigger} "
        f"EXECUTE FUNCTION certctl_{INSERTED}()"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # IN: one write of each issuer named, however many of its rows the statement inserted.
    ids = "SELECT issuer_id FROM new_rows WHERE status = 'revoked'"
    _replace(BUMP.format(ids=ids), "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # 0020's, as it made it.
    _replace(BUMP.format(ids="NEW.issuer_id"), "FOR EACH ROW WHEN (NEW.status = 'revoked')")
