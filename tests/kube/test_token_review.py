"""ServiceAccount tokens on the metrics routes: TokenReview + SubjectAccessReview.

The authenticator alone (exact requests, caching with an injected clock), then end to end
through the ASGI app (401 / 403 / 503, audit, metrics) with a bootstrapped SQLite store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from starlette.testclient import TestClient

from certctl.api.app import create_app
from certctl.api.metrics_routes import METRICS_PATHS
from certctl.auth.kubernetes import (
    MAX_CONCURRENT_REVIEWS,
    SUBJECT_ACCESS_REVIEWS,
    TOKEN_REVIEWS,
    AccessDenied,
    KubernetesIdentity,
    TokenRejected,
    TokenReviewAuthenticator,
)
from certctl.kubeapi import KubeApiError, KubeConnection
from certctl.metrics.registry import REGISTRY
from certctl.server.bootstrap import Bootstrapped, bootstrap
from certctl.server.config import ServerConfig
from certctl.store.models import AuditEvent
from tests.kube.conftest import CERTCTL_SA_TOKEN, INSTALLATION, FakeClock
from tests.kube.fake_apiserver import FakeApiServer, KubeUser

PROM = "/api/v1/metrics/prometheus"
PROM_TOKEN = "eyJhbGciOiJSUzI1NiJ9.prometheus-serviceaccount-token.sig"
OTHER_TOKEN = "eyJhbGciOiJSUzI1NiJ9.some-other-workload-token.sig"
PROM_USER = KubeUser(
    username="system:serviceaccount:monitoring:prometheus-k8s",
    uid="6d3f1c8e-0c56-4b8c-9f5e-2f1a7b1e9a10",
    groups=[
        "system:serviceaccounts",
        "system:serviceaccounts:monitoring",
        "system:authenticated",
    ],
    extra={
        "authentication.kubernetes.io/pod-name": ["prometheus-k8s-0"],
        "authentication.kubernetes.io/pod-uid": ["0b8a8a52-3a1e-4c4e-8e0e-1d2f3a4b5c6d"],
    },
)
OTHER_USER = KubeUser(username="system:serviceaccount:default:app", groups=["system:authenticated"])


@pytest.fixture
def kube(apiserver: FakeApiServer) -> FakeApiServer:
    """Prometheus may read the metrics URL; another workload's token is valid but not allowed."""
    apiserver.users[PROM_TOKEN] = PROM_USER
    apiserver.users[OTHER_TOKEN] = OTHER_USER
    apiserver.allowed.add((PROM_USER.username, PROM, "get"))
    return apiserver


@pytest.fixture
def authenticator(connection: KubeConnection, clock: FakeClock) -> TokenReviewAuthenticator:
    return TokenReviewAuthenticator(connection, clock=clock)


def authorize(auth: TokenReviewAuthenticator, token: str, path: str = PROM) -> KubernetesIdentity:
    return asyncio.run(auth.authorize(token, path))


# --- the authenticator -------------------------------------------------------------------


def test_exact_review_requests(
    kube: FakeApiServer, authenticator: TokenReviewAuthenticator
) -> None:
    identity = authorize(authenticator, PROM_TOKEN)
    assert identity == KubernetesIdentity(
        username=PROM_USER.username,
        uid=PROM_USER.uid,
        groups=tuple(PROM_USER.groups),
        extra={k: tuple(v) for k, v in PROM_USER.extra.items()},
    )
    assert kube.paths() == [("POST", TOKEN_REVIEWS), ("POST", SUBJECT_ACCESS_REVIEWS)]
    review, access = kube.requests
    # certctl authenticates to the API server with its own ServiceAccount token...
    assert (review.bearer, access.bearer) == (CERTCTL_SA_TOKEN, CERTCTL_SA_TOKEN)
    # ...and sends the caller's token only inside the TokenReview.
    assert review.body == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": PROM_TOKEN},
    }
    assert access.body == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "nonResourceAttributes": {"path": PROM, "verb": "get"},
            "user": PROM_USER.username,
            "groups": PROM_USER.groups,
            "uid": PROM_USER.uid,
            "extra": PROM_USER.extra,
        },
    }


