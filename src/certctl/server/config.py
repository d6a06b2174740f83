"""Server configuration: flags > ``CERTCTL_*`` environment > YAML file > defaults (DESIGN §3)."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from certctl import schema_errors
from certctl.errors import InvalidRequest
from certctl.hosts import is_ip, is_loopback
from certctl.pki import DNPattern, SubjectAltNames, parse_duration

__all__ = ["BadSetting", "ServerConfig", "load_config"]


class BadSetting(InvalidRequest):
    """A value refused that came from a flag or an environment variable, not the file.

    The CLI reports it as a usage error (exit 2), as any other bad option value; a config
    file that does not read or holds a bad value is a failure (exit 1), as an input file is.
    """


def _checked_duration(value: str) -> str:
    # A ValueError lets pydantic name the key in the message ("config http.header-timeout: …").
    try:
        parse_duration(value)
    except InvalidRequest as exc:
        raise ValueError(exc.detail) from None
    return value


# database-pool-size: store.db's POOL_CONNECTIONS and POOL_MIN (not imported: loading the
# configuration does not load SQLAlchemy; tests/unit/server pins them equal).
_POOL_DEFAULT = 34
_POOL_MIN = 3
_POOL_RULE = (
    f"expected a whole number of database connections per server process, at least "
    f"{_POOL_MIN} (the leader's lock, the group commit and one for requests)"
)
_MIN_WORKERS = 1
_MAX_WORKERS = 64
_WORKERS_RULE = f"expected a whole number of server processes from {_MIN_WORKERS} to {_MAX_WORKERS}"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TLSConfig(_Section):
    """``tls.*`` keys."""

    mode: Literal["self-signed", "custom", "disabled"] = "self-signed"
    cert_dir: Path | None = Field(default=None, alias="cert-dir")
    subject_alt_names: list[str] = Field(default_factory=list, alias="subject-alt-names")
    min_version: Literal["1.2", "1.3"] = Field(default="1.2", alias="min-version")
    client_auth: Literal["none", "optional", "required"] = Field(
        default="none", alias="client-auth"
    )
    client_ca: Path | None = Field(default=None, alias="client-ca")
    reload_interval: str = Field(default="5s", alias="reload-interval")
    # How long one session-ticket key encrypts tickets before a new one replaces it.
    ticket_key_rotation: str = Field(default="1h", alias="ticket-key-rotation")
    publish_ca_secret: str | None = Field(default=None, alias="publish-ca-secret")

    # Checked when the config loads, so a mistake is refused before the first start creates
    # the data directory and prints the admin key, not after.
    @field_validator("reload_interval", "ticket_key_rotation")
    @classmethod
    def _duration(cls, value: str) -> str:
        return _checked_duration(value)

    @field_validator("subject_alt_names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        # As tls.server_sans reads them (not imported: it loads prometheus_client, which
        # must come after the multi-process set-up of workers > 1).
        ips = [item for item in value if is_ip(item)]
        try:
            SubjectAltNames.parse(dns=[item for item in value if item not in ips], ip=ips)
        except InvalidRequest as exc:
            raise ValueError(exc.detail) from None
        return value

    @model_validator(mode="after")
    def _client_ca(self) -> TLSConfig:
        if self.client_auth != "none" and self.client_ca is None:
            raise ValueError(f"client-auth {self.client_auth} needs tls.client-ca")
        return self


class MetricsConfig(_Section):
    """``metrics.*`` keys."""

    listen: str | None = None
    # Strict, as every switch here and in the service spec: pydantic's lax mode read a
    # quoted "yes", "off", the letters y and n and the numbers 1 and 0 as booleans, so a
    # typo could turn a switch on. YAML's true and false (yes/no/on/off: YAML 1.1) only.
    secure: StrictBool = True

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            _host_port(value)
        return value


class ServicesConfig(_Section):
    """``services.*`` keys: what holders of ``service.edit`` may do on this host."""

    # Directory targets (and passwordFiles) under these may be set by any holder of
    # service.edit; elsewhere, and any reload command, need every permission.
    target_directories: list[Path] = Field(default_factory=list, alias="target-directories")

    @field_validator("target_directories")
    @classmethod
    def _absolute(cls, value: list[Path]) -> list[Path]:
        for path in value:
            if not path.is_absolute():
                raise ValueError(f"{path}: target directories must be absolute paths")
            if ".." in path.parts:
                raise ValueError(f"{path}: must not contain '..'")
            if path == Path("/") or Path(os.path.realpath(path)) == Path("/"):
                raise ValueError(f"{path}: / would delegate the whole file system")
        return value


class ClientCertMappingConfig(_Section):
    """One ``auth.client-cert-mappings`` entry."""

    subject: str
    roles: list[str]
    # SHA-256 of the issuing CA's certificate (in tls.client-ca): only a certificate that
    # CA signed is mapped. Lower-case hex, without colons, once loaded.
    issuer_fingerprint: str | None = Field(default=None, alias="issuer-fingerprint")

    @field_validator("issuer_fingerprint")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # As `openssl x509 -noout -fingerprint -sha256` prints it, its label too.
        text = re.sub(r"(?i)\Asha-?256\s+fingerprint\s*=\s*", "", value.strip())
        text = text.replace(":", "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            raise ValueError(
                f"{value[:100]!r}: not a SHA-256 fingerprint (64 hex digits, colons allowed)"
            )
        return text

    @field_validator("subject")
    @classmethod
    def _pattern(cls, value: str) -> str:
        # Refused at load, not found unmatched at the first client: the matcher's own parser.
        try:
            DNPattern(value)
        except InvalidRequest as exc:
            raise ValueError(exc.detail) from None
        return value


class KubernetesAuthConfig(_Section):
    """``auth.kubernetes.*`` keys."""

    enabled: StrictBool = False  # strict: see MetricsConfig.secure
    # Sent in each TokenReview and required back in status.audiences (kube-rbac-proxy's
    # --auth-token-audiences); empty: the API server's own audience, i.e. any token it accepts.
    audiences: list[str] = Field(default_factory=list)

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, value: list[str]) -> list[str]:
        for audience in value:
            if not audience.strip() or audience != audience.strip():
                raise ValueError(
                    f"{audience[:60]!r}: an audience is a non-empty string, no surrounding spaces"
                )
        return value


class KubernetesConfig(_Section):
    """``kubernetes.*``: how certctl reaches the Kubernetes API (in-cluster by default)."""

    kubeconfig: Path | None = None
    context: str | None = None
    api_server: str | None = Field(default=None, alias="api-server")
    ca_file: Path | None = Field(default=None, alias="ca-file")
    token_file: Path | None = Field(default=None, alias="token-file")
    namespace: str | None = None


class AuthConfig(_Section):
    """``auth.*`` keys."""

    client_cert_mappings: list[ClientCertMappingConfig] = Field(
        default_factory=list, alias="client-cert-mappings"
    )
    kubernetes: KubernetesAuthConfig = Field(default_factory=KubernetesAuthConfig)
    failure_limit: int = Field(default=10, alias="failure-limit", ge=0)
    failure_window: str = Field(default="1m", alias="failure-window")
    # A Kubernetes Secret (in kubernetes.namespace) receiving the bootstrap admin key, which
    # is then not printed: with several replicas each has its own data dir, and pod logs
    # end up in log stores (ECK's <name>-es-elastic-user, in effect).
    admin_key_secret: str | None = Field(default=None, alias="admin-key-secret")

    @field_validator("admin_key_secret")
    @classmethod
    def _secret_name(cls, value: str | None) -> str | None:
        import re

        if value is not None and (
            len(value) > 253
            or not re.match(
                r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z", value
            )
        ):
            raise ValueError(f"{value[:60]!r}: not a Kubernetes Secret name")
        return value

    @field_validator("failure_window")
    @classmethod
    def _duration(cls, value: str) -> str:
        return _checked_duration(value)


class HTTPConfig(_Section):
    """``http.*``: limits of the HTTP listeners."""

    handshake_timeout: str = Field(default="10s", alias="handshake-timeout")
    header_timeout: str = Field(default="10s", alias="header-timeout")
    body_timeout: str = Field(default="60s", alias="body-timeout")
    send_timeout: str = Field(default="60s", alias="send-timeout")
    # How long a stop waits for open requests before cancelling them: within Kubernetes'
    # default terminationGracePeriodSeconds (30 s), with time left for the rest of the stop.
    shutdown_timeout: str = Field(default="25s", alias="shutdown-timeout")
    # Open connections per process; unset: what the open-file limit leaves room for
    # (certctl.server.run.connection_limit).
    max_connections: int | None = Field(default=None, alias="max-connections", ge=1)

    @field_validator(
        "handshake_timeout", "header_timeout", "body_timeout", "send_timeout", "shutdown_timeout"
    )
    @classmethod
    def _duration(cls, value: str) -> str:
        return _checked_duration(value)


class WebhookConfig(_Section):
    """``notifications.webhook.*``: JSON POSTs signed with HMAC-SHA256."""

    # Before url: its check reads them (pydantic validates fields in this order).
    allow_http: StrictBool = Field(default=False, alias="allow-http")  # see MetricsConfig
    proxy: str | None = None
    url: str
    secret_file: Path | None = Field(default=None, alias="secret-file")
    # The key being retired: its signature is sent beside the current one's (v2 only).
    previous_secret_file: Path | None = Field(default=None, alias="previous-secret-file")
    timeout: str = "10s"
    ca_file: Path | None = Field(default=None, alias="ca-file")

    @field_validator("timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        return _checked_duration(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        # Checked here rather than at the first POST. Never quoted: a path or query may hold
        # a token (Slack's /services/T…/B…/<secret>), a netloc a user:password@.
        from urllib.parse import urlsplit

        if any(char <= " " or char == "\x7f" for char in value):
            raise ValueError("a space or control character in the URL: percent-encode it")
        try:
            parts = urlsplit(value)
            _ = parts.port  # a port that is no number raises
        except ValueError:
            raise ValueError("not a URL (check the host and port)") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected https://HOST[:PORT]/PATH")
        if "@" in parts.netloc:
            # httpx sends it as Basic authentication; the signature is what authenticates.
            raise ValueError(
                "a user:password@ in the URL is refused (it would go out as Basic "
                "authentication and show wherever the URL is): receivers authenticate certctl "
                "by the signature, see notifications.webhook.secret-file"
            )
        if scheme == "https" or info.data.get("allow_http"):
            return value
        # Plain HTTP carries the signed events (service names, SANs, serials) readable to
        # anyone on the path: only a receiver on this host, reached without a proxy, or an
        # explicit opt-in (as tls.mode=disabled beyond loopback needs allow-insecure).
        if info.data.get("proxy"):
            raise ValueError(
                "http:// through notifications.webhook.proxy sends the signed events "
                "unencrypted to the proxy: use https://, or set "
                "notifications.webhook.allow-http: true"
            )
        host = parts.hostname
        if not is_loopback(host):
            raise ValueError(
                f"http:// to {host} (beyond loopback) sends the signed events unencrypted: "
                "use https://, or set notifications.webhook.allow-http: true"
            )
        return value

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        # Checked here rather than at the first POST (an event's last_error). The value is
        # never quoted: a proxy URL may carry user:password@.
        from urllib.parse import urlsplit

        if value is None:
            return None
        rule = "expected http://HOST[:PORT] or https://HOST[:PORT]"
        try:
            parts = urlsplit(value)
            _ = parts.port  # a port that is no number raises
        except ValueError:
            raise ValueError(rule) from None
        if (
            parts.scheme.lower() not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise ValueError(rule)
        return value


class AcmeConfig(_Section):
    """``acme.*``: the opt-in ACME (RFC 8555) endpoint under ``/acme/``."""

    enabled: StrictBool = False  # strict: see MetricsConfig.secure
    issuer: str = "default"
    validity: str = "90D"
    allowed_names: list[str] = Field(default_factory=list, alias="allowed-names")
    http_01_port: int = Field(default=80, alias="http-01-port", ge=1, le=65535)
    dns_resolvers: list[str] = Field(default_factory=list, alias="dns-resolvers")
    external_account_required: StrictBool = Field(default=False, alias="external-account-required")

    @field_validator("validity")
    @classmethod
    def _duration(cls, value: str) -> str:
        return _checked_duration(value)

    @field_validator("allowed_names")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        # Refused at load, not found to match nothing at the first order: a pattern is a DNS
        # name, or "*." and one (any name below it, one label or more). Kept lower-case
        # A-labels, as orders' names are compared. An IP address or a network (CIDR) allows
        # IP identifiers (RFC 8738) in it, kept in Python's canonical spelling.
        from certctl.pki.name_patterns import checked_pattern

        return [checked_pattern(pattern) for pattern in value]

    @field_validator("dns_resolvers")
    @classmethod
    def _resolvers(cls, value: list[str]) -> list[str]:
        # Addresses, not names: a resolver named by a host name would need a resolver to be
        # found, and dns-01 would then trust whatever answered that lookup. Kept as given;
        # ``resolvers`` splits them.
        for entry in value:
            dns_resolver(entry)
        return value

    @property
    def resolvers(self) -> tuple[tuple[str, int], ...]:
        """``dns-resolvers`` as (address, port) pairs; empty: the system resolver."""
        return tuple(dns_resolver(entry) for entry in self.dns_resolvers)


def dns_resolver(value: str) -> tuple[str, int]:
    """``ADDRESS``, ``ADDRESS:PORT``, ``IPv6`` or ``[IPv6]:PORT`` as (address, port 53 default).

    Raises:
        ValueError: not an IP address with an optional port in 1-65535.
    """
    rule = f"{value[:60]}: expected an IP address, with :PORT if not 53 ([IPv6]:PORT)"
    host, port = value, "53"
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(rule)
        port = rest[1:] if rest else "53"  # "[::1]:" names no port, as "192.0.2.1:" does not
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(rule) from None
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(rule)
    return str(address), int(port)


# ocsp.validity's bounds: under 5 minutes a response expires before a client that cached it
# (nginx's ssl_ocsp_cache, a stapling server) asks again; past 7 days a revocation stays
# unseen by such a client for as long (RFC 5019 / CA/B Forum BR 4.9.10 allow at most 10 days).
_OCSP_VALIDITY_MIN = timedelta(minutes=5)
_OCSP_VALIDITY_MAX = timedelta(days=7)


class OcspConfig(_Section):
    """``ocsp.*``: the opt-in OCSP responder (RFC 6960, RFC 5019 profile) of every issuer."""

    enabled: StrictBool = False  # strict: see MetricsConfig.secure
    validity: str = "1h"

    @field_validator("validity")
    @classmethod
    def _duration(cls, value: str) -> str:
        _checked_duration(value)
        if not _OCSP_VALIDITY_MIN <= parse_duration(value) <= _OCSP_VALIDITY_MAX:
            raise ValueError(f"{value}: expected a duration from 5m to 7D")
        return value


class NotificationsConfig(_Section):
    """``notifications.*`` keys."""

    webhook: WebhookConfig | None = None


class ServerConfig(_Section):
    """Everything ``certctl serve`` reads."""

    data_dir: Path = Field(default=Path("certctl-data"), alias="data-dir")
    database_url: str | None = Field(default=None, alias="database-url")
    # Pooled connections per server process (each worker of `workers`); fewer than the
    # threads that may use the store at once (the default) makes bursts wait.
    database_pool_size: int = Field(default=_POOL_DEFAULT, alias="database-pool-size")
    listen: str = "127.0.0.1:8443"
    allow_insecure: StrictBool = Field(default=False, alias="allow-insecure")  # see MetricsConfig
    tls: TLSConfig = Field(default_factory=TLSConfig)
    ca_cert_validity: str = Field(default="8760h", alias="ca-cert-validity")
    ca_cert_rotate_before: str = Field(default="24h", alias="ca-cert-rotate-before")
    cert_validity: str = Field(default="8760h", alias="cert-validity")
    cert_rotate_before: str = Field(default="24h", alias="cert-rotate-before")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    log_format: Literal["text", "json"] = Field(default="text", alias="log-format")
    secrets_dir: Path | None = Field(default=None, alias="secrets-dir")
    reconcile_interval: str = Field(default="10s", alias="reconcile-interval")
    # Processes serving the listeners (one event loop each); background work runs in one.
    workers: int = Field(default=1, ge=_MIN_WORKERS, le=_MAX_WORKERS)
    notifications: NotificationsConfig = Field(default_factory=lambda: NotificationsConfig())
    services: ServicesConfig = Field(default_factory=ServicesConfig)
    acme: AcmeConfig = Field(default_factory=AcmeConfig)
    ocsp: OcspConfig = Field(default_factory=OcspConfig)
    # The URL clients reach this server at; leaves issued through the API then carry a
    # cRLDistributionPoints URI <public-url>/api/v1/issuers/<id>/crl and an
    # authorityInfoAccess caIssuers URI <public-url>/api/v1/issuers/<id>/ca.der.
    public_url: str | None = Field(default=None, alias="public-url")

    @property
    def effective_secrets_dir(self) -> Path:
        """``secrets-dir``, or ``<data-dir>/secrets``."""
        return self.secrets_dir or self.data_dir / "secrets"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        # Checked here, not first at start: only here does the message know where the value
        # came from (a flag, a variable, the file).
        _host_port(value)
        return value

    @field_validator("database_pool_size", mode="before")
    @classmethod
    def _pool_size(cls, value: Any) -> Any:
        text = str(value).strip() if isinstance(value, str | int) else ""
        if isinstance(value, bool) or not (text.isascii() and text.isdigit()):
            raise ValueError(_POOL_RULE)
        if int(text) < _POOL_MIN:
            raise ValueError(_POOL_RULE)
        return int(text)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        # In the words of the setting: pydantic said "Input should be a valid integer, unable
        # to parse string as an integer" for CERTCTL_WORKERS=four.
        text = str(value).strip() if isinstance(value, str | int) else ""
        if isinstance(value, bool) or not (text.isascii() and text.isdigit()):
            raise ValueError(_WORKERS_RULE)
        if not _MIN_WORKERS <= int(text) <= _MAX_WORKERS:
            raise ValueError(_WORKERS_RULE)
        return int(text)

    @field_validator(
        "ca_cert_validity",
        "ca_cert_rotate_before",
        "cert_validity",
        "cert_rotate_before",
        "reconcile_interval",
    )
    @classmethod
    def _duration(cls, value: str) -> str:
        return _checked_duration(value)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        from certctl.pki.distribution import check_certificate_url

        if value is None:
            return None
        try:
            return check_certificate_url(value, base=True)
        except InvalidRequest as exc:
            raise ValueError(exc.detail) from None

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        # Another SQLAlchemy dialect failed at start as an "internal error" naming a missing
        # driver module. Only the scheme is quoted: the URL may hold a password.
        if value is None:
            return None
        scheme = value.partition("://")[0] if "://" in value else ""
        if scheme.lower() not in _DATABASE_SCHEMES:
            shown = f"{scheme}://…" if scheme else "not a URL"
            raise ValueError(
                f"{shown}: use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
                "(SQLite and PostgreSQL are supported)"
            )
        from sqlalchemy.engine import make_url

        encode = "(in a user name or password, write @ as %40, : as %3A and / as %2F)"
        try:
            parsed = make_url(value)
        except ValueError:
            # SQLAlchemy's own message quotes the "port", which is often the part of a
            # password after an unencoded '@' and ':' (u:p@ss:word@db/certctl).
            raise ValueError(f"{scheme}://…: the port is not a number {encode}") from None
        if "@" in (parsed.host or ""):
            # u:p@ss@db/certctl splits at the first '@': the host "ss@db", the rest of the
            # password, which a start then quoted ("failed to resolve host 'ss@db'").
            raise ValueError(f"{scheme}://…: the host holds an '@' {encode}")
        if parsed.password is not None:
            # The password ends at the first '@' after the user name's ':'. Another '@' after
            # it is one of the password's, with a '/' or '?' before it: u:p@ss/x@db/certctl
            # split into the password "p", the host "ss" and the database "x@db/certctl", and
            # a start quoted "ss" ("failed to resolve host 'ss'"). An '@' in a user name
            # before the ':' (Azure's user@server) stays accepted.
            rest = value.partition("://")[2].partition(":")[2].partition("@")[2]
            if "@" in rest:
                raise ValueError(f"{scheme}://…: an '@' follows the password's end {encode}")
        return value

    @property
    def effective_database_url(self) -> str:
        """``database-url``, or SQLite in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'certctl.db'}"

    @property
    def host_port(self) -> tuple[str, int]:
        """``listen`` split into host and port (IPv6 in brackets allowed)."""
        return split_host_port(self.listen, "listen")


_DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")


def split_host_port(value: str, key: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``.

    Raises:
        InvalidRequest: not ``HOST:PORT``; the message names ``key=value``.
    """
    try:
        return _host_port(value)
    except ValueError as exc:
        raise InvalidRequest(f"{key}={value}: {exc}") from None


def _host_port(value: str) -> tuple[str, int]:
    """``split_host_port`` raising ``ValueError`` with the rule alone, for a validator."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        # A bare port (`--listen 9443`) is the usual slip: show it with a host.
        example = f"127.0.0.1:{value}" if value.isascii() and value.isdigit() else "127.0.0.1:8443"
        raise ValueError(f"expected HOST:PORT, e.g. {example}")
    if int(port) > 65535:
        raise ValueError(f"port {int(port)} is not in 0-65535")
    return host.strip("[]") or "127.0.0.1", int(port)


_ENV_KEYS = {
    "CERTCTL_DATA_DIR": ("data-dir",),
    "CERTCTL_DATABASE_URL": ("database-url",),
    "CERTCTL_DATABASE_POOL_SIZE": ("database-pool-size",),
    "CERTCTL_LISTEN": ("listen",),
    "CERTCTL_TLS_MODE": ("tls", "mode"),
    "CERTCTL_TLS_CERT_DIR": ("tls", "cert-dir"),
    "CERTCTL_TLS_MIN_VERSION": ("tls", "min-version"),
    "CERTCTL_TLS_CLIENT_AUTH": ("tls", "client-auth"),
    "CERTCTL_TLS_CLIENT_CA": ("tls", "client-ca"),
    "CERTCTL_METRICS_LISTEN": ("metrics", "listen"),
    "CERTCTL_LOG_FORMAT": ("log-format",),
    "CERTCTL_WORKERS": ("workers",),
    "CERTCTL_KUBECONFIG": ("kubernetes", "kubeconfig"),
    "CERTCTL_PUBLIC_URL": ("public-url",),
    "CERTCTL_ACME_ENABLED": ("acme", "enabled"),
    "CERTCTL_ACME_ISSUER": ("acme", "issuer"),
    "CERTCTL_ACME_VALIDITY": ("acme", "validity"),
    "CERTCTL_ACME_HTTP_01_PORT": ("acme", "http-01-port"),
    "CERTCTL_ACME_EXTERNAL_ACCOUNT_REQUIRED": ("acme", "external-account-required"),
    "CERTCTL_OCSP_ENABLED": ("ocsp", "enabled"),
    "CERTCTL_OCSP_VALIDITY": ("ocsp", "validity"),
}


# Variables of switches (StrictBool keys).
_SWITCH_ENV = frozenset(
    {"CERTCTL_ACME_ENABLED", "CERTCTL_ACME_EXTERNAL_ACCOUNT_REQUIRED", "CERTCTL_OCSP_ENABLED"}
)


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any, file: Path | None) -> None:
    for depth, part in enumerate(path[:-1]):
        if doc.get(part) is None:  # absent, or "tls:" with nothing under it
            doc[part] = {}
        doc = doc[part]
        if not isinstance(doc, dict):
            # Only the file holds anything but mappings on the way to a key.
            raise InvalidRequest(f"{_in_file(file, path[: depth + 1])}: expected a mapping")
    doc[path[-1]] = value


