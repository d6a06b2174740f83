"""/api/v1/auth/actors and /api/v1/auth/whoami: actor CRUD, role assignment without escalation."""

from __future__ import annotations

from tests.api.conftest import Api, assert_problem
from tests.api.test_auth_roles import ALL_PERMISSIONS, BUILTIN

ACTORS = "/api/v1/auth/actors"


def test_whoami_admin(api: Api) -> None:
    r = api.get("/api/v1/auth/whoami", api.admin_key)
    assert r.status_code == 200
    assert r.json() == {
        "actor_id": "admin",
        "roles": ["r-admin"],
        "permissions": sorted(ALL_PERMISSIONS),
        "auth_method": "api_key",
        "missing_roles": [],
    }


def test_whoami_needs_authentication_only(api: Api) -> None:
    key = api.actor_key("nobody", [])
    r = api.get("/api/v1/auth/whoami", key)
    assert r.status_code == 200
    assert r.json()["permissions"] == []
    assert_problem(api.get("/api/v1/auth/whoami"), 401)


def test_whoami_answer_follows_a_role_edit_on_the_next_request(api: Api) -> None:
    # whoami answers are rendered once per identity and reused: an edited role must show on
    # the very next request, with the headers every authenticated answer carries.
    key = api.key_with_permissions("watcher", ["cert.read"])
    for _ in range(3):
        r = api.get("/api/v1/auth/whoami", key)
        assert r.json()["permissions"] == ["cert.read"]
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    edited = api.request(
        "PUT",
        "/api/v1/auth/roles/p-watcher",
        api.admin_key,
        json={"permissions": ["cert.read", "audit.read"]},
    )
    assert edited.status_code == 200, edited.text
    assert api.get("/api/v1/auth/whoami", key).json()["permissions"] == ["audit.read", "cert.read"]
    assert api.get("/api/v1/auth/whoami", api.admin_key).json()["actor_id"] == "admin"
    assert api.get("/api/v1/auth/whoami", key).json()["actor_id"] == "watcher"


def test_actor_crud(api: Api) -> None:
    r = api.post(ACTORS, api.admin_key, json={"id": "ci-bot", "name": "CI", "roles": ["r-viewer"]})
    assert r.status_code == 201, r.text
    created = r.json()
    assert {k: created[k] for k in ("id", "name", "roles")} == {
        "id": "ci-bot",
        "name": "CI",
        "roles": ["r-viewer"],
    }
    assert created["created_at"]
    assert api.get(f"{ACTORS}/ci-bot", api.admin_key).json() == created
    listed = api.get(ACTORS, api.admin_key).json()
    assert {a["id"] for a in listed["items"]} == {"admin", "ci-bot"}
    assert listed["next_cursor"] is None

    assert_problem(api.post(ACTORS, api.admin_key, json={"id": "ci-bot"}), 409)

    r = api.request("PATCH", f"{ACTORS}/ci-bot", api.admin_key, json={"name": "CI bot"})
    assert r.status_code == 200
    assert r.json()["name"] == "CI bot"
    assert r.json()["roles"] == ["r-viewer"]
    r = api.request(
        "PATCH",
        f"{ACTORS}/ci-bot",
        api.admin_key,
        json={"roles": ["r-operator", "r-auditor", "r-operator"]},
    )
    assert r.status_code == 200
    assert r.json()["roles"] == ["r-auditor", "r-operator"]

    key = api.mint_key("ci-bot")["key_value"]
    assert api.get("/api/v1/auth/whoami", key).json()["roles"] == ["r-auditor", "r-operator"]

    assert api.request("DELETE", f"{ACTORS}/ci-bot", api.admin_key).status_code == 204
    assert_problem(api.get(f"{ACTORS}/ci-bot", api.admin_key), 404)
    # Deleting an actor removes its keys: the key fails with 401 on its next use.
    assert_problem(api.get("/api/v1/auth/whoami", key), 401)
    assert_problem(api.request("DELETE", f"{ACTORS}/ci-bot", api.admin_key), 404)
    assert_problem(api.request("PATCH", f"{ACTORS}/ci-bot", api.admin_key, json={}), 404)


