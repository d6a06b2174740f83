"""deploy/helm/certctl rendered by Helm: objects, runbook values, tlsConfig patterns, schemas."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from certctl.server.config import ServerConfig, split_host_port
from tests.helm.conftest import CHART, KUBERNETES_VERSION, NAMESPACE, Rendered

RUNBOOK: dict[str, Any] = {
    "monitoring": {
        "enabled": True,
        "serviceMonitor": {
            "enabled": True,
            "interval": "30s",
            "scrapeTimeout": "10s",
            "bearerTokenSecret": {"name": "certctl-prometheus-key", "key": "api-key"},
        },
    }
}
CA_FILE = "/etc/prometheus/secrets/certctl-ca/ca.crt"
# The runbook's three tlsConfig patterns → the tlsConfig the chart renders.
TLS_PATTERNS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "caFile": ({"caFile": CA_FILE}, {"caFile": CA_FILE, "serverName": "certctl-server"}),
    "ca.secret": (
        {"ca": {"secret": {"name": "certctl-ca", "key": "ca.crt"}}},
        {"ca": {"secret": {"name": "certctl-ca", "key": "ca.crt"}}, "serverName": "certctl-server"},
    ),
    "insecureSkipVerify": ({"insecureSkipVerify": True}, {"insecureSkipVerify": True}),
}
SELECTOR = {
    "app.kubernetes.io/name": "certctl",
    "app.kubernetes.io/instance": "certctl",
    "app.kubernetes.io/component": "server",
}
POSTGRES: dict[str, Any] = {
    "replicaCount": 3,
    "database": {"url": "postgresql+psycopg://certctl:pw@db.example.internal/certctl"},
}
KUBE_AUTH: dict[str, Any] = {
    "auth": {
        "kubernetes": {
            "enabled": True,
            "metricsReaders": [
                {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}
            ],
        }
    }
}
EXISTING_TLS: dict[str, Any] = {"server": {"tls": {"existingSecret": "certctl-tls"}}}
REQUIRED_CLIENT_AUTH = {"client-auth": "required", "client-ca": "/etc/certctl/tls/ca.crt"}


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)

    for part in parts:
        merge(out, part)
    return out


def with_tls(tls_config: dict[str, Any]) -> dict[str, Any]:
    return merged(RUNBOOK, {"monitoring": {"serviceMonitor": {"tlsConfig": tls_config}}})


SECRET_TARGETS: dict[str, Any] = {"secretTargets": {"namespaces": ["apps", "payments"]}}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "runbook": RUNBOOK,
    **{f"tls-{name}": with_tls(given) for name, (given, _) in TLS_PATTERNS.items()},
    "existing-tls-secret": merged(RUNBOOK, EXISTING_TLS),
    "postgres-3-replicas": merged(POSTGRES, RUNBOOK),
    "secret-targets": merged(EXISTING_TLS, SECRET_TARGETS),
    "kubernetes-auth": merged(
        KUBE_AUTH,
        {
            "monitoring": {
                "enabled": True,
                "serviceMonitor": {
                    "enabled": True,
                    "bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
                },
            }
        },
    ),
}


def one(objects: Rendered, kind: str) -> dict[str, Any]:
    found = [obj for (k, _), obj in objects.items() if k == kind]
    assert len(found) == 1, (kind, sorted(objects))
    return found[0]


def container(objects: Rendered) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def server_config(objects: Rendered) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(one(objects, "ConfigMap")["data"]["certctl.yaml"])
    return doc


def endpoint(objects: Rendered) -> dict[str, Any]:
    monitor = objects[("ServiceMonitor", "certctl-server")]
    (ep,) = monitor["spec"]["endpoints"]
    result: dict[str, Any] = ep
    return result


# --- default values -----------------------------------------------------------------------


def test_default_render_objects(render: Callable[..., Rendered]) -> None:
    objects = render()
    assert sorted(objects) == [
        ("ConfigMap", "certctl"),
        ("Deployment", "certctl"),
        ("PersistentVolumeClaim", "certctl-data"),
        ("Role", "certctl-admin-key-writer"),
        ("Role", "certctl-ca-publisher"),
        ("RoleBinding", "certctl-admin-key-writer"),
        ("RoleBinding", "certctl-ca-publisher"),
        ("Secret", "certctl-master-key"),
        ("Service", "certctl-server"),
        ("ServiceAccount", "certctl"),
    ]
    for obj in objects.values():
        assert obj["metadata"]["namespace"] == NAMESPACE


def test_deployment_runs_serve_securely_with_probes(render: Callable[..., Rendered]) -> None:
    objects = render()
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == SELECTOR
    assert SELECTOR.items() <= pod["metadata"]["labels"].items()
    # SQLite on an RWO claim; rollingUpdate: null, see the upgrade test below.
    assert deployment["spec"]["strategy"] == {"type": "Recreate", "rollingUpdate": None}
    c = container(objects)
    assert c["command"] == ["certctl", "serve", "--config", "/etc/certctl/certctl.yaml"]
    assert c["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    assert c["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    pod_sc = pod["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] != 0
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/etc/certctl/certctl.yaml"
    assert mounts["data"]["mountPath"] == "/var/lib/certctl"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"] == {
        "name": "data",
        "persistentVolumeClaim": {"claimName": "certctl-data"},
    }
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
    assert env == {"CERTCTL_MASTER_KEY": {"name": "certctl-master-key", "key": "master-key"}}
    master = objects[("Secret", "certctl-master-key")]
    assert master["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_service_is_certctl_server_on_8443(render: Callable[..., Rendered]) -> None:
    service = render()[("Service", "certctl-server")]
    assert service["spec"]["selector"] == SELECTOR
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 8443, "targetPort": "https", "protocol": "TCP"}
    ]


def test_config_is_accepted_by_certctl(render: Callable[..., Rendered]) -> None:
    doc = server_config(render())
    config = ServerConfig.model_validate(doc)  # the server's own parser: no unknown keys
    assert config.tls.mode == "self-signed"
    assert config.tls.publish_ca_secret == "certctl-ca"
    assert f"certctl-server.{NAMESPACE}.svc" in config.tls.subject_alt_names
    assert config.host_port == ("0.0.0.0", 8443)
    assert config.auth.kubernetes.enabled is False
    merged_doc = server_config(render({"server": {"extraConfig": {"cert-validity": "2160h"}}}))
    assert ServerConfig.model_validate(merged_doc).cert_validity == "2160h"


def test_extra_config_may_tune_what_the_chart_does_not_build_on(
    render: Callable[..., Rendered],
) -> None:
    """Negative twin of the extraConfig refusals: the same keys, within what the pod allows."""
    tls = {**REQUIRED_CLIENT_AUTH, "client-auth": "optional"}
    extra = {"listen": "[::]:8443", "tls": tls, "cert-validity": "2160h"}
    doc = server_config(render(merged(EXISTING_TLS, {"server": {"extraConfig": extra}})))
    config = ServerConfig.model_validate(doc)
    assert config.host_port == ("::", 8443)
    assert (config.tls.mode, config.tls.client_auth) == ("custom", "optional")
    assert config.cert_validity == "2160h"


# --- monitoring --------------------------------------------------------------------------


def test_runbook_values_give_a_verifying_servicemonitor(
    render: Callable[..., Rendered], servicemonitor_validator: Any
) -> None:
    objects = render(RUNBOOK)
    monitor = objects[("ServiceMonitor", "certctl-server")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert endpoint(objects) == {
        "port": "https",
        "path": "/api/v1/metrics/prometheus",
        "scheme": "https",
        "interval": "30s",
        "scrapeTimeout": "10s",
        "authorization": {
            "type": "Bearer",
            "credentials": {"name": "certctl-prometheus-key", "key": "api-key"},
        },
        "tlsConfig": {
            "ca": {"secret": {"name": "certctl-ca", "key": "ca.crt"}},
            "serverName": "certctl-server",
        },
    }
    # The CA Secret the ServiceMonitor trusts is the one the server is told to publish.
    assert server_config(objects)["tls"]["publish-ca-secret"] == "certctl-ca"
    servicemonitor_validator.validate(monitor)


@pytest.mark.parametrize("pattern", list(TLS_PATTERNS))
def test_runbook_tls_patterns_render(
    render: Callable[..., Rendered], servicemonitor_validator: Any, pattern: str
) -> None:
    given, expected = TLS_PATTERNS[pattern]
    objects = render(with_tls(given))
    assert endpoint(objects)["tlsConfig"] == expected
    servicemonitor_validator.validate(objects[("ServiceMonitor", "certctl-server")])


def test_explicit_server_name_is_kept(render: Callable[..., Rendered]) -> None:
    objects = render(with_tls({"caFile": CA_FILE, "serverName": "certctl.example.internal"}))
    assert endpoint(objects)["tlsConfig"]["serverName"] == "certctl.example.internal"


def test_existing_tls_secret_is_mounted_and_trusted(render: Callable[..., Rendered]) -> None:
    objects = render(merged(RUNBOOK, EXISTING_TLS))
    config = ServerConfig.model_validate(server_config(objects))
    assert (config.tls.mode, str(config.tls.cert_dir)) == ("custom", "/etc/certctl/tls")
    assert config.tls.publish_ca_secret is None
    c = container(objects)
    (tls_mount,) = [m for m in c["volumeMounts"] if m["name"] == "tls"]
    assert tls_mount == {"name": "tls", "mountPath": "/etc/certctl/tls", "readOnly": True}
    assert "subPath" not in tls_mount  # the Secret's ..data swap must reach the reload
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    tls_volume = {"secretName": "certctl-tls", "defaultMode": 0o440}
    assert {"name": "tls", "secret": tls_volume} in pod["volumes"]
    assert endpoint(objects)["tlsConfig"] == {
        "ca": {"secret": {"name": "certctl-tls", "key": "ca.crt"}},
        "serverName": "certctl-server",
    }
    assert ("Role", "certctl-ca-publisher") not in objects
    assert pod["automountServiceAccountToken"] is True  # the admin key Secret
    # Nothing to say to the API server: no token in the pod.
    quiet = render(merged(RUNBOOK, EXISTING_TLS, {"adminKeySecret": {"enabled": False}}))
    assert (
        one(quiet, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"]
        is False
    )
    assert "admin-key-secret" not in server_config(quiet)["auth"]


def test_the_tls_key_is_readable_by_the_pods_group_only(
    render: Callable[..., Rendered], kubernetes_validate: Any
) -> None:
    """Before, the TLS Secret was mounted with the default mode 0644: tls.key was readable
    by every user in the container. The kubelet gives a Secret volume's files root and the
    pod's fsGroup, which the container's processes hold as a supplementary group."""
    objects = render(merged(RUNBOOK, EXISTING_TLS))
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert oct(volume["secret"]["defaultMode"]) == "0o440"
    assert pod["securityContext"]["fsGroup"] == 10001  # the group that may read it
    for item_mode in [i.get("mode") for i in volume["secret"].get("items", [])]:
        assert item_mode is None  # no per-key mode widening it again
    kubernetes_validate.validate(one(objects, "Deployment"), KUBERNETES_VERSION, strict=True)


def test_two_releases_in_one_namespace_publish_their_own_ca(chart: Any) -> None:
    """Before, every release published its CA into the fixed Secret certctl-ca: a second
    release in the namespace replaced the first's CA certificate, and the first's
    ServiceMonitor and clients then trusted the wrong CA."""

    def release(name: str, values: dict[str, Any]) -> tuple[Rendered, str]:
        files = chart.render(values, name=name, namespace=NAMESPACE, is_install=True)
        objects: Rendered = {}
        for path, text in files.items():
            for doc in [] if path.endswith("NOTES.txt") else yaml.safe_load_all(text):
                if doc:
                    objects[(doc["kind"], doc["metadata"]["name"])] = doc
        (notes_text,) = [t for path, t in files.items() if path.endswith("NOTES.txt")]
        return objects, notes_text

    second = merged(RUNBOOK, {"service": {"name": "team-b-server"}})  # a Service of its own
    names: dict[str, set[tuple[str, str]]] = {}
    for name, values in (("certctl", RUNBOOK), ("team-b", second)):
        objects, notes_text = release(name, values)
        config = ServerConfig.model_validate(server_config(objects))
        ca = config.tls.publish_ca_secret
        assert ca is not None
        (role,) = [o for (k, n), o in objects.items() if k == "Role" and "ca-publisher" in n]
        assert role["rules"][1]["resourceNames"] == [ca]  # the Role follows the name
        assert endpoint_of(objects)["tlsConfig"]["ca"]["secret"]["name"] == ca  # and the SM
        assert f"get secret {ca} " in notes_text
        # What Helm creates, and what the server writes at run time.
        names[name] = {*objects, ("Secret", ca), ("Secret", str(config.auth.admin_key_secret))}
    assert ("Secret", "certctl-ca") in names["certctl"]  # the name the docs use, unchanged
    assert ("Secret", "team-b-certctl-ca") in names["team-b"]
    assert names["certctl"].isdisjoint(names["team-b"])
    # An explicit name still wins (a release that must keep publishing certctl-ca).
    kept, _ = release("team-b", {"server": {"tls": {"publishCA": {"secretName": "certctl-ca"}}}})
    assert server_config(kept)["tls"]["publish-ca-secret"] == "certctl-ca"


def endpoint_of(objects: Rendered) -> dict[str, Any]:
    (ep,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    result: dict[str, Any] = ep
    return result


def test_the_admin_key_goes_to_a_secret_only_the_server_may_write(
    render: Callable[..., Rendered],
) -> None:
    objects = render()
    assert server_config(objects)["auth"]["admin-key-secret"] == "certctl-admin-key"
    role = objects[("Role", "certctl-admin-key-writer")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["certctl-admin-key"],
            "verbs": ["get", "update"],
        },
    ]
    binding = objects[("RoleBinding", "certctl-admin-key-writer")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "certctl", "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "monitoring": {
                "enabled": False,
                "serviceMonitor": RUNBOOK["monitoring"]["serviceMonitor"],
            }
        },
        {"monitoring": {"enabled": True, "serviceMonitor": {"enabled": False}}},
    ],
    ids=["default", "monitoring-disabled", "servicemonitor-disabled"],
)
def test_no_servicemonitor_unless_both_switches(
    render: Callable[..., Rendered], values: dict[str, Any]
) -> None:
    assert not [k for k in render(values) if k[0] == "ServiceMonitor"]


def test_servicemonitor_in_another_namespace(render: Callable[..., Rendered]) -> None:
    # Prometheus Operator reads the CA Secret from the ServiceMonitor's namespace, so one
    # elsewhere names its own copy (without it the chart fails: see the refusals below).
    ca = {"ca": {"secret": {"name": "certctl-ca-copy", "key": "ca.crt"}}}
    sm = {"namespace": "mon", "tlsConfig": ca}
    objects = render(merged(RUNBOOK, {"monitoring": {"serviceMonitor": sm}}))
    monitor = objects[("ServiceMonitor", f"mon/{NAMESPACE}-certctl-server")]
    assert monitor["metadata"]["namespace"] == "mon"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"][0]["tlsConfig"] == {**ca, "serverName": "certctl-server"}


def test_same_named_releases_in_two_namespaces_share_no_object(chart: Any) -> None:
    """Before, the release certctl in team-a and the release certctl in team-b both rendered
    Role apps/certctl-secret-target and ServiceMonitor mon/certctl-server: the second
    install failed on Helm's ownership check (or, applied by a GitOps tool, took the first
    release's objects over)."""
    ca = {"ca": {"secret": {"name": "certctl-ca-copy", "key": "ca.crt"}}}
    values = merged(
        RUNBOOK,
        SECRET_TARGETS,
        KUBE_AUTH,  # cluster-scoped objects too
        {"monitoring": {"serviceMonitor": {"namespace": "mon", "tlsConfig": ca}}},
    )
    placed: dict[str, set[tuple[str, str, str]]] = {}
    for namespace in ("team-a", "team-b"):
        files = chart.render(values, name="certctl", namespace=namespace, is_install=True)
        docs = [
            doc
            for path, text in files.items()
            if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text)
            if doc
        ]
        placed[namespace] = {
            (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs
        }
        assert ("Role", "apps", f"{namespace}-certctl-secret-target") in placed[namespace]
        assert ("ServiceMonitor", "mon", f"{namespace}-certctl-server") in placed[namespace]
        notes_text = next(t for p, t in files.items() if p.endswith("NOTES.txt"))
        assert f"ServiceMonitor mon/{namespace}-certctl-server scrapes" in notes_text
    assert {o for o in placed["team-a"] if not o[1]}  # ClusterRoles were rendered
    assert placed["team-a"].isdisjoint(placed["team-b"])


def test_the_data_volume_outlives_helm_uninstall(render: Callable[..., Rendered]) -> None:
    (claim,) = [o for k, o in render({}).items() if k[0] == "PersistentVolumeClaim"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            # Only interval lowered: the default scrapeTimeout (10s) is then too long
            # ("scrape timeout greater than scrape interval", promtool 2.42).
            merged(RUNBOOK, {"monitoring": {"serviceMonitor": {"interval": "5s"}}}),
            "scrapeTimeout 10s is longer than interval 5s",
        ),
        (
            merged(
                RUNBOOK,
                {"monitoring": {"serviceMonitor": {"interval": "1m30s", "scrapeTimeout": "2m"}}},
            ),
            "scrapeTimeout 2m is longer than interval 1m30s",
        ),
        (
            # Every pod of the namespace that runs as "default" could read the admin key.
            {"serviceAccount": {"create": False}},
            "certctl would run as the namespace's 'default' ServiceAccount",
        ),
        (
            {"server": {"extraConfig": {"database-url": "postgresql+psycopg://u:pw@db/certctl"}}},
            "database-url would put the database password in a ConfigMap",
        ),
        (
            {"server": {"extraConfig": {"data-dir": "/data"}}},
            "server.extraConfig.data-dir is set by the chart: use persistence",
        ),
        (
            {"server": {"extraConfig": {"tls": {"mode": "disabled"}}}},
            "server.extraConfig.tls.mode is set by the chart",
        ),
        (
            {
                "monitoring": {"port": 9443},
                "server": {"extraConfig": {"metrics": {"secure": False}}},
            },
            "server.extraConfig.metrics.secure is set by the chart",
        ),
        (
            {"server": {"extraConfig": {"auth": {"kubernetes": {"enabled": True}}}}},
            "server.extraConfig.auth.kubernetes is set by the chart: use auth.kubernetes.enabled",
        ),
        (
            {"server": {"extraConfig": {"listen": "0.0.0.0:9000"}}},
            "listen 0.0.0.0:9000: the container port, probes and Service target port 8443",
        ),
        (
            merged(EXISTING_TLS, {"server": {"extraConfig": {"tls": REQUIRED_CLIENT_AUTH}}}),
            "the kubelet's HTTPS probes and Prometheus send none",
        ),
        ({"monitoring": {"port": 8443}}, "monitoring.port 8443: the API already uses it"),
        (
            {"monitoring": {"port": 9443}, "service": {"port": 9443}},
            "monitoring.port 9443: the API already uses it",
        ),
        (
            {"monitoring": {"enabled": True, "serviceMonitor": {"enabled": True}}},
            "set bearerTokenSecret {name, key}",
        ),
        (
            # Both: Prometheus rejects authorization beside bearer_token_file ("authorization
            # is not compatible with bearer_token & bearer_token_file", promtool 2.42).
            merged(
                RUNBOOK,
                KUBE_AUTH,
                {"monitoring": {"serviceMonitor": {"bearerTokenFile": "/t"}}},
            ),
            "set bearerTokenSecret or bearerTokenFile, not both",
        ),
        (
            merged(
                RUNBOOK,
                {"monitoring": {"serviceMonitor": {"bearerTokenSecret": {"name": "", "key": "k"}}}},
            ),
            "needs both name and key",
        ),
        (
            merged(RUNBOOK, {"server": {"tls": {"publishCA": {"enabled": False}}}}),
            "monitoring.serviceMonitor.tlsConfig: set it",
        ),
        ({"replicaCount": 2}, "replicaCount > 1 needs PostgreSQL"),
        (
            # Without fsGroup the 0440 key would be root's alone: the server could not start.
            merged(EXISTING_TLS, {"podSecurityContext": {"fsGroup": None}}),
            "podSecurityContext.fsGroup: server.tls.existingSecret is mounted 0440",
        ),
        (
            merged(RUNBOOK, {"monitoring": {"serviceMonitor": {"namespace": "mon"}}}),
            "Prometheus Operator reads the CA Secret from the ServiceMonitor's namespace",
        ),
        (
            merged(
                RUNBOOK,
                {
                    "monitoring": {
                        "serviceMonitor": {"bearerTokenSecret": None, "bearerTokenFile": "/t"}
                    }
                },
            ),
            "accepts only with auth.kubernetes.enabled: true",
        ),
        (
            merged(
                VALUE_SETS["kubernetes-auth"],
                {"auth": {"kubernetes": {"audiences": ["certctl"]}}},
            ),
            "is Prometheus's default ServiceAccount token, minted for the API server",
        ),
    ],
    ids=[
        "scrape-timeout-over-interval",
        "scrape-timeout-over-interval-mixed-units",
        "roles-for-the-default-serviceaccount",
        "database-url-in-a-configmap",
        "extra-config-data-dir",
        "extra-config-tls-mode",
        "extra-config-plain-metrics",
        "extra-config-kubernetes-auth",
        "extra-config-listen-port",
        "extra-config-client-auth-required",
        "metrics-port-is-the-api-port",
        "metrics-port-is-the-service-port",
        "no-credentials",
        "api-key-and-token-file",
        "half-secret",
        "nothing-to-verify-with",
        "replicas-on-sqlite",
        "tls-secret-without-fsgroup",
        "ca-secret-in-another-namespace",
        "sa-token-without-tokenreview",
        "default-token-with-audiences",
    ],
)
def test_unworkable_values_are_refused(
    chart: Any, helm: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=message.replace("{", r"\{").replace("}", r"\}")):
        chart.render(values, name="certctl", namespace=NAMESPACE, is_install=True)


