"""Signing certificates from DER parts encoded once per CA and profile.

``CertificateBuilder.sign`` spends ~110 µs of a ~150 µs leaf issuance turning Python
extension objects into DER again for every certificate; the signature itself is ~25 µs
(P-256). Most of a leaf is the same for every certificate a CA issues under one profile:
the issuer name, the signature algorithm, basicConstraints, keyUsage, extendedKeyUsage and
the authority key identifier. :class:`SigningTemplate` has cryptography encode those parts
once, then assembles each TBSCertificate from them plus the per-certificate serial,
validity, subject, public key, SKI and SANs, and signs it with the CA key.

The result is byte for byte what ``CertificateBuilder`` produces for the same inputs.
:meth:`SigningTemplate.for_ca` proves it for each CA before it is used: it builds a probe
certificate both ways and compares the TBS bytes, and returns ``None`` (callers keep the
builder) on any difference or for a key type it does not know.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = [
    "Extension",
    "SigningTemplate",
    "encode_extension",
    "key_identifier",
    "public_key_bits",
    "spki_of",
    "subject_key_identifier",
]

# One extension as its DER: SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue }.
Extension = bytes

_V3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2
_TRUE = b"\x01\x01\xff"
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_DER = serialization.Encoding.DER
_SKI_OID = b"\x06\x03\x55\x1d\x0e"  # 2.5.29.14


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _length(len(body)) + body


def _read(der: bytes, offset: int) -> tuple[int, int, int]:
    """The element at ``offset``: (tag, start of its contents, end of it)."""
    tag = der[offset]
    first = der[offset + 1]
    if first < 0x80:
        return tag, offset + 2, offset + 2 + first
    count = first & 0x7F
    start = offset + 2 + count
    return tag, start, start + int.from_bytes(der[offset + 2 : start], "big")


def _children(der: bytes, start: int, end: int) -> list[bytes]:
    """The encoded elements (header included) between ``start`` and ``end``."""
    items = []
    while start < end:
        _, _, stop = _read(der, start)
        items.append(der[start:stop])
        start = stop
    return items


def _integer(value: int) -> bytes:
    # Non-negative only (serials are); the extra octet keeps the sign bit clear.
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _time(moment: datetime) -> bytes:
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds.
    # Formatted by hand: strftime costs ~4 µs a call here.
    m = moment
    rest = f"{m.month:02d}{m.day:02d}{m.hour:02d}{m.minute:02d}{m.second:02d}Z"
    if 1950 <= m.year < 2050:
        return b"\x17\x0d" + f"{m.year % 100:02d}{rest}".encode()
    return b"\x18\x0f" + f"{m.year:04d}{rest}".encode()


def _oid(oid: x509.ObjectIdentifier) -> bytes:
    return _oid_der(oid.dotted_string)


@functools.cache
def _oid_der(dotted: str) -> bytes:
    # X.690 8.19: the first two arcs share one subidentifier; base 128, high bit = more.
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def encode_extension(value: x509.ExtensionType, *, critical: bool) -> Extension:
    """``value`` as a DER Extension, the value encoded by cryptography."""
    body = _oid(value.oid) + (_TRUE if critical else b"") + _tlv(0x04, value.public_bytes())
    return _tlv(0x30, body)


def subject_key_identifier(spki_der: bytes) -> Extension:
    """The subjectKeyIdentifier extension for the key in ``spki_der`` (not critical)."""
    return _tlv(0x30, _SKI_OID + _tlv(0x04, _tlv(0x04, key_identifier(spki_der))))


def key_identifier(spki_der: bytes) -> bytes:
    """The key identifier ``SubjectKeyIdentifier.from_public_key`` computes.

    RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING, less its
    unused-bits octet.
    """
    return hashlib.sha1(public_key_bits(spki_der)).digest()


def public_key_bits(spki_der: bytes) -> bytes:
    """The subjectPublicKey BIT STRING's contents, less its unused-bits octet.

    What a key identifier (RFC 5280 4.2.1.2) and an OCSP issuerKeyHash (RFC 6960 4.1.1)
    hash: the key alone, without its algorithm identifier.
    """
    _, start, _ = _read(spki_der, 0)
    _, _, algorithm_end = _read(spki_der, start)
    _, key_start, key_end = _read(spki_der, algorithm_end)
    return spki_der[key_start + 1 : key_end]


class SigningTemplate:
    """Signs TBSCertificates assembled from parts a CA shares across its certificates."""

    def __init__(
        self,
        issuer_der: bytes,
        algorithm_der: bytes,
        private_key: CertificateIssuerPrivateKeyTypes,
        signature_hash: hashes.SHA256 | hashes.SHA384 | None,
    ) -> None:
        self._issuer = issuer_der
        self._algorithm = algorithm_der
        self._signature = _signer(private_key, signature_hash)

    @classmethod
    def for_ca(
        cls,
        certificate: x509.Certificate,
        private_key: CertificateIssuerPrivateKeyTypes,
        signature_hash: hashes.SHA256 | hashes.SHA384 | None,
        authority_key_identifier: x509.AuthorityKeyIdentifier,
    ) -> SigningTemplate | None:
        """A template for this CA, or ``None`` when its output would differ from the builder's.

        Signs a probe certificate with ``CertificateBuilder`` (covering every SAN type, an
        IPv6 address, a multi-valued name and a critical extension), rebuilds its TBS from
        parts and compares the bytes. Costs two signatures, once per CA and process.
        """
        if not isinstance(
            private_key,
            ec.EllipticCurvePrivateKey
            | rsa.RSAPrivateKey
            | ed25519.Ed25519PrivateKey
            | ed448.Ed448PrivateKey,
        ):
            return None
        probe_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.RelativeDistinguishedName(
                    [
                        x509.NameAttribute(x509.NameOID.COMMON_NAME, "probe.invalid"),
                        x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "certctl"),
                    ]
                ),
            ]
        )
        sans = x509.SubjectAlternativeName(
            [
                x509.DNSName("probe.invalid"),
                x509.IPAddress(ipaddress.ip_address("::1")),
                x509.RFC822Name("probe@example.invalid"),
                x509.UniformResourceIdentifier("spiffe://probe.invalid/x"),
            ]
        )
        not_before = datetime(2020, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                True,
            ),
            (x509.SubjectKeyIdentifier.from_public_key(probe_key.public_key()), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (authority_key_identifier, False),
            (sans, True),
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(certificate.subject)
            .public_key(probe_key.public_key())
            .serial_number(0x80 << 150)
            .not_valid_before(not_before)
            .not_valid_after(not_before + timedelta(days=20000))  # GeneralizedTime
        )
        for value, critical in extensions:
            builder = builder.add_extension(value, critical=critical)
        expected = builder.sign(private_key, signature_hash)
        template = cls(
            certificate.subject.public_bytes(),
            _children_of_certificate(expected.public_bytes(_DER))[1],
            private_key,
            signature_hash,
        )
        spki = spki_of(probe_key.public_key())
        parts = [encode_extension(v, critical=c) for v, c in extensions]
        parts[2] = subject_key_identifier(spki)  # the per-certificate path, not the builder's
        made = template.sign(
            subject_der=subject.public_bytes(),
            spki_der=spki,
            serial=0x80 << 150,
            not_before=not_before,
            not_after=not_before + timedelta(days=20000),
            extensions=parts,
        )
        if made.tbs_certificate_bytes != expected.tbs_certificate_bytes:
            return None
        try:
            made.verify_directly_issued_by(certificate)
        except (ValueError, TypeError, InvalidSignature):
            return None
        return template

    def sign(
        self,
        *,
        subject_der: bytes,
        spki_der: bytes,
        serial: int,
        not_before: datetime,
        not_after: datetime,
        extensions: Sequence[Extension],
    ) -> x509.Certificate:
        """Assemble the TBSCertificate, sign it and load the result."""
        tbs = _tlv(
            0x30,
            b"".join(
                (
                    _V3,
                    _integer(serial),
                    self._algorithm,
                    self._issuer,
                    _tlv(0x30, _time(not_before) + _time(not_after)),
                    subject_der,
                    spki_der,
                    _tlv(0xA3, _tlv(0x30, b"".join(extensions))),
                )
            ),
        )
        signature = self._signature(tbs)
        der = _tlv(0x30, tbs + self._algorithm + _tlv(0x03, b"\x00" + signature))
        return x509.load_der_x509_certificate(der)


def _signer(
    key: CertificateIssuerPrivateKeyTypes, signature_hash: hashes.SHA256 | hashes.SHA384 | None
) -> Callable[[bytes], bytes]:
    # Chosen once per CA: the type checks and the padding objects stay off the signing path.
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert signature_hash is not None
        ecdsa = ec.ECDSA(signature_hash)
        return lambda tbs: key.sign(tbs, ecdsa)
    if isinstance(key, rsa.RSAPrivateKey):
        assert signature_hash is not None
        pkcs1 = padding.PKCS1v15()
        return lambda tbs: key.sign(tbs, pkcs1, signature_hash)
    assert isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return key.sign


def _children_of_certificate(der: bytes) -> list[bytes]:
    """tbsCertificate, signatureAlgorithm, signatureValue of a DER certificate."""
    _, start, end = _read(der, 0)
    return _children(der, start, end)


def spki_of(public_key: CertificatePublicKeyTypes) -> bytes:
    """The SubjectPublicKeyInfo DER of ``public_key``."""
    return public_key.public_bytes(_DER, _SPKI)
