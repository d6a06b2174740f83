"""``certctl apply -f`` and ``certctl services …``: managed TLS services on a server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from certctl.cli.client import (
    ENV_HELP,
    PRIVATE_KEY_PEM,
    RemoteError,
    _not_empty,
    _print,
    _request,
    _seg,
    _unexpected,
    _warn_about,
)

__all__ = ["APPLY_HELP", "apply_command", "services_app"]

services_app = typer.Typer(
    help=f"Managed TLS services: status, renewal and client trust.\n\n{ENV_HELP}",
    short_help="Managed TLS services at CERTCTL_URL: status, renewal, trust.",
    no_args_is_help=True,
)
clients_app = typer.Typer(
    help=f"Client certificates a service trusts.\n\n{ENV_HELP}",
    short_help="Client certificates a service trusts.",
    no_args_is_help=True,
)
services_app.add_typer(clients_app, name="clients")


APPLY_HELP = (
    "Create or update TLSService documents at CERTCTL_URL from FILE.\n\n"
    "All the documents are validated before any is sent.\n\n" + ENV_HELP
)


def apply_command(
    file: Path = typer.Option(
        ..., "--file", "-f", help="YAML with one or more TLSService documents ('-' for stdin)."
    ),
) -> None:
    """Create or update TLSService documents at CERTCTL_URL from FILE."""
    from certctl.cli._common import read_file
    from certctl.errors import InvalidRequest
    from certctl.services.tls_spec import parse_service_documents

    stdin = str(file) == "-"
    raw = _read_stdin() if stdin else read_file(file, "services file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{'stdin' if stdin else file}: not UTF-8 text") from None
    specs = parse_service_documents(text)
    for spec in specs:
        path = f"/api/v1/services/{_seg(spec.name)}"
        try:
            # Only to say what the PUT did, as kubectl does: created, configured or unchanged.
            before = _request("GET", path)
        except RemoteError:
            before = None  # not there yet, or the key may edit but not read services
        data = _request("PUT", path, spec.to_document())
        if not isinstance(data, dict):
            raise _unexpected(path, "not a TLSService")
        generation = data.get("generation")
        if isinstance(before, dict) and before.get("generation") == generation:
            changed = "unchanged"
        elif before is None and generation == 1:
            changed = "created"
        else:
            changed = "configured"
        typer.echo(f"tlsservice/{spec.name} {changed} (generation {generation})")


def _read_stdin() -> bytes:
    from certctl.cli._common import MAX_INPUT_BYTES
    from certctl.errors import InvalidRequest

    data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)  # bounded like every file input
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidRequest(f"stdin: services file is larger than {MAX_INPUT_BYTES >> 20} MiB")
    return data


def _status_line(item: dict[str, Any], width: int = 24) -> str:
    status = item.get("status", {})
    conditions = status.get("conditions", {})

    def flag(name: str) -> str:
        return "True" if conditions.get(name, {}).get("status") else "False"

    message = conditions.get("Failed", {}).get("message") or conditions.get("Ready", {}).get(
        "message", ""
    )
    serial = str(status.get("serial") or "-")
    serial = serial if len(serial) <= 16 else serial[:15] + "…"  # enough to see it change
    return (
        f"{item['name']:<{width}} {flag('Ready'):<6} {flag('Renewing'):<9} {flag('Failed'):<7} "
        f"{serial:<17} {_utc(status.get('not_after')):<21} "
        f"{_utc(status.get('next_renewal')):<21} {message}"
    )


def _utc(value: object) -> str:
    # The API's times are UTC ISO 8601 with an offset; shown to the second, with a Z.
    return f"{value[:19]}Z" if isinstance(value, str) and len(value) >= 19 else "-"


@services_app.command("status")
def status(
    name: str = typer.Argument(
        None, callback=_not_empty, metavar="NAME", help="One service (default: all)."
    ),
) -> None:
    """Conditions (Ready, Renewing, Failed), serial, NotAfter and next renewal (UTC)."""
    path = f"/api/v1/services/{_seg(name)}" if name else "/api/v1/services"
    data = _request("GET", path)
    items = [data] if name else data.get("items") if isinstance(data, dict) else None
    # Whatever answers at CERTCTL_URL may not be certctl: one line, not a KeyError.
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and isinstance(item.get("name"), str) for item in items
    ):
        raise _unexpected(path, "not a TLSService" if name else "no list of TLSServices")
    # Names run to 53 characters: the column widens so the others stay aligned.
    width = max([24, *(len(item["name"]) for item in items)])
    typer.echo(
        f"{'NAME':<{width}} {'READY':<6} {'RENEWING':<9} {'FAILED':<7} {'SERIAL':<17} "
        f"{'NOT AFTER':<21} {'NEXT RENEWAL':<21} MESSAGE"
    )
    for item in items:
        typer.echo(_status_line(item, width))


@services_app.command("list")
def list_services() -> None:
    """List services as JSON."""
    _print(_request("GET", "/api/v1/services"))


@services_app.command("get")
def get(
    name: str = typer.Argument(..., callback=_not_empty, metavar="NAME", help="Service name."),
) -> None:
    """Show a service's spec and status as JSON."""
    _print(_request("GET", f"/api/v1/services/{_seg(name)}"))


