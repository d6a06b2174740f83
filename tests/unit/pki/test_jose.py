"""pki.jose: JWS messages signed by josepy (certbot's library) verify; each refusal is typed."""

from __future__ import annotations

import json
from typing import Any

import josepy as jose
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certctl.errors import AcmeError
from certctl.pki.jose import (
    b64url_decode,
    b64url_encode,
    jwk_of,
    load_jwk,
    parse_jws,
    thumbprint,
    verify_jws,
)


def _signed(
    alg: str, key: Any, payload: bytes = b'{"a":1}', header: dict[str, Any] | None = None
) -> bytes:
    protected = {"alg": alg, "nonce": "n", "url": "https://x/acme/new-order", **(header or {})}
    prot = b64url_encode(json.dumps(protected).encode())
    body = b64url_encode(payload)
    data = f"{prot}.{body}".encode()
    if alg in ("ES256", "ES384", "RS256"):
        signature = getattr(jose, alg).sign(key, data)
    elif alg == "EdDSA":
        signature = key.sign(data)
    else:
        signature = b"x"
    return json.dumps(
        {"protected": prot, "payload": body, "signature": b64url_encode(signature)}
    ).encode()


KEYS = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ES384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "RS256": lambda: rsa.generate_private_key(65537, 2048),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
}


@pytest.mark.parametrize("alg", KEYS)
def test_a_josepy_or_cryptography_signature_verifies_and_a_changed_one_does_not(alg: str) -> None:
    key = KEYS[alg]()
    message = parse_jws(_signed(alg, key))
    public = load_jwk(jwk_of(key.public_key()))
    verify_jws(message, public)
    doc = json.loads(_signed(alg, key))
    doc["payload"] = b64url_encode(b'{"a":2}')
    with pytest.raises(AcmeError, match="does not verify") as info:
        verify_jws(parse_jws(json.dumps(doc).encode()), public)
    assert info.value.acme_type == "malformed"


def test_thumbprint_is_rfc_7638s_and_josepys() -> None:
    # RFC 7638 3.1's example key and thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJEC"
        "PebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Qv"
        "zqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6W"
        "eZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert thumbprint(load_jwk(jwk)) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    key = ec.generate_private_key(ec.SECP256R1())
    josepy_print = jose.JWKEC(key=key.public_key()).thumbprint()
    assert thumbprint(key.public_key()) == jose.b64encode(josepy_print).decode()


@pytest.mark.parametrize(
    ("alg", "acme_type"),
    [
        ("none", "badSignatureAlgorithm"),
        ("HS256", "badSignatureAlgorithm"),
        (None, "badSignatureAlgorithm"),
    ],
)
def test_alg_none_hmac_or_missing_is_refused(alg: str | None, acme_type: str) -> None:
    body = _signed("ES256", KEYS["ES256"](), header={"alg": alg})
    with pytest.raises(AcmeError) as info:
        parse_jws(body)
    assert info.value.acme_type == acme_type


def test_an_alg_that_does_not_fit_the_key_is_refused() -> None:
    key = KEYS["ES256"]()
    message = parse_jws(_signed("ES256", key))
    with pytest.raises(AcmeError, match="needs an EC P-256 key") as info:
        verify_jws(message, load_jwk(jwk_of(KEYS["ES384"]().public_key())))
    assert info.value.acme_type == "badSignatureAlgorithm"
    with pytest.raises(AcmeError, match="RS256 needs an RSA key"):
        verify_jws(parse_jws(_signed("RS256", KEYS["RS256"]())), load_jwk(jwk_of(key.public_key())))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "not a JSON object"),
        (b"{", "not JSON"),
        (b'{"signatures": [], "payload": ""}', "general JSON serialization"),
        (b'{"protected": "e30", "header": {}, "payload": "", "signature": ""}', "unprotected"),
        (b'{"protected": "e30", "payload": ""}', "exactly protected, payload and signature"),
        (b'{"protected": "e30=", "payload": "", "signature": ""}', "protected: not unpadded"),
        (b'{"protected": "W10", "payload": "", "signature": ""}', "not a JSON object"),
    ],
)
def test_a_body_that_is_no_flattened_jws_is_malformed(body: bytes, message: str) -> None:
    with pytest.raises(AcmeError, match=message) as info:
        parse_jws(body)
    assert info.value.acme_type == "malformed"


@pytest.mark.parametrize(
    ("jwk", "message", "acme_type"),
    [
        ({"kty": "oct", "k": "AAAA"}, "kty: 'oct' not supported", "malformed"),
        (
            {"kty": "EC", "crv": "P-521", "x": "", "y": ""},
            "crv: 'P-521' not supported",
            "malformed",
        ),
        (
            {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url_encode(b"\1" * 32),
                "y": b64url_encode(b"\2" * 32),
            },
            "not a valid EC public key",
            "malformed",
        ),
        ({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}, "1 octets, expected 32", "malformed"),
        ({"kty": "OKP", "crv": "X25519", "x": "AA"}, "not supported", "malformed"),
        ("x", "not a JSON object", "malformed"),
    ],
)
def test_an_unusable_jwk_is_refused(jwk: Any, message: str, acme_type: str) -> None:
    with pytest.raises(AcmeError, match=message) as info:
        load_jwk(jwk)
    assert info.value.acme_type == acme_type


def test_a_small_rsa_key_and_a_private_jwk_are_refused() -> None:
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(AcmeError, match="1024 bits") as info:
        load_jwk(jwk_of(small.public_key()))
    assert info.value.acme_type == "badPublicKey"
    private = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())).to_partial_json()
    with pytest.raises(AcmeError, match="private key"):
        load_jwk(private)


def test_one_key_has_one_thumbprint_however_its_jwk_is_written() -> None:
    key = rsa.generate_private_key(65537, 2048).public_key()
    jwk = jwk_of(key)
    padded = {**jwk, "n": b64url_encode(b"\0" + b64url_decode(jwk["n"], "n")), "use": "sig"}
    assert thumbprint(load_jwk(padded)) == thumbprint(key)


@pytest.mark.parametrize("header", [{"crit": ["b64"], "b64": False}, {"crit": ["exp"]}])
def test_a_critical_header_extension_is_refused(header: dict[str, Any]) -> None:
    # RFC 7515 4.1.11: none is understood here. With b64 false (RFC 7797) the signer signed
    # the payload as it stands, which was then read as base64url: another payload than signed.
    key = KEYS["ES256"]()
    with pytest.raises(AcmeError, match="crit") as info:
        parse_jws(_signed("ES256", key, header=header))
    assert info.value.acme_type == "malformed"
