"""/api/v1/certificates and the issuer CRL: issue, list, get, revoke, renew."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import logging
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, insert, inspect, literal, select, text

from certctl.pki import (
    KeyType,
    SubjectAltNames,
    common_name_dn,
    create_csr,
    format_serial,
    generate_private_key,
)
from certctl.pki.issue import BACKDATE
from certctl.server.periodic import refresh_metrics
from certctl.services import certificates, crls, issuance, issuers
from certctl.services.context import Principal, Services
from certctl.store.db import create_store_engine, migrate, session_factory, unicode_lower
from certctl.store.models import CertificateRecord
from tests._stores import PG_BIN
from tests._tools import ok, openssl_ca_issuers_uris, openssl_crl_uris, require, run
from tests.api.conftest import BACKENDS, Api, PostgresCluster, assert_problem, running_app
from tests.integration.test_pkilint import build_pkix_validator, findings
from tests.unit.store.test_migration_head import downgrade_store

CERTS = "/api/v1/certificates"
ISSUERS = "/api/v1/issuers"
ISSUE_FIELDS = {
    "id",
    "serial",
    "status",
    "not_before",
    "not_after",
    "certificate_pem",
    "chain_pem",
    "warnings",
}


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _ca(api: Api) -> x509.Certificate:
    return _cert(api.get("/api/v1/issuers/default/ca.pem").text)


def _ca_key(ca: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # the default issuer is ec-p256
    return key


def _csr_pem(cn: str = "csr.example.com", key_type: KeyType = KeyType.EC_P256) -> tuple[str, Any]:
    key = generate_private_key(key_type)
    csr = create_csr(key, common_name_dn(cn), SubjectAltNames.parse(dns=[cn], ip=["10.1.2.3"]))
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def test_issue_from_csr(api: Api) -> None:
    csr_pem, key = _csr_pem()
    r = api.post(CERTS, api.admin_key, json={"issuer": "default", "csr": csr_pem})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == ISSUE_FIELDS  # no private_key_pem: the requester holds the key
    assert body["status"] == "active"
    assert body["chain_pem"] == ""  # the default issuer is a root
    cert = _cert(body["certificate_pem"])
    assert cert.public_key() == key.public_key()
    assert format_serial(cert.serial_number) == body["serial"]
    cert.verify_directly_issued_by(_ca(api))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["csr.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    # Default validity 90D.
    assert cert.not_valid_after_utc - api.clock() == timedelta(days=90)


def test_issue_with_server_side_key(api: Api) -> None:
    body = api.issue(
        common_name="web.example.com",
        dns_names=["web.example.com", "www.example.com"],
        ip_addresses=["192.0.2.7", "2001:db8::7"],
        profile="server+client",
        validity="30D",
        key_type="ed25519",
    )
    assert set(body) == ISSUE_FIELDS | {"private_key_pem"}
    cert = _cert(body["certificate_pem"])
    key = serialization.load_pem_private_key(body["private_key_pem"].encode(), None)
    assert key.public_key() == cert.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert body["status"] == "expiring"  # 30 days <= the 30-day window

    got = api.get(f"{CERTS}/{body['id']}", api.admin_key)
    assert got.status_code == 200
    assert "private_key_pem" not in got.json()
    assert "PRIVATE KEY" not in got.text
    assert got.json()["sans"] == {
        "dns": ["web.example.com", "www.example.com"],
        "ip": ["192.0.2.7", "2001:db8::7"],
        "email": [],
        "uri": [],
    }
    assert got.json()["profile"] == "server+client"
    assert got.json()["created_by"] == "admin"
    listing = api.get(CERTS, api.admin_key)
    assert "PRIVATE KEY" not in listing.text
    pem = api.get(f"{CERTS}/{body['id']}", api.admin_key, params={"format": "pem"})
    assert "PRIVATE KEY" not in pem.text


SPIFFE_ID = "spiffe://example.org/ns/payments/sa/api"


@pytest.fixture(scope="module")
def pkix_validator() -> Any:
    return build_pkix_validator()


def _openssl_sans(cert_pem: str, path: Path) -> str:
    """The X509v3 Subject Alternative Name line of ``openssl x509 -text``."""
    path.write_text(cert_pem)
    text = ok(run("openssl", "x509", "-in", path, "-noout", "-text")).stdout
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if "X509v3 Subject Alternative Name" in line)
    return lines[at + 1].strip()


def test_email_and_uri_sans_for_people_and_workloads(
    api: Api, tmp_path: Path, pkix_validator: Any
) -> None:
    # A person's client certificate (e-mail SAN) and a SPIFFE workload identity (URI SAN, no
    # subject): with server-side key generation, as `cert issue --email/--uri` offline.
    person = api.issue(
        common_name="Alice Example",
        dns_names=[],
        email_addresses=["alice@example.com"],
        profile="client",
    )
    workload = api.issue(common_name="", dns_names=[], uris=[SPIFFE_ID], profile="server+client")
    assert person["warnings"] == workload["warnings"] == []
    expected = {
        person["id"]: {"dns": [], "ip": [], "email": ["alice@example.com"], "uri": []},
        workload["id"]: {"dns": [], "ip": [], "email": [], "uri": [SPIFFE_ID]},
    }
    assert _openssl_sans(person["certificate_pem"], tmp_path / "person.pem") == (
        "email:alice@example.com"
    )
    assert _openssl_sans(workload["certificate_pem"], tmp_path / "workload.pem") == (
        f"URI:{SPIFFE_ID}"
    )
    workload_cert = _cert(workload["certificate_pem"])
    assert workload_cert.subject == x509.Name([])
    # RFC 5280 4.2.1.6: with an empty subject the SAN extension is critical.
    assert workload_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert findings(pkix_validator, tmp_path / "person.pem") == []
    # pkilint 0.13 checks a URI with validators.url, which knows ftp, http(s), git, rtsp, sftp,
    # ssh and telnet only: any spiffe:// (or urn:) URI is its "invalid_uri_syntax", though
    # RFC 5280 4.2.1.6 asks for an RFC 3986 URI, which it is. Nothing else is reported.
    assert [code for _, code, _ in findings(pkix_validator, tmp_path / "workload.pem")] == [
        "pkix.invalid_uri_syntax"
    ]

    # The same names asked for in a CSR are kept, stored and shown alike.
    key = generate_private_key(KeyType.EC_P256)
    csr = create_csr(
        key,
        common_name_dn("bob"),
        SubjectAltNames.parse(email=["bob@example.com"], uri=["spiffe://example.org/bob"]),
    )
    r = api.post(
        CERTS,
        api.admin_key,
        json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode(), "profile": "client"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == []
    assert _openssl_sans(r.json()["certificate_pem"], tmp_path / "bob.pem") == (
        "email:bob@example.com, URI:spiffe://example.org/bob"
    )
    expected[r.json()["id"]] = {
        "dns": [],
        "ip": [],
        "email": ["bob@example.com"],
        "uri": ["spiffe://example.org/bob"],
    }

    for cert_id, sans in list(expected.items()):
        assert api.get(f"{CERTS}/{cert_id}", api.admin_key).json()["sans"] == sans
        # A renewal keeps them, with a fresh key or the requester's.
        renewed = api.post(f"{CERTS}/{cert_id}/renew", api.admin_key)
        assert renewed.status_code == 201, renewed.text
        new_id = renewed.json()["id"]
        assert api.get(f"{CERTS}/{new_id}", api.admin_key).json()["sans"] == sans
        new_sans = SubjectAltNames.from_extension(
            _cert(renewed.json()["certificate_pem"])
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
        )
        assert new_sans.as_dict() == sans
        expected[new_id] = sans
    listed = {item["id"]: item["sans"] for item in api.get(CERTS, api.admin_key).json()["items"]}
    assert {k: listed[k] for k in expected} == expected


def test_email_and_uri_sans_are_normalised_and_deduplicated(api: Api) -> None:
    # As SubjectAltNames.parse does offline: the domain part lower-cased, repeats dropped.
    body = api.issue(
        common_name="carol",
        dns_names=[],
        email_addresses=["carol@EXAMPLE.com", "carol@example.com", " carol@example.com "],
        uris=[SPIFFE_ID, f" {SPIFFE_ID} "],
        profile="client",
    )
    assert api.get(f"{CERTS}/{body['id']}", api.admin_key).json()["sans"] == {
        "dns": [],
        "ip": [],
        "email": ["carol@example.com"],
        "uri": [SPIFFE_ID],
    }


def test_a_server_certificate_with_only_a_uri_san_is_issued_as_offline(api: Api) -> None:
    # The profile rules are pki's, shared with `cert issue` offline: explicit SANs of any type
    # are what the certificate names; the CN becomes a DNS SAN only when there are none.
    body = api.issue(common_name="api.example.com", dns_names=[], uris=[SPIFFE_ID])
    cert = _cert(body["certificate_pem"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(SPIFFE_ID)]
    # Negative twin: without the URI the CN is the DNS name, as before.
    plain = api.issue(common_name="api.example.com", dns_names=[])
    san = _cert(plain["certificate_pem"]).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert list(san.value) == [x509.DNSName("api.example.com")]


def test_get_as_json_and_pem(api: Api) -> None:
    body = api.issue()
    r = api.get(f"{CERTS}/{body['id']}", api.admin_key)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert data["id"] == body["id"]
    assert data["issuer"] == "default"
    assert data["serial"] == body["serial"]
    assert data["common_name"] == "svc.example.com"
    assert data["certificate_pem"] == body["certificate_pem"]
    assert data["revoked_at"] is None
    assert data["renewed_from"] is None

    pem = api.get(
        f"{CERTS}/{body['id']}", api.admin_key, headers={"Accept": "application/x-pem-file"}
    )
    assert pem.status_code == 200
    assert pem.headers["content-type"] == "application/x-pem-file"
    certs = x509.load_pem_x509_certificates(pem.content)
    assert certs == [_cert(body["certificate_pem"])]

    def served(accept: str, **params: str) -> str:
        r = api.get(
            f"{CERTS}/{body['id']}", api.admin_key, headers={"Accept": accept}, params=params
        )
        assert r.status_code == 200, r.text
        return str(r.headers["content-type"])

    # The header's q-values count: q=0 refuses PEM, and the preferred type wins.
    assert served("application/json, application/x-pem-file;q=0") == "application/json"
    assert served("application/x-pem-file;q=0.5, application/json") == "application/json"
    assert served("application/json;q=0.5, application/x-pem-file") == "application/x-pem-file"
    assert served("application/x-pem-file, application/json") == "application/x-pem-file"
    assert served("application/x-pem-file;q=bogus") == "application/json"
    assert served("*/*") == "application/json"
    # ?format= overrides the header either way.
    assert served("application/x-pem-file", format="json") == "application/json"
    assert served("application/json", format="pem") == "application/x-pem-file"

    assert_problem(api.get(f"{CERTS}/{'0' * 24}", api.admin_key), 404)
    assert_problem(
        api.get(f"{CERTS}/nope", api.admin_key, headers={"Accept": "application/x-pem-file"}), 404
    )


def test_subject_attributes_are_named_as_openssl_names_them(api: Api) -> None:
    # The details and the list showed "CN=mail.example.com,2.5.4.5=42,
    # 1.2.840.113549.1.9.1=ops@example.com"; openssl -nameopt RFC2253 and inspect name them.
    key = generate_private_key(KeyType.EC_P256)
    subject = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.EMAIL_ADDRESS, "ops@example.com"),
            x509.NameAttribute(x509.NameOID.SERIAL_NUMBER, "42"),
            x509.NameAttribute(x509.NameOID.COMMON_NAME, "mail.example.com"),
        ]
    )
    csr = create_csr(key, subject, SubjectAltNames.parse(dns=["mail.example.com"]))
    r = api.post(
        CERTS, api.admin_key, json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}
    )
    assert r.status_code == 201, r.text
    shown = "CN=mail.example.com,serialNumber=42,emailAddress=ops@example.com"
    assert _cert(r.json()["certificate_pem"]).subject == subject
    assert api.get(f"{CERTS}/{r.json()['id']}", api.admin_key).json()["subject"] == shown
    listed = api.get(CERTS, api.admin_key, params={"q": "mail.example.com"}).json()["items"]
    assert [item["subject"] for item in listed] == [shown]
    # What is shown can be searched for: the stored subject keeps the dotted types.
    for q in ("emailAddress=ops@example.com", "SERIALNUMBER=42,EMAILADDRESS=ops", shown):
        found = api.get(CERTS, api.admin_key, params={"q": q}).json()["items"]
        assert [item["id"] for item in found] == [r.json()["id"]], q


def test_pem_of_intermediate_leaf_includes_chain(api: Api) -> None:
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    body = api.issue(issuer="sub")
    pem = api.get(
        f"{CERTS}/{body['id']}", api.admin_key, headers={"Accept": "application/x-pem-file"}
    )
    certs = x509.load_pem_x509_certificates(pem.content)
    assert certs == [_cert(body["certificate_pem"]), _cert(r.json()["certificate_pem"])]


def test_list_pagination_is_keyset_newest_first(api: Api) -> None:
    issued = [api.issue(common_name=f"n{i}.example.com")["id"] for i in range(25)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        r = api.get(CERTS, api.admin_key, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 10
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # A certificate issued mid-walk is newer than every cursor: it never shows up late.
        if pages == 1:
            api.issue(common_name="late.example.com")
    assert pages == 3
    assert seen == list(reversed(issued))
    assert len(set(seen)) == 25
    # Default limit takes everything here; exactly-full last page ends with a null cursor.
    r = api.get(CERTS, api.admin_key, params={"limit": 13})
    second = api.get(CERTS, api.admin_key, params={"limit": 13, "cursor": r.json()["next_cursor"]})
    assert len(second.json()["items"]) == 13
    assert second.json()["next_cursor"] is None


def test_an_unknown_status_filter_names_the_one_meant(api: Api) -> None:
    # `certctl certs list --status Revoked` got the list of four statuses alone.
    for status, meant in (("revokd", "did you mean revoked? "), ("Revoked", "did you mean "
                          "revoked? "), ("valid", "")):  # fmt: skip
        r = api.get(CERTS, api.admin_key, params={"status": status})
        assert assert_problem(r, 400)["detail"] == (
            f"{status}: unknown status ({meant}active, expiring, expired, revoked)"
        )
    # `--status "$STATUS"` with the variable unset: named as an empty issuer filter is, not
    # as ": unknown status".
    r = api.get(CERTS, api.admin_key, params={"status": ""})
    assert assert_problem(r, 400)["detail"] == "status: empty (leave it out for no filter)"


def test_list_filters(api: Api) -> None:
    short = api.issue(common_name="short.example.com", validity="10D")
    long = api.issue(common_name="long.example.com", validity="90D")
    gone = api.issue(common_name="gone.example.com", validity="90D")
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": "other"})
    assert r.status_code == 201
    other = api.issue(issuer="other", common_name="other.example.com")
    revoke = api.post(f"{CERTS}/{gone['id']}/revoke", api.admin_key, json={"reason": "superseded"})
    assert revoke.status_code == 200

    def ids(**params: Any) -> set[str]:
        r = api.get(CERTS, api.admin_key, params=params)
        assert r.status_code == 200, r.text
        return {item["id"] for item in r.json()["items"]}

    assert ids() == {short["id"], long["id"], gone["id"], other["id"]}
    assert ids(status="revoked") == {gone["id"]}
    assert ids(status="expiring") == {short["id"]}
    assert ids(status="active") == {long["id"], other["id"]}
    assert ids(status="expired") == set()
    assert ids(issuer="other") == {other["id"]}
    assert ids(issuer="default", status="active") == {long["id"]}
    assert ids(expiring_within="15D") == {short["id"]}
    assert ids(expiring_within="2160h") == {short["id"], long["id"], other["id"]}
    assert ids(q="SHORT") == {short["id"]}
    assert ids(q="example.com") == {short["id"], long["id"], gone["id"], other["id"]}
    assert ids(q=long["serial"]) == {long["id"]}
    # As openssl prints it: upper case, colons, whole octets; and with extra leading zeros.
    octets = long["serial"]
    assert len(octets) % 2 == 0
    colons = ":".join(octets[i : i + 2] for i in range(0, len(octets), 2)).upper()
    assert ids(q=colons) == {long["id"]}
    assert ids(q="00" + octets) == {long["id"]}
    assert ids(q="nomatch") == set()
    assert ids(q="_") == set()  # a substring, not a LIKE pattern: "_" and "%" are literal
    assert ids(q="%") == set()
    # Time passes: the 10-day certificate expires.
    api.clock.advance(days=11)
    assert ids(status="expired") == {short["id"]}
    listed = api.get(f"{CERTS}/{short['id']}", api.admin_key).json()
    assert listed["status"] == "expired"
    # expiring_within lists it still, as `certs list --expiring-within` says (expired ones
    # too), and the revoked one never.
    assert ids(expiring_within="15D") == {short["id"]}
    assert ids(expiring_within="2160h") == {short["id"], long["id"], other["id"]}


def test_q_folds_non_ascii_letters_on_every_backend(api: Api) -> None:
    """Before, SQLite's lower() left "ÖBB" as "Öbb" while q was lowered by Python: on SQLite
    neither "öbb" nor the exact "ÖBB" found the certificate PostgreSQL found."""
    gateway = api.issue(common_name="ÖBB Gateway", dns_names=["obb.example.com"])
    street = api.issue(common_name="Straße Süd", dns_names=["sued.example.com"])
    api.issue(common_name="obb-other.example.com")

    def ids(q: str) -> set[str]:
        r = api.get(CERTS, api.admin_key, params={"q": q})
        assert r.status_code == 200, r.text
        return {item["id"] for item in r.json()["items"]}

    for q in ("ÖBB", "öbb", "Öbb gate", "ÖBB GATEWAY"):
        assert ids(q) == {gateway["id"]}, q
    assert ids("SÜD") == {street["id"]}
    assert ids("straße") == {street["id"]}
    assert ids("gateway") == {gateway["id"]}  # ASCII q: the built-in lower() as before
    assert ids("Ö%") == set()  # still a substring, not a pattern


def test_an_empty_subject_has_a_critical_san_however_it_is_issued(api: Api, tmp_path: Path) -> None:
    """RFC 5280 4.2.1.6: a certificate with an empty subject has its SAN extension critical,
    as openssl reads it: from names (server-side key), from a CSR without a subject, and
    in the renewal of such a certificate. The API takes an empty subject where the offline
    ``cert issue`` asks for --cn: the SPIFFE X.509-SVIDs it issues often have none."""
    key = generate_private_key(KeyType.EC_P256)
    csr = create_csr(key, x509.Name([]), SubjectAltNames.parse(dns=["csr.example.com"]))
    from_csr = api.post(
        CERTS, api.admin_key, json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}
    )
    assert from_csr.status_code == 201, from_csr.text
    generated = api.issue(common_name="", dns_names=["api.example.com"], ip_addresses=["::1"])
    renewed = api.post(f"{CERTS}/{generated['id']}/renew", api.admin_key, json={})
    assert renewed.status_code == 201, renewed.text
    for name, pem in (
        ("csr", from_csr.json()["certificate_pem"]),
        ("generated", generated["certificate_pem"]),
        ("renewed", renewed.json()["certificate_pem"]),
    ):
        path = tmp_path / f"{name}.pem"
        path.write_text(pem)
        text = ok(run("openssl", "x509", "-in", path, "-noout", "-text")).stdout
        assert re.search(r"^\s*Subject: *$", text, re.MULTILINE), (name, text)
        assert "X509v3 Subject Alternative Name: critical" in text, (name, text)


def test_q_matches_subject_alternative_names(api: Api) -> None:
    """Before, q searched the common name, subject and serial only: q=api2.example.com missed
    the certificate of api.example.com that also covers it, and a SPIFFE workload
    certificate (no subject, a URI SAN alone) could not be found at all."""
    host = api.issue(
        common_name="api.example.com",
        dns_names=["api.example.com", "api2.example.com"],
        ip_addresses=["10.20.30.40", "2001:db8::7"],
    )
    workload = api.issue(
        common_name="", dns_names=[], uris=["spiffe://Example.org/ns/Payments/sa/web"]
    )
    person = api.issue(
        common_name="Alice Example",
        dns_names=[],
        email_addresses=["Alice.Liddell@example.com"],
        profile="client",
    )
    # Stored as given to DNS: lower-case A-labels (xn--bcher-kva.example, xn--strae-oqa.de).
    books = api.issue(common_name="", dns_names=["Bücher.example"])
    street = api.issue(
        common_name="shop.example.net", dns_names=["shop.example.net", "straße.de", "webmail.de"]
    )
    # JSON escapes '"' and '\\' in the stored text; here they spell a key. No URI SAN holds
    # them now (RFC 3986: percent-encoded), but a row stored before that may.
    quoted = api.issue(common_name="", dns_names=[], uris=["urn:x:quoted"])
    with api.services.engine.begin() as connection:
        connection.execute(
            CertificateRecord.__table__.update()
            .where(CertificateRecord.__table__.c.id == quoted["id"])
            .values(sans={"dns": [], "ip": [], "email": [], "uri": ['urn:x:"uri":a\\b']})
        )
    stored = api.get(f"{CERTS}/{books['id']}", api.admin_key).json()["sans"]
    assert stored["dns"] == ["xn--bcher-kva.example"]

    def ids(q: str) -> set[str]:
        r = api.get(CERTS, api.admin_key, params={"q": q})
        assert r.status_code == 200, r.text
        return {item["id"] for item in r.json()["items"]}

    assert ids("api2.example.com") == {host["id"]}
    assert ids("API2") == {host["id"]}  # folded as the common name is
    assert ids("10.20.30.40") == {host["id"]}
    assert ids("0.30.4") == {host["id"]}  # a substring, as everywhere else
    assert ids("2001:db8::7") == {host["id"]}
    assert ids("2001:DB8::7") == {host["id"]}
    # An IP address in another spelling finds it stored in canonical form.
    assert ids("2001:0db8:0:0:0:0:0:7") == {host["id"]}
    assert ids("::ffff:10.20.30.40") == {host["id"]}  # stored as the IPv4 address it maps
    assert ids("spiffe://example.org/ns/payments") == {workload["id"]}
    assert ids("sa/WEB") == {workload["id"]}
    assert ids("alice.liddell@example") == {person["id"]}
    # A unicode name finds the A-label it is stored as; the A-label finds itself.
    assert ids("bücher.example") == {books["id"]}
    assert ids("BÜCHER") == {books["id"]}
    assert ids("xn--bcher") == {books["id"]}
    assert ids("straße.de") == {street["id"]}
    assert ids("strasse") == set()  # IDNA 2008: ß is kept, not mapped to ss
    # Values are matched, never the JSON around them: its keys, quotes, brackets, commas.
    for q in ("dns", "ip", "email", "[", "]", "{", "}", ",", '", "', "[]", '": ['):
        assert ids(q) == set(), q
    assert ids("mail") == {street["id"]}  # webmail.de, not the key "email"
    # ":" is in the IPv6 address and the URIs, '"' and "uri" in one URI, nowhere else.
    assert ids(":") == {host["id"], workload["id"], quoted["id"]}
    assert ids('"') == {quoted["id"]}
    assert ids("uri") == {quoted["id"]}
    assert ids('"URI":a\\b') == {quoted["id"]}
    assert ids('"uri":') == {quoted["id"]}
    assert ids("api2_") == set()  # still a substring, not a pattern
    assert ids("api2%") == set()


@pytest.fixture(params=BACKENDS)
def c_locale_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """As ``api``; on PostgreSQL a database of its own in the "C" locale (as initdb
    --locale=C and many managed databases make them), whose lower() folds ASCII only."""
    url = None
    if request.param == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.url(cluster.create_database(locale="C"))
    with running_app(request.param, tmp_path / "data", url) as app:
        yield app


def test_q_folds_as_python_does_whatever_the_postgresql_locale(c_locale_api: Api) -> None:
    """Before, PostgreSQL's lower() in a "C" database left "ÉCOLE" as "École" while SQLite
    folded it with Python's str.lower: q=école found the certificate on SQLite only."""
    api = c_locale_api
    if api.backend == "postgresql":
        with api.services.engine.connect() as conn:
            # The condition of the bug: this database's own lower() folds ASCII only.
            assert conn.scalar(text("SHOW lc_ctype")) == "C"
            assert conn.scalar(text("SELECT lower('ÉCOLE')")) == "École"
    school = api.issue(common_name="ÉCOLE Centrale", dns_names=["school.example.com"])
    street = api.issue(common_name="STRAẞE Nord", dns_names=["nord.example.com"])
    athens = api.issue(common_name="ΑΘΗΝΑ Gateway", dns_names=["athens.example.com"])

    def ids(q: str) -> set[str]:
        r = api.get(CERTS, api.admin_key, params={"q": q})
        assert r.status_code == 200, r.text
        return {item["id"] for item in r.json()["items"]}

    for q in ("école", "ÉCOLE", "École cent", "ÉCOLE CENTRALE"):
        assert ids(q) == {school["id"]}, q
    assert ids("straße") == {street["id"]}  # ẞ folds to ß, as str.lower does
    assert ids("αθηνα") == {athens["id"]}
    assert ids("Αθηνα gate") == {athens["id"]}
    # Folding, not ß → ss or accent stripping: no match on either backend (nor in a SAN).
    assert ids("STRASSE") == set()
    assert ids("ecole") == set()


