"""Roles whose cert.issue is limited to some issuers and names (Vault PKI roles' core)."""

from __future__ import annotations

import subprocess
from pathlib import Path
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


CERTS = "/api/v1/certificates"


def _csr(cn: str, dns: list[str], ip: list[str] = ()) -> str:  # type: ignore[assignment]
    from cryptography.hazmat.primitives import serialization

    from certctl.pki import KeyType, SubjectAltNames, common_name_dn, create_csr
    from certctl.pki import generate_private_key as new_key

    csr = create_csr(new_key(KeyType.EC_P256), common_name_dn(cn), SubjectAltNames.parse(dns, ip))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _team_a(api: Api, constraints: dict[str, Any] | None = None) -> str:
    """An actor holding role team-a (cert.issue and cert.read, limited): its key."""
    r = api.post(
        ROLES,
        api.admin_key,
        json={
            "id": "team-a",
            "permissions": ["cert.issue", "cert.read"],
            "constraints": constraints or TEAM_A,
        },
    )
    assert r.status_code == 201, r.text
    return api.actor_key("ci-a", ["team-a"])


def _refused(api: Api, key: str, body: dict[str, Any], fragment: str, path: str = CERTS) -> None:
    before = api.counts()
    detail = assert_problem(api.post(path, key, json=body), 403)["detail"]
    assert detail.startswith(fragment), detail
    assert "role(s) team-a" in detail
    api.assert_only_denials_audited(before, 1)
    assert api.audit()[0]["action"] == "certificate.issue"


def test_a_constrained_role_issues_its_names_from_its_issuers_only(api: Api) -> None:
    assert api.post("/api/v1/issuers", api.admin_key, json={"id": "other-ca"}).status_code == 201
    key = _team_a(api)
    # Allowed: names below the pattern (a wildcard too), an address in the network, a CN
    # that is no name; a CSR's names as a key made here.
    api.issue(key, common_name="web.team-a.example.internal", ip_addresses=["10.1.2.3"])
    api.issue(key, common_name="Team A web", dns_names=["*.web.team-a.example.internal"])
    csr = _csr("api.team-a.example.internal", ["api.team-a.example.internal"], ["10.1.0.9"])
    assert api.post(CERTS, key, json={"issuer": "default", "csr": csr}).status_code == 201
    # Refused: the first name or issuer no role allows, with the roles considered.
    _refused(
        api,
        key,
        {"common_name": "db.team-b.example.internal"},
        "db.team-b.example.internal: not allowed",
    )
    body = {
        "common_name": "web.team-a.example.internal",
        "dns_names": ["x.team-a.example.internal", "team-a.example.internal"],
    }
    _refused(api, key, body, "team-a.example.internal: not allowed")
    _refused(
        api,
        key,
        {"common_name": "a.team-a.example.internal", "ip_addresses": ["10.2.0.1"]},
        "10.2.0.1: not allowed",
    )
    _refused(
        api,
        key,
        {"issuer": "other-ca", "common_name": "a.team-a.example.internal"},
        "issuer other-ca: not allowed",
    )
    _refused(
        api,
        key,
        {"common_name": "a.team-a.example.internal", "uris": ["spiffe://team-a/x"]},
        "spiffe://team-a/x (an e-mail or URI SAN",
    )
    csr = _csr("ok.team-a.example.internal", ["ok.team-a.example.internal", "evil.example.com"])
    _refused(api, key, {"issuer": "default", "csr": csr}, "evil.example.com: not allowed")
    # Renewing: its own certificates, not another team's.
    mine = api.issue(key, common_name="r.team-a.example.internal")
    r = api.post(f"{CERTS}/{mine['id']}/renew", key, json={})
    assert r.status_code == 201, r.text
    theirs = api.issue(common_name="db.team-b.example.internal")
    _refused(
        api, key, {}, "db.team-b.example.internal: not allowed", f"{CERTS}/{theirs['id']}/renew"
    )


