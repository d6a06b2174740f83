"""certctl.targets.kubernetes.SecretWriter against the fake API server: exact calls, in place."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest

from certctl.errors import Conflict, InvalidRequest
from certctl.kubeapi import KubeApiError, KubeConnection
from certctl.server.config import ServerConfig
from certctl.targets.kubernetes import SecretWriter, WriteResult
from tests.kube.conftest import (
    CERTCTL_SA_TOKEN,
    INSTALLATION,
    NAMESPACE,
    OTHER_INSTALLATION,
    KubePki,
)
from tests.kube.fake_apiserver import FakeApiServer
from tests.services.conftest import Env

BASE = f"/api/v1/namespaces/{NAMESPACE}/secrets"
MINUTE = timedelta(minutes=1)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_create_then_update_in_place_then_unchanged(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    writer = SecretWriter(connection, owner=INSTALLATION)
    crt, key = pki.leaf("svc.example.internal")
    ca = pki.ca_file.read_bytes()
    result = writer.write_tls(
        "svc-http-certs-internal",
        certificate_pem=crt,
        private_key_pem=key,
        ca_pem=ca,
        labels={"certctl.io/service": "svc"},
    )
    assert result is WriteResult.CREATED
    assert apiserver.paths() == [
        ("GET", f"{BASE}/svc-http-certs-internal"),
        ("POST", BASE),
    ]
    assert {r.bearer for r in apiserver.requests} == {CERTCTL_SA_TOKEN}
    assert apiserver.requests[1].body == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "svc-http-certs-internal",
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "certctl", "certctl.io/service": "svc"},
            "annotations": {"certctl.io/owner": INSTALLATION},
        },
        "type": "kubernetes.io/tls",
        "data": {"ca.crt": b64(ca), "tls.crt": b64(crt), "tls.key": b64(key)},
    }
    stored = apiserver.secrets[(NAMESPACE, "svc-http-certs-internal")]
    uid, version = stored["metadata"]["uid"], stored["metadata"]["resourceVersion"]

    # Someone else annotates and labels the Secret; certctl renews the certificate.
    stored["metadata"]["annotations"]["reloader.stakater.com/match"] = "true"
    stored["metadata"]["labels"]["team"] = "payments"
    apiserver.clear()
    crt2, key2 = pki.leaf("svc.example.internal")
    result = writer.write_tls(
        "svc-http-certs-internal",
        certificate_pem=crt2,
        private_key_pem=key2,
        ca_pem=ca,
        client_trust_pem=ca,
        labels={"certctl.io/service": "svc"},
    )
    assert result is WriteResult.UPDATED
    assert apiserver.paths() == [
        ("GET", f"{BASE}/svc-http-certs-internal"),
        ("PUT", f"{BASE}/svc-http-certs-internal"),
    ]
    put = apiserver.requests[1].body
    assert put is not None
    assert put["metadata"]["resourceVersion"] == version  # optimistic concurrency
    assert put["type"] == "kubernetes.io/tls"
    assert put["data"] == {
        "ca.crt": b64(ca),
        "client-trust.crt": b64(ca),
        "tls.crt": b64(crt2),
        "tls.key": b64(key2),
    }
    stored = apiserver.secrets[(NAMESPACE, "svc-http-certs-internal")]
    assert stored["metadata"]["uid"] == uid  # the same object, updated in place
    assert stored["metadata"]["resourceVersion"] != version
    assert stored["metadata"]["annotations"] == {
        "reloader.stakater.com/match": "true",
        "certctl.io/owner": INSTALLATION,
    }
    assert stored["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "certctl",
        "certctl.io/service": "svc",
        "team": "payments",
    }

    apiserver.clear()
    again = writer.write_tls(
        "svc-http-certs-internal",
        certificate_pem=crt2,
        private_key_pem=key2,
        ca_pem=ca,
        client_trust_pem=ca,
        labels={"certctl.io/service": "svc"},
    )
    assert again is WriteResult.UNCHANGED
    assert apiserver.paths() == [("GET", f"{BASE}/svc-http-certs-internal")]

    # Client authentication switched off: the trust key goes away.
    assert (
        writer.write_tls(
            "svc-http-certs-internal", certificate_pem=crt2, private_key_pem=key2, ca_pem=ca
        )
        is WriteResult.UPDATED
    )
    assert set(apiserver.secrets[(NAMESPACE, "svc-http-certs-internal")]["data"]) == {
        "ca.crt",
        "tls.crt",
        "tls.key",
    }


def test_concurrent_change_is_retried_on_the_fresh_object(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    crt, key = pki.leaf("a.example.internal")
    apiserver.put_secret(
        NAMESPACE,
        "a-tls",
        type="kubernetes.io/tls",
        metadata={"labels": {"app.kubernetes.io/managed-by": "certctl"}},
        data={"tls.crt": b64(b"old"), "tls.key": b64(b"old"), "ca.crt": b64(b"old")},
    )

    def someone_else_writes() -> None:
        obj = apiserver.secrets[(NAMESPACE, "a-tls")]
        obj["metadata"]["resourceVersion"] = apiserver.next_version()
        obj["metadata"]["labels"] = {**obj["metadata"]["labels"], "touched": "yes"}

    apiserver.before_put.append(someone_else_writes)
    result = SecretWriter(connection, owner=INSTALLATION).write_tls(
        "a-tls", certificate_pem=crt, private_key_pem=key, ca_pem=b"ca"
    )
    assert result is WriteResult.UPDATED
    assert apiserver.paths() == [
        ("GET", f"{BASE}/a-tls"),
        ("PUT", f"{BASE}/a-tls"),  # 409 Conflict
        ("GET", f"{BASE}/a-tls"),
        ("PUT", f"{BASE}/a-tls"),
    ]
    stored = apiserver.secrets[(NAMESPACE, "a-tls")]
    assert stored["metadata"]["labels"]["touched"] == "yes"  # the other writer's change kept
    assert stored["data"]["tls.crt"] == b64(crt)


def test_a_secret_certctl_does_not_manage_is_left_alone_until_labelled(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    # cert-manager's Secret for an ingress: same type, same name, other keys.
    theirs = {"tls.crt": b64(b"theirs"), "tls.key": b64(b"theirs"), "keystore.p12": b64(b"p")}
    apiserver.put_secret(
        NAMESPACE,
        "web-tls",
        type="kubernetes.io/tls",
        metadata={"annotations": {"cert-manager.io/certificate-name": "web"}},
        data=dict(theirs),
    )
    crt, key = pki.leaf("web.example.internal")
    writer = SecretWriter(connection, owner=INSTALLATION)
    # Labelling it alone, as this said before, left cert-manager re-issuing into it (its
    # names, key and issuer annotations no longer matched the Certificate): a tug of war.
    with pytest.raises(Conflict) as info:
        writer.write_tls("web-tls", certificate_pem=crt, private_key_pem=key, ca_pem=b"ca")
    assert info.value.detail == (
        f"Secret {NAMESPACE}/web-tls exists and is not managed by certctl; cert-manager's "
        "Certificate web writes it: delete that Certificate (or give it another secretName), "
        "then delete the Secret or label it app.kubernetes.io/managed-by=certctl, or "
        "cert-manager re-issues into it"
    )
    assert [m for m, _ in apiserver.paths()] == ["GET"]
    assert apiserver.secrets[(NAMESPACE, "web-tls")]["data"] == theirs
    # Negative twin: a Secret made by hand (kubectl create secret tls) names no owner.
    apiserver.put_secret(NAMESPACE, "hand-tls", type="kubernetes.io/tls", data=dict(theirs))
    with pytest.raises(Conflict) as info:
        writer.write_tls("hand-tls", certificate_pem=crt, private_key_pem=key, ca_pem=b"ca")
    assert info.value.detail.endswith(
        "not managed by certctl; delete it, or label it app.kubernetes.io/managed-by=certctl "
        "to let certctl take it over"
    )
    # Labelled by someone allowed to: taken over.
    apiserver.secrets[(NAMESPACE, "web-tls")]["metadata"]["labels"] = {
        "app.kubernetes.io/managed-by": "certctl"
    }
    result = writer.write_tls("web-tls", certificate_pem=crt, private_key_pem=key, ca_pem=b"ca")
    assert result is WriteResult.UPDATED
    assert apiserver.secrets[(NAMESPACE, "web-tls")]["data"]["tls.crt"] == b64(crt)


def test_a_secret_deleted_between_read_and_write_is_created(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    apiserver.put_secret(
        NAMESPACE,
        "gone-tls",
        type="kubernetes.io/tls",
        metadata={"labels": {"app.kubernetes.io/managed-by": "certctl"}},
        data={"tls.crt": b64(b"old"), "tls.key": b64(b"old")},
    )
    apiserver.before_put.append(lambda: apiserver.secrets.pop((NAMESPACE, "gone-tls")))
    crt, key = pki.leaf("gone.example.internal")
    result = SecretWriter(connection, owner=INSTALLATION).write_tls(
        "gone-tls", certificate_pem=crt, private_key_pem=key, ca_pem=b"ca"
    )
    assert result is WriteResult.CREATED
    assert [m for m, _ in apiserver.paths()] == ["GET", "PUT", "GET", "POST"]
    assert apiserver.secrets[(NAMESPACE, "gone-tls")]["data"]["tls.crt"] == b64(crt)


def test_a_managed_by_label_from_the_spec_does_not_lock_certctl_out(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    """A target label app.kubernetes.io/managed-by (a spec stored before it was refused).

    Before, it replaced certctl's own marker on the created Secret, so every later write
    failed with "exists and is not managed by certctl" on a Secret certctl had made.
    """
    writer = SecretWriter(connection, owner=INSTALLATION)
    labels = {"app.kubernetes.io/managed-by": "argocd", "app": "web"}
    crt, key = pki.leaf("web.example.internal")
    tls = {"certificate_pem": crt, "private_key_pem": key, "ca_pem": b""}
    assert writer.write_tls("web-tls", labels=labels, **tls) is WriteResult.CREATED
    stored = apiserver.secrets[(NAMESPACE, "web-tls")]
    assert stored["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "certctl",
        "app": "web",
    }
    crt2, key2 = pki.leaf("web.example.internal")
    renewed = {"certificate_pem": crt2, "private_key_pem": key2, "ca_pem": b""}
    assert writer.write_tls("web-tls", labels=labels, **renewed) is WriteResult.UPDATED
    assert writer.write_tls("web-tls", labels=labels, **renewed) is WriteResult.UNCHANGED


def test_secret_of_another_type_is_not_touched(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    apiserver.put_secret(NAMESPACE, "db-password", data={"password": b64(b"hunter2")})
    crt, key = pki.leaf("db.example.internal")
    with pytest.raises(Conflict, match=r"has type Opaque, not kubernetes\.io/tls"):
        SecretWriter(connection, owner=INSTALLATION).write_tls(
            "db-password", certificate_pem=crt, private_key_pem=key, ca_pem=b""
        )
    assert [m for m, _ in apiserver.paths()] == ["GET"]
    assert apiserver.secrets[(NAMESPACE, "db-password")]["data"] == {"password": b64(b"hunter2")}


def test_api_refusals_and_outages_are_kube_api_errors(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    crt, key = pki.leaf("x.example.internal")
    apiserver.accepted_tokens.clear()  # certctl's ServiceAccount token is no longer valid
    with pytest.raises(KubeApiError, match="answered 401 Unauthorized") as info:
        SecretWriter(connection, owner=INSTALLATION).write_tls(
            "x", certificate_pem=crt, private_key_pem=key, ca_pem=b""
        )
    assert (info.value.status_code, info.value.status) == (401, 503)
    apiserver.accepted_tokens.add("certctl-serviceaccount-token")
    apiserver.fail_status = 500
    with pytest.raises(KubeApiError, match="answered 500 InternalError"):
        SecretWriter(connection, owner=INSTALLATION).write_tls(
            "x", certificate_pem=crt, private_key_pem=key, ca_pem=b""
        )
    apiserver.stop()
    with pytest.raises(KubeApiError, match=r"cannot reach the Kubernetes API \(ConnectError: "):
        SecretWriter(connection, owner=INSTALLATION).write_tls(
            "x", certificate_pem=crt, private_key_pem=key, ca_pem=b""
        )


@pytest.mark.parametrize(
    ("name", "data", "labels", "message"),
    [
        ("Bad_Name", {"a": b"1"}, None, "must be a DNS-1123 subdomain"),
        ("-x", {"a": b"1"}, None, "must be a DNS-1123 subdomain"),
        ("x" * 254, {"a": b"1"}, None, "must be a DNS-1123 subdomain"),
        ("ok", {"a/b": b"1"}, None, "a Secret key may hold only"),
        ("ok", {"a": b"1"}, {"k": "v" * 64}, "keys and values must be strings"),
    ],
)
def test_bad_input_is_refused_before_any_call(
    apiserver: FakeApiServer,
    connection: KubeConnection,
    name: str,
    data: dict[str, bytes],
    labels: dict[str, str] | None,
    message: str,
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        SecretWriter(connection, owner=INSTALLATION).write(name, data, labels=labels)
    with pytest.raises(InvalidRequest, match="must not be empty"):
        SecretWriter(connection, owner=INSTALLATION).write_tls(
            "ok", certificate_pem=b"", private_key_pem=b"k", ca_pem=b""
        )
    assert apiserver.requests == []


def test_other_namespace(apiserver: FakeApiServer, connection: KubeConnection) -> None:
    writer = SecretWriter(connection, namespace="payments", owner=INSTALLATION)
    assert writer.write("trust", {"ca.crt": b"pem"}) is WriteResult.CREATED
    assert apiserver.paths()[-1] == ("POST", "/api/v1/namespaces/payments/secrets")
    assert ("payments", "trust") in apiserver.secrets


OWNER = "certctl.io/owner"


def test_a_secret_claimed_by_another_installation_is_refused_never_overwritten(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    """Two certctl installations delivering into one namespace, one Secret name.

    Before, the label managed-by=certctl was the only mark: release B's service took over
    release A's Secret (B's key served A's pods) and the two swapped it at every reconcile.
    """
    ours = SecretWriter(connection, owner=INSTALLATION)
    theirs = SecretWriter(connection, owner=OTHER_INSTALLATION)
    crt, key = pki.leaf("web.example.internal")
    assert ours.write_tls("web-tls", certificate_pem=crt, private_key_pem=key, ca_pem=b"ca") is (
        WriteResult.CREATED
    )
    stored = apiserver.secrets[(NAMESPACE, "web-tls")]
    assert stored["metadata"]["annotations"] == {OWNER: INSTALLATION}
    data = dict(stored["data"])

    apiserver.clear()
    crt2, key2 = pki.leaf("web.example.internal")
    with pytest.raises(Conflict) as info:
        theirs.write_tls("web-tls", certificate_pem=crt2, private_key_pem=key2, ca_pem=b"ca")
    # This installation's own id is named (before, only its start-up log had it): whoever
    # reads the status can compare it with the annotation, and tell which release it is.
    assert info.value.detail == (
        f"Secret {NAMESPACE}/web-tls belongs to another certctl installation (its annotation "
        f"{OWNER} is not this installation's id, {OTHER_INSTALLATION}); not overwritten: "
        "choose another Secret name, or, if that installation no longer delivers there, "
        f"remove the annotation (kubectl annotate secret -n {NAMESPACE} web-tls {OWNER}-) to "
        "let this one take it over"
    )
    assert INSTALLATION not in info.value.detail  # the other one's id is not handed out
    assert [m for m, _ in apiserver.paths()] == ["GET"]
    assert apiserver.secrets[(NAMESPACE, "web-tls")]["data"] == data
    # Negative twin: the owner itself keeps writing it.
    assert ours.write_tls("web-tls", certificate_pem=crt2, private_key_pem=key2, ca_pem=b"ca") is (
        WriteResult.UPDATED
    )
    assert apiserver.secrets[(NAMESPACE, "web-tls")]["metadata"]["annotations"] == {
        OWNER: INSTALLATION
    }
    # Another writer's plain data write (publish_ca's write) is refused the same way.
    with pytest.raises(Conflict, match="belongs to another certctl installation"):
        theirs.write("web-tls", {"tls.crt": b"x", "tls.key": b"y"}, secret_type=TLS)


TLS = "kubernetes.io/tls"


def test_a_secret_of_an_older_certctl_is_adopted_by_the_first_installation_writing_it(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    """Labelled managed-by=certctl, no owner: written before certctl recorded one."""
    apiserver.put_secret(
        NAMESPACE,
        "old-tls",
        type=TLS,
        metadata={
            "labels": {"app.kubernetes.io/managed-by": "certctl"},
            "annotations": {"reloader.stakater.com/match": "true"},
        },
        data={"tls.crt": b64(b"old"), "tls.key": b64(b"old")},
    )
    crt, key = pki.leaf("old.example.internal")
    ours = SecretWriter(connection, owner=INSTALLATION)
    assert ours.write_tls("old-tls", certificate_pem=crt, private_key_pem=key, ca_pem=b"") is (
        WriteResult.UPDATED
    )
    stored = apiserver.secrets[(NAMESPACE, "old-tls")]
    assert stored["metadata"]["annotations"] == {
        "reloader.stakater.com/match": "true",
        OWNER: INSTALLATION,
    }
    # The same data already there: the claim alone is written, once.
    apiserver.put_secret(
        NAMESPACE,
        "same-tls",
        type=TLS,
        metadata={"labels": {"app.kubernetes.io/managed-by": "certctl"}},
        data={"tls.crt": b64(crt), "tls.key": b64(key)},
    )
    apiserver.clear()
    tls = {"certificate_pem": crt, "private_key_pem": key, "ca_pem": b""}
    assert ours.write_tls("same-tls", **tls) is WriteResult.UPDATED
    assert ours.write_tls("same-tls", **tls) is WriteResult.UNCHANGED
    assert [m for m, _ in apiserver.paths()] == ["GET", "PUT", "GET"]
    with pytest.raises(Conflict, match="belongs to another certctl installation"):
        SecretWriter(connection, owner=OTHER_INSTALLATION).write_tls("same-tls", **tls)


def test_two_installations_racing_for_an_unclaimed_secret_cannot_both_win(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    """The claim goes with the read's resourceVersion: the loser's PUT is a 409, re-read."""
    apiserver.put_secret(
        NAMESPACE,
        "race-tls",
        type=TLS,
        metadata={"labels": {"app.kubernetes.io/managed-by": "certctl"}},
        data={"tls.crt": b64(b"old"), "tls.key": b64(b"old")},
    )
    theirs = {"tls.crt": b64(b"theirs"), "tls.key": b64(b"theirs")}

    def the_other_installation_claims_it() -> None:
        # What the other installation's PUT, from the same read, did just before ours.
        obj = apiserver.secrets[(NAMESPACE, "race-tls")]
        obj["metadata"]["resourceVersion"] = apiserver.next_version()
        obj["metadata"]["annotations"] = {OWNER: OTHER_INSTALLATION}
        obj["data"] = dict(theirs)

    apiserver.before_put.append(the_other_installation_claims_it)
    crt, key = pki.leaf("race.example.internal")
    with pytest.raises(Conflict, match="belongs to another certctl installation"):
        SecretWriter(connection, owner=INSTALLATION).write_tls(
            "race-tls", certificate_pem=crt, private_key_pem=key, ca_pem=b""
        )
    assert [m for m, _ in apiserver.paths()] == ["GET", "PUT", "GET"]  # 409, then refused
    stored = apiserver.secrets[(NAMESPACE, "race-tls")]
    assert stored["data"] == theirs
    assert stored["metadata"]["annotations"] == {OWNER: OTHER_INSTALLATION}

    # Created by the other one between our read (404) and our create: refused the same way.
    def the_other_installation_creates_it() -> None:
        apiserver.put_secret(
            NAMESPACE,
            "new-tls",
            type=TLS,
            metadata={
                "labels": {"app.kubernetes.io/managed-by": "certctl"},
                "annotations": {OWNER: OTHER_INSTALLATION},
            },
            data=dict(theirs),
        )

    apiserver.clear()
    apiserver.before_post.append(the_other_installation_creates_it)
    with pytest.raises(Conflict, match="belongs to another certctl installation"):
        SecretWriter(connection, owner=INSTALLATION).write_tls(
            "new-tls", certificate_pem=crt, private_key_pem=key, ca_pem=b""
        )
    assert [m for m, _ in apiserver.paths()] == ["GET", "POST", "GET"]  # AlreadyExists
    assert apiserver.secrets[(NAMESPACE, "new-tls")]["data"] == theirs


def test_a_service_whose_secret_another_installation_owns_says_so_in_its_status(
    apiserver: FakeApiServer, sa_dir: Path, env: Env
) -> None:
    """Through the server's hook: the installation id comes from the store, the refusal
    reaches the service's Failed condition, and the Secret keeps the other one's key."""
    from certctl.server.kubernetes import secret_target_writer
    from certctl.services import service_reconcile
    from certctl.store.db import installation_id
    from tests.services.conftest import service_doc

    ours = installation_id(env.services.engine)
    assert ours not in (INSTALLATION, OTHER_INSTALLATION)
    settings = env.settings_with(
        secret_writer=secret_target_writer(_server_config(apiserver, sa_dir), ours)
    )
    theirs = {"tls.crt": b64(b"theirs"), "tls.key": b64(b"theirs")}
    apiserver.put_secret(
        "apps",
        "web-tls",
        type=TLS,
        metadata={
            "labels": {"app.kubernetes.io/managed-by": "certctl"},
            "annotations": {OWNER: OTHER_INSTALLATION},
        },
        data=dict(theirs),
    )
    env.put(service_doc("web", targets=[{"secret": "web-tls", "namespace": "apps"}]))
    row = service_reconcile.reconcile_service(env.services, settings, "web", env.now)
    assert row.conditions["Ready"]["status"] is False, row.conditions
    assert (
        "secret:apps/web-tls: Secret apps/web-tls belongs to another certctl installation"
        in (row.conditions["Failed"]["message"])
    )
    assert OTHER_INSTALLATION not in str(row.conditions)
    assert f"this installation's id, {ours})" in row.conditions["Failed"]["message"]
    assert apiserver.secrets[("apps", "web-tls")]["data"] == theirs
    # Its own Secret, in the same pass of another service: claimed with the store's id.
    env.put(service_doc("api", targets=[{"secret": "api-tls", "namespace": "apps"}]))
    service_reconcile.reconcile_service(env.services, settings, "api", env.now)
    assert apiserver.secrets[("apps", "api-tls")]["metadata"]["annotations"] == {OWNER: ours}


def _server_config(apiserver: FakeApiServer, sa_dir: Path) -> ServerConfig:
    """A server configuration whose Kubernetes connection is the fake API server."""
    return ServerConfig.model_validate(
        {
            "kubernetes": {
                "api-server": apiserver.url,
                "ca-file": str(sa_dir / "ca.crt"),
                "token-file": str(sa_dir / "token"),
                "namespace": NAMESPACE,
            }
        }
    )


def test_managed_service_secret_target(
    apiserver: FakeApiServer, sa_dir: Path, pki: KubePki
) -> None:
    """The server's hook for TLSService Secret targets writes through SecretWriter."""
    from certctl.server.kubernetes import secret_target_writer
    from certctl.services.tls_spec import SecretTarget
    from certctl.targets.directory import DeliveryError

    config = _server_config(apiserver, sa_dir)
    write = secret_target_writer(config, INSTALLATION)
    target = SecretTarget(secret="quickstart-tls", namespace="apps", labels={"app": "quickstart"})
    crt, key = pki.leaf("quickstart.example.internal")
    files = {"tls.crt": crt, "tls.key": key, "ca.crt": b"ca", "client-trust.crt": b"trust"}
    write(target, files)
    secret = apiserver.secrets[("apps", "quickstart-tls")]
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt", "client-trust.crt"}
    assert secret["metadata"]["labels"]["app"] == "quickstart"
    # A target naming no namespace goes to kubernetes.namespace, as docs/configuration.md
    # says, not to "default".
    write(SecretTarget(secret="unqualified-tls"), files)
    assert (NAMESPACE, "unqualified-tls") in apiserver.secrets
    assert not any(ns == "default" for ns, _ in apiserver.secrets)
    apiserver.fail_status = 500
    with pytest.raises(DeliveryError, match="answered 500"):
        write(target, files)
    with pytest.raises(DeliveryError, match="no certificate to deliver"):
        write(target, {})


