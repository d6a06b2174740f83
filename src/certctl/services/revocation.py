"""Revocation reasons, and whether a revoked CA certctl holds is above a certificate."""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session

from certctl.pki import CertificateAuthority
from certctl.pki.keys import signature_verifies
from certctl.pki.revocation_reasons import (
    ISSUER_REVOCATION_REASONS,
    REVOCATION_REASONS,
    STORED_REASONS,
    check_reason,
)
from certctl.services.context import IssuerRevocation, Services, connected
from certctl.store.models import Issuer

__all__ = [
    "COMPROMISE",
    "ISSUER_REVOCATION_REASONS",
    "REASONS",
    "REVOCATION_REASONS",
    "UnreadableCertificate",
    "check_reason",
    "issuer_revocations",
    "may_be_revoked_above",
    "newly_below_revoked",
    "parsed_ca",
    "revocations_by_issuer",
    "revoked_above",
    "revoked_ca_among",
    "revoked_certificates",
    "revoked_issuer_of",
    "spki",
    "top_signed_by",
]


# Every reason a revocation was ever stored with (a CRL says each one); the names and the
# check of a reason given live in pki, where the CLI checks --reason without this module.
REASONS = {r: x509.ReasonFlags(r) for r in STORED_REASONS}


def revoked_above(
    session: Session, cert: x509.Certificate, chain: Sequence[x509.Certificate]
) -> IssuerRevocation | None:
    """The revocation of a CA in ``chain`` (the CAs above an issuer) that certctl holds.

    Or of another issuer holding ``cert`` itself (the same CA imported twice): the parent's
    CRL lists that certificate whichever id was revoked. Matched by certificate, not by
    ``parent_id``: imports and intermediates made before migration 0010 have none. Few rows
    (revoked issuers), read when an issuer is loaded.
    """
    query = (
        select(
            Issuer.id,
            Issuer.certificate_pem,
            Issuer.revoked_at,
            Issuer.revocation_reason,
            Issuer.subject,
        )
        .where(Issuer.revoked_at.is_not(None))
        .order_by(Issuer.id)
    )
    if not may_be_revoked_above(cert, chain):
        # A root is on no CRL, but may hold a key compromised under another certificate
        # (the root of a cross-signed intermediate). Loaded once per cache drop.
        query = query.where(Issuer.revocation_reason.in_(COMPROMISE))
    rows = [tuple(row) for row in session.execute(query)]
    return _revoked_among(rows, cert, chain)


def _revoked_among(
    rows: Sequence[tuple[Any, ...]], cert: x509.Certificate, chain: Sequence[x509.Certificate]
) -> IssuerRevocation | None:
    """:func:`revoked_above` on ``rows`` (id, PEM, revoked_at, reason, subject) of revoked CAs."""
    if not may_be_revoked_above(cert, chain):
        rows = [row for row in rows if row[3] in COMPROMISE]
    readable = []
    for revoked_id, pem, revoked_at, reason, subject in rows:
        parsed = _readable_ca(pem)
        if parsed is None:
            # Its stored certificate cut short or written over (a restore, a hand edit):
            # each load of any intermediate failed (500), its parent's CRL with it. Judged
            # by the name stored beside it instead: what names it as its issuer or has it
            # in its chain (or holds its name) signs nothing, as before; the others sign.
            # Its key cannot be compared: a compromise shows under its name only.
            names = {c.rfc4514_string() for c in (cert.subject, cert.issuer)}
            names.update(c.subject.rfc4514_string() for c in chain)
            if subject in names:
                return IssuerRevocation(
                    cast(datetime, revoked_at),
                    reason or "unspecified",
                    revoked_id,
                    same_certificate=subject == cert.subject.rfc4514_string(),
                )
            continue
        readable.append((revoked_id, pem, revoked_at, reason))
        revoked_cert = parsed[0]
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
    compromised = [row for row in readable if row[3] in COMPROMISE]
    keys = {spki(c) for c in (cert, *chain)} if compromised else set()
    for revoked_id, pem, revoked_at, reason in compromised:
        if parsed_ca(pem)[2] in keys or top_signed_by(cert, chain, parsed_ca(pem)[0]):
            return IssuerRevocation(
                cast(datetime, revoked_at),
                reason,
                revoked_id,
                same_key=parsed_ca(pem)[2] == spki(cert),
            )
    return None


