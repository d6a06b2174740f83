"""blocked_keys: public keys certctl certifies no more (Let's Encrypt's blockedKeys)

One row per key (SHA-256 of its SubjectPublicKeyInfo DER, hex), added by every revocation
that says the key is compromised: a certificate's keyCompromise, an issuer's keyCompromise or
cACompromise. Issuance from a CSR, an ACME finalize and a renewal that keeps the key refuse a
key found here. Filled now from the certificates and issuers already revoked so, their key
read from their stored PEM; the revoking actor from the audit log when its event is there.

A change of the table bumps 0003's credential counter (``auth_generation``), by triggers as
0012's: each process keeps the blocked keys in memory while the counter stays put
(``services.blocked_keys``), which the issuance path already reads for its API key; a key
blocked by another worker or replica (or a row an operator adds or deletes) is seen at the next
issuance. Rare writes: the API-key cache they empty costs a read per key once.

Revision ID: 0033
Revises: 0032
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None

# Rows read and written per statement: a store with many revoked certificates is walked in
# batches (keyset by id), never held in memory whole.
_BATCH = 500
_BUMP = "UPDATE auth_generation SET value = value + 1 WHERE id = 1"
# A revoked row without its time (edited by hand): blocked as of this upgrade.
_NOW = datetime.now(UTC)

_BLOCKED = sa.table(
    "blocked_keys",
    sa.column("key_sha256", sa.String),
    sa.column("blocked_at", sa.DateTime(timezone=True)),
    sa.column("reason", sa.String),
    sa.column("certificate_id", sa.String),
    sa.column("issuer_id", sa.String),
    sa.column("blocked_by", sa.Text),
)
_CERTIFICATES = sa.table(
    "certificates",
    sa.column("id", sa.String),
    sa.column("certificate_pem", sa.Text),
    sa.column("status", sa.String),
    sa.column("revoked_at", sa.DateTime(timezone=True)),
    sa.column("revocation_reason", sa.String),
)
_ISSUERS = sa.table(
    "issuers",
    sa.column("id", sa.String),
    sa.column("certificate_pem", sa.Text),
    sa.column("revoked_at", sa.DateTime(timezone=True)),
    sa.column("revocation_reason", sa.String),
)
_AUDIT = sa.table(
    "audit_events",
    sa.column("id", sa.Integer),
    sa.column("actor", sa.Text),
    sa.column("action", sa.String),
    sa.column("target", sa.String),
    sa.column("outcome", sa.String),
    sa.column("detail", sa.Text),
)


def upgrade() -> None:
    op.create_table(
        "blocked_keys",
        sa.Column("key_sha256", sa.String(64), primary_key=True),
        sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("certificate_id", sa.String(32), nullable=True),
        sa.Column("issuer_id", sa.String(64), nullable=True),
        sa.Column("blocked_by", sa.Text(), nullable=False),
    )
    connection = op.get_bind()
    _backfill_certificates(connection)
    _backfill_issuers(connection)
    if connection.dialect.name == "sqlite":
        for event in ("INSERT", "UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER auth_generation_blocked_keys_{event.lower()} AFTER {event} ON "
                f"blocked_keys BEGIN {_BUMP}; END"
            )
    elif connection.dialect.name == "postgresql":
        # certctl_bump_auth_generation() is 0003's (its search_path set by 0021).
        op.execute(
            "CREATE TRIGGER auth_generation_blocked_keys AFTER INSERT OR UPDATE OR DELETE ON "
            "blocked_keys FOR EACH STATEMENT EXECUTE FUNCTION certctl_bump_auth_generation()"
        )
        op.execute(
            "CREATE TRIGGER auth_generation_blocked_keys_truncate AFTER TRUNCATE ON "
            "blocked_keys FOR EACH STATEMENT EXECUTE FUNCTION certctl_bump_auth_generation()"
        )


def _key_sha256(pem: str | None) -> str | None:
    """The certificate's key hash, or None for a PEM that no longer reads (nothing to block)."""
    try:
        cert = x509.load_pem_x509_certificate((pem or "").encode())
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return hashlib.sha256(spki).hexdigest()


