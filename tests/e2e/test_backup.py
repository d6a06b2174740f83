"""README "Backup and restore", verbatim: a snapshot of a busy server, restored on a fresh host."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests._tools import ok, run
from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.e2e


def all_ids(client: httpx.Client) -> set[str]:
    """Every certificate id, following ``next_cursor`` (however many were issued)."""
    ids: set[str] = set()
    params: dict[str, str | int] = {"limit": 500}
    while True:
        page = client.get("/api/v1/certificates", params=params).json()
        ids |= {c["id"] for c in page["items"]}
        if page["next_cursor"] is None:
            return ids
        params["cursor"] = page["next_cursor"]


def test_vacuum_into_backup_of_a_busy_server_restores_on_a_fresh_host(
    start_server: StartServer, tmp_path: Path
) -> None:
    first = start_server()
    with first.client(first.admin_key) as client:
        for n in range(20):
            response = client.post(
                "/api/v1/certificates", json={"issuer": "default", "common_name": f"b{n}.example"}
            )
            assert response.status_code == 201, response.text
        revoked = client.get("/api/v1/certificates", params={"limit": 1}).json()["items"][0]
        assert (
            client.post(f"/api/v1/certificates/{revoked['id']}/revoke", json={}).status_code == 200
        )
    # Issuance goes on while the backup is taken: the snapshot holds everything committed
    # before it began, and is consistent whatever it caught of the rest.
    stop = threading.Event()
    issued_during: list[str] = []

    def keep_issuing() -> None:
        with first.client(first.admin_key) as busy:
            while not stop.is_set():
                response = busy.post(
                    "/api/v1/certificates",
                    json={"issuer": "default", "common_name": "busy.example"},
                )
                assert response.status_code == 201, response.text
                issued_during.append(response.json()["id"])

    worker = threading.Thread(target=keep_issuing)
    worker.start()
    try:
        with first.client(first.admin_key) as client:
            before = all_ids(client)
        backup = tmp_path / "backup"
        backup.mkdir(mode=0o700)
        db = first.data_dir / "certctl.db"
        ok(run("sqlite3", db, ".timeout 10000", f"VACUUM INTO '{backup / 'certctl.db'}'"))
    finally:
        stop.set()
        worker.join(timeout=30)
    assert issued_during, "no issuance overlapped the backup"
    ok(run("cp", first.data_dir / "kek", first.data_dir / "admin-api-key", backup))
    assert ok(run("sqlite3", backup / "certctl.db", "PRAGMA integrity_check")).stdout == "ok\n"
    first.stop()

    fresh = tmp_path / "new-host" / "certctl-data"
    fresh.parent.mkdir()
    ok(run("install", "-d", "-m", "0700", fresh))
    files = [backup / name for name in ("certctl.db", "kek", "admin-api-key")]
    ok(run("install", "-m", "0600", *files, fresh))
    restored = start_server(data_dir=fresh)
    assert restored.admin_key == first.admin_key
    # The same internal CA: every certificate issued before the backup still chains to it.
    ca_before = x509.load_pem_x509_certificate((first.data_dir / "tls" / "ca.crt").read_bytes())
    ca_after = x509.load_pem_x509_certificate((fresh / "tls" / "ca.crt").read_bytes())
    assert ca_after == ca_before
    with restored.client(restored.admin_key) as client:
        after = all_ids(client)
        assert before <= after
        assert after <= before | set(issued_during)
        assert client.get(f"/api/v1/certificates/{revoked['id']}").json()["status"] == "revoked"
        crl = x509.load_der_x509_crl(client.get("/api/v1/issuers/default/crl").content)
        assert crl.get_revoked_certificate_by_serial_number(int(revoked["serial"], 16)) is not None
        response = client.post(
            "/api/v1/certificates", json={"issuer": "default", "common_name": "after.example"}
        )
        assert response.status_code == 201, response.text
        assert (
            client.post(f"/api/v1/certificates/{response.json()['id']}/renew", json={}).status_code
            == 201
        )


def test_after_a_clean_stop_certctl_db_alone_holds_every_commit(
    start_server: StartServer, tmp_path: Path
) -> None:
    # The process died of the SIGTERM uvicorn re-raises, its connections open: every commit
    # since the last automatic checkpoint (here all of them) was only in certctl.db-wal, so
    # `cp certctl.db` after `systemctl stop` copied an empty database.
    server = start_server()
    with server.client(server.admin_key) as client:
        for n in range(30):
            response = client.post(
                "/api/v1/certificates", json={"issuer": "default", "common_name": f"s{n}.example"}
            )
            assert response.status_code == 201, response.text
    server.stop()
    cold = tmp_path / "cold"
    cold.mkdir()
    ok(run("cp", server.data_dir / "certctl.db", cold))
    count = ok(run("sqlite3", cold / "certctl.db", "SELECT count(*) FROM certificates"))
    assert count.stdout == "30\n"
