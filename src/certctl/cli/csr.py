"""``certctl csr create|sign``: requests for an external CA, and signing others' requests."""

from __future__ import annotations

from pathlib import Path

import typer

from certctl.cli._common import (
    KEY_TYPES_HELP,
    holds_another_key,
    not_stdout,
    open_ca_dir,
    option_value,
    pending_csr_key,
    read_file,
    split_names,
    utcnow,
    warn,
)
from certctl.cli._distribution import CA_ISSUERS_URLS, CRL_URLS
from certctl.cli._issue import checked_urls
from certctl.cli._stdin import STDIN_HELP, password_file_option

__all__ = ["app"]

app = typer.Typer(help="Create certificate signing requests or sign them.", no_args_is_help=True)


@app.command("create")
def create(
    out: Path = typer.Option(
        ..., "--out", "-o", callback=not_stdout, help="Directory for tls.csr and tls.key."
    ),
    cn: str = typer.Option(None, "--cn", help="Common name."),
    subject: str = typer.Option(None, "--subject", help="Full RFC 4514 subject instead of --cn."),
    dns: list[str] = typer.Option(
        [], "--dns", metavar="DNS", help="DNS SAN (repeatable, or a comma-separated list)."
    ),
    ip: list[str] = typer.Option(
        [], "--ip", metavar="IP", help="IP SAN (repeatable, or a comma-separated list)."
    ),
    email: list[str] = typer.Option(
        [], "--email", metavar="EMAIL", help="E-mail SAN (repeatable, or a comma-separated list)."
    ),
    uri: list[str] = typer.Option(
        [], "--uri", metavar="URI", help="URI SAN (repeatable; not split at commas)."
    ),
    key_type: str = typer.Option("ec-p256", "--key-type", help=f"Key type: {KEY_TYPES_HELP}."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Overwrite existing files (not a tls.key whose tls.csr has no certificate yet).",
    ),
) -> None:
    """Create a key and a CSR (tls.key, tls.csr) to send to a CA."""
    import shlex

    from cryptography.hazmat.primitives import serialization

    from certctl.errors import Conflict
    from certctl.files import OutputSet
    from certctl.pki import (
        KeyType,
        SubjectAltNames,
        common_name_dn,
        create_csr,
        display_dn,
        generate_private_key,
        key_to_pem,
        parse_dn,
    )

    if cn is None and subject is None:
        raise typer.BadParameter("give --cn or --subject")
    if cn is not None and subject is not None:
        raise typer.BadParameter("--cn and --subject exclude each other (put the CN in --subject)")
    with option_value("--key-type"):
        kt = KeyType.parse(key_type)
    # An empty --cn or --subject is refused by the parsers, not taken for a missing one.
    with option_value("--subject" if subject is not None else "--cn"):
        name = parse_dn(subject) if subject is not None else common_name_dn(cn)
    # A comma is in no DNS name, IP or e-mail address certctl takes, but may be in a URI.
    with option_value():  # the message names the value, of --dns, --ip, --email or --uri
        sans = SubjectAltNames.parse(
            dns=split_names(dns), ip=split_names(ip), email=split_names(email), uri=uri
        )
    if (pending := pending_csr_key(out)) is not None:
        # --force too, as cert issue and certs issue refuse to write there: the CSR may be
        # with a CA already, and its certificate would then go with no key. No prompt (no
        # command but the http wizard asks anything); giving the request up is a deliberate
        # act of its own. Checked before "already exists; use --force", which led here.
        csr_path = out / "tls.csr"
        sign = ["certctl", "csr", "sign", "--ca", "CA_DIR", "--csr", str(csr_path), "--out"]
        # --force for the tls.crt (and ca.crt) of an old certificate, still there.
        old = (out / "tls.crt").exists() or (out / "ca.crt").exists()
        sign = [*sign, str(out), *(["--force"] if old else [])]
        lose = f"a new key and CSR in {out} would lose it (nothing was written)"
        raise Conflict(
            f"{pending.refusal(out, lose)}; get its certificate first ('{shlex.join(sign)}', "
            f"or from the CA it went to), or give another --out; to give the request up, "
            f"delete {csr_path}"
        )
    outputs = OutputSet(force=force)
    outputs.add(out / "tls.csr", b"")
    outputs.add(out / "tls.key", b"")
    outputs.check()
    key = generate_private_key(kt)
    csr = create_csr(key, name, sans)
    outputs.add(out / "tls.csr", csr.public_bytes(serialization.Encoding.PEM))
    outputs.add(out / "tls.key", key_to_pem(key), secret=True)
    outputs.commit()
    typer.echo(f"created CSR for {display_dn(name)}")
    for path in outputs.paths:
        typer.echo(f"  {path}")
    if holds_another_key(out / "tls.crt", key.public_key()):
        # A renewal made in the live directory (csr create --force): the old certificate
        # stays and no longer goes with the new key; nginx and Java refuse the pair.
        warn(
            f"{out / 'tls.crt'} is the certificate of the replaced key: it does not go with "
            f"the new {out / 'tls.key'} until the certificate for {out / 'tls.csr'} replaces it"
        )


