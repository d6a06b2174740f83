"""Distinguished names: parsed from RFC 4514 strings, built, checked, formatted and compared."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Hashable

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from certctl.errors import InvalidRequest
from certctl.pki.dn_patterns import ATTRIBUTE_TYPE_NAMES, refuse_unknown_attribute_type

__all__ = [
    "check_name",
    "common_name_dn",
    "format_dn",
    "name_match_key",
    "names_match",
    "parse_dn",
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
# cryptography's own limit on a CN is 64 octets of UTF-8 (RFC 5280 counts 64 characters):
# a longer value cannot be built into a name, and parsing one prints a UserWarning.
_CN_MAX_OCTETS = 64
# Unicode's explicit bidirectional formatting characters (UAX #9: embeddings, overrides,
# isolates, marks). In a name they make it display as another: "CN=moc.elgoog\u202e" shows
# as a familiar host in a UI that renders bidi ("Trojan Source", CVE-2021-42574).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


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
        name = x509.Name.from_rfc4514_string(text, ATTRIBUTE_TYPE_NAMES)
    except ValueError as exc:
        refuse_unknown_attribute_type(text)
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
        x509.Name.from_rfc4514_string(candidate, ATTRIBUTE_TYPE_NAMES)
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
