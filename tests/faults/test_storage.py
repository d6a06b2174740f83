"""Storage faults: a full disk, a read-only disk and a PostgreSQL that refuses writes or is gone.

* Full: the data directory is a 16 MiB tmpfs filled to ENOSPC with a ballast file (root may
  write past ``chmod``, never past a full file system).
* Read-only: the data directory is an ext4 loop image mounted ``errors=remount-ro``; writing
  ``/sys/fs/ext4/<dev>/trigger_fs_error`` makes the kernel remount it read-only under the running
  server, as it does after an I/O error (``mount -o remount,ro`` would refuse: files are open
  for writing).
* PostgreSQL: ``default_transaction_read_only`` set cluster-wide, then the cluster stopped.

In each case writes get a 503 problem naming the storage fault, reads keep working, a bad key
still gets 401, nothing is corrupted (SQLite ``integrity_check``; ext4 ``e2fsck``) and writes
succeed again once the fault is gone, without restarting certctl (read-only ext4 needs the
operator's ``e2fsck`` and remount, so a restart, as in production).
"""

from __future__ import annotations

import errno
import os
import shlex
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests._stores import PG_BIN, PostgresCluster, _as_postgres
from tests._tools import require
from tests.faults.conftest import FaultServer, run_root, sqlite_integrity

PROBLEM = "application/problem+json"
FIGURES: dict[str, Any] = {}


def _unmount(mountpoint: Path, server: FaultServer) -> None:
    """Stop ``server`` (it holds files open), then unmount; lazily if still busy."""
    server.stop()
    done = subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


