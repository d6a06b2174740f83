"""Replica hand-over, deterministically: two store handles ("replicas") on one database.

The process-level tests (``test_replicas.py``) cannot choose where a SIGKILL or a lost lock
session lands; these interleave two replicas at the exact points that matter, with a frozen
clock and no sleeps:

* both decided to renew the same service: only the first stored certificate counts;
* the leader died after storing a renewal but before delivering it: the next replica delivers;
* a replica holds a cached service CA that another replica renewed: no second renewal;
* the leader died after renewing a CA but before publishing it: the next replica publishes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import func, select

from certctl.auth.permissions import PERMISSIONS
from certctl.pki import format_serial
from certctl.server.bootstrap import bootstrap
from certctl.server.config import ServerConfig
from certctl.server.scheduler import Scheduler
from certctl.services import issuers, service_ca, service_reconcile, service_specs
from certctl.services.context import Principal, Services
from certctl.services.service_settings import ServiceSettings
from certctl.store.db import create_store_engine, session_factory
from certctl.store.keywrap import KeyWrapper, load_or_create_kek
from certctl.store.models import Issuer, ManagedService, OutboxEvent
from tests.api.conftest import FakeClock

NAME = "web"
ADMIN = Principal("admin", ("r-admin",), frozenset(PERMISSIONS), "test")


class Crash(BaseException):
    """The process dies here (nothing after this point runs, nothing is caught)."""


@dataclass
class Pair:
    """Two replicas sharing one SQLite store and key-encryption key."""

    first: Services
    second: Services
    clock: FakeClock
    settings: ServiceSettings
    target: Path
    reloads: list[str]

    def renewed(self) -> int:
        with self.first.sessions() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(OutboxEvent)
                    .where(OutboxEvent.event == "renewed", OutboxEvent.service == NAME)
                )
                or 0
            )

    def row(self) -> ManagedService:
        with self.first.sessions() as session:
            row = session.get(ManagedService, NAME)
        assert row is not None
        return row

    def served(self, file: str = "tls.crt") -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.target / file).read_bytes())

    def stored_ca(self) -> x509.Certificate:
        with self.first.sessions() as session:
            pem = session.scalar(select(Issuer.certificate_pem).where(Issuer.id == f"svc.{NAME}"))
        assert pem is not None
        return x509.load_pem_x509_certificate(pem.encode())

    def at(self, when: datetime) -> datetime:
        self.clock.now = when
        return when


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    data_dir = tmp_path / "data"
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data_dir)}))
    engine = create_store_engine(f"sqlite:///{data_dir / 'certctl.db'}")
    second = Services(engine, session_factory(engine), KeyWrapper(load_or_create_kek(data_dir)))
    clock = FakeClock()
    booted.services.clock = second.clock = clock
    reloads: list[str] = []
    settings = ServiceSettings(
        ca_validity=timedelta(hours=1),
        ca_rotate_before=timedelta(minutes=30),
        # The leaf is due at ~45 min, the CA at 30 min: each test makes one of them due.
        cert_validity=timedelta(minutes=50),
        cert_rotate_before=timedelta(minutes=5),
        secrets_dir=tmp_path / "secrets",
        reload_runner=lambda command, _timeout: reloads.append(command),
    )
    target = tmp_path / "target"
    doc: dict[str, Any] = {
        "apiVersion": "certctl.io/v1",
        "kind": "TLSService",
        "metadata": {"name": NAME},
        "spec": {"targets": [{"directory": str(target), "reload": "reload web"}]},
    }
    service_specs.put_service(booted.services, ADMIN, NAME, doc)
    service_reconcile.reconcile_service(booted.services, settings, NAME, clock.now)
    try:
        yield Pair(booted.services, second, clock, settings, target, reloads)
    finally:
        booted.services.engine.dispose()
        engine.dispose()


def _force_renewal(pair: Pair) -> datetime:
    """``POST /renew`` a minute after the first issue; returns the reconcile time."""
    pair.at(pair.clock.now + timedelta(minutes=1))
    service_specs.request_renewal(pair.first, ADMIN, NAME)
    return pair.at(pair.clock.now + timedelta(seconds=1))


def _tick(services: Services, pair: Pair) -> int:
    return Scheduler(services, pair.settings, 1.0, clock=pair.clock).tick()


def test_two_replicas_deciding_together_store_one_renewal(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = pair.row()
    now = _force_renewal(pair)
    decide = service_reconcile._decide
    raced: list[ManagedService] = []

    def racing(services: Services, *args: Any) -> Any:
        result = decide(services, *args)
        if services is pair.first and not raced:
            # The second replica (now the leader) renews the same service, start to finish,
            # after the first one decided and issued but before it stores.
            raced.append(service_reconcile.reconcile_service(pair.second, pair.settings, NAME, now))
        return result

    monkeypatch.setattr(service_reconcile, "_decide", racing)
    service_reconcile.reconcile_service(pair.first, pair.settings, NAME, now)
    assert raced
    after = pair.row()
    assert after.serial == raced[0].serial != before.serial
    assert pair.renewed() == 1
    assert format_serial(pair.served().serial_number) == after.serial


def test_leader_dying_between_store_and_delivery_is_finished_by_the_next(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = pair.row()
    now = _force_renewal(pair)
    reloads = len(pair.reloads)

    def crash(*_args: Any) -> Any:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(service_reconcile, "deliver", crash)
        with pytest.raises(Crash):
            service_reconcile.reconcile_service(pair.first, pair.settings, NAME, now)
    stored = pair.row().serial
    assert stored != before.serial
    assert format_serial(pair.served().serial_number) == before.serial  # not delivered yet
    assert _tick(pair.second, pair) == 1
    assert format_serial(pair.served().serial_number) == stored
    assert len(pair.reloads) == reloads + 1
    assert pair.renewed() == 1
    assert pair.row().next_attempt_at is None
    assert _tick(pair.second, pair) == 0  # nothing left to do


def test_cached_ca_renewed_by_another_replica_is_not_renewed_again(pair: Pair) -> None:
    ca = issuers.load_issuer(pair.first, f"svc.{NAME}")  # cached by the first replica
    now = pair.at(service_ca.ca_renewal_time(pair.settings, ca) + timedelta(seconds=1))
    service_reconcile.reconcile_service(pair.second, pair.settings, NAME, now)
    renewed = pair.stored_ca()
    assert renewed.not_valid_after_utc > ca.certificate.not_valid_after_utc
    service_reconcile.reconcile_service(pair.first, pair.settings, NAME, now)
    assert pair.stored_ca() == renewed
    assert pair.served("ca.crt") == renewed
    assert pair.renewed() == 0  # the leaf was not due


def test_leader_dying_after_a_ca_renewal_is_published_by_the_next(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = issuers.load_issuer(pair.first, f"svc.{NAME}")
    ca = loaded.certificate
    now = pair.at(service_ca.ca_renewal_time(pair.settings, loaded) + timedelta(seconds=1))
    leaf = pair.row().serial

    def crash(*_args: Any) -> Any:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(service_reconcile, "_store_issue", crash)
        with pytest.raises(Crash):
            service_reconcile.reconcile_service(pair.first, pair.settings, NAME, now)
    renewed = pair.stored_ca()
    assert renewed != ca  # renewed, not published
    assert pair.served("ca.crt") == ca
    assert _tick(pair.second, pair) == 1
    assert pair.served("ca.crt") == renewed
    assert pair.row().serial == leaf  # the leaf stays (same CA key)
    assert pair.stored_ca() == renewed
