"""Chain, name, purpose and validity verification: each positive check has a negative twin."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from certctl.errors import InvalidRequest
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    KeyType,
    SubjectAltNames,
    VerificationFailed,
    common_name_dn,
    create_root_ca,
    generate_private_key,
    verify_certificate,
)

from .conftest import NOW

NO_MATCH = r"^verification failed: \S+ is not in the certificate's SANs \(it has "


def _root(name: str, key_type: KeyType = KeyType.EC_P256) -> CertificateAuthority:
    key = generate_private_key(key_type)
    cert = create_root_ca(
        key, common_name_dn(name), validity=timedelta(days=3650), now=NOW
    ).certificate
    return CertificateAuthority(cert, key)


def _leaf(
    ca: CertificateAuthority,
    *,
    profile: str = "server",
    cn: str = "www.example.com",
    sans: SubjectAltNames | None = None,
    key_type: KeyType = KeyType.EC_P256,
) -> x509.Certificate:
    key = generate_private_key(key_type)
    return ca.issue(
        key.public_key(),
        common_name_dn(cn),
        profile=PROFILES[profile],
        validity=timedelta(days=90),
        now=NOW,
        sans=sans,
    ).certificate


@pytest.fixture(scope="module")
def other_root() -> CertificateAuthority:
    return _root("Other Root")


@pytest.fixture(scope="module")
def ed_root() -> CertificateAuthority:
    return _root("Ed Root", KeyType.ED25519)


@pytest.fixture(scope="module")
def server_cert(root_ca: CertificateAuthority) -> x509.Certificate:
    return _leaf(root_ca)


@pytest.fixture(scope="module")
def wildcard_cert(root_ca: CertificateAuthority) -> x509.Certificate:
    return _leaf(root_ca, sans=SubjectAltNames.parse(dns=["*.example.com"], ip=["10.0.0.1", "::1"]))


def test_server_ok(root_ca: CertificateAuthority, server_cert: x509.Certificate) -> None:
    result = verify_certificate(
        server_cert, trust=[root_ca.certificate], hostname="www.example.com", now=NOW
    )
    assert result.chain == (server_cert, root_ca.certificate)
    assert result.purpose == "server"
    assert result.name == "www.example.com"


def test_server_default_name_is_first_san(
    root_ca: CertificateAuthority, server_cert: x509.Certificate
) -> None:
    result = verify_certificate(server_cert, trust=[root_ca.certificate], now=NOW)
    assert result.name == "www.example.com"


def test_wrong_hostname(root_ca: CertificateAuthority, server_cert: x509.Certificate) -> None:
    with pytest.raises(VerificationFailed, match=NO_MATCH):
        verify_certificate(
            server_cert, trust=[root_ca.certificate], hostname="other.example.com", now=NOW
        )


def test_wrong_ca(other_root: CertificateAuthority, server_cert: x509.Certificate) -> None:
    # The message names the CA that is missing, not cryptography's "candidates exhausted".
    with pytest.raises(
        VerificationFailed,
        match=r"^verification failed: CN=Test Root CA, the issuer of CN=www.example.com, is "
        r"neither in the trust bundle nor among the intermediates$",
    ):
        verify_certificate(server_cert, trust=[other_root.certificate], now=NOW)


def test_messages_name_subject_attributes_as_openssl(
    root_ca: CertificateAuthority, other_root: CertificateAuthority
) -> None:
    # Named as inspect and openssl -nameopt RFC2253 name them, not as dotted OIDs
    # ("1.2.840.113549.1.9.1=ops@example.com").
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.com"),
            x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com"),
        ]
    )
    leaf = root_ca.issue(
        generate_private_key(KeyType.EC_P256).public_key(),
        subject,
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=NOW,
        sans=SubjectAltNames.parse(dns=["www.example.com"]),
    ).certificate
    with pytest.raises(
        VerificationFailed,
        match=r"the issuer of CN=www.example.com,emailAddress=ops@example.com, is neither",
    ):
        verify_certificate(leaf, trust=[other_root.certificate], now=NOW)


def test_same_name_other_key_ca(server_cert: x509.Certificate) -> None:
    regenerated = _root("Test Root CA")  # e.g. a data directory created anew
    with pytest.raises(
        VerificationFailed,
        match=r"^verification failed: CN=Test Root CA in the trust bundle did not sign "
        r"CN=www.example.com \(a CA of the same name with another key",
    ):
        verify_certificate(server_cert, trust=[regenerated.certificate], now=NOW)


def _issued_under(ca: CertificateAuthority, issuer: x509.Name) -> x509.Certificate:
    """A server certificate signed by ``ca``'s key that names ``issuer`` as its issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(common_name_dn("www.example.com"))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("www.example.com")]), critical=False
        )
        .sign(ca.private_key, hashes.SHA256())  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "issuer",
    [
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TEST root CA")]),
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, " Test  Root CA")]),
        x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "Test Root CA", _ASN1Type.PrintableString)]
        ),
    ],
    ids=["case", "spacing", "PrintableString"],
)
def test_an_issuer_name_that_matches_only_when_folded_is_named_so(
    root_ca: CertificateAuthority, issuer: x509.Name
) -> None:
    # openssl verify accepts these (X509_NAME_cmp folds case, spacing and string type);
    # cryptography's verifier looks issuers up by the name as encoded and refuses them. The
    # message said "neither in the trust bundle" (or "another key") for a CA that is there.
    leaf = _issued_under(root_ca, issuer)
    with pytest.raises(
        VerificationFailed,
        match=r"^verification failed: the issuer name of CN=www.example.com, .*, differs from "
        r"CN=Test Root CA in the trust bundle only in case, spacing or string type: openssl "
        r"accepts that \(RFC 5280 7.1\), certctl's verifier \(pyca/cryptography\) does not; "
        r"reissue the certificate with the CA's subject as its issuer name$",
    ):
        verify_certificate(leaf, trust=[root_ca.certificate], now=NOW)