def readers(*subjects: dict[str, str]) -> dict[str, Any]:
    return {"auth": {"kubernetes": {"enabled": True, "metricsReaders": list(subjects)}}}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        (
            merged(RUNBOOK, {"monitoring": {"serviceMonitor": {"bearerTokenSecrets": {}}}}),
            "additional properties 'bearerTokenSecrets' not allowed",
        ),
        (
            {"server": {"tls": {"existingSecert": "certctl-tls"}}},
            "additional properties 'existingSecert' not allowed",
        ),
        ({"monitoring": {"port": "9443"}}, "at '/monitoring/port': got string, want integer"),
        ({"database": {"poolSize": 2}}, "at '/database/poolSize'"),
        ({"service": {"type": "ClusterIp"}}, "at '/service/type'"),
        ({"server": {"tls": {"minVersion": "TLS1.3"}}}, "at '/server/tls/minVersion'"),
        (
            merged(RUNBOOK, {"monitoring": {"serviceMonitor": {"interval": "30 seconds"}}}),
            "at '/monitoring/serviceMonitor/interval'",
        ),
        ({"secretTargets": {"namespaces": ["Apps"]}}, "at '/secretTargets/namespaces/0'"),
        # A DNS label, but no Service name: the API server wants a letter first (DNS-1035).
        ({"service": {"name": "9certctl"}}, "at '/service/name'"),
        # The API server refuses these ClusterRoleBinding subjects (subjects[0].namespace:
        # Required value; apiGroup: Unsupported value), failing the install half-applied.
        (
            readers({"kind": "ServiceAccount", "name": "prometheus-k8s"}),
            "at '/auth/kubernetes/metricsReaders/0': missing property 'namespace'",
        ),
        (
            readers({"kind": "ServiceAccount", "name": "p", "namespace": "m", "apiGroup": "v1"}),
            "at '/auth/kubernetes/metricsReaders/0/apiGroup': value must be ''",
        ),
        (
            readers({"kind": "ServiceAccount", "name": "Prometheus", "namespace": "m"}),
            "at '/auth/kubernetes/metricsReaders/0/name'",
        ),
        (
            readers({"kind": "Group", "name": "sre", "apiGroup": "v1"}),
            "at '/auth/kubernetes/metricsReaders/0/apiGroup': value must be "
            "'rbac.authorization.k8s.io'",
        ),
    ],
    ids=[
        "replicas",
        "bearerTokenSecrets",
        "existingSecert",
        "port-as-string",
        "pool-too-small",
        "service-type-case",
        "min-version",
        "interval",
        "namespace-case",
        "service-name-digit-first",
        "reader-sa-without-namespace",
        "reader-sa-with-api-group",
        "reader-sa-name-case",
        "reader-group-with-wrong-api-group",
    ],
)
def test_values_schema_refuses_typos(
    chart: Any, helm: Any, values: dict[str, Any], message: str
) -> None:
    """Before values.schema.json, each of these rendered: the value was silently ignored
    (replicas, bearerTokenSecrets, existingSecert) or reached the API server or certctl."""
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render(values, name="certctl", namespace=NAMESPACE, is_install=True)


