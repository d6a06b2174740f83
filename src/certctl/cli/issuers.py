"""``certctl issuers …``: the CAs of a server, created, imported, listed and fetched.

Requests go through :func:`certctl.cli._api.send_request`, so they read ``CERTCTL_URL``,
``CERTCTL_API_KEY`` and ``CERTCTL_CA_CERT`` and report failures in one line exactly as the
``certs`` commands do. A private key given to ``issuers import`` is read and checked here and
sent unencrypted (the API takes no password), over the connection ``CERTCTL_URL`` names;
nothing prints it.
"""

from __future__ import annotations

import errno
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from certctl.cli._api import (
    ENV_HELP,
    OUTPUT_OPTION,
    field_cell,
    issuer_hint,
    not_empty,
    path_segment,
    print_answer,
    print_list,
    send_request,
    status_cell,
    unexpected_response,
    warn_about,
)
from certctl.cli._listing import Column
from certctl.cli._stdin import STDIN_HELP, password_file_option
from certctl.cli.ca import KEY_TYPE_OPTION, PATH_LENGTH_OPTION, SUBJECT_OPTION
from certctl.errors import CertctlError

if TYPE_CHECKING:
    from certctl.files import OutputSet

__all__ = ["issuers_app"]

issuers_app = typer.Typer(
    help="Issuers: the CAs a server signs with. Create a root or an intermediate, import "
    f"one, list them, revoke an intermediate, and fetch a CA certificate or CRL.\n\n{ENV_HELP}",
    short_help="Create, import, revoke CAs at CERTCTL_URL; their certs, CRLs.",
    no_args_is_help=True,
)

_ISSUERS = "/api/v1/issuers"
ISSUER_ID = typer.Argument(..., callback=not_empty, metavar="ISSUER_ID", help="Issuer id.")
OUT_HELP = "Write it to this file (atomically; an existing one only with --force), not stdout."


def _issuer_columns() -> list[Column]:
    from certctl.cli._listing import date_and_days

    return [
        Column("ID", field_cell("id"), key=True),
        Column("STATUS", status_cell),
        Column("NAME", field_cell("name"), label=True),
        Column("SUBJECT", field_cell("subject"), label=True),
        Column("KEY TYPE", field_cell("key_type")),
        Column("NOT AFTER", lambda item, now: date_and_days(item.get("not_after"), now)),
    ]


@issuers_app.command("list")
def issuers_list(output: str | None = OUTPUT_OPTION) -> None:
    """List issuers (all of them: the server does not page this list).

    On a terminal a table: id, status (active, expired, revoked), name, subject, key type,
    notAfter (the date, and the days left).
    """
    print_list(
        send_request("GET", _ISSUERS),
        output,
        path=_ISSUERS,
        columns=_issuer_columns(),
        empty="no issuers",
    )


@issuers_app.command("get")
def issuers_get(issuer_id: str = ISSUER_ID) -> None:
    """Show one issuer (never its key)."""
    with issuer_hint(issuer_id):
        print_answer(send_request("GET", f"{_ISSUERS}/{path_segment(issuer_id)}"))


@issuers_app.command("create", short_help="Create a root CA, or an intermediate under --parent.")
def issuers_create(
    issuer_id: str = typer.Argument(
        ..., callback=not_empty, metavar="ISSUER_ID", help="Id of the new issuer, e.g. ops-ca."
    ),
    name: str = typer.Option("", "--name", help="Display name."),
    cn: str = typer.Option(None, "--cn", help="Common name (default: 'certctl ISSUER_ID CA')."),
    subject: str = SUBJECT_OPTION,
    key_type: str = KEY_TYPE_OPTION,
    validity: str = typer.Option(
        None,
        "--validity",
        help="Lifetime: 5Y, 365D, 8760h … (default: 5Y; an intermediate at most its "
        "parent's remaining life; a longer --validity is clipped to it, with a warning).",
    ),
    parent: str = typer.Option(
        None,
        "--parent",
        callback=not_empty,
        metavar="ISSUER_ID",
        help="Issuer that signs this one (makes an intermediate), e.g. default.",
    ),
    path_length: int = PATH_LENGTH_OPTION,
) -> None:
    """Create a root CA on the server, or an intermediate signed by issuer --parent.

    The key is generated on the server and stays there (encrypted). Prints the new issuer as
    JSON; the server's warnings (a clipped validity, a short lifetime) also go to stderr.
    """
    if cn is not None and subject is not None:
        raise typer.BadParameter("--cn and --subject exclude each other (put the CN in --subject)")
    from certctl.cli._common import option_value
    from certctl.pki import KeyType, common_name_dn, parse_dn, parse_duration

    # By the parsers the server uses, before anything is sent: a value that does not parse is
    # a usage error (exit 2), as for ca create, not the server's 400 (exit 1).
    with option_value("--key-type"):
        KeyType.parse(key_type)
    if validity is not None:
        with option_value("--validity"):
            parse_duration(validity)
    if subject is not None:
        with option_value("--subject"):
            parse_dn(subject)
    if cn is not None:
        with option_value("--cn"):
            common_name_dn(cn)
    body: dict[str, Any] = {"id": issuer_id, "name": name, "key_type": key_type}
    # Only what was given: the server's defaults (its CN, 5Y) are the documented ones.
    for field, value in (
        ("common_name", cn),
        ("subject", subject),
        ("validity", validity),
        ("parent", parent),
        ("path_length", path_length),
    ):
        if value is not None:
            body[field] = value
    with issuer_hint(parent) if parent is not None else nullcontext():
        data = send_request("POST", _ISSUERS, body)
    warn_about(data)
    print_answer(data)


