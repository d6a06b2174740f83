"""What ``certctl serve`` accepts as its store, and two first starts on one data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._tools import failed, free_port, run

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