def test_values_schema_accepts_what_users_write(render: Callable[..., Rendered]) -> None:
    """Negative twin: an unquoted TLS version (a YAML number) and a parent chart's global."""
    objects = render({"server": {"tls": {"minVersion": 1.3}}, "global": {"imageRegistry": "r"}})
    assert ServerConfig.model_validate(server_config(objects)).tls.min_version == "1.3"
    assert one(render({"replicaCount": 0}), "Deployment")["spec"]["replicas"] == 0  # stopped
    # Subjects as the API server takes them: a User or Group without apiGroup is defaulted.
    subjects = [
        {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"},
        {"kind": "Group", "name": "sre"},
        {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"},
    ]
    binding = render(readers(*subjects))[
        ("ClusterRoleBinding", f"{NAMESPACE}-certctl-metrics-reader")
    ]
    assert binding["subjects"] == subjects


# --- PostgreSQL and Kubernetes auth -------------------------------------------------------


def test_postgres_replicas(render: Callable[..., Rendered]) -> None:
    objects = render(POSTGRES)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert "strategy" not in deployment["spec"]  # rolling update: no single-writer volume
    assert not [k for k in objects if k[0] == "PersistentVolumeClaim"]
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(objects)["env"]}
    assert env["CERTCTL_DATABASE_URL"] == {"name": "certctl-database", "key": "url"}
    secret = objects[("Secret", "certctl-database")]
    assert set(secret["data"]) == {"url"}
    existing = render(
        {"replicaCount": 2, "database": {"existingSecret": "pg", "existingSecretKey": "u"}}
    )
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(existing)["env"]}
    assert env["CERTCTL_DATABASE_URL"] == {"name": "pg", "key": "u"}
    assert ("Secret", "certctl-database") not in existing


