"""OCSP (RFC 6960, RFC 5019 profile): read a request, sign the issuing CA's own answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from certctl.pki.issue import BACKDATE, CertificateAuthority
from certctl.pki.template import public_key_bits, spki_of

__all__ = [
    "OcspQuestion",
    "is_asked_of",
    "read_request",
    "refusal",
    "sign_response",
]


@dataclass(frozen=True)
class OcspQuestion:
    """The one certificate an OCSP request asks about (its CertID, RFC 6960 4.1.1)."""

    serial_number: int
    algorithm: hashes.HashAlgorithm
    issuer_name_hash: bytes
    issuer_key_hash: bytes


def read_request(der: bytes) -> OcspQuestion | None:
    """The question of a DER OCSPRequest; None when it is none certctl can answer.

    None for what is no OCSPRequest, one asking about more than one certificate (cryptography
    refuses those; RFC 5019 2.1.1 lets a responder answer only one), one whose CertID hash
    algorithm is unknown or one whose serial is negative (no certificate's, RFC 5280 4.1.2.2,
    and no response can echo it: cryptography refuses to sign it): all ``malformedRequest``.
    Extensions (a nonce) and a signature are ignored: RFC 5019 responses carry no nonce, so
    that they may be reused (see ``services.ocsp``).
    """
    try:
        request = ocsp.load_der_ocsp_request(der)
        if request.serial_number < 0:
            return None
        return OcspQuestion(
            request.serial_number,
            request.hash_algorithm,
            request.issuer_name_hash,
            request.issuer_key_hash,
        )
    except (ValueError, UnsupportedAlgorithm, NotImplementedError):
        # NotImplementedError: cryptography's refusal of more than one Request.
        return None


def is_asked_of(certificate: x509.Certificate, question: OcspQuestion) -> bool:
    """Whether ``question`` names ``certificate`` as the issuer, by its name and key hashes.

    Hashed with the request's own algorithm (SHA-1 for openssl and nginx, SHA-256 for some
    others): RFC 6960 4.1.1 hashes the issuer's DER name and its subjectPublicKey bits.
    """
    name = hashes.Hash(question.algorithm)
    name.update(certificate.subject.public_bytes())
    key = hashes.Hash(question.algorithm)
    key.update(public_key_bits(spki_of(certificate.public_key())))
    return (name.finalize(), key.finalize()) == (
        question.issuer_name_hash,
        question.issuer_key_hash,
    )


def sign_response(
    ca: CertificateAuthority,
    question: OcspQuestion,
    *,
    now: datetime,
    validity: timedelta,
    revoked_at: datetime | None = None,
    reason: x509.ReasonFlags | None = None,
    known: bool = True,
) -> bytes:
    """A successful BasicOCSPResponse (DER) about ``question``, signed by ``ca`` itself.

    ``good`` unless ``revoked_at`` (``revoked``, with ``reason`` unless None or unspecified,
    as the CRL says it) or not ``known`` (``unknown``). No delegated responder: the CA's own
    key signs and the responderID is its key hash (RFC 6960 4.2.2.3). The CA's certificate
    rides along in ``certs`` (as ``openssl ocsp``'s responder and EJBCA send the signer's):
    OpenSSL finds the signer only there or among the certificates the caller passes, and
    nginx stapling passes the chain it serves, which stops below a root; a leaf issued by a
    root (the default issuer's) was never stapled ("signer certificate not found").
    thisUpdate ``BACKDATE`` before ``now`` (as certificates and CRLs are: OpenSSL and nginx
    refuse a thisUpdate ahead of their clock, and a client or a replica a minute off is
    common), but not before a revocation it reports; nextUpdate ``validity`` after ``now``
    (after thisUpdate when that revocation's time is later than ``now``) clipped to the CA's
    notAfter. The CertID echoes the request's.
    """
    now = now.replace(microsecond=0)  # GeneralizedTime without fractions (RFC 5280 4.1.2.5.2)
    this_update = now - BACKDATE
    if not known:
        status = ocsp.OCSPCertStatus.UNKNOWN
    elif revoked_at is not None:
        status = ocsp.OCSPCertStatus.REVOKED
    else:
        status = ocsp.OCSPCertStatus.GOOD
    revoked = status is ocsp.OCSPCertStatus.REVOKED
    if revoked and revoked_at is not None:
        # "Revoked at T" in a response that says it was true at thisUpdate < T reads wrong.
        this_update = max(this_update, revoked_at.replace(microsecond=0))
    # From thisUpdate when a revocation stamped by a replica whose clock runs ahead pushed it
    # past now: now + validity was before it once the skew passed validity (RFC 6960
    # 4.2.2.1; OpenSSL: "nextupdate before thisupdate") and expired for a client on the
    # revoking replica's time. A revocation is final: a longer-lived answer hides nothing.
    next_update = min(max(now, this_update) + validity, ca.certificate.not_valid_after_utc)
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        question.issuer_name_hash,
        question.issuer_key_hash,
        question.serial_number,
        question.algorithm,
        status,
        this_update,
        next_update,
        revoked_at.replace(microsecond=0) if revoked_at is not None and revoked else None,
        reason if revoked and reason is not x509.ReasonFlags.unspecified else None,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, ca.certificate)
    builder = builder.certificates([ca.certificate])
    return builder.sign(ca.private_key, ca.signature_hash).public_bytes(Encoding.DER)


def refusal(status: ocsp.OCSPResponseStatus) -> bytes:
    """An unsuccessful OCSPResponse (DER): only its status, unsigned (RFC 6960 4.2.1)."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(Encoding.DER)
