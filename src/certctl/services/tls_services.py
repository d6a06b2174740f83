"""Managed TLS for services (ECK ``spec.http.tls`` model): store specs, reconcile, deliver.

Reconciling a service decides, from its spec, its stored state and ``now`` (passed in, so
tests travel in time), whether its CA and certificate must be (re)issued, then delivers the
``-certs-internal`` bundle to the service's targets. Errors never touch what was deployed
before: the service's ``Failed`` condition carries the message instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import select

from certctl.errors import Conflict, InvalidRequest, NotFound
from certctl.metrics.registry import RENEWALS
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    Material,
    Profile,
    SubjectAltNames,
    asserts_ca,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    format_duration,
    format_serial,
    generate_private_key,
    is_self_signed,
    issuer_chain,
    key_to_pem,
    keys_match,
    load_material,
    to_pkcs12,
)
from certctl.pki.placeholder import no_client_trust_anchor
from certctl.services.audit import record, record_call
from certctl.services.context import Principal, Services
from certctl.services.target_policy import TargetPolicy, same_target, target_identity
from certctl.services.tls_spec import DirectoryTarget, SecretTarget, TLSServiceSpec, parse_service
from certctl.store.db import SERVICE_SPECS_LOCK, lock_for_write
from certctl.store.models import Issuer, ManagedService, OutboxEvent, ServiceClient

__all__ = [
    "OUTPUTS",
    "ServiceSettings",
    "TargetPolicy",
    "add_client",
    "backoff",
    "delete_service",
    "get_service",
    "list_services",
    "outputs_for",
    "put_service",
    "reconcile_service",
    "remove_client",
    "renewal_warnings",
    "request_renewal",
    "service_json",
]

log = logging.getLogger("certctl.services")
OUTPUTS = ("ca-internal", "certs-internal", "certs-public", "client-trust")
_MAX_BACKOFF = timedelta(minutes=5)
_FIRST_BACKOFF = timedelta(seconds=5)
_MIN_RENEWAL_INTERVAL = timedelta(seconds=5)
RESYNC_INTERVAL = timedelta(minutes=10)
# managed_services.expiring_serial of a service stored before Alembic 0009 (which sets it):
# whether "expiring" was sent for its certificate is judged at its first successful pass.
EXPIRING_UNKNOWN = "unknown: stored before 0009"


@dataclass(frozen=True)
class ServiceSettings:
    """Lifetimes and margins (DESIGN §3) and where custom-certificate secrets live."""

    ca_validity: timedelta = timedelta(hours=8760)
    ca_rotate_before: timedelta = timedelta(hours=24)
    cert_validity: timedelta = timedelta(hours=8760)
    cert_rotate_before: timedelta = timedelta(hours=24)
    secrets_dir: Path = Path("certctl-data/secrets")
    jitter: float = 0.1
    reload_runner: Callable[[str, float], None] | None = None
    # Writes a Secret target; True when it created or changed the Secret, False when the
    # Secret already held exactly this (the writer reads it first).
    secret_writer: Callable[[SecretTarget, dict[str, bytes]], bool] | None = None
    # Reads certificate.secretName from a Kubernetes Secret when secrets_dir has no such
    # directory: its tls.crt, tls.key, ca.crt, ca.key. Raises InvalidRequest (not found,
    # not labelled for certctl, no cluster configured).
    secret_reader: Callable[[str], dict[str, bytes]] | None = None
    # A secret_reader for one scheduler pass (``for_pass``): it may read every secret at its
    # first call (one LIST of the labelled Secrets) and answer the others from that, so a
    # pass over 1,000 services costs one request to the API server, not 1,000.
    secret_pass_reader: Callable[[], Callable[[str], dict[str, bytes]]] | None = None
    # Checked again at each delivery: what a stored path resolves to can change.
    target_policy: TargetPolicy | None = None

    def for_pass(self) -> ServiceSettings:
        """These settings for one scheduler pass: ``secret_pass_reader``'s reader, if any."""
        if self.secret_pass_reader is None:
            return self
        return replace(self, secret_reader=self.secret_pass_reader())

    def __post_init__(self) -> None:
        if self.cert_validity <= self.cert_rotate_before:
            raise InvalidRequest(
                f"cert-validity ({format_duration(self.cert_validity)}) must be longer than "
                f"cert-rotate-before ({format_duration(self.cert_rotate_before)})"
            )
        if self.ca_validity <= self.ca_rotate_before:
            raise InvalidRequest(
                f"ca-cert-validity ({format_duration(self.ca_validity)}) must be longer than "
                f"ca-cert-rotate-before ({format_duration(self.ca_rotate_before)})"
            )
        # A CA renews early enough that leaves clipped to it are not due at once (see
        # ca_renewal_time): a CA that short would be due again as soon as it is renewed.
        margin = self.ca_renewal_margin
        if self.ca_validity <= margin:
            raise InvalidRequest(
                f"ca-cert-validity ({format_duration(self.ca_validity)}) must be longer than "
                f"the CA renewal margin ({format_duration(margin)}: the longer of "
                "ca-cert-rotate-before and cert-rotate-before plus its 10 % jitter and 5 s)"
            )

    @property
    def ca_renewal_margin(self) -> timedelta:
        """How long before a CA's notAfter it is renewed (see ``ca_renewal_time``)."""
        leaf_margin = self.cert_rotate_before * (1 + self.jitter) + _MIN_RENEWAL_INTERVAL
        return max(self.ca_rotate_before, leaf_margin)


# --- targets no other service has --------------------------------------------------------


def _describe(identity: tuple[str, str | None, str]) -> str:
    kind, namespace, name = identity
    if kind == "dir":
        return f"dir:{name}"
    return f"secret:{namespace}/{name}" if namespace else f"secret:{name}"


def _check_targets_unique(session: Any, spec: TLSServiceSpec, policy: TargetPolicy) -> None:
    # Two services delivering to one place would overwrite each other on every pass.
    mine = [policy.target_identity(t) for t in spec.spec.targets]
    for i, identity in enumerate(mine):
        for j in range(i):
            if same_target(identity, mine[j]):
                raise InvalidRequest(
                    f"spec.targets.{i}: {_describe(identity)} is also spec.targets.{j}"
                )
    others = session.scalars(select(ManagedService).where(ManagedService.name != spec.name))
    for other in others:
        try:
            taken = [
                policy.target_identity(t)
                for t in parse_service(other.spec, stored=True).spec.targets
            ]
        except InvalidRequest:
            continue
        for i, identity in enumerate(mine):
            if any(same_target(identity, t) for t in taken):
                raise Conflict(
                    f"spec.targets.{i}: {_describe(identity)} is already a target of service "
                    f"{other.name}"
                )


# --- spec CRUD ---------------------------------------------------------------------------


def put_service(
    services: Services,
    caller: Principal,
    name: str,
    doc: Any,
    policy: TargetPolicy | None = None,
    *,
    dry_run: bool = False,
) -> ManagedService:
    """Create or replace a service's spec (validated whole; nothing stored when invalid).

    ``policy`` decides which directory targets and reload commands the caller may set
    (see ``TargetPolicy``); the default delegates no directory. With ``dry_run`` every check
    of the write is made and the service it would store is returned, detached: nothing is
    stored or audited.
    """
    caller.require("service.edit")
    spec = parse_service(doc)
    if spec.name != name:
        raise InvalidRequest(f"metadata.name {spec.name!r} does not match the URL name {name!r}")
    now = services.clock()
    document = spec.to_document()
    with services.sessions.begin() as session:
        # Every spec write in turn, across processes: the policy compares with the stored
        # spec and the uniqueness check with the others, which must not change meanwhile.
        lock_for_write(session, SERVICE_SPECS_LOCK)
        row = session.get(ManagedService, name, with_for_update=True)
        before = None
        if row is not None:
            try:
                before = parse_service(row.spec, stored=True)
            except InvalidRequest:
                before = None  # a stored spec no longer valid grants nothing
        policy = policy or TargetPolicy()
        policy.check(caller, spec, before)
        _check_targets_unique(session, spec, policy)
        if dry_run:
            return _would_store(row, name, document, now)
        if row is None:
            row = ManagedService(
                name=name,
                spec=document,
                generation=1,
                created_at=now,
                updated_at=now,
                conditions={},
                delivered={},
                attempts=0,
            )
            session.add(row)
            action = "service.create"
        else:
            if row.spec != document:
                row.spec, row.generation, row.updated_at = document, row.generation + 1, now
                row.attempts, row.next_attempt_at = 0, None
            action = "service.edit"
        record(
            session, at=now, actor=caller.actor_id, action=action, target=name, source=caller.source
        )
    return row


def _would_store(
    row: ManagedService | None, name: str, document: dict[str, Any], now: datetime
) -> ManagedService:
    """A detached copy of what ``put_service`` would store: what ``service_json`` shows."""
    if row is None:
        return ManagedService(
            name=name,
            spec=document,
            generation=1,
            created_at=now,
            updated_at=now,
            reconciled_generation=0,
            conditions={},
            delivered={},
        )
    changed = row.spec != document
    return ManagedService(
        name=name,
        spec=document,
        generation=row.generation + 1 if changed else row.generation,
        created_at=row.created_at,
        updated_at=now if changed else row.updated_at,
        reconciled_generation=row.reconciled_generation,
        serial=row.serial,
        not_after=row.not_after,
        renew_at=row.renew_at,
        conditions=row.conditions,
        delivered=row.delivered,
    )


def get_service(services: Services, caller: Principal, name: str) -> ManagedService:
    """One service."""
    caller.require("service.read")
    with services.sessions() as session:
        row = session.get(ManagedService, name)
    if row is None:
        raise NotFound(f"service {name} not found")
    return row


def list_services(services: Services, caller: Principal) -> list[ManagedService]:
    """All services, by name."""
    caller.require("service.read")
    with services.sessions() as session:
        return list(session.scalars(select(ManagedService).order_by(ManagedService.name)))


