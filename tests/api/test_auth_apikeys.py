"""/api/v1/auth/apikeys: minting (key shown once), listing, expiry, revocation, last use."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import delete, event, update

from certctl.services import key_authentication
from certctl.store.models import Actor, ApiKey, Role
from tests._generation import count_generation_reads
from tests.api.conftest import Api, assert_problem, bearer

KEYS = "/api/v1/auth/apikeys"
WHOAMI = "/api/v1/auth/whoami"
KEY_FORMAT = re.compile(r"^cctl_(?P<id>[A-Za-z0-9]+)_(?P<secret>[A-Za-z0-9_-]+)$")


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_mint_shows_key_once(api: Api) -> None:
    api.create_actor("bot", ["r-viewer"])
    expires = api.clock() + timedelta(days=30)
    r = api.post(
        KEYS, api.admin_key, json={"actor_id": "bot", "name": "ci", "expires_at": _iso(expires)}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "actor_id", "name", "key_value", "created_at", "expires_at"}
    assert (body["actor_id"], body["name"]) == ("bot", "ci")
    assert _parse(body["expires_at"]) == expires
    assert _parse(body["created_at"]) == api.clock()
    match = KEY_FORMAT.match(body["key_value"])
    assert match, body["key_value"]
    assert match["id"] == body["id"]
    secret = match["secret"]

    assert api.get(WHOAMI, body["key_value"]).json()["actor_id"] == "bot"

    listing = api.get(KEYS, api.admin_key)
    assert listing.status_code == 200
    assert body["key_value"] not in listing.text
    assert secret not in listing.text
    items = {item["id"]: item for item in listing.json()["items"]}
    assert set(items) == {body["id"], api.admin_key.split("_")[1]}
    listed = items[body["id"]]
    assert set(listed) == {
        "id",
        "actor_id",
        "name",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    }
    assert listed["revoked_at"] is None

    single = api.get(f"{KEYS}/{body['id']}", api.admin_key)
    assert single.status_code == 200
    assert single.json() == listed
    assert secret not in single.text

    filtered = api.get(KEYS, api.admin_key, params={"actor_id": "bot"}).json()["items"]
    assert [i["id"] for i in filtered] == [body["id"]]
    assert_problem(api.get(f"{KEYS}/nope", api.admin_key), 404)


@pytest.mark.parametrize(
    "expires_at",
    [
        "past",
        "now",
        "2020-01-01T00:00:00Z",
        "2099-01-01T00:00:00",  # naive: no time zone
        "next tuesday",
    ],
)
def test_mint_refuses_bad_expiry(api: Api, expires_at: str) -> None:
    if expires_at == "past":
        expires_at = _iso(api.clock() - timedelta(seconds=1))
    elif expires_at == "now":
        expires_at = _iso(api.clock())
    before = api.counts()
    r = api.post(KEYS, api.admin_key, json={"actor_id": "admin", "expires_at": expires_at})
    assert "expires_at" in assert_problem(r, 400)["detail"]
    assert api.counts() == before


def test_mint_for_unknown_actor_is_404(api: Api) -> None:
    before = api.counts()
    assert_problem(api.post(KEYS, api.admin_key, json={"actor_id": "ghost"}), 404)
    assert api.counts() == before


def test_a_name_is_one_live_key_of_its_actor(api: Api) -> None:
    """Rotation finds the old key by its name (README, docs/kubernetes.md: mint prometheus-v2,
    revoke v1's id from the listing): a second live key of the same name made that a guess,
    and revoking the wrong one keeps the key being retired alive. 409, store unchanged."""
    api.create_actor("prometheus", ["r-metrics-read"])
    v1 = api.post(KEYS, api.admin_key, json={"actor_id": "prometheus", "name": "prometheus-v1"})
    assert v1.status_code == 201, v1.text
    before = api.counts()
    again = {"actor_id": "prometheus", "name": "prometheus-v1"}
    detail = assert_problem(api.post(KEYS, api.admin_key, json=again), 409)["detail"]
    v1_id = v1.json()["id"]
    assert detail == (
        f"actor prometheus already has a live API key named 'prometheus-v1' (id {v1_id}): "
        "give the new key another name (e.g. prometheus-v2), and revoke the old one by its id "
        "once the new one is in use"
    )
    assert v1.json()["key_value"] not in detail
    assert api.counts() == before
    # A caller that may not list keys is not told the existing key's id.
    minter = api.key_with_permissions("minter", ["auth.apikey.create", "metrics.read"])
    detail = assert_problem(api.post(KEYS, minter, json=again), 409)["detail"]
    assert v1_id not in detail
    assert "auth.apikey.read lists it" in detail
    # The runbook's rotation: another name while v1 lives; v1's name again once it is gone.
    v2 = api.post(KEYS, api.admin_key, json={"actor_id": "prometheus", "name": "prometheus-v2"})
    assert v2.status_code == 201, v2.text
    assert api.request("DELETE", f"{KEYS}/{v1_id}", api.admin_key).status_code == 200
    assert api.post(KEYS, api.admin_key, json=again).status_code == 201
    # Names are per actor; an expired key's name is free; unnamed keys (named "key") are many.
    api.create_actor("other", ["r-metrics-read"])
    assert api.post(KEYS, api.admin_key, json={**again, "actor_id": "other"}).status_code == 201
    soon = _iso(api.clock() + timedelta(minutes=5))
    short = {"actor_id": "other", "name": "short", "expires_at": soon}
    assert api.post(KEYS, api.admin_key, json=short).status_code == 201
    assert_problem(api.post(KEYS, api.admin_key, json={**short, "expires_at": None}), 409)
    api.clock.advance(minutes=5)
    assert api.post(KEYS, api.admin_key, json={**short, "expires_at": None}).status_code == 201
    for _ in range(2):
        unnamed = api.post(KEYS, api.admin_key, json={"actor_id": "other"})
        assert unnamed.status_code == 201, unnamed.text
        assert unnamed.json()["name"] == "key"
    # "key" given as the name is the name unnamed keys get, and as exempt: before, 409
    # because of the unnamed keys above, which the rule says nothing about.
    for _ in range(2):
        named_key = api.post(KEYS, api.admin_key, json={"actor_id": "other", "name": "key"})
        assert named_key.status_code == 201, named_key.text
        assert named_key.json()["name"] == "key"


def test_expired_key_is_401(api: Api) -> None:
    api.create_actor("bot", ["r-viewer"])
    key = api.mint_key("bot", expires_at=_iso(api.clock() + timedelta(hours=1)))["key_value"]
    assert api.get(WHOAMI, key).status_code == 200
    api.clock.advance(minutes=59, seconds=59)
    assert api.get(WHOAMI, key).status_code == 200
    api.clock.advance(seconds=1)
    assert "expired" in assert_problem(api.get(WHOAMI, key), 401)["detail"]
    assert api.audit()[0]["outcome"] == "expired"


def test_revoked_key_is_401_on_next_request(api: Api) -> None:
    key = api.actor_key("bot", ["r-viewer"])
    key_id = key.split("_")[1]
    assert api.get(WHOAMI, key).status_code == 200
    r = api.request("DELETE", f"{KEYS}/{key_id}", api.admin_key)
    assert r.status_code == 200, r.text
    assert _parse(r.json()["revoked_at"]) == api.clock()
    assert "key_value" not in r.json()
    assert "revoked" in assert_problem(api.get(WHOAMI, key), 401)["detail"]
    assert api.get(f"{KEYS}/{key_id}", api.admin_key).json()["revoked_at"] is not None
    # Revoking again is harmless and keeps the first revocation time.
    api.clock.advance(hours=1)
    again = api.request("DELETE", f"{KEYS}/{key_id}", api.admin_key)
    assert again.status_code == 200
    assert again.json()["revoked_at"] == r.json()["revoked_at"]
    assert_problem(api.request("DELETE", f"{KEYS}/nope", api.admin_key), 404)


def test_a_change_by_another_replica_applies_to_the_next_request(api: Api) -> None:
    """A key remembered (both backends) is refused or re-read after a direct UPDATE.

    Another worker or replica (or an operator in psql/sqlite3) runs no hook of this process:
    database triggers bump the credential generation the cache checks.
    """
    key = api.key_with_permissions("remote", ["cert.read"])
    key_id = key.split("_")[1]

    def elsewhere(statement: Any) -> None:
        with api.services.engine.connect() as connection:
            connection.execute(statement)
            connection.commit()

    def permissions() -> list[str]:
        r = api.get(WHOAMI, key)
        assert r.status_code == 200, r.text
        held: list[str] = r.json()["permissions"]
        return held

    assert permissions() == ["cert.read"]
    assert permissions() == ["cert.read"]  # remembered now
    elsewhere(update(Role).where(Role.id == "p-remote").values(permissions=["metrics.read"]))
    assert permissions() == ["metrics.read"]
    elsewhere(update(Actor).where(Actor.id == "remote").values(roles=[]))
    assert permissions() == []
    elsewhere(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=api.clock()))
    assert assert_problem(api.get(WHOAMI, key), 401)["detail"] == "API key revoked"
    # Its twin, deleted with its actor by another replica.
    other = api.actor_key("gone", ["r-viewer"])
    assert api.get(WHOAMI, other).status_code == 200
    assert api.get(WHOAMI, other).status_code == 200
    elsewhere(delete(ApiKey).where(ApiKey.actor_id == "gone"))
    elsewhere(delete(Actor).where(Actor.id == "gone"))
    assert assert_problem(api.get(WHOAMI, other), 401)["detail"] == "unknown API key"


def test_a_key_another_worker_remembers_fails_there_on_its_next_request(api: Api) -> None:
    """Two workers (processes) each remember a key in their own cache: a revocation, an
    expiry cut short or an actor deleted through one is refused by the other at once.

    The other worker is an app on an engine of its own (its own key cache and, on
    PostgreSQL, its own counter connection), on the same database.
    """
    from starlette.testclient import TestClient

    from certctl.api.app import create_app
    from certctl.services.context import Services
    from certctl.store.db import create_store_engine, session_factory

    engine = create_store_engine(api.services.engine.url.render_as_string(hide_password=False))
    other = Services(engine, session_factory(engine), api.services.wrapper, clock=api.clock)
    keys = [api.actor_key(actor, ["r-viewer"]) for actor in ("w1", "w2", "w3")]
    try:
        with TestClient(create_app(other), base_url="https://testserver") as worker:

            def there(key: str) -> Any:
                return worker.get(WHOAMI, headers=bearer(key))

            for key in keys:
                for _ in range(2):  # read, its last_used_at written; then remembered
                    assert there(key).status_code == 200
                    assert api.get(WHOAMI, key).status_code == 200
            cache = key_authentication._key_cache(engine)
            assert cache is not None
            assert cache is not key_authentication._key_cache(api.services.engine)
            assert {k.split("_")[1] for k in keys} <= set(cache._entries)  # remembered there
            revoke = api.request("DELETE", f"{KEYS}/{keys[0].split('_')[1]}", api.admin_key)
            assert revoke.status_code == 200
            assert assert_problem(there(keys[0]), 401)["detail"] == "API key revoked"
            with api.services.engine.connect() as connection:  # as psql or sqlite3 would
                connection.execute(
                    update(ApiKey)
                    .where(ApiKey.id == keys[1].split("_")[1])
                    .values(expires_at=api.clock() - timedelta(seconds=1))
                )
                connection.commit()
            assert assert_problem(there(keys[1]), 401)["detail"] == "API key expired"
            assert api.request("DELETE", "/api/v1/auth/actors/w3", api.admin_key).status_code == 204
            assert assert_problem(there(keys[2]), 401)["detail"] == "unknown API key"
    finally:
        engine.dispose()


def test_a_remembered_key_reads_only_the_credential_generation(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No read of the key or its roles once it is remembered, on either backend.

    SQLite: no read at all while nothing was committed. PostgreSQL: one read of the counter
    per request, on a connection of the cache's own (before, the key and its roles: two
    statements through the pool on every request).
    """
    key = api.actor_key("cached", ["r-viewer"])
    for _ in range(2):  # read, its last_used_at written; then remembered
        assert api.get(WHOAMI, key).status_code == 200
    cache = key_authentication._key_cache(api.services.engine)
    assert cache is not None
    reads = count_generation_reads(api.services.engine, monkeypatch)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(api.services.engine, "before_cursor_execute", seen)
    try:
        for _ in range(3):
            assert api.get(WHOAMI, key).json()["actor_id"] == "cached"
    finally:
        event.remove(api.services.engine, "before_cursor_execute", seen)
    assert statements == []
    # SQLite without the WAL-index map (a test run opens more databases than it keeps mapped)
    # reads the counter on every request too.
    assert len(reads) == (0 if cache.has_wal_index else 3)


def test_key_can_revoke_itself(api: Api) -> None:
    key = api.key_with_permissions("self", ["auth.apikey.revoke", "auth.apikey.read"])
    r = api.request("DELETE", f"{KEYS}/{key.split('_')[1]}", key)
    assert r.status_code == 200
    assert_problem(api.get(f"{KEYS}/{key.split('_')[1]}", key), 401)


def test_last_used_at_written_at_most_once_a_minute(api: Api) -> None:
    key = api.actor_key("bot", ["r-viewer"])
    key_id = key.split("_")[1]

    def last_used() -> datetime | None:
        value = api.get(f"{KEYS}/{key_id}", api.admin_key).json()["last_used_at"]
        return _parse(value) if value else None

    assert last_used() is None
    first = api.clock()
    assert api.get(WHOAMI, key).status_code == 200
    assert last_used() == first
    api.clock.advance(seconds=59)
    assert api.get(WHOAMI, key).status_code == 200
    assert last_used() == first  # not rewritten within a minute
    api.clock.advance(seconds=1)
    assert api.get(WHOAMI, key).status_code == 200
    assert last_used() == first + timedelta(minutes=1)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Bearer ",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer not-a-key",
        "Bearer cctl_deadbeef_secret",
        "Bearer cctl_",
    ],
)
def test_bad_credentials_are_401(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    before = api.counts()
    assert_problem(api.get(WHOAMI, headers=headers), 401)
    after = api.counts()
    assert after.pop("audit_events") == before.pop("audit_events") + 1
    assert after == before
    event = api.audit()[0]
    assert event["action"] == "auth.failure"
    assert event["actor"] == "anonymous"
    assert event["outcome"] in {"missing", "invalid"}


def test_wrong_secret_for_existing_key_id_is_401(api: Api) -> None:
    key_id = api.admin_key.split("_")[1]
    forged = f"cctl_{key_id}_{'A' * 43}"
    assert_problem(api.get(WHOAMI, forged), 401)
    assert_problem(api.get(WHOAMI, api.admin_key + "x"), 401)


def test_no_escalation_minting_keys(api: Api) -> None:
    key = api.key_with_permissions(
        "limited", ["auth.role.create", "auth.apikey.create", "auth.role.read"]
    )
    before = api.counts()
    r = api.post(KEYS, key, json={"actor_id": "admin", "name": "stolen"})
    assert_problem(r, 403)
    assert "key_value" not in r.text
    api.assert_only_denials_audited(before, 1)
    # An actor whose permissions it holds (itself included) is fine.
    own = api.post(KEYS, key, json={"actor_id": "limited"})
    assert own.status_code == 201, own.text
    api.create_actor("weaker", [])
    assert api.post(KEYS, key, json={"actor_id": "weaker"}).status_code == 201


def test_revoking_a_stronger_actors_key_is_403(api: Api) -> None:
    key = api.key_with_permissions("revoker", ["auth.apikey.revoke", "auth.apikey.read"])
    admin_key_id = api.admin_key.split("_")[1]
    assert_problem(api.request("DELETE", f"{KEYS}/{admin_key_id}", key), 403)
    assert api.get(WHOAMI, api.admin_key).status_code == 200


def test_viewer_cannot_mint_keys(api: Api) -> None:
    key = api.actor_key("viewer", ["r-viewer"])
    assert api.get(KEYS, key).status_code == 200
    assert_problem(api.post(KEYS, key, json={"actor_id": "viewer"}), 403)


def test_expiry_in_other_time_zone(api: Api) -> None:
    expires = api.clock().astimezone(UTC) + timedelta(days=1)
    value = expires.astimezone(timezone(timedelta(hours=2))).isoformat()
    r = api.post(KEYS, api.admin_key, json={"actor_id": "admin", "expires_at": value})
    assert r.status_code == 201, r.text
    assert _parse(r.json()["expires_at"]) == expires


def test_answers_carrying_secrets_are_not_cached_nor_sniffed(api: Api) -> None:
    # A minted key and a server-generated private key are shown once: no browser, proxy or
    # client cache may keep a copy (Cache-Control: no-store on every authenticated answer).
    minted = api.post(KEYS, api.admin_key, json={"actor_id": "admin", "name": "cache"})
    issued = api.post("/api/v1/certificates", api.admin_key, json={"common_name": "c.example.com"})
    listed = api.get(KEYS, api.admin_key)
    assert "key_value" in minted.json()
    assert "private_key_pem" in issued.json()
    for response in (minted, issued, listed):
        assert response.headers["cache-control"] == "no-store", response.request.url
        assert response.headers["x-content-type-options"] == "nosniff"
    # Public answers (the CA certificate, a 401) are not sniffed either, and stay cacheable.
    ca = api.get("/api/v1/issuers/default/ca.pem")
    refused = api.get(WHOAMI)
    assert_problem(refused, 401)
    for response in (ca, refused):
        assert response.headers["x-content-type-options"] == "nosniff"
    # The CA certificate says for how long (test_issuers checks the value), never no-store.
    assert ca.headers["cache-control"].startswith("public, max-age=")
    assert "cache-control" not in refused.headers


def test_several_authorization_headers_are_refused(api: Api) -> None:
    # Which one counts would be a guess (a proxy in front may check the last): certctl took the
    # first, so a valid key followed by anything authenticated.
    for order in ((api.admin_key, "junk"), ("junk", api.admin_key)):
        headers = [("Authorization", f"Bearer {value}") for value in order]
        body = assert_problem(api.client.get(WHOAMI, headers=headers), 401)
        assert body["detail"] == "send one Authorization header, not several"
    assert api.audit()[0]["detail"] == "repeated Authorization header"
    assert api.get(WHOAMI, api.admin_key).status_code == 200  # one header: fine


def test_caller_without_actor_read_cannot_tell_stronger_actors_from_unknown_ones(
    api: Api,
) -> None:
    # Before: minting for an unknown actor answered 404, for a stronger one 403 naming the
    # permissions it holds, so a holder of auth.apikey.create could probe actor ids.
    key = api.key_with_permissions("minter", ["auth.apikey.create", "auth.role.create"])
    before = api.counts()
    answers = set()
    for target in ("admin", "ghost"):
        r = api.post(KEYS, key, json={"actor_id": target})
        answers.add(assert_problem(r, 403)["detail"].replace(target, "ID"))
    assert answers == {
        "cannot mint a key for actor ID: no such actor, or it holds permission(s) you lack "
        "(auth.actor.read tells which)"
    }
    api.assert_only_denials_audited(before, 2)
    # With auth.actor.read (and auth.role.read for the permissions): the precise answers.
    reader = api.key_with_permissions(
        "reader", ["auth.apikey.create", "auth.actor.read", "auth.role.read"]
    )
    assert_problem(api.post(KEYS, reader, json={"actor_id": "ghost"}), 404)
    r = api.post(KEYS, reader, json={"actor_id": "admin"})
    assert "cert.issue" in assert_problem(r, 403)["detail"]
    # Revoking: an unknown key id and a stronger actor's key get the same answer too.
    revoker = api.key_with_permissions("revoker2", ["auth.apikey.revoke"])
    admin_key_id = api.admin_key.split("_")[1]
    answers = set()
    for target in (admin_key_id, "0123456789abcdef"):
        r = api.request("DELETE", f"{KEYS}/{target}", revoker)
        answers.add(assert_problem(r, 403)["detail"].replace(target, "ID"))
    assert answers == {
        "cannot revoke API key ID: no such API key, or its actor holds permission(s) you lack "
        "(auth.apikey.read tells which)"
    }
    assert api.get(WHOAMI, api.admin_key).status_code == 200


def test_addresses_of_one_ipv6_64_share_the_failure_limit(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """A fresh address per guess (any IPv6 host has a /64) was never throttled."""
    from starlette.testclient import TestClient

    from certctl.api.app import create_app
    from certctl.api.throttle import NETWORK_FACTOR, AuthFailureLimiter

    app = create_app(api.services, auth_failure_limiter=AuthFailureLimiter(1, 60))
    forged = bearer(f"cctl_{'0' * 16}_{'A' * 43}")

    def whoami(address: str, headers: dict[str, str]) -> int:
        client = TestClient(app, base_url="https://testserver", client=(address, 50000))
        return client.get(WHOAMI, headers=headers).status_code

    # Limit 1: each address is blocked at its first failure; the /64 at the 16th address.
    statuses = [whoami(f"2001:db8:7:7::{n:x}", forged) for n in range(1, NETWORK_FACTOR + 1)]
    assert statuses == [401] * NETWORK_FACTOR
    assert whoami("2001:db8:7:7:abcd::1", api.admin) == 429
    assert "2001:db8:7:7::/64: 16 authentication failures within 60 s" in caplog.text
    assert whoami("2001:db8:7:8::1", api.admin) == 200
    assert whoami("192.0.2.1", api.admin) == 200


def test_a_key_pasted_where_its_id_belongs_stays_out_of_the_audit_log(api: Api) -> None:
    """The refusal names what was sent as the id; its audit row (403s are) must not keep it.

    Revoking a leaked key by pasting the whole key is the likely mistake, and the audit log
    is read by every holder of audit.read (r-operator, r-auditor).
    """
    revoker = api.key_with_permissions("revoker", ["auth.apikey.revoke"])
    secret = api.admin_key.split("_", 2)[2]
    assert_problem(api.request("DELETE", f"{KEYS}/{api.admin_key}", revoker), 403)
    row = api.audit()[0]
    assert row["outcome"] == "denied"
    assert secret not in json.dumps(row)
    assert f"cctl_{api.admin_key.split('_')[1]}_…" in row["detail"]


def test_a_name_holding_an_api_key_is_refused_without_echoing_it(api: Api) -> None:
    """A key pasted where a name belongs was stored and listed to every holder of the read
    permission (a key is a secret; its name is not). 400, naming the key by its id only."""
    key = api.actor_key("bot", ["r-viewer"])
    key_id, secret = key.split("_")[1], key.split("_", 2)[2]
    before = api.counts()
    attempts = [
        ("POST", KEYS, {"actor_id": "bot", "name": key}),
        ("POST", KEYS, {"actor_id": "bot", "name": f"ci {key}"}),
        ("POST", "/api/v1/auth/actors", {"id": "x", "name": key}),
        ("PATCH", "/api/v1/auth/actors/bot", {"name": key}),
        ("POST", "/api/v1/auth/roles", {"id": "x", "name": key}),
    ]
    for method, path, body in attempts:
        r = api.request(method, path, api.admin_key, json=body)
        detail = assert_problem(r, 400)["detail"]
        assert secret not in r.text
        assert detail == (
            f"name holds an API key (cctl_{key_id}_…): names are listed to other callers; "
            "revoke that key"
        )
    assert api.counts() == before
    # Twin: a name that merely starts like one is a name.
    assert (
        api.post(KEYS, api.admin_key, json={"actor_id": "bot", "name": "cctl_ci"}).status_code
        == 201
    )


def test_a_key_without_its_prefix_is_refused_but_a_long_name_after_a_date_is_a_name(
    api: Api,
) -> None:
    """The check reused the access log's masking, whose bare form (6+ hex digits, "_", 40
    characters with a capital) refused names like a date-prefixed one as "holds an API key"."""
    key = api.actor_key("bot", ["r-viewer"])
    key_id, secret = key.split("_")[1], key.split("_", 2)[2]
    before = api.counts()
    # A whole key with "cctl_" dropped is still a key.
    r = api.post(KEYS, api.admin_key, json={"actor_id": "bot", "name": f"{key_id}_{secret}"})
    assert assert_problem(r, 400)["detail"] == (
        f"name holds an API key ({key_id}_…): names are listed to other callers; revoke that key"
    )
    assert secret not in r.text
    assert api.counts() == before
    names = [
        "20241205_Quarterly-Rotation-Production-Cluster-Scraper-Key-EU1",
        "facade_Frontend-Gateway-Production-Certificates-West-Europe-1",
    ]
    for number, name in enumerate(names):
        minted = api.post(KEYS, api.admin_key, json={"actor_id": "bot", "name": name})
        assert minted.status_code == 201, minted.text
        assert minted.json()["name"] == name
        actor = api.post(
            "/api/v1/auth/actors", api.admin_key, json={"id": f"a{number}", "name": name}
        )
        assert actor.status_code == 201, actor.text
        role = api.post(
            "/api/v1/auth/roles",
            api.admin_key,
            json={"id": f"r{number}", "name": name, "permissions": ["metrics.read"]},
        )
        assert role.status_code == 201, role.text
