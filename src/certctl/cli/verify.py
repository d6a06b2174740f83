"""``certctl verify``: chain, name, purpose and validity check against a trust bundle."""

from __future__ import annotations

from pathlib import Path

import typer

from certctl.cli._common import read_material, utcnow

__all__ = ["verify_command"]


def verify_command(
    cert: Path = typer.Argument(
        ..., help="Certificate to verify (PEM/DER; extra certificates count as intermediates)."
    ),
    ca: Path = typer.Option(..., "--ca", help="Trust bundle: root CA certificate(s)."),
    untrusted: Path = typer.Option(None, "--untrusted", help="Intermediate certificates."),
    hostname: str = typer.Option(
        None, "--hostname", help="DNS name or IP address the certificate must match."
    ),
    purpose: str = typer.Option("server", "--purpose", help="server or client."),
) -> None:
    """Verify a certificate the way a TLS client or server would."""
    from certctl.errors import InvalidRequest
    from certctl.pki import verify_certificate

    if purpose not in ("server", "client"):
        raise typer.BadParameter(f"{purpose}: choose server or client", param_hint="--purpose")
    if hostname and purpose == "client":
        raise typer.BadParameter("--hostname applies to --purpose server")
    leaf_certs = read_material(cert, what="certificate").certificates
    if not leaf_certs:
        raise InvalidRequest(f"{cert}: holds no certificate")
    trust = read_material(ca, what="CA bundle").certificates
    if not trust:
        raise InvalidRequest(f"{ca}: holds no certificate")
    extra = read_material(untrusted, what="intermediates").certificates if untrusted else []
    result = verify_certificate(
        leaf_certs[0],
        trust=trust,
        untrusted=[*leaf_certs[1:], *extra],
        hostname=hostname,
        purpose=purpose,
        now=utcnow(),
    )
    path = " <- ".join(c.subject.rfc4514_string() for c in result.chain)
    checked = f" for {result.name}" if hostname else ""
    typer.echo(f"{cert}: OK ({purpose}{checked}): {path}")