def _revokers(connection: sa.Connection, action: str, ids: Sequence[str]) -> dict[str, str]:
    """Who revoked each of ``ids`` for a compromise, from the audit log (the first event)."""
    rows = connection.execute(
        sa.select(_AUDIT.c.target, _AUDIT.c.actor)
        .where(
            _AUDIT.c.action == action,
            _AUDIT.c.outcome == "success",
            _AUDIT.c.target.in_(ids),
            sa.or_(_AUDIT.c.detail.like("keyCompromise%"), _AUDIT.c.detail.like("cACompromise%")),
        )
        .order_by(_AUDIT.c.id.desc())  # the first event wins: written last into the dict
    )
    return {target: actor for target, actor in rows}


def _insert_new(connection: sa.Connection, rows: list[dict[str, object]]) -> None:
    """Insert those of ``rows`` whose key is not blocked yet (the first row of a key wins)."""
    first: dict[str, dict[str, object]] = {}
    for row in rows:
        first.setdefault(str(row["key_sha256"]), row)
    if not first:
        return
    present = set(
        connection.execute(
            sa.select(_BLOCKED.c.key_sha256).where(_BLOCKED.c.key_sha256.in_(list(first)))
        ).scalars()
    )
    fresh = [row for key, row in first.items() if key not in present]
    if fresh:
        connection.execute(sa.insert(_BLOCKED), fresh)


def _backfill_certificates(connection: sa.Connection) -> None:
    after = ""
    while True:
        batch = connection.execute(
            sa.select(
                _CERTIFICATES.c.id, _CERTIFICATES.c.certificate_pem, _CERTIFICATES.c.revoked_at
            )
            .where(
                _CERTIFICATES.c.status == "revoked",
                _CERTIFICATES.c.revocation_reason == "keyCompromise",
                _CERTIFICATES.c.id > after,
            )
            .order_by(_CERTIFICATES.c.id)
            .limit(_BATCH)
        ).all()
        if not batch:
            return
        after = batch[-1].id
        actors = _revokers(connection, "certificate.revoke", [r.id for r in batch])
        rows: list[dict[str, object]] = []
        for cert_id, pem, revoked_at in batch:
            key = _key_sha256(pem)
            if key is not None:
                rows.append(
                    {
                        "key_sha256": key,
                        "blocked_at": revoked_at or _NOW,
                        "reason": "keyCompromise",
                        "certificate_id": cert_id,
                        "issuer_id": None,
                        "blocked_by": actors.get(cert_id, ""),
                    }
                )
        _insert_new(connection, rows)


def _backfill_issuers(connection: sa.Connection) -> None:
    after = ""
    while True:
        batch = connection.execute(
            sa.select(
                _ISSUERS.c.id,
                _ISSUERS.c.certificate_pem,
                _ISSUERS.c.revoked_at,
                _ISSUERS.c.revocation_reason,
            )
            .where(
                _ISSUERS.c.revocation_reason.in_(("keyCompromise", "cACompromise")),
                _ISSUERS.c.id > after,
            )
            .order_by(_ISSUERS.c.id)
            .limit(_BATCH)
        ).all()
        if not batch:
            return
        after = batch[-1].id
        actors = _revokers(connection, "issuer.revoke", [r.id for r in batch])
        rows: list[dict[str, object]] = []
        for issuer_id, pem, revoked_at, reason in batch:
            key = _key_sha256(pem)
            if key is not None:
                rows.append(
                    {
                        "key_sha256": key,
                        "blocked_at": revoked_at or _NOW,
                        "reason": reason,
                        "certificate_id": None,
                        "issuer_id": issuer_id,
                        "blocked_by": actors.get(issuer_id, ""),
                    }
                )
        _insert_new(connection, rows)


def downgrade() -> None:
    op.drop_table("blocked_keys")  # its triggers with it, on both backends
