"""``GET /api/v1/certificates/{id}``: the exact bytes and headers served, JSON and PEM.

Pinned against the stored rows, read here on a connection of the test's own, so that a
cheaper way of serving them (``docs/performance.md``, session 25) cannot change one byte: the
key order, the compact separators, the timestamps' ISO form, ``issuer_revoked``, the chain of
the PEM download and the headers.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from certctl.store.models import CertificateRecord, Issuer
from tests.api.conftest import Api

CERTS = "/api/v1/certificates"
ISSUERS = "/api/v1/issuers"


def _stored(api: Api, cert_id: str) -> Any:
    with api.services.engine.connect() as connection:
        return connection.execute(
            select(CertificateRecord.__table__).where(CertificateRecord.id == cert_id)
        ).one()


def _issuer(api: Api, issuer_id: str) -> Any:
    with api.services.engine.connect() as connection:
        return connection.execute(select(Issuer.__table__).where(Issuer.id == issuer_id)).one()


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _expected_json(api: Api, cert_id: str, revoked_by: str | None) -> bytes:
    row = _stored(api, cert_id)
    issuer_revoked = None
    if revoked_by is not None:
        by = _issuer(api, revoked_by)
        issuer_revoked = {
            "issuer": revoked_by,
            "revoked_at": _iso(by.revoked_at),
            "reason": by.revocation_reason,
        }
    data = {
        "id": row.id,
        "issuer": row.issuer_id,
        "serial": row.serial,
        "status": row.status,  # none of these is near its expiry
        "common_name": row.common_name,
        "subject": row.subject,
        "sans": row.sans,
        "profile": row.profile,
        "not_before": _iso(row.not_before),
        "not_after": _iso(row.not_after),
        "created_at": _iso(row.created_at),
        "created_by": row.created_by,
        "revoked_at": _iso(row.revoked_at),
        "revocation_reason": row.revocation_reason,
        "renewed_from": row.renewed_from,
        "renewed_by": row.renewed_by,
        "issuer_revoked": issuer_revoked,
        "certificate_pem": row.certificate_pem,
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _headers(content_type: str, body: bytes) -> list[tuple[str, str]]:
    return [
        ("content-length", str(len(body))),
        ("content-type", content_type),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
    ]


def test_a_certificate_is_served_byte_for_byte_as_stored(api: Api) -> None:
    for body in ({"id": "mid", "parent": "default", "path_length": 0},):
        r = api.post(ISSUERS, api.admin_key, json=body)
        assert r.status_code == 201, r.text
    sans = api.issue(
        common_name="both.example.com",
        dns_names=["both.example.com", "www.both.example.com"],
        ip_addresses=["192.0.2.7", "2001:db8::7"],
    )
    revoked = api.issue(common_name="revoked.example.com")
    r = api.post(f"{CERTS}/{revoked['id']}/revoke", api.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200, r.text
    under = api.issue(issuer="mid", common_name="under.example.com")
    r = api.post(f"{ISSUERS}/mid/revoke", api.admin_key, json={"reason": "cessationOfOperation"})
    assert r.status_code == 200, r.text
    old = api.issue(common_name="renewed.example.com")
    r = api.post(f"{CERTS}/{old['id']}/renew", api.admin_key)
    assert r.status_code == 201, r.text
    new = r.json()

    cases = [
        (sans["id"], None, ""),
        (revoked["id"], None, ""),
        (under["id"], "mid", _issuer(api, "mid").certificate_pem),
        (old["id"], None, ""),
        (new["id"], None, ""),
    ]
    for _ in range(2):  # the second time as the first: nothing remembered shows
        for cert_id, revoked_by, chain in cases:
            expected = _expected_json(api, cert_id, revoked_by)
            r = api.get(f"{CERTS}/{cert_id}", api.admin_key)
            assert r.status_code == 200, r.text
            assert r.content == expected
            assert list(r.headers.items()) == _headers("application/json", expected)

            pem = (_stored(api, cert_id).certificate_pem + chain).encode()
            for kw in (
                {"headers": {"Accept": "application/x-pem-file"}},
                {"params": {"format": "pem"}},
            ):
                r = api.get(f"{CERTS}/{cert_id}", api.admin_key, **kw)
                assert r.status_code == 200, r.text
                assert r.content == pem
                assert list(r.headers.items()) == _headers("application/x-pem-file", pem)

    shown = json.loads(_expected_json(api, under["id"], "mid"))
    assert shown["issuer_revoked"]["reason"] == "cessationOfOperation"
    assert json.loads(_expected_json(api, old["id"], None))["renewed_by"] == new["id"]
    assert json.loads(_expected_json(api, new["id"], None))["renewed_from"] == old["id"]
    assert json.loads(_expected_json(api, revoked["id"], None))["revocation_reason"] == "superseded"
    assert json.loads(_expected_json(api, sans["id"], None))["sans"] == {
        "dns": ["both.example.com", "www.both.example.com"],
        "ip": ["192.0.2.7", "2001:db8::7"],
        "email": [],
        "uri": [],
    }
