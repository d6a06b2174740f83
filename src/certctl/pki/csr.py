"""Certificate signing requests: create, load with signature check, sign under a profile."""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtensionOID

from certctl.errors import BadSignature, InvalidRequest
from certctl.pki.issue import CertificateAuthority, IssuedCertificate
from certctl.pki.keys import check_public_key, signature_hash_for
from certctl.pki.names import SubjectAltNames, _check_name
from certctl.pki.profiles import Profile

__all__ = ["create_csr", "csr_sans", "load_csr", "sign_csr"]


def create_csr(
    private_key: CertificateIssuerPrivateKeyTypes,
    subject: x509.Name,
    sans: SubjectAltNames | None = None,
) -> x509.CertificateSigningRequest:
    """Build and sign a CSR for ``private_key`` asking for ``subject`` and ``sans``."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(sans.to_extension(), critical=not subject)
    return builder.sign(private_key, signature_hash_for(private_key))


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Load a PEM or DER CSR and verify its self-signature.

    Raises:
        InvalidRequest: the data is not a CSR.
        BadSignature: the CSR's signature does not verify (tampered or corrupted).
        WeakKey: the CSR's key is below policy.
    """
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise InvalidRequest("not a valid PEM or DER certificate signing request") from exc
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm, x509.UnsupportedGeneralNameType) as exc:
        # UnsupportedAlgorithm: a curve cryptography does not know (atheris finding).
        raise InvalidRequest("CSR holds an unreadable or unsupported public key") from exc
    check_public_key(public_key)
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # cryptography raises several types for broken signatures
        raise BadSignature("CSR signature is malformed") from exc
    if not valid:
        raise BadSignature("CSR signature does not verify: the request was altered or corrupted")
    return csr


def csr_sans(csr: x509.CertificateSigningRequest) -> SubjectAltNames:
    """Return the CSR's requested SANs, re-validated."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return SubjectAltNames()
    except ValueError as exc:
        raise InvalidRequest(f"CSR has malformed extensions: {exc}") from exc
    raw = SubjectAltNames.from_extension(ext.value)
    return SubjectAltNames.parse(
        dns=raw.dns, ip=[str(a) for a in raw.ip], email=raw.email, uri=raw.uri
    )


def sign_csr(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    *,
    profile: Profile,
    validity: timedelta,
    now: datetime,
    verified: bool = False,
) -> IssuedCertificate:
    """Issue a certificate for a verified CSR; only its subject and SANs carry over.

    Every other requested extension (basicConstraints CA:TRUE, keyCertSign, EKUs …)
    is dropped: the profile decides. Dropped requests are reported as a warning.
    ``verified=True`` skips the signature check for a CSR that ``load_csr`` returned (it
    verified it; a second ECDSA verification costs ~0.1 ms per issuance).

    Raises:
        BadSignature: the CSR's signature does not verify.
        WeakKey: the CSR's key is below policy.
        InvalidRequest: the subject or SANs are invalid.
    """
    if not verified and not csr.is_signature_valid:
        raise BadSignature("CSR signature does not verify: the request was altered or corrupted")
    subject = csr.subject
    _check_name(subject)
    sans = csr_sans(csr) if profile.allows_sans else SubjectAltNames()
    ignored = sorted(
        ext.oid._name
        for ext in csr.extensions
        if ext.oid != ExtensionOID.SUBJECT_ALTERNATIVE_NAME or not profile.allows_sans
    )
    issued = ca.issue(
        csr.public_key(),
        subject,
        profile=profile,
        validity=validity,
        now=now,
        sans=sans,
    )
    if ignored:
        note = f"CSR extensions ignored, the {profile.name} profile decides: {', '.join(ignored)}"
        return IssuedCertificate(issued.certificate, (*issued.warnings, note), issued.sans)
    return issued