def test_expired(root_ca: CertificateAuthority, server_cert: x509.Certificate) -> None:
    # Prefixed as every other failure is (before, the leaf's window alone lacked it).
    later = NOW + timedelta(days=91)
    with pytest.raises(
        VerificationFailed,
        match=r"^verification failed: certificate expired on 2025-08-30T12:00:00Z$",
    ):
        verify_certificate(server_cert, trust=[root_ca.certificate], now=later)


def test_not_yet_valid(root_ca: CertificateAuthority, server_cert: x509.Certificate) -> None:
    earlier = NOW - timedelta(hours=1)
    with pytest.raises(
        VerificationFailed,
        match=r"^verification failed: certificate is not valid before 2025-06-01T11:55:00Z$",
    ):
        verify_certificate(server_cert, trust=[root_ca.certificate], now=earlier)


def test_backdating_tolerates_small_skew(
    root_ca: CertificateAuthority, server_cert: x509.Certificate
) -> None:
    result = verify_certificate(
        server_cert, trust=[root_ca.certificate], now=NOW - timedelta(minutes=4)
    )
    assert result.chain == (server_cert, root_ca.certificate)


def test_server_cert_is_not_a_client_cert(
    root_ca: CertificateAuthority, server_cert: x509.Certificate
) -> None:
    with pytest.raises(
        VerificationFailed, match=r"lacks the clientAuth extended key usage \(it has serverAuth\)"
    ):
        verify_certificate(server_cert, trust=[root_ca.certificate], purpose="client", now=NOW)


def test_client_ok_and_not_a_server(root_ca: CertificateAuthority) -> None:
    client = _leaf(
        root_ca,
        profile="client",
        cn="alice",
        sans=SubjectAltNames.parse(email=["alice@example.com"]),
    )
    result = verify_certificate(client, trust=[root_ca.certificate], purpose="client", now=NOW)
    assert result.name is None
    assert result.chain[-1] == root_ca.certificate
    # Its purpose is what is wrong, not the SAN a server certificate would also need.
    with pytest.raises(VerificationFailed, match=r"lacks the serverAuth extended key usage"):
        verify_certificate(client, trust=[root_ca.certificate], now=NOW)


def test_server_client_profile_serves_both(root_ca: CertificateAuthority) -> None:
    cert = _leaf(root_ca, profile="server+client", cn="node-1.example")
    for purpose in ("server", "client"):
        result = verify_certificate(cert, trust=[root_ca.certificate], purpose=purpose, now=NOW)
        assert (result.purpose, result.chain) == (purpose, (cert, root_ca.certificate))


def test_server_cert_without_san(root_ca: CertificateAuthority) -> None:
    cert = _leaf(root_ca, cn="My Service")  # not host-like: no SAN derived from the CN
    with pytest.raises(VerificationFailed) as caught:
        verify_certificate(cert, trust=[root_ca.certificate], now=NOW)
    assert caught.value.detail == (
        "verification failed: server certificate CN=My Service has no subjectAltName: TLS "
        "clients match host names against its DNS and IP SANs only"
    )


