"""``certctl auth …``: whoami, permissions, roles, actors and API keys on a certctl server.

Requests go through :func:`certctl.cli._api.send_request` (``CERTCTL_URL``, ``CERTCTL_API_KEY``,
``CERTCTL_CA_CERT``); answers are printed as JSON, lists as a table on a terminal.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from certctl.cli._api import (
    KEY_ID,
    OUTPUT_OPTION,
    field_cell,
    group_help,
    id_hint,
    not_empty,
    path_segment,
    print_answer,
    print_list,
    send_request,
    unexpected_response,
)
from certctl.cli._common import warn
from certctl.cli._listing import Column
from certctl.errors import CertctlError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

__all__ = ["auth_app", "iso_expiry"]


auth_app = typer.Typer(
    help=group_help("Manage roles, actors and API keys on a certctl server."),
    short_help="Roles, actors and API keys on the server at CERTCTL_URL.",
    no_args_is_help=True,
)
roles_app = typer.Typer(
    help=group_help("Roles: named permission sets."),
    short_help="Roles: named permission sets.",
    no_args_is_help=True,
)
actors_app = typer.Typer(
    help=group_help("Actors: users and machines holding roles."),
    short_help="Actors: users and machines holding roles.",
    no_args_is_help=True,
)
apikeys_app = typer.Typer(
    help=group_help("API keys (the value is shown once, at creation)."),
    short_help="API keys (the value is shown once, at creation).",
    no_args_is_help=True,
)
auth_app.add_typer(roles_app, name="roles")
auth_app.add_typer(actors_app, name="actors")
auth_app.add_typer(apikeys_app, name="apikeys")


def _no_blank(
    ctx: typer.Context, param: typer.CallbackParam, values: list[str] | None
) -> list[str] | None:
    """A repeatable --permission/--role, refused when one is blank, comma-separated lists split.

    ``--role "$ROLE"`` with ROLE unset must not be taken for "no roles", and the server would
    only answer "unknown role(s): " naming nothing; emptying the set has its own flag. No
    permission or role id holds a comma, so ``-p cert.read,cert.issue`` is two names, as
    ``--dns`` takes a list: sent whole, the server refused it naming the very permissions given.
    """
    if values and any(not v.strip() for v in values):
        emptied = ctx.info_name == "update" and param.name in ("permission", "role")
        hint = f" (--no-{param.name}s removes them all)" if emptied else ""
        raise typer.BadParameter(f"must not be empty{hint}")
    from certctl.cli._common import split_commas

    return split_commas(values) if values else values


def _known_permissions(permissions: list[str] | None) -> None:
    """Refuse a permission outside the catalogue before anything is sent, in the server's words.

    A usage error (exit 2), as any value the CLI can check itself; the server's 400 was a
    failure (exit 1).
    """
    from certctl.auth.permissions import PERMISSIONS
    from certctl.cli._common import UsageProblem
    from certctl.spelling import unknown_names

    unknown = sorted(set(permissions or ()) - set(PERMISSIONS))
    if unknown:
        refusal = unknown_names("permission", unknown, sorted(PERMISSIONS))
        raise UsageProblem(refusal.detail, "--permission")


def _update_body(
    option: str, values: list[str] | None, remove_all: bool, name: str | None
) -> dict[str, Any]:
    """The request body of ``roles update`` and ``actors update``.

    ``values`` is the new set (``--{option}``), ``remove_all`` empties it (``--no-{option}s``);
    the set's field is the option's plural (``permissions``, ``roles``), as in the API. Both
    at once, or nothing to change, is a usage error.
    """
    body: dict[str, Any] = {}
    if values and remove_all:
        raise typer.BadParameter(f"--{option} and --no-{option}s contradict each other")
    if values or remove_all:
        body[f"{option}s"] = values or []
    if name is not None:
        body["name"] = name
    if not body:
        raise typer.BadParameter(f"nothing to change: give --{option}, --no-{option}s or --name")
    return body


def _apikey_status(item: dict[str, Any], now: datetime) -> str:
    from certctl.cli._listing import is_past

    if item.get("revoked_at"):
        return "revoked"
    return "expired" if is_past(item.get("expires_at"), now) else "active"


def _apikey_columns() -> list[Column]:
    from certctl.cli._listing import date_and_days, timestamp

    return [
        Column("ID", field_cell("id"), key=True),
        Column("NAME", field_cell("name"), label=True),
        Column("ACTOR", field_cell("actor_id")),
        Column("STATUS", _apikey_status),
        Column(
            "EXPIRES", lambda item, now: date_and_days(item.get("expires_at"), now, none="never")
        ),
        Column("LAST USED", lambda item, _now: timestamp(item.get("last_used_at"), none="never")),
    ]


@auth_app.command("whoami")
def whoami() -> None:
    """Show the actor, roles and permissions your credentials give."""
    # The README's first curl line, for a user checking the CERTCTL_* settings with the CLI.
    answer = send_request("GET", "/api/v1/auth/whoami")
    print_answer(answer)
    # "roles" lists a client-cert mapping's typo like any role: say on stderr (stdout stays
    # the server's JSON) that it grants nothing. An older server sends no missing_roles.
    missing = answer.get("missing_roles") if isinstance(answer, dict) else None
    for role in missing if isinstance(missing, list) else ():
        if isinstance(role, str):
            warn(
                f"role {role} of this client certificate's mapping does not exist: it gives "
                "no permissions until a role of that name is created"
            )


@auth_app.command("permissions")
def permissions(output: str | None = OUTPUT_OPTION) -> None:
    """List the permissions a role can hold.

    The server's catalogue (needs auth.role.read), in the words `auth roles create -p` takes.
    On a terminal a table, one permission a line.
    """
    from certctl.cli._listing import wants_table

    path = "/api/v1/auth/permissions"
    data = send_request("GET", path)
    items = data.get("items") if isinstance(data, dict) else None
    if wants_table(output) and isinstance(items, list) and all(isinstance(p, str) for p in items):
        # The API lists names, not objects: one a row. Anything else is left to print_list,
        # which refuses it in one line.
        data = {"items": [{"permission": p} for p in items]}
    columns = [Column("PERMISSION", field_cell("permission"), key=True)]
    print_list(data, output, path=path, columns=columns, empty="no permissions")


# --- roles -------------------------------------------------------------------------------


def _constraints_cell(item: dict[str, Any], _now: datetime) -> str:
    """A role's constraints as a cell: ``issuers a, b; names *.x.example``, - for none."""
    from certctl.cli._api import cell_text

    constraints = item.get("constraints")
    if not isinstance(constraints, dict):
        return cell_text(constraints)
    shown = [
        f"{axis} {cell_text(constraints.get(axis))}"
        for axis in ("issuers", "names")
        if constraints.get(axis) is not None
    ]
    return "; ".join(shown) or "-"


