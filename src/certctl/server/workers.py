"""``workers > 1``: one parent binds the listeners and supervises forked worker processes.

Each worker is a whole ``certctl serve`` process (its own event loop, database connections,
issuer-key cache, group commit and TLS context) accepting on the sockets the parent bound,
so the kernel spreads connections over the workers. Worker 0 also runs what must run once:
the managed-services scheduler, the self-signed certificate renewal and the CA Secret
publisher; the other workers pick renewed certificate files up by polling them
(``tls.reload-interval``). Counters are summed across workers by prometheus_client's
multi-process mode (files in a temporary directory that ``certctl serve`` removes at exit;
one left by a parent that was killed is removed by the next multi-worker start).

Per worker, not shared: the auth-failure throttle (``auth.failure-limit`` applies to each
worker, so an address may fail up to ``workers`` times the limit) and the metrics snapshot of
certificate counts (each refreshed every 10 s from the database).

The parent restarts a worker that dies (a crash or an OOM kill) after a short pause, and gives
up, stopping the others, if workers keep dying within seconds of their start. SIGTERM or
SIGINT to the parent stops every worker gracefully (uvicorn drains open requests); so does
the parent's death by SIGKILL (an OOM kill, ``kill -9``), on Linux. A second SIGTERM or SIGINT
to the parent ends the workers at once (the work in progress, such as a reload command, is
not waited for), and the parent exits 0.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from certctl.server.config import ServerConfig, split_host_port

__all__ = [
    "Supervisor",
    "bind_listeners",
    "prepare_multiprocess_metrics",
    "remove_abandoned_metrics_dirs",
]

log = logging.getLogger("certctl.server")
_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A worker that dies this soon after starting counts as a failed start.
FAST_FAILURE_S = 5.0
MAX_FAST_FAILURES = 5
RESTART_PAUSE_S = 0.5


_METRICS_PREFIX = "certctl-metrics-"
# Held (flock) by the parent and, through fork, its workers while the directory is in use.
_METRICS_LOCK = ".in-use"
_held_locks: list[int] = []


def prepare_multiprocess_metrics() -> str:
    """Point prometheus_client at a fresh directory; must run before it is imported.

    The directory is removed at exit; a parent killed with SIGKILL cannot, so the directories
    that such parents left are removed here first. "Left" is told by a lock, not by a PID:
    the kernel drops the lock when the last process holding it dies, and it means the same
    across PID namespaces sharing one /tmp (containers), where a PID may be another's.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the multi-process setup")
    remove_abandoned_metrics_dirs(Path(tempfile.gettempdir()))
    directory = tempfile.mkdtemp(prefix=_METRICS_PREFIX)
    # Locked under another name, then renamed (the lock stays with the file): created as
    # .in-use and locked after, another start cleaning up in between found it free and
    # removed this server's directory, whose metrics then failed to write.
    lock, staging = tempfile.mkstemp(prefix=".locking-", dir=directory)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(staging, os.path.join(directory, _METRICS_LOCK))
    _held_locks.append(lock)  # open for the life of the process (and its forked workers)
    os.environ[_ENV] = directory
    return directory


