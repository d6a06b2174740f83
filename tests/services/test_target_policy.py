"""Who may aim a service at the host: reload commands and directories (TargetPolicy)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certctl.auth.permissions import BUILTIN_ROLES
from certctl.errors import InvalidRequest, PermissionDenied
from certctl.services import service_reconcile, service_specs
from certctl.services.context import Principal
from certctl.services.target_policy import TargetPolicy
from tests.services.conftest import Env, service_doc

OPERATOR = Principal("ops", ("r-operator",), BUILTIN_ROLES["r-operator"][1], "test")


def _stored(env: Env, name: str) -> dict[str, Any]:
    return dict(env.row(name).spec)


def test_an_operator_cannot_set_a_reload_command_or_a_directory_outside_the_delegated_ones(
    env: Env,
) -> None:
    delegated = env.tmp / "delegated"
    delegated.mkdir()
    policy = TargetPolicy(delegated_directories=(delegated,))

    def put(targets: list[dict[str, Any]], caller: Principal = OPERATOR) -> None:
        service_specs.put_service(
            env.services, caller, "web", service_doc("web", targets=targets), policy
        )

    put([{"directory": str(delegated / "web")}])  # inside the delegated directory: allowed
    before = _stored(env, "web")
    refused: list[tuple[list[dict[str, Any]], str]] = [
        (
            [{"directory": str(delegated / "web"), "reload": "true"}],
            r"^spec\.targets\.0 \(reload changed\): reload runs a command as the certctl "
            r"server; ask an administrator$",
        ),
        (
            [{"directory": str(env.tmp / "elsewhere")}],
            r"^spec\.targets\.0: directory .*/elsewhere is not strictly inside "
            r"services\.target-directories \(.*/delegated\); ask an administrator$",
        ),
        (
            [
                {
                    "directory": str(delegated / "p"),
                    "format": "pkcs12",
                    "passwordFile": "/etc/shadow",
                }
            ],
            r"targets\.0: passwordFile /etc/shadow is not strictly inside",
        ),
        ([{"directory": "/etc/cron.d/x"}], r"is not strictly inside services\.target-dir"),
    ]
    for targets, message in refused:
        with pytest.raises(PermissionDenied, match=message):
            put(targets)
        assert _stored(env, "web") == before  # nothing stored

    # A symlink inside the delegated directory pointing out of it does not count as inside.
    (delegated / "escape").symlink_to(env.tmp)
    with pytest.raises(PermissionDenied, match=r"resolves to .*/web, not strictly inside"):
        put([{"directory": str(delegated / "escape" / "web")}])
    with pytest.raises(InvalidRequest, match=r"must not contain '\.\.'"):
        put([{"directory": str(delegated / "up" / ".." / ".." / "web")}])
    # The delegated directory itself is not inside it (a target there would replace it).
    with pytest.raises(PermissionDenied, match="is not strictly inside services"):
        put([{"directory": str(delegated)}])

    # An administrator (every permission) may set all of it; the operator may then edit the
    # service (its SANs) while keeping that target as it is, but not change the command.
    admin_target = {"directory": str(env.tmp / "elsewhere"), "reload": "true"}
    put([admin_target], caller=env.admin)
    doc = service_doc("web", dns=("web.example.internal",), targets=[admin_target])
    row = service_specs.put_service(env.services, OPERATOR, "web", doc, policy)
    assert row.spec["spec"]["http"]["tls"]["selfSignedCertificate"]["subjectAltNames"] == [
        {"dns": "web.example.internal"}
    ]
    with pytest.raises(PermissionDenied, match="reload runs a command"):
        put([{**admin_target, "reload": "sh -c 'cat /data/admin-api-key'"}])
    with pytest.raises(PermissionDenied, match=r"\(reloadTimeout changed\): reload runs"):
        put([{**admin_target, "reloadTimeout": "1m"}])
    # Nor add a target to it, even a delegated one or a Secret: it would receive that
    # service's key. Nor remove the administrator's target first, to add one after.
    copy = {"directory": str(delegated / "copy"), "owner": "nobody"}
    stolen = {"secret": "stolen", "namespace": "ops"}
    for targets in ([admin_target, copy], [admin_target, stolen], []):
        with pytest.raises(PermissionDenied, match="are changed by an administrator only"):
            put(targets)
    assert _stored(env, "web")["spec"]["targets"] == [
        {**admin_target, "format": "pem", "reloadTimeout": "30s"}
    ]
    # Negative twin: on a service with only delegated targets, an operator adds targets.
    put([{"directory": str(delegated / "a")}], caller=env.admin)
    put([{"directory": str(delegated / "a")}, {"directory": str(delegated / "b")}])


def test_no_caller_may_aim_a_target_at_the_servers_own_files(env: Env) -> None:
    data = env.tmp / "data"
    policy = TargetPolicy(delegated_directories=(env.tmp,), protected=(data,))
    for directory in (data / "tls", data, env.tmp):  # inside, equal, holding it
        doc = service_doc("web", targets=[{"directory": str(directory)}])
        with pytest.raises(InvalidRequest, match="overlaps the server's own files"):
            service_specs.put_service(env.services, env.admin, "web", doc, policy)
    doc = service_doc("web", targets=[{"directory": str(env.tmp / "web-tls")}])
    service_specs.put_service(env.services, env.admin, "web", doc, policy)


def test_the_api_answers_403_and_the_server_config_delegates(env: Env, tmp_path: Path) -> None:
    from certctl.server.config import load_config
    from certctl.server.service_setup import target_policy

    with pytest.raises(InvalidRequest, match=r"services\.target-directories: relative: target"):
        load_config(None, {"services.target-directories": ["relative"]})
    for whole in ("/srv/..", "//", "/"):
        with pytest.raises(InvalidRequest, match=r"services\.target-directories: "):
            load_config(None, {"services.target-directories": [whole]})
    config = load_config(
        None,
        {"data-dir": str(tmp_path / "d"), "services.target-directories": [str(tmp_path / "srv")]},
    )
    policy = target_policy(config)
    assert policy.delegated_directories == ((tmp_path / "srv").resolve(),)
    assert (tmp_path / "d").resolve() in policy.protected

    from starlette.testclient import TestClient

    from certctl.api.app import create_app

    with env.client() as admin:
        assert (
            admin.post(
                "/api/v1/auth/actors", json={"id": "ops", "name": "ops", "roles": ["r-operator"]}
            ).status_code
            == 201
        )
        minted = admin.post("/api/v1/auth/apikeys", json={"actor_id": "ops", "name": "k"})
        key = minted.json()["key_value"]
    with TestClient(
        create_app(env.services, service_policy=policy),
        base_url="https://testserver",
        headers={"Authorization": f"Bearer {key}"},
    ) as ops:
        hostile = service_doc("web", targets=[{"directory": "/tmp/x", "reload": "id"}])
        response = ops.put("/api/v1/services/web", json=hostile)
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert (
            "targets.0: reload runs a command as the certctl server; ask an administrator"
            in (response.json()["detail"])
        )
        assert ops.get("/api/v1/services/web").status_code == 404  # nothing stored
        inside = service_doc("web", targets=[{"directory": str(tmp_path / "srv" / "web")}])
        assert ops.put("/api/v1/services/web", json=inside).status_code == 201


def test_a_service_ca_issues_only_for_its_service(env: Env, tmp_path: Path) -> None:
    env.put(service_doc("web"))
    env.reconcile("web")
    csr_key = tmp_path / "k"
    from tests._tools import openssl_req

    openssl_req(csr_key, tmp_path / "csr", "/CN=web")
    with env.client() as client:
        for body in (
            {"issuer": "svc.web", "csr": (tmp_path / "csr").read_text()},
            {"issuer": "svc.web", "common_name": "web", "dns_names": ["web"]},
        ):
            response = client.post("/api/v1/certificates", json=body)
            assert response.status_code == 409, response.text
            assert "the CA of managed service web" in response.json()["detail"]
        child = {"id": "sub", "name": "sub", "common_name": "sub", "parent": "svc.web"}
        assert client.post("/api/v1/issuers", json=child).status_code == 409
        squat = {"id": "svc.api", "name": "x", "common_name": "x"}
        response = client.post("/api/v1/issuers", json=squat)
        assert response.status_code == 400, response.text
        assert "reserved for managed services" in response.json()["detail"]
        assert client.get("/api/v1/issuers/svc.api").status_code == 404
        # Negative twin: the default issuer still issues.
        ok_body = {"issuer": "default", "common_name": "web", "dns_names": ["web"]}
        assert client.post("/api/v1/certificates", json=ok_body).status_code == 201


def test_two_services_cannot_share_a_target(env: Env) -> None:
    from certctl.errors import Conflict

    shared = {"directory": str(env.tmp / "tls")}
    env.put(service_doc("web", targets=[shared]))
    with pytest.raises(
        Conflict, match=r"spec\.targets\.0: dir:.*/tls is already a target of service web"
    ):
        env.put(service_doc("api", targets=[shared]))
    # The same place spelled through a symlinked parent is the same place.
    (env.tmp / "alias").symlink_to(env.tmp)
    with pytest.raises(Conflict, match="already a target of service web"):
        env.put(service_doc("api", targets=[{"directory": str(env.tmp / "alias" / "tls")}]))
    secret = {"secret": "web-tls", "namespace": "apps"}
    with pytest.raises(
        InvalidRequest, match=r"spec\.targets\.1: secret:apps/web-tls is also spec\.targets\.0"
    ):
        env.put(service_doc("api", targets=[secret, secret]))
    env.put(service_doc("web", targets=[shared, secret]))  # its own targets again: fine
    with env.client() as client:
        response = client.put("/api/v1/services/api", json=service_doc("api", targets=[secret]))
        assert response.status_code == 409, response.text
    env.put(service_doc("api", targets=[{"directory": str(env.tmp / "api-tls")}]))


def test_a_path_that_stops_resolving_inside_its_delegated_directory_is_not_written(
    env: Env,
) -> None:
    delegated = env.tmp / "delegated"
    (delegated / "web").mkdir(parents=True)
    outside = env.tmp / "outside"
    outside.mkdir()
    policy = TargetPolicy(delegated_directories=(delegated,), protected=(env.tmp / "data",))
    target = delegated / "web" / "tls"
    doc = service_doc("web", targets=[{"directory": str(target)}])
    service_specs.put_service(env.services, OPERATOR, "web", doc, policy)
    # After the PUT, someone able to write the delegated directory swaps a parent for a link.
    (delegated / "web").rmdir()
    (delegated / "web").symlink_to(outside)
    row = service_reconcile.reconcile_service(
        env.services, env.settings_with(target_policy=policy), "web", env.now
    )
    assert "no longer resolves inside" in row.conditions["Failed"]["message"]
    assert list(outside.iterdir()) == []  # nothing written where the link points
    # Pointed back inside: delivered.
    (delegated / "web").unlink()
    (delegated / "web").mkdir()
    row = service_reconcile.reconcile_service(
        env.services, env.settings_with(target_policy=policy), "web", env.now + timedelta(minutes=1)
    )
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert (target / "tls.crt").is_file()


def _swap_after_the_check(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    """Run ``swap()`` right after each real policy check: the race, made deterministic."""
    checked = TargetPolicy.delivery_problem

    def check_then_swap(self: TargetPolicy, t: Any) -> str | None:
        problem = checked(self, t)
        swap()
        return problem

    monkeypatch.setattr(TargetPolicy, "delivery_problem", check_then_swap)


def test_disabling_tls_removes_nothing_where_a_parent_swapped_after_the_check_leads(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certctl.targets.directory import BundleFile, deliver_to_directory

    delegated = env.tmp / "delegated"
    (delegated / "web").mkdir(parents=True)
    # Another service's delivery outside the delegated directory (an administrator's).
    outside = env.tmp / "outside"
    deliver_to_directory(outside / "tls", {"tls.key": BundleFile(b"theirs", secret=True)})
    policy = TargetPolicy(delegated_directories=(delegated,), protected=(env.tmp / "data",))
    settings = env.settings_with(target_policy=policy)
    target = {"directory": str(delegated / "web" / "tls")}
    doc = service_doc("web", targets=[target])
    service_specs.put_service(env.services, OPERATOR, "web", doc, policy)
    service_reconcile.reconcile_service(env.services, settings, "web", env.now)
    doc = service_doc("web", disabled=True, targets=[target])
    service_specs.put_service(env.services, OPERATOR, "web", doc, policy)

    def swap() -> None:
        # Swapped right after the check by someone able to write the delegated directory.
        (delegated / "web" / "tls").unlink()
        (delegated / "web" / ".tls.certctl").rename(env.tmp / "moved-away")
        (delegated / "web").rmdir()
        (delegated / "web").symlink_to(outside)

    _swap_after_the_check(monkeypatch, swap)
    row = service_reconcile.reconcile_service(env.services, settings, "web", env.now + timedelta(1))
    assert (outside / "tls" / "tls.key").read_bytes() == b"theirs"  # not removed
    assert "no longer resolves inside" in row.conditions["Failed"]["message"]


def test_no_directory_is_made_where_a_parent_swapped_after_the_check_leads(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    delegated = env.tmp / "delegated"
    (delegated / "web").mkdir(parents=True)
    outside = env.tmp / "outside"
    outside.mkdir()
    policy = TargetPolicy(delegated_directories=(delegated,), protected=(env.tmp / "data",))
    doc = service_doc("web", targets=[{"directory": str(delegated / "web" / "a" / "b" / "tls")}])
    service_specs.put_service(env.services, OPERATOR, "web", doc, policy)

    def swap() -> None:
        (delegated / "web").rmdir()
        (delegated / "web").symlink_to(outside)  # right after the check

    _swap_after_the_check(monkeypatch, swap)
    settings = env.settings_with(target_policy=policy)
    row = service_reconcile.reconcile_service(env.services, settings, "web", env.now)
    assert list(outside.iterdir()) == []  # not even the missing parents
    assert "no longer resolves inside" in row.conditions["Failed"]["message"]


def test_a_password_file_swapped_after_the_check_is_not_even_opened_where_it_leads(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading

    # Opening a device can act (/dev/watchdog starts a timer that reboots the host; a tape
    # rewinds): a FIFO shows an open, as the writer blocked on it is released by a reader.
    delegated = env.tmp / "delegated"
    delegated.mkdir()
    password = delegated / "pw"
    password.write_text("p12-password\n")
    outside = env.tmp / "outside"
    outside.mkdir()
    fifo = outside / "device"
    os.mkfifo(fifo)
    policy = TargetPolicy(delegated_directories=(delegated,), protected=(env.tmp / "data",))
    target = {"directory": str(delegated / "app"), "format": "pkcs12",
              "passwordFile": str(password)}  # fmt: skip
    doc = service_doc("web", targets=[target])
    service_specs.put_service(env.services, OPERATOR, "web", doc, policy)

    def swap() -> None:
        password.unlink()
        password.symlink_to(fifo)  # right after the check

    _swap_after_the_check(monkeypatch, swap)
    opened = threading.Event()

    def writer() -> None:
        os.close(os.open(fifo, os.O_WRONLY))  # returns once a reader opened it
        opened.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    row = service_reconcile.reconcile_service(
        env.services, env.settings_with(target_policy=policy), "web", env.now
    )
    released = opened.wait(0.2)
    if not released:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
    thread.join(5)
    assert not released  # certctl never opened it
    assert "no longer resolves inside" in row.conditions["Failed"]["message"], row.conditions


def test_a_parent_swapped_for_a_link_to_another_services_directory_leaves_it_alone(
    env: Env,
) -> None:
    delegated = env.tmp / "delegated"
    (delegated / "a").mkdir(parents=True)
    (delegated / "b").mkdir()
    policy = TargetPolicy(delegated_directories=(delegated,), protected=(env.tmp / "data",))
    settings = env.settings_with(target_policy=policy)
    for name in ("a", "b"):
        doc = service_doc(name, targets=[{"directory": str(delegated / name / "tls")}])
        service_specs.put_service(env.services, OPERATOR, name, doc, policy)
        service_reconcile.reconcile_service(env.services, settings, name, env.now)
    served = (delegated / "a" / "tls" / "tls.key").read_bytes()
    # Whoever may write delegated/b (team b, in a sticky directory) points it at team a's.
    (delegated / "b").rename(env.tmp / "b-away")
    (delegated / "b").symlink_to(delegated / "a")
    row = service_reconcile.reconcile_service(env.services, settings, "b", env.now + timedelta(1))
    assert (delegated / "a" / "tls" / "tls.key").read_bytes() == served  # still a's own
    assert "is the target of service a" in row.conditions["Failed"]["message"], row.conditions
    # Nor does turning b's TLS off remove a's files (the link made after the PUT: at the
    # PUT, b's path resolving to a's target is refused).
    (delegated / "b").unlink()
    (env.tmp / "b-away").rename(delegated / "b")
    doc = service_doc("b", disabled=True, targets=[{"directory": str(delegated / "b" / "tls")}])
    service_specs.put_service(env.services, OPERATOR, "b", doc, policy)
    (delegated / "b").rename(env.tmp / "b-away")
    (delegated / "b").symlink_to(delegated / "a")
    row = service_reconcile.reconcile_service(env.services, settings, "b", env.now + timedelta(2))
    assert (delegated / "a" / "tls" / "tls.key").read_bytes() == served
    assert "is the target of service a" in row.conditions["Failed"]["message"], row.conditions
    # Service a deleted: its files are no longer anyone's, and b may take the place.
    service_specs.delete_service(env.services, env.admin, "a")
    row = service_reconcile.reconcile_service(env.services, settings, "b", env.now + timedelta(3))
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert not (delegated / "a" / "tls").exists()  # b's TLS is off: removed


def test_a_password_file_among_the_servers_own_files_is_refused(env: Env) -> None:
    data = env.tmp / "data"
    policy = TargetPolicy(protected=(data,))
    target = {"directory": str(env.tmp / "p12"), "format": "pkcs12",
              "passwordFile": str(data / "admin-api-key")}  # fmt: skip
    with pytest.raises(InvalidRequest, match=r"passwordFile: .* is among the server's own files"):
        service_specs.put_service(
            env.services, env.admin, "web", service_doc("web", targets=[target]), policy
        )


def test_a_secret_without_namespace_may_be_the_one_another_service_names(env: Env) -> None:
    from certctl.errors import Conflict

    env.put(service_doc("web", targets=[{"secret": "shared-tls", "namespace": "default"}]))
    with pytest.raises(Conflict, match="secret:shared-tls is already a target of service web"):
        env.put(service_doc("api", targets=[{"secret": "shared-tls"}]))
    env.put(service_doc("api", targets=[{"secret": "shared-tls", "namespace": "other"}]))


def test_spec_writes_take_turns_across_connections(any_env: Env) -> None:
    import threading
    import time

    from certctl.store.db import SERVICE_SPECS_LOCK, lock_for_write

    order: list[str] = []
    first_holds = threading.Event()

    def second() -> None:
        first_holds.wait(10)
        with any_env.services.sessions.begin() as session:
            lock_for_write(session, SERVICE_SPECS_LOCK)
            order.append("second locked")

    thread = threading.Thread(target=second)
    thread.start()
    with any_env.services.sessions.begin() as session:
        lock_for_write(session, SERVICE_SPECS_LOCK)
        first_holds.set()
        time.sleep(0.5)  # the other connection must wait, not read alongside
        order.append("first done")
    thread.join(30)
    assert order == ["first done", "second locked"]


def test_the_delivery_check_holds_through_a_symlinked_delegated_directory(env: Env) -> None:
    real = env.tmp / "real"
    (real / "tls" / "team").mkdir(parents=True)
    (env.tmp / "srv").symlink_to(real)  # the configured /srv/tls is really /real/tls
    outside = env.tmp / "outside"
    outside.mkdir()
    password = env.tmp / "srv" / "tls" / "pw"
    password.write_text("p12-password\n")
    data = env.tmp / "data"
    policy = TargetPolicy(delegated_directories=(env.tmp / "srv" / "tls",), protected=(data,))
    target = {"directory": str(env.tmp / "srv" / "tls" / "team" / "app"), "format": "pkcs12",
              "passwordFile": str(password)}  # fmt: skip
    service_specs.put_service(
        env.services, OPERATOR, "web", service_doc("web", targets=[target]), policy
    )
    settings = env.settings_with(target_policy=policy)
    (real / "tls" / "team").rmdir()
    (real / "tls" / "team").symlink_to(outside)
    row = service_reconcile.reconcile_service(env.services, settings, "web", env.now)
    assert "no longer resolves inside" in row.conditions["Failed"]["message"], row.conditions
    assert list(outside.iterdir()) == []
    # The password file swapped for a link to the key-encryption key: not read.
    (real / "tls" / "team").unlink()
    (real / "tls" / "team").mkdir()
    (data).mkdir(exist_ok=True)
    (data / "kek").write_text("secret\n")
    password.unlink()
    password.symlink_to(data / "kek")
    row = service_reconcile.reconcile_service(
        env.services, settings, "web", env.now + timedelta(minutes=1)
    )
    assert "passwordFile" in row.conditions["Failed"]["message"]
    assert "now resolves into the server's own files" in row.conditions["Failed"]["message"]
    assert not (real / "tls" / "team" / "app").exists()


def test_specs_stored_with_dotdot_keep_delivering(env: Env) -> None:
    from certctl.store.models import ManagedService

    (env.tmp / "x").mkdir()
    env.put(service_doc("web"))
    with env.services.sessions.begin() as session:  # as an earlier version stored it
        row = session.get(ManagedService, "web")
        assert row is not None
        spec = {"directory": str(env.tmp / "x" / ".." / "tls")}
        row.spec = {**row.spec, "spec": {**row.spec["spec"], "targets": [spec]}}
    row = env.reconcile("web")
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert (env.tmp / "tls" / "tls.crt").is_file()


def test_a_known_server_namespace_tells_secrets_apart(env: Env) -> None:
    from certctl.errors import Conflict

    policy = TargetPolicy(default_namespace="default")
    env.put(service_doc("web", targets=[{"secret": "web-tls"}]))
    doc = service_doc("api", targets=[{"secret": "web-tls", "namespace": "apps"}])
    service_specs.put_service(env.services, env.admin, "api", doc, policy)  # another Secret
    service_specs.put_service(env.services, env.admin, "api", doc, policy)  # re-applied as is
    same = service_doc("other", targets=[{"secret": "web-tls", "namespace": "default"}])
    with pytest.raises(Conflict, match="secret:default/web-tls is already a target of service"):
        service_specs.put_service(env.services, env.admin, "other", same, policy)