def delete_service(services: Services, caller: Principal, name: str) -> None:
    """Forget a service and its CA; delivered files stay where they are (they may be serving).

    The CA (``svc.<name>``) goes with it: nothing renews it any more, so it would sit in the
    issuer list with its key until it expired, and the issuer-expiry alert the README advises
    would fire for a service that no longer exists, with no API to clear it. A service applied
    again under the name gets a new CA.
    """
    caller.require("service.delete")
    now = services.clock()
    ca_id = _per_service_ca_id(name)
    with services.sessions.begin() as session:
        # Taken by a reconcile storing the service's CA too (_service_still_there): a CA
        # written while this runs is seen here and deleted, never left behind as an orphan.
        lock_for_write(session, SERVICE_SPECS_LOCK)
        # The row first, as every change of a service locks it: deleting its clients first
        # deadlocked against a client removal holding the row (PostgreSQL aborted one: 500).
        row = session.get(ManagedService, name, with_for_update=True)
        if row is None:
            raise NotFound(f"service {name} not found")
        for client in session.scalars(select(ServiceClient).where(ServiceClient.service == name)):
            session.delete(client)
        session.flush()
        session.delete(row)
        ca = session.get(Issuer, ca_id)
        if ca is not None:
            session.delete(ca)  # only the reconciler issued from it: no certificate row names it
        record_call(
            session, caller, now, "service.delete", name, detail=f"CA {ca_id}" if ca else ""
        )
    services.forget_issuer(ca_id)


def request_renewal(services: Services, caller: Principal, name: str) -> ManagedService:
    """Force the next reconcile to reissue the certificate."""
    caller.require("service.edit")
    now = services.clock()
    with services.sessions.begin() as session:
        row = _locked_service(session, name)
        tls = _stored_tls(row)
        self_signed = tls.get("selfSignedCertificate") if isinstance(tls, dict) else None
        if isinstance(self_signed, dict) and self_signed.get("disabled"):
            # Nothing would be issued, and the request would stay due: reconciled every pass.
            raise Conflict(f"service {name} has TLS disabled: there is no certificate to renew")
        row.renew_at = now
        row.next_attempt_at = None
        record_call(session, caller, now, "service.renew", name)
    return row


def renewal_warnings(row: ManagedService) -> list[str]:
    """What a renewal request cannot do for this service, said with its 202.

    A ``tls.crt`` + ``tls.key`` from ``certificate.secretName`` is served as it is and the
    request is dropped at the next pass (only its owner renews it); which of that or a CA
    the secret holds is known only when a pass reads it, so both are named.
    """
    secret = custom_secret_name(row)
    if secret is None:
        return []
    return [
        f"service {row.name} uses secret {secret}: a renewal reissues the certificate from "
        "its ca.crt + ca.key; a tls.crt + tls.key there is served as it is, renewed by "
        "whoever issued it (the secret is read at every pass), and this request is dropped"
    ]


def drop_retired_ca(services: Services, caller: Principal, name: str) -> ManagedService:
    """End the overlap of the replaced CAs now: the next pass delivers ``ca.crt`` without them.

    The overlap keeps servers not yet reloaded trusted; after a replacement because the old
    CA's key was compromised, the operator wants it distrusted at once, not a day later.
    """
    caller.require("service.edit")
    now = services.clock()
    with services.sessions.begin() as session:
        row = _locked_service(session, name)
        kept = _retired_cas(row)
        if not kept:
            raise Conflict(f"service {name} keeps no replaced CA in its ca.crt")
        # due() takes a passed end as work; that pass drops them and delivers. Every one:
        # the CA replaced first may be the one whose key leaked.
        _keep_retired(row, [(pem, min(until, now)) for pem, until in kept])
        record_call(session, caller, now, "service.drop-retired-ca", name)
    return row


# --- client trust ------------------------------------------------------------------------


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def add_client(services: Services, caller: Principal, name: str, pem: str) -> list[ServiceClient]:
    """Register client certificates or CAs (PEM certificates only) for a service."""
    caller.require("service.edit")
    if "PRIVATE KEY" in pem:
        raise InvalidRequest("client trust takes certificates only; never send a private key")
    material = load_material(pem.encode())
    if not material.certificates or material.csrs or material.crls:
        raise InvalidRequest("client trust takes PEM certificates only")
    kinds = [(cert, asserts_ca(cert)) for cert in material.certificates]
    if len({is_ca for _, is_ca in kinds}) > 1:
        # A fullchain.pem (client certificate + its CA): trusting the CA too would let in
        # every certificate it ever issued, which is seldom what "add this client" means.
        raise InvalidRequest(
            "the PEM holds client certificates and CA certificates: register either the "
            "client certificate(s) alone, or the CA(s) whose every certificate is to be trusted"
        )
    now = services.clock()
    added = []
    with services.sessions.begin() as session:
        row = _locked_service(session, name)
        for cert, is_ca in kinds:
            fingerprint = _fingerprint(cert)
            if session.get(ServiceClient, (name, fingerprint)) is not None:
                continue
            client = ServiceClient(
                service=name,
                fingerprint=fingerprint,
                subject=cert.subject.rfc4514_string(),
                certificate_pem=certs_to_pem([cert]).decode(),
                is_ca=is_ca,
                added_at=now,
            )
            session.add(client)
            added.append(client)
        if added:
            _trust_changed(row, now)
        record(
            session,
            at=now,
            actor=caller.actor_id,
            action="service.client.add",
            target=name,
            detail=",".join(c.fingerprint[:16] for c in added),
            source=caller.source,
        )
    return added


def client_trust_warnings(services: Services, name: str) -> list[str]:
    """Registered client certificates and CAs that OpenSSL-based servers will not honour.

    nginx, HAProxy and curl build a chain up to a self-signed anchor: a registered leaf or
    intermediate whose issuer is not registered too lets nobody in there (Java accepts it).
    """
    with services.sessions() as session:
        service = session.get(ManagedService, name)
        rows = session.scalars(select(ServiceClient).where(ServiceClient.service == name)).all()
    subjects = {r.subject for r in rows if r.is_ca}
    now = services.clock()
    warnings = []
    try:
        client_auth = (
            service is None or parse_service(service.spec, stored=True).tls.client.authentication
        )
    except InvalidRequest:
        client_auth = True  # a stored spec that no longer parses is its Failed condition
    if not client_auth:
        # Registered all the same (the switch may come next), but nothing else says that
        # no client-trust bundle reaches the targets meanwhile.
        warnings.append(
            f"service {name} has client authentication off (spec.http.tls.client."
            "authentication): its targets get no client-trust bundle until it is on"
        )
    for row in rows:
        cert = x509.load_pem_x509_certificate(row.certificate_pem.encode())
        what = "CA" if row.is_ca else "client certificate"
        # Registered as they are; these let nobody in, and nothing else says so.
        if now > cert.not_valid_after_utc:
            warnings.append(
                f"{what} {row.subject} expired on {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: "
                "servers refuse every client certificate that chains to it"
            )
        elif now < cert.not_valid_before_utc:
            warnings.append(
                f"{what} {row.subject} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}: servers refuse it until then"
            )
        if not row.is_ca:
            ekus = _extended_key_usages(cert)
            if ekus is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
                warnings.append(
                    f"client certificate {row.subject} lacks the clientAuth extended key "
                    "usage: servers refuse it as a client certificate"
                )
        issuer = cert.issuer.rfc4514_string()
        # Up to a self-signed certificate: an intermediate alone fails there too (nginx
        # sets no partial-chain flag).
        if not is_self_signed(cert) and issuer not in subjects:
            warnings.append(
                f"{what} {row.subject} is registered without its issuer ({issuer}): nginx "
                "and other OpenSSL servers accept its clients only once the chain up to a "
                "self-signed CA is registered; Java servers accept it alone"
            )
    return warnings


def remove_client(services: Services, caller: Principal, name: str, fingerprint: str) -> None:
    """Deregister a client certificate; the next reconcile drops it from the trust bundle."""
    caller.require("service.edit")
    now = services.clock()
    with services.sessions.begin() as session:
        _lock_service_row(session)
        row = session.get(ManagedService, name, with_for_update=True)
        client = session.get(ServiceClient, (name, fingerprint.lower().replace(":", "")))
        if row is None or client is None:
            raise NotFound(f"client {fingerprint} of service {name} not found")
        session.delete(client)
        _trust_changed(row, now)
        record_call(session, caller, now, "service.client.remove", name, detail=fingerprint[:16])


def _trust_changed(row: ManagedService, now: datetime) -> None:
    # The trust bundle is part of what targets receive, but due() only looks at the spec
    # and renewal times: without this a removed client stayed trusted until the next renewal.
    # Due now, back-off included: the caller asked for a change, as with a new spec.
    row.attempts, row.next_attempt_at = 0, now


def _client_trust(services: Services, name: str) -> bytes:
    with services.sessions() as session:
        pems = session.scalars(
            select(ServiceClient.certificate_pem).where(ServiceClient.service == name)
        ).all()
    if not pems:
        # Never an empty file (nginx will not start on one): a placeholder nobody chains to.
        seed = services.wrapper.derive(f"client-trust placeholder:{name}")
        return no_client_trust_anchor(seed, name)
    # Sorted and deduplicated (by content), so the bundle only changes when its set does.
    return "".join(sorted(set(pems))).encode()


# --- reconciliation ----------------------------------------------------------------------


@dataclass
class _Desired:
    """What one reconcile decided to serve."""

    certificate_pem: str | None = None
    chain_pem: str = ""
    ca_pem: str = ""
    key_pem: bytes | None = None
    ca_key_pem: bytes | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Cut short to its CA's notAfter: a new one issued from that CA would end no later.
    ends_with_ca: bool = False
    # A custom certificate served as it is: only its owner renews it.
    as_is: bool = False


# What a service whose CA key was compromised can do: its CA cannot be revoked (no CRL lists
# a root) nor replaced in place, deleting the service deletes it.
_COMPROMISED_ADVICE = (
    "serve a certificate of your own (tls.certificate), or delete the service and apply it "
    "again for a new CA"
)


def _per_service_ca_id(name: str) -> str:
    # issuers.MANAGED_ISSUER_PREFIX: the API neither issues from nor creates these.
    return f"svc.{name}"


def _ensure_service_ca(
    services: Services, settings: ServiceSettings, name: str, now: datetime
) -> tuple[CertificateAuthority, bool]:
    """The service's own CA (CN ``<name>-http``, OU ``<name>``), renewed with the same key."""
    ca, changed = _service_ca(services, settings, name, now, create=True)
    assert ca is not None
    return ca, changed


def _keep_service_ca_current(
    services: Services, settings: ServiceSettings, name: str, now: datetime
) -> None:
    """Renew the CA of a service that does not issue from it now (TLS disabled, custom).

    As ECK, which reconciles the CA whatever the spec: switched back to self-signed, the
    service issues from the CA its clients already hold, and the CA (in the issuer list and
    its expiry gauge) never sits there expired. None is created for such a service.
    """
    _service_ca(services, settings, name, now, create=False)


