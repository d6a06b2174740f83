"""Authorization matrix: every route of ``ROUTES`` × every kind of caller → 401, 403 or allowed.

Expectations are computed from the route's permission (pinned again in ``EXPECTED``, so a route
added to the table without an entry here fails) and from the caller's permissions (the built-in
roles as DESIGN §4 writes them, ``tests.api.test_auth_roles.BUILTIN``). A refused caller must
get exactly 401 (with ``WWW-Authenticate``) or 403 as problem+json; an allowed caller anything
but 401/403/5xx (404 or 409 once an earlier allowed caller deleted or created the object; to a
caller that may not read such objects, a deleted one is the 403 "no such …, or it holds
permission(s) you lack", accepted only when the admin is told 404 for it: the path's object,
or the actor a key is minted for).
Every request comes from its own peer address, so no refusal is a rate-limit side effect.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from certctl.api._common import AUTHENTICATED, PUBLIC
from certctl.api.app import ROUTES
from certctl.api.authentication import ClientCertMapping
from certctl.services.issuance import new_id
from certctl.store.models import AcmeAccount
from tests.api.conftest import assert_problem, bearer
from tests.api.test_auth_roles import ALL_PERMISSIONS, BUILTIN
from tests.reliability.conftest import LEDGER, RelApp, from_address, mtls, running_app

SERVICE = "t-svc"
MTLS_PATTERN = "CN=*,O=certctl-matrix"
MTLS_ROLES = ("r-operator",)


def _service_doc(name: str) -> dict[str, Any]:
    return {"apiVersion": "certctl.io/v1", "kind": "TLSService", "metadata": {"name": name}}


# (method, path) → (permission, JSON body for the allowed callers). Bodies are chosen so an
# allowed caller passes validation and the no-escalation rules (target objects hold nothing).
EXPECTED: dict[tuple[str, str], tuple[str, Any]] = {
    ("GET", "/healthz"): (PUBLIC, None),
    ("GET", "/readyz"): (PUBLIC, None),
    ("GET", "/api/v1/openapi.json"): (PUBLIC, None),
    ("GET", "/api/v1/auth/whoami"): (AUTHENTICATED, None),
    ("GET", "/api/v1/auth/permissions"): ("auth.role.read", None),
    ("GET", "/api/v1/auth/roles"): ("auth.role.read", None),
    ("POST", "/api/v1/auth/roles"): ("auth.role.create", {"id": "m-role", "permissions": []}),
    ("GET", "/api/v1/auth/roles/{id}"): ("auth.role.read", None),
    ("PUT", "/api/v1/auth/roles/{id}"): ("auth.role.edit", {"name": "t", "permissions": []}),
    ("DELETE", "/api/v1/auth/roles/{id}"): ("auth.role.delete", None),
    ("GET", "/api/v1/auth/actors"): ("auth.actor.read", None),
    ("POST", "/api/v1/auth/actors"): ("auth.actor.create", {"id": "m-actor", "roles": []}),
    ("GET", "/api/v1/auth/actors/{id}"): ("auth.actor.read", None),
    ("PATCH", "/api/v1/auth/actors/{id}"): ("auth.actor.edit", {"name": "renamed"}),
    ("DELETE", "/api/v1/auth/actors/{id}"): ("auth.actor.delete", None),
    ("GET", "/api/v1/auth/apikeys"): ("auth.apikey.read", None),
    ("POST", "/api/v1/auth/apikeys"): ("auth.apikey.create", {"actor_id": "t-actor"}),
    ("GET", "/api/v1/auth/apikeys/{id}"): ("auth.apikey.read", None),
    ("DELETE", "/api/v1/auth/apikeys/{id}"): ("auth.apikey.revoke", None),
    ("GET", "/api/v1/issuers"): ("issuer.read", None),
    ("POST", "/api/v1/issuers"): ("issuer.create", {"id": "m-ca", "common_name": "Matrix CA"}),
    ("GET", "/api/v1/issuers/{id}"): ("issuer.read", None),
    # The default issuer is a root: an allowed caller gets 409, nothing is revoked.
    ("POST", "/api/v1/issuers/{id}/revoke"): ("issuer.revoke", {"reason": "cACompromise"}),
    ("GET", "/api/v1/issuers/{id}/ca.pem"): (PUBLIC, None),
    ("GET", "/api/v1/issuers/{id}/ca.der"): (PUBLIC, None),
    ("GET", "/api/v1/issuers/{id}/crl"): (PUBLIC, None),
    ("POST", "/api/v1/issuers/{id}/ocsp"): (PUBLIC, None),
    ("GET", "/api/v1/issuers/{id}/ocsp/{request}"): (PUBLIC, None),
    ("GET", "/api/v1/certificates"): ("cert.read", None),
    ("POST", "/api/v1/certificates"): ("cert.issue", {"common_name": "m.example.com"}),
    # A certificate certctl issued is recorded already: an allowed caller gets 409.
    ("POST", "/api/v1/certificates/import"): ("cert.issue", "client-pem"),
    ("GET", "/api/v1/certificates/{id}"): ("cert.read", None),
    ("POST", "/api/v1/certificates/{id}/revoke"): ("cert.revoke", {"reason": "superseded"}),
    ("POST", "/api/v1/certificates/{id}/renew"): ("cert.issue", {}),
    ("GET", "/api/v1/audit"): ("audit.read", None),
    ("GET", "/api/v1/metrics"): ("metrics.read", None),
    ("GET", "/api/v1/metrics/prometheus"): ("metrics.read", None),
    ("GET", "/api/v1/services"): ("service.read", None),
    ("GET", "/api/v1/services/{name}"): ("service.read", None),
    ("PUT", "/api/v1/services/{name}"): ("service.edit", _service_doc(SERVICE)),
    ("DELETE", "/api/v1/services/{name}"): ("service.delete", None),
    ("POST", "/api/v1/services/{name}/renew"): ("service.edit", None),
    # The service keeps no replaced CA: an allowed caller gets 409, nothing changes.
    ("DELETE", "/api/v1/services/{name}/retired-ca"): ("service.edit", None),
    ("GET", "/api/v1/services/{name}/clients"): ("service.read", None),
    ("POST", "/api/v1/services/{name}/clients"): ("service.edit", "client-pem"),
    ("DELETE", "/api/v1/services/{name}/clients/{fingerprint}"): ("service.edit", None),
    ("GET", "/api/v1/services/{name}/outputs/{output}"): ("service.read", None),
    ("GET", "/api/v1/acme/eab-keys"): ("cert.read", None),
    ("POST", "/api/v1/acme/eab-keys"): ("cert.issue", {"name": "m-eab"}),
    ("GET", "/api/v1/acme/eab-keys/{id}"): ("cert.read", None),
    ("DELETE", "/api/v1/acme/eab-keys/{id}"): ("cert.revoke", None),
    ("GET", "/api/v1/acme/accounts"): ("cert.read", None),
    ("GET", "/api/v1/acme/accounts/{id}"): ("cert.read", None),
    ("POST", "/api/v1/acme/accounts/{id}/deactivate"): ("cert.revoke", None),
}


@dataclass(frozen=True)
class Caller:
    """One column of the matrix: how it authenticates and what it may do (None: nothing)."""

    name: str
    headers: dict[str, str]
    permissions: frozenset[str] | None  # None: the credentials are refused (401)
    least_privilege: bool = False  # holds exactly the route's permission


@dataclass
class World:
    """The app and the objects the routes act on."""

    app: RelApp
    callers: list[Caller]
    ids: dict[str, str]
    client_pem: str
    lp_keys: dict[str, str]  # permission ("" for none) → key of a role holding exactly it


def _acme_account(app: RelApp) -> str:
    """An ACME account as new-account stores one (the matrix app serves no ACME): its id."""
    account_id = new_id()
    with app.services.sessions.begin() as session:
        session.add(
            AcmeAccount(
                id=account_id,
                thumbprint=f"matrix-{account_id}",
                jwk={},
                status="valid",
                contact=[],
                created_at=app.services.clock(),
            )
        )
    return account_id


def _mint(app: RelApp, actor: str, roles: list[str], **extra: Any) -> dict[str, Any]:
    app.ok("POST", "/api/v1/auth/actors", 201, json={"id": actor, "roles": roles})
    body: dict[str, Any] = app.ok(
        "POST", "/api/v1/auth/apikeys", 201, json={"actor_id": actor, **extra}
    )
    return body


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    mapping = ClientCertMapping(MTLS_PATTERN, MTLS_ROLES)
    data_dir = tmp_path_factory.mktemp("matrix") / "data"
    with running_app(data_dir, sqlite_template, client_cert_mappings=(mapping,)) as app:
        callers: list[Caller] = []
        # Refused credentials.
        expiring = _mint(
            app,
            "a-expired",
            ["r-admin"],
            expires_at=(app.clock() + timedelta(hours=1)).isoformat(),
        )
        revoked = _mint(app, "a-revoked", ["r-admin"])
        app.ok("DELETE", f"/api/v1/auth/apikeys/{revoked['id']}")
        valid = _mint(app, "a-probe", [])["key_value"]
        prefix, key_id, secret = valid.split("_", 2)
        callers += [
            Caller("no header", {}, None),
            Caller("malformed: Basic", {"Authorization": "Basic YWRtaW46YWRtaW4="}, None),
            Caller("malformed: empty Bearer", {"Authorization": "Bearer "}, None),
            Caller("malformed: not a key", bearer("not-a-certctl-key"), None),
            Caller("unknown key id", bearer(f"{prefix}_{'0' * len(key_id)}_{secret}"), None),
            Caller("unknown secret", bearer(f"{prefix}_{key_id}_{secret[::-1]}x"), None),
            Caller("expired key", bearer(expiring["key_value"]), None),
            Caller("revoked key", bearer(revoked["key_value"]), None),
            Caller("mTLS unmapped", mtls("CN=stranger,O=elsewhere"), None),
        ]
        for caller in callers:  # what was presented must not be echoed or stored either
            token = caller.headers.get("Authorization", "").partition(" ")[2]
            LEDGER.secret(token, f"credential presented by '{caller.name}'")
        # Allowed credentials.
        for role in sorted(BUILTIN):
            key = _mint(app, f"a-{role}", [role])["key_value"]
            callers.append(Caller(role, bearer(key), frozenset(BUILTIN[role])))
        lp_keys = {}
        for permission in [*sorted(ALL_PERMISSIONS), ""]:
            role = f"lp-{permission.replace('.', '-') or 'none'}"
            app.ok("POST", "/api/v1/auth/roles", 201, json={"id": role, "permissions": []})
            app.ok(
                "PUT",
                f"/api/v1/auth/roles/{role}",
                json={"permissions": [permission] if permission else []},
            )
            lp_keys[permission] = _mint(app, f"a-{role}", [role])["key_value"]
        callers.append(Caller("least privilege", {}, None, least_privilege=True))
        mapped = frozenset().union(*(BUILTIN[r] for r in MTLS_ROLES))
        callers.append(Caller("mTLS mapped (r-operator)", mtls("CN=m1,O=certctl-matrix"), mapped))
        app.clock.advance(hours=2)  # the expiring key is now expired
        # The objects the routes act on (the target actor and role hold nothing).
        app.ok("POST", "/api/v1/auth/roles", 201, json={"id": "t-role", "permissions": []})
        target_key = _mint(app, "t-actor", [])
        cert = app.ok("POST", "/api/v1/certificates", 201, json={"common_name": "t.example.com"})
        eab = app.ok("POST", "/api/v1/acme/eab-keys", 201, json={"name": "t-eab"})
        account = _acme_account(app)
        app.ok("PUT", f"/api/v1/services/{SERVICE}", 201, json=_service_doc(SERVICE))
        added = app.ok(
            "POST",
            f"/api/v1/services/{SERVICE}/clients",
            201,
            json={"certificate_pem": cert["certificate_pem"]},
        )
        ids = {
            "roles": "t-role",
            "actors": "t-actor",
            "apikeys": target_key["id"],
            "issuers": "default",
            "certificates": cert["id"],
            "eab-keys": eab["id"],
            "accounts": account,
            "fingerprint": added["items"][0]["fingerprint"],
        }
        yield World(app, callers, ids, cert["certificate_pem"], lp_keys)


def _concrete(path: str, ids: dict[str, str]) -> str:
    resource = path.split("/")[3] if path.startswith("/api/v1/") else ""
    if resource in ("auth", "acme"):
        resource = path.split("/")[4]
    path = path.replace("{id}", ids.get(resource, "missing"))
    path = path.replace("{name}", SERVICE).replace("{fingerprint}", ids["fingerprint"])
    path = path.replace("{output}", "certs-public")
    path = path.replace("{request}", "MAA%3D")  # base64 of an empty SEQUENCE
    assert not re.search(r"{\w+}", path), path
    return path


_ADDRESSES = (f"10.{a}.{b}.{c}" for a, b, c in itertools.product(range(1, 255), repeat=3))


def _expected_refusal(permission: str, granted: frozenset[str] | None) -> int | None:
    """401, 403, or None (allowed)."""
    if permission == PUBLIC:
        return None
    if granted is None:
        return 401
    if permission == AUTHENTICATED or permission in granted:
        return None
    return 403


def test_every_route_has_an_expectation() -> None:
    table = {(r.method, r.path): r.permission for r in ROUTES}
    missing = sorted(set(table) - set(EXPECTED))
    stale = sorted(set(EXPECTED) - set(table))
    assert not missing, f"routes without an authorization-matrix entry: {missing}"
    assert not stale, f"matrix entries for routes that no longer exist: {stale}"
    for key, permission in table.items():
        assert EXPECTED[key][0] == permission, f"{key}: route table says {permission}"


_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# POSTs that change nothing, hence audit nothing: an OCSP request (RFC 6960 A.1) is POSTed.
_READ_ONLY_POSTS = frozenset({"/api/v1/issuers/{id}/ocsp"})


def _mutates(route: Any) -> bool:
    return route.method in _MUTATING and route.path not in _READ_ONLY_POSTS


def _audit_rows(world: World) -> int:
    """How many audit rows the store holds (DESIGN §4: every mutating call is one)."""
    with world.app.services.engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one())


def _newest_audit(world: World) -> tuple[int, str, str]:
    """The newest audit row's id, action and outcome."""
    with world.app.services.engine.connect() as connection:
        row = connection.execute(
            text("SELECT id, action, outcome FROM audit_events ORDER BY id DESC LIMIT 1")
        ).one()
    return int(row[0]), str(row[1]), str(row[2])


