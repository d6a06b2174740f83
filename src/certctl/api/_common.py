"""Pieces every route module shares: the route record, body parsing, small accessors."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from certctl import schema_errors
from certctl.errors import CertctlError, InvalidRequest
from certctl.services.context import Principal, Services

__all__ = [
    "AUTHENTICATED",
    "LIST_THREADS",
    "PUBLIC",
    "WRITE_THREADS",
    "ApiRoute",
    "Handler",
    "caller_of",
    "created",
    "in_list_thread",
    "in_write_thread",
    "json_bytes",
    "json_response",
    "list_limiter",
    "listed",
    "not_found",
    "optional_body",
    "page_limit",
    "query_format",
    "read_body",
    "services_of",
    "utc_expiry",
    "write_limiter",
]

PUBLIC = "public"
AUTHENTICATED = "authenticated"

Handler = Callable[[Request, Principal | None], Awaitable[Response]]


@dataclass(frozen=True)
class ApiRoute:
    """One route: method, path template, permission, handler and OpenAPI facts."""

    method: str
    path: str
    permission: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    success: int = 200
    # A mutation's audit action, as its success records it (issuer.create): a 403 on this
    # route is recorded under it too, so one ?action= finds an action's refusals with its
    # successes. Where the body decides (an import, a service's creation), the one its
    # permission is named after: a refused call's body is not read.
    action: str = ""
    # The path parameter (the last) that takes the rest of the path, '/' included: the OCSP
    # GET form's base64 request (RFC 6960 A.1). Starlette's {name:path}; OpenAPI's {name}.
    rest_of_path: str = ""

    @property
    def starlette_path(self) -> str:
        """``path`` as Starlette's router matches it."""
        if not self.rest_of_path:
            return self.path
        name = self.rest_of_path
        return self.path.replace(f"{{{name}}}", f"{{{name}:path}}")


# Starlette's JSONResponse calls json.dumps with non-default options, which builds a new
# encoder per response; this one is built once (same output: compact, UTF-8, no NaN).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def json_bytes(data: Any) -> bytes:
    """``data`` as compact UTF-8 JSON (what ``json_response`` sends)."""
    return _ENCODER.encode(data).encode()


def json_response(data: Any, status: int = 200) -> Response:
    """A JSON response."""
    return Response(json_bytes(data), status, media_type="application/json")


def created(data: Any, collection: str, ident: str | None = None) -> Response:
    """A 201 JSON response whose ``Location`` names what the request created (RFC 9110 10.2.2).

    Args:
        data: the response body.
        collection: the collection's path, such as ``/api/v1/auth/roles``.
        ident: the new member's id, percent-encoded into the last segment (a role ``a b``
            lives at ``/api/v1/auth/roles/a%20b``); None when ``collection`` itself is what
            to read back.

    Returns:
        The response. ``Location`` is a path, not an absolute URL: a client resolves it
        against the URL it called, which stays right behind a TLS-terminating proxy, where
        the ``Host`` this server sees may not be the one the client used.
    """
    location = collection if ident is None else f"{collection}/{quote(ident, safe='')}"
    response = json_response(data, 201)
    response.headers["Location"] = location
    return response


