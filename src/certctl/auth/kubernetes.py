"""ServiceAccount tokens checked by the Kubernetes API server (TokenReview + SubjectAccessReview).

With ``auth.kubernetes.enabled`` the metrics routes accept a bearer token that is not a certctl
API key, as ECK's operator does for its metrics endpoint:

1. ``POST /apis/authentication.k8s.io/v1/tokenreviews`` with the token: who is it?
2. ``POST /apis/authorization.k8s.io/v1/subjectaccessreviews`` for that user, its groups, uid
   and extra, on the non-resource URL of the route with verb ``get``: may it read metrics?

Outcomes: token not authenticated → :class:`TokenRejected` (401); authenticated but not
allowed → :class:`AccessDenied` (403); API server unreachable, failing or refusing certctl's
own calls → :class:`~certctl.kubeapi.KubeApiError` (503). Never a silent success.

With ``auth.kubernetes.audiences`` the TokenReview names them (``spec.audiences``) and the
answer must name one of them in ``status.audiences``, as kube-rbac-proxy checks it: a token
minted for the API server or another service is then refused (401), and so is every token
when the API server's authenticator is not audience-aware (it answers without audiences).

Decisions are cached per (SHA-256 of the token, path, verb): allow for 2 minutes, deny and
reject for 30 seconds; failures to reach the API are not cached. The token itself is never
stored, logged or put into an error message.

At most ``MAX_CONCURRENT_REVIEWS`` reviews run at once per process, each on its own
connection; the others wait for a slot. Unbounded, a burst of junk tokens while the API server
was slow held a connection (a file descriptor beyond the server's reserve) and an API request
each. A review, slot wait and both calls together, has the connection's timeout (5 s by
default) to finish, then 503: within Prometheus's default scrapeTimeout (10 s), so a scrape
gets certctl's answer rather than its own timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx is imported where a request is made: it is slow to import
    import httpx

from certctl.errors import PermissionDenied, Unauthenticated
from certctl.kubeapi import KubeApiError, KubeConnection, response_json, transport_error

__all__ = [
    "ALLOW_TTL_S",
    "DENY_TTL_S",
    "MAX_CONCURRENT_REVIEWS",
    "SUBJECT_ACCESS_REVIEWS",
    "TOKEN_REVIEWS",
    "AccessDenied",
    "KubernetesIdentity",
    "TokenRejected",
    "TokenReviewAuthenticator",
]

log = logging.getLogger("certctl.auth.kubernetes")

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
# The API server's own webhook token cache keeps an authentication 2 minutes
# (--authentication-token-webhook-cache-ttl): a revoked or deleted ServiceAccount stops
# scraping about as soon as it would with kube-rbac-proxy.
ALLOW_TTL_S = 120.0
DENY_TTL_S = 30.0
MAX_CACHE_ENTRIES = 10_000
# Connections to the API server open at once for reviews: well inside the file descriptors
# the server keeps back from client connections (server.run.FD_RESERVE).
MAX_CONCURRENT_REVIEWS = 16
BUSY_LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class KubernetesIdentity:
    """The user a TokenReview returned."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class TokenRejected(Unauthenticated):
    """The API server did not authenticate the token (401).

    ``review_error`` is the TokenReview's ``status.error`` for the audit log, never the token.
    """

    def __init__(self, detail: str, review_error: str = "") -> None:
        super().__init__(detail)
        self.review_error = review_error


class AccessDenied(PermissionDenied):
    """The token's user may not ``get`` the route (403); ``username`` names it."""

    def __init__(self, detail: str, username: str, review_reason: str = "") -> None:
        super().__init__(detail)
        self.username = username
        self.review_reason = review_reason


@dataclass(frozen=True)
class _Decision:
    expires_at: float
    identity: KubernetesIdentity | None = None
    rejected: TokenRejected | None = None
    denied: AccessDenied | None = None


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _identity(status: dict[str, Any]) -> KubernetesIdentity:
    user = status.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("username"), str):
        raise KubeApiError("TokenReview: authenticated status without user.username")
    extra_raw = user.get("extra") or {}
    extra = {
        str(k): tuple(str(v) for v in values)
        for k, values in (extra_raw.items() if isinstance(extra_raw, dict) else ())
        if isinstance(values, list)
    }
    return KubernetesIdentity(
        username=user["username"],
        uid=str(user.get("uid") or ""),
        groups=tuple(str(g) for g in user.get("groups") or ()),
        extra=extra,
    )