def _pool(objects: Rendered) -> int:
    return ServerConfig.model_validate(server_config(objects)).database_pool_size


def _pg(replicas: int, **database: Any) -> dict[str, Any]:
    return merged(POSTGRES, {"replicaCount": replicas, "database": database})


@pytest.mark.parametrize(
    ("values", "pool"),
    [
        # (replicaCount + surge (25 %, rounded up)) × workers × (pool + 1) + 1 <= 100 - 13,
        # + 1: the leader's listening connection.
        (_pg(1), 34),  # 2 pods: 43 each; the pool's ceiling (a thread each) is 34
        (_pg(2), 27),  # 3 pods × 28 + 1 = 85: before, 34 (3 × 35 = 105 > 100)
        (_pg(3), 20),  # 4 pods × 21 + 1 = 85
        (_pg(8), 7),  # 10 pods × 8 + 1 = 81
        (merged(_pg(2), {"server": {"extraConfig": {"workers": 2}}}), 13),  # 6 × 14 + 1 = 85
        (_pg(3, maxConnections=500), 34),
        (_pg(3, maxConnections=150, reservedConnections=30), 28),  # 4 × 29 + 1 = 117
        (_pg(3, poolSize=20), 20),  # set, and fits
        (_pg(3, poolSize=34, maxConnections=0), 34),  # 0: not checked
        (_pg(3, maxConnections=0), 34),
        ({}, 34),  # SQLite: no PostgreSQL connections to count
        ({"replicaCount": 0, "database": POSTGRES["database"]}, 34),
    ],
    ids=[
        "one-replica",
        "two-replicas",
        "three-replicas",
        "eight-replicas",
        "two-workers",
        "larger-server",
        "reserved",
        "set-and-fits",
        "unchecked",
        "unchecked-default",
        "sqlite",
        "stopped",
    ],
)
def test_the_database_pool_fits_postgresqls_max_connections(
    render: Callable[..., Rendered], values: dict[str, Any], pool: int
) -> None:
    """Before: every pod's pool was 34, so 2 replicas and the pod a rolling update adds held
    up to 105 connections under load, beyond PostgreSQL's default max_connections (100): the
    database refused connections (``too many clients``) to the new pod and the old ones."""
    assert _pool(render(values)) == pool


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            _pg(2, poolSize=34),
            "database.poolSize 34: 3 server processes during a rolling update (replicaCount 2 "
            "+ 1 surge, × 1 workers) hold up to 106 PostgreSQL connections (poolSize + 1 "
            "each, and 1 the leader listens on), beyond the 87 of database.maxConnections 100 "
            "less reservedConnections 13: set poolSize 27 or less (0 sizes it), or raise "
            "PostgreSQL's max_connections and database.maxConnections",
        ),
        (
            _pg(20),
            "database.maxConnections 100: 25 server processes during a rolling update "
            "(replicaCount 20 + 5 surge, × 1 workers) need at least 101 PostgreSQL "
            "connections (a pool of 3 + 1 each, and 1 the leader listens on), beyond the 87 "
            "left after "
            "reservedConnections 13: raise PostgreSQL's max_connections and "
            "database.maxConnections, or run fewer replicas or workers",
        ),
        (
            {"server": {"extraConfig": {"database-pool-size": 50}}},
            "server.extraConfig.database-pool-size is set by the chart: use database.poolSize",
        ),
        # The pool is divided among the processes: before, Helm's 'integer divide by zero'.
        (
            merged(_pg(2), {"server": {"extraConfig": {"workers": 0}}}),
            "server.extraConfig.workers 0: expected a whole number of server processes from 1 "
            "to 64",
        ),
        (
            merged(_pg(2), {"server": {"extraConfig": {"workers": "two"}}}),
            "server.extraConfig.workers two: expected a whole number of server processes from 1 "
            "to 64",
        ),
    ],
    ids=["set-too-large", "too-many-replicas", "extra-config", "no-workers", "workers-word"],
)
def test_a_pool_beyond_max_connections_is_refused(
    chart: Any, helm: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render(values, name="certctl", namespace=NAMESPACE, is_install=True)


def test_kubernetes_auth_rbac(render: Callable[..., Rendered]) -> None:
    objects = render(KUBE_AUTH)
    assert ServerConfig.model_validate(server_config(objects)).auth.kubernetes.enabled
    review = objects[("ClusterRole", f"{NAMESPACE}-certctl-token-review")]
    assert review["rules"] == [
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
    ]
    binding = objects[("ClusterRoleBinding", f"{NAMESPACE}-certctl-token-review")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "certctl", "namespace": NAMESPACE}
    ]
    reader = objects[("ClusterRole", f"{NAMESPACE}-certctl-metrics-reader")]
    assert reader["rules"] == [
        {"nonResourceURLs": ["/api/v1/metrics", "/api/v1/metrics/prometheus"], "verbs": ["get"]}
    ]
    reader_binding = objects[("ClusterRoleBinding", f"{NAMESPACE}-certctl-metrics-reader")]
    assert reader_binding["subjects"] == KUBE_AUTH["auth"]["kubernetes"]["metricsReaders"]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"]
    assert not [k for k in render() if k[0].startswith("Cluster")]


