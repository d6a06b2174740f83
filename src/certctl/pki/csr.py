"""Certificate signing requests: create, load with signature check, sign under a profile."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtensionOID

from certctl.errors import BadSignature, InvalidRequest
from certctl.pki.distinguished_names import check_name
from certctl.pki.formats import check_extensions
from certctl.pki.issue import CertificateAuthority, IssuedCertificate, NameHint
from certctl.pki.keys import check_public_key, signature_hash_for, signature_verifies
from certctl.pki.profiles import Profile
from certctl.pki.subject_alt_names import SubjectAltNames

__all__ = ["create_csr", "csr_sans", "load_csr", "load_csr_with_key", "sign_csr"]


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
    return load_csr_with_key(data)[0]


# A label as the PEM types OpenSSL writes spell them, on the BEGIN line itself: up to the
# next "-----" alone, a BEGIN line missing its dashes put the key's base64 in the error.
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9]+(?: [A-Z0-9]+){0,4})-----")


def _first_pem_label(data: bytes) -> str | None:
    """The label of the first PEM block (``CERTIFICATE``, ``PRIVATE KEY`` …), if any."""
    start = data.find(b"-----BEGIN ")
    match = _PEM_LABEL.match(data, start) if start >= 0 else None
    if match is None or len(match.group(1)) > 40:
        return None  # not a label: nothing of it is worth repeating (or safe to)
    return match.group(1).decode("ascii")


def load_csr_with_key(
    data: bytes,
) -> tuple[x509.CertificateSigningRequest, CertificatePublicKeyTypes]:
    """``load_csr``, and the public key it loaded to verify the signature.

    ``csr.public_key()`` parses and checks the key anew on each call (~10 µs for P-256);
    ``sign_csr(public_key=…)`` takes this one instead.

    Raises:
        As ``load_csr``.
    """
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        label = _first_pem_label(data)
        if label is not None and "REQUEST" not in label:
            # tls.crt or tls.key given for tls.csr: say what the file is, not that it is
            # broken.
            raise InvalidRequest(
                f"not a certificate signing request: a PEM {label} block (a CSR is a "
                "CERTIFICATE REQUEST)"
            ) from exc
        raise InvalidRequest("not a valid PEM or DER certificate signing request") from exc
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm, x509.UnsupportedGeneralNameType) as exc:
        # UnsupportedAlgorithm: a curve cryptography does not know (atheris finding).
        raise InvalidRequest("CSR holds an unreadable or unsupported public key") from exc
    check_public_key(public_key)
    check_extensions(csr, "CSR")  # an internal error (HTTP 500) where it was first touched
    try:
        valid = _self_signed(csr, public_key)
    except Exception as exc:  # cryptography raises several types for broken signatures
        raise BadSignature("CSR signature is malformed") from exc
    if not valid:
        raise BadSignature("CSR signature does not verify: the request was altered or corrupted")
    return csr, public_key


def _self_signed(csr: x509.CertificateSigningRequest, public_key: object) -> bool:
    """``csr.is_signature_valid`` with the public key the caller already loaded.

    ``is_signature_valid`` parses the key out of the CSR again and costs ~25 µs more than
    verifying with the loaded one (~105 vs ~80 µs for P-256), a tenth of an API issuance.
    The signature algorithm must belong to the key's type; any other pairing, or a key type
    not listed here, goes to ``is_signature_valid``, which decides as before.
    """
    verified = signature_verifies(
        public_key,
        csr.signature,
        csr.tbs_certrequest_bytes,
        csr.signature_algorithm_parameters,
        csr.signature_hash_algorithm,
        csr.signature_algorithm_oid,
    )
    return csr.is_signature_valid if verified is None else verified


def csr_sans(csr: x509.CertificateSigningRequest) -> SubjectAltNames:
    """Return the CSR's requested SANs, re-validated."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return SubjectAltNames()
    except ValueError as exc:
        raise InvalidRequest(f"CSR has malformed extensions: {exc}") from exc
    return SubjectAltNames.validated(ext.value)


