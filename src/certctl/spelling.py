"""The "did you mean …?" hint for a misspelt name: one rule for every refusal that gives one.

A top-level module, so that every layer (config, pki, services, API, CLI) may use it: before,
six sites each called difflib with their own cutoff and count, and the same typo got a hint in
one place and none in another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from certctl.errors import InvalidRequest

__all__ = ["SIMILARITY_CUTOFF", "did_you_mean", "unknown_names"]

# difflib's ratio below which a known name is not offered. 0.75 keeps one-letter typos
# (`revokd`, `metrics.reed`, `lisen`) and drops the names that merely share a shape with the one
# given (`cert.write` is not `cert.read`): where the hint stands instead of the list of known
# names, a wrong guess hid the right one.
SIMILARITY_CUTOFF = 0.75


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """``did you mean X?`` with the known name closest to ``name``, or None if none is close.

    Compared in lower case (``Revoked`` means ``revoked``, ``keycompromise`` means
    ``keyCompromise``), and the known name is given as it is spelt.

    Args:
        name: the name as the user gave it.
        known: the names that exist there.

    Returns:
        The hint, without surrounding punctuation, or None.
    """
    import difflib  # here: the CLI imports this module on every command, a typo is rare

    by_folded: dict[str, str] = {}
    for known_name in known:
        by_folded.setdefault(known_name.lower(), known_name)
    close = difflib.get_close_matches(name.lower(), by_folded, n=1, cutoff=SIMILARITY_CUTOFF)
    return f"did you mean {by_folded[close[0]]}?" if close else None


# Unknown names of one request that get a "did you mean" (the others are named only):
# difflib is pure Python, and a 1 MB body of near-misses took seconds of CPU to refuse.
_SUGGESTED = 5
# Most names an "unknown …" refusal lists: every permission (23), and the roles of most
# deployments; past it the line would bury the name that was wrong.
_MAX_KNOWN_NAMED = 30


def unknown_names(
    kind: str,
    unknown: list[str],
    known: Sequence[str],
    *,
    kind_as: str = "",
    known_as: str = "known",
    note: str = "",
) -> InvalidRequest:
    """The refusal of ``unknown`` names of ``kind``: the closest known name to each, else all.

    A typo gets its correction (the first _SUGGESTED names only); a name with none close
    (did_you_mean) gets the known names listed in the order given (``known_as: a, b
    …``, up to _MAX_KNOWN_NAMED, then ``note``), so the caller need not look them up elsewhere.
    ``kind_as`` replaces ``{kind}(s)`` after "unknown" when the names are not all unknown.
    """
    named, all_close = [], True
    for index, name in enumerate(unknown):
        hint = did_you_mean(name, known) if index < _SUGGESTED else None
        named.append(f"{name} ({hint})" if hint else name)
        all_close = all_close and bool(hint)
    hint = ""
    if not all_close:
        more = len(known) - _MAX_KNOWN_NAMED
        shown = ", ".join(known[:_MAX_KNOWN_NAMED]) + (f" and {more} more" if more > 0 else "")
        hint = f"; {known_as}: {shown}{note}"
    return InvalidRequest(f"unknown {kind_as or kind + '(s)'}: {', '.join(named)}{hint}")
