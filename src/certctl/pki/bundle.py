"""HTTP TLS bundles: the ``elasticsearch-certutil http`` zip, built in memory.

Layout of the zip (``<node>`` is a node name, or the shared name in shared mode)::

    ca/                      new-ca mode only
      README.txt  ca.crt  ca.key (0600; encrypted with ca_password if given)
      ca.p12 (0600)                       with ca_password only: key + certificate, alias "ca"
    elasticsearch/<node>/    profile "elasticsearch"; "<node>/" for profile "generic"
      README.txt
      http.p12 (0600)                     p12 format
      http.crt  http.key (0600)           pem format (http.crt: leaf, then intermediates)
      http.csr  http.key (0600)           csr mode
      sample-elasticsearch.yml            resp. sample-nginx.conf
    kibana/                  "client/" for profile "generic"
      README.txt
      elasticsearch-ca.pem                resp. ca.crt (absent in csr mode)
      sample-kibana.yml                   resp. sample-curl.sh

Every node certificate carries its own names (``NodeSpec.dns``/``ip``, or the node name
as a DNS name when it has none) plus the plan's ``common_dns``/``common_ip``.
"""

from __future__ import annotations

import io
import ipaddress
import re
import textwrap
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from certctl.errors import InvalidRequest
from certctl.pki.csr import create_csr
from certctl.pki.formats import (
    certs_to_pem,
    format_serial,
    key_to_pem,
    pkcs12_password_warning,
    to_pkcs12,
)
from certctl.pki.issue import CertificateAuthority, create_root_ca
from certctl.pki.keys import KeyType, generate_private_key
from certctl.pki.names import SubjectAltNames, common_name_dn, format_dn, validate_dns_name
from certctl.pki.profiles import get_profile
from certctl.pki.validity import format_duration

__all__ = [
    "BUNDLE_MODES",
    "BUNDLE_PROFILES",
    "BundleNode",
    "BundleResult",
    "HttpBundlePlan",
    "NodeSpec",
    "PlannedCertificate",
    "build_http_bundle",
    "plan_certificates",
    "validate_node_name",
]

BundleMode = Literal["csr", "new-ca", "existing-ca"]
BundleProfile = Literal["elasticsearch", "generic"]
OutputFormat = Literal["p12", "pem"]

BUNDLE_MODES: tuple[str, ...] = ("csr", "new-ca", "existing-ca")
BUNDLE_PROFILES: tuple[str, ...] = ("elasticsearch", "generic")
OUTPUT_FORMATS: tuple[str, ...] = ("p12", "pem")

# A node name becomes a folder in the zip: keep it portable (no separators, no dot-names).
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# Folders the generic profile uses next to the node folders.
_RESERVED = {"generic": ("ca", "client"), "elasticsearch": ()}
_SECRET = 0o100600
_PUBLIC = 0o100644
_EXECUTABLE = 0o100755
_WIDTH = 88  # README line width


@dataclass(frozen=True)
class NodeSpec:
    """One node: its name (folder and CN) and the names its certificate must carry."""

    name: str
    dns: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()


