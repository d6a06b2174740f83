"""The ``certctl`` command: one Typer app, errors mapped to one line and an exit code once."""

from __future__ import annotations

import os
import sys

# Plain (click-style) help: typer's Rich help pulls in markdown-it and half of Rich, which
# doubled `certctl --help`. Set TYPER_USE_RICH=1 for the coloured version.
os.environ.setdefault("TYPER_USE_RICH", "0")

import typer
from typer import _click

from certctl import __version__
from certctl.cli import ca, cert, client, crl, csr, http, inspect, serve, services, verify

__all__ = ["app", "main"]

app = typer.Typer(
    name="certctl",
    help="Self-hosted certificate authority and TLS control plane.\n\n"
    "Offline PKI: create CAs, issue server and client certificates, CSRs, PKCS#12 "
    "keystores and certutil-style HTTP bundles.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(ca.app, name="ca")
app.add_typer(cert.app, name="cert")
app.add_typer(csr.app, name="csr")
app.add_typer(crl.app, name="crl")
app.command("http")(http.http_command)
app.command("inspect")(inspect.inspect_command)
app.command("verify")(verify.verify_command)
app.command("serve")(serve.serve_command)
app.add_typer(client.auth_app, name="auth")
app.add_typer(client.certs_app, name="certs")
app.command("apply")(services.apply_command)
app.add_typer(services.services_app, name="services")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"certctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Self-hosted certificate authority and TLS control plane."""


def _fail(message: str, code: int) -> int:
    # One line on stderr, whatever the message held: no tracebacks, no multi-line dumps.
    line = " ".join(message.split())
    sys.stderr.write(f"certctl: error: {line}\n")
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 failure, 2 usage error)."""
    from certctl.errors import CertctlError

    try:
        result = app(args=argv, prog_name="certctl", standalone_mode=False)
    except _click.exceptions.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        return _fail(exc.format_message() + hint, 2)
    except _click.exceptions.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code or 1)
    except typer.Abort:
        return _fail("aborted", 1)
    except CertctlError as exc:
        return _fail(exc.detail, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 1)
    except Exception as exc:
        if os.environ.get("CERTCTL_DEBUG"):
            raise
        return _fail(
            f"internal error ({type(exc).__name__}: {exc}); set CERTCTL_DEBUG=1 for details", 1
        )
    return result if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
