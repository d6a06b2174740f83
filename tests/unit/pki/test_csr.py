"""CSRs: create, load with signature check, sign under a profile."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certctl.errors import BadSignature, InvalidRequest, WeakKey
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    IssuedCertificate,
    SubjectAltNames,
    common_name_dn,
    create_csr,
    csr_sans,
    load_csr,
    load_csr_with_key,
    sign_csr,
)

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def _sign(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    now: datetime,
    profile: str = "server",
) -> IssuedCertificate:
    return sign_csr(ca, csr, profile=PROFILES[profile], validity=timedelta(days=90), now=now)


def _greedy_csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    """A CSR asking for far more than a leaf may have."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(common_name_dn("evil.example"))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [
                    ExtendedKeyUsageOID.CODE_SIGNING,
                    ExtendedKeyUsageOID.SERVER_AUTH,
                    ExtendedKeyUsageOID.OCSP_SIGNING,
                ]
            ),
            critical=False,
        )
        .add_extension(
            SubjectAltNames.parse(dns=["evil.example"], ip=["10.1.2.3"]).to_extension(),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def test_create_and_load_round_trip(ec_key: ec.EllipticCurvePrivateKey) -> None:
    sans = SubjectAltNames.parse(dns=["a.example"], ip=["10.0.0.1"])
    csr = create_csr(ec_key, common_name_dn("a.example"), sans)
    for encoding in (PEM, DER):
        loaded = load_csr(csr.public_bytes(encoding))
        assert loaded.subject == common_name_dn("a.example")
        assert loaded.is_signature_valid
        assert csr_sans(loaded) == sans
        ext = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert not ext.critical


def test_create_without_subject_makes_san_critical(ec_key: ec.EllipticCurvePrivateKey) -> None:
    csr = create_csr(ec_key, x509.Name([]), SubjectAltNames.parse(dns=["a.example"]))
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_create_without_sans(ec_key: ec.EllipticCurvePrivateKey) -> None:
    csr = create_csr(ec_key, common_name_dn("x"))
    assert len(csr.extensions) == 0
    assert csr_sans(csr) == SubjectAltNames()


def test_ed25519_csr() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = load_csr(create_csr(key, common_name_dn("ed")).public_bytes(PEM))
    assert csr.signature_hash_algorithm is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"\x30\x03\x02\x01\x00",
    ],
)
def test_load_refuses_non_csr(data: bytes) -> None:
    with pytest.raises(InvalidRequest, match="not a valid PEM or DER certificate signing request"):
        load_csr(data)


@pytest.mark.parametrize("label", ["CERTIFICATE", "PRIVATE KEY", "X509 CRL"])
def test_load_names_another_pem_block(label: str) -> None:
    data = f"-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n".encode()
    with pytest.raises(InvalidRequest) as raised:
        load_csr(data)
    assert raised.value.detail == (
        f"not a certificate signing request: a PEM {label} block (a CSR is a CERTIFICATE REQUEST)"
    )