@dataclass(frozen=True)
class HttpBundlePlan:
    """Every choice of the ``certctl http`` wizard, as data.

    Attributes:
        mode: ``csr`` (keys and CSRs for an external CA), ``new-ca`` (create a CA, shipped
            under ``ca/``) or ``existing-ca`` (sign with ``ca``).
        nodes: the nodes; in shared mode their names all go into one certificate.
        shared: one certificate for every node, in a folder named ``shared_name``.
        shared_name: folder and CN of the shared certificate.
        common_dns: DNS names added to every certificate (a load balancer, say).
        common_ip: IP addresses added to every certificate.
        validity: leaf lifetime (ignored in csr mode: the external CA decides).
        key_type: key type of the node keys.
        output_format: ``p12`` (``http.p12``) or ``pem`` (``http.crt`` + ``http.key``).
        password: PKCS#12 password; required for ``p12`` unless in csr mode.
        password_hint: where the password came from, written to the READMEs instead of it.
        p12_legacy: PKCS#12 with 3DES/SHA-1 for old Java and Windows.
        profile: ``elasticsearch`` (Elasticsearch + Kibana samples) or ``generic``
            (nginx + curl samples).
        ca: the issuing CA in existing-ca mode.
        ca_subject: subject of the new CA (default ``CN=Elasticsearch HTTP CA`` or
            ``CN=certctl HTTP CA``).
        ca_validity: lifetime of the new CA.
        ca_key_type: key type of the new CA.
        ca_password: new-ca mode: encrypts ``ca/ca.key`` (PKCS#8, AES-256) and protects
            ``ca/ca.p12``, as elasticsearch-certutil asks for one; ``None`` writes ``ca.key``
            unencrypted and no ``ca.p12``.
        ca_password_hint: where ``ca_password`` came from, written to ``ca/README.txt``.
    """

    mode: BundleMode
    nodes: tuple[NodeSpec, ...]
    shared: bool = False
    shared_name: str = "http"
    common_dns: tuple[str, ...] = ()
    common_ip: tuple[str, ...] = ()
    validity: timedelta = timedelta(days=90)
    key_type: KeyType = KeyType.EC_P256
    output_format: OutputFormat = "p12"
    password: bytes | None = field(default=None, repr=False)
    password_hint: str = "the password chosen when the bundle was created"
    p12_legacy: bool = False
    profile: BundleProfile = "elasticsearch"
    ca: CertificateAuthority | None = field(default=None, repr=False)
    ca_subject: x509.Name | None = None
    ca_validity: timedelta = timedelta(days=5 * 365)
    ca_key_type: KeyType = KeyType.EC_P256
    ca_password: bytes | None = field(default=None, repr=False)
    ca_password_hint: str = "the CA password chosen when the bundle was created"


@dataclass(frozen=True)
class PlannedCertificate:
    """A certificate (or CSR) the plan asks for, before any key exists.

    ``hosts`` are the addresses clients use, one per node (its first own name), for the
    sample client settings.
    """

    name: str
    sans: SubjectAltNames
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class BundleNode:
    """One certificate (or CSR) in the bundle and where it went."""

    name: str
    folder: str
    sans: SubjectAltNames
    hosts: tuple[str, ...]
    files: tuple[str, ...]
    certificate: x509.Certificate | None = None
    csr: x509.CertificateSigningRequest | None = None


@dataclass(frozen=True)
class BundleResult:
    """The zip bytes and what is in them."""

    data: bytes = field(repr=False)
    nodes: tuple[BundleNode, ...]
    client_folder: str
    ca_folder: str | None
    ca_certificate: x509.Certificate | None
    entries: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def validate_node_name(name: str) -> str:
    """Return ``name`` if it can be a folder name and a common name.

    Raises:
        InvalidRequest: the name is empty, too long or holds characters other than
            letters, digits, ``.``, ``_`` and ``-`` (or starts with ``.``, ``_`` or ``-``).
    """
    if not _NODE_NAME.match(name):
        raise InvalidRequest(
            f"{name!r}: invalid node name (1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit)"
        )
    return name


