"""Distinguished names (RFC 4514 strings) and subject alternative names."""

from __future__ import annotations

import functools
import ipaddress
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from certctl.errors import InvalidRequest

__all__ = [
    "SAN_KINDS",
    "DNPattern",
    "SubjectAltNames",
    "check_name",
    "common_name_dn",
    "display_dn",
    "display_dn_text",
    "format_dn",
    "name_match_key",
    "names_match",
    "parse_dn",
    "san_search_forms",
    "validate_dns_name",
]

# RFC 5280 Appendix A upper bounds, enforced so that linters and strict clients accept our names.
_UPPER_BOUNDS = {
    NameOID.COMMON_NAME: 64,
    NameOID.ORGANIZATION_NAME: 64,
    NameOID.ORGANIZATIONAL_UNIT_NAME: 64,
    NameOID.LOCALITY_NAME: 128,
    NameOID.STATE_OR_PROVINCE_NAME: 128,
    NameOID.EMAIL_ADDRESS: 255,
}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
# RFC 5322 atext and dots: unquoted local parts, which cryptography's RFC822Name takes whole
# ('@', ',', ';', '"', '(' and the like make it fail or cut the address). Dots are not held to
# the Dot-string rule: "a..b" is common enough in the wild and was always accepted.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+\Z")
# cryptography's own limit on a CN is 64 octets of UTF-8 (RFC 5280 counts 64 characters):
# a longer value cannot be built into a name, and parsing one prints a UserWarning.
_CN_MAX_OCTETS = 64
# Unicode's explicit bidirectional formatting characters (UAX #9: embeddings, overrides,
# isolates, marks). In a name they make it display as another: "CN=moc.elgoog\u202e" shows
# as a familiar host in a UI that renders bidi ("Trojan Source", CVE-2021-42574).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _ipv4_form(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.5``) as the IPv4 address it stands for.

    A client connecting to 10.0.0.5 compares 4 octets with the SAN (OpenSSL compares the
    bytes): the 16-octet form matched nobody. Go and ECK normalise it the same way.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_dn(text: str) -> x509.Name:
    """Parse an RFC 4514 string (``CN=node-1,OU=ops,O=Example``), most specific RDN first.

    Raises:
        InvalidRequest: the string is empty, malformed, or a value breaks an RFC 5280 bound.
    """
    if not text.strip():
        raise InvalidRequest("empty distinguished name (example: CN=node-1,O=Example)")
    try:
        # Type names in any case (RFC 4514 3: "cn=" is "CN="), emailAddress= as display_dn
        # (and OpenSSL) print it; the dotted OID is read too.
        name = x509.Name.from_rfc4514_string(text, _READ_NAMES)
    except ValueError as exc:
        _name_the_unknown_type(text)
        reason = f" ({exc})" if str(exc) else _rewritten(text)
        raise InvalidRequest(f"{text}: not a valid RFC 4514 distinguished name{reason}") from exc
    check_name(name, text)
    return name


def _rewritten(text: str) -> str:
    """`` (…: CN=a,O=b)``: a form users paste from OpenSSL or Java, as RFC 4514 writes it.

    ``-subj /C=US/O=Example/CN=a`` (OpenSSL's, most general first) and ``CN = a, O = b``
    (what ``openssl x509 -subject`` and keytool print) were refused without a word on why.
    Offered only when the rewrite parses; empty otherwise.
    """
    if "\\" in text:
        return ""  # escapes: not a paste of those forms, and not safe to rewrite
    if text.startswith("/") and "," not in text:
        what = "OpenSSL's -subj form; RFC 4514 writes the most specific first"
        candidate = ",".join(reversed([part.strip() for part in text[1:].split("/")]))
    elif re.search(r"\s[,=+]|[,=+]\s", text.strip()):
        what = "no spaces around ',' and '='"
        candidate = re.sub(r"\s*([,=+])\s*", r"\1", text.strip())
    else:
        return ""
    try:
        x509.Name.from_rfc4514_string(candidate, _READ_NAMES)
    except ValueError:
        return ""
    return f" ({what}: {candidate})"


