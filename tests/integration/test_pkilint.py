"""pkilint's RFC 5280 linter finds no ERROR or FATAL in any certificate certctl issues."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests._tools import require
from tests.integration.conftest import KEY_TYPES, LEAF_PROFILES, Pki

pytestmark = pytest.mark.integration

ROLES = ("root", "intermediate", *LEAF_PROFILES)


def certificate_file(pki: Pki, key_type: str, role: str) -> Path:
    chain = pki.chain(key_type)
    if role == "root":
        return chain.root / "ca.crt"
    if role == "intermediate":
        return chain.inter / "ca.crt"
    return chain.leaf(role)


def first_certificate(path: Path, out: Path) -> Path:
    """Write the first certificate of ``path`` alone (a tls.crt also holds the intermediate)."""
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    out.write_bytes(cert.public_bytes(Encoding.PEM))
    return out


@pytest.fixture(scope="module")
def pkix_validator() -> Any:
    """The validator ``lint_pkix_cert`` runs, built once (the CLI builds it per file)."""
    from pkilint.pkix import certificate, extension, name

    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def findings(validator: Any, path: Path) -> list[tuple[str, str, str]]:
    """``(severity, code, where)`` for every finding of WARNING or worse."""
    from pkilint import loader
    from pkilint.validation import ValidationFindingSeverity

    der = x509.load_pem_x509_certificates(path.read_bytes())[0].public_bytes(Encoding.DER)
    document = loader.RFC5280CertificateDocumentLoader().load_der_document(der, str(path))
    return [
        (item.finding.severity.name, item.finding.code, result.node.path)
        for result in validator.validate(document.root)
        for item in result.finding_descriptions
        if item.finding.severity <= ValidationFindingSeverity.WARNING
    ]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_pkilint_finds_no_error(pki: Pki, pkix_validator: Any, key_type: str, role: str) -> None:
    found = findings(pkix_validator, certificate_file(pki, key_type, role))
    for severity, code, where in found:
        print(f"pkilint {key_type} {role}: {severity} {code} at {where}")
    assert [f for f in found if f[0] in ("FATAL", "ERROR")] == []


def lint_cli(paths: dict[str, Path], severity: str) -> dict[str, tuple[int, str, str]]:
    """Run ``lint_pkix_cert`` on every file at once; ``{key: (exit code, stdout, stderr)}``."""
    tool = require("lint_pkix_cert")
    procs = {
        key: subprocess.Popen(
            [tool, "lint", "-s", severity, "-f", "JSON", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key, path in paths.items()
    }
    results = {}
    try:
        for key, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            results[key] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    return results


def test_lint_pkix_cert_cli_passes_every_role(pki: Pki, tmp_path: Path) -> None:
    # The real command, once per role; exit code = findings at or above -s.
    files = {
        role: first_certificate(certificate_file(pki, "ec-p256", role), tmp_path / f"{role}.pem")
        for role in ROLES
    }
    for role, (code, out, err) in lint_cli(files, "WARNING").items():
        results = json.loads(out)["results"]
        found = [(d["severity"], d["code"]) for r in results for d in r["finding_descriptions"]]
        print(f"lint_pkix_cert {role}: {found}")
        assert [f for f in found if f[0] in ("FATAL", "ERROR")] == [], err
        assert code == len(found)


def test_lint_pkix_cert_cli_reports_a_single_label_name(pki: Pki, tmp_path: Path) -> None:
    # Negative twin: the linter does see SAN errors ("localhost" is no FQDN).
    leaf = pki.issue(pki.chain("ec-p256").inter, "lint-localhost", dns=["localhost"])
    path = first_certificate(leaf / "tls.crt", tmp_path / "localhost.pem")
    code, out, _ = lint_cli({"localhost": path}, "ERROR")["localhost"]
    found = [d["code"] for r in json.loads(out)["results"] for d in r["finding_descriptions"]]
    assert found == ["pkix.invalid_domain_name_syntax"]
    assert code == 1
