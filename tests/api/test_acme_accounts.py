"""Operators list and deactivate ACME accounts (``/api/v1/acme/accounts``), on both stores.

The accounts are made by certbot's ``acme`` library against the app served on 127.0.0.1;
what the operator's deactivation does is checked by that client's next request.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import josepy as jose
import pytest
from acme import messages
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from certctl.api.app import create_app
from certctl.errors import AcmeError
from certctl.services import acme, acme_accounts, certificates
from certctl.services.acme_accounts import cut_off
from certctl.services.context import Services
from certctl.store.db import create_store_engine, lock_for_write, session_factory
from certctl.store.models import AcmeAccount, AcmeAuthorization, AcmeChallenge, AcmeOrder
from tests.api.conftest import assert_problem
from tests.api.test_acme import ERR, ISSUER, NAME, Acme, serving
from tests.api.test_acme import acme_on as acme_on  # the fixture, shared

PATH = "/api/v1/acme/accounts"


def _account_id(regr: messages.RegistrationResource) -> str:
    return str(regr.uri.rsplit("/", 1)[1])


def _statuses(acme_on: Acme, account_id: str) -> tuple[list[str], list[str]]:
    """The statuses of the account's orders and of their authorizations, as stored."""
    with acme_on.api.services.sessions() as session:
        orders = list(
            session.scalars(
                select(AcmeOrder.status)
                .where(AcmeOrder.account_id == account_id)
                .order_by(AcmeOrder.id)
            )
        )
        authzs = list(
            session.scalars(
                select(AcmeAuthorization.status)
                .join(AcmeOrder, AcmeOrder.id == AcmeAuthorization.order_id)
                .where(AcmeOrder.account_id == account_id)
                .order_by(AcmeAuthorization.id)
            )
        )
    return orders, authzs


def _audited(acme_on: Acme, action: str, target: str) -> list[dict[str, Any]]:
    return [e for e in acme_on.api.audit() if e["action"] == action and e["target"] == target]


def test_an_account_is_listed_then_deactivated_by_the_operator_and_refused_next(
    acme_on: Acme,
) -> None:
    api = acme_on.api
    acme_client = acme_on.client()
    regr = acme_on.register(acme_client)
    account_id = _account_id(regr)
    acme_on.issue(acme_client, [NAME])  # an order finalized: a certificate
    pending, _ = acme_on.order(acme_client, [NAME])  # an order under way
    assert pending.body.status == messages.STATUS_PENDING

    r = api.get(PATH, api.admin_key)
    assert r.status_code == 200, r.text
    (item,) = r.json()["items"]
    assert r.json()["next_cursor"] is None
    thumbprint = jose.b64encode(acme_client.net.key.public_key().thumbprint()).decode()
    assert item == {
        "id": account_id,
        "status": "valid",
        "contact": ["mailto:ops@example.internal"],
        "created_at": item["created_at"],
        "thumbprint": thumbprint,
        "eab_key_id": None,
        "orders": 2,
        "certificates": 1,
        "deactivated_at": None,
    }
    assert api.get(f"{PATH}/{account_id}", api.admin_key).json() == item

    # Reading takes cert.read, deactivating cert.revoke: a reader changes nothing.
    reader = api.key_with_permissions("acct-reader", ["cert.read"])
    assert api.get(PATH, reader).json()["items"] == [item]
    before = api.counts()
    assert_problem(api.post(f"{PATH}/{account_id}/deactivate", reader), 403)
    assert api.counts() == {**before, "audit_events": api.counts()["audit_events"]}
    assert api.get(f"{PATH}/{account_id}", api.admin_key).json()["status"] == "valid"

    r = api.post(f"{PATH}/{account_id}/deactivate", api.admin_key)
    assert r.status_code == 200, r.text
    deactivated_at = api.clock().isoformat()
    assert r.json() == {
        **item,
        "status": "deactivated",
        "deactivated_at": deactivated_at,
        "revoked_certificates": [],
        "not_revoked": [],
    }
    # RFC 8555 7.3.6: what it had under way is cancelled; the finalized order stays valid.
    assert _statuses(acme_on, account_id) == (["valid", "invalid"], ["valid", "deactivated"])
    (event,) = _audited(acme_on, "acme.account.deactivate", account_id)
    assert event["actor"] == "admin"
    assert event["outcome"] == "success"
    assert event["detail"] == "1 pending authorization(s) deactivated, 1 order(s) invalid"

    # Its very next request is refused, and its key makes no new account either.
    with pytest.raises(messages.Error) as info:
        acme_on.order(acme_client, [NAME])
    assert info.value.typ == ERR + "unauthorized", info.value
    with pytest.raises(messages.Error) as info:
        acme_on.register(acme_on.client(acme_client.net.key))
    assert info.value.typ == ERR + "unauthorized", info.value

    # Final: asked again (later), the same answer, its time kept, audited as such.
    api.clock.advance(minutes=5)
    again = api.post(f"{PATH}/{account_id}/deactivate", api.admin_key)
    assert again.status_code == 200, again.text
    assert again.json() == r.json()
    details = [e["detail"] for e in _audited(acme_on, "acme.account.deactivate", account_id)]
    assert details[0] == "already deactivated"
    assert len(details) == 2


