"""Every option's help states its default once: in its text or as Typer's ``[default: …]``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer import _click
from typer.core import TyperGroup

from certctl.cli._app import app
from certctl.cli.main import run
from certctl.pki import KeyType


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


def test_the_commands_beside_a_server_name_its_settings_as_serve_does() -> None:
    # `admin-key` and `kek rotate` read the server's settings: --config showed Typer's
    # "[env var: CERTCTL_CONFIG]" (serve says "env CERTCTL_CONFIG" in its text) and
    # --database-url did not say that SQLite in the data dir is the default.
    shown = dict(_option_help(typer.main.get_command(app), ["certctl"]))
    settings = ("--config", "--data-dir", "--database-url")
    for command in ("certctl admin-key", "certctl kek rotate"):
        texts = {
            setting: text
            for option, text in shown.items()
            for setting in settings
            if option.startswith(f"{command} ") and setting in option.split()
        }
        assert len(texts) == 3, (command, texts)
        lacking = [
            text
            for text in texts.values()
            if "[env var:" in text
            or not re.search(r"\bdefault\b", text, re.I)
            or not re.search(r"\benv CERTCTL_[A-Z_]+\b", text)
        ]
        assert lacking == [], command
    assert not [f"{o}: {t}" for o, t in shown.items() if "[env var:" in t]


def test_the_top_level_help_says_how_to_see_an_internal_errors_traceback() -> None:
    # An internal error is one line ("set CERTCTL_DEBUG=1 for details"); the variable was in
    # docs/configuration.md only, not in any --help.
    command = typer.main.get_command(app)
    context = command.context_class(command, info_name="certctl")
    formatter = context.make_formatter()
    # Click's own layout, as `certctl --help` shows it (main sets TYPER_USE_RICH off; this
    # process may not have).
    super(TyperGroup, command).format_help(context, formatter)
    text = " ".join(formatter.getvalue().split())
    assert "CERTCTL_DEBUG=1" in text
    assert "traceback" in text


def test_every_reason_option_names_its_default_and_ends_its_sentence() -> None:
    # certs revoke --reason and crl create --reason named no default, issuers revoke's said
    # "(default unspecified)" and ended without a full stop; crl create's "Reason for all
    # entries" was wrong for those --from keeps. certs list --expiring-within said "e.g. 30D."
    # and nothing of what it selects.
    shown = _option_help(typer.main.get_command(app), ["certctl"])
    reasons = {o.removesuffix(" TEXT"): t for o, t in shown if o.endswith(" --reason TEXT")}
    assert set(reasons) == {
        "certctl certs revoke --reason",
        "certctl issuers revoke --reason",
        "certctl crl create --reason",
        "certctl acme accounts deactivate --reason",
    }, reasons
    for option, text in reasons.items():
        assert "(default: unspecified" in text, option
        assert text.endswith("."), option
    assert "--revoked entries" in reasons["certctl crl create --reason"]
    [expiring] = [t for o, t in shown if o.startswith("certctl certs list --expiring-within ")]
    # Not "Only active certificates": --status names active, expiring and expired, and the
    # filter lists the last two as well (tests/api/test_certificates.py::test_list_filters).
    assert "active" not in expiring, expiring
    assert "neither revoked nor renewed" in expiring, expiring
    assert "expired ones too" in expiring, expiring


def test_no_option_names_a_python_type_for_its_value() -> None:
    # `ca create --path-length <int range>` read like a type, not like a value to give.
    shown = _option_help(typer.main.get_command(app), ["certctl"])
    odd = [option for option, _ in shown if "range>" in option]
    assert odd == []
    assert any(option.endswith("ca create --path-length N") for option, _ in shown)
    # "--revoked REVOKED" repeated the option's name where the value is a serial number.
    assert any(option.endswith("crl create --revoked SERIAL") for option, _ in shown)


def test_path_length_states_its_range_once() -> None:
    # "Intermediates below this CA, 0-10 (…). [0<=x<=10]": metavar N dropped "<int range>",
    # but click still appended its own notation of the range the text had just given.
    shown = _option_help(typer.main.get_command(app), ["certctl"])
    texts = {option: text for option, text in shown if option.endswith("--path-length N")}
    assert sorted(texts) == [
        "certctl ca create --path-length N",
        "certctl issuers create --path-length N",
    ]
    for text in texts.values():
        assert "0-10" in text, text
        assert "<=" not in text, text


def test_every_key_type_option_lists_the_key_types_as_the_error_does(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cert issue, csr create, http and certs issue said "rsa-2048|3072|4096", ca create and
    # issuers create "rsa-2048, rsa-3072, rsa-4096", and a bad value's error the latter.
    listed = ", ".join(k.value for k in KeyType)
    shown = _option_help(typer.main.get_command(app), ["certctl"])
    texts = {o: t for o, t in shown if " --key-type " in f"{o} "}
    assert sorted(o.split(" --key-type")[0] for o in texts) == [
        "certctl ca create",
        "certctl cert issue",
        "certctl certs issue",
        "certctl csr create",
        "certctl http",
        "certctl issuers create",
    ]
    for option, text in texts.items():
        assert f": {listed}. [default: ec-p256]" in text, option
        assert "|" not in text, option
    monkeypatch.chdir(tmp_path)
    assert run(["csr", "create", "--cn", "x", "--out", "o", "--key-type", "rsa-1"]) == 2
    assert f"rsa-1: key type not allowed (choose one of {listed})" in capsys.readouterr().err


def _every_help(command: Any, path: list[str], parent: Any = None) -> dict[str, str]:
    """``certctl … --help`` of every command and group, as main shows it (Click's layout)."""
    context = command.context_class(command, info_name=path[-1], parent=parent)
    formatter = context.make_formatter()
    _click.Command.format_help(command, context, formatter)
    found = {" ".join(path): formatter.getvalue()}
    for name, sub in (getattr(command, "commands", None) or {}).items():
        found |= _every_help(sub, [*path, name], context)
    return found


def test_every_value_placeholder_is_an_upper_case_word() -> None:
    # Typer's own were Python types ("--out <path>", "--ca-cn <str>", "FILE <path>" for an
    # argument), beside "--dns DNS", "--out FILE" and the usage line's and README's words.
    helps = _every_help(typer.main.get_command(app), ["certctl"])
    assert len(helps) > 50  # every subcommand reached
    typed = {
        f"{command}: {line.strip()}"
        for command, text in helps.items()
        for line in text.splitlines()
        if re.search(r"<(str|path|int|float|file|directory)>", line)
    }
    assert typed == set()
    placeholders = {
        line.split()[1 if line.split()[0].startswith("--") else 2]
        for text in helps.values()
        for line in text.split("Options:\n", 1)[-1].splitlines()
        # An option's first line: "  --ca PATH  Sign with …", "  -o, --out FILE  Zip …".
        if re.match(r"  (-\w, )?--[\w-]+ [^- ]\S*(  |$)", line)
    }
    assert {p for p in placeholders if not p.isupper()} == {"table|json"}  # the values
    assert {"TEXT", "PATH", "INTEGER", "FILE", "DNS", "N"} <= placeholders
    inspect_help = helps["certctl inspect"]
    assert "\n  FILE  PEM, DER, PKCS#12 or PKCS#7" in inspect_help
    assert "--password-file PATH " in inspect_help
    assert "-o, --out FILE " in helps["certctl http"]


# `certctl ca create --help` in a fresh process, after the imports given (typer or the app
# module before certctl.cli.main, which sets TYPER_USE_RICH: a test file importing
# certctl.cli._app first made every later help in that pytest worker a Rich one).
_HELP_AFTER = """
import sys
{imports}
from certctl.cli.main import run
sys.exit(run(["ca", "create", "--help"]))
"""


def _help_after(imports: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CERTCTL_", "TYPER_"))}
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_AFTER.format(imports=imports)],
        env=clean | {"COLUMNS": "100"} | env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    "imports", ["import typer", "import certctl.cli._app", "from certctl.cli._app import app"]
)
def test_help_is_plain_whatever_was_imported_first(imports: str) -> None:
    plain = _help_after("", {})
    assert plain.startswith("Usage: certctl ca create [OPTIONS]\n")
    assert "  --cn TEXT " in plain
    assert "│" not in plain
    assert _help_after(imports, {}) == plain
    # Rich's layout only when asked for, as main.py's comment and the README say.
    rich = _help_after(imports, {"TYPER_USE_RICH": "1"})
    assert "╭─ Options " in rich, rich
    assert _help_after(imports, {"TYPER_USE_RICH": "0"}) == plain


def test_rich_help_shows_no_python_types_either() -> None:
    # With TYPER_USE_RICH=1 an argument read "FILE <path>" and every flag "--json <bool>",
    # "--help -h <bool>", where the plain help writes FILE and --json alone.
    code = "from certctl.cli.main import main; main()"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CERTCTL_", "TYPER_"))}
    shown = {}
    for command in ("inspect", "cert issue", "verify", "services outputs"):
        proc = subprocess.run(
            [sys.executable, "-c", code, *command.split(), "--help"],
            env=clean | {"COLUMNS": "120", "TYPER_USE_RICH": "1"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
        assert "╭─ Options " in proc.stdout
        assert re.findall(r"<\w+>", proc.stdout) == [], proc.stdout
        shown[command] = proc.stdout
    assert re.search(r"│ \*\s+FILE\s+PEM, DER", shown["inspect"]), shown["inspect"]
    assert re.search(r"│\s+--json\s+Print JSON", shown["inspect"]), shown["inspect"]
    assert re.search(r"│\s+--dns\s+DNS\s", shown["cert issue"]), shown["cert issue"]
