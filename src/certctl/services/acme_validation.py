"""http-01 validation (RFC 8555 8.3): fetch the token from the name, compare the answer."""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["MAX_BODY", "MAX_REDIRECTS", "TIMEOUT_S", "fetch_http01"]

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


def _problem(acme_type: str, detail: str) -> dict[str, Any]:
    # Stored on the challenge and shown to the client as its "error" (RFC 8555 8).
    return {"type": f"urn:ietf:params:acme:error:{acme_type}", "detail": detail, "status": 400}


async def fetch_http01(
    name: str, port: int, token: str, key_authorization: str
) -> dict[str, Any] | None:
    """GET ``http://name:port/.well-known/acme-challenge/<token>``; None when it answers right.

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
    first = httpx.URL(f"http://{name}{port_part}/.well-known/acme-challenge/{token}")
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