def load_config(
    file: Path | None, overrides: dict[str, Any], flags: dict[str, str] | None = None
) -> ServerConfig:
    """Merge YAML file, environment and flag overrides (dotted keys) into a config.

    Args:
        file: The YAML config file, if any.
        overrides: Values by dotted key (``tls.mode``); ``None`` leaves a key alone.
        flags: The command-line flag each override came from (``{"tls.mode": "--tls-mode"}``),
            named with its value when the value is refused.

    Raises:
        BadSetting: an invalid value of a flag or variable; the message names it as the user
            gave it: ``--workers 0``, ``CERTCTL_LISTEN=foo``.
        InvalidRequest: unreadable YAML or an invalid key/value in the file (``FILE: KEY``).
    """
    import yaml

    from certctl import yamlfile

    doc: dict[str, Any] = {}
    if file is not None:
        try:
            text = file.read_text()
            loaded = yamlfile.load(text)
        except OSError as exc:
            raise InvalidRequest(f"{file}: cannot read config ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise InvalidRequest(f"{file}: not UTF-8 text") from None
        except yaml.YAMLError as exc:
            raise InvalidRequest(f"{file}: {yamlfile.syntax_error(text, exc)}") from None
        except RecursionError:
            # PyYAML's pure-Python parser recurses per nesting level: "[[[[…" reaches the limit.
            raise InvalidRequest(f"{file}: nested too deeply") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidRequest(f"{file}: the config must be a mapping")
        doc = loaded or {}
    in_file = copy.deepcopy(doc)
    # Where each value not from the file came from, as the user wrote it.
    given: dict[tuple[str, ...], str] = {}
    for env, path in _ENV_KEYS.items():
        if os.environ.get(env):
            raw: Any = os.environ[env]
            if env in _SWITCH_ENV and raw.strip().lower() in ("true", "false"):
                # A switch is a strict boolean (see MetricsConfig.secure): its variable's
                # "true" and "false" are the YAML words; anything else is refused as given.
                raw = raw.strip().lower() == "true"
            _set(doc, path, raw, file)
            given[path] = _setting(env, os.environ[env], "=")
    for dotted, value in overrides.items():
        if value is not None:
            path = tuple(dotted.split("."))
            _set(doc, path, value, file)
            flag = (flags or {}).get(dotted)
            if flag is not None:
                given[path] = _setting(flag, value, " ")
            else:  # set by the caller, not the user: named by its key
                given.pop(path, None)
    try:
        return ServerConfig.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        # `tls: 5` reads "expected a mapping", as _set says it when a variable or flag meets
        # the same section; a misspelt key names the closest known one.
        message = schema_errors.message(ServerConfig, first)
        loc = tuple(str(part) for part in first["loc"])
        where, from_user = _source(loc, given, file, in_file)
        refused = BadSetting if from_user else InvalidRequest
        raise refused(f"{where}: {message}{_number_hint(first)}") from None


def _source(
    loc: tuple[str, ...],
    given: dict[tuple[str, ...], str],
    file: Path | None,
    in_file: dict[str, Any],
) -> tuple[str, bool]:
    """Where the value refused at ``loc`` came from, and whether a flag or variable gave it."""
    named = next((label for path, label in given.items() if loc[: len(path)] == path), None)
    if named is not None:
        return named, True
    # A check of a whole section ("tls: client-auth required needs tls.client-ca"): the
    # file when it has that section, else the flags and variables that made it.
    node: Any = in_file
    for part in loc:
        node = node.get(part) if isinstance(node, dict) else None
    under = [label for path, label in given.items() if path[: len(loc)] == loc]
    if under and node is None:
        return ", ".join(under), True
    return _in_file(file, loc), False


def _in_file(file: Path | None, loc: tuple[str, ...]) -> str:
    """``FILE: KEY``; ``config KEY`` for a value given by the caller, with no file."""
    key = ".".join(loc)
    return f"{file}: {key}" if file is not None else f"config {key}"


def _setting(name: str, value: Any, sep: str) -> str:
    """``NAME=value`` or ``--flag value``, the value shell-quoted; the name alone for a URL.

    A database URL may hold a password, so its value is never shown.
    """
    import shlex

    if name in ("CERTCTL_DATABASE_URL", "--database-url"):
        return name
    if value is True:  # an on/off flag: --allow-insecure
        return name
    text = str(value)
    if "://" in text and "@" in text:
        # A URL's user:password@ (public-url given one by mistake) is not repeated in logs.
        text = re.sub(r"://[^/?#]*@", "://…@", text, count=1)
    shown = text if len(text) <= 100 else text[:99] + "…"
    if not shown.isprintable():
        shown = ascii(shown)[1:-1]  # control characters (a pasted escape) as \x1b, not raw
    return f"{name}{sep}{shlex.quote(shown)}"


def _number_hint(error: Any) -> str:
    """Why an unquoted number was refused where a string is read (a duration, "1.3")."""
    value = error.get("input")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if error["type"] == "string_type" and _is_duration(error["loc"]):
        return f" ({value} is a number: a duration needs its unit, e.g. {value}s)"
    if error["type"] in ("string_type", "literal_error"):
        return f' ({value} is a YAML number: quote it, "{value}")'
    return ""


def _is_duration(loc: tuple[Any, ...]) -> bool:
    """Whether the key at ``loc`` (YAML spelling) is checked as a duration (``_duration``)."""
    for model in schema_errors.models_at(ServerConfig, loc[:-1]) if loc else []:
        name = schema_errors.field_name(model, loc[-1])
        validators = model.__pydantic_decorators__.field_validators.values()
        if name is not None and any(
            v.cls_var_name == "_duration" and name in v.info.fields for v in validators
        ):
            return True
    return False
