"""The ASGI application: a route table with permissions, problem+json errors, access log.

Each route is declared once in ``ROUTES`` with its permission; the router, the OpenAPI
document and the authorization tests are all generated from that table.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import anyio.to_thread
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Match, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certctl.api import schemas
from certctl.api._common import (
    AUTHENTICATED,
    PUBLIC,
    ApiRoute,
    in_list_thread,
    in_write_thread,
    json_bytes,
    list_limiter,
    listed,
    write_limiter,
)
from certctl.api._common import caller_of as _caller
from certctl.api._common import created as _created
from certctl.api._common import json_response as _json
from certctl.api._common import page_limit as _limit
from certctl.api._common import read_body as _body
from certctl.api._common import services_of as _services
from certctl.api.access_log import logged_path, write_line
from certctl.api.problems import problem, problem_for_status, problem_from_error
from certctl.api.readiness import DatabaseProbe
from certctl.api.service_routes import SERVICE_ROUTES
from certctl.api.throttle import AuthFailureLimiter, client_unit
from certctl.auth.apikeys import PREFIX as API_KEY_PREFIX
from certctl.auth.apikeys import redact_keys
from certctl.auth.kubernetes import AccessDenied, TokenRejected, TokenReviewAuthenticator
from certctl.auth.permissions import PERMISSIONS
from certctl.errors import (
    CertctlError,
    InvalidRequest,
    PermissionDenied,
    TooManyRequests,
    Unauthenticated,
)
from certctl.metrics.registry import (
    AUTH_FAILURES,
    HTTP_DURATION,
    HTTP_REQUESTS,
    exposition_registry,
)
from certctl.pki import DNPattern, parse_duration
from certctl.services import (
    audit,
    certificates,
    crls,
    issuance,
    issuer_revocation,
    issuers,
    rbac,
    revocation,
)
from certctl.services.context import IssuerCertificates, Principal, Services, utcnow
from certctl.services.tls_services import TargetPolicy
from certctl.store.db import PoolTimeout, constraint_conflict, storage_error
from certctl.store.models import Actor, ApiKey, Role

if TYPE_CHECKING:
    from cryptography import x509
    from sqlalchemy.orm import Session


__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "METRICS_PATHS",
    "ROUTES",
    "ApiRoute",
    "ClientCertMapping",
    "create_app",
]

log = logging.getLogger("certctl.access")
MAX_BODY_BYTES = 1024 * 1024
# Request line plus headers. uvicorn's h11 parser refuses a larger head only while it is still
# incomplete (400); one that arrives whole in a single read is refused here (431).
MAX_HEADER_BYTES = 16 * 1024
# Worker threads for the public CA routes' store reads (an issuer not cached yet, an unknown
# id): a few overlap PostgreSQL round trips; more only contend for the GIL with the event
# loop, and anonymous requests must not take the default pool's 40 from issuance and CRLs.
CA_READ_THREADS = 4  # the CRL route has as many of its own


@dataclass(frozen=True)
class ClientCertMapping:
    """``auth.client-cert-mappings`` entry: a DN pattern (``*`` wildcards per RDN) → roles.

    Raises:
        InvalidRequest: ``subject`` is not a valid RFC 4514 pattern.
    """

    subject: str
    roles: tuple[str, ...]
    # ``issuer-fingerprint``, resolved to its certificate in ``tls.client-ca``: only a
    # certificate this CA's key signed is mapped. None: any CA the handshake trusts.
    issuer: x509.Certificate | None = None
    pattern: DNPattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", DNPattern(self.subject))

    def matches(self, subject: str) -> bool:
        """True when the RFC 4514 ``subject`` matches the pattern RDN by RDN.

        Escapes are resolved first: a CN of ``x,OU=ops`` is one value, never an OU.
        """
        return self.pattern.matches(subject)

    def issued(self, certificate: x509.Certificate | None) -> bool:
        """True without a pin, or when the pinned CA signed ``certificate`` (None: unknown).

        Its name as the certificate's issuer and its key verifying the signature: another
        CA of ``tls.client-ca`` may carry the same subject and key identifier, never the key.
        Checked on the certificate itself, not on the verified chain, which a resumed TLS
        session does not keep.
        """
        if self.issuer is None:
            return True
        if certificate is None:
            return False
        try:
            certificate.verify_directly_issued_by(self.issuer)
        except (ValueError, TypeError, InvalidSignature):
            # ValueError: another issuer name; TypeError: a key or algorithm it cannot use.
            return False
        return True


# --- handlers: auth ----------------------------------------------------------------------

# Every mutating route runs its transaction in a worker thread (anyio.to_thread): a write
# waits for SQLite's write lock while the group commit, a CRL signing or another worker
# holds it, and on the event loop that wait stalls every other request of the process.
# Issuance signs on the loop (EC keys) and writes through the group commit, in a thread.


# Rendered whoami answers (body and headers) by identity: the same few principals ask again
# and again, and sorting and encoding ~20 permissions cost more than the rest of the handler.
_WhoamiKey = tuple[str, tuple[str, ...], frozenset[str], str]
_WhoamiAnswer = tuple[bytes, tuple[tuple[bytes, bytes], ...]]
_WHOAMI_ANSWERS: dict[_WhoamiKey, _WhoamiAnswer] = {}
_WHOAMI_MAX = 1024
# The last principal answered and its answer. The key cache hands out the same frozen
# Principal for a key (per source), so most requests are answered after one identity test;
# holding the object keeps its id from being reused by another.
_whoami_last: tuple[Principal, _WhoamiAnswer] | None = None


class _Rendered(Response):
    """A response whose body and headers were rendered before (``init_headers`` skipped)."""

    def __init__(self, body: bytes, raw_headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        # A fresh list per response: middleware may add headers to it.
        self.raw_headers = list(raw_headers)


def _whoami_answer(p: Principal) -> _WhoamiAnswer:
    key = (p.actor_id, p.roles, p.permissions, p.auth_method)
    answer = _WHOAMI_ANSWERS.get(key)
    if answer is None:
        body = json_bytes(
            {
                "actor_id": p.actor_id,
                "roles": list(p.roles),
                "permissions": sorted(p.permissions),
                "auth_method": p.auth_method,
            }
        )
        answer = (body, tuple(Response(body, media_type="application/json").raw_headers))
        if len(_WHOAMI_ANSWERS) >= _WHOAMI_MAX:
            _WHOAMI_ANSWERS.clear()
        _WHOAMI_ANSWERS[key] = answer
    return answer


async def whoami(request: Request, principal: Principal | None) -> Response:
    global _whoami_last
    p = _caller(principal)
    last = _whoami_last
    if last is not None and last[0] is p:
        answer = last[1]
    else:
        answer = _whoami_answer(p)
        _whoami_last = (p, answer)
    return _Rendered(*answer)


async def list_permissions(request: Request, principal: Principal | None) -> Response:
    return _json({"items": list(PERMISSIONS)})


def _role_json(role: Role) -> dict[str, Any]:
    return {
        "id": role.id,
        "name": role.name,
        "permissions": role.permissions,
        "builtin": role.builtin,
    }


async def list_roles(request: Request, principal: Principal | None) -> Response:
    roles = await listed(request, lambda s: s.query(Role).order_by(Role.id).all())
    return _json({"items": [_role_json(r) for r in roles], "next_cursor": None})


async def get_role(request: Request, principal: Principal | None) -> Response:
    with _services(request).sessions() as session:
        role = session.get(Role, request.path_params["id"])
    if role is None:
        raise _not_found("role", request.path_params["id"])
    return _json(_role_json(role))


def _format(request: Request, choices: tuple[str, ...]) -> str | None:
    value = request.query_params.get("format")
    if value is not None and value not in choices:
        raise InvalidRequest(f"format={value[:20]}: must be one of {', '.join(choices)}")
    return value


def _not_found(what: str, ident: str) -> CertctlError:
    from certctl.errors import NotFound

    return NotFound(f"{what} {ident} not found")


async def create_role(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.RoleCreate)
    services, caller = _services(request), _caller(principal)
    role = await in_write_thread(
        request, rbac.create_role, services, caller, body.id, body.name, body.permissions
    )
    return _created(_role_json(role), "/api/v1/auth/roles", role.id)


async def update_role(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.RoleUpdate)
    role = await in_write_thread(
        request,
        rbac.update_role,
        _services(request),
        _caller(principal),
        request.path_params["id"],
        body.name,
        body.permissions,
    )
    return _json(_role_json(role))


async def delete_role(request: Request, principal: Principal | None) -> Response:
    await in_write_thread(
        request, rbac.delete_role, _services(request), _caller(principal), request.path_params["id"]
    )
    return Response(status_code=204)


def _actor_json(actor: Actor) -> dict[str, Any]:
    return {
        "id": actor.id,
        "name": actor.name,
        "roles": actor.roles,
        "created_at": actor.created_at.isoformat(),
    }


async def list_actors(request: Request, principal: Principal | None) -> Response:
    actors = await listed(request, lambda s: s.query(Actor).order_by(Actor.id).all())
    return _json({"items": [_actor_json(a) for a in actors], "next_cursor": None})


async def get_actor(request: Request, principal: Principal | None) -> Response:
    with _services(request).sessions() as session:
        actor = session.get(Actor, request.path_params["id"])
    if actor is None:
        raise _not_found("actor", request.path_params["id"])
    return _json(_actor_json(actor))


async def create_actor(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.ActorCreate)
    actor = await in_write_thread(
        request,
        rbac.create_actor,
        _services(request),
        _caller(principal),
        body.id,
        body.name,
        body.roles,
    )
    return _created(_actor_json(actor), "/api/v1/auth/actors", actor.id)


async def patch_actor(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.ActorPatch)
    actor = await in_write_thread(
        request,
        rbac.update_actor,
        _services(request),
        _caller(principal),
        request.path_params["id"],
        body.name,
        body.roles,
    )
    return _json(_actor_json(actor))


async def delete_actor(request: Request, principal: Principal | None) -> Response:
    await in_write_thread(
        request,
        rbac.delete_actor,
        _services(request),
        _caller(principal),
        request.path_params["id"],
    )
    return Response(status_code=204)


async def list_apikeys(request: Request, principal: Principal | None) -> Response:
    actor = request.query_params.get("actor_id")
    if actor == "":  # not "every actor": a script whose variable was unset would see all keys
        raise InvalidRequest("actor_id: empty (leave it out for every actor's keys)")

    def read(session: Session) -> list[ApiKey]:
        q = session.query(ApiKey).order_by(ApiKey.created_at)
        if actor is not None:
            q = q.filter(ApiKey.actor_id == actor)
        return q.all()

    rows = await listed(request, read)
    return _json({"items": [schemas.apikey_json(r) for r in rows], "next_cursor": None})


async def get_apikey(request: Request, principal: Principal | None) -> Response:
    with _services(request).sessions() as session:
        row = session.get(ApiKey, request.path_params["id"])
    if row is None:
        raise _not_found("API key", request.path_params["id"])
    return _json(schemas.apikey_json(row))


async def create_apikey(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.ApiKeyCreate)
    expires = body.expires_at
    if expires is not None:
        if expires.tzinfo is None:
            raise InvalidRequest("expires_at: needs a time zone (e.g. 2027-01-01T00:00:00Z)")
        try:
            # 9999-12-31T23:59:59-14:00 is valid input whose UTC is past datetime.max.
            expires = expires.astimezone(UTC)
        except OverflowError:
            raise InvalidRequest(
                "expires_at: out of range (at most 9999-12-31T23:59:59Z)"
            ) from None
    result = await in_write_thread(
        request,
        rbac.mint_api_key,
        _services(request),
        _caller(principal),
        body.actor_id,
        body.name,
        expires,
    )
    data = schemas.apikey_json(result.row)
    data["key_value"] = result.minted.value  # shown once, here only
    data.pop("last_used_at")
    data.pop("revoked_at")
    return _created(data, "/api/v1/auth/apikeys", result.row.id)


async def revoke_apikey(request: Request, principal: Principal | None) -> Response:
    row = await in_write_thread(
        request,
        rbac.revoke_api_key,
        _services(request),
        _caller(principal),
        request.path_params["id"],
    )
    return _json(schemas.apikey_json(row))


# --- handlers: issuers and certificates --------------------------------------------------


async def list_issuers(request: Request, principal: Principal | None) -> Response:
    from certctl.store.models import Issuer

    rows = await listed(request, lambda s: s.query(Issuer).order_by(Issuer.id).all())
    now = _services(request).clock()
    return _json({"items": [schemas.issuer_json(r, now) for r in rows], "next_cursor": None})


async def get_issuer(request: Request, principal: Principal | None) -> Response:
    from certctl.store.models import Issuer

    services = _services(request)
    with services.sessions() as session:
        row = session.get(Issuer, request.path_params["id"])
    if row is None:
        raise _not_found("issuer", request.path_params["id"])
    return _json(schemas.issuer_json(row, services.clock()))


# IssuerCreate fields that make a new CA and mean nothing to an import.
_CREATE_ONLY = ("common_name", "subject", "key_type", "validity", "parent", "path_length")


async def create_issuer(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.IssuerCreate)
    services, caller = _services(request), _caller(principal)
    warnings: tuple[str, ...] = ()
    if body.certificate_pem or body.private_key_pem:
        if not (body.certificate_pem and body.private_key_pem):
            raise InvalidRequest("import needs both certificate_pem and private_key_pem")
        # As with a CSR: a field that would be ignored is refused, not silently dropped.
        ignored = [f for f in _CREATE_ONLY if f in body.model_fields_set]
        if ignored:
            raise InvalidRequest(
                f"{', '.join(ignored)}: not used with an import (the certificate carries the "
                "name, key and validity; certificate_pem the chain above it)"
            )
        row, warnings = await in_write_thread(
            request,
            lambda: issuers.import_issuer(
                services,
                caller,
                issuer_id=body.id,
                name=body.name,
                certificate_pem=body.certificate_pem,
                private_key_pem=body.private_key_pem,
            ),
        )
    else:
        if body.subject and body.common_name:
            # Before, common_name was dropped without a word and the CA named by subject.
            raise InvalidRequest(
                "common_name and subject exclude each other (put the CN in subject)"
            )
        validity = parse_duration(body.validity) if body.validity is not None else None
        row, warnings = await in_write_thread(
            request,
            lambda: issuers.create_issuer(
                services,
                caller,
                issuer_id=body.id,
                name=body.name,
                subject=body.subject,
                common_name=body.common_name,
                key_type=body.key_type,
                validity=validity,
                parent=body.parent,
                path_length=body.path_length,
            ),
        )
    # As for certificates: a validity clipped to the parent's notAfter is said, not silent.
    return _created(
        {**schemas.issuer_json(row, services.clock()), "warnings": list(warnings)},
        "/api/v1/issuers",
        row.id,
    )


_OptionalBody = TypeVar("_OptionalBody", bound=BaseModel)


async def _optional_body(request: Request, model: type[_OptionalBody]) -> _OptionalBody:
    """The request's JSON body as ``model``, or its defaults when the body was left out."""
    return await _body(request, model) if await request.body() else model()