def build_http_bundle(plan: HttpBundlePlan, *, now: datetime) -> BundleResult:
    """Build the HTTP TLS bundle described by ``plan`` as zip bytes.

    Everything is validated before the first key is generated.

    Args:
        plan: the wizard's choices.
        now: the issuing time (aware UTC); also the timestamp of the zip entries.

    Returns:
        The zip bytes, the nodes with their certificates or CSRs, and warnings (short
        lifetimes, clipped validity, Ed25519 keys) for the caller to show.

    Raises:
        InvalidRequest: a choice is invalid; the message names the value.
        WeakKey: a key type is below policy.
    """
    targets = plan_certificates(plan)
    # Certificates hold whole seconds; so do the READMEs' lifetimes.
    now = now.replace(microsecond=0)
    layout = _Layout(plan.profile)
    warnings: list[str] = []
    zip_files: list[tuple[str, bytes, int]] = []
    ca: CertificateAuthority | None = None
    if plan.mode == "new-ca":
        ca_key = generate_private_key(plan.ca_key_type)
        ca_subject = plan.ca_subject or common_name_dn(layout.default_ca_cn)
        issued_ca = create_root_ca(ca_key, ca_subject, validity=plan.ca_validity, now=now)
        warnings += issued_ca.warnings
        ca = CertificateAuthority(issued_ca.certificate, ca_key)
        zip_files += [
            ("ca/README.txt", _ca_readme(plan, ca.certificate, layout).encode(), _PUBLIC),
            ("ca/ca.crt", certs_to_pem([ca.certificate]), _PUBLIC),
            ("ca/ca.key", key_to_pem(ca_key, plan.ca_password), _SECRET),
        ]
        if plan.ca_password:
            # certutil's own CA file: 'elasticsearch-certutil cert --ca ca.p12' and Java
            # tools take it. Always AES-256: --p12-legacy is for the servers' keystores.
            ca_p12 = to_pkcs12("ca", ca_key, ca.certificate, (), plan.ca_password)
            zip_files.append(("ca/ca.p12", ca_p12, _SECRET))
            if pkcs12_password_warning(plan.ca_password) is not None:
                warnings.append(
                    "the CA password has characters outside printable ASCII: ca/ca.key opens "
                    "with it, but Java (keytool, elasticsearch-certutil …) cannot open ca/ca.p12"
                )
    elif plan.mode == "existing-ca":
        ca = plan.ca
    if plan.mode != "csr" and plan.output_format == "p12" and plan.password:
        if (message := pkcs12_password_warning(plan.password)) is not None:
            warnings.append(message)
    if plan.key_type is KeyType.ED25519:
        warnings.append(
            "ed25519 certificates are refused by browsers and many TLS clients; "
            "prefer ec-p256 for HTTP"
        )
    profile = get_profile("server")
    nodes: list[BundleNode] = []
    for target in targets:
        name, sans = target.name, target.sans
        folder = layout.node_folder(name)
        key = generate_private_key(plan.key_type)
        files: list[tuple[str, bytes, int]] = []
        certificate: x509.Certificate | None = None
        csr: x509.CertificateSigningRequest | None = None
        if ca is None:
            csr = create_csr(key, common_name_dn(name), sans)
            files.append(("http.csr", csr.public_bytes(serialization.Encoding.PEM), _PUBLIC))
            files.append(("http.key", key_to_pem(key), _SECRET))
        else:
            issued = ca.issue(
                key.public_key(),
                common_name_dn(name),
                profile=profile,
                validity=plan.validity,
                now=now,
                sans=sans,
            )
            warnings += issued.warnings
            certificate = issued.certificate
            files += _leaf_files(plan, ca, certificate, key)
        files.append(
            (
                "README.txt",
                _node_readme(plan, layout, name, sans, certificate, now).encode(),
                _PUBLIC,
            )
        )
        sample_name, sample = layout.server_sample(plan, name, sans)
        files.append((sample_name, sample.encode(), _PUBLIC))
        zip_files += [(folder + f, data, mode) for f, data, mode in files]
        nodes.append(
            BundleNode(
                name, folder, sans, target.hosts, tuple(f for f, _, _ in files), certificate, csr
            )
        )
    zip_files += _client_files(plan, layout, ca, nodes)
    data = _zip(zip_files, now)
    return BundleResult(
        data=data,
        nodes=tuple(nodes),
        client_folder=layout.client_folder,
        ca_folder="ca/" if plan.mode == "new-ca" else None,
        ca_certificate=ca.root if ca is not None else None,
        entries=tuple(f for f, _, _ in zip_files),
        warnings=tuple(dict.fromkeys(warnings)),
    )


