"""Root CAs, intermediates and leaf issuance."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certctl.errors import InvalidRequest, WeakKey
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    KeyType,
    SubjectAltNames,
    common_name_dn,
    create_root_ca,
    generate_private_key,
    keys_match,
)
from certctl.pki.issue import BACKDATE

from .conftest import ca_without_usage

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


def _ext(cert: x509.Certificate, cls: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


def _has(cert: x509.Certificate, cls: type) -> bool:
    try:
        _ext(cert, cls)
    except x509.ExtensionNotFound:
        return False
    return True


def _leaf(
    ca: CertificateAuthority,
    now: datetime,
    *,
    key: object = None,
    profile: str = "server",
    cn: str = "www.example.com",
    validity: timedelta = timedelta(days=90),
    sans: SubjectAltNames | None = None,
) -> x509.Certificate:
    public = (key or ec.generate_private_key(ec.SECP256R1())).public_key()  # type: ignore[attr-defined]
    issued = ca.issue(
        public,
        common_name_dn(cn) if cn else x509.Name([]),
        profile=PROFILES[profile],
        validity=validity,
        now=now,
        sans=sans,
    )
    assert issued.warnings == ()
    return issued.certificate


# --- roots -------------------------------------------------------------------------------


def test_root_ca_shape(root_ca: CertificateAuthority, now: datetime) -> None:
    cert = root_ca.certificate
    assert cert.subject == cert.issuer == common_name_dn("Test Root CA")
    cert.verify_directly_issued_by(cert)
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=True, path_length=None)
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not _has(cert, x509.ExtendedKeyUsage)
    assert not _has(cert, x509.SubjectAlternativeName)
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.not_valid_before_utc == now - BACKDATE
    assert cert.not_valid_after_utc == now + timedelta(days=3650)
    assert 0 < cert.serial_number
    assert cert.serial_number.bit_length() <= 159
    assert root_ca.root is cert
    assert root_ca.chain_below_root == ()


def test_root_ca_path_length(now: datetime) -> None:
    key = generate_private_key()
    issued = create_root_ca(
        key, common_name_dn("R"), validity=timedelta(days=365), now=now, path_length=1
    )
    assert _ext(issued.certificate, x509.BasicConstraints).value.path_length == 1


def test_root_ca_short_lifetime_warns(now: datetime) -> None:
    key = generate_private_key()
    issued = create_root_ca(key, common_name_dn("R"), validity=timedelta(days=30), now=now)
    assert issued.warnings == ("CA lifetime 30D is under 90 days; plan its renewal",)


def test_root_ca_refuses_empty_subject(now: datetime) -> None:
    with pytest.raises(InvalidRequest, match="a CA certificate needs a subject"):
        create_root_ca(generate_private_key(), x509.Name([]), validity=timedelta(days=365), now=now)


def test_root_ca_refuses_weak_key(rsa1024_key: rsa.RSAPrivateKey, now: datetime) -> None:
    with pytest.raises(WeakKey, match="rsa-1024: RSA keys must have at least 2048 bits"):
        create_root_ca(rsa1024_key, common_name_dn("R"), validity=timedelta(days=365), now=now)


def test_root_ca_refuses_negative_path_length(now: datetime) -> None:
    with pytest.raises(InvalidRequest, match="-1: path length must be 0 or more"):
        create_root_ca(
            generate_private_key(),
            common_name_dn("R"),
            validity=timedelta(days=365),
            now=now,
            path_length=-1,
        )


@pytest.mark.parametrize(
    ("key_type", "hash_type"),
    [(KeyType.EC_P256, hashes.SHA256), (KeyType.EC_P384, hashes.SHA384), (KeyType.ED25519, None)],
)
def test_signature_hash_follows_ca_key(
    key_type: KeyType, hash_type: type | None, now: datetime
) -> None:
    key = generate_private_key(key_type)
    cert = create_root_ca(
        key, common_name_dn("R"), validity=timedelta(days=365), now=now
    ).certificate
    ca = CertificateAuthority(cert, key)
    leaf = _leaf(ca, now)
    if hash_type is None:
        assert ca.signature_hash is None
        assert leaf.signature_hash_algorithm is None
    else:
        assert isinstance(leaf.signature_hash_algorithm, hash_type)
    leaf.verify_directly_issued_by(cert)


# --- CertificateAuthority ----------------------------------------------------------------


def test_keys_match(root_ca: CertificateAuthority) -> None:
    assert keys_match(root_ca.private_key, root_ca.certificate)
    assert not keys_match(generate_private_key(), root_ca.certificate)


def test_ca_refuses_mismatched_key(root_ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidRequest, match="CA private key does not match the CA certificate"):
        CertificateAuthority(root_ca.certificate, generate_private_key())


def test_ca_refuses_leaf_certificate(root_ca: CertificateAuthority, now: datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _leaf(root_ca, now, key=key)
    with pytest.raises(
        InvalidRequest, match=r"certificate is not a CA \(BasicConstraints CA:FALSE\)"
    ):
        CertificateAuthority(leaf, key)


def _bare_self_signed(
    key: ec.EllipticCurvePrivateKey, now: datetime, *extensions: x509.ExtensionType
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(common_name_dn("bare"))
        .issuer_name(common_name_dn("bare"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=True)
    return builder.sign(key, hashes.SHA256())


def test_ca_refuses_certificate_without_basic_constraints(
    ec_key: ec.EllipticCurvePrivateKey, now: datetime
) -> None:
    with pytest.raises(InvalidRequest, match="CA certificate has no BasicConstraints extension"):
        CertificateAuthority(_bare_self_signed(ec_key, now), ec_key)


def test_ca_without_ski_derives_aki_from_key(
    ec_key: ec.EllipticCurvePrivateKey, now: datetime
) -> None:
    cert = _bare_self_signed(ec_key, now, x509.BasicConstraints(ca=True, path_length=None))
    ca = CertificateAuthority(cert, ec_key)
    leaf = _leaf(ca, now)
    expected = x509.SubjectKeyIdentifier.from_public_key(ec_key.public_key()).digest
    assert _ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == expected


# --- leaves ------------------------------------------------------------------------------


def test_serials_are_positive_and_at_most_20_octets(
    root_ca: CertificateAuthority, now: datetime, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    serials = {_leaf(root_ca, now, key=ec_key).serial_number for _ in range(20)}
    assert len(serials) == 20
    for serial in serials:
        # RFC 5280 4.1.2.2: positive, DER-encoded in at most 20 octets.
        assert serial > 0
        assert serial.bit_length() <= 159


def test_leaf_validity_window(root_ca: CertificateAuthority, now: datetime) -> None:
    cert = _leaf(root_ca, now, validity=timedelta(days=90))
    assert cert.not_valid_before_utc == now - timedelta(minutes=5)
    assert cert.not_valid_after_utc == now + timedelta(days=90)


def test_leaf_clipped_to_issuer_not_after(root_ca: CertificateAuthority, now: datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = root_ca.issue(
        key.public_key(),
        common_name_dn("long.example"),
        profile=PROFILES["server"],
        validity=timedelta(days=5000),
        now=now,
    )
    issuer_end = root_ca.certificate.not_valid_after_utc
    assert issued.certificate.not_valid_after_utc == issuer_end
    assert issued.warnings == (
        f"validity 5000D clipped to the issuer's notAfter {issuer_end:%Y-%m-%dT%H:%M:%SZ}: "
        f"{(issuer_end - now).days} days instead of 5000 days",
    )


@pytest.mark.parametrize("jitter", [timedelta(0), timedelta(microseconds=511558)])
def test_leaf_clipped_short_warns_twice(
    root_ca: CertificateAuthority, now: datetime, jitter: timedelta
) -> None:
    # With ``jitter``, a clock with microseconds against the issuer's whole-second notAfter:
    # the warning said "certificate lifetime 239h59m58s488442us"; it reads in whole units.
    later = root_ca.certificate.not_valid_after_utc - timedelta(days=10) + jitter
    key = ec.generate_private_key(ec.SECP256R1())
    issued = root_ca.issue(
        key.public_key(),
        common_name_dn("late.example"),
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=later,
    )
    assert len(issued.warnings) == 2
    # Both lifetimes in days, the one granted rounded (10 days less the jitter).
    assert issued.warnings[0].endswith(": 10 days instead of 90 days"), issued.warnings
    assert issued.warnings[1] == "certificate lifetime 10 days is under 60 days; plan its renewal"


def test_a_lifetime_clipped_to_part_of_a_day_is_said_in_days(
    root_ca: CertificateAuthority,
) -> None:
    # Both warnings in one unit: before, "validity 90D clipped to …" then "certificate
    # lifetime 719h58m is under 60 days" (a CA made minutes before its leaf).
    end = root_ca.certificate.not_valid_after_utc
    issued = root_ca.issue(
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        common_name_dn("half.example"),
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=end - timedelta(days=29, hours=12),
    )
    assert issued.warnings == (
        f"validity 90D clipped to the issuer's notAfter {end:%Y-%m-%dT%H:%M:%SZ}: "
        "29.5 days instead of 90 days",
        "certificate lifetime 29.5 days is under 60 days; plan its renewal",
    )


@pytest.mark.parametrize("late", [timedelta(seconds=7), timedelta(hours=1)])
def test_a_clip_the_lifetimes_in_days_do_not_show_is_not_warned(
    root_ca: CertificateAuthority, late: timedelta
) -> None:
    # The CA's own lifetime asked for, moments after it was made: the warning read
    # "validity 3650D clipped …: 3650 days instead of 3650 days", which says nothing.
    start = root_ca.certificate.not_valid_before_utc + timedelta(minutes=5)
    lifetime = root_ca.certificate.not_valid_after_utc - start
    issued = root_ca.issue(
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        common_name_dn("same.example"),
        profile=PROFILES["server"],
        validity=lifetime,
        now=start + late,
    )
    assert issued.certificate.not_valid_after_utc == root_ca.certificate.not_valid_after_utc
    assert issued.warnings == ()


def test_a_clip_a_tenth_of_a_day_shows_is_warned(root_ca: CertificateAuthority) -> None:
    end = root_ca.certificate.not_valid_after_utc
    start = end - timedelta(days=90)
    issued = root_ca.issue(
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        common_name_dn("later.example"),
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=start + timedelta(hours=3),
    )
    assert issued.warnings == (
        f"validity 90D clipped to the issuer's notAfter {end:%Y-%m-%dT%H:%M:%SZ}: "
        "89.9 days instead of 90 days",
    )


def test_ca_without_key_cert_sign_refuses_to_issue(now: datetime) -> None:
    # openssl refuses what it signs (error 32): say so instead of writing useless files.
    ca = ca_without_usage("key_cert_sign", now)
    assert not ca.may_sign_certificates
    assert ca.may_sign_crls
    with pytest.raises(
        InvalidRequest, match=r"^CN=Limited CA: the CA's keyUsage lacks keyCertSign"
    ):
        _leaf(ca, now)


def test_certctl_ca_may_sign_certificates_and_crls(
    root_ca: CertificateAuthority, now: datetime
) -> None:
    assert root_ca.may_sign_certificates
    assert root_ca.may_sign_crls


def test_short_leaf_warns(root_ca: CertificateAuthority, now: datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = root_ca.issue(
        key.public_key(),
        common_name_dn("short.example"),
        profile=PROFILES["server"],
        validity=timedelta(hours=36),
        now=now,
    )
    assert issued.warnings == ("certificate lifetime 36h is under 60 days; plan its renewal",)


def test_expired_issuer_refuses(root_ca: CertificateAuthority) -> None:
    after = root_ca.certificate.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(InvalidRequest, match=r"issuing CA expired on \d{4}-\d\d-\d\d \d\d:\d\dZ"):
        _leaf(root_ca, after)


def test_leaf_refuses_weak_key(
    root_ca: CertificateAuthority, now: datetime, rsa1024_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(WeakKey, match="rsa-1024: RSA keys must have at least 2048 bits"):
        _leaf(root_ca, now, key=rsa1024_key)


def test_leaf_identifiers_and_criticality(root_ca: CertificateAuthority, now: datetime) -> None:
    cert = _leaf(root_ca, now)
    cert.verify_directly_issued_by(root_ca.certificate)
    assert cert.issuer == root_ca.certificate.subject
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    assert not aki.critical
    issuer_ski = _ext(root_ca.certificate, x509.SubjectKeyIdentifier).value
    assert aki.value.key_identifier == issuer_ski.digest
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=False, path_length=None)
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    assert not ku.value.crl_sign
    assert not _ext(cert, x509.ExtendedKeyUsage).critical


@pytest.mark.parametrize(
    ("profile", "ekus"),
    [("server", [SERVER]), ("client", [CLIENT]), ("server+client", [SERVER, CLIENT])],
)
def test_eku_per_profile(
    root_ca: CertificateAuthority, now: datetime, profile: str, ekus: list[object]
) -> None:
    cert = _leaf(root_ca, now, profile=profile)
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == ekus


@pytest.mark.parametrize(
    ("profile", "key_encipherment"),
    [("server", True), ("server+client", True), ("client", False)],
)
def test_rsa_key_encipherment(
    root_ca: CertificateAuthority,
    now: datetime,
    rsa_key: rsa.RSAPrivateKey,
    profile: str,
    key_encipherment: bool,
) -> None:
    rsa_cert = _leaf(root_ca, now, key=rsa_key, profile=profile)
    assert _ext(rsa_cert, x509.KeyUsage).value.key_encipherment is key_encipherment
    ec_cert = _leaf(root_ca, now, profile=profile)
    assert _ext(ec_cert, x509.KeyUsage).value.key_encipherment is False
    ed_cert = _leaf(root_ca, now, key=ed25519.Ed25519PrivateKey.generate(), profile=profile)
    assert _ext(ed_cert, x509.KeyUsage).value.key_encipherment is False


def test_server_without_sans_gets_cn_as_dns_san(
    root_ca: CertificateAuthority, now: datetime
) -> None:
    cert = _leaf(root_ca, now, cn="WWW.Example.com")
    san = _ext(cert, x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.DNSName) == ["www.example.com"]


@pytest.mark.parametrize(
    ("cn", "address"),
    [("10.0.0.5", "10.0.0.5"), ("2001:DB8::1", "2001:db8::1"), ("::ffff:10.0.0.6", "10.0.0.6")],
)
def test_server_without_sans_gets_address_cn_as_ip_san(
    root_ca: CertificateAuthority, now: datetime, cn: str, address: str
) -> None:
    # `openssl req -subj /CN=10.0.0.5` with no SANs: before, the address was tried as a DNS
    # name only, refused, and the certificate went out naming no host at all.
    issued = root_ca.issue(
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        common_name_dn(cn),
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=now,
    )
    san = _ext(issued.certificate, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(address)]
    assert san.get_values_for_type(x509.DNSName) == []
    assert not [w for w in issued.warnings if "without a DNS or IP name" in w]


@pytest.mark.parametrize(("profile", "cn"), [("server", "My Service"), ("client", "alice.example")])
def test_no_san_from_cn(
    root_ca: CertificateAuthority, now: datetime, profile: str, cn: str
) -> None:
    issued = root_ca.issue(
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        common_name_dn(cn),
        profile=PROFILES[profile],
        validity=timedelta(days=90),
        now=now,
    )
    assert not _has(issued.certificate, x509.SubjectAlternativeName)
    # A server certificate no client can match to a host says so; a client one needs no name.
    no_host = [w for w in issued.warnings if "without a DNS or IP name" in w]
    assert len(no_host) == (1 if profile == "server" else 0)


def test_explicit_sans_win_over_cn(root_ca: CertificateAuthority, now: datetime) -> None:
    sans = SubjectAltNames.parse(dns=["api.example"], ip=["10.0.0.1", "::1"])
    issued = root_ca.issue(
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        common_name_dn("www.example.com"),
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=now,
        sans=sans,
    )
    value = _ext(issued.certificate, x509.SubjectAlternativeName).value
    assert SubjectAltNames.from_extension(value) == sans
    # Issued as asked, but the CN is served by no name: said once, with the generic fix.
    assert issued.warnings == (
        "common name www.example.com is not among the certificate's DNS names: clients will "
        "not accept it for that name; add it to the DNS names",
    )


@pytest.mark.parametrize(
    ("cn", "dns", "warned"),
    [
        ("api.example.com", ["*.example.com"], False),
        ("API.Example.com", ["api.example.com"], False),
        ("bücher.example", ["xn--bcher-kva.example"], False),
        ("a.b.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], True),
        ("*.example.com", ["*.example.com"], False),
    ],
)
def test_a_cn_is_covered_by_an_equal_or_wildcard_dns_name(
    root_ca: CertificateAuthority, now: datetime, cn: str, dns: list[str], warned: bool
) -> None:
    issued = root_ca.issue(
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        common_name_dn(cn),
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=now,
        sans=SubjectAltNames.parse(dns=dns),
    )
    assert bool(issued.warnings) is warned, issued.warnings


def test_empty_subject_makes_san_critical(root_ca: CertificateAuthority, now: datetime) -> None:
    sans = SubjectAltNames.parse(email=["alice@example.com"])
    cert = _leaf(root_ca, now, profile="client", cn="", sans=sans)
    assert cert.subject == x509.Name([])
    assert _ext(cert, x509.SubjectAlternativeName).critical  # RFC 5280 4.2.1.6


def test_leaf_needs_subject_or_san(root_ca: CertificateAuthority, now: datetime) -> None:
    with pytest.raises(InvalidRequest, match="certificate needs a subject or at least one SAN"):
        _leaf(root_ca, now, profile="client", cn="")


# --- intermediates -----------------------------------------------------------------------


def test_intermediate_shape(
    root_ca: CertificateAuthority, intermediate_ca: CertificateAuthority, now: datetime
) -> None:
    cert = intermediate_ca.certificate
    cert.verify_directly_issued_by(root_ca.certificate)
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=True, path_length=0)
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.key_cert_sign
    assert ku.crl_sign
    assert not _has(cert, x509.ExtendedKeyUsage)
    assert intermediate_ca.root is root_ca.certificate
    assert intermediate_ca.chain_below_root == (cert,)
    leaf = _leaf(intermediate_ca, now)
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(cert, x509.SubjectKeyIdentifier).value.digest


def test_ca_profile_drops_sans(root_ca: CertificateAuthority, now: datetime) -> None:
    key = generate_private_key()
    issued = root_ca.issue(
        key.public_key(),
        common_name_dn("Sub CA"),
        profile=PROFILES["intermediate"],
        validity=timedelta(days=365),
        now=now,
        sans=SubjectAltNames.parse(dns=["ca.example"]),
    )
    assert not _has(issued.certificate, x509.SubjectAlternativeName)


def test_ca_profile_needs_subject(root_ca: CertificateAuthority, now: datetime) -> None:
    key = generate_private_key()
    with pytest.raises(InvalidRequest, match="a CA certificate needs a subject"):
        root_ca.issue(
            key.public_key(),
            x509.Name([]),
            profile=PROFILES["intermediate"],
            validity=timedelta(days=365),
            now=now,
        )


def test_short_intermediate_warns(root_ca: CertificateAuthority, now: datetime) -> None:
    key = generate_private_key()
    issued = root_ca.issue(
        key.public_key(),
        common_name_dn("Short CA"),
        profile=PROFILES["intermediate"],
        validity=timedelta(days=60),
        now=now,
    )
    assert issued.warnings == ("CA lifetime 60D is under 90 days; plan its renewal",)


def test_intermediate_below_path_length_zero_refused(
    intermediate_ca: CertificateAuthority, now: datetime
) -> None:
    key = generate_private_key()
    with pytest.raises(InvalidRequest, match="the issuer's path length is 0: it cannot sign CAs"):
        intermediate_ca.issue(
            key.public_key(),
            common_name_dn("Too deep"),
            profile=PROFILES["intermediate"],
            validity=timedelta(days=365),
            now=now,
        )


def test_path_length_must_shrink(now: datetime) -> None:
    root_key = generate_private_key()
    root_cert = create_root_ca(
        root_key, common_name_dn("R1"), validity=timedelta(days=3650), now=now, path_length=1
    ).certificate
    root = CertificateAuthority(root_cert, root_key)
    key = generate_private_key()
    with pytest.raises(InvalidRequest, match="path length 1 must be below the issuer's 1"):
        root.issue(
            key.public_key(),
            common_name_dn("I"),
            profile=PROFILES["intermediate"].with_path_length(1),
            validity=timedelta(days=365),
            now=now,
        )
    ok = root.issue(
        key.public_key(),
        common_name_dn("I"),
        profile=PROFILES["intermediate"],
        validity=timedelta(days=365),
        now=now,
    )
    assert _ext(ok.certificate, x509.BasicConstraints).value.path_length == 0


def test_subject_is_kept(root_ca: CertificateAuthority, now: datetime) -> None:
    key = generate_private_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            x509.NameAttribute(NameOID.COMMON_NAME, "svc.example"),
        ]
    )
    issued = root_ca.issue(
        key.public_key(), subject, profile=PROFILES["server"], validity=timedelta(days=90), now=now
    )
    assert issued.certificate.subject == subject


def test_a_lifetime_under_a_minute_reads_in_seconds(
    root_ca: CertificateAuthority, now: datetime
) -> None:
    # Rounded to minutes, a 4-second test certificate was said to live "1s".
    key = ec.generate_private_key(ec.SECP256R1())
    issued = root_ca.issue(
        key.public_key(),
        common_name_dn("brief.example"),
        profile=PROFILES["server"],
        validity=timedelta(seconds=4),
        now=now,
    )
    assert issued.warnings == ("certificate lifetime 4s is under 60 days; plan its renewal",)
