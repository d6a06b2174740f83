"""Revocation checks against CRLs: which CRL counts, and what fails."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    RevokedEntry,
    VerificationFailed,
    check_revocation,
    common_name_dn,
    create_crl,
    generate_private_key,
)
from certctl.pki.names import names_match

from .conftest import ca_without_usage


def _leaf(ca: CertificateAuthority, now: datetime) -> x509.Certificate:
    return ca.issue(
        generate_private_key().public_key(),
        common_name_dn("leaf.example"),
        profile=PROFILES["server"],
        validity=timedelta(days=30),
        now=now,
    ).certificate


def _crl(
    ca: CertificateAuthority,
    now: datetime,
    *,
    serials: tuple[int, ...] = (),
    last_update: datetime | None = None,
    next_update: datetime | None = None,
    delta: bool = False,
    issuer: x509.Name | None = None,
) -> x509.CertificateRevocationList:
    """A CRL built by hand: any dates, a delta indicator, a CA without cRLSign, any issuer."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer or ca.certificate.subject)
        .last_update(last_update or now - timedelta(hours=1))
    )
    builder = builder.next_update(next_update or now + timedelta(days=1))
    if delta:
        builder = builder.add_extension(x509.DeltaCRLIndicator(1), critical=True)
    for serial in serials:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca.private_key, hashes.SHA256())  # type: ignore[arg-type]


def _check(
    chain: list[x509.Certificate],
    crls: list[x509.CertificateRevocationList],
    now: datetime,
    *,
    check_all: bool = False,
) -> list[str]:
    warnings: list[str] = []
    labelled = [(f"crl{i}", crl) for i, crl in enumerate(crls)]
    check_revocation(chain, labelled, now=now, check_all=check_all, warn=warnings.append)
    return warnings


def test_a_serial_in_a_current_crl_is_revoked(
    intermediate_ca: CertificateAuthority, root_ca: CertificateAuthority, now: datetime
) -> None:
    leaf = _leaf(intermediate_ca, now)
    chain = [leaf, intermediate_ca.certificate, root_ca.certificate]
    assert _check(chain, [_crl(intermediate_ca, now)], now) == []
    with pytest.raises(VerificationFailed, match=r"\(serial [0-9a-f]+\) was revoked on "):
        _check(chain, [_crl(intermediate_ca, now, serials=(leaf.serial_number,))], now)


def test_the_newest_current_crl_is_the_one_used(
    intermediate_ca: CertificateAuthority, root_ca: CertificateAuthority, now: datetime
) -> None:
    # certificateHold lifted: the older CRL lists the serial, the newer one no longer does.
    leaf = _leaf(intermediate_ca, now)
    chain = [leaf, intermediate_ca.certificate, root_ca.certificate]
    older = _crl(
        intermediate_ca, now, serials=(leaf.serial_number,), last_update=now - timedelta(days=2)
    )
    newer = _crl(intermediate_ca, now, last_update=now - timedelta(days=1))
    assert _check(chain, [older, newer], now) == []
    assert _check(chain, [newer, older], now) == []


def test_a_delta_crl_is_ignored_with_a_warning(
    intermediate_ca: CertificateAuthority, root_ca: CertificateAuthority, now: datetime
) -> None:
    leaf = _leaf(intermediate_ca, now)
    chain = [leaf, intermediate_ca.certificate, root_ca.certificate]
    with pytest.raises(VerificationFailed, match="no CRL from CN=Test Intermediate CA"):
        _check(chain, [_crl(intermediate_ca, now, delta=True)], now)
    full = create_crl(intermediate_ca, [], now=now)
    warnings = _check(chain, [_crl(intermediate_ca, now, delta=True), full], now)
    assert warnings == [
        "crl0: CRL ignored: a delta CRL, which lists changes only: give the full CRL"
    ]


def test_a_crl_of_a_ca_without_crl_sign_is_ignored(now: datetime) -> None:
    limited = ca_without_usage("crl_sign", now)
    leaf = _leaf(limited, now)
    warnings: list[str] = []
    with pytest.raises(VerificationFailed, match="no CRL from CN=Limited CA"):
        check_revocation(
            [leaf, limited.certificate],
            [("x.crl", _crl(limited, now))],
            now=now,
            warn=warnings.append,
        )
    assert warnings == [
        "x.crl: CRL ignored: its issuer CN=Limited CA may not sign CRLs (no cRLSign key usage)"
    ]


def test_a_self_signed_certificate_is_checked_against_its_own_crl(
    root_ca: CertificateAuthority, now: datetime
) -> None:
    # As openssl verify -crl_check of a self-signed certificate trusted as itself.
    root = root_ca.certificate
    assert _check([root], [create_crl(root_ca, [], now=now)], now) == []
    revoked = create_crl(root_ca, [RevokedEntry(root.serial_number, now)], now=now)
    with pytest.raises(VerificationFailed, match="certificate CN=Test Root CA"):
        _check([root], [revoked], now)


def test_check_all_skips_an_anchor_that_is_not_self_signed(
    intermediate_ca: CertificateAuthority, now: datetime
) -> None:
    # An intermediate trusted as the anchor: the CA above it, which would sign its CRL, is
    # not in the chain, so it cannot be checked; the leaf still is.
    leaf = _leaf(intermediate_ca, now)
    crl = create_crl(intermediate_ca, [], now=now)
    assert _check([leaf, intermediate_ca.certificate], [crl], now, check_all=True) == []


