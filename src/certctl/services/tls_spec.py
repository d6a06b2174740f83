"""The ``TLSService`` spec (DESIGN §7, modelled on ECK's ``spec.http.tls``), validated whole."""

from __future__ import annotations

import ipaddress
import re
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from certctl import schema_errors
from certctl.errors import InvalidRequest
from certctl.pki.dns_names import validate_dns_name

__all__ = ["TLSServiceSpec", "parse_service", "parse_service_documents"]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,51}[a-z0-9])?\Z")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SubjectAltName(_Model):
    """One SAN: exactly one of ``dns`` or ``ip``."""

    dns: str | None = None
    ip: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        # cert-manager's dnsNames and ipAddresses are lists of bare values, and a user copying
        # them got pydantic's "expected a mapping" without being shown which one.
        if isinstance(data, dict):
            return data
        if not isinstance(data, str):
            raise ValueError("expected a mapping ({dns: NAME} or {ip: ADDRESS})")
        try:
            ipaddress.ip_address(data)
            key = "ip"
        except ValueError:
            key = "dns"
        shown = data if data.isprintable() and len(data) <= 253 else key.upper()
        raise ValueError(f"{data[:60]!r} is a bare value; give {{{key}: {shown}}}")

    @model_validator(mode="after")
    def _one(self) -> SubjectAltName:
        if (self.dns is None) == (self.ip is None):
            raise ValueError("give exactly one of dns or ip")
        if self.dns is not None:
            try:
                self.dns = validate_dns_name(self.dns)
            except InvalidRequest as exc:
                raise ValueError(exc.detail) from None  # so pydantic names the field
        if self.ip is not None:
            try:
                address = ipaddress.ip_address(self.ip)
            except ValueError:
                raise ValueError(f"{self.ip}: not a valid IPv4 or IPv6 address") from None
            if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
                # A zone (%eth0) names an interface of one host; an iPAddress SAN has no room
                # for it (RFC 5280 4.2.1.6: 16 octets). Accepted here, every reconcile failed.
                raise ValueError(
                    f"{self.ip}: an IPv6 zone ID (%{address.scope_id}) cannot go in a "
                    f"certificate; give {address.compressed.partition('%')[0]}"
                )
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                # As ECK (IPToRFCForm): a client connecting to 10.0.0.5 matches the 4-byte
                # SAN only, so ::ffff:10.0.0.5 issued as it is matched nobody.
                self.ip = str(address.ipv4_mapped)
        return self


# cert-manager's (and the Kubernetes CSR API's) spelling of the extended key usages a
# service certificate may carry. Key usages follow the key type and are not chosen here.
SERVER_AUTH, CLIENT_AUTH = "server auth", "client auth"
_USAGES = (SERVER_AUTH, CLIENT_AUTH)


