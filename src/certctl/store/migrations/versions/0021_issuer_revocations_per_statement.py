"""PostgreSQL: the CRL counter counts inserts per statement and a TRUNCATE; triggers restorable

0020 counted a certificate inserted revoked once per row on PostgreSQL, as certctl never
inserts one (it issues, then revokes): but a restore of the table's data (``pg_restore
--data-only`` with its triggers on, one ``COPY``) or rows copied in by hand in one statement
wrote the issuer's row once per revoked row, each write following the versions the ones
before it made of that row in the transaction: 20,000 rows took 5.2 s (18-22 s on a busy
machine), 0.49 s without the trigger. Counted per statement now, from the statement's
transition table, once per issuer named, as 0020 already counts updates and deletions:
0.24-0.49 s. SQLite is unchanged: per row (its triggers have no other kind), and fast there
(20,000 rows: 0.15-0.4 s, with the trigger or without).

PostgreSQL fires no DELETE trigger for a ``TRUNCATE`` (as 0013 found for the credential
counter): the certificates emptied by hand left every issuer's count where it was, and its
stored CRL went on listing what was revoked for up to 10 minutes. A TRUNCATE trigger counts
a change for every issuer (the rows are gone: which issuers they named is not known). Not
on ``issuers``: it cannot be emptied without ``certificates`` (their foreign key), whose
trigger then finds no issuer left to count. SQLite has no TRUNCATE: its ``DELETE`` without
``WHERE`` fires the row triggers (a table with triggers is never emptied at once).

``pg_restore`` (and a plain dump run by psql) empties ``search_path`` for the whole restore
(CVE-2018-1058), triggers included: every certctl trigger function named its tables
unqualified, so a data-only restore with triggers on failed at its first row of a watched
table (``relation "issuers" does not exist``); with triggers disabled (a superuser's) it
left the CRLs and the credential caches behind what it restored. Each ``certctl_*``
function of the schema gets the schema's search_path (pg_temp last) as its own, so a
function created by a later migration must set it too.

The cost moves to every insert: the trigger runs for each statement, an issuance's too
(10-20 us of PostgreSQL's time), where the row trigger's condition kept an active
certificate from calling anything.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

INSERTED = "crl_revocations_certificates_insert"  # 0020's name, kept: its downgrade drops it
TRUNCATED = "crl_revocations_certificates_truncate"
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


def _functions() -> list[str]:
    """certctl's functions in the schema it is migrated in, each as ``name()``."""
    # By its name, not current_schema()::regnamespace: that cast reads the name as an
    # identifier, folding a schema "Certctl-Store" to certctl-store (none, or another).
    return list(
        op.get_bind()
        .execute(
            sa.text(
                "SELECT p.oid::regprocedure::text FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = current_schema() "
                "AND p.proname LIKE 'certctl\\_%' ORDER BY 1"
            )
        )
        .scalars()
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # IN: one write of each issuer named, however many of its rows the statement inserted.
    ids = "SELECT issuer_id FROM new_rows WHERE status = 'revoked'"
    _replace(BUMP.format(ids=ids), "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT")
    op.execute(
        f"CREATE FUNCTION certctl_{TRUNCATED}() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN UPDATE issuers SET revocations = revocations + 1; RETURN NULL; END $$"
    )
    op.execute(
        f"CREATE TRIGGER {TRUNCATED} AFTER TRUNCATE ON certificates "
        f"FOR EACH STATEMENT EXECUTE FUNCTION certctl_{TRUNCATED}()"
    )
    schema = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar()
    for function in _functions():
        op.execute(f"ALTER FUNCTION {function} SET search_path = {schema}, pg_temp")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for function in _functions():
        op.execute(f"ALTER FUNCTION {function} RESET search_path")
    op.execute(f"DROP TRIGGER IF EXISTS {TRUNCATED} ON certificates")
    op.execute(f"DROP FUNCTION IF EXISTS certctl_{TRUNCATED}()")
    # 0020's, as it made it.
    _replace(BUMP.format(ids="NEW.issuer_id"), "FOR EACH ROW WHEN (NEW.status = 'revoked')")
