"""Every 201 names what it created in ``Location`` (RFC 9110 10.2.2), and a GET of it finds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from certctl.api.app import ROUTES
from tests.api.conftest import Api, assert_problem
from tests.api.test_acme import Acme, Raw
from tests.api.test_acme import acme_on as acme_on  # the fixture, shared
from tests.api.test_certificate_import import OpensslCa, _import_ca


def _created(api: Api, method: str, path: str, body: dict[str, Any]) -> tuple[str, Any]:
    r = api.request(method, path, api.admin_key, json=body)
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    found = api.get(location, api.admin_key)
    assert found.status_code == 200, (location, found.text)
    return location, found.json()


def test_every_201_has_a_location_that_answers_a_get(api: Api, tmp_path: Path) -> None:
    seen: set[tuple[str, str]] = set()

    location, role = _created(
        api, "POST", "/api/v1/auth/roles", {"id": "ops.team-1", "name": "ops", "permissions": []}
    )
    assert (location, role["id"]) == ("/api/v1/auth/roles/ops.team-1", "ops.team-1")
    seen.add(("POST", "/api/v1/auth/roles"))

    location, actor = _created(
        api, "POST", "/api/v1/auth/actors", {"id": "ci", "name": "ci", "roles": ["r-viewer"]}
    )
    assert (location, actor["id"]) == ("/api/v1/auth/actors/ci", "ci")
    seen.add(("POST", "/api/v1/auth/actors"))

    r = api.post("/api/v1/auth/apikeys", api.admin_key, json={"actor_id": "ci", "name": "ci"})
    assert r.status_code == 201, r.text
    key_id = r.json()["id"]
    assert r.headers["location"] == f"/api/v1/auth/apikeys/{key_id}"
    shown = api.get(r.headers["location"], api.admin_key).json()
    assert shown["id"] == key_id
    assert "key_value" not in shown
    seen.add(("POST", "/api/v1/auth/apikeys"))

    location, issuer = _created(api, "POST", "/api/v1/issuers", {"id": "ops-ca"})
    assert (location, issuer["id"]) == ("/api/v1/issuers/ops-ca", "ops-ca")
    seen.add(("POST", "/api/v1/issuers"))

    body = {"issuer": "ops-ca", "common_name": "svc.example.com", "dns_names": ["svc.example.com"]}
    r = api.post("/api/v1/certificates", api.admin_key, json=body)
    assert r.status_code == 201, r.text
    cert_id = r.json()["id"]
    assert r.headers["location"] == f"/api/v1/certificates/{cert_id}"
    shown = api.get(r.headers["location"], api.admin_key).json()
    assert (shown["id"], shown["serial"]) == (cert_id, r.json()["serial"])
    seen.add(("POST", "/api/v1/certificates"))

    r = api.post(f"/api/v1/certificates/{cert_id}/renew", api.admin_key)
    assert r.status_code == 201, r.text
    renewed = r.json()["id"]
    assert renewed != cert_id
    assert r.headers["location"] == f"/api/v1/certificates/{renewed}"
    assert api.get(r.headers["location"], api.admin_key).json()["renewed_from"] == cert_id
    seen.add(("POST", "/api/v1/certificates/{id}/renew"))

    doc = {
        "apiVersion": "certctl.io/v1",
        "kind": "TLSService",
        "metadata": {"name": "web"},
        "spec": {"http": {"tls": {"selfSignedCertificate": {"subjectAltNames": []}}}},
    }
    location, service = _created(api, "PUT", "/api/v1/services/web", doc)
    assert (location, service["name"]) == ("/api/v1/services/web", "web")
    # Twin: replacing it creates nothing, so 200 and no Location.
    again = api.request("PUT", "/api/v1/services/web", api.admin_key, json=doc)
    assert again.status_code == 200, again.text
    assert "location" not in again.headers

    pem = issuer["certificate_pem"]  # trust the clients of the ops-ca issuer
    location, clients = _created(
        api, "POST", "/api/v1/services/web/clients", {"certificate_pem": pem}
    )
    # The clients have no URL of their own: Location is the list that shows them.
    assert location == "/api/v1/services/web/clients"
    assert [c["subject"] for c in clients["items"]] == [issuer["subject"]]
    seen.add(("POST", "/api/v1/services/{name}/clients"))

    # Certificates recorded from a bundle have no one URL: Location is the list that shows them.
    old_ca = OpensslCa(tmp_path, "old-ca", "/CN=Old CA")
    _import_ca(api, "old-ca", old_ca)
    leaf = old_ca.leaf("old.example.com")
    location, listed = _created(
        api, "POST", "/api/v1/certificates/import", {"certificate_pem": leaf.read_text()}
    )
    assert location == "/api/v1/certificates"
    assert "old.example.com" in [c["common_name"] for c in listed["items"]]
    seen.add(("POST", "/api/v1/certificates/import"))

    r = api.post("/api/v1/acme/eab-keys", api.admin_key, json={"name": "ci"})
    assert r.status_code == 201, r.text
    eab_id = r.json()["id"]
    assert r.headers["location"] == f"/api/v1/acme/eab-keys/{eab_id}"
    shown = api.get(r.headers["location"], api.admin_key).json()
    assert shown["id"] == eab_id
    assert "hmac_key" not in shown
    seen.add(("POST", "/api/v1/acme/eab-keys"))

    # A new 201 route fails here until it is covered above.
    assert seen == {(r.method, r.path) for r in ROUTES if r.success == 201}


def test_a_refused_create_has_no_location(api: Api) -> None:
    r = api.post(
        "/api/v1/auth/roles", api.admin_key, json={"id": "r-admin", "name": "x", "permissions": []}
    )
    assert_problem(r, 409)
    assert "location" not in r.headers


def test_openapi_documents_location_on_every_201(api: Api) -> None:
    doc = api.get("/api/v1/openapi.json").json()
    created = {
        (method.upper(), path): op["responses"]["201"]
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if "201" in op["responses"]
    }
    assert set(created) == {(r.method, r.path) for r in ROUTES if r.success == 201} | {
        ("PUT", "/api/v1/services/{name}")
    }
    for key, response in created.items():
        assert response["headers"]["Location"]["required"] is True, key
    # A 200 says nothing of Location.
    put = doc["paths"]["/api/v1/services/{name}"]["put"]["responses"]["200"]
    assert "headers" not in put


def test_adding_only_clients_already_trusted_answers_200_without_location(api: Api) -> None:
    # Before, it answered 201 Created with a Location though nothing was created.
    first = api.post("/api/v1/issuers", api.admin_key, json={"id": "ca-one"}).json()
    second = api.post("/api/v1/issuers", api.admin_key, json={"id": "ca-two"}).json()
    doc = {
        "apiVersion": "certctl.io/v1",
        "kind": "TLSService",
        "metadata": {"name": "known-clients"},
        "spec": {"http": {"tls": {"selfSignedCertificate": {"subjectAltNames": []}}}},
    }
    put = api.request("PUT", "/api/v1/services/known-clients", api.admin_key, json=doc)
    assert put.status_code == 201, put.text
    route = "/api/v1/services/known-clients/clients"
    added = api.post(route, api.admin_key, json={"certificate_pem": first["certificate_pem"]})
    assert added.status_code == 201, added.text
    assert added.headers["location"] == route

    again = api.post(route, api.admin_key, json={"certificate_pem": first["certificate_pem"]})
    assert again.status_code == 200, again.text
    assert "location" not in again.headers
    assert again.json()["items"] == []
    assert [c["subject"] for c in api.get(route, api.admin_key).json()["items"]] == [
        first["subject"]
    ]

    # One new among known ones: created, and only the new one is listed as added.
    both = first["certificate_pem"] + second["certificate_pem"]
    mixed = api.post(route, api.admin_key, json={"certificate_pem": both})
    assert mixed.status_code == 201, mixed.text
    assert mixed.headers["location"] == route
    assert [c["subject"] for c in mixed.json()["items"]] == [second["subject"]]


def test_openapi_documents_the_200_of_adding_known_clients(api: Api) -> None:
    doc = api.get("/api/v1/openapi.json").json()
    responses = doc["paths"]["/api/v1/services/{name}/clients"]["post"]["responses"]
    assert responses["201"]["headers"]["Location"]["required"] is True
    assert "headers" not in responses["200"]
    assert responses["200"]["content"] == responses["201"]["content"]


def test_the_acme_201s_have_a_location_that_a_post_as_get_reads(acme_on: Acme) -> None:
    # The ACME routes are mounted apart from ROUTES (api.acme_routes, with acme.enabled): their
    # two 201s, new-account and new-order, name an absolute URL (RFC 8555 7.3, 7.4) that the
    # account reads back with a POST-as-GET.
    raw = Raw(acme_on)
    account = raw.register()
    assert account.startswith(f"{acme_on.base}/acme/account/")
    shown = raw.post(account.split("/acme/", 1)[1], raw.jws(account, None))
    assert (shown.status_code, shown.json()["status"]) == (200, "valid")
    created = raw.new_order(["localhost"])
    assert created.status_code == 201, created.text
    order = created.headers["location"]
    assert order.startswith(f"{acme_on.base}/acme/order/")
    shown = raw.post(order.split("/acme/", 1)[1], raw.jws(order, None))
    assert shown.status_code == 200, shown.text
    assert shown.json() == created.json()
