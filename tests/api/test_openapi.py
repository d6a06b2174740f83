"""/api/v1/openapi.json and the route table: every route documented, every permission enforced."""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator

from certctl.api._common import AUTHENTICATED, PUBLIC
from certctl.api.app import ROUTES
from certctl.auth.permissions import PERMISSIONS
from tests.api.conftest import Api, assert_problem
from tests.api.test_auth_roles import ALL_PERMISSIONS

# DESIGN §4, route by route (the managed-service routes are not implemented yet).
DESIGN_ROUTES = {
    ("GET", "/api/v1/auth/whoami"): AUTHENTICATED,
    ("GET", "/api/v1/auth/permissions"): "auth.role.read",
    ("GET", "/api/v1/auth/roles"): "auth.role.read",
    ("POST", "/api/v1/auth/roles"): "auth.role.create",
    ("GET", "/api/v1/auth/roles/{id}"): "auth.role.read",
    ("PUT", "/api/v1/auth/roles/{id}"): "auth.role.edit",
    ("DELETE", "/api/v1/auth/roles/{id}"): "auth.role.delete",
    ("GET", "/api/v1/auth/actors"): "auth.actor.read",
    ("POST", "/api/v1/auth/actors"): "auth.actor.create",
    ("GET", "/api/v1/auth/actors/{id}"): "auth.actor.read",
    ("PATCH", "/api/v1/auth/actors/{id}"): "auth.actor.edit",
    ("DELETE", "/api/v1/auth/actors/{id}"): "auth.actor.delete",
    ("GET", "/api/v1/auth/apikeys"): "auth.apikey.read",
    ("POST", "/api/v1/auth/apikeys"): "auth.apikey.create",
    ("GET", "/api/v1/auth/apikeys/{id}"): "auth.apikey.read",
    ("DELETE", "/api/v1/auth/apikeys/{id}"): "auth.apikey.revoke",
    ("GET", "/api/v1/issuers"): "issuer.read",
    ("POST", "/api/v1/issuers"): "issuer.create",
    ("GET", "/api/v1/issuers/{id}"): "issuer.read",
    ("POST", "/api/v1/issuers/{id}/revoke"): "issuer.revoke",
    ("GET", "/api/v1/issuers/{id}/ca.pem"): PUBLIC,
    ("GET", "/api/v1/issuers/{id}/ca.der"): PUBLIC,
    ("GET", "/api/v1/issuers/{id}/crl"): PUBLIC,
    ("POST", "/api/v1/issuers/{id}/ocsp"): PUBLIC,
    ("GET", "/api/v1/issuers/{id}/ocsp/{request}"): PUBLIC,
    ("GET", "/api/v1/certificates"): "cert.read",
    ("POST", "/api/v1/certificates"): "cert.issue",
    ("POST", "/api/v1/certificates/import"): "cert.issue",
    ("GET", "/api/v1/certificates/{id}"): "cert.read",
    ("POST", "/api/v1/certificates/{id}/revoke"): "cert.revoke",
    ("POST", "/api/v1/certificates/{id}/renew"): "cert.issue",
    ("GET", "/api/v1/audit"): "audit.read",
    ("GET", "/api/v1/metrics"): "metrics.read",
    ("GET", "/api/v1/metrics/prometheus"): "metrics.read",
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/api/v1/openapi.json"): PUBLIC,
    ("GET", "/api/v1/services"): "service.read",
    ("GET", "/api/v1/services/{name}"): "service.read",
    ("PUT", "/api/v1/services/{name}"): "service.edit",
    ("DELETE", "/api/v1/services/{name}"): "service.delete",
    # Beyond DESIGN §4's table, same permissions as the service they act on:
    ("POST", "/api/v1/services/{name}/renew"): "service.edit",
    ("DELETE", "/api/v1/services/{name}/retired-ca"): "service.edit",
    ("GET", "/api/v1/services/{name}/clients"): "service.read",
    ("POST", "/api/v1/services/{name}/clients"): "service.edit",
    ("DELETE", "/api/v1/services/{name}/clients/{fingerprint}"): "service.edit",
    ("GET", "/api/v1/services/{name}/outputs/{output}"): "service.read",
    # ACME External Account Binding keys: a key gets certificates through ACME (cert.issue).
    ("GET", "/api/v1/acme/eab-keys"): "cert.read",
    ("POST", "/api/v1/acme/eab-keys"): "cert.issue",
    ("GET", "/api/v1/acme/eab-keys/{id}"): "cert.read",
    ("DELETE", "/api/v1/acme/eab-keys/{id}"): "cert.revoke",
    ("GET", "/api/v1/acme/accounts"): "cert.read",
    ("GET", "/api/v1/acme/accounts/{id}"): "cert.read",
    ("POST", "/api/v1/acme/accounts/{id}/deactivate"): "cert.revoke",
}