def plan_certificates(plan: HttpBundlePlan) -> list[PlannedCertificate]:
    """Validate every choice of ``plan``; return the certificates (or CSRs) to make.

    Cheap (no key is generated), so a wizard can show the result before building.

    Raises:
        InvalidRequest: a choice is invalid; the message names the value.
    """
    if plan.mode not in BUNDLE_MODES:
        raise InvalidRequest(f"{plan.mode}: unknown bundle mode (choose csr, new-ca, existing-ca)")
    if plan.profile not in BUNDLE_PROFILES:
        raise InvalidRequest(f"{plan.profile}: unknown bundle profile (elasticsearch or generic)")
    if plan.output_format not in OUTPUT_FORMATS:
        raise InvalidRequest(f"{plan.output_format}: unknown output format (p12 or pem)")
    if plan.mode != "new-ca" and plan.ca_password is not None:
        # The password of an existing CA's key is the caller's business (it loads the CA).
        raise InvalidRequest(f"{plan.mode} mode creates no CA key to encrypt")
    if plan.mode == "existing-ca" and plan.ca is None:
        raise InvalidRequest("existing-ca mode needs a CA")
    if plan.mode != "existing-ca" and plan.ca is not None:
        raise InvalidRequest(f"{plan.mode} mode takes no existing CA")
    if plan.mode != "csr" and plan.output_format == "p12" and not plan.password:
        raise InvalidRequest("PKCS#12 output needs a non-empty password (or use PEM output)")
    if plan.validity <= timedelta(0):
        raise InvalidRequest(f"{plan.validity}: validity must be positive")
    if plan.mode == "new-ca":
        if plan.ca_validity <= timedelta(0):
            raise InvalidRequest(f"{plan.ca_validity}: CA validity must be positive")
        if plan.ca_subject is not None and not plan.ca_subject:
            raise InvalidRequest("a CA certificate needs a subject")
        if plan.ca_validity < plan.validity:
            raise InvalidRequest(
                f"CA validity {format_duration(plan.ca_validity)} is shorter than the "
                f"certificate validity {format_duration(plan.validity)}"
            )
    reserved = _RESERVED[plan.profile]
    seen: dict[str, str] = {}
    for node in plan.nodes:
        validate_node_name(node.name)
        if not plan.shared and node.name.lower() in reserved:
            raise InvalidRequest(
                f"{node.name}: node name is reserved for a folder of the {plan.profile} "
                f"profile ({', '.join(reserved)})"
            )
        if node.name.lower() in seen:
            raise InvalidRequest(f"{node.name}: node given twice")
        seen[node.name.lower()] = node.name
    common = SubjectAltNames.parse(dns=plan.common_dns, ip=plan.common_ip)
    per_node = [_plan_node(node, common) for node in plan.nodes]
    if plan.shared:
        validate_node_name(plan.shared_name)
        if plan.shared_name.lower() in reserved:
            raise InvalidRequest(f"{plan.shared_name}: name is reserved for a folder")
        dns: list[str] = []
        ips: list[str] = []
        for planned in per_node:
            dns += planned.sans.dns
            ips += [str(a) for a in planned.sans.ip]
        merged = SubjectAltNames.parse(
            dns=[*dns, *common.dns], ip=[*ips, *(str(a) for a in common.ip)]
        )
        if not merged:
            raise InvalidRequest("the shared certificate needs at least one DNS name or IP")
        hosts = tuple(dict.fromkeys(h for p in per_node for h in p.hosts)) or (
            _host(merged, plan.shared_name),
        )
        return [PlannedCertificate(plan.shared_name, merged, hosts)]
    if not per_node:
        raise InvalidRequest("no nodes: give at least one node (or a shared certificate)")
    return per_node


def _plan_node(node: NodeSpec, common: SubjectAltNames) -> PlannedCertificate:
    dns = list(node.dns)
    if not node.dns and not node.ip:
        try:
            dns = [validate_dns_name(node.name, allow_wildcard=False)]
        except InvalidRequest:
            if not common:
                raise InvalidRequest(
                    f"{node.name}: node name is not a DNS name; give its DNS names or IPs"
                ) from None
    try:
        own = SubjectAltNames.parse(dns=dns, ip=node.ip)
    except InvalidRequest as exc:
        raise InvalidRequest(f"node {node.name}: {exc.detail}") from exc
    sans = SubjectAltNames.parse(
        dns=[*own.dns, *common.dns], ip=[str(a) for a in (*own.ip, *common.ip)]
    )
    return PlannedCertificate(node.name, sans, (_host(own if own else sans, node.name),))


def _leaf_files(
    plan: HttpBundlePlan,
    ca: CertificateAuthority,
    certificate: x509.Certificate,
    key: CertificateIssuerPrivateKeyTypes,
) -> list[tuple[str, bytes, int]]:
    if plan.output_format == "p12":
        assert plan.password is not None  # checked in plan_certificates
        data = to_pkcs12(
            "http",
            key,
            certificate,
            ca.chain_below_root,
            plan.password,
            legacy=plan.p12_legacy,
            trusted=[ca.root],
        )
        return [("http.p12", data, _SECRET)]
    return [
        ("http.crt", certs_to_pem([certificate, *ca.chain_below_root]), _PUBLIC),
        ("http.key", key_to_pem(key), _SECRET),
    ]


