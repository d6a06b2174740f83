"""Issuers and certificates: create, issue, list, revoke, renew, CRL."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NoReturn, Protocol, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import (
    Connection,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from certctl.auth.permissions import PERMISSIONS
from certctl.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from certctl.metrics.registry import ISSUANCE, ISSUANCE_DURATION, RENEWALS, REVOCATIONS
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    KeyType,
    SubjectAltNames,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    format_serial,
    generate_private_key,
    get_profile,
    issuer_chain,
    key_to_pem,
    key_type_of,
    load_csr_with_key,
    load_material,
    parse_dn,
    sign_csr,
)
from certctl.pki.crl import RevokedEntry, create_crl
from certctl.pki.issue import BACKDATE, IssuedCertificate, KeyMismatch, NameHint
from certctl.pki.keys import signature_verifies, unreadable_key
from certctl.pki.names import SAN_KINDS, san_search_forms
from certctl.pki.profiles import Profile
from certctl.services.audit import event_values, record
from certctl.services.context import (
    IssuerCertificates,
    IssuerRevocation,
    Principal,
    Services,
    SignedCrl,
)
from certctl.store.db import (
    REVOCATION_LOCK,
    contains_pattern,
    json_string_contains,
    lock_for_write,
    unicode_lower,
)
from certctl.store.groupcommit import Insert, write_rows
from certctl.store.models import Actor, AuditEvent, CertificateRecord, Issuer

__all__ = [
    "CA_CERT_MAX_AGE",
    "DEFAULT_ISSUER",
    "REVOCATION_REASONS",
    "CertificateView",
    "IssueResult",
    "IssuedRecord",
    "PendingIssue",
    "UnreadableCertificate",
    "ca_max_age_s",
    "create_issuer",
    "crl_for",
    "crl_max_age_s",
    "forget_if_changed",
    "get_certificate",
    "import_issuer",
    "issue_from_csr",
    "issue_with_key",
    "list_certificates",
    "load_issuer",
    "load_issuer_certificates",
    "load_issuer_state",
    "prepare_from_csr",
    "prepare_with_key",
    "refresh_cached_issuers",
    "renew_certificate",
    "renew_root_issuer",
    "revocation_refusal",
    "revoke_certificate",
    "revoke_issuer",
    "revoked_ca_among",
    "revoked_issuer_of",
    "served_chain",
]

DEFAULT_ISSUER = "default"
# An issuer created through the API without a validity (as `certctl ca create`'s default).
DEFAULT_CA_VALIDITY = timedelta(days=5 * 365)
EXPIRING_WINDOW = timedelta(days=30)
# removeFromCRL belongs to delta CRLs and certificateHold cannot be lifted here: refused.
# The API's fields that add a name: the common-name warning names them (not CLI flags).
# Both spellings: the API field, and the flag of `certctl certs issue`, which prints it.
_API_HINT = NameHint(
    "add it to dns_names (certctl certs issue --dns)",
    "add it to ip_addresses (certctl certs issue --ip)",
)

_REASONS = {
    r.value: r
    for r in x509.ReasonFlags
    if r not in (x509.ReasonFlags.remove_from_crl, x509.ReasonFlags.certificate_hold)
}
REVOCATION_REASONS = tuple(sorted(_REASONS))


def new_id() -> str:
    """A 24-hex-digit id that sorts by creation time (keyset pagination relies on it)."""
    return f"{time.time_ns():016x}{os.urandom(4).hex()}"


def _issuer_context(issuer_id: str) -> str:
    return f"issuer:{issuer_id}"


def _store_issuer(
    services: Services,
    issuer_id: str,
    name: str,
    ca: CertificateAuthority,
    caller: Principal | None,
    action: str,
    guard: Callable[[Session], None] | None = None,
    parent_id: str | None = None,
) -> Issuer:
    """Store a new issuer; ``guard`` runs first in the same transaction and may refuse it."""
    now = services.clock()
    # Before the guard reads: a revocation committed after that read (of a CA above this
    # one) drops the cache after it, so what is stored is not cached as unrevoked here.
    version = services.issuer_cache_version()
    key_der = ca.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    row = Issuer(
        id=issuer_id,
        name=name or issuer_id,
        subject=ca.certificate.subject.rfc4514_string(),
        certificate_pem=certs_to_pem([ca.certificate]).decode(),
        chain_pem=certs_to_pem(ca.chain).decode(),
        wrapped_key=services.wrapper.wrap(key_der, context=_issuer_context(issuer_id)),
        key_type=key_type_of(ca.private_key),
        not_after=ca.certificate.not_valid_after_utc,
        created_at=now,
        parent_id=parent_id,
    )
    with services.sessions.begin() as session:
        if guard is not None:
            guard(session)
        if session.get(Issuer, issuer_id) is not None:
            raise Conflict(f"issuer {issuer_id} already exists")
        session.add(row)
        record(
            session,
            at=now,
            actor=caller.actor_id if caller else "system",
            action=action,
            target=issuer_id,
            source=caller.source if caller else "",
        )
    services.cache_issuer(issuer_id, ca, version=version)
    return row


def create_issuer(
    services: Services,
    caller: Principal | None,
    *,
    issuer_id: str,
    name: str,
    subject: str | None,
    common_name: str | None,
    key_type: str,
    validity: timedelta | None,
    parent: str | None = None,
    path_length: int | None = None,
) -> tuple[Issuer, tuple[str, ...]]:
    """Create a root CA, or an intermediate signed by issuer ``parent``.

    ``validity`` None: ``DEFAULT_CA_VALIDITY``, and for an intermediate no longer than its
    parent has left (as ``certctl ca create --parent``), without a warning.

    Returns:
        The stored issuer and the warnings raised while signing it (a validity clipped to
        the parent's notAfter, a short lifetime).
    """
    if caller is not None:
        caller.require("issuer.create")
    from certctl.services.rbac import _check_id

    _check_id(issuer_id, "issuer")
    if caller is not None:
        _reserved_id(issuer_id)
    name_dn = (
        parse_dn(subject) if subject else common_name_dn(common_name or f"certctl {issuer_id} CA")
    )
    key = generate_private_key(KeyType.parse(key_type))
    now = services.clock()
    if parent is None:
        issued = create_root_ca(
            key,
            name_dn,
            validity=validity or DEFAULT_CA_VALIDITY,
            now=now,
            path_length=path_length,
        )
        ca = CertificateAuthority(issued.certificate, key)
    else:
        parent_ca, parent_revoked = load_issuer_state(
            services, _not_managed(parent) if caller else parent
        )
        _unexpired(parent_ca, parent, now)
        _unrevoked(parent_revoked, parent)
        if validity is None:
            # Asked for nothing, told nothing: the default of 5Y clipped to the default
            # issuer's one year warned on every intermediate made without --validity.
            validity = min(DEFAULT_CA_VALIDITY, parent_ca.certificate.not_valid_after_utc - now)
        profile = PROFILES["intermediate"]
        if path_length is not None:
            profile = profile.with_path_length(path_length)
        # With public-url, as a leaf names its issuer's: the parent's CRL, which lists this
        # intermediate once it is revoked (clients checking the whole chain fetch it), and
        # the parent's certificate, as public CAs' intermediates carry them.
        issued = parent_ca.issue(
            key.public_key(),
            name_dn,
            profile=profile,
            validity=validity,
            now=now,
            crl_urls=services.crl_urls(parent),
            ca_issuers_urls=services.ca_issuers_urls(parent),
        )
        ca = CertificateAuthority(
            issued.certificate, key, (parent_ca.certificate, *parent_ca.chain)
        )
    # The parent may have been revoked since it was loaded (another request, a replica).
    row = _store_issuer(
        services,
        issuer_id,
        name,
        ca,
        caller,
        "issuer.create",
        guard=partial(_not_revoked, ca, "not created"),
        parent_id=parent,
    )
    return row, issued.warnings


def import_issuer(
    services: Services,
    caller: Principal,
    *,
    issuer_id: str,
    name: str,
    certificate_pem: str,
    private_key_pem: str,
) -> tuple[Issuer, tuple[str, ...]]:
    """Import an existing CA (PEM certificate [+ chain] and key).

    Returns:
        The stored issuer and warnings about what it will not do well (sign CRLs).
    """
    caller.require("issuer.create")
    from certctl.services.rbac import _check_id

    _check_id(issuer_id, "issuer")
    _reserved_id(issuer_id)
    certs = load_material(certificate_pem.encode()).certificates
    try:
        key = load_material(private_key_pem.encode()).private_key
    except InvalidRequest as exc:
        if "encrypted" not in exc.detail:
            raise
        # The loader's hint names the CLI's --password-file; the API takes no password.
        raise InvalidRequest(
            "private_key_pem is encrypted: send it unencrypted (over this TLS connection), "
            "e.g. from 'openssl pkey -in ca.key'"
        ) from None
    if not certs or key is None:
        raise InvalidRequest("import needs a PEM certificate and a PEM private key")
    # The CA is the certificate of the key wherever the bundle has it (roots often come
    # first), and its chain the others followed by signature up to the root, as
    # 'certctl ca import' takes them: taken in the order given, an unrelated certificate
    # became the chain served with every certificate and the "root" of ca.pem?chain=true.
    _check_keys_readable(certs)
    public_key = key.public_key()
    ca_cert = next((c for c in certs if c.public_key() == public_key), certs[0])
    chain, left_over = issuer_chain(ca_cert, [c for c in certs if c is not ca_cert])
    ca = CertificateAuthority(ca_cert, key, chain)
    _check_importable(ca, services.clock(), left_over)
    if left_over:
        # Refused rather than left out with a warning (as the CLI does): an issuer cannot be
        # deleted or imported again under its id, so a wrong bundle could not be corrected.
        raise InvalidRequest(
            f"{left_over[0].subject.rfc4514_string()}: not an issuer in the chain of "
            f"{ca_cert.subject.rfc4514_string()}; certificate_pem takes the CA and the CAs "
            "above it, up to the root"
        )
    row = _store_issuer(
        services,
        issuer_id,
        name,
        ca,
        caller,
        "issuer.import",
        guard=partial(_not_revoked, ca, "not imported"),
    )
    return row, _import_warnings(ca, issuer_id)


def _check_keys_readable(certs: Sequence[x509.Certificate]) -> None:
    """Refuse a bundle holding a certificate whose key cryptography cannot load.

    Matching the key to it, building the chain and every later compromise check (which
    compare keys) raised UnsupportedAlgorithm, a 500 for the import (``pki.unreadable_key``).
    Checked once here, before anything else reads a key, rather than at each use.
    """
    found = unreadable_key(certs)
    if found is not None:
        cert, exc = found
        raise InvalidRequest(
            f"{cert.subject.rfc4514_string()} in certificate_pem holds a key certctl "
            f"cannot read ({exc}): neither its signatures nor a compromise of its key "
            "could be checked; not imported"
        )


def _not_revoked(ca: CertificateAuthority, outcome: str, session: Session) -> None:
    """409 for an import of a revoked issuer's certificate, or of a CA below one.

    Stored, it could issue nothing (loads refuse it), and it was cached here as it came,
    issuing until the next refresh. Checked in the transaction that stores it; also for
    an intermediate created below a parent revoked while it was being signed.
    ``outcome``: the message's end ("not imported").
    """
    revoked = _revoked_above(session, ca.certificate, ca.chain)
    if revoked is None:
        return
    subject = ca.certificate.subject.rfc4514_string()
    how = (
        "is the certificate of"
        if revoked.same_certificate
        else "has the compromised key of"
        if revoked.same_key
        else "is below"
    )
    raise Conflict(
        f"{subject} {how} issuer {revoked.by}, revoked on "
        f"{revoked.revoked_at:%Y-%m-%d %H:%M}Z ({revoked.reason}): it could issue nothing; "
        f"{outcome}"
    )


def _import_warnings(ca: CertificateAuthority, issuer_id: str) -> tuple[str, ...]:
    warnings = []
    top = ca.root
    if top.issuer != top.subject:
        # Imported all the same (the root may be in every trust store already), but what
        # certctl serves stops below it, as 'certctl ca import' warns.
        warnings.append(
            f"{top.issuer.rfc4514_string()}, the issuer of {top.subject.rfc4514_string()}, "
            "was not given: chain_pem stops below it, certificates from this issuer come "
            f"without {top.subject.rfc4514_string()} and ca.pem?chain=true ends with it, not a "
            "root; send the chain up to the root in certificate_pem"
        )
    if not ca.may_sign_crls:
        # Issuing works; only a CRL it signed would be refused by every client, so certctl
        # publishes none for it: a warning rather than a refusal.
        warnings.append(
            "the CA certificate's keyUsage lacks cRLSign: clients refuse CRLs it signs, so "
            f"/api/v1/issuers/{issuer_id}/crl answers 409 and revocations are not published"
        )
    return tuple(warnings)


# How far ahead of this clock an imported CA's notBefore may be.
IMPORT_CLOCK_SKEW = timedelta(minutes=5)


def _check_importable(
    ca: CertificateAuthority, now: datetime, left_over: Sequence[x509.Certificate] = ()
) -> None:
    """Refuse a CA that could not issue a valid certificate now (rather than at first use).

    ``left_over``: the certificates given besides the CA and its chain; one named as the
    CA's issuer is there because its signature failed.
    """
    cert = ca.certificate
    if cert.not_valid_after_utc <= now:
        raise InvalidRequest(f"the CA certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now + IMPORT_CLOCK_SKEW:
        # Its certificates would start before it does, and fail validation until then. A few
        # minutes are allowed: a CA made just now on a host whose clock runs ahead.
        raise InvalidRequest(
            f"the CA certificate is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    if not ca.may_sign_certificates:
        # Every certificate it signed would fail validation ("key usage does not include
        # certificate signing"), so refuse it now rather than at the first issuance.
        raise InvalidRequest(
            "the CA certificate's keyUsage lacks keyCertSign: certificates it signs would not "
            "verify"
        )
    if cert.issuer == cert.subject:
        parent: x509.Certificate | None = cert
    else:  # the chain's issuer of it, wherever it sits (bundles come root first too)
        parent = next((c for c in (*ca.chain, *left_over) if c.subject == cert.issuer), None)
    if parent is None:
        return  # an intermediate without its issuer: nothing here to check its signature with
    try:
        cert.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        what = "its own key (self-signed)" if parent is cert else "its issuer in the chain"
        raise InvalidRequest(
            f"the CA certificate's signature does not verify with {what}"
        ) from None


# Issuer ids of managed services' CAs (tls_services): only their reconciler issues from them
# (the service's clients trust them), and nobody may create or import one (a CA imported as
# svc.<name> before the service exists would be adopted, its key known to the importer).
MANAGED_ISSUER_PREFIX = "svc."


def _not_managed(issuer_id: str) -> str:
    if issuer_id.startswith(MANAGED_ISSUER_PREFIX):
        raise Conflict(
            f"issuer {issuer_id} is the CA of managed service "
            f"{issuer_id.removeprefix(MANAGED_ISSUER_PREFIX)}; only its reconciler issues from it"
        )
    return issuer_id


def _unexpired(ca: CertificateAuthority, issuer_id: str, now: datetime) -> None:
    """409 for an issuer past its notAfter: the request was fine, the issuer is not.

    As ``crl_for`` answers; ``CertificateAuthority.issue`` would refuse with a 400 that
    names no issuer, telling the client to change a request that has nothing wrong.
    """
    end = ca.certificate.not_valid_after_utc
    if end <= now:
        raise Conflict(f"issuer {issuer_id}: issuing CA expired on {end:%Y-%m-%d %H:%M}Z")


def _unrevoked(revoked: IssuerRevocation | None, issuer_id: str) -> None:
    """409 for a revoked issuer: what it signed would chain to a revoked CA.

    ``revoked``: from ``load_issuer_state``, cached with the CA: a revocation made by another
    process or replica reaches it with ``refresh_cached_issuers`` (a minute at most), as a
    renewal does.
    """
    if revoked is not None:
        raise Conflict(revocation_refusal(revoked, issuer_id))


def revocation_refusal(
    revoked: IssuerRevocation, issuer_id: str, advice: str = "use another issuer"
) -> str:
    """Why issuer ``issuer_id`` issues nothing more, ending with ``advice``.

    The API's 409, and the server's log line when its own certificate is not renewed.
    """
    when = f"{revoked.revoked_at:%Y-%m-%d %H:%M}Z ({revoked.reason})"
    if revoked.same_certificate:
        return (
            f"issuer {issuer_id} holds the certificate of issuer {revoked.by}, revoked on "
            f"{when}, and issues nothing more: {advice}"
        )
    if revoked.same_key:
        return (
            f"issuer {issuer_id} holds the key of issuer {revoked.by}, revoked on {when}: the "
            f"key was compromised, and it issues nothing more: {advice}"
        )
    if revoked.by != issuer_id:
        # What it signs would chain through a revoked CA: clients checking the whole chain
        # (openssl -crl_check_all, browsers' CRLSets) refuse it.
        return (
            f"issuer {issuer_id} is below issuer {revoked.by}, revoked on {when}, and issues "
            f"nothing more: {advice}"
        )
    return f"issuer {issuer_id} was revoked on {when} and issues nothing more: {advice}"


def _reserved_id(issuer_id: str) -> None:
    if issuer_id.startswith(MANAGED_ISSUER_PREFIX):
        raise InvalidRequest(
            f"{issuer_id!r}: issuer ids starting with {MANAGED_ISSUER_PREFIX!r} are reserved "
            "for managed services' CAs"
        )


def load_issuer(services: Services, issuer_id: str) -> CertificateAuthority:
    """The CA for ``issuer_id``; its key is unwrapped once per process, then cached."""
    return load_issuer_state(services, issuer_id)[0]


def load_issuer_state(
    services: Services, issuer_id: str
) -> tuple[CertificateAuthority, IssuerRevocation | None]:
    """``load_issuer``, with the revocation of the CA or of one above it (None: none).

    Returned with the CA rather than looked up in the cache after: a load not cached (an
    issuer dropped meanwhile) or dropped before that lookup would read no revocation.
    """
    cached = services.cached_issuer_entry(issuer_id)
    if cached is not None:
        return cached
    version = services.issuer_cache_version()
    with services.sessions() as session:
        row = session.get(Issuer, issuer_id)
        if row is None:
            raise NotFound(f"issuer {issuer_id} not found")
        key_der = services.wrapper.unwrap(row.wrapped_key, context=_issuer_context(issuer_id))
        # OpenSSL 3's RSA key check costs 250 ms for a 4,096-bit key, on the request that
        # (re)loads the issuer (after every cache drop, in every worker). Safe to skip for this
        # key only: it was checked when created or imported, and AES-GCM authenticated it
        # just now, so these are the very bytes certctl checked.
        key = serialization.load_der_private_key(key_der, None, unsafe_skip_rsa_key_validation=True)
        cert = x509.load_pem_x509_certificate(row.certificate_pem.encode())
        chain = (
            tuple(x509.load_pem_x509_certificates(row.chain_pem.encode())) if row.chain_pem else ()
        )
        if row.revoked_at is not None:
            revoked: IssuerRevocation | None = IssuerRevocation(
                row.revoked_at, row.revocation_reason or "unspecified", issuer_id
            )
        else:
            revoked = _revoked_above(session, cert, chain)
    try:
        ca = CertificateAuthority(cert, key, chain)  # type: ignore[arg-type]  # issuer keys only
    except KeyMismatch:
        # The key is authenticated by the key-encryption key (AES-GCM, bound to the issuer
        # id); the certificate is a plain column. Whoever can write to the database alone
        # could put another CA's certificate there, and certctl would sign leaves naming
        # that CA as their issuer.
        _refuse_stored_certificate(
            issuer_id,
            cert,
            f"its key does not match its certificate ({_subject(cert)}), which was changed "
            "in the database outside certctl",
        )
    except InvalidRequest as exc:
        # Not a CA, no BasicConstraints, an RSA-PSS key: what an import refuses with 400
        # (the request's fault). Stored, it is the store's state, not the caller's request.
        _refuse_stored_certificate(
            issuer_id, cert, f"its stored certificate ({_subject(cert)}) cannot sign: {exc.detail}"
        )
    services.cache_issuer(issuer_id, ca, revoked, version)
    return ca, revoked


log = logging.getLogger("certctl.services")
# (issuer id, certificate) pairs already logged by _refuse_stored_certificate: its ERROR once
# per process, not once per refused request (nothing is cached, so each one loads it again).
_FOREIGN_LOGGED: set[tuple[str, bytes]] = set()


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()[:200]


def _refuse_stored_certificate(issuer_id: str, cert: x509.Certificate, why: str) -> NoReturn:
    """409 naming the issuer, and its ERROR once per process and certificate.

    Raises:
        Conflict: always; ``why`` says what is wrong with the stored certificate.
    """
    message = f"issuer {issuer_id}: {why}"
    seen = (issuer_id, cert.fingerprint(hashes.SHA256()))
    if seen not in _FOREIGN_LOGGED:
        _FOREIGN_LOGGED.add(seen)
        log.error("%s; it signs nothing until its certificate is restored", message)
    raise Conflict(f"{message}; it signs nothing: restore its certificate or use another issuer")


def _revoked_above(
    session: Session, cert: x509.Certificate, chain: Sequence[x509.Certificate]
) -> IssuerRevocation | None:
    """The revocation of a CA in ``chain`` (the CAs above an issuer) that certctl holds.

    Or of another issuer holding ``cert`` itself (the same CA imported twice): the parent's
    CRL lists that certificate whichever id was revoked. Matched by certificate, not by
    ``parent_id``: imports and intermediates made before migration 0010 have none. Few rows
    (revoked issuers), read when an issuer is loaded.
    """
    query = (
        select(Issuer.id, Issuer.certificate_pem, Issuer.revoked_at, Issuer.revocation_reason)
        .where(Issuer.revoked_at.is_not(None))
        .order_by(Issuer.id)
    )
    if not _may_be_revoked_above(cert, chain):
        # A root is on no CRL, but may hold a key compromised under another certificate
        # (the root of a cross-signed intermediate). Loaded once per cache drop.
        query = query.where(Issuer.revocation_reason.in_(_COMPROMISE))
    rows = session.execute(query).all()
    for revoked_id, pem, revoked_at, reason in rows:
        revoked_cert = _parsed_ca(pem)[0]
        if revoked_cert == cert or revoked_cert in chain:
            return IssuerRevocation(
                cast(datetime, revoked_at),
                reason or "unspecified",
                revoked_id,
                same_certificate=revoked_cert == cert,
            )
    # A compromise is the key's, whatever certificate holds it: another certificate of it
    # (re-issued, cross-signed, imported under another id) signs nothing more, nor do CAs
    # below one. Other reasons stay with the certificate revoked.
    keys = {_spki(c) for c in (cert, *chain)}
    for revoked_id, pem, revoked_at, reason in rows:
        if reason in _COMPROMISE and (
            _parsed_ca(pem)[2] in keys or _top_signed_by(cert, chain, _parsed_ca(pem)[0])
        ):
            return IssuerRevocation(
                cast(datetime, revoked_at),
                reason,
                revoked_id,
                same_key=_parsed_ca(pem)[2] == _spki(cert),
            )
    return None


def _top_signed_by(
    cert: x509.Certificate, chain: Sequence[x509.Certificate], ca: x509.Certificate
) -> bool:
    """Whether the top of ``chain`` (or ``cert``), not a root, was signed by ``ca``'s key.

    An intermediate imported without the CA above it (accepted, with a warning) has no
    chain to compare: its signature tells whether a compromised key is above it.
    """
    top = chain[-1] if chain else cert
    return top.issuer != top.subject and _signature_verifies(top, ca.public_key())


def _spki(cert: x509.Certificate) -> bytes:
    """``cert``'s SubjectPublicKeyInfo (DER): what a key compromise is matched on."""
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_issuer_certificates(services: Services, issuer_id: str) -> IssuerCertificates:
    """The issuer's certificate and chain, what its public routes serve; never its key.

    From this process's caches when there (its CA, or these alone); otherwise one read of
    two columns, then kept until the issuer changes (:meth:`Services.forget_issuer`, or
    :func:`refresh_cached_issuers` for a change made by another process or replica).

    Raises:
        NotFound: no issuer ``issuer_id``.
    """
    cached = services.cached_certificates(issuer_id)
    if cached is not None:
        return cached
    version = services.issuer_cache_version()
    with services.sessions() as session:
        row = session.execute(
            select(Issuer.certificate_pem, Issuer.chain_pem).where(Issuer.id == issuer_id)
        ).one_or_none()
    if row is None:
        raise NotFound(f"issuer {issuer_id} not found")
    certificate_pem, chain_pem = row
    certificates = IssuerCertificates(
        x509.load_pem_x509_certificate(certificate_pem.encode()),
        tuple(x509.load_pem_x509_certificates(chain_pem.encode())) if chain_pem else (),
    )
    services.cache_certificates(issuer_id, certificates, version)
    return certificates


class UnreadableCertificate(Exception):
    """A certificate OpenSSL verified that cryptography cannot parse; ``detail`` says which."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def revoked_ca_among(
    services: Services, cas: Sequence[bytes], connection: Connection | None = None
) -> str | None:
    """The id of a revoked issuer whose certificate is one of ``cas`` (DER), else None.

    Or, for one revoked for a compromise, whose key one of ``cas`` holds: a chain verified
    through another certificate of that key (cross-signed by a CA certctl does not hold, so
    on no CRL here) is the compromised key's all the same. For a client certificate's
    verified chain, on each request it authenticates that is not remembered: one read of the
    revoked issuers (few, usually none), on ``connection`` if given.
    """
    wanted = set(cas)
    compromised: dict[bytes, str] = {}
    for issuer_id, pem, reason in _revoked_issuer_pems(services, connection):
        _, der, key = _parsed_ca(pem)
        if der in wanted:
            return issuer_id
        if reason in _COMPROMISE:
            compromised.setdefault(key, issuer_id)
    if compromised:
        for der in cas:
            try:
                key = _spki(x509.load_der_x509_certificate(der))
            except (ValueError, x509.InvalidVersion):
                # OpenSSL verified it; cryptography cannot read it (BER, version 4, a
                # PrintableString with "_" ...), so whether it holds a compromised key
                # cannot be told: refused rather than a 500, or trusted unchecked.
                raise UnreadableCertificate(
                    "a CA of its verified chain is not a readable X.509 certificate, and a "
                    "compromised issuer key could be in it"
                ) from None
            except UnsupportedAlgorithm as exc:
                # Read, but its key is of a kind cryptography lacks (a curve such as
                # prime239v1 or sect283k1, which OpenSSL verifies chains through). No issuer
                # key of certctl's is, but a compromised one given in an encoding only
                # OpenSSL reads would look the same: refused as an unreadable certificate.
                raise UnreadableCertificate(
                    f"a CA of its verified chain holds a key certctl cannot read ({exc}), and "
                    "a compromised issuer key could be it"
                ) from None
            found = compromised.get(key)
            if found is not None:
                return found
    return None


# Core, on a connection: no ORM session (its construction, transaction and close cost more
# than the read, which usually finds no row).
_ISSUER_COLUMNS = Issuer.__table__.c
_REVOKED_ISSUERS = select(
    _ISSUER_COLUMNS.id, _ISSUER_COLUMNS.certificate_pem, _ISSUER_COLUMNS.revocation_reason
).where(_ISSUER_COLUMNS.revoked_at.is_not(None))
# The first revoked named, the same on every backend: a key's twins are revoked after it.
_REVOKED_ISSUERS = _REVOKED_ISSUERS.order_by(_ISSUER_COLUMNS.revoked_at, _ISSUER_COLUMNS.id)
_ISSUER_CERTIFICATES = select(_ISSUER_COLUMNS.certificate_pem)


def _revoked_issuer_pems(
    services: Services, connection: Connection | None
) -> list[tuple[str, str, str | None]]:
    # Read for each client certificate whose answer is not remembered (a revocation on
    # another replica counts at once); usually no row. Their parsing is cached: the same few
    # PEMs every time.
    with _connected(services, connection) as conn:
        rows = conn.execute(_REVOKED_ISSUERS).all()
    return [(str(issuer_id), pem, reason) for issuer_id, pem, reason in rows]


def _connected(
    services: Services, connection: Connection | None
) -> contextlib.AbstractContextManager[Connection]:
    """``connection`` itself (left open), else a pooled connection of its own (closed after)."""
    if connection is not None:
        return contextlib.nullcontext(connection)
    return services.engine.connect()


@functools.lru_cache(maxsize=256)
def _parsed_ca(pem: str) -> tuple[x509.Certificate, bytes, bytes]:
    """An issuer's certificate, its DER and its key's (SPKI), parsed once per process."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert, cert.public_bytes(serialization.Encoding.DER), _spki(cert)


def revoked_issuer_of(
    services: Services, certificate_der: bytes, connection: Connection | None = None
) -> str | None:
    """The id of a revoked issuer above ``certificate_der`` (DER) among certctl's, else None.

    For a client certificate whose verified chain is unknown (a resumed TLS session, which
    keeps the peer's certificate but not its chain). A certificate's signer is the CA whose
    key verifies its signature, tried when its issuer name, or else its
    authorityKeyIdentifier (the CA's subjectKeyIdentifier), points at that CA. The revoked
    issuers are checked as the signer first; then the walk goes up through certctl's
    issuers (the one that signed it, the one that signed that one …), so a certificate
    under a CA the revoked one signed is found too when certctl holds that CA. A key
    revoked for a compromise is also tried on each certificate of the path itself, under
    whatever name it signed. One below a CA certctl does not hold (minted with a
    compromised key) is found by the full handshake's chain only (:func:`revoked_ca_among`).
    Its reads use ``connection`` if given.
    """
    revoked = _revoked_issuer_pems(services, connection)
    if not revoked:
        return None  # the usual case: nothing to parse, no other read
    cert = x509.load_der_x509_certificate(certificate_der)
    revoked_cas = [(issuer_id, _parsed_ca(pem)[0]) for issuer_id, pem, _reason in revoked]
    # A compromise is the key's: a certificate it signed under another name and key
    # identifier (a twin root, which no CRL lists) is tried against the key itself.
    compromised = [
        (issuer_id, ca.public_key())
        for (issuer_id, ca), (_, _, reason) in zip(revoked_cas, revoked, strict=True)
        if reason in _COMPROMISE
    ]
    found = _revoked_signer(cert, revoked_cas, compromised)
    if found is not None:
        return found
    # Deeper: a second read (of every issuer's certificate, few rows, each parsed once per
    # process), only while some issuer is revoked and the answer is not remembered.
    with _connected(services, connection) as conn:
        rows = conn.execute(_ISSUER_CERTIFICATES).all()
    issuers = [_parsed_ca(pem) for (pem,) in rows]
    seen = {certificate_der}
    below = [cert]
    while below:  # breadth first; ``seen`` ends it (a self-signed root signs itself)
        above = []
        for signed in below:
            # Every issuer that signed it: the same CA may be held twice, or renewed on its key.
            for ca, der, _key in issuers:
                if der in seen or not _signed_by(signed, ca):
                    continue
                seen.add(der)
                found = _revoked_signer(ca, revoked_cas, compromised)
                if found is not None:
                    return found
                above.append(ca)
        below = above
    return None


def _revoked_signer(
    cert: x509.Certificate,
    revoked_cas: Sequence[tuple[str, x509.Certificate]],
    compromised: Sequence[tuple[str, object]],
) -> str | None:
    """The id of the revoked issuer that signed ``cert``, or whose compromised key did."""
    found = _signer_among(cert, revoked_cas)
    if found is not None:
        return found
    # One verification per compromised key (few), only when the answer is not remembered.
    return next((i for i, key in compromised if _signature_verifies(cert, key)), None)


def _signer_among(
    cert: x509.Certificate, cas: Sequence[tuple[str, x509.Certificate]]
) -> str | None:
    """The id of the first of ``cas`` that signed ``cert``, else None."""
    for issuer_id, ca in cas:
        if _signed_by(cert, ca):
            return issuer_id
    return None


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca``'s key signed ``cert``: its signature verified with ``ca``'s key.

    Key identifiers and names only pick the candidates: both are what the maker of a
    certificate wrote (an imported CA may claim any subjectKeyIdentifier). Matched by key
    identifier alone, a root imported with another issuer's SKI made that issuer's
    certificates "below" whatever its AKI named; and a compromised key's certificate with an
    AKI naming another key was below no revoked issuer.
    """
    if cert.issuer == ca.subject:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            # The same name on another key; or a signature or key cryptography cannot check
            # (UnsupportedAlgorithm: a CA on a curve such as prime239v1): not shown to be
            # signed by it, so "no" rather than a 500 for the request being authenticated.
            return False
        return True
    aki = _key_identifier(cert, x509.AuthorityKeyIdentifier)
    if aki is None or aki != _key_identifier(ca, x509.SubjectKeyIdentifier):
        return False
    try:
        key = ca.public_key()
    except UnsupportedAlgorithm:
        return False  # as above: a key cryptography cannot load verifies nothing here
    # Another name for the same key (a twin re-issued or cross-signed under a new subject):
    # the key is what was revoked, so its signature is checked without the name.
    return _signature_verifies(cert, key)


def _signature_verifies(cert: x509.Certificate, key: object) -> bool:
    try:
        verified = signature_verifies(
            key,
            cert.signature,
            cert.tbs_certificate_bytes,
            cert.signature_algorithm_parameters,
            cert.signature_hash_algorithm,
            cert.signature_algorithm_oid,
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False  # an algorithm cryptography cannot name (an imported CA's odd one)
    return bool(verified)  # None: a pairing no issuer key here signs with


def _key_identifier(
    cert: x509.Certificate,
    kind: type[x509.AuthorityKeyIdentifier] | type[x509.SubjectKeyIdentifier],
) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_class(kind).value
    except (x509.ExtensionNotFound, ValueError):
        # ValueError: extensions OpenSSL accepted but cryptography cannot parse (a duplicate,
        # a malformed one): judged by issuer name and signature instead, never a 500.
        return None
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest
    return value.key_identifier  # None: an AKI naming the issuer and serial only


def _may_be_revoked_above(cert: x509.Certificate, chain: Sequence[x509.Certificate]) -> bool:
    # A root's certificate is on no CRL (only intermediates are revoked) and has no chain:
    # the service CAs, checked on every pass, cost no query.
    return bool(chain) or cert.issuer != cert.subject


def renew_root_issuer(
    services: Services,
    issuer_id: str,
    ca: CertificateAuthority,
    *,
    validity: timedelta,
    now: datetime,
) -> tuple[CertificateAuthority, bool]:
    """Re-sign root issuer ``issuer_id``'s certificate with its own key, for ``validity``.

    Same key, same subject, same SKI (and path length): certificates signed under the old CA
    certificate verify under the new one and the other way round, so clients holding either
    ``ca.crt`` keep working, and CRLs stay valid for both. ``ca`` is the caller's loaded copy;
    when the stored certificate is no longer that one (another process or replica renewed it
    first), nothing is signed and the stored one is returned.

    Returns:
        The CA as now stored, and whether this call renewed it.

    Raises:
        InvalidRequest: ``ca`` is not self-signed (an intermediate needs its parent).
    """
    if ca.chain or ca.certificate.issuer != ca.certificate.subject:
        raise InvalidRequest(f"issuer {issuer_id} is not a root CA: renew it from its parent")
    try:
        path_length = ca.certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value.path_length
    except x509.ExtensionNotFound:
        path_length = None
    renewed = create_root_ca(
        ca.private_key,
        ca.certificate.subject,
        validity=validity,
        now=now,
        path_length=path_length,
    )
    wrote = False
    with services.sessions.begin() as session:
        row = session.get(Issuer, issuer_id, with_for_update=True)
        if row is None:
            raise NotFound(f"issuer {issuer_id} not found")
        if x509.load_pem_x509_certificate(row.certificate_pem.encode()) == ca.certificate:
            wrote = True
            row.certificate_pem = certs_to_pem([renewed.certificate]).decode()
            row.not_after = renewed.certificate.not_valid_after_utc
            record(
                session,
                at=now,
                actor="system",
                action="issuer.renew",
                target=f"{issuer_id} until {row.not_after.isoformat()}",
            )
    services.forget_issuer(issuer_id)
    return load_issuer(services, issuer_id), wrote


def forget_if_changed(services: Services, issuer_id: str) -> None:
    """Drop the cached CA ``issuer_id`` if the stored one is another or gone (one lookup).

    For callers about to rely on one CA's cache now, not at the next periodic
    ``refresh_cached_issuers``: another process may have deleted or replaced it.
    """
    cached = services.cached_issuer(issuer_id)
    if cached is None:
        return
    # A root is checked for no compromised key here (refresh_cached_issuers does): the
    # managed services' roots calling this each pass hold keys certctl generated for them.
    with services.sessions() as session:
        stored = session.execute(
            select(Issuer.not_after, Issuer.revoked_at, Issuer.revocation_reason).where(
                Issuer.id == issuer_id
            )
        ).first()
        revoked = (
            _revoked_certificates(session)
            if _may_be_revoked_above(cached.certificate, cached.chain)
            else []
        )
    if (
        stored is None
        or _changed(services, issuer_id, cached, *stored)
        or _newly_below_revoked(services, issuer_id, cached, revoked)
    ):
        services.forget_issuer(issuer_id)


def _changed(
    services: Services,
    issuer_id: str,
    cached: CertificateAuthority,
    not_after: datetime | None,
    revoked_at: datetime | None,
    revocation_reason: str | None,
) -> bool:
    """Whether the stored issuer differs from the cached one: renewed, or revoked.

    Or its revocation's reason changed (to keyCompromise): its refusals name the reason.
    """
    revoked = services.issuer_revocation(issuer_id)
    own = revoked if revoked is not None and revoked.by == issuer_id else None
    stored = None if revoked_at is None else (revoked_at, revocation_reason or "unspecified")
    return not_after != cached.certificate.not_valid_after_utc or stored != (
        (own.revoked_at, own.reason) if own else None
    )


def _revoked_certificates(session: Session) -> list[tuple[x509.Certificate, bytes | None]]:
    """The certificates of the revoked issuers (few), with their key (SPKI) if compromised."""
    rows = session.execute(
        select(Issuer.certificate_pem, Issuer.revocation_reason).where(
            Issuer.revoked_at.is_not(None)
        )
    )
    # Parsed once per process, as for mTLS.
    return [
        (_parsed_ca(pem)[0], _parsed_ca(pem)[2] if reason in _COMPROMISE else None)
        for pem, reason in rows
    ]


def _newly_below_revoked(
    services: Services,
    issuer_id: str,
    ca: CertificateAuthority,
    revoked: list[tuple[x509.Certificate, bytes | None]],
) -> bool:
    """Whether cached ``ca`` is not yet known to be (below) a revoked CA, but now is.

    Or to hold a key revoked for a compromise under another certificate (or be below one).
    """
    if services.issuer_revocation(issuer_id) is not None:
        return False
    keys: set[bytes] | None = None
    for cert, compromised_key in revoked:
        if cert == ca.certificate or cert in ca.chain:
            return True
        if compromised_key is not None:
            if keys is None:
                keys = {_spki(c) for c in (ca.certificate, *ca.chain)}
            if compromised_key in keys or _top_signed_by(ca.certificate, ca.chain, cert):
                return True
    return False


def refresh_cached_issuers(services: Services) -> list[str]:
    """Drop cached CAs and certificates whose stored certificate changed (renewed elsewhere).

    Every process caches unwrapped issuer keys; a renewal in one of them (the leader, another
    worker, another replica on PostgreSQL) must reach the others before their cached
    certificate runs out, and a revocation before they issue much more from a revoked CA (a
    reason changed to keyCompromise too: their refusals name it). Returns the ids dropped.
    """
    # The certificates cached for the public CA routes too: a replica must not serve a
    # renewed or deleted CA's certificate for longer than this check's period.
    cached = {i: c.certificate for i, c in services.cached_certificates_only().items()}
    cached_cas = services.cached_issuers()
    cached.update((i, ca.certificate) for i, ca in cached_cas.items())
    if not cached:
        return []
    with services.sessions() as session:
        rows = session.execute(
            select(Issuer.id, Issuer.not_after, Issuer.revoked_at, Issuer.revocation_reason).where(
                Issuer.id.in_(list(cached))
            )
        )
        stored: dict[str, tuple[datetime | None, datetime | None, str | None]] = {
            issuer_id: (not_after, revoked_at, reason)
            for issuer_id, not_after, revoked_at, reason in rows
        }
        # An intermediate below one revoked elsewhere is dropped too (reloaded as refusing),
        # and any CA holding a key revoked elsewhere for a compromise, a root too (one read a
        # minute).
        revoked = _revoked_certificates(session) if cached_cas else []
    stale = []
    gone = (None, None, None)
    for issuer_id, certificate in cached.items():
        ca = cached_cas.get(issuer_id)
        if ca is None:  # certificates alone, for the public routes: renewed or deleted?
            changed = stored.get(issuer_id, gone)[0] != certificate.not_valid_after_utc
        else:
            changed = _changed(
                services, issuer_id, ca, *stored.get(issuer_id, gone)
            ) or _newly_below_revoked(services, issuer_id, ca, revoked)
        if changed:
            services.forget_issuer(issuer_id)
            stale.append(issuer_id)
    return stale


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


_CERTIFICATES: Table = CertificateRecord.__table__  # type: ignore[assignment]
_AUDIT_EVENTS: Table = AuditEvent.__table__  # type: ignore[assignment]


def _new_rows(
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
        try:
            ext = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            sans = SubjectAltNames.from_extension(ext.value)
        except x509.ExtensionNotFound:
            sans = SubjectAltNames()
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
    )
    return record, ((_CERTIFICATES, row), (_AUDIT_EVENTS, audit_row))


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
        ISSUANCE.labels(self.issuer_id, "success").inc()
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
) -> PendingIssue:
    """``issue_from_csr`` up to (not including) the database write."""
    caller.require("cert.issue")
    started = time.perf_counter()
    prof = _leaf_profile(profile)
    ca, revoked = load_issuer_state(services, _not_managed(issuer_id))
    now = services.clock()
    try:
        _unexpired(ca, issuer_id, now)
        _unrevoked(revoked, issuer_id)
        csr, public_key = load_csr_with_key(csr_pem.encode())  # verifies the signature
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
        )
    except (InvalidRequest, Conflict):
        ISSUANCE.labels(issuer_id, "error").inc()
        raise
    _check_server_names(services, caller, ca, prof, issued)  # the CSR's key is the caller's
    record, rows = _new_rows(services, caller, issuer_id, issued, prof.name, None)
    return PendingIssue(
        record, rows, issuer_id, _chain_pem(ca), None, tuple(issued.warnings), started
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


def _chain_pem(ca: CertificateAuthority) -> str:
    return ca.chain_below_root_pem.decode()  # encoded once per CA


def _leaf_profile(name: str) -> Any:
    prof = get_profile(name)
    if prof.is_ca:
        raise InvalidRequest(f"{name}: use POST /api/v1/issuers for CA certificates")
    return prof


_EVERY_PERMISSION = frozenset(PERMISSIONS)


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
        stored.append(_parsed_ca(certificate_pem)[0])
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
    root = ca.root
    candidates = [*served[1:], ca.certificate, *ca.chain]
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


def _check_server_names(
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
    ca, revoked = load_issuer_state(services, _not_managed(issuer_id))
    now = services.clock()
    try:
        _unexpired(ca, issuer_id, now)  # before the key: an RSA key takes up to seconds
        _unrevoked(revoked, issuer_id)
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
            name_hint=_API_HINT,
        )
    except (InvalidRequest, Conflict):
        # Counted as prepare_from_csr counts it: the issuer refused to sign (e.g. expired).
        ISSUANCE.labels(issuer_id, "error").inc()
        raise
    _check_server_names(services, caller, ca, prof, issued)
    key_pem = key_to_pem(key)
    record, rows = _new_rows(services, caller, issuer_id, issued, prof.name, key_pem)
    return PendingIssue(
        record, rows, issuer_id, _chain_pem(ca), key_pem.decode(), tuple(issued.warnings), started
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


class _HasExpiry(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def renewed_by(self) -> str | None: ...


class CertificateView(Protocol):
    """The public columns of a stored certificate (an ORM object or a Core row)."""

    id: str
    issuer_id: str
    serial: str
    common_name: str
    subject: str
    sans: dict[str, list[str]]
    profile: str
    status: str
    not_before: datetime
    not_after: datetime
    certificate_pem: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revocation_reason: str | None
    renewed_from: str | None
    renewed_by: str | None


def effective_status(row: _HasExpiry, now: datetime) -> str:
    """``revoked``, ``expired``, ``expiring`` (within 30 days, not renewed) or ``active``."""
    if row.status == "revoked":
        return "revoked"
    if row.not_after <= now:
        return "expired"
    if row.not_after - now <= EXPIRING_WINDOW and row.renewed_by is None:
        return "expiring"
    return "active"


def list_certificates(
    services: Services,
    caller: Principal,
    *,
    status: str | None,
    issuer: str | None,
    expiring_within: timedelta | None,
    q: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[CertificateRecord], str | None]:
    """Certificates newest first, keyset-paginated by id."""
    caller.require("cert.read")
    now = services.clock()
    query = select(CertificateRecord).order_by(CertificateRecord.id.desc()).limit(limit + 1)
    if cursor is not None:
        query = query.where(CertificateRecord.id < cursor)
    if issuer is not None:
        query = query.where(CertificateRecord.issuer_id == issuer)
    if status == "revoked":
        query = query.where(CertificateRecord.status == "revoked")
    elif status == "expired":
        query = query.where(
            and_(CertificateRecord.status == "active", CertificateRecord.not_after <= now)
        )
    elif status == "expiring":
        query = query.where(
            and_(
                CertificateRecord.status == "active",
                CertificateRecord.not_after > now,
                CertificateRecord.not_after <= now + EXPIRING_WINDOW,
                CertificateRecord.renewed_by.is_(None),
            )
        )
    elif status == "active":
        query = query.where(
            and_(
                CertificateRecord.status == "active",
                CertificateRecord.not_after > now,
                or_(
                    CertificateRecord.not_after > now + EXPIRING_WINDOW,
                    CertificateRecord.renewed_by.is_not(None),
                ),
            )
        )
    elif status is not None:
        raise InvalidRequest(f"{status}: unknown status (active, expiring, expired, revoked)")
    if expiring_within is not None:
        query = query.where(
            and_(
                CertificateRecord.status == "active",
                CertificateRecord.not_after <= now + expiring_within,
                CertificateRecord.renewed_by.is_(None),  # renewed already: nothing to do
            )
        )
    if q:
        # q is a substring, not a pattern: "_" and "%" match themselves.
        like = contains_pattern(q.lower())
        # An ASCII q can only match ASCII letters, which the built-in lower() folds: the
        # Python function SQLite needs for the others is called per row only when needed.
        lower = func.lower if q.isascii() else unicode_lower
        query = query.where(
            or_(
                lower(CertificateRecord.common_name).like(like, escape="\\"),
                lower(CertificateRecord.subject).like(like, escape="\\"),
                CertificateRecord.serial.in_(_serial_forms(q)),
                # Every name the certificate covers: its SAN values as stored (A-labels,
                # canonical IP addresses), which q in another spelling is turned into.
                *(
                    json_string_contains(CertificateRecord.sans, form, SAN_KINDS)
                    for form in san_search_forms(q)
                ),
            )
        )
    with services.sessions() as session:
        rows = list(session.scalars(query))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


_CERT_COLUMNS = [c for c in _CERTIFICATES.c if c.key != "wrapped_key"]
_CERT_BY_ID = select(*_CERT_COLUMNS).where(_CERTIFICATES.c.id == bindparam("cert_id"))


def get_certificate(services: Services, caller: Principal, cert_id: str) -> CertificateView:
    """One certificate by id (its public columns).

    A Core row, not an ORM object: loading through a Session cost more than the rest of
    the request together (``docs/performance.md``).
    """
    caller.require("cert.read")
    with services.engine.connect() as connection:
        row = connection.execute(_CERT_BY_ID, {"cert_id": cert_id}).first()
    if row is None:
        raise NotFound(f"certificate {cert_id} not found")
    return cast(CertificateView, row)


def _load_certificate(services: Services, cert_id: str) -> CertificateRecord:
    with services.sessions() as session:
        row = session.get(CertificateRecord, cert_id)
    if row is None:
        raise NotFound(f"certificate {cert_id} not found")
    return row


def _check_reason(reason: str | None) -> str:
    """``reason``, ``unspecified`` when left out; 400 for one outside REVOCATION_REASONS."""
    reason = reason or "unspecified"
    if reason not in _REASONS:
        choices = ", ".join(REVOCATION_REASONS)
        raise InvalidRequest(f"{reason}: unknown revocation reason (one of {choices})")
    return reason


def revoke_issuer(
    services: Services, caller: Principal, issuer_id: str, reason: str | None
) -> Issuer:
    """Revoke intermediate issuer ``issuer_id``: on its parent's next CRL, it issues no more.

    Nothing more: no certificate, renewal or intermediate below it. Its own CRL stays
    served, so clients can still check what it issued before. Other processes and replicas
    that cached it drop it at their next issuer refresh. An issuer already revoked for a
    reason other than a compromise gets keyCompromise or cACompromise as its reason, its
    revocation date kept, as a certificate gets keyCompromise (CA/B Forum Baseline
    Requirements 4.9.1.1, Mozilla Root Store Policy 6.1.1: a reason may later become
    keyCompromise); no other reason replaces one.

    Raises:
        NotFound: no issuer ``issuer_id``.
        InvalidRequest: ``reason`` is not one of REVOCATION_REASONS.
        Conflict: a managed service's CA, a root (no CRL above it can list it), an issuer
            revoked already (unless for no compromise, and this one is keyCompromise or
            cACompromise), or one whose parent certctl does not hold.
    """
    caller.require("issuer.revoke")
    reason = _check_reason(reason)
    now = services.clock()
    with services.sessions.begin() as session:
        row = session.get(Issuer, issuer_id)
        if row is None:
            raise NotFound(f"issuer {issuer_id} not found")
        if issuer_id.startswith(MANAGED_ISSUER_PREFIX):
            service = issuer_id.removeprefix(MANAGED_ISSUER_PREFIX)
            raise Conflict(
                f"issuer {issuer_id} is the CA of managed service {service}, which only its "
                "reconciler manages: it cannot be revoked; delete the service to retire it"
            )
        cert = x509.load_pem_x509_certificate(row.certificate_pem.encode())
        if cert.issuer == cert.subject and not row.chain_pem:
            raise Conflict(
                f"issuer {issuer_id} is a root CA (self-signed): no CRL above it can list it; "
                "remove its certificate from the clients' trust stores instead"
            )
        before: str | None = None  # the reason keyCompromise replaced
        newly_under: str | None = None  # the parent whose CRL lists it from now on
        if row.revoked_at is not None:
            before = _upgrade_to_key_compromise(session, issuer_id, reason)
        else:
            parent_id = row.parent_id or _parent_of(session, issuer_id, cert)
            if parent_id is None:
                raise Conflict(
                    f"issuer {issuer_id} was signed by {cert.issuer.rfc4514_string()}, which "
                    "is not a certctl issuer: no CRL here can list it; revoke it at that CA"
                )
            # Only if nobody revoked it since it was read (SQLite takes no row lock on a
            # read): the first revocation, its time and reason, stands.
            revoked = session.connection().execute(
                update(_ISSUERS)
                .where(_ISSUERS.c.id == issuer_id, _ISSUERS.c.revoked_at.is_(None))
                .values(revoked_at=now, revocation_reason=reason, parent_id=parent_id)
            )
            if revoked.rowcount == 1:
                newly_under = parent_id
            else:  # revoked meanwhile: keyCompromise may still replace its reason
                before = _upgrade_to_key_compromise(session, issuer_id, reason)
        twins: list[tuple[str, str | None]] = []
        if reason in _COMPROMISE:  # stored as its reason now (else a 409 above)
            twins = _revoke_twins(session, issuer_id, cert, reason, now)
        detail = reason
        if before is not None:  # worded as for a certificate's (_revoke_key)
            detail = f"{reason} (reason was {before}, revocation date kept)"
        if twins:
            detail += f"; also revoked, the same key: {', '.join(t for t, _ in twins)}"
        record(
            session,
            at=now,
            actor=caller.actor_id,
            action="issuer.revoke",
            target=issuer_id,
            detail=detail,
            source=caller.source,
        )
        session.expire_all()
        session.refresh(row)
    # Dropped here even for a changed reason: the cached revocation names it in refusals.
    services.forget_issuer(issuer_id)  # reloaded as revoked at its next use here
    key = _spki(cert) if reason in _COMPROMISE else None
    for other_id, ca in services.cached_issuers().items():
        if (
            cert == ca.certificate
            or cert in ca.chain
            or (
                key is not None
                and (
                    key in {_spki(c) for c in (ca.certificate, *ca.chain)}
                    or _top_signed_by(ca.certificate, ca.chain, cert)
                )
            )
        ):
            # Below it, it imported again, or its compromised key (or below that): reloaded
            # as refusing too.
            services.forget_issuer(other_id)
    for parent_id in (newly_under, *(p for _, p in twins)):
        if parent_id is not None:  # a changed reason is no new revocation
            REVOCATIONS.labels(parent_id).inc()  # a certificate the parent signed, now revoked
    return row


def _revoke_twins(
    session: Session, issuer_id: str, cert: x509.Certificate, reason: str, now: datetime
) -> list[tuple[str, str | None]]:
    """Revoke, for ``reason`` (a compromise), the other issuers' certificates of ``cert``'s key.

    Re-issued or cross-signed certificates of the compromised key whose parent certctl holds:
    that parent's CRL lists them from now on (RFC 5280 5.3.1: the key's certificates are
    all revoked, as ``_revoke_key`` does for a certificate's key). One revoked already for
    another reason gets this one, its date kept. Those signed elsewhere (or roots) no CRL
    here can list: they refuse to issue all the same (``_revoked_above`` matches the key).

    Returns:
        (id, the parent that lists it from now on, None for a changed reason) per issuer.
    """
    key = _spki(cert)
    done: list[tuple[str, str | None]] = []
    connection = session.connection()
    rows = connection.execute(
        select(
            _ISSUERS.c.id, _ISSUERS.c.certificate_pem, _ISSUERS.c.chain_pem, _ISSUERS.c.parent_id
        )
        .where(_ISSUERS.c.id != issuer_id)
        .order_by(_ISSUERS.c.id)
    ).all()
    for twin_id, pem, chain_pem, stored_parent in rows:
        twin = _parsed_ca(pem)[0]
        if twin == cert or _parsed_ca(pem)[2] != key or twin_id.startswith(MANAGED_ISSUER_PREFIX):
            continue  # the same certificate is on the CRL once already
        if twin.issuer == twin.subject and not chain_pem:
            continue  # a root: on no CRL
        parent_id = stored_parent or _parent_of(session, twin_id, twin)
        if parent_id is None:
            continue  # signed elsewhere: revoke it at that CA
        revoked = connection.execute(
            update(_ISSUERS)
            .where(_ISSUERS.c.id == twin_id, _ISSUERS.c.revoked_at.is_(None))
            .values(revoked_at=now, revocation_reason=reason, parent_id=parent_id)
        )
        if revoked.rowcount == 1:
            done.append((twin_id, parent_id))
            continue
        upgraded = connection.execute(
            update(_ISSUERS)
            .where(
                _ISSUERS.c.id == twin_id,
                or_(
                    _ISSUERS.c.revocation_reason.is_(None),
                    _ISSUERS.c.revocation_reason.not_in(_COMPROMISE),
                ),
            )
            .values(revocation_reason=reason)
        )
        if upgraded.rowcount == 1:
            done.append((twin_id, None))
    return done


# The reasons that say an issuer's key is compromised: keyCompromise, and cACompromise, RFC
# 5280 5.3.1's name for it on a CA certificate (what the README suggests for issuers).
_COMPROMISE = ("keyCompromise", "cACompromise")


def _upgrade_to_key_compromise(session: Session, issuer_id: str, reason: str) -> str:
    """Give revoked issuer ``issuer_id`` ``reason``, a compromise, as its reason, its date kept.

    Returns:
        Its reason before.

    Raises:
        Conflict: ``reason`` is no compromise, or the issuer was revoked for one already.
    """
    connection = session.connection()
    revoked_at, before = connection.execute(
        select(_ISSUERS.c.revoked_at, _ISSUERS.c.revocation_reason).where(
            _ISSUERS.c.id == issuer_id
        )
    ).one()
    before = before or "unspecified"
    if reason in _COMPROMISE and before not in _COMPROMISE:
        # Only if its reason is still the one read: two upgrades at once write one row and
        # one audit event; the other gets the 409 below.
        changed = connection.execute(
            update(_ISSUERS)
            .where(
                _ISSUERS.c.id == issuer_id,
                _ISSUERS.c.revoked_at.is_not(None),
                or_(
                    _ISSUERS.c.revocation_reason.is_(None),
                    _ISSUERS.c.revocation_reason.not_in(_COMPROMISE),
                ),
            )
            .values(revocation_reason=reason)
        )
        if changed.rowcount == 1:
            return str(before)
        before = connection.execute(
            select(_ISSUERS.c.revocation_reason).where(_ISSUERS.c.id == issuer_id)
        ).scalar_one()
    held = (
        ", and it was revoked for a compromise already"
        if before in _COMPROMISE
        else " (its date stays)"
    )
    raise Conflict(
        f"issuer {issuer_id} is already revoked ({before}, on {revoked_at:%Y-%m-%d %H:%M}Z): "
        f"only keyCompromise or cACompromise can replace a revocation's reason{held}"
    )


def _parent_of(session: Session, issuer_id: str, cert: x509.Certificate) -> str | None:
    """The issuer whose key signed ``cert`` (an import, or created before migration 0010)."""
    candidates = session.execute(
        select(Issuer.id, Issuer.certificate_pem)
        .where(Issuer.subject == cert.issuer.rfc4514_string(), Issuer.id != issuer_id)
        .order_by(Issuer.id)
    )
    for candidate_id, pem in candidates:
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(pem.encode()))
        except (ValueError, TypeError, InvalidSignature):
            continue  # the same name on another key
        return str(candidate_id)
    return None


@dataclass(frozen=True)
class Revocation:
    """A revoked certificate, and the others revoked with it (``also_revoked``, by id).

    A ``keyCompromise`` revocation also revokes every other certificate certctl issued for
    the same key: the renewals of a CSR-issued certificate certify the requester's key again.
    """

    certificate: CertificateRecord
    also_revoked: tuple[str, ...]


def revoke_certificate(
    services: Services, caller: Principal, cert_id: str, reason: str | None
) -> Revocation:
    """Revoke a certificate; it appears on its issuer's next CRL.

    With ``keyCompromise``, the unrevoked certificates of the same key (its renewal chain
    while renewals kept the CSR's key) are revoked too, in the same transaction: the key is
    what was compromised, and a successor certifying it would still be trusted. A
    certificate already revoked for another reason gets keyCompromise as its reason, its
    revocation date kept (as Let's Encrypt's Boulder does), and the rest of its key is
    revoked: a client checking the reason learns the key is not to be trusted.
    """
    caller.require("cert.revoke")
    reason = _check_reason(reason)
    now = services.clock()
    also: list[str] = []
    with services.sessions.begin() as session:
        # One revocation at a time across workers and replicas: two revoking links of one
        # chain (keyCompromise takes them all) each held its own row and waited for the
        # other's, and PostgreSQL aborted one as a deadlock (a 503 to its client).
        lock_for_write(session, REVOCATION_LOCK)
        row = session.get(CertificateRecord, cert_id)
        if row is None:
            raise NotFound(f"certificate {cert_id} not found")
        if reason == "keyCompromise":
            also, revoked = _revoke_key(session, caller, row, now)
        elif row.status == "revoked" or not _revoke_one(session.connection(), row, reason, now):
            raise Conflict(f"certificate {cert_id} is already revoked")
        else:
            revoked = 1
            record(
                session,
                at=now,
                actor=caller.actor_id,
                action="certificate.revoke",
                target=cert_id,
                detail=reason,
                source=caller.source,
            )
        session.expire_all()
        session.refresh(row)
    REVOCATIONS.labels(row.issuer_id).inc(revoked)  # a changed reason is no new revocation
    return Revocation(row, tuple(also))


# Ids per statement in the bulk updates of a keyCompromise revocation: far below SQLite's
# 32766 bound variables and PostgreSQL's 65535 parameters.
_BULK = 500


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _BULK):
        yield ids[start : start + _BULK]


def _revoke_key(
    session: Session, caller: Principal, row: CertificateRecord, now: datetime
) -> tuple[list[str], int]:
    """Revoke ``row`` and the other certificates of its key for keyCompromise, and audit it.

    Those already revoked for another reason keep their revocation date and get
    keyCompromise as their reason. A few statements per pass, whatever the length of the
    chain: each certificate revoked one at a time (and its predecessors' ``renewed_by``
    handed over one link at a time) took 9 s for a chain of 256 renewals on PostgreSQL. The
    chain is walked again after each pass until it holds nothing new: a renewal that another
    worker or replica committed after a walk listed its predecessor, while this transaction
    waited for that predecessor's row lock (PostgreSQL), shows up only then; once a link is
    revoked here, no renewal of it can commit any more.

    Returns:
        The ids of the other certificates revoked or given keyCompromise, and how many
        certificates were newly revoked (``row`` included).

    Raises:
        Conflict: ``row`` is already revoked for keyCompromise, or its key has more
            certificates than one revocation takes (then nothing is revoked).
    """
    if row.status == "revoked" and row.revocation_reason == "keyCompromise":
        raise Conflict(f"certificate {row.id} is already revoked (keyCompromise)")
    connection = session.connection()
    done: set[str] = set()
    changed: dict[str, str | None] = {}  # id → reason before (None: it was not revoked)
    while fresh := [i for i in (row.id, *_same_key(connection, row)) if i not in done]:
        done.update(fresh)
        changed.update(_revoke_all(connection, fresh, now))
    if row.wrapped_key is None:
        # Every certificate of the key is revoked now, and a renewed_by only ever names a
        # successor of the same key: none of them is renewed by a live certificate any more.
        for ids in _chunks(sorted(done)):
            connection.execute(
                update(_CERTIFICATES)
                .where(_CERTIFICATES.c.id.in_(ids), _CERTIFICATES.c.renewed_by.is_not(None))
                .values(renewed_by=None)
            )
    elif changed.get(row.id, "") is None:
        # A key of its own: its renewals have other keys and stay valid; its predecessors
        # fall back to them as for any other reason.
        _hand_over(connection, row)

    def detail(cert_id: str) -> str:
        said = "" if cert_id == row.id else f"same key as {row.id}"
        before = changed[cert_id]
        if before is not None:
            said += f"{'; ' if said else ''}reason was {before}, revocation date kept"
        return f"keyCompromise ({said})" if said else "keyCompromise"

    connection.execute(
        insert(_AUDIT_EVENTS),
        [
            event_values(
                at=now,
                actor=caller.actor_id,
                action="certificate.revoke",
                target=cert_id,
                detail=detail(cert_id),
                source=caller.source,
            )
            for cert_id in (row.id, *sorted(i for i in changed if i != row.id))
        ],
    )
    revoked = sum(1 for before in changed.values() if before is None)
    return sorted(i for i in changed if i != row.id), revoked


def _revoke_all(connection: Connection, ids: list[str], now: datetime) -> dict[str, str | None]:
    """Revoke the certificates among ``ids`` for keyCompromise.

    The unrevoked ones are revoked now; those revoked for another reason keep their
    revocation date and get keyCompromise: RFC 5280 5.3.1 and the CA/B Forum's Baseline
    Requirements 7.2.2 want the most appropriate reason on the CRL, and relying parties
    that treat keyCompromise apart (back-dating trust decisions) must see it. Read, then
    written, under REVOCATION_LOCK: no other revocation runs meanwhile, and a renewal
    changes no status.

    Returns:
        Each certificate changed, with its reason before (None: it was not revoked).
    """
    certs = _CERTIFICATES
    changed: dict[str, str | None] = {}
    for chunk in _chunks(ids):
        rows = connection.execute(
            select(certs.c.id, certs.c.status, certs.c.revocation_reason).where(
                certs.c.id.in_(chunk),
                or_(
                    certs.c.status != "revoked",
                    certs.c.revocation_reason.is_(None),
                    certs.c.revocation_reason != "keyCompromise",
                ),
            )
        )
        for cert_id, status, before in rows:
            changed[cert_id] = None if status != "revoked" else (before or "unspecified")
    fresh = [i for i, before in changed.items() if before is None]
    for chunk in _chunks(fresh):
        connection.execute(
            update(certs)
            .where(certs.c.id.in_(chunk))
            .values(status="revoked", revoked_at=now, revocation_reason="keyCompromise")
        )
    for chunk in _chunks([i for i, before in changed.items() if before is not None]):
        connection.execute(
            update(certs).where(certs.c.id.in_(chunk)).values(revocation_reason="keyCompromise")
        )
    return changed


def _revoke_one(connection: Connection, row: CertificateRecord, reason: str, now: datetime) -> bool:
    """Mark ``row`` revoked and hand its renewals back; False if someone revoked it first."""
    # Only if nobody revoked it since it was read: another worker or replica revoking it
    # at the same moment would otherwise be overwritten, its reason and time replaced
    # after a CRL carried them. The first revocation stands; this one is a 409.
    revoked = connection.execute(
        update(_CERTIFICATES)
        .where(_CERTIFICATES.c.id == row.id, _CERTIFICATES.c.status != "revoked")
        .values(status="revoked", revoked_at=now, revocation_reason=reason)
    )
    if revoked.rowcount != 1:
        return False
    _hand_over(connection, row)
    return True


def _hand_over(connection: Connection, row: CertificateRecord) -> None:
    """Point the certificates ``row`` (now revoked) stood for as renewed_by at a live one."""
    # A revoked successor renews nothing. Each certificate it stood for as renewed_by
    # (its predecessor, or one further up a chain that handed over to it) falls back to
    # its own latest unrevoked successor, as migration 0005 back-fills, else to the one
    # that renewed this certificate in turn (A → B → C, B revoked: C carries the same
    # names on), else needs renewing again.
    renewed_by = connection.execute(
        select(_CERTIFICATES.c.renewed_by).where(_CERTIFICATES.c.id == row.id)
    ).scalar()
    ancestors = _ancestors(connection, row.renewed_from)
    if ancestors:
        sibling = _CERTIFICATES.alias("sibling")
        latest = (  # correlated with the row being updated
            select(func.max(sibling.c.id))
            .where(sibling.c.renewed_from == _CERTIFICATES.c.id, sibling.c.status != "revoked")
            .scalar_subquery()
        )
        connection.execute(
            update(_CERTIFICATES)
            .where(_CERTIFICATES.c.id.in_(ancestors), _CERTIFICATES.c.renewed_by == row.id)
            .values(renewed_by=func.coalesce(latest, renewed_by))
        )


def _key_family() -> Select[Any]:
    """The certificates of one key, given one of them (``id``, CSR-issued): one statement.

    Up the chain while each link was CSR-issued, then down through every renewal that kept
    the key. UNION (not UNION ALL) ends the recursion at a row already found, so even a
    store edited by hand into a cycle is walked once.
    """
    certs = _CERTIFICATES
    start = select(sql_cast(bindparam("id"), certs.c.id.type).label("id"))
    up = start.cte("key_up", recursive=True)
    link = certs.alias("link")
    up = up.union(
        select(link.c.renewed_from).where(
            link.c.id == up.alias().c.id,
            link.c.wrapped_key.is_(None),
            link.c.renewed_from.is_not(None),
        )
    )
    down = select(up.c.id).cte("key_down", recursive=True)
    child = certs.alias("child")
    down = down.union(
        select(child.c.id).where(
            child.c.renewed_from == down.alias().c.id,
            child.c.renewed_from.is_not(None),  # the partial index's predicate
            child.c.wrapped_key.is_(None),
        )
    )
    return (
        select(certs.c.id)
        .where(certs.c.id.in_(select(down.c.id)), certs.c.id != bindparam("id"))
        .order_by(certs.c.id)
        .limit(bindparam("limit"))
    )


_KEY_FAMILY = _key_family()


def _same_key(connection: Connection, row: CertificateRecord) -> list[str]:
    """The other certificates certctl issued for ``row``'s key, oldest first.

    A certificate whose key certctl made has a key of its own (a renewal makes a new one).
    One issued from a CSR shares its key with the renewals that kept it: up the chain while
    each link was CSR-issued, then down through every renewal that kept the key. A CSR
    submitted again outside a renewal is not followed (certctl does not index keys).

    Raises:
        Conflict: the key has more than ``_MAX_SAME_KEY`` certificates; the caller's
            transaction must then change nothing.
    """
    if row.wrapped_key is not None:
        return []
    found = connection.execute(_KEY_FAMILY, {"id": row.id, "limit": _MAX_SAME_KEY})
    others = [other_id for (other_id,) in found]
    if len(others) >= _MAX_SAME_KEY:
        raise Conflict(
            f"certificate {row.id}: more than {_MAX_SAME_KEY} certificates certify its key "
            f"(renewals that kept it), and a keyCompromise revocation takes at most "
            f"{_MAX_SAME_KEY}: nothing was revoked"
        )
    return others


_MAX_CHAIN = 64  # renewals followed up a chain; a longer one stops there (and a cycle too)
# Certificates of one key a keyCompromise revocation takes, the first among them: a renewal
# a day for 27 years. Past it the revocation is refused whole, never cut short: revoking
# 256 and leaving the older ones valid with nothing said (as before) kept them certifying
# the compromised key, and an answer flagging it would be missed by a client reading the
# status alone.
_MAX_SAME_KEY = 10_000
_RENEWED_FROM = select(_CERTIFICATES.c.renewed_from).where(_CERTIFICATES.c.id == bindparam("id"))


def _ancestors(connection: Connection, first: str | None) -> list[str]:
    """``first`` and the certificates it renewed in turn, by primary key (never a scan)."""
    found: list[str] = []
    while first is not None and first not in found and len(found) < _MAX_CHAIN:
        found.append(first)
        first = connection.execute(_RENEWED_FROM, {"id": first}).scalar()
    return found


def renew_certificate(
    services: Services, caller: Principal, cert_id: str, validity: timedelta | None
) -> IssueResult:
    """Issue a successor with the same subject, SANs and profile.

    A certificate whose key certctl generated gets a fresh key (returned once); one issued
    from a CSR keeps the requester's public key. Counted in ``certctl_renewals_total`` and,
    as the issuance it is, in ``certctl_issuance_total{issuer}`` and the issuance duration.
    """
    caller.require("cert.issue")
    started = time.perf_counter()
    # The route needs cert.issue only (DESIGN §4); do not demand cert.read on top.
    old = _load_certificate(services, cert_id)
    if old.status == "revoked":
        # A CSR-issued successor keeps the requester's key: renewing a certificate revoked
        # for keyCompromise would re-certify the compromised key.
        raise Conflict(f"certificate {cert_id} is revoked and cannot be renewed")
    ca, revoked = load_issuer_state(services, _not_managed(old.issuer_id))
    old_cert = x509.load_pem_x509_certificate(old.certificate_pem.encode())
    # notBefore is backdated by BACKDATE at issuance: leave it out, or each renewal would
    # lengthen the lifetime by another BACKDATE.
    lifetime = validity or (old.not_after - old.not_before - BACKDATE)
    sans = SubjectAltNames.parse(
        dns=old.sans.get("dns", []),
        ip=old.sans.get("ip", []),
        email=old.sans.get("email", []),
        uri=old.sans.get("uri", []),
    )
    now = services.clock()
    try:
        _unexpired(ca, old.issuer_id, now)
        _unrevoked(revoked, old.issuer_id)
    except Conflict:
        RENEWALS.labels("error").inc()
        ISSUANCE.labels(old.issuer_id, "error").inc()  # refused by the issuer, as prepare_*
        raise
    key_pem: bytes | None = None
    if old.wrapped_key is not None:
        key = generate_private_key(KeyType(key_type_of(old_cert.public_key())))
        public_key = key.public_key()
        key_pem = key_to_pem(key)
    else:
        public_key = old_cert.public_key()  # type: ignore[assignment]
    try:
        issued = ca.issue(
            public_key,
            old_cert.subject,
            profile=get_profile(old.profile),
            validity=lifetime,
            now=now,
            sans=sans,
            crl_urls=services.crl_urls(old.issuer_id),
            ca_issuers_urls=services.ca_issuers_urls(old.issuer_id),
            # The names are the predecessor's, and a renewal takes none: the warnings about
            # them were given at issuance, with advice this call cannot follow.
            name_hint=None,
        )
    except InvalidRequest:
        RENEWALS.labels("error").inc()
        ISSUANCE.labels(old.issuer_id, "error").inc()
        raise
    if key_pem is not None:
        # A new key, returned to the renewer. A renewal that keeps the key certifies it
        # again for whoever had it issued, and hands the renewer nothing it can pose with.
        _check_server_names(services, caller, ca, get_profile(old.profile), issued)
    record, rows = _new_rows(
        services, caller, old.issuer_id, issued, old.profile, key_pem, renewed_from=cert_id
    )
    with services.engine.begin() as connection:
        # Still not revoked, checked where it is written: a revocation (keyCompromise) landing
        # from another request since the read above must not get a successor. This UPDATE
        # also locks the row (PostgreSQL) or the database (SQLite) until the commit,
        # so a revocation arriving now waits and follows the renewal.
        unrevoked = connection.execute(
            update(_CERTIFICATES)
            .where(_CERTIFICATES.c.id == cert_id, _CERTIFICATES.c.status != "revoked")
            .values(renewed_by=record.id)  # renewed: no longer counted as expiring
        )
        if unrevoked.rowcount != 1:
            RENEWALS.labels("error").inc()
            raise Conflict(f"certificate {cert_id} is revoked and cannot be renewed")
        write_rows(connection, rows)
    RENEWALS.labels("success").inc()
    ISSUANCE.labels(old.issuer_id, "success").inc()
    ISSUANCE_DURATION.observe(time.perf_counter() - started)
    return IssueResult(
        record,
        _chain_pem(ca),
        key_pem.decode() if key_pem else None,
        issued.warnings,
    )


def _serial_forms(q: str) -> list[str]:
    """How a serial typed as ``q`` may be stored.

    In whole octets (``0dd0…``, as openssl prints it and as rows are written now), or without
    the leading zero (rows written before).
    """
    digits = q.lower().replace(":", "").removeprefix("0x")
    bare = digits.lstrip("0") or "0"
    return sorted({bare, bare if len(bare) % 2 == 0 else f"0{bare}"})


_ISSUERS: Table = Issuer.__table__  # type: ignore[assignment]
_ACTORS: Table = Actor.__table__  # type: ignore[assignment]
_CLIENT_CERT_BY_ISSUER_DN = (
    select(
        _CERTIFICATES.c.status,
        _ACTORS.c.roles,
        # A renewal that kept the requester's key (a CSR's) names its predecessor here.
        case((_CERTIFICATES.c.wrapped_key.is_(None), _CERTIFICATES.c.renewed_from), else_=None),
    )
    .join(_ISSUERS, _ISSUERS.c.id == _CERTIFICATES.c.issuer_id)
    .outerjoin(_ACTORS, _ACTORS.c.id == _CERTIFICATES.c.created_by)
    .where(
        _ISSUERS.c.subject == bindparam("issuer"),
        _CERTIFICATES.c.serial.in_(bindparam("serials", expanding=True)),
    )
)
_KEY_PREDECESSOR = (
    select(
        _ACTORS.c.roles,
        case((_CERTIFICATES.c.wrapped_key.is_(None), _CERTIFICATES.c.renewed_from), else_=None),
    )
    .select_from(_CERTIFICATES.outerjoin(_ACTORS, _ACTORS.c.id == _CERTIFICATES.c.created_by))
    .where(_CERTIFICATES.c.id == bindparam("id"))
)


@dataclass(frozen=True)
class IssuedClientCertificate:
    """What certctl knows of a client certificate one of its issuers issued."""

    revoked: bool
    # The roles of the actor that had it issued, as they are now (one tuple per stored row:
    # two issuers may share a subject DN); None for a creator that is no actor any more, or
    # never was one (a client-certificate principal).
    creator_roles: tuple[tuple[str, ...] | None, ...]


def issued_client_certificate(
    services: Services, issuer_dn: str, serial: int, connection: Connection | None = None
) -> IssuedClientCertificate | None:
    """The stored certificate ``serial`` of one of certctl's issuers (by subject DN), or None.

    The TLS handshake only checks a client certificate against ``tls.client-ca``: a
    certificate revoked through the API would otherwise keep authenticating until it expires,
    and one that any ``cert.issue`` holder had issued with a mapped subject would carry that
    mapping's roles, whatever its requester held. A certificate certctl did not issue (an
    offline CA, another PKI) is not known here: None. Read on ``connection`` if given.
    """
    with _connected(services, connection) as conn:
        rows = conn.execute(
            _CLIENT_CERT_BY_ISSUER_DN,
            {"issuer": issuer_dn, "serials": _serial_forms(format_serial(serial))},
        ).all()
        creators = [roles for _, roles, _ in rows]
        for _, _, predecessor in rows:
            creators += _key_holders_before(conn, predecessor)
    if not rows:
        return None
    return IssuedClientCertificate(
        any(status == "revoked" for status, _, _ in rows),
        tuple(None if roles is None else tuple(roles) for roles in creators),
    )


def _key_holders_before(connection: Connection, cert_id: str | None) -> list[Any]:
    """The roles of whoever had each earlier certificate of this key issued, newest first.

    A renewal of a CSR-issued certificate certifies the same key again, which its first
    requester holds: an administrator renewing an operator's ``CN=ci-admin`` must not make
    that operator's key an administrator's. Server-made keys are new at each renewal.
    """
    found: list[Any] = []
    seen: set[str] = set()
    while cert_id is not None and cert_id not in seen:
        if len(seen) == _MAX_CHAIN:
            return [*found, None]  # requesters not looked up: as if no actor (no permission)
        seen.add(cert_id)
        row = connection.execute(_KEY_PREDECESSOR, {"id": cert_id}).first()
        if row is None:
            break
        found.append(row[0])
        cert_id = row[1]
    return found


# How long a signed CRL is served again while its list and its CA stay the same. The CRL
# route is public: signing anew on every fetch let anyone make certctl take a number in the
# store (a write holding SQLite's single write lock, then an fsync) and sign, as often as
# they liked, while issuance waited for the lock. A revocation shows at once: it changes
# the list. The CRL served is at most this old, its nextUpdate days ahead.
CRL_REUSE = timedelta(minutes=10)


def crl_for(services: Services, issuer_id: str) -> x509.CertificateRevocationList:
    """The issuer's CRL: signed anew, numbered by the store, when its list or CA changed.

    Otherwise the CRL this process signed last, for up to :data:`CRL_REUSE` (and never
    past its nextUpdate, nor once the clock went back before it was signed).
    """
    ca = load_issuer(services, issuer_id)
    now = services.clock()
    with services.engine.connect() as connection:
        revoked = _revoked_of(connection, issuer_id)
    last = services.signed_crls.get(issuer_id)
    if (
        last is not None
        and last.ca is ca
        and last.revoked == revoked
        and last.signed_at <= now < last.signed_at + CRL_REUSE
        and now < (last.crl.next_update_utc or now)
    ):
        return last.crl
    try:
        # Before the number: a refused CRL is no write (the route is public; never cached).
        ca.check_can_sign(now, crls=True)
    except InvalidRequest as exc:  # an expired issuer: the request was fine, the issuer is not
        raise Conflict(f"issuer {issuer_id}: {exc.detail}") from None
    with services.engine.begin() as connection:
        # The number first: it locks the issuer's row (PostgreSQL) or the database (SQLite)
        # until the commit, so a CRL numbered higher never lists less than this one.
        number = _next_crl_number(connection, issuer_id, now)
        revoked = _revoked_of(connection, issuer_id)
    entries = [
        RevokedEntry(int(serial, 16), revoked_at, _REASONS.get(reason or "unspecified"))
        for serial, revoked_at, reason in revoked
        if revoked_at is not None
    ]
    crl = create_crl(ca, entries, now=now, crl_number=number)
    services.signed_crls[issuer_id] = SignedCrl(ca, revoked, now, crl)
    return crl


def crl_max_age_s(crl: x509.CertificateRevocationList, now: datetime) -> int:
    """How long an HTTP cache may keep ``crl``: as long as :func:`crl_for` would reuse it.

    Signed at thisUpdate + BACKDATE; reused for up to CRL_REUSE, never past nextUpdate.
    """
    signed_at = crl.last_update_utc + BACKDATE
    until = min(signed_at + CRL_REUSE, crl.next_update_utc or signed_at + CRL_REUSE)
    return max(0, int((until - now).total_seconds()))


# How long an HTTP cache may keep an issuer's certificate (ca.pem, ca.der). It changes only
# when the CA is renewed, with the same key and subject, so what it signed verifies under the
# old copy as under the new one, and ca-cert-rotate-before ahead of its notAfter; or when its
# issuer is deleted. An hour keeps every TLS client following a caIssuers URI, and every CDN in
# front, to one revalidation (a 304) an hour; each process sees another's renewal within a
# minute (ISSUER_CACHE_CHECK_S), well inside it.
CA_CERT_MAX_AGE = timedelta(hours=1)


def ca_max_age_s(certificate: x509.Certificate, now: datetime) -> int:
    """How long an HTTP cache may keep ``certificate``: an hour, never past its notAfter.

    A copy kept past it would fail every chain while the renewed one is served already.
    """
    until = min(now + CA_CERT_MAX_AGE, certificate.not_valid_after_utc)
    return max(0, int((until - now).total_seconds()))


def _revoked_of(connection: Connection, issuer_id: str) -> tuple[tuple[Any, ...], ...]:
    """(serial, revoked_at, reason) of the issuer's revoked certificates, by serial.

    Its revoked intermediates included: they are certificates it signed too, kept in the
    issuers table (few rows; the serial read from the certificate).
    """
    rows = [tuple(row) for row in connection.execute(_REVOKED_OF_ISSUER, {"issuer_id": issuer_id})]
    listed = {row[0] for row in rows}
    children: dict[str, tuple[Any, ...]] = {}
    for pem, revoked_at, reason in connection.execute(_REVOKED_CHILDREN, {"issuer_id": issuer_id}):
        serial = format_serial(x509.load_pem_x509_certificate(pem.encode()).serial_number)
        if serial in listed:
            continue  # a serial appears once in a CRL (RFC 5280 5.1.2.6)
        first = children.get(serial)
        if first is None:
            children[serial] = (serial, revoked_at, reason)
        elif reason in _COMPROMISE and first[2] not in _COMPROMISE:
            # The same intermediate imported under two ids and revoked under both: a serial
            # appears once in a CRL (RFC 5280 5.1.2.6), with the first revocation's date;
            # a compromise under either id is the key's (the same certificate), and the
            # most appropriate reason (CA/B Forum BR 7.2.2) whichever id was revoked first.
            children[serial] = (serial, first[1], reason)
    return (*rows, *children.values())


_REVOKED_OF_ISSUER = (
    select(_CERTIFICATES.c.serial, _CERTIFICATES.c.revoked_at, _CERTIFICATES.c.revocation_reason)
    .where(_CERTIFICATES.c.issuer_id == bindparam("issuer_id"), _CERTIFICATES.c.status == "revoked")
    .order_by(_CERTIFICATES.c.serial)  # one order for both reads crl_for compares
)
_REVOKED_CHILDREN = (
    select(_ISSUERS.c.certificate_pem, _ISSUERS.c.revoked_at, _ISSUERS.c.revocation_reason)
    .where(_ISSUERS.c.parent_id == bindparam("issuer_id"), _ISSUERS.c.revoked_at.is_not(None))
    .order_by(_ISSUERS.c.revoked_at, _ISSUERS.c.id)  # the first revocation of a twin first
)


def _next_crl_number(connection: Connection, issuer_id: str, now: datetime) -> int:
    """The issuer's next CRL number (RFC 5280 5.2.3), counted in the store.

    One more than the last, and never below ``now`` in microseconds since the epoch. Every
    process signed with its own clock's microseconds: replicas whose clocks differ, or a
    clock stepped back, published a number below (or equal to) one already out. The
    floor keeps the series above the numbers signed that way, before migration 0008 or by
    replicas still running an older certctl during a rolling update.

    Raises:
        NotFound: no issuer ``issuer_id``.
    """
    floor = (now - _EPOCH) // timedelta(microseconds=1)
    following = _ISSUERS.c.crl_number + 1
    number = connection.execute(
        update(_ISSUERS)
        .where(_ISSUERS.c.id == issuer_id)
        .values(crl_number=case((following > floor, following), else_=floor))
        .returning(_ISSUERS.c.crl_number)
    ).scalar()
    if number is None:  # deleted since it was loaded
        raise NotFound(f"issuer {issuer_id} not found")
    return int(number)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def certificate_counts(
    services: Services,
) -> tuple[dict[tuple[str, str], int], dict[str, datetime]]:
    """Aggregate counts per (issuer, status) and the next expiry per issuer (for metrics)."""
    now = services.clock()
    soon = now + EXPIRING_WINDOW
    status_expr = CertificateRecord.status
    counts: dict[tuple[str, str], int] = {}
    nxt: dict[str, datetime] = {}
    with services.sessions() as session:
        for issuer_id, status, expired, expiring, total in session.execute(
            select(
                CertificateRecord.issuer_id,
                status_expr,
                func.sum((CertificateRecord.not_after <= now).cast(Integer)),
                func.sum(
                    and_(
                        CertificateRecord.not_after > now,
                        CertificateRecord.not_after <= soon,
                        CertificateRecord.renewed_by.is_(None),  # renewed: active to its end
                    ).cast(Integer)
                ),
                func.count(),
            ).group_by(CertificateRecord.issuer_id, status_expr)
        ):
            if status == "revoked":
                counts[(issuer_id, "revoked")] = counts.get((issuer_id, "revoked"), 0) + total
                continue
            expired, expiring = int(expired or 0), int(expiring or 0)
            counts[(issuer_id, "expired")] = expired
            counts[(issuer_id, "expiring")] = expiring
            counts[(issuer_id, "active")] = total - expired - expiring
        for issuer_id, earliest in session.execute(
            select(CertificateRecord.issuer_id, func.min(CertificateRecord.not_after))
            .where(
                CertificateRecord.status == "active",
                CertificateRecord.not_after > now,
                CertificateRecord.renewed_by.is_(None),
            )
            .group_by(CertificateRecord.issuer_id)
        ):
            if earliest is not None:
                # Aggregates bypass the column type: SQLite hands back a naive string/datetime.
                if isinstance(earliest, str):
                    earliest = datetime.fromisoformat(earliest)
                nxt[issuer_id] = (
                    earliest.replace(tzinfo=UTC) if earliest.tzinfo is None else earliest
                )
        for (issuer_id,) in session.execute(select(Issuer.id)):
            for status in ("active", "expiring", "expired", "revoked"):
                counts.setdefault((issuer_id, status), 0)
    return counts, nxt
