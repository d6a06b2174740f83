"""Chain, name, purpose and validity verification on top of ``cryptography.x509.verification``."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certctl.errors import InvalidRequest

__all__ = ["VerificationFailed", "VerifiedChain", "verify_certificate"]


class VerificationFailed(InvalidRequest):
    """The certificate does not verify against the trust bundle for the purpose asked."""

    title = "Verification failed"


@dataclass(frozen=True)
class VerifiedChain:
    """The path that verified, leaf first, and what was checked."""

    chain: tuple[x509.Certificate, ...]
    purpose: str
    name: str | None


def verify_certificate(
    leaf: x509.Certificate,
    *,
    trust: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate] = (),
    hostname: str | None = None,
    purpose: str = "server",
    now: datetime,
) -> VerifiedChain:
    """Verify ``leaf`` chains to ``trust`` for ``purpose`` at time ``now``.

    Args:
        leaf: the end-entity certificate.
        trust: trust anchors (root CA certificates).
        untrusted: intermediates that may complete the path.
        hostname: DNS name or IP address the server certificate must match; when omitted for
            a server certificate, its first SAN is used so chain and purpose are still checked.
        purpose: ``server`` (serverAuth) or ``client`` (clientAuth).
        now: the verification time.

    Raises:
        VerificationFailed: the chain, the name, the purpose or the validity window fails.
        InvalidRequest: the trust bundle is empty or the purpose is unknown.
    """
    if not trust:
        raise InvalidRequest("trust bundle holds no certificate")
    if purpose not in ("server", "client"):
        raise InvalidRequest(f"{purpose}: unknown purpose (server or client)")
    _check_window(leaf, now)
    builder = PolicyBuilder().store(Store(list(trust))).time(now)
    try:
        if purpose == "client":
            verified = builder.build_client_verifier().verify(leaf, list(untrusted))
            return VerifiedChain(tuple(verified.chain), purpose, None)
        name = hostname or _first_san(leaf)
        subject = _subject_for(name)
        chain = builder.build_server_verifier(subject).verify(leaf, list(untrusted))
        return VerifiedChain(tuple(chain), purpose, name)
    except VerificationError as exc:
        message = str(exc)
        eddsa = "Forbidden public key algorithm" in message and "Ed25519" in message
        # 2.5.29.17 = subjectAltName. Client certificates commonly carry only a CN, and
        # OpenSSL/nginx accept them; cryptography's client policy insists on a SAN.
        client_without_san = purpose == "client" and "2.5.29.17" in message
        if eddsa or client_without_san:
            # cryptography's verifier follows the CA/B Forum web policy, which forbids EdDSA;
            # RFC 8410 allows it for private PKIs. Both cases take a plain RFC 5280 path.
            return _verify_rfc5280(leaf, trust, untrusted, hostname, purpose, now)
        raise VerificationFailed(f"verification failed: {_reason(exc)}") from exc


_EKU_FOR = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


def _verify_rfc5280(
    leaf: x509.Certificate,
    trust: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
    hostname: str | None,
    purpose: str,
    now: datetime,
) -> VerifiedChain:
    """A minimal RFC 5280 path check: signatures, CA constraints, windows, EKU, name."""
    name = None
    if purpose == "server":
        name = hostname or _first_san(leaf)
        if not _name_matches(leaf, _subject_for(name)):
            raise VerificationFailed(
                f"verification failed: {name} is not in the certificate's SANs"
            )
    try:
        ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if _EKU_FOR[purpose] not in ekus:
            raise VerificationFailed(f"verification failed: certificate lacks {purpose}Auth")
    except x509.ExtensionNotFound:
        pass
    chain = [leaf]
    pool = list(untrusted)
    current = leaf
    for _ in range(8):
        for anchor in trust:
            if _issued_by(current, anchor):
                _check_window(anchor, now)
                return VerifiedChain((*chain, anchor), purpose, name)
        parent = next((c for c in pool if _issued_by(current, c) and _is_ca(c)), None)
        if parent is None:
            break
        _check_window(parent, now)
        pool.remove(parent)
        chain.append(parent)
        current = parent
    raise VerificationFailed("verification failed: no path to a trusted certificate")


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject or not _is_ca(parent):
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca and usage.key_cert_sign


def _name_matches(leaf: x509.Certificate, wanted: x509.DNSName | x509.IPAddress) -> bool:
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if isinstance(wanted, x509.IPAddress):
        return wanted.value in sans.get_values_for_type(x509.IPAddress)
    host = wanted.value
    for pattern in sans.get_values_for_type(x509.DNSName):
        pattern = pattern.lower()
        if pattern == host:
            return True
        # RFC 6125 6.4.3: '*' matches exactly one whole left-most label.
        if pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _check_window(leaf: x509.Certificate, now: datetime) -> None:
    if now < leaf.not_valid_before_utc:
        raise VerificationFailed(
            f"certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    if now > leaf.not_valid_after_utc:
        raise VerificationFailed(
            f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        )


def _first_san(leaf: x509.Certificate) -> str:
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise VerificationFailed("server certificate has no SubjectAlternativeName") from None
    for value in ext:
        if isinstance(value, x509.DNSName):
            return value.value.replace("*.", "wildcard.", 1)
        if isinstance(value, x509.IPAddress):
            return str(value.value)
    raise VerificationFailed("server certificate has no DNS or IP SAN")


def _subject_for(name: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name.lower().rstrip("."))


def _reason(exc: VerificationError) -> str:
    # Drop cryptography's "(encountered processing <Certificate…>)" tail: noise for users.
    return str(exc).split(" (encountered processing")[0].removeprefix("validation failed: ")
