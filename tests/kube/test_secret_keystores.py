"""Secret targets' PKCS#12 keystores (``keystores.pkcs12``, as cert-manager's Certificate).

Through the server's hooks and the fake API server; the keystores are opened by ``openssl``
and Java's ``keytool``, as the Elasticsearch-style services they are for would open them.
"""

from __future__ import annotations

import base64
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certctl.kubeapi import KubeConnection
from certctl.pki import load_material
from certctl.services.service_settings import ServiceSettings
from certctl.targets.kubernetes import SecretWriter, WriteResult
from tests._tools import failed, ok, run
from tests.kube.conftest import INSTALLATION, NAMESPACE, KubePki
from tests.kube.fake_apiserver import FakeApiServer
from tests.kube.test_secret_target import _server_config
from tests.services.conftest import Env, service_doc

LABEL = {"certctl.io/keystore-password": "true"}
PASSWORD = "s3cret-Keystore~pw"
WHERE = ("apps", "es-http-certs")
PW_SECRET_URL = "/api/v1/namespaces/apps/secrets/es-keystore-password"
TARGET_URL = "/api/v1/namespaces/apps/secrets/es-http-certs"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def target(create: bool = True) -> dict[str, Any]:
    ref = {"name": "es-keystore-password", "key": "password"}
    return {
        "secret": "es-http-certs",
        "namespace": "apps",
        "keystores": {"pkcs12": {"create": create, "passwordSecretRef": ref}},
    }


def put_password(apiserver: FakeApiServer, value: bytes, labels: dict[str, str] = LABEL) -> None:
    apiserver.put_secret(
        "apps",
        "es-keystore-password",
        metadata={"labels": dict(labels)},
        data={"password": b64(value), "other": b64(b"unrelated")},
    )


def hooked(env: Env, apiserver: FakeApiServer, sa_dir: Path) -> ServiceSettings:
    """The settings the server builds: Secret writer and password reader on the fake API."""
    from certctl.server.kubernetes import keystore_password_reader, secret_target_writer

    config = _server_config(apiserver, sa_dir)
    return env.settings_with(
        secret_writer=secret_target_writer(config, INSTALLATION),
        keystore_password_reader=keystore_password_reader(config),
    )


def secret_file(apiserver: FakeApiServer, key: str, path: Path) -> Path:
    path.write_bytes(base64.b64decode(apiserver.secrets[WHERE]["data"][key]))
    return path


def keytool_entries(store: Path, password: str) -> dict[str, str]:
    """``keytool -list``'s entries: alias → type (``PrivateKeyEntry``, ``trustedCertEntry``)."""
    listing = ok(
        run("keytool", "-list", "-storetype", "PKCS12", "-keystore", store, "-storepass", password)
    ).stdout
    entries = {}
    for line in listing.splitlines():
        alias, _, rest = line.partition(", ")
        kind = rest.rstrip(", ").rpartition(", ")[2]
        if kind.endswith("Entry"):
            entries[alias] = kind
    return entries


