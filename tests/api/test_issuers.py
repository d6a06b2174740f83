"""/api/v1/issuers: the default CA, new roots and intermediates, imports, public ca.pem/ca.der."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import event, select, text, update

from certctl.api.issuer_routes import CA_READ_THREADS
from certctl.errors import CertctlError, Conflict
from certctl.pki import (
    CertificateAuthority,
    KeyType,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    format_serial,
    generate_private_key,
    key_to_pem,
    verify_certificate,
)
from certctl.services import crls, issuer_revocation, issuers, revocation
from certctl.services.context import Services
from certctl.store.models import Issuer
from tests._tools import ok, openssl_req, run
from tests.api.conftest import Api, assert_problem

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
    from httpx2 import Response
from tests.unit.pki.conftest import ca_without_usage

ISSUERS = "/api/v1/issuers"


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_default_issuer_exists(api: Api) -> None:
    r = api.get(ISSUERS, api.admin_key)
    assert r.status_code == 200
    assert [i["id"] for i in r.json()["items"]] == ["default"]
    default = api.get(f"{ISSUERS}/default", api.admin_key).json()
    assert set(default) == {
        "id",
        "name",
        "subject",
        "key_type",
        "not_after",
        "created_at",
        "certificate_pem",
        "chain_pem",
        "status",
        "revoked_at",
        "revocation_reason",
        "issuer_revoked",
    }
    assert default["issuer_revoked"] is None
    assert (default["status"], default["revoked_at"], default["revocation_reason"]) == (
        "active",
        None,
        None,
    )
    assert default["key_type"] == "ec-p256"
    assert default["chain_pem"] == ""
    assert "PRIVATE" not in r.text
    cert = _cert(default["certificate_pem"])
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert_problem(api.get(f"{ISSUERS}/nope", api.admin_key), 404)


def test_ca_pem_and_ca_der_are_public(api: Api, tmp_path: Path) -> None:
    pem = api.get(f"{ISSUERS}/default/ca.pem")
    assert pem.status_code == 200
    assert pem.headers["content-type"] == "application/x-pem-file"
    default = api.get(f"{ISSUERS}/default", api.admin_key).json()
    assert pem.text == default["certificate_pem"]
    assert_problem(api.get(f"{ISSUERS}/nope/ca.pem"), 404)
    # ca.der: what a caIssuers URI names (RFC 5280 4.2.2.1): one certificate, DER, pkix-cert.
    r = api.get(f"{ISSUERS}/default/ca.der")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/pkix-cert"
    assert r.content == _cert(pem.text).public_bytes(Encoding.DER)
    der = tmp_path / "ca.der"
    der.write_bytes(r.content)
    # openssl reads it as DER, and writes back the very certificate ca.pem serves.
    assert ok(run("openssl", "x509", "-inform", "DER", "-in", der)).stdout == pem.text
    # The same caching as ca.pem, with a key or without: a public route never reads the key,
    # so the no-store added to authenticated answers never applies to it.
    for key in (None, api.admin_key):
        der_headers = api.get(f"{ISSUERS}/default/ca.der", key).headers
        pem_headers = api.get(f"{ISSUERS}/default/ca.pem", key).headers
        assert der_headers["cache-control"] == pem_headers["cache-control"], key
        assert der_headers["cache-control"] == "public, max-age=3600", key
    assert_problem(api.get(f"{ISSUERS}/nope/ca.der"), 404)


def test_ca_routes_say_how_long_to_cache_and_answer_if_none_match(api: Api) -> None:
    """ca.pem and ca.der carry explicit freshness and a strong ETag, and revalidate with a 304.

    Before, neither sent Cache-Control nor ETag: every TLS client following a caIssuers URI,
    and every CDN or proxy in front, fetched the whole certificate again (or kept it for a
    default of its own).
    """
    paths = (f"{ISSUERS}/default/ca.pem", f"{ISSUERS}/default/ca.pem?chain=true",
             f"{ISSUERS}/default/ca.der")  # fmt: skip
    tags: dict[str, bytes] = {}
    for path in paths:
        r = api.get(path)
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "public, max-age=3600", path
        etag = r.headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{64}"', etag), etag  # strong (no W/): a SHA-256
        assert api.get(path).headers["etag"] == etag  # the same bytes, the same tag
        tags[etag] = r.content
        # A client or cache holding it: 304, no body, the same validators and freshness.
        for held in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            again = api.get(path, headers={"If-None-Match": held})
            assert again.status_code == 304, (path, held)
            assert again.content == b""
            assert again.headers["etag"] == etag
            assert again.headers["cache-control"] == "public, max-age=3600"
            assert "content-type" not in again.headers
        changed = api.get(path, headers={"If-None-Match": '"other"'})
        assert changed.status_code == 200
        assert changed.content == r.content
        # HEAD (Starlette answers it through the GET route): the same headers, no body.
        head = api.request("HEAD", path)
        assert head.status_code == 200
        assert head.content == b""
        assert {k: head.headers[k] for k in ("etag", "cache-control", "content-type")} == {
            k: r.headers[k] for k in ("etag", "cache-control", "content-type")
        }
        assert api.request("HEAD", path, headers={"If-None-Match": etag}).status_code == 304
    # One tag per body: the PEM and the DER differ (a root's chain=true is its ca.pem).
    assert len(tags) == len(set(tags.values())) == 2
    # An unknown issuer is still a 404, whatever the client holds.
    assert_problem(api.get(f"{ISSUERS}/nope/ca.der", headers={"If-None-Match": "*"}), 404)


def test_ca_routes_are_never_cached_past_the_certificates_notafter(api: Api) -> None:
    """Within an hour of its notAfter, max-age ends with the certificate; after it, 0.

    A cache keeping an hour-old copy would keep it past its end, and a client trusting it
    then would fail its chains while the server already serves the renewed one.
    """
    not_after = _cert(api.get(f"{ISSUERS}/default/ca.pem").text).not_valid_after_utc
    api.clock.now = not_after - timedelta(minutes=10)
    for path in (f"{ISSUERS}/default/ca.pem", f"{ISSUERS}/default/ca.der"):
        assert api.get(path).headers["cache-control"] == "public, max-age=600"
    api.clock.now = not_after + timedelta(seconds=1)
    assert api.get(f"{ISSUERS}/default/ca.der").headers["cache-control"] == "public, max-age=0"


def _damage_key(api: Api, issuer_id: str) -> None:
    """Flip a bit of the issuer's wrapped key (no KEK opens it now), then drop it from the
    cache, as in a process that has not loaded it yet."""
    with api.services.engine.begin() as connection:
        blob = connection.scalar(select(Issuer.wrapped_key).where(Issuer.id == issuer_id))
        assert blob is not None
        damaged = blob[:-1] + bytes([blob[-1] ^ 1])
        connection.execute(update(Issuer).where(Issuer.id == issuer_id).values(wrapped_key=damaged))
    api.services.forget_issuer(issuer_id)


def test_ca_routes_never_unwrap_the_issuers_key(api: Api) -> None:
    """ca.pem and ca.der serve the certificate without decrypting the CA key.

    Before, they loaded the whole CA: a process's first request for an issuer unwrapped and
    parsed its key (0.5 s for RSA-4096) on the event loop, for anyone, and a key that could
    not be unwrapped (another KEK, a damaged row) made the public certificate a 500.
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "sealed", "validity": "2Y"})
    assert r.status_code == 201, r.text
    _damage_key(api, "sealed")
    with pytest.raises(CertctlError, match="cannot unwrap the stored key"):
        issuers.load_issuer(api.services, "sealed")
    pem = api.get(f"{ISSUERS}/sealed/ca.pem")
    assert pem.status_code == 200, pem.text
    assert pem.text == r.json()["certificate_pem"]
    der = api.get(f"{ISSUERS}/sealed/ca.der")
    assert der.status_code == 200, der.text
    assert der.content == _cert(pem.text).public_bytes(Encoding.DER)
    assert api.services.cached_issuer("sealed") is None  # nor cached a CA with its key


def test_an_rsa_issuer_reloaded_from_the_store_signs_with_its_own_key(api: Api) -> None:
    """An RSA issuer's key read back from the store (as by a new process) is the CA's key.

    The reload skips OpenSSL's RSA key check (250 ms for RSA-4096, on the request that loads
    the issuer after every cache drop), relying on the check made at creation and on AES-GCM
    having authenticated the bytes: what comes back must still be the key of its certificate
    and sign what the certificate's key verifies.
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "rsa-ca", "key_type": "rsa-2048"})
    assert r.status_code == 201, r.text
    api.services.forget_issuer("rsa-ca")  # as a process that has not loaded it yet
    ca, revoked = issuers.load_issuer_state(api.services, "rsa-ca")
    assert revoked is None
    assert ca.private_key.public_key() == ca.certificate.public_key()
    leaf = _cert(api.issue(issuer="rsa-ca", common_name="rsa-leaf.example.com")["certificate_pem"])
    leaf.verify_directly_issued_by(_cert(r.json()["certificate_pem"]))


def _store_certificate(api: Api, issuer_id: str, pem: str) -> None:
    """Put ``pem`` on the issuer's row behind certctl's back, as a process loading it afresh."""
    with api.services.engine.begin() as connection:
        connection.execute(update(Issuer).where(Issuer.id == issuer_id).values(certificate_pem=pem))
    api.services.forget_issuer(issuer_id)


def test_an_issuer_whose_stored_certificate_is_not_its_keys_signs_nothing(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate swapped in the store (another CA's, a foreign name) is refused at load.

    Before, the issuer was loaded as stored: with write access to the database alone one
    could put another CA's certificate on an issuer, and certctl signed leaves naming that
    CA as their issuer, with a key that is not that CA's.
    """
    for ca in ("mine", "foreign"):
        r = api.post(ISSUERS, api.admin_key, json={"id": ca, "common_name": f"{ca} CA"})
        assert r.status_code == 201, r.text
    original = api.get(f"{ISSUERS}/mine/ca.pem").text
    foreign = api.get(f"{ISSUERS}/foreign/ca.pem").text
    api.issue(issuer="mine", common_name="before.example")  # loaded and cached: as stored

    _store_certificate(api, "mine", foreign)
    before = api.counts()
    caplog.set_level("ERROR", logger="certctl.services")
    body = {"issuer": "mine", "common_name": "after.example"}
    for _ in range(2):
        refused = assert_problem(api.post(CERTS, api.admin_key, json=body), 409)
        assert refused["detail"] == (
            "issuer mine: its key does not match its certificate (CN=foreign CA), which was "
            "changed in the database outside certctl; it signs nothing: restore its "
            "certificate or use another issuer"
        )
    assert api.counts() == before
    assert api.services.cached_issuer("mine") is None
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors  # once, not once per request
    assert "issuer mine: its key does not match its certificate" in errors[0].getMessage()
    # Twin: the certificate restored, the issuer signs again (nothing was remembered).
    _store_certificate(api, "mine", original)
    leaf = _cert(api.issue(issuer="mine", common_name="again.example")["certificate_pem"])
    leaf.verify_directly_issued_by(_cert(original))


@pytest.mark.parametrize(
    ("constraints", "reason"),
    [
        (
            x509.BasicConstraints(ca=False, path_length=None),
            "certificate is not a CA (BasicConstraints CA:FALSE)",
        ),
        (None, "CA certificate has no BasicConstraints extension"),
    ],
    ids=["CA:FALSE", "no BasicConstraints"],
)
def test_an_issuer_whose_stored_certificate_is_no_ca_is_a_conflict_naming_it(
    api: Api,
    caplog: pytest.LogCaptureFixture,
    constraints: x509.BasicConstraints | None,
    reason: str,
) -> None:
    """Its own key's certificate, but not a CA's: the store is at fault, not the request.

    Before, the CA object's own checks answered 400 "Invalid request: certificate is not a
    CA (BasicConstraints CA:FALSE)", naming no issuer, as if the caller had sent it.
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "mine", "common_name": "mine CA"})
    assert r.status_code == 201, r.text
    original = api.get(f"{ISSUERS}/mine/ca.pem").text
    key = issuers.load_issuer(api.services, "mine").private_key
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "mine CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
    )
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    not_a_ca = builder.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM).decode()

    _store_certificate(api, "mine", not_a_ca)
    before = api.counts()
    caplog.set_level("ERROR", logger="certctl.services")
    body = {"issuer": "mine", "common_name": "after.example"}
    for _ in range(2):
        refused = assert_problem(api.post(CERTS, api.admin_key, json=body), 409)
        assert refused["detail"] == (
            f"issuer mine: its stored certificate (CN=mine CA) cannot sign: {reason}; it "
            "signs nothing: restore its certificate or use another issuer"
        )
    assert api.counts() == before
    assert api.services.cached_issuer("mine") is None
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors  # once, not once per request
    assert errors[0].getMessage().startswith("issuer mine: its stored certificate (CN=mine CA)")
    _store_certificate(api, "mine", original)
    leaf = _cert(api.issue(issuer="mine", common_name="again.example")["certificate_pem"])
    leaf.verify_directly_issued_by(_cert(original))


def test_ca_routes_read_the_store_off_the_event_loop(api: Api) -> None:
    """The public routes' store reads (a first request, an unknown id) run in a worker thread.

    Before, they ran on the event loop: a burst of anonymous requests for unknown issuers
    stalled every other request of the process (in-process, PostgreSQL: 300 such requests
    stalled the loop for 274 ms).
    """
    api.services.forget_issuer("default")
    on_loop: list[str] = []

    def where(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a worker thread
        on_loop.append(statement)

    event.listen(api.services.engine, "before_cursor_execute", where)
    try:
        for path, status in (("default/ca.der", 200), ("default/ca.pem", 200),
                             ("nope/ca.der", 404), ("nope/ca.pem", 404)):  # fmt: skip
            assert api.get(f"{ISSUERS}/{path}").status_code == status, path
    finally:
        event.remove(api.services.engine, "before_cursor_execute", where)
    assert on_loop == []


def test_a_flood_of_unknown_issuer_ids_reads_in_a_few_threads(api: Api) -> None:
    """Anonymous misses use their own few threads, not the pool issuance and CRLs share."""
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def slow_read(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.02)  # a store that answers slowly: the reads overlap
        with lock:
            in_flight[0] -= 1

    async def flood() -> list[int]:
        transport = httpx2.ASGITransport(app=api.client.app)
        async with httpx2.AsyncClient(transport=transport, base_url="https://t") as client:
            answers = await asyncio.gather(
                *(client.get(f"{ISSUERS}/nope-{i}/ca.der") for i in range(12))
            )
        return [r.status_code for r in answers]

    event.listen(api.services.engine, "before_cursor_execute", slow_read)
    try:
        assert anyio.run(flood) == [404] * 12
    finally:
        event.remove(api.services.engine, "before_cursor_execute", slow_read)
    assert 1 <= most[0] <= CA_READ_THREADS


def test_a_flood_of_crl_requests_reads_in_a_few_threads(api: Api) -> None:
    """Anonymous CRL fetches use their own few threads too (were the shared pool of 40)."""
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def slow_read(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1

    async def flood() -> list[int]:
        transport = httpx2.ASGITransport(app=api.client.app)
        async with httpx2.AsyncClient(transport=transport, base_url="https://t") as client:
            answers = await asyncio.gather(
                *(client.get(f"{ISSUERS}/{issuer}/crl") for issuer in ["default", "nope"] * 6)
            )
        return [r.status_code for r in answers]

    event.listen(api.services.engine, "before_cursor_execute", slow_read)
    try:
        assert sorted(anyio.run(flood)) == [200] * 6 + [404] * 6
    finally:
        event.remove(api.services.engine, "before_cursor_execute", slow_read)
    assert 1 <= most[0] <= CA_READ_THREADS


def test_ca_routes_follow_a_renewal_elsewhere(api: Api) -> None:
    """Another replica renews the CA: this process serves the new certificate at its next
    request (the credential generation moved), not the old one until its periodic check
    (refresh_cached_issuers, every minute)."""
    api.services.forget_issuer("default")  # what this process serves comes from the store
    old = api.get(f"{ISSUERS}/default/ca.der")
    other = Services(api.services.engine, api.services.sessions, api.services.wrapper)
    ca = issuers.load_issuer(other, "default")
    renewed, wrote = issuers.renew_root_issuer(
        other, "default", ca, validity=timedelta(days=800), now=api.clock()
    )
    assert wrote
    new = api.get(f"{ISSUERS}/default/ca.der", headers={"If-None-Match": old.headers["etag"]})
    assert new.status_code == 200
    assert new.content == renewed.certificate.public_bytes(Encoding.DER)
    assert new.headers["etag"] != old.headers["etag"]
    pem = api.get(f"{ISSUERS}/default/ca.pem").text
    assert _cert(pem) == renewed.certificate
    assert issuers.refresh_cached_issuers(api.services) == []  # nothing left to catch up


def test_create_root_and_intermediate(api: Api) -> None:
    root = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "root-2",
            "common_name": "Example Root",
            "key_type": "ec-p384",
            "validity": "10Y",
        },
    )
    assert root.status_code == 201, root.text
    assert root.json()["key_type"] == "ec-p384"
    root_cert = _cert(root.json()["certificate_pem"])
    assert root_cert.subject == root_cert.issuer
    assert root_cert.subject.rfc4514_string() == "CN=Example Root"

    inter = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "issuing-1",
            "subject": "CN=Example Issuing 1,O=Example",
            "parent": "root-2",
            "validity": "2Y",
            "path_length": 0,
        },
    )
    assert inter.status_code == 201, inter.text
    assert inter.json()["warnings"] == []
    inter_cert = _cert(inter.json()["certificate_pem"])
    assert inter_cert.issuer == root_cert.subject
    inter_cert.verify_directly_issued_by(root_cert)
    assert _cert(inter.json()["chain_pem"]) == root_cert
    bc = inter_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca
    assert bc.path_length == 0

    # Asked to outlive its parent, an intermediate ends with it, and the answer says so.
    long = api.post(
        ISSUERS, api.admin_key, json={"id": "issuing-2", "parent": "root-2", "validity": "20Y"}
    )
    assert long.status_code == 201, long.text
    assert long.json()["not_after"] == root.json()["not_after"]
    assert [w for w in long.json()["warnings"] if "clipped to the issuer's notAfter" in w]
    assert "warnings" not in api.get(f"{ISSUERS}/issuing-2", api.admin_key).json()
    # Asked for no validity, an intermediate gets 5Y or what its parent has left, silently
    # (the 5Y default was clipped with a warning under any parent of less than 5 years).
    short = api.post(ISSUERS, api.admin_key, json={"id": "short-root", "validity": "400D"})
    assert short.status_code == 201, short.text
    for parent, ends in (("short-root", short.json()["not_after"]), ("root-2", None)):
        child = api.post(ISSUERS, api.admin_key, json={"id": f"{parent}-sub", "parent": parent})
        assert child.status_code == 201, child.text
        assert child.json()["warnings"] == []
        end = datetime.fromisoformat(child.json()["not_after"])
        assert end == (
            datetime.fromisoformat(ends) if ends else api.clock() + timedelta(days=5 * 365)
        )

    assert {i["id"] for i in api.get(ISSUERS, api.admin_key).json()["items"]} == {
        "default",
        "root-2",
        "issuing-1",
        "issuing-2",
        "short-root",
        "short-root-sub",
        "root-2-sub",
    }
    # A leaf from the intermediate chains to the new root.
    leaf = api.issue(issuer="issuing-1", common_name="app.example.com")
    leaf_cert = _cert(leaf["certificate_pem"])
    assert _cert(leaf["chain_pem"]) == inter_cert
    verify_certificate(
        leaf_cert,
        trust=[root_cert],
        untrusted=[inter_cert],
        hostname="app.example.com",
        now=datetime.now(UTC),
    )
    # The public ca.pem of the intermediate is its own certificate.
    assert _cert(api.get(f"{ISSUERS}/issuing-1/ca.pem").text) == inter_cert
    assert api.get(f"{ISSUERS}/issuing-1/ca.der").content == inter_cert.public_bytes(Encoding.DER)


def test_create_issuer_conflicts_and_bad_input(api: Api) -> None:
    before = api.counts()
    assert_problem(api.post(ISSUERS, api.admin_key, json={"id": "default"}), 409)
    assert_problem(api.post(ISSUERS, api.admin_key, json={"id": "x", "parent": "nope"}), 404)
    r = api.post(ISSUERS, api.admin_key, json={"id": "x", "key_type": "rsa-1024"})
    assert "rsa-1024" in assert_problem(r, 400)["detail"]
    r = api.post(ISSUERS, api.admin_key, json={"id": "x", "validity": "5Q"})
    assert "5Q" in assert_problem(r, 400)["detail"]
    assert_problem(api.post(ISSUERS, api.admin_key, json={"id": "UPPER"}), 400)
    assert_problem(api.post(ISSUERS, api.admin_key, json={"id": "x", "subject": "nonsense"}), 400)
    assert api.counts() == before


def test_import_pem_pair(api: Api) -> None:
    key = generate_private_key(KeyType.EC_P256)
    now = datetime.now(UTC)
    ca_cert = create_root_ca(
        key, common_name_dn("Imported Root"), validity=timedelta(days=3650), now=now
    ).certificate
    cert_pem = ca_cert.public_bytes(Encoding.PEM).decode()
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "imported",
            "name": "Imported",
            "certificate_pem": cert_pem,
            "private_key_pem": key_to_pem(key).decode(),
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "Imported"
    assert r.json()["certificate_pem"] == cert_pem
    assert "private_key_pem" not in r.json()
    assert "PRIVATE KEY" not in api.get(f"{ISSUERS}/imported", api.admin_key).text
    assert api.get(f"{ISSUERS}/imported/ca.pem").text == cert_pem

    leaf = _cert(api.issue(issuer="imported", common_name="imp.example.com")["certificate_pem"])
    leaf.verify_directly_issued_by(ca_cert)
    assert any(e["action"] == "issuer.import" for e in api.audit())
    assert _stored_serials(api)["imported"] == format_serial(ca_cert.serial_number)


def _stored_serials(api: Api) -> dict[str, str | None]:
    """Each issuer's serial as stored beside its certificate (migration 0025)."""
    with api.services.engine.connect() as connection:
        return {i: s for i, s in connection.execute(select(Issuer.id, Issuer.serial))}


