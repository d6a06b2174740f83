"""Issuers: create, import, revoke, and their public CA certificates and CRLs."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from cryptography import x509
from starlette.requests import Request
from starlette.responses import Response

from certctl.api import schemas
from certctl.api._common import PUBLIC, ApiRoute, in_write_thread, listed
from certctl.api._common import caller_of as _caller
from certctl.api._common import created as _created
from certctl.api._common import json_response as _json
from certctl.api._common import not_found as _not_found
from certctl.api._common import optional_body as _optional_body
from certctl.api._common import query_format as _format
from certctl.api._common import read_body as _body
from certctl.api._common import services_of as _services
from certctl.errors import InvalidRequest
from certctl.pki import parse_duration
from certctl.services import crls, issuer_revocation, issuers, ocsp, revocation
from certctl.services.context import (
    IssuerCertificates,
    IssuerRevocation,
    Principal,
    strong_etag,
)

if TYPE_CHECKING:
    from certctl.store.models import Issuer

__all__ = ["CA_READ_THREADS", "ISSUER_ROUTES"]

# Worker threads for the public CA routes' store reads (an issuer not cached yet, an unknown
# id): a few overlap PostgreSQL round trips; more only contend for the GIL with the event
# loop, and anonymous requests must not take the default pool's 40 from issuance and CRLs.
CA_READ_THREADS = 4  # the CRL route has as many of its own


async def list_issuers(request: Request, principal: Principal | None) -> Response:
    from certctl.store.models import Issuer

    rows, revoked = await listed(
        request,
        lambda s: (
            s.query(Issuer).order_by(Issuer.id).all(),
            revocation.revocations_by_issuer(s.connection()),
        ),
    )
    now = _services(request).clock()
    items = [schemas.issuer_json(r, now, revoked.get(r.id)) for r in rows]
    return _json({"items": items, "next_cursor": None})


async def get_issuer(request: Request, principal: Principal | None) -> Response:
    from certctl.store.models import Issuer

    services = _services(request)
    with services.sessions() as session:
        row = session.get(Issuer, request.path_params["id"])
        if row is None:
            raise _not_found("issuer", request.path_params["id"])
        revoked = revocation.revocations_by_issuer(session.connection()).get(row.id)
    return _json(schemas.issuer_json(row, services.clock(), revoked))


# IssuerCreate fields that make a new CA and mean nothing to an import.
_CREATE_ONLY = ("common_name", "subject", "key_type", "validity", "parent", "path_length")


async def create_issuer(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.IssuerCreate)
    services, caller = _services(request), _caller(principal)
    warnings: tuple[str, ...] = ()
    completed: tuple[str, ...] = ()  # issuers imported before this CA that it now chains
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
        row, warnings, completed = await in_write_thread(
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
    # No CA above a new one is revoked: one below a revoked CA is refused (409).
    return _created(
        {
            **schemas.issuer_json(row, services.clock(), None),
            "warnings": list(warnings),
            "chains_completed": list(completed),
        },
        "/api/v1/issuers",
        row.id,
    )


async def revoke_issuer(request: Request, principal: Principal | None) -> Response:
    body = await _optional_body(request, schemas.IssuerRevoke)
    services = _services(request)

    def work() -> tuple[Issuer, IssuerRevocation | None]:
        row = issuer_revocation.revoke_issuer(
            services, _caller(principal), request.path_params["id"], body.reason
        )
        return row, revocation.issuer_revocations(services).get(row.id)

    row, revoked = await in_write_thread(request, work)
    return _json(schemas.issuer_json(row, services.clock(), revoked))


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

    Held by this process and no issuer changed in the store since (the credential
    generation, see ``issuers.checked_certificates``): no store read, no thread. Otherwise
    (its first request here, an issuer changed anywhere, or an unknown id) the read runs in
    a worker thread: these routes answer anyone, and every
    TLS client following a caIssuers URI may ask at once. At most :data:`CA_READ_THREADS`
    of them, so a flood of unknown ids leaves the default pool to issuance and CRLs.
    """
    services, issuer_id = _services(request), request.path_params["id"]
    cached = issuers.checked_certificates(services, issuer_id)
    if cached is not None:
        return cached
    return await anyio.to_thread.run_sync(
        lambda: issuers.current_certificates(services, issuer_id),
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
    max_age = crls.ca_max_age_s(certificate, _services(request).clock())
    return _revalidated(request, body, media_type, max_age, strong_etag(body))


def _revalidated(
    request: Request, body: bytes, media_type: str, max_age: int, etag: str
) -> Response:
    """``body`` with ``max_age`` and ``etag``, or a 304 to a client holding that ETag."""
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
    fmt = _format(request, ("der", "pem"))  # before a CRL number is spent
    services, issuer_id = _services(request), request.path_params["id"]
    # A write (the CRL number), which may wait for SQLite's write lock: off the event loop,
    # in a few threads of its own: anyone may ask (every client checking revocation), and a
    # flood must not take the default pool's 40 threads from issuance.
    served = await anyio.to_thread.run_sync(
        lambda: crls.served_crl(services, issuer_id), limiter=request.app.state.crl_reads
    )
    # Explicit freshness, as long as this server reuses the CRL: without it a CDN or proxy
    # in front keeps the public CRL for its own default (CloudFront: 24 h), and a revocation
    # stays unseen behind it for that long.
    max_age = crls.crl_max_age_s(served.crl, services.clock())
    # A strong ETag, as ca.pem's: every worker and replica serves the stored CRL's very bytes,
    # so a client or CDN revalidating after max-age gets a 304 until a new CRL is signed
    # (a revocation, or every CRL_REUSE), instead of the whole list again. Each CRL's own.
    if fmt == "pem":
        return _revalidated(request, served.pem, "application/x-pem-file", max_age, served.pem_etag)
    return _revalidated(request, served.der, "application/pkix-crl", max_age, served.der_etag)


async def issuer_ocsp_post(request: Request, principal: Principal | None) -> Response:
    _ocsp_enabled(request)  # off: a 404 before the body is read
    der: bytes | None = b""
    parts = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > ocsp.MAX_REQUEST_BYTES:
            # malformedRequest without reading the rest: the connection is closed after
            # (the body is still pending, see app.AccessLogAndLimits).
            der = None
            break
        parts.append(chunk)
    if der is not None:
        der = b"".join(parts)
    return await _ocsp_response(request, der)


async def issuer_ocsp_get(request: Request, principal: Principal | None) -> Response:
    _ocsp_enabled(request)
    # RFC 6960 A.1: the URL-encoded base64 of the DER request, taken whole (it may hold
    # '/'); the path arrives percent-decoded. An unencoded '+' stays a '+' in a path.
    encoded: str = request.path_params["request"]
    der: bytes | None = None
    if len(encoded) <= ocsp.MAX_REQUEST_BYTES * 4 // 3 + 4:
        try:
            der = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):  # ValueError: not ASCII
            der = b""  # not base64: malformedRequest
    return await _ocsp_response(request, der)


