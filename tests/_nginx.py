"""nginx for the tests that serve certctl's certificates through a real nginx.

Every file nginx writes (pid, logs, temporary bodies) stays in the test's own directory, so
it runs as any user, next to other nginx processes, and leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

from tests._tools import require

__all__ = ["nginx_argv", "nginx_conf"]

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