async def revoke_issuer(request: Request, principal: Principal | None) -> Response:
    body = await _optional_body(request, schemas.IssuerRevoke)
    services = _services(request)
    row = await in_write_thread(
        request,
        issuer_revocation.revoke_issuer,
        services,
        _caller(principal),
        request.path_params["id"],
        body.reason,
    )
    return _json(schemas.issuer_json(row, services.clock()))


async def issuer_ca_pem(request: Request, principal: Principal | None) -> Response:
    chain = request.query_params.get("chain", "false")
    if chain not in ("true", "false"):
        raise InvalidRequest(f"chain={chain[:20]}: must be true or false")
    ca = await _issuer_certificates(request)
    from certctl.pki import certs_to_pem

    # chain=true: the CAs above it too, nearest first, ending with the root clients trust.
    certs = [ca.certificate, *ca.chain] if chain == "true" else [ca.certificate]
    return _public_certificate(
        request, certs_to_pem(certs), "application/x-pem-file", ca.certificate
    )


async def issuer_ca_der(request: Request, principal: Principal | None) -> Response:
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = await _issuer_certificates(request)
    # What a caIssuers URI names (RFC 5280 4.2.2.1): one DER certificate, application/pkix-cert
    # (RFC 2585 4.1); the client follows it to build a path, so never a chain or PEM.
    return _public_certificate(
        request, ca.certificate.public_bytes(Encoding.DER), "application/pkix-cert", ca.certificate
    )


async def _issuer_certificates(request: Request) -> IssuerCertificates:
    """The issuer's certificates for its public routes, without its key.

    Held by this process: no store read, no thread. Otherwise (its first request here, or
    an unknown id) the read runs in a worker thread: these routes answer anyone, and every
    TLS client following a caIssuers URI may ask at once. At most :data:`CA_READ_THREADS`
    of them, so a flood of unknown ids leaves the default pool to issuance and CRLs.
    """
    services, issuer_id = _services(request), request.path_params["id"]
    cached = services.cached_certificates(issuer_id)
    if cached is not None:
        return cached
    return await anyio.to_thread.run_sync(
        lambda: issuers.load_issuer_certificates(services, issuer_id),
        limiter=request.app.state.ca_reads,
    )


