"""The Typer application behind ``certctl``: every command, its help and its usage errors.

Its help is Click's plain layout unless ``TYPER_USE_RICH`` asks for Rich's (``_markup_mode``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import typer
from typer import _click
from typer.core import MarkupMode, TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.utils import parse_boolean_env_var

from certctl import __version__
from certctl.cli import (
    _api,
    acme,
    audit,
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
from certctl.cli._common import UsageProblem

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["app"]

# `certctl --help` lists the commands in these groups, in this order (the README's): Typer
# alone put every plain command before every group, so the list began with `http`.
_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Offline PKI (files only)", ("ca", "cert", "csr", "crl", "http", "inspect", "verify")),
    ("Server (on its host)", ("serve", "admin-key", "kek")),
    ("Clients of a server", ("auth", "certs", "issuers", "services", "apply", "audit", "acme")),
)


# U+2011, a hyphen no line breaks at: see _HelpFormatter.
_NO_BREAK_HYPHEN = "\u2011"


class _HelpFormatter(_click.HelpFormatter):
    """Click's help layout, wrapped at spaces only.

    Click's wrapper also breaks a line after a hyphen: "--password-" ended one line and
    "file" began the next, so an option could not be read (or searched for) whole, nor could
    "<data-dir>", "comma-separated" or "client-trust". Each hyphen of the text wrapped is a
    non-breaking one while it is wrapped, and a plain one again on the page.
    """

    def write_text(self, text: str) -> None:
        super().write_text(text.replace("-", _NO_BREAK_HYPHEN))

    def write_dl(
        self, rows: Sequence[tuple[str, str]], col_max: int = 30, col_spacing: int = 2
    ) -> None:
        # Only the help is wrapped; the first column (option names) never is.
        kept = [(term, text.replace("-", _NO_BREAK_HYPHEN)) for term, text in rows]
        super().write_dl(kept, col_max, col_spacing)

    def getvalue(self) -> str:
        return super().getvalue().replace(_NO_BREAK_HYPHEN, "-")


# Typer 0.29 shows an option's value as its Python type, lower-case in brackets ("--out
# <path>", "--ca-cn <str>"), beside the names given where a word says more ("--dns DNS",
# "--out FILE", "--path-length N") and the upper-case words of the usage line, the README
# and the messages ("give --password-file FILE"). One style: upper case, Click's words for
# an option that names none of its own.
_METAVARS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH"}


class _NamedArgument(TyperArgument):
    """An argument shown by its name alone ("FILE", not "FILE <path>"), in either help layout."""

    def display_type_rich(self, ctx: _click.Context) -> str | None:
        return None


def _upper_case_metavars(params: Sequence[_click.Parameter]) -> None:
    """Give each option taking a value, and naming no metavar of its own, Click's word.

    A flag gets an empty one (Rich's help showed "--json <bool>"; Click's shows none), and an
    argument its name alone (``_NamedArgument``: Typer makes them, with no class to choose).
    """
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _NamedArgument
        if not isinstance(param, TyperOption) or param.metavar is not None:
            continue
        if param.is_flag or param.count:
            param.metavar = ""
            continue
        described = param.type_descriptor
        if described.is_choice or described.is_tuple:
            continue  # "a|b", "a,b": their own notation, kept
        if described.is_list:  # a repeated option: its one value's word ("--crl PATH")
            (item,) = get_args(described.annotation)
            label = "path" if item is Path else getattr(item, "__name__", "")
        else:
            label = described.path_type if described.is_path else param.bare_type()
        param.metavar = _METAVARS.get(label)


class _HelpContext(_click.Context):
    """A context whose help is laid out by ``_HelpFormatter``."""

    formatter_class = _HelpFormatter


def _flag_help_option(option: TyperOption | None) -> TyperOption | None:
    """``--help`` as ``_upper_case_metavars`` makes any flag: no "<bool>" in Rich's help."""
    if option is not None and option.metavar is None:
        option.metavar = ""
    return option


class _HelpGroup(TyperGroup):
    """A command group whose help is laid out by ``_HelpFormatter``."""

    context_class = _HelpContext

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _upper_case_metavars(self.params)

    def get_help_option(self, ctx: _click.Context) -> TyperOption | None:
        return _flag_help_option(super().get_help_option(ctx))


class _SectionedGroup(_HelpGroup):
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
    Its help is laid out by ``_HelpFormatter``.
    """

    context_class = _HelpContext

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _upper_case_metavars(self.params)

    def get_help_option(self, ctx: _click.Context) -> TyperOption | None:
        return _flag_help_option(super().get_help_option(ctx))

    def invoke(self, ctx: _click.Context) -> Any:
        # A usage error the command finds itself (a bad --validity, options that exclude
        # each other): click's, as those click finds, so it exits 2 with the help hint.
        try:
            return super().invoke(ctx)
        except UsageProblem as exc:
            raise _click.exceptions.BadParameter(
                exc.message, ctx=ctx, param_hint=exc.param_hint
            ) from None

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


def _certctl_help(typer_app: typer.Typer) -> None:
    """Make every command of ``typer_app`` a ``_ClickUsageCommand``, every group a ``_HelpGroup``.

    ``cls`` is ``app.command``'s and ``app.add_typer``'s own parameter; set here, where the
    app is assembled, it reaches each command and group of every module, and one added
    later without it too.
    """
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):  # Typer's default, not a command's own class
            command.cls = _ClickUsageCommand
    for group in typer_app.registered_groups:
        if group.typer_instance is None:
            continue
        # Neither add_typer nor typer.Typer() chose a class (Typer's unset values are
        # placeholders, not classes): TyperGroup, the default, becomes _HelpGroup.
        if not isinstance(group.cls, type) and not isinstance(group.typer_instance.info.cls, type):
            group.cls = _HelpGroup
        _certctl_help(group.typer_instance)


def _markup_mode() -> MarkupMode:
    """Rich's help layout when ``TYPER_USE_RICH`` asks for it, else None: Click's plain one.

    Typer reads the variable once, when it is first imported, and main sets it to 0 before
    that; but typer imported earlier (this module imported before main, as a test file may)
    turned Rich's help on for the whole process. The app's own setting is read whatever the
    order; each command and group takes the root app's.
    """
    return "rich" if parse_boolean_env_var(os.environ.get("TYPER_USE_RICH"), False) else None


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
    rich_markup_mode=_markup_mode(),
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
app.add_typer(audit.audit_app, name="audit")
app.add_typer(acme.acme_app, name="acme")


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


_certctl_help(app)
