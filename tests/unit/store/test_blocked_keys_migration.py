"""Migration 0033 adds blocked_keys, filled from what was revoked for a compromise (SQLite;
PostgreSQL in faults)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine, inspect, text

from certctl.pki import KeyType, common_name_dn, create_root_ca, generate_private_key
from certctl.store import db
from tests.unit.store.test_acme_migration import _before
from tests.unit.store.test_migration_head import downgrade_store

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _pem_and_hash(cn: str) -> tuple[str, str]:
    key = generate_private_key(KeyType.EC_P256)
    cert = create_root_ca(key, common_name_dn(cn), validity=timedelta(days=30), now=NOW).certificate
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return cert.public_bytes(Encoding.PEM).decode(), hashlib.sha256(spki).hexdigest()


def _blocked(engine: Engine) -> dict[str, tuple[str, str | None, str | None, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT key_sha256, reason, certificate_id, issuer_id, blocked_by FROM blocked_keys"
            )
        )
        return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}


def check_0033(engine: Engine) -> None:
    """0033 on ``engine`` (at head): the table, filled in batches, dropped by its downgrade."""
    db.migrate(engine)
    assert "blocked_keys" in inspect(engine).get_table_names()
    downgrade_store(engine, _before("0033"))
    assert "blocked_keys" not in inspect(engine).get_table_names()

    shared_pem, shared = _pem_and_hash("shared")  # one key, many certificates
    lone_pem, lone = _pem_and_hash("lone")
    other_pem, other = _pem_and_hash("other reason")
    ca_pem, ca = _pem_and_hash("compromised CA")
    kept_pem, kept = _pem_and_hash("superseded CA")
    with engine.begin() as connection:
        for issuer_id, pem, reason in (
            ("default", kept_pem, None),
            ("bad-ca", ca_pem, "cACompromise"),
            ("old-ca", kept_pem, "superseded"),
        ):
            connection.execute(
                text(
                    "INSERT INTO issuers (id, name, subject, certificate_pem, chain_pem,"
                    " wrapped_key, key_type, not_after, created_at, revoked_at,"
                    " revocation_reason) VALUES (:id, :id, 'CN=x', :pem, '', :key, 'ec-p256',"
                    " '2027-01-01 00:00:00', '2026-01-01 00:00:00', :at, :reason)"
                ),
                {
                    "id": issuer_id,
                    "pem": pem,
                    "key": b"k",
                    "at": "2026-02-01 00:00:00" if reason else None,
                    "reason": reason,
                },
            )
        # More than a batch (500) of the shared key's revoked certificates; the first one
        # (in id order) is the row kept. Then one more key, a PEM that no longer reads, one
        # revoked for another reason and one not revoked.
        rows = [(f"s{n:05d}", shared_pem, "revoked", "keyCompromise") for n in range(1203)]
        rows += [
            ("t-lone", lone_pem, "revoked", "keyCompromise"),
            ("t-unreadable", "-----BEGIN CERTIFICATE-----\nAAAA", "revoked", "keyCompromise"),
            ("t-other", other_pem, "revoked", "superseded"),
            ("t-active", other_pem, "active", None),
        ]
        connection.execute(
            text(
                "INSERT INTO certificates (id, issuer_id, serial, common_name, subject, sans,"
                " profile, status, not_before, not_after, certificate_pem, created_at,"
                " created_by, revoked_at, revocation_reason) VALUES (:id, 'default', :id, 'x',"
                " 'CN=x', '{}', 'server', :status, '2026-01-01 00:00:00',"
                " '2027-01-01 00:00:00', :pem, '2026-01-01 00:00:00', 'admin', :at, :reason)"
            ),
            [
                {
                    "id": cert_id,
                    "pem": pem,
                    "status": status,
                    "at": "2026-02-02 00:00:00" if status == "revoked" else None,
                    "reason": reason,
                }
                for cert_id, pem, status, reason in rows
            ],
        )
        # Who revoked: from the audit log (a refused attempt by someone else is not it).
        for target, actor, action, outcome, detail in (
            ("s00000", "ops", "certificate.revoke", "success", "keyCompromise"),
            ("t-lone", "mallory", "certificate.revoke", "denied", "missing permission"),
            ("bad-ca", "pki-admin", "issuer.revoke", "success", "cACompromise"),
        ):
            connection.execute(
                text(
                    "INSERT INTO audit_events (at, actor, action, target, outcome, source,"
                    " detail) VALUES ('2026-02-02 00:00:00', :actor, :action, :target,"
                    " :outcome, '', :detail)"
                ),
                {
                    "actor": actor,
                    "action": action,
                    "target": target,
                    "outcome": outcome,
                    "detail": detail,
                },
            )
    db.migrate(engine)
    assert _blocked(engine) == {
        shared: ("keyCompromise", "s00000", None, "ops"),
        lone: ("keyCompromise", "t-lone", None, ""),
        ca: ("cACompromise", None, "bad-ca", "pki-admin"),
    }
    # Not the key revoked for another reason, nor the superseded CA's.
    assert not {other, kept} & set(_blocked(engine))
    downgrade_store(engine, _before("0033"))
    assert "blocked_keys" not in inspect(engine).get_table_names()
    db.migrate(engine)
    assert len(_blocked(engine)) == 3


def test_0033_adds_the_blocked_keys_from_compromised_revocations_and_takes_them_back(
    tmp_path: Path,
) -> None:
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'certctl.db'}")  # foreign keys on
    try:
        check_0033(engine)
    finally:
        engine.dispose()
