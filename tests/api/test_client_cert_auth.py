"""Client-certificate (mTLS) authentication in-process: remembered, yet revoked at once.

The TLS listener hands the app the verified certificate in the ASGI ``tls`` extension
(``certctl.server.tls.client_certificate_extension``); a thin ASGI layer here sets the
same extension on each request, so the checks run as behind a real handshake (the
end-to-end tests in tests/e2e/test_mtls.py do it with curl and openssl s_client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import event, text, update
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from certctl.api.app import create_app
from certctl.api.authentication import ClientCertMapping
from certctl.server.client_mappings import warn_unknown_mapped_roles
from certctl.server.config import ServerConfig
from certctl.server.tls import client_certificate_extension
from certctl.services import issuers
from certctl.store.models import CertificateRecord, Issuer, Role
from tests._generation import count_generation_reads
from tests._tools import run
from tests.api.conftest import Api, assert_problem

if TYPE_CHECKING:
    from httpx2 import Response

WHOAMI = "/api/v1/auth/whoami"


@dataclass
class Presenting:
    """An ASGI layer presenting ``tls`` (a verified client certificate) on every request."""

    app: ASGIApp
    tls: dict[str, Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.tls is not None:
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": self.tls}}
        await self.app(scope, receive, send)


@dataclass
class Mtls:
    """The app with ``auth.client-cert-mappings`` CN=* -> r-mtls, and what its store saw."""

    api: Api
    layer: Presenting
    client: TestClient
    # (statement, sent from the event loop) for every statement since the last clear().
    statements: list[tuple[str, bool]] = field(default_factory=list)

    def present(self, cert_pem: str, *issuer_ids: str, resumed: bool = False) -> None:
        """Present ``cert_pem``, verified under ``issuer_ids`` (nearest first; None: resumed)."""
        der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(Encoding.DER)
        cas = None
        if not resumed:
            services = self.api.services
            cas = tuple(
                issuers.load_issuer(services, i).certificate.public_bytes(Encoding.DER)
                for i in issuer_ids
            )
        self.layer.tls = client_certificate_extension(der, cas)

    def whoami(self) -> Response:
        return self.client.get(WHOAMI)

    def permissions(self) -> list[str]:
        r = self.whoami()
        assert r.status_code == 200, r.text
        assert r.json()["auth_method"] == "client_certificate"
        held: list[str] = r.json()["permissions"]
        return held


@pytest.fixture
def mtls(api: Api) -> Iterator[Mtls]:
    api.create_role("r-mtls", ["cert.read"])
    app = create_app(api.services, client_cert_mappings=(ClientCertMapping("CN=*", ("r-mtls",)),))
    layer = Presenting(app)
    with TestClient(layer, base_url="https://testserver", raise_server_exceptions=False) as client:
        found = Mtls(api, layer, client)

        def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False  # a worker thread
            found.statements.append((statement, on_loop))

        event.listen(api.services.engine, "before_cursor_execute", seen)
        try:
            yield found
        finally:
            event.remove(api.services.engine, "before_cursor_execute", seen)


def _client_cert(api: Api, name: str, issuer: str = "default", key: str = "") -> dict[str, Any]:
    return api.issue(key or None, common_name=name, dns_names=[], issuer=issuer, profile="client")


def _elsewhere(api: Api, statement: Any) -> None:
    """Commit ``statement`` as another worker or replica would: no hook of this process runs."""
    with api.services.engine.connect() as connection:
        connection.execute(statement)
        connection.commit()


def test_a_revoked_client_certificate_is_refused_on_the_very_next_request(mtls: Mtls) -> None:
    api = mtls.api
    carol, dave = _client_cert(api, "carol"), _client_cert(api, "dave")
    mtls.present(carol["certificate_pem"], "default")
    assert mtls.permissions() == ["cert.read"]
    assert mtls.permissions() == ["cert.read"]  # remembered now
    r = api.post(f"/api/v1/certificates/{carol['id']}/revoke", api.admin_key, json={})
    assert r.status_code == 200, r.text
    body = assert_problem(mtls.whoami(), 401)
    assert body["detail"] == "client certificate revoked"
    # Twin: a certificate of the same issuer that was not revoked keeps authenticating.
    mtls.present(dave["certificate_pem"], "default")
    assert mtls.permissions() == ["cert.read"]
    assert mtls.permissions() == ["cert.read"]
    # Revoked by another worker or replica (no hook of this process ran): refused too.
    _elsewhere(
        api,
        update(CertificateRecord)
        .where(CertificateRecord.id == dave["id"])
        .values(status="revoked", revoked_at=api.clock(), revocation_reason="keyCompromise"),
    )
    assert assert_problem(mtls.whoami(), 401)["detail"] == "client certificate revoked"
    assert assert_problem(mtls.whoami(), 401)["detail"] == "client certificate revoked"
    failures = [e for e in api.audit() if e["action"] == "auth.failure"]
    assert [e["outcome"] for e in failures] == ["revoked"] * 3  # every refusal audited


def test_a_role_change_applies_to_the_very_next_request(mtls: Mtls) -> None:
    api = mtls.api
    operator = api.actor_key("op", ["r-operator"])
    mine = _client_cert(api, "mine", key=operator)
    mtls.present(mine["certificate_pem"], "default")
    assert mtls.permissions() == ["cert.read"]
    r = api.request(
        "PUT",
        "/api/v1/auth/roles/r-mtls",
        api.admin_key,
        json={"name": "mtls", "permissions": ["cert.read", "metrics.read"]},
    )
    assert r.status_code == 200, r.text
    assert mtls.permissions() == ["cert.read", "metrics.read"]
    # Changed by another worker or replica.
    _elsewhere(
        api, update(Role).where(Role.id == "r-mtls").values(permissions=["auth.role.create"])
    )
    assert mtls.permissions() == []  # capped by its requester's r-operator
    # Its requester's roles cap it: deleted, the certificate carries nothing.
    assert api.request("DELETE", "/api/v1/auth/actors/op", api.admin_key).status_code == 204
    _elsewhere(api, update(Role).where(Role.id == "r-mtls").values(permissions=["cert.read"]))
    assert mtls.permissions() == []


def test_a_counter_set_back_trusts_no_client_certificate_remembered_before(mtls: Mtls) -> None:
    """A restore or a failover sets the credential counter back: before, a certificate
    remembered at a value it reached again kept the permissions it had then."""
    api = mtls.api
    carol = _client_cert(api, "carol")
    mtls.present(carol["certificate_pem"], "default")
    assert mtls.permissions() == ["cert.read"]
    assert mtls.permissions() == ["cert.read"]  # remembered now
    with api.services.engine.connect() as connection:
        remembered = connection.execute(text("SELECT value FROM auth_generation")).scalar_one()
    _elsewhere(api, update(Role).where(Role.id == "r-mtls").values(permissions=["metrics.read"]))
    # Another request sees the counter move on while carol is idle (hers would replace
    # what is remembered); then it goes back to the value carol was remembered at.
    assert api.get(WHOAMI, api.admin_key).status_code == 200
    _elsewhere(api, text("UPDATE auth_generation SET value = :v").bindparams(v=remembered))
    assert mtls.permissions() == ["metrics.read"]


def test_a_revoked_issuer_refuses_the_client_certificates_under_it(mtls: Mtls) -> None:
    api = mtls.api
    for sub in ("sub", "other"):
        r = api.post(
            "/api/v1/issuers",
            api.admin_key,
            json={"id": sub, "common_name": sub, "parent": "default"},
        )
        assert r.status_code == 201, r.text
    erin, frank = _client_cert(api, "erin", "sub"), _client_cert(api, "frank", "other")
    for resumed in (False, True):
        mtls.present(erin["certificate_pem"], "sub", "default", resumed=resumed)
        assert mtls.permissions() == ["cert.read"]
        assert mtls.permissions() == ["cert.read"]
    r = api.post("/api/v1/issuers/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    revoked = "client certificate revoked: a CA above it was revoked"
    for resumed in (False, True):
        mtls.present(erin["certificate_pem"], "sub", "default", resumed=resumed)
        assert assert_problem(mtls.whoami(), 401)["detail"] == revoked
    # Revoked by another worker or replica: this process's issuer cache knows nothing of it.
    for resumed in (False, True):
        mtls.present(frank["certificate_pem"], "other", "default", resumed=resumed)
        assert mtls.permissions() == ["cert.read"]
    _elsewhere(
        api,
        update(Issuer)
        .where(Issuer.id == "other")
        .values(revoked_at=api.clock(), revocation_reason="keyCompromise"),
    )
    for resumed in (False, True):
        mtls.present(frank["certificate_pem"], "other", "default", resumed=resumed)
        assert assert_problem(mtls.whoami(), 401)["detail"] == revoked


def test_a_remembered_client_certificate_still_expires(mtls: Mtls) -> None:
    api = mtls.api
    cert = _client_cert(api, "brief")
    mtls.present(cert["certificate_pem"], "default")
    assert mtls.permissions() == ["cert.read"]
    not_after = x509.load_pem_x509_certificate(cert["certificate_pem"].encode()).not_valid_after_utc
    api.clock.now = not_after
    assert assert_problem(mtls.whoami(), 401)["detail"] == "client certificate expired"


def test_a_remembered_client_certificate_reads_no_store_on_the_event_loop(
    mtls: Mtls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first request reads in a worker thread; once remembered, SQLite reads nothing.

    PostgreSQL: one read of the credential generation on the loop, on the API-key cache's
    own connection (a thread hop costs more than the read), instead of the four reads
    (roles, revoked issuers, the certificate, its requester's roles) of every request before.
    """
    api = mtls.api
    cert = _client_cert(api, "cached")
    mtls.present(cert["certificate_pem"], "default")
    mtls.statements.clear()
    assert mtls.permissions() == ["cert.read"]
    first = mtls.statements[:]
    mtls.statements.clear()
    reads = count_generation_reads(api.services.engine, monkeypatch)
    for _ in range(3):
        assert mtls.permissions() == ["cert.read"]
    assert mtls.statements == []  # none through the pool
    assert first, "the first request reads the store"
    assert not any(on_loop for _, on_loop in first), first
    if api.backend == "postgresql":
        assert len(reads) == 3, reads


