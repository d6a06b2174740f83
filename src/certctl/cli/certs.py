"""``certctl certs …``: issue, import, list, get, revoke and renew certificates on a server.

Requests go through :func:`certctl.cli._api.send_request` (``CERTCTL_URL``, ``CERTCTL_API_KEY``,
``CERTCTL_CA_CERT``). The offline ``certctl cert issue`` (files only) is ``cert.py``.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from certctl.cli._api import (
    CERT_ID,
    OUTPUT_OPTION,
    PRIVATE_KEY_PEM,
    RemoteError,
    cell_text,
    field_cell,
    group_help,
    id_hint,
    issuer_hint,
    not_empty,
    path_segment,
    print_answer,
    print_list,
    read_certificates_pem,
    send_request,
    status_cell,
    unexpected_response,
    warn_about,
)
from certctl.cli._common import KEY_TYPES_HELP
from certctl.cli._listing import Column, next_page, no_empty_filter
from certctl.errors import CertctlError, Conflict, InvalidRequest

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["certs_app"]
certs_app = typer.Typer(
    help=group_help("Issue, import, list, get, revoke and renew certificates on a server."),
    short_help="Issue, list, revoke, renew certificates at CERTCTL_URL.",
    no_args_is_help=True,
)


def _cert_id_hint(cert_id: str) -> AbstractContextManager[None]:
    # `certs issue --out web-1`, then `certs renew web-1`: the directory's name is no id.
    return id_hint(
        cert_id,
        CERT_ID,
        "CERT_ID is a certificate's id, as 'certctl certs list' shows it; "
        f"'certctl certs list -q {cert_id}' finds certificates by name",
    )


def _certificate_name(item: dict[str, Any], _now: datetime) -> str:
    """The common name, or the first SAN of a certificate without one."""
    if item.get("common_name"):
        return cell_text(item["common_name"])
    sans = item.get("sans")
    names = [n for values in sans.values() for n in values] if isinstance(sans, dict) else []
    return cell_text(names[:1])


def _certificate_columns() -> list[Column]:
    from certctl.cli._listing import date_and_days

    return [
        Column("ID", field_cell("id"), key=True),
        Column("COMMON NAME", _certificate_name, label=True),
        Column("STATUS", status_cell),
        Column("NOT AFTER", lambda item, now: date_and_days(item.get("not_after"), now)),
        Column("ISSUER", field_cell("issuer")),
        Column("PROFILE", field_cell("profile")),
    ]


# The --status values the server takes (services.certificates), named before a request.
_STATUSES = ("active", "expiring", "expired", "revoked")


def _leaf_profile(value: str) -> str:
    """``--profile`` checked before the request, in the offline ``cert issue``'s words.

    The server's refusal named its JSON field in pydantic's (``profile: Input should be
    'server', 'client' or 'server+client'``).
    """
    from certctl.pki.profiles import LEAF_PROFILES

    # In any case, as offline (`--profile Client`); the API takes the lower-case name only.
    name = value.strip().lower()
    if name not in LEAF_PROFILES:
        raise typer.BadParameter(
            f"{value}: unknown profile (choose one of {', '.join(LEAF_PROFILES)})"
        )
    return name


@certs_app.command("issue")
def certs_issue(
    cn: str = typer.Option(
        "",
        "--cn",
        help="Common name; may be left out when a SAN is given (the subject is then empty).",
    ),
    dns: list[str] = typer.Option(
        [], "--dns", metavar="DNS", help="DNS SAN (repeatable, or a comma-separated list)."
    ),
    ip: list[str] = typer.Option(
        [], "--ip", metavar="IP", help="IP SAN (repeatable, or a comma-separated list)."
    ),
    email: list[str] = typer.Option(
        [],
        "--email",
        metavar="EMAIL",
        help="E-mail SAN, e.g. for a person's client certificate (repeatable, or a "
        "comma-separated list).",
    ),
    uri: list[str] = typer.Option(
        [],
        "--uri",
        metavar="URI",
        help="URI SAN, e.g. spiffe://example.org/ns/NS/sa/ACCOUNT (repeatable; not split at "
        "commas, which a URI may hold).",
    ),
    csr: Path = typer.Option(
        None, "--csr", help="Sign this CSR (PEM or DER) instead of generating a key."
    ),
    issuer: str = typer.Option("default", "--issuer", help="Issuer id."),
    profile: str = typer.Option(
        "server", "--profile", callback=_leaf_profile, help="server, client or server+client."
    ),
    validity: str = typer.Option("90D", "--validity", help="Lifetime, e.g. 90D."),
    key_type: str = typer.Option(
        "ec-p256",
        "--key-type",
        help=f"Key type for server-side generation: {KEY_TYPES_HELP}.",
    ),
    out: Path = typer.Option(
        None, "--out", help="Write tls.crt, tls.key, ca.crt into this directory."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Overwrite existing files in --out (with --csr, also remove a tls.key of another "
        "key).",
    ),
) -> None:
    """Issue a certificate (server-side key generation, or from --csr).

    Prints the server's answer as JSON; without --out it holds the generated private key
    (private_key_pem), which the server does not keep: use --out to get tls.key as a 0600 file.
    """
    from certctl.cli._common import option_value, split_names
    from certctl.pki import KeyType, SubjectAltNames, common_name_dn, parse_duration

    # As `cert issue` and `csr create` read them (certutil's lists): the same words issue the
    # same names offline and on the server. A comma is in no DNS name, IP or e-mail address
    # certctl takes, but may be in a URI (https://example.org/a,b): --uri only repeats.
    with option_value():  # the message names the entry
        dns, ip, email = split_names(dns), split_names(ip), split_names(email)
    if csr is None and not (cn or dns or ip or email or uri):
        # Before, the server's words for its JSON fields: "give csr, or common_name/…".
        raise typer.BadParameter("give --cn, --dns, --ip, --email or --uri (or --csr FILE)")
    # Checked here as the offline commands check them, and by the same parsers the server
    # uses: a value that does not parse is a usage error (exit 2), not the server's 400
    # (exit 1, a failure), and nothing is sent.
    with option_value("--validity"):
        parse_duration(validity)
    if csr is None:
        with option_value("--key-type"):
            KeyType.parse(key_type)
        if cn:
            with option_value("--cn"):
                common_name_dn(cn)
        with option_value():  # the message names the value, of --dns, --ip, --email or --uri
            SubjectAltNames.parse(dns=dns, ip=ip, email=email, uri=uri)
    body: dict[str, Any] = {"issuer": issuer, "profile": profile, "validity": validity}
    if csr is not None:
        # The CSR carries the names and the key; the server refuses fields it would ignore.
        ignored = [
            option
            for option, given in (
                ("--cn", cn),
                ("--dns", dns),
                ("--ip", ip),
                ("--email", email),
                ("--uri", uri),
                ("--key-type", key_type != "ec-p256"),
            )
            if given
        ]
        if ignored:
            raise typer.BadParameter(
                f"{', '.join(ignored)}: not used with --csr (the CSR carries the names and key)",
                param_hint="'--csr'",
            )
        body["csr"] = _csr_pem(csr)
    else:
        body |= {"common_name": cn, "dns_names": dns, "ip_addresses": ip, "key_type": key_type}
        # Sent only when given: a server from before these fields refuses them as unknown,
        # and `certs issue --cn … --dns …` must keep working against it.
        body |= {"email_addresses": email} if email else {}
        body |= {"uris": uri} if uri else {}
    if out is not None:
        # Before _check_out: the --force it asks for must not be what loses the key.
        _keep_pending_key(out, _public_key_of(body["csr"].encode()) if csr is not None else None)
    _check_out(out, key=csr is None, force=force)
    if (
        csr is not None
        and out is not None
        and not force
        and _holds_another_key(out, body["csr"].encode())
    ):
        # Removed with the write (_save_issued), which needs --force as an overwrite does;
        # found out after the request, the certificate would be issued but not saved.
        raise Conflict(
            f"{out / 'tls.key'} is the key of another certificate, not the CSR's: --force "
            "removes it with the certificate it went with"
        )
    ca_pem = ""
    with issuer_hint(issuer):
        if out is not None:
            # Fetched before issuing too: a failure here (an unknown issuer, a proxy's error)
            # must not come after the certificate was issued.
            ca_pem = _issuer_root_pem(issuer)
        data = send_request("POST", "/api/v1/certificates", body)
    warn_about(data)
    if out is not None:
        data = _save_issued(data, out, ca_pem, force=force, path="/api/v1/certificates")
    print_answer(data)


def _check_out(out: Path | None, *, key: bool, force: bool) -> None:
    """Refuse ``--out -`` and files ``--out`` cannot take, before anything is issued.

    The server returns a generated key once, so an output refused afterwards would leave an
    issued certificate whose key is gone.
    """
    from certctl.files import OutputSet

    if out is None:
        return
    if str(out) == "-":
        # Three files cannot go to one stdout: a directory named "-" was created instead.
        raise typer.BadParameter(
            "takes a directory, not - (without --out the answer, with the generated key, "
            "is printed on stdout as JSON)",
            param_hint="'--out'",
        )
    outputs = OutputSet(force=force)
    for name in ("tls.crt", "tls.key", "ca.crt") if key else ("tls.crt", "ca.crt"):
        outputs.add(out / name, b"")
    outputs.check()


def _public_key_of(pem: bytes) -> object | None:
    """The public key of ``pem`` (a CSR or certificate); None when it cannot be read."""
    from cryptography import x509

    try:
        if b"CERTIFICATE REQUEST-----" in pem:
            return x509.load_pem_x509_csr(pem).public_key()
        return x509.load_pem_x509_certificate(pem).public_key()
    except ValueError:
        return None


def _holds_another_key(out: Path, pem: bytes) -> bool:
    """Whether ``out/tls.key`` is a key other than the one of ``pem`` (a CSR or certificate).

    False when it cannot tell: no such file, an encrypted key (``openssl req`` without
    ``-nodes`` writes one beside its CSR), an unreadable ``pem``.
    """
    from certctl.cli._common import holds_another_key

    public_key = _public_key_of(pem)
    return public_key is not None and holds_another_key(out / "tls.key", public_key)


def _keep_pending_key(out: Path, written_key: object | None) -> None:
    """Refuse, even with --force, to write a certificate of another key than a waiting tls.key.

    ``certs renew OLD --out web --force`` for ``certs issue --csr web/tls.csr`` would remove
    the key ``csr create`` made (or overwrite it with a generated one): a key no certificate
    was issued for yet, which nothing could bring back. ``written_key`` is the public key of
    the certificate to be written, None when the server makes a new one.
    """
    import shlex

    from certctl.cli._common import pending_csr_key

    pending = pending_csr_key(out)
    if pending is None or pending.public_key == written_key:
        return
    command = shlex.join(
        ["certctl", "certs", "issue", "--csr", str(out / "tls.csr"), "--out", str(out)]
    )
    # --force for the tls.crt (and ca.crt) of the old certificate, still there.
    force = " --force" if (out / "tls.crt").exists() or (out / "ca.crt").exists() else ""
    lose = f"writing another certificate into {out} would lose it (nothing was issued)"
    raise Conflict(
        f"{pending.refusal(out, lose)}; '{command}{force}' issues the CSR's, or give "
        f"another --out{pending.way_out(out)}"
    )


def _issuer_root_pem(issuer: str) -> str:
    """The issuer's root, for ca.crt (fetched before issuing: see ``_root_pem``)."""
    path = f"/api/v1/issuers/{path_segment(issuer)}/ca.pem"
    return _root_pem(
        send_request("GET", path, params={"chain": "true"}, accept="application/x-pem-file"),
        path,
    )