def test_the_list_pages_newest_first_and_filters_by_status(acme_on: Acme) -> None:
    api = acme_on.api
    made = [_account_id(acme_on.register(acme_on.client())) for _ in range(3)]
    newest_first = made[::-1]

    first = api.get(PATH, api.admin_key, params={"limit": 2}).json()
    assert [a["id"] for a in first["items"]] == newest_first[:2]
    assert first["next_cursor"] == newest_first[1]
    rest = api.get(PATH, api.admin_key, params={"limit": 2, "cursor": first["next_cursor"]})
    assert [a["id"] for a in rest.json()["items"]] == newest_first[2:]
    assert rest.json()["next_cursor"] is None

    assert api.post(f"{PATH}/{made[1]}/deactivate", api.admin_key).status_code == 200
    off = api.get(PATH, api.admin_key, params={"status": "deactivated"}).json()
    assert [a["id"] for a in off["items"]] == [made[1]]
    on = api.get(PATH, api.admin_key, params={"status": "valid"}).json()
    assert [a["id"] for a in on["items"]] == [made[2], made[0]]


def test_bad_requests_are_problems_and_change_nothing(acme_on: Acme) -> None:
    api = acme_on.api
    account_id = _account_id(acme_on.register(acme_on.client()))
    before = api.counts()
    for params, words in (
        ({"status": "revokd"}, "unknown status"),
        ({"status": "Valid"}, "did you mean valid?"),
        ({"status": ""}, "empty"),
        ({"cursor": "nope"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"owner": "x"}, "owner"),
    ):
        body = assert_problem(api.get(PATH, api.admin_key, params=params), 400)
        assert words in body["detail"], (params, body)
    unknown = "0" * 24
    assert unknown in assert_problem(api.get(f"{PATH}/{unknown}", api.admin_key), 404)["detail"]
    assert_problem(api.post(f"{PATH}/{unknown}/deactivate", api.admin_key), 404)
    assert_problem(api.get(PATH), 401)
    assert api.counts() == {**before, "audit_events": api.counts()["audit_events"]}
    assert api.get(f"{PATH}/{account_id}", api.admin_key).json()["status"] == "valid"