def _ocsp_enabled(request: Request) -> None:
    if _services(request).ocsp_validity is None:
        # As an unknown route: nothing is served under it.
        raise _not_found("OCSP responder of issuer", request.path_params["id"])


async def _ocsp_response(request: Request, der: bytes | None) -> Response:
    services, issuer_id = _services(request), request.path_params["id"]
    # A store read and maybe a signature (an RSA-4096 CA: ~10 ms): off the event loop, in a
    # few threads of its own, as the CRL route's, for anyone may ask.
    answered = await anyio.to_thread.run_sync(
        lambda: ocsp.answer(services, issuer_id, der), limiter=request.app.state.ocsp_reads
    )
    # no-cache: a proxy or CDN in front may keep a response but asks again before reusing
    # it, so a revocation shows at once through it too; certctl reuses its own signatures.
    return Response(
        answered.der,
        media_type="application/ocsp-response",
        headers={"Cache-Control": "no-cache"},
    )


ISSUER_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/api/v1/issuers", "issuer.read", list_issuers, "List issuers"),
    ApiRoute(
        "POST",
        "/api/v1/issuers",
        "issuer.create",
        create_issuer,
        "Create or import an issuer",
        schemas.IssuerCreate,
        201,
        action="issuer.create",
    ),
    ApiRoute("GET", "/api/v1/issuers/{id}", "issuer.read", get_issuer, "Get an issuer"),
    ApiRoute(
        "POST",
        "/api/v1/issuers/{id}/revoke",
        "issuer.revoke",
        revoke_issuer,
        "Revoke an intermediate issuer (listed on its parent's CRL; it issues no more)",
        schemas.IssuerRevoke,
        action="issuer.revoke",
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
    ApiRoute(
        "POST",
        "/api/v1/issuers/{id}/ocsp",
        PUBLIC,
        issuer_ocsp_post,
        "Issuer OCSP responder (RFC 6960; body application/ocsp-request; ocsp.enabled)",
    ),
    ApiRoute(
        "GET",
        "/api/v1/issuers/{id}/ocsp/{request}",
        PUBLIC,
        issuer_ocsp_get,
        "Issuer OCSP responder, GET form (RFC 6960 A.1: URL-encoded base64 request)",
        rest_of_path="request",  # base64 holds '/'
    ),
)