def test_actor_create_refuses_unknown_role_and_bad_id(api: Api) -> None:
    before = api.counts()
    r = api.post(ACTORS, api.admin_key, json={"id": "x", "roles": ["r-nope"]})
    assert "r-nope" in assert_problem(r, 400)["detail"]
    r = api.post(ACTORS, api.admin_key, json={"id": "-x", "roles": []})
    assert "actor id" in assert_problem(r, 400)["detail"]
    r = api.request("PATCH", f"{ACTORS}/admin", api.admin_key, json={"roles": ["r-nope"]})
    assert_problem(r, 400)
    # The audit log's names for unauthenticated callers and for the server itself.
    r = api.post(ACTORS, api.admin_key, json={"id": "anonymous", "roles": []})
    assert "reserved (audit rows of unauthenticated requests)" in assert_problem(r, 400)["detail"]
    r = api.post(ACTORS, api.admin_key, json={"id": "system", "roles": []})
    assert "reserved (audit rows of the server's own work)" in assert_problem(r, 400)["detail"]
    assert api.counts() == before


def test_unknown_role_names_the_closest_or_the_known_ones(api: Api) -> None:
    # Before: "unknown role(s): r-viewr", naming no role there is; the permissions' refusal
    # already named the closest or every known one.
    api.create_role("p-ci", ["cert.read"])
    r = api.post(ACTORS, api.admin_key, json={"id": "x", "roles": ["r-viewr"]})
    assert assert_problem(r, 400)["detail"] == "unknown role(s): r-viewr (did you mean r-viewer?)"
    r = api.request("PATCH", f"{ACTORS}/admin", api.admin_key, json={"roles": ["ci", "r-admin"]})
    assert assert_problem(r, 400)["detail"] == (
        "unknown role(s): ci; known: r-admin, r-auditor, r-metrics-read, r-operator, r-viewer, p-ci"
    )
    # A caller that may not read roles is told the built-in ones only (DESIGN §4 names them),
    # not which custom roles exist.
    key = api.key_with_permissions(
        "hr", ["auth.actor.create", "auth.role.assign", "cert.read", "audit.read"]
    )
    r = api.post(ACTORS, key, json={"id": "y", "roles": ["p-cx"]})
    assert assert_problem(r, 400)["detail"] == (
        "unknown role(s) or roles needing permissions you lack: p-cx; built-in: r-admin, "
        "r-auditor, r-metrics-read, r-operator, r-viewer "
        "(custom roles are named to holders of auth.role.read)"
    )
    r = api.post(ACTORS, key, json={"id": "y", "roles": ["r-auditr"]})
    assert assert_problem(r, 400)["detail"] == (
        "unknown role(s) or roles needing permissions you lack: r-auditr (did you mean r-auditor?)"
    )
    # Past 30 names the line says how many more there are rather than burying the bad one.
    for i in range(30):
        api.create_role(f"p-{i:02}", [])
    r = api.post(ACTORS, api.admin_key, json={"id": "x", "roles": ["zz"]})
    detail = assert_problem(r, 400)["detail"]
    # The built-in roles first, then the custom ones (p-ci, p-hr: the key's own, p-00 …).
    shown = [*sorted(BUILTIN), *(f"p-{i:02}" for i in range(25))]
    assert detail == f"unknown role(s): zz; known: {', '.join(shown)} and 7 more"


def test_cannot_delete_yourself(api: Api) -> None:
    assert_problem(api.request("DELETE", f"{ACTORS}/admin", api.admin_key), 409)
    assert api.get("/api/v1/auth/whoami", api.admin_key).status_code == 200


