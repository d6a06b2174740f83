"""The signing template must produce exactly what cryptography's CertificateBuilder does."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    IssuedCertificate,
    SubjectAltNames,
    common_name_dn,
    create_root_ca,
)
from certctl.pki import template as template_module
from certctl.pki.template import SigningTemplate, key_identifier, spki_of

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _ca(key: object) -> CertificateAuthority:
    issued = create_root_ca(
        key,  # type: ignore[arg-type]
        common_name_dn("Template Test CA"),
        validity=timedelta(days=365 * 40),  # notAfter past 2049: GeneralizedTime leaves
        now=NOW,
    )
    return CertificateAuthority(issued.certificate, key)  # type: ignore[arg-type]


CA_KEYS = {
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}
CAS = {name: _ca(key) for name, key in CA_KEYS.items()}
SUBJECT_KEYS = [
    ec.generate_private_key(ec.SECP256R1()).public_key(),
    ec.generate_private_key(ec.SECP384R1()).public_key(),
    rsa.generate_private_key(public_exponent=65537, key_size=3072).public_key(),
    ed25519.Ed25519PrivateKey.generate().public_key(),
]

_label = st.from_regex(r"[a-z][a-z0-9]{0,19}", fullmatch=True)
_dns = st.lists(_label, min_size=2, max_size=4).map(".".join)
_names = st.builds(
    SubjectAltNames.parse,
    dns=st.lists(_dns, max_size=12),
    ip=st.lists(st.ip_addresses().map(str), max_size=4),
    email=st.lists(st.builds("{}@{}".format, _label, _dns), max_size=2),
    uri=st.lists(st.builds("https://{}/{}".format, _dns, _label), max_size=2),
)
_subjects = st.one_of(
    st.just(x509.Name([])),
    st.builds(
        lambda cn, org: x509.Name(
            [x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]
            + ([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, org)] if org else [])
        ),
        st.text(
            st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=16
        ),
        st.one_of(st.none(), st.text("ABCdef -", min_size=1, max_size=40)),
    ),
)


def _both(
    ca: CertificateAuthority, serial: int, **kwargs: object
) -> tuple[x509.Certificate, x509.Certificate]:
    """The same certificate signed through the template and through the builder."""
    builder_ca = CertificateAuthority(ca.certificate, ca.private_key)
    builder_ca.__dict__["_template"] = None  # the cached_property, pre-filled: no template
    with mock.patch.object(x509, "random_serial_number", return_value=serial):
        fast = ca.issue(**kwargs).certificate  # type: ignore[arg-type]
        slow = builder_ca.issue(**kwargs).certificate  # type: ignore[arg-type]
    return fast, slow


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ca_name=st.sampled_from(sorted(CAS)),
    key_index=st.integers(0, len(SUBJECT_KEYS) - 1),
    profile=st.sampled_from(["server", "client", "server+client", "intermediate"]),
    subject=_subjects,
    sans=_names,
    validity=st.timedeltas(timedelta(seconds=1), timedelta(days=365 * 30)),
    serial=st.integers(1, 2**159 - 1),
    now=st.datetimes(datetime(2024, 1, 1), datetime(2050, 1, 1), timezones=st.just(UTC)),
    # public-url / --crl-url: none (the usual case) or a cRLDistributionPoints extension.
    crl_urls=st.lists(st.builds("http://{}/{}.crl".format, _dns, _label), max_size=3),
    # public-url / --ca-issuers-url: none or an authorityInfoAccess with caIssuers URIs.
    ca_issuers_urls=st.lists(st.builds("http://{}/{}.der".format, _dns, _label), max_size=3),
)
def test_template_matches_builder_byte_for_byte(
    ca_name: str,
    key_index: int,
    profile: str,
    subject: x509.Name,
    sans: SubjectAltNames,
    validity: timedelta,
    serial: int,
    now: datetime,
    crl_urls: list[str],
    ca_issuers_urls: list[str],
) -> None:
    ca = CAS[ca_name]
    if profile == "intermediate" and not subject:
        subject = common_name_dn("Sub CA")
    if not subject and not sans:
        sans = SubjectAltNames(dns=("only-san.example",))
    fast, slow = _both(
        ca,
        serial,
        public_key=SUBJECT_KEYS[key_index],
        subject=subject,
        profile=PROFILES[profile],
        validity=validity,
        now=min(now, ca.certificate.not_valid_after_utc - timedelta(seconds=1)),
        sans=sans,
        crl_urls=crl_urls,
        ca_issuers_urls=ca_issuers_urls,
    )
    assert ca._template is not None
    assert fast.tbs_certificate_bytes == slow.tbs_certificate_bytes
    points = [e.value for e in fast.extensions if isinstance(e.value, x509.CRLDistributionPoints)]
    if crl_urls:
        assert [[n.value for n in p.full_name or ()] for p in points[0]] == [crl_urls]
    else:
        assert points == []
    aia = [e for e in fast.extensions if isinstance(e.value, x509.AuthorityInformationAccess)]
    if ca_issuers_urls:
        assert not aia[0].critical
        assert [(d.access_method, d.access_location.value) for d in aia[0].value] == [
            (AuthorityInformationAccessOID.CA_ISSUERS, url) for url in ca_issuers_urls
        ]
        assert fast.extensions[-1] == aia[0]  # last: after the SANs and CRL points
    else:
        assert aia == []
    assert fast.signature_algorithm_oid == slow.signature_algorithm_oid
    fast.verify_directly_issued_by(ca.certificate)


@pytest.mark.parametrize("name", sorted(CAS))
def test_every_supported_ca_key_gets_a_template(name: str) -> None:
    ca = CAS[name]
    assert SigningTemplate.for_ca(
        ca.certificate, ca.private_key, ca.signature_hash, ca.authority_key_identifier
    )


def test_unknown_key_type_keeps_the_builder() -> None:
    ca = CAS["p256"]
    dsa_key = dsa.generate_private_key(key_size=2048)
    assert (
        SigningTemplate.for_ca(ca.certificate, dsa_key, None, ca.authority_key_identifier) is None
    )


def _server_leaf(
    ca: CertificateAuthority, name: str, sans: SubjectAltNames | None = None
) -> IssuedCertificate:
    return ca.issue(
        SUBJECT_KEYS[0],
        common_name_dn(name),
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=NOW,
        sans=sans,
    )


def test_any_difference_from_the_builder_keeps_the_builder() -> None:
    """The self-check at first use is what makes the template safe to use at all."""
    ca = CertificateAuthority(CAS["p256"].certificate, CA_KEYS["p256"])
    wrong_time = lambda m: b"\x18\x0f" + m.strftime("%Y%m%d%H%M%SZ").encode()  # noqa: E731
    with mock.patch.object(template_module, "_time", wrong_time):
        assert ca._template is None
    issued = _server_leaf(ca, "fallback.example")
    issued.certificate.verify_directly_issued_by(ca.certificate)
    assert issued.sans == SubjectAltNames(dns=("fallback.example",))


@pytest.mark.parametrize(
    "key",
    [*SUBJECT_KEYS, ed448.Ed448PrivateKey.generate().public_key()],  # policy refuses Ed448 leaves
    ids=lambda k: type(k).__name__,
)
def test_key_identifier_is_cryptographys(key: object) -> None:
    expected = x509.SubjectKeyIdentifier.from_public_key(key).digest  # type: ignore[arg-type]
    assert key_identifier(spki_of(key)) == expected  # type: ignore[arg-type]


def test_issued_leaf_through_the_template_is_a_full_certificate() -> None:
    ca = CAS["p256"]
    sans = SubjectAltNames.parse(dns=["svc.example"], ip=["10.0.0.1"])
    leaf = _server_leaf(ca, "svc.example", sans).certificate
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    assert leaf.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert leaf.issuer == ca.certificate.subject
