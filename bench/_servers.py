"""Servers under load: plain processes pinned to a core, /proc accounting, wrk and s_time.

Every server is started as a plain process (``taskset -c CORE program …``: taskset execs the
program, so the PID we hold is the server's) and stopped by that PID (SIGTERM, then SIGKILL).
Server CPU comes from ``/proc/<pid>/stat`` (utime + stime of the process and its children, so a
master/worker server such as nginx or granian is counted whole); RSS from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from _measure import BenchError, child_env

__all__ = [
    "CLIENT_CORE",
    "SERVER_CORE",
    "Load",
    "Server",
    "free_port",
    "handshakes",
    "https_get",
    "pinned",
    "postgres_database",
    "pyload",
    "tree_cpu_s",
    "tree_rss_bytes",
    "wrk",
    "wrk_split",
]

SERVER_CORE = 0
CLIENT_CORE = 1
_TICK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT_S = 5.0


def pinned(core: int | None, argv: Sequence[str]) -> list[str]:
    """``taskset -c CORE argv…`` (taskset execs ``argv``: the PID stays the program's)."""
    if core is None or (os.cpu_count() or 1) < 2:
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(tree.get(current, []))
    return out


def tree_cpu_s(pid: int) -> float:
    """utime + stime (seconds) of ``pid`` and its live descendants, from /proc/<pid>/stat."""
    total = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICK


def tree_rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of ``pid`` and its live descendants."""
    total = 0
    for member in _tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            total += int(match.group(1)) * 1024
    return total


@dataclass
class Server:
    """A server process: ``start()`` launches it and waits for ``ready_url``; ``stop()`` by PID."""

    name: str
    argv: list[str]
    ready_url: str
    log: Path
    cafile: Path | None = None
    cwd: Path | None = None
    env: Mapping[str, str] | None = None
    core: int | None = SERVER_CORE
    ready_timeout_s: float = 30.0
    ready_status: int | None = 200  # None: any HTTP response means ready
    client_cert: tuple[Path, Path] | None = None  # for a server that requires one
    proc: subprocess.Popen[bytes] | None = None
    launch_to_ready_s: float = 0.0
    _log_file: IO[bytes] | None = field(default=None, repr=False)
    _launched: float = 0.0

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.name}: not running")
        return self.proc.pid

    def start(self) -> Server:
        """Launch and wait until ready."""
        return self.launch().wait_ready()

    def launch(self) -> Server:
        """Start the process (``wait_ready`` waits for it); the clock starts here."""
        env = child_env()
        if self.env:
            env.update(self.env)
        self._log_file = self.log.open("ab")
        self._launched = time.perf_counter()
        self.proc = subprocess.Popen(
            pinned(self.core, self.argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=env,
        )
        return self

    def wait_ready(self) -> Server:
        """Poll ``ready_url`` every 10 ms; ``launch_to_ready_s`` is launch → first success."""
        assert self.proc is not None
        deadline = self._launched + self.ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            status = https_get(
                self.ready_url, self.cafile, timeout_s=1.0, client_cert=self.client_cert
            )
            if status is not None and self.ready_status in (None, status):
                break
            if time.perf_counter() > deadline:
                self.stop()
                raise BenchError(f"{self.name}: not ready after {self.ready_timeout_s:.0f} s")
            time.sleep(0.01)
        self.launch_to_ready_s = time.perf_counter() - self._launched
        return self

    def cpu_s(self) -> float:
        return tree_cpu_s(self.pid)

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.pid)

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.name} died: {self.tail()}")

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def https_get(
    url: str,
    cafile: Path | None,
    *,
    timeout_s: float = 5.0,
    client_cert: tuple[Path, Path] | None = None,
) -> int | None:
    """Status of a GET (None when the connection fails); verifies against ``cafile``."""
    try:
        context = None
        if url.startswith("https:"):
            context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            context.check_hostname = False
            if cafile is None:
                context.verify_mode = ssl.CERT_NONE
            if client_cert is not None:
                context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ssl.SSLError):
        return None


# --- wrk ---------------------------------------------------------------------------------

# One Lua script for every wrk run: method, body and bearer token from the environment; the
# summary is written as one JSON line (latencies in microseconds).
WRK_LUA = """
local method = os.getenv("WRK_METHOD") or "GET"
wrk.method = method
local body = os.getenv("WRK_BODY_FILE")
if body and body ~= "" then
  local f = assert(io.open(body, "rb")); wrk.body = f:read("*a"); f:close()
  wrk.headers["Content-Type"] = "application/json"
end
local key = os.getenv("WRK_BEARER")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK-JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Load:
    """One load run against one server: throughput, server CPU, latency, RSS afterwards."""

    requests: int
    seconds: float
    cpu_s: float
    p50_us: float
    p99_us: float
    rss_bytes: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6

    def __post_init__(self) -> None:
        # A sample shorter than one /proc tick (10 ms) may read 0 s: count half a tick, so
        # that a --quick ratio stays finite (default samples are hundreds of ticks long).
        object.__setattr__(self, "cpu_s", max(self.cpu_s, 0.5 / _TICK))

    def as_dict(self) -> dict[str, float]:
        return {
            "req_per_s": self.rate,
            "cpu_us_per_req": self.cpu_us_per_request,
            "p50_ms": self.p50_us / 1000,
            "p99_ms": self.p99_us / 1000,
            "rss_mb": self.rss_bytes / 2**20,
        }


def wrk(
    server: Server,
    url: str,
    lua: Path,
    *,
    seconds: float,
    connections: int,
    method: str = "GET",
    body: Path | None = None,
    bearer: str | None = None,
) -> Load:
    """Run wrk (1 thread, pinned to the client core) at ``url``; every response must be 2xx."""
    env = child_env()
    env.update(WRK_METHOD=method, WRK_BODY_FILE=str(body) if body else "", WRK_BEARER=bearer or "")
    argv = pinned(
        CLIENT_CORE,
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",  # whole seconds only
            "--timeout",
            "10s",
            "-s",
            str(lua),
            url,
        ],
    )
    cpu_before = server.cpu_s()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 30)
    cpu = server.cpu_s() - cpu_before
    server.check_alive()
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRK-JSON ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout)[-1000:]
        raise BenchError(f"wrk {url}: exit {proc.returncode}\n{tail}")
    data = json.loads(line.removeprefix("WRK-JSON "))
    bad = {k: data[k] for k in ("connect", "write", "status", "timeout") if data[k]}
    if bad or data["requests"] == 0:
        raise BenchError(f"wrk {url}: errors {bad} in {data['requests']} requests")
    return Load(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        cpu_s=cpu,
        p50_us=data["p50_us"],
        p99_us=data["p99_us"],
        rss_bytes=server.rss_bytes(),
    )