def test_allow_is_cached_for_two_minutes(
    kube: FakeApiServer, authenticator: TokenReviewAuthenticator, clock: FakeClock
) -> None:
    authorize(authenticator, PROM_TOKEN)
    kube.clear()
    clock.advance(119)
    assert authorize(authenticator, PROM_TOKEN).username == PROM_USER.username
    assert kube.requests == []
    clock.advance(2)  # 121 s after the first review
    authorize(authenticator, PROM_TOKEN)
    assert kube.paths() == [("POST", TOKEN_REVIEWS), ("POST", SUBJECT_ACCESS_REVIEWS)]


def test_concurrent_requests_with_one_new_token_share_one_review(
    kube: FakeApiServer, authenticator: TokenReviewAuthenticator
) -> None:
    async def fifty() -> list[Any]:
        calls = [authenticator.authorize(t, PROM) for t in [PROM_TOKEN] * 49 + [OTHER_TOKEN]]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(fifty())
    assert [r.username for r in results[:49]] == [PROM_USER.username] * 49
    assert isinstance(results[49], AccessDenied)  # the other token: its own review
    assert sorted(kube.paths()) == sorted(
        [("POST", TOKEN_REVIEWS), ("POST", SUBJECT_ACCESS_REVIEWS)] * 2
    )
    assert authenticator._inflight == {}


def test_a_burst_of_new_tokens_on_a_slow_api_server_is_bounded(
    kube: FakeApiServer, authenticator: TokenReviewAuthenticator
) -> None:
    """Before, each review opened its own connection: 100 junk tokens sent at once while the
    API server was slow held 100 connections to it, each a file descriptor beyond the
    server's reserve (a full main listener plus as many reviews ran out of them) and each
    one more request for an API server already behind."""
    kube.delay_s = 0.2
    # The 101 reviews start together and each has one deadline for its slot wait and calls:
    # room for all of them (and their TLS handshakes) on a loaded machine. That deadline is
    # test_one_deadline_bounds_the_slot_wait_and_both_reviews's subject, not this test's.
    roomy = dataclasses.replace(authenticator.connection, timeout_s=60.0)
    authenticator = TokenReviewAuthenticator(roomy, clock=authenticator._clock)

    async def burst() -> list[Any]:
        calls = [authenticator.authorize(f"junk-{i}", PROM) for i in range(100)]
        calls.append(authenticator.authorize(PROM_TOKEN, PROM))
        return await asyncio.gather(*calls, return_exceptions=True)

    started = time.monotonic()
    results = asyncio.run(burst())
    assert kube.peak_in_flight <= MAX_CONCURRENT_REVIEWS
    assert all(isinstance(r, TokenRejected) for r in results[:100]), results[:100]
    # Waiting for a slot is no failure: Prometheus's token got its answer too.
    assert isinstance(results[100], KubernetesIdentity)
    assert time.monotonic() - started < roomy.timeout_s