_ALLOW_ISSUER_HELP = (
    "Issuer the role's cert.issue may issue from (repeatable, or a comma-separated list); "
    "without it: any issuer."
)
_ALLOW_NAME_HELP = (
    "Name the role's cert.issue may issue for: app.example.internal, *.apps.example.internal "
    "(any name below, wildcards too), an IP address or a network such as 10.0.0.0/8 "
    "(repeatable, or a comma-separated list); without it: any name."
)


def _constraints(issuers: list[str] | None, names: list[str] | None) -> dict[str, Any] | None:
    """The request's ``constraints`` from --allow-issuer/--allow-name; None when neither."""
    if not issuers and not names:
        return None
    return {"issuers": issuers or None, "names": names or None}


@roles_app.command("list")
def roles_list(output: str | None = OUTPUT_OPTION) -> None:
    """List roles.

    On a terminal a table: id, name, built in or not, permissions, constraints (the issuers
    and names the role's cert.issue may issue; - for any).
    """
    path = "/api/v1/auth/roles"
    columns = [
        Column("ID", field_cell("id"), key=True),
        Column("NAME", field_cell("name"), label=True),
        Column("BUILT IN", field_cell("builtin")),
        Column("PERMISSIONS", field_cell("permissions")),
        Column("CONSTRAINTS", _constraints_cell),
    ]
    print_list(send_request("GET", path), output, path=path, columns=columns, empty="no roles")


@roles_app.command("get")
def roles_get(
    role_id: str = typer.Argument(..., callback=not_empty, metavar="ROLE_ID", help="Role id."),
) -> None:
    """Show one role."""
    print_answer(send_request("GET", f"/api/v1/auth/roles/{path_segment(role_id)}"))


