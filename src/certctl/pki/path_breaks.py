"""Where a certificate path breaks off, named for the user: the missing or unusable issuer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from certctl.pki.chain_links import (
    anchor_name,
    intermediate_name,
    same_encoding,
    signs,
    window_problem,
)
from certctl.pki.distinguished_names import names_match
from certctl.pki.dn_display import display_dn
from certctl.pki.key_strength import weakly_signed
from certctl.pki.verdicts import IssuerNotFound, VerificationFailed

__all__ = [
    "missing_link",
    "path_failure",
]


class _IssuerAbsent(str):
    """``missing_link``'s reason when it is an issuer found nowhere (-> ``IssuerNotFound``)."""

    __slots__ = ()


def path_failure(missing: str | None, otherwise: str) -> VerificationFailed:
    """The failure for a path that did not verify: ``missing`` (``missing_link``'s) first."""
    if isinstance(missing, _IssuerAbsent):
        return IssuerNotFound(f"verification failed: {missing}")
    return VerificationFailed(
        f"verification failed: {missing if missing is not None else otherwise}"
    )


def missing_link(
    leaf: x509.Certificate,
    trust: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
    now: datetime,
) -> str | None:
    """Where the path from ``leaf`` breaks off, by issuer name and signature, if it does.

    cryptography reports only "candidates exhausted"; the usual causes are a wrong trust
    bundle, a missing intermediate or a CA out of its validity window, and this names the
    certificate that is not there (or is there under its name but with another key, as
    after a CA was created anew), or the CA that expired. None when the names and
    signatures do reach the trust bundle (then a constraint failed).
    """
    current = leaf
    pool = list(untrusted)
    for _ in range(8):
        issuer = display_dn(current.issuer)
        subject = display_dn(current.subject)
        named = [c for c in trust if same_encoding(c.subject, current.issuer)]
        if named:
            signers = [c for c in named if signs(c, current)]
            if not signers:
                reasons = (weakly_signed(c, current) for c in named)
                found = next((reason for reason in reasons if reason is not None), None)
                if found is not None:
                    return found
                return (
                    f"{issuer} in the trust bundle did not sign {subject} (a CA of the same "
                    "name with another key: is the trust bundle out of date?)"
                )
            problems = [window_problem(c, now) for c in signers]
            # Any anchor in its window may complete the path (a renewed root beside the old).
            if None in problems:
                return None
            return f"{anchor_name(signers[0])} {problems[0]}"
        named = [c for c in pool if same_encoding(c.subject, current.issuer)]
        # One that signed and is in its window first: a renewed intermediate beside the old.
        usable = (c for c in named if signs(c, current) and window_problem(c, now) is None)
        parent = next(usable, named[0] if named else None)
        if parent is None:
            folded = _folded_issuer(current, trust, pool)
            if folded is not None:
                return folded
            return _IssuerAbsent(
                f"{issuer}, the issuer of {subject}, is neither in the trust bundle nor among "
                "the intermediates"
            )
        if not signs(parent, current):
            weak = weakly_signed(parent, current)
            if weak is not None:
                return weak
            return f"intermediate {issuer} did not sign {subject} (another key, same name)"
        problem = window_problem(parent, now)
        if problem is not None:
            return f"{intermediate_name(parent)} {problem}"
        pool.remove(parent)
        current = parent
    return None


def _folded_issuer(
    cert: x509.Certificate,
    trust: Sequence[x509.Certificate],
    pool: Sequence[x509.Certificate],
) -> str | None:
    """Why a CA whose name matches ``cert``'s issuer only when folded is no issuer, or None.

    openssl compares names after folding case, spacing and string type (RFC 5280 7.1) and
    accepts such a chain; cryptography's verifier finds issuers by the name as encoded and
    has no option to fold, so certctl refuses it and says so, instead of calling the CA
    missing (it is there).
    """
    for certs, where in ((trust, "in the trust bundle"), (pool, "among the intermediates")):
        ca = next((c for c in certs if names_match(c.subject, cert.issuer)), None)
        if ca is not None:
            return (
                f"the issuer name of {display_dn(cert.subject)}, "
                f"{display_dn(cert.issuer)}, differs from {display_dn(ca.subject)} "
                f"{where} only in case, spacing or string type: openssl accepts that "
                "(RFC 5280 7.1), certctl's verifier (pyca/cryptography) does not; reissue "
                "the certificate with the CA's subject as its issuer name"
            )
    return None
