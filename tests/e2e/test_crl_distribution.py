"""``public-url``: issued leaves name their issuer's CRL, and a client following it finds a
revocation there (curl fetches the URL the certificate carries, openssl checks against it);
they also name their issuer's certificate (authorityInfoAccess caIssuers), which curl fetches
as the DER certificate openssl builds the chain with. A revoked intermediate is on its parent's
CRL, which ``openssl verify -crl_check_all`` then refuses it with."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests._tools import (
    ok,
    openssl_ca_issuers_uris,
    openssl_crl_uris,
    openssl_req,
    openssl_verify,
    run,
)
from tests.e2e.conftest import CertctlServer, StartServer

pytestmark = pytest.mark.e2e


def distribution_points(pem: str, tmp: Path) -> list[str]:
    """The URIs ``openssl x509 -text`` shows under X509v3 CRL Distribution Points."""
    path = tmp / "c.pem"
    path.write_text(pem)
    return openssl_crl_uris(path)


def ca_issuers(pem: str, tmp: Path) -> list[str]:
    """The URIs ``openssl x509 -text`` shows as ``CA Issuers - URI:``."""
    path = tmp / "c.pem"
    path.write_text(pem)
    return openssl_ca_issuers_uris(path)


def fetch(url: str, server: CertctlServer, out: Path) -> Path:
    """``curl`` the URL as a client following the certificate would (no credentials)."""
    ok(run("curl", "-sS", "--fail", "--cacert", server.ca, "-o", out, url))
    return out


def openssl_verdict(cert_pem: str, crl: Path, ca: Path, tmp: Path) -> str:
    cert = tmp / "leaf.pem"
    cert.write_text(cert_pem)
    return openssl_verify("-crl_check", "-CRLfile", crl, "-CAfile", ca, cert)


def test_issued_leaves_name_their_issuer_and_a_crl_that_shows_their_revocation(
    start_server: StartServer, tmp_path: Path
) -> None:
    # The flag wins over the file (flags > CERTCTL_* > file): the file's URL names no server.
    server = start_server(
        config={"public-url": "https://file.invalid"},
        args=["--public-url", "https://127.0.0.1:{port}/"],
    )
    expected = f"https://127.0.0.1:{server.port}/api/v1/issuers/default/crl"
    expected_aia = f"https://127.0.0.1:{server.port}/api/v1/issuers/default/ca.der"
    key, csr = tmp_path / "req.key", tmp_path / "req.csr"
    openssl_req(key, csr, "/CN=csr.example.com")
    with server.client(server.admin_key) as client:
        keygen = client.post(
            "/api/v1/certificates",
            json={"common_name": "web.example.com", "dns_names": ["web.example.com"]},
        )
        assert keygen.status_code == 201, keygen.text
        from_csr = client.post("/api/v1/certificates", json={"csr": csr.read_text()})
        assert from_csr.status_code == 201, from_csr.text
        renewed = client.post(f"/api/v1/certificates/{keygen.json()['id']}/renew", json={})
        assert renewed.status_code == 201, renewed.text
        ca_pem = client.get("/api/v1/issuers/default/ca.pem")
        assert ca_pem.status_code == 200, ca_pem.text
    for issued in (keygen, from_csr, renewed):
        assert distribution_points(issued.json()["certificate_pem"], tmp_path) == [expected]
        assert ca_issuers(issued.json()["certificate_pem"], tmp_path) == [expected_aia]
    leaf = from_csr.json()
    # The caIssuers URL, followed without credentials: one DER certificate (RFC 5280
    # 4.2.2.1), which openssl reads as DER; it is the issuer, so it anchors the checks below.
    aia = ca_issuers(leaf["certificate_pem"], tmp_path)[0]
    etag = tmp_path / "etag"
    got = ok(
        run("curl", "-sS", "--fail", "--cacert", server.ca, "-o", tmp_path / "issuer.der",
            "-w", "%{content_type}", "--etag-save", etag, aia)
    )  # fmt: skip
    assert got.stdout == "application/pkix-cert"
    # A client holding it revalidates through the real server: 304, no body sent again.
    again = ok(
        run("curl", "-sS", "--fail", "--cacert", server.ca, "-o", tmp_path / "again.der",
            "-w", "%{http_code} %{size_download}", "--etag-compare", etag, aia)
    )  # fmt: skip
    assert again.stdout == "304 0"
    der = (tmp_path / "issuer.der").read_bytes()
    assert der == x509.load_pem_x509_certificate(ca_pem.content).public_bytes(Encoding.DER)
    issuer_ca = tmp_path / "issuer.pem"
    ok(run("openssl", "x509", "-inform", "DER", "-in", tmp_path / "issuer.der", "-out", issuer_ca))
    assert issuer_ca.read_text() == ca_pem.text
    url = distribution_points(leaf["certificate_pem"], tmp_path)[0]

    before = fetch(url, server, tmp_path / "before.crl")
    assert openssl_verdict(leaf["certificate_pem"], before, issuer_ca, tmp_path) == "OK"

    with server.client(server.admin_key) as client:
        revoked = client.post(
            f"/api/v1/certificates/{leaf['id']}/revoke", json={"reason": "keyCompromise"}
        )
        assert revoked.status_code == 200, revoked.text
    after = fetch(url, server, tmp_path / "after.crl")
    verdict = openssl_verdict(leaf["certificate_pem"], after, issuer_ca, tmp_path)
    assert verdict == "certificate revoked"
    # The other leaf (same CRL) still verifies: the CRL lists the revoked serial only.
    other = renewed.json()["certificate_pem"]
    assert openssl_verdict(other, after, issuer_ca, tmp_path) == "OK"


def test_without_public_url_leaves_carry_no_distribution_point_nor_aia(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    with default_server.client(default_server.admin_key) as client:
        issued = client.post(
            "/api/v1/certificates",
            json={"common_name": "plain.example.com", "dns_names": ["plain.example.com"]},
        )
    assert issued.status_code == 201, issued.text
    path = tmp_path / "c.pem"
    path.write_text(issued.json()["certificate_pem"])
    text = ok(run("openssl", "x509", "-in", path, "-noout", "-text")).stdout
    assert "X509v3 Subject Alternative Name" in text  # the -text output has extensions
    assert "CRL Distribution Points" not in text
    assert "Authority Information Access" not in text


def test_a_bad_public_url_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("public-url: certctl.example.internal:8443\n")
    data_dir = tmp_path / "data"
    result = run("certctl", "serve", "--config", config, "--data-dir", data_dir)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"certctl: error: {config}: public-url: expected an absolute http:// or https:// URL "
        "with a host, e.g. https://certctl.example.internal:8443"
    ], result.stderr
    assert not data_dir.exists()  # refused before the data directory is made


def test_a_revoked_intermediate_fails_openssl_crl_check_all_with_its_parents_crl(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # openssl checks every certificate of the chain against its issuer's CRL, both fetched
    # with curl from the public routes: the parent's lists the intermediate once revoked.
    server = default_server
    sub = f"sub-{os.getpid()}-{time.monotonic_ns()}"
    base = f"https://127.0.0.1:{server.port}/api/v1/issuers"
    with server.client(server.admin_key) as client:
        created = client.post("/api/v1/issuers", json={"id": sub, "parent": "default"})
        assert created.status_code == 201, created.text
        leaf = client.post(
            "/api/v1/certificates",
            json={"issuer": sub, "common_name": "under.example.com"},
        )
        assert leaf.status_code == 201, leaf.text
    (tmp_path / "leaf.pem").write_text(leaf.json()["certificate_pem"])
    (tmp_path / "sub.pem").write_text(created.json()["certificate_pem"])

    def verify(name: str) -> tuple[str, str]:
        """openssl's verdict and its whole output, with both CRLs fetched now."""
        parent_crl = fetch(f"{base}/default/crl?format=pem", server, tmp_path / f"{name}-p.crl")
        own_crl = fetch(f"{base}/{sub}/crl?format=pem", server, tmp_path / f"{name}-s.crl")
        args = (
            "-crl_check_all", "-CAfile", server.ca, "-untrusted", tmp_path / "sub.pem",
            "-CRLfile", parent_crl, "-CRLfile", own_crl, tmp_path / "leaf.pem",
        )  # fmt: skip
        result = run("openssl", "verify", *args)
        return openssl_verify(*args), result.stdout + result.stderr

    assert verify("before")[0] == "OK"
    with server.client(server.admin_key) as client:
        revoked = client.post(f"/api/v1/issuers/{sub}/revoke", json={"reason": "cACompromise"})
        assert revoked.status_code == 200, revoked.text
        refused = client.post("/api/v1/certificates", json={"issuer": sub, "common_name": "x"})
        assert refused.status_code == 409, refused.text
    verdict, output = verify("after")
    assert verdict == "certificate revoked"
    assert "at 1 depth lookup" in output  # the intermediate, not the leaf (depth 0)
    text = ok(run("openssl", "crl", "-in", tmp_path / "after-p.crl", "-noout", "-text")).stdout
    inter = x509.load_pem_x509_certificate((tmp_path / "sub.pem").read_bytes())
    assert f"{inter.serial_number:X}" in text  # "Serial Number: 5A3B…", upper-case hex
    assert "CA Compromise" in text