def test_a_review_that_cannot_start_in_time_is_503(
    kube: FakeApiServer,
    connection: KubeConnection,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slot is waited for only within the review's deadline: then 503, never a hang."""
    slow = dataclasses.replace(connection, timeout_s=0.3)
    authenticator = TokenReviewAuthenticator(slow, clock=clock, max_concurrent_reviews=1)

    async def while_the_slot_is_taken(*tokens: str) -> list[Any]:
        # The only slot is held here, as by a review the API server has not answered: no
        # review can start, whatever the machine's load, and none reaches the API server.
        slots = authenticator._semaphore()
        await slots.acquire()
        try:
            calls = [authenticator.authorize(t, PROM) for t in tokens]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            slots.release()

    with caplog.at_level(logging.WARNING, logger="certctl.auth.kubernetes"):
        first, second = asyncio.run(while_the_slot_is_taken(PROM_TOKEN, OTHER_TOKEN))
        for refused in (first, second):
            assert isinstance(refused, KubeApiError), refused
            assert refused.status == 503
            assert "too many Kubernetes token reviews in progress" in refused.detail
        assert OTHER_TOKEN not in second.detail + caplog.text
        assert kube.requests == []
        # The operator learns why Prometheus sees 503, once a minute, not once a request.
        logged = "1 Kubernetes token reviews in progress, none done within 0.3 s"
        assert caplog.text.count(logged) == 1
        assert isinstance(asyncio.run(while_the_slot_is_taken("junk-1"))[0], KubeApiError)
        assert caplog.text.count(logged) == 1
        clock.advance(61)
        assert isinstance(asyncio.run(while_the_slot_is_taken("junk-2"))[0], KubeApiError)
        assert caplog.text.count(logged) == 2
    # Not cached: the next attempt is reviewed.
    with pytest.raises(AccessDenied):
        authorize(authenticator, OTHER_TOKEN)
    assert authorize(authenticator, PROM_TOKEN).username == PROM_USER.username


def _timed(auth: TokenReviewAuthenticator, hold_slot_s: float) -> tuple[object, float]:
    """(what ``authorize(PROM_TOKEN)`` gave, seconds until it gave it), the only slot held by
    another review for the first ``hold_slot_s`` seconds."""

    async def run() -> tuple[object, float]:
        slots = auth._semaphore()
        await slots.acquire()
        asyncio.get_running_loop().call_later(hold_slot_s, slots.release)
        started = time.monotonic()
        try:
            result: object = await auth.authorize(PROM_TOKEN, PROM)
        except KubeApiError as exc:
            result = exc
        return result, time.monotonic() - started

    return asyncio.run(run())


def test_one_deadline_bounds_the_slot_wait_and_both_reviews(
    kube: FakeApiServer, connection: KubeConnection, clock: FakeClock
) -> None:
    """Before, the wait for a slot and each API call had a timeout of their own: a review
    could answer (or 503) after two or three times the timeout, past Prometheus's default
    scrapeTimeout (10 s) with the default 5 s, so the scrape failed on its own timeout."""
    deadline = dataclasses.replace(connection, timeout_s=2.0)
    authenticator = TokenReviewAuthenticator(deadline, clock=clock, max_concurrent_reviews=1)
    # Each part within the timeout, together 2.8 s: the slot after 1.4 s, 0.7 s per call.
    kube.delay_s = 0.7
    refused, took = _timed(authenticator, hold_slot_s=1.4)
    assert isinstance(refused, KubeApiError), refused
    assert refused.status == 503
    assert "did not answer the token review within 2 s" in refused.detail
    assert took < 2.8, took  # at the deadline, not once the calls were done
    assert authenticator._cache == {}  # an outage: not cached
    # No slot wait, the two calls after each other past the deadline: 503 as well.
    kube.delay_s = 1.2
    refused, took = _timed(authenticator, hold_slot_s=0)
    assert isinstance(refused, KubeApiError), refused
    assert took < 2.4, took
    # The twin: slot wait and calls within the deadline together (1 s of its 2 s).
    kube.delay_s = 0.25
    identity, took = _timed(authenticator, hold_slot_s=0.5)
    assert isinstance(identity, KubernetesIdentity), identity
    assert took >= 1.0, took


def test_deny_is_cached_for_thirty_seconds(
    kube: FakeApiServer, authenticator: TokenReviewAuthenticator, clock: FakeClock
) -> None:
    with pytest.raises(AccessDenied, match=f"{OTHER_USER.username} may not get {PROM}") as info:
        authorize(authenticator, OTHER_TOKEN)
    assert info.value.username == OTHER_USER.username
    assert info.value.status == 403
    kube.allowed.add((OTHER_USER.username, PROM, "get"))  # RBAC granted meanwhile
    kube.clear()
    clock.advance(29)
    with pytest.raises(AccessDenied):
        authorize(authenticator, OTHER_TOKEN)
    assert kube.requests == []
    clock.advance(2)
    assert authorize(authenticator, OTHER_TOKEN).username == OTHER_USER.username
    assert len(kube.requests) == 2


def test_rejected_token_is_cached_for_thirty_seconds(
    kube: FakeApiServer, authenticator: TokenReviewAuthenticator, clock: FakeClock
) -> None:
    with pytest.raises(TokenRejected) as info:
        authorize(authenticator, "not-a-real-token")
    assert info.value.status == 401
    assert "invalid bearer token" in info.value.review_error
    assert kube.paths() == [("POST", TOKEN_REVIEWS)]  # no SubjectAccessReview
    clock.advance(29)
    with pytest.raises(TokenRejected):
        authorize(authenticator, "not-a-real-token")
    assert len(kube.requests) == 1
    clock.advance(2)
    with pytest.raises(TokenRejected):
        authorize(authenticator, "not-a-real-token")
    assert len(kube.requests) == 2


def test_decisions_are_per_path(
    kube: FakeApiServer, authenticator: TokenReviewAuthenticator
) -> None:
    authorize(authenticator, PROM_TOKEN)
    with pytest.raises(AccessDenied, match="may not get /api/v1/metrics "):
        authorize(authenticator, PROM_TOKEN, "/api/v1/metrics")
    assert kube.requests[-1].body is not None
    assert kube.requests[-1].body["spec"]["nonResourceAttributes"] == {
        "path": "/api/v1/metrics",
        "verb": "get",
    }


def test_outages_are_errors_and_not_cached(
    kube: FakeApiServer, authenticator: TokenReviewAuthenticator
) -> None:
    kube.fail_status = 500
    for _ in range(2):
        with pytest.raises(KubeApiError, match="answered 500") as info:
            authorize(authenticator, PROM_TOKEN)
        assert info.value.status == 503
    assert len(kube.requests) == 2  # each attempt asked again
    kube.fail_status = None
    assert authorize(authenticator, PROM_TOKEN).username == PROM_USER.username


def test_cache_is_keyed_by_token_hash(
    kube: FakeApiServer, authenticator: TokenReviewAuthenticator
) -> None:
    authorize(authenticator, PROM_TOKEN)
    keys = list(authenticator._cache)
    assert keys == [(hashlib.sha256(PROM_TOKEN.encode()).hexdigest(), PROM, "get")]
    assert PROM_TOKEN not in repr(authenticator._cache)


# --- auth.kubernetes.audiences -----------------------------------------------------------

AUDIENCE = "certctl"
# Prometheus's projected token for certctl (a serviceAccountToken volume, audience: certctl).
PROM_CERTCTL_TOKEN = "eyJhbGciOiJSUzI1NiJ9.prometheus-token-for-certctl.sig"


@pytest.fixture
def audience_kube(kube: FakeApiServer) -> FakeApiServer:
    kube.users[PROM_CERTCTL_TOKEN] = KubeUser(
        PROM_USER.username, PROM_USER.uid, PROM_USER.groups, PROM_USER.extra, [AUDIENCE]
    )
    return kube


def test_audiences_are_sent_and_a_token_for_another_audience_is_401(
    audience_kube: FakeApiServer, connection: KubeConnection, clock: FakeClock
) -> None:
    """Before, TokenReview named no audience: any token the API server accepted (its own
    ServiceAccount token, one minted for another service) read the metrics."""
    auth = TokenReviewAuthenticator(connection, clock=clock, audiences=[AUDIENCE, "other"])
    assert authorize(auth, PROM_CERTCTL_TOKEN).username == PROM_USER.username
    review = audience_kube.requests[0]
    assert review.body is not None
    assert review.body["spec"] == {"token": PROM_CERTCTL_TOKEN, "audiences": [AUDIENCE, "other"]}
    audience_kube.clear()
    # The same ServiceAccount's default token is for the API server: refused, never reviewed
    # for access.
    with pytest.raises(TokenRejected, match="for this audience") as info:
        authorize(auth, PROM_TOKEN)
    assert info.value.status == 401
    assert "is invalid for the target audiences" in info.value.review_error
    assert audience_kube.paths() == [("POST", TOKEN_REVIEWS)]
    # Negative twin: without audiences the API server's own audience applies, as before.
    plain = TokenReviewAuthenticator(connection, clock=clock)
    assert authorize(plain, PROM_TOKEN).username == PROM_USER.username
    assert audience_kube.requests[-2].body == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": PROM_TOKEN},
    }


