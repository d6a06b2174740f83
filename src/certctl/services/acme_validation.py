"""Challenge validation: http-01 (RFC 8555 8.3) fetches the token, dns-01 (8.4) reads TXT."""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = [
    "DNS_TIMEOUT_S",
    "MAX_BODY",
    "MAX_REDIRECTS",
    "TIMEOUT_S",
    "dns01_digest",
    "fetch_http01",
    "lookup_dns01",
]

log = logging.getLogger("certctl.services.acme")

TIMEOUT_S = 10.0
MAX_BODY = 8 * 1024
MAX_REDIRECTS = 10
# What a key authorization looks like (RFC 8555 8.1: token "." base64url thumbprint). Only an
# answer of this shape is quoted back to the account: anything else may be the page of a host
# it does not control (the name's DNS, or a redirect, may point at any host on port 80 or 443).
# No content coding: a response is read as sent. Inflated, a few hundred bytes of gzip inside
# gzip became hundreds of MiB at one read, before the body limit was looked at.
_HEADERS = {"Accept": "*/*", "Accept-Encoding": "identity"}
_KEY_AUTHORIZATION = re.compile(r"[A-Za-z0-9_-]{1,128}\.[A-Za-z0-9_-]{1,128}\Z")
# One dns-01 lookup in all (every resolver tried, UDP and a TCP retry of a truncated answer):
# a few seconds, as a client that set the record waits for it to be visible before answering.
DNS_TIMEOUT_S = 5.0
# What a dns-01 TXT value looks like: base64url of a SHA-256 digest (43 characters). Only
# such a value is quoted back (a stale one, another account's): the lookup follows CNAMEs the
# name's owner chose, and the TXT records of another name are not the account's to read.
_DIGEST = re.compile(r"[A-Za-z0-9_-]{43}\Z")
MAX_TXT_SHOWN = 4


def _problem(acme_type: str, detail: str) -> dict[str, Any]:
    # Stored on the challenge and shown to the client as its "error" (RFC 8555 8).
    return {"type": f"urn:ietf:params:acme:error:{acme_type}", "detail": detail, "status": 400}


async def fetch_http01(
    name: str, port: int, token: str, key_authorization: str
) -> dict[str, Any] | None:
    """GET ``http://name:port/.well-known/acme-challenge/<token>``; None when it answers right.

    ``name`` may be an IP address (RFC 8738 7): the URL names it (an IPv6 one in brackets),
    and so does the Host header.

    At most ``TIMEOUT_S`` in all, ``MAX_BODY`` bytes read and ``MAX_REDIRECTS`` redirects
    followed. A redirect may go to http or https (whose certificate is not checked: the
    token is what proves control, as Let's Encrypt does), on port 80, 443 or ``port`` only:
    the client picks where this server connects to, and a redirect to any port would let it
    probe (and quote) services this server reaches that it does not. No proxy from the
    environment: the name is to be reached as its DNS says, from this server.

    Returns:
        The ACME problem to record: ``connection`` (nothing answered, a timeout, too many
        redirects, a redirect elsewhere) or ``incorrectResponse`` (a status other than 200,
        another body).
    """
    import anyio
    import httpx

    port_part = "" if port == 80 else f":{port}"
    host = f"[{name}]" if ":" in name else name  # no DNS name holds a colon: IPv6
    first = httpx.URL(f"http://{host}{port_part}/.well-known/acme-challenge/{token}")
    url = first
    body = b""
    try:
        with anyio.fail_after(TIMEOUT_S):
            async with httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                verify=False,  # see above: the token is the proof
                timeout=TIMEOUT_S,
            ) as client:
                for _hop in range(MAX_REDIRECTS + 1):
                    async with client.stream("GET", url, headers=_HEADERS) as response:
                        if response.is_redirect:
                            target = url.join(response.headers["location"])
                            allowed = (80, 443, port)
                            if (
                                target.scheme not in ("http", "https")
                                or (target.port or (443 if target.scheme == "https" else 80))
                                not in allowed
                            ):
                                return _problem(
                                    "connection",
                                    f"{url} redirects to {str(target)[:200]}: only http or "
                                    f"https on port 80, 443 or {port} is followed",
                                )
                            url = target
                            continue
                        if response.status_code != 200:
                            return _problem(
                                "incorrectResponse",
                                f"{url} answered HTTP {response.status_code}, not 200",
                            )
                        # Raw: a compressed answer is not inflated (nor a key authorization).
                        async for chunk in response.aiter_raw():
                            body += chunk
                            if len(body) > MAX_BODY:
                                return _problem(
                                    "incorrectResponse", f"{url} answered over {MAX_BODY} bytes"
                                )
                        break
                else:
                    return _problem("connection", f"{first}: more than {MAX_REDIRECTS} redirects")
    except TimeoutError:
        return _problem("connection", f"{url}: no answer within {TIMEOUT_S:.0f} s")
    except httpx.ProtocolError as exc:
        # The parser quotes what it could not parse (an SSH or SMTP banner): not shown.
        reason = str(exc)
        if not reason.startswith("Server disconnected"):
            reason = f"not an HTTP answer ({type(exc).__name__})"
        return _problem("connection", f"{url}: {reason[:200]}")
    except (httpx.HTTPError, httpx.InvalidURL, KeyError) as exc:
        reason = str(exc) or type(exc).__name__
        return _problem("connection", f"{url}: {reason[:200]}")
    answer = body.decode("utf-8", errors="replace").rstrip()
    if answer != key_authorization:
        # The expected value is no secret (the token and the account key's thumbprint). The
        # answer is quoted only when it is a key authorization of this token (a stale
        # account key's, say); else only its length.
        if _KEY_AUTHORIZATION.match(answer) and answer.startswith(f"{token}."):
            shown = repr(answer)
        else:
            shown = f"{len(body)} bytes that are no key authorization of this token"
        return _problem(
            "incorrectResponse",
            f"{url} answered {shown}, not the key authorization {key_authorization!r}",
        )
    return None