def test_curl_revalidating_the_crl_gets_304_until_a_revocation(
    start_server: StartServer, tmp_path: Path
) -> None:
    """``curl -H 'If-None-Match: <ETag>'``: 304 with no body while the CRL is the same."""
    server = start_server()
    url = f"{server.url}/api/v1/issuers/default/crl"

    def curl(*extra: str) -> tuple[int, dict[str, str], bytes]:
        headers, body = tmp_path / "headers", tmp_path / "body"
        body.write_bytes(b"")  # curl writes nothing for a 304: not the last call's body
        result = ok(run("curl", "-sS", "--cacert", server.ca, "-D", headers, "-o", body,
                        "-w", "%{http_code}", *extra, url))  # fmt: skip
        fields = dict(
            line.split(": ", 1) for line in headers.read_text().splitlines()[1:] if ": " in line
        )
        return int(result.stdout), {k.lower(): v for k, v in fields.items()}, body.read_bytes()

    status, headers, first = curl()
    assert status == 200
    assert len(x509.load_der_x509_crl(first)) == 0
    etag = headers["etag"]
    status, again, body = curl("-H", f"If-None-Match: {etag}")
    assert (status, body) == (304, b"")
    assert again["etag"] == etag
    assert again["cache-control"] == headers["cache-control"]
    with server.client(server.admin_key) as client:
        cert = client.post("/api/v1/certificates", json={"common_name": "gone.example.com"})
        assert cert.status_code == 201, cert.text
        revoked = client.post(f"/api/v1/certificates/{cert.json()['id']}/revoke", json={})
        assert revoked.status_code == 200, revoked.text
    status, after, body = curl("-H", f"If-None-Match: {etag}")
    assert status == 200
    assert after["etag"] != etag
    assert len(x509.load_der_x509_crl(body)) == 1
