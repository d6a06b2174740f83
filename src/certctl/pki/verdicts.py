"""What verifying a certificate answers: the path that verified, or why it failed."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from certctl.errors import InvalidRequest

__all__ = [
    "IssuerNotFound",
    "VerificationFailed",
    "VerifiedChain",
    "WrongPurpose",
]


class VerificationFailed(InvalidRequest):
    """The certificate does not verify against the trust bundle for the purpose asked."""


class IssuerNotFound(VerificationFailed):
    """The path breaks off: an issuer is neither in the trust bundle nor an intermediate given.

    Typed so that a caller reading the certificates from a user's files can say where each
    goes (``certctl verify``: --untrusted or after the leaf, a root in --ca).
    """


class WrongPurpose(VerificationFailed):
    """The leaf's extendedKeyUsage excludes the purpose asked.

    ``suits`` is the other TLS purpose (``server`` or ``client``) it names, if any: a caller
    can then say which purpose to check it for instead.
    """

    def __init__(self, detail: str, suits: str | None) -> None:
        super().__init__(detail)
        self.suits = suits


@dataclass(frozen=True)
class VerifiedChain:
    """The path that verified, leaf first, and what was checked."""

    chain: tuple[x509.Certificate, ...]
    purpose: str
    name: str | None