def _service_ca(
    services: Services, settings: ServiceSettings, name: str, now: datetime, *, create: bool
) -> tuple[CertificateAuthority | None, bool]:
    from certctl.services import issuers

    issuer_id = _per_service_ca_id(name)
    # The cache outlives a DELETE served by another worker or replica: the service applied
    # again would be issued from its deleted CA (stored nowhere) instead of a new one.
    issuers.forget_if_changed(services, issuer_id)
    try:
        ca, revoked = issuers.load_issuer_state(services, issuer_id)
    except NotFound:
        if not create:
            return None, False
        key = generate_private_key()
        subject = x509.Name(
            [
                x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, name),
                x509.NameAttribute(x509.NameOID.COMMON_NAME, f"{name}-http"),
            ]
        )
        root = create_root_ca(key, subject, validity=settings.ca_validity, now=now)
        issuers._store_issuer(
            services,
            issuer_id,
            f"{name} service CA",
            CertificateAuthority(root.certificate, key),
            None,
            "service.ca",
            guard=partial(_service_still_there, name),
        )
        return issuers.load_issuer(services, issuer_id), True
    if revoked is not None:
        # Its key revoked for a compromise under another certificate (an import of the
        # ca.key that ca-internal delivers): as the API refuses to issue from such a key,
        # it signs neither leaves nor its own renewal. The service fails (its status and
        # `failed` event say why) and keeps serving what it has; a service not issuing
        # from its CA (disabled, custom) is not failed for it.
        if not create:
            return ca, False
        raise InvalidRequest(issuers.revocation_refusal(revoked, issuer_id, _COMPROMISED_ADVICE))
    if now < ca_renewal_time(settings, ca):
        return ca, False
    renewed, wrote = issuers.renew_root_issuer(
        services, issuer_id, ca, validity=settings.ca_validity, now=now
    )
    if wrote:
        log.info(
            "renewed the CA of service %s (same key) until %s",
            name,
            renewed.certificate.not_valid_after_utc.isoformat(),
        )
    return renewed, True


def _locked_service(session: Any, name: str) -> ManagedService:
    """Service ``name``, locked for this transaction (as every writer of it locks it)."""
    _lock_service_row(session)
    row: ManagedService | None = session.get(ManagedService, name, with_for_update=True)
    if row is None:
        raise NotFound(f"service {name} not found")
    return row


def _lock_service_row(session: Any) -> None:
    """Before a transaction reads the service row it then writes: no DELETE in between.

    PostgreSQL's FOR UPDATE does that alone; SQLite ignores it and pysqlite reads outside any
    transaction, so a DELETE could commit before the write, which then matched no row (a
    StaleDataError: a reconcile backed off as a crash, a 500) or broke a foreign key. The
    SQLite write lock, taken first, makes the DELETE wait for this transaction instead.
    """
    if session.get_bind().dialect.name == "sqlite":
        lock_for_write(session, SERVICE_SPECS_LOCK)  # the lock key is PostgreSQL's only


def _service_still_there(name: str, session: Any) -> None:
    """Refuse to store the CA of a service deleted since this reconcile read it.

    In the CA's own transaction, after the lock delete_service takes too: the DELETE either
    committed before (the service is gone: no CA, which nothing would ever delete or renew),
    or waits for this transaction and then deletes the CA with the service.

    Raises:
        NotFound: the service was deleted.
    """
    lock_for_write(session, SERVICE_SPECS_LOCK)
    if session.get(ManagedService, name) is None:
        raise NotFound(f"service {name} was deleted")


def ca_renewal_time(settings: ServiceSettings, ca: CertificateAuthority) -> datetime:
    """When a root CA (a service's, or the internal ``default``) is renewed.

    ``ca-cert-rotate-before`` ahead, and early enough that a leaf clipped to the CA's
    notAfter is never due for renewal as soon as it is issued.
    """
    return ca.certificate.not_valid_after_utc - settings.ca_renewal_margin


_MAX_SECRET_FILE_BYTES = 1 << 20


def _read_secret(settings: ServiceSettings, secret: str) -> dict[str, bytes]:
    """``<secrets-dir>/<secret>/``, else the Kubernetes Secret ``secret`` (server with a cluster).

    The directory first, as before Secrets were read: a server that had one keeps serving it.
    """
    directory = settings.secrets_dir / secret
    if not directory.is_dir():
        if settings.secret_reader is None:
            raise InvalidRequest(
                f"secret {secret} not found (expected a directory {directory}; a Kubernetes "
                "Secret is read only by a server with a Kubernetes connection)"
            )
        return settings.secret_reader(secret)
    found = {}
    for name in ("tls.crt", "tls.key", "ca.crt", "ca.key"):
        data = _read_secret_file(secret, directory / name)
        if data is not None:
            found[name] = data
    return found


