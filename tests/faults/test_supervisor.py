"""``workers: 2`` when the parent is SIGKILLed (OOM killer, ``kill -9``): no orphaned workers.

The workers stop (gracefully: SIGTERM from the kernel) within seconds, the port is free, and
a new ``certctl serve`` on the same data directory and port starts and still has every
certificate issued before the kill, and removes the killed parent's metrics directory.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.faults.conftest import FaultServer
from tests.faults.test_storage import issue

ORPHAN_LIMIT_S = 10.0


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _metrics_dir(pid: int) -> Path:
    """The multi-process metrics directory whose lock ``pid`` holds open."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = Path(os.readlink(fd))
        if target.name == ".in-use" and target.parent.name.startswith("certctl-metrics-"):
            return target.parent
    raise AssertionError(f"{pid} holds no metrics directory open")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # An orphan that exited is reaped by init; until then it is a zombie, as good as gone.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_workers_stop_when_the_parent_is_killed(fault_server: FaultServer) -> None:
    fault_server.config = {"workers": 2}
    fault_server.start()
    workers = _children(fault_server.pid)
    assert len(workers) == 2
    metrics = _metrics_dir(fault_server.pid)
    with fault_server.client() as client:
        before = issue(client, "before.kill.example.com")
        assert before.status_code == 201, before.text
    try:
        fault_server.kill()
        deadline = time.monotonic() + ORPHAN_LIMIT_S
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "orphaned workers still running"
            time.sleep(0.1)
    finally:
        for pid in workers:  # only the test's own server's workers, by PID
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert metrics.is_dir()  # the killed parent could not remove it
    fault_server.start()  # the same port: free again
    assert not metrics.exists()
    with fault_server.client() as client:
        got = client.get(f"/api/v1/certificates/{before.json()['id']}")
        assert got.status_code == 200, got.text