def check_name(name: x509.Name, text: str | None = None) -> None:
    """Refuse a name certctl will not put in a certificate (a parsed DN or a CSR's subject).

    Args:
        name: the name to check.
        text: the name as the user wrote it, for messages; formatted from ``name`` if None.

    Raises:
        InvalidRequest: a value is binary, holds control or bidirectional control characters,
            is empty, or is longer than its upper bound (RFC 5280 A; a CN also in UTF-8 bytes).
    """
    # ``text`` (the DN for messages) is formatted only when there is an error to report.
    for attr in name:
        value = attr.value
        # Printable ASCII has no control characters: skips the per-character lookup.
        if not isinstance(value, str) or (
            not (value.isascii() and value.isprintable())
            and any(unicodedata.category(c) == "Cc" for c in value)
        ):
            raise InvalidRequest(
                f"{text or format_dn(name)}: binary or control characters are not supported"
            )
        if not value.isascii() and not _BIDI_CONTROLS.isdisjoint(value):
            shown = "".join(  # escaped, so the message itself displays as it is
                f"\\u{ord(c):04x}" if c in _BIDI_CONTROLS else c for c in text or format_dn(name)
            )
            raise InvalidRequest(
                f"{shown}: bidirectional control characters are not supported "
                "(they make a name display as another)"
            )
        if not value:
            raise InvalidRequest(
                f"{text or format_dn(name)}: empty value for {attr.rfc4514_attribute_name}"
            )
        bound = _UPPER_BOUNDS.get(attr.oid)
        if bound is not None and len(value) > bound:
            raise InvalidRequest(
                f"{text or format_dn(name)}: {attr.rfc4514_attribute_name} is longer than "
                f"{bound} characters"
            )
        if attr.oid == NameOID.COMMON_NAME and len(value.encode()) > _CN_MAX_OCTETS:
            raise InvalidRequest(
                f"{text or format_dn(name)}: CN is longer than {_CN_MAX_OCTETS} bytes as UTF-8"
            )


def names_match(a: x509.Name, b: x509.Name) -> bool:
    """Whether two names are the same as openssl compares them (``X509_NAME_cmp``).

    RFC 5280 7.1 compares names after folding case and whitespace. openssl does that for
    the string types of its ASN1_MASK_CANON: the value as UTF-8, ASCII white space at either
    end dropped and runs of it inside made one space, ASCII letters lower-cased, so a
    PrintableString and a UTF8String of the same text match. Other types (NumericString,
    BIT STRING) must match as encoded. ``x509.Name ==`` ignores the string type altogether
    and folds nothing.
    """
    return _canonical(a) == _canonical(b)


def name_match_key(name: x509.Name) -> Hashable:
    """A key equal for two names exactly when ``names_match`` says they match.

    For a lookup among many names: each is folded once, not once per pair.
    """
    return _canonical(name)


# openssl's ASN1_MASK_CANON (crypto/x509/x_name.c): the string types it folds.
_FOLDED_TYPES = frozenset(
    {
        _ASN1Type.UTF8String,
        _ASN1Type.BMPString,
        _ASN1Type.UniversalString,
        _ASN1Type.PrintableString,
        _ASN1Type.T61String,
        _ASN1Type.IA5String,
        _ASN1Type.VisibleString,
    }
)
# C isspace() and tolower() in the "C" locale, which openssl applies byte by byte to
# ASCII only: non-ASCII characters are compared as they are.
_ASCII_SPACE = re.compile(r"[ \t\n\v\f\r]+")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _canonical(name: x509.Name) -> tuple[frozenset[tuple[str, object]], ...]:
    # An RDN is a SET: its attributes match in any order, as openssl's sorted DER does.
    return tuple(frozenset(_canonical_value(attr) for attr in rdn) for rdn in name.rdns)


def _canonical_value(attr: x509.NameAttribute[str | bytes]) -> tuple[str, object]:
    # The ASN.1 string type is not public in cryptography; its _type holds it.
    kind = attr._type
    if kind in _FOLDED_TYPES and isinstance(attr.value, str):
        folded = _ASCII_SPACE.sub(" ", attr.value).strip(" ").translate(_ASCII_LOWER)
        return attr.oid.dotted_string, folded
    return attr.oid.dotted_string, (kind, attr.value)


def format_dn(name: x509.Name) -> str:
    """Format a name as an RFC 4514 string; ``parse_dn(format_dn(n)) == n``."""
    return name.rfc4514_string()


# RFC 4514 names only CN, L, ST, O, OU, C, STREET, DC and UID, so rfc4514_string() writes
# every other type as its dotted OID ("1.2.840.113549.1.9.1=ops@example.com"); these are the
# names `openssl x509 -subject -nameopt RFC2253` prints, the ones people know them by.
_DISPLAY_NAMES = {
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
    NameOID.INITIALS: "initials",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.GENERATION_QUALIFIER: "generationQualifier",
    NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.STREET_ADDRESS: "street",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionC",
    NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME: "jurisdictionST",
    NameOID.JURISDICTION_LOCALITY_NAME: "jurisdictionL",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    x509.ObjectIdentifier("2.5.4.13"): "description",
    x509.ObjectIdentifier("2.5.4.41"): "name",
    x509.ObjectIdentifier("2.5.4.45"): "x500UniqueIdentifier",
}
# The dotted forms rfc4514_string() writes for them ("STREET" is a name there already).
_DISPLAY_BY_TYPE = {
    (oid.dotted_string if oid != NameOID.STREET_ADDRESS else "STREET"): name
    for oid, name in _DISPLAY_NAMES.items()
}


