"""Who a request is: a bearer API key, a mapped mTLS client certificate, a ServiceAccount token.

Refusals are counted, throttled per address (``auth.failure-limit``) and audited.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request

from certctl.api._common import ApiRoute
from certctl.api.access_log import logged_path_of
from certctl.api.throttle import AuthFailureLimiter, client_unit
from certctl.auth.apikeys import PREFIX as API_KEY_PREFIX
from certctl.auth.apikeys import redact_keys
from certctl.auth.kubernetes import AccessDenied, TokenRejected, TokenReviewAuthenticator
from certctl.errors import TooManyRequests, Unauthenticated
from certctl.metrics.registry import AUTH_FAILURES
from certctl.pki import DNPattern
from certctl.services import audit, certificates, key_authentication, revocation
from certctl.services.context import IssueLimit, Principal, Services, utcnow
from certctl.services.roles import role_grants
from certctl.store.db import PoolTimeout, storage_error

if TYPE_CHECKING:
    from starlette.types import Scope

__all__ = [
    "AUTH_READ_THREADS",
    "FAILURE_AUDIT",
    "FAILURE_AUDIT_THREADS",
    "KUBERNETES_TOKEN_PATHS",
    "MISSING_AUDIT_INTERVAL",
    "AuthSettings",
    "ClientCertMapping",
    "audit_failure",
    "authenticate",
    "authenticate_from_store",
    "authenticate_kubernetes",
    "source_of",
]

log = logging.getLogger("certctl.access")


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


def source_of(request: Request) -> str:
    """The client's address, as the access log and the audit log name it ("" if unknown)."""
    client = request.scope.get("client")  # not request.client: no Address object per call
    return str(client[0]) if client else ""


