"""The host name a server certificate must match: parsed, matched to its SANs, or said missing."""

from __future__ import annotations

import ipaddress

from cryptography import x509

from certctl.errors import InvalidRequest
from certctl.pki.chain_links import asserts_ca
from certctl.pki.dn_display import display_dn
from certctl.pki.dns_names import validate_dns_name
from certctl.pki.verdicts import VerificationFailed

__all__ = [
    "first_san",
    "name_matches",
    "no_host_name",
    "not_in_sans",
    "parse_hostname",
    "subject_for",
]


def parse_hostname(text: str) -> x509.DNSName | x509.IPAddress:
    """The name a server certificate must match, from a user's ``--hostname``.

    An IP address (IPv6 maybe in brackets) or a DNS name, IDNA-encoded and lower-cased as
    certificates hold it (``ünï.example`` matches a SAN ``xn--n-nga1b.example``).

    Raises:
        InvalidRequest: empty, a wildcard, or neither an IP address nor a valid DNS name.
    """
    raw = text.strip()
    if not raw:
        raise InvalidRequest("the host name is empty")
    try:
        return x509.IPAddress(ipaddress.ip_address(raw.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    if "*" in raw:
        raise InvalidRequest(f"{text!r}: give a host name, not a wildcard pattern")
    try:
        return x509.DNSName(validate_dns_name(raw, allow_wildcard=False))
    except InvalidRequest:
        raise InvalidRequest(
            f"{text!r}: not an IP address or a valid DNS name (dot-separated labels of "
            "letters, digits and '-', not starting or ending with '-')"
        ) from None


def name_matches(leaf: x509.Certificate, wanted: x509.DNSName | x509.IPAddress) -> bool:
    """Whether ``leaf``'s SANs hold ``wanted``, wildcards matched as TLS clients match them."""
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if isinstance(wanted, x509.IPAddress):
        return wanted.value in sans.get_values_for_type(x509.IPAddress)
    host = wanted.value
    for pattern in sans.get_values_for_type(x509.DNSName):
        pattern = pattern.lower()
        if pattern == host or (_wildcard_matches(pattern, host) and _specific_enough(pattern)):
            return True
    return False


def _wildcard_matches(pattern: str, host: str) -> bool:
    # RFC 6125 6.4.3: '*' matches exactly one whole left-most label.
    return pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]


def _specific_enough(pattern: str) -> bool:
    # Two labels after '*.', as OpenSSL (X509_check_host), curl and browsers want and
    # certctl issues: '*.com' stands for every host of a top-level domain, matched by none.
    return "." in pattern[2:]


def not_in_sans(leaf: x509.Certificate, name: str) -> VerificationFailed:
    """The name a server certificate does not match, with the names it does hold.

    cryptography says only "leaf certificate has no matching subjectAltName": neither the
    name checked (IDNA-encoded, as compared) nor what the certificate was made for.
    """
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    broad = next(
        (
            p
            for p in sans.get_values_for_type(x509.DNSName)
            if _wildcard_matches(p.lower(), name) and not _specific_enough(p)
        ),
        None,
    )
    if broad is not None:
        return VerificationFailed(
            f"verification failed: {name} matches only the wildcard {broad}, which clients "
            "refuse (a wildcard needs two labels after '*.')"
        )
    held = [f"DNS:{v}" for v in sans.get_values_for_type(x509.DNSName)]
    held += [f"IP:{v}" for v in sans.get_values_for_type(x509.IPAddress)]
    shown = ", ".join(held[:_SHOWN_SANS]) or "none for a host"
    if len(held) > _SHOWN_SANS:
        shown += f" and {len(held) - _SHOWN_SANS} more"
    return VerificationFailed(
        f"verification failed: {name} is not in the certificate's SANs (it has {shown})"
    )


_SHOWN_SANS = 8


def first_san(leaf: x509.Certificate) -> str:
    """The SAN a server certificate is checked for when no host name is given."""
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise VerificationFailed(f"verification failed: {no_host_name(leaf)}") from None
    names = [
        value.value.replace("*.", "wildcard.", 1)
        if isinstance(value, x509.DNSName)
        else str(value.value)
        for value in ext
        if isinstance(value, x509.DNSName | x509.IPAddress)
    ]
    if not names:
        raise VerificationFailed("verification failed: server certificate has no DNS or IP SAN")
    # One that is a host name at all (a hand-made "a b.example" is not; cryptography's
    # verifier raised ValueError for it), and that a client can match: '*.com' matches
    # nothing, so a name after it is checked.
    checkable = [n for n in names if _is_host_name(n)]
    if not checkable:
        held = [f"DNS:{v}" for v in ext.get_values_for_type(x509.DNSName)]
        raise VerificationFailed(
            "verification failed: server certificate has no DNS or IP SAN a client could "
            f"match (it has {', '.join(held[:_SHOWN_SANS])})"
        )
    wide = (n for n in checkable if not n.startswith("wildcard.") or "." in n[9:])
    return next(wide, checkable[0])


def _is_host_name(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        try:
            validate_dns_name(name, allow_wildcard=False)
        except InvalidRequest:
            return False
    return True


def no_host_name(leaf: x509.Certificate) -> str:
    """Why a certificate without SANs is no server certificate, in the user's terms."""
    # An empty subject (`openssl req -subj /`) would leave a gap where the name goes.
    subject = display_dn(leaf.subject) or "with an empty subject"
    if asserts_ca(leaf):
        # A ca.crt given as CERT: "no SubjectAlternativeName" sent users looking for SANs.
        return f"the certificate {subject} is a CA certificate, not a server certificate"
    return (
        f"server certificate {subject} has no subjectAltName: TLS clients match host "
        "names against its DNS and IP SANs only"
    )


def subject_for(name: str) -> x509.DNSName | x509.IPAddress:
    """The SAN value that ``name`` (a SAN read from a certificate) stands for."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name.lower().rstrip("."))
