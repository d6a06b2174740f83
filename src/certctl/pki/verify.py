"""Chain, name, purpose and validity verification on top of ``cryptography.x509.verification``."""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, PublicKeyAlgorithmOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certctl.errors import InvalidRequest
from certctl.pki.constraints import check_name_constraints, name_constraints_of, subject_emails
from certctl.pki.names import SubjectAltNames, display_dn, names_match, validate_dns_name

__all__ = [
    "IssuerNotFound",
    "VerificationFailed",
    "VerifiedChain",
    "WrongPurpose",
    "asserts_ca",
    "eku_name",
    "is_self_signed",
    "issuer_chain",
    "oid_name",
    "parse_hostname",
    "verify_certificate",
]


class VerificationFailed(InvalidRequest):
    """The certificate does not verify against the trust bundle for the purpose asked."""


class IssuerNotFound(VerificationFailed):
    """The path breaks off: an issuer is neither in the trust bundle nor an intermediate given.

    Typed so that a caller reading the certificates from a user's files can say where each
    goes (``certctl verify``: --untrusted or after the leaf, a root in --ca).
    """


class _IssuerAbsent(str):
    """``_missing_link``'s reason when it is an issuer found nowhere (-> ``IssuerNotFound``)."""

    __slots__ = ()


class WrongPurpose(VerificationFailed):
    """The leaf's extendedKeyUsage excludes the purpose asked.

    ``suits`` is the other TLS purpose (``server`` or ``client``) it names, if any: a caller
    can then say which purpose to check it for instead.
    """

    def __init__(self, detail: str, suits: str | None) -> None:
        super().__init__(detail)
        self.suits = suits


@dataclass(frozen=True)
class VerifiedChain:
    """The path that verified, leaf first, and what was checked."""

    chain: tuple[x509.Certificate, ...]
    purpose: str
    name: str | None