def _concrete(path: str) -> str:
    return re.sub(r"{\w+}", "does-not-exist", path)


def test_route_table_matches_design() -> None:
    table = {(r.method, r.path): r.permission for r in ROUTES}
    for key, permission in DESIGN_ROUTES.items():
        assert table.get(key) == permission, key
    assert set(table) == set(DESIGN_ROUTES)
    for route in ROUTES:
        assert route.permission in ALL_PERMISSIONS | {PUBLIC, AUTHENTICATED}, route


def test_openapi_lists_every_route_with_its_permission(api: Api) -> None:
    r = api.get("/api/v1/openapi.json")  # public
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == {(r.method, r.path) for r in ROUTES}
    schemas = doc["components"]["schemas"]
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert str(route.success) in op["responses"]
        if route.permission == PUBLIC:
            assert "x-certctl-permission" not in op, route.path
            assert "security" not in op
        else:
            assert op["x-certctl-permission"] == route.permission, route.path
            assert op["security"] == [{"bearer": []}]
            assert {"401", "403"} <= set(op["responses"])
        if route.body is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in schemas
        params = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "path"}
        assert set(params) == set(re.findall(r"{(\w+)}", route.path)), route.path
        for param in params.values():
            assert param["required"] is True
            assert param["schema"]["type"] == "string"


def test_every_protected_route_enforces_its_permission(api: Api) -> None:
    # Exactly one permission per actor: the route opens for its own and for no other.
    keys = {p: api.key_with_permissions(p.replace(".", "-"), [p]) for p in sorted(ALL_PERMISSIONS)}
    nobody = api.actor_key("nobody", [])
    problems = []
    for route in ROUTES:
        if route.permission == PUBLIC:
            r = api.request(route.method, _concrete(route.path))
            if r.status_code in (401, 403):
                problems.append(f"{route.method} {route.path}: public route gave {r.status_code}")
            continue
        path = _concrete(route.path)
        r = api.request(route.method, path)
        if r.status_code != 401 or "www-authenticate" not in r.headers:
            problems.append(f"{route.method} {route.path}: no key gave {r.status_code}")
        r = api.request(route.method, path, nobody)
        want = 403 if route.permission != AUTHENTICATED else 200
        if r.status_code != want:
            problems.append(f"{route.method} {route.path}: no permission gave {r.status_code}")
        if route.permission == AUTHENTICATED:
            continue
        r = api.request(route.method, path, keys[route.permission])
        # A 403 past the permission check is no refusal of the route: to a caller without
        # the read permission an id that does not exist is a 403 "no such ...", as one it may
        # not act on (access_rules.may_act_on); only "missing permission" is the route shut.
        shut = r.status_code == 403 and "missing permission" in r.json()["detail"]
        if r.status_code in (401, 500) or shut:
            problems.append(f"{route.method} {route.path}: own permission gave {r.status_code}")
        for other in sorted(ALL_PERMISSIONS - {route.permission})[:3]:
            r = api.request(route.method, path, keys[other])
            if r.status_code != 403:
                problems.append(f"{route.method} {route.path}: {other} gave {r.status_code}")
    assert not problems, "\n".join(problems)


def test_health_routes_are_public_and_terse(api: Api) -> None:
    for path, text in (("/healthz", "ok"), ("/readyz", "ready")):
        r = api.get(path)
        assert r.status_code == 200
        assert r.text == text
    assert_problem(api.post("/healthz"), 405)