@contextmanager
def tmpfs(mountpoint: Path, size: str, server: FaultServer) -> Iterator[Path]:
    """A tmpfs of ``size`` on ``mountpoint``; ``server`` is stopped before it is unmounted."""
    mountpoint.mkdir(mode=0o700)
    run_root("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint))
    try:
        yield mountpoint
    finally:
        _unmount(mountpoint, server)


@contextmanager
def ext4(image: Path, mountpoint: Path, server: FaultServer, *options: str) -> Iterator[Path]:
    """Mount ``image`` (an ext4 file) on ``mountpoint`` through a loop device."""
    mountpoint.mkdir(mode=0o700, exist_ok=True)
    opts = ",".join(("loop", *options))
    run_root("mount", "-t", "ext4", "-o", opts, str(image), str(mountpoint))
    try:
        yield mountpoint
    finally:
        _unmount(mountpoint, server)  # -o loop sets autoclear: the loop device goes too


def fill(directory: Path) -> Path:
    """Write a ballast file until the file system is full (ENOSPC)."""
    ballast = directory / "ballast"
    chunk = b"\0" * 65536
    with ballast.open("wb", buffering=0) as out:
        for _ in range(100_000):  # bounded: 6 GiB at most
            try:
                out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        else:
            raise AssertionError("the file system never filled up")
    with ballast.open("ab", buffering=0) as out:  # the last pages, byte-sized
        for _ in range(65536):
            try:
                out.write(b"\0" * 512)
            except OSError:
                break
    return ballast


def issue(client: httpx.Client, name: str) -> httpx.Response:
    return client.post(
        "/api/v1/certificates",
        json={"common_name": name, "dns_names": [name], "validity": "1D"},
    )


def assert_storage_problem(response: httpx.Response, *words: str) -> str:
    """A 503 problem whose detail names the storage and one of ``words``, with Retry-After."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM
    # It had none: each client retried at its own pace, a fleet of them all at once.
    assert response.headers.get("retry-after") == "5", response.headers
    body = response.json()
    assert body["type"] == "urn:certctl:problem:unavailable"
    assert body["title"] == "Service unavailable"  # the detail names the storage
    detail: str = body["detail"]
    assert detail.startswith("storage "), detail
    assert any(w in detail for w in words), detail
    for leak in ("INSERT", "UPDATE", "sqlite3", "psycopg", "Traceback"):
        assert leak not in detail, detail
    return detail


def mint_viewer_key(server: FaultServer, client: httpx.Client) -> str:
    """An unused viewer key: its first use writes ``last_used_at`` (which may now fail)."""
    r = client.post(
        "/api/v1/auth/actors", json={"id": "viewer", "name": "viewer", "roles": ["r-viewer"]}
    )
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/auth/apikeys", json={"actor_id": "viewer", "name": "v"})
    assert r.status_code == 201, r.text
    value: str = r.json()["key_value"]
    return value


def assert_reads_work(server: FaultServer, cert_id: str, viewer_key: str) -> None:
    with server.client() as admin, server.client(viewer_key) as viewer:
        assert admin.get(f"/api/v1/certificates/{cert_id}").status_code == 200
        assert admin.get("/api/v1/certificates").status_code == 200
        assert admin.get("/api/v1/audit").status_code == 200
        assert admin.get("/api/v1/issuers/default/ca.pem").status_code == 200
        assert admin.get("/healthz").text == "ok"
        # First use of this key: last_used_at cannot be saved, the read still succeeds.
        r = viewer.get(f"/api/v1/certificates/{cert_id}")
        assert r.status_code == 200, r.text
    with server.client("cctl_0000000000000000_" + "x" * 43) as bad:
        r = bad.get("/api/v1/auth/whoami")  # the failure cannot be audited: still a 401
        assert r.status_code == 401, r.text


def test_full_disk_sqlite(fault_server: FaultServer, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "16m", fault_server) as mnt:
        fault_server.data_dir = mnt / "data"
        fault_server.start()
        with fault_server.client() as client:
            first = issue(client, "before.full.example.com")
            assert first.status_code == 201, first.text
            viewer_key = mint_viewer_key(fault_server, client)
            ballast = fill(mnt)
            # A commit may still fit in WAL pages allocated earlier: write until refused.
            fitted = 0
            for n in range(200):
                r = issue(client, f"f{n}.full.example.com")
                if r.status_code != 201:
                    break
                fitted += 1
            detail = assert_storage_problem(r, "full")
            for n in range(5):  # it stays refused, for every kind of write
                assert_storage_problem(issue(client, f"again{n}.full.example.com"), "full")
            assert_storage_problem(
                client.post("/api/v1/auth/apikeys", json={"actor_id": "viewer", "name": "w"}),
                "full",
            )
            assert_reads_work(fault_server, first.json()["id"], viewer_key)
            ballast.unlink()
            freed = time.monotonic()
            attempts = 0
            while True:  # bounded: 100 attempts, 10 s
                attempts += 1
                r = issue(client, f"after{attempts}.full.example.com")
                if r.status_code == 201 or attempts == 100:
                    break
                time.sleep(0.1)
            recovered_s = time.monotonic() - freed
            assert r.status_code == 201, r.text
            after_id = r.json()["id"]
            listed = client.get("/api/v1/certificates", params={"limit": 500}).json()["items"]
        fault_server.stop()
        assert sqlite_integrity(fault_server.data_dir / "certctl.db") == ["ok"]
        # Stored: the first, those that fitted, the one after recovery; no refused one.
        ids = {item["id"] for item in listed}
        assert {first.json()["id"], after_id} <= ids
        assert len(ids) == 2 + fitted
        assert not [i for i in listed if i["common_name"].startswith("again")]
    assert "storage fault on POST /api/v1/certificates: storage is full" in fault_server.log()
    FIGURES["full"] = {
        "writes_that_fitted_after_fill": fitted,
        "detail": detail,
        "writes_after_space_returned_until_201": attempts,
        "recovery_s": round(recovered_s, 3),
    }
    print(f"full disk: {FIGURES['full']}")


def _loop_device(mountpoint: Path) -> str:
    source = subprocess.run(
        ["findmnt", "-no", "SOURCE", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()
    return os.path.basename(os.path.realpath(source))


def _mount_options(mountpoint: Path) -> list[str]:
    out = subprocess.run(
        ["findmnt", "-no", "OPTIONS", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return out.strip().split(",")


def test_read_only_disk_sqlite(fault_server: FaultServer, tmp_path: Path) -> None:
    image, mountpoint = tmp_path / "ext4.img", tmp_path / "ro"
    with image.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    run_root("mkfs.ext4", "-q", "-F", str(image))
    with ext4(image, mountpoint, fault_server, "errors=remount-ro"):
        fault_server.data_dir = mountpoint / "data"
        fault_server.start()
        with fault_server.client() as client:
            first = issue(client, "before.ro.example.com")
            assert first.status_code == 201, first.text
            viewer_key = mint_viewer_key(fault_server, client)
            device = _loop_device(mountpoint)
            Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("certctl fault test\n")
            options = _mount_options(mountpoint)  # 6.x kernels add "emergency_ro", keep "rw"
            assert {"ro", "emergency_ro"} & set(options), options
            try:
                (mountpoint / "probe").write_bytes(b"x")
            except OSError as exc:
                assert exc.errno == errno.EROFS, exc  # noqa: PT017
            else:
                raise AssertionError("the file system is still writable")
            details = {
                assert_storage_problem(issue(client, f"ro{n}.example.com"), "read-only", "I/O")
                for n in range(5)
            }
            assert_storage_problem(
                client.post("/api/v1/auth/roles", json={"id": "x", "name": "x", "permissions": []}),
                "read-only",
                "I/O",
            )
            assert_reads_work(fault_server, first.json()["id"], viewer_key)
        fault_server.stop()
    # The operator's repair: e2fsck (exit 0 clean, 1 errors corrected), then mount again.
    fsck = subprocess.run(
        ["e2fsck", "-fy", str(image)], capture_output=True, text=True, timeout=60, check=False
    )
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
    with ext4(image, mountpoint, fault_server):
        assert sqlite_integrity(fault_server.data_dir / "certctl.db") == ["ok"]
        fault_server.start()
        # Everything acknowledged before the error reached the disk (synchronous=FULL): the
        # same CA, admin key, viewer key and certificate.
        assert fault_server.log().count("created the internal CA") == 1
        with fault_server.client() as client, fault_server.client(viewer_key) as viewer:
            assert viewer.get(f"/api/v1/certificates/{first.json()['id']}").status_code == 200
            assert issue(client, "after.ro.example.com").status_code == 201
            names = [i["common_name"] for i in client.get("/api/v1/certificates").json()["items"]]
        assert sorted(names) == ["after.ro.example.com", "before.ro.example.com"]
        # A crash leaves certctl.db-wal and -shm (a clean stop, which exits 0, removes them
        # as SQLite's last connection closes: see the start that fails below).
        fault_server.kill()
    # Started on a read-only mount after a crash: the WAL files left let SQLite read, so the
    # server starts, serves reads and refuses writes.
    with ext4(image, mountpoint, fault_server, "ro"):
        fault_server.start()
        with fault_server.client() as client:
            assert_storage_problem(issue(client, "ro-start.example.com"), "read-only", "I/O")
            assert client.get(f"/api/v1/certificates/{first.json()['id']}").status_code == 200
        fault_server.stop()
    # Without the WAL files (after a clean stop, or a restored backup) SQLite cannot open a
    # WAL database read-only: one clear line and exit 1, never a traceback.
    with ext4(image, mountpoint, fault_server):
        db = fault_server.data_dir / "certctl.db"
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        conn.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    with ext4(image, mountpoint, fault_server, "ro"):
        start = _start_fails(fault_server)
    FIGURES["read_only"] = {"details": sorted(details), "start_on_ro_mount": start}
    print(f"read-only disk: {FIGURES['read_only']}")


def _start_fails(server: FaultServer) -> str:
    proc = subprocess.run(
        [
            require("certctl"),
            "serve",
            "--data-dir",
            str(server.data_dir),
            "--listen",
            f"127.0.0.1:{server.port}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "certctl: error: cannot start: storage is unavailable: cannot open the database file"
    ], proc.stderr
    return lines[0]


# --- PostgreSQL --------------------------------------------------------------------------


def _pg(cluster: PostgresCluster, sql: str) -> None:
    with psycopg.connect(
        f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres", autocommit=True
    ) as conn:
        conn.execute(sql)


def _pg_ctl(cluster: PostgresCluster, *args: str) -> None:
    argv = [str(PG_BIN / "pg_ctl"), "-D", str(cluster.base / "data"), *args]
    proc = subprocess.run(
        _as_postgres(argv), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_read_only_and_down_postgresql(
    fault_server: FaultServer, postgres_cluster: PostgresCluster
) -> None:
    database = postgres_cluster.create_database()
    fault_server.config = {"database-url": postgres_cluster.url(database)}
    fault_server.start()
    with fault_server.client() as client:
        first = issue(client, "before.pg.example.com")
        assert first.status_code == 201, first.text
        viewer_key = mint_viewer_key(fault_server, client)
        try:
            _pg(postgres_cluster, "ALTER SYSTEM SET default_transaction_read_only = on")
            _pg(postgres_cluster, "SELECT pg_reload_conf()")
            time.sleep(0.5)  # backends apply the reload asynchronously (SIGHUP)
            ro_detail = assert_storage_problem(issue(client, "ro.pg.example.com"), "read-only")
            assert_reads_work(fault_server, first.json()["id"], viewer_key)
        finally:
            _pg(postgres_cluster, "ALTER SYSTEM RESET default_transaction_read_only")
            _pg(postgres_cluster, "SELECT pg_reload_conf()")
        time.sleep(0.5)
        assert issue(client, "after-ro.pg.example.com").status_code == 201

        # The database goes away: every route that needs it answers 503, /healthz still 200,
        # /readyz 503 (a load balancer stops sending clients here).
        assert client.get("/readyz").status_code == 200
        ca = {f: client.get(f"/api/v1/issuers/default/ca.{f}") for f in ("pem", "der")}
        assert all(r.status_code == 200 for r in ca.values())
        crl = client.get("/api/v1/issuers/default/crl")
        assert crl.status_code == 200, crl.text
        other = client.post(
            "/api/v1/issuers",
            json={"id": "never-fetched"},
        )
        assert other.status_code == 201, other.text
        opts = _running_options(postgres_cluster)
        _pg_ctl(postgres_cluster, "-m", "immediate", "stop")
        try:
            # The CA certificates held are still served: TLS clients follow caIssuers URIs.
            for f, before in ca.items():
                during = client.get(f"/api/v1/issuers/default/ca.{f}")
                assert (during.status_code, during.content) == (200, before.content), during.text
            # So is the CRL served last: nothing can be revoked meanwhile. It answered 503, and
            # every client checking revocation failed for as long as the database was down.
            during = client.get("/api/v1/issuers/default/crl")
            assert (during.status_code, during.content) == (200, crl.content), during.text
            assert during.headers["etag"] == crl.headers["etag"]
            assert_storage_problem(client.get("/api/v1/issuers/never-fetched/crl"), "reached")
            down_detail = assert_storage_problem(issue(client, "down.pg.example.com"), "reached")
            assert_storage_problem(client.get("/api/v1/certificates"), "reached")
            assert client.get("/healthz").status_code == 200
            time.sleep(1.1)  # past the cached /readyz answer (READY_CHECK_TTL_S)
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503, not_ready.text
            assert "reached" not in not_ready.text  # no operational detail (DESIGN §4)
        finally:
            _pg_ctl(
                postgres_cluster,
                "-w",
                "-t",
                "30",
                "-l",
                str(postgres_cluster.base / "log"),
                "-o",
                opts,
                "start",
            )
        back = time.monotonic()
        attempts = 0
        while True:  # bounded: 100 attempts
            attempts += 1
            r = issue(client, f"after-down{attempts}.pg.example.com")
            if r.status_code == 201 or attempts == 100:
                break
            time.sleep(0.1)
        recovered_s = time.monotonic() - back
        assert r.status_code == 201, r.text
        time.sleep(1.1)  # past the cached /readyz answer (READY_CHECK_TTL_S)
        assert client.get("/readyz").status_code == 200
        assert client.get("/api/v1/issuers/default/crl").status_code == 200
        # A revocation, then the database goes away before any CRL fetch: the CRL served
        # last leaves it off, and was served without it for its 7 days. A 503 instead.
        revoked = client.post(f"/api/v1/certificates/{first.json()['id']}/revoke", json={})
        assert revoked.status_code == 200, revoked.text
        # Fast, not immediate: this cluster runs with synchronous_commit off (tests/_stores.py),
        # and a crash would lose the revocation's commit.
        _pg_ctl(postgres_cluster, "-m", "fast", "stop")
        try:
            assert_storage_problem(client.get("/api/v1/issuers/default/crl"), "reached")
        finally:
            _pg_ctl(
                postgres_cluster,
                "-w",
                "-t",
                "30",
                "-l",
                str(postgres_cluster.base / "log"),
                "-o",
                opts,
                "start",
            )
        for _ in range(100):  # bounded: the pool reconnects at once, PostgreSQL may take a moment
            listed = client.get("/api/v1/issuers/default/crl")
            if listed.status_code == 200:
                break
            time.sleep(0.1)
        assert listed.status_code == 200, listed.text
        der = fault_server.data_dir.parent / "after-revocation.crl"
        der.write_bytes(listed.content)
        text = subprocess.run(
            [require("openssl"), "crl", "-inform", "DER", "-noout", "-text", "-in", str(der)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        listed_serials = {
            int(line.split(":", 1)[1].strip(), 16)
            for line in text.splitlines()
            if line.strip().startswith("Serial Number:")
        }
        assert listed_serials == {int(first.json()["serial"], 16)}, text
    log = fault_server.log()
    assert log.count("issuer default: serving the CRL numbered") == 1, log  # once an outage
    assert "issuer default: CRLs come from the store again" in log
    assert fault_server.proc is not None
    assert fault_server.proc.poll() is None  # the same process throughout
    assert fault_server.stop() == 0  # a graceful stop by SIGTERM exits 0
    FIGURES["postgresql"] = {
        "read_only_detail": ro_detail,
        "down_detail": down_detail,
        "writes_after_restart_until_201": attempts,
        "recovery_s": round(recovered_s, 3),
    }
    print(f"PostgreSQL faults: {FIGURES['postgresql']}")


def _running_options(cluster: PostgresCluster) -> str:
    """The ``-o`` options the cluster was started with (postmaster.opts), for a restart."""
    opts = (cluster.base / "data" / "postmaster.opts").read_text()
    # postmaster.opts: /path/postgres "-D" "/data" "-c" "listen_addresses=…" …
    words = shlex.split(opts)
    return " ".join(shlex.quote(w) for w in words[3:])
