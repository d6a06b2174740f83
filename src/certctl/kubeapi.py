"""Connection to the Kubernetes API: the pod's ServiceAccount (in-cluster) or a kubeconfig.

Shared by the TokenReview authenticator (``certctl.auth.kubernetes``) and the Secret target
(``certctl.targets.kubernetes``); it sits beside ``errors`` and ``files`` so neither of those
layers imports the other. Only what certctl needs is supported: a CA bundle, a bearer token
(re-read from its file on every request, because projected ServiceAccount tokens rotate
hourly) or a client certificate. A CA file (the ServiceAccount's ``ca.crt``, a kubeconfig's
``certificate-authority``) is read again when a client is made and its context rebuilt when
the content changed, so a rotated cluster CA needs no restart. Exec credential plugins, auth
providers, ``insecure-skip-tls-verify``, impersonation, basic authentication and
``proxy-url`` are refused with a message naming them.

Errors::

    Unavailable (503)
    └── KubeApiError      the API answered with an error, or could not be reached
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx is imported where a request is made: it is slow to import
    import httpx

from certctl.errors import InvalidRequest, Unavailable, tls_verify_failure
from certctl.files import in_memory_file
from certctl.reloaded_file import ReloadedFromFile

__all__ = [
    "IN_CLUSTER_DIR",
    "KubeApiError",
    "KubeConnection",
    "from_kubeconfig",
    "in_cluster",
    "load_connection",
    "response_json",
    "transport_error",
]

IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_TIMEOUT_S = 5.0

log = logging.getLogger("certctl.kubeapi")
# What a bearer token may hold (visible ASCII, RFC 6750's b64token and more): anything else
# cannot go into an Authorization header.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]*\Z")


class KubeApiError(Unavailable):
    """A Kubernetes API call failed: unreachable, or answered with an error status.

    ``status_code`` is the HTTP status (None when unreachable); ``reason`` is the
    ``Status.reason`` of the API's answer (``NotFound``, ``Forbidden``, ...) when it gave one.
    """

    def __init__(self, detail: str, status_code: int | None = None, reason: str = "") -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.reason = reason


def _ca_file_context(
    ca_file: Path, cert: tuple[Path, Path] | None
) -> ReloadedFromFile[ssl.SSLContext]:
    """The SSL context of a CA file, rebuilt when the file's content changes.

    The kubelet rotates the ServiceAccount's ``ca.crt`` in place (an atomic symlink swap):
    a context built once at start kept trusting the old CA until a restart. The file is
    small and read once per client; a new content that cannot be loaded (mid-rotation
    garbage) keeps the previous context, logged once per content.
    """
    return ReloadedFromFile(
        ca_file,
        lambda: _ssl_context(ca_file, None, cert),
        log=log,
        kept="the previous one is still used",
        changed="Kubernetes API connections now trust it",
    )


@dataclass(frozen=True, eq=False)
class KubeConnection:
    """Where the API server is and how certctl proves who it is.

    Attributes:
        server: base URL, ``https://host:port``.
        ssl_context: verifies the API server (and carries a client certificate, if any).
        namespace: the namespace certctl works in (Secrets it writes go there).
        token: a static bearer token (kubeconfig ``token``), or None.
        token_file: a file holding the bearer token, read on every request, or None.
        timeout_s: connect/read timeout of one request.
        tls_server_name: the name to verify the API server's certificate against (and send
            as SNI) instead of the URL's host: a kubeconfig's ``tls-server-name``.
        ca_reload: when set, the source of ``ssl_context`` for each new client (a CA file
            followed as it changes); ``ssl_context`` is then its first value.
    """

    server: str
    ssl_context: ssl.SSLContext
    namespace: str = "default"
    token: str | None = None
    token_file: Path | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    tls_server_name: str | None = None
    ca_reload: ReloadedFromFile[ssl.SSLContext] | None = field(default=None, repr=False)

    def current_ssl_context(self) -> ssl.SSLContext:
        """The context a new client verifies with: the CA file's current content, if any."""
        return self.ssl_context if self.ca_reload is None else self.ca_reload.current()

    def __repr__(self) -> str:
        # Never let a token reach a log through repr().
        return f"KubeConnection(server={self.server!r}, namespace={self.namespace!r})"

    def bearer_token(self) -> str | None:
        """The token to send now: the file's current content, else the static token.

        Raises:
            KubeApiError: the token file cannot be read, or the token holds a character an
                HTTP header cannot carry (named, never quoted).
        """
        token: str | None
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                raise KubeApiError(
                    f"{self.token_file}: cannot read the Kubernetes token ({exc.strerror})"
                ) from None
            where = str(self.token_file)
        else:
            token, where = self.token, "kubeconfig token"
        if token is not None and not _HEADER_TOKEN.match(token):
            # Checked here: h11 refuses such a header with a message quoting its value,
            # which would carry the token into the log and the service's status.
            raise KubeApiError(
                f"{where}: the Kubernetes token holds a line break, a space or a control "
                "character, which an Authorization header cannot carry; put the token alone "
                "on one line"
            )
        return token

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "certctl"}
        token = self.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def client(self, transport: httpx.BaseTransport | None = None) -> httpx.Client:
        """A synchronous client for this API server (close it, or use it in ``with``)."""
        import httpx

        def server_name(request: httpx.Request) -> None:
            request.extensions["sni_hostname"] = self.tls_server_name

        return httpx.Client(
            base_url=self.server,
            verify=self.current_ssl_context(),
            headers=self._headers(),
            timeout=self.timeout_s,
            transport=transport,
            trust_env=False,
            event_hooks={"request": [server_name] if self.tls_server_name else []},
        )

    def async_client(self, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
        """An asynchronous client for this API server (use it in ``async with``)."""
        import httpx

        async def server_name(request: httpx.Request) -> None:
            request.extensions["sni_hostname"] = self.tls_server_name

        return httpx.AsyncClient(
            base_url=self.server,
            verify=self.current_ssl_context(),
            headers=self._headers(),
            timeout=self.timeout_s,
            transport=transport,
            trust_env=False,
            event_hooks={"request": [server_name] if self.tls_server_name else []},
        )


def transport_error(exc: BaseException) -> str:
    """Why a call to the API server failed below HTTP, in one line, for logs and operators.

    A certificate the connection does not trust (a wrong ``kubernetes.ca-file``, a proxy) is
    named as such: "ConnectError" alone read like a network outage. The text comes from the
    TLS and socket layers; a request refused before it was sent (h11 quotes the header it
    refused, the Authorization header among them) is named without it.
    """
    import httpx

    failure = tls_verify_failure(exc)
    if failure is not None:
        return failure
    if isinstance(exc, httpx.LocalProtocolError):
        return f"{type(exc).__name__}: the request could not be sent (an invalid header)"
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def response_json(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer.

    Raises:
        KubeApiError: a non-2xx status (with the API's ``Status`` reason and message), or a
            body that is not a JSON object.
    """
    if not response.is_success:
        reason, message = "", ""
        try:
            status = response.json()
        except ValueError:
            status = None
        if isinstance(status, dict):
            reason = str(status.get("reason", ""))
            message = str(status.get("message", ""))[:300]
        raise KubeApiError(
            f"{what}: Kubernetes API answered {response.status_code}"
            + (f" {reason}" if reason else "")
            + (f": {message}" if message else ""),
            response.status_code,
            reason,
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise KubeApiError(f"{what}: Kubernetes API answer is not a JSON object")
    return body


def _ssl_context(
    ca_file: Path | None = None,
    ca_data: bytes | None = None,
    cert: tuple[Path, Path] | None = None,
) -> ssl.SSLContext:
    errors = (OSError, ssl.SSLError, UnicodeDecodeError)
    try:
        if ca_data is not None:
            context = ssl.create_default_context(cadata=ca_data.decode("ascii"))
        else:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except errors as exc:
        where = ca_file or "certificate-authority-data"
        raise InvalidRequest(f"{where}: cannot load Kubernetes TLS material ({exc})") from None
    if cert is not None:
        try:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        except errors as exc:
            # Memory files (/proc/self/fd/N) mean the kubeconfig's inline data: name that.
            inline = str(cert[0]).startswith("/proc/self/fd/")
            where = (
                "client-certificate-data/client-key-data"
                if inline
                else f"client-certificate {cert[0]} / client-key {cert[1]}"
            )
            raise InvalidRequest(f"{where}: cannot load Kubernetes TLS material ({exc})") from None
    return context


def in_cluster(
    *,
    api_server: str | None = None,
    ca_file: Path | None = None,
    token_file: Path | None = None,
    namespace: str | None = None,
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path = IN_CLUSTER_DIR,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> KubeConnection:
    """The pod's own ServiceAccount; each argument overrides one in-cluster default.

    Defaults: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, and ``ca.crt``,
    ``token`` and ``namespace`` in ``service_account_dir``.

    Raises:
        InvalidRequest: not in a cluster and no ``api_server``; unreadable CA file.
    """
    env = os.environ if environ is None else environ
    if api_server is None:
        host = env.get("KUBERNETES_SERVICE_HOST")
        port = env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise InvalidRequest(
                "kubernetes: KUBERNETES_SERVICE_HOST is unset (not in a cluster); "
                "set kubernetes.api-server or kubernetes.kubeconfig"
            )
        api_server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    if not api_server.startswith("https://"):
        raise InvalidRequest(f"kubernetes.api-server={api_server}: must be an https:// URL")
    if namespace is None:
        try:
            namespace = (service_account_dir / "namespace").read_text().strip() or "default"
        except OSError:
            namespace = "default"
    ca = _ca_file_context(ca_file or service_account_dir / "ca.crt", None)
    return KubeConnection(
        server=api_server.rstrip("/"),
        ssl_context=ca.current(),
        ca_reload=ca,
        namespace=namespace,
        token_file=token_file or service_account_dir / "token",
        timeout_s=timeout_s,
    )


# Kubeconfig entries kubectl honours that certctl does not: skipped, a call would go out
# with other credentials or by another route than the kubeconfig says.
_IGNORED_ENTRIES = (
    ("as", "impersonation: certctl would call as the user itself, with all its rights"),
    ("as-uid", "impersonation"),
    ("as-groups", "impersonation: certctl would call with the user's own groups"),
    ("as-user-extra", "impersonation"),
    ("username", "basic authentication, which Kubernetes removed in 1.19"),
    ("password", "basic authentication, which Kubernetes removed in 1.19"),
    ("proxy-url", "certctl connects to the API server directly"),
)


def _named(doc: dict[str, Any], section: str, name: str, path: Path) -> dict[str, Any]:
    inner_key = section[:-1]  # clusters -> cluster, users -> user, contexts -> context
    for entry in doc.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            inner = entry.get(inner_key) or {}
            if isinstance(inner, dict):
                return inner
    raise InvalidRequest(f"{path}: no {inner_key} named {name!r}")


def _b64(value: str, what: str, path: Path) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{path}: {what} is not valid base64") from None


def from_kubeconfig(
    path: Path,
    *,
    context: str | None = None,
    namespace: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> KubeConnection:
    """Read one context of a kubeconfig file (``current-context`` unless ``context``).

    Relative file names in the kubeconfig are resolved against its directory.

    Raises:
        InvalidRequest: unreadable file, missing entries, or an unsupported credential
            (exec plugin, auth provider, insecure-skip-tls-verify).
    """
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot read kubeconfig ({exc.strerror})") from None
    except yaml.YAMLError:
        raise InvalidRequest(f"{path}: kubeconfig is not valid YAML") from None
    if not isinstance(doc, dict):
        raise InvalidRequest(f"{path}: kubeconfig must be a mapping")
    name = context or doc.get("current-context")
    if not name:
        raise InvalidRequest(f"{path}: no current-context; set kubernetes.context")
    ctx = _named(doc, "contexts", str(name), path)
    cluster = _named(doc, "clusters", str(ctx.get("cluster", "")), path)
    user = _named(doc, "users", str(ctx.get("user", "")), path)
    base = path.parent

    def file(value: Any) -> Path:
        p = Path(str(value)).expanduser()
        return p if p.is_absolute() else base / p

    server = str(cluster.get("server", ""))
    if not server.startswith("https://"):
        raise InvalidRequest(f"{path}: cluster server {server!r} must be an https:// URL")
    if cluster.get("insecure-skip-tls-verify"):
        raise InvalidRequest(f"{path}: insecure-skip-tls-verify is not supported")
    for unsupported in ("exec", "auth-provider"):
        if user.get(unsupported):
            raise InvalidRequest(f"{path}: user credential {unsupported!r} is not supported")
    for entry, why in _IGNORED_ENTRIES:
        if (cluster if entry == "proxy-url" else user).get(entry):
            raise InvalidRequest(f"{path}: {entry!r} is not supported ({why})")
    ca_data = cluster.get("certificate-authority-data")
    ca_file = cluster.get("certificate-authority")
    with contextlib.ExitStack() as stack:
        cert: tuple[Path, Path] | None = None
        cert_data = user.get("client-certificate-data")
        key_data = user.get("client-key-data")
        if cert_data or key_data:
            # ssl loads a client certificate from files only: memory files, so the key is
            # never written to a disk (nor left in /tmp by a process killed mid-way).
            crt = _b64(str(cert_data or ""), "client-certificate-data", path)
            key = _b64(str(key_data or ""), "client-key-data", path)
            cert = (
                Path(stack.enter_context(in_memory_file(crt, "certctl-kube-crt"))),
                Path(stack.enter_context(in_memory_file(key, "certctl-kube-key"))),
            )
        elif user.get("client-certificate") or user.get("client-key"):
            cert = (file(user.get("client-certificate", "")), file(user.get("client-key", "")))
        ca_reload = None
        if ca_file and not ca_data and not (cert_data or key_data):
            # Files only (memory files close below): the CA file can be followed.
            ca_reload = _ca_file_context(file(ca_file), cert)
            context_obj = ca_reload.current()
        else:
            context_obj = _ssl_context(
                file(ca_file) if ca_file else None,
                _b64(str(ca_data), "certificate-authority-data", path) if ca_data else None,
                cert,
            )
    token_file = file(user["tokenFile"]) if user.get("tokenFile") else None
    return KubeConnection(
        server=server.rstrip("/"),
        ssl_context=context_obj,
        ca_reload=ca_reload,
        namespace=namespace or str(ctx.get("namespace") or "default"),
        # Stripped as a tokenFile is: "token: |" (a YAML block) ends it with a newline.
        token=str(user["token"]).strip() or None if user.get("token") else None,
        token_file=token_file,
        timeout_s=timeout_s,
        # Clusters reached by an address their certificate does not name (a load balancer's
        # IP) say which name to check; ignoring it failed every call with a name mismatch.
        tls_server_name=str(cluster["tls-server-name"]) if cluster.get("tls-server-name") else None,
    )


def load_connection(
    *,
    kubeconfig: Path | None = None,
    context: str | None = None,
    api_server: str | None = None,
    ca_file: Path | None = None,
    token_file: Path | None = None,
    namespace: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> KubeConnection:
    """A kubeconfig when given, else the in-cluster ServiceAccount with any overrides.

    Raises:
        InvalidRequest: see :func:`from_kubeconfig` and :func:`in_cluster`.
    """
    if kubeconfig is not None:
        if api_server or ca_file or token_file:
            raise InvalidRequest(
                "kubernetes.kubeconfig excludes kubernetes.api-server, ca-file and token-file"
            )
        return from_kubeconfig(
            kubeconfig, context=context, namespace=namespace, timeout_s=timeout_s
        )
    return in_cluster(
        api_server=api_server,
        ca_file=ca_file,
        token_file=token_file,
        namespace=namespace,
        timeout_s=timeout_s,
    )
