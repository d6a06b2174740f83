"""ACME finalize refuses a key revoked for keyCompromise with badPublicKey (RFC 8555 6.7).

As Let's Encrypt's Boulder refuses a key of its blockedKeys table; certbot's ``acme`` library
as the client, on both stores. The order stays ready, as for a bad CSR: finalized again with
a CSR of a new key, it is issued.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import josepy as jose
import pytest
from acme import client, crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certctl.pki import format_serial
from tests.api.test_acme import ERR, NAME, Acme, _business, _poll_authz
from tests.api.test_acme import acme_on as acme_on  # the fixture, shared


def _pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _ready_order(acme_on: Acme, acme_client: client.ClientV2) -> messages.OrderResource:
    order, _ = acme_on.order(acme_client, [NAME])
    acme_on.answer(acme_client, order)
    _poll_authz(acme_client, order.authorizations[0])
    return order


def _finalize(acme_client: client.ClientV2, order: messages.OrderResource, key: Any) -> Any:
    with_key = order.update(csr_pem=crypto_util.make_csr(_pem(key), [NAME]))
    return acme_client.finalize_order(with_key, datetime.now() + timedelta(seconds=30))


def _issue_and_revoke(acme_on: Acme, acme_client: client.ClientV2, key: Any, reason: int) -> None:
    """Issue a certificate of ``key``, then revoke it with a request that ``key`` signs."""
    done = _finalize(acme_client, _ready_order(acme_on, acme_client), key)
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    holder = acme_on.client(jose.JWKRSA(key=key), alg=jose.RS256)
    holder.net.account = None  # the certificate's key signs (jwk), not an account
    holder.revoke(leaf, reason)


def test_finalize_with_a_key_revoked_for_key_compromise_is_a_bad_public_key(
    acme_on: Acme,
) -> None:
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    key = rsa.generate_private_key(65537, 2048)
    _issue_and_revoke(acme_on, acme_client, key, 1)  # keyCompromise

    # Another account, a new order for the name: the compromised key is refused at finalize.
    other = acme_on.client()
    acme_on.register(other)
    order = _ready_order(acme_on, other)
    before = acme_on.api.counts()
    with pytest.raises(messages.Error) as info:
        _finalize(other, order, key)
    assert info.value.typ == ERR + "badPublicKey"
    assert info.value.detail.startswith(
        "the public key is blocked: a certificate of this key was revoked for keyCompromise on "
    )
    assert _business(acme_on.api.counts()) == _business(before)
    assert other._post_as_get(order.uri).json()["status"] == "ready"
    # A new key finalizes the same order.
    done = _finalize(other, order, ec.generate_private_key(ec.SECP256R1()))
    assert done.body.status == messages.STATUS_VALID


def test_a_key_revoked_for_another_reason_is_certified_again(acme_on: Acme) -> None:
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    key = rsa.generate_private_key(65537, 2048)
    _issue_and_revoke(acme_on, acme_client, key, 4)  # superseded
    done = _finalize(acme_client, _ready_order(acme_on, acme_client), key)
    assert done.body.status == messages.STATUS_VALID


def test_an_operators_deactivation_revoking_for_key_compromise_blocks_the_keys(
    acme_on: Acme,
) -> None:
    api = acme_on.api
    holder = acme_on.client()
    regr = acme_on.register(holder)
    key = ec.generate_private_key(ec.SECP256R1())
    _finalize(holder, _ready_order(acme_on, holder), key)
    url = f"/api/v1/acme/accounts/{regr.uri.rsplit('/', 1)[1]}/deactivate"
    body = {"revoke_certificates": True, "reason": "keyCompromise"}
    r = api.post(url, api.admin_key, json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["revoked_certificates"]) == 1
    other = acme_on.client()
    acme_on.register(other)
    order = _ready_order(acme_on, other)
    with pytest.raises(messages.Error) as info:
        _finalize(other, order, key)
    assert info.value.typ == ERR + "badPublicKey"
    assert other._post_as_get(order.uri).json()["status"] == "ready"


def test_key_compromise_takes_the_key_not_authorizations_for_the_names(acme_on: Acme) -> None:
    """An account holding authorizations for a certificate's names alone (RFC 8555 7.6: a new
    holder of the domain) may revoke it, but not for keyCompromise: that would block the key
    of another subscriber, whose other certificates of it are then refused (badPublicKey, a
    409 at renewal). badRevocationReason, as Let's Encrypt answers, and nothing changes; the
    ordering account, and a request signed by the key, still may.
    """
    owner = acme_on.client()
    acme_on.register(owner)
    key = ec.generate_private_key(ec.SECP256R1())
    done = _finalize(owner, _ready_order(acme_on, owner), key)
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    newcomer = acme_on.client()
    acme_on.register(newcomer)
    _ready_order(acme_on, newcomer)  # its authorization for the name is valid now
    before = acme_on.api.counts()
    with pytest.raises(messages.Error) as info:
        newcomer.revoke(leaf, 1)
    assert info.value.typ == ERR + "badRevocationReason"
    assert "sign the request with the certificate's key" in info.value.detail
    assert _business(acme_on.api.counts()) == _business(before)
    # The owner's other order still takes the key; the newcomer revokes for another reason.
    assert _finalize(owner, _ready_order(acme_on, owner), key).body.status == messages.STATUS_VALID
    newcomer.revoke(leaf, 5)  # cessationOfOperation
    api = acme_on.api
    listed = api.get("/api/v1/certificates", api.admin_key, params={"status": "revoked"}).json()
    assert [(c["serial"], c["revocation_reason"]) for c in listed["items"]] == [
        (format_serial(leaf.serial_number), "cessationOfOperation")
    ]
    # The ordering account may say its key was compromised: blocked from then on.
    owner.revoke(leaf, 1)
    with pytest.raises(messages.Error) as info:
        _finalize(owner, _ready_order(acme_on, owner), key)
    assert info.value.typ == ERR + "badPublicKey"
