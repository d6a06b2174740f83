"""Fixtures: test PKI (through certctl.pki), the fake API server, connections, a fake clock."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certctl.kubeapi import KubeConnection, in_cluster
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    KeyType,
    SubjectAltNames,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    generate_private_key,
    key_to_pem,
)
from tests.kube.fake_apiserver import FakeApiServer
from tests.services.conftest import env  # noqa: F401  (fixture, registered by import)

CERTCTL_SA_TOKEN = "certctl-serviceaccount-token"  # what certctl itself presents
NAMESPACE = "certs"
# Two certctl installations (each its own database): the id each records on its Secrets.
INSTALLATION = "6f1c2a7e-0d3b-4e58-9a41-2b7c5d8e9f10"
OTHER_INSTALLATION = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"
NOW = datetime.now(UTC)


@dataclass(frozen=True)
class KubePki:
    ca: CertificateAuthority
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert_pem: bytes
    client_key_pem: bytes

    def leaf(self, name: str) -> tuple[bytes, bytes]:
        """(tls.crt, tls.key) PEM for a server certificate for ``name``."""
        key = generate_private_key(KeyType.EC_P256)
        issued = self.ca.issue(
            key.public_key(),
            common_name_dn(name),
            profile=PROFILES["server"],
            validity=timedelta(days=30),
            now=NOW,
            sans=SubjectAltNames.parse(dns=[name]),
        )
        return certs_to_pem([issued.certificate]), key_to_pem(key)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> KubePki:
    base = tmp_path_factory.mktemp("kube-pki")
    ca_key = generate_private_key(KeyType.EC_P256)
    root = create_root_ca(
        ca_key, common_name_dn("Fake kube-apiserver CA"), validity=timedelta(days=30), now=NOW
    )
    ca = CertificateAuthority(root.certificate, ca_key)
    key = generate_private_key(KeyType.EC_P256)
    server = ca.issue(
        key.public_key(),
        common_name_dn("kube-apiserver"),
        profile=PROFILES["server"],
        validity=timedelta(days=30),
        now=NOW,
        sans=SubjectAltNames(dns=("localhost",), ip=(ipaddress.ip_address("127.0.0.1"),)),
    )
    client_key = generate_private_key(KeyType.EC_P256)
    client = ca.issue(
        client_key.public_key(),
        common_name_dn("certctl-kubeconfig-user"),
        profile=PROFILES["client"],
        validity=timedelta(days=30),
        now=NOW,
    )
    (base / "ca.crt").write_bytes(certs_to_pem([ca.certificate]))
    (base / "server.crt").write_bytes(certs_to_pem([server.certificate]))
    (base / "server.key").write_bytes(key_to_pem(key))
    return KubePki(
        ca,
        base / "ca.crt",
        base / "server.crt",
        base / "server.key",
        certs_to_pem([client.certificate]),
        key_to_pem(client_key),
    )


@pytest.fixture
def apiserver(pki: KubePki) -> Iterator[FakeApiServer]:
    server = FakeApiServer(pki.server_cert, pki.server_key, pki.ca_file).start()
    server.accepted_tokens.add(CERTCTL_SA_TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sa_dir(tmp_path: Path, pki: KubePki) -> Path:
    """What kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount."""
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "ca.crt").write_bytes(pki.ca_file.read_bytes())
    (d / "token").write_text(CERTCTL_SA_TOKEN + "\n")
    (d / "namespace").write_text(NAMESPACE)
    return d


@pytest.fixture
def connection(apiserver: FakeApiServer, sa_dir: Path) -> KubeConnection:
    """certctl's in-cluster connection, as a pod would build it."""
    environ = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(apiserver.port),
    }
    return in_cluster(environ=environ, service_account_dir=sa_dir)


class FakeClock:
    """Monotonic seconds for the authenticator's cache; ``advance`` moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
