"""``certctl verify``: chain, name, purpose and validity check against a trust bundle."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from certctl.cli._common import utcnow, warn
from certctl.cli._stdin import STDIN_HELP, password_file_option
from certctl.cli.inspect import read_protected

if TYPE_CHECKING:
    from cryptography import x509

    from certctl.pki.formats import Material

__all__ = ["verify_command"]


def verify_command(
    cert: Path = typer.Argument(
        ...,
        metavar="CERT",
        help=(
            "Certificate to verify (PEM, DER, PKCS#7 or PKCS#12; extra certificates count as "
            "intermediates)."
        ),
    ),
    ca: Path = typer.Option(
        ..., "--ca", help="Trust bundle file: root CA certificate(s), e.g. ca/ca.crt."
    ),
    untrusted: Path = typer.Option(None, "--untrusted", help="Intermediate certificates."),
    hostname: str = typer.Option(
        None,
        "--hostname",
        help="DNS name (IDNA-encoded if not ASCII) or IP address the certificate must match.",
    ),
    purpose: str = typer.Option("server", "--purpose", help="server or client."),
    password_file: Path = typer.Option(
        None,
        "--password-file",
        callback=password_file_option,
        help="Password of PKCS#12 inputs (default: $CERTCTL_PASSWORD, then $CERTCTL_CA_PASSWORD)."
        + STDIN_HELP,
    ),
    password: str = typer.Option(
        None, "--password", help="Password on the command line (demos only)."
    ),
    crl: list[Path] = typer.Option(
        [],
        "--crl",
        metavar="FILE",
        help=(
            "CRL file (PEM or DER; a PEM file may hold several), repeatable: the leaf must "
            "not be revoked, and a CRL from its issuer, signed by it and current, is required "
            "(openssl verify -crl_check -CRLfile). CRLs of other issuers are ignored with a "
            "warning (those in the --ca bundle without one). Implies --crl-check."
        ),
    ),
    crl_check: bool = typer.Option(
        False,
        "--crl-check",
        help=(
            "Check the leaf against the CRLs of --crl and those in the --ca bundle (X509 CRL "
            "blocks), as openssl verify -crl_check reads them from its -CAfile. CRLs inside "
            "a PKCS#7 file are not read (a warning says so)."
        ),
    ),
    crl_check_all: bool = typer.Option(
        False,
        "--crl-check-all",
        help=(
            "Check every certificate of the chain, intermediates too, each against a CRL "
            "from its issuer, from --crl or the --ca bundle (openssl verify -crl_check_all)."
        ),
    ),
    at: str = typer.Option(
        None,
        "--at",
        metavar="TIME",
        help=(
            "Verify as at this time instead of now: an ISO 8601 date or time (2027-01-01, "
            "2027-01-01T00:00:00Z; without a zone, UTC). Certificate and CRL validity "
            "windows are judged then (openssl verify -attime)."
        ),
    ),
) -> None:
    """Verify a certificate the way a TLS client or server would.

    As openssl verify -purpose sslserver (or sslclient): the path to --ca (signatures,
    validity, CA flags, path lengths, name constraints, each CA's extended key usage), the
    certificate's extended and plain key usage and, for a server, the host name
    (--hostname, else its first SAN).

    The certificate, --ca and --untrusted may be PEM, DER, PKCS#7 or PKCS#12 files; a PKCS#12
    file is opened with --password-file, --password or else CERTCTL_PASSWORD, then
    CERTCTL_CA_PASSWORD (one password for all of them). Keys in the files are not used.

    With --crl or --crl-check, revocation is checked too: the leaf (or, with
    --crl-check-all, every certificate up to the root) must not be listed in a CRL of its
    issuer, and each needs one that its issuer signed and that is current (thisUpdate
    past, nextUpdate not). The CRLs come from --crl and from the --ca bundle.

    With --at, all of it is judged at that time, not now: whether a certificate will
    still verify on a given day, or did verify when it was used.
    """
    from certctl.errors import InvalidRequest
    from certctl.pki import (
        IssuerNotFound,
        VerificationFailed,
        WrongPurpose,
        asserts_ca,
        check_revocation,
        display_dn,
        parse_hostname,
        verify_certificate,
    )

    if purpose not in ("server", "client"):
        raise typer.BadParameter(f"{purpose}: choose server or client", param_hint="--purpose")
    if hostname is not None:
        # An empty value (a script's unset $HOST) must not turn into "no name check".
        if not hostname.strip():
            raise typer.BadParameter("--hostname is empty")
        if purpose == "client":
            raise typer.BadParameter("--hostname applies to --purpose server")
        try:
            parse_hostname(hostname)
        except InvalidRequest as exc:
            raise typer.BadParameter(exc.detail, param_hint="--hostname") from None
    when = _parse_at(at) if at is not None else None

    def read(path: Path, what: str) -> list[x509.Certificate]:
        return read_all(path, what).certificates

    def read_all(path: Path, what: str) -> Material:
        # A password is for PKCS#12, and a plain key next to the certificates opens without
        # one: keys are not used.
        return read_protected(path, password_file, password, what, optional=True)

    if ca.is_dir() and (ca / "ca.crt").is_file():
        # `cert issue --ca DIR` takes the CA directory; here --ca is the trust bundle file.
        raise InvalidRequest(
            f"{ca} is a CA directory: --ca takes the CA certificate here (--ca {ca / 'ca.crt'})"
        )
    leaf_certs = read(cert, "certificate")
    if not leaf_certs:
        raise InvalidRequest(f"{cert}: holds no certificate")
    if asserts_ca(leaf_certs[0]) and any(not asserts_ca(c) for c in leaf_certs[1:]):
        # A chain file with the CA first: nginx and openssl take the first certificate as the
        # server's, and the checks below would judge the CA as the leaf.
        raise InvalidRequest(
            f"{cert}: the first certificate, {display_dn(leaf_certs[0].subject)}, is a CA "
            "certificate: put the leaf first (then its intermediates), as servers send them"
        )
    bundle = read_all(ca, "CA bundle")
    trust = bundle.certificates
    if not trust:
        raise InvalidRequest(f"{ca}: holds no certificate")
    extra = []
    if untrusted is not None:
        extra = read(untrusted, "intermediates")
        if not extra:  # as for --ca: a key or a CSR given by mistake is no intermediate
            raise InvalidRequest(f"{untrusted}: holds no certificate")
    checking = bool(crl) or crl_check or crl_check_all
    crls = _read_crls(crl)
    bundled = []
    if checking:
        # As openssl's -CAfile: its X509 CRL blocks are CRLs to check with (-crl_check),
        # unused without a check asked for. Before, they were ignored, and a CRL revoking
        # the leaf, kept with the CA certificate, let it verify where openssl refused it.
        bundled = _labelled(ca, bundle.crls)
        # Said, not skipped in silence: a CRL in there revoking the leaf would go unseen.
        unread = f"; {_pkcs7_crls_unread(ca)}" if bundle.format == "pkcs7" else ""
        if not crls and not bundled:
            flag = "--crl-check-all" if crl_check_all else "--crl-check"
            raise typer.BadParameter(
                f"{flag} needs the CRLs to check with (--crl FILE, or X509 CRL blocks in the "
                f"--ca bundle){unread}"
            )
        if unread:
            warn(_pkcs7_crls_unread(ca))
    now = when or utcnow()
    try:
        result = verify_certificate(
            leaf_certs[0],
            trust=trust,
            untrusted=[*leaf_certs[1:], *extra],
            hostname=hostname,
            purpose=purpose,
            now=now,
            any_eku_in_cas=False,  # as openssl verify -purpose ssl*: nginx and curl refuse it
        )
        if checking:
            check_revocation(
                result.chain, crls, now=now, check_all=crl_check_all, warn=warn, bundled=bundled
            )
    except VerificationFailed as exc:
        detail = exc.detail
        if isinstance(exc, WrongPurpose) and exc.suits is not None:
            # --purpose defaults to server: a client certificate checked as it was given
            # failed naming only the usage, and a new user did not know which flag to add.
            detail += f": a {exc.suits} certificate, check it with --purpose {exc.suits}"
        if isinstance(exc, IssuerNotFound):
            # A leaf copied without its intermediate, or the wrong --ca: the message did not
            # say where either goes (openssl: "unable to get local issuer certificate").
            detail += (
                f"; give an intermediate CA with --untrusted FILE (or after the certificate "
                f"in {cert}), a root in --ca"
            )
        if when is not None:
            # As the OK line says it: "expired on" a day still ahead reads wrong without the
            # --at time it was judged at.
            detail += f" (checked at {when:%Y-%m-%dT%H:%M:%SZ})"
        if detail == exc.detail:
            raise
        raise VerificationFailed(detail) from None
    anchor = result.chain[-1]
    if anchor.issuer != anchor.subject and all(c.subject != anchor.issuer for c in trust):
        # cryptography's verifier trusts any certificate of the bundle, as curl and
        # openssl verify -partial_chain do, and Python's ssl since 3.13 (its default context
        # sets VERIFY_X509_PARTIAL_CHAIN); plain openssl verify and older Pythons go on to
        # the root and refuse. An OK alone let a client of those fail after all.
        # A root given elsewhere is only an intermediate to openssl (trusted from -CAfile
        # alone): "without its root" read wrong to whoever had given it.
        where = next(
            (
                given
                for given, certs in (
                    ("with --untrusted", extra),
                    (f"after the certificate in {cert}", leaf_certs[1:]),
                )
                if any(c.subject == anchor.issuer for c in certs)
            ),
            None,
        )
        elsewhere = (
            f", in the trust bundle: given {where}, it counts as an intermediate; put it in --ca"
            if where is not None
            else ""
        )
        warn(
            f"{display_dn(anchor.subject)} in {ca} is an intermediate CA, trusted as it is "
            "(as curl, openssl verify -partial_chain and Python 3.13's ssl do): plain openssl "
            "verify and Python's ssl before 3.13 refuse this chain without its root, "
            f"{display_dn(anchor.issuer)}{elsewhere}"
        )
    path = " <- ".join(display_dn(c.subject) for c in result.chain)
    checked = f" for {result.name}" if hostname else ""
    revocation = ""
    if checking:
        revocation = ", not revoked" if not crl_check_all else ", none revoked"
    # Said when given: an OK for another day must not read as an OK for today.
    moment = f", at {when:%Y-%m-%dT%H:%M:%SZ}" if when is not None else ""
    from certctl.cli._listing import printable  # the subjects are the certificates' text

    typer.echo(printable(f"{cert}: OK ({purpose}{checked}{revocation}{moment}): {path}"))


def _parse_at(value: str) -> datetime:
    """``--at``: an ISO 8601 date or date and time, aware UTC (a naive one is taken as UTC).

    Raises:
        typer.BadParameter: not ISO 8601, or outside the years datetime holds.
    """
    try:
        parsed = datetime.fromisoformat(value.strip())
        # Naive means UTC, as openssl -attime and certificates count time.
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        # OverflowError: an offset that moves 9999-12-31 or 0001-01-01 out of range.
        raise typer.BadParameter(
            f"{value!r}: not an ISO 8601 date or time (2027-01-01, 2027-01-01T00:00:00Z)",
            param_hint="--at",
        ) from None


def _read_crls(paths: list[Path]) -> list[tuple[str, x509.CertificateRevocationList]]:
    """The CRLs of each file, labelled by the file (and their place in it when several)."""
    from certctl.cli._common import read_material
    from certctl.errors import InvalidRequest

    crls = []
    for path in paths:
        try:
            material = read_material(path, None, "CRL")
        except InvalidRequest as exc:
            if "PKCS#7 file holds no certificate" not in exc.detail:
                raise
            raise InvalidRequest(_pkcs7_crls_unread(path)) from exc  # CRLs only, likely
        if material.format == "pkcs7" and not material.crls:
            raise InvalidRequest(_pkcs7_crls_unread(path))
        if material.format == "pkcs7":
            # A PEM file with X509 CRL blocks beside a PKCS7 block: those are read, its not.
            warn(_pkcs7_crls_unread(path))
        if not material.crls:
            raise InvalidRequest(f"{path}: holds no CRL (--crl takes a PEM or DER CRL file)")
        crls += _labelled(path, material.crls)
    return crls


def _pkcs7_crls_unread(path: Path) -> str:
    """That the CRLs of the PKCS#7 file ``path`` are not read, and how to read them.

    cryptography loads only the certificates of a PKCS#7 file (load_*_pkcs7_certificates);
    certctl does not parse the ASN.1 itself. openssl extracts them.
    """
    return (
        f"{path}: certctl does not read the CRLs inside a PKCS#7 file (only its "
        f"certificates): extract them with 'openssl pkcs7 -in {path} -print_certs -out "
        "crls.pem' (with -inform DER for a binary file) and give that with --crl"
    )


def _labelled(
    path: Path, found: list[x509.CertificateRevocationList]
) -> list[tuple[str, x509.CertificateRevocationList]]:
    """``found``, read from ``path``, each named by the file (and its place when several)."""
    return [
        (str(path) if len(found) == 1 else f"{path} (CRL {index} of {len(found)})", item)
        for index, item in enumerate(found, 1)
    ]
