"""pkilint's RFC 5280 linter finds no ERROR or FATAL in any certificate certctl issues."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID

from tests._pkilint import lint_each
from tests._tools import EC_P256, ok, openssl_req, require, run
from tests.integration.conftest import KEY_TYPES, LEAF_PROFILES, Pki, certctl_ok

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
    return build_pkix_validator()


def build_pkix_validator() -> Any:
    """The validator ``lint_pkix_cert`` runs (~0.4 s with the import: build it once)."""
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


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048", "ed25519"])
def test_a_leaf_with_crl_distribution_points_and_aia_passes_pkilint(
    pki: Pki, pkix_validator: Any, tmp_path: Path, key_type: str
) -> None:
    # cRLDistributionPoints as `--crl-url` (and the server's public-url) adds it: one
    # distribution point, http and https fullName URIs, not critical; authorityInfoAccess
    # as `--ca-issuers-url` (and public-url) adds it: caIssuers URIs only, not critical.
    leaf = pki.issue(
        pki.chain(key_type).inter,
        f"lint-cdp-{key_type}",
        key_type=key_type,
        dns=["cdp-1.example.com"],
        extra=[
            "--crl-url", "http://pki.example.com/crl/inter.crl",
            "--crl-url", "https://certctl.example.com:8443/api/v1/issuers/default/crl",
            "--ca-issuers-url", "http://pki.example.com/ca/inter.der",
            "--ca-issuers-url", "https://certctl.example.com:8443/api/v1/issuers/default/ca.der",
        ],
    )  # fmt: skip
    cert = x509.load_pem_x509_certificates((leaf / "tls.crt").read_bytes())[0]
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert not points.critical
    assert len(points.value) == 1
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert not aia.critical
    assert len(aia.value) == 2
    found = findings(pkix_validator, leaf / "tls.crt")
    assert [f for f in found if f[0] in ("FATAL", "ERROR", "WARNING")] == [], found
    path = first_certificate(leaf / "tls.crt", tmp_path / "cdp.pem")
    code, out, err = lint_cli({"cdp": path}, "WARNING")["cdp"]
    results = json.loads(out)["results"]
    assert [d for r in results for d in r["finding_descriptions"]] == [], out
    assert code == 0, err


def test_pkilint_reports_a_critical_aia(pki: Pki, pkix_validator: Any, tmp_path: Path) -> None:
    # Negative twin: the linter does read authorityInfoAccess (RFC 5280 4.2.2.1: MUST be
    # non-critical), so "no finding" above says something about certctl's.
    from cryptography.hazmat.primitives import serialization

    inter = pki.chain("ec-p256").inter
    key = serialization.load_pem_private_key((inter / "ca.key").read_bytes(), None)
    leaf = x509.load_pem_x509_certificates(
        (pki.issue(inter, "lint-aia-critical", dns=["aia-1.example.com"]) / "tls.crt").read_bytes()
    )[0]
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)
        .public_key(leaf.public_key())
        .serial_number(leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
    )
    for ext in leaf.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    uri = x509.UniformResourceIdentifier("http://pki.example.com/ca/inter.der")
    builder = builder.add_extension(
        x509.AuthorityInformationAccess(
            [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, uri)]
        ),
        critical=True,
    )
    path = tmp_path / "critical-aia.pem"
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM))  # type: ignore[arg-type]
    found = findings(pkix_validator, path)
    assert ("ERROR", "pkix.authority_information_access_extension_critical") in [
        f[:2] for f in found
    ], found


def lint_crl(path: Path) -> list[tuple[str, str]]:
    """``(severity, code)`` of every WARNING or worse ``lint_crl`` (RFC 5280 profile) reports."""
    result = subprocess.run(
        [require("lint_crl"), "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", "-f", "JSON",
         str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = [
        (d["severity"], d["code"])
        for r in json.loads(result.stdout)["results"]
        for d in r["finding_descriptions"]
    ]
    assert result.returncode == len(found), result.stderr  # exit code = findings reported
    return found


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048", "ed25519"])
def test_lint_crl_passes_empty_and_filled_crls(pki: Pki, tmp_path: Path, key_type: str) -> None:
    # CRL number, AKI, nextUpdate, reason codes (none for unspecified), --from, DER.
    inter = pki.chain(key_type).inter
    empty, filled, kept = tmp_path / "empty.crl", tmp_path / "filled.crl", tmp_path / "kept.der"
    certctl_ok("crl", "create", "--ca", inter, "--out", empty)
    certctl_ok(
        "crl", "create", "--ca", inter, "--out", filled, "--revoked", "0x1f2e3d",
        "--revoked", "dec:4242", "--reason", "keyCompromise",
    )  # fmt: skip
    certctl_ok(
        "crl", "create", "--ca", inter, "--out", kept, "--from", filled, "--revoked", "0x77",
        "--reason", "unspecified", "--der",
    )  # fmt: skip
    for crl in (empty, filled, kept):
        assert lint_crl(crl) == [], crl.name


def test_lint_crl_reports_a_crl_without_number_or_aki(pki: Pki, tmp_path: Path) -> None:
    # Negative twin: the linter does see what certctl always adds.
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes, serialization

    inter = pki.chain("ec-p256").inter
    key = serialization.load_pem_private_key((inter / "ca.key").read_bytes(), None)
    issuer = x509.load_pem_x509_certificate((inter / "ca.crt").read_bytes()).subject
    now = datetime.now(UTC)
    bare = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path = tmp_path / "bare.crl"
    path.write_bytes(bare.public_bytes(Encoding.PEM))
    assert sorted(lint_crl(path)) == [
        ("ERROR", "pkix.authority_key_identifier_missing"),
        ("ERROR", "pkix.crl_number_missing"),
    ]


def test_a_subject_email_address_is_also_an_rfc822_san(pki: Pki, tmp_path: Path) -> None:
    # `openssl req` asks for an emailAddress; RFC 5280 4.1.2.6 says the address MUST be an
    # rfc822Name SAN. Before, csr sign kept it in the subject only: pkilint ERROR
    # pkix.subject_email_address_not_in_san.
    inter = pki.chain("ec-p256").inter
    key, csr = tmp_path / "req.key", tmp_path / "req.csr"
    subject = "/O=Example/CN=mail-1.example.com/emailAddress=ops@example.com"
    openssl_req(key, csr, subject)
    certctl_ok("csr", "sign", "--ca", inter, "--csr", csr, "--out", tmp_path / "signed")
    leaf = first_certificate(tmp_path / "signed" / "tls.crt", tmp_path / "leaf.pem")
    code, out, _ = lint_cli({"leaf": leaf}, "WARNING")["leaf"]
    assert (code, json.loads(out)["results"]) == (0, [])
    sans = x509.load_pem_x509_certificate(leaf.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert sans.value.get_values_for_type(x509.RFC822Name) == ["ops@example.com"]
    assert sans.value.get_values_for_type(x509.DNSName) == ["mail-1.example.com"]
    # Negative twin: openssl signing the same CSR as it is gives what pkilint reports.
    raw = tmp_path / "raw.pem"
    ok(
        run(
            "openssl", "x509", "-req", "-in", csr, "-CA", inter / "ca.crt",
            "-CAkey", inter / "ca.key", "-out", raw, "-days", "1",
        )
    )  # fmt: skip
    code, out, _ = lint_cli({"raw": raw}, "ERROR")["raw"]
    found = [d["code"] for r in json.loads(out)["results"] for d in r["finding_descriptions"]]
    assert "pkix.subject_email_address_not_in_san" in found


# --- issuer -> subject pairs: lint_pkix_signer_signee_cert_chain ---------------------------
# It checks what ties a certificate to its issuer (RFC 5280 4.1.2.4, 4.2.1.1, 6.1.3): the
# subject's issuer DN binary-equal to the issuer's subject DN (NOTICE: name chaining also
# allows comparison rules), its AKI keyIdentifier equal to the issuer's SKI (ERROR), the
# signature verifying with the issuer's key (ERROR), certificatePolicies in chain.

CHAIN_LINTER = "lint_pkix_signer_signee_cert_chain"


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_issuer_subject_pair_of_the_cli_passes_the_chain_linter(
    pki: Pki, tmp_path: Path, key_type: str
) -> None:
    # ca create (a root, and an intermediate under it), cert issue under each, csr sign.
    chain = pki.chain(key_type)
    root, inter = chain.root / "ca.crt", chain.inter / "ca.crt"
    under_root = pki.issue(
        chain.root, f"root-leaf-{key_type}", key_type=key_type, dns=["root-leaf-1.example.com"]
    )
    key, csr = tmp_path / "req.key", tmp_path / "req.csr"
    openssl_req(key, csr, "/CN=signed-1.example.com")
    certctl_ok("csr", "sign", "--ca", chain.inter, "--csr", csr, "--out", tmp_path / "signed")
    pairs = {
        "root->root": [root, root],  # self-signed: its own issuer
        "root->intermediate": [root, inter],
        "root->leaf": [root, first_certificate(under_root / "tls.crt", tmp_path / "r.pem")],
        "intermediate->csr": [
            inter,
            first_certificate(tmp_path / "signed" / "tls.crt", tmp_path / "csr.pem"),
        ],
        **{
            f"intermediate->{profile}": [
                inter,
                first_certificate(chain.leaf(profile), tmp_path / f"{profile}.pem"),
            ]
            for profile in LEAF_PROFILES
        },
    }
    assert lint_each(CHAIN_LINTER, pairs) == {pair: [] for pair in pairs}


def test_the_chain_linter_reports_a_wrong_issuer(
    pki: Pki, impostor_root: Path, tmp_path: Path
) -> None:
    # Negative twins: a leaf paired with its issuer's issuer (another name, another key),
    # and the intermediate with a root of the same name but another key.
    chain = pki.chain("ec-p256")
    leaf = first_certificate(chain.leaf("server"), tmp_path / "leaf.pem")
    pairs = {
        "right": [chain.inter / "ca.crt", leaf],
        "root->leaf": [chain.root / "ca.crt", leaf],
        "impostor->intermediate": [impostor_root / "ca.crt", chain.inter / "ca.crt"],
    }
    wrong_key = [
        ("ERROR", "pkix.issuer_and_subject_key_identifier_not_equal"),
        ("ERROR", "pkix.signature_verification_failed"),
    ]
    assert lint_each(CHAIN_LINTER, pairs) == {
        "right": [],
        "root->leaf": [*wrong_key, ("NOTICE", "pkix.issuer_and_subject_dn_not_binary_equal")],
        "impostor->intermediate": wrong_key,
    }


def test_a_ca_made_by_openssl_passes_the_chain_linter_with_what_certctl_signs(
    tmp_path: Path,
) -> None:
    # A CA certctl did not make: a T61String and a multi-valued RDN in its name (openssl's
    # string_mask default), a 10-octet SKI of its own (no hash of its key). certctl's leaf
    # must carry that name's bytes as its issuer and that SKI as its AKI.
    from cryptography.hazmat.primitives import serialization

    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    config = tmp_path / "ca.cnf"
    config.write_text(
        "[req]\ndistinguished_name = dn\nstring_mask = default\n[dn]\n[ca]\n"
        "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = 0102030405060708090a\n"
    )
    ok(
        run(
            "openssl", "req", "-x509", *EC_P256, "-nodes", "-keyout", ca_dir / "ca.key",
            "-out", ca_dir / "ca.crt", "-subj", "/C=DE/O=Beispiel GmbH+OU=Ops/CN=Prüf CA",
            "-multivalue-rdn", "-days", "30", "-config", config, "-extensions", "ca",
        )
    )  # fmt: skip
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert b"\x14" + bytes([len("Prüf CA".encode())]) in ca.subject.public_bytes()  # T61String
    issued = tmp_path / "issued"
    certctl_ok(
        "cert", "issue", "--ca", ca_dir, "--out", issued, "--cn", "t61-1.example.com",
        "--dns", "t61-1.example.com", "--validity", "7D",
    )  # fmt: skip
    leaf_path = first_certificate(issued / "tls.crt", tmp_path / "leaf.pem")
    leaf = x509.load_pem_x509_certificate(leaf_path.read_bytes())
    assert leaf.issuer.public_bytes() == ca.subject.public_bytes()
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == bytes.fromhex("0102030405060708090a")
    # Negative twin: the same leaf with the AKI most signers would compute (SHA-1 of the
    # CA's key, RFC 5280 4.2.1.2 method 1) instead of copying the CA's SKI.
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)
        .public_key(leaf.public_key())
        .serial_number(leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
    )
    for ext in leaf.extensions:
        if isinstance(ext.value, x509.AuthorityKeyIdentifier):
            ext = x509.Extension(
                ext.oid,
                ext.critical,
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            )
        builder = builder.add_extension(ext.value, ext.critical)
    hashed = tmp_path / "hashed-aki.pem"
    hashed.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM))  # type: ignore[arg-type]
    pairs = {"certctl": [ca_dir / "ca.crt", leaf_path], "hashed": [ca_dir / "ca.crt", hashed]}
    assert lint_each(CHAIN_LINTER, pairs) == {
        "certctl": [],
        "hashed": [("ERROR", "pkix.issuer_and_subject_key_identifier_not_equal")],
    }