def display_dn(name: x509.Name) -> str:
    """``name`` as RFC 4514 text for people to read: emailAddress named as OpenSSL does.

    For messages and summaries only: stored subjects and the strings client-certificate
    mappings match stay :func:`format_dn`'s (``rfc4514_string()``), which is what
    :func:`parse_dn` reads back.
    """
    return name.rfc4514_string(_DISPLAY_NAMES)


def display_dn_text(text: str) -> str:
    """A stored :func:`format_dn` string with its attribute types named as :func:`display_dn`.

    For what is kept as text (a certificate record's subject): ``display_dn_text(
    format_dn(n)) == display_dn(n)``, without parsing the name again.
    """
    if "=" not in text or not any(kind in text for kind in _DISPLAY_BY_TYPE):
        return text  # nearly always: CN, O, OU ... only
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        # At the start of an attribute: its type runs to the first '=' (a type holds none).
        eq = text.find("=", i)
        if eq < 0:
            out.append(text[i:])
            break
        out += (_DISPLAY_BY_TYPE.get(text[i:eq], text[i:eq]), "=")
        i = eq + 1
        # The value runs to the first ',' or '+' not escaped by a backslash.
        while i < n:
            c = text[i]
            if c == "\\":
                out.append(text[i : i + 2])
                i += 2
                continue
            out.append(c)
            i += 1
            if c in ",+":
                break
    return "".join(out)


# A displayed type at the start of a search or after "," or "+", in any case: the stored
# (format_dn) type it stands for, lower-cased as the search compares.
_STORED_BY_DISPLAYED = {name.lower(): kind.lower() for kind, name in _DISPLAY_BY_TYPE.items()}
_DISPLAYED_TYPE = re.compile(
    r"(^|[,+])("
    + "|".join(sorted(map(re.escape, _STORED_BY_DISPLAYED), key=len, reverse=True))
    + r")=",
    re.IGNORECASE,
)


def stored_dn_search(q: str) -> str | None:
    """``q`` (a search of subjects) with display_dn's type names as stored, lower-cased.

    Subjects are stored as :func:`format_dn` writes them (``1.2.840.113549.1.9.1=…``) and
    shown as :func:`display_dn` does (``emailAddress=…``): what a user copies from the
    display must find the certificate too. None when ``q`` names no such type.
    """
    stored = _DISPLAYED_TYPE.sub(
        lambda m: f"{m[1]}{_STORED_BY_DISPLAYED[m[2].lower()]}=", q.lower()
    )
    return stored if stored != q.lower() else None


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


_READ_NAMES = _AnyCaseNames(
    {name: x509.ObjectIdentifier(oid) for name, oid in _ATTRIBUTE_OIDS.items()}
)


class _UnknownAttributeType(InvalidRequest):
    def __init__(self, detail: str, name: str) -> None:
        super().__init__(detail)
        self.name = name


def _name_the_unknown_type(text: str) -> None:
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


def common_name_dn(common_name: str) -> x509.Name:
    """Build ``CN=<common_name>`` without parsing (commas and plus signs are literal)."""
    if not common_name:
        raise InvalidRequest("empty common name")
    if common_name.isspace():
        # A CN of spaces shows as nothing: nobody can recognise the certificate by it.
        raise InvalidRequest(f"{common_name!r}: blank common name")
    if len(common_name) > _UPPER_BOUNDS[NameOID.COMMON_NAME]:
        raise InvalidRequest(f"{common_name[:70]}: common name is longer than 64 characters")
    # isprintable() is False for every control character (and a few more categories, which
    # the per-character check then lets through): one C call for the usual name.
    if not common_name.isprintable():
        categories = {unicodedata.category(c) for c in common_name}
        if "Cc" in categories:
            raise InvalidRequest(f"{common_name!r}: control characters are not allowed in a name")
        if "Cs" in categories:
            # Bytes that were not UTF-8 reach Python as lone surrogates (PEP 383).
            raise InvalidRequest(f"{common_name!r}: common name is not valid UTF-8")
        if not _BIDI_CONTROLS.isdisjoint(common_name):
            raise InvalidRequest(
                f"{common_name!r}: bidirectional control characters are not allowed in a name "
                "(they make it display as another)"
            )
    if not common_name.isascii() and len(common_name.encode()) > _CN_MAX_OCTETS:
        raise InvalidRequest(
            f"{common_name}: common name is longer than {_CN_MAX_OCTETS} bytes as UTF-8"
        )
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def validate_dns_name(value: str, *, allow_wildcard: bool = True) -> str:
    """Return ``value`` as a lower-case A-label DNS name, or raise InvalidRequest.

    A wildcard is allowed only as the whole left-most label of a name with at least
    two more labels (``*.example.com``), as RFC 6125 6.4.3 clients expect.
    """
    raw = value.strip().rstrip(".")
    if not raw:
        raise InvalidRequest(f"{value!r}: empty DNS name")
    ascii_name = (raw if raw.isascii() else _to_a_labels(raw, value)).lower()
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