def test_ca_certificate_checked_as_a_server(root_ca: CertificateAuthority) -> None:
    # `certctl verify --ca ca/ca.crt ca/ca.crt`: before, "server certificate has no
    # SubjectAlternativeName", as if SANs were what it lacked.
    with pytest.raises(VerificationFailed) as caught:
        verify_certificate(root_ca.certificate, trust=[root_ca.certificate], now=NOW)
    assert caught.value.detail == (
        "verification failed: the certificate CN=Test Root CA is a CA certificate, not a "
        "server certificate"
    )


def test_certificate_without_subject_or_san_is_named() -> None:
    # `openssl req -x509 -subj /`: the message had a gap where the name goes.
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(VerificationFailed) as caught:
        verify_certificate(cert, trust=[cert], now=NOW)
    assert caught.value.detail == (
        "verification failed: the certificate with an empty subject is a CA certificate, not "
        "a server certificate"
    )


def test_intermediate_needed_and_used(
    root_ca: CertificateAuthority, intermediate_ca: CertificateAuthority
) -> None:
    leaf = _leaf(intermediate_ca)
    result = verify_certificate(
        leaf, trust=[root_ca.certificate], untrusted=[intermediate_ca.certificate], now=NOW
    )
    assert result.chain == (leaf, intermediate_ca.certificate, root_ca.certificate)
    with pytest.raises(
        VerificationFailed,
        match=r"^verification failed: CN=Test Intermediate CA, the issuer of CN=www.example.com, "
        r"is neither in the trust bundle nor among the intermediates$",
    ):
        verify_certificate(leaf, trust=[root_ca.certificate], now=NOW)


@pytest.mark.parametrize(
    ("hostname", "ok"),
    [
        ("a.example.com", True),
        ("A.Example.COM.", True),
        ("a.b.example.com", False),
        ("example.com", False),
        ("10.0.0.1", True),
        ("10.0.0.2", False),
        ("::1", True),
        ("[::1]", True),
    ],
)
def test_wildcard_and_ip_matching(
    root_ca: CertificateAuthority, wildcard_cert: x509.Certificate, hostname: str, ok: bool
) -> None:
    if ok:
        verify_certificate(wildcard_cert, trust=[root_ca.certificate], hostname=hostname, now=NOW)
    else:
        with pytest.raises(VerificationFailed, match=NO_MATCH):
            verify_certificate(
                wildcard_cert, trust=[root_ca.certificate], hostname=hostname, now=NOW
            )


def test_wildcard_default_name(
    root_ca: CertificateAuthority, wildcard_cert: x509.Certificate
) -> None:
    result = verify_certificate(wildcard_cert, trust=[root_ca.certificate], now=NOW)
    assert result.name == "wildcard.example.com"


def test_empty_trust_refused(server_cert: x509.Certificate) -> None:
    with pytest.raises(InvalidRequest, match="trust bundle holds no certificate"):
        verify_certificate(server_cert, trust=[], now=NOW)


def test_unknown_purpose_refused(
    root_ca: CertificateAuthority, server_cert: x509.Certificate
) -> None:
    with pytest.raises(InvalidRequest, match=r"^email: unknown purpose \(server or client\)$"):
        verify_certificate(server_cert, trust=[root_ca.certificate], purpose="email", now=NOW)


# --- Ed25519: the RFC 5280 fallback path ---------------------------------------------------


@pytest.fixture(scope="module")
def ed_server(ed_root: CertificateAuthority) -> x509.Certificate:
    return _leaf(
        ed_root,
        key_type=KeyType.ED25519,
        sans=SubjectAltNames.parse(dns=["*.example.com"], ip=["10.0.0.1"]),
    )


@pytest.mark.parametrize("hostname", ["a.example.com", "10.0.0.1", None])
def test_ed25519_server_ok(
    ed_root: CertificateAuthority, ed_server: x509.Certificate, hostname: str | None
) -> None:
    result = verify_certificate(ed_server, trust=[ed_root.certificate], hostname=hostname, now=NOW)
    assert result.chain == (ed_server, ed_root.certificate)


@pytest.mark.parametrize(
    "hostname", ["a.b.example.com", "example.com", "10.0.0.2", "x.example.org"]
)
def test_ed25519_wrong_hostname(
    ed_root: CertificateAuthority, ed_server: x509.Certificate, hostname: str
) -> None:
    with pytest.raises(VerificationFailed, match=NO_MATCH):
        verify_certificate(ed_server, trust=[ed_root.certificate], hostname=hostname, now=NOW)