def sign_csr(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    *,
    profile: Profile,
    validity: timedelta,
    now: datetime,
    verified: bool = False,
    public_key: CertificatePublicKeyTypes | None = None,
    max_names: int | None = None,
    crl_urls: Sequence[str] = (),
    ca_issuers_urls: Sequence[str] = (),
    ocsp_urls: Sequence[str] = (),
    subject: x509.Name | None = None,
    spki_der: bytes | None = None,
) -> IssuedCertificate:
    """Issue a certificate for a verified CSR; only its subject and SANs carry over.

    Every other requested extension (basicConstraints CA:TRUE, keyCertSign, EKUs …)
    is dropped: the profile decides. Dropped requests are reported as a warning.
    ``verified=True`` skips the signature check for a CSR that ``load_csr`` returned (it
    verified it; a second ECDSA verification costs ~0.1 ms per issuance). ``public_key`` is
    the CSR's key when the caller has it already (``load_csr_with_key``). ``max_names``
    caps the SANs of each type (DNS, IP, email, URI) the CSR may ask for. ``crl_urls``,
    ``ca_issuers_urls``, ``ocsp_urls``: see ``CertificateAuthority.issue``. ``subject``
    replaces the CSR's (ACME keeps only what the account proved). ``spki_der``: that key's
    SubjectPublicKeyInfo DER, if the caller has it (see ``CertificateAuthority.issue``).

    Raises:
        BadSignature: the CSR's signature does not verify.
        WeakKey: the CSR's key is below policy.
        InvalidRequest: the subject or SANs are invalid.
    """
    if not verified and not csr.is_signature_valid:
        raise BadSignature("CSR signature does not verify: the request was altered or corrupted")
    if subject is None:
        subject = csr.subject
    check_name(subject)
    sans = csr_sans(csr) if profile.allows_sans else SubjectAltNames()
    if max_names is not None:
        for kind, values in sans.as_dict().items():
            if len(values) > max_names:
                raise InvalidRequest(
                    f"the CSR asks for {len(values)} {kind} names; at most {max_names} of each type"
                )
    ignored = sorted(
        ext.oid._name
        for ext in csr.extensions
        if ext.oid != ExtensionOID.SUBJECT_ALTERNATIVE_NAME or not profile.allows_sans
    )
    issued = ca.issue(
        csr.public_key() if public_key is None else public_key,
        subject,
        profile=profile,
        validity=validity,
        now=now,
        sans=sans,
        crl_urls=crl_urls,
        ca_issuers_urls=ca_issuers_urls,
        ocsp_urls=ocsp_urls,
        name_hint=_CSR_HINT,
        spki_der=spki_der,
    )
    notes = []
    if ignored:
        notes.append(
            f"CSR extensions ignored, the {profile.name} profile decides: {', '.join(ignored)}"
        )
    dropped = _dropped_sans(csr, sans) if profile.allows_sans else []
    if dropped:
        notes.append(
            "CSR subjectAltName entries left out (certctl issues DNS, IP, e-mail and URI "
            f"names only): {', '.join(dropped)}"
        )
    if notes:
        return replace(issued, warnings=(*issued.warnings, *notes))
    return issued


# The names come from the CSR: its requester adds the missing one there, on either path.
_CSR_HINT = NameHint(
    "add DNS:{name} to the CSR's subjectAltName", "add IP:{name} to the CSR's subjectAltName"
)


def _dropped_sans(csr: x509.CertificateSigningRequest, sans: SubjectAltNames) -> list[str]:
    """The requested names of other types (a Windows UPN otherName, a directoryName …).

    They were left out without a word, so a certificate meant for smart-card logon came
    back without the UPN it was requested for.
    """
    try:
        names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    if len(names) == len(sans.dns) + len(sans.ip) + len(sans.email) + len(sans.uri):
        return []  # every name carried over: the common case costs one comparison
    dropped = []
    for name in names:
        if isinstance(name, x509.OtherName):
            dropped.append(f"otherName {name.type_id.dotted_string}")
        elif isinstance(name, x509.RegisteredID):
            dropped.append(f"registeredID {name.value.dotted_string}")
        elif isinstance(name, x509.DirectoryName):
            dropped.append(f"directoryName {name.value.rfc4514_string()}")
        elif isinstance(name, x509.IPAddress) and not isinstance(
            name.value, ipaddress.IPv4Address | ipaddress.IPv6Address
        ):
            dropped.append(f"IP network {name.value}")
    return dropped