def test_keystore_and_truststore_open_in_openssl_and_keytool_and_are_kept_across_resyncs(
    apiserver: FakeApiServer,
    sa_dir: Path,
    env: Env,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from certctl.server.scheduler import Scheduler
    from certctl.services import service_schedule

    # Made with `kubectl create secret generic --from-file`: the file's newline is dropped.
    put_password(apiserver, PASSWORD.encode() + b"\n")
    settings = hooked(env, apiserver, sa_dir)
    env.put(service_doc("es", dns=("es.example.internal",), targets=[target()]))
    scheduler = Scheduler(env.services, settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 1
    row = env.row("es")
    assert row.conditions["Ready"]["status"] is True, row.conditions
    secret = apiserver.secrets[WHERE]
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt", "keystore.p12", "truststore.p12"}

    # openssl: the key entry is the Secret's own tls.crt and tls.key, with the CA.
    keystore = secret_file(apiserver, "keystore.p12", tmp_path / "keystore.p12")
    shown = ok(run("openssl", "pkcs12", "-info", "-in", keystore, "-passin", f"pass:{PASSWORD}",
                   "-nodes")).stdout  # fmt: skip
    dumped = load_material(shown.encode())
    pem = {k: base64.b64decode(v) for k, v in secret["data"].items() if not k.endswith(".p12")}
    leaf = load_material(pem["tls.crt"]).certificates[0]
    ca = load_material(pem["ca.crt"]).certificates[0]
    assert set(dumped.certificates) == {leaf, ca}
    assert dumped.private_key is not None
    assert dumped.private_key.public_key() == leaf.public_key()
    # keytool: a key entry (alias: the service) and the CA as the trusted entry "ca".
    assert keytool_entries(keystore, PASSWORD) == {
        "es": "PrivateKeyEntry",
        "ca": "trustedCertEntry",
    }
    truststore = secret_file(apiserver, "truststore.p12", tmp_path / "truststore.p12")
    assert keytool_entries(truststore, PASSWORD) == {"ca": "trustedCertEntry"}
    shown = ok(run("openssl", "pkcs12", "-info", "-in", truststore, "-passin",
                   f"pass:{PASSWORD}", "-nokeys")).stdout  # fmt: skip
    assert load_material(shown.encode()).certificates == [ca]
    # Negative twins: the newline kept, or another password, opens neither.
    wrong = failed(run("keytool", "-list", "-storetype", "PKCS12", "-keystore", keystore,
                       "-storepass", PASSWORD + "x"))  # fmt: skip
    assert "password was incorrect" in wrong.stdout + wrong.stderr
    failed(run("openssl", "pkcs12", "-info", "-in", truststore, "-passin", "pass:nope", "-nokeys"))

    # A resync with nothing changed reads both Secrets and writes nothing: the keystores
    # (random salt and IV) are not made again.
    data = dict(secret["data"])
    apiserver.clear()
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    assert scheduler.tick() == 1
    assert apiserver.paths() == [("GET", PW_SECRET_URL), ("GET", TARGET_URL)]
    assert apiserver.secrets[WHERE]["data"] == data

    # keystore.p12 edited by hand: written anew at the next resync; the truststore kept.
    apiserver.secrets[WHERE]["data"]["keystore.p12"] = b64(b"not a keystore")
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    with caplog.at_level(logging.WARNING, logger="certctl.services"):
        assert scheduler.tick() == 1
    restored = apiserver.secrets[WHERE]["data"]
    assert restored["truststore.p12"] == data["truststore.p12"]
    assert restored["keystore.p12"] not in (data["keystore.p12"], b64(b"not a keystore"))
    assert keytool_entries(secret_file(apiserver, "keystore.p12", keystore), PASSWORD) == {
        "es": "PrivateKeyEntry",
        "ca": "trustedCertEntry",
    }
    assert "changed outside certctl; restored" in caplog.text
    caplog.clear()

    # The password rotated in its Secret: both keystores follow it at the next resync,
    # as a new delivery (not "changed outside certctl").
    put_password(apiserver, b"rotated-Password-2")
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    with caplog.at_level(logging.WARNING, logger="certctl.services"):
        assert scheduler.tick() == 1
    assert "outside certctl" not in caplog.text
    rotated = apiserver.secrets[WHERE]["data"]
    assert rotated["tls.crt"] == data["tls.crt"]  # the same certificate
    for key in ("keystore.p12", "truststore.p12"):
        store = secret_file(apiserver, key, tmp_path / key)
        assert keytool_entries(store, "rotated-Password-2")
        failed(run("keytool", "-list", "-storetype", "PKCS12", "-keystore", store,
                   "-storepass", PASSWORD))  # fmt: skip
    # The password is nowhere in what certctl records.
    assert PASSWORD not in str(env.row("es").conditions)
    assert PASSWORD not in str(env.row("es").delivered)

    # Switched off (create: false): the keystores leave the Secret, the PEM keys stay.
    env.put(service_doc("es", dns=("es.example.internal",), targets=[target(create=False)]))
    env.at(env.now + timedelta(minutes=1))
    assert scheduler.tick() == 1
    assert set(apiserver.secrets[WHERE]["data"]) == {"tls.crt", "tls.key", "ca.crt"}


def test_a_renewed_certificate_reaches_the_keystore(
    apiserver: FakeApiServer, sa_dir: Path, env: Env, tmp_path: Path
) -> None:
    from certctl.services import service_reconcile

    put_password(apiserver, PASSWORD.encode())
    settings = hooked(env, apiserver, sa_dir)
    env.put(service_doc("es", targets=[target()]))
    service_reconcile.reconcile_service(env.services, settings, "es", env.now)
    before = dict(apiserver.secrets[WHERE]["data"])
    # A new SAN: a new certificate, so a new keystore (the CA, and its truststore, stay).
    env.put(service_doc("es", dns=("es-0.example.internal",), targets=[target()]))
    row = service_reconcile.reconcile_service(
        env.services, settings, "es", env.at(env.now + timedelta(minutes=1))
    )
    assert row.conditions["Ready"]["status"] is True, row.conditions
    after = apiserver.secrets[WHERE]["data"]
    assert after["tls.crt"] != before["tls.crt"]
    assert after["truststore.p12"] == before["truststore.p12"]
    shown = ok(run("openssl", "pkcs12", "-in", secret_file(apiserver, "keystore.p12",
                   tmp_path / "k.p12"), "-passin", f"pass:{PASSWORD}", "-nokeys",
                   "-clcerts")).stdout  # fmt: skip
    assert (
        load_material(shown.encode()).certificates
        == load_material(base64.b64decode(after["tls.crt"])).certificates[:1]
    )


def test_a_custom_certificate_without_its_ca_gets_no_truststore(
    apiserver: FakeApiServer, sa_dir: Path, env: Env, tmp_path: Path
) -> None:
    # As cert-manager: truststore.p12 only when the issuer's CA is known.
    from certctl.services import service_reconcile
    from tests.services.conftest import make_ca, make_leaf, write_secret

    put_password(apiserver, PASSWORD.encode())
    leaf = make_leaf(make_ca("public-ca", env.now), "es", env.now, dns=("es",))
    write_secret(env.secrets_dir, "custom", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem})
    env.put(service_doc("es", secret="custom", targets=[target()]))
    row = service_reconcile.reconcile_service(
        env.services, hooked(env, apiserver, sa_dir), "es", env.now
    )
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert set(apiserver.secrets[WHERE]["data"]) == {"tls.crt", "tls.key", "keystore.p12"}
    keystore = secret_file(apiserver, "keystore.p12", tmp_path / "k.p12")
    assert keytool_entries(keystore, PASSWORD) == {"es": "PrivateKeyEntry"}


@pytest.mark.parametrize(
    ("password", "labels", "message"),
    [
        (
            PASSWORD.encode(),
            {},
            "secret:apps/es-http-certs: keystore password: Secret apps/es-keystore-password is "
            "not labelled certctl.io/keystore-password=true: label it to let Secret targets "
            "use it (kubectl label secret -n apps es-keystore-password "
            "certctl.io/keystore-password=true)",
        ),
        (
            PASSWORD.encode(),
            {"app.kubernetes.io/managed-by": "certctl", **LABEL},
            "secret:apps/es-http-certs: keystore password: Secret apps/es-keystore-password is "
            "one certctl writes (a service's Secret target); keep the password in a Secret of "
            "its own",
        ),
        (
            b"\n",
            LABEL,
            "secret:apps/es-http-certs: keystore password es-keystore-password/password is "
            "empty; put the password there",
        ),
        (
            PASSWORD.encode() + b"\nsecond line\n",
            LABEL,
            "secret:apps/es-http-certs: keystore password es-keystore-password/password holds "
            "more than one line",
        ),
        (
            None,
            LABEL,
            "secret:apps/es-http-certs: keystore password: Secret apps/es-keystore-password "
            "not found (create it, labelled certctl.io/keystore-password=true)",
        ),
    ],
    ids=["not-labelled", "certctl-writes-it", "empty", "two-lines", "absent"],
)
def test_a_password_secret_that_cannot_be_used_fails_the_target_and_writes_nothing(
    apiserver: FakeApiServer,
    sa_dir: Path,
    env: Env,
    password: bytes | None,
    labels: dict[str, str],
    message: str,
) -> None:
    from certctl.services import service_reconcile

    if password is not None:
        put_password(apiserver, password, labels)
    env.put(service_doc("es", targets=[target()]))
    row = service_reconcile.reconcile_service(
        env.services, hooked(env, apiserver, sa_dir), "es", env.now
    )
    assert row.conditions["Ready"]["status"] is False, row.conditions
    assert message in row.conditions["Failed"]["message"]
    assert PASSWORD not in str(row.conditions)
    assert WHERE not in apiserver.secrets
    assert [m for m, _ in apiserver.paths()] == ["GET"]  # the password Secret only


def test_the_key_named_must_be_in_the_secret(
    apiserver: FakeApiServer, sa_dir: Path, env: Env
) -> None:
    from certctl.services import service_reconcile

    put_password(apiserver, PASSWORD.encode())
    ref = {"name": "es-keystore-password", "key": "keystore-password"}
    doc = {**target(), "keystores": {"pkcs12": {"create": True, "passwordSecretRef": ref}}}
    env.put(service_doc("es", targets=[doc]))
    row = service_reconcile.reconcile_service(
        env.services, hooked(env, apiserver, sa_dir), "es", env.now
    )
    assert (
        "keystore password: Secret apps/es-keystore-password has no key keystore-password"
        in row.conditions["Failed"]["message"]
    )
    assert WHERE not in apiserver.secrets


def test_a_password_java_cannot_use_is_delivered_with_a_warning(
    apiserver: FakeApiServer, sa_dir: Path, env: Env, tmp_path: Path
) -> None:
    from certctl.services import service_reconcile

    put_password(apiserver, "pässwörd".encode())
    env.put(service_doc("es", targets=[target()]))
    row = service_reconcile.reconcile_service(
        env.services, hooked(env, apiserver, sa_dir), "es", env.now
    )
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert (
        "secret:apps/es-http-certs: the PKCS#12 password has characters outside printable "
        "ASCII: OpenSSL opens the file, but Java (keytool, Elasticsearch, Tomcat …) cannot"
    ) in row.conditions["Ready"]["message"]
    keystore = secret_file(apiserver, "keystore.p12", tmp_path / "k.p12")
    ok(run("openssl", "pkcs12", "-info", "-in", keystore, "-passin", "pass:pässwörd", "-nokeys"))


def test_a_value_made_from_the_current_one_leaves_the_secret_unchanged(
    apiserver: FakeApiServer, connection: KubeConnection, pki: KubePki
) -> None:
    """SecretWriter gives a callable value the Secret's current bytes (None when absent)."""
    writer = SecretWriter(connection, owner=INSTALLATION)
    crt, key = pki.leaf("es.example.internal")
    seen: list[bytes | None] = []

    def keep(current: bytes | None) -> bytes:
        seen.append(current)
        return current if current is not None else b"made"

    def write() -> WriteResult:
        return writer.write_tls(
            "es-tls", certificate_pem=crt, private_key_pem=key, ca_pem=None, extra={"x.p12": keep}
        )

    assert write() is WriteResult.CREATED
    assert write() is WriteResult.UNCHANGED
    assert seen == [None, b"made"]
    base = f"/api/v1/namespaces/{NAMESPACE}/secrets"
    assert apiserver.paths()[-1] == ("GET", f"{base}/es-tls")
    # Edited into something that is not base64: the callable gets None, makes it anew.
    apiserver.secrets[(NAMESPACE, "es-tls")]["data"]["x.p12"] = "%%%"
    assert write() is WriteResult.UPDATED
    assert seen[-1] is None
    assert apiserver.secrets[(NAMESPACE, "es-tls")]["data"]["x.p12"] == b64(b"made")


def test_a_password_that_is_not_utf8_fails_the_target_in_one_line(
    apiserver: FakeApiServer, sa_dir: Path, env: Env
) -> None:
    # `openssl rand 24 > pw; kubectl create secret generic --from-file=password=pw`: bytes
    # PKCS#12 cannot take (its passwords are text), refused as the other unusable passwords.
    from certctl.services import service_reconcile

    put_password(apiserver, b"\xff\xfe" + PASSWORD.encode())
    env.put(service_doc("es", targets=[target()]))
    row = service_reconcile.reconcile_service(
        env.services, hooked(env, apiserver, sa_dir), "es", env.now
    )
    assert row.conditions["Ready"]["status"] is False, row.conditions
    assert (
        "secret:apps/es-http-certs: keystore password es-keystore-password/password: the "
        "password is not valid UTF-8"
    ) in row.conditions["Failed"]["message"]
    assert PASSWORD not in str(row.conditions)
    assert WHERE not in apiserver.secrets
