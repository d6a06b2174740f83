"""certctl kek rotate on PostgreSQL: refused while a replica leads, then every key re-wrapped."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select, text

from certctl.errors import InvalidRequest
from certctl.server.bootstrap import bootstrap
from certctl.server.config import ServerConfig
from certctl.store.db import LEADER_LOCK, create_store_engine
from certctl.store.keywrap import KeyWrapper
from certctl.store.models import Issuer
from tests._tools import failed, ok, run
from tests.api.conftest import PostgresCluster


def _config(data: Path, url: str) -> ServerConfig:
    return ServerConfig.model_validate({"data-dir": str(data), "database-url": url})


def _rotate(data: Path, url: str) -> object:
    return run(
        "certctl",
        "kek",
        "rotate",
        "--data-dir",
        data,
        "--database-url",
        url,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_rotation_waits_for_no_leader_then_rewraps_for_every_replica(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    url = postgres_cluster.url(postgres_cluster.create_database())
    data = tmp_path / "replica-1"
    bootstrap(_config(data, url)).services.engine.dispose()
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
    finally:
        engine.dispose()

    # The replica given the new key starts; the one still holding the old key is refused.
    shutil.copy2(operator / "kek", data / "kek")
    bootstrap(_config(data, url)).services.engine.dispose()
    with pytest.raises(InvalidRequest, match="does not decrypt the keys in the database"):
        bootstrap(_config(other, url))