def _public_certificate(
    request: Request, body: bytes, media_type: str, certificate: x509.Certificate
) -> Response:
    """``body`` with explicit freshness and a strong ETag, or a 304 to a client holding it.

    As nginx or Vault's PKI ``/ca`` answer: a client, CDN or proxy revalidates its copy with
    ``If-None-Match`` and gets 304 with no body. HEAD takes the GET route (Starlette adds it).
    """
    # Strong: the tag names these exact bytes (RFC 9110 8.8.3); ca.pem, ca.pem?chain=true and
    # ca.der each have their own.
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    max_age = crls.ca_max_age_s(certificate, _services(request).clock())
    headers = {"Cache-Control": f"public, max-age={max_age}", "ETag": etag}
    if _none_match(request.headers.getlist("if-none-match"), etag):
        # RFC 9110 15.4.5: a 304 carries the ETag and Cache-Control a 200 would have.
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _none_match(values: list[str], etag: str) -> bool:
    """Whether an If-None-Match header (each of several) names ``etag`` or is ``*``.

    RFC 9110 13.1.2: compared weakly, so ``W/"x"`` matches ``"x"``.
    """
    for value in values:
        for tag in value.split(","):
            tag = tag.strip()
            if tag == "*" or tag.removeprefix("W/") == etag:
                return True
    return False


async def issuer_crl(request: Request, principal: Principal | None) -> Response:
    from cryptography.hazmat.primitives.serialization import Encoding

    fmt = _format(request, ("der", "pem"))  # before a CRL number is spent
    services, issuer_id = _services(request), request.path_params["id"]
    # A write (the CRL number), which may wait for SQLite's write lock: off the event loop,
    # in a few threads of its own: anyone may ask (every client checking revocation), and a
    # flood must not take the default pool's 40 threads from issuance.
    crl = await anyio.to_thread.run_sync(
        lambda: crls.crl_for(services, issuer_id), limiter=request.app.state.crl_reads
    )
    # Explicit freshness, as long as this server reuses the CRL: without it a CDN or proxy
    # in front keeps the public CRL for its own default (CloudFront: 24 h), and a revocation
    # stays unseen behind it for that long.
    max_age = crls.crl_max_age_s(crl, services.clock())
    headers = {"Cache-Control": f"public, max-age={max_age}"}
    if fmt == "pem":
        return Response(
            crl.public_bytes(Encoding.PEM), media_type="application/x-pem-file", headers=headers
        )
    return Response(
        crl.public_bytes(Encoding.DER), media_type="application/pkix-crl", headers=headers
    )


def _issue_json(result: issuance.IssueResult, now: Any) -> dict[str, Any]:
    data = {
        "id": result.record.id,
        "serial": result.record.serial,
        "status": certificates.effective_status(result.record, now),
        "not_before": result.record.not_before.isoformat(),
        "not_after": result.record.not_after.isoformat(),
        "certificate_pem": result.record.certificate_pem,
        "chain_pem": result.chain_pem,
        "warnings": list(result.warnings),
    }
    if result.private_key_pem is not None:
        data["private_key_pem"] = result.private_key_pem  # only in this response
    return data


async def issue_certificate(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.CertificateIssue)
    services, caller = _services(request), _caller(principal)
    validity = parse_duration(body.validity)
    if body.csr:
        # The names and the key come from the CSR: a field that would be ignored is refused.
        ignored = [
            name
            for name, value in (
                ("common_name", body.common_name),
                ("dns_names", body.dns_names),
                ("ip_addresses", body.ip_addresses),
                ("email_addresses", body.email_addresses),
                ("uris", body.uris),
                ("key_type", body.key_type != "ec-p256"),
            )
            if value
        ]
        if ignored:
            raise InvalidRequest(
                f"{', '.join(ignored)}: not used with csr (the CSR carries the names and the key)"
            )
        pending = issuance.prepare_from_csr(
            services,
            caller,
            issuer_id=body.issuer,
            csr_pem=body.csr,
            profile=body.profile,
            validity=validity,
        )
    else:
        if not (
            body.common_name
            or body.dns_names
            or body.ip_addresses
            or body.email_addresses
            or body.uris
        ):
            raise InvalidRequest(
                "give csr, or common_name/dns_names/ip_addresses/email_addresses/uris"
            )

        def work() -> issuance.PendingIssue:
            return issuance.prepare_with_key(
                services,
                caller,
                issuer_id=body.issuer,
                common_name=body.common_name,
                dns_names=body.dns_names,
                ip_addresses=body.ip_addresses,
                email_addresses=body.email_addresses,
                uris=body.uris,
                profile=body.profile,
                validity=validity,
                key_type=body.key_type,
            )

        # RSA key generation takes 50 ms to seconds: never on the event loop. Key types are
        # matched as KeyType.parse does (RSA-4096 is rsa-4096).
        is_rsa = body.key_type.strip().lower().startswith("rsa")
        pending = (
            await anyio.to_thread.run_sync(work, limiter=request.app.state.keygens)
            if is_rsa
            else work()
        )
    # Committed together with the rows of concurrent requests: one fsync for the group.
    await services.commits.add(list(pending.rows))
    result = pending.finish()
    return _created(_issue_json(result, services.clock()), "/api/v1/certificates", result.record.id)


async def list_certificates(request: Request, principal: Principal | None) -> Response:
    params = request.query_params  # names checked against the route's OpenAPI parameters
    cursor = params.get("cursor")
    if cursor is not None and (
        len(cursor) != 24 or any(c not in "0123456789abcdef" for c in cursor)
    ):
        raise InvalidRequest("cursor: not a cursor returned by this API")
    for name in ("issuer", "expiring_within"):
        # Empty is no filter to guess at: ?expiring_within=$WINDOW with the variable unset
        # listed every certificate as if all were expiring, ?issuer= listed none.
        if params.get(name) == "":
            raise InvalidRequest(f"{name}: empty (leave it out for no filter)")
    within = params.get("expiring_within")
    services = _services(request)
    rows, next_cursor = await in_list_thread(
        request,
        functools.partial(
            certificates.list_certificates,
            services,
            _caller(principal),
            status=params.get("status"),
            issuer=params.get("issuer"),
            expiring_within=parse_duration(within) if within else None,
            q=params.get("q"),
            limit=_limit(request),
            cursor=cursor,
        ),
    )
    now = services.clock()
    items = [schemas.certificate_json(r, certificates.effective_status(r, now)) for r in rows]
    return _json({"items": items, "next_cursor": next_cursor})


async def get_certificate(request: Request, principal: Principal | None) -> Response:
    services = _services(request)
    row = certificates.get_certificate(services, _caller(principal), request.path_params["id"])
    fmt = _format(request, ("json", "pem"))
    if fmt == "pem" or (fmt is None and _accepts_pem(request.headers.get("accept", ""))):
        # Key-free: serving a chain needs no CA key (and a key no KEK opens is no 500 here).
        ca = issuers.load_issuer_certificates(services, row.issuer_id)
        from certctl.pki import certs_to_pem

        below_root = (ca.certificate, *ca.chain[:-1]) if ca.chain else ()
        pem = row.certificate_pem.encode() + certs_to_pem(below_root)
        return Response(pem, media_type="application/x-pem-file")
    return _json(
        schemas.certificate_json(row, certificates.effective_status(row, services.clock()))
    )


def _accepts_pem(accept: str) -> bool:
    """True when ``Accept`` prefers ``application/x-pem-file`` to JSON (RFC 9110 12.5.1).

    PEM needs a positive q-value at least as high as ``application/json``'s; ``;q=0`` refuses
    it, and ``?format=`` overrides the header altogether.
    """
    weights: dict[str, float] = {}
    for item in accept.lower().split(","):
        media_type, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                q = q if 0.0 <= q <= 1.0 else 0.0  # nan, inf and out of range: not accepted
        weights[media_type] = max(q, weights.get(media_type, 0.0))
    pem = weights.get("application/x-pem-file", 0.0)
    return pem > 0 and pem >= weights.get("application/json", 0.0)


async def revoke_certificate(request: Request, principal: Principal | None) -> Response:
    body = await _optional_body(request, schemas.CertificateRevoke)
    services = _services(request)
    revocation = await in_write_thread(
        request,
        certificates.revoke_certificate,
        services,
        _caller(principal),
        request.path_params["id"],
        body.reason,
    )
    return _json(
        {
            **schemas.certificate_json(revocation.certificate, "revoked"),
            "also_revoked": list(revocation.also_revoked),
        }
    )


async def renew_certificate(request: Request, principal: Principal | None) -> Response:
    body = await _optional_body(request, schemas.CertificateRenew)
    services = _services(request)
    validity = parse_duration(body.validity) if body.validity else None
    result = await in_write_thread(
        request,
        lambda: certificates.renew_certificate(
            services, _caller(principal), request.path_params["id"], validity
        ),
    )
    return _created(_issue_json(result, services.clock()), "/api/v1/certificates", result.record.id)