def _save_issued(data: Any, out: Path, ca_pem: str, *, force: bool, path: str) -> dict[str, Any]:
    """Write an issue or renew answer into ``out``; the answer without its PEM, plus ``out``.

    And ``files``, the paths written, as ``ca create`` and ``cert issue`` name theirs: a
    certificate from --csr has no tls.key, which ``out`` alone did not say. In the JSON,
    not as lines after it, so that stdout stays one document for jq. And ``removed``, when
    a ``tls.key`` of another certificate (one whose key the server made, written there
    before) was removed: left beside a certificate of the requester's key, it made a pair
    nginx and Java refuse, and a reader of ``files`` could not tell.
    """
    from certctl.files import OutputSet

    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("certificate_pem", "chain_pem")
    ):
        raise unexpected_response(path, "no certificate_pem")
    outputs = OutputSet(force=force)
    outputs.add(out / "tls.crt", (data["certificate_pem"] + data["chain_pem"]).encode())
    if data.get("private_key_pem"):
        outputs.add(out / "tls.key", data.pop("private_key_pem").encode(), secret=True)
    elif _holds_another_key(out, data["certificate_pem"].encode()):
        # Removed together with the writes (and put back if they fail). --force was needed
        # before the request for it: _check_out (issue --csr) or an existing tls.key (renew).
        outputs.remove(out / "tls.key")
    outputs.add(out / "ca.crt", ca_pem.encode())
    try:
        written = outputs.commit()
    except CertctlError as exc:
        # The certificate exists on the server now; its generated key is not kept there.
        raise CertctlError(
            f"{exc.detail} (certificate {data.get('id')} was issued but not saved: "
            f"revoke it with 'certctl certs revoke {data.get('id')}')"
        ) from exc
    answer = {k: v for k, v in data.items() if not k.endswith("_pem")}
    answer |= {"out": str(out), "files": [str(path) for path in written]}
    return answer | ({"removed": [str(p) for p in outputs.removed]} if outputs.removed else {})