def test_assigning_roles_needs_role_assign(api: Api) -> None:
    key = api.key_with_permissions(
        "hr", ["auth.actor.create", "auth.actor.edit", "auth.actor.read", "cert.read"]
    )
    assert api.post(ACTORS, key, json={"id": "plain"}).status_code == 201
    r = api.post(ACTORS, key, json={"id": "withrole", "roles": ["p-hr"]})
    assert "auth.role.assign" in assert_problem(r, 403)["detail"]
    r = api.request("PATCH", f"{ACTORS}/plain", key, json={"roles": ["r-auditor"]})
    assert_problem(r, 403)
    # Renaming needs only auth.actor.edit.
    assert api.request("PATCH", f"{ACTORS}/plain", key, json={"name": "P"}).status_code == 200


def test_no_escalation_assigning_roles(api: Api) -> None:
    key = api.key_with_permissions(
        "lead",
        [
            "auth.actor.create",
            "auth.actor.edit",
            "auth.actor.delete",
            "auth.role.assign",
            "cert.read",
            "cert.issue",
        ],
    )
    api.create_role("issuer-role", ["cert.issue", "cert.read"])
    before = api.counts()
    r = api.post(ACTORS, key, json={"id": "boss", "roles": ["r-admin"]})
    assert "auth.role.create" in assert_problem(r, 403)["detail"]
    # Cannot raise anyone (itself included) to roles it does not fully hold.
    r = api.request("PATCH", f"{ACTORS}/lead", key, json={"roles": ["r-operator"]})
    assert_problem(r, 403)
    # Cannot strip or rewrite the roles of a more powerful actor either.
    r = api.request("PATCH", f"{ACTORS}/admin", key, json={"roles": []})
    assert_problem(r, 403)
    assert_problem(api.request("DELETE", f"{ACTORS}/admin", key), 403)
    # Nor rename it: the name is what the audit log and whoami show for the admin.
    r = api.request("PATCH", f"{ACTORS}/admin", key, json={"name": "Lead's test account"})
    assert "cannot rename actor admin" in assert_problem(r, 403)["detail"]
    api.assert_only_denials_audited(before, 5)
    admin = api.get(f"{ACTORS}/admin", api.admin_key).json()
    assert admin["roles"] == ["r-admin"]
    assert admin["name"] == "Bootstrap administrator"

    r = api.post(ACTORS, key, json={"id": "dev", "roles": ["issuer-role"]})
    assert r.status_code == 201, r.text
    assert api.request("DELETE", f"{ACTORS}/dev", key).status_code == 204


def test_viewer_cannot_write_actors(api: Api) -> None:
    key = api.actor_key("viewer", ["r-viewer"])
    assert api.get(ACTORS, key).status_code == 200
    assert_problem(api.post(ACTORS, key, json={"id": "x"}), 403)
    assert_problem(api.request("PATCH", f"{ACTORS}/admin", key, json={"name": "x"}), 403)
    assert_problem(api.request("DELETE", f"{ACTORS}/admin", key), 403)


