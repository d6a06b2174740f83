"""DNS names in certificates: labels, wildcards and internationalised names (IDNA 2008)."""

from __future__ import annotations

import re
import unicodedata

from certctl.errors import InvalidRequest

__all__ = ["to_a_labels", "validate_dns_name"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def validate_dns_name(value: str, *, allow_wildcard: bool = True) -> str:
    """Return ``value`` as a lower-case A-label DNS name, or raise InvalidRequest.

    A wildcard is allowed only as the whole left-most label of a name with at least
    two more labels (``*.example.com``), as RFC 6125 6.4.3 clients expect.
    """
    raw = value.strip().rstrip(".")
    if not raw:
        raise InvalidRequest(f"{value!r}: empty DNS name")
    ascii_name = (raw if raw.isascii() else to_a_labels(raw, value)).lower()
    if len(ascii_name) > 253:
        raise InvalidRequest(f"{value[:60]}…: DNS name longer than 253 characters")
    labels = ascii_name.split(".")
    if labels[0] == "*":
        if not allow_wildcard:
            raise InvalidRequest(f"{value}: wildcards are not allowed here")
        if len(labels) < 3:
            raise InvalidRequest(f"{value}: a wildcard needs at least two labels after '*.'")
        labels = labels[1:]
    for label in labels:
        if not _LABEL.match(label):
            raise InvalidRequest(
                f"{value}: invalid DNS name (labels are 1-63 letters, digits or '-', "
                "not starting or ending with '-'; '*' only as the whole first label)"
            )
        if label.startswith("xn--") and not _is_a_label(label):
            raise InvalidRequest(f"{value}: {label} is not a valid IDNA A-label (punycode)")
    if labels[-1].isdigit():
        raise InvalidRequest(f"{value}: looks like an IP address; use an IP SAN")
    return ascii_name


def to_a_labels(raw: str, value: str) -> str:
    """``raw`` with each non-ASCII label as its IDNA 2008 A-label (UTS 46, nontransitional).

    Not the standard library's IDNA 2003 codec: it maps ß to ss and ς to σ, so
    ``straße.example`` became ``strasse.example``, another host than the one browsers and
    curl (libidn2) look up, ``xn--strae-oqa.example``. ASCII labels are left to the checks
    after this (a wildcard label, or one IDNA refuses such as ``ab--cd``, stays as it was).
    """
    import idna  # here, not above: ASCII names (nearly all) never load its tables

    labels = []
    for label in raw.split("."):
        if label.isascii():
            labels.append(label)
            continue
        try:
            labels.append(idna.encode(label, uts46=True).decode("ascii"))
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidRequest(
                f"{value}: not a valid internationalised DNS name ({exc})"
            ) from exc
    return ".".join(labels)


def _is_a_label(label: str) -> bool:
    # The Punycode after xn-- must decode, to something non-ASCII, and encode back to itself
    # (xn--zz fails); what it decodes to must be characters a name may hold (xn--a is the
    # control character U+0080). Not the stdlib's IDNA 2003 codec: it refuses names that
    # IDNA 2008 (what registries use) allows, such as xn--strae-oqa (straße); nor idna's
    # stricter decode, which would refuse A-labels accepted so far.
    encoded = label[4:].lower()
    try:
        decoded = encoded.encode("ascii").decode("punycode")
    except UnicodeError:
        return False
    if decoded.isascii() or decoded.encode("punycode").decode("ascii") != encoded:
        return False
    if not _DOTS.isdisjoint(decoded):
        return False
    return decoded.isprintable() or all(map(_may_be_in_a_label, decoded))


# Full stops UTS 46 maps to "." (printable): a label holding one would show as two labels.
_DOTS = frozenset("\u3002\uff0e\uff61")
_JOINERS = frozenset("\u200c\u200d")  # IDNA 2008's CONTEXTJ: part of Persian or Indic words


def _may_be_in_a_label(char: str) -> bool:
    # No control character, space, line separator or invisible format character (the
    # bidirectional overrides among them make a name display as another), only the joiners
    # some scripts need: none of those is in any registrable name. Unassigned code points and
    # symbols are let through, as IDNA 2003 names (emoji) were accepted so far.
    category = unicodedata.category(char)
    if category == "Cf":
        return char in _JOINERS
    return category not in ("Cc", "Cs", "Zs", "Zl", "Zp")
