"""``certctl crl create`` read by ``openssl crl`` and enforced by ``openssl verify -crl_check``."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certctl.pki import format_serial
from tests._tools import ok, run
from tests.integration.conftest import Chain, Pki, certctl, certctl_ok

pytestmark = pytest.mark.integration


def serial_of(cert: Path) -> int:
    out = ok(run("openssl", "x509", "-in", cert, "-noout", "-serial")).stdout
    return int(out.strip().removeprefix("serial="), 16)


def verify_with_crl(chain: Chain, crl: Path, cert: Path) -> tuple[int, str]:
    result = run(
        "openssl", "verify", "-crl_check", "-CRLfile", crl, "-CAfile", chain.root / "ca.crt",
        "-untrusted", chain.inter / "ca.crt", cert,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module", params=["ec-p256", "rsa-2048"])
def revocation(
    request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Chain, Path, Path, Path]:
    """(chain, CRL revoking one leaf, that revoked leaf, a leaf left valid)."""
    key_type: str = request.param
    chain = pki.chain(key_type)
    revoked = pki.issue(
        chain.inter, f"revoked-{key_type}", key_type=key_type, dns=["revoked.example.com"]
    )
    serial = serial_of(revoked / "tls.crt")
    crl = tmp_path_factory.mktemp("crl") / "crl.pem"
    certctl_ok(
        "crl", "create", "--ca", chain.inter, "--revoked", f"0x{serial:x}",
        "--reason", "keyCompromise", "--out", crl,
    )  # fmt: skip
    return chain, crl, revoked / "tls.crt", chain.leaf("server")


def test_openssl_crl_lists_the_revoked_serial(revocation: tuple[Chain, Path, Path, Path]) -> None:
    chain, crl, revoked, _ = revocation
    text = ok(run("openssl", "crl", "-in", crl, "-noout", "-text")).stdout
    listed = [int(s, 16) for s in re.findall(r"Serial Number: ([0-9A-F]+)", text)]
    assert listed == [serial_of(revoked)]
    assert "Key Compromise" in text
    assert "Next Update:" in text
    issuer = ok(run("openssl", "x509", "-in", chain.inter / "ca.crt", "-noout", "-subject")).stdout
    assert f"Issuer: {issuer.strip().removeprefix('subject=')}" in text
    # The CRL's signature checks out against the issuing CA.
    check = ok(run("openssl", "crl", "-in", crl, "-noout", "-CAfile", chain.inter / "ca.crt"))
    assert "verify OK" in check.stdout + check.stderr


def test_openssl_verify_crl_check_fails_for_the_revoked_leaf(
    revocation: tuple[Chain, Path, Path, Path],
) -> None:
    chain, crl, revoked, _ = revocation
    code, output = verify_with_crl(chain, crl, revoked)
    assert code != 0
    assert "certificate revoked" in output


def test_openssl_verify_crl_check_passes_for_a_valid_leaf(
    revocation: tuple[Chain, Path, Path, Path],
) -> None:
    chain, crl, _, valid = revocation
    code, output = verify_with_crl(chain, crl, valid)
    assert code == 0, output


def test_openssl_verify_crl_check_refuses_a_crl_from_another_ca(
    pki: Pki, other_root: Path, tmp_path: Path
) -> None:
    # A CRL signed by the wrong CA must not satisfy -crl_check.
    chain = pki.chain("ec-p256")
    crl = tmp_path / "foreign.pem"
    certctl_ok("crl", "create", "--ca", other_root, "--out", crl)
    code, output = verify_with_crl(chain, crl, chain.leaf("server"))
    assert code != 0
    assert "unable to get certificate CRL" in output


def test_a_crl_made_from_the_previous_one_keeps_its_dates_and_reasons(
    pki: Pki, other_root: Path, tmp_path: Path
) -> None:
    """``--from``: entries keep when and why they were revoked; --revoked adds new ones.

    Regenerated from serials alone, every revocation date moved to the time of the new CRL.
    """
    chain = pki.chain("ec-p256")
    leaves = [pki.issue(chain.inter, n, dns=[f"{n}.example.com"]) for n in ("gone-1", "gone-2")]
    first, second = (serial_of(leaf / "tls.crt") for leaf in leaves)
    crl = tmp_path / "ca.crl"
    certctl_ok(
        "crl", "create", "--ca", chain.inter, "--out", crl,
        "--revoked", f"0x{first:x}", "--reason", "keyCompromise",
    )  # fmt: skip
    first_date = _entries(crl)[first][0]
    time.sleep(1.1)  # dates are in seconds: a regenerated one would differ
    done = certctl_ok(
        "crl", "create", "--ca", chain.inter, "--from", crl, "--out", crl, "--force",
        "--revoked", f"0x{first:x}", "--revoked", f"0x{second:x}", "--reason", "superseded",
    )  # fmt: skip
    assert f"2 revoked serials (1 kept from {crl}, 1 new)" in done.out
    entries = _entries(crl)
    assert entries[first] == (first_date, x509.ReasonFlags.key_compromise)
    assert entries[second][1] is x509.ReasonFlags.superseded
    assert entries[second][0] > first_date
    for leaf in leaves:  # openssl enforces both
        code, output = verify_with_crl(chain, crl, leaf / "tls.crt")
        assert code != 0, output
        assert "certificate revoked" in output

    # A CRL of another CA is refused, naming both; the output is left as it was.
    kept = crl.read_bytes()
    refused = certctl("crl", "create", "--ca", other_root, "--from", crl, "--out", crl, "--force")
    assert refused.code == 1
    assert "was not signed by this CA" in refused.err
    assert crl.read_bytes() == kept


def test_a_previous_crl_entry_no_crl_can_carry_is_left_off_with_a_warning(
    pki: Pki, tmp_path: Path
) -> None:
    """``--from`` a CRL ``openssl ca`` signed listing a serial of 160 bits, its top bit set
    (RFC 5280 4.1.2.2 allows 20 octets, sign included; OpenSSL lists it): cryptography
    cannot list it, and crl create ended in 'internal error (ValueError …)'. As the server
    leaves such a revoked row off its CRLs, the entry is left off with a warning naming it,
    and the others keep their dates and reasons.
    """
    chain = pki.chain("ec-p256")
    kept = serial_of(pki.issue(chain.inter, "kept", dns=["kept.example.com"]) / "tls.crt")
    too_large = 2**160 - 1
    index = tmp_path / "index.txt"
    index.write_text(
        "".join(
            f"R\t301231000000Z\t250101000000Z,keyCompromise\t{format_serial(s).upper()}"
            f"\tunknown\t/CN=s{n}\n"
            for n, s in enumerate((too_large, kept))
        )
    )
    config = tmp_path / "openssl.cnf"
    config.write_text(
        f"[ca]\ndefault_ca = d\n[d]\ndatabase = {index}\ncertificate = {chain.inter}/ca.crt\n"
        f"private_key = {chain.inter}/ca.key\ndefault_md = sha256\ndefault_crl_days = 7\n"
    )
    previous, crl = tmp_path / "openssl.crl", tmp_path / "ca.crl"
    ok(run("openssl", "ca", "-config", config, "-gencrl", "-out", previous))
    assert set(_entries(previous)) == {too_large, kept}
    done = certctl_ok("crl", "create", "--ca", chain.inter, "--from", previous, "--out", crl)
    assert _entries(crl) == {
        kept: (datetime(2025, 1, 1, tzinfo=UTC), x509.ReasonFlags.key_compromise)
    }
    assert done.err == (
        f"certctl: warning: --from {previous}: serial {format_serial(too_large)} is left "
        "off: it is no positive number of at most 20 octets (RFC 5280 4.1.2.2), which no "
        "CRL certctl signs can list\n"
    )
    assert f"1 revoked serial (1 kept from {previous}, 0 new)" in done.out


def _entries(crl: Path) -> dict[int, tuple[datetime, x509.ReasonFlags | None]]:
    ok(run("openssl", "crl", "-in", crl, "-noout"))  # openssl reads it
    entries = {}
    for revoked in x509.load_pem_x509_crl(crl.read_bytes()):
        try:
            reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            reason = None
        entries[revoked.serial_number] = (revoked.revocation_date_utc, reason)
    return entries


def test_a_crl_made_from_one_a_clock_ahead_signed_is_numbered_above_it(
    pki: Pki, tmp_path: Path
) -> None:
    """RFC 5280 5.2.3: numbered from this host's clock alone, the new CRL came out below a
    previous one signed on a host whose clock ran ahead, and clients kept the old list."""
    chain = pki.chain("ec-p256")
    ca_cert = x509.load_pem_x509_certificate((chain.inter / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((chain.inter / "ca.key").read_bytes(), None)
    ahead = int((datetime.now(UTC) + timedelta(days=365)).timestamp()) * 10**6
    now = datetime.now(UTC)
    previous = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .add_extension(x509.CRLNumber(ahead), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    crl = tmp_path / "ca.crl"
    crl.write_bytes(previous.public_bytes(serialization.Encoding.PEM))
    certctl_ok("crl", "create", "--ca", chain.inter, "--from", crl, "--out", crl, "--force")
    text = ok(run("openssl", "crl", "-in", crl, "-noout", "-text")).stdout
    match = re.search(r"X509v3 CRL Number: *\n *(0x[0-9A-Fa-f]+|[0-9]+)\n", text)
    assert match is not None, text
    assert int(match[1], 0) == ahead + 1
