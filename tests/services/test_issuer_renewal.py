"""Root issuers are renewed with their own key; other processes drop their cached copy.

The internal ``default`` CA and the per-service CAs share ``issuers.renew_root_issuer``:
the new certificate has the same key, subject and SKI, so certificates signed under either
version verify under the other, and a process that renewed second (a lost race) uses the
stored certificate instead of signing another.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import select

from certctl.errors import InvalidRequest
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    certs_to_pem,
    common_name_dn,
    format_serial,
    generate_private_key,
    get_profile,
    key_to_pem,
)
from certctl.server import run, service_setup
from certctl.server.bootstrap import Bootstrapped
from certctl.server.config import load_config
from certctl.services import issuer_revocation, issuers, service_schedule
from certctl.services.context import Services
from certctl.services.service_settings import ServiceSettings
from certctl.store.db import installation_id
from certctl.store.models import AuditEvent, Issuer
from tests.services.conftest import Env, service_doc

DEFAULT = issuers.DEFAULT_ISSUER
VALIDITY = timedelta(days=400)


def _leaf(ca: CertificateAuthority, env: Env, cn: str) -> x509.Certificate:
    return ca.issue(
        generate_private_key().public_key(),
        common_name_dn(cn),
        profile=PROFILES["server"],
        validity=timedelta(days=30),
        now=env.now,
    ).certificate


def _ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _renewals(env: Env) -> list[AuditEvent]:
    with env.services.sessions() as session:
        query = select(AuditEvent).where(AuditEvent.action == "issuer.renew")
        return list(session.scalars(query))


def _create(env: Env, issuer_id: str, **options: Any) -> CertificateAuthority:
    """A new issuer (root, or below ``parent``), loaded."""
    issuers.create_issuer(
        env.services,
        env.admin,
        issuer_id=issuer_id,
        name=issuer_id,
        subject=None,
        common_name=f"certctl {issuer_id} CA",
        key_type="ec-p256",
        validity=timedelta(days=100),
        **options,
    )
    return issuers.load_issuer(env.services, issuer_id)


def _compromise(env: Env, ca: CertificateAuthority) -> None:
    """Import issuer ``twin``, a certificate of ``ca``'s key under another root, and revoke it
    for keyCompromise: from then on ``ca``'s key must sign nothing."""
    other = _create(env, "other")
    twin = other.issue(
        ca.private_key.public_key(),
        common_name_dn(f"{ca.certificate.subject.rfc4514_string()} twin"),
        profile=get_profile("intermediate"),
        validity=timedelta(days=30),
        now=env.now,
    ).certificate
    issuers.import_issuer(
        env.services,
        env.admin,
        issuer_id="twin",
        name="twin",
        certificate_pem=certs_to_pem([twin, other.certificate]).decode(),
        private_key_pem=key_to_pem(ca.private_key).decode(),
    )
    issuer_revocation.revoke_issuer(env.services, env.admin, "twin", "keyCompromise")


def _second_process(env: Env) -> Services:
    """Another process on the same store: its own issuer cache."""
    return Services(env.services.engine, env.services.sessions, env.services.wrapper, env.clock)


def test_default_ca_renewed_with_its_own_key(any_env: Env) -> None:
    env = any_env
    old = issuers.load_issuer(env.services, DEFAULT)
    before = _leaf(old, env, "before.example")
    when = env.at(old.certificate.not_valid_after_utc - timedelta(hours=1))

    new, wrote = issuers.renew_root_issuer(env.services, DEFAULT, old, validity=VALIDITY, now=when)

    assert wrote
    cert = new.certificate
    assert cert.not_valid_after_utc == when + VALIDITY
    assert cert.serial_number != old.certificate.serial_number
    assert cert.subject == old.certificate.subject == cert.issuer
    assert cert.public_key() == old.certificate.public_key()
    assert _ski(cert) == _ski(old.certificate)
    # Issued before, verifies under the new certificate; issued after, under the old one.
    before.verify_directly_issued_by(cert)
    _leaf(new, env, "after.example").verify_directly_issued_by(old.certificate)
    # Stored (a fresh process loads the new one) and audited.
    assert issuers.load_issuer(_second_process(env), DEFAULT).certificate == cert
    with env.services.sessions() as session:
        row = session.get(Issuer, DEFAULT)
        assert row is not None
        assert row.not_after == cert.not_valid_after_utc
        # What an intermediate's parent CRL would list it by (migration 0025's column).
        assert row.serial == format_serial(cert.serial_number)
    [event] = _renewals(env)
    assert event.actor == "system"
    assert event.target.startswith("default until ")