async def list_audit(request: Request, principal: Principal | None) -> Response:
    cursor = request.query_params.get("cursor")
    # Audit ids are 64-bit integers: anything longer would overflow the database parameter.
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise InvalidRequest("cursor: not a cursor returned by this API")
    limit = _limit(request)

    after = int(cursor) if cursor else None
    rows = await listed(request, lambda s: audit.list_audit(s, limit=limit + 1, after=after))
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return _json(
        {"items": [schemas.audit_json(r) for r in rows[:limit]], "next_cursor": next_cursor}
    )


# --- handlers: metrics and health --------------------------------------------------------


async def metrics_prometheus(request: Request, principal: Principal | None) -> Response:
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(exposition_registry()), media_type=CONTENT_TYPE_LATEST)


async def metrics_json(request: Request, principal: Principal | None) -> Response:
    from certctl.metrics.registry import certificate_gauges

    snapshot: dict[str, dict[str, int]] = {}
    for metric in certificate_gauges.collect():
        if metric.name == "certctl_certificates":
            for sample in metric.samples:
                issuer, status = sample.labels["issuer"], sample.labels["status"]
                snapshot.setdefault(issuer, {})[status] = int(sample.value)
    return _json({"certificates": snapshot})


async def healthz(request: Request, principal: Principal | None) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request, principal: Principal | None) -> Response:
    # Every other route needs the store (API keys live there): without it, not ready, so a
    # load balancer or Kubernetes sends clients elsewhere instead of to a stream of 503s.
    # /healthz stays up: restarting the process would not bring the database back.
    if not getattr(request.app.state, "ready", False):
        return problem_for_status(503, "not ready")
    if not await request.app.state.database_probe.reachable():
        return problem_for_status(503, "not ready")
    return PlainTextResponse("ready")


async def openapi(request: Request, principal: Principal | None) -> Response:
    from certctl.api.openapi import build_openapi

    return _json(build_openapi(ROUTES))


_CORE_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/healthz", PUBLIC, healthz, "Liveness"),
    ApiRoute("GET", "/readyz", PUBLIC, readyz, "Readiness"),
    ApiRoute("GET", "/api/v1/openapi.json", PUBLIC, openapi, "OpenAPI document"),
    ApiRoute("GET", "/api/v1/auth/whoami", AUTHENTICATED, whoami, "Who am I"),
    ApiRoute(
        "GET",
        "/api/v1/auth/permissions",
        "auth.role.read",
        list_permissions,
        "Permission catalogue",
    ),
    ApiRoute("GET", "/api/v1/auth/roles", "auth.role.read", list_roles, "List roles"),
    ApiRoute(
        "POST",
        "/api/v1/auth/roles",
        "auth.role.create",
        create_role,
        "Create a role",
        schemas.RoleCreate,
        201,
    ),
    ApiRoute("GET", "/api/v1/auth/roles/{id}", "auth.role.read", get_role, "Get a role"),
    ApiRoute(
        "PUT",
        "/api/v1/auth/roles/{id}",
        "auth.role.edit",
        update_role,
        "Update a role",
        schemas.RoleUpdate,
    ),
    ApiRoute(
        "DELETE",
        "/api/v1/auth/roles/{id}",
        "auth.role.delete",
        delete_role,
        "Delete a role",
        None,
        204,
    ),
    ApiRoute("GET", "/api/v1/auth/actors", "auth.actor.read", list_actors, "List actors"),
    ApiRoute(
        "POST",
        "/api/v1/auth/actors",
        "auth.actor.create",
        create_actor,
        "Create an actor",
        schemas.ActorCreate,
        201,
    ),
    ApiRoute("GET", "/api/v1/auth/actors/{id}", "auth.actor.read", get_actor, "Get an actor"),
    ApiRoute(
        "PATCH",
        "/api/v1/auth/actors/{id}",
        "auth.actor.edit",
        patch_actor,
        "Update an actor",
        schemas.ActorPatch,
    ),
    ApiRoute(
        "DELETE",
        "/api/v1/auth/actors/{id}",
        "auth.actor.delete",
        delete_actor,
        "Delete an actor",
        None,
        204,
    ),
    ApiRoute("GET", "/api/v1/auth/apikeys", "auth.apikey.read", list_apikeys, "List API keys"),
    ApiRoute(
        "POST",
        "/api/v1/auth/apikeys",
        "auth.apikey.create",
        create_apikey,
        "Mint an API key (key_value shown once)",
        schemas.ApiKeyCreate,
        201,
    ),
    ApiRoute("GET", "/api/v1/auth/apikeys/{id}", "auth.apikey.read", get_apikey, "Get an API key"),
    ApiRoute(
        "DELETE",
        "/api/v1/auth/apikeys/{id}",
        "auth.apikey.revoke",
        revoke_apikey,
        "Revoke an API key",
    ),
    ApiRoute("GET", "/api/v1/issuers", "issuer.read", list_issuers, "List issuers"),
    ApiRoute(
        "POST",
        "/api/v1/issuers",
        "issuer.create",
        create_issuer,
        "Create or import an issuer",
        schemas.IssuerCreate,
        201,
    ),
    ApiRoute("GET", "/api/v1/issuers/{id}", "issuer.read", get_issuer, "Get an issuer"),
    ApiRoute(
        "POST",
        "/api/v1/issuers/{id}/revoke",
        "issuer.revoke",
        revoke_issuer,
        "Revoke an intermediate issuer (listed on its parent's CRL; it issues no more)",
        schemas.IssuerRevoke,
    ),
    ApiRoute(
        "GET", "/api/v1/issuers/{id}/ca.pem", PUBLIC, issuer_ca_pem, "Issuer CA certificate (PEM)"
    ),
    ApiRoute(
        "GET",
        "/api/v1/issuers/{id}/ca.der",
        PUBLIC,
        issuer_ca_der,
        "Issuer CA certificate (DER: what a certificate's caIssuers URI names)",
    ),
    ApiRoute(
        "GET", "/api/v1/issuers/{id}/crl", PUBLIC, issuer_crl, "Issuer CRL (DER; ?format=pem)"
    ),
    ApiRoute("GET", "/api/v1/certificates", "cert.read", list_certificates, "List certificates"),
    ApiRoute(
        "POST",
        "/api/v1/certificates",
        "cert.issue",
        issue_certificate,
        "Issue a certificate",
        schemas.CertificateIssue,
        201,
    ),
    ApiRoute(
        "GET",
        "/api/v1/certificates/{id}",
        "cert.read",
        get_certificate,
        "Get a certificate (JSON, or PEM with Accept: application/x-pem-file)",
    ),
    ApiRoute(
        "POST",
        "/api/v1/certificates/{id}/revoke",
        "cert.revoke",
        revoke_certificate,
        "Revoke a certificate",
        schemas.CertificateRevoke,
    ),
    ApiRoute(
        "POST",
        "/api/v1/certificates/{id}/renew",
        "cert.issue",
        renew_certificate,
        "Renew a certificate",
        schemas.CertificateRenew,
        201,
    ),
    ApiRoute("GET", "/api/v1/audit", "audit.read", list_audit, "Audit log"),
    ApiRoute("GET", "/api/v1/metrics", "metrics.read", metrics_json, "Metrics summary (JSON)"),
    ApiRoute(
        "GET",
        "/api/v1/metrics/prometheus",
        "metrics.read",
        metrics_prometheus,
        "Prometheus metrics",
    ),
)

ROUTES: tuple[ApiRoute, ...] = _CORE_ROUTES + SERVICE_ROUTES


# What a separate ``metrics.listen`` listener serves.
METRICS_PATHS = frozenset({"/healthz", "/readyz", "/api/v1/metrics", "/api/v1/metrics/prometheus"})


# --- authentication ----------------------------------------------------------------------


def _source(request: Request) -> str:
    client = request.scope.get("client")  # not request.client: no Address object per call
    return str(client[0]) if client else ""


@dataclass(frozen=True)
class _CachedCertificate:
    """What a client certificate may do, as the store said at credential generation ``version``.

    Remembered per app (its ``auth.client-cert-mappings`` are fixed) by what decides the
    answer: the certificate (subject, DER: its issuer, serial and notAfter) and the CAs the
    handshake verified it under (None for a resumed session). Valid while the credential
    generation (``rbac.credential_generation``) stays put: database triggers bump it at every
    change of a role, an actor, a certificate's revocation or requester, and an issuer's
    revocation, from any process or replica. Expiry is checked on every request before it.
    Not ``Services.issuer_cache_version``: it counts this process's changes only, and an
    issuer revoked by another worker or replica reaches it at the next refresh. Refusals are
    remembered too (a revoked certificate retrying reads no store; each is still audited).
    """

    version: int
    roles: tuple[str, ...]
    # The permissions it authenticates with, or why it may not: (reason, message).
    answer: frozenset[str] | tuple[str, str]
    # For the request that filled the entry (another source gets a copy); None if refused.
    principal: Principal | None


