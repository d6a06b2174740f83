"""/api/v1/issuers/{id}/ocsp (POST) and /ocsp/{base64 request} (GET): the OCSP responder."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from certctl.pki import KeyType, common_name_dn, create_root_ca, generate_private_key
from certctl.store.models import Issuer
from tests._stores import PostgresCluster
from tests._tools import ok, run
from tests.api.conftest import BACKENDS, Api, assert_problem, running_app

OCSP = "/api/v1/issuers/default/ocsp"
MEDIA = {"Content-Type": "application/ocsp-request"}


@pytest.fixture
def on(api: Api) -> Api:
    """The app with ``ocsp.enabled`` (validity 1h), as bootstrap sets it from the config."""
    api.services.ocsp_validity = timedelta(hours=1)
    return api


def _ca(api: Api, issuer: str = "default") -> x509.Certificate:
    return x509.load_pem_x509_certificate(api.get(f"/api/v1/issuers/{issuer}/ca.pem").content)


def _leaf(api: Api, **body: object) -> tuple[str, x509.Certificate]:
    issued = api.issue(**body)
    return issued["id"], x509.load_pem_x509_certificate(issued["certificate_pem"].encode())


def _request(
    cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    return builder.build().public_bytes(Encoding.DER)


def _post(api: Api, der: bytes, issuer: str = "default") -> ocsp.OCSPResponse:
    r = api.post(f"/api/v1/issuers/{issuer}/ocsp", content=der, headers=MEDIA)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/ocsp-response"
    assert r.headers["cache-control"] == "no-cache"
    return ocsp.load_der_ocsp_response(r.content)


def _verified(response: ocsp.OCSPResponse, ca: x509.Certificate) -> ocsp.OCSPResponse:
    """``response``, its signature checked against the CA's key and its responder by key."""
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    ca.public_key().verify(  # type: ignore[call-arg]
        response.signature,
        response.tbs_response_bytes,
        *(
            ()
            if response.signature_hash_algorithm is None
            else _ec_or_rsa(ca, response.signature_hash_algorithm)
        ),
    )
    assert (
        response.responder_key_hash
        == x509.SubjectKeyIdentifier.from_public_key(ca.public_key()).digest
    )
    assert response.responder_name is None
    # The signer's certificate, for clients that look for it there only (nginx stapling).
    assert response.certificates == [ca]
    return response


def _ec_or_rsa(ca: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[object, ...]:
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    key = ca.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return (ec.ECDSA(algorithm),)
    assert isinstance(key, rsa.RSAPublicKey)
    return (padding.PKCS1v15(), algorithm)


def test_off_by_default_the_routes_are_404(api: Api) -> None:
    _, leaf = _leaf(api)
    der = _request(leaf, _ca(api))
    assert_problem(api.post(OCSP, content=der, headers=MEDIA), 404)
    assert_problem(api.get(f"{OCSP}/{quote(base64.b64encode(der).decode(), safe='')}"), 404)


def test_good_then_revoked_at_once_then_unknown(on: Api) -> None:
    ca = _ca(on)
    cert_id, leaf = _leaf(on)
    now = on.clock()
    good = _verified(_post(on, _request(leaf, ca)), ca)
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert good.serial_number == leaf.serial_number
    # thisUpdate set back as certificates and CRLs are: a client a minute behind takes it.
    assert good.this_update_utc == now.replace(microsecond=0) - timedelta(minutes=5)
    assert good.next_update_utc == now.replace(microsecond=0) + timedelta(hours=1)
    assert good.hash_algorithm.name == "sha1"
    # The reused response is the same bytes (no nonce: RFC 5019), until a revocation.
    assert _post(on, _request(leaf, ca)).tbs_response_bytes == good.tbs_response_bytes
    r = on.post(
        f"/api/v1/certificates/{cert_id}/revoke", on.admin_key, json={"reason": "keyCompromise"}
    )
    assert r.status_code == 200, r.text
    revoked = _verified(_post(on, _request(leaf, ca)), ca)
    assert revoked.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise
    assert revoked.revocation_time_utc is not None
    # Never said to hold before the revocation it reports.
    assert revoked.this_update_utc >= revoked.revocation_time_utc
    # A serial this issuer never issued (a certificate of the same CA name and key made
    # elsewhere): unknown, still signed.
    unknown_req = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(
            good.issuer_name_hash, good.issuer_key_hash, x509.random_serial_number(), hashes.SHA1()
        )
        .build()
        .public_bytes(Encoding.DER)
    )
    unknown = _verified(_post(on, unknown_req), ca)
    assert unknown.certificate_status is ocsp.OCSPCertStatus.UNKNOWN


