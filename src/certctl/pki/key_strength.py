"""Keys and signature digests too weak for TLS clients at OpenSSL's security level 2."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa

from certctl.pki.chain_links import anchor_name, intermediate_name
from certctl.pki.dn_display import display_dn
from certctl.pki.verdicts import VerificationFailed

__all__ = [
    "check_path_strength",
    "weakly_signed",
]


# OpenSSL's security level 2 (112-bit security), the default of Debian's build and so of
# nginx, curl and Python's ssl there (OPENSSL_TLS_SECURITY_LEVEL=2 in `openssl version -a`).
# cryptography's verifier already refuses a CA key below it, though not a leaf's.
_MIN_KEY_BITS: tuple[tuple[type[object], str, int], ...] = (
    (rsa.RSAPublicKey, "RSA", 2048),
    (dsa.DSAPublicKey, "DSA", 2048),
    (ec.EllipticCurvePublicKey, "EC", 224),
)
# Digests OpenSSL 3 refuses in a signature from security level 1 on (SHA-1 counts as less
# than 80 bits since 3.0); a trust anchor's signature on itself is not checked.
_WEAK_DIGESTS = {"sha1": "SHA-1", "md5": "MD5"}


def check_path_strength(chain: Sequence[x509.Certificate]) -> None:
    """Refuse a path (leaf first, anchor last) holding a key or digest TLS clients refuse.

    Plain ``openssl verify`` checks no security level; ``-auth_level 2`` and every TLS
    client at Debian's default level refuse "CA certificate key too weak" (error 67),
    "EE certificate key too weak" (66) and "CA signature digest algorithm too weak" (68).
    certctl's own path check looked at no key size, and cryptography checks an RSASSA-PSS
    signature over SHA-1 (not a PKCS#1 one: see weakly_signed), so such a path verified.
    """
    for child, parent in itertools.pairwise(chain):
        weak = _weak_digest(child)
        if weak is not None:
            raise VerificationFailed(f"verification failed: {_weak_message(parent, child, weak)}")
    for depth, cert in enumerate(chain):
        subject = display_dn(cert.subject)
        if not depth:
            what = f"certificate {subject}"
        elif depth == len(chain) - 1:
            what = anchor_name(cert)
        else:
            what = intermediate_name(cert)
        try:
            key = cert.public_key()
        except (UnsupportedAlgorithm, ValueError):
            continue  # a key cryptography cannot load fails where its signature is checked
        for kind, label, bits in _MIN_KEY_BITS:
            size = getattr(key, "key_size", None)
            if isinstance(key, kind) and isinstance(size, int) and size < bits:
                raise VerificationFailed(
                    f"verification failed: {what} has a {size}-bit {label} key, which TLS "
                    "clients refuse at OpenSSL security level 2 (Debian's default; openssl "
                    f"verify -auth_level 2): {label} keys need {bits} bits"
                )


def weakly_signed(parent: x509.Certificate, child: x509.Certificate) -> str | None:
    """Why ``parent`` is no issuer of ``child`` if it signed it with a weak digest, or None.

    cryptography will not check a SHA-1 or MD5 signature ("Unsupported signature
    algorithm"), so such a CA passed for "another key, same name"; OpenSSL 3 refuses it
    ("CA signature digest algorithm too weak", error 68) from security level 1 on.
    """
    weak = _weak_digest(child)
    if weak is None:
        return None
    algorithm = child.signature_hash_algorithm
    assert algorithm is not None  # _weak_digest named one
    key = parent.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pad = child.signature_algorithm_parameters
            if not isinstance(pad, padding.PSS | padding.PKCS1v15):
                return None
            key.verify(child.signature, child.tbs_certificate_bytes, pad, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, algorithm)
        else:
            return None
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return None
    return _weak_message(parent, child, weak)


def _weak_digest(cert: x509.Certificate) -> str | None:
    """The weak digest ``cert`` is signed with (``SHA-1``, ``SHA-1 (RSASSA-PSS)``), or None."""
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algorithm is None or algorithm.name not in _WEAK_DIGESTS:
        return None
    pss = cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
    return _WEAK_DIGESTS[algorithm.name] + (" (RSASSA-PSS)" if pss else "")


def _weak_message(parent: x509.Certificate, child: x509.Certificate, digest: str) -> str:
    return (
        f"CA {display_dn(parent.subject)} signed {display_dn(child.subject)} with "
        f"{digest}, which OpenSSL 3 refuses from security level 1 on "
        "(openssl verify -auth_level 1): reissue it with SHA-256"
    )