class TokenReviewAuthenticator:
    """Checks bearer tokens against the API server, caching the decisions.

    Args:
        connection: where the API server is and how certctl authenticates to it (its own
            ServiceAccount needs ``create`` on ``tokenreviews`` and ``subjectaccessreviews``).
        clock: monotonic seconds, injectable for tests.
        allow_ttl_s: how long an allow decision is reused.
        deny_ttl_s: how long a rejected token or a denied access is reused.
        transport: an httpx transport for tests; None for the network.
        audiences: the audiences a token must be valid for; empty: the API server's own
            (any token the API server accepts).
        max_concurrent_reviews: reviews in progress at once; more wait for a slot.
    """

    def __init__(
        self,
        connection: KubeConnection,
        *,
        audiences: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        allow_ttl_s: float = ALLOW_TTL_S,
        deny_ttl_s: float = DENY_TTL_S,
        transport: httpx.AsyncBaseTransport | None = None,
        max_concurrent_reviews: int = MAX_CONCURRENT_REVIEWS,
    ) -> None:
        self.connection = connection
        self._clock = clock
        self._allow_ttl_s = allow_ttl_s
        self._deny_ttl_s = deny_ttl_s
        self._transport = transport
        self.audiences = tuple(audiences)
        self._cache: dict[tuple[str, str, str], _Decision] = {}
        # One review per token at a time: 50 scrapes with a new token make one, not 50.
        self._inflight: dict[tuple[str, str, str], asyncio.Task[_Decision]] = {}
        self._max_concurrent = max_concurrent_reviews
        # One semaphore per event loop (a semaphore belongs to the loop it first waits in).
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._busy_logged_at: float | None = None

    async def authorize(self, token: str, path: str, verb: str = "get") -> KubernetesIdentity:
        """Return the token's user when it may ``verb`` the non-resource URL ``path``.

        Raises:
            TokenRejected: the API server does not authenticate the token.
            AccessDenied: the user may not ``verb`` ``path``.
            KubeApiError: the API server is unreachable or failing (not cached).
        """
        key = (_token_digest(token), path, verb)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached.expires_at > now:
            return self._replay(cached)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._review(token, path, verb))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settle(key, done, now))
        # Shielded: a caller that goes away does not cancel the review the others wait for.
        decision = await asyncio.shield(task)
        return self._replay(decision)

    def _settle(self, key: tuple[str, str, str], task: asyncio.Task[_Decision], now: float) -> None:
        self._inflight.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return  # outages are not cached; exception() also marks it retrieved
        self._remember(key, task.result(), now)

    @staticmethod
    def _replay(decision: _Decision) -> KubernetesIdentity:
        if decision.rejected is not None:
            raise TokenRejected(decision.rejected.detail, decision.rejected.review_error)
        if decision.denied is not None:
            d = decision.denied
            raise AccessDenied(d.detail, d.username, d.review_reason)
        assert decision.identity is not None
        return decision.identity

    def _remember(self, key: tuple[str, str, str], decision: _Decision, now: float) -> None:
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            # Bound memory against floods of random tokens: drop expired entries, then the
            # oldest half if that was not enough.
            self._cache = {k: v for k, v in self._cache.items() if v.expires_at > now}
            if len(self._cache) >= MAX_CACHE_ENTRIES:
                keep = list(self._cache.items())[MAX_CACHE_ENTRIES // 2 :]
                self._cache = dict(keep)
        self._cache[key] = decision

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self._max_concurrent))
        return self._slots[1]

    async def _review(self, token: str, path: str, verb: str) -> _Decision:
        # One deadline for the whole review: the wait for a slot, the TokenReview and the
        # SubjectAccessReview together. Each had its own (the slot wait, and httpx's timeout
        # per call), so a review could take two or three times the timeout before its 503,
        # longer than Prometheus's default scrapeTimeout (10 s).
        slots = self._semaphore()
        acquired = False
        try:
            async with asyncio.timeout(self.connection.timeout_s):
                await slots.acquire()
                acquired = True
                return await self._ask(token, path, verb)
        except TimeoutError:
            if acquired:
                log.warning(
                    "Kubernetes token review not done within %g s: the API server is slow; "
                    "answering 503",
                    self.connection.timeout_s,
                )
                raise KubeApiError(
                    "the Kubernetes API server did not answer the token review within "
                    f"{self.connection.timeout_s:g} s; try again"
                ) from None
            self._log_busy()
            raise KubeApiError(
                "too many Kubernetes token reviews in progress (the API server is slow to "
                "answer); try again"
            ) from None
        finally:
            if acquired:
                slots.release()

    def _log_busy(self) -> None:
        now = self._clock()
        if self._busy_logged_at is None or now - self._busy_logged_at >= BUSY_LOG_EVERY_S:
            self._busy_logged_at = now
            log.warning(
                "%d Kubernetes token reviews in progress, none done within %g s: the "
                "API server is slow (or a burst of unknown tokens); answering 503 "
                "(this line at most once a minute)",
                self._max_concurrent,
                self.connection.timeout_s,
            )

    async def _ask(self, token: str, path: str, verb: str) -> _Decision:
        import httpx

        now = self._clock()
        try:
            async with self.connection.async_client(self._transport) as client:
                review_spec: dict[str, Any] = {"token": token}
                if self.audiences:
                    review_spec["audiences"] = list(self.audiences)
                review = await self._post(
                    client,
                    TOKEN_REVIEWS,
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "spec": review_spec,
                    },
                    "TokenReview",
                )
                status = review.get("status") or {}
                if not status.get("authenticated"):
                    error = str(status.get("error") or "")[:200]
                    return _Decision(
                        now + self._deny_ttl_s,
                        rejected=TokenRejected(
                            "bearer token is neither a certctl API key nor a token the "
                            "Kubernetes API server authenticates"
                            + (" for this audience" if self.audiences else ""),
                            error,
                        ),
                    )
                mismatch = self._audience_mismatch(status)
                if mismatch:
                    return _Decision(
                        now + self._deny_ttl_s,
                        rejected=TokenRejected(
                            "bearer token is not valid for this audience", mismatch
                        ),
                    )
                identity = _identity(status)
                spec: dict[str, Any] = {
                    "nonResourceAttributes": {"path": path, "verb": verb},
                    "user": identity.username,
                    "groups": list(identity.groups),
                }
                if identity.uid:
                    spec["uid"] = identity.uid
                if identity.extra:
                    spec["extra"] = {k: list(v) for k, v in identity.extra.items()}
                sar = await self._post(
                    client,
                    SUBJECT_ACCESS_REVIEWS,
                    {
                        "apiVersion": "authorization.k8s.io/v1",
                        "kind": "SubjectAccessReview",
                        "spec": spec,
                    },
                    "SubjectAccessReview",
                )
        except httpx.HTTPError as exc:
            # The reason goes to the log only: the 503 below answers an unauthenticated caller.
            log.warning("Kubernetes API unreachable for TokenReview: %s", transport_error(exc))
            raise KubeApiError(
                f"cannot reach the Kubernetes API server to check the token ({type(exc).__name__})"
            ) from None
        sar_status = sar.get("status") or {}
        if sar_status.get("allowed") is True and not sar_status.get("denied"):
            return _Decision(now + self._allow_ttl_s, identity=identity)
        return _Decision(
            now + self._deny_ttl_s,
            denied=AccessDenied(
                f"Kubernetes user {identity.username} may not {verb} {path} "
                "(SubjectAccessReview denied; it needs metrics.read through RBAC "
                "nonResourceURLs)",
                identity.username,
                str(sar_status.get("reason") or "")[:200],
            ),
        )

    def _audience_mismatch(self, status: dict[str, Any]) -> str:
        """Why an authenticated answer does not vouch for our audiences; "" when it does.

        The API server says which of the requested audiences the token is valid for in
        ``status.audiences``. An answer without any means an authenticator that ignored
        ``spec.audiences``: the token is then only known to be valid for the API server.
        """
        if not self.audiences:
            return ""
        returned = status.get("audiences")
        got = [str(a) for a in returned] if isinstance(returned, list) else []
        if set(got) & set(self.audiences):
            return ""
        if not got:
            # Every token fails this way: a deployment problem the operator must see.
            log.warning(
                "TokenReview answered without status.audiences: the API server's "
                "authenticator ignores auth.kubernetes.audiences, so every token is refused"
            )
        return (
            f"TokenReview status.audiences {got[:5]} names none of {list(self.audiences)}"
            + ("" if got else " (the authenticator is not audience-aware)")
        )[:200]

    @staticmethod
    async def _post(
        client: httpx.AsyncClient, url: str, body: dict[str, Any], what: str
    ) -> dict[str, Any]:
        response = await client.post(url, json=body)
        try:
            return response_json(response, what)
        except KubeApiError as exc:
            # 401/403 here mean certctl's own ServiceAccount cannot create reviews: a
            # deployment problem, reported as 503 so no caller is judged on it.
            log.error("%s failed: %s", what, exc.detail)
            raise
