"""Fault fixtures: ``certctl serve`` killed, restarted, starved of disk and abused.

``FaultServer`` is one data directory served by successive ``certctl serve`` processes on one
fixed port of 127.0.0.1, so clients keep their URL across a SIGKILL and a restart. Every process
is stopped by PID (SIGTERM, then SIGKILL). ``raise_nofile_limit`` lifts the test process's
open-file limit, which the server inherits (no ``preexec_fn``: client threads may be running
when a server is restarted, and ``preexec_fn`` is unsafe beside threads).

Mounts (a size-limited tmpfs for a full disk, an ext4 loop image for a read-only one) need
root; without it those tests fail with the reason.
"""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests._tools import free_port, require
from tests.e2e.conftest import stop_process, tls_context

READY_TIMEOUT_S = 20.0


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class FaultServer:
    """``certctl serve`` on ``data_dir`` and 127.0.0.1:``port``; restartable after a kill."""

    base: Path
    data_dir: Path
    port: int
    config: dict[str, Any] = field(default_factory=dict)
    # Extra environment (``CERTCTL_MASTER_KEY`` shared by replicas); other CERTCTL_* are dropped.
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    admin_key: str = ""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.crt"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        kwargs.setdefault("timeout", 10)
        return httpx.Client(
            base_url=self.url, verify=tls_context(self.ca), headers=headers, **kwargs
        )

    def start(self) -> float:
        """Start a process and wait for ``/readyz``; return the seconds it took."""
        started = time.monotonic()
        self.launch()
        self.wait_ready()
        return time.monotonic() - started

    def launch(self) -> None:
        """Start a process without waiting for it (several replicas at the same moment)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        config_file = self.base / f"certctl-{self.runs}.yaml"
        config_file.write_text(yaml.safe_dump(self.config))
        argv = [require("certctl"), "serve", "--data-dir", str(self.data_dir)]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--config", str(config_file)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        with self.stdout(self.runs).open("wb") as out, self.stderr(self.runs).open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def wait_ready(self) -> None:
        """Wait for ``/readyz`` of the launched process; read the admin key if it wrote one."""
        self._wait_ready()
        key_file = self.data_dir / "admin-api-key"
        if not self.admin_key and key_file.is_file():
            self.admin_key = key_file.read_text().strip()

    def stdout(self, run: int) -> Path:
        return self.base / f"serve-{run}.stdout"

    def stderr(self, run: int) -> Path:
        return self.base / f"serve-{run}.stderr"

    def log(self) -> str:
        """stderr of every run so far."""
        return "".join(
            self.stderr(n).read_text(errors="replace")
            for n in range(1, self.runs + 1)
            if self.stderr(n).exists()
        )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        last: object = "no attempt"
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.ca.is_file():
                try:
                    with httpx.Client(verify=tls_context(self.ca), timeout=2) as probe:
                        response = probe.get(f"{self.url}/readyz")
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}"
                except (httpx.HTTPError, OSError) as exc:
                    last = repr(exc)
            time.sleep(0.05)
        code = self.stop()
        pytest.fail(
            f"certctl serve not ready on {self.url} (exit {code}, last: {last})\n"
            f"{self.log()[-4000:]}",
            pytrace=False,
        )

    def kill(self) -> None:
        """SIGKILL the running process (by PID) and reap it."""
        assert self.proc is not None
        assert self.proc.poll() is None, "not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM by PID (SIGKILL after 5 s); idempotent."""
        if self.proc is None:
            return None
        return stop_process(self.proc)


@pytest.fixture
def fault_server(tmp_path: Path) -> Iterator[FaultServer]:
    """A not-yet-started server on ``tmp_path/data``; stopped by PID at teardown."""
    server = FaultServer(tmp_path, tmp_path / "data", free_port())
    try:
        yield server
    finally:
        server.stop()


def sqlite_integrity(db: Path) -> list[str]:
    """``PRAGMA integrity_check`` + ``foreign_key_check`` of a SQLite file (server stopped)."""
    conn = sqlite3.connect(db)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        rows += [repr(r) for r in conn.execute("PRAGMA foreign_key_check")]
    finally:
        conn.close()
    return rows


def run_root(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a mount/losetup-type command; fail the test with its output when it fails."""
    if os.geteuid() != 0:
        pytest.fail(f"{argv[0]} needs root (storage-fault tests mount file systems)", pytrace=False)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed: {proc.stderr.strip()}", pytrace=False)
    return proc
