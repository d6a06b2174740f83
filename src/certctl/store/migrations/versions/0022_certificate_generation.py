"""certificate generation: a counter of every change to what a certificate's GET shows

``GET /api/v1/certificates/{id}`` read the row on every request (~60 % of its CPU
in-process). Each process now remembers the rows it served while this one-row counter stays
put; database triggers bump it, from any process or replica or a fix made by hand, whenever
what the GET shows may change:

* ``certificates``: an update of any column it shows (a revocation, a reason changed, a
  renewal's ``renewed_by``, set by 0007's trigger too), a deletion, a TRUNCATE. Not an
  insertion (a row not yet read is not remembered: issuance, the common write, costs
  nothing), nor a re-wrapped key (a key-encryption-key rotation rewrites every row).
* ``issuers``: an insertion, a deletion, a TRUNCATE, and a change of what the judgement of
  a revoked issuer reads (subject, certificate, chain, revocation, creation time); not the
  CRL bookkeeping (``crl_number``, ``revocations``).

Not 0003's ``auth_generation``: a renewal would then empty every process's API-key cache.

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

BUMP = "UPDATE certificate_generation SET value = value + 1 WHERE id = 1"
CERTIFICATE_COLUMNS = (
    "issuer_id",
    "serial",
    "common_name",
    "subject",
    "sans",
    "profile",
    "status",
    "not_before",
    "not_after",
    "certificate_pem",
    "created_at",
    "created_by",
    "revoked_at",
    "revocation_reason",
    "renewed_from",
    "renewed_by",
    "id",
)
ISSUER_COLUMNS = (
    "id",
    "subject",
    "certificate_pem",
    "chain_pem",
    "created_at",
    "revoked_at",
    "revocation_reason",
)
FUNCTION = "certctl_bump_certificate_generation"
# Set (transaction-local) once the counter was bumped: one write of its row per transaction.
BUMPED = "certctl.certificate_generation_bumped"


def upgrade() -> None:
    op.create_table(
        "certificate_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO certificate_generation (id, value) VALUES (1, 0)")
    certificate_columns = ", ".join(CERTIFICATE_COLUMNS)
    issuer_columns = ", ".join(ISSUER_COLUMNS)
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        # SQLite has row triggers only; IS NOT is its null-safe comparison. The WHEN keeps a
        # statement that writes a value already there (0007's renewed_by) from bumping.
        changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in CERTIFICATE_COLUMNS)
        for name, event, when in (
            ("certificates_update", f"UPDATE OF {certificate_columns} ON certificates", changed),
            ("certificates_delete", "DELETE ON certificates", ""),
            ("issuers_insert", "INSERT ON issuers", ""),
            ("issuers_update", f"UPDATE OF {issuer_columns} ON issuers", ""),
            ("issuers_delete", "DELETE ON issuers", ""),
        ):
            op.execute(
                f"CREATE TRIGGER certificate_generation_{name} AFTER {event}"
                f"{f' WHEN {when}' if when else ''} BEGIN {BUMP}; END"
            )
    elif dialect == "postgresql":
        # At the commit (deferred constraint triggers), once per transaction. Bumped per
        # statement, the counter's row stayed locked from a transaction's first change to
        # its commit, and two writes took it and a certificate's row in opposite orders: a
        # revocation of X held it and went on to hand X's predecessor P back (its
        # renewed_by), while a renewal of P held P's row and waited for it; PostgreSQL rolled
        # one back (a 503 'deadlocked'). Taken last, it is held by no transaction that waits.
        # The function names its table unqualified, so it gets the schema's search_path.
        schema = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar()
        op.execute(
            f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql "
            f"SET search_path = {schema}, pg_temp AS $$ BEGIN "
            f"IF current_setting('{BUMPED}', true) IS DISTINCT FROM 'on' THEN "
            f"{BUMP}; PERFORM set_config('{BUMPED}', 'on', true); END IF; "
            "RETURN NULL; END $$"
        )
        for table, columns, inserted in (
            ("certificates", CERTIFICATE_COLUMNS, ""),
            ("issuers", ISSUER_COLUMNS, " OR INSERT"),
        ):
            # Row triggers, as constraint triggers must be; a row written with what it held
            # bumps nothing. json has no equality operator: its text is compared.
            old_row = ", ".join(f"OLD.{c}{'::text' if c == 'sans' else ''}" for c in columns)
            new_row = ", ".join(f"NEW.{c}{'::text' if c == 'sans' else ''}" for c in columns)
            deferred = "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
            op.execute(
                f"CREATE CONSTRAINT TRIGGER certificate_generation_{table}_update AFTER UPDATE"
                f" OF {', '.join(columns)} ON {table} {deferred}"
                f" WHEN (({old_row}) IS DISTINCT FROM ({new_row})) EXECUTE FUNCTION {FUNCTION}()"
            )
            op.execute(
                f"CREATE CONSTRAINT TRIGGER certificate_generation_{table} AFTER DELETE{inserted}"
                f" ON {table} {deferred} EXECUTE FUNCTION {FUNCTION}()"
            )
            # A TRUNCATE has no row trigger; it locks the whole table until its commit anyway.
            op.execute(
                f"CREATE TRIGGER certificate_generation_{table}_truncate AFTER TRUNCATE"
                f" ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
            )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in (
            "certificates_update",
            "certificates_delete",
            "issuers_insert",
            "issuers_update",
            "issuers_delete",
        ):
            op.execute(f"DROP TRIGGER IF EXISTS certificate_generation_{name}")
    elif dialect == "postgresql":
        for table in ("certificates", "issuers"):
            for suffix in ("", "_update", "_truncate"):
                name = f"certificate_generation_{table}{suffix}"
                op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    op.drop_table("certificate_generation")