def remove_abandoned_metrics_dirs(parent: Path) -> int:
    """Remove this user's ``certctl-metrics-*`` directories whose lock nobody holds.

    Returns:
        How many were removed. One without the lock file (made by an older certctl, which
        may still run) is left alone.
    """
    removed = 0
    for entry in parent.glob(f"{_METRICS_PREFIX}*"):
        try:
            info = entry.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            lock = os.open(entry / _METRICS_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, or no lock file: not ours to judge
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: a running server's
        else:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        finally:
            os.close(lock)
    return removed


def bind_listeners(config: ServerConfig, count: int) -> list[dict[str, list[socket.socket]]]:
    """Bind every listener ``count`` times before anything else starts: sockets per worker.

    Bound before the data directory is touched, so an address in use is one clear error, not
    a first start (CA, admin key, banner) for a server that then cannot listen. A host name
    binds every address it resolves to (``localhost``: 127.0.0.1 and ::1), as uvicorn would.

    Several workers: not one shared socket. A worker woken for a burst of new connections
    accepts them all, and kept-alive connections stay where they were accepted, so one worker
    could serve all of them while the other idles. With a socket each (``SO_REUSEPORT``), the
    kernel spreads connections evenly (by address hash). The parent keeps every socket open:
    connections that reach a crashed worker's socket wait in its backlog for the replacement,
    which inherits the same socket.
    """
    listeners = {"main": ("listen", config.host_port)}
    if config.metrics.listen:
        listeners["metrics"] = (
            "metrics.listen",
            split_host_port(config.metrics.listen, "metrics.listen"),
        )
    if count == 1:
        return [
            {
                name: _bind(key, *address, reuse_port=False)
                for name, (key, address) in listeners.items()
            }
        ]
    # SO_REUSEPORT would also share the port with another certctl started the same way; a
    # plain bind first fails if anything at all listens there.
    for key, address in listeners.values():
        for sock in _bind(key, *address, reuse_port=False):
            sock.close()
    return [
        {name: _bind(key, *address, reuse_port=True) for name, (key, address) in listeners.items()}
        for _ in range(count)
    ]


_HINTS = {
    "listen": "--listen or CERTCTL_LISTEN",
    "metrics.listen": "metrics.listen or CERTCTL_METRICS_LISTEN",
}


def _bind(key: str, host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"cannot listen on {where} ({key}): {exc.strerror}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    for family, kind, proto, _, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        sock = socket.socket(family, kind, proto)
        sockets.append(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # As asyncio does: "::" is IPv6 only; 0.0.0.0 is a listener of its own.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)
        except OSError as exc:
            for opened in sockets:
                opened.close()
            hint = (
                f" (is another server running there? choose an address with {_HINTS[key]})"
                if exc.errno == errno.EADDRINUSE
                else ""
            )
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}{hint}") from None
    return sockets


class Supervisor:
    """Fork ``count`` workers running ``target(index)``; restart the ones that die."""

    def __init__(self, count: int, target: Callable[[int], None]) -> None:
        self.count = count
        self.target = target
        self.children: dict[int, tuple[int, float]] = {}  # pid → (index, started)
        self.stopping = False
        self.signalled = False  # a stop signal came (a second one ends the workers at once)
        self.fast_failures = 0

    def run(self) -> int:
        """Supervise until a stop signal, or until workers keep failing; the exit status."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            for index in range(self.count):
                self._spawn(index)
            while self.children:
                try:
                    pid, wait_status = os.wait()
                except ChildProcessError:
                    break
                if pid not in self.children:
                    continue
                index, started = self.children.pop(pid)
                self._mark_dead(pid)
                if self.stopping:
                    continue
                code = os.waitstatus_to_exitcode(wait_status)
                log.error("worker %d (pid %d) exited with status %d", index, pid, code)
                if time.monotonic() - started < FAST_FAILURE_S:
                    self.fast_failures += 1
                if self.fast_failures >= MAX_FAST_FAILURES:
                    log.error("workers keep failing at start; stopping")
                    status = 1
                    self._stop_workers()
                    continue
                time.sleep(RESTART_PAUSE_S)
                if not self.stopping:
                    self._spawn(index)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _spawn(self, index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                _die_with_parent(parent)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                self.target(index)
            except KeyboardInterrupt:
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        self.children[pid] = (index, time.monotonic())
        log.info("worker %d started (pid %d)", index, pid)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        """A stop signal: the first stops the workers gracefully, a second ends them at once.

        A worker that stopped its listeners waits for the work in progress (a delivery's
        reload command, up to its reloadTimeout); before, every later signal only asked for
        the stop under way again, and nothing but SIGKILL ended the parent. The workers
        themselves cannot tell a second stop from a duplicate of the first (systemd signals
        the whole control group, and the parent forwards its own), so the parent decides.
        """
        if self.signalled:
            log.warning(
                "%s during shutdown: stopping the workers at once, without waiting for the work "
                "in progress (a reload command, a delivery)",
                signal.Signals(signum).name,
            )
            self._signal_workers(signal.SIGKILL)
            return
        self.signalled = True
        self._stop_workers()

    def _stop_workers(self) -> None:
        self.stopping = True
        self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    @staticmethod
    def _mark_dead(pid: int) -> None:
        if os.environ.get(_ENV):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when the parent dies, however it dies.

    Without it, workers orphaned by a SIGKILLed parent kept serving (worker 0 its scheduler
    too) and kept the listening port, so the restarted server failed with "Address already
    in use". Linux only; elsewhere a worker outlives a killed parent as before.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