def test_created_issuers_store_their_serial(api: Api) -> None:
    """A root, an intermediate and the bootstrapped default: what a parent's CRL lists."""
    made = {"default": _cert(api.get(f"{ISSUERS}/default/ca.pem").text)}
    r = api.post(ISSUERS, api.admin_key, json={"id": "root"})
    assert r.status_code == 201, r.text
    made["root"] = _cert(r.json()["certificate_pem"])
    made["sub"] = _intermediate(api, "sub")
    assert _stored_serials(api) == {i: format_serial(c.serial_number) for i, c in made.items()}


def test_import_refuses_incomplete_or_mismatched_material(api: Api) -> None:
    key = generate_private_key(KeyType.EC_P256)
    other = generate_private_key(KeyType.EC_P256)
    now = datetime.now(UTC)
    ca_cert = create_root_ca(key, common_name_dn("R"), validity=timedelta(days=365), now=now)
    cert_pem = ca_cert.certificate.public_bytes(Encoding.PEM).decode()
    before = api.counts()
    r = api.post(ISSUERS, api.admin_key, json={"id": "imp", "certificate_pem": cert_pem})
    assert_problem(r, 400)
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={"id": "imp", "certificate_pem": cert_pem, "private_key_pem": cert_pem},
    )
    assert_problem(r, 400)
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "imp",
            "certificate_pem": cert_pem,
            "private_key_pem": key_to_pem(other).decode(),
        },
    )
    assert_problem(r, 400)
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={"id": "imp", "certificate_pem": "garbage", "private_key_pem": "garbage"},
    )
    assert_problem(r, 400)
    assert api.counts() == before


def test_issuer_fields_that_would_be_ignored_are_refused(api: Api) -> None:
    """Before, an import dropped common_name, key_type, validity, parent … without a word,
    and a new CA given both subject and common_name was named by subject alone."""
    key = generate_private_key(KeyType.EC_P256)
    ca_cert = create_root_ca(
        key, common_name_dn("R"), validity=timedelta(days=365), now=api.clock()
    )
    material = {
        "certificate_pem": ca_cert.certificate.public_bytes(Encoding.PEM).decode(),
        "private_key_pem": key_to_pem(key).decode(),
    }
    before = api.counts()
    for extra, named in (
        ({"parent": "default"}, "parent"),
        ({"validity": "1Y", "key_type": "rsa-2048"}, "key_type, validity"),
        ({"common_name": "Other"}, "common_name"),
    ):
        r = api.post(ISSUERS, api.admin_key, json={"id": "imp", **material, **extra})
        detail = assert_problem(r, 400)["detail"]
        assert detail.startswith(f"{named}: not used with an import"), detail
    both = {"id": "both", "common_name": "Mine", "subject": "CN=Theirs,O=Example"}
    detail = assert_problem(api.post(ISSUERS, api.admin_key, json=both), 400)["detail"]
    assert detail.startswith("common_name and subject exclude each other")
    assert api.counts() == before
    r = api.post(ISSUERS, api.admin_key, json={"id": "imp", "name": "Imported", **material})
    assert r.status_code == 201, r.text


def test_issuer_permissions(api: Api) -> None:
    viewer = api.actor_key("viewer", ["r-viewer"])
    assert api.get(ISSUERS, viewer).status_code == 200
    assert api.get(f"{ISSUERS}/default", viewer).status_code == 200
    assert_problem(api.post(ISSUERS, viewer, json={"id": "x"}), 403)
    assert_problem(api.get(ISSUERS), 401)
    operator = api.actor_key("op", ["r-operator"])
    assert api.post(ISSUERS, operator, json={"id": "ops-ca"}).status_code == 201


def _bad_signature_root(now: datetime) -> tuple[str, str]:
    """A self-signed-looking CA (issuer = subject) whose signature is another key's."""

    key, signer = generate_private_key(KeyType.EC_P256), generate_private_key(KeyType.EC_P256)
    name = common_name_dn("Forged Root")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM).decode(), key_to_pem(key).decode()


def test_import_refuses_a_ca_that_cannot_issue_now(api: Api) -> None:
    now = api.clock()
    cases = {}
    for label, start, days in (
        ("expired", now - timedelta(days=20), 10),
        ("future", now + timedelta(days=1), 10),
    ):
        key = generate_private_key(KeyType.EC_P256)
        ca = create_root_ca(key, common_name_dn(label), validity=timedelta(days=days), now=start)
        cases[label] = (
            ca.certificate.public_bytes(Encoding.PEM).decode(),
            key_to_pem(key).decode(),
        )
    cases["forged"] = _bad_signature_root(now)
    cases["no-keycertsign"] = _pem_pair(ca_without_usage("key_cert_sign", now))
    expected = {
        "no-keycertsign": "the CA certificate's keyUsage lacks keyCertSign",
        "expired": "the CA certificate expired on ",
        "future": "the CA certificate is not valid before ",
        "forged": "the CA certificate's signature does not verify with its own key (self-signed)",
    }
    before = api.counts()
    for label, (cert_pem, key_pem) in cases.items():
        r = api.post(
            ISSUERS,
            api.admin_key,
            json={"id": label, "certificate_pem": cert_pem, "private_key_pem": key_pem},
        )
        assert expected[label] in assert_problem(r, 400)["detail"], label
    assert api.counts() == before


def _root_and_intermediate(
    root_cn: str, inter_cn: str, now: datetime
) -> tuple[CertificateAuthority, x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """A 90-day root and a 30-day intermediate it signed, with the intermediate's key."""
    from certctl.pki import get_profile

    root_key, inter_key = (
        generate_private_key(KeyType.EC_P256),
        generate_private_key(KeyType.EC_P256),
    )
    root = CertificateAuthority(
        create_root_ca(
            root_key, common_name_dn(root_cn), validity=timedelta(days=90), now=now
        ).certificate,
        root_key,
    )
    inter = root.issue(
        inter_key.public_key(),
        common_name_dn(inter_cn),
        profile=get_profile("intermediate"),
        validity=timedelta(days=30),
        now=now,
    ).certificate
    return root, inter, inter_key


def test_import_finds_the_issuer_in_a_chain_in_any_order(api: Api, tmp_path: Path) -> None:
    """The chain is built by signature from the bundle, whatever its order, or refused.

    Before, the first certificate had to be the CA and the rest was stored as its chain in
    the order given: an unrelated certificate in the bundle was served as an intermediate
    with every certificate (and listed by ca.pem?chain=true), and a root-first bundle, the
    order many CAs hand out, was refused as a key mismatch.
    """
    now = api.clock()
    root, inter, inter_key = _root_and_intermediate("Chain Root", "Chain Inter", now)

    def another_root(name: str) -> x509.Certificate:
        key = generate_private_key(KeyType.EC_P256)
        return create_root_ca(
            key, common_name_dn(name), validity=timedelta(days=9), now=now
        ).certificate

    unrelated = another_root("Other")
    impostor = another_root("Chain Root")  # the right name, the wrong key: signature fails

    def pem(*certs: x509.Certificate) -> str:
        return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)

    def post(issuer_id: str, *bundle: x509.Certificate) -> Response:
        return api.post(
            ISSUERS,
            api.admin_key,
            json={
                "id": issuer_id,
                "certificate_pem": pem(*bundle),
                "private_key_pem": key_to_pem(inter_key).decode(),
            },
        )

    before = api.counts()
    r = post("mixed", inter, unrelated, root.certificate)
    assert (
        "CN=Other: not an issuer in the chain of CN=Chain Inter"
        in (assert_problem(r, 400)["detail"])
    )
    r = post("forged", inter, impostor)
    assert "does not verify with its issuer in the chain" in assert_problem(r, 400)["detail"]
    assert api.counts() == before

    r = post("inter", root.certificate, inter)  # root first, as many bundles come
    assert r.status_code == 201, r.text
    assert r.json()["certificate_pem"] == pem(inter)
    assert r.json()["chain_pem"] == pem(root.certificate)
    assert r.json()["warnings"] == []
    assert api.get(f"{ISSUERS}/inter/ca.pem", params={"chain": "true"}).text == pem(
        inter, root.certificate
    )
    leaf = api.issue(issuer="inter", common_name="leaf.example.com")
    assert leaf["chain_pem"] == pem(inter)
    served = api.get(f"/api/v1/certificates/{leaf['id']}", api.admin_key, params={"format": "pem"})
    (tmp_path / "root.pem").write_text(pem(root.certificate))
    (tmp_path / "served.pem").write_text(served.text)
    ok(run("openssl", "verify", "-CAfile", tmp_path / "root.pem",
           "-untrusted", tmp_path / "served.pem", tmp_path / "served.pem"))  # fmt: skip


def test_import_of_an_intermediate_without_its_root_says_what_is_served(api: Api) -> None:
    """Imported all the same (its root may be in every trust store), with a warning.

    Before, nothing was said, and certificates of the issuer came without the intermediate,
    so clients trusting the root could not verify them.
    """
    now = api.clock()
    _, inter, inter_key = _root_and_intermediate("Far Root", "Lone Inter", now)
    r = _import_pair(api, "lone", inter, inter_key)
    assert r.status_code == 201, r.text
    (warning,) = r.json()["warnings"]
    assert warning.startswith("CN=Far Root, the issuer of CN=Lone Inter, was not given:")
    assert "send the chain up to the root in certificate_pem" in warning


def test_leaves_of_an_intermediate_imported_without_its_root_carry_it(
    api: Api, tmp_path: Path
) -> None:
    """Its root may be in every client's trust store without certctl holding it.

    Before, the lone intermediate was taken for the root and left out of what follows a
    leaf (chain_pem ""), so nginx serving tls.crt sent the leaf alone and clients trusting
    that root refused it (openssl: unable to get local issuer certificate).
    """
    now = api.clock()
    root, inter, inter_key = _root_and_intermediate("Kept Root", "Lone Inter", now)
    assert _import_pair(api, "lone", inter, inter_key).status_code == 201
    leaf = api.issue(issuer="lone", common_name="lone.example.com")
    assert leaf["chain_pem"] == inter.public_bytes(Encoding.PEM).decode()
    (tmp_path / "root.pem").write_bytes(root.certificate.public_bytes(Encoding.PEM))
    (tmp_path / "tls.crt").write_text(leaf["certificate_pem"] + leaf["chain_pem"])
    ok(run("openssl", "verify", "-CAfile", tmp_path / "root.pem",
           "-untrusted", tmp_path / "tls.crt", tmp_path / "tls.crt"))  # fmt: skip
    # The negative twin: the leaf alone, as tls.crt was.
    (tmp_path / "leaf.crt").write_text(leaf["certificate_pem"])
    refused = run("openssl", "verify", "-CAfile", tmp_path / "root.pem", tmp_path / "leaf.crt")
    assert "unable to get local issuer certificate" in refused.stdout + refused.stderr


def test_import_of_an_intermediate_alone_takes_its_chain_from_the_root_held(
    api: Api, tmp_path: Path
) -> None:
    """An intermediate imported alone under a root imported before gets the root's chain.

    cfssl and openssl keep each CA in a file of its own, so a migration imports the root,
    then the intermediate's file. Before, the intermediate's chain_pem stayed empty (with
    a warning), and ca.pem?chain=true, the ca.crt 'certctl certs issue --out' writes, ended
    with the intermediate, which clients do not take as a trust anchor.
    """
    now = api.clock()
    root, inter, inter_key = _root_and_intermediate("Held Root", "Held Inter", now)
    # The same name on another key, imported first: the signature, not the name, decides.
    impostor_key = generate_private_key(KeyType.EC_P256)
    impostor = create_root_ca(
        impostor_key, common_name_dn("Held Root"), validity=timedelta(days=9), now=now
    ).certificate
    assert _import_pair(api, "a-impostor", impostor, impostor_key).status_code == 201
    r = _import_pair(api, "early", inter, inter_key)
    assert r.status_code == 201, r.text
    assert r.json()["chain_pem"] == ""
    (warning,) = r.json()["warnings"]
    assert "import the CA that signed it first" in warning
    # Its negative twin: the intermediate imported before the root has no root to give
    # (ca.pem?chain=true, the ca.crt of 'certs issue --out', ends with it), which openssl
    # does not take as a trust anchor (until the root's import completes its chain).
    early = api.issue(issuer="early", common_name="early.example.com")
    (tmp_path / "early.crt").write_text(early["certificate_pem"] + early["chain_pem"])
    top = api.get(f"{ISSUERS}/early/ca.pem", params={"chain": "true"}).text
    assert top == inter.public_bytes(Encoding.PEM).decode()
    (tmp_path / "early-ca.crt").write_text(top)
    refused = run("openssl", "verify", "-CAfile", tmp_path / "early-ca.crt",
                  "-untrusted", tmp_path / "early.crt", tmp_path / "early.crt")  # fmt: skip
    assert refused.returncode != 0
    assert "unable to get issuer certificate" in refused.stdout + refused.stderr

    assert _import_pair(api, "held-root", root.certificate, root.private_key).status_code == 201
    r = _import_pair(api, "held-inter", inter, inter_key)
    assert r.status_code == 201, r.text
    root_pem = root.certificate.public_bytes(Encoding.PEM).decode()
    assert r.json()["chain_pem"] == root_pem
    assert r.json()["warnings"] == []
    assert api.get(f"{ISSUERS}/held-inter/ca.pem", params={"chain": "true"}).text == (
        inter.public_bytes(Encoding.PEM).decode() + root_pem
    )
    leaf = api.issue(issuer="held-inter", common_name="held.example.com")
    (tmp_path / "root.pem").write_text(root_pem)
    (tmp_path / "tls.crt").write_text(leaf["certificate_pem"] + leaf["chain_pem"])
    ok(run("openssl", "verify", "-CAfile", tmp_path / "root.pem",
           "-untrusted", tmp_path / "tls.crt", tmp_path / "tls.crt"))  # fmt: skip


