"""Certificate revocation lists and serial parsing."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import example, given, settings
from hypothesis import strategies as st

from certctl.errors import InvalidRequest
from certctl.pki import CertificateAuthority, RevokedEntry, create_crl, parse_serial
from certctl.pki.issue import BACKDATE

from .conftest import ca_without_usage

MAX_SERIAL = 2**159 - 1


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3f:a1", 0x3FA1),
        ("3F:A1", 0x3FA1),
        ("0x3fa1", 0x3FA1),
        ("3FA1", 0x3FA1),
        (" 0x10 ", 16),
        ("dec:1234", 1234),
        ("DEC:1234", 1234),
        ("1", 1),
        (f"{MAX_SERIAL:x}", MAX_SERIAL),
    ],
)
def test_parse_serial(text: str, value: int) -> None:
    assert parse_serial(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zz", "zz: not a serial number (hex, or dec:NNN)"),
        ("", ": not a serial number"),
        ("0x", "0x: not a serial number"),
        ("dec:abc", "dec:abc: not a serial number"),
        ("dec:0x10", "dec:0x10: not a serial number"),
        ("12 34", "not a serial number"),
        ("0", "0: serial numbers are positive and at most 20 octets"),
        ("00:00", "serial numbers are positive and at most 20 octets"),
        ("-5", "-5: serial numbers are positive and at most 20 octets"),
        ("dec:-1", "serial numbers are positive and at most 20 octets"),
        ("f" * 40, "serial numbers are positive and at most 20 octets"),
        (f"{MAX_SERIAL + 1:x}", "serial numbers are positive and at most 20 octets"),
        # A decimal serial as cfssl prints it: digits alone are hex, so it names dec:.
        (
            str(MAX_SERIAL),
            f"{MAX_SERIAL}: serial numbers are positive and at most 20 octets; read as hex, "
            f"this one has 24: if it is decimal, as cfssl prints serials, write dec:{MAX_SERIAL}",
        ),
    ],
)
def test_parse_serial_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        parse_serial(text)


@settings(max_examples=200, deadline=None)
@given(serial=st.integers(min_value=1, max_value=MAX_SERIAL), style=st.sampled_from("hcxdU"))
@example(serial=1, style="c")
@example(serial=MAX_SERIAL, style="c")
@example(serial=0x0100, style="c")
def test_serial_formats_round_trip(serial: int, style: str) -> None:
    hex_text = f"{serial:x}"
    if style == "h":
        text = hex_text
    elif style == "U":
        text = hex_text.upper()
    elif style == "x":
        text = "0x" + hex_text
    elif style == "d":
        text = f"dec:{serial}"
    else:  # colon-separated octets, as openssl and inspect print them
        padded = hex_text.zfill(len(hex_text) + len(hex_text) % 2)
        text = ":".join(padded[i : i + 2] for i in range(0, len(padded), 2))
    assert parse_serial(text) == serial


def test_crl_shape(root_ca: CertificateAuthority, now: datetime) -> None:
    revoked = [
        RevokedEntry(0x1234, now - timedelta(days=1), x509.ReasonFlags.key_compromise),
        RevokedEntry(0x5678, now - timedelta(hours=1)),
        RevokedEntry(0x9ABC, now, x509.ReasonFlags.unspecified),
    ]
    crl = create_crl(root_ca, revoked, now=now)
    assert crl.is_signature_valid(root_ca.certificate.public_key())  # type: ignore[arg-type]
    assert crl.issuer == root_ca.certificate.subject
    assert crl.last_update_utc == now - BACKDATE
    assert crl.next_update_utc == now + timedelta(days=7)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == int(now.timestamp()) * 1_000_000
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root_ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert len(crl) == 3
    first = crl.get_revoked_certificate_by_serial_number(0x1234)
    assert first is not None
    assert first.revocation_date_utc == now - timedelta(days=1)
    reason = first.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    for serial in (0x5678, 0x9ABC):
        # No reason, or "unspecified": RFC 5280 5.3.1 says omit the extension.
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        assert entry is not None
        assert len(entry.extensions) == 0
    assert crl.get_revoked_certificate_by_serial_number(0x1) is None


def test_empty_crl_and_options(intermediate_ca: CertificateAuthority, now: datetime) -> None:
    crl = create_crl(intermediate_ca, [], now=now, next_update=timedelta(hours=6), crl_number=42)
    assert len(crl) == 0
    assert crl.issuer == intermediate_ca.certificate.subject
    assert crl.next_update_utc == now + timedelta(hours=6)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    assert crl.is_signature_valid(intermediate_ca.certificate.public_key())  # type: ignore[arg-type]
    pem = crl.public_bytes(serialization.Encoding.PEM)
    assert x509.load_pem_x509_crl(pem) == crl


def test_crl_numbers_grow(root_ca: CertificateAuthority, now: datetime) -> None:
    first = create_crl(root_ca, [], now=now)
    second = create_crl(root_ca, [], now=now + timedelta(seconds=1))
    assert _crl_number(second) > _crl_number(first)


def test_crl_numbers_grow_within_a_second(root_ca: CertificateAuthority, now: datetime) -> None:
    # RFC 5280 5.2.3: each new CRL gets a larger number; two signed in one second (a revocation
    # in between) shared one before.
    first = create_crl(root_ca, [], now=now)
    second = create_crl(root_ca, [RevokedEntry(0x1234, now)], now=now + timedelta(milliseconds=300))
    third = create_crl(root_ca, [], now=now + timedelta(microseconds=300_001))
    assert _crl_number(first) < _crl_number(second) < _crl_number(third)
    # Above any number given in seconds before, so relying parties take the new ones.
    assert _crl_number(first) > int(now.timestamp()) * 1000


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


@pytest.mark.parametrize("next_update", [timedelta(0), timedelta(days=-1)])
def test_crl_next_update_must_be_future(
    root_ca: CertificateAuthority, now: datetime, next_update: timedelta
) -> None:
    with pytest.raises(InvalidRequest, match="CRL next update must be in the future"):
        create_crl(root_ca, [], now=now, next_update=next_update)


def test_crl_next_update_never_after_the_ca(root_ca: CertificateAuthority, now: datetime) -> None:
    # A CRL promising news after its issuer is gone: the next one must come from the renewed CA.
    ca_end = root_ca.certificate.not_valid_after_utc
    crl = create_crl(root_ca, [], now=ca_end - timedelta(days=1), next_update=timedelta(days=7))
    assert crl.next_update_utc == ca_end
    with pytest.raises(InvalidRequest, match="issuing CA expired on"):
        create_crl(root_ca, [], now=ca_end + timedelta(seconds=1))


def test_ca_without_crl_sign_refuses(now: datetime) -> None:
    ca = ca_without_usage("crl_sign", now)
    with pytest.raises(InvalidRequest, match=r"^CN=Limited CA: the CA's keyUsage lacks cRLSign"):
        create_crl(ca, [], now=now)
