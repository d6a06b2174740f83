"""The Typer application behind ``certctl``: every command, its help and its usage errors.

Imported through ``main``, which first sets ``TYPER_USE_RICH`` (plain help).
"""

from __future__ import annotations

import typer

from certctl import __version__
from certctl.cli import ca, cert, client, crl, csr, http, inspect, serve, services, verify

__all__ = ["app"]

app = typer.Typer(
    name="certctl",
    help="Self-hosted certificate authority and TLS control plane.\n\n"
    "Offline PKI: create CAs, issue server and client certificates, CSRs, PKCS#12 "
    "keystores and certutil-style HTTP bundles.\n\n"
    "Server: serve runs one; auth, certs, services and apply are its clients. They read "
    f"CERTCTL_URL (default {client.DEFAULT_URL}), CERTCTL_API_KEY (the API key) and "
    "CERTCTL_CA_CERT (the CA file that signed the server's certificate, e.g. "
    "certctl-data/tls/ca.crt); with tls.client-auth on the server, they present "
    "CERTCTL_CLIENT_CERT and CERTCTL_CLIENT_KEY (PEM files).",
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
app.command("admin-key")(serve.admin_key_command)
app.add_typer(serve.kek_app, name="kek")
app.add_typer(client.auth_app, name="auth")
app.add_typer(client.certs_app, name="certs")
app.command("apply", help=services.APPLY_HELP)(services.apply_command)
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
