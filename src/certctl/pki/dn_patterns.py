"""DN patterns (``CN=*,OU=ops``) and the RFC 4514 reader they and parse_dn's messages use.

Read here, not through ``x509.Name.from_rfc4514_string``: a pattern takes attribute types in
any case, unknown ones named in the refusal, and a ``*`` value that matches any value.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field

from cryptography import x509

from certctl.errors import InvalidRequest

__all__ = ["ATTRIBUTE_TYPE_NAMES", "DNPattern", "refuse_unknown_attribute_type"]


# Attribute type names a DN pattern may use (upper case), by OID: RFC 4514 section 3 and the
# ones cryptography and OpenSSL print. Any other attribute is written as its dotted OID.
_ATTRIBUTE_OIDS = {
    "CN": "2.5.4.3",
    "SN": "2.5.4.4",
    "SERIALNUMBER": "2.5.4.5",
    "C": "2.5.4.6",
    "L": "2.5.4.7",
    "ST": "2.5.4.8",
    "STREET": "2.5.4.9",
    "O": "2.5.4.10",
    "OU": "2.5.4.11",
    "TITLE": "2.5.4.12",
    "GN": "2.5.4.42",
    "GIVENNAME": "2.5.4.42",
    "DC": "0.9.2342.19200300.100.1.25",
    "UID": "0.9.2342.19200300.100.1.1",
    "E": "1.2.840.113549.1.9.1",
    "EMAILADDRESS": "1.2.840.113549.1.9.1",
    # The other names display_dn prints (OpenSSL's), so that what is shown can be given back.
    "INITIALS": "2.5.4.43",
    "PSEUDONYM": "2.5.4.65",
    "GENERATIONQUALIFIER": "2.5.4.44",
    "DNQUALIFIER": "2.5.4.46",
    "POSTALCODE": "2.5.4.17",
    "BUSINESSCATEGORY": "2.5.4.15",
    "JURISDICTIONC": "1.3.6.1.4.1.311.60.2.1.3",
    "JURISDICTIONST": "1.3.6.1.4.1.311.60.2.1.2",
    "JURISDICTIONL": "1.3.6.1.4.1.311.60.2.1.1",
    "ORGANIZATIONIDENTIFIER": "2.5.4.97",
    "DESCRIPTION": "2.5.4.13",
    "NAME": "2.5.4.41",
}
_NUMERIC_OID = re.compile(r"[0-9]+(\.[0-9]+)+\Z")
_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z")  # RFC 4512 descr


class _AnyCaseNames(dict[str, x509.ObjectIdentifier]):
    """``from_rfc4514_string``'s attribute type names, looked up in any case."""

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        # The one lookup cryptography's parser makes in the names it is given.
        return super().get(key.upper(), default)


# The type names x509.Name.from_rfc4514_string is given (parse_dn): the ones a pattern takes.
ATTRIBUTE_TYPE_NAMES = _AnyCaseNames(
    {name: x509.ObjectIdentifier(oid) for name, oid in _ATTRIBUTE_OIDS.items()}
)


class _UnknownAttributeType(InvalidRequest):
    def __init__(self, detail: str, name: str) -> None:
        super().__init__(detail)
        self.name = name


def refuse_unknown_attribute_type(text: str) -> None:
    """Raise the message naming an unknown attribute type of ``text``, if it has one."""
    try:
        _split_rdns(text, wildcards=False)
    except _UnknownAttributeType as exc:
        if _TYPE_NAME.match(exc.name):  # not what a stray comma or '=' left as a "type"
            raise InvalidRequest(exc.detail) from None
    except InvalidRequest:
        pass


# RFC 4514 section 2.4: what a backslash may precede, besides two hex digits.
_ESCAPABLE = frozenset(' "#+,;<=>\\')
_HEX = frozenset("0123456789abcdefABCDEF")

# One RDN: (attribute OID, value) pairs; a value of None is a pattern's wildcard.
_RDN = tuple[tuple[str, str | None], ...]


def _attribute_oid(name: str, text: str) -> str:
    if _NUMERIC_OID.match(name):
        return name
    oid = _ATTRIBUTE_OIDS.get(name.upper())
    if oid is None:
        raise _UnknownAttributeType(
            f"{text}: unknown attribute type {name[:40]!r} (use CN, OU, O, ... or a dotted OID)",
            name,
        )
    return oid


def _decoded(pending: bytearray, text: str) -> list[tuple[str, bool]]:
    try:
        return [(c, True) for c in pending.decode()]
    except UnicodeDecodeError:
        raise InvalidRequest(f"{text}: escaped bytes are not UTF-8") from None