def test_ed25519_wrong_ca(ed_server: x509.Certificate) -> None:
    other_ed = _root("Other Ed Root", KeyType.ED25519)
    with pytest.raises(VerificationFailed, match="verification failed"):
        verify_certificate(ed_server, trust=[other_ed.certificate], now=NOW)


def test_ed25519_expired(ed_root: CertificateAuthority, ed_server: x509.Certificate) -> None:
    with pytest.raises(VerificationFailed, match="certificate expired on"):
        verify_certificate(ed_server, trust=[ed_root.certificate], now=NOW + timedelta(days=91))


def test_ed25519_wrong_purpose(ed_root: CertificateAuthority, ed_server: x509.Certificate) -> None:
    with pytest.raises(
        VerificationFailed, match=r"lacks the clientAuth extended key usage \(it has serverAuth\)"
    ):
        verify_certificate(ed_server, trust=[ed_root.certificate], purpose="client", now=NOW)


def test_ed25519_through_intermediate(ed_root: CertificateAuthority) -> None:
    key = generate_private_key(KeyType.ED25519)
    inter_cert = ed_root.issue(
        key.public_key(),
        common_name_dn("Ed Intermediate"),
        profile=PROFILES["intermediate"],
        validity=timedelta(days=365),
        now=NOW,
    ).certificate
    inter = CertificateAuthority(inter_cert, key, (ed_root.certificate,))
    leaf = _leaf(inter, key_type=KeyType.ED25519)
    result = verify_certificate(leaf, trust=[ed_root.certificate], untrusted=[inter_cert], now=NOW)
    assert result.chain == (leaf, inter_cert, ed_root.certificate)
    with pytest.raises(VerificationFailed, match="verification failed"):
        verify_certificate(leaf, trust=[ed_root.certificate], now=NOW)


def test_client_cert_without_san_verifies(root_ca: CertificateAuthority) -> None:
    client = _leaf(root_ca, profile="client", cn="alice")
    result = verify_certificate(client, trust=[root_ca.certificate], purpose="client", now=NOW)
    assert (result.purpose, result.name, result.chain) == (
        "client",
        None,
        (client, root_ca.certificate),
    )


# --- path length: the RFC 5280 fallback holds CAs to it, as openssl does (error 25) ----------


