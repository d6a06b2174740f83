"""The stores the tests share in each pytest process: a throwaway PostgreSQL cluster, one
migrated database on it, a migrated SQLite template.

Registered as fixtures once, by ``tests/conftest.py``, so every directory (api, services, faults,
soak, reliability) gets the same session instance. A conftest that imported them registered a
fixture of its own: each directory initdb'd a cluster and migrated its own copies (1-3 s each).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text

from certctl.store.db import create_store_engine, migrate

PG_BIN = Path(os.environ.get("CERTCTL_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_INSTALL = "apt-get install -y postgresql"

# --- PostgreSQL ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1:``port``, trust auth for ``postgres``."""

    base: Path
    port: int
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, locale: str | None = None) -> str:
        """A new empty database (UTF-8 in ``locale``, else the cluster's); returns its name."""
        import psycopg

        name = f"certctl_{next(self._counter)}"
        dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        options = f" ENCODING 'UTF8' LOCALE '{locale}'" if locale else ""
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0{options}')
        return name


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _pg_run(args: list[str], timeout: float = 60) -> None:
    proc = subprocess.run(
        _as_postgres(args), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """Start a cluster in a temp dir owned by ``postgres``; stop it (immediate) at the end."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).is_file():
            pytest.fail(
                f"PostgreSQL not found in {PG_BIN} ({tool}): install with '{PG_INSTALL}'",
                pytrace=False,
            )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg missing: install with 'uv sync'", pytrace=False)
    # Not under pytest's basetemp: its parents are 0700 root, which postgres cannot traverse.
    base = Path(tempfile.mkdtemp(prefix="certctl-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    _pg_run([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    port = 0
    start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "30"]
    for _attempt in range(3):  # a free port may be taken between probing and binding
        port = _free_port()
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"
        opts += " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        proc = subprocess.run(
            _as_postgres([*start, "-o", opts, "start"]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode == 0:
            break
    else:
        log = (base / "log").read_text(errors="replace") if (base / "log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed:\n{proc.stderr}\n{log[-2000:]}", pytrace=False)
    try:
        yield PostgresCluster(base, port)
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """One migrated database shared by the session; ``api`` empties it before each test."""
    url = postgres_cluster.url(postgres_cluster.create_database())
    engine = create_store_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite file; ``api`` copies it into each test's data dir."""
    path = tmp_path_factory.mktemp("sqlite-template") / "certctl.db"
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        migrate(engine)
        with engine.connect() as conn:
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        engine.dispose()
    return path