@pytest.mark.parametrize("resumed", [False, True])
def test_a_client_certificate_not_remembered_is_read_on_one_connection_off_the_loop(
    mtls: Mtls, resumed: bool
) -> None:
    """Its reads (roles, revoked issuers, the certificate, its requester's roles) share one
    pooled connection, in an authentication thread, on both backends.

    Before, each read checked out a connection of its own (on PostgreSQL a ping, BEGIN and
    ROLLBACK each: up to four times the round trips), and PostgreSQL read them on the event
    loop.
    """
    api = mtls.api
    body = {"id": "gone", "common_name": "Gone", "parent": "default"}
    assert api.post("/api/v1/issuers", api.admin_key, json=body).status_code == 201
    r = api.post("/api/v1/issuers/gone/revoke", api.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200, r.text  # a revoked issuer: revoked_issuer_of reads deeper
    cert = _client_cert(api, "once")
    assert api.get(WHOAMI, api.admin_key).status_code == 200  # the counter's own connection
    mtls.present(cert["certificate_pem"], "default", resumed=resumed)
    checkouts: list[bool] = []

    def checkout(*args: Any) -> None:
        try:
            asyncio.get_running_loop()
            checkouts.append(True)
        except RuntimeError:
            checkouts.append(False)  # a worker thread

    event.listen(api.services.engine, "checkout", checkout)
    mtls.statements.clear()
    try:
        assert mtls.permissions() == ["cert.read"]
    finally:
        event.remove(api.services.engine, "checkout", checkout)
    assert len(mtls.statements) >= 4, mtls.statements
    assert checkouts == [False]
    assert not any(on_loop for _, on_loop in mtls.statements), mtls.statements


def test_the_generation_moves_at_revocations_not_at_issuance_renewal_crls_or_rewraps(
    api: Api,
) -> None:
    """Migration 0012's triggers: what decides a client certificate, and nothing busier.

    An issuance, a renewal (``renewed_by``), a CRL signed (``crl_number``) or a key re-wrapped
    (a key-encryption-key rotation rewrites every row) must keep the API-key cache.
    """

    def generation() -> int:
        with api.services.engine.connect() as connection:
            read = text("SELECT value FROM auth_generation WHERE id = 1")
            value: int = connection.execute(read).scalar_one()
        return value

    before = generation()
    cert = _client_cert(api, "busy")
    renewed = api.post(f"/api/v1/certificates/{cert['id']}/renew", api.admin_key, json={})
    assert renewed.status_code == 201, renewed.text
    assert api.get("/api/v1/issuers/default/crl").status_code == 200
    _elsewhere(api, update(CertificateRecord).values(wrapped_key=CertificateRecord.wrapped_key))
    assert generation() == before
    r = api.post(f"/api/v1/certificates/{renewed.json()['id']}/revoke", api.admin_key, json={})
    assert r.status_code == 200, r.text
    revoked = generation()
    assert revoked > before
    _elsewhere(api, update(Issuer).where(Issuer.id == "default").values(revoked_at=api.clock()))
    assert generation() > revoked


def _unreadable_certificates(api: Api) -> tuple[dict[str, bytes], Any]:
    """Client certificates from ``default`` that an OpenSSL handshake verifies
    (:func:`_seen_by_openssl`) and cryptography refuses to parse: a subject PrintableString
    with ``_`` and ``@`` (old enterprise CAs write them), a tbsCertificate length in long
    form (BER, not DER), and version 4; and their key.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = issuers.load_issuer(api.services, "default")
    key = ec.generate_private_key(ec.SECP256R1())
    now = api.clock()

    def signed(tbs: bytes) -> bytes:
        # Certificate ::= SEQUENCE { tbsCertificate, ecdsa-with-SHA256, BIT STRING }.
        sig = ca.private_key.sign(tbs, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
        body = tbs + bytes.fromhex("300a06082a8648ce3d040302") + _der(0x03, b"\0" + sig)
        return _der(0x30, body)

    builder = (
        x509.CertificateBuilder()
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    plain = builder.subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
    tbs = plain.sign(ca.private_key, hashes.SHA256()).tbs_certificate_bytes  # type: ignore[arg-type]
    content = tbs[2:] if tbs[1] < 0x80 else tbs[2 + (tbs[1] & 0x7F) :]
    # CN as a PrintableString holding "_" and "@" (cryptography will not encode one either).
    x = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]).public_bytes()
    odd = _der(0x30, _der(0x31, _der(0x30, bytes.fromhex("0603550403") + _der(0x13, b"a_b@c"))))
    assert content.count(x) == 1
    # The version field [0] { INTEGER 2 } of the tbsCertificate's content, made 3.
    assert content.startswith(b"\xa0\x03\x02\x01\x02")
    v4 = b"\xa0\x03\x02\x01\x03" + content[5:]
    return {
        "printable": signed(_der(0x30, content.replace(x, odd))),
        "ber-length": signed(b"\x30\x82" + len(content).to_bytes(2, "big") + content),
        "v4": signed(_der(0x30, v4)),
    }, key


def _seen_by_openssl(ca: x509.Certificate, der: bytes, key: Any, tmp_path: Path) -> bytes:
    """What a server requiring client certificates under ``ca`` gets from a client
    presenting ``der``: a handshake between two in-memory OpenSSL endpoints (as the
    listener's), raising ssl.SSLError if OpenSSL refuses the certificate."""
    import ssl

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    def pem_key(k: Any) -> bytes:
        return bytes(k.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))

    server_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "server")])
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(server_key.public_key())
        .serial_number(1)
        .not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(ca.not_valid_after_utc)
        .sign(server_key, hashes.SHA256())
    )
    files = {
        "s.crt": server_cert.public_bytes(Encoding.PEM),
        "s.key": pem_key(server_key),
        "c.crt": ssl.DER_cert_to_PEM_cert(der).encode(),
        "c.key": pem_key(key),
    }
    for file, content in files.items():
        (tmp_path / file).write_bytes(content)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=ca.public_bytes(Encoding.PEM).decode())
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out)
    for _ in range(4):  # TLS 1.3: the client certificate arrives in the second flight
        for end, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
            peer_in.write(out.read())
    c.write(b"x")
    s_in.write(c_out.read())
    assert s.read(1) == b"x"  # the server verified the client certificate
    return bytes(s.getpeercert(binary_form=True) or b"")


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    size = (n.bit_length() + 7) // 8
    length = bytes([n]) if n < 0x80 else bytes([0x80 | size]) + n.to_bytes(size, "big")
    return bytes([tag]) + length + content