def test_caller_without_role_read_cannot_tell_hidden_roles_from_unknown_ones(api: Api) -> None:
    # Before: a custom role the caller may not assign answered 403 naming its permissions,
    # an unknown name 400, so holders of auth.actor.create could probe custom role names.
    api.create_role("p-secret", ["cert.issue", "issuer.create"])
    api.create_role("r-auditorx", ["issuer.create"])  # a near-miss of a built-in name
    key = api.key_with_permissions(
        "hr", ["auth.actor.create", "auth.actor.edit", "auth.role.assign", "cert.read"]
    )
    api.create_actor("plain", [])
    before = api.counts()
    answers = []
    for names in (["p-secret"], ["p-secrex"], ["r-auditorx"], ["r-auditory"]):
        created = api.post(ACTORS, key, json={"id": "y", "roles": names})
        edited = api.request("PATCH", f"{ACTORS}/plain", key, json={"roles": names})
        for r in (created, edited):
            detail = assert_problem(r, 400)["detail"]
            answers.append(detail.replace(names[0], "NAME"))
            assert "issuer.create" not in detail
    assert len(set(answers[:4])) == 1, answers
    assert len(set(answers[4:])) == 1, answers
    assert answers[0] == (
        "unknown role(s) or roles needing permissions you lack: NAME; built-in: r-admin, "
        "r-auditor, r-metrics-read, r-operator, r-viewer "
        "(custom roles are named to holders of auth.role.read)"
    )
    assert answers[4] == (
        "unknown role(s) or roles needing permissions you lack: NAME (did you mean r-auditor?)"
    )
    assert api.counts() == before
    # Built-in roles are public (DESIGN §4): assigning one beyond the caller is the usual 403.
    r = api.post(ACTORS, key, json={"id": "y", "roles": ["r-operator"]})
    assert "cert.issue" in assert_problem(r, 403)["detail"]
    # A holder of auth.role.read still gets the precise answers.
    reader = api.key_with_permissions(
        "reader", ["auth.actor.create", "auth.role.assign", "auth.role.read", "cert.read"]
    )
    r = api.post(ACTORS, reader, json={"id": "y", "roles": ["p-secret"]})
    assert "issuer.create" in assert_problem(r, 403)["detail"]
    r = api.post(ACTORS, reader, json={"id": "y", "roles": ["p-secrex"]})
    assert assert_problem(r, 400)["detail"] == "unknown role(s): p-secrex (did you mean p-secret?)"


def test_caller_without_actor_read_cannot_tell_stronger_actors_from_unknown_ones(
    api: Api,
) -> None:
    # Before: an unknown actor answered 404 and a stronger one 403 listing the permissions of
    # its current roles, so holders of auth.actor.edit/delete without auth.actor.read could
    # tell which actor ids exist and what they hold (an empty PATCH even answered its roles).
    api.create_role("p-strong", ["cert.read", "issuer.create"])
    api.create_actor("strong", ["p-strong"])
    key = api.key_with_permissions(
        "hr", ["auth.actor.edit", "auth.actor.delete", "auth.role.assign", "cert.read"]
    )
    before = api.counts()
    for body, action in (({"name": "x"}, "rename"), ({"roles": []}, "change"), ({}, "edit")):
        answers = set()
        for target in ("strong", "admin", "ghost"):
            r = api.request("PATCH", f"{ACTORS}/{target}", key, json=body)
            answers.add(assert_problem(r, 403)["detail"].replace(target, "ID"))
        assert len(answers) == 1, answers
        assert answers.pop().startswith(f"cannot {action} actor ID")
    answers = set()
    for target in ("strong", "admin", "ghost"):
        r = api.request("DELETE", f"{ACTORS}/{target}", key)
        answers.add(assert_problem(r, 403)["detail"].replace(target, "ID"))
    assert answers == {
        "cannot delete actor ID: no such actor, or it holds permission(s) you lack "
        "(auth.actor.read tells which)"
    }
    assert api.counts()["actors"] == before["actors"]
    # Holding auth.actor.read, the caller may tell them apart, but learns which permissions
    # a custom role grants only with auth.role.read.
    reader = api.key_with_permissions(
        "reader", ["auth.actor.read", "auth.actor.delete", "auth.actor.edit", "cert.read"]
    )
    assert_problem(api.request("DELETE", f"{ACTORS}/ghost", reader), 404)
    r = api.request("DELETE", f"{ACTORS}/strong", reader)
    assert assert_problem(r, 403)["detail"] == (
        "cannot delete actor strong: it holds permission(s) you lack "
        "(named to holders of auth.role.read)"
    )
    full = api.key_with_permissions(
        "full", ["auth.actor.read", "auth.role.read", "auth.actor.edit", "cert.read"]
    )
    assert_problem(api.request("PATCH", f"{ACTORS}/ghost", full, json={"name": "x"}), 404)
    r = api.request("PATCH", f"{ACTORS}/strong", full, json={"name": "x"})
    assert assert_problem(r, 403)["detail"] == (
        "cannot rename this actor: it needs permission(s) you lack: issuer.create"
    )
