"""Managed-services fixtures: a bootstrapped store, time travel, real tools, a live server.

``env`` is a freshly bootstrapped store (SQLite; ``any_env`` also runs on PostgreSQL 15) with
the services clock frozen (``FakeClock``). Reconciles take an explicit ``now``; ``Env.at`` moves
the frozen clock to the same instant so what the use cases stamp (events, audit, webhook
back-off) agrees with the reconcile time. Nothing here sleeps to move time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import select, text
from starlette.testclient import TestClient

from certctl.api.app import create_app
from certctl.auth.permissions import PERMISSIONS
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    SubjectAltNames,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    generate_private_key,
    key_to_pem,
)
from certctl.server.bootstrap import bootstrap
from certctl.server.config import ServerConfig
from certctl.services import service_delivery, service_reconcile, service_specs
from certctl.services.context import Principal, Services
from certctl.services.service_settings import ServiceSettings
from certctl.store.db import create_store_engine
from certctl.store.models import Base, ManagedService, OutboxEvent
from tests.api.conftest import FakeClock

BACKENDS = ("sqlite", "postgresql")
# Short lifetimes so a test walks through several renewals in a few reconciles.
SETTINGS = {
    "ca_validity": timedelta(hours=10),
    "ca_rotate_before": timedelta(hours=3),
    "cert_validity": timedelta(hours=2),
    "cert_rotate_before": timedelta(minutes=30),
}


# --- documents ----------------------------------------------------------------------------


def service_doc(
    name: str,
    *,
    dns: tuple[str, ...] = (),
    ip: tuple[str, ...] = (),
    disabled: bool = False,
    secret: str | None = None,
    client_auth: bool = False,
    targets: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A TLSService document (DESIGN §7)."""
    sans = [{"dns": d} for d in dns] + [{"ip": a} for a in ip]
    self_signed: dict[str, Any] = {"subjectAltNames": sans}
    if disabled:
        self_signed["disabled"] = True
    tls: dict[str, Any] = {"selfSignedCertificate": self_signed}
    if secret is not None:
        tls["certificate"] = {"secretName": secret}
    if client_auth:
        tls["client"] = {"authentication": True}
    return {
        "apiVersion": "certctl.io/v1",
        "kind": "TLSService",
        "metadata": {"name": name},
        "spec": {"http": {"tls": tls}, "targets": targets or []},
    }


# --- PKI material -------------------------------------------------------------------------


@dataclass
class Leaf:
    certificate: x509.Certificate
    key: Any

    @property
    def cert_pem(self) -> bytes:
        return certs_to_pem([self.certificate])

    @property
    def key_pem(self) -> bytes:
        return key_to_pem(self.key)


def make_ca(cn: str, now: datetime, validity: timedelta = timedelta(days=365)) -> Leaf:
    key = generate_private_key()
    root = create_root_ca(key, common_name_dn(cn), validity=validity, now=now)
    return Leaf(root.certificate, key)


def make_leaf(
    ca: Leaf,
    cn: str,
    now: datetime,
    *,
    dns: tuple[str, ...] = (),
    ip: tuple[str, ...] = (),
    validity: timedelta = timedelta(days=30),
    profile: str = "server",
) -> Leaf:
    key = generate_private_key()
    authority = CertificateAuthority(ca.certificate, ca.key)
    issued = authority.issue(
        key.public_key(),
        common_name_dn(cn),
        profile=PROFILES[profile],
        validity=validity,
        now=now,
        sans=SubjectAltNames.parse(dns=list(dns or (cn,)), ip=list(ip)),
    )
    return Leaf(issued.certificate, key)


def write_secret(secrets_dir: Path, name: str, files: dict[str, bytes]) -> Path:
    """Replace the secret directory ``name`` with exactly ``files``."""
    directory = secrets_dir / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for file_name, data in files.items():
        (directory / file_name).write_bytes(data)
    return directory


