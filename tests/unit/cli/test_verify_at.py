"""certctl verify --at, in process: a failure names the time it was judged at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from certctl.cli.main import run
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    KeyType,
    SubjectAltNames,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    generate_private_key,
)

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """ca.crt and a server certificate for web.example valid 30 days from NOW."""
    base = tmp_path_factory.mktemp("verify-at")
    key = generate_private_key(KeyType.EC_P256)
    root = create_root_ca(key, common_name_dn("at CA"), validity=timedelta(days=365), now=NOW)
    ca = CertificateAuthority(root.certificate, key)
    leaf = ca.issue(
        generate_private_key(KeyType.EC_P256).public_key(),
        common_name_dn("web.example"),
        profile=PROFILES["server"],
        validity=timedelta(days=30),
        now=NOW,
        sans=SubjectAltNames.parse(dns=["web.example"]),
    ).certificate
    (base / "ca.crt").write_bytes(certs_to_pem([root.certificate]))
    (base / "web.crt").write_bytes(certs_to_pem([leaf]))
    return base / "ca.crt", base / "web.crt"


def test_a_failure_at_another_time_says_so_prefixed_as_the_others(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: "certctl: error: certificate expired on …", without the "verification failed:"
    # every other failure carries, and without the --at time that made it fail.
    ca, cert = files
    expires = NOW + timedelta(days=30)
    at = NOW + timedelta(days=60)
    assert run(["verify", "--ca", str(ca), str(cert), "--at", f"{at:%Y-%m-%dT%H:%M:%S}"]) == 1
    assert capsys.readouterr() == (
        "",
        f"certctl: error: verification failed: certificate expired on "
        f"{expires:%Y-%m-%dT%H:%M:%SZ} (checked at {at:%Y-%m-%dT%H:%M:%SZ})\n",
    )
    before = NOW - timedelta(days=1)
    not_before = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_before_utc
    assert run(["verify", "--ca", str(ca), str(cert), "--at", f"{before:%Y-%m-%d}"]) == 1
    assert capsys.readouterr().err == (
        f"certctl: error: verification failed: certificate is not valid before "
        f"{not_before:%Y-%m-%dT%H:%M:%SZ} (checked at {before:%Y-%m-%d}T00:00:00Z)\n"
    )
    # Any failure judged at --at names it: the name check too, unrelated to time, is said at
    # the moment asked, as the OK line says it.
    argv = ["verify", "--ca", str(ca), str(cert), "--hostname", "other.example", "--at"]
    assert run([*argv, f"{NOW + timedelta(days=1):%Y-%m-%d}"]) == 1
    assert capsys.readouterr().err.endswith(
        f"(checked at {NOW + timedelta(days=1):%Y-%m-%d}T00:00:00Z)\n"
    )
    # Without --at, now: no time added.
    assert run(["verify", "--ca", str(ca), str(cert), "--hostname", "other.example"]) == 1
    assert "checked at" not in capsys.readouterr().err
