"""TLSService spec validation: refused whole, the message names the field (parser and API)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from certctl.errors import InvalidRequest
from certctl.services.tls_spec import (
    SecretKeyRef,
    SecretTarget,
    parse_service,
    parse_service_documents,
)
from certctl.store.models import AuditEvent, ManagedService
from tests.api.conftest import assert_problem
from tests.services.conftest import Env, service_doc


def _with(path: str, value: Any, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """``doc`` (a valid service by default) with ``value`` set at the dotted ``path``."""
    doc = copy.deepcopy(doc or service_doc("web"))
    node: Any = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[last] = value
    return doc


SSC = "spec.http.tls.selfSignedCertificate"
P12 = "spec.targets.0.keystores.pkcs12"
PW_REF = {"name": "es-keystore-password", "key": "password"}


def _p12(pkcs12: dict[str, Any]) -> dict[str, Any]:
    """A service whose one Secret target ``es-tls`` has ``keystores.pkcs12`` ``pkcs12``."""
    return _with("spec.targets", [{"secret": "es-tls", "keystores": {"pkcs12": pkcs12}}])


INVALID = {
    "bad name": (
        _with("metadata.name", "Web_1"),
        "metadata.name: Web_1: names are 1-53 lower-case letters, digits or '-'",
    ),
    "name too long": (_with("metadata.name", "a" * 54), "metadata.name: " + "a" * 54),
    "bad dns SAN": (
        _with(f"{SSC}.subjectAltNames", [{"dns": "bad..example"}]),
        f"{SSC}.subjectAltNames.0: bad..example: invalid DNS name",
    ),
    "bad ip SAN": (
        _with(f"{SSC}.subjectAltNames", [{"ip": "10.0.0.300"}]),
        f"{SSC}.subjectAltNames.0: 10.0.0.300: not a valid IPv4 or IPv6 address",
    ),
    # Accepted before, then every reconcile failed: an iPAddress SAN has no room for a zone.
    "ip SAN with an IPv6 zone": (
        _with(f"{SSC}.subjectAltNames", [{"ip": "fe80::1%eth0"}]),
        f"{SSC}.subjectAltNames.0: fe80::1%eth0: an IPv6 zone ID (%eth0) cannot go in a "
        "certificate; give fe80::1",
    ),
    "dns and ip in one SAN": (
        _with(f"{SSC}.subjectAltNames", [{"dns": "a.example", "ip": "10.0.0.1"}]),
        f"{SSC}.subjectAltNames.0: give exactly one of dns or ip",
    ),
    "empty SAN": (
        _with(f"{SSC}.subjectAltNames", [{}]),
        f"{SSC}.subjectAltNames.0: give exactly one of dns or ip",
    ),
    # cert-manager's dnsNames and ECK's docs list bare names: "expected a mapping" did not
    # say which mapping.
    "SAN given as a bare host name": (
        _with(f"{SSC}.subjectAltNames", ["web.example.internal"]),
        f"{SSC}.subjectAltNames.0: 'web.example.internal' is a bare value; give "
        "{dns: web.example.internal}",
    ),
    "SAN given as a bare address": (
        _with(f"{SSC}.subjectAltNames", ["10.0.0.5"]),
        f"{SSC}.subjectAltNames.0: '10.0.0.5' is a bare value; give {{ip: 10.0.0.5}}",
    ),
    "SAN given as a number": (
        _with(f"{SSC}.subjectAltNames", [5]),
        f"{SSC}.subjectAltNames.0: expected a mapping ({{dns: NAME}} or {{ip: ADDRESS}})",
    ),
    "unknown field": (
        _with(f"{SSC}.subjectAltName", []),
        f"{SSC}.subjectAltName: unknown key (did you mean subjectAltNames?)",
    ),
    # ECK's spec.http also holds the Kubernetes Service's settings: copied along with tls,
    # they got "unknown key (known here: tls)".
    "ECK's http.service": (
        _with("spec.http.service", {"spec": {"type": "LoadBalancer"}}),
        "spec.http.service: unknown key (ECK's Kubernetes Service settings have no "
        "counterpart here: copy spec.http.tls alone)",
    ),
    "unknown top-level field": (
        _with("status", {}),
        "status: unknown key (known here: apiVersion, kind, metadata, spec)",
    ),
    # Pydantic's "Input should be 'TLSService'" did not say what was received.
    "wrong kind": (_with("kind", "Service"), "kind: got 'Service', expected TLSService"),
    "wrong apiVersion": (
        _with("apiVersion", "v1"),
        "apiVersion: got 'v1', expected certctl.io/v1 (kind TLSService)",
    ),
    "no apiVersion": (
        {k: v for k, v in service_doc("web").items() if k != "apiVersion"},
        "apiVersion: missing, expected certctl.io/v1 (kind TLSService)",
    ),
    # A pasted ECK resource: pointed to what carries over, not told a bare literal.
    "ECK resource": (
        _with("kind", "Elasticsearch", _with("apiVersion", "elasticsearch.k8s.elastic.co/v1")),
        "apiVersion: got elasticsearch.k8s.elastic.co/v1 (kind Elasticsearch), an ECK resource; "
        "certctl takes apiVersion certctl.io/v1, kind TLSService: keep metadata.name and "
        "spec.http.tls as they are, leave out the rest of its spec, add spec.targets "
        "(README.md#managed-tls-for-services, 'Coming from ECK')",
    ),
    "pkcs12 without passwordFile": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "format": "pkcs12"}]),
        "spec.targets.0: format pkcs12 needs passwordFile",
    ),
    "relative directory": (
        _with("spec.targets", [{"directory": "etc/web/tls"}]),
        "spec.targets.0.directory: etc/web/tls: must be an absolute path",
    ),
    "directory with ..": (
        _with("spec.targets", [{"directory": "/srv/tls/.."}]),
        "spec.targets.0.directory: /srv/tls/..: must not contain '..'",
    ),
    "relative passwordFile": (
        _with(
            "spec.targets",
            [{"directory": "/srv/p", "format": "pkcs12", "passwordFile": "pw.txt"}],
        ),
        "spec.targets.0.passwordFile: pw.txt: must be an absolute path",
    ),
    # Too far from `reload` for a guess (certctl.spelling): the keys there, reload among them.
    "unknown target field": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "reloadCommand": "x"}]),
        "spec.targets.0.reloadCommand: unknown key (known here: directory, format, group, "
        "owner, passwordFile, reload, reloadTimeout)",
    ),
    "target field in another case": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "passwordfile": "/p"}]),
        "spec.targets.0.passwordfile: unknown key (did you mean passwordFile?)",
    ),
    "owner beyond uid_t": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "owner": 2**70}]),
        f"spec.targets.0.owner: {2**70}: user and group ids are 0 to 4294967294",
    ),
    "negative group": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "group": -5}]),
        "spec.targets.0.group: -5: user and group ids are 0 to 4294967294",
    ),
    "owner not a user name": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "owner": "web:server"}]),
        "spec.targets.0.owner: 'web:server' is not a user or group name",
    ),
    "target of no kind": (
        _with("spec.targets", [{"path": "/etc/web/tls"}]),
        "spec.targets.0: a target needs a directory or a secret",
    ),
    "bad reload timeout": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "reloadTimeout": "5x"}]),
        "spec.targets.0.reloadTimeout: 5x: unknown duration unit",
    ),
    "reload timeout beyond ten minutes": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "reloadTimeout": "100Y"}]),
        "spec.targets.0.reloadTimeout: 100Y: reload timeouts are 1s to 10m",
    ),
    "reload that cannot be split": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "reload": "sh -c 'unclosed"}]),
        "spec.targets.0.reload: cannot be split into arguments: No closing quotation",
    ),
    "reload with shell operators": (
        _with(
            "spec.targets", [{"directory": "/etc/web/tls", "reload": "nginx -t && nginx -s reload"}]
        ),
        "spec.targets.0.reload: reload runs without a shell, so & would reach the command as an "
        "argument; wrap it: sh -c '…'",
    ),
    "reload with a glued operator": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "reload": "nginx -s reload; true"}]),
        "spec.targets.0.reload: reload runs without a shell, so ; would reach",
    ),
    "empty reload": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "reload": "  "}]),
        "spec.targets.0.reload: an empty reload command; leave reload out instead",
    ),
    "certificate and disabled": (
        _with(
            "spec.http.tls.certificate", {"secretName": "custom"}, service_doc("web", disabled=True)
        ),
        "spec.http.tls: certificate and selfSignedCertificate.disabled conflict",
    ),
    "client authentication without TLS": (
        service_doc("web", disabled=True, client_auth=True),
        "spec.http.tls: client.authentication needs TLS, which selfSignedCertificate.disabled "
        "turns off",
    ),
    "secret target escaping its URL": (
        _with("spec.targets", [{"secret": "../../kube-system/secrets/x"}]),
        "spec.targets.0.secret: '../../kube-system/secrets/x': Secret names are lower-case",
    ),
    "secret target in a namespace path": (
        _with("spec.targets", [{"secret": "web-tls", "namespace": "kube-system/secrets/x?"}]),
        "spec.targets.0.namespace: 'kube-system/secrets/x?': namespaces are lower-case DNS",
    ),
    "secret target label key": (
        _with("spec.targets", [{"secret": "web-tls", "labels": {"bad key": "x"}}]),
        "spec.targets.0.labels: 'bad key' is not a Kubernetes label key",
    ),
    "secret target label value": (
        _with("spec.targets", [{"secret": "web-tls", "labels": {"example.com/app": "a b"}}]),
        "spec.targets.0.labels: label example.com/app: 'a b' is not a Kubernetes label value",
    ),
    "secret target label certctl owns": (
        _with(
            "spec.targets",
            [{"secret": "web-tls", "labels": {"app.kubernetes.io/managed-by": "argocd"}}],
        ),
        "spec.targets.0.labels: app.kubernetes.io/managed-by is set by certctl",
    ),
    "unknown usage": (
        _with(f"{SSC}.usages", ["server auth", "clientAuth"]),
        f"{SSC}.usages: 'clientAuth' is not a usage certctl issues; give 'server auth' and, "
        "for a service that also connects as a TLS client",
    ),
    "key usage in usages": (
        _with(f"{SSC}.usages", ["digital signature", "server auth"]),
        f"{SSC}.usages: 'digital signature' is not a usage certctl issues",
    ),
    "usages without server auth": (
        _with(f"{SSC}.usages", ["client auth"]),
        f"{SSC}.usages: must include 'server auth': the service serves this certificate",
    ),
    "usages not a list": (
        _with(f"{SSC}.usages", "server auth"),
        f"{SSC}.usages: Input should be a valid list",
    ),
    # Read as true before (pydantic's lax mode): a quoted "yes" is a string, not YAML's true,
    # and a spec meant for strict readers (kubectl, ECK) must not mean something else here.
    "authentication as a string": (
        _with("spec.http.tls.client", {"authentication": "yes"}),
        "spec.http.tls.client.authentication: 'yes' is a string; give true or false "
        "(unquoted in YAML)",
    ),
    "disabled as a number": (
        _with(f"{SSC}.disabled", 1),
        f"{SSC}.disabled: 1 is not a boolean; give true or false",
    ),
    "authentication left empty": (
        _with("spec.http.tls.client", {"authentication": None}),
        "spec.http.tls.client.authentication: null is not a boolean; give true or false",
    ),
    # `owner: yes` (YAML's true) was read as uid 1.
    "owner as a boolean": (
        _with("spec.targets", [{"directory": "/etc/web/tls", "owner": True}]),
        "spec.targets.0.owner: true is not a user or group; give a name or a numeric id",
    ),
    "bad secret name": (
        _with("spec.http.tls.certificate", {"secretName": "../etc"}),
        "spec.http.tls.certificate.secretName: ../etc: secret names are lower-case DNS labels",
    ),
    # "$" matched before a final newline: "web\n" was stored, became the file name of a
    # secrets-dir lookup and a raw line break in the service's messages and log lines.
    "secret name with a trailing newline": (
        _with("spec.http.tls.certificate", {"secretName": "web\n"}),
        "spec.http.tls.certificate.secretName: 'web\\n': secret names are lower-case DNS labels",
    ),
    # Secret targets' PKCS#12 keystores (cert-manager's spec.keystores.pkcs12).
    "keystore without a password Secret": (
        _p12({"create": True}),
        f"{P12}: create: true needs passwordSecretRef (name and key of a Secret)",
    ),
    "keystore create left out": (_p12({"passwordSecretRef": PW_REF}), f"{P12}.create: Field"),
    "keystore create as a string": (
        _p12({"create": "true", "passwordSecretRef": PW_REF}),
        f"{P12}.create: 'true' is a string; give true or false",
    ),
    "keystore password Secret name": (
        _p12({"create": True, "passwordSecretRef": {"name": "../x", "key": "password"}}),
        f"{P12}.passwordSecretRef.name: '../x': Secret names are lower-case DNS subdomains",
    ),
    "keystore password Secret key": (
        _p12({"create": True, "passwordSecretRef": {"name": "es-pw", "key": "a/b"}}),
        f"{P12}.passwordSecretRef.key: 'a/b': Secret keys are at most 253 letters",
    ),
    "keystore password Secret key left out": (
        _p12({"create": True, "passwordSecretRef": {"name": "es-pw"}}),
        f"{P12}.passwordSecretRef.key: Field",
    ),
    "keystore password in the Secret it locks": (
        _p12({"create": True, "passwordSecretRef": {"name": "es-tls", "key": "password"}}),
        "spec.targets.0: keystores.pkcs12.passwordSecretRef names the target Secret itself",
    ),
    # cert-manager's literal password: refused, naming where a password goes, never echoed.
    "keystore literal password": (
        _p12({"create": True, "password": "hunter2"}),
        f"{P12}.password: unknown key (a password is never put in a spec: name a Secret "
        "labelled certctl.io/keystore-password=true in passwordSecretRef)",
    ),
    "keystore profile": (
        _p12({"create": True, "passwordSecretRef": PW_REF, "profile": "LegacyRC2"}),
        f"{P12}.profile: unknown key (certctl writes one profile, the directory target's",
    ),
    "jks keystore": (
        _with("spec.targets", [{"secret": "es-tls", "keystores": {"jks": {"create": True}}}]),
        "spec.targets.0.keystores.jks: unknown key (known here: pkcs12)",
    ),
}


def test_a_literal_keystore_password_is_never_in_the_message() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_service(_p12({"create": True, "password": "hunter2"}))
    assert "hunter2" not in info.value.detail


@pytest.mark.parametrize(("doc", "message"), INVALID.values(), ids=INVALID.keys())
def test_parse_service_refuses_naming_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_service(doc)
    assert info.value.detail.startswith(f"spec: {message}"), info.value.detail


@pytest.mark.parametrize("account", ["user@ad.example", "DOM\\user", "domain users", "1user", 33])
def test_real_account_names_are_accepted(account: str | int) -> None:
    # SSSD and winbind names go beyond the POSIX portable set; the host decides at delivery.
    doc = _with("spec.targets", [{"directory": "/etc/web/tls", "owner": account}])
    assert parse_service(doc).spec.targets[0].owner == account  # type: ignore[union-attr]


def test_a_stored_secret_target_labelled_managed_by_still_loads() -> None:
    # Accepted before the label was refused: a stored spec must keep reconciling.
    labels = {"app.kubernetes.io/managed-by": "argocd", "app": "web"}
    doc = _with("spec.targets", [{"secret": "web-tls", "labels": labels}])
    assert parse_service(doc, stored=True).spec.targets[0].labels == labels  # type: ignore[union-attr]


def test_a_stored_spec_with_client_authentication_and_tls_disabled_still_loads() -> None:
    doc = service_doc("web", disabled=True, client_auth=True)
    assert parse_service(doc, stored=True).disabled


def test_valid_document_round_trips() -> None:
    doc = service_doc(
        "web",
        dns=("web.example.internal",),
        ip=("10.0.0.5", "::1"),
        client_auth=True,
        targets=[
            {"directory": "/etc/web/tls", "reload": "systemctl reload web", "reloadTimeout": "5s"},
            {"directory": "/etc/web/p12", "format": "pkcs12", "passwordFile": "/etc/web/pw"},
            {"secret": "web-tls", "namespace": "prod"},
            {
                "secret": "web-p12",
                "keystores": {"pkcs12": {"create": True, "passwordSecretRef": PW_REF}},
            },
            # Copied with create: false (cert-manager's way to switch them off): no keystores.
            {"secret": "web-pem", "keystores": {"pkcs12": {"create": False}}},
        ],
    )
    spec = parse_service(doc)
    p12, pem = spec.spec.targets[3:]
    assert isinstance(p12, SecretTarget)
    assert p12.pkcs12 is not None
    assert p12.pkcs12.password_secret_ref == SecretKeyRef(
        name="es-keystore-password", key="password"
    )
    assert isinstance(pem, SecretTarget)
    assert pem.pkcs12 is None
    assert spec.dns_names() == ["web", "web.example.internal"]
    assert spec.ip_addresses() == ["10.0.0.5", "::1"]
    assert parse_service(spec.to_document()) == spec


def test_usages_are_canonical_and_left_out_when_not_given() -> None:
    # Not given: left out of the stored document, so a spec stored before the field existed
    # compares equal (an unchanged apply stays "unchanged") and issues serverAuth only.
    plain = parse_service(service_doc("web"))
    assert "usages" not in plain.to_document()["spec"]["http"]["tls"]["selfSignedCertificate"]
    assert not plain.client_auth
    both = parse_service(_with(f"{SSC}.usages", ["client auth", "server auth", "client auth"]))
    assert both.tls.self_signed_certificate.usages == ["server auth", "client auth"]
    assert both.client_auth


def test_services_file_is_refused_whole() -> None:
    good = "apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {name: one}\n"
    bad = "apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {name: Two}\n"
    assert [s.name for s in parse_service_documents(good)] == ["one"]
    with pytest.raises(InvalidRequest, match=r"^document 2: metadata\.name: Two: names"):
        parse_service_documents(f"{good}---\n{bad}")
    with pytest.raises(InvalidRequest, match="defines one more than once"):
        parse_service_documents(f"{good}---\n{good}")


def test_services_file_with_a_pasted_eck_resource_points_to_the_mapping() -> None:
    eck = (
        "apiVersion: kibana.k8s.elastic.co/v1\nkind: Kibana\nmetadata: {name: kb}\n"
        "spec:\n  version: 8.15.0\n  http:\n    tls:\n      selfSignedCertificate:\n"
        "        subjectAltNames: [{dns: kb.example.internal}]\n"
    )
    with pytest.raises(InvalidRequest) as info:
        parse_service_documents(eck)
    assert info.value.detail.startswith(
        "document 1: apiVersion: got kibana.k8s.elastic.co/v1 (kind Kibana), an ECK resource; "
    )
    assert "README.md#managed-tls-for-services" in info.value.detail
    assert "\n" not in info.value.detail
    # The anchor named is the README heading's, whose section says what carries over.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("\n## Managed TLS for services\n") :]
    assert "Coming from ECK" in section[: section.index("\n## ", 1)]


def test_the_readme_keystores_example_is_a_valid_secret_target() -> None:
    import re

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "keystores:" in b]
    spec = parse_service(service_doc("es", targets=yaml.safe_load(block)["targets"]))
    (target,) = spec.spec.targets
    assert isinstance(target, SecretTarget)
    assert target.pkcs12 is not None
    assert target.pkcs12.password_secret_ref == SecretKeyRef(
        name="es-keystore-password", key="password"
    )


def test_services_file_with_one_target_in_two_documents_is_refused_whole() -> None:
    # Before, the second document's PUT got a 409 after the first had been stored.
    def doc(name: str, targets: str) -> str:
        return (
            f"apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {{name: {name}}}\n"
            f"spec: {{targets: {targets}}}\n"
        )

    shared = "[{secret: web-tls}, {directory: /srv/tls/shared}]"
    text = "---\n".join(
        (doc("one", "[]"), doc("two", shared), doc("three", "[{directory: /srv/tls/shared}]"))
    )
    with pytest.raises(
        InvalidRequest,
        match=r"^document 3: spec\.targets\.0: dir:/srv/tls/shared is also a target of "
        r"document 2 \(two\)$",
    ):
        parse_service_documents(text)
    text = "---\n".join(
        (
            doc("one", "[{secret: web-tls, namespace: a}]"),
            doc("two", "[{secret: web-tls, namespace: a}]"),
        )
    )
    with pytest.raises(
        InvalidRequest, match=r"^document 2: spec\.targets\.0: secret:a/web-tls is also"
    ):
        parse_service_documents(text)
    # Only the same spelling: another namespace, or a default one only the server knows, passes.
    apart = "---\n".join(
        (doc("one", "[{secret: web-tls, namespace: a}]"), doc("two", "[{secret: web-tls}]"))
    )
    assert [s.name for s in parse_service_documents(apart)] == ["one", "two"]


def _stored(env: Env) -> int:
    with env.services.sessions() as session:
        return session.scalar(select(func.count()).select_from(ManagedService)) or 0


@pytest.mark.parametrize(("doc", "message"), INVALID.values(), ids=INVALID.keys())
def test_put_refuses_with_problem_and_stores_nothing(
    env: Env, doc: dict[str, Any], message: str
) -> None:
    name = doc["metadata"]["name"]
    with env.client() as client:
        response = client.put(f"/api/v1/services/{name}", json=doc)
        body = assert_problem(response, 400)
        assert message in body["detail"], body
        assert client.get("/api/v1/services").json()["items"] == []
    assert _stored(env) == 0


def test_put_refuses_an_invalid_replacement_keeping_the_old_spec(env: Env) -> None:
    good = service_doc("web", dns=("web.example.internal",))
    with env.client() as client:
        created = client.put("/api/v1/services/web", json=good)
        assert created.status_code == 201, created.text
        assert created.json()["generation"] == 1
        bad = _with(f"{SSC}.subjectAltNames", [{"dns": "ok.example"}, {"ip": "nope"}], good)
        body = assert_problem(client.put("/api/v1/services/web", json=bad), 400)
        assert f"{SSC}.subjectAltNames.1: nope" in body["detail"]
        mismatch = assert_problem(
            client.put("/api/v1/services/other", json=good), 400
        )  # the URL names another service
        assert "does not match the URL name" in mismatch["detail"]
        current = client.get("/api/v1/services/web").json()
    assert current["generation"] == 1
    assert current["spec"] == parse_service(good).to_document()
    assert _stored(env) == 1


def _audited(env: Env) -> int:
    with env.services.sessions() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def test_put_dry_run_checks_everything_and_stores_nothing(env: Env) -> None:
    # What `certctl apply` asks of every document before it applies any.
    web = service_doc("web", targets=[{"secret": "shared-tls"}])
    with env.client() as client:
        audited = _audited(env)
        would = client.put("/api/v1/services/web?dry_run=true", json=web)
        assert would.status_code == 201, would.text  # as the write would answer
        assert would.json()["generation"] == 1
        assert would.json()["spec"] == parse_service(web).to_document()
        assert_problem(client.get("/api/v1/services/web"), 404)
        assert (_stored(env), _audited(env)) == (0, audited)

        assert client.put("/api/v1/services/web?dry_run=false", json=web).status_code == 201
        edited = _with(f"{SSC}.subjectAltNames", [{"dns": "web.example.internal"}], web)
        would = client.put("/api/v1/services/web?dry_run=true", json=edited)
        assert (would.status_code, would.json()["generation"]) == (200, 2)
        unchanged = client.put("/api/v1/services/web?dry_run=true", json=web)
        assert (unchanged.status_code, unchanged.json()["generation"]) == (200, 1)
        assert client.get("/api/v1/services/web").json()["generation"] == 1

        # The write's own refusals: a target another service has, a name the URL does not give.
        other = service_doc("other", targets=[{"secret": "shared-tls"}])
        body = assert_problem(client.put("/api/v1/services/other?dry_run=true", json=other), 409)
        assert (
            body["detail"] == "spec.targets.0: secret:shared-tls is already a target of service web"
        )
        body = assert_problem(client.put("/api/v1/services/else?dry_run=true", json=web), 400)
        assert "does not match the URL name" in body["detail"]
        body = assert_problem(client.put("/api/v1/services/web?dry_run=yes", json=web), 400)
        assert body["detail"] == "dry_run=yes: must be true or false"
        body = assert_problem(client.put("/api/v1/services/web?dryrun=true", json=edited), 400)
        assert body["detail"] == "unknown query parameter(s): dryrun"  # not written instead
        for twice in ("dry_run=true&dry_run=false", "dry_run=false&dry_run=true"):
            # Read as its last value, the first was a write for a caller asking for a check.
            body = assert_problem(client.put(f"/api/v1/services/web?{twice}", json=edited), 400)
            assert body["detail"] == "dry_run given more than once"
        assert client.get("/api/v1/services/web").json()["generation"] == 1
    assert (_stored(env), _audited(env)) == (1, audited + 1)  # the one real write


@pytest.mark.parametrize(
    "reload",
    [
        "systemctl reload nginx",
        "sh -c 'nginx -t && nginx -s reload'",
        "find /srv/tls -exec touch {} \\;",
        "cmd --opt='a>b' \"x|y\"",
    ],
)
def test_reload_commands_with_quoted_or_escaped_operators_are_accepted(reload: str) -> None:
    doc = _with("spec.targets", [{"directory": "/etc/web/tls", "reload": reload}])
    assert parse_service(doc).spec.targets[0].reload == reload  # type: ignore[union-attr]