def test_deactivation_revokes_the_accounts_certificates_when_asked(
    acme_on: Acme, tmp_path: Path
) -> None:
    api = acme_on.api
    acme_client = acme_on.client()
    account_id = _account_id(acme_on.register(acme_client))
    _, leaf = acme_on.issue(acme_client, [NAME])
    (cert,) = api.get("/api/v1/certificates", api.admin_key, params={"issuer": ISSUER}).json()[
        "items"
    ]
    other = acme_on.client()  # another account's certificate stays valid
    acme_on.register(other)
    acme_on.issue(other, [NAME])
    url = f"{PATH}/{account_id}/deactivate"

    before = api.counts()
    for body, words in (
        ({"reason": "keyCompromise"}, "only with revoke_certificates"),
        ({"revoke_certificates": True, "reason": "stolen"}, "stolen"),
        ({"revoke_certificates": "maybe"}, "revoke_certificates"),
        ({"revoke_certificates": "true"}, "revoke_certificates"),  # not converted
    ):
        problem = assert_problem(api.post(url, api.admin_key, json=body), 400)
        assert words in problem["detail"], (body, problem)
    assert api.counts() == before
    assert api.get(f"{PATH}/{account_id}", api.admin_key).json()["status"] == "valid"

    body = {"revoke_certificates": True, "reason": "keyCompromise"}
    r = api.post(url, api.admin_key, json=body)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["revoked_certificates"]) == ("deactivated", [cert["id"]])
    shown = api.get(f"/api/v1/certificates/{cert['id']}", api.admin_key).json()
    assert (shown["status"], shown["revocation_reason"]) == ("revoked", "keyCompromise")
    assert api.openssl_crl_serials(ISSUER, tmp_path) == {leaf.serial_number}
    revocations = [e for e in api.audit() if e["action"] == "certificate.revoke"]
    assert [(e["actor"], e["target"]) for e in revocations] == [("admin", cert["id"])]
    # Asked again: nothing left to revoke.
    again = api.post(url, api.admin_key, json=body)
    assert again.status_code == 200, again.text
    assert again.json()["revoked_certificates"] == []


def test_the_holders_own_deactivation_cancels_its_pending_orders_too(acme_on: Acme) -> None:
    acme_client = acme_on.client()
    regr = acme_on.register(acme_client)
    acme_on.order(acme_client, [NAME])
    gone = acme_client.deactivate_registration(regr)
    assert gone.body.status == "deactivated"
    account_id = _account_id(regr)
    assert _statuses(acme_on, account_id) == (["invalid"], ["deactivated"])
    shown = acme_on.api.get(f"{PATH}/{account_id}", acme_on.api.admin_key).json()
    assert (shown["status"], shown["orders"], shown["certificates"]) == ("deactivated", 1, 0)
    assert shown["deactivated_at"] == acme_on.api.clock().isoformat()


def test_another_replica_refuses_the_account_at_its_next_request(acme_on: Acme) -> None:
    # A second app on the same store (its own engine and Services), as a second replica: it
    # holds no copy of the account that the operator's deactivation on the first would miss.
    api = acme_on.api
    url = api.services.engine.url.render_as_string(hide_password=False)
    engine = create_store_engine(str(url))
    other = Services(engine, session_factory(engine), api.services.wrapper)
    other.clock = api.services.clock
    try:
        with serving(create_app(other, acme=acme_on.settings)) as base:
            replica = Acme(api, base, acme_on.http01, acme_on.settings)
            acme_client = replica.client()
            account_id = _account_id(replica.register(acme_client))
            assert replica.order(acme_client, [NAME])[0].body.status == messages.STATUS_PENDING
            r = api.post(f"{PATH}/{account_id}/deactivate", api.admin_key)
            assert r.status_code == 200, r.text
            with pytest.raises(messages.Error) as info:
                replica.order(acme_client, [NAME])
            assert info.value.typ == ERR + "unauthorized", info.value
    finally:
        engine.dispose()


def _answer_slowly(acme_on: Acme, acme_client: Any, order: messages.OrderResource) -> str:
    """Answer the order's challenge with an http-01 fetch taking 2 s; returns its token."""
    body = order.authorizations[0].body.challenges[0]
    response, validation = body.response_and_validation(acme_client.net.key)
    token = str(body.chall.encode("token"))
    acme_on.http01.answers[token] = b"SLOW " + validation.encode()
    acme_client.answer_challenge(body, response)
    return token


def _validated(acme_on: Acme, token: str) -> str | None:
    """The challenge's status once its validation has finished (read from the store)."""
    deadline = time.monotonic() + 30
    while True:
        with acme_on.api.services.sessions() as session:
            status = session.scalar(
                select(AcmeChallenge.status).where(AcmeChallenge.token == token)
            )
        if status != "processing":
            return status
        assert time.monotonic() < deadline, "validation never finished"
        time.sleep(0.2)


