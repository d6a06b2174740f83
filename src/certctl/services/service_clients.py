"""Client trust of a service: the client certificates and CAs it accepts."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import select

from certctl.errors import InvalidRequest, NotFound
from certctl.pki import (
    asserts_ca,
    certs_to_pem,
    is_self_signed,
    load_material,
)
from certctl.pki.distinguished_names import name_match_key
from certctl.pki.keys import signature_verifies
from certctl.pki.verdicts import VerificationFailed
from certctl.services.audit import record, record_call
from certctl.services.context import Principal, Services
from certctl.services.service_certificates import (
    extended_key_usages,
    issued_by,
    key_identifiers_match,
)
from certctl.services.service_rows import lock_service_row, locked_service
from certctl.services.tls_spec import parse_service
from certctl.store.models import ManagedService, ServiceClient

__all__ = ["add_client", "client_trust_warnings", "remove_client"]


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def add_client(services: Services, caller: Principal, name: str, pem: str) -> list[ServiceClient]:
    """Register client certificates or CAs (PEM certificates only) for a service."""
    caller.require("service.edit")
    if "PRIVATE KEY" in pem:
        raise InvalidRequest("client trust takes certificates only; never send a private key")
    if not pem.strip():
        # The loader's words ("an empty file") are for the CLI's files; here it is a field.
        raise InvalidRequest("certificate_pem is empty: send one or more PEM certificates")
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
        row = locked_service(session, name)
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
            credential=caller.credential,
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
    # Their certificates, not just their names: `certctl ca create` names every CA
    # "CN=certctl Root CA" unless told otherwise, and a client of another CA of that name
    # got no warning though nginx refuses it (the signature does not verify).
    cas = [x509.load_pem_x509_certificate(r.certificate_pem.encode()) for r in rows if r.is_ca]
    # By name as openssl compares them, each name folded once: folded per pair, 1,000
    # registered client certificates beside 100 CAs took 0.6 s a registration (0.2-0.3 s).
    by_name: dict[Hashable, list[x509.Certificate]] = {}
    for ca in cas:
        by_name.setdefault(name_match_key(ca.subject), []).append(ca)
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
            ekus = extended_key_usages(cert)
            if ekus is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
                warnings.append(
                    f"client certificate {row.subject} lacks the clientAuth extended key "
                    "usage: servers refuse it as a client certificate"
                )
        issuer = cert.issuer.rfc4514_string()
        # Up to a self-signed certificate: an intermediate alone fails there too (nginx
        # sets no partial-chain flag).
        namesakes = by_name.get(name_match_key(cert.issuer), [])
        unreadable = _unreadable_key(cert) if cert.issuer == cert.subject else None
        if unreadable is not None:
            # A key pyca cannot load (a curve such as prime239v1, which OpenSSL verifies):
            # is_self_signed raised, and the registration, stored, answered 400, as did
            # every later one for the service.
            warnings.append(
                f"{what} {row.subject} has a key certctl cannot check signatures with "
                f"({unreadable}): whether servers accept it and the clients it signed is not "
                "checked here"
            )
            continue
        try:
            self_signed = is_self_signed(cert)
        except VerificationFailed as exc:
            # Another signature pyca cannot check (an algorithm it does not know).
            warnings.append(f"{what} {row.subject} is not checked here: {exc.detail}")
            continue
        if self_signed:
            continue
        signed = [_signed_by(cert, ca) for ca in namesakes]
        if None in signed:
            continue  # an issuer of that name registered, told of above: not "without" it
        if not any(
            ok and key_identifiers_match(cert, ca) for ok, ca in zip(signed, namesakes, strict=True)
        ):
            why = ""
            if any(signed):
                # Its key, renewed under another SKI: OpenSSL (X509_check_akid) refuses it.
                why = (
                    "; the registered CA of that name has its key under another "
                    "subjectKeyIdentifier, which OpenSSL does not take for the certificate's "
                    "authorityKeyIdentifier"
                )
            elif namesakes:
                why = "; the registered CA of that name did not sign it"
            warnings.append(
                f"{what} {row.subject} is registered without its issuer ({issuer}{why}"
                + "): nginx and other OpenSSL servers accept its clients only once the chain "
                "up to a self-signed CA is registered; Java servers accept it alone"
            )
    return warnings


def _unreadable_key(cert: x509.Certificate) -> str | None:
    """Why pyca cannot load ``cert``'s key, or None when it can."""
    try:
        cert.public_key()
    except UnsupportedAlgorithm as exc:
        return str(exc)
    return None


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool | None:
    """Whether the key of ``ca``, named as ``cert``'s issuer, signed ``cert``.

    The names are matched by the caller as openssl compares them (``name_match_key``); the
    signature is checked with the CA's key: pyca's ``verify_directly_issued_by`` wants the
    names encoded alike, and said "did not sign it" of a client whose CA was renewed with its
    name as a UTF8String where the client's issuer holds the PrintableString of before
    (nginx accepts it).
    """
    if _unreadable_key(ca) is not None:
        return None  # cannot tell: that CA's own warning says so
    try:
        verified = signature_verifies(
            ca.public_key(),
            cert.signature,
            cert.tbs_certificate_bytes,
            cert.signature_algorithm_parameters,
            cert.signature_hash_algorithm,
            cert.signature_algorithm_oid,
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False  # a key or algorithm cryptography cannot check: not shown to sign it
    # None: a key type left to pyca (DSA), whose check needs the names encoded alike.
    return issued_by(cert, ca) if verified is None else verified


def remove_client(services: Services, caller: Principal, name: str, fingerprint: str) -> None:
    """Deregister a client certificate; the next reconcile drops it from the trust bundle."""
    caller.require("service.edit")
    now = services.clock()
    with services.sessions.begin() as session:
        lock_service_row(session)
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
