"""Replicas on one PostgreSQL database: started together, and the database failing under them.

* Two replicas started at the same moment on an empty database both come up; the migrations
  run once and one bootstrap creates one ``default`` CA and one admin key. "The same moment"
  is made exact by a TCP gate in front of PostgreSQL that holds the replicas' first
  connections until both have arrived.
* A replica told to stop (SIGTERM: a rolling update) gives up the leadership at once, while
  it still drains its open requests, not when its process ends, nor after a webhook
  receiver that never answers.
* A replica cut off from its database (open connections end, new ones are never answered:
  a firewall or a dead host) answers 503 problem+json within seconds, not after the
  kernel's ~15-minute retransmission timeout; ``/readyz`` says 503 meanwhile, ``/healthz``
  200; once the database is reachable again the same process serves without a restart.
  ``certctl serve`` started against such a database gives up in seconds with one line
  instead of waiting for ever.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from sqlalchemy import text

from certctl.store.db import LEADER_LOCK, PG_SERVER_TIMEOUTS, PG_TIMEOUTS, create_store_engine
from tests._tools import free_port, require
from tests.api.conftest import PostgresCluster
from tests.e2e.conftest import tls_context
from tests.faults.conftest import FaultServer
from tests.faults.test_storage import assert_storage_problem, issue


class Gate:
    """A TCP relay to 127.0.0.1:``target``: holds the first ``hold`` clients until all came.

    ``cut()`` is a network cut as the replica sees it: its open connections end, and new ones
    are accepted but never answered (packets dropped by a firewall); ``restore()`` ends it.
    """

    def __init__(self, target: int, hold: int = 1, timeout_s: float = 10.0) -> None:
        self.target, self.hold, self.timeout_s = target, hold, timeout_s
        self.arrived = 0
        self.opened = threading.Event()
        self._cut = False
        self._sockets: list[socket.socket] = []  # relayed: closed by their relay
        self._held: list[socket.socket] = []  # accepted during a cut: never answered
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        with self._lock:
            self._cut = False
            held, self._held = self._held, []
        for sock in held:  # connections accepted during the cut end now
            sock.close()

    def close(self) -> None:
        self.cut()
        self._listener.close()
        self.restore()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.arrived += 1
                if self.arrived >= self.hold:
                    self.opened.set()
                if self._cut:
                    self._held.append(client)
                    continue
                self._sockets.append(client)
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        self.opened.wait(self.timeout_s)
        with client, socket.create_connection(("127.0.0.1", self.target)) as server:
            with self._lock:
                self._sockets.append(server)
            pipes = [
                threading.Thread(target=_pipe, args=(client, server), daemon=True),
                threading.Thread(target=_pipe, args=(server, client), daemon=True),
            ]
            for pipe in pipes:
                pipe.start()
            for pipe in pipes:
                pipe.join()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[FaultServer]]:
    """Two not-yet-started replicas (own data dir and port, one master key); stopped by PID."""
    master_key = base64.b64encode(os.urandom(32)).decode()
    servers = [
        FaultServer(tmp_path / name, tmp_path / name / "data", free_port()) for name in ("a", "b")
    ]
    for server in servers:
        server.base.mkdir()
        server.env = {"CERTCTL_MASTER_KEY": master_key}
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def _count(cluster: PostgresCluster, database: str, table: str) -> int:
    url = f"postgresql://postgres@127.0.0.1:{cluster.port}/{database}"
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # table: ours
    assert row is not None
    return int(row[0])


def test_two_replicas_started_together_on_an_empty_database(
    replicas: list[FaultServer], postgres_cluster: PostgresCluster
) -> None:
    database = postgres_cluster.create_database()
    gate = Gate(postgres_cluster.port, hold=len(replicas))
    try:
        _start_together(replicas, gate_url(gate, database))
        assert gate.opened.is_set(), "the replicas did not reach the database together"
        counts = [_count(postgres_cluster, database, t) for t in ("issuers", "actors", "api_keys")]
        assert counts == [1, 1, 1]
        # Exactly one replica minted (and stored) the admin key; it works on both.
        holders = [s for s in replicas if (s.data_dir / "admin-api-key").is_file()]
        assert len(holders) == 1
        for server in replicas:
            with server.client(holders[0].admin_key) as client:
                assert client.get("/api/v1/auth/whoami").json()["actor_id"] == "admin"
        _one_crl_for_both(replicas, holders[0].admin_key)
    finally:
        gate.close()


def _one_crl_for_both(replicas: list[FaultServer], admin_key: str) -> None:
    """Fetched in turn from both, one CRL while nothing changes; a revocation shows in both.

    Each replica served the CRL it had signed itself: a client load-balanced over them saw
    the number go down and up (RFC 5280 5.2.3: increasing), for one unchanged list.
    """

    def fetch_in_turn() -> list[bytes]:
        fetched = []
        for server in replicas * 2:
            with server.client(admin_key) as client:
                r = client.get("/api/v1/issuers/default/crl")
            assert r.status_code == 200, r.text
            fetched.append(r.content)
        return fetched

    before = fetch_in_turn()
    assert len(set(before)) == 1
    with replicas[0].client(admin_key) as client:
        cert = client.post("/api/v1/certificates", json={"common_name": "r.example.com"}).json()
        r = client.post(f"/api/v1/certificates/{cert['id']}/revoke", json={})
    assert r.status_code == 200, r.text
    after = fetch_in_turn()[1:] + fetch_in_turn()  # from the other replica first
    assert len(set(after)) == 1
    crls = [x509.load_der_x509_crl(der) for der in (before[0], after[0])]
    assert [e.serial_number for e in crls[1]] == [int(cert["serial"], 16)]
    numbers = [c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number for c in crls]
    assert numbers[1] > numbers[0], numbers


def _start_together(replicas: list[FaultServer], url: str) -> None:
    for server in replicas:
        server.config = {"database-url": url}
    for server in replicas:
        server.launch()
    for server in replicas:
        server.wait_ready()  # fails the test with the log if the replica exited


CONNECT_TIMEOUT_S = PG_TIMEOUTS["connect_timeout"]


def test_a_replica_cut_off_from_its_database_answers_503_and_recovers(
    fault_server: FaultServer, postgres_cluster: PostgresCluster
) -> None:
    database = postgres_cluster.create_database()
    gate = Gate(postgres_cluster.port)
    try:
        fault_server.config = {"database-url": gate_url(gate, database)}
        fault_server.start()
        with fault_server.client(timeout=4 * CONNECT_TIMEOUT_S) as client:
            assert issue(client, "before.cut.example.com").status_code == 201
            gate.cut()
            started = time.monotonic()
            assert_storage_problem(issue(client, "during.cut.example.com"), "reached")
            assert time.monotonic() - started < 3 * CONNECT_TIMEOUT_S
            ready = client.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.headers["content-type"].startswith("application/problem+json")
            assert ready.json()["detail"] == "not ready"  # no operational detail
            assert client.get("/healthz").status_code == 200
            gate.restore()
            deadline = time.monotonic() + 4 * CONNECT_TIMEOUT_S
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "/readyz did not recover"
                time.sleep(0.2)
            assert issue(client, "after.cut.example.com").status_code == 201
        assert fault_server.proc is not None
        assert fault_server.proc.poll() is None  # the same process throughout
    finally:
        gate.close()


def test_start_against_a_database_that_never_answers_fails_in_seconds(
    fault_server: FaultServer, postgres_cluster: PostgresCluster
) -> None:
    gate = Gate(postgres_cluster.port)
    gate.cut()
    try:
        config = fault_server.base / "certctl.yaml"
        config.write_text(f"database-url: {gate_url(gate, 'certctl_never')}\n")
        argv = [require("certctl"), "serve", "--data-dir", str(fault_server.data_dir)]
        argv += ["--listen", f"127.0.0.1:{fault_server.port}", "--config", str(config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
        started = time.monotonic()
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=6 * CONNECT_TIMEOUT_S, env=env
        )
        assert time.monotonic() - started < 4 * CONNECT_TIMEOUT_S
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            "certctl: error: cannot start: storage is unavailable: the database cannot be "
            "reached (no answer within connect_timeout, 5 s unless database-url sets it)"
        )
        assert gate.arrived == 1  # waited for once, not once per step of the start
    finally:
        gate.close()


def gate_url(gate: Gate, database: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{gate.port}/{database}"


def test_sessions_are_given_up_by_both_ends_of_a_silent_cut(
    postgres_cluster: PostgresCluster,
) -> None:
    # A silent cut (packets dropped) cannot be made on 127.0.0.1 without a firewall: what is
    # checked is that both ends of every certctl session carry the bounds that end it.
    engine = create_store_engine(postgres_cluster.url("postgres") + "?connect_timeout=7")
    try:
        with engine.connect() as connection:
            server = {
                name: connection.execute(text(f"SHOW {name}")).scalar()
                for name in PG_SERVER_TIMEOUTS
            }
            dbapi = connection.connection.dbapi_connection
            assert dbapi is not None
            client = dbapi.info.get_parameters()
    finally:
        engine.dispose()
    assert server == {
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "15000",
    }
    assert client["connect_timeout"] == "7"  # the URL's own value wins
    assert (client["tcp_user_timeout"], client["keepalives_idle"]) == ("15000", "10")


def _leader_lock_held(cluster: PostgresCluster, database: str) -> bool:
    url = f"postgresql://postgres@127.0.0.1:{cluster.port}/{database}"
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND ((classid::bigint << 32) | objid::bigint) = %s",
            (LEADER_LOCK,),
        ).fetchone()
    assert row is not None
    return bool(row[0])


def test_a_stopping_replica_gives_up_the_leadership_while_its_requests_drain(
    fault_server: FaultServer, postgres_cluster: PostgresCluster
) -> None:
    database = postgres_cluster.create_database()
    fault_server.config = {
        "database-url": f"postgresql+psycopg://postgres@127.0.0.1:{postgres_cluster.port}/{database}",
        "http": {"shutdown-timeout": "20s"},
    }
    fault_server.start()
    deadline = time.monotonic() + 10
    while not _leader_lock_held(postgres_cluster, database):  # its first pass takes it
        assert time.monotonic() < deadline, "the replica never took the leadership"
        time.sleep(0.05)
    # A request whose body is still coming: the stop drains it, for up to 20 s.
    raw = socket.create_connection(("127.0.0.1", fault_server.port))
    with tls_context(fault_server.ca).wrap_socket(raw, server_hostname="127.0.0.1") as slow:
        slow.sendall(
            b"POST /api/v1/certificates HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {fault_server.admin_key}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        time.sleep(0.2)  # read by the server: open when the stop comes
        os.kill(fault_server.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _leader_lock_held(postgres_cluster, database):
            # Before, the lock went only with the process, after the drain.
            assert time.monotonic() < deadline, "the stopping replica kept the leadership"
            time.sleep(0.05)
        assert fault_server.proc is not None
        assert fault_server.proc.poll() is None, "the replica was expected still draining"
    assert fault_server.proc.wait(timeout=20) == 0
    assert "stopping: gave up the leadership; another replica can take it over" in (
        fault_server.log()
    )


class _SilentReceiver:
    """A webhook receiver that accepts connections and never answers (a hung one)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.posted = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._held.append(client)
            with contextlib.suppress(OSError):
                client.settimeout(5)
                if client.recv(65536).startswith(b"POST "):
                    self.posted.set()

    def close(self) -> None:
        self._listener.close()
        for client in self._held:
            client.close()


