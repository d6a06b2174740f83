"""Subject alternative names: DNS names, IP addresses, e-mail addresses and URIs, validated."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography import x509

from certctl.errors import InvalidRequest
from certctl.pki.dns_names import to_a_labels, validate_dns_name

__all__ = ["SAN_KINDS", "SubjectAltNames", "san_search_forms"]

# RFC 5322 atext and dots: unquoted local parts, which cryptography's RFC822Name takes whole
# ('@', ',', ';', '"', '(' and the like make it fail or cut the address). Dots are not held to
# the Dot-string rule: "a..b" is common enough in the wild and was always accepted.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+\Z")


def _ipv4_form(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.5``) as the IPv4 address it stands for.

    A client connecting to 10.0.0.5 compares 4 octets with the SAN (OpenSSL compares the
    bytes): the 16-octet form matched nobody. Go and ECK normalise it the same way.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _validate_email(value: str) -> str:
    local, sep, domain = value.strip().rpartition("@")
    # A dot-atom (RFC 5322 3.4.1: no dot first, last or twice) of at most 64 octets (RFC
    # 5321 4.5.3.1.1): what mail software takes, so what a client certificate should name.
    dot_atom = not (local.startswith(".") or local.endswith(".") or ".." in local)
    if not sep or not domain or not _LOCAL_PART.match(local) or not dot_atom or len(local) > 64:
        raise InvalidRequest(f"{value}: not a valid e-mail address")
    try:
        return f"{local}@{validate_dns_name(domain, allow_wildcard=False)}"
    except InvalidRequest as exc:
        # Named whole: the domain's own message alone did not say which SAN it came from.
        raise InvalidRequest(f"{value}: not a valid e-mail address: {exc.detail}") from None


# RFC 3986 2.2-2.3: the characters a URI holds unencoded (reserved and unreserved); any other
# is percent-encoded. Signed as given, a quote, angle bracket, backslash or control character
# in a URI SAN reached every tool that shows or parses the certificate.
_URI_CHARACTERS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%"
)
_PERCENT_ENCODED = re.compile(r"%(?![0-9A-Fa-f]{2})")
# SPIFFE's limit on an ID (2,048 bytes); no URI a certificate names needs more.
_URI_MAX = 2048


def _validate_uri(value: str) -> str:
    text = value.strip()
    if not text.isascii() or any(c.isspace() for c in text):
        raise InvalidRequest(f"{value}: URIs must be ASCII without spaces")
    if len(text) > _URI_MAX:
        raise InvalidRequest(f"{text[:40]}…: not a valid URI: longer than {_URI_MAX} characters")
    bad = next((c for c in text if c not in _URI_CHARACTERS), None)
    if bad is not None:
        raise InvalidRequest(f"{value}: not a valid URI: {bad!r} must be percent-encoded")
    if _PERCENT_ENCODED.search(text):
        raise InvalidRequest(f"{value}: not a valid URI: '%' not followed by two hex digits")
    parts = urlsplit(text)
    if not parts.scheme or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*$", parts.scheme):
        raise InvalidRequest(f"{value}: URI needs a scheme (e.g. spiffe://, https://)")
    if not (parts.netloc or parts.path):
        raise InvalidRequest(f"{value}: URI has nothing after the scheme")
    return text


def san_search_forms(text: str) -> tuple[str, ...]:
    """What a search for ``text`` looks for in stored SAN values: lower case, ASCII only.

    Stored values are ASCII (DNS names and e-mail domains as A-labels, URIs ASCII, IP
    addresses in canonical form), so a search spelled otherwise looks for those spellings:
    ``Bücher.example`` for ``xn--bcher-kva.example``, ``2001:DB8:0::7`` for
    ``2001:db8::7``, ``::ffff:10.0.0.5`` for ``10.0.0.5``. A non-ASCII label is only found
    whole: a part of it has another punycode than the label. Empty when ``text`` has no
    such spelling (non-ASCII and no host name): no SAN can contain it.
    """
    forms = []
    if text.isascii():
        forms.append(text.lower())
    else:
        local, at, domain = text.rpartition("@")
        if local.isascii():
            try:
                forms.append(f"{local}{at}{to_a_labels(domain, text)}".lower())
            except InvalidRequest:
                pass
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        pass
    else:
        if not getattr(address, "scope_id", None):
            forms.append(str(_ipv4_form(address)))
    return _dedupe(forms)


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# The keys of ``SubjectAltNames.as_dict``, as stored.
SAN_KINDS = ("dns", "ip", "email", "uri")


@dataclass(frozen=True)
class SubjectAltNames:
    """Validated subject alternative names, in the order given, without duplicates."""

    dns: tuple[str, ...] = ()
    ip: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    email: tuple[str, ...] = ()
    uri: tuple[str, ...] = field(default=())

    @classmethod
    def parse(
        cls,
        dns: Sequence[str] = (),
        ip: Sequence[str] = (),
        email: Sequence[str] = (),
        uri: Sequence[str] = (),
    ) -> SubjectAltNames:
        """Validate and normalise SAN strings.

        Raises:
            InvalidRequest: one value is malformed; the message names it.
        """
        ips = []
        for kind, values in (("IP address", ip), ("e-mail address", email), ("URI", uri)):
            for text in values:
                if not text.strip():
                    # Named as validate_dns_name does: "certctl: error: : not a valid IPv4 …"
                    # (an unset shell variable in --ip "$ADDR") read as a garbled message.
                    raise InvalidRequest(f"{text!r}: empty {kind}")
        for text in ip:
            try:
                address = ipaddress.ip_address(text.strip())
            except ValueError:
                raise InvalidRequest(f"{text}: not a valid IPv4 or IPv6 address") from None
            if getattr(address, "scope_id", None):
                # RFC 5280 4.2.1.6: an iPAddress is 4 or 16 octets; a zone would be dropped.
                raise InvalidRequest(f"{text}: IPv6 zone IDs cannot go in a certificate")
            ips.append(_ipv4_form(address))
        return cls(
            dns=_dedupe(validate_dns_name(d) for d in dns),
            ip=tuple(dict.fromkeys(ips)),
            email=_dedupe(_validate_email(e) for e in email),
            uri=_dedupe(_validate_uri(u) for u in uri),
        )

    def __bool__(self) -> bool:
        return bool(self.dns or self.ip or self.email or self.uri)

    def to_general_names(self) -> list[x509.GeneralName]:
        """Return the names as cryptography GeneralName objects."""
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in self.dns]
        names += [x509.IPAddress(a) for a in self.ip]
        names += [x509.RFC822Name(e) for e in self.email]
        names += [x509.UniformResourceIdentifier(u) for u in self.uri]
        return names

    def to_extension(self) -> x509.SubjectAlternativeName:
        """Return the SubjectAlternativeName extension value."""
        return x509.SubjectAlternativeName(self.to_general_names())

    @classmethod
    def from_extension(cls, ext: x509.SubjectAlternativeName) -> SubjectAltNames:
        """Read the names back from an extension (other name types are ignored)."""
        ips = ext.get_values_for_type(x509.IPAddress)
        return cls(
            dns=tuple(ext.get_values_for_type(x509.DNSName)),
            ip=tuple(
                a for a in ips if isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address)
            ),
            email=tuple(ext.get_values_for_type(x509.RFC822Name)),
            uri=tuple(ext.get_values_for_type(x509.UniformResourceIdentifier)),
        )

    @classmethod
    def of(cls, cert: x509.Certificate) -> SubjectAltNames:
        """The names of ``cert``'s SubjectAlternativeName extension; none without one."""
        try:
            ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return cls()
        return cls.from_extension(ext.value)

    @classmethod
    def served_by(cls, cert: x509.Certificate) -> SubjectAltNames:
        """The names a TLS client matches ``cert`` against: its SANs, else its CN as a name.

        As tls.mode custom reads a served tls.crt without SANs, and as clients that fall back
        to the CN match it.
        """
        try:
            ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            return cls(dns=(str(cns[0].value),) if cns else ())
        return cls.from_extension(ext.value)

    @classmethod
    def validated(cls, names: Iterable[x509.GeneralName]) -> SubjectAltNames:
        """Validate and normalise the names of a parsed extension, as ``parse`` does.

        One pass over the names (``from_extension`` then ``parse`` walked them five times,
        a tenth of a CSR issuance's Python time); other name types are ignored.

        Raises:
            InvalidRequest: one value is malformed; the message names it.
        """
        dns: list[str] = []
        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        email: list[str] = []
        uri: list[str] = []
        for name in names:
            kind = type(name)
            if kind is x509.DNSName:
                dns.append(validate_dns_name(name.value))
            elif kind is x509.IPAddress:
                # A network (name constraints' form) is no address: ignored, as before.
                if isinstance(name.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                    ips.append(_ipv4_form(name.value))
            elif kind is x509.RFC822Name:
                email.append(_validate_email(name.value))
            elif kind is x509.UniformResourceIdentifier:
                uri.append(_validate_uri(name.value))
        return cls(
            dns=_dedupe(dns), ip=tuple(dict.fromkeys(ips)), email=_dedupe(email), uri=_dedupe(uri)
        )

    def as_dict(self) -> dict[str, list[str]]:
        """Return ``SAN_KINDS`` lists of strings (for JSON output)."""
        return {
            "dns": list(self.dns),
            "ip": [str(a) for a in self.ip],
            "email": list(self.email),
            "uri": list(self.uri),
        }