def test_the_import_of_a_root_completes_the_chains_of_intermediates_imported_before_it(
    api: Api, tmp_path: Path
) -> None:
    """cfssl and openssl keep each CA in its own file, imported in any order: before, an
    intermediate imported before its root kept no chain (or one stopping below the root)
    for good, and ca.pem?chain=true, the ca.crt clients are given, ended with no root."""
    from certctl.pki import get_profile

    now = api.clock()
    root, _, _ = _root_and_intermediate("Late Root", "unused", now)
    inter_key, sub_key = (
        generate_private_key(KeyType.EC_P256),
        generate_private_key(KeyType.EC_P256),
    )
    inter = root.issue(
        inter_key.public_key(),
        common_name_dn("Early Inter"),
        profile=get_profile("intermediate").with_path_length(1),
        validity=timedelta(days=30),
        now=now,
    ).certificate
    sub = (
        CertificateAuthority(inter, inter_key, (root.certificate,))
        .issue(
            sub_key.public_key(),
            common_name_dn("Earlier Sub"),
            profile=get_profile("intermediate"),
            validity=timedelta(days=20),
            now=now,
        )
        .certificate
    )
    root_pem, inter_pem, sub_pem = (
        c.public_bytes(Encoding.PEM).decode() for c in (root.certificate, inter, sub)
    )
    r = _import_pair(api, "a-sub", sub, sub_key)  # alone: nothing above it is held
    assert r.status_code == 201, r.text
    assert (r.json()["chain_pem"], r.json()["chains_completed"]) == ("", [])
    leaf = api.issue(issuer="a-sub", common_name="before-root.example.com")
    assert leaf["chain_pem"] == sub_pem  # the lone intermediate is sent after the leaf
    # GET's PEM sends it too, as the issuance did (it sent the leaf alone).
    got = api.get(f"/api/v1/certificates/{leaf['id']}", api.admin_key, params={"format": "pem"})
    assert got.text == leaf["certificate_pem"] + sub_pem
    r = _import_pair(api, "b-inter", inter, inter_key)
    assert r.status_code == 201, r.text
    assert r.json()["chains_completed"] == ["a-sub"]  # up to b-inter: all that is held
    assert api.get(f"{ISSUERS}/a-sub", api.admin_key).json()["chain_pem"] == inter_pem
    r = _import_pair(api, "c-root", root.certificate, root.private_key)
    assert r.status_code == 201, r.text
    assert r.json()["chains_completed"] == ["a-sub", "b-inter"]
    assert api.get(f"{ISSUERS}/a-sub", api.admin_key).json()["chain_pem"] == inter_pem + root_pem
    assert api.get(f"{ISSUERS}/b-inter", api.admin_key).json()["chain_pem"] == root_pem
    assert api.get(f"{ISSUERS}/a-sub/ca.pem", params={"chain": "true"}).text == (
        sub_pem + inter_pem + root_pem
    )
    chained = [e for e in api.audit() if e["action"] == "issuer.chain"]
    assert sorted((e["target"], e["actor"]) for e in chained) == [
        ("a-sub", "admin"),
        ("a-sub", "admin"),
        ("b-inter", "admin"),
    ]
    # The leaf issued before: its PEM is computed from its issuer's chain, now complete.
    got = api.get(f"/api/v1/certificates/{leaf['id']}", api.admin_key, params={"format": "pem"})
    assert got.text == leaf["certificate_pem"] + sub_pem + inter_pem
    (tmp_path / "root.pem").write_text(root_pem)
    (tmp_path / "tls.crt").write_text(got.text)
    ok(run("openssl", "verify", "-CAfile", tmp_path / "root.pem",
           "-untrusted", tmp_path / "tls.crt", tmp_path / "tls.crt"))  # fmt: skip
    after = api.issue(issuer="a-sub", common_name="after-root.example.com")
    assert after["chain_pem"] == sub_pem + inter_pem
    # Another process (a worker, a replica) that cached a-sub as it was drops it at its next
    # issuer refresh: the chain grew under it.
    with api.services.engine.begin() as conn:
        conn.execute(update(Issuer).where(Issuer.id == "a-sub").values(chain_pem=inter_pem))
    api.services.forget_issuer("a-sub")
    issuers.load_issuer(api.services, "a-sub")  # cached with the short chain
    with api.services.engine.begin() as conn:
        conn.execute(
            update(Issuer).where(Issuer.id == "a-sub").values(chain_pem=inter_pem + root_pem)
        )
    assert "a-sub" in issuers.refresh_cached_issuers(api.services)
    assert issuers.load_issuer(api.services, "a-sub").chain == (inter, root.certificate)


def test_import_of_an_intermediate_alone_takes_the_chain_of_its_issuer_valid_now(
    api: Api, tmp_path: Path
) -> None:
    """A CA renewed on its key is held twice; the first held by id, expired, was taken.

    Both certificates of the parent verify the intermediate's signature, and the expired
    one became chain_pem: served after every leaf, so TLS clients refused them
    ("certificate has expired") though the renewed parent was held too.
    """
    from certctl.pki import get_profile

    now = api.clock()
    root, _, _ = _root_and_intermediate("Renewal Root", "unused", now)
    parent_key, sub_key = (
        generate_private_key(KeyType.EC_P256),
        generate_private_key(KeyType.EC_P256),
    )
    one_below = get_profile("intermediate").with_path_length(1)
    old, new = (
        root.issue(
            parent_key.public_key(),
            common_name_dn("Renewed Parent"),
            profile=one_below,
            validity=timedelta(days=days),
            now=now,
        ).certificate
        for days in (10, 60)
    )
    root_pem = root.certificate.public_bytes(Encoding.PEM).decode()
    for issuer_id, cert in (("a-old", old), ("b-new", new)):
        r = api.post(
            ISSUERS,
            api.admin_key,
            json={
                "id": issuer_id,
                "certificate_pem": cert.public_bytes(Encoding.PEM).decode() + root_pem,
                "private_key_pem": key_to_pem(parent_key).decode(),
            },
        )
        assert r.status_code == 201, r.text
    sub = (
        CertificateAuthority(new, parent_key, (root.certificate,))
        .issue(
            sub_key.public_key(),
            common_name_dn("Sub Of Renewed"),
            profile=get_profile("intermediate"),
            validity=timedelta(days=40),
            now=now,
        )
        .certificate
    )
    # One revoked (superseded) was taken as well, and the import refused below it (409).
    assert _import_pair(api, "root", root.certificate, root.private_key).status_code == 201
    superseded = root.issue(
        parent_key.public_key(),
        common_name_dn("Renewed Parent"),
        profile=one_below,
        validity=timedelta(days=50),
        now=now,
    ).certificate
    assert _import_pair(api, "a-revoked", superseded, parent_key).status_code == 201
    r = api.post(f"{ISSUERS}/a-revoked/revoke", api.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200, r.text
    later = api.clock.advance(days=20)  # the old parent has expired
    r = _import_pair(api, "sub-of-renewed", sub, sub_key)
    assert r.status_code == 201, r.text
    assert x509.load_pem_x509_certificates(r.json()["chain_pem"].encode()) == [
        new,
        root.certificate,
    ]
    leaf = api.issue(issuer="sub-of-renewed", common_name="renewed.example.com")
    (tmp_path / "root.pem").write_text(root_pem)
    (tmp_path / "tls.crt").write_text(leaf["certificate_pem"] + leaf["chain_pem"])
    ok(run("openssl", "verify", "-attime", str(int(later.timestamp())),
           "-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "tls.crt",
           tmp_path / "tls.crt"))  # fmt: skip


def test_import_below_an_expired_held_parent_warns_that_its_leaves_will_not_verify(
    api: Api, tmp_path: Path
) -> None:
    """The only parent held has expired: its chain was attached without a word, and every
    certificate the new issuer signed then failed verification ("certificate has expired")."""
    from certctl.pki import get_profile

    now = api.clock()
    root, _, _ = _root_and_intermediate("Stale Root", "unused", now)
    parent_key, sub_key = (
        generate_private_key(KeyType.EC_P256),
        generate_private_key(KeyType.EC_P256),
    )
    # The same parent key under a short certificate (held) and a longer one (not held),
    # which signed the intermediate: it outlives the parent certctl holds.
    held, signer = (
        root.issue(
            parent_key.public_key(),
            common_name_dn("Stale Parent"),
            profile=get_profile("intermediate").with_path_length(1),
            validity=timedelta(days=days),
            now=now,
        ).certificate
        for days in (10, 60)
    )
    sub = (
        CertificateAuthority(signer, parent_key, (root.certificate,))
        .issue(
            sub_key.public_key(),
            common_name_dn("Sub Of Stale"),
            profile=get_profile("intermediate"),
            validity=timedelta(days=40),
            now=now,
        )
        .certificate
    )
    assert _import_pair(api, "stale-root", root.certificate, root.private_key).status_code == 201
    r = _import_pair(api, "stale-parent", held, parent_key)
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == []
    later = api.clock.advance(days=20)
    r = _import_pair(api, "sub-of-stale", sub, sub_key)
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == [
        f"CN=Stale Parent, above it, expired on {held.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: "
        "certificates this CA signs will not verify until that CA is renewed"
    ]
    # What the warning says: the leaf's chain fails at the held parent.
    leaf = api.issue(issuer="sub-of-stale", common_name="stale.example.com")
    (tmp_path / "root.pem").write_text(root.certificate.public_bytes(Encoding.PEM).decode())
    (tmp_path / "tls.crt").write_text(leaf["certificate_pem"] + leaf["chain_pem"])
    refused = run("openssl", "verify", "-attime", str(int(later.timestamp())),
                  "-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "tls.crt",
                  tmp_path / "tls.crt")  # fmt: skip
    assert refused.returncode != 0
    assert "certificate has expired" in refused.stdout + refused.stderr


def test_import_of_an_intermediate_alone_prefers_the_root_held_to_a_cross_certificate(
    api: Api,
) -> None:
    """A root also held cross-signed by another root (a move from one root to another):
    taken first by id, the cross-certificate made the other root the one ca.pem?chain=true
    ends with, the ca.crt clients are given, though the intermediate's own root was held."""
    from certctl.pki import get_profile

    now = api.clock()
    root, inter, inter_key = _root_and_intermediate("Crossed Root", "Below Crossed", now)
    other, _, _ = _root_and_intermediate("Other Root", "unused", now)
    cross = other.issue(
        root.private_key.public_key(),
        root.certificate.subject,
        profile=get_profile("intermediate").with_path_length(None),
        validity=timedelta(days=60),
        now=now,
    ).certificate
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "a-cross",
            "certificate_pem": certs_to_pem([cross, other.certificate]).decode(),
            "private_key_pem": key_to_pem(root.private_key).decode(),
        },
    )
    assert r.status_code == 201, r.text
    assert _import_pair(api, "z-root", root.certificate, root.private_key).status_code == 201
    r = _import_pair(api, "below-crossed", inter, inter_key)
    assert r.status_code == 201, r.text
    assert r.json()["chain_pem"] == root.certificate.public_bytes(Encoding.PEM).decode()


def test_a_chain_completed_by_a_cross_certificate_never_loops_back_to_the_issuer_itself(
    api: Api, tmp_path: Path
) -> None:
    """Two roots cross-signing each other (B's key by A, A's key by B), each imported as an
    issuer: the import of A-by-B completed B-by-A's chain with A-by-B and then B-by-A itself,
    and the import of root A later put root A after that loop: every certificate B-by-A
    issued came with a copy of its own issuer and a cross-certificate back to it."""
    from certctl.pki import get_profile

    now = api.clock()
    root_a, _, _ = _root_and_intermediate("Cross A", "unused", now)
    root_b, _, _ = _root_and_intermediate("Cross B", "unused", now)
    cross = get_profile("intermediate").with_path_length(None)
    b_by_a = root_a.issue(
        root_b.private_key.public_key(),
        root_b.certificate.subject,
        profile=cross,
        validity=timedelta(days=60),
        now=now,
    ).certificate
    a_by_b = root_b.issue(
        root_a.private_key.public_key(),
        root_a.certificate.subject,
        profile=cross,
        validity=timedelta(days=60),
        now=now,
    ).certificate
    assert _import_pair(api, "b-by-a", b_by_a, root_b.private_key).status_code == 201
    r = _import_pair(api, "a-by-b", a_by_b, root_a.private_key)
    assert r.status_code == 201, r.text
    assert r.json()["chains_completed"] == []  # A-by-B leads back to B-by-A: no way up
    assert api.get(f"{ISSUERS}/b-by-a", api.admin_key).json()["chain_pem"] == ""
    r = _import_pair(api, "root-a", root_a.certificate, root_a.private_key)
    assert r.status_code == 201, r.text
    assert "b-by-a" in r.json()["chains_completed"]
    root_a_pem = root_a.certificate.public_bytes(Encoding.PEM).decode()
    assert api.get(f"{ISSUERS}/b-by-a", api.admin_key).json()["chain_pem"] == root_a_pem
    assert api.get(f"{ISSUERS}/b-by-a/ca.pem", params={"chain": "true"}).text == (
        b_by_a.public_bytes(Encoding.PEM).decode() + root_a_pem
    )
    leaf = api.issue(issuer="b-by-a", common_name="crossed.example.com")
    assert leaf["chain_pem"] == b_by_a.public_bytes(Encoding.PEM).decode()
    (tmp_path / "root-a.pem").write_text(root_a_pem)
    (tmp_path / "tls.crt").write_text(leaf["certificate_pem"] + leaf["chain_pem"])
    ok(run("openssl", "verify", "-CAfile", tmp_path / "root-a.pem",
           "-untrusted", tmp_path / "tls.crt", tmp_path / "tls.crt"))  # fmt: skip


def test_import_of_a_ca_below_a_parent_of_path_length_0_is_refused(
    api: Api, tmp_path: Path
) -> None:
    """openssl signs a CA below a pathlen:0 intermediate as asked. Imported, alone below the
    intermediate held or with the chain, it was taken, and every certificate it signed
    failed ("path length constraint exceeded"), as one lacking keyCertSign would."""
    now = api.clock()
    root, inter, inter_key = _root_and_intermediate("Path Root", "Path Zero Inter", now)
    root_pem = root.certificate.public_bytes(Encoding.PEM).decode()
    inter_pem = inter.public_bytes(Encoding.PEM).decode()
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={"id": "path-zero", "certificate_pem": inter_pem + root_pem,
              "private_key_pem": key_to_pem(inter_key).decode()},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    (tmp_path / "inter.pem").write_text(inter_pem)
    (tmp_path / "inter.key").write_bytes(key_to_pem(inter_key))
    (tmp_path / "ext.cnf").write_text(
        "basicConstraints = critical, CA:true, pathlen:0\nkeyUsage = critical, keyCertSign\n"
    )
    openssl_req(tmp_path / "sub.key", tmp_path / "sub.csr", "/CN=Too Deep")
    ok(
        run(
            "openssl", "x509", "-req", "-in", tmp_path / "sub.csr", "-CA", tmp_path / "inter.pem",
            "-CAkey", tmp_path / "inter.key", "-CAcreateserial", "-days", "10",
            "-extfile", tmp_path / "ext.cnf", "-out", tmp_path / "sub.pem",
        )
    )  # fmt: skip
    sub_pem = (tmp_path / "sub.pem").read_text()
    before = api.counts()
    for bundle in (sub_pem, sub_pem + inter_pem + root_pem):
        r = api.post(
            ISSUERS,
            api.admin_key,
            json={"id": "too-deep", "certificate_pem": bundle,
                  "private_key_pem": (tmp_path / "sub.key").read_text()},
        )  # fmt: skip
        assert assert_problem(r, 400)["detail"] == (
            "CN=Path Zero Inter, above it, allows 0 CA certificates below it (pathlen:0) and 1 "
            "follow: certificates this CA signs would not verify (path length constraint "
            "exceeded)"
        )
    assert api.counts() == before


