"""/api/v1/auth/roles and /api/v1/auth/permissions: built-in roles, role CRUD, no escalation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api, assert_problem

# DESIGN §4, written out independently of certctl.auth.permissions.
ALL_PERMISSIONS = {
    "cert.read",
    "cert.issue",
    "cert.revoke",
    "issuer.read",
    "issuer.create",
    "issuer.revoke",
    "service.read",
    "service.edit",
    "service.delete",
    "audit.read",
    "metrics.read",
    "auth.role.read",
    "auth.role.create",
    "auth.role.edit",
    "auth.role.delete",
    "auth.role.assign",
    "auth.actor.read",
    "auth.actor.create",
    "auth.actor.edit",
    "auth.actor.delete",
    "auth.apikey.read",
    "auth.apikey.create",
    "auth.apikey.revoke",
}
BUILTIN = {
    "r-admin": ALL_PERMISSIONS,
    "r-operator": {
        "cert.read",
        "cert.issue",
        "cert.revoke",
        "issuer.read",
        "issuer.create",
        "issuer.revoke",
        "service.read",
        "service.edit",
        "service.delete",
        "metrics.read",
        "audit.read",
    },
    "r-viewer": {p for p in ALL_PERMISSIONS if p.endswith(".read")},
    "r-auditor": {"audit.read"},
    "r-metrics-read": {"metrics.read"},
}
ROLES = "/api/v1/auth/roles"


def test_permission_catalogue(api: Api) -> None:
    r = api.get("/api/v1/auth/permissions", api.admin_key)
    assert r.status_code == 200
    assert set(r.json()["items"]) == ALL_PERMISSIONS


def test_builtin_roles_hold_design_permissions(api: Api) -> None:
    r = api.get(ROLES, api.admin_key)
    assert r.status_code == 200
    roles = {role["id"]: role for role in r.json()["items"]}
    assert r.json()["next_cursor"] is None
    for role_id, permissions in BUILTIN.items():
        assert set(roles[role_id]["permissions"]) == permissions, role_id
        assert roles[role_id]["builtin"] is True
        single = api.get(f"{ROLES}/{role_id}", api.admin_key)
        assert single.status_code == 200
        assert single.json() == roles[role_id]


@pytest.mark.parametrize("role_id", sorted(BUILTIN))
def test_builtin_roles_are_immutable(api: Api, role_id: str) -> None:
    # 409: the caller may edit roles (r-admin holds every permission); the role's state forbids it.
    before = api.get(f"{ROLES}/{role_id}", api.admin_key).json()
    put = api.request(
        "PUT", f"{ROLES}/{role_id}", api.admin_key, json={"permissions": ["audit.read"]}
    )
    assert "built in" in assert_problem(put, 409)["detail"]
    rename = api.request("PUT", f"{ROLES}/{role_id}", api.admin_key, json={"name": "x"})
    assert_problem(rename, 409)
    delete = api.request("DELETE", f"{ROLES}/{role_id}", api.admin_key)
    assert "built in" in assert_problem(delete, 409)["detail"]
    assert api.get(f"{ROLES}/{role_id}", api.admin_key).json() == before


def test_builtin_role_edit_without_permission_is_403(api: Api) -> None:
    key = api.actor_key("op", ["r-operator"])
    assert_problem(api.request("PUT", f"{ROLES}/r-viewer", key, json={"name": "x"}), 403)
    assert_problem(api.request("DELETE", f"{ROLES}/r-viewer", key), 403)


def test_custom_role_crud(api: Api) -> None:
    created = api.post(
        ROLES,
        api.admin_key,
        json={"id": "deployer", "name": "Deployer", "permissions": ["cert.issue", "cert.read"]},
    )
    assert created.status_code == 201, created.text
    assert created.json() == {
        "id": "deployer",
        "name": "Deployer",
        "permissions": ["cert.issue", "cert.read"],
        "builtin": False,
        "constraints": None,
    }
    assert api.get(f"{ROLES}/deployer", api.admin_key).json() == created.json()
    assert "deployer" in {r["id"] for r in api.get(ROLES, api.admin_key).json()["items"]}

    dup = api.post(ROLES, api.admin_key, json={"id": "deployer", "permissions": []})
    assert_problem(dup, 409)

    updated = api.request(
        "PUT",
        f"{ROLES}/deployer",
        api.admin_key,
        json={"name": "Deployer 2", "permissions": ["cert.read", "cert.read", "issuer.read"]},
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["name"] == "Deployer 2"
    assert updated.json()["permissions"] == ["cert.read", "issuer.read"]  # sorted, deduplicated
    # A name-only update keeps the permissions.
    renamed = api.request("PUT", f"{ROLES}/deployer", api.admin_key, json={"name": "D3"})
    assert renamed.json()["permissions"] == ["cert.read", "issuer.read"]

    # A role held by an actor cannot be deleted.
    api.create_actor("ci", ["deployer"])
    assert_problem(api.request("DELETE", f"{ROLES}/deployer", api.admin_key), 409)
    assert api.request("DELETE", "/api/v1/auth/actors/ci", api.admin_key).status_code == 204

    deleted = api.request("DELETE", f"{ROLES}/deployer", api.admin_key)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(api.get(f"{ROLES}/deployer", api.admin_key), 404)
    assert_problem(api.request("DELETE", f"{ROLES}/deployer", api.admin_key), 404)
    assert_problem(api.request("PUT", f"{ROLES}/deployer", api.admin_key, json={}), 404)


def test_role_permissions_take_effect_on_next_request(api: Api) -> None:
    key = api.key_with_permissions("reader", ["cert.read"])
    assert api.get("/api/v1/certificates", key).status_code == 200
    assert_problem(api.get("/api/v1/issuers", key), 403)
    r = api.request(
        "PUT", f"{ROLES}/p-reader", api.admin_key, json={"permissions": ["issuer.read"]}
    )
    assert r.status_code == 200
    assert api.get("/api/v1/issuers", key).status_code == 200
    assert_problem(api.get("/api/v1/certificates", key), 403)


def test_viewer_reads_but_cannot_write_roles(api: Api) -> None:
    key = api.actor_key("viewer", ["r-viewer"])
    assert api.get(ROLES, key).status_code == 200
    assert api.get("/api/v1/auth/permissions", key).status_code == 200
    assert_problem(api.post(ROLES, key, json={"id": "x", "permissions": []}), 403)


def test_no_escalation_creating_roles(api: Api) -> None:
    # DESIGN §4 example: only auth.role.create + auth.apikey.create (+ auth.role.read).
    key = api.key_with_permissions(
        "limited", ["auth.role.create", "auth.apikey.create", "auth.role.read"]
    )
    before = api.counts()
    r = api.post(ROLES, key, json={"id": "sneaky", "permissions": ["auth.role.assign"]})
    assert "auth.role.assign" in assert_problem(r, 403)["detail"]
    r = api.post(ROLES, key, json={"id": "sneaky", "permissions": ["cert.issue", "auth.role.read"]})
    assert_problem(r, 403)
    api.assert_only_denials_audited(before, 2)
    assert_problem(api.get(f"{ROLES}/sneaky", api.admin_key), 404)
    # Permissions it holds are fine.
    ok = api.post(ROLES, key, json={"id": "subset", "permissions": ["auth.role.read"]})
    assert ok.status_code == 201, ok.text


def test_operator_cannot_create_role_with_assign(api: Api) -> None:
    key = api.actor_key("op", ["r-operator"])
    r = api.post(ROLES, key, json={"id": "x", "permissions": ["auth.role.assign"]})
    assert_problem(r, 403)
    # Even with auth.role.create granted, the operator's own permissions bound the role.
    api.create_role("role-maker", ["auth.role.create"])
    r = api.request(
        "PATCH",
        "/api/v1/auth/actors/op",
        api.admin_key,
        json={"roles": ["r-operator", "role-maker"]},
    )
    assert r.status_code == 200, r.text
    r = api.post(ROLES, key, json={"id": "x", "permissions": ["auth.role.assign"]})
    assert "auth.role.assign" in assert_problem(r, 403)["detail"]
    r = api.post(ROLES, key, json={"id": "x", "permissions": ["cert.issue"]})
    assert r.status_code == 201, r.text


def test_no_escalation_editing_and_deleting_roles(api: Api) -> None:
    api.create_role("powerful", ["auth.actor.delete", "cert.read"])
    key = api.key_with_permissions(
        "editor", ["auth.role.edit", "auth.role.delete", "auth.role.read", "cert.read"]
    )
    api.create_role("mine", ["cert.read"])
    # Adding a permission the editor lacks.
    r = api.request("PUT", f"{ROLES}/mine", key, json={"permissions": ["cert.read", "cert.issue"]})
    assert_problem(r, 403)
    # Touching the permissions of a role holding more than the editor (even to shrink it).
    r = api.request("PUT", f"{ROLES}/powerful", key, json={"permissions": ["cert.read"]})
    assert_problem(r, 403)
    # Or only its name.
    r = api.request("PUT", f"{ROLES}/powerful", key, json={"name": "harmless"})
    assert "auth.actor.delete" in assert_problem(r, 403)["detail"]
    assert_problem(api.request("DELETE", f"{ROLES}/powerful", key), 403)
    assert api.get(f"{ROLES}/powerful", api.admin_key).json()["name"] == "powerful"
    assert api.get(f"{ROLES}/powerful", api.admin_key).json()["permissions"] == [
        "auth.actor.delete",
        "cert.read",
    ]
    # Within its own permissions it may edit and delete.
    r = api.request("PUT", f"{ROLES}/mine", key, json={"permissions": ["auth.role.read"]})
    assert r.status_code == 200, r.text
    assert api.request("DELETE", f"{ROLES}/mine", key).status_code == 204


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"id": "x", "permissions": ["cert.fly"]}, "cert.fly"),
        ({"id": "Bad Id", "permissions": []}, "role id"),
        ({"id": "x", "permissions": "cert.read"}, "permissions"),
    ],
)
def test_role_create_refuses_bad_input(api: Api, body: dict[str, object], fragment: str) -> None:
    before = api.counts()
    assert fragment in assert_problem(api.post(ROLES, api.admin_key, json=body), 400)["detail"]
    assert api.counts() == before


def test_unknown_permission_names_the_closest_or_the_known_ones(api: Api) -> None:
    # Before: "unknown permission(s): metrics.reed", and nothing in the CLI lists the names.
    body = {"id": "x", "permissions": ["metrics.reed", "cert.read", "cert.fly"]}
    detail = assert_problem(api.post(ROLES, api.admin_key, json=body), 400)["detail"]
    assert detail == (
        "unknown permission(s): cert.fly, metrics.reed (did you mean metrics.read?); "
        f"known: {', '.join(sorted(ALL_PERMISSIONS))}"
    )
    assert api.post(ROLES, api.admin_key, json={"id": "x", "permissions": []}).status_code == 201
    body = {"permissions": ["metrics.reed"]}
    r = api.request("PUT", f"{ROLES}/x", api.admin_key, json=body)
    detail = assert_problem(r, 400)["detail"]
    assert detail == "unknown permission(s): metrics.reed (did you mean metrics.read?)"


def test_many_unknown_permissions_are_refused_without_a_suggestion_search_for_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # difflib compares each unknown name with every known one in Python: a 1 MB body of
    # 70,000 near-misses took 3.6 s of CPU (and the GIL) in a write thread to refuse, where
    # the refusal without suggestions took milliseconds. A few typos get their suggestion.
    import difflib

    from certctl.errors import InvalidRequest
    from certctl.services import roles

    searched: list[str] = []
    real = difflib.get_close_matches

    def counted(word: str, *args: Any, **kwargs: Any) -> list[str]:
        searched.append(word)
        return real(word, *args, **kwargs)

    monkeypatch.setattr(difflib, "get_close_matches", counted)
    names = [f"cert.iss{i:05d}" for i in range(10_000)]
    with pytest.raises(InvalidRequest) as refused:
        roles._check_permissions(["metrics.reed", *names])
    assert len(searched) <= 5
    detail = refused.value.detail
    assert detail.startswith("unknown permission(s): cert.iss00000, cert.iss00001")
    assert "cert.iss09999" in detail
    assert detail.endswith(f"; known: {', '.join(sorted(ALL_PERMISSIONS))}")


def test_caller_without_role_read_cannot_tell_stronger_roles_from_unknown_ones(
    api: Api,
) -> None:
    # Before: editing or deleting an unknown role answered 404, a stronger custom role 403
    # naming its permissions, so holders of auth.role.edit/delete could probe role ids.
    api.create_role("p-strong", ["cert.read", "issuer.create"])
    key = api.key_with_permissions("editor", ["auth.role.edit", "auth.role.delete", "cert.read"])
    answers = set()
    for target in ("p-strong", "p-ghost"):
        r = api.request("PUT", f"{ROLES}/{target}", key, json={"name": "x"})
        answers.add(assert_problem(r, 403)["detail"].replace(target, "ID"))
        r = api.request("DELETE", f"{ROLES}/{target}", key)
        answers.add(assert_problem(r, 403)["detail"].replace(target, "ID"))
    assert answers == {
        f"cannot {verb} role ID: no such role, or it holds permission(s) you lack "
        "(auth.role.read tells which)"
        for verb in ("edit", "delete")
    }
    # A holder of auth.role.read keeps the precise answers.
    reader = api.key_with_permissions("reader", ["auth.role.edit", "auth.role.read", "cert.read"])
    assert_problem(api.request("PUT", f"{ROLES}/p-ghost", reader, json={}), 404)
    r = api.request("PUT", f"{ROLES}/p-strong", reader, json={})
    assert "issuer.create" in assert_problem(r, 403)["detail"]


def test_deleting_a_held_role_names_its_holders_only_to_holders_of_actor_read(api: Api) -> None:
    # Before: the 409 listed up to five actor ids holding the role to any holder of
    # auth.role.delete, so a caller without auth.actor.read learned which actors exist.
    api.create_role("p-low", ["cert.read"])
    api.create_actor("secret-bob", ["p-low"])
    key = api.key_with_permissions("roles", ["auth.role.delete", "cert.read"])
    detail = assert_problem(api.request("DELETE", f"{ROLES}/p-low", key), 409)["detail"]
    assert detail == (
        "role p-low is held by 1 actor(s) (auth.actor.read names them); take it from them first"
    )
    # A holder of auth.actor.read may list the actors anyway: it is told which.
    reader = api.key_with_permissions(
        "reader", ["auth.role.delete", "auth.actor.read", "cert.read"]
    )
    detail = assert_problem(api.request("DELETE", f"{ROLES}/p-low", reader), 409)["detail"]
    assert detail == "role p-low is held by secret-bob"
    assert api.get(f"{ROLES}/p-low", api.admin_key).status_code == 200


def test_a_permission_name_is_taken_exactly(api: Api) -> None:
    """``" cert.read"`` is an unknown permission (400), as openapi.json's enum says.

    The body's blanks were stripped from the names too, so the server took what the document
    refuses (and what ``certctl role`` never sends); a built-in role's name is no permission.
    """
    assert api.post(ROLES, api.admin_key, json={"id": "exact"}).status_code == 201
    for names in ([" cert.read"], ["cert.read\t"], ["r-viewer"]):
        for method, path, body in (
            ("POST", ROLES, {"id": "padded", "permissions": names}),
            ("PUT", f"{ROLES}/exact", {"permissions": names}),
        ):
            detail = assert_problem(api.request(method, path, api.admin_key, json=body), 400)
            assert detail["detail"].startswith("unknown permission(s): "), detail
    assert_problem(api.get(f"{ROLES}/padded", api.admin_key), 404)
    assert api.get(f"{ROLES}/exact", api.admin_key).json()["permissions"] == []
