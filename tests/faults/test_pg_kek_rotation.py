"""certctl kek rotate on PostgreSQL: refused while a replica leads, then every key re-wrapped."""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import stat
import threading
from pathlib import Path

import pytest
from sqlalchemy import select, text

from certctl.errors import InvalidRequest
from certctl.pki.jose import b64url_encode
from certctl.server.bootstrap import bootstrap
from certctl.server.config import ServerConfig
from certctl.services.acme_eab import eab_context, mint_eab_key
from certctl.services.context import Principal
from certctl.store.db import LEADER_LOCK, create_store_engine
from certctl.store.keywrap import KeyWrapper
from certctl.store.models import AcmeEabKey, Issuer
from tests._tools import failed, ok, run
from tests.api.conftest import PostgresCluster


def _config(data: Path, url: str) -> ServerConfig:
    return ServerConfig.model_validate({"data-dir": str(data), "database-url": url})


def _rotate(data: Path, url: str, **env: str) -> object:
    return run(
        "certctl",
        "kek",
        "rotate",
        "--data-dir",
        data,
        "--database-url",
        url,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def test_rotation_waits_for_no_leader_then_rewraps_for_every_replica(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    url = postgres_cluster.url(postgres_cluster.create_database())
    data = tmp_path / "replica-1"
    first = bootstrap(_config(data, url)).services
    # An ACME EAB HMAC key is wrapped under the KEK too: rotation re-wraps it on PostgreSQL.
    ops = Principal("ops", (), frozenset({"cert.issue"}), "apikey")
    minted = mint_eab_key(first, ops, "ci", None)
    first.engine.dispose()
    other = tmp_path / "replica-2"  # another replica's data dir, with the same (old) key
    other.mkdir(mode=0o700)
    shutil.copy2(data / "kek", other / "kek")
    old = (data / "kek").read_bytes()
    # Rotated from an operator's directory holding the key (this process holds the
    # replicas' data-dir locks, as their servers would).
    operator = tmp_path / "operator"
    operator.mkdir(mode=0o700)
    shutil.copy2(data / "kek", operator / "kek")

    # A replica elsewhere, leading: invisible to the data dir's lock, seen by its lock.
    engine = create_store_engine(url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as leader:
            leader.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LEADER_LOCK})
            refused = failed(_rotate(operator, url))
            leader.invalidate()  # the replica stops: its session, and the lock, end
        assert refused.stderr.splitlines() == [
            "certctl: error: a certctl serve replica is running on this database (it holds "
            "the leader lock): stop every replica first"
        ], refused.stderr
        assert (operator / "kek").read_bytes() == old

        ok(_rotate(operator, url))
        new = base64.b64decode((operator / "kek").read_bytes().strip())
        with engine.connect() as connection:
            blob = connection.execute(select(Issuer.wrapped_key)).scalar_one()
        KeyWrapper(new).unwrap(blob, context="issuer:default")
        with engine.connect() as connection:
            eab_blob = connection.execute(select(AcmeEabKey.wrapped_key)).scalar_one()
        unwrapped = KeyWrapper(new).unwrap(eab_blob, context=eab_context(minted.row.id))
        assert b64url_encode(unwrapped) == minted.hmac_key
    finally:
        engine.dispose()

    # The replica given the new key starts; the one still holding the old key is refused.
    shutil.copy2(operator / "kek", data / "kek")
    bootstrap(_config(data, url)).services.engine.dispose()
    with pytest.raises(InvalidRequest, match="does not decrypt the keys in the database") as stale:
        bootstrap(_config(other, url))
    # On PostgreSQL the key to take is the one the other replicas run with.
    assert "the CERTCTL_MASTER_KEY of the replicas already running on it" in str(stale.value)


def _hang_up(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class _CommitCutter:
    """A TCP proxy to PostgreSQL that cuts the client off once its first COMMIT is done.

    The server commits and answers; the client never hears it (a connection lost at the
    worst moment), so it cannot tell whether its transaction committed.
    """

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.committing = threading.Event()
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.upstream))
                threading.Thread(target=self._up, args=(client, server), daemon=True).start()
                threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if not self.cut.is_set() and data.startswith(b"Q") and b"COMMIT\0" in data:
                    self.committing.set()
                server.sendall(data)
        _hang_up(client, server)

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if self.committing.is_set() and not self.cut.is_set():
                    self.cut.set()  # the answer to COMMIT: dropped, with the connection
                    break
                client.sendall(data)
        _hang_up(client, server)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("source", ["kek file", "CERTCTL_MASTER_KEY"])
def test_a_commit_cut_off_after_it_happened_keeps_the_new_key(
    tmp_path: Path, postgres_cluster: PostgresCluster, source: str
) -> None:
    """The database committed, the client lost its answer: the new key must not be lost."""
    name = postgres_cluster.create_database()
    url = postgres_cluster.url(name)
    replica = tmp_path / "replica"
    bootstrap(_config(replica, url)).services.engine.dispose()
    data = tmp_path / "operator"  # this process holds the replica's data-dir lock
    data.mkdir(mode=0o700)
    env = {}
    if source == "kek file":
        shutil.copy2(replica / "kek", data / "kek")
    else:
        env = {"CERTCTL_MASTER_KEY": (replica / "kek").read_text().strip()}
    proxy = _CommitCutter(postgres_cluster.port)
    try:
        cut_url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{name}?sslmode=disable"
        refused = failed(_rotate(data, cut_url, **env))
    finally:
        proxy.close()
    assert proxy.cut.is_set(), (refused.stdout, refused.stderr)
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "the re-encryption failed in its commit" in refused.stderr, refused.stderr
    assert "was committed" in refused.stderr, refused.stderr
    if source == "kek file":
        assert stat.S_IMODE((data / "kek.next").stat().st_mode) == 0o600
        # The next start puts kek.next in place and opens the store with it.
        bootstrap(_config(data, url)).services.engine.dispose()
        assert not (data / "kek.next").exists()
        new = base64.b64decode((data / "kek").read_bytes().strip())
    else:
        assert "nothing was changed" not in refused.stderr, refused.stderr
        assert "keep both the old CERTCTL_MASTER_KEY" in refused.stderr, refused.stderr
        assert not list(data.glob("kek*"))
        new = base64.b64decode(refused.stdout.strip())
    engine = create_store_engine(url)
    try:
        with engine.connect() as connection:
            blob = connection.execute(select(Issuer.wrapped_key)).scalar_one()
        KeyWrapper(new).unwrap(blob, context="issuer:default")
    finally:
        engine.dispose()
