"""certificate.secretName read from a Kubernetes Secret, through the fake API server.

On Kubernetes the certificate a user provides lives in a Secret (ECK's
``spec.http.tls.certificate.secretName``); certctl read it only from ``<secrets-dir>/<name>/``
and answered "secret X not found (expected a directory …)" to a user who had just created it
with ``kubectl create secret tls``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certctl.kubeapi import KubeConnection
from certctl.server.config import ServerConfig
from certctl.server.kubernetes import CustomSecrets
from tests._tools import ok, openssl_req, run
from tests.kube.conftest import NAMESPACE, KubePki
from tests.kube.fake_apiserver import FakeApiServer
from tests.services.conftest import Env, service_doc, snapshot, write_secret

NAMES = ("web.example.internal",)
MINUTE = timedelta(minutes=1)
LABEL = {"certctl.io/custom-certificate": "true"}


def _config(apiserver: FakeApiServer, sa_dir: Path, env: Env) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "data-dir": str(env.tmp / "data"),
            "secrets-dir": str(env.secrets_dir),
            "kubernetes": {
                "api-server": apiserver.url,
                "ca-file": str(sa_dir / "ca.crt"),
                "token-file": str(sa_dir / "token"),
                "namespace": NAMESPACE,
            },
        }
    )


def _self_signed(tmp: Path) -> dict[str, bytes]:
    """ECK's documented example: openssl req -x509 with the service's names."""
    sans = "subjectAltName=DNS:web,DNS:web.example.internal"
    openssl_req(tmp / "tls.key", tmp / "tls.crt", "/CN=web", "-days", "30", "-addext", sans,
                x509=True)  # fmt: skip
    return {"tls.crt": (tmp / "tls.crt").read_bytes(), "tls.key": (tmp / "tls.key").read_bytes()}


def _put(apiserver: FakeApiServer, name: str, files: dict[str, bytes], **labels: str) -> None:
    apiserver.put_secret(
        NAMESPACE,
        name,
        type="kubernetes.io/tls",
        metadata={"labels": labels} if labels else {},
        data={k: base64.b64encode(v).decode() for k, v in files.items()},
    )


def test_a_labelled_secret_is_served_and_followed(
    apiserver: FakeApiServer, sa_dir: Path, env: Env, tmp_path: Path
) -> None:
    settings = env.settings_with(secret_reader=CustomSecrets(_config(apiserver, sa_dir, env)).read)
    target = tmp_path / "target"
    env.put(service_doc("web", dns=NAMES, secret="own", targets=[{"directory": str(target)}]))

    def reconcile(when: datetime) -> dict[str, dict[str, object]]:
        from certctl.services import service_reconcile

        row = service_reconcile.reconcile_service(env.services, settings, "web", env.at(when))
        return row.conditions

    # Created with kubectl, not labelled yet: the status says what to do, nothing is served.
    first = tmp_path / "first"
    first.mkdir()
    files = _self_signed(first)
    _put(apiserver, "own", files)
    conditions = reconcile(datetime.now(UTC))
    assert conditions["Failed"]["message"] == (
        f"secret own: Secret {NAMESPACE}/own is not labelled certctl.io/custom-certificate=true: "
        "label it to let managed services read it (kubectl label secret -n certs own "
        "certctl.io/custom-certificate=true)"
    )
    assert not target.exists()

    # Labelled: served; a self-signed tls.crt is its own ca.crt, which openssl verifies.
    apiserver.secrets[(NAMESPACE, "own")]["metadata"]["labels"] = LABEL
    conditions = reconcile(env.now + MINUTE)
    assert conditions["Ready"]["message"] == "serving", conditions
    assert (target / "tls.crt").read_bytes() == files["tls.crt"]
    assert (target / "tls.key").read_bytes() == files["tls.key"]
    ok(run("openssl", "verify", "-CAfile", target / "ca.crt", "-verify_hostname",
           "web.example.internal", target / "tls.crt"))  # fmt: skip
    assert apiserver.paths()[-1] == ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/own")

    # Rotated in the Secret (cert-manager, kubectl apply): the next pass delivers it.
    second = tmp_path / "second"
    second.mkdir()
    rotated = _self_signed(second)
    _put(apiserver, "own", rotated, **LABEL)
    conditions = reconcile(env.now + MINUTE)
    assert conditions["Ready"]["message"] == "serving", conditions
    assert (target / "tls.crt").read_bytes() == rotated["tls.crt"]

    # Deleted: Failed naming both places looked at; what was deployed stays.
    before = snapshot(target)
    del apiserver.secrets[(NAMESPACE, "own")]
    conditions = reconcile(env.now + MINUTE)
    assert conditions["Failed"]["message"] == (
        f"secret own not found: neither a directory {env.secrets_dir / 'own'} "
        f"nor a Kubernetes Secret {NAMESPACE}/own"
    )
    assert snapshot(target) == before

    # A directory in secrets-dir is read first, as before Secrets were read.
    _put(apiserver, "own", rotated, **LABEL)
    write_secret(env.secrets_dir, "own", files)
    apiserver.clear()
    conditions = reconcile(env.now + MINUTE)
    assert conditions["Ready"]["message"] == "serving", conditions
    assert (target / "tls.crt").read_bytes() == files["tls.crt"]
    assert apiserver.paths() == []


def test_a_secret_certctl_writes_is_not_a_source(
    apiserver: FakeApiServer, sa_dir: Path, env: Env, tmp_path: Path
) -> None:
    # Another service's Secret target holds that service's key: naming it as a source would
    # copy the key into this service's targets.
    read = CustomSecrets(_config(apiserver, sa_dir, env)).read
    _put(apiserver, "other-tls", _self_signed(tmp_path), **{
        "app.kubernetes.io/managed-by": "certctl", **LABEL})  # fmt: skip
    env.put(service_doc("web", dns=NAMES, secret="other-tls"))
    row = env.reconcile("web", secret_reader=read)
    assert row.conditions["Failed"]["message"].startswith(
        f"secret other-tls: Secret {NAMESPACE}/other-tls is one certctl writes (a service's "
        "Secret target), not a certificate to serve"
    )
    assert row.certificate_pem is None


def test_refusals_of_the_api_and_no_cluster_are_the_services_failure(
    apiserver: FakeApiServer, sa_dir: Path, env: Env, tmp_path: Path
) -> None:
    env.put(service_doc("web", dns=NAMES, secret="own"))
    apiserver.fail_status = 403
    read = CustomSecrets(_config(apiserver, sa_dir, env)).read
    row = env.reconcile("web", secret_reader=read)
    assert row.conditions["Failed"]["message"].startswith(
        f"secret own: read Secret {NAMESPACE}/own: Kubernetes API answered 403"
    ), row.conditions

    # A server with no cluster at all: one line saying both places and why neither.
    alone = ServerConfig.model_validate({"data-dir": str(tmp_path / "data2")})
    row = env.reconcile("web", env.now + MINUTE, secret_reader=CustomSecrets(alone).read)
    message = row.conditions["Failed"]["message"]
    assert message.startswith(
        f"secret own not found (expected a directory {tmp_path / 'data2' / 'secrets' / 'own'}, "
        "or a Kubernetes Secret labelled certctl.io/custom-certificate=true, which needs a "
        "Kubernetes connection: "
    ), message


def test_a_secret_read_by_each_pass_is_reconciled_only_when_it_changes(
    apiserver: FakeApiServer, sa_dir: Path, env: Env, tmp_path: Path
) -> None:
    # Read through the API at every scheduler pass, as before; reconciled (parsed, verified,
    # written back) only when what it holds changed, or when it can no longer be read.
    from certctl.server.scheduler import Scheduler

    settings = env.settings_with(secret_reader=CustomSecrets(_config(apiserver, sa_dir, env)).read)
    first = tmp_path / "first"
    first.mkdir()
    _put(apiserver, "own", _self_signed(first), **LABEL)
    target = tmp_path / "target"
    env.put(service_doc("web", dns=NAMES, secret="own", targets=[{"directory": str(target)}]))
    scheduler = Scheduler(env.services, settings, 10, clock=lambda: env.now)
    env.at(datetime.now(UTC))  # openssl's notBefore is the real time
    get = ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/own")
    assert scheduler.tick() == 1
    apiserver.clear()
    env.at(env.now + timedelta(seconds=10))
    assert scheduler.tick() == 0
    assert apiserver.paths() == [get]  # read, found unchanged

    second = tmp_path / "second"
    second.mkdir()
    rotated = _self_signed(second)
    _put(apiserver, "own", rotated, **LABEL)
    env.at(env.now + timedelta(seconds=10))
    assert scheduler.tick() == 1
    assert (target / "tls.crt").read_bytes() == rotated["tls.crt"]

    # The label taken off, the bytes the same: the next pass says so.
    apiserver.secrets[(NAMESPACE, "own")]["metadata"]["labels"] = {}
    env.at(env.now + timedelta(seconds=10))
    assert scheduler.tick() == 1
    failed = env.row("web").conditions["Failed"]
    assert "is not labelled certctl.io/custom-certificate=true" in failed["message"], failed


LIST = (
    "GET",
    f"/api/v1/namespaces/{NAMESPACE}/secrets"
    "?labelSelector=certctl.io%2Fcustom-certificate%3Dtrue&limit=500",
)


def test_a_pass_reads_every_custom_secret_with_one_list(
    apiserver: FakeApiServer, sa_dir: Path, env: Env, pki: KubePki
) -> None:
    # One GET per service per pass (every 10 s): 1,000 services were ~100 requests/s to the
    # API server, for Secrets that rarely change. One LIST of the labelled ones per pass.
    from certctl.server.scheduler import Scheduler
    from certctl.server.service_setup import service_settings

    settings = service_settings(_config(apiserver, sa_dir, env))
    crt, key = pki.leaf("web.example.internal")
    files = {"tls.crt": crt, "tls.key": key, "ca.crt": pki.ca_file.read_bytes()}
    names = [f"web-{i}" for i in range(5)]
    for name in names:
        _put(apiserver, f"{name}-tls", files, **LABEL)
        env.put(service_doc(name, dns=NAMES, secret=f"{name}-tls"))
    _put(apiserver, "unrelated", files)  # not labelled: not listed
    scheduler = Scheduler(env.services, settings, 10, clock=lambda: env.now)
    env.at(datetime.now(UTC))
    assert scheduler.tick() == 5  # a new scheduler reconciles each once
    assert apiserver.paths() == [LIST], apiserver.paths()
    assert {env.row(n).conditions["Ready"]["message"] for n in names} == {"serving"}
    for _ in range(2):
        apiserver.clear()
        env.at(env.now + timedelta(seconds=10))
        assert scheduler.tick() == 0
        assert apiserver.paths() == [LIST]  # was one GET per service

    # A change in one Secret: that service, from what the LIST read.
    crt2, key2 = pki.leaf("web.example.internal")
    _put(apiserver, "web-3-tls", {**files, "tls.crt": crt2, "tls.key": key2}, **LABEL)
    apiserver.clear()
    env.at(env.now + timedelta(seconds=10))
    assert scheduler.tick() == 2  # and web-4's resync, due at its point of the interval
    assert apiserver.paths() == [LIST]
    assert env.row("web-3").certificate_pem == crt2.decode()

    # Missing, not labelled, written by certctl: each service reports it as before (a GET
    # for the first two, which the LIST cannot tell apart), the others are untouched.
    _put(apiserver, "ours", files, **{"app.kubernetes.io/managed-by": "certctl", **LABEL})
    for name, secret in (("gone", "gone"), ("plain", "unrelated"), ("copy", "ours")):
        env.put(service_doc(name, dns=NAMES, secret=secret))
    apiserver.clear()
    env.at(env.now + timedelta(seconds=10))
    assert scheduler.tick() == 3
    assert sorted(apiserver.paths()) == sorted([
        LIST,
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/gone"),
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/unrelated"),
    ])  # fmt: skip
    failed = {n: env.row(n).conditions["Failed"]["message"] for n in ("gone", "plain", "copy")}
    assert failed["gone"] == (
        f"secret gone not found: neither a directory {env.secrets_dir / 'gone'} "
        f"nor a Kubernetes Secret {NAMESPACE}/gone"
    )
    assert failed["plain"].startswith(
        f"secret unrelated: Secret {NAMESPACE}/unrelated is not labelled "
        "certctl.io/custom-certificate=true"
    ), failed
    assert failed["copy"].startswith(
        f"secret ours: Secret {NAMESPACE}/ours is one certctl writes"
    ), failed
    assert {env.row(n).conditions["Ready"]["message"] for n in names} == {"serving"}


def _pages(apiserver: FakeApiServer) -> list[dict[str, list[str]]]:
    """The query of each LIST the fake API server got."""
    import urllib.parse

    return [
        urllib.parse.parse_qs(path.partition("?")[2])
        for method, path in apiserver.paths()
        if method == "GET" and path.partition("?")[0].endswith("/secrets")
    ]


def test_the_list_is_read_in_chunks(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    # A LIST without limit is one answer however large the namespace (and the API server
    # holds it whole): kubectl and client-go ask 500 at a time and follow metadata.continue.
    from certctl.targets.kubernetes import list_custom_certificates

    crt, key = pki.leaf("web.example.internal")
    files = {"tls.crt": crt, "tls.key": key}
    for i in range(5):
        _put(apiserver, f"web-{i}-tls", files, **LABEL)
    _put(apiserver, "unrelated", files)
    apiserver.page_size = 2  # an API server may return fewer than asked
    listed = list_custom_certificates(connection)
    assert sorted(listed) == [f"web-{i}-tls" for i in range(5)]
    assert all(found == files for found in listed.values())
    pages = _pages(apiserver)
    assert [page["limit"] for page in pages] == [["500"]] * 3, pages
    assert ["continue" in page for page in pages] == [False, True, True]


def test_an_expired_continue_token_lists_again_whole(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    # etcd compacted between two chunks: the token is 410 Expired. client-go's pager then
    # lists once without limit (a consistent list, not half of one).
    from certctl.targets.kubernetes import list_custom_certificates

    crt, key = pki.leaf("web.example.internal")
    for i in range(5):
        _put(apiserver, f"web-{i}-tls", {"tls.crt": crt, "tls.key": key}, **LABEL)
    apiserver.page_size = 2
    apiserver.expire_continue = True
    assert sorted(list_custom_certificates(connection)) == [f"web-{i}-tls" for i in range(5)]
    pages = _pages(apiserver)
    assert [sorted(page) for page in pages] == [
        ["labelSelector", "limit"],
        ["continue", "labelSelector", "limit"],
        ["labelSelector"],
    ], pages


@pytest.mark.parametrize("endless", ["same", "new"])
def test_a_list_that_never_ends_stops_with_an_error(
    apiserver: FakeApiServer,
    connection: KubeConnection,
    pki: KubePki,
    endless: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: an API server (or proxy) answering every chunk with a continue token, the one
    # it was given or a new one, kept certctl's LIST going forever, its items piling up in
    # memory. Now a repeated token ends it at once, and so does a page count past the bound
    # (lowered here: 1,000 pages of 500 cost seconds against the fake server).
    from certctl.kubeapi import KubeApiError
    from certctl.targets import kubernetes

    monkeypatch.setattr(kubernetes, "_LIST_MAX_PAGES", 5)
    crt, key = pki.leaf("web.example.internal")
    _put(apiserver, "web-tls", {"tls.crt": crt, "tls.key": key}, **LABEL)
    apiserver.endless_continue = endless
    with pytest.raises(KubeApiError) as raised:
        kubernetes.list_custom_certificates(connection)
    pages = len(_pages(apiserver))
    if endless == "same":
        assert pages == 2, pages
        assert raised.value.detail.endswith(
            "the API server answered a chunk with the continue token it was given (a LIST "
            "that never ends)"
        ), raised.value.detail
    else:
        assert pages == 5, pages
        assert raised.value.detail.endswith(
            "5 chunks of 500 read, and still a continue token (a LIST that never ends?)"
        ), raised.value.detail
    assert raised.value.detail.startswith(f"Secrets of {NAMESPACE} labelled "), raised.value.detail


@pytest.mark.parametrize("failure", ["forbidden", "endless"])
def test_the_list_fallback_advises_rbac_only_when_rbac_refused(
    apiserver: FakeApiServer,
    sa_dir: Path,
    env: Env,
    failure: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Before: every failed LIST logged "grant list on secrets", also for a LIST that never
    # ended or an API server answering 500, where no grant helps.
    from certctl.targets import kubernetes

    monkeypatch.setattr(kubernetes, "_LIST_MAX_PAGES", 3)
    if failure == "forbidden":
        apiserver.fail_status = 403
    else:
        apiserver.endless_continue = "new"
    with caplog.at_level("WARNING", logger="certctl.server"):
        assert CustomSecrets(_config(apiserver, sa_dir, env))._list() == {}
    [line] = [r.getMessage() for r in caplog.records if "custom certificates:" in r.getMessage()]
    assert line.endswith("(one request per service and pass; grant list on secrets)") == (
        failure == "forbidden"
    ), line
