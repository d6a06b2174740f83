"""``certctl serve`` writes no core dump: its memory holds the key-encryption key and CA keys."""

from __future__ import annotations

import base64
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._poll import wait_until
from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _core_limit(pid: int) -> tuple[str, str]:
    # "Max core file size        0                    unlimited            bytes"
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line.split()[4:6]
            return soft, hard
    raise AssertionError(f"no core limit in /proc/{pid}/limits")


@pytest.fixture
def cores_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Start servers as systemd does (core limit raised), in ``tmp_path`` (where cores land)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        pytest.fail("the hard core limit is 0 here: run the tests with `ulimit -Hc unlimited`")
    monkeypatch.chdir(tmp_path)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        yield tmp_path
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def test_a_crashing_worker_leaves_no_core_with_the_keys(
    cores_allowed: Path, start_server: StartServer
) -> None:
    server = start_server(config={"workers": 2})
    workers = _children(server.proc.pid)
    assert len(workers) == 2, workers
    # Before: the limit the server was started with (unlimited), and a worker's crash wrote
    # an 85 MB core holding the raw key-encryption key and the admin API key.
    for pid in (server.proc.pid, *workers):
        assert _core_limit(pid)[0] == "0", pid
    os.kill(workers[0], signal.SIGSEGV)
    wait_until(
        lambda: (
            len(_children(server.proc.pid)) == 2 and workers[0] not in _children(server.proc.pid)
        ),
        "the parent to restart the crashed worker",
        15.0,
    )
    assert "exited with status -11" in server.logs()[1]
    kek = base64.b64decode((server.data_dir / "kek").read_bytes())
    for path in cores_allowed.rglob("*"):
        assert not path.name.startswith("core"), path
        if path.is_file():
            assert kek not in path.read_bytes(), path
