"""Certificate authorities and issuance: roots, intermediates and leaves."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import AuthorityInformationAccessOID, PublicKeyAlgorithmOID

from certctl.errors import InvalidRequest
from certctl.pki.chain_links import is_self_signed
from certctl.pki.constraints import (
    any_usage_warning,
    check_extended_key_usage,
    check_name_constraints,
    name_constraints_of,
)
from certctl.pki.dns_names import validate_dns_name
from certctl.pki.keys import check_public_key, signature_hash_for
from certctl.pki.profiles import PROFILES, Profile
from certctl.pki.subject_alt_names import SubjectAltNames
from certctl.pki.template import (
    Extension,
    SigningTemplate,
    encode_extension,
    spki_of,
    subject_key_identifier,
)
from certctl.pki.validity import format_days, format_duration

__all__ = [
    "BACKDATE",
    "CertificateAuthority",
    "IssuedCertificate",
    "KeyMismatch",
    "NameHint",
    "create_root_ca",
    "keys_match",
]

# Clocks drift; a certificate valid "from now" fails on a peer a few seconds behind.
BACKDATE = timedelta(minutes=5)
LEAF_WARN_BELOW = timedelta(days=60)
CA_WARN_BELOW = timedelta(days=90)


class KeyMismatch(InvalidRequest):
    """The CA private key is not the one of the CA certificate.

    Its own type so a caller loading a *stored* CA can tell the store's fault (a certificate
    changed in the database) from what an import refuses as the request's.
    """


@dataclass(frozen=True)
class IssuedCertificate:
    """A freshly signed certificate plus any warnings raised while issuing it."""

    certificate: x509.Certificate
    warnings: tuple[str, ...] = ()
    # The SANs and subject the certificate carries, when the issuer knows them: reading
    # them back from a fresh certificate parses its extensions and name again.
    sans: SubjectAltNames | None = None
    subject: x509.Name | None = None


@dataclass(frozen=True)
class NameHint:
    """How the caller's user adds a DNS or IP SAN, ending the common-name warning.

    The rule is one (in ``CertificateAuthority.issue``); the way to fix it differs: a CLI
    flag, an API field, the CSR. ``{name}`` stands for the common name.
    """

    dns: str
    ip: str


GENERIC_HINT = NameHint("add it to the DNS names", "add it to the IP addresses")


def keys_match(
    private_key: CertificateIssuerPrivateKeyTypes, certificate: x509.Certificate
) -> bool:
    """True when ``certificate`` holds the public half of ``private_key``."""
    return private_key.public_key() == certificate.public_key()


@dataclass
class CertificateAuthority:
    """An issuing CA: its certificate, its private key (loaded once) and the chain above it.

    ``chain`` lists the certificates above this CA, nearest first, ending with the root;
    it is empty for a root.
    """

    certificate: x509.Certificate
    private_key: CertificateIssuerPrivateKeyTypes
    chain: tuple[x509.Certificate, ...] = ()
    authority_key_identifier: x509.AuthorityKeyIdentifier = field(init=False, repr=False)
    signature_hash: hashes.SHA256 | hashes.SHA384 | None = field(init=False, repr=False)
    # What its keyUsage lets it sign (RFC 5280 4.2.1.3); no keyUsage at all allows both.
    may_sign_certificates: bool = field(init=False, repr=False)
    may_sign_crls: bool = field(init=False, repr=False)
    _encoded_extensions: dict[
        tuple[Profile, bool], tuple[tuple[Extension, ...], tuple[Extension, ...]]
    ] = field(init=False, repr=False, compare=False, default_factory=dict)
    # (kind, URLs) -> their cRLDistributionPoints ("crl") or authorityInfoAccess ("aia")
    # extension, encoded once (a server has one set per issuer).
    _encoded_url_extensions: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Extension] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        check_public_key(self.certificate.public_key())
        if self.certificate.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:
            # Such a key may make RSA-PSS signatures only (RFC 4055 1.2); certctl signs with
            # PKCS#1 v1.5, and openssl then finds no issuer for what it signed.
            raise InvalidRequest(
                "CA key is an RSA-PSS key (id-RSASSA-PSS), which certctl cannot sign with: "
                "use an RSA (rsaEncryption), EC or Ed25519 CA key"
            )
        if not keys_match(self.private_key, self.certificate):
            raise KeyMismatch("CA private key does not match the CA certificate")
        try:
            constraints = self.certificate.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value
        except x509.ExtensionNotFound:
            raise InvalidRequest("CA certificate has no BasicConstraints extension") from None
        if not constraints.ca:
            raise InvalidRequest("certificate is not a CA (BasicConstraints CA:FALSE)")
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            self.authority_key_identifier = (
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
            )
        except x509.ExtensionNotFound:
            self.authority_key_identifier = x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.private_key.public_key()
            )
        self.signature_hash = signature_hash_for(self.private_key)
        try:
            usage = self.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            self.may_sign_certificates = self.may_sign_crls = True
        else:
            self.may_sign_certificates = usage.key_cert_sign
            self.may_sign_crls = usage.crl_sign

    def check_can_sign(self, now: datetime, *, crls: bool) -> None:
        """Refuse to sign what no relying party accepts: a usage the CA lacks, or expired.

        Signed all the same, a certificate would fail everywhere (openssl error 32), a CRL
        too (openssl: "key usage does not include CRL signing").

        Raises:
            InvalidRequest: naming the missing keyCertSign / cRLSign, or the expiry.
        """
        allowed, usage, what = (
            (self.may_sign_crls, "cRLSign", "CRLs")
            if crls
            else (self.may_sign_certificates, "keyCertSign", "certificates")
        )
        if not allowed:
            raise InvalidRequest(
                f"{self.certificate.subject.rfc4514_string()}: the CA's keyUsage lacks "
                f"{usage}, so no client accepts {what} it signs"
            )
        end = self.certificate.not_valid_after_utc
        if end <= now:
            raise InvalidRequest(f"issuing CA expired on {end:%Y-%m-%d %H:%M}Z")

    @functools.cached_property
    def root_pem(self) -> bytes:
        """PEM of :attr:`root`, encoded once (batch issuance writes it per certificate)."""
        return self.root.public_bytes(serialization.Encoding.PEM)

    @functools.cached_property
    def chain_below_root_pem(self) -> bytes:
        """PEM of :attr:`chain_below_root`, encoded once."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain_below_root)

    @property
    def root(self) -> x509.Certificate:
        """The trust anchor at the top of this CA's chain."""
        return self.chain[-1] if self.chain else self.certificate

    @functools.cached_property
    def chain_below_root(self) -> tuple[x509.Certificate, ...]:
        """This CA and every intermediate above it, excluding the root (what servers send).

        A top that is not self-signed (an intermediate imported without the CAs above it)
        is no root: it is sent too, or a client trusting the real root, which certctl was
        not given, has no way to it (openssl: unable to get local issuer certificate).
        """
        path = (self.certificate, *self.chain)
        return path[:-1] if is_self_signed(path[-1]) else path

    def issue(
        self,
        public_key: CertificatePublicKeyTypes,
        subject: x509.Name,
        *,
        profile: Profile,
        validity: timedelta,
        now: datetime,
        sans: SubjectAltNames | None = None,
        crl_urls: Sequence[str] = (),
        ca_issuers_urls: Sequence[str] = (),
        ocsp_urls: Sequence[str] = (),
        name_hint: NameHint | None = GENERIC_HINT,
        spki_der: bytes | None = None,
    ) -> IssuedCertificate:
        """Sign a certificate for ``public_key``; the profile decides every extension.

        Args:
            public_key: the subject's key; refused if below policy.
            subject: the subject DN (may be empty when SANs are present).
            profile: ``server``, ``client``, ``server+client``, ``intermediate`` or ``ca``.
            validity: requested lifetime; clipped to the issuer's notAfter, with a warning when
                the lifetimes differ in days to a tenth (or the unit ``format_days`` picks).
            now: the issuing time (aware UTC), passed in so callers control the clock.
            sans: subject alternative names; ignored for CA profiles.
            crl_urls: where clients fetch this issuer's CRL (checked by the caller with
                ``distribution.check_certificate_url``): a non-critical cRLDistributionPoints
                extension with one distribution point naming them, after the SANs. None:
                no extension.
            ca_issuers_urls: where clients fetch this issuer's certificate (DER), checked as
                ``crl_urls``: a non-critical authorityInfoAccess extension with one caIssuers
                access description per URL, after the cRLDistributionPoints. None: no
                extension.
            ocsp_urls: where clients ask this issuer's OCSP responder, checked as
                ``crl_urls``: one id-ad-ocsp access description each in the same
                authorityInfoAccess, before the caIssuers ones (as public CAs order them).
            name_hint: how to add the common name to the SANs, for the warning given when
                a server certificate's host-name CN is among none of them. None: the names
                were not chosen in this call (a renewal repeats its predecessor's and takes
                none), so neither that warning nor the one about a server certificate
                naming no host is given: they were when the names were chosen, and their
                advice cannot be followed here.
            spki_der: ``public_key``'s SubjectPublicKeyInfo DER, when the caller has it (the
                blocked-key check hashed it): encoding it again costs ~4 µs an issuance.

        Raises:
            WeakKey: the key is below policy.
            InvalidRequest: the issuer is expired, or the certificate would name nothing.
        """
        check_public_key(public_key)
        warnings: list[str] = []
        self.check_can_sign(now, crls=False)
        issuer_end = self.certificate.not_valid_after_utc
        not_before = now - BACKDATE
        not_after = now + validity
        clipped = not_after > issuer_end
        if clipped:
            not_after = issuer_end
            granted, asked = format_days(issuer_end - now), format_days(validity)
            # Both lifetimes in days: "5Y clipped to <date>" left the reader to work out
            # what the certificate got instead. A clip too small to show in that unit (a
            # 5Y intermediate under a 5Y CA made a minute before) is no news: it read
            # "1825 days instead of 1825 days" on the most ordinary setup.
            if granted != asked:
                warnings.append(
                    f"validity {format_duration(validity)} clipped to the issuer's notAfter "
                    f"{issuer_end:%Y-%m-%dT%H:%M:%SZ}: {granted} instead of {asked}"
                )
        floor = CA_WARN_BELOW if profile.is_ca else LEAF_WARN_BELOW
        if not_after - now < floor:
            kind = "CA" if profile.is_ca else "certificate"
            # Clipped, the lifetime is no longer the one asked for in its unit, and read
            # "719h58m is under 60 days": then in days, as the clipping warning says it.
            lifetime = (
                format_days(not_after - now)
                if clipped
                else format_duration(_to_minutes(not_after - now))
            )
            warnings.append(
                f"{kind} lifetime {lifetime} is under {floor.days} days; plan its renewal"
            )
        sans = sans if (sans and profile.allows_sans) else SubjectAltNames()
        if profile.is_server and not sans:
            sans = _sans_from_common_name(subject)
            if not sans and name_hint is not None:
                # Issued all the same (a CSR may be meant for something else), but no TLS
                # client will match it to a host: say so where the caller will see it.
                warnings.append(
                    "server certificate without a DNS or IP name: TLS clients match hosts "
                    "against SANs only, and the common name is not a host name"
                )
        elif (
            profile.is_server
            and name_hint is not None
            and (left_out := _cn_left_out(subject, sans, name_hint))
        ):
            warnings.append(left_out)
        if profile.allows_sans:
            sans = _with_subject_emails(subject, sans)
        if not profile.is_ca and not subject and not sans:
            raise InvalidRequest("certificate needs a subject or at least one SAN")
        if profile.is_ca and not subject:
            raise InvalidRequest("a CA certificate needs a subject")
        if self._name_constraints:
            check_name_constraints(self._name_constraints, subject, sans)
        if self._has_extended_key_usage and not profile.is_ca:
            above = (self.certificate, *self.chain)
            check_extended_key_usage(above, profile.extended_key_usage)
            if (any_usage := any_usage_warning(above, profile.extended_key_usage)) is not None:
                warnings.append(any_usage)
        if profile.is_ca:
            # RFC 5280 4.2.1.9: a CA with pathLen N may be followed by at most N CAs.
            parent_len = self._path_length()
            if parent_len == 0:
                raise InvalidRequest("the issuer's path length is 0: it cannot sign CAs")
            if parent_len is not None and (
                profile.path_length is None or profile.path_length >= parent_len
            ):
                wanted = "unlimited" if profile.path_length is None else profile.path_length
                raise InvalidRequest(
                    f"path length {wanted} must be below the issuer's {parent_len}"
                )
        template = self._template
        if template is not None:
            spki = spki_of(public_key) if spki_der is None else spki_der
            head, tail = self._profile_extensions(profile, isinstance(public_key, rsa.RSAPublicKey))
            extensions = [*head, subject_key_identifier(spki), *tail]
            if sans:
                # RFC 5280 4.2.1.6: critical when the subject is empty.
                extensions.append(encode_extension(sans.to_extension(), critical=not subject))
            if crl_urls:
                extensions.append(self._url_extension("crl", tuple(crl_urls)))
            if ca_issuers_urls or ocsp_urls:
                extensions.append(
                    self._url_extension("aia", tuple(ca_issuers_urls), tuple(ocsp_urls))
                )
            certificate = template.sign(
                subject_der=subject.public_bytes(),
                spki_der=spki,
                serial=x509.random_serial_number(),
                not_before=not_before,
                not_after=not_after,
                extensions=extensions,
            )
            return IssuedCertificate(certificate, tuple(warnings), sans, subject)
        builder = _base_builder(public_key, subject, profile, not_before, not_after)
        builder = builder.issuer_name(self.certificate.subject).add_extension(
            self.authority_key_identifier, critical=False
        )
        if sans:
            builder = builder.add_extension(sans.to_extension(), critical=not subject)
        if crl_urls:
            builder = builder.add_extension(_distribution_points(crl_urls), critical=False)
        if ca_issuers_urls or ocsp_urls:
            builder = builder.add_extension(
                _authority_information_access(ca_issuers_urls, ocsp_urls), critical=False
            )
        certificate = builder.sign(self.private_key, self.signature_hash)
        return IssuedCertificate(certificate, tuple(warnings), sans, subject)

    @functools.cached_property
    def _name_constraints(self) -> tuple[x509.NameConstraints, ...]:
        # Its own and those above it: a verifier applies every CA's on the path.
        return name_constraints_of((self.certificate, *self.chain))

    @functools.cached_property
    def _has_extended_key_usage(self) -> bool:
        # Most CAs carry none; those that do bind the usages of what they sign (see below).
        return any(
            isinstance(e.value, x509.ExtendedKeyUsage)
            for c in (self.certificate, *self.chain)
            for e in c.extensions
        )

    @functools.cached_property
    def _template(self) -> SigningTemplate | None:
        # Built on the first issuance, not in __init__: most CAs a process loads only verify.
        return SigningTemplate.for_ca(
            self.certificate, self.private_key, self.signature_hash, self.authority_key_identifier
        )

    def _profile_extensions(
        self, profile: Profile, rsa_key: bool
    ) -> tuple[tuple[Extension, ...], tuple[Extension, ...]]:
        """The extensions around the SKI, in ``_base_builder``'s order, encoded once.

        (basicConstraints, keyUsage) and (extendedKeyUsage, authorityKeyIdentifier).
        """
        cached = self._encoded_extensions.get((profile, rsa_key))
        if cached is not None:
            return cached
        head = (
            encode_extension(
                x509.BasicConstraints(ca=profile.is_ca, path_length=profile.path_length),
                critical=True,
            ),
            encode_extension(profile.key_usage_for(rsa_key=rsa_key), critical=True),
        )
        tail = []
        if profile.extended_key_usage:
            eku = x509.ExtendedKeyUsage(list(profile.extended_key_usage))
            tail.append(encode_extension(eku, critical=False))
        tail.append(encode_extension(self.authority_key_identifier, critical=False))
        encoded = self._encoded_extensions[profile, rsa_key] = (head, tuple(tail))
        return encoded

    def _url_extension(
        self, kind: Literal["crl", "aia"], urls: tuple[str, ...], ocsp: tuple[str, ...] = ()
    ) -> Extension:
        # Keyed by every URL it holds: a changed public-url or ocsp.enabled gets its own.
        cached = self._encoded_url_extensions.get((kind, urls, ocsp))
        if cached is None:
            value = (
                _distribution_points(urls)
                if kind == "crl"
                else _authority_information_access(urls, ocsp)
            )
            cached = self._encoded_url_extensions[kind, urls, ocsp] = encode_extension(
                value, critical=False
            )
        return cached

    def _path_length(self) -> int | None:
        constraints = self.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        return constraints.value.path_length