def test_a_lost_race_uses_the_stored_certificate(any_env: Env) -> None:
    env = any_env
    other = _second_process(env)
    mine = issuers.load_issuer(env.services, DEFAULT)
    theirs = issuers.load_issuer(other, DEFAULT)
    when = env.at(mine.certificate.not_valid_after_utc - timedelta(hours=1))
    first, _ = issuers.renew_root_issuer(other, DEFAULT, theirs, validity=VALIDITY, now=when)

    later = env.at(when + timedelta(minutes=5))
    second, wrote = issuers.renew_root_issuer(
        env.services, DEFAULT, mine, validity=VALIDITY, now=later
    )

    assert not wrote
    assert second.certificate == first.certificate  # not signed a second time
    assert len(_renewals(env)) == 1


def test_other_processes_drop_their_cached_copy(any_env: Env) -> None:
    env = any_env
    other = _second_process(env)
    cached = issuers.load_issuer(other, DEFAULT)
    assert issuers.refresh_cached_issuers(other) == []  # nothing changed yet

    ca = issuers.load_issuer(env.services, DEFAULT)
    when = env.at(ca.certificate.not_valid_after_utc - timedelta(hours=1))
    renewed, _ = issuers.renew_root_issuer(env.services, DEFAULT, ca, validity=VALIDITY, now=when)

    assert issuers.load_issuer(other, DEFAULT) is cached  # still the old copy
    assert issuers.refresh_cached_issuers(other) == [DEFAULT]
    assert issuers.load_issuer(other, DEFAULT).certificate == renewed.certificate
    assert issuers.refresh_cached_issuers(other) == []


def test_an_intermediate_is_not_renewed_as_a_root(env: Env) -> None:
    sub = _create(env, "sub", parent=DEFAULT)
    with pytest.raises(InvalidRequest, match="not a root CA"):
        issuers.renew_root_issuer(env.services, "sub", sub, validity=VALIDITY, now=env.now)
    assert issuers.load_issuer(_second_process(env), "sub").certificate == sub.certificate
    assert _renewals(env) == []


def test_a_path_length_limit_is_kept(env: Env) -> None:
    ca = _create(env, "tight", path_length=0)
    when = env.at(ca.certificate.not_valid_after_utc - timedelta(hours=1))

    renewed, _ = issuers.renew_root_issuer(env.services, "tight", ca, validity=VALIDITY, now=when)

    constraints = renewed.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca
    assert constraints.value.path_length == 0


