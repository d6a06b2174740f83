"""Which proxy httpx sends the client commands through, and settings of it httpx cannot use.

For the messages only: a host that does not resolve, or a connection refused, through a
proxy is the proxy's; a proxy variable httpx would fail on is named in one line, never with
its credentials. Read as httpx reads them (``urllib.request.getproxies()`` and its
``NO_PROXY`` matching).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from certctl.errors import InvalidRequest
from certctl.hosts import is_loopback

if TYPE_CHECKING:
    from collections.abc import Callable


def proxy_of(url: str) -> tuple[str, str, int | None] | None:
    """The variable naming the proxy a request to ``url`` goes through, the proxy's host, port.

    As httpx picks it: from ``urllib.request.getproxies()`` (``<scheme>_proxy`` then
    ``all_proxy``, the lower-case one first, an empty one unsetting the other), unless
    ``no_proxy`` exempts the host as httpx reads it (see ``_exempt``); never for loopback (see
    send_request). The host and port only: the variable's value may hold a password.
    """
    import urllib.request

    import httpx

    try:
        target = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    if is_loopback(target.host):
        return None
    proxies = urllib.request.getproxies()
    kind = next((k for k in (target.scheme, "all") if proxies.get(k)), None)
    if kind is None or _exempt(target, proxies.get("no", "")):
        return None
    value = proxies[kind]
    variable = _proxy_variable(kind, value)
    value = value.strip()
    try:
        parts = urlsplit(value if "://" in value else f"http://{value}")
        proxy_host = parts.hostname
    except ValueError:
        return None
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range: the host alone is named
        port = None
    return (variable, proxy_host, port) if proxy_host else None


def _proxy_variable(kind: str, value: str) -> str:
    """The variable ``urllib.request.getproxies()`` took ``value`` of ``kind`` (https, no…) from.

    The lower-case one wins, else any other case of the name.
    """
    names = [n for n in os.environ if n.lower() == f"{kind}_proxy" and os.environ[n] == value]
    lower = f"{kind}_proxy"
    return lower if lower in names else (names or [lower.upper()])[0]


def check_proxy_settings() -> None:
    """Refuse a proxy variable httpx cannot use, in one line naming it, never its value.

    httpx reads HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY when the client is built,
    whatever the request's scheme, and failed there with an internal error (ValueError for
    ftp://, ImportError for socks5:// without socksio: see socks_missing) or "Invalid
    port: …" naming no variable (NO_PROXY=[::1]) and quoting the value, which may hold a
    password.
    """
    import urllib.request

    import httpx

    proxies = urllib.request.getproxies()
    for kind in ("http", "https", "all"):  # the ones httpx takes (not ftp_proxy …)
        value = proxies.get(kind)
        if not value:
            continue
        variable = _proxy_variable(kind, value)
        text = value if "://" in value else f"http://{value}"  # as httpx reads it
        try:
            parts = urlsplit(text)
        except ValueError as exc:  # "Invalid IPv6 URL": urllib's reasons quote nothing
            raise InvalidRequest(f"{variable} is not a valid URL: {exc}") from None
        try:
            bad_port = parts.port == 0
        except ValueError:  # its message quotes the port text: maybe a password
            bad_port = True
        if bad_port:
            raise InvalidRequest(f"{variable} has an invalid port, expected 1-65535")
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https", "socks5", "socks5h"):
            raise InvalidRequest(
                f"{variable}: unsupported proxy scheme '{parts.scheme}', use http://, https://, "
                "socks5:// or socks5h://"
            )
        try:
            httpx.Proxy(text)
        except (httpx.InvalidURL, ValueError) as exc:  # the reason without what it quotes
            raise InvalidRequest(
                f"{variable} is not a valid proxy URL ({str(exc).split(':')[0]})"
            ) from None
    no_proxy = proxies.get("no", "")
    for entry in (e.strip() for e in no_proxy.split(",")):
        if not entry or entry == "*":
            continue
        try:
            httpx.URL(_no_proxy_pattern(entry))
        except httpx.InvalidURL as exc:
            variable = _proxy_variable("no", no_proxy)
            reason = str(exc).split(":")[0]
            shown = "an entry with user info" if "@" in entry else f"'{entry}'"
            raise InvalidRequest(
                f"{variable}: {shown} cannot be read ({reason}){_bracket_hint(entry)}"
            ) from None


def socks_missing() -> InvalidRequest:
    """Httpx's ImportError for a socks5:// proxy without socksio, naming the variable.

    Left to httpx to find out (it imports socksio when it builds the client), not foreseen
    here: whether it can is what it does.
    """
    import urllib.request

    proxies = urllib.request.getproxies()
    for kind in ("http", "https", "all"):
        value = proxies.get(kind, "")
        scheme = value.partition("://")[0].lower() if "://" in value else ""
        if scheme.startswith("socks"):
            return InvalidRequest(
                f"{_proxy_variable(kind, value)}: a {scheme}:// proxy needs the socksio "
                "package, which is not installed (pip install 'httpx[socks]')"
            )
    return InvalidRequest("a proxy needs the socksio package (pip install 'httpx[socks]')")


def _bracket_hint(entry: str) -> str:
    """For ``[::1]`` or ``[::1]:8443`` in NO_PROXY, how httpx takes that address."""
    address, bracket, port = entry.removeprefix("[").partition("]")
    if not entry.startswith("[") or not bracket:
        return ""
    hint = f": an IPv6 address goes without brackets, as {address}"
    return hint + (f", or with a port as all://{entry}" if port.startswith(":") else "")


def _no_proxy_pattern(entry: str) -> str:
    """The httpx URL pattern of one NO_PROXY entry, as httpx makes it."""
    import ipaddress

    address = entry.split("/")[0]
    if "://" in entry:
        return entry
    if _parses(ipaddress.IPv4Address, address) or entry.lower() == "localhost":
        return f"all://{entry}"
    if _parses(ipaddress.IPv6Address, address):
        return f"all://[{entry}]"
    return f"all://*{entry}"


def _exempt(target: Any, no_proxy: str) -> bool:
    """Whether ``no_proxy`` sends a request to ``target`` (an httpx URL) past the proxy.

    httpx's reading, not curl's or urllib's: ``.example.com`` exempts the names below it but
    not example.com itself, ``example.com`` both, ``host:port`` that port only, an address
    that address (no CIDR), ``*`` everything.
    """
    import re

    import httpx

    for entry in (e.strip() for e in no_proxy.split(",")):
        if entry == "*":
            return True
        if not entry:
            continue
        try:
            exempt = httpx.URL(_no_proxy_pattern(entry))
        except httpx.InvalidURL:
            continue
        host = "" if exempt.host == "*" else exempt.host
        if host.startswith("*."):
            regex = rf"^.+\.{re.escape(host[2:])}$"
        elif host.startswith("*"):
            regex = rf"^(.+\.)?{re.escape(host[1:])}$"
        else:
            regex = rf"^{re.escape(host)}$"
        if (
            exempt.scheme in ("all", target.scheme)
            and (not host or re.match(regex, target.host))
            and exempt.port in (None, target.port)
        ):
            return True
    return False


def _parses(kind: Callable[[str], object], text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True
