"""ACME Renewal Information (RFC 9773): the directory's ``renewalInfo``, the suggested window
of a certificate (live, revoked by the operator, under a revoked issuer), bad certIDs, and
new-order's ``replaces``; on both stores, with certbot's ``acme`` library as the client.

certIDs are made here from the certificate (its AKI keyIdentifier and serial), independently
of certctl's parsing; the client library's own ``renewal_time`` reads the same answers.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from acme import client, messages
from cryptography import x509
from sqlalchemy import select

from certctl.store.models import AcmeOrder
from tests.api.test_acme import (
    ISSUER,
    NAME,
    Acme,
    Http01Server,
    Raw,
    _acme_app,
    _assert_acme_problem,
    serving,
)
from tests.api.test_acme import acme_on as acme_on  # the fixture, shared

SIX_HOURS = "21600"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 4.1: base64url(AKI keyIdentifier) "." base64url(DER INTEGER value of serial)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    serial = cert.serial_number
    serial_der = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # room for the sign bit
    return f"{_b64(aki.key_identifier)}.{_b64(serial_der)}"


def _window(acme_on: Acme, certid: str) -> tuple[datetime, datetime, requests.Response]:
    r = requests.get(f"{acme_on.base}/acme/renewal-info/{certid}", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["retry-after"] == SIX_HOURS
    body = r.json()
    assert set(body) == {"suggestedWindow"}, body
    window = body["suggestedWindow"]
    assert set(window) == {"start", "end"}, window
    start = datetime.strptime(window["start"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    end = datetime.strptime(window["end"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert start < end, window
    return start, end, r


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _order_replacing(
    acme_on: Acme, acme_client: client.ClientV2, names: list[str], replaces: Any
) -> requests.Response:
    """new-order with ``replaces`` (the client library has no such message), by the account
    of ``acme_client``: signed with its key, under its kid."""
    raw = Raw(acme_on, key=acme_client.net.key)
    raw.kid = acme_client.net.account.uri
    payload = {"identifiers": [{"type": "dns", "value": n} for n in names], "replaces": replaces}
    response: requests.Response = raw.post(
        "new-order", raw.jws(f"{acme_on.base}/acme/new-order", payload)
    )
    return response


def test_the_directory_names_renewal_info(acme_on: Acme) -> None:
    doc = requests.get(acme_on.directory_url, timeout=10).json()
    assert doc["renewalInfo"] == f"{acme_on.base}/acme/renewal-info"
    acme_client = acme_on.client()
    assert acme_client.directory["renewalInfo"] == doc["renewalInfo"]


def test_a_live_certificate_is_due_in_the_last_third_then_at_once_once_revoked(
    acme_on: Acme,
) -> None:
    api = acme_on.api
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    _, leaf = acme_on.issue(acme_client, [NAME])
    certid = cert_id(leaf)
    start, end, r = _window(acme_on, certid)
    # Anonymous (no JWS), with the nonce and index link every ACME answer carries.
    assert r.headers["replay-nonce"]
    assert 'rel="index"' in r.headers["link"]
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    lifetime = not_after - not_before
    # acme.validity (90 days), and the 5 minutes notBefore is set back by.
    assert lifetime == timedelta(days=90, minutes=5)
    # From two thirds of the lifetime (day 60) to three quarters (day 67.5): inside validity.
    assert abs(start - (not_before + lifetime * 2 / 3)) < timedelta(seconds=1)
    assert abs(end - (not_before + lifetime * 3 / 4)) < timedelta(seconds=1)
    assert not_before < start < end < not_after
    # certbot's acme library picks a time in it: not due now.
    due, retry_after = acme_client.renewal_time(_pem(leaf))
    assert due is not None
    assert start <= due <= end
    assert due > datetime.now(UTC)
    assert retry_after > datetime.now() + timedelta(hours=5)

    # The operator revokes it through certctl's API: the window is over, renew now.
    listed = api.get("/api/v1/certificates", api.admin_key, params={"issuer": ISSUER}).json()
    (row,) = listed["items"]
    r = api.post(
        f"/api/v1/certificates/{row['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"}
    )
    assert r.status_code == 200, r.text
    start, end, _ = _window(acme_on, certid)
    now = api.clock.now
    assert end < now
    assert start < end
    assert now - end >= timedelta(hours=12)  # past on a client's clock running behind too
    due, _ = acme_client.renewal_time(_pem(leaf))
    assert due is not None
    assert due < datetime.now(UTC)


def test_the_certificates_of_an_account_deactivated_with_them_revoked_are_due_at_once(
    acme_on: Acme,
) -> None:
    # The operator cuts off a leaked account and revokes what it got: every certificate of
    # its orders is due now, another account's stays in its window.
    api = acme_on.api
    leaked, other = acme_on.client(), acme_on.client()
    regr = acme_on.register(leaked)
    acme_on.register(other)
    leaves = [acme_on.issue(leaked, [NAME])[1] for _ in range(2)]
    _, kept = acme_on.issue(other, [NAME])
    account_id = regr.uri.rsplit("/", 1)[1]
    r = api.post(
        f"/api/v1/acme/accounts/{account_id}/deactivate",
        api.admin_key,
        json={"revoke_certificates": True, "reason": "keyCompromise"},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["revoked_certificates"]) == 2, r.text
    for leaf in leaves:
        start, end, _ = _window(acme_on, cert_id(leaf))
        assert start < end < api.clock.now
    start, _, _ = _window(acme_on, cert_id(kept))
    assert start > api.clock.now


def test_a_certificate_under_a_revoked_issuer_is_due_at_once(api: Any) -> None:
    for body in (
        {"id": "acme-root", "common_name": "ACME Root"},
        {"id": ISSUER, "common_name": "ACME Sub", "parent": "acme-root"},
    ):
        r = api.post("/api/v1/issuers", api.admin_key, json=body)
        assert r.status_code == 201, r.text
    http01 = Http01Server()
    try:
        app, settings = _acme_app(api, http01.port)
        with serving(app) as base:
            acme_on = Acme(api, base, http01, settings)
            acme_client = acme_on.client()
            acme_on.register(acme_client)
            _, leaf = acme_on.issue(acme_client, [NAME])
            start, end, _ = _window(acme_on, cert_id(leaf))
            assert start > api.clock.now
            r = api.post(
                f"/api/v1/issuers/{ISSUER}/revoke",
                api.admin_key,
                json={"reason": "cessationOfOperation"},
            )
            assert r.status_code == 200, r.text
            start, end, _ = _window(acme_on, cert_id(leaf))
            assert start < end < api.clock.now
            # The leaf itself is not revoked: its issuer is.
            params = {"issuer": ISSUER}
            listed = api.get("/api/v1/certificates", api.admin_key, params=params).json()
            assert [c["revocation_reason"] for c in listed["items"]] == [None]
    finally:
        http01.close()


def test_a_malformed_or_unknown_cert_id_is_an_acme_problem(acme_on: Acme) -> None:
    api = acme_on.api
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    _, leaf = acme_on.issue(acme_client, [NAME])
    key_id, serial = cert_id(leaf).split(".")
    long_serial = _b64(bytes([1]) * 22)  # longer than any serial (20 octets, RFC 5280)
    long_key_id = _b64(bytes([7]) * 65)
    no_issuer = _b64(bytes([1]) * 20)
    before = api.counts()
    malformed = [
        "nodot",
        f"{key_id}.{serial}.x",  # three parts
        f".{serial}",  # an empty part
        f"{key_id}.",
        f"{key_id}=.{serial}",  # padding
        f"{key_id}.{serial}=",
        f"{key_id}.AH8",  # 0x00 0x7f: 127, but not in DER's shortest form (0x7f)
        f"{key_id}.AAE",  # 0x00 0x01: likewise
        f"{key_id}.+w",  # not base64url
        f"{key_id}._w",  # 0xff: -1, not positive
        f"{key_id}.AA",  # 0x00: zero
        f"{key_id}.{long_serial}",
        f"{long_key_id}.{serial}",
        f"{key_id}.AR",  # 0x01 with unused bits set: an alias of "AQ"
    ]
    for bad in malformed:
        r = requests.get(f"{acme_on.base}/acme/renewal-info/{bad}", timeout=10)
        body = _assert_acme_problem(r, 400, "malformed")
        assert body["detail"].startswith("certID"), body
    # Well formed, of no certificate here: serial 1, or a key no issuer holds.
    for bad in (f"{key_id}.AQ", f"{no_issuer}.{serial}"):
        r = requests.get(f"{acme_on.base}/acme/renewal-info/{bad}", timeout=10)
        body = _assert_acme_problem(r, 404, "malformed")
        assert "no certificate issued here through ACME" in body["detail"]
    # A certificate of the same issuer issued through the API, not ACME: not answered.
    issued = api.issue(issuer=ISSUER, common_name=NAME)
    api_leaf = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    r = requests.get(f"{acme_on.base}/acme/renewal-info/{cert_id(api_leaf)}", timeout=10)
    _assert_acme_problem(r, 404, "malformed")
    # No certID at all: the router's 404.
    r = requests.get(f"{acme_on.base}/acme/renewal-info", timeout=10)
    _assert_acme_problem(r, 404, "malformed")
    after = api.counts()
    assert after["certificates"] == before["certificates"] + 1  # the API's, only
    assert {k: v for k, v in after.items() if k not in ("certificates", "audit_events")} == {
        k: v for k, v in before.items() if k not in ("certificates", "audit_events")
    }


def test_replaces_is_the_accounts_own_certificate_and_replaced_once(acme_on: Acme) -> None:
    api = acme_on.api
    owner = acme_on.client()
    acme_on.register(owner)
    _, leaf = acme_on.issue(owner, [NAME])
    certid = cert_id(leaf)
    stranger = acme_on.client()
    acme_on.register(stranger)
    before = api.counts()["acme_orders"]

    # Another account's certificate: refused, nothing made.
    r = _order_replacing(acme_on, stranger, [NAME], certid)
    body = _assert_acme_problem(r, 403, "unauthorized")
    assert "not ordered by this account" in body["detail"]
    # No name in common, a certID that is not one, one of no certificate: refused.
    for names, replaces, status in (
        (["app.example.internal"], certid, 400),
        ([NAME], "not-a-cert-id", 400),
        ([NAME], 42, 400),
        ([NAME], f"{_b64(bytes([1]) * 20)}.AQ", 404),
    ):
        r = _order_replacing(acme_on, owner, names, replaces)
        _assert_acme_problem(r, status, "malformed")
    assert api.counts()["acme_orders"] == before

    # "replaces": null is no replaces (a client serializing an unset field): an order
    # replacing nothing, as one without the field.
    plain = _order_replacing(acme_on, owner, [NAME], None)
    assert plain.status_code == 201, plain.text
    assert "replaces" not in plain.json()
    plain_id = plain.headers["location"].rsplit("/", 1)[1]
    with api.services.sessions() as session:
        assert session.scalar(select(AcmeOrder.replaces).where(AcmeOrder.id == plain_id)) is None
    before += 1

    # Its own: the order is made and records the certificate it replaces.
    first = _order_replacing(acme_on, owner, [NAME], certid)
    assert first.status_code == 201, first.text
    order_id = first.headers["location"].rsplit("/", 1)[1]
    listed = api.get("/api/v1/certificates", api.admin_key, params={"issuer": ISSUER}).json()
    (row,) = listed["items"]
    with api.services.sessions() as session:
        assert (
            session.scalar(select(AcmeOrder.replaces).where(AcmeOrder.id == order_id))
            == (row["id"])
        )
    # The audit log says which certificate the order renews.
    (event,) = [
        e for e in api.audit() if e["action"] == "acme.order.create" and e["target"] == order_id
    ]
    assert event["detail"] == f"{NAME} replacing {row['id']}"
    # A second order replacing it while the first stands: alreadyReplaced, 409.
    r = _order_replacing(acme_on, owner, [NAME], certid)
    body = _assert_acme_problem(r, 409, "alreadyReplaced")
    assert order_id in body["detail"]
    assert api.counts()["acme_orders"] == before + 1
    # The first one given up (its authorization deactivated: the order is invalid): the
    # certificate may be replaced again.
    authz_url = first.json()["authorizations"][0]
    authz = owner._authzr_from_response(owner._post_as_get(authz_url), uri=authz_url)
    owner.deactivate_authorization(authz)
    again = _order_replacing(acme_on, owner, [NAME], certid)
    assert again.status_code == 201, again.text
    assert _order_replacing(acme_on, owner, [NAME], certid).status_code == 409
    # An order that expired unfinished no longer replaces it either.
    api.clock.advance(days=8)
    third = _order_replacing(acme_on, owner, [NAME], certid)
    assert third.status_code == 201, third.text


def test_an_order_that_replaces_a_certificate_says_which_from_new_order_to_valid(
    acme_on: Acme,
) -> None:
    # RFC 9773 5: a server accepting replaces MUST reflect it in the new-order response and in
    # every later fetch of the order; an order without one has no such member.
    owner = acme_on.client()
    acme_on.register(owner)
    done, leaf = acme_on.issue(owner, [NAME])
    assert "replaces" not in owner._post_as_get(done.uri).json()
    certid = cert_id(leaf)
    made = _order_replacing(acme_on, owner, [NAME], certid)
    assert made.status_code == 201, made.text
    assert made.json()["replaces"] == certid
    order_url = made.headers["location"]
    assert owner._post_as_get(order_url).json()["replaces"] == certid
    # Proved and finalized by certbot's library: the valid order still names it.
    _, csr = acme_on.order(owner, [NAME])
    authzs = [
        owner._authzr_from_response(owner._post_as_get(url), uri=url)
        for url in made.json()["authorizations"]
    ]
    order = messages.OrderResource(
        body=messages.Order.from_json(made.json()),
        uri=order_url,
        authorizations=authzs,
        csr_pem=csr,
    )
    acme_on.answer(owner, order)
    owner.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    body = owner._post_as_get(order_url).json()
    assert (body["status"], body["replaces"]) == ("valid", certid)


def test_a_revoked_or_expired_certificate_may_be_replaced(acme_on: Acme) -> None:
    # What ARI's revoked window asks for: the renewal of a revoked certificate names it; and
    # a client that ran late replaces one already expired, whose window is over.
    api = acme_on.api
    owner = acme_on.client()
    acme_on.register(owner)
    _, revoked = acme_on.issue(owner, [NAME])
    _, lapsed = acme_on.issue(owner, [NAME])
    listed = api.get("/api/v1/certificates", api.admin_key, params={"issuer": ISSUER}).json()
    (row,) = [c for c in listed["items"] if int(c["serial"], 16) == revoked.serial_number]
    r = api.post(
        f"/api/v1/certificates/{row['id']}/revoke", api.admin_key, json={"reason": "superseded"}
    )
    assert r.status_code == 200, r.text
    made = _order_replacing(acme_on, owner, [NAME], cert_id(revoked))
    assert made.status_code == 201, made.text
    assert made.json()["replaces"] == cert_id(revoked)
    api.clock.advance(days=91)
    start, end, _ = _window(acme_on, cert_id(lapsed))
    assert start < end < lapsed.not_valid_after_utc < api.clock.now
    made = _order_replacing(acme_on, owner, [NAME], cert_id(lapsed))
    assert made.status_code == 201, made.text
    assert made.json()["replaces"] == cert_id(lapsed)


def test_concurrent_orders_replacing_one_certificate_make_one(acme_on: Acme) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from certctl.errors import AcmeError
    from certctl.services import acme as acme_service

    api = acme_on.api
    acme_client = acme_on.client()
    regr = acme_on.register(acme_client)
    _, leaf = acme_on.issue(acme_client, [NAME])
    account = acme_service.find_account(api.services, regr.uri.rsplit("/", 1)[1])
    payload = {"identifiers": [{"type": "dns", "value": NAME}], "replaces": cert_id(leaf)}
    before = api.counts()["acme_orders"]

    def order() -> str:
        try:
            acme_service.new_order(api.services, acme_on.settings, account, payload, "127.0.0.1")
        except AcmeError as exc:
            return exc.acme_type
        return "made"

    with ThreadPoolExecutor(4) as pool:
        results = sorted(pool.map(lambda _: order(), range(4)))
    assert results == ["alreadyReplaced"] * 3 + ["made"]
    assert api.counts()["acme_orders"] == before + 1


# --- a finalized order with replaces renews the certificate it names ----------------------


def _new_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _replace(
    acme_on: Acme, owner: client.ClientV2, leaf: x509.Certificate, key_pem: bytes | None = None
) -> x509.Certificate:
    """Order ``leaf``'s renewal with ``replaces``, prove it and finalize it with certbot's
    library; a CSR of a new key unless ``key_pem`` (the old one, say) is given."""
    from acme import crypto_util

    made = _order_replacing(acme_on, owner, [NAME], cert_id(leaf))
    assert made.status_code == 201, made.text
    csr = crypto_util.make_csr(key_pem or _new_key_pem(), [NAME])
    authzs = [
        owner._authzr_from_response(owner._post_as_get(url), uri=url)
        for url in made.json()["authorizations"]
    ]
    order = messages.OrderResource(
        body=messages.Order.from_json(made.json()),
        uri=made.headers["location"],
        authorizations=authzs,
        csr_pem=csr,
    )
    acme_on.answer(owner, order)
    done = owner.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    return x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]


def _row(acme_on: Acme, cert: x509.Certificate) -> dict[str, Any]:
    api = acme_on.api
    listed = api.get("/api/v1/certificates", api.admin_key, params={"issuer": ISSUER}).json()
    (found,) = [c for c in listed["items"] if int(c["serial"], 16) == cert.serial_number]
    r = api.get(f"/api/v1/certificates/{found['id']}", api.admin_key)
    assert r.status_code == 200, r.text
    row: dict[str, Any] = r.json()
    return row


def _renewals(acme_on: Acme) -> float:
    api = acme_on.api
    scraped = api.get("/api/v1/metrics/prometheus", api.admin_key).text
    found = re.search(r'^certctl_renewals_total{result="success"} (\S+)$', scraped, re.M)
    return float(found.group(1)) if found else 0.0


def _gauges(acme_on: Acme) -> dict[str, float]:
    from certctl.server.periodic import refresh_metrics

    api = acme_on.api
    refresh_metrics(api.services)
    scraped = api.get("/api/v1/metrics/prometheus", api.admin_key).text
    found = re.findall(
        rf'^certctl_certificates{{issuer="{ISSUER}",status="(\w+)"}} (\S+)$', scraped, re.M
    )
    return {status: float(value) for status, value in found}


def test_a_finalized_order_replacing_a_certificate_renews_it(acme_on: Acme) -> None:
    api = acme_on.api
    owner = acme_on.client()
    acme_on.register(owner)
    _, plain = acme_on.issue(owner, [NAME])
    _, old = acme_on.issue(owner, [NAME])
    # An order without replaces renews nothing, as before: neither end is linked.
    plain_row = _row(acme_on, plain)
    assert (plain_row["renewed_by"], plain_row["renewed_from"]) == (None, None)
    assert _row(acme_on, old)["renewed_from"] is None
    api.clock.advance(days=61)  # 29 days left of 90: both expiring
    assert _row(acme_on, old)["status"] == "expiring"
    expiring = api.get(
        "/api/v1/certificates", api.admin_key, params={"issuer": ISSUER, "status": "expiring"}
    ).json()
    assert len(expiring["items"]) == 2
    assert _gauges(acme_on) == {"active": 0.0, "expiring": 2.0, "expired": 0.0, "revoked": 0.0}

    renewed_before = _renewals(acme_on)
    new = _replace(acme_on, owner, old)
    # Counted as a renewal, as the renew route's (the process's counter: a difference).
    assert _renewals(acme_on) == renewed_before + 1
    old_row, new_row = _row(acme_on, old), _row(acme_on, new)
    # The renewal is recorded both ways: the replaced certificate is active to its end.
    assert old_row["renewed_by"] == new_row["id"]
    assert new_row["renewed_from"] == old_row["id"]
    assert new_row["renewed_by"] is None
    assert old_row["status"] == "active"
    expiring = api.get(
        "/api/v1/certificates", api.admin_key, params={"issuer": ISSUER, "status": "expiring"}
    ).json()
    assert [c["id"] for c in expiring["items"]] == [_row(acme_on, plain)["id"]]
    soon = api.get(
        "/api/v1/certificates",
        api.admin_key,
        params={"issuer": ISSUER, "expiring_within": "30d"},
    )
    assert soon.status_code == 200, soon.text
    assert old_row["id"] not in [c["id"] for c in soon.json()["items"]]
    assert _gauges(acme_on) == {"active": 2.0, "expiring": 1.0, "expired": 0.0, "revoked": 0.0}
    # The audit log says which certificate the issuance renewed, as for the renew route.
    (event,) = [
        e
        for e in api.audit()
        if e["action"] == "certificate.issue" and e["target"].startswith(new_row["id"])
    ]
    assert event["target"].endswith(f" renewing {old_row['id']}")
    # The plain one is still linked to nothing.
    assert _row(acme_on, plain)["renewed_by"] is None


def test_a_revoked_or_expired_certificate_replaced_is_renewed_and_stays_as_it_was(
    acme_on: Acme,
) -> None:
    # Linked for the lineage only: the revoked one stays revoked (with its reason), the
    # expired one expired.
    api = acme_on.api
    owner = acme_on.client()
    acme_on.register(owner)
    _, revoked = acme_on.issue(owner, [NAME])
    _, lapsed = acme_on.issue(owner, [NAME])
    r = api.post(
        f"/api/v1/certificates/{_row(acme_on, revoked)['id']}/revoke",
        api.admin_key,
        json={"reason": "superseded"},
    )
    assert r.status_code == 200, r.text
    renewal = _replace(acme_on, owner, revoked)
    row = _row(acme_on, revoked)
    assert (row["status"], row["revocation_reason"]) == ("revoked", "superseded")
    assert row["renewed_by"] == _row(acme_on, renewal)["id"]
    assert _row(acme_on, renewal)["renewed_from"] == row["id"]
    api.clock.advance(days=91)
    later = _replace(acme_on, owner, lapsed)
    row = _row(acme_on, lapsed)
    assert (row["status"], row["renewed_by"]) == ("expired", _row(acme_on, later)["id"])
    assert _row(acme_on, later)["renewed_from"] == row["id"]


def test_a_certificate_renewed_already_is_renewed_by_the_latest(acme_on: Acme) -> None:
    # Renewed through the API first, then replaced through ACME: the latest renewal is its
    # renewed_by (as a second renewal through the API, and migration 0007's trigger, do);
    # the first one still names it as renewed_from.
    api = acme_on.api
    owner = acme_on.client()
    acme_on.register(owner)
    _, old = acme_on.issue(owner, [NAME])
    old_id = _row(acme_on, old)["id"]
    r = api.post(f"/api/v1/certificates/{old_id}/renew", api.admin_key, json={})
    assert r.status_code in (200, 201), r.text
    first = r.json()["id"]
    assert api.get(f"/api/v1/certificates/{old_id}", api.admin_key).json()["renewed_by"] == first
    new = _replace(acme_on, owner, old)
    new_id = _row(acme_on, new)["id"]
    assert api.get(f"/api/v1/certificates/{old_id}", api.admin_key).json()["renewed_by"] == new_id
    assert api.get(f"/api/v1/certificates/{first}", api.admin_key).json()["renewed_from"] == old_id
    assert _row(acme_on, new)["renewed_from"] == old_id


def test_a_key_compromise_takes_the_replacement_only_if_it_kept_the_key(acme_on: Acme) -> None:
    # A replacement with a key of its own (what certbot does) certifies another key: a
    # keyCompromise revocation of either leaves the other standing. One that kept the key
    # is revoked with it, as a renewal through the API that kept a CSR's key is.
    api = acme_on.api
    owner = acme_on.client()
    acme_on.register(owner)

    def revoke(cert: x509.Certificate) -> list[str]:
        r = api.post(
            f"/api/v1/certificates/{_row(acme_on, cert)['id']}/revoke",
            api.admin_key,
            json={"reason": "keyCompromise"},
        )
        assert r.status_code == 200, r.text
        also: list[str] = r.json()["also_revoked"]
        return also

    # The old key compromised: its replacement (a new key) stays active.
    _, old = acme_on.issue(owner, [NAME])
    new = _replace(acme_on, owner, old)
    assert revoke(old) == []
    assert _row(acme_on, new)["status"] == "active"
    assert _row(acme_on, new)["renewed_from"] == _row(acme_on, old)["id"]

    # The replacement's key compromised: the old one, live, is no longer renewed (due again).
    _, old = acme_on.issue(owner, [NAME])
    new = _replace(acme_on, owner, old)
    assert _row(acme_on, old)["renewed_by"] == _row(acme_on, new)["id"]
    assert revoke(new) == []
    row = _row(acme_on, old)
    assert (row["status"], row["renewed_by"]) == ("active", None)
    api.clock.advance(days=61)
    assert _row(acme_on, old)["status"] == "expiring"
    api.clock.advance(days=-61)

    # The key kept: one key, both revoked.
    key_pem = _new_key_pem()
    from acme import crypto_util

    order = owner.new_order(crypto_util.make_csr(key_pem, [NAME]))
    acme_on.answer(owner, order)
    done = owner.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    old = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    new = _replace(acme_on, owner, old, key_pem)
    assert revoke(new) == [_row(acme_on, old)["id"]]
    assert _row(acme_on, old)["status"] == "revoked"


def _key_compromise(acme_on: Acme, cert_id: str) -> list[str]:
    api = acme_on.api
    r = api.post(
        f"/api/v1/certificates/{cert_id}/revoke", api.admin_key, json={"reason": "keyCompromise"}
    )
    assert r.status_code == 200, r.text
    return sorted(r.json()["also_revoked"])


def _acme_issued(acme_on: Acme, owner: client.ClientV2, key_pem: bytes) -> x509.Certificate:
    from acme import crypto_util

    order = owner.new_order(crypto_util.make_csr(key_pem, [NAME]))
    acme_on.answer(owner, order)
    done = owner.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    return x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]


def test_a_key_compromise_in_a_chain_mixing_kept_and_new_keys_takes_the_key_only(
    acme_on: Acme,
) -> None:
    # A -ACME, key kept-> B -ACME, new key-> C -renew route (the CSR's key)-> D: A and B
    # certify one key, C and D another. A keyCompromise of each takes its key's pair only;
    # B, live, renewed by C and D revoked, is due again: none of its renewals is live.
    api = acme_on.api
    owner = acme_on.client()
    acme_on.register(owner)

    def chain() -> list[str]:
        key_pem = _new_key_pem()
        a = _acme_issued(acme_on, owner, key_pem)
        b = _replace(acme_on, owner, a, key_pem)
        c = _replace(acme_on, owner, b)
        ids = [_row(acme_on, cert)["id"] for cert in (a, b, c)]
        r = api.post(f"/api/v1/certificates/{ids[2]}/renew", api.admin_key, json={})
        assert r.status_code in (200, 201), r.text
        return [*ids, r.json()["id"]]

    def view(cert_id: str) -> tuple[str, str | None]:
        row = api.get(f"/api/v1/certificates/{cert_id}", api.admin_key).json()
        return row["status"], row["renewed_by"]

    for revoked in range(4):
        a, b, c, d = ids = chain()
        assert [view(i)[1] for i in ids] == [b, c, d, None]
        pair = [a, b] if revoked < 2 else [c, d]
        assert _key_compromise(acme_on, ids[revoked]) == [i for i in pair if i != ids[revoked]]
        if revoked < 2:
            # C carries their names on: their renewed_by names it, as any other reason
            # (revoking A, then B) leaves it.
            assert [view(i) for i in ids] == [
                ("revoked", c),
                ("revoked", c),
                ("active", d),
                ("active", None),
            ]
        else:
            assert [view(i) for i in ids] == [
                ("active", b),
                ("active", None),
                ("revoked", None),
                ("revoked", None),
            ]
            api.clock.advance(days=61)
            assert view(b)[0] == "expiring"
            api.clock.advance(days=-61)


def test_a_key_compromise_of_a_replacement_hands_its_predecessor_on_as_any_reason_does(
    acme_on: Acme,
) -> None:
    # A -> B -> C, each ACME with a key of its own. B revoked, C still carries A's names on:
    # A's renewed_by is C whatever the reason (keyCompromise takes B alone, its key's only
    # certificate), and A does not count as expiring.
    api = acme_on.api
    owner = acme_on.client()
    acme_on.register(owner)
    for reason in ("superseded", "keyCompromise"):
        _, a = acme_on.issue(owner, [NAME])
        b = _replace(acme_on, owner, a)
        c = _replace(acme_on, owner, b)
        b_id, c_id = (_row(acme_on, cert)["id"] for cert in (b, c))
        r = api.post(f"/api/v1/certificates/{b_id}/revoke", api.admin_key, json={"reason": reason})
        assert r.status_code == 200, r.text
        assert r.json()["also_revoked"] == []
        assert _row(acme_on, a)["renewed_by"] == c_id, reason
        assert _row(acme_on, b)["renewed_by"] == c_id, reason
        api.clock.advance(days=61)
        assert _row(acme_on, a)["status"] == "active", reason
        api.clock.advance(days=-61)
