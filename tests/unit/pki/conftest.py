"""Shared CA material for the pki unit tests, built through certctl.pki."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certctl.pki import (
    CertificateAuthority,
    KeyType,
    common_name_dn,
    create_root_ca,
    generate_private_key,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def now() -> datetime:
    return NOW


@pytest.fixture(scope="session")
def root_ca() -> CertificateAuthority:
    key = generate_private_key(KeyType.EC_P256)
    issued = create_root_ca(
        key, common_name_dn("Test Root CA"), validity=timedelta(days=3650), now=NOW
    )
    return CertificateAuthority(issued.certificate, key)


@pytest.fixture(scope="session")
def intermediate_ca(root_ca: CertificateAuthority) -> CertificateAuthority:
    from certctl.pki import PROFILES

    key = generate_private_key(KeyType.EC_P256)
    issued = root_ca.issue(
        key.public_key(),
        common_name_dn("Test Intermediate CA"),
        profile=PROFILES["intermediate"],
        validity=timedelta(days=1825),
        now=NOW,
    )
    return CertificateAuthority(issued.certificate, key, (root_ca.certificate,))


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa1024_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def ca_without_usage(usage: str, now: datetime) -> CertificateAuthority:
    """A root whose keyUsage lacks ``usage`` (keyCertSign or cRLSign), as some imports do."""
    key = ec.generate_private_key(ec.SECP256R1())
    flags = {"key_cert_sign": True, "crl_sign": True, usage: False}
    cert = (
        x509.CertificateBuilder()
        .subject_name(common_name_dn("Limited CA"))
        .issuer_name(common_name_dn("Limited CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                True, False, False, False, False, encipher_only=False, decipher_only=False, **flags
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)
