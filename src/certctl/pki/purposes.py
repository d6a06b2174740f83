"""What a certificate may be used for (extendedKeyUsage, keyUsage), as TLS clients check it."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certctl.pki.dn_display import display_dn
from certctl.pki.verdicts import VerificationFailed, WrongPurpose

__all__ = [
    "check_ca_purposes",
    "check_purpose",
    "eku_name",
    "oid_name",
]


_EKU_FOR = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


def oid_name(oid: x509.ObjectIdentifier) -> str:
    """The name pyca/cryptography knows ``oid`` by (mostly openssl's), else the dotted OID."""
    name = getattr(oid, "_name", "Unknown OID")
    return oid.dotted_string if name == "Unknown OID" else str(name)


def eku_name(oid: x509.ObjectIdentifier) -> str:
    """An extended key usage as openssl's short names spell it (``serverAuth``), else dotted."""
    if oid == ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE:
        return "anyExtendedKeyUsage"  # cryptography names it "Unknown OID"
    return oid_name(oid)


def check_purpose(leaf: x509.Certificate, purpose: str) -> None:
    """Refuse a certificate whose extended or plain key usage excludes ``purpose``.

    No extendedKeyUsage allows any purpose, no keyUsage any use of the key (_check_key_usage).
    anyExtendedKeyUsage alone does not do: openssl (-purpose sslserver/sslclient) and
    cryptography's verifier both refuse it for TLS.
    """
    try:
        ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        ekus = None
    if ekus is not None and _EKU_FOR[purpose] not in ekus:
        names = ", ".join(eku_name(oid) for oid in ekus) or "none"
        suits = next((other for other, eku in _EKU_FOR.items() if eku in ekus), None)
        raise WrongPurpose(
            f"verification failed: certificate lacks the {purpose}Auth extended key usage "
            f"(it has {names})",
            suits,
        )
    _check_key_usage(leaf, purpose)


# The keyUsage bits a TLS server or client key needs one of, as OpenSSL's purpose checks
# (check_purpose_ssl_server/_client) take them: signing (ECDHE), or RSA key transport or
# static (EC)DH for a server; signing or key agreement for a client.
_TLS_KEY_USAGES = {
    "server": ("digital_signature", "key_encipherment", "key_agreement"),
    "client": ("digital_signature", "key_agreement"),
}
_KEY_USAGE_NAMES = {
    "digital_signature": "digitalSignature",
    "content_commitment": "nonRepudiation",
    "key_encipherment": "keyEncipherment",
    "data_encipherment": "dataEncipherment",
    "key_agreement": "keyAgreement",
    "key_cert_sign": "keyCertSign",
    "crl_sign": "cRLSign",
}


def _check_key_usage(leaf: x509.Certificate, purpose: str) -> None:
    """Refuse a leaf whose keyUsage allows none of the uses TLS makes of its key.

    cryptography's verifier does not look at it; OpenSSL (openssl verify -purpose, and so
    nginx, curl and Python's ssl) refuses such a certificate: "unsuitable certificate
    purpose". No keyUsage at all allows every use (RFC 5280 4.2.1.3).
    """
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    needed = _TLS_KEY_USAGES[purpose]
    if any(getattr(usage, attr) for attr in needed):
        return
    held = ", ".join(name for attr, name in _KEY_USAGE_NAMES.items() if getattr(usage, attr))
    names = [_KEY_USAGE_NAMES[attr] for attr in needed]
    raise VerificationFailed(
        f"verification failed: certificate's keyUsage {held or 'none'} allows no TLS {purpose} "
        f"use (it needs {', '.join(names[:-1])} or {names[-1]})"
    )


def check_ca_purposes(
    cas: Sequence[x509.Certificate], purpose: str, *, any_eku_in_cas: bool
) -> None:
    """Refuse a path through a CA whose extendedKeyUsage leaves out ``purpose``.

    RFC 5280 does not chain EKUs, but OpenSSL ("unsuitable certificate purpose", the trust
    anchor included), cryptography's verifier, Go and Windows do. anyExtendedKeyUsage lets
    every purpose through with ``any_eku_in_cas``, as in Go and cryptography's verifier;
    without, it does not, as in OpenSSL's check (its XKU_ANYEKU is outside the sslserver
    and sslclient masks), which nginx and curl apply.
    """
    wanted = _EKU_FOR[purpose]
    for ca in cas:
        try:
            usages = ca.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        any_eku = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages
        if wanted in usages or (any_eku and any_eku_in_cas):
            continue
        names = ", ".join(eku_name(oid) for oid in usages) or "none"
        note = ""
        if any_eku:
            note = " (anyExtendedKeyUsage stands for no TLS purpose in openssl's check of a CA)"
        raise VerificationFailed(
            f"verification failed: CA {display_dn(ca.subject)} limits the certificates "
            f"below it to {names}, not {purpose}Auth{note}"
        )