def _ca_below(
    parent: CertificateAuthority, name: str, key_type: KeyType
) -> tuple[x509.Certificate, CertificateAuthority]:
    """A CA signed by ``parent`` with the builder: certctl refuses it under pathlen 0."""
    key = generate_private_key(key_type)
    cert = (
        x509.CertificateBuilder()
        .subject_name(common_name_dn(name))
        .issuer_name(parent.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(PROFILES["ca"].key_usage(key.public_key()), critical=True)
        .add_extension(parent.authority_key_identifier, critical=False)
        .sign(parent.private_key, parent.signature_hash)
    )
    return cert, CertificateAuthority(cert, key, (parent.certificate, *parent.chain))


@pytest.mark.parametrize(
    ("key_type", "profile", "sans"),
    [
        # A client certificate without SAN takes the fallback (cryptography wants a SAN).
        (KeyType.EC_P256, "client", None),
        # Ed25519 takes it for every purpose.
        (KeyType.ED25519, "server", SubjectAltNames.parse(dns=["www.example.com"])),
    ],
)
def test_fallback_refuses_a_ca_below_path_length_0(
    key_type: KeyType, profile: str, sans: SubjectAltNames | None
) -> None:
    root = _root(f"PL Root {key_type}", key_type)
    inter_key = generate_private_key(key_type)
    inter_cert = root.issue(
        inter_key.public_key(),
        common_name_dn("PL Intermediate"),
        profile=PROFILES["intermediate"],  # pathlen 0: it may sign leaves only
        validity=timedelta(days=365),
        now=NOW,
    ).certificate
    inter = CertificateAuthority(inter_cert, inter_key, (root.certificate,))
    purpose = "client" if profile == "client" else "server"
    # The positive twin: a leaf straight under the intermediate verifies.
    leaf = _leaf(inter, profile=profile, cn="alice", sans=sans, key_type=key_type)
    result = verify_certificate(
        leaf, trust=[root.certificate], untrusted=[inter_cert], purpose=purpose, now=NOW
    )
    assert result.chain == (leaf, inter_cert, root.certificate)
    rogue_cert, rogue = _ca_below(inter, "Rogue CA", key_type)
    leaf = _leaf(rogue, profile=profile, cn="alice", sans=sans, key_type=key_type)
    with pytest.raises(
        VerificationFailed,
        match=r"path length constraint exceeded \(1 CA below CN=PL Intermediate, which allows 0\)",
    ):
        verify_certificate(
            leaf,
            trust=[root.certificate],
            untrusted=[rogue_cert, inter_cert],
            purpose=purpose,
            now=NOW,
        )


def test_wrong_hostname_lists_at_most_eight_names(root_ca: CertificateAuthority) -> None:
    names = [f"n{i}.example.com" for i in range(10)]
    leaf = _leaf(root_ca, sans=SubjectAltNames.parse(dns=names))
    shown = ", ".join(f"DNS:{n}" for n in names[:8])
    with pytest.raises(VerificationFailed) as info:
        verify_certificate(leaf, trust=[root_ca.certificate], hostname="other.example", now=NOW)
    assert info.value.detail == (
        f"verification failed: other.example is not in the certificate's SANs "
        f"(it has {shown} and 2 more)"
    )


def test_issuer_chain_follows_signatures_whatever_the_order(
    root_ca: CertificateAuthority, intermediate_ca: CertificateAuthority
) -> None:
    from certctl.pki import issuer_chain

    inter, root = intermediate_ca.certificate, root_ca.certificate
    other = _root("Other").certificate
    impostor = _root("Test Root CA").certificate  # the root's name, another key
    assert issuer_chain(inter, [other, root]) == ((root,), (other,))
    assert issuer_chain(inter, [impostor, root]) == ((root,), (impostor,))
    assert issuer_chain(inter, [impostor]) == ((), (impostor,))
    assert issuer_chain(root, [inter]) == ((), (inter,))  # a root has nothing above it
    assert issuer_chain(inter, []) == ((), ())


def test_self_signed_ca_true_server_certificate_trusted_as_itself() -> None:
    # What `openssl req -x509 -addext subjectAltName=…` makes: CA:TRUE, a SAN, no EKU.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "self.example")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("self.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    result = verify_certificate(cert, trust=[cert], hostname="self.example", now=NOW)
    assert result.chain == (cert,)
    with pytest.raises(
        VerificationFailed, match=r"other\.example is not in the certificate.s SANs"
    ):
        verify_certificate(cert, trust=[cert], hostname="other.example", now=NOW)
    with pytest.raises(VerificationFailed, match="expired"):
        verify_certificate(cert, trust=[cert], now=NOW + timedelta(days=2))


def _hand_made_leaf(ca: CertificateAuthority, *dns: str) -> x509.Certificate:
    """A server certificate with DNS SANs certctl would not issue (its checks bypassed)."""
    key = generate_private_key(KeyType.EC_P256)
    builder = (
        x509.CertificateBuilder()
        .subject_name(common_name_dn("hand made"))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ca.authority_key_identifier, critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns]), critical=False
        )
    )
    algorithm = None if isinstance(ca.private_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(ca.private_key, algorithm)


@pytest.mark.parametrize("ca_name", ["root_ca", "ed_root"])  # cryptography's path, the own
def test_a_wildcard_over_a_top_level_domain_matches_nothing(
    request: pytest.FixtureRequest, ca_name: str
) -> None:
    # openssl verify -verify_hostname (and so curl, Python's ssl, nginx as a client) and
    # browsers match '*.' only with two labels after it; both of certctl's paths matched
    # '*.com' with foo.com, and the certificate verified, named by its first SAN.
    ca: CertificateAuthority = request.getfixturevalue(ca_name)
    cert = _hand_made_leaf(ca, "*.com", "www.example.com")
    message = (
        "verification failed: foo.com matches only the wildcard *.com, which clients refuse "
        "(a wildcard needs two labels after '*.')"
    )
    with pytest.raises(VerificationFailed, match=f"^{re.escape(message)}$"):
        verify_certificate(cert, trust=[ca.certificate], hostname="foo.com", now=NOW)
    # Another SAN still matches; none given, the first one that can is checked.
    verify_certificate(cert, trust=[ca.certificate], hostname="www.example.com", now=NOW)
    assert verify_certificate(cert, trust=[ca.certificate], now=NOW).name == "www.example.com"
    only = _hand_made_leaf(ca, "*.com")
    with pytest.raises(VerificationFailed, match=r"wildcard \*\.com, which clients refuse"):
        verify_certificate(only, trust=[ca.certificate], now=NOW)


def _root_without_key_usage() -> CertificateAuthority:
    """A root as `openssl req -x509` makes it: no keyUsage, a web-PKI rule it breaks."""
    key = generate_private_key(KeyType.EC_P256)
    cert = (
        x509.CertificateBuilder()
        .subject_name(common_name_dn("Tutorial Root"))
        .issuer_name(common_name_dn("Tutorial Root"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=500))
        .not_valid_after(NOW + timedelta(days=500))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


@pytest.mark.parametrize("root_kind", ["ec", "ed25519", "without keyUsage"])
@pytest.mark.parametrize("expired_first", [True, False])
def test_a_renewed_intermediate_beside_its_expired_self_completes_the_path(
    request: pytest.FixtureRequest, root_kind: str, expired_first: bool
) -> None:
    # An intermediate renewed with the same key, both in the bundle (as after a renewal):
    # openssl verify picks the one in its window. For Ed25519 certctl failed either way:
    # the own path check took the first by name (expired), and with the renewed one first
    # cryptography's last word was the expired one's, so the own check was not even tried;
    # so too under a root without keyUsage, the renewed one first.
    if root_kind == "without keyUsage":
        root = _root_without_key_usage()
    else:
        root = request.getfixturevalue("ed_root" if root_kind == "ed25519" else "root_ca")
    key_type = KeyType.ED25519 if root_kind == "ed25519" else KeyType.EC_P256
    key = generate_private_key(key_type)

    def intermediate(start: timedelta, end: timedelta) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(common_name_dn("Renewed Intermediate"))
            .issuer_name(root.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW + start)
            .not_valid_after(NOW + end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(PROFILES["ca"].key_usage(key.public_key()), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(root.authority_key_identifier, critical=False)
            .sign(root.private_key, root.signature_hash)
        )

    expired = intermediate(timedelta(days=-400), timedelta(days=-30))
    renewed = intermediate(timedelta(days=-29), timedelta(days=300))
    leaf = _leaf(CertificateAuthority(renewed, key, (root.certificate,)), key_type=key_type)
    bundle = [expired, renewed] if expired_first else [renewed, expired]
    result = verify_certificate(leaf, trust=[root.certificate], untrusted=bundle, now=NOW)
    assert result.chain == (leaf, renewed, root.certificate)


@pytest.mark.parametrize("ca_name", ["root_ca", "ed_root"])
def test_a_san_that_is_no_dns_name_is_not_the_one_checked(
    request: pytest.FixtureRequest, ca_name: str
) -> None:
    # Without --hostname the first SAN is checked; one that is no DNS name at all (made
    # by hand, "b\x1b]0;t") was handed to cryptography, whose ValueError "invalid domain
    # name" became certctl's "internal error".
    ca: CertificateAuthority = request.getfixturevalue(ca_name)
    cert = _hand_made_leaf(ca, "b\x1b]0;t", "www.example.com")
    assert verify_certificate(cert, trust=[ca.certificate], now=NOW).name == "www.example.com"
    only = _hand_made_leaf(ca, "a b.example")
    message = (
        "verification failed: server certificate has no DNS or IP SAN a client could match "
        "(it has DNS:a b.example)"
    )
    with pytest.raises(VerificationFailed, match=f"^{re.escape(message)}$"):
        verify_certificate(only, trust=[ca.certificate], now=NOW)


def _any_eku_root_and_leaf() -> tuple[x509.Certificate, x509.Certificate]:
    """A root whose extendedKeyUsage is anyExtendedKeyUsage alone, and a server leaf under it."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    root_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    name = common_name_dn("Any EKU Root")
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(common_name_dn("www.example.com"))
        .issuer_name(name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=10))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("www.example.com")]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    return root, leaf


def test_a_ca_with_any_extended_key_usage_passes_unless_checked_as_openssl() -> None:
    """Managed services keep Go's reading (anyExtendedKeyUsage allows every purpose);
    ``certctl verify`` answers as openssl, for which it allows no TLS purpose on a CA.
    """
    root, leaf = _any_eku_root_and_leaf()
    assert verify_certificate(leaf, trust=[root], now=NOW).chain == (leaf, root)
    with pytest.raises(VerificationFailed, match="limits the certificates below it to any"):
        verify_certificate(leaf, trust=[root], now=NOW, any_eku_in_cas=False)