def test_expired_and_future_crls_name_their_dates(
    intermediate_ca: CertificateAuthority, root_ca: CertificateAuthority, now: datetime
) -> None:
    leaf = _leaf(intermediate_ca, now)
    chain = [leaf, intermediate_ca.certificate, root_ca.certificate]
    expired = _crl(
        intermediate_ca,
        now,
        last_update=now - timedelta(days=2),
        next_update=now - timedelta(days=1),
    )
    when = f"{now - timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"
    with pytest.raises(VerificationFailed, match=f"crl0: CRL has expired: nextUpdate {when}"):
        _check(chain, [expired], now)
    future = _crl(intermediate_ca, now, last_update=now + timedelta(hours=1))
    when = f"{now + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}"
    with pytest.raises(VerificationFailed, match=f"crl0: CRL is not valid yet: thisUpdate {when}"):
        _check(chain, [future], now)


def test_an_entry_marked_remove_from_crl_is_not_revoked(
    intermediate_ca: CertificateAuthority, root_ca: CertificateAuthority, now: datetime
) -> None:
    # RFC 5280 5.3.1: removeFromCRL belongs to delta CRLs; openssl takes it as not revoked.
    leaf = _leaf(intermediate_ca, now)
    chain = [leaf, intermediate_ca.certificate, root_ca.certificate]
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(leaf.serial_number)
        .revocation_date(now)
        .add_extension(x509.CRLReason(x509.ReasonFlags.remove_from_crl), critical=False)
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(intermediate_ca.certificate.subject)
        .last_update(now - timedelta(hours=1))
        .next_update(now + timedelta(days=1))
        .add_revoked_certificate(entry)
        .sign(intermediate_ca.private_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    assert _check(chain, [crl], now) == []


@pytest.mark.parametrize(
    "issuer",
    [
        # Names openssl's X509_NAME_cmp takes as the CA's (RFC 5280 7.1 comparison).
        "test intermediate ca",
        "  TEST   Intermediate\tCA ",
    ],
)
def test_a_crl_naming_its_issuer_in_another_case_or_spacing_counts(
    intermediate_ca: CertificateAuthority, root_ca: CertificateAuthority, now: datetime, issuer: str
) -> None:
    # As openssl verify -crl_check: such a CRL is the CA's (it checks the signature anyway).
    leaf = _leaf(intermediate_ca, now)
    chain = [leaf, intermediate_ca.certificate, root_ca.certificate]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    assert _check(chain, [_crl(intermediate_ca, now, issuer=name)], now) == []
    revoked = _crl(intermediate_ca, now, issuer=name, serials=(leaf.serial_number,))
    with pytest.raises(
        VerificationFailed, match=r"CN=leaf.example \(serial [0-9a-f]+\) was revoked"
    ):
        _check(chain, [revoked], now)


def test_a_crl_naming_another_ca_or_another_string_kind_does_not_count(
    intermediate_ca: CertificateAuthority, root_ca: CertificateAuthority, now: datetime
) -> None:
    # Negative twins: one letter more, and a NumericString, which openssl compares as it is
    # encoded (only the string types of its ASN1_MASK_CANON are folded).
    leaf = _leaf(intermediate_ca, now)
    chain = [leaf, intermediate_ca.certificate, root_ca.certificate]
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Intermediate CAs")])
    with pytest.raises(VerificationFailed, match="no CRL from CN=Test Intermediate CA"):
        _check(chain, [_crl(intermediate_ca, now, issuer=other)], now)
    utf8 = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "42")])
    numeric = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "42", _ASN1Type.NumericString)])
    assert not names_match(utf8, numeric)
    assert names_match(utf8, x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, " 42")]))


def test_crls_of_other_cas_in_the_trust_bundle_are_skipped_without_a_warning(
    intermediate_ca: CertificateAuthority, root_ca: CertificateAuthority, now: datetime
) -> None:
    # A shared trust bundle holds the CRLs of many CAs; openssl skips those that do not
    # apply without a word. One given with --crl that applies to nothing is still named.
    leaf = _leaf(intermediate_ca, now)
    chain = [leaf, intermediate_ca.certificate, root_ca.certificate]
    others = [create_crl(ca_without_usage("key_cert_sign", now), [], now=now) for _ in range(3)]
    root_crl = create_crl(root_ca, [], now=now)  # a CA of the chain, not checked without -all
    bundled = [(f"ca.pem (CRL {i})", crl) for i, crl in enumerate([*others, root_crl], 1)]
    warnings: list[str] = []
    own = ("leaf.crl", create_crl(intermediate_ca, [], now=now))
    check_revocation(chain, [own], now=now, warn=warnings.append, bundled=bundled)
    assert warnings == []
    check_revocation(chain, [own, ("given.crl", others[0])], now=now, warn=warnings.append)
    assert warnings == [
        "given.crl: CRL ignored: issued by CN=Limited CA, which issued no certificate of the chain"
    ]
    # A bundled CRL that names the issuer but cannot be used is still reported.
    warnings.clear()
    delta = ("ca.pem (CRL 5)", _crl(intermediate_ca, now, delta=True))
    check_revocation(chain, [own], now=now, warn=warnings.append, bundled=[*bundled, delta])
    assert warnings == [
        "ca.pem (CRL 5): CRL ignored: a delta CRL, which lists changes only: give the full CRL"
    ]
    # And a revoked leaf is found through a bundled CRL as through a given one.
    revoked = create_crl(intermediate_ca, [RevokedEntry(leaf.serial_number, now)], now=now)
    with pytest.raises(VerificationFailed, match=r"was revoked on .* \(ca.pem \(CRL 9\)\)"):
        check_revocation(chain, [], now=now, bundled=[*bundled, ("ca.pem (CRL 9)", revoked)])
