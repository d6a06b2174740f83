"""Validity grammar: Go durations (``8760h``) and certutil/Java periods (``90D``, ``1Y6M``).

Units, case-sensitive where it matters:

* Go style: ``ns`` ``us`` ``µs`` ``ms`` ``s`` ``m`` (minutes) ``h``; decimals allowed (``1.5h``).
* Period style: ``D``/``d`` days, ``W``/``w`` weeks, ``M`` months (30 days), ``Y``/``y`` years
  (365 days); an ISO 8601 ``P`` prefix is accepted (``P1Y6M``).

Lower-case ``m`` is minutes as in Go; upper-case ``M`` is months as in Java periods.
Units may be mixed (``1D12h``). Certificate lifetimes are fixed-length on purpose: a
``1Y`` certificate issued today and tomorrow lives exactly as long.
"""

from __future__ import annotations

import functools
import itertools
import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation

from certctl.errors import InvalidRequest

__all__ = ["DURATION_PATTERN", "MAX_DURATION", "format_days", "format_duration", "parse_duration"]

MAX_DURATION = timedelta(days=365 * 100)

_UNIT_MICROSECONDS: dict[str, int] = {
    "ns": 0,  # below timedelta's resolution; only whole microseconds survive
    "us": 1,
    "µs": 1,
    "μs": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60 * 1_000_000,
    "h": 3_600 * 1_000_000,
    "d": 86_400 * 1_000_000,
    "D": 86_400 * 1_000_000,
    "w": 7 * 86_400 * 1_000_000,
    "W": 7 * 86_400 * 1_000_000,
    "M": 30 * 86_400 * 1_000_000,
    "y": 365 * 86_400 * 1_000_000,
    "Y": 365 * 86_400 * 1_000_000,
}
# ASCII digits only: str's \d and isdigit() also take ٣ or ３, which no schema's [0-9] (nor a
# reader) takes for a number.
_DIGITS = "0123456789"
_TOKEN = re.compile(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Zµμ]+)")
# The grammar as a JSON Schema pattern, for the OpenAPI document: what parse_duration reads
# (surrounding whitespace is stripped). Zero and more than 100 years match it and are refused.
# No \s: ECMA 262's (JSON Schema's dialect) is not str.strip()'s, which also strips \x1c-\x1f
# and \x85; the class lists those str.isspace() takes, as escapes every dialect reads alike.
_UNITS = "|".join(sorted(_UNIT_MICROSECONDS, key=len, reverse=True))
_SPACE = r"[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
DURATION_PATTERN = rf"^{_SPACE}*[Pp]?(?:[0-9]+(?:\.[0-9]+)?(?:{_UNITS}))+{_SPACE}*$"


# Cached: the same few strings ("90D", the config's durations) are parsed on every API
# request; timedelta is immutable and a refused text raises (exceptions are not cached).
@functools.lru_cache(maxsize=256)
def parse_duration(text: str) -> timedelta:
    """Parse a positive duration such as ``90D``, ``8760h``, ``1Y6M`` or ``1h30m``.

    Raises:
        InvalidRequest: the text is empty, has an unknown unit, is zero or exceeds 100 years.
    """
    raw = text.strip()
    body = raw[1:] if raw[:1] in ("P", "p") and len(raw) > 1 and raw[1] in _DIGITS else raw
    if not body:
        raise InvalidRequest(f"{text!r}: empty duration (examples: 90D, 8760h, 1Y6M)")
    total_us = Decimal(0)
    pos = 0
    for match in _TOKEN.finditer(body):
        if match.start() != pos:
            break
        number, unit = match.groups()
        if unit == "ns":
            factor = Decimal(1) / 1000
        elif unit in _UNIT_MICROSECONDS:
            factor = Decimal(_UNIT_MICROSECONDS[unit])
        else:
            raise InvalidRequest(
                f"{raw}: unknown duration unit {unit!r} (use h, m, s or D, W, M, Y)"
            )
        try:
            total_us += Decimal(number) * factor
        except InvalidOperation as exc:  # pragma: no cover - regex admits only decimals
            raise InvalidRequest(f"{raw}: bad number {number!r}") from exc
        pos = match.end()
    if pos != len(body):
        rest = body[pos:]
        if rest[0] in _DIGITS:
            raise InvalidRequest(f"{raw}: number without a unit (examples: 90D, 8760h, 1Y6M)")
        raise InvalidRequest(f"{raw}: not a duration (examples: 90D, 8760h, 1Y6M)")
    if total_us > Decimal(MAX_DURATION // timedelta(microseconds=1)):
        raise InvalidRequest(f"{raw}: duration too long (at most 100Y)")
    result = timedelta(microseconds=int(total_us))
    if result <= timedelta(0):
        raise InvalidRequest(f"{raw}: duration must be positive")
    return result


def format_duration(value: timedelta) -> str:
    """Format a positive duration canonically: ``90D`` for whole days, else Go style (``36h30m``).

    ``parse_duration(format_duration(d)) == d`` for every positive ``d`` up to 100 years.
    """
    if value <= timedelta(0):
        raise InvalidRequest(f"{value}: duration must be positive")
    if value.seconds == 0 and value.microseconds == 0:
        return f"{value.days}D"
    total_us = value // timedelta(microseconds=1)
    hours, rest = divmod(total_us, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, micros = divmod(rest, 1_000_000)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if seconds:
        parts.append(f"{seconds}s")
    if micros:
        parts.append(f"{micros}us")
    return "".join(parts)


def format_days(value: timedelta) -> str:
    """A lifetime for people in days: ``90 days``, ``29.5 days``, ``1 day``.

    Under a day in hours, under an hour in minutes, under a minute in seconds. For warnings
    that compare two lifetimes (a validity clipped to its issuer's notAfter): ``5Y`` against
    ``8760h`` made the reader do the arithmetic, the same unit does not. Days and hours are
    rounded to a tenth, so a lifetime a few seconds short of 30 days reads ``30 days``.
    """
    # (unit, its size in seconds, decimals shown), largest first.
    units = (("day", 86400, 1), ("hour", 3600, 1), ("minute", 60, 0), ("second", 1, 0))
    seconds = value.total_seconds()
    chosen = units[-1]
    for unit, lower in itertools.pairwise(units):
        # The unit the value reaches as the unit below would show it: 23h59m59s is "1 day",
        # not "24 hours". Minutes and seconds under an hour: "0 hours" was said of a
        # certificate still valid for minutes (an issuer that ends within the hour).
        if round(seconds / lower[1], lower[2]) >= unit[1] / lower[1]:
            chosen = unit
            break
    name, size, digits = chosen
    count = round(seconds / size, digits)
    text = f"{count:g}"
    return f"{text} {name}" if text == "1" else f"{text} {name}s"
