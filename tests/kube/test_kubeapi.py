"""certctl.kubeapi: in-cluster and kubeconfig connections against the fake API server."""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from certctl.errors import InvalidRequest
from certctl.kubeapi import (
    KubeApiError,
    KubeConnection,
    from_kubeconfig,
    in_cluster,
    load_connection,
    transport_error,
)
from certctl.pki import KeyType, certs_to_pem, common_name_dn, create_root_ca, generate_private_key
from certctl.targets.kubernetes import SecretWriter, WriteResult
from tests.kube.conftest import CERTCTL_SA_TOKEN, INSTALLATION, NAMESPACE, NOW, KubePki
from tests.kube.fake_apiserver import FakeApiServer


def test_in_cluster_reads_the_serviceaccount_mount(
    apiserver: FakeApiServer, connection: KubeConnection, sa_dir: Path
) -> None:
    assert connection.server == apiserver.url
    assert connection.namespace == NAMESPACE
    assert CERTCTL_SA_TOKEN not in repr(connection)
    SecretWriter(connection, owner=INSTALLATION).write("one", {"a": b"1"})
    # Projected tokens rotate: the next call must send the file's new content.
    (sa_dir / "token").write_text("rotated-token\n")
    apiserver.accepted_tokens.add("rotated-token")
    SecretWriter(connection, owner=INSTALLATION).write("two", {"a": b"1"})
    assert [r.bearer for r in apiserver.requests] == [CERTCTL_SA_TOKEN] * 2 + ["rotated-token"] * 2


def test_in_cluster_verifies_the_api_server(
    apiserver: FakeApiServer, sa_dir: Path, tmp_path: Path, pki: KubePki
) -> None:
    """Negative twin: with another CA in ca.crt the TLS handshake fails, nothing is sent."""
    other_key = generate_private_key(KeyType.EC_P256)
    other = create_root_ca(
        other_key, common_name_dn("Other CA"), validity=timedelta(days=30), now=NOW
    )
    (sa_dir / "ca.crt").write_bytes(certs_to_pem([other.certificate]))
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(apiserver.port)}
    conn = in_cluster(environ=env, service_account_dir=sa_dir)
    # The reason is named: before, "(ConnectError)" read like a network outage.
    match = r"cannot reach the Kubernetes API \(TLS certificate verify failed: "
    with pytest.raises(KubeApiError, match=match):
        SecretWriter(conn, owner=INSTALLATION).write("x", {"a": b"1"})
    assert apiserver.requests == []


def _kubelet_swap(sa_dir: Path, ca_pem: bytes, generation: int) -> None:
    """Update ca.crt as the kubelet updates a projected volume: a new timestamped directory,
    then an atomic rename of the ``..data`` symlink; ``ca.crt`` links to ``..data/ca.crt``."""
    new = sa_dir / f"..2026_12_03_15_00_0{generation}"
    new.mkdir()
    (new / "ca.crt").write_bytes(ca_pem)
    (sa_dir / "..data_tmp").symlink_to(new.name)
    (sa_dir / "..data_tmp").rename(sa_dir / "..data")
    if not (sa_dir / "ca.crt").is_symlink():
        (sa_dir / "ca.crt").unlink()
        (sa_dir / "ca.crt").symlink_to("..data/ca.crt")