def test_q_on_a_postgresql_without_icu_falls_back_to_lower_and_says_so(
    postgres_cluster: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # A server built without ICU, as far as this database can tell: the collation is gone.
    database = postgres_cluster.create_database(locale="C")
    engine = create_store_engine(postgres_cluster.url(database))
    try:
        with engine.connect() as conn:  # the first connection finds the collation
            conn.exec_driver_sql('DROP COLLATION pg_catalog."und-x-icu"')
            conn.commit()
    finally:
        engine.dispose()
    engine = create_store_engine(postgres_cluster.url(database))
    try:
        with caplog.at_level(logging.WARNING, "certctl.store"), engine.connect() as conn:
            # The search keeps working, with lower(): ASCII letters only.
            folded = conn.scalar(select(unicode_lower(literal("ÉCOLE Gateway"))))
    finally:
        engine.dispose()
    assert folded == "École gateway"
    assert [r.getMessage() for r in caplog.records] == [
        "PostgreSQL has no ICU collation und-x-icu in this database (LC_CTYPE C): "
        "certificate search (q) folds the case of ASCII letters only"
    ]


def test_q_on_postgresql_reads_the_newest_rows_first_when_the_substring_is_frequent(
    postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Before, PostgreSQL had no statistics on lower(common_name) and the other folded
    columns: it guessed a few matches for any q and sorted them all (~90 ms at 100,000
    certificates) even when the newest 50 matched. Migration 0014's statistics let it
    read the id index backwards and stop at the page (0.2 ms)."""
    url = postgres_cluster.url(postgres_cluster.create_database())
    with running_app("postgresql", tmp_path / "data", url) as api:
        now = api.clock()
        rows = [
            {
                "id": f"{i:024x}",
                "issuer_id": issuers.DEFAULT_ISSUER,
                "serial": f"{0x4000 + i:x}",
                "common_name": f"host-{i}.example.com",
                "subject": f"CN=host-{i}.example.com",
                "sans": {"dns": [f"host-{i}.example.com"], "ip": []},
                "profile": "server",
                "status": "active",
                "not_before": now,
                "not_after": now + timedelta(days=90),
                "certificate_pem": "-",
                "created_at": now,
                "created_by": "admin",
            }
            for i in range(3_000)
        ]
        statements: list[tuple[str, Any]] = []
        reader = Principal("admin", ("admin",), frozenset({"cert.read"}), "api_key")
        engine = api.services.engine
        with engine.begin() as conn:
            conn.execute(insert(CertificateRecord.__table__), rows)
            conn.exec_driver_sql("ANALYZE certificates")  # as autovacuum would after a load

        def plan(q: str) -> str:
            statements.clear()
            certificates.list_certificates(
                api.services,
                reader,
                status=None,
                issuer=None,
                expiring_within=None,
                q=q,
                limit=50,
                cursor=None,
            )
            (statement, parameters) = statements[-1]
            with engine.connect() as conn:
                lines = conn.exec_driver_sql("EXPLAIN " + statement, parameters).scalars()
                return "\n".join(lines)

        def remember(*args: Any) -> None:
            statements.append((args[2], args[3]))

        event.listen(engine, "before_cursor_execute", remember)
        for q in ("example.com", "HOST-", ".com"):
            frequent = plan(q)
            assert "Index Scan Backward using certificates_pkey" in frequent, (q, frequent)
            assert "Sort" not in frequent, (q, frequent)
        # A substring in no row is still looked for with a scan (the planner's choice).
        assert "Seq Scan" in plan("nomatch.invalid"), plan("nomatch.invalid")


def test_revoke(api: Api) -> None:
    body = api.issue()
    r = api.post(f"{CERTS}/{body['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked"
    assert r.json()["revocation_reason"] == "keyCompromise"
    assert r.json()["revoked_at"] is not None
    again = api.post(f"{CERTS}/{body['id']}/revoke", api.admin_key, json={"reason": "superseded"})
    assert "already revoked" in assert_problem(again, 409)["detail"]
    assert api.get(f"{CERTS}/{body['id']}", api.admin_key).json()["revocation_reason"] == (
        "keyCompromise"
    )
    assert_problem(api.post(f"{CERTS}/{'0' * 24}/revoke", api.admin_key, json={}), 404)
    # No body at all means "unspecified".
    other = api.issue()
    r = api.post(f"{CERTS}/{other['id']}/revoke", api.admin_key)
    assert r.status_code == 200, r.text
    assert r.json()["revocation_reason"] == "unspecified"


def test_a_certificate_is_not_revoked_for_a_ca_or_attribute_authority_compromise(
    api: Api,
) -> None:
    """RFC 5280 5.3.1: cACompromise is a CA certificate's reason, aACompromise an attribute
    authority's (CA/B Forum BR 7.2.2 forbids both on a subscriber's; pkilint's BR profile
    says cabf.crl_prohibited_reason_code). Both were taken for a leaf: its issuer's CRL then
    said a CA was compromised, and cACompromise did not revoke the key's other certificates
    as keyCompromise does. An issuer takes cACompromise, but no more aACompromise."""
    cert = api.issue()
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    before = api.counts()
    refusals = {
        f"{CERTS}/{cert['id']}/revoke": {
            "cACompromise": "cACompromise: the reason for a CA's certificate (RFC 5280 5.3.1); "
            "a certificate's compromised key is keyCompromise",
            "aACompromise": "aACompromise: the reason for an attribute authority's "
            "certificate (RFC 5280 5.3.1), which certctl does not issue; a certificate's "
            "compromised key is keyCompromise",
        },
        f"{ISSUERS}/sub/revoke": {
            "aACompromise": "aACompromise: the reason for an attribute authority's "
            "certificate (RFC 5280 5.3.1), which certctl does not issue; an issuer's "
            "compromised key is cACompromise",
        },
    }
    for path, reasons in refusals.items():
        for reason, detail in reasons.items():
            refused = api.post(path, api.admin_key, json={"reason": reason})
            assert assert_problem(refused, 400)["detail"] == detail
    assert api.counts() == before
    assert api.get(f"{CERTS}/{cert['id']}", api.admin_key).json()["status"] == "active"
    schemas = api.get("/api/v1/openapi.json").json()["components"]["schemas"]
    for name, absent in (("CertificateRevoke", refusals[f"{CERTS}/{cert['id']}/revoke"]),
                         ("IssuerRevoke", refusals[f"{ISSUERS}/sub/revoke"])):  # fmt: skip
        documented = schemas[name]["properties"]["reason"]["enum"]
        assert "keyCompromise" in documented
        assert not set(absent) & set(documented), (name, documented)
    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "cACompromise"})
    assert r.status_code == 200, r.text


def test_an_empty_reason_is_refused_naming_the_reasons(api: Api) -> None:
    """`certctl certs revoke ID --reason ""` (a variable left empty in a script) revoked as
    unspecified: a keyCompromise meant was published as no compromise, and final. Left out,
    the reason is still unspecified."""
    cert = api.issue()
    r = api.post(ISSUERS, api.admin_key, json={"id": "empty-reason", "parent": "default"})
    assert r.status_code == 201, r.text
    before = api.counts()
    reasons = "affiliationChanged, cessationOfOperation, keyCompromise, privilegeWithdrawn, "
    said = {
        f"{CERTS}/{cert['id']}/revoke": "an empty revocation reason: give one of "
        f"{reasons}superseded, unspecified, or leave the reason out for unspecified",
        f"{ISSUERS}/empty-reason/revoke": "an empty revocation reason: give one of "
        "affiliationChanged, cACompromise, cessationOfOperation, keyCompromise, "
        "privilegeWithdrawn, superseded, unspecified, or leave the reason out for unspecified",
    }
    for path, detail in said.items():
        for empty in ("", " "):
            r = api.post(path, api.admin_key, json={"reason": empty})
            assert assert_problem(r, 400)["detail"] == detail, (path, empty)
    assert api.counts() == before
    assert api.get(f"{CERTS}/{cert['id']}", api.admin_key).json()["status"] == "active"
    assert api.get(f"{ISSUERS}/empty-reason", api.admin_key).json()["status"] == "active"
    # Negative twin: null (as the CLI sends without --reason) is unspecified.
    r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={"reason": None})
    assert r.status_code == 200, r.text
    assert r.json()["revocation_reason"] == "unspecified"


def test_hold_and_remove_from_crl_are_refused_saying_why(api: Api) -> None:
    """Both are RFC 5280 reasons: "unknown revocation reason" told the caller a lie."""
    cert = api.issue()
    before = api.counts()
    said = {
        "certificateHold": "certificateHold: a hold is lifted by taking the certificate off "
        "the CRL, which certctl never does (a revocation is final); one of ",
        "removeFromCRL": "removeFromCRL: a reason for delta CRLs only (RFC 5280 5.3.1), "
        "which certctl does not publish; one of ",
    }
    for reason, start in said.items():
        r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={"reason": reason})
        detail = assert_problem(r, 400)["detail"]
        assert detail.startswith(start + "affiliationChanged, cessationOfOperation, "), detail
    assert api.counts() == before


def test_a_reason_in_another_case_or_misspelt_names_the_one_meant(api: Api) -> None:
    """`certctl certs revoke ID --reason keycompromise` got the list of seven reasons alone."""
    cert = api.issue()
    r = api.post(ISSUERS, api.admin_key, json={"id": "reason-sub", "parent": "default"})
    assert r.status_code == 201, r.text
    before = api.counts()
    reasons = "affiliationChanged, cessationOfOperation, keyCompromise, privilegeWithdrawn, "
    said = {
        (f"{CERTS}/{cert['id']}/revoke", "keycompromise"): "keycompromise: unknown revocation "
        f"reason (did you mean keyCompromise? one of {reasons}superseded, unspecified)",
        (f"{CERTS}/{cert['id']}/revoke", "superceded"): "superceded: unknown revocation "
        f"reason (did you mean superseded? one of {reasons}superseded, unspecified)",
        # A CA's reason for a certificate, in another case: why it is refused, as spelt right.
        (f"{CERTS}/{cert['id']}/revoke", "cacompromise"): "cACompromise: the reason for a CA's "
        "certificate (RFC 5280 5.3.1); a certificate's compromised key is keyCompromise",
        (f"{ISSUERS}/reason-sub/revoke", "CACompromise"): "CACompromise: unknown revocation "
        "reason (did you mean cACompromise? one of affiliationChanged, cACompromise, "
        "cessationOfOperation, keyCompromise, privilegeWithdrawn, superseded, unspecified)",
    }
    for (path, reason), detail in said.items():
        r = api.post(path, api.admin_key, json={"reason": reason})
        assert assert_problem(r, 400)["detail"] == detail, reason
    assert api.counts() == before


def test_a_certificate_under_a_revoked_issuer_says_so(api: Api) -> None:
    """Its own status stays (its issuer's CRL does not list it), but it no longer verifies.

    A leaf under an intermediate revoked, or below one revoked above its issuer, listed as
    ``active`` with nothing more, and counted so in ``certctl_certificates``: yet every
    client checking the chain's CRLs (``openssl verify -crl_check_all``, Windows, Java)
    refuses it. ``issuer_revoked`` names the revocation; a gauge counts them per issuer.
    """
    for body in ({"id": "mid", "parent": "default", "path_length": 1},
                 {"id": "low", "parent": "mid"}):  # fmt: skip
        r = api.post(ISSUERS, api.admin_key, json=body)
        assert r.status_code == 201, r.text
    low = api.issue(issuer="low", common_name="low.example.com")
    mid = api.issue(issuer="mid", common_name="mid.example.com")
    gone = api.issue(issuer="mid", common_name="gone.example.com")
    elsewhere = api.issue(common_name="elsewhere.example.com")
    assert api.post(f"{CERTS}/{gone['id']}/revoke", api.admin_key, json={}).status_code == 200
    unrevoked = api.get(f"{CERTS}/{low['id']}", api.admin_key).json()
    assert unrevoked["issuer_revoked"] is None
    r = api.post(f"{ISSUERS}/mid/revoke", api.admin_key, json={"reason": "cessationOfOperation"})
    assert r.status_code == 200, r.text
    revocation = {
        "issuer": "mid",
        "revoked_at": r.json()["revoked_at"],
        "reason": "cessationOfOperation",
    }
    # An issuer below it too: it keeps its status, and says why it issues nothing more.
    shown_issuers = {i["id"]: i for i in api.get(ISSUERS, api.admin_key).json()["items"]}
    assert {i: (v["status"], v["issuer_revoked"]) for i, v in shown_issuers.items()} == {
        "default": ("active", None),
        "mid": ("revoked", None),
        "low": ("active", revocation),
    }
    assert api.get(f"{ISSUERS}/low", api.admin_key).json() == shown_issuers["low"]
    listed = {c["id"]: c for c in api.get(CERTS, api.admin_key).json()["items"]}
    for cert in (low, mid, gone, elsewhere):
        shown = api.get(f"{CERTS}/{cert['id']}", api.admin_key).json()
        assert listed[cert["id"]] == shown
        expected = None if cert is elsewhere else revocation
        assert (shown["status"], shown["issuer_revoked"]) == (
            "revoked" if cert is gone else "active",
            expected,
        ), cert["common_name"]
    revoked = api.post(f"{CERTS}/{low['id']}/revoke", api.admin_key, json={})
    assert revoked.json()["issuer_revoked"] == revocation  # the revoke answer shows it too
    # A reason changed to a compromise shows at once (the judgement is remembered per
    # process until the revocations change).
    r = api.post(f"{ISSUERS}/mid/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    shown = api.get(f"{CERTS}/{mid['id']}", api.admin_key).json()["issuer_revoked"]
    assert shown == revocation | {"reason": "keyCompromise"}

    refresh_metrics(api.services)
    key = api.actor_key("prom", ["r-metrics-read"])
    text = api.get("/api/v1/metrics/prometheus", key).text
    gauge = {
        sample.labels["issuer"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "certctl_certificates_under_revoked_issuer"
        for sample in family.samples
    }
    assert gauge == {"default": 0, "mid": 1, "low": 0}  # low's one is revoked now


def test_crl_lists_revoked_serials(api: Api) -> None:
    ca = _ca(api)
    empty = api.get("/api/v1/issuers/default/crl")
    assert empty.status_code == 200
    assert empty.headers["content-type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(empty.content)
    assert len(crl) == 0
    assert crl.is_signature_valid(_ca_key(ca))

    kept = api.issue(common_name="kept.example.com")
    bad = api.issue(common_name="bad.example.com")
    api.post(f"{CERTS}/{bad['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})

    der = api.get("/api/v1/issuers/default/crl")  # public: no key
    crl = x509.load_der_x509_crl(der.content)
    assert crl.is_signature_valid(_ca_key(ca))
    assert crl.issuer == ca.subject
    entry = crl.get_revoked_certificate_by_serial_number(int(bad["serial"], 16))
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(int(kept["serial"], 16)) is None
    assert len(crl) == 1

    pem = api.get("/api/v1/issuers/default/crl", params={"format": "pem"})
    assert pem.status_code == 200
    assert pem.headers["content-type"] == "application/x-pem-file"
    assert pem.text.startswith("-----BEGIN X509 CRL-----")
    pem_crl = x509.load_pem_x509_crl(pem.content)
    assert [r.serial_number for r in pem_crl] == [int(bad["serial"], 16)]
    assert_problem(api.get("/api/v1/issuers/nope/crl"), 404)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc <= ca.not_valid_after_utc


def test_a_revoked_certificate_leaves_the_crl_a_crl_period_after_it_expired(
    api: Api, tmp_path: Path
) -> None:
    """RFC 5280 3.3: an entry may go once it appeared on a regularly scheduled CRL issued
    after the certificate expired. Kept forever, a CA's CRL grew with every revocation it
    ever made (revoked intermediates on their parent's CRL as well).
    """
    gone = api.issue(common_name="gone.example.com", validity="1D")
    kept = api.issue(common_name="kept.example.com", validity="90D")
    r = api.post(
        "/api/v1/issuers", api.admin_key, json={"id": "sub", "parent": "default", "validity": "1D"}
    )
    assert r.status_code == 201, r.text
    sub = _cert(r.json()["certificate_pem"])
    for cert in (gone, kept):
        assert api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key).status_code == 200
    assert api.post("/api/v1/issuers/sub/revoke", api.admin_key, json={}).status_code == 200
    expired = _cert(gone["certificate_pem"]).not_valid_after_utc
    assert sub.not_valid_after_utc == expired
    everyone = {int(gone["serial"], 16), int(kept["serial"], 16), sub.serial_number}
    assert api.openssl_crl_serials("default", tmp_path) == everyone

    # A CRL whose thisUpdate is one CRL period after their expiry still lists them ...
    api.clock.now = expired + crls.CRL_PERIOD + BACKDATE
    assert api.openssl_crl_serials("default", tmp_path) == everyone
    listing = x509.load_der_x509_crl(api.get("/api/v1/issuers/default/crl").content)
    assert listing.last_update_utc == expired + crls.CRL_PERIOD
    # ... the next one, signed once that one is stale, no longer does.
    api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())
    assert api.openssl_crl_serials("default", tmp_path) == {int(kept["serial"], 16)}
    # The unexpired one is still refused by a client checking the CRL.
    (tmp_path / "kept.pem").write_text(kept["certificate_pem"])
    refused = run(
        "openssl", "verify", "-attime", str(int(api.clock.now.timestamp())), "-crl_check",
        "-CAfile", tmp_path / "default-ca.pem", "-CRLfile", tmp_path / "default.crl",
        tmp_path / "kept.pem",
    )  # fmt: skip
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr

    # Never listed again: not by a replica whose clock is a few minutes behind, signing after
    # a revocation (its thisUpdate follows the CRL number), nor by later CRLs.
    other = api.issue(common_name="other.example.com")
    assert api.post(f"{CERTS}/{other['id']}/revoke", api.admin_key).status_code == 200
    behind = _replica(api, lambda: api.clock() - timedelta(minutes=4))
    try:
        crl = crls.crl_for(behind, "default")
    finally:
        behind.engine.dispose()
    listed = {int(kept["serial"], 16), int(other["serial"], 16)}
    assert {entry.serial_number for entry in crl} == listed
    api.clock.advance(days=30)
    assert api.openssl_crl_serials("default", tmp_path) == listed


def test_a_revoked_certificate_leaves_the_crl_only_after_a_crl_issued_past_its_expiry_listed_it(
    api: Api, tmp_path: Path
) -> None:
    """RFC 5280 3.3: an entry MUST NOT be removed until it appears on one CRL issued beyond
    the certificate's validity period. CRLs are signed when fetched: with none fetched in the
    CRL period after the expiry (a CA whose CRL is fetched weekly, a quiet month), the next
    CRL left the entry off, and no CRL issued after the expiry ever listed it.
    """
    gone = api.issue(common_name="gone.example.com", validity="1D")
    r = api.post(
        "/api/v1/issuers", api.admin_key, json={"id": "sub", "parent": "default", "validity": "1D"}
    )
    assert r.status_code == 201, r.text
    sub = _cert(r.json()["certificate_pem"])
    assert api.post(f"{CERTS}/{gone['id']}/revoke", api.admin_key).status_code == 200
    assert api.post("/api/v1/issuers/sub/revoke", api.admin_key, json={}).status_code == 200
    everyone = {int(gone["serial"], 16), sub.serial_number}
    assert api.openssl_crl_serials("default", tmp_path) == everyone
    expired = _cert(gone["certificate_pem"]).not_valid_after_utc

    # Fetched next a month later: the first CRL issued after the expiry still lists them ...
    api.clock.now = expired + timedelta(days=30)
    assert api.openssl_crl_serials("default", tmp_path) == everyone
    listing = x509.load_der_x509_crl(api.get("/api/v1/issuers/default/crl").content)
    assert listing.last_update_utc > expired
    # ... the one after it no longer does, nor any later one.
    api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())
    assert api.openssl_crl_serials("default", tmp_path) == set()
    api.clock.advance(days=1)
    assert api.openssl_crl_serials("default", tmp_path) == set()


def test_a_certificate_revoked_long_after_it_expired_is_listed_once_all_the_same(
    api: Api, tmp_path: Path
) -> None:
    """A key compromised after its certificate expired (the expired predecessors of a
    renewal chain revoked with it): the README says they go onto the CRL, and a relying
    party checking a signature made while it was valid needs it there. It was left off at
    once, as expired for longer than a CRL period: it goes as any other entry, once a CRL
    issued after its expiry, and after its revocation, listed it.
    """
    old = api.issue(common_name="old.example.com", validity="1D")
    expired = _cert(old["certificate_pem"]).not_valid_after_utc
    api.clock.now = expired + timedelta(days=30)
    assert api.openssl_crl_serials("default", tmp_path) == set()
    api.clock.advance(minutes=1)
    r = api.post(f"{CERTS}/{old['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    listed = x509.load_der_x509_crl(api.get("/api/v1/issuers/default/crl").content)
    assert {entry.serial_number for entry in listed} == {int(old["serial"], 16)}
    # Its thisUpdate (BACKDATE before it was signed) is before the revocation: the next
    # one lists it too, the one after that, issued after both, no longer does.
    assert listed.last_update_utc < api.clock.now
    api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())
    assert api.openssl_crl_serials("default", tmp_path) == {int(old["serial"], 16)}
    api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())
    assert api.openssl_crl_serials("default", tmp_path) == set()


def test_crl_says_how_long_a_cache_may_keep_it(api: Api) -> None:
    """As long as the server reuses it (CRL_REUSE), never past nextUpdate.

    Before, the public CRL had no Cache-Control: a CDN or proxy in front applied its own
    default (CloudFront: 24 h), hiding a revocation for that long.
    """
    reuse = int(crls.CRL_REUSE.total_seconds())
    first = api.get("/api/v1/issuers/default/crl")
    assert first.headers["cache-control"] == f"public, max-age={reuse}"
    api.clock.advance(seconds=240)
    again = api.get("/api/v1/issuers/default/crl", params={"format": "pem"})
    assert again.headers["cache-control"] == f"public, max-age={reuse - 240}"
    assert x509.load_pem_x509_crl(again.content).public_bytes(serialization.Encoding.DER) == (
        first.content
    )
    api.clock.advance(seconds=reuse)  # past the reuse: signed anew, fresh again
    later = api.get("/api/v1/issuers/default/crl")
    assert later.content != first.content
    assert later.headers["cache-control"] == f"public, max-age={reuse}"
    # A revocation is a new CRL at once, with its own full max-age.
    cert = api.issue()
    api.clock.advance(seconds=60)
    assert api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key).status_code == 200
    revoked = api.get("/api/v1/issuers/default/crl")
    assert len(x509.load_der_x509_crl(revoked.content)) == 1
    assert revoked.headers["cache-control"] == f"public, max-age={reuse}"
    # Refusals are not made cacheable.
    assert "cache-control" not in api.get("/api/v1/issuers/nope/crl").headers


def test_crl_carries_a_strong_etag_and_answers_if_none_match_with_304(api: Api) -> None:
    """As ca.pem: a client or CDN revalidating after max-age gets a 304 while the CRL is the
    same, from any worker or replica (they serve the stored CRL's bytes), not the whole list.
    """
    crl = "/api/v1/issuers/default/crl"
    r = api.get(crl)
    assert r.status_code == 200, r.text
    etag = r.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{64}"', etag), etag  # strong: a SHA-256 of the bytes
    for held in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = api.get(crl, headers={"If-None-Match": held})
        assert again.status_code == 304, held
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == r.headers["cache-control"]
    assert api.get(crl, headers={"If-None-Match": '"other"'}).content == r.content
    pem = api.get(crl, params={"format": "pem"})
    assert pem.headers["etag"] not in (etag, None)  # its own bytes, its own tag
    assert (
        api.get(
            crl, params={"format": "pem"}, headers={"If-None-Match": pem.headers["etag"]}
        ).status_code
        == 304
    )
    assert api.get(crl, headers={"If-None-Match": pem.headers["etag"]}).status_code == 200
    head = api.request("HEAD", crl, headers={"If-None-Match": etag})
    assert head.status_code == 304
    # Another process on the store serves the same bytes: the same tag, a 304 there too.
    other = _replica(api, lambda: api.clock())
    try:
        assert crls.served_crl(other, "default").der_etag == etag
    finally:
        other.engine.dispose()
    # A revocation is a new CRL: the tag held no longer matches.
    cert = api.issue()
    assert api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key).status_code == 200
    revoked = api.get(crl, headers={"If-None-Match": etag})
    assert revoked.status_code == 200
    assert revoked.headers["etag"] != etag
    assert len(x509.load_der_x509_crl(revoked.content)) == 1
    # A refusal carries no ETag, whatever the client holds.
    missing = api.get("/api/v1/issuers/nope/crl", headers={"If-None-Match": "*"})
    assert_problem(missing, 404)
    assert "etag" not in missing.headers


def _crl_number(der: bytes, tmp_path: Path) -> int:
    """The CRL Number as ``openssl crl -text`` prints it."""
    path = tmp_path / "crl.der"
    path.write_bytes(der)
    text = ok(run("openssl", "crl", "-inform", "DER", "-in", path, "-noout", "-text")).stdout
    match = re.search(r"X509v3 CRL Number: *\n *(0x[0-9A-Fa-f]+|[0-9]+)\n", text)
    assert match is not None, text
    return int(match[1], 0)


def test_crl_numbers_increase_across_replicas_clock_steps_and_restarts(
    api: Api, tmp_path: Path
) -> None:
    """RFC 5280 5.2.3: each CRL of an issuer is numbered above the last one.

    Numbered from each process's clock, a replica whose clock ran an hour behind, or a clock
    stepped back, published a CRL numbered below the one clients already held.
    """

    def fetch() -> int:
        r = api.get("/api/v1/issuers/default/crl")
        assert r.status_code == 200, r.text
        return _crl_number(r.content, tmp_path)

    def replica(clock_offset: timedelta) -> Services:
        now = api.clock() + clock_offset
        return _replica(api, lambda: now)

    started = api.clock()
    numbers = [fetch()]
    api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())  # signed anew, not reused
    numbers.append(fetch())
    behind = replica(-timedelta(hours=1))
    try:
        der = crls.crl_for(behind, "default").public_bytes(serialization.Encoding.DER)
        numbers.append(_crl_number(der, tmp_path))
    finally:
        behind.engine.dispose()
    api.clock.advance(hours=-2)  # stepped back
    numbers.append(fetch())
    restarted = replica(timedelta(0))
    try:
        # A process started since serves the CRL just stored, fresh by its clock too.
        der = crls.crl_for(restarted, "default").public_bytes(serialization.Encoding.DER)
        assert _crl_number(der, tmp_path) == numbers[-1]
        cert = api.issue(common_name="after-restart.example.com")
        assert api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key).status_code == 200
        der = crls.crl_for(restarted, "default").public_bytes(serialization.Encoding.DER)
        numbers.append(_crl_number(der, tmp_path))  # a revocation: signed there, anew
    finally:
        restarted.engine.dispose()
    api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())
    numbers.append(fetch())
    assert numbers == sorted(set(numbers)), numbers  # strictly increasing
    # Above the numbers the clock gave before (microseconds since the epoch): a client
    # holding a CRL signed before the upgrade takes the next one as newer.
    assert numbers[0] >= int(started.timestamp()) * 10**6


def _replica(api: Api, clock: Callable[[], datetime]) -> Services:
    """Another process or replica on the same store (own caches and engine), on ``clock``."""
    url = api.services.engine.url.render_as_string(hide_password=False)
    engine = create_store_engine(url)
    return Services(engine, session_factory(engine), api.services.wrapper, clock)


def _number_and_this_update(der: bytes) -> tuple[int, datetime]:
    crl = x509.load_der_x509_crl(der)
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, (
        crl.last_update_utc
    )


def test_processes_on_one_store_serve_one_crl_whose_number_never_goes_down(
    api: Api, tmp_path: Path
) -> None:
    """RFC 5280 5.2.3: a client load-balanced over workers or replicas sees no lower number.

    Each process served the CRL it had signed itself for up to CRL_REUSE: a client fetching
    from one and then the other saw N_B, N_A, N_B for one unchanged list, and a relying party
    keeping the highest number seen (Windows, some Java) distrusted N_A. The newest CRL any
    process signed is served by every process while fresh; thisUpdate goes up with the number.
    """
    other = _replica(api, lambda: api.clock())

    def fetch(services: Services) -> bytes:
        if services is api.services:
            r = api.get("/api/v1/issuers/default/crl")
            assert r.status_code == 200, r.text
            return r.content
        return crls.crl_for(services, "default").public_bytes(serialization.Encoding.DER)

    try:
        seen = [fetch(s) for s in (api.services, other) * 3]
        assert len(set(seen)) == 1  # one CRL while nothing changed, whichever process answers
        api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())  # stale: one of them signs
        seen += [fetch(s) for s in (other, api.services) * 3]
        assert len(set(seen[6:])) == 1
        # A revocation through one shows on the other at once.
        cert = api.issue(common_name="gone.example.com")
        r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={})
        assert r.status_code == 200, r.text
        revoked = fetch(other)
        assert [e.serial_number for e in x509.load_der_x509_crl(revoked)] == [
            int(cert["serial"], 16)
        ]
        seen += [revoked] + [fetch(s) for s in (api.services, other) * 2]
        assert set(seen[12:]) == {revoked}
        numbers = [_number_and_this_update(der) for der in seen]
        assert numbers == sorted(numbers), numbers  # numbers: never down
        this_updates = [this_update for _, this_update in numbers]
        assert this_updates == sorted(this_updates), numbers  # nor thisUpdate
        assert len(set(numbers)) == 3, numbers
        assert _crl_number(seen[-1], tmp_path) == numbers[-1][0]  # as openssl reads it
    finally:
        other.engine.dispose()


def test_fetches_finding_no_fresh_crl_together_sign_one_per_process(api: Api) -> None:
    """Fetches racing with no fresh CRL: one signature per process, not one per fetch.

    The threads of a process wait for the one signing and serve what it stored; a process
    that signed a lower number than one stored meanwhile serves the higher one.
    """
    other = _replica(api, lambda: api.clock())

    def race(processes: list[Services]) -> list[int]:
        with ThreadPoolExecutor(6) as pool:
            return [
                _number_and_this_update(crl.public_bytes(serialization.Encoding.DER))[0]
                for crl in pool.map(lambda s: crls.crl_for(s, "default"), processes)
            ]

    def counter() -> int:
        with api.services.engine.connect() as connection:
            return int(
                connection.execute(
                    select(issuers.ISSUERS.c.crl_number).where(issuers.ISSUERS.c.id == "default")
                ).scalar_one()
            )

    try:
        served = race([api.services] * 6)
        assert set(served) == {counter()}  # one number taken, one CRL for all six
        api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())
        served = race([api.services, other] * 3)
        assert len(set(served)) <= 2, served
        assert max(served) == counter()  # the last number taken is the one stored
        after = [race([api.services, other]) for _ in range(2)]  # then both serve that one
        assert set(after[0] + after[1]) == {max(served)}, after
    finally:
        other.engine.dispose()


def test_a_fetch_while_its_process_stores_a_new_crl_serves_that_one(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CRL stale: a fetch while another thread of the process was storing the new one.

    The process counted the new CRL as signed here before it was stored, so the stale one
    still stored passed for it (a process that signed one less than CRL_REUSE ago serves the
    stored CRL): served 10 minutes old beside the new one. It waits for that one now.
    """
    stale = crls.crl_for(api.services, "default").public_bytes(serialization.Encoding.DER)
    api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())
    storing, stored = threading.Event(), threading.Event()
    store = crls._store

    def slow_store(*args: Any, **kwargs: Any) -> bool:
        storing.set()
        stored.wait(2)  # the other fetch answered meanwhile (it did), or waits for this one
        return store(*args, **kwargs)

    monkeypatch.setattr(crls, "_store", slow_store)
    with ThreadPoolExecutor(2) as pool:
        signing = pool.submit(crls.crl_for, api.services, "default")
        assert storing.wait(30)
        fetching = pool.submit(crls.crl_for, api.services, "default")
        concurrent.futures.wait([fetching], timeout=1)
        stored.set()
        served = [
            f.result(30).public_bytes(serialization.Encoding.DER) for f in (signing, fetching)
        ]
    assert served[0] != stale
    assert served[1] == served[0]


def test_replicas_whose_clocks_are_far_apart_do_not_sign_on_every_fetch(api: Api) -> None:
    """Clocks more than CRL_REUSE apart: each found the other's CRL stale, or not yet valid.

    Served in turn, each fetch signed and wrote (the public route). A process that signed
    less than CRL_REUSE ago serves the newest stored CRL instead: two signatures, then one
    CRL, whose number never goes down.
    """
    ahead = _replica(api, lambda: api.clock() + timedelta(minutes=20))
    try:
        served = [
            _number_and_this_update(
                crls.crl_for(s, "default").public_bytes(serialization.Encoding.DER)
            )[0]
            for s in (api.services, ahead) * 4
        ]
    finally:
        ahead.engine.dispose()
    assert served == sorted(served), served
    assert len(set(served)) == 2, served


def test_a_crl_numbered_higher_never_carries_an_earlier_this_update(api: Api) -> None:
    """A process whose clock is a little ahead signed N; the next one signed N+1 earlier.

    thisUpdate follows the number's time within BACKDATE (clocks of replicas a little apart,
    or the time read before another process took its number), so it never goes backwards
    as the numbers go up: a relying party comparing either sees the same order.
    """
    ahead = _replica(api, lambda: api.clock() + timedelta(seconds=90))
    signed = []
    try:
        for n, services in enumerate((ahead, api.services, ahead, api.services)):
            cert = api.issue(common_name=f"c{n}.example.com")
            r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={})
            assert r.status_code == 200, r.text
            der = crls.crl_for(services, "default").public_bytes(serialization.Encoding.DER)
            assert len(x509.load_der_x509_crl(der)) == n + 1  # signed anew: the list changed
            signed.append(_number_and_this_update(der))
    finally:
        ahead.engine.dispose()
    numbers = [number for number, _ in signed]
    assert numbers == sorted(set(numbers)), signed
    this_updates = [this_update for _, this_update in signed]
    assert this_updates == sorted(this_updates), signed


def test_crls_signed_at_once_by_clocks_apart_never_go_back_in_this_update(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed outside the number's lock, N (a clock 90 s ahead) was stored after N+1 was taken.

    The process taking N+1 found N-1 stored, not N, so it signed at its own time: N+1 carried
    a thisUpdate 90 s before N's, and a client fetching N then N+1 saw time go back. The time
    now follows the number itself, which that process took above N.
    """
    ahead = _replica(api, lambda: api.clock() + timedelta(seconds=90))
    ahead_numbered, behind_numbered = threading.Event(), threading.Event()
    sign = crls.create_crl

    def create_crl(*args: Any, **kwargs: Any) -> x509.CertificateRevocationList:
        # Each has its number when it signs: ahead signs once behind has taken the next one,
        # behind once ahead's CRL is stored (ahead's crl_for returned).
        if threading.current_thread().name == "ahead":
            ahead_numbered.set()
            assert behind_numbered.wait(30)
        else:
            behind_numbered.set()
            assert ahead_done.wait(30)
        return sign(*args, **kwargs)

    crls.crl_for(api.services, "default")  # N-1, stored before
    cert = api.issue(common_name="stale.example.com")  # both must sign: the list changed
    assert api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={}).status_code == 200
    monkeypatch.setattr(crls, "create_crl", create_crl)
    ahead_done = threading.Event()
    served: dict[str, bytes] = {}

    def fetch(services: Services) -> None:
        crl = crls.crl_for(services, "default")
        served[threading.current_thread().name] = crl.public_bytes(serialization.Encoding.DER)

    try:
        first = threading.Thread(target=fetch, args=(ahead,), name="ahead")
        first.start()
        assert ahead_numbered.wait(30)
        second = threading.Thread(target=fetch, args=(api.services,), name="behind")
        second.start()
        first.join(30)
        ahead_done.set()
        second.join(30)
    finally:
        ahead.engine.dispose()
    signed = [_number_and_this_update(served[name]) for name in ("ahead", "behind")]
    assert signed[0][0] < signed[1][0], signed  # each stored its own: N, then N+1
    assert signed[0][1] <= signed[1][1], signed  # thisUpdate never down as the number goes up


def test_a_revocation_waits_for_a_crls_number_not_for_its_signature(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revocation takes the issuer's row, which a CRL holds while it is numbered (its
    list read: ~50 ms at 20,000 revoked), and never while it is signed (over a second)."""
    cert = api.issue(common_name="during.example.com")
    sign = crls.create_crl
    revoked: list[int] = []

    def create_crl(*args: Any, **kwargs: Any) -> x509.CertificateRevocationList:
        # Numbered and committed: a revocation from another request goes through meanwhile.
        def revoke() -> None:
            r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={})
            revoked.append(r.status_code)

        thread = threading.Thread(target=revoke)
        thread.start()
        thread.join(10)
        assert revoked == [200], "the revocation waited for the CRL's signature"
        return sign(*args, **kwargs)

    monkeypatch.setattr(crls, "create_crl", create_crl)
    crl = crls.crl_for(api.services, "default")
    assert revoked == [200]
    # Numbered before the revocation: the next fetch signs one listing it.
    assert int(cert["serial"], 16) not in {e.serial_number for e in crl}
    monkeypatch.setattr(crls, "create_crl", sign)
    crl = crls.crl_for(api.services, "default")
    assert int(cert["serial"], 16) in {e.serial_number for e in crl}


@contextlib.contextmanager
def _statements(api: Api) -> Iterator[list[str]]:
    """The SQL statements the app runs in the block, as they run."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(api.services.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(api.services.engine, "before_cursor_execute", count)


def test_an_unchanged_crl_is_served_again_without_a_store_write(api: Api, tmp_path: Path) -> None:
    """The public CRL route made every anonymous fetch a write (a CRL number) and a signature.

    The same CRL comes back while nothing was revoked, for up to CRL_REUSE; a revocation,
    a reason changed to keyCompromise or the time passing sign a new one, numbered higher.
    """

    def fetch() -> bytes:
        r = api.get("/api/v1/issuers/default/crl")
        assert r.status_code == 200, r.text
        return r.content

    cert = api.issue(common_name="reused.example.com")
    first = fetch()
    with _statements(api) as statements:
        repeated = [fetch() for _ in range(20)]
    assert set(repeated) == {first}
    assert not [s for s in statements if not s.lstrip().upper().startswith("SELECT")], statements

    r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200, r.text
    revoked = fetch()
    assert _crl_number(revoked, tmp_path) > _crl_number(first, tmp_path)
    assert len(x509.load_der_x509_crl(revoked)) == 1

    r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    compromised = fetch()  # same serial, same date: the reason alone changed
    assert _crl_number(compromised, tmp_path) > _crl_number(revoked, tmp_path)
    (entry,) = x509.load_der_x509_crl(compromised)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise

    assert fetch() == compromised
    api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())
    later = fetch()
    assert _crl_number(later, tmp_path) > _crl_number(compromised, tmp_path)


def test_a_fetch_of_an_unchanged_crl_reads_no_revoked_list(api: Api) -> None:
    """Each fetch read the issuer's whole revoked list (and its revoked intermediates'
    certificates) to tell whether the stored CRL was still current: 65 ms at 20,000 revoked,
    on the public route. It now compares the issuer's count of changes to the list.
    """
    cert = api.issue(common_name="listed.example.com")
    assert api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={}).status_code == 200
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    assert api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={}).status_code == 200
    first = api.get("/api/v1/issuers/default/crl").content
    assert len(x509.load_der_x509_crl(first)) == 2  # the certificate and the intermediate
    with _statements(api) as statements:
        again = [api.get("/api/v1/issuers/default/crl").content for _ in range(5)]
    assert set(again) == {first}
    assert statements  # negative twin: the statements are seen
    read = [s for s in statements if re.search(r"\bcertificates\b|certificate_pem", s)]
    assert not read, read


def _in_store(api: Api, *statements: tuple[str, dict[str, Any]]) -> None:
    """Run ``statements`` on a connection of their own, as another release or sqlite3 would."""
    engine = create_store_engine(api.services.engine.url.render_as_string(hide_password=False))
    try:
        with engine.begin() as connection:
            for statement, params in statements:
                connection.execute(text(statement), params)
    finally:
        engine.dispose()


def test_a_change_to_the_list_made_in_the_store_shows_in_the_next_crl(api: Api) -> None:
    """The count a fetch compares is kept by the database, not by certctl's write paths.

    A revocation by a replica still running a release before 0020, or a row changed or
    deleted by hand, shows in the very next fetch, as when the list itself was compared.
    """

    def listed() -> dict[int, x509.ReasonFlags | None]:
        r = api.get("/api/v1/issuers/default/crl")
        assert r.status_code == 200, r.text
        return {
            e.serial_number: e.extensions.get_extension_for_class(x509.CRLReason).value.reason
            if e.extensions
            else None
            for e in x509.load_der_x509_crl(r.content)
        }

    a, b = (api.issue(common_name=f"{n}.example.com") for n in "ab")
    serial_a, serial_b = int(a["serial"], 16), int(b["serial"], 16)
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    sub = _cert(r.json()["certificate_pem"]).serial_number
    assert listed() == {}
    revoke = "UPDATE certificates SET status = 'revoked', revoked_at = :at, "
    at = {"at": api.clock().replace(tzinfo=None)}
    _in_store(
        api, (revoke + "revocation_reason = 'superseded' WHERE id = :id", {**at, "id": a["id"]})
    )
    assert listed() == {serial_a: x509.ReasonFlags.superseded}
    _in_store(
        api,
        (
            "UPDATE certificates SET revocation_reason = 'keyCompromise' WHERE id = :id",
            {"id": a["id"]},
        ),
    )
    assert listed() == {serial_a: x509.ReasonFlags.key_compromise}  # the reason alone
    _in_store(api, ("DELETE FROM certificates WHERE id = :id", {"id": a["id"]}))
    assert listed() == {}
    _in_store(api, (revoke + "revocation_reason = NULL WHERE id = :id", {**at, "id": b["id"]}))
    assert listed() == {serial_b: None}
    # A revoked row inserted (a restore, an import by hand): b's row under another id and serial.
    _in_store(
        api,
        (
            "CREATE TEMPORARY TABLE copied AS SELECT * FROM certificates WHERE id = :id",
            {"id": b["id"]},
        ),
        ("UPDATE copied SET id = :id, serial = :serial", {"id": "c" * 32, "serial": "7" * 40}),
        ("INSERT INTO certificates SELECT * FROM copied", {}),
    )
    assert listed() == {serial_b: None, int("7" * 40, 16): None}
    # Its id changed with its serial (PostgreSQL's count paired old and new rows by id).
    _in_store(
        api,
        (
            "UPDATE certificates SET id = :new, serial = :serial WHERE id = :old",
            {"new": "d" * 32, "serial": "6" * 40, "old": "c" * 32},
        ),
    )
    assert listed() == {serial_b: None, int("6" * 40, 16): None}
    # A revoked intermediate is on its parent's CRL: revoked, its reason changed, deleted.
    _in_store(
        api,
        (
            "UPDATE issuers SET revoked_at = :at, revocation_reason = 'superseded' "
            "WHERE id = 'sub'",
            at,
        ),
    )
    assert listed()[sub] is x509.ReasonFlags.superseded
    _in_store(api, ("UPDATE issuers SET revocation_reason = 'keyCompromise' WHERE id = 'sub'", {}))
    assert listed()[sub] is x509.ReasonFlags.key_compromise
    _in_store(api, ("DELETE FROM issuers WHERE id = 'sub'", {}))
    assert sub not in listed()


def _listed_serials(api: Api, issuer_id: str) -> set[int]:
    r = api.get(f"{ISSUERS}/{issuer_id}/crl")
    assert r.status_code == 200, r.text
    return {e.serial_number for e in x509.load_der_x509_crl(r.content)}


def _changes_counted(api: Api) -> dict[str, int]:
    """Each issuer's count of the changes to what its CRL lists (migrations 0020, 0021)."""
    with api.services.engine.connect() as connection:
        rows = connection.execute(text("SELECT id, revocations FROM issuers"))
        return {row[0]: int(row[1]) for row in rows}


@contextlib.contextmanager
def _saved_certificates(api: Api) -> Iterator[None]:
    """The certificates copied into table ``saved``, dropped after (PostgreSQL's database
    is shared by the tests, which empty certctl's tables only)."""
    _in_store(api, ("CREATE TABLE saved AS SELECT * FROM certificates", {}))
    try:
        yield
    finally:
        _in_store(api, ("DROP TABLE saved", {}))


def _deleted_and_inserted_again(api: Api, revoked: dict[str, set[int]]) -> dict[str, int]:
    """Delete every certificate, then insert table ``saved``'s (:func:`_saved_certificates`)
    in one statement; how many changes each issuer of ``revoked`` counted for the insert.
    Each CRL lists ``revoked`` again."""
    _in_store(api, ("DELETE FROM certificates", {}))
    assert {i: _listed_serials(api, i) for i in revoked} == {i: set() for i in revoked}
    before = _changes_counted(api)
    _in_store(api, ("INSERT INTO certificates SELECT * FROM saved", {}))
    after = _changes_counted(api)
    assert {i: _listed_serials(api, i) for i in revoked} == revoked
    return {i: after[i] - before[i] for i in revoked}


def test_revoked_rows_inserted_in_bulk_show_in_the_crl_and_write_each_issuer_once(
    api: Api,
) -> None:
    """One statement inserting revoked rows by hand (a restore, rows copied from another
    store) shows in the next CRL fetch of each issuer it names.

    On PostgreSQL, migration 0020 counted each revoked row inserted with a write of its
    issuer's row: 20,000 rows took 5.2 s against 0.49 s without the trigger (each write
    follows the versions the ones before it made of that row). 0021 counts once per
    statement and issuer, as 0020 already did for updates and deletions. SQLite counts
    per row (fast there: 20,000 rows in 0.15-0.4 s, as without the trigger).
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    revoked: dict[str, set[int]] = {"default": set(), "sub": set()}
    for n, issuer_id in enumerate(("default", "default", "default", "sub", "sub")):
        cert = api.issue(issuer=issuer_id, common_name=f"r{n}.example.com")
        r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={})
        assert r.status_code == 200, r.text
        revoked[issuer_id].add(int(cert["serial"], 16))
    api.issue(common_name="kept.example.com")
    assert {i: _listed_serials(api, i) for i in revoked} == revoked
    with _saved_certificates(api):
        counted = _deleted_and_inserted_again(api, revoked)
    if api.services.engine.dialect.name == "postgresql":
        assert counted == {"default": 1, "sub": 1}  # one statement: once each
    else:
        assert counted == {i: len(serials) for i, serials in revoked.items()}  # per row


def test_a_store_taken_back_to_0020_counts_revoked_rows_inserted_per_row(api: Api) -> None:
    """0021's downgrade puts 0020's trigger back (per row), its upgrade its own again."""
    for n in range(2):
        cert = api.issue(common_name=f"r{n}.example.com")
        r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={})
        assert r.status_code == 200, r.text
    revoked = {"default": _listed_serials(api, "default")}
    assert len(revoked["default"]) == 2
    postgresql = api.services.engine.dialect.name == "postgresql"
    with _saved_certificates(api):
        downgrade_store(api.services.engine, "0020")
        # This release signs a CRL reading issuers.serial (0025), which a store at 0020 has
        # not: given for the while (it never runs on one, it migrates first).
        _in_store(api, ("ALTER TABLE issuers ADD COLUMN serial TEXT", {}))
        try:
            assert _deleted_and_inserted_again(api, revoked) == {"default": 2}
        finally:
            _in_store(api, ("ALTER TABLE issuers DROP COLUMN serial", {}))
            migrate(api.services.engine)  # the database other tests share, on PostgreSQL
        assert _deleted_and_inserted_again(api, revoked) == {"default": 1 if postgresql else 2}


def test_the_certificates_emptied_by_hand_leave_every_crl_at_the_next_fetch(api: Api) -> None:
    """PostgreSQL fires no DELETE trigger for a ``TRUNCATE``: the stored CRLs went on listing
    every revoked certificate for up to 10 minutes (CRL_REUSE). 0021's TRUNCATE trigger
    counts a change for every issuer. SQLite has no TRUNCATE: its ``DELETE`` without
    ``WHERE`` fires the row triggers (a table with triggers is never emptied at once).
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    for issuer_id in ("default", "sub"):
        cert = api.issue(issuer=issuer_id, common_name=f"{issuer_id}.example.com")
        r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={})
        assert r.status_code == 200, r.text
        assert _listed_serials(api, issuer_id) == {int(cert["serial"], 16)}
    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={})  # on default's CRL
    assert r.status_code == 200, r.text
    sub = _cert(api.get(f"{ISSUERS}/sub/ca.pem").text).serial_number
    assert len(_listed_serials(api, "default")) == 2
    postgresql = api.services.engine.dialect.name == "postgresql"
    _in_store(api, ("TRUNCATE certificates" if postgresql else "DELETE FROM certificates", {}))
    assert _listed_serials(api, "default") == {sub}  # the intermediate is no certificate row
    assert _listed_serials(api, "sub") == set()


