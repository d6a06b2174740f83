"""Pure X.509 work: keys, names, validity, profiles, issuance, CSRs, formats, verification, CRLs.

Nothing here touches the network or a database; callers pass ``now`` explicitly.
"""

from __future__ import annotations

from certctl.pki.crl import RevokedEntry, create_crl, parse_serial
from certctl.pki.csr import create_csr, csr_sans, load_csr, sign_csr
from certctl.pki.formats import (
    Material,
    certs_to_pem,
    key_to_pem,
    load_material,
    load_private_key,
    to_pkcs12,
)
from certctl.pki.issue import CertificateAuthority, IssuedCertificate, create_root_ca, keys_match
from certctl.pki.keys import KeyType, check_public_key, generate_private_key, key_type_of
from certctl.pki.names import SubjectAltNames, common_name_dn, format_dn, parse_dn
from certctl.pki.profiles import LEAF_PROFILES, PROFILES, Profile, get_profile
from certctl.pki.validity import format_duration, parse_duration
from certctl.pki.verify import VerificationFailed, VerifiedChain, verify_certificate

__all__ = [
    "LEAF_PROFILES",
    "PROFILES",
    "CertificateAuthority",
    "IssuedCertificate",
    "KeyType",
    "Material",
    "Profile",
    "RevokedEntry",
    "SubjectAltNames",
    "VerificationFailed",
    "VerifiedChain",
    "certs_to_pem",
    "check_public_key",
    "common_name_dn",
    "create_crl",
    "create_csr",
    "create_root_ca",
    "csr_sans",
    "format_dn",
    "format_duration",
    "generate_private_key",
    "get_profile",
    "key_to_pem",
    "key_type_of",
    "keys_match",
    "load_csr",
    "load_material",
    "load_private_key",
    "parse_dn",
    "parse_duration",
    "parse_serial",
    "sign_csr",
    "to_pkcs12",
    "verify_certificate",
]
