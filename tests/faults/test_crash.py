"""Crash consistency: SIGKILL ``certctl serve`` 5 times under ~200 issuances/s, on SQLite and PG.

Every certificate answered with 201 must exist after the restarts (listed, and fetched by id
when it was answered in the second before a kill), serials stay unique per issuer, each stored
certificate has its ``certificate.issue`` audit event (same transaction), and the store passes
its integrity checks (SQLite ``integrity_check``/``foreign_key_check``; PostgreSQL ``amcheck``).

Why this holds: the 201 is written after the commit holding the certificate and its audit
event has returned (``store/groupcommit.py``: one transaction for the rows of concurrent
requests, and a request is answered only after its group's commit). SQLite in WAL mode with
``synchronous=FULL`` has fsynced the commit to the WAL by then, so even a power cut would not
lose it; a process crash only needs the ``write()``. PostgreSQL acknowledges a commit after its
WAL record is written (``synchronous_commit=on``); only certctl is killed here.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.api.conftest import PostgresCluster
from tests.faults.conftest import FaultServer, sqlite_integrity

RATE_PER_S = 200.0
THREADS = 12
KILLS = 5
UP_BEFORE_KILL_S = (1.5, 3.0)  # load time between a ready server and its SIGKILL
AT_RISK_S = 1.0  # 201s answered this long before a kill are also fetched one by one
FIGURES: dict[str, Any] = {}


def _csrs(count: int) -> list[str]:
    """``count`` P-256 CSRs; a CSR may be signed many times (a new serial each time)."""
    out = []
    for n in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"csr-{n}.crash.example.com"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


class Pacer:
    """Spaces requests from all threads ``1/rate`` apart; no burst after an outage."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            slot = max(self.next, now)
            self.next = slot + self.interval
        time.sleep(max(0.0, slot - now))