def _distribution_points(urls: Sequence[str]) -> x509.CRLDistributionPoints:
    # One distribution point, every URL a fullName of it (RFC 5280 4.2.1.13: names of the
    # same CRL); no reasons, no cRLIssuer: the issuer's full CRL.
    names = [x509.UniformResourceIdentifier(url) for url in urls]
    return x509.CRLDistributionPoints([x509.DistributionPoint(names, None, None, None)])


def _authority_information_access(
    urls: Sequence[str], ocsp_urls: Sequence[str] = ()
) -> x509.AuthorityInformationAccess:
    # RFC 5280 4.2.2.1: id-ad-ocsp only with ocsp.enabled (a URI nobody answers makes clients
    # that try it wait, then soft-fail), first, then caIssuers, as public CAs order them.
    return x509.AuthorityInformationAccess(
        [
            *(
                x509.AccessDescription(
                    AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url)
                )
                for url in ocsp_urls
            ),
            *(
                x509.AccessDescription(
                    AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(url)
                )
                for url in urls
            ),
        ]
    )


def _to_minutes(lifetime: timedelta) -> timedelta:
    # A lifetime clipped to the issuer ends on its whole second while `now` has microseconds:
    # "30D" reads better than "719h59m58s488442us". Under a minute, whole seconds (a 4 s test
    # certificate read "1s"); never rounded down to nothing.
    unit = timedelta(minutes=1) if lifetime >= timedelta(minutes=1) else timedelta(seconds=1)
    return max(unit * round(lifetime / unit), timedelta(seconds=1))


