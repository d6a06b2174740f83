"""The list commands' ``--output/-o``: a readable table (Rich) or the server's JSON unchanged.

As ``gh`` does, the default is a table on a terminal and JSON otherwise, so a script piping
``certctl certs list`` into ``jq`` gets exactly the answer it always got.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "OUTPUT_HELP",
    "Column",
    "check_output",
    "date_and_days",
    "is_past",
    "next_page",
    "no_empty_filter",
    "print_table",
    "printable",
    "timestamp",
    "wants_table",
]

OUTPUT_HELP = (
    "table or json. Default: table when stdout is a terminal, else json (the server's answer "
    "as is, for jq and scripts)."
)


_OUTPUTS = ("table", "json")


def no_empty_filter(filters: Mapping[str, str | None]) -> None:
    """Refuse a filter option given empty (``--actor "$WHO"`` with the variable unset).

    The server refuses it too ("leave it out for no filter"): said here, before a request,
    it is a usage error (exit 2), as any other value refused before the work, not its 400.
    """
    import typer

    for option, value in filters.items():
        if value == "":
            raise typer.BadParameter("empty (leave it out for no filter)", param_hint=option)


def next_page(
    noun: str,
    command: Sequence[str],
    filters: Mapping[str, str | None],
    limit: int,
    output: str | None,
) -> Callable[[str], str]:
    """The table's last line for a next page: ``command`` again with its filters and a cursor.

    The same filters, limit and output: a cursor continues the listing it came from.
    """
    import shlex

    words = ["certctl", *command]
    for option, value in filters.items():
        words += [option, value] if value is not None else []
    words += ["--limit", str(limit)] if limit != 50 else []
    words += ["-o", output] if output is not None else []

    def more(next_cursor: str) -> str:
        return f"more {noun}: {shlex.join([*words, '--cursor', next_cursor])}"

    return more


def check_output(value: str | None) -> str | None:
    """``--output`` checked (a Typer callback): table or json, any case; None when not given."""
    if value is None:
        return None
    if value.strip().lower() not in _OUTPUTS:
        import typer

        raise typer.BadParameter(f"{value}: expected table or json")
    return value.strip().lower()


@dataclass(frozen=True)
class Column:
    """A table column: its header, how a cell is drawn from an item (and the time now).

    ``key``: the value a user copies into the next command (an id): never folded, however
    narrow the terminal; the other columns wrap at spaces instead.

    ``label``: a name or subject, shown in full by ``get`` and ``-o json``: a word too long for
    the column ends in "…", not broken in two ("CN=Elastic…", never "CN=Elastics" over
    "earch", which reads as two words). The other columns (messages, serials, dates) fold
    such a word: cut, a message or serial would lose what the user came to read.
    """

    header: str
    cell: Callable[[dict[str, Any], datetime], str]
    key: bool = False
    label: bool = False


def wants_table(output: str | None) -> bool:
    """Whether to print a table: asked for, or not asked and stdout is a terminal."""
    if output is not None:
        return output == "table"
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # no stdout, or a closed one
        return False


def _parse(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def is_past(value: object, now: datetime) -> bool:
    """Whether the API time ``value`` (ISO 8601) is at or before ``now``; False when unset."""
    when = _parse(value)
    return when is not None and when <= now


def _days(count: int) -> str:
    return f"{count} day" if count == 1 else f"{count} days"


def date_and_days(value: object, now: datetime, *, none: str = "-") -> str:
    """``2027-03-04 (in 89 days)``, ``2026-01-02 (expired 3 days ago)``; ``none`` when unset."""
    when = _parse(value)
    if when is None:
        return none if value is None else str(value)
    left = when - now
    if left.total_seconds() <= 0:
        ago = (now - when).days
        relative = "expired today" if ago == 0 else f"expired {_days(ago)} ago"
    elif left.days == 0:
        relative = "in less than a day"
    else:
        relative = f"in {_days(left.days)}"
    return f"{when:%Y-%m-%d} ({relative})"


def timestamp(value: object, *, none: str = "-") -> str:
    """``2026-12-04 14:05 UTC``; ``none`` when unset."""
    when = _parse(value)
    if when is None:
        return none if value is None else str(value)
    return f"{when:%Y-%m-%d %H:%M} UTC"


def printable(text: str) -> str:
    """``text`` with the characters a terminal would act on shown escaped, as ascii() does."""
    # A certificate's common name is the requester's text: a terminal escape sequence in it
    # must show as \x1b, not act on the user's terminal.
    if text.isprintable():  # nearly always: one C call instead of a generator per character
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def print_table(
    items: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    *,
    empty: str,
    more: str | None = None,
) -> None:
    """Print ``items`` as a table on stdout (``empty`` when there are none), then ``more``.

    On a terminal the table fits its width, folding long cells; elsewhere (``-o table`` into a
    file) no line is folded, so each row stays on one line for grep.
    """
    import io

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    now = datetime.now(UTC)
    terminal = sys.stdout.isatty()
    buffer = io.StringIO()
    console = (
        Console(highlight=False, soft_wrap=False)
        if terminal
        else Console(file=buffer, width=100_000, color_system=None, highlight=False)
    )
    if items:
        rows = [[printable(column.cell(item, now)) for column in columns] for item in items]
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for index, column in enumerate(columns):
            widest = max(len(column.header), *(len(row[index]) for row in rows))
            table.add_column(
                column.header,
                overflow="ellipsis" if column.label else "fold",
                no_wrap=column.key,
                min_width=widest if column.key else None,
            )
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)
    else:
        console.print(Text(empty))
    if more:
        console.print(Text(printable(more), style="dim"))
    if not terminal:
        # Rich pads every cell to its column: no trailing blanks in a file.
        sys.stdout.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))