def dns01_digest(key_authorization: str) -> str:
    """The TXT value dns-01 expects: base64url(SHA-256(key authorization)), unpadded."""
    import base64
    import hashlib

    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def lookup_dns01(
    name: str, resolvers: tuple[tuple[str, int], ...], key_authorization: str
) -> dict[str, Any] | None:
    """Look up TXT ``_acme-challenge.<name>``; None when one record is the expected digest.

    ``resolvers``: (address, port) of the DNS servers to ask, in turn; empty: the system's
    (/etc/resolv.conf). No cache: a client that sets its record after a failed try is seen at
    once. At most ``DNS_TIMEOUT_S`` in all, each server its share. CNAMEs are followed as the
    resolver follows them.

    Returns:
        The ACME problem to record: ``dns`` (no answer in time, SERVFAIL, a refusal, no
        resolver configured), ``unauthorized`` (no such name, or no TXT record there) or
        ``incorrectResponse`` (TXT records, none of them the expected value).
    """
    import dns.asyncresolver
    import dns.exception
    import dns.nameserver
    import dns.rdatatype
    import dns.resolver

    query = f"_acme-challenge.{name}"
    expected = dns01_digest(key_authorization)
    where = (
        "the system resolver"
        if not resolvers
        else ", ".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in resolvers
        )
    )
    try:
        if resolvers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in resolvers
            ]
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.cache = None
        resolver.lifetime = DNS_TIMEOUT_S
        # Each server gets its share of the lifetime: with the whole of it, one that never
        # answers (down, or dropping the query) used it all and the next was never asked.
        resolver.timeout = DNS_TIMEOUT_S / max(1, len(resolver.nameservers))
        answer = await resolver.resolve(query, "TXT", search=False)
    except dns.resolver.NXDOMAIN:
        return _problem("unauthorized", f"no TXT record at {query} ({where}: no such name)")
    except dns.resolver.NoAnswer as exc:
        target = _cname_target(exc, query)
        if target:
            # Often a CNAME to a zone kept for ACME (acme-dns): a server authoritative for the
            # name's zone alone answers the CNAME and stops, which looked like no record.
            return _problem(
                "unauthorized",
                f"no TXT record at {query} ({where}: a CNAME to {target}, no TXT record there; "
                "a server that does not recurse follows no CNAME out of its own zones)",
            )
        return _problem("unauthorized", f"no TXT record at {query} ({where}: the name has none)")
    except dns.resolver.LifetimeTimeout:
        return _problem("dns", f"TXT {query}: no answer from {where} within {DNS_TIMEOUT_S:.0f} s")
    except dns.resolver.NoNameservers as exc:
        # Each server refused, failed (SERVFAIL) or could not be reached: said by rcode only.
        return _problem("dns", f"TXT {query}: {where} gave no answer ({_no_servers(exc)})")
    except dns.resolver.NoResolverConfiguration:
        return _problem(
            "dns", f"TXT {query}: no resolver (none in /etc/resolv.conf, acme.dns-resolvers empty)"
        )
    except (dns.exception.DNSException, OSError) as exc:
        return _problem("dns", f"TXT {query} ({where}): {type(exc).__name__}")
    values: list[str] = []
    for rdata in answer:
        if rdata.rdtype != dns.rdatatype.TXT:
            continue
        # A record's strings are one value (RFC 7208 3.3's split of long values).
        values.append(b"".join(rdata.strings).decode("ascii", errors="replace"))
    if expected in values:
        return None
    shown = [repr(v) for v in values if _DIGEST.match(v)][:MAX_TXT_SHOWN]
    others = len(values) - len(shown)
    found = ", ".join(shown)
    if others:
        found += f"{' and ' if shown else ''}{others} that {'is' if others == 1 else 'are'} no "
        found += "dns-01 value"
    return _problem(
        "incorrectResponse",
        f"TXT {query} holds {len(values)} record{'s' if len(values) != 1 else ''} ({found}), "
        f"not {expected!r} (base64url of SHA-256 of the key authorization)",
    )


def _cname_target(exc: Any, query: str) -> str:
    """The name the CNAMEs of ``query`` in a NoAnswer's response lead to; "" when none."""
    import dns.exception

    try:
        chain = exc.response().resolve_chaining()
    except dns.exception.DNSException:  # a chain too long or broken: no one target to name
        return ""
    target = str(chain.canonical_name).rstrip(".")
    return target[:253] if target.lower() != query.lower() else ""


def _no_servers(exc: Exception) -> str:
    # dnspython's message quotes each server's answer: kept to the rcode words (SERVFAIL,
    # REFUSED) and connection errors' kinds, which say what to fix and nothing of the zone.
    words = re.findall(r"\b(SERVFAIL|REFUSED|NOTAUTH|NOTIMP|FORMERR|timed out|refused)\b", str(exc))
    return ", ".join(dict.fromkeys(words)) or "every server failed"
