"""Several ``certctl serve`` replicas on one PostgreSQL: exactly one renews each service once.

Replicas share the database and ``CERTCTL_MASTER_KEY`` (so each can unwrap the keys the other
stored); the holder of the PostgreSQL advisory lock is the only one that reconciles. 100
services with directory targets are created, then renewal waves are forced
(``POST /api/v1/services/{name}/renew``). Every wave must produce exactly one ``renewed``
outbox event per service (no duplicate issuance), also when

* the leader is SIGKILLed half-way through a wave: the other replica takes over and finishes
  within 30 s;
* the leader's lock session is terminated by the database half-way through a wave while the
  leader process keeps running (a network cut or ``pg_terminate_backend``): for a moment two
  replicas believe they lead, and the renewals must still happen once each.

After each wave every target directory serves the certificate the database records.
"""

from __future__ import annotations

import base64
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from certctl.pki import format_serial
from tests.soak.conftest import PostgresCluster, Replica, report, start_replica, wait_for

pytestmark = pytest.mark.e2e

SERVICES = 100
TAKEOVER_LIMIT_S = 30.0
KILL_AT = int(
    os.environ.get("CERTCTL_SOAK_CUT_AT", "50")
)  # renewals of the wave done when the leader is cut off (of SERVICES)
NAMES = [f"svc-{i:03d}" for i in range(SERVICES)]


def _doc(name: str, target: Path) -> dict[str, Any]:
    # The reload hook takes a moment, as real ones do, then "loads" the delivered
    # certificate: loaded/<name>.crt is what the reloaded server would be serving.
    reload = f"sh -c 'sleep 0.05 && cp {target}/{name}/tls.crt {target}/loaded/{name}.crt'"
    return {
        "apiVersion": "certctl.io/v1",
        "kind": "TLSService",
        "metadata": {"name": name},
        "spec": {
            "http": {"tls": {"selfSignedCertificate": {"subjectAltNames": [{"dns": f"{name}.x"}]}}},
            "targets": [{"directory": str(target / name), "reload": reload}],
        },
    }


