"""What ``certctl serve`` accepts as its store, and two first starts on one data dir."""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from certctl.store import db
from tests._tools import failed, free_port, require, run
from tests.e2e.conftest import CertctlServer, _spawn, _wait_ready

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused_in_one_line(tmp_path: Path, url: str) -> None:
    data = tmp_path / "data"
    port = free_port()
    result = failed(
        run(
            "certctl",
            "serve",
            "--data-dir",
            data,
            "--listen",
            f"127.0.0.1:{port}",
            "--database-url",
            url,
            env={"PATH": "/usr/bin:/bin"},
        )
    )
    assert result.stderr.splitlines() == [
        "certctl: error: database-url: an in-memory SQLite database is lost when the server "
        "stops; give a file (sqlite:////var/lib/certctl/certctl.db) or leave database-url "
        "unset for <data-dir>/certctl.db"
    ], result.stderr
    # Refused before anything was written: no data dir with a key file but no database.
    assert not data.exists()


def _issue(server: CertctlServer, key: str, name: str) -> x509.Certificate:
    with server.client(key) as client:
        response = client.post(
            "/api/v1/certificates",
            json={"issuer": "default", "common_name": name, "dns_names": [name]},
        )
    assert response.status_code == 201, response.text
    return x509.load_pem_x509_certificate(response.json()["certificate_pem"].encode())


def test_two_first_starts_at_once_share_one_kek_and_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    # Spawned together, before either is waited for: both find the data dir empty.
    servers = [_spawn(tmp_path / name, data, None, (), None, None) for name in ("a", "b")]
    try:
        for server in servers:
            assert _wait_ready(server)
        admin_key = (data / "admin-api-key").read_text().strip()
        # One first start: its key printed once, by one server; the other was told the file.
        printed = [s for s in servers if f"  {admin_key}\n" in s.logs()[0]]
        assert len(printed) == 1, [s.logs()[0] for s in servers]
        for server in servers:
            assert "Traceback" not in server.logs()[1], server.logs()[1]
        kek = (data / "kek").read_bytes()
        assert len(base64.b64decode(kek.strip())) == 32
        assert stat.S_IMODE((data / "kek").stat().st_mode) == 0o600
        # No temporary file of the creation left behind.
        assert sorted(p.name for p in data.iterdir() if p.name.startswith(".")) == []
        # Both use the same CA key (each signs with it: one KEK opened it for both) and
        # the same store (the one admin key works on both).
        ca = x509.load_pem_x509_certificate((data / "tls" / "ca.crt").read_bytes())
        for index, server in enumerate(servers):
            leaf = _issue(server, admin_key, f"svc-{index}.example.com")
            leaf.verify_directly_issued_by(ca)
        with servers[0].client(admin_key) as client:
            listed = client.get("/api/v1/certificates").json()["items"]
        assert {"svc-0.example.com", "svc-1.example.com"} <= {c["common_name"] for c in listed}
        with servers[1].client(admin_key) as client:
            issuers = client.get("/api/v1/issuers").json()["items"]
        assert [i["id"] for i in issuers] == ["default"]
    finally:
        for server in servers:
            server.stop()


