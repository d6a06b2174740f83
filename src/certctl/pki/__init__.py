"""Pure X.509 work: keys, names, validity, profiles, issuance, CSRs, formats, verification, CRLs.

Nothing here touches the network or a database; callers pass ``now`` explicitly.

The names below load on first use (PEP 562): ``from certctl.pki import X`` imports only the
submodule that defines ``X``. A CLI command that signs certificates then skips CRLs, CSRs,
PKCS#12 and path verification, whose imports are a large share of its start-up.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING

# cryptography warns, with a source line, when it parses a name holding a CN over 64 bytes
# or a country code not 2 long (it refuses to build one). certctl checks names itself
# (names.check_name) and reports them in one line; the warning would only precede that
# line. Limited to that message, raised from certctl's own code.
warnings.filterwarnings(
    "ignore", message="Attribute's length must be", category=UserWarning, module="certctl"
)
# The same for a serial number of 0 or below (`openssl req -x509 -set_serial 0`, common in
# hand-made CA scripts): two lines with a source line each, once per place that read it.
# inspect names it in one line instead.
warnings.filterwarnings(
    "ignore",
    message="Parsed a serial number which wasn't positive",
    category=UserWarning,
    module="certctl",
)

if TYPE_CHECKING:
    from certctl.pki.chain_links import asserts_ca, is_self_signed, issuer_chain
    from certctl.pki.crl import (
        PreviousCrl,
        RevokedEntry,
        create_crl,
        load_previous_crl,
        parse_serial,
    )
    from certctl.pki.csr import create_csr, csr_sans, load_csr, load_csr_with_key, sign_csr
    from certctl.pki.distinguished_names import common_name_dn, format_dn, parse_dn
    from certctl.pki.dn_display import display_dn, display_dn_text
    from certctl.pki.dn_patterns import DNPattern
    from certctl.pki.formats import (
        Material,
        certs_to_pem,
        format_serial,
        key_to_pem,
        load_material,
        load_private_key,
        to_pkcs12,
    )
    from certctl.pki.issue import (
        CertificateAuthority,
        IssuedCertificate,
        NameHint,
        create_root_ca,
        keys_match,
    )
    from certctl.pki.keys import (
        KeyType,
        check_public_key,
        generate_private_key,
        key_type_of,
        unreadable_key,
    )
    from certctl.pki.profiles import LEAF_PROFILES, PROFILES, Profile, get_profile
    from certctl.pki.revocation import check_revocation
    from certctl.pki.server_names import parse_hostname
    from certctl.pki.subject_alt_names import SubjectAltNames
    from certctl.pki.validity import format_days, format_duration, parse_duration
    from certctl.pki.verdicts import IssuerNotFound, VerificationFailed, VerifiedChain, WrongPurpose
    from certctl.pki.verify import verify_certificate

# Public name -> the submodule that defines it.
_SOURCES = {
    "RevokedEntry": "crl",
    "create_crl": "crl",
    "load_previous_crl": "crl",
    "PreviousCrl": "crl",
    "parse_serial": "crl",
    "parse_hostname": "server_names",
    "create_csr": "csr",
    "csr_sans": "csr",
    "load_csr": "csr",
    "load_csr_with_key": "csr",
    "sign_csr": "csr",
    "Material": "formats",
    "certs_to_pem": "formats",
    "format_serial": "formats",
    "key_to_pem": "formats",
    "load_material": "formats",
    "load_private_key": "formats",
    "to_pkcs12": "formats",
    "CertificateAuthority": "issue",
    "IssuedCertificate": "issue",
    "NameHint": "issue",
    "create_root_ca": "issue",
    "keys_match": "issue",
    "KeyType": "keys",
    "check_public_key": "keys",
    "generate_private_key": "keys",
    "key_type_of": "keys",
    "unreadable_key": "keys",
    "DNPattern": "dn_patterns",
    "SubjectAltNames": "subject_alt_names",
    "common_name_dn": "distinguished_names",
    "display_dn": "dn_display",
    "display_dn_text": "dn_display",
    "format_dn": "distinguished_names",
    "parse_dn": "distinguished_names",
    "check_revocation": "revocation",
    "LEAF_PROFILES": "profiles",
    "PROFILES": "profiles",
    "Profile": "profiles",
    "get_profile": "profiles",
    "format_days": "validity",
    "format_duration": "validity",
    "parse_duration": "validity",
    "IssuerNotFound": "verdicts",
    "VerificationFailed": "verdicts",
    "VerifiedChain": "verdicts",
    "WrongPurpose": "verdicts",
    "verify_certificate": "verify",
    "asserts_ca": "chain_links",
    "is_self_signed": "chain_links",
    "issuer_chain": "chain_links",
}

__all__ = [
    "LEAF_PROFILES",
    "PROFILES",
    "CertificateAuthority",
    "DNPattern",
    "IssuedCertificate",
    "IssuerNotFound",
    "KeyType",
    "Material",
    "NameHint",
    "PreviousCrl",
    "Profile",
    "RevokedEntry",
    "SubjectAltNames",
    "VerificationFailed",
    "VerifiedChain",
    "WrongPurpose",
    "asserts_ca",
    "certs_to_pem",
    "check_public_key",
    "check_revocation",
    "common_name_dn",
    "create_crl",
    "create_csr",
    "create_root_ca",
    "csr_sans",
    "display_dn",
    "display_dn_text",
    "format_days",
    "format_dn",
    "format_duration",
    "format_serial",
    "generate_private_key",
    "get_profile",
    "is_self_signed",
    "issuer_chain",
    "key_to_pem",
    "key_type_of",
    "keys_match",
    "load_csr",
    "load_csr_with_key",
    "load_material",
    "load_previous_crl",
    "load_private_key",
    "parse_dn",
    "parse_duration",
    "parse_hostname",
    "parse_serial",
    "sign_csr",
    "to_pkcs12",
    "unreadable_key",
    "verify_certificate",
]


def __getattr__(name: str) -> object:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