def _sans_from_common_name(subject: x509.Name) -> SubjectAltNames:
    # Modern TLS clients ignore the CN; a server certificate with a host-like CN
    # and no SANs gets that CN as its DNS SAN, as trustme and certutil do. An address
    # (`openssl req -subj /CN=10.0.0.5`, `--cn ::1`) becomes the IP SAN clients match
    # it against: as a DNS name it is refused, which left the certificate nameless.
    cns = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not cns or not isinstance(cns[0].value, str):
        return SubjectAltNames()
    try:
        return SubjectAltNames.parse(ip=[cns[0].value])
    except InvalidRequest:
        pass
    try:
        return SubjectAltNames(dns=(validate_dns_name(cns[0].value),))
    except InvalidRequest:
        return SubjectAltNames()


def _cn_left_out(subject: x509.Name, sans: SubjectAltNames, hint: NameHint) -> str | None:
    """A warning when the CN is a host name (or address) that no DNS/IP SAN covers.

    Any SAN (an e-mail or URI one too) keeps the CN out of the DNS names, and TLS clients
    match SANs only (RFC 6125 6.4.4, CA/B BR 7.1.4.3): ``--cn api.example.com --uri
    spiffe://…`` made a certificate no client accepts for api.example.com, without a word.
    Issued all the same: the caller may mean it (a CN kept for display).
    """
    cns = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not cns or not isinstance(cns[0].value, str):
        return None
    cn = cns[0].value
    if cn in sans.dns or cn.lower() in sans.dns:
        return None  # the usual case, first: 1 µs, not 8 (an issuance's path)
    try:
        address = ipaddress.ip_address(cn)
    except ValueError:
        pass
    else:
        if address in sans.ip:
            return None
        return _left_out_message(cn, "IP addresses", hint.ip)
    if "." not in cn and cn.lower() != "localhost":
        return None  # "node-1" beside --dns node-1.example.com: a label, not the host
    try:
        host = validate_dns_name(cn)
    except InvalidRequest:
        return None  # "Web frontend v2.1": not a host name at all
    if any(_dns_covers(name, host) for name in sans.dns):
        return None
    return _left_out_message(cn, "DNS names", hint.dns)