def test_one_role_must_allow_the_whole_request_and_an_unconstrained_one_allows_all(
    api: Api,
) -> None:
    key = _team_a(api, {"names": ["*.team-a.example.internal"]})
    api.create_role("team-b", ["cert.issue"])
    r = api.request(
        "PUT",
        f"{ROLES}/team-b",
        api.admin_key,
        json={"constraints": {"names": ["*.team-b.example.internal"]}},
    )
    assert r.status_code == 200, r.text
    r = api.request(
        "PATCH", "/api/v1/auth/actors/ci-a", api.admin_key, json={"roles": ["team-a", "team-b"]}
    )
    assert r.status_code == 200, r.text
    api.issue(key, common_name="x.team-b.example.internal")
    api.issue(key, common_name="x.team-a.example.internal")
    body = {
        "common_name": "x.team-a.example.internal",
        "dns_names": ["x.team-a.example.internal", "x.team-b.example.internal"],
    }
    detail = assert_problem(api.post(CERTS, key, json=body), 403)["detail"]
    assert detail.startswith(
        "x.team-b.example.internal: not allowed by the constraints of role(s) team-a, team-b"
    )
    # A role holding cert.issue unconstrained: nothing is checked (r-operator).
    r = api.request(
        "PATCH", "/api/v1/auth/actors/ci-a", api.admin_key, json={"roles": ["team-a", "r-operator"]}
    )
    assert r.status_code == 200, r.text
    api.issue(key, **body)


def test_a_role_edit_applies_to_the_very_next_request(api: Api) -> None:
    key = _team_a(api)
    api.issue(key, common_name="w.team-a.example.internal")  # remembered now
    api.issue(key, common_name="w.team-a.example.internal")
    r = api.request(
        "PUT",
        f"{ROLES}/team-a",
        api.admin_key,
        json={"constraints": {"names": ["*.team-c.example.internal"]}},
    )
    assert r.status_code == 200, r.text
    detail = assert_problem(
        api.post(CERTS, key, json={"common_name": "w.team-a.example.internal"}), 403
    )["detail"]
    assert detail.startswith("w.team-a.example.internal: not allowed")
    api.issue(key, common_name="w.team-c.example.internal")
    r = api.request("PUT", f"{ROLES}/team-a", api.admin_key, json={"constraints": None})
    assert r.status_code == 200, r.text
    api.issue(key, common_name="w.team-a.example.internal")


def test_a_constrained_caller_grants_no_more_than_it_may_issue(api: Api) -> None:
    # DESIGN §4's no-escalation rule, for constraints: team A's administrator (its own
    # cert.issue limited) makes roles, actors and keys within its own limits only.
    limited = {"issuers": ["default"], "names": ["*.team-a.example.internal", "10.1.0.0/16"]}
    perms = ["cert.issue", "auth.role.create", "auth.role.edit", "auth.role.read"]
    perms += ["auth.actor.create", "auth.actor.edit", "auth.role.assign", "auth.apikey.create"]
    r = api.post(
        ROLES, api.admin_key, json={"id": "a-admin", "permissions": perms, "constraints": limited}
    )
    assert r.status_code == 201, r.text
    key = api.actor_key("alice", ["a-admin"])
    api.create_role("wide", ["cert.issue"])  # unconstrained, made by the administrator
    api.create_actor("carol", ["wide"])
    before = api.counts()
    refusals = [
        ({"id": "x", "permissions": ["cert.issue"]}, "any issuer and name (no constraints)"),
        (
            {
                "id": "x",
                "permissions": ["cert.issue"],
                "constraints": {"names": ["*.team-a.example.internal"]},
            },
            "any issuer",
        ),
        (
            {"id": "x", "permissions": ["cert.issue"], "constraints": {"issuers": ["default"]}},
            "any name",
        ),
        (
            {
                "id": "x",
                "permissions": ["cert.issue"],
                "constraints": {
                    "issuers": ["default", "other"],
                    "names": ["a.team-a.example.internal"],
                },
            },
            "issuer other",
        ),
        (
            {
                "id": "x",
                "permissions": ["cert.issue"],
                "constraints": {"issuers": ["default"], "names": ["*.example.internal"]},
            },
            "*.example.internal",
        ),
        (
            {
                "id": "x",
                "permissions": ["cert.issue"],
                "constraints": {"issuers": ["default"], "names": ["10.0.0.0/8"]},
            },
            "10.0.0.0/8",
        ),
    ]
    for body, outside in refusals:
        detail = assert_problem(api.post(ROLES, key, json=body), 403)["detail"]
        assert detail == (
            f"cannot create this role: its cert.issue would allow {outside}, outside the "
            "constraints of your role(s) a-admin (one of them must hold every issuer and name)"
        )
    # Editing the unconstrained role (even to constrain it), taking a role's constraints
    # away, assigning it, minting a key for its holder: refused.
    r = api.request("PUT", f"{ROLES}/wide", key, json={"constraints": limited})
    assert "any issuer and name" in assert_problem(r, 403)["detail"]
    r = api.post("/api/v1/auth/actors", key, json={"id": "bob", "roles": ["wide"]})
    assert "cannot assign these roles" in assert_problem(r, 403)["detail"]
    r = api.post("/api/v1/auth/apikeys", key, json={"actor_id": "carol"})
    assert "cannot mint a key for actor carol" in assert_problem(r, 403)["detail"]
    api.assert_only_denials_audited(before, 9)
    # Within its limits: a narrower role, assigned, keyed; edited within, not beyond.
    narrow = {
        "issuers": ["default"],
        "names": ["*.ci.team-a.example.internal", "10.1.2.0/24", "a.team-a.example.internal"],
    }
    r = api.post(
        ROLES, key, json={"id": "a-ci", "permissions": ["cert.issue"], "constraints": narrow}
    )
    assert r.status_code == 201, r.text
    r = api.post("/api/v1/auth/actors", key, json={"id": "ci", "roles": ["a-ci"]})
    assert r.status_code == 201, r.text
    r = api.post("/api/v1/auth/apikeys", key, json={"actor_id": "ci"})
    assert r.status_code == 201, r.text
    r = api.request("PUT", f"{ROLES}/a-ci", key, json={"constraints": None})
    assert "any issuer and name" in assert_problem(r, 403)["detail"]
    r = api.request(
        "PUT",
        f"{ROLES}/a-ci",
        key,
        json={"constraints": {**narrow, "names": ["*.team-a.example.internal"]}},
    )
    assert r.status_code == 200, r.text
    # A role without cert.issue is no matter of constraints.
    r = api.post(ROLES, key, json={"id": "reader", "permissions": ["auth.role.read"]})
    assert r.status_code == 201, r.text


