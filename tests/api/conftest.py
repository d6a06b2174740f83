"""API fixtures: the app in-process (Starlette TestClient) on SQLite and on a real PostgreSQL 15.

Every test gets a freshly bootstrapped store (built-in roles, the ``default`` CA, the bootstrap
``admin`` key, a new key-encryption key) through ``certctl.server.bootstrap.bootstrap``. Migrating
an empty database costs ~1 s, so it is done once per session and each test starts from the
migrated, empty schema:

* SQLite: a copy of a migrated template file in the test's own data dir;
* PostgreSQL: one database in a throwaway cluster, its tables TRUNCATEd before each test
  (``CREATE DATABASE`` per test cost 0.3-0.9 s; TRUNCATE costs milliseconds).

The services clock is replaced by a frozen, controllable ``FakeClock`` (``api.clock``) so tests
can move time (API-key expiry, ``last_used_at`` resolution).
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Connection, event, func, select, text
from starlette.testclient import TestClient

from certctl.api.app import create_app
from certctl.server.bootstrap import bootstrap
from certctl.server.config import ServerConfig
from certctl.services.context import Services
from certctl.store.db import create_store_engine
from certctl.store.models import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeChallenge,
    AcmeEabKey,
    AcmeNonce,
    AcmeOrder,
    Actor,
    ApiKey,
    AuditEvent,
    BlockedKey,
    CertificateRecord,
    Issuer,
    ManagedService,
    OutboxEvent,
    Role,
    ServiceClient,
)
from tests._stores import PostgresCluster
from tests._tools import ok, run

if TYPE_CHECKING:
    # Starlette's TestClient prefers httpx2 (a dev dependency) over httpx.
    from httpx2 import Response

    from certctl.pki import CertificateAuthority

# The stores' session fixtures (postgres_cluster, postgres_url, sqlite_template) are registered
# once for every directory by tests/conftest.py: one PostgreSQL cluster per process.
BACKENDS = ("sqlite", "postgresql")
TABLES = {
    "certificates": CertificateRecord,
    "roles": Role,
    "actors": Actor,
    "api_keys": ApiKey,
    "issuers": Issuer,
    "audit_events": AuditEvent,
    # The managed-service tables too: left out, a service one PostgreSQL test created was
    # still there in the next, and counts() could not show a service call changing nothing.
    "managed_services": ManagedService,
    "service_clients": ServiceClient,
    "outbox_events": OutboxEvent,
    # The ACME endpoint's (migration 0027): a bad ACME request must leave them unchanged too.
    "acme_accounts": AcmeAccount,
    "acme_orders": AcmeOrder,
    "acme_authorizations": AcmeAuthorization,
    "acme_challenges": AcmeChallenge,
    "acme_nonces": AcmeNonce,
    "acme_eab_keys": AcmeEabKey,  # migration 0028
    "blocked_keys": BlockedKey,  # migration 0033: a refused issuance adds no row either
}
PROBLEM_TYPE = "application/problem+json"


@pytest.fixture(autouse=True)
def _acme_client_polls_briskly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The certbot ``acme`` library waits a whole second before each poll of an authorization
    or a finalized order, whatever the server says; an in-process server answers within
    milliseconds, so those seconds were most of every ACME test (a key-compromise chain of
    three orders: 10-29 s). Its polls are kept, only the waits between them shortened: the
    server is still asked until it says valid, and the deadlines still hold."""
    import time
    from types import SimpleNamespace

    from acme import client as acme_client

    monkeypatch.setattr(
        acme_client, "time", SimpleNamespace(sleep=lambda seconds: time.sleep(min(seconds, 0.02)))
    )


def _truncate_all(url: str) -> None:
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            tables = ", ".join(TABLES)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


# --- the app --------------------------------------------------------------------------------