def test_the_crl_refusal_of_an_expired_issuer_is_documented(api: Api) -> None:
    """GET …/crl answers 409 for an issuer that cannot sign a CRL: the document says so.

    Before, only mutating routes listed 409, so a client generated from the document (or
    schemathesis) met an undocumented status on this public route.
    """
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": "brief", "validity": "2D"})
    assert r.status_code == 201, r.text
    api.clock.advance(days=3)
    refused = api.get("/api/v1/issuers/brief/crl")
    assert_problem(refused, 409)
    op = api.get("/api/v1/openapi.json").json()["paths"]["/api/v1/issuers/{id}/crl"]["get"]
    documented = op["responses"][str(refused.status_code)]
    problem = documented["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"}


def test_the_revocation_reasons_are_documented_as_the_ones_taken(api: Api) -> None:
    """The document listed reason as any string; the server takes eight and refuses the rest."""
    doc = api.get("/api/v1/openapi.json").json()
    reason = doc["components"]["schemas"]["CertificateRevoke"]["properties"]["reason"]
    documented = [r for r in reason["enum"] if r is not None]
    assert None in reason["enum"]  # no reason: unspecified
    assert "removeFromCRL" not in documented
    assert "certificateHold" not in documented
    cert_ids = [api.issue(common_name=f"r{i}.example.com")["id"] for i in range(len(documented))]
    for cert_id, name in zip(cert_ids, documented, strict=True):
        r = api.post(f"/api/v1/certificates/{cert_id}/revoke", api.admin_key, json={"reason": name})
        assert r.status_code == 200, (name, r.text)
        assert r.json()["revocation_reason"] == name
    extra = api.issue(common_name="hold.example.com")["id"]
    refused = api.post(
        f"/api/v1/certificates/{extra}/revoke", api.admin_key, json={"reason": "certificateHold"}
    )
    assert ", ".join(documented) in assert_problem(refused, 400)["detail"]


def test_the_ca_routes_caching_is_documented(api: Api) -> None:
    """ca.pem/ca.der/crl: If-None-Match, the 304, and Cache-Control and ETag on both answers."""
    paths = api.get("/api/v1/openapi.json").json()["paths"]
    for path in ("/api/v1/issuers/{id}/ca.pem", "/api/v1/issuers/{id}/ca.der",
                 "/api/v1/issuers/{id}/crl"):  # fmt: skip
        op = paths[path]["get"]
        assert "If-None-Match" in {p["name"] for p in op["parameters"] if p["in"] == "header"}
        served = api.get(path.replace("{id}", "default"))
        held = api.get(path.replace("{id}", "default"), headers={"If-None-Match": "*"})
        for answer in (served, held):
            headers = op["responses"][str(answer.status_code)]["headers"]
            assert {name.lower() for name in headers} == {"cache-control", "etag"}
            assert {name.lower() for name in headers} <= set(answer.headers)
        assert "content" not in op["responses"]["304"]
    # Each route's own freshness: the CRL's is as long as the server reuses it.
    crl = paths["/api/v1/issuers/{id}/crl"]["get"]["responses"]
    assert "reuses the CRL" in crl["304"]["headers"]["Cache-Control"]["description"]


def test_the_san_fields_are_documented_as_taken_and_as_stored(api: Api) -> None:
    """The four SAN types of a keygen request, and the four lists a certificate's sans holds."""
    schemas = api.get("/api/v1/openapi.json").json()["components"]["schemas"]
    body = schemas["CertificateIssue"]["properties"]
    for field in ("dns_names", "ip_addresses", "email_addresses", "uris"):
        assert body[field]["type"] == "array", field
        assert body[field]["maxItems"] == 100, field
    assert "spiffe://" in body["uris"]["description"]
    sans = schemas["Certificate"]["properties"]["sans"]
    assert sans["required"] == ["dns", "ip", "email", "uri"]
    assert sans["additionalProperties"] is False
    stored = api.issue(common_name="doc.example.com", uris=["urn:example:doc"])
    got = api.get(f"/api/v1/certificates/{stored['id']}", api.admin_key).json()
    assert list(got["sans"]) == sans["required"]


