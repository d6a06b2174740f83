"""``-`` for standard input in the password-file options, given to one option at most.

``printf %s "$PW" | certctl cert issue … --password-file -`` keeps the password off the
command line and out of files, as ``openssl -passin stdin`` and ``docker login
--password-stdin`` do. Standard input holds one password: two options saying ``-`` are a
usage error before anything is read, not a second option that finds it empty.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["STDIN_HELP", "password_file_option"]

STDIN_HELP = " '-': read it from standard input (one line, as in a file)."

# ctx.meta is shared by every context of one invocation: the option that took stdin.
_TAKEN = "certctl.stdin"


def password_file_option(
    ctx: typer.Context, param: typer.CallbackParam, value: Path | None
) -> Path | None:
    """A password-file option's value; ``-`` claims standard input for it (a Typer callback).

    Raises:
        typer.BadParameter: another option of the command already said ``-``.
    """
    if value is None or str(value) != "-":
        return value
    option = param.opts[0] if param.opts else str(param.name)
    taken = ctx.meta.get(_TAKEN)
    if taken is not None and taken != option:
        raise typer.BadParameter(
            f"'-' (standard input) is already given to {taken}: standard input holds one "
            "password, give the other in a file"
        )
    ctx.meta[_TAKEN] = option
    return value