def _zip(files: Sequence[tuple[str, bytes, int]], now: datetime) -> bytes:
    buffer = io.BytesIO()
    stamp = now.timetuple()[:6]
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in files:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def _host(sans: SubjectAltNames, name: str) -> str:
    """The host clients would put in a URL for these names (samples, READMEs)."""
    exact = [d for d in sans.dns if not d.startswith("*.")]
    if exact:
        return exact[0]
    if sans.ip:
        address = sans.ip[0]
        return f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    # Only wildcards: "*" is no host; the node name is the likeliest label (es1 under
    # *.es.example.com), else a placeholder a reader sees to replace.
    label = name.lower() if _DNS_LABEL.match(name) else "node-1"
    return f"{label}.{sans.dns[0][2:]}"


def _names_line(sans: SubjectAltNames) -> str:
    return ", ".join([*(f"DNS:{d}" for d in sans.dns), *(f"IP:{a}" for a in sans.ip)])


class _Layout:
    """Folder and file names of one profile."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.is_es = profile == "elasticsearch"
        self.client_folder = "kibana/" if self.is_es else "client/"
        self.ca_pem = "elasticsearch-ca.pem" if self.is_es else "ca.crt"
        self.default_ca_cn = "Elasticsearch HTTP CA" if self.is_es else "certctl HTTP CA"
        self.product = "Elasticsearch" if self.is_es else "HTTPS"
        self.node_word = "node" if self.is_es else "server"

    def node_folder(self, name: str) -> str:
        return f"elasticsearch/{name}/" if self.is_es else f"{name}/"

    def server_sample(
        self, plan: HttpBundlePlan, name: str, sans: SubjectAltNames
    ) -> tuple[str, str]:
        pem = plan.mode == "csr" or plan.output_format == "pem"
        if self.is_es:
            lines = [
                f"# Elasticsearch node {name}: HTTP TLS settings for elasticsearch.yml.",
                "# Paths are relative to the Elasticsearch configuration directory.",
                "# Elasticsearch 8 writes an 'xpack.security.http.ssl:' block at its first",
                "# start (security auto-configuration): replace that block with these lines;",
                "# a setting given twice stops the node from starting.",
                "xpack.security.http.ssl.enabled: true",
            ]
            if pem:
                if plan.mode == "csr":
                    lines.append("# http.crt: the certificate your CA returns for http.csr.")
                lines += [
                    "xpack.security.http.ssl.certificate: http.crt",
                    "xpack.security.http.ssl.key: http.key",
                ]
            else:
                lines += [
                    "xpack.security.http.ssl.keystore.path: http.p12",
                    "# Keystore password, kept out of this file:",
                    "#   bin/elasticsearch-keystore add "
                    "xpack.security.http.ssl.keystore.secure_password",
                ]
            return "sample-elasticsearch.yml", "\n".join(lines) + "\n"
        lines = [f"# nginx: HTTPS for {name}. Copy the files to /etc/nginx/tls/."]
        if not pem:
            # Options both OpenSSL 1.1.1 and 3.x take: 1.1.1 (RHEL 8, Ubuntu 20.04) knows
            # neither -noenc nor -legacy, and 3.x reads 3DES (--p12-legacy) without -legacy.
            lines += [
                "# nginx reads PEM, not PKCS#12; extract the files first:",
                "#   openssl pkcs12 -in http.p12 -nokeys -out http.crt",
                "#   openssl pkcs12 -in http.p12 -nocerts -nodes -out http.key",
                "#   chmod 600 http.key",
            ]
        elif plan.mode == "csr":
            lines.append("# http.crt: the certificate your CA returns for http.csr.")
        server_names = " ".join(sans.dns) or "_"
        lines += [
            "server {",
            "    listen 443 ssl;",
            f"    server_name {server_names};",
            "",
            "    ssl_certificate     /etc/nginx/tls/http.crt;",
            "    ssl_certificate_key /etc/nginx/tls/http.key;",
            "    ssl_protocols       TLSv1.2 TLSv1.3;",
            "",
            "    # Optional mutual TLS: require client certificates. Copy the certificate of",
            "    # the CA that signs them to this path first (this folder has none); a certctl",
            "    # CA signs them with: certctl cert issue --ca CA_DIR --profile client ...",
            "    # ssl_client_certificate /etc/nginx/tls/client-ca.crt;",
            "    # ssl_verify_client on;",
            "",
            "    location / {",
            "        root /usr/share/nginx/html;",
            "    }",
            "}",
        ]
        return "sample-nginx.conf", "\n".join(lines) + "\n"


def _validity_line(certificate: x509.Certificate) -> str:
    return f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"


def _title(text: str) -> list[str]:
    return [text, "=" * len(text), ""]


def _table(rows: Sequence[tuple[str, str]], indent: int = 2) -> list[str]:
    """Two aligned columns; long descriptions wrap under their own column."""
    width = max(len(left) for left, _ in rows) + 2
    lines: list[str] = []
    for left, right in rows:
        wrapped = textwrap.wrap(right, _WIDTH - indent - width) or [""]
        lines.append(" " * indent + left.ljust(width) + wrapped[0])
        lines += [" " * (indent + width) + more for more in wrapped[1:]]
    return lines


def _steps(steps: Sequence[str]) -> list[str]:
    """Numbered steps; a step's lines after the first that start with spaces stay verbatim."""
    lines: list[str] = []
    for number, step in enumerate(steps, 1):
        text, *verbatim = step.split("\n")
        wrapped = textwrap.wrap(text, _WIDTH - 5)
        lines.append(f"  {number}. {wrapped[0]}")
        lines += [f"     {more}" for more in wrapped[1:]]
        lines += [f"     {more}" for more in verbatim]
    return lines


