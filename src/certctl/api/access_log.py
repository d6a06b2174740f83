"""The access log: one line per request, text or JSON (``log-format``), never a header.

Written by the app's middleware for every request it answers, and by the TLS listener for
the one request it answers itself: plain HTTP sent to an HTTPS port.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import unquote

from certctl.auth.apikeys import redact_keys
from certctl.metrics.registry import HTTP_REQUESTS

if TYPE_CHECKING:
    from starlette.types import Scope

__all__ = ["logged_path", "logged_path_of", "plain_http_request", "write_line"]

log = logging.getLogger("certctl.access")

# The methods llhttp (uvicorn's parser) knows that a client would send to an API. Anything
# else a plain-HTTP client wrote is logged and counted as "-": a metric label must not take
# whatever bytes a client sends.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


def logged_path(path: str) -> str:
    """The path for the access log: one line whatever the client sent, and no key secret.

    Decoded paths may hold a newline (``%0a``) that would forge a log line, or NUL; control
    characters are escaped. A key pasted into a URL (``DELETE /apikeys/<key>``) is redacted.
    """
    if not path.isprintable():
        path = path.encode("unicode_escape").decode("ascii")
    return redact_keys(path)


def logged_path_of(scope: Scope) -> str:
    """:func:`logged_path` of an ASGI request's path."""
    return logged_path(scope.get("path", ""))


def write_line(
    method: str,
    path: str,
    status: int,
    actor: str,
    elapsed_s: float,
    client: str,
    *,
    json_logs: bool,
) -> None:
    """Log one answered request; ``path`` as ``logged_path`` made it."""
    if json_logs:
        # The fields become top-level keys of the JSON line (server/logs.py).
        fields = {
            "method": method,
            "path": path,
            "status": status,
            "actor": actor,
            "duration_ms": round(elapsed_s * 1000, 2),
            "client": client,
        }
        log.info("%s %s %s", method, path, status, extra={"fields": fields})
    else:
        # Fields are separated by spaces: a space in the path (``%20``) would let a client
        # append its own status and actor to the line (``/x 200 actor=admin``). The actor
        # too: a client certificate's subject (from a CA in tls.client-ca) may hold spaces,
        # and newlines that would forge whole lines.
        if not actor.isprintable():
            actor = actor.encode("unicode_escape").decode("ascii")
        log.info(
            "%s %s %s %s actor=%s %.1fms",
            client,
            method,
            path.replace(" ", "%20"),
            status,
            actor.replace(" ", "%20"),
            elapsed_s * 1000,
        )


def plain_http_request(first_bytes: bytes, client: str, *, json_logs: bool) -> None:
    """Log and count the 400 to a plain-HTTP request on a TLS listener.

    ``first_bytes`` is what the connection sent first: usually the whole request line, but
    a client may have sent less, so a missing method or path is logged as ``-``.
    """
    line = first_bytes.split(b"\n", 1)[0][:8192].decode("latin-1")
    parts = line.split(" ")
    method = parts[0] if parts[0] in _METHODS else "-"
    target = parts[1] if len(parts) > 2 else "-"
    path = logged_path(unquote(target.split("?", 1)[0])) if target.startswith("/") else "-"
    HTTP_REQUESTS.labels(method, "unmatched", "400").inc()
    write_line(method, path, 400, "-", 0.0, client, json_logs=json_logs)
