"""The list tables' time cells: a date and the days left, as a user reads an expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certctl.cli._listing import date_and_days, is_past, timestamp

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
