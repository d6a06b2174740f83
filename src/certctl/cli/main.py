"""The ``certctl`` command: one Typer app, errors mapped to one line and an exit code once.

``certctl cert issue`` with plain options skips Typer (``_issue.parse_fast_argv``): importing
Typer, click and pydantic cost a third of a 1,000-certificate batch. Everything else, and
every usage error of that command too, goes through the Typer app in ``_app.py``.
"""

from __future__ import annotations

import errno
import io
import os
import re
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import typer
    from typer._click.exceptions import UsageError

# Plain (click-style) help: typer's Rich help pulls in markdown-it and half of Rich, which
# doubled `certctl --help`. Set TYPER_USE_RICH=1 for the coloured version.
os.environ.setdefault("TYPER_USE_RICH", "0")

__all__ = ["main", "run"]

_INTERRUPTED = 128 + 2  # SIGINT, as shells report a command Ctrl-C stopped


def __getattr__(name: str) -> typer.Typer:
    # `certctl.cli.main.app` still names the Typer app; it is built only when asked for.
    if name == "app":
        from certctl.cli._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# elasticsearch-certutil options a migrating script passes, and what certctl takes instead.
# Click's own suggestion is by spelling alone: `--days` got "Possible options: --ca, --dns".
_CERTUTIL_OPTIONS = {
    "--days": ("--validity", "certutil's --days N is --validity ND"),
    "--keysize": ("--key-type", "certutil's --keysize N is --key-type rsa-N"),
    "--pass": ("--password-file", "give the password in --password-file FILE"),
    "--ca-pass": ("--ca-password-file", "give the CA key's password in --ca-password-file FILE"),
    "--ca-cert": ("--ca", "--ca takes the CA directory holding ca.crt and ca.key"),
    "--ca-key": ("--ca", "--ca takes the CA directory holding ca.crt and ca.key"),
    "--ca-dn": ("--subject", "certutil's --ca-dn DN is --subject DN"),
    "--name": ("--cn", "certutil's --name is --cn, or --subject for a whole DN"),
    "--multiple": ("--in", "several certificates come from an instances file: --in FILE"),
    "--silent": ("--non-interactive", "certctl http --non-interactive never prompts"),
}
# Where a command has none of those equivalents: what to do instead of click's guess by
# spelling (cert issue --silent got "Possible options: --in").
_CA_FIRST = "certctl ca create --subject DN --out DIR, then --ca DIR"
# The commands whose --subject is the DN of the CA they make, as certutil's --ca-dn is.
_MAKES_A_CA = (" ca create", " issuers create")
_CERTUTIL_ELSEWHERE = {
    "--ca-dn": f"certctl makes the CA first: {_CA_FIRST}",
    "--silent": "this command never prompts: leave --silent out",
}


_SUGGESTED_COMMANDS = 3
# Commands users look for that certctl does by other steps: what to do instead.
_NO_SUCH_COMMAND = {
    ("certctl auth apikeys", "rotate"): "mint the next key (certctl auth apikeys create ACTOR_ID "
    "--name NAME-v2), switch to it, then revoke the old one (certctl auth apikeys revoke "
    "KEY_ID)",
}


def _commands_below(ctx: Any, name: str) -> list[str]:
    """``certctl GROUP NAME`` for each group right under ``ctx``'s command that has ``NAME``."""
    from typer.core import TyperGroup

    group = ctx.command
    if not isinstance(group, TyperGroup):
        return []
    found = []
    for sub_name in group.list_commands(ctx):
        sub = group.get_command(ctx, sub_name)
        if isinstance(sub, TyperGroup) and name in sub.list_commands(ctx):
            found.append(f"{ctx.command_path} {sub_name} {name}")
    return found


def _usage_message(exc: UsageError, args: list[str]) -> str:
    """Click's usage error message, with certctl's equivalent of a certutil option."""
    from typer import _click

    message = exc.format_message()
    unknown = re.match(r"No such command '([^']+)'\.", message)
    if unknown and exc.ctx is not None:
        instead = _NO_SUCH_COMMAND.get((exc.ctx.command_path, unknown[1]))
        if instead is not None:
            return f"No such command '{unknown[1]}': {instead}"
        # `certctl whoami`: the command is one level down (`certctl auth whoami`), which
        # click's suggestion by spelling ('admin-key' for apikeys) does not look for.
        below = _commands_below(exc.ctx, unknown[1])
        if 0 < len(below) <= _SUGGESTED_COMMANDS:
            return f"No such command '{unknown[1]}': did you mean {' or '.join(below)}?"
    if isinstance(exc, _click.exceptions.BadParameter):
        if exc.param is None and exc.param_hint is None:
            # A command's own check of its options together ("--p12 needs a password …"):
            # click's "Invalid value: " would call a combination of options a bad value.
            return exc.message
        opts = exc.param.opts if exc.param is not None else []
        return _plain_words(message, _given(args, opts))
    if not isinstance(exc, _click.exceptions.NoSuchOption) or exc.ctx is None:
        return message
    known = _CERTUTIL_OPTIONS.get(exc.option_name)
    if known is None:
        return message
    option, hint = known
    taken = {opt for param in exc.ctx.command.params for opt in param.opts}
    equivalent = option in taken
    if exc.option_name == "--ca-dn" and not exc.ctx.command_path.endswith(_MAKES_A_CA):
        # Elsewhere --subject is the leaf's, not the new CA's; a command signing with --ca
        # takes a CA made first (certctl http also names a new one with --ca-cn).
        equivalent = False
        if "--ca" not in taken:
            return message
        if "--ca-cn" in taken:
            return f"No such option: --ca-dn (--ca-cn NAME names the new CA; for a DN: {_CA_FIRST})"
    if not equivalent:
        hint = _CERTUTIL_ELSEWHERE.get(exc.option_name, "")
        if not hint:
            return message  # this command has no equivalent: click's suggestion stands
    return f"No such option: {exc.option_name} ({hint})"


