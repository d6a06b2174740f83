"""``certctl apply -f`` and ``certctl services …``: managed TLS services on a server."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from certctl.cli._api import (
    ENV_HELP,
    OUTPUT_OPTION,
    PRIVATE_KEY_PEM,
    RemoteError,
    cell_text,
    field_cell,
    not_empty,
    path_segment,
    print_answer,
    print_list,
    read_certificates_pem,
    send_request,
    unexpected_response,
    warn_about,
)
from certctl.cli._listing import Column, check_output, printable

if TYPE_CHECKING:
    from datetime import datetime

    from certctl.services.tls_spec import TLSServiceSpec

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
    "Nothing is applied unless every document passes: they are checked here, then by the "
    "server (a dry run: its permissions, target policy and conflicts). Should one still fail "
    "while applying (the server changed meanwhile, or only it sees that two documents share "
    "a target, e.g. through a symlink), the ones before it stay applied: a line per document "
    "says which, and the exit status is 1.\n\n" + ENV_HELP
)
_SERVICE = "/api/v1/services/{name}"
# The server's 409 for a target another service has (service_specs._check_targets_unique).
_TAKEN_BY = re.compile(r"\AHTTP 409: .* is already a target of service (\S+)\Z")


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
    source = "stdin" if stdin else str(file)
    raw = _read_stdin() if stdin else read_file(file, "services file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{source}: not UTF-8 text") from None
    try:
        specs = parse_service_documents(text)
    except InvalidRequest as exc:
        # Named as a missing or unreadable file is: apply runs over several files in scripts.
        raise InvalidRequest(f"{source}: {exc.detail}") from None
    _dry_run(specs)
    for index, spec in enumerate(specs):
        try:
            line = _apply(spec)
        except RemoteError as exc:
            # kubectl goes on with the next document and reports each; this stops at the
            # first failure (past the dry run: a change on the server meanwhile, or a clash
            # with a document applied before it) and says exactly which documents went in.
            _not_applied(specs[index:], unknown=exc.may_have_taken_effect)
            raise RemoteError(
                f"tlsservice/{spec.name}: {exc.detail}; {index} of {len(specs)} "
                "document(s) applied (one line each above)"
            ) from None
        except KeyboardInterrupt:
            _not_applied(specs[index:], unknown=True)
            raise
        typer.echo(line)


def _not_applied(specs: list[TLSServiceSpec], *, unknown: bool) -> None:
    """A line for each document not applied; the first may have been, when ``unknown``."""
    for i, spec in enumerate(specs):
        typer.echo(f"tlsservice/{spec.name} {'unknown' if unknown and i == 0 else 'not applied'}")


def _dry_run(specs: list[TLSServiceSpec]) -> None:
    """Have the server check every document without storing any; refuse the file if one fails.

    A server too old to offer the dry run would ignore ``?dry_run=true`` and store the
    document, so its OpenAPI description is asked first (as kubectl once did before a
    server-side dry run).
    """
    from certctl.cli._common import warn

    if len(specs) < 2:
        return  # one document is applied whole or not at all anyway
    if not _offers_dry_run():
        warn(
            "the server offers no dry run (an older certctl): the documents were checked here "
            "only, and one it refuses leaves the ones before it applied"
        )
        return
    numbers = {spec.name: number for number, spec in enumerate(specs, start=1)}
    for number, spec in enumerate(specs, start=1):
        path = _SERVICE.format(name=path_segment(spec.name))
        try:
            send_request("PUT", path, spec.to_document(), params={"dry_run": "true"})
        except RemoteError as exc:
            # Each dry run compares with the services stored now, not with the file: a target
            # the file moves from an earlier document's service to this one is still that
            # service's. Applied in order, the earlier document frees it first; if it does
            # not (or another target of this one is taken: the server names the first only),
            # this PUT is refused then, and the report says which documents went in.
            taken = _TAKEN_BY.search(exc.detail)
            holder = numbers.get(taken.group(1), number) if taken else number
            if holder < number:
                continue
            hint = (
                f" (document {holder} changes {taken.group(1)}: put it first)"
                if taken and holder > number
                else ""
            )
            raise RemoteError(
                f"document {number} (tlsservice/{spec.name}): {exc.detail}{hint}; "
                "nothing was applied"
            ) from None


def _offers_dry_run() -> bool:
    document = send_request("GET", "/api/v1/openapi.json")
    try:
        parameters = document["paths"][_SERVICE]["put"].get("parameters", [])
    except (KeyError, TypeError, AttributeError):
        return False
    return isinstance(parameters, list) and any(
        isinstance(p, dict) and p.get("in") == "query" and p.get("name") == "dry_run"
        for p in parameters
    )


def _apply(spec: TLSServiceSpec) -> str:
    """PUT one document; the line saying what it did (kubectl's created, configured, unchanged)."""
    path = _SERVICE.format(name=path_segment(spec.name))
    try:
        # Only to say what the PUT did: created, configured or unchanged.
        before = send_request("GET", path)
    except RemoteError:
        before = None  # not there yet, or the key may edit but not read services
    data = send_request("PUT", path, spec.to_document())
    if not isinstance(data, dict):
        error = unexpected_response(path, "not a TLSService")
        error.may_have_taken_effect = True  # a 2xx answered the PUT
        raise error
    generation = data.get("generation")
    if isinstance(before, dict) and before.get("generation") == generation:
        changed = "unchanged"
    elif before is None and generation == 1:
        changed = "created"
    else:
        changed = "configured"
    return f"tlsservice/{spec.name} {changed} (generation {generation})"


def _read_stdin() -> bytes:
    from certctl.cli._common import MAX_INPUT_BYTES
    from certctl.errors import InvalidRequest

    if sys.stdin is None:  # the descriptor is closed (`<&-`)
        raise InvalidRequest("stdin: standard input is closed: no services file to read")
    data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)  # bounded like every file input
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidRequest(f"stdin: services file is larger than {MAX_INPUT_BYTES >> 20} MiB")
    return data


