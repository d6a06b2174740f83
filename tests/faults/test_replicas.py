"""Replicas on one PostgreSQL database: started together, and the database failing under them.

* Two replicas started at the same moment on an empty database both come up; the migrations
  run once and one bootstrap creates one ``default`` CA and one admin key. "The same moment"
  is made exact by a TCP gate in front of PostgreSQL that holds the replicas' first
  connections until both have arrived.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests._tools import free_port
from tests.api.conftest import PostgresCluster
from tests.faults.conftest import FaultServer


class Gate:
    """A TCP relay to 127.0.0.1:``target`` that lets nothing through before ``hold`` clients."""

    def __init__(self, target: int, hold: int, timeout_s: float = 10.0) -> None:
        self.target, self.hold, self.timeout_s = target, hold, timeout_s
        self.arrived = 0
        self.opened = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

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
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        self.opened.wait(self.timeout_s)
        with client, socket.create_connection(("127.0.0.1", self.target)) as server:
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
        sink.shutdown(socket.SHUT_WR)


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
        _start_together(replicas, f"postgresql+psycopg://postgres@127.0.0.1:{gate.port}/{database}")
        assert gate.opened.is_set(), "the replicas did not reach the database together"
        counts = [_count(postgres_cluster, database, t) for t in ("issuers", "actors", "api_keys")]
        assert counts == [1, 1, 1]
        # Exactly one replica minted (and stored) the admin key; it works on both.
        holders = [s for s in replicas if (s.data_dir / "admin-api-key").is_file()]
        assert len(holders) == 1
        for server in replicas:
            with server.client(holders[0].admin_key) as client:
                assert client.get("/api/v1/auth/whoami").json()["actor_id"] == "admin"
    finally:
        gate.close()


def _start_together(replicas: list[FaultServer], url: str) -> None:
    for server in replicas:
        server.config = {"database-url": url}
    for server in replicas:
        server.launch()
    for server in replicas:
        server.wait_ready()  # fails the test with the log if the replica exited
