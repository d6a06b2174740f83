"""PEM, DER and PKCS#12 reading and writing."""

from __future__ import annotations

import base64
import hmac
import re
import warnings
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import example, given, settings
from hypothesis import strategies as st

from certctl.errors import InvalidRequest, PasswordRequired, WrongPassword
from certctl.pki import (
    CertificateAuthority,
    certs_to_pem,
    common_name_dn,
    create_crl,
    create_csr,
    create_root_ca,
    key_to_pem,
    load_material,
    load_private_key,
    to_pkcs12,
)
from certctl.pki.formats import pkcs12_holds, to_pkcs12_truststore

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
FAST = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def leaf(
    root_ca: CertificateAuthority, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from certctl.pki import PROFILES

    key = ec.generate_private_key(ec.SECP256R1())
    issued = root_ca.issue(
        key.public_key(),
        common_name_dn("leaf.example"),
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=now,
    )
    return issued.certificate, key


def test_pem_bundle_keeps_order(
    root_ca: CertificateAuthority, intermediate_ca: CertificateAuthority
) -> None:
    certs = [intermediate_ca.certificate, root_ca.certificate]
    material = load_material(certs_to_pem(certs))
    assert material.format == "pem"
    assert material.certificates == certs
    assert material.private_key is None


def test_pem_mixed_blocks(
    root_ca: CertificateAuthority, ec_key: ec.EllipticCurvePrivateKey, now: datetime
) -> None:
    csr = create_csr(ec_key, common_name_dn("x"))
    crl = create_crl(root_ca, [], now=now)
    public = ec_key.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    data = b"\n".join(
        [
            b"leading text is ignored",
            certs_to_pem([root_ca.certificate]),
            key_to_pem(ec_key),
            csr.public_bytes(PEM),
            crl.public_bytes(PEM),
            public,  # ignored on purpose
        ]
    )
    material = load_material(data)
    assert material.certificates == [root_ca.certificate]
    assert material.private_key is not None
    assert material.private_key.public_key() == ec_key.public_key()
    assert material.csrs == [csr]
    assert len(material.crls) == 1


def test_pem_with_crlf(root_ca: CertificateAuthority) -> None:
    data = certs_to_pem([root_ca.certificate]).replace(b"\n", b"\r\n")
    assert load_material(data).certificates == [root_ca.certificate]


@pytest.mark.parametrize("kind", ["certificate", "csr", "crl", "key"])
def test_der_detection(
    kind: str, root_ca: CertificateAuthority, ec_key: ec.EllipticCurvePrivateKey, now: datetime
) -> None:
    if kind == "certificate":
        data = root_ca.certificate.public_bytes(DER)
    elif kind == "csr":
        data = create_csr(ec_key, common_name_dn("x")).public_bytes(DER)
    elif kind == "crl":
        data = create_crl(root_ca, [], now=now).public_bytes(DER)
    else:
        data = ec_key.private_bytes(
            DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    material = load_material(data)
    assert material.format == "der"
    found = {
        "certificate": len(material.certificates),
        "csr": len(material.csrs),
        "crl": len(material.crls),
        "key": int(material.private_key is not None),
    }
    assert found == {k: int(k == kind) for k in found}


def test_key_to_pem_is_pkcs8(ec_key: ec.EllipticCurvePrivateKey) -> None:
    pem = key_to_pem(ec_key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert load_private_key(pem).public_key() == ec_key.public_key()


def test_encrypted_key_round_trip(ec_key: ec.EllipticCurvePrivateKey) -> None:
    pem = key_to_pem(ec_key, b"s3cret")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert load_private_key(pem, b"s3cret").public_key() == ec_key.public_key()


def test_traditional_openssl_key(ec_key: ec.EllipticCurvePrivateKey) -> None:
    pem = ec_key.private_bytes(
        PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert load_private_key(pem).public_key() == ec_key.public_key()


def _encrypted_traditional(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"pw"),
    )


def _encrypted_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        DER, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )


def _plain_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.mark.parametrize(
    ("make", "password", "message"),
    [
        (lambda k: key_to_pem(k, b"pw"), None, "the private key is encrypted: give its password"),
        (
            lambda k: key_to_pem(k, b"pw"),
            b"wrong",
            "cannot decrypt the private key: wrong password",
        ),
        (_encrypted_traditional, None, "the private key is encrypted: give its password"),
        (_encrypted_traditional, b"wrong", "cannot decrypt the private key: wrong password"),
        (_encrypted_der, None, "the private key is encrypted: give its password"),
        (_encrypted_der, b"wrong", "cannot decrypt the private key: wrong password"),
        (key_to_pem, b"pw", "the private key is not encrypted; drop the password"),
        # A plain DER key given a password: before, "wrong password" (a WrongPassword).
        (_plain_der, b"pw", "the private key is not encrypted; drop the password"),
        (lambda k: key_to_pem(k) * 2, None, "more than one private key in one file"),
    ],
)
def test_key_refusals(
    ec_key: ec.EllipticCurvePrivateKey, make: object, password: bytes | None, message: str
) -> None:
    data = make(ec_key)  # type: ignore[operator]
    with pytest.raises(InvalidRequest, match=re.escape(message)) as raised:
        load_material(data, password)
    # By type, for callers that say where a default password came from (not by its words).
    assert isinstance(raised.value, WrongPassword) == ("wrong password" in message)
    # And the server, which takes no password, gives its own advice for this type alone.
    assert isinstance(raised.value, PasswordRequired) == ("give its password" in message)


def test_x25519_key_refused() -> None:
    key = x25519.X25519PrivateKey.generate()
    data = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(InvalidRequest, match="X25519PrivateKey: unsupported private key type"):
        load_material(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "an empty file: no certificate, key, CSR or CRL in it"),
        (b" \n\n", "an empty file: no certificate, key, CSR or CRL in it"),
        (b"garbage", "not a recognised PEM, DER or PKCS#12 file"),
        (b"\x30\x82\x01\x00" + b"\x00" * 16, "not a recognised PEM, DER or PKCS#12 file"),
        (b"-----BEGIN CERTIFICATE-----\nMIIB", "malformed PEM: no complete BEGIN/END block"),
        (
            # A fragment of one: no CRL, so no word of cfssl gencrl's.
            b"MIIBBDCBrAIBATAKBggqhkjOPQQDAjAv\nMRAwDgYDVQQK\n",
            "base64 without PEM's BEGIN/END lines: decode it with 'base64 -d FILE > FILE.der'",
        ),
        (
            b'{"cert":"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n"}',
            "a JSON document holding PEM, as cfssl prints it: write the PEM files with "
            "'cfssljson -f FILE -bare NAME' (NAME.pem, NAME-key.pem, NAME.csr)",
        ),
        (
            # Vault's answer: cfssljson reads top-level members only, and wrote nothing.
            b'{"data": {"serial": "1", "certificate": "-----BEGIN CERTIFICATE-----\\nMIIB\\n'
            b'-----END CERTIFICATE-----\\n"}}',
            "a JSON document holding PEM at .data.certificate, which cfssljson does not read: "
            "write it out with \"jq -r '.data.certificate' FILE > NAME.pem\"",
        ),
        (
            b'{"items": [{"x-pem": "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END '
            b'CERTIFICATE-----\\n"}]}',
            'a JSON document holding PEM at .items[0]["x-pem"], which cfssljson does not '
            'read: write it out with "jq -r \'.items[0]["x-pem"]\' FILE > NAME.pem"',
        ),
        (
            bytes.fromhex("feedfeed00000002") + b"\x00" * 32,
            "a Java keystore (JKS/JCEKS), which certctl does not read; convert it with: keytool "
            "-importkeystore -srckeystore FILE -destkeystore FILE.p12 -deststoretype PKCS12",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "malformed PEM certificate block",
        ),
        (
            b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
            "malformed PEM x509 crl block",
        ),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "malformed PEM certificate request block",
        ),
        (
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "PEM file holds no certificate, key, CSR or CRL",
        ),
    ],
)
def test_load_refuses(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        load_material(data)


@pytest.mark.parametrize(
    ("kind", "hint"),
    [
        ("certificate", "a certificate in base64 without PEM's BEGIN/END lines: decode it "
                        "with 'base64 -d FILE > FILE.der'"),
        ("pkcs12", "a PKCS#12 file in base64 without PEM's BEGIN/END lines: decode it with "
                   "'base64 -d FILE > FILE.p12'"),
        ("csr", "a CSR in base64 without PEM's BEGIN/END lines: decode it with "
                "'base64 -d FILE > FILE.der'"),
        ("key", "a private key in base64 without PEM's BEGIN/END lines: decode it with "
                "'base64 -d FILE > FILE.der'"),
        ("crl", "a CRL in base64 without PEM's BEGIN/END lines, as cfssl gencrl writes one: "
                "decode it with 'base64 -d FILE > FILE.der'"),
    ],
)  # fmt: skip
def test_bare_base64_is_named_by_what_it_holds(
    root_ca: CertificateAuthority,
    ec_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    kind: str,
    hint: str,
) -> None:
    # A base64 certificate or PKCS#12 file (a Secret's data, a keystore export) was told
    # it was written "as cfssl gencrl writes a CRL".
    der = {
        "certificate": lambda: root_ca.certificate.public_bytes(DER),
        "pkcs12": lambda: to_pkcs12("x", None, root_ca.certificate, [], b"pw"),
        "csr": lambda: create_csr(ec_key, common_name_dn("csr.example")).public_bytes(DER),
        "key": lambda: ec_key.private_bytes(
            DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "crl": lambda: create_crl(root_ca, [], now=now).public_bytes(DER),
    }[kind]()
    # Wrapped at 76 columns, as base64(1) writes it.
    text = base64.encodebytes(der)
    with pytest.raises(InvalidRequest) as refused:
        load_material(text)
    assert refused.value.detail == hint


def test_a_zip_is_refused_as_one_not_read_as_the_pem_stored_in_it(
    root_ca: CertificateAuthority, tmp_path: Path
) -> None:
    # `cert issue --in … --out certs.zip` stores its ca.crt files uncompressed: inspect read
    # the zip as a PEM file and listed the CA once per instance, as if that were the file;
    # with --pem it failed with "more than one private key in one file".
    archive = tmp_path / "certs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("node1/ca.crt", certs_to_pem([root_ca.certificate]))
        zf.writestr("node2/ca.crt", certs_to_pem([root_ca.certificate]))
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    for path in (archive, empty):
        with pytest.raises(InvalidRequest) as info:
            load_material(path.read_bytes())
        assert info.value.detail == (
            "a zip archive: unzip it and give one of the files inside (certctl http and "
            "cert issue --in write zips)"
        )


def test_text_starting_as_a_zip_does_before_a_pem_block(root_ca: CertificateAuthority) -> None:
    # Text around PEM blocks is ignored (test_pem_round_trip); a zip's magic in it is no zip.
    pem = certs_to_pem([root_ca.certificate])
    for junk in (b"PK\x03\x04", b"PK\x05\x06" + b"\x00" * 18):
        assert load_material(junk + b"\n" + pem + junk).certificates == [root_ca.certificate]


def test_old_and_openssl_certificate_labels(root_ca: CertificateAuthority) -> None:
    pem = certs_to_pem([root_ca.certificate])
    old = pem.replace(b"CERTIFICATE-----", b"X509 CERTIFICATE-----")
    assert load_material(old).certificates == [root_ca.certificate]
    with pytest.raises(InvalidRequest, match="malformed PEM x509 certificate block"):
        load_material(b"-----BEGIN X509 CERTIFICATE-----\n!!!!\n-----END X509 CERTIFICATE-----\n")
    # OpenSSL trust settings may reject uses: named, not called "malformed", and not read.
    trusted = pem.replace(b"CERTIFICATE-----", b"TRUSTED CERTIFICATE-----")
    with pytest.raises(
        InvalidRequest,
        match=re.escape(
            "TRUSTED CERTIFICATE block (OpenSSL trust settings) is not read; convert it with: "
            "openssl x509 -in FILE -out plain.pem"
        ),
    ):
        load_material(trusted)


def test_truncated_pem_refused(root_ca: CertificateAuthority) -> None:
    pem = certs_to_pem([root_ca.certificate])
    with pytest.raises(InvalidRequest, match="malformed PEM: no complete BEGIN/END block"):
        load_material(pem[:-40])


def test_corrupted_pem_body_refused(root_ca: CertificateAuthority) -> None:
    pem = certs_to_pem([root_ca.certificate])
    with pytest.raises(InvalidRequest, match="malformed PEM certificate block"):
        load_material(pem[:100] + pem[140:])


def test_truncated_der_refused(root_ca: CertificateAuthority) -> None:
    der = root_ca.certificate.public_bytes(DER)
    with pytest.raises(InvalidRequest, match="not a recognised PEM, DER or PKCS#12 file"):
        load_material(der[:-10])


def test_load_private_key_needs_a_key(root_ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidRequest, match="no private key found"):
        load_private_key(certs_to_pem([root_ca.certificate]))


# --- PKCS#12 -----------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_pkcs12_round_trip(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    root_ca: CertificateAuthority,
    legacy: bool,
) -> None:
    cert, key = leaf
    data = to_pkcs12("leaf", key, cert, [root_ca.certificate], b"changeit", legacy=legacy)
    material = load_material(data, b"changeit")
    assert material.format == "pkcs12"
    assert material.certificates == [cert, root_ca.certificate]
    assert material.private_key is not None
    assert material.private_key.public_key() == key.public_key()
    loaded = pkcs12.load_pkcs12(data, b"changeit")
    assert loaded.cert is not None
    assert loaded.cert.friendly_name == b"leaf"


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("password", [b"changeit", "pässwörd€ 𝄞".encode()])
def test_pkcs12_trusted_entries_join_the_key_entry(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    root_ca: CertificateAuthority,
    legacy: bool,
    password: bytes,
) -> None:
    cert, key = leaf
    other = create_root_ca(
        key, common_name_dn("Other CA"), validity=timedelta(days=30), now=datetime.now(UTC)
    )
    data = to_pkcs12(
        "leaf", key, cert, [], password, legacy=legacy,
        trusted=[root_ca.certificate, other.certificate],
    )  # fmt: skip
    # The MAC was recomputed over both parts: a wrong password still fails, the right opens.
    with pytest.raises(ValueError, match="Invalid password or PKCS12 data"):
        pkcs12.load_pkcs12(data, b"wrong")
    loaded = pkcs12.load_pkcs12(data, password)
    assert loaded.key is not None
    assert loaded.key.public_key() == key.public_key()
    assert loaded.cert is not None
    assert (loaded.cert.certificate, loaded.cert.friendly_name) == (cert, b"leaf")
    assert [(c.certificate, c.friendly_name) for c in loaded.additional_certs] == [
        (root_ca.certificate, b"ca"),
        (other.certificate, b"ca-2"),
    ]
    assert load_material(data, password).certificates == [
        cert, root_ca.certificate, other.certificate,
    ]  # fmt: skip


def test_pkcs12_merge_refuses_a_password_that_does_not_match_the_mac(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    from certctl.pki._pkcs12 import merge_authenticated_safes

    cert, key = leaf
    store = to_pkcs12("leaf", key, cert, [], b"changeit")
    with pytest.raises(ValueError, match="the MAC does not verify with this password"):
        merge_authenticated_safes(store, store, b"other")
    with pytest.raises(ValueError, match="PKCS#12: expected tag"):
        merge_authenticated_safes(b"\x04\x00", store, b"changeit")


def test_pkcs12_without_password_opens(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    cert, key = leaf
    data = pkcs12.serialize_key_and_certificates(
        b"x", key, cert, None, serialization.NoEncryption()
    )
    assert load_material(data).certificates == [cert]


def test_pkcs12_truststore_without_key(root_ca: CertificateAuthority) -> None:
    data = to_pkcs12("trust", None, None, [root_ca.certificate], b"changeit")
    material = load_material(data, b"changeit")
    assert material.private_key is None
    assert material.certificates == [root_ca.certificate]


def test_pkcs12_holds_exactly_what_it_was_made_from(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], root_ca: CertificateAuthority
) -> None:
    cert, key = leaf
    data = to_pkcs12("es", key, cert, [], b"changeit", trusted=[root_ca.certificate])
    same = {"name": "es", "key": key, "certificate": cert, "others": [root_ca.certificate]}
    assert pkcs12_holds(data, b"changeit", **same)  # type: ignore[arg-type]
    # Each input changed on its own: not held (the writer makes the keystore anew).
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = create_root_ca(
        other_key, common_name_dn("Other CA"), validity=timedelta(days=1), now=datetime.now(UTC)
    )
    for change in (
        {"name": "kibana"},
        {"key": other_key},
        {"certificate": other_ca.certificate},
        {"others": []},
        {"others": [root_ca.certificate, other_ca.certificate]},
    ):
        assert not pkcs12_holds(data, b"changeit", **{**same, **change}), change  # type: ignore[arg-type]
    assert not pkcs12_holds(data, b"changeit2", **same)  # type: ignore[arg-type]
    for damaged in (b"", b"not a keystore", data[:-40], data[:100]):
        assert not pkcs12_holds(damaged, b"changeit", **same)  # type: ignore[arg-type]


def test_pkcs12_truststore_holds_trusted_entries_only(root_ca: CertificateAuthority) -> None:
    data = to_pkcs12_truststore([root_ca.certificate], b"changeit")
    loaded = pkcs12.load_pkcs12(data, b"changeit")
    assert (loaded.key, loaded.cert) == (None, None)
    assert [(c.certificate, c.friendly_name) for c in loaded.additional_certs] == [
        (root_ca.certificate, b"ca")
    ]
    assert pkcs12_holds(data, b"changeit", others=[root_ca.certificate])
    assert not pkcs12_holds(data, b"changeit", others=[])
    with pytest.raises(InvalidRequest, match="needs a non-empty password"):
        to_pkcs12_truststore([root_ca.certificate], b"")


def _tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def _children(der: bytes) -> list[bytes]:
    """The TLVs inside the constructed element ``der`` (DER, definite lengths)."""

    def read(data: bytes, at: int) -> tuple[bytes, int]:
        length, start = data[at + 1], at + 2
        if length & 0x80:
            count = length & 0x7F
            length, start = int.from_bytes(data[start : start + count], "big"), start + count
        return data[at : start + length], start + length

    whole, _ = read(der, 0)
    body = whole[2 + (whole[1] & 0x7F if whole[1] & 0x80 else 0) :]
    out, at = [], 0
    while at < len(body):
        tlv, at = read(body, at)
        out.append(tlv)
    return out


def test_a_keystore_asking_for_billions_of_mac_iterations_is_not_held_nor_computed(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    # Planted in a Secret by whoever may edit it: OpenSSL would run the 2**31 iterations
    # before saying the MAC is wrong, and every delivery behind this one would wait.
    import time

    cert, key = leaf
    version, auth_safe, mac_data = _children(to_pkcs12("es", key, cert, [], b"changeit"))
    digest_info, salt, _iterations = _children(mac_data)
    bomb_mac = _tlv(0x30, digest_info + salt + _tlv(0x02, (2**31 - 1).to_bytes(4, "big")))
    bomb = _tlv(0x30, version + auth_safe + bomb_mac)
    started = time.monotonic()
    assert not pkcs12_holds(bomb, b"changeit", name="es", key=key, certificate=cert)
    assert time.monotonic() - started < 1


def test_a_keystore_made_with_more_pbkdf2_iterations_than_certctl_writes_is_not_held(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    # Its MAC verifies (made with the password) and it holds exactly the entries wanted, but
    # OpenSSL would derive each of its keys with as many iterations as it asks: made anew.
    from cryptography.hazmat.primitives import hashes

    cert, key = leaf
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(200_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(b"changeit")
    )
    slow = pkcs12.serialize_key_and_certificates(b"es", key, cert, None, encryption)
    assert pkcs12.load_pkcs12(slow, b"changeit").cert is not None  # a sound file
    assert not pkcs12_holds(slow, b"changeit", name="es", key=key, certificate=cert)
    # What certctl writes stays held, with a chain and trusted entries too.
    made = to_pkcs12("es", key, cert, [cert], b"changeit", trusted=[cert])
    assert pkcs12_holds(made, b"changeit", name="es", key=key, certificate=cert, others=[cert] * 2)


def _content(tlv: bytes) -> bytes:
    return tlv[2 + (tlv[1] & 0x7F if tlv[1] & 0x80 else 0) :]


def _with_key_bag_iterations(pfx: bytes, iterations: int) -> bytes:
    """``pfx`` with the PBKDF2 count of its shrouded key bag replaced (the MAC left stale)."""
    id_data, shrouded_key_bag = (
        bytes.fromhex("06092a864886f70d010701"),
        bytes.fromhex("060b2a864886f70d010c0a0102"),
    )

    def bag(tlv: bytes) -> bytes:
        bag_id, value, *attributes = _children(tlv)
        if bag_id != shrouded_key_bag:
            return tlv
        ((algorithm, encrypted),) = [_children(epki) for epki in _children(value)]
        pbes2, (kdf, scheme) = _children(algorithm)[0], _children(_children(algorithm)[1])
        pbkdf2, params = _children(kdf)
        salt, _count, *rest = _children(params)
        count = _tlv(0x02, iterations.to_bytes((iterations.bit_length() + 8) // 8, "big"))
        kdf = _tlv(0x30, pbkdf2 + _tlv(0x30, salt + count + b"".join(rest)))
        algorithm = _tlv(0x30, pbes2 + _tlv(0x30, kdf + scheme))
        epki = _tlv(0x30, algorithm + encrypted)
        return _tlv(0x30, bag_id + _tlv(0xA0, epki) + b"".join(attributes))

    def info(tlv: bytes) -> bytes:
        content_type, explicit = _children(tlv)
        if content_type != id_data:
            return tlv
        (octets,) = _children(explicit)
        bags = b"".join(bag(b) for b in _children(_content(octets)))
        return _tlv(0x30, content_type + _tlv(0xA0, _tlv(0x04, _tlv(0x30, bags))))

    version, auth_safe, mac_data = _children(pfx)
    content_type, explicit = _children(auth_safe)
    (octets,) = _children(explicit)
    infos = b"".join(info(i) for i in _children(_content(octets)))
    auth_safe = _tlv(0x30, content_type + _tlv(0xA0, _tlv(0x04, _tlv(0x30, infos))))
    return _tlv(0x30, version + auth_safe + mac_data)


def test_a_keystore_asking_for_billions_of_key_iterations_is_not_held_nor_computed(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], root_ca: CertificateAuthority
) -> None:
    # Whoever may edit the Secret and read its password can give the key bag 2**31 PBKDF2
    # iterations under a MAC that verifies: OpenSSL would run them all while every delivery
    # behind this one waited. (merge_authenticated_safes MACs the bomb anew: the trust
    # store's contents, then the bomb's, as a forger with the password would.)
    import time

    from certctl.pki._pkcs12 import merge_authenticated_safes

    cert, key = leaf
    bomb = _with_key_bag_iterations(to_pkcs12("es", key, cert, [], b"changeit"), 2**31 - 1)
    planted = merge_authenticated_safes(
        to_pkcs12_truststore([root_ca.certificate], b"changeit"), bomb, b"changeit"
    )
    started = time.monotonic()
    assert not pkcs12_holds(
        planted, b"changeit", name="es", key=key, certificate=cert, others=[root_ca.certificate]
    )
    assert time.monotonic() - started < 1


def _no_password_pkcs12(leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> bytes:
    cert, key = leaf
    return pkcs12.serialize_key_and_certificates(
        b"leaf", key, cert, None, serialization.NoEncryption()
    )


@pytest.mark.parametrize("password", [None, b"changeit"])
def test_a_truncated_pkcs12_file_is_called_unreadable_not_password_protected(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], password: bytes | None
) -> None:
    # Before: "PKCS#12 file is password-protected: give --password-file" (or "wrong
    # password") for a file cut short, which no password opens.
    for data in (_no_password_pkcs12(leaf), to_pkcs12("leaf", leaf[1], leaf[0], [], b"x")):
        with pytest.raises(InvalidRequest) as raised:
            load_material(data[: len(data) // 2], password)
        assert raised.value.detail == "not a readable PKCS#12 file: truncated or corrupted"
        assert not isinstance(raised.value, PasswordRequired | WrongPassword)


def test_a_pkcs12_file_whose_integrity_check_passes_but_contents_do_not_load(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    # Its MAC verifies without a password (so a password is not what it lacks), but what it
    # protects is no list of bags: built as a tool writing a broken file would, MAC and all.
    from certctl.pki._pkcs12 import _element, _mac_key, _read, _split

    _, _, algorithm, mac_data = _split(_no_password_pkcs12(leaf))
    _, salt_offset = _read(mac_data, 0, 0x30)  # the DigestInfo; the salt and count follow
    contents = _element(0x30, _element(0x02, b"\x05"))  # a SEQUENCE of one INTEGER
    mac_key, hash_name = _mac_key(b"", mac_data, algorithm)
    mac = hmac.new(mac_key, contents, hash_name).digest()
    new_mac_data = _element(
        0x30,
        _element(0x30, _element(0x30, algorithm) + _element(0x04, mac)) + mac_data[salt_offset:],
    )
    id_data = bytes.fromhex("06092a864886f70d010701")
    auth_safe = _element(0x30, id_data + _element(0xA0, _element(0x04, contents)))
    data = _element(0x30, _element(0x02, b"\x03") + auth_safe + new_mac_data)
    with pytest.raises(InvalidRequest) as raised:
        load_material(data)
    assert raised.value.detail == (
        "not a readable PKCS#12 file: its integrity check passes, but its contents do not load "
        "(corrupted, or encrypted with an algorithm this OpenSSL lacks)"
    )
    assert not isinstance(raised.value, PasswordRequired | WrongPassword)


def test_a_ber_pkcs12_file_is_not_called_corrupted(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    # Indefinite lengths (BER, as NSS pk12util writes): OpenSSL reads them, the MAC check here
    # does not, so such a file is not called damaged for want of its password. cryptography's
    # warning on its BER fallback is not let through: on stderr it broke the one-line output.
    from certctl.pki._pkcs12 import _read

    body, _ = _read(to_pkcs12("leaf", leaf[1], leaf[0], [], b"changeit"), 0, 0x30)
    ber = b"\x30\x80" + body + b"\x00\x00"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_material(ber, b"changeit").private_key is not None
    assert [str(w.message) for w in caught] == []
    with pytest.raises(PasswordRequired):
        load_material(ber)


def test_a_damaged_pkcs12_file_that_could_be_password_protected_says_both(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    # A byte changed inside: the MAC fails without a password as it does for a file that has
    # one, so the message covers both (and is a PasswordRequired: the server gives its advice).
    data = bytearray(_no_password_pkcs12(leaf))
    data[200] ^= 0xFF
    with pytest.raises(PasswordRequired) as raised:
        load_material(bytes(data))
    assert (
        raised.value.detail
        == "PKCS#12 file is password-protected (or damaged): give --password-file"
    )
    assert raised.value.pkcs12


@pytest.mark.parametrize(
    ("password", "message"),
    [
        (None, "PKCS#12 file is password-protected (or damaged): give --password-file"),
        (b"wrong", "cannot open PKCS#12 file: wrong password or corrupted file"),
    ],
)
def test_pkcs12_password_refusals(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    password: bytes | None,
    message: str,
) -> None:
    cert, key = leaf
    data = to_pkcs12("leaf", key, cert, [], b"changeit")
    with pytest.raises(InvalidRequest, match=re.escape(message)) as raised:
        load_material(data, password)
    assert isinstance(raised.value, WrongPassword) == (password is not None)
    assert isinstance(raised.value, PasswordRequired) == (password is None)
    if isinstance(raised.value, PasswordRequired):
        assert raised.value.pkcs12


def test_pkcs12_corrupted(leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    cert, key = leaf
    data = to_pkcs12("leaf", key, cert, [], b"changeit")
    # Cut short: no password opens it, so none is blamed.
    with pytest.raises(InvalidRequest, match="not a readable PKCS#12 file: truncated"):
        load_material(data[:-20], b"changeit")


def test_pkcs12_needs_password(leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    cert, key = leaf
    with pytest.raises(InvalidRequest, match="a PKCS#12 file needs a non-empty password"):
        to_pkcs12("leaf", key, cert, [], b"")


def test_pkcs12_refuses_key_agreement_key(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    cert, _ = leaf
    with pytest.raises(InvalidRequest, match="X25519PrivateKey: key type cannot be stored"):
        to_pkcs12("x", x25519.X25519PrivateKey.generate(), cert, [], b"pw")  # type: ignore[arg-type]


# --- round trip property -----------------------------------------------------------------


@FAST
@given(order=st.permutations([0, 1, 2]), crlf=st.booleans(), junk=st.binary(max_size=40))
@example(order=[2, 1, 0], crlf=True, junk=b"")
def test_pem_round_trip(
    root_ca: CertificateAuthority,
    intermediate_ca: CertificateAuthority,
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    order: list[int],
    crlf: bool,
    junk: bytes,
) -> None:
    pool = [root_ca.certificate, intermediate_ca.certificate, leaf[0]]
    certs = [pool[i] for i in order]
    pem = certs_to_pem(certs)
    if crlf:
        pem = pem.replace(b"\n", b"\r\n")
    # Text around the blocks (openssl x509 -text output, comments) is ignored.
    junk = junk.replace(b"-", b"")
    assert load_material(junk + b"\n" + pem + junk).certificates == certs


def test_serial_search_finds_both_stored_forms() -> None:
    from certctl.services.certificates import _serial_forms

    # Rows written before serials were kept in whole octets lack the leading zero.
    assert _serial_forms("0DD0:CF") == ["0dd0cf", "dd0cf"]
    assert _serial_forms("dd0cf") == ["0dd0cf", "dd0cf"]
    assert _serial_forms("0x0a0b") == ["0a0b", "a0b"]
    assert _serial_forms("00") == ["0", "00"]


def _with_repeated_extension(cert: x509.Certificate) -> bytes:
    """``cert`` as DER with its authorityKeyIdentifier's OID made subjectKeyIdentifier's."""
    der = cert.public_bytes(serialization.Encoding.DER)
    aki, ski = bytes.fromhex("0603551d23"), bytes.fromhex("0603551d0e")
    assert der.count(aki) == 1
    return der.replace(aki, ski)


def test_repeated_extension_refused_on_load(
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    # cryptography parses extensions on first use: such a file loaded, then raised
    # DuplicateExtension in inspect, verify or issuance as an internal error.
    der = _with_repeated_extension(leaf[0])
    pem = (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    )
    for data in (der, pem):
        with pytest.raises(InvalidRequest) as caught:
            load_material(data)
        assert caught.value.detail == (
            "certificate CN=leaf.example has malformed extensions "
            "(Duplicate 2.5.29.14 extension found)"
        )


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"secret", b"secret"), (b"secret\n", b"secret"), (b"secret\r\n", b"secret"), (b"\n", b"")],
)
def test_password_file_line_drops_the_trailing_newline(data: bytes, expected: bytes) -> None:
    from certctl.pki.formats import password_file_line

    assert password_file_line(data, "pw: password file") == expected


@pytest.mark.parametrize("data", [b"first\nsecond", b"first\nsecond\n", b"first\r\nsecond\r\n"])
def test_password_file_line_refuses_more_lines_without_naming_them(data: bytes) -> None:
    from certctl.pki.formats import password_file_line

    with pytest.raises(InvalidRequest) as caught:
        password_file_line(data, "pw: password file")
    assert caught.value.detail == (
        "pw: password file holds more than one line (openssl and keytool read only the "
        "first); put the password on one line"
    )


def test_begin_lines_without_their_end_are_read_in_one_pass(root_ca: CertificateAuthority) -> None:
    # The pattern from BEGIN to its END read the rest of the input again for each BEGIN line
    # lacking one: 200 KB of them (an issuer import's certificate_pem) took 5 s of CPU, 400
    # KB four times that. Bounded far above the linear time (milliseconds), far below that.
    import time

    begins = b"-----BEGIN CERTIFICATE-----\n" * (400_000 // 28)
    started = time.process_time()
    with pytest.raises(InvalidRequest, match="no complete BEGIN/END block"):
        load_material(begins)
    assert time.process_time() - started < 2
    # A block cut short after complete ones is skipped, as before (text between blocks is).
    ca = root_ca.certificate.public_bytes(PEM)
    cut = b"-----BEGIN CERTIFICATE-----\nMIIB\n"
    assert load_material(ca + ca + cut).certificates == [root_ca.certificate] * 2
