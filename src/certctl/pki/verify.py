"""Verifying a certificate for TLS: pyca/cryptography's verifier, else an RFC 5280 path check."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import PublicKeyAlgorithmOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certctl.errors import InvalidRequest
from certctl.pki.chain_links import (
    check_window,
    is_self_signed,
    issuer_chain,
    same_encoding,
    signs,
    window_problem,
)
from certctl.pki.dn_display import display_dn
from certctl.pki.key_strength import check_path_strength
from certctl.pki.path_breaks import missing_link, path_failure
from certctl.pki.path_validation import check_subject_emails, verify_rfc5280
from certctl.pki.purposes import check_ca_purposes, check_purpose
from certctl.pki.server_names import (
    first_san,
    name_matches,
    no_host_name,
    not_in_sans,
    parse_hostname,
    subject_for,
)
from certctl.pki.verdicts import VerificationFailed, VerifiedChain

__all__ = ["verify_certificate"]


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
    check_window(leaf, now)
    trust = _anchors(leaf, trust)
    # Before the name: a client certificate checked as a server one would otherwise be
    # refused for its missing SAN, which is not what is wrong with it.
    check_purpose(leaf, purpose)
    builder = PolicyBuilder().store(Store(list(trust))).time(now)
    subject = None
    if purpose == "server":
        subject = parse_hostname(hostname) if hostname is not None else None
        if subject is None:
            subject = subject_for(first_san(leaf))
    name = None if subject is None else str(subject.value)

    def verify(intermediates: Sequence[x509.Certificate]) -> VerifiedChain:
        if subject is None:
            verified = builder.build_client_verifier().verify(leaf, list(intermediates))
            if not any_eku_in_cas:  # cryptography's verifier lets anyExtendedKeyUsage through
                check_ca_purposes(verified.chain[1:], purpose, any_eku_in_cas=False)
            check_subject_emails(verified.chain)
            check_path_strength(verified.chain)
            return VerifiedChain(tuple(verified.chain), purpose, None)
        chain = builder.build_server_verifier(subject).verify(leaf, list(intermediates))
        if not name_matches(leaf, subject):
            raise not_in_sans(leaf, str(name))  # matched only by a wildcard clients refuse
        if not any_eku_in_cas:  # cryptography's verifier lets anyExtendedKeyUsage through
            check_ca_purposes(chain[1:], purpose, any_eku_in_cas=False)
        check_subject_emails(chain)
        check_path_strength(chain)
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
            raise not_in_sans(leaf, str(name)) from exc
        if "leaf server certificate has no subjectAltName" in message:
            # As without --hostname: say what the certificate is (a CA given as CERT?).
            raise VerificationFailed(f"verification failed: {no_host_name(leaf)}") from exc
        web_only = _WEB_PKI_ONLY.search(message) or _CONSTRAINT_FORMS.search(message)
        if eddsa or rsa_pss or client_without_san or trusted_self or web_only:
            # cryptography's verifier follows the CA/B Forum web policy, which forbids EdDSA
            # (RFC 8410 allows it for private PKIs) and most RSASSA-PSS parameters. It also
            # wants keyUsage on every CA, an authorityKeyIdentifier on every leaf and a
            # critical basicConstraints, which RFC 5280 path validation (openssl, Java, Go)
            # does not: `openssl req -x509` makes a CA without keyUsage. It knows no
            # directoryName or URI name constraints, nor the ".corp.example" form of a DNS
            # one that OpenSSL and Windows write. These cases take a plain RFC 5280 path.
            return verify_rfc5280(leaf, trust, untrusted, hostname, purpose, now, any_eku_in_cas)
        if _UNNAMED_FAILURE.search(message):
            # cryptography names the rule broken, not the certificate, CA or name that broke
            # it; the own path check names them. Should it find nothing, cryptography's
            # refusal stands.
            try:
                verify_rfc5280(leaf, trust, untrusted, hostname, purpose, now, any_eku_in_cas)
            except VerificationFailed as own:
                raise own from exc
        raise path_failure(missing_link(leaf, trust, untrusted, now), _reason(exc)) from exc


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
        if any(same_encoding(c.subject, current.issuer) and signs(c, current) for c in trust):
            return path
        parents = [c for c in pool if same_encoding(c.subject, current.issuer)]
        parents = [c for c in parents if signs(c, current)]
        if not parents:
            return None
        parents.sort(key=lambda c: window_problem(c, now) is not None)
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


def _reason(exc: VerificationError) -> str:
    # Drop cryptography's "(encountered processing <Certificate…>)" tail: noise for users.
    return str(exc).split(" (encountered processing")[0].removeprefix("validation failed: ")
