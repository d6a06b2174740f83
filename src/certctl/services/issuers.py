"""Issuers: create, import, load and cache their state, renew a root."""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import Table, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from certctl.errors import Conflict, InvalidRequest, NotFound, PasswordRequired
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    KeyType,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    format_serial,
    generate_private_key,
    issuer_chain,
    key_type_of,
    load_material,
    parse_dn,
)
from certctl.pki.chain_links import (
    chain_problem,
    chain_window_problem,
    is_self_signed,
    signs,
    window_problem,
)
from certctl.pki.crl import is_crl_serial
from certctl.pki.issue import KeyMismatch
from certctl.pki.key_strength import weakly_signed
from certctl.pki.keys import unreadable_key
from certctl.pki.template import spki_of
from certctl.services.audit import record
from certctl.services.context import IssuerCertificates, IssuerRevocation, Principal, Services
from certctl.services.key_authentication import credential_generation
from certctl.services.revocation import (
    may_be_revoked_above,
    newly_below_revoked,
    revoked_above,
    revoked_certificates,
)
from certctl.store.db import PoolTimeout, storage_error
from certctl.store.models import Issuer

__all__ = [
    "DEFAULT_CA_VALIDITY",
    "DEFAULT_ISSUER",
    "IMPORT_CLOCK_SKEW",
    "ISSUERS",
    "MANAGED_ISSUER_PREFIX",
    "check_not_managed",
    "check_unexpired",
    "check_unrevoked",
    "checked_certificates",
    "create_issuer",
    "current_certificates",
    "forget_if_changed",
    "import_issuer",
    "load_issuer",
    "load_issuer_certificates",
    "load_issuer_state",
    "refresh_cached_issuers",
    "renew_root_issuer",
    "revocation_refusal",
    "signer_preference",
    "store_issuer",
    "stored_certificates",
]

log = logging.getLogger("certctl.services")

DEFAULT_ISSUER = "default"
# An issuer created through the API without a validity (as `certctl ca create`'s default).
DEFAULT_CA_VALIDITY = timedelta(days=5 * 365)
ISSUERS: Table = Issuer.__table__  # type: ignore[assignment]


def _issuer_context(issuer_id: str) -> str:
    return f"issuer:{issuer_id}"


def store_issuer(
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
        serial=format_serial(ca.certificate.serial_number),
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
            credential=caller.credential if caller else "",
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
    from certctl.services.access_rules import check_id

    check_id(issuer_id, "issuer")
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
            services, check_not_managed(parent) if caller else parent
        )
        check_unexpired(parent_ca, parent, now)
        check_unrevoked(parent_revoked, parent)
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
            ocsp_urls=services.ocsp_urls(parent),
        )
        ca = CertificateAuthority(
            issued.certificate, key, (parent_ca.certificate, *parent_ca.chain)
        )
    # The parent may have been revoked since it was loaded (another request, a replica).
    row = store_issuer(
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
) -> tuple[Issuer, tuple[str, ...], tuple[str, ...]]:
    """Import an existing CA (PEM certificate [+ chain] and key).

    Returns:
        The stored issuer, warnings about what it will not do well (sign CRLs), and the ids
        of the held issuers imported before it whose chain it completed.
    """
    caller.require("issuer.create")
    from certctl.services.access_rules import check_id

    check_id(issuer_id, "issuer")
    _reserved_id(issuer_id)
    certs = load_material(certificate_pem.encode()).certificates
    try:
        key = load_material(private_key_pem.encode()).private_key
    except PasswordRequired:
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
    _refuse_weak_link(chain[-1] if chain else ca_cert, left_over)
    chain = _cut_at_renewed(services, ca_cert, chain)
    chain = (*chain, *_held_chain_above(services, chain[-1] if chain else ca_cert))
    for child, parent in itertools.pairwise((ca_cert, *chain)):
        # cryptography checks an RSASSA-PSS signature over SHA-1 (not a PKCS#1 one), so
        # such a link passed into the chain in silence; OpenSSL 3 refuses it as the other.
        _refuse_weak_link(child, (parent,))
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
    row = store_issuer(
        services,
        issuer_id,
        name,
        ca,
        caller,
        "issuer.import",
        guard=partial(_not_revoked, ca, "not imported"),
    )
    # A CA above it imported meanwhile by another request (another worker, replica) looked
    # for what it completes before this one was stored, and this one for its parent before
    # that was: one of the two checks made after storing sees the other's CA.
    own = _complete_chain(
        services,
        caller,
        issuer_id,
        row.certificate_pem,
        row.chain_pem,
        None,
        "the import of a CA above it meanwhile",
    )
    if own is not None:
        ca = CertificateAuthority(ca.certificate, ca.private_key, own)
        with services.sessions() as session:
            row = session.get_one(Issuer, issuer_id)
    completed = _complete_chains_below(services, caller, issuer_id, ca.certificate)
    return row, _import_warnings(ca, issuer_id, services.clock()), completed


