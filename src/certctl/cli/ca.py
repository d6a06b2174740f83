"""``certctl ca create|import``: root and intermediate CAs on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

    from certctl.pki.formats import Material

from certctl.cli._common import (
    CA_CERT,
    CA_CHAIN,
    CA_KEY,
    KEY_TYPES_HELP,
    is_stdin,
    not_stdout,
    open_ca_dir,
    option_value,
    read_material,
    read_password,
    utcnow,
    warn,
)
from certctl.cli._stdin import STDIN_HELP, password_file_option

__all__ = ["app"]

app = typer.Typer(help="Create or import certificate authorities.", no_args_is_help=True)

# Shared with `certctl issuers create` (a CA made on the server), where they mean the same.
SUBJECT_OPTION: str = typer.Option(
    None, "--subject", help="Full RFC 4514 subject, e.g. 'CN=Ops CA,O=Example'."
)
# No "(default)" here: Typer shows "[default: ec-p256]" after the help already.
KEY_TYPE_OPTION: str = typer.Option("ec-p256", "--key-type", help=f"Key type: {KEY_TYPES_HELP}.")
# The range the API takes too (profiles.MAX_PATH_LENGTH, not imported: it would load
# cryptography for --help).
_MAX_PATH_LENGTH = 10


def _path_length_in_range(value: int | None) -> int | None:
    # Checked here, not with click's min/max: those append "[0<=x<=10]" to the help, which
    # already says 0-10. Anything else is refused, huge numbers included.
    if value is not None and value < 0:
        raise typer.BadParameter(f"{value}: must be at least 0")
    if value is not None and value > _MAX_PATH_LENGTH:
        raise typer.BadParameter(f"{value}: must be at most {_MAX_PATH_LENGTH}")
    return value


PATH_LENGTH_OPTION: int = typer.Option(
    None,
    "--path-length",
    callback=_path_length_in_range,
    metavar="N",  # not "<int range>"
    help=f"Intermediates below this CA, 0-{_MAX_PATH_LENGTH} "
    "(default: unlimited for a root, 0 for an intermediate).",
)


@app.command("create")
def create(
    out: Path = typer.Option(
        ..., "--out", "-o", callback=not_stdout, help="Directory for ca.crt and ca.key."
    ),
    cn: str = typer.Option(
        None,
        "--cn",
        help="Common name (default: 'certctl Root CA'; with --parent, 'certctl Intermediate CA').",
    ),
    subject: str = SUBJECT_OPTION,
    key_type: str = KEY_TYPE_OPTION,
    validity: str = typer.Option(
        None,
        "--validity",
        help="Lifetime: 5Y, 365D, 8760h … "
        "(default: 5Y; an intermediate at most its parent's remaining life).",
    ),
    parent: Path = typer.Option(
        None, "--parent", help="CA directory that signs this one (makes an intermediate)."
    ),
    path_length: int = PATH_LENGTH_OPTION,
    key_password_file: Path = typer.Option(
        None,
        "--key-password-file",
        callback=password_file_option,
        help="Encrypt ca.key with the password in this file (default: CERTCTL_CA_PASSWORD, "
        "if set)." + STDIN_HELP,
    ),
    parent_password_file: Path = typer.Option(
        None,
        "--parent-password-file",
        callback=password_file_option,
        help="Password of the parent's ca.key (default: $CERTCTL_CA_PASSWORD)." + STDIN_HELP,
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Create a root CA, or an intermediate CA signed by --parent."""
    from certctl.files import OutputSet
    from certctl.pki import (
        PROFILES,
        KeyType,
        certs_to_pem,
        common_name_dn,
        create_root_ca,
        display_dn,
        generate_private_key,
        key_to_pem,
        parse_dn,
        parse_duration,
    )

    if cn is not None and subject is not None:
        raise typer.BadParameter("--cn and --subject exclude each other (put the CN in --subject)")
    if parent_password_file is not None and parent is None:
        raise typer.BadParameter(
            "--parent-password-file needs --parent (a root CA is signed by its own new key)"
        )
    with option_value("--key-type"):
        kt = KeyType.parse(key_type)
    with option_value("--validity"):
        lifetime = parse_duration(validity or "5Y")
    # An empty --cn or --subject is refused by the parsers, not replaced by the default name.
    if subject is not None:
        with option_value("--subject"):
            name = parse_dn(subject)
    elif cn is not None:
        with option_value("--cn"):
            name = common_name_dn(cn)
    else:
        name = common_name_dn("certctl Intermediate CA" if parent else "certctl Root CA")
    # CERTCTL_CA_PASSWORD is what every command that loads a CA reads: a key written
    # unencrypted while it is exported could not be used with it (cert issue refuses a
    # password for an unencrypted key), so it encrypts the new key, as in certctl http.
    key_password = read_password(key_password_file, env="CERTCTL_CA_PASSWORD")
    outputs = OutputSet(force=force)
    # Refuse an existing output before spending time on key generation.
    outputs.add(out / CA_CERT, b"")
    outputs.add(out / CA_KEY, b"", secret=True)
    if parent is None:
        # A root has no chain file: one left by an intermediate this root replaces (--force)
        # would hang that intermediate's parents under every certificate the root issues.
        outputs.remove(out / CA_CHAIN)
    else:
        outputs.add(out / CA_CHAIN, b"")
    outputs.check()
    now = utcnow()
    key = generate_private_key(kt)
    if parent is None:
        issued = create_root_ca(key, name, validity=lifetime, now=now, path_length=path_length)
        chain: tuple[x509.Certificate, ...] = ()
    else:
        parent_ca = open_ca_dir(
            parent,
            parent_password_file,
            option="--parent",
            password_option="--parent-password-file",
        )
        if validity is None:
            # An intermediate cannot outlive its parent; default to what the parent has left.
            lifetime = min(lifetime, parent_ca.certificate.not_valid_after_utc - now)
        profile = PROFILES["intermediate"]
        if path_length is not None:
            profile = profile.with_path_length(path_length)
        issued = parent_ca.issue(
            key.public_key(), name, profile=profile, validity=lifetime, now=now
        )
        chain = (parent_ca.certificate, *parent_ca.chain)
    for message in issued.warnings:
        warn(message)
    outputs.add(out / CA_CERT, certs_to_pem([issued.certificate]))
    outputs.add(out / CA_KEY, key_to_pem(key, key_password), secret=True)
    if chain:
        outputs.add(out / CA_CHAIN, certs_to_pem([issued.certificate, *chain]))
    outputs.commit()
    kind = "intermediate CA" if parent else "root CA"
    typer.echo(f"created {kind} {display_dn(issued.certificate.subject)} in {out}/")
    for path in outputs.paths:
        typer.echo(f"  {path}")
    _echo_removed(outputs.removed)
    if key_password is not None:
        typer.echo(f"  {out / CA_KEY} is encrypted with {_key_password_source(key_password_file)}")


