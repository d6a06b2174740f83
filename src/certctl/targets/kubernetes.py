"""Kubernetes Secret target: write TLS material into a Secret, creating or updating it in place.

A ``kubernetes.io/tls`` Secret carries ``tls.crt`` (leaf, then intermediates), ``tls.key``,
``ca.crt`` and, with client authentication, ``client-trust.crt``; the Secret volume of a pod
then swaps all keys together. Writes are ``GET`` then ``POST`` (absent) or ``PUT`` with the
``resourceVersion`` read (present), so a concurrent writer makes the ``PUT`` fail with 409
and the write is retried on the fresh object instead of overwriting it blindly. certctl owns
the Secret's ``data``; labels and annotations set by others are kept.

Every Secret written carries the label ``app.kubernetes.io/managed-by=certctl`` and the
annotation ``certctl.io/owner``: the id of the certctl installation that wrote it (its
database's, ``store.db.installation_id``). The label alone told certctl from others
(cert-manager) but not one certctl installation from another delivering into the same
namespace: their services took each other's Secret, each pod served the other's key in turn.
A Secret another installation owns is refused; one with the label and no owner (written by a
certctl before the annotation) is claimed by the first installation writing it, through the
same ``resourceVersion``-guarded ``PUT``, so of two racing for it one wins and the other,
re-reading, finds it taken.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx is imported where a request is made: it is slow to import
    import httpx

from certctl.errors import Conflict, InvalidRequest
from certctl.kubeapi import KubeApiError, KubeConnection, response_json, transport_error

__all__ = [
    "CLIENT_TRUST_KEY",
    "CUSTOM_CERTIFICATE_LABEL",
    "KEYSTORE_PASSWORD_LABEL",
    "MANAGED_BY",
    "OWNER_ANNOTATION",
    "SecretValue",
    "SecretWriter",
    "WriteResult",
    "list_custom_certificates",
    "read_custom_certificate",
    "read_keystore_password",
]

TLS_TYPE = "kubernetes.io/tls"
CLIENT_TRUST_KEY = "client-trust.crt"
MANAGED_BY = {"app.kubernetes.io/managed-by": "certctl"}
# The annotation naming the installation that owns a Secret (its id, store.db.installation_id).
OWNER_ANNOTATION = "certctl.io/owner"
# The annotation cert-manager puts on the Secret of each of its Certificates.
_CERT_MANAGER_CERTIFICATE = "cert-manager.io/certificate-name"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+\Z")
_ATTEMPTS = 3
# The label a Secret needs before a managed service's certificate.secretName may read it.
CUSTOM_CERTIFICATE_LABEL = "certctl.io/custom-certificate"
_CUSTOM_KEYS = ("tls.crt", "tls.key", "ca.crt", "ca.key")
_MAX_KEY_BYTES = 1 << 20
# The label a Secret needs before a Secret target's keystores.pkcs12.passwordSecretRef may
# read it (as CUSTOM_CERTIFICATE_LABEL, for the same reason: see read_keystore_password).
KEYSTORE_PASSWORD_LABEL = "certctl.io/keystore-password"
_MAX_PASSWORD_BYTES = 4096
# A value of a Secret key made from what the Secret holds there now (None: nothing): a
# PKCS#12 keystore is encrypted under a random salt and IV, so one built anew at every write
# differed from the last and the Secret was replaced at every resync. It returns the
# current value when that still holds what is wanted.
SecretValue = bytes | Callable[[bytes | None], bytes]
# Items per LIST request: kubectl's --chunk-size and client-go's pager default.
_LIST_CHUNK = 500
# Chunks one LIST may take: 500,000 labelled Secrets in one namespace, far past any real one.
# Past it, an API server (or a proxy) handing out continue tokens forever is assumed, rather
# than a LIST growing in memory without end; the caller reads each Secret on its own then.
_LIST_MAX_PAGES = 1_000


class WriteResult(StrEnum):
    """What a write did."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def _handover(metadata: Mapping[str, Any]) -> str:
    """How to hand the Secret of ``metadata`` over to certctl, naming its cert-manager owner.

    cert-manager re-issues into its Certificate's Secret whenever the certificate there is
    not its own (other names, key or issuer annotations): labelled for certctl while that
    Certificate exists, the Secret would change hands at every sync of either.
    """
    annotations = metadata.get("annotations") or {}
    certificate = annotations.get(_CERT_MANAGER_CERTIFICATE)
    if isinstance(certificate, str) and certificate:
        return (
            f"cert-manager's Certificate {certificate[:253]} writes it: delete that Certificate "
            "(or give it another secretName), then delete the Secret or label it "
            "app.kubernetes.io/managed-by=certctl, or cert-manager re-issues into it"
        )
    return "delete it, or label it app.kubernetes.io/managed-by=certctl to let certctl take it over"