def test_a_rotated_cluster_ca_is_trusted_without_a_restart(
    apiserver: FakeApiServer, sa_dir: Path, pki: KubePki, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, ca.crt was read once at start: after the cluster CA was rotated (the API
    server's certificate now from the new CA, the kubelet updating ca.crt in every pod)
    each call failed with 'certificate verify failed' until certctl was restarted."""
    old = create_root_ca(
        generate_private_key(KeyType.EC_P256),
        common_name_dn("Old cluster CA"),
        validity=timedelta(days=30),
        now=NOW,
    )
    old_pem = certs_to_pem([old.certificate])
    _kubelet_swap(sa_dir, old_pem, 1)  # the pod started while the old CA was current
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(apiserver.port)}
    conn = in_cluster(environ=env, service_account_dir=sa_dir)
    writer = SecretWriter(conn, owner=INSTALLATION)
    with pytest.raises(KubeApiError, match="TLS certificate verify failed"):
        writer.write("x", {"a": b"1"})
    # Rotation: the bundle carries both CAs for a while, then the new one alone.
    _kubelet_swap(sa_dir, old_pem + pki.ca_file.read_bytes(), 2)
    with caplog.at_level(logging.INFO, logger="certctl.kubeapi"):
        assert writer.write("x", {"a": b"1"}) == WriteResult.CREATED
    assert "now trust it" in caplog.text
    _kubelet_swap(sa_dir, pki.ca_file.read_bytes(), 3)
    assert writer.write("x", {"a": b"2"}) == WriteResult.UPDATED
    # A content that cannot be loaded keeps the last good CA (said once), and so does a
    # missing file; the TokenReview client (async) follows the same file.
    caplog.clear()
    _kubelet_swap(sa_dir, b"-----BEGIN CERTIFICATE-----\ntruncated", 4)
    with caplog.at_level(logging.WARNING, logger="certctl.kubeapi"):
        assert writer.write("x", {"a": b"3"}) == WriteResult.UPDATED
        assert writer.write("x", {"a": b"4"}) == WriteResult.UPDATED
    assert caplog.text.count("the previous one is still used") == 1

    async def review() -> int:
        async with conn.async_client() as client:
            return (await client.get("/api/v1/namespaces/certs/secrets/x")).status_code

    assert asyncio.run(review()) == 200


def test_a_kubeconfig_ca_file_is_followed_too(
    apiserver: FakeApiServer, pki: KubePki, tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_bytes(b"")  # not yet written: refused at start, as before
    (tmp_path / "tok").write_text(CERTCTL_SA_TOKEN)
    path = _kubeconfig(
        tmp_path / "config",
        {"tokenFile": "tok"},
        {"server": apiserver.url, "certificate-authority": "ca.pem"},
    )
    with pytest.raises(InvalidRequest, match="cannot load Kubernetes TLS material"):
        from_kubeconfig(path)
    other = create_root_ca(
        generate_private_key(KeyType.EC_P256),
        common_name_dn("Old cluster CA"),
        validity=timedelta(days=30),
        now=NOW,
    )
    (tmp_path / "ca.pem").write_bytes(certs_to_pem([other.certificate]))
    conn = from_kubeconfig(path, namespace=NAMESPACE)
    with pytest.raises(KubeApiError, match="TLS certificate verify failed"):
        SecretWriter(conn, owner=INSTALLATION).write("x", {"a": b"1"})
    (tmp_path / "ca.pem").write_bytes(pki.ca_file.read_bytes())
    assert SecretWriter(conn, owner=INSTALLATION).write("x", {"a": b"1"}) == WriteResult.CREATED


def test_in_cluster_outside_a_cluster(sa_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match="KUBERNETES_SERVICE_HOST is unset"):
        in_cluster(environ={}, service_account_dir=sa_dir)
    with pytest.raises(InvalidRequest, match="must be an https:// URL"):
        in_cluster(api_server="http://127.0.0.1:6443", service_account_dir=sa_dir)
    conn = in_cluster(
        environ={"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"},
        service_account_dir=sa_dir,
    )
    assert conn.server == "https://[fd00::1]:443"


def _kubeconfig(path: Path, user: dict[str, Any], cluster: dict[str, Any]) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "contexts": [
            {"name": "test", "context": {"cluster": "c", "user": "u", "namespace": "payments"}}
        ],
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_kubeconfig_with_client_certificate_data(
    apiserver: FakeApiServer, pki: KubePki, tmp_path: Path
) -> None:
    path = _kubeconfig(
        tmp_path / "config",
        {
            "client-certificate-data": base64.b64encode(pki.client_cert_pem).decode(),
            "client-key-data": base64.b64encode(pki.client_key_pem).decode(),
        },
        {
            "server": apiserver.url,
            "certificate-authority-data": base64.b64encode(pki.ca_file.read_bytes()).decode(),
        },
    )
    conn = load_connection(kubeconfig=path)
    assert conn.namespace == "payments"
    SecretWriter(conn, owner=INSTALLATION).write("x", {"a": b"1"})
    assert {(r.bearer, r.client_cn) for r in apiserver.requests} == {
        (None, "certctl-kubeconfig-user")
    }
    assert ("payments", "x") in apiserver.secrets


def test_kubeconfig_with_token_file_and_relative_ca(
    apiserver: FakeApiServer, pki: KubePki, tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.ca_file.read_bytes())
    (tmp_path / "tok").write_text(CERTCTL_SA_TOKEN)
    path = _kubeconfig(
        tmp_path / "config",
        {"tokenFile": "tok"},
        {"server": apiserver.url, "certificate-authority": "ca.pem"},
    )
    conn = from_kubeconfig(path, namespace=NAMESPACE)
    SecretWriter(conn, owner=INSTALLATION).write("x", {"a": b"1"})
    assert {r.bearer for r in apiserver.requests} == {CERTCTL_SA_TOKEN}


def test_a_token_a_header_cannot_carry_is_never_quoted(
    apiserver: FakeApiServer,
    connection: KubeConnection,
    sa_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A token file of two lines (a second token pasted below the first): h11 refused the
    # header and its message, "Illegal header value b'Bearer <token>...'", became the
    # Secret target's error, in the log and in the service's status for every reader.
    (sa_dir / "token").write_text(f"{CERTCTL_SA_TOKEN}\nsecond-line-secret\n")
    with pytest.raises(KubeApiError) as caught:
        SecretWriter(connection, owner=INSTALLATION).write("x", {"a": b"1"})
    assert caught.value.detail == (
        f"{sa_dir / 'token'}: the Kubernetes token holds a line break, a space or a control "
        "character, which an Authorization header cannot carry; put the token alone on one line"
    )
    assert CERTCTL_SA_TOKEN not in caplog.text
    assert apiserver.requests == []


def test_a_request_refused_before_sending_is_named_without_its_headers() -> None:
    # Whatever header h11 refuses, its message quotes the value: never in a log line.
    refused = httpx.LocalProtocolError("Illegal header value b'Bearer the-token\\n'")
    assert transport_error(refused) == (
        "LocalProtocolError: the request could not be sent (an invalid header)"
    )


def test_a_kubeconfig_token_is_taken_without_surrounding_whitespace(
    apiserver: FakeApiServer, pki: KubePki, tmp_path: Path
) -> None:
    # "token: |" (a YAML block) ends the token with a newline: kubectl strips a tokenFile's,
    # and the header with it was refused, quoting the token.
    path = tmp_path / "config"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        f"clusters: [{{name: k, cluster: {{server: '{apiserver.url}', "
        f"certificate-authority: '{pki.ca_file}'}}}}]\n"
        f"users:\n- name: u\n  user:\n    token: |\n      {CERTCTL_SA_TOKEN}\n"
    )
    conn = from_kubeconfig(path, namespace=NAMESPACE)
    SecretWriter(conn, owner=INSTALLATION).write("x", {"a": b"1"})
    assert {r.bearer for r in apiserver.requests} == {CERTCTL_SA_TOKEN}
    # Negative twin: a token with a line break inside is refused, named, never quoted.
    path.write_text(path.read_text().replace(f"      {CERTCTL_SA_TOKEN}\n", "      a\n      b\n"))
    with pytest.raises(KubeApiError, match=r"^kubeconfig token: the Kubernetes token holds"):
        SecretWriter(from_kubeconfig(path, namespace=NAMESPACE), owner=INSTALLATION).write(
            "x", {"a": b"1"}
        )


def test_kubeconfig_tls_server_name_is_the_name_verified(
    apiserver: FakeApiServer, pki: KubePki, tmp_path: Path
) -> None:
    """The fake's certificate names localhost and 127.0.0.1. Before, tls-server-name was
    ignored: the URL's host was checked, so a kubeconfig naming the API server behind an
    address its certificate lacks failed every call."""
    (tmp_path / "ca.pem").write_bytes(pki.ca_file.read_bytes())
    (tmp_path / "tok").write_text(CERTCTL_SA_TOKEN)
    cluster = {"server": apiserver.url, "certificate-authority": "ca.pem"}

    def writer(name: str) -> SecretWriter:
        path = _kubeconfig(
            tmp_path / "config", {"tokenFile": "tok"}, {**cluster, "tls-server-name": name}
        )
        return SecretWriter(from_kubeconfig(path, namespace=NAMESPACE), owner=INSTALLATION)

    with pytest.raises(KubeApiError, match="TLS certificate verify failed: Hostname mismatch"):
        writer("kube-apiserver.example.internal").write("x", {"a": b"1"})
    assert apiserver.requests == []
    assert writer("localhost").write("x", {"a": b"1"}) is WriteResult.CREATED
    # The async client (TokenReview) checks the same name.
    conn = from_kubeconfig(tmp_path / "config", namespace=NAMESPACE)

    async def review() -> int:
        async with conn.async_client() as client:
            return (await client.get("/api/v1/namespaces/certs/secrets/x")).status_code

    assert asyncio.run(review()) == 200
    wrong = from_kubeconfig(
        _kubeconfig(
            tmp_path / "config2", {"tokenFile": "tok"}, {**cluster, "tls-server-name": "nope"}
        ),
        namespace=NAMESPACE,
    )

    async def refused() -> None:
        async with wrong.async_client() as client:
            await client.get("/api/v1/namespaces/certs/secrets/x")

    with pytest.raises(httpx.ConnectError, match="Hostname mismatch"):
        asyncio.run(refused())


@pytest.mark.parametrize(
    ("user", "cluster", "message"),
    [
        ({"exec": {"command": "aws"}}, {}, "'exec' is not supported"),
        ({"auth-provider": {"name": "gcp"}}, {}, "'auth-provider' is not supported"),
        ({}, {"insecure-skip-tls-verify": True}, "insecure-skip-tls-verify is not supported"),
        # Before, these were skipped: the calls went out as the user itself (not as the
        # identity it impersonates, with its rights) or straight past the proxy.
        ({"token": "t", "as": "system:serviceaccount:certs:certctl"}, {}, "'as' is not supported"),
        ({"token": "t", "as-groups": ["viewers"]}, {}, "'as-groups' is not supported"),
        ({"username": "admin", "password": "pw"}, {}, "'username' is not supported"),
        ({"token": "t"}, {"proxy-url": "http://proxy:3128"}, "'proxy-url' is not supported"),
        ({}, {"server": "http://x"}, "must be an https:// URL"),
        ({}, {"certificate-authority-data": "%%%"}, "not valid base64"),
        ({}, {"certificate-authority": "missing.pem"}, "cannot load Kubernetes TLS material"),
    ],
)
def test_kubeconfig_refusals(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any], message: str
) -> None:
    path = _kubeconfig(tmp_path / "config", user, {"server": "https://127.0.0.1:1", **cluster})
    with pytest.raises(InvalidRequest, match=message):
        from_kubeconfig(path)


def test_kubeconfig_excludes_explicit_settings(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"excludes kubernetes\.api-server"):
        load_connection(kubeconfig=tmp_path / "c", api_server="https://x")
    with pytest.raises(InvalidRequest, match="cannot read kubeconfig"):
        load_connection(kubeconfig=tmp_path / "missing")