_REVOKED_ISSUER_ROWS = (
    select(
        Issuer.id,
        Issuer.certificate_pem,
        Issuer.revoked_at,
        Issuer.revocation_reason,
        Issuer.subject,
    )
    .where(Issuer.revoked_at.is_not(None))
    .order_by(Issuer.id)
)
# The revocations the judgement below depends on, in small columns, and what tells that an
# issuer was added or deleted: the number of issuers and the latest created_at (computed only
# when some issuer is revoked: no row, no subquery). An id judged below a revoked CA may be
# deleted and made again, a new CA with a new key (a managed service's, svc.NAME, after its
# key was revoked under another certificate: the advice is to delete the service and apply
# it again); before, it stayed "below" that revocation until some revocation changed. No
# issuer is added below a revoked CA (a creation or an import there is refused, also while
# the revocation lands), and a renewal keeps a CA's key, subject and the CAs above it.
_EVERY_ISSUER = Issuer.__table__.alias("every_issuer")
_REVOCATIONS = (
    select(
        Issuer.id,
        Issuer.revoked_at,
        Issuer.revocation_reason,
        select(func.count()).select_from(_EVERY_ISSUER).scalar_subquery(),
        select(func.max(_EVERY_ISSUER.c.created_at)).scalar_subquery(),
    )
    .where(Issuer.revoked_at.is_not(None))
    .order_by(Issuer.id)
)
_ISSUER_CHAINS = select(
    Issuer.id, Issuer.certificate_pem, Issuer.chain_pem, Issuer.revoked_at, Issuer.revocation_reason
)
# The last judgement per engine, with the revocations it was made on: made again only when
# they changed (each compromised key costs a signature check per issuer).
_JUDGED: weakref.WeakKeyDictionary[Engine, tuple[tuple[Any, ...], dict[str, IssuerRevocation]]]
_JUDGED = weakref.WeakKeyDictionary()
_JUDGED_LOCK = threading.Lock()


def revocations_by_issuer(connection: Connection) -> dict[str, IssuerRevocation]:
    """Each issuer that signs nothing more, revoked itself or below a revoked CA.

    Judged as :func:`revoked_above` judges the issuer loaded to sign (its certificate, a CA
    above it, the same certificate or a compromised key under another id), for what the
    certificates it issued cannot do any more: verify where clients check the CRLs of the
    whole chain. One small read of the revocations (usually none); the issuers'
    certificates are read only when those changed since the last call, or an issuer was
    added or deleted.
    """
    states = tuple(tuple(row) for row in connection.execute(_REVOCATIONS))
    if not states:
        return {}
    with _JUDGED_LOCK:
        judged = _JUDGED.get(connection.engine)
    if judged is not None and judged[0] == states:
        return dict(judged[1])
    revoked = [tuple(row) for row in connection.execute(_REVOKED_ISSUER_ROWS)]
    found: dict[str, IssuerRevocation] = {}
    for issuer_id, pem, chain_pem, revoked_at, reason in connection.execute(_ISSUER_CHAINS):
        if revoked_at is not None:
            found[issuer_id] = IssuerRevocation(revoked_at, reason or "unspecified", issuer_id)
            continue
        parsed = _readable_ca(pem)
        try:
            chain = _parsed_chain(chain_pem or "")
        except ValueError:
            chain = None
        if parsed is None or chain is None:
            # Its stored certificate or chain cut short or written over in the database: it
            # signs nothing (loading it is a 409 naming it), and failing here failed every
            # process's judgement of all the others (the metrics, each certificate view).
            continue
        above = _revoked_among(revoked, parsed[0], chain)
        if above is not None:
            found[issuer_id] = above
    with _JUDGED_LOCK:
        _JUDGED[connection.engine] = (states, found)
    return dict(found)


def issuer_revocations(services: Services) -> dict[str, IssuerRevocation]:
    """:func:`revocations_by_issuer` on a pooled connection of its own."""
    with services.engine.connect() as connection:
        return revocations_by_issuer(connection)


@functools.lru_cache(maxsize=256)
def _parsed_chain(pem: str) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificates(pem.encode())) if pem else ()


def top_signed_by(
    cert: x509.Certificate, chain: Sequence[x509.Certificate], ca: x509.Certificate
) -> bool:
    """Whether the top of ``chain`` (or ``cert``), not a root, was signed by ``ca``'s key.

    An intermediate imported without the CA above it (accepted, with a warning) has no
    chain to compare: its signature tells whether a compromised key is above it.
    """
    top = chain[-1] if chain else cert
    return top.issuer != top.subject and _signature_verifies(top, ca.public_key())


def spki(cert: x509.Certificate) -> bytes:
    """``cert``'s SubjectPublicKeyInfo (DER): what a key compromise is matched on."""
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


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
    unreadable: dict[str, str] = {}  # stored subject -> id (see _unreadable_named)
    for issuer_id, pem, reason, subject in _revoked_issuer_pems(services, connection):
        parsed = _readable_ca(pem)
        if parsed is None:
            unreadable.setdefault(subject, issuer_id)
            continue
        _, der, key = parsed
        if der in wanted:
            return issuer_id
        if reason in COMPROMISE:
            compromised.setdefault(key, issuer_id)
    if unreadable:
        try:
            chain = [x509.load_der_x509_certificate(der) for der in cas]
        except (ValueError, x509.InvalidVersion):
            raise UnreadableCertificate(
                "a CA of its verified chain is not a readable X.509 certificate, and a "
                "revoked issuer could be it"
            ) from None
        for ca in chain:
            found = _unreadable_named(ca, unreadable)
            if found is not None:
                return found
    if compromised:
        for der in cas:
            try:
                key = spki(x509.load_der_x509_certificate(der))
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
    _ISSUER_COLUMNS.id,
    _ISSUER_COLUMNS.certificate_pem,
    _ISSUER_COLUMNS.revocation_reason,
    _ISSUER_COLUMNS.subject,
).where(_ISSUER_COLUMNS.revoked_at.is_not(None))
# The first revoked named, the same on every backend: a key's twins are revoked after it.
_REVOKED_ISSUERS = _REVOKED_ISSUERS.order_by(_ISSUER_COLUMNS.revoked_at, _ISSUER_COLUMNS.id)
_ISSUER_CERTIFICATES = select(_ISSUER_COLUMNS.certificate_pem)


