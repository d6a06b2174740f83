"""Revocation checks of a verified chain against CRLs, as ``openssl verify -crl_check``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from certctl.pki.chain_links import asserts_ca
from certctl.pki.distinguished_names import names_match
from certctl.pki.formats import format_serial
from certctl.pki.purposes import oid_name
from certctl.pki.verdicts import VerificationFailed

__all__ = ["check_revocation"]

_TIME = "%Y-%m-%dT%H:%M:%SZ"
# The critical CRL extensions openssl handles (crl_cb in crypto/x509/x_crl.c); a CRL with
# another one fails its -crl_check ("unhandled critical CRL extension").
_HANDLED_CRITICAL = {
    ExtensionOID.ISSUING_DISTRIBUTION_POINT,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.DELTA_CRL_INDICATOR,
}


def check_revocation(
    chain: Sequence[x509.Certificate],
    crls: Sequence[tuple[str, x509.CertificateRevocationList]],
    *,
    now: datetime,
    check_all: bool = False,
    warn: Callable[[str], None] = lambda _message: None,
    bundled: Sequence[tuple[str, x509.CertificateRevocationList]] = (),
) -> None:
    """Refuse a chain (leaf first, as verified) whose leaf, or any certificate, is revoked.

    As ``openssl verify -crl_check`` (the leaf) and ``-crl_check_all`` (every certificate;
    the trust anchor too when it is self-signed, as openssl 3 does: listed in its own CRL,
    it is revoked). A CRL counts for a certificate only when it names the certificate's
    issuer and that issuer's key signed it; of several, the newest one in its validity
    window is used, as openssl prefers. Each certificate checked needs one. Names match
    as openssl and RFC 5280 7.1 compare them, case and spacing folded (``names_match``).

    Args:
        chain: the verified path, leaf first, up to the trust anchor.
        crls: the CRLs given, each with a label (its file) that messages name it by.
        now: the verification time.
        check_all: check every certificate of the chain, not only the leaf.
        warn: called with a one-line message for each CRL that is not used, before any
            failure is raised (a CRL of another CA, a bad signature, a delta CRL).
        bundled: CRLs that came with the trust bundle, used as ``crls`` are; those of CAs
            that issued no certificate checked are skipped without a warning, as openssl
            skips the CRLs of its -CAfile: a shared bundle holds the CRLs of many CAs.

    Raises:
        VerificationFailed: a checked certificate is revoked, has no usable CRL, or its
            CRL is expired or not yet valid.
    """
    depth = len(chain) if check_all else 1
    checked: list[tuple[x509.Certificate, x509.Certificate]] = []
    for index, cert in enumerate(chain[:depth]):
        if index + 1 < len(chain):
            checked.append((cert, chain[index + 1]))
        elif cert.issuer == cert.subject:
            # A self-signed anchor (or leaf trusted as itself) is its own CRL issuer.
            checked.append((cert, cert))
        # else: an anchor that is not self-signed; its issuer is not here to check a CRL.
    by_issuer: dict[int, list[tuple[str, x509.CertificateRevocationList]]] = {}
    given = [(label, crl, False) for label, crl in crls]
    for label, crl, is_bundled in [*given, *((label, crl, True) for label, crl in bundled)]:
        # By name as openssl compares them (case and spacing folded): its signature decides.
        issuers = [issuer for _, issuer in checked if names_match(issuer.subject, crl.issuer)]
        if not issuers and is_bundled:
            continue  # another CA's, or a CA's of the chain not checked (no --crl-check-all)
        problem = _unusable(crl, issuers[0]) if issuers else _unrelated(crl, chain, check_all)
        if problem is not None:
            warn(f"{label}: CRL ignored: {problem}")
            continue
        by_issuer.setdefault(id(issuers[0]), []).append((label, crl))
    for cert, issuer in checked:
        _check_one(cert, issuer, by_issuer.get(id(issuer), []), now, is_leaf=cert is chain[0])


def _unusable(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> str | None:
    """Why ``crl``, naming ``issuer``, cannot be used (openssl's checks), or None."""
    name = issuer.subject.rfc4514_string()
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.crl_sign:
        # RFC 5280 4.2.1.3: a CA whose keyUsage lacks cRLSign may not sign CRLs.
        return f"its issuer {name} may not sign CRLs (no cRLSign key usage)"
    try:
        valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (UnsupportedAlgorithm, TypeError, ValueError):
        valid = False
    if not valid:
        return f"its signature does not verify with the key of {name} (another CA of that name?)"
    if any(ext.oid == ExtensionOID.DELTA_CRL_INDICATOR for ext in crl.extensions):
        return "a delta CRL, which lists changes only: give the full CRL"
    critical = [e.oid for e in crl.extensions if e.critical and e.oid not in _HANDLED_CRITICAL]
    critical += [
        ext.oid
        for entry in crl
        for ext in entry.extensions
        if ext.critical and ext.oid != CRLEntryExtensionOID.CERTIFICATE_ISSUER
    ]
    if critical:
        return f"it has a critical extension certctl does not handle ({oid_name(critical[0])})"
    return None


def _out_of_scope(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> str | None:
    """Why ``crl``'s issuingDistributionPoint excludes ``cert`` (RFC 5280 5.2.5), or None."""
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return None
    if idp.only_contains_user_certs and asserts_ca(cert):
        return "lists end-entity certificates only"
    if idp.only_contains_ca_certs and not asserts_ca(cert):
        return "lists CA certificates only"
    if idp.only_contains_attribute_certs:
        return "lists attribute certificates only"
    if idp.indirect_crl:
        return "is an indirect CRL, which certctl does not read"
    if idp.only_some_reasons is not None:
        return "lists only some revocation reasons"
    return _other_distribution_point(crl, idp, cert)


def _other_distribution_point(
    crl: x509.CertificateRevocationList,
    idp: x509.IssuingDistributionPoint,
    cert: x509.Certificate,
) -> str | None:
    """Why a CRL for a named distribution point is not the one ``cert`` points to, or None.

    As openssl's crl_crldp_check: a CRL naming its distribution point covers the
    certificates whose cRLDistributionPoints name it (RFC 5280 6.3.3 (b)(2)(i)).
    """
    names = _dp_names(idp.full_name, idp.relative_name, crl.issuer)
    if not names:
        return None
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return "is for a distribution point the certificate does not name"
    for point in points:
        if point.crl_issuer is not None and not any(
            isinstance(n, x509.DirectoryName) and n.value == crl.issuer for n in point.crl_issuer
        ):
            continue
        wanted = _dp_names(point.full_name, point.relative_name, cert.issuer)
        if not wanted or wanted & names:
            return None
    return "is for another distribution point than the certificate's"


def _dp_names(
    full_name: list[x509.GeneralName] | None,
    relative_name: x509.RelativeDistinguishedName | None,
    issuer: x509.Name,
) -> set[x509.GeneralName]:
    # RFC 5280 4.2.1.13: a relative name is appended to the CRL issuer's name.
    if relative_name is not None:
        return {x509.DirectoryName(x509.Name([*issuer.rdns, relative_name]))}
    return set(full_name or ())


def _unrelated(
    crl: x509.CertificateRevocationList, chain: Sequence[x509.Certificate], check_all: bool
) -> str:
    issuer = crl.issuer.rfc4514_string() or "an empty name"
    if not check_all and any(names_match(c.subject, crl.issuer) for c in chain[1:]):
        return f"issued by {issuer}, not the leaf's issuer (--crl-check-all checks CAs too)"
    return f"issued by {issuer}, which issued no certificate of the chain"


def _check_one(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Sequence[tuple[str, x509.CertificateRevocationList]],
    now: datetime,
    *,
    is_leaf: bool,
) -> None:
    subject = cert.subject.rfc4514_string()
    what = "certificate" if is_leaf else "CA certificate"
    scopes = [(label, _out_of_scope(crl, cert)) for label, crl in crls]
    outside = "; ".join(f"{label} {scope}" for label, scope in scopes if scope is not None)
    crls = [item for item, (_, scope) in zip(crls, scopes, strict=True) if scope is None]
    if not crls:
        # openssl: "unable to get certificate CRL", or "different CRL scope".
        raise VerificationFailed(
            f"verification failed: no CRL from {issuer.subject.rfc4514_string()} "
            f"to check the {what} {subject} ({outside or 'give it with --crl'})"
        )
    # openssl prefers a CRL in its validity window, then the newest of those.
    ranked = sorted(crls, key=lambda item: item[1].last_update_utc, reverse=True)
    current = [item for item in ranked if _window_problem(item[1], now) is None]
    if not current:
        label, crl = ranked[0]
        raise VerificationFailed(f"verification failed: {label}: CRL {_window_problem(crl, now)}")
    label, crl = current[0]
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        reason = None
    if reason is x509.ReasonFlags.remove_from_crl:
        return  # RFC 5280 5.3.1: for delta CRLs; openssl takes it as not revoked too
    because = f", reason {reason.value}" if reason is not None else ""
    raise VerificationFailed(
        f"verification failed: {what} {subject} (serial {format_serial(cert.serial_number)}) "
        f"was revoked on {entry.revocation_date_utc:{_TIME}}{because} ({label})"
    )


def _window_problem(crl: x509.CertificateRevocationList, now: datetime) -> str | None:
    if crl.last_update_utc > now:
        return f"is not valid yet: thisUpdate {crl.last_update_utc:{_TIME}}"
    next_update = crl.next_update_utc
    if next_update is not None and next_update < now:
        return f"has expired: nextUpdate {next_update:{_TIME}}"
    return None