def _read_secret_file(secret: str, path: Path) -> bytes | None:
    """One file of a secret (links followed: a Kubernetes volume is links), None if missing.

    Read as _read_password reads: a FIFO there blocked the reconciler, and with it every
    service, for good; /dev/zero filled its memory. Only a regular file of at most 1 MiB.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidRequest(f"secret {secret}: cannot read {path.name}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidRequest(f"secret {secret}: {path.name} is not a regular file")
        chunks = []
        size = 0
        while size <= _MAX_SECRET_FILE_BYTES:
            chunk = os.read(fd, _MAX_SECRET_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > _MAX_SECRET_FILE_BYTES:
        raise InvalidRequest(f"secret {secret}: {path.name} is larger than 1 MiB")
    return b"".join(chunks)


def _custom_material(
    settings: ServiceSettings, spec: TLSServiceSpec, now: datetime
) -> tuple[_Desired | None, CertificateAuthority | None, tuple[x509.Certificate, ...], list[str]]:
    """Validate a custom certificate secret: a certificate to serve as is, or a CA to use.

    With a CA, also the certificates of its ``ca.crt`` outside its chain: more anchors for
    the targets' ``ca.crt`` (a trust bundle), never served after the leaf.
    """
    assert spec.tls.certificate is not None
    secret = spec.tls.certificate.secret_name
    files = _read_secret(settings, secret)
    warnings: list[str] = []
    if "tls.crt" in files and "tls.key" in files:
        certs = _secret_material(secret, "tls.crt", files["tls.crt"]).certificates
        key = _secret_material(secret, "tls.key", files["tls.key"]).private_key
        if not certs or key is None:
            raise InvalidRequest(f"secret {secret}: tls.crt or tls.key holds nothing usable")
        leaf = certs[0]
        if not keys_match(key, leaf):
            raise InvalidRequest(f"secret {secret}: tls.key does not match tls.crt")
        _check_server_certificate(secret, leaf)
        if now < leaf.not_valid_before_utc:
            raise InvalidRequest(
                f"secret {secret}: tls.crt is not valid before "
                f"{leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
            )
        if now > leaf.not_valid_after_utc:
            raise InvalidRequest(
                f"secret {secret}: tls.crt expired on {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
            )
        ca_pem = b""
        # An empty ca.crt is no ca.crt, as for ECK: cert-manager writes one for issuers
        # that do not know their CA, and `kubectl create secret generic` copies it as it is.
        if files.get("ca.crt", b"").strip():
            from certctl.pki import VerificationFailed, verify_certificate

            trust = _secret_material(secret, "ca.crt", files["ca.crt"]).certificates
            try:
                verify_certificate(
                    leaf, trust=trust, untrusted=certs[1:], now=now, hostname=None, purpose="server"
                )
            except VerificationFailed as exc:
                raise InvalidRequest(
                    f"secret {secret}: ca.crt does not verify tls.crt "
                    f"({exc.detail.removeprefix('verification failed: ')})"
                ) from None
            ca_pem = certs_to_pem(trust)
        elif is_self_signed(certs[-1]):
            ca_pem = certs_to_pem([certs[-1]])  # a self-signed tls.crt is its own trust anchor
        else:
            # Left out of the targets, not written empty: nginx, Java and Elasticsearch refuse
            # an empty CA file (ECK's issue 2243). Nor filled with the intermediates of
            # tls.crt: a client anchored there breaks when the issuer switches intermediates
            # (Let's Encrypt rotates them), and OpenSSL clients refuse a non-root anchor.
            warnings.append(
                f"secret {secret} has no ca.crt: targets get none, so clients must trust the "
                f"issuer of tls.crt ({certs[-1].issuer.rfc4514_string()}) some other way "
                "(fine for a public CA)"
            )
        missing = _uncovered_names(leaf, spec)
        if missing:
            warnings.append(f"secret {secret}: tls.crt does not cover {', '.join(missing)}")
        ekus = _extended_key_usages(leaf)
        if spec.client_auth and ekus is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
            # Served all the same (the server side works), but the peers it connects to as a
            # client will refuse it: say so rather than leave it to a handshake error.
            warnings.append(
                f"secret {secret}: tls.crt lacks the clientAuth extended key usage that "
                "usages asks for: peers refuse it as a client certificate"
            )
        desired = _Desired(
            certificate_pem=certs_to_pem([leaf]).decode(),
            chain_pem=certs_to_pem(certs[1:]).decode(),
            ca_pem=ca_pem.decode(),
            key_pem=key_to_pem(key),
        )
        return desired, None, (), warnings
    if "ca.crt" in files and "ca.key" in files:
        certs = _secret_material(secret, "ca.crt", files["ca.crt"]).certificates
        key = _secret_material(secret, "ca.key", files["ca.key"]).private_key
        if not certs or key is None:
            raise InvalidRequest(f"secret {secret}: ca.crt or ca.key holds nothing usable")
        # The CA is the certificate of the key, its chain the others that issue it in turn
        # (by name and signature, in any order, as `issuers import` takes a bundle); any
        # other certificate is one more anchor to trust. All taken for its chain in the
        # order given, a root kept for the clients (while moving from one root to another)
        # became "the root": targets got it alone as ca.crt, and the CA after the leaf.
        ca_cert = next((c for c in certs if keys_match(key, c)), None)
        if ca_cert is None:
            raise InvalidRequest(f"secret {secret}: ca.key does not match ca.crt")
        chain, anchors = issuer_chain(ca_cert, [c for c in certs if c is not ca_cert])
        try:
            ca = CertificateAuthority(ca_cert, key, chain)
        except InvalidRequest as exc:
            raise InvalidRequest(f"secret {secret}: ca.crt is not a CA ({exc.detail})") from None
        if now > ca.certificate.not_valid_after_utc:
            raise InvalidRequest(f"secret {secret}: ca.crt expired")
        if not is_self_signed(ca.root):
            # Served after the leaf (_served_chain), but what targets get as ca.crt is no
            # anchor for nginx, Python and other OpenSSL clients without partial chains. The
            # chain is the CA's (issuer_chain), not ca.crt's order: another root listed last
            # is an anchor of its own, so "ca.crt ends with" would name the wrong one.
            warnings.append(
                f"secret {secret}: the CA's chain in ca.crt ends with "
                f"{ca.root.subject.rfc4514_string()}, which is not self-signed: targets get it "
                "as the CA's root in ca.crt, which OpenSSL clients refuse as a trust anchor; "
                f"add its issuer ({ca.root.issuer.rfc4514_string()}) and the rest of the chain "
                "up to the root to ca.crt (in any order)"
            )
        if ca.certificate.not_valid_after_utc - now <= settings.cert_rotate_before:
            warnings.append(
                f"secret {secret}: ca.crt expires on "
                f"{ca.certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ} and the certificate "
                "it issues ends with it: renew or replace the CA"
            )
        return None, ca, anchors, warnings
    raise InvalidRequest(f"secret {secret} holds neither tls.crt+tls.key nor ca.crt+ca.key")


def _secret_material(secret: str, name: str, data: bytes) -> Material:
    """One file of a custom secret, read; an error names the secret and the file.

    Raises:
        InvalidRequest: the file holds nothing readable, or an encrypted key.
    """
    try:
        return load_material(data)
    except InvalidRequest as exc:
        if "encrypted" in exc.detail:
            # load_material's own advice (--password-file) names a CLI option: there is
            # none here, the reconciler needs the key in clear, as ECK does.
            raise InvalidRequest(
                f"secret {secret}: {name} is encrypted; certctl reads only unencrypted keys "
                f"(openssl pkey -in {name} -out {name}.clear)"
            ) from None
        raise InvalidRequest(f"secret {secret}: {name}: {exc.detail}") from None


def _check_server_certificate(secret: str, leaf: x509.Certificate) -> None:
    """Refuse a tls.crt that TLS clients would reject, or that hands the targets a CA key.

    Without a ca.crt nothing else checks it (verify_certificate checks the purpose only when
    there is a chain to verify), and a CA certificate served as is puts the CA's key in every
    target's tls.key. ``openssl req -x509`` marks its self-signed certificates CA:TRUE, so a
    self-signed one with subjectAltNames (made to be served, as in ECK's example) is accepted;
    an intermediate, or a root naming no host, is a CA.
    """
    from certctl.pki.verify import eku_name

    try:
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names_hosts = True
    except x509.ExtensionNotFound:
        names_hosts = False
    if asserts_ca(leaf) and not (names_hosts and is_self_signed(leaf)):
        raise InvalidRequest(
            f"secret {secret}: tls.crt is a CA certificate, not a server certificate (to have "
            "certctl issue the service's certificate from this CA, name its files ca.crt and "
            "ca.key)"
        )
    ekus = _extended_key_usages(leaf)
    if ekus is not None and ExtendedKeyUsageOID.SERVER_AUTH not in ekus:
        names = ", ".join(eku_name(oid) for oid in ekus) or "none"
        raise InvalidRequest(
            f"secret {secret}: tls.crt is not a server certificate (its extended key usage "
            f"lacks serverAuth; it has {names})"
        )


def _uncovered_names(leaf: x509.Certificate, spec: TLSServiceSpec) -> list[str]:
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = SubjectAltNames.from_extension(ext)
    except x509.ExtensionNotFound:
        have = SubjectAltNames()
    # As a TLS client matches: DNS names without regard to case, a wildcard SAN covering one
    # label, IP addresses as addresses (the spec's "0:0::1" is the certificate's "::1").
    # Compared as strings, a *.example.com certificate was reported as not covering
    # a.example.com.
    have_dns = {d.lower() for d in have.dns}
    have_ips = set(have.ip)
    missing = []
    for name in spec.dns_names():
        if name == spec.name:
            continue
        parent = name.partition(".")[2]
        if name not in have_dns and not (
            not name.startswith("*.") and parent and f"*.{parent}" in have_dns
        ):
            missing.append(name)
    missing += [a for a in spec.ip_addresses() if ipaddress.ip_address(a) not in have_ips]
    return missing


def _jitter(settings: ServiceSettings, name: str, serial: str) -> timedelta:
    # Deterministic per certificate, so restarts do not move the renewal time.
    fraction = int(hashlib.sha256(f"{name}:{serial}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    # At most half the time a certificate lives before its margin: a cert-validity barely
    # longer than cert-rotate-before (25h and 24h) put the jittered renewal of most
    # certificates before their issue, so each was reissued (and reloaded, and announced as
    # "renewed") at every pass until the hash of a serial happened to land late enough.
    room = (settings.cert_validity - settings.cert_rotate_before) / 2
    return min(settings.cert_rotate_before * settings.jitter, room) * fraction


def _renewal_time(
    settings: ServiceSettings, name: str, serial: str, not_after: datetime
) -> datetime:
    """When certctl renews the certificate ``serial``: ``cert-rotate-before`` (and jitter) ahead."""
    return not_after - settings.cert_rotate_before - _jitter(settings, name, serial)


def _renewal_by_current_margin(settings: ServiceSettings, row: ManagedService) -> datetime | None:
    """The stored renewal time, brought forward to the ``cert-rotate-before`` configured now.

    The stored time was computed with the margin of the day the certificate was issued: a
    ``cert-rotate-before`` raised since (say 24h to 720h, to have a month to notice a failing
    renewal) left every existing certificate renewing by the old margin, and the service sent
    ``expiring`` (judged by the new one) for a certificate nothing renewed. ECK judges each
    certificate by the current margin at each pass. Never later than stored: a renewal
    already due, or asked for (``services renew``), stays so. None (a certificate certctl
    does not renew: custom, or cut short by its CA) stays None.
    """
    if row.renew_at is None or row.not_after is None or row.serial is None:
        return row.renew_at
    return min(row.renew_at, _renewal_time(settings, row.name, row.serial, row.not_after))


def _needs_leaf(
    row: ManagedService, spec: TLSServiceSpec, ca: CertificateAuthority, now: datetime
) -> str | None:
    """Why the certificate must be reissued, or None."""
    if row.certificate_pem is None or row.wrapped_key is None:
        return "no certificate yet"
    if row.renew_at is not None and now >= row.renew_at:
        return "due for renewal"
    cert = x509.load_pem_x509_certificate(row.certificate_pem.encode())
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = SubjectAltNames.from_extension(ext)
    except x509.ExtensionNotFound:
        have = SubjectAltNames()
    wanted = SubjectAltNames.parse(dns=spec.dns_names(), ip=spec.ip_addresses())
    # As sets: the same names listed in another order (a reformatted YAML) are the same
    # certificate, not a reason to reissue and reload.
    if (set(have.dns), set(have.ip)) != (set(wanted.dns), set(wanted.ip)) or have.email or have.uri:
        return "subject alternative names changed"
    if cert.subject != common_name_dn(spec.name):
        return "subject changed"
    if set(_extended_key_usages(cert) or ()) != set(_profile(spec).extended_key_usage):
        return "usages changed"
    if cert.issuer != ca.certificate.subject:
        return "issuer changed"
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, Exception):
        return "issuer key changed"
    if row.renew_at is None and cert.not_valid_after_utc < ca.certificate.not_valid_after_utc:
        # No renewal date: left without one because its CA was about to expire (_store_issue)
        # and the CA was renewed since, or served as is from a secret that now holds the CA
        # that issued it. Kept, it would never be renewed, and served past its notAfter.
        return "not renewed by certctl yet"
    return None


def _profile(spec: TLSServiceSpec) -> Profile:
    """What certctl issues the service's certificate as: ``usages`` (server auth by default)."""
    return PROFILES["server+client"] if spec.client_auth else PROFILES["server"]


def _extended_key_usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier] | None:
    """The certificate's extended key usages; None without the extension (any usage)."""
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def reconcile_service(
    services: Services, settings: ServiceSettings, name: str, now: datetime
) -> ManagedService:
    """Bring one service to its spec: issue or renew as needed, then deliver.

    Never raises for problems of the service itself: they become its ``Failed`` condition.
    """
    with services.sessions() as session:
        row = session.get(ManagedService, name)
        if row is None:
            raise NotFound(f"service {name} not found")
    # A client added or removed while this pass runs sets next_attempt_at anew: that later
    # request must survive this pass's "done" (its trust bundle may predate the change).
    asked_at = row.next_attempt_at
    serial_before = row.serial
    was_renewing = bool(_condition(row.conditions, "Renewing").get("status"))
    try:
        spec = parse_service(row.spec, stored=True)
    except InvalidRequest as exc:
        # Stored before a rule was added (or edited in the database): the service's own
        # problem, shown in its status and backed off, never a crash of every pass.
        return _fail(services, row, now, f"stored spec no longer valid: {exc.detail}", "spec")
    conditions: dict[str, Any] = {}
    row.renew_at = _renewal_by_current_margin(settings, row)
    try:
        result = _decide(services, settings, row, spec, now)
    except (InvalidRequest, Conflict) as exc:
        # Conflict: the service's CA cannot sign as stored (its certificate changed in the
        # database): the service's own problem, shown in its status, not a crashed pass.
        return _fail(services, row, now, exc.detail, stage="issue")
    desired, reason, warnings = result
    if reason is not None:
        row = _store_issue(services, settings, row, spec, desired, reason, now)
        asked_at = row.next_attempt_at  # its "delivery pending" mark, cleared below
    _keep_retired(row, _retired_cas(row, now))  # those whose overlap is over: dropped
    bundle = outputs_for(services, row, spec)
    failures = _deliver(services, settings, row, spec, bundle, warnings)
    message = "; ".join(warnings)
    with services.sessions.begin() as session:
        _lock_service_row(session)
        current = session.get(ManagedService, name, with_for_update=True)
        if current is None:
            raise NotFound(f"service {name} was deleted")
        current.delivered = dict(row.delivered)
        current.reconciled_generation = row.generation
        _keep_retired(current, _retired_cas(current, now))  # delivered without those ended
        current.ca_renew_at = _service_ca_renew_at(services, settings, spec)
        if desired.as_is or spec.disabled:
            # A renewal asked for (`services renew`) that no pass can do (only the owner of
            # the secret can): left set, it showed as the next renewal, past, for good, and
            # kept a disabled service due on every pass.
            current.renew_at = None
        elif current.serial == row.serial:
            # Brought forward to today's cert-rotate-before, so due() and the status agree.
            current.renew_at = _renewal_by_current_margin(settings, current)
        if failures:
            current.attempts += 1
            current.next_attempt_at = now + backoff(current.attempts)
            detail = "; ".join(failures)
            # Still renewing while a retry fails to deliver what an earlier pass issued:
            # Renewing + Failed say "issued, not yet delivered everywhere" (README).
            renewing = reason is not None or was_renewing
            conditions = _conditions(
                current.conditions,
                ready=False,
                renewing=renewing,
                failed=detail,
                message=message,
                now=now,
            )
            if not _failure_told(current.conditions, detail):
                _event(session, now, "failed", name, {"reason": detail})
        else:
            current.attempts = 0
            if current.next_attempt_at == asked_at:
                current.next_attempt_at = None
            ready_msg = message or "serving"
            if spec.disabled:
                ready_msg = "TLS disabled: plain HTTP" + (f"; {message}" if message else "")
            conditions = _conditions(
                current.conditions,
                ready=True,
                renewing=False,
                failed=None,
                message=ready_msg,
                now=now,
            )
            expiring = (
                not spec.disabled
                and current.not_after is not None
                and current.not_after - now <= settings.cert_rotate_before
            )
            if current.expiring_serial == EXPIRING_UNKNOWN:
                # Stored before 0009: told by the rule of then, judged once, here.
                told = expiring and _told_before_0009(settings, current, serial_before)
                current.expiring_serial = current.serial if told else None
            if expiring and current.expiring_serial != current.serial:
                assert current.not_after is not None  # expiring says so
                # Once per certificate: a custom one (which certctl does not renew) is
                # reconciled on every pass, and each used to send the event again, thousands
                # a day to the webhook. The column holds across restarts and replicas.
                _event(session, now, "expiring", name, {"not_after": current.not_after.isoformat()})
                current.expiring_serial = current.serial
        if conditions != current.conditions:
            # Assigned only when changed: a pass that changes nothing writes nothing (a
            # custom certificate is reconciled every 10 s).
            current.conditions = conditions
        session.flush()
        session.expunge(current)
    return current