class Db:
    """Direct reads of the shared database (psycopg, autocommit)."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def events(self, event: str) -> Counter[str]:
        rows = self.conn.execute(
            "SELECT service FROM outbox_events WHERE event = %s", (event,)
        ).fetchall()
        return Counter(r[0] for r in rows)

    def serials(self, event: str) -> dict[str, list[str]]:
        rows = self.conn.execute(
            "SELECT service, payload FROM outbox_events WHERE event = %s ORDER BY id", (event,)
        ).fetchall()
        found: dict[str, list[str]] = {}
        for service, payload in rows:
            found.setdefault(service, []).append(payload["serial"])
        return found

    def current_serials(self) -> dict[str, str]:
        rows = self.conn.execute("SELECT name, serial FROM managed_services").fetchall()
        return {name: serial for name, serial in rows}

    def lock_holder(self) -> int | None:
        row = self.conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        ).fetchone()
        return None if row is None else int(row[0])

    def stale_transactions(self) -> list[tuple[Any, ...]]:
        """Sessions idle in a transaction opened more than 5 s ago (none should exist)."""
        return self.conn.execute(
            "SELECT pid, application_name, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND state = 'idle in transaction' "
            "AND xact_start < now() - interval '5 seconds'"
        ).fetchall()

    def now(self) -> datetime:
        """The database's clock (pg_stat_activity's times are on it)."""
        row = self.conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        now: datetime = row[0]
        return now

    def tried_lock_since(self, since: datetime) -> bool:
        """Whether a session opened since ``since`` ran ``pg_try_advisory_lock`` to its end.

        Seen in pg_stat_activity: an idle session shows its last statement (until its replica
        uses that pooled connection again; a standby tries again every reconcile interval).
        """
        row = self.conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_start >= %s AND state = 'idle' "
            "AND query LIKE '%%pg_try_advisory_lock%%'",
            (since,),
        ).fetchone()
        return bool(row and row[0])

    def terminate(self, pid: int) -> bool:
        row = self.conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        return bool(row and row[0])


def _target_serials(target: Path, loaded: bool = False) -> dict[str, str]:
    found = {}
    for name in NAMES:
        path = target / "loaded" / f"{name}.crt" if loaded else target / name / "tls.crt"
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
        found[name] = format_serial(cert.serial_number)
    return found


def _renew_all(client: httpx.Client) -> None:
    """Force a renewal of every service, 8 requests at a time (the wave lands at once)."""

    def renew(name: str) -> None:
        response = client.post(f"/api/v1/services/{name}/renew")
        assert response.status_code == 202, response.text

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(renew, NAMES))


def _wave_done(db: Db, wave: int) -> bool:
    counts = db.events("renewed")
    return all(counts[n] >= wave for n in NAMES)


def _assert_once(db: Db, wave: int, where: str) -> None:
    """Exactly ``wave`` renewals per service and no serial issued twice."""
    counts = db.events("renewed")
    wrong = {n: counts[n] for n in NAMES if counts[n] != wave}
    assert not wrong, f"{where}: renewed events per service != {wave}: {wrong}"
    issued = db.events("issued")
    assert all(issued[n] == 1 for n in NAMES), f"{where}: issued events {issued}"
    serials = db.serials("renewed")
    for name, values in serials.items():
        assert len(set(values)) == len(values), f"{where}: {name} serials repeat: {values}"


def _assert_targets(db: Db, target: Path, where: str) -> None:
    """Every target holds, and its reload hook loaded, the certificate the database records."""

    def converged() -> bool | dict[str, Any]:
        want = db.current_serials()
        have, loaded = _target_serials(target), _target_serials(target, loaded=True)
        diff = {
            n: {"file": have.get(n), "loaded": loaded.get(n), "db": want[n]}
            for n in NAMES
            if not have.get(n) == loaded.get(n) == want[n]
        }
        return True if not diff else diff

    def check() -> bool:
        return converged() is True

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not check():
        time.sleep(0.2)
    result = converged()
    assert result is True, f"{where}: targets differ from the database (have, want): {result}"


def _cut_mid_wave(db: Db, wave: int, cut: Any) -> tuple[int, float]:
    """Wait until ``KILL_AT`` services of ``wave`` are renewed, then ``cut()``.

    Returns the number renewed at the cut and the monotonic time of the cut.
    """

    def progress() -> int:
        counts = db.events("renewed")
        return sum(1 for n in NAMES if counts[n] >= wave)

    done = wait_for(f"{KILL_AT} renewals of wave {wave}", lambda: progress() >= KILL_AT, 30, 0.01)
    assert done
    at_cut = progress()
    assert at_cut < SERVICES, f"wave {wave} finished before the leader could be cut off"
    cut()
    return at_cut, time.monotonic()


def test_two_replicas_renew_each_service_once(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    started = time.monotonic()
    database = postgres_cluster.create_database()
    url = postgres_cluster.url(database)
    env = {"CERTCTL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    config = {"reconcile-interval": "1s"}
    args = ("--database-url", url)
    target = tmp_path / "targets"
    (target / "loaded").mkdir(parents=True)
    db = Db(f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/{database}")
    figures: dict[str, Any] = {}
    with ExitStack() as stack:
        stack.callback(db.close)
        a: Replica = stack.enter_context(start_replica(tmp_path, "a", config, env, args))
        b: Replica = stack.enter_context(start_replica(tmp_path, "b", config, env, args))
        assert a.admin_key, "replica a bootstrapped the store and printed the admin key"
        assert not (b.data_dir / "admin-api-key").exists()
        b.admin_key = a.admin_key
        wait_for("replica a to lead", a.is_leader, timeout=10)
        assert not b.is_leader()
        client_a = stack.enter_context(a.client())
        client_b = stack.enter_context(b.client())

        # 100 services, created through both replicas.
        t0 = time.monotonic()
        for i, name in enumerate(NAMES):
            response = (client_a if i % 2 else client_b).put(
                f"/api/v1/services/{name}", json=_doc(name, target)
            )
            assert response.status_code == 201, response.text
        wait_for("100 first issues", lambda: len(db.events("issued")) == SERVICES, 60, 0.1)
        figures["create_s"] = round(time.monotonic() - t0, 2)
        _assert_once(db, 0, "after creation")
        _assert_targets(db, target, "after creation")

        # Wave 1: forced through the follower (whose scheduler must not act on it).
        t0 = time.monotonic()
        _renew_all(client_b)
        wait_for("wave 1", lambda: _wave_done(db, 1), 60, 0.05)
        figures["wave1_s"] = round(time.monotonic() - t0, 2)
        _assert_once(db, 1, "wave 1")
        _assert_targets(db, target, "wave 1")
        assert not b.is_leader()

        # The leader's lock session must not sit in an open transaction between probes.
        assert not db.stale_transactions(), db.stale_transactions()

        # Wave 2: SIGKILL the leader half-way; b takes over and finishes.
        _renew_all(client_b)
        at_kill, killed = _cut_mid_wave(db, 2, a.kill)
        wait_for("replica b to lead", b.is_leader, TAKEOVER_LIMIT_S, 0.05)
        figures["kill_takeover_s"] = round(time.monotonic() - killed, 2)
        wait_for("wave 2 after the kill", lambda: _wave_done(db, 2), TAKEOVER_LIMIT_S, 0.05)
        figures["kill_renewed_before"] = at_kill
        figures["kill_finish_s"] = round(time.monotonic() - killed, 2)
        assert figures["kill_finish_s"] <= TAKEOVER_LIMIT_S
        _assert_once(db, 2, "wave 2 (leader SIGKILLed)")
        _assert_targets(db, target, "wave 2 (leader SIGKILLed)")

        # Wave 3: a new standby c; the leader b loses its lock session mid-wave but runs on.
        # b leads, and its sessions opened since never try the lock: one that did is c's.
        before_c = db.now()
        assert not db.tried_lock_since(before_c)
        c: Replica = stack.enter_context(start_replica(tmp_path, "c", config, env, args))
        c.admin_key = a.admin_key
        client_c = stack.enter_context(c.client())
        t0 = time.monotonic()
        wait_for("c to try (and fail) to take the lock", lambda: db.tried_lock_since(before_c), 10)
        figures["standby_tried_s"] = round(time.monotonic() - t0, 2)
        assert not c.is_leader()
        holder = db.lock_holder()
        assert holder is not None
        assert "stepping down" not in b.logs()  # what the wait after the cut looks for
        _renew_all(client_c)
        at_cut, cut = _cut_mid_wave(db, 3, lambda: db.terminate(holder))
        wait_for(
            "a new leader after the lock session was cut",
            lambda: c.is_leader() or db.lock_holder() not in (None, holder),
            TAKEOVER_LIMIT_S,
            0.05,
        )
        figures["cut_takeover_s"] = round(time.monotonic() - cut, 2)
        figures["cut_new_leader"] = "c" if c.is_leader() else "b"
        wait_for("wave 3 after the cut", lambda: _wave_done(db, 3), TAKEOVER_LIMIT_S, 0.05)
        figures["cut_renewed_before"] = at_cut
        figures["cut_finish_s"] = round(time.monotonic() - cut, 2)
        # A late duplicate from the deposed leader would be its reconcile in flight at the
        # cut: b's tick checks its lock session between two services (and at each pass),
        # finds it gone and steps down, so once it logged that, that reconcile has committed.
        t0 = time.monotonic()
        wait_for(
            "b to find its lock session gone",
            lambda: "leadership check failed; stepping down" in b.logs(),
            TAKEOVER_LIMIT_S,
        )
        figures["deposed_stepped_down_s"] = round(time.monotonic() - t0, 2)
        _assert_once(db, 3, "wave 3 (lock session cut)")
        _assert_targets(db, target, "wave 3 (lock session cut)")
        assert b.proc.poll() is None, "the deposed leader keeps running"
        assert c.proc.poll() is None
        logs = {r.name: r.logs() for r in (a, b, c)}
    figures["test_s"] = round(time.monotonic() - started, 1)
    report("two-replicas", **figures)
    for name, log in logs.items():
        for bad in ("reconciling service", "scheduler tick failed"):
            assert bad not in log, f"{name}:\n{log[-4000:]}"
    # Only b lost its lock session; a was killed, c took over cleanly.
    assert "stepping down" in logs["b"]
    assert "Traceback" not in logs["a"] + logs["c"], logs["a"][-2000:] + logs["c"][-2000:]
