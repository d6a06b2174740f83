"""RFC 9457 ``application/problem+json`` responses, mapped once from CertctlError."""

from __future__ import annotations

import json

from starlette.responses import Response

from certctl.auth.apikeys import redact_keys
from certctl.errors import CertctlError, StorageUnavailable, TooManyRequests

__all__ = ["PROBLEM_TYPES", "problem", "problem_from_error", "problem_json"]

# Each problem type: its URN slug and its title, by status. RFC 9457 3.1.3: a type's title
# does not change from occurrence to occurrence; what happened this time is the detail's to
# say (a weak key, a storage fault, two Host headers). The CertctlError classes carry these
# titles (tests/unit/api/test_problems.py); the listener's own refusals (server/http_connection.py)
# take theirs from here too.
PROBLEM_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid-request", "Invalid request"),
    401: ("unauthenticated", "Unauthenticated"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("too-many-requests", "Too many requests"),
    431: ("request-header-fields-too-large", "Request header fields too large"),
    # nginx's "client closed request": for the access log, as nobody reads the answer.
    499: ("client-closed-request", "Client closed request"),
    500: ("internal-error", "Internal error"),
    501: ("not-implemented", "Not implemented"),
    503: ("unavailable", "Service unavailable"),
}
# Details quote the input they refuse; a 500 kB field must not come back as a 500 kB error.
MAX_DETAIL = 500


def _body(status: int, detail: str) -> bytes:
    detail = redact_keys(detail)
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 15] + "… (truncated)"
    # A status of no type of ours (a Starlette HTTPException of another code): a generic one.
    slug, title = PROBLEM_TYPES.get(status, ("error", "Error"))
    body = {
        "type": f"urn:certctl:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    return json.dumps(body).encode()


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """Build a problem+json response (the detail clipped, and no API key secret in it).

    The type and title are the status's (``PROBLEM_TYPES``): a 404 route, a 405, a 413 …
    """
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", 'Bearer realm="certctl"')
    return Response(
        _body(status, detail),
        status_code=status,
        headers=all_headers,
        media_type="application/problem+json",
    )


def problem_from_error(exc: CertctlError) -> Response:
    """Map a CertctlError to its problem response (429 carries ``Retry-After``).

    So does a storage 503 (full, read-only, unreachable, busy): when to try again.
    """
    headers = None
    if isinstance(exc, TooManyRequests | StorageUnavailable) and exc.retry_after_s is not None:
        headers = {"Retry-After": str(exc.retry_after_s)}  # RFC 9110 10.2.3: delay-seconds
    return problem(exc.status, exc.detail, headers)


def problem_json(status: int, detail: str) -> bytes:
    """The body of :func:`problem`, for an answer written below the app."""
    return _body(status, detail)
