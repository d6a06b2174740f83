"""README "Backup and restore", verbatim: a snapshot of a busy server, restored on a fresh host."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests._tools import ok, run
from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_backup_blocks() -> tuple[str, str]:
    """The README's backup and restore shell blocks, as a user copies them."""
    text = README.read_text()
    section = text[text.index("### Backup and restore") :]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]  # up to the next heading
    backup, restore = re.findall(r"```sh\n(.*?)```", section, re.S)
    return backup, restore


def fake_date(bin_dir: Path) -> dict[str, str]:
    """An environment whose ``date`` prints $FAKE_DATE: two backups within one second."""
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "date"
    shim.write_text('#!/bin/sh\necho "$FAKE_DATE"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


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
    backup_block, restore_block = readme_backup_blocks()
    kek_line = re.search(r"Once \(.*?\): `([^`]+)`", README.read_text(), re.S)
    assert kek_line is not None
    kek_once = kek_line.group(1)
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
        # The README's block, as pasted into a shell in a directory holding certctl-data,
        # twice: a second backup (after "each batch that matters") must not fail on the
        # first one's files.
        host = tmp_path / "old-host"
        host.mkdir()
        (host / "certctl-data").symlink_to(first.data_dir)
        env = fake_date(tmp_path / "bin")
        for stamp in ("20261203T120000Z", "20261203T130000Z"):
            ok(run("bash", "-ec", backup_block, cwd=host, env={**env, "FAKE_DATE": stamp}))
    finally:
        stop.set()
        worker.join(timeout=30)
    assert issued_during, "no issuance overlapped the backup"
    ok(run("bash", "-ec", kek_once, cwd=host))
    backups = sorted((host / "backup").iterdir())
    assert [b.name for b in backups] == ["20261203T120000Z", "20261203T130000Z"]
    for backup in backups:
        assert sorted(p.name for p in backup.iterdir()) == ["admin-api-key", "certctl.db"]
        db = backup / "certctl.db"
        assert ok(run("sqlite3", db, "PRAGMA integrity_check")).stdout == "ok\n"
        assert (db.stat().st_mode & 0o777) == 0o600
    assert ((host / "kek-backup" / "kek").stat().st_mode & 0o777) == 0o600
    first.stop()

    # A fresh host given backup/ and kek-backup/; the block's last line is the server start.
    fresh = tmp_path / "new-host"
    fresh.mkdir()
    ok(run("cp", "-a", host / "backup", host / "kek-backup", fresh))
    restore_lines = restore_block.rstrip("\n").split("\n")
    assert restore_lines[-1] == "certctl serve --data-dir certctl-data"
    ok(run("bash", "-ec", "\n".join(restore_lines[:-1]), cwd=fresh))
    restored = start_server(data_dir=fresh / "certctl-data")
    assert restored.admin_key == first.admin_key
    # The same internal CA: every certificate issued before the backup still chains to it.
    ca_before = x509.load_pem_x509_certificate((first.data_dir / "tls" / "ca.crt").read_bytes())
    ca_after = x509.load_pem_x509_certificate(
        (fresh / "certctl-data" / "tls" / "ca.crt").read_bytes()
    )
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