def _told_before_0009(
    settings: ServiceSettings, current: ManagedService, serial_before: str | None
) -> bool:
    """Whether certctl before 0009 sent ``expiring`` for the certificate served now.

    It stamped each condition with every pass's time, and sent the event unless the pass
    before (the Ready time; this pass has not written its conditions yet) was a successful
    one inside the window, serving the same certificate. Judged with the
    ``cert-rotate-before`` of now, as that pass would have been.
    """
    if serial_before != current.serial or current.not_after is None:
        return False  # a certificate issued by this pass: nobody was told of it
    if _condition(current.conditions, "Failed").get("status"):
        return False  # a failed pass sent "failed", not "expiring"
    at = _condition(current.conditions, "Ready").get("at")
    try:
        last_pass = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        return False
    if last_pass is None:
        return False
    if last_pass.tzinfo is None:
        last_pass = last_pass.replace(tzinfo=UTC)
    return last_pass >= current.not_after - settings.cert_rotate_before


def _service_ca_renew_at(
    services: Services, settings: ServiceSettings, spec: TLSServiceSpec
) -> datetime | None:
    # Whatever the spec: a disabled service's CA is renewed too (_keep_service_ca_current).
    from certctl.services import issuers

    try:
        ca, revoked = issuers.load_issuer_state(services, _per_service_ca_id(spec.name))
    except NotFound:
        return None
    # A compromised key renews nothing (_service_ca): a time past would make the service
    # due at every pass.
    return None if revoked is not None else ca_renewal_time(settings, ca)


def _decide(
    services: Services,
    settings: ServiceSettings,
    row: ManagedService,
    spec: TLSServiceSpec,
    now: datetime,
) -> tuple[_Desired, str | None, list[str]]:
    if spec.disabled or spec.tls.certificate is not None:
        _keep_service_ca_current(services, settings, spec.name, now)
    if spec.disabled:
        reason = "TLS disabled" if row.certificate_pem is not None else None
        return _Desired(), reason, []
    if spec.tls.certificate is not None:
        served, custom_ca, anchors, warnings = _custom_material(settings, spec, now)
        if served is not None:
            # The chain too: an intermediate renewed (or replaced) under the same leaf has to
            # reach the targets, or clients lose the path when the old one expires.
            same = (served.certificate_pem, served.chain_pem, served.ca_pem) == (
                row.certificate_pem,
                row.chain_pem or "",
                row.ca_pem,
            )
            served.as_is = True
            return served, None if same else "custom certificate changed", warnings
        assert custom_ca is not None
        # A CA renewed by its owner (same key) is published, as a service CA's is; so is an
        # intermediate renewed, or a root added after it, under the same key.
        ca = custom_ca
        trust_pem = (ca.root_pem + certs_to_pem(anchors)).decode()
        ca_changed = row.ca_pem is not None and (row.ca_pem, row.chain_pem or "") != (
            trust_pem,
            _served_chain(ca),
        )
    else:
        ca, ca_changed = _ensure_service_ca(services, settings, spec.name, now)
        trust_pem = ca.root_pem.decode()
        # A renewed CA not yet published for this service (whoever renewed it died first).
        ca_changed = ca_changed or row.ca_pem not in (None, trust_pem)
        warnings = []
    reason = _needs_leaf(row, spec, ca, now)
    if reason is None and not ca_changed:
        return _Desired(), None, warnings
    if reason is None:
        # The CA certificate was renewed (same key): publish it; the leaf stays valid.
        desired = _current(services, row)
        desired.ca_pem = trust_pem
        desired.chain_pem = _served_chain(ca)
        return desired, "CA renewed", warnings
    key = generate_private_key()
    # A leaf never outlives its CA: shorten it quietly (the CA is renewed ahead of time).
    validity = min(settings.cert_validity, ca.certificate.not_valid_after_utc - now)
    issued = ca.issue(
        key.public_key(),
        common_name_dn(spec.name),
        profile=_profile(spec),
        validity=validity,
        now=now,
        sans=SubjectAltNames.parse(dns=spec.dns_names(), ip=spec.ip_addresses()),
    )
    desired = _Desired(
        certificate_pem=certs_to_pem([issued.certificate]).decode(),
        chain_pem=_served_chain(ca),
        ca_pem=trust_pem,
        key_pem=key_to_pem(key),
        ends_with_ca=validity < settings.cert_validity,
    )
    # Not "lifetime ... is under 60 days; plan its renewal": that is advice for a certificate
    # someone renews by hand, and certctl renews this one itself (a cert-validity of 30 days
    # put it in the status of every service at each renewal).
    advice = [w for w in issued.warnings if not w.endswith("; plan its renewal")]
    return desired, reason, [*warnings, *advice]


def _served_chain(ca: CertificateAuthority) -> str:
    """What targets serve after the leaf: the CA's chain up to, not including, a root.

    A custom ``ca.crt`` ending with an intermediate (its root left out) is served too, as
    ECK serves its CA after the leaf: left out, a client trusting the root had no way to it.
    """
    if not is_self_signed(ca.root):
        return certs_to_pem([*ca.chain_below_root, ca.root]).decode()
    return ca.chain_below_root_pem.decode()


def _current(services: Services, row: ManagedService) -> _Desired:
    key = None
    if row.wrapped_key is not None:
        key = services.wrapper.unwrap(row.wrapped_key, context=f"service:{row.name}")
    return _Desired(row.certificate_pem, row.chain_pem or "", row.ca_pem or "", key)


# What _needs_leaf says when another CA issues the service's certificate from now on: the
# leaves served until now do not chain to the new CA.
_CA_REPLACED = ("issuer changed", "issuer key changed")


def _retire_ca(
    settings: ServiceSettings,
    row: ManagedService,
    desired: _Desired,
    reason: str,
    now: datetime,
) -> None:
    """Keep the CA being replaced in ``ca.crt`` for a while, or forget those no longer kept.

    ``row`` still holds what was served. A CA replaced by another (a custom ``ca.crt`` +
    ``ca.key`` with a new key or name) used to leave the targets' ``ca.crt`` at once: a
    server not reloaded yet (another node, a reload failing) presented a leaf under the old
    CA, which peers holding the new ``ca.crt`` refused. A service CA is renewed with its
    key, so leaves under its previous certificate verify as long as that one is valid, the
    CA renewal margin: the replaced CA stays as long, and no longer than the leaf certctl
    issued under it. A CA replaced while an earlier one is still kept (A, B, then C within
    the overlap) adds to it: A stays until its own end, as a server that reloaded neither
    time still presents its leaf under A.
    """
    kept = _retired_cas(row, now)
    old_ca = row.ca_pem or ""
    old_end = row.not_after
    if (
        reason in _CA_REPLACED
        and old_ca.strip()
        and old_ca != desired.ca_pem
        and old_end is not None
        and now < old_end
    ):
        ends = min(now + settings.ca_renewal_margin, old_end)
        earlier = [(pem, until) for pem, until in kept if pem not in (old_ca, desired.ca_pem)]
        # A bound for a CA swapped every few minutes, whose ca.crt would otherwise grow by
        # one CA a swap for a day: past it, the oldest goes first.
        kept = [(old_ca, ends), *earlier][:_MAX_RETIRED_CAS]
    elif desired.certificate_pem is None or desired.as_is:
        # TLS disabled, or a certificate served as is (its owner's ca.crt says whom to
        # trust): nothing more to keep.
        kept = []
    else:
        # Back to a CA being retired: it is the current one again, no longer one to retire.
        kept = [(pem, until) for pem, until in kept if pem != desired.ca_pem]
    _keep_retired(row, kept)


# The replaced CAs a ca.crt keeps at most (each for at most the CA renewal margin).
_MAX_RETIRED_CAS = 4