def test_import_of_an_intermediate_whose_serial_no_crl_can_list_says_so(
    api: Api, tmp_path: Path
) -> None:
    """An intermediate OpenSSL signed with a serial of 160 bits, its top bit set (RFC 5280
    4.1.2.2 allows 20 octets, sign included): revoked, it answers 200 and issues no more, but
    its parent's CRL cannot list it (left off with a server log line at each signing). The
    import said nothing, while another certificate could still be made for it.
    """
    now = api.clock()
    root, _, _ = _root_and_intermediate("Big Root", "unused", now)
    (tmp_path / "root.pem").write_bytes(root.certificate.public_bytes(Encoding.PEM))
    (tmp_path / "root.key").write_bytes(key_to_pem(root.private_key))
    (tmp_path / "ext.cnf").write_text(
        "basicConstraints = critical, CA:true, pathlen:0\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )
    openssl_req(tmp_path / "sub.key", tmp_path / "sub.csr", "/CN=Big Sub")
    ok(
        run(
            "openssl", "x509", "-req", "-in", tmp_path / "sub.csr", "-CA", tmp_path / "root.pem",
            "-CAkey", tmp_path / "root.key", "-set_serial", f"0x{'ff' * 20}", "-days", "20",
            "-extfile", tmp_path / "ext.cnf", "-out", tmp_path / "sub.pem",
        )
    )  # fmt: skip
    r = _import_pair(api, "big-root", root.certificate, root.private_key)
    assert r.status_code == 201, r.text
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "big-sub",
            "certificate_pem": (tmp_path / "sub.pem").read_text()
            + (tmp_path / "root.pem").read_text(),
            "private_key_pem": (tmp_path / "sub.key").read_text(),
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == [
        f"its serial {'ff' * 20} is no positive number of at most 20 octets (RFC 5280 "
        "4.1.2.2): no CRL can list it, so if it is revoked, its issuer's CRL leaves it off; "
        "have CN=Big Root sign it again with a serial of at most 159 bits"
    ]
    r = api.post(f"{ISSUERS}/big-sub/revoke", api.admin_key, json={})
    assert r.status_code == 200, r.text
    crl = api.get(f"{ISSUERS}/big-root/crl")
    assert crl.status_code == 200, crl.text
    assert list(x509.load_der_x509_crl(crl.content)) == []  # what the warning said


def test_import_of_an_intermediate_signed_with_sha1_names_the_digest(
    api: Api, tmp_path: Path
) -> None:
    """A legacy openssl intermediate its root signed with SHA-1 (``openssl x509 -req -sha1``).

    cryptography checks no SHA-1 signature, so the root given with it was "its issuer in the
    chain" whose signature "does not verify", and given alone after the root, it was
    imported with a warning that the root was not given; OpenSSL 3 refuses the link.
    """
    now = api.clock()
    root, _, _ = _root_and_intermediate("Sha1 Root", "unused", now)
    (tmp_path / "root.pem").write_bytes(root.certificate.public_bytes(Encoding.PEM))
    (tmp_path / "root.key").write_bytes(key_to_pem(root.private_key))
    (tmp_path / "ext.cnf").write_text(
        "basicConstraints = critical, CA:true, pathlen:0\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
    )
    openssl_req(tmp_path / "sub.key", tmp_path / "sub.csr", "/CN=Sha1 Sub")
    ok(
        run(
            "openssl", "x509", "-req", "-in", tmp_path / "sub.csr", "-CA", tmp_path / "root.pem",
            "-CAkey", tmp_path / "root.key", "-CAcreateserial", "-sha1", "-days", "20",
            "-extfile", tmp_path / "ext.cnf", "-out", tmp_path / "sub.pem",
        )
    )  # fmt: skip
    sub_pem, root_pem = (tmp_path / "sub.pem").read_text(), (tmp_path / "root.pem").read_text()
    expected = (
        "CA CN=Sha1 Root signed CN=Sha1 Sub with SHA-1, which OpenSSL 3 refuses from security "
        "level 1 on (openssl verify -auth_level 1): reissue it with SHA-256; not imported"
    )

    def post(bundle: str) -> Response:
        return api.post(
            ISSUERS,
            api.admin_key,
            json={
                "id": "sha1-sub",
                "certificate_pem": bundle,
                "private_key_pem": (tmp_path / "sub.key").read_text(),
            },
        )

    before = api.counts()
    assert assert_problem(post(sub_pem + root_pem), 400)["detail"] == expected
    assert _import_pair(api, "sha1-root", root.certificate, root.private_key).status_code == 201
    after_root = api.counts()
    assert assert_problem(post(sub_pem), 400)["detail"] == expected
    assert api.counts() == after_root != before
    assert api.get(f"{ISSUERS}/sha1-sub", api.admin_key).status_code == 404


def test_import_of_an_intermediate_signed_with_sha1_under_rsassa_pss_is_refused(
    api: Api, tmp_path: Path
) -> None:
    """cryptography checks an RSASSA-PSS signature over SHA-1 (not a PKCS#1 one), so such
    an intermediate was taken in silence, given with its root or alone below the root held;
    OpenSSL 3 refuses the link from security level 1 on, as the PKCS#1 one."""
    d = tmp_path
    ok(run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "root.key",
           "-out", d / "root.pem", "-subj", "/CN=Pss Root", "-days", "30",
           "-addext", "keyUsage=critical,keyCertSign,cRLSign"))  # fmt: skip
    (d / "ext.cnf").write_text(
        "basicConstraints = critical, CA:true, pathlen:0\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
    )
    openssl_req(d / "sub.key", d / "sub.csr", "/CN=Pss Sub")
    ok(
        run(
            "openssl", "x509", "-req", "-in", d / "sub.csr", "-CA", d / "root.pem",
            "-CAkey", d / "root.key", "-CAcreateserial", "-sha1",
            "-sigopt", "rsa_padding_mode:pss", "-days", "20",
            "-extfile", d / "ext.cnf", "-out", d / "sub.pem",
        )
    )  # fmt: skip
    sub_pem, root_pem = (d / "sub.pem").read_text(), (d / "root.pem").read_text()
    expected = (
        "CA CN=Pss Root signed CN=Pss Sub with SHA-1 (RSASSA-PSS), which OpenSSL 3 refuses "
        "from security level 1 on (openssl verify -auth_level 1): reissue it with SHA-256; "
        "not imported"
    )

    def post(bundle: str) -> Response:
        return api.post(
            ISSUERS,
            api.admin_key,
            json={"id": "pss-sub", "certificate_pem": bundle,
                  "private_key_pem": (d / "sub.key").read_text()},
        )  # fmt: skip

    assert assert_problem(post(sub_pem + root_pem), 400)["detail"] == expected
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={"id": "pss-root", "certificate_pem": root_pem,
              "private_key_pem": (d / "root.key").read_text()},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    before = api.counts()
    assert assert_problem(post(sub_pem), 400)["detail"] == expected
    assert api.counts() == before
    assert api.get(f"{ISSUERS}/pss-sub", api.admin_key).status_code == 404


def _sha1_root_and_intermediate(d: Path) -> tuple[str, str, str, str]:
    """An openssl root signed on itself with SHA-1 and an intermediate it signed with
    SHA-256: (root PEM, root key PEM, intermediate PEM, intermediate key PEM)."""
    openssl_req(d / "root.key", d / "root.pem", "/CN=Old Sha1 Root", "-sha1", "-days", "30",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", x509=True)  # fmt: skip
    (d / "ext.cnf").write_text(
        "basicConstraints = critical, CA:true, pathlen:0\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
    )
    openssl_req(d / "inter.key", d / "inter.csr", "/CN=Under Old Sha1 Root")
    ok(
        run(
            "openssl", "x509", "-req", "-in", d / "inter.csr", "-CA", d / "root.pem",
            "-CAkey", d / "root.key", "-CAcreateserial", "-sha256", "-days", "20",
            "-extfile", d / "ext.cnf", "-out", d / "inter.pem",
        )
    )  # fmt: skip
    root_pem, root_key, inter_pem, inter_key = (
        (d / name).read_text() for name in ("root.pem", "root.key", "inter.pem", "inter.key")
    )
    return root_pem, root_key, inter_pem, inter_key


def test_a_root_signed_on_itself_with_sha1_is_not_sent_after_leaves(
    api: Api, tmp_path: Path
) -> None:
    """No client checks a trust anchor's signature on itself (OpenSSL 3 leaves it out of
    its digest check); cryptography checks no SHA-1 signature, so such a root, given with
    the intermediate it signed, was taken for one more intermediate in every chain_pem."""
    root_pem, _root_key, inter_pem, inter_key = _sha1_root_and_intermediate(tmp_path)
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={"id": "under-sha1", "certificate_pem": inter_pem + root_pem,
              "private_key_pem": inter_key},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["chain_pem"] == root_pem
    leaf = api.issue(issuer="under-sha1", common_name="old-root.example.com")
    assert leaf["chain_pem"] == inter_pem
    (tmp_path / "tls.crt").write_text(leaf["certificate_pem"] + leaf["chain_pem"])
    ok(run("openssl", "verify", "-auth_level", "2", "-CAfile", tmp_path / "root.pem",
           "-untrusted", tmp_path / "tls.crt", tmp_path / "tls.crt"))  # fmt: skip
    # Given twice, the copy left over was taken for the root's issuer: "CA CN=Old Sha1 Root
    # signed CN=Old Sha1 Root with SHA-1 … reissue it"; it is refused as any certificate
    # outside the chain is.
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={"id": "twice", "certificate_pem": inter_pem + root_pem + root_pem,
              "private_key_pem": inter_key},
    )  # fmt: skip
    assert "not an issuer in the chain" in assert_problem(r, 400)["detail"]


def test_a_root_signed_on_itself_with_sha1_imports_and_issues(api: Api, tmp_path: Path) -> None:
    """What 'certctl ca import' takes and OpenSSL trusts (it checks no root's signature on
    itself): the server said "the CA certificate's signature does not verify with its own
    key (self-signed)", as cryptography checks no SHA-1 signature."""
    root_pem, root_key, inter_pem, inter_key = _sha1_root_and_intermediate(tmp_path)
    # openssl signed them at the real clock's second, which a slow machine puts after the
    # frozen services clock: "not valid before" warnings (failed twice in CI). Move the
    # clock to their signing time, as the machine that made them would stand.
    made = max(_cert(p).not_valid_before_utc for p in (root_pem, inter_pem))
    api.clock.now = max(api.clock.now, made)
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={"id": "old-sha1-root", "certificate_pem": root_pem, "private_key_pem": root_key},
    )
    assert r.status_code == 201, r.text
    leaf = api.issue(issuer="old-sha1-root", common_name="from-old-root.example.com")
    assert leaf["chain_pem"] == ""
    (tmp_path / "leaf.crt").write_text(leaf["certificate_pem"])
    ok(run("openssl", "verify", "-auth_level", "2", "-CAfile", tmp_path / "root.pem",
           tmp_path / "leaf.crt"))  # fmt: skip
    # The intermediate it signed, imported alone after it, gets it as its chain.
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={"id": "below-old-root", "certificate_pem": inter_pem, "private_key_pem": inter_key},
    )
    assert r.status_code == 201, r.text
    assert r.json()["chain_pem"] == root_pem
    assert r.json()["warnings"] == []


def test_import_allows_a_few_minutes_of_clock_skew(api: Api) -> None:
    key = generate_private_key(KeyType.EC_P256)
    ahead = api.clock() + timedelta(minutes=2)  # made on a host whose clock runs ahead
    ca = create_root_ca(key, common_name_dn("Ahead"), validity=timedelta(days=30), now=ahead)
    r = _import_pair(api, "ahead", ca.certificate, key)
    assert r.status_code == 201, r.text


def _pem_pair(ca: CertificateAuthority) -> tuple[str, str]:
    return ca.certificate.public_bytes(Encoding.PEM).decode(), key_to_pem(ca.private_key).decode()


def _import_pair(
    api: Api, issuer_id: str, cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes
) -> Response:
    """POST /api/v1/issuers importing ``cert`` and ``key`` as ``issuer_id`` (as admin)."""
    return api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": issuer_id,
            "certificate_pem": cert.public_bytes(Encoding.PEM).decode(),
            "private_key_pem": key_to_pem(key).decode(),
        },
    )


def _root_with_usage(now: datetime, *, crl_sign: bool) -> tuple[str, str]:
    """A self-signed CA with keyCertSign, and cRLSign only when asked."""
    if not crl_sign:
        return _pem_pair(ca_without_usage("crl_sign", now))
    key = generate_private_key(KeyType.EC_P256)
    root = create_root_ca(
        key, common_name_dn("with cRLSign"), validity=timedelta(days=365), now=now
    )
    return _pem_pair(CertificateAuthority(root.certificate, key))


def test_import_warns_when_the_ca_cannot_sign_its_crl(api: Api, tmp_path: Path) -> None:
    """Accepted (it issues fine), but the 201 says its CRL will not verify; twin: no warning.

    No CRL is published for the CA without cRLSign (every client would refuse it); the
    other one's is used by ``openssl verify -crl_check``.
    """
    for crl_sign, label in ((False, "no-crlsign"), (True, "crlsign")):
        cert_pem, key_pem = _root_with_usage(api.clock(), crl_sign=crl_sign)
        r = api.post(
            ISSUERS,
            api.admin_key,
            json={"id": label, "certificate_pem": cert_pem, "private_key_pem": key_pem},
        )
        assert r.status_code == 201, r.text
        if crl_sign:
            assert r.json()["warnings"] == []
        else:
            assert r.json()["warnings"] == [
                "the CA certificate's keyUsage lacks cRLSign: clients refuse CRLs it signs, so "
                "/api/v1/issuers/no-crlsign/crl answers 409 and revocations are not published"
            ]
        leaf = api.issue(issuer=label, common_name=f"{label}.example.com")["certificate_pem"]
        crl = api.get(f"{ISSUERS}/{label}/crl")
        if not crl_sign:
            assert "lacks cRLSign" in assert_problem(crl, 409)["detail"]
            continue
        assert crl.status_code == 200, crl.text
        (tmp_path / "ca.pem").write_text(cert_pem)
        (tmp_path / "leaf.pem").write_text(leaf)
        (tmp_path / "crl.der").write_bytes(crl.content)
        ok(run("openssl", "crl", "-inform", "DER", "-in", tmp_path / "crl.der",
               "-out", tmp_path / "crl.pem"))  # fmt: skip
        checked = run(
            "openssl", "verify", "-crl_check", "-CAfile", tmp_path / "ca.pem",
            "-CRLfile", tmp_path / "crl.pem", tmp_path / "leaf.pem",
        )  # fmt: skip
        ok(checked)


def test_import_of_an_encrypted_key_says_what_the_api_needs(api: Api) -> None:
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        PrivateFormat,
    )

    key = generate_private_key(KeyType.EC_P256)
    ca = create_root_ca(key, common_name_dn("R"), validity=timedelta(days=365), now=api.clock())
    encrypted = key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"hunter2hunter2")
    ).decode()
    before = api.counts()
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "enc",
            "certificate_pem": ca.certificate.public_bytes(Encoding.PEM).decode(),
            "private_key_pem": encrypted,
        },
    )
    detail = assert_problem(r, 400)["detail"]
    assert detail.startswith("private_key_pem is encrypted: send it unencrypted")
    assert "--password-file" not in detail  # a CLI flag means nothing to an API caller
    assert api.counts() == before


def test_import_names_a_malformed_certificate_beside_the_key_as_such(
    api: Api, tmp_path: Path
) -> None:
    # Its subject is in the error: the word "encrypted" there made the answer "private_key_pem
    # is encrypted", sending the caller to decrypt a key that was in clear.
    key = generate_private_key(KeyType.EC_P256)
    ca = create_root_ca(key, common_name_dn("R"), validity=timedelta(days=365), now=api.clock())
    bad_key, bad = tmp_path / "bad.key", tmp_path / "bad.crt"
    openssl_req(bad_key, bad, "/CN=encrypted.example", "-addext",
                "2.5.29.17=DER:30078705010203040A", x509=True)  # fmt: skip
    before = api.counts()
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "bad",
            "certificate_pem": ca.certificate.public_bytes(Encoding.PEM).decode(),
            # A key file with a certificate in it, as openssl pkcs12 -nodes writes them.
            "private_key_pem": key_to_pem(key).decode() + bad.read_text(),
        },
    )
    assert assert_problem(r, 400)["detail"] == (
        "certificate CN=encrypted.example has malformed extensions "
        "(b'\\x01\\x02' does not appear to be an IPv4 or IPv6 address)"
    )
    assert api.counts() == before


def test_import_refuses_an_rsa_pss_ca_key(api: Api, tmp_path: Path) -> None:
    # openssl's rsa-pss keys sign with PSS only; certctl's PKCS#1 v1.5 signatures under
    # such a CA were certificates openssl verify could find no issuer for.
    ok(run("openssl", "req", "-x509", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048",
           "-nodes", "-keyout", tmp_path / "ca.key", "-out", tmp_path / "ca.crt",
           "-subj", "/CN=PSS Root", "-days", "30"))  # fmt: skip
    before = api.counts()
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "pss",
            "certificate_pem": (tmp_path / "ca.crt").read_text(),
            "private_key_pem": (tmp_path / "ca.key").read_text(),
        },
    )
    assert "CA key is an RSA-PSS key (id-RSASSA-PSS)" in assert_problem(r, 400)["detail"]
    assert api.counts() == before


# --- revoking an intermediate issuer ------------------------------------------------------

CERTS = "/api/v1/certificates"


def _crl_entry(api: Api, issuer_id: str, serial: int) -> x509.RevokedCertificate | None:
    """``serial``'s entry on the public CRL of ``issuer_id``, None if not listed."""
    r = api.get(f"{ISSUERS}/{issuer_id}/crl")
    assert r.status_code == 200, r.text
    return x509.load_der_x509_crl(r.content).get_revoked_certificate_by_serial_number(serial)


def _revocations(issuer_id: str) -> float:
    from certctl.metrics.registry import REGISTRY

    value = REGISTRY.get_sample_value("certctl_revocations_total", {"issuer": issuer_id})
    return value or 0.0


def _csr(cn: str) -> str:
    key = generate_private_key(KeyType.EC_P256)
    csr = x509.CertificateSigningRequestBuilder().subject_name(common_name_dn(cn))
    return csr.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM).decode()


def _intermediate(api: Api, issuer_id: str, **body: object) -> x509.Certificate:
    r = api.post(ISSUERS, api.admin_key, json={"id": issuer_id, "parent": "default", **body})
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["revoked_at"], r.json()["revocation_reason"]) == (
        "active",
        None,
        None,
    )
    return _cert(r.json()["certificate_pem"])


def test_a_revoked_intermediate_is_on_its_parents_crl_and_issues_no_more(api: Api) -> None:
    inter = _intermediate(api, "sub", path_length=1)
    leaf = api.issue(issuer="sub", common_name="a.example.com")
    assert _crl_entry(api, "default", inter.serial_number) is None  # signed now, reused below
    counted = _revocations("default")

    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "cACompromise"})

    assert r.status_code == 200, r.text
    assert _revocations("default") == counted + 1  # a certificate the parent signed
    revoked = r.json()
    assert revoked["status"] == "revoked"
    assert revoked["revocation_reason"] == "cACompromise"
    assert datetime.fromisoformat(revoked["revoked_at"]) == api.clock.now
    assert api.get(f"{ISSUERS}/sub", api.admin_key).json() == revoked
    # The parent's next CRL lists it with the reason (the CRL signed above is not reused).
    entry = _crl_entry(api, "default", inter.serial_number)
    assert entry is not None
    assert entry.revocation_date_utc == api.clock.now
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.ca_compromise
    # It issues nothing more: no certificate (either way), renewal or intermediate.
    before = api.counts()
    refusals = [
        api.post(CERTS, api.admin_key, json={"issuer": "sub", "common_name": "b.example.com"}),
        api.post(CERTS, api.admin_key, json={"issuer": "sub", "csr": _csr("c.example.com")}),
        api.post(f"{CERTS}/{leaf['id']}/renew", api.admin_key, json={}),
        api.post(ISSUERS, api.admin_key, json={"id": "sub-sub", "parent": "sub"}),
    ]
    for refused in refusals:
        detail = assert_problem(refused, 409)["detail"]
        assert detail.startswith("issuer sub was revoked on "), detail
        assert "(cACompromise) and issues nothing more" in detail
    assert api.counts() == before
    # Its own CRL is still served: what it issued before stays checkable.
    assert _crl_entry(api, "sub", int(leaf["serial"], 16)) is None
    # Once only (keyCompromise apart, below): the first reason and time stand.
    api.clock.advance(minutes=5)
    again = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "superseded"})
    assert assert_problem(again, 409)["detail"] == (
        f"issuer sub is already revoked (cACompromise, on {_minute(revoked)}): only "
        "keyCompromise or cACompromise can replace a revocation's reason, and it was revoked "
        "for a compromise already"
    )
    assert api.get(f"{ISSUERS}/sub", api.admin_key).json() == revoked
    [event] = [e for e in api.audit() if e["action"] == "issuer.revoke"]
    assert (event["actor"], event["target"], event["detail"]) == ("admin", "sub", "cACompromise")
    assert event["outcome"] == "success"
    # The parent and its other intermediates go on issuing.
    api.issue(issuer="default", common_name="d.example.com")
    _intermediate(api, "sub-2")