# What the READY column and the message say of a service no reconcile pass has looked at.
_PENDING, _PENDING_MESSAGE = "Pending", "waiting for the first reconcile pass"


def _is_pending(item: dict[str, Any]) -> bool:
    """Whether no reconcile pass has run for the service yet (``status.phase`` Pending).

    A server from before ``phase`` says it as every pass does not: no condition stored.
    """
    status = item.get("status")
    if not isinstance(status, dict):
        return True
    if "phase" in status:
        return bool(status["phase"] == _PENDING)
    conditions = status.get("conditions")
    return not isinstance(conditions, dict) or not conditions


def _message(item: dict[str, Any]) -> str:
    """The MESSAGE of ``services status`` and ``services list``: one wording for both.

    Why it failed; else what the last pass said when Ready ("serving", "TLS disabled: plain
    HTTP", its warnings), which the list once left out, as if a Ready service had nothing
    to say; and until when ca.crt keeps the CA(s) this one replaced.
    """
    if _is_pending(item):
        return _PENDING_MESSAGE
    found = item.get("status")
    status: dict[str, Any] = found if isinstance(found, dict) else {}
    found = status.get("conditions")
    conditions: dict[str, Any] = found if isinstance(found, dict) else {}

    def said(name: str) -> str:
        condition = conditions.get(name)
        text = condition.get("message") if isinstance(condition, dict) else None
        return str(text) if text else ""

    message = said("Failed") or said("Ready")
    retired = status.get("retired_ca_until")
    if isinstance(retired, str):
        # Said where operators look: until then ca.crt also trusts the CA(s) this one replaced,
        # each until its own end, the last at this one (`services drop-retired-ca` ends that).
        kept = f"the replaced CA(s) stay in ca.crt until {_utc(retired)} at the latest"
        message = f"{message}; {kept}" if message else kept
    return message


def _status_line(item: dict[str, Any], width: int = 24, serial_width: int = 16) -> str:
    found = item.get("status")
    status: dict[str, Any] = found if isinstance(found, dict) else {}
    conditions = status.get("conditions") or {}
    pending = _is_pending(item)

    def flag(name: str) -> str:
        # Not looked at yet: neither True nor False (all False read as broken).
        if pending:
            return _PENDING if name == "Ready" else "-"
        return "True" if conditions.get(name, {}).get("status") else "False"

    # Whole: a serial is what users paste into other commands (certs get, revoke).
    serial = printable(str(status.get("serial") or "-"))
    # The message quotes the spec (a path, a command): escaped, as a table's cells are.
    message = printable(_message(item))
    name = printable(item["name"])
    return (
        f"{name:<{width}} {flag('Ready'):<7} {flag('Renewing'):<9} {flag('Failed'):<7} "
        f"{serial:<{serial_width}} {_utc(status.get('not_after')):<21} "
        f"{_utc(status.get('next_renewal')):<21} {message}"
    )


