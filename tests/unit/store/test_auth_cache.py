"""The API-key cache (SQLite ``data_version``) never outlives a change made by another process.

Two bootstrapped ``Services`` on one database file stand for two server processes: A
authenticates (and caches), B changes the key, the actor or its role, A's very next
authentication must see it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from certctl.server.bootstrap import bootstrap
from certctl.server.config import load_config
from certctl.services import rbac
from certctl.services.context import Principal, Services

ADMIN = Principal("admin", ("r-admin",), frozenset({"*"}), "api_key")


def _services(data_dir: Path) -> Services:
    return bootstrap(load_config(None, {"data-dir": str(data_dir)})).services


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Services, Services, Principal]:
    a = _services(tmp_path)
    b = _services(tmp_path)
    assert a.engine is not b.engine
    admin = rbac.authenticate_api_key(b, (tmp_path / "admin-api-key").read_text().strip(), "")
    return a, b, admin


def _mint(services: Services, admin: Principal, actor: str, roles: list[str]) -> str:
    rbac.create_actor(services, admin, actor, actor, roles)
    return rbac.mint_api_key(services, admin, actor, "k", None).minted.value


def test_revocation_elsewhere_applies_to_the_next_request(
    pair: tuple[Services, Services, Principal],
) -> None:
    a, b, admin = pair
    key = _mint(b, admin, "scraper", ["r-metrics-read"])
    for _ in range(3):  # the slow path, then cache hits
        assert rbac.authenticate_api_key(a, key, "").actor_id == "scraper"
    rbac.revoke_api_key(b, admin, key.split("_")[1])
    with pytest.raises(rbac.AuthFailure) as failure:
        rbac.authenticate_api_key(a, key, "")
    assert failure.value.reason == "revoked"


def test_role_change_elsewhere_applies_to_the_next_request(
    pair: tuple[Services, Services, Principal],
) -> None:
    a, b, admin = pair
    key = _mint(b, admin, "ops", ["r-metrics-read"])
    for _ in range(3):
        assert "cert.issue" not in rbac.authenticate_api_key(a, key, "").permissions
    rbac.update_actor(b, admin, "ops", None, ["r-operator"])
    assert "cert.issue" in rbac.authenticate_api_key(a, key, "").permissions


def test_deleted_actor_and_wrong_secret_are_refused(
    pair: tuple[Services, Services, Principal],
) -> None:
    a, b, admin = pair
    key = _mint(b, admin, "gone", ["r-viewer"])
    rbac.authenticate_api_key(a, key, "")
    rbac.authenticate_api_key(a, key, "")
    with pytest.raises(rbac.AuthFailure) as failure:
        rbac.authenticate_api_key(a, key[:-2] + ("AA" if not key.endswith("AA") else "BB"), "")
    assert failure.value.reason == "invalid"
    rbac.delete_actor(b, admin, "gone")
    with pytest.raises(rbac.AuthFailure):
        rbac.authenticate_api_key(a, key, "")


def test_expiry_is_checked_on_a_cache_hit(pair: tuple[Services, Services, Principal]) -> None:
    a, b, admin = pair
    rbac.create_actor(b, admin, "brief", "brief", ["r-viewer"])
    expires = b.clock() + timedelta(minutes=5)
    key = rbac.mint_api_key(b, admin, "brief", "k", expires).minted.value
    rbac.authenticate_api_key(a, key, "")
    rbac.authenticate_api_key(a, key, "")  # now cached
    later = expires + timedelta(seconds=1)
    a.clock = lambda: later
    with pytest.raises(rbac.AuthFailure) as failure:
        rbac.authenticate_api_key(a, key, "")
    assert failure.value.reason == "expired"