async def read_body(request: Request, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON body; 415 for another content type, 400 for bad JSON."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise _MediaType("request body must be application/json")
    raw = await request.body()
    try:
        data = json.loads(raw, object_pairs_hook=_unique_members)
    except _RepeatedMember as exc:
        raise InvalidRequest(f"{exc.args[0][:40]}: given more than once in the body") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON") from None
    except RecursionError:
        # json's C scanner recurses per nesting level: "[[[[…" under 1 MiB reaches the limit.
        raise InvalidRequest("request body is nested too deeply") from None
    if _has_nul(data):
        # PostgreSQL text cannot hold NUL (the insert would fail with a 500), and a NUL in a
        # name invites null-prefix tricks: refuse it on every backend.
        raise InvalidRequest("request body contains a NUL character")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        message = schema_errors.message(model, first, mapping="a JSON object")
        raise InvalidRequest(f"{where}: {message}") from None


class _RepeatedMember(Exception):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a member named twice.

    json keeps the last of ``{"roles": [...], "roles": [...]}``, a proxy or a client library
    may keep the first: as for a repeated query parameter, some caller would silently get
    another request than the one it sent (or checked).
    """
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _RepeatedMember(name)
            seen.add(name)
    return data


def _has_nul(data: Any) -> bool:
    """True when any string (key or value) in parsed JSON holds U+0000 (iterative walk)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class _MediaType(CertctlError):
    status = 415
    title = "Unsupported media type"


def services_of(request: Request) -> Services:
    """The app's Services."""
    services: Services = request.app.state.services
    return services


def page_limit(request: Request) -> int:
    """The ``limit`` query parameter (1-500, default 50)."""
    raw = request.query_params.get("limit", "50")
    # isdigit() alone accepts "²" (int() then fails) and 5000-digit strings (int() refuses).
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or not 1 <= int(raw) <= 500:
        raise InvalidRequest(f"limit={raw[:20]}: must be an integer from 1 to 500")
    return int(raw)


def caller_of(principal: Principal | None) -> Principal:
    """The principal of an authenticated route."""
    assert principal is not None  # the router authenticates every non-public route
    return principal


def query_format(request: Request, choices: tuple[str, ...]) -> str | None:
    value = request.query_params.get("format")
    if value is not None and value not in choices:
        raise InvalidRequest(f"format={value[:20]}: must be one of {', '.join(choices)}")
    return value


def not_found(what: str, ident: str) -> CertctlError:
    from certctl.errors import NotFound

    return NotFound(f"{what} {ident} not found")


_OptionalBody = TypeVar("_OptionalBody", bound=BaseModel)


async def optional_body(request: Request, model: type[_OptionalBody]) -> _OptionalBody:
    """The request's JSON body as ``model``, or its defaults when the body was left out."""
    return await read_body(request, model) if await request.body() else model()


T = TypeVar("T")
# Worker threads for the mutating routes' transactions. Each holds a pooled connection while
# it waits for SQLite's write lock (one writer at a time anyway): 6, with the other routes'
# threads, the group commit and the scheduler, stays within SQLite's pool (the budget is in
# store.db.POOL_CONNECTIONS), so the reads on the event loop still find one; more would
# only queue on the lock. (Authentication's threads, authentication.AUTH_READ_THREADS and
# authentication.FAILURE_AUDIT_THREADS, may wait for it too.)
WRITE_THREADS = 6


def write_limiter() -> anyio.CapacityLimiter:
    """The limiter ``in_write_thread`` uses: one per app (``app.state.writes``)."""
    return anyio.CapacityLimiter(WRITE_THREADS)


# Worker threads for the listing routes' queries. A listing is the one read whose cost grows
# with the store (a ?q= search scans every certificate: 90 ms for 100,000 on SQLite), and on
# the event loop that long stalls every other request. Two: searches are rare, and each
# holds a pooled connection (see store.db.POOL_CONNECTIONS). Point reads by primary key
# stay on the loop: a thread hop costs more than they do.
LIST_THREADS = 2


def list_limiter() -> anyio.CapacityLimiter:
    """The limiter ``in_list_thread`` uses: one per app (``app.state.lists``)."""
    return anyio.CapacityLimiter(LIST_THREADS)


async def in_list_thread(request: Request, func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a worker thread, at most ``LIST_THREADS`` at once per app."""
    return await anyio.to_thread.run_sync(func, *args, limiter=request.app.state.lists)


async def listed(request: Request, read: Callable[[Session], T]) -> T:
    """``read(session)`` in a listing thread (:func:`in_list_thread`), on a session of its own."""

    def run(services: Services) -> T:
        with services.sessions() as session:
            return read(session)

    return await in_list_thread(request, run, services_of(request))


# Every mutating route runs its transaction in a worker thread (anyio.to_thread): a write
# waits for SQLite's write lock while the group commit, a CRL signing or another worker
# holds it, and on the event loop that wait stalls every other request of the process.
# Issuance signs on the loop (EC keys) and writes through the group commit, in a thread.
async def in_write_thread(request: Request, func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a worker thread, at most ``WRITE_THREADS`` at once per app.

    Off the event loop: a write that waits for the database's write lock there would stall
    every other request of the process.
    """
    return await anyio.to_thread.run_sync(func, *args, limiter=request.app.state.writes)


def utc_expiry(expires: datetime | None) -> datetime | None:
    """A body's ``expires_at`` in UTC (API keys, EAB keys), refused without a time zone.

    Raises:
        InvalidRequest: no time zone, or past datetime.max once in UTC.
    """
    if expires is None:
        return None
    if expires.tzinfo is None:
        raise InvalidRequest("expires_at: needs a time zone (e.g. 2027-01-01T00:00:00Z)")
    try:
        # 9999-12-31T23:59:59-14:00 is valid input whose UTC is past datetime.max.
        return expires.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest("expires_at: out of range (at most 9999-12-31T23:59:59Z)") from None
