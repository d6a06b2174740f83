"""pkilint's RFC 6960 linter (``lint_ocsp_response``) on each kind of answer the OCSP routes give.

What it checks (``lint_ocsp_response validations``): the response decodes; an unsuccessful
one carries no responseBytes (RFC 6960 4.2.1) and no status 4; a successful one is a
BasicOCSPResponse, its ``certs`` not an empty SEQUENCE, a byKey responderID a SHA-1 hash
(RFC 6960 4.2.2.3), thisUpdate not after nextUpdate, and every time in DER's syntax (RFC 5280
4.1.2.5). certctl's answers give it nothing to report, for an ECDSA and an RSA root, an
intermediate's own responder, and an intermediate answered by its parent; the negative twins
below show the linter does report two of those rules on certctl's own bytes.

certificateHold is not among the revoked answers: certctl refuses that reason (a revocation
is final; test_certificates.py), so no response says it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from certctl.pki.ocsp import read_request, sign_response
from certctl.services import issuers
from certctl.services.context import OCSP_UNKNOWN_SIGNATURES_PER_S
from tests._pkilint import lint_each
from tests._tools import ok, run
from tests.api.conftest import Api

MEDIA = {"Content-Type": "application/ocsp-request"}
LINTER = "lint_ocsp_response"


@pytest.fixture
def on(api: Api) -> Api:
    """The app with ``ocsp.enabled`` (validity 1h), as bootstrap sets it from the config."""
    api.services.ocsp_validity = timedelta(hours=1)
    return api


def _ca(api: Api, issuer: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(api.get(f"/api/v1/issuers/{issuer}/ca.pem").content)


def _request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    return builder.build().public_bytes(Encoding.DER)


def _made_up(ca: x509.Certificate) -> bytes:
    """A request about a serial ``ca`` never issued (its name and key hashes, a new serial)."""
    name = hashes.Hash(hashes.SHA1())
    name.update(ca.subject.public_bytes())
    asked = ocsp.load_der_ocsp_request(_request(ca, ca))  # any request names ca's key hash
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name.finalize(), asked.issuer_key_hash, x509.random_serial_number(), hashes.SHA1()
    )
    return builder.build().public_bytes(Encoding.DER)


def _ask(api: Api, issuer: str, der: bytes) -> bytes:
    r = api.post(f"/api/v1/issuers/{issuer}/ocsp", content=der, headers=MEDIA)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/ocsp-response"
    return r.content


def _revoke(api: Api, path: str, reason: str | None) -> None:
    r = api.post(path, api.admin_key, json={"reason": reason})
    assert r.status_code == 200, r.text


def _answers(on: Api) -> dict[str, tuple[bytes, str, x509.ReasonFlags | None]]:
    """Every kind of answer: label -> (DER, what it says, its revocation reason)."""
    for body in (
        {"id": "rsa", "common_name": "OCSP Lint RSA Root", "key_type": "rsa-2048"},
        {"id": "sub", "common_name": "OCSP Lint Sub CA", "parent": "default"},
    ):
        r = on.post("/api/v1/issuers", on.admin_key, json=body)
        assert r.status_code == 201, r.text
    answers: dict[str, tuple[bytes, str, x509.ReasonFlags | None]] = {}
    # "default" is certctl's ECDSA P-256 root; "sub" answers for its own leaves.
    for issuer in ("default", "rsa", "sub"):
        ca = _ca(on, issuer)
        for case, reason in (
            ("good", None),
            ("keyCompromise", x509.ReasonFlags.key_compromise),
            ("superseded", x509.ReasonFlags.superseded),
            ("unspecified", None),  # revoked without a reason: none said, as the CRL
        ):
            issued = on.issue(issuer=issuer, common_name=f"{case.lower()}.ocsp.example.com")
            if case != "good":
                _revoke(on, f"/api/v1/certificates/{issued['id']}/revoke", case)
            leaf = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
            status = "good" if case == "good" else "revoked"
            answers[f"{issuer}-{case}"] = (_ask(on, issuer, _request(leaf, ca)), status, reason)
        answers[f"{issuer}-unknown"] = (_ask(on, issuer, _made_up(ca)), "unknown", None)
    # The intermediate, asked of its parent: good, then revoked for a CA compromise.
    root, sub = _ca(on, "default"), _ca(on, "sub")
    answers["sub-by-parent-good"] = (_ask(on, "default", _request(sub, root)), "good", None)
    _revoke(on, "/api/v1/issuers/sub/revoke", "cACompromise")
    answers["sub-by-parent-revoked"] = (
        _ask(on, "default", _request(sub, root)),
        "revoked",
        x509.ReasonFlags.ca_compromise,
    )
    # The unsuccessful ones: status alone, unsigned.
    answers["malformedRequest"] = (_ask(on, "default", b"junk"), "malformedRequest", None)
    rsa_leaf = x509.load_pem_x509_certificate(on.issue(issuer="rsa")["certificate_pem"].encode())
    answers["unauthorized"] = (
        _ask(on, "default", _request(rsa_leaf, _ca(on, "rsa"))),
        "unauthorized",
        None,
    )
    # Made-up serials until the second's signature budget is spent (the clock stands still).
    for _ in range(OCSP_UNKNOWN_SIGNATURES_PER_S + 1):
        der = _ask(on, "rsa", _made_up(_ca(on, "rsa")))
        if ocsp.load_der_ocsp_response(der).response_status is ocsp.OCSPResponseStatus.TRY_LATER:
            answers["tryLater"] = (der, "tryLater", None)
            break
    return answers


def _says(der: bytes) -> tuple[str, x509.ReasonFlags | None]:
    response = ocsp.load_der_ocsp_response(der)
    status = response.response_status
    if status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return {
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST: "malformedRequest",
            ocsp.OCSPResponseStatus.UNAUTHORIZED: "unauthorized",
            ocsp.OCSPResponseStatus.TRY_LATER: "tryLater",
        }[status], None
    revoked = response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    return response.certificate_status.name.lower(), (
        response.revocation_reason if revoked else None
    )


def test_every_kind_of_answer_passes_lint_ocsp_response(on: Api, tmp_path: Path) -> None:
    answers = _answers(on)
    assert len(answers) == 3 * 5 + 2 + 3, sorted(answers)  # tryLater reached too
    files = {}
    for label, (der, status, reason) in answers.items():
        # The answer is what the label says, so "no finding" is about that kind of answer.
        assert _says(der) == (status, reason), label
        files[label] = [tmp_path / f"{label}.der"]
        files[label][0].write_bytes(der)
    assert lint_each(LINTER, files) == {label: [] for label in answers}


def test_lint_ocsp_response_reports_what_it_checks_on_certctls_bytes(
    on: Api, tmp_path: Path
) -> None:
    # Negative twins: the same signing code with a nextUpdate before thisUpdate, and a
    # signed response whose status byte says tryLater (RFC 6960 4.2.1: responseBytes only
    # when successful). The linter reports each, so its silence above says something.
    issued = on.issue(common_name="twin.ocsp.example.com")
    leaf = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    good = _ask(on, "default", _request(leaf, _ca(on, "default")))
    question = read_request(_request(leaf, _ca(on, "default")))
    assert question is not None
    backwards = sign_response(
        issuers.load_issuer(on.services, "default"),
        question,
        now=on.clock(),
        validity=-timedelta(hours=1),
    )
    status_at = good.index(b"\x0a\x01\x00")  # OCSPResponseStatus: ENUMERATED successful
    assert status_at < 6  # the first field, right after the outer SEQUENCE's header
    with_body = good[:status_at] + b"\x0a\x01\x03" + good[status_at + 3 :]
    twins = {"good": good, "backwards": backwards, "with-body": with_body}
    for label, der in twins.items():
        (tmp_path / f"{label}.der").write_bytes(der)
    assert lint_each(LINTER, {label: [tmp_path / f"{label}.der"] for label in twins}) == {
        "good": [],
        "backwards": [("ERROR", "pkix.ocsp_negative_validity_period")],
        "with-body": [("ERROR", "pkix.ocsp_error_response_has_response_body")],
    }


def test_a_revocation_stamped_by_a_replica_ahead_gets_an_answer_valid_forward(
    on: Api, tmp_path: Path
) -> None:
    # Another replica, its clock 2 hours ahead of this one's (more than ocsp.validity),
    # revoked the certificate. thisUpdate is never before the revocation it reports, so it
    # is that replica's time; nextUpdate was this replica's time + validity, an hour
    # before thisUpdate: pkix.ocsp_negative_validity_period (RFC 6960 4.2.2.1), and a client
    # on the revoking replica's time refused it as expired, where it now reads "revoked".
    issued = on.issue(common_name="skew.ocsp.example.com")
    leaf = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    revoked_at = on.clock()  # the test's clock starts at the real time openssl judges by
    _revoke(on, f"/api/v1/certificates/{issued['id']}/revoke", "keyCompromise")
    on.clock.advance(hours=-2)  # this replica, 2 hours behind
    ca = _ca(on, "default")
    der = _ask(on, "default", _request(leaf, ca))
    response = ocsp.load_der_ocsp_response(der)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == revoked_at
    assert response.this_update_utc == revoked_at
    assert response.next_update_utc == revoked_at + timedelta(hours=1)
    (tmp_path / "resp.der").write_bytes(der)
    assert lint_each(LINTER, {"skewed": [tmp_path / "resp.der"]}) == {"skewed": []}
    ca_pem, leaf_pem = tmp_path / "ca.pem", tmp_path / "leaf.pem"
    ca_pem.write_bytes(ca.public_bytes(Encoding.PEM))
    leaf_pem.write_bytes(leaf.public_bytes(Encoding.PEM))
    shown = ok(
        run(
            "openssl", "ocsp", "-issuer", ca_pem, "-cert", leaf_pem, "-CAfile", ca_pem,
            "-respin", tmp_path / "resp.der", "-no_nonce",
        )
    )  # fmt: skip
    assert "Response verify OK" in shown.stdout + shown.stderr
    assert f"{leaf_pem}: revoked" in shown.stdout
    assert "Reason: keyCompromise" in shown.stdout
    assert "Status times invalid" not in shown.stdout + shown.stderr
