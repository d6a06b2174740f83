"""Roles whose cert.issue is limited to some issuers and names (Vault PKI roles' core)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api, assert_problem

ROLES = "/api/v1/auth/roles"
TEAM_A = {"issuers": ["default"], "names": ["*.team-a.example.internal", "10.1.0.0/16"]}


def test_role_constraints_are_stored_shown_changed_and_taken_away(api: Api) -> None:
    body = {
        "id": "team-a",
        "permissions": ["cert.issue"],
        "constraints": {
            "names": ["*.Team-A.example.internal.", "10.1.0.0/16", "fd00::/8", "10.9.9.9/32"]
        },
    }
    created = api.post(ROLES, api.admin_key, json=body)
    assert created.status_code == 201, created.text
    # Canonical (lower-case, no trailing dot, an address as one), sorted; issuers unlimited.
    shown = {
        "issuers": None,
        "names": ["*.team-a.example.internal", "10.1.0.0/16", "10.9.9.9", "fd00::/8"],
    }
    assert created.json()["constraints"] == shown
    assert api.get(f"{ROLES}/team-a", api.admin_key).json()["constraints"] == shown
    listed = {r["id"]: r for r in api.get(ROLES, api.admin_key).json()["items"]}
    assert listed["team-a"]["constraints"] == shown
    assert listed["r-admin"]["constraints"] is None
    # Left out of a PUT: kept; given: replaced; null: taken away.
    r = api.request("PUT", f"{ROLES}/team-a", api.admin_key, json={"name": "A"})
    assert r.json()["constraints"] == shown
    r = api.request("PUT", f"{ROLES}/team-a", api.admin_key, json={"constraints": TEAM_A})
    assert r.json()["constraints"] == TEAM_A
    r = api.request("PUT", f"{ROLES}/team-a", api.admin_key, json={"constraints": None})
    assert r.json()["constraints"] is None
    # Both axes left out: no limit, shown as none.
    r = api.request("PUT", f"{ROLES}/team-a", api.admin_key, json={"constraints": {}})
    assert r.json()["constraints"] is None
    assert any(
        e["action"] == "role.edit" and "constraints: issuers default" in e["detail"]
        for e in api.audit()
    )


@pytest.mark.parametrize(
    ("constraints", "fragment"),
    [
        ({"domains": ["a.example"]}, "domains"),
        ({"names": []}, "constraints.names: an empty list allows nothing"),
        ({"issuers": []}, "constraints.issuers: an empty list allows nothing"),
        ({"names": ["bad name.example"]}, "constraints.names: bad name.example"),
        ({"names": ["10.0.0.1/8"]}, "host bits set"),
        ({"names": ["a.*.example"]}, "constraints.names"),
        ({"issuers": ["Team CA"]}, "issuer id"),
        ({"names": "a.example"}, "names"),
    ],
)
def test_bad_role_constraints_are_refused(
    api: Api, constraints: dict[str, Any], fragment: str
) -> None:
    api.create_role("kept", ["cert.issue"])
    before = api.counts()
    body = {"id": "x", "permissions": ["cert.issue"], "constraints": constraints}
    detail = assert_problem(api.post(ROLES, api.admin_key, json=body), 400)["detail"]
    assert fragment in detail
    put = api.request("PUT", f"{ROLES}/kept", api.admin_key, json={"constraints": constraints})
    assert fragment in assert_problem(put, 400)["detail"]
    assert api.counts() == before
    assert api.get(f"{ROLES}/kept", api.admin_key).json()["constraints"] is None


def test_builtin_roles_take_no_constraints(api: Api) -> None:
    r = api.request("PUT", f"{ROLES}/r-operator", api.admin_key, json={"constraints": TEAM_A})
    assert "built in" in assert_problem(r, 409)["detail"]
    assert api.get(f"{ROLES}/r-operator", api.admin_key).json()["constraints"] is None
