"""``certctl serve``: the control-plane server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from certctl.server.config import ServerConfig

__all__ = ["admin_key_command", "kek_app", "serve_command"]


# The flag setting each config key, named with its value when the value is refused.
_FLAGS = {
    "data-dir": "--data-dir",
    "listen": "--listen",
    "database-url": "--database-url",
    "tls.mode": "--tls-mode",
    "tls.cert-dir": "--tls-cert-dir",
    "allow-insecure": "--allow-insecure",
    "workers": "--workers",
    "public-url": "--public-url",
}


def _warn_of_a_password_flag(database_url: str | None) -> None:
    """Warn (never quoting it) when ``--database-url`` carries a password.

    The help said so, but an operator copying a URL into a unit file's ExecStart never
    reads it: every user of the host could read the password in ``ps`` for as long as the
    server ran. Called once the configuration loaded, so a malformed URL is refused first.
    """
    if not database_url:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from certctl.cli._common import warn

    try:
        parsed = make_url(database_url)
    except (ArgumentError, ValueError):
        return
    # In the query too (?password=, libpq's keyword; ?sslpassword=, the client key's
    # passphrase): as readable in ps as one before the '@'.
    if parsed.password or any(parsed.query.get(k) for k in ("password", "sslpassword")):
        warn(
            "--database-url holds a password, which every user of this host can read in ps "
            "while the command runs: give the URL in CERTCTL_DATABASE_URL or the config "
            "file's database-url, or the password in ~/.pgpass or PGPASSWORD"
        )


def _settings(config: Path | None, overrides: dict[str, Any]) -> ServerConfig:
    """``load_config`` of the server commands (serve, admin-key, kek rotate).

    A bad flag or CERTCTL_* value (CERTCTL_MASTER_KEY too) is a usage error (exit 2), as a
    bad option of any other command; a config file that does not read, or holds a bad
    value, stays a failure (exit 1), as any input file does.
    """
    from certctl.cli._common import UsageProblem
    from certctl.errors import InvalidRequest
    from certctl.server.config import BadSetting, load_config
    from certctl.store.keywrap import master_key_from_env

    try:
        settings = load_config(config, overrides, _FLAGS)
    except BadSetting as exc:
        raise UsageProblem(exc.detail) from None
    try:
        # A malformed CERTCTL_MASTER_KEY is a bad environment value like any CERTCTL_*
        # setting's; bootstrap checks it again (it is the one that uses it).
        master_key_from_env()
    except InvalidRequest as exc:
        raise UsageProblem(exc.detail) from None
    return settings


def serve_command(
    config: Path = typer.Option(
        None,
        "--config",
        "-c",
        envvar="CERTCTL_CONFIG",
        show_envvar=False,  # named in the text, as the other options name theirs
        help="YAML config file; every key: docs/configuration.md (default: none, every key "
        "at its default; env CERTCTL_CONFIG).",
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Data directory (default: ./certctl-data; env CERTCTL_DATA_DIR)."
    ),
    listen: str = typer.Option(
        None,
        "--listen",
        help="HOST:PORT, IPv6 in brackets ([::]:8443) (default: 127.0.0.1:8443; env "
        "CERTCTL_LISTEN).",
    ),
    database_url: str = typer.Option(
        None,
        "--database-url",
        help="SQLAlchemy URL (default: SQLite, <data-dir>/certctl.db; env "
        "CERTCTL_DATABASE_URL); postgresql+psycopg://… for several replicas. With a password, "
        "prefer the variable: a flag is visible to every user in ps.",
    ),
    tls_mode: str = typer.Option(
        None,
        "--tls-mode",
        help="self-signed (default: certctl's own certificate under its CA), custom (from "
        "--tls-cert-dir) or disabled (plain HTTP) (env CERTCTL_TLS_MODE).",
    ),
    tls_cert_dir: Path = typer.Option(
        None,
        "--tls-cert-dir",
        help="Directory with tls.crt, tls.key and optionally ca.crt, for --tls-mode custom "
        "(default: none; env CERTCTL_TLS_CERT_DIR).",
    ),
    allow_insecure: bool = typer.Option(
        False,
        "--allow-insecure",
        help="Allow plain HTTP (--tls-mode disabled, metrics.secure: false) on an address "
        "beyond loopback, refused by default (config key allow-insecure; no environment "
        "variable).",
        show_default=False,
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        help="Server processes, 1 to 64 (default 1; env CERTCTL_WORKERS); use one per core "
        "to scale.",
    ),
    public_url: str = typer.Option(
        None,
        "--public-url",
        metavar="URL",
        help="Base URL clients reach this server at: issued leaves then name "
        "<URL>/api/v1/issuers/<id>/crl and …/ca.der (default: none, no such URLs; env "
        "CERTCTL_PUBLIC_URL).",
    ),
) -> None:
    """Run the control-plane server (HTTPS with a self-signed certificate by default).

    A flag wins over its CERTCTL_* environment variable (named in its help), which wins over
    the --config file. Every key, its default and its variable: docs/configuration.md.
    """
    overrides = {
        "data-dir": str(data_dir) if data_dir else None,
        "listen": listen,
        "database-url": database_url,
        "tls.mode": tls_mode,
        "tls.cert-dir": str(tls_cert_dir) if tls_cert_dir else None,
        "allow-insecure": True if allow_insecure else None,
        "workers": workers,
        "public-url": public_url,
    }
    settings = _settings(config, overrides)
    _warn_of_a_password_flag(database_url)
    metrics_dir = None
    if settings.workers > 1:
        # Before prometheus_client is imported: it picks its multi-process value store then.
        from certctl.server.workers import prepare_multiprocess_metrics

        metrics_dir = prepare_multiprocess_metrics()
    from certctl.server.run import serve

    try:
        serve(settings)
    finally:
        if metrics_dir is not None:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)


# The options of the commands run beside a server, on its store (admin-key, kek rotate).
# Their settings' help says what serve's does, in its form: the variable in the text, not
# Typer's "[env var: …]".
_SERVER_CONFIG = typer.Option(
    None,
    "--config",
    "-c",
    envvar="CERTCTL_CONFIG",
    show_envvar=False,
    help="The server's YAML config file (default: none, every key at its default; env "
    "CERTCTL_CONFIG).",
)
_SERVER_DATA_DIR = typer.Option(
    None,
    "--data-dir",
    help="The server's data directory (default: ./certctl-data; env CERTCTL_DATA_DIR).",
)
_SERVER_DATABASE_URL = typer.Option(
    None,
    "--database-url",
    help="The server's database, an SQLAlchemy URL (default: SQLite, <data-dir>/certctl.db; "
    "env CERTCTL_DATABASE_URL). With a password, prefer the variable: a flag is visible to "
    "every user in ps.",
)


def admin_key_command(
    config: Path = _SERVER_CONFIG,
    data_dir: Path = _SERVER_DATA_DIR,
    database_url: str = _SERVER_DATABASE_URL,
    actor: str = typer.Option("admin", "--actor", help="The actor the key is for."),
    out: Path = typer.Option(
        None, "--out", help="Where to write the key (default: <data-dir>/admin-api-key)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
) -> None:
    """Mint an API key in the server's store, for when every admin key is lost.

    Run it where the server runs, with its configuration: it needs the database and the
    key-encryption key; the server need not be stopped. The key is written 0600, never
    printed; the key in a replaced admin-api-key stays valid until revoked.
    """
    from certctl.cli._common import UsageProblem
    from certctl.errors import Conflict
    from certctl.files import OutputSet
    from certctl.server.bootstrap import mint_local_key

    if out is not None and str(out) == "-":
        # "-" reads as stdout, which this key never goes to: a file named "-" was written.
        raise UsageProblem(
            "--out -: the admin key is never printed; give a file "
            "(default: <data-dir>/admin-api-key)"
        )
    settings = _settings(
        config,
        {
            "data-dir": str(data_dir) if data_dir else None,
            "database-url": database_url,
        },
    )
    _warn_of_a_password_flag(database_url)
    target = out if out is not None else settings.data_dir / "admin-api-key"
    if target.exists() and not force:
        raise Conflict(f"{target} exists (--force replaces it)")
    # Existence is settled above; a directory or an unwritable place is refused here,
    # before the key is minted: the secret is never shown, so a key whose file could not
    # be written would be a live credential nobody holds.
    output = OutputSet(force=True)
    output.add(target, b"", secret=True)
    output.check()
    minted = mint_local_key(settings, actor)
    output.add(target, (minted.minted.value + "\n").encode(), secret=True)
    output.commit()
    typer.echo(f"API key {minted.row.id} for actor {actor} written to {target} (0600)")


kek_app = typer.Typer(
    help="The key-encryption key that protects the stored private keys (certctl serve's).",
    no_args_is_help=True,
)


@kek_app.command("rotate", short_help="Re-encrypt every stored private key under a new key.")
def kek_rotate_command(
    config: Path = _SERVER_CONFIG,
    data_dir: Path = _SERVER_DATA_DIR,
    database_url: str = _SERVER_DATABASE_URL,
) -> None:
    """Re-encrypt every stored private key under a new key-encryption key.

    Stop the server first (on PostgreSQL, every replica): it is refused while one runs on
    this data dir. All keys are re-encrypted in one transaction. With <data-dir>/kek the
    new key replaces that file (0600); with CERTCTL_MASTER_KEY the new value is printed,
    once, on stdout, before the commit: put it where the old one was, then start the server.
    API keys stay valid. The old key opens only backups taken before: keep it with them.
    """
    from certctl.errors import CertctlError
    from certctl.server.kek_rotation import RotationUnsettled, rotate_kek

    settings = _settings(
        config,
        {
            "data-dir": str(data_dir) if data_dir else None,
            "database-url": database_url,
        },
    )
    _warn_of_a_password_flag(database_url)
    shown = False

    def show(value: str) -> None:
        nonlocal shown
        typer.echo(value)
        sys.stdout.flush()  # before the commit: a failed write leaves the store as it was
        shown = True

    try:
        done = rotate_kek(settings, show)
    except CertctlError as exc:
        if shown and not isinstance(exc, RotationUnsettled):
            exc.detail += (
                " (nothing was changed: the value printed above opens nothing; keep the "
                "old CERTCTL_MASTER_KEY)"
            )
        raise
    keys = f"{done.rewrapped} stored private key{'' if done.rewrapped == 1 else 's'} re-encrypted"
    if done.kek_file is None:
        typer.echo(
            f"{keys}: set CERTCTL_MASTER_KEY to the value "
            "printed above wherever the server gets it, then start the server",
            err=True,
        )
        return
    typer.echo(
        f"{keys}; the new key-encryption key is in "
        f"{done.kek_file} (0600): copy it where the old one was kept",
        err=True,
    )
