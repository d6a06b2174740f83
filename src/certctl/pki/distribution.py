"""URLs certificates carry for clients to fetch: checked once where given, then carried as data.

A leaf carrying a cRLDistributionPoints extension (RFC 5280 4.2.1.13) tells a client that
checks revocation (Java with revocation checking, Windows schannel, ``openssl verify
-crl_download``) where to fetch its issuer's CRL; an authorityInfoAccess caIssuers URI
(4.2.2.1) tells a client that lacks the issuing CA's certificate (a server that sends no
chain) where to fetch it. The server derives both from its ``public-url`` setting; the
offline CLI takes them as ``--crl-url`` and ``--ca-issuers-url``. Both obey one rule set,
:func:`check_certificate_url`.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from certctl.errors import InvalidRequest

__all__ = ["ca_issuers_url_for", "check_certificate_url", "crl_url_for", "ocsp_url_for"]

_SCHEMES = ("http", "https")
# A character outside RFC 3986's unreserved and reserved sets, or a '%' not starting %XX.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_NOT_URI = re.compile(r"[^A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]|%(?![0-9A-Fa-f]{2})")


def check_certificate_url(value: str, *, base: bool = False) -> str:
    """``value`` if it is an absolute http(s) URL a certificate can carry, else refuse it.

    For a CRL distribution point and a caIssuers URI alike. ``base``: a server base URL
    (``https://certctl.example.internal:8443``, maybe with a path prefix), to which
    ``/api/v1/issuers/<id>/crl`` and ``…/ca.der`` are appended: a query or a fragment
    would end up in the middle of the URL, so both are refused; a trailing ``/`` is dropped.
    A full URL may have a query (a fragment is never sent to a server).

    Raises:
        InvalidRequest: the rule broken, without naming the setting (the caller does).
    """
    if not value or not value.isascii() or not value.isprintable() or " " in value:
        # An X.509 URI is an IA5String; a URI has no spaces or control characters.
        raise InvalidRequest(
            "expected an absolute http:// or https:// URL in ASCII without spaces "
            "(percent-encode other characters)"
        )
    bad = _NOT_URI.search(value)
    if bad is not None:
        # RFC 5280 4.2.1.13 wants a URI (RFC 3986): '"', '\\', '{', '|' … make the
        # certificate malformed (pkilint: invalid_uri_syntax) and clients parse it each
        # their own way.
        char = bad.group()
        if char.startswith("%"):
            raise InvalidRequest("'%' that does not start a %XX escape: write it as %25")
        raise InvalidRequest(
            f"'{char}' may not appear in a URL: percent-encode it (%{ord(char):02X})"
        )
    try:
        parts = urlsplit(value)
        port = parts.port  # a port that is no number raises here
    except ValueError:
        raise InvalidRequest("not a URL (check the host and port)") from None
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        raise InvalidRequest(
            "expected an absolute http:// or https:// URL with a host, "
            "e.g. https://certctl.example.internal:8443"
        )
    if not _host_ok(parts.hostname):
        raise InvalidRequest(
            f"{parts.hostname}: not a host name (letters, digits, '-' and '_' in labels "
            "separated by single dots) nor an IP address"
        )
    if parts.netloc.endswith(":"):
        raise InvalidRequest("a ':' with no port after it: give the port or drop the ':'")
    if port == 0:
        raise InvalidRequest("port 0 is not a port clients can connect to")
    if "@" in parts.netloc:
        # Every certificate carries the URL to every client that sees it: a user:password@
        # in it would publish that password.
        raise InvalidRequest(
            "a URL certificates carry has no user:password@ (every client that sees the "
            "certificate would read it)"
        )
    if parts.fragment or value.endswith("#"):
        raise InvalidRequest("a URL clients fetch has no #fragment")
    if base and (parts.query or "?" in value):
        raise InvalidRequest(
            "a base URL has no ?query: /api/v1/issuers/<id>/crl and …/ca.der are appended to it"
        )
    return value.rstrip("/") if base else value


def _host_ok(host: str) -> bool:
    # A typo such as crl..example.com or crl.example.com; is a valid RFC 3986 reg-name, but
    # no client resolves it, and every certificate issued would carry it.
    import ipaddress

    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return all(_LABEL.fullmatch(label) for label in host.removesuffix(".").split("."))
    return True


def crl_url_for(base: str, issuer_id: str) -> str:
    """The URL of ``GET /api/v1/issuers/{issuer_id}/crl`` under ``base`` (checked)."""
    return f"{base}/api/v1/issuers/{quote(issuer_id, safe='')}/crl"


def ca_issuers_url_for(base: str, issuer_id: str) -> str:
    """The URL of ``GET /api/v1/issuers/{issuer_id}/ca.der`` under ``base`` (checked).

    The DER route, not ca.pem: RFC 5280 4.2.2.1 wants an HTTP caIssuers URI to name one
    DER certificate (or a certs-only CMS), and Windows' and Java's fetchers read nothing else.
    """
    return f"{base}/api/v1/issuers/{quote(issuer_id, safe='')}/ca.der"


def ocsp_url_for(base: str, issuer_id: str) -> str:
    """The URL of ``POST /api/v1/issuers/{issuer_id}/ocsp`` under ``base`` (checked).

    An AIA id-ad-ocsp URI (RFC 5280 4.2.2.1): clients POST a request there, or GET it with the
    base64 request appended as a last path segment (RFC 6960 A.1).
    """
    return f"{base}/api/v1/issuers/{quote(issuer_id, safe='')}/ocsp"
