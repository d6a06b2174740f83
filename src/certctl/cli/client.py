"""API client commands: ``certctl auth roles|actors|apikeys …`` and ``certctl certs …``.

They read ``CERTCTL_URL``, ``CERTCTL_API_KEY`` and ``CERTCTL_CA_CERT`` (or the matching flags)
and print JSON, so they compose with ``jq``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from certctl.errors import CertctlError, InvalidRequest

__all__ = ["auth_app", "certs_app"]

auth_app = typer.Typer(
    help="Manage roles, actors and API keys on a certctl server.", no_args_is_help=True
)
roles_app = typer.Typer(help="Roles: named permission sets.", no_args_is_help=True)
actors_app = typer.Typer(help="Actors: users and machines holding roles.", no_args_is_help=True)
apikeys_app = typer.Typer(
    help="API keys (the value is shown once, at creation).", no_args_is_help=True
)
auth_app.add_typer(roles_app, name="roles")
auth_app.add_typer(actors_app, name="actors")
auth_app.add_typer(apikeys_app, name="apikeys")
certs_app = typer.Typer(
    help="Issue, list, get, revoke and renew certificates on a server.", no_args_is_help=True
)


class RemoteError(CertctlError):
    """The server answered with an error (its problem detail is shown)."""

    title = "Server error"


def _request(
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    accept: str | None = None,
) -> Any:
    import httpx

    url = os.environ.get("CERTCTL_URL", "https://127.0.0.1:8443").rstrip("/")
    key = os.environ.get("CERTCTL_API_KEY")
    ca = os.environ.get("CERTCTL_CA_CERT")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if accept:
        headers["Accept"] = accept
    verify: Any = True
    if ca:
        if not Path(ca).is_file():
            raise InvalidRequest(f"CERTCTL_CA_CERT={ca}: file not found")
        import ssl

        verify = ssl.create_default_context(cafile=ca)
    try:
        with httpx.Client(verify=verify, timeout=30) as client:
            response = client.request(
                method,
                url + path,
                json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers=headers,
            )
    except httpx.HTTPError as exc:
        raise RemoteError(f"cannot reach {url}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text[:200]
        raise RemoteError(f"HTTP {response.status_code}: {detail}")
    if response.status_code == 204:
        return None
    if accept and "json" not in accept:
        return response.text
    return response.json()


def _print(data: Any) -> None:
    if isinstance(data, str):
        sys.stdout.write(data)
    elif data is not None:
        typer.echo(json.dumps(data, indent=2))


# --- roles -------------------------------------------------------------------------------


@roles_app.command("list")
def roles_list() -> None:
    """List roles."""
    _print(_request("GET", "/api/v1/auth/roles"))


@roles_app.command("get")
def roles_get(role_id: str = typer.Argument(..., help="Role id.")) -> None:
    """Show one role."""
    _print(_request("GET", f"/api/v1/auth/roles/{role_id}"))


@roles_app.command("create")
def roles_create(
    role_id: str = typer.Argument(..., help="Role id, e.g. r-prometheus."),
    permission: list[str] = typer.Option(
        [], "--permission", "-p", metavar="PERMISSION", help="Permission (repeatable)."
    ),
    name: str = typer.Option("", "--name", help="Display name."),
) -> None:
    """Create a custom role."""
    _print(
        _request(
            "POST", "/api/v1/auth/roles", {"id": role_id, "name": name, "permissions": permission}
        )
    )


@roles_app.command("update")
def roles_update(
    role_id: str = typer.Argument(..., help="Role id."),
    permission: list[str] = typer.Option(
        None, "--permission", "-p", metavar="PERMISSION", help="New permission set (repeatable)."
    ),
    name: str = typer.Option(None, "--name", help="New display name."),
) -> None:
    """Change a custom role's name or permissions."""
    body: dict[str, Any] = {}
    if permission:
        body["permissions"] = permission
    if name is not None:
        body["name"] = name
    _print(_request("PUT", f"/api/v1/auth/roles/{role_id}", body))