@app.command("import", short_help="Import an existing CA (PEM pair or PKCS#12).")
def import_ca(
    out: Path = typer.Option(
        ..., "--out", "-o", callback=not_stdout, help="Directory for ca.crt and ca.key."
    ),
    cert: Path = typer.Option(
        None, "--cert", help="CA certificate (PEM or DER); extra certificates form the chain."
    ),
    key: Path = typer.Option(None, "--key", help="CA private key (PEM or DER)."),
    p12: Path = typer.Option(
        None, "--p12", help="PKCS#12 file holding the CA key and certificate."
    ),
    password_file: Path = typer.Option(
        None,
        "--password-file",
        callback=password_file_option,
        help="Password of the key or PKCS#12 file." + STDIN_HELP,
    ),
    password: str = typer.Option(
        None, "--password", help="Password on the command line (demos only)."
    ),
    key_password_file: Path = typer.Option(
        None,
        "--key-password-file",
        callback=password_file_option,
        help="Encrypt ca.key with the password in this file (default: CERTCTL_CA_PASSWORD, "
        "if set); needed when the input is password-protected (the same file as "
        "--password-file keeps its password)." + STDIN_HELP,
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Import an existing CA (PEM pair or PKCS#12) after checking key and certificate match."""
    from certctl.errors import InvalidRequest, PasswordRequired
    from certctl.files import OutputSet
    from certctl.pki import CertificateAuthority, certs_to_pem, display_dn, key_to_pem
    from certctl.pki.chain_links import chain_problem, chain_window_problem

    key_password = read_password(key_password_file, env="CERTCTL_CA_PASSWORD")  # as in create
    try:
        ca_input = read_ca_input(cert, key, p12, password_file, password)
    except PasswordRequired as exc:
        if key_password is not None:
            raise
        # Both at once: given only --password-file, as this said, the import then refused
        # for want of --key-password-file, a second round for an openssl-encrypted key.
        raise exc.with_detail(
            f"{exc.detail}, and --key-password-file (or CERTCTL_CA_PASSWORD) to keep the "
            "imported ca.key encrypted (the same file will do)"
        ) from exc
    material, from_env, ca_cert = ca_input.material, ca_input.from_env, ca_input.certificate
    private_key = ca_input.private_key
    certs = material.certificates
    chain = _issuer_chain(ca_cert, [c for c in certs if c is not ca_cert])
    try:
        ca = CertificateAuthority(ca_cert, private_key, chain)
    except InvalidRequest as exc:  # not a CA, an RSA-PSS key …: say which file
        raise InvalidRequest(f"{cert or p12}: {exc.detail}") from exc
    if material.key_encrypted and key_password is None:
        # The key was protected in the input: writing ca.key unencrypted would drop that
        # protection without a word.
        if from_env:
            same = "a file holding CERTCTL_PASSWORD"
        elif is_stdin(password_file):
            same = "a file holding the password given on standard input"
        elif password_file is None:  # --password: there is no file to reuse
            same = "a file holding the --password value"
        else:
            same = "the --password-file file"
        raise typer.BadParameter(
            "the input is password-protected: give --key-password-file (or CERTCTL_CA_PASSWORD) "
            f"to keep the imported ca.key encrypted ({same} will do)"
        )
    outputs = OutputSet(force=force)
    outputs.add(out / CA_CERT, certs_to_pem([ca.certificate]))
    outputs.add(out / CA_KEY, key_to_pem(private_key, key_password), secret=True)
    if chain:
        outputs.add(out / CA_CHAIN, certs_to_pem([ca.certificate, *chain]))
    else:
        outputs.remove(out / CA_CHAIN)  # another CA's chain, left by what is replaced (--force)
    outputs.commit()
    expires = ca.certificate.not_valid_after_utc
    if expires <= utcnow():
        # Imported all the same (its certificate may still be needed to check old ones),
        # but cert issue, csr sign and crl create refuse an expired CA.
        warn(
            f"the CA certificate expired on {expires:%Y-%m-%d %H:%M}Z: "
            "it can no longer sign certificates or CRLs"
        )
    if not ca.may_sign_certificates:
        # Kept for the same reason; cert issue and csr sign refuse it.
        warn("the CA certificate's keyUsage lacks keyCertSign: it cannot sign certificates")
    problem = chain_problem(ca.certificate, ca.chain)
    if problem is not None:
        # Kept too, but what it signs fails everywhere: said now, not by the first client.
        warn(problem)
    problem = chain_window_problem(ca.chain, utcnow())
    if problem is not None:
        warn(problem)
    top = ca.root
    if top.issuer != top.subject:
        # Imported all the same (the root may be in every trust store already), but the
        # ca.crt written next to each certificate is then this top CA, not a root.
        warn(
            f"{display_dn(top.issuer)}, the issuer of {display_dn(top.subject)}, "
            f"was not given: certificates issued from this CA get "
            f"{display_dn(top.subject)} as ca.crt, which openssl verify and Python refuse "
            "(unable to get issuer certificate); give the chain up to the root in --cert "
            "(or in the PKCS#12)"
        )
    from certctl.cli._listing import printable  # the subject is the imported file's text

    typer.echo(printable(f"imported CA {display_dn(ca.certificate.subject)} into {out}/"))
    for path in outputs.paths:  # named as ca create names them
        typer.echo(f"  {path}")
    _echo_removed(outputs.removed)
    if key_password is not None:
        typer.echo(
            f"  {out / CA_KEY} is encrypted with {_key_password_source(key_password_file)}: "
            "give --ca-password-file or CERTCTL_CA_PASSWORD to use it"
        )


def _echo_removed(removed: list[Path]) -> None:
    """One line per file --force removed (the replaced intermediate's ``ca-chain.crt``).

    Before, it went without a word: a script or user copying the listed files elsewhere
    kept the stale chain there.
    """
    for path in removed:
        typer.echo(f"  removed {path}")


def _issuer_chain(
    ca_cert: x509.Certificate, others: list[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """The certificates above ``ca_cert``, nearest first; the others left out with a warning.

    Raises:
        InvalidRequest: the issuer given signed the top of the chain with SHA-1 or MD5.
    """
    import itertools

    from certctl.errors import InvalidRequest
    from certctl.pki import display_dn, issuer_chain
    from certctl.pki.key_strength import weakly_signed

    chain, left_over = issuer_chain(ca_cert, others)
    for child, parent in itertools.pairwise((ca_cert, *chain)):
        # cryptography checks an RSASSA-PSS signature over SHA-1 (not a PKCS#1 one), so
        # such a link passed into the chain in silence; OpenSSL 3 refuses it as the other.
        weak = weakly_signed(parent, child)
        if weak is not None:
            raise InvalidRequest(weak)
    top = chain[-1] if chain else ca_cert
    for cert in left_over:
        # cryptography checks no SHA-1 or MD5 signature, so a legacy openssl root was "not an
        # issuer in the chain", then "not given": imported, its leaves failed everywhere. A
        # root's signature on itself is no link (no client checks it): a copy of it given
        # too was "CA R signed R with SHA-1".
        linked = cert.subject == top.issuer != top.subject
        weak = weakly_signed(cert, top) if linked else None
        if weak is not None:
            raise InvalidRequest(weak)
    for cert in left_over:
        warn(
            f"{display_dn(cert.subject)}: not an issuer in the chain of "
            f"{display_dn(ca_cert.subject)}; left out of {CA_CHAIN}"
        )
    return chain


def _key_password_source(key_password_file: Path | None) -> str:
    """Where the password of a written ca.key came from (never the password)."""
    if is_stdin(key_password_file):
        return "the password given on standard input"
    if key_password_file is not None:
        return f"the password in {key_password_file}"
    return "the password from CERTCTL_CA_PASSWORD"


@dataclass(frozen=True)
class CAInput:
    """A CA read from --cert/--key or --p12 (``ca import``, ``issuers import``), checked."""

    material: Material
    certificate: x509.Certificate  # the one of the key (roots often come first in a bundle)
    private_key: CertificateIssuerPrivateKeyTypes
    from_env: bool  # the password, if any, was CERTCTL_PASSWORD's


def read_ca_input(
    cert: Path | None,
    key: Path | None,
    p12: Path | None,
    password_file: Path | None,
    password: str | None,
    *,
    nothing_done: str = "",
) -> CAInput:
    """Read and check a CA certificate and its key; ``nothing_done`` ends each refusal."""
    from certctl.errors import InvalidRequest, PasswordRequired, WrongPassword

    if (p12 is None) == (cert is None):
        raise typer.BadParameter("give either --cert with --key, or --p12")
    if cert is not None and key is None:
        raise typer.BadParameter("--cert needs --key")
    if p12 is not None and key is not None:
        raise typer.BadParameter("--key and --p12 exclude each other (the key is in the PKCS#12)")
    if password is not None and password_file is not None:
        raise typer.BadParameter("--password and --password-file exclude each other")
    # CERTCTL_PASSWORD alone is a default, often exported for other commands: an input
    # that needs no password opens without it, as in inspect and verify.
    from_env = password is None and password_file is None
    secret = read_password(password_file, password)
    try:
        if p12 is not None:
            material = read_material(p12, secret, "PKCS#12 file", password_optional=from_env)
        elif cert is not None and key is not None:
            # Certificates only from --cert: a key concatenated into it is never used.
            certs = read_material(cert, what="CA certificate").certificates
            material = read_material(key, secret, "CA key", password_optional=from_env)
            material.certificates = certs
        else:  # refused above already; this branch only tells mypy so
            raise typer.BadParameter("give either --cert with --key, or --p12")
    except WrongPassword as exc:
        if from_env:
            raise exc.with_detail(
                f"{exc.detail} (the password came from CERTCTL_PASSWORD)"
            ) from exc
        raise
    except PasswordRequired as exc:
        # The loader names the option only; the variable opens the input as well.
        raise exc.with_detail(
            exc.detail.replace("--password-file", "--password-file or CERTCTL_PASSWORD")
        ) from exc
    certs, private_key = material.certificates, material.private_key
    if not certs:
        raise InvalidRequest(f"no CA certificate found in the input{nothing_done}")
    if private_key is None:
        raise InvalidRequest(f"no CA private key found in the input{nothing_done}")
    from certctl.pki import display_dn, unreadable_key

    # The key match and the chain's signatures below could not be checked: before, an
    # "internal error" when such a root came first in the bundle.
    unreadable = unreadable_key(certs)
    if unreadable is not None:
        holder, why = unreadable
        raise InvalidRequest(
            f"{display_dn(holder.subject)} in the input holds a key certctl cannot read "
            f"({why}){nothing_done}"
        )
    ca_cert = next((c for c in certs if c.public_key() == private_key.public_key()), None)
    if ca_cert is None:
        # Named: with several CA directories at hand, "the private key" left the user to
        # guess which of the files was the wrong one.
        if p12 is not None:
            raise InvalidRequest(
                f"{p12}: the private key matches none of its certificates{nothing_done}"
            )
        raise InvalidRequest(
            f"{key}: the private key does not match the CA certificate in {cert}{nothing_done}"
        )
    return CAInput(material, ca_cert, private_key, from_env)