def _revoked_issuer_pems(
    services: Services, connection: Connection | None
) -> list[tuple[str, str, str | None, str]]:
    """(id, PEM, reason, subject) of the revoked issuers."""
    # Read for each client certificate whose answer is not remembered (a revocation on
    # another replica counts at once); usually no row. Their parsing is cached: the same few
    # PEMs every time.
    with connected(services, connection) as conn:
        rows = conn.execute(_REVOKED_ISSUERS).all()
    return [(str(issuer_id), pem, reason, subject) for issuer_id, pem, reason, subject in rows]


def _readable_ca(pem: str) -> tuple[x509.Certificate, bytes, bytes] | None:
    """:func:`parsed_ca`, or None when the stored PEM cannot be read."""
    try:
        return parsed_ca(pem)
    except ValueError:
        return None


@functools.lru_cache(maxsize=256)
def parsed_ca(pem: str) -> tuple[x509.Certificate, bytes, bytes]:
    """An issuer's certificate, its DER and its key's (SPKI), parsed once per process."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert, cert.public_bytes(serialization.Encoding.DER), spki(cert)


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
    unreadable = {
        subject: issuer_id
        for issuer_id, pem, _reason, subject in reversed(revoked)
        if _readable_ca(pem) is None
    }
    readable = [row for row in revoked if _readable_ca(row[1]) is not None]
    revoked_cas = [(issuer_id, parsed_ca(pem)[0]) for issuer_id, pem, _reason, _ in readable]
    # A compromise is the key's: a certificate it signed under another name and key
    # identifier (a twin root, which no CRL lists) is tried against the key itself.
    compromised = [
        (issuer_id, ca.public_key())
        for (issuer_id, ca), (_, _, reason, _) in zip(revoked_cas, readable, strict=True)
        if reason in COMPROMISE
    ]
    found = _revoked_signer(cert, revoked_cas, compromised) or _unreadable_named(cert, unreadable)
    if found is not None:
        return found
    # Deeper: a second read (of every issuer's certificate, few rows, each parsed once per
    # process), only while some issuer is revoked and the answer is not remembered.
    with connected(services, connection) as conn:
        rows = conn.execute(_ISSUER_CERTIFICATES).all()
    issuers = [parsed for (pem,) in rows if (parsed := _readable_ca(pem)) is not None]
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
                found = _revoked_signer(ca, revoked_cas, compromised) or _unreadable_named(
                    ca, unreadable
                )
                if found is not None:
                    return found
                above.append(ca)
        below = above
    return None


def _unreadable_named(cert: x509.Certificate, unreadable: dict[str, str]) -> str | None:
    """The id of a revoked issuer whose stored certificate cannot be read, judged by name.

    Its PEM cut short or written over in the database (a restore, a hand edit) made every
    client certificate not remembered answer 500, whatever its CA. ``unreadable`` maps its
    stored subject to its id: a certificate it could have signed (naming it as issuer) or
    that holds its name is refused; its key cannot be compared.
    """
    for name in (cert.issuer, cert.subject):
        found = unreadable.get(name.rfc4514_string())
        if found is not None:
            return found
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


def may_be_revoked_above(cert: x509.Certificate, chain: Sequence[x509.Certificate]) -> bool:
    """Whether a revoked issuer could be above ``cert`` (not a root without a chain)."""
    # A root's certificate is on no CRL (only intermediates are revoked) and has no chain:
    # the service CAs, checked on every pass, cost no query.
    return bool(chain) or cert.issuer != cert.subject


def revoked_certificates(session: Session) -> list[tuple[x509.Certificate, bytes | None]]:
    """The certificates of the revoked issuers (few), with their key (SPKI) if compromised."""
    rows = session.execute(
        select(Issuer.certificate_pem, Issuer.revocation_reason).where(
            Issuer.revoked_at.is_not(None)
        )
    )
    # Parsed once per process, as for mTLS. One whose stored certificate cannot be read is
    # left out: an issuer found below it when loaded (see _revoked_among) stays so, and the
    # periodic check of every cached issuer failed on it.
    return [
        (parsed[0], parsed[2] if reason in COMPROMISE else None)
        for pem, reason in rows
        if (parsed := _readable_ca(pem)) is not None
    ]


def newly_below_revoked(
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
                keys = {spki(c) for c in (ca.certificate, *ca.chain)}
            if compromised_key in keys or top_signed_by(ca.certificate, ca.chain, cert):
                return True
    return False


# The reasons that say an issuer's key is compromised: keyCompromise, and cACompromise, RFC
# 5280 5.3.1's name for it on a CA certificate (what the README suggests for issuers).
COMPROMISE = ("keyCompromise", "cACompromise")