def test_a_validation_finishing_after_the_deactivation_leaves_its_authorization_deactivated(
    acme_on: Acme,
) -> None:
    # The http-01 fetch is under way when the operator cuts the account off: its success,
    # recorded afterwards, must not turn the cancelled authorization valid again.
    acme_client = acme_on.client()
    account_id = _account_id(acme_on.register(acme_client))
    order, _ = acme_on.order(acme_client, [NAME])
    token = _answer_slowly(acme_on, acme_client, order)
    r = acme_on.api.post(f"{PATH}/{account_id}/deactivate", acme_on.api.admin_key)
    assert r.status_code == 200, r.text
    # The fetch succeeded, too late to count: the challenge is not shown valid under a
    # deactivated authorization (RFC 8555 7.1.6 has no such pair).
    assert _validated(acme_on, token) == "invalid"
    assert _statuses(acme_on, account_id) == (["invalid"], ["deactivated"])


def test_an_authorization_its_holder_deactivated_mid_validation_stays_deactivated(
    acme_on: Acme,
) -> None:
    acme_client = acme_on.client()
    account_id = _account_id(acme_on.register(acme_client))
    order, _ = acme_on.order(acme_client, [NAME])
    token = _answer_slowly(acme_on, acme_client, order)
    gone = acme_client.deactivate_authorization(order.authorizations[0])
    assert gone.body.status == messages.STATUS_DEACTIVATED
    assert _validated(acme_on, token) == "invalid"
    authz, _ = acme_client.poll(order.authorizations[0])
    assert authz.body.status == messages.STATUS_DEACTIVATED
    # As the client reads it: invalid, saying why, where it read valid.
    (challenge,) = [c for c in authz.body.challenges if c.chall.encode("token") == token]
    assert challenge.status == messages.STATUS_INVALID
    assert challenge.error.typ == ERR + "unauthorized"
    assert challenge.error.detail == (
        f"authorization {authz.uri.rsplit('/', 1)[1]} was deactivated before this validation "
        "finished: its success does not count"
    )
    assert _statuses(acme_on, account_id) == (["invalid"], ["deactivated"])


def test_a_new_order_in_flight_when_the_account_is_deactivated_is_refused(
    acme_on: Acme,
) -> None:
    # The request passed find_account (the account read valid) before the operator's
    # deactivation committed: new-order must not leave the cut-off account a pending order.
    acme_client = acme_on.client()
    account_id = _account_id(acme_on.register(acme_client))
    services = acme_on.api.services
    account = acme.find_account(services, account_id)
    r = acme_on.api.post(f"{PATH}/{account_id}/deactivate", acme_on.api.admin_key)
    assert r.status_code == 200, r.text
    before = acme_on.api.counts()
    payload = {"identifiers": [{"type": "dns", "value": NAME}]}
    with pytest.raises(AcmeError) as info:
        acme.new_order(services, acme_on.settings, account, payload, "127.0.0.1")
    assert (info.value.acme_type, info.value.status) == ("unauthorized", 401), info.value
    assert acme_on.api.counts() == before
    assert _statuses(acme_on, account_id) == ([], [])


@pytest.mark.parametrize("change", ["contact", "key"])
def test_an_account_change_racing_the_operators_deactivation_is_refused(
    acme_on: Acme, change: str
) -> None:
    # The deactivation commits after the change read the account valid, before its first
    # write: on SQLite (which ignores SELECT … FOR UPDATE) the contact or the new key was
    # written onto the cut-off account, and the change answered as done.
    from cryptography.hazmat.primitives.asymmetric import ec
    from sqlalchemy import Connection, text

    acme_client = acme_on.client()
    account_id = _account_id(acme_on.register(acme_client))
    services = acme_on.api.services
    account = acme.find_account(services, account_id)

    def deactivate(connection: Connection) -> None:
        connection.execute(
            text("UPDATE acme_accounts SET status = 'deactivated' WHERE id = :id"),
            {"id": account_id},
        )

    def apply() -> None:
        if change == "contact":
            payload = {"contact": ["mailto:late@example.internal"]}
            acme.update_account(services, account, payload, "127.0.0.1")
        else:
            new_key = ec.generate_private_key(ec.SECP256R1()).public_key()
            acme.change_key(services, account, new_key, "127.0.0.1")

    writes = ("UPDATE acme_accounts", "INSERT INTO audit_events")
    with acme_on.api.concurrent_write(writes, deactivate) as fired:
        with pytest.raises(AcmeError) as info:
            apply()
    assert fired
    assert (info.value.acme_type, info.value.status) == ("unauthorized", 401), info.value
    with services.sessions() as session:
        row = session.get(AcmeAccount, account_id)
        assert row is not None
        assert (row.status, row.contact, row.thumbprint) == (
            "deactivated",
            account.contact,
            account.thumbprint,
        )


