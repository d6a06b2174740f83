"""The HTTP client behind the server commands: CERTCTL_* settings, requests, error lines, output.

``auth.py`` (``certctl auth …``), ``certs.py`` (``certctl certs …``), ``issuers.py`` and
``services.py`` (``certctl services …``, ``certctl apply``) send their requests through
:func:`send_request`. They read ``CERTCTL_URL``, ``CERTCTL_API_KEY`` and ``CERTCTL_CA_CERT`` and
print JSON, so they compose with ``jq`` (the list commands print a table instead on a terminal:
``--output``).

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
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import typer

from certctl.cli._common import option_value
from certctl.cli._listing import OUTPUT_HELP, Column, check_output
from certctl.cli._proxy import check_proxy_settings, proxy_of, socks_missing
from certctl.errors import CertctlError, InvalidRequest, NotFound, PasswordRequired, cause_chain
from certctl.hosts import is_loopback
from certctl.spelling import did_you_mean

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Sequence
    from datetime import datetime

__all__ = [
    "CERT_ID",
    "DEFAULT_URL",
    "ENV_HELP",
    "KEY_ID",
    "OUTPUT_OPTION",
    "PRIVATE_KEY_PEM",
    "RemoteError",
    "cell_text",
    "field_cell",
    "group_help",
    "id_hint",
    "issuer_hint",
    "not_empty",
    "path_segment",
    "print_answer",
    "print_list",
    "read_certificates_pem",
    "send_request",
    "status_cell",
    "unexpected_response",
    "warn_about",
]

DEFAULT_URL = "https://127.0.0.1:8443"
# Shown in the help of every command group that talks to a server (and of `certctl` itself).
ENV_HELP = (
    f"Talks to the server at CERTCTL_URL (default {DEFAULT_URL}) with the API key in "
    "CERTCTL_API_KEY, trusting the CA file in CERTCTL_CA_CERT (e.g. certctl-data/tls/ca.crt; "
    "unset: the system's trust store). "
    "http:// is refused beyond loopback unless CERTCTL_ALLOW_INSECURE=1. A client certificate "
    "(tls.client-auth on the server) comes from CERTCTL_CLIENT_CERT and CERTCTL_CLIENT_KEY "
    "(PEM files). "
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


# A PEM certificate's BEGIN line: PEM escaped inside JSON (cfssl's output) has none.
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n")


def read_certificates_pem(path: Path, taker: str) -> str:
    """The certificates in ``path`` (PEM, or DER as a Windows .cer), as PEM text to send.

    Checked here, not only by the server: a private key given by mistake (tls.key for
    tls.crt, a PKCS#12 file) must not leave this machine, and a DER file would arrive as
    mangled text; cfssl's JSON is named with the cfssljson line that writes its PEM out.
    ``taker`` names what takes the certificates, for the refusal.

    Raises:
        InvalidRequest: the file cannot be read, holds a private key, or no certificate.
    """
    from certctl.cli._common import read_file

    data = read_file(path, "certificate file")
    refusal = f"{path}: holds a private key; {taker} takes certificates only (nothing was sent)"
    if PRIVATE_KEY_PEM.search(data):
        raise InvalidRequest(refusal)
    if _PEM_CERTIFICATE.search(data):
        return data.decode("ascii", "replace")
    from certctl.pki import certs_to_pem, load_material

    try:
        material = load_material(data)
    except PasswordRequired:
        # The loader's hint is "give --password-file", which these commands do not take:
        # a password-protected PKCS#12 file holds a key as a rule, never to be sent.
        raise InvalidRequest(
            f"{path}: a password-protected PKCS#12 file (or a damaged one); {taker} takes "
            "certificates only (nothing was sent): write them out with openssl pkcs12 -in "
            "FILE -nokeys -out certs.pem"
        ) from None
    except InvalidRequest as exc:
        raise InvalidRequest(f"{path}: {exc.detail}") from None
    if material.private_key is not None:  # a DER key, a PKCS#12 file without a password
        raise InvalidRequest(refusal)
    if not material.certificates:
        raise InvalidRequest(f"{path}: no certificate in it (PEM or DER)")
    return certs_to_pem(material.certificates).decode("ascii")


def group_help(summary: str) -> str:
    """A command group's help: ``summary``, then the environment the commands read."""
    return f"{summary}\n\n{ENV_HELP}"


class RemoteError(CertctlError):
    """The server answered with an error (its problem detail is shown).

    ``may_have_taken_effect``: a change was sent and no answer came, so it may have been made.
    """

    def __init__(
        self, detail: str, *, may_have_taken_effect: bool = False, http_status: int | None = None
    ) -> None:
        super().__init__(detail)
        self.may_have_taken_effect = may_have_taken_effect
        # The HTTP status of the server's error answer; None when none came. Not CertctlError's
        # status, which is what an API would answer for it.
        self.http_status = http_status


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
    if key[:7].lower() == "bearer " and all(0x21 <= ord(c) <= 0x7E for c in key[7:].strip()):
        # Copied from a curl line (-H "Authorization: Bearer …"): the CLI adds the scheme.
        raise InvalidRequest(
            "CERTCTL_API_KEY starts with 'Bearer ': give the key alone, the CLI sends the "
            "Authorization header itself (its value is not shown)"
        )
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
        raise exc.with_detail(f"{name}={exc.detail}") from None


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
    import socket
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
    if any(isinstance(cause, socket.gaierror) for cause in cause_chain(exc)):
        # "[Errno -2] Name or service not known" alone does not say which name. Through a
        # proxy, the only name resolved here is the proxy's (it resolves CERTCTL_URL's host).
        url = _server_url()
        proxy = proxy_of(url)
        if proxy is not None:
            variable, proxy_host, _ = proxy
            return f"{exc} ({proxy_host}, the host of the proxy in {variable}, does not resolve)"
        return (
            f"{exc} ({urlsplit(url).hostname}, the host name in CERTCTL_URL, does not resolve: "
            "a typo, a name only another network knows, or no name server reachable?)"
        )
    if any(isinstance(cause, ConnectionRefusedError) for cause in cause_chain(exc)):
        # Nothing listens there: the usual cause is no server, or CERTCTL_URL unset or wrong.
        # Through a proxy, "there" is the proxy (one that cannot reach the server answers).
        proxy = proxy_of(_server_url())
        if proxy is not None:
            variable, proxy_host, port = proxy
            shown = f"[{proxy_host}]" if ":" in proxy_host else proxy_host
            shown += f":{port}" if port is not None else ""
            return (
                f"{exc} ({shown}, the proxy in {variable}, refuses connections: is the proxy "
                "running there?)"
            )
        return f"{exc} ({_refused_hint()})"
    if isinstance(exc, httpx.ConnectTimeout):
        # httpx says "_ssl.c:989: The handshake operation timed out" or nothing at all.
        return f"no connection within {_seconds(timeout)} (TCP or TLS handshake)"
    if isinstance(exc, httpx.WriteTimeout):
        return f"the request could not be sent within {_seconds(timeout)}"
    # Some httpx errors have an empty message: their class name says it then.
    message = str(exc) or type(exc).__name__
    client_cert = os.environ.get("CERTCTL_CLIENT_CERT")
    if client_cert and "UNSUPPORTED_CERTIFICATE" in message.upper():
        # OpenSSL's alert for a client certificate of the wrong purpose (TLS 1.2 during the
        # handshake, 1.3 at the first read): "may not trust" sent users to the CA instead.
        purpose = _client_cert_purpose_problem(client_cert)
        if purpose is not None:
            return f"{message} ({purpose})"
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


def _client_cert_purpose_problem(path: str) -> str | None:
    """Why the certificate in ``path`` cannot be a TLS client's, None if it can or is unreadable.

    An extendedKeyUsage without clientAuth (a server certificate), as the server's OpenSSL
    refuses it.
    """
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    if ExtendedKeyUsageOID.CLIENT_AUTH in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in (
        usages
    ):
        return None
    return (
        f"the certificate in CERTCTL_CLIENT_CERT={path} is no client certificate: its "
        "extendedKeyUsage lacks clientAuth; issue one with --profile client or server+client"
    )


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
            message += f": {response.text[:200].strip()}"
        message += ")"
    delay_s = _retry_after_s(response) if code in (429, 503) else None
    if delay_s is not None:
        # How long to wait is only in the header.
        message += f" (Retry-After: {delay_s} s)"
    base = urlsplit(_server_url())
    if code == 404 and detail == "Not Found" and base.path:
        # The server's answer for a route it does not have (an unknown id names the id): the
        # URL's path is in the way, e.g. the API's /api/v1 copied into CERTCTL_URL.
        message += (
            f" (no such route: CERTCTL_URL should be the server's base URL without "
            f"{base.path}: {base.scheme}://{base.netloc})"
        )
    if code == 401 and not key_set and _unmapped_certificate(detail):
        # The certificate was sent on purpose, instead of a key: what to change is the server's
        # mappings (or, failing that, the key).
        message += (
            " (a mapping's subject matches it only written in this order, RDN by RDN, '*' for "
            "any one value; or set CERTCTL_API_KEY to an API key)"
        )
    elif code == 401 and not key_set and _refused_certificate(detail):
        # Revoked, expired or unreadable: this certificate will not do, whatever the mappings.
        message += (
            f" (the certificate in CERTCTL_CLIENT_CERT={os.environ['CERTCTL_CLIENT_CERT']}: "
            "use another one, or set CERTCTL_API_KEY to an API key)"
        )
    elif code == 401 and not key_set and _certificate_not_asked_for(detail):
        # The server saw no credentials at all: the certificate was never sent, which the
        # server decides (TLS asks the client for one), not the CLI.
        message += (
            " (the server did not ask for the certificate in "
            f"CERTCTL_CLIENT_CERT={os.environ['CERTCTL_CLIENT_CERT']}: its tls.client-auth is "
            "none, or a proxy in front ends TLS; or set CERTCTL_API_KEY to an API key)"
        )
    elif code == 401 and not key_set:
        message += " (set CERTCTL_API_KEY to an API key, e.g. $(cat certctl-data/admin-api-key))"
    elif code == 401 and detail in _KEY_REFUSALS:
        # The server's words for the key sent (services.key_authentication): say where it
        # came from and how to get a working one. Another server's words get no hint, not
        # a wrong one.
        hint = _KEY_REFUSALS[detail]
        message += f" ({hint.format(url=f'{base.scheme}://{base.netloc}{base.path}')})"
    return message


def _unmapped_certificate(detail: object) -> bool:
    """Whether a 401's detail is certctl's refusal of a client certificate it maps to no role."""
    return (
        isinstance(detail, str)
        and bool(os.environ.get("CERTCTL_CLIENT_CERT"))
        and detail.startswith("client certificate subject ")
        and " is not mapped to any role" in detail
    )


def _certificate_not_asked_for(detail: object) -> bool:
    """Whether a 401 says no credentials arrived though CERTCTL_CLIENT_CERT is set."""
    return (
        isinstance(detail, str)
        and bool(os.environ.get("CERTCTL_CLIENT_CERT"))
        and detail.startswith("authentication required")
    )


# The server's 401s for a client certificate it will never take (api/authentication.py).
_CERTIFICATE_REFUSALS = (
    "client certificate revoked",
    "client certificate expired",
    "client certificate refused",
)


def _refused_certificate(detail: object) -> bool:
    """Whether a 401's detail is certctl's refusal of the client certificate itself."""
    return (
        isinstance(detail, str)
        and bool(os.environ.get("CERTCTL_CLIENT_CERT"))
        and detail.startswith(_CERTIFICATE_REFUSALS)
    )


_RENEW_KEY = (
    "the key in CERTCTL_API_KEY: mint another with 'certctl auth apikeys create ACTOR_ID' under "
    "a working key, or with 'certctl admin-key' on the server's host"
)
_WRONG_KEY = (
    "CERTCTL_API_KEY is no key of the server at {url}: give a whole key, as 'certctl auth "
    "apikeys create' printed it or admin-api-key holds it"
)
# A 401's detail when the API key sent was refused -> what to do about it.
_KEY_REFUSALS = {
    "malformed API key": _WRONG_KEY,
    "unknown API key": _WRONG_KEY,
    "API key expired": _RENEW_KEY,
    "API key revoked": _RENEW_KEY,
    "API key's actor no longer exists": _RENEW_KEY,
}


def _retry_after_s(response: Any) -> int | None:
    """The seconds ``Retry-After`` asks to wait (RFC 9110 10.2.3), None if absent or unreadable.

    Either delay-seconds (certctl sends those) or an HTTP-date (proxies and load balancers
    do): counted from the answer's own Date when it has one, so a client clock that is off
    does not change the delay, else from this machine's clock.
    """
    import math
    import time

    value = str(response.headers.get("retry-after", "")).strip()
    if value.isascii() and value.isdigit():  # RFC 9110 DIGIT: not "²" nor another script's
        try:
            return int(value)
        except ValueError:  # past Python's 4300-digit limit: no delay to show
            return None
    at = _http_date(value)
    if at is None:
        return None
    now = _http_date(str(response.headers.get("date", "")))
    return max(0, math.ceil(at - (time.time() if now is None else now)))


def _http_date(value: str) -> float | None:
    """An HTTP-date as a POSIX timestamp (GMT when no zone is given); None if it is none."""
    from datetime import UTC
    from email.utils import parsedate_to_datetime

    try:
        at = parsedate_to_datetime(value)
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def send_request(
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
    ``path`` must quote what came from the user (:func:`path_segment`).
    """
    import httpx

    # The variables stand for options (--url, --timeout a client would take): a value that
    # does not parse is a usage error (exit 2), checked before any file they name is read.
    with option_value():
        url = _server_url()
        key = _api_key()
        timeout = _timeout_s()
        check_proxy_settings()
        if os.environ.get("CERTCTL_CLIENT_KEY") and not os.environ.get("CERTCTL_CLIENT_CERT"):
            raise InvalidRequest("CERTCTL_CLIENT_KEY is set without CERTCTL_CLIENT_CERT")
    ca = _tls_context()
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
        client = httpx.Client(verify=ca if ca is not None else True, timeout=timeout, mounts=direct)
    except ImportError:
        raise socks_missing() from None
    try:
        with client:
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
        raise RemoteError(
            _redact(_failure(response, endpoint, key is not None), key),
            http_status=response.status_code,
        )
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


def unexpected_response(path: str, what: str) -> RemoteError:
    """A JSON answer of the wrong shape (a proxy or another service at CERTCTL_URL)."""
    return RemoteError(f"unexpected response from {_server_url()}{path}: {what}")


def path_segment(value: str) -> str:
    """``value`` as one path segment: an id holding '/', '?' or a newline stays an id."""
    return quote(value, safe="")


# The shapes of the ids the server makes (services.issuance.new_id, auth.apikeys): a 404 for
# a value of another shape is a name given where an id goes, and says where the id is.
CERT_ID = re.compile(r"[0-9a-f]{24}")
KEY_ID = re.compile(r"[0-9a-f]{16}")


@contextmanager
def id_hint(value: str, shape: re.Pattern[str], hint: str) -> Iterator[None]:
    """Add ``hint`` to a 404 for ``value`` when ``value`` is not shaped like an id."""
    try:
        yield
    except RemoteError as exc:
        if not exc.detail.startswith("HTTP 404:") or shape.fullmatch(value):
            raise
        raise RemoteError(f"{exc.detail} ({hint})") from None


@contextmanager
def issuer_hint(issuer_id: str) -> Iterator[None]:
    """Add to the server's 404 ``issuer ID not found`` the issuer ids closest to ``issuer_id``.

    Asked of the server's issuer list with the caller's own credentials, so only a caller
    who may list issuers (``issuer.read``) is shown any; others are pointed at the list.
    """
    try:
        yield
    except RemoteError as exc:
        if exc.detail != f"HTTP 404: issuer {issuer_id} not found":
            raise
        raise RemoteError(f"{exc.detail} ({_issuer_suggestion(issuer_id)})") from None


_LISTED_ISSUERS_MAX = 8


def _issuer_suggestion(issuer_id: str) -> str:
    listing = "'certctl issuers list' shows the issuer ids"
    if not (_api_key() or os.environ.get("CERTCTL_CLIENT_CERT")):
        return listing  # a public command run without credentials: the list would be a 401
    try:
        # Asked first (any authenticated caller may): the list itself, refused with 403,
        # counted each typo as a refused permission (certctl_auth_failures_total{reason=
        # "forbidden"}), what operators alert on as escalation attempts.
        me = send_request("GET", "/api/v1/auth/whoami")
        permissions = me.get("permissions") if isinstance(me, dict) else None
        if not isinstance(permissions, list) or "issuer.read" not in permissions:
            return listing
        answer = send_request("GET", "/api/v1/issuers")
    except CertctlError:
        return listing  # a refused key, or the server went away: the hint alone
    items = answer.get("items") if isinstance(answer, dict) else None
    ids = [str(i["id"]) for i in items or [] if isinstance(i, dict) and "id" in i]
    # Issuer ids are lower case only: `--issuer CLIENTS-CA` means clients-ca.
    hint = did_you_mean(issuer_id, ids)
    if hint:
        return hint
    if ids and len(ids) <= _LISTED_ISSUERS_MAX:
        return f"the issuers are {', '.join(sorted(ids))}"
    return listing


def not_empty(value: str | None) -> str | None:
    """An id argument, refused when blank.

    A blank id (``$(jq -r .id)`` of nothing) would send the request to the collection's URL
    (``/roles/``) or to a neighbouring route, and get a redirect or a bare 404 back.
    """
    if value is not None and not value.strip():
        raise typer.BadParameter("must not be empty")
    return value


def warn_about(data: Any) -> None:
    """The answer's ``warnings`` on stderr, one line each, as the offline commands print theirs.

    A clipped validity or a short lifetime must not hide in the JSON (or, with ``--out``, in
    output nobody reads).
    """
    from certctl.cli._common import warn

    warnings = data.get("warnings") if isinstance(data, dict) else None
    for message in warnings if isinstance(warnings, list) else []:
        if isinstance(message, str) and message.strip():
            warn(message)


def print_answer(data: Any) -> None:
    """The server's answer on stdout: text as it came, JSON indented, nothing for a 204."""
    if isinstance(data, str):
        sys.stdout.write(data)
    elif data is not None:
        typer.echo(json.dumps(data, indent=2))


def print_list(
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
        print_answer(data)
        return
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        # Whatever answers at CERTCTL_URL may not be certctl: one line, not a KeyError.
        raise unexpected_response(path, "no list of items")
    cursor = data.get("next_cursor")
    hint = more(cursor) if more is not None and isinstance(cursor, str) and cursor else None
    print_table(items, columns, empty=empty, more=hint)


def cell_text(value: object) -> str:
    """A JSON value as a cell: lists joined by commas, booleans as yes/no, nothing as -."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def field_cell(name: str) -> Callable[[dict[str, Any], datetime], str]:
    """A table column's cell maker: the item's ``name`` field as :func:`cell_text`."""
    return lambda item, _now: cell_text(item.get(name))


def status_cell(item: dict[str, Any], _now: datetime) -> str:
    """A certificate's or issuer's status, and the revoked CA above it while it is live."""
    status = cell_text(item.get("status"))
    revoked = item.get("issuer_revoked")
    if isinstance(revoked, dict) and item.get("status") in ("active", "expiring"):
        # Its own status stays (no CRL lists it), but clients checking the chain refuse it.
        return f"{status} (issuer {cell_text(revoked.get('issuer'))} revoked)"
    return status
