"""The ACME endpoint (RFC 8555) against certbot's own ``acme`` client library, on both stores.

The app runs under uvicorn on a loopback port (plain HTTP, in a thread) so that a real client
library speaks to it, and http-01 is answered by a small real HTTP server on 127.0.0.1. ACME
certificates come from issuer ``acme-ca`` (a root of its own): ``localhost``, the name that
resolves to 127.0.0.1, is one of certctl's own server names, which its internal CA signs for
no ACME account (tested below).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import socket
import sqlite3
import string
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import josepy as jose
import pytest
import requests
import uvicorn
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import event

from certctl.api.app import create_app
from certctl.server.periodic import refresh_metrics
from certctl.services.acme import AcmeSettings
from certctl.services.context import Services
from certctl.store.db import create_store_engine, session_factory
from tests._tools import free_port, ok, run
from tests.api.conftest import Api

ISSUER = "acme-ca"
NAME = "localhost"
ERR = "urn:ietf:params:acme:error:"


# --- servers ------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(app: Any, port: int | None = None) -> Iterator[str]:
    """``app`` under uvicorn on ``port`` (a free one by default), in a thread; yields its URL."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", access_log=False, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


class Http01Server:
    """A tiny HTTP server on 127.0.0.1 answering ``/.well-known/acme-challenge/<token>``."""

    def __init__(self) -> None:
        self.answers: dict[str, bytes] = {}
        self.hits: list[str] = []
        self.peak = 0  # the most SLOW answers under way at once
        answers, hits = self.answers, self.hits
        slow = [0]
        lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                token = self.path.rsplit("/", 1)[-1]
                body = answers.get(token)
                if body is not None and body.startswith(b"REDIRECT "):
                    # A redirect to another path of this server (which may redirect again).
                    self.send_response(302)
                    self.send_header("Location", body[9:].decode())
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if body is not None and body.startswith(b"SLOW "):
                    with lock:
                        slow[0] += 1
                        server.peak = max(server.peak, slow[0])
                    time.sleep(2)  # a fetch still running when the client polls
                    with lock:
                        slow[0] -= 1
                    body = body[5:]
                if body is None or not self.path.startswith("/.well-known/acme-challenge/"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Acme:
    """The certctl app with ACME on, its base URL, and the http-01 responder."""

    api: Api
    base: str
    http01: Http01Server
    settings: AcmeSettings
    keys: list[Any] = field(default_factory=list)

    @property
    def directory_url(self) -> str:
        return f"{self.base}/acme/directory"

    def client(self, key: jose.JWK | None = None, alg: Any = jose.ES256) -> client.ClientV2:
        if key is None:
            key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        net = client.ClientNetwork(key, alg=alg, user_agent="certctl-tests")
        return client.ClientV2(client.ClientV2.get_directory(self.directory_url, net), net)

    def register(self, acme_client: client.ClientV2) -> messages.RegistrationResource:
        return acme_client.new_account(
            messages.NewRegistration.from_data(
                email="ops@example.internal", terms_of_service_agreed=True
            )
        )

    def order(
        self, acme_client: client.ClientV2, names: list[str]
    ) -> tuple[messages.OrderResource, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        csr = crypto_util.make_csr(key_pem, names)
        return acme_client.new_order(csr), csr

    def answer(self, acme_client: client.ClientV2, order: messages.OrderResource) -> None:
        """Serve each authorization's http-01 key authorization and answer the challenge."""
        key = acme_client.net.key
        for authz in order.authorizations:
            body = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
            response, validation = body.response_and_validation(key)
            self.http01.answers[body.chall.encode("token")] = validation.encode()
            acme_client.answer_challenge(body, response)

    def issue(
        self, acme_client: client.ClientV2, names: list[str]
    ) -> tuple[messages.OrderResource, x509.Certificate]:
        order, _ = self.order(acme_client, names)
        self.answer(acme_client, order)
        deadline = datetime.now() + timedelta(seconds=30)
        done = acme_client.poll_and_finalize(order, deadline)
        leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
        return done, leaf


def _issued(api: Api) -> float:
    """certctl_issuance_total{issuer=acme-ca,result=success} as the metrics route shows it."""
    text = api.get("/api/v1/metrics/prometheus", api.admin_key).text
    found = re.search(
        rf'^certctl_issuance_total{{issuer="{ISSUER}",result="success"}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


def _acme_app(api: Api, port: int, **settings: Any) -> Any:
    acme_settings = AcmeSettings(
        issuer_id=settings.pop("issuer_id", ISSUER),
        validity=settings.pop("validity", timedelta(days=90)),
        allowed_names=settings.pop("allowed_names", ()),
        http_01_port=port,
        **settings,  # dns_resolvers ...
    )
    return create_app(api.services, acme=acme_settings), acme_settings


@pytest.fixture
def acme_on(api: Api) -> Iterator[Acme]:
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER, "common_name": "ACME CA"})
    assert r.status_code == 201, r.text
    http01 = Http01Server()
    app, settings = _acme_app(api, http01.port)
    try:
        with serving(app) as base:
            yield Acme(api, base, http01, settings)
    finally:
        http01.close()


# --- the flow -----------------------------------------------------------------------------


def test_certbot_acme_library_gets_a_certificate_listed_counted_audited_and_revocable(
    acme_on: Acme, tmp_path: Path
) -> None:
    api = acme_on.api
    acme_client = acme_on.client()
    regr = acme_on.register(acme_client)
    account_id = regr.uri.rsplit("/", 1)[1]
    assert regr.uri == f"{acme_on.base}/acme/account/{account_id}"
    assert regr.body.status == "valid"
    assert regr.body.contact == ("mailto:ops@example.internal",)
    # The same key again: 200 and the same account (onlyReturnExisting too).
    again = acme_client.query_registration(regr)
    assert again.uri == regr.uri

    issued_before = _issued(api)
    order, leaf = acme_on.issue(acme_client, [NAME])
    assert order.body.status == messages.STATUS_VALID
    assert acme_on.http01.hits, "the server never fetched the token"
    # A real chain: openssl verifies the leaf against the issuer's certificate.
    ca = tmp_path / "ca.pem"
    ca.write_text(api.get(f"/api/v1/issuers/{ISSUER}/ca.pem").text)
    cert_file = tmp_path / "leaf.pem"
    cert_file.write_text(order.fullchain_pem)
    assert "OK" in ok(run("openssl", "verify", "-CAfile", ca, cert_file)).stdout
    # acme-ca is a root: the chain certbot needs (two certificates at least) ends with it.
    chain = x509.load_pem_x509_certificates(order.fullchain_pem.encode())
    assert [c.subject.rfc4514_string() for c in chain[1:]] == ["CN=ACME CA"]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [NAME]

    # An ordinary certificate of acme-ca: listed (made by acme:<account>), counted, audited.
    listed = api.get("/api/v1/certificates", api.admin_key, params={"issuer": ISSUER}).json()
    (row,) = listed["items"]
    assert row["created_by"] == f"acme:{account_id}"
    assert row["profile"] == "server"
    assert int(row["serial"].replace(":", ""), 16) == leaf.serial_number
    assert _issued(api) == issued_before + 1  # the counter is the process's: a difference
    actions = [(e["action"], e["actor"]) for e in api.audit() if e["actor"] == f"acme:{account_id}"]
    for action in ("acme.account.create", "acme.order.create", "acme.challenge.validate"):
        assert (action, f"acme:{account_id}") in actions, actions
    assert ("certificate.issue", f"acme:{account_id}") in actions

    # Revoked through ACME by its account: on the issuer's CRL, as the API's would be.
    acme_client.revoke(leaf, 4)
    assert leaf.serial_number in api.openssl_crl_serials(ISSUER, tmp_path)
    shown = api.get(f"/api/v1/certificates/{row['id']}", api.admin_key).json()
    assert (shown["status"], shown["revocation_reason"]) == ("revoked", "superseded")
    assert ("certificate.revoke", f"acme:{account_id}") in [
        (e["action"], e["actor"]) for e in api.audit()
    ]
    with pytest.raises(errors.Error) as info:
        acme_client.revoke(leaf, 4)
    assert isinstance(info.value, messages.Error)
    assert info.value.typ == ERR + "alreadyRevoked"


def test_a_certificate_is_revoked_by_a_request_signed_with_its_own_key(acme_on: Acme) -> None:
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, _ = acme_on.order(acme_client, [NAME])
    acme_on.answer(acme_client, order)
    # Finalize with a CSR of a known key, then revoke with that key as the JWS key (jwk).
    key = rsa.generate_private_key(65537, 2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    order = order.update(csr_pem=crypto_util.make_csr(pem, [NAME]))
    done = acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    stranger = acme_on.client(jose.JWKRSA(key=key), alg=jose.RS256)
    # Not as an account (no kid): the certificate's key signs the request.
    stranger.net.account = None
    stranger.revoke(leaf, 1)
    api = acme_on.api
    listed = api.get("/api/v1/certificates", api.admin_key, params={"issuer": ISSUER}).json()
    assert [(c["status"], c["revocation_reason"]) for c in listed["items"]] == [
        ("revoked", "keyCompromise")
    ]


def test_another_accounts_certificate_is_not_revoked(acme_on: Acme) -> None:
    owner = acme_on.client()
    acme_on.register(owner)
    _, leaf = acme_on.issue(owner, [NAME])
    other = acme_on.client()
    acme_on.register(other)
    before = acme_on.api.counts()
    with pytest.raises(messages.Error) as info:
        other.revoke(leaf, 0)
    assert (info.value.typ, "unauthorized") == (ERR + "unauthorized", "unauthorized")
    assert _business(acme_on.api.counts()) == _business(before)


def test_an_account_holding_valid_authorizations_for_every_name_revokes(
    acme_on: Acme, tmp_path: Path
) -> None:
    # RFC 8555 7.6: besides the account that ordered it, one that holds authorizations for
    # all of the certificate's names (a lost account key, a new machine) may revoke it.
    owner = acme_on.client()
    acme_on.register(owner)
    _, leaf = acme_on.issue(owner, [NAME])
    other = acme_on.client()
    acme_on.register(other)
    order, _ = acme_on.order(other, [NAME])
    acme_on.answer(other, order)
    assert _poll_authz(other, order.authorizations[0]).body.status == messages.STATUS_VALID
    other.revoke(leaf, 5)  # cessationOfOperation: keyCompromise takes the key (blocked keys)
    assert leaf.serial_number in acme_on.api.openssl_crl_serials(ISSUER, tmp_path)


def test_authorizations_do_not_revoke_a_certificate_the_api_issued(acme_on: Acme) -> None:
    # An account proving http-01 for a name may revoke ACME's certificates for it, not one an
    # operator issued through the API (that needs cert.revoke).
    api = acme_on.api
    issued = api.issue(issuer=ISSUER, common_name=NAME)
    leaf = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    other = acme_on.client()
    acme_on.register(other)
    order, _ = acme_on.order(other, [NAME])
    acme_on.answer(other, order)
    assert _poll_authz(other, order.authorizations[0]).body.status == messages.STATUS_VALID
    with pytest.raises(messages.Error) as info:
        other.revoke(leaf, 1)
    assert info.value.typ == ERR + "unauthorized"
    assert "not issued through ACME" in str(info.value.detail)
    shown = api.get(f"/api/v1/certificates/{issued['id']}", api.admin_key).json()
    assert shown["status"] == "active"


def test_an_intermediate_issuers_chain_verifies_and_a_revoked_or_expired_one_is_said_at_finalize(
    api: Api, tmp_path: Path
) -> None:
    for body in (
        {"id": "acme-root", "common_name": "ACME Root"},
        {"id": ISSUER, "common_name": "ACME Sub", "parent": "acme-root"},
        {"id": "short", "common_name": "Short Sub", "parent": "acme-root", "validity": "1D"},
    ):
        r = api.post("/api/v1/issuers", api.admin_key, json=body)
        assert r.status_code == 201, r.text
    root = tmp_path / "root.pem"
    root.write_text(api.get("/api/v1/issuers/acme-root/ca.pem").text)
    http01 = Http01Server()
    try:
        app, settings = _acme_app(api, http01.port)
        with serving(app) as base:
            acme_on = Acme(api, base, http01, settings)
            acme_client = acme_on.client()
            acme_on.register(acme_client)
            done, _ = acme_on.issue(acme_client, [NAME])
            # Leaf and intermediate, not the root: what a TLS server sends.
            chain = x509.load_pem_x509_certificates(done.fullchain_pem.encode())
            assert [c.subject.rfc4514_string() for c in chain] == ["", "CN=ACME Sub"]
            full = tmp_path / "fullchain.pem"
            full.write_text(done.fullchain_pem)
            ok(run("openssl", "verify", "-CAfile", root, "-untrusted", full, full))
            refresh_metrics(api.services)
            scraped = api.get("/api/v1/metrics/prometheus", api.admin_key).text
            assert f'certctl_certificates{{issuer="{ISSUER}",status="active"}} 1.0' in scraped

            r = api.post(
                f"/api/v1/issuers/{ISSUER}/revoke",
                api.admin_key,
                json={"reason": "cessationOfOperation"},
            )
            assert r.status_code == 200, r.text
            order, _ = acme_on.order(acme_client, [NAME])
            acme_on.answer(acme_client, order)
            _poll_authz(acme_client, order.authorizations[0])
            before = api.counts()
            with pytest.raises(messages.Error) as info:
                acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=10))
            assert info.value.typ == ERR + "serverInternal"
            assert f"issuer {ISSUER} was revoked" in str(info.value.detail)
            assert api.counts()["certificates"] == before["certificates"]
            # Nothing the client did wrong: the order stays ready for another try.
            assert acme_client._post_as_get(order.uri).json()["status"] == "ready"

        api.clock.advance(days=2)  # "short" has expired
        app, settings = _acme_app(api, http01.port, issuer_id="short")
        with serving(app) as base:
            acme_on = Acme(api, base, http01, settings)
            acme_client = acme_on.client()
            acme_on.register(acme_client)
            order, _ = acme_on.order(acme_client, [NAME])
            acme_on.answer(acme_client, order)
            _poll_authz(acme_client, order.authorizations[0])
            with pytest.raises(messages.Error) as info:
                acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=10))
            assert info.value.typ == ERR + "serverInternal"
            assert "short" in str(info.value.detail)
            assert "expire" in str(info.value.detail)
    finally:
        http01.close()


