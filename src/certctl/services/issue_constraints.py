"""Roles that limit what their holders issue: the issuers and names of their constraints.

A caller's roles holding ``cert.issue`` decide (``Principal.issue_limits``): one of them
unconstrained allows everything; otherwise one of them must allow the whole request, its
issuer and every name in it (Vault PKI roles, step-ca's x509 policy).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import NoReturn

from cryptography import x509
from cryptography.x509.oid import NameOID

from certctl.errors import InvalidRequest, PermissionDenied
from certctl.pki import SubjectAltNames
from certctl.pki.dns_names import validate_dns_name
from certctl.pki.name_patterns import name_allowed
from certctl.services.context import IssueLimit, Principal

__all__ = ["check_certificate", "check_issue", "issued_names"]


def issued_names(subject: x509.Name, sans: SubjectAltNames) -> list[tuple[str, bool]]:
    """The names a certificate asserts, ``(name, is_ip)``.

    A CN that is a DNS name or an IP address, then the DNS and IP SANs (the e-mail and URI
    SANs: see :func:`check_issue`).
    """
    names: list[tuple[str, bool]] = []
    for attribute in subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value if isinstance(attribute.value, str) else ""
        try:
            names.append((str(ipaddress.ip_address(value)), True))
            continue
        except ValueError:
            pass
        try:
            names.append((validate_dns_name(value), False))
        except InvalidRequest:
            pass  # "Payments team": no name a TLS client checks, limited by nothing here
    names += [(name, False) for name in sans.dns]
    names += [(str(address), True) for address in sans.ip]
    return names


def check_issue(
    caller: Principal,
    issuer_id: str,
    names: Sequence[tuple[str, bool]] = (),
    others: Sequence[str] = (),
) -> None:
    """Refuse unless one of the caller's roles holding cert.issue allows the whole request.

    ``names``: ``(name, is_ip)`` (:func:`issued_names`); ``others``: the e-mail and URI SANs,
    which a role limited by names does not allow (its patterns say nothing of them). Called
    first with the issuer alone (before the issuer is read), then with the names.

    Raises:
        PermissionDenied: naming the first issuer or name no remaining role allows, and the
            roles considered.
    """
    limits = caller.issue_limits
    if limits is None:
        return
    candidates: Sequence[IssueLimit] = limits
    candidates = [c for c in candidates if c.issuers is None or issuer_id in c.issuers]
    if not candidates:
        _refuse(f"issuer {issuer_id}", limits)
    for name, ip in names:
        candidates = [c for c in candidates if c.names is None or name_allowed(name, c.names, ip)]
        if not candidates:
            _refuse(name, limits)
    for other in others:
        candidates = [c for c in candidates if c.names is None]
        if not candidates:
            _refuse(f"{other} (an e-mail or URI SAN; a role limited to names allows none)", limits)


def check_certificate(caller: Principal, issuer_id: str, certificate: x509.Certificate) -> None:
    """:func:`check_issue` for a signed, not yet stored certificate: the names it holds.

    Checked on what was signed, not on the request: the names of a CSR are whatever the
    signing took from it, so nothing it carries escapes the check.
    """
    if caller.issue_limits is None:
        return
    try:
        ext = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        sans = SubjectAltNames.from_extension(ext.value)
    except x509.ExtensionNotFound:
        sans = SubjectAltNames()
    check_issue(
        caller, issuer_id, issued_names(certificate.subject, sans), (*sans.email, *sans.uri)
    )


def _refuse(what: str, limits: Sequence[IssueLimit]) -> NoReturn:
    roles = ", ".join(limit.role for limit in limits)
    raise PermissionDenied(
        f"{what}: not allowed by the constraints of role(s) {roles} (those of your roles "
        "holding cert.issue; one of them must allow the issuer and every name)"
    )
