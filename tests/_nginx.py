"""nginx for the tests that serve certctl's certificates through a real nginx.

Every file nginx writes (pid, logs, temporary bodies) stays in the test's own directory, so
it runs as any user, next to other nginx processes, and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests._tools import require, stop

__all__ = ["nginx_argv", "nginx_conf", "running_nginx"]

_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


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


@contextlib.contextmanager
def running_nginx(conf: Path, directory: Path, port: int, timeout: float = 10.0) -> Iterator[None]:
    """nginx in the foreground with ``conf`` until the block ends, listening on ``port``.

    ``nginx -t`` runs first; a configuration it refuses, or a server that exits or does not
    listen within ``timeout`` s, fails with nginx's own error log.
    """
    argv = nginx_argv(conf, directory)
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(
        [*argv, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = directory / "error.log"
                    text = log.read_text() if log.exists() else ""
                    raise AssertionError(f"nginx did not start on port {port}:\n{text}") from None
                time.sleep(0.05)
        yield
    finally:
        stop(proc)