def test_the_common_name_is_documented_as_optional_beside_a_san(api: Api) -> None:
    """A SPIFFE workload's request has no common_name: the schema must say when that is taken."""
    body = api.get("/api/v1/openapi.json").json()["components"]["schemas"]["CertificateIssue"]
    text = body["properties"]["common_name"]["description"]
    assert "may be left out when a SAN is given" in text
    assert "empty subject" in text


def test_every_list_answers_items_and_next_cursor(api: Api) -> None:
    """DESIGN §4: lists return {"items": [...], "next_cursor": …|null}, documented as such.

    GET /api/v1/auth/permissions answered {"items"} alone, so a client paging every list the
    same way (until next_cursor is null) failed on that one.
    """
    spec = {
        "apiVersion": "certctl.io/v1",
        "kind": "TLSService",
        "metadata": {"name": "listed"},
        "spec": {"http": {"tls": {"selfSignedCertificate": {"disabled": True}}}},
    }
    created = api.request("PUT", "/api/v1/services/listed", api.admin_key, json=spec)
    assert created.status_code == 201, created.text
    doc = api.get("/api/v1/openapi.json").json()
    lists = [
        route
        for route in ROUTES
        if route.method == "GET"
        and doc["paths"][route.path]["get"]["responses"]["200"]["content"]
        .get("application/json", {})
        .get("schema", {})
        .get("$ref", "")
        .endswith("List")
    ]
    assert len(lists) >= 8
    for route in lists:
        ref = doc["paths"][route.path]["get"]["responses"]["200"]["content"]["application/json"]
        schema = doc["components"]["schemas"][ref["schema"]["$ref"].rsplit("/", 1)[1]]
        assert set(schema["required"]) == {"items", "next_cursor"}, route.path
        r = api.get(route.path.replace("{name}", "listed"), api.admin_key)
        assert r.status_code == 200, (route.path, r.text)
        assert set(r.json()) == {"items", "next_cursor"}, route.path


def _allows(schema: dict[str, Any], value: object) -> bool:
    return bool(Draft202012Validator(schema).is_valid(value))


def test_document_leaves_out_what_the_server_always_refuses(api: Api) -> None:
    """A value every request is refused for (400) is outside the document's schema.

    schemathesis (positive_data_acceptance) found these against a live server: the document
    allowed ``?issuer=``, ``?expiring_within=``, ``?actor_id=`` (refused: empty is no
    filter), any ``…/outputs/{output}`` (two are readable) and any string as a permission
    (the catalogue is fixed), so a client generated from it sent them as valid.
    """
    doc = api.get("/api/v1/openapi.json").json()

    def query(path: str, name: str) -> dict[str, Any]:
        params = {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}
        schema: dict[str, Any] = params[name]["schema"]
        return schema

    for path, name, accepted in [
        ("/api/v1/certificates", "issuer", "default"),
        ("/api/v1/certificates", "expiring_within", "30D"),
        ("/api/v1/auth/apikeys", "actor_id", "admin"),
    ]:
        assert_problem(api.get(path, api.admin_key, params={name: ""}), 400)
        assert not _allows(query(path, name), ""), (path, name)
        r = api.get(path, api.admin_key, params={name: accepted})
        assert r.status_code == 200, r.text
        assert _allows(query(path, name), accepted)

    outputs = "/api/v1/services/{name}/outputs/{output}"
    output = next(
        p["schema"] for p in doc["paths"][outputs]["get"]["parameters"] if p["name"] == "output"
    )
    for refused in ("ca-internal", "certs-internal", "tls"):
        assert_problem(api.get(f"/api/v1/services/none/outputs/{refused}", api.admin_key), 400)
        assert not _allows(output, refused)
    for readable in ("certs-public", "client-trust"):
        # Past the output check: the service is looked up (and is not there).
        assert_problem(api.get(f"/api/v1/services/none/outputs/{readable}", api.admin_key), 404)
        assert _allows(output, readable)

    schemas = doc["components"]["schemas"]
    for model, method, path in [
        ("RoleCreate", "POST", "/api/v1/auth/roles"),
        ("RoleUpdate", "PUT", "/api/v1/auth/roles/doc-role"),
    ]:
        permissions = schemas[model]["properties"]["permissions"]
        body = {"id": "doc-role"} if method == "POST" else {}
        r = api.request(method, path, api.admin_key, json={**body, "permissions": ["cert.nope"]})
        assert_problem(r, 400)
        assert not _allows(permissions, ["cert.nope"]), model
        assert not _allows(permissions, [""]), model
        r = api.request(method, path, api.admin_key, json={**body, "permissions": ["cert.read"]})
        assert r.status_code in (200, 201), r.text
        assert _allows(permissions, ["cert.read"])
        assert _allows(permissions, list(PERMISSIONS))