@pytest.mark.parametrize(
    "begin",
    [
        b"-----BEGIN PRIVATE KEY\n",  # its closing dashes lost in a copy and paste
        b"-----BEGIN \x1b[31mPRIVATE KEY-----\n",  # a terminal escape sequence
        b"-----BEGIN " + b"A" * 200 + b"-----\n",
    ],
)
def test_load_names_no_block_label_but_a_real_one(
    begin: bytes, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    # The "label" was whatever lay up to the next "-----": a BEGIN line missing its dashes
    # put the private key's base64 in the error, on the terminal and in the API's answer.
    body = ec_key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    lines = body.splitlines(keepends=True)
    data = begin + b"".join(lines[1:])
    with pytest.raises(InvalidRequest) as raised:
        load_csr(data)
    assert raised.value.detail == "not a valid PEM or DER certificate signing request"
    assert lines[1].strip().decode() not in raised.value.detail


def test_load_refuses_truncated_pem(ec_key: ec.EllipticCurvePrivateKey) -> None:
    pem = create_csr(ec_key, common_name_dn("x")).public_bytes(PEM)
    with pytest.raises(InvalidRequest, match="not a valid PEM or DER certificate signing request"):
        load_csr(pem[: len(pem) // 2])


def _tamper(csr: x509.CertificateSigningRequest, old: bytes, new: bytes) -> bytes:
    der = csr.public_bytes(DER)
    assert der.count(old) == 1
    return der.replace(old, new)


def test_tampered_subject_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    csr = create_csr(ec_key, common_name_dn("good.example"))
    tampered = _tamper(csr, b"good.example", b"evil.example")
    with pytest.raises(BadSignature, match="signature") as info:
        load_csr(tampered)
    assert "signature does not verify" in info.value.detail


def test_tampered_signature_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    csr = create_csr(ec_key, common_name_dn("good.example"))
    # Flip one bit in the last byte of the ECDSA signature's s value.
    der = bytearray(csr.public_bytes(DER))
    der[-1] ^= 0x01
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(PEM)
    with pytest.raises(BadSignature, match="signature"):
        load_csr(pem)


def test_tampered_csr_refused_by_sign(
    ec_key: ec.EllipticCurvePrivateKey, root_ca: CertificateAuthority, now: datetime
) -> None:
    csr = create_csr(ec_key, common_name_dn("good.example"))
    tampered = x509.load_der_x509_csr(_tamper(csr, b"good.example", b"evil.example"))
    with pytest.raises(BadSignature, match="CSR signature does not verify"):
        _sign(root_ca, tampered, now)


def test_weak_rsa_csr_refused(
    rsa1024_key: rsa.RSAPrivateKey, root_ca: CertificateAuthority, now: datetime
) -> None:
    csr = create_csr(rsa1024_key, common_name_dn("weak.example"))
    with pytest.raises(WeakKey, match="2048") as info:
        load_csr(csr.public_bytes(PEM))
    assert info.value.detail == "rsa-1024: RSA keys must have at least 2048 bits"
    with pytest.raises(WeakKey, match="2048"):
        _sign(root_ca, csr, now)


def test_weak_curve_csr_refused() -> None:
    key = ec.generate_private_key(ec.SECP521R1())
    csr = create_csr(key, common_name_dn("p521"))
    with pytest.raises(WeakKey, match="ec-secp521r1: only P-256 and P-384 curves are allowed"):
        load_csr(csr.public_bytes(PEM))


def test_greedy_csr_gets_only_profile_extensions(
    ec_key: ec.EllipticCurvePrivateKey, root_ca: CertificateAuthority, now: datetime
) -> None:
    csr = load_csr(_greedy_csr(ec_key).public_bytes(PEM))
    issued = _sign(root_ca, csr, now)
    cert = issued.certificate
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku == PROFILES["server"].key_usage(ec_key.public_key())
    assert not ku.key_cert_sign
    assert not ku.content_commitment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert issued.warnings == (
        "CSR extensions ignored, the server profile decides: "
        "basicConstraints, extendedKeyUsage, keyUsage",
    )
    # Only subject and SANs carry over.
    assert cert.subject == csr.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert SubjectAltNames.from_extension(san) == SubjectAltNames.parse(
        dns=["evil.example"], ip=["10.1.2.3"]
    )
    assert {e.oid._name for e in cert.extensions} == {
        "basicConstraints",
        "keyUsage",
        "extendedKeyUsage",
        "subjectKeyIdentifier",
        "authorityKeyIdentifier",
        "subjectAltName",
    }


def test_client_profile_overrides_requested_ekus(
    ec_key: ec.EllipticCurvePrivateKey, root_ca: CertificateAuthority, now: datetime
) -> None:
    issued = _sign(root_ca, _greedy_csr(ec_key), now, profile="client")
    eku = issued.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_plain_csr_signs_without_warning(
    ec_key: ec.EllipticCurvePrivateKey, root_ca: CertificateAuthority, now: datetime
) -> None:
    sans = SubjectAltNames.parse(dns=["ok.example"])
    issued = _sign(root_ca, create_csr(ec_key, common_name_dn("ok.example"), sans), now)
    assert issued.warnings == ()
    issued.certificate.verify_directly_issued_by(root_ca.certificate)
    assert issued.certificate.public_key() == ec_key.public_key()


def test_sign_with_the_key_load_returned(
    ec_key: ec.EllipticCurvePrivateKey, root_ca: CertificateAuthority, now: datetime
) -> None:
    """The API path: the key ``load_csr_with_key`` loaded goes in; the result is the same."""
    sans = SubjectAltNames.parse(dns=["a.example", "b.example"])
    pem = create_csr(ec_key, common_name_dn("a.example"), sans).public_bytes(PEM)
    csr, key = load_csr_with_key(pem)
    assert key == ec_key.public_key()
    issued = sign_csr(
        root_ca,
        csr,
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=now,
        verified=True,
        public_key=key,
    )
    cert = issued.certificate
    assert cert.public_key() == ec_key.public_key()
    assert issued.subject == cert.subject == common_name_dn("a.example")
    assert issued.sans == sans
    assert (
        SubjectAltNames.from_extension(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
        == sans
    )
    cert.verify_directly_issued_by(root_ca.certificate)


def test_intermediate_profile_drops_csr_sans(
    ec_key: ec.EllipticCurvePrivateKey, root_ca: CertificateAuthority, now: datetime
) -> None:
    csr = create_csr(ec_key, common_name_dn("Sub CA"), SubjectAltNames.parse(dns=["ca.example"]))
    issued = sign_csr(
        root_ca, csr, profile=PROFILES["intermediate"], validity=timedelta(days=365), now=now
    )
    cert = issued.certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert issued.warnings == (
        "CSR extensions ignored, the intermediate profile decides: subjectAltName",
    )


def test_csr_with_invalid_san_refused(
    ec_key: ec.EllipticCurvePrivateKey, root_ca: CertificateAuthority, now: datetime
) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(common_name_dn("x"))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("-bad-.example")]), critical=False)
        .sign(ec_key, hashes.SHA256())
    )
    with pytest.raises(InvalidRequest, match=re.escape("-bad-.example: invalid DNS name")):
        _sign(root_ca, csr, now)