@issuers_app.command("revoke", short_help="Revoke an intermediate issuer (onto its parent's CRL).")
def issuers_revoke(
    issuer_id: str = ISSUER_ID,
    reason: str = typer.Option(
        None,
        "--reason",
        help="keyCompromise, cACompromise, superseded, cessationOfOperation … (default: "
        "unspecified); keyCompromise or cACompromise also replaces an earlier revocation's "
        "reason that was no compromise.",
    ),
) -> None:
    """Revoke an intermediate issuer: its parent's next CRL lists it.

    From then on it issues nothing (certificates, renewals, intermediates), and neither does
    any issuer below it; its own CRL stays served. Other server processes and replicas learn
    of it within a minute. A root cannot be revoked: take it out of the clients' trust stores.
    Revoking it again is refused, except with --reason keyCompromise or cACompromise when it
    was revoked for a reason that was no compromise: the reason becomes that one (on the
    parent's next CRL too) and the revocation date stays. Prints the issuer as JSON.
    """
    if reason is not None:
        from certctl.cli._common import option_value
        from certctl.pki.revocation_reasons import check_reason

        # The server's rule, before anything is sent: a usage error (exit 2), not its 400.
        with option_value("--reason"):
            check_reason(reason, issuer=True)
    with issuer_hint(issuer_id):
        path = f"{_ISSUERS}/{path_segment(issuer_id)}/revoke"
        print_answer(send_request("POST", path, {"reason": reason}))


@issuers_app.command("import", short_help="Import an existing CA (PEM pair or PKCS#12).")
def issuers_import(
    issuer_id: str = typer.Argument(
        ..., callback=not_empty, metavar="ISSUER_ID", help="Id of the new issuer."
    ),
    cert: Path = typer.Option(
        None,
        "--cert",
        help="CA certificate (PEM or DER); extra certificates are the CAs above it, up to the "
        "root.",
    ),
    key: Path = typer.Option(None, "--key", help="CA private key (PEM or DER)."),
    p12: Path = typer.Option(
        None, "--p12", help="PKCS#12 file holding the CA key and certificate."
    ),
    password_file: Path = typer.Option(
        None,
        "--password-file",
        callback=password_file_option,
        help="Password of the key or PKCS#12 file (default: $CERTCTL_PASSWORD); the key is "
        "decrypted here, as the API takes it unencrypted." + STDIN_HELP,
    ),
    password: str = typer.Option(
        None, "--password", help="Password on the command line (demos only)."
    ),
    name: str = typer.Option("", "--name", help="Display name."),
) -> None:
    """Import an existing CA into the server, after checking key and certificate match.

    The key is read here (decrypted with --password-file or CERTCTL_PASSWORD, as
    'certctl ca import' reads it) and sent over the TLS connection; the server stores it
    encrypted. Nothing is sent when the key does not match the certificate.
    """
    body = {"id": issuer_id, "name": name, **_import_pem(cert, key, p12, password_file, password)}
    data = send_request("POST", _ISSUERS, body)
    warn_about(data)
    print_answer(data)


def _import_pem(
    cert: Path | None,
    key: Path | None,
    p12: Path | None,
    password_file: Path | None,
    password: str | None,
) -> dict[str, str]:
    """certificate_pem and private_key_pem for the import body, from the files given."""
    from certctl.cli.ca import read_ca_input
    from certctl.pki import certs_to_pem, key_to_pem

    # As `ca import` reads it; the server would refuse a key that does not match too, but
    # the key would have left the machine for nothing.
    ca_input = read_ca_input(
        cert, key, p12, password_file, password, nothing_done=" (nothing was sent)"
    )
    certs, private_key = ca_input.material.certificates, ca_input.private_key
    return {
        "certificate_pem": certs_to_pem(certs).decode("ascii"),
        "private_key_pem": key_to_pem(private_key, None).decode("ascii"),
    }


# --- public CA certificates and CRLs --------------------------------------------------------


def _out(out: str | None, out_short: str | None) -> str | None:
    """The file of ``--out`` or of its hidden old spelling ``-o``."""
    if out_short is None:
        return out
    if out is not None:
        raise typer.BadParameter("give --out once (-o is --out here)", param_hint="'-o'")
    if out_short in ("table", "json"):
        raise typer.BadParameter(
            f"{out_short}: -o is --out (a file) here, not --output table|json: these print "
            f"PEM or DER (a file named so: --out ./{out_short})",
            param_hint="'-o'",
        )
    return out_short


