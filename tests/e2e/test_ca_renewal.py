"""The internal CA renews itself (same key) before it expires; old trust keeps working.

The server runs with an 80 s CA renewed 70 s ahead, so the renewal comes ~10 s after start.
Real clients check the outcome: ``openssl s_client`` holding only the *first* ``ca.crt``
verifies the server certificate reissued under the renewed CA, ``openssl verify`` accepts a
certificate issued before the renewal under the new ``ca.crt``, and the API issues under the
new CA (no longer clipped to the old notAfter).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests._poll import wait_until
from tests._tools import ok, run
from tests.e2e.conftest import StartServer, peer_certificate
from tests.e2e.test_tls import s_client, verify_code

pytestmark = pytest.mark.e2e

SHORT_CA = {
    "ca-cert-validity": "80s",
    "ca-cert-rotate-before": "70s",
    "cert-validity": "60s",
    "cert-rotate-before": "5s",
}
RENEWAL_DEADLINE_S = 40.0


def _csr_pem(cn: str) -> str:
    from cryptography.hazmat.primitives import hashes, serialization

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_internal_ca_renews_and_old_trust_still_verifies(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(config=SHORT_CA)
    first_ca = tmp_path / "first-ca.crt"
    shutil.copyfile(server.ca, first_ca)
    old_ca = x509.load_pem_x509_certificate(first_ca.read_bytes())
    old_server_cert = peer_certificate(server.port, first_ca)
    with server.client(server.admin_key) as client:
        response = client.post("/api/v1/certificates", json={"csr": _csr_pem("before.example")})
    assert response.status_code == 201, response.text
    before = tmp_path / "before.pem"
    before.write_text(response.json()["certificate_pem"])

    wait_until(
        lambda: server.ca.read_bytes() != first_ca.read_bytes(),
        "a renewed ca.crt",
        RENEWAL_DEADLINE_S,
    )

    new_ca = x509.load_pem_x509_certificate(server.ca.read_bytes())
    assert new_ca.public_key() == old_ca.public_key()
    assert new_ca.subject == old_ca.subject
    assert new_ca.not_valid_after_utc > old_ca.not_valid_after_utc
    # The server certificate was reissued under the renewed CA; the first ca.crt trusts it.
    wait_until(
        lambda: (
            peer_certificate(server.port, first_ca).serial_number != old_server_cert.serial_number
        ),
        "a reissued server certificate",
        15.0,
    )
    handshake = s_client(
        server.port, "-CAfile", first_ca, "-verify_return_error", "-servername", "certctl-server"
    )
    assert verify_code(handshake) == 0, handshake.stdout + handshake.stderr
    # A certificate issued under the old CA certificate verifies under the new one.
    ok(run("openssl", "verify", "-CAfile", server.ca, before))
    # New certificates are issued under the renewed CA: not clipped to the old notAfter.
    with server.client(server.admin_key) as client:
        response = client.post(
            "/api/v1/certificates", json={"csr": _csr_pem("after.example"), "validity": "75s"}
        )
    assert response.status_code == 201, response.text
    after = x509.load_pem_x509_certificate(response.json()["certificate_pem"].encode())
    assert after.not_valid_after_utc > old_ca.not_valid_after_utc
    assert "renewed the internal CA" in server.logs()[1]


def test_a_ca_lifetime_inside_its_renewal_margin_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "certctl.yaml"
    # Renewed 24h + 10 % + 5 s ahead of notAfter (cert-rotate-before): always due.
    config.write_text("ca-cert-validity: 24h\nca-cert-rotate-before: 1h\n")
    data_dir = tmp_path / "data"
    result = run(
        "certctl", "serve", "--config", config, "--data-dir", data_dir,
        "--listen", "127.0.0.1:0", timeout=30,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "ca-cert-validity (1D) must be longer than the CA renewal margin (26h24m5s" in lines[0]
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()  # refused before anything was written