@pytest.mark.parametrize(
    ("ca_validity", "ca_rotate_before", "error"),
    [
        # Renewed 24h + 10 % + 5 s ahead (cert-rotate-before): a 24h CA would always be due.
        (
            timedelta(hours=24),
            timedelta(hours=1),
            "ca-cert-validity (1D) must be longer than the CA renewal margin (26h24m5s",
        ),
        (
            timedelta(hours=2),
            timedelta(hours=2),
            "ca-cert-validity (2h) must be longer than ca-cert-rotate-before (2h)",
        ),
    ],
)
def test_a_ca_lifetime_inside_its_renewal_margin_is_refused(
    ca_validity: timedelta, ca_rotate_before: timedelta, error: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        ServiceSettings(
            ca_validity=ca_validity,
            ca_rotate_before=ca_rotate_before,
            cert_rotate_before=timedelta(hours=24),
        )
    assert error in raised.value.detail
    # Twin: one second past the margin is accepted, and renews 26h24m5s ahead.
    settings = ServiceSettings(
        ca_validity=timedelta(hours=26, minutes=24, seconds=6),
        ca_rotate_before=timedelta(hours=1),
        cert_rotate_before=timedelta(hours=24),
    )
    assert settings.ca_renewal_margin == timedelta(hours=26, minutes=24, seconds=5)


def _prepared(env: Env, mode: str = "self-signed") -> run._Prepared:
    """What ``certctl serve`` prepares for its workers, on this store."""
    config = load_config(None, {"data-dir": str(env.tmp / "data")})
    boot = Bootstrapped(env.services, None, env.tmp / "data" / "admin-api-key")
    return run._Prepared(
        config, boot, mode, env.tmp / "tls", None, timedelta(hours=24), timedelta(days=365)
    )


@pytest.mark.parametrize("leader", [True, False])
def test_a_renewal_by_another_replica_reaches_the_server_files(env: Env, leader: bool) -> None:
    prepared = _prepared(env)
    run._renew_self_signed(prepared, None)  # this replica's start: files under the cached CA
    tls_dir = prepared.tls_dir
    before = {name: (tls_dir / name).read_bytes() for name in ("ca.crt", "tls.crt")}
    other = _second_process(env)
    ca = issuers.load_issuer(other, DEFAULT)
    when = env.at(ca.certificate.not_valid_after_utc - timedelta(hours=1))
    renewed, _ = issuers.renew_root_issuer(other, DEFAULT, ca, validity=VALIDITY, now=when)

    run.refresh_issuers(prepared, None, leader=leader)

    # Every process issues under the renewed CA from now on ...
    assert issuers.load_issuer(env.services, DEFAULT).certificate == renewed.certificate
    after = {name: (tls_dir / name).read_bytes() for name in before}
    if not leader:  # ... and the leader (alone) rewrites the files, which the others watch.
        assert after == before
        return
    assert x509.load_pem_x509_certificate(after["ca.crt"]) == renewed.certificate
    served = x509.load_pem_x509_certificate(after["tls.crt"])
    assert served != x509.load_pem_x509_certificate(before["tls.crt"])
    served.verify_directly_issued_by(renewed.certificate)


def test_a_leaf_lifetime_inside_its_rotation_margin_is_refused_naming_both_values() -> None:
    with pytest.raises(InvalidRequest) as raised:
        ServiceSettings(cert_validity=timedelta(hours=12), cert_rotate_before=timedelta(days=1))
    assert raised.value.detail == "cert-validity (12h) must be longer than cert-rotate-before (1D)"
    # Twin: a second longer than the margin is accepted.
    ServiceSettings(
        cert_validity=timedelta(hours=24, seconds=1), cert_rotate_before=timedelta(days=1)
    )


def test_a_compromised_internal_ca_key_renews_neither_it_nor_the_server_certificate(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # The API refuses to issue from an issuer whose key was revoked for a compromise under
    # another certificate (409); the server's own renewals went on signing with that key:
    # its TLS certificate, and the internal CA re-signed by itself.
    prepared = _prepared(env)
    prepared.scheduler = service_setup.build_scheduler(
        prepared.config, env.services, installation_id(env.services.engine)
    )
    run._renew_internal_ca(prepared, None)  # the start: the files are issued
    files = ("ca.crt", "tls.crt", "tls.key")
    before = {name: (prepared.tls_dir / name).read_bytes() for name in files}
    default = issuers.load_issuer(env.services, DEFAULT)
    # Another certificate of the internal CA's key (cross-signed by another certctl root),
    # imported, then revoked for keyCompromise: the key signs nothing more.
    _compromise(env, default)
    assert issuers.load_issuer_state(env.services, DEFAULT)[1] is not None
    served = x509.load_pem_x509_certificate(before["tls.crt"])

    for when in (
        served.not_valid_after_utc - timedelta(hours=1),  # the server certificate is due
        default.certificate.not_valid_after_utc - timedelta(hours=1),  # the CA too
    ):
        env.at(when)
        caplog.clear()
        run._renew_internal_ca(prepared, None)
        run.refresh_issuers(prepared, None, leader=True)
        # The last good files stay served; nothing re-signed, nothing audited as renewed.
        assert {name: (prepared.tls_dir / name).read_bytes() for name in files} == before
        assert issuers.load_issuer(env.services, DEFAULT).certificate == default.certificate
        assert _renewals(env) == []
        refusals = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert refusals, caplog.text
        assert all(
            "issuer default holds the key of issuer twin, revoked on " in m
            and "(keyCompromise)" in m
            for m in refusals
        ), refusals


def test_a_compromised_service_ca_key_signs_neither_leaves_nor_its_renewal(env: Env) -> None:
    # As the internal CA's: a service CA's key (delivered in ca-internal's ca.key) revoked for
    # a compromise under another certificate went on signing the service's leaves and the
    # CA's own renewals, while the API refuses to issue from such a key.
    env.put(service_doc("web", dns=("web.example.internal",)))
    first = env.reconcile("web")
    ca = issuers.load_issuer(env.services, "svc.web")
    _compromise(env, ca)
    served = env.outputs("web")
    assert first.not_after is not None
    assert first.renew_at is not None
    for when in (
        env.now,  # nothing due: the status says so at once
        first.renew_at + timedelta(minutes=1),  # the leaf is due
        ca.certificate.not_valid_after_utc - timedelta(hours=1),  # the CA too
    ):
        row = env.reconcile("web", when)
        assert row.serial == first.serial
        assert env.outputs("web") == served  # the last good certificate and CA kept
        assert issuers.load_issuer(env.services, "svc.web").certificate == ca.certificate
        failed = row.conditions["Failed"]
        assert failed["status"] is True
        assert failed["message"].startswith(
            "issuer svc.web holds the key of issuer twin, revoked on "
        )
        assert "(keyCompromise)" in failed["message"]
        assert row.conditions["Ready"]["status"] is (when < first.not_after)
    [event] = [e for e in env.events("web") if e.event == "failed"]
    assert "the key was compromised" in event.payload["reason"]
    assert _renewals(env) == []
    # Disabled, the service issues nothing: it is not failed, and its CA stays unrenewed.
    env.put(service_doc("web", dns=("web.example.internal",), disabled=True))
    row = env.reconcile("web", ca.certificate.not_valid_after_utc - timedelta(hours=1))
    assert row.conditions["Failed"]["status"] is False
    assert issuers.load_issuer(env.services, "svc.web").certificate == ca.certificate
    assert row.ca_renew_at is None  # nothing renews it: not due at every pass for it
    assert not service_schedule.due(row, ca.certificate.not_valid_after_utc)