def _complete_chains_below(
    services: Services, caller: Principal, issuer_id: str, parent: x509.Certificate
) -> tuple[str, ...]:
    """Complete the chains of held issuers whose chain stops below CA ``parent``, just stored.

    cfssl and openssl keep each CA in its own file, and an intermediate imported before its
    root stored what was known then: no chain, or one ending below the root. It kept that
    for good: ``ca.pem?chain=true`` (the ca.crt clients are given) ended with no root, and
    the import of the root changed nothing. Each one whose top ``parent``'s key signed is
    given the chain above that top, as its own import now would (:func:`_held_chain_above`:
    of several holders of the key, by :func:`signer_preference`), unless that chain could
    not verify (a revoked CA, a path length exceeded): it is then left as it was. A key
    certctl generated (``create_issuer``) signed nothing held, so only imports call this.

    Returns:
        The ids whose chain was completed; each has an ``issuer.chain`` audit event.
    """
    with services.sessions() as session:
        rows = session.execute(
            select(Issuer.id, Issuer.certificate_pem, Issuer.chain_pem)
            .where(Issuer.id != issuer_id)
            # Managed services' CAs are roots certctl made: none waits for a parent.
            .where(Issuer.id.not_like(f"{MANAGED_ISSUER_PREFIX}%"))
            .order_by(Issuer.id)
        ).all()
    completed: list[str] = []
    for held_id, certificate_pem, chain_pem in rows:
        why = f"issuer {issuer_id}'s import"
        if _complete_chain(services, caller, held_id, certificate_pem, chain_pem, parent, why):
            completed.append(held_id)
    return tuple(completed)


def _complete_chain(
    services: Services,
    caller: Principal,
    held_id: str,
    certificate_pem: str,
    chain_pem: str,
    parent: x509.Certificate | None,
    why: str,
) -> tuple[x509.Certificate, ...] | None:
    """Complete held issuer ``held_id``'s chain from the issuer held above its top, if any.

    ``parent``: only from a CA this CA's key signed (None: any held one). A chain reaching
    no root that passes through a cross-certificate of ``parent`` (its key, signed by
    another root not held) is cut there and completed from the held issuers, when that
    reaches a root: completed with the cross-certificate before ``parent`` was held, it
    kept it for good, and ca.pem?chain=true ended with the other root (once held) though
    the CA's own was held too. Returns the completed chain, or None when left as it was.
    """
    try:
        cert, chain = stored_certificates(services, held_id, certificate_pem, chain_pem)
        path = (cert, *chain)
        if path[-1].issuer == path[-1].subject:
            return None
        below = len(chain)  # the index in path of the CA whose parent is sought: its top
        if parent is not None:
            signed = [
                index
                for index, c in enumerate(path)
                if c.issuer != c.subject and c.issuer == parent.subject and signs(parent, c)
            ]
            if not signed:
                return None
            below = signed[0]
        above = _held_parent(services, path[below], path[: below + 1])
    except (Conflict, InvalidRequest):  # VerificationFailed too
        return None  # unreadable in the store, or a weak or unverifiable link: as it was
    if above is None or above[0]:
        return None  # a revoked parent: its import below one would have been refused
    new_chain = (*chain[:below], *above[1])
    if below < len(chain) and (new_chain == chain or not is_self_signed(new_chain[-1])):
        return None  # a cross-certificate replaced only by a path reaching a root
    if chain_problem(cert, new_chain) is not None:
        return None
    completed_pem = certs_to_pem(new_chain).decode()
    names = ", ".join(c.subject.rfc4514_string() for c in above[1])
    with services.sessions.begin() as session:
        # Only if unchanged since read: another import may have completed it meanwhile.
        written = session.execute(
            update(Issuer)
            .where(Issuer.id == held_id, Issuer.chain_pem == chain_pem)
            .values(chain_pem=completed_pem)
        )
        if written.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult
            return None
        record(
            session,
            at=services.clock(),
            actor=caller.actor_id,
            action="issuer.chain",
            target=held_id,
            source=caller.source,
            credential=caller.credential,
            detail=f"chain completed by {why}: {names}",
        )
    services.forget_issuer(held_id)
    log.info(
        "issuer %s: chain completed by %s (%s): what it issues, ca.pem and its "
        "certificates' PEM now carry it",
        held_id,
        why,
        names,
    )
    return new_chain