def test_the_directory_names_absolute_urls_and_new_nonce_answers_head_and_get(
    acme_on: Acme,
) -> None:
    r = requests.get(acme_on.directory_url, timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert doc["newNonce"] == f"{acme_on.base}/acme/new-nonce"
    assert doc["keyChange"] == f"{acme_on.base}/acme/key-change"
    assert doc["meta"] == {"externalAccountRequired": False}
    assert r.headers["link"] == f'<{acme_on.base}/acme/directory>;rel="index"'
    head = requests.head(doc["newNonce"], timeout=10)
    get = requests.get(doc["newNonce"], timeout=10)
    assert (head.status_code, get.status_code) == (200, 204)
    for answer in (head, get):
        assert answer.headers["cache-control"] == "no-store"
        assert len(answer.headers["replay-nonce"]) >= 22
    assert head.headers["replay-nonce"] != get.headers["replay-nonce"]


def test_an_unknown_acme_path_or_method_is_an_acme_problem_with_a_nonce(acme_on: Acme) -> None:
    # RFC 8555 6.5: every answer carries a fresh nonce, so a client retrying after any error
    # (a typo'd resource, GET on a POST-only one) needs no extra new-nonce round trip.
    unknown = requests.post(f"{acme_on.base}/acme/no-such-thing", timeout=10)
    _assert_acme_problem(unknown, 404, "malformed")
    get = requests.get(f"{acme_on.base}/acme/order/abc", timeout=10)
    body = _assert_acme_problem(get, 405, "malformed")
    assert get.headers["allow"] == "POST"
    assert "POST-as-GET" in body["detail"]
    post = requests.post(f"{acme_on.base}/acme/directory", timeout=10)
    _assert_acme_problem(post, 405, "malformed")
    assert post.headers["allow"] == "GET, HEAD"
    nul = requests.post(f"{acme_on.base}/acme/order/a%00b", timeout=10)
    _assert_acme_problem(nul, 400, "malformed")
    assert len({r.headers["replay-nonce"] for r in (unknown, get, post, nul)}) == 4
    # Outside /acme/ the API's own problems, without nonces.
    other = requests.get(f"{acme_on.base}/api/v1/no-such-thing", timeout=10)
    assert other.status_code == 404
    assert other.json()["type"] == "urn:certctl:problem:not-found"
    assert "replay-nonce" not in other.headers


def test_an_unexpected_failure_under_acme_is_server_internal_with_a_nonce(
    acme_on: Acme, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # It was the API's 500 (urn:certctl:problem type, no nonce): a client had to ask
    # new-nonce again before retrying, and saw no ACME error type (RFC 8555 6.5, 6.7).
    from certctl.services import acme

    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    raw = Raw(acme_on)
    counts = acme_on.api.counts()
    monkeypatch.setattr(acme, "create_account", bug)
    r = raw.post("new-account", raw.jws(f"{acme_on.base}/acme/new-account", {}))
    body = _assert_acme_problem(r, 500, "serverInternal")
    assert body["detail"] == "internal error; see the server log"
    assert [rec.name for rec in caplog.records if rec.exc_info] == ["certctl.api"]
    monkeypatch.undo()
    # The nonce the 500 gave is good for the retry.
    retry = raw.post(
        "new-account",
        raw.jws(
            f"{acme_on.base}/acme/new-account", {}, protected={"nonce": r.headers["replay-nonce"]}
        ),
    )
    assert retry.status_code == 201, retry.text
    assert acme_on.api.counts()["acme_accounts"] == counts["acme_accounts"] + 1


def test_the_directory_uses_public_url_when_set(api: Api) -> None:
    api.services.public_url = "https://certctl.example.internal:8443"
    app, _ = _acme_app(api, 80, issuer_id="default")
    with serving(app) as base:
        doc = requests.get(f"{base}/acme/directory", timeout=10).json()
    assert doc["newOrder"] == "https://certctl.example.internal:8443/acme/new-order"


def test_acme_off_answers_404_on_every_acme_path(api: Api) -> None:
    for method, path in (("GET", "/acme/directory"), ("POST", "/acme/new-account")):
        r = api.request(method, path)
        assert r.status_code == 404, (path, r.text)


def test_an_expired_order_is_invalid_when_read(acme_on: Acme) -> None:
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, _ = acme_on.order(acme_client, [NAME])
    acme_on.api.clock.advance(days=8)
    fetched = acme_client.poll(order.authorizations[0])[0]
    assert fetched.body.status == messages.STATUS_INVALID
    raw = acme_client._post_as_get(order.uri).json()
    assert raw["status"] == "invalid"


# --- http-01 failures ---------------------------------------------------------------------


def _poll_authz(acme_client: client.ClientV2, authz: messages.AuthorizationResource) -> Any:
    deadline = time.monotonic() + 30
    while True:
        current, _ = acme_client.poll(authz)
        if current.body.status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
            return current
        assert time.monotonic() < deadline, "validation never finished"
        time.sleep(0.2)


def test_a_wrong_key_authorization_makes_the_order_invalid(acme_on: Acme) -> None:
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, csr = acme_on.order(acme_client, [NAME])
    body = order.authorizations[0].body.challenges[0]
    response, _ = body.response_and_validation(acme_client.net.key)
    acme_on.http01.answers[body.chall.encode("token")] = b"not-the-key-authorization"
    acme_client.answer_challenge(body, response)
    authz = _poll_authz(acme_client, order.authorizations[0])
    assert authz.body.status == messages.STATUS_INVALID
    error = authz.body.challenges[0].error
    assert error.typ == ERR + "incorrectResponse"
    # Not quoted: only an answer shaped like a key authorization is (test_acme_security).
    assert "answered 25 bytes that are no key authorization" in error.detail
    raw = acme_client._post_as_get(order.uri).json()
    assert raw["status"] == "invalid"
    # Straight to the finalize URL: the library waits out an orderNotReady.
    request = messages.CertificateRequest(csr=x509.load_pem_x509_csr(csr))
    with pytest.raises(messages.Error) as info:
        acme_client._post(order.body.finalize, request)
    assert info.value.typ == ERR + "orderNotReady"


def test_nothing_listening_on_the_port_is_a_connection_error(api: Api) -> None:
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    app, settings = _acme_app(api, free_port())  # nothing listens there
    with serving(app) as base:
        acme_on = Acme(api, base, Http01Server(), settings)
        try:
            acme_client = acme_on.client()
            acme_on.register(acme_client)
            order, _ = acme_on.order(acme_client, [NAME])
            acme_on.answer(acme_client, order)
            authz = _poll_authz(acme_client, order.authorizations[0])
        finally:
            acme_on.http01.close()
    assert authz.body.status == messages.STATUS_INVALID
    assert authz.body.challenges[0].error.typ == ERR + "connection"


def test_a_validation_cut_short_by_a_restart_runs_again_when_polled(api: Api) -> None:
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    # Accepts connections (the kernel's backlog) and never answers: the fetch hangs.
    silent = socket.create_server(("127.0.0.1", 0))
    http01 = Http01Server()
    port = free_port()
    try:
        app, settings = _acme_app(api, silent.getsockname()[1])
        with serving(app, port) as base:
            acme_on = Acme(api, base, http01, settings)
            acme_client = acme_on.client()
            acme_on.register(acme_client)
            order, _ = acme_on.order(acme_client, [NAME])
            acme_on.answer(acme_client, order)
            authz = acme_client.poll(order.authorizations[0])[0]
            assert authz.body.challenges[0].status == messages.STATUS_PROCESSING
        # The server stopped mid-fetch; the same store served again, on the same URL.
        app, _ = _acme_app(api, http01.port)
        with serving(app, port):
            # A fetch may still be running elsewhere (another replica) for a minute.
            authz = acme_client.poll(order.authorizations[0])[0]
            assert authz.body.challenges[0].status == messages.STATUS_PROCESSING
            assert authz.body.status == messages.STATUS_PENDING
            api.clock.advance(minutes=2)
            authz = _poll_authz(acme_client, order.authorizations[0])
            assert authz.body.status == messages.STATUS_VALID, authz.body.challenges[0].error
            deadline = datetime.now() + timedelta(seconds=30)
            done = acme_client.poll_and_finalize(order, deadline)
    finally:
        silent.close()
        http01.close()
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [NAME]
    validations = [e for e in api.audit() if e["action"] == "acme.challenge.validate"]
    assert [e["outcome"] for e in validations] == ["success"]


# --- bad input: the right ACME error, the store unchanged ---------------------------------


def _business(counts: dict[str, int]) -> dict[str, int]:
    # A used nonce is recorded by every request whose signature verifies, refused or not.
    return {k: v for k, v in counts.items() if k != "acme_nonces"}


class Raw:
    """Hand-made JWS requests (josepy signs; certctl's own JWS code plays no part)."""

    def __init__(self, acme_on: Acme, key: jose.JWK | None = None) -> None:
        self.acme = acme_on
        self.key = key or jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        self.kid: str | None = None

    def nonce(self) -> str:
        r = requests.head(f"{self.acme.base}/acme/new-nonce", timeout=10)
        return r.headers["replay-nonce"]

    def jws(
        self,
        url: str,
        payload: Any,
        *,
        protected: dict[str, Any] | None = None,
        use_jwk: bool | None = None,
        alg: str = "ES256",
        tamper: bool = False,
    ) -> bytes:
        header: dict[str, Any] = {"alg": alg, "nonce": self.nonce(), "url": url}
        if use_jwk or (use_jwk is None and self.kid is None):
            header["jwk"] = self.key.public_key().to_partial_json()
        else:
            header["kid"] = self.kid
        header.update(protected or {})
        header = {k: v for k, v in header.items() if v is not None}
        raw = b"" if payload is None else json.dumps(payload).encode()
        prot = jose.b64encode(json.dumps(header).encode()).decode()
        body = jose.b64encode(raw).decode()
        signing_input = f"{prot}.{body}".encode()
        signature = jose.ES256.sign(self.key.key, signing_input) if alg == "ES256" else b""
        if tamper:
            body = jose.b64encode(
                json.dumps({"identifiers": [{"type": "dns", "value": "evil.example"}]}).encode()
            ).decode()
        return json.dumps(
            {"protected": prot, "payload": body, "signature": jose.b64encode(signature).decode()}
        ).encode()

    def post(self, path: str, body: bytes, content_type: str = "application/jose+json") -> Any:
        return requests.post(
            f"{self.acme.base}/acme/{path}",
            data=body,
            headers={"Content-Type": content_type},
            timeout=10,
        )

    def register(self) -> str:
        r = self.post("new-account", self.jws(f"{self.acme.base}/acme/new-account", {}))
        assert r.status_code == 201, r.text
        self.kid = r.headers["location"]
        return self.kid

    def new_order(self, names: list[str]) -> Any:
        url = f"{self.acme.base}/acme/new-order"
        payload = {"identifiers": [{"type": "dns", "value": n} for n in names]}
        return self.post("new-order", self.jws(url, payload))


def _assert_acme_problem(r: Any, status: int, acme_type: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert set(body) == {"type", "title", "status", "detail"}, body
    assert (body["type"], body["status"]) == (ERR + acme_type, status), body
    assert body["title"]
    assert body["detail"]
    assert r.headers["replay-nonce"]
    assert 'rel="index"' in r.headers["link"]
    return body


def test_each_bad_request_is_answered_with_its_acme_error_and_changes_nothing(
    acme_on: Acme,
) -> None:
    acme_on_allowed = acme_on
    raw = Raw(acme_on_allowed)
    raw.register()
    base = acme_on.base
    new_order = f"{base}/acme/new-order"
    order_body = {"identifiers": [{"type": "dns", "value": NAME}]}
    used = raw.nonce()
    first = raw.post("new-order", raw.jws(new_order, order_body, protected={"nonce": used}))
    assert first.status_code == 201, first.text
    ready_order = first.headers["location"]
    api = acme_on.api
    cases: list[tuple[str, bytes, str, int, str]] = [
        (
            "reused nonce",
            raw.jws(new_order, order_body, protected={"nonce": used}),
            "application/jose+json",
            400,
            "badNonce",
        ),
        (
            "no nonce",
            raw.jws(new_order, order_body, protected={"nonce": None}),
            "application/jose+json",
            400,
            "badNonce",
        ),
        (
            "wrong url",
            raw.jws(f"{base}/acme/new-account", order_body),
            "application/jose+json",
            401,
            "unauthorized",
        ),
        (
            "alg none",
            raw.jws(new_order, order_body, alg="none"),
            "application/jose+json",
            400,
            "badSignatureAlgorithm",
        ),
        (
            "alg HS256",
            raw.jws(new_order, order_body, alg="HS256"),
            "application/jose+json",
            400,
            "badSignatureAlgorithm",
        ),
        (
            "unknown kid",
            raw.jws(new_order, order_body, protected={"kid": f"{base}/acme/account/0000"}),
            "application/jose+json",
            400,
            "accountDoesNotExist",
        ),
        (
            # PostgreSQL's text holds no NUL: looked up, the account id was a 500 there.
            "kid with a NUL",
            raw.jws(new_order, order_body, protected={"kid": f"{base}/acme/account/0\x00"}),
            "application/jose+json",
            400,
            "accountDoesNotExist",
        ),
        (
            "tampered payload",
            raw.jws(new_order, order_body, tamper=True),
            "application/jose+json",
            400,
            "malformed",
        ),
        (
            "jwk and kid",
            raw.jws(
                new_order, order_body, protected={"jwk": raw.key.public_key().to_partial_json()}
            ),
            "application/jose+json",
            400,
            "malformed",
        ),
        (
            "jwk on new-order",
            raw.jws(new_order, order_body, use_jwk=True, protected={"kid": None}),
            "application/jose+json",
            400,
            "malformed",
        ),
        (
            "wrong content type",
            raw.jws(new_order, order_body),
            "application/json",
            415,
            "malformed",
        ),
        ("not a JWS", b'{"protected": 1}', "application/jose+json", 400, "malformed"),
        (
            "wildcard of one label",  # RFC 6125 6.4.3: two labels after "*." at least
            raw.jws(new_order, {"identifiers": [{"type": "dns", "value": "*.internal"}]}),
            "application/jose+json",
            400,
            "rejectedIdentifier",
        ),
        (
            "ip not as RFC 8738 writes it",
            raw.jws(new_order, {"identifiers": [{"type": "ip", "value": "127.000.0.1"}]}),
            "application/jose+json",
            400,
            "rejectedIdentifier",
        ),
        (
            "email",
            raw.jws(new_order, {"identifiers": [{"type": "email", "value": "a@b.c"}]}),
            "application/jose+json",
            400,
            "unsupportedIdentifier",
        ),
        (
            "no identifiers",
            raw.jws(new_order, {"identifiers": []}),
            "application/jose+json",
            400,
            "malformed",
        ),
        (
            "notAfter",
            raw.jws(new_order, {**order_body, "notAfter": "2030-01-01T00:00:00Z"}),
            "application/jose+json",
            400,
            "malformed",
        ),
        (
            "upper case",
            raw.jws(new_order, {"identifiers": [{"type": "dns", "value": "LocalHost"}]}),
            "application/jose+json",
            400,
            "rejectedIdentifier",
        ),
        (
            "finalize before ready",
            raw.jws(f"{ready_order}/finalize", {"csr": "AA"}),
            "application/jose+json",
            403,
            "orderNotReady",
        ),
        (
            "POST-as-GET with a payload",
            raw.jws(ready_order, {"x": 1}),
            "application/jose+json",
            400,
            "malformed",
        ),
    ]
    paths = {
        "finalize before ready": ready_order.split("/acme/", 1)[1] + "/finalize",
        "POST-as-GET with a payload": ready_order.split("/acme/", 1)[1],
    }
    before = api.counts()
    for label, body, content_type, status, acme_type in cases:
        r = raw.post(paths.get(label, "new-order"), body, content_type)
        detail = _assert_acme_problem(r, status, acme_type)["detail"]
        assert "Traceback" not in detail, label
        assert _business(api.counts()) == _business(before), label


def test_a_name_outside_allowed_names_is_a_rejected_identifier(api: Api) -> None:
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    names = ("*.example.internal", "localhost", "app.example.com")
    app, settings = _acme_app(api, 80, allowed_names=names)
    with serving(app) as base:
        raw = Raw(Acme(api, base, Http01Server(), settings))
        try:
            raw.register()
            before = api.counts()
            refused = raw.new_order(["web.example.com"])
            detail = _assert_acme_problem(refused, 400, "rejectedIdentifier")["detail"]
            assert "acme.allowed-names" in detail
            assert _business(api.counts()) == _business(before)
            # One label or more below the pattern, and the exact name, are allowed.
            assert raw.new_order(["a.b.example.internal", "localhost"]).status_code == 201
            assert raw.new_order(["example.internal"]).status_code == 400
            # A wildcard is allowed when each name it stands for is: by a "*." pattern at or
            # above its base, never by a plain name (app.example.com is one host).
            for allowed in ("*.example.internal", "*.a.example.internal"):
                assert raw.new_order([allowed]).status_code == 201, allowed
            before = api.counts()
            for refused_name in ("*.app.example.com", "*.other.internal", "*.example.com"):
                refused = raw.new_order([refused_name])
                detail = _assert_acme_problem(refused, 400, "rejectedIdentifier")["detail"]
                assert detail == (
                    f"{refused_name}: not among the names this server issues for "
                    "(acme.allowed-names)"
                )
            assert _business(api.counts()) == _business(before)
        finally:
            raw.acme.http01.close()


def test_a_csr_with_an_extra_name_is_a_bad_csr(acme_on: Acme) -> None:
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, _ = acme_on.order(acme_client, [NAME])
    acme_on.answer(acme_client, order)
    _poll_authz(acme_client, order.authorizations[0])
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    extra = order.update(csr_pem=crypto_util.make_csr(pem, [NAME, "extra.example.internal"]))
    before = acme_on.api.counts()
    with pytest.raises(messages.Error) as info:
        acme_client.finalize_order(extra, datetime.now() + timedelta(seconds=5))
    assert info.value.typ == ERR + "badCSR"
    assert "extra.example.internal" in info.value.detail
    assert _business(acme_on.api.counts()) == _business(before)
    # The right CSR still finalizes the (still ready) order.
    right = order.update(csr_pem=crypto_util.make_csr(pem, [NAME]))
    done = acme_client.finalize_order(right, datetime.now() + timedelta(seconds=30))
    assert done.fullchain_pem


def test_a_csr_for_an_account_key_is_a_bad_csr(acme_on: Acme) -> None:
    # RFC 8555 11.1: a certificate key is no account key, this account's or another's.
    other_key = ec.generate_private_key(ec.SECP256R1())
    acme_on.register(acme_on.client(jose.JWKEC(key=other_key)))
    account_key = ec.generate_private_key(ec.SECP256R1())
    acme_client = acme_on.client(jose.JWKEC(key=account_key))
    acme_on.register(acme_client)
    order, _ = acme_on.order(acme_client, [NAME])
    acme_on.answer(acme_client, order)
    _poll_authz(acme_client, order.authorizations[0])
    for key in (account_key, other_key):
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        bad = order.update(csr_pem=crypto_util.make_csr(pem, [NAME]))
        before = acme_on.api.counts()
        with pytest.raises(messages.Error) as info:
            acme_client.finalize_order(bad, datetime.now() + timedelta(seconds=5))
        assert info.value.typ == ERR + "badCSR"
        assert "account key" in info.value.detail
        assert _business(acme_on.api.counts()) == _business(before)


def test_certctls_own_name_under_its_internal_ca_is_refused(api: Api) -> None:
    http01 = Http01Server()
    app, settings = _acme_app(api, http01.port, issuer_id="default")
    try:
        with serving(app) as base:
            acme_on = Acme(api, base, http01, settings)
            acme_client = acme_on.client()
            acme_on.register(acme_client)
            order, _ = acme_on.order(acme_client, [NAME])
            acme_on.answer(acme_client, order)
            _poll_authz(acme_client, order.authorizations[0])
            with pytest.raises(messages.Error) as info:
                acme_client.finalize_order(order, datetime.now() + timedelta(seconds=5))
    finally:
        http01.close()
    assert info.value.typ == ERR + "rejectedIdentifier"
    assert "certctl's own server name" in info.value.detail


# --- replicas -----------------------------------------------------------------------------


def test_a_nonce_from_one_replica_is_accepted_once_by_another(api: Api, tmp_path: Path) -> None:
    # A second app on the same store (its own engine and Services), as a second replica.
    engine = create_store_engine(str(api.services.engine.url.render_as_string(hide_password=False)))
    other = Services(engine, session_factory(engine), api.services.wrapper)
    other.clock = api.services.clock
    one, _ = _acme_app(api, 80, issuer_id="default")
    two = create_app(other, acme=AcmeSettings(issuer_id="default", validity=timedelta(days=90)))
    try:
        with serving(one) as base_one, serving(two) as base_two:
            raw = Raw(
                Acme(api, base_one, Http01Server(), AcmeSettings("default", timedelta(days=1)))
            )
            try:
                nonce = raw.nonce()  # from replica one
                url = f"{base_two}/acme/new-account"
                body = raw.jws(url, {}, protected={"nonce": nonce})
                r = requests.post(
                    url, data=body, headers={"Content-Type": "application/jose+json"}, timeout=10
                )
                assert r.status_code == 201, r.text
                again = raw.jws(f"{base_one}/acme/new-account", {}, protected={"nonce": nonce})
                r = requests.post(
                    f"{base_one}/acme/new-account",
                    data=again,
                    headers={"Content-Type": "application/jose+json"},
                    timeout=10,
                )
                _assert_acme_problem(r, 400, "badNonce")
            finally:
                raw.acme.http01.close()
    finally:
        engine.dispose()


def test_a_slow_validation_still_running_is_not_started_twice(acme_on: Acme) -> None:
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, _ = acme_on.order(acme_client, [NAME])
    body = order.authorizations[0].body.challenges[0]
    response, validation = body.response_and_validation(acme_client.net.key)
    acme_on.http01.answers[body.chall.encode("token")] = b"SLOW " + validation.encode()
    acme_client.answer_challenge(body, response)
    # Past the minute after which a processing challenge counts as lost, while this
    # process's fetch (waiting for a slot under load, or slow) is still under way.
    acme_on.api.clock.advance(minutes=2)
    acme_client.poll(order.authorizations[0])
    authz = _poll_authz(acme_client, order.authorizations[0])
    assert authz.body.status == messages.STATUS_VALID
    assert len(acme_on.http01.hits) == 1, acme_on.http01.hits


def test_no_more_than_eight_validations_run_at_once(acme_on: Acme) -> None:
    from certctl.api.acme_routes import VALIDATION_LIMIT

    acme_client = acme_on.client()
    acme_on.register(acme_client)
    orders = [acme_on.order(acme_client, [NAME])[0] for _ in range(VALIDATION_LIMIT + 3)]

    def answer(order: messages.OrderResource) -> None:
        body = order.authorizations[0].body.challenges[0]
        response, validation = body.response_and_validation(acme_client.net.key)
        acme_on.http01.answers[body.chall.encode("token")] = b"SLOW " + validation.encode()
        acme_client.answer_challenge(body, response)

    # At once, as many clients would: each answer waits up to ANSWER_WAIT_S for its fetch,
    # so one after another they would never have eight fetches under way together.
    with ThreadPoolExecutor(len(orders)) as pool:
        list(pool.map(answer, orders))
    for order in orders:  # the last ones waited for a slot, and then passed
        authz = _poll_authz(acme_client, order.authorizations[0])
        assert authz.body.status == messages.STATUS_VALID
    # All were answered within the first fetches' 2 s (exactly the limit when not loaded).
    assert VALIDATION_LIMIT // 2 < acme_on.http01.peak <= VALIDATION_LIMIT
    assert len(acme_on.http01.hits) == len(orders)


def test_a_challenge_response_with_extra_fields_starts_the_validation(acme_on: Acme) -> None:
    # RFC 8555 7.5.1: the server MUST ignore fields it does not know in a challenge response
    # (clients written against the drafts still send keyAuthorization).
    raw = Raw(acme_on)
    raw.register()
    order = raw.new_order([NAME]).json()
    authz_url = order["authorizations"][0]
    authz = raw.post(authz_url.split("/acme/", 1)[1], raw.jws(authz_url, None)).json()
    challenge = authz["challenges"][0]
    thumb = jose.b64encode(raw.key.public_key().thumbprint()).decode()
    key_authorization = f"{challenge['token']}.{thumb}"
    acme_on.http01.answers[challenge["token"]] = key_authorization.encode()
    url = challenge["url"]
    r = raw.post(url.split("/acme/", 1)[1], raw.jws(url, {"keyAuthorization": key_authorization}))
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("processing", "valid")
    deadline = time.monotonic() + 30
    while (done := raw.post(url.split("/acme/", 1)[1], raw.jws(url, None)).json())[
        "status"
    ] == "processing":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert done["status"] == "valid", done


def test_a_quick_validation_is_answered_with_its_outcome(acme_on: Acme) -> None:
    """The challenge's answer waits (up to ANSWER_WAIT_S) for the fetch it started: done in
    milliseconds here, the answer says valid, and so does the client's first poll, where
    it said processing and certbot's first poll found the authorization pending (then
    slept a second); a fetch that fails is answered invalid, with its error."""
    from certctl.api.acme_routes import ANSWER_WAIT_S

    raw = Raw(acme_on)
    raw.register()
    thumb = jose.b64encode(raw.key.public_key().thumbprint()).decode()
    for served, outcome in ((True, "valid"), (False, "invalid")):
        order = raw.new_order([NAME]).json()
        authz_url = order["authorizations"][0]
        authz_path = authz_url.split("/acme/", 1)[1]
        challenge = raw.post(authz_path, raw.jws(authz_url, None)).json()["challenges"][0]
        if served:
            acme_on.http01.answers[challenge["token"]] = f"{challenge['token']}.{thumb}".encode()
        url = challenge["url"]
        started = time.monotonic()
        answered = raw.post(url.split("/acme/", 1)[1], raw.jws(url, {}))
        assert time.monotonic() - started < ANSWER_WAIT_S + 2
        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] == outcome, answered.text
        assert "retry-after" not in answered.headers
        if not served:
            assert answered.json()["error"]["type"].endswith(":incorrectResponse")  # a 404
        polled = raw.post(authz_path, raw.jws(authz_url, None)).json()
        assert polled["status"] == outcome, polled


def test_a_validation_under_way_says_when_to_poll_again(acme_on: Acme) -> None:
    """Retry-After: 1 on the challenge and its authorization while the fetch runs (RFC 8555
    7.5.1), where there was none and lego waited its default 5 s before each first poll;
    none once the authorization is valid (nothing more to wait for)."""
    raw = Raw(acme_on)
    raw.register()
    order = raw.new_order([NAME]).json()
    authz_url = order["authorizations"][0]
    authz_path = authz_url.split("/acme/", 1)[1]
    challenge = raw.post(authz_path, raw.jws(authz_url, None)).json()["challenges"][0]
    assert "retry-after" not in raw.post(authz_path, raw.jws(authz_url, None)).headers  # pending
    thumb = jose.b64encode(raw.key.public_key().thumbprint()).decode()
    # A fetch answered after 2 s: still under way while the client polls.
    acme_on.http01.answers[challenge["token"]] = b"SLOW " + f"{challenge['token']}.{thumb}".encode()
    url = challenge["url"]
    answered = raw.post(url.split("/acme/", 1)[1], raw.jws(url, {}))
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "processing"
    assert answered.headers["retry-after"] == "1"
    polled = raw.post(authz_path, raw.jws(authz_url, None))
    assert polled.json()["status"] == "pending"
    assert polled.headers["retry-after"] == "1"
    deadline = time.monotonic() + 30
    while (done := raw.post(authz_path, raw.jws(authz_url, None))).json()["status"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert done.json()["status"] == "valid", done.text
    assert "retry-after" not in done.headers


def test_concurrent_new_accounts_of_one_key_make_one_account(acme_on: Acme) -> None:
    # Two issuers of one cert-manager sharing an account key secret, a client retrying a
    # request that timed out: the same key registers twice at once.
    raw = Raw(acme_on)
    url = f"{acme_on.base}/acme/new-account"
    bodies = [raw.jws(url, {}) for _ in range(6)]
    barrier = threading.Barrier(len(bodies))
    answers: list[Any] = []

    def register(body: bytes) -> None:
        barrier.wait()
        answers.append(raw.post("new-account", body))

    threads = [threading.Thread(target=register, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(r.status_code for r in answers) == [200] * 5 + [201], [r.text for r in answers]
    assert len({r.headers["location"] for r in answers}) == 1
    assert acme_on.api.counts()["acme_accounts"] == 1


def test_an_order_made_on_one_replica_is_validated_and_finalized_on_another(api: Api) -> None:
    # Two replicas behind one name (public-url): each step goes to the other one, as a load
    # balancer may send it; the validation runs on the replica the challenge was posted to.
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    public = "https://acme.example.internal"
    engine = create_store_engine(str(api.services.engine.url.render_as_string(hide_password=False)))
    other = Services(engine, session_factory(engine), api.services.wrapper)
    other.clock = api.services.clock
    api.services.public_url = other.public_url = public
    http01 = Http01Server()
    one, settings = _acme_app(api, http01.port)
    two = create_app(other, acme=settings)
    try:
        with serving(one) as base_one, serving(two) as base_two:
            raw = Raw(Acme(api, base_one, http01, settings))

            def send(base: str, url: str, payload: Any) -> Any:
                path = url.removeprefix(f"{public}/acme/")
                r = requests.post(
                    f"{base}/acme/{path}",
                    data=raw.jws(f"{public}/acme/{path}", payload),
                    headers={"Content-Type": "application/jose+json"},
                    timeout=10,
                )
                assert r.status_code in (200, 201), r.text
                return r

            raw.kid = send(base_one, "new-account", {}).headers["location"]
            created = send(base_two, "new-order", {"identifiers": [{"type": "dns", "value": NAME}]})
            order_url = created.headers["location"]
            authz = send(base_one, created.json()["authorizations"][0], None).json()
            challenge = authz["challenges"][0]
            thumb = jose.b64encode(raw.key.public_key().thumbprint()).decode()
            http01.answers[challenge["token"]] = f"{challenge['token']}.{thumb}".encode()
            # Answered once the fetch is done (it takes milliseconds here): valid already.
            assert send(base_two, challenge["url"], {}).json()["status"] in ("processing", "valid")
            deadline = time.monotonic() + 30
            while (order := send(base_one, order_url, None).json())["status"] == "pending":
                assert time.monotonic() < deadline, "never validated"
                time.sleep(0.2)
            assert order["status"] == "ready", order
            key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            csr = x509.load_pem_x509_csr(crypto_util.make_csr(key_pem, [NAME]))
            der = csr.public_bytes(serialization.Encoding.DER)
            done = send(base_one, order["finalize"], {"csr": jose.b64encode(der).decode()}).json()
            assert done["status"] == "valid", done
            chain = send(base_two, done["certificate"], None)
            assert chain.headers["content-type"] == "application/pem-certificate-chain"
            leaf = x509.load_pem_x509_certificates(chain.content)[0]
            assert leaf.public_key() == csr.public_key()
    finally:
        http01.close()
        engine.dispose()


# --- account updates and key change -------------------------------------------------------


def _inner_jws(key: jose.JWK, url: str, payload: dict[str, Any]) -> dict[str, str]:
    header = {"alg": "ES256", "jwk": key.public_key().to_partial_json(), "url": url}
    prot = jose.b64encode(json.dumps(header).encode()).decode()
    body = jose.b64encode(json.dumps(payload).encode()).decode()
    signature = jose.ES256.sign(key.key, f"{prot}.{body}".encode())
    return {"protected": prot, "payload": body, "signature": jose.b64encode(signature).decode()}


def test_key_change_moves_the_account_to_the_new_key(acme_on: Acme) -> None:
    raw = Raw(acme_on)
    kid = raw.register()
    url = f"{acme_on.base}/acme/key-change"
    new_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    old_jwk = raw.key.public_key().to_partial_json()
    # An inner JWS signed by another key than the one it names: refused, nothing changed.
    forged = _inner_jws(new_key, url, {"account": kid, "oldKey": old_jwk})
    forged["payload"] = jose.b64encode(b'{"account": "x", "oldKey": {}}').decode()
    before = acme_on.api.counts()
    _assert_acme_problem(raw.post("key-change", raw.jws(url, forged)), 400, "malformed")
    wrong_old = _inner_jws(
        new_key, url, {"account": kid, "oldKey": new_key.public_key().to_partial_json()}
    )
    _assert_acme_problem(raw.post("key-change", raw.jws(url, wrong_old)), 403, "unauthorized")
    assert _business(acme_on.api.counts()) == _business(before)

    inner = _inner_jws(new_key, url, {"account": kid, "oldKey": old_jwk})
    r = raw.post("key-change", raw.jws(url, inner))
    assert r.status_code == 200, r.text
    assert r.headers["location"] == kid
    # The old key no longer finds the account; the new one does, as the same account.
    old_lookup = raw.post(
        "new-account",
        raw.jws(f"{acme_on.base}/acme/new-account", {"onlyReturnExisting": True}, use_jwk=True),
    )
    _assert_acme_problem(old_lookup, 400, "accountDoesNotExist")
    renewed = Raw(acme_on, new_key)
    found = renewed.post(
        "new-account",
        renewed.jws(f"{acme_on.base}/acme/new-account", {"onlyReturnExisting": True}),
    )
    assert (found.status_code, found.headers["location"]) == (200, kid)
    renewed.kid = kid
    assert renewed.new_order([NAME]).status_code == 201
    # The old key's requests as the account fail (its signature no longer verifies).
    _assert_acme_problem(raw.new_order([NAME]), 400, "malformed")
    actions = [e["action"] for e in acme_on.api.audit()]
    assert "acme.account.key-change" in actions


def test_a_deactivated_account_authorizes_nothing_more(acme_on: Acme) -> None:
    acme_client = acme_on.client()
    regr = acme_on.register(acme_client)
    updated = acme_client.update_registration(
        regr, regr.body.update(contact=("mailto:new@example.internal",))
    )
    assert updated.body.contact == ("mailto:new@example.internal",)
    gone = acme_client.deactivate_registration(updated)
    assert gone.body.status == "deactivated"
    with pytest.raises(messages.Error) as info:
        acme_on.order(acme_client, [NAME])
    assert info.value.typ == ERR + "unauthorized"
    with pytest.raises(messages.Error) as info:  # the same key, as a new client would
        acme_on.register(acme_on.client(acme_client.net.key))
    assert info.value.typ == ERR + "unauthorized"
    account_id = regr.uri.rsplit("/", 1)[1]
    audited = [e["action"] for e in acme_on.api.audit() if e["actor"] == f"acme:{account_id}"]
    assert {"acme.account.update", "acme.account.deactivate"} <= set(audited)


def test_a_bad_contact_is_refused(acme_on: Acme) -> None:
    raw = Raw(acme_on)
    url = f"{acme_on.base}/acme/new-account"
    before = acme_on.api.counts()
    for contact, acme_type in (
        (["tel:+1555"], "unsupportedContact"),
        (["mailto:two@a.example,three@b.example"], "invalidContact"),
        ("mailto:x@example.internal", "malformed"),
    ):
        r = raw.post("new-account", raw.jws(url, {"contact": contact}))
        _assert_acme_problem(r, 400, acme_type)
    assert _business(acme_on.api.counts()) == _business(before)


def test_a_nonce_expires_after_an_hour(acme_on: Acme) -> None:
    raw = Raw(acme_on)
    nonce = raw.nonce()
    acme_on.api.clock.advance(hours=1, seconds=1)
    body = raw.jws(f"{acme_on.base}/acme/new-account", {}, protected={"nonce": nonce})
    _assert_acme_problem(raw.post("new-account", body), 400, "badNonce")


def test_handing_out_nonces_writes_nothing_to_the_store(acme_on: Acme) -> None:
    # Every ACME answer carries a nonce, errors too: a stored nonce made each anonymous
    # request a durable commit (one curl loop made ~670 rows/s, competing with every write).
    api = acme_on.api
    engine = api.services.engine
    probe = None
    if api.backend == "sqlite":
        # data_version changes when another connection commits (WAL mode too, where the
        # file header's change counter need not).
        assert engine.url.database
        probe = sqlite3.connect(engine.url.database)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def data_version() -> int | None:
        return None if probe is None else int(probe.execute("PRAGMA data_version").fetchone()[0])

    try:
        before, version = api.counts(), data_version()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            nonces = {Raw(acme_on).nonce() for _ in range(100)}
            errors = [
                requests.get(acme_on.directory_url, timeout=10),
                requests.post(f"{acme_on.base}/acme/no-such-thing", timeout=10),
                requests.get(f"{acme_on.base}/acme/new-account", timeout=10),
            ]
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        nonces |= {r.headers["replay-nonce"] for r in errors}
        assert len(nonces) == 103
        assert statements == []
        assert api.counts() == before
        assert data_version() == version
        Raw(acme_on).register()  # the probe sees a commit: a signed request's
        assert api.counts()["acme_nonces"] == before["acme_nonces"] + 1
        if probe is not None:
            assert data_version() != version
    finally:
        if probe is not None:
            probe.close()


def _nonce_bytes(nonce: str) -> bytes:
    return base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))


def _nonce_text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_nonce_is_refused_when_tampered_truncated_aliased_expired_early_or_foreign(
    acme_on: Acme,
) -> None:
    from certctl.services import acme
    from certctl.store.keywrap import KeyWrapper

    api = acme_on.api
    raw = Raw(acme_on)
    url = f"{acme_on.base}/acme/new-account"

    def try_nonce(nonce: str) -> Any:
        raw.key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))  # a new account
        return raw.post("new-account", raw.jws(url, {}, protected={"nonce": nonce}))

    good = raw.nonce()
    decoded = _nonce_bytes(good)
    stamp = int.from_bytes(decoded[:8], "big")
    assert abs(stamp - api.clock().timestamp()) < 1
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    alias = good[:-1] + alphabet[alphabet.index(good[-1]) ^ 1]  # other padding bits
    assert _nonce_bytes(alias) == decoded
    later = (stamp + 600).to_bytes(8, "big")
    raw.acme.api.clock.advance(minutes=11)
    early = raw.nonce()  # minted by a replica whose clock runs 11 minutes ahead
    raw.acme.api.clock.advance(minutes=-11)
    foreign = acme.mint_nonce(
        Services(api.services.engine, api.services.sessions, KeyWrapper(os.urandom(32)))
    )
    bad = {
        "MAC tampered": _nonce_text(decoded[:-1] + bytes([decoded[-1] ^ 1])),
        "timestamp tampered": _nonce_text(later + decoded[8:]),
        "random part tampered": _nonce_text(decoded[:8] + bytes(16) + decoded[24:]),
        "truncated": good[:-1],
        "MAC cut off": _nonce_text(decoded[:24]),
        "padded": good + "==",
        "not base64url": good[:-1] + "+",
        "padding bits set": alias,
        "from the future": early,
        "another installation's": foreign,
    }
    before = api.counts()
    for case, nonce in bad.items():
        r = try_nonce(nonce)
        assert r.status_code == 400, (case, r.text)
        assert r.json()["type"] == ERR + "badNonce", case
        assert ("ahead" in r.json()["detail"]) == (case == "from the future"), (case, r.text)
    # Nothing written: no account, and no used nonce recorded for a refused one.
    assert api.counts() == before
    raw.acme.api.clock.advance(minutes=59)
    assert try_nonce(good).status_code == 201  # the genuine one, within its hour
    assert api.counts()["acme_nonces"] == before["acme_nonces"] + 1
    again = try_nonce(good)
    _assert_acme_problem(again, 400, "badNonce")
    assert "used already" in again.json()["detail"]
    _assert_acme_problem(try_nonce(alias), 400, "badNonce")  # nor under another spelling


def test_used_nonces_are_swept_once_expired_so_the_table_stays_bounded(acme_on: Acme) -> None:
    from certctl.errors import AcmeError
    from certctl.services import acme

    services = acme_on.api.services
    before = acme_on.api.counts()["acme_nonces"]
    old = [acme.mint_nonce(services) for _ in range(20)]
    for nonce in old:
        acme.consume_nonce(services, nonce)
    assert acme_on.api.counts()["acme_nonces"] == before + 20
    acme_on.api.clock.advance(hours=2)
    # One use in every few hundred sweeps what expired; a nonce too old to be accepted
    # needs no row to be refused.
    for _ in range(300):
        acme.consume_nonce(services, acme.mint_nonce(services))
    assert acme_on.api.counts()["acme_nonces"] == 300
    with pytest.raises(AcmeError) as info:
        acme.consume_nonce(services, old[0])
    assert info.value.acme_type == "badNonce"


def test_a_used_nonce_stays_refused_when_a_replica_sweeping_runs_minutes_ahead(
    acme_on: Acme, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The row of a use is all that refuses a replay within the nonce's hour; a replica whose
    # clock runs ahead (5 minutes: what the rest of certctl tolerates, e.g. delivery
    # timestamps) swept it while one behind still accepted the nonce: replayed, unseen.
    from certctl.errors import AcmeError
    from certctl.services import acme

    services = acme_on.api.services
    ahead = Services(services.engine, services.sessions, services.wrapper)
    ahead.clock = lambda: services.clock() + timedelta(minutes=5)
    nonce = acme.mint_nonce(services)
    acme.consume_nonce(services, nonce)
    acme_on.api.clock.advance(minutes=57)  # still in its hour here; 62 minutes old ahead
    monkeypatch.setattr(acme, "_SWEEP_EVERY", 1)  # this use sweeps
    acme.consume_nonce(ahead, acme.mint_nonce(ahead))
    with pytest.raises(AcmeError) as info:
        acme.consume_nonce(services, nonce)
    assert info.value.acme_type == "badNonce"
    assert "used already" in info.value.detail


def test_a_storage_503_carries_a_nonce_the_retry_is_accepted_with(acme_on: Acme) -> None:
    # RFC 8555 6.5: error answers should carry a nonce too. The 503 had none (a nonce took a
    # store write); a client then had to ask new-nonce before it could retry.
    raw = Raw(acme_on)
    url = f"{acme_on.base}/acme/new-account"
    body = raw.jws(url, {})
    pool: Any = acme_on.api.services.engine.pool
    held = [acme_on.api.services.engine.connect() for _ in range(pool.size() + pool._max_overflow)]
    saved, pool._timeout = pool._timeout, 0.05
    try:
        r = raw.post("new-account", body)
    finally:
        pool._timeout = saved
        for connection in held:
            connection.close()
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "2"
    assert r.headers["content-type"] == "application/problem+json"
    again = raw.post(
        "new-account", raw.jws(url, {}, protected={"nonce": r.headers["replay-nonce"]})
    )
    assert again.status_code == 201, again.text


def test_a_nonce_from_a_replica_whose_clock_runs_minutes_ahead_is_accepted(acme_on: Acme) -> None:
    # certbot's acme library takes no nonce from an error: after a badNonce it asks new-nonce
    # again, which a load balancer may send back to the replica ahead; its retry failed as
    # the first attempt did while the clocks were over a minute apart.
    raw = Raw(acme_on)
    acme_on.api.clock.advance(minutes=5)
    ahead = raw.nonce()  # handed out by a replica 5 minutes ahead
    acme_on.api.clock.advance(minutes=-5)
    url = f"{acme_on.base}/acme/new-account"
    r = raw.post("new-account", raw.jws(url, {}, protected={"nonce": ahead}))
    assert r.status_code == 201, r.text


# --- http-01 limits -----------------------------------------------------------------------


def _validated(acme_on: Acme, serve: Any) -> Any:
    """Order NAME, let ``serve(token, key_authorization)`` set the answers, return the authz."""
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, _ = acme_on.order(acme_client, [NAME])
    body = order.authorizations[0].body.challenges[0]
    response, validation = body.response_and_validation(acme_client.net.key)
    serve(body.chall.encode("token"), validation.encode())
    acme_client.answer_challenge(body, response)
    return _poll_authz(acme_client, order.authorizations[0])


def test_http01_follows_redirects_and_strips_trailing_whitespace(acme_on: Acme) -> None:
    answers = acme_on.http01.answers

    def serve(token: str, key_authorization: bytes) -> None:
        answers[token] = b"REDIRECT /.well-known/acme-challenge/hop1"
        answers["hop1"] = b"REDIRECT /.well-known/acme-challenge/final"
        answers["final"] = key_authorization + b"\r\n  \n"

    authz = _validated(acme_on, serve)
    assert authz.body.status == messages.STATUS_VALID
    hops = [h.rsplit("/", 1)[1] for h in acme_on.http01.hits]
    assert hops[-2:] == ["hop1", "final"]


def test_http01_gives_up_after_ten_redirects(acme_on: Acme) -> None:
    answers = acme_on.http01.answers

    def serve(token: str, key_authorization: bytes) -> None:
        answers[token] = b"REDIRECT /.well-known/acme-challenge/loop"
        answers["loop"] = b"REDIRECT /.well-known/acme-challenge/loop"

    authz = _validated(acme_on, serve)
    assert authz.body.status == messages.STATUS_INVALID
    error = authz.body.challenges[0].error
    assert (error.typ, "more than 10 redirects" in error.detail) == (ERR + "connection", True)


def test_http01_reads_no_more_than_8_kib(acme_on: Acme) -> None:
    def serve(token: str, key_authorization: bytes) -> None:
        acme_on.http01.answers[token] = key_authorization + b" " * (9 * 1024)

    authz = _validated(acme_on, serve)
    assert authz.body.status == messages.STATUS_INVALID
    error = authz.body.challenges[0].error
    assert (error.typ, "over 8192 bytes" in error.detail) == (ERR + "incorrectResponse", True)


def test_http01_not_found_is_an_incorrect_response(acme_on: Acme) -> None:
    authz = _validated(acme_on, lambda token, key_authorization: None)
    error = authz.body.challenges[0].error
    assert (error.typ, "answered HTTP 404" in error.detail) == (ERR + "incorrectResponse", True)


def test_the_access_log_names_the_account_and_never_the_jws(
    acme_on: Acme, caplog: pytest.LogCaptureFixture
) -> None:
    raw = Raw(acme_on)
    with caplog.at_level("INFO", logger="certctl.access"):
        kid = raw.register()
        body = raw.jws(
            f"{acme_on.base}/acme/new-order", {"identifiers": [{"type": "dns", "value": NAME}]}
        )
        assert raw.post("new-order", body).status_code == 201
        account_id = kid.rsplit("/", 1)[1]
        wanted = f"POST /acme/new-order 201 actor=acme:{account_id}"
        deadline = time.monotonic() + 10
        # The line is written once the answer has gone out: wait for it.
        while not any(wanted in m for m in caplog.messages):
            assert time.monotonic() < deadline, caplog.messages
            time.sleep(0.05)
    signature = json.loads(body)["signature"]
    protected = json.loads(body)["protected"]
    assert not any(signature in line or protected in line for line in caplog.messages)


# --- start-up and validity ----------------------------------------------------------------


def test_a_start_with_acme_on_needs_its_issuer(api: Api) -> None:
    from certctl.errors import InvalidRequest
    from certctl.server.config import ServerConfig
    from certctl.server.run import acme_settings

    off = ServerConfig.model_validate({})
    assert acme_settings(off, api.services) is None
    on = ServerConfig.model_validate({"acme": {"enabled": True, "validity": "30D"}})
    settings = acme_settings(on, api.services)
    assert settings == AcmeSettings("default", timedelta(days=30), (), 80)
    resolvers = {"enabled": True, "dns-resolvers": ["127.0.0.1:5353", "::1"]}
    settings = acme_settings(ServerConfig.model_validate({"acme": resolvers}), api.services)
    assert settings is not None
    assert settings.dns_resolvers == (("127.0.0.1", 5353), ("::1", 53))
    unknown = ServerConfig.model_validate({"acme": {"enabled": True, "issuer": "nope"}})
    with pytest.raises(InvalidRequest, match=r"^acme.issuer nope: no such issuer; create it"):
        acme_settings(unknown, api.services)
    # A managed service's CA issues for its reconciler only: every finalize would fail.
    api.apply_service_ca("web")
    managed = ServerConfig.model_validate({"acme": {"enabled": True, "issuer": "svc.web"}})
    with pytest.raises(InvalidRequest, match=r"^acme.issuer svc.web: .*managed service web"):
        acme_settings(managed, api.services)


def test_a_validity_beyond_the_issuer_is_clipped_and_said_once(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER, "validity": "30D"})
    assert r.status_code == 201, r.text
    issuer_end = datetime.fromisoformat(r.json()["not_after"])
    http01 = Http01Server()
    app, settings = _acme_app(api, http01.port, validity=timedelta(days=90))
    try:
        with serving(app) as base, caplog.at_level("WARNING", logger="certctl.services.acme"):
            acme_on = Acme(api, base, http01, settings)
            acme_client = acme_on.client()
            acme_on.register(acme_client)
            _, first = acme_on.issue(acme_client, [NAME])
            _, second = acme_on.issue(acme_client, [NAME])
    finally:
        http01.close()
    assert first.not_valid_after_utc == second.not_valid_after_utc == issuer_end
    said = [m for m in caplog.messages if "acme.validity" in m and "clipped" in m]
    assert len(said) == 1, caplog.messages


def test_http01_follows_no_redirect_to_another_port(acme_on: Acme) -> None:
    # Else an account could make this server probe any port it reaches, and quote the answer.
    elsewhere = Http01Server()
    try:

        def serve(token: str, key_authorization: bytes) -> None:
            target = f"http://127.0.0.1:{elsewhere.port}/.well-known/acme-challenge/{token}"
            acme_on.http01.answers[token] = b"REDIRECT " + target.encode()
            elsewhere.answers[token] = key_authorization

        authz = _validated(acme_on, serve)
    finally:
        elsewhere.close()
    assert authz.body.status == messages.STATUS_INVALID
    error = authz.body.challenges[0].error
    assert error.typ == ERR + "connection"
    assert f"only http or https on port 80, 443 or {acme_on.http01.port}" in error.detail
    assert elsewhere.hits == []


def test_concurrent_finalizes_of_one_order_issue_one_certificate(acme_on: Acme) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from certctl.errors import AcmeError
    from certctl.services import acme as acme_service

    acme_client = acme_on.client()
    regr = acme_on.register(acme_client)
    order, csr = acme_on.order(acme_client, [NAME])
    acme_on.answer(acme_client, order)
    _poll_authz(acme_client, order.authorizations[0])
    api = acme_on.api
    account = acme_service.find_account(api.services, regr.uri.rsplit("/", 1)[1])
    order_id = order.uri.rsplit("/", 1)[1]
    der = x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER)
    payload = {"csr": jose.b64encode(der).decode()}
    before = api.counts()["certificates"]

    def finalize() -> str:
        try:
            acme_service.finalize_order(
                api.services, acme_on.settings, account, order_id, payload, "127.0.0.1"
            )
        except AcmeError as exc:
            return exc.acme_type
        return "issued"

    with ThreadPoolExecutor(4) as pool:
        results = sorted(pool.map(lambda _: finalize(), range(4)))
    assert results == ["issued", "orderNotReady", "orderNotReady", "orderNotReady"]
    assert api.counts()["certificates"] == before + 1