# --- TLS handshakes ----------------------------------------------------------------------


def handshakes(
    server: Server,
    host_port: str,
    *,
    seconds: float,
    cert: Path | None = None,
    key: Path | None = None,
) -> Load:
    """``openssl s_time -new``: full handshakes (no resumption), each on a new connection.

    Returns handshakes as "requests"; latency fields are the mean time per handshake.
    """
    argv = ["openssl", "s_time", "-connect", host_port, "-new"]
    argv += ["-time", str(max(1, round(seconds)))]
    if cert is not None and key is not None:
        argv += ["-cert", str(cert), "-key", str(key)]
    cpu_before = server.cpu_s()
    started = time.perf_counter()
    proc = subprocess.run(
        pinned(CLIENT_CORE, argv), capture_output=True, text=True, timeout=seconds + 30
    )
    wall = time.perf_counter() - started
    cpu = server.cpu_s() - cpu_before
    server.check_alive()
    match = re.search(r"(\d+) connections in ([\d.]+)s", proc.stdout)
    if proc.returncode != 0 or match is None or int(match.group(1)) == 0:
        tail = proc.stdout[-800:]
        raise BenchError(f"openssl s_time {host_port}: exit {proc.returncode}\n{tail}")
    count = int(match.group(1))
    per = wall / count * 1e6
    return Load(count, wall, cpu, per, per, server.rss_bytes())


def load_json(data: Any) -> bytes:
    """Compact JSON bytes (request bodies)."""
    return json.dumps(data, separators=(",", ":")).encode()


