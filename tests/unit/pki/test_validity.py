"""Validity grammar: parse_duration / format_duration."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from certctl.errors import InvalidRequest
from certctl.pki.validity import (
    DURATION_PATTERN,
    MAX_DURATION,
    format_days,
    format_duration,
    parse_duration,
)

FAST = settings(max_examples=200, deadline=None)

US = 1
MS = 1_000
SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
UNITS_US = {
    "us": US,
    "µs": US,
    "ms": MS,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
    "D": DAY,
    "d": DAY,
    "W": 7 * DAY,
    "w": 7 * DAY,
    "M": 30 * DAY,
    "Y": 365 * DAY,
    "y": 365 * DAY,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90D", timedelta(days=90)),
        ("90d", timedelta(days=90)),
        ("8760h", timedelta(days=365)),
        ("1Y", timedelta(days=365)),
        ("5Y", timedelta(days=5 * 365)),
        ("1Y6M", timedelta(days=365 + 180)),
        ("P1Y6M", timedelta(days=365 + 180)),
        ("p1d", timedelta(days=1)),
        ("2W", timedelta(days=14)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("1D12h", timedelta(days=1, hours=12)),
        ("90s", timedelta(seconds=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("7us", timedelta(microseconds=7)),
        ("7µs", timedelta(microseconds=7)),
        ("7μs", timedelta(microseconds=7)),  # Greek mu, as Go also accepts
        ("1000ns", timedelta(microseconds=1)),
        ("  30D  ", timedelta(days=30)),
        ("100Y", MAX_DURATION),
    ],
)
def test_parse_accepts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_minutes_and_months_are_case_sensitive() -> None:
    assert parse_duration("1m") == timedelta(minutes=1)
    assert parse_duration("1M") == timedelta(days=30)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("90X", "90X: unknown duration unit 'X'"),
        ("1e3D", "unknown duration unit 'e'"),
        ("1mo", "unknown duration unit 'mo'"),
        ("90", "90: number without a unit"),
        ("1h30", "number without a unit"),
        ("1,5h", "number without a unit"),
        ("D", "D: not a duration"),
        ("P", "P: not a duration"),
        ("-1D", "-1D: not a duration"),
        ("1D 2h", "not a duration"),
        ("0D", "0D: duration must be positive"),
        ("0h0m", "duration must be positive"),
        ("1ns", "1ns: duration must be positive"),
        ("101Y", "101Y: duration too long (at most 100Y)"),
        ("36501D", "duration too long"),
        ("100Y1us", "duration too long"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        parse_duration(text)


@pytest.mark.parametrize("value", [timedelta(0), timedelta(days=-1)])
def test_format_refuses_non_positive(value: timedelta) -> None:
    with pytest.raises(InvalidRequest, match="duration must be positive"):
        format_duration(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=90), "90D"),
        (timedelta(days=36500), "36500D"),
        (timedelta(hours=36, minutes=30), "36h30m"),
        (timedelta(microseconds=1), "1us"),
        (timedelta(days=1, microseconds=5), "24h5us"),
        (timedelta(seconds=61), "1m1s"),
    ],
)
def test_format_canonical(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@FAST
@given(st.timedeltas(min_value=timedelta(microseconds=1), max_value=MAX_DURATION))
@example(timedelta(microseconds=1))
@example(MAX_DURATION)
@example(MAX_DURATION - timedelta(microseconds=1))
@example(timedelta(days=1, microseconds=1))
@example(timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999))
def test_format_parse_round_trip(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


_term = st.tuples(st.integers(min_value=0, max_value=400), st.sampled_from(sorted(UNITS_US)))
_decimal_term = st.tuples(
    st.decimals(min_value=0, max_value=100, places=2, allow_nan=False, allow_infinity=False),
    st.sampled_from(["h", "D", "m", "s"]),
)


@FAST
@given(
    terms=st.lists(st.one_of(_term, _decimal_term), min_size=1, max_size=4),
    iso=st.booleans(),
)
@example(terms=[(90, "D")], iso=False)
@example(terms=[(8760, "h")], iso=False)
@example(terms=[(1, "Y"), (6, "M")], iso=True)
@example(terms=[(Decimal("1.50"), "h")], iso=False)
@example(terms=[(1, "D"), (12, "h"), (30, "m")], iso=False)
def test_grammar_strings_parse_and_format_back(
    terms: list[tuple[int | Decimal, str]], iso: bool
) -> None:
    text = ("P" if iso else "") + "".join(f"{n}{unit}" for n, unit in terms)
    expected_us = int(sum(Decimal(n) * UNITS_US[unit] for n, unit in terms))
    expected = timedelta(microseconds=expected_us)
    if expected <= timedelta(0):
        with pytest.raises(InvalidRequest, match="must be positive"):
            parse_duration(text)
        return
    if expected > MAX_DURATION:
        with pytest.raises(InvalidRequest, match="too long"):
            parse_duration(text)
        return
    parsed = parse_duration(text)
    assert parsed == expected
    canonical = format_duration(parsed)
    assert parse_duration(canonical) == parsed
    assert format_duration(parse_duration(canonical)) == canonical


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=90), "90 days"),
        (timedelta(days=1), "1 day"),
        (timedelta(days=29, hours=12), "29.5 days"),
        # A lifetime clipped a few seconds after its issuer was made: no 29.99993 days.
        (timedelta(days=30) - timedelta(seconds=7), "30 days"),
        (timedelta(days=36500), "36500 days"),
        (timedelta(hours=23), "23 hours"),
        (timedelta(hours=1), "1 hour"),
        # Under an hour (an issuer that ends within it): minutes, then seconds, never
        # "0 hours" for a certificate that is still valid for minutes.
        (timedelta(minutes=30), "30 minutes"),
        (timedelta(minutes=2), "2 minutes"),
        (timedelta(minutes=1), "1 minute"),
        (timedelta(seconds=40), "40 seconds"),
        (timedelta(seconds=1), "1 second"),
        (timedelta(0), "0 seconds"),
        # Just short of the next unit: rounded up into it, not "24 hours" or "60 minutes".
        (timedelta(days=1) - timedelta(seconds=1), "1 day"),
        (timedelta(hours=1) - timedelta(seconds=1), "1 hour"),
        (timedelta(minutes=1) - timedelta(milliseconds=200), "1 minute"),
    ],
)
def test_format_days_names_the_unit(value: timedelta, text: str) -> None:
    assert format_days(value) == text


# str's \d and isdigit() take every decimal digit; a JSON Schema pattern's [0-9] (and a
# reader) takes ASCII only, so these were taken by the server and refused by openapi.json.
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("٣٠D", "not a duration"),
        ("３０D", "not a duration"),
        ("P٣D", "not a duration"),
        ("p３h", "not a duration"),
        ("1D٣h", "not a duration"),
        ("1.٥h", "number without a unit"),
    ],
)
def test_digits_are_ascii(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_duration(text)


def _grammar_takes(text: str) -> bool:
    """parse_duration reads it (a zero or over-long one is read, then refused for its value)."""
    try:
        parse_duration(text)
    except InvalidRequest as exc:
        return "must be positive" in exc.detail or "too long" in exc.detail
    return True


# Whitespace as str.strip() (the server) and ECMA 262 (openapi.json's readers) see it, digits
# of other scripts, the units and near misses.
_SPACES = [c for c in map(chr, range(0x10000)) if c.isspace()] + ["\ufeff"]
_PIECES = st.sampled_from(
    [*_SPACES, *"0123456789.Pp", *UNITS_US, "ns", "W", "M", "Y", "H", "S", "T", "x", "٣", "３"]
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(_PIECES, max_size=10).map("".join))
@example("\x1c90D\x85")  # stripped by the server; not ECMA 262's \s
@example("\u300030D\u2029")
@example("\ufeff30D")  # ECMA 262's \s, not str.strip()'s: refused by both
@example("P1Y6M")
@example("1ms1us1µs1ns")
def test_pattern_takes_what_the_grammar_reads(text: str) -> None:
    """openapi.json's DURATION_PATTERN takes the durations the server reads, in any dialect.

    The pattern uses no \\s, \\d or \\w, whose meaning differs between Python's re and ECMA
    262 (JSON Schema's): with \\s a client validating with ECMA 262 refused "\\x1c90D", which
    the server took. Without them, Python's re reads it as every client does.
    """
    assert not re.search(r"\\[sdwSDW]", DURATION_PATTERN)
    # Both ways: what it takes besides is only what the value refuses (zero, over 100Y).
    assert bool(re.search(DURATION_PATTERN, text)) == _grammar_takes(text), ascii(text)