def test_document_gives_the_duration_grammar(api: Api) -> None:
    """``expiring_within`` and every ``validity`` carry a pattern the server agrees with.

    schemathesis sent ``?expiring_within=0`` and ``"validity": "n"`` as valid (any string was):
    the pattern now says what parses; zero and more than 100 years still match it and are
    refused (400) by the server alone.
    """
    doc = api.get("/api/v1/openapi.json").json()
    params = doc["paths"]["/api/v1/certificates"]["get"]["parameters"]
    schema = next(p["schema"] for p in params if p["name"] == "expiring_within")
    pattern = schema["pattern"]
    for model in ("CertificateIssue", "CertificateRenew", "IssuerCreate"):
        assert doc["components"]["schemas"][model]["properties"]["validity"]["pattern"] == pattern
    parsed = ["90D", "8760h", "1Y6M", "P1Y6M", "p2W", "1h30m", "1.5h", " 30D ", "1D12h", "10µs"]
    refused = ["", " ", "0", "90", "n", "D", "P", "PT1H", "1x", "90 D", "-1D", "1e3h", "30D,"]
    for value in parsed + refused:
        r = api.get("/api/v1/certificates", api.admin_key, params={"expiring_within": value})
        taken = r.status_code == 200
        if not taken:
            assert_problem(r, 400)
        assert taken == (value in parsed), (value, r.text)
        assert _allows(schema, value) == taken, value


def test_the_audit_credential_filter_is_documented_in_the_form_events_carry(api: Api) -> None:
    # Any other form is a 400: the spec says which, as the events' credential field has it.
    doc = api.get("/api/v1/openapi.json").json()
    params = {p["name"]: p for p in doc["paths"]["/api/v1/audit"]["get"]["parameters"]}
    pattern = params["credential"]["schema"]["pattern"]
    api.issue()
    carried = {e["credential"] for e in api.audit() if e["action"] == "certificate.issue"}
    assert carried == {f"apikey {api.admin_key.split('_')[1]}"}
    assert all(re.search(pattern, c) for c in carried)
    assert not re.search(pattern, api.admin_key.split("_")[1])


def test_every_query_parameter_the_server_refuses_empty_is_documented_non_empty(
    api: Api,
) -> None:
    """A filter refused when given empty (400) has a schema that refuses "" too.

    The audit log's actor, credential, action, outcome and target were refused empty, as the
    certificate and API key filters are, but documented as any string: schemathesis sent
    ``?actor=`` as a valid request.
    """
    doc = api.get("/api/v1/openapi.json").json()
    checked = []
    for path, item in doc["paths"].items():
        if "{" in path or "get" not in item:
            continue
        for param in item["get"].get("parameters", []):
            if param["in"] != "query" or param["schema"].get("type") != "string":
                continue
            r = api.get(path, api.admin_key, params={param["name"]: ""})
            if r.status_code == 400:
                assert not _allows(param["schema"], ""), (path, param["name"])
                checked.append(param["name"])
    assert {"actor", "credential", "action", "outcome", "target", "issuer"} <= set(checked)


