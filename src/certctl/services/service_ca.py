"""Each service's own CA: created, renewed with its key; replaced CAs kept in ``ca.crt`` a while."""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial

from cryptography import x509

from certctl.errors import InvalidRequest, NotFound
from certctl.pki import (
    CertificateAuthority,
    certs_to_pem,
    create_root_ca,
    generate_private_key,
)
from certctl.services.context import Services
from certctl.services.service_rows import service_still_there
from certctl.services.service_settings import ServiceSettings
from certctl.services.tls_spec import TLSServiceSpec
from certctl.store.models import ManagedService

__all__ = [
    "MAX_RETIRED_CAS",
    "ca_renewal_time",
    "ensure_service_ca",
    "keep_retired",
    "keep_service_ca_current",
    "per_service_ca_id",
    "retired_cas",
    "service_ca_renew_at",
    "with_retired",
]

log = logging.getLogger("certctl.services")

# What a service whose CA key was compromised can do: its CA cannot be revoked (no CRL lists
# a root) nor replaced in place, deleting the service deletes it.
_COMPROMISED_ADVICE = (
    "serve a certificate of your own (tls.certificate), or delete the service and apply it "
    "again for a new CA"
)


def per_service_ca_id(name: str) -> str:
    """The issuer id of service ``name``'s own CA."""
    # issuers.MANAGED_ISSUER_PREFIX: the API neither issues from nor creates these.
    return f"svc.{name}"


def ensure_service_ca(
    services: Services, settings: ServiceSettings, name: str, now: datetime
) -> tuple[CertificateAuthority, bool]:
    """The service's own CA (CN ``<name>-http``, OU ``<name>``), renewed with the same key."""
    ca, changed = _service_ca(services, settings, name, now, create=True)
    assert ca is not None
    return ca, changed


def keep_service_ca_current(
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

    issuer_id = per_service_ca_id(name)
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
        issuers.store_issuer(
            services,
            issuer_id,
            f"{name} service CA",
            CertificateAuthority(root.certificate, key),
            None,
            "service.ca",
            guard=partial(service_still_there, name),
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


def ca_renewal_time(settings: ServiceSettings, ca: CertificateAuthority) -> datetime:
    """When a root CA (a service's, or the internal ``default``) is renewed.

    ``ca-cert-rotate-before`` ahead, and early enough that a leaf clipped to the CA's
    notAfter is never due for renewal as soon as it is issued.
    """
    return ca.certificate.not_valid_after_utc - settings.ca_renewal_margin


def service_ca_renew_at(
    services: Services, settings: ServiceSettings, spec: TLSServiceSpec
) -> datetime | None:
    """When the service's own CA is renewed; None without one, or with its key revoked."""
    # Whatever the spec: a disabled service's CA is renewed too (keep_service_ca_current).
    from certctl.services import issuers

    try:
        ca, revoked = issuers.load_issuer_state(services, per_service_ca_id(spec.name))
    except NotFound:
        return None
    # A compromised key renews nothing (_service_ca): a time past would make the service
    # due at every pass.
    return None if revoked is not None else ca_renewal_time(settings, ca)


# The replaced CAs a ca.crt keeps at most (each for at most the CA renewal margin).
MAX_RETIRED_CAS = 4


def retired_cas(row: ManagedService, now: datetime | None = None) -> list[tuple[str, datetime]]:
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


def keep_retired(row: ManagedService, kept: list[tuple[str, datetime]]) -> None:
    """Store ``kept`` (newest first) as ``row``'s replaced CAs (assigned only if changed)."""
    pem, until = kept[0] if kept else (None, None)
    earlier = [{"pem": p, "until": u.isoformat()} for p, u in kept[1:]] or None
    if (row.retired_ca_pem, row.retired_ca_until) != (pem, until):
        row.retired_ca_pem, row.retired_ca_until = pem, until
    if row.earlier_retired_cas != earlier:
        row.earlier_retired_cas = earlier


def with_retired(ca_pem: str, retired_pems: list[str]) -> str:
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
