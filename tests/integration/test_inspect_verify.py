"""``certctl inspect`` and ``certctl verify`` run as a user would, checked against openssl."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests._tools import ok, run
from tests.integration.conftest import certctl_exe

pytestmark = pytest.mark.integration

# Serials whose hex has an odd number of digits lost their leading 0 (openssl keeps it).
SERIALS = [1, 0x0F, 0x100, 0x0DD0CF8664911A0499E6240919FE98E42CF3FA4E, 0x7F << 152, 0xABCDEF]


def self_signed(path: Path, serial: int) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"serial {serial:x}")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def inspect_json(*args: str | Path) -> list[dict[str, Any]]:
    result = ok(certctl_exe("inspect", "--json", *args))
    items = json.loads(result.stdout)
    assert isinstance(items, list)
    return items


@pytest.mark.parametrize("serial", SERIALS, ids=hex)
def test_serial_printed_as_openssl_does(tmp_path: Path, serial: int) -> None:
    cert = self_signed(tmp_path / "c.crt", serial)
    expected = ok(run("openssl", "x509", "-in", cert, "-serial", "-noout")).stdout
    expected = expected.strip().removeprefix("serial=").lower()
    assert len(expected) % 2 == 0
    (item,) = inspect_json(cert)
    assert item["serial"] == expected
    text = ok(certctl_exe("inspect", cert)).stdout
    assert expected in text.split()