def test_a_stored_serial_no_crl_can_list_is_left_off_with_a_warning_naming_it(
    api: Api, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A revoked row stored by hand with a serial of 160 bits, its top bit set, made every
    CRL fetch of its issuer a 500: RFC 5280 4.1.2.2 allows 20 octets, sign included (so
    2^159 - 1 at most), and cryptography's RevokedCertificateBuilder refuses more. No CA
    conforming to it (certctl neither) issues such a serial: the row is left off the CRL,
    with a warning naming it, and the rest of the list is served. The same for a revoked
    intermediate whose stored certificate (made by OpenSSL, which allows it) has one.
    """
    cert = api.issue(common_name="a.example.com")
    r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={})
    assert r.status_code == 200, r.text
    largest, too_large = "7f" + "ff" * 19, "80" + "00" * 19  # 2^159 - 1 and 2^159
    for row_id, serial in (("a" * 32, largest), ("b" * 32, too_large), ("c" * 32, "-7f")):
        _in_store(
            api,
            (
                "CREATE TEMPORARY TABLE copied AS SELECT * FROM certificates WHERE id = :id",
                {"id": cert["id"]},
            ),
            ("UPDATE copied SET id = :id, serial = :serial", {"id": row_id, "serial": serial}),
            ("INSERT INTO certificates SELECT * FROM copied", {}),
        )
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    made = run(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", tmp_path / "sub.key", "-out", tmp_path / "sub.pem",
        "-subj", "/CN=sub", "-days", "30", "-set_serial", f"0x{'ff' * 20}",
    )  # fmt: skip
    ok(made)
    _in_store(
        api,
        (
            # With its serial, as an import stores it.
            "UPDATE issuers SET certificate_pem = :pem, serial = :serial, revoked_at = :at"
            " WHERE id = 'sub'",
            {
                "pem": (tmp_path / "sub.pem").read_text(),
                "serial": "ff" * 20,
                "at": api.clock().replace(tzinfo=None),
            },
        ),
    )
    with caplog.at_level(logging.WARNING, "certctl.services"):
        listed = _listed_serials(api, "default")
    assert listed == {int(cert["serial"], 16), int(largest, 16)}
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings == [
        f"issuer default: {holder} is left off its CRL: its serial '{serial}' is no positive "
        "number of at most 20 octets (RFC 5280 4.1.2.2)"
        for holder, serial in (
            ("certificate " + "b" * 32, too_large),
            ("certificate " + "c" * 32, "-7f"),
            ("intermediate sub", "ff" * 20),
        )
    ]


def _store_tool(api: Api, *args: str | Path, stdin: Path | None = None) -> str:
    """Run pg_dump or pg_restore (PostgreSQL), or sqlite3, on the store as an operator would:
    ``args[0]`` names the tool; the database is given after the rest."""
    url = api.services.engine.url
    if url.get_backend_name() == "postgresql":
        target = url.set(drivername="postgresql").render_as_string(hide_password=False)
        command = [PG_BIN / args[0], *args[1:], "-d", target]
    else:
        command = ["sqlite3", "-cmd", ".timeout 10000", str(url.database), *args[1:]]
    with stdin.open("rb") if stdin is not None else contextlib.nullcontext() as source:
        result = subprocess.run(
            command, stdin=source, capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 0, result.stderr
    return result.stdout


RESTORED = ("issuers", "certificates", "issuer_crls")  # in the order their keys need


def test_a_data_only_restore_with_triggers_on_succeeds_and_shows_in_the_crls(
    api: Api, tmp_path: Path
) -> None:
    """``pg_restore --data-only`` empties search_path (CVE-2018-1058) for the whole restore,
    triggers included: each of certctl's trigger functions named its tables unqualified,
    so the first row restored into a table they watch failed the restore (``relation
    "issuers" does not exist``), unless triggers were disabled (a superuser's), which left
    the CRLs and the credential caches behind what was restored. 0021 pins their
    search_path. SQLite knows no search_path: the same restore through sqlite3.
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    revoked: dict[str, set[int]] = {"default": set(), "sub": set()}
    for n, issuer_id in enumerate(("default", "default", "sub")):
        cert = api.issue(issuer=issuer_id, common_name=f"r{n}.example.com")
        r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={})
        assert r.status_code == 200, r.text
        revoked[issuer_id].add(int(cert["serial"], 16))
    r = api.post(ISSUERS, api.admin_key, json={"id": "mid", "parent": "default"})
    assert r.status_code == 201, r.text
    assert api.post(f"{ISSUERS}/mid/revoke", api.admin_key, json={}).status_code == 200
    revoked["default"].add(_cert(api.get(f"{ISSUERS}/mid/ca.pem").text).serial_number)
    assert {i: _listed_serials(api, i) for i in revoked} == revoked
    dump = tmp_path / "certctl.dump"
    postgresql = api.services.engine.dialect.name == "postgresql"
    if postgresql:
        tables = [f"--table={t}" for t in RESTORED]
        _store_tool(api, "pg_dump", "--data-only", "-Fc", "-f", dump, *tables)
        _in_store(api, (f"TRUNCATE {', '.join(RESTORED)}", {}))
    else:
        dump.write_text(
            "".join(
                _store_tool(api, "sqlite3", f".mode insert {t}", f"SELECT * FROM {t}")
                for t in RESTORED
            )
        )
        _in_store(api, *[(f"DELETE FROM {t}", {}) for t in reversed(RESTORED)])
    if postgresql:
        _store_tool(api, "pg_restore", "--data-only", "--exit-on-error", dump)
    else:
        _store_tool(api, "sqlite3", stdin=dump)
    assert {i: _listed_serials(api, i) for i in revoked} == revoked
    if postgresql:  # every trigger function, those this restore calls and the others
        with api.services.engine.connect() as connection:
            functions = dict(
                connection.execute(
                    text(
                        "SELECT proname, array_to_string(proconfig, ' ') FROM pg_proc "
                        "WHERE proname LIKE 'certctl%'"
                    )
                ).all()
            )
        assert len(functions) >= 5, functions
        assert set(functions.values()) == {"search_path=public, pg_temp"}, functions


def _openssl_verifies(der: bytes, ca: x509.Certificate, tmp_path: Path) -> bool:
    """Whether ``openssl crl -verify`` finds ``der`` signed by ``ca``."""
    (tmp_path / "checked.crl").write_bytes(der)
    (tmp_path / "checked-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    result = run(
        "openssl", "crl", "-inform", "DER", "-in", tmp_path / "checked.crl", "-noout",
        "-verify", "-CAfile", tmp_path / "checked-ca.pem",
    )  # fmt: skip
    return result.returncode == 0 and "verify OK" in result.stderr + result.stdout


def test_a_replica_signs_the_crl_of_a_service_ca_made_again_with_its_new_key(
    api: Api, tmp_path: Path
) -> None:
    """A managed service deleted and applied again has a new CA (a new key) under svc.<name>.

    A replica that had cached the old CA signed the CRL with the old key until its next
    issuer refresh (a minute): clients refused the CRL, and each fetch from the other
    process then signed anew, in turn. A process reloads a CA that changed before it signs.
    """

    def apply_web() -> x509.Certificate:
        return api.apply_service_ca("web").certificate

    def fetch(services: Services) -> bytes:
        if services is api.services:
            r = api.get("/api/v1/issuers/svc.web/crl")
            assert r.status_code == 200, r.text
            return r.content
        return crls.crl_for(services, "svc.web").public_bytes(serialization.Encoding.DER)

    other = _replica(api, lambda: api.clock())
    try:
        old = apply_web()
        assert _openssl_verifies(fetch(other), old, tmp_path)
        assert api.request("DELETE", "/api/v1/services/web", api.admin_key).status_code == 204
        api.clock.advance(minutes=1)
        new = apply_web()
        assert new.public_key() != old.public_key()
        served = [fetch(s) for s in (other, api.services, other, api.services)]
    finally:
        other.engine.dispose()
    assert len(set(served)) == 1  # one CRL, not one signed by each in turn
    assert _openssl_verifies(served[0], new, tmp_path)
    assert not _openssl_verifies(served[0], old, tmp_path)


@pytest.mark.parametrize("stored", ["garbage", "another issuer's", "an older one"])
def test_a_stored_crl_that_is_not_the_issuers_latest_is_signed_again(
    api: Api, tmp_path: Path, stored: str
) -> None:
    """The stored CRL is a cache: bytes in it that are no CRL of the issuer numbered so are
    replaced, not served (a 500 for each fetch until it went stale, or a CRL clients refuse
    or hold for older than the one they have), by a process that had not read it yet."""
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    older = crls.crl_for(api.services, "default").public_bytes(serialization.Encoding.DER)
    api.clock.advance(seconds=crls.CRL_REUSE.total_seconds())
    good = api.get("/api/v1/issuers/default/crl").content
    number = _crl_number(good, tmp_path)
    assert number > _crl_number(older, tmp_path)
    der = {
        "garbage": good[: len(good) // 2],
        "another issuer's": api.get("/api/v1/issuers/sub/crl").content,
        "an older one": older,
    }[stored]
    with api.services.engine.begin() as connection:
        connection.execute(
            text("UPDATE issuer_crls SET der = :der WHERE issuer_id = 'default'"), {"der": der}
        )
    api.services.signed_crls.clear()  # a process that has not read it yet (restarted)
    r = api.get("/api/v1/issuers/default/crl")
    assert r.status_code == 200, r.text
    ca = issuers.load_issuer(api.services, "default").certificate
    assert _openssl_verifies(r.content, ca, tmp_path)
    assert _crl_number(r.content, tmp_path) > number
    assert api.get("/api/v1/issuers/default/crl").content == r.content  # stored, then served


def test_a_store_taken_back_before_0019_and_upgraded_again_numbers_its_crls_above(
    api: Api, tmp_path: Path
) -> None:
    """Migration 0019 adds the stored CRLs and its downgrade drops them; the number goes on.

    The counter of 0008 stays in the issuers table: the first CRL signed after the upgrade
    (none stored yet) is numbered above every one signed before it.
    """
    before = _crl_number(api.get("/api/v1/issuers/default/crl").content, tmp_path)
    engine = api.services.engine
    downgrade_store(engine, "0018")
    assert "issuer_crls" not in inspect(engine).get_table_names()
    assert "issuers" in inspect(engine).get_table_names()  # negative twin: tables are listed
    migrate(engine)
    assert "issuer_crls" in inspect(engine).get_table_names()
    api.services.signed_crls.clear()  # a process started on the upgraded store
    r = api.get("/api/v1/issuers/default/crl")
    assert r.status_code == 200, r.text
    assert _crl_number(r.content, tmp_path) > before
    ca = issuers.load_issuer(api.services, "default").certificate
    assert _openssl_verifies(r.content, ca, tmp_path)


def test_an_expired_issuer_signs_no_crl(api: Api) -> None:
    r = api.post(ISSUERS, api.admin_key, json={"id": "brief", "validity": "2D"})
    assert r.status_code == 201, r.text
    api.clock.advance(days=3)
    body = assert_problem(api.get("/api/v1/issuers/brief/crl"), 409)
    assert body["detail"].startswith("issuer brief: issuing CA expired on")


def test_a_refused_crl_writes_nothing(api: Api) -> None:
    """Each anonymous fetch of an expired issuer's CRL took a CRL number (a write) first.

    The write held SQLite's write lock and an fsync, the cost the CRL cache removed for
    issuers still valid: a loop of public requests for the expired one stalled issuance.
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "brief", "validity": "2D"})
    assert r.status_code == 201, r.text
    api.clock.advance(days=3)
    with _statements(api) as statements:
        for _ in range(5):
            assert_problem(api.get("/api/v1/issuers/brief/crl"), 409)
    assert statements
    assert not [s for s in statements if not s.lstrip().upper().startswith("SELECT")], statements


def test_an_expired_issuer_issues_and_renews_nothing_with_a_409_naming_it(api: Api) -> None:
    """The request is fine, the issuer is not: 409 as for its CRL, not 400 "Invalid request".

    An intermediate under an expired parent too.
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "brief", "validity": "2D"})
    assert r.status_code == 201, r.text
    cert = api.issue(issuer="brief", validity="1D")
    api.clock.advance(days=3)
    before = api.counts()
    requests = [
        (CERTS, {"issuer": "brief", "common_name": "late.example.com"}),
        (CERTS, {"issuer": "brief", "csr": _csr_pem("late.example.com")[0]}),
        (f"{CERTS}/{cert['id']}/renew", {}),
        (ISSUERS, {"id": "late-sub", "parent": "brief"}),
    ]
    for path, body in requests:
        problem = assert_problem(api.post(path, api.admin_key, json=body), 409)
        assert problem["detail"].startswith("issuer brief: issuing CA expired on"), problem
    assert api.counts() == before


