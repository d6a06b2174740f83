"""What ``certctl serve`` accepts as its store, and two first starts on one data dir."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography import x509

from tests._tools import failed, free_port, run
from tests.e2e.conftest import CertctlServer, _spawn, _wait_ready

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused_in_one_line(tmp_path: Path, url: str) -> None:
    data = tmp_path / "data"
    port = free_port()
    result = failed(
        run(
            "certctl",
            "serve",
            "--data-dir",
            data,
            "--listen",
            f"127.0.0.1:{port}",
            "--database-url",
            url,
            env={"PATH": "/usr/bin:/bin"},
        )
    )
    assert result.stderr.splitlines() == [
        "certctl: error: database-url: an in-memory SQLite database is lost when the server "
        "stops; give a file (sqlite:////var/lib/certctl/certctl.db) or leave database-url "
        "unset for <data-dir>/certctl.db"
    ], result.stderr
    # Refused before anything was written: no data dir with a key file but no database.
    assert not data.exists()


def _issue(server: CertctlServer, key: str, name: str) -> x509.Certificate:
    with server.client(key) as client:
        response = client.post(
            "/api/v1/certificates",
            json={"issuer": "default", "common_name": name, "dns_names": [name]},
        )
    assert response.status_code == 201, response.text
    return x509.load_pem_x509_certificate(response.json()["certificate_pem"].encode())


def test_two_first_starts_at_once_share_one_kek_and_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    # Spawned together, before either is waited for: both find the data dir empty.
    servers = [_spawn(tmp_path / name, data, None, (), None, None) for name in ("a", "b")]
    try:
        for server in servers:
            assert _wait_ready(server)
        admin_key = (data / "admin-api-key").read_text().strip()
        # One first start: its key printed once, by one server; the other was told the file.
        printed = [s for s in servers if f"  {admin_key}\n" in s.logs()[0]]
        assert len(printed) == 1, [s.logs()[0] for s in servers]
        for server in servers:
            assert "Traceback" not in server.logs()[1], server.logs()[1]
        kek = (data / "kek").read_bytes()
        assert len(base64.b64decode(kek.strip())) == 32
        assert stat.S_IMODE((data / "kek").stat().st_mode) == 0o600
        # No temporary file of the creation left behind.
        assert sorted(p.name for p in data.iterdir() if p.name.startswith(".")) == []
        # Both use the same CA key (each signs with it: one KEK opened it for both) and
        # the same store (the one admin key works on both).
        ca = x509.load_pem_x509_certificate((data / "tls" / "ca.crt").read_bytes())
        for index, server in enumerate(servers):
            leaf = _issue(server, admin_key, f"svc-{index}.example.com")
            leaf.verify_directly_issued_by(ca)
        with servers[0].client(admin_key) as client:
            listed = client.get("/api/v1/certificates").json()["items"]
        assert {"svc-0.example.com", "svc-1.example.com"} <= {c["common_name"] for c in listed}
        with servers[1].client(admin_key) as client:
            issuers = client.get("/api/v1/issuers").json()["items"]
        assert [i["id"] for i in issuers] == ["default"]
    finally:
        for server in servers:
            server.stop()
