"""JWS and JWK as ACME uses them (RFC 8555 6.2, RFC 7515/7517/7638), on pyca/cryptography.

Flattened JSON serialization only; ``alg`` ES256, ES384, RS256 (RSA of 2048 bits or more) or
EdDSA (Ed25519). ``none`` and the HMAC algorithms are refused: ACME has no shared secret, and
an HMAC "signature" keyed with the public key would verify anything its holder made up.
Errors are :class:`~certctl.errors.AcmeError` with the ACME type an ACME client expects.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from certctl.errors import AcmeError

__all__ = [
    "ALGORITHMS",
    "JwsMessage",
    "JwsPublicKey",
    "b64url_decode",
    "b64url_encode",
    "jwk_of",
    "load_jwk",
    "parse_jws",
    "thumbprint",
    "verify_jws",
]

JwsPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

ALGORITHMS = ("ES256", "ES384", "RS256", "EdDSA")
# RFC 7518 3.4: an ECDSA signature is R || S, each the curve's size in octets.
_CURVES: dict[str, tuple[type[ec.EllipticCurve], int, hashes.HashAlgorithm]] = {
    "P-256": (ec.SECP256R1, 32, hashes.SHA256()),
    "P-384": (ec.SECP384R1, 48, hashes.SHA384()),
}
_ALG_CURVE = {"ES256": "P-256", "ES384": "P-384"}
_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 8192  # a 64 kbit modulus would cost a verification seconds of CPU
_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")


def b64url_encode(data: bytes) -> str:
    """``data`` as unpadded base64url (RFC 7515 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(value: object, what: str) -> bytes:
    """Unpadded base64url ``value`` as bytes.

    Raises:
        AcmeError: malformed, naming ``what``: not a string, padding, another alphabet.
    """
    if not isinstance(value, str) or not _B64URL.match(value) or len(value) % 4 == 1:
        raise AcmeError(f"{what}: not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise AcmeError(f"{what}: not unpadded base64url") from None


def _coordinate(jwk: dict[str, Any], name: str, size: int | None = None) -> int:
    raw = b64url_decode(jwk.get(name), f"jwk {name}")
    if size is not None and len(raw) != size:
        raise AcmeError(f"jwk {name}: {len(raw)} octets, expected {size}")
    return int.from_bytes(raw, "big")


def load_jwk(jwk: object) -> JwsPublicKey:
    """The public key a JWK (RFC 7517) describes: EC P-256/P-384, RSA or OKP Ed25519.

    Raises:
        AcmeError: malformed (not a public JWK of those types, an invalid point) or
            badPublicKey (RSA under 2048 bits).
    """
    if not isinstance(jwk, dict):
        raise AcmeError("jwk: not a JSON object")
    if "d" in jwk:
        # A private key sent by mistake: refuse it rather than store it as the account's.
        raise AcmeError("jwk: holds a private key (member d); send the public key only")
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            crv = jwk.get("crv")
            if crv not in _CURVES:
                raise AcmeError(f"jwk crv: {str(crv)[:20]!r} not supported (P-256, P-384)")
            curve, size, _ = _CURVES[crv]
            numbers = ec.EllipticCurvePublicNumbers(
                _coordinate(jwk, "x", size), _coordinate(jwk, "y", size), curve()
            )
            return numbers.public_key()
        if kty == "RSA":
            n, e = _coordinate(jwk, "n"), _coordinate(jwk, "e")
            if not _MIN_RSA_BITS <= n.bit_length() <= _MAX_RSA_BITS:
                raise AcmeError(
                    f"jwk: RSA key of {n.bit_length()} bits; {_MIN_RSA_BITS} to "
                    f"{_MAX_RSA_BITS} are accepted",
                    "badPublicKey",
                )
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise AcmeError(f"jwk crv: {str(jwk.get('crv'))[:20]!r} not supported (Ed25519)")
            raw = b64url_decode(jwk.get("x"), "jwk x")
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:  # not a point on the curve, a bad RSA exponent, 31 octets
        raise AcmeError(f"jwk: not a valid {kty} public key ({exc})") from None
    raise AcmeError(f"jwk kty: {str(kty)[:20]!r} not supported (EC, RSA, OKP)")


def jwk_of(key: JwsPublicKey) -> dict[str, str]:
    """The public JWK of ``key``: its required members only (RFC 7638 3.2)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = "P-256" if key.curve.name == "secp256r1" else "P-384"
        size = _CURVES[crv][1]
        nums = key.public_numbers()
        return {
            "crv": crv,
            "kty": "EC",
            "x": b64url_encode(nums.x.to_bytes(size, "big")),
            "y": b64url_encode(nums.y.to_bytes(size, "big")),
        }
    if isinstance(key, rsa.RSAPublicKey):
        rsa_nums = key.public_numbers()
        return {
            "e": b64url_encode(rsa_nums.e.to_bytes((rsa_nums.e.bit_length() + 7) // 8, "big")),
            "kty": "RSA",
            "n": b64url_encode(rsa_nums.n.to_bytes((rsa_nums.n.bit_length() + 7) // 8, "big")),
        }
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}


def thumbprint(key: JwsPublicKey) -> str:
    """RFC 7638 SHA-256 thumbprint of ``key``, base64url: the account's identity.

    From the key, not the JWK as sent: leading zero octets or extra members in the sent
    JWK would otherwise give one key several thumbprints (and several accounts).
    """
    canonical = json.dumps(jwk_of(key), sort_keys=True, separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class JwsMessage:
    """A parsed flattened JWS, not verified yet."""

    protected: dict[str, Any]
    payload: bytes
    signature: bytes
    signing_input: bytes

    @property
    def alg(self) -> str:
        """The protected header's ``alg``."""
        return str(self.protected["alg"])


def parse_jws(body: bytes) -> JwsMessage:
    """A flattened JSON JWS (RFC 7515 7.2.2) with a protected header holding a known ``alg``.

    Raises:
        AcmeError: malformed (not that JSON shape, an unprotected header, bad base64url) or
            badSignatureAlgorithm (``alg`` none, HS256 … or unknown).
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AcmeError("request body is not JSON") from None
    if not isinstance(doc, dict):
        raise AcmeError("request body is not a JSON object")
    if "signatures" in doc:
        raise AcmeError("a JWS in the general JSON serialization; ACME takes the flattened one")
    if "header" in doc:
        raise AcmeError("an unprotected JWS header; RFC 8555 6.2 allows the protected one only")
    unknown = set(doc) - {"protected", "payload", "signature"}
    if unknown or len(doc) != 3:
        raise AcmeError("expected a flattened JWS: exactly protected, payload and signature")
    protected_b64, payload_b64 = doc["protected"], doc["payload"]
    protected_raw = b64url_decode(protected_b64, "protected")
    try:
        protected = json.loads(protected_raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AcmeError("protected header is not JSON") from None
    if not isinstance(protected, dict):
        raise AcmeError("protected header is not a JSON object")
    if "crit" in protected or "b64" in protected:
        # RFC 7515 4.1.11: a critical extension not understood is refused, and none is (with
        # RFC 7797's b64 false the payload would be read otherwise than it was signed).
        raise AcmeError("protected header: crit and b64 (JWS extensions) are not supported")
    alg = protected.get("alg")
    if alg not in ALGORITHMS:
        shown = str(alg)[:20] if alg is not None else "missing"
        raise AcmeError(
            f"alg {shown}: not accepted; use one of {', '.join(ALGORITHMS)}",
            "badSignatureAlgorithm",
        )
    payload = b64url_decode(payload_b64, "payload")
    signature = b64url_decode(doc["signature"], "signature")
    signing_input = f"{protected_b64}.{payload_b64}".encode()
    return JwsMessage(protected, payload, signature, signing_input)


def verify_jws(message: JwsMessage, key: JwsPublicKey) -> None:
    """Check ``message``'s signature with ``key``, for its ``alg``.

    Raises:
        AcmeError: badSignatureAlgorithm (``alg`` does not fit the key type or curve) or
            malformed (the signature does not verify).
    """
    alg = message.alg
    data, signature = message.signing_input, message.signature
    try:
        if alg in _ALG_CURVE:
            crv = _ALG_CURVE[alg]
            if not isinstance(key, ec.EllipticCurvePublicKey) or jwk_of(key)["crv"] != crv:
                raise AcmeError(f"alg {alg} needs an EC {crv} key", "badSignatureAlgorithm")
            size, digest = _CURVES[crv][1], _CURVES[crv][2]
            if len(signature) != 2 * size:
                raise AcmeError("JWS signature does not verify")
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(digest))
        elif alg == "RS256":
            if not isinstance(key, rsa.RSAPublicKey):
                raise AcmeError("alg RS256 needs an RSA key", "badSignatureAlgorithm")
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:  # EdDSA: parse_jws let no other alg through
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise AcmeError("alg EdDSA needs an Ed25519 key", "badSignatureAlgorithm")
            key.verify(signature, data)
    except InvalidSignature:
        raise AcmeError("JWS signature does not verify") from None
