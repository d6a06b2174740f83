"""Refused input across every route group: a 4xx problem+json, never a 500, and no change.

Each case runs on both backends against one app per module (``module_api``); before and after
each request the row counts of every table are compared. The requests are authenticated as
``admin``, so ``audit_events`` must not grow either: refused calls are not audited (their
transaction rolls back) and only *authentication* failures add an audit event, which
``test_auth_failure_adds_exactly_one_audit_event`` pins.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certctl.pki import KeyType, SubjectAltNames, common_name_dn, create_csr, generate_private_key
from tests._tools import openssl_req
from tests.api.conftest import Api, PostgresCluster, assert_problem, running_app

JSON = {"content-type": "application/json"}
BROKEN_CSR = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
CERTS = "/api/v1/certificates"
ROLES = "/api/v1/auth/roles"


def _csr_pem(cn: str = "csr.example.com") -> str:
    key = generate_private_key(KeyType.EC_P256)
    csr = create_csr(key, common_name_dn(cn), SubjectAltNames.parse(dns=[cn]))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _tampered_csr_pem() -> str:
    # Same length, different subject: still parses, but the self-signature no longer matches.
    der = x509.load_pem_x509_csr(_csr_pem("csr.example.com").encode()).public_bytes(
        serialization.Encoding.DER
    )
    assert der.count(b"csr.example.com") == 2  # CN and DNS SAN
    forged = x509.load_der_x509_csr(der.replace(b"csr.example.com", b"evil.example.co"))
    return forged.public_bytes(serialization.Encoding.PEM).decode()


def _duplicate_san_csr_pem() -> str:
    """A validly signed CSR with two subjectAltName extensions, as `openssl req` writes one."""
    with tempfile.TemporaryDirectory() as tmp:
        openssl_req(
            f"{tmp}/k.pem", f"{tmp}/r.csr", "/CN=dup.example.com",
            "-addext", "subjectAltName=DNS:dup.example.com",
            "-addext", "2.5.29.17=DER:300F820D622E6578616D706C652E636F6D",
        )  # fmt: skip
        return Path(f"{tmp}/r.csr").read_text()


def _rsa1024_csr_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(common_name_dn("weak.example.com"))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Case:
    """One refused request: ``kwargs`` may be a callable of the module's Api."""

    id: str
    method: str
    path: str
    status: int
    fragment: str = ""
    kwargs: dict[str, Any] | Callable[[Api], dict[str, Any]] = field(default_factory=dict)


def _issue(**body: Any) -> dict[str, Any]:
    return {"json": {"common_name": "ok.example.com", **body}}


