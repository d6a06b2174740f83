"""RFC 9457 ``application/problem+json`` responses, mapped once from CertctlError."""

from __future__ import annotations

import json

from starlette.responses import Response

from certctl.auth.apikeys import redact_keys
from certctl.errors import CertctlError, StorageUnavailable, TooManyRequests

__all__ = ["problem", "problem_for_status", "problem_from_error", "problem_json"]

_SLUGS = {
    400: "invalid-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    429: "too-many-requests",
    431: "request-header-fields-too-large",
    500: "internal-error",
    501: "not-implemented",
    503: "unavailable",
}
# Details quote the input they refuse; a 500 kB field must not come back as a 500 kB error.
MAX_DETAIL = 500

# One title per status, in the sentence case of CertctlError's titles (certctl.errors): the
# listener's own refusals (server/protocol.py) take theirs from here too.
_TITLES = {
    400: "Invalid request",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    415: "Unsupported media type",
    429: "Too many requests",
    431: "Request header fields too large",
    501: "Not implemented",
    503: "Service unavailable",
}


def _body(status: int, title: str, detail: str) -> bytes:
    detail = redact_keys(detail)
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 15] + "… (truncated)"
    body = {
        "type": f"urn:certctl:problem:{_SLUGS.get(status, 'error')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    return json.dumps(body).encode()


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """Build a problem+json response (the detail clipped, and no API key secret in it)."""
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", 'Bearer realm="certctl"')
    return Response(
        _body(status, title, detail),
        status_code=status,
        headers=all_headers,
        media_type="application/problem+json",
    )


def problem_from_error(exc: CertctlError) -> Response:
    """Map a CertctlError to its problem response (429 carries ``Retry-After``).

    So does a 503 for a pool with no connection free in time: the burst passes.
    """
    headers = None
    if isinstance(exc, TooManyRequests | StorageUnavailable) and exc.retry_after_s is not None:
        headers = {"Retry-After": str(exc.retry_after_s)}  # RFC 9110 10.2.3: delay-seconds
    return problem(exc.status, exc.title, exc.detail, headers)


def _title(status: int) -> str:
    return _TITLES.get(status, _SLUGS.get(status, "error"))


def problem_for_status(status: int, detail: str) -> Response:
    """A problem for a bare HTTP status (404 route, 405, 413 …)."""
    return problem(status, _title(status), detail)


def problem_json(status: int, detail: str) -> bytes:
    """The body of :func:`problem_for_status`, for an answer written below the app."""
    return _body(status, _title(status), detail)