@app.command("sign", short_help="Sign a CSR; the profile decides every extension.")
def sign(
    ca_dir: Path = typer.Option(..., "--ca", help="CA directory."),
    csr_path: Path = typer.Option(..., "--csr", help="CSR file (PEM or DER)."),
    out: Path = typer.Option(
        ..., "--out", "-o", callback=not_stdout, help="Directory for tls.crt and ca.crt."
    ),
    profile: str = typer.Option(
        "server", "--profile", help="server, client, server+client or intermediate."
    ),
    validity: str = typer.Option(
        None,
        "--validity",
        help="Lifetime: 90D, 2160h, 1Y … (default: 90D; with --profile intermediate 5Y, at "
        "most the CA's remaining life, as ca create --parent).",
    ),
    crl_url: list[str] = CRL_URLS,
    ca_issuers_url: list[str] = CA_ISSUERS_URLS,
    ca_password_file: Path = typer.Option(
        None,
        "--ca-password-file",
        callback=password_file_option,
        help="Password of an encrypted ca.key (default: $CERTCTL_CA_PASSWORD)." + STDIN_HELP,
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Sign a CSR after verifying its signature; the profile decides every extension."""
    from certctl.errors import InvalidRequest
    from certctl.files import OutputSet
    from certctl.pki import (
        LEAF_PROFILES,
        certs_to_pem,
        display_dn,
        format_serial,
        get_profile,
        load_csr,
        parse_duration,
        sign_csr,
    )

    with option_value("--profile"):
        prof = get_profile(profile, (*LEAF_PROFILES, "intermediate"))
    if prof.name == "ca":
        raise typer.BadParameter(
            "a root CA is self-signed; use 'certctl ca create'", param_hint="--profile"
        )
    # An intermediate got the leaves' 90D, where ca create --parent gives a CA 5Y.
    intermediate = prof.name == "intermediate"
    with option_value("--validity"):
        lifetime = parse_duration(validity or ("5Y" if intermediate else "90D"))
    crl_urls = checked_urls(crl_url, "--crl-url")
    ca_issuers_urls = checked_urls(ca_issuers_url, "--ca-issuers-url")
    data = read_file(csr_path, "CSR")  # its errors name the file already
    try:
        csr = load_csr(data)
    except InvalidRequest as exc:
        raise exc.with_detail(f"{csr_path}: {exc.detail}") from exc
    outputs = OutputSet(force=force)
    outputs.add(out / "tls.crt", b"")
    outputs.check()
    ca = open_ca_dir(ca_dir, ca_password_file)
    now = utcnow()
    if validity is None and intermediate:
        lifetime = min(lifetime, ca.certificate.not_valid_after_utc - now)  # as ca create
    issued = sign_csr(
        ca,
        csr,
        profile=prof,
        validity=lifetime,
        now=now,
        crl_urls=crl_urls,
        ca_issuers_urls=ca_issuers_urls,
    )
    for message in issued.warnings:
        warn(message)
    outputs.add(out / "tls.crt", certs_to_pem([issued.certificate, *ca.chain_below_root]))
    outputs.add(out / "ca.crt", certs_to_pem([ca.root]))
    outputs.commit()
    typer.echo(
        f"signed {prof.name} certificate serial {format_serial(issued.certificate.serial_number)} "
        f"for {display_dn(issued.certificate.subject)}, "
        # As cert issue says it: when to renew is what the user needs to know next.
        f"valid until {issued.certificate.not_valid_after_utc:%Y-%m-%d}"
    )
    for path in outputs.paths:
        typer.echo(f"  {path}")
    if holds_another_key(out / "tls.key", csr.public_key()):
        # --out another certificate's directory: its key stays beside the new certificate.
        warn(
            f"{out / 'tls.key'} is not the CSR's key: it does not go with the new "
            f"{out / 'tls.crt'} (put the certificate beside the key the CSR was made with)"
        )
