"""pkilint on what the server signs: issuer -> subject pairs of the API and of a managed
service's own CA (``lint_pkix_signer_signee_cert_chain``), and ACME leaves for a DNS name and
for an IP address (``lint_pkix_cert``, RFC 5280 profile, and the chain linter).

The chain linter checks what ties a certificate to its issuer: the issuer DN binary-equal to
the issuer's subject (NOTICE), the AKI keyIdentifier equal to the issuer's SKI (ERROR), the
signature (ERROR); test_pkilint.py (integration) has its negative twins.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding

from certctl.pki import KeyType, SubjectAltNames, common_name_dn, create_csr, generate_private_key
from certctl.services import issuers, service_delivery, service_reconcile
from certctl.services.service_settings import ServiceSettings
from tests._pkilint import Finding, lint_each
from tests.api.conftest import Api
from tests.api.test_acme import ISSUER, Acme
from tests.api.test_acme import acme_on as acme_on  # the fixtures, shared
from tests.api.test_acme_dns01 import NAME, Dns01
from tests.api.test_acme_dns01 import acme_dns as acme_dns
from tests.api.test_acme_dns01 import bind9 as bind9
from tests.api.test_acme_ip import _ip_order, _ready

CHAIN_LINTER = "lint_pkix_signer_signee_cert_chain"
# What lint_pkix_cert says of every certctl certificate at INFO: its SKI is the SHA-1 of its
# key (RFC 5280 4.2.1.2 method 1), as cryptography's from_public_key computes it.
SKI_METHOD_1: Finding = ("INFO", "pkix.subject_key_identifier_method_1_identified")


def _write(path: Path, pem: str | bytes) -> Path:
    """The first certificate of ``pem`` alone at ``path`` (a chain's leaf)."""
    data = pem.encode() if isinstance(pem, str) else pem
    path.write_bytes(x509.load_pem_x509_certificates(data)[0].public_bytes(Encoding.PEM))
    return path


def test_every_issuer_subject_pair_the_api_signs_passes_the_chain_linter(
    api: Api, tmp_path: Path
) -> None:
    # Roots of three key types ("default" is certctl's P-256 one), an intermediate under
    # each (POST /issuers with a parent), a leaf of each from a CSR and by key generation.
    for key_type in ("rsa-2048", "ed25519"):
        body = {"id": f"root-{key_type}", "common_name": f"Lint Root {key_type}"}
        r = api.post("/api/v1/issuers", api.admin_key, json={**body, "key_type": key_type})
        assert r.status_code == 201, r.text
    pairs: dict[str, list[Path]] = {}
    for root in ("default", "root-rsa-2048", "root-ed25519"):
        sub = f"sub-of-{root}"
        r = api.post(
            "/api/v1/issuers",
            api.admin_key,
            json={"id": sub, "common_name": f"Lint Sub of {root}", "parent": root},
        )
        assert r.status_code == 201, r.text
        for issuer in (root, sub):
            ca = _write(
                tmp_path / f"{issuer}.pem", api.get(f"/api/v1/issuers/{issuer}/ca.pem").text
            )
            keygen = api.issue(issuer=issuer, common_name="keygen-1.example.com")
            pairs[f"{issuer}->keygen"] = [
                ca,
                _write(tmp_path / f"{issuer}-keygen.pem", keygen["certificate_pem"]),
            ]
            csr = create_csr(
                generate_private_key(KeyType.EC_P256),
                common_name_dn("csr-1.example.com"),
                SubjectAltNames.parse(dns=["csr-1.example.com"], ip=["10.1.2.3"]),
            ).public_bytes(serialization.Encoding.PEM)
            r = api.post(
                "/api/v1/certificates",
                api.admin_key,
                json={"issuer": issuer, "csr": csr.decode()},
            )
            assert r.status_code == 201, r.text
            pairs[f"{issuer}->csr"] = [
                ca,
                _write(tmp_path / f"{issuer}-csr.pem", r.json()["certificate_pem"]),
            ]
        pairs[f"{root}->{sub}"] = [tmp_path / f"{root}.pem", tmp_path / f"{sub}.pem"]
    # A managed service's own CA and the leaf the reconciler issues under it.
    api.apply_service_ca("web")
    settings = ServiceSettings(secrets_dir=tmp_path / "secrets")
    row = service_reconcile.reconcile_service(api.services, settings, "web", api.clock())
    outputs = service_delivery.outputs_for(api.services, row)
    pairs["web-ca->web"] = [
        _write(tmp_path / "web-ca.pem", outputs["ca-internal"]["ca.crt"]),
        _write(tmp_path / "web.pem", outputs["certs-internal"]["tls.crt"]),
    ]
    assert len(pairs) == 3 * 5 + 1
    assert lint_each(CHAIN_LINTER, pairs) == {pair: [] for pair in pairs}


def _lint_leaf(api: Api, leaf_pem: str, tmp_path: Path) -> dict[str, list[Finding]]:
    """lint_pkix_cert of the ACME leaf, and the chain linter of issuer ISSUER -> it."""
    leaf = _write(tmp_path / "leaf.pem", leaf_pem)
    ca = _write(tmp_path / "ca.pem", api.get(f"/api/v1/issuers/{ISSUER}/ca.pem").text)
    found = lint_each("lint_pkix_cert", {"leaf": [leaf]})
    found.update(lint_each(CHAIN_LINTER, {"chain": [ca, leaf]}))
    return found


def _resigned(
    api: Api, cert: x509.Certificate, change: Callable[[x509.Extension[x509.ExtensionType]], bool]
) -> bytes:
    """``cert`` signed again by ISSUER's key, each extension's criticality ``change``d."""
    ca = issuers.load_issuer(api.services, ISSUER)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, change(ext))
    return builder.sign(ca.private_key, ca.signature_hash).public_bytes(Encoding.PEM)