def _dns_covers(san: str, host: str) -> bool:
    # Both in A-label form from validate_dns_name; a wildcard covers one whole left-most
    # label (RFC 6125 6.4.3), so *.example.com covers api.example.com but not a.b.example.com.
    if san.lower() == host.lower():
        return True
    if not san.startswith("*."):
        return False
    label, _, rest = host.partition(".")
    return bool(label) and label != "*" and rest.lower() == san[2:].lower()


def _left_out_message(cn: str, kind: str, fix: str) -> str:
    return (
        f"common name {cn} is not among the certificate's {kind}: clients will not accept "
        f"it for that name; {fix.format(name=cn)}"
    )


def _with_subject_emails(subject: x509.Name, sans: SubjectAltNames) -> SubjectAltNames:
    # RFC 5280 4.1.2.6: an e-mail address MUST be an rfc822Name SAN; the subject's
    # emailAddress (what `openssl req` asks for) is only a legacy copy. pkilint reports one
    # missing from the SANs as an ERROR, and S/MIME clients look for it there only.
    attributes = subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)
    if not attributes:
        return sans
    emails = list(sans.email)
    for attribute in attributes:
        try:
            address = SubjectAltNames.parse(email=[str(attribute.value)]).email[0]
        except InvalidRequest:
            continue  # not an address a SAN can hold: left as the CSR had it
        if address not in emails:
            emails.append(address)
    return dataclasses.replace(sans, email=tuple(emails))


