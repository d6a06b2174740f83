"""The server's Kubernetes wiring: TokenReview, the CA Secret, Secret targets, custom Secrets.

The connection (``kubernetes.*``) is built where a feature needs it, so a server that uses none
of them never needs a cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from certctl.auth.kubernetes import TokenReviewAuthenticator
from certctl.errors import CertctlError, InvalidRequest
from certctl.kubeapi import KubeApiError, KubeConnection, load_connection
from certctl.server.config import ServerConfig
from certctl.targets.kubernetes import SecretValue, SecretWriter, WriteResult

__all__ = [
    "CustomSecrets",
    "default_namespace",
    "keystore_password_reader",
    "kube_connection",
    "kubernetes_features",
    "secret_target_writer",
]

log = logging.getLogger("certctl.server")
# The keys of a Secret target write_tls takes by name; any other (a keystore) is extra.
_PEM_KEYS = ("tls.crt", "tls.key", "ca.crt", "client-trust.crt")


def kube_connection(config: ServerConfig) -> KubeConnection:
    """The Kubernetes API connection ``kubernetes.*`` describes.

    Raises:
        InvalidRequest: see :func:`certctl.kubeapi.load_connection`.
    """
    k = config.kubernetes
    return load_connection(
        kubeconfig=k.kubeconfig,
        context=k.context,
        api_server=k.api_server,
        ca_file=k.ca_file,
        token_file=k.token_file,
        namespace=k.namespace,
    )


def kubernetes_features(
    config: ServerConfig, ca_file: Path, installation: str
) -> tuple[TokenReviewAuthenticator | None, Callable[[], None] | None]:
    """The TokenReview authenticator and the CA Secret publisher, each None when unused.

    ``auth.kubernetes.enabled`` turns on the first, ``tls.publish-ca-secret`` the second;
    ``installation`` (``store.db.installation_id``) owns the Secrets written.
    """
    secret = config.tls.publish_ca_secret
    if secret and config.tls.mode != "self-signed":
        raise InvalidRequest("tls.publish-ca-secret needs tls.mode=self-signed")
    if not (config.auth.kubernetes.enabled or secret):
        return None, None
    connection = kube_connection(config)
    kube_auth = config.auth.kubernetes
    authenticator = (
        TokenReviewAuthenticator(connection, audiences=kube_auth.audiences)
        if kube_auth.enabled
        else None
    )
    if not secret:
        return authenticator, None
    writer = SecretWriter(connection, owner=installation)

    def publish_ca() -> None:
        result = writer.write(
            secret,
            {"ca.crt": ca_file.read_bytes()},
            labels={"app.kubernetes.io/name": "certctl", "app.kubernetes.io/component": "ca"},
        )
        if result != "unchanged":
            log.info("CA certificate %s in Secret %s/%s", result, writer.namespace, secret)

    return authenticator, publish_ca


def secret_target_writer(
    config: ServerConfig, installation: str
) -> Callable[[Any, dict[str, SecretValue]], bool]:
    """Managed-services Secret targets through ``targets.kubernetes``, owned by ``installation``.

    The Kubernetes connection (``kubernetes.*``) is built on first use, so a server without
    Secret targets never needs one; every failure becomes a DeliveryError for that target.
    """
    from certctl.targets.directory import DeliveryError

    connections: list[KubeConnection] = []

    def write(target: Any, files: dict[str, SecretValue]) -> bool:
        if "tls.crt" not in files or "tls.key" not in files:
            raise DeliveryError("no certificate to deliver (TLS disabled); Secret left as it is")
        try:
            if not connections:
                connections.append(kube_connection(config))
            writer = SecretWriter(connections[0], namespace=target.namespace, owner=installation)
            pem = {n: v for n, v in files.items() if n in _PEM_KEYS and isinstance(v, bytes)}
            result = writer.write_tls(
                target.secret,
                certificate_pem=pem["tls.crt"],
                private_key_pem=pem["tls.key"],
                ca_pem=pem.get("ca.crt"),
                client_trust_pem=pem.get("client-trust.crt"),
                labels=target.labels,
                extra={n: v for n, v in files.items() if n not in _PEM_KEYS},
            )
        except CertctlError as exc:
            raise DeliveryError(exc.detail) from None
        return result is not WriteResult.UNCHANGED

    return write


def keystore_password_reader(config: ServerConfig) -> Callable[[str | None, str, str], bytes]:
    """Secret targets' ``keystores.pkcs12.passwordSecretRef``: (namespace, name, key) → value.

    The connection is built on first use, as for Secret targets; every failure becomes a
    DeliveryError (API unreachable, no connection) or InvalidRequest (the Secret's fault).
    """
    from certctl.targets.directory import DeliveryError
    from certctl.targets.kubernetes import read_keystore_password

    connections: list[KubeConnection] = []

    def read(namespace: str | None, name: str, key: str) -> bytes:
        try:
            if not connections:
                connections.append(kube_connection(config))
        except CertctlError as exc:
            raise DeliveryError(exc.detail) from None
        try:
            return read_keystore_password(connections[0], name, key, namespace=namespace)
        except KubeApiError as exc:
            raise DeliveryError(exc.detail) from None

    return read


class CustomSecrets:
    """Managed services' ``certificate.secretName`` read from Secrets in kubernetes.namespace.

    Used when ``secrets-dir`` has no directory of that name. The connection is built on first
    use, as for Secret targets; every failure is the service's InvalidRequest (its Failed
    condition), never a crash of the pass.
    """

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._connection: KubeConnection | None = None
        # Why the last LIST failed (logged when it changes, not at every 10 s pass).
        self._list_failure: str | None = None

    def _connect(self, name: str) -> KubeConnection:
        if self._connection is None:
            try:
                self._connection = kube_connection(self._config)
            except CertctlError as exc:
                from certctl.targets.kubernetes import CUSTOM_CERTIFICATE_LABEL

                where = self._config.effective_secrets_dir / name
                raise InvalidRequest(
                    f"secret {name} not found (expected a directory {where}, or a Kubernetes "
                    f"Secret labelled {CUSTOM_CERTIFICATE_LABEL}=true, which needs a "
                    f"Kubernetes connection: {exc.detail})"
                ) from None
        return self._connection

    def read(self, name: str) -> dict[str, bytes]:
        """The Secret ``name``, with one GET."""
        from certctl.targets.kubernetes import read_custom_certificate

        connection = self._connect(name)
        try:
            data = read_custom_certificate(connection, name)
        except CertctlError as exc:
            raise InvalidRequest(f"secret {name}: {exc.detail}") from None
        if data is None:
            where = self._config.effective_secrets_dir / name
            raise InvalidRequest(
                f"secret {name} not found: neither a directory {where} nor a Kubernetes Secret "
                f"{connection.namespace}/{name}"
            )
        return data

    def for_pass(self) -> Callable[[str], dict[str, bytes]]:
        """A ``read`` for one scheduler pass: one LIST of the labelled Secrets, at first use.

        With a GET per service per pass, 1,000 services were ~100 requests/s to the API
        server. A name the LIST did not return (absent, or not labelled: only a GET tells
        which, for the service's status) is read alone, once in the pass; so is every name
        when the LIST fails (a Role granting ``get`` but not ``list``: as before, one GET
        each).
        """
        listed: dict[str, dict[str, bytes] | InvalidRequest] | None = None
        # A pass reads a secret twice when it reconciles its service (to compare, then to
        # use): both reads get the same answer, from one request.
        alone: dict[str, dict[str, bytes] | InvalidRequest] = {}

        def read(name: str) -> dict[str, bytes]:
            nonlocal listed
            if listed is None:
                listed = self._list()
            found = listed.get(name)
            if found is None:
                found = alone.get(name)
            if found is None:
                try:
                    found = alone[name] = self.read(name)
                except InvalidRequest as exc:
                    found = alone[name] = exc
            if isinstance(found, InvalidRequest):
                raise found
            return dict(found)

        return read

    def _list(self) -> dict[str, dict[str, bytes] | InvalidRequest]:
        """Every labelled Secret of the namespace; {} when they cannot be listed."""
        from certctl.targets.kubernetes import list_custom_certificates

        try:
            listed = list_custom_certificates(self._connect(""))
        except InvalidRequest:
            return {}  # no Kubernetes connection: each read says so
        except CertctlError as exc:
            if exc.detail != self._list_failure:
                # The RBAC advice only where RBAC refused: an unreachable API server or an
                # endless LIST is not fixed by granting anything.
                forbidden = getattr(exc, "status_code", None) == 403
                log.warning(
                    "custom certificates: %s; reading each service's Secret on its own "
                    "(one request per service and pass%s)",
                    exc.detail,
                    "; grant list on secrets" if forbidden else "",
                )
            self._list_failure = exc.detail
            return {}
        if self._list_failure is not None:
            log.info("custom certificates: Secrets are listed again")
            self._list_failure = None
        # Worded as read() words them: the service's status does not depend on which ran.
        return {
            name: InvalidRequest(f"secret {name}: {found.detail}")
            if isinstance(found, InvalidRequest)
            else found
            for name, found in listed.items()
        }


def default_namespace(config: ServerConfig) -> str | None:
    """Where Secret targets without ``namespace`` go, if this server talks to a cluster."""
    if config.kubernetes.namespace:
        return config.kubernetes.namespace
    try:
        return kube_connection(config).namespace
    except CertctlError:
        return None  # no cluster configured: such targets fail at delivery anyway