@roles_app.command("delete")
def roles_delete(role_id: str = typer.Argument(..., help="Role id.")) -> None:
    """Delete a custom role."""
    _request("DELETE", f"/api/v1/auth/roles/{role_id}")
    typer.echo(f"deleted role {role_id}")


# --- actors ------------------------------------------------------------------------------


@actors_app.command("list")
def actors_list() -> None:
    """List actors."""
    _print(_request("GET", "/api/v1/auth/actors"))


@actors_app.command("get")
def actors_get(actor_id: str = typer.Argument(..., help="Actor id.")) -> None:
    """Show one actor."""
    _print(_request("GET", f"/api/v1/auth/actors/{actor_id}"))


@actors_app.command("create")
def actors_create(
    actor_id: str = typer.Argument(..., help="Actor id, e.g. prometheus."),
    role: list[str] = typer.Option([], "--role", "-r", metavar="ROLE", help="Role (repeatable)."),
    name: str = typer.Option("", "--name", help="Display name."),
) -> None:
    """Create an actor."""
    _print(_request("POST", "/api/v1/auth/actors", {"id": actor_id, "name": name, "roles": role}))


@actors_app.command("update")
def actors_update(
    actor_id: str = typer.Argument(..., help="Actor id."),
    role: list[str] = typer.Option(
        None, "--role", "-r", metavar="ROLE", help="New role set (repeatable)."
    ),
    name: str = typer.Option(None, "--name", help="New display name."),
) -> None:
    """Rename an actor or replace its roles."""
    body: dict[str, Any] = {}
    if role:
        body["roles"] = role
    if name is not None:
        body["name"] = name
    _print(_request("PATCH", f"/api/v1/auth/actors/{actor_id}", body))


@actors_app.command("delete")
def actors_delete(actor_id: str = typer.Argument(..., help="Actor id.")) -> None:
    """Delete an actor (its keys stop working)."""
    _request("DELETE", f"/api/v1/auth/actors/{actor_id}")
    typer.echo(f"deleted actor {actor_id}")


# --- API keys ----------------------------------------------------------------------------


@apikeys_app.command("list")
def apikeys_list(
    actor: str = typer.Option(None, "--actor", help="Only this actor's keys."),
) -> None:
    """List API keys (never their values)."""
    _print(_request("GET", "/api/v1/auth/apikeys", params={"actor_id": actor}))


@apikeys_app.command("create")
def apikeys_create(
    actor_id: str = typer.Argument(..., help="Actor the key authenticates as."),
    name: str = typer.Option("", "--name", help="Key name, e.g. prometheus-v1."),
    expires_at: str = typer.Option(
        None, "--expires-at", help="ISO 8601 expiry, e.g. 2027-01-01T00:00:00Z."
    ),
    out: Path = typer.Option(
        None, "--out", help="Write the key value to this file (0600) instead of stdout."
    ),
) -> None:
    """Mint an API key; its value is printed (or written) once."""
    data = _request(
        "POST",
        "/api/v1/auth/apikeys",
        {"actor_id": actor_id, "name": name, "expires_at": expires_at},
    )
    if out is not None:
        from certctl.files import OutputSet

        outputs = OutputSet()
        outputs.add(out, (data.pop("key_value") + "\n").encode(), secret=True)
        outputs.commit()
        data["key_value_file"] = str(out)
    _print(data)


@apikeys_app.command("revoke")
def apikeys_revoke(key_id: str = typer.Argument(..., help="Key id.")) -> None:
    """Revoke an API key; it fails on its next use."""
    _print(_request("DELETE", f"/api/v1/auth/apikeys/{key_id}"))


# --- certificates ------------------------------------------------------------------------