def _serve_on_one_stream(data: Path, log: Path, cwd: Path | None = None) -> CertctlServer:
    """``certctl serve`` with stdout and stderr in one file, as a terminal shows them.

    ``data`` as given on the command line: relative to ``cwd`` if it is relative.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env["PYTHONUNBUFFERED"] = "1"
    argv = [require("certctl"), "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd
        )
    data = (cwd or Path.cwd()) / data
    server = CertctlServer(proc, port, data, data / "tls" / "ca.crt", log, log, None)
    try:
        assert _wait_ready(server)
    finally:
        server.stop()
    return server


def test_a_relative_data_dir_is_printed_absolute_so_its_commands_work_anywhere(
    tmp_path: Path,
) -> None:
    # `certctl serve --data-dir data` said "saved 0600 in data/admin-api-key" and
    # "`certctl admin-key --data-dir data` mints a new one": wrong from any other directory
    # (a second terminal, a unit file's WorkingDirectory).
    home = tmp_path / "home"
    home.mkdir()
    data = home / "my data"  # a space: the printed command must quote it
    key_file = data / "admin-api-key"
    first = _serve_on_one_stream(Path("my data"), tmp_path / "first.log", cwd=home)
    assert f"Admin API key (shown once; also saved 0600 in {key_file}):\n" in first.logs()[0]
    again = _serve_on_one_stream(Path("my data"), tmp_path / "again.log", cwd=home)
    assert f"certctl is starting. Admin API key: see {key_file}\n" in again.logs()[0]
    key_file.unlink()
    lost = _serve_on_one_stream(Path("my data"), tmp_path / "lost.log", cwd=home).logs()[0]
    said = re.search(r"Admin API key: (.+) is missing; `(certctl admin-key [^`]+)` mints", lost)
    assert said is not None, lost
    assert said.group(1) == str(key_file)
    assert said.group(2) == f"certctl admin-key --data-dir '{data}'"
    # Pasted in another directory, it mints the key into the server's data dir.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env["PATH"] = f"{Path(require('certctl')).parent}:{env['PATH']}"
    minted = run("bash", "-c", said.group(2), cwd=elsewhere, env=env)
    assert minted.returncode == 0, minted.stderr
    assert key_file.read_text().startswith("cctl_")
    assert list(elsewhere.iterdir()) == []


def test_first_start_banner_is_not_buried_under_alembic_lines(tmp_path: Path) -> None:
    """Before, ``make run`` printed ten Alembic INFO lines ("Context impl SQLiteImpl.", one
    "Running upgrade" per revision) ahead of the banner with the admin key."""
    data = tmp_path / "data"
    first = _serve_on_one_stream(data, tmp_path / "first.log")
    lines = first.logs()[0].splitlines()
    assert not [line for line in lines if "alembic" in line.lower()], lines
    start = lines.index(
        f"certctl is starting. Admin API key (shown once; also saved 0600 in "
        f"{data / 'admin-api-key'}):"
    )
    ca = data / "tls" / "ca.crt"
    assert lines[start + 1 : start + 4] == [
        f"  {(data / 'admin-api-key').read_text().strip()}",
        "",
        f"CA certificate: {ca}",
    ]
    assert lines[start + 4].startswith(f"Try: curl --cacert {ca} "), lines
    # Above it, certctl's own log lines only, one of them for the whole migration.
    above = lines[:start]
    assert above[-1] == "", above
    assert all(re.fullmatch(r"\S+ \S+ INFO certctl\.\w+: .+", line) for line in above[:-1]), above
    head = db._head_revision()
    migrated = [line for line in above if "database schema" in line]
    assert len(migrated) == 1, above
    assert re.search(
        rf" INFO certctl\.store: created the database schema: applied 0001 to {head} in [\d.]+ s$",
        migrated[0],
    ), migrated[0]

    # The installation id (annotation certctl.io/owner on its Secrets) was in the database
    # alone: docs/kubernetes.md sent users to SQL for it. Said once, at every start.
    with sqlite3.connect(data / "certctl.db") as connection:
        (uid,) = connection.execute("SELECT uid FROM installation").fetchone()
    said = f" INFO certctl.server: installation id {uid} (annotation certctl.io/owner on "
    assert [line for line in above if "installation id" in line] == [
        line for line in above if said in line
    ]
    assert len([line for line in above if said in line]) == 1, above

    # At head already: nothing migrated, nothing said about it.
    again = _serve_on_one_stream(data, tmp_path / "again.log").logs()[0]
    assert "database schema" not in again
    assert "alembic" not in again.lower()
    assert f"certctl is starting. Admin API key: see {data / 'admin-api-key'}\n" in again
    assert again.count(said) == 1, again