def test_unspecified_revocation_carries_no_reason_as_the_crl(on: Api) -> None:
    ca = _ca(on)
    cert_id, leaf = _leaf(on)
    r = on.post(f"/api/v1/certificates/{cert_id}/revoke", on.admin_key)
    assert r.status_code == 200, r.text
    revoked = _verified(_post(on, _request(leaf, ca)), ca)
    assert revoked.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason is None


@pytest.mark.parametrize(
    "algorithm", [hashes.SHA224(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]
)
def test_sha2_cert_ids_are_answered_in_kind(on: Api, algorithm: hashes.HashAlgorithm) -> None:
    ca = _ca(on)
    _, leaf = _leaf(on)
    response = _verified(_post(on, _request(leaf, ca, algorithm)), ca)
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.hash_algorithm.name == algorithm.name
    assert response.issuer_key_hash == _request_hashes(leaf, ca, algorithm)[1]


def _request_hashes(
    leaf: x509.Certificate, ca: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    request = ocsp.load_der_ocsp_request(_request(leaf, ca, algorithm))
    return request.issuer_name_hash, request.issuer_key_hash


def test_a_response_is_reused_for_half_its_validity_then_signed_anew(on: Api) -> None:
    ca = _ca(on)
    _, leaf = _leaf(on)
    first = _post(on, _request(leaf, ca))
    on.clock.advance(minutes=29)
    assert _post(on, _request(leaf, ca)).this_update_utc == first.this_update_utc
    on.clock.advance(minutes=1, seconds=1)
    later = _post(on, _request(leaf, ca))
    assert later.this_update_utc > first.this_update_utc
    assert later.next_update_utc == later.this_update_utc + timedelta(hours=1, minutes=5)


def test_the_get_form_takes_url_encoded_base64_holding_slashes(on: Api) -> None:
    ca = _ca(on)
    # Serials until one whose request's base64 holds a '/' (and so a path with more segments).
    for _ in range(64):
        _, leaf = _leaf(on)
        encoded = base64.b64encode(_request(leaf, ca)).decode()
        if "/" in encoded:
            break
    else:
        pytest.fail("no request with a '/' in its base64 among 64")
    for path in (quote(encoded, safe=""), encoded):  # encoded as RFC 6960 A.1 says, or not
        r = on.get(f"{OCSP}/{path}")
        assert r.status_code == 200, r.text
        response = _verified(ocsp.load_der_ocsp_response(r.content), ca)
        assert response.serial_number == leaf.serial_number
        assert response.certificate_status is ocsp.OCSPCertStatus.GOOD


def _status(r_content: bytes) -> ocsp.OCSPResponseStatus:
    return ocsp.load_der_ocsp_response(r_content).response_status


def test_bad_requests_get_ocsp_errors_never_a_500(on: Api, tmp_path: Path) -> None:
    ca = _ca(on)
    _, leaf = _leaf(on)
    other_pem = on.issue(common_name="b.example.com")["certificate_pem"]
    before = on.counts()
    malformed = ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    for body in (b"", b"garbage", b"\x30\x03\x02\x01\x01", b"\x30" * 5000):
        r = on.post(OCSP, content=body, headers=MEDIA)
        assert r.status_code == 200, r.text
        assert _status(r.content) is malformed
    # Two certificates in one request (openssl makes it; cryptography reads one only):
    # malformedRequest, as documented.
    ca_pem, a_pem, b_pem = tmp_path / "ca.pem", tmp_path / "a.pem", tmp_path / "b.pem"
    ca_pem.write_bytes(ca.public_bytes(Encoding.PEM))
    a_pem.write_bytes(leaf.public_bytes(Encoding.PEM))
    b_pem.write_text(other_pem)
    ok(run("openssl", "ocsp", "-issuer", ca_pem, "-cert", a_pem, "-cert", b_pem, "-no_nonce",
           "-reqout", tmp_path / "two.der"))  # fmt: skip
    shown = ok(run("openssl", "ocsp", "-reqin", tmp_path / "two.der", "-req_text"))
    assert shown.stdout.count("Serial Number:") == 2
    r = on.post(OCSP, content=(tmp_path / "two.der").read_bytes(), headers=MEDIA)
    assert _status(r.content) is malformed
    # Over the 8 KiB an OCSP request needs at most: malformedRequest, unread.
    big = on.post(OCSP, content=_request(leaf, ca) + b"\x00" * 9000, headers=MEDIA)
    assert _status(big.content) is malformed
    # Over the server's 1 MiB body limit: the 413 problem of every route.
    assert_problem(on.post(OCSP, content=b"\x00" * (1024 * 1024 + 1), headers=MEDIA), 413)
    # Bad base64 in the GET form, and base64 of garbage.
    for path in (
        "not%20base64!",
        "%FF%FE",
        quote(base64.b64encode(b"junk").decode(), safe=""),
        "A" * 12000,  # over 8 KiB decoded (a longer request line is a 431)
    ):
        r = on.get(f"{OCSP}/{path}")
        assert r.status_code == 200, (path[:20], r.text)
        assert _status(r.content) is malformed
    # Another issuer's certificate asked of this one: unauthorized (both hashes compared).
    other_key = generate_private_key(KeyType.EC_P256)
    other_ca = create_root_ca(
        other_key, common_name_dn("Other CA"), validity=timedelta(days=365), now=on.clock()
    ).certificate
    other_leaf = x509.CertificateBuilder(
        issuer_name=other_ca.subject,
        subject_name=leaf.subject,
        public_key=leaf.public_key(),
        serial_number=leaf.serial_number,
        not_valid_before=leaf.not_valid_before_utc,
        not_valid_after=leaf.not_valid_after_utc,
    ).sign(other_key, hashes.SHA256())
    r = on.post(OCSP, content=_request(other_leaf, other_ca), headers=MEDIA)
    assert _status(r.content) is ocsp.OCSPResponseStatus.UNAUTHORIZED
    # This CA's name with another key (a CA impersonating it): unauthorized too.
    same_name = ocsp.load_der_ocsp_request(_request(leaf, ca))
    wrong_key = ocsp.load_der_ocsp_request(_request(other_leaf, other_ca))
    mixed = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(
            same_name.issuer_name_hash, wrong_key.issuer_key_hash, leaf.serial_number, hashes.SHA1()
        )
        .build()
        .public_bytes(Encoding.DER)
    )
    r = on.post(OCSP, content=mixed, headers=MEDIA)
    assert _status(r.content) is ocsp.OCSPResponseStatus.UNAUTHORIZED
    # An unknown issuer id: 404, as its CRL.
    assert_problem(
        on.post("/api/v1/issuers/nope/ocsp", content=_request(leaf, ca), headers=MEDIA), 404
    )
    assert_problem(on.get("/api/v1/issuers/nope/ocsp/AAAA"), 404)
    assert on.counts() == before  # nothing written


def test_a_negative_serial_is_malformed_request_not_a_500(on: Api) -> None:
    """A CertID's serial is a DER INTEGER anyone may send negative: no response can echo it."""
    ca = _ca(on)
    _, leaf = _leaf(on)
    asked = ocsp.load_der_ocsp_request(_request(leaf, ca))
    der = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(asked.issuer_name_hash, asked.issuer_key_hash, 0x55, hashes.SHA1())
        .build()
        .public_bytes(Encoding.DER)
    )
    assert der.count(b"\x02\x01\x55") == 1  # the serial's INTEGER, one octet
    before = on.counts()
    for negative in (b"\x02\x01\xff", b"\x02\x01\x80"):  # -1, -128
        body = der.replace(b"\x02\x01\x55", negative)
        assert ocsp.load_der_ocsp_request(body).serial_number < 0
        r = on.post(OCSP, content=body, headers=MEDIA)
        assert r.status_code == 200, r.text
        assert _status(r.content) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        r = on.get(f"{OCSP}/{quote(base64.b64encode(body).decode(), safe='')}")
        assert r.status_code == 200, r.text
        assert _status(r.content) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert on.counts() == before


