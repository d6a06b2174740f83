"""``auth.admin-key-secret``: a real ``certctl serve`` puts the bootstrap key in a Secret."""

from __future__ import annotations

import base64
from pathlib import Path

from certctl.store.db import create_store_engine, installation_id
from tests.e2e.conftest import launch
from tests.kube.conftest import NAMESPACE
from tests.kube.fake_apiserver import FakeApiServer


def _settings(apiserver: FakeApiServer, sa_dir: Path) -> dict[str, object]:
    return {
        "auth": {"admin-key-secret": "certctl-admin-key"},
        "kubernetes": {
            "api-server": apiserver.url,
            "ca-file": str(sa_dir / "ca.crt"),
            "token-file": str(sa_dir / "token"),
            "namespace": NAMESPACE,
        },
    }


def test_first_start_stores_the_admin_key_in_a_secret_and_prints_none(
    apiserver: FakeApiServer, sa_dir: Path, tmp_path: Path
) -> None:
    with launch(tmp_path / "a", config=_settings(apiserver, sa_dir)) as server:
        secret = apiserver.secrets[(NAMESPACE, "certctl-admin-key")]
        key = base64.b64decode(secret["data"]["api-key"]).decode()
        assert key == server.admin_key  # the file copy, as before
        assert key.startswith("cctl_")
        assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "certctl"
        # Claimed for this installation: the id its database holds.
        engine = create_store_engine(f"sqlite:///{tmp_path / 'a' / 'data' / 'certctl.db'}")
        try:
            owner = installation_id(engine)
        finally:
            engine.dispose()
        assert secret["metadata"]["annotations"] == {"certctl.io/owner": owner}
        with server.client(key) as client:
            assert client.get("/api/v1/auth/whoami").json()["actor_id"] == "admin"
    out = "".join(p.read_text() for p in (tmp_path / "a").glob("serve-*.std*"))
    assert key not in out  # neither stdout nor the log
    assert f"Admin API key: in Secret {NAMESPACE}/certctl-admin-key (key api-key)" in out


def test_a_secret_that_cannot_be_written_falls_back_to_printing(
    apiserver: FakeApiServer, sa_dir: Path, tmp_path: Path
) -> None:
    apiserver.accepted_tokens.clear()  # certctl's ServiceAccount may not write it
    with launch(tmp_path / "b", config=_settings(apiserver, sa_dir)) as server:
        assert (NAMESPACE, "certctl-admin-key") not in apiserver.secrets
    out = "".join(p.read_text() for p in (tmp_path / "b").glob("serve-*.std*"))
    assert "cannot store the admin API key in Secret certctl-admin-key" in out
    assert f"  {server.admin_key}\n" in out  # printed once: it exists nowhere else