CASES = [
    # --- JSON and transport -------------------------------------------------------------
    Case(
        "malformed-json",
        "POST",
        ROLES,
        400,
        "not valid JSON",
        {"content": b'{"id": "x",', "headers": JSON},
    ),
    Case("empty-body", "POST", ROLES, 400, "not valid JSON", {"content": b"", "headers": JSON}),
    Case(
        "not-utf8",
        "POST",
        ROLES,
        400,
        "not valid JSON",
        {"content": b'{"id": "\xff"}', "headers": JSON},
    ),
    Case("json-array", "POST", ROLES, 400, "body", {"json": [{"id": "x"}]}),
    # A member named twice: json kept the last, a proxy checking the body may read the first.
    # Before, this created the role with auth.role.assign.
    Case(
        "repeated-member",
        "POST",
        ROLES,
        400,
        "permissions: given more than once in the body",
        {
            "content": b'{"id": "r-twice", "permissions": ["cert.read"],'
            b' "permissions": ["auth.role.assign"]}',
            "headers": JSON,
        },
    ),
    Case(
        "repeated-nested-member",
        "PUT",
        "/api/v1/services/web",
        400,
        "name: given more than once",
        {
            "content": b'{"apiVersion": "certctl.io/v1", "kind": "TLSService",'
            b' "metadata": {"name": "web", "name": "other"}, "spec": {}}',
            "headers": JSON,
        },
    ),
    Case("json-null", "POST", ROLES, 400, "", {"content": b"null", "headers": JSON}),
    Case(
        "deeply-nested",
        "POST",
        ROLES,
        400,
        "nested too deeply",
        {"content": b"[" * 200_000, "headers": JSON},
    ),
    Case(
        "huge-integer",
        "POST",
        "/api/v1/issuers",
        400,
        "",
        {"content": b'{"id": "x", "path_length": ' + b"9" * 5000 + b"}", "headers": JSON},
    ),
    Case(
        "nan",
        "POST",
        "/api/v1/issuers",
        400,
        "path_length",
        {"content": b'{"id": "x", "path_length": NaN}', "headers": JSON},
    ),
    Case(
        "nul-in-json",
        "POST",
        "/api/v1/auth/actors",
        400,
        "NUL",
        {"json": {"id": "x", "name": "a\x00b"}},
    ),
    Case(
        "nul-in-json-key",
        "POST",
        "/api/v1/auth/actors",
        400,
        "NUL",
        {"json": {"id": "x", "name\x00": "a"}},
    ),
    Case("nul-in-path", "GET", "/api/v1/auth/roles/a%00b", 400, "NUL"),
    Case("nul-in-query", "GET", CERTS, 400, "NUL", {"params": {"q": "a\x00b"}}),
    Case(
        "body-over-1mib",
        "POST",
        ROLES,
        413,
        "1048576",
        {"content": b"x" * (1024 * 1024 + 1), "headers": JSON},
    ),
    Case(
        "chunked-body-over-1mib",
        "POST",
        ROLES,
        413,
        "1048576",
        {"content": lambda: iter([b"x" * 600_000, b"x" * 600_000]), "headers": JSON},
    ),
    Case(
        "wrong-content-type",
        "POST",
        ROLES,
        415,
        "application/json",
        {"content": b'{"id": "x"}', "headers": {"content-type": "text/plain"}},
    ),
    Case("no-content-type", "POST", ROLES, 415, "application/json", {"content": b'{"id": "x"}'}),
    Case("form-encoded", "POST", CERTS, 415, "application/json", {"data": {"common_name": "x"}}),
    # --- unknown fields and wrong types ----------------------------------------------------
    Case(
        "unknown-field-role",
        "POST",
        ROLES,
        400,
        "admin",
        {"json": {"id": "x", "permissions": [], "admin": True}},
    ),
    Case("unknown-field-cert", "POST", CERTS, 400, "private_key", _issue(private_key="x")),
    Case(
        "misspelt-field-cert",
        "POST",
        CERTS,
        400,
        "dns_name: unknown key (did you mean dns_names?)",
        _issue(dns_name=["a.example.com"]),
    ),
    Case("array-for-object", "POST", CERTS, 400, "body: expected a JSON object", {"json": [1]}),
    Case(
        "unknown-field-apikey",
        "POST",
        "/api/v1/auth/apikeys",
        400,
        "key_value",
        {"json": {"actor_id": "admin", "key_value": "cctl_x"}},
    ),
    Case("wrong-type", "POST", CERTS, 400, "dns_names", _issue(dns_names="a.example.com")),
    Case("cn-too-long", "POST", CERTS, 400, "common_name", _issue(common_name="a" * 65)),
    # --- CSRs ------------------------------------------------------------------------------
    Case(
        "invalid-csr",
        "POST",
        CERTS,
        400,
        "certificate signing request",
        {"json": {"csr": BROKEN_CSR}},
    ),
    Case(
        "csr-garbage", "POST", CERTS, 400, "certificate signing request", {"json": {"csr": "hello"}}
    ),
    Case(
        "csr-is-a-certificate",
        "POST",
        CERTS,
        400,
        "not a certificate signing request: a PEM CERTIFICATE block",
        {"json": {"csr": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}},
    ),
    Case(
        "tampered-csr",
        "POST",
        CERTS,
        400,
        "signature",
        lambda api: {"json": {"csr": _tampered_csr_pem()}},
    ),
    Case(
        # Before: a 500, raised where the extensions were first read (DuplicateExtension).
        "csr-duplicate-extension",
        "POST",
        CERTS,
        400,
        "CSR CN=dup.example.com has malformed extensions (Duplicate 2.5.29.17 extension found)",
        lambda api: {"json": {"csr": _duplicate_san_csr_pem()}},
    ),
    Case(
        "rsa1024-csr", "POST", CERTS, 400, "1024", lambda api: {"json": {"csr": _rsa1024_csr_pem()}}
    ),
    Case(
        "csr-unknown-issuer",
        "POST",
        CERTS,
        404,
        "nope",
        lambda api: {"json": {"issuer": "nope", "csr": _csr_pem()}},
    ),
    # --- issuance parameters ---------------------------------------------------------------
    Case("unknown-issuer", "POST", CERTS, 404, "nope", _issue(issuer="nope")),
    Case("validity-90X", "POST", CERTS, 400, "90X", _issue(validity="90X")),
    Case("validity-zero", "POST", CERTS, 400, "0D", _issue(validity="0D")),
    Case("validity-negative", "POST", CERTS, 400, "-5D", _issue(validity="-5D")),
    Case("validity-huge", "POST", CERTS, 400, "99999999999Y", _issue(validity="99999999999Y")),
    Case(
        "bad-dns", "POST", CERTS, 400, "-bad-.example.com", _issue(dns_names=["-bad-.example.com"])
    ),
    Case("bad-dns-wildcard", "POST", CERTS, 400, "*.com", _issue(dns_names=["*.com"])),
    Case("bad-dns-empty", "POST", CERTS, 400, "empty", _issue(dns_names=[""])),
    Case("bad-ip", "POST", CERTS, 400, "999.1.1.1", _issue(ip_addresses=["999.1.1.1"])),
    Case("bad-ip-cidr", "POST", CERTS, 400, "10.0.0.0/8", _issue(ip_addresses=["10.0.0.0/8"])),
    Case("bad-ip-zone", "POST", CERTS, 400, "zone", _issue(ip_addresses=["fe80::1%eth0"])),
    Case(
        "bad-email",
        "POST",
        CERTS,
        400,
        "alice: not a valid e-mail",
        _issue(email_addresses=["alice"]),
    ),
    Case(
        "bad-email-domain",
        "POST",
        CERTS,
        400,
        "a@-x-.example: not a valid e-mail",
        _issue(email_addresses=["a@-x-.example"]),
    ),
    Case("bad-email-empty", "POST", CERTS, 400, "empty e-mail", _issue(email_addresses=[""])),
    Case("bad-uri-scheme", "POST", CERTS, 400, "needs a scheme", _issue(uris=["example.org/x"])),
    Case("bad-uri-space", "POST", CERTS, 400, "without spaces", _issue(uris=["spiffe://a b/c"])),
    Case("bad-uri-empty", "POST", CERTS, 400, "empty URI", _issue(uris=[" "])),
    Case("bad-uri-type", "POST", CERTS, 400, "uris", _issue(uris="spiffe://example.org/x")),
    Case(
        "too-many-emails",
        "POST",
        CERTS,
        400,
        "email_addresses",
        _issue(email_addresses=[f"u{i}@example.com" for i in range(101)]),
    ),
    Case(
        "uris-with-csr",
        "POST",
        CERTS,
        400,
        "email_addresses, uris: not used with csr",
        lambda api: {
            "json": {"csr": _csr_pem(), "email_addresses": ["a@example.com"], "uris": ["urn:x"]}
        },
    ),
    Case("unknown-profile", "POST", CERTS, 400, "profile", _issue(profile="codesign")),
    Case("ca-profile", "POST", CERTS, 400, "profile", _issue(profile="intermediate")),
    Case("weak-key-type", "POST", CERTS, 400, "rsa-1024", _issue(key_type="rsa-1024")),
    Case("unknown-key-type", "POST", CERTS, 400, "dsa-9", _issue(key_type="dsa-9")),
    Case("nothing-to-name", "POST", CERTS, 400, "common_name", {"json": {"issuer": "default"}}),
    # --- listing ---------------------------------------------------------------------------
    Case("cursor-garbage", "GET", CERTS, 400, "cursor", {"params": {"cursor": "zzz"}}),
    Case("cursor-not-hex", "GET", CERTS, 400, "cursor", {"params": {"cursor": "g" * 24}}),
    Case("cursor-sql", "GET", CERTS, 400, "cursor", {"params": {"cursor": "' OR 1=1 --"}}),
    Case("limit-zero", "GET", CERTS, 400, "limit", {"params": {"limit": "0"}}),
    Case("limit-too-big", "GET", CERTS, 400, "limit", {"params": {"limit": "501"}}),
    Case("limit-negative", "GET", CERTS, 400, "limit", {"params": {"limit": "-1"}}),
    Case("limit-word", "GET", CERTS, 400, "limit", {"params": {"limit": "ten"}}),
    Case("limit-superscript", "GET", CERTS, 400, "limit", {"params": {"limit": "\u00b2"}}),
    Case("limit-5000-digits", "GET", CERTS, 400, "limit", {"params": {"limit": "9" * 5000}}),
    Case("unknown-status", "GET", CERTS, 400, "sleeping", {"params": {"status": "sleeping"}}),
    Case("bad-expiring-within", "GET", CERTS, 400, "soon", {"params": {"expiring_within": "soon"}}),
    # Empty filters: before, expiring_within= listed every certificate and issuer= none.
    Case(
        "empty-expiring-within",
        "GET",
        CERTS,
        400,
        "expiring_within: empty",
        {"params": {"expiring_within": ""}},
    ),
    Case("empty-issuer", "GET", CERTS, 400, "issuer: empty", {"params": {"issuer": ""}}),
    Case(
        "empty-actor-id",
        "GET",
        "/api/v1/auth/apikeys",
        400,
        "actor_id: empty",
        {"params": {"actor_id": ""}},
    ),
    Case("unknown-query-param", "GET", CERTS, 400, "sort", {"params": {"sort": "id"}}),
    Case("audit-cursor-word", "GET", "/api/v1/audit", 400, "cursor", {"params": {"cursor": "abc"}}),
    Case(
        "audit-cursor-overflow",
        "GET",
        "/api/v1/audit",
        400,
        "cursor",
        {"params": {"cursor": "9" * 30}},
    ),
    Case(
        "audit-cursor-superscript",
        "GET",
        "/api/v1/audit",
        400,
        "cursor",
        {"params": {"cursor": "\u00b2"}},
    ),
    Case("audit-limit", "GET", "/api/v1/audit", 400, "limit", {"params": {"limit": "1000"}}),
    # --- certificates by id ----------------------------------------------------------------
    Case("unknown-certificate", "GET", f"{CERTS}/{'0' * 24}", 404, "not found"),
    Case(
        "revoke-unknown-reason",
        "POST",
        "{cert}/revoke",
        400,
        "because",
        {"json": {"reason": "because"}},
    ),
    Case("revoke-unknown-field", "POST", "{cert}/revoke", 400, "when", {"json": {"when": "now"}}),
    Case("renew-bad-validity", "POST", "{cert}/renew", 400, "90X", {"json": {"validity": "90X"}}),
    Case("renew-unknown", "POST", f"{CERTS}/{'0' * 24}/renew", 404, "not found"),
    # --- RBAC ------------------------------------------------------------------------------
    Case(
        "unknown-permission",
        "POST",
        ROLES,
        400,
        "cert.everything",
        {"json": {"id": "x", "permissions": ["cert.read", "cert.everything"]}},
    ),
    Case("bad-role-id", "POST", ROLES, 400, "role id", {"json": {"id": "Has Space"}}),
    Case("role-exists", "POST", ROLES, 409, "already exists", {"json": {"id": "r-admin"}}),
    Case(
        "unknown-role-for-actor",
        "POST",
        "/api/v1/auth/actors",
        400,
        "r-ghost",
        {"json": {"id": "x", "roles": ["r-ghost"]}},
    ),
    Case(
        "apikey-expiry-garbage",
        "POST",
        "/api/v1/auth/apikeys",
        400,
        "expires_at",
        {"json": {"actor_id": "admin", "expires_at": "tomorrow"}},
    ),
    # A number is no date-time: lax mode took it as seconds since 1970.
    Case(
        "apikey-expiry-number",
        "POST",
        "/api/v1/auth/apikeys",
        400,
        "expires_at: Input should be a string",
        {"json": {"actor_id": "admin", "expires_at": 1893456000}},
    ),
    Case(
        "eab-expiry-number",
        "POST",
        "/api/v1/acme/eab-keys",
        400,
        "expires_at: Input should be a string",
        {"json": {"name": "ci", "expires_at": 1893456000.5}},
    ),
    Case(
        "apikey-expiry-past-datetime-max",  # its UTC is after 9999-12-31: a 500 before
        "POST",
        "/api/v1/auth/apikeys",
        400,
        "expires_at: out of range",
        {"json": {"actor_id": "admin", "expires_at": "9999-12-31T23:59:59-14:00"}},
    ),
    Case(
        "huge-echoed-value",  # the detail quotes the value: clipped, not 500 kB back
        "POST",
        CERTS,
        400,
        "… (truncated)",
        _issue(validity="x" * 500_000),
    ),
    Case(
        "apikey-unknown-actor",
        "POST",
        "/api/v1/auth/apikeys",
        404,
        "ghost",
        {"json": {"actor_id": "ghost"}},
    ),
    # --- issuers ---------------------------------------------------------------------------
    Case(
        "issuer-bad-subject",
        "POST",
        "/api/v1/issuers",
        400,
        "FOO=bar",
        {"json": {"id": "x", "subject": "FOO=bar"}},
    ),
    Case(
        "issuer-nul-escape-subject",
        "POST",
        "/api/v1/issuers",
        400,
        "control",
        {"json": {"id": "x", "subject": "CN=a\\00b"}},
    ),
    Case(
        "issuer-unknown-parent",
        "POST",
        "/api/v1/issuers",
        404,
        "nope",
        {"json": {"id": "x", "parent": "nope"}},
    ),
    Case(
        "issuer-half-import",
        "POST",
        "/api/v1/issuers",
        400,
        "private_key_pem",
        {"json": {"id": "x", "certificate_pem": "-----BEGIN CERTIFICATE-----\n"}},
    ),
    Case(
        "issuer-path-length",
        "POST",
        "/api/v1/issuers",
        400,
        "path_length",
        {"json": {"id": "x", "path_length": -1}},
    ),
    # A number or boolean as a string (or a boolean for a number) is refused, not converted:
    # pydantic's lax mode took "1" and true for path_length 1, "true" for true.
    Case(
        "issuer-path-length-string",
        "POST",
        "/api/v1/issuers",
        400,
        "path_length",
        {"json": {"id": "x", "path_length": "1"}},
    ),
    Case(
        "issuer-path-length-boolean",
        "POST",
        "/api/v1/issuers",
        400,
        "path_length",
        {"json": {"id": "x", "path_length": True}},
    ),
    Case(
        "import-skip-existing-string",
        "POST",
        "/api/v1/certificates/import",
        400,
        "skip_existing",
        lambda api: {
            "json": {
                "certificate_pem": api.issue(common_name="imported.example.com")["certificate_pem"],
                "skip_existing": "true",
            }
        },
    ),
    Case("unknown-issuer-crl", "GET", "/api/v1/issuers/nope/crl", 404, "nope"),
    Case("unknown-issuer-ca", "GET", "/api/v1/issuers/nope/ca.pem", 404, "nope"),
    # --- routing ---------------------------------------------------------------------------
    Case("unknown-route", "GET", "/api/v1/nothing-here", 404, ""),
    Case("unknown-root-route", "GET", "/wp-login.php", 404, ""),
    Case("method-not-allowed", "PUT", CERTS, 405, "", {"json": {}}),
    Case(
        "csr-with-names",  # the CSR's names are used: a common_name beside it would be ignored
        "POST",
        CERTS,
        400,
        "common_name, dns_names: not used with csr",
        lambda api: {"json": {"csr": _csr_pem(), "common_name": "x", "dns_names": ["y.example"]}},
    ),
    Case(
        "reserved-actor",
        "POST",
        "/api/v1/auth/actors",
        400,
        "'anonymous' is reserved",
        {"json": {"id": "anonymous", "name": "A", "roles": []}},
    ),
    # --- query parameters: a misspelt or unsupported one is refused, not ignored -------------
    Case("audit-unknown-param", "GET", "/api/v1/audit?unknown=1", 400, "unknown query"),
    Case(
        "apikeys-no-paging", "GET", "/api/v1/auth/apikeys?limit=-1&cursor=zz", 400, "cursor, limit"
    ),
    Case("crl-bad-format", "GET", "/api/v1/issuers/default/crl?format=PEM", 400, "der, pem"),
    Case("cert-bad-format", "GET", "{cert}?format=bogus", 400, "format=bogus: must be one of"),
    # The certificate is looked up (and the caller's permission checked) before the format.
    Case("cert-missing-bad-format", "GET", "/api/v1/certificates/nope?format=bogus", 404),
    # A repeated filter was read as its last value: ?status=expiring&status=expired listed
    # the expired certificates only, and a client meaning both never knew.
    Case(
        "certs-repeated-filter",
        "GET",
        f"{CERTS}?status=expiring&status=expired",
        400,
        "status given more than once",
    ),
    Case("crl-repeated-format", "GET", "/api/v1/issuers/default/crl?format=pem&format=der", 400),
    Case("audit-repeated-limit", "GET", "/api/v1/audit?limit=1&limit=500", 400, "limit given"),
]


