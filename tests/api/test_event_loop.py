"""The mutating routes and authentication reach the store from worker threads, never the loop.

A write may wait for SQLite's write lock (held by the group commit, a CRL being signed,
another worker): on the event loop, that wait stalls every other request of the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import event

from certctl.pki import KeyType, common_name_dn, create_root_ca, generate_private_key, key_to_pem
from certctl.services import key_authentication
from tests.api.conftest import Api, assert_problem
from tests.api.test_certificates import _csr_pem


@contextmanager
def statements_on_the_loop(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Collect the statements the app sends from the event loop thread, authentication's too.

    (A cached key's read of the credential generation goes through a connection of its own,
    not the engine's events.)
    """
    on_loop: list[str] = []

    def where(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a worker thread
        on_loop.append(statement)

    event.listen(api.services.engine, "before_cursor_execute", where)
    try:
        yield on_loop
    finally:
        event.remove(api.services.engine, "before_cursor_execute", where)


def test_mutating_routes_use_the_store_off_the_event_loop(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every POST, PUT, PATCH and DELETE route, and the audit of a refused one.

    Before, revoking an issuer or a certificate, the role, actor and API-key routes, an
    issuer import, the service routes and the audit of a 403 ran their transaction on the
    event loop.
    """
    key = generate_private_key(KeyType.EC_P256)
    imported = create_root_ca(
        key,
        common_name_dn("Imported Root"),
        validity=timedelta(days=3650),
        now=datetime.now(UTC),
    ).certificate
    viewer = api.key_with_permissions("viewer", ["cert.read"])
    api.issue()  # the default issuer cached: issuance reads no store on the loop
    client_pem = api.issue(common_name="client.example.com", profile="client")["certificate_pem"]
    csr_pem, _ = _csr_pem()
    service = {
        "apiVersion": "certctl.io/v1",
        "kind": "TLSService",
        "metadata": {"name": "web"},
        "spec": {"http": {"tls": {"client": {"authentication": True}}}},
    }

    def call(method: str, path: str, status: int, body: Any = None, key: str = "") -> Any:
        r = api.request(method, path, key or api.admin_key, json=body)
        assert r.status_code == status, (method, path, r.text)
        return r.json() if r.content else None

    with statements_on_the_loop(api, monkeypatch) as on_loop:
        roles, actors = "/api/v1/auth/roles", "/api/v1/auth/actors"
        call("POST", roles, 201, {"id": "r-x", "permissions": ["cert.read"]})
        call("PUT", f"{roles}/r-x", 200, {"name": "x", "permissions": []})
        call("POST", actors, 201, {"id": "a-x", "roles": ["r-x"]})
        call("PATCH", f"{actors}/a-x", 200, {"name": "renamed"})
        minted = call("POST", "/api/v1/auth/apikeys", 201, {"actor_id": "a-x"})
        call("DELETE", f"/api/v1/auth/apikeys/{minted['id']}", 200)
        call("DELETE", f"{actors}/a-x", 204)
        call("DELETE", f"{roles}/r-x", 204)
        assert_problem(api.post(roles, viewer, json={"id": "r-y", "permissions": []}), 403)

        issuers = "/api/v1/issuers"
        call("POST", issuers, 201, {"id": "sub", "common_name": "Sub", "parent": "default"})
        call(
            "POST",
            issuers,
            201,
            {
                "id": "imported",
                "certificate_pem": imported.public_bytes(Encoding.PEM).decode(),
                "private_key_pem": key_to_pem(key).decode(),
            },
        )
        call("POST", f"{issuers}/sub/revoke", 200, {"reason": "keyCompromise"})

        certs = "/api/v1/certificates"
        issued = call("POST", certs, 201, {"common_name": "a.example.com"})
        call("POST", certs, 201, {"csr": csr_pem})
        renewed = call("POST", f"{certs}/{issued['id']}/renew", 201, {})
        call("POST", f"{certs}/{renewed['id']}/revoke", 200, {"reason": "keyCompromise"})

        services = "/api/v1/services"
        call("PUT", f"{services}/web", 201, service)
        call("POST", f"{services}/web/renew", 202)
        added = call("POST", f"{services}/web/clients", 201, {"certificate_pem": client_pem})
        call("DELETE", f"{services}/web/clients/{added['items'][0]['fingerprint']}", 204)
        assert_problem(api.request("DELETE", f"{services}/web/retired-ca", api.admin_key), 409)
        call("DELETE", f"{services}/web", 204)
    assert on_loop == []


def test_authentication_uses_the_store_off_the_event_loop(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key read from the store, its ``last_used_at`` write, a refused key's audit.

    Before, a key not in the in-memory cache was read, its ``last_used_at`` written once a
    minute (on SQLite: waiting for the write lock while an issuance held it) and every refused
    key audited, all on the event loop.
    """
    viewer = api.key_with_permissions("viewer", ["cert.read"])  # never used: not cached
    key_id = viewer.split("_")[1]
    wrong = f"cctl_{key_id}_{'B' * 43}"
    unknown = f"cctl_{'0' * 16}_{'x' * 43}"
    failures_before = sum(e["action"] == "auth.failure" for e in api.audit())
    with statements_on_the_loop(api, monkeypatch) as on_loop:
        assert api.get("/api/v1/auth/whoami", viewer).json()["actor_id"] == "viewer"
        api.clock.advance(minutes=1)  # last_used_at due again: written on the next use
        assert api.get("/api/v1/auth/whoami", viewer).status_code == 200
        for refused in (wrong, unknown, None):
            assert_problem(api.get("/api/v1/auth/whoami", refused), 401)
    assert on_loop == []
    # What moved still happened: the key's last use saved, the refusals audited.
    r = api.get(f"/api/v1/auth/apikeys/{key_id}", api.admin_key)
    assert r.json()["last_used_at"] is not None
    events = [e for e in api.audit() if e["action"] == "auth.failure"]
    assert len(events) - failures_before == 3
    assert [e["outcome"] for e in events[:3]] == ["missing", "invalid", "invalid"]


async def _whoami_while_the_loop_ticks(api: Api, key: str) -> tuple[int, float]:
    """``whoami`` with ``key`` while a task ticks every 5 ms: its status, the longest tick gap."""
    import time

    import httpx2

    most, ticking = [0.0], [True]

    async def tick() -> None:
        last = time.monotonic()
        while ticking[0]:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            most[0], last = max(most[0], now - last), now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)  # ticking before the request starts
    transport = httpx2.ASGITransport(app=api.client.app)
    async with httpx2.AsyncClient(transport=transport, base_url="https://t") as client:
        r = await client.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {key}"})
    ticking[0] = False
    await ticker
    return r.status_code, most[0]


def test_a_key_read_from_the_store_leaves_the_event_loop_free(api: Api) -> None:
    """A key not in the cache is read in a worker thread: a slow database stalls no other work.

    Before, PostgreSQL read it on the event loop (one round trip, and a pooled connection to
    wait for when the pool was busy): for as long as the database took to answer, every other
    request of the process waited too.
    """
    import time

    viewer = api.key_with_permissions("viewer", ["cert.read"])  # never used: not cached

    def slow(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT api_keys.secret_sha256,"):
            time.sleep(0.3)  # a database that answers slowly

    event.listen(api.services.engine, "before_cursor_execute", slow)
    try:
        status, longest_stall = asyncio.run(_whoami_while_the_loop_ticks(api, viewer))
    finally:
        event.remove(api.services.engine, "before_cursor_execute", slow)
    assert status == 200
    assert longest_stall < 0.15


@pytest.mark.parametrize("api", ["postgresql"], indirect=True)  # SQLite's counter is a file
def test_reopening_the_credential_counter_leaves_the_event_loop_free(api: Api) -> None:
    """After a database outage the counter's own connection is opened again in a thread.

    Before, the first request a second after the outage opened it on the event loop: for as
    long as connecting took (up to connect_timeout, 5 s, against a database that does not
    answer), every other request of the process waited.
    """
    import time

    api.get("/api/v1/auth/whoami", api.admin_key)
    api.get("/api/v1/auth/whoami", api.admin_key)  # remembered: the counter is open
    cache = key_authentication._key_cache(api.services.engine)
    assert cache is not None
    counter: Any = cache._counter
    assert counter._connection is not None
    counter._close()  # what a failed read leaves: no connection, reopened when next read
    counter._retry_at = 0.0  # a second later

    def slow_connect(*args: Any) -> None:
        time.sleep(0.4)  # a database that takes its time to accept a connection

    event.listen(api.services.engine, "do_connect", slow_connect)
    try:
        status, longest_stall = asyncio.run(_whoami_while_the_loop_ticks(api, api.admin_key))
        deadline = time.monotonic() + 5
        while counter._connection is None and time.monotonic() < deadline:
            time.sleep(0.02)  # opened in its thread meanwhile
    finally:
        event.remove(api.services.engine, "do_connect", slow_connect)
    assert status == 200
    assert longest_stall < 0.15
    assert counter._connection is not None
    assert counter.read() is not None  # and used from then on


def test_a_burst_of_mutations_holds_at_most_write_threads_connections(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued writes wait on the loop, not each in a thread holding a pooled connection.

    In the default pool (40 threads) 20 writes blocked behind SQLite's write lock took 15
    connections, all of SQLite's pool: every read on the loop then waited 30 s for one.
    """
    import threading
    import time

    import anyio
    import httpx2

    from certctl.api._common import WRITE_THREADS

    in_flight, most = [0], [0]
    lock = threading.Lock()
    # Authentication reads the key in threads of its own (the first request of each): not in
    # the write pool.
    authenticating = threading.local()
    from_store = key_authentication.api_key_from_store

    def marked(*args: Any, **kwargs: Any) -> Any:
        authenticating.now = True
        try:
            return from_store(*args, **kwargs)
        finally:
            authenticating.now = False

    def slow(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if getattr(authenticating, "now", False):
            return
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.02)  # a store that answers slowly: the writes overlap
        with lock:
            in_flight[0] -= 1

    async def burst() -> list[int]:
        transport = httpx2.ASGITransport(app=api.client.app)
        headers = {"Authorization": f"Bearer {api.admin_key}"}
        async with httpx2.AsyncClient(transport=transport, base_url="https://t") as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        "/api/v1/auth/roles",
                        headers=headers,
                        json={"id": f"burst-{i}", "permissions": ["cert.read"]},
                    )
                    for i in range(16)
                )
            )
        return [r.status_code for r in answers]

    monkeypatch.setattr(key_authentication, "api_key_from_store", marked)
    event.listen(api.services.engine, "before_cursor_execute", slow)
    try:
        assert anyio.run(burst) == [201] * 16
    finally:
        event.remove(api.services.engine, "before_cursor_execute", slow)
    assert 1 <= most[0] <= WRITE_THREADS


def test_listings_read_the_store_off_the_event_loop(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every listing route runs its query in a worker thread.

    Before, they ran on the event loop: a ``?q=`` search scans the certificate table (90 ms
    with 100,000 certificates on SQLite, in-process), and for that long every other request
    of the process (issuance, health probes, scrapes) waited.
    """
    api.issue(common_name="listed.example.com")
    service = {
        "apiVersion": "certctl.io/v1",
        "kind": "TLSService",
        "metadata": {"name": "listed"},
        "spec": {},
    }
    r = api.request("PUT", "/api/v1/services/listed", api.admin_key, json=service)
    assert r.status_code == 201, r.text
    with statements_on_the_loop(api, monkeypatch) as on_loop:
        for path in (
            "/api/v1/certificates?q=listed",
            "/api/v1/certificates?status=active&expiring_within=3650d",
            "/api/v1/audit",
            "/api/v1/auth/apikeys",
            "/api/v1/auth/actors",
            "/api/v1/auth/roles",
            "/api/v1/issuers",
            "/api/v1/services",
        ):
            r = api.get(path, api.admin_key)
            assert r.status_code == 200, (path, r.text)
            assert r.json()["items"], path
    assert on_loop == []


def _connection_holders() -> int:
    """Threads of one server process that may each hold a pooled connection at the same time."""
    from certctl.api._common import LIST_THREADS, WRITE_THREADS
    from certctl.api.authentication import AUTH_READ_THREADS, FAILURE_AUDIT_THREADS
    from certctl.api.certificate_routes import KEYGEN_THREADS
    from certctl.api.issuer_routes import CA_READ_THREADS

    main_app = (
        WRITE_THREADS
        + 2 * CA_READ_THREADS  # the CA-certificate and the CRL routes
        + LIST_THREADS  # listings and a service's outputs
        + AUTH_READ_THREADS
        + FAILURE_AUDIT_THREADS
        + KEYGEN_THREADS  # RSA issuance: the issuer's first load
        + 1  # /readyz's database ping
    )
    metrics_app = AUTH_READ_THREADS + FAILURE_AUDIT_THREADS + 1  # a separate metrics listener
    # The group commit, the scheduler's tick, the webhook dispatcher, the periodic metrics
    # refresh, CA renewal and issuer-cache refresh (server.run), the leader's advisory lock.
    background = 7
    return 1 + main_app + metrics_app + background  # 1: the event loop


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_pool_holds_every_thread_that_may_use_the_store_at_once(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """Every thread that may hold a connection gets one at once, none waits for the pool.

    Before, PostgreSQL's pool held 20 (SQLite's 30): a burst that kept the write, CRL,
    CA-certificate, listing and authentication threads, RSA issuances and the background
    work busy together left the rest waiting pool_timeout (30 s), then failing.
    """
    import threading

    from certctl.store.db import POOL_CONNECTIONS, PoolTimeout, create_store_engine

    holders = _connection_holders()
    assert holders == POOL_CONNECTIONS  # the budget in store.db names these threads
    url = (
        request.getfixturevalue("postgres_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path / 'pool.db'}"
    )
    engine = create_store_engine(url)
    pool: Any = engine.pool
    pool._timeout = 0.5  # a connection that does not come at once will not come
    all_hold = threading.Barrier(holders, timeout=20)
    failures: list[BaseException] = []

    def hold() -> None:
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
                all_hold.wait()
        except PoolTimeout as exc:
            failures.append(exc)
            all_hold.abort()
        except threading.BrokenBarrierError:
            pass

    try:
        threads = [threading.Thread(target=hold) for _ in range(holders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        engine.dispose()
    assert failures == []
    assert not all_hold.broken


@pytest.mark.parametrize("backend", ["postgresql"])  # the setting is for PostgreSQL
def test_the_smallest_pool_serves_a_burst_by_waiting(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """``database-pool-size`` at its minimum: a burst of issuances, listings and writes waits
    for connections and is answered, none failing (no request holds one while it waits for
    the group commit's)."""
    import anyio
    import httpx2

    from certctl.store.db import POOL_MIN
    from tests.api.conftest import _truncate_all, running_app

    url = None
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
        _truncate_all(url)
    with running_app(backend, tmp_path / "data", url, **{"database-pool-size": POOL_MIN}) as api:
        pool: Any = api.services.engine.pool
        assert pool.size() + pool._max_overflow == POOL_MIN

        async def burst() -> list[int]:
            transport = httpx2.ASGITransport(app=api.client.app)
            headers = {"Authorization": f"Bearer {api.admin_key}"}
            async with httpx2.AsyncClient(transport=transport, base_url="https://t") as client:
                calls = [
                    client.post(
                        "/api/v1/certificates",
                        headers=headers,
                        json={
                            "common_name": f"b{i}.example.com",
                            "dns_names": [f"b{i}.example.com"],
                        },
                    )
                    for i in range(8)
                ]
                calls += [client.get("/api/v1/certificates", headers=headers) for _ in range(6)]
                calls += [
                    client.post(
                        "/api/v1/auth/roles",
                        headers=headers,
                        json={"id": f"small-{i}", "permissions": ["cert.read"]},
                    )
                    for i in range(6)
                ]
                answers = await asyncio.gather(*calls)
            return [r.status_code for r in answers]

        assert anyio.run(burst) == [201] * 8 + [200] * 6 + [201] * 6


def test_a_flood_of_bad_keys_writes_its_audit_rows_one_at_a_time(api: Api) -> None:
    """Refused keys' audit rows take one thread of their own, never the write pool's six.

    A flood from many addresses (the per-address throttle does not bound their number) then
    holds one pooled connection and one turn at the write lock; its 401s wait for their rows.
    """
    import threading
    import time

    in_flight, most = [0], [0]
    lock = threading.Lock()

    def slow(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.startswith("INSERT INTO audit_events"):
            return
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.01)  # a store that answers slowly: the rows would overlap
        with lock:
            in_flight[0] -= 1

    before = sum(e["action"] == "auth.failure" for e in api.audit())
    event.listen(api.services.engine, "before_cursor_execute", slow)
    try:
        assert _bad_keys_at_once(api.client.app) == [401] * 12
    finally:
        event.remove(api.services.engine, "before_cursor_execute", slow)
    assert most[0] == 1
    assert sum(e["action"] == "auth.failure" for e in api.audit()) - before == 12


def test_a_burst_of_bad_keys_from_one_address_is_throttled_at_the_limit(api: Api) -> None:
    """auth.failure-limit holds for concurrent guesses too, not only for one after another.

    On SQLite a key not in the cache is read in a worker thread; the address's throttle was
    checked on the loop before the hop, and its failure counted after, so a burst from one
    address all passed the check before any failure was counted: 12 guesses, 12 keys looked
    up, where the limit allows 3.
    """

    from certctl.api.app import create_app
    from certctl.api.authentication import AUTH_READ_THREADS
    from certctl.api.throttle import AuthFailureLimiter

    limit = 3
    app = create_app(api.services, auth_failure_limiter=AuthFailureLimiter(limit, 60))

    statuses = _bad_keys_at_once(app)
    assert set(statuses) == {401, 429}, statuses
    # At most the guesses already in authentication's threads when the limit was reached.
    assert statuses.count(401) <= limit + AUTH_READ_THREADS - 1, statuses


def _bad_keys_at_once(app: Any, n: int = 12) -> list[int]:
    """The statuses of ``n`` whoami requests sent at once, each with another unknown key."""
    import anyio
    import httpx2

    async def burst() -> list[int]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="https://t") as client:
            answers = await asyncio.gather(
                *(
                    client.get(
                        "/api/v1/auth/whoami",
                        headers={"Authorization": f"Bearer cctl_{i:016x}_{'x' * 43}"},
                    )
                    for i in range(n)
                )
            )
        return [r.status_code for r in answers]

    return anyio.run(burst)
