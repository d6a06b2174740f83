"""API client commands: ``certctl auth roles|actors|apikeys …`` and ``certctl certs …``.

They read ``CERTCTL_URL``, ``CERTCTL_API_KEY`` and ``CERTCTL_CA_CERT`` and print JSON, so they
compose with ``jq`` (the list commands print a table instead on a terminal: ``--output``).
``services.py`` (``certctl services …``, ``certctl apply``) sends its requests through
:func:`_request` too.

Error messages built here never hold the API key or anything of ``CERTCTL_URL`` but its scheme,
host, port and path: the URL is refused with a user name, password, query or fragment, and every
text that came from an exception or from the server is passed through :func:`_redact`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import typer

from certctl.cli._listing import OUTPUT_HELP, Column, check_output
from certctl.errors import CertctlError, InvalidRequest, NotFound, cause_chain
from certctl.hosts import is_loopback

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Sequence
    from datetime import datetime

__all__ = ["ENV_HELP", "PRIVATE_KEY_PEM", "auth_app", "certs_app"]

DEFAULT_URL = "https://127.0.0.1:8443"
# Shown in the help of every command group that talks to a server (and of `certctl` itself).
ENV_HELP = (
    f"Talks to the server at CERTCTL_URL (default {DEFAULT_URL}) with the API key in "
    "CERTCTL_API_KEY, trusting the CA file in CERTCTL_CA_CERT (e.g. certctl-data/tls/ca.crt). "
    "http:// is refused beyond loopback unless CERTCTL_ALLOW_INSECURE=1. A client certificate "
    "(tls.client-auth on the server) comes from CERTCTL_CLIENT_CERT and CERTCTL_CLIENT_KEY. "
    "CERTCTL_TIMEOUT: seconds per connect, read or write (default 30)."
)
# Per network operation (connect, each read or write), not for the whole command.
TIMEOUT_S = 30
_MAX_TIMEOUT_S = 3600
# --output/-o of every list command (certctl.cli._listing); one instance, as Typer only reads it.
OUTPUT_OPTION: Any = typer.Option(
    None, "--output", "-o", metavar="table|json", callback=check_output, help=OUTPUT_HELP
)
CA_HINT = "set CERTCTL_CA_CERT to the server's CA file, e.g. certctl-data/tls/ca.crt"
# Any PEM private key: PKCS#8 (plain or encrypted), PKCS#1 RSA, SEC1 EC, OpenSSH.
PRIVATE_KEY_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# X509_V_ERR_HOSTNAME_MISMATCH: the chain is trusted, the name is not in the certificate.
_HOSTNAME_MISMATCH = 62


def _group_help(summary: str) -> str:
    return f"{summary}\n\n{ENV_HELP}"


auth_app = typer.Typer(
    help=_group_help("Manage roles, actors and API keys on a certctl server."),
    short_help="Roles, actors and API keys on the server at CERTCTL_URL.",
    no_args_is_help=True,
)
roles_app = typer.Typer(
    help=_group_help("Roles: named permission sets."),
    short_help="Roles: named permission sets.",
    no_args_is_help=True,
)
actors_app = typer.Typer(
    help=_group_help("Actors: users and machines holding roles."),
    short_help="Actors: users and machines holding roles.",
    no_args_is_help=True,
)
apikeys_app = typer.Typer(
    help=_group_help("API keys (the value is shown once, at creation)."),
    short_help="API keys (the value is shown once, at creation).",
    no_args_is_help=True,
)
auth_app.add_typer(roles_app, name="roles")
auth_app.add_typer(actors_app, name="actors")
auth_app.add_typer(apikeys_app, name="apikeys")
certs_app = typer.Typer(
    help=_group_help("Issue, list, get, revoke and renew certificates on a server."),
    short_help="Issue, list, revoke, renew certificates at CERTCTL_URL.",
    no_args_is_help=True,
)


class RemoteError(CertctlError):
    """The server answered with an error (its problem detail is shown).

    ``may_have_taken_effect``: a change was sent and no answer came, so it may have been made.
    """

    title = "Server error"

    def __init__(self, detail: str, *, may_have_taken_effect: bool = False) -> None:
        super().__init__(detail)
        self.may_have_taken_effect = may_have_taken_effect


def _server_url() -> str:
    """``CERTCTL_URL`` checked: scheme, host, port and path only (no trailing slash).

    The value is never echoed whole: a malformed one may hold a password (``https://admin:pw``
    parses as host ``admin``, port ``pw``), so messages name the variable and the problem only.
    """
    raw = os.environ.get("CERTCTL_URL", "").strip() or DEFAULT_URL
    example = f"e.g. {DEFAULT_URL}"
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in raw):
        raise InvalidRequest("CERTCTL_URL contains spaces or control characters")
    try:
        parts = urlsplit(raw)
    except ValueError as exc:  # "Invalid IPv6 URL": urllib's reasons quote nothing of the URL
        raise InvalidRequest(f"CERTCTL_URL is not a valid URL: {exc} ({example})") from None
    if not parts.netloc:
        raise InvalidRequest(f"CERTCTL_URL must start with https:// or http:// ({example})")
    if parts.scheme not in ("https", "http"):
        raise InvalidRequest(
            f"CERTCTL_URL: unsupported scheme '{parts.scheme}', use https:// or http:// ({example})"
        )
    # certctl authenticates with a bearer key only: a user name and password would be sent as
    # Basic credentials the server ignores, and a query (?token=…) would end up in the path of
    # every request, so both are refused rather than silently used or dropped.
    if "@" in parts.netloc:
        raise InvalidRequest(
            "CERTCTL_URL must not contain a user name or password; "
            "put the API key in CERTCTL_API_KEY"
        )
    if "?" in raw or "#" in raw:
        raise InvalidRequest(
            "CERTCTL_URL must not contain a query or fragment (?… or #…); "
            "put the API key in CERTCTL_API_KEY"
        )
    try:
        bad_port = parts.port == 0
    except ValueError:  # urllib's message quotes the port text: maybe a password (see above)
        bad_port = True
    if bad_port:
        raise InvalidRequest(f"CERTCTL_URL has an invalid port, expected 1-65535 ({example})")
    if not parts.hostname:
        raise InvalidRequest(f"CERTCTL_URL has no host ({example})")
    if (
        parts.scheme == "http"
        and not is_loopback(parts.hostname)
        and os.environ.get("CERTCTL_ALLOW_INSECURE") != "1"
    ):
        # As the server refuses plain HTTP beyond loopback without --allow-insecure.
        raise InvalidRequest(
            "CERTCTL_URL: http:// to a host other than loopback would send the API key in "
            "clear text; use https://, or set CERTCTL_ALLOW_INSECURE=1 if that is intended"
        )
    url = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
    import httpx

    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:  # e.g. a bad IDNA host; no credentials are left in url
        raise InvalidRequest(f"CERTCTL_URL is not a valid URL: {exc}") from None
    return url


def _api_key() -> str | None:
    """``CERTCTL_API_KEY`` as sent, or None when unset or empty.

    Surrounding whitespace is dropped: a key read from a file keeps its trailing newline (or
    CR LF) in env files and Secrets, and users expect that to work as `$(cat file)` does; no key
    starts or ends with a blank. Anything else outside printable ASCII is refused here, before
    httpx or h11 can refuse it with a message quoting the whole header (the key included).
    """
    key = os.environ.get("CERTCTL_API_KEY", "").strip()
    if not key:
        return None
    if not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise InvalidRequest(
            "CERTCTL_API_KEY contains spaces, control or non-ASCII characters "
            "(its value is not shown)"
        )
    return key


def _ca_context() -> ssl.SSLContext | None:
    """An SSL context trusting only ``CERTCTL_CA_CERT``, or None when it is unset."""
    ca = os.environ.get("CERTCTL_CA_CERT", "")
    if not ca:
        return None
    what = f"CERTCTL_CA_CERT={ca}"
    try:
        data = Path(ca).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{what}: file not found") from None
    except IsADirectoryError:
        raise InvalidRequest(f"{what}: is a directory, expected a PEM CA certificate") from None
    except PermissionError:
        raise InvalidRequest(f"{what}: permission denied") from None
    except OSError as exc:
        raise InvalidRequest(f"{what}: {exc.strerror or exc}") from None
    # OpenSSL says only "no certificate or crl found (_ssl.c:4154)", naming no file.
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise InvalidRequest(f"{what}: no PEM certificate in it")
    import ssl

    try:
        return ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise InvalidRequest(f"{what}: not a valid PEM certificate ({exc.reason})") from None


def _tls_context() -> ssl.SSLContext | None:
    """The SSL context for https://, or None for httpx's defaults.

    ``CERTCTL_CA_CERT`` is the trust (else the system's); ``CERTCTL_CLIENT_CERT`` and
    ``CERTCTL_CLIENT_KEY`` (or a key in the certificate file) are presented when set: a
    server with ``tls.client-auth: required`` lets no client in without a certificate, and
    ``auth.client-cert-mappings`` authenticate one with no API key.
    """
    cert = os.environ.get("CERTCTL_CLIENT_CERT", "")
    key = os.environ.get("CERTCTL_CLIENT_KEY", "")
    if key and not cert:
        raise InvalidRequest("CERTCTL_CLIENT_KEY is set without CERTCTL_CLIENT_CERT")
    context = _ca_context()
    if not cert:
        return context
    import ssl

    cert_pem = _client_file("CERTCTL_CLIENT_CERT", cert)
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise InvalidRequest(f"CERTCTL_CLIENT_CERT={cert}: no PEM certificate in it")
    key_name, key_path = ("CERTCTL_CLIENT_KEY", key) if key else ("CERTCTL_CLIENT_CERT", cert)
    key_pem = _client_file(key_name, key) if key else cert_pem
    if not PRIVATE_KEY_PEM.search(key_pem):
        hint = "" if key else "; set CERTCTL_CLIENT_KEY to the key file"
        raise InvalidRequest(f"{key_name}={key_path}: no PEM private key in it{hint}")
    if b"ENCRYPTED" in key_pem:
        # OpenSSL would prompt for the password on the terminal.
        raise InvalidRequest(
            f"{key_name}={key_path}: the key is encrypted; give an unencrypted one"
        )
    if context is None:
        context = ssl.create_default_context()
    try:
        context.load_cert_chain(cert, key or None)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if reason == "KEY_VALUES_MISMATCH":
            reason = "the key does not belong to the certificate"
        raise InvalidRequest(
            f"CERTCTL_CLIENT_CERT={cert}, {key_name}={key_path}: {reason}"
        ) from None
    return context


def _client_file(name: str, path: str) -> bytes:
    """The content of a client certificate or key file; errors name the variable."""
    from certctl.cli._common import read_file

    try:
        return read_file(Path(path), "file")
    except CertctlError as exc:
        raise type(exc)(f"{name}={exc.detail}") from None


def _redact(text: str, key: str | None) -> str:
    """``text`` without the API key (a server or proxy may echo the Authorization header)."""
    return text.replace(key, "<CERTCTL_API_KEY>") if key else text


def _timeout_s() -> float:
    """CERTCTL_TIMEOUT in seconds (a slow link, a server far away), else ``TIMEOUT_S``."""
    text = os.environ.get("CERTCTL_TIMEOUT", "").strip()
    if not text:
        return TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= _MAX_TIMEOUT_S:
        raise InvalidRequest(
            f"CERTCTL_TIMEOUT must be a number of seconds, above 0 and at most {_MAX_TIMEOUT_S}"
        )
    return value


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _connect_failure(exc: Exception, timeout: float) -> str:
    """Why a request failed before any response, in one line, with a hint when there is one."""
    import ssl

    import httpx

    for cause in cause_chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or "verify failed"
            if cause.verify_code == _HOSTNAME_MISMATCH:
                hint = "the host name in CERTCTL_URL is not in the server's certificate"
            elif os.environ.get("CERTCTL_CA_CERT"):
                ca = os.environ["CERTCTL_CA_CERT"]
                hint = f"CERTCTL_CA_CERT={ca} does not hold the CA of the server's certificate"
            else:
                hint = CA_HINT
            return f"TLS certificate verify failed: {reason} ({hint})"
        if isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER":
            hint = "the server is not speaking TLS: for plain HTTP use http:// in CERTCTL_URL"
            return f"{cause} ({hint})"
    if any(isinstance(cause, ConnectionRefusedError) for cause in cause_chain(exc)):
        # Nothing listens there: the usual cause is no server, or CERTCTL_URL unset or wrong.
        return f"{exc} ({_refused_hint()})"
    if isinstance(exc, httpx.ConnectTimeout):
        # httpx says "_ssl.c:989: The handshake operation timed out" or nothing at all.
        return f"no connection within {_seconds(timeout)} (TCP or TLS handshake)"
    if isinstance(exc, httpx.WriteTimeout):
        return f"the request could not be sent within {_seconds(timeout)}"
    # Some httpx errors have an empty message: their class name says it then.
    message = str(exc) or type(exc).__name__
    if _server_url().startswith("http://") and isinstance(
        exc, httpx.RemoteProtocolError | httpx.ReadError
    ):
        # certctl serve speaks HTTPS by default: a plain-HTTP request gets no answer (or a
        # reset from other TLS servers).
        message += " (if the server speaks HTTPS, as certctl serve does by default, use https://)"
    elif isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        # What a server with tls.client-auth does to a client without a certificate it trusts
        # (TLS 1.3 ends the connection after the handshake, with no reason the client sees).
        if os.environ.get("CERTCTL_CLIENT_CERT"):
            message += " (the server may not trust the certificate in CERTCTL_CLIENT_CERT)"
        else:
            message += (
                " (if the server requires a client certificate, set CERTCTL_CLIENT_CERT and "
                "CERTCTL_CLIENT_KEY)"
            )
    return message


def _refused_hint() -> str:
    """Where the URL came from, and what should listen there, for a refused connection."""
    if os.environ.get("CERTCTL_URL", "").strip():
        return "the URL in CERTCTL_URL: is 'certctl serve' running there?"
    return (
        "CERTCTL_URL is not set, so this is the default: start 'certctl serve', or set "
        "CERTCTL_URL to the server's URL"
    )


def _content_type(response: Any) -> str:
    value = str(response.headers.get("content-type", "")).split(";")[0].strip()
    return f"content-type {value[:80]}" if value else "no content-type"


def _failure(response: Any, endpoint: str, key_set: bool) -> str:
    """One line for an HTTP error: the server's problem detail, or what answered instead."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    detail = problem.get("detail") if isinstance(problem, dict) else None
    code = response.status_code
    if isinstance(detail, str) and detail:
        message = f"HTTP {code}: {detail}"
    else:
        # Not a certctl problem report (a proxy, another service): a page of HTML is no help.
        message = f"HTTP {code} {response.reason_phrase} from {endpoint} ({_content_type(response)}"
        if _content_type(response) == "content-type text/plain" and response.text.strip():
            message += f": {response.text[:200]}"
        message += ")"
    retry_after = str(response.headers.get("retry-after", "")).strip()
    if code in (429, 503) and retry_after.isdigit():
        # How long to wait is only in the header (RFC 9110 delay-seconds).
        message += f" (Retry-After: {int(retry_after)} s)"
    base = urlsplit(_server_url())
    if code == 404 and detail == "Not Found" and base.path:
        # The server's answer for a route it does not have (an unknown id names the id): the
        # URL's path is in the way, e.g. the API's /api/v1 copied into CERTCTL_URL.
        message += (
            f" (no such route: CERTCTL_URL should be the server's base URL without "
            f"{base.path}: {base.scheme}://{base.netloc})"
        )
    if code == 401 and not key_set:
        message += " (set CERTCTL_API_KEY to an API key, e.g. $(cat certctl-data/admin-api-key))"
    return message


def _request(
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    accept: str | None = None,
    *,
    raw: bool = False,
) -> Any:
    """Send one request to the server; the decoded JSON (or text for ``accept``), None on 204.

    ``raw``: the body's bytes as they came (a DER certificate or CRL is no text).
    ``path`` must quote what came from the user (:func:`_seg`).
    """
    import httpx

    url = _server_url()
    key = _api_key()
    ca = _tls_context()
    timeout = _timeout_s()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if accept:
        headers["Accept"] = accept
    endpoint = url + path  # what messages show: no query string (a --query could be personal)
    host = urlsplit(url).hostname or ""
    # HTTP(S)_PROXY must not carry a request for loopback: the proxy's 127.0.0.1 is another
    # machine, and for http:// the API key would cross the network in clear text, which is
    # what allowing http:// on loopback only is meant to rule out. None: no proxy for it.
    direct = (
        {f"all://[{host}]" if ":" in host else f"all://{host}": None} if is_loopback(host) else {}
    )
    try:
        with httpx.Client(
            verify=ca if ca is not None else True, timeout=timeout, mounts=direct
        ) as client:
            response = client.request(
                method,
                endpoint,
                json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers=headers,
            )
    except httpx.ReadTimeout:
        # The request went out: a POST may have issued a certificate or minted a key that
        # a blind retry would issue again.
        message = f"no answer from {url} within {_seconds(timeout)}"
        # A dry run (certctl apply's check of each document) changes nothing.
        sent = method != "GET" and (params or {}).get("dry_run") != "true"
        if sent:
            message += f" ({method} {path} was sent and may have taken effect: check first)"
        raise RemoteError(message, may_have_taken_effect=sent) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = _redact(_connect_failure(exc, timeout), key)
        raise RemoteError(f"cannot reach {url}: {reason}") from None
    if response.status_code >= 400:
        raise RemoteError(_redact(_failure(response, endpoint, key is not None), key))
    if response.is_redirect:
        # Not followed (the key would go wherever it points): say where CERTCTL_URL should
        # point instead, e.g. a proxy sending http:// to https://.
        raise RemoteError(_redact(_redirect(response, endpoint), key))
    if response.status_code == 204:
        return None
    if raw:
        return response.content
    if accept and "json" not in accept:
        return response.text
    try:
        return response.json()
    except ValueError:  # JSONDecodeError, or UnicodeDecodeError for a body in no charset
        raise RemoteError(
            f"unexpected response from {endpoint}: not JSON "
            f"(HTTP {response.status_code}, {_content_type(response)})"
        ) from None


def _redirect(response: Any, endpoint: str) -> str:
    """One line for a 3xx: where it points, without a query or user info it may carry.

    When it is the same route on another base URL (a proxy sending http:// to https://), the
    line gives the CERTCTL_URL that reaches it.
    """
    message = f"HTTP {response.status_code} {response.reason_phrase} from {endpoint}"
    target = urlsplit(str(response.next_request.url)) if response.next_request else None
    if target is None or not target.hostname:
        return message + " (a redirect certctl does not follow)"
    host = f"[{target.hostname}]" if ":" in target.hostname else target.hostname
    base = f"{target.scheme}://{host}" + (f":{target.port}" if target.port else "")
    route = urlsplit(endpoint).path
    if target.path.endswith(route) and route:
        return (
            f"{message}: redirected, not followed; set CERTCTL_URL="
            f"{base}{target.path.removesuffix(route)}"
        )
    return f"{message}: redirected to {base}{target.path}, not followed"


def _unexpected(path: str, what: str) -> RemoteError:
    """A JSON answer of the wrong shape (a proxy or another service at CERTCTL_URL)."""
    return RemoteError(f"unexpected response from {_server_url()}{path}: {what}")


def _seg(value: str) -> str:
    """``value`` as one path segment: an id holding '/', '?' or a newline stays an id."""
    return quote(value, safe="")


# The shapes of the ids the server makes (services.issuance.new_id, auth.apikeys): a 404 for
# a value of another shape is a name given where an id goes, and says where the id is.
_CERT_ID = re.compile(r"[0-9a-f]{24}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")


@contextmanager
def _id_hint(value: str, shape: re.Pattern[str], hint: str) -> Iterator[None]:
    """Add ``hint`` to a 404 for ``value`` when ``value`` is not shaped like an id."""
    try:
        yield
    except RemoteError as exc:
        if not exc.detail.startswith("HTTP 404:") or shape.fullmatch(value):
            raise
        raise RemoteError(f"{exc.detail} ({hint})") from None


def _cert_id_hint(cert_id: str) -> AbstractContextManager[None]:
    # `certs issue --out web-1`, then `certs renew web-1`: the directory's name is no id.
    return _id_hint(
        cert_id,
        _CERT_ID,
        "CERT_ID is a certificate's id, as 'certctl certs list' shows it; "
        f"'certctl certs list -q {cert_id}' finds certificates by name",
    )


def _not_empty(value: str | None) -> str | None:
    """An id argument, refused when blank.

    A blank id (``$(jq -r .id)`` of nothing) would send the request to the collection's URL
    (``/roles/``) or to a neighbouring route, and get a redirect or a bare 404 back.
    """
    if value is not None and not value.strip():
        raise typer.BadParameter("must not be empty")
    return value


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
        hint = f" (--no-{param.name}s removes them all)" if ctx.info_name == "update" else ""
        raise typer.BadParameter(f"must not be empty{hint}")
    from certctl.cli._common import split_commas

    return split_commas(values) if values else values


def _warn_about(data: Any) -> None:
    """The answer's ``warnings`` on stderr, one line each, as the offline commands print theirs.

    A clipped validity or a short lifetime must not hide in the JSON (or, with ``--out``, in
    output nobody reads).
    """
    from certctl.cli._common import warn

    warnings = data.get("warnings") if isinstance(data, dict) else None
    for message in warnings if isinstance(warnings, list) else []:
        if isinstance(message, str) and message.strip():
            warn(message)


def _print(data: Any) -> None:
    if isinstance(data, str):
        sys.stdout.write(data)
    elif data is not None:
        typer.echo(json.dumps(data, indent=2))


def _print_list(
    data: Any,
    output: str | None,
    *,
    path: str,
    columns: Sequence[Column],
    empty: str,
    more: Callable[[str], str] | None = None,
) -> None:
    """A list answer as a table (``-o table``, or a terminal), else as the JSON it always was.

    ``more`` makes the line saying how to get the next page from the answer's next_cursor.
    """
    from certctl.cli._listing import print_table, wants_table

    if not wants_table(output):
        _print(data)
        return
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        # Whatever answers at CERTCTL_URL may not be certctl: one line, not a KeyError.
        raise _unexpected(path, "no list of items")
    cursor = data.get("next_cursor")
    hint = more(cursor) if more is not None and isinstance(cursor, str) and cursor else None
    print_table(items, columns, empty=empty, more=hint)


def _text(value: object) -> str:
    """A JSON value as a cell: lists joined by commas, booleans as yes/no, nothing as -."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _field(name: str) -> Callable[[dict[str, Any], datetime], str]:
    return lambda item, _now: _text(item.get(name))


def _certificate_name(item: dict[str, Any], _now: datetime) -> str:
    """The common name, or the first SAN of a certificate without one."""
    if item.get("common_name"):
        return _text(item["common_name"])
    sans = item.get("sans")
    names = [n for values in sans.values() for n in values] if isinstance(sans, dict) else []
    return _text(names[:1])


def _certificate_columns() -> list[Column]:
    from certctl.cli._listing import date_and_days

    return [
        Column("ID", _field("id"), key=True),
        Column("COMMON NAME", _certificate_name),
        Column("STATUS", _field("status")),
        Column("NOT AFTER", lambda item, now: date_and_days(item.get("not_after"), now)),
        Column("ISSUER", _field("issuer")),
        Column("PROFILE", _field("profile")),
    ]


def _apikey_status(item: dict[str, Any], now: datetime) -> str:
    from certctl.cli._listing import is_past

    if item.get("revoked_at"):
        return "revoked"
    return "expired" if is_past(item.get("expires_at"), now) else "active"


def _apikey_columns() -> list[Column]:
    from certctl.cli._listing import date_and_days, timestamp

    return [
        Column("ID", _field("id"), key=True),
        Column("NAME", _field("name")),
        Column("ACTOR", _field("actor_id")),
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
    _print(_request("GET", "/api/v1/auth/whoami"))


@auth_app.command("permissions")
def permissions(output: str | None = OUTPUT_OPTION) -> None:
    """List the permissions a role can hold.

    The server's catalogue (needs auth.role.read), in the words `auth roles create -p` takes.
    On a terminal a table, one permission a line.
    """
    from certctl.cli._listing import wants_table

    path = "/api/v1/auth/permissions"
    data = _request("GET", path)
    items = data.get("items") if isinstance(data, dict) else None
    if wants_table(output) and isinstance(items, list) and all(isinstance(p, str) for p in items):
        # The API lists names, not objects: one a row. Anything else is left to _print_list,
        # which refuses it in one line.
        data = {"items": [{"permission": p} for p in items]}
    columns = [Column("PERMISSION", _field("permission"), key=True)]
    _print_list(data, output, path=path, columns=columns, empty="no permissions")


# --- roles -------------------------------------------------------------------------------


@roles_app.command("list")
def roles_list(output: str | None = OUTPUT_OPTION) -> None:
    """List roles.

    On a terminal a table: id, name, built in or not, permissions.
    """
    path = "/api/v1/auth/roles"
    columns = [
        Column("ID", _field("id"), key=True),
        Column("NAME", _field("name")),
        Column("BUILT IN", _field("builtin")),
        Column("PERMISSIONS", _field("permissions")),
    ]
    _print_list(_request("GET", path), output, path=path, columns=columns, empty="no roles")


@roles_app.command("get")
def roles_get(
    role_id: str = typer.Argument(..., callback=_not_empty, metavar="ROLE_ID", help="Role id."),
) -> None:
    """Show one role."""
    _print(_request("GET", f"/api/v1/auth/roles/{_seg(role_id)}"))


@roles_app.command("create")
def roles_create(
    role_id: str = typer.Argument(
        ..., callback=_not_empty, metavar="ROLE_ID", help="Role id, e.g. r-prometheus."
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
) -> None:
    """Create a custom role."""
    _print(
        _request(
            "POST", "/api/v1/auth/roles", {"id": role_id, "name": name, "permissions": permission}
        )
    )


@roles_app.command("update")
def roles_update(
    role_id: str = typer.Argument(..., callback=_not_empty, metavar="ROLE_ID", help="Role id."),
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
) -> None:
    """Change a custom role's name or permissions."""
    body: dict[str, Any] = {}
    if permission and no_permissions:
        raise typer.BadParameter("--permission and --no-permissions contradict each other")
    if permission or no_permissions:
        body["permissions"] = permission or []
    if name is not None:
        body["name"] = name
    if not body:
        raise typer.BadParameter("nothing to change: give --permission, --no-permissions or --name")
    _print(_request("PUT", f"/api/v1/auth/roles/{_seg(role_id)}", body))


@roles_app.command("delete")
def roles_delete(
    role_id: str = typer.Argument(..., callback=_not_empty, metavar="ROLE_ID", help="Role id."),
) -> None:
    """Delete a custom role."""
    _request("DELETE", f"/api/v1/auth/roles/{_seg(role_id)}")
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
        Column("ID", _field("id"), key=True),
        Column("NAME", _field("name")),
        Column("ROLES", _field("roles")),
        Column("CREATED", lambda item, _now: timestamp(item.get("created_at"))),
    ]
    _print_list(_request("GET", path), output, path=path, columns=columns, empty="no actors")


