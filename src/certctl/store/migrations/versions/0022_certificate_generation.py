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
        # Per statement: a revocation of a long chain (keyCompromise) bumps once. The
        # function names its table unqualified, so it gets the schema's search_path (0021).
        schema = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar()
        op.execute(
            f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql "
            f"SET search_path = {schema}, pg_temp AS $$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        for table, columns in (
            ("certificates", certificate_columns),
            ("issuers", issuer_columns),
        ):
            inserted = " OR INSERT" if table == "issuers" else ""
            op.execute(
                f"CREATE TRIGGER certificate_generation_{table} AFTER UPDATE OF {columns}"
                f" OR DELETE OR TRUNCATE{inserted} ON {table}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
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
            op.execute(f"DROP TRIGGER IF EXISTS certificate_generation_{table} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    op.drop_table("certificate_generation")