def test_routes_without_filters_ignore_a_query(module_api: Api) -> None:
    # Probes and scrapers add their own parameters (?_=cache-buster, Prometheus params:).
    api = module_api
    assert api.get("/healthz?_=123").status_code == 200
    assert api.get("/api/v1/auth/whoami?x=1", api.admin_key).status_code == 200
    assert api.get("/api/v1/metrics/prometheus?module=x", api.admin_key).status_code == 200


def test_a_query_is_checked_after_the_credentials_and_the_permission(api: Api) -> None:
    """A misspelt filter is a 400 only for a caller the route would answer.

    It was checked first: a revoked or unknown key got 400 (its failure neither audited nor
    counted), and a caller without the permission learnt nothing of its 403.
    """
    path = "/api/v1/audit?cursr=5"
    revoked = api.mint_key("admin")
    r = api.request("DELETE", f"/api/v1/auth/apikeys/{revoked['id']}", api.admin_key)
    assert r.status_code == 200, r.text
    before = api.counts()
    body = assert_problem(api.get(path, revoked["key_value"]), 401)
    assert body["detail"] == "API key revoked"
    after = api.counts()
    assert after.pop("audit_events") == before.pop("audit_events") + 1
    assert after == before
    event = api.audit()[0]
    assert (event["action"], event["outcome"]) == ("auth.failure", "revoked")
    prom = api.actor_key("prom", ["r-metrics-read"])
    assert "missing permission audit.read" in assert_problem(api.get(path, prom), 403)["detail"]
    body = assert_problem(api.get(path, api.admin_key), 400)
    assert body["detail"] == "unknown query parameter(s): cursr"