@actors_app.command("get")
def actors_get(
    actor_id: str = typer.Argument(..., callback=_not_empty, metavar="ACTOR_ID", help="Actor id."),
) -> None:
    """Show one actor."""
    _print(_request("GET", f"/api/v1/auth/actors/{_seg(actor_id)}"))


@actors_app.command("create")
def actors_create(
    actor_id: str = typer.Argument(
        ..., callback=_not_empty, metavar="ACTOR_ID", help="Actor id, e.g. prometheus."
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
    _print(_request("POST", "/api/v1/auth/actors", {"id": actor_id, "name": name, "roles": role}))


@actors_app.command("update")
def actors_update(
    actor_id: str = typer.Argument(..., callback=_not_empty, metavar="ACTOR_ID", help="Actor id."),
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
    body: dict[str, Any] = {}
    if role and no_roles:
        raise typer.BadParameter("--role and --no-roles contradict each other")
    if role or no_roles:
        body["roles"] = role or []
    if name is not None:
        body["name"] = name
    if not body:
        raise typer.BadParameter("nothing to change: give --role, --no-roles or --name")
    _print(_request("PATCH", f"/api/v1/auth/actors/{_seg(actor_id)}", body))


@actors_app.command("delete")
def actors_delete(
    actor_id: str = typer.Argument(..., callback=_not_empty, metavar="ACTOR_ID", help="Actor id."),
) -> None:
    """Delete an actor (its keys stop working)."""
    _request("DELETE", f"/api/v1/auth/actors/{_seg(actor_id)}")
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
    _print_list(
        _request("GET", path, params={"actor_id": actor}),
        output,
        path=path,
        columns=_apikey_columns(),
        empty="no API keys",
    )


@apikeys_app.command("create")
def apikeys_create(
    actor_id: str = typer.Argument(
        ..., callback=_not_empty, metavar="ACTOR_ID", help="Actor the key authenticates as."
    ),
    name: str = typer.Option("", "--name", help="Key name, e.g. prometheus-v1."),
    expires_at: str = typer.Option(
        None, "--expires-at", help="ISO 8601 expiry, e.g. 2027-01-01T00:00:00Z."
    ),
    # A str, not a Path: Path("./-") is Path("-"), and "./-" names the file "-".
    out: str = typer.Option(
        None,
        "--out",
        metavar="<path>",
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
    data = _request("POST", path, {"actor_id": actor_id, "name": name, "expires_at": expires_at})
    if not isinstance(data, dict) or not isinstance(data.get("key_value"), str):
        raise _unexpected(path, "no key_value")
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
        _print(data)
        return
    _key_to_stdout(data.get("id"), lambda: _print(data))


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
    key_id: str = typer.Argument(..., callback=_not_empty, metavar="KEY_ID", help="Key id."),
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
    with _id_hint(key_id, _KEY_ID, hint):
        _print(_request("DELETE", f"/api/v1/auth/apikeys/{_seg(key_id)}"))


# --- certificates ------------------------------------------------------------------------


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
    profile: str = typer.Option("server", "--profile", help="server, client or server+client."),
    validity: str = typer.Option("90D", "--validity", help="Lifetime, e.g. 90D."),
    key_type: str = typer.Option(
        "ec-p256",
        "--key-type",
        help="Key type for server-side generation: ec-p256, ec-p384, ed25519, rsa-2048|3072|4096.",
    ),
    out: Path = typer.Option(
        None, "--out", help="Write tls.crt, tls.key, ca.crt into this directory."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files in --out."),
) -> None:
    """Issue a certificate (server-side key generation, or from --csr).

    Prints the server's answer as JSON; without --out it holds the generated private key
    (private_key_pem), which the server does not keep: use --out to get tls.key as a 0600 file.
    """
    from certctl.cli._common import split_commas

    # As `cert issue` and `csr create` read them (certutil's lists): the same words issue the
    # same names offline and on the server. A comma is in no DNS name, IP or e-mail address
    # certctl takes, but may be in a URI (https://example.org/a,b): --uri only repeats.
    dns, ip, email = split_commas(dns), split_commas(ip), split_commas(email)
    if csr is None and not (cn or dns or ip or email or uri):
        # Before, the server's words for its JSON fields: "give csr, or common_name/…".
        raise typer.BadParameter("give --cn, --dns, --ip, --email or --uri (or --csr FILE)")
    _check_out(out, key=csr is None, force=force)
    ca_pem = ""

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
        # Fetched before issuing too: a failure here (an unknown issuer, a proxy's error)
        # must not come after the certificate was issued.
        ca_pem = _issuer_root_pem(issuer)
    data = _request("POST", "/api/v1/certificates", body)
    _warn_about(data)
    if out is not None:
        data = _save_issued(data, out, ca_pem, force=force, path="/api/v1/certificates")
    _print(data)


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


def _issuer_root_pem(issuer: str) -> str:
    """The issuer's root, for ca.crt (fetched before issuing: see ``_root_pem``)."""
    return _root_pem(
        _request(
            "GET",
            f"/api/v1/issuers/{_seg(issuer)}/ca.pem",
            params={"chain": "true"},
            accept="application/x-pem-file",
        )
    )


def _save_issued(data: Any, out: Path, ca_pem: str, *, force: bool, path: str) -> dict[str, Any]:
    """Write an issue or renew answer into ``out``; the answer without its PEM, plus ``out``."""
    from certctl.files import OutputSet

    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("certificate_pem", "chain_pem")
    ):
        raise _unexpected(path, "no certificate_pem")
    outputs = OutputSet(force=force)
    outputs.add(out / "tls.crt", (data["certificate_pem"] + data["chain_pem"]).encode())
    if data.get("private_key_pem"):
        outputs.add(out / "tls.key", data.pop("private_key_pem").encode(), secret=True)
    outputs.add(out / "ca.crt", ca_pem.encode())
    try:
        outputs.commit()
    except CertctlError as exc:
        # The certificate exists on the server now; its generated key is not kept there.
        raise CertctlError(
            f"{exc.detail} (certificate {data.get('id')} was issued but not saved: "
            f"revoke it with 'certctl certs revoke {data.get('id')}')"
        ) from exc
    return {k: v for k, v in data.items() if not k.endswith("_pem")} | {"out": str(out)}


def _root_pem(chain_pem: Any) -> str:
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
        raise _unexpected("/api/v1/issuers/{id}/ca.pem", "no PEM certificate")
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
        raise type(exc)(f"{path}: {exc.detail}") from exc
    return request.public_bytes(Encoding.PEM).decode("ascii")


@certs_app.command("list")
def certs_list(
    status: str = typer.Option(None, "--status", help="active, expiring, expired or revoked."),
    issuer: str = typer.Option(None, "--issuer", help="Issuer id."),
    expiring_within: str = typer.Option(None, "--expiring-within", help="e.g. 30D."),
    query: str = typer.Option(
        None,
        "--query",
        "-q",
        help="Substring, in either case (not a pattern), of the common name, subject, serial "
        "or a SAN (DNS, IP, e-mail, URI).",
    ),
    # The first spelling, named after the API's `q` parameter; hidden, kept for old scripts.
    q: str = typer.Option(None, "--q", hidden=True),
    limit: int = typer.Option(50, "--limit", help="Page size (1-500)."),
    cursor: str = typer.Option(None, "--cursor", help="next_cursor from a previous page."),
    output: str | None = OUTPUT_OPTION,
) -> None:
    """List certificates (one page; follow next_cursor for more).

    On a terminal a table: id, common name, status, notAfter (the date, and the days left),
    issuer and profile; its last line, when there are more, is the command for the next page.
    """
    import shlex

    path = "/api/v1/certificates"
    search = query if query is not None else q
    filters = {
        "--status": status,
        "--issuer": issuer,
        "--expiring-within": expiring_within,
        "--query": search,
    }

    def more(next_cursor: str) -> str:
        # The same filters: a cursor continues the listing it came from.
        words = ["certctl", "certs", "list"]
        for option, value in filters.items():
            words += [option, value] if value is not None else []
        words += ["--limit", str(limit)] if limit != 50 else []
        words += ["-o", output] if output is not None else []
        return f"more certificates: {shlex.join([*words, '--cursor', next_cursor])}"

    data = _request(
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
    _print_list(
        data,
        output,
        path=path,
        columns=_certificate_columns(),
        empty="no certificates match" if chosen else "no certificates",
        more=more,
    )


@certs_app.command("get")
def certs_get(
    cert_id: str = typer.Argument(
        ..., callback=_not_empty, metavar="CERT_ID", help="Certificate id."
    ),
    pem: bool = typer.Option(False, "--pem", help="Print the certificate and chain as PEM."),
) -> None:
    """Show one certificate."""
    accept = "application/x-pem-file" if pem else None
    with _cert_id_hint(cert_id):
        _print(_request("GET", f"/api/v1/certificates/{_seg(cert_id)}", accept=accept))


@certs_app.command("revoke")
def certs_revoke(
    cert_id: str = typer.Argument(
        ..., callback=_not_empty, metavar="CERT_ID", help="Certificate id."
    ),
    reason: str = typer.Option(
        None, "--reason", help="keyCompromise, superseded, cessationOfOperation …"
    ),
) -> None:
    """Revoke a certificate."""
    with _cert_id_hint(cert_id):
        path = f"/api/v1/certificates/{_seg(cert_id)}/revoke"
        _print(_request("POST", path, {"reason": reason}))


@certs_app.command("renew")
def certs_renew(
    cert_id: str = typer.Argument(
        ..., callback=_not_empty, metavar="CERT_ID", help="Certificate id."
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
    _check_out(out, key=True, force=force)
    ca_pem = ""
    if out is not None:
        # Its issuer, for ca.crt, found before renewing: see certs issue.
        with _cert_id_hint(cert_id):
            current = _request("GET", f"/api/v1/certificates/{_seg(cert_id)}")
        if not isinstance(current, dict) or not isinstance(current.get("issuer"), str):
            raise _unexpected("/api/v1/certificates/{id}", "no issuer")
        ca_pem = _issuer_root_pem(current["issuer"])
    path = f"/api/v1/certificates/{_seg(cert_id)}/renew"
    with _cert_id_hint(cert_id):
        data = _request("POST", path, {"validity": validity})
    _warn_about(data)
    if out is not None:
        data = _save_issued(data, out, ca_pem, force=force, path="/api/v1/certificates/{id}/renew")
    _print(data)
