"""``GET /api/v1/certificates/{id}``: the exact bytes and headers served, JSON and PEM.

Pinned against the stored rows, read here on a connection of the test's own, so that a
cheaper way of serving them (``docs/performance.md``, session 25) cannot change one byte: the
key order, the compact separators, the timestamps' ISO form, ``issuer_revoked``, the chain of
the PEM download and the headers.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, inspect, select, text

from certctl.auth.permissions import PERMISSIONS
from certctl.services import certificates
from certctl.services.context import Principal
from certctl.store.db import create_store_engine, migrate
from certctl.store.models import CertificateRecord, Issuer
from tests.api.conftest import Api, assert_problem
from tests.unit.store.test_migration_head import downgrade_store

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

    # The list shows each as its GET does, in the same key order.
    listed = api.get(CERTS, api.admin_key, params={"limit": 100})
    assert listed.status_code == 200, listed.text
    items = {item["id"]: item for item in listed.json()["items"]}
    for cert_id, revoked_by, _chain in cases:
        expected_item = json.loads(_expected_json(api, cert_id, revoked_by))
        assert list(items[cert_id].items()) == list(expected_item.items())

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


def _served(api: Api, cert_id: str, revoked_by: str | None = None) -> dict[str, Any]:
    """The JSON GET of ``cert_id``, checked byte for byte against its stored row."""
    r = api.get(f"{CERTS}/{cert_id}", api.admin_key)
    assert r.status_code == 200, r.text
    assert r.content == _expected_json(api, cert_id, revoked_by)
    body: dict[str, Any] = r.json()
    return body


def _certificate_reads(api: Api) -> Iterator[list[str]]:
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM certificates" in statement:
            statements.append(statement)

    event.listen(api.services.engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(api.services.engine, "before_cursor_execute", seen)


def test_a_change_made_by_another_replica_or_by_hand_shows_on_the_next_get(api: Api) -> None:
    """Each process remembers the rows it served (migration 0022's counter): any change to
    what the GET shows, from anywhere, is read again at once; an issuance is not one."""
    r = api.post(ISSUERS, api.admin_key, json={"id": "mid", "parent": "default"})
    assert r.status_code == 201, r.text
    cert = api.issue(common_name="watched.example.com")
    under = api.issue(issuer="mid", common_name="under.example.com")
    assert _served(api, cert["id"])["status"] == "active"
    assert _served(api, under["id"])["issuer_revoked"] is None

    expected = _expected_json(api, cert["id"], None)
    reads = contextlib.contextmanager(_certificate_reads)(api)
    with reads as statements:
        assert api.get(f"{CERTS}/{cert['id']}", api.admin_key).content == expected
        api.issue(common_name="other.example.com")  # an issuance keeps what was read
        assert api.get(f"{CERTS}/{cert['id']}", api.admin_key).content == expected
        pem = api.get(f"{CERTS}/{cert['id']}", api.admin_key, params={"format": "pem"})
        assert pem.content == cert["certificate_pem"].encode()
    assert [s for s in statements if s.lstrip().startswith("SELECT")] == []

    url = api.services.engine.url.render_as_string(hide_password=False)
    replica = create_store_engine(url)
    at = api.clock().replace(microsecond=0)

    def by_hand(statement: str, **params: Any) -> None:
        with replica.begin() as connection:
            connection.execute(text(statement), params)

    try:
        by_hand(
            "UPDATE certificates SET status = 'revoked', revoked_at = :at,"
            " revocation_reason = 'superseded' WHERE id = :id",
            at=at,
            id=cert["id"],
        )
        shown = _served(api, cert["id"])
        assert (shown["status"], shown["revocation_reason"]) == ("revoked", "superseded")
        by_hand(
            "UPDATE certificates SET revocation_reason = 'keyCompromise' WHERE id = :id",
            id=cert["id"],
        )
        assert _served(api, cert["id"])["revocation_reason"] == "keyCompromise"
        by_hand("UPDATE certificates SET renewed_by = :by WHERE id = :id", by="x", id=cert["id"])
        assert _served(api, cert["id"])["renewed_by"] == "x"

        by_hand(
            "UPDATE issuers SET revoked_at = :at, revocation_reason = 'cessationOfOperation'"
            " WHERE id = 'mid'",
            at=at,
        )
        shown = _served(api, under["id"], "mid")
        assert shown["issuer_revoked"]["reason"] == "cessationOfOperation"

        by_hand("DELETE FROM certificates WHERE id = :id", id=cert["id"])
        assert_problem(api.get(f"{CERTS}/{cert['id']}", api.admin_key), 404)
        pem_gone = api.get(f"{CERTS}/{cert['id']}", api.admin_key, params={"format": "pem"})
        assert_problem(pem_gone, 404)
    finally:
        replica.dispose()


def test_a_renewal_or_revocation_through_the_api_shows_on_the_next_get(api: Api) -> None:
    old = api.issue(common_name="renew-me.example.com")
    assert _served(api, old["id"])["renewed_by"] is None
    r = api.post(f"{CERTS}/{old['id']}/renew", api.admin_key)
    assert r.status_code == 201, r.text
    new = r.json()
    assert _served(api, old["id"])["renewed_by"] == new["id"]
    assert _served(api, new["id"])["renewed_from"] == old["id"]
    r = api.post(f"{CERTS}/{new['id']}/revoke", api.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200, r.text
    assert _served(api, new["id"])["status"] == "revoked"
    # Revoking the successor clears the predecessor's renewed_by (it is expiring again).
    assert _served(api, old["id"])["renewed_by"] == _stored(api, old["id"]).renewed_by


def test_a_remembered_certificate_expires_on_time(api: Api) -> None:
    cert = api.issue(common_name="short.example.com", validity="40D")
    assert api.get(f"{CERTS}/{cert['id']}", api.admin_key).json()["status"] == "active"
    api.clock.advance(days=11)
    assert api.get(f"{CERTS}/{cert['id']}", api.admin_key).json()["status"] == "expiring"
    api.clock.advance(days=30)
    assert api.get(f"{CERTS}/{cert['id']}", api.admin_key).json()["status"] == "expired"


def test_0022_is_taken_back_and_applied_again(api: Api) -> None:
    cert = api.issue(common_name="migrated.example.com")
    engine = api.services.engine
    downgrade_store(engine, "0021")
    try:
        with engine.connect() as connection:
            assert "certificate_generation" not in inspect(connection).get_table_names()
            # No trigger left to write a table that is gone.
            connection.execute(
                text("UPDATE certificates SET revocation_reason = 'x' WHERE id = :id"),
                {"id": cert["id"]},
            )
            connection.execute(text("UPDATE issuers SET revoked_at = NULL"))
            connection.rollback()
    finally:
        migrate(engine)  # the database other tests share, on PostgreSQL
    assert _served(api, cert["id"])["revocation_reason"] is None
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE certificates SET revocation_reason = 'superseded' WHERE id = :id"),
            {"id": cert["id"]},
        )
    assert _served(api, cert["id"])["revocation_reason"] == "superseded"


@pytest.mark.parametrize("api", ["postgresql"], indirect=True)
def test_revoking_a_renewal_while_its_predecessor_is_renewed_again_never_deadlocks(
    api: Api,
) -> None:
    """X renewed P. A revocation of X (another replica) has revoked X and is about to hand
    P's renewed_by back when a renewal of P comes: both are answered, neither is a 503.

    0022's counter was bumped per statement, its row locked until the commit: the revocation
    held it and waited for P's row, which the renewal held while it waited for the counter.
    PostgreSQL rolled one back ('this write deadlocked', 503). SQLite: one writer at a time.
    """
    p = api.issue(common_name="again.example.com")
    r = api.post(f"{CERTS}/{p['id']}/renew", api.admin_key)
    assert r.status_code == 201, r.text
    x = r.json()
    assert _served(api, p["id"])["renewed_by"] == x["id"]
    handing_over = threading.Event()
    go_on = threading.Event()

    def hold_the_hand_over(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if statement.startswith("UPDATE certificates SET renewed_by=coalesce("):
            handing_over.set()
            go_on.wait(timeout=10)

    outcomes: dict[str, object] = {}

    def revoke() -> None:
        replica = Principal("admin", ("r-admin",), frozenset(PERMISSIONS), "api_key", "replica")
        try:
            outcomes["revoke"] = certificates.revoke_certificate(
                api.services, replica, x["id"], "superseded"
            )
        except Exception as exc:
            outcomes["revoke"] = exc

    def renew() -> None:
        outcomes["renew"] = api.post(f"{CERTS}/{p['id']}/renew", api.admin_key)

    event.listen(api.services.engine, "before_cursor_execute", hold_the_hand_over)
    revoking = threading.Thread(target=revoke)
    renewing = threading.Thread(target=renew)
    try:
        revoking.start()
        assert handing_over.wait(timeout=10)
        renewing.start()
        renewing.join(timeout=5)  # it needs nothing the revocation holds
        renewed_at_once = not renewing.is_alive()
    finally:
        go_on.set()
        revoking.join(timeout=30)
        renewing.join(timeout=30)
        event.remove(api.services.engine, "before_cursor_execute", hold_the_hand_over)
    assert renewed_at_once, "the renewal waited for the revocation"
    renewal = outcomes["renew"]
    assert getattr(renewal, "status_code", None) == 201, getattr(renewal, "text", renewal)
    assert isinstance(outcomes["revoke"], certificates.Revocation), outcomes["revoke"]
    assert _served(api, x["id"])["status"] == "revoked"
    assert _served(api, p["id"])["renewed_by"] == renewal.json()["id"]  # type: ignore[attr-defined]
