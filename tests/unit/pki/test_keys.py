"""Key types, generation and the key-strength policy."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x25519

from certctl.errors import InvalidRequest, WeakKey
from certctl.pki.keys import (
    KeyType,
    check_public_key,
    generate_private_key,
    key_type_of,
    signature_hash_for,
)


@pytest.mark.parametrize("text", ["ec-p256", "EC-P256", " ec-p256 "])
def test_parse_normalises(text: str) -> None:
    assert KeyType.parse(text) is KeyType.EC_P256


@pytest.mark.parametrize("key_type", list(KeyType))
def test_every_key_type_parses_by_value(key_type: KeyType) -> None:
    assert KeyType.parse(key_type.value) is key_type


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("rsa-1024", WeakKey, "rsa-1024: key type not allowed (choose one of"),
        ("rsa-512", WeakKey, "rsa-512: key type not allowed"),
        ("dsa", WeakKey, "dsa: key type not allowed"),
        ("dsa-2048", WeakKey, "dsa-2048: key type not allowed"),
        ("ec-p521", WeakKey, "ec-p521: key type not allowed"),
        ("ed448", WeakKey, "ed448: key type not allowed"),
        ("foo", InvalidRequest, "foo: unknown key type (choose one of ec-p256, ec-p384"),
        ("", InvalidRequest, ": unknown key type"),
        ("rsa", InvalidRequest, "rsa: unknown key type"),
    ],
)
def test_parse_refuses(text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)) as info:
        KeyType.parse(text)
    assert type(info.value) is error


@pytest.mark.parametrize(
    ("key_type", "cls", "detail"),
    [
        (KeyType.EC_P256, ec.EllipticCurvePrivateKey, "ec-p256"),
        (KeyType.EC_P384, ec.EllipticCurvePrivateKey, "ec-p384"),
        (KeyType.ED25519, ed25519.Ed25519PrivateKey, "ed25519"),
        (KeyType.RSA_2048, rsa.RSAPrivateKey, "rsa-2048"),
    ],
)
def test_generate(key_type: KeyType, cls: type, detail: str) -> None:
    key = generate_private_key(key_type)
    assert isinstance(key, cls)
    assert key_type_of(key) == detail
    assert key_type_of(key.public_key()) == detail
    check_public_key(key.public_key())


def test_generate_default_is_p256() -> None:
    key = generate_private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"


def test_rsa_exponent_is_65537(rsa_key: rsa.RSAPrivateKey) -> None:
    assert rsa_key.public_key().public_numbers().e == 65537


def test_key_type_of_other_keys() -> None:
    assert key_type_of(ec.generate_private_key(ec.SECP521R1())) == "ec-secp521r1"
    assert key_type_of(ed448.Ed448PrivateKey.generate()) == "ed448"
    assert key_type_of(x25519.X25519PrivateKey.generate()) == "X25519PrivateKey"


def test_check_public_key_accepts_policy_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    check_public_key(rsa_key.public_key())
    check_public_key(ec.generate_private_key(ec.SECP384R1()).public_key())
    check_public_key(ed25519.Ed25519PrivateKey.generate().public_key())


def test_check_public_key_refuses_small_rsa(rsa1024_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(WeakKey, match="rsa-1024: RSA keys must have at least 2048 bits"):
        check_public_key(rsa1024_key.public_key())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ec.generate_private_key(ec.SECP521R1()), "ec-secp521r1: only P-256 and P-384"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "ec-secp256k1: only P-256 and P-384"),
        (ed448.Ed448PrivateKey.generate, "ed448: key type not allowed"),
        (x25519.X25519PrivateKey.generate, "X25519PublicKey: key type not allowed"),
    ],
)
def test_check_public_key_refuses(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(WeakKey, match=re.escape(message)):
        check_public_key(make().public_key())


def test_check_public_key_refuses_dsa() -> None:
    # DSA parameter generation is slow; 1024-bit is enough to prove the refusal.
    key = dsa.generate_private_key(key_size=1024)
    with pytest.raises(WeakKey, match="dsa-1024: key type not allowed"):
        check_public_key(key.public_key())


def test_check_public_key_refuses_non_keys() -> None:
    with pytest.raises(WeakKey, match="str: key type not allowed"):
        check_public_key("not a key")


def test_signature_hash_for(rsa_key: rsa.RSAPrivateKey) -> None:
    assert signature_hash_for(ed25519.Ed25519PrivateKey.generate()) is None
    assert isinstance(signature_hash_for(rsa_key), hashes.SHA256)
    assert isinstance(signature_hash_for(ec.generate_private_key(ec.SECP256R1())), hashes.SHA256)
    assert isinstance(signature_hash_for(ec.generate_private_key(ec.SECP384R1())), hashes.SHA384)