def _utc(value: object) -> str:
    # The API's times are UTC ISO 8601 with an offset; shown to the second, with a Z.
    return f"{value[:19]}Z" if isinstance(value, str) and len(value) >= 19 else "-"


# The list commands' -o and its check; the default stays the table, piped too, as this command
# always printed (scripts grep it), where a list command's default piped is its JSON.
_STATUS_OUTPUT: Any = typer.Option(
    None,
    "--output",
    "-o",
    metavar="table|json",
    callback=check_output,
    help="table (default, also when piped) or json (the server's answer as is, for jq).",
)


@services_app.command(
    "status", short_help="Ready (or Pending), Renewing, Failed, serial, NotAfter, next renewal."
)
def status(
    name: str = typer.Argument(
        None, callback=not_empty, metavar="NAME", help="One service (default: all)."
    ),
    output: str | None = _STATUS_OUTPUT,
) -> None:
    """Conditions (Ready, Renewing, Failed), serial, NotAfter and next renewal (UTC).

    A service no reconcile pass has looked at yet shows READY Pending (the others "-"):
    waiting for the first reconcile pass.
    """
    path = f"/api/v1/services/{path_segment(name)}" if name else "/api/v1/services"
    data = send_request("GET", path)
    if output == "json":
        print_answer(data)
        return
    items = [data] if name else data.get("items") if isinstance(data, dict) else None
    # Whatever answers at CERTCTL_URL may not be certctl: one line, not a KeyError.
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and isinstance(item.get("name"), str) for item in items
    ):
        raise unexpected_response(path, "not a TLSService" if name else "no list of TLSServices")
    if not items:
        # As `services list` says it: a lone header row read as a broken answer.
        typer.echo("no services")
        return
    # Names run to 53 characters, serials to 40 hex digits: the columns widen so the others
    # stay aligned.
    width = max([24, *(len(printable(item["name"])) for item in items)])
    serials = [printable(str((item.get("status") or {}).get("serial") or "-")) for item in items]
    serial_width = max([16, *(len(serial) for serial in serials)])
    typer.echo(
        f"{'NAME':<{width}} {'READY':<7} {'RENEWING':<9} {'FAILED':<7} "
        f"{'SERIAL':<{serial_width}} {'NOT AFTER':<21} {'NEXT RENEWAL':<21} MESSAGE"
    )
    for item in items:
        typer.echo(_status_line(item, width, serial_width))


def _condition(name: str) -> Any:
    def cell(item: dict[str, Any], _now: datetime) -> str:
        if _is_pending(item):
            return _PENDING if name == "Ready" else "-"
        status = item.get("status")
        conditions = status.get("conditions") if isinstance(status, dict) else None
        condition = conditions.get(name) if isinstance(conditions, dict) else None
        return "True" if isinstance(condition, dict) and condition.get("status") else "False"

    return cell


def _status_field(name: str) -> Any:
    def cell(item: dict[str, Any], now: datetime) -> str:
        from certctl.cli._listing import date_and_days

        status = item.get("status")
        value = status.get(name) if isinstance(status, dict) else None
        return date_and_days(value, now) if name == "not_after" else cell_text(value)

    return cell


def _target_count(item: dict[str, Any], _now: datetime) -> str:
    # "spec" is the whole TLSService document as applied; its targets are in its own "spec".
    document = item.get("spec")
    spec = document.get("spec") if isinstance(document, dict) else None
    if not isinstance(spec, dict):
        return "-"
    targets = spec.get("targets", [])
    return str(len(targets)) if isinstance(targets, list) else "-"


@services_app.command("list")
def list_services(output: str | None = OUTPUT_OPTION) -> None:
    """List services.

    On a terminal a table: name, Ready, Failed, serial, notAfter (the date, and the days
    left), the number of targets and the message services status shows (when Failed, why).
    """
    path = "/api/v1/services"
    columns = [
        Column("NAME", field_cell("name"), key=True),
        Column("READY", _condition("Ready")),
        Column("FAILED", _condition("Failed")),
        Column("SERIAL", _status_field("serial")),
        Column("NOT AFTER", _status_field("not_after")),
        Column("TARGETS", _target_count),
        Column("MESSAGE", lambda item, _now: _message(item)),
    ]
    print_list(send_request("GET", path), output, path=path, columns=columns, empty="no services")


