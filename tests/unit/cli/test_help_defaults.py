"""Every option's help states its default once: in its text or as Typer's ``[default: …]``."""

from __future__ import annotations

import re
from typing import Any

import typer

from certctl.cli._app import app


def _option_help(command: Any, path: list[str], parent: Any = None) -> list[tuple[str, str]]:
    """(command and option, help text as shown) for every option of every command."""
    context = command.context_class(command, info_name=path[-1], parent=parent)
    found = []
    for name, sub in (getattr(command, "commands", None) or {}).items():
        found += _option_help(sub, [*path, name], context)
    for param in command.params:
        record = param.get_help_record(context)
        if record is not None:
            found.append((f"{' '.join(path)} {record[0]}", " ".join(record[1].split())))
    return found


def test_no_option_states_its_default_twice() -> None:
    # `ca create --key-type` read "ec-p256 (default), ec-p384, … [default: ec-p256]".
    shown = _option_help(typer.main.get_command(app), ["certctl"])
    assert len(shown) > 100  # the walk reached the subcommands
    twice = [
        f"{option}: {text}"
        for option, text in shown
        if "[default:" in text and re.search(r"\bdefault\b", text.split("[default:")[0], re.I)
    ]
    assert twice == []


def test_every_serve_option_names_its_default_and_its_environment_variable() -> None:
    # A new user reads `certctl serve --help` alone: --database-url did not say that SQLite in
    # the data dir is the default, --allow-insecure neither what it allows nor its default,
    # --public-url what happens without it, --config its variable in another form.
    shown = _option_help(typer.main.get_command(app), ["certctl"])
    serve = [(o, t) for o, t in shown if o.startswith("certctl serve ") and "--help" not in o]
    assert len(serve) == 9, serve
    lacking = [
        f"{option}: {text}"
        for option, text in serve
        if not re.search(r"\bdefault\b", text, re.I)
        or not re.search(r"\bCERTCTL_[A-Z_]+\b|\bno environment variable\b", text)
    ]
    assert lacking == []