def _cut_at_renewed(
    services: Services, ca_cert: x509.Certificate, chain: tuple[x509.Certificate, ...]
) -> tuple[x509.Certificate, ...]:
    """``chain`` cut below its first CA out of its validity, where certctl holds it renewed.

    A bundle kept from before its root (or intermediate) was renewed on the same key gives
    the expired certificate: served after every leaf, and warned of as one no certificate
    would verify under, though the renewed one, held, is what clients trust. The held
    chain above the cut (:func:`_held_chain_above`, a current one first) takes its place,
    only when all of it is current: else the chain given is kept, and warned of.
    """
    now = services.clock()
    for index, cert in enumerate(chain):
        if window_problem(cert, now) is None:
            continue
        held = _held_chain_above(services, chain[index - 1] if index else ca_cert)
        if held and all(window_problem(c, now) is None for c in held):
            return chain[:index]
        return chain
    return chain


def _held_chain_above(services: Services, top: x509.Certificate) -> tuple[x509.Certificate, ...]:
    """The chain above ``top`` from the issuer certctl holds that signed it, if any.

    cfssl and openssl keep each CA in its own file, so an intermediate is often imported
    alone after its root: its chain_pem stayed empty and ca.pem?chain=true (the ca.crt
    clients are given) ended with it, not with the root, though the root was an issuer
    here. The signature, not the name, says which issuer it is (a name may be reused on
    another key).
    """
    held = _held_parent(services, top)
    return () if held is None else held[1]


def _held_parent(
    services: Services, top: x509.Certificate, below: Sequence[x509.Certificate] = ()
) -> tuple[bool, tuple[x509.Certificate, ...]] | None:
    """Whether the held issuer preferred as ``top``'s parent is revoked, and its path.

    None: no held issuer signed ``top`` (or it is a root). Of several, by
    :func:`signer_preference`. ``below``: the CAs under ``top`` (``top`` too); a held path
    holding one of their keys is passed over: it loops back (two roots cross-signing each
    other), and served after them it repeated a CA below.

    Raises:
        InvalidRequest: a candidate signed ``top`` with SHA-1 or MD5.
    """
    if top.issuer == top.subject:
        return None
    with services.sessions() as session:
        candidates = session.execute(
            select(Issuer.id, Issuer.certificate_pem, Issuer.chain_pem, Issuer.revoked_at)
            .where(Issuer.subject == top.issuer.rfc4514_string())
            .order_by(Issuer.id)
        ).all()
    now = services.clock()
    keys_below = {spki_of(c.public_key()) for c in below}
    ranked: list[tuple[tuple[bool, bool, bool, bool, int], tuple[x509.Certificate, ...]]] = []
    for issuer_id, certificate_pem, chain_pem, revoked_at in candidates:
        try:
            cert, chain = stored_certificates(services, issuer_id, certificate_pem, chain_pem)
        except Conflict:
            continue  # unreadable in the store (logged there): the import warns as before
        if signs(cert, top):
            path = (cert, *chain)
            if any(spki_of(c.public_key()) in keys_below for c in path):
                continue
            ranked.append((signer_preference(revoked_at is not None, path, top, now), path))
        else:
            _refuse_weak_link(top, (cert,))
    if not ranked:
        return None
    rank, path = min(ranked, key=lambda ranked_path: ranked_path[0])
    return rank[0], path


