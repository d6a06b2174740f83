"""Secret hygiene: after the suite, no secret the reliability tests used is anywhere it must not be.

Runs last (``conftest.pytest_collection_modifyitems``). The ledger holds every API key value
(and its secret part), every credential presented, every private key (PEM body lines, DER,
EC scalar) and every PKCS#12/PEM password the tests used or were handed. They are searched in:
the server logs (stdout/stderr of each ``certctl serve``; the admin key banner of a first start
is allowed once), the in-process apps' log, every error body received, the audit records and
the raw SQLite files (main, -wal, -shm). No private key PEM block may appear there either.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.reliability.conftest import Ledger

PRIVATE_KEY_MARKER = b"PRIVATE KEY-----"  # BEGIN/END of PKCS#8, EC, RSA, ENCRYPTED keys


def _audit_text(db: Path) -> tuple[int, bytes]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT actor, action, target, outcome, source, detail FROM audit_events"
        ).fetchall()
    return len(rows), "\n".join(" ".join(map(str, row)) for row in rows).encode()


def test_no_secret_in_logs_error_bodies_audit_or_databases(ledger: Ledger) -> None:
    assert ledger.secrets, "no secret registered: run the whole tests/reliability directory"
    findings: list[str] = []

    def scan(where: str, blob: bytes) -> None:
        for secret, label in ledger.secrets.items():
            if secret in blob:
                findings.append(f"{where}: {label} ({secret[:6]!r}…)")
        if PRIVATE_KEY_MARKER in blob:
            findings.append(f"{where}: a private key PEM block")

    scanned = {"log files": 0, "error bodies": 0, "audit records": 0, "database files": 0}
    for path in ledger.log_files:
        blob = path.read_bytes()
        banner = ledger.log_banners.get(path)
        if banner is not None:
            assert blob.count(banner.encode()) == 1, f"{path}: admin key banner not exactly once"
            blob = blob.replace(banner.encode(), b"", 1)
        scan(str(path), blob)
        scanned["log files"] += 1
    for i, body in enumerate(ledger.error_bodies):
        scan(f"error body #{i}", body)
    scanned["error bodies"] = len(ledger.error_bodies)
    for db in ledger.sqlite_files:
        count, audit = _audit_text(db)
        scan(f"{db} audit records", audit)
        scanned["audit records"] += count
        everything = b""
        for path in sorted(db.parent.glob(db.name + "*")):
            blob = path.read_bytes()
            scan(str(path), blob)
            everything += blob
            scanned["database files"] += 1
        # Negative twin: the scan reads real content (certificates are stored in the clear).
        assert b"BEGIN CERTIFICATE" in everything, f"{db}: no certificate found by the scan"
    print(f"\nsecret hygiene: {len(ledger.secrets)} secret values; scanned {scanned}")
    assert not findings, "secrets found:\n" + "\n".join(findings[:50])
    assert scanned["audit records"] > 0
    assert scanned["error bodies"] > 0
