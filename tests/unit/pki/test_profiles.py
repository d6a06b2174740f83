"""Certificate profiles as data."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certctl.errors import InvalidRequest
from certctl.pki.profiles import LEAF_PROFILES, PROFILES, get_profile

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


@pytest.mark.parametrize(
    ("name", "is_ca", "ekus", "path_length", "allows_sans"),
    [
        ("ca", True, (), None, False),
        ("intermediate", True, (), 0, False),
        ("server", False, (SERVER,), None, True),
        ("client", False, (CLIENT,), None, True),
        ("server+client", False, (SERVER, CLIENT), None, True),
    ],
)
def test_profile_table(
    name: str, is_ca: bool, ekus: tuple[object, ...], path_length: int | None, allows_sans: bool
) -> None:
    profile = PROFILES[name]
    assert profile.name == name
    assert profile.is_ca is is_ca
    assert profile.extended_key_usage == ekus
    assert profile.path_length == path_length
    assert profile.allows_sans is allows_sans
    assert profile.is_server is (SERVER in ekus)
    assert profile.is_client is (CLIENT in ekus)


def test_leaf_profiles_are_not_cas() -> None:
    assert set(LEAF_PROFILES) == {"server", "client", "server+client"}
    assert not any(PROFILES[name].is_ca for name in LEAF_PROFILES)


@pytest.mark.parametrize("text", ["server", "SERVER", " server "])
def test_get_profile_normalises(text: str) -> None:
    assert get_profile(text) is PROFILES["server"]


@pytest.mark.parametrize("text", ["", "web", "server,client", "peer"])
def test_get_profile_refuses(text: str) -> None:
    with pytest.raises(
        InvalidRequest,
        match=rf"^{text}: unknown profile \(choose one of ca, intermediate, server, client, "
        r"server\+client\)$",
    ):
        get_profile(text)


def test_with_path_length() -> None:
    profile = PROFILES["intermediate"].with_path_length(2)
    assert profile.is_ca
    assert profile.path_length == 2
    assert profile.extended_key_usage == ()
    assert PROFILES["ca"].with_path_length(None).path_length is None
    # The table itself is not modified.
    assert PROFILES["intermediate"].path_length == 0


def test_with_path_length_refuses_leaf() -> None:
    with pytest.raises(InvalidRequest, match="server: path length applies to CA profiles only"):
        PROFILES["server"].with_path_length(1)


def test_with_path_length_refuses_negative() -> None:
    with pytest.raises(InvalidRequest, match="-1: path length must be 0 or more"):
        PROFILES["ca"].with_path_length(-1)


def _usages(ku: object) -> set[str]:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    )
    return {n for n in names if getattr(ku, n)}


@pytest.mark.parametrize("name", ["ca", "intermediate"])
def test_ca_key_usage(name: str, rsa_key: rsa.RSAPrivateKey) -> None:
    for key in (rsa_key.public_key(), ec.generate_private_key(ec.SECP256R1()).public_key()):
        ku = PROFILES[name].key_usage(key)
        assert _usages(ku) == {"digital_signature", "key_cert_sign", "crl_sign"}


@pytest.mark.parametrize(
    ("name", "rsa_usages"),
    [
        ("server", {"digital_signature", "key_encipherment"}),
        ("server+client", {"digital_signature", "key_encipherment"}),
        ("client", {"digital_signature"}),
    ],
)
def test_leaf_key_usage(name: str, rsa_usages: set[str], rsa_key: rsa.RSAPrivateKey) -> None:
    profile = PROFILES[name]
    assert _usages(profile.key_usage(rsa_key.public_key())) == rsa_usages
    # EC and EdDSA keys only sign: keyEncipherment would be wrong for them.
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    ed_key = ed25519.Ed25519PrivateKey.generate().public_key()
    assert _usages(profile.key_usage(ec_key)) == {"digital_signature"}
    assert _usages(profile.key_usage(ed_key)) == {"digital_signature"}