def test_a_client_certificate_openssl_accepts_and_cryptography_cannot_read_is_a_401(
    mtls: Mtls, tmp_path: Path
) -> None:
    # Before: building the request's tls extension raised ValueError (InvalidVersion for
    # v4): a 500 for every request on the connection, an API key's too.
    api = mtls.api
    unreadable, key = _unreadable_certificates(api)
    ca = issuers.load_issuer(api.services, "default").certificate
    for name, der in unreadable.items():
        assert _seen_by_openssl(ca, der, key, tmp_path) == der, name
        with pytest.raises((ValueError, x509.InvalidVersion)):
            x509.load_der_x509_certificate(der).subject  # noqa: B018  # what certctl used
        tls = client_certificate_extension(der, None)
        assert tls["client_cert_name"] is None, name
        mtls.layer.tls = tls
        detail = assert_problem(mtls.whoami(), 401)["detail"]
        assert detail.startswith("client certificate refused: not a readable X.509 certificate"), (
            name,
            detail,
        )
        # An API key on the same connection is not affected.
        r = mtls.client.get(WHOAMI, headers={"Authorization": f"Bearer {api.admin_key}"})
        assert r.status_code == 200, r.text


def test_an_unreadable_ca_in_the_verified_chain_is_refused_while_a_key_is_compromised(
    mtls: Mtls,
) -> None:
    # The CAs of the verified chain are parsed only while some issuer's key is revoked for a
    # compromise (to match its key); one cryptography cannot read made that a 500.
    api = mtls.api
    cert = _client_cert(api, "grace")
    odd_ca = _unreadable_certificates(api)[0]["printable"]
    der = x509.load_pem_x509_certificate(cert["certificate_pem"].encode()).public_bytes(
        Encoding.DER
    )
    mtls.layer.tls = client_certificate_extension(der, (odd_ca,))
    assert mtls.permissions() == ["cert.read"]  # nothing compromised: not even parsed
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    r = api.post("/api/v1/issuers/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    detail = assert_problem(mtls.whoami(), 401)["detail"]
    assert detail.startswith("client certificate refused: a CA of its verified chain is not a "), (
        detail
    )


def test_a_ca_of_the_verified_chain_whose_key_cryptography_cannot_load_is_a_401(
    mtls: Mtls, tmp_path: Path
) -> None:
    # Before: a CA on a curve cryptography lacks (prime239v1, which OpenSSL verifies chains
    # through) parsed, but its public_key() raised UnsupportedAlgorithm while a key was
    # revoked for a compromise: a 500 for every request of such a client.
    api = mtls.api
    key = tmp_path / "int.key"
    run("openssl", "ecparam", "-name", "prime239v1", "-genkey", "-noout", "-out", key)
    pem = run("openssl", "req", "-x509", "-key", key, "-subj", "/CN=odd curve CA", "-days", "1",
              "-addext", "basicConstraints=critical,CA:TRUE").stdout  # fmt: skip
    odd_ca = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    cert = _client_cert(api, "heidi")
    der = x509.load_pem_x509_certificate(cert["certificate_pem"].encode()).public_bytes(
        Encoding.DER
    )
    mtls.layer.tls = client_certificate_extension(der, (odd_ca,))
    assert mtls.permissions() == ["cert.read"]
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    r = api.post("/api/v1/issuers/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    detail = assert_problem(mtls.whoami(), 401)["detail"]
    assert detail == (
        "client certificate refused: a CA of its verified chain holds a key certctl cannot "
        "read (Curve 1.2.840.10045.3.1.4 is not supported), and a compromised issuer key "
        "could be it"
    )


def test_a_mapping_pinned_to_an_issuing_ca_maps_only_certificates_that_ca_signed(
    api: Api,
) -> None:
    """Two CAs in tls.client-ca with the very same subject: a mapping's ``issuer-fingerprint``
    (resolved to the CA certificate) gives its roles to certificates its key signed only.

    Before, any trusted CA's certificate with the mapped subject got the mapping's roles.
    """
    api.create_role("r-mtls", ["cert.read"])
    api.create_role("r-pinned", ["metrics.read"])
    for ca in ("team-a", "team-b"):
        body = {"id": ca, "common_name": "Team CA"}  # one subject for both
        assert api.post("/api/v1/issuers", api.admin_key, json=body).status_code == 201
    team_a = issuers.load_issuer(api.services, "team-a").certificate
    mappings = (
        ClientCertMapping("CN=alice", ("r-pinned",), issuer=team_a),
        ClientCertMapping("CN=*", ("r-mtls",)),  # no pin: as before
        ClientCertMapping("CN=bob", ("r-pinned",), issuer=team_a),
    )
    layer = Presenting(create_app(api.services, client_cert_mappings=mappings))
    with TestClient(layer, base_url="https://testserver", raise_server_exceptions=False) as client:
        mtls = Mtls(api, layer, client)
        alice_a, alice_b = (_client_cert(api, "alice", ca) for ca in ("team-a", "team-b"))
        for resumed in (False, True):
            mtls.present(alice_a["certificate_pem"], "team-a", resumed=resumed)
            assert mtls.permissions() == ["cert.read", "metrics.read"]
            mtls.present(alice_b["certificate_pem"], "team-b", resumed=resumed)
            assert mtls.permissions() == ["cert.read"]  # the unpinned CN=* only
    # Only a pinned mapping names it: another CA's certificate is not mapped at all.
    pinned_only = (ClientCertMapping("CN=bob", ("r-pinned",), issuer=team_a),)
    layer = Presenting(create_app(api.services, client_cert_mappings=pinned_only))
    with TestClient(layer, base_url="https://testserver", raise_server_exceptions=False) as client:
        mtls = Mtls(api, layer, client)
        bob_a, bob_b = (_client_cert(api, "bob", ca) for ca in ("team-a", "team-b"))
        mtls.present(bob_a["certificate_pem"], "team-a")
        assert mtls.permissions() == ["metrics.read"]
        for resumed in (False, True):
            mtls.present(bob_b["certificate_pem"], "team-b", resumed=resumed)
            body = assert_problem(mtls.whoami(), 401)
            assert body["detail"] == (
                "client certificate subject CN=bob is not mapped to any role by "
                "auth.client-cert-mappings"
            )
    refused = [e for e in api.audit() if e["action"] == "auth.failure"]
    assert refused, "the refusals are audited"
    assert "signed by another CA" in refused[-1]["detail"], refused[-1]


@contextlib.contextmanager
def _typo_mapped(
    api: Api,
) -> Iterator[tuple[TestClient, Mtls, dict[str, Any], dict[str, Any]]]:
    """An app mapping ``CN=typo`` to ``r-mtls`` and the typo ``r-opertor``, ``CN=fine`` to
    ``r-mtls`` alone (``cert.read``): its client, and a client certificate of each."""
    api.create_role("r-mtls", ["cert.read"])
    mappings = (
        ClientCertMapping("CN=typo", ("r-mtls", "r-opertor")),
        ClientCertMapping("CN=fine", ("r-mtls",)),
    )
    layer = Presenting(create_app(api.services, client_cert_mappings=mappings))
    with TestClient(layer, base_url="https://testserver", raise_server_exceptions=False) as client:
        yield client, Mtls(api, layer, client), _client_cert(api, "typo"), _client_cert(api, "fine")


def test_a_403_names_a_mapped_role_that_does_not_exist(api: Api) -> None:
    """A typo in a mapping's roles (``r-opertor``) gave certificates no permissions from it
    and 403s saying only ``missing permission …``: the 403 now says which of its own mapped
    roles does not exist; a certificate whose roles all exist gets the plain refusal."""
    with _typo_mapped(api) as (client, mtls, typo, fine):
        mtls.present(typo["certificate_pem"], "default")
        assert mtls.permissions() == ["cert.read"]
        for _ in range(2):  # read from the store, then remembered
            detail = assert_problem(client.get("/api/v1/issuers"), 403)["detail"]
            assert detail == (
                "missing permission issuer.read (role r-opertor of this client certificate's "
                "mapping does not exist)"
            )
        mtls.present(fine["certificate_pem"], "default")
        detail = assert_problem(client.get("/api/v1/issuers"), 403)["detail"]
        assert detail == "missing permission issuer.read"
        # Created later through the API, the role applies from the next request on.
        api.create_role("r-opertor", ["issuer.read"])
        mtls.present(typo["certificate_pem"], "default")
        assert client.get("/api/v1/issuers").status_code == 200
        detail = assert_problem(client.get("/api/v1/audit"), 403)["detail"]
        assert detail == "missing permission audit.read"


def test_a_mapped_role_that_does_not_exist_is_warned_about_at_start(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    api.create_role("r-mtls-readers", ["cert.read"])
    config = ServerConfig.model_validate(
        {
            "auth": {
                "client-cert-mappings": [
                    {"subject": "CN=*,OU=ops", "roles": ["r-opertor", "r-viewer"]},
                    {"subject": "CN=ci", "roles": ["r-mtls-reader", "zzz"]},
                    {"subject": "CN=ok", "roles": ["r-mtls-readers"]},
                ]
            }
        }
    )
    with caplog.at_level(logging.WARNING, logger="certctl.server"):
        warn_unknown_mapped_roles(config, api.services)
    assert [r.getMessage() for r in caplog.records] == [
        "auth.client-cert-mappings.0 (subject 'CN=*,OU=ops') names role r-opertor, which does "
        "not exist (did you mean r-operator?): certificates it maps get no permissions from "
        "it until a role of that name is created",
        "auth.client-cert-mappings.1 (subject 'CN=ci') names role r-mtls-reader, which does "
        "not exist (did you mean r-mtls-readers?): certificates it maps get "
        "no permissions from it until a role of that name is created",
        "auth.client-cert-mappings.1 (subject 'CN=ci') names role zzz, which does not exist "
        "(roles: r-admin, r-auditor, r-metrics-read, r-mtls-readers, r-operator, r-viewer): "
        "certificates it maps get no permissions from it until a role of that name is created",
    ]


def test_whoami_lists_the_mapped_roles_that_do_not_exist(api: Api) -> None:
    """whoami listed a mapping's typo (``r-opertor``) among the roles with nothing saying it is
    no role: ``missing_roles`` names it, and empties once the role is created (even one with
    no permissions, which leaves the rest of the answer as it was)."""
    with _typo_mapped(api) as (_client, mtls, typo, fine):
        mtls.present(typo["certificate_pem"], "default")
        for _ in range(2):  # read from the store, then remembered
            assert mtls.whoami().json() == {
                "actor_id": "cert:CN=typo",
                "roles": ["r-mtls", "r-opertor"],
                "permissions": ["cert.read"],
                "auth_method": "client_certificate",
                "missing_roles": ["r-opertor"],
            }
        mtls.present(fine["certificate_pem"], "default")
        assert mtls.whoami().json()["missing_roles"] == []
        api.create_role("r-opertor", [])
        mtls.present(typo["certificate_pem"], "default")
        body = mtls.whoami().json()
        assert (body["roles"], body["missing_roles"]) == (["r-mtls", "r-opertor"], [])


def test_a_services_403_names_a_mapped_role_that_does_not_exist(api: Api) -> None:
    """Only the route's own check said the mapping's role does not exist: a service's refusal
    (creating a role above the caller's permissions) said "you lack" and no more. Every 403
    of such a certificate now says it, and its audit row too."""
    api.create_role("r-mtls-maker", ["auth.role.create"])
    mappings = (ClientCertMapping("CN=typo", ("r-mtls-maker", "r-opertor")),)
    layer = Presenting(create_app(api.services, client_cert_mappings=mappings))
    with TestClient(layer, base_url="https://testserver", raise_server_exceptions=False) as client:
        mtls = Mtls(api, layer, client)
        mtls.present(_client_cert(api, "typo")["certificate_pem"], "default")
        role = {"id": "r-x", "name": "x", "permissions": ["audit.read"]}
        detail = assert_problem(client.post("/api/v1/auth/roles", json=role), 403)["detail"]
        hint = "(role r-opertor of this client certificate's mapping does not exist)"
        lack = "cannot create this role: it needs permission(s) you lack: audit.read"
        assert detail == f"{lack} {hint}"
        refused = [e for e in api.audit() if e["action"] == "role.create"]
        assert refused[0]["detail"] == detail, refused  # newest first
        # The route's own check, once: not twice.
        detail = assert_problem(client.get("/api/v1/issuers"), 403)["detail"]
        assert detail == f"missing permission issuer.read {hint}"


def test_a_revoked_issuer_whose_stored_certificate_is_unreadable_still_refuses_under_it(
    mtls: Mtls,
) -> None:
    """Its PEM cut short in the database (a restore, a hand edit): every client certificate
    whose answer was not remembered, under any CA, answered 500. It is judged by the subject
    stored beside it: those under it are refused, the others authenticate.
    """
    api = mtls.api
    for sub in ("sub", "other"):
        r = api.post(
            "/api/v1/issuers",
            api.admin_key,
            json={"id": sub, "common_name": sub, "parent": "default"},
        )
        assert r.status_code == 201, r.text
    erin, frank = _client_cert(api, "erin", "sub"), _client_cert(api, "frank", "other")
    r = api.post("/api/v1/issuers/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    issuers.load_issuer(api.services, "sub")  # held by this process, as presented below
    pem = api.get("/api/v1/issuers/sub/ca.pem").text
    _elsewhere(api, update(Issuer).where(Issuer.id == "sub").values(certificate_pem=pem[:100]))
    revoked = "client certificate revoked: a CA above it was revoked"
    for resumed in (False, True):
        mtls.present(erin["certificate_pem"], "sub", "default", resumed=resumed)
        assert assert_problem(mtls.whoami(), 401)["detail"] == revoked
        mtls.present(frank["certificate_pem"], "other", "default", resumed=resumed)
        assert mtls.permissions() == ["cert.read"]


def test_an_unmapped_subject_is_named_with_its_control_characters_escaped(mtls: Mtls) -> None:
    """A CN is its holder's text: a newline, a terminal escape or a bidi override in it went
    raw into the 401's detail, for whatever logs or prints that detail (a proxy, a script)."""
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            x509.NameAttribute(NameOID.COMMON_NAME, "a\nINFO forged\x1b[31m\u202ec\\d"),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    mtls.present(cert.public_bytes(Encoding.PEM).decode(), resumed=True)
    body = assert_problem(mtls.whoami(), 401)
    shown = r"CN=a\0AINFO forged\1B[31m\E2\80\AEc\\d,O=Example"
    assert body["detail"] == (
        f"client certificate subject {shown} is not mapped to any role by auth.client-cert-mappings"
    )
    # RFC 4514 hex escapes: the subject as shown is one a mapping can be written as.
    assert ClientCertMapping(shown, ("r-mtls",)).matches(name.rfc4514_string())


def test_a_client_certificate_whose_actor_passes_64_characters_is_served_and_audited(
    mtls: Mtls,
) -> None:
    # cert:CN=<60 characters> is 68: on PostgreSQL the VARCHAR(64) columns refused it, so its
    # issuance was a 500 and its 403 went unaudited (a warning in the log).
    api = mtls.api
    r = api.request(
        "PUT",
        "/api/v1/auth/roles/r-mtls",
        api.admin_key,
        json={"permissions": ["cert.read", "cert.issue"]},
    )
    assert r.status_code == 200, r.text
    name = "ops-automation-runner-for-prod-cluster-7.example.internal"
    mtls.present(_client_cert(api, name)["certificate_pem"], "default")
    actor = f"cert:CN={name}"
    assert len(actor) > 64
    r = mtls.client.post(
        "/api/v1/certificates", json={"issuer": "default", "common_name": "x.example.com"}
    )
    assert r.status_code == 201, r.text
    issued = r.json()["id"]
    assert mtls.client.get(f"/api/v1/certificates/{issued}").json()["created_by"] == actor
    assert_problem(mtls.client.post("/api/v1/issuers", json={"id": "nope"}), 403)
    events = [(e["actor"], e["action"], e["outcome"]) for e in api.audit()[:2]]
    assert events == [
        (actor, "issuer.create", "denied"),
        (actor, "certificate.issue", "success"),
    ]


def test_an_imported_client_certificate_keeps_its_mapped_roles_and_is_revocable(
    mtls: Mtls, tmp_path: Path
) -> None:
    """Its importer did not have it issued: recording it must not cut its login to theirs."""
    from tests.api.test_certificate_import import OpensslCa

    api = mtls.api
    old = OpensslCa(tmp_path, "old", "/CN=Old Client CA")
    r = api.post(
        "/api/v1/issuers",
        api.admin_key,
        json={
            "id": "old",
            "certificate_pem": old.crt.read_text(),
            "private_key_pem": old.key.read_text(),
        },
    )
    assert r.status_code == 201, r.text
    pem = old.leaf("ci-admin", "clientAuth").read_text()
    mtls.present(pem, "old")
    assert mtls.permissions() == ["cert.read"]  # signed before: the mapped roles in full
    importer = api.key_with_permissions("importer", ["cert.issue"])  # no cert.read
    r = api.post("/api/v1/certificates/import", importer, json={"certificate_pem": pem})
    assert r.status_code == 201, r.text
    assert mtls.permissions() == ["cert.read"]
    cert_id = r.json()["items"][0]["id"]
    r = api.post(f"/api/v1/certificates/{cert_id}/revoke", api.admin_key, json={})
    assert r.status_code == 200, r.text
    assert assert_problem(mtls.whoami(), 401)["detail"] == "client certificate revoked"


def test_a_mapped_roles_constraints_limit_what_the_certificate_issues(mtls: Mtls) -> None:
    # The roles a mapping gives are roles as an API key's are: their constraints hold.
    api = mtls.api
    mine = _client_cert(api, "team-a-ci")
    mtls.present(mine["certificate_pem"], "default")
    body = {"permissions": ["cert.issue"], "constraints": {"names": ["*.team-a.example.internal"]}}
    r = api.request("PUT", "/api/v1/auth/roles/r-mtls", api.admin_key, json=body)
    assert r.status_code == 200, r.text
    issue = {"common_name": "web.team-a.example.internal"}
    assert mtls.client.post("/api/v1/certificates", json=issue).status_code == 201
    r = mtls.client.post("/api/v1/certificates", json={"common_name": "db.example.com"})
    detail = assert_problem(r, 403)["detail"]
    assert detail.startswith("db.example.com: not allowed by the constraints of role(s) r-mtls")


def test_a_client_certificate_issues_no_more_than_the_constrained_actor_that_had_it_issued(
    mtls: Mtls,
) -> None:
    # As its permissions are capped by its requester's: team A's key had a certificate
    # issued for a name of its own that a mapping gives unconstrained cert.issue; it issues
    # team A's names only, where it issued any.
    api = mtls.api
    body = {
        "id": "team-a",
        "permissions": ["cert.issue", "cert.read"],
        "constraints": {"names": ["*.team-a.example.internal"]},
    }
    assert api.post("/api/v1/auth/roles", api.admin_key, json=body).status_code == 201
    team_key = api.actor_key("ci-a", ["team-a"])
    mine = _client_cert(api, "ci.team-a.example.internal", key=team_key)
    r = api.request(
        "PUT",
        "/api/v1/auth/roles/r-mtls",
        api.admin_key,
        json={"permissions": ["cert.issue", "cert.read"]},
    )
    assert r.status_code == 200, r.text
    mtls.present(mine["certificate_pem"], "default")
    assert mtls.permissions() == ["cert.issue", "cert.read"]
    issue = {"common_name": "web.team-a.example.internal"}
    assert mtls.client.post("/api/v1/certificates", json=issue).status_code == 201
    r = mtls.client.post("/api/v1/certificates", json={"common_name": "db.example.com"})
    assert assert_problem(r, 403)["detail"] == (
        "db.example.com: not allowed by the constraints of role(s) team-a (the roles of the "
        "actor that had your client certificate issued, which cap it; one of them must allow "
        "the issuer and every name)"
    )
