"""certctl kek rotate against the data dir of a real ``certctl serve``.

Every stored private key (the CA's, server-generated leaf keys, managed services' keys) is
re-encrypted under a new key-encryption key; the server restarted on it signs with the same
CA key, delivers the same service key, and the old API keys still work.
"""

from __future__ import annotations

import base64
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography import x509

from certctl.errors import CertctlError
from certctl.store.keywrap import KeyWrapper
from tests._poll import wait_until
from tests._tools import failed, free_port, ok, run
from tests.e2e.conftest import CertctlServer, StartServer

pytestmark = pytest.mark.e2e

_CONTEXTS = (
    ("issuers", "id", "issuer:"),
    ("certificates", "id", "certificate:"),
    ("managed_services", "name", "service:"),
    ("acme_eab_keys", "id", "acme-eab:"),
)


def _stored_keys(data_dir: Path) -> dict[str, bytes]:
    """Every wrapped key in the store, by the context it is bound to."""
    with sqlite3.connect(data_dir / "certctl.db") as db:
        return {
            f"{prefix}{owner}": blob
            for table, key, prefix in _CONTEXTS
            for owner, blob in db.execute(
                f"SELECT {key}, wrapped_key FROM {table} WHERE wrapped_key IS NOT NULL"
            )
        }


def _opened_by(kek: bytes, stored: dict[str, bytes]) -> dict[str, bytes]:
    wrapper = KeyWrapper(kek)
    opened = {}
    for context, blob in stored.items():
        try:
            opened[context] = wrapper.unwrap(blob, context=context)
        except CertctlError:
            pass
    return opened


def _kek(data_dir: Path) -> bytes:
    return base64.b64decode((data_dir / "kek").read_bytes().strip())


def _rotate(data_dir: Path, **env: str) -> object:
    return run(
        "certctl", "kek", "rotate", "--data-dir", data_dir, env={"PATH": "/usr/bin:/bin", **env}
    )


def _service(server: CertctlServer, targets: list[Path], status: int) -> None:
    """PUT the service ``web`` delivered to ``targets``: 201 when new, 200 when changed."""
    doc = {
        "apiVersion": "certctl.io/v1",
        "kind": "TLSService",
        "metadata": {"name": "web"},
        "spec": {
            "http": {
                "tls": {"selfSignedCertificate": {"subjectAltNames": [{"dns": "web.example.com"}]}}
            },
            "targets": [{"directory": str(t)} for t in targets],
        },
    }
    with server.client(server.admin_key) as client:
        response = client.put("/api/v1/services/web", json=doc)
    assert response.status_code == status, response.text
    for target in targets:
        wait_until(lambda t=target: (t / "tls.key").is_file(), f"{target}/tls.key", 60)


def _issue(server: CertctlServer, key: str, name: str) -> x509.Certificate:
    with server.client(key) as client:
        response = client.post(
            "/api/v1/certificates",
            json={"issuer": "default", "common_name": name, "dns_names": [name]},
        )
    assert response.status_code == 201, response.text
    return x509.load_pem_x509_certificate(response.json()["certificate_pem"].encode())


def test_rotation_reencrypts_every_key_and_the_server_goes_on(
    start_server: StartServer, tmp_path: Path
) -> None:
    first = start_server()
    admin_key = first.admin_key
    _issue(first, admin_key, "before.example.com")
    _service(first, [tmp_path / "web-a"], 201)
    service_key = (tmp_path / "web-a" / "tls.key").read_bytes()
    with first.client(admin_key) as client:  # an ACME EAB HMAC key is wrapped too
        minted = client.post("/api/v1/acme/eab-keys", json={"name": "ci"})
    assert minted.status_code == 201, minted.text
    eab_id, eab_hmac = minted.json()["id"], minted.json()["hmac_key"]
    # Refused while the server runs: it would go on encrypting with the old key.
    running = failed(_rotate(first.data_dir))
    assert running.stderr.splitlines() == [
        f"certctl: error: a certctl serve is running on {first.data_dir}: stop it (every "
        "replica of it) first"
    ], running.stderr
    old_kek = _kek(first.data_dir)
    first.stop()

    before = _stored_keys(first.data_dir)
    assert {c.split(":")[0] for c in before} == {"issuer", "certificate", "service", "acme-eab"}
    plain = _opened_by(old_kek, before)
    assert plain.keys() == before.keys()

    done = ok(_rotate(first.data_dir))
    assert done.stdout == ""  # the new key is in the file, never printed
    assert f"in {first.data_dir / 'kek'} (0600)" in done.stderr
    new_kek = _kek(first.data_dir)
    assert new_kek != old_kek
    assert stat.S_IMODE((first.data_dir / "kek").stat().st_mode) == 0o600
    assert not (first.data_dir / "kek.next").exists()
    after = _stored_keys(first.data_dir)
    assert after.keys() == before.keys()
    assert _opened_by(new_kek, after) == plain  # the same keys, under the new KEK
    assert _opened_by(old_kek, after) == {}  # and none of them under the old one
    assert base64.urlsafe_b64encode(plain[f"acme-eab:{eab_id}"]).rstrip(b"=").decode() == eab_hmac

    second = start_server(data_dir=first.data_dir)
    ca = x509.load_pem_x509_certificate((first.data_dir / "tls" / "ca.crt").read_bytes())
    # The bootstrap admin key, minted before the rotation, still authenticates; the CA
    # key (re-encrypted) still signs.
    _issue(second, admin_key, "after.example.com").verify_directly_issued_by(ca)
    # The service key, re-encrypted, is delivered to a new target as it was.
    _service(second, [tmp_path / "web-a", tmp_path / "web-b"], 200)
    assert (tmp_path / "web-b" / "tls.key").read_bytes() == service_key
    with second.client(admin_key) as client:
        events = client.get("/api/v1/audit", params={"limit": 200}).json()["items"]
    assert [e["actor"] for e in events if e["action"] == "kek.rotate"] == ["system"]