def _node_readme(
    plan: HttpBundlePlan,
    layout: _Layout,
    name: str,
    sans: SubjectAltNames,
    certificate: x509.Certificate | None,
    now: datetime,
) -> str:
    where = "every node" if plan.shared else name
    sample = "sample-elasticsearch.yml" if layout.is_es else "sample-nginx.conf"
    clients = "../../kibana/" if layout.is_es else "../client/"
    if plan.shared:
        out = _title(f"certctl http bundle: {layout.product} certificate {name}, shared")
    else:
        out = _title(f"certctl http bundle: {layout.product} {layout.node_word} {name}")
    if certificate is None:
        out += textwrap.wrap(
            "This folder holds a private key and a certificate signing request (CSR) "
            f"for the names {_names_line(sans)}.",
            _WIDTH,
        )
        out += ["", "Files"]
        out += _table(
            [
                ("http.csr", "the request: send it to your certificate authority"),
                (
                    "http.key",
                    "the private key (PKCS#8 PEM, not encrypted): keep it secret, "
                    "never send it anywhere",
                ),
                (sample, "settings to add once the certificate is back"),
            ]
        )
        out += ["", "Getting it signed"]
        out += [
            "  Send http.csr to your CA and ask for a TLS server certificate (serverAuth)",
            "  with the names above. With a certctl CA directory:",
            "    certctl csr sign --ca CA_DIR --csr http.csr --profile server --out signed/",
            "  Save the certificate, then any intermediates, as http.crt (PEM); certctl",
            "  writes them so in signed/tls.crt (cp signed/tls.crt http.crt), and the CA",
            "  certificate clients trust in signed/ca.crt.",
            "",
            "Install",
        ]
        if layout.is_es:
            out += _steps(
                [
                    "Copy http.crt and http.key into the Elasticsearch configuration "
                    f"directory of {where} (/etc/elasticsearch for packages, config/ for "
                    "archives).",
                    f"Add the settings from {sample} to elasticsearch.yml, replacing "
                    "any xpack.security.http.ssl settings already there (Elasticsearch 8 "
                    "writes some at its first start; a setting given twice stops the node).",
                    f"Restart the node; give Kibana and clients your CA's certificate "
                    f"(see {clients}).",
                ]
            )
        else:
            out += _steps(
                [
                    "Copy http.crt and http.key to /etc/nginx/tls/ (http.key mode 0600).",
                    f"Include {sample} in your nginx configuration and reload nginx.",
                    f"Give clients your CA's certificate (see {clients}).",
                ]
            )
        return "\n".join(out) + "\n"
    p12 = plan.output_format == "p12"
    out += ["Files"]
    if p12:
        encryption = "3DES/SHA-1 legacy" if plan.p12_legacy else "AES-256"
        files = [
            (
                "http.p12",
                "PKCS#12 keystore with the private key, the certificate and the CA chain, "
                f"and the CA as trusted entry 'ca' ({encryption} encryption). Its password "
                f"is {plan.password_hint}; the password itself is not in this bundle.",
            )
        ]
    else:
        files = [
            ("http.crt", "the certificate, then any intermediate CA certificates (PEM)"),
            ("http.key", "the private key (PKCS#8 PEM, not encrypted): keep it secret, 0600"),
        ]
    out += _table([*files, (sample, "settings to add to the server configuration")])
    lifetime = format_duration(certificate.not_valid_after_utc - now)
    out += ["", "Certificate"]
    out += _table(
        [
            ("subject", format_dn(certificate.subject)),
            ("names", _names_line(sans)),
            ("issuer", format_dn(certificate.issuer)),
            ("serial", format_serial(certificate.serial_number)),
            ("valid until", f"{_validity_line(certificate)} ({lifetime})"),
        ]
    )
    out += ["", "Install"]
    if layout.is_es:
        steps = [
            f"Copy {'http.p12' if p12 else 'http.crt and http.key'} into the Elasticsearch "
            f"configuration directory of {where} (/etc/elasticsearch for packages, config/ "
            "for archives).",
            f"Add the settings from {sample} to elasticsearch.yml, replacing any "
            "xpack.security.http.ssl settings already there (Elasticsearch 8 writes some at "
            "its first start; a setting given twice stops the node).",
        ]
        if p12:
            steps.append(
                "Store the keystore password in the Elasticsearch keystore; enter "
                f"{plan.password_hint} (and overwrite the auto-configured one if asked):\n"
                "  bin/elasticsearch-keystore add "
                "xpack.security.http.ssl.keystore.secure_password"
            )
        steps.append(
            f"Restart the node. Kibana and other clients must trust the CA: see {clients}."
        )
    else:
        steps = []
        if p12:
            steps.append(
                "nginx reads PEM: extract http.crt and http.key from http.p12 with the "
                f"openssl commands at the top of {sample} (openssl asks for "
                f"{plan.password_hint})."
            )
        steps += [
            "Copy http.crt and http.key to /etc/nginx/tls/ (http.key mode 0600).",
            f"Include {sample} in your nginx configuration and reload nginx.",
            f"Give clients the CA certificate: see {clients}.",
        ]
    out += _steps(steps)
    out += [""]
    out += textwrap.wrap(
        f"Renew before {certificate.not_valid_after_utc:%Y-%m-%d}: run certctl http again "
        "with the same CA and replace the files, or run certctl cert issue --ca CA_DIR with "
        # cert issue names its files tls.*: replaced as they come, the samples found none.
        + (
            "the same names and --p12, saving its tls.p12 as http.p12."
            if p12
            else "the same names, saving its tls.crt and tls.key as http.crt and http.key."
        ),
        _WIDTH,
    )
    return "\n".join(out) + "\n"