# Typer converts option values with pydantic, whose words are for API payloads ("Input should
# be a valid integer, unable to parse string as an integer").
_PYDANTIC_WORDS = (
    ("Input should be a valid integer, unable to parse string as an integer", "not a whole number"),
    ("Input should be a valid integer", "not a whole number"),
    ("Input should be a valid number, unable to parse string as a number", "not a number"),
    ("Input should be less than or equal to", "must be at most"),
    ("Input should be greater than or equal to", "must be at least"),
    ("Input should be less than", "must be less than"),
    ("Input should be greater than", "must be more than"),
    ("Input should be", "must be"),
)


def _plain_words(message: str, value: str | None) -> str:
    """``message`` in our words; a number option's refused ``value`` named, as elsewhere."""
    for pydantic, ours in _PYDANTIC_WORDS:
        if pydantic in message:
            # Only number options get here (never a password): the value may be shown.
            return message.replace(pydantic, f"{value}: {ours}" if value else ours, 1)
    return message


def _given(args: list[str], opts: list[str]) -> str | None:
    """The last value given to an option (``--workers four`` or ``--workers=four``)."""
    value = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in opts and i + 1 < len(args):
            value = args[i + 1]
        elif "=" in arg and arg.split("=", 1)[0] in opts:
            value = arg.split("=", 1)[1]
    return value


def _fail(message: str, code: int) -> int:
    # One line on stderr, whatever the message held: no tracebacks, no multi-line dumps. A
    # message may quote a server's problem detail or a stored name: a terminal escape in it
    # shows as \x1b, as in the list tables, instead of acting on the user's terminal.
    from certctl.cli._listing import printable

    line = printable(" ".join(message.split()))
    sys.stderr.write(f"certctl: error: {line}\n")
    return code


def _fail_after_keypress(message: str, code: int) -> int:
    """``_fail`` for Ctrl-C or Ctrl-D: on a line of its own on a terminal."""
    # The terminal echoes ^C where the cursor is, after a wizard's prompt: the error ran on
    # behind it, "CA common name (Elasticsearch HTTP CA): ^Ccertctl: error: interrupted".
    try:
        on_terminal = sys.stderr.isatty()
    except ValueError:  # a closed stderr
        on_terminal = False
    if on_terminal:
        sys.stderr.write("\n")
    return _fail(message, code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 failure, 2 usage error)."""
    return _run(sys.argv[1:] if argv is None else list(argv))[0]


def _run(args: list[str]) -> tuple[int, bool]:
    """The exit code, and whether the Typer-free ``cert issue`` route ran the command."""
    code, fast = _run_command(args)
    return _flush_stdout(code), fast


def _flush_stdout(code: int) -> int:
    """``code``, or 1 when stdout's last output cannot be written (quietly: its reader left)."""
    # A table is one write that stays in the buffer; flushed only at the interpreter's exit,
    # a failure printed "Exception ignored … BrokenPipeError" and exited 120.
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as exc:
        _quiet_stdio()  # else the interpreter's own last flush fails the same way
        if code == 0 and exc.errno != errno.EPIPE:
            return _fail(f"cannot write to stdout: {exc.strerror or exc}", 1)
        # `certctl certs list | head -0`: nobody to tell; status 1, as Typer says it.
        return code or 1
    return code


def _buffer_unbuffered_stdout() -> None:
    """Give stdout a line buffer when PYTHONUNBUFFERED (``python -u``) took its buffer away."""
    # Common in container images. Unbuffered, a write that fails (a full disk behind `> file`)
    # keeps nothing to retry, so `_stdout_fails` could not tell it from a failed file write
    # and the user read a bare "No space left on device". Line buffered, each line still
    # shows as soon as it is printed (Rich and the key printer flush themselves).
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper) and isinstance(out.buffer, io.FileIO):
        # sys.__stdout__ keeps the old wrapper alive: it never closes the descriptor under us.
        sys.stdout = io.TextIOWrapper(
            io.BufferedWriter(out.buffer),
            encoding=out.encoding,
            errors=out.errors,
            line_buffering=True,
        )


