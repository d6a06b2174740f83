"""``certctl audit``: the server's audit log (``GET /api/v1/audit``), read-only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from certctl.cli._api import (
    OUTPUT_OPTION,
    cell_text,
    field_cell,
    group_help,
    print_list,
    send_request,
)
from certctl.cli._listing import Column, next_page, no_empty_filter

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["audit_app"]

audit_app = typer.Typer(
    help=group_help(
        "Read the server's audit log (needs audit.read, e.g. the built-in r-auditor role)."
    ),
    short_help="Read the audit log at CERTCTL_URL (audit.read).",
    no_args_is_help=True,
)


def _at(item: dict[str, Any], _now: datetime) -> str:
    # To the second, not timestamp()'s minute: events of one minute must read apart.
    from datetime import UTC
    from datetime import datetime as _datetime

    value = item.get("at")
    try:
        when = _datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None:
        return str(value) if value is not None else "-"
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _key(item: dict[str, Any], _now: datetime) -> str:
    # The credential field (apikey <key id>): the actor alone does not say which of its keys
    # made a call, what an auditor asks after a leak. --credential takes the id as shown.
    value = item.get("credential")
    if isinstance(value, str) and value.startswith("apikey "):
        return value.removeprefix("apikey ")
    return cell_text(value)


def _columns() -> list[Column]:
    return [
        Column("ID", field_cell("id"), key=True),
        Column("TIME", _at),
        Column("ACTOR", field_cell("actor"), label=True),
        Column("KEY", _key),
        Column("ACTION", field_cell("action")),
        Column("TARGET", field_cell("target")),
        Column("OUTCOME", field_cell("outcome")),
        Column("SOURCE", field_cell("source")),
        Column("DETAIL", field_cell("detail")),
    ]


def _instant(option: str, value: str | None) -> datetime | None:
    """``--since``/``--until`` as the server reads them (ISO 8601, UTC without a zone).

    Checked before the request: a time that does not parse is a usage error (exit 2), where
    the server's 400 was a failure (exit 1). Empty is refused before (no_empty_filter).
    """
    from datetime import UTC
    from datetime import datetime as _datetime

    if not value:
        return None
    try:
        when = _datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value}: not an ISO 8601 time (e.g. 2026-12-05T15:00:00Z)", param_hint=option
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise typer.BadParameter(f"{value}: out of range", param_hint=option) from None


@audit_app.command("list", short_help="List audit events, newest first, with filters.")
def audit_list(
    actor: str = typer.Option(None, "--actor", help="Actor id, exactly (anonymous, system …)."),
    credential: str = typer.Option(
        None,
        "--credential",
        help="Credential, exactly: apikey <key id>, or the key id alone (the KEY column).",
    ),
    action: str = typer.Option(
        None, "--action", help="Action, exactly: certificate.issue, auth.failure …"
    ),
    outcome: str = typer.Option(
        None, "--outcome", help="success, denied, or missing, invalid, expired, revoked."
    ),
    target: str = typer.Option(
        None, "--target", help="Substring of the target, in either case (an id, a serial)."
    ),
    since: str = typer.Option(
        None, "--since", help="At or after this ISO 8601 time (UTC without a zone)."
    ),
    until: str = typer.Option(
        None, "--until", help="Before this ISO 8601 time (UTC without a zone)."
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="Page size (1-500)."),
    cursor: str = typer.Option(None, "--cursor", help="next_cursor from a previous page."),
    output: str | None = OUTPUT_OPTION,
) -> None:
    """List audit events, newest first (one page; follow next_cursor for more).

    On a terminal a table: id, time (UTC), actor, the API key that made the call, action,
    target, outcome, source address and detail; its last line, when there are more, is the
    command for the next page. Piped, the server's JSON: `jq -c '.items[]'` makes it JSON
    lines.
    """
    import re

    filters = {
        "--actor": actor,
        "--credential": credential,
        "--action": action,
        "--outcome": outcome,
        "--target": target,
        "--since": since,
        "--until": until,
    }
    no_empty_filter(filters)
    after, before = _instant("--since", since), _instant("--until", until)
    if after is not None and before is not None and after >= before:
        # As the server refuses them, before a request: options that contradict each other.
        raise typer.BadParameter(
            f"--since {since} is not before --until {until}: no event can match (--since is "
            "inclusive, --until exclusive)"
        )
    if credential is not None and re.fullmatch(r"[0-9a-f]{16}", credential):
        credential = f"apikey {credential}"  # as the table's KEY column shows it
        filters["--credential"] = credential  # and so in the next page's command
    if credential is not None:
        from certctl.auth.apikeys import check_audit_credential
        from certctl.cli._common import option_value

        # The server's rule and words, before a request: a usage error (exit 2), not its 400.
        with option_value():
            check_audit_credential(credential, "--credential ")
    path = "/api/v1/audit"

    data = send_request(
        "GET",
        path,
        params={
            "actor": actor,
            "credential": credential,
            "action": action,
            "outcome": outcome,
            "target": target,
            "since": since,
            "until": until,
            "limit": limit,
            "cursor": cursor,
        },
    )
    chosen = any(value is not None for value in filters.values())
    print_list(
        data,
        output,
        path=path,
        columns=_columns(),
        empty="no events match" if chosen else "no events",
        more=next_page("events", ["audit", "list"], filters, limit, output),
    )