def test_issuance_refused_by_an_expired_issuer_counts_as_an_error_either_way(api: Api) -> None:
    """Both ways of issuing count a refusal in certctl_issuance_total{result="error"}.

    A CSR refused by an expired issuer was counted; the same request with a server-side key
    was not, so an alert on the error rate missed every client that lets certctl make keys.
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "brief", "validity": "2D"})
    assert r.status_code == 201, r.text
    prom = api.actor_key("prom", ["r-metrics-read"])

    def errors() -> float:
        text = api.get("/api/v1/metrics/prometheus", prom).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "certctl_issuance_total"
            and sample.labels == {"issuer": "brief", "result": "error"}
        )

    api.clock.advance(days=3)
    before = errors()
    keygen = {"issuer": "brief", "common_name": "late.example.com"}
    from_csr = {"issuer": "brief", "csr": _csr_pem("late.example.com")[0]}
    for counted, body in enumerate((keygen, from_csr), start=1):
        # The refusal itself, not any error: a 500 or a 422 would also have been >= 400.
        problem = assert_problem(api.post(CERTS, api.admin_key, json=body), 409)
        assert problem["detail"].startswith("issuer brief: issuing CA expired on"), problem
        assert errors() == before + counted


def test_renewals_count_as_issuances_of_their_issuer(api: Api) -> None:
    """A renewal issues a certificate: certctl_issuance_total{issuer, result} counts it.

    Before, only certctl_renewals_total{result} did, which names no issuer: the issuance
    rate of an issuer left out every certificate its renewals issued.
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "brief", "validity": "2D"})
    assert r.status_code == 201, r.text
    prom = api.actor_key("prom", ["r-metrics-read"])

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = api.get("/api/v1/metrics/prometheus", prom).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def issued(result: str) -> float:
        key = ("certctl_issuance_total", (("issuer", "brief"), ("result", result)))
        return samples().get(key, 0.0)

    def renewals(result: str) -> float:
        return samples().get(("certctl_renewals_total", (("result", result),)), 0.0)

    def observed() -> float:
        return samples()[("certctl_issuance_duration_seconds_count", ())]

    cert = api.issue(issuer="brief", validity="1D")
    before = issued("success"), renewals("success"), observed()
    assert api.post(f"{CERTS}/{cert['id']}/renew", api.admin_key).status_code == 201
    assert (issued("success"), renewals("success"), observed()) == (
        before[0] + 1,
        before[1] + 1,
        before[2] + 1,
    )
    api.clock.advance(days=3)  # the issuer has expired: it refuses the renewal
    before = issued("error"), renewals("error")
    assert_problem(api.post(f"{CERTS}/{cert['id']}/renew", api.admin_key), 409)
    assert (issued("error"), renewals("error")) == (before[0] + 1, before[1] + 1)