def signer_preference(
    revoked: bool, path: Sequence[x509.Certificate], signed: x509.Certificate, now: datetime
) -> tuple[bool, bool, bool, bool, int]:
    """How a held issuer whose key signed ``signed`` ranks among others holding that key.

    Lowest first; callers keep the issuers in id order and take the first lowest, so the id
    decides last. ``path``: its certificate, then its stored chain. One key may be held
    under several certificates (a CA renewed on its key, re-imported, a root also
    cross-signed): the first by id could be revoked (an import refused below it, a leaf
    recorded under an issuer that issues nothing) or expired (served after every leaf,
    which clients then refused). One neither comes first, then one whose validity covers
    ``signed``'s notBefore (the certificate that issued it), then one whose chain reaches a
    root (an intermediate held with its chain rather than without), then the shortest path
    (a root held rather than a cross-certificate to another root).
    """
    ca = path[0]
    expired = any(window_problem(c, now) is not None for c in path)
    covers = ca.not_valid_before_utc <= signed.not_valid_before_utc <= ca.not_valid_after_utc
    return (revoked, expired, not covers, not is_self_signed(path[-1]), len(path))


def _refuse_weak_link(top: x509.Certificate, candidates: Sequence[x509.Certificate]) -> None:
    """400 when a candidate issuer of ``top`` signed it with SHA-1 or MD5.

    cryptography checks no such signature, so the issuer given (a legacy openssl CA's
    root) passed for another CA: "does not verify with its issuer", or a warning that the
    root was not given. OpenSSL 3 refuses the link from security level 1 on, so every
    certificate below it would fail too. A root's signature on itself is no link (no client
    checks it), so a copy of the root given too is not refused for it.
    """
    for candidate in candidates:
        linked = candidate.subject == top.issuer != top.subject
        weak = weakly_signed(candidate, top) if linked else None
        if weak is not None:
            raise InvalidRequest(f"{weak}; not imported")


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
    revoked = revoked_above(session, ca.certificate, ca.chain)
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


