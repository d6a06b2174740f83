"""Distinguished names as people read them: attribute types named as OpenSSL prints them."""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["display_dn", "display_dn_text", "stored_dn_search"]


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
