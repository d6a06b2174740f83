"""The "did you mean …?" hint for a misspelt name: one rule for every refusal that gives one.

A top-level module, so that every layer (config, pki, services, API, CLI) may use it: before,
six sites each called difflib with their own cutoff and count, and the same typo got a hint in
one place and none in another.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SIMILARITY_CUTOFF", "did_you_mean"]

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