# The successes a route records under another action than it names: its body decides (an
# import, a service's creation), and a refusal, whose body is not read, takes the route's.
_ALSO_SUCCEEDS_AS = {"issuer.create": {"issuer.import"}, "service.edit": {"service.create"}}


def test_each_mutating_route_names_its_audit_action() -> None:
    # A 403 is recorded under it (an auditor's ?action=issuer.create finds the refusals with
    # the successes); test_route_authorization checks it is what the successes record.
    unnamed = [f"{r.method} {r.path}" for r in ROUTES if _mutates(r) and not r.action]
    assert not unnamed, f"mutating routes without an audit action: {unnamed}"


def _target(path: str, body: Any) -> str:
    """The object a request acts on: the actor a key is minted for, else the path's own."""
    if isinstance(body, dict) and "actor_id" in body:
        return f"/api/v1/auth/actors/{body['actor_id']}"
    return path


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_route_authorization(route: Any, world: World) -> None:
    permission, body = EXPECTED[(route.method, route.path)]
    assert permission == route.permission, "see test_every_route_has_an_expectation"
    if body == "client-pem":
        body = {"certificate_pem": world.client_pem}
    path = _concrete(route.path, world.ids)
    lp_keys = world.lp_keys
    problems = []
    for caller in world.callers:
        granted = caller.permissions
        headers = dict(caller.headers)
        if caller.least_privilege:
            if permission == PUBLIC:
                continue
            held = "" if permission == AUTHENTICATED else permission
            headers = bearer(lp_keys[held])
            granted = frozenset({held} - {""})
        want = _expected_refusal(permission, granted)
        headers.update(from_address(next(_ADDRESSES)))
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        # Only an allowed caller can change anything (DESIGN §4: each change is audited).
        audits = _mutates(route) and want is None
        audited = _audit_rows(world) if audits else 0
        newest = _newest_audit(world)[0] if _mutates(route) else 0
        r = world.app.client.request(route.method, path, **kwargs)
        label = f"{caller.name}: {route.method} {path} → {r.status_code}"
        if audits and r.status_code < 300 and _audit_rows(world) <= audited:
            problems.append(f"{label}: a mutation without an audit row")
        if _mutates(route) and (r.status_code < 300 or r.status_code == 403):
            # One ?action= finds a route's successes and its refusals alike.
            row_id, action, outcome = _newest_audit(world)
            named = {route.action, *_ALSO_SUCCEEDS_AS.get(route.action, ())}
            if r.status_code == 403:
                named = {route.action}
            if row_id == newest or action not in named:
                problems.append(f"{label}: audited as {action} ({outcome}), not {route.action}")
        if want is None:
            gone = (
                r.status_code == 403
                and ": no such " in r.text
                and world.app.request("GET", _target(path, body), world.app.admin_key).status_code
                == 404
            )
            if (r.status_code in (401, 403) and not gone) or r.status_code >= 500:
                problems.append(f"{label}, expected allowed: {r.text[:200]}")
        elif r.status_code != want:
            problems.append(f"{label}, expected {want}: {r.text[:200]}")
        else:
            assert_problem(r, want)
    assert not problems, "\n".join(problems)