def _stdout_fails() -> bool:
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError:
        return True
    return False


def _run_command(args: list[str]) -> tuple[int, bool]:
    from certctl.cli._common import UsageProblem
    from certctl.errors import CertctlError

    fast = False
    try:
        code = _run_fast(args)
        fast = code is not None
        return (_run_typer(args) if code is None else code), fast
    except UsageProblem as exc:
        # Raised outside a command's invoke (which makes it click's usage error): still one.
        return _fail(exc.message, 2), fast
    except CertctlError as exc:
        return _fail(exc.detail, 1), fast
    except KeyboardInterrupt:
        return _fail_after_keypress("interrupted", 130), fast
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        if not where and _stdout_fails():
            # Typer's echo flushes each line: a full disk behind `> file` fails in the command.
            where = "cannot write to stdout: "
        return _fail(f"{where}{exc.strerror or exc}", 1), fast
    except Exception as exc:
        if os.environ.get("CERTCTL_DEBUG"):
            raise
        return _fail(
            f"internal error ({type(exc).__name__}: {exc}); set CERTCTL_DEBUG=1 for details", 1
        ), fast


def _run_fast(args: list[str]) -> int | None:
    """``cert issue`` without Typer; None when Typer must handle (or report on) the command."""
    if args[:2] != ["cert", "issue"]:
        return None  # every other command: not even the import below
    from certctl.cli._common import UsageProblem
    from certctl.cli._issue import issue, parse_fast_argv

    options = parse_fast_argv(args)
    if options is None:
        return None
    try:
        issue(options)
    except UsageProblem:
        # Nothing is written before options are checked: Typer runs the command again and
        # reports the problem in its own words (exit status 2).
        return None
    except KeyboardInterrupt:
        return _fail_after_keypress("interrupted", 130)  # as the Typer route says it (_run_typer)
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        # As Typer does: stdout closed early (`certctl … | head -0`) ends quietly, status 1.
        _quiet_stdio()
        raise SystemExit(1) from None
    return 0


def _quiet_stdio() -> None:
    from certctl.files import discard_stdout

    discard_stdout()


def _run_typer(args: list[str]) -> int:
    import typer
    from typer import _click

    from certctl.cli._app import app

    try:
        result = app(args=args, prog_name="certctl", standalone_mode=False)
    except _click.exceptions.NoArgsIsHelpError as exc:
        # `certctl`, `certctl certs` …: the help, as written, on stderr with status 2 (what
        # click does), not folded into one error line like the usage errors below.
        sys.stderr.write(exc.format_message() + "\n")
        return 2
    except _click.exceptions.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        return _fail(_usage_message(exc, args) + hint, 2)
    except _click.exceptions.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code or 1)
    except typer.Abort as exc:
        if isinstance(exc.__context__, EOFError):
            # Ctrl-D at a prompt (the wizard raises Abort while handling the EOFError) echoes
            # nothing: the cursor is still behind the prompt. A "no" answered with Enter
            # left it at the start of a line: no blank line then.
            return _fail_after_keypress("aborted", 1)
        return _fail("aborted", 1)
    if result == _INTERRUPTED:
        # Typer turns Ctrl-C into a silent typer.Exit(130) (no command returns 130 itself):
        # one line says the command did not finish, e.g. that a request may have gone out.
        return _fail_after_keypress("interrupted", _INTERRUPTED)
    return result if isinstance(result, int) else 0


def _stdout_without_reader() -> TextIO:
    """A stdout whose every write fails as a pipe's does when its reader has gone."""
    # stdout closed (`certctl … >&-`): Python sets sys.stdout to None, and a print was an
    # internal error (AttributeError) or silently dropped with status 0. A pipe nobody reads
    # makes it what `certctl … | head -0` is.
    read_end, write_end = os.pipe()
    os.close(read_end)
    return open(write_end, "w", encoding="utf-8")


def main() -> None:
    """Console-script entry point."""
    if sys.stdout is None:
        sys.stdout = _stdout_without_reader()
    else:
        _buffer_unbuffered_stdout()
    if sys.stderr is None:
        # stderr closed (`certctl … 2>&-`): a warning or an error line was an AttributeError
        # that failed the command silently. Discarded, as 2>/dev/null would; the exit
        # status still tells what happened.
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # kept for the process
    code, fast = _run(sys.argv[1:])
    if fast:
        # The Typer-free route leaves no thread, child process or atexit work behind, and its
        # files are committed: skip the interpreter's teardown (freeing every module and
        # object, ~25 ms after a 1,000-certificate batch), as a C program would just exit.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    sys.exit(code)