def test_an_issuer_whose_stored_certificate_cannot_be_used_answers_internal_error(
    on: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """Its certificate swapped in the store for another CA's: it signs nothing (as every
    route of it says, once in the log), and an OCSP client gets an OCSP response saying
    so, internalError, where it got the JSON 409 of the other routes, which no OCSP client
    reads. The problem is the store's: counted, never a signature by a mismatched key."""
    r = on.post("/api/v1/issuers", on.admin_key, json={"id": "other", "common_name": "Other"})
    assert r.status_code == 201, r.text
    ca = _ca(on)
    _, leaf = _leaf(on)
    question = _request(leaf, ca)
    assert _verified(_post(on, question), ca).certificate_status is ocsp.OCSPCertStatus.GOOD
    with on.services.engine.begin() as connection:
        connection.execute(
            update(Issuer).where(Issuer.id == "default").values(certificate_pem=_pem(on, "other"))
        )
    on.services.forget_issuer("default")
    before, said_before = on.counts(), _internal_errors(on)
    caplog.set_level("ERROR", logger="certctl.services")
    encoded = quote(base64.b64encode(question).decode(), safe="")
    for r in (on.post(OCSP, content=question, headers=MEDIA), on.get(f"{OCSP}/{encoded}")):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/ocsp-response"
        assert _status(r.content) is ocsp.OCSPResponseStatus.INTERNAL_ERROR
    assert on.counts() == before
    errors = [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert errors[0].startswith("issuer default: its key does not match its certificate")
    assert _internal_errors(on) == said_before + 2  # the process's counter: a difference


def _internal_errors(api: Api) -> float:
    text = api.get("/api/v1/metrics/prometheus", api.admin_key).text
    found = re.search(r'^certctl_ocsp_responses_total{status="internalerror"} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _pem(api: Api, issuer: str) -> str:
    return api.get(f"/api/v1/issuers/{issuer}/ca.pem").text


def test_intermediates_and_their_revocation_are_answered_by_the_parent(on: Api) -> None:
    r = on.post(
        "/api/v1/issuers",
        on.admin_key,
        json={"id": "sub", "common_name": "Sub CA", "parent": "default"},
    )
    assert r.status_code == 201, r.text
    root, sub = _ca(on), _ca(on, "sub")
    assert _verified(_post(on, _request(sub, root)), root).certificate_status is (
        ocsp.OCSPCertStatus.GOOD
    )
    r = on.post("/api/v1/issuers/sub/revoke", on.admin_key, json={"reason": "cACompromise"})
    assert r.status_code == 200, r.text
    revoked = _verified(_post(on, _request(sub, root)), root)
    assert revoked.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason is x509.ReasonFlags.ca_compromise


def test_an_intermediate_imported_twice_is_revoked_as_its_parents_crl_lists_it(on: Api) -> None:
    """Revoked under both ids: the first date, keyCompromise from either (as the CRL says)."""
    from tests.api.test_issuers import _imported_twice

    sub, root = _imported_twice(on), _ca(on)
    first = on.post("/api/v1/issuers/sub/revoke", on.admin_key, json={"reason": "superseded"})
    assert first.status_code == 200, first.text
    on.clock.advance(minutes=5)
    r = on.post("/api/v1/issuers/sub-copy/revoke", on.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    crl = x509.load_der_x509_crl(on.get("/api/v1/issuers/default/crl").content)
    entry = crl.get_revoked_certificate_by_serial_number(sub.serial_number)
    assert entry is not None
    listed = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert listed is x509.ReasonFlags.key_compromise
    answer = _verified(_post(on, _request(sub, root)), root)
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_time_utc == entry.revocation_date_utc
    assert answer.revocation_reason is listed


def test_an_intermediate_imported_under_its_parent_is_answered_by_the_parent(on: Api) -> None:
    """An import stores no parent (nor did releases before migration 0010): good, not unknown."""
    from certctl.pki import PROFILES, key_to_pem
    from certctl.services import issuers

    root = _ca(on)
    key = generate_private_key(KeyType.EC_P256)
    sub = (
        issuers.load_issuer(on.services, "default")
        .issue(
            key.public_key(),
            common_name_dn("Imported Sub CA"),
            profile=PROFILES["intermediate"],
            validity=timedelta(days=30),
            now=on.clock(),
        )
        .certificate
    )
    r = on.post(
        "/api/v1/issuers",
        on.admin_key,
        json={
            "id": "imported-sub",
            "certificate_pem": (
                sub.public_bytes(Encoding.PEM) + root.public_bytes(Encoding.PEM)
            ).decode(),
            "private_key_pem": key_to_pem(key).decode(),
        },
    )
    assert r.status_code == 201, r.text
    good = _verified(_post(on, _request(sub, root)), root)
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    r = on.post("/api/v1/issuers/imported-sub/revoke", on.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200, r.text
    revoked = _verified(_post(on, _request(sub, root)), root)
    assert revoked.certificate_status is ocsp.OCSPCertStatus.REVOKED


def test_an_intermediate_answers_for_its_own_leaves(on: Api) -> None:
    r = on.post(
        "/api/v1/issuers",
        on.admin_key,
        json={"id": "leafy", "common_name": "Leafy CA", "parent": "default"},
    )
    assert r.status_code == 201, r.text
    sub = _ca(on, "leafy")
    _, leaf = _leaf(on, issuer="leafy")
    good = _verified(_post(on, _request(leaf, sub), "leafy"), sub)
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    # Asked of the root instead: not its certificate to answer for.
    r = on.post(OCSP, content=_request(leaf, sub), headers=MEDIA)
    assert _status(r.content) is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_responses_are_counted_by_status(on: Api) -> None:
    def counts() -> dict[str, float]:
        r = on.get("/api/v1/metrics/prometheus", on.admin_key)
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        family = families.get("certctl_ocsp_responses")
        if family is None:
            return {}
        return {s.labels["status"]: s.value for s in family.samples if s.name.endswith("_total")}

    ca = _ca(on)
    _, leaf = _leaf(on)
    before = counts()
    _post(on, _request(leaf, ca))
    on.post(OCSP, content=b"junk", headers=MEDIA)
    after = counts()
    assert after["good"] - before.get("good", 0) == 1
    assert after["malformed"] - before.get("malformed", 0) == 1


def test_openssl_checks_a_response_of_the_api(on: Api, tmp_path: Path) -> None:
    """openssl ocsp reads and verifies what the route answered (its own request, no nonce)."""
    ca_pem, leaf_pem = tmp_path / "ca.pem", tmp_path / "leaf.pem"
    ca_pem.write_bytes(on.get("/api/v1/issuers/default/ca.pem").content)
    issued = on.issue()
    leaf_pem.write_text(issued["certificate_pem"])
    ok(run("openssl", "ocsp", "-issuer", ca_pem, "-cert", leaf_pem, "-no_nonce",
           "-reqout", tmp_path / "req.der"))  # fmt: skip
    r = on.post(OCSP, content=(tmp_path / "req.der").read_bytes(), headers=MEDIA)
    (tmp_path / "resp.der").write_bytes(r.content)
    # openssl judges thisUpdate by the real clock: the test's frozen one is within minutes.
    shown = ok(run("openssl", "ocsp", "-issuer", ca_pem, "-cert", leaf_pem, "-CAfile", ca_pem,
                   "-respin", tmp_path / "resp.der", "-no_nonce"))  # fmt: skip
    assert "Response verify OK" in shown.stdout + shown.stderr
    assert f"{leaf_pem}: good" in shown.stdout


PUBLIC_URL = "http://pki.example.internal"


@pytest.fixture(params=BACKENDS)
def aia_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """Bootstrapped from a config with ``ocsp.enabled`` and ``public-url``."""
    url = None
    if request.param == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.url(cluster.create_database())
    with running_app(
        request.param, tmp_path / "data", url, public_url=PUBLIC_URL, ocsp={"enabled": True}
    ) as app:
        yield app


def _access(pem: str) -> list[tuple[str, str]]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    ext = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert not ext.critical
    names = {
        AuthorityInformationAccessOID.OCSP: "OCSP",
        AuthorityInformationAccessOID.CA_ISSUERS: "caIssuers",
    }
    return [(names[d.access_method], str(d.access_location.value)) for d in ext.value]


def test_with_public_url_leaves_and_intermediates_name_the_responder(aia_api: Api) -> None:
    api = aia_api
    assert api.services.ocsp_validity == timedelta(hours=1)
    r = api.post(
        "/api/v1/issuers",
        api.admin_key,
        json={"id": "mid", "common_name": "Mid", "parent": "default"},
    )
    assert r.status_code == 201, r.text
    mid = r.json()["certificate_pem"]
    # An intermediate names its parent's responder, which answers for it.
    assert _access(mid) == [
        ("OCSP", f"{PUBLIC_URL}/api/v1/issuers/default/ocsp"),
        ("caIssuers", f"{PUBLIC_URL}/api/v1/issuers/default/ca.der"),
    ]
    for issuer in ("default", "mid"):
        keygen = api.issue(issuer=issuer)
        renewed = api.post(f"/api/v1/certificates/{keygen['id']}/renew", api.admin_key, json={})
        assert renewed.status_code == 201, renewed.text
        for pem in (keygen["certificate_pem"], renewed.json()["certificate_pem"]):
            access = _access(pem)
            assert access == [
                ("OCSP", f"{PUBLIC_URL}/api/v1/issuers/{issuer}/ocsp"),
                ("caIssuers", f"{PUBLIC_URL}/api/v1/issuers/{issuer}/ca.der"),
            ]
            # The URI's path is the route that answers for the certificate.
            leaf = x509.load_pem_x509_certificate(pem.encode())
            path = access[0][1].removeprefix(PUBLIC_URL)
            der = _request(leaf, _ca(api, issuer))
            r = api.post(path, content=der, headers=MEDIA)
            response = _verified(ocsp.load_der_ocsp_response(r.content), _ca(api, issuer))
            assert response.certificate_status is ocsp.OCSPCertStatus.GOOD


def test_ocsp_without_public_url_adds_no_extension(on: Api) -> None:
    cert = x509.load_pem_x509_certificate(on.issue()["certificate_pem"].encode())
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)


@pytest.mark.parametrize("key_type", ["rsa-2048", "ec-p384", "ed25519"])
def test_issuers_of_every_key_type_sign_responses_openssl_verifies(
    on: Api, tmp_path: Path, key_type: str
) -> None:
    issuer = f"ocsp-{key_type}"
    r = on.post(
        "/api/v1/issuers",
        on.admin_key,
        json={"id": issuer, "common_name": f"OCSP {key_type}", "key_type": key_type},
    )
    assert r.status_code == 201, r.text
    ca_pem, leaf_pem = tmp_path / "ca.pem", tmp_path / "leaf.pem"
    ca_pem.write_bytes(on.get(f"/api/v1/issuers/{issuer}/ca.pem").content)
    leaf_pem.write_text(on.issue(issuer=issuer)["certificate_pem"])
    ok(run("openssl", "ocsp", "-issuer", ca_pem, "-cert", leaf_pem, "-no_nonce",
           "-reqout", tmp_path / "req.der"))  # fmt: skip
    r = on.post(
        f"/api/v1/issuers/{issuer}/ocsp",
        content=(tmp_path / "req.der").read_bytes(),
        headers=MEDIA,
    )
    (tmp_path / "resp.der").write_bytes(r.content)
    shown = ok(run("openssl", "ocsp", "-issuer", ca_pem, "-cert", leaf_pem, "-CAfile", ca_pem,
                   "-respin", tmp_path / "resp.der", "-no_nonce"))  # fmt: skip
    assert "Response verify OK" in shown.stdout + shown.stderr
    assert f"{leaf_pem}: good" in shown.stdout


def test_the_response_cache_is_bounded(on: Api) -> None:
    """One signed response per certificate asked about, the least recently asked dropped."""
    from certctl.services.context import ResponseCache

    on.services.ocsp_responses = ResponseCache(2)
    ca = _ca(on)
    leaves = [_leaf(on)[1] for _ in range(3)]
    firsts = [_post(on, _request(leaf, ca)) for leaf in leaves]
    assert len(on.services.ocsp_responses) == 2
    on.clock.advance(seconds=1)
    # The first was dropped: signed anew (a later thisUpdate); the last is reused.
    assert _post(on, _request(leaves[0], ca)).this_update_utc > firsts[0].this_update_utc
    assert _post(on, _request(leaves[2], ca)).this_update_utc == firsts[2].this_update_utc


def test_made_up_serials_cost_a_bounded_number_of_signatures(on: Api) -> None:
    """Each unknown serial is a CertID to sign for: a flood of them gets tryLater, unsigned."""
    from certctl.services.context import OCSP_UNKNOWN_SIGNATURES_PER_S as BUDGET

    ca = _ca(on)
    _, leaf = _leaf(on)
    asked = ocsp.load_der_ocsp_request(_request(leaf, ca))

    def made_up() -> ocsp.OCSPResponse:
        der = (
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(
                asked.issuer_name_hash,
                asked.issuer_key_hash,
                x509.random_serial_number(),
                hashes.SHA1(),
            )
            .build()
            .public_bytes(Encoding.DER)
        )
        r = on.post(OCSP, content=der, headers=MEDIA)
        assert r.status_code == 200, r.text
        return ocsp.load_der_ocsp_response(r.content)

    # One second's budget of signatures, at one instant (the test's clock stands still).
    for _ in range(BUDGET):
        assert _verified(made_up(), ca).certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    flooded = made_up()
    assert flooded.response_status is ocsp.OCSPResponseStatus.TRY_LATER
    # Counted as the README's metrics table says, and named in the family's HELP, which
    # listed every status but this one.
    r = on.get("/api/v1/metrics/prometheus", on.admin_key)
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    family = families["certctl_ocsp_responses"]
    statuses = {s.labels["status"] for s in family.samples if s.name.endswith("_total")}
    assert "trylater" in statuses
    for status in statuses:
        assert status in family.documentation, family.documentation
    # A certificate certctl issued is answered (signed) all the same.
    good = _verified(_post(on, _request(leaf, ca)), ca)
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    # A second later, a second's worth again.
    on.clock.advance(seconds=1)
    assert _verified(made_up(), ca).certificate_status is ocsp.OCSPCertStatus.UNKNOWN