@services_app.command("delete")
def delete(
    name: str = typer.Argument(..., callback=_not_empty, metavar="NAME", help="Service name."),
) -> None:
    """Forget a service, its CA and its clients (delivered files stay; re-applied: a new CA)."""
    _request("DELETE", f"/api/v1/services/{_seg(name)}")
    typer.echo(f"tlsservice/{name} deleted")


@services_app.command("renew")
def renew(
    name: str = typer.Argument(..., callback=_not_empty, metavar="NAME", help="Service name."),
) -> None:
    """Reissue a service's certificate now."""
    _request("POST", f"/api/v1/services/{_seg(name)}/renew")
    typer.echo(f"tlsservice/{name} renewal requested")


@clients_app.command("add")
def clients_add(
    name: str = typer.Argument(..., callback=_not_empty, metavar="NAME", help="Service name."),
    cert: Path = typer.Option(..., "--cert", help="PEM file with client certificate(s) or CA(s)."),
) -> None:
    """Trust client certificates or CAs (PEM certificates only)."""
    from certctl.cli._common import read_file
    from certctl.errors import InvalidRequest

    data = read_file(cert, "certificate file")
    # Checked here, not only by the server: a private key must not leave this machine, and a
    # DER or PKCS#12 file would arrive as mangled text.
    if PRIVATE_KEY_PEM.search(data):
        raise InvalidRequest(
            f"{cert}: holds a private key; client trust takes certificates only (nothing was sent)"
        )
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise InvalidRequest(f"{cert}: no PEM certificate in it (convert DER or PKCS#12 to PEM)")
    pem = data.decode("ascii", "replace")
    answer = _request("POST", f"/api/v1/services/{_seg(name)}/clients", {"certificate_pem": pem})
    _warn_about(answer)
    _print(answer)


@clients_app.command("list")
def clients_list(
    name: str = typer.Argument(..., callback=_not_empty, metavar="NAME", help="Service name."),
) -> None:
    """List trusted client certificates."""
    _print(_request("GET", f"/api/v1/services/{_seg(name)}/clients"))


@clients_app.command("remove")
def clients_remove(
    name: str = typer.Argument(..., callback=_not_empty, metavar="NAME", help="Service name."),
    fingerprint: str = typer.Argument(
        ...,
        callback=_not_empty,
        metavar="FINGERPRINT",
        help="SHA-256 fingerprint (hex) from 'clients list'.",
    ),
) -> None:
    """Stop trusting a client certificate; takes effect at the next reconcile."""
    _request("DELETE", f"/api/v1/services/{_seg(name)}/clients/{_seg(fingerprint)}")
    typer.echo(f"removed client {fingerprint[:16]}… from {name}")
