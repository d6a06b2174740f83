"""OpenAPI 3.1 document generated from the route table and the Pydantic body models.

Responses are described per route: the success body (``_SUCCESS``), the query parameters
(``_QUERY``) and the RFC 9457 problems each route can answer with (``_problems``). The
reliability suite runs schemathesis against this document and fails on any response it does
not describe, so the document is kept as exact as the handlers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from certctl import __version__
from certctl.api.service_routes import PUBLIC_OUTPUTS
from certctl.pki.validity import DURATION_PATTERN

if TYPE_CHECKING:
    from collections.abc import Sequence

    from certctl.api._common import ApiRoute

__all__ = ["build_openapi"]

_PROBLEM = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
    "additionalProperties": False,
}

_STR: dict[str, Any] = {"type": "string"}
_STRS: dict[str, Any] = {"type": "array", "items": _STR}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
_TIME_OR_NULL: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
_STR_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}


def _object(properties: dict[str, Any], optional: Sequence[str] = ()) -> dict[str, Any]:
    """A closed object: every property required unless listed in ``optional``."""
    return {
        "type": "object",
        "properties": properties,
        "required": [p for p in properties if p not in optional],
        "additionalProperties": False,
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page(item: str) -> dict[str, Any]:
    return _object({"items": {"type": "array", "items": _ref(item)}, "next_cursor": _STR_OR_NULL})


_CERTIFICATE_FIELDS: dict[str, Any] = {
    "id": _STR,
    "serial": _STR,
    "status": {"type": "string", "enum": ["active", "expiring", "expired", "revoked"]},
    "not_before": _TIME,
    "not_after": _TIME,
    "certificate_pem": _STR,
}

_SERVICE_FIELDS: dict[str, Any] = {
    "name": _STR,
    "spec": {"type": "object", "description": "the canonical TLSService document"},
    "generation": {"type": "integer"},
    "status": _object(
        {
            "phase": {
                "type": "string",
                "enum": ["Pending", "Ready", "Failed", "Unknown"],
                "description": "Pending until the first reconcile pass, Failed while the "
                "Failed condition is True, else Ready",
            },
            "conditions": {"type": "object"},
            "observed_generation": {"type": "integer"},
            "serial": _STR_OR_NULL,
            "not_after": _TIME_OR_NULL,
            "next_renewal": _TIME_OR_NULL,
            "retired_ca_until": _TIME_OR_NULL,
            "targets": {"type": "object", "additionalProperties": _STR},
        }
    ),
    "created_at": _TIME,
    "updated_at": _TIME,
}

_ISSUER_REVOKED: dict[str, Any] = {
    "oneOf": [{"type": "null"}, _object({"issuer": _STR, "revoked_at": _TIME, "reason": _STR})]
}

_ISSUER_FIELDS: dict[str, Any] = {
    "id": _STR,
    "name": _STR,
    "subject": _STR,
    "key_type": _STR,
    "not_after": _TIME,
    "created_at": _TIME,
    "certificate_pem": _STR,
    "chain_pem": _STR,
    "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
    "revoked_at": _TIME_OR_NULL,
    "revocation_reason": _STR_OR_NULL,
    # Another issuer's revocation (a CA above it) that leaves it signing nothing.
    "issuer_revoked": _ISSUER_REVOKED,
}

# A stored certificate as GET and list show it.
_STORED_CERTIFICATE_FIELDS: dict[str, Any] = {
    **_CERTIFICATE_FIELDS,
    "issuer": _STR,
    "common_name": _STR,
    "subject": _STR,
    # Every stored certificate has the four lists (issuance writes SubjectAltNames.as_dict).
    "sans": _object({"dns": _STRS, "ip": _STRS, "email": _STRS, "uri": _STRS}),
    "profile": _STR,
    "created_at": _TIME,
    "created_by": _STR,
    "revoked_at": _TIME_OR_NULL,
    "revocation_reason": _STR_OR_NULL,
    "renewed_from": _STR_OR_NULL,
    "renewed_by": _STR_OR_NULL,
    # Its issuer's revocation, or a CA's above it: clients checking the chain refuse it.
    "issuer_revoked": _ISSUER_REVOKED,
}

# Response bodies, named once in components.schemas.
_ACME_ACCOUNT_FIELDS: dict[str, Any] = {
    "id": _STR,
    "status": {"type": "string", "enum": ["valid", "deactivated"]},
    "contact": _STRS,
    "created_at": _TIME,
    "thumbprint": {
        "type": "string",
        "description": "RFC 7638 SHA-256 thumbprint of the account key, base64url",
    },
    "eab_key_id": _STR_OR_NULL,
    "orders": {"type": "integer", "minimum": 0},
    "certificates": {
        "type": "integer",
        "minimum": 0,
        "description": "orders finalized (a certificate issued)",
    },
    "deactivated_at": {
        **_TIME_OR_NULL,
        "description": "when it was deactivated; null while valid, and for one deactivated "
        "before certctl recorded the time whose audit event is gone (unknown)",
    },
}


_SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": _PROBLEM,
    "WhoAmI": _object(
        {
            "actor_id": _STR,
            "roles": _STRS,
            "permissions": _STRS,
            "auth_method": _STR,
            "missing_roles": _STRS,
        }
    ),
    "PermissionList": _object({"items": _STRS, "next_cursor": {"type": "null"}}),
    "Role": _object(
        {
            "id": _STR,
            "name": _STR,
            "permissions": _STRS,
            "builtin": {"type": "boolean"},
            # What the role's cert.issue may issue; null: unrestricted (on an axis or whole).
            "constraints": {
                "oneOf": [
                    {"type": "null"},
                    _object(
                        {
                            "issuers": {"type": ["array", "null"], "items": _STR},
                            "names": {"type": ["array", "null"], "items": _STR},
                        }
                    ),
                ]
            },
        }
    ),
    "RoleList": _page("Role"),
    "Actor": _object({"id": _STR, "name": _STR, "roles": _STRS, "created_at": _TIME}),
    "ActorList": _page("Actor"),
    "ApiKey": _object(
        {
            "id": _STR,
            "actor_id": _STR,
            "name": _STR,
            "created_at": _TIME,
            "expires_at": _TIME_OR_NULL,
            "last_used_at": _TIME_OR_NULL,
            "revoked_at": _TIME_OR_NULL,
        }
    ),
    "ApiKeyList": _page("ApiKey"),
    "ApiKeyCreated": _object(
        {
            "id": _STR,
            "actor_id": _STR,
            "name": _STR,
            "created_at": _TIME,
            "expires_at": _TIME_OR_NULL,
            "key_value": {"type": "string", "description": "shown in this response only"},
        }
    ),
    "AcmeEabKey": _object(
        {
            "id": _STR,
            "name": _STR,
            "actor_id": _STR,
            "created_at": _TIME,
            "expires_at": _TIME_OR_NULL,
            "account_id": _STR_OR_NULL,
            "used_at": _TIME_OR_NULL,
            "revoked_at": _TIME_OR_NULL,
        }
    ),
    "AcmeEabKeyList": _page("AcmeEabKey"),
    "AcmeAccount": _object(_ACME_ACCOUNT_FIELDS),
    "AcmeAccountList": _page("AcmeAccount"),
    # The deactivation's answer: the account, and the certificates it revoked (if asked to).
    "DeactivatedAcmeAccount": _object(
        {
            **_ACME_ACCOUNT_FIELDS,
            "revoked_certificates": {
                "type": "array",
                "items": _STR,
                "description": "ids of the certificates this call revoked (with keyCompromise, "
                "also those revoked before whose reason it made keyCompromise)",
            },
            "not_revoked": {
                "type": "array",
                "items": _object({"id": _STR, "detail": _STR}),
                "description": "the account's certificates this call was asked to revoke and "
                "did not, with the refusal (a keyCompromise whose key has more certificates "
                "than one revocation takes); the account is deactivated all the same",
            },
        }
    ),
    "AcmeEabKeyCreated": _object(
        {
            "id": _STR,
            "name": _STR,
            "actor_id": _STR,
            "created_at": _TIME,
            "expires_at": _TIME_OR_NULL,
            "hmac_key": {
                "type": "string",
                "description": "base64url of 32 bytes, shown in this response only",
            },
        }
    ),
    "Issuer": _object(_ISSUER_FIELDS),
    # POST's answer: the issuer, what signing it warned about (a clipped validity), and the
    # held issuers imported before it whose chain an import of it completed.
    "CreatedIssuer": _object({**_ISSUER_FIELDS, "warnings": _STRS, "chains_completed": _STRS}),
    "IssuerList": _page("Issuer"),
    "Certificate": _object(_STORED_CERTIFICATE_FIELDS),
    "CertificateList": _page("Certificate"),
    # A revocation's answer: the certificate, and the ids revoked with it (keyCompromise
    # revokes the other certificates of the same key).
    "RevokedCertificate": _object({**_STORED_CERTIFICATE_FIELDS, "also_revoked": _STRS}),
    "IssuedCertificate": _object(
        {
            **_CERTIFICATE_FIELDS,
            "chain_pem": _STR,
            "warnings": _STRS,
            "private_key_pem": {
                "type": "string",
                "description": "server-side key generation only; shown in this response only",
            },
        },
        optional=["private_key_pem"],
    ),
    "AuditEvent": _object(
        {
            "id": {"type": "integer"},
            "at": _TIME,
            "actor": _STR,
            "action": _STR,
            "target": _STR,
            "outcome": _STR,
            "source": _STR,
            "detail": _STR,
            "credential": _STR,
        }
    ),
    "AuditList": _page("AuditEvent"),
    "MetricsSummary": _object(
        {
            "certificates": {
                "type": "object",
                "description": "issuer → status → count",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                },
            }
        }
    ),
    "Service": _object(_SERVICE_FIELDS),
    # POST …/renew: the service, and what the renewal cannot do for it (a custom tls.crt).
    "ServiceRenewal": _object(
        _SERVICE_FIELDS | {"warnings": {"type": "array", "items": _STR}}, optional=["warnings"]
    ),
    "ServiceList": _page("Service"),
    "ServiceClient": _object(
        {"fingerprint": _STR, "subject": _STR, "is_ca": {"type": "boolean"}, "added_at": _TIME}
    ),
    "ServiceClientList": _page("ServiceClient"),
    "ServiceClientsAdded": _object(
        {
            "items": {"type": "array", "items": _ref("ServiceClient")},
            "warnings": {"type": "array", "items": _STR},
        }
    ),
    # skipped: with skip_existing, the certificates recorded already (their number in the
    # bundle, from 1, and the record holding each).
    "ImportedCertificates": _object(
        {
            "items": {"type": "array", "items": _ref("Certificate")},
            "skipped": {
                "type": "array",
                "items": _object(
                    {
                        "certificate": {"type": "integer"},
                        "id": _STR,
                        "issuer": _STR,
                        "serial": _STR,
                        "subject": _STR,
                    }
                ),
            },
        }
    ),
    "ServiceOutput": _object(
        {"name": _STR, "data": {"type": "object", "additionalProperties": _STR}}
    ),
}

_JSON = "application/json"
_PEM = "application/x-pem-file"
_TEXT = "text/plain"
_OCSP_RESPONSE = "application/ocsp-response"
_BINARY = {"type": "string", "format": "binary"}
# Bodies that are no JSON: (method, path) -> the requestBody.
_RAW_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/issuers/{id}/ocsp"): {
        "required": True,
        "description": "a DER OCSPRequest for one certificate, at most 8 KiB (longer: "
        "malformedRequest)",
        # The Content-Type is not checked (clients differ): any binary body is read as DER.
        "content": {
            "application/ocsp-request": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
        },
    }
}


def _json(schema: str) -> dict[str, Any]:
    return {_JSON: {"schema": _ref(schema)}}


# (method, path) → success content by media type; 204 routes have none.
_SUCCESS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/healthz"): {_TEXT: {"schema": _STR}},
    ("GET", "/readyz"): {_TEXT: {"schema": _STR}},
    ("GET", "/api/v1/openapi.json"): {_JSON: {"schema": {"type": "object"}}},
    ("GET", "/api/v1/auth/whoami"): _json("WhoAmI"),
    ("GET", "/api/v1/auth/permissions"): _json("PermissionList"),
    ("GET", "/api/v1/auth/roles"): _json("RoleList"),
    ("POST", "/api/v1/auth/roles"): _json("Role"),
    ("GET", "/api/v1/auth/roles/{id}"): _json("Role"),
    ("PUT", "/api/v1/auth/roles/{id}"): _json("Role"),
    ("GET", "/api/v1/auth/actors"): _json("ActorList"),
    ("POST", "/api/v1/auth/actors"): _json("Actor"),
    ("GET", "/api/v1/auth/actors/{id}"): _json("Actor"),
    ("PATCH", "/api/v1/auth/actors/{id}"): _json("Actor"),
    ("GET", "/api/v1/auth/apikeys"): _json("ApiKeyList"),
    ("POST", "/api/v1/auth/apikeys"): _json("ApiKeyCreated"),
    ("GET", "/api/v1/auth/apikeys/{id}"): _json("ApiKey"),
    ("DELETE", "/api/v1/auth/apikeys/{id}"): _json("ApiKey"),
    ("GET", "/api/v1/acme/eab-keys"): _json("AcmeEabKeyList"),
    ("POST", "/api/v1/acme/eab-keys"): _json("AcmeEabKeyCreated"),
    ("GET", "/api/v1/acme/eab-keys/{id}"): _json("AcmeEabKey"),
    ("DELETE", "/api/v1/acme/eab-keys/{id}"): _json("AcmeEabKey"),
    ("GET", "/api/v1/acme/accounts"): _json("AcmeAccountList"),
    ("GET", "/api/v1/acme/accounts/{id}"): _json("AcmeAccount"),
    ("POST", "/api/v1/acme/accounts/{id}/deactivate"): _json("DeactivatedAcmeAccount"),
    ("GET", "/api/v1/issuers"): _json("IssuerList"),
    ("POST", "/api/v1/issuers"): _json("CreatedIssuer"),
    ("GET", "/api/v1/issuers/{id}"): _json("Issuer"),
    ("POST", "/api/v1/issuers/{id}/revoke"): _json("Issuer"),
    ("GET", "/api/v1/issuers/{id}/ca.pem"): {_PEM: {"schema": _STR}},
    ("GET", "/api/v1/issuers/{id}/ca.der"): {
        "application/pkix-cert": {"schema": {"type": "string", "format": "binary"}}
    },
    ("GET", "/api/v1/issuers/{id}/crl"): {
        "application/pkix-crl": {"schema": {"type": "string", "format": "binary"}},
        _PEM: {"schema": _STR},
    },
    ("POST", "/api/v1/issuers/{id}/ocsp"): {_OCSP_RESPONSE: {"schema": _BINARY}},
    ("GET", "/api/v1/issuers/{id}/ocsp/{request}"): {_OCSP_RESPONSE: {"schema": _BINARY}},
    ("GET", "/api/v1/certificates"): _json("CertificateList"),
    ("POST", "/api/v1/certificates"): _json("IssuedCertificate"),
    ("POST", "/api/v1/certificates/import"): _json("ImportedCertificates"),
    ("GET", "/api/v1/certificates/{id}"): {**_json("Certificate"), _PEM: {"schema": _STR}},
    ("POST", "/api/v1/certificates/{id}/revoke"): _json("RevokedCertificate"),
    ("POST", "/api/v1/certificates/{id}/renew"): _json("IssuedCertificate"),
    ("GET", "/api/v1/audit"): _json("AuditList"),
    ("GET", "/api/v1/metrics"): _json("MetricsSummary"),
    ("GET", "/api/v1/metrics/prometheus"): {_TEXT: {"schema": _STR}},
    ("GET", "/api/v1/services"): _json("ServiceList"),
    ("GET", "/api/v1/services/{name}"): _json("Service"),
    ("PUT", "/api/v1/services/{name}"): _json("Service"),
    ("POST", "/api/v1/services/{name}/renew"): _json("ServiceRenewal"),
    ("DELETE", "/api/v1/services/{name}/retired-ca"): _json("Service"),
    ("GET", "/api/v1/services/{name}/clients"): _json("ServiceClientList"),
    ("POST", "/api/v1/services/{name}/clients"): _json("ServiceClientsAdded"),
    ("GET", "/api/v1/services/{name}/outputs/{output}"): _json("ServiceOutput"),
}

# Success codes besides the route's own, with what they mean: PUT of a service answers 201
# when it created it; adding service clients answers 200 (no Location) when every
# certificate given was trusted already, so nothing was created.
_ALSO_SUCCESS = {
    ("PUT", "/api/v1/services/{name}"): ("201", "created"),
    ("POST", "/api/v1/services/{name}/clients"): (
        "200",
        "every certificate was trusted already: nothing added",
    ),
}

# Every 201 names what it created (RFC 9110 10.2.2), as a path resolved against the request
# URL; adding service clients names the client list, the clients have no URL of their own.
_LOCATION = {
    "Location": {
        "required": True,
        "description": "path of the created resource (RFC 9110 10.2.2)",
        "schema": {"type": "string", "pattern": "^/api/v1/"},
    }
}


def _cache_control(description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": "^public, max-age=[0-9]+$"},
    }


# The public CA certificate routes: explicit freshness and a validator on every 200 and 304,
# so a client, CDN or proxy following a caIssuers URI revalidates instead of refetching.
_FRESHNESS = {
    "Cache-Control": _cache_control(
        "public, max-age: an hour at most, never past the certificate's notAfter"
    ),
    "ETag": {
        "required": True,
        "description": "strong, from the bytes of the body (RFC 9110 8.8.3)",
        "schema": {"type": "string", "pattern": '^"[0-9a-f]{64}"$'},
    },
}
_REVALIDATED = frozenset(
    {
        ("GET", "/api/v1/issuers/{id}/ca.pem"),
        ("GET", "/api/v1/issuers/{id}/ca.der"),
        ("GET", "/api/v1/issuers/{id}/crl"),
    }
)
_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "ETags held (or *): 304 without a body when one is the current one",
}
# The CRL: as long as this server reuses it; the same ETag from every worker and replica
# until a new CRL is signed.
_CRL_FRESHNESS = {
    "Cache-Control": _cache_control(
        "public, max-age: as long as this server reuses the CRL (10 minutes at most, "
        "never past its nextUpdate)"
    ),
    "ETag": _FRESHNESS["ETag"],
}
_SUCCESS_HEADERS = {
    **dict.fromkeys(_REVALIDATED, _FRESHNESS),
    ("GET", "/api/v1/issuers/{id}/crl"): _CRL_FRESHNESS,
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


# A filter given empty is refused (400), not taken as "no filter": a script whose variable
# was unset would otherwise list everything (or nothing).
_NON_EMPTY: dict[str, Any] = {"type": "string", "minLength": 1}
# Not "format": "date-time": RFC 3339 requires the zone, and the server also takes a time
# without one (UTC) and a date (datetime.fromisoformat): a client validating the format
# refused those.
_INSTANT: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "examples": ["2026-12-05T15:00:00Z", "2026-12-05T15:00:00", "2026-12-05"],
}
_LIMIT = _query(
    "limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"
)
_QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/api/v1/certificates"): [
        _query(
            "status",
            {"type": "string", "enum": ["active", "expiring", "expired", "revoked"]},
            "effective status (expiring: within 30 days and not renewed)",
        ),
        _query("issuer", _NON_EMPTY, "issuer id"),
        _query(
            "expiring_within",
            {"type": "string", "pattern": DURATION_PATTERN},
            "a duration such as 30D: neither revoked nor renewed, ending before now plus it "
            "(expired ones too)",
        ),
        _query(
            "q",
            _STR,
            "substring, in either case (not a pattern), of the common name, subject, serial or "
            "a SAN (DNS name, IP address, e-mail address, URI; the values, not their JSON); a "
            "Unicode host name also finds its A-label, an IP address its canonical form",
        ),
        _LIMIT,
        _query(
            "cursor",
            {"type": "string", "pattern": "^[0-9a-f]{24}$"},
            "next_cursor of the previous page",
        ),
    ],
    ("GET", "/api/v1/audit"): [
        _query("actor", _NON_EMPTY, "actor id, exactly (anonymous: refused authentications)"),
        _query(
            "credential",
            {"type": "string", "pattern": "^apikey [0-9a-f]{16}$"},
            "credential, exactly: apikey <key id> (any other form is a 400)",
        ),
        _query(
            "action",
            _NON_EMPTY,
            "action, exactly: certificate.issue, apikey.revoke, auth.failure; a call refused "
            "with 403 is recorded under the action its success records (outcome denied)",
        ),
        _query(
            "outcome",
            _NON_EMPTY,
            "success, denied (403), or a refused authentication's reason: missing, invalid, "
            "expired, revoked",
        ),
        _query("target", _NON_EMPTY, "substring of the target, in either case (an id, a serial)"),
        _query(
            "since",
            _INSTANT,
            "events at or after this ISO 8601 time (UTC without a zone)",
        ),
        _query(
            "until",
            _INSTANT,
            "events before this ISO 8601 time (UTC without a zone)",
        ),
        _LIMIT,
        _query(
            "cursor",
            {"type": "string", "pattern": "^[0-9]{1,18}$"},
            "next_cursor of the previous page",
        ),
    ],
    ("GET", "/api/v1/auth/apikeys"): [_query("actor_id", _NON_EMPTY, "only this actor's keys")],
    ("GET", "/api/v1/acme/accounts"): [
        _query("status", {"type": "string", "enum": ["valid", "deactivated"]}, "account status"),
        _LIMIT,
        _query(
            "cursor",
            {"type": "string", "pattern": "^[0-9a-f]{24}$"},
            "next_cursor of the previous page",
        ),
    ],
    ("PUT", "/api/v1/services/{name}"): [
        _query(
            "dry_run",
            {"type": "string", "enum": ["true", "false"]},
            "true: every check of the write, the would-be service answered, nothing stored",
        ),
    ],
    ("GET", "/api/v1/issuers/{id}/ca.pem"): [
        _query(
            "chain",
            {"type": "string", "enum": ["true", "false"]},
            "true: the CAs above the issuer too, nearest first, ending with the root",
        ),
    ],
    ("GET", "/api/v1/issuers/{id}/crl"): [
        _query("format", {"type": "string", "enum": ["der", "pem"]}, "DER unless pem"),
    ],
    ("GET", "/api/v1/certificates/{id}"): [
        _query(
            "format",
            {"type": "string", "enum": ["json", "pem"]},
            "pem: the certificate and its chain (also Accept: application/x-pem-file)",
        ),
    ],
}


# Path parameters narrower than any string; the others are looked up (404 when unknown).
_PATH: dict[tuple[str, str], dict[str, Any]] = {
    ("/api/v1/services/{name}/outputs/{output}", "output"): {
        "type": "string",
        "enum": list(PUBLIC_OUTPUTS),
        "description": "the outputs readable through the API (any other: 400)",
    },
}


def query_names(method: str, path: str) -> frozenset[str]:
    """The query parameters a route takes; the app refuses any other."""
    return frozenset(p["name"] for p in _QUERY.get((method, path), []))


# Bodies that may be left out (the handler then uses the model's defaults).
_OPTIONAL_BODIES = frozenset(
    {"CertificateRevoke", "CertificateRenew", "IssuerRevoke", "AcmeAccountDeactivate"}
)
# Routes that never touch the database, hence never answer 503.
_NO_STORAGE = frozenset({"/healthz", "/api/v1/openapi.json"})
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Reads that answer 409 too: an issuer that cannot sign a CRL (expired, or no cRLSign), and
# one whose stored certificate or chain cannot be read (changed in the database outside
# certctl), for its CRL and its certificate routes alike.
_CONFLICTING_READS = frozenset(
    {
        ("GET", "/api/v1/issuers/{id}/crl"),
        ("GET", "/api/v1/issuers/{id}/ca.pem"),
        ("GET", "/api/v1/issuers/{id}/ca.der"),
    }
)


def _problems(route: ApiRoute) -> list[str]:
    """The problem statuses ``route`` can answer with."""
    codes = ["400"]  # any route: a NUL in the path or query, bad parameters
    if route.permission != "public":
        codes += ["401", "403", "429"]
    if "{" in route.path or route.body is not None:
        codes.append("404")  # the named object, or one the body refers to
    if route.method in _MUTATING or (route.method, route.path) in _CONFLICTING_READS:
        codes.append("409")
    if route.body is not None:
        codes += ["413", "415"]
    elif (route.method, route.path) in _RAW_BODIES:
        codes.append("413")  # over the server's body limit (1 MiB)
    if route.path not in _NO_STORAGE:
        codes.append("503")  # storage full, read-only or unreachable; /readyz not ready
    return codes


def build_openapi(routes: Sequence[ApiRoute]) -> dict[str, Any]:
    """Describe every route with its permission, parameters, bodies and responses."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = dict(_SCHEMAS)
    for route in routes:
        key = (route.method, route.path)
        success: dict[str, Any] = {"description": "success"}
        if key in _SUCCESS:
            success["content"] = _SUCCESS[key]
        if route.success == 201:
            success["headers"] = _LOCATION
        if key in _SUCCESS_HEADERS:
            success["headers"] = _SUCCESS_HEADERS[key]
        responses: dict[str, Any] = {str(route.success): success}
        if key in _REVALIDATED:
            responses["304"] = {
                "description": "not modified: If-None-Match names the current ETag; no body",
                "headers": _SUCCESS_HEADERS[key],
            }
        if key in _ALSO_SUCCESS:
            code, description = _ALSO_SUCCESS[key]
            also = {k: v for k, v in success.items() if k != "headers"}
            also["description"] = description
            if code == "201":
                also["headers"] = _LOCATION
            responses[code] = also
        for status in _problems(route):
            responses[status] = _problem_response(status)
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.handler.__name__}",
            "responses": responses,
        }
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": _PATH.get((route.path, name), _STR),
            }
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        params += _QUERY.get(key, [])
        if key in _REVALIDATED:
            params.append(_IF_NONE_MATCH)
        if params:
            op["parameters"] = params
        if route.permission != "public":
            op["security"] = [{"bearer": []}]
            op["x-certctl-permission"] = route.permission
        if route.body is not None:
            name = route.body.__name__
            body = route.body.model_json_schema(ref_template="#/components/schemas/{model}")
            # Nested models are referenced as components: hoist pydantic's local $defs there.
            schemas.update(body.pop("$defs", {}))
            schemas[name] = body
            op["requestBody"] = {
                "required": name not in _OPTIONAL_BODIES,
                "content": {_JSON: {"schema": _ref(name)}},
            }
        if key in _RAW_BODIES:
            op["requestBody"] = _RAW_BODIES[key]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "certctl", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_HEADERS = {
    "401": {
        "WWW-Authenticate": {
            "required": True,
            "schema": {"type": "string", "const": 'Bearer realm="certctl"'},
        }
    },
    "429": {
        "Retry-After": {
            "required": True,
            "description": "seconds to wait (RFC 9110 10.2.3)",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
    "503": {
        "Retry-After": {
            "required": False,
            "description": "seconds to wait, on every storage fault: 5 when the database is "
            "full, read-only, failing or cannot be reached, 2 when no database connection "
            "came free in time (a burst beyond database-pool-size), 1 when it is busy (a "
            "write rolled back for a concurrent one); absent when /readyz is not ready or "
            "the Kubernetes API cannot be asked",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


def _problem_response(status: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": "problem (RFC 9457)",
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response
