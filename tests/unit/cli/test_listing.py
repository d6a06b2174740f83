"""The list tables' time cells: a date and the days left, as a user reads an expiry."""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime, timedelta

import pytest

from certctl.cli._listing import date_and_days, is_past, print_table, timestamp

NOW = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("offset", "shown"),
    [
        (timedelta(days=90) - timedelta(seconds=1), "2027-03-04 (in 89 days)"),
        (timedelta(days=1, hours=1), "2026-12-05 (in 1 day)"),
        (timedelta(hours=5), "2026-12-04 (in less than a day)"),
        (timedelta(0), "2026-12-04 (expired today)"),
        (-timedelta(hours=20), "2026-12-03 (expired today)"),
        (-timedelta(days=3, hours=1), "2026-12-01 (expired 3 days ago)"),
        (-timedelta(days=1), "2026-12-03 (expired 1 day ago)"),
    ],
)
def test_date_and_days(offset: timedelta, shown: str) -> None:
    assert date_and_days((NOW + offset).isoformat(), NOW) == shown
    assert is_past((NOW + offset).isoformat(), NOW) == (offset <= timedelta(0))


def test_unset_and_odd_values() -> None:
    assert date_and_days(None, NOW) == "-"
    assert date_and_days(None, NOW, none="never") == "never"
    assert date_and_days("soon", NOW) == "soon"  # not a time: shown as it came
    assert not is_past(None, NOW)
    # A naive time from the API is UTC; an offset is converted.
    assert timestamp("2026-12-04T14:05:09") == "2026-12-04 14:05 UTC"
    assert timestamp("2026-12-04T16:05:09+02:00") == "2026-12-04 14:05 UTC"
    assert timestamp(None, none="never") == "never"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_narrow_terminal_cuts_a_long_name_with_an_ellipsis_never_mid_word(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, at 80 columns: "CN=Elastics" / "earch HTTP" / "CA", read as two words.
    from certctl.cli.issuers import _issuer_columns

    for variable in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    issuer = {
        "id": "elasticsearch-http-ca",
        "status": "active",
        "name": "Elasticsearch HTTP CA",
        "subject": "CN=Elasticsearch HTTP CA",
        "key_type": "ec-p256",
        "not_after": "2031-01-01T00:00:00+00:00",
    }
    columns = _issuer_columns()
    print_table([issuer], columns, empty="no issuers")
    lines = terminal.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    words = " ".join(lines).split()
    assert "elasticsearch-http-ca" in words  # the id, whole: it is copied into commands
    # Each word is whole, or its start ending in "…" (the whole value: issuers get, -o json).
    now = datetime.now(UTC)
    cells = [column.header for column in columns] + [c.cell(issuer, now) for c in columns]
    whole = set(" ".join(cells).split())
    cut = [word for word in words if word not in whole]
    assert cut, lines  # 80 columns are too few for every word: some are cut
    for word in cut:
        assert word.endswith("…"), lines
        assert any(w.startswith(word[:-1]) for w in whole), lines
