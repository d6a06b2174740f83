"""The revocation reasons certctl takes (RFC 5280 5.3.1), and the check of a reason given.

Names only, no cryptography import: the CLI checks ``--reason`` before sending it by the rule
the server applies (services.revocation), and a client command must not load the server's
layers (SQLAlchemy, the services) to do so, which doubled its start-up.
"""

from __future__ import annotations

from certctl.errors import InvalidRequest
from certctl.spelling import did_you_mean

__all__ = ["ISSUER_REVOCATION_REASONS", "REVOCATION_REASONS", "STORED_REASONS", "check_reason"]

# RFC 5280's CRLReason names, as cryptography spells them (x509.ReasonFlags values).
# removeFromCRL belongs to delta CRLs and certificateHold cannot be lifted here: refused.
# Every reason a revocation was ever stored with (a CRL says each one).
STORED_REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
    "aACompromise",
)
# RFC 5280 5.3.1 (after X.509): cACompromise revokes a CA's certificate, aACompromise an
# attribute authority's, which certctl does not issue. On a leaf, a CRL saying either told
# its clients a CA was compromised (CA/B Forum BR 7.2.2 forbids both on a subscriber's).
_CA_ONLY = ("cACompromise",)
_NEVER = ("aACompromise",)
REVOCATION_REASONS = tuple(sorted(r for r in STORED_REASONS if r not in (*_CA_ONLY, *_NEVER)))
ISSUER_REVOCATION_REASONS = tuple(sorted(r for r in STORED_REASONS if r not in _NEVER))
_REFUSED = {
    "certificateHold": "a hold is lifted by taking the certificate off the CRL, which certctl "
    "never does (a revocation is final)",
    "removeFromCRL": "a reason for delta CRLs only (RFC 5280 5.3.1), which certctl does not "
    "publish",
}


def check_reason(reason: str | None, *, issuer: bool = False) -> str:
    """``reason``, ``unspecified`` when left out (None).

    Raises:
        InvalidRequest: empty, or not one of REVOCATION_REASONS, or of
            ISSUER_REVOCATION_REASONS for an ``issuer``.
    """
    allowed = ISSUER_REVOCATION_REASONS if issuer else REVOCATION_REASONS
    if reason is None:
        return "unspecified"
    if not reason.strip():
        # `--reason "$REASON"` with the variable unset: taken as unspecified, a revocation
        # meant as keyCompromise was published (for good) as no compromise.
        raise InvalidRequest(
            f"an empty revocation reason: give one of {', '.join(allowed)}, or leave the "
            "reason out for unspecified"
        )
    if reason in allowed:
        return reason
    instead = (
        "an issuer's compromised key is cACompromise"
        if issuer
        else "a certificate's compromised key is keyCompromise"
    )
    if reason in _CA_ONLY:
        raise InvalidRequest(
            f"{reason}: the reason for a CA's certificate (RFC 5280 5.3.1); {instead}"
        )
    if reason in _NEVER:
        raise InvalidRequest(
            f"{reason}: the reason for an attribute authority's certificate (RFC 5280 5.3.1), "
            f"which certctl does not issue; {instead}"
        )
    choices = ", ".join(allowed)
    refused = _REFUSED.get(reason)
    if refused is not None:  # RFC 5280 reasons, but not for a revocation here
        raise InvalidRequest(f"{reason}: {refused}; one of {choices}")
    # RFC 5280's spelling, case included: `--reason keycompromise` is a typo, so name the one
    # meant before the list.
    known = {r.lower(): r for r in (*_CA_ONLY, *_NEVER, *_REFUSED)}
    if reason.lower() in known and known[reason.lower()] not in allowed:
        # cacompromise for a certificate: the words of the reason meant (cACompromise).
        check_reason(known[reason.lower()], issuer=issuer)
    hint = did_you_mean(reason, allowed)
    if hint:
        raise InvalidRequest(f"{reason}: unknown revocation reason ({hint} one of {choices})")
    raise InvalidRequest(f"{reason}: unknown revocation reason (one of {choices})")