@pytest.mark.parametrize(
    ("meanwhile", "says"), [("invalid", "is invalid now"), ("valid", "was finalized already")]
)
def test_a_finalize_whose_order_changed_meanwhile_says_what_became_of_it(
    acme_on: Acme, meanwhile: str, says: str
) -> None:
    # Cancelled by a deactivation (or finalized by another request) after this finalize read
    # it ready: "was finalized already" was said of a cancelled order too.
    from cryptography import x509
    from sqlalchemy import Connection, text

    acme_client = acme_on.client()
    account_id = _account_id(acme_on.register(acme_client))
    order, csr_pem = acme_on.order(acme_client, [NAME])
    acme_on.answer(acme_client, order)
    deadline = time.monotonic() + 30
    while acme_client._post_as_get(order.uri).json()["status"] != "ready":
        assert time.monotonic() < deadline, "the order never became ready"
        time.sleep(0.1)
    services = acme_on.api.services
    account = acme.find_account(services, account_id)
    order_id = order.uri.rsplit("/", 1)[1]
    der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)

    def change(connection: Connection) -> None:
        connection.execute(
            text("UPDATE acme_orders SET status = :status WHERE id = :id"),
            {"status": meanwhile, "id": order_id},
        )

    before = acme_on.api.counts()
    with acme_on.api.concurrent_write(("INSERT INTO",), change) as fired:
        with pytest.raises(AcmeError) as info:
            acme.finalize_order(
                services,
                acme_on.settings,
                account,
                order_id,
                {"csr": jose.b64encode(der).decode()},
                "127.0.0.1",
            )
    assert fired
    assert (info.value.acme_type, info.value.detail) == (
        "orderNotReady",
        f"order {order_id} {says}",
    )
    assert acme_on.api.counts()["certificates"] == before["certificates"]


def test_a_new_order_waiting_on_a_deactivation_under_way_is_refused_once_it_commits(
    acme_on: Acme,
) -> None:
    # The operator's deactivation holds the account (PostgreSQL: its row; SQLite: the write
    # lock) when the new-order's transaction starts: the order waits, then sees the outcome.
    acme_client = acme_on.client()
    account_id = _account_id(acme_on.register(acme_client))
    services = acme_on.api.services
    account = acme.find_account(services, account_id)
    payload = {"identifiers": [{"type": "dns", "value": NAME}]}
    outcome: list[object] = []

    def order() -> None:
        try:
            outcome.append(acme.new_order(services, acme_on.settings, account, payload, "x"))
        except AcmeError as exc:
            outcome.append(exc)

    with services.sessions.begin() as session:
        lock_for_write(session, 0)  # SQLite: the write lock, as the API's writer holds it
        row = session.get(AcmeAccount, account_id, with_for_update=True)
        assert row is not None
        waiting = threading.Thread(target=order)
        waiting.start()
        time.sleep(1)
        assert waiting.is_alive()  # waiting for the deactivation
        assert not outcome
        cut_off(session, row, services.clock())
    waiting.join(30)
    (refused,) = outcome
    assert isinstance(refused, AcmeError), refused
    assert refused.acme_type == "unauthorized", refused
    assert _statuses(acme_on, account_id) == ([], [])