def _output(
    out: str | None, *, force: bool, binary: bool, hint: str
) -> tuple[OutputSet, Path] | None:
    """The file ``--out`` names, checked before the request; None for stdout.

    DER on a terminal is refused: its bytes would garble the terminal, and nothing could be
    done with them there.
    """
    from certctl.files import OutputSet

    if out is None or out == "-":
        if binary and sys.stdout.isatty():
            raise typer.BadParameter(f"DER is binary, not for a terminal: {hint}")
        return None
    outputs = OutputSet(force=force)
    outputs.add(Path(out), b"")
    outputs.check()  # an existing file or an unwritable place: refused before the request
    return outputs, Path(out)


def _write(target: tuple[OutputSet, Path] | None, data: bytes) -> None:
    """``data`` into the file of :func:`_output` (by atomic rename), or onto stdout."""
    if target is None:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        except OSError as exc:
            # As the list commands end (main._flush_stdout): quietly when the reader left
            # (`| head -c 100`), else in one line naming stdout, the buffer dropped either way.
            from certctl.files import discard_stdout

            discard_stdout()
            if exc.errno == errno.EPIPE:
                raise typer.Exit(1) from None
            raise CertctlError(f"cannot write to stdout: {exc.strerror or exc}") from None
        return
    outputs, path = target
    outputs.add(path, data)
    outputs.commit()


# A str, not a Path: Path("./-") is Path("-"), and "./-" names the file "-".
OUT_OPTION: Any = typer.Option(None, "--out", metavar="FILE", help=OUT_HELP)
# -o was these two commands' short --out. Every other client command's -o is --output
# table|json (`issuers list -o json`), so `issuers ca ID -o json` wrote a file named "json".
# Kept for the scripts that use it, hidden from the help, and refused with table or json.
OUT_SHORT_OPTION: Any = typer.Option(None, "-o", hidden=True)
FORCE_OPTION: Any = typer.Option(False, "--force", help="Overwrite an existing --out file.")


@issuers_app.command("ca", short_help="Fetch an issuer's CA certificate (public, PEM or --der).")
def issuers_ca(
    issuer_id: str = ISSUER_ID,
    chain: bool = typer.Option(
        False, "--chain", help="Add the CAs above it, nearest first, ending with the root."
    ),
    der: bool = typer.Option(
        False, "--der", help="The one certificate in DER (what a caIssuers URI names)."
    ),
    out: str = OUT_OPTION,
    out_short: str = OUT_SHORT_OPTION,
    force: bool = FORCE_OPTION,
) -> None:
    """Fetch an issuer's CA certificate (PEM; public, no API key needed).

    With --chain, an intermediate's CAs up to the root follow it: what 'openssl verify
    -CAfile' takes for certificates it issued; the last one is the root clients trust.
    """
    from cryptography import x509

    if chain and der:
        raise typer.BadParameter(
            "--chain does not go with --der (ca.der is the one certificate; the chain is PEM)"
        )
    hint = "give --out FILE, redirect stdout, or leave out --der for PEM"
    target = _output(_out(out, out_short), force=force, binary=der, hint=hint)
    path = f"{_ISSUERS}/{path_segment(issuer_id)}/ca.{'der' if der else 'pem'}"
    template = f"{_ISSUERS}/{{id}}/ca.{'der' if der else 'pem'}"
    if der:
        with issuer_hint(issuer_id):
            data = send_request("GET", path, accept="application/pkix-cert", raw=True)
        try:
            x509.load_der_x509_certificate(data)
        except ValueError:
            raise unexpected_response(template, "not a DER certificate") from None
    else:
        params = {"chain": "true"} if chain else None
        with issuer_hint(issuer_id):
            data = send_request(
                "GET", path, params=params, accept="application/x-pem-file", raw=True
            )
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            certs = []
        # Whatever answers at CERTCTL_URL (a login page) must not land in a ca.crt.
        if not certs:
            raise unexpected_response(template, "no PEM certificate")
    _write(target, data)


@issuers_app.command("crl", short_help="Fetch an issuer's current CRL (public, DER or --pem).")
def issuers_crl(
    issuer_id: str = ISSUER_ID,
    pem: bool = typer.Option(False, "--pem", help="PEM instead of DER."),
    out: str = OUT_OPTION,
    out_short: str = OUT_SHORT_OPTION,
    force: bool = FORCE_OPTION,
) -> None:
    """Fetch an issuer's current CRL (DER by default; public, no API key needed)."""
    from cryptography import x509

    target = _output(
        _out(out, out_short),
        force=force,
        binary=not pem,
        hint="give --out FILE, redirect stdout, or add --pem",
    )
    path = f"{_ISSUERS}/{path_segment(issuer_id)}/crl"
    accept = "application/x-pem-file" if pem else "application/pkix-crl"
    params = {"format": "pem"} if pem else None
    with issuer_hint(issuer_id):
        data = send_request("GET", path, params=params, accept=accept, raw=True)
    try:
        (x509.load_pem_x509_crl if pem else x509.load_der_x509_crl)(data)
    except ValueError:
        what = f"not a {'PEM' if pem else 'DER'} CRL"
        raise unexpected_response(f"{_ISSUERS}/{{id}}/crl", what) from None
    _write(target, data)
