"""OCSP: each issuer's responder (RFC 6960, RFC 5019 profile), answers reused while fresh."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import ocsp
from sqlalchemy import bindparam, case, or_, select

from certctl.errors import Conflict, NotFound
from certctl.metrics.registry import OCSP_RESPONSES
from certctl.pki import format_serial
from certctl.pki.ocsp import OcspQuestion, is_asked_of, read_request, refusal, sign_response
from certctl.services.context import Services
from certctl.services.issuance import CERTIFICATES
from certctl.services.issuers import ISSUERS, load_issuer
from certctl.services.revocation import COMPROMISE, REASONS

__all__ = ["MAX_REQUEST_BYTES", "OcspAnswer", "answer"]

# An OCSPRequest for one certificate is ~80 bytes, ~1-2 KB signed with a certificate or two
# (RFC 6960 4.1.2, which certctl ignores). Anything longer is refused as malformedRequest
# unread: the route is public, and certctl answers one certificate per request anyway.
MAX_REQUEST_BYTES = 8 * 1024

# Built once: an unsuccessful response is its status alone, unsigned.
_MALFORMED = refusal(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
_UNAUTHORIZED = refusal(ocsp.OCSPResponseStatus.UNAUTHORIZED)
_TRY_LATER = refusal(ocsp.OCSPResponseStatus.TRY_LATER)
_INTERNAL_ERROR = refusal(ocsp.OCSPResponseStatus.INTERNAL_ERROR)


@dataclass(frozen=True)
class OcspAnswer:
    """An OCSPResponse (DER) and what it says, as the metric counts it."""

    der: bytes
    status: str  # good | revoked | unknown | malformed | unauthorized | trylater


def answer(services: Services, issuer_id: str, request_der: bytes | None) -> OcspAnswer:
    """The OCSP response of issuer ``issuer_id`` to ``request_der`` (None: one too long).

    Unsuccessful (an OCSP status, still an HTTP 200) for what is no request certctl can
    answer (``malformedRequest``: see ``pki.ocsp.read_request``) and for a question about
    another issuer's certificates, or when this issuer's certificate has expired
    (``unauthorized``, RFC 5019 2.2.3: this responder cannot answer it). Otherwise the
    certificate's status as the store shows it now: ``revoked`` (when and why, as its CRL
    lists it), ``good`` for a certificate of this issuer not revoked, ``unknown`` for a
    serial the issuer never issued (as certctl stores it).

    A signed response is reused for the same question and the same status for half of
    ``ocsp.validity``: a nonce is ignored (RFC 5019 4), so a flood of requests costs a
    store read each, not a signature by the CA's key each. The certificate's row is read
    on every request, its status part of what is reused: a revocation shows at once.

    Not so for ``unknown``: every made-up serial is another CertID, which the response
    names, so a flood of them (the route is public) made every request a signature by the
    CA's key (an RSA-4096 one: ~3 ms of CPU each), and pushed the reused answers out of
    the cache. A process signs at most OCSP_UNKNOWN_SIGNATURES_PER_S of them a second;
    past that, ``tryLater`` (unsigned, RFC 6960 4.2.1) until the budget refills: a client
    asking about a serial certctl never issued learns nothing from either.

    Raises:
        NotFound: OCSP is off (``ocsp.enabled``), or no issuer ``issuer_id``.
    """
    validity = services.ocsp_validity
    if validity is None:
        raise NotFound("no OCSP responder: ocsp.enabled is false")
    try:
        ca = load_issuer(services, issuer_id)  # NotFound for an unknown id, as the CRL route
    except Conflict:
        # Its stored certificate or chain unreadable, or not its key's (logged once, by
        # name, by the load): the issuer signs nothing. An OCSP client reads a response,
        # not the JSON problem the other routes answer: RFC 6960's internalError, unsigned.
        return _counted(OcspAnswer(_INTERNAL_ERROR, "internalerror"))
    question = read_request(request_der) if request_der is not None else None
    if question is None:
        return _counted(OcspAnswer(_MALFORMED, "malformed"))
    now = services.clock()
    if not is_asked_of(ca.certificate, question) or ca.certificate.not_valid_after_utc <= now:
        return _counted(OcspAnswer(_UNAUTHORIZED, "unauthorized"))
    known, revoked_at, reason = _status(services, issuer_id, ca.certificate, question)
    status = "unknown" if not known else "revoked" if revoked_at is not None else "good"
    key: Hashable = (
        issuer_id,
        ca.certificate.serial_number,  # a renewed CA (another certificate) signs anew
        question.algorithm.name,  # hash objects are not hashable: the CertID by its parts
        question.issuer_name_hash,
        question.issuer_key_hash,
        question.serial_number,
        status,
        revoked_at,
        reason,
        validity,
    )
    cached = services.ocsp_responses.get(key)
    if cached is not None:
        der, signed_at = cached
        # RFC 5019 6: fresh responses are reused; from half its validity on, a client
        # caching it (until nextUpdate) would keep it too long past the next one.
        if signed_at <= now < signed_at + validity / 2:
            return _counted(OcspAnswer(der, status))
    if not known and not services.ocsp_unknown_signatures.take(now):
        return _counted(OcspAnswer(_TRY_LATER, "trylater"))
    der = sign_response(
        ca,
        question,
        now=now,
        validity=validity,
        revoked_at=revoked_at,
        reason=REASONS.get(reason or "unspecified"),
        known=known,
    )
    services.ocsp_responses.put(key, der, now)
    return _counted(OcspAnswer(der, status))


def _counted(result: OcspAnswer) -> OcspAnswer:
    OCSP_RESPONSES.labels(result.status).inc()
    return result


def _status(
    services: Services, issuer_id: str, issuer: x509.Certificate, question: OcspQuestion
) -> tuple[bool, datetime | None, str | None]:
    """(issued by this issuer, revoked when, why) of the serial asked about, as stored now.

    A leaf's row by the (issuer, serial) unique index; only for a serial no leaf has, the
    intermediates this issuer signed (few rows): those naming it as their parent, and those
    naming none (an import, or one made before migration 0010, until it is revoked) that
    ``issuer`` signed, which were ``unknown`` (refused by nginx's ``ssl_ocsp on``, checking
    the whole chain) though certctl holds them. The same CA imported under two ids is
    revoked once either is, as the issuer's CRL lists it (``crls``): the first revocation's
    date, and a compromise as its reason once either id was revoked for one (the same
    certificate, so the same key). The first revocation's reason alone said ``superseded``
    where the CRL said ``keyCompromise``.
    """
    parameters = {"issuer_id": issuer_id, "serial": format_serial(question.serial_number)}
    with services.engine.connect() as connection:
        row = connection.execute(_LEAF, parameters).first()
        if row is not None:
            return True, row[0], row[1] if row[0] is not None else None
        rows = [
            (revoked_at, reason)
            for revoked_at, reason, parent_id, pem in connection.execute(_INTERMEDIATE, parameters)
            if parent_id is not None or _signed_by(pem, issuer)
        ]
    if not rows:
        return False, None, None
    revoked = [(at, reason) for at, reason in rows if at is not None]
    if not revoked:
        return True, None, None
    revoked_at, reason = revoked[0]
    if reason not in COMPROMISE:
        reason = next((r for _, r in revoked[1:] if r in COMPROMISE), reason)
    return True, revoked_at, reason


_LEAF = select(CERTIFICATES.c.revoked_at, CERTIFICATES.c.revocation_reason).where(
    CERTIFICATES.c.issuer_id == bindparam("issuer_id"),
    CERTIFICATES.c.serial == bindparam("serial"),
)


def _signed_by(pem: str, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed the stored certificate ``pem`` (one read: it has the serial)."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False  # another CA's (or unreadable: its routes say so)
    return certificate != issuer  # a root signs itself: it is on no CRL, nor answered for


# PEMs are read for a parentless row with the serial asked about only: a made-up serial
# matches none, so a flood of them reads no certificate.
_INTERMEDIATE = (
    select(
        ISSUERS.c.revoked_at,
        ISSUERS.c.revocation_reason,
        ISSUERS.c.parent_id,
        case((ISSUERS.c.parent_id.is_(None), ISSUERS.c.certificate_pem), else_=None),
    )
    .where(
        or_(ISSUERS.c.parent_id == bindparam("issuer_id"), ISSUERS.c.parent_id.is_(None)),
        ISSUERS.c.serial == bindparam("serial"),
    )
    .order_by(ISSUERS.c.revoked_at.is_(None), ISSUERS.c.revoked_at, ISSUERS.c.id)
)