@roles_app.command("create")
def roles_create(
    role_id: str = typer.Argument(
        ..., callback=not_empty, metavar="ROLE_ID", help="Role id, e.g. r-prometheus."
    ),
    permission: list[str] = typer.Option(
        [],
        "--permission",
        "-p",
        metavar="PERMISSION",
        callback=_no_blank,
        help="Permission, e.g. metrics.read or cert.issue (repeatable, or a comma-separated "
        "list; 'certctl auth permissions' lists them).",
    ),
    name: str = typer.Option("", "--name", help="Display name."),
    allow_issuer: list[str] = typer.Option(
        [], "--allow-issuer", metavar="ID", callback=_no_blank, help=_ALLOW_ISSUER_HELP
    ),
    allow_name: list[str] = typer.Option(
        [], "--allow-name", metavar="PATTERN", callback=_no_blank, help=_ALLOW_NAME_HELP
    ),
) -> None:
    """Create a custom role.

    --allow-issuer and --allow-name limit what its cert.issue issues (a Vault PKI role's
    allowed_domains): one of a caller's roles must allow the issuer and every name.
    """
    _known_permissions(permission)
    body: dict[str, Any] = {"id": role_id, "name": name, "permissions": permission}
    constraints = _constraints(allow_issuer, allow_name)
    if constraints is not None:
        body["constraints"] = constraints
    print_answer(send_request("POST", "/api/v1/auth/roles", body))


@roles_app.command("update")
def roles_update(
    role_id: str = typer.Argument(..., callback=not_empty, metavar="ROLE_ID", help="Role id."),
    permission: list[str] = typer.Option(
        None,
        "--permission",
        "-p",
        metavar="PERMISSION",
        callback=_no_blank,
        help="New permission set, replacing the old one (repeatable, or a comma-separated list; "
        "'certctl auth permissions' lists them).",
    ),
    no_permissions: bool = typer.Option(
        False, "--no-permissions", help="Remove every permission (the role grants nothing)."
    ),
    name: str = typer.Option(None, "--name", help="New display name."),
    allow_issuer: list[str] = typer.Option(
        None,
        "--allow-issuer",
        metavar="ID",
        callback=_no_blank,
        help=f"{_ALLOW_ISSUER_HELP} Replaces the role's issuers; its names stay.",
    ),
    allow_name: list[str] = typer.Option(
        None,
        "--allow-name",
        metavar="PATTERN",
        callback=_no_blank,
        help=f"{_ALLOW_NAME_HELP} Replaces the role's names; its issuers stay.",
    ),
    no_constraints: bool = typer.Option(
        False,
        "--no-constraints",
        help="Remove the role's constraints (its cert.issue issues any name from any issuer).",
    ),
) -> None:
    """Change a custom role's name, permissions or constraints."""
    _known_permissions(permission)
    path = f"/api/v1/auth/roles/{path_segment(role_id)}"
    limited = bool(allow_issuer or allow_name)
    if limited and no_constraints:
        raise typer.BadParameter("--allow-issuer/--allow-name and --no-constraints contradict")
    if limited or no_constraints:
        body = (
            _update_body("permission", permission, no_permissions, name)
            if permission or no_permissions or name is not None
            else {}
        )
        if no_constraints:
            body["constraints"] = None
        else:
            # The axis not given stays as it is: read it, or --allow-name alone would lift
            # the role's issuer limit.
            current = send_request("GET", path)
            held = current.get("constraints") if isinstance(current, dict) else None
            held = held if isinstance(held, dict) else {}
            body["constraints"] = {
                "issuers": allow_issuer or held.get("issuers"),
                "names": allow_name or held.get("names"),
            }
    elif not (permission or no_permissions or name is not None):
        raise typer.BadParameter(
            "nothing to change: give --permission, --no-permissions, --name, --allow-issuer, "
            "--allow-name or --no-constraints"
        )
    else:
        body = _update_body("permission", permission, no_permissions, name)
    print_answer(send_request("PUT", path, body))


@roles_app.command("delete")
def roles_delete(
    role_id: str = typer.Argument(..., callback=not_empty, metavar="ROLE_ID", help="Role id."),
) -> None:
    """Delete a custom role."""
    send_request("DELETE", f"/api/v1/auth/roles/{path_segment(role_id)}")
    typer.echo(f"deleted role {role_id}")


# --- actors ------------------------------------------------------------------------------