def test_405_lists_the_methods_of_the_resource(module_api: Api) -> None:
    api = module_api
    r = api.request("PUT", CERTS, api.admin_key, json={})
    assert_problem(r, 405)
    assert r.headers["allow"] == "GET, HEAD, POST"
    r = api.request("POST", "/api/v1/auth/apikeys/0123456789abcdef", api.admin_key, json={})
    assert_problem(r, 405)
    assert r.headers["allow"] == "DELETE, GET, HEAD"


def test_a_key_pasted_as_an_id_is_not_echoed(module_api: Api) -> None:
    api = module_api
    secret = api.admin_key.split("_", 2)[2]
    r = api.request("DELETE", f"/api/v1/auth/apikeys/{api.admin_key}", api.admin_key)
    body = assert_problem(r, 404)
    assert secret not in r.text
    assert api.admin_key.split("_", 2)[1] in body["detail"]  # the key id still helps


def _kwargs(case: Case, api: Api) -> dict[str, Any]:
    kwargs = case.kwargs(api) if callable(case.kwargs) else dict(case.kwargs)
    if callable(kwargs.get("content")):
        kwargs["content"] = kwargs["content"]()  # a fresh generator each time
    return kwargs


@pytest.fixture(scope="module")
def certificate_id(module_api: Api) -> str:
    return str(module_api.issue(common_name="target.example.com")["id"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_without_change(module_api: Api, certificate_id: str, case: Case) -> None:
    api = module_api
    path = case.path.replace("{cert}", f"{CERTS}/{certificate_id}")
    kwargs = _kwargs(case, api)
    before = api.counts()
    r = api.request(case.method, path, api.admin_key, **kwargs)
    body = assert_problem(r, case.status)
    assert case.fragment in body["detail"]
    assert api.admin_key.split("_", 2)[2] not in r.text
    assert api.counts() == before


def test_refused_requests_leave_certificate_untouched(module_api: Api, certificate_id: str) -> None:
    got = module_api.get(f"{CERTS}/{certificate_id}", module_api.admin_key)
    assert got.status_code == 200
    assert got.json()["status"] == "active"
    assert got.json()["renewed_from"] is None


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Token abc"}],
    ids=["missing", "malformed-key", "wrong-scheme"],
)
def test_auth_failure_adds_exactly_one_audit_event(
    module_api: Api, headers: dict[str, str]
) -> None:
    api = module_api
    before = api.counts()
    r = api.request("POST", ROLES, json={"id": "x", "permissions": []}, headers=headers)
    assert_problem(r, 401)
    after = api.counts()
    assert after.pop("audit_events") == before.pop("audit_events") + 1
    assert after == before
    event = api.audit()[0]
    assert (event["action"], event["actor"]) == ("auth.failure", "anonymous")
    assert event["target"] == "POST /api/v1/auth/roles"


def _requests_total(api: Api, route: str, status: str) -> float:
    from certctl.metrics.registry import HTTP_REQUESTS

    return float(HTTP_REQUESTS.labels("POST", route, status)._value.get())


def test_an_unexpected_error_is_one_500_one_traceback_one_access_line(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from certctl.services import api_keys

    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api_keys, "mint_api_key", bug)
    caplog.set_level(logging.INFO, logger="certctl.access")
    route = "/api/v1/auth/apikeys"
    before = _requests_total(api, route, "500")
    counts = api.counts()
    r = api.post(route, api.admin_key, json={"actor_id": "admin"})
    body = assert_problem(r, 500)
    assert body["detail"] == "internal error; see the server log"
    assert [rec.name for rec in caplog.records if rec.exc_info] == ["certctl.api"]
    access = [rec.getMessage() for rec in caplog.records if rec.name == "certctl.access"]
    assert any(f"POST {route} 500 actor=admin" in line for line in access)
    assert _requests_total(api, route, "500") == before + 1
    assert api.counts() == counts


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/api/v1/certificates/?limit=1", "/api/v1/certificates?limit=1"),
        ("/api/v1/auth/roles//", "/api/v1/auth/roles"),
        ("/api/v1/auth/roles/r-admin/", "/api/v1/auth/roles/r-admin"),
    ],
)
def test_a_trailing_slash_redirects_to_a_relative_location(
    api: Api, path: str, location: str
) -> None:
    # Starlette's redirect put the request's Host header into an absolute Location: a forged
    # Host (or a cache keyed without it) sent the client, bearer key and all, elsewhere.
    r = api.get(path, api.admin_key, headers={"host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 307
    assert r.headers["location"] == location
    followed = api.get(location, api.admin_key)
    assert followed.status_code == 200, followed.text


@pytest.mark.parametrize(
    "path",
    [
        "//api/v1/auth/whoami/",
        "/nothing-here/",
        "/api/v1/auth/whoami",
        # An encoded slash: the 307 pointed at the request's own path, a redirect loop.
        "/api/v1/auth/whoami%2F",
        "/api/v1/auth/roles/%2F",
    ],
)
def test_no_redirect_where_no_route_takes_the_path(api: Api, path: str) -> None:
    r = api.get(path, api.admin_key, follow_redirects=False)
    assert "location" not in r.headers
    assert r.status_code == (200 if path == "/api/v1/auth/whoami" else 404)


def _database(cluster: PostgresCluster, encoding: str) -> str:
    import psycopg

    name = f"certctl_{encoding.lower()}_{secrets.token_hex(4)}"
    admin = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 ENCODING '{encoding}' LOCALE 'C'"
        )
    return cluster.url(name)


@pytest.mark.parametrize(
    ("encoding", "name", "fragment"),
    [
        # 150 characters, 450 bytes: a SQL_ASCII VARCHAR(200) holds 200 bytes.
        ("SQL_ASCII", "日" * 150, "a value is longer than the database holds"),
        ("LATIN1", "日本", "the database's encoding (LATIN1) cannot store"),
    ],
)
def test_a_value_the_database_cannot_store_is_a_400_that_changes_nothing(
    postgres_cluster: PostgresCluster, tmp_path: Path, encoding: str, name: str, fragment: str
) -> None:
    # Valid for the API (and stored as it is on SQLite or in a UTF8 database), refused by the
    # database: answered 500 "internal error", as if certctl had a bug.
    url = _database(postgres_cluster, encoding)
    with running_app("postgresql", tmp_path / "data", url) as api:
        before = api.counts()
        created = api.post("/api/v1/auth/actors", api.admin_key, json={"id": "a", "name": name})
        assert fragment in assert_problem(created, 400)["detail"]
        role = {"id": "r", "name": name, "permissions": []}
        assert fragment in assert_problem(api.post(ROLES, api.admin_key, json=role), 400)["detail"]
        assert api.counts() == before
        # Other characters go through, on the same connections.
        ok_actor = api.post("/api/v1/auth/actors", api.admin_key, json={"id": "a", "name": "Zoë"})
        assert ok_actor.status_code == 201, ok_actor.text