def _import_warnings(ca: CertificateAuthority, issuer_id: str, now: datetime) -> tuple[str, ...]:
    warnings = []
    # The chain given, or that of the held parent (_held_chain_above prefers a current one,
    # but may hold only an expired one): imported all the same, as 'certctl ca import' does.
    expired_above = chain_window_problem(ca.chain, now)
    if expired_above is not None:
        warnings.append(expired_above)
    top = ca.root
    if top.issuer != top.subject:
        # Imported all the same (the root may be in every trust store already), but what
        # certctl serves stops below it, as 'certctl ca import' warns.
        warnings.append(
            f"{top.issuer.rfc4514_string()}, the issuer of {top.subject.rfc4514_string()}, "
            "was not given: chain_pem stops below it, and ca.pem?chain=true (the ca.crt "
            f"'certctl certs issue --out' writes) ends with {top.subject.rfc4514_string()}, "
            "not a root; import the CA that signed it first, or send the chain up to the "
            "root in certificate_pem"
        )
    cert = ca.certificate
    if cert.issuer != cert.subject and not is_crl_serial(cert.serial_number):
        # OpenSSL signs such a serial; cryptography cannot list it, so its revocation (200,
        # it issues no more) never reaches clients: said now, while it can be signed again.
        warnings.append(
            f"its serial {format_serial(cert.serial_number)} is no positive number of at "
            "most 20 octets (RFC 5280 4.1.2.2): no CRL can list it, so if it is revoked, its "
            f"issuer's CRL leaves it off; have {cert.issuer.rfc4514_string()} sign it again "
            "with a serial of at most 159 bits"
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
    problem = chain_problem(cert, ca.chain)
    if problem is not None:
        # The chain is followed by signature alone (that of an issuer held here too): a
        # parent of path length 0 or no CA at all made an issuer every certificate of which
        # failed, as one lacking keyCertSign would.
        raise InvalidRequest(problem)
    if cert.issuer == cert.subject:
        parent: x509.Certificate | None = cert
    else:  # the chain's issuer of it, wherever it sits (bundles come root first too)
        parent = next((c for c in (*ca.chain, *left_over) if c.subject == cert.issuer), None)
    if parent is None:
        return  # an intermediate without its issuer: nothing here to check its signature with
    if parent is cert and is_self_signed(cert):
        # Also a root signed on itself with SHA-1 (old openssl CA scripts), which
        # cryptography does not check: "does not verify with its own key", though no client
        # checks a root's signature on itself and 'certctl ca import' took it.
        return
    try:
        cert.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        what = "its own key (self-signed)" if parent is cert else "its issuer in the chain"
        raise InvalidRequest(
            f"the CA certificate's signature does not verify with {what}"
        ) from None


# Issuer ids of managed services' CAs (service_ca): only their reconciler issues from them
# (the service's clients trust them), and nobody may create or import one (a CA imported as
# svc.<name> before the service exists would be adopted, its key known to the importer).
MANAGED_ISSUER_PREFIX = "svc."


def check_not_managed(issuer_id: str) -> str:
    """``issuer_id``, unless it is a managed service's CA (409: only its reconciler issues)."""
    if issuer_id.startswith(MANAGED_ISSUER_PREFIX):
        raise Conflict(
            f"issuer {issuer_id} is the CA of managed service "
            f"{issuer_id.removeprefix(MANAGED_ISSUER_PREFIX)}; only its reconciler issues from it"
        )
    return issuer_id


def check_unexpired(ca: CertificateAuthority, issuer_id: str, now: datetime) -> None:
    """409 for an issuer past its notAfter: the request was fine, the issuer is not.

    As ``crl_for`` answers; ``CertificateAuthority.issue`` would refuse with a 400 that
    names no issuer, telling the client to change a request that has nothing wrong.
    """
    end = ca.certificate.not_valid_after_utc
    if end <= now:
        raise Conflict(f"issuer {issuer_id}: issuing CA expired on {end:%Y-%m-%d %H:%M}Z")


def check_unrevoked(revoked: IssuerRevocation | None, issuer_id: str) -> None:
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
        cert, chain = stored_certificates(services, issuer_id, row.certificate_pem, row.chain_pem)
        if row.revoked_at is not None:
            revoked: IssuerRevocation | None = IssuerRevocation(
                row.revoked_at, row.revocation_reason or "unspecified", issuer_id
            )
        else:
            revoked = revoked_above(session, cert, chain)
    try:
        ca = CertificateAuthority(cert, key, chain)  # type: ignore[arg-type]  # issuer keys only
    except KeyMismatch:
        # The key is authenticated by the key-encryption key (AES-GCM, bound to the issuer
        # id); the certificate is a plain column. Whoever can write to the database alone
        # could put another CA's certificate there, and certctl would sign leaves naming
        # that CA as their issuer.
        _refuse_stored_certificate(
            services,
            issuer_id,
            cert.fingerprint(hashes.SHA256()),
            f"its key does not match its certificate ({_subject(cert)}), which was changed "
            "in the database outside certctl",
        )
    except InvalidRequest as exc:
        # Not a CA, no BasicConstraints, an RSA-PSS key: what an import refuses with 400
        # (the request's fault). Stored, it is the store's state, not the caller's request.
        _refuse_stored_certificate(
            services,
            issuer_id,
            cert.fingerprint(hashes.SHA256()),
            f"its stored certificate ({_subject(cert)}) cannot sign: {exc.detail}",
        )
    services.cache_issuer(issuer_id, ca, revoked, version)
    return ca, revoked


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()[:200]


def _refuse_stored_certificate(
    services: Services, issuer_id: str, stored: bytes, why: str, restore: str = "its certificate"
) -> NoReturn:
    """409 naming the issuer, and its ERROR once per process and ``stored`` (a digest).

    Once, not per refused request: nothing is cached, so each one loads it again.

    Raises:
        Conflict: always; ``why`` says what is wrong with the stored certificate.
    """
    services.logged.refuse(
        ("unusable issuer certificate", issuer_id, stored),
        f"issuer {issuer_id}: {why}",
        f"it signs nothing until {restore} is restored",
        f"it signs nothing: restore {restore} or use another issuer",
    )


def stored_certificates(
    services: Services, issuer_id: str, certificate_pem: str, chain_pem: str
) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    """The issuer's stored certificate and chain, parsed; a 409 naming it if they cannot be.

    Plain columns: a PEM cut short or written over in the database (a restore, a hand edit)
    made its CRL, ca.pem and ca.der routes and every load of it a 500 naming nothing.

    Raises:
        Conflict: the certificate or the chain cannot be read.
    """
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError:
        _refuse_stored_certificate(
            services,
            issuer_id,
            hashlib.sha256(certificate_pem.encode()).digest(),
            "its stored certificate cannot be read (cut short or written over in the "
            "database outside certctl)",
        )
    try:
        chain = tuple(x509.load_pem_x509_certificates(chain_pem.encode())) if chain_pem else ()
    except ValueError:
        _refuse_stored_certificate(
            services,
            issuer_id,
            hashlib.sha256(chain_pem.encode()).digest(),
            "its stored chain cannot be read (cut short or written over in the database "
            "outside certctl)",
            "its chain",
        )
    return cert, chain


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
    certificates = IssuerCertificates(*stored_certificates(services, issuer_id, *row))
    services.cache_certificates(issuer_id, certificates, version)
    return certificates


def checked_certificates(services: Services, issuer_id: str) -> IssuerCertificates | None:
    """The issuer's cached certificates, if no issuer changed in the store since checked.

    Checked: found to be the stored ones. None: :func:`current_certificates` (a store read)
    must say. No store read but the credential generation's (from memory on SQLite while nothing was
    committed, one round trip on PostgreSQL), for the public CA routes: every process caches
    them, and another worker or replica may have deleted the issuer and made it again (a
    managed service deleted and applied again: a new CA, a new key, under svc.<name>), which
    this one saw only at its next issuer refresh (a minute), serving the old CA meanwhile.
    """
    cached = services.cached_certificates(issuer_id)
    if cached is None:
        return None
    generation = credential_generation(services)
    if generation is None or services.certificates_checked.get(issuer_id) != generation:
        return None
    return cached


def current_certificates(services: Services, issuer_id: str) -> IssuerCertificates:
    """The issuer's certificates as stored now, kept while the store's issuers are unchanged.

    The cached ones after one read of the stored certificate, when it is the same; else the
    cached CA and certificates are dropped and the stored ones read (see
    :func:`checked_certificates`).

    Raises:
        NotFound: no issuer ``issuer_id``.
    """
    generation = credential_generation(services)  # before the read it vouches for
    cached = services.cached_certificates(issuer_id)
    if cached is not None:
        try:
            with services.sessions() as session:
                pem = session.execute(
                    select(Issuer.certificate_pem).where(Issuer.id == issuer_id)
                ).scalar()
        except (DBAPIError, PoolTimeout) as exc:
            if storage_error(exc) is None:
                raise
            # The store unreachable: the certificates held, as served before this check
            # (ca.pem and ca.der answered through an outage; a 503 now failed every TLS
            # client following a caIssuers URI). Not marked checked: read once it answers.
            return cached
        if pem is None or _unreadable_or_other(pem, cached.certificate):
            # Deleted, another CA under its id, or unreadable (reloaded: a 409 naming it).
            services.forget_issuer(issuer_id)
    certificates = load_issuer_certificates(services, issuer_id)
    if generation is not None:
        services.certificates_checked[issuer_id] = generation
    return certificates


def _unreadable_or_other(pem: str, certificate: x509.Certificate) -> bool:
    try:
        return x509.load_pem_x509_certificate(pem.encode()) != certificate
    except ValueError:
        return True


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
            row.serial = format_serial(renewed.certificate.serial_number)
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
            revoked_certificates(session)
            if may_be_revoked_above(cached.certificate, cached.chain)
            else []
        )
    if (
        stored is None
        or _changed(services, issuer_id, cached, *stored)
        or newly_below_revoked(services, issuer_id, cached, revoked)
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


def _chain_changed(stored_pem: str | None, cached: Sequence[x509.Certificate]) -> bool:
    """Whether the chain stored (None: no row) holds other certificates than ``cached``.

    Compared certificate by certificate, not as text: a chain stored as given at import
    may be written otherwise than ``certs_to_pem`` writes it (and then dropped every minute).
    """
    if stored_pem is None:
        return False  # deleted: the other checks say so
    if stored_pem.count("-----BEGIN CERTIFICATE-----") != len(cached):
        return True
    if certs_to_pem(cached).decode() == stored_pem:
        return False  # as a rule: no certificate to parse each minute
    try:
        return tuple(x509.load_pem_x509_certificates(stored_pem.encode())) != tuple(cached)
    except ValueError:
        return False  # unreadable in the store: its routes say so, the cached one serves


def refresh_cached_issuers(services: Services) -> list[str]:
    """Drop cached CAs and certificates whose stored certificate or chain changed elsewhere.

    Every process caches unwrapped issuer keys; a renewal in one of them (the leader, another
    worker, another replica on PostgreSQL) must reach the others before their cached
    certificate runs out, and a revocation before they issue much more from a revoked CA (a
    reason changed to keyCompromise too: their refusals name it). Returns the ids dropped.
    """
    # The certificates cached for the public CA routes too: a replica must not serve a
    # renewed or deleted CA's certificate for longer than this check's period.
    # One copy of each cache, read once: another thread may drop an issuer or load its key
    # (moving it from one cache to the other) while the store is read below.
    cached_only = services.cached_certificates_only()
    cached = {i: c.certificate for i, c in cached_only.items()}
    cached_cas = services.cached_issuers()
    cached.update((i, ca.certificate) for i, ca in cached_cas.items())
    if not cached:
        return []
    with services.sessions() as session:
        rows = session.execute(
            select(
                Issuer.id,
                Issuer.not_after,
                Issuer.revoked_at,
                Issuer.revocation_reason,
                Issuer.chain_pem,
            ).where(Issuer.id.in_(list(cached)))
        )
        stored: dict[str, tuple[datetime | None, datetime | None, str | None]] = {}
        # Each stored chain: an import of a CA above one completes it (_complete_chains_below),
        # and may replace a cross-certificate in it by a root: no longer, yet changed.
        chains: dict[str, str] = {}
        for issuer_id, not_after, revoked_at, reason, chain_pem in rows:
            stored[issuer_id] = (not_after, revoked_at, reason)
            chains[issuer_id] = chain_pem
        # An intermediate below one revoked elsewhere is dropped too (reloaded as refusing),
        # and any CA holding a key revoked elsewhere for a compromise, a root too (one read a
        # minute).
        revoked = revoked_certificates(session) if cached_cas else []
    stale = []
    gone = (None, None, None)
    cached_chains = {i: c.chain for i, c in cached_only.items()}
    cached_chains.update((i, ca.chain) for i, ca in cached_cas.items())
    for issuer_id, certificate in cached.items():
        ca = cached_cas.get(issuer_id)
        if _chain_changed(chains.get(issuer_id), cached_chains[issuer_id]):
            changed = True  # completed by another process's import of a CA above it
        elif ca is None:  # certificates alone, for the public routes: renewed or deleted?
            changed = stored.get(issuer_id, gone)[0] != certificate.not_valid_after_utc
        else:
            changed = _changed(
                services, issuer_id, ca, *stored.get(issuer_id, gone)
            ) or newly_below_revoked(services, issuer_id, ca, revoked)
        if changed:
            services.forget_issuer(issuer_id)
            stale.append(issuer_id)
    return stale
