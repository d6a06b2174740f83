"""Soak fixtures: ``certctl serve`` replicas, a real nginx and a throwaway PostgreSQL.

Everything listens on 127.0.0.1, every wait is bounded and every process is stopped by its
PID. Measured figures are printed (run with ``-s``) and appended to ``SOAK_RESULTS``
(``/tmp/certctl-soak-results.txt`` unless ``CERTCTL_SOAK_RESULTS`` says otherwise).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests._nginx import nginx_argv, nginx_conf
from tests._stores import PostgresCluster  # postgres_cluster: tests/conftest.py
from tests._tools import free_port, require
from tests.e2e.conftest import stop_process

READY_TIMEOUT_S = 20.0
SOAK_RESULTS = Path(os.environ.get("CERTCTL_SOAK_RESULTS", "/tmp/certctl-soak-results.txt"))

__all__ = [
    "Nginx",
    "PostgresCluster",
    "Replica",
    "report",
    "start_nginx",
    "start_replica",
    "wait_for",
]


def report(test: str, **figures: Any) -> None:
    """Print measured figures and append them (one JSON line) to ``SOAK_RESULTS``."""
    line = json.dumps({"test": test, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures})
    print(f"\n[soak] {line}", flush=True)
    with SOAK_RESULTS.open("a") as out:
        out.write(line + "\n")


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.05) -> Any:
    """Poll ``check()`` until it returns a truthy value (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})", pytrace=False)


# --- certctl serve ------------------------------------------------------------------------


@dataclass
class Replica:
    """One ``certctl serve`` process."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    stdout: Path
    stderr: Path
    env: dict[str, str]
    admin_key: str = ""
    exit_code: int | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.crt"

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        ctx = ssl.create_default_context(cafile=str(self.ca))
        return httpx.Client(base_url=self.url, verify=ctx, headers=headers, timeout=30)

    def logs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def is_leader(self) -> bool:
        return "this replica is now the leader" in self.stderr.read_text(errors="replace")

    def cli(self, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the ``certctl`` CLI against this server (CERTCTL_URL/API_KEY/CA_CERT)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
        env |= {
            "CERTCTL_URL": self.url,
            "CERTCTL_API_KEY": self.admin_key,
            "CERTCTL_CA_CERT": str(self.ca),
        }
        argv = [require("certctl"), *(str(a) for a in args)]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        assert done.returncode == 0, f"{argv} exited {done.returncode}: {done.stderr}"
        return done

    def kill(self) -> None:
        """SIGKILL by PID (a crash: no clean shutdown, no lock release by certctl)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.exit_code = self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.exit_code is None:
            self.exit_code = stop_process(self.proc)
        return self.exit_code


def _wait_ready(replica: Replica) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: object = "no attempt"
    while time.monotonic() < deadline:
        if replica.proc.poll() is not None:
            break
        if replica.ca.is_file() and "Admin API key" in replica.stdout.read_text(errors="replace"):
            try:
                with replica.client("none") as client:
                    response = client.get("/readyz", timeout=2)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
                last = repr(exc)
        time.sleep(0.1)
    code = replica.stop()
    pytest.fail(
        f"certctl serve {replica.name} not ready after {READY_TIMEOUT_S} s (exit {code}, "
        f"last: {last})\n{replica.logs()[-4000:]}",
        pytrace=False,
    )


@contextmanager
def start_replica(
    base: Path,
    name: str,
    config: dict[str, Any],
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[Replica]:
    """Start ``certctl serve`` with ``config`` (YAML) in ``base/name``; stop it on exit."""
    home = base / name
    home.mkdir(parents=True, exist_ok=True)
    data_dir = home / "data"
    config_file = home / "certctl.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [require("certctl"), "serve", "--data-dir", str(data_dir)]
    argv += ["--listen", f"127.0.0.1:{port}", "--config", str(config_file), *args]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    full_env |= {"PYTHONUNBUFFERED": "1", **(env or {})}
    stdout, stderr = home / "serve.stdout", home / "serve.stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=full_env
        )
    replica = Replica(name, proc, port, data_dir, stdout, stderr, full_env)
    try:
        _wait_ready(replica)
        key_file = data_dir / "admin-api-key"
        if key_file.is_file():
            replica.admin_key = key_file.read_text().strip()
        yield replica
    finally:
        replica.stop()


# --- nginx --------------------------------------------------------------------------------

# The inside of the http block; tests._nginx.nginx_conf adds the rest.
NGINX_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name _;
        ssl_certificate {tls}/tls.crt;
        ssl_certificate_key {tls}/tls.key;
        location / {{ return 200 "soak ok\\n"; }}
    }}
"""


@dataclass
class Nginx:
    """A running nginx master serving https on ``port`` from ``tls_dir``."""

    proc: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def start_nginx(directory: Path, tls_dir: Path) -> Iterator[Nginx]:
    """nginx in the foreground (``daemon off``), its files in ``directory``; stopped by PID."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    server = NGINX_SERVER.format(port=port, tls=tls_dir)
    conf.write_text(
        nginx_conf(
            directory, server, workers=2, connections=1024, error_level="notice", access_log=False
        )
    )
    argv = nginx_argv(conf, directory)
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(
        [*argv, "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    nginx = Nginx(proc, port, directory)
    try:
        import socket

        def listening() -> bool:
            assert proc.poll() is None, nginx.error_log()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for("nginx to listen", listening, timeout=15)
        yield nginx
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGQUIT)  # graceful: the master stops its workers
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """An ExitStack closed at teardown (processes started by a test stop in reverse order)."""
    with ExitStack() as exit_stack:
        yield exit_stack