def test_a_secret_target_deleted_or_edited_by_hand_is_restored_at_the_next_resync(
    apiserver: FakeApiServer, sa_dir: Path, env: Env
) -> None:
    """Secret targets resync like directories: a lost or edited Secret comes back, soon.

    Before, a bundle delivered once was never looked at again until the next renewal (months
    later): a Secret deleted by ``kubectl delete`` stayed gone and pods could not start.
    """
    from certctl.server.kubernetes import secret_target_writer
    from certctl.server.scheduler import Scheduler
    from certctl.services import service_schedule
    from tests.services.conftest import service_doc

    config = _server_config(apiserver, sa_dir)
    settings = env.settings_with(secret_writer=secret_target_writer(config, INSTALLATION))
    target = {"secret": "web-tls", "namespace": "apps", "labels": {"app": "web"}}
    env.put(service_doc("web", dns=("web.example.internal",), targets=[target]))
    scheduler = Scheduler(env.services, settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 1
    where = ("apps", "web-tls")
    url = "/api/v1/namespaces/apps/secrets"
    data = dict(apiserver.secrets[where]["data"])
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"}
    assert env.outputs("web")["certs-internal"]["tls.crt"] == base64.b64decode(data["tls.crt"])

    # Deleted by hand: created again at the next resync, not at the next renewal.
    del apiserver.secrets[where]
    env.at(env.now + timedelta(minutes=1))
    assert scheduler.tick() == 0  # negative twin: not due before the resync interval
    assert where not in apiserver.secrets
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    assert scheduler.tick() == 1
    assert apiserver.secrets[where]["data"] == data
    assert apiserver.secrets[where]["metadata"]["labels"]["app"] == "web"

    # Edited by hand (a key swapped in): the delivered bundle is put back.
    apiserver.secrets[where]["data"]["tls.key"] = b64(b"not the key\n")
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    assert scheduler.tick() == 1
    assert apiserver.secrets[where]["data"] == data

    # Nothing changed: a resync reads the Secret and writes nothing.
    apiserver.clear()
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    assert scheduler.tick() == 1
    assert apiserver.paths() == [("GET", f"{url}/web-tls")]

    # A changed label in the spec is applied now, not at the next renewal.
    relabelled = {**target, "labels": {"app": "web", "team": "payments"}}
    env.put(service_doc("web", dns=("web.example.internal",), targets=[relabelled]))
    env.at(env.now + timedelta(minutes=1))
    assert scheduler.tick() == 1
    assert apiserver.secrets[where]["metadata"]["labels"]["team"] == "payments"
    assert apiserver.secrets[where]["data"] == data  # the same certificate: not renewed
    assert env.row("web").conditions["Ready"]["status"] is True


def test_tls_disabled_leaves_the_secret_and_the_service_ready(
    apiserver: FakeApiServer, sa_dir: Path, env: Env
) -> None:
    """Disabling TLS is a choice, not a failure: the Secret stays, the status says so.

    Before, each pass failed with "no certificate to deliver (TLS disabled); Secret left as
    it is": Ready false (the alert), a failed event, retried with back-off for good.
    """
    from certctl.server.kubernetes import secret_target_writer
    from certctl.services import service_reconcile
    from tests.services.conftest import service_doc

    settings = env.settings_with(
        secret_writer=secret_target_writer(_server_config(apiserver, sa_dir), INSTALLATION)
    )
    target = {"secret": "web-tls", "namespace": "apps"}
    where = ("apps", "web-tls")
    env.put(service_doc("web", targets=[target]))
    service_reconcile.reconcile_service(env.services, settings, "web", env.now)
    data = dict(apiserver.secrets[where]["data"])

    env.put(service_doc("web", disabled=True, targets=[target]))
    apiserver.clear()
    row = service_reconcile.reconcile_service(
        env.services, settings, "web", env.at(env.now + MINUTE)
    )
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert row.conditions["Failed"]["status"] is False, row.conditions
    assert row.conditions["Ready"]["message"] == (
        "TLS disabled: plain HTTP; secret:apps/web-tls: TLS disabled; the Secret keeps the last "
        "certificate delivered (delete it when no pod mounts it)"
    )
    assert row.delivered == {}  # no longer kept current
    assert apiserver.paths() == []
    assert apiserver.secrets[where]["data"] == data
    assert [e.event for e in env.events("web")] == ["issued"]
    assert row.next_attempt_at is None  # not retried

    # Enabled again: a new certificate reaches the Secret.
    env.put(service_doc("web", targets=[target]))
    row = service_reconcile.reconcile_service(
        env.services, settings, "web", env.at(env.now + MINUTE)
    )
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert "TLS disabled" not in row.conditions["Ready"]["message"]
    assert apiserver.secrets[where]["data"]["tls.crt"] != data["tls.crt"]


def test_a_custom_certificate_without_ca_crt_reaches_the_secret_without_ca_crt(
    apiserver: FakeApiServer, sa_dir: Path, env: Env
) -> None:
    """A custom tls.crt whose CA is not given: the Secret gets no ``ca.crt`` key.

    Before, it got an empty one, which a pod mounting it read as a CA file and refused
    (Elasticsearch: "failed to initialize SSL TrustManager"; nginx: no certificate in it).
    """
    from certctl.server.kubernetes import secret_target_writer
    from certctl.services import service_reconcile
    from tests.services.conftest import make_ca, make_leaf, service_doc, write_secret

    settings = env.settings_with(
        secret_writer=secret_target_writer(_server_config(apiserver, sa_dir), INSTALLATION)
    )
    leaf = make_leaf(make_ca("public-ca", env.now), "web", env.now, dns=("web",))
    write_secret(env.secrets_dir, "custom", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem})
    env.put(service_doc("web", secret="custom", targets=[{"secret": "web-tls"}]))
    row = service_reconcile.reconcile_service(env.services, settings, "web", env.now)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    data = apiserver.secrets[(NAMESPACE, "web-tls")]["data"]
    assert set(data) == {"tls.crt", "tls.key"}
    assert base64.b64decode(data["tls.crt"]) == leaf.cert_pem
