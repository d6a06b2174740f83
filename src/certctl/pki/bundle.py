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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from certctl.pki.bundle_layout import PUBLIC, SECRET, Layout
from certctl.pki.bundle_plan import BundleNode, HttpBundlePlan, plan_certificates
from certctl.pki.bundle_readmes import ca_readme, client_files, node_readme
from certctl.pki.csr import create_csr
from certctl.pki.distinguished_names import common_name_dn
from certctl.pki.formats import certs_to_pem, key_to_pem, pkcs12_password_warning, to_pkcs12
from certctl.pki.issue import CertificateAuthority, create_root_ca
from certctl.pki.keys import KeyType, generate_private_key
from certctl.pki.profiles import get_profile

__all__ = ["BundleResult", "build_http_bundle"]


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
    layout = Layout(plan.profile)
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
            ("ca/README.txt", ca_readme(plan, ca.certificate, layout).encode(), PUBLIC),
            ("ca/ca.crt", certs_to_pem([ca.certificate]), PUBLIC),
            ("ca/ca.key", key_to_pem(ca_key, plan.ca_password), SECRET),
        ]
        if plan.ca_password:
            # certutil's own CA file: 'elasticsearch-certutil cert --ca ca.p12' and Java
            # tools take it. Always AES-256: --p12-legacy is for the servers' keystores.
            ca_p12 = to_pkcs12("ca", ca_key, ca.certificate, (), plan.ca_password)
            zip_files.append(("ca/ca.p12", ca_p12, SECRET))
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
            files.append(("http.csr", csr.public_bytes(serialization.Encoding.PEM), PUBLIC))
            files.append(("http.key", key_to_pem(key), SECRET))
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
                node_readme(plan, layout, name, sans, certificate, now).encode(),
                PUBLIC,
            )
        )
        sample_name, sample = layout.server_sample(plan, name, sans)
        files.append((sample_name, sample.encode(), PUBLIC))
        zip_files += [(folder + f, data, mode) for f, data, mode in files]
        nodes.append(
            BundleNode(
                name, folder, sans, target.hosts, tuple(f for f, _, _ in files), certificate, csr
            )
        )
    zip_files += client_files(plan, layout, ca, nodes)
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
        return [("http.p12", data, SECRET)]
    return [
        ("http.crt", certs_to_pem([certificate, *ca.chain_below_root]), PUBLIC),
        ("http.key", key_to_pem(key), SECRET),
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
