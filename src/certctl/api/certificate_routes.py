"""Certificates: issue, import, list, get (JSON or PEM), revoke, renew."""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from certctl.api import schemas
from certctl.api._common import ApiRoute, in_list_thread, in_write_thread
from certctl.api._common import caller_of as _caller
from certctl.api._common import created as _created
from certctl.api._common import json_bytes as _json_bytes
from certctl.api._common import json_response as _json
from certctl.api._common import optional_body as _optional_body
from certctl.api._common import page_limit as _limit
from certctl.api._common import query_format as _format
from certctl.api._common import read_body as _body
from certctl.api._common import services_of as _services
from certctl.errors import InvalidRequest
from certctl.pki import parse_duration
from certctl.services import certificate_import, certificates, issuance, issuers
from certctl.services.blocked_keys import blocked_keys_current, refresh_blocked_keys
from certctl.services.context import IssuerRevocation, Principal
from certctl.services.revocation import issuer_revocations

__all__ = ["CERTIFICATE_ROUTES", "KEYGEN_THREADS"]

# RSA issuances with server-side keys at once: each may read its issuer (a pooled connection)
# the first time. Unbounded, they took anyio's default 40 threads, and with them more
# connections than the pool holds (store.db.POOL_CONNECTIONS). Two lose nothing: key
# generation holds the GIL, so more threads only queue for it.
KEYGEN_THREADS = 2


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
        if not blocked_keys_current(services):
            # Read again after a change of them (or of any credential): in a thread, so that
            # the issuance below, on the event loop, answers from memory.
            await anyio.to_thread.run_sync(refresh_blocked_keys, services)
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


async def import_certificates(request: Request, principal: Principal | None) -> Response:
    body = await _body(request, schemas.CertificateImport)
    services, caller = _services(request), _caller(principal)

    def work() -> dict[str, Any]:
        imported, skipped = certificate_import.import_certificates(
            services, caller, body.certificate_pem, skip_existing=body.skip_existing
        )
        revoked = issuer_revocations(services)
        now = services.clock()
        # Read back as a listing shows them: the same view, in the bundle's order.
        rows = {
            row.id: row
            for row in certificates.certificates_by_id(services, [i.id for i in imported])
        }
        items = [
            schemas.certificate_json(
                rows[i.id], certificates.effective_status(rows[i.id], now), revoked.get(i.issuer_id)
            )
            for i in imported
        ]
        return {
            "items": items,
            "skipped": [
                {
                    "certificate": s.number,
                    "id": s.id,
                    "issuer": s.issuer_id,
                    "serial": s.serial,
                    "subject": s.subject,
                }
                for s in skipped
            ],
        }

    # 201 even when every certificate was skipped: the import did what was asked.
    return _created(await in_write_thread(request, work), "/api/v1/certificates")


async def list_certificates(request: Request, principal: Principal | None) -> Response:
    params = request.query_params  # names checked against the route's OpenAPI parameters
    cursor = params.get("cursor")
    if cursor is not None and (
        len(cursor) != 24 or any(c not in "0123456789abcdef" for c in cursor)
    ):
        raise InvalidRequest("cursor: not a cursor returned by this API")
    for name in ("issuer", "status", "expiring_within"):
        # Empty is no filter to guess at: ?expiring_within=$WINDOW with the variable unset
        # listed every certificate as if all were expiring, ?issuer= listed none, ?status=
        # was ": unknown status".
        if params.get(name) == "":
            raise InvalidRequest(f"{name}: empty (leave it out for no filter)")
    within = params.get("expiring_within")
    services = _services(request)
    listing = functools.partial(
        certificates.list_certificates,
        services,
        _caller(principal),
        status=params.get("status"),
        issuer=params.get("issuer"),
        expiring_within=parse_duration(within) if within else None,
        q=params.get("q"),
        limit=_limit(request),
        cursor=cursor,
    )

    def work() -> tuple[list[Any], str | None, dict[str, IssuerRevocation]]:
        rows, next_cursor = listing()
        return rows, next_cursor, issuer_revocations(services)

    rows, next_cursor, revoked = await in_list_thread(request, work)
    now = services.clock()
    items = [
        schemas.certificate_json(r, certificates.effective_status(r, now), revoked.get(r.issuer_id))
        for r in rows
    ]
    return _json({"items": items, "next_cursor": next_cursor})