def test_renew(api: Api) -> None:
    keyed = api.issue(common_name="renew.example.com", validity="20D")
    r = api.post(f"{CERTS}/{keyed['id']}/renew", api.admin_key)
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["id"] != keyed["id"]
    assert new["serial"] != keyed["serial"]
    # certctl generated the first key, so the successor gets a fresh one (returned once).
    assert new["private_key_pem"] != keyed["private_key_pem"]
    old_cert, new_cert = _cert(keyed["certificate_pem"]), _cert(new["certificate_pem"])
    assert new_cert.subject == old_cert.subject
    assert new_cert.public_key() != old_cert.public_key()
    assert new_cert.not_valid_after_utc - new_cert.not_valid_before_utc == (
        old_cert.not_valid_after_utc - old_cert.not_valid_before_utc
    )
    got = api.get(f"{CERTS}/{new['id']}", api.admin_key).json()
    assert got["renewed_from"] == keyed["id"]
    assert "private_key_pem" not in got
    # The predecessor stays as it was (not revoked).
    assert api.get(f"{CERTS}/{keyed['id']}", api.admin_key).json()["revoked_at"] is None

    csr_pem, key = _csr_pem("csr-renew.example.com")
    from_csr = api.post(CERTS, api.admin_key, json={"csr": csr_pem}).json()
    r = api.post(f"{CERTS}/{from_csr['id']}/renew", api.admin_key, json={"validity": "45D"})
    assert r.status_code == 201, r.text
    assert "private_key_pem" not in r.json()
    renewed = _cert(r.json()["certificate_pem"])
    assert renewed.public_key() == key.public_key()  # the requester keeps its key
    assert renewed.not_valid_after_utc - api.clock() == timedelta(days=45)
    assert_problem(api.post(f"{CERTS}/{'0' * 24}/renew", api.admin_key), 404)


