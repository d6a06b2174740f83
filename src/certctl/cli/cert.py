"""``certctl cert issue``: one certificate, or a batch from a certutil instances file.

The Typer declaration (help, option parsing, usage errors) lives here; the work is in
``_issue.py``, which ``main.run`` can also reach without importing Typer.
"""

from __future__ import annotations

from pathlib import Path

import typer

from certctl.cli import _issue
from certctl.cli._common import KEY_TYPES_HELP, not_stdout
from certctl.cli._distribution import CA_ISSUERS_URLS, CRL_URLS
from certctl.cli._issue import leaf_files
from certctl.cli._stdin import STDIN_HELP, password_file_option

__all__ = ["app", "leaf_files"]

app = typer.Typer(help="Issue certificates signed by a CA directory.", no_args_is_help=True)


@app.command("issue", short_help="Issue a certificate and key, or a batch with --in.")
def issue(
    ca_dir: Path = typer.Option(..., "--ca", help="CA directory (from 'certctl ca create')."),
    out: Path = typer.Option(
        ..., "--out", "-o", callback=not_stdout, help="Output directory, or a .zip with --in."
    ),
    cn: str = typer.Option(None, "--cn", help="Common name (host or user name)."),
    subject: str = typer.Option(None, "--subject", help="Full RFC 4514 subject instead of --cn."),
    dns: list[str] = typer.Option(
        [],
        "--dns",
        metavar="DNS",
        help="DNS SAN (repeatable, or a comma-separated list; '*.example.com' allowed).",
    ),
    ip: list[str] = typer.Option(
        [],
        "--ip",
        metavar="IP",
        help="IP SAN, IPv4 or IPv6 (repeatable, or a comma-separated list).",
    ),
    email: list[str] = typer.Option(
        [], "--email", metavar="EMAIL", help="E-mail SAN (repeatable, or a comma-separated list)."
    ),
    uri: list[str] = typer.Option(
        [],
        "--uri",
        metavar="URI",
        help="URI SAN, e.g. spiffe://… (repeatable; not split at commas).",
    ),
    crl_url: list[str] = CRL_URLS,
    ca_issuers_url: list[str] = CA_ISSUERS_URLS,
    profile: str = typer.Option("server", "--profile", help="server, client or server+client."),
    validity: str = typer.Option("90D", "--validity", help="Lifetime: 90D, 2160h, 1Y …"),
    key_type: str = typer.Option("ec-p256", "--key-type", help=f"Key type: {KEY_TYPES_HELP}."),
    instances: Path = typer.Option(
        None, "--in", help="certutil instances.yml: issue one certificate per instance."
    ),
    pem: bool = typer.Option(False, "--pem", help="With --in: write PEM files instead of PKCS#12."),
    p12: bool = typer.Option(
        False, "--p12", help="Write a password-protected tls.p12 instead of PEM."
    ),
    p12_legacy: bool = typer.Option(
        False, "--p12-legacy", help="PKCS#12 with 3DES/SHA-1 for old Java and Windows."
    ),
    password_file: Path = typer.Option(
        None,
        "--password-file",
        callback=password_file_option,
        help="PKCS#12 password file (or CERTCTL_PASSWORD)." + STDIN_HELP,
    ),
    password: str = typer.Option(
        None, "--password", help="PKCS#12 password on the command line (demos only)."
    ),
    ca_password_file: Path = typer.Option(
        None,
        "--ca-password-file",
        callback=password_file_option,
        help="Password of an encrypted ca.key (default: $CERTCTL_CA_PASSWORD)." + STDIN_HELP,
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Issue a certificate and key (tls.crt, tls.key, ca.crt), or a batch with --in."""
    options = _issue.IssueOptions(
        ca_dir=ca_dir,
        out=out,
        cn=cn,
        subject=subject,
        dns=dns,
        ip=ip,
        email=email,
        uri=uri,
        crl_url=crl_url,
        ca_issuers_url=ca_issuers_url,
        profile=profile,
        validity=validity,
        key_type=key_type,
        instances=instances,
        pem=pem,
        p12=p12,
        p12_legacy=p12_legacy,
        password_file=password_file,
        password=password,
        ca_password_file=ca_password_file,
        force=force,
    )
    _issue.issue(options, typer.echo)  # its UsageProblem: a usage error (_app)