@actors_app.command("list")
def actors_list(output: str | None = OUTPUT_OPTION) -> None:
    """List actors.

    On a terminal a table: id, name, roles, created.
    """
    from certctl.cli._listing import timestamp

    path = "/api/v1/auth/actors"
    columns = [
        Column("ID", field_cell("id"), key=True),
        Column("NAME", field_cell("name"), label=True),
        Column("ROLES", field_cell("roles")),
        Column("CREATED", lambda item, _now: timestamp(item.get("created_at"))),
    ]
    print_list(send_request("GET", path), output, path=path, columns=columns, empty="no actors")


@actors_app.command("get")
def actors_get(
    actor_id: str = typer.Argument(..., callback=not_empty, metavar="ACTOR_ID", help="Actor id."),
) -> None:
    """Show one actor."""
    print_answer(send_request("GET", f"/api/v1/auth/actors/{path_segment(actor_id)}"))


@actors_app.command("create")
def actors_create(
    actor_id: str = typer.Argument(
        ..., callback=not_empty, metavar="ACTOR_ID", help="Actor id, e.g. prometheus."
    ),
    role: list[str] = typer.Option(
        [],
        "--role",
        "-r",
        metavar="ROLE",
        callback=_no_blank,
        help="Role (repeatable, or a comma-separated list).",
    ),
    name: str = typer.Option("", "--name", help="Display name."),
) -> None:
    """Create an actor."""
    print_answer(
        send_request("POST", "/api/v1/auth/actors", {"id": actor_id, "name": name, "roles": role})
    )


@actors_app.command("update")
def actors_update(
    actor_id: str = typer.Argument(..., callback=not_empty, metavar="ACTOR_ID", help="Actor id."),
    role: list[str] = typer.Option(
        None,
        "--role",
        "-r",
        metavar="ROLE",
        callback=_no_blank,
        help="New role set, replacing the old one (repeatable, or a comma-separated list).",
    ),
    no_roles: bool = typer.Option(
        False, "--no-roles", help="Remove every role (its keys then grant nothing but whoami)."
    ),
    name: str = typer.Option(None, "--name", help="New display name."),
) -> None:
    """Rename an actor or replace its roles."""
    body = _update_body("role", role, no_roles, name)
    print_answer(send_request("PATCH", f"/api/v1/auth/actors/{path_segment(actor_id)}", body))


@actors_app.command("delete")
def actors_delete(
    actor_id: str = typer.Argument(..., callback=not_empty, metavar="ACTOR_ID", help="Actor id."),
) -> None:
    """Delete an actor (its keys stop working)."""
    send_request("DELETE", f"/api/v1/auth/actors/{path_segment(actor_id)}")
    typer.echo(f"deleted actor {actor_id}")


# --- API keys ----------------------------------------------------------------------------


@apikeys_app.command("list")
def apikeys_list(
    actor: str = typer.Option(None, "--actor", help="Only this actor's keys."),
    output: str | None = OUTPUT_OPTION,
) -> None:
    """List API keys (never their values).

    On a terminal a table: id, name, actor, active, expired or revoked, expiry, last use.
    """
    path = "/api/v1/auth/apikeys"
    print_list(
        send_request("GET", path, params={"actor_id": actor}),
        output,
        path=path,
        columns=_apikey_columns(),
        empty="no API keys",
    )


def _iso_time(value: str | None) -> str | None:
    """``--expires-at`` checked before the request.

    The server's refusal named its JSON field in pydantic's words (``expires_at: Input should
    be a valid datetime or date, input is too short``), not the option.
    """
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        # A well-formed date of no day (2027-02-29, no leap year; hour 25) says which field.
        if re.match(r"(year|month|day|hour|minute|second) ", str(exc)):
            raise typer.BadParameter(f"{value}: {exc}") from None
        raise typer.BadParameter(
            f"{value}: not an ISO 8601 date or time (e.g. 2027-01-01 or 2027-01-01T00:00:00Z)"
        ) from None
    # Without a zone, UTC, as `certctl verify --at` reads it (the API wants a zone).
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= datetime.now(UTC):
        # The server's words were "expires_at must be in the future". A time this clock
        # still sees ahead is the server's to judge (its clock decides).
        raise typer.BadParameter(f"{value}: in the past; a key must expire in the future")
    try:
        # Sent in UTC: an offset Python reads but the API's parser does not (seconds,
        # +05:30:30) would come back in pydantic's words, naming expires_at.
        when = when.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-14:00: past datetime.max in UTC
        raise typer.BadParameter(f"{value}: out of range (at most 9999-12-31T23:59:59Z)") from None
    return when.isoformat()


