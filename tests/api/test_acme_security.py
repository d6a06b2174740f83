"""The ACME endpoint against what a hostile account (or anyone reaching it) tries.

http-01 makes certctl fetch a URL the account chooses (its identifier's address, and the
redirects it answers with): what comes back from a host the account does not control must not
be shown to the account. The servers and helpers are ``test_acme``'s.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import josepy as jose
import pytest
from acme import crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.api.conftest import Api
from tests.api.test_acme import (
    ERR,
    ISSUER,
    NAME,
    Acme,
    Http01Server,
    Raw,
    _acme_app,
    _validated,
    serving,
)


@pytest.fixture
def acme_sec(api: Api) -> Iterator[Acme]:
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER, "common_name": "ACME CA"})
    assert r.status_code == 201, r.text
    http01 = Http01Server()
    app, settings = _acme_app(api, http01.port)
    try:
        with serving(app) as base:
            yield Acme(api, base, http01, settings)
    finally:
        http01.close()


def test_http01_does_not_show_the_account_what_another_page_answered(acme_sec: Acme) -> None:
    # As a redirect to http://169.254.169.254/latest/meta-data/… (port 80 is followed) or a
    # name whose DNS points at an internal host would: here another page of the responder.
    answers = acme_sec.http01.answers
    secret = b"AccessKeyId=ASIAINTERNALSECRET"

    def serve(token: str, key_authorization: bytes) -> None:
        answers[token] = b"REDIRECT /.well-known/acme-challenge/meta-data"
        answers["meta-data"] = secret

    authz = _validated(acme_sec, serve)
    assert authz.body.status == messages.STATUS_INVALID
    error = authz.body.challenges[0].error
    assert error.typ == ERR + "incorrectResponse"
    assert "ASIAINTERNALSECRET" not in error.detail
    assert f"{len(secret)} bytes" in error.detail


def test_http01_quotes_a_key_authorization_for_another_account_key(acme_sec: Acme) -> None:
    # What a client misconfigured serves (a stale account key's thumbprint): worth showing.
    wrong = "A" * 43

    def serve(token: str, key_authorization: bytes) -> None:
        acme_sec.http01.answers[token] = f"{token}.{wrong}".encode()

    authz = _validated(acme_sec, serve)
    error = authz.body.challenges[0].error
    assert error.typ == ERR + "incorrectResponse"
    assert f".{wrong}'" in error.detail


def test_http01_does_not_show_the_banner_of_a_service_that_is_not_http(api: Api) -> None:
    # An SSH (or database, SMTP …) server on the port: its first line reached the account in
    # the parser's error ("illegal status line: bytearray(b'SSH-2.0-…')").
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def banner() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6 db-internal-07 BANNERSECRET\r\n\r\n")
                stop.wait(1)

    thread = threading.Thread(target=banner, daemon=True)
    thread.start()
    app, settings = _acme_app(api, listener.getsockname()[1])
    http01 = Http01Server()  # unused: the banner server holds the http-01 port
    try:
        with serving(app) as base:
            authz = _validated(Acme(api, base, http01, settings), lambda token, ka: None)
    finally:
        stop.set()
        listener.close()
        http01.close()
        thread.join(5)
    assert authz.body.status == messages.STATUS_INVALID
    error = authz.body.challenges[0].error
    assert error.typ == ERR + "connection"
    assert "BANNERSECRET" not in error.detail
    assert "db-internal" not in error.detail
    assert NAME in error.detail


def test_a_revocation_signed_by_the_certificate_key_is_not_audited_as_the_ordering_account(
    acme_sec: Acme,
) -> None:
    # Whoever holds the key (the account, or whoever stole the key) revokes without the
    # account: the audit named the account as if it had, hiding who acted.
    acme_client = acme_sec.client()
    account = acme_sec.register(acme_client)
    account_id = account.uri.rsplit("/", 1)[1]
    order, _ = acme_sec.order(acme_client, [NAME])
    acme_sec.answer(acme_client, order)
    key = rsa.generate_private_key(65537, 2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    order = order.update(csr_pem=crypto_util.make_csr(pem, [NAME]))
    done = acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    holder_key = jose.JWKRSA(key=key)
    holder = acme_sec.client(holder_key, alg=jose.RS256)
    holder.net.account = None  # no kid: the certificate's key signs the request
    holder.revoke(leaf, 1)
    actors = [e["actor"] for e in acme_sec.api.audit() if e["action"] == "certificate.revoke"]
    thumb = jose.b64encode(holder_key.public_key().thumbprint()).decode()
    assert actors == [f"acme:key-{thumb[:16]}"]
    assert f"acme:{account_id}" not in actors


def test_http01_validations_waiting_are_bounded_and_a_challenge_over_it_stays_pending(
    api: Api,
) -> None:
    # Every challenge answered started a validation task, waiting for one of the 8 fetch
    # slots: an account answering thousands of challenges on a name that never answers
    # (10 s each) queued them all in memory and everyone else's validations behind them.
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def hang() -> None:  # accepts and never answers
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=hang, daemon=True)
    thread.start()
    app, settings = _acme_app(api, listener.getsockname()[1])
    app.app.state.acme_validation_queue = 1  # the Starlette app inside the access log
    http01 = Http01Server()  # unused: the silent server holds the http-01 port
    try:
        with serving(app) as base:
            acme_on = Acme(api, base, http01, settings)
            acme_client = acme_on.client()
            acme_on.register(acme_client)
            first, _ = acme_on.order(acme_client, [NAME])
            second, _ = acme_on.order(acme_client, [NAME])
            acme_on.answer(acme_client, first)  # its fetch hangs
            with pytest.raises(messages.Error) as info:
                acme_on.answer(acme_client, second)
            assert (info.value.typ, info.value.code) == (ERR + "rateLimited", "rateLimited")
            authz, _ = acme_client.poll(second.authorizations[0])
            assert authz.body.challenges[0].status == messages.STATUS_PENDING
            for conn in held:  # the first fetch fails now, and frees its place
                conn.close()
            listener.close()
            deadline = time.monotonic() + 10
            while acme_client.poll(first.authorizations[0])[0].body.status == "pending":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            # The result is stored before its task ends and leaves the queue: a poll can see
            # it a moment before the place is free (an answer then is told to retry).
            while app.app.state.acme_tasks:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            acme_on.answer(acme_client, second)  # accepted now
            authz, _ = acme_client.poll(second.authorizations[0])
            assert authz.body.challenges[0].status != messages.STATUS_PENDING
    finally:
        for conn in held:
            conn.close()
        listener.close()
        http01.close()
        thread.join(5)


def test_a_csr_with_an_account_key_is_a_bad_csr(acme_sec: Acme) -> None:
    # RFC 8555 11.1: whoever holds the certificate's key (every server it is deployed on)
    # would hold the ACME account too; another account's key as well.
    owner_key = ec.generate_private_key(ec.SECP256R1())
    owner = acme_sec.client(jose.JWKEC(key=owner_key))
    acme_sec.register(owner)
    other_key = ec.generate_private_key(ec.SECP256R1())
    acme_sec.register(acme_sec.client(jose.JWKEC(key=other_key)))
    for key in (owner_key, other_key):
        order, _ = acme_sec.order(owner, [NAME])
        acme_sec.answer(owner, order)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        order = order.update(csr_pem=crypto_util.make_csr(pem, [NAME]))
        before = acme_sec.api.counts()["certificates"]
        with pytest.raises(messages.Error) as info:
            owner.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
        assert info.value.typ == ERR + "badCSR"
        assert "account key" in str(info.value.detail)
        assert acme_sec.api.counts()["certificates"] == before


def test_an_acme_certificate_names_no_subject_attribute_the_account_did_not_prove(
    acme_sec: Acme,
) -> None:
    # http-01 proves the DNS names, nothing of O, OU … (which relying parties may authorize
    # on): they were copied from the CSR. The CN is kept, as the order's name it matched.
    acme_client = acme_sec.client()
    acme_sec.register(acme_client)
    order, _ = acme_sec.order(acme_client, [NAME])
    acme_sec.answer(acme_client, order)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COMMON_NAME, NAME.upper()),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "certctl"),
            x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, "admins"),
        ]
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    order = order.update(csr_pem=csr.public_bytes(serialization.Encoding.PEM))
    done = acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    assert leaf.subject == x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, NAME)])
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [NAME]


def test_one_nonce_sent_by_concurrent_requests_is_accepted_once(acme_sec: Acme) -> None:
    from concurrent.futures import ThreadPoolExecutor

    raw = Raw(acme_sec)
    raw.register()
    body = raw.jws(
        f"{acme_sec.base}/acme/new-order", {"identifiers": [{"type": "dns", "value": NAME}]}
    )
    before = acme_sec.api.counts()["acme_orders"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: raw.post("new-order", body), range(8)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [201] + [400] * 7, [r.text for r in answers]
    for r in answers:
        if r.status_code == 400:
            assert r.json()["type"] == ERR + "badNonce"
    assert acme_sec.api.counts()["acme_orders"] == before + 1


def test_an_account_holds_a_bounded_number_of_pending_authorizations(
    acme_sec: Acme, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each order made up to 100 authorizations and challenges, never deleted: an account
    # could fill the store by the thousand a second. Let's Encrypt allows 300 pending.
    from certctl.services import acme

    monkeypatch.setattr(acme, "MAX_PENDING_AUTHORIZATIONS", 3)
    raw = Raw(acme_sec)
    raw.register()
    assert raw.new_order([NAME, "a.example.internal"]).status_code == 201
    before = acme_sec.api.counts()
    refused = raw.new_order(["b.example.internal", "c.example.internal"])
    assert refused.status_code == 429, refused.text
    assert refused.json()["type"] == ERR + "rateLimited"
    assert "2 pending" in refused.json()["detail"]
    assert refused.headers["retry-after"]
    counts = acme_sec.api.counts()
    assert {k: counts[k] for k in counts if k != "acme_nonces"} == {
        k: before[k] for k in before if k != "acme_nonces"
    }
    other = Raw(acme_sec)  # another account is not held to this one's
    other.register()
    assert other.new_order(["b.example.internal", "c.example.internal"]).status_code == 201
    acme_sec.api.clock.advance(days=1, seconds=1)  # expired pending ones count no more
    assert raw.new_order(["b.example.internal", "c.example.internal"]).status_code == 201


def _gzip(chunks: Iterator[bytes]) -> bytes:
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([*(packer.compress(c) for c in chunks), packer.flush()])


def test_http01_does_not_inflate_a_compressed_answer(api: Api) -> None:
    # 373 bytes of gzip inside gzip are 128 MiB: the client inflated a whole network read at
    # once before the 8 KiB limit was looked at, so a few KiB of it took the server's memory.
    import tracemalloc

    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    bomb = _gzip(iter([_gzip(b"\0" * (1 << 20) for _ in range(128))]))
    asked: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.headers.get("Accept-Encoding"))
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip, gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    app, settings = _acme_app(api, server.server_address[1])
    http01 = Http01Server()  # unused: the bomb server holds the http-01 port
    tracemalloc.start()
    try:
        with serving(app) as base:
            authz = _validated(Acme(api, base, http01, settings), lambda token, ka: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        server.shutdown()
        server.server_close()
        http01.close()
    assert peak < 64 * 1024 * 1024, peak
    assert authz.body.status == messages.STATUS_INVALID
    error = authz.body.challenges[0].error
    assert error.typ == ERR + "incorrectResponse"
    assert f"answered {len(bomb)} bytes" in error.detail
    assert asked == ["identity"]


def test_accounts_made_from_one_address_are_bounded_per_hour(api: Api) -> None:
    # Accounts are free (no external account binding): each new-account request added an
    # account and an audit event for good, as fast as a client could make keys.
    from certctl.api.throttle import AuthFailureLimiter

    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    http01 = Http01Server()
    app, settings = _acme_app(api, http01.port)
    app.app.state.acme_account_limiter = AuthFailureLimiter(2, 3600)
    try:
        with serving(app) as base:
            acme_on = Acme(api, base, http01, settings)
            first, second = Raw(acme_on), Raw(acme_on)
            first.register()
            second.register()
            before = api.counts()
            third = Raw(acme_on)
            refused = third.post("new-account", third.jws(f"{base}/acme/new-account", {}))
            assert refused.status_code == 429, refused.text
            assert refused.json()["type"] == ERR + "rateLimited"
            assert int(refused.headers["retry-after"]) > 0
            counts = api.counts()
            assert {k: counts[k] for k in counts if k != "acme_nonces"} == {
                k: before[k] for k in before if k != "acme_nonces"
            }
            # An existing account is still found by its key (a client that lost its URL).
            again = first.post(
                "new-account", first.jws(f"{base}/acme/new-account", {}, use_jwk=True)
            )
            assert again.status_code == 200, again.text
    finally:
        http01.close()


def test_a_name_removed_from_allowed_names_is_not_issued_by_an_older_order(api: Api) -> None:
    # An operator narrows acme.allowed-names (say, after abuse) and restarts: orders made and
    # validated before, ready for a week, were still finalized for the names now refused.
    from dataclasses import replace

    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    http01 = Http01Server()
    app, settings = _acme_app(api, http01.port, allowed_names=(NAME,))
    try:
        with serving(app) as base:
            acme_on = Acme(api, base, http01, settings)
            acme_client = acme_on.client()
            acme_on.register(acme_client)
            order, _ = acme_on.order(acme_client, [NAME])
            acme_on.answer(acme_client, order)
            app.app.state.acme = replace(settings, allowed_names=("example.internal",))
            before = api.counts()["certificates"]
            with pytest.raises(messages.Error) as info:
                acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
            assert info.value.typ == ERR + "rejectedIdentifier"
            assert api.counts()["certificates"] == before
    finally:
        http01.close()


def test_a_certificate_not_issued_through_acme_is_not_revoked_by_its_key(acme_sec: Acme) -> None:
    # The API's revocation needs cert.revoke: whoever merely holds the key of a certificate
    # the API (or a managed service, or certctl's own listener) got must not revoke it here.
    api = acme_sec.api
    issued = api.issue(issuer=ISSUER, common_name="svc.example.internal")
    key = serialization.load_pem_private_key(issued["private_key_pem"].encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    jwk: jose.JWK = (
        jose.JWKEC(key=key)
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else (jose.JWKRSA(key=key))
    )
    holder = acme_sec.client(jwk, alg=jose.ES256 if isinstance(jwk, jose.JWKEC) else jose.RS256)
    holder.net.account = None  # no kid: the certificate's key signs the request
    leaf = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    before = api.counts()
    with pytest.raises(messages.Error) as info:
        holder.revoke(leaf, 1)
    assert info.value.typ == ERR + "unauthorized"
    assert "through ACME" in str(info.value.detail)
    shown = api.get(f"/api/v1/certificates/{issued['id']}", api.admin_key).json()
    assert shown["status"] == "active"
    counts = api.counts()
    assert {k: counts[k] for k in counts if k != "acme_nonces"} == {
        k: before[k] for k in before if k != "acme_nonces"
    }


def test_an_acme_csr_asking_for_a_ca_or_client_auth_gets_a_server_leaf(acme_sec: Acme) -> None:
    acme_client = acme_sec.client()
    acme_sec.register(acme_client)
    order, _ = acme_sec.order(acme_client, [NAME])
    acme_sec.answer(acme_client, order)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = dict.fromkeys(
        (
            "digital_signature content_commitment key_encipherment data_encipherment "
            "key_agreement encipher_only decipher_only"
        ).split(),
        False,
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    order = order.update(csr_pem=csr.public_bytes(serialization.Encoding.PEM))
    done = acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ku.key_cert_sign, ku.crl_sign) == (False, False)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.ExtendedKeyUsageOID.SERVER_AUTH]


def test_one_account_reaches_nothing_of_another(acme_sec: Acme) -> None:
    from tests.api.test_acme import _assert_acme_problem, _inner_jws

    owner = acme_sec.client()
    acme_sec.register(owner)
    done, _ = acme_sec.issue(owner, [NAME])
    pending, _ = acme_sec.order(owner, [NAME])  # its challenge not answered
    base = f"{acme_sec.base}/acme/"
    order_url, cert_url = done.uri, done.body.certificate
    authz_url = pending.authorizations[0].uri
    challenge_url = pending.authorizations[0].body.challenges[0].uri
    other = Raw(acme_sec)
    other.register()
    before = acme_sec.api.counts()

    def post(url: str, payload: object) -> object:
        return other.post(url.removeprefix(base), other.jws(url, payload))

    for url, payload in (
        (order_url, None),
        (done.body.finalize, {"csr": "AAAA"}),
        (authz_url, None),
        (authz_url, {"status": "deactivated"}),
        (challenge_url, None),
        (challenge_url, {}),
        (cert_url, None),
    ):
        _assert_acme_problem(post(url, payload), 404, "malformed")
    owner_kid = owner.net.account.uri
    _assert_acme_problem(post(owner_kid, {"status": "deactivated"}), 403, "unauthorized")
    # Its key for another's account: the other account's key is taken.
    new = jose.JWKEC(key=owner.net.key.key)
    key_change = f"{base}key-change"
    inner = _inner_jws(
        new, key_change, {"account": other.kid, "oldKey": other.key.public_key().to_partial_json()}
    )
    _assert_acme_problem(post(key_change, inner), 409, "conflict")
    counts = acme_sec.api.counts()
    assert {k: counts[k] for k in counts if k != "acme_nonces"} == {
        k: before[k] for k in before if k != "acme_nonces"
    }
    authz, _ = owner.poll(pending.authorizations[0])
    assert authz.body.challenges[0].status == messages.STATUS_PENDING
    assert (
        acme_sec.http01.hits.count(
            f"/.well-known/acme-challenge/{authz.body.challenges[0].chall.encode('token')}"
        )
        == 0
    )
