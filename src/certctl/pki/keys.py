"""Private key generation and the key-strength policy."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import SignatureAlgorithmOID

from certctl.errors import InvalidRequest, WeakKey

__all__ = [
    "KeyType",
    "check_public_key",
    "generate_private_key",
    "key_type_of",
    "signature_hash_for",
    "signature_verifies",
    "unreadable_key",
]

MIN_RSA_BITS = 2048
_ALLOWED_CURVES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}


class KeyType(enum.StrEnum):
    """Key algorithms certctl issues with; values are the CLI/API spelling."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    ED25519 = "ed25519"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @classmethod
    def parse(cls, value: str) -> KeyType:
        """Return the key type named ``value``.

        Raises:
            WeakKey: ``value`` names a refused type (``rsa-1024``, ``dsa``, other curves).
            InvalidRequest: ``value`` is not a key type at all.
        """
        try:
            return cls(value.strip().lower())
        except ValueError:
            pass
        low = value.strip().lower()
        choices = ", ".join(k.value for k in cls)
        if low.startswith(("rsa-", "dsa", "ec-", "ed448")):
            raise WeakKey(f"{value}: key type not allowed (choose one of {choices})") from None
        raise InvalidRequest(f"{value}: unknown key type (choose one of {choices})") from None


def generate_private_key(key_type: KeyType = KeyType.EC_P256) -> CertificateIssuerPrivateKeyTypes:
    """Generate a new private key of ``key_type``."""
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    bits = int(key_type.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_type_of(key: object) -> str:
    """Describe a public or private key in certctl's spelling (``ec-p256``, ``rsa-3072``)."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return _ALLOWED_CURVES.get(key.curve.name, f"ec-{key.curve.name}")
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "ed448"
    if isinstance(key, dsa.DSAPrivateKey | dsa.DSAPublicKey):
        return f"dsa-{key.key_size}"
    return type(key).__name__


def check_public_key(key: CertificatePublicKeyTypes | object) -> None:
    """Refuse keys below policy: RSA < 2048 bits, DSA, curves other than P-256/P-384.

    Raises:
        WeakKey: the key is refused; the message names its type and the rule.
    """
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise WeakKey(f"rsa-{key.key_size}: RSA keys must have at least {MIN_RSA_BITS} bits")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _ALLOWED_CURVES:
            raise WeakKey(f"ec-{key.curve.name}: only P-256 and P-384 curves are allowed")
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise WeakKey(f"{key_type_of(key)}: key type not allowed")


def signature_hash_for(
    key: CertificateIssuerPrivateKeyTypes,
) -> hashes.SHA256 | hashes.SHA384 | None:
    """Pick the signature hash an issuer key signs with (None for EdDSA)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def signature_verifies(
    key: object,
    signature: bytes,
    data: bytes,
    parameters: object,
    hash_algorithm: hashes.HashAlgorithm | None,
    algorithm: x509.ObjectIdentifier,
) -> bool | None:
    """Whether ``key`` made ``signature`` over ``data`` (a TBS certificate or request).

    With a key already loaded (pyca's ``verify_directly_issued_by`` wants the issuer's
    certificate and matches its name; ``is_signature_valid`` parses the key again). The
    signature algorithm must belong to the key's type.

    Returns:
        True or False; None for a pairing of key and algorithm not handled here (the caller
        decides: another check, or a refusal).
    """
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(parameters, ec.ECDSA):
            key.verify(signature, data, parameters)
        elif isinstance(key, rsa.RSAPublicKey) and isinstance(
            parameters, padding.PKCS1v15 | padding.PSS
        ):
            if hash_algorithm is None:
                return None
            key.verify(signature, data, parameters, hash_algorithm)
        elif (
            isinstance(key, ed25519.Ed25519PublicKey) and algorithm == SignatureAlgorithmOID.ED25519
        ) or (isinstance(key, ed448.Ed448PublicKey) and algorithm == SignatureAlgorithmOID.ED448):
            key.verify(signature, data)
        else:
            return None
    except InvalidSignature:
        return False
    return True


def unreadable_key(
    certs: Sequence[x509.Certificate],
) -> tuple[x509.Certificate, UnsupportedAlgorithm] | None:
    """The first of ``certs`` whose public key cryptography cannot load, with why; else None.

    A curve OpenSSL signs with but cryptography lacks (prime239v1, sect283k1, SM2): such a
    certificate parses, but matching a key to it, checking its signatures and comparing keys
    for a compromise raise UnsupportedAlgorithm. An import checks once, before any of those.
    """
    for cert in certs:
        try:
            cert.public_key()
        except UnsupportedAlgorithm as exc:
            return cert, exc
    return None