def test_the_old_key_no_longer_starts_the_server(start_server: StartServer) -> None:
    server = start_server()
    server.stop()
    old = (server.data_dir / "kek").read_bytes()
    ok(_rotate(server.data_dir))
    (server.data_dir / "kek").write_bytes(old)
    result = failed(
        run(
            "certctl",
            "serve",
            "--data-dir",
            server.data_dir,
            "--listen",
            f"127.0.0.1:{free_port()}",
            env={"PATH": "/usr/bin:/bin"},
        )
    )
    assert "does not decrypt the keys in the database" in result.stderr, result.stderr


def test_a_rotation_cut_after_its_commit_is_completed_at_the_next_start(
    start_server: StartServer,
) -> None:
    server = start_server()
    server.stop()
    data = server.data_dir
    old = (data / "kek").read_bytes()
    ok(_rotate(data))
    # The state a crash between the commit and the rename leaves: the store under the new
    # key, kek still the old one, the new one in kek.next.
    (data / "kek").rename(data / "kek.next")
    (data / "kek").write_bytes(old)
    (data / "kek").chmod(0o600)
    new = (data / "kek.next").read_bytes()
    again = start_server(data_dir=data)
    assert (data / "kek").read_bytes() == new
    assert not (data / "kek.next").exists()
    assert "completed an interrupted key rotation" in again.logs()[1]
    _issue(again, server.admin_key, "after.example.com")


def test_a_rotation_cut_before_its_commit_leaves_the_old_key(start_server: StartServer) -> None:
    server = start_server()
    server.stop()
    data = server.data_dir
    old = (data / "kek").read_bytes()
    # A crash before the commit: kek.next written, the store still under kek.
    (data / "kek.next").write_bytes(base64.b64encode(bytes(range(32))) + b"\n")
    again = start_server(data_dir=data)
    assert (data / "kek").read_bytes() == old
    assert not (data / "kek.next").exists()
    _issue(again, server.admin_key, "after.example.com")


def test_with_master_key_the_new_value_is_printed_once(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server()
    server.stop()
    data = server.data_dir
    old = (data / "kek").read_text().strip()
    (data / "kek").unlink()  # the key moved to a secret store
    result = ok(_rotate(data, CERTCTL_MASTER_KEY=old))
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    new = lines[0]
    assert new != old
    assert len(base64.b64decode(new, validate=True)) == 32
    assert "set CERTCTL_MASTER_KEY to the value printed above" in result.stderr
    assert new not in result.stderr
    assert not (data / "kek").exists()
    assert not (data / "kek.next").exists()
    stored = _stored_keys(data)
    assert _opened_by(base64.b64decode(new), stored).keys() == stored.keys()
    # The server's other offline command opens the store with the new value only.
    key_file = tmp_path / "recovered-key"
    env = {"PATH": "/usr/bin:/bin"}
    ok(
        run(
            "certctl",
            "admin-key",
            "--data-dir",
            data,
            "--out",
            key_file,
            env={**env, "CERTCTL_MASTER_KEY": new},
        )
    )
    stale = failed(
        run(
            "certctl",
            "admin-key",
            "--data-dir",
            data,
            "--out",
            key_file,
            "--force",
            env={**env, "CERTCTL_MASTER_KEY": old},
        )
    )
    assert "does not decrypt the keys in the database" in stale.stderr
