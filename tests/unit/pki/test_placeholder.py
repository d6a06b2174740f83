"""The no-client trust anchor: deterministic, per name and seed, and nothing chains to it."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certctl.pki.placeholder import PLACEHOLDER_CN_PREFIX, no_client_trust_anchor
from certctl.store.keywrap import KeyWrapper
from tests._tools import ok, openssl_req, run


def test_stable_for_one_seed_and_name_and_distinct_otherwise() -> None:
    wrapper = KeyWrapper(os.urandom(32))
    seed = wrapper.derive("client-trust placeholder:web")
    first = no_client_trust_anchor(seed, "web")
    assert no_client_trust_anchor(seed, "web") == first
    other_seed = wrapper.derive("client-trust placeholder:api")
    assert other_seed != seed
    assert no_client_trust_anchor(other_seed, "api") != first
    # Another master key, another anchor: the key cannot be computed from public facts.
    assert KeyWrapper(os.urandom(32)).derive("client-trust placeholder:web") != seed
    cert = x509.load_pem_x509_certificate(first)
    assert cert.subject.rfc4514_string() == f"CN={PLACEHOLDER_CN_PREFIX} (web)"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_client_certificate_does_not_verify_against_it(tmp_path: Path) -> None:
    anchor = tmp_path / "trust.pem"
    anchor.write_bytes(no_client_trust_anchor(os.urandom(32), "web"))
    key, cert = tmp_path / "c.key", tmp_path / "c.crt"
    openssl_req(key, cert, "/CN=mallory", "-days", "1", x509=True)
    result = run("openssl", "verify", "-purpose", "sslclient", "-CAfile", anchor, cert)
    assert result.returncode != 0, result.stdout
    # Refused as untrusted, not as an unreadable file or a usage error.
    assert "error 18 at 0 depth lookup: self-signed certificate" in result.stderr, result.stderr
    # The anchor's subject and key identifier named as issuer, signed by another key: the
    # anchor is not taken as its issuer either.
    forged = tmp_path / "forged.crt"
    forged.write_bytes(_forged_by_name(x509.load_pem_x509_certificate(anchor.read_bytes())))
    refused = run("openssl", "verify", "-purpose", "sslclient", "-CAfile", anchor, forged)
    assert refused.returncode != 0, refused.stdout
    assert "error 20 at 0 depth lookup: unable to get local issuer certificate" in refused.stderr, (
        refused.stderr
    )
    # openssl accepts the file as a trust store (it is not empty or malformed).
    ok(run("openssl", "verify", "-CAfile", anchor, anchor))


def _forged_by_name(anchor: x509.Certificate) -> bytes:
    """A client certificate naming ``anchor`` as its issuer, signed by a key of its own."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ski = anchor.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
        .issuer_name(anchor.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_seed_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        no_client_trust_anchor(b"short", "web")