def _retired_cas(row: ManagedService, now: datetime | None = None) -> list[tuple[str, datetime]]:
    """The replaced CAs ``row`` keeps in ``ca.crt``, each with its end, newest first.

    ``now``: only those whose overlap is not over then. An entry of ``earlier_retired_cas``
    not of the shape stored (edited in the database) is left out: it must not stop the
    pass of the service.
    """
    kept: list[tuple[str, datetime]] = []
    if row.retired_ca_pem and row.retired_ca_until is not None:
        kept.append((row.retired_ca_pem, row.retired_ca_until))
    for entry in row.earlier_retired_cas or []:
        try:
            pem, until = entry["pem"], datetime.fromisoformat(entry["until"])
        except (KeyError, TypeError, ValueError):
            continue
        if isinstance(pem, str) and pem.strip() and until.tzinfo is not None:
            kept.append((pem, until))
    return [(pem, until) for pem, until in kept if now is None or now < until]


def _keep_retired(row: ManagedService, kept: list[tuple[str, datetime]]) -> None:
    """Store ``kept`` (newest first) as ``row``'s replaced CAs (assigned only if changed)."""
    pem, until = kept[0] if kept else (None, None)
    earlier = [{"pem": p, "until": u.isoformat()} for p, u in kept[1:]] or None
    if (row.retired_ca_pem, row.retired_ca_until) != (pem, until):
        row.retired_ca_pem, row.retired_ca_until = pem, until
    if row.earlier_retired_cas != earlier:
        row.earlier_retired_cas = earlier


def _with_retired(ca_pem: str, retired_pems: list[str]) -> str:
    """``ca_pem``, then the certificates of the CAs being retired that it does not hold."""
    if not retired_pems:
        return ca_pem
    have = set(x509.load_pem_x509_certificates(ca_pem.encode())) if ca_pem.strip() else set()
    extra = []
    for pem in retired_pems:
        for cert in x509.load_pem_x509_certificates(pem.encode()):
            if cert not in have:
                have.add(cert)
                extra.append(cert)
    return ca_pem + certs_to_pem(extra).decode()


def _store_issue(
    services: Services,
    settings: ServiceSettings,
    row: ManagedService,
    spec: TLSServiceSpec,
    desired: _Desired,
    reason: str,
    now: datetime,
) -> ManagedService:
    with services.sessions.begin() as session:
        _lock_service_row(session)
        current = session.get(ManagedService, row.name, with_for_update=True)
        if current is None:
            raise NotFound(f"service {row.name} was deleted")
        if current.certificate_pem != row.certificate_pem:
            # Another reconciler (a replica that took over the leadership while this one
            # was still running) stored a certificate after this one read the row: keep
            # theirs, so each due period yields one stored certificate and one event.
            log.warning("service %s was reconciled concurrently; keeping that result", row.name)
            session.expunge(current)
            return current
        first = current.certificate_pem is None
        _retire_ca(settings, current, desired, reason, now)
        # Delivery pending: if this process dies before delivering, due() sees it and
        # whichever replica reconciles next delivers (the final commit clears it).
        current.next_attempt_at = now
        current.certificate_pem = desired.certificate_pem
        current.chain_pem = desired.chain_pem
        current.ca_pem = desired.ca_pem
        current.wrapped_key = (
            services.wrapper.wrap(desired.key_pem, context=f"service:{row.name}")
            if desired.key_pem
            else None
        )
        if desired.certificate_pem is None:
            current.serial = current.not_after = current.renew_at = None
        else:
            cert = x509.load_pem_x509_certificate(desired.certificate_pem.encode())
            current.serial = format_serial(cert.serial_number)
            current.not_after = cert.not_valid_after_utc
            # A custom certificate is renewed by its owner; only certctl's own get a date.
            served_as_is = reason == "custom certificate changed"
            renew_at = _renewal_time(settings, row.name, current.serial, cert.not_valid_after_utc)
            if served_as_is or (desired.ends_with_ca and renew_at <= now + _MIN_RENEWAL_INTERVAL):
                # Nor one cut short by a custom CA about to expire: reissued, it would end
                # at the same instant, so every pass would issue, deliver and reload again.
                # It is reissued once that CA is renewed or replaced (_needs_leaf).
                current.renew_at = None
            else:
                current.renew_at = max(renew_at, now + _MIN_RENEWAL_INTERVAL)
            event = "issued" if first else "renewed"
            if reason not in ("CA renewed",):
                _event(
                    session,
                    now,
                    event,
                    row.name,
                    {
                        "serial": current.serial,
                        "not_after": current.not_after.isoformat(),
                        "reason": reason,
                    },
                )
                if not first:
                    RENEWALS.labels("success").inc()
        session.flush()
        session.expunge(current)
    log.info(
        "service %s: %s (%s)",
        row.name,
        "certificate issued" if desired.certificate_pem else "certificates removed",
        reason,
    )
    return current


def outputs_for(
    services: Services, row: ManagedService, spec: TLSServiceSpec | None = None
) -> dict[str, dict[str, bytes]]:
    """The service's outputs (DESIGN §7) as ``{output: {file name: bytes}}``."""
    spec = spec or parse_service(row.spec, stored=True)
    if spec.disabled or row.certificate_pem is None:
        return {}
    current = _current(services, row)
    leaf = (current.certificate_pem or "").encode() + current.chain_pem.encode()
    # No ca.crt at all for a custom certificate whose CA is not given (as ECK's public
    # Secret): an empty file is refused by the servers and clients that read it.
    # Those whose overlap is over are left out: the API served them until the next pass.
    retired = [pem for pem, _ in _retired_cas(row, services.clock())]
    ca_pem = _with_retired(current.ca_pem, retired)
    ca = {"ca.crt": ca_pem.encode()} if ca_pem.strip() else {}
    outputs: dict[str, dict[str, bytes]] = {
        "certs-internal": {"tls.crt": leaf, "tls.key": current.key_pem or b"", **ca},
        "certs-public": {"tls.crt": leaf, **ca},
    }
    service_ca: CertificateAuthority | None = None
    if spec.tls.certificate is None:
        from certctl.services import issuers

        # Missing for a spec just switched from a custom certificate and not reconciled yet:
        # the row still holds that certificate, whose public outputs are still what is
        # served (they answered 404 "issuer svc.<name> not found" meanwhile).
        with contextlib.suppress(NotFound):
            service_ca = issuers.load_issuer(services, _per_service_ca_id(spec.name))
    if service_ca is not None:
        outputs["ca-internal"] = {
            "ca.crt": service_ca.root_pem,
            "ca.key": service_ca.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        }
    if spec.tls.client.authentication:
        outputs["client-trust"] = {"ca.crt": _client_trust(services, spec.name)}
    return outputs


def _target_key(target: DirectoryTarget | SecretTarget) -> str:
    if isinstance(target, DirectoryTarget):
        return f"dir:{target.directory}"
    if target.namespace is None:
        return f"secret:{target.secret}"  # in kubernetes.namespace
    return f"secret:{target.namespace}/{target.secret}"


def _target_files(
    target: DirectoryTarget | SecretTarget, bundle: dict[str, dict[str, bytes]]
) -> dict[str, tuple[bytes, bool]]:
    internal = bundle.get("certs-internal")
    if internal is None:
        return {}
    files = {
        "tls.crt": (internal["tls.crt"], False),
        "tls.key": (internal["tls.key"], True),
    }
    if "ca.crt" in internal:
        files["ca.crt"] = (internal["ca.crt"], False)
    if "client-trust" in bundle:
        files["client-trust.crt"] = (bundle["client-trust"]["ca.crt"], False)
    return files


def _deliver(
    services: Services,
    settings: ServiceSettings,
    row: ManagedService,
    spec: TLSServiceSpec,
    bundle: dict[str, dict[str, bytes]],
    warnings: list[str],
) -> list[str]:
    """Deliver ``bundle`` to every target; return the failures, append to ``warnings``."""
    from certctl.metrics.registry import DELIVERIES
    from certctl.pki import load_private_key
    from certctl.pki.formats import pkcs12_password_warning
    from certctl.targets.directory import (
        BundleFile,
        DeliveryError,
        deliver_to_directory,
        directory_intact,
        remove_directory_target,
        run_reload,
    )

    failures: list[str] = []
    # Only the spec's targets: one taken out of it is no longer kept current, so listing it
    # (with a digest that soon no longer matches the service) would say otherwise.
    keys = {_target_key(t) for t in spec.spec.targets}
    delivered = {k: v for k, v in row.delivered.items() if k in keys}
    for target in spec.spec.targets:
        key = _target_key(target)
        files = _target_files(target, bundle)
        try:
            if isinstance(target, DirectoryTarget) and settings.target_policy is not None:
                problem = settings.target_policy.delivery_problem(target)
                if problem is not None:
                    raise DeliveryError(problem)
            password = None
            if isinstance(target, DirectoryTarget) and target.format == "pkcs12" and files:
                assert target.password_file is not None
                password = _read_password(target.password_file, settings.target_policy)
                # Delivered all the same (OpenSSL reads it), but the Java services this
                # format is for answer "keystore password was incorrect": say so in the
                # status, as cert issue --p12 warns.
                java = pkcs12_password_warning(password)
                if java is not None:
                    warnings.append(f"{key}: {java}")
            digest = _delivery_digest(services, target, files, password)
            already = delivered.get(key) == digest
            if (
                already
                and isinstance(target, DirectoryTarget)
                and directory_intact(target.directory, _expected_files(target, files))
            ):
                continue
            if isinstance(target, DirectoryTarget):
                policy = settings.target_policy
                # Judged on the parent as opened, so nothing swapped in after the check
                # changes where the files go (or which are removed).
                check = (
                    None
                    if policy is None
                    else partial(policy.resolved_problem, target.directory, what="directory")
                )
                keeps = partial(_still_delivers_to, services)
                if not files:
                    remove_directory_target(
                        target.directory, check=check, service=spec.name, keeps=keeps
                    )
                else:
                    if password is not None:
                        certs = load_material(files["tls.crt"][0]).certificates
                        # None for a custom certificate from an unnamed (public) CA.
                        ca_pem = files["ca.crt"][0] if "ca.crt" in files else b""
                        anchors = load_material(ca_pem).certificates if ca_pem else []
                        # The CA as a Java trusted entry ("ca"), as cert issue --p12 and
                        # elasticsearch-certutil write it: Java also builds the key entry's
                        # chain from it, and a truststore.path needs one.
                        p12 = to_pkcs12(
                            spec.name,
                            load_private_key(files["tls.key"][0]),
                            certs[0],
                            certs[1:],
                            password,
                            trusted=anchors,
                        )
                        files = {
                            "tls.p12": (p12, True),
                            **{n: files[n] for n in ("ca.crt", "client-trust.crt") if n in files},
                        }
                    deliver_to_directory(
                        target.directory,
                        {n: BundleFile(d, s) for n, (d, s) in files.items()},
                        owner=target.owner,
                        group=target.group,
                        check=check,
                        service=spec.name,
                        keeps=keeps,
                    )
                if target.reload:
                    from certctl.pki import parse_duration

                    runner = settings.reload_runner or run_reload
                    runner(target.reload, parse_duration(target.reload_timeout).total_seconds())
            else:
                if not files:
                    # TLS disabled: the Secret keeps what it holds (certctl is not allowed to
                    # delete Secrets, and a pod may still mount it). Said in the status; it
                    # was a Failed service, alerting and retried for good, for a choice made.
                    warnings.append(
                        f"{key}: TLS disabled; the Secret keeps the last certificate "
                        "delivered (delete it when no pod mounts it)"
                    )
                    delivered.pop(key, None)
                    continue
                if settings.secret_writer is None:
                    raise DeliveryError("Kubernetes Secret targets need auth.kubernetes set up")
                # Written even when this bundle was delivered before: the writer reads the
                # Secret and changes it only if it differs, so one deleted or edited by hand
                # (or with changed labels) is restored at the next reconcile or resync.
                changed = settings.secret_writer(target, {n: d for n, (d, _) in files.items()})
                if already:
                    if not changed:
                        continue
                    log.warning(
                        "service %s: %s was deleted or changed outside certctl; restored",
                        spec.name,
                        key,
                    )
            delivered[key] = digest
            DELIVERIES.labels("success").inc()
        except (DeliveryError, InvalidRequest, OSError) as exc:
            DELIVERIES.labels("error").inc()
            detail = exc.detail if isinstance(exc, DeliveryError | InvalidRequest) else str(exc)
            failures.append(f"{key}: {detail}")
            log.error("service %s: delivery to %s failed: %s", spec.name, key, detail)
    row.delivered = delivered
    return failures