def test_the_account_lists_its_orders_newest_first_and_to_itself_only(acme_on: Acme) -> None:
    raw = Raw(acme_on)
    kid = raw.register()
    orders = [raw.new_order([NAME]).headers["location"] for _ in range(2)]
    shown = raw.post(kid.split("/acme/", 1)[1], raw.jws(kid, None)).json()
    assert shown["orders"] == f"{kid}/orders"
    listed = raw.post(f"{kid.split('/acme/', 1)[1]}/orders", raw.jws(f"{kid}/orders", None))
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"orders": orders[::-1]}
    other = Raw(acme_on)
    other.register()
    refused = other.post(f"{kid.split('/acme/', 1)[1]}/orders", other.jws(f"{kid}/orders", None))
    _assert_acme_problem(refused, 403, "unauthorized")


def test_a_valid_authorization_is_deactivated_and_its_order_turns_invalid(acme_on: Acme) -> None:
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, _ = acme_on.order(acme_client, [NAME])
    acme_on.answer(acme_client, order)
    valid = _poll_authz(acme_client, order.authorizations[0])
    assert valid.body.status == messages.STATUS_VALID
    gone = acme_client.deactivate_authorization(valid)  # as certbot does after a failure
    assert gone.body.status == messages.STATUS_DEACTIVATED
    assert acme_client._post_as_get(order.uri).json()["status"] == "invalid"
    before = acme_on.api.counts()
    with pytest.raises(messages.Error) as info:
        acme_client.deactivate_authorization(gone)
    assert info.value.typ == ERR + "malformed"
    assert _business(acme_on.api.counts()) == _business(before)
