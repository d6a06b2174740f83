"""The chart's RBAC against what certctl really calls: the fake API server enforces the Roles
and ClusterRoles the chart binds to certctl's ServiceAccount, and certctl's own code paths
(CA Secret, admin key Secret, Secret targets, TokenReview + SubjectAccessReview) run under them.

A verb the code starts using, or one the chart stops granting, fails here with the API
server's 403 instead of in a cluster.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from certctl.auth.kubernetes import TokenReviewAuthenticator
from certctl.kubeapi import KubeApiError, KubeConnection
from certctl.server.config import ServerConfig
from certctl.services.tls_spec import SecretTarget
from certctl.targets.directory import DeliveryError
from tests.e2e.conftest import launch
from tests.helm.conftest import CHART, RELEASE
from tests.kube.conftest import INSTALLATION, NAMESPACE, KubePki
from tests.kube.fake_apiserver import FakeApiServer, KubeUser

SERVICE_ACCOUNT = {"kind": "ServiceAccount", "name": "certctl", "namespace": NAMESPACE}
VALUES: dict[str, Any] = {
    "secretTargets": {"namespaces": ["apps"]},
    "auth": {"kubernetes": {"enabled": True}},
}


def chart_rbac(values: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(namespace or None, rule) for every rule the rendered chart binds to certctl."""
    import helm_python  # a dev dependency (uv sync): missing, the test fails, never skips

    files = helm_python.Chart.load(str(CHART)).render(
        values, name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    docs = [
        d
        for path, text in files.items()
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d["rules"]
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    granted: list[tuple[str | None, dict[str, Any]]] = []
    for d in docs:
        if d["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if SERVICE_ACCOUNT not in d["subjects"]:
            continue
        ref = d["roleRef"]
        where = d["metadata"].get("namespace") if d["kind"] == "RoleBinding" else None
        role_ns = where if ref["kind"] == "Role" else None
        granted += [(where, rule) for rule in roles[(ref["kind"], role_ns, ref["name"])]]
    return granted


def _config(apiserver: FakeApiServer, sa_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "kubernetes": {
            "api-server": apiserver.url,
            "ca-file": str(sa_dir / "ca.crt"),
            "token-file": str(sa_dir / "token"),
            "namespace": NAMESPACE,
        },
        **extra,
    }


def test_rbac_rules_are_read_from_the_chart() -> None:
    rules = chart_rbac(VALUES)
    review = {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"]}
    assert (None, {**review, "verbs": ["create"]}) in rules
    assert {ns for ns, _ in rules} == {None, NAMESPACE, "apps"}
    # Nothing bound to certctl reads Secrets in a namespace the values do not name.
    assert not [r for ns, r in rules if ns is None and "secrets" in r.get("resources", ())]


def test_ca_and_secret_targets_work_under_the_charts_rbac(
    apiserver: FakeApiServer, sa_dir: Path, tmp_path: Path, pki: KubePki
) -> None:
    from certctl.server.kubernetes import kubernetes_features, secret_target_writer

    apiserver.rbac = chart_rbac(VALUES)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(b"first CA\n")
    config = ServerConfig.model_validate(
        _config(apiserver, sa_dir, tls={"publish-ca-secret": "certctl-ca"})
    )
    _, publish = kubernetes_features(config, ca_file, INSTALLATION)
    assert publish is not None
    publish()  # GET (404), POST
    ca_file.write_bytes(b"renewed CA\n")
    publish()  # GET, PUT
    stored = apiserver.secrets[(NAMESPACE, "certctl-ca")]["data"]["ca.crt"]
    assert base64.b64decode(stored) == b"renewed CA\n"

    write = secret_target_writer(config, INSTALLATION)
    target = SecretTarget(secret="web-tls", namespace="apps")
    crt, key = pki.leaf("web.example.internal")
    files = {"tls.crt": crt, "tls.key": key, "ca.crt": b"ca"}
    assert write(target, files) is True  # created
    crt2, key2 = pki.leaf("web.example.internal")
    renewed = {"tls.crt": crt2, "tls.key": key2, "ca.crt": b"ca"}
    # A writer that got there first (409), then one that deleted it (404): both retried.
    apiserver.before_put.append(
        lambda: apiserver.secrets[("apps", "web-tls")]["metadata"].update(resourceVersion="1")
    )
    assert write(target, renewed) is True
    apiserver.before_put.append(lambda: apiserver.secrets.pop(("apps", "web-tls")))
    assert write(target, files) is True
    assert ("apps", "web-tls") in apiserver.secrets

    # A namespace the values do not list, and the release namespace (not listed either).
    for namespace in ("payments", None):
        with pytest.raises(DeliveryError, match='403 Forbidden: secrets "web-tls" is forbidden'):
            write(SecretTarget(secret="web-tls", namespace=namespace), files)


def test_a_custom_certificate_secret_is_readable_once_its_namespace_is_listed(
    apiserver: FakeApiServer, sa_dir: Path, pki: KubePki
) -> None:
    # docs/kubernetes.md: certificate.secretName reads a Secret of the release namespace
    # when secretTargets.namespaces lists it; without, the chart grants no get there.
    from certctl.errors import InvalidRequest
    from certctl.server.kubernetes import CustomSecrets

    crt, key = pki.leaf("web.example.internal")
    apiserver.put_secret(
        NAMESPACE,
        "own",
        type="kubernetes.io/tls",
        metadata={"labels": {"certctl.io/custom-certificate": "true"}},
        data={"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(key).decode()},
    )
    read = CustomSecrets(ServerConfig.model_validate(_config(apiserver, sa_dir))).read
    apiserver.rbac = chart_rbac(VALUES)
    with pytest.raises(InvalidRequest, match='403 Forbidden: secrets "own" is forbidden'):
        read("own")
    apiserver.rbac = chart_rbac({**VALUES, "secretTargets": {"namespaces": ["apps", NAMESPACE]}})
    assert read("own") == {"tls.crt": crt, "tls.key": key}

    # A scheduler pass lists them, one request for all: the chart grants list there.
    secrets = CustomSecrets(ServerConfig.model_validate(_config(apiserver, sa_dir)))
    apiserver.clear()
    assert secrets.for_pass()("own") == {"tls.crt": crt, "tls.key": key}
    assert [(r.method, r.path.partition("?")[0]) for r in apiserver.requests] == [
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets")
    ]
    # A Role of before (or one's own) granting get alone: read one by one, as then.
    apiserver.rbac = [
        (ns, {**rule, "verbs": [v for v in rule.get("verbs", ()) if v != "list"]})
        for ns, rule in chart_rbac({**VALUES, "secretTargets": {"namespaces": [NAMESPACE]}})
    ]
    apiserver.clear()
    assert secrets.for_pass()("own") == {"tls.crt": crt, "tls.key": key}
    assert [(r.method, r.path.partition("?")[0]) for r in apiserver.requests] == [
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets"),  # 403
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/own"),
    ]


def test_a_role_without_update_is_caught(
    apiserver: FakeApiServer, pki: KubePki, connection: KubeConnection
) -> None:
    """Negative twin: the fake refuses what the rules do not grant, as the API server does."""
    from certctl.targets.kubernetes import SecretWriter

    apiserver.rbac = [
        (ns, {**rule, "verbs": [v for v in rule.get("verbs", ()) if v != "update"]})
        for ns, rule in chart_rbac(VALUES)
    ]
    writer = SecretWriter(connection, namespace="apps", owner=INSTALLATION)
    crt, key = pki.leaf("web.example.internal")
    writer.write_tls("web-tls", certificate_pem=crt, private_key_pem=key, ca_pem=b"")
    crt2, key2 = pki.leaf("web.example.internal")
    with pytest.raises(KubeApiError, match='cannot update resource "secrets"') as info:
        writer.write_tls("web-tls", certificate_pem=crt2, private_key_pem=key2, ca_pem=b"")
    assert info.value.status_code == 403


def test_token_review_works_under_the_charts_rbac(
    apiserver: FakeApiServer, connection: KubeConnection
) -> None:
    user = KubeUser(
        "system:serviceaccount:monitoring:prometheus-k8s", groups=["system:serviceaccounts"]
    )
    apiserver.users["prom-token"] = user
    apiserver.allowed.add((user.username, "/api/v1/metrics/prometheus", "get"))
    apiserver.rbac = chart_rbac(VALUES)
    authenticator = TokenReviewAuthenticator(connection)
    identity = asyncio.run(authenticator.authorize("prom-token", "/api/v1/metrics/prometheus"))
    assert identity.username == user.username
    # Without auth.kubernetes the chart grants no reviews: the server answers 503.
    apiserver.rbac = chart_rbac({})
    with pytest.raises(KubeApiError, match='cannot create resource "tokenreviews"'):
        asyncio.run(
            TokenReviewAuthenticator(connection).authorize(
                "prom-token", "/api/v1/metrics/prometheus"
            )
        )


def test_first_start_writes_the_admin_key_under_the_charts_rbac(
    apiserver: FakeApiServer, sa_dir: Path, tmp_path: Path
) -> None:
    apiserver.rbac = chart_rbac({})
    settings = _config(apiserver, sa_dir, auth={"admin-key-secret": "certctl-admin-key"})
    with launch(tmp_path / "a", config=settings) as server:
        secret = apiserver.secrets[(NAMESPACE, "certctl-admin-key")]
        assert base64.b64decode(secret["data"]["api-key"]).decode() == server.admin_key


def test_a_keystore_password_is_readable_where_secret_targets_are(
    apiserver: FakeApiServer, sa_dir: Path
) -> None:
    # docs/kubernetes.md: keystores.pkcs12.passwordSecretRef is read (get) in the target's
    # namespace under the secretTargets Role; nowhere else.
    from certctl.server.kubernetes import keystore_password_reader

    apiserver.rbac = chart_rbac(VALUES)
    read = keystore_password_reader(ServerConfig.model_validate(_config(apiserver, sa_dir)))
    for namespace in ("apps", "payments"):
        apiserver.put_secret(
            namespace,
            "es-keystore-password",
            metadata={"labels": {"certctl.io/keystore-password": "true"}},
            data={"password": base64.b64encode(b"changeit").decode()},
        )
    assert read("apps", "es-keystore-password", "password") == b"changeit"
    with pytest.raises(DeliveryError, match="403 Forbidden"):
        read("payments", "es-keystore-password", "password")