def verify_certificate(
    leaf: x509.Certificate,
    *,
    trust: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate] = (),
    hostname: str | None = None,
    purpose: str = "server",
    now: datetime,
    any_eku_in_cas: bool = True,
) -> VerifiedChain:
    """Verify ``leaf`` chains to ``trust`` for ``purpose`` at time ``now``.

    Args:
        leaf: the end-entity certificate.
        trust: trust anchors (root CA certificates).
        untrusted: intermediates that may complete the path.
        hostname: DNS name or IP address the server certificate must match; when omitted for
            a server certificate, its first SAN is used so chain and purpose are still checked.
        purpose: ``server`` (serverAuth) or ``client`` (clientAuth).
        now: the verification time.
        any_eku_in_cas: a CA listing anyExtendedKeyUsage allows ``purpose`` (Go, and
            cryptography's verifier); False: it does not, as in OpenSSL's purpose check
            (``certctl verify``, which answers as openssl verify does).

    Raises:
        VerificationFailed: the chain, the name, the purpose or the validity window fails.
        InvalidRequest: the trust bundle is empty or the purpose is unknown.
    """
    if not trust:
        raise InvalidRequest("trust bundle holds no certificate")
    if purpose not in ("server", "client"):
        raise InvalidRequest(f"{purpose}: unknown purpose (server or client)")
    _check_window(leaf, now)
    trust = _anchors(leaf, trust)
    # Before the name: a client certificate checked as a server one would otherwise be
    # refused for its missing SAN, which is not what is wrong with it.
    _check_purpose(leaf, purpose)
    builder = PolicyBuilder().store(Store(list(trust))).time(now)
    subject = None
    if purpose == "server":
        subject = parse_hostname(hostname) if hostname is not None else None
        if subject is None:
            subject = _subject_for(_first_san(leaf))
    name = None if subject is None else str(subject.value)

    def verify(intermediates: Sequence[x509.Certificate]) -> VerifiedChain:
        if subject is None:
            verified = builder.build_client_verifier().verify(leaf, list(intermediates))
            if not any_eku_in_cas:  # cryptography's verifier lets anyExtendedKeyUsage through
                _check_ca_purposes(verified.chain[1:], purpose, any_eku_in_cas=False)
            _check_subject_emails(verified.chain)
            _check_path_strength(verified.chain)
            return VerifiedChain(tuple(verified.chain), purpose, None)
        chain = builder.build_server_verifier(subject).verify(leaf, list(intermediates))
        if not _name_matches(leaf, subject):
            raise _not_in_sans(leaf, str(name))  # matched only by a wildcard clients refuse
        if not any_eku_in_cas:  # cryptography's verifier lets anyExtendedKeyUsage through
            _check_ca_purposes(chain[1:], purpose, any_eku_in_cas=False)
        _check_subject_emails(chain)
        _check_path_strength(chain)
        return VerifiedChain(tuple(chain), purpose, name)

    # Copies of one certificate (a bundle concatenated twice) are one candidate: each is
    # otherwise checked again below, signature by signature.
    untrusted = list(dict.fromkeys(untrusted))
    try:
        return verify(untrusted)
    except VerificationError as first:
        exc = first
        if "candidates exhausted" in str(exc) and len(untrusted) > 1:
            preferred = _preferred_intermediates(leaf, trust, untrusted, now)
            if preferred is not None and preferred != untrusted:
                # cryptography tells why its last candidate failed, maybe an expired
                # intermediate beside its renewed self, while what decides below is why the
                # path openssl would take fails (a CA without keyUsage, say): asked again
                # with that path.
                try:
                    return verify(preferred)
                except VerificationError as again:
                    exc = again
        message = str(exc)
        # Its last word may be another candidate's ("not valid at validation time" for an
        # expired intermediate beside its renewed self): a path by names and signatures
        # holding an Ed25519 key is one it cannot verify, whatever it said.
        eddsa = ("Forbidden public key algorithm" in message and "Ed25519" in message) or (
            "candidates exhausted" in message and _eddsa_path(leaf, [*untrusted, *trust])
        )
        # The web policy allows RSASSA-PSS only with a salt as long as the digest, and no
        # key of the RSASSA-PSS type; openssl signs with the longest salt by default, and
        # OpenSSL verifies any. Its refusal was printed as Rust debug text.
        rsa_pss = "Forbidden signature algorithm" in message or (
            "Forbidden public key algorithm" in message and "RsaPss" in message
        )
        # 2.5.29.17 = subjectAltName. Client certificates commonly carry only a CN, and
        # OpenSSL/nginx accept them; cryptography's client policy insists on a SAN.
        client_without_san = purpose == "client" and "2.5.29.17" in message
        # `openssl req -x509` marks the self-signed certificate it makes CA:TRUE (its
        # v3_ca section); trusted as itself, openssl, curl and Python accept it as a server
        # certificate. cryptography refuses a CA as an end entity.
        trusted_self = leaf in trust and "cA must not be asserted in an EE" in message
        if "no matching subjectAltName" in message:
            raise _not_in_sans(leaf, str(name)) from exc
        if "leaf server certificate has no subjectAltName" in message:
            # As without --hostname: say what the certificate is (a CA given as CERT?).
            raise VerificationFailed(f"verification failed: {_no_host_name(leaf)}") from exc
        web_only = _WEB_PKI_ONLY.search(message) or _CONSTRAINT_FORMS.search(message)
        if eddsa or rsa_pss or client_without_san or trusted_self or web_only:
            # cryptography's verifier follows the CA/B Forum web policy, which forbids EdDSA
            # (RFC 8410 allows it for private PKIs) and most RSASSA-PSS parameters. It also
            # wants keyUsage on every CA, an authorityKeyIdentifier on every leaf and a
            # critical basicConstraints, which RFC 5280 path validation (openssl, Java, Go)
            # does not: `openssl req -x509` makes a CA without keyUsage. It knows no
            # directoryName or URI name constraints, nor the ".corp.example" form of a DNS
            # one that OpenSSL and Windows write. These cases take a plain RFC 5280 path.
            return _verify_rfc5280(leaf, trust, untrusted, hostname, purpose, now, any_eku_in_cas)
        if _UNNAMED_FAILURE.search(message):
            # cryptography names the rule broken, not the certificate, CA or name that broke
            # it; the own path check names them. Should it find nothing, cryptography's
            # refusal stands.
            try:
                _verify_rfc5280(leaf, trust, untrusted, hostname, purpose, now, any_eku_in_cas)
            except VerificationFailed as own:
                raise own from exc
        raise _path_failure(_missing_link(leaf, trust, untrusted, now), _reason(exc)) from exc


# Rules of the web policy only (named by cryptography as "invalid extension: <oid>: ..."):
# keyUsage, subjectKeyIdentifier or authorityKeyIdentifier missing, basicConstraints not
# critical. RFC 5280 path validation checks keyUsage only when present (6.1.4 (n)).
_WEB_PKI_ONLY = re.compile(
    r"invalid extension: 2\.5\.29\.(?:1[45]|35): Certificate is missing required extension"
    r"|invalid extension: 2\.5\.29\.19: Certificate extension has incorrect criticality"
)
# Name constraints cryptography's verifier cannot evaluate, which OpenSSL does: any chain
# under such a CA was refused, inside the constraints or not.
_CONSTRAINT_FORMS = re.compile(r"malformed DNS name constraint: |unsupported name constraint type")
_UNNAMED_FAILURE = re.compile(
    r"Neither EKU nor anyEKU could be found|name constraint matched SAN"
    r"|path length constraint violated|RSA key is too weak"
)
_EKU_FOR = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}