# ``--expires-at`` of every minted secret (``certctl acme eab create`` too).
iso_expiry = _iso_time


@apikeys_app.command("create")
def apikeys_create(
    actor_id: str = typer.Argument(
        ..., callback=not_empty, metavar="ACTOR_ID", help="Actor the key authenticates as."
    ),
    name: str = typer.Option(
        "",
        "--name",
        help="Key name, e.g. prometheus-v1: one live key of the actor per name (rotate to -v2).",
    ),
    expires_at: str = typer.Option(
        None,
        "--expires-at",
        callback=_iso_time,
        help="ISO 8601 expiry, e.g. 2027-01-01T00:00:00Z (without a zone, UTC: 2027-01-01).",
    ),
    # A str, not a Path: Path("./-") is Path("-"), and "./-" names the file "-".
    out: str = typer.Option(
        None,
        "--out",
        metavar="FILE",
        help="Write the key value to this file (0600) instead of into the JSON on stdout; "
        "with -, print only the key on stdout and the JSON (without the key) on stderr.",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
) -> None:
    """Mint an API key; its value is printed (or written) once."""
    from certctl.files import OutputSet

    to_stdout = out == "-"
    out_file = None if out is None or to_stdout else Path(out)
    if out_file is not None:
        # Before the request: a key minted for a file that is then refused is lost.
        pending = OutputSet(force=force)
        pending.add(out_file, b"")
        pending.check()
    path = "/api/v1/auth/apikeys"
    data = send_request(
        "POST", path, {"actor_id": actor_id, "name": name, "expires_at": expires_at}
    )
    if not isinstance(data, dict) or not isinstance(data.get("key_value"), str):
        raise unexpected_response(path, "no key_value")
    if to_stdout:
        # As every Unix tool reads "-": what --out FILE would hold, on stdout and alone there
        # (for "> file" or a pipe); the rest of the answer, with the id that revokes the key,
        # on stderr. Before, a file named "-" was written in the current directory.
        key_value = data.pop("key_value")
        typer.echo(json.dumps(data, indent=2), err=True)
        _key_to_stdout(data.get("id"), lambda: sys.stdout.write(key_value + "\n"))
        return
    if out_file is not None:
        outputs = OutputSet(force=force)
        outputs.add(out_file, (data.pop("key_value") + "\n").encode(), secret=True)
        try:
            outputs.commit()
        except CertctlError as exc:
            raise CertctlError(
                f"{exc.detail} (API key {data.get('id')} was created but not saved: "
                f"revoke it with 'certctl auth apikeys revoke {data.get('id')}')"
            ) from exc
        data["key_value_file"] = out  # as given: "-" alone would read as stdout
        print_answer(data)
        return
    _key_to_stdout(data.get("id"), lambda: print_answer(data))


def _key_to_stdout(key_id: object, write: Callable[[], object]) -> None:
    """Write a minted key to stdout, or say which key to revoke when stdout fails.

    The key exists once the server answered: a full disk behind ``> file`` or a closed stdout
    (``>&-``) lost it with "No space left on device" (or an internal error) and no word of
    the key id, so it stayed valid, unknown and unrevoked.
    """
    try:
        write()
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError) as exc:  # AttributeError: sys.stdout is None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "stdout is closed"
        raise CertctlError(
            f"cannot write the API key to stdout: {reason} (API key {key_id} was created but "
            f"not saved: revoke it with 'certctl auth apikeys revoke {key_id}')"
        ) from None


@apikeys_app.command("revoke")
def apikeys_revoke(
    key_id: str = typer.Argument(..., callback=not_empty, metavar="KEY_ID", help="Key id."),
) -> None:
    """Revoke an API key; it fails on its next use."""
    from certctl.auth.apikeys import parse_key

    parsed = parse_key(key_id.strip())
    if parsed is not None:
        # The whole key, secret included: send only its id (the secret would reach the
        # server's URL handling), and revoke it, since it is now in the shell history.
        key_id = parsed[0]
        typer.echo(
            f"note: that was a whole API key; revoking it by its id {key_id} "
            "(the key is in your shell history now: revoking it is right)",
            err=True,
        )
    hint = "KEY_ID is a key's id, as 'certctl auth apikeys list' shows it beside its name"
    with id_hint(key_id, KEY_ID, hint):
        print_answer(send_request("DELETE", f"/api/v1/auth/apikeys/{path_segment(key_id)}"))