_CACHED_CERTIFICATES_MAX = 1024


@dataclass(frozen=True)
class _AuthSettings:
    """What authentication needs, resolved once per app instead of read from ``app.state``.

    Every ``app.state`` attribute goes through ``State.__getattr__`` after a failed normal
    lookup: ~0.5 µs each, on every authenticated request.
    """

    services: Services
    limiter: AuthFailureLimiter | None
    client_cert_mappings: tuple[ClientCertMapping, ...]
    kubernetes: TokenReviewAuthenticator | None
    # When each address last had a request without credentials audited (see _count_failure).
    missing_audited: dict[str, datetime] = field(default_factory=dict)
    # Client certificates' answers, by (subject, DER, verified CAs): see _CachedCertificate.
    client_certs: dict[tuple[Any, ...], _CachedCertificate] = field(default_factory=dict)
    # The worker threads of authentication's store reads and of its failures' audit rows.
    reads: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(AUTH_READ_THREADS)
    )
    audits: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(FAILURE_AUDIT_THREADS)
    )


# Authentication reads and writes the store off the event loop (a write lock to wait for
# would stall every request of the process there) when the in-memory key cache (SQLite) cannot
# answer: a key not cached, stale, or whose last_used_at is due (then written, in the same
# thread); a client certificate not remembered, or remembered at an older credential
# generation (_CachedCertificate). Threads of their own, not the write pool's: a burst of
# cache misses (after a role change) must not queue behind issuance, nor hold writes back.
# Two: a read takes microseconds; each holds a pooled connection (the budget is in
# store.db.POOL_CONNECTIONS).
# PostgreSQL: a cached key or a remembered client certificate is checked by one read of the
# credential generation, on the event loop, on a connection of the cache's own
# (rbac._PostgresCounter: ~25 µs CPU, one round trip). A key or a certificate not remembered
# is read in a thread as on SQLite: on the loop, its round trips (and the wait for a pooled
# connection when the pool is busy, up to pool_timeout) stalled every other request of the
# process. The hop costs ~130-290 µs (session 19) on a miss only, which the caches make rare:
# a key's first use, once a minute for its last_used_at (a thread anyway), after a credential
# change.
AUTH_READ_THREADS = 2
# RSA issuances with server-side keys at once: each may read its issuer (a pooled connection)
# the first time. Unbounded, they took anyio's default 40 threads, and with them more
# connections than the pool holds (store.db.POOL_CONNECTIONS). Two lose nothing: key
# generation holds the GIL, so more threads only queue for it.
KEYGEN_THREADS = 2
# The audit rows of refused authentications: one at a time. A flood of bad keys from many
# addresses (auth.failure-limit throttles each address, not their number) then holds one
# pooled connection and one turn at SQLite's write lock, whatever its size, so it cannot starve
# the mutating routes' writes; its own 401s wait for their rows instead (the flood slows down,
# nothing is dropped).
FAILURE_AUDIT_THREADS = 1


# Requests without any credentials are audited once per client (an address, an IPv6 /64) per
# this interval; every one is still counted in certctl_auth_failures_total{reason="missing"}
# and has its access-log line.
MISSING_AUDIT_INTERVAL = timedelta(minutes=1)
_MISSING_AUDITED_MAX = 10_000


# Where _count_failure leaves a refusal's audit row (at, reason, detail, target, source) for
# _certctl_error to write, off the event loop, before the 401 is sent.
_FAILURE_AUDIT = "certctl.failure_audit"


def _count_failure(auth: _AuthSettings, request: Request, reason: str, detail: str) -> None:
    """Count a refused authentication and say which audit row it is due (no store here)."""
    AUTH_FAILURES.labels(reason).inc()
    limiter = auth.limiter
    source = _source(request)
    # Presented-but-wrong credentials count towards auth.failure-limit; no credentials at all
    # ("missing") is a client that has not tried yet, not one guessing keys.
    if (
        limiter is not None
        and source
        and reason != "missing"
        and (block := limiter.record(source)) is not None
    ):
        log.warning(
            "%s: %d authentication failures within %.0f s; refused for %.0f s",
            block.unit,  # the address, or its IPv6 /64
            block.failures,
            limiter.window_s,
            limiter.window_s,
        )
    now = auth.services.clock()
    if reason == "missing":
        # Nothing was tried, and nothing throttles it: without this, every anonymous request
        # (a flood, or a scraper missing its token) was one audit row and one synchronous
        # commit, so anyone who could reach the port could grow the database without bound.
        # Per client, not per address: an IPv6 client can send each request from another
        # address of its /64.
        audited, unit = auth.missing_audited, client_unit(source)
        last = audited.get(unit)
        if last is not None and now - last < MISSING_AUDIT_INTERVAL:
            return
        if len(audited) >= _MISSING_AUDITED_MAX:
            audited.clear()
        audited[unit] = now
    target = f"{request.method} {_logged_path(request.scope)}"[:200]
    request.scope[_FAILURE_AUDIT] = (now, reason, detail, target, source)


def _audit_failure(services: Services, row: tuple[datetime, str, str, str, str]) -> None:
    """Write a refused authentication's audit row (blocking: a worker thread runs it)."""
    at, reason, detail, target, source = row
    try:
        with services.sessions.begin() as session:
            audit.record(
                session,
                at=at,
                actor="anonymous",
                action="auth.failure",
                target=target,
                outcome=reason,
                source=source,
                detail=redact_keys(detail),
            )
    except (DBAPIError, PoolTimeout) as exc:
        fault = storage_error(exc)
        if fault is None:
            raise
        # The caller still gets its 401: an unwritable audit log must not turn a refusal
        # into a 503 (or let a key be tried without the attempt being counted).
        logging.getLogger("certctl.api").warning(
            "authentication failure not audited: %s", fault.detail
        )


def _client_cert_answer(
    services: Services, tls: dict[str, Any], roles: tuple[str, ...]
) -> frozenset[str] | tuple[str, str]:
    """What the verified client certificate may do: at most its mapped ``roles``' permissions.

    Returns (reason, message) when it may not authenticate at all. Blocking (the store):
    called when :func:`_cached_client_cert` cannot answer, in a worker thread. Its reads
    (the roles, the revoked issuers, the certificate, its requesters' roles) share one pooled
    connection: each took one of its own (on PostgreSQL a ping, BEGIN and ROLLBACK each).

    Checked on every request (or remembered only until the credential generation moves), as
    an API key's revocation is: the handshake's checks happened once, and a kept-alive
    connection or a resumed TLS session (up to 2 h) outlives them. Revoked: by certctl, the
    certificate being one of its issuers', or a CA of its verified chain being a revoked
    certctl issuer (the handshake checks ``tls.client-ca`` only, never certctl's CRLs); a
    resumed session has no verified chain, so there the path up through certctl's own issuers
    is checked (a CA certctl does not hold breaks it). Expiry is the caller's, on every
    request.

    A certificate certctl issued carries no more than the actor that had it issued holds now
    (none once that actor is deleted, or when it was no actor): with ``tls.client-ca``
    trusting one of certctl's issuers, an operator could otherwise have it sign a client
    certificate with an administrator's mapped subject, and log in as one.
    """
    with services.engine.connect() as connection:
        return _client_cert_answer_on(services, connection, tls, roles)


def _client_cert_answer_on(
    services: Services, connection: Connection, tls: dict[str, Any], roles: tuple[str, ...]
) -> frozenset[str] | tuple[str, str]:
    permissions = rbac.permissions_of(services, list(roles), connection)
    cas, der = tls.get("certctl.client_cert_cas"), tls.get("certctl.client_cert_der")
    if isinstance(cas, tuple) and cas:
        try:
            revoked_ca = revocation.revoked_ca_among(services, cas, connection)
        except revocation.UnreadableCertificate as exc:
            return "invalid", f"client certificate refused: {exc.detail}"
    elif isinstance(der, bytes):
        # No verified chain (a resumed TLS session): walked up through certctl's issuers.
        revoked_ca = revocation.revoked_issuer_of(services, der, connection)
    else:
        revoked_ca = None  # a server that does not say (tests' fake scopes)
    if revoked_ca is not None:
        # An intermediate revoked (keyCompromise): whoever holds its key can sign any
        # subject, certificates certctl never saw; the handshake reads no CRL.
        return "revoked", "client certificate revoked: a CA above it was revoked"
    issuer, serial = tls.get("certctl.client_cert_issuer"), tls.get("certctl.client_cert_serial")
    if not isinstance(issuer, str) or not isinstance(serial, int):
        return permissions  # a server that does not say (tests' fake scopes): nothing to look up
    stored = certificates.issued_client_certificate(services, issuer, serial, connection)
    if stored is None:
        return permissions
    if stored.revoked:
        return "revoked", "client certificate revoked"
    for creator in stored.creator_roles:
        permissions &= (
            rbac.permissions_of(services, list(creator), connection) if creator else frozenset()
        )
    return permissions