def _encode(
    data: Mapping[str, SecretValue], current: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """``data`` base64-encoded; a value made from the current one is given that (decoded)."""
    encoded = {}
    for key, value in sorted(data.items()):
        if callable(value):
            held = (current or {}).get(key)
            try:
                now = base64.b64decode(held, validate=True) if isinstance(held, str) else None
            except (binascii.Error, ValueError):
                now = None  # edited by hand into something else: made anew
            value = value(now)
        encoded[key] = base64.b64encode(value).decode("ascii")
    return encoded


class SecretWriter:
    """Writes Secrets in one namespace through the Kubernetes API.

    Args:
        connection: API server and credentials (needs ``get``, ``create``, ``update`` on
            ``secrets`` in the namespace).
        namespace: target namespace; default: the connection's.
        owner: this installation's id, recorded on each Secret (``OWNER_ANNOTATION``);
            a Secret recording another is never written.
        transport: an httpx transport for tests; None for the network.
    """

    def __init__(
        self,
        connection: KubeConnection,
        *,
        owner: str,
        namespace: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not owner:
            raise ValueError("SecretWriter needs the installation id as owner")
        self.connection = connection
        self.namespace = namespace or connection.namespace
        self.owner = owner
        self._transport = transport

    def write_tls(
        self,
        name: str,
        *,
        certificate_pem: bytes,
        private_key_pem: bytes,
        ca_pem: bytes | None,
        client_trust_pem: bytes | None = None,
        labels: Mapping[str, str] | None = None,
        extra: Mapping[str, SecretValue] | None = None,
    ) -> WriteResult:
        """Write a ``kubernetes.io/tls`` Secret with ``tls.crt``, ``tls.key``, ``ca.crt``.

        ``ca_pem`` None or blank (a custom certificate whose CA is not given) leaves out
        ``ca.crt``, as ``client_trust_pem`` None leaves out ``client-trust.crt``: a pod mounting
        the Secret gets no file rather than an empty one, which its server would refuse.
        ``extra`` keys (``keystore.p12``, ``truststore.p12``) are written beside them.

        Raises:
            InvalidRequest: a bad name, label or empty certificate/key.
            Conflict: a Secret of another type, not managed by certctl or owned by another
                certctl installation already has this name.
            KubeApiError: the API is unreachable or refuses the write.
        """
        if not certificate_pem.strip() or not private_key_pem.strip():
            raise InvalidRequest(f"Secret {name}: tls.crt and tls.key must not be empty")
        data: dict[str, SecretValue] = {**(extra or {})}
        data.update({"tls.crt": certificate_pem, "tls.key": private_key_pem})
        if ca_pem is not None and ca_pem.strip():
            data["ca.crt"] = ca_pem
        if client_trust_pem is not None:
            data[CLIENT_TRUST_KEY] = client_trust_pem
        return self.write(name, data, secret_type=TLS_TYPE, labels=labels)

    def write(
        self,
        name: str,
        data: Mapping[str, SecretValue],
        *,
        secret_type: str = "Opaque",
        labels: Mapping[str, str] | None = None,
    ) -> WriteResult:
        """Create the Secret, or replace its ``data`` and merge ``labels`` in place.

        A callable value is given the Secret's current value of its key (None when there is
        none) and returns the value to write, so that one kept as it is leaves the Secret
        unchanged.

        Raises:
            InvalidRequest: a bad name, data key or label.
            Conflict: a Secret of another type already has this name (type is immutable),
                or one not managed by certctl, or one another certctl installation owns.
            KubeApiError: the API is unreachable, refuses the call, or keeps conflicting.
        """
        import httpx

        if len(name) > 253 or not _NAME.match(name):
            raise InvalidRequest(f"{name!r}: a Secret name must be a DNS-1123 subdomain")
        for key in data:
            if not _DATA_KEY.match(key):
                raise InvalidRequest(f"{key!r}: a Secret key may hold only [-._a-zA-Z0-9]")
        # certctl's own marker last: a label of the same key must not replace it, or the
        # next write would find the Secret "not managed by certctl" and refuse it.
        wanted_labels = {**(labels or {}), **MANAGED_BY}
        for key, value in wanted_labels.items():
            if not isinstance(key, str) or not isinstance(value, str) or len(value) > 63:
                raise InvalidRequest(f"label {key}={value}: keys and values must be strings ≤ 63")
        base = f"/api/v1/namespaces/{self.namespace}/secrets"
        what = f"Secret {self.namespace}/{name}"
        try:
            with self.connection.client(self._transport) as client:
                for _attempt in range(_ATTEMPTS):
                    current = client.get(f"{base}/{name}")
                    if current.status_code == 404:
                        encoded = _encode(data)
                        created = client.post(
                            base,
                            json={
                                "apiVersion": "v1",
                                "kind": "Secret",
                                "metadata": {
                                    "name": name,
                                    "namespace": self.namespace,
                                    "labels": wanted_labels,
                                    "annotations": {OWNER_ANNOTATION: self.owner},
                                },
                                "type": secret_type,
                                "data": encoded,
                            },
                        )
                        if created.status_code == 409:  # created meanwhile: read it again
                            continue
                        response_json(created, f"create {what}")
                        return WriteResult.CREATED
                    obj = response_json(current, f"read {what}")
                    result = self._update(client, name, obj, secret_type, data, wanted_labels)
                    if result is not None:
                        return result
        except httpx.HTTPError as exc:
            raise KubeApiError(
                f"{what}: cannot reach the Kubernetes API ({transport_error(exc)})"
            ) from None
        raise KubeApiError(f"{what}: still conflicting after {_ATTEMPTS} attempts", 409, "Conflict")

    def _update(
        self,
        client: httpx.Client,
        name: str,
        obj: dict[str, Any],
        secret_type: str,
        data: Mapping[str, SecretValue],
        labels: dict[str, str],
    ) -> WriteResult | None:
        """PUT the new data over ``obj``; None when another writer got there first (409)."""
        url = f"/api/v1/namespaces/{self.namespace}/secrets/{name}"
        what = f"Secret {self.namespace}/{name}"
        current_type = obj.get("type") or "Opaque"
        if current_type != secret_type:
            raise Conflict(
                f"{what} has type {current_type}, not {secret_type}; "
                "delete it or choose another name (a Secret's type cannot change)"
            )
        metadata = obj.setdefault("metadata", {})
        current_labels = metadata.get("labels") or {}
        if any(current_labels.get(k) != v for k, v in MANAGED_BY.items()):
            # Someone else's Secret (cert-manager's, an ingress certificate): replacing it
            # would start a tug of war and drop its other keys. Taking it over is a choice
            # made in Kubernetes, by someone allowed to label it.
            raise Conflict(f"{what} exists and is not managed by certctl; {_handover(metadata)}")
        annotations = metadata.get("annotations") or {}
        claimed = annotations.get(OWNER_ANNOTATION)
        if claimed and claimed != self.owner:
            # Another installation's (another release delivering here): writing would hand
            # its pods this installation's key, and it would write back at its next pass.
            # Its id is not named: a service editor here has no business with it. This
            # installation's is, the one to compare the annotation with (otherwise only in
            # the start-up log, which a service editor may not read).
            raise Conflict(
                f"{what} belongs to another certctl installation (its annotation "
                f"{OWNER_ANNOTATION} is not this installation's id, {self.owner}); not "
                "overwritten: choose another Secret name, or, if that installation no longer "
                "delivers there, remove the annotation (kubectl annotate secret -n "
                f"{self.namespace} {name} {OWNER_ANNOTATION}-) to let this one take it over"
            )
        current_data = obj.get("data")
        encoded = _encode(data, current_data if isinstance(current_data, dict) else None)
        if (
            claimed == self.owner
            and (current_data or {}) == encoded
            and all(current_labels.get(k) == v for k, v in labels.items())
        ):
            return WriteResult.UNCHANGED
        # Unclaimed (an older certctl's): claimed now, by the PUT carrying the resourceVersion
        # read, so an installation claiming it meanwhile makes this one 409 and re-read.
        metadata["annotations"] = {**annotations, OWNER_ANNOTATION: self.owner}
        metadata["labels"] = {**current_labels, **labels}
        obj["data"] = encoded
        obj.pop("stringData", None)
        replaced = client.put(url, json=obj)
        if replaced.status_code in (404, 409):
            return None  # changed or deleted since the GET: read again (and create)
        response_json(replaced, f"update {what}")
        return WriteResult.UPDATED


def _get_secret(
    connection: KubeConnection,
    name: str,
    namespace: str,
    what: str,
    transport: httpx.BaseTransport | None,
) -> dict[str, Any] | None:
    """Secret ``name`` of ``namespace`` as the API returns it; None if absent.

    Raises:
        InvalidRequest: ``name`` is not a Secret name (it ends up in the URL).
        KubeApiError: the API is unreachable or refuses the read.
    """
    import httpx

    if len(name) > 253 or not _NAME.match(name):
        raise InvalidRequest(f"{name!r}: a Secret name must be a DNS-1123 subdomain")
    try:
        with connection.client(transport) as client:
            response = client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
    except httpx.HTTPError as exc:
        raise KubeApiError(
            f"{what}: cannot reach the Kubernetes API ({transport_error(exc)})"
        ) from None
    if response.status_code == 404:
        return None
    return response_json(response, f"read {what}")


def read_custom_certificate(
    connection: KubeConnection,
    name: str,
    *,
    namespace: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, bytes] | None:
    """The ``tls.crt``, ``tls.key``, ``ca.crt``, ``ca.key`` of Secret ``name``; None if absent.

    Only a Secret labelled ``certctl.io/custom-certificate=true`` is read. ECK reads any
    Secret of its resource's namespace, whose creator may read them all; naming a
    certificate.secretName needs only ``service.edit`` in certctl, which must not reach the
    keys of every Secret certctl's ServiceAccount can read (its own server certificate, the
    Secret targets of other services). The label is that choice, made in Kubernetes by
    someone allowed to make it.

    Raises:
        InvalidRequest: the Secret is not labelled, is one certctl writes, or a key is not
            base64 or larger than 1 MiB.
        KubeApiError: the API is unreachable or refuses the read.
    """
    namespace = namespace or connection.namespace
    what = f"Secret {namespace}/{name}"
    obj = _get_secret(connection, name, namespace, what, transport)
    return None if obj is None else _custom_files(obj, what, namespace, name)


def read_keystore_password(
    connection: KubeConnection,
    name: str,
    key: str,
    *,
    namespace: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> bytes:
    """The value of ``key`` in Secret ``name``: a Secret target's PKCS#12 password.

    Only a Secret labelled ``certctl.io/keystore-password=true`` is read, for the reason
    ``read_custom_certificate`` gives: cert-manager reads any Secret of its Certificate's
    namespace, whose creator may read them anyway; a passwordSecretRef needs only
    ``service.edit`` in certctl, and a keystore locked with another Secret's value (a
    database password) is a way to guess that value offline. The value itself is never in
    a message.

    Raises:
        InvalidRequest: the Secret is absent, not labelled, one certctl writes, or its key is
            missing, not base64 or larger than 4 KiB.
        KubeApiError: the API is unreachable or refuses the read.
    """
    namespace = namespace or connection.namespace
    what = f"Secret {namespace}/{name}"
    obj = _get_secret(connection, name, namespace, what, transport)
    if obj is None:
        raise InvalidRequest(
            f"keystore password: {what} not found (create it, labelled "
            f"{KEYSTORE_PASSWORD_LABEL}=true)"
        )
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if all(labels.get(k) == v for k, v in MANAGED_BY.items()):
        raise InvalidRequest(
            f"keystore password: {what} is one certctl writes (a service's Secret target); "
            "keep the password in a Secret of its own"
        )
    if labels.get(KEYSTORE_PASSWORD_LABEL) != "true":
        raise InvalidRequest(
            f"keystore password: {what} is not labelled {KEYSTORE_PASSWORD_LABEL}=true: label "
            f"it to let Secret targets use it (kubectl label secret -n {namespace} {name} "
            f"{KEYSTORE_PASSWORD_LABEL}=true)"
        )
    value = (obj.get("data") or {}).get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"keystore password: {what} has no key {key}")
    if len(value) > _MAX_PASSWORD_BYTES * 4 // 3 + 4:
        raise InvalidRequest(f"keystore password: {what}: {key} is larger than 4 KiB")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"keystore password: {what}: {key} is not base64") from None


def list_custom_certificates(
    connection: KubeConnection,
    *,
    namespace: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, dict[str, bytes] | InvalidRequest]:
    """Every Secret ``read_custom_certificate`` may read in ``namespace``, with one LIST.

    A LIST with the label selector ``certctl.io/custom-certificate=true``: name → what
    ``read_custom_certificate`` returns for it, or the InvalidRequest it raises (one certctl
    writes, a key not base64...). A Secret not listed is absent or not labelled: only its
    own read tells which. Needs ``list`` on ``secrets`` in the namespace.

    The LIST is read in chunks of ``_LIST_CHUNK`` (one request up to that many labelled
    Secrets), following ``metadata.continue`` as kubectl and client-go do: unchunked, the API
    server reads every Secret of the namespace (Helm's releases, ...) at once to filter
    them, at every pass. A continue token expired meanwhile (410, etcd compacted) is
    client-go's answer too: the LIST once more, whole, rather than a list half of one moment
    and half of another.

    Raises:
        KubeApiError: the API is unreachable or refuses the LIST.
    """
    import httpx

    namespace = namespace or connection.namespace
    what = f"Secrets of {namespace} labelled {CUSTOM_CERTIFICATE_LABEL}=true"
    selector = {"labelSelector": f"{CUSTOM_CERTIFICATE_LABEL}=true"}
    url = f"/api/v1/namespaces/{namespace}/secrets"
    items: list[Any] = []
    try:
        with connection.client(transport) as client:
            token = ""
            pages = 0
            while True:
                pages += 1
                params = {**selector, "limit": str(_LIST_CHUNK)}
                if token:
                    params["continue"] = token
                response = client.get(url, params=params)
                if token and response.status_code == 410:
                    response = client.get(url, params=selector)
                    items = _items(response_json(response, f"list {what}"))
                    break
                body = response_json(response, f"list {what}")
                items += _items(body)
                metadata = body.get("metadata")
                more = metadata.get("continue") if isinstance(metadata, dict) else None
                if not isinstance(more, str) or not more:
                    break
                if more == token:
                    raise KubeApiError(
                        f"{what}: the API server answered a chunk with the continue token it "
                        "was given (a LIST that never ends)"
                    )
                if pages >= _LIST_MAX_PAGES:
                    raise KubeApiError(
                        f"{what}: {_LIST_MAX_PAGES} chunks of {_LIST_CHUNK} read, and still "
                        "a continue token (a LIST that never ends?)"
                    )
                token = more
    except httpx.HTTPError as exc:
        raise KubeApiError(
            f"{what}: cannot reach the Kubernetes API ({transport_error(exc)})"
        ) from None
    found: dict[str, dict[str, bytes] | InvalidRequest] = {}
    for obj in items:
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        labels = metadata.get("labels") if isinstance(metadata, dict) else None
        if not isinstance(name, str) or not isinstance(labels, dict):
            continue
        if labels.get(CUSTOM_CERTIFICATE_LABEL) != "true":
            # The selector says it is not there: never read a Secret not labelled, whatever
            # a server (or a proxy) answered. Its own read then says what it is.
            continue
        try:
            found[name] = _custom_files(obj, f"Secret {namespace}/{name}", namespace, name)
        except InvalidRequest as exc:
            found[name] = exc
    return found


def _items(body: Mapping[str, Any]) -> list[Any]:
    """The ``items`` of a LIST answer; none when it has no list there."""
    items = body.get("items")
    return items if isinstance(items, list) else []


def _custom_files(obj: Mapping[str, Any], what: str, namespace: str, name: str) -> dict[str, bytes]:
    """The custom-certificate keys of the Secret ``obj``, read or listed (see the callers)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if all(labels.get(k) == v for k, v in MANAGED_BY.items()):
        raise InvalidRequest(
            f"{what} is one certctl writes (a service's Secret target), not a certificate "
            "to serve; name the Secret that holds your certificate"
        )
    if labels.get(CUSTOM_CERTIFICATE_LABEL) != "true":
        raise InvalidRequest(
            f"{what} is not labelled {CUSTOM_CERTIFICATE_LABEL}=true: label it to let managed "
            f"services read it (kubectl label secret -n {namespace} {name} "
            f"{CUSTOM_CERTIFICATE_LABEL}=true)"
        )
    data = obj.get("data") or {}
    found = {}
    for key in _CUSTOM_KEYS:
        value = data.get(key)
        if not isinstance(value, str):
            continue
        if len(value) > _MAX_KEY_BYTES * 4 // 3 + 4:
            raise InvalidRequest(f"{what}: {key} is larger than 1 MiB")
        try:
            found[key] = base64.b64decode(value, validate=True)
        except ValueError:
            raise InvalidRequest(f"{what}: {key} is not base64") from None
    return found