def test_revoked_certificate_cannot_be_renewed(api: Api) -> None:
    # A CSR-issued successor would keep the (possibly compromised) key.
    csr_pem, _key = _csr_pem("compromised.example.com")
    cert = api.post(CERTS, api.admin_key, json={"csr": csr_pem}).json()
    r = api.post(f"{CERTS}/{cert['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200
    before = api.counts()
    assert (
        "revoked"
        in assert_problem(api.post(f"{CERTS}/{cert['id']}/renew", api.admin_key), 409)["detail"]
    )
    assert api.counts() == before


def test_key_compromise_revokes_every_certificate_of_the_same_key(api: Api) -> None:
    # A → B → C renew a CSR certificate (same key); D renews B again (same key); E is another
    # CSR of the same names but another key; F has a key certctl made, renewed into G (new key).
    csr_pem, _key = _csr_pem("leaked.example.com")
    a = api.post(CERTS, api.admin_key, json={"csr": csr_pem}).json()
    b = api.post(f"{CERTS}/{a['id']}/renew", api.admin_key).json()
    c = api.post(f"{CERTS}/{b['id']}/renew", api.admin_key).json()
    d = api.post(f"{CERTS}/{b['id']}/renew", api.admin_key).json()
    other_csr, _other_key = _csr_pem("leaked.example.com")
    e = api.post(CERTS, api.admin_key, json={"csr": other_csr}).json()
    f = api.issue(common_name="made.example.com")
    g = api.post(f"{CERTS}/{f['id']}/renew", api.admin_key).json()
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    keys = {_cert(x["certificate_pem"]).public_key().public_bytes(*spki) for x in (a, b, c, d)}
    assert len(keys) == 1  # the premise: renewals kept the CSR's key

    # Revoking the middle link for keyCompromise takes its ancestor and descendants along.
    r = api.post(f"{CERTS}/{b['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked"
    assert sorted(r.json()["also_revoked"]) == sorted([a["id"], c["id"], d["id"]])
    for x in (a, c, d):
        got = api.get(f"{CERTS}/{x['id']}", api.admin_key).json()
        assert (got["status"], got["revocation_reason"]) == ("revoked", "keyCompromise")
        assert got["revoked_at"] == r.json()["revoked_at"]
    for x in (e, f, g):
        assert api.get(f"{CERTS}/{x['id']}", api.admin_key).json()["status"] != "revoked"
    crl = x509.load_der_x509_crl(api.get("/api/v1/issuers/default/crl").content)
    assert {entry.serial_number for entry in crl} == {int(x["serial"], 16) for x in (a, b, c, d)}
    audit = api.get("/api/v1/audit", api.admin_key, params={"limit": 100})
    assert audit.status_code == 200, audit.text
    details = {
        event["target"]: event["detail"]
        for event in audit.json()["items"]
        if event["action"] == "certificate.revoke"
    }
    assert details == {
        b["id"]: "keyCompromise",
        **{x["id"]: f"keyCompromise (same key as {b['id']})" for x in (a, c, d)},
    }

    # A key certctl made is the certificate's own: F's revocation leaves G (a new key) alone.
    r = api.post(f"{CERTS}/{f['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200
    assert r.json()["also_revoked"] == []
    assert api.get(f"{CERTS}/{g['id']}", api.admin_key).json()["status"] != "revoked"
    # Other reasons revoke the one certificate.
    r = api.post(f"{CERTS}/{e['id']}/revoke", api.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200
    assert r.json()["also_revoked"] == []


def test_key_compromise_does_not_follow_a_csr_submitted_again(api: Api) -> None:
    """What the README says: renewals are followed, not the same CSR sent twice.

    certctl does not index keys, so a CSR signed again (under another issuer too, as a
    migration from cfssl may) is another certificate of the key that a keyCompromise
    revocation leaves valid: the README said it took "every certificate of the key".
    """
    csr_pem, _key = _csr_pem("twice.example.com")
    first = api.post(CERTS, api.admin_key, json={"csr": csr_pem}).json()
    again = api.post(CERTS, api.admin_key, json={"csr": csr_pem}).json()
    assert (
        _cert(first["certificate_pem"]).public_key() == _cert(again["certificate_pem"]).public_key()
    )
    r = api.post(f"{CERTS}/{first['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert r.json()["also_revoked"] == []
    assert api.get(f"{CERTS}/{again['id']}", api.admin_key).json()["status"] == "active"


def test_key_compromise_of_the_newest_of_a_long_chain_revokes_the_oldest_too(api: Api) -> None:
    # 70 links, past the 64 renewals a chain is followed up elsewhere: revoking the newest
    # left the 6 oldest, still valid, certifying the compromised key.
    csr_pem, _key = _csr_pem("often.example.com")
    chain = [api.post(CERTS, api.admin_key, json={"csr": csr_pem}).json()]
    for _ in range(69):
        chain.append(api.post(f"{CERTS}/{chain[-1]['id']}/renew", api.admin_key).json())
    newest = chain[-1]
    r = api.post(f"{CERTS}/{newest['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["also_revoked"]) == sorted(x["id"] for x in chain[:-1])
    crl = x509.load_der_x509_crl(api.get("/api/v1/issuers/default/crl").content)
    assert {entry.serial_number for entry in crl} == {int(x["serial"], 16) for x in chain}


def test_key_compromise_of_a_certificate_revoked_for_another_reason(api: Api) -> None:
    """The reason becomes keyCompromise, its date stays, and the rest of its key is revoked.

    Before, a 409 'already revoked': the CRL kept saying 'superseded' and the renewals that
    kept the key stayed valid. As Let's Encrypt does (Boulder re-revokes for keyCompromise
    only, keeping the first revocation date).
    """
    csr_pem, _key = _csr_pem("leaked.example.com")
    a = api.post(CERTS, api.admin_key, json={"csr": csr_pem}).json()
    b = api.post(f"{CERTS}/{a['id']}/renew", api.admin_key).json()
    c = api.post(f"{CERTS}/{b['id']}/renew", api.admin_key).json()
    first = api.post(f"{CERTS}/{b['id']}/revoke", api.admin_key, json={"reason": "superseded"})
    assert first.status_code == 200, first.text
    api.clock.advance(hours=5)
    r = api.post(f"{CERTS}/{b['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["revocation_reason"]) == ("revoked", "keyCompromise")
    assert r.json()["revoked_at"] == first.json()["revoked_at"]  # when it stopped being valid
    assert r.json()["also_revoked"] == sorted([a["id"], c["id"]])
    for x in (a, c):
        got = api.get(f"{CERTS}/{x['id']}", api.admin_key).json()
        assert (got["status"], got["revocation_reason"]) == ("revoked", "keyCompromise")
        assert got["revoked_at"] == api.clock().isoformat()
    crl = x509.load_der_x509_crl(api.get("/api/v1/issuers/default/crl").content)
    entry = crl.get_revoked_certificate_by_serial_number(int(b["serial"], 16))
    assert entry is not None
    assert entry.revocation_date_utc.isoformat() == first.json()["revoked_at"]
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert len(crl) == 3
    details = [
        (e["target"], e["detail"]) for e in api.audit() if e["action"] == "certificate.revoke"
    ]
    assert sorted(details[:3]) == sorted(
        [
            (b["id"], "keyCompromise (reason was superseded, revocation date kept)"),
            (a["id"], f"keyCompromise (same key as {b['id']})"),
            (c["id"], f"keyCompromise (same key as {b['id']})"),
        ]
    )
    again = api.post(f"{CERTS}/{c['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert "already revoked (keyCompromise)" in assert_problem(again, 409)["detail"]
    # Other reasons never replace a revocation.
    other = api.post(f"{CERTS}/{c['id']}/revoke", api.admin_key, json={"reason": "superseded"})
    assert "already revoked" in assert_problem(other, 409)["detail"]

    # A link revoked for another reason before its key was: it gets keyCompromise too.
    d = api.post(CERTS, api.admin_key, json={"csr": _csr_pem("old.example.com")[0]}).json()
    e = api.post(f"{CERTS}/{d['id']}/renew", api.admin_key).json()
    gone = api.post(f"{CERTS}/{d['id']}/revoke", api.admin_key, json={"reason": "superseded"})
    api.clock.advance(hours=1)
    r = api.post(f"{CERTS}/{e['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert r.json()["also_revoked"] == [d["id"]]
    got = api.get(f"{CERTS}/{d['id']}", api.admin_key).json()
    assert (got["revocation_reason"], got["revoked_at"]) == (
        "keyCompromise",
        gone.json()["revoked_at"],
    )
    assert api.audit()[0]["detail"] == (
        f"keyCompromise (same key as {e['id']}; reason was superseded, revocation date kept)"
    )

    # A key certctl made: the one certificate's reason changes, its renewal (new key) stays.
    f = api.issue(common_name="made.example.com")
    g = api.post(f"{CERTS}/{f['id']}/renew", api.admin_key).json()
    api.post(f"{CERTS}/{f['id']}/revoke", api.admin_key, json={"reason": "cessationOfOperation"})
    r = api.post(f"{CERTS}/{f['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert (r.json()["revocation_reason"], r.json()["also_revoked"]) == ("keyCompromise", [])
    assert r.json()["renewed_by"] == g["id"]  # still renewed by a live certificate
    assert api.get(f"{CERTS}/{g['id']}", api.admin_key).json()["status"] != "revoked"


def _renewed_in_store(api: Api, first: dict[str, Any], links: int) -> list[dict[str, Any]]:
    """``first`` and ``links`` renewals of it that kept its key, written straight to the store.

    As ``certs renew`` would store them (same certificate PEM, new serials): hundreds of
    renewals through the API take minutes.
    """
    table = issuance.CERTIFICATES
    with api.services.engine.begin() as conn:
        row = dict(conn.execute(select(table).where(table.c.id == first["id"])).one()._mapping)
        chain = [first]
        for _ in range(links):
            new_id, serial = issuance.new_id(), format_serial(x509.random_serial_number())
            conn.execute(
                insert(table).values(
                    {**row, "id": new_id, "serial": serial, "renewed_from": chain[-1]["id"]}
                )
            )
            chain.append({"id": new_id, "serial": serial})
    return chain


def test_key_compromise_revokes_a_chain_longer_than_256(api: Api) -> None:
    """300 certificates of one key: all revoked (the walk stopped at 256, the rest stayed valid)."""
    first = api.post(CERTS, api.admin_key, json={"csr": _csr_pem("old.example.com")[0]}).json()
    chain = _renewed_in_store(api, first, 299)
    r = api.post(
        f"{CERTS}/{chain[-1]['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["also_revoked"] == sorted(x["id"] for x in chain[:-1])
    crl = x509.load_der_x509_crl(api.get("/api/v1/issuers/default/crl").content)
    assert {entry.serial_number for entry in crl} == {int(x["serial"], 16) for x in chain}


def test_key_compromise_past_the_limit_is_refused_whole(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More certificates of one key than a revocation takes: a 409 and nothing revoked."""
    monkeypatch.setattr(certificates, "_MAX_SAME_KEY", 5)
    first = api.post(CERTS, api.admin_key, json={"csr": _csr_pem("old.example.com")[0]}).json()
    chain = _renewed_in_store(api, first, 5)
    before = api.counts()
    r = api.post(
        f"{CERTS}/{chain[2]['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"}
    )
    assert assert_problem(r, 409)["detail"] == (
        f"certificate {chain[2]['id']}: more than 5 certificates certify its key (renewals "
        "that kept it), and a keyCompromise revocation takes at most 5: nothing was revoked"
    )
    assert api.counts() == before
    assert all(
        api.get(f"{CERTS}/{x['id']}", api.admin_key).json()["status"] != "revoked" for x in chain
    )
    assert len(x509.load_der_x509_crl(api.get("/api/v1/issuers/default/crl").content)) == 0
    # Another reason revokes the one certificate, as ever.
    r = api.post(f"{CERTS}/{chain[2]['id']}/revoke", api.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200, r.text
    # Five certificates of one key are within the limit: all revoked.
    other = api.post(CERTS, api.admin_key, json={"csr": _csr_pem("new.example.com")[0]}).json()
    five = _renewed_in_store(api, other, 4)
    r = api.post(f"{CERTS}/{five[0]['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert r.json()["also_revoked"] == sorted(x["id"] for x in five[1:])


def test_key_compromise_of_a_long_chain_takes_a_few_statements(api: Api) -> None:
    """The whole chain in a few statements; each link took several, the fix-up of renewed_by
    up to 64 more: 9 s for 256 links on PostgreSQL (16 600 statements).
    """
    csr_pem, _key = _csr_pem("busy.example.com")
    chain = [api.post(CERTS, api.admin_key, json={"csr": csr_pem}).json()]
    for _ in range(99):
        chain.append(api.post(f"{CERTS}/{chain[-1]['id']}/renew", api.admin_key).json())
    fork = api.post(f"{CERTS}/{chain[10]['id']}/renew", api.admin_key).json()  # a second branch
    middle = chain[50]
    statements: list[str] = []
    engine = api.services.engine

    def listener(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", listener)
    try:
        r = api.post(
            f"{CERTS}/{middle['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"}
        )
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert r.status_code == 200, r.text
    others = [x["id"] for x in (*chain, fork) if x["id"] != middle["id"]]
    assert r.json()["also_revoked"] == sorted(others)
    assert len(statements) <= 20, statements
    for x in (*chain, fork):
        got = api.get(f"{CERTS}/{x['id']}", api.admin_key).json()
        assert (got["status"], got["revocation_reason"]) == ("revoked", "keyCompromise")
        assert got["renewed_by"] is None  # no live successor renews any of them
    crl = x509.load_der_x509_crl(api.get("/api/v1/issuers/default/crl").content)
    assert {entry.serial_number for entry in crl} == {int(x["serial"], 16) for x in (*chain, fork)}
    revocations = [e for e in api.audit() if e["action"] == "certificate.revoke"]
    assert sorted(e["target"] for e in revocations) == sorted([middle["id"], *others])
    assert {e["detail"] for e in revocations if e["target"] != middle["id"]} == {
        f"keyCompromise (same key as {middle['id']})"
    }


def test_certificate_permissions(api: Api) -> None:
    cert = api.issue()
    viewer = api.actor_key("viewer", ["r-viewer"])
    assert api.get(CERTS, viewer).status_code == 200
    assert api.get(f"{CERTS}/{cert['id']}", viewer).status_code == 200
    assert_problem(api.post(CERTS, viewer, json={"common_name": "x.example.com"}), 403)
    assert_problem(api.post(f"{CERTS}/{cert['id']}/revoke", viewer, json={}), 403)
    assert_problem(api.post(f"{CERTS}/{cert['id']}/renew", viewer), 403)
    operator = api.actor_key("op", ["r-operator"])
    issued = api.issue(key=operator, common_name="op.example.com")
    assert api.get(f"{CERTS}/{issued['id']}", operator).json()["created_by"] == "op"
    assert api.post(f"{CERTS}/{issued['id']}/revoke", operator, json={}).status_code == 200
    # Renewal needs cert.issue only, as the route table says (not cert.read as well).
    issuer_only = api.key_with_permissions("renewer", ["cert.issue"])
    renewed = api.post(f"{CERTS}/{cert['id']}/renew", issuer_only)
    assert renewed.status_code == 201, renewed.text
    assert_problem(api.get(f"{CERTS}/{renewed.json()['id']}", issuer_only), 403)


@pytest.mark.parametrize("key_type", ["rsa-2048", "RSA-2048", " Rsa-2048 "])
def test_rsa_keys_are_generated_off_the_event_loop(
    api: Api, key_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RSA-4096 generation takes seconds: on the event loop it stalls every other request
    # (/healthz included), whatever case the key type is spelt in.
    on_loop: list[bool] = []
    prepare = issuance.prepare_with_key

    def recording(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(issuance, "prepare_with_key", recording)
    api.issue(common_name="rsa.example.com", key_type=key_type)
    assert on_loop == [False]


@pytest.mark.parametrize("key_type", ["ec-p384", "rsa-2048"])
def test_issue_other_key_types(api: Api, key_type: str) -> None:
    body = api.issue(common_name=f"{key_type}.example.com", key_type=key_type)
    key = serialization.load_pem_private_key(body["private_key_pem"].encode(), None)
    assert key.public_key() == _cert(body["certificate_pem"]).public_key()


def test_a_csr_asking_for_too_many_names_is_refused(api: Api) -> None:
    """At most 100 SANs of each type, as for server-side key generation; twin: 100 pass."""
    key = generate_private_key(KeyType.EC_P256)
    for count, status in ((101, 400), (100, 201)):
        names = [f"host-{i}.example.com" for i in range(count)]
        csr = create_csr(key, common_name_dn(names[0]), SubjectAltNames.parse(dns=names))
        before = api.counts()
        r = api.post(
            CERTS,
            api.admin_key,
            json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()},
        )
        if status == 400:
            assert assert_problem(r, 400)["detail"] == (
                "the CSR asks for 101 dns names; at most 100 of each type"
            )
            assert api.counts() == before
        else:
            assert r.status_code == 201, r.text
            san = _cert(r.json()["certificate_pem"]).extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            )
            assert len(san.value.get_values_for_type(x509.DNSName)) == 100


def test_a_csr_whose_subject_holds_bidi_controls_is_refused(api: Api) -> None:
    key = generate_private_key(KeyType.EC_P256)
    spoof = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "moc.elgoog\u202e")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(spoof).sign(key, hashes.SHA256())
    before = api.counts()
    r = api.post(
        CERTS, api.admin_key, json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}
    )
    assert "bidirectional control characters" in assert_problem(r, 400)["detail"]
    assert api.counts() == before
    r = api.post(CERTS, api.admin_key, json={"common_name": "moc.elgoog\u202e"})
    assert "bidirectional control characters" in assert_problem(r, 400)["detail"]
    assert api.counts() == before


# --- public-url: cRLDistributionPoints, authorityInfoAccess caIssuers ----------------------

PUBLIC_URL = "https://certctl.example.internal:8443"


@pytest.fixture(params=BACKENDS)
def public_url_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """As ``api``, bootstrapped with ``public-url`` set (a trailing / to drop)."""
    url = None
    if request.param == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.url(cluster.create_database())
    with running_app(request.param, tmp_path / "data", url, public_url=PUBLIC_URL + "/") as app:
        yield app


def _crl_points(pem: str) -> list[list[str]] | None:
    """The fullName URIs of each distribution point, None without the extension."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        ext = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except x509.ExtensionNotFound:
        return None
    assert not ext.critical
    return [[str(n.value) for n in p.full_name or ()] for p in ext.value]


def _ca_issuers(pem: str) -> list[str] | None:
    """The caIssuers URIs of the authorityInfoAccess, None without the extension."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        ext = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except x509.ExtensionNotFound:
        return None
    assert not ext.critical
    # No OCSP with ocsp.enabled off (these tests' default): a URI nobody answers makes
    # clients wait (tests/api/test_ocsp.py has it on).
    assert {d.access_method for d in ext.value} == {AuthorityInformationAccessOID.CA_ISSUERS}
    return [str(d.access_location.value) for d in ext.value]


def _issue_every_way(api: Api, issuer: str) -> list[dict[str, Any]]:
    """A certificate with a server-made key, one from a CSR, and the renewal of each."""
    keygen = api.issue(issuer=issuer, common_name="web.example.com")
    r = api.post(
        CERTS, api.admin_key, json={"issuer": issuer, "csr": _csr_pem("csr.example.com")[0]}
    )
    assert r.status_code == 201, r.text
    issued = [keygen, r.json()]
    for cert in list(issued):
        r = api.post(f"{CERTS}/{cert['id']}/renew", api.admin_key, json={})
        assert r.status_code == 201, r.text
        issued.append(r.json())
    return issued


def test_public_url_puts_the_issuers_crl_and_certificate_in_every_leaf(
    public_url_api: Api,
) -> None:
    api = public_url_api
    r = api.post(ISSUERS, api.admin_key, json={"id": "team-a", "common_name": "Team A CA"})
    assert r.status_code == 201, r.text
    for issuer in ("default", "team-a"):
        expected = [[f"{PUBLIC_URL}/api/v1/issuers/{issuer}/crl"]]
        ca_der = f"{PUBLIC_URL}/api/v1/issuers/{issuer}/ca.der"
        for cert in _issue_every_way(api, issuer):
            assert _crl_points(cert["certificate_pem"]) == expected, issuer
            assert _ca_issuers(cert["certificate_pem"]) == [ca_der], issuer
        # The caIssuers URL is the public DER route: the certificate that signed the leaf.
        leaf = x509.load_pem_x509_certificate(cert["certificate_pem"].encode())
        r = api.get(ca_der.removeprefix(PUBLIC_URL))
        assert r.status_code == 200, r.text
        leaf.verify_directly_issued_by(x509.load_der_x509_certificate(r.content))
    # The URL is the public CRL route: fetched without credentials, it lists a revocation.
    leaf = api.issue(issuer="team-a", common_name="gone.example.com")
    r = api.post(f"{CERTS}/{leaf['id']}/revoke", api.admin_key, json={})
    assert r.status_code == 200, r.text
    url = _crl_points(leaf["certificate_pem"])[0][0]  # type: ignore[index]
    r = api.get(url.removeprefix(PUBLIC_URL))
    assert r.status_code == 200, r.text
    crl = x509.load_der_x509_crl(r.content)
    serial = x509.load_pem_x509_certificate(leaf["certificate_pem"].encode()).serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_without_public_url_no_leaf_carries_a_distribution_point_nor_aia(api: Api) -> None:
    for cert in _issue_every_way(api, "default"):
        assert _crl_points(cert["certificate_pem"]) is None
        assert _ca_issuers(cert["certificate_pem"]) is None
    # Nor does an intermediate: its extensions are those it always had.
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub-plain", "parent": "default"})
    assert r.status_code == 201, r.text
    inter = _cert(r.json()["certificate_pem"])
    assert [e.oid._name for e in inter.extensions] == [
        "basicConstraints",
        "keyUsage",
        "subjectKeyIdentifier",
        "authorityKeyIdentifier",
    ]


def test_public_url_puts_the_parents_crl_and_certificate_in_an_intermediate(
    public_url_api: Api, tmp_path: Path
) -> None:
    # As a public CA's intermediates do: a client checking the whole chain (openssl
    # -crl_check_all, Windows, Java) finds the parent's CRL, which lists the intermediate
    # once revoked, and can fetch the parent's certificate.
    api = public_url_api
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "sub-1",
            "subject": "CN=Sub 1,O=Example",
            "parent": "default",
            "path_length": 1,
        },
    )
    assert r.status_code == 201, r.text
    pem = r.json()["certificate_pem"]
    assert _crl_points(pem) == [[f"{PUBLIC_URL}/api/v1/issuers/default/crl"]]
    assert _ca_issuers(pem) == [f"{PUBLIC_URL}/api/v1/issuers/default/ca.der"]
    # One level down, the URLs name the intermediate's parent, not the root.
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub-2", "parent": "sub-1"})
    assert r.status_code == 201, r.text
    assert _crl_points(r.json()["certificate_pem"]) == [[f"{PUBLIC_URL}/api/v1/issuers/sub-1/crl"]]
    assert _ca_issuers(r.json()["certificate_pem"]) == [f"{PUBLIC_URL}/api/v1/issuers/sub-1/ca.der"]
    # A new root names nothing: it is its own issuer.
    r = api.post(ISSUERS, api.admin_key, json={"id": "root-2"})
    assert r.status_code == 201, r.text
    assert _crl_points(r.json()["certificate_pem"]) is None
    assert _ca_issuers(r.json()["certificate_pem"]) is None
    # What openssl shows, and pkilint's RFC 5280 linter finds nothing in it.
    path = tmp_path / "sub-1.pem"
    path.write_text(pem)
    assert openssl_crl_uris(path) == [f"{PUBLIC_URL}/api/v1/issuers/default/crl"]
    assert openssl_ca_issuers_uris(path) == [f"{PUBLIC_URL}/api/v1/issuers/default/ca.der"]
    lint = run(require("lint_pkix_cert"), "lint", "-s", "WARNING", "-f", "JSON", path)
    found = [d for r in json.loads(lint.stdout)["results"] for d in r["finding_descriptions"]]
    assert found == [], lint.stdout
    assert lint.returncode == 0, lint.stderr


def test_a_host_cn_no_san_covers_is_warned_about(module_api: Api) -> None:
    # Any SAN keeps the CN out of the DNS names, and TLS clients match SANs only: the
    # certificate does not serve api.example.com. Issued all the same, with a warning.
    fix = {
        "dns": "add it to dns_names (certctl certs issue --dns)",
        "csr": "add DNS:api.example.com to the CSR's subjectAltName",
    }
    left_out = (
        "common name api.example.com is not among the certificate's DNS names: clients will "
        "not accept it for that name; {}"
    )
    uri_only = module_api.issue(common_name="api.example.com", dns_names=[], uris=[SPIFFE_ID])
    assert uri_only["warnings"] == [left_out.format(fix["dns"])]
    # A renewal takes no names (only a validity): the warning, given when the names were
    # chosen, is not repeated with advice the renewal cannot follow.
    r = module_api.post(f"{CERTS}/{uri_only['id']}/renew", module_api.admin_key)
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == []
    renewed = _cert(r.json()["certificate_pem"])
    assert renewed.subject == _cert(uri_only["certificate_pem"]).subject
    ip = module_api.issue(common_name="10.0.0.1", dns_names=["a.example"])
    assert ip["warnings"] == [
        "common name 10.0.0.1 is not among the certificate's IP addresses: clients will not "
        "accept it for that name; add it to ip_addresses (certctl certs issue --ip)"
    ]
    wildcard = module_api.issue(common_name="api.example.com", dns_names=["*.example.com"])
    assert wildcard["warnings"] == []
    key = generate_private_key(KeyType.EC_P256)
    csr = create_csr(key, common_name_dn("api.example.com"), SubjectAltNames.parse(uri=[SPIFFE_ID]))
    r = module_api.post(
        CERTS,
        module_api.admin_key,
        json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()},
    )
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == [left_out.format(fix["csr"])]


def test_only_a_caller_holding_every_permission_gets_the_servers_own_names(api: Api) -> None:
    """A server certificate for certctl's own names under its CA impersonates certctl.

    Clients trust ``<data-dir>/tls/ca.crt`` (the ``default`` issuer's root) for the server:
    an operator holding such a certificate and its key could receive the API keys sent to
    certctl, an administrator's too (DESIGN §4, no escalation).
    """
    names = api.services.server_names
    assert names is not None
    assert {"certctl-server", "localhost"} <= set(names.dns)
    assert {"127.0.0.1", "::1"} <= {str(ip) for ip in names.ip}
    operator = api.actor_key("op", ["r-operator"])
    before = api.counts()
    refused = [
        {"common_name": "localhost"},  # a server certificate's CN becomes its DNS SAN
        {"common_name": "web", "dns_names": ["certctl-server"]},
        {"common_name": "", "ip_addresses": ["::1"]},
        {"common_name": "", "ip_addresses": ["127.0.0.1"], "profile": "server+client"},
        {"csr": _csr_pem("localhost")[0]},
    ]
    for body in refused:
        body.setdefault("dns_names", [])
        if "csr" in body:
            body = {"csr": body["csr"]}
        detail = assert_problem(api.post(CERTS, operator, json=body), 403)["detail"]
        assert "certctl's own" in detail, detail
        assert "every permission" in detail, detail
    api.assert_only_denials_audited(before, len(refused))
    # Names that are not the server's, a client certificate (no serverAuth), and an issuer
    # that clients do not trust for certctl (another root) are issued as before.
    api.issue(operator, common_name="web.example.com")
    api.issue(operator, common_name="localhost", dns_names=[], profile="client")
    r = api.post(ISSUERS, api.admin_key, json={"id": "other-root", "common_name": "Other"})
    assert r.status_code == 201, r.text
    api.issue(operator, common_name="localhost", issuer="other-root")
    # An intermediate under the internal CA is trusted by the same clients.
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    body = {"issuer": "sub", "common_name": "localhost", "dns_names": []}
    assert_problem(api.post(CERTS, operator, json=body), 403)
    # An administrator may; renewing that certificate would hand the renewer a new key for
    # the names, so it needs every permission too.
    admins = api.issue(common_name="localhost", dns_names=[])
    renewed = api.post(f"{CERTS}/{admins['id']}/renew", operator)
    assert "certctl's own" in assert_problem(renewed, 403)["detail"]
    assert api.post(f"{CERTS}/{admins['id']}/renew", api.admin_key).status_code == 201


def test_in_custom_mode_the_served_certificates_names_need_every_permission_under_its_root(
    api: Api, tmp_path: Path
) -> None:
    """tls.mode custom, with a tls.crt certctl issued: its names are certctl's own too.

    Clients verify that certificate against the root it chains to; an operator holding
    another certificate for one of its names under that root could pose as certctl. Before,
    only the self-signed mode's names were guarded (Services.server_names None here).
    """
    from certctl.server.tls import ServerTLS, serve_names_of

    api.services.server_names = None  # as bootstrap leaves it in tls.mode custom
    for body in ({"id": "corp", "common_name": "Corp"}, {"id": "corp-sub", "parent": "corp"}):
        r = api.post(ISSUERS, api.admin_key, json=body)
        assert r.status_code == 201, r.text

    def serve(issuer: str, name: str, *more: str) -> None:
        served = api.issue(issuer=issuer, common_name=name, dns_names=[name, *more])
        (tmp_path / "tls.crt").write_text(served["certificate_pem"] + served["chain_pem"])
        (tmp_path / "tls.key").write_text(served["private_key_pem"])
        assert tls.load(api.clock())

    tls = ServerTLS(tmp_path, on_serve=serve_names_of(api.services))
    serve("corp-sub", "certctl.corp.example", "*.api.corp.example")
    operator = api.actor_key("op", ["r-operator"])
    before = api.counts()
    refused = [
        {"issuer": "corp", "common_name": "certctl.corp.example"},  # the same root
        {"issuer": "corp-sub", "common_name": "", "dns_names": ["eu.api.corp.example"]},
        {"issuer": "corp", "common_name": "", "dns_names": ["*.api.corp.example"]},
    ]
    for body in refused:
        body.setdefault("dns_names", [])
        detail = assert_problem(api.post(CERTS, operator, json=body), 403)["detail"]
        assert "certctl's own" in detail, detail
    api.assert_only_denials_audited(before, len(refused))
    # Another root, a client certificate, other names, the self-signed mode's names: as before.
    api.issue(operator, issuer="default", common_name="certctl.corp.example")
    api.issue(operator, issuer="corp", common_name="certctl.corp.example", profile="client")
    api.issue(operator, issuer="corp", common_name="www.corp.example")
    api.issue(operator, issuer="corp", common_name="localhost")
    # Reloaded with a certificate from default: the rule follows the served certificate.
    serve("default", "certctl-new.corp.example")
    api.issue(operator, issuer="corp", common_name="certctl.corp.example")
    body = {"issuer": "default", "common_name": "certctl-new.corp.example", "dns_names": []}
    assert "certctl's own" in assert_problem(api.post(CERTS, operator, json=body), 403)["detail"]


def test_in_custom_mode_a_served_leaf_sent_alone_guards_its_names_under_every_issuer_of_its_root(
    api: Api, tmp_path: Path
) -> None:
    """tls.mode custom, a tls.crt that sends only its leaf (signed by certctl's "sub1").

    Clients complete the chain from the root they trust, so a sibling of sub1 under the same
    root signs a certificate they accept as certctl's too. Before, the root was walked to
    through what tls.crt sends and the signing CA's own path only: the leaf alone reached no
    root from "sub2" (nor from the root itself), and an operator was issued one (201).
    """
    from certctl.server.tls import ServerTLS, serve_names_of

    api.services.server_names = None  # as bootstrap leaves it in tls.mode custom
    for body in (
        {"id": "corp", "common_name": "Corp"},
        {"id": "sub1", "parent": "corp"},
        {"id": "sub2", "parent": "corp"},
    ):
        r = api.post(ISSUERS, api.admin_key, json=body)
        assert r.status_code == 201, r.text
    served = api.issue(issuer="sub1", common_name="certctl.corp.example")
    (tmp_path / "tls.crt").write_text(served["certificate_pem"])  # the leaf alone
    (tmp_path / "tls.key").write_text(served["private_key_pem"])
    assert ServerTLS(tmp_path, on_serve=serve_names_of(api.services)).load(api.clock())
    operator = api.actor_key("op", ["r-operator"])
    before = api.counts()
    for issuer in ("sub2", "corp", "sub1"):
        body = {"issuer": issuer, "common_name": "certctl.corp.example", "dns_names": []}
        detail = assert_problem(api.post(CERTS, operator, json=body), 403)["detail"]
        assert "certctl's own" in detail, (issuer, detail)
    api.assert_only_denials_audited(before, 3)
    # Under another root the name is anyone's, as before.
    api.issue(operator, issuer="default", common_name="certctl.corp.example")


def test_renewal_with_an_empty_validity_is_refused_as_an_issuance_is(api: Api) -> None:
    """``"validity": ""`` is a 400, as on ``POST /api/v1/certificates`` and on issuers.

    The renewal took it (and blanks) for no validity and renewed for the default, which
    openapi.json's duration pattern says is refused: a script whose variable was unset
    renewed for a lifetime it never asked for.
    """
    cert = api.issue(validity="2D")
    before = api.counts()
    for blank in ("", "  "):
        for path in (f"{CERTS}/{cert['id']}/renew", CERTS):
            body = {"validity": blank} | ({} if "renew" in path else {"common_name": "a.test"})
            problem = assert_problem(api.post(path, api.admin_key, json=body), 400)
            assert "empty duration" in problem["detail"], problem
    assert api.counts() == before
    # Left out, or null, it is the issuer's default.
    for body in ({}, {"validity": None}):
        renewed = api.post(f"{CERTS}/{cert['id']}/renew", api.admin_key, json=body)
        assert renewed.status_code == 201, renewed.text
        cert = renewed.json()