def _client_cert_key(subject: str, tls: dict[str, Any]) -> tuple[Any, ...]:
    # The DER and the CAs are the connection's own objects (read once per connection):
    # their hashes are computed once too.
    return (subject, tls.get("certctl.client_cert_der"), tls.get("certctl.client_cert_cas"))


def _cached_client_cert(
    auth: _AuthSettings, subject: str, tls: dict[str, Any]
) -> _CachedCertificate | None:
    """The remembered answer for this certificate if still valid; None: read the store."""
    entry = auth.client_certs.get(_client_cert_key(subject, tls))
    if entry is None or entry.version != rbac.credential_generation(auth.services):
        return None
    return entry


def _client_cert_from_store(
    auth: _AuthSettings, subject: str, tls: dict[str, Any], roles: tuple[str, ...], source: str
) -> _CachedCertificate:
    """Read the store for the certificate's answer and remember it (blocking)."""
    services = auth.services
    version = rbac.credential_generation(services)  # before what it vouches for is read
    answer = _client_cert_answer(services, tls, roles)
    principal = None
    if not isinstance(answer, tuple):
        principal = Principal(f"cert:{subject}", roles, answer, "client_certificate", source)
    entry = _CachedCertificate(version or 0, roles, answer, principal)
    if version is not None:
        cache = auth.client_certs
        if len(cache) >= _CACHED_CERTIFICATES_MAX:
            cache.clear()
        cache[_client_cert_key(subject, tls)] = entry
    return entry


def _client_cert_principal(
    auth: _AuthSettings, request: Request, subject: str, entry: _CachedCertificate, source: str
) -> Principal:
    """The principal of an answered client certificate, or its refusal (counted, audited)."""
    principal = entry.principal
    if principal is None:
        reason, message = cast("tuple[str, str]", entry.answer)
        _count_failure(auth, request, reason, f"{message}: {subject}")
        raise Unauthenticated(message)
    return principal if principal.source == source else replace(principal, source=source)


def _client_cert_roles(
    auth: _AuthSettings, request: Request, subject: str, tls: dict[str, Any] | None = None
) -> tuple[str, ...]:
    """The roles ``auth.client-cert-mappings`` give ``subject``; 401 when none does.

    With ``tls`` (in a worker thread), a mapping pinned to an issuing CA counts only for a
    certificate that CA signed (a signature check); without (on the event loop, to refuse
    an unmapped subject before the thread hop), by its subject alone.
    """
    matching = [m for m in auth.client_cert_mappings if m.matches(subject)]
    pinned_elsewhere = False
    if tls is not None and any(m.issuer is not None for m in matching):
        der = tls.get("certctl.client_cert_der")
        cert = x509.load_der_x509_certificate(der) if isinstance(der, bytes) else None
        kept = [m for m in matching if m.issued(cert)]
        pinned_elsewhere = len(kept) < len(matching)
        matching = kept
    roles = tuple(sorted({r for m in matching for r in m.roles}))
    if not roles:
        why = f"unmapped client certificate {subject}"
        if pinned_elsewhere:
            why += " (signed by another CA than its mappings' issuer-fingerprint)"
        _count_failure(auth, request, "invalid", why)
        raise Unauthenticated("client certificate subject is not mapped to any role")
    return roles


def _client_cert_expired(
    auth: _AuthSettings, request: Request, tls: dict[str, Any], subject: str
) -> None:
    """401 for a certificate past its notAfter: on every request, remembered or not."""
    not_after = tls.get("certctl.client_cert_not_after")
    if isinstance(not_after, float):
        clock = auth.services.clock
        now = time.time() if clock is utcnow else clock().timestamp()
        if now >= not_after:
            message = "client certificate expired"
            _count_failure(auth, request, "expired", f"{message}: {subject}")
            raise Unauthenticated(message)


# What _authorization returns for a request with several Authorization headers: which one
# counts would be a guess (a proxy in front may check the last, certctl took the first).
_REPEATED = "repeated Authorization header"


def _authorization(scope: Scope) -> str | None:
    """The Authorization header (names are lower case in ASGI), without a Headers object.

    ``_REPEATED`` (compare with ``is``) when there are several.
    """
    found: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if found is not None:
                return _REPEATED
            found = value
    return None if found is None else found.decode("latin-1")


def _throttled(wait: float) -> TooManyRequests:
    AUTH_FAILURES.labels("ratelimited").inc()
    return TooManyRequests(
        "too many failed authentications from this address; retry later",
        retry_after_s=max(1, math.ceil(wait)),
    )


def authenticate(request: Request, auth: _AuthSettings) -> Principal | None:
    """Bearer API key, else a mapped mTLS client certificate; else 401.

    An address over ``auth.failure-limit`` gets 429 first, before any credential is looked at.
    Synchronous, on the event loop: a cached API key or client certificate (the common
    request) is answered here without the store or a thread hop. None when the key or the
    certificate must be read from or written to the store: then
    :func:`authenticate_from_store` decides, in a worker thread. A refusal's audit row is
    left for ``_certctl_error`` to write (also in a thread).
    """
    scope = request.scope
    client = scope.get("client")  # _source(), inline: this runs on every request
    source = str(client[0]) if client else ""
    if auth.limiter is not None and (wait := auth.limiter.retry_after(source)) > 0:
        raise _throttled(wait)
    services = auth.services
    header = _authorization(scope)
    if header is _REPEATED:
        _count_failure(auth, request, "invalid", _REPEATED)
        raise Unauthenticated("send one Authorization header, not several")
    if header is not None:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            _count_failure(auth, request, "invalid", "malformed Authorization header")
            raise Unauthenticated("malformed Authorization header (expected 'Bearer <key>')")
        try:
            return rbac.cached_api_key(services, token, source)
        except rbac.AuthFailure as exc:
            detail = exc.detail
            if auth.kubernetes is not None and not token.startswith(API_KEY_PREFIX):
                # A ServiceAccount token on a route that takes API keys only: "malformed API
                # key" read as a broken token, not as the wrong route for it.
                detail = _SA_TOKEN_ELSEWHERE
            _count_failure(auth, request, exc.reason, detail)
            raise Unauthenticated(detail) from None
    tls = scope.get("extensions", {}).get("tls")
    subject = tls.get("client_cert_name") if tls else None
    if subject is not None:
        entry = _cached_client_cert(auth, subject, tls)  # only mapped subjects are remembered
        if entry is None:
            _client_cert_roles(auth, request, subject)  # an unmapped one: 401, no thread hop
        _client_cert_expired(auth, request, tls, subject)
        if entry is None:
            return None  # read in a worker thread (authenticate_from_store)
        return _client_cert_principal(auth, request, subject, entry, source)
    error = tls.get("client_cert_error") if tls else None
    if isinstance(error, str):
        # A certificate the handshake verified but certctl cannot read (server.tls).
        message = f"client certificate refused: {error}"
        _count_failure(auth, request, "invalid", message)
        raise Unauthenticated(message)
    _count_failure(auth, request, "missing", "no credentials")
    raise Unauthenticated("authentication required: send 'Authorization: Bearer <api key>'")


async def authenticate_from_store(request: Request, auth: _AuthSettings) -> Principal:
    """``authenticate`` for a request it could not answer from memory, in a worker thread."""
    return await anyio.to_thread.run_sync(_from_store, request, auth, limiter=auth.reads)


def _from_store(request: Request, auth: _AuthSettings) -> Principal:
    client = request.scope.get("client")
    source = str(client[0]) if client else ""
    # Checked again here, not only on the loop before the hop: the guesses of a burst from one
    # address all passed that check before the first of them was counted, so none was refused.
    if auth.limiter is not None and (wait := auth.limiter.retry_after(source)) > 0:
        raise _throttled(wait)
    # authenticate() returned None for a well-formed bearer API key, or for a mapped client
    # certificate that has not expired (and no Authorization header).
    header = _authorization(request.scope)
    if header is None:
        tls = request.scope["extensions"]["tls"]
        subject: str = tls["client_cert_name"]
        roles = _client_cert_roles(auth, request, subject, tls)
        entry = _client_cert_from_store(auth, subject, tls, roles, source)
        return _client_cert_principal(auth, request, subject, entry, source)
    token = header.partition(" ")[2].strip()
    try:
        return rbac.api_key_from_store(auth.services, token, source)
    except rbac.AuthFailure as exc:
        _count_failure(auth, request, exc.reason, exc.detail)
        raise Unauthenticated(exc.detail) from None


