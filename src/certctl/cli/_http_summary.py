"""What ``certctl http`` says it wrote, and the next steps."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from certctl.pki.bundle import BundleResult
    from certctl.pki.bundle_plan import HttpBundlePlan

__all__ = ["print_summary"]


def print_summary(out: Path, plan: HttpBundlePlan, result: BundleResult) -> None:
    from certctl.pki import display_dn

    echo = typer.echo
    what = "CSRs and keys" if plan.mode == "csr" else "certificates and keys"
    echo(f"wrote {out} (mode 0600, {len(result.entries)} files): {what}")
    if result.ca_folder and result.ca_certificate is not None:
        ca_cert = result.ca_certificate
        echo(
            f"  {result.ca_folder:<28} new CA {display_dn(ca_cert.subject)}, "
            f"valid until {ca_cert.not_valid_after_utc:%Y-%m-%d}"
        )
        if plan.ca_password:
            # CERTCTL_CA_PASSWORD alone encrypts: say so, or the key's password is a surprise.
            echo(f"  {'':<28} ca.key and ca.p12 encrypted with {plan.ca_password_hint}")
    for node in result.nodes:
        names = ", ".join([*node.sans.dns, *(str(a) for a in node.sans.ip)])
        if node.certificate is not None:
            until = f", valid until {node.certificate.not_valid_after_utc:%Y-%m-%d}"
        else:
            until = ", to be signed"
        files = next(f for f in node.files if f.startswith("http."))
        echo(f"  {node.folder:<28} {files}: {names}{until}")
    if plan.mode == "csr":  # no CA here: the external one signs, and its certificate is theirs
        echo(f"  {result.client_folder:<28} sample client settings (add your CA's certificate)")
    else:
        echo(f"  {result.client_folder:<28} CA certificate and sample client settings")
    echo("next steps:")
    # The path as written (quoted for a shell): its bare name failed from another directory.
    echo(
        f"  1. unzip {shlex.quote(str(out))}; every folder has a README.txt saying what goes where"
    )
    step = 2
    if plan.mode == "csr":
        echo(f"  {step}. have your CA sign each http.csr and save the result as http.crt")
        step += 1
    server = "Elasticsearch node" if plan.profile == "elasticsearch" else "server"
    if plan.shared:  # one folder holds the certificate every node serves
        echo(
            f"  {step}. install {result.nodes[0].folder} on every {server}; add the sample settings"
        )
    else:
        echo(f"  {step}. install each node folder on its {server}; add the sample settings")
    if plan.mode == "csr":
        echo(f"  {step + 1}. give clients the certificate of the CA that signed the CSRs")
    else:
        echo(f"  {step + 1}. give clients the CA certificate in {result.client_folder}")
    if result.ca_folder:
        what = "ca/ca.key and ca/ca.p12" if plan.ca_password else "ca/ca.key"
        echo(f"  {step + 2}. store {what} safely offline, then delete the zip")
