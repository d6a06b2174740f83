"""The API-key cache (``auth_generation``) never outlives a change made by another process.

Two bootstrapped ``Services`` on one database stand for two server processes or replicas: A
authenticates (and caches), B changes the key, the actor or its role, A's very next
authentication must see it. On SQLite and on PostgreSQL: both cache keys, and check the
counter before trusting one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from certctl.server.bootstrap import bootstrap
from certctl.server.config import load_config
from certctl.services import credential_counter, key_authentication
from certctl.services.actors import create_actor, delete_actor, update_actor
from certctl.services.api_keys import mint_api_key, revoke_api_key
from certctl.services.context import Principal, Services
from certctl.services.key_authentication import AuthFailure, authenticate_api_key
from certctl.services.roles import create_role, update_role
from certctl.store.models import ApiKey
from tests._generation import count_generation_reads
from tests.api.conftest import BACKENDS, _truncate_all

ADMIN = Principal("admin", ("r-admin",), frozenset({"*"}), "api_key")


def _services(data_dir: Path, url: str | None) -> Services:
    return bootstrap(load_config(None, {"data-dir": str(data_dir), "database-url": url})).services


@pytest.fixture(params=BACKENDS)
def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Services, Services, Principal]]:
    url: str | None = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        _truncate_all(url)
    a = _services(tmp_path, url)
    b = _services(tmp_path, url)
    assert a.engine is not b.engine
    admin = authenticate_api_key(b, (tmp_path / "admin-api-key").read_text().strip(), "")
    try:
        yield a, b, admin
    finally:
        a.engine.dispose()
        b.engine.dispose()


def _mint(services: Services, admin: Principal, actor: str, roles: list[str]) -> str:
    create_actor(services, admin, actor, actor, roles)
    return mint_api_key(services, admin, actor, "k", None).minted.value


def test_revocation_elsewhere_applies_to_the_next_request(
    pair: tuple[Services, Services, Principal],
) -> None:
    a, b, admin = pair
    key = _mint(b, admin, "scraper", ["r-metrics-read"])
    for _ in range(3):  # the slow path, then cache hits
        assert authenticate_api_key(a, key, "").actor_id == "scraper"
    revoke_api_key(b, admin, key.split("_")[1])
    with pytest.raises(AuthFailure) as failure:
        authenticate_api_key(a, key, "")
    assert failure.value.reason == "revoked"


def test_role_change_elsewhere_applies_to_the_next_request(
    pair: tuple[Services, Services, Principal],
) -> None:
    a, b, admin = pair
    key = _mint(b, admin, "ops", ["r-metrics-read"])
    for _ in range(3):
        assert "cert.issue" not in authenticate_api_key(a, key, "").permissions
    update_actor(b, admin, "ops", None, ["r-operator"])
    assert "cert.issue" in authenticate_api_key(a, key, "").permissions


def test_deleted_actor_and_wrong_secret_are_refused(
    pair: tuple[Services, Services, Principal],
) -> None:
    a, b, admin = pair
    key = _mint(b, admin, "gone", ["r-viewer"])
    authenticate_api_key(a, key, "")
    authenticate_api_key(a, key, "")
    with pytest.raises(AuthFailure) as failure:
        authenticate_api_key(a, key[:-2] + ("AA" if not key.endswith("AA") else "BB"), "")
    assert failure.value.reason == "invalid"
    delete_actor(b, admin, "gone")
    with pytest.raises(AuthFailure):
        authenticate_api_key(a, key, "")


def test_expiry_is_checked_on_a_cache_hit(pair: tuple[Services, Services, Principal]) -> None:
    a, b, admin = pair
    create_actor(b, admin, "brief", "brief", ["r-viewer"])
    expires = b.clock() + timedelta(minutes=5)
    key = mint_api_key(b, admin, "brief", "k", expires).minted.value
    authenticate_api_key(a, key, "")
    authenticate_api_key(a, key, "")  # now cached
    later = expires + timedelta(seconds=1)
    a.clock = lambda: later
    with pytest.raises(AuthFailure) as failure:
        authenticate_api_key(a, key, "")
    assert failure.value.reason == "expired"


def test_role_permission_change_elsewhere_applies_to_the_next_request(
    pair: tuple[Services, Services, Principal],
) -> None:
    a, b, admin = pair
    role = create_role(b, admin, "r-custom", "custom", ["metrics.read"])
    key = _mint(b, admin, "custom", [role.id])
    for _ in range(3):
        assert "cert.read" not in authenticate_api_key(a, key, "").permissions
    update_role(b, admin, role.id, None, ["metrics.read", "cert.read"])
    assert "cert.read" in authenticate_api_key(a, key, "").permissions


def test_a_manual_sql_revocation_applies_to_the_next_request(
    pair: tuple[Services, Services, Principal],
) -> None:
    # Triggers, not application code, bump the generation: an operator's fix in sqlite3 or
    # psql counts, as does another replica's UPDATE.
    a, b, admin = pair
    key = _mint(b, admin, "manual", ["r-viewer"])
    authenticate_api_key(a, key, "")
    authenticate_api_key(a, key, "")
    database = a.engine.url.database
    assert database is not None
    revoke = "UPDATE api_keys SET revoked_at = '2026-01-01 00:00:00.000000' WHERE id = "
    if a.engine.dialect.name == "sqlite":
        with sqlite3.connect(database) as connection:
            connection.execute(revoke + "?", (key.split("_")[1],))
    else:
        with b.engine.begin() as connection:
            connection.execute(text(revoke + ":id"), {"id": key.split("_")[1]})
    with pytest.raises(AuthFailure) as failure:
        authenticate_api_key(a, key, "")
    assert failure.value.reason == "revoked"


def test_issuing_certificates_keeps_the_cache(pair: tuple[Services, Services, Principal]) -> None:
    a, b, admin = pair
    key = _mint(b, admin, "busy", ["r-operator"])
    authenticate_api_key(a, key, "")
    authenticate_api_key(a, key, "")  # cached
    from certctl.services import issuance

    caller = authenticate_api_key(b, key, "")
    issuance.issue_with_key(
        b,
        caller,
        issuer_id="default",
        common_name="busy.example.com",
        dns_names=[],
        ip_addresses=[],
        profile="server",
        validity=timedelta(days=30),
        key_type="ec-p256",
    )
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(a.engine, "before_cursor_execute", seen)
    try:
        assert authenticate_api_key(a, key, "").actor_id == "busy"
    finally:
        event.remove(a.engine, "before_cursor_execute", seen)
    assert statements == [], "a certificate insert emptied the API-key cache"


def test_the_counter_is_read_again_only_after_a_commit(
    pair: tuple[Services, Services, Principal], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: while the WAL-index header is unchanged, a cache hit costs no read at all.

    PostgreSQL: one read of the counter per hit (on a connection of the cache's own), and no
    read of the key or its roles.
    """
    # Room for this test's map: a whole test run opens more databases than a server keeps.
    monkeypatch.setattr(
        credential_counter, "_WAL_INDEX_MAX", len(credential_counter._WAL_INDEX_MAPS) + 8
    )
    a, b, admin = pair
    sqlite = a.engine.dialect.name == "sqlite"
    key = _mint(b, admin, "quiet", ["r-viewer"])
    authenticate_api_key(a, key, "")
    authenticate_api_key(a, key, "")  # cached
    cache = key_authentication._key_cache(a.engine)
    assert cache is not None
    assert cache.has_wal_index is sqlite
    reads = count_generation_reads(a.engine, monkeypatch)
    statements: list[str] = []
    event.listen(a.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for _ in range(3):
        assert authenticate_api_key(a, key, "").actor_id == "quiet"
    assert len(reads) == (0 if sqlite else 3)
    create_role(b, admin, "r-other", "other", ["metrics.read"])  # a commit elsewhere
    assert authenticate_api_key(a, key, "").actor_id == "quiet"
    assert len(reads) == (1 if sqlite else 5)  # read again: changed, so the key too
    assert authenticate_api_key(a, key, "").actor_id == "quiet"
    assert len(reads) == (1 if sqlite else 6)
    # Through the engine's pool: only the key and its roles, once, after the change.
    assert [s.split()[1] for s in statements] == ["api_keys.secret_sha256,", "roles.id,"]


def test_two_reads_of_a_due_key_write_last_used_at_once(
    pair: tuple[Services, Services, Principal],
) -> None:
    # The API server reads uncached keys in worker threads (and replicas read the same
    # store): two requests can both find last_used_at due before either writes it. The
    # later write must not move it again within the minute.
    a, b, admin = pair
    key = _mint(b, admin, "twice", ["r-viewer"])
    start = datetime.now(UTC)
    a.clock = lambda: start
    b.clock = lambda: start + timedelta(seconds=30)
    raced: list[str] = []

    def b_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # A has read the key (last_used_at unset) and is about to write it: B reads it now,
        # also unset, and writes first.
        if statement.startswith("UPDATE api_keys") and not raced:
            raced.append(statement)
            key_authentication.api_key_from_store(b, key, "")

    event.listen(a.engine, "before_cursor_execute", b_first)
    try:
        key_authentication.api_key_from_store(a, key, "")
    finally:
        event.remove(a.engine, "before_cursor_execute", b_first)
    assert raced
    with a.sessions() as session:
        stored = session.get(ApiKey, key.split("_")[1])
        assert stored is not None
        assert stored.last_used_at == start + timedelta(seconds=30)  # B's, not moved back


def test_postgresql_a_lost_counter_connection_reads_the_store_then_reconnects(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The counter's own connection cut (a restart, a failover): answered from the store.

    One warning per outage; the next read after a second opens a new connection, and the
    keys remembered at the unchanged generation are trusted again. ``Engine.dispose`` closes
    it (no connection left open per disposed engine).
    """
    _truncate_all(postgres_url)
    a = _services(tmp_path, postgres_url)
    try:
        key = (tmp_path / "admin-api-key").read_text().strip()
        authenticate_api_key(a, key, "")
        authenticate_api_key(a, key, "")  # cached
        cache = key_authentication._key_cache(a.engine)
        assert cache is not None
        counter = cache._counter
        assert isinstance(counter, credential_counter.PostgresCounter)
        pid = counter._connection.info.backend_pid
        with a.engine.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        statements: list[str] = []
        event.listen(a.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        for _ in range(2):
            assert authenticate_api_key(a, key, "").actor_id == "admin"
        read = ["api_keys.secret_sha256,", "roles.id,"]
        assert [s.split()[1] for s in statements] == read * 2  # the key and its roles
        warned = [r.getMessage() for r in caplog.records if "credential generation" in r.message]
        assert len(warned) == 1, warned
        counter._retry_at = 0.0  # a second later
        statements.clear()
        assert authenticate_api_key(a, key, "").actor_id == "admin"
        assert statements == []  # remembered at the same generation: trusted again
        assert counter._connection.info.backend_pid != pid
    finally:
        a.engine.dispose()
    assert counter._connection is None


def test_postgresql_a_truncate_elsewhere_applies_to_the_next_request(
    postgres_url: str, tmp_path: Path
) -> None:
    """TRUNCATE fires no DELETE trigger: migration 0013's TRUNCATE triggers bump the counter.

    (SQLite has no TRUNCATE: its ``DELETE FROM`` without WHERE fires the DELETE triggers.)
    """
    _truncate_all(postgres_url)
    a = _services(tmp_path, postgres_url)
    b = _services(tmp_path, postgres_url)
    try:
        admin = authenticate_api_key(b, (tmp_path / "admin-api-key").read_text().strip(), "")
        key = _mint(b, admin, "emptied", ["r-viewer"])
        authenticate_api_key(a, key, "")
        authenticate_api_key(a, key, "")  # cached
        with b.engine.begin() as connection:
            connection.execute(text("TRUNCATE api_keys"))
        with pytest.raises(AuthFailure) as failure:
            authenticate_api_key(a, key, "")
        assert failure.value.reason == "invalid"
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_a_counter_that_went_back_trusts_no_key_remembered_before(
    pair: tuple[Services, Services, Principal],
) -> None:
    """A database restored from a backup, a failover to a standby that lagged, or migration
    0003 undone and applied again sets the counter back: a key remembered at a value it
    reaches again must not be trusted, since the rows at that value may be others. Before,
    a key deleted after it was remembered authenticated again from memory."""
    a, b, admin = pair
    key = _mint(b, admin, "restored", ["r-viewer"])
    authenticate_api_key(a, key, "")
    authenticate_api_key(a, key, "")  # remembered at the counter's value now
    with b.engine.begin() as connection:
        remembered = connection.execute(text(credential_counter.GENERATION_SQL)).scalar_one()
        connection.execute(text("DELETE FROM api_keys WHERE id = :id"), {"id": key.split("_")[1]})
    with pytest.raises(AuthFailure):
        authenticate_api_key(a, key, "")  # the counter moved on: read, and refused
    with b.engine.begin() as connection:  # back to the value the key was remembered at
        connection.execute(text("UPDATE auth_generation SET value = :v"), {"v": remembered})
    with pytest.raises(AuthFailure) as failure:
        authenticate_api_key(a, key, "")
    assert failure.value.reason == "invalid"
