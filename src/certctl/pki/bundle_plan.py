"""What an HTTP bundle is to hold: the choices, checked, and the certificates they ask for."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from cryptography import x509

from certctl.errors import InvalidRequest
from certctl.pki.dns_names import validate_dns_name
from certctl.pki.issue import CertificateAuthority
from certctl.pki.keys import KeyType
from certctl.pki.subject_alt_names import SubjectAltNames
from certctl.pki.validity import format_duration

__all__ = [
    "BUNDLE_MODES",
    "BUNDLE_PROFILES",
    "BundleNode",
    "HttpBundlePlan",
    "NodeSpec",
    "PlannedCertificate",
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
