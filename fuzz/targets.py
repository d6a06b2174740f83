"""Parser fuzz targets shared by the atheris harness (``fuzz/run.py``) and the hypothesis tests.

Each target takes raw bytes, feeds them to one certctl parser and lets only
``certctl.errors.CertctlError`` through silently: any other exception is a finding. Seeds are
real material built through ``certctl.pki`` (PEM, DER, PKCS#12, CSR, CRL) and valid YAML
documents, so mutations start from inputs that reach deep into the parsers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from certctl.errors import CertctlError
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    KeyType,
    RevokedEntry,
    SubjectAltNames,
    common_name_dn,
    create_crl,
    create_csr,
    create_root_ca,
    generate_private_key,
    key_to_pem,
    load_csr,
    load_material,
    parse_dn,
    parse_duration,
    to_pkcs12,
)
from certctl.pki.instances import parse_instances
from certctl.server.config import load_config
from certctl.services.tls_spec import parse_service_documents

__all__ = ["P12_PASSWORD", "PEM_PASSWORD", "TARGETS", "seeds"]

NOW = datetime(2026, 1, 1, tzinfo=UTC)
P12_PASSWORD = b"fuzz-p12-pw-3b7e1c9a"
PEM_PASSWORD = b"fuzz-pem-pw-5d2a8f06"


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _material(data: bytes) -> None:
    # The first byte picks the password: none, the right ones, or the rest as a wrong one.
    selector, body = (data[0], data[1:]) if data else (0, data)
    password = (None, P12_PASSWORD, PEM_PASSWORD, b"wrong")[selector % 4]
    load_material(body, password)


def _csr(data: bytes) -> None:
    load_csr(data)


def _dn(data: bytes) -> None:
    parse_dn(_text(data))


def _sans(data: bytes) -> None:
    # Fields separated by NUL: dns, ip, email, uri lists separated by newlines.
    parts = [*_text(data).split("\x00"), "", "", "", ""][:4]
    dns, ip, email, uri = ([v for v in p.split("\n") if v] for p in parts)
    SubjectAltNames.parse(dns=dns, ip=ip, email=email, uri=uri)


def _duration(data: bytes) -> None:
    parse_duration(_text(data))


def _instances(data: bytes) -> None:
    parse_instances(_text(data))


def _services(data: bytes) -> None:
    parse_service_documents(_text(data))


_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="certctl-fuzz-config-"))


def _config(data: bytes) -> None:
    path = _CONFIG_DIR / "certctl.yaml"
    path.write_bytes(data)
    load_config(path, {})


TARGETS: dict[str, Callable[[bytes], None]] = {
    "load_material": _material,
    "load_csr": _csr,
    "parse_dn": _dn,
    "san_parse": _sans,
    "parse_duration": _duration,
    "parse_instances": _instances,
    "parse_service_documents": _services,
    "load_config": _config,
}


def run(target: str, data: bytes) -> None:
    """Feed ``data`` to ``target``; a CertctlError is an expected refusal."""
    try:
        TARGETS[target](data)
    except CertctlError:
        pass


@cache
def seeds() -> dict[str, list[bytes]]:
    """Valid inputs per target: the starting points of the mutations."""
    root_key = generate_private_key(KeyType.EC_P256)
    root = CertificateAuthority(
        create_root_ca(
            root_key, common_name_dn("Fuzz Root"), validity=timedelta(days=3650), now=NOW
        ).certificate,
        root_key,
    )
    leaf_key = generate_private_key(KeyType.EC_P256)
    sans = SubjectAltNames.parse(dns=["fuzz.example.com"], ip=["192.0.2.1"])
    leaf = root.issue(
        leaf_key.public_key(),
        parse_dn("CN=fuzz.example.com,O=Fuzz"),
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=NOW,
        sans=sans,
    ).certificate
    pem = serialization.Encoding.PEM
    der = serialization.Encoding.DER
    csr = create_csr(leaf_key, parse_dn("CN=fuzz.example.com"), sans)
    crl = create_crl(root, [RevokedEntry(leaf.serial_number, NOW)], now=NOW)
    material = [
        leaf.public_bytes(pem),
        leaf.public_bytes(pem) + root.certificate.public_bytes(pem) + key_to_pem(leaf_key),
        leaf.public_bytes(der),
        key_to_pem(leaf_key),
        b"\x02" + key_to_pem(leaf_key, PEM_PASSWORD),
        leaf_key.private_bytes(
            der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        b"\x01" + to_pkcs12("fuzz", leaf_key, leaf, [root.certificate], P12_PASSWORD),
        b"\x01" + to_pkcs12("fuzz", leaf_key, leaf, [], P12_PASSWORD, legacy=True),
        csr.public_bytes(pem),
        crl.public_bytes(der),
        crl.public_bytes(pem),
    ]
    # load_material's seeds start with the password selector byte (0: none).
    material = [m if m[:1] in (b"\x01", b"\x02") else b"\x00" + m for m in material]
    service = (
        b"apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {name: web}\n"
        b"spec:\n  http:\n    tls:\n      selfSignedCertificate:\n"
        b"        subjectAltNames: [{dns: web.example.com}, {ip: 10.0.0.1}]\n"
        b"      client: {authentication: true}\n"
        b"  targets:\n  - directory: /srv/tls\n    format: pkcs12\n"
        b"    passwordFile: /srv/pw\n    reload: systemctl reload nginx\n"
        b"  - secret: web-tls\n    namespace: prod\n    labels: {app: web}\n"
        b"---\napiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {name: api}\n"
        b"spec: {http: {tls: {certificate: {secretName: api-cert}}}}\n"
    )
    config = (
        b"data-dir: /var/lib/certctl\nlisten: 0.0.0.0:8443\n"
        b"tls: {mode: self-signed, min-version: '1.3', client-auth: optional,"
        b" client-ca: /etc/certctl/clients.crt, subject-alt-names: [certctl.example.com]}\n"
        b"auth:\n  client-cert-mappings:\n  - {subject: 'CN=*,O=ops', roles: [r-operator]}\n"
        b"metrics: {listen: '127.0.0.1:9100', secure: false}\n"
        b"cert-validity: 90D\nreconcile-interval: 30s\nlog-format: json\n"
        b"notifications: {webhook: {url: 'https://hooks.example.com/x', timeout: 5s}}\n"
    )
    return {
        "load_material": material,
        "load_csr": [csr.public_bytes(pem), csr.public_bytes(der)],
        "parse_dn": [
            b"CN=node-1,OU=ops,O=Example,L=Berlin,ST=BE,C=DE",
            b"CN=a\\,b+UID=x,DC=example,DC=com",
            'CN=Jürgen \\"JJ\\" Müller,O=Ex\\+Co,2.5.4.97=VATDE-1'.encode(),
        ],
        "san_parse": [
            b"a.example.com\n*.b.example.com\x00192.0.2.1\n2001:db8::1\x00ops@example.com"
            b"\x00spiffe://example.com/ns/a",
            "b\u00fccher.example\x00fe80::1".encode(),
        ],
        "parse_duration": [b"90D", b"8760h", b"1Y6M", b"1h30m", b"P1.5W", b"250ms"],
        "parse_instances": [
            b"instances:\n- name: node-1\n  dns: [node-1.example.com]\n  ip: 10.0.0.1\n"
            b"- {name: node-2, cn: Node Two, filename: n2, dns: n2.example.com}\n"
        ],
        "parse_service_documents": [service],
        "load_config": [config],
    }