@services_app.command("get")
def get(
    name: str = typer.Argument(..., callback=not_empty, metavar="NAME", help="Service name."),
) -> None:
    """Show a service's spec and status as JSON."""
    print_answer(send_request("GET", f"/api/v1/services/{path_segment(name)}"))


@services_app.command("delete", short_help="Forget a service, its CA and its clients.")
def delete(
    name: str = typer.Argument(..., callback=not_empty, metavar="NAME", help="Service name."),
) -> None:
    """Forget a service, its CA and its clients (delivered files stay; re-applied: a new CA)."""
    send_request("DELETE", f"/api/v1/services/{path_segment(name)}")
    typer.echo(f"tlsservice/{name} deleted")


@services_app.command("renew")
def renew(
    name: str = typer.Argument(..., callback=not_empty, metavar="NAME", help="Service name."),
) -> None:
    """Reissue a service's certificate now.

    Its own CA's certificate, or one from the CA (ca.crt + ca.key) in certificate.secretName;
    a tls.crt + tls.key served from that secret is renewed by whoever issued it (the request
    is dropped, and a warning says so).
    """
    answer = send_request("POST", f"/api/v1/services/{path_segment(name)}/renew")
    typer.echo(f"tlsservice/{name} renewal requested")
    warn_about(answer)


@services_app.command(
    "drop-retired-ca", short_help="Stop trusting a service's replaced CAs now (no overlap)."
)
def drop_retired_ca(
    name: str = typer.Argument(..., callback=not_empty, metavar="NAME", help="Service name."),
) -> None:
    """End the overlap of the replaced CAs: the next pass delivers ca.crt without them.

    When a service's CA is replaced by another (a new custom CA, or a switch to or from its
    own), ca.crt keeps the old CA after the new one for the CA renewal margin, so servers not
    reloaded yet stay trusted; replaced again within that time, it keeps each old CA (up to
    4). If an old CA was replaced because its key leaked, end that now: every old CA kept
    leaves ca.crt, as the one replaced first may be the one whose key leaked.
    """
    send_request("DELETE", f"/api/v1/services/{path_segment(name)}/retired-ca")
    typer.echo(f"tlsservice/{name}: every replaced CA leaves ca.crt at the next pass")


# The outputs the API serves (service_routes.PUBLIC_OUTPUTS) and the files each may hold:
# one no longer in the answer is removed from DIR with the rest (a ca.crt left behind would
# contradict the tls.crt of a custom certificate served without one).
_PUBLIC_OUTPUTS = {"certs-public": ("tls.crt", "ca.crt"), "client-trust": ("ca.crt",)}
_KEY_OUTPUTS = {
    "certs-internal": "it holds the service's key, which goes to its targets only",
    "ca-internal": "it holds the service CA's key, which leaves the server nowhere",
}
# A file name of the answer: written into DIR, never beside or below it.
_FILE_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def _public_output(value: str) -> str:
    if value in _PUBLIC_OUTPUTS:
        return value
    choices = " or ".join(_PUBLIC_OUTPUTS)
    if value in _KEY_OUTPUTS:
        raise typer.BadParameter(f"{value}: not served ({_KEY_OUTPUTS[value]}); give {choices}")
    raise typer.BadParameter(f"{printable(value[:60])}: give {choices}")


def _out_directory(value: Path | None) -> Path | None:
    if value is not None and str(value) == "-":
        # Several files cannot go to one stdout: a directory named "-" would be made instead.
        raise typer.BadParameter(
            "takes a directory, not - (without --out the JSON is printed: "
            """jq -r '.data["ca.crt"]')"""
        )
    return value


def _public_files(path: str, data: Any) -> dict[str, str]:
    """The answer's ``data``: PEM files to write into DIR.

    Whatever answers at CERTCTL_URL may not be certctl: no key may land in a 0644 file, and
    no name may reach beside or below DIR.

    Raises:
        RemoteError: the answer is not such files (nothing is written).
    """
    files = data.get("data") if isinstance(data, dict) else None
    why = None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        why = "no data of PEM files"
    elif not files:
        why = "no files"
    elif bad := [n for n in files if not isinstance(n, str) or not _FILE_NAME.match(n)]:
        why = f"{printable(repr(bad[0])[:60])} is not a file name"
    elif any(PRIVATE_KEY_PEM.search(v.encode()) for v in files.values()):
        why = "holds a private key"
    if why is not None:
        raise unexpected_response(path, f"{why} (nothing was written)")
    return files  # type: ignore[return-value]  # checked above: str names, str values