def test_kubernetes_md_names_the_metrics_reader_role_the_chart_renders(chart: Any) -> None:
    """docs/kubernetes.md said `<ns>-<release>-metrics-reader`; it is the full name's, so the
    release `mon` binds `certs-mon-certctl-metrics-reader`, which a kubectl line copied from
    the old wording (`certs-mon-metrics-reader`) did not find."""
    docs = (CHART.parents[2] / "docs" / "kubernetes.md").read_text()
    sentence = " ".join(docs[docs.index("`<ns>-<fullname>-metrics-reader`") :].split()[:40])
    examples = dict(
        re.findall(r"`([\w-]+-metrics-reader)` for (?:the|a) release `(\w+)`", sentence)
    )
    assert examples == {
        "certs-certctl-metrics-reader": "certctl",
        "certs-mon-certctl-metrics-reader": "mon",
    }, sentence
    for name, release in examples.items():
        files = chart.render(KUBE_AUTH, name=release, namespace=NAMESPACE, is_install=True)
        docs_rendered = [
            d
            for path, text in files.items()
            if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text)
            if d
        ]
        kinds = {d["kind"] for d in docs_rendered if d["metadata"]["name"] == name}
        assert kinds == {"ClusterRole", "ClusterRoleBinding"}, (release, name)


