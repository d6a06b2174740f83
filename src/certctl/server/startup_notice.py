"""The start-up notice: where the admin API key is (printed, or in a Secret), how to try it."""

from __future__ import annotations

import io
import logging
import os
import shlex
import sys
from pathlib import Path

from certctl.errors import CertctlError
from certctl.files import discard_stdout
from certctl.server.bootstrap import Bootstrapped
from certctl.server.config import ServerConfig, split_host_port
from certctl.server.kubernetes import kube_connection
from certctl.targets.kubernetes import SecretWriter

__all__ = ["announce", "store_admin_key"]

log = logging.getLogger("certctl.server")


def store_admin_key(boot: Bootstrapped, config: ServerConfig, installation: str) -> str | None:
    """Write a freshly minted admin key to ``auth.admin-key-secret``; where it went, or None.

    On failure the key is printed as without the setting: it exists nowhere else once this
    first start is over.
    """
    name = config.auth.admin_key_secret
    if name is None or boot.admin_key is None:
        return None
    try:
        writer = SecretWriter(kube_connection(config), owner=installation)
        writer.write(
            name,
            {"api-key": boot.admin_key.encode()},
            labels={"app.kubernetes.io/name": "certctl", "app.kubernetes.io/component": "admin"},
        )
    except CertctlError as exc:
        log.error("cannot store the admin API key in Secret %s: %s; printing it", name, exc.detail)
        return None
    return f"Secret {writer.namespace}/{name} (key api-key)"


def _url(scheme: str, host: str, port: int) -> str:
    """The URL to reach a listener on ``host:port`` from this machine."""
    # A wildcard address is no place to connect to, and not in the certificate: loopback is.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _cli_line(config: ServerConfig, url: str, ca_path: str | None, key_file: Path) -> str:
    """The CLI's settings for this server, one line to paste.

    The curl line alone left a new user to find the CERTCTL_* variables, and the CA file's
    path, in the README.
    """
    words = [f"CERTCTL_URL={shlex.quote(url)}"]
    if ca_path:
        # Absolute: the line works from any directory, as the key file's path does. Links
        # not followed, as the "CA certificate:" line (a Secret volume's ..data, run.py).
        words.append(f"CERTCTL_CA_CERT={shlex.quote(os.path.abspath(ca_path))}")
    words.append(f'CERTCTL_API_KEY="$(cat {shlex.quote(str(key_file))})"')
    if config.tls.mode != "disabled" and config.tls.client_auth == "required":
        words.append("CERTCTL_CLIENT_CERT=client.crt CERTCTL_CLIENT_KEY=client.key")
    return f"CLI: export {' '.join(words)}; {_cli_command()} auth whoami\n"


def _cli_command() -> str:
    """How a shell runs this certctl: ``certctl`` when PATH finds this very one, else its path.

    `make run` starts ``.venv/bin/certctl``, which a shell without the venv does not find:
    the pasted line ended in "certctl: command not found".
    """
    import shutil

    running = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if running is None or running.name != "certctl" or not running.is_file():
        return "certctl"  # not the console script (an embedding, a test harness): the name
    found = shutil.which("certctl")
    if found is not None and Path(found).resolve() == running.resolve():
        return "certctl"
    return shlex.quote(str(running.resolve()))


def announce(
    boot: Bootstrapped,
    config: ServerConfig,
    scheme: str,
    ca_path: str | None,
    stored_in: str | None = None,
) -> None:
    """Print the start-up notice: where the admin API key is, the CA file, a curl to try.

    ``stored_in`` is where :func:`store_admin_key` put a fresh key, else it is printed. A
    stdout that cannot be written is logged (never the notice, which may hold the key).
    """
    url = _url(scheme, *config.host_port)
    # Absolute, as the CA file's: `--data-dir data` printed data/admin-api-key and
    # `certctl admin-key --data-dir data`, wrong from any other directory.
    key_file = boot.admin_key_file.resolve()
    # Quoted as the curl line's: a data dir with a space split the pasted command.
    data_dir = shlex.quote(str(config.data_dir.resolve()))
    out = io.StringIO()
    if stored_in is not None:
        out.write(
            f"certctl is starting. Admin API key: in {stored_in}, not printed "
            f"(also saved 0600 in {key_file})\n"
        )
    elif boot.admin_key is not None:
        out.write(
            "\n".join(
                [
                    "",
                    "certctl is starting. Admin API key (shown once; also saved 0600 in "
                    f"{key_file}):",
                    f"  {boot.admin_key}",
                    "",
                ]
            )
            + "\n"
        )
    elif key_file.is_file():
        out.write(f"certctl is starting. Admin API key: see {key_file}\n")
    elif config.database_url is not None:
        # A second replica has none (the first start wrote it in the first replica's data
        # dir), and `certctl admin-key --data-dir D` alone looked for SQLite in D: "no such
        # database". The URL is never repeated here: it may hold a password.
        out.write(
            f"certctl is starting. Admin API key: {key_file} is missing; copy "
            f"another replica's, or mint one with `certctl admin-key --data-dir "
            f"{data_dir}` given this server's database-url (its --config, "
            f"--database-url or CERTCTL_DATABASE_URL) and CERTCTL_MASTER_KEY\n"
        )
    else:
        out.write(
            f"certctl is starting. Admin API key: {key_file} is missing; "
            f"`certctl admin-key --data-dir {data_dir}` mints a new one\n"
        )
    if ca_path:
        out.write(f"CA certificate: {ca_path}\n")
    # Quoted as the CLI line's: a data directory with a space split the pasted command.
    cacert = f"--cacert {shlex.quote(ca_path)} " if ca_path else ""
    # Without a client certificate the handshake fails before the key is even sent.
    if config.tls.mode != "disabled" and config.tls.client_auth == "required":
        cacert += "--cert client.crt --key client.key "
    out.write(
        f'Try: curl {cacert}-H "Authorization: Bearer '
        f'$(cat {shlex.quote(str(key_file))})" '
        f"{url}/api/v1/auth/whoami\n"
    )
    out.write(_cli_line(config, url, ca_path, key_file))
    if config.metrics.listen:
        # Else nothing said the second listener was up, nor where to point Prometheus.
        plain = not config.metrics.secure or config.tls.mode == "disabled"
        m_host, m_port = split_host_port(config.metrics.listen, "metrics.listen")
        out.write(
            f"Metrics listener (metrics.listen, health and metrics only): "
            f"{_url('http' if plain else 'https', m_host, m_port)}/api/v1/metrics/prometheus\n"
        )
    try:
        sys.stdout.write(out.getvalue())
        sys.stdout.flush()
    except OSError as exc:
        # `certctl serve >&-`, a reader that left, a full disk: the notice is advice (the key
        # is in its 0600 file), no reason not to serve. Raised, the server exited 1 without a
        # word, even in the log.
        discard_stdout()  # else later flushes fail on it again
        # Never the notice itself in the log: it may hold the admin key, shown once.
        where = f"; the admin API key is in {key_file}"
        log.warning(
            "cannot print the start-up notice on stdout (%s)%s",
            exc.strerror or exc,
            where if key_file.is_file() else "",
        )