def _minute(issuer: dict[str, Any]) -> str:
    """An issuer's ``revoked_at`` as the 409s name it."""
    return f"{datetime.fromisoformat(issuer['revoked_at']):%Y-%m-%d %H:%M}Z"


def _openssl_crl_entry(api: Api, issuer_id: str, serial: int, tmp_path: Path) -> str:
    """``serial``'s entry in ``openssl crl -text`` of ``issuer_id``'s public CRL."""
    path = tmp_path / f"{issuer_id}.crl"
    path.write_bytes(api.get(f"{ISSUERS}/{issuer_id}/crl").content)
    text = ok(run("openssl", "crl", "-inform", "DER", "-in", path, "-noout", "-text")).stdout
    entries = re.split(r"\n\s*Serial Number: ", text)[1:]
    mine = [e for e in entries if int(e.split()[0], 16) == serial]
    assert len(mine) == 1, text  # RFC 5280 5.1.2.6: once per CRL
    return mine[0]


def test_key_compromise_of_an_intermediate_revoked_for_another_reason(
    api: Api, tmp_path: Path
) -> None:
    """Its reason becomes keyCompromise, its revocation date stays; nothing else changes.

    Before, a 409 'already revoked': the parent's CRL kept saying 'superseded' for a CA
    whose key was then found compromised. The CA/B Forum's Baseline Requirements (4.9.1.1)
    and Mozilla's Root Store Policy (6.1.1) let a revocation's reason become keyCompromise
    later, as certificates here already do.
    """
    inter = _intermediate(api, "sub")
    first = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "superseded"})
    assert first.status_code == 200, first.text
    assert "Superseded" in _openssl_crl_entry(api, "default", inter.serial_number, tmp_path)
    counted = _revocations("default")
    api.clock.advance(hours=5)

    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})

    assert r.status_code == 200, r.text
    assert r.json() == first.json() | {"revocation_reason": "keyCompromise"}
    assert api.get(f"{ISSUERS}/sub", api.admin_key).json() == r.json()
    assert _revocations("default") == counted  # a changed reason is no new revocation
    # The parent's next CRL (a real client reads it): keyCompromise, the first date.
    entry = _openssl_crl_entry(api, "default", inter.serial_number, tmp_path)
    assert re.search(r"X509v3 CRL Reason Code: *\n *Key Compromise\n", entry), entry
    when = datetime.fromisoformat(first.json()["revoked_at"])
    assert f"Revocation Date: {when:%b} {when.day:2} {when:%H:%M:%S %Y} GMT" in entry, entry
    [upgrade, _] = [e for e in api.audit() if e["action"] == "issuer.revoke"]
    assert (upgrade["actor"], upgrade["target"], upgrade["detail"], upgrade["outcome"]) == (
        "admin",
        "sub",
        "keyCompromise (reason was superseded, revocation date kept)",
        "success",
    )
    # Its refusals name the reason it has now, in this process at once.
    refused = api.post(CERTS, api.admin_key, json={"issuer": "sub", "common_name": "a.example"})
    assert "(keyCompromise) and issues nothing more" in assert_problem(refused, 409)["detail"]

    # Nothing replaces keyCompromise, not even itself; the store is left as it was.
    before = api.counts()
    for reason in ("keyCompromise", "superseded", None):
        again = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": reason})
        assert assert_problem(again, 409)["detail"] == (
            f"issuer sub is already revoked (keyCompromise, on {_minute(first.json())}): only "
            "keyCompromise or cACompromise can replace a revocation's reason, and it was revoked "
            "for a compromise already"
        )
    assert api.counts() == before
    assert api.get(f"{ISSUERS}/sub", api.admin_key).json() == r.json()
    # Other reasons never replace one: the first reason and date stand.
    sub2 = _intermediate(api, "sub-2")
    gone = api.post(f"{ISSUERS}/sub-2/revoke", api.admin_key, json={"reason": "superseded"})
    for reason in ("superseded", "cessationOfOperation", None):
        again = api.post(f"{ISSUERS}/sub-2/revoke", api.admin_key, json={"reason": reason})
        assert assert_problem(again, 409)["detail"] == (
            f"issuer sub-2 is already revoked (superseded, on {_minute(gone.json())}): only "
            "keyCompromise or cACompromise can replace a revocation's reason (its date stays)"
        )
    assert api.get(f"{ISSUERS}/sub-2", api.admin_key).json() == gone.json()
    # cACompromise, RFC 5280's name for a CA's compromised key (what the README suggests for
    # issuers), replaces a reason as keyCompromise does; then neither replaces the other.
    ca_compromise = {"reason": "cACompromise"}
    r = api.post(f"{ISSUERS}/sub-2/revoke", api.admin_key, json=ca_compromise)
    assert r.status_code == 200, r.text
    assert r.json() == gone.json() | {"revocation_reason": "cACompromise"}
    entry = _openssl_crl_entry(api, "default", sub2.serial_number, tmp_path)
    assert re.search(r"X509v3 CRL Reason Code: *\n *CA Compromise\n", entry), entry
    for reason in ("keyCompromise", "cACompromise"):
        again = api.post(f"{ISSUERS}/sub-2/revoke", api.admin_key, json={"reason": reason})
        assert assert_problem(again, 409)["detail"] == (
            f"issuer sub-2 is already revoked (cACompromise, on {_minute(gone.json())}): only "
            "keyCompromise or cACompromise can replace a revocation's reason, and it was "
            "revoked for a compromise already"
        )
    assert api.get(f"{ISSUERS}/sub-2", api.admin_key).json() == r.json()


def _unlistable(parent: str, child: str) -> str:
    return (
        f"issuer {parent}: its revoked intermediate {child} has a stored certificate that cannot "
        "be read (cut short or written over in the database outside certctl), and its serial was "
        "not stored (a row from before migration 0025, or written by an older release), so no "
        f"CRL of {parent} can list it"
    )


def _store_serial(api: Api, issuer_id: str, serial: str | None) -> None:
    """Set the issuer's stored serial behind certctl's back (None: as a row from before 0025)."""
    with api.services.engine.begin() as connection:
        connection.execute(update(Issuer).where(Issuer.id == issuer_id).values(serial=serial))