@dataclass
class Ledger:
    """What the clients saw: every 201 with its id, serial and completion time."""

    issued: list[tuple[str, str, float]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    refused: int = 0  # no connection: the server was down
    lost: int = 0  # sent, but the connection died before an answer: in flight at a kill
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client_loop(
    server: FaultServer, csrs: list[str], pacer: Pacer, ledger: Ledger, stop: threading.Event
) -> None:
    n = 0
    with server.client(timeout=10) as client:
        while not stop.is_set():
            pacer.wait()
            n += 1
            if n % 2:
                body: dict[str, Any] = {"csr": csrs[n % len(csrs)], "validity": "1D"}
            else:
                host = f"k{n}.crash.example.com"
                body = {"common_name": host, "dns_names": [host], "key_type": "ec-p256"}
            try:
                response = client.post("/api/v1/certificates", json=body)
            except httpx.ConnectError:  # not restarted yet
                with ledger.lock:
                    ledger.refused += 1
                time.sleep(0.05)
                continue
            except httpx.TransportError:  # killed mid-request
                with ledger.lock:
                    ledger.lost += 1
                continue
            with ledger.lock:
                ledger.statuses[response.status_code] += 1
                if response.status_code == 201:
                    data = response.json()
                    ledger.issued.append((data["id"], data["serial"], time.monotonic()))


def _list_all(server: FaultServer) -> dict[str, str]:
    """id → serial of every certificate, through the paged list API."""
    found: dict[str, str] = {}
    cursor = None
    with server.client() as client:
        for _page in range(1000):
            params: dict[str, Any] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            response = client.get("/api/v1/certificates", params=params)
            assert response.status_code == 200, response.text
            for item in response.json()["items"]:
                assert item["id"] not in found, item["id"]
                found[item["id"]] = item["serial"]
            cursor = response.json()["next_cursor"]
            if cursor is None:
                return found
    raise AssertionError("more than 1000 pages")


def _crash_run(server: FaultServer, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    first_start_s = server.start()
    ledger, pacer, stop = Ledger(), Pacer(RATE_PER_S), threading.Event()
    csrs = _csrs(8)
    threads = [
        threading.Thread(target=_client_loop, args=(server, csrs, pacer, ledger, stop), daemon=True)
        for _ in range(THREADS)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    kills: list[float] = []
    restarts: list[float] = []
    try:
        for _kill in range(KILLS):
            time.sleep(rng.uniform(*UP_BEFORE_KILL_S))
            server.kill()
            kills.append(time.monotonic())
            restarts.append(server.start())
        time.sleep(1.5)  # load on the last process too
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in threads)

    assert ledger.issued, ledger
    assert set(ledger.statuses) == {201}, ledger.statuses  # no 4xx/5xx around the crashes
    listed = _list_all(server)
    missing = [(i, s) for i, s, _t in ledger.issued if i not in listed]
    assert not missing, f"{len(missing)} certificates answered 201 are gone: {missing[:5]}"
    wrong = [(i, s, listed[i]) for i, s, _t in ledger.issued if listed[i] != s]
    assert not wrong, wrong[:5]
    assert len(set(listed.values())) == len(listed), "duplicate serials"
    at_risk = [(i, s) for i, s, t in ledger.issued if any(k - AT_RISK_S <= t <= k for k in kills)]
    with server.client() as client:
        for cert_id, serial in at_risk:
            response = client.get(f"/api/v1/certificates/{cert_id}")
            assert response.status_code == 200, (cert_id, response.text)
            assert response.json()["serial"] == serial
    # A graceful stop by SIGTERM exits 0: the SIGTERM uvicorn re-raises only stops listeners.
    assert server.stop() == 0
    answered = sum(ledger.statuses.values())
    return {
        "requests_sent": answered + ledger.lost,
        "answered_201": len(ledger.issued),
        "lost_in_flight": ledger.lost,
        "refused_while_down": ledger.refused,
        "stored": len(listed),
        "at_risk_fetched": len(at_risk),
        "kills": len(kills),
        "rate_201_per_s": round(len(ledger.issued) / elapsed, 1),
        "rate_201_per_s_while_up": round(len(ledger.issued) / (elapsed - sum(restarts)), 1),
        "first_start_s": round(first_start_s, 2),
        "restart_s_max": round(max(restarts), 2),
        "restart_s_mean": round(sum(restarts) / len(restarts), 2),
        "duration_s": round(elapsed, 1),
    }


# A client connecting as the server is killed: CPython 3.11's SSLSocket, made on a socket
# whose peer is already gone, raises in its "connected" check and leaves itself to the
# garbage collector unclosed (python/cpython#113280), a ResourceWarning about the load
# generator, not the server (failed the PostgreSQL run once in CI).
_CPYTHON_113280 = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <ssl\.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)


@_CPYTHON_113280
def test_sigkill_under_load_sqlite(fault_server: FaultServer) -> None:
    figures = _crash_run(fault_server, seed=5)
    db = fault_server.data_dir / "certctl.db"
    assert sqlite_integrity(db) == ["ok"]
    conn = sqlite3.connect(db)
    try:
        dupes = conn.execute(
            "SELECT issuer_id, serial FROM certificates GROUP BY 1, 2 HAVING count(*) > 1"
        ).fetchall()
        unaudited = conn.execute(
            "SELECT count(*) FROM certificates c WHERE NOT EXISTS (SELECT 1 FROM audit_events a"
            " WHERE a.action = 'certificate.issue' AND a.target LIKE c.id || ' %')"
        ).fetchone()[0]
    finally:
        conn.close()
    assert dupes == []
    assert unaudited == 0
    FIGURES["sqlite"] = figures
    print(f"crash consistency (SQLite): {figures}")


@_CPYTHON_113280
def test_sigkill_under_load_postgresql(
    fault_server: FaultServer, postgres_cluster: PostgresCluster
) -> None:
    import psycopg

    database = postgres_cluster.create_database()
    fault_server.config = {"database-url": postgres_cluster.url(database)}
    figures = _crash_run(fault_server, seed=7)
    dsn = f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/{database}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        dupes = conn.execute(
            "SELECT issuer_id, serial FROM certificates GROUP BY 1, 2 HAVING count(*) > 1"
        ).fetchall()
        unaudited = conn.execute(
            "SELECT count(*) FROM certificates c WHERE NOT EXISTS (SELECT 1 FROM audit_events a"
            " WHERE a.action = 'certificate.issue' AND a.target LIKE c.id || ' %')"
        ).fetchone()
        # amcheck: every B-tree index of the schema is structurally sound and matches its heap.
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        checked = conn.execute(
            "SELECT count(bt_index_check(c.oid, true)) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE am.amname = 'btree' AND n.nspname = 'public'"
        ).fetchone()
    assert dupes == []
    assert unaudited is not None
    assert unaudited[0] == 0
    assert checked is not None
    assert checked[0] >= 3
    figures["btree_indexes_checked"] = checked[0]
    FIGURES["postgresql"] = figures
    print(f"crash consistency (PostgreSQL): {figures}")