@certs_app.command("issue")
def certs_issue(
    cn: str = typer.Option("", "--cn", help="Common name."),
    dns: list[str] = typer.Option([], "--dns", metavar="DNS", help="DNS SAN (repeatable)."),
    ip: list[str] = typer.Option([], "--ip", metavar="IP", help="IP SAN (repeatable)."),
    csr: Path = typer.Option(None, "--csr", help="Sign this CSR instead of generating a key."),
    issuer: str = typer.Option("default", "--issuer", help="Issuer id."),
    profile: str = typer.Option("server", "--profile", help="server, client or server+client."),
    validity: str = typer.Option("90D", "--validity", help="Lifetime, e.g. 90D."),
    key_type: str = typer.Option(
        "ec-p256", "--key-type", help="Key type for server-side generation."
    ),
    out: Path = typer.Option(
        None, "--out", help="Write tls.crt, tls.key, ca.crt into this directory."
    ),
) -> None:
    """Issue a certificate (server-side key generation, or from --csr)."""
    from certctl.cli._common import read_file

    body: dict[str, Any] = {"issuer": issuer, "profile": profile, "validity": validity}
    if csr is not None:
        body["csr"] = read_file(csr, "CSR").decode("ascii", "replace")
    else:
        body |= {"common_name": cn, "dns_names": dns, "ip_addresses": ip, "key_type": key_type}
    data = _request("POST", "/api/v1/certificates", body)
    if out is not None:
        from certctl.files import OutputSet

        outputs = OutputSet()
        outputs.add(out / "tls.crt", (data["certificate_pem"] + data["chain_pem"]).encode())
        if data.get("private_key_pem"):
            outputs.add(out / "tls.key", data.pop("private_key_pem").encode(), secret=True)
        ca_pem = _request(
            "GET", f"/api/v1/issuers/{issuer}/ca.pem", accept="application/x-pem-file"
        )
        outputs.add(out / "ca.crt", ca_pem.encode())
        outputs.commit()
        data = {k: v for k, v in data.items() if not k.endswith("_pem")} | {"out": str(out)}
    _print(data)


@certs_app.command("list")
def certs_list(
    status: str = typer.Option(None, "--status", help="active, expiring, expired or revoked."),
    issuer: str = typer.Option(None, "--issuer", help="Issuer id."),
    expiring_within: str = typer.Option(None, "--expiring-within", help="e.g. 30D."),
    q: str = typer.Option(None, "--q", help="Search in common name, subject or serial."),
    limit: int = typer.Option(50, "--limit", help="Page size (1-500)."),
    cursor: str = typer.Option(None, "--cursor", help="next_cursor from a previous page."),
) -> None:
    """List certificates (one page; follow next_cursor for more)."""
    _print(
        _request(
            "GET",
            "/api/v1/certificates",
            params={
                "status": status,
                "issuer": issuer,
                "expiring_within": expiring_within,
                "q": q,
                "limit": limit,
                "cursor": cursor,
            },
        )
    )


@certs_app.command("get")
def certs_get(
    cert_id: str = typer.Argument(..., help="Certificate id."),
    pem: bool = typer.Option(False, "--pem", help="Print the certificate and chain as PEM."),
) -> None:
    """Show one certificate."""
    if pem:
        _print(_request("GET", f"/api/v1/certificates/{cert_id}", accept="application/x-pem-file"))
    else:
        _print(_request("GET", f"/api/v1/certificates/{cert_id}"))


@certs_app.command("revoke")
def certs_revoke(
    cert_id: str = typer.Argument(..., help="Certificate id."),
    reason: str = typer.Option(
        None, "--reason", help="keyCompromise, superseded, cessationOfOperation …"
    ),
) -> None:
    """Revoke a certificate."""
    _print(_request("POST", f"/api/v1/certificates/{cert_id}/revoke", {"reason": reason}))


@certs_app.command("renew")
def certs_renew(
    cert_id: str = typer.Argument(..., help="Certificate id."),
    validity: str = typer.Option(None, "--validity", help="New lifetime (default: as before)."),
) -> None:
    """Issue a successor with the same names and profile."""
    _print(_request("POST", f"/api/v1/certificates/{cert_id}/renew", {"validity": validity}))
