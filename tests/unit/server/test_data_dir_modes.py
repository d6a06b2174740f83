"""The data directory and the SQLite files are private, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from certctl.server.bootstrap import bootstrap
from certctl.server.config import ServerConfig


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_fresh_data_dir_under_umask_000_is_private(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    old = os.umask(0)
    try:
        booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
        booted.services.engine.dispose()
    finally:
        os.umask(old)
    assert _mode(data) == 0o700
    for name in ("certctl.db", "kek", "admin-api-key"):
        assert _mode(data / name) == 0o600, name
    for extra in data.glob("certctl.db-*"):
        assert _mode(extra) == 0o600, extra


def test_an_open_data_dir_is_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "open"
    data.mkdir()
    os.chmod(data, 0o777)
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    assert _mode(data) == 0o750
    assert "was mode 0777; made it 0750" in caplog.text
    caplog.clear()
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))  # a restart
    booted.services.engine.dispose()
    assert "data directory" not in caplog.text  # negative twin: nothing more to say


def test_a_kek_readable_by_others_is_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "restored"
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    os.chmod(data / "kek", 0o644)  # as a careless restore leaves it
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    assert _mode(data / "kek") == 0o600
    assert "kek was mode 0644; made it 0600" in caplog.text
