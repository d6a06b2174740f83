"""nginx for the tests that serve certctl's certificates through a real nginx.

Every file nginx writes (pid, logs, temporary bodies) stays in the test's own directory, so
it runs as any user, next to other nginx processes, and leaves nothing behind.

Its ports are never "free a moment ago": the test binds each listening socket to port 0 and
hands it to nginx, which takes inherited sockets from the ``NGINX`` environment variable (as
in its binary upgrade) instead of binding their addresses itself. Probing a port with
``free_port()`` and letting nginx bind it later failed the test whenever another process
(the other pytest-xdist worker's server or client) took the port in between.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests._tools import require, stop

__all__ = [
    "loopback_listener",
    "nginx_argv",
    "nginx_conf",
    "port_of",
    "running_nginx",
    "start_nginx",
    "wait_serving",
]

_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# How long nginx may take to answer its first request; a deadline, not a wait.
START_TIMEOUT_S = 30.0


def loopback_listener() -> socket.socket:
    """A TCP socket listening on 127.0.0.1, on a port the kernel chose and holds for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(511)
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def nginx_conf(
    directory: Path,
    http: str,
    *,
    workers: int = 1,
    connections: int = 64,
    error_level: str = "info",
    access_log: bool = True,
) -> str:
    """A whole ``nginx.conf`` whose files live in ``directory``; ``http`` is the inside of
    its ``http`` block (``server`` blocks, shared ``ssl_*`` lines), indented by the caller."""
    temps = "".join(f"    {kind}_temp_path {directory}/{kind}_temp;\n" for kind in _TEMP_KINDS)
    log = f"{directory}/access.log" if access_log else "off"
    return (
        f"worker_processes {workers};\n"
        f"pid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log {error_level};\n"
        f"events {{ worker_connections {connections}; }}\n"
        f"http {{\n    access_log {log};\n{temps}{http}}}\n"
    )


def nginx_argv(conf: Path, directory: Path) -> list[str]:
    """``nginx`` with ``conf`` and ``directory`` as its prefix (add ``-t`` or ``-g …``)."""
    return [
        require("nginx"),
        "-c",
        str(conf),
        "-e",
        str(directory / "error.log"),
        "-p",
        f"{directory}/",
    ]


def start_nginx(
    conf: Path, directory: Path, listeners: Sequence[socket.socket]
) -> subprocess.Popen[str]:
    """nginx in the foreground with ``conf``, serving on ``listeners`` (see the module doc).

    ``conf`` must ``listen`` on each listener's address; nginx binds any other address itself.
    The test's copies of the sockets are closed: nginx owns them, and a connection made after
    it exits is refused rather than left waiting in a backlog nobody reads.
    """
    argv = nginx_argv(conf, directory)
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    fds = [sock.fileno() for sock in listeners]
    env = {**os.environ, "NGINX": "".join(f"{fd};" for fd in fds)}
    proc = subprocess.Popen(
        [*argv, "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=fds,
        env=env,
    )
    for sock in listeners:
        sock.close()
    return proc


def wait_serving(
    proc: subprocess.Popen[str], directory: Path, port: int, timeout: float = START_TIMEOUT_S
) -> None:
    """Return once nginx answers a request on ``port``; fail with its error log if it exits
    or does not answer within ``timeout`` s.

    The listening socket accepts connections before nginx runs at all (the kernel queues
    them), so a connection alone says nothing: wait for an answer. Plain HTTP gets one on a
    TLS port too (400, "plain HTTP request was sent to HTTPS port").
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if proc.poll() is None and remaining > 0:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=remaining) as sock:
                    sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
                    if sock.recv(5) == b"HTTP/":
                        return
            except OSError:
                pass
        if proc.poll() is not None or time.monotonic() >= deadline:
            log = directory / "error.log"
            text = log.read_text() if log.exists() else ""
            raise AssertionError(f"nginx did not serve on port {port}:\n{text}")
        time.sleep(0.05)


@contextlib.contextmanager
def running_nginx(
    conf: Path, directory: Path, listener: socket.socket, timeout: float = START_TIMEOUT_S
) -> Iterator[None]:
    """nginx in the foreground with ``conf`` until the block ends, serving on ``listener``
    (from :func:`loopback_listener`).

    ``nginx -t`` runs first; a configuration it refuses, or a server that exits or does not
    answer within ``timeout`` s, fails with nginx's own error log.
    """
    port = port_of(listener)
    proc = start_nginx(conf, directory, [listener])
    try:
        wait_serving(proc, directory, port, timeout)
        yield
    finally:
        stop(proc)