def test_an_answer_without_our_audience_is_401(
    audience_kube: FakeApiServer,
    connection: KubeConnection,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An authenticator that ignores spec.audiences answers "authenticated" without
    status.audiences: the token is then only known to be good for the API server."""
    audience_kube.audience_aware = False
    auth = TokenReviewAuthenticator(connection, clock=clock, audiences=[AUDIENCE])
    for token in (PROM_TOKEN, PROM_CERTCTL_TOKEN):
        with (
            pytest.raises(TokenRejected, match="not valid for this audience") as info,
            caplog.at_level(logging.WARNING, logger="certctl.auth.kubernetes"),
        ):
            authorize(auth, token)
        assert "names none of ['certctl'] (the authenticator is not audience-aware)" in (
            info.value.review_error
        )
    assert audience_kube.paths() == [("POST", TOKEN_REVIEWS)] * 2  # no SubjectAccessReview
    assert "authenticator ignores auth.kubernetes.audiences" in caplog.text


def test_audiences_reach_the_authenticator_from_the_config(
    kube: FakeApiServer, sa_dir: Path, tmp_path: Path
) -> None:
    from certctl.server.kubernetes import kubernetes_features

    settings: dict[str, Any] = {
        "auth": {"kubernetes": {"enabled": True, "audiences": [AUDIENCE]}},
        "kubernetes": {
            "api-server": kube.url,
            "ca-file": str(sa_dir / "ca.crt"),
            "token-file": str(sa_dir / "token"),
        },
    }
    auth, _ = kubernetes_features(
        ServerConfig.model_validate(settings), tmp_path / "ca.crt", INSTALLATION
    )
    assert auth is not None
    assert auth.audiences == (AUDIENCE,)
    with pytest.raises(TokenRejected):
        authorize(auth, PROM_TOKEN)
    for bad in ([""], [" certctl"], "certctl"):
        settings["auth"]["kubernetes"]["audiences"] = bad
        with pytest.raises(ValidationError, match="audiences"):
            ServerConfig.model_validate(settings)


# --- end to end through the ASGI app -----------------------------------------------------


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bootstrapped]:
    data_dir = tmp_path_factory.mktemp("kube-e2e") / "data"
    boot = bootstrap(ServerConfig.model_validate({"data-dir": str(data_dir)}))
    try:
        yield boot
    finally:
        boot.services.engine.dispose()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def client(
    booted: Bootstrapped, authenticator: TokenReviewAuthenticator, kube: FakeApiServer
) -> Iterator[TestClient]:
    app = create_app(booted.services, kubernetes_authenticator=authenticator)
    with TestClient(app, base_url="https://testserver", raise_server_exceptions=False) as c:
        yield c


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("certctl_auth_failures_total", {"reason": reason}) or 0.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer realm="certctl"'
    detail: str = body["detail"]
    return detail


def audit_rows(booted: Bootstrapped) -> list[AuditEvent]:
    with booted.services.sessions() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_serviceaccount_token_reads_metrics(
    client: TestClient, kube: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="certctl.access"):
        r = client.get(PROM, headers=bearer(PROM_TOKEN))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    assert "certctl_build_info" in r.text
    assert f"actor=kubernetes:{PROM_USER.username}" in caplog.text
    assert PROM_TOKEN not in caplog.text
    assert len(kube.requests) == 2
    assert client.get(PROM, headers=bearer(PROM_TOKEN)).status_code == 200
    assert len(kube.requests) == 2  # cached
    # The JSON metrics route is reviewed for its own path.
    assert_problem(client.get("/api/v1/metrics", headers=bearer(PROM_TOKEN)), 403)
    kube.allowed.add((PROM_USER.username, "/api/v1/metrics", "get"))
    client.app.app.state.kubernetes_authenticator._cache.clear()  # type: ignore[attr-defined]
    assert client.get("/api/v1/metrics", headers=bearer(PROM_TOKEN)).status_code == 200


def test_one_token_on_both_listeners_is_reviewed_once(
    booted: Bootstrapped, authenticator: TokenReviewAuthenticator, kube: FakeApiServer
) -> None:
    # certctl serve gives the main listener's app and metrics.listen's the same authenticator
    # (server.run): Prometheus scraping both with one token makes one TokenReview and one
    # SubjectAccessReview, then answers from the cache (keyed by the token's SHA-256).
    main = create_app(booted.services, kubernetes_authenticator=authenticator)
    metrics = create_app(
        booted.services, kubernetes_authenticator=authenticator, only_paths=METRICS_PATHS
    )
    for app in (main, metrics, main, metrics):
        with TestClient(app, base_url="https://testserver") as c:
            assert c.get(PROM, headers=bearer(PROM_TOKEN)).status_code == 200
    assert kube.paths() == [("POST", TOKEN_REVIEWS), ("POST", SUBJECT_ACCESS_REVIEWS)]


def test_only_metrics_routes_take_kubernetes_tokens(
    client: TestClient, kube: FakeApiServer, booted: Bootstrapped
) -> None:
    for path in ("/api/v1/auth/whoami", "/api/v1/certificates", "/api/v1/audit"):
        detail = assert_problem(client.get(path, headers=bearer(PROM_TOKEN)), 401)
        # Not "malformed API key": the caller sent a ServiceAccount token on purpose.
        assert detail == (
            "not a certctl API key (cctl_…): ServiceAccount tokens (auth.kubernetes) are "
            "accepted on the metrics routes only, /api/v1/metrics and "
            "/api/v1/metrics/prometheus"
        ), detail
    # certctl API keys never go to the API server, valid or not.
    assert booted.admin_key is not None
    assert client.get(PROM, headers=bearer(booted.admin_key)).status_code == 200
    assert_problem(client.get(PROM, headers=bearer("cctl_0000000000000000_" + "x" * 43)), 401)
    assert_problem(client.get(PROM), 401)
    assert kube.requests == []


def test_invalid_token_is_401_audited_and_counted(
    client: TestClient, kube: FakeApiServer, booted: Bootstrapped
) -> None:
    before, rows_before = failures("invalid"), len(audit_rows(booted))
    for _ in range(2):
        detail = assert_problem(client.get(PROM, headers=bearer("forged-token")), 401)
        assert "forged-token" not in detail
    assert failures("invalid") == before + 2
    new = audit_rows(booted)[rows_before:]
    assert [(e.actor, e.action, e.outcome, e.target) for e in new] == [
        ("anonymous", "auth.failure", "invalid", f"GET {PROM}")
    ] * 2
    assert "TokenReview" in new[0].detail
    assert all("forged-token" not in e.detail for e in new)
    assert kube.paths() == [("POST", TOKEN_REVIEWS)]  # the second 401 came from the cache


def test_denied_token_is_403(
    client: TestClient, kube: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    before = failures("forbidden")
    with caplog.at_level(logging.INFO, logger="certctl.access"):
        detail = assert_problem(client.get(PROM, headers=bearer(OTHER_TOKEN)), 403)
    assert OTHER_USER.username in detail
    assert failures("forbidden") == before + 1
    assert f"actor=kubernetes:{OTHER_USER.username}" in caplog.text


@pytest.mark.parametrize("failure", ["unreachable", "5xx", "certctl-not-authorized"])
def test_api_server_trouble_is_503_never_200(
    client: TestClient, kube: FakeApiServer, failure: str
) -> None:
    if failure == "unreachable":
        kube.stop()
    elif failure == "5xx":
        kube.fail_status = 503
    else:
        kube.accepted_tokens.clear()  # certctl's own token is refused (RBAC, rotation)
    for _ in range(2):
        detail = assert_problem(client.get(PROM, headers=bearer(PROM_TOKEN)), 503)
        assert PROM_TOKEN not in detail


def test_an_untrusted_api_server_is_named_in_the_log_not_in_the_answer(
    booted: Bootstrapped,
    kube: FakeApiServer,
    sa_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong kubernetes.ca-file: the log says so (it said only "ConnectError"); the 503
    to the unauthenticated caller keeps to the exception's name."""
    from datetime import UTC, datetime, timedelta

    from certctl.kubeapi import in_cluster
    from certctl.pki import KeyType, certs_to_pem, common_name_dn, create_root_ca
    from certctl.pki import generate_private_key as new_key

    other = create_root_ca(
        new_key(KeyType.EC_P256),
        common_name_dn("Other CA"),
        validity=timedelta(days=1),
        now=datetime.now(UTC),
    )
    wrong = tmp_path / "wrong-ca.crt"
    wrong.write_bytes(certs_to_pem([other.certificate]))
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(kube.port)}
    conn = in_cluster(environ=env, service_account_dir=sa_dir, ca_file=wrong)
    app = create_app(booted.services, kubernetes_authenticator=TokenReviewAuthenticator(conn))
    with (
        TestClient(app, base_url="https://testserver", raise_server_exceptions=False) as c,
        caplog.at_level(logging.WARNING, logger="certctl.auth.kubernetes"),
    ):
        detail = assert_problem(c.get(PROM, headers=bearer(PROM_TOKEN)), 503)
    assert detail.endswith("(ConnectError)")
    assert "Kubernetes API unreachable for TokenReview: TLS certificate verify failed: " in (
        caplog.text
    )
    assert kube.requests == []