def test_kubernetes_auth_audiences_reach_the_server(
    render: Callable[..., Rendered], chart: Any, helm: Any
) -> None:
    values = merged(KUBE_AUTH, {"auth": {"kubernetes": {"audiences": ["certctl"]}}})
    config = ServerConfig.model_validate(server_config(render(values)))
    assert config.auth.kubernetes.audiences == ["certctl"]
    # Negative twin: by default none (the API server's own audience), and no key written.
    assert "audiences" not in server_config(render(KUBE_AUTH))["auth"]["kubernetes"]
    # A projected token for certctl is what Prometheus then sends.
    projected = {"bearerTokenFile": "/var/run/secrets/certctl/token"}
    sm = merged(VALUE_SETS["kubernetes-auth"], {"monitoring": {"serviceMonitor": projected}})
    objects = render(merged(sm, {"auth": {"kubernetes": {"audiences": ["certctl"]}}}))
    assert endpoint(objects)["bearerTokenFile"] == projected["bearerTokenFile"]
    bad = merged(KUBE_AUTH, {"auth": {"kubernetes": {"audiences": [""]}}})
    with pytest.raises(helm.HelmError, match=re.escape("at '/auth/kubernetes/audiences/0'")):
        chart.render(bad, name="certctl", namespace=NAMESPACE, is_install=True)


