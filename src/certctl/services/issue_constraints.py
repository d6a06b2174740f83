"""Roles that limit what their holders issue: the issuers and names of their constraints.

A caller's roles holding ``cert.issue`` decide (``Principal.issue_limits``): one of them
unconstrained allows everything; otherwise one of them must allow the whole request, its
issuer and every name in it (Vault PKI roles, step-ca's x509 policy).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import NoReturn

from cryptography import x509
from cryptography.x509.oid import NameOID

from certctl.errors import InvalidRequest, PermissionDenied
from certctl.pki import SubjectAltNames
from certctl.pki.dns_names import validate_dns_name
from certctl.pki.name_patterns import name_allowed, pattern_within
from certctl.services.context import IssueLimit, Principal

__all__ = ["check_certificate", "check_issue", "issued_names", "no_issue_escalation"]

# A CN a client could be asked to connect to: host-name characters (and a wildcard's "*").
_HOST_LIKE = re.compile(r"[A-Za-z0-9._*-]+")


def issued_names(subject: x509.Name, sans: SubjectAltNames) -> list[tuple[str, bool]]:
    """The names a certificate asserts, ``(name, is_ip)``.

    A CN that is a DNS name or an IP address, or is spelled with host-name characters only,
    then the DNS and IP SANs (the e-mail and URI SANs: see :func:`check_issue`).
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
            host = value.strip()
            if _HOST_LIKE.fullmatch(host):
                # No valid DNS name ("svc_x.team-b.example", "w*.team-b.example",
                # "010.0.0.1"), yet OpenSSL and curl match a CN as a host name when the
                # certificate has no DNS SAN (which such a CN gets none of): checked as it
                # is spelled, so only a pattern above it allows it.
                names.append((host.lower().rstrip("."), False))
            # else "Payments team": no name a TLS client checks, limited by nothing here
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
    if limits:  # () when only caps limit the caller
        _check_limits(limits, issuer_id, names, others, _YOURS)
    for cap in caller.issue_caps:
        _check_limits(cap, issuer_id, names, others, _REQUESTERS)


_YOURS = "those of your roles holding cert.issue; one of them must allow the issuer and every name"
_REQUESTERS = (
    "the roles of the actor that had your client certificate issued, which cap it; one of "
    "them must allow the issuer and every name"
)


def _check_limits(
    limits: Sequence[IssueLimit],
    issuer_id: str,
    names: Sequence[tuple[str, bool]],
    others: Sequence[str],
    whose: str,
) -> None:
    candidates = [c for c in limits if c.issuers is None or issuer_id in c.issuers]
    if not candidates:
        _refuse(f"issuer {issuer_id}", limits, whose)
    for name, ip in names:
        candidates = [c for c in candidates if c.names is None or name_allowed(name, c.names, ip)]
        if not candidates:
            _refuse(name, limits, whose)
    for other in others:
        candidates = [c for c in candidates if c.names is None]
        if not candidates:
            what = f"{other} (an e-mail or URI SAN; a role limited to names allows none)"
            _refuse(what, limits, whose)


def check_certificate(caller: Principal, issuer_id: str, certificate: x509.Certificate) -> None:
    """:func:`check_issue` for a signed, not yet stored certificate: the names it holds.

    Checked on what was signed, not on the request: the names of a CSR are whatever the
    signing took from it, so nothing it carries escapes the check.
    """
    if caller.issue_limits is None:
        return
    sans = SubjectAltNames.of(certificate)
    check_issue(
        caller, issuer_id, issued_names(certificate.subject, sans), (*sans.email, *sans.uri)
    )


def _refuse(what: str, limits: Sequence[IssueLimit], whose: str) -> NoReturn:
    roles = ", ".join(limit.role for limit in limits)
    raise PermissionDenied(f"{what}: not allowed by the constraints of role(s) {roles} ({whose})")


def no_issue_escalation(
    caller: Principal, limits: Sequence[IssueLimit] | None, issues: bool, what: str
) -> None:
    """Refuse to ``what`` when it would let someone issue more than the caller may (DESIGN §4).

    ``limits``: the cert.issue limits of the role(s) concerned (``roles.issue_limits``), None
    when ``issues`` and unconstrained. A caller whose own cert.issue is constrained may grant
    it only within one of its roles: each issuer among that role's, each pattern inside one
    of its patterns (``pattern_within``); never unconstrained.

    Raises:
        PermissionDenied: naming the first issuer or pattern outside.
    """
    if caller.issue_limits is None or not issues:
        return
    for own in (caller.issue_limits, *caller.issue_caps):
        if not own:
            continue  # its own roles unconstrained (only caps limit it)
        for target in (None,) if limits is None else limits:
            outside = _outside(target, own)
            if outside is not None:
                roles = ", ".join(limit.role for limit in own)
                whose = "your role(s)" if own is caller.issue_limits else "role(s)"
                raise PermissionDenied(
                    f"cannot {what}: its cert.issue would allow {outside}, outside the "
                    f"constraints of {whose} {roles} (one of them must hold every issuer "
                    "and name)"
                )


def _outside(target: IssueLimit | None, own: Sequence[IssueLimit]) -> str | None:
    """What of ``target`` (None: unconstrained) no single role of ``own`` allows; None: all."""
    first = None
    for mine in own:
        missing = _missing(target, mine)
        if missing is None:
            return None
        first = first or missing
    return first


def _missing(target: IssueLimit | None, mine: IssueLimit) -> str | None:
    if target is None:
        return "any issuer and name (no constraints)"
    if mine.issuers is not None:
        if target.issuers is None:
            return "any issuer"
        for issuer in sorted(target.issuers):
            if issuer not in mine.issuers:
                return f"issuer {issuer}"
    if mine.names is not None:
        if target.names is None:
            return "any name"
        for pattern in target.names:
            if not any(pattern_within(pattern, allowed) for allowed in mine.names):
                return pattern
    return None