def _ca_readme(plan: HttpBundlePlan, certificate: x509.Certificate, layout: _Layout) -> str:
    title = "certctl http bundle: the certificate authority"
    client = layout.client_folder.rstrip("/")
    rows = [
        (
            "ca.crt",
            "the CA certificate (PEM): give it to clients so they trust the servers "
            f"(a copy is in ../{client}/{layout.ca_pem})",
        )
    ]
    if plan.ca_password:
        rows += [
            (
                "ca.key",
                "the CA private key (PKCS#8 PEM, encrypted with AES-256): whoever holds it "
                "and its password can issue certificates your clients trust. The password is "
                f"{plan.ca_password_hint}; the password itself is not in this bundle.",
            ),
            (
                "ca.p12",
                "the same key and certificate as a PKCS#12 keystore (alias 'ca', same "
                "password, AES-256), as elasticsearch-certutil writes it: for its --ca "
                "option and Java tools",
            ),
        ]
        reuse = [
            "  certctl http --ca ca/ --ca-password-file FILE ...",
            "  certctl cert issue --ca ca/ --ca-password-file FILE ...",
            "(FILE holds the password; CERTCTL_CA_PASSWORD works too.)",
        ]
        delete = "Delete every other copy of ca.key and ca.p12 (including this zip) once stored."
        encrypt: list[str] = []
    else:
        rows.append(
            (
                "ca.key",
                "the CA private key (PKCS#8 PEM, NOT encrypted): whoever holds it can issue "
                "certificates your clients trust; encrypt it as shown below",
            )
        )
        reuse = ["  certctl http --ca ca/ ...      or      certctl cert issue --ca ca/ ..."]
        delete = "Delete every other copy of ca.key (including this zip) once it is stored."
        encrypt = [
            "",
            "To keep ca.key encrypted (the new password in the file FILE):",
            "  certctl ca import --cert ca.crt --key ca.key --key-password-file FILE --out DIR",
            "then use DIR with --ca-password-file FILE. 'certctl http --ca-password-file FILE'",
            "writes an encrypted ca.key (and a ca.p12) in the first place.",
        ]
    lines = [
        title,
        "=" * len(title),
        "",
        "This CA was created for this bundle and signed every certificate in it.",
        "",
        "Files",
        *_table(rows),
        "",
        "Certificate",
        f"  subject      {format_dn(certificate.subject)}",
        f"  serial       {format_serial(certificate.serial_number)}",
        f"  valid until  {_validity_line(certificate)}",
        "",
        "Keep ca.crt and ca.key together in a safe place, off the servers, to issue",
        "more certificates later:",
        *reuse,
        *textwrap.wrap(delete, _WIDTH),
        *encrypt,
    ]
    return "\n".join(lines) + "\n"


