"""``certctl acme eab|accounts …``: ACME External Account Binding keys and accounts on a server.

Requests go through :func:`certctl.cli._api.send_request` (``CERTCTL_URL``, ``CERTCTL_API_KEY``,
``CERTCTL_CA_CERT``), as ``certctl auth apikeys`` does; the HMAC key is printed once.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

import typer

from certctl.cli._api import (
    OUTPUT_OPTION,
    field_cell,
    group_help,
    not_empty,
    path_segment,
    print_answer,
    print_list,
    send_request,
    unexpected_response,
)
from certctl.cli._listing import Column
from certctl.cli.auth import iso_expiry

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["acme_app"]

_PATH = "/api/v1/acme/eab-keys"
_ACCOUNTS = "/api/v1/acme/accounts"
_ACCOUNT_STATUSES = ("valid", "deactivated")

acme_app = typer.Typer(
    help=group_help("The ACME endpoint's accounts and External Account Binding keys."),
    short_help="ACME accounts and EAB keys on the server at CERTCTL_URL.",
    no_args_is_help=True,
)
eab_app = typer.Typer(
    help=group_help(
        "External Account Binding keys: each lets one ACME account be made "
        "(the HMAC key is shown once, at creation)."
    ),
    short_help="EAB keys (the HMAC key is shown once, at creation).",
    no_args_is_help=True,
)
acme_app.add_typer(eab_app, name="eab")
accounts_app = typer.Typer(
    help=group_help(
        "ACME accounts: listed with what they ordered, and deactivated for good when their "
        "key leaks (their next request is refused)."
    ),
    short_help="ACME accounts (list, get, deactivate).",
    no_args_is_help=True,
)
acme_app.add_typer(accounts_app, name="accounts")


def _status(item: dict[str, Any], now: datetime) -> str:
    from certctl.cli._listing import is_past

    if item.get("revoked_at"):
        return "revoked"
    if item.get("account_id"):
        return "bound"
    return "expired" if is_past(item.get("expires_at"), now) else "unused"


def _columns() -> list[Column]:
    from certctl.cli._listing import date_and_days

    return [
        Column("ID", field_cell("id"), key=True),
        Column("NAME", field_cell("name"), label=True),
        Column("ACTOR", field_cell("actor_id")),
        Column("STATUS", _status),
        Column("ACCOUNT", lambda item, _now: str(item.get("account_id") or "-")),
        Column(
            "EXPIRES", lambda item, now: date_and_days(item.get("expires_at"), now, none="never")
        ),
    ]


@eab_app.command("create")
def eab_create(
    name: str = typer.Option(
        ..., "--name", callback=not_empty, help="What the key is for, e.g. the ACME client's host."
    ),
    expires_at: str = typer.Option(
        None,
        "--expires-at",
        callback=iso_expiry,
        help="ISO 8601 time after which it binds no account (without a zone, UTC).",
    ),
) -> None:
    """Mint an EAB key: id and HMAC key, printed once.

    The JSON answer goes to stdout; certbot's and lego's flags to stderr.
    """
    data = send_request("POST", _PATH, {"name": name, "expires_at": expires_at})
    if not isinstance(data, dict) or not isinstance(data.get("hmac_key"), str):
        raise unexpected_response(_PATH, "no hmac_key")
    print_answer(data)
    kid, key = shlex.quote(str(data.get("id"))), shlex.quote(data["hmac_key"])
    # KEY=VALUE: a base64url key starts with "-" one time in 64, and certbot's argparse
    # then took it for an option ("expected one argument").
    typer.echo(
        f"certbot: --eab-kid {kid} --eab-hmac-key={key}\n"
        f"lego: --eab --kid {kid} --hmac={key}\n"
        "(the HMAC key is not shown again; it binds one ACME account)",
        err=True,
    )


@eab_app.command("list")
def eab_list(output: str | None = OUTPUT_OPTION) -> None:
    """List EAB keys, never their HMAC key.

    On a terminal a table: id, name, minter, unused/bound/expired/revoked, account, expiry.
    """
    print_list(
        send_request("GET", _PATH), output, path=_PATH, columns=_columns(), empty="no EAB keys"
    )


@eab_app.command("revoke")
def eab_revoke(
    key_id: str = typer.Argument(..., callback=not_empty, metavar="ID", help="EAB key id."),
) -> None:
    """Revoke an EAB key and deactivate the account it bound.

    The key binds no more accounts; the account's next request is refused.
    """
    data = send_request("DELETE", f"{_PATH}/{path_segment(key_id)}")
    print_answer(data)
    account = data.get("account_id") if isinstance(data, dict) else None
    if isinstance(account, str) and account:
        typer.echo(
            f"the ACME account it bound, {account}, is deactivated: its next request is refused",
            err=True,
        )


def _account_columns() -> list[Column]:
    from certctl.cli._listing import timestamp

    return [
        Column("ID", field_cell("id"), key=True),
        Column("STATUS", field_cell("status")),
        Column("CONTACT", field_cell("contact"), label=True),
        Column("EAB KEY", field_cell("eab_key_id")),
        Column("ORDERS", field_cell("orders")),
        Column("CERTIFICATES", field_cell("certificates")),
        Column("CREATED", lambda item, _now: timestamp(item.get("created_at"))),
        Column("DEACTIVATED", _deactivated_cell),
    ]


def _deactivated_cell(item: dict[str, Any], _now: datetime) -> str:
    # Deactivated with no time: before certctl recorded it, its audit event gone (0032).
    from certctl.cli._listing import timestamp

    unknown = "unknown" if item.get("status") == "deactivated" else "-"
    return timestamp(item.get("deactivated_at"), none=unknown)


@accounts_app.command("list")
def accounts_list(
    status: str = typer.Option(None, "--status", help="valid or deactivated."),
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="Page size (1-500)."),
    cursor: str = typer.Option(None, "--cursor", help="next_cursor from a previous page."),
    output: str | None = OUTPUT_OPTION,
) -> None:
    """List ACME accounts, newest first (one page).

    On a terminal a table: id, status, contact, the EAB key that bound it, its orders and the
    certificates they got, when it was made and when it was deactivated; its last line, when
    there are more, is the command for the next page.
    """
    from certctl.cli._listing import next_page, no_empty_filter
    from certctl.spelling import did_you_mean

    no_empty_filter({"--status": status})
    if status is not None and status not in _ACCOUNT_STATUSES:
        # The server's words, before anything is sent: a usage error, not its 400.
        hint = did_you_mean(status, _ACCOUNT_STATUSES)
        meant = f"{hint} " if hint else ""
        raise typer.BadParameter(
            f"{status}: unknown status ({meant}{', '.join(_ACCOUNT_STATUSES)})",
            param_hint="--status",
        )
    data = send_request(
        "GET", _ACCOUNTS, params={"status": status, "limit": limit, "cursor": cursor}
    )
    print_list(
        data,
        output,
        path=_ACCOUNTS,
        columns=_account_columns(),
        empty="no ACME accounts match" if status is not None else "no ACME accounts",
        more=next_page(
            "ACME accounts", ["acme", "accounts", "list"], {"--status": status}, limit, output
        ),
    )


@accounts_app.command("get")
def accounts_get(
    account_id: str = typer.Argument(
        ..., callback=not_empty, metavar="ID", help="ACME account id."
    ),
) -> None:
    """Show one ACME account."""
    print_answer(send_request("GET", f"{_ACCOUNTS}/{path_segment(account_id)}"))


@accounts_app.command("deactivate")
def accounts_deactivate(
    account_id: str = typer.Argument(
        ..., callback=not_empty, metavar="ID", help="ACME account id."
    ),
    revoke_certificates: bool = typer.Option(
        False,
        "--revoke-certificates",
        help="Revoke its unrevoked certificates too (each audited, on its issuer's CRL).",
    ),
    reason: str = typer.Option(
        None,
        "--reason",
        help="With --revoke-certificates: keyCompromise, cessationOfOperation … "
        "(default: unspecified).",
    ),
) -> None:
    """Deactivate an ACME account for good (RFC 8555 7.3.6).

    Its next request is refused (unauthorized), its pending orders are cancelled, and its key
    makes no new account. Certificates it got stay valid unless --revoke-certificates is
    given. An account deactivated already is shown as it is (with --revoke-certificates,
    what of its certificates is still valid is revoked). A certificate the server would not
    revoke (keyCompromise of a key with more certificates than one revocation takes) is named
    on stderr, and the exit status is 1: the account is deactivated all the same.
    """
    if reason is not None and not revoke_certificates:
        raise typer.BadParameter("given only with --revoke-certificates", param_hint="--reason")
    if reason is not None:
        from certctl.cli._common import option_value
        from certctl.pki.revocation_reasons import check_reason

        # The server's rule, before anything is sent: a usage error (exit 2), not its 400,
        # as certs revoke has it.
        with option_value("--reason"):
            check_reason(reason)
    body = {"revoke_certificates": True, "reason": reason} if revoke_certificates else None
    path = f"{_ACCOUNTS}/{path_segment(account_id)}/deactivate"
    data = send_request("POST", path, body)
    print_answer(data)
    revoked = data.get("revoked_certificates") if isinstance(data, dict) else None
    count = len(revoked) if isinstance(revoked, list) else 0
    refused = data.get("not_revoked") if isinstance(data, dict) else None
    refused = [r for r in refused if isinstance(r, dict)] if isinstance(refused, list) else []
    also = f"; {count} certificate(s) revoked" if revoke_certificates else ""
    if refused:
        also += f", {len(refused)} not"
    typer.echo(
        f"ACME account {account_id} is deactivated: its next request is refused{also}", err=True
    )
    if refused:
        # A certificate left valid (a leaked key's, with keyCompromise) must not pass as done
        # in a script: each said on a line of its own, and exit 1 (the deactivation stands).
        for item in refused:
            typer.echo(
                f"certctl: error: certificate {item.get('id')} not revoked: {item.get('detail')}",
                err=True,
            )
        raise typer.Exit(1)
