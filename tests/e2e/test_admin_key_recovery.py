"""certctl admin-key: the way back in when admin-api-key is lost, against a running server."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from tests._tools import ok, run
from tests.e2e.conftest import StartServer, secret_of

pytestmark = pytest.mark.e2e


def test_a_lost_admin_key_is_minted_again_from_the_data_dir(start_server: StartServer) -> None:
    server = start_server()
    key_file = server.data_dir / "admin-api-key"
    old_key = server.admin_key
    key_file.unlink()  # the locked-out administrator

    proc = ok(run("certctl", "admin-key", "--data-dir", server.data_dir))
    new_key = key_file.read_text().strip()
    assert new_key != old_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_id = new_key.split("_")[1]
    assert proc.stdout == f"API key {key_id} for actor admin written to {key_file} (0600)\n"
    assert secret_of(new_key) not in proc.stdout + proc.stderr
    with server.client(new_key) as client:  # at once: no restart
        whoami = client.get("/api/v1/auth/whoami").json()
        assert whoami["actor_id"] == "admin"
        assert "auth.apikey.revoke" in whoami["permissions"]
        audit = client.get("/api/v1/audit").json()["items"]
        assert any(
            e["action"] == "apikey.create" and e["actor"] == "system" and key_id in e["target"]
            for e in audit
        ), audit
    with server.client(old_key) as client:  # not revoked by this: the admin decides
        assert client.get("/api/v1/auth/whoami").status_code == 200

    # An existing file is never replaced without --force.
    again = run("certctl", "admin-key", "--data-dir", server.data_dir)
    assert again.returncode == 1
    assert again.stderr == f"certctl: error: {key_file} exists (--force replaces it)\n"
    assert key_file.read_text().strip() == new_key

    # It takes what the server takes: a wrong key-encryption key mints nothing.
    out = server.data_dir.parent / "other.key"
    wrong = base64.b64encode(os.urandom(32)).decode()
    env = {**os.environ, "CERTCTL_MASTER_KEY": wrong}
    refused = run("certctl", "admin-key", "--data-dir", server.data_dir, "--out", out, env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        "certctl: error: the key-encryption key from CERTCTL_MASTER_KEY does not decrypt"
    )
    assert wrong not in refused.stderr
    assert not out.exists()
    # Nor does a data dir without a database (none is created there).
    empty = server.data_dir.parent / "empty"
    empty.mkdir()
    missing = run("certctl", "admin-key", "--data-dir", empty)
    assert missing.stderr == f"certctl: error: {empty / 'certctl.db'}: no such database\n"
    assert list(empty.iterdir()) == []


def test_a_start_without_admin_api_key_says_how_to_mint_one(start_server: StartServer) -> None:
    # It said "Admin API key: see <file>" for a file that was not there.
    first = start_server()
    first.stop()
    key_file = first.data_dir / "admin-api-key"
    key_file.unlink()
    second = start_server(data_dir=first.data_dir)
    out, _ = second.logs()
    assert (
        f"Admin API key: {key_file} is missing; `certctl admin-key --data-dir "
        f"{first.data_dir}` mints a new one\n"
    ) in out
    ok(run("certctl", "admin-key", "--data-dir", first.data_dir))
    with second.client(key_file.read_text().strip()) as client:
        assert client.get("/api/v1/auth/whoami").json()["actor_id"] == "admin"


def test_an_unwritable_out_mints_no_key(start_server: StartServer) -> None:
    # The key was minted first, then the write failed ("/tmp/.x.abc.tmp: Is a directory"):
    # a live admin credential whose secret nobody ever saw, one per attempt.
    server = start_server()
    blocker = server.data_dir.parent / "a-file"
    blocker.write_text("")
    cases = {
        server.data_dir.parent: f"{server.data_dir.parent} is a directory",
        blocker / "key": f"cannot write {blocker / 'key'}: {blocker} is not a directory",
    }
    for out, message in cases.items():
        argv = ("certctl", "admin-key", "--data-dir", server.data_dir, "--out", out, "--force")
        refused = run(*argv)
        assert refused.returncode == 1
        assert refused.stderr == f"certctl: error: {message}\n"
    with server.client(server.admin_key) as client:
        keys = client.get("/api/v1/auth/apikeys").json()["items"]
    assert [k["name"] for k in keys] == ["bootstrap"]


def test_an_emptied_database_is_named_not_an_internal_error(tmp_path: Path) -> None:
    # A certctl.db truncated or replaced by an empty one (the README's lost-database case)
    # said "internal error (OperationalError: (sqlite3.OperationalError) no such table:
    # issuers [SQL: SELECT …])".
    data = tmp_path / "data"
    data.mkdir()
    (data / "certctl.db").write_bytes(b"")
    refused = run("certctl", "admin-key", "--data-dir", data)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"certctl: error: the database ({data / 'certctl.db'}) holds no certctl data\n"
    )
    assert not (data / "admin-api-key").exists()