def test_csr_with_overlong_subject_refused(
    ec_key: ec.EllipticCurvePrivateKey, root_ca: CertificateAuthority, now: datetime
) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.LOCALITY_NAME, "l" * 129)]))
        .sign(ec_key, hashes.SHA256())
    )
    with pytest.raises(InvalidRequest, match="L is longer than 128 characters"):
        _sign(root_ca, csr, now)


def _rsa_pss_csr(key: rsa.RSAPrivateKey) -> x509.CertificateSigningRequest:
    from cryptography.hazmat.primitives.asymmetric import padding

    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(common_name_dn("pss.example"))
        .sign(key, hashes.SHA256(), rsa_padding=pss)
    )


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa", "rsa-pss", "ed25519", "ed448"])
@pytest.mark.parametrize("tampered", [False, True])
def test_signature_check_agrees_with_cryptography(kind: str, tampered: bool) -> None:
    """load_csr verifies with the key it already loaded; the verdict must be cryptography's."""
    from cryptography.hazmat.primitives.asymmetric import ed448

    from certctl.pki.csr import _self_signed

    keys = {
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa-pss": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "ed448": ed448.Ed448PrivateKey.generate,
    }
    key = keys[kind]()
    if kind == "rsa-pss":
        csr = _rsa_pss_csr(key)  # type: ignore[arg-type]
    else:
        csr = create_csr(key, common_name_dn("good.example"))  # type: ignore[arg-type]
    if tampered:
        der = csr.public_bytes(DER)
        name = b"pss.example" if kind == "rsa-pss" else b"good.example"
        csr = x509.load_der_x509_csr(der.replace(name, name[:-1] + b"X"))
    assert _self_signed(csr, csr.public_key()) is csr.is_signature_valid is (not tampered)


def test_signature_algorithm_of_another_key_type_is_refused(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    """An EC key's CSR whose signatureAlgorithm claims RSA (or the reverse) never verifies."""
    from certctl.pki.template import _read, _tlv

    ec_der = create_csr(ec_key, common_name_dn("a.example")).public_bytes(DER)
    rsa_der = create_csr(rsa_key, common_name_dn("a.example")).public_bytes(DER)
    ec_alg = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    rsa_alg = bytes.fromhex("300d06092a864886f70d01010b0500")  # sha256WithRSAEncryption
    assert ec_der.count(ec_alg) == 1
    assert rsa_der.count(rsa_alg) == 1
    for der, old, new in ((ec_der, ec_alg, rsa_alg), (rsa_der, rsa_alg, ec_alg)):
        # The outer SEQUENCE's length changes with the algorithm's size: re-encode it.
        _, start, _ = _read(der, 0)
        swapped = _tlv(0x30, der[start:].replace(old, new))
        x509.load_der_x509_csr(swapped)  # still a well-formed CSR
        with pytest.raises(BadSignature):
            load_csr(swapped)
