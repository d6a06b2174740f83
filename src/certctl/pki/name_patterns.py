"""Name patterns: which DNS names and IP addresses a list of patterns allows.

The language of ``acme.allowed-names`` and of a role's ``constraints.names``: a DNS name
(that host), ``*.`` and a name (any name one label or more below it, wildcards below it
too), an IP address, or a network (CIDR) holding the addresses it allows.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re

from certctl.errors import InvalidRequest
from certctl.pki.dns_names import validate_dns_name

__all__ = ["checked_pattern", "is_ip_pattern", "name_allowed", "pattern_within"]


def checked_pattern(pattern: str) -> str:
    """``pattern`` in its canonical spelling: lower-case A-labels, Python's IP spelling.

    An address given as a /32 (/128) network is kept as the address.

    Raises:
        ValueError: no pattern (its message says why, one line).
    """
    if "/" in pattern or ":" in pattern:
        try:
            network = ipaddress.ip_network(pattern, strict=True)
        except ValueError as exc:
            raise ValueError(
                f"{pattern[:60]}: expected an IP address, or a network (CIDR) with no "
                f"host bits set ({exc})"
            ) from None
        single = network.prefixlen == network.max_prefixlen
        return str(network.network_address) if single else str(network)
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(pattern))
    if re.fullmatch(r"[0-9.]+", pattern):
        raise ValueError(f"{pattern[:60]}: not an IPv4 address (dotted decimal, no leading zeros)")
    wildcard = pattern.startswith("*.")
    try:
        name = validate_dns_name(pattern[2:] if wildcard else pattern, allow_wildcard=False)
    except InvalidRequest as exc:
        raise ValueError(exc.detail) from None
    return f"*.{name}" if wildcard else name


def is_ip_pattern(pattern: str) -> bool:
    """Whether a canonical pattern is an address or a network (not a DNS name)."""
    try:
        ipaddress.ip_network(pattern)
    except ValueError:
        return False  # a DNS name (one ending in a digit too: "web1")
    return True


def name_allowed(name: str, patterns: tuple[str, ...] | list[str], ip: bool = False) -> bool:
    """Whether ``patterns`` allow ``name`` (an IP address when ``ip``); none: every name."""
    if not patterns:
        return True
    if ip:
        # Only an address or network pattern allows an IP address, and only an IP one: a
        # name pattern never matches an address, nor an address pattern a name.
        address = ipaddress.ip_address(name)
        for pattern in patterns:
            if "/" in pattern or ":" in pattern or pattern[:1].isdigit():
                try:
                    network = ipaddress.ip_network(pattern)
                except ValueError:
                    continue  # a DNS name that starts with a digit
                if address.version == network.version and address in network:
                    return True
        return False
    if name.startswith("*."):
        # A wildcard stands for every name one label below its base: it is allowed when each
        # of them is, i.e. by a "*." pattern at or above its base ("*.example.com" allows
        # "*.example.com" and "*.a.example.com"). A plain pattern names one host: neither
        # "example.com" nor "www.example.com" allows "*.example.com".
        base = name[2:]
        return any(p.startswith("*.") and (base == p[2:] or base.endswith(p[1:])) for p in patterns)
    for pattern in patterns:
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]):  # one label or more below it
                return True
        elif name == pattern:
            return True
    return False


def pattern_within(inner: str, outer: str) -> bool:
    """Whether every name canonical pattern ``inner`` allows, ``outer`` allows too.

    A name inside ``*.y`` when below y; ``*.x`` inside ``*.y`` when x is y or below it; a
    network inside a network (``subnet_of``), an address inside a network or equal.
    """
    if is_ip_pattern(inner):
        if not is_ip_pattern(outer):
            return False
        a, b = ipaddress.ip_network(inner), ipaddress.ip_network(outer)
        return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]
    if is_ip_pattern(outer):
        return False
    return name_allowed(inner, (outer,))
