"""Managed TLS service specs (ECK ``spec.http.tls`` model): apply, read, delete, ask to renew."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from certctl.errors import Conflict, InvalidRequest, NotFound
from certctl.services.audit import record, record_call
from certctl.services.context import Principal, Services
from certctl.services.service_ca import keep_retired, per_service_ca_id, retired_cas
from certctl.services.service_rows import custom_secret_name, locked_service, stored_tls
from certctl.services.target_policy import TargetPolicy, same_target
from certctl.services.tls_spec import TLSServiceSpec, parse_service
from certctl.store.db import SERVICE_SPECS_LOCK, lock_for_write
from certctl.store.models import Issuer, ManagedService, ServiceClient

__all__ = [
    "delete_service",
    "drop_retired_ca",
    "get_service",
    "list_services",
    "put_service",
    "renewal_warnings",
    "request_renewal",
]


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
            action, detail = "service.create", "generation 1"
        else:
            # The generation says which spec an event made; a re-apply of the same document
            # (what `certctl apply` answers "unchanged") says so, or it read as a change.
            if row.spec != document:
                row.spec, row.generation, row.updated_at = document, row.generation + 1, now
                row.attempts, row.next_attempt_at = 0, None
                detail = f"generation {row.generation}"
            else:
                detail = f"unchanged (generation {row.generation})"
            action = "service.edit"
        record(
            session,
            at=now,
            actor=caller.actor_id,
            action=action,
            target=name,
            source=caller.source,
            credential=caller.credential,
            detail=detail,
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
    ca_id = per_service_ca_id(name)
    with services.sessions.begin() as session:
        # Taken by a reconcile storing the service's CA too (service_still_there): a CA
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
        row = locked_service(session, name)
        tls = stored_tls(row)
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
        row = locked_service(session, name)
        kept = retired_cas(row)
        if not kept:
            raise Conflict(f"service {name} keeps no replaced CA in its ca.crt")
        # due() takes a passed end as work; that pass drops them and delivers. Every one:
        # the CA replaced first may be the one whose key leaked.
        keep_retired(row, [(pem, min(until, now)) for pem, until in kept])
        record_call(session, caller, now, "service.drop-retired-ca", name)
    return row
