"""auth generation: also bumped by what decides a client certificate's authentication

Migration 0003's counter (``auth_generation``) covers roles, actors and API keys. A client
certificate (mTLS) also depends on certificates and issuers: whether certctl revoked it, who
had it issued (its permissions are capped by theirs), and whether a certctl issuer above it
was revoked. The API server remembers a certificate's answer while the counter stays put, so
these changes bump it too, from any process or replica, on both backends:

* ``certificates``: a status change (only ever to ``revoked``), or a change of what finds the
  row or caps it (issuer, serial, requester, predecessor, whether the key is the server's),
  and a deletion. Not an insertion: a certificate is stored before anyone holds it, and an
  issuance (the common write) must not empty the API-key cache. Not ``renewed_by`` nor a
  re-wrapped key (a key-encryption-key rotation rewrites every row).
* ``issuers``: an insertion or deletion, and a change of subject, certificate or revocation;
  not ``crl_number`` (taken at every CRL signing).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BUMP = "UPDATE auth_generation SET value = value + 1 WHERE id = 1"
# A certificate row changed in a way that can change a client certificate's authentication.
CERTIFICATE_CHANGED = (
    "OLD.status IS DISTINCT FROM NEW.status"
    " OR OLD.issuer_id IS DISTINCT FROM NEW.issuer_id"
    " OR OLD.serial IS DISTINCT FROM NEW.serial"
    " OR OLD.created_by IS DISTINCT FROM NEW.created_by"
    " OR OLD.renewed_from IS DISTINCT FROM NEW.renewed_from"
    " OR (OLD.wrapped_key IS NULL) <> (NEW.wrapped_key IS NULL)"
)
CERTIFICATE_COLUMNS = "status, issuer_id, serial, created_by, renewed_from, wrapped_key"
ISSUER_COLUMNS = "subject, certificate_pem, revoked_at"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        # SQLite has no IS DISTINCT FROM before 3.39: IS NOT is its null-safe comparison.
        changed = CERTIFICATE_CHANGED.replace("IS DISTINCT FROM", "IS NOT")
        for name, event in (
            ("certificates_update", f"UPDATE OF {CERTIFICATE_COLUMNS} ON certificates"),
            ("certificates_delete", "DELETE ON certificates"),
            ("issuers_insert", "INSERT ON issuers"),
            ("issuers_update", f"UPDATE OF {ISSUER_COLUMNS} ON issuers"),
            ("issuers_delete", "DELETE ON issuers"),
        ):
            when = f" WHEN {changed}" if name == "certificates_update" else ""
            op.execute(
                f"CREATE TRIGGER auth_generation_{name} AFTER {event}{when} BEGIN {BUMP}; END"
            )
    elif dialect == "postgresql":
        # certctl_bump_auth_generation() is 0003's. Per row only where a condition is needed:
        # a statement-level trigger cannot see OLD and NEW.
        op.execute(
            "CREATE TRIGGER auth_generation_certificates_update AFTER UPDATE OF "
            f"{CERTIFICATE_COLUMNS} ON certificates FOR EACH ROW WHEN ({CERTIFICATE_CHANGED}) "
            "EXECUTE FUNCTION certctl_bump_auth_generation()"
        )
        op.execute(
            "CREATE TRIGGER auth_generation_certificates_delete AFTER DELETE ON certificates "
            "FOR EACH STATEMENT EXECUTE FUNCTION certctl_bump_auth_generation()"
        )
        op.execute(
            "CREATE TRIGGER auth_generation_issuers AFTER INSERT OR DELETE OR UPDATE OF "
            f"{ISSUER_COLUMNS} ON issuers "
            "FOR EACH STATEMENT EXECUTE FUNCTION certctl_bump_auth_generation()"
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
            op.execute(f"DROP TRIGGER IF EXISTS auth_generation_{name}")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS auth_generation_certificates_update ON certificates")
        op.execute("DROP TRIGGER IF EXISTS auth_generation_certificates_delete ON certificates")
        op.execute("DROP TRIGGER IF EXISTS auth_generation_issuers ON issuers")
