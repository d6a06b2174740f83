"""Reconcile one managed TLS service: decide, (re)issue, deliver.

Reconciling a service decides, from its spec, its stored state and ``now`` (passed in, so
tests travel in time), whether its CA and certificate must be (re)issued, then delivers the
``-certs-internal`` bundle to the service's targets. Errors never touch what was deployed
before: the service's ``Failed`` condition carries the message instead.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certctl.errors import Conflict, InvalidRequest, NotFound
from certctl.metrics.registry import RENEWALS
from certctl.pki import (
    SubjectAltNames,
    certs_to_pem,
    common_name_dn,
    format_serial,
    generate_private_key,
    key_to_pem,
)
from certctl.services.audit import record
from certctl.services.context import Services
from certctl.services.custom_certificates import custom_material
from certctl.services.service_ca import (
    MAX_RETIRED_CAS,
    ensure_service_ca,
    keep_retired,
    keep_service_ca_current,
    retired_cas,
    service_ca_renew_at,
)
from certctl.services.service_certificates import (
    Desired,
    issued_by,
    needs_leaf,
    renewal_by_current_margin,
    renewal_time,
    served_chain,
    served_material,
    service_profile,
)
from certctl.services.service_delivery import deliver, outputs_for
from certctl.services.service_rows import lock_service_row
from certctl.services.service_schedule import backoff
from certctl.services.service_settings import MIN_RENEWAL_INTERVAL, ServiceSettings
from certctl.services.service_status import (
    add_event,
    condition_transitions,
    failure_told,
    pass_conditions,
    stored_condition,
)
from certctl.services.tls_spec import TLSServiceSpec, parse_service
from certctl.store.models import ManagedService

__all__ = ["EXPIRING_UNKNOWN", "reconcile_service"]

log = logging.getLogger("certctl.services")

# managed_services.expiring_serial of a service stored before Alembic 0009 (which sets it):
# whether "expiring" was sent for its certificate is judged at its first successful pass.
EXPIRING_UNKNOWN = "unknown: stored before 0009"


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
    was_renewing = bool(stored_condition(row.conditions, "Renewing").get("status"))
    try:
        spec = parse_service(row.spec, stored=True)
    except InvalidRequest as exc:
        # Stored before a rule was added (or edited in the database): the service's own
        # problem, shown in its status and backed off, never a crash of every pass.
        return _fail(services, row, now, f"stored spec no longer valid: {exc.detail}", "spec")
    conditions: dict[str, Any] = {}
    row.renew_at = renewal_by_current_margin(settings, row)
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
    keep_retired(row, retired_cas(row, now))  # those whose overlap is over: dropped
    bundle = outputs_for(services, row, spec)
    failures = deliver(services, settings, row, spec, bundle, warnings)
    message = "; ".join(warnings)
    with services.sessions.begin() as session:
        lock_service_row(session)
        current = session.get(ManagedService, name, with_for_update=True)
        if current is None:
            raise NotFound(f"service {name} was deleted")
        current.delivered = dict(row.delivered)
        current.reconciled_generation = row.generation
        keep_retired(current, retired_cas(current, now))  # delivered without those ended
        current.ca_renew_at = service_ca_renew_at(services, settings, spec)
        if desired.as_is or spec.disabled:
            # A renewal asked for (`services renew`) that no pass can do (only the owner of
            # the secret can): left set, it showed as the next renewal, past, for good, and
            # kept a disabled service due on every pass.
            current.renew_at = None
        elif current.serial == row.serial:
            # Brought forward to today's cert-rotate-before, so due() and the status agree.
            current.renew_at = renewal_by_current_margin(settings, current)
        if failures:
            current.attempts += 1
            current.next_attempt_at = now + backoff(current.attempts)
            detail = "; ".join(failures)
            # Still renewing while a retry fails to deliver what an earlier pass issued:
            # Renewing + Failed say "issued, not yet delivered everywhere" (README). Not
            # for TLS disabled: nothing is issued then, the targets' removal is what failed.
            renewing = not spec.disabled and (reason is not None or was_renewing)
            conditions = pass_conditions(
                current.conditions,
                ready=False,
                renewing=renewing,
                failed=detail,
                message=message,
                now=now,
            )
            if not failure_told(current.conditions, detail):
                add_event(session, now, "failed", name, {"reason": detail})
        else:
            current.attempts = 0
            if current.next_attempt_at == asked_at:
                current.next_attempt_at = None
            ready_msg = message or "serving"
            if spec.disabled:
                ready_msg = "TLS disabled: plain HTTP" + (f"; {message}" if message else "")
            conditions = pass_conditions(
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
                add_event(
                    session, now, "expiring", name, {"not_after": current.not_after.isoformat()}
                )
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
    if stored_condition(current.conditions, "Failed").get("status"):
        return False  # a failed pass sent "failed", not "expiring"
    at = stored_condition(current.conditions, "Ready").get("at")
    try:
        last_pass = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        return False
    if last_pass is None:
        return False
    if last_pass.tzinfo is None:
        last_pass = last_pass.replace(tzinfo=UTC)
    return last_pass >= current.not_after - settings.cert_rotate_before


def _decide(
    services: Services,
    settings: ServiceSettings,
    row: ManagedService,
    spec: TLSServiceSpec,
    now: datetime,
) -> tuple[Desired, str | None, list[str]]:
    if spec.disabled or spec.tls.certificate is not None:
        keep_service_ca_current(services, settings, spec.name, now)
    if spec.disabled:
        reason = "TLS disabled" if row.certificate_pem is not None else None
        return Desired(), reason, []
    if spec.tls.certificate is not None:
        served, custom_ca, anchors, warnings = custom_material(settings, spec, now)
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
            served_chain(ca),
        )
    else:
        ca, ca_changed = ensure_service_ca(services, settings, spec.name, now)
        trust_pem = ca.root_pem.decode()
        # A renewed CA not yet published for this service (whoever renewed it died first).
        ca_changed = ca_changed or row.ca_pem not in (None, trust_pem)
        warnings = []
    reason = needs_leaf(row, spec, ca, now)
    if reason is None and not ca_changed:
        return Desired(), None, warnings
    if reason is None:
        # The CA certificate was renewed (same key): publish it; the leaf stays valid.
        desired = served_material(services, row)
        desired.ca_pem = trust_pem
        desired.chain_pem = served_chain(ca)
        return desired, "CA renewed", warnings
    key = generate_private_key()
    # A leaf never outlives its CA: shorten it quietly (the CA is renewed ahead of time).
    validity = min(settings.cert_validity, ca.certificate.not_valid_after_utc - now)
    issued = ca.issue(
        key.public_key(),
        common_name_dn(spec.name),
        profile=service_profile(spec),
        validity=validity,
        now=now,
        sans=SubjectAltNames.parse(dns=spec.dns_names(), ip=spec.ip_addresses()),
    )
    desired = Desired(
        certificate_pem=certs_to_pem([issued.certificate]).decode(),
        chain_pem=served_chain(ca),
        ca_pem=trust_pem,
        key_pem=key_to_pem(key),
        ends_with_ca=validity < settings.cert_validity,
        # Told from the certificates, not from ``reason``: a switch of CA applied together
        # with new SANs (checked first) is reissued for those, and lost the overlap.
        ca_replaced=row.certificate_pem is not None
        and not _served_under(row.certificate_pem, ca.certificate),
    )
    # Not "lifetime ... is under 60 days; plan its renewal": that is advice for a certificate
    # someone renews by hand, and certctl renews this one itself (a cert-validity of 30 days
    # put it in the status of every service at each renewal).
    advice = [w for w in issued.warnings if not w.endswith("; plan its renewal")]
    return desired, reason, [*warnings, *advice]


def _served_under(certificate_pem: str, ca_certificate: x509.Certificate) -> bool:
    """Whether the certificate served until now was signed by ``ca_certificate``'s name and key.

    One that no longer parses (edited in the database) is not: which CA signed it is
    unknown, so a stored ``ca.crt`` other than the new one is kept for the overlap, as for a
    switch. Raised, the ValueError failed every pass of the service, and the reissue that
    ``services renew`` asks for (told before the certificate is read) never came.
    """
    try:
        served = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError:
        return False
    return issued_by(served, ca_certificate)


def _retire_ca(
    settings: ServiceSettings,
    row: ManagedService,
    desired: Desired,
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
    kept = retired_cas(row, now)
    old_ca = row.ca_pem or ""
    old_end = row.not_after
    if (
        desired.ca_replaced
        and old_ca.strip()
        and not _current_cas(old_ca, desired.ca_pem)
        and old_end is not None
        and now < old_end
    ):
        ends = min(now + settings.ca_renewal_margin, old_end)
        earlier = [
            (pem, until)
            for pem, until in kept
            if pem != old_ca and not _current_cas(pem, desired.ca_pem)
        ]
        # A bound for a CA swapped every few minutes, whose ca.crt would otherwise grow by
        # one CA a swap for a day: past it, the oldest goes first.
        kept = [(old_ca, ends), *earlier][:MAX_RETIRED_CAS]
    elif desired.certificate_pem is None or desired.as_is:
        # TLS disabled, or a certificate served as is (its owner's ca.crt says whom to
        # trust): nothing more to keep.
        kept = []
    else:
        # Back to a CA being retired: it is the current one again, no longer one to retire.
        kept = [(pem, until) for pem, until in kept if not _current_cas(pem, desired.ca_pem)]
    keep_retired(row, kept)


def _current_cas(pem: str, current_pem: str) -> bool:
    """Whether every CA certificate of ``pem`` is one of ``current_pem``'s, maybe renewed.

    Renewed: the same name, key and SKI (as a service CA is renewed), which verifies every
    leaf the other did. Compared by PEM alone, the service CA's previous certificate, kept
    while a custom CA was served and then renewed meanwhile, stayed in ``ca.crt`` as a
    replaced CA beside the renewed one after a switch back.
    """
    if pem == current_pem:
        return True
    try:
        mine, current = _ca_identities(pem), _ca_identities(current_pem)
    except (ValueError, UnsupportedAlgorithm):
        return False  # not shown to be the current CA: kept, as a replaced one
    return bool(mine) and mine <= current


def _ca_identities(pem: str) -> set[tuple[x509.Name, bytes, bytes | None]]:
    identities = set()
    for cert in x509.load_pem_x509_certificates(pem.encode()) if pem.strip() else []:
        try:
            ski: bytes | None = cert.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value.digest
        except x509.ExtensionNotFound:
            ski = None
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        identities.add((cert.subject, spki, ski))
    return identities


def _store_issue(
    services: Services,
    settings: ServiceSettings,
    row: ManagedService,
    spec: TLSServiceSpec,
    desired: Desired,
    reason: str,
    now: datetime,
) -> ManagedService:
    with services.sessions.begin() as session:
        lock_service_row(session)
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
        _retire_ca(settings, current, desired, now)
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
            renew_at = renewal_time(settings, row.name, current.serial, cert.not_valid_after_utc)
            if served_as_is or (desired.ends_with_ca and renew_at <= now + MIN_RENEWAL_INTERVAL):
                # Nor one cut short by a custom CA about to expire: reissued, it would end
                # at the same instant, so every pass would issue, deliver and reload again.
                # It is reissued once that CA is renewed or replaced (needs_leaf).
                current.renew_at = None
            else:
                current.renew_at = max(renew_at, now + MIN_RENEWAL_INTERVAL)
            event = "issued" if first else "renewed"
            if reason not in ("CA renewed",):
                add_event(
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
        if reason == "CA renewed":
            # Nothing was issued: the renewed CA certificate goes out beside the same leaf (the
            # line read "certificate issued (CA renewed)" with the serial unchanged).
            what = f"renewed CA certificate delivered, certificate {current.serial} kept"
        elif desired.as_is:
            # Not issued here either: the secret's own certificate, delivered as it is.
            what = f"custom certificate {current.serial} served as it is"
        elif desired.certificate_pem:
            what = "certificate issued"
        else:
            what = "certificates removed"
        # A certificate the server's CA signed on its own is a CA's act like an API
        # issuance: audited (by system), in the transaction that stores it.
        record(
            session,
            at=now,
            actor="system",
            action="service.certificate",
            target=row.name if current.serial is None else f"{row.name} serial {current.serial}",
            detail=f"{what} ({reason})",
        )
        session.flush()
        session.expunge(current)
    log.info("service %s: %s (%s)", row.name, what, reason)
    return current


def _fail(
    services: Services, row: ManagedService, now: datetime, detail: str, stage: str
) -> ManagedService:
    log.error("service %s: %s", row.name, detail)
    RENEWALS.labels("error").inc()
    with services.sessions.begin() as session:
        lock_service_row(session)
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
        if not failure_told(current.conditions, detail):
            add_event(session, now, "failed", row.name, {"reason": detail, "stage": stage})
        conditions = condition_transitions(
            current.conditions,
            {"Ready": (serving, message), "Renewing": (False, ""), "Failed": (True, detail)},
            now,
        )
        if conditions != current.conditions:
            current.conditions = conditions
        session.flush()
        session.expunge(current)
    return current