def oid_name(oid: x509.ObjectIdentifier) -> str:
    """The name pyca/cryptography knows ``oid`` by (mostly openssl's), else the dotted OID."""
    name = getattr(oid, "_name", "Unknown OID")
    return oid.dotted_string if name == "Unknown OID" else str(name)


def eku_name(oid: x509.ObjectIdentifier) -> str:
    """An extended key usage as openssl's short names spell it (``serverAuth``), else dotted."""
    if oid == ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE:
        return "anyExtendedKeyUsage"  # cryptography names it "Unknown OID"
    return oid_name(oid)


def parse_hostname(text: str) -> x509.DNSName | x509.IPAddress:
    """The name a server certificate must match, from a user's ``--hostname``.

    An IP address (IPv6 maybe in brackets) or a DNS name, IDNA-encoded and lower-cased as
    certificates hold it (``ünï.example`` matches a SAN ``xn--n-nga1b.example``).

    Raises:
        InvalidRequest: empty, a wildcard, or neither an IP address nor a valid DNS name.
    """
    raw = text.strip()
    if not raw:
        raise InvalidRequest("the host name is empty")
    try:
        return x509.IPAddress(ipaddress.ip_address(raw.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    if "*" in raw:
        raise InvalidRequest(f"{text!r}: give a host name, not a wildcard pattern")
    try:
        return x509.DNSName(validate_dns_name(raw, allow_wildcard=False))
    except InvalidRequest:
        raise InvalidRequest(
            f"{text!r}: not an IP address or a valid DNS name (dot-separated labels of "
            "letters, digits and '-', not starting or ending with '-')"
        ) from None


def _anchors(leaf: x509.Certificate, trust: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The certificates of ``trust`` that may anchor a path, as openssl decides.

    cryptography trusts any certificate in its store, so a leaf given as its own trust
    bundle verified; openssl refuses it (error 20). A CA (basicConstraints CA:TRUE, or an
    old v1 self-signed root, which has no extensions at all) anchors a path; so does a
    self-signed leaf that is itself in the bundle (ca.crt = tls.crt for a self-signed server).
    """
    anchors = [c for c in trust if _may_issue(c) or (c == leaf and is_self_signed(c))]
    if not anchors:
        raise VerificationFailed(
            "verification failed: the trust bundle holds no CA certificate "
            f"({display_dn(trust[0].subject)} is not a CA: no basicConstraints CA:TRUE)"
        )
    return anchors


def _may_issue(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return cert.version is x509.Version.v1 and is_self_signed(cert)


def asserts_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` carries basicConstraints cA=TRUE (no keyUsage check: see _is_ca)."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def is_self_signed(cert: x509.Certificate) -> bool:
    """Whether ``cert`` names itself as issuer and its own key signed it (a trust anchor)."""
    return cert.issuer == cert.subject and _signs(cert, cert)


def issuer_chain(
    cert: x509.Certificate, others: Sequence[x509.Certificate]
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    """The certificates of ``others`` above ``cert``, nearest first, and those left over.

    Followed by name and signature up to a self-signed root, whatever order ``others`` came
    in: bundles often list the root first, and taken as given the root landed among the
    intermediates of every tls.crt and an intermediate became the CA clients trust.

    Returns:
        (chain, left_over): the issuers in order, and the certificates of ``others`` that
        are not in the chain (unrelated, or above a link that is missing).
    """
    chain: list[x509.Certificate] = []
    pool = list(others)
    current = cert
    while current.issuer != current.subject:  # up to a self-signed root, if given
        parent = next((c for c in pool if c.subject == current.issuer and _signs(c, current)), None)
        if parent is None:
            break
        pool.remove(parent)
        chain.append(parent)
        current = parent
    return tuple(chain), tuple(pool)


def _signs(parent: x509.Certificate, child: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    except UnsupportedAlgorithm as exc:
        # A key on a curve cryptography lacks (prime239v1, a binary curve): the signature
        # cannot be checked at all. Before, "internal error (UnsupportedAlgorithm: …)".
        raise VerificationFailed(
            f"verification failed: cannot check the signature on "
            f"{display_dn(child.subject)}: the key of {display_dn(parent.subject)} "
            f"is not supported ({exc})"
        ) from exc
    return True


def _check_purpose(leaf: x509.Certificate, purpose: str) -> None:
    """Refuse a certificate whose extended or plain key usage excludes ``purpose``.

    No extendedKeyUsage allows any purpose, no keyUsage any use of the key (_check_key_usage).
    anyExtendedKeyUsage alone does not do: openssl (-purpose sslserver/sslclient) and
    cryptography's verifier both refuse it for TLS.
    """
    try:
        ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        ekus = None
    if ekus is not None and _EKU_FOR[purpose] not in ekus:
        names = ", ".join(eku_name(oid) for oid in ekus) or "none"
        suits = next((other for other, eku in _EKU_FOR.items() if eku in ekus), None)
        raise WrongPurpose(
            f"verification failed: certificate lacks the {purpose}Auth extended key usage "
            f"(it has {names})",
            suits,
        )
    _check_key_usage(leaf, purpose)


# The keyUsage bits a TLS server or client key needs one of, as OpenSSL's purpose checks
# (check_purpose_ssl_server/_client) take them: signing (ECDHE), or RSA key transport or
# static (EC)DH for a server; signing or key agreement for a client.
_TLS_KEY_USAGES = {
    "server": ("digital_signature", "key_encipherment", "key_agreement"),
    "client": ("digital_signature", "key_agreement"),
}
_KEY_USAGE_NAMES = {
    "digital_signature": "digitalSignature",
    "content_commitment": "nonRepudiation",
    "key_encipherment": "keyEncipherment",
    "data_encipherment": "dataEncipherment",
    "key_agreement": "keyAgreement",
    "key_cert_sign": "keyCertSign",
    "crl_sign": "cRLSign",
}


def _check_key_usage(leaf: x509.Certificate, purpose: str) -> None:
    """Refuse a leaf whose keyUsage allows none of the uses TLS makes of its key.

    cryptography's verifier does not look at it; OpenSSL (openssl verify -purpose, and so
    nginx, curl and Python's ssl) refuses such a certificate: "unsuitable certificate
    purpose". No keyUsage at all allows every use (RFC 5280 4.2.1.3).
    """
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    needed = _TLS_KEY_USAGES[purpose]
    if any(getattr(usage, attr) for attr in needed):
        return
    held = ", ".join(name for attr, name in _KEY_USAGE_NAMES.items() if getattr(usage, attr))
    names = [_KEY_USAGE_NAMES[attr] for attr in needed]
    raise VerificationFailed(
        f"verification failed: certificate's keyUsage {held or 'none'} allows no TLS {purpose} "
        f"use (it needs {', '.join(names[:-1])} or {names[-1]})"
    )


def _verify_rfc5280(
    leaf: x509.Certificate,
    trust: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
    hostname: str | None,
    purpose: str,
    now: datetime,
    any_eku_in_cas: bool = True,
) -> VerifiedChain:
    """A minimal RFC 5280 path check: signatures, CA constraints, windows, EKU, name."""
    name = None
    if purpose == "server":
        subject = parse_hostname(hostname) if hostname is not None else None
        if subject is None:
            subject = _subject_for(_first_san(leaf))
        name = str(subject.value)
        if not _name_matches(leaf, subject):
            raise _not_in_sans(leaf, name)
    _check_critical_extensions(leaf, "certificate")
    chain = [leaf]
    pool = list(untrusted)
    current = leaf
    for _ in range(8):
        if current in trust and is_self_signed(current):
            _check_path_strength(chain)
            return VerifiedChain(tuple(chain), purpose, name)  # trusted as it is
        for anchor in trust:
            if _issued_by(current, anchor):
                _check_path_strength((*chain, anchor))
                _check_window(anchor, now, _anchor_name(anchor))
                _check_critical_extensions(anchor, _anchor_name(anchor))
                _check_path_lengths((*chain, anchor))
                _check_ca_purposes((*chain[1:], anchor), purpose, any_eku_in_cas=any_eku_in_cas)
                _check_name_constraints((*chain, anchor))
                return VerifiedChain((*chain, anchor), purpose, name)
        parents = [c for c in pool if _issued_by(current, c) and _is_ca(c)]
        # One in its window first, as openssl picks: a renewed intermediate beside the old.
        parents.sort(key=lambda c: _window_problem(c, now) is not None)
        parent = parents[0] if parents else None
        if parent is None:
            break
        _check_window(parent, now, _intermediate_name(parent))
        _check_critical_extensions(parent, _intermediate_name(parent))
        pool.remove(parent)
        chain.append(parent)
        current = parent
    raise _path_failure(
        _missing_link(leaf, trust, untrusted, now), "no path to a trusted certificate"
    )


def _path_failure(missing: str | None, otherwise: str) -> VerificationFailed:
    """The failure for a path that did not verify: ``missing`` (``_missing_link``'s) first."""
    if isinstance(missing, _IssuerAbsent):
        return IssuerNotFound(f"verification failed: {missing}")
    return VerificationFailed(
        f"verification failed: {missing if missing is not None else otherwise}"
    )


def _preferred_intermediates(
    leaf: x509.Certificate,
    trust: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
    now: datetime,
) -> list[x509.Certificate] | None:
    """The intermediates of the path from ``leaf`` to ``trust`` openssl would build.

    By issuer name and signature, a certificate in its validity window first; None when
    the names and signatures reach no trust anchor.
    """
    path: list[x509.Certificate] = []
    pool = list(untrusted)
    current = leaf
    for _ in range(8):
        if any(_same_encoding(c.subject, current.issuer) and _signs(c, current) for c in trust):
            return path
        parents = [c for c in pool if _same_encoding(c.subject, current.issuer)]
        parents = [c for c in parents if _signs(c, current)]
        if not parents:
            return None
        parents.sort(key=lambda c: _window_problem(c, now) is not None)
        path.append(parents[0])
        pool.remove(parents[0])
        current = parents[0]
    return None


def _eddsa_path(leaf: x509.Certificate, others: Sequence[x509.Certificate]) -> bool:
    """Whether ``leaf`` or a certificate above it (by name and signature) has an Ed25519 key."""
    try:
        path = (leaf, *issuer_chain(leaf, others)[0])
    except VerificationFailed:  # a signature that cannot be checked: reported below
        path = (leaf,)
    # By the key's algorithm identifier: loading a key of an unsupported curve would raise.
    return any(c.public_key_algorithm_oid == PublicKeyAlgorithmOID.ED25519 for c in path)


def _check_path_lengths(chain: Sequence[x509.Certificate]) -> None:
    """Refuse a path (leaf first) with more CAs below one than its pathLenConstraint allows.

    RFC 5280 4.2.1.9 and 6.1.4 (l), (m): self-issued intermediates do not count. openssl
    holds the trust anchor to its constraint too (error 25), and so does this.
    """
    below = 0  # CA certificates between the one looked at and the leaf
    for cert in chain[1:]:  # each passed _is_ca: it has basicConstraints
        limit = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        if limit is not None and below > limit:
            raise VerificationFailed(
                f"verification failed: path length constraint exceeded ({below} "
                f"CA{'s' if below > 1 else ''} below {display_dn(cert.subject)}, "
                f"which allows {limit})"
            )
        if cert.issuer != cert.subject:
            below += 1


# The extensions OpenSSL's path validation handles (X509_supported_extension): a critical
# one of any other kind fails it, "unhandled critical extension" (RFC 5280 4.2).
_HANDLED_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.POLICY_CONSTRAINTS,
        ExtensionOID.POLICY_MAPPINGS,
        ExtensionOID.INHIBIT_ANY_POLICY,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.OCSP_NO_CHECK,
        x509.ObjectIdentifier("2.16.840.1.113730.1.1"),  # Netscape cert type
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.7"),  # RFC 3779 IP address blocks
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.8"),  # RFC 3779 AS identifiers
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"),  # proxyCertInfo
    }
)


def _check_critical_extensions(cert: x509.Certificate, what: str) -> None:
    """Refuse a certificate with a critical extension path validation does not handle."""
    unknown = [
        e.oid.dotted_string
        for e in cert.extensions
        if e.critical and e.oid not in _HANDLED_EXTENSIONS
    ]
    if unknown:
        kind = (
            "an unknown critical extension" if len(unknown) == 1 else "unknown critical extensions"
        )
        raise VerificationFailed(
            f"verification failed: {what} has {kind} ({', '.join(unknown)}), which verifiers "
            "must refuse"
        )


def _check_ca_purposes(
    cas: Sequence[x509.Certificate], purpose: str, *, any_eku_in_cas: bool
) -> None:
    """Refuse a path through a CA whose extendedKeyUsage leaves out ``purpose``.

    RFC 5280 does not chain EKUs, but OpenSSL ("unsuitable certificate purpose", the trust
    anchor included), cryptography's verifier, Go and Windows do. anyExtendedKeyUsage lets
    every purpose through with ``any_eku_in_cas``, as in Go and cryptography's verifier;
    without, it does not, as in OpenSSL's check (its XKU_ANYEKU is outside the sslserver
    and sslclient masks), which nginx and curl apply.
    """
    wanted = _EKU_FOR[purpose]
    for ca in cas:
        try:
            usages = ca.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        any_eku = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages
        if wanted in usages or (any_eku and any_eku_in_cas):
            continue
        names = ", ".join(eku_name(oid) for oid in usages) or "none"
        note = ""
        if any_eku:
            note = " (anyExtendedKeyUsage stands for no TLS purpose in openssl's check of a CA)"
        raise VerificationFailed(
            f"verification failed: CA {display_dn(ca.subject)} limits the certificates "
            f"below it to {names}, not {purpose}Auth{note}"
        )


def _check_name_constraints(chain: Sequence[x509.Certificate]) -> None:
    """Hold each certificate of a path (leaf first) to the name constraints of the CAs above.

    RFC 5280 6.1.3 (b), (c) and 6.1.4 (g), as OpenSSL checks them: the subject and SANs of
    every certificate below a constrained CA, self-issued intermediates excepted, an
    emailAddress attribute of a subject, and a host-like common name of the leaf when it
    has no DNS SAN.
    """
    for index, ca in enumerate(chain[1:], start=1):
        constraints = name_constraints_of([ca])
        if not constraints:
            continue
        for depth, cert in enumerate(chain[:index]):
            if depth and cert.issuer == cert.subject:
                continue
            try:
                ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                sans = SubjectAltNames.from_extension(ext.value)
            except x509.ExtensionNotFound:
                sans = SubjectAltNames()
            try:
                check_name_constraints(
                    constraints,
                    cert.subject,
                    sans,
                    holder=ca.subject,
                    common_name_as_host=not depth,
                )
            except InvalidRequest as exc:
                raise VerificationFailed(f"verification failed: {exc.detail}") from None


def _check_subject_emails(chain: Sequence[x509.Certificate]) -> None:
    """Hold the names of a path cryptography's verifier accepted to OpenSSL's constraints.

    Its verifier does not hold an emailAddress attribute of a subject to a CA's e-mail
    constraints; OpenSSL does ("permitted subtree violation"). Only a path with such an
    attribute is checked again, so every other verdict stays cryptography's.
    """
    if any(subject_emails(cert.subject) for cert in chain[:-1]):
        _check_name_constraints(chain)


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject or not _is_ca(parent):
        return False
    return _signs(parent, child)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return constraints.ca  # RFC 5280 6.1.4 (n): keyCertSign is checked only if present
    return constraints.ca and usage.key_cert_sign


def _name_matches(leaf: x509.Certificate, wanted: x509.DNSName | x509.IPAddress) -> bool:
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if isinstance(wanted, x509.IPAddress):
        return wanted.value in sans.get_values_for_type(x509.IPAddress)
    host = wanted.value
    for pattern in sans.get_values_for_type(x509.DNSName):
        pattern = pattern.lower()
        if pattern == host or (_wildcard_matches(pattern, host) and _specific_enough(pattern)):
            return True
    return False


def _wildcard_matches(pattern: str, host: str) -> bool:
    # RFC 6125 6.4.3: '*' matches exactly one whole left-most label.
    return pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]


def _specific_enough(pattern: str) -> bool:
    # Two labels after '*.', as OpenSSL (X509_check_host), curl and browsers want and
    # certctl issues: '*.com' stands for every host of a top-level domain, matched by none.
    return "." in pattern[2:]


def _not_in_sans(leaf: x509.Certificate, name: str) -> VerificationFailed:
    """The name a server certificate does not match, with the names it does hold.

    cryptography says only "leaf certificate has no matching subjectAltName": neither the
    name checked (IDNA-encoded, as compared) nor what the certificate was made for.
    """
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    broad = next(
        (
            p
            for p in sans.get_values_for_type(x509.DNSName)
            if _wildcard_matches(p.lower(), name) and not _specific_enough(p)
        ),
        None,
    )
    if broad is not None:
        return VerificationFailed(
            f"verification failed: {name} matches only the wildcard {broad}, which clients "
            "refuse (a wildcard needs two labels after '*.')"
        )
    held = [f"DNS:{v}" for v in sans.get_values_for_type(x509.DNSName)]
    held += [f"IP:{v}" for v in sans.get_values_for_type(x509.IPAddress)]
    shown = ", ".join(held[:_SHOWN_SANS]) or "none for a host"
    if len(held) > _SHOWN_SANS:
        shown += f" and {len(held) - _SHOWN_SANS} more"
    return VerificationFailed(
        f"verification failed: {name} is not in the certificate's SANs (it has {shown})"
    )


_SHOWN_SANS = 8


def _check_window(cert: x509.Certificate, now: datetime, what: str = "certificate") -> None:
    problem = _window_problem(cert, now)
    if problem is not None:
        # Prefixed as every other failure: the leaf's own window once lacked it.
        raise VerificationFailed(f"verification failed: {what} {problem}")


def _anchor_name(cert: x509.Certificate) -> str:
    return f"CA {display_dn(cert.subject)} in the trust bundle"


def _intermediate_name(cert: x509.Certificate) -> str:
    return f"intermediate CA {display_dn(cert.subject)}"


def _window_problem(cert: x509.Certificate, now: datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"is not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    return None


def _first_san(leaf: x509.Certificate) -> str:
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise VerificationFailed(f"verification failed: {_no_host_name(leaf)}") from None
    names = [
        value.value.replace("*.", "wildcard.", 1)
        if isinstance(value, x509.DNSName)
        else str(value.value)
        for value in ext
        if isinstance(value, x509.DNSName | x509.IPAddress)
    ]
    if not names:
        raise VerificationFailed("verification failed: server certificate has no DNS or IP SAN")
    # One that is a host name at all (a hand-made "a b.example" is not; cryptography's
    # verifier raised ValueError for it), and that a client can match: '*.com' matches
    # nothing, so a name after it is checked.
    checkable = [n for n in names if _is_host_name(n)]
    if not checkable:
        held = [f"DNS:{v}" for v in ext.get_values_for_type(x509.DNSName)]
        raise VerificationFailed(
            "verification failed: server certificate has no DNS or IP SAN a client could "
            f"match (it has {', '.join(held[:_SHOWN_SANS])})"
        )
    wide = (n for n in checkable if not n.startswith("wildcard.") or "." in n[9:])
    return next(wide, checkable[0])


def _is_host_name(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        try:
            validate_dns_name(name, allow_wildcard=False)
        except InvalidRequest:
            return False
    return True


def _no_host_name(leaf: x509.Certificate) -> str:
    """Why a certificate without SANs is no server certificate, in the user's terms."""
    # An empty subject (`openssl req -subj /`) would leave a gap where the name goes.
    subject = display_dn(leaf.subject) or "with an empty subject"
    if asserts_ca(leaf):
        # A ca.crt given as CERT: "no SubjectAlternativeName" sent users looking for SANs.
        return f"the certificate {subject} is a CA certificate, not a server certificate"
    return (
        f"server certificate {subject} has no subjectAltName: TLS clients match host "
        "names against its DNS and IP SANs only"
    )


def _subject_for(name: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name.lower().rstrip("."))


def _missing_link(
    leaf: x509.Certificate,
    trust: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
    now: datetime,
) -> str | None:
    """Where the path from ``leaf`` breaks off, by issuer name and signature, if it does.

    cryptography reports only "candidates exhausted"; the usual causes are a wrong trust
    bundle, a missing intermediate or a CA out of its validity window, and this names the
    certificate that is not there (or is there under its name but with another key, as
    after a CA was created anew), or the CA that expired. None when the names and
    signatures do reach the trust bundle (then a constraint failed).
    """
    current = leaf
    pool = list(untrusted)
    for _ in range(8):
        issuer = display_dn(current.issuer)
        subject = display_dn(current.subject)
        named = [c for c in trust if _same_encoding(c.subject, current.issuer)]
        if named:
            signers = [c for c in named if _signs(c, current)]
            if not signers:
                reasons = (_weakly_signed(c, current) for c in named)
                found = next((reason for reason in reasons if reason is not None), None)
                if found is not None:
                    return found
                return (
                    f"{issuer} in the trust bundle did not sign {subject} (a CA of the same "
                    "name with another key: is the trust bundle out of date?)"
                )
            problems = [_window_problem(c, now) for c in signers]
            # Any anchor in its window may complete the path (a renewed root beside the old).
            if None in problems:
                return None
            return f"{_anchor_name(signers[0])} {problems[0]}"
        named = [c for c in pool if _same_encoding(c.subject, current.issuer)]
        # One that signed and is in its window first: a renewed intermediate beside the old.
        usable = (c for c in named if _signs(c, current) and _window_problem(c, now) is None)
        parent = next(usable, named[0] if named else None)
        if parent is None:
            folded = _folded_issuer(current, trust, pool)
            if folded is not None:
                return folded
            return _IssuerAbsent(
                f"{issuer}, the issuer of {subject}, is neither in the trust bundle nor among "
                "the intermediates"
            )
        if not _signs(parent, current):
            weak = _weakly_signed(parent, current)
            if weak is not None:
                return weak
            return f"intermediate {issuer} did not sign {subject} (another key, same name)"
        problem = _window_problem(parent, now)
        if problem is not None:
            return f"{_intermediate_name(parent)} {problem}"
        pool.remove(parent)
        current = parent
    return None


# OpenSSL's security level 2 (112-bit security), the default of Debian's build and so of
# nginx, curl and Python's ssl there (OPENSSL_TLS_SECURITY_LEVEL=2 in `openssl version -a`).
# cryptography's verifier already refuses a CA key below it, though not a leaf's.
_MIN_KEY_BITS: tuple[tuple[type[object], str, int], ...] = (
    (rsa.RSAPublicKey, "RSA", 2048),
    (dsa.DSAPublicKey, "DSA", 2048),
    (ec.EllipticCurvePublicKey, "EC", 224),
)
# Digests OpenSSL 3 refuses in a signature from security level 1 on (SHA-1 counts as less
# than 80 bits since 3.0); a trust anchor's signature on itself is not checked.
_WEAK_DIGESTS = {"sha1": "SHA-1", "md5": "MD5"}


def _check_path_strength(chain: Sequence[x509.Certificate]) -> None:
    """Refuse a path (leaf first, anchor last) holding a key or digest TLS clients refuse.

    Plain ``openssl verify`` checks no security level; ``-auth_level 2`` and every TLS
    client at Debian's default level refuse "CA certificate key too weak" (error 67),
    "EE certificate key too weak" (66) and "CA signature digest algorithm too weak" (68).
    certctl's own path check looked at no key size, and cryptography checks an RSASSA-PSS
    signature over SHA-1 (not a PKCS#1 one: see _weakly_signed), so such a path verified.
    """
    for child, parent in itertools.pairwise(chain):
        weak = _weak_digest(child)
        if weak is not None:
            raise VerificationFailed(f"verification failed: {_weak_message(parent, child, weak)}")
    for depth, cert in enumerate(chain):
        subject = display_dn(cert.subject)
        if not depth:
            what = f"certificate {subject}"
        elif depth == len(chain) - 1:
            what = _anchor_name(cert)
        else:
            what = _intermediate_name(cert)
        try:
            key = cert.public_key()
        except (UnsupportedAlgorithm, ValueError):
            continue  # a key cryptography cannot load fails where its signature is checked
        for kind, label, bits in _MIN_KEY_BITS:
            size = getattr(key, "key_size", None)
            if isinstance(key, kind) and isinstance(size, int) and size < bits:
                raise VerificationFailed(
                    f"verification failed: {what} has a {size}-bit {label} key, which TLS "
                    "clients refuse at OpenSSL security level 2 (Debian's default; openssl "
                    f"verify -auth_level 2): {label} keys need {bits} bits"
                )


def _weakly_signed(parent: x509.Certificate, child: x509.Certificate) -> str | None:
    """Why ``parent`` is no issuer of ``child`` if it signed it with a weak digest, or None.

    cryptography will not check a SHA-1 or MD5 signature ("Unsupported signature
    algorithm"), so such a CA passed for "another key, same name"; OpenSSL 3 refuses it
    ("CA signature digest algorithm too weak", error 68) from security level 1 on.
    """
    weak = _weak_digest(child)
    if weak is None:
        return None
    algorithm = child.signature_hash_algorithm
    assert algorithm is not None  # _weak_digest named one
    key = parent.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pad = child.signature_algorithm_parameters
            if not isinstance(pad, padding.PSS | padding.PKCS1v15):
                return None
            key.verify(child.signature, child.tbs_certificate_bytes, pad, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, algorithm)
        else:
            return None
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return None
    return _weak_message(parent, child, weak)


def _weak_digest(cert: x509.Certificate) -> str | None:
    """The weak digest ``cert`` is signed with (``SHA-1``, ``SHA-1 (RSASSA-PSS)``), or None."""
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algorithm is None or algorithm.name not in _WEAK_DIGESTS:
        return None
    pss = cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
    return _WEAK_DIGESTS[algorithm.name] + (" (RSASSA-PSS)" if pss else "")


def _weak_message(parent: x509.Certificate, child: x509.Certificate, digest: str) -> str:
    return (
        f"CA {display_dn(parent.subject)} signed {display_dn(child.subject)} with "
        f"{digest}, which OpenSSL 3 refuses from security level 1 on "
        "(openssl verify -auth_level 1): reissue it with SHA-256"
    )


def _same_encoding(a: x509.Name, b: x509.Name) -> bool:
    # As cryptography's verifier and verify_directly_issued_by compare issuer names: as
    # encoded. ``x509.Name ==`` ignores the string type, and then a CA named in a
    # PrintableString passed for the issuer of a certificate naming it in a UTF8String,
    # and its refusal was put down to "another key".
    return a.public_bytes() == b.public_bytes()


def _folded_issuer(
    cert: x509.Certificate,
    trust: Sequence[x509.Certificate],
    pool: Sequence[x509.Certificate],
) -> str | None:
    """Why a CA whose name matches ``cert``'s issuer only when folded is no issuer, or None.

    openssl compares names after folding case, spacing and string type (RFC 5280 7.1) and
    accepts such a chain; cryptography's verifier finds issuers by the name as encoded and
    has no option to fold, so certctl refuses it and says so, instead of calling the CA
    missing (it is there).
    """
    for certs, where in ((trust, "in the trust bundle"), (pool, "among the intermediates")):
        ca = next((c for c in certs if names_match(c.subject, cert.issuer)), None)
        if ca is not None:
            return (
                f"the issuer name of {display_dn(cert.subject)}, "
                f"{display_dn(cert.issuer)}, differs from {display_dn(ca.subject)} "
                f"{where} only in case, spacing or string type: openssl accepts that "
                "(RFC 5280 7.1), certctl's verifier (pyca/cryptography) does not; reissue "
                "the certificate with the CA's subject as its issuer name"
            )
    return None


def _reason(exc: VerificationError) -> str:
    # Drop cryptography's "(encountered processing <Certificate…>)" tail: noise for users.
    return str(exc).split(" (encountered processing")[0].removeprefix("validation failed: ")