def test_audit_times_are_documented_as_the_server_takes_them(api: Api) -> None:
    """``since`` and ``until`` take any ISO 8601 time, a zone-less one as UTC, and a date.

    They were documented as ``"format": "date-time"`` (RFC 3339: the zone is required), which
    refused ``2026-12-05T15:00:00``, the form their own description gives as UTC.
    """
    doc = api.get("/api/v1/openapi.json").json()
    params = {p["name"]: p["schema"] for p in doc["paths"]["/api/v1/audit"]["get"]["parameters"]}
    for name in ("since", "until"):
        for value in ("2026-12-05T15:00:00Z", "2026-12-05T15:00:00", "2026-12-05"):
            r = api.get("/api/v1/audit", api.admin_key, params={name: value})
            assert r.status_code == 200, r.text
            assert _allows(params[name], value)
            assert "format" not in params[name], params[name]
        assert_problem(api.get("/api/v1/audit", api.admin_key, params={name: ""}), 400)
        assert not _allows(params[name], "")


def test_ids_are_documented_as_the_server_takes_them(api: Api) -> None:
    """A role, actor or issuer id the server refuses is outside the document, and the reverse.

    They were documented as 1-64 characters of any kind: schemathesis sent ``"id": "cÑ"`` as
    valid (refused: lower-case letters, digits, '.', '_' or '-'). Blanks around it are
    stripped, so they are in the pattern; its length is the stripped one.
    """
    doc = api.get("/api/v1/openapi.json").json()
    schemas = doc["components"]["schemas"]
    taken = ["a", "0.b_c-d", "z" * 64, " padded\u3000", "\tx\n", " " + "y" * 64]
    refused = ["", " ", "cÑ", "Abc", "-a", ".a", "_a", "a b", "w" * 65, "a/b", "a\x1c", "\ufeffa"]
    for model, path, extra in (
        ("RoleCreate", "/api/v1/auth/roles", {}),
        ("ActorCreate", "/api/v1/auth/actors", {}),
        # A long id would make a common name too long (certctl ID): that 400 is not the id's.
        ("IssuerCreate", "/api/v1/issuers", {"common_name": "Id CA"}),
    ):
        schema = schemas[model]["properties"]["id"]
        for value in taken + refused:
            r = api.post(path, api.admin_key, json={"id": value, **extra})
            if value in taken:
                assert r.status_code == 201, (model, value, r.text)
            else:
                assert_problem(r, 400)
            assert _allows(schema, value) == (value in taken), (model, value)


def test_service_names_are_documented_as_the_server_takes_them(api: Api) -> None:
    """``metadata.name`` of a TLSService carries the pattern the server checks it with.

    It was documented as any string: schemathesis sent ``"metadata": {"name": ""}`` as valid.
    """
    doc = api.get("/api/v1/openapi.json").json()
    schema = doc["components"]["schemas"]["Metadata"]["properties"]["name"]
    taken = ["a", "0", "web-1", "x" * 53, "a-b-c"]
    refused = ["", "-a", "a-", "A", "a_b", "a.b", "x" * 54, " a", "a\n", "ñ"]
    for value in taken + refused:
        body = {"apiVersion": "certctl.io/v1", "kind": "TLSService", "metadata": {"name": value}}
        r = api.request(
            "PUT", "/api/v1/services/x", api.admin_key, json=body, params={"dry_run": "true"}
        )
        refused_for_name = r.status_code == 400 and "names are 1-53" in r.text
        assert refused_for_name == (value in refused), (value, r.status_code, r.text)
        # Python's re lets $ match before a final newline; ECMA 262 (JSON Schema's) does not.
        if value != "a\n":
            assert _allows(schema, value) == (value in taken), value


def test_the_ocsp_routes_are_documented_with_their_media_types(api: Api) -> None:
    """The POST body and both answers are DER (application/ocsp-request, -response)."""
    paths = api.get("/api/v1/openapi.json").json()["paths"]
    post = paths["/api/v1/issuers/{id}/ocsp"]["post"]
    assert list(post["requestBody"]["content"]) == [
        "application/ocsp-request",
        "application/octet-stream",
    ]
    assert list(post["responses"]["200"]["content"]) == ["application/ocsp-response"]
    assert "413" in post["responses"]
    assert "security" not in post
    get = paths["/api/v1/issuers/{id}/ocsp/{request}"]["get"]
    assert [p["name"] for p in get["parameters"]] == ["id", "request"]
    assert list(get["responses"]["200"]["content"]) == ["application/ocsp-response"]