def _to_a_labels(raw: str, value: str) -> str:
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


def _validate_email(value: str) -> str:
    local, sep, domain = value.strip().rpartition("@")
    # A dot-atom (RFC 5322 3.4.1: no dot first, last or twice) of at most 64 octets (RFC
    # 5321 4.5.3.1.1): what mail software takes, so what a client certificate should name.
    dot_atom = not (local.startswith(".") or local.endswith(".") or ".." in local)
    if not sep or not domain or not _LOCAL_PART.match(local) or not dot_atom or len(local) > 64:
        raise InvalidRequest(f"{value}: not a valid e-mail address")
    try:
        return f"{local}@{validate_dns_name(domain, allow_wildcard=False)}"
    except InvalidRequest as exc:
        # Named whole: the domain's own message alone did not say which SAN it came from.
        raise InvalidRequest(f"{value}: not a valid e-mail address: {exc.detail}") from None


# RFC 3986 2.2-2.3: the characters a URI holds unencoded (reserved and unreserved); any other
# is percent-encoded. Signed as given, a quote, angle bracket, backslash or control character
# in a URI SAN reached every tool that shows or parses the certificate.
_URI_CHARACTERS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%"
)
_PERCENT_ENCODED = re.compile(r"%(?![0-9A-Fa-f]{2})")
# SPIFFE's limit on an ID (2,048 bytes); no URI a certificate names needs more.
_URI_MAX = 2048


def _validate_uri(value: str) -> str:
    text = value.strip()
    if not text.isascii() or any(c.isspace() for c in text):
        raise InvalidRequest(f"{value}: URIs must be ASCII without spaces")
    if len(text) > _URI_MAX:
        raise InvalidRequest(f"{text[:40]}…: not a valid URI: longer than {_URI_MAX} characters")
    bad = next((c for c in text if c not in _URI_CHARACTERS), None)
    if bad is not None:
        raise InvalidRequest(f"{value}: not a valid URI: {bad!r} must be percent-encoded")
    if _PERCENT_ENCODED.search(text):
        raise InvalidRequest(f"{value}: not a valid URI: '%' not followed by two hex digits")
    parts = urlsplit(text)
    if not parts.scheme or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*$", parts.scheme):
        raise InvalidRequest(f"{value}: URI needs a scheme (e.g. spiffe://, https://)")
    if not (parts.netloc or parts.path):
        raise InvalidRequest(f"{value}: URI has nothing after the scheme")
    return text


def san_search_forms(text: str) -> tuple[str, ...]:
    """What a search for ``text`` looks for in stored SAN values: lower case, ASCII only.

    Stored values are ASCII (DNS names and e-mail domains as A-labels, URIs ASCII, IP
    addresses in canonical form), so a search spelled otherwise looks for those spellings:
    ``Bücher.example`` for ``xn--bcher-kva.example``, ``2001:DB8:0::7`` for
    ``2001:db8::7``, ``::ffff:10.0.0.5`` for ``10.0.0.5``. A non-ASCII label is only found
    whole: a part of it has another punycode than the label. Empty when ``text`` has no
    such spelling (non-ASCII and no host name): no SAN can contain it.
    """
    forms = []
    if text.isascii():
        forms.append(text.lower())
    else:
        local, at, domain = text.rpartition("@")
        if local.isascii():
            try:
                forms.append(f"{local}{at}{_to_a_labels(domain, text)}".lower())
            except InvalidRequest:
                pass
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        pass
    else:
        if not getattr(address, "scope_id", None):
            forms.append(str(_ipv4_form(address)))
    return _dedupe(forms)


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# The keys of ``SubjectAltNames.as_dict``, as stored.
SAN_KINDS = ("dns", "ip", "email", "uri")