# The JSON body last sent for each certificate id, with what it was made of: sent again while
# the service hands back the same remembered row (certificates.get_certificate, which reads
# it again after any change), with the same status and issuer revocation. The row is held
# here, so `is` cannot mistake a new row for it. Bounded as that cache is.
_BODIES: dict[str, tuple[Any, str, IssuerRevocation | None, bytes]] = {}
_BODIES_MAX = 1024


def _certificate_body(row: Any, status: str, revoked: IssuerRevocation | None) -> bytes:
    cert_id: str = row.id
    sent = _BODIES.get(cert_id)
    if sent is not None and sent[0] is row and sent[1] == status and sent[2] == revoked:
        return sent[3]
    body = _json_bytes(schemas.certificate_json(row, status, revoked))
    if cert_id not in _BODIES and len(_BODIES) >= _BODIES_MAX:
        with contextlib.suppress(KeyError, RuntimeError, StopIteration):
            del _BODIES[next(iter(_BODIES))]
    _BODIES[cert_id] = (row, status, revoked, body)
    return body


async def get_certificate(request: Request, principal: Principal | None) -> Response:
    services = _services(request)
    # From the scope: most GETs have no query, and parsing one costs more than the answer.
    fmt = request.query_params.get("format") if request.scope.get("query_string") else None
    as_pem = fmt == "pem" or (fmt is None and _accepts_pem(request.headers.get("accept", "")))
    row, revoked = certificates.get_certificate(
        services, _caller(principal), request.path_params["id"], issuer_revoked=not as_pem
    )
    if fmt is not None:  # checked here: a 403 or 404 comes first
        _format(request, ("json", "pem"))
    if as_pem:
        # Key-free: serving a chain needs no CA key (and a key no KEK opens is no 500 here).
        ca = issuers.load_issuer_certificates(services, row.issuer_id)
        from certctl.pki import certs_to_pem
        from certctl.pki.chain_links import is_self_signed

        # What follows a leaf its issuer signs now (CertificateAuthority.chain_below_root):
        # a top that is no root (an intermediate imported before its root) is sent too, or
        # a client trusting that root has no way to it.
        path = (ca.certificate, *ca.chain)
        below_root = path[:-1] if is_self_signed(path[-1]) else path
        pem = row.certificate_pem.encode() + certs_to_pem(below_root)
        return Response(pem, media_type="application/x-pem-file")
    status = certificates.effective_status(row, services.clock())
    return Response(_certificate_body(row, status, revoked), media_type="application/json")


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
            **schemas.certificate_json(
                revocation.certificate, "revoked", revocation.issuer_revoked
            ),
            "also_revoked": list(revocation.also_revoked),
        }
    )


async def renew_certificate(request: Request, principal: Principal | None) -> Response:
    body = await _optional_body(request, schemas.CertificateRenew)
    services = _services(request)
    # Only left out (or null) is the default: "" is refused, as by issue and issuer create.
    validity = parse_duration(body.validity) if body.validity is not None else None
    result = await in_write_thread(
        request,
        lambda: certificates.renew_certificate(
            services, _caller(principal), request.path_params["id"], validity
        ),
    )
    return _created(_issue_json(result, services.clock()), "/api/v1/certificates", result.record.id)


CERTIFICATE_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/api/v1/certificates", "cert.read", list_certificates, "List certificates"),
    ApiRoute(
        "POST",
        "/api/v1/certificates",
        "cert.issue",
        issue_certificate,
        "Issue a certificate",
        schemas.CertificateIssue,
        201,
        action="certificate.issue",
    ),
    ApiRoute(
        "POST",
        "/api/v1/certificates/import",
        "cert.issue",
        import_certificates,
        "Record certificates an issuer held here signed before (a PEM bundle, no key)",
        schemas.CertificateImport,
        201,
        action="certificate.import",
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
        action="certificate.revoke",
    ),
    ApiRoute(
        "POST",
        "/api/v1/certificates/{id}/renew",
        "cert.issue",
        renew_certificate,
        "Renew a certificate",
        schemas.CertificateRenew,
        201,
        action="certificate.issue",
    ),
)
