"""The links of a certificate path: who may issue, who signed whom, and each one's window."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from certctl.pki.dn_display import display_dn
from certctl.pki.verdicts import VerificationFailed

__all__ = [
    "anchor_name",
    "asserts_ca",
    "chain_problem",
    "chain_window_problem",
    "check_window",
    "intermediate_name",
    "is_ca",
    "is_self_signed",
    "issued_by",
    "issuer_chain",
    "same_encoding",
    "signs",
    "window_problem",
]


def asserts_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` carries basicConstraints cA=TRUE (no keyUsage check: see is_ca)."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def is_self_signed(cert: x509.Certificate) -> bool:
    """Whether ``cert`` names itself as issuer and its own key signed it (a trust anchor).

    A signature on itself over SHA-1 or MD5 counts, though cryptography checks none: no
    client checks a trust anchor's signature on itself (OpenSSL 3 leaves it out of its
    digest check), and an old openssl root so signed was taken for an intermediate, sent
    after every leaf of the CAs below it.
    """
    if cert.issuer != cert.subject:
        return False
    if signs(cert, cert):
        return True
    from certctl.pki.key_strength import weakly_signed  # it imports this module

    return weakly_signed(cert, cert) is not None


def issuer_chain(
    cert: x509.Certificate, others: Sequence[x509.Certificate]
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    """The certificates of ``others`` above ``cert``, nearest first, and those left over.

    Followed by name and signature up to a self-signed root, whatever order ``others`` came
    in: bundles often list the root first, and taken as given the root landed among the
    intermediates of every tls.crt and an intermediate became the CA clients trust.

    Returns:
        (chain, left_over): the issuers in order, and the certificates of ``others`` that
        are not in the chain (unrelated, or above a link that is missing).
    """
    chain: list[x509.Certificate] = []
    pool = list(others)
    current = cert
    while current.issuer != current.subject:  # up to a self-signed root, if given
        parent = next((c for c in pool if c.subject == current.issuer and signs(c, current)), None)
        if parent is None:
            break
        pool.remove(parent)
        chain.append(parent)
        current = parent
    return tuple(chain), tuple(pool)


def chain_problem(cert: x509.Certificate, chain: Sequence[x509.Certificate]) -> str | None:
    """Why no certificate CA ``cert`` signs can verify through ``chain``, or None.

    ``chain``: the CAs above it, nearest first, as :func:`issuer_chain` found them by name
    and signature alone: one that may not issue (no cA, no keyCertSign), or whose
    pathLenConstraint the CAs below it exceed, fails every path through it (openssl: "invalid
    CA certificate", "path length constraint exceeded").
    """
    below = 0
    for child, parent in itertools.pairwise((cert, *chain)):
        if child.issuer != child.subject:  # self-issued CAs do not count (RFC 5280 6.1.4 (l))
            below += 1
        if parent.version is x509.Version.v1 and parent.issuer == parent.subject:
            continue  # an old v1 root (no extensions), which openssl takes for a CA
        name = display_dn(parent.subject)
        if not is_ca(parent):
            return (
                f"{name}, above it, is no CA that may sign certificates (it lacks basicConstraints "
                "CA:TRUE or keyCertSign): certificates this CA signs would not verify"
            )
        limit = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
        if limit.path_length is not None and below > limit.path_length:
            return (
                f"{name}, above it, allows {limit.path_length} CA certificates below it "
                f"(pathlen:{limit.path_length}) and {below} follow: certificates this CA signs "
                "would not verify (path length constraint exceeded)"
            )
    return None


def chain_window_problem(chain: Sequence[x509.Certificate], now: datetime) -> str | None:
    """Why no certificate a CA below ``chain`` signs verifies at ``now``, or None.

    ``chain``: the CAs above it, nearest first. One of them expired (or not yet valid) is not
    refused at import: the CA may be imported before its parent is renewed, and its
    certificate is needed to check what it signed. But every certificate it issues fails
    verification until then, which an import of an intermediate below an expired root said
    nowhere.
    """
    for parent in chain:
        problem = window_problem(parent, now)
        if problem is not None:
            return (
                f"{display_dn(parent.subject)}, above it, {problem}: certificates this CA "
                "signs will not verify until that CA is renewed"
            )
    return None


def signs(parent: x509.Certificate, child: x509.Certificate) -> bool:
    """Whether ``parent``'s key signed ``child`` (refusing a key that cannot be checked)."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    except UnsupportedAlgorithm as exc:
        # A key on a curve cryptography lacks (prime239v1, a binary curve): the signature
        # cannot be checked at all. Before, "internal error (UnsupportedAlgorithm: …)".
        raise VerificationFailed(
            f"verification failed: cannot check the signature on "
            f"{display_dn(child.subject)}: the key of {display_dn(parent.subject)} "
            f"is not supported ({exc})"
        ) from exc
    return True


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether ``parent`` is a CA that ``child`` names as issuer and that signed it."""
    if child.issuer != parent.subject or not is_ca(parent):
        return False
    return signs(parent, child)


def is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` may issue: basicConstraints cA, and keyCertSign if it has keyUsage."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return constraints.ca  # RFC 5280 6.1.4 (n): keyCertSign is checked only if present
    return constraints.ca and usage.key_cert_sign


def check_window(cert: x509.Certificate, now: datetime, what: str = "certificate") -> None:
    """Refuse ``cert`` (called ``what``) when ``now`` is outside its validity window."""
    problem = window_problem(cert, now)
    if problem is not None:
        # Prefixed as every other failure: the leaf's own window once lacked it.
        raise VerificationFailed(f"verification failed: {what} {problem}")


def anchor_name(cert: x509.Certificate) -> str:
    """A trust anchor, as a failure names it."""
    return f"CA {display_dn(cert.subject)} in the trust bundle"


def intermediate_name(cert: x509.Certificate) -> str:
    """An intermediate CA, as a failure names it."""
    return f"intermediate CA {display_dn(cert.subject)}"


def window_problem(cert: x509.Certificate, now: datetime) -> str | None:
    """Why ``cert`` is not valid at ``now``, or None when it is."""
    if now < cert.not_valid_before_utc:
        return f"is not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    return None


def same_encoding(a: x509.Name, b: x509.Name) -> bool:
    """Whether the two names are equal as encoded."""
    # As cryptography's verifier and verify_directly_issued_by compare issuer names: as
    # encoded. ``x509.Name ==`` ignores the string type, and then a CA named in a
    # PrintableString passed for the issuer of a certificate naming it in a UTF8String,
    # and its refusal was put down to "another key".
    return a.public_bytes() == b.public_bytes()
