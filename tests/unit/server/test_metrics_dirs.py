"""The multi-process metrics directories: one left by a killed parent is removed at the next
start, one in use (its lock held by a live process) or of unknown use is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from certctl.server.workers import remove_abandoned_metrics_dirs

# Holds the directory's lock as a parent does, until its stdin closes.
_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
sys.stdin.read()
"""


def _locked_by_a_process(directory: Path) -> subprocess.Popen[str]:
    directory.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(directory / ".in-use")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    return holder


def test_the_directory_of_a_killed_parent_goes_and_a_running_ones_stays(tmp_path: Path) -> None:
    killed = _locked_by_a_process(tmp_path / "certctl-metrics-killed")
    (tmp_path / "certctl-metrics-killed" / "counter_1.db").write_bytes(b"\0" * 64)
    running = _locked_by_a_process(tmp_path / "certctl-metrics-running")
    try:
        killed.kill()
        killed.communicate()
        assert remove_abandoned_metrics_dirs(tmp_path) == 1
        assert not (tmp_path / "certctl-metrics-killed").exists()
        assert (tmp_path / "certctl-metrics-running" / ".in-use").exists()
    finally:
        running.communicate("")  # its stdin closed: it exits
    # Its holder stopped: the next start removes it too.
    assert remove_abandoned_metrics_dirs(tmp_path) == 1
    assert not (tmp_path / "certctl-metrics-running").exists()


def test_directories_it_cannot_judge_are_left_alone(tmp_path: Path) -> None:
    # An older certctl's (no lock file: it may still run), a symbolic link, a file, another
    # user's, and a name that is not ours.
    (tmp_path / "certctl-metrics-old").mkdir()
    (tmp_path / "certctl-metrics-old" / "counter_1.db").write_bytes(b"")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / ".in-use").write_bytes(b"")
    (tmp_path / "certctl-metrics-link").symlink_to(target)
    (tmp_path / "certctl-metrics-file").write_bytes(b"")
    other = tmp_path / "certctl-metrics-other"
    other.mkdir()
    (other / ".in-use").write_bytes(b"")
    os.chown(other, 65534, 65534)
    (tmp_path / "metrics-unrelated").mkdir()
    (tmp_path / "metrics-unrelated" / ".in-use").write_bytes(b"")
    assert remove_abandoned_metrics_dirs(tmp_path) == 0
    for name in ["certctl-metrics-old", "elsewhere", "certctl-metrics-link", "metrics-unrelated"]:
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "certctl-metrics-file").is_file()
    assert (other / ".in-use").exists()


# A start whose cleanup (another multi-worker start's) runs between two of its own steps:
# each fcntl.flock of the start is preceded by that cleanup, as a scheduler may interleave.
_RACED_START = """
import fcntl, os, sys, tempfile
from pathlib import Path

from certctl.server import workers

flock = fcntl.flock
cleaning = False


def raced(fd, operation):
    global cleaning
    if not cleaning:  # the cleanup's own flocks are not raced
        cleaning = True
        workers.remove_abandoned_metrics_dirs(Path(tempfile.gettempdir()))
        cleaning = False
    return flock(fd, operation)


fcntl.flock = raced
directory = workers.prepare_multiprocess_metrics()
fcntl.flock = flock
print(directory, os.path.isdir(directory), os.path.exists(os.path.join(directory, ".in-use")))
"""


def test_a_start_keeps_its_directory_when_another_cleans_up_meanwhile(tmp_path: Path) -> None:
    # The lock file was created, then locked: another start's cleanup in between found it
    # free and removed the new server's directory, whose workers then failed on it.
    done = subprocess.run(
        [sys.executable, "-c", _RACED_START],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    directory, is_dir, locked = done.stdout.split()
    assert Path(directory).parent == tmp_path
    assert (is_dir, locked) == ("True", "True"), done.stdout
    # The process is gone now, its lock with it: the next start removes the directory.
    assert remove_abandoned_metrics_dirs(tmp_path) == 1