def _client_files(
    plan: HttpBundlePlan,
    layout: _Layout,
    ca: CertificateAuthority | None,
    nodes: Sequence[BundleNode],
) -> list[tuple[str, bytes, int]]:
    folder = layout.client_folder
    hosts = list(dict.fromkeys(h for node in nodes for h in node.hosts))
    files: list[tuple[str, bytes, int]] = []
    if ca is not None:
        files.append((folder + layout.ca_pem, certs_to_pem([ca.root]), _PUBLIC))
        where = (
            f"{layout.ca_pem} is the CA certificate that signed the server certificates."
            if ca.root == ca.certificate
            else f"{layout.ca_pem} is the root CA certificate above the intermediate CA that "
            "signed the server certificates (the servers send the intermediate themselves)."
        )
        ca_row = "the CA certificate (PEM)"
    else:
        where = (
            f"Your CA signs the CSRs: save its certificate (PEM) here as {layout.ca_pem};"
            " this bundle cannot include it."
        )
        ca_row = "your CA's certificate (PEM): add it yourself"
    if layout.is_es:
        title = "certctl http bundle: Kibana and other Elasticsearch clients"
        urls = ", ".join(f'"https://{h}:9200"' for h in hosts)
        sample = "\n".join(
            [
                "# Kibana: connect to Elasticsearch over HTTPS, trusting its CA.",
                "# Use an absolute path to elasticsearch-ca.pem (shown for package installs).",
                f"elasticsearch.hosts: [ {urls} ]",
                'elasticsearch.ssl.certificateAuthorities: [ "/etc/kibana/elasticsearch-ca.pem" ]',
                "",
            ]
        )
        body = [
            *textwrap.wrap(where, _WIDTH),
            "",
            "Files",
            *_table([(layout.ca_pem, ca_row), ("sample-kibana.yml", "settings for kibana.yml")]),
            "",
            "Install",
            "  1. Copy elasticsearch-ca.pem into the Kibana configuration directory",
            "     (/etc/kibana for packages, config/ for archives).",
            "  2. Add the settings from sample-kibana.yml to kibana.yml; fix the path.",
            "  3. Other clients use the same file, e.g.:",
            f"       curl --cacert elasticsearch-ca.pem -u elastic https://{hosts[0]}:9200/",
        ]
        sample_name, mode = "sample-kibana.yml", _PUBLIC
    else:
        title = "certctl http bundle: clients"
        sample = "\n".join(
            [
                "#!/bin/sh",
                "# Check the HTTPS servers with the CA certificate from this folder.",
                "set -e",
                'cd "$(dirname "$0")"',
                *(f"curl --cacert {layout.ca_pem} https://{h}:443/" for h in hosts),
                "",
            ]
        )
        body = [
            *textwrap.wrap(where, _WIDTH),
            "",
            "Files",
            *_table([(layout.ca_pem, ca_row), ("sample-curl.sh", "checks each server with curl")]),
            "",
            "Install",
            "  Add ca.crt to the trust store of each client, or point the client at it",
            "  (curl --cacert, Python requests verify=, Java keytool -importcert,",
            "  /usr/local/share/ca-certificates/ + update-ca-certificates on Debian).",
        ]
        sample_name, mode = "sample-curl.sh", _EXECUTABLE
    readme = "\n".join([title, "=" * len(title), "", *body]) + "\n"
    files += [
        (folder + "README.txt", readme.encode(), _PUBLIC),
        (folder + sample_name, sample.encode(), mode),
    ]
    return files
