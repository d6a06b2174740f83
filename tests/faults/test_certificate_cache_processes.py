"""A change made through one server process shows on the very next certificate GET of another.

``GET /api/v1/certificates/{id}`` is remembered per process (migration 0022's counter): a
revocation, a renewal, an issuer revoked or a key compromise made through another replica
(two ``certctl serve`` on one PostgreSQL database) or another worker (``--workers 2`` on
SQLite) must show on the next GET of a process that served the certificate before, also
while that process serves the certificate all along. A role that loses cert.read, or a key
revoked, elsewhere is refused at once on the remembered path; JSON and PEM (Accept or
?format=) never get each other's body. Renewals and revocations through both replicas at once,
and a revocation of a renewal racing a renewal of its predecessor, are all answered (no 503).
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests._tools import free_port
from tests.api.conftest import PostgresCluster
from tests.faults.conftest import FaultServer

ROUNDS = 8


@pytest.fixture
def two_replicas(tmp_path: Path, postgres_cluster: PostgresCluster) -> Iterator[list[FaultServer]]:
    """Two started replicas on one new PostgreSQL database, one master key and admin key."""
    database = postgres_cluster.create_database()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{postgres_cluster.port}/{database}"
    master_key = base64.b64encode(os.urandom(32)).decode()
    servers = [
        FaultServer(tmp_path / name, tmp_path / name / "data", free_port()) for name in ("a", "b")
    ]
    try:
        for server in servers:
            server.base.mkdir()
            server.env = {"CERTCTL_MASTER_KEY": master_key}
            server.config = {"database-url": url}
            server.start()
        key = next(s.admin_key for s in servers if s.admin_key)
        for server in servers:
            server.admin_key = key
        yield servers
    finally:
        for server in servers:
            server.stop()


def _csr(key: ec.EllipticCurvePrivateKey, name: str) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _changes_show_at_once(a: httpx.Client, b: httpx.Client) -> None:
    """Each change made through ``b`` shows on ``a``'s next GET, JSON and list alike."""
    # A revocation.
    for n in range(ROUNDS):
        cert = _ok(a.post("/api/v1/certificates", json={"common_name": f"r{n}.example"}), 201)
        path = f"/api/v1/certificates/{cert['id']}"
        assert _ok(a.get(path))["status"] == "active"
        assert _ok(a.get(path))["status"] == "active"  # served remembered
        _ok(b.post(f"{path}/revoke", json={"reason": "superseded"}))
        got = _ok(a.get(path))
        assert (got["status"], got["revocation_reason"]) == ("revoked", "superseded")
    # A renewal: the old certificate's renewed_by.
    for n in range(ROUNDS):
        cert = _ok(a.post("/api/v1/certificates", json={"common_name": f"n{n}.example"}), 201)
        path = f"/api/v1/certificates/{cert['id']}"
        assert _ok(a.get(path))["renewed_by"] is None
        renewed = _ok(b.post(f"{path}/renew", json={}), 201)
        assert _ok(a.get(path))["renewed_by"] == renewed["id"]
    # A key compromise of its renewal (the same key) revokes this one too.
    for n in range(ROUNDS):
        key = ec.generate_private_key(ec.SECP256R1())
        one = _ok(a.post("/api/v1/certificates", json={"csr": _csr(key, f"k{n}.example")}), 201)
        # A renewal of a CSR-issued certificate certifies the same key again.
        two = _ok(a.post(f"/api/v1/certificates/{one['id']}/renew", json={}), 201)
        path = f"/api/v1/certificates/{one['id']}"
        assert _ok(a.get(path))["status"] == "active"
        _ok(b.post(f"/api/v1/certificates/{two['id']}/revoke", json={"reason": "keyCompromise"}))
        got = _ok(a.get(path))
        assert (got["status"], got["revocation_reason"]) == ("revoked", "keyCompromise"), got
    # An issuer revoked: its certificates show it at once.
    for n in range(3):
        issuer = f"sub{n}"
        _ok(a.post("/api/v1/issuers", json={"id": issuer, "parent": "default"}), 201)
        cert = _ok(a.post("/api/v1/certificates", json={"issuer": issuer, "common_name": "i"}), 201)
        path = f"/api/v1/certificates/{cert['id']}"
        assert _ok(a.get(path))["issuer_revoked"] is None
        _ok(b.post(f"/api/v1/issuers/{issuer}/revoke", json={"reason": "cessationOfOperation"}))
        got = _ok(a.get(path))["issuer_revoked"]
        assert got is not None
        assert got["issuer"] == issuer, got