class SelfSignedCertificate(_Model):
    """``selfSignedCertificate``: names for the certctl-issued certificate, or disabled."""

    subject_alt_names: list[SubjectAltName] = Field(
        default_factory=list, alias="subjectAltNames", max_length=100
    )
    # Strict, as every switch of the spec: pydantic's lax mode read the string "yes" (quoted
    # in YAML, or sent as JSON) as true and 1 as true; YAML's own true/false are booleans.
    disabled: StrictBool = False
    # None: [server auth], as before the field existed (left out of the stored document,
    # so specs stored before it compare equal and are not reconciled again for nothing).
    usages: list[str] | None = Field(default=None, max_length=10)

    @field_validator("usages")
    @classmethod
    def _usages(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for usage in value:
            if usage not in _USAGES:
                raise ValueError(
                    f"{usage[:40]!r} is not a usage certctl issues; give 'server auth' and, "
                    "for a service that also connects as a TLS client (mutual TLS between "
                    "nodes), 'client auth' (key usages follow the key type)"
                )
        if SERVER_AUTH not in value:
            raise ValueError("must include 'server auth': the service serves this certificate")
        return [u for u in _USAGES if u in value]  # canonical order, duplicates dropped


class CustomCertificate(_Model):
    """``certificate.secretName``: tls.crt+tls.key[+ca.crt] to serve, or ca.crt+ca.key."""

    secret_name: str = Field(alias="secretName", min_length=1, max_length=253)

    @field_validator("secret_name")
    @classmethod
    def _safe(cls, value: str) -> str:
        # \Z, not $: "$" matches before a final newline, and "web\n" was taken.
        if not re.match(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?\Z", value):
            shown = value if value.isprintable() else repr(value)
            raise ValueError(f"{shown}: secret names are lower-case DNS labels")
        return value


class ClientAuthentication(_Model):
    """``client.authentication``: build the ``-client-trust`` bundle."""

    authentication: StrictBool = False  # strict: see SelfSignedCertificate.disabled


class TLS(_Model):
    """``spec.http.tls``."""

    self_signed_certificate: SelfSignedCertificate = Field(
        default_factory=SelfSignedCertificate, alias="selfSignedCertificate"
    )
    certificate: CustomCertificate | None = None
    client: ClientAuthentication = Field(default_factory=ClientAuthentication)


class HTTP(_Model):
    """``spec.http``."""

    tls: TLS = Field(default_factory=TLS)


_MIN_RELOAD_TIMEOUT, _MAX_RELOAD_TIMEOUT = timedelta(seconds=1), timedelta(minutes=10)


def _unquoted_operators(command: str) -> set[str]:
    r"""Shell operator characters outside quotes and not escaped, glued to a word or not.

    Quoted ('>') or escaped (\;) they are plain arguments, as ``shlex.split`` gives them.
    """
    found: set[str] = set()
    quote: str | None = None
    escaped = False
    for char in command:
        if escaped:
            escaped = False
        elif quote == "'":
            quote = None if char == "'" else quote
        elif char == "\\":
            escaped = True
        elif quote == '"':
            quote = None if char == '"' else quote
        elif char in "'\"":
            quote = char
        elif char in "();<>|&":
            found.add(char)
    return found


def _stored(info: ValidationInfo) -> bool:
    # A spec read back from the store, written before a rule was added: rules that only
    # stop a mistake from being made (not a harm from happening) are not applied again,
    # so an upgrade does not fail a service that was working.
    return bool(info.context and info.context.get("stored"))


# uid_t/gid_t are 32-bit; (uid_t)-1 means "unchanged" to chown(2), so it is not an id.
_MAX_ID = 2**32 - 2
# What getpwnam/getgrnam could never find. Real names go well beyond the POSIX portable set
# (SSSD's user@ad.example, winbind's "DOM\\user" and "domain users"), so only these are
# refused here; an account missing on the host is the delivery's error.
_NOT_AN_ACCOUNT = re.compile(r"[\x00-\x1f\x7f:/]|^-|^\s*\Z")


class DirectoryTarget(_Model):
    """A directory receiving the ``-certs-internal`` bundle."""

    directory: Path
    reload: str | None = None
    reload_timeout: str = Field(default="30s", alias="reloadTimeout")
    format: Literal["pem", "pkcs12"] = "pem"
    password_file: Path | None = Field(default=None, alias="passwordFile")
    owner: str | int | None = None
    group: str | int | None = None

    @field_validator("directory", "password_file")
    @classmethod
    def _absolute(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None or _stored(info):
            # Rows stored before these rules keep working: the policy's delivery check
            # (target_policy.delivery_problem) judges what such a path resolves to.
            return value
        if not value.is_absolute():
            raise ValueError(f"{value}: must be an absolute path")
        if ".." in value.parts:
            # /srv/tls/.. reads as inside /srv/tls and is /srv: say what is meant.
            raise ValueError(f"{value}: must not contain '..'")
        return value

    @field_validator("reload_timeout")
    @classmethod
    def _duration(cls, value: str, info: ValidationInfo) -> str:
        from certctl.pki import parse_duration

        try:
            timeout = parse_duration(value)
        except InvalidRequest as exc:
            raise ValueError(exc.detail) from None  # so pydantic names the field
        # The reconciler waits for the command, and every other service waits with it.
        # (Checked on what is sent, not on rows stored before the limit: see _stored.)
        if not _stored(info) and not _MIN_RELOAD_TIMEOUT <= timeout <= _MAX_RELOAD_TIMEOUT:
            raise ValueError(f"{value}: reload timeouts are 1s to 10m")
        return value

    @field_validator("reload")
    @classmethod
    def _command(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Split as run_reload will (no shell), so a quoting mistake fails the PUT, not every
        # delivery.
        if value is None or _stored(info):
            return value
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot be split into arguments: {exc}") from None
        if not argv:
            raise ValueError("an empty reload command; leave reload out instead")
        shell = sorted(_unquoted_operators(value))
        if shell:
            raise ValueError(
                f"reload runs without a shell, so {' '.join(shell)} would reach the command as "
                "an argument; wrap it: sh -c '…'"
            )
        return value

    @field_validator("owner", "group", mode="before")
    @classmethod
    def _not_a_switch(cls, value: Any) -> Any:
        # A bool is an int to pydantic: `owner: yes` (YAML's true) was read as uid 1.
        if isinstance(value, bool) or not isinstance(value, str | int | None):
            shown = str(value).lower() if isinstance(value, bool) else repr(value)[:40]
            raise ValueError(f"{shown} is not a user or group; give a name or a numeric id")
        return value

    @field_validator("owner", "group")
    @classmethod
    def _account(cls, value: str | int | None) -> str | int | None:
        # Checked here, not at delivery: a uid the kernel cannot take would fail every
        # reconcile forever instead of once, at the PUT.
        if value is None:
            return None
        if isinstance(value, int) or (value.isascii() and value.isdigit()):
            if not 0 <= int(value) <= _MAX_ID:
                raise ValueError(f"{value}: user and group ids are 0 to {_MAX_ID}")
            return value
        if len(value) > 256 or _NOT_AN_ACCOUNT.search(value):
            raise ValueError(f"{value[:40]!r} is not a user or group name")
        return value

    @model_validator(mode="after")
    def _p12(self) -> DirectoryTarget:
        if self.format == "pkcs12" and self.password_file is None:
            raise ValueError("format pkcs12 needs passwordFile")
        return self


# Kubernetes object names (apimachinery's IsDNS1123Subdomain / IsDNS1123Label) and label
# keys and values (IsQualifiedName / IsValidLabelValue). Checked here because they end up in
# the API URL and the object: "../kube-system/secrets/x" must never reach either.
_K8S_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_K8S_SUBDOMAIN = re.compile(rf"{_K8S_LABEL}(\.{_K8S_LABEL})*\Z")
_K8S_NAMESPACE = re.compile(rf"{_K8S_LABEL}\Z")
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?\Z")
# The label certctl.targets.kubernetes marks its own Secrets with (value "certctl").
_MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


# A key of a Secret's data (apimachinery's IsConfigMapKey).
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+\Z")


class SecretKeyRef(_Model):
    """``passwordSecretRef``: one key of a Secret in the target's namespace (cert-manager's)."""

    name: str
    key: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > 253 or not _K8S_SUBDOMAIN.match(value):
            raise ValueError(
                f"{value[:60]!r}: Secret names are lower-case DNS subdomains of at most 253 "
                "characters (letters, digits, '-', '.')"
            )
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if len(value) > 253 or not _SECRET_KEY.match(value):
            raise ValueError(
                f"{value[:60]!r}: Secret keys are at most 253 letters, digits, '-', '_', '.'"
            )
        return value


class PKCS12Keystore(_Model):
    """``keystores.pkcs12``: ``keystore.p12`` and ``truststore.p12`` in the Secret too.

    cert-manager's Certificate ``spec.keystores.pkcs12``, without its literal ``password``
    (a spec is readable by every service viewer) and its ``profile`` (certctl writes the
    one Java-compatible set a directory target's ``format: pkcs12`` writes).
    """

    # Required, as cert-manager's: a keystores block copied with create: false writes none.
    create: StrictBool
    password_secret_ref: SecretKeyRef | None = Field(default=None, alias="passwordSecretRef")

    @model_validator(mode="after")
    def _password(self) -> PKCS12Keystore:
        if self.create and self.password_secret_ref is None:
            raise ValueError("create: true needs passwordSecretRef (name and key of a Secret)")
        return self


class Keystores(_Model):
    """``keystores`` of a Secret target (cert-manager's ``spec.keystores``; PKCS#12 only)."""

    pkcs12: PKCS12Keystore | None = None


class SecretTarget(_Model):
    """A Kubernetes Secret receiving the bundle (``type: kubernetes.io/tls``)."""

    secret: str
    # None: kubernetes.namespace of the server config (the ServiceAccount's namespace).
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    keystores: Keystores | None = None

    @property
    def pkcs12(self) -> PKCS12Keystore | None:
        """``keystores.pkcs12`` when it creates keystores, else None."""
        p12 = self.keystores.pkcs12 if self.keystores is not None else None
        return p12 if p12 is not None and p12.create else None

    @model_validator(mode="after")
    def _own_password(self) -> SecretTarget:
        p12 = self.pkcs12
        if p12 is not None and p12.password_secret_ref is not None:
            if p12.password_secret_ref.name == self.secret:
                # certctl replaces that Secret's data (and refuses to read one it writes as a
                # password): the keystore would be locked with a password it overwrote.
                raise ValueError(
                    "keystores.pkcs12.passwordSecretRef names the target Secret itself; "
                    "keep the password in a Secret of its own"
                )
        return self

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        if len(value) > 253 or not _K8S_SUBDOMAIN.match(value):
            raise ValueError(
                f"{value[:60]!r}: Secret names are lower-case DNS subdomains of at most 253 "
                "characters (letters, digits, '-', '.')"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not _K8S_NAMESPACE.match(value)):
            raise ValueError(
                f"{value[:60]!r}: namespaces are lower-case DNS labels of at most 63 characters"
            )
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for key, text in value.items():
            if key == _MANAGED_BY_LABEL and not _stored(info):
                # certctl marks the Secrets it owns with this label and refuses to replace
                # one that lacks it: another value would lock certctl out of its own Secret
                # after the first write. (Stored specs keep working: the writer ignores it.)
                raise ValueError(
                    f"{key} is set by certctl (to certctl) on the Secrets it writes; "
                    "use another label"
                )
            prefix, slash, name = key.rpartition("/")
            if (
                not name
                or len(name) > 63
                or not _LABEL_NAME.match(name)
                or (slash and (len(prefix) > 253 or not _K8S_SUBDOMAIN.match(prefix)))
            ):
                raise ValueError(f"{key[:60]!r} is not a Kubernetes label key")
            if len(text) > 63 or not _LABEL_NAME.match(text):
                raise ValueError(
                    f"label {key}: {text[:60]!r} is not a Kubernetes label value "
                    "(at most 63 letters, digits, '-', '_', '.', alphanumeric at both ends)"
                )
        return value


def _target_kind(value: Any) -> str | None:
    # Pick the model by its key, so errors come from the one the user meant (not from
    # whichever union member pydantic tried first) and carry no union member in their path.
    if isinstance(value, dict):
        return next((_TAGS[k] for k in ("directory", "secret") if k in value), None)
    return type(value).__name__ if isinstance(value, DirectoryTarget | SecretTarget) else None


_TAGS = {"directory": "DirectoryTarget", "secret": "SecretTarget"}
_Target = Annotated[
    Annotated[DirectoryTarget, Tag("DirectoryTarget")]
    | Annotated[SecretTarget, Tag("SecretTarget")],
    Discriminator(
        _target_kind,
        custom_error_type="target_kind",
        custom_error_message="a target needs a directory or a secret",
    ),
]


class Spec(_Model):
    """``spec``."""

    http: HTTP = Field(default_factory=HTTP)
    targets: list[_Target] = Field(default_factory=list, max_length=20)


class Metadata(_Model):
    """``metadata``."""

    # The pattern for openapi.json, _NAME's ($ for \Z, which ECMA 262 lacks): a client
    # generated from it sent any string, refused (400).
    name: str = Field(json_schema_extra={"pattern": _NAME.pattern.replace(r"\Z", "$")})

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value}: names are 1-53 lower-case letters, digits or '-'")
        return value


class TLSServiceSpec(_Model):
    """A whole ``TLSService`` document."""

    # Checked first, with words for what was received, by parse_service (_check_type).
    api_version: Literal["certctl.io/v1"] = Field(alias="apiVersion")
    kind: Literal["TLSService"]
    metadata: Metadata
    spec: Spec = Field(default_factory=Spec)

    @property
    def name(self) -> str:
        """``metadata.name``."""
        return self.metadata.name

    @property
    def tls(self) -> TLS:
        """``spec.http.tls``."""
        return self.spec.http.tls

    @property
    def disabled(self) -> bool:
        """True for plain HTTP: nothing is issued."""
        return self.tls.self_signed_certificate.disabled

    @property
    def client_auth(self) -> bool:
        """Whether the certificate also carries clientAuth (``usages`` has 'client auth')."""
        return CLIENT_AUTH in (self.tls.self_signed_certificate.usages or ())

    def dns_names(self) -> list[str]:
        """The service name plus the spec's DNS SANs, in order, deduplicated."""
        names = [self.name] + [
            s.dns for s in self.tls.self_signed_certificate.subject_alt_names if s.dns
        ]
        return list(dict.fromkeys(names))

    def ip_addresses(self) -> list[str]:
        """The spec's IP SANs."""
        return [s.ip for s in self.tls.self_signed_certificate.subject_alt_names if s.ip]

    def to_document(self) -> dict[str, Any]:
        """The canonical JSON document (aliases, no defaults left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


_API_VERSION, _KIND = "certctl.io/v1", "TLSService"
# Where the README maps an ECK resource's spec.http.tls onto a TLSService (its heading's
# anchor, as GitHub and most renderers make it).
_ECK_MAPPING = "README.md#managed-tls-for-services, 'Coming from ECK'"


def _shown(value: Any, *, quoted: bool = True) -> str:
    """``value`` for one line of a message: quoted (or escaped, if it holds controls), cut."""
    if isinstance(value, str) and value.isprintable() and not quoted:
        return value[:60]
    return repr(value[:60] if isinstance(value, str) else value)[:64]


def _check_type(doc: dict[Any, Any]) -> None:
    """Refuse a document of another type saying what it is and what is expected.

    Pydantic's "apiVersion: Input should be 'certctl.io/v1'" named neither what was received
    nor, for an ECK resource pasted whole (the model this spec follows), what carries over.

    Raises:
        InvalidRequest: ``apiVersion`` or ``kind`` is not the TLSService's.
    """
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if api_version == _API_VERSION and kind == _KIND:
        return
    group = api_version.partition("/")[0] if isinstance(api_version, str) else ""
    if group.endswith(".k8s.elastic.co"):
        # Elasticsearch, Kibana, ApmServer, EnterpriseSearch, …: their spec.http.tls is ours.
        raise InvalidRequest(
            f"apiVersion: got {_shown(api_version, quoted=False)} "
            f"(kind {_shown(kind, quoted=False)}), an ECK "
            f"resource; certctl takes apiVersion {_API_VERSION}, kind {_KIND}: keep "
            "metadata.name and spec.http.tls as they are, leave out the rest of its spec, add "
            f"spec.targets ({_ECK_MAPPING})"
        )
    if api_version != _API_VERSION:
        got = "missing" if api_version is None else f"got {_shown(api_version)}"
        raise InvalidRequest(f"apiVersion: {got}, expected {_API_VERSION} (kind {_KIND})")
    got = "missing" if kind is None else f"got {_shown(kind)}"
    raise InvalidRequest(f"kind: {got}, expected {_KIND}")


def parse_service(doc: Any, where: str = "spec", *, stored: bool = False) -> TLSServiceSpec:
    """Validate one document; the error names the field.

    ``stored``: a document read back from the store, where limits added later (reload
    timeout range, reload command syntax) are not applied again.

    Raises:
        InvalidRequest: the document is not a valid TLSService.
    """
    if not isinstance(doc, dict):
        raise InvalidRequest(f"{where}: a TLSService document must be a mapping")
    try:
        _check_type(doc)
        spec = TLSServiceSpec.model_validate(doc, context={"stored": stored})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p not in _TAGS.values()) or "document"
        message = schema_errors.message(TLSServiceSpec, first)
        if field == "spec.http.service" and first["type"] == "extra_forbidden":
            # Copied from an ECK resource with its tls: "known here: tls" did not say why.
            message = (
                "unknown key (ECK's Kubernetes Service settings have no counterpart here: "
                "copy spec.http.tls alone)"
            )
        if field.endswith(".keystores.pkcs12.password") and first["type"] == "extra_forbidden":
            # cert-manager's literal password: in a spec, every service viewer reads it.
            message = (
                "unknown key (a password is never put in a spec: name a Secret labelled "
                "certctl.io/keystore-password=true in passwordSecretRef)"
            )
        elif field.endswith(".keystores.pkcs12.profile") and first["type"] == "extra_forbidden":
            message = (
                "unknown key (certctl writes one profile, the directory target's: AES-256-CBC "
                "with PBKDF2 and an HMAC-SHA256 MAC, as cert-manager's Modern2023; leave it out)"
            )
        raise InvalidRequest(f"{where}: {field}: {message}") from None
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc.detail}") from None
    if spec.tls.certificate is not None and spec.disabled:
        raise InvalidRequest(
            f"{where}: spec.http.tls: certificate and selfSignedCertificate.disabled conflict"
        )
    if spec.tls.client.authentication and spec.disabled and not stored:
        # Plain HTTP authenticates no client: accepted, the service read "Ready" while
        # every request got in without a certificate. (Stored specs keep loading.)
        raise InvalidRequest(
            f"{where}: spec.http.tls: client.authentication needs TLS, which "
            "selfSignedCertificate.disabled turns off"
        )
    return spec


def parse_service_documents(text: str) -> list[TLSServiceSpec]:
    """Parse a multi-document YAML file; every document must be valid, names unique.

    Raises:
        InvalidRequest: bad YAML, an invalid document (named by index and field), a repeated
            name, or a target spelled the same in two documents.
    """
    import yaml

    from certctl import yamlfile

    try:
        docs = [d for d in yamlfile.load_all(text) if d is not None]
    except yamlfile.DuplicateKey as exc:
        raise InvalidRequest(f"services file: {exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"services file is {yamlfile.syntax_error(text, exc)}") from None
    except RecursionError:
        # PyYAML's pure-Python parser recurses per nesting level: "[[[[…" reaches the limit.
        raise InvalidRequest("services file is nested too deeply") from None
    if not docs:
        raise InvalidRequest("services file holds no TLSService document")
    specs = [parse_service(doc, f"document {i}") for i, doc in enumerate(docs, start=1)]
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidRequest(f"services file defines {', '.join(repeated)} more than once")
    _check_targets_apart(specs)
    return specs


def _check_targets_apart(specs: list[TLSServiceSpec]) -> None:
    # The server refuses a target another service has (409), but only once the first of the
    # two is stored: caught here, nothing of the file is applied. Only the same spelling is
    # compared; what a path resolves to, or a Secret's default namespace, the server knows.
    seen: dict[tuple[str, str | None, str], int] = {}
    for number, spec in enumerate(specs, start=1):
        for index, target in enumerate(spec.spec.targets):
            identity = (
                ("dir", None, str(target.directory))
                if isinstance(target, DirectoryTarget)
                else ("secret", target.namespace, target.secret)
            )
            first = seen.setdefault(identity, number)
            if first != number:
                kind, namespace, name = identity
                where = f"{kind}:{namespace}/{name}" if namespace else f"{kind}:{name}"
                raise InvalidRequest(
                    f"document {number}: spec.targets.{index}: {where} is also a target of "
                    f"document {first} ({specs[first - 1].name})"
                )