def test_a_token_for_another_audience_gets_401_through_the_app(
    booted: Bootstrapped, audience_kube: FakeApiServer, connection: KubeConnection
) -> None:
    auth = TokenReviewAuthenticator(connection, audiences=[AUDIENCE])
    app = create_app(booted.services, kubernetes_authenticator=auth)
    before = failures("invalid")
    with TestClient(app, base_url="https://testserver", raise_server_exceptions=False) as c:
        assert c.get(PROM, headers=bearer(PROM_CERTCTL_TOKEN)).status_code == 200
        assert_problem(c.get(PROM, headers=bearer(PROM_TOKEN)), 401)
    assert failures("invalid") == before + 1
    assert "is invalid for the target audiences" in audit_rows(booted)[-1].detail


def test_disabled_means_api_keys_only(booted: Bootstrapped, kube: FakeApiServer) -> None:
    app = create_app(booted.services)
    with TestClient(app, base_url="https://testserver", raise_server_exceptions=False) as c:
        assert "malformed API key" in assert_problem(c.get(PROM, headers=bearer(PROM_TOKEN)), 401)
    assert kube.requests == []


def test_server_publishes_the_ca_secret(kube: FakeApiServer, sa_dir: Path, tmp_path: Path) -> None:
    """``tls.publish-ca-secret``: what the chart's ServiceMonitor trusts by default."""
    from certctl.errors import InvalidRequest
    from certctl.server.kubernetes import kubernetes_features

    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    settings = {
        "tls": {"publish-ca-secret": "certctl-ca"},
        "kubernetes": {
            "api-server": kube.url,
            "ca-file": str(sa_dir / "ca.crt"),
            "token-file": str(sa_dir / "token"),
            "namespace": "certs",
        },
    }
    auth, publish = kubernetes_features(
        ServerConfig.model_validate(settings), ca_file, INSTALLATION
    )
    assert auth is None
    assert publish is not None
    publish()
    publish()
    assert [m for m, _ in kube.paths()] == ["GET", "POST", "GET"]
    secret = kube.secrets[("certs", "certctl-ca")]
    assert secret["type"] == "Opaque"
    assert set(secret["data"]) == {"ca.crt"}
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "ca"
    settings["tls"]["mode"] = "custom"
    with pytest.raises(InvalidRequest, match=r"needs tls\.mode=self-signed"):
        kubernetes_features(ServerConfig.model_validate(settings), ca_file, INSTALLATION)
