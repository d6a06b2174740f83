"""Distinguished names (RFC 4514 strings) and subject alternative names.

The names of the modules that hold them, where callers have always imported them from:
distinguished_names (parse, check, build, compare), dn_display (as people read them),
dn_patterns (``CN=*`` patterns), dns_names (labels, wildcards, IDNA) and subject_alt_names.
"""

from __future__ import annotations

from certctl.pki.distinguished_names import (
    check_name,
    common_name_dn,
    format_dn,
    name_match_key,
    names_match,
    parse_dn,
)
from certctl.pki.dn_display import display_dn, display_dn_text, stored_dn_search
from certctl.pki.dn_patterns import DNPattern
from certctl.pki.dns_names import validate_dns_name
from certctl.pki.subject_alt_names import SAN_KINDS, SubjectAltNames, san_search_forms

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
    "stored_dn_search",
    "validate_dns_name",
]