@services_app.command(
    "outputs", short_help="Write a service's public output (certs-public, client-trust)."
)
def outputs(
    name: str = typer.Argument(..., callback=not_empty, metavar="NAME", help="Service name."),
    output: str = typer.Argument(
        ...,
        callback=_public_output,
        metavar="OUTPUT",
        help="certs-public (tls.crt and ca.crt: what a client of the service trusts) or "
        "client-trust (ca.crt: the client certificates and CAs the service trusts).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        callback=_out_directory,
        metavar="DIR",
        help="Write the output's files into DIR (0644; made if missing). Without it, print "
        "the server's JSON ({name, data: {file: PEM}}).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files in --out."),
) -> None:
    """Fetch a public output of a service: certificates only, never a key.

    certs-public holds tls.crt (the service certificate and its chain) and ca.crt (its CA:
    hand it to the service's clients; a custom certificate without one has no ca.crt);
    client-trust, with client.authentication, holds ca.crt: the client bundle the service
    trusts. certs-internal and ca-internal hold keys: they go to the targets only.

    Files in DIR are replaced all together or not at all, and only with --force; e.g.
    --out quickstart-public writes quickstart-public/tls.crt and quickstart-public/ca.crt.
    """
    from certctl.files import OutputSet

    path = f"/api/v1/services/{path_segment(name)}/outputs/{output}"
    data = send_request("GET", path)
    if out is None:
        print_answer(data)
        return
    files = _public_files(path, data)
    written = OutputSet(force=force)
    for file_name in sorted(files):
        written.add(out / file_name, files[file_name].encode())
    for gone in _PUBLIC_OUTPUTS[output]:
        if gone not in files:
            written.remove(out / gone)
    paths = written.commit()
    given = data.get("name")
    label = given if isinstance(given, str) else output
    typer.echo(f"{printable(label)}: wrote {', '.join(str(p) for p in paths)}")


@clients_app.command("add")
def clients_add(
    name: str = typer.Argument(..., callback=not_empty, metavar="NAME", help="Service name."),
    cert: Path = typer.Option(
        ..., "--cert", help="File with client certificate(s) or CA(s): PEM, or DER."
    ),
) -> None:
    """Trust client certificates or CAs (PEM or DER; never a key)."""
    pem = read_certificates_pem(cert, "client trust")
    answer = send_request(
        "POST", f"/api/v1/services/{path_segment(name)}/clients", {"certificate_pem": pem}
    )
    warn_about(answer)
    print_answer(answer)
    if isinstance(answer, dict) and answer.get("items") == []:
        # Adding again is no error (the server answers 200, not 201), but '"items": []'
        # alone read as if the file had been ignored or the add had failed.
        typer.echo(
            printable(
                f"note: {name} already trusts every certificate in {cert}; nothing was added"
            ),
            err=True,
        )


@clients_app.command("list")
def clients_list(
    name: str = typer.Argument(..., callback=not_empty, metavar="NAME", help="Service name."),
    output: str | None = OUTPUT_OPTION,
) -> None:
    """List trusted client certificates.

    On a terminal a table: fingerprint, subject, CA or not, added.
    """
    from certctl.cli._listing import timestamp

    columns = [
        Column("FINGERPRINT", field_cell("fingerprint"), key=True),
        Column("SUBJECT", field_cell("subject"), label=True),
        Column("CA", field_cell("is_ca")),
        Column("ADDED", lambda item, _now: timestamp(item.get("added_at"))),
    ]
    print_list(
        send_request("GET", f"/api/v1/services/{path_segment(name)}/clients"),
        output,
        path="/api/v1/services/{name}/clients",
        columns=columns,
        empty=f"no client certificates trusted by {name}",
    )


@clients_app.command("remove", short_help="Stop trusting a client certificate.")
def clients_remove(
    name: str = typer.Argument(..., callback=not_empty, metavar="NAME", help="Service name."),
    fingerprint: str = typer.Argument(
        ...,
        callback=not_empty,
        metavar="FINGERPRINT",
        help="SHA-256 fingerprint (hex) from 'clients list'.",
    ),
) -> None:
    """Stop trusting a client certificate; takes effect at the next reconcile."""
    send_request(
        "DELETE", f"/api/v1/services/{path_segment(name)}/clients/{path_segment(fingerprint)}"
    )
    typer.echo(f"removed client {fingerprint[:16]}… from {name}")
