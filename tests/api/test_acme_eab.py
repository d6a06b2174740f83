"""ACME External Account Binding (RFC 8555 7.3.4) with certbot's ``acme`` library, on both stores.

Keys are minted over the API (``/api/v1/acme/eab-keys``); the client library makes the binding
(``messages.ExternalAccountBinding.from_data``), or a test makes a broken one by hand.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import josepy as jose
import pytest
import requests
from acme import client, errors, messages
from cryptography.hazmat.primitives.asymmetric import ec

from certctl.api.app import create_app
from certctl.services.acme import AcmeSettings
from tests.api.conftest import Api, assert_problem
from tests.api.test_acme import ERR, ISSUER, NAME, Acme, Http01Server, serving

PATH = "/api/v1/acme/eab-keys"


@contextlib.contextmanager
def _acme(api: Api, *, required: bool) -> Iterator[Acme]:
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER, "common_name": "ACME CA"})
    assert r.status_code == 201, r.text
    http01 = Http01Server()
    settings = AcmeSettings(
        issuer_id=ISSUER,
        validity=timedelta(days=90),
        http_01_port=http01.port,
        external_account_required=required,
    )
    try:
        with serving(create_app(api.services, acme=settings)) as base:
            yield Acme(api, base, http01, settings)
    finally:
        http01.close()


@pytest.fixture
def required(api: Api) -> Iterator[Acme]:
    with _acme(api, required=True) as acme_on:
        yield acme_on


@pytest.fixture
def optional(api: Api) -> Iterator[Acme]:
    with _acme(api, required=False) as acme_on:
        yield acme_on


def _mint(api: Api, name: str = "ci", **extra: Any) -> dict[str, Any]:
    r = api.post(PATH, api.admin_key, json={"name": name, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _key(api: Api, kid: str) -> dict[str, Any]:
    (row,) = [k for k in api.get(PATH, api.admin_key).json()["items"] if k["id"] == kid]
    return dict(row)


def _new_client(acme_on: Acme) -> client.ClientV2:
    return acme_on.client(jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())))


def _register(acme_client: client.ClientV2, eab: dict[str, Any] | None) -> Any:
    return acme_client.new_account(
        messages.NewRegistration.from_data(
            email="ops@example.internal", terms_of_service_agreed=True, external_account_binding=eab
        )
    )


def _binding(acme_client: client.ClientV2, kid: str, hmac_key: str, alg: str = "HS256") -> Any:
    return messages.ExternalAccountBinding.from_data(
        acme_client.net.key.public_key(), kid, hmac_key, acme_client.directory, alg
    )


def _refused(acme_client: client.ClientV2, eab: Any, acme_type: str) -> str:
    with pytest.raises(messages.Error) as info:
        _register(acme_client, eab)
    assert info.value.typ == ERR + acme_type, info.value
    return str(info.value.detail)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(
    acme_client: client.ClientV2,
    kid: str,
    hmac_key: str,
    *,
    url: str | None = None,
    jwk: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
) -> dict[str, str]:
    """A binding made without the library, to break one part of it at a time."""
    protected = {"alg": "HS256", "kid": kid, "url": url or acme_client.directory["newAccount"]}
    protected.update(header or {})
    payload = jwk if jwk is not None else acme_client.net.key.public_key().to_partial_json()
    prot, body = _b64(json.dumps(protected).encode()), _b64(json.dumps(payload).encode())
    secret = base64.urlsafe_b64decode(hmac_key + "=" * (-len(hmac_key) % 4))
    mac = hmac.new(secret, f"{prot}.{body}".encode(), hashlib.sha256).digest()
    return {"protected": prot, "payload": body, "signature": _b64(mac)}


def test_a_bound_account_gets_a_certificate_and_names_the_keys_minter(
    required: Acme, caplog: pytest.LogCaptureFixture
) -> None:
    api = required.api
    caplog.set_level(logging.DEBUG)
    directory = requests.get(required.directory_url, timeout=10).json()
    assert directory["meta"]["externalAccountRequired"] is True

    r = api.post(PATH, api.admin_key, json={"name": "ci runner"})
    assert r.status_code == 201, r.text
    minted = r.json()
    kid, hmac_key = minted["id"], minted["hmac_key"]
    assert r.headers["location"] == f"{PATH}/{kid}"
    assert set(minted) == {"id", "name", "hmac_key", "actor_id", "created_at", "expires_at"}
    assert len(base64.urlsafe_b64decode(hmac_key + "=")) == 32
    actor = minted["actor_id"]
    # Shown once: neither the list nor the key's own URL holds it.
    assert hmac_key not in api.get(PATH, api.admin_key).text
    assert hmac_key not in api.get(r.headers["location"], api.admin_key).text

    acme_client = _new_client(required)
    regr = _register(acme_client, _binding(acme_client, kid, hmac_key))
    account_id = regr.uri.rsplit("/", 1)[1]
    shown = _key(api, kid)
    assert (shown["account_id"], shown["revoked_at"]) == (account_id, None)
    assert shown["used_at"] is not None
    # The RFC's idempotent retry: the same account key and binding again is that account.
    acme_client.net.account = None  # as a client that lost the account URL: a jwk request
    # (the library tells an existing account, 200 + Location, by raising ConflictError).
    with pytest.raises(errors.ConflictError) as existing:
        _register(acme_client, _binding(acme_client, kid, hmac_key))
    assert existing.value.location == regr.uri
    acme_client.net.account = regr

    required.issue(acme_client, [NAME])
    (row,) = api.get("/api/v1/certificates", api.admin_key, params={"issuer": ISSUER}).json()[
        "items"
    ]
    assert row["created_by"] == f"acme:{account_id}"
    events = {(e["action"], e["actor"]): e for e in api.audit()}
    assert events[("acme.eab.create", actor)]["target"] == kid
    made = events[("acme.account.create", f"acme:{account_id}")]
    assert made["detail"].endswith(f"bound by EAB key {kid} of {actor}")
    assert hmac_key not in caplog.text
    assert hmac_key not in json.dumps(api.audit())


def test_the_same_binding_for_another_account_key_is_refused(required: Acme) -> None:
    api = required.api
    minted = _mint(api)
    first = _new_client(required)
    _register(first, _binding(first, minted["id"], minted["hmac_key"]))
    before = api.counts()
    other = _new_client(required)
    detail = _refused(other, _binding(other, minted["id"], minted["hmac_key"]), "unauthorized")
    assert "already bound" in detail
    assert api.counts() == {**before, "acme_nonces": api.counts()["acme_nonces"]}


def test_required_mode_refuses_an_account_without_a_binding(required: Acme) -> None:
    before = required.api.counts()
    detail = _refused(_new_client(required), None, "externalAccountRequired")
    assert "External Account Binding" in detail
    after = required.api.counts()
    assert after == {**before, "acme_nonces": after["acme_nonces"]}


def test_each_bad_binding_is_refused_with_its_acme_error_and_changes_nothing(
    required: Acme,
) -> None:
    api = required.api
    minted = _mint(api)
    kid, hmac_key = minted["id"], minted["hmac_key"]
    revoked = _mint(api, "gone")
    r = api.request("DELETE", f"{PATH}/{revoked['id']}", api.admin_key)
    assert r.status_code == 200, r.text
    assert r.json()["revoked_at"]
    expiring = _mint(api, "soon", expires_at=(api.clock.now + timedelta(hours=1)).isoformat())
    other_secret = _b64(b"\x01" * 32)
    stranger = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())).public_key()

    cases: list[tuple[str, Any, str]] = []
    c = _new_client(required)
    cases.append(("garbled: not a JWS", "not a binding", "malformed"))
    cases.append(
        ("garbled: bad base64", {"protected": "!!", "payload": "x", "signature": "y"}, "malformed")
    )
    cases.append(("wrong kid", _binding(c, "0" * 24, hmac_key), "unauthorized"))
    # PostgreSQL's text holds no NUL: looked up, the kid was a 500 there (unauthorized here).
    cases.append(("kid with a NUL", _hand_made(c, kid + "\x00", hmac_key), "unauthorized"))
    cases.append(("kid too long", _hand_made(c, kid * 300, hmac_key), "unauthorized"))
    cases.append(("wrong HMAC key", _binding(c, kid, other_secret), "unauthorized"))
    cases.append(
        (
            "wrong url",
            _hand_made(c, kid, hmac_key, url=required.base + "/acme/new-order"),
            "unauthorized",
        )
    )
    cases.append(
        (
            "another key as payload",
            _hand_made(c, kid, hmac_key, jwk=stranger.to_partial_json()),
            "unauthorized",
        )
    )
    cases.append(
        ("a nonce in the header", _hand_made(c, kid, hmac_key, header={"nonce": "x"}), "malformed")
    )
    cases.append(
        (
            "alg none",
            _hand_made(c, kid, hmac_key, header={"alg": "none"}),
            "badSignatureAlgorithm",
        )
    )
    cases.append(("revoked", _binding(c, revoked["id"], revoked["hmac_key"]), "unauthorized"))
    before = api.counts()
    free = _key(api, kid)
    for what, eab, acme_type in cases:
        _refused(c, eab, acme_type)
        after = api.counts()
        assert after == {**before, "acme_nonces": after["acme_nonces"]}, what
    assert _key(api, kid) == free

    api.clock.advance(hours=2)
    detail = _refused(c, _binding(c, expiring["id"], expiring["hmac_key"]), "unauthorized")
    assert "expired" in detail
    # The MAC is checked first: a wrong key says nothing of another key's state.
    detail = _refused(c, _binding(c, revoked["id"], other_secret), "unauthorized")
    assert "MAC" in detail
    assert "revoked" not in detail
    assert _key(api, kid)["account_id"] is None
    # And the good binding still works after all this.
    regr = _register(c, _binding(c, kid, hmac_key, "HS512"))
    assert _key(api, kid)["account_id"] == regr.uri.rsplit("/", 1)[1]


def test_revoking_a_key_deactivates_the_account_it_bound(required: Acme) -> None:
    api = required.api
    minted = _mint(api)
    acme_client = _new_client(required)
    regr = _register(acme_client, _binding(acme_client, minted["id"], minted["hmac_key"]))
    account_id = regr.uri.rsplit("/", 1)[1]
    order, _ = required.order(acme_client, [NAME])
    assert order.body.status == messages.STATUS_PENDING
    account = api.get(f"/api/v1/acme/accounts/{account_id}", api.admin_key).json()
    assert (account["eab_key_id"], account["status"]) == (minted["id"], "valid")
    other = _new_client(required)  # bound by another key: left alone
    another = _mint(api, "other")
    _register(other, _binding(other, another["id"], another["hmac_key"]))

    r = api.request("DELETE", f"{PATH}/{minted['id']}", api.admin_key)
    assert r.status_code == 200, r.text
    assert r.json()["revoked_at"] is not None
    assert r.json()["account_id"] == account_id
    assert "hmac_key" not in r.json()
    account = api.get(f"/api/v1/acme/accounts/{account_id}", api.admin_key).json()
    assert (account["status"], account["deactivated_at"]) == (
        "deactivated",
        api.clock().isoformat(),
    )
    events = [(e["action"], e["target"], e["actor"], e["detail"]) for e in api.audit()]
    assert ("acme.eab.revoke", minted["id"], "admin", "") in events
    assert (
        "acme.account.deactivate",
        account_id,
        "admin",
        f"its EAB key {minted['id']} was revoked; "
        "1 pending authorization(s) deactivated, 1 order(s) invalid",
    ) in events
    # The account's next request is refused, and its key makes no account again.
    with pytest.raises(messages.Error) as info:
        required.order(acme_client, [NAME])
    assert info.value.typ == ERR + "unauthorized", info.value
    acme_client.net.account = None
    assert "deactivated" in _refused(acme_client, None, "unauthorized")
    order, _ = required.order(other, [NAME])
    assert order.body.status == messages.STATUS_PENDING

    # Revoked again: the same answer, the account is deactivated already (no second event).
    again = api.request("DELETE", f"{PATH}/{minted['id']}", api.admin_key)
    assert again.status_code == 200, again.text
    assert again.json()["revoked_at"] == r.json()["revoked_at"]
    deactivations = [e for e in api.audit() if e["action"] == "acme.account.deactivate"]
    assert len(deactivations) == 1
    assert_problem(api.request("DELETE", f"{PATH}/nosuchkey", api.admin_key), 404)


def test_optional_mode_takes_accounts_without_a_binding_and_checks_one_given(
    optional: Acme,
) -> None:
    api = optional.api
    directory = requests.get(optional.directory_url, timeout=10).json()
    assert directory["meta"]["externalAccountRequired"] is False
    plain = _new_client(optional)
    _register(plain, None)
    minted = _mint(api)
    bound = _new_client(optional)
    before = api.counts()
    _refused(bound, _binding(bound, minted["id"], _b64(b"\x02" * 32)), "unauthorized")
    after = api.counts()
    assert after == {**before, "acme_nonces": after["acme_nonces"]}
    regr = _register(bound, _binding(bound, minted["id"], minted["hmac_key"], "HS384"))
    assert _key(api, minted["id"])["account_id"] == regr.uri.rsplit("/", 1)[1]


def test_minting_needs_a_name_and_a_future_expiry(api: Api) -> None:
    before = api.counts()
    assert_problem(api.post(PATH, api.admin_key, json={}), 400)
    past = (api.clock.now - timedelta(seconds=1)).isoformat()
    assert_problem(api.post(PATH, api.admin_key, json={"name": "x", "expires_at": past}), 400)
    naive = "2099-01-01T00:00:00"
    assert_problem(api.post(PATH, api.admin_key, json={"name": "x", "expires_at": naive}), 400)
    assert api.counts() == before


def test_concurrent_uses_of_one_key_by_two_account_keys_bind_one_account(required: Acme) -> None:
    api = required.api
    minted = _mint(api)
    clients = [_new_client(required) for _ in range(4)]
    bindings = [_binding(c, minted["id"], minted["hmac_key"]) for c in clients]
    before = api.counts()
    outcomes: list[str] = []

    def use(index: int) -> None:
        try:
            _register(clients[index], bindings[index])
            outcomes.append("bound")
        except messages.Error as exc:
            outcomes.append(str(exc.typ))

    threads = [threading.Thread(target=use, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["bound"] + [ERR + "unauthorized"] * 3, outcomes
    after = api.counts()
    assert after["acme_accounts"] == before["acme_accounts"] + 1
    assert _key(api, minted["id"])["account_id"] is not None


def test_required_mode_refuses_accounts_made_without_a_binding_until_one_binds_them(
    optional: Acme,
) -> None:
    """Turning the setting on cuts off the free accounts made before; a binding readmits one."""
    api = optional.api
    old = _new_client(optional)
    regr = _register(old, None)
    account_id = regr.uri.rsplit("/", 1)[1]
    settings = dataclasses.replace(optional.settings, external_account_required=True)
    with serving(create_app(api.services, acme=settings)) as base:
        required = Acme(api, base, optional.http01, settings)
        again = required.client(old.net.key)
        # The client kept its account, as certbot and lego do (this server's URL for it).
        kept = regr.update(uri=regr.uri.replace(optional.base, base))
        again.net.account = kept
        with pytest.raises(messages.Error) as info:
            required.order(again, [NAME])
        assert info.value.typ == ERR + "unauthorized", info.value
        assert "External Account Binding" in str(info.value.detail)
        again.net.account = None  # new-account is signed with the key (jwk), not the kid
        before = api.counts()
        assert "External Account Binding" in _refused(again, None, "externalAccountRequired")
        assert api.counts() == {**before, "acme_nonces": api.counts()["acme_nonces"]}
        minted = _mint(api)
        with pytest.raises(errors.ConflictError) as conflict:  # the library's "it exists"
            _register(again, _binding(again, minted["id"], minted["hmac_key"]))
        assert conflict.value.location == kept.uri
        again.net.account = kept
        assert _key(api, minted["id"])["account_id"] == account_id
        order, _ = required.order(again, [NAME])
        assert order.body.status == messages.STATUS_PENDING
        events = [(e["action"], e["target"], e["detail"]) for e in api.audit()]
        assert (
            "acme.account.bind",
            account_id,
            f"bound by EAB key {minted['id']} of {_key(api, minted['id'])['actor_id']}",
        ) in events