def test_a_cn_spelled_as_a_host_name_is_checked_though_no_valid_dns_name(
    api: Api, tmp_path: Path
) -> None:
    # Such a CN gets no DNS SAN, and OpenSSL (curl, X509_check_host) then matches the CN as
    # the host name: left unchecked, it was team B's host in a certificate team A issued.
    key = _team_a(api)
    for cn in ["svc_x.team-b.example.internal", "w*.team-b.example.internal", "010.0.0.1"]:
        _refused(api, key, {"issuer": "default", "csr": _csr(cn, [])}, f"{cn.lower()}: not allowed")
        _refused(api, key, {"common_name": cn, "dns_names": []}, f"{cn}: not allowed")
    # Below the team's own pattern it is the team's: issued, and matched as that host.
    cn = "svc_x.team-a.example.internal"
    r = api.post(CERTS, key, json={"issuer": "default", "csr": _csr(cn, [])})
    assert r.status_code == 201, r.text
    pem = tmp_path / "svc.pem"
    pem.write_text(r.json()["certificate_pem"])
    checked = subprocess.run(
        ["openssl", "x509", "-in", str(pem), "-noout", "-checkhost", cn],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "does match certificate" in checked.stdout, checked.stdout
    # A CN no client connects to ("Team A web", "team-a:ci") is still no name.
    api.issue(key, common_name="team-a:ci", dns_names=["ci.team-a.example.internal"])


def test_a_constrained_caller_mints_no_acme_eab_key(api: Api) -> None:
    # An ACME account orders under acme.allowed-names: an EAB key minted by team A would
    # bind an account issuing team B's names.
    key = _team_a(api)
    before = api.counts()
    r = api.post("/api/v1/acme/eab-keys", key, json={"name": "ci"})
    detail = assert_problem(r, 403)["detail"]
    assert detail.startswith("cannot mint an EAB key: an ACME account's orders are limited by")
    assert "role(s) team-a constrain your cert.issue" in detail
    api.assert_only_denials_audited(before, 1)
    assert api.audit()[0]["action"] == "acme.eab.create"
    assert api.get("/api/v1/acme/eab-keys", api.admin_key).json()["items"] == []
    # Unconstrained cert.issue (r-operator beside team-a): minted, as before.
    r = api.request(
        "PATCH", "/api/v1/auth/actors/ci-a", api.admin_key, json={"roles": ["team-a", "r-operator"]}
    )
    assert r.status_code == 200, r.text
    assert api.post("/api/v1/acme/eab-keys", key, json={"name": "ci"}).status_code == 201