def test_an_acme_leaf_for_a_dns_name_passes_pkilint(acme_dns: Dns01, tmp_path: Path) -> None:
    # dns-01 (a real BIND 9): an FQDN, where http-01's "localhost" is a single label pkilint
    # reports.
    acme_client = acme_dns.client()
    acme_dns.register(acme_client)
    order, _ = acme_dns.order(acme_client, [NAME])
    acme_dns.answer_dns(acme_client, order)
    done = acme_client.poll_and_finalize(order)
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [x509.DNSName(NAME)]
    assert _lint_leaf(acme_dns.api, done.fullchain_pem, tmp_path) == {
        "leaf": [SKI_METHOD_1],
        "chain": [],
    }


def test_an_acme_leaf_for_an_ip_address_passes_pkilint(acme_on: Acme, tmp_path: Path) -> None:
    # RFC 8738: the address as an iPAddress SAN, the subject empty (an address is no name),
    # so the SAN is critical (RFC 5280 4.2.1.6).
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, _ = _ip_order(acme_on, acme_client, [], ["127.0.0.1"])
    _ready(acme_on, acme_client, order)
    done = acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    assert _lint_leaf(acme_on.api, done.fullchain_pem, tmp_path) == {
        "leaf": [SKI_METHOD_1],
        "chain": [],
    }
    # Negative twin: the same certificate with its SAN not critical is what the linter
    # reports, so it did read the address and the empty subject above.
    twin = _resigned(
        acme_on.api,
        leaf,
        lambda ext: ext.critical and not isinstance(ext.value, x509.SubjectAlternativeName),
    )
    (tmp_path / "twin").mkdir()
    assert _lint_leaf(acme_on.api, twin.decode(), tmp_path / "twin") == {
        "leaf": [("ERROR", "pkix.san_extension_not_critical_empty_subject"), SKI_METHOD_1],
        "chain": [],
    }