def _base_builder(
    public_key: CertificatePublicKeyTypes,
    subject: x509.Name,
    profile: Profile,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        # RFC 5280 4.1.2.2: positive, at most 20 octets; 159 random bits.
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=profile.is_ca, path_length=profile.path_length),
            critical=True,
        )
        .add_extension(profile.key_usage(public_key), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if profile.extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(profile.extended_key_usage)), critical=False
        )
    return builder


def create_root_ca(
    private_key: CertificateIssuerPrivateKeyTypes,
    subject: x509.Name,
    *,
    validity: timedelta,
    now: datetime,
    path_length: int | None = None,
) -> IssuedCertificate:
    """Create a self-signed root CA certificate for ``private_key``.

    ``path_length`` limits how many intermediates may follow (None: unlimited).

    Raises:
        WeakKey: the key is below policy.
        InvalidRequest: the subject is empty.
    """
    public_key = private_key.public_key()
    check_public_key(public_key)
    if not subject:
        raise InvalidRequest("a CA certificate needs a subject")
    profile = PROFILES["ca"]
    if path_length is not None:
        profile = profile.with_path_length(path_length)
    warnings = []
    if validity < CA_WARN_BELOW:
        warnings.append(
            f"CA lifetime {format_duration(validity)} is under {CA_WARN_BELOW.days} days; "
            "plan its renewal"
        )
    builder = _base_builder(public_key, subject, profile, now - BACKDATE, now + validity)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = builder.issuer_name(subject).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
    )
    certificate = builder.sign(private_key, signature_hash_for(private_key))
    return IssuedCertificate(certificate, tuple(warnings))