def test_secret_target_namespaces_get_a_role(render: Callable[..., Rendered]) -> None:
    objects = render(SECRET_TARGETS)
    for ns in ("apps", "payments"):
        role = objects[("Role", f"{ns}/{NAMESPACE}-certctl-secret-target")]
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"]}
        ]
        binding = objects[("RoleBinding", f"{ns}/{NAMESPACE}-certctl-secret-target")]
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "certctl", "namespace": NAMESPACE}
        ]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    # The release namespace listed: custom certificates are read there too, with one LIST
    # of the labelled Secrets per reconcile pass. Listing is granted there only.
    objects = render({"secretTargets": {"namespaces": ["apps", NAMESPACE]}})
    role = objects[("Role", "certctl-secret-target")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "update"]}
    ]
    role = objects[("Role", f"apps/{NAMESPACE}-certctl-secret-target")]
    assert "list" not in role["rules"][0]["verbs"]


# --- schemas -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(VALUE_SETS))
def test_every_manifest_validates(
    render: Callable[..., Rendered],
    kubernetes_validate: Any,
    servicemonitor_validator: Any,
    case: str,
) -> None:
    objects = render(VALUE_SETS[case])
    for (kind, name), obj in objects.items():
        if kind == "ServiceMonitor":
            servicemonitor_validator.validate(obj)
        else:
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{kind}/{name} ({case}): {exc}")