# --- the --quick load generator ----------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pyload(
    server: Server,
    host_port: str,
    path: str,
    *,
    requests: int,
    method: str = "GET",
    body: Path | None = None,
    bearer: str | None = None,
    new_connections: bool = False,
    cert: Path | None = None,
    key: Path | None = None,
) -> Load:
    """A fixed number of requests on one keep-alive TLS connection (``--quick`` only).

    wrk and ``openssl s_time`` only run for whole seconds; ``--quick`` proves the plumbing in
    a fraction of that. ``new_connections`` opens a connection (a full handshake) per request.
    """
    import http.client

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    host, _, port = host_port.rpartition(":")
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    payload = body.read_bytes() if body is not None else None
    if payload is not None:
        headers["Content-Type"] = "application/json"
    latencies: list[float] = []
    cpu_before = server.cpu_s()
    started = time.perf_counter()
    conn: http.client.HTTPSConnection | None = None
    for _ in range(requests):
        t0 = time.perf_counter()
        if conn is None:
            conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status >= 300:
            raise BenchError(f"{method} {path}: HTTP {response.status}")
        latencies.append(time.perf_counter() - t0)
        if new_connections:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    seconds = time.perf_counter() - started
    cpu = server.cpu_s() - cpu_before
    server.check_alive()
    return Load(
        requests,
        seconds,
        cpu,
        _percentile(latencies, 0.5) * 1e6,
        _percentile(latencies, 0.99) * 1e6,
        server.rss_bytes(),
    )


def wrk_split(
    servers: Sequence[tuple[Server, str]],
    lua: Path,
    *,
    seconds: float,
    connections: int,
    method: str = "GET",
    body: Path | None = None,
    bearer: str | None = None,
) -> Load:
    """One wrk per (server, url) at once, ``connections`` split between them, not pinned.

    For the several-process figure: the servers take both cores, so the load generators float
    (wrk needs a few % of a core at these rates). CPU and RSS are summed over the servers.
    """
    env = child_env()
    env.update(WRK_METHOD=method, WRK_BODY_FILE=str(body) if body else "", WRK_BEARER=bearer or "")
    each = max(1, connections // len(servers))
    cpu_before = [s.cpu_s() for s, _ in servers]
    procs = [
        subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{each}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(lua),
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _, url in servers
    ]
    outputs = [p.communicate(timeout=seconds + 30) for p in procs]
    cpu = sum(s.cpu_s() - before for (s, _), before in zip(servers, cpu_before, strict=True))
    requests, duration, p50, p99 = 0, 0.0, 0.0, 0.0
    for (server, url), proc, (out, err) in zip(servers, procs, outputs, strict=True):
        server.check_alive()
        line = next((x for x in out.splitlines() if x.startswith("WRK-JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise BenchError(f"wrk {url}: exit {proc.returncode}\n{(err or out)[-1000:]}")
        data = json.loads(line.removeprefix("WRK-JSON "))
        bad = {k: data[k] for k in ("connect", "write", "status", "timeout") if data[k]}
        if bad or data["requests"] == 0:
            raise BenchError(f"wrk {url}: errors {bad} in {data['requests']} requests")
        requests += data["requests"]
        duration = max(duration, data["duration_us"] / 1e6)
        p50, p99 = max(p50, data["p50_us"]), max(p99, data["p99_us"])
    return Load(requests, duration, cpu, p50, p99, sum(s.rss_bytes() for s, _ in servers))


# --- PostgreSQL, for the rows with database-url ---------------------------------------------

PG_BIN = Path(os.environ.get("CERTCTL_PG_BIN", "/usr/lib/postgresql/15/bin"))


@contextlib.contextmanager
def postgres_database(work: Path) -> Iterator[str]:
    """A throwaway cluster (durable settings: fsync on) and one database; its SQLAlchemy URL.

    initdb and postgres refuse to run as root: as root they run as the ``postgres`` user, in
    a directory outside ``work`` (whose parents may be 0700). Stopped (immediate) on exit.
    """
    for tool in ("initdb", "pg_ctl"):
        if not (PG_BIN / tool).is_file():
            raise BenchError(f"PostgreSQL not found in {PG_BIN}: apt-get install -y postgresql")
    base = Path(tempfile.mkdtemp(prefix="certctl-bench-pg-"))
    as_pg: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    port = free_port()

    def pg(*args: str) -> None:
        proc = subprocess.run([*as_pg, *args], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise BenchError(f"{args[0]} failed: {proc.stderr[-800:]}")

    pg(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c max_connections=200"
    pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o", opts, "start")
    try:
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE certctl_bench")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/certctl_bench"
    finally:
        with contextlib.suppress(BenchError):
            pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)
