"""What counts as loopback, for every plain-HTTP rule (listeners, webhooks, the CLI's URL)."""

from __future__ import annotations

__all__ = ["is_ip", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` (any case) and any loopback address: 127.0.0.0/8, ``::1``.

    ``host`` is bare, without the brackets of ``[v6]:port``. One definition, so that an address
    the webhook check accepts as loopback is not refused as a listener, nor the other way round.
    """
    if host.lower() == "localhost":
        return True
    import ipaddress  # here: the CLI imports this module on every command

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_ip(value: str) -> bool:
    """True for an IPv4 or IPv6 address as ``ipaddress`` reads one (no brackets, no port)."""
    import ipaddress  # here, as above

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