def test_validators_reject_mistakes(
    render: Callable[..., Rendered], kubernetes_validate: Any, servicemonitor_validator: Any
) -> None:
    """Negative twins: the schemas catch a misspelt field and a bad value."""
    deployment = copy.deepcopy(one(render(), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    monitor = render(RUNBOOK)[("ServiceMonitor", "certctl-server")]
    for path, value in (
        (("bearerTokenSecrets",), {"name": "x", "key": "y"}),
        (("interval",), "30 seconds"),
        (("scheme",), "HTTPS"),
        (("tlsConfig", "insecureSkipVerify"), "yes"),
        (("tlsConfig", "ca", "secret", "keys"), "ca.crt"),
    ):
        bad = copy.deepcopy(monitor)
        node = bad["spec"]["endpoints"][0]
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        assert list(servicemonitor_validator.iter_errors(bad)), path
    missing = copy.deepcopy(monitor)
    del missing["spec"]["selector"]
    errors = [e.message for e in servicemonitor_validator.iter_errors(missing)]
    assert errors == ["'selector' is a required property"]


def test_helm_lint(helm: Any) -> None:
    from tests.helm.conftest import CHART

    result = helm.lint(str(CHART))
    assert result["errors"] == [], result
    assert not [m for m in result["messages"] if m["severity"] > 1], result


def test_a_separate_metrics_port_is_listened_on_exposed_and_scraped(
    render: Callable[..., Rendered], servicemonitor_validator: Any
) -> None:
    objects = render(merged(RUNBOOK, {"monitoring": {"port": 9443}}))
    assert server_config(objects)["metrics"] == {"listen": "0.0.0.0:9443"}
    ports = container(objects)["ports"]
    assert {"name": "metrics", "containerPort": 9443, "protocol": "TCP"} in ports
    service = objects[("Service", "certctl-server")]
    assert {"name": "metrics", "port": 9443, "targetPort": "metrics", "protocol": "TCP"} in (
        service["spec"]["ports"]
    )
    assert endpoint(objects)["port"] == "metrics"
    servicemonitor_validator.validate(objects[("ServiceMonitor", "certctl-server")])
    # An IPv6-only cluster: the API listens on [::] (IPv6 only), and so must metrics, or
    # Prometheus, scraping the pod's IPv6 address, found nothing there.
    ipv6 = render(
        merged(
            RUNBOOK,
            {"monitoring": {"port": 9443}, "server": {"extraConfig": {"listen": "[::]:8443"}}},
        )
    )
    config = ServerConfig.model_validate(server_config(ipv6))
    assert config.metrics.listen == "[::]:9443"
    assert split_host_port(config.metrics.listen, "metrics.listen") == ("::", 9443)
    assert config.host_port == ("::", 8443)
    # Negative twin: by default one port, scraped as https.
    default = render(RUNBOOK)
    assert "metrics" not in server_config(default)
    assert endpoint(default)["port"] == "https"


def notes(chart: Any, values: dict[str, Any]) -> str:
    files = chart.render(values, name="certctl", namespace=NAMESPACE, is_install=True)
    (text,) = [t for path, t in files.items() if path.endswith("NOTES.txt")]
    return str(text)


def test_notes_say_what_was_installed(chart: Any) -> None:
    """Before, NOTES claimed 'with TLS verification' under insecureSkipVerify, named the
    self-signed certificate with an existing Secret, and said nothing when no one may read
    metrics with a ServiceAccount token."""
    skip = notes(chart, with_tls({"insecureSkipVerify": True}))
    assert "WITHOUT verifying certctl's certificate" in skip
    assert "with TLS verification" not in skip
    verifying = notes(chart, RUNBOOK)
    assert "with TLS verification (serverName certctl-server)" in verifying
    assert "Secret certctl-prometheus-key (key api-key), which you create" in verifying
    assert "self-signed by certctl's internal CA" in verifying
    existing = notes(chart, merged(RUNBOOK, EXISTING_TLS))
    assert "certificate from Secret certctl-tls" in existing
    assert "self-signed" not in existing
    no_readers = {"auth": {"kubernetes": {"enabled": True}}}
    unbound = notes(chart, no_readers)
    assert "--clusterrole=certs-certctl-metrics-reader" in unbound
    assert "metricsReaders is empty" not in notes(chart, KUBE_AUTH)  # negative twin
    # serviceMonitor.enabled without the master switch rendered no ServiceMonitor, silently.
    half = {"monitoring": {"serviceMonitor": {"enabled": True}}}
    assert "No ServiceMonitor: monitoring.serviceMonitor.enabled is set but" in notes(chart, half)
    assert "No ServiceMonitor" not in notes(chart, RUNBOOK)  # negative twins
    assert "No ServiceMonitor" not in notes(chart, {})
    ephemeral = "are lost whenever the pod\nis replaced"
    assert ephemeral in notes(chart, {"persistence": {"enabled": False}})
    assert ephemeral not in notes(chart, {})
    assert ephemeral not in notes(chart, merged(POSTGRES, {"persistence": {"enabled": False}}))


def test_user_labels_and_annotations_render_once(render: Callable[..., Rendered]) -> None:
    """Before, a podLabels/podAnnotations/serviceMonitor.labels key the chart also sets was
    rendered twice in one mapping, which the API server's YAML decoder refuses."""
    values = merged(
        RUNBOOK,
        {
            "podLabels": {"app.kubernetes.io/version": "pinned", "team": "pki"},
            "podAnnotations": {"checksum/config": "mine", "owner": "pki"},
            "monitoring": {"serviceMonitor": {"labels": {"app.kubernetes.io/managed-by": "x"}}},
        },
    )
    objects = render(values)
    pod = one(objects, "Deployment")["spec"]["template"]["metadata"]
    assert pod["labels"]["team"] == "pki"
    assert pod["labels"]["app.kubernetes.io/version"] == "pinned"
    assert SELECTOR.items() <= pod["labels"].items()
    assert pod["annotations"]["owner"] == "pki"
    assert pod["annotations"]["checksum/config"] != "mine"  # the chart's: rolls on change
    monitor = objects[("ServiceMonitor", "certctl-server")]
    assert monitor["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "x"


def test_pod_labels_may_not_change_the_selector(chart: Any, helm: Any) -> None:
    with pytest.raises(
        helm.HelmError, match=re.escape("podLabels.app.kubernetes.io/name: the Deployment")
    ):
        chart.render(
            {"podLabels": {"app.kubernetes.io/name": "other"}},
            name="certctl",
            namespace=NAMESPACE,
            is_install=True,
        )


def test_an_existing_serviceaccount_gets_the_roles(render: Callable[..., Rendered]) -> None:
    """Negative twin of the refusal: a named ServiceAccount, or no Role at all, is fine."""
    objects = render({"serviceAccount": {"create": False, "name": "certctl-sa"}})
    assert not [k for k in objects if k[0] == "ServiceAccount"]
    subjects = objects[("RoleBinding", "certctl-admin-key-writer")]["subjects"]
    assert subjects == [{"kind": "ServiceAccount", "name": "certctl-sa", "namespace": NAMESPACE}]
    quiet = {"create": False}
    nothing = merged(EXISTING_TLS, {"adminKeySecret": {"enabled": False}})
    pod = one(render({**nothing, "serviceAccount": quiet}), "Deployment")["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == "default"
    assert pod["spec"]["automountServiceAccountToken"] is False


def _three_way_patch(original: Any, modified: Any, current: Any) -> Any:
    """Helm's upgrade patch for maps (strategic merge = JSON merge semantics here): what
    ``modified`` changes against the live object, and null for what it dropped."""
    patch: dict[str, Any] = {}
    for key, value in modified.items():
        live = current.get(key)
        if isinstance(value, dict) and isinstance(live, dict):
            sub = _three_way_patch((original or {}).get(key) or {}, value, live)
            if sub:
                patch[key] = sub
        elif key not in current or live != value:
            patch[key] = value
    for key in original or {}:
        if key not in modified:
            patch[key] = None
    return patch


def _apply(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _apply(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def test_upgrading_to_a_claim_switches_the_strategy_cleanly(
    render: Callable[..., Rendered],
) -> None:
    """A release without the claim (persistence off, or PostgreSQL) that turns the SQLite claim
    on: the API server had defaulted rollingUpdate, and without rollingUpdate: null the
    upgrade's patch kept it beside type Recreate, which the API server refuses
    ("spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is
    'Recreate'", kubernetes/kubernetes#24198)."""
    before = one(render({"persistence": {"enabled": False}}), "Deployment")["spec"]
    after = one(render(), "Deployment")["spec"]
    live = copy.deepcopy(before)
    live["strategy"] = {  # the API server's defaults
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    patched = _apply(live, _three_way_patch(before, after, live))
    assert patched["strategy"] == {"type": "Recreate"}
    # Back to rolling updates (SQLite to PostgreSQL): the patch drops the strategy.
    assert "strategy" not in _apply(patched, _three_way_patch(after, before, patched))


@pytest.mark.parametrize(
    ("interval", "timeout"), [("1m", "59s"), ("10s", "10s"), ("1h", "90s"), ("2s", "1500ms")]
)
def test_scrape_timeouts_within_the_interval_render(
    render: Callable[..., Rendered], interval: str, timeout: str
) -> None:
    """Negative twin of the scrapeTimeout refusal, across units."""
    sm = {"interval": interval, "scrapeTimeout": timeout}
    ep = endpoint(render(merged(RUNBOOK, {"monitoring": {"serviceMonitor": sm}})))
    assert (ep["interval"], ep["scrapeTimeout"]) == (interval, timeout)