def _read_value(text: str, i: int) -> tuple[list[tuple[str, bool]], int]:
    """The value starting at ``i`` as (character, escaped) pairs, and where it ends."""
    chars: list[tuple[str, bool]] = []
    pending = bytearray()  # \XX pairs: one UTF-8 character may take several
    n = len(text)
    while i < n and text[i] not in ",+":
        c = text[i]
        if c == "\\":
            pair = text[i + 1 : i + 3]
            if len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
                pending.append(int(pair, 16))
                i += 3
                continue
            if i + 1 < n and text[i + 1] in _ESCAPABLE:
                chars += _decoded(pending, text)
                pending.clear()
                chars.append((text[i + 1], True))
                i += 2
                continue
            raise InvalidRequest(f"{text}: invalid escape at position {i + 1}")
        if c in '";<>':
            raise InvalidRequest(f"{text}: {c!r} in a value must be escaped (\\{c})")
        chars += _decoded(pending, text)
        pending.clear()
        chars.append((c, False))
        i += 1
    chars += _decoded(pending, text)
    # Unescaped spaces around a value are layout ("CN=*, OU=ops"), escaped ones are data.
    while chars and chars[-1] == (" ", False):
        chars.pop()
    while chars and chars[0] == (" ", False):
        chars.pop(0)
    return chars, i


def _split_rdns(text: str, *, wildcards: bool) -> tuple[_RDN, ...]:
    """Split an RFC 4514 string into RDNs as written, escapes resolved (not via x509.Name).

    ``x509.Name.from_rfc4514_string`` does not take lower-case or unknown attribute names,
    and would need a second format for the wildcard.
    """
    if not text.strip():
        raise InvalidRequest("empty distinguished name (example: CN=*,OU=ops,O=Example)")
    rdns: list[_RDN] = []
    rdn: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while True:
        eq = text.find("=", i)
        if eq < 0:
            raise InvalidRequest(f"{text}: {text[i:][:40]!r} is not TYPE=value")
        oid = _attribute_oid(text[i:eq].strip(), text)
        chars, i = _read_value(text, eq + 1)
        is_wildcard = wildcards and chars == [("*", False)]
        rdn.append((oid, None if is_wildcard else "".join(c for c, _ in chars)))
        if i < n and text[i] == "+":
            i += 1
            continue
        rdns.append(tuple(rdn))
        rdn = []
        if i >= n:
            return tuple(rdns)
        i += 1  # the comma


@functools.lru_cache(maxsize=1024)
def _subject_rdns(subject: str) -> tuple[_RDN, ...]:
    # The same few client certificates authenticate again and again: parse each once.
    return _split_rdns(subject, wildcards=False)


def _rdn_matches(pattern: _RDN, rdn: _RDN) -> bool:
    # An RDN is a set: a multi-valued one (OU=dev+OU=ops) matches in any order.
    if len(pattern) != len(rdn) or sorted(o for o, _ in pattern) != sorted(o for o, _ in rdn):
        return False
    left = Counter(rdn)
    for pair in pattern:
        if pair[1] is None:
            continue  # the same OIDs on both sides: what is left fills the wildcards
        if not left[pair]:
            return False
        left[pair] -= 1
    return True


@dataclass(frozen=True)
class DNPattern:
    r"""An RFC 4514 distinguished name in which a value ``*`` matches any value.

    RDNs compare one by one, in the order written (most specific first, as RFC 4514 and
    ``x509.Name.rfc4514_string`` put them); their number must be equal. Attribute types
    compare by OID (``cn``, ``CN`` and ``2.5.4.3`` are one type), values exactly, after
    RFC 4514 escapes are resolved: a comma inside a value (``CN=a\,OU=ops``) stays in that
    value and never starts another RDN. A multi-valued RDN (``CN=a+UID=b``) matches the same
    attributes in any order. ``\2A`` is a literal ``*``.

    Raises:
        InvalidRequest: ``text`` is not a valid RFC 4514 string.
    """

    text: str
    rdns: tuple[_RDN, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rdns", _split_rdns(self.text, wildcards=True))

    @property
    def looks_reversed(self) -> bool:
        """Whether it is written broadest first (``O=Example,CN=alice``), as openssl prints.

        Certificates are nearly always encoded country or organisation first, which RFC 4514
        writes last: such a pattern matches only the rare certificate encoded the other way.
        """
        broad = {_ATTRIBUTE_OIDS[n] for n in ("C", "O", "DC", "L", "ST")}
        if len(self.rdns) < 2:
            return False
        first = {oid for oid, _ in self.rdns[0]}
        last = {oid for oid, _ in self.rdns[-1]}
        return bool(first & broad) and _ATTRIBUTE_OIDS["CN"] in last

    def matches(self, subject: str) -> bool:
        """True when ``subject`` (an RFC 4514 string) matches; False when it is malformed."""
        try:
            have = _subject_rdns(subject)
        except InvalidRequest:
            return False
        return len(have) == len(self.rdns) and all(
            _rdn_matches(want, rdn) for want, rdn in zip(self.rdns, have, strict=True)
        )