def test_a_revoked_intermediate_whose_stored_pem_is_unreadable_under_an_intermediate(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its parent an intermediate: that parent's CRL, and issuance from every intermediate,
    answered 500, as loading one judges it against every revoked issuer's certificate. The
    unreadable one is judged by the name stored beside it: a CA below it still signs nothing,
    the others (its parent among them) sign; its parent's CRL lists it by the serial stored
    beside it, and is a 409 naming it while that serial is not stored either (a CRL leaving
    it off would have clients accept what it signed); the others' CRLs are served.
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "mid", "parent": "default", "path_length": 2})
    assert r.status_code == 201, r.text
    r = api.post(ISSUERS, api.admin_key, json={"id": "broken", "parent": "mid", "path_length": 1})
    assert r.status_code == 201, r.text
    broken = _cert(r.json()["certificate_pem"])
    r = api.post(ISSUERS, api.admin_key, json={"id": "below", "parent": "broken"})
    assert r.status_code == 201, r.text
    _intermediate(api, "other")
    leaf = api.issue(common_name="leaf.example.com", issuer="mid")
    assert api.post(f"{ISSUERS}/broken/revoke", api.admin_key, json={}).status_code == 200
    assert api.post(f"{CERTS}/{leaf['id']}/revoke", api.admin_key).status_code == 200
    listed = {broken.serial_number, int(leaf["serial"], 16)}
    assert api.openssl_crl_serials("mid", tmp_path) == listed

    pem = broken.public_bytes(Encoding.PEM).decode()
    with api.services.engine.begin() as connection:
        connection.execute(
            text("UPDATE issuers SET certificate_pem = :pem WHERE id = 'broken'"),
            {"pem": pem[: len(pem) // 2]},
        )
    caplog.set_level("WARNING", logger="certctl.services")
    issuers.refresh_cached_issuers(api.services)  # the periodic check reads them all
    for issuer_id in ("mid", "other", "below"):
        api.services.forget_issuer(issuer_id)  # as a process loading them afresh
    later = api.issue(common_name="later.example.com", issuer="mid")
    assert api.post(f"{CERTS}/{later['id']}/revoke", api.admin_key).status_code == 200
    listed.add(int(later["serial"], 16))
    assert api.openssl_crl_serials("mid", tmp_path) == listed  # signed anew, broken on it
    _store_serial(api, "broken", None)  # as a row migrated from an unreadable PEM
    again = api.issue(common_name="again.example.com", issuer="mid")
    assert api.post(f"{CERTS}/{again['id']}/revoke", api.admin_key).status_code == 200
    listed.add(int(again["serial"], 16))
    refused = assert_problem(api.get(f"{ISSUERS}/mid/crl"), 409)
    assert refused["detail"] == (
        f"{_unlistable('mid', 'broken')}; none is signed: restore intermediate broken's "
        "certificate from a backup"
    )
    for served in ("default", "other"):  # nothing of theirs revoked: served, empty
        assert api.openssl_crl_serials(served, tmp_path) == set()
    for issuer_id in ("mid", "other"):
        api.issue(common_name=f"after.{issuer_id}.example", issuer=issuer_id)
    refused = assert_problem(
        api.post(CERTS, api.admin_key, json={"issuer": "below", "common_name": "x.example"}), 409
    )
    assert refused["detail"].startswith("issuer below is below issuer broken, revoked on ")
    _store_certificate(api, "broken", pem)
    assert api.openssl_crl_serials("mid", tmp_path) == listed


def test_a_revoked_intermediate_whose_stored_pem_is_unreadable_is_listed_by_its_stored_serial(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its PEM cut short in the database (a restore, a hand edit) made every fetch of its
    parent's CRL a 500 naming nothing, then a 409 naming the row to restore, its serial
    being only in that PEM. The serial is stored beside it now (migration 0025): the CRL
    lists it from there, with its revocation date and reason, and every revocation made
    since, and nothing is logged. Only a row without a stored serial (one migrated from an
    unreadable PEM) keeps the 409 naming the row to restore (logged once); a readable PEM
    gives such a row's serial (a row an older release wrote), and restored, it is listed.
    """
    broken = _intermediate(api, "broken")
    healthy = _intermediate(api, "healthy")
    leaf = api.issue(common_name="leaf.example.com")
    r = api.post(f"{ISSUERS}/broken/revoke", api.admin_key, json={"reason": "cACompromise"})
    assert r.status_code == 200, r.text
    revoked_at = datetime.fromisoformat(r.json()["revoked_at"])
    r = api.post(f"{ISSUERS}/healthy/revoke", api.admin_key, json={})
    assert r.status_code == 200, r.text
    assert api.post(f"{CERTS}/{leaf['id']}/revoke", api.admin_key).status_code == 200
    listed = {broken.serial_number, healthy.serial_number, int(leaf["serial"], 16)}
    assert api.openssl_crl_serials("default", tmp_path) == listed

    pem = broken.public_bytes(Encoding.PEM).decode()
    with api.services.engine.begin() as connection:
        connection.execute(
            text("UPDATE issuers SET certificate_pem = :pem WHERE id = 'broken'"),
            {"pem": pem[: len(pem) // 2]},
        )
    caplog.set_level("WARNING", logger="certctl.services")
    later = api.issue(common_name="later.example.com")
    assert api.post(f"{CERTS}/{later['id']}/revoke", api.admin_key).status_code == 200
    listed.add(int(later["serial"], 16))
    assert api.openssl_crl_serials("default", tmp_path) == listed
    entry = _openssl_crl_entry(api, "default", broken.serial_number, tmp_path)
    assert f"Revocation Date: {revoked_at:%b %e %H:%M:%S %Y} GMT" in entry, entry
    assert re.search(r"X509v3 CRL Reason Code: *\n *CA Compromise$", entry, re.M), entry
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []

    # No serial stored, as a row migrated from a PEM that could not be read: the 409.
    _store_serial(api, "broken", None)
    again = api.issue(common_name="again.example.com")
    assert api.post(f"{CERTS}/{again['id']}/revoke", api.admin_key).status_code == 200
    listed.add(int(again["serial"], 16))
    before = api.counts()
    detail = (
        f"{_unlistable('default', 'broken')}; none is signed: restore intermediate broken's "
        "certificate from a backup"
    )
    for path in ("crl", "crl?format=pem", "crl"):
        assert assert_problem(api.get(f"{ISSUERS}/default/{path}"), 409)["detail"] == detail
    assert api.counts() == before
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= 30]
    error = ("ERROR", f"{_unlistable('default', 'broken')}; none is signed until it is restored")
    assert logged == [error]
    # Once per process: another one (a worker, a replica) says it in its own log, once.
    from tests.api.test_certificates import _replica

    other = _replica(api, api.clock)
    try:
        for _ in range(2):
            with pytest.raises(Conflict, match=re.escape(detail)):
                crls.crl_for(other, "default")
    finally:
        other.engine.dispose()
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= 30] == [
        error,
        error,
    ]
    # Restored (its serial still not stored, as an older release writes a row): from its PEM.
    _store_certificate(api, "broken", pem)
    assert api.openssl_crl_serials("default", tmp_path) == listed


def test_a_revoked_intermediate_whose_stored_serial_is_garbled_stays_on_its_parents_crl(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its serial (migration 0025) written over by hand with what is no serial: the CRL left
    the revoked CA off with a WARNING, so clients accepted what it signed, where an unreadable
    PEM was a 409. Its PEM gives the serial then; unreadable too, the 409 naming it."""
    revoked = _intermediate(api, "garbled")
    assert api.post(f"{ISSUERS}/garbled/revoke", api.admin_key, json={}).status_code == 200
    listed = {revoked.serial_number}
    assert api.openssl_crl_serials("default", tmp_path) == listed
    caplog.set_level("WARNING", logger="certctl.services")
    for garbled in ("", "zz", "0a:0b", "-" + format_serial(revoked.serial_number)):
        _store_serial(api, "garbled", garbled)  # counted: the CRL is signed anew
        assert api.openssl_crl_serials("default", tmp_path) == listed, garbled
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []
    pem = revoked.public_bytes(Encoding.PEM).decode()
    _store_certificate(api, "garbled", pem[: len(pem) // 2])
    refused = assert_problem(api.get(f"{ISSUERS}/default/crl"), 409)
    assert refused["detail"].startswith(
        "issuer default: its revoked intermediate garbled has a stored certificate that cannot "
        "be read (cut short or written over in the database outside certctl), and its stored "
        "serial '-"
    ), refused["detail"]


def test_revocations_while_an_issuers_stored_certificate_is_unreadable(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Revoking it answered 500; so did revoking any other issuer for keyCompromise, which
    looks for the key's other certificates among every issuer's. Revoking it is a 409 naming
    it (its serial cannot be listed); the compromise is revoked, the unreadable one, which
    signs nothing, left as it is.
    """
    broken = _intermediate(api, "broken")
    compromised = _intermediate(api, "compromised")
    pem = broken.public_bytes(Encoding.PEM).decode()
    _store_certificate(api, "broken", pem[:100])
    before = api.counts()
    refused = assert_problem(api.post(f"{ISSUERS}/broken/revoke", api.admin_key, json={}), 409)
    assert refused["detail"].startswith("issuer broken: its stored certificate cannot be read")
    assert api.counts() == before
    caplog.set_level("WARNING", logger="certctl.services")
    r = api.post(f"{ISSUERS}/compromised/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert (
        "issuer broken: its stored certificate cannot be read, so whether it holds the key "
        "revoked with issuer compromised cannot be told; restore it and revoke it too if so"
    ) in [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert api.openssl_crl_serials("default", tmp_path) == {compromised.serial_number}
    _store_certificate(api, "broken", pem)
    assert api.post(f"{ISSUERS}/broken/revoke", api.admin_key, json={}).status_code == 200
    listed = {compromised.serial_number, broken.serial_number}
    assert api.openssl_crl_serials("default", tmp_path) == listed


@pytest.mark.parametrize("column", ["certificate_pem", "chain_pem"])
def test_an_unreadable_issuer_leaves_the_revocation_judgement_of_the_others_standing(
    api: Api, column: str
) -> None:
    """An issuer (not revoked) whose stored certificate or chain cannot be read, while another
    is revoked: every process judging the issuers afresh (a restart, another replica) failed
    on it, the metrics refresh with every gauge, and each certificate view. It signs nothing
    (a 409 naming it); the others are judged as before.
    """
    from starlette.testclient import TestClient

    from certctl.api.app import create_app
    from certctl.metrics.registry import REGISTRY
    from certctl.server.periodic import refresh_metrics
    from tests.api.test_certificates import _replica

    for issuer_id in ("gone", "broken", "kept"):
        _intermediate(api, issuer_id)
    leaf = api.issue(common_name="leaf.example.com", issuer="kept")
    assert api.post(f"{ISSUERS}/gone/revoke", api.admin_key, json={}).status_code == 200
    with api.services.engine.begin() as connection:
        connection.execute(update(Issuer).where(Issuer.id == "broken").values({column: "x"}))
    other = _replica(api, api.clock)  # judges afresh
    try:
        assert set(revocation.issuer_revocations(other)) == {"gone"}
        refresh_metrics(other)
        for issuer_id, revoked in (("gone", 1), ("kept", 0)):
            labels = {"issuer": issuer_id}
            assert REGISTRY.get_sample_value("certctl_issuer_revoked", labels) == revoked
        with TestClient(create_app(other), base_url="https://testserver") as client:
            headers = {"Authorization": f"Bearer {api.admin_key}"}
            r = client.get(f"{CERTS}/{leaf['id']}", headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["issuer_revoked"] is None
    finally:
        other.engine.dispose()


@pytest.mark.parametrize("column", ["certificate_pem", "chain_pem"])
def test_an_intermediate_whose_stored_pem_is_unreadable_answers_409_naming_it(
    api: Api, tmp_path: Path, caplog: pytest.LogCaptureFixture, column: str
) -> None:
    """Its own CRL, ca.pem and ca.der (public routes) and issuance from it answered 500
    "internal error" naming nothing once its stored certificate or chain was cut short in
    the database: now a 409 naming the issuer and what cannot be read, logged once.
    """
    broken = _intermediate(api, "broken")
    assert api.post(f"{ISSUERS}/broken/revoke", api.admin_key, json={}).status_code == 200
    assert api.get(f"{ISSUERS}/broken/ca.pem").status_code == 200  # cached as it was
    with api.services.engine.begin() as connection:
        stored = connection.execute(select(Issuer.__table__.c[column]).where(Issuer.id == "broken"))
        pem = stored.scalar_one()
        assert pem
        connection.execute(
            update(Issuer).where(Issuer.id == "broken").values({column: pem[: len(pem) // 2]})
        )
    caplog.set_level("ERROR", logger="certctl.services")
    # This process held its certificates: a changed certificate is seen (the credential
    # generation moved), the chain it held is served as it was until it loads it afresh.
    held = api.get(f"{ISSUERS}/broken/ca.pem")
    assert held.status_code == (409 if column == "certificate_pem" else 200), held.text
    api.services.forget_issuer("broken")  # as a process loading it afresh
    before = api.counts()
    what = "certificate" if column == "certificate_pem" else "chain"
    restore = f"its {what}"
    detail = (
        f"issuer broken: its stored {what} cannot be read (cut short or written over in the "
        f"database outside certctl); it signs nothing: restore {restore} or use another issuer"
    )
    for _ in range(2):
        for path in ("crl", "crl?format=pem", "ca.pem", "ca.pem?chain=true", "ca.der"):
            assert assert_problem(api.get(f"{ISSUERS}/broken/{path}"), 409)["detail"] == detail
    # As the API's document says (it listed the 409 for the CRL only).
    spec = api.get("/api/v1/openapi.json").json()
    for path in ("crl", "ca.pem", "ca.der"):
        assert "409" in spec["paths"][f"{ISSUERS}/{{id}}/{path}"]["get"]["responses"], path
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"issuer broken: its stored {what} cannot be read (cut short or written over in the "
        f"database outside certctl); it signs nothing until {restore} is restored"
    ]
    assert api.counts() == before
    # Its parent's CRL lists it either way: by the serial stored beside its certificate.
    assert api.openssl_crl_serials("default", tmp_path) == {broken.serial_number}
    # Restored: served again.
    with api.services.engine.begin() as connection:
        connection.execute(update(Issuer).where(Issuer.id == "broken").values({column: pem}))
    api.services.forget_issuer("broken")
    assert x509.load_pem_x509_certificate(api.get(f"{ISSUERS}/broken/ca.pem").content) == broken
    crl = x509.load_der_x509_crl(api.get(f"{ISSUERS}/broken/crl").content)
    assert crl.is_signature_valid(broken.public_key())  # type: ignore[arg-type]


def test_what_cannot_be_revoked_is_refused_and_left_as_it_was(api: Api) -> None:
    from certctl.services import issuers

    _intermediate(api, "sub")
    # A managed service's CA (an intermediate here, so the refusal is not the root's).
    issuers.create_issuer(
        api.services,
        None,
        issuer_id="svc.web",
        name="svc.web",
        subject=None,
        common_name="web CA",
        key_type="ec-p256",
        validity=timedelta(days=90),
        parent="default",
    )
    # An intermediate whose parent certctl does not hold.
    _, inter, inter_key = _root_and_intermediate("Outside Root", "Outside Inter", api.clock())
    r = _import_pair(api, "outside", inter, inter_key)
    assert r.status_code == 201, r.text
    ids = ("default", "sub", "svc.web", "outside")
    before = {i: api.get(f"{ISSUERS}/{i}", api.admin_key).json() for i in ids}

    def revoke(issuer_id: str, body: object, key: str | None = None) -> Response:
        return api.post(f"{ISSUERS}/{issuer_id}/revoke", key or api.admin_key, json=body)

    detail = assert_problem(revoke("default", {}), 409)["detail"]
    assert detail.startswith("issuer default is a root CA (self-signed): no CRL above it")
    detail = assert_problem(revoke("svc.web", {}), 409)["detail"]
    assert detail.startswith("issuer svc.web is the CA of managed service web")
    detail = assert_problem(revoke("outside", {}), 409)["detail"]
    assert detail == (
        "issuer outside was signed by CN=Outside Root, which is not a certctl issuer: "
        "no CRL here can list it; revoke it at that CA"
    )
    assert assert_problem(revoke("nope", {}), 404)["detail"] == "issuer nope not found"
    # The reasons of a certificate's revocation, checked the same way.
    for reason in ("certificateHold", "removeFromCRL", "compromised"):
        detail = assert_problem(revoke("sub", {"reason": reason}), 400)["detail"]
        assert detail.startswith(f"{reason}: "), detail
        assert "one of affiliationChanged, cACompromise, " in detail, detail
    assert "unknown revocation reason" in detail  # "compromised"
    assert_problem(revoke("sub", {"reason": "superseded", "at": "now"}), 400)
    viewer = api.actor_key("viewer", ["r-viewer"])
    assert_problem(revoke("sub", {}, viewer), 403)
    assert_problem(api.post(f"{ISSUERS}/sub/revoke", json={}), 401)
    assert {i: api.get(f"{ISSUERS}/{i}", api.admin_key).json() for i in ids} == before
    # Nothing revoked: the one issuer.revoke event is the viewer's refusal.
    revocations = [
        (e["actor"], e["outcome"]) for e in api.audit() if e["action"] == "issuer.revoke"
    ]
    assert revocations == [("viewer", "denied")]
    # r-operator holds issuer.revoke; no body is reason unspecified, as for certificates.
    operator = api.actor_key("op", ["r-operator"])
    r = api.post(f"{ISSUERS}/sub/revoke", operator)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["revocation_reason"]) == ("revoked", "unspecified")


def test_an_imported_intermediate_is_revoked_onto_the_crl_of_the_issuer_that_signed_it(
    api: Api,
) -> None:
    # An import records no parent: it is found by signature, past another CA of the same
    # name (imported first, under an id that sorts first).
    now = api.clock()
    root, inter, inter_key = _root_and_intermediate("Corp Root", "Corp Inter", now)
    twin_key = generate_private_key(KeyType.EC_P256)
    twin = create_root_ca(
        twin_key, common_name_dn("Corp Root"), validity=timedelta(days=9), now=now
    )
    for issuer_id, cert, key in (
        ("a-twin", twin.certificate, twin_key),
        ("corp-root", root.certificate, root.private_key),
        ("corp-inter", inter, inter_key),
    ):
        r = _import_pair(api, issuer_id, cert, key)
        assert r.status_code == 201, r.text

    r = api.post(f"{ISSUERS}/corp-inter/revoke", api.admin_key, json={"reason": "superseded"})

    assert r.status_code == 200, r.text
    entry = _crl_entry(api, "corp-root", inter.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.superseded
    assert _crl_entry(api, "a-twin", inter.serial_number) is None
    assert _crl_entry(api, "default", inter.serial_number) is None


def test_a_revocation_reaches_another_process_at_its_issuer_refresh(api: Api) -> None:
    # Another worker or replica on the same store, with its own issuer cache: it drops the
    # revoked issuer at its periodic refresh (as a renewed one), then refuses to issue.
    from starlette.testclient import TestClient

    from certctl.api.app import create_app
    from certctl.services import issuers
    from certctl.services.context import Services

    _intermediate(api, "sub")
    other = Services(api.services.engine, api.services.sessions, api.services.wrapper, api.clock)
    body = {"issuer": "sub", "common_name": "o.example.com"}
    with TestClient(create_app(other), base_url="https://testserver") as client:
        headers = {"Authorization": f"Bearer {api.admin_key}"}
        assert client.post(CERTS, headers=headers, json=body).status_code == 201  # cached
        assert issuers.refresh_cached_issuers(other) == []

        r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "superseded"})
        assert r.status_code == 200, r.text

        assert issuers.refresh_cached_issuers(other) == ["sub"]
        refused = client.post(CERTS, headers=headers, json=body)
        detail = assert_problem(refused, 409)["detail"]
        assert detail.startswith("issuer sub was revoked on "), detail
        assert "(superseded) and issues nothing more" in detail
        assert issuers.refresh_cached_issuers(other) == []  # reloaded, revoked
        # Its reason changed to keyCompromise there: here too at the refresh (its
        # refusals named superseded until a restart).
        r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
        assert r.status_code == 200, r.text
        assert issuers.refresh_cached_issuers(other) == ["sub"]
        refused = client.post(CERTS, headers=headers, json=body)
        assert "(keyCompromise) and issues nothing more" in assert_problem(refused, 409)["detail"]
        assert issuers.refresh_cached_issuers(other) == []


def test_an_intermediate_below_a_revoked_one_issues_no_more_here_or_elsewhere(api: Api) -> None:
    # What sub-sub signs chains through sub: once sub is revoked, clients checking the whole
    # chain refuse it. Before, sub-sub went on issuing (only the revoked issuer refused).
    from starlette.testclient import TestClient

    from certctl.api.app import create_app
    from certctl.services import issuers
    from certctl.services.context import Services

    _intermediate(api, "sub", path_length=1)
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub-sub", "parent": "sub"})
    assert r.status_code == 201, r.text
    api.issue(issuer="sub-sub", common_name="a.example.com")  # cached here
    other = Services(api.services.engine, api.services.sessions, api.services.wrapper, api.clock)
    body = {"issuer": "sub-sub", "common_name": "o.example.com"}
    with TestClient(create_app(other), base_url="https://testserver") as client:
        headers = {"Authorization": f"Bearer {api.admin_key}"}
        assert client.post(CERTS, headers=headers, json=body).status_code == 201  # cached there

        r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
        assert r.status_code == 200, r.text

        before = api.counts()
        for refused in (
            api.post(CERTS, api.admin_key, json=body),
            api.post(CERTS, api.admin_key, json={"issuer": "sub-sub", "csr": _csr("c.example")}),
        ):
            detail = assert_problem(refused, 409)["detail"]
            assert detail.startswith("issuer sub-sub is below issuer sub, revoked on "), detail
            assert "(keyCompromise), and issues nothing more" in detail
        assert api.counts() == before
        # Itself not revoked (its parent's CRL does not list it): the status says so.
        assert api.get(f"{ISSUERS}/sub-sub", api.admin_key).json()["status"] == "active"
        # Another process drops it at its refresh, then refuses too; and keeps it after.
        assert issuers.refresh_cached_issuers(other) == ["sub-sub"]
        refused = client.post(CERTS, headers=headers, json=body)
        assert "below issuer sub, revoked on" in assert_problem(refused, 409)["detail"]
        assert issuers.refresh_cached_issuers(other) == []
    # The root and other branches go on.
    api.issue(issuer="default", common_name="d.example.com")


def test_a_load_that_read_before_a_revocation_does_not_cache_what_it_read(api: Api) -> None:
    # A request loading the issuer reads the store, a revocation commits and drops the
    # cache, then the load caches its stale (unrevoked) copy: it issued from a revoked CA
    # until the next refresh. Loads taken before a drop are no longer cached.
    from certctl.services import issuers

    _intermediate(api, "sub")
    services = api.services
    services.forget_issuer("sub")
    version = services.issuer_cache_version()
    stale = issuers.load_issuer(services, "sub")  # what the slow request read
    services.forget_issuer("sub")
    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={})
    assert r.status_code == 200, r.text
    services.cache_issuer("sub", stale, None, version)
    assert services.cached_issuer("sub") is None
    refused = api.post(CERTS, api.admin_key, json={"issuer": "sub", "common_name": "x.example"})
    assert "issuer sub was revoked on" in assert_problem(refused, 409)["detail"]


def test_a_revoked_issuer_loaded_while_another_is_dropped_still_refuses(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The refusal read the revocation from the cache, apart from the load: a load that was
    # not cached (another issuer dropped meanwhile, as a refresh or a renewal does) left no
    # revocation to read, and the revoked CA issued. A refresh dropping sub then sub-sub
    # after a revocation elsewhere is such a time.
    _intermediate(api, "sub")
    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    services = api.services
    unwrap = services.wrapper.unwrap

    def unwrap_while_dropping(wrapped: bytes, *, context: str) -> bytes:
        services.forget_issuer("default")  # another thread, between the read and the cache
        return unwrap(wrapped, context=context)

    monkeypatch.setattr(services.wrapper, "unwrap", unwrap_while_dropping)
    before = api.counts()
    for body in (
        {"issuer": "sub", "common_name": "b.example.com"},
        {"issuer": "sub", "csr": _csr("c.example.com")},
    ):
        refused = api.post(CERTS, api.admin_key, json=body)
        assert "issuer sub was revoked on" in assert_problem(refused, 409)["detail"]
    assert api.counts() == before


def _imported_twice(api: Api) -> x509.Certificate:
    """Intermediate ``sub``, and the same CA imported again as ``sub-copy``."""
    from certctl.services import issuers

    sub = _intermediate(api, "sub")
    sub_ca = issuers.load_issuer(api.services, "sub")
    root_pem = api.get(f"{ISSUERS}/default/ca.pem").text
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "sub-copy",
            "certificate_pem": sub.public_bytes(Encoding.PEM).decode() + root_pem,
            "private_key_pem": key_to_pem(sub_ca.private_key).decode(),
        },
    )
    assert r.status_code == 201, r.text
    return sub


def test_the_same_intermediate_revoked_under_two_ids_is_listed_once(api: Api) -> None:
    # Imported twice (sub, sub-copy) and revoked under both ids: the parent's CRL listed the
    # serial twice (RFC 5280 5.1.2.6: a serial appears once in a CRL); the first
    # revocation's date stands, with keyCompromise once either id was revoked for it (the
    # same certificate, so the same key).
    sub = _imported_twice(api)
    first = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "superseded"})
    assert first.status_code == 200, first.text
    api.clock.advance(minutes=5)
    again = api.post(f"{ISSUERS}/sub-copy/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert again.status_code == 200, again.text

    crl = x509.load_der_x509_crl(api.get(f"{ISSUERS}/default/crl").content)
    entries = [e for e in crl if e.serial_number == sub.serial_number]
    assert len(entries) == 1
    assert entries[0].revocation_date_utc == datetime.fromisoformat(first.json()["revoked_at"])
    reason = entries[0].extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise


@pytest.mark.parametrize("upgraded", ["sub", "sub-copy"])
def test_key_compromise_of_either_id_of_an_intermediate_imported_twice_is_on_the_crl(
    api: Api, tmp_path: Path, upgraded: str
) -> None:
    # The parent's CRL lists the certificate once, with the first revocation's data: sub's.
    # keyCompromise given to sub-copy afterwards (its first revocation, or a changed
    # reason) was not on it; whichever id says so, the key is compromised.
    sub = _imported_twice(api)
    first = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "superseded"})
    assert first.status_code == 200, first.text
    api.clock.advance(minutes=5)
    r = api.post(f"{ISSUERS}/sub-copy/revoke", api.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200, r.text
    assert "Superseded" in _openssl_crl_entry(api, "default", sub.serial_number, tmp_path)
    api.clock.advance(minutes=5)

    r = api.post(f"{ISSUERS}/{upgraded}/revoke", api.admin_key, json={"reason": "keyCompromise"})

    assert r.status_code == 200, r.text
    assert r.json()["revocation_reason"] == "keyCompromise"
    entry = _openssl_crl_entry(api, "default", sub.serial_number, tmp_path)
    assert re.search(r"X509v3 CRL Reason Code: *\n *Key Compromise\n", entry), entry
    when = datetime.fromisoformat(first.json()["revoked_at"])
    assert f"Revocation Date: {when:%b} {when.day:2} {when:%H:%M:%S %Y} GMT" in entry, entry


def test_a_revoked_ca_imported_again_or_below_it_issues_nothing(api: Api) -> None:
    # The revocation was found by the chain above an issuer only: the same CA imported
    # under another id (before the revocation) went on issuing under a certificate its
    # parent's CRL lists, and an import of it, or of a CA it signed, after the revocation
    # was stored and issued from until the next refresh.
    from certctl.pki import get_profile
    from certctl.services import issuers

    sub = _intermediate(api, "sub", path_length=1)
    sub_ca = issuers.load_issuer(api.services, "sub")
    root_pem = api.get(f"{ISSUERS}/default/ca.pem").text
    sub_pem = sub.public_bytes(Encoding.PEM).decode() + root_pem
    key_pem = key_to_pem(sub_ca.private_key).decode()
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={"id": "sub-copy", "certificate_pem": sub_pem, "private_key_pem": key_pem},
    )
    assert r.status_code == 201, r.text
    body = {"issuer": "sub-copy", "common_name": "a.example.com"}
    assert api.post(CERTS, api.admin_key, json=body).status_code == 201  # cached

    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text

    before = api.counts()
    for _ in range(2):  # cached when revoked, then loaded again
        detail = assert_problem(api.post(CERTS, api.admin_key, json=body), 409)["detail"]
        assert detail.startswith("issuer sub-copy holds the certificate of issuer sub, revoked on ")
        assert "(keyCompromise), and issues nothing more" in detail
        api.services.forget_issuer("sub-copy")
    # Imports of it, or of a CA it signed, are refused; nothing is stored.
    child_key = generate_private_key(KeyType.EC_P256)
    child = sub_ca.issue(
        child_key.public_key(),
        common_name_dn("Child CA"),
        profile=get_profile("intermediate"),
        validity=timedelta(days=30),
        now=api.clock(),
    ).certificate
    for issuer_id, cert_pem, key in (
        ("sub-again", sub_pem, key_pem),
        ("child", child.public_bytes(Encoding.PEM).decode() + sub_pem, key_to_pem(child_key)),
    ):
        r = api.post(
            ISSUERS,
            api.admin_key,
            json={
                "id": issuer_id,
                "certificate_pem": cert_pem,
                "private_key_pem": key if isinstance(key, str) else key.decode(),
            },
        )
        detail = assert_problem(r, 409)["detail"]
        assert "issuer sub, revoked on " in detail, detail
        assert detail.endswith("not imported")
    assert api.counts() == before


@pytest.mark.parametrize("revoked", ["before the store", "after the store"])
def test_an_intermediate_created_while_its_parent_is_revoked_issues_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch, revoked: str
) -> None:
    # POST /issuers with parent=sub loads sub, signs, then stores and caches the new CA.
    # A revocation of sub landing in between (another request, another replica) left the
    # new intermediate cached as unrevoked: it issued under a revoked CA in this process
    # until the next refresh. Landing before the store, it was even created (201).
    from certctl.auth.permissions import PERMISSIONS
    from certctl.services.context import Principal

    _intermediate(api, "sub", path_length=1)
    services = api.services
    admin = Principal("admin", ("r-admin",), frozenset(PERMISSIONS), "api_key", "replica-2")
    fired: list[str] = []

    def revoke_sub() -> None:
        if not fired:
            fired.append(revoked)
            issuer_revocation.revoke_issuer(services, admin, "sub", "keyCompromise")

    if revoked == "before the store":
        crl_urls = services.crl_urls

        def crl_urls_revoking(issuer_id: str) -> tuple[str, ...]:
            revoke_sub()  # sub is loaded, sub-sub not signed yet
            return crl_urls(issuer_id)

        monkeypatch.setattr(services, "crl_urls", crl_urls_revoking)
    else:
        cache_issuer = services.cache_issuer

        def cache_issuer_after_revocation(issuer_id: str, *args: Any, **kw: Any) -> None:
            if issuer_id == "sub-sub":
                revoke_sub()  # sub-sub stored, not cached yet
            cache_issuer(issuer_id, *args, **kw)

        monkeypatch.setattr(services, "cache_issuer", cache_issuer_after_revocation)

    r = api.post(ISSUERS, api.admin_key, json={"id": "sub-sub", "parent": "sub"})

    assert fired == [revoked]
    if revoked == "before the store":
        detail = assert_problem(r, 409)["detail"]
        assert " is below issuer sub, revoked on " in detail, detail
        assert detail.endswith("not created")
        assert_problem(api.get(f"{ISSUERS}/sub-sub", api.admin_key), 404)
        assert services.cached_issuer("sub-sub") is None
        return
    assert r.status_code == 201, r.text  # stored before the revocation: as any issuer below
    before = api.counts()
    refused = api.post(CERTS, api.admin_key, json={"issuer": "sub-sub", "common_name": "a.example"})
    detail = assert_problem(refused, 409)["detail"]
    assert detail.startswith("issuer sub-sub is below issuer sub, revoked on "), detail
    assert api.counts() == before


def test_the_revoked_issuer_of_a_certificate_without_its_chain(api: Api) -> None:
    """What mTLS checks for a resumed TLS session, which keeps no verified chain.

    The certificate's authorityKeyIdentifier names the revoked issuer's key; without one,
    its issuer name and signature do. Twins: the same name on another key, a certificate of
    an issuer that is not revoked.
    """
    from certctl.services import issuers, revocation

    _intermediate(api, "sub", path_length=1)
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub-sub", "parent": "sub"})
    assert r.status_code == 201, r.text
    sub_ca = issuers.load_issuer(api.services, "sub")
    with_aki = _cert(api.issue(issuer="sub", common_name="a.example.com")["certificate_pem"])
    # Two levels below sub: found by walking up certctl's issuers (sub-sub, then sub).
    deeper = _cert(api.issue(issuer="sub-sub", common_name="d.example.com")["certificate_pem"])
    of_default = _cert(api.issue(common_name="b.example.com")["certificate_pem"])
    now = api.clock()

    def without_aki(signer: CertificateIssuerPrivateKeyTypes) -> bytes:
        key = generate_private_key(KeyType.EC_P256)
        return (
            x509.CertificateBuilder()
            .subject_name(common_name_dn("mallory"))
            .issuer_name(sub_ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .sign(signer, hashes.SHA256())
            .public_bytes(Encoding.DER)
        )

    signed_by_sub = without_aki(sub_ca.private_key)
    same_name_other_key = without_aki(generate_private_key(KeyType.EC_P256))
    certificates = (
        with_aki.public_bytes(Encoding.DER),
        signed_by_sub,
        same_name_other_key,
        deeper.public_bytes(Encoding.DER),
    )
    assert [revocation.revoked_issuer_of(api.services, c) for c in certificates] == [None] * 4

    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert [revocation.revoked_issuer_of(api.services, c) for c in certificates] == [
        "sub",
        "sub",
        None,
        "sub",
    ]
    assert revocation.revoked_issuer_of(api.services, of_default.public_bytes(Encoding.DER)) is None
    # An authorityKeyIdentifier cryptography cannot parse (OpenSSL may accept what it refuses):
    # judged by name and signature (broken by the edit here: not sub's), never a 500.
    der = with_aki.public_bytes(Encoding.DER)
    key_id = with_aki.extensions.get_extension_for_class(
        x509.AuthorityKeyIdentifier
    ).value.key_identifier
    assert key_id is not None
    at = der.index(key_id)
    garbled = der[: at - 2] + b"\x04" + der[at - 1 :]  # its [0] keyIdentifier tag made 0x04
    with pytest.raises(ValueError, match="error parsing asn1 value"):
        _ = x509.load_der_x509_certificate(garbled).extensions
    assert revocation.revoked_issuer_of(api.services, garbled) is None


def test_key_identifiers_alone_never_decide_the_revoked_issuer_of_a_certificate(
    api: Api,
) -> None:
    """A resumed session's walk verifies signatures; key identifiers only pick candidates.

    Key identifiers are extensions whoever makes a certificate writes. Before: an imported
    root claiming the default issuer's subjectKeyIdentifier and revoked sub's as its
    authorityKeyIdentifier made every certificate of the (innocent) default issuer "below
    sub" on resumed sessions; and a certificate sub's key signed under sub's name, whose
    authorityKeyIdentifier named another key, was found under no revoked issuer.
    """
    from certctl.services import issuers, revocation

    sub = _intermediate(api, "sub")
    sub_ca = issuers.load_issuer(api.services, "sub")
    default = issuers.load_issuer(api.services, "default").certificate
    now = api.clock()

    def key_id(cert: x509.Certificate) -> bytes:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    forger_key = generate_private_key(KeyType.EC_P256)
    _import_self_signed(
        api, "forger", "Forged key ids", forger_key, ski=key_id(default), aki=key_id(sub)
    )
    of_default = _cert(api.issue(common_name="b.example.com")["certificate_pem"])

    def signed(issuer: x509.Name, aki: bytes, key: CertificateIssuerPrivateKeyTypes) -> bytes:
        return (
            x509.CertificateBuilder()
            .subject_name(common_name_dn("mallory"))
            .issuer_name(issuer)
            .public_key(generate_private_key(KeyType.EC_P256).public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
            .sign(key, hashes.SHA256())
            .public_bytes(Encoding.DER)
        )

    lying_aki = signed(sub.subject, b"\x01" * 20, sub_ca.private_key)
    # sub's key under another name (a twin certctl does not hold): its AKI and signature.
    twin_signed = signed(common_name_dn("Twin"), key_id(sub), sub_ca.private_key)
    forged_aki = signed(common_name_dn("Twin"), key_id(sub), forger_key)

    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert revocation.revoked_issuer_of(api.services, of_default.public_bytes(Encoding.DER)) is None
    assert revocation.revoked_issuer_of(api.services, lying_aki) == "sub"
    assert revocation.revoked_issuer_of(api.services, twin_signed) == "sub"
    assert revocation.revoked_issuer_of(api.services, forged_aki) is None


def test_a_resumed_sessions_certificate_below_a_compromised_key_under_another_name(
    api: Api,
) -> None:
    """The compromised key is found by its signatures, whatever name and SKI it went by.

    A root of sub's key under another name and its own subjectKeyIdentifier (imported
    before the compromise; a root is on no CRL, so nothing revokes it): before, neither a
    certificate it signed nor one below an intermediate created under it was found below
    sub on a resumed session (the walk matched sub by name or key identifier only).
    """
    from certctl.services import issuers, revocation

    _intermediate(api, "sub")
    sub_key = issuers.load_issuer(api.services, "sub").private_key
    _import_self_signed(api, "twin", "Twin root", sub_key, ski=b"\x02" * 20)
    r = api.post(ISSUERS, api.admin_key, json={"id": "x", "parent": "twin"})
    assert r.status_code == 201, r.text
    certificates = [
        _cert(
            api.issue(issuer=issuer, common_name="c.example.com")["certificate_pem"]
        ).public_bytes(Encoding.DER)
        for issuer in ("twin", "x")
    ]
    assert [revocation.revoked_issuer_of(api.services, c) for c in certificates] == [None, None]

    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert [revocation.revoked_issuer_of(api.services, c) for c in certificates] == ["sub", "sub"]


@pytest.mark.parametrize("where", ["here", "on another replica"])
def test_an_intermediate_imported_without_its_chain_under_a_compromised_key_issues_nothing(
    api: Api, where: str
) -> None:
    """Below a compromised key is judged by its signature too, not only by the chain given.

    Before: a CA that sub's key signed, imported without sub in its bundle (accepted with a
    warning), kept issuing after sub was revoked for keyCompromise, in every process; and
    another one was imported after it.
    """
    from certctl.pki import get_profile
    from certctl.services import issuers

    _intermediate(api, "sub", path_length=1)
    sub_ca = issuers.load_issuer(api.services, "sub")

    def signed_by_sub(cn: str) -> dict[str, str]:
        key = generate_private_key(KeyType.EC_P256)
        cert = sub_ca.issue(
            key.public_key(),
            common_name_dn(cn),
            profile=get_profile("intermediate"),
            validity=timedelta(days=30),
            now=api.clock(),
        ).certificate
        return {
            "certificate_pem": cert.public_bytes(Encoding.PEM).decode(),
            "private_key_pem": key_to_pem(key).decode(),
        }

    r = api.post(ISSUERS, api.admin_key, json={"id": "x", **signed_by_sub("X CA")})
    assert r.status_code == 201, r.text
    api.issue(issuer="x", common_name="a.example.com")  # cached, issuing

    if where == "here":
        r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
        assert r.status_code == 200, r.text
        assert api.services.cached_issuer("x") is None
    else:  # this process learns it from its refresh
        with api.services.sessions.begin() as session:
            session.execute(
                update(Issuer)
                .where(Issuer.id == "sub")
                .values(revoked_at=api.clock(), revocation_reason="keyCompromise")
            )
        assert "x" in issuers.refresh_cached_issuers(api.services)
    before = api.counts()
    refused = api.post(CERTS, api.admin_key, json={"issuer": "x", "common_name": "b.example"})
    detail = assert_problem(refused, 409)["detail"]
    assert detail.startswith("issuer x is below issuer sub, revoked on "), detail
    r = api.post(ISSUERS, api.admin_key, json={"id": "x2", **signed_by_sub("X2 CA")})
    detail = assert_problem(r, 409)["detail"]
    assert " is below issuer sub, revoked on " in detail, detail
    assert api.counts() == before


def test_a_certificates_pem_is_served_without_unwrapping_its_issuers_key(api: Api) -> None:
    """GET /api/v1/certificates/{id} as PEM sends the leaf and the chain, read key-free.

    Before, it loaded the whole CA for its chain: a process's first such request unwrapped
    the issuer's key, and a key no KEK opens (a damaged row) made a stored certificate a 500.
    """
    r = api.post(ISSUERS, api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text
    issued = api.issue(issuer="sub", common_name="leaf.example.com")
    _damage_key(api, "sub")
    pem = api.get(f"/api/v1/certificates/{issued['id']}?format=pem", api.admin_key)
    assert pem.status_code == 200, pem.text
    served = x509.load_pem_x509_certificates(pem.content)
    assert served == [_cert(issued["certificate_pem"]), _cert(r.json()["certificate_pem"])]
    assert api.services.cached_issuer("sub") is None


def _same_key_twins(api: Api) -> tuple[x509.Certificate, x509.Certificate]:
    """Intermediate ``sub``; ``twin``, another certificate of its key from ``default``;
    ``cross``, one cross-signed by a root certctl does not hold, with ``cross-sub`` below it;
    and ``root-twin``, a self-signed one.
    """
    from certctl.pki import get_profile

    sub = _intermediate(api, "sub", path_length=1)
    sub_ca = issuers.load_issuer(api.services, "sub")
    default = issuers.load_issuer(api.services, "default")
    key_pem = key_to_pem(sub_ca.private_key).decode()
    other_root_key = generate_private_key(KeyType.EC_P256)
    other_root = CertificateAuthority(
        create_root_ca(
            other_root_key,
            common_name_dn("Other Root"),
            validity=timedelta(days=90),
            now=api.clock(),
        ).certificate,
        other_root_key,
    )
    twins = []
    for issuer_id, parent in (("twin", default), ("cross", other_root)):
        cert = parent.issue(
            sub_ca.private_key.public_key(),
            sub.subject,
            profile=get_profile("intermediate").with_path_length(1),
            validity=timedelta(days=60),
            now=api.clock(),
        ).certificate
        pem = (cert, parent.certificate)
        r = api.post(
            ISSUERS,
            api.admin_key,
            json={
                "id": issuer_id,
                "certificate_pem": b"".join(c.public_bytes(Encoding.PEM) for c in pem).decode(),
                "private_key_pem": key_pem,
            },
        )
        assert r.status_code == 201, r.text
        twins.append(cert)
    r = api.post(ISSUERS, api.admin_key, json={"id": "cross-sub", "parent": "cross"})
    assert r.status_code == 201, r.text
    # And a root of the key (the root a cross-signed certificate stands for).
    root = create_root_ca(
        sub_ca.private_key, sub.subject, validity=timedelta(days=60), now=api.clock()
    ).certificate
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "root-twin",
            "certificate_pem": root.public_bytes(Encoding.PEM).decode(),
            "private_key_pem": key_pem,
        },
    )
    assert r.status_code == 201, r.text
    return twins[0], twins[1]


@pytest.mark.parametrize(
    "reason", ["keyCompromise", "cACompromise", "superseded, then keyCompromise"]
)
def test_a_compromised_intermediates_key_issues_nothing_under_another_certificate(
    api: Api, reason: str
) -> None:
    # A re-issued or cross-signed certificate of a CA revoked for a compromise, imported under
    # another id, went on signing with the key declared compromised (only the same
    # certificate, or CAs below it, refused). Now every certificate of the key refuses, here
    # and in another process at its refresh; the one its certctl parent signed is on that
    # parent's CRL, as keyCompromise revokes every certificate of a key.
    twin, cross = _same_key_twins(api)
    other = Services(api.services.engine, api.services.sessions, api.services.wrapper, api.clock)
    for issuer_id in ("twin", "cross", "cross-sub", "root-twin"):
        api.issue(issuer=issuer_id, common_name=f"{issuer_id}.example.com")  # cached here
        assert issuers.load_issuer_state(other, issuer_id)[1] is None  # and there
    if reason.startswith("superseded"):
        r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "superseded"})
        assert r.status_code == 200, r.text
        # No compromise: the key's other certificates go on.
        for issuer_id in ("twin", "cross", "cross-sub", "root-twin"):
            api.issue(issuer=issuer_id, common_name=f"{issuer_id}.example.com")
        assert issuers.refresh_cached_issuers(other) == []
        assert _crl_entry(api, "default", twin.serial_number) is None
        reason = "keyCompromise"
        api.clock.advance(minutes=5)

    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": reason})

    assert r.status_code == 200, r.text
    before = api.counts()
    for issuer_id, refusal, why in (
        ("twin", f"issuer twin was revoked on {api.clock.now:%Y-%m-%d %H:%M}Z ({reason}) and", ""),
        ("cross", "issuer cross holds the key of issuer sub, revoked on ", "key was compromised"),
        ("cross-sub", "issuer cross-sub is below issuer sub, revoked on ", ""),
        ("root-twin", "issuer root-twin holds the key of issuer sub, ", "key was compromised"),
    ):
        body = {"issuer": issuer_id, "common_name": "x.example.com"}
        detail = assert_problem(api.post(CERTS, api.admin_key, json=body), 409)["detail"]
        assert detail.startswith(refusal), detail
        assert f"({reason})" in detail, detail
        assert why in detail, detail
    assert api.counts() == before
    # twin is listed on default's CRL with the reason; cross's parent is not certctl's.
    entry = _crl_entry(api, "default", twin.serial_number)
    assert entry is not None
    assert entry.revocation_date_utc == api.clock.now
    assert api.get(f"{ISSUERS}/twin", api.admin_key).json()["revocation_reason"] == reason
    assert api.get(f"{ISSUERS}/cross", api.admin_key).json()["status"] == "active"
    # Another process drops them at its refresh and refuses too.
    stale = ["cross", "cross-sub", "root-twin", "twin"]
    assert sorted(issuers.refresh_cached_issuers(other)) == stale
    for issuer_id in stale:
        revoked = issuers.load_issuer_state(other, issuer_id)[1]
        assert revoked is not None
        assert revoked.reason == reason
    # A later import of a certificate of the key, as a CA, is refused; nothing stored.
    sub_ca = issuers.load_issuer(api.services, "cross")
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "cross-again",
            "certificate_pem": cross.public_bytes(Encoding.PEM).decode()
            + sub_ca.chain[0].public_bytes(Encoding.PEM).decode(),
            "private_key_pem": key_to_pem(sub_ca.private_key).decode(),
        },
    )
    detail = assert_problem(r, 409)["detail"]
    assert "issuer sub, revoked on " in detail, detail
    assert detail.endswith("not imported")
    assert api.counts() == before


def test_a_verified_chain_through_another_certificate_of_a_compromised_key_is_refused(
    api: Api,
) -> None:
    # mTLS on a full handshake checks the verified chain against the revoked issuers. It
    # compared whole certificates: a client certificate signed with the compromised key and
    # verified through another certificate of it (``cross``, cross-signed by a root certctl
    # does not hold, so listed on no CRL here) still logged in.
    _, cross = _same_key_twins(api)
    chain = [cross.public_bytes(Encoding.DER)]
    assert revocation.revoked_ca_among(api.services, chain) is None
    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200, r.text
    assert revocation.revoked_ca_among(api.services, chain) is None  # no compromise: its own
    r = api.post(f"{ISSUERS}/sub/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert revocation.revoked_ca_among(api.services, chain) == "sub"


def _import_self_signed(
    api: Api,
    issuer_id: str,
    cn: str,
    key: CertificateIssuerPrivateKeyTypes,
    *,
    ski: bytes,
    aki: bytes | None = None,
) -> None:
    """Import a root CA built by hand, with the key identifiers given (whoever makes a
    certificate writes them), under ``issuer_id``."""
    now = api.clock()
    builder = (
        x509.CertificateBuilder()
        .subject_name(common_name_dn(cn))
        .issuer_name(common_name_dn(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
    )
    if aki is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(aki, None, None), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    r = _import_pair(api, issuer_id, cert, key)
    assert r.status_code == 201, r.text


def _odd_curve_root_and_intermediate(tmp_path: Path) -> tuple[str, str, str]:
    """(root PEM, intermediate PEM, intermediate key PEM): a root on prime239v1.

    A curve OpenSSL signs and verifies with but cryptography cannot load: the root parses,
    its public_key() raises UnsupportedAlgorithm. Made by openssl, which alone can sign
    with it; the intermediate's own key is P-256.
    """
    root_key, inter_key = tmp_path / "odd-root.key", tmp_path / "inter.key"
    ok(run("openssl", "ecparam", "-name", "prime239v1", "-genkey", "-noout", "-out", root_key))
    ok(run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", inter_key))
    root = ok(run("openssl", "req", "-x509", "-key", root_key, "-subj", "/CN=Odd Curve Root",
                  "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")).stdout  # fmt: skip
    (tmp_path / "root.pem").write_text(root)
    inter = ok(run("openssl", "req", "-x509", "-key", inter_key, "-subj", "/CN=Odd Curve Inter",
                   "-days", "1", "-CA", tmp_path / "root.pem", "-CAkey", root_key,
                   "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                   "-addext", "keyUsage=critical,keyCertSign,cRLSign")).stdout  # fmt: skip
    return root, inter, inter_key.read_text()


def test_import_of_a_chain_with_a_key_cryptography_cannot_load_is_a_400(
    api: Api, tmp_path: Path
) -> None:
    """Before: a 500 'internal error' (UnsupportedAlgorithm) for a bundle listing such a root
    before the CA, as many bundles do; now a 400 naming the certificate, nothing stored."""
    root, inter, inter_key = _odd_curve_root_and_intermediate(tmp_path)
    before = api.counts()
    for issuer_id, bundle in (("odd-a", root + inter), ("odd-b", inter + root)):
        r = api.post(
            ISSUERS,
            api.admin_key,
            json={"id": issuer_id, "certificate_pem": bundle, "private_key_pem": inter_key},
        )
        detail = assert_problem(r, 400)["detail"]
        assert "CN=Odd Curve Root" in detail, detail
        assert "1.2.840.10045.3.1.4 is not supported" in detail, detail
    assert api.counts() == before
    assert api.get(f"{ISSUERS}/odd-a", api.admin_key).status_code == 404


def test_a_ca_whose_key_cryptography_cannot_load_signed_nothing_in_the_resumed_session_walk(
    tmp_path: Path,
) -> None:
    """The walk up from a resumed session's certificate (revoked_issuer_of) asks of each CA
    whether it signed; one whose key cryptography cannot load answers "no", never raises.

    Before: UnsupportedAlgorithm from verify_directly_issued_by (issuer name matched) and
    from the CA's public_key() (authorityKeyIdentifier matched), a 500 for the request.
    Imports refuse such CAs now (above), so this guards the walk, not a stored issuer.
    """
    root_pem, inter_pem, _ = _odd_curve_root_and_intermediate(tmp_path)
    root, inter = _cert(root_pem), _cert(inter_pem)
    now = datetime.now(UTC)
    key = generate_private_key(KeyType.EC_P256)
    # Another issuer name, the odd root's key identifier as its authorityKeyIdentifier.
    same_key_id = (
        x509.CertificateBuilder()
        .subject_name(common_name_dn("mallory"))
        .issuer_name(common_name_dn("Another Name"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    assert revocation._signed_by(inter, root) is False
    assert revocation._signed_by(same_key_id, root) is False


def test_a_service_ca_made_again_after_its_key_was_compromised_is_not_shown_revoked(
    api: Api,
) -> None:
    # The advice for a service CA whose key was revoked under another certificate: delete the
    # service and apply it again, for a new CA under the same id (svc.web). The issuer views
    # remember who is below a revoked CA per process until the revocations change; the
    # deletion and the new CA changed none, so the new CA was shown below the old key's
    # revocation (here and in every other process) until some revocation changed.
    from certctl.pki import get_profile

    def apply_web() -> CertificateAuthority:
        return api.apply_service_ca("web")

    old = apply_web()
    # Its key leaked: imported under a certificate default signed, then revoked there.
    leaked = issuers.load_issuer(api.services, "default").issue(
        old.private_key.public_key(),
        common_name_dn("leaked web CA"),
        profile=get_profile("intermediate"),
        validity=timedelta(days=30),
        now=api.clock(),
    )
    assert _import_pair(api, "leaked", leaked.certificate, old.private_key).status_code == 201
    r = api.post(f"{ISSUERS}/leaked/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    shown = api.get(f"{ISSUERS}/svc.web", api.admin_key).json()["issuer_revoked"]
    assert shown is not None
    assert shown["issuer"] == "leaked"

    assert api.request("DELETE", "/api/v1/services/web", api.admin_key).status_code == 204
    api.clock.advance(minutes=1)
    new = apply_web()
    assert new.certificate.public_key() != old.certificate.public_key()

    listed = {i["id"]: i for i in api.get(ISSUERS, api.admin_key).json()["items"]}
    assert listed["svc.web"]["issuer_revoked"] is None
    assert api.get(f"{ISSUERS}/svc.web", api.admin_key).json()["issuer_revoked"] is None


def test_another_process_serves_a_service_ca_made_again_under_its_id_at_once(api: Api) -> None:
    """A managed service deleted and applied again (through another worker or replica) has a
    new CA under svc.<name>: a process that had served the old one's ca.pem kept serving it
    from its cache until its next issuer refresh (a minute), to clients that then failed
    every chain of the new CA. It checks the stored CA when the store's issuers changed.
    """
    from starlette.testclient import TestClient

    from certctl.api.app import create_app
    from certctl.store.db import create_store_engine, session_factory

    def apply_web() -> x509.Certificate:
        return api.apply_service_ca("web").certificate

    url = api.services.engine.url.render_as_string(hide_password=False)
    engine = create_store_engine(url)
    other = Services(engine, session_factory(engine), api.services.wrapper, api.clock)
    try:
        with TestClient(create_app(other), base_url="https://testserver") as worker:
            old = apply_web()
            for path, encoded in (("ca.pem", Encoding.PEM), ("ca.der", Encoding.DER)):
                r = worker.get(f"{ISSUERS}/svc.web/{path}")
                assert r.content == old.public_bytes(encoded), path
            assert api.request("DELETE", "/api/v1/services/web", api.admin_key).status_code == 204
            api.clock.advance(seconds=1)
            new = apply_web()
            assert new.public_key() != old.public_key()
            for path, encoded in (("ca.pem", Encoding.PEM), ("ca.der", Encoding.DER)):
                r = worker.get(f"{ISSUERS}/svc.web/{path}")
                assert r.status_code == 200, r.text
                assert r.content == new.public_bytes(encoded), path
            # Nothing changed since: served from the cache again, no store read.
            statements: list[str] = []

            def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                statements.append(statement)

            event.listen(engine, "before_cursor_execute", seen)
            try:
                again = worker.get(f"{ISSUERS}/svc.web/ca.der")
            finally:
                event.remove(engine, "before_cursor_execute", seen)
            assert again.content == new.public_bytes(Encoding.DER)
            assert not statements, statements
    finally:
        engine.dispose()


def test_import_with_a_bundle_holding_an_expired_root_takes_the_renewed_one_held(
    api: Api, tmp_path: Path
) -> None:
    """A bundle kept from before its root was renewed (same name and key): the renewed root,
    held, is the chain; it was the expired one, warned of as if nothing it signed verified."""
    from certctl.pki import get_profile

    now = api.clock()
    root_key = generate_private_key(KeyType.EC_P256)
    inter_key = generate_private_key(KeyType.EC_P256)
    old_root, new_root = (
        create_root_ca(
            root_key, common_name_dn("Renewed Root"), validity=timedelta(days=days), now=now
        ).certificate
        for days in (10, 365)
    )
    inter = (
        CertificateAuthority(new_root, root_key)
        .issue(
            inter_key.public_key(),
            common_name_dn("Inter Of Renewed"),
            profile=get_profile("intermediate"),
            validity=timedelta(days=100),
            now=now,
        )
        .certificate
    )
    later = api.clock.advance(days=20)
    assert _import_pair(api, "renewed-root", new_root, root_key).status_code == 201
    bundle = inter.public_bytes(Encoding.PEM) + old_root.public_bytes(Encoding.PEM)
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "inter-of-renewed",
            "certificate_pem": bundle.decode(),
            "private_key_pem": key_to_pem(inter_key).decode(),
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == []
    assert r.json()["chain_pem"] == new_root.public_bytes(Encoding.PEM).decode()
    leaf = api.issue(issuer="inter-of-renewed", common_name="renewed.example.com")
    (tmp_path / "root.pem").write_text(new_root.public_bytes(Encoding.PEM).decode())
    (tmp_path / "tls.crt").write_text(leaf["certificate_pem"] + leaf["chain_pem"])
    ok(run("openssl", "verify", "-attime", str(int(later.timestamp())), "-x509_strict",
           "-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "tls.crt",
           tmp_path / "tls.crt"))  # fmt: skip


def test_a_cache_refresh_while_a_request_drops_or_loads_a_cached_issuer_completes(
    api: Api,
) -> None:
    """The refresh read the cache again after the store: an issuer dropped meanwhile (a
    revocation, a renewal in this process), or its certificates cached alone then loaded
    with its key (an issuance after a ca.pem), failed it with a KeyError, logged as 'issuer
    cache refresh failed', leaving every other changed CA cached until the next run."""
    issuers.load_issuer(api.services, "default")
    assert api.get(f"{ISSUERS}/default/ca.pem").status_code == 200
    r = api.post(ISSUERS, api.admin_key, json={"id": "public-only", "parent": "default"})
    assert r.status_code == 201, r.text
    api.services.forget_issuer("public-only")
    assert api.get(f"{ISSUERS}/public-only/ca.pem").status_code == 200  # cached alone
    assert "public-only" in api.services.cached_certificates_only()
    # Meanwhile, in another thread: "default" dropped, "public-only" loaded with its key.
    done: list[str] = []

    def meanwhile(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "chain_pem" in statement and "FROM issuers" in statement and not done:
            done.append(statement)
            api.services.forget_issuer("default")
            issuers.load_issuer(api.services, "public-only")

    event.listen(api.services.engine, "before_cursor_execute", meanwhile)
    try:
        issuers.refresh_cached_issuers(api.services)
    finally:
        event.remove(api.services.engine, "before_cursor_execute", meanwhile)
    assert done
    assert "public-only" in api.services.cached_issuers()
    assert issuers.refresh_cached_issuers(api.services) == []  # nothing changed in the store


def test_an_intermediate_imported_while_its_root_is_gets_the_root_as_its_chain(
    api: Api, tmp_path: Path
) -> None:
    """Imported at once (two workers, replicas, a script running imports in parallel): the
    intermediate looked for its root before the root was stored, and the root for what it
    completes before the intermediate was: it kept no chain for good, though both are held."""
    from certctl.auth.permissions import PERMISSIONS
    from certctl.services.context import Principal

    now = api.clock()
    root, inter, inter_key = _root_and_intermediate("Racing Root", "Racing Inter", now)
    replica = Principal("admin", ("r-admin",), frozenset(PERMISSIONS), "api_key", "replica-2")
    meanwhile: list[tuple[str, ...]] = []

    def import_root(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Right after the intermediate's import looked for its parent by subject.
        if meanwhile or "FROM issuers" not in statement:
            return
        if "subject" not in statement.rsplit("WHERE", 1)[-1]:
            return
        _, _, completed = issuers.import_issuer(
            api.services,
            replica,
            issuer_id="racing-root",
            name="racing-root",
            certificate_pem=root.certificate.public_bytes(Encoding.PEM).decode(),
            private_key_pem=key_to_pem(root.private_key).decode(),
        )
        meanwhile.append(completed)

    event.listen(api.services.engine, "after_cursor_execute", import_root)
    try:
        r = _import_pair(api, "racing-inter", inter, inter_key)
    finally:
        event.remove(api.services.engine, "after_cursor_execute", import_root)
    assert meanwhile == [()]  # the root's import did not see the intermediate
    assert r.status_code == 201, r.text
    root_pem = root.certificate.public_bytes(Encoding.PEM).decode()
    assert (r.json()["chain_pem"], r.json()["warnings"]) == (root_pem, [])
    assert api.get(f"{ISSUERS}/racing-inter", api.admin_key).json()["chain_pem"] == root_pem
    assert api.get(f"{ISSUERS}/racing-inter/ca.pem", params={"chain": "true"}).text == (
        inter.public_bytes(Encoding.PEM).decode() + root_pem
    )
    (chained,) = [e for e in api.audit() if e["action"] == "issuer.chain"]
    assert chained["target"] == "racing-inter"
    leaf = api.issue(issuer="racing-inter", common_name="racing.example.com")
    (tmp_path / "root.pem").write_text(root_pem)
    (tmp_path / "tls.crt").write_text(leaf["certificate_pem"] + leaf["chain_pem"])
    ok(run("openssl", "verify", "-CAfile", tmp_path / "root.pem",
           "-untrusted", tmp_path / "tls.crt", tmp_path / "tls.crt"))  # fmt: skip


def test_a_chain_completed_by_a_cross_certificate_takes_the_root_once_it_is_imported(
    api: Api, tmp_path: Path
) -> None:
    """An intermediate held alone, then its root's key cross-signed by another root (a move
    between roots), then that root itself: the cross-certificate completed the chain first
    and stayed, and the other root's import later made it the root of ca.pem?chain=true, the
    ca.crt clients are given, though the intermediate's own root was held; its import then
    would have taken its own root."""
    from certctl.pki import get_profile

    now = api.clock()
    root, inter, inter_key = _root_and_intermediate("Own Root", "Crossed Inter", now)
    other, _, _ = _root_and_intermediate("Other Root", "unused", now)
    cross = other.issue(
        root.private_key.public_key(),
        root.certificate.subject,
        profile=get_profile("intermediate").with_path_length(None),
        validity=timedelta(days=60),
        now=now,
    ).certificate
    root_pem, cross_pem, other_pem = (
        c.public_bytes(Encoding.PEM).decode() for c in (root.certificate, cross, other.certificate)
    )
    assert _import_pair(api, "inter", inter, inter_key).status_code == 201
    r = _import_pair(api, "cross", cross, root.private_key)
    assert r.status_code == 201, r.text
    assert r.json()["chains_completed"] == ["inter"]  # the best held then
    assert api.get(f"{ISSUERS}/inter", api.admin_key).json()["chain_pem"] == cross_pem
    r = _import_pair(api, "own-root", root.certificate, root.private_key)
    assert r.status_code == 201, r.text
    assert r.json()["chains_completed"] == ["inter"]
    assert api.get(f"{ISSUERS}/inter", api.admin_key).json()["chain_pem"] == root_pem
    # Another process that cached it with the cross-certificate drops it at its next issuer
    # refresh, though the chain is no longer than it was.
    with api.services.engine.begin() as conn:
        conn.execute(update(Issuer).where(Issuer.id == "inter").values(chain_pem=cross_pem))
    api.services.forget_issuer("inter")
    assert issuers.load_issuer(api.services, "inter").chain == (cross,)
    with api.services.engine.begin() as conn:
        conn.execute(update(Issuer).where(Issuer.id == "inter").values(chain_pem=root_pem))
    assert "inter" in issuers.refresh_cached_issuers(api.services)
    assert issuers.load_issuer(api.services, "inter").chain == (root.certificate,)
    assert issuers.refresh_cached_issuers(api.services) == []
    r = _import_pair(api, "other-root", other.certificate, other.private_key)
    assert r.status_code == 201, r.text
    assert r.json()["chains_completed"] == ["cross"]  # its own chain: the cross-certificate's
    assert api.get(f"{ISSUERS}/cross", api.admin_key).json()["chain_pem"] == other_pem
    assert api.get(f"{ISSUERS}/inter/ca.pem", params={"chain": "true"}).text == (
        inter.public_bytes(Encoding.PEM).decode() + root_pem
    )
    leaf = api.issue(issuer="inter", common_name="own-root.example.com")
    assert leaf["chain_pem"] == inter.public_bytes(Encoding.PEM).decode()
    (tmp_path / "root.pem").write_text(root_pem)
    (tmp_path / "tls.crt").write_text(leaf["certificate_pem"] + leaf["chain_pem"])
    ok(run("openssl", "verify", "-CAfile", tmp_path / "root.pem",
           "-untrusted", tmp_path / "tls.crt", tmp_path / "tls.crt"))  # fmt: skip
    # A chain given with the cross-certificate up to the other root is one that reaches a
    # root: the import of the intermediate's own root leaves it as given.
    inter2_key = generate_private_key(KeyType.EC_P256)
    inter2 = root.issue(
        inter2_key.public_key(),
        common_name_dn("Kept Crossed"),
        profile=get_profile("intermediate"),
        validity=timedelta(days=20),
        now=now,
    ).certificate
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "kept",
            "certificate_pem": inter2.public_bytes(Encoding.PEM).decode() + cross_pem + other_pem,
            "private_key_pem": key_to_pem(inter2_key).decode(),
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["chain_pem"] == cross_pem + other_pem
    r = _import_pair(api, "own-root-again", root.certificate, root.private_key)
    assert r.status_code == 201, r.text
    assert r.json()["chains_completed"] == []
    assert api.get(f"{ISSUERS}/kept", api.admin_key).json()["chain_pem"] == cross_pem + other_pem
