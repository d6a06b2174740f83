"""The Typer application behind ``certctl``: every command, its help and its usage errors.

Imported through ``main``, which first sets ``TYPER_USE_RICH`` (plain help).
"""

from __future__ import annotations

import typer
from typer import _click
from typer.core import TyperArgument, TyperCommand, TyperGroup

from certctl import __version__
from certctl.cli import (
    _api,
    auth,
    ca,
    cert,
    certs,
    crl,
    csr,
    http,
    inspect,
    issuers,
    serve,
    services,
    verify,
)

__all__ = ["app"]

# `certctl --help` lists the commands in these groups, in this order (the README's): Typer
# alone put every plain command before every group, so the list began with `http`.
_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Offline PKI (files only)", ("ca", "cert", "csr", "crl", "http", "inspect", "verify")),
    ("Server (on its host)", ("serve", "admin-key", "kek")),
    ("Clients of a server", ("auth", "certs", "issuers", "services", "apply")),
)


class _SectionedGroup(TyperGroup):
    """The root group: its commands under the headings of ``_SECTIONS``."""

    def list_commands(self, ctx: _click.Context) -> list[str]:
        ordered = [name for _, names in _SECTIONS for name in names if name in self.commands]
        return ordered + [name for name in self.commands if name not in ordered]

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        placed = {name for _, section in _SECTIONS for name in section}
        sections = [*_SECTIONS, ("Other commands", tuple(n for n in names if n not in placed))]
        # One column width for every section, so the summaries line up down the page.
        width = max(len(name) for name in names)
        limit = formatter.width - 6 - width
        for title, section in sections:
            rows = []
            for name in section:
                command = self.get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name.ljust(width), command.get_short_help_str(limit)))
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class _ClickUsageCommand(TyperCommand):
    """A command whose usage line names its arguments as Click and man pages do.

    Typer 0.29 wraps a required argument in braces (``certctl auth apikeys create [OPTIONS]
    {ACTOR_ID}``), where every other tool, certctl's own messages and its README write
    ``ACTOR_ID``; an optional one stays ``[NAME]``, and one taking several ends in ``...``.
    """

    def collect_usage_pieces(self, ctx: _click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.display_name_raw  # its metavar, as the Arguments section shows
                name = name if param.required else f"[{name}]"
                pieces.append(name if param.nargs == 1 else f"{name}...")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


def _click_usage(typer_app: typer.Typer) -> None:
    """Make every command of ``typer_app`` and of its groups a ``_ClickUsageCommand``.

    ``cls`` is ``app.command``'s own parameter; set here, where the app is assembled, it
    reaches each command of every module, and a command added later without it too.
    """
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):  # Typer's default, not a command's own class
            command.cls = _ClickUsageCommand
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _click_usage(group.typer_instance)


app = typer.Typer(
    cls=_SectionedGroup,
    name="certctl",
    help="Self-hosted certificate authority and TLS control plane.\n\n"
    "Offline PKI: create CAs, issue server and client certificates, CSRs, PKCS#12 "
    "keystores and certutil-style HTTP bundles.\n\n"
    "Server: serve runs one; auth, certs, issuers, services and apply are its clients. Each "
    # The client groups' own text: before, this one named neither CERTCTL_TIMEOUT nor when
    # http:// is refused.
    + _api.ENV_HELP[0].lower()
    + _api.ENV_HELP[1:],
    # Where a user who hit "internal error (…)" looks: before, docs/configuration.md alone
    # named the variable.
    epilog="An error is one line on stderr. An internal error (a bug) shows its traceback "
    "with CERTCTL_DEBUG=1, for a bug report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(ca.app, name="ca")
app.add_typer(cert.app, name="cert")
app.add_typer(csr.app, name="csr")
app.add_typer(crl.app, name="crl")
app.command("http", short_help="A certutil-style zip: certificates, CA, READMEs, samples.")(
    http.http_command
)
app.command("inspect", short_help="Show what a certificate, key, CSR, CRL or PKCS#12 holds.")(
    inspect.inspect_command
)
app.command("verify")(verify.verify_command)
app.command("serve", short_help="Run the control-plane server (HTTPS by default).")(
    serve.serve_command
)
app.command("admin-key", short_help="Mint an admin API key when every one is lost.")(
    serve.admin_key_command
)
app.add_typer(
    serve.kek_app, name="kek", short_help="Rotate the key-encryption key of the stored keys."
)
app.add_typer(auth.auth_app, name="auth")
app.add_typer(certs.certs_app, name="certs")
app.add_typer(issuers.issuers_app, name="issuers")
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


_click_usage(app)
