"""A service's leaf certificate: when it is renewed, and what is served now."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    Profile,
    SubjectAltNames,
    common_name_dn,
)
from certctl.services.context import Services
from certctl.services.service_settings import ServiceSettings
from certctl.services.tls_spec import TLSServiceSpec
from certctl.store.models import ManagedService

__all__ = [
    "Desired",
    "extended_key_usages",
    "issued_by",
    "key_identifiers_match",
    "needs_leaf",
    "renewal_by_current_margin",
    "renewal_time",
    "served_chain",
    "served_material",
    "service_profile",
]


@dataclass
class Desired:
    """What one reconcile decided to serve."""

    certificate_pem: str | None = None
    chain_pem: str = ""
    ca_pem: str = ""
    key_pem: bytes | None = None
    ca_key_pem: bytes | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Cut short to its CA's notAfter: a new one issued from that CA would end no later.
    ends_with_ca: bool = False
    # A custom certificate served as it is: only its owner renews it.
    as_is: bool = False
    # The certificate served until now does not chain to the CA that issued this one (another
    # name or key): the old CA is kept in ca.crt for a while, whatever else changed with it.
    ca_replaced: bool = False


def _jitter(settings: ServiceSettings, name: str, serial: str) -> timedelta:
    # Deterministic per certificate, so restarts do not move the renewal time.
    fraction = int(hashlib.sha256(f"{name}:{serial}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    # At most half the time a certificate lives before its margin: a cert-validity barely
    # longer than cert-rotate-before (25h and 24h) put the jittered renewal of most
    # certificates before their issue, so each was reissued (and reloaded, and announced as
    # "renewed") at every pass until the hash of a serial happened to land late enough.
    room = (settings.cert_validity - settings.cert_rotate_before) / 2
    return min(settings.cert_rotate_before * settings.jitter, room) * fraction


def renewal_time(
    settings: ServiceSettings, name: str, serial: str, not_after: datetime
) -> datetime:
    """When certctl renews the certificate ``serial``: ``cert-rotate-before`` (and jitter) ahead."""
    return not_after - settings.cert_rotate_before - _jitter(settings, name, serial)


def renewal_by_current_margin(settings: ServiceSettings, row: ManagedService) -> datetime | None:
    """The stored renewal time, brought forward to the ``cert-rotate-before`` configured now.

    The stored time was computed with the margin of the day the certificate was issued: a
    ``cert-rotate-before`` raised since (say 24h to 720h, to have a month to notice a failing
    renewal) left every existing certificate renewing by the old margin, and the service sent
    ``expiring`` (judged by the new one) for a certificate nothing renewed. ECK judges each
    certificate by the current margin at each pass. Never later than stored: a renewal
    already due, or asked for (``services renew``), stays so. None (a certificate certctl
    does not renew: custom, or cut short by its CA) stays None.
    """
    if row.renew_at is None or row.not_after is None or row.serial is None:
        return row.renew_at
    return min(row.renew_at, renewal_time(settings, row.name, row.serial, row.not_after))


def needs_leaf(
    row: ManagedService, spec: TLSServiceSpec, ca: CertificateAuthority, now: datetime
) -> str | None:
    """Why the certificate must be reissued, or None."""
    if row.certificate_pem is None or row.wrapped_key is None:
        return "no certificate yet"
    if row.renew_at is not None and now >= row.renew_at:
        return "due for renewal"
    cert = x509.load_pem_x509_certificate(row.certificate_pem.encode())
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = SubjectAltNames.from_extension(ext)
    except x509.ExtensionNotFound:
        have = SubjectAltNames()
    wanted = SubjectAltNames.parse(dns=spec.dns_names(), ip=spec.ip_addresses())
    # As sets: the same names listed in another order (a reformatted YAML) are the same
    # certificate, not a reason to reissue and reload.
    if (set(have.dns), set(have.ip)) != (set(wanted.dns), set(wanted.ip)) or have.email or have.uri:
        return "subject alternative names changed"
    if cert.subject != common_name_dn(spec.name):
        return "subject changed"
    if set(extended_key_usages(cert) or ()) != set(service_profile(spec).extended_key_usage):
        return "usages changed"
    if cert.issuer != ca.certificate.subject:
        return "issuer changed"
    if not _signed_with_key_of(cert, ca.certificate):
        return "issuer key changed"
    if not key_identifiers_match(cert, ca.certificate):
        # The same key under another subjectKeyIdentifier (a CA renewed by a tool that
        # computes it otherwise): OpenSSL does not take that CA for the leaf's issuer.
        return "issuer key identifier changed"
    if row.renew_at is None and cert.not_valid_after_utc < ca.certificate.not_valid_after_utc:
        # No renewal date: left without one because its CA was about to expire (_store_issue)
        # and the CA was renewed since, or served as is from a secret that now holds the CA
        # that issued it. Kept, it would never be renewed, and served past its notAfter.
        return "not renewed by certctl yet"
    return None


def issued_by(cert: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    """Whether ``ca_certificate`` (its name, key and key identifier) signed ``cert``."""
    if cert.issuer != ca_certificate.subject:
        return False
    return _signed_with_key_of(cert, ca_certificate) and key_identifiers_match(cert, ca_certificate)


def _signed_with_key_of(cert: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, Exception):
        return False
    return True


def key_identifiers_match(cert: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    """Whether ``cert``'s authorityKeyIdentifier is ``ca_certificate``'s SKI, where both are.

    OpenSSL (X509_check_akid) takes a CA whose SKI is not the leaf's AKI for no issuer of
    it, whatever signed it: a CA renewed with its key and name under another SKI (Go 1.25
    computes it by truncated SHA-256) verifies none of the leaves signed under the old one.
    """
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return True  # nothing to compare (ValueError: an extension pyca cannot parse)
    return aki.key_identifier is None or aki.key_identifier == ski.digest


def service_profile(spec: TLSServiceSpec) -> Profile:
    """What certctl issues the service's certificate as: ``usages`` (server auth by default)."""
    return PROFILES["server+client"] if spec.client_auth else PROFILES["server"]


def extended_key_usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier] | None:
    """The certificate's extended key usages; None without the extension (any usage)."""
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def served_chain(ca: CertificateAuthority) -> str:
    """What targets serve after the leaf: the CA's chain up to, not including, a root.

    A custom ``ca.crt`` ending with an intermediate (its root left out) is served too, as
    ECK serves its CA after the leaf: left out, a client trusting the root had no way to it
    (``CertificateAuthority.chain_below_root`` keeps such a top).
    """
    return ca.chain_below_root_pem.decode()


def served_material(services: Services, row: ManagedService) -> Desired:
    """What the service serves now, as stored (its key unwrapped)."""
    key = None
    if row.wrapped_key is not None:
        key = services.wrapper.unwrap(row.wrapped_key, context=f"service:{row.name}")
    return Desired(row.certificate_pem, row.chain_pem or "", row.ca_pem or "", key)