@dataclass(frozen=True)
class SubjectAltNames:
    """Validated subject alternative names, in the order given, without duplicates."""

    dns: tuple[str, ...] = ()
    ip: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    email: tuple[str, ...] = ()
    uri: tuple[str, ...] = field(default=())

    @classmethod
    def parse(
        cls,
        dns: Sequence[str] = (),
        ip: Sequence[str] = (),
        email: Sequence[str] = (),
        uri: Sequence[str] = (),
    ) -> SubjectAltNames:
        """Validate and normalise SAN strings.

        Raises:
            InvalidRequest: one value is malformed; the message names it.
        """
        ips = []
        for kind, values in (("IP address", ip), ("e-mail address", email), ("URI", uri)):
            for text in values:
                if not text.strip():
                    # Named as validate_dns_name does: "certctl: error: : not a valid IPv4 …"
                    # (an unset shell variable in --ip "$ADDR") read as a garbled message.
                    raise InvalidRequest(f"{text!r}: empty {kind}")
        for text in ip:
            try:
                address = ipaddress.ip_address(text.strip())
            except ValueError:
                raise InvalidRequest(f"{text}: not a valid IPv4 or IPv6 address") from None
            if getattr(address, "scope_id", None):
                # RFC 5280 4.2.1.6: an iPAddress is 4 or 16 octets; a zone would be dropped.
                raise InvalidRequest(f"{text}: IPv6 zone IDs cannot go in a certificate")
            ips.append(_ipv4_form(address))
        return cls(
            dns=_dedupe(validate_dns_name(d) for d in dns),
            ip=tuple(dict.fromkeys(ips)),
            email=_dedupe(_validate_email(e) for e in email),
            uri=_dedupe(_validate_uri(u) for u in uri),
        )

    def __bool__(self) -> bool:
        return bool(self.dns or self.ip or self.email or self.uri)

    def to_general_names(self) -> list[x509.GeneralName]:
        """Return the names as cryptography GeneralName objects."""
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in self.dns]
        names += [x509.IPAddress(a) for a in self.ip]
        names += [x509.RFC822Name(e) for e in self.email]
        names += [x509.UniformResourceIdentifier(u) for u in self.uri]
        return names

    def to_extension(self) -> x509.SubjectAlternativeName:
        """Return the SubjectAlternativeName extension value."""
        return x509.SubjectAlternativeName(self.to_general_names())

    @classmethod
    def from_extension(cls, ext: x509.SubjectAlternativeName) -> SubjectAltNames:
        """Read the names back from an extension (other name types are ignored)."""
        ips = ext.get_values_for_type(x509.IPAddress)
        return cls(
            dns=tuple(ext.get_values_for_type(x509.DNSName)),
            ip=tuple(
                a for a in ips if isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address)
            ),
            email=tuple(ext.get_values_for_type(x509.RFC822Name)),
            uri=tuple(ext.get_values_for_type(x509.UniformResourceIdentifier)),
        )

    @classmethod
    def validated(cls, names: Iterable[x509.GeneralName]) -> SubjectAltNames:
        """Validate and normalise the names of a parsed extension, as ``parse`` does.

        One pass over the names (``from_extension`` then ``parse`` walked them five times,
        a tenth of a CSR issuance's Python time); other name types are ignored.

        Raises:
            InvalidRequest: one value is malformed; the message names it.
        """
        dns: list[str] = []
        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        email: list[str] = []
        uri: list[str] = []
        for name in names:
            kind = type(name)
            if kind is x509.DNSName:
                dns.append(validate_dns_name(name.value))
            elif kind is x509.IPAddress:
                # A network (name constraints' form) is no address: ignored, as before.
                if isinstance(name.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                    ips.append(_ipv4_form(name.value))
            elif kind is x509.RFC822Name:
                email.append(_validate_email(name.value))
            elif kind is x509.UniformResourceIdentifier:
                uri.append(_validate_uri(name.value))
        return cls(
            dns=_dedupe(dns), ip=tuple(dict.fromkeys(ips)), email=_dedupe(email), uri=_dedupe(uri)
        )

    def as_dict(self) -> dict[str, list[str]]:
        """Return ``SAN_KINDS`` lists of strings (for JSON output)."""
        return {
            "dns": list(self.dns),
            "ip": [str(a) for a in self.ip],
            "email": list(self.email),
            "uri": list(self.uri),
        }
