"""/api/v1/audit: mutations and authentication failures are recorded, never a secret."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import insert, text

from certctl.metrics.registry import REGISTRY
from certctl.services import audit
from certctl.store.db import create_store_engine, migrate, session_factory
from certctl.store.models import AuditEvent
from tests.api.conftest import Api, PostgresCluster, assert_problem, running_app

AUDIT = "/api/v1/audit"


def test_mutations_are_audited(api: Api) -> None:
    admin = api.admin_key
    api.create_role("deployer", ["cert.issue"])
    api.request("PUT", "/api/v1/auth/roles/deployer", admin, json={"name": "D"})
    api.create_actor("ci", ["deployer"])
    api.request("PATCH", "/api/v1/auth/actors/ci", admin, json={"name": "CI"})
    minted = api.mint_key("ci")
    api.request("DELETE", f"/api/v1/auth/apikeys/{minted['id']}", admin)
    cert = api.issue()
    api.post(f"/api/v1/certificates/{cert['id']}/revoke", admin, json={"reason": "superseded"})
    other = api.issue()
    renewed = api.post(f"/api/v1/certificates/{other['id']}/renew", admin).json()
    api.post("/api/v1/issuers", admin, json={"id": "second"})
    api.request("DELETE", "/api/v1/auth/actors/ci", admin)
    api.request("DELETE", "/api/v1/auth/roles/deployer", admin)

    events = api.audit()
    assert all(e["actor"] == "admin" and e["outcome"] == "success" for e in events[:13])
    actions = [(e["action"], e["target"]) for e in reversed(events)]
    # Bootstrap: the default issuer and the admin key, by "system".
    assert actions[0] == ("issuer.create", "default")
    assert actions[1][0] == "apikey.create"
    assert events[-1]["actor"] == "system"
    assert [a for a, _ in actions[2:]] == [
        "role.create",
        "role.edit",
        "actor.create",
        "actor.edit",
        "apikey.create",
        "apikey.revoke",
        "certificate.issue",
        "certificate.revoke",
        "certificate.issue",
        "certificate.issue",  # the renewal's successor
        "issuer.create",
        "actor.delete",
        "role.delete",
    ]
    targets = dict(enumerate(t for _, t in actions))
    assert targets[2] == "deployer"
    assert targets[6] == f"{minted['id']} (ci)"
    assert targets[7] == f"{minted['id']} (ci)"
    assert targets[8].startswith(cert["id"])
    assert cert["serial"] in targets[8]
    assert targets[9] == cert["id"]
    assert targets[11] == f"{renewed['id']} serial {renewed['serial']} renewing {other['id']}"
    assert "renewing" not in targets[8]
    assert events[0]["source"] == "testclient"
    assert events[0]["at"]
    revoke = next(e for e in events if e["action"] == "certificate.revoke")
    assert revoke["detail"] == "superseded"


def test_auth_failures_are_audited_without_secrets(api: Api) -> None:
    expiring = api.actor_key("temp", ["r-viewer"])
    short = api.mint_key("temp", expires_at=(api.clock() + timedelta(minutes=5)).isoformat())
    revoked = api.mint_key("temp")
    api.request("DELETE", f"/api/v1/auth/apikeys/{revoked['id']}", api.admin_key)
    api.clock.advance(minutes=10)

    forged = f"cctl_{api.admin_key.split('_')[1]}_{'B' * 43}"
    attempts = {
        "missing": None,
        "invalid": forged,
        "expired": short["key_value"],
        "revoked": revoked["key_value"],
    }
    for key in attempts.values():
        assert_problem(api.get("/api/v1/certificates", key), 401)
    assert api.get("/api/v1/certificates", expiring).status_code == 200

    events = api.audit()
    failures = [e for e in events if e["action"] == "auth.failure"]
    assert [e["outcome"] for e in reversed(failures)] == list(attempts)
    for event in failures:
        assert event["actor"] == "anonymous"
        assert event["target"] == "GET /api/v1/certificates"
        assert event["source"] == "testclient"

    r = api.get(AUDIT, api.admin_key, params={"limit": 500})
    secrets = [api.admin_key, expiring, short["key_value"], revoked["key_value"], forged]
    for value in secrets:
        assert value.split("_", 2)[2] not in r.text
    assert "key_value" not in r.text


def test_requests_without_credentials_are_audited_once_a_minute_per_address(api: Api) -> None:
    # Each one was an audit row written on the event loop, unthrottled: an anonymous flood
    # grew the database without bound. They are all still counted and answered 401.
    def missing_rows() -> int:
        events = api.audit()
        return sum(e["action"] == "auth.failure" and e["outcome"] == "missing" for e in events)

    def missing_count() -> float:
        value = REGISTRY.get_sample_value("certctl_auth_failures_total", {"reason": "missing"})
        return value or 0.0

    counted = missing_count()
    for _ in range(20):
        assert_problem(api.get("/api/v1/certificates"), 401)
    assert missing_rows() == 1
    assert missing_count() - counted == 20
    api.clock.advance(seconds=59)
    assert_problem(api.get("/api/v1/auth/whoami"), 401)
    assert missing_rows() == 1
    api.clock.advance(seconds=2)
    assert_problem(api.get("/api/v1/auth/whoami"), 401)
    assert missing_rows() == 2
    # Wrong credentials are still audited one by one (the failure limit bounds them).
    for _ in range(3):
        assert_problem(api.get("/api/v1/certificates", "cctl_nope_nope"), 401)
    invalid = [e for e in api.audit() if e["outcome"] == "invalid"]
    assert len(invalid) == 3


def test_audit_pagination(api: Api) -> None:
    for i in range(5):
        api.create_role(f"role-{i}", [])
    total = len(api.audit())
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get(AUDIT, api.admin_key, params=params).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == total == 7
    assert seen == sorted(seen, reverse=True)


def test_audit_needs_audit_read(api: Api) -> None:
    auditor = api.actor_key("aud", ["r-auditor"])
    assert api.get(AUDIT, auditor).status_code == 200
    metrics = api.actor_key("prom", ["r-metrics-read"])
    assert_problem(api.get(AUDIT, metrics), 403)
    assert_problem(api.get(AUDIT), 401)


def test_grants_say_what_was_granted(api: Api) -> None:
    # "actor.edit ci" alone cannot tell a rename from being made an administrator: the detail
    # holds the roles (or permissions) the target has after the call.
    admin = api.admin_key
    api.create_role("deployer", ["cert.issue"])
    api.request("PUT", "/api/v1/auth/roles/deployer", admin, json={"name": "D"})
    api.request(
        "PUT",
        "/api/v1/auth/roles/deployer",
        admin,
        json={"permissions": ["cert.issue", "cert.read"]},
    )
    api.create_actor("ci", ["deployer"])
    api.request("PATCH", "/api/v1/auth/actors/ci", admin, json={"name": "CI"})
    r = api.request(
        "PATCH", "/api/v1/auth/actors/ci", admin, json={"roles": ["r-admin", "deployer"]}
    )
    assert r.status_code == 200, r.text
    api.request("PATCH", "/api/v1/auth/actors/ci", admin, json={"roles": []})
    details = [
        (e["action"], e["detail"])
        for e in reversed(api.audit())
        if e["action"] in ("role.create", "role.edit", "actor.create", "actor.edit")
    ]
    assert details == [
        ("role.create", "permissions: cert.issue"),
        ("role.edit", "renamed"),
        ("role.edit", "permissions: cert.issue, cert.read"),
        ("actor.create", "roles: deployer"),
        ("actor.edit", "renamed"),
        ("actor.edit", "roles: deployer, r-admin"),
        ("actor.edit", "roles: (none)"),
    ]


def test_requests_without_credentials_from_one_ipv6_64_are_audited_once_a_minute(
    api: Api,
) -> None:
    """An IPv6 client holds a /64: a fresh address per request was an audit row (a commit) each."""
    from starlette.testclient import TestClient

    def missing_rows() -> list[str]:
        events = api.audit()
        return [e["source"] for e in events if e["outcome"] == "missing"]

    app = api.client.app
    for n in range(1, 21):
        client = TestClient(app, base_url="https://testserver", client=(f"2001:db8:5::{n:x}", 1))
        assert_problem(client.get("/api/v1/certificates"), 401)
    assert missing_rows() == ["2001:db8:5::1"]
    # Another /64, and IPv4 clients (mapped ones too), each count on their own.
    for address in ("2001:db8:6::1", "192.0.2.1", "::ffff:192.0.2.2", "::ffff:192.0.2.3"):
        client = TestClient(app, base_url="https://testserver", client=(address, 1))
        assert_problem(client.get("/api/v1/certificates"), 401)
    assert len(missing_rows()) == 5


def test_refused_api_keys_are_audited_naming_the_key_and_its_actor(api: Api) -> None:
    # Each was "anonymous ... unknown API key" / "API key revoked" and nothing more: an auditor
    # could not tell which key was tried, or whose, after a leak. The 401 still says nothing
    # of whether the id exists.
    api.actor_key("ci", ["r-viewer"])
    live = api.mint_key("ci")
    revoked = api.mint_key("ci")
    api.request("DELETE", f"/api/v1/auth/apikeys/{revoked['id']}", api.admin_key)
    short = api.mint_key("ci", expires_at=(api.clock() + timedelta(minutes=5)).isoformat())
    # Used once while valid, after the last change to the keys (a revocation moves the
    # credential generation on, and the cached entry with it): its expiry is then decided
    # from the cache, as a busy key's is, and the revoked key's from the store.
    assert api.get("/api/v1/auth/whoami", short["key_value"]).status_code == 200
    api.clock.advance(minutes=10)

    wrong_secret = f"cctl_{live['id']}_{'B' * 43}"
    no_such_key = f"cctl_{'0' * 16}_{'C' * 43}"
    tried = [wrong_secret, no_such_key, short["key_value"], revoked["key_value"]]
    bodies = [assert_problem(api.get("/api/v1/certificates", key), 401) for key in tried]
    assert [b["detail"] for b in bodies] == [
        "unknown API key",
        "unknown API key",
        "API key expired",
        "API key revoked",
    ]

    failures = [e for e in reversed(api.audit()) if e["action"] == "auth.failure"]
    assert [(e["outcome"], e["detail"]) for e in failures] == [
        ("invalid", f"unknown API key: key {live['id']} (actor ci) with a wrong secret"),
        ("invalid", f"unknown API key: no key {'0' * 16}"),
        ("expired", f"API key expired: key {short['id']} (actor ci)"),
        ("revoked", f"API key revoked: key {revoked['id']} (actor ci)"),
    ]
    assert all(e["actor"] == "anonymous" for e in failures)
    # A key whose secret matched (revoked or expired, still in use: its holder has it) is the
    # call's credential, so ?credential= finds what a leaked key tried after its revocation; a
    # wrong secret is no one's credential.
    assert [e["credential"] for e in failures] == [
        "",
        "",
        f"apikey {short['id']}",
        f"apikey {revoked['id']}",
    ]
    for key in (short, revoked):
        found = api.get(AUDIT, api.admin_key, params={"credential": f"apikey {key['id']}"})
        assert found.status_code == 200, found.text
        assert "auth.failure" in [e["action"] for e in found.json()["items"]]
    text = api.get(AUDIT, api.admin_key, params={"limit": 500}).text
    for key in tried:
        assert key.split("_", 2)[2] not in text


def test_audit_filters_by_actor_action_outcome_target_and_time(api: Api) -> None:
    # ?actor=ci was a 400 "unknown query parameter(s)": an auditor asking what one actor did,
    # or what happened to one certificate, had to page through the whole log.
    ci = api.key_with_permissions("ci", ["cert.issue", "cert.read"])
    start = api.clock()
    api.clock.advance(minutes=1)
    mine = api.issue(ci)
    api.issue()
    assert_problem(api.post("/api/v1/issuers", ci, json={"id": "nope"}), 403)
    api.clock.advance(minutes=1)
    later = api.clock()
    api.post(f"/api/v1/certificates/{mine['id']}/revoke", api.admin_key, json={})

    def listed(**params: str) -> list[tuple[str, str, str]]:
        r = api.get(AUDIT, api.admin_key, params=params)
        assert r.status_code == 200, r.text
        return [(e["actor"], e["action"], e["outcome"]) for e in reversed(r.json()["items"])]

    assert listed(actor="ci") == [
        ("ci", "certificate.issue", "success"),
        ("ci", "issuer.create", "denied"),
    ]
    assert listed(action="certificate.revoke") == [("admin", "certificate.revoke", "success")]
    assert listed(outcome="denied") == [("ci", "issuer.create", "denied")]
    assert listed(target=mine["id"]) == [
        ("ci", "certificate.issue", "success"),
        ("admin", "certificate.revoke", "success"),
    ]
    assert listed(actor="ci", action="certificate.issue") == [
        ("ci", "certificate.issue", "success")
    ]
    window = {"since": (start + timedelta(seconds=30)).isoformat(), "until": later.isoformat()}
    assert listed(**window) == [
        ("ci", "certificate.issue", "success"),
        ("admin", "certificate.issue", "success"),
        ("ci", "issuer.create", "denied"),
    ]
    # A time without a zone is UTC, "Z" is too; "since" is inclusive, "until" exclusive.
    naive = later.replace(tzinfo=None).isoformat()
    assert listed(since=naive) == [("admin", "certificate.revoke", "success")]
    assert listed(until=later.isoformat().replace("+00:00", "Z"))[-1][2] == "denied"
    assert listed(target="_%") == []  # LIKE wildcards are literal

    # Filters page as the whole log does, the cursor kept with them.
    first = api.get(AUDIT, api.admin_key, params={"actor": "ci", "limit": 1}).json()
    assert [e["action"] for e in first["items"]] == ["issuer.create"]
    rest = api.get(
        AUDIT, api.admin_key, params={"actor": "ci", "limit": 1, "cursor": first["next_cursor"]}
    ).json()
    assert [e["action"] for e in rest["items"]] == ["certificate.issue"]
    assert rest["next_cursor"] is None

    for params, detail in [
        ({"actor": ""}, "actor: empty (leave it out for no filter)"),
        (
            {"since": "2026-12-05T15:00:00 01:00"},
            "since=2026-12-05T15:00:00 01:00: not an ISO 8601 time (2026-12-05T15:00:00Z; "
            "a +01:00 offset must be sent as %2B01:00)",
        ),
        ({"until": "yesterday"}, "until=yesterday: not an ISO 8601 time"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since=0001-01-01T00:00:00+01:00: out of range"),
        ({"who": "ci"}, "unknown query parameter(s): who"),
        # Swapped bounds matched nothing, an empty page read as "nothing happened".
        (
            {"since": later.isoformat(), "until": start.isoformat()},
            f"since={later.isoformat()} is not before until={start.isoformat()}: "
            "no event can match (since is inclusive, until exclusive)",
        ),
        (
            {"since": "2026-12-05T16:00:00+01:00", "until": "2026-12-05T15:00:00Z"},
            "since=2026-12-05T16:00:00+01:00 is not before until=2026-12-05T15:00:00Z",
        ),
    ]:
        body = assert_problem(api.get(AUDIT, api.admin_key, params=params), 400)
        assert body["detail"].startswith(detail), body


def test_one_action_filter_finds_the_successes_and_the_refusals_alike(api: Api) -> None:
    # A 403 was recorded under its method and route (POST /api/v1/certificates): an auditor
    # asking ?action=certificate.issue saw the issuances and missed who was refused one.
    viewer = api.key_with_permissions("viewer", ["cert.read", "auth.role.create"])
    cert = api.issue()
    assert_problem(api.post("/api/v1/certificates", viewer, json={"common_name": "x"}), 403)
    assert_problem(api.post(f"/api/v1/certificates/{cert['id']}/renew", viewer), 403)
    # A service's refusal too (the route's permission held, the role's permissions not).
    role = {"id": "r-up", "permissions": ["cert.issue"]}
    assert_problem(api.post("/api/v1/auth/roles", viewer, json=role), 403)
    api.create_role("r-fine", ["cert.read"])

    def listed(**params: str) -> list[tuple[str, str, str, str]]:
        r = api.get(AUDIT, api.admin_key, params=params)
        assert r.status_code == 200, r.text
        return [
            (e["actor"], e["outcome"], e["target"], e["detail"])
            for e in reversed(r.json()["items"])
        ]

    issued = listed(action="certificate.issue")
    assert [(actor, outcome) for actor, outcome, _, _ in issued] == [
        ("admin", "success"),
        ("viewer", "denied"),
        ("viewer", "denied"),  # a renewal is an issuance, refused or not
    ]
    # The refused permission in the detail, the request's path in the target, as before.
    assert issued[1][2:] == ("/api/v1/certificates", "missing permission cert.issue")
    assert issued[2][2:] == (
        f"/api/v1/certificates/{cert['id']}/renew",
        "missing permission cert.issue",
    )
    assert listed(action="role.create", outcome="denied") == [
        (
            "viewer",
            "denied",
            "/api/v1/auth/roles",
            "cannot create this role: it needs permission(s) you lack: cert.issue",
        )
    ]
    assert [a for a, o, _, _ in listed(action="role.create")] == ["admin", "viewer", "admin"]
    assert listed(action="POST /api/v1/certificates") == []  # the old form names nothing now


def test_an_auditor_role_of_ones_own_looks_up_the_actors_and_keys_events_name(api: Api) -> None:
    # r-auditor (audit.read alone, DESIGN §4) sees ids it cannot look up; the README's role
    # for an auditor who must adds the reads of actors, keys and roles, none showing a secret.
    api.create_role(
        "r-audit-lookup", ["audit.read", "auth.actor.read", "auth.apikey.read", "auth.role.read"]
    )
    auditor = api.actor_key("auditor", ["r-audit-lookup"])
    ci = api.key_with_permissions("ci", ["cert.issue"])
    api.issue(ci)
    r = api.get(AUDIT, auditor, params={"actor": "ci", "action": "certificate.issue"})
    [event] = r.json()["items"]
    key_id = event["credential"].removeprefix("apikey ")
    assert ci.split("_")[1] == key_id
    key = api.get(f"/api/v1/auth/apikeys/{key_id}", auditor)
    assert key.status_code == 200, key.text
    assert key.json()["actor_id"] == "ci"
    assert "key_value" not in key.json()
    assert ci.split("_", 2)[2] not in key.text
    actor = api.get("/api/v1/auth/actors/ci", auditor)
    assert actor.status_code == 200, actor.text
    assert actor.json()["roles"] == ["p-ci"]
    role = api.get("/api/v1/auth/roles/p-ci", auditor).json()
    assert role["permissions"] == ["cert.issue"]
    # The built-in r-auditor, as DESIGN §4 has it, may not.
    plain = api.actor_key("plain-auditor", ["r-auditor"])
    assert_problem(api.get(f"/api/v1/auth/apikeys/{key_id}", plain), 403)
    assert_problem(api.get("/api/v1/auth/actors/ci", plain), 403)


def test_key_revocations_and_actor_deletions_say_which_keys_whose(api: Api) -> None:
    # apikey.revoke named the key id alone, a second revocation (a no-op) read as a first,
    # and actor.delete, which deletes the actor's keys, left no word of which keys ended.
    api.actor_key("ci", ["r-viewer"])
    second = api.mint_key("ci")
    first_key = next(
        k["id"]
        for k in api.get("/api/v1/auth/apikeys", api.admin_key).json()["items"]
        if k["actor_id"] == "ci" and k["id"] != second["id"]
    )
    for _ in range(2):
        r = api.request("DELETE", f"/api/v1/auth/apikeys/{second['id']}", api.admin_key)
        assert r.status_code == 200, r.text
    revoked_at = r.json()["revoked_at"]
    assert api.request("DELETE", "/api/v1/auth/actors/ci", api.admin_key).status_code == 204
    events = [
        (e["action"], e["target"], e["detail"])
        for e in reversed(api.audit())
        if e["action"] in ("apikey.revoke", "actor.delete")
    ]
    assert events == [
        ("apikey.revoke", f"{second['id']} (ci)", ""),
        ("apikey.revoke", f"{second['id']} (ci)", f"already revoked at {revoked_at}"),
        (
            "actor.delete",
            "ci",
            f"API keys deleted: {', '.join(sorted([first_key, second['id']]))}",
        ),
    ]


def test_a_service_written_again_unchanged_is_audited_as_unchanged(api: Api) -> None:
    # `certctl apply` said "unchanged" while the audit log read service.edit, as for a change.
    doc = {
        "apiVersion": "certctl.io/v1",
        "kind": "TLSService",
        "metadata": {"name": "web"},
        "spec": {"http": {"tls": {"selfSignedCertificate": {"subjectAltNames": []}}}},
    }
    path = "/api/v1/services/web"
    assert api.request("PUT", path, api.admin_key, json=doc).status_code == 201
    assert api.request("PUT", path, api.admin_key, json=doc).status_code == 200
    doc["spec"]["http"]["tls"]["selfSignedCertificate"]["subjectAltNames"] = [
        {"dns": "web.example.internal"}
    ]
    assert api.request("PUT", path, api.admin_key, json=doc).status_code == 200
    events = [
        (e["action"], e["detail"])
        for e in reversed(api.audit())
        if e["action"] in ("service.create", "service.edit")
    ]
    assert events == [
        ("service.create", "generation 1"),
        ("service.edit", "unchanged (generation 1)"),
        ("service.edit", "generation 2"),
    ]


def test_each_call_names_the_api_key_that_made_it(api: Api) -> None:
    # The actor alone was recorded: with two keys for one actor (two machines, a rotation),
    # what a leaked key had done could not be told from what the other had.
    ci = api.key_with_permissions("ci", ["cert.issue", "cert.read"])
    other = api.mint_key("ci")
    ci_id = ci.split("_")[1]
    cert = api.issue(ci)
    r = api.post(f"/api/v1/certificates/{cert['id']}/renew", other["key_value"])
    assert r.status_code == 201, r.text
    assert_problem(api.post("/api/v1/issuers", other["key_value"], json={"id": "x"}), 403)
    admin_id = api.admin_key.split("_")[1]
    events = [
        (e["actor"], e["action"], e["credential"])
        for e in reversed(api.audit())
        if e["actor"] == "ci" or e["action"] == "apikey.create"
    ]
    assert events == [
        ("system", "apikey.create", ""),  # the bootstrap's: no key made it
        ("admin", "apikey.create", f"apikey {admin_id}"),
        ("admin", "apikey.create", f"apikey {admin_id}"),
        ("ci", "certificate.issue", f"apikey {ci_id}"),
        ("ci", "certificate.issue", f"apikey {other['id']}"),  # the renewal
        ("ci", "issuer.create", f"apikey {other['id']}"),
    ]
    only = api.get(AUDIT, api.admin_key, params={"credential": f"apikey {other['id']}"})
    assert [e["action"] for e in only.json()["items"]] == [
        "issuer.create",
        "certificate.issue",
    ]
    # Any other form matched nothing ("no events" for a key that made three): a 400 saying
    # the form, never echoing a secret.
    form = "not a credential as the audit log writes one (apikey <key id>)"
    meant = f"{form}: did you mean 'apikey {other['id']}'?"
    for value, says in [
        (other["id"], meant),
        (other["key_value"], meant),
        (f"apikey {other['id'].upper()}", form),
        ("ci", form),
    ]:
        body = assert_problem(api.get(AUDIT, api.admin_key, params={"credential": value}), 400)
        assert body["detail"].endswith(says), body
        assert other["key_value"].split("_", 2)[2] not in body["detail"]


def test_a_cursor_beyond_every_audit_id_lists_from_the_newest(api: Api) -> None:
    """A cursor of up to 18 digits is taken; past every id it is the first page, on both stores.

    schemathesis found ``?cursor=975541824920628737`` answered 500 on PostgreSQL (its audit ids
    are 32-bit, and the cursor was sent as one: "integer out of range"), 200 on SQLite.
    """
    api.create_role("cursor-role", [])
    first = api.get(AUDIT, api.admin_key, params={"limit": 3})
    assert first.status_code == 200, first.text
    for cursor in ("2147483648", "975541824920628737", "999999999999999999"):
        r = api.get(AUDIT, api.admin_key, params={"limit": 3, "cursor": cursor})
        assert r.status_code == 200, (cursor, r.text)
        assert r.json() == first.json()
    assert_problem(api.get(AUDIT, api.admin_key, params={"cursor": "9" * 19}), 400)


def test_the_target_filter_is_a_substring_in_either_case_on_every_backend(api: Api) -> None:
    # SQLite's LIKE folds ASCII case, PostgreSQL's does not: a serial pasted from `openssl x509
    # -serial` (upper case) found the certificate's events on SQLite and nothing on PostgreSQL.
    cert = api.issue()
    serial = cert["serial"].replace(":", "")
    api.create_role("ops_x", ["cert.read"])
    api.create_role("opsyx", ["cert.read"])

    def targets(target: str) -> list[str]:
        r = api.get(AUDIT, api.admin_key, params={"target": target})
        assert r.status_code == 200, r.text
        return [e["target"] for e in r.json()["items"]]

    assert serial.lower() != serial.upper()  # hex letters: the case matters to the test
    found = targets(serial.upper())
    assert len(found) == 1, found
    assert serial.lower() in found[0].lower(), found
    assert targets(serial.lower()) == found
    assert targets(cert["id"].upper()) == targets(cert["id"])
    # "_" and "%" are themselves, not LIKE wildcards, in either case too.
    assert targets("OPS_X") == ["ops_x"]
    assert targets("ops%") == []


def _explained(api: Api, where: audit.AuditFilter) -> tuple[str, list[str]]:
    """The plan of the statement ``list_audit`` runs for ``where``, and what it found."""
    engine = api.services.engine
    sent: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        sent.append((args[2], args[3]))  # statement, parameters

    sqlalchemy_event.listen(engine, "before_cursor_execute", capture)
    try:
        with api.services.sessions() as session:
            found = [e.actor for e in audit.list_audit(session, limit=51, after=None, where=where)]
    finally:
        sqlalchemy_event.remove(engine, "before_cursor_execute", capture)
    [(statement, parameters)] = [s for s in sent if "FROM audit_events" in s[0]]
    explain = "EXPLAIN" if api.backend == "postgresql" else "EXPLAIN QUERY PLAN"
    with engine.connect() as connection:
        plan = connection.exec_driver_sql(f"{explain} {statement}", parameters).all()
    return " | ".join(str(row[-1]) for row in plan), found


def test_each_exact_filter_reads_its_index_on_every_backend(api: Api) -> None:
    # Every filter read the table backwards by id, keeping what matched: a rare actor's page
    # read every event (~25 ms at 200,000 on SQLite, ten times that at 2,000,000).
    common = audit.event_values(
        at=api.clock(), actor="ci", action="certificate.issue", credential="apikey " + "1" * 16
    )
    rare = audit.event_values(
        at=api.clock(),
        actor="rare-bot",
        action="kek.rotate",
        outcome="denied",
        credential="apikey 00000000deadbeef",
    )
    with api.services.sessions.begin() as session:
        session.execute(insert(AuditEvent), [common] * 3000 + [rare] * 2)
    if api.backend == "postgresql":
        with api.services.engine.begin() as connection:
            connection.execute(text("ANALYZE audit_events"))  # as 0026 and autovacuum do
    for where, index in [
        (audit.AuditFilter(actor="rare-bot"), "ix_audit_events_actor"),
        (audit.AuditFilter(credential="apikey 00000000deadbeef"), "ix_audit_events_credential"),
        (audit.AuditFilter(action="kek.rotate"), "ix_audit_events_action"),
        (audit.AuditFilter(outcome="denied"), "ix_audit_events_outcome"),
        # The outcome (a handful of values) is checked on the actor's rows, never the other
        # way round: SQLite, planning without statistics, read every success by its index.
        (audit.AuditFilter(actor="rare-bot", outcome="success"), "ix_audit_events_actor"),
    ]:
        plan, found = _explained(api, where)
        assert index in plan, (where, plan)
        expected = 0 if where.outcome == "success" else 2
        assert found == ["rare-bot"] * expected, where
    # Negative twin: the plan is the query's own, a filter without an index scans.
    plan, found = _explained(api, audit.AuditFilter(target="no such target"))
    assert "ix_audit_events" not in plan, plan
    assert found == []


def test_actors_of_any_length_are_audited_and_found_exactly(api: Api) -> None:
    # The actor's index holds its first 200 characters: a PostgreSQL B-tree entry cannot pass
    # 2,704 bytes, and an index on the whole actor refused the audit row (and so the call) of
    # a client certificate with a long subject. Actors alike in those 200 stay apart.
    long = "cert:CN=" + secrets.token_urlsafe(3000)
    actors = [long + "1", long + "2", long[:200], long[:199], long[:201]]
    with api.services.sessions.begin() as session:
        for actor in actors:
            audit.record(session, at=api.clock(), actor=actor, action="certificate.issue")
    for actor in actors:
        r = api.get(AUDIT, api.admin_key, params={"actor": actor})
        assert r.status_code == 200, r.text
        assert [e["actor"] for e in r.json()["items"]] == [actor]
    r = api.get(AUDIT, api.admin_key, params={"actor": long})
    assert r.json()["items"] == []  # a prefix of them, no actor itself


def test_actors_are_found_exactly_in_a_postgresql_database_that_counts_bytes(
    postgres_cluster: PostgresCluster,
) -> None:
    # A SQL_ASCII database (initdb's default under the C locale; certctl always asks
    # for client_encoding utf8) cuts substr() in bytes, not characters: the prefix cut in Python
    # was another, and an actor with accents past 200 bytes was never found.
    import psycopg

    database = f"certctl_sql_ascii_{secrets.token_hex(4)}"
    admin = f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(
            f"CREATE DATABASE {database} TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C'"
        )
    engine = create_store_engine(f"{postgres_cluster.url(database)}?client_encoding=utf8")
    try:
        migrate(engine)
        sessions = session_factory(engine)
        accented = "cert:CN=" + "é" * 150  # 158 characters, 308 bytes
        actors = [accented, accented + "é", "cert:CN=" + "é" * 3000, "cert:CN=" + "x" * 300, "ci"]
        with sessions.begin() as session:
            for actor in actors:
                audit.record(session, at=datetime.now(UTC), actor=actor, action="cert.issue")
        with sessions() as session:
            for actor in actors:
                found = audit.list_audit(
                    session, limit=10, after=None, where=audit.AuditFilter(actor=actor)
                )
                assert [e.actor for e in found] == [actor], len(actor)
            prefix = audit.AuditFilter(actor=accented[:-1])
            assert audit.list_audit(session, limit=10, after=None, where=prefix) == []
    finally:
        engine.dispose()


def _sql_ascii_database(cluster: PostgresCluster, encoding: str = "SQL_ASCII") -> str:
    # initdb's default under the C locale: a VARCHAR(n) there holds n bytes, not characters.
    import psycopg

    database = f"certctl_{encoding.lower()}_{secrets.token_hex(4)}"
    admin = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(
            f"CREATE DATABASE {database} TEMPLATE template0 ENCODING '{encoding}' LOCALE 'C'"
        )
    return cluster.url(database)


def test_a_refusal_on_a_long_path_with_accents_is_audited_in_a_sql_ascii_database(
    postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    # The audit's target was cut to 200 characters, which a SQL_ASCII database took for 400
    # bytes of "é": the write failed, the 401 became a 500, and the attempt went unrecorded.
    path = "/api/v1/auth/actors/" + "é" * 200
    unknown = "cctl_" + "a" * 16 + "_" + "b" * 43
    with running_app("postgresql", tmp_path / "data", _sql_ascii_database(postgres_cluster)) as api:
        assert_problem(api.request("DELETE", path, unknown), 401)
        assert_problem(api.request("DELETE", path, api.key_with_permissions("idle", [])), 403)
        refusals = [e for e in api.audit() if e["outcome"] != "success"]
        assert [e["outcome"] for e in refusals] == ["denied", "invalid"], refusals
        for refusal in refusals:
            assert "/api/v1/auth/actors/éé" in refusal["target"]
            assert len(refusal["target"].encode()) <= 200


def test_a_refusal_on_a_path_a_latin1_database_cannot_store_is_audited_escaped(
    postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    # LATIN1 has no byte for "日": the refusal's audit row was refused (22P05), and the 401 or
    # 403 became a 400 with the attempt unrecorded.
    path = "/api/v1/auth/actors/日本"
    url = _sql_ascii_database(postgres_cluster, "LATIN1")
    with running_app("postgresql", tmp_path / "data", url) as api:
        assert_problem(api.request("DELETE", path), 401)
        assert_problem(api.request("DELETE", path, api.key_with_permissions("idle", [])), 403)
        refusals = [e for e in api.audit() if e["outcome"] != "success"]
        assert [(e["outcome"], e["target"]) for e in refusals] == [
            ("denied", "/api/v1/auth/actors/\\u65e5\\u672c"),
            ("missing", "DELETE /api/v1/auth/actors/\\u65e5\\u672c"),
        ]
        assert refusals[0]["detail"] == "missing permission auth.actor.delete"


def _readme_actions() -> set[str]:
    """The actions the README's event table names: ``role.create``/``.edit`` is role.create
    and role.edit (a leading dot replaces the last part of the name before it)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (cell,) = [line for line in readme.splitlines() if line.startswith("| `action` |")]
    named: set[str] = set()
    base = ""
    for token in re.findall(r"`([a-z.-]+)`", cell.split("|")[2]):
        if token.startswith("."):
            named.add(base + token)
        elif "." in token:
            named.add(token)
            base = token.rsplit(".", 1)[0]
    return named


def test_the_readme_names_every_action_the_audit_log_records() -> None:
    # `--action` filters on exact names: the README's table listed none of the ACME server's.
    src = Path(__file__).resolve().parents[2] / "src" / "certctl"
    recorded = {
        action
        for path in src.rglob("*.py")
        for action in re.findall(r'action="([a-z][a-z-]*(?:\.[a-z-]+)+)"', path.read_text())
    }
    assert "acme.order.create" in recorded, recorded  # the search finds what it should
    assert sorted(recorded - _readme_actions()) == []
