"""certctl's own RFC 5280 path check, for what cryptography's web-policy verifier refuses."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from certctl.errors import InvalidRequest
from certctl.pki.chain_links import (
    anchor_name,
    check_window,
    intermediate_name,
    is_ca,
    is_self_signed,
    issued_by,
    window_problem,
)
from certctl.pki.constraints import check_name_constraints, name_constraints_of, subject_emails
from certctl.pki.dn_display import display_dn
from certctl.pki.key_strength import check_path_strength
from certctl.pki.path_breaks import missing_link, path_failure
from certctl.pki.purposes import check_ca_purposes
from certctl.pki.server_names import (
    first_san,
    name_matches,
    not_in_sans,
    parse_hostname,
    subject_for,
)
from certctl.pki.subject_alt_names import SubjectAltNames
from certctl.pki.verdicts import VerificationFailed, VerifiedChain

__all__ = [
    "check_subject_emails",
    "verify_rfc5280",
]


def verify_rfc5280(
    leaf: x509.Certificate,
    trust: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
    hostname: str | None,
    purpose: str,
    now: datetime,
    any_eku_in_cas: bool = True,
) -> VerifiedChain:
    """A minimal RFC 5280 path check: signatures, CA constraints, windows, EKU, name."""
    name = None
    if purpose == "server":
        subject = parse_hostname(hostname) if hostname is not None else None
        if subject is None:
            subject = subject_for(first_san(leaf))
        name = str(subject.value)
        if not name_matches(leaf, subject):
            raise not_in_sans(leaf, name)
    _check_critical_extensions(leaf, "certificate")
    chain = [leaf]
    pool = list(untrusted)
    current = leaf
    for _ in range(8):
        if current in trust and is_self_signed(current):
            check_path_strength(chain)
            return VerifiedChain(tuple(chain), purpose, name)  # trusted as it is
        for anchor in trust:
            if issued_by(current, anchor):
                check_path_strength((*chain, anchor))
                check_window(anchor, now, anchor_name(anchor))
                _check_critical_extensions(anchor, anchor_name(anchor))
                _check_path_lengths((*chain, anchor))
                check_ca_purposes((*chain[1:], anchor), purpose, any_eku_in_cas=any_eku_in_cas)
                _check_name_constraints((*chain, anchor))
                return VerifiedChain((*chain, anchor), purpose, name)
        parents = [c for c in pool if issued_by(current, c) and is_ca(c)]
        # One in its window first, as openssl picks: a renewed intermediate beside the old.
        parents.sort(key=lambda c: window_problem(c, now) is not None)
        parent = parents[0] if parents else None
        if parent is None:
            break
        check_window(parent, now, intermediate_name(parent))
        _check_critical_extensions(parent, intermediate_name(parent))
        pool.remove(parent)
        chain.append(parent)
        current = parent
    raise path_failure(
        missing_link(leaf, trust, untrusted, now), "no path to a trusted certificate"
    )


def _check_path_lengths(chain: Sequence[x509.Certificate]) -> None:
    """Refuse a path (leaf first) with more CAs below one than its pathLenConstraint allows.

    RFC 5280 4.2.1.9 and 6.1.4 (l), (m): self-issued intermediates do not count. openssl
    holds the trust anchor to its constraint too (error 25), and so does this.
    """
    below = 0  # CA certificates between the one looked at and the leaf
    for cert in chain[1:]:  # each passed is_ca: it has basicConstraints
        limit = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        if limit is not None and below > limit:
            raise VerificationFailed(
                f"verification failed: path length constraint exceeded ({below} "
                f"CA{'s' if below > 1 else ''} below {display_dn(cert.subject)}, "
                f"which allows {limit})"
            )
        if cert.issuer != cert.subject:
            below += 1


# The extensions OpenSSL's path validation handles (X509_supported_extension): a critical
# one of any other kind fails it, "unhandled critical extension" (RFC 5280 4.2).
_HANDLED_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.POLICY_CONSTRAINTS,
        ExtensionOID.POLICY_MAPPINGS,
        ExtensionOID.INHIBIT_ANY_POLICY,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.OCSP_NO_CHECK,
        x509.ObjectIdentifier("2.16.840.1.113730.1.1"),  # Netscape cert type
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.7"),  # RFC 3779 IP address blocks
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.8"),  # RFC 3779 AS identifiers
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"),  # proxyCertInfo
    }
)


def _check_critical_extensions(cert: x509.Certificate, what: str) -> None:
    """Refuse a certificate with a critical extension path validation does not handle."""
    unknown = [
        e.oid.dotted_string
        for e in cert.extensions
        if e.critical and e.oid not in _HANDLED_EXTENSIONS
    ]
    if unknown:
        kind = (
            "an unknown critical extension" if len(unknown) == 1 else "unknown critical extensions"
        )
        raise VerificationFailed(
            f"verification failed: {what} has {kind} ({', '.join(unknown)}), which verifiers "
            "must refuse"
        )


def _check_name_constraints(chain: Sequence[x509.Certificate]) -> None:
    """Hold each certificate of a path (leaf first) to the name constraints of the CAs above.

    RFC 5280 6.1.3 (b), (c) and 6.1.4 (g), as OpenSSL checks them: the subject and SANs of
    every certificate below a constrained CA, self-issued intermediates excepted, an
    emailAddress attribute of a subject, and a host-like common name of the leaf when it
    has no DNS SAN.
    """
    for index, ca in enumerate(chain[1:], start=1):
        constraints = name_constraints_of([ca])
        if not constraints:
            continue
        for depth, cert in enumerate(chain[:index]):
            if depth and cert.issuer == cert.subject:
                continue
            sans = SubjectAltNames.of(cert)
            try:
                check_name_constraints(
                    constraints,
                    cert.subject,
                    sans,
                    holder=ca.subject,
                    common_name_as_host=not depth,
                )
            except InvalidRequest as exc:
                raise VerificationFailed(f"verification failed: {exc.detail}") from None


def check_subject_emails(chain: Sequence[x509.Certificate]) -> None:
    """Hold the names of a path cryptography's verifier accepted to OpenSSL's constraints.

    Its verifier does not hold an emailAddress attribute of a subject to a CA's e-mail
    constraints; OpenSSL does ("permitted subtree violation"). Only a path with such an
    attribute is checked again, so every other verdict stays cryptography's.
    """
    if any(subject_emails(cert.subject) for cert in chain[:-1]):
        _check_name_constraints(chain)