class FakeClock:
    """A frozen UTC clock for ``Services.clock``; ``advance`` moves it."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = (now or datetime.now(UTC)).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


_KEY_NUMBERS = itertools.count(1)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(response: Response, status: int) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status``; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_TYPE
    body: dict[str, Any] = response.json()
    assert set(body) == {"type", "title", "status", "detail"}, body
    assert body["status"] == status
    for member in ("type", "title", "detail"):
        assert isinstance(body[member], str), body
        assert body[member], body
    assert "Traceback" not in body["detail"]
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer realm="certctl"'
    return body


@dataclass
class Api:
    """A bootstrapped certctl app behind a TestClient, plus helpers acting as ``admin``."""

    backend: str
    client: TestClient
    services: Services
    admin_key: str
    clock: FakeClock

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.admin_key)

    def request(self, method: str, path: str, key: str | None = None, **kw: Any) -> Response:
        headers = dict(kw.pop("headers", {}) or {})
        if key is not None:
            headers.update(bearer(key))
        return self.client.request(method, path, headers=headers, **kw)

    def get(self, path: str, key: str | None = None, **kw: Any) -> Response:
        return self.request("GET", path, key, **kw)

    def post(self, path: str, key: str | None = None, **kw: Any) -> Response:
        return self.request("POST", path, key, **kw)

    # Helpers: each asserts success so a broken helper fails where it is used.

    def create_role(self, role_id: str, permissions: list[str], key: str | None = None) -> None:
        r = self.post(
            "/api/v1/auth/roles",
            key or self.admin_key,
            json={"id": role_id, "name": role_id, "permissions": permissions},
        )
        assert r.status_code == 201, r.text

    def create_actor(self, actor_id: str, roles: list[str]) -> None:
        r = self.post(
            "/api/v1/auth/actors",
            self.admin_key,
            json={"id": actor_id, "name": actor_id, "roles": roles},
        )
        assert r.status_code == 201, r.text

    def mint_key(self, actor_id: str, **extra: Any) -> dict[str, Any]:
        r = self.post(
            "/api/v1/auth/apikeys",
            self.admin_key,
            # A name of its own: an actor's live keys each have theirs (api_keys._name_taken).
            json={"actor_id": actor_id, "name": f"{actor_id}-key-{next(_KEY_NUMBERS)}", **extra},
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def actor_key(self, actor_id: str, roles: list[str]) -> str:
        """Create ``actor_id`` holding ``roles`` and return a fresh API key for it."""
        self.create_actor(actor_id, roles)
        value: str = self.mint_key(actor_id)["key_value"]
        return value

    def key_with_permissions(self, actor_id: str, permissions: list[str]) -> str:
        """An actor holding exactly ``permissions`` (through a custom role ``p-<actor>``)."""
        self.create_role(f"p-{actor_id}", permissions)
        return self.actor_key(actor_id, [f"p-{actor_id}"])

    def issue(self, key: str | None = None, **body: Any) -> dict[str, Any]:
        body.setdefault("common_name", "svc.example.com")
        body.setdefault("dns_names", [body["common_name"]])
        r = self.post("/api/v1/certificates", key or self.admin_key, json=body)
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data

    def apply_service_ca(self, name: str) -> CertificateAuthority:
        """PUT a self-signed TLSService ``name`` (201: a new one), then make its CA as the
        reconciler's pass does first for the service; the CA made."""
        from certctl.services.service_ca import ensure_service_ca
        from certctl.services.service_settings import ServiceSettings

        doc = {
            "apiVersion": "certctl.io/v1",
            "kind": "TLSService",
            "metadata": {"name": name},
            "spec": {"http": {"tls": {"selfSignedCertificate": {"subjectAltNames": []}}}},
        }
        r = self.request("PUT", f"/api/v1/services/{name}", self.admin_key, json=doc)
        assert r.status_code == 201, r.text
        return ensure_service_ca(self.services, ServiceSettings(), name, self.clock())[0]

    def openssl_crl_serials(self, issuer_id: str, tmp_path: Path) -> set[int]:
        """The serials ``openssl crl -text`` lists on ``issuer_id``'s public CRL, its
        signature checked by openssl against the issuer's ca.pem (both left in ``tmp_path``).
        """
        crl, ca = tmp_path / f"{issuer_id}.crl", tmp_path / f"{issuer_id}-ca.pem"
        r = self.get(f"/api/v1/issuers/{issuer_id}/crl", params={"format": "pem"})
        assert r.status_code == 200, r.text
        crl.write_bytes(r.content)
        ca.write_text(self.get(f"/api/v1/issuers/{issuer_id}/ca.pem").text)
        shown = ok(run("openssl", "crl", "-in", crl, "-noout", "-text", "-CAfile", ca))
        assert "verify OK" in shown.stdout + shown.stderr
        return {int(s, 16) for s in re.findall(r"Serial Number: ([0-9A-F]+)", shown.stdout)}

    def counts(self) -> dict[str, int]:
        """Row counts of every table."""
        with self.services.sessions() as session:
            return {
                name: session.scalar(select(func.count()).select_from(model)) or 0
                for name, model in TABLES.items()
            }

    def assert_only_denials_audited(self, before: dict[str, int], denials: int) -> None:
        """Nothing changed but ``denials`` new audit records (403s on mutations are audited)."""
        after = self.counts()
        assert {k: v for k, v in after.items() if k != "audit_events"} == {
            k: v for k, v in before.items() if k != "audit_events"
        }
        assert after["audit_events"] == before["audit_events"] + denials
        if denials:
            assert [e["outcome"] for e in self.audit()[:denials]] == ["denied"] * denials

    @contextmanager
    def concurrent_write(
        self, before: tuple[str, ...], write: Callable[[Connection], object]
    ) -> Iterator[list[str]]:
        """Another replica commits ``write`` just before this app's first write of a request.

        ``before`` are starts of statements (``INSERT INTO roles``); the first statement this
        app sends that starts with one of them is preceded, once, by ``write`` run and
        committed on a connection of its own: the race of two workers or replicas, made
        deterministic. On SQLite that must be the transaction's first write (the audit row may
        be flushed before the row it audits): after it, this app holds the write lock. The
        yielded list holds the statement the write was slipped in front of.
        """
        engine = self.services.engine
        fired: list[str] = []

        def slip_in(
            conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
        ) -> None:
            if fired or not statement.lstrip().startswith(before):
                return
            fired.append(statement)
            with engine.connect() as other:
                write(other)
                other.commit()

        event.listen(engine, "before_cursor_execute", slip_in)
        try:
            yield fired
        finally:
            event.remove(engine, "before_cursor_execute", slip_in)

    def audit(self) -> list[dict[str, Any]]:
        """Every audit event, newest first (read through the API)."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            r = self.get("/api/v1/audit", self.admin_key, params=params)
            assert r.status_code == 200, r.text
            items += r.json()["items"]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                return items


@contextmanager
def running_app(
    backend: str, data_dir: Path, database_url: str | None, **config: Any
) -> Iterator[Api]:
    """The app bootstrapped from a ServerConfig; ``config``: more keys (``public_url=…``)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings: dict[str, Any] = {"data-dir": str(data_dir), "database-url": database_url}
    settings.update(config)
    booted = bootstrap(ServerConfig.model_validate(settings))
    assert booted.admin_key is not None  # a first start on an empty store
    clock = FakeClock()
    booted.services.clock = clock
    app = create_app(booted.services)
    try:
        # raise_server_exceptions=False: a 500 shows up as a status to assert on (with the
        # traceback in the captured log), as a real client would see it.
        with TestClient(
            app, base_url="https://testserver", raise_server_exceptions=False
        ) as client:
            yield Api(backend, client, booted.services, booted.admin_key, clock)
    finally:
        booted.services.engine.dispose()


@pytest.fixture(params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """A freshly bootstrapped app on each backend, for one test."""
    data_dir = tmp_path / "data"
    url: str | None = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        _truncate_all(url)
    else:
        template: Path = request.getfixturevalue("sqlite_template")
        data_dir.mkdir(mode=0o700)
        shutil.copyfile(template, data_dir / "certctl.db")
        (data_dir / "certctl.db").chmod(0o600)  # as a server makes it (0644 warns)
    with running_app(request.param, data_dir, url) as app:
        yield app


@pytest.fixture(scope="module", params=BACKENDS)
def module_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """One app per module and backend, for tests that must leave the store unchanged.

    On PostgreSQL it gets a database of its own, so function-scoped ``api`` tests (which
    TRUNCATE the shared database) cannot disturb it.
    """
    data_dir = tmp_path_factory.mktemp("module-api") / "data"
    url: str | None = None
    if request.param == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.url(cluster.create_database())
    with running_app(request.param, data_dir, url) as app:
        yield app
