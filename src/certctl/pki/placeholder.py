"""A trust anchor that admits nobody: the client-trust bundle of a service with no clients.

A service with client authentication but no registered client must still get a trust file:
nginx refuses to start on an empty ``ssl_client_certificate`` ("no certificate or crl found"),
and Java trust stores must not be empty either. The placeholder is a self-signed Ed25519
certificate whose private key is derived from a secret seed and never written anywhere, so
no certificate can ever chain to it: the server starts and refuses every client certificate.

It is deterministic for one seed and name (Ed25519 signatures are deterministic, the dates
and serial are fixed), so reconciling again does not rewrite the bundle or reload servers,
and replicas sharing a master key produce the same bytes.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

__all__ = ["PLACEHOLDER_CN_PREFIX", "no_client_trust_anchor"]

PLACEHOLDER_CN_PREFIX = "certctl: no client registered"
_NOT_BEFORE = datetime(2000, 1, 1, tzinfo=UTC)
_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # RFC 5280 "no expiry"


def no_client_trust_anchor(seed: bytes, name: str) -> bytes:
    """PEM of the placeholder for ``name``; ``seed`` is 32 secret bytes (never the key itself)."""
    if len(seed) != 32:
        raise ValueError("the placeholder seed must be 32 bytes")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"{PLACEHOLDER_CN_PREFIX} ({name})"[:64])]
    )
    serial = int.from_bytes(hashlib.sha256(b"serial" + seed).digest()[:19], "big") | 1
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )
    return certificate.public_bytes(serialization.Encoding.PEM)