def test_a_stopping_leader_does_not_wait_for_a_webhook_receiver_that_never_answers(
    fault_server: FaultServer, postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    database = postgres_cluster.create_database()
    receiver = _SilentReceiver()
    secret = tmp_path / "webhook.key"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    fault_server.config = {
        "database-url": f"postgresql+psycopg://postgres@127.0.0.1:{postgres_cluster.port}/{database}",
        "reconcile-interval": "1s",
        "notifications": {
            "webhook": {
                "url": f"http://127.0.0.1:{receiver.port}/hook",
                "secret-file": str(secret),
                "timeout": "60s",
            }
        },
    }
    try:
        fault_server.start()
        sans = [{"dns": "a.test"}]
        doc = {
            "apiVersion": "certctl.io/v1",
            "kind": "TLSService",
            "metadata": {"name": "web"},
            "spec": {
                "http": {"tls": {"selfSignedCertificate": {"subjectAltNames": sans}}},
                "targets": [{"directory": str(tmp_path / "web" / "tls")}],
            },
        }
        with fault_server.client() as client:
            assert client.put("/api/v1/services/web", json=doc).status_code == 201
        # Its "issued" event is on its way to a receiver that will not answer for a minute.
        assert receiver.posted.wait(15), "the webhook event was never sent"
        started = time.monotonic()
        os.kill(fault_server.pid, signal.SIGTERM)
        assert fault_server.proc is not None
        # Before, the stop waited for the event in flight, up to the webhook timeout (a
        # minute here), the leadership held meanwhile: no replica reconciled nor sent.
        assert fault_server.proc.wait(timeout=70) == 0
        assert time.monotonic() - started < 10, "the stop waited for the webhook receiver"
        assert not _leader_lock_held(postgres_cluster, database)
        # Given up by the stopping process, not left to its end: the listeners stopped
        # first (no request was open) and their end no longer cuts the scheduler's short.
        log = fault_server.log()
        assert "for the webhook receiver to answer the event in flight" in log
        assert "stopping: gave up the leadership; another replica can take it over" in log
    finally:
        receiver.close()


def test_replicas_cut_off_from_their_database_say_so_once_each_and_recover(
    replicas: list[FaultServer], postgres_cluster: PostgresCluster
) -> None:
    # The replica that did not lead logged "leadership check failed; stepping down: …" at
    # every reconcile pass of the outage (it led nothing), and both logged "metrics failed",
    # as if the metrics endpoint had failed, where the refresh of the gauges from the store had.
    database = postgres_cluster.create_database()
    gate = Gate(postgres_cluster.port, hold=len(replicas))
    try:
        for server in replicas:
            server.config = {"database-url": gate_url(gate, database), "reconcile-interval": "1s"}
        for server in replicas:
            server.launch()
        for server in replicas:
            server.wait_ready()
        leader_lines = [s.log().count("this replica is now the leader") for s in replicas]
        assert sorted(leader_lines) == [0, 1], leader_lines
        follower = replicas[leader_lines.index(0)]
        gate.cut()
        # Two checks of the follower at least (each waits connect_timeout) and a metrics pass.
        wait_for_line = time.monotonic() + 6 * CONNECT_TIMEOUT_S
        while follower.log().count("metrics refresh failed") == 0:
            assert time.monotonic() < wait_for_line, follower.log()
            time.sleep(0.2)
        time.sleep(1.5 * CONNECT_TIMEOUT_S)  # a second check of the follower, at least
        gate.restore()
        wait_for_line = time.monotonic() + 6 * CONNECT_TIMEOUT_S
        while not all("metrics refresh works again" in s.log() for s in replicas):
            assert time.monotonic() < wait_for_line, [s.log() for s in replicas]
            time.sleep(0.2)
        lines = [line.split(": ", 1)[-1] for line in follower.log().splitlines()]
        failed = [line for line in lines if line.startswith("leadership check failed")]
        assert len(failed) == 1, lines  # at the first of its checks in the cut, not each
        assert "stepping down" not in failed[0]
        assert failed[0].endswith(
            "; this replica does not lead, and tries again at every pass (said once it works)"
        )
        assert not any(line.startswith("metrics failed") for line in lines), lines
    finally:
        gate.close()