def test_a_later_key_compromise_gives_the_accounts_revoked_certificates_that_reason(
    acme_on: Acme, tmp_path: Path
) -> None:
    # Deactivated with its certificates revoked as cessationOfOperation, then the operator
    # learns their keys leaked: asked again with keyCompromise, the reason becomes that one,
    # as POST /api/v1/certificates/{id}/revoke would make it (README: revoking certificates).
    api = acme_on.api
    acme_client = acme_on.client()
    account_id = _account_id(acme_on.register(acme_client))
    _, leaf = acme_on.issue(acme_client, [NAME])
    url = f"{PATH}/{account_id}/deactivate"
    ceased = {"revoke_certificates": True, "reason": "cessationOfOperation"}
    first = api.post(url, api.admin_key, json=ceased)
    (cert_id,) = first.json()["revoked_certificates"]
    body = {"revoke_certificates": True, "reason": "keyCompromise"}
    r = api.post(url, api.admin_key, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["revoked_certificates"] == [cert_id]
    shown = api.get(f"/api/v1/certificates/{cert_id}", api.admin_key).json()
    assert (shown["status"], shown["revocation_reason"]) == ("revoked", "keyCompromise")
    assert api.openssl_crl_serials(ISSUER, tmp_path) == {leaf.serial_number}
    # Asked a third time: nothing left to change.
    again = api.post(url, api.admin_key, json=body)
    assert again.json()["revoked_certificates"] == []


def test_a_certificate_the_deactivation_could_not_revoke_is_named_with_why(
    acme_on: Acme, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A keyCompromise revocation refuses a key with more certificates than it takes (a 409,
    # nothing revoked): the deactivation skipped that Conflict as "revoked meanwhile", and
    # the certificate of a leaked key stayed valid, missing from the answer with nothing said.
    monkeypatch.setattr(certificates, "_MAX_SAME_KEY", 3)
    api = acme_on.api
    acme_client = acme_on.client()
    account_id = _account_id(acme_on.register(acme_client))
    acme_on.issue(acme_client, [NAME])
    _, fine_leaf = acme_on.issue(acme_client, [NAME])
    ours = api.get("/api/v1/certificates", api.admin_key, params={"issuer": ISSUER}).json()
    busy, fine = sorted(c["id"] for c in ours["items"])
    renewals = [busy]
    for _ in range(3):  # renewals keep the CSR's key: four certificates of it
        r = api.post(f"/api/v1/certificates/{renewals[-1]}/renew", api.admin_key)
        assert r.status_code in (200, 201), r.text
        renewals.append(r.json()["id"])

    body = {"revoke_certificates": True, "reason": "keyCompromise"}
    r = api.post(f"{PATH}/{account_id}/deactivate", api.admin_key, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "deactivated"  # done all the same
    assert r.json()["revoked_certificates"] == [fine]
    assert r.json()["not_revoked"] == [
        {
            "id": busy,
            "detail": f"certificate {busy}: more than 3 certificates certify its key (renewals "
            "that kept it), and a keyCompromise revocation takes at most 3: nothing was revoked",
        }
    ]
    for cert_id in renewals:
        assert api.get(f"/api/v1/certificates/{cert_id}", api.admin_key).json()["status"] != (
            "revoked"
        )
    assert api.openssl_crl_serials(ISSUER, tmp_path) == {fine_leaf.serial_number}


def test_a_certificate_revoked_meanwhile_by_another_caller_is_not_reported(
    acme_on: Acme, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = acme_on.api
    acme_client = acme_on.client()
    account_id = _account_id(acme_on.register(acme_client))
    acme_on.issue(acme_client, [NAME])
    real = acme_accounts.revoke_certificate

    def raced(services: Services, caller: Any, cert_id: str, reason: str | None) -> Any:
        # Another caller's revocation commits between the listing and this one's.
        real(services, caller, cert_id, reason)
        return real(services, caller, cert_id, reason)

    monkeypatch.setattr(acme_accounts, "revoke_certificate", raced)
    body = {"revoke_certificates": True, "reason": "superseded"}
    r = api.post(f"{PATH}/{account_id}/deactivate", api.admin_key, json=body)
    assert r.status_code == 200, r.text
    assert (r.json()["revoked_certificates"], r.json()["not_revoked"]) == ([], [])