@dataclass(frozen=True)
class _CachedCertificate:
    """What a client certificate may do, as the store said at credential generation ``version``.

    Remembered per app (its ``auth.client-cert-mappings`` are fixed) by what decides the
    answer: the certificate (subject, DER: its issuer, serial and notAfter) and the CAs the
    handshake verified it under (None for a resumed session). Valid while the credential
    generation (``key_authentication.credential_generation``) stays put: database triggers bump
    it at every change of a role, an actor, a certificate's revocation or requester, and an
    issuer's revocation, from any process or replica. Expiry is checked on every request before
    it.
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
class AuthSettings:
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
# (credential_counter.PostgresCounter: ~25 µs CPU, one round trip). A key or a certificate not
# remembered is read in a thread as on SQLite: on the loop, its round trips (and the wait for a
# pooled connection when the pool is busy, up to pool_timeout) stalled every other request of
# the process. The hop costs ~130-290 µs (session 19) on a miss only, which the caches make rare:
# a key's first use, once a minute for its last_used_at (a thread anyway), after a credential
# change.
AUTH_READ_THREADS = 2
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


# Where _count_failure leaves a refusal's audit row (at, reason, detail, target, source,
# credential) for _certctl_error to write, off the event loop, before the 401 is sent.
FAILURE_AUDIT = "certctl.failure_audit"


def _count_failure(
    auth: AuthSettings, request: Request, reason: str, detail: str, credential: str = ""
) -> None:
    """Count a refused authentication and say which audit row it is due (no store here)."""
    AUTH_FAILURES.labels(reason).inc()
    limiter = auth.limiter
    source = source_of(request)
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
    target = f"{request.method} {logged_path_of(request.scope)}"[:200]
    request.scope[FAILURE_AUDIT] = (now, reason, detail, target, source, credential)


def audit_failure(services: Services, row: tuple[datetime, str, str, str, str, str]) -> None:
    """Write a refused authentication's audit row (blocking: a worker thread runs it)."""
    at, reason, detail, target, source, credential = row
    try:
        audit.record_refusal(
            services.sessions,
            at=at,
            actor="anonymous",
            action="auth.failure",
            target=target,
            outcome=reason,
            source=source,
            detail=redact_keys(detail),
            credential=credential,
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


# A client certificate's limits on cert.issue: its mapped roles' (``Principal.issue_limits``),
# and those of the actors that had it issued (``Principal.issue_caps``).
_Limits = tuple[tuple[IssueLimit, ...] | None, tuple[tuple[IssueLimit, ...], ...]]


def _client_cert_answer(
    services: Services, tls: dict[str, Any], roles: tuple[str, ...]
) -> tuple[frozenset[str] | tuple[str, str], tuple[str, ...], _Limits]:
    """What the verified client certificate may do: at most its mapped ``roles``' permissions.

    Returns (reason, message) when it may not authenticate at all; with either, those of
    ``roles`` that are no role (its 403s name them). Blocking (the store): called when
    :func:`_cached_client_cert` cannot answer, in a worker thread. Its reads
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
) -> tuple[frozenset[str] | tuple[str, str], tuple[str, ...], _Limits]:
    # The mapped roles' constraints on cert.issue hold for the certificate as for a key.
    permissions, limits, missing = role_grants(connection, list(roles))
    caps: list[tuple[IssueLimit, ...]] = []
    answer = _client_cert_permissions(services, connection, tls, permissions, caps)
    if caps and limits is None:
        # Unconstrained by its mapping, capped by its requester: () (nothing of its own to
        # check), where None would check nothing at all.
        return answer, missing, ((), tuple(caps))
    return answer, missing, (limits, tuple(caps))


def _client_cert_permissions(
    services: Services,
    connection: Connection,
    tls: dict[str, Any],
    permissions: frozenset[str],
    caps: list[tuple[IssueLimit, ...]],
) -> frozenset[str] | tuple[str, str]:
    """The permissions, or the refusal; ``caps`` gets the requesters' limits on cert.issue."""
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
        held, limits, _ = role_grants(connection, list(creator or ()))
        permissions &= held
        if limits is not None:
            # A constrained requester's certificate issues no more than it: an actor limited
            # to *.team-a had a certificate issued that a mapping gives r-operator.
            caps.append(limits)
    return permissions


def _client_cert_key(subject: str, tls: dict[str, Any]) -> tuple[Any, ...]:
    # The DER and the CAs are the connection's own objects (read once per connection):
    # their hashes are computed once too.
    return (subject, tls.get("certctl.client_cert_der"), tls.get("certctl.client_cert_cas"))


def _cached_client_cert(
    auth: AuthSettings, subject: str, tls: dict[str, Any]
) -> _CachedCertificate | None:
    """The remembered answer for this certificate if still valid; None: read the store."""
    entry = auth.client_certs.get(_client_cert_key(subject, tls))
    if entry is None or entry.version != key_authentication.credential_generation(auth.services):
        return None
    return entry


def _client_cert_from_store(
    auth: AuthSettings, subject: str, tls: dict[str, Any], roles: tuple[str, ...], source: str
) -> _CachedCertificate:
    """Read the store for the certificate's answer and remember it (blocking)."""
    services = auth.services
    # Before what it vouches for is read.
    version = key_authentication.credential_generation(services)
    answer, missing, (limits, caps) = _client_cert_answer(services, tls, roles)
    principal = None
    if not isinstance(answer, tuple):
        principal = Principal(
            f"cert:{subject}",
            roles,
            answer,
            "client_certificate",
            source,
            missing,
            issue_limits=limits,
            issue_caps=caps,
        )
    entry = _CachedCertificate(version or 0, roles, answer, principal)
    if version is not None:
        cache = auth.client_certs
        if len(cache) >= _CACHED_CERTIFICATES_MAX:
            cache.clear()
        cache[_client_cert_key(subject, tls)] = entry
    return entry


def _client_cert_principal(
    auth: AuthSettings, request: Request, subject: str, entry: _CachedCertificate, source: str
) -> Principal:
    """The principal of an answered client certificate, or its refusal (counted, audited)."""
    principal = entry.principal
    if principal is None:
        reason, message = cast("tuple[str, str]", entry.answer)
        _count_failure(auth, request, reason, f"{message}: {subject}")
        raise Unauthenticated(message)
    return principal if principal.source == source else replace(principal, source=source)


def _client_cert_roles(
    auth: AuthSettings, request: Request, subject: str, tls: dict[str, Any] | None = None
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
        # The subject as certctl reads it (RFC 4514, most specific first): a mapping written in
        # openssl's order, or a certificate encoded the other way round, shows at once. The
        # client holds the certificate, so its subject tells it nothing new; which mappings
        # exist is not said.
        raise Unauthenticated(
            f"client certificate subject {_shown_subject(subject)} is not mapped to any role "
            "by auth.client-cert-mappings"
        )
    return roles


_SHOWN_SUBJECT_MAX = 200


def _shown_subject(subject: str) -> str:
    r"""``subject`` for a one-line refusal: a long one (many RDNs) cut, with an ellipsis.

    A character that is not printable (a newline, a terminal escape, a bidi override: the
    certificate holder's text) as RFC 4514 hex escapes of its UTF-8 bytes (``\0A``): raw, it
    went into whatever logs or prints the detail, and escaped so it is still a subject a
    mapping can be written as.
    """
    pieces = [
        c if c.isprintable() else "".join(f"\\{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in subject
    ]
    if sum(map(len, pieces)) <= _SHOWN_SUBJECT_MAX:
        return "".join(pieces)
    kept, length = [], 0
    for piece in pieces:  # whole escapes only: a cut one would read as another character
        if length + len(piece) > _SHOWN_SUBJECT_MAX - 1:
            break
        kept.append(piece)
        length += len(piece)
    return "".join(kept) + "…"


def _client_cert_expired(
    auth: AuthSettings, request: Request, tls: dict[str, Any], subject: str
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


def authenticate(request: Request, auth: AuthSettings) -> Principal | None:
    """Bearer API key, else a mapped mTLS client certificate; else 401.

    An address over ``auth.failure-limit`` gets 429 first, before any credential is looked at.
    Synchronous, on the event loop: a cached API key or client certificate (the common
    request) is answered here without the store or a thread hop. None when the key or the
    certificate must be read from or written to the store: then
    :func:`authenticate_from_store` decides, in a worker thread. A refusal's audit row is
    left for ``_certctl_error`` to write (also in a thread).
    """
    scope = request.scope
    client = scope.get("client")  # source_of(), inline: this runs on every request
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
            return key_authentication.cached_api_key(services, token, source)
        except key_authentication.AuthFailure as exc:
            detail, audited = exc.detail, exc.audited
            if auth.kubernetes is not None and not token.startswith(API_KEY_PREFIX):
                # A ServiceAccount token on a route that takes API keys only: "malformed API
                # key" read as a broken token, not as the wrong route for it.
                detail = audited = _SA_TOKEN_ELSEWHERE
            _count_failure(auth, request, exc.reason, audited, exc.credential)
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


async def authenticate_from_store(request: Request, auth: AuthSettings) -> Principal:
    """``authenticate`` for a request it could not answer from memory, in a worker thread."""
    return await anyio.to_thread.run_sync(_from_store, request, auth, limiter=auth.reads)


def _from_store(request: Request, auth: AuthSettings) -> Principal:
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
        return key_authentication.api_key_from_store(auth.services, token, source)
    except key_authentication.AuthFailure as exc:
        _count_failure(auth, request, exc.reason, exc.audited, exc.credential)
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


async def authenticate_kubernetes(
    request: Request, route: ApiRoute, auth: AuthSettings
) -> Principal:
    """``authenticate``, except that a bearer token that is no API key goes to Kubernetes."""
    authenticator = auth.kubernetes
    token = _kubernetes_token(request) if authenticator is not None else None
    if token is None or authenticator is None:
        principal = authenticate(request, auth)
        return principal if principal is not None else await authenticate_from_store(request, auth)
    if auth.limiter is not None and (wait := auth.limiter.retry_after(source_of(request))) > 0:
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
        source_of(request),
    )