_MAX_PASSWORD_BYTES = 4096


def _still_delivers_to(services: Services, name: str, real: Path) -> bool:
    """Whether service ``name`` exists and has a directory target at ``real`` (resolved).

    Asked only when a target's files were claimed by another service: one deleted or aimed
    elsewhere since gives them up; a spec that no longer parses keeps them (not judged).
    """
    with services.sessions() as session:
        row = session.get(ManagedService, name)
    if row is None:
        return False
    try:
        targets = parse_service(row.spec, stored=True).spec.targets
    except InvalidRequest:
        return True
    return any(
        target_identity(t) == ("dir", None, str(real))
        for t in targets
        if isinstance(t, DirectoryTarget)
    )


def _read_password(path: Path, policy: TargetPolicy | None) -> bytes:
    """A PKCS#12 password file: a regular file of at most 4 KiB, one line, newline dropped.

    A FIFO would block the reconciler and /dev/zero fill its memory; both are refused.
    A file of more lines is refused as the CLI refuses it (openssl and keytool read the
    first line only, so a keystore written with every line did not open in them).

    Raises:
        DeliveryError: not a regular file, too large, or unreadable.
        InvalidRequest: empty, or more than one line.
    """
    import stat

    from certctl.pki.formats import password_file_line
    from certctl.targets.directory import DeliveryError, opened_path

    # Located first (O_PATH: nothing is opened for reading), judged, and only then opened:
    # opening a device can act by itself (/dev/watchdog starts a timer that reboots the
    # host, a tape rewinds), so a path swapped for a link after the policy's check must not
    # get that far.
    where = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        real = opened_path(where, path)
        if policy is not None:
            # The file as located, not the path as checked a moment ago.
            problem = policy.resolved_problem(path, real, "passwordFile")
            if problem is not None:
                raise DeliveryError(problem)
        located = os.fstat(where)
        if not stat.S_ISREG(located.st_mode):
            raise DeliveryError(f"passwordFile {path} is not a regular file")
        try:
            fd = os.open(f"/proc/self/fd/{where}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            # No /proc (some containers): the real path, checked again to be the same file.
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (located.st_dev, located.st_ino):
                raise DeliveryError(f"passwordFile {path} changed while it was being read")
            data = os.read(fd, _MAX_PASSWORD_BYTES + 1)
        finally:
            os.close(fd)
    finally:
        os.close(where)
    if len(data) > _MAX_PASSWORD_BYTES:
        raise DeliveryError(f"passwordFile {path} is larger than 4 KiB")
    password = password_file_line(data, f"passwordFile {path}")
    if not password:
        # As the CLI refuses an empty password file: most often a Secret not filled in yet,
        # and a keystore under the empty password is readable by anyone who gets the file.
        raise InvalidRequest(f"passwordFile {path} is empty; put the password on one line")
    return password


def _delivery_digest(
    services: Services,
    target: DirectoryTarget | SecretTarget,
    files: dict[str, tuple[bytes, bool]],
    password: bytes | None,
) -> str:
    """What was delivered: the bundle and every setting that changes the files on disk.

    The PKCS#12 password enters as an HMAC under a key derived from the KEK: a plain hash
    of a short password, stored in the database, could be reversed by guessing.
    """
    digest = hashlib.sha256(b"".join(n.encode() + d for n, (d, _) in sorted(files.items())))
    if (
        isinstance(target, DirectoryTarget)
        and files
        # Left out for plain PEM targets: digests stored before settings counted stay equal,
        # so an upgrade does not redeliver (and reload) every service once.
        and (target.format, target.owner, target.group) != ("pem", None, None)
    ):
        settings = f"{target.format}\0{target.owner}\0{target.group}".encode()
        if target.group is not None:
            # Key files given to a group became 0640 (they were 0600, closed to that group):
            # a new digest delivers them again once, so targets written before get the mode.
            settings += b"\0key-mode 0640"
        if password is not None:
            secret = services.wrapper.derive("delivery digest: pkcs12 password")
            settings += b"\0" + hmac.new(secret, password, hashlib.sha256).digest()
        digest.update(b"\0settings\0" + settings)
    return digest.hexdigest()


def _expected_files(
    target: DirectoryTarget, files: dict[str, tuple[bytes, bool]]
) -> dict[str, bytes | None]:
    # A PKCS#12 file differs at each write (random salt and IV): only its presence counts.
    if not files:
        return {}
    expected: dict[str, bytes | None] = {n: d for n, (d, _) in files.items()}
    if target.format == "pkcs12":
        expected = {n: d for n, d in expected.items() if n in ("ca.crt", "client-trust.crt")}
        expected["tls.p12"] = None
    return expected


def backoff(attempts: int) -> timedelta:
    """Delay before retry ``attempts``: 5 s doubling up to 5 minutes."""
    delay: timedelta = _FIRST_BACKOFF * (2 ** min(max(0, attempts - 1), 10))
    return min(delay, _MAX_BACKOFF)


def _conditions(
    previous: dict[str, Any] | None,
    *,
    ready: bool,
    renewing: bool,
    failed: str | None,
    message: str,
    now: datetime,
) -> dict[str, Any]:
    return _transitions(
        previous,
        {
            "Ready": (ready, message if ready else (failed or "")),
            "Renewing": (renewing, ""),
            "Failed": (failed is not None, failed or ""),
        },
        now,
    )


def _condition(conditions: Any, name: str) -> dict[str, Any]:
    """The stored condition ``name``, or ``{}`` where the column holds something else.

    Only a hand-edited row holds a non-mapping there; read as "no condition", the pass
    writes a fresh one instead of failing every pass on ``.get``.
    """
    condition = conditions.get(name) if isinstance(conditions, dict) else None
    return condition if isinstance(condition, dict) else {}


def _transitions(
    previous: dict[str, Any] | None, wanted: dict[str, tuple[bool, str]], now: datetime
) -> dict[str, Any]:
    """The conditions ``wanted`` (name: status, message), each ``at`` when it last changed.

    As Kubernetes' lastTransitionTime: a condition whose status and message are those stored
    keeps its time. Stamped with every pass, the times said nothing of when the service
    changed, and a service reconciled on every pass (a custom certificate) was written each
    10 s. The scheduler keeps its resync clock itself (``due``'s ``last_pass``).
    """
    conditions: dict[str, Any] = {}
    for name, (status, message) in wanted.items():
        old = _condition(previous, name)
        same = old.get("status") is status and old.get("message") == message
        at = old.get("at") if same and isinstance(old.get("at"), str) else now.isoformat()
        conditions[name] = {"status": status, "message": message, "at": at}
    return conditions


def _fail(
    services: Services, row: ManagedService, now: datetime, detail: str, stage: str
) -> ManagedService:
    log.error("service %s: %s", row.name, detail)
    RENEWALS.labels("error").inc()
    with services.sessions.begin() as session:
        _lock_service_row(session)
        current = session.get(ManagedService, row.name, with_for_update=True)
        if current is None:
            raise NotFound(f"service {row.name} was deleted")
        current.attempts += 1
        current.next_attempt_at = now + backoff(current.attempts)
        # The attempted generation was observed: without this, due() sees a changed spec
        # and retries on every pass, ignoring the back-off.
        current.reconciled_generation = row.generation
        serving = current.certificate_pem is not None
        message = "serving the last good certificate" if serving else ""
        if serving and current.not_after is not None and now >= current.not_after:
            # Not Ready: that certificate is past its notAfter (a custom one nobody renewed),
            # and certctl_service_ready == 0 is what alerts on it.
            serving = False
            message = f"the last good certificate expired on {current.not_after:%Y-%m-%dT%H:%M:%SZ}"
        if not _failure_told(current.conditions, detail):
            _event(session, now, "failed", row.name, {"reason": detail, "stage": stage})
        conditions = _transitions(
            current.conditions,
            {"Ready": (serving, message), "Renewing": (False, ""), "Failed": (True, detail)},
            now,
        )
        if conditions != current.conditions:
            current.conditions = conditions
        session.flush()
        session.expunge(current)
    return current


def _failure_told(conditions: dict[str, Any] | None, detail: str) -> bool:
    """Whether ``failed`` was sent for this failure (stored status: Failed, same message).

    Sent when a service becomes Failed, or fails for another reason, not on each retry (a
    target that stays unwritable used to page every back-off period, ~288 times a day). The
    stored status is the memory: read under the row lock in the transaction that writes the
    new one, it holds across restarts and replicas, as ``expiring``'s column does.
    """
    failed = _condition(conditions, "Failed")
    return failed.get("status") is True and failed.get("message") == detail


def _event(session: Any, now: datetime, event: str, service: str, payload: dict[str, Any]) -> None:
    session.add(
        OutboxEvent(
            at=now,
            event=event,
            service=service,
            payload={"event": event, "service": service, "time": now.isoformat(), **payload},
            attempts=0,
            next_attempt_at=now,
        )
    )


def due(
    row: ManagedService,
    now: datetime,
    *,
    resync: timedelta | None = None,
    last_pass: datetime | None = None,
    since: datetime | None = None,
    secret_unchanged: bool = False,
) -> bool:
    """Whether the scheduler should reconcile this service now.

    ``resync``: also when the last reconcile is at least this old (the scheduler passes
    ``RESYNC_INTERVAL``), so a target deleted or overwritten by hand is delivered again
    soon, not at the next renewal months later; as Kubernetes controllers resync.
    ``last_pass``: when the caller last reconciled it; unknown (a scheduler that has not
    yet, after a start or a change of leader), the latest condition time, which no pass
    since moved: the latest pass that changed something. Kept apart from the conditions,
    which change only when the service does.
    ``since``: when the caller started reconciling (its start, or its election as leader).
    A service's resyncs then fall on ``since`` + an offset fixed by its name + k ``resync``:
    the first such point after its last pass (never more than ``resync`` after it), so
    services reconciled in one pass (created together) do not resync together ever after.
    A service it has not reconciled yet and whose resync is due by the conditions' time
    gets it at its point of ``[since, since + resync)``: most services are, and all of them
    in the first pass was a burst of reconciles and reloads at every restart. A service
    with work to do (above) is never held back.
    ``secret_unchanged``: the caller read the custom certificate's secret and it holds what
    it held at its last reconcile, with no validity boundary passed since
    (``custom_secret_unchanged``); the service is then due by the other rules only. Otherwise
    a service with a custom certificate is due at every pass.
    """
    if row.generation != row.reconciled_generation:
        return True  # new or changed spec
    if row.next_attempt_at is not None:
        return now >= row.next_attempt_at  # retrying after a failure, with back-off
    certificate = _stored_certificate(row)
    if certificate is _MALFORMED:
        # Edited in the database: its reconcile says why (Failed) and backs it off; read
        # here with .get(), it raised in every pass, for every service.
        return True
    if certificate and not secret_unchanged:
        return True  # a custom secret can change at any time
    ends = [until for _, until in _retired_cas(row)]
    if any(t is not None and now >= t for t in (row.renew_at, row.ca_renew_at, *ends)):
        return True
    if resync is None:
        return False
    if last_pass is not None:
        if since is None or resync <= timedelta(0):
            return now - last_pass >= resync
        # The resyncs of a service fall on its own points, ``since`` + its offset + k
        # intervals: at most one interval after its last pass, whatever that pass was for.
        # Counted from each last pass, services reconciled in one pass (created together,
        # or a new CA) were resynced together for good, every interval.
        offset = since + _resync_offset(row.name, resync)
        return last_pass < offset + (now - offset) // resync * resync
    last = _last_transition(row)
    natural = None if last is None else last + resync
    if since is None:
        return natural is None or now >= natural
    first = since + _resync_offset(row.name, resync)
    if natural is not None and natural > since:
        first = min(first, natural)  # due later anyway: kept, or spread sooner
    return now >= first


# What _stored_certificate returns for a spec one of whose levels is not a mapping.
_MALFORMED = object()


def _stored_tls(row: ManagedService) -> Any:
    """``spec.http.tls`` of a stored spec, read without parsing it; ``{}`` if absent.

    Every pass reads it for every service, outside the reconcile that parses (and reports)
    the spec: a level that is not a mapping (a hand edit) is ``_MALFORMED``, never an error.
    """
    node: Any = row.spec
    for key in ("spec", "http", "tls"):
        if not isinstance(node, dict):
            return _MALFORMED
        node = node.get(key, {})
    return node if isinstance(node, dict) else _MALFORMED


def _stored_certificate(row: ManagedService) -> Any:
    """``spec.http.tls.certificate`` of a stored spec (no parse), None if absent, or _MALFORMED."""
    tls = _stored_tls(row)
    return tls.get("certificate") if isinstance(tls, dict) else _MALFORMED


def custom_secret_name(row: ManagedService) -> str | None:
    """The ``certificate.secretName`` of a stored spec, read as ``due`` reads it (no parse)."""
    certificate = _stored_certificate(row)
    name = certificate.get("secretName") if isinstance(certificate, dict) else None
    return name if isinstance(name, str) and name else None


@dataclass(frozen=True)
class SecretSeen:
    """What a custom certificate's secret held when a scheduler pass read it.

    Kept by the scheduler for the pass that last reconciled the service: a secret whose
    bytes are the same, with no validity boundary passed since, would be reconciled to the
    same result. Reconciled anyway, 1,000 such services cost ~2 s of CPU every 10 s pass.
    """

    secret: str
    # SHA-256 of every file's name and bytes, links followed: a Kubernetes Secret volume
    # swapping its ``..data`` link changes no inode nor time of the names read, only this.
    digest: str
    # When time alone changes what the same bytes mean (not yet valid, expiring, expired,
    # a chain certificate or CA ending): each certificate's notBefore, notAfter and notAfter
    # less cert-rotate-before.
    boundaries: tuple[datetime, ...]
    at: datetime


def read_custom_secret(
    settings: ServiceSettings, row: ManagedService, now: datetime, previous: SecretSeen | None
) -> SecretSeen | None:
    """The custom certificate's secret of ``row`` as it is now.

    None when the service names none, or when the secret cannot be read: the reconcile then
    reads it again and reports why, as the service's ``Failed`` condition.
    """
    secret = custom_secret_name(row)
    if secret is None:
        return None
    try:
        files = _read_secret(settings, secret)
    except (InvalidRequest, OSError):
        return None
    digest = hashlib.sha256(secret.encode() + b"\0")
    for name in sorted(files):
        digest.update(b"%s\0%d\0" % (name.encode(), len(files[name])) + files[name])
    hexdigest = digest.hexdigest()
    if previous is not None and (previous.secret, previous.digest) == (secret, hexdigest):
        boundaries = previous.boundaries  # the same bytes: not parsed again
    else:
        boundaries = _validity_boundaries(settings, files)
    return SecretSeen(secret, hexdigest, boundaries, now)


def _validity_boundaries(
    settings: ServiceSettings, files: dict[str, bytes]
) -> tuple[datetime, ...]:
    times: set[datetime] = set()
    for name in ("tls.crt", "ca.crt"):
        try:
            certificates = load_material(files[name]).certificates if name in files else []
        except InvalidRequest:
            continue  # the reconcile fails on it, whatever the time
        for cert in certificates:
            end = cert.not_valid_after_utc
            times.update((cert.not_valid_before_utc, end, end - settings.cert_rotate_before))
    return tuple(sorted(times))


def custom_secret_unchanged(
    settings: ServiceSettings,
    row: ManagedService,
    previous: SecretSeen | None,
    current: SecretSeen | None,
) -> bool:
    """Whether ``current`` would reconcile as ``previous``, read for the last reconcile, did.

    The same secret, the same bytes, and no boundary at or between the two reads, where a
    check of ``now`` against it could answer otherwise.
    """
    if previous is None or current is None:
        return False
    if (previous.secret, previous.digest) != (current.secret, current.digest):
        return False
    times = list(current.boundaries)
    if row.not_after is not None:
        # The certificate served, whichever issued it: "expiring" is judged by it.
        times += [row.not_after, row.not_after - settings.cert_rotate_before]
    return not any(previous.at <= t <= current.at for t in times)


def _resync_offset(name: str, resync: timedelta) -> timedelta:
    """Where in each resync interval of a scheduler ``name`` is resynced.

    From a hash of the name, so every restart and every replica puts it at the same point
    and the services spread evenly, however many there are.
    """
    digest = int.from_bytes(hashlib.sha256(f"resync:{name}".encode()).digest()[:8], "big")
    span = resync // timedelta(microseconds=1)
    return timedelta(microseconds=digest % span) if span > 0 else timedelta(0)


def _last_transition(row: ManagedService) -> datetime | None:
    conditions = row.conditions if isinstance(row.conditions, dict) else {}
    times = [c.get("at") for c in conditions.values() if isinstance(c, dict)]
    try:
        parsed = [datetime.fromisoformat(t) for t in times if isinstance(t, str)]
    except ValueError:  # edited in the database: resync rather than fail every pass
        return None
    return max((t if t.tzinfo else t.replace(tzinfo=UTC) for t in parsed), default=None)


def _service_phase(conditions: Any) -> str:
    """One word for the conditions: ``Pending`` until the first pass, then ``Failed``/``Ready``.

    Every pass writes all three conditions, so none stored means none has run yet (a new
    service, or a dry run's answer); Ready, Renewing and Failed all False read as broken.
    ``Failed`` wins over ``Ready``: the last good certificate may still be served.
    """
    if not isinstance(conditions, dict) or not conditions:
        return "Pending"
    if _condition(conditions, "Failed").get("status"):
        return "Failed"
    if _condition(conditions, "Ready").get("status"):
        return "Ready"
    return "Unknown"  # no pass writes this: a row edited by hand


def service_json(row: ManagedService) -> dict[str, Any]:
    """The API view: spec, status, serving certificate facts (never the key)."""
    ends = [until for _, until in _retired_cas(row)]
    return {
        "name": row.name,
        "spec": row.spec,
        "generation": row.generation,
        "status": {
            "phase": _service_phase(row.conditions),
            "conditions": row.conditions or {},
            "observed_generation": row.reconciled_generation,
            "serial": row.serial,
            "not_after": row.not_after.isoformat() if row.not_after else None,
            "next_renewal": row.renew_at.isoformat() if row.renew_at else None,
            # Replaced CAs still in ca.crt (servers not reloaded stay trusted) until then:
            # the last of their ends.
            "retired_ca_until": max(ends).isoformat() if ends else None,
            "targets": row.delivered or {},
        },
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }
