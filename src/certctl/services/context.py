"""What every use case receives: the store handles and the caller (principal)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from certctl.errors import Conflict, PermissionDenied
from certctl.pki import CertificateAuthority, SubjectAltNames
from certctl.store.groupcommit import GroupCommit
from certctl.store.keywrap import KeyWrapper

__all__ = [
    "OCSP_CACHE_SIZE",
    "OCSP_UNKNOWN_SIGNATURES_PER_S",
    "IssueLimit",
    "IssuerCertificates",
    "IssuerRevocation",
    "LoggedOnce",
    "Principal",
    "ResponseCache",
    "Services",
    "SignedCrl",
    "SigningBudget",
    "connected",
    "strong_etag",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class IssueLimit:
    """What one of a caller's roles holding ``cert.issue`` lets it issue (its constraints).

    None on an axis: any issuer, any name.
    """

    role: str
    issuers: frozenset[str] | None
    names: tuple[str, ...] | None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    actor_id: str
    roles: tuple[str, ...]
    permissions: frozenset[str]
    auth_method: str
    source: str = ""
    # Roles of ``roles`` that are no role (a client certificate mapping's typo): its 403s
    # say so, or the caller saw only "missing permission" and no reason why.
    missing_roles: tuple[str, ...] = ()
    # Which credential of the actor authenticated (``apikey <key id>``), for the audit log: an
    # actor holds several keys, and after a leak the question is what one key did.
    credential: str = ""
    # The constraints of its roles holding cert.issue, one per role, when each has some
    # (``services.issue_constraints``); None when one holds it unconstrained (or none holds
    # it): then nothing is checked, and an administrator's issuance costs nothing more; ()
    # when its roles are unconstrained but ``issue_caps`` limit it.
    issue_limits: tuple[IssueLimit, ...] | None = None
    # More sets of limits, each of which must allow the request too: a client certificate
    # certctl issued is capped by the roles of the actor that had it issued (as its
    # permissions are). Set only beside ``issue_limits``, () when only they limit it: None
    # there means no check at all.
    issue_caps: tuple[tuple[IssueLimit, ...], ...] = ()

    def require(self, permission: str) -> None:
        """Raise PermissionDenied unless the caller holds ``permission``."""
        if permission not in self.permissions:
            raise PermissionDenied(f"missing permission {permission}")

    def explained(self, detail: str) -> str:
        """A refusal's ``detail``, naming the caller's own roles that do not exist.

        The one place this is said: the API applies it to every 403 of this caller, the
        route's check and each service's alike. Only the caller's own roles (``whoami``
        lists them): nothing of other roles.
        """
        missing = self.missing_roles
        if not missing:
            return detail
        names = ", ".join(missing)
        if len(missing) == 1:
            return f"{detail} (role {names} of this client certificate's mapping does not exist)"
        return f"{detail} (roles {names} of this client certificate's mappings do not exist)"


@dataclass(frozen=True)
class SignedCrl:
    """The stored CRL this process served last, parsed once (see ``crls.crl_for``).

    With its DER as stored, and what a response needs derived once: encoding a CRL again
    for each fetch cost 17 ms at 20,000 entries, 85 ms at 100,000.
    """

    number: int
    crl: x509.CertificateRevocationList
    der: bytes

    @functools.cached_property
    def pem(self) -> bytes:
        """The CRL in PEM (``?format=pem``), encoded once."""
        return self.crl.public_bytes(Encoding.PEM)

    @functools.cached_property
    def der_etag(self) -> str:
        """The strong ETag of :attr:`der`."""
        return strong_etag(self.der)

    @functools.cached_property
    def pem_etag(self) -> str:
        """The strong ETag of :attr:`pem`."""
        return strong_etag(self.pem)


def strong_etag(body: bytes) -> str:
    """A strong ETag naming these exact bytes (RFC 9110 8.8.3): their SHA-256, quoted."""
    return f'"{hashlib.sha256(body).hexdigest()}"'


@dataclass(frozen=True)
class IssuerRevocation:
    """An issuer's revocation as stored: its certificate is on its parent's CRL.

    ``by``: the issuer revoked, this one or a CA above it (whose revocation leaves nothing
    below it that verifies). ``same_certificate``: ``by`` is another issuer holding this
    one's very certificate (the same CA imported twice), which its parent's CRL lists.
    ``same_key``: ``by`` holds another certificate of this one's key (re-issued or
    cross-signed) and was revoked for a compromise: the key signs nothing more.
    """

    revoked_at: datetime
    reason: str
    by: str
    same_certificate: bool = False
    same_key: bool = False


@dataclass(frozen=True)
class IssuerCertificates:
    """An issuer's certificate and the CAs above it (nearest first), without its key."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


class LoggedOnce:
    """What a process said in its log already, so that it says it once.

    A condition every request meets again (a public CRL fetched by every client, a row
    nothing caches) is one line in the log, not one per request. A key names the condition
    (its kind first, then what it is about: an issuer, a digest of what is stored). Held by
    :class:`Services`, so it is per process, as the log is.
    """

    def __init__(self) -> None:
        self._said: set[Hashable] = set()
        self._lock = threading.Lock()

    def first(self, key: Hashable) -> bool:
        """Whether ``key`` is new (say it now); False until it is :meth:`forget`-ten."""
        with self._lock:
            if key in self._said:
                return False
            self._said.add(key)
            return True

    def __contains__(self, key: Hashable) -> bool:
        return key in self._said

    def forget(self, key: Hashable) -> bool:
        """The condition ended (said again when it comes back); whether ``key`` was said."""
        if key not in self._said:  # every CRL fetch asks: no lock for the usual answer
            return False
        with self._lock:
            if key not in self._said:
                return False
            self._said.discard(key)
            return True

    def refuse(self, key: Hashable, message: str, logged: str, refused: str) -> NoReturn:
        """A 409 ``message; refused``, logged as the ERROR ``message; logged`` once per ``key``.

        For what is stored that certctl cannot use (changed in the database outside it):
        each request refused reads it again, and the log names it once.

        Raises:
            Conflict: always.
        """
        if self.first(key):
            _log.error("%s; %s", message, logged)
        raise Conflict(f"{message}; {refused}")


_log = logging.getLogger("certctl.services")


# Signed OCSP responses a process keeps (see ResponseCache): one per certificate asked about
# recently, ~0.5-1 KB each, so at most ~10 MB whatever a flood of distinct serials asks.
OCSP_CACHE_SIZE = 10_000
# Fresh OCSP ``unknown`` answers a process signs per second at most (see ``services.ocsp``):
# a serial the store lacks is one anyone can make up, each a CertID of its own to sign for.
OCSP_UNKNOWN_SIGNATURES_PER_S = 20


class ResponseCache:
    """A bounded map (least recently used dropped first) of signed responses and their time.

    Thread-safe: the OCSP route's worker threads share one per process.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, tuple[bytes, datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[bytes, datetime] | None:
        """The response stored under ``key`` and when it was signed; None if none is."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: Hashable, response: bytes, signed_at: datetime) -> None:
        """Store ``response`` under ``key``, dropping the least recently used past the size."""
        with self._lock:
            self._items[key] = (response, signed_at)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class SigningBudget:
    """At most ``rate`` signatures a second, in bursts of up to ``rate`` (a token bucket).

    Thread-safe: the OCSP route's worker threads share one per process. Judged by the
    services clock; one stepped back refills nothing.
    """

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._tokens = float(rate)
        self._at: datetime | None = None
        self._lock = threading.Lock()

    def take(self, now: datetime) -> bool:
        """Whether one more signature fits at ``now`` (then counted against the budget)."""
        with self._lock:
            if self._at is not None:
                elapsed = max(0.0, (now - self._at).total_seconds())
                self._tokens = min(float(self._rate), self._tokens + elapsed * self._rate)
            self._at = now if self._at is None else max(self._at, now)
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


@dataclass
class Services:
    """Store handles shared by the use cases; issuer keys are loaded once and cached."""

    engine: Engine
    sessions: sessionmaker[Session]
    wrapper: KeyWrapper
    clock: Callable[[], datetime] = utcnow
    # The ``public-url`` setting, checked: leaves then name their issuer's CRL and its
    # certificate (authorityInfoAccess caIssuers) under it.
    public_url: str | None = None
    # The names of certctl's own (self-signed) server certificate, which its clients verify
    # against the internal CA's root: a server certificate for one of them under that root
    # is issued to a caller holding every permission only (``issuance``). None: no check.
    server_names: SubjectAltNames | None = None
    # ``ocsp.validity`` when ``ocsp.enabled``: the OCSP routes answer, and leaves issued
    # with ``public_url`` name them in their authorityInfoAccess. None: OCSP is off (404).
    ocsp_validity: timedelta | None = None
    # tls.mode custom: the served tls.crt (leaf first, then the chain it sends, then the CAs
    # above them that certctl's issuers hold), whose names ``server_names`` then are, set at
    # each (re)load. A server certificate for one of them under the root that certificate
    # chains to is guarded as above. None: the internal CA's root is the one clients trust
    # (self-signed mode).
    server_chain: tuple[x509.Certificate, ...] | None = None
    _issuers: dict[str, CertificateAuthority] = field(default_factory=dict)
    # Issuer id -> (revoked_at, reason) of the cached issuers that are revoked: loaded and
    # dropped with the CA, so a revocation reaches other processes as a renewal does.
    _revoked: dict[str, IssuerRevocation] = field(default_factory=dict)
    # Issuer id -> its certificates, read without the key for the public CA routes (only
    # ids that exist: an unknown one is never remembered). Dropped with ``_issuers``' entry.
    _certificates: dict[str, IssuerCertificates] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Counts forget_issuer calls: a load that read the store before one must not cache what
    # it read (a revocation committed in between would be undone here until the refresh).
    _forgotten: int = 0
    # Issuer id -> the credential generation (``key_authentication.credential_generation``,
    # which every issuer inserted, deleted or given another certificate bumps) at which its
    # cached certificates were last found to be the stored ones
    # (``issuers.current_certificates``).
    certificates_checked: dict[str, int] = field(default_factory=dict)
    # Issuer id -> the last stored CRL served here, parsed, while the store holds no newer
    # one; replaced whole, so no lock is needed.
    signed_crls: dict[str, SignedCrl] = field(default_factory=dict)
    # Issuer id -> (CRL number, when by ``clock``, ``revocations_here`` then): the store last
    # showed the CRL of that number to be the issuer's newest at that time, before this
    # process's revocations counted then. What ``crls.served_crl`` may serve while the store
    # fails, for a while (see there).
    crl_confirmed: dict[str, tuple[int, datetime, int]] = field(default_factory=dict)
    # Revocations this process committed (or tried to): a CRL confirmed before one may leave
    # it off, as CRLs are signed at a fetch, not at a revocation (``revoking``).
    revocations_here: int = 0
    # Issuer id -> when (by ``clock``) this process last signed a CRL for it: it signs at most
    # one per CRL_REUSE while the list stays the same, however far other clocks are.
    crl_signed_here: dict[str, datetime] = field(default_factory=dict)
    # Issuer id -> the lock its CRL is signed under in this process (``crl_signer``).
    _crl_signers: dict[str, threading.Lock] = field(default_factory=dict)
    # The warnings and errors said once in this process (see LoggedOnce).
    logged: LoggedOnce = field(default_factory=LoggedOnce)
    # The OCSP responses signed here, reused while fresh (see ``services.ocsp``).
    ocsp_responses: ResponseCache = field(default_factory=lambda: ResponseCache(OCSP_CACHE_SIZE))
    # The fresh OCSP ``unknown`` answers signed here (see ``services.ocsp``).
    ocsp_unknown_signatures: SigningBudget = field(
        default_factory=lambda: SigningBudget(OCSP_UNKNOWN_SIGNATURES_PER_S)
    )
    commits: GroupCommit = field(init=False)

    def __post_init__(self) -> None:
        # Issuance rows of concurrent API requests share commits (see store.groupcommit).
        self.commits = GroupCommit(self.engine)

    def crl_signer(self, issuer_id: str) -> threading.Lock:
        """The lock one thread of this process signs ``issuer_id``'s CRL under at a time.

        Made for issuers that exist only (the CRL route loads the issuer first).
        """
        with self._lock:
            return self._crl_signers.setdefault(issuer_id, threading.Lock())

    def crl_urls(self, issuer_id: str) -> tuple[str, ...]:
        """Where clients fetch ``issuer_id``'s CRL, for its leaves' cRLDistributionPoints.

        Empty without ``public-url``: certificates then carry no such extension.
        """
        if self.public_url is None:
            return ()
        from certctl.pki.distribution import crl_url_for

        return (crl_url_for(self.public_url, issuer_id),)

    def ca_issuers_urls(self, issuer_id: str) -> tuple[str, ...]:
        """Where clients fetch ``issuer_id``'s certificate (DER), for its leaves' caIssuers.

        Empty without ``public-url``: certificates then carry no authorityInfoAccess.
        """
        if self.public_url is None:
            return ()
        from certctl.pki.distribution import ca_issuers_url_for

        return (ca_issuers_url_for(self.public_url, issuer_id),)

    def ocsp_urls(self, issuer_id: str) -> tuple[str, ...]:
        """Where clients ask ``issuer_id``'s OCSP responder, for its leaves' AIA id-ad-ocsp.

        Empty without ``public_url`` or with OCSP off: certificates then name none.
        """
        if self.public_url is None or self.ocsp_validity is None:
            return ()
        from certctl.pki.distribution import ocsp_url_for

        return (ocsp_url_for(self.public_url, issuer_id),)

    def cached_issuer(self, issuer_id: str) -> CertificateAuthority | None:
        """The loaded CA for ``issuer_id`` if already cached."""
        return self._issuers.get(issuer_id)

    def cached_issuer_entry(
        self, issuer_id: str
    ) -> tuple[CertificateAuthority, IssuerRevocation | None] | None:
        """The cached CA for ``issuer_id`` and its revocation, read together; None if absent.

        Together: a drop between two separate reads left a CA without its revocation.
        """
        with self._lock:
            ca = self._issuers.get(issuer_id)
            return None if ca is None else (ca, self._revoked.get(issuer_id))

    def cached_issuers(self) -> dict[str, CertificateAuthority]:
        """A copy of the cache: issuer id -> loaded CA."""
        with self._lock:
            return dict(self._issuers)

    def issuer_revocation(self, issuer_id: str) -> IssuerRevocation | None:
        """When and why cached issuer ``issuer_id`` was revoked; None if not (or not cached)."""
        return self._revoked.get(issuer_id)

    @contextlib.contextmanager
    def revoking(self) -> Iterator[None]:
        """Around a revocation's transaction: counted once it is over, committed or not.

        Or not: a commit whose answer was lost may have landed. Counted after it: a fetch
        that read the store before the commit confirmed a CRL leaving the revocation off,
        and took the count before this, so that CRL is no longer served while the store
        fails (``crls.served_crl``).
        """
        try:
            yield
        finally:
            with self._lock:
                self.revocations_here += 1

    def forget_issuer(self, issuer_id: str) -> None:
        """Drop a cached CA and its cached certificates (renewed, revoked or deleted)."""
        with self._lock:
            self._forgotten += 1
            self._issuers.pop(issuer_id, None)
            self._revoked.pop(issuer_id, None)
            self._certificates.pop(issuer_id, None)

    def issuer_cache_version(self) -> int:
        """Taken before reading an issuer from the store, for ``cache_issuer``."""
        return self._forgotten

    def cache_issuer(
        self,
        issuer_id: str,
        ca: CertificateAuthority,
        revoked: IssuerRevocation | None = None,
        version: int | None = None,
    ) -> None:
        """Remember a loaded CA (its key is unwrapped once per process), and its revocation.

        ``version``: ``issuer_cache_version()`` before the store was read; when an issuer was
        forgotten since, what was read may be stale and is not kept (the next use reloads).
        """
        with self._lock:
            if version is not None and version != self._forgotten:
                return
            self._issuers[issuer_id] = ca
            if revoked is None:
                self._revoked.pop(issuer_id, None)
            else:
                self._revoked[issuer_id] = revoked
            self._certificates.pop(issuer_id, None)  # the CA's own are as new or newer

    def cached_certificates(self, issuer_id: str) -> IssuerCertificates | None:
        """The issuer's certificates if this process holds them (its CA, or them alone)."""
        ca = self._issuers.get(issuer_id)
        if ca is not None:
            return IssuerCertificates(ca.certificate, ca.chain)
        return self._certificates.get(issuer_id)

    def cached_certificates_only(self) -> dict[str, IssuerCertificates]:
        """A copy of the certificates cached without their CA: issuer id -> certificates."""
        with self._lock:
            return dict(self._certificates)

    def cache_certificates(
        self, issuer_id: str, certificates: IssuerCertificates, version: int | None = None
    ) -> None:
        """Remember an issuer's certificates, read without its key (``version``: as above)."""
        with self._lock:
            if version is not None and version != self._forgotten:
                return  # renewed or deleted while they were read: the next request rereads
            if issuer_id not in self._issuers:
                self._certificates[issuer_id] = certificates


def connected(
    services: Services, connection: Connection | None
) -> contextlib.AbstractContextManager[Connection]:
    """``connection`` itself (left open), else a pooled connection of its own (closed after)."""
    if connection is not None:
        return contextlib.nullcontext(connection)
    return services.engine.connect()