def _root_pem(chain_pem: Any, path: str) -> str:
    """The last certificate of an issuer's ``ca.pem?chain=true``: the root clients trust.

    ca.crt is the trust anchor, as ``cert issue`` and the managed services write it; the
    issuer's own certificate, for an intermediate, is already in tls.crt, and OpenSSL (nginx,
    curl, Python) refuses a chain that ends at an intermediate given as the CA file.
    """
    from cryptography import x509

    from certctl.pki import certs_to_pem

    try:
        certs = x509.load_pem_x509_certificates(str(chain_pem).encode())
    except ValueError:
        certs = []
    if not certs:
        raise unexpected_response(path, "no PEM certificate")
    return certs_to_pem(certs[-1:]).decode()


def _csr_pem(path: Path) -> str:
    """The CSR in ``path`` (PEM or DER, as ``csr sign`` takes) as the PEM the API takes.

    Loaded here, and only the CSR is sent: a private key given by mistake (``tls.key`` for
    ``tls.csr``, or a file holding both) never leaves the machine, and DER is converted.
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    from certctl.cli._common import read_file
    from certctl.pki import load_csr

    data = read_file(path, "CSR")
    if PRIVATE_KEY_PEM.search(data) and b"CERTIFICATE REQUEST-----" not in data:
        raise InvalidRequest(f"{path}: holds a private key, not a CSR (nothing was sent)")
    try:
        request = load_csr(data)
    except CertctlError as exc:
        raise exc.with_detail(f"{path}: {exc.detail}") from exc
    return request.public_bytes(Encoding.PEM).decode("ascii")


@certs_app.command("list")
def certs_list(
    status: str = typer.Option(None, "--status", help="active, expiring, expired or revoked."),
    issuer: str = typer.Option(None, "--issuer", help="Issuer id."),
    expiring_within: str = typer.Option(
        None,
        "--expiring-within",
        # Not "active": --status's word for those ending in more than 30 days, while this
        # lists the expiring and expired ones too (the server's filter: not revoked, not
        # renewed, notAfter at most now plus the time).
        help="Only certificates neither revoked nor renewed that end within this time from "
        "now, expired ones too, e.g. 30D.",
    ),
    query: str = typer.Option(
        None,
        "--query",
        "-q",
        help="Substring, in either case (not a pattern), of the common name, subject, serial "
        "or a SAN (DNS, IP, e-mail, URI).",
    ),
    # The first spelling, named after the API's `q` parameter; hidden, kept for old scripts.
    q: str = typer.Option(None, "--q", hidden=True),
    limit: int = typer.Option(50, "--limit", min=1, max=500, help="Page size (1-500)."),
    cursor: str = typer.Option(None, "--cursor", help="next_cursor from a previous page."),
    output: str | None = OUTPUT_OPTION,
) -> None:
    """List certificates (one page; follow next_cursor for more).

    On a terminal a table: id, common name, status, notAfter (the date, and the days left),
    issuer and profile; its last line, when there are more, is the command for the next page.
    """
    from certctl.cli._common import option_value
    from certctl.pki import parse_duration
    from certctl.spelling import did_you_mean

    no_empty_filter({"--status": status, "--issuer": issuer, "--expiring-within": expiring_within})
    if status is not None and status not in _STATUSES:
        # The server's words, before anything is sent: a usage error, not its 400. `Revoked`
        # or `revokd`: the one meant first, as the server names it.
        hint = did_you_mean(status, _STATUSES)
        meant = f"{hint} " if hint else ""
        raise typer.BadParameter(
            f"{status}: unknown status ({meant}{', '.join(_STATUSES)})", param_hint="--status"
        )
    if expiring_within is not None:
        with option_value("--expiring-within"):
            parse_duration(expiring_within)
    path = "/api/v1/certificates"
    search = query if query is not None else q
    filters = {
        "--status": status,
        "--issuer": issuer,
        "--expiring-within": expiring_within,
        "--query": search,
    }

    data = send_request(
        "GET",
        path,
        params={
            "status": status,
            "issuer": issuer,
            "expiring_within": expiring_within,
            "q": search,
            "limit": limit,
            "cursor": cursor,
        },
    )
    chosen = any(value is not None for value in filters.values())
    print_list(
        data,
        output,
        path=path,
        columns=_certificate_columns(),
        empty="no certificates match" if chosen else "no certificates",
        more=next_page("certificates", ["certs", "list"], filters, limit, output),
    )
    items = data.get("items") if isinstance(data, dict) else None
    if issuer is not None and not items and cursor is None:
        _warn_if_no_issuer(issuer)


def _warn_if_no_issuer(issuer: str) -> None:
    """Say on stderr when ``--issuer`` names no issuer.

    The server lists nothing for it, as for an issuer without certificates: a mistyped id
    looked like an empty issuer.
    """
    from certctl.cli._api import RemoteError
    from certctl.cli._common import warn

    try:
        with issuer_hint(issuer):
            path = f"/api/v1/issuers/{path_segment(issuer)}/ca.pem"  # public: any caller
            send_request("GET", path, accept="application/x-pem-file", raw=True)
    except RemoteError as exc:
        if exc.detail.startswith(f"HTTP 404: issuer {issuer} not found"):
            warn(f"{exc.detail.removeprefix('HTTP 404: ')}: --issuer {issuer} matches nothing")
    except CertctlError:
        pass  # the listing was answered; a failure of this check changes nothing of it


@certs_app.command("get")
def certs_get(
    cert_id: str = typer.Argument(
        ..., callback=not_empty, metavar="CERT_ID", help="Certificate id."
    ),
    pem: bool = typer.Option(False, "--pem", help="Print the certificate and chain as PEM."),
) -> None:
    """Show one certificate."""
    accept = "application/x-pem-file" if pem else None
    with _cert_id_hint(cert_id):
        print_answer(
            send_request("GET", f"/api/v1/certificates/{path_segment(cert_id)}", accept=accept)
        )


@certs_app.command("revoke")
def certs_revoke(
    cert_id: str = typer.Argument(
        ..., callback=not_empty, metavar="CERT_ID", help="Certificate id."
    ),
    reason: str = typer.Option(
        None,
        "--reason",
        help="keyCompromise, superseded, cessationOfOperation … (default: unspecified).",
    ),
) -> None:
    """Revoke a certificate."""
    if reason is not None:
        from certctl.cli._common import option_value
        from certctl.pki.revocation_reasons import check_reason

        # The server's rule, before anything is sent: a usage error (exit 2), not its 400.
        with option_value("--reason"):
            check_reason(reason)
    with _cert_id_hint(cert_id):
        path = f"/api/v1/certificates/{path_segment(cert_id)}/revoke"
        print_answer(send_request("POST", path, {"reason": reason}))


@certs_app.command("renew")
def certs_renew(
    cert_id: str = typer.Argument(
        ..., callback=not_empty, metavar="CERT_ID", help="Certificate id."
    ),
    validity: str = typer.Option(None, "--validity", help="New lifetime (default: as before)."),
    out: Path = typer.Option(
        None,
        "--out",
        help="Write tls.crt, ca.crt and, when the server made a new key, tls.key into this "
        "directory (reads the certificate first: needs cert.read too).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files in --out."),
) -> None:
    """Issue a successor with the same names and profile.

    Prints the server's answer as JSON. A certificate whose key the server generated gets a
    fresh key, returned once (private_key_pem): use --out to get tls.key as a 0600 file.
    """
    # A waiting CSR key (see _keep_pending_key) is refused below, even with --force.
    from certctl.cli._common import option_value, pending_csr_key
    from certctl.pki import parse_duration

    if validity is not None:
        with option_value("--validity"):  # a usage error, before anything is sent
            parse_duration(validity)
    pending = out is not None and pending_csr_key(out) is not None
    if not pending:
        _check_out(out, key=True, force=force)
    ca_pem = ""
    if out is not None:
        # Its issuer, for ca.crt, found before renewing: see certs issue.
        with _cert_id_hint(cert_id):
            current = send_request("GET", f"/api/v1/certificates/{path_segment(cert_id)}")
        if not isinstance(current, dict) or not isinstance(current.get("issuer"), str):
            raise unexpected_response("/api/v1/certificates/{id}", "no issuer")
        if pending:
            # The renewal keeps the key of a CSR-issued certificate; the server makes a new
            # one for the others (a key it made is not in the CSR: never equal).
            _keep_pending_key(out, _public_key_of(str(current.get("certificate_pem")).encode()))
            _check_out(out, key=True, force=force)
        ca_pem = _issuer_root_pem(current["issuer"])
    path = f"/api/v1/certificates/{path_segment(cert_id)}/renew"
    with _cert_id_hint(cert_id):
        data = send_request("POST", path, {"validity": validity})
    warn_about(data)
    if out is not None:
        data = _save_issued(data, out, ca_pem, force=force, path="/api/v1/certificates/{id}/renew")
    print_answer(data)


@certs_app.command("import")
def certs_import(
    files: list[Path] = typer.Argument(
        ...,
        metavar="FILE",
        help="Files of certificates: PEM (one or more each, a bundle too) or DER; no keys.",
    ),
    skip_existing: bool = typer.Option(
        False,
        "--skip-existing",
        help="Pass over certificates recorded already (same CA, same serial), each named on "
        "stderr, instead of refusing them all: a migration run again records what is new.",
    ),
    output: str | None = OUTPUT_OPTION,
) -> None:
    """Record certificates an issuer issued before it was imported.

    For a CA imported from cfssl or openssl (certctl issuers import): the certificates it
    issued before are then listed, counted in the metrics, revocable and put on its CRL. All
    or nothing: the first one the server cannot record is named, and none is recorded (with
    --skip-existing, those recorded already are skipped). On a terminal a table of what was
    recorded (id, common name, status, notAfter, issuer).
    """
    pem = [read_certificates_pem(path, "certs import") for path in files]
    path_ = "/api/v1/certificates/import"
    body: dict[str, Any] = {"certificate_pem": "\n".join(pem)}
    if skip_existing:
        body["skip_existing"] = True  # only when asked: an older server refuses the field
    try:
        data = send_request("POST", path_, body)
    except RemoteError as exc:
        if exc.http_status != 413:
            raise
        raise _too_large(exc, files, body) from None
    _say_skipped(data)
    print_list(
        data,
        output,
        path=path_,
        columns=_certificate_columns(),
        empty="no certificates recorded",
    )


def _say_skipped(data: Any) -> None:
    """One stderr line per certificate skipped as recorded already (--skip-existing)."""
    import sys

    from certctl.cli._listing import printable

    skipped = data.get("skipped") if isinstance(data, dict) else None
    for item in skipped if isinstance(skipped, list) else []:
        if not isinstance(item, dict):
            continue
        line = (
            f"certctl: skipped certificate {item.get('certificate')} ({item.get('subject')}, "
            f"serial {item.get('serial')}): already recorded as {item.get('id')} "
            f"(issuer {item.get('issuer')})"
        )
        sys.stderr.write(printable(line) + "\n")


_OVER_LIMIT = re.compile(r"over (\d+) bytes")


def _too_large(exc: RemoteError, files: list[Path], body: dict[str, Any]) -> RemoteError:
    """The server's 413 for an import, with what to do: fewer certificates per command.

    Every FILE goes into one request, so splitting the bundle into files is not enough:
    each part is imported by a command of its own (all or nothing per command).
    """
    import json

    sent = len(json.dumps(body).encode())
    count = str(body["certificate_pem"]).count("-----BEGIN CERTIFICATE-----")
    found = _OVER_LIMIT.search(str(exc))
    limit = int(found.group(1)) if found else 1024 * 1024
    shown = f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"
    # 90 % of the limit: certificates differ in size, and a part just under it is no help.
    per_part = max(1, count * limit * 9 // (sent * 10))
    what = str(files[0]) if len(files) == 1 else f"these {len(files)} files"
    return RemoteError(
        f"{what}: {count} certificates, {sent} bytes as sent, over the server's {shown} "
        f"request limit (HTTP 413): split them and run certctl certs import once per part of "
        f"at most about {per_part} certificates (--skip-existing lets a part run again); "
        "nothing was recorded",
        http_status=413,
    )
