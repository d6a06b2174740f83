"""Name constraints (RFC 5280 4.2.1.10) and extended key usages of an issuing CA.

certctl never writes nameConstraints, but an imported CA may carry them (an enterprise
intermediate limited to ``.corp.example``). A certificate naming something outside them is
refused by every verifier (OpenSSL: "permitted subtree violation", Go, Java), so issuing it
only hands the user a certificate that fails at the first handshake.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certctl.errors import InvalidRequest
from certctl.pki.dns_names import validate_dns_name
from certctl.pki.subject_alt_names import SubjectAltNames

__all__ = [
    "any_usage_warning",
    "check_extended_key_usage",
    "check_name_constraints",
    "describe_general_name",
    "name_constraints_of",
    "subject_emails",
]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def name_constraints_of(
    certificates: Iterable[x509.Certificate],
) -> tuple[x509.NameConstraints, ...]:
    """The nameConstraints of each CA certificate that has them (most CAs: none)."""
    found = []
    for certificate in certificates:
        try:
            found.append(certificate.extensions.get_extension_for_class(x509.NameConstraints).value)
        except x509.ExtensionNotFound:
            continue
    return tuple(found)


def check_name_constraints(
    constraints: Sequence[x509.NameConstraints],
    subject: x509.Name,
    sans: SubjectAltNames,
    *,
    holder: x509.Name | None = None,
    common_name_as_host: bool = True,
) -> None:
    """Refuse a subject or SAN outside the permitted, or inside the excluded, subtrees.

    As OpenSSL does, a host-like common name counts as a DNS name when there is no DNS SAN
    (``common_name_as_host``; OpenSSL does it for the leaf only), and an emailAddress
    attribute of the subject is held to the e-mail constraints as an e-mail SAN is, SANs or
    not (RFC 5280 4.2.1.10 allows it; OpenSSL's NAME_CONSTRAINTS_check does it).

    Args:
        constraints: the constraints to hold the names to.
        subject: the subject of the certificate checked.
        sans: its subject alternative names.
        holder: the CA whose constraints these are, named in the message; None for the CA
            about to issue (the message then says no client would accept the certificate).
        common_name_as_host: hold a host-like common name to the DNS constraints.

    Raises:
        InvalidRequest: the message names the name and the CA's constraint it breaks.
    """
    dns = list(sans.dns) or (_host_common_names(subject) if common_name_as_host else [])
    names: list[tuple[str, str, type[x509.GeneralName]]] = [
        *(("DNS name", d, x509.DNSName) for d in dns),
        *(("IP address", str(a), x509.IPAddress) for a in sans.ip),
        *(("e-mail address", e, x509.RFC822Name) for e in sans.email),
        *(("URI", u, x509.UniformResourceIdentifier) for u in sans.uri),
        *(("subject e-mail address", e, x509.RFC822Name) for e in subject_emails(subject)),
    ]
    if holder is None:
        whose, after = (
            "the issuing CA's name constraints",
            ": no client would accept the certificate",
        )
    else:
        whose, after = f"the name constraints of {holder.rfc4514_string()}", ""
    for constraint in constraints:
        permitted = list(constraint.permitted_subtrees or ())
        excluded = list(constraint.excluded_subtrees or ())
        for what, value, kind in names:
            _check(what, value, kind, permitted, excluded, whose, after)
        if subject:
            _check("subject", subject, x509.DirectoryName, permitted, excluded, whose, after)


def subject_emails(subject: x509.Name) -> list[str]:
    """The emailAddress attributes of ``subject`` (legacy, but OpenSSL constrains them)."""
    return [
        str(attribute.value)
        for attribute in subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)
    ]


def _check(
    what: str,
    value: str | x509.Name,
    kind: type[x509.GeneralName],
    permitted: list[x509.GeneralName],
    excluded: list[x509.GeneralName],
    whose: str,
    after: str,
) -> None:
    shown = value.rfc4514_string() if isinstance(value, x509.Name) else value
    for base in excluded:
        if isinstance(base, kind) and _within(value, base):
            raise InvalidRequest(
                f"{what} {shown} is excluded by {whose} ({describe_general_name(base)}){after}"
            )
    bases = [base for base in permitted if isinstance(base, kind)]
    if bases and not any(_within(value, base) for base in bases):
        allowed = ", ".join(describe_general_name(b) for b in bases)
        raise InvalidRequest(f"{what} {shown} is outside {whose} (permitted: {allowed}){after}")


def _within(value: str | x509.Name, base: x509.GeneralName) -> bool:
    if isinstance(base, x509.DirectoryName):
        assert isinstance(value, x509.Name)
        prefix = [_canonical(rdn) for rdn in base.value.rdns]
        return [_canonical(rdn) for rdn in value.rdns[: len(prefix)]] == prefix
    assert isinstance(value, str)
    if isinstance(base, x509.IPAddress):
        address: _Address = ipaddress.ip_address(value)
        network = base.value
        return isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network) and (
            address.version == network.version and address in network
        )
    if isinstance(base, x509.DNSName):
        return _host_within(value, base.value)
    if isinstance(base, x509.RFC822Name):
        constraint = base.value
        if "@" in constraint:  # one mailbox
            # The local part as written, the domain in either case (RFC 5280 4.2.1.10 and
            # OpenSSL, which refuses Alice@corp.example under alice@corp.example).
            local, _, domain = constraint.rpartition("@")
            value_local, _, value_domain = value.rpartition("@")
            return value_local == local and _host_within(value_domain, domain, below=False)
        return _host_within(value.rpartition("@")[2], constraint, below=False)
    if isinstance(base, x509.UniformResourceIdentifier):
        host = urlsplit(value).hostname
        return host is not None and _host_within(host, base.value, below=False)
    return False


def _canonical(rdn: x509.RelativeDistinguishedName) -> frozenset[tuple[str, str]]:
    # As OpenSSL compares names: case and runs of white space do not count (RFC 4518).
    return frozenset((a.oid.dotted_string, " ".join(str(a.value).split()).lower()) for a in rdn)


def _host_within(host: str, constraint: str, *, below: bool = True) -> bool:
    # ".corp.example" covers only the names below it. "corp.example" covers itself and, for
    # a DNS name, every name below it; for an e-mail address's domain or a URI's host that
    # host alone (RFC 5280 4.2.1.10, and OpenSSL refuses alice@sub.corp.example under it).
    host, base = host.lower().rstrip("."), constraint.lower().rstrip(".")
    if not base:
        return True
    if base.startswith("."):
        return host.endswith(base)
    return host == base or (below and host.endswith("." + base))


def _host_common_names(subject: x509.Name) -> list[str]:
    names = []
    for attribute in subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        value = attribute.value
        if not isinstance(value, str) or "." not in value:
            continue  # "alice smith", "localhost": OpenSSL checks only names with a dot
        try:
            names.append(validate_dns_name(value))
        except InvalidRequest:
            continue
    return names


def describe_general_name(base: x509.GeneralName) -> str:
    """A name or subtree as messages and ``inspect`` show it: ``DNS .corp.example``."""
    if isinstance(base, x509.DirectoryName):
        return f"DirName {base.value.rfc4514_string()}"
    label = {
        x509.DNSName: "DNS",
        x509.IPAddress: "IP",
        x509.RFC822Name: "email",
        x509.UniformResourceIdentifier: "URI",
    }.get(type(base), type(base).__name__)
    return f"{label} {base.value}"


def check_extended_key_usage(
    certificates: Iterable[x509.Certificate], wanted: Sequence[x509.ObjectIdentifier]
) -> None:
    """Refuse a leaf usage that a CA above it does not list in its own extendedKeyUsage.

    RFC 5280 does not chain EKUs, but OpenSSL ("unsuitable certificate purpose"), Go and
    Windows do: a server certificate below a CA limited to clientAuth fails everywhere.

    Raises:
        InvalidRequest: the message names the CA and the usage it lacks.
    """
    for certificate in certificates:
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
            continue
        missing = [oid for oid in wanted if oid not in usages]
        if missing:
            raise InvalidRequest(
                f"{certificate.subject.rfc4514_string()} limits its certificates to "
                f"{_usage_names(usages)}, not {_usage_names(missing)}: no client would "
                "accept the certificate"
            )


def any_usage_warning(
    certificates: Iterable[x509.Certificate], wanted: Sequence[x509.ObjectIdentifier]
) -> str | None:
    """The warning for a CA that allows ``wanted`` only through anyExtendedKeyUsage, or None.

    Go (and cryptography's verifier) read anyExtendedKeyUsage on a CA as every usage, so
    :func:`check_extended_key_usage` lets it through; OpenSSL's purpose check reads it as
    none ("unsuitable certificate purpose"), and so do nginx, curl, Python's ssl and
    ``certctl verify``. Refusing would lock out the users whose clients are Go's; issuing
    without a word left the others with certificates their clients refuse.
    """
    for certificate in certificates:
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        missing = [oid for oid in wanted if oid not in usages]
        if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages and missing:
            return (
                f"{certificate.subject.rfc4514_string()} lists anyExtendedKeyUsage, not "
                f"{_usage_names(missing)}: OpenSSL-based clients (nginx, curl, Python's ssl; "
                "certctl verify) refuse the certificates below it as of an unsuitable purpose "
                "(Go's accept them)"
            )
    return None


_USAGE_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


def _usage_names(usages: Iterable[x509.ObjectIdentifier]) -> str:
    return ", ".join(_USAGE_NAMES.get(oid, oid.dotted_string) for oid in usages)
