"""Issue certificates: from a CSR or with a key generated here."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Table, select

from certctl.auth.permissions import PERMISSIONS
from certctl.errors import Conflict, InvalidRequest, PermissionDenied
from certctl.metrics.registry import ISSUANCE, ISSUANCE_DURATION
from certctl.pki import (
    CertificateAuthority,
    KeyType,
    SubjectAltNames,
    common_name_dn,
    format_serial,
    generate_private_key,
    get_profile,
    key_to_pem,
    load_csr_with_key,
    sign_csr,
)
from certctl.pki.issue import IssuedCertificate, NameHint
from certctl.pki.profiles import Profile
from certctl.pki.template import spki_of
from certctl.services.audit import event_values
from certctl.services.blocked_keys import check_key_unblocked
from certctl.services.context import Principal, Services
from certctl.services.issue_constraints import check_certificate, check_issue, issued_names
from certctl.services.issuers import (
    DEFAULT_ISSUER,
    check_not_managed,
    check_unexpired,
    check_unrevoked,
    load_issuer_certificates,
    load_issuer_state,
)
from certctl.services.revocation import parsed_ca
from certctl.store.groupcommit import Insert, write_rows
from certctl.store.models import AuditEvent, CertificateRecord, Issuer

if TYPE_CHECKING:
    from prometheus_client import Counter

__all__ = [
    "AUDIT_EVENTS",
    "CERTIFICATES",
    "MAX_NAMES_PER_TYPE",
    "SERVER_CN",
    "IssueResult",
    "IssuedRecord",
    "PendingIssue",
    "ca_chain_pem",
    "certctl_names_trusted",
    "check_server_names",
    "issue_from_csr",
    "issue_with_key",
    "new_id",
    "new_rows",
    "prepare_from_csr",
    "prepare_with_key",
    "served_chain",
]
# The API's fields that add a name: the common-name warning names them (not CLI flags).
# Both spellings: the API field, and the flag of `certctl certs issue`, which prints it.
_API_HINT = NameHint(
    "add it to dns_names (certctl certs issue --dns)",
    "add it to ip_addresses (certctl certs issue --ip)",
)


def new_id() -> str:
    """A 24-hex-digit id that sorts by creation time (keyset pagination relies on it)."""
    return f"{time.time_ns():016x}{os.urandom(4).hex()}"


@dataclass(frozen=True)
class IssuedRecord:
    """What an issuance response shows of the stored certificate row."""

    id: str
    serial: str
    status: str
    not_before: datetime
    not_after: datetime
    certificate_pem: str
    renewed_by: str | None = None  # a fresh certificate has no successor


@dataclass(frozen=True)
class IssueResult:
    """The stored record, its chain and, for server-side generation only, the key PEM."""

    record: IssuedRecord
    chain_pem: str
    private_key_pem: str | None
    warnings: tuple[str, ...]


CERTIFICATES: Table = CertificateRecord.__table__  # type: ignore[assignment]
AUDIT_EVENTS: Table = AuditEvent.__table__  # type: ignore[assignment]


def new_rows(
    services: Services,
    caller: Principal,
    issuer_id: str,
    issued: IssuedCertificate,
    profile: str,
    key_pem: bytes | None,
    renewed_from: str | None = None,
) -> tuple[IssuedRecord, tuple[Insert, Insert]]:
    """The certificate row and its audit event as column values, not yet written.

    Plain dictionaries rather than ORM objects: building and instrumenting two mapped
    objects cost more CPU than the database insert itself on the issuance path.
    """
    now = services.clock()
    certificate = issued.certificate
    sans = issued.sans
    if sans is None:
        sans = SubjectAltNames.of(certificate)
    subject = certificate.subject if issued.subject is None else issued.subject
    cns = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cert_id = new_id()
    serial = format_serial(certificate.serial_number)
    record = IssuedRecord(
        id=cert_id,
        serial=serial,
        status="active",
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
    )
    row = {
        "id": cert_id,
        "issuer_id": issuer_id,
        "serial": serial,
        "common_name": str(cns[0].value) if cns else "",
        "subject": subject.rfc4514_string(),
        "sans": sans.as_dict(),
        "profile": profile,
        "status": "active",
        "not_before": record.not_before,
        "not_after": record.not_after,
        "certificate_pem": record.certificate_pem,
        "wrapped_key": services.wrapper.wrap(key_pem, context=f"certificate:{cert_id}")
        if key_pem
        else None,
        "created_at": now,
        "created_by": caller.actor_id,
        "revoked_at": None,
        "revocation_reason": None,
        "renewed_from": renewed_from,
        "renewed_by": None,
    }
    audit_row = event_values(
        at=now,
        actor=caller.actor_id,
        action="certificate.issue",
        # A renewal names its predecessor: who renewed what is answerable from the log.
        target=f"{cert_id} serial {serial}" + (f" renewing {renewed_from}" if renewed_from else ""),
        source=caller.source,
        credential=caller.credential,
    )
    return record, ((CERTIFICATES, row), (AUDIT_EVENTS, audit_row))


# certctl_issuance_total's series, by (issuer, result): labels() takes a lock and builds
# tuples on each call (~1.4 µs, against ~0.5 µs for a cached child). Bounded by the issuers.
_ISSUANCE_SERIES: dict[tuple[str, str], Counter] = {}


def _issuance_counter(issuer_id: str, result: str) -> Counter:
    key = (issuer_id, result)
    series = _ISSUANCE_SERIES.get(key)
    if series is None:
        # Two threads may both get here: labels() hands both the same child.
        series = _ISSUANCE_SERIES[key] = ISSUANCE.labels(issuer_id, result)
    return series


@dataclass(frozen=True)
class PendingIssue:
    """A signed certificate whose rows are not written yet (``issue_*`` write them at once).

    The API writes ``rows`` through ``Services.commits`` (group commit), then calls
    ``finish``; nothing is counted as issued before the rows are committed.
    """

    record: IssuedRecord
    rows: tuple[Insert, ...]
    issuer_id: str
    chain_pem: str
    private_key_pem: str | None
    warnings: tuple[str, ...]
    started: float

    def finish(self) -> IssueResult:
        """Count the issuance (after the commit) and build the result."""
        _issuance_counter(self.issuer_id, "success").inc()
        ISSUANCE_DURATION.observe(time.perf_counter() - self.started)
        return IssueResult(self.record, self.chain_pem, self.private_key_pem, self.warnings)

    def write(self, services: Services) -> IssueResult:
        """Commit the rows in a transaction of their own, then ``finish``."""
        with services.engine.begin() as connection:
            write_rows(connection, self.rows)
        return self.finish()


# SANs of one type a certificate from the API may carry: the keygen body's limit (schemas),
# and Let's Encrypt's; a CSR asking for thousands would otherwise be signed as it is.
MAX_NAMES_PER_TYPE = 100


def prepare_from_csr(
    services: Services,
    caller: Principal,
    *,
    issuer_id: str,
    csr_pem: str,
    profile: str,
    validity: timedelta,
    subject: x509.Name | None = None,
    renewed_from: str | None = None,
) -> PendingIssue:
    """``issue_from_csr`` up to (not including) the database write; ``subject``: see sign_csr.

    ``renewed_from``: the certificate this one renews (an ACME order's ``replaces``); the
    caller records it on that one too, in the transaction writing ``rows``
    (``certificates.record_renewal``).
    """
    caller.require("cert.issue")
    if caller.issue_limits is not None:  # a role's constraints: the issuer first
        check_issue(caller, issuer_id)
    started = time.perf_counter()
    prof = _leaf_profile(profile)
    ca, revoked = load_issuer_state(services, check_not_managed(issuer_id))
    now = services.clock()
    try:
        check_unexpired(ca, issuer_id, now)
        check_unrevoked(revoked, issuer_id)
        csr, public_key = load_csr_with_key(csr_pem.encode())  # verifies the signature
        spki = spki_of(public_key)
        check_key_unblocked(services, spki)  # BlockedKey: a 400
        issued = sign_csr(
            ca,
            csr,
            profile=prof,
            validity=validity,
            now=now,
            verified=True,
            public_key=public_key,
            max_names=MAX_NAMES_PER_TYPE,
            crl_urls=services.crl_urls(issuer_id),
            ca_issuers_urls=services.ca_issuers_urls(issuer_id),
            ocsp_urls=services.ocsp_urls(issuer_id),
            subject=subject,
            spki_der=spki,  # encoded once, for the check and the certificate
        )
    except (InvalidRequest, Conflict):
        _issuance_counter(issuer_id, "error").inc()
        raise
    check_certificate(caller, issuer_id, issued.certificate)  # the names the CSR gave
    check_server_names(services, caller, ca, prof, issued)  # the CSR's key is the caller's
    record, rows = new_rows(
        services, caller, issuer_id, issued, prof.name, None, renewed_from=renewed_from
    )
    return PendingIssue(
        record, rows, issuer_id, ca_chain_pem(ca), None, tuple(issued.warnings), started
    )


def issue_from_csr(
    services: Services,
    caller: Principal,
    *,
    issuer_id: str,
    csr_pem: str,
    profile: str,
    validity: timedelta,
) -> IssueResult:
    """Issue from a CSR after verifying its signature; the profile decides extensions."""
    return prepare_from_csr(
        services,
        caller,
        issuer_id=issuer_id,
        csr_pem=csr_pem,
        profile=profile,
        validity=validity,
    ).write(services)


def ca_chain_pem(ca: CertificateAuthority) -> str:
    """The CA's chain below its root, as PEM: what follows a leaf it issues."""
    return ca.chain_below_root_pem.decode()  # encoded once per CA


def _leaf_profile(name: str) -> Any:
    prof = get_profile(name)
    if prof.is_ca:
        raise InvalidRequest(f"{name}: use POST /api/v1/issuers for CA certificates")
    return prof


_EVERY_PERMISSION = frozenset(PERMISSIONS)
# The CN and first DNS name of the self-signed mode's server certificate (server.tls), of
# every replica: here so that the import's check tells a replica's tls.crt by it.
SERVER_CN = "certctl-server"


def _own_names_covered(own: SubjectAltNames, sans: SubjectAltNames) -> list[str]:
    """The names of certctl's own server that ``sans`` would let a TLS client accept."""
    taken = [
        name
        for name in own.dns
        if any(
            # RFC 6125 6.4.3: a wildcard covers exactly one left-most label. An own wildcard
            # (a custom certificate's) stands for every name it covers: a client may reach
            # certctl by any of them.
            san == name
            or (san.startswith("*.") and name.partition(".")[2] == san[2:])
            or (name.startswith("*.") and san.partition(".")[2] == name[2:])
            for san in sans.dns
        )
    ]
    return taken + [str(ip) for ip in own.ip if ip in sans.ip]


def served_chain(
    services: Services, served: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """``served`` (tls.crt: leaf first) with the CAs above it that certctl's issuers hold.

    A tls.crt may send its leaf alone, or stop below the root: its clients complete the
    path from the root they trust, so every issuer under that root (a sibling of the one
    that signed it too) signs what they accept for its names. Walked by signature through
    what tls.crt sends and every stored issuer's certificate and chain: one store read, made
    when the served certificate is (re)loaded, never per request.
    """
    with services.sessions() as session:
        rows = session.execute(select(Issuer.certificate_pem, Issuer.chain_pem)).all()
    stored: list[x509.Certificate] = []
    for certificate_pem, chain_pem in rows:
        stored.append(parsed_ca(certificate_pem)[0])
        if chain_pem:
            stored.extend(x509.load_pem_x509_certificates(chain_pem.encode()))
    path = list(served)
    current = served[0]
    candidates = [*served[1:], *stored]
    walked = [current]
    while True:  # each step goes up to a CA not walked yet: no loop
        above = next(
            (c for c in candidates if c not in walked and _signed(current, c)),
            None,
        )
        if above is None:
            return tuple(path)
        if above not in path:
            path.append(above)
        walked.append(above)
        current = above


def _chains_to_root(served: Sequence[x509.Certificate], ca: CertificateAuthority) -> bool:
    """Whether the served leaf (``served[0]``) chains up to ``ca``'s root.

    Walked by signature through the served chain (completed from certctl's issuers,
    ``served_chain``) and ``ca``'s own path: a client that verifies certctl against that
    root accepts the served certificate, and so whatever ``ca`` signs for the same names. A
    certificate with the root's subject and key counts as the root (a re-issued or
    cross-signed copy).
    """
    return _reaches(served, ca.root, [ca.certificate, *ca.chain])


def certctl_names_trusted(
    services: Services, cert: x509.Certificate, path: Sequence[x509.Certificate]
) -> list[str]:
    """The names of certctl's own server ``cert`` carries, under the root its clients trust.

    ``path``: the CA that signed ``cert``, then the chain above it (its root last). Such a
    certificate is one certctl serves (its self-signed mode's tls.crt, of any replica and
    any renewal) or one only a caller holding every permission is issued
    (``check_server_names``): the CA trusted for certctl signed it for certctl's names.
    Empty: no check (``Services.server_names`` unset), or none of the names, or another root.
    """
    own = services.server_names
    if own is None or not path:
        return []
    # Its CN without SANs, as tls.mode custom reads a served tls.crt (serve_names_of): that
    # served certificate was recorded when only SANs were compared.
    sans = SubjectAltNames.served_by(cert)
    taken = _own_names_covered(own, sans)
    if not taken or not _names_only_certctl(own, sans):
        return []
    served = services.server_chain
    if served is not None:
        return taken if _reaches(served, path[-1], list(path)) else []
    internal = load_issuer_certificates(services, DEFAULT_ISSUER)
    root = internal.chain[-1] if internal.chain else internal.certificate
    trusted = path[-1].subject == root.subject and path[-1].public_key() == root.public_key()
    return taken if trusted else []


def _names_only_certctl(own: SubjectAltNames, sans: SubjectAltNames) -> bool:
    """Whether ``sans`` are those of a server certificate certctl serves, not another's.

    certctl's own names only (tls.mode custom takes its names from the served certificate):
    one naming another host too (a shared host's, a wildcard over certctl's: a load
    balancer's) is not certctl's, and revoked it cuts no client of certctl off. A self-signed
    tls.crt names each replica's own host name and listen address too, which this replica
    does not know: that one is told by ``SERVER_CN``, the name every replica's carries.
    """
    if SERVER_CN in own.dns and SERVER_CN in sans.dns:
        return True
    mine = {name.lower() for name in own.dns}
    return (
        all(name.lower() in mine for name in sans.dns)
        and set(sans.ip) <= set(own.ip)
        and set(sans.email) <= set(own.email)
        and set(sans.uri) <= set(own.uri)
    )


def _reaches(
    served: Sequence[x509.Certificate], root: x509.Certificate, path: list[x509.Certificate]
) -> bool:
    """Whether ``served[0]`` chains up to ``root`` through ``served`` and ``path``."""
    candidates = [*served[1:], *path]
    current = served[0]
    for _ in range(len(candidates) + 1):  # each step goes up one CA; no loop is longer
        if current.subject == root.subject and current.public_key() == root.public_key():
            return True
        above = next((c for c in candidates if c is not current and _signed(current, c)), None)
        if above is None:
            return False
        current = above
    return False


def _signed(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):  # another name, key type, signature
        return False
    return True


def check_server_names(
    services: Services,
    caller: Principal,
    ca: CertificateAuthority,
    profile: Profile,
    issued: IssuedCertificate,
) -> None:
    """Refuse a server certificate for certctl's own names, under its CA, to most callers.

    Its clients verify certctl's server certificate against the internal CA's root
    (``<data-dir>/tls/ca.crt``): whoever holds the key of another certificate for one of its
    names, chained to that root, can pose as certctl and receive the API keys sent to it,
    an administrator's too. So (DESIGN §4, no escalation) only a caller holding every
    permission is issued one, as only such a caller may aim a managed service at the host.

    Raises:
        PermissionDenied: the certificate names one of them and the caller lacks a permission.
    """
    own = services.server_names
    if own is None or not profile.is_server or caller.permissions >= _EVERY_PERMISSION:
        return
    sans = issued.sans
    if sans is None:
        try:
            ext = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return
        sans = SubjectAltNames.from_extension(ext.value)
    taken = _own_names_covered(own, sans)
    if not taken:
        return
    served = services.server_chain
    if served is not None:
        if not _chains_to_root(served, ca):
            return  # the served certificate is under another root
    else:
        internal = load_issuer_certificates(services, DEFAULT_ISSUER)
        if ca.root != (internal.chain[-1] if internal.chain else internal.certificate):
            return  # another root: certctl's clients do not trust it for certctl
    raise PermissionDenied(
        f"{', '.join(taken)}: certctl's own server name(s); a server certificate for them "
        "under its CA would receive the API keys clients send to certctl, so issuing one "
        "needs every permission; ask an administrator"
    )


def prepare_with_key(
    services: Services,
    caller: Principal,
    *,
    issuer_id: str,
    common_name: str,
    dns_names: list[str],
    ip_addresses: list[str],
    profile: str,
    validity: timedelta,
    key_type: str,
    email_addresses: Sequence[str] = (),
    uris: Sequence[str] = (),
) -> PendingIssue:
    """``issue_with_key`` up to (not including) the database write."""
    caller.require("cert.issue")
    started = time.perf_counter()
    prof = _leaf_profile(profile)
    kt = KeyType.parse(key_type)
    sans = SubjectAltNames.parse(dns=dns_names, ip=ip_addresses, email=email_addresses, uri=uris)
    subject = common_name_dn(common_name) if common_name else x509.Name([])
    if caller.issue_limits is not None:
        # A role's constraints, before a key is made: the request's issuer and names are
        # what the certificate will hold.
        check_issue(caller, issuer_id, issued_names(subject, sans), (*sans.email, *sans.uri))
    ca, revoked = load_issuer_state(services, check_not_managed(issuer_id))
    now = services.clock()
    try:
        check_unexpired(ca, issuer_id, now)  # before the key: an RSA key takes up to seconds
        check_unrevoked(revoked, issuer_id)
        key = generate_private_key(kt)
        issued = ca.issue(
            key.public_key(),
            subject,
            profile=prof,
            validity=validity,
            now=now,
            sans=sans,
            crl_urls=services.crl_urls(issuer_id),
            ca_issuers_urls=services.ca_issuers_urls(issuer_id),
            ocsp_urls=services.ocsp_urls(issuer_id),
            name_hint=_API_HINT,
        )
    except (InvalidRequest, Conflict):
        # Counted as prepare_from_csr counts it: the issuer refused to sign (e.g. expired).
        _issuance_counter(issuer_id, "error").inc()
        raise
    check_server_names(services, caller, ca, prof, issued)
    key_pem = key_to_pem(key)
    record, rows = new_rows(services, caller, issuer_id, issued, prof.name, key_pem)
    return PendingIssue(
        record, rows, issuer_id, ca_chain_pem(ca), key_pem.decode(), tuple(issued.warnings), started
    )


def issue_with_key(
    services: Services,
    caller: Principal,
    *,
    issuer_id: str,
    common_name: str,
    dns_names: list[str],
    ip_addresses: list[str],
    profile: str,
    validity: timedelta,
    key_type: str,
    email_addresses: Sequence[str] = (),
    uris: Sequence[str] = (),
) -> IssueResult:
    """Generate the key server-side and issue; the key is returned once and stored wrapped."""
    return prepare_with_key(
        services,
        caller,
        issuer_id=issuer_id,
        common_name=common_name,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        profile=profile,
        validity=validity,
        key_type=key_type,
        email_addresses=email_addresses,
        uris=uris,
    ).write(services)