def snapshot(directory: Path) -> dict[str, Any]:
    """What a directory target serves: where its symlink points and every file's bytes."""
    assert directory.is_symlink(), directory
    return {
        "link": os.readlink(directory),
        "files": {p.name: p.read_bytes() for p in sorted(directory.iterdir())},
    }


# --- the environment ----------------------------------------------------------------------


@dataclass
class Env:
    """A bootstrapped store plus helpers acting as the bootstrap admin."""

    backend: str
    services: Services
    settings: ServiceSettings
    clock: FakeClock
    tmp: Path
    admin_key: str
    admin: Principal = field(
        default_factory=lambda: Principal("admin", ("r-admin",), frozenset(PERMISSIONS), "test")
    )

    @property
    def now(self) -> datetime:
        return self.clock.now

    @property
    def secrets_dir(self) -> Path:
        return self.settings.secrets_dir

    def at(self, when: datetime) -> datetime:
        """Travel to ``when`` (the services clock follows)."""
        self.clock.now = when
        return when

    def put(self, doc: dict[str, Any]) -> ManagedService:
        return service_specs.put_service(self.services, self.admin, doc["metadata"]["name"], doc)

    def reconcile(self, name: str, now: datetime | None = None, **settings: Any) -> ManagedService:
        when = self.at(now) if now is not None else self.now
        cfg = self.settings if not settings else _replace(self.settings, **settings)
        return service_reconcile.reconcile_service(self.services, cfg, name, when)

    def row(self, name: str) -> ManagedService:
        with self.services.sessions() as session:
            row = session.get(ManagedService, name)
        assert row is not None
        return row

    def outputs(self, name: str) -> dict[str, dict[str, bytes]]:
        return service_delivery.outputs_for(self.services, self.row(name))

    def events(self, name: str | None = None) -> list[OutboxEvent]:
        with self.services.sessions() as session:
            query = select(OutboxEvent).order_by(OutboxEvent.id)
            if name is not None:
                query = query.where(OutboxEvent.service == name)
            return list(session.scalars(query))

    def client(self) -> TestClient:
        return TestClient(
            create_app(self.services),
            base_url="https://testserver",
            raise_server_exceptions=False,
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )

    def settings_with(self, **changes: Any) -> ServiceSettings:
        return _replace(self.settings, **changes)


def _replace(settings: ServiceSettings, **changes: Any) -> ServiceSettings:
    from dataclasses import replace

    return replace(settings, **changes)


def _truncate_all(url: str) -> None:
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


def _make_env(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> Iterator[Env]:
    data_dir = tmp_path / "data"
    url: str | None = None
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
        _truncate_all(url)
    else:
        template: Path = request.getfixturevalue("sqlite_template")
        data_dir.mkdir(mode=0o700)
        shutil.copyfile(template, data_dir / "certctl.db")
        (data_dir / "certctl.db").chmod(0o600)  # as a server makes it (0644 warns)
    booted = bootstrap(
        ServerConfig.model_validate({"data-dir": str(data_dir), "database-url": url})
    )
    assert booted.admin_key is not None
    clock = FakeClock()
    booted.services.clock = clock
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    settings = ServiceSettings(
        ca_validity=SETTINGS["ca_validity"],
        ca_rotate_before=SETTINGS["ca_rotate_before"],
        cert_validity=SETTINGS["cert_validity"],
        cert_rotate_before=SETTINGS["cert_rotate_before"],
        secrets_dir=secrets,
    )
    try:
        yield Env(backend, booted.services, settings, clock, tmp_path, booted.admin_key)
    finally:
        booted.services.engine.dispose()


@pytest.fixture
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """A fresh store on SQLite."""
    yield from _make_env(request, tmp_path, "sqlite")


@pytest.fixture(params=BACKENDS)
def any_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """A fresh store on each backend."""
    yield from _make_env(request, tmp_path, request.param)