def _race(a: httpx.Client, b: httpx.Client, server_a: FaultServer) -> None:
    """GETs through ``a`` all along; once ``b``'s revocation answered, ``a`` shows it."""
    for n in range(ROUNDS):
        cert = _ok(a.post("/api/v1/certificates", json={"common_name": f"x{n}.example"}), 201)
        path = f"/api/v1/certificates/{cert['id']}"
        _ok(a.get(path))
        stop = threading.Event()

        def hammer(path: str, stop: threading.Event) -> None:
            with server_a.client() as c:
                while not stop.is_set():
                    c.get(path)

        threads = [threading.Thread(target=hammer, args=(path, stop)) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            _ok(b.post(f"{path}/revoke", json={}))
            statuses = [_ok(a.get(path))["status"] for _ in range(3)]
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert statuses == ["revoked"] * 3, (n, statuses)


def _concurrent_writes(a: httpx.Client, servers: list[FaultServer]) -> None:
    """Renewals through one replica while the other revokes: every write answers 2xx."""
    certs = [
        _ok(a.post("/api/v1/certificates", json={"common_name": f"c{n}.example"}), 201)["id"]
        for n in range(40)
    ]
    failures: list[str] = []

    def write(server: FaultServer, ids: list[str], action: str) -> None:
        with server.client(timeout=30) as c:
            for cert_id in ids:
                r = c.post(f"/api/v1/certificates/{cert_id}/{action}", json={})
                if r.status_code >= 300:
                    failures.append(f"{action} {r.status_code} {r.text}")

    threads = [
        threading.Thread(target=write, args=(servers[0], certs[0:10], "renew")),
        threading.Thread(target=write, args=(servers[0], certs[10:20], "renew")),
        threading.Thread(target=write, args=(servers[1], certs[20:30], "revoke")),
        threading.Thread(target=write, args=(servers[1], certs[30:40], "revoke")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def _access_and_formats(a: httpx.Client, b: httpx.Client) -> None:
    """Auth is checked on a remembered certificate; JSON and PEM never get each other's body."""
    cert = _ok(a.post("/api/v1/certificates", json={"common_name": "f.example"}), 201)
    path = f"/api/v1/certificates/{cert['id']}"
    _ok(b.post("/api/v1/auth/roles", json={"id": "reader", "permissions": ["cert.read"]}), 201)
    _ok(b.post("/api/v1/auth/actors", json={"id": "rd", "roles": ["reader"]}), 201)
    minted = _ok(b.post("/api/v1/auth/apikeys", json={"actor_id": "rd"}), 201)
    reader = {"Authorization": f"Bearer {minted['key_value']}"}
    variants: list[tuple[str, dict[str, str]]] = [
        (path, {}),
        (path, {"Accept": "application/x-pem-file"}),
        (f"{path}?format=pem", {}),
        (f"{path}?format=json", {"Accept": "application/x-pem-file"}),
        (path, {"Accept": "application/json"}),
    ]
    first = []
    for url, headers in variants * 2:
        r = a.get(url, headers={**reader, **headers})
        assert r.status_code == 200, r.text
        first.append((r.headers["content-type"], r.content))
    assert first[:5] == first[5:]
    kinds = [c for c, _ in first[:5]]
    assert kinds == [
        "application/json",
        "application/x-pem-file",
        "application/x-pem-file",
        "application/json",
        "application/json",
    ], kinds
    assert first[0][1] == first[3][1] == first[4][1]
    assert first[1][1] == first[2][1]
    assert first[1][1].startswith(cert["certificate_pem"].encode())
    # The role loses cert.read through the other replica: refused at once, both formats.
    _ok(b.put("/api/v1/auth/roles/reader", json={"permissions": ["issuer.read"]}))
    for url, headers in variants:
        assert a.get(url, headers={**reader, **headers}).status_code == 403
    _ok(b.put("/api/v1/auth/roles/reader", json={"permissions": ["cert.read"]}))
    assert a.get(path, headers=reader).status_code == 200
    # The key revoked through the other replica: refused at once.
    assert b.delete(f"/api/v1/auth/apikeys/{minted['id']}").status_code in (200, 204)
    for url, headers in variants:
        assert a.get(url, headers={**reader, **headers}).status_code == 401
    # Unknown format, a 404 of an id never read: as before.
    assert a.get(f"{path}?format=der").status_code == 400
    assert a.get("/api/v1/certificates/ffffffffffffffffffffffff").status_code == 404


def _revoke_successor_while_renewing_again(a: httpx.Client, servers: list[FaultServer]) -> None:
    """P renewed by X: X revoked through one replica while P is renewed again through the other."""
    failures: list[str] = []
    for n in range(30):
        p = _ok(a.post("/api/v1/certificates", json={"common_name": f"p{n}.example"}), 201)["id"]
        x = _ok(a.post(f"/api/v1/certificates/{p}/renew", json={}), 201)["id"]
        barrier = threading.Barrier(2)

        def go(server: FaultServer, path: str, barrier: threading.Barrier) -> None:
            with server.client(timeout=30) as c:
                barrier.wait()
                r = c.post(path, json={})
                if r.status_code >= 300:
                    failures.append(f"{path} {r.status_code} {r.text}")

        threads = [
            threading.Thread(
                target=go, args=(servers[1], f"/api/v1/certificates/{x}/revoke", barrier)
            ),
            threading.Thread(
                target=go, args=(servers[0], f"/api/v1/certificates/{p}/renew", barrier)
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


def test_changes_through_another_replica_show_on_the_next_get(
    two_replicas: list[FaultServer],
) -> None:
    one, other = two_replicas
    with one.client() as a, other.client() as b:
        _changes_show_at_once(a, b)
        _access_and_formats(a, b)
        _revoke_successor_while_renewing_again(a, two_replicas)
        _race(a, b, one)
        _concurrent_writes(a, two_replicas)


def test_changes_through_another_worker_show_on_the_next_get(fault_server: FaultServer) -> None:
    fault_server.config = {"workers": 2}
    fault_server.start()
    # Each new connection may land on either worker: a GET on a fresh connection after a
    # change on another one is served by a worker that may have remembered the row.
    with fault_server.client() as a:
        for n in range(ROUNDS):
            cert = _ok(a.post("/api/v1/certificates", json={"common_name": f"w{n}.example"}), 201)
            path = f"/api/v1/certificates/{cert['id']}"
            for _ in range(4):  # fresh connections: both workers remember it
                with fault_server.client() as c:
                    _ok(c.get(path))
            with fault_server.client() as c:
                _ok(c.post(f"{path}/revoke", json={}))
            for _ in range(4):
                with fault_server.client() as c:
                    assert _ok(c.get(path))["status"] == "revoked"