# --- Kubernetes ServiceAccount tokens on the metrics routes (auth.kubernetes) -------------

# The only routes where a bearer token that is not a certctl API key is sent to the API
# server (TokenReview + SubjectAccessReview on the route's own path, verb get).
KUBERNETES_TOKEN_PATHS = frozenset({"/api/v1/metrics", "/api/v1/metrics/prometheus"})
# authenticate's 401 for such a token anywhere else.
_SA_TOKEN_ELSEWHERE = (
    "not a certctl API key (cctl_…): ServiceAccount tokens (auth.kubernetes) are accepted on "
    f"the metrics routes only, {' and '.join(sorted(KUBERNETES_TOKEN_PATHS))}"
)


def _kubernetes_token(request: Request) -> str | None:
    scheme, _, token = (_authorization(request.scope) or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or token.startswith(API_KEY_PREFIX):
        return None
    return token


async def _authenticate_kubernetes(
    request: Request, route: ApiRoute, auth: _AuthSettings
) -> Principal:
    """``authenticate``, except that a bearer token that is no API key goes to Kubernetes."""
    authenticator = auth.kubernetes
    token = _kubernetes_token(request) if authenticator is not None else None
    if token is None or authenticator is None:
        principal = authenticate(request, auth)
        return principal if principal is not None else await authenticate_from_store(request, auth)
    if auth.limiter is not None and (wait := auth.limiter.retry_after(_source(request))) > 0:
        raise _throttled(wait)
    try:
        identity = await authenticator.authorize(token, route.path, "get")
    except TokenRejected as exc:
        detail = "Kubernetes TokenReview: not authenticated"
        if exc.review_error:
            detail += f" ({exc.review_error})"
        _count_failure(auth, request, "invalid", detail)
        raise
    except AccessDenied as exc:
        request.scope["certctl.actor"] = f"kubernetes:{exc.username}"
        raise  # counted as forbidden by _certctl_error, as every 403
    # The SubjectAccessReview allowed exactly this route, whose permission is metrics.read.
    return Principal(
        f"kubernetes:{identity.username}",
        (),
        frozenset({route.permission}),
        "kubernetes",
        _source(request),
    )


# --- routing -----------------------------------------------------------------------------


def _endpoint(route: ApiRoute, auth: _AuthSettings) -> Callable[[Request], Awaitable[Response]]:
    kubernetes = route.path in KUBERNETES_TOKEN_PATHS
    from certctl.api.openapi import query_names

    allowed_query = query_names(route.method, route.path)

    async def endpoint(request: Request) -> Response:
        scope = request.scope
        scope["certctl.route"] = route.path
        # From the scope, not request.url / query_params: building those costs more than a
        # cached API-key check. The path is already percent-decoded, the query is not.
        query = scope.get("query_string", b"")
        if "\x00" in scope["path"] or (query and (b"\x00" in query or b"%00" in query)):
            raise InvalidRequest("NUL character in the request path or query")
        principal: Principal | None = None
        if route.permission != PUBLIC:
            if kubernetes:
                principal = await _authenticate_kubernetes(request, route, auth)
            else:
                principal = authenticate(request, auth)
                if principal is None:
                    principal = await authenticate_from_store(request, auth)
            scope["certctl.actor"] = principal.actor_id
            if route.permission != AUTHENTICATED and route.permission not in principal.permissions:
                raise PermissionDenied(f"missing permission {route.permission}")
        if query and allowed_query:
            # A misspelt filter (?stauts=revoked) must not silently return everything. Routes
            # without filters ignore a query: probes and scrapers add their own (?_=1,
            # Prometheus params). After authentication, as a body is checked: a caller
            # without a valid key gets its 401 (audited), one without the permission its 403.
            unknown = set(request.query_params) - allowed_query
            if unknown:
                names = ", ".join(sorted(n[:40] for n in unknown))
                raise InvalidRequest(f"unknown query parameter(s): {names}")
            # Starlette reads the last of a repeated parameter, a proxy or a client library
            # may read the first, and a client may mean both (?status=expiring&status=expired):
            # whichever is taken, some caller silently gets another answer than it asked for.
            given = Counter(name for name, _ in request.query_params.multi_items())
            repeated = sorted(name for name, times in given.items() if times > 1)
            if repeated:
                raise InvalidRequest(f"{', '.join(repeated)} given more than once")
        return await route.handler(request, principal)

    endpoint.__name__ = route.handler.__name__
    return endpoint


class _Router(Router):
    """Starlette's router with a dictionary in front for the paths without parameters.

    Starlette tries each route's regular expression in turn (~0.4 µs each, and
    ``/api/v1/audit`` is route 40). A request whose (path, method) is a route without path
    parameters that no earlier route would have taken goes straight to it; anything else
    (templated paths, 404, 405) takes Starlette's scan as before.

    A path that matches a route once its trailing slashes are dropped gets a 307 to that
    path, as Starlette's own redirect gives, but with a relative ``Location``: Starlette
    builds an absolute one from the request's Host header, which a client or a cache in
    front could be made to follow to another host.
    """

    def __init__(self, routes: list[Route]) -> None:
        super().__init__(routes=routes, redirect_slashes=False)
        self._static: dict[tuple[str, str], Route] = {}
        for index, route in enumerate(routes):
            if route.param_convertors:
                continue
            for method in route.methods or ():
                key = (route.path, method)
                if key not in self._static and not any(
                    earlier.path_regex.match(route.path)
                    and (earlier.methods is None or method in earlier.methods)
                    for earlier in routes[:index]
                ):
                    self._static[key] = route

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self._static.get((scope["path"], scope["method"]))
            if route is not None:
                # What Router.app sets for a full match without path parameters.
                scope.setdefault("router", self)
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = dict(scope.get("path_params", {}))
                await route.handle(scope, receive, send)
                return
            location = self._without_trailing_slash(scope)
            if location is not None:
                await RedirectResponse(location, status_code=307)(scope, receive, send)
                return
        await super().app(scope, receive, send)

    def _without_trailing_slash(self, scope: Scope) -> str | None:
        """Where a path with trailing slashes that no route takes goes, else None."""
        path: str = scope["path"]
        if len(path) < 2 or not path.endswith("/"):
            return None
        stripped = {**scope, "path": path.rstrip("/") or "/"}
        routes = self.routes
        if any(r.matches(scope)[0] != Match.NONE for r in routes) or not any(
            r.matches(stripped)[0] != Match.NONE for r in routes
        ):
            return None
        raw: bytes = scope.get("raw_path") or path.encode()
        if not raw.endswith(b"/"):
            # The slash was sent encoded (/certificates%2F): the Location built from the raw
            # path would be the request's own, and a client following it would loop.
            return None
        # One leading slash: "//host/x" would be a network-path reference to another host.
        location = "/" + raw.decode("latin-1").strip("/")
        query: bytes = scope.get("query_string", b"")
        return f"{location}?{query.decode('latin-1')}" if query else location


# --- middleware --------------------------------------------------------------------------


# On every response: no MIME sniffing of JSON, PEM or problem bodies into something a browser
# would render. On the answers to authenticated requests (minted API keys, server-generated
# private keys, the audit log …): no copy kept by a browser, proxy or client cache either.
_PUBLIC: tuple[tuple[bytes, bytes], ...] = ((b"x-content-type-options", b"nosniff"),)
_PRIVATE = (*_PUBLIC, (b"cache-control", b"no-store"))


class AccessLogAndLimits:
    """Body-size limit, metrics and one access-log line per request (never headers)."""

    def __init__(self, app: ASGIApp, json_logs: bool = False) -> None:
        self.app = app
        self.json_logs = json_logs
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = [0]  # the response status, once started
        # Whether the request has a body the app has not read to its end yet. A response sent
        # before that (401, 404, 413 …) closes the connection: on a kept-alive one, the rest of
        # the body would keep it open for as long as the client trickles it, and a client that
        # sent ``Expect: 100-continue`` and so never sends the body would see its next request
        # read as that body (RFC 9110 10.1.1: say so, or read the body).
        body_pending = False
        too_large = False
        hosts = 0
        for name, value in scope.get("headers", []):
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                if not value.isdigit() or int(value) > MAX_BODY_BYTES:
                    too_large = True
                body_pending = value.strip(b"0") != b""
            elif name == b"transfer-encoding":
                body_pending = True
        received = 0

        async def limited_receive() -> Message:
            nonlocal received, body_pending
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _TooLarge
                if not message.get("more_body", False):
                    body_pending = False
            return message

        async def capture_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                extra = _PRIVATE if "certctl.actor" in scope else _PUBLIC
                if body_pending:
                    extra = (*extra, (b"connection", b"close"))
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        if _head_size(scope) > MAX_HEADER_BYTES:
            await problem_for_status(
                431, f"request line and headers over {MAX_HEADER_BYTES} bytes"
            )(scope, receive, capture_send)
            self._log(scope, 431, started)
            return
        if hosts > 1 or (hosts == 0 and scope.get("http_version") not in _HOSTLESS_VERSIONS):
            # RFC 9112 3.2: an HTTP/1.1 request without Host, or any with two, MUST get 400;
            # a proxy in front may route by one Host and certctl would see another.
            await problem(400, "Bad request", "an HTTP/1.1 request needs exactly one Host header")(
                scope, receive, capture_send
            )
            self._log(scope, 400, started)
            return
        if too_large:
            await problem_for_status(413, f"request body over {MAX_BODY_BYTES} bytes")(
                scope, receive, capture_send
            )
            self._log(scope, 413, started)
            return

        try:
            await self.app(scope, limited_receive, capture_send)
        except _TooLarge:
            status_holder[0] = 413
            await problem_for_status(413, f"request body over {MAX_BODY_BYTES} bytes")(
                scope, receive, capture_send
            )
        except Exception:
            # Starlette sends the 500 (from ``_unexpected``, which logged the traceback once)
            # and then re-raises for the server to log it again. Stop it here: one traceback,
            # and the 500 still gets its access-log line and its count.
            if not status_holder[0]:
                raise
            # A failure after a 200 had started still failed: the client got a cut answer.
            status_holder[0] = 500
        self._log(scope, status_holder[0], started)

    def _log(self, scope: Scope, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("certctl.route", "unmatched")
        method = scope.get("method", "")
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:  # labels() locks and builds tuples: resolve each series once
            children = self._children[key] = (
                HTTP_REQUESTS.labels(method, route, str(status)),
                HTTP_DURATION.labels(route),
            )
        children[0].inc()
        children[1].observe(elapsed)
        client = scope.get("client") or ("-", 0)
        write_line(
            method,
            _logged_path(scope),
            status,
            scope.get("certctl.actor", "-"),
            elapsed,
            client[0],
            json_logs=self.json_logs,
        )


def _logged_path(scope: Scope) -> str:
    return logged_path(scope.get("path", ""))


def _head_size(scope: Scope) -> int:
    """Bytes of the request line and header block as sent (to within separators)."""
    size = len(scope.get("method", "")) + len(scope.get("raw_path", b"")) + 16
    size += len(scope.get("query_string", b""))
    return size + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", []))


class _TooLarge(CertctlError):
    # A CertctlError, so a handler reading an oversized chunked body gets the 413 problem
    # from the exception middleware instead of a 500 from the catch-all handler.
    status = 413
    title = "Payload too large"

    def __init__(self) -> None:
        super().__init__(f"request body over {MAX_BODY_BYTES} bytes")


# Versions whose requests may lack Host: every other (1.1, and "HTTP/2.0" or "HTTP/1.9" text
# request lines, which llhttp parses as HTTP/1) must carry exactly one.
_HOSTLESS_VERSIONS = frozenset({"1.0", "0.9"})

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _certctl_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CertctlError)
    failure = request.scope.pop(_FAILURE_AUDIT, None)
    if failure is not None:
        # A refused authentication's row (see _count_failure), written before the 401 leaves.
        await anyio.to_thread.run_sync(
            _audit_failure, _services(request), failure, limiter=_failure_audits(request)
        )
    actor = request.scope.get("certctl.actor")
    if exc.status == 403:
        # Every refusal of an authenticated caller, wherever it was decided: the route's
        # permission, or a service's check (a role or key above the caller's own permissions,
        # a directory target the policy refuses). Escalation attempts are the ones to alert on.
        AUTH_FAILURES.labels("forbidden").inc()
    if request.method in _MUTATING and actor is not None and exc.status == 403:
        # A mutation refused for lack of permission is a security event: audit it. Bad input
        # (400/404/409/415) is not recorded, so a refused request leaves the store unchanged.
        # Authentication failures were recorded where they happened (no actor yet).
        await in_write_thread(request, _audit_refusal, request, actor, exc)
    return problem_from_error(exc)


def _failure_audits(request: Request) -> anyio.CapacityLimiter:
    limiter: anyio.CapacityLimiter = request.app.state.failure_audits
    return limiter


def _audit_refusal(request: Request, actor: str, exc: CertctlError) -> None:
    services = _services(request)
    outcome = "denied"
    try:
        with services.sessions.begin() as session:
            audit.record(
                session,
                at=services.clock(),
                actor=actor,
                action=f"{request.method} {request.scope.get('certctl.route', request.url.path)}",
                target=_logged_path(request.scope)[:200],
                outcome=outcome,
                source=_source(request),
                # Redacted as the 403's own detail is (api.problems): the refusal may quote
                # a key pasted where its id belongs (DELETE /api/v1/auth/apikeys/<key>).
                detail=redact_keys(exc.detail)[:500],
            )
    except Exception:
        # Never turn a 4xx into a 500 because the audit write failed (e.g. storage full).
        logging.getLogger("certctl.api").warning("could not audit a refused request", exc_info=True)


async def _database_error(request: Request, exc: Exception) -> Response:
    fault = storage_error(exc)
    if fault is None:
        conflict = constraint_conflict(exc)
        if conflict is not None:
            # A concurrent request (another worker or replica) wrote the same row first.
            return problem_from_error(conflict)
        return await _unexpected(request, exc)
    # One line without the statement or its parameters (those may hold key material).
    logging.getLogger("certctl.api").warning(
        "storage fault on %s %s: %s (%s)",
        request.method,
        _logged_path(request.scope),
        fault.detail,
        type(getattr(exc, "orig", exc)).__name__,
    )
    return problem_from_error(fault)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = problem_for_status(exc.status_code, exc.detail or "error")
    if exc.status_code == 405:
        # RFC 9110 15.5.6: a 405 lists the methods the resource has. Starlette's lists those
        # of the first route matching the path, but each of ours has one method.
        allowed = {
            method
            for route in request.app.router.routes
            if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE
            for method in route.methods or ()
        }
        response.headers["Allow"] = ", ".join(sorted(allowed))
    return response


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection before sending its whole body: nothing to answer and
    # nothing wrong with the server. 499 (nginx's "client closed request") in the access log.
    logging.getLogger("certctl.api").info(
        "client disconnected during %s %s", request.method, _logged_path(request.scope)
    )
    return problem(499, "Client closed request", "the client closed the connection")


async def _unexpected(request: Request, exc: Exception) -> Response:
    logging.getLogger("certctl.api").exception(
        "unhandled error on %s %s", request.method, _logged_path(request.scope)
    )
    return problem(500, "Internal error", "internal error; see the server log")


def create_app(
    services: Services,
    *,
    client_cert_mappings: tuple[ClientCertMapping, ...] = (),
    json_logs: bool = False,
    only_paths: frozenset[str] | None = None,
    kubernetes_authenticator: TokenReviewAuthenticator | None = None,
    auth_failure_limiter: AuthFailureLimiter | None = None,
    service_policy: TargetPolicy | None = None,
) -> ASGIApp:
    """Build the ASGI app around ``services``; ``only_paths`` limits it to those routes.

    ``auth_failure_limiter`` (shared by every listener of one server) throttles addresses
    that fail to authenticate too often; None turns the throttle off. ``service_policy``
    says which directory targets and reload commands a service editor may set.
    """
    auth = _AuthSettings(
        services,
        auth_failure_limiter,
        client_cert_mappings,
        kubernetes_authenticator,
    )
    routes = [
        Route(r.path, _endpoint(r, auth), methods=[r.method])
        for r in ROUTES
        if only_paths is None or r.path in only_paths
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            CertctlError: _certctl_error,
            DBAPIError: _database_error,
            PoolTimeout: _database_error,
            HTTPException: _http_error,
            ClientDisconnect: _client_gone,
            Exception: _unexpected,
        },
    )
    app.router = _Router(routes)
    app.state.services = services
    app.state.client_cert_mappings = client_cert_mappings
    app.state.kubernetes_authenticator = kubernetes_authenticator
    app.state.auth_failure_limiter = auth_failure_limiter
    app.state.service_policy = service_policy or TargetPolicy()
    app.state.database_probe = DatabaseProbe(services.engine)
    app.state.ca_reads = anyio.CapacityLimiter(CA_READ_THREADS)
    app.state.crl_reads = anyio.CapacityLimiter(CA_READ_THREADS)
    app.state.writes = write_limiter()
    app.state.lists = list_limiter()
    app.state.keygens = anyio.CapacityLimiter(KEYGEN_THREADS)
    app.state.auth_reads = auth.reads
    app.state.failure_audits = auth.audits
    app.state.ready = True
    return AccessLogAndLimits(app, json_logs=json_logs)
