"""The server client commands (certs, auth, services, apply) on bad settings and odd answers.

Each case runs the installed ``certctl`` as a subprocess against a real HTTP(S) listener on
127.0.0.1 (``http.server`` in a thread) and checks the exit code, the one exact line on stderr,
and that no secret (API key, URL password or token) shows anywhere in the output.
"""

from __future__ import annotations

import email.utils
import http.server
import io
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests._tools import reaped

CERTCTL = Path(sys.executable).with_name("certctl")
KEY = "cctl_k1_ck_secretVALUE0123456789"
DEFAULT_URL = "https://127.0.0.1:8443"
EXAMPLE = f"(e.g. {DEFAULT_URL})"
SERVER_IP = ["--ip", "127.0.0.1", "--out", "server"]


@dataclass
class Answer:
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b"{}"
    # Run when the request arrives, before the answer: a change the client cannot foresee.
    side_effect: Callable[[], object] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: bytes = b""


@dataclass
class Listener:
    """A real HTTP(S) server on 127.0.0.1: answers ``answers[path]`` (404 otherwise)."""

    url: str
    answers: dict[str, Answer] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    # What the handler raised: recorded, not printed (see _serve).
    errors: list[BaseException] = field(default_factory=list)


def _serve(scheme: str, context: ssl.SSLContext | None) -> Iterator[Listener]:
    state = Listener(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            state.seen.append(
                Seen(self.command, self.path, self.headers.get("Authorization"), body)
            )
            answer = state.answers.get(self.path.split("?")[0], Answer(404, "text/html", b"<p>"))
            if answer.side_effect is not None:
                answer.side_effect()
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test output is the client's

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            # The default prints a traceback to sys.stderr, from a handler thread that may
            # outlive its test and write into the next one's capsys. A client leaving before
            # its answer (a timeout, a reader gone) is what several tests do on purpose.
            state.errors.append(sys.exc_info()[1] or RuntimeError("no exception"))

    server = Server(("127.0.0.1", 0), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    # shutdown() waits for the next poll: 0.5 s by default, at the teardown of each test.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    # A client gone (OSError: reset, broken pipe, TLS EOF) is expected; anything else is a
    # bug in the handler or an answer's side effect, once a traceback nobody had to read.
    unexpected = [e for e in state.errors if not isinstance(e, OSError)]
    assert not unexpected, unexpected


@pytest.fixture
def listener() -> Iterator[Listener]:
    yield from _serve("http", None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate for 127.0.0.1 and localhost, made by certctl itself."""
    base = tmp_path_factory.mktemp("client-pki")
    for argv in (
        ["ca", "create", "--out", "ca", "--cn", "client test CA"],
        ["ca", "create", "--out", "other-ca", "--cn", "another CA"],
        ["cert", "issue", "--ca", "ca", "--cn", "localhost", "--dns", "localhost", *SERVER_IP],
    ):
        proc = subprocess.run(
            [str(CERTCTL), *argv], cwd=base, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
    return base


@pytest.fixture
def tls_listener(pki: Path) -> Iterator[Listener]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server" / "tls.crt", pki / "server" / "tls.key")
    yield from _serve("https", context)


def certctl(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed certctl with only the given CERTCTL_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    clean["COLUMNS"] = "80"
    return subprocess.run(
        [str(CERTCTL), *args],
        env=clean | env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_error(
    proc: subprocess.CompletedProcess[str], line: str, secrets: Sequence[str] = ()
) -> None:
    """Exit 1, nothing on stdout, exactly ``certctl: error: <line>`` on stderr, no secret."""
    assert proc.stderr == f"certctl: error: {line}\n", proc.stderr
    assert proc.returncode == 1
    assert proc.stdout == ""
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr, secret


def assert_usage_error(
    proc: subprocess.CompletedProcess[str],
    line: str,
    secrets: Sequence[str] = (),
    command: str = "certs list",
) -> None:
    """As ``assert_error``, for a bad value of a variable standing for an option: exit 2."""
    assert proc.stderr == f"certctl: error: {line} (see 'certctl {command} --help')\n", proc.stderr
    assert proc.returncode == 2
    assert proc.stdout == ""
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr, secret


def test_the_listener_is_quiet_when_a_client_leaves_before_its_answer(
    listener: Listener, capfd: pytest.CaptureFixture[str]
) -> None:
    # Clients here leave before their answer on purpose (a timeout, a reader gone): the
    # handler's write then failed and socketserver printed "Exception occurred during
    # processing of request" and a traceback to stderr, from a thread that can outlive its
    # test (the 2 s answer of an unanswered request): it landed in a later test's capsys.
    left = threading.Event()
    listener.answers["/leave"] = Answer(side_effect=lambda: left.wait(5))
    with socket.create_connection(("127.0.0.1", int(listener.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"GET /leave HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        deadline = time.monotonic() + 5
        while not listener.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        # Closed with a reset: the handler's first write fails, as when a client gave up.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    left.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        "process_request_thread" in t.name for t in threading.enumerate()
    ):
        time.sleep(0.01)
    assert [s.path for s in listener.seen] == ["/leave"]
    assert capfd.readouterr() == ("", "")
    assert [type(e) for e in listener.errors] in ([BrokenPipeError], [ConnectionResetError])


# --- 1. the API key ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["\n", "\r", "\r\n", " "], ids=["lf", "cr", "crlf", "space"])
def test_api_key_trailing_newline_is_dropped(listener: Listener, suffix: str) -> None:
    listener.answers["/api/v1/certificates"] = Answer(body=b'{"items": []}')
    proc = certctl(
        "certs", "list", env={"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY + suffix}
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"items": []}
    assert [s.authorization for s in listener.seen] == [f"Bearer {KEY}"]


@pytest.mark.parametrize(
    "key",
    [
        "ck_sëcretVALUE",
        "ck_secret\rVALUE",
        "ck_secret\nVALUE",
        "ck_sec\x01retVALUE",
        "ck_se cretVALUE",
    ],
    ids=["non-ascii", "inner-cr", "inner-lf", "control", "inner-space"],
)
def test_api_key_refused_without_echo(listener: Listener, key: str) -> None:
    proc = certctl("certs", "list", env={"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": key})
    assert_usage_error(
        proc,
        "CERTCTL_API_KEY contains spaces, control or non-ASCII characters (its value is not shown)",
        secrets=["secret", "VALUE"],
    )
    assert listener.seen == []  # refused before anything was sent


@pytest.mark.parametrize("key", ["Bearer ck_secretVALUE", "bearer ck_secretVALUE"])
def test_api_key_copied_with_its_bearer_scheme_says_so(listener: Listener, key: str) -> None:
    # From a curl line's header: the message was "contains spaces, control or non-ASCII
    # characters", which did not say which space.
    proc = certctl("certs", "list", env={"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": key})
    assert_usage_error(
        proc,
        "CERTCTL_API_KEY starts with 'Bearer ': give the key alone, the CLI sends the "
        "Authorization header itself (its value is not shown)",
        secrets=["secret", "VALUE"],
    )
    assert listener.seen == []


def test_api_key_echoed_by_the_server_is_redacted(listener: Listener) -> None:
    # A proxy or a buggy server quoting the Authorization header back in its error.
    listener.answers["/api/v1/certificates"] = Answer(
        400, "application/problem+json", json.dumps({"detail": f"bad header Bearer {KEY}"}).encode()
    )
    listener.answers["/api/v1/auth/roles"] = Answer(502, "text/plain", f"Bearer {KEY}?".encode())
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    assert_error(
        certctl("certs", "list", env=env),
        "HTTP 400: bad header Bearer <CERTCTL_API_KEY>",
        secrets=[KEY],
    )
    assert_error(
        certctl("auth", "roles", "list", env=env),
        f"HTTP 502 Bad Gateway from {listener.url}/api/v1/auth/roles "
        "(content-type text/plain: Bearer <CERTCTL_API_KEY>?)",
        secrets=[KEY],
    )


def test_plain_http_beyond_loopback_is_refused_before_the_key_is_sent() -> None:
    env = {"CERTCTL_URL": "http://192.0.2.2:18999", "CERTCTL_API_KEY": KEY}
    assert_usage_error(
        certctl("certs", "list", env=env),
        "CERTCTL_URL: http:// to a host other than loopback would send the API key in clear "
        "text; use https://, or set CERTCTL_ALLOW_INSECURE=1 if that is intended",
        secrets=[KEY],
    )


def test_plain_http_on_loopback_and_an_explicit_opt_in_are_used(listener: Listener) -> None:
    items = b'{"items": [], "next_cursor": null}'
    listener.answers["/api/v1/auth/roles"] = Answer(200, "application/json", items)
    for url in (listener.url, listener.url.replace("127.0.0.1", "localhost")):
        proc = certctl("auth", "roles", "list", env={"CERTCTL_URL": url, "CERTCTL_API_KEY": KEY})
        assert proc.returncode == 0, proc.stderr
    assert len(listener.seen) == 2
    # Opted in: not refused, only unreachable (::2 is no loopback address and no host here).
    opted = {"CERTCTL_URL": "http://[::2]:9", "CERTCTL_API_KEY": KEY, "CERTCTL_ALLOW_INSECURE": "1"}
    proc = certctl("auth", "roles", "list", env=opted)
    assert "cannot reach" in proc.stderr, proc.stderr


def test_loopback_requests_never_go_through_a_proxy(listener: Listener) -> None:
    # A proxy from the environment (a corporate http_proxy) would get the API key in clear
    # text for an http:// loopback URL, and could not reach this machine's loopback anyway.
    listener.answers["/api/v1/auth/roles"] = Answer(body=b'{"items": [], "next_cursor": null}')
    proxy_gen = _serve("http", None)
    proxy = next(proxy_gen)
    try:
        proxies = {
            name: proxy.url
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy")
        }
        no_exceptions = {"NO_PROXY": "", "no_proxy": ""}
        for url in (listener.url, listener.url.replace("127.0.0.1", "localhost")):
            env = {"CERTCTL_URL": url, "CERTCTL_API_KEY": KEY} | proxies | no_exceptions
            proc = certctl("auth", "roles", "list", env=env)
            assert proc.returncode == 0, proc.stderr
        assert proxy.seen == []
        assert [seen.authorization for seen in listener.seen] == [f"Bearer {KEY}"] * 2
        # Beyond loopback the environment's proxy is still used (opted-in plain HTTP here).
        remote = {"CERTCTL_URL": "http://certctl.example:8443", "CERTCTL_ALLOW_INSECURE": "1"}
        proc = certctl("auth", "roles", "list", env=remote | proxies | no_exceptions)
        assert [seen.path for seen in proxy.seen] == [
            "http://certctl.example:8443/api/v1/auth/roles"
        ], proc.stderr
    finally:
        proxy_gen.close()


def test_redirect_says_where_to_point_certctl_url(listener: Listener) -> None:
    # A reverse proxy sending http:// to https://: before, "not JSON (HTTP 301, …)".
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    moved = "https://certctl.example:8443/api/v1/auth/roles?token=x"
    listener.answers["/api/v1/auth/roles"] = Answer(
        301, "text/html", b"", headers={"Location": moved}
    )
    proc = certctl("auth", "roles", "list", env=env)
    assert_error(
        proc,
        f"HTTP 301 Moved Permanently from {listener.url}/api/v1/auth/roles: redirected, "
        "not followed; set CERTCTL_URL=https://certctl.example:8443",
        [KEY, "token=x"],
    )
    # Elsewhere: only where it points, never followed (the key would go there).
    listener.answers["/api/v1/auth/roles"] = Answer(
        302, "text/html", b"", headers={"Location": "https://sso.example/login"}
    )
    proc = certctl("auth", "roles", "list", env=env)
    assert_error(
        proc,
        f"HTTP 302 Found from {listener.url}/api/v1/auth/roles: redirected to "
        "https://sso.example/login, not followed",
    )
    assert len(listener.seen) == 2


def test_timeouts_say_what_timed_out() -> None:
    # A listener that never answers (the kernel completes the TCP handshake; nobody reads).
    # Before: "_ssl.c:989: The handshake operation timed out", and for a POST "The read
    # operation timed out", not saying that the certificate may have been issued.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
        runs = {
            scheme: subprocess.Popen(
                [str(CERTCTL), "certs", "issue", "--cn", "slow.example"],
                env=clean
                | {
                    "CERTCTL_URL": f"{scheme}://127.0.0.1:{port}",
                    "CERTCTL_API_KEY": KEY,
                    "CERTCTL_TIMEOUT": "2",  # the default, 30 s, made this test take 31 s
                },
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for scheme in ("https", "http")
        }
        with reaped(runs.values()):
            results = {scheme: proc.communicate(timeout=90) for scheme, proc in runs.items()}
    url = f"127.0.0.1:{port}"
    assert results["https"] == (
        "",
        f"certctl: error: cannot reach https://{url}: no connection within 2 s "
        "(TCP or TLS handshake)\n",
    )
    assert results["http"] == (
        "",
        f"certctl: error: no answer from http://{url} within 2 s (POST /api/v1/certificates "
        "was sent and may have taken effect: check first)\n",
    )
    assert [proc.returncode for proc in runs.values()] == [1, 1]


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf", "3601"])
def test_a_bad_certctl_timeout_is_one_line(value: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    proc = subprocess.run(
        [str(CERTCTL), "certs", "list"],
        env=clean | {"CERTCTL_URL": "https://127.0.0.1:9", "CERTCTL_TIMEOUT": value},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_usage_error(
        proc, "CERTCTL_TIMEOUT must be a number of seconds, above 0 and at most 3600"
    )


def test_revoking_a_whole_key_sends_only_its_id(listener: Listener) -> None:
    whole = "cctl_0123456789abcdef_" + "s" * 43
    path = "/api/v1/auth/apikeys/0123456789abcdef"
    listener.answers[path] = Answer(204, "application/json", b"")
    proc = certctl(
        "auth",
        "apikeys",
        "revoke",
        whole,
        env={"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY},
    )
    assert proc.returncode == 0, proc.stderr
    assert "revoking it by its id 0123456789abcdef" in proc.stderr
    assert [s.path for s in listener.seen] == [path]
    assert "s" * 43 not in "".join(s.path for s in listener.seen)


def test_a_deactivation_that_left_certificates_unrevoked_names_them_and_exits_1(
    listener: Listener,
) -> None:
    # The server's answer when a keyCompromise was refused for one certificate (its key has
    # more certificates than one revocation takes): the account is deactivated, and a script
    # must not take the certificates as revoked.
    account = "0123456789abcdef01234567"
    path = f"/api/v1/acme/accounts/{account}/deactivate"
    detail = "certificate c1: more than 10000 certificates certify its key: nothing was revoked"
    answer = {
        "id": account,
        "status": "deactivated",
        "revoked_certificates": ["c2"],
        "not_revoked": [{"id": "c1", "detail": detail}],
    }
    listener.answers[path] = Answer(body=json.dumps(answer).encode())
    argv = ["acme", "accounts", "deactivate", account, "--revoke-certificates"]
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    proc = certctl(*argv, "--reason", "keyCompromise", env=env)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout) == answer
    assert proc.stderr.splitlines() == [
        f"ACME account {account} is deactivated: its next request is refused; "
        "1 certificate(s) revoked, 1 not",
        f"certctl: error: certificate c1 not revoked: {detail}",
    ]
    # All revoked: exit 0, as before.
    listener.answers[path] = Answer(body=json.dumps({**answer, "not_revoked": []}).encode())
    proc = certctl(*argv, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.endswith("; 1 certificate(s) revoked\n"), proc.stderr


def test_an_account_deactivated_at_an_unknown_time_says_so_in_the_table(
    listener: Listener,
) -> None:
    # Deactivated before certctl recorded the time, its audit event gone (migration 0032).
    item = {
        "id": "0123456789abcdef01234567",
        "status": "deactivated",
        "contact": [],
        "created_at": "2026-01-02T03:04:05+00:00",
        "thumbprint": "t",
        "eab_key_id": None,
        "orders": 0,
        "certificates": 0,
        "deactivated_at": None,
    }
    valid = {**item, "id": "0123456789abcdef01234568", "status": "valid"}
    recorded = {**item, "id": "0123456789abcdef01234569"}
    recorded["deactivated_at"] = "2026-02-03T04:05:06+00:00"
    body = {"items": [recorded, valid, item], "next_cursor": None}
    listener.answers["/api/v1/acme/accounts"] = Answer(body=json.dumps(body).encode())
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY, "COLUMNS": "200"}
    proc = certctl("acme", "accounts", "list", "-o", "table", env=env)
    assert proc.returncode == 0, proc.stderr
    _header, *rows = proc.stdout.splitlines()
    assert [row.split()[-3:] for row in rows] == [
        ["2026-02-03", "04:05", "UTC"],
        ["03:04", "UTC", "-"],
        ["03:04", "UTC", "unknown"],
    ]


def test_401_without_a_key_says_which_variable(listener: Listener) -> None:
    listener.answers["/api/v1/services"] = Answer(
        401, "application/problem+json", b'{"detail": "missing bearer token"}'
    )
    assert_error(
        certctl("services", "list", env={"CERTCTL_URL": listener.url}),
        "HTTP 401: missing bearer token "
        "(set CERTCTL_API_KEY to an API key, e.g. $(cat certctl-data/admin-api-key))",
    )


def test_401_of_the_key_that_was_sent_says_what_to_do(listener: Listener) -> None:
    # "HTTP 401: API key expired" said nothing of where the key came from or how to get
    # another; a 401 about something else (a client certificate) gets no word of the key.
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    refusals = {
        "/api/v1/certificates": "API key expired",
        "/api/v1/services": "unknown API key",
        "/api/v1/issuers": "client certificate revoked",
    }
    for path, detail in refusals.items():
        listener.answers[path] = Answer(
            401, "application/problem+json", json.dumps({"detail": detail}).encode()
        )
    assert_error(
        certctl("certs", "list", env=env),
        "HTTP 401: API key expired (the key in CERTCTL_API_KEY: mint another with "
        "'certctl auth apikeys create ACTOR_ID' under a working key, or with 'certctl admin-key' "
        "on the server's host)",
        secrets=[KEY],
    )
    # The argument as the command's own help names it (before, the hint said ACTOR).
    usage = certctl("auth", "apikeys", "create", "--help", env={}).stdout.splitlines()[0]
    assert usage.split()[-1] == "ACTOR_ID", usage
    assert_error(
        certctl("services", "list", env=env),
        f"HTTP 401: unknown API key (CERTCTL_API_KEY is no key of the server at {listener.url}: "
        "give a whole key, as 'certctl auth apikeys create' printed it or admin-api-key holds it)",
        secrets=[KEY],
    )
    assert_error(
        certctl("issuers", "list", env=env), "HTTP 401: client certificate revoked", secrets=[KEY]
    )


# --- 2. and 3. CERTCTL_URL ---------------------------------------------------------------


def test_url_with_credentials_is_refused_and_not_echoed(listener: Listener) -> None:
    host = listener.url.removeprefix("http://")
    creds = (
        "CERTCTL_URL must not contain a user name or password; put the API key in CERTCTL_API_KEY"
    )
    query = (
        "CERTCTL_URL must not contain a query or fragment (?… or #…); "
        "put the API key in CERTCTL_API_KEY"
    )
    for url, line in (
        (f"http://admin:hunter2@{host}", creds),
        (f"http://hunter2@{host}/", creds),
        (f"http://{host}/?token=hunter2", query),
        (f"http://{host}#hunter2", query),
    ):
        proc = certctl("certs", "list", env={"CERTCTL_URL": url, "CERTCTL_API_KEY": KEY})
        assert_usage_error(proc, line, secrets=["hunter2", KEY])
    assert listener.seen == []


BAD_PORT = f"CERTCTL_URL has an invalid port, expected 1-65535 {EXAMPLE}"
NO_SCHEME = f"CERTCTL_URL must start with https:// or http:// {EXAMPLE}"
MALFORMED_URLS = {
    "ipv6-bracket": ("http://[::1", f"CERTCTL_URL is not a valid URL: Invalid IPv6 URL {EXAMPLE}"),
    "no-scheme-ip": ("127.0.0.1:8443", NO_SCHEME),
    "no-scheme-name": ("localhost:8443", NO_SCHEME),
    "ftp": (
        "ftp://127.0.0.1",
        f"CERTCTL_URL: unsupported scheme 'ftp', use https:// or http:// {EXAMPLE}",
    ),
    # Parsed as host "admin", port "hunter2": the port text must not be quoted.
    "password-without-at": ("https://admin:hunter2", BAD_PORT),
    "port-high": ("https://127.0.0.1:99999", BAD_PORT),
    "port-0": ("https://127.0.0.1:0", BAD_PORT),
    "no-host": ("https://:8443", f"CERTCTL_URL has no host {EXAMPLE}"),
    "inner-space": ("https://127.0.0.1 :8443", "CERTCTL_URL contains spaces or control characters"),
}


@pytest.mark.parametrize(("url", "line"), MALFORMED_URLS.values(), ids=list(MALFORMED_URLS))
def test_malformed_url(url: str, line: str) -> None:
    proc = certctl("certs", "list", env={"CERTCTL_URL": url})
    assert_usage_error(proc, line, secrets=["hunter2"])


def test_url_path_and_surrounding_blanks_are_kept_working(listener: Listener) -> None:
    # A path prefix (a reverse proxy) is allowed; a trailing slash or newline is not an error.
    listener.answers["/certctl/api/v1/services"] = Answer(body=b'{"items": []}')
    proc = certctl("services", "list", env={"CERTCTL_URL": f" {listener.url}/certctl/\n"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"items": []}
    assert [s.path for s in listener.seen] == ["/certctl/api/v1/services"]


def test_refused_connection_shows_the_url_only() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = certctl(
        "certs", "list", env={"CERTCTL_URL": f"https://127.0.0.1:{port}/", "CERTCTL_API_KEY": KEY}
    )
    assert_error(
        proc,
        f"cannot reach https://127.0.0.1:{port}: [Errno 111] Connection refused "
        "(the URL in CERTCTL_URL: is 'certctl serve' running there?)",
        [KEY],
    )


def test_a_proxy_refusing_the_connection_is_named_not_certctl_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (cheap). Through a proxy the refusal is the proxy's: before, the line asked
    # whether 'certctl serve' ran at CERTCTL_URL, a host this machine never connected to.
    from certctl.cli.main import run

    with socket.socket() as sock:  # a port that was free a moment ago: no proxy listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name in [n for n in os.environ if n.startswith("CERTCTL_") or n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CERTCTL_URL", "https://certctl.example.com:8443")
    monkeypatch.setenv("CERTCTL_API_KEY", KEY)
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:secret@127.0.0.1:{port}")
    assert run(["auth", "whoami"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "certctl: error: cannot reach https://certctl.example.com:8443: [Errno 111] Connection "
        f"refused (127.0.0.1:{port}, the proxy in HTTPS_PROXY, refuses connections: is the "
        "proxy running there?)\n"
    )
    assert "secret" not in err
    assert KEY not in err
    # ALL_PROXY, lower case, without a scheme: named as httpx reads it.
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("all_proxy", f"127.0.0.1:{port}")
    assert run(["auth", "whoami"]) == 1
    assert capsys.readouterr().err.endswith(
        f"(127.0.0.1:{port}, the proxy in all_proxy, refuses connections: is the proxy "
        "running there?)\n"
    )


def test_refused_connection_to_the_default_url_says_it_is_the_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process: the real default (127.0.0.1:8443) may be a server someone runs on this machine.
    from certctl.cli import _api
    from certctl.cli.main import run

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name in [n for n in os.environ if n.startswith("CERTCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(_api, "DEFAULT_URL", f"https://127.0.0.1:{port}")
    for url in (None, "", " \n"):  # unset, or set to nothing: the default either way
        if url is not None:
            monkeypatch.setenv("CERTCTL_URL", url)
        assert run(["auth", "apikeys", "list"]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (
            f"certctl: error: cannot reach https://127.0.0.1:{port}: [Errno 111] Connection "
            "refused (CERTCTL_URL is not set, so this is the default: start 'certctl serve', "
            "or set CERTCTL_URL to the server's URL)\n"
        )


def test_a_host_name_that_does_not_resolve_says_it_is_the_one_in_certctl_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (cheap). "[Errno -2] Name or service not known" alone did not say which
    # name: the one in CERTCTL_URL (RFC 6761: .invalid never resolves).
    from certctl.cli.main import run

    for name in [n for n in os.environ if n.startswith("CERTCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CERTCTL_URL", "https://certctl.example.invalid:8443")
    assert run(["auth", "whoami"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("certctl: error: cannot reach https://certctl.example.invalid:8443: ")
    assert err.endswith(
        " (certctl.example.invalid, the host name in CERTCTL_URL, does not resolve: a typo, "
        "a name only another network knows, or no name server reachable?)\n"
    )
    assert err.count("\n") == 1
    # Through a proxy the name resolved here is the proxy's, not CERTCTL_URL's (which the
    # proxy resolves): that one is named, without the rest of the variable (a password).
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.example.invalid:3128")
    assert run(["auth", "whoami"]) == 1
    err = capsys.readouterr().err
    assert err.endswith(
        " (proxy.example.invalid, the host of the proxy in HTTPS_PROXY, does not resolve)\n"
    )
    assert "secret" not in err
    # ... unless NO_PROXY exempts CERTCTL_URL's host, as httpx does.
    monkeypatch.setenv("NO_PROXY", "example.invalid")
    assert run(["auth", "whoami"]) == 1
    assert "the host name in CERTCTL_URL, does not resolve" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variables", "through_proxy"),
    [
        # httpx: ".example" exempts the names below it, not the name itself (curl-style
        # urllib.request.proxy_bypass exempted both, so the proxy's failure was blamed on
        # CERTCTL_URL's host).
        ({"NO_PROXY": ".certctl.example.invalid"}, True),
        ({"NO_PROXY": ".example.invalid"}, False),
        # A port in NO_PROXY: httpx goes direct to that host and port (proxy_bypass, given
        # the host alone, did not match, so the proxy was blamed for CERTCTL_URL's host).
        ({"NO_PROXY": "certctl.example.invalid:8443"}, False),
        ({"NO_PROXY": "certctl.example.invalid:9443"}, True),
        # An empty lower-case variable unsets the upper-case one (urllib.request.getproxies).
        ({"https_proxy": ""}, False),
    ],
    ids=["dot-apex", "dot-below", "port", "other-port", "empty-lower-case"],
)
def test_the_proxy_blamed_for_a_host_that_does_not_resolve_is_the_one_httpx_used(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variables: dict[str, str],
    through_proxy: bool,
) -> None:
    # In-process (cheap): .invalid never resolves, whichever host httpx looks up.
    from certctl.cli.main import run

    for name in [n for n in os.environ if n.startswith("CERTCTL_") or n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CERTCTL_URL", "https://certctl.example.invalid:8443")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.invalid:3128")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    # What httpx itself does with these variables: the test's own check of the expectation.
    import httpx

    with httpx.Client() as client:
        transport = client._transport_for_url(httpx.URL("https://certctl.example.invalid:8443"))
        assert ("Proxy" in type(transport._pool).__name__) is through_proxy  # type: ignore[attr-defined]
    assert run(["auth", "whoami"]) == 1
    err = capsys.readouterr().err
    if through_proxy:
        assert err.endswith(
            " (proxy.example.invalid, the host of the proxy in HTTPS_PROXY, does not resolve)\n"
        ), err
    else:
        assert err.endswith(
            " (certctl.example.invalid, the host name in CERTCTL_URL, does not resolve: a typo, "
            "a name only another network knows, or no name server reachable?)\n"
        ), err


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        # Before: "internal error (ValueError: Unknown scheme for proxy URL …)".
        (
            {"HTTPS_PROXY": "ftp://user:secret@proxy.example.invalid:21"},
            "HTTPS_PROXY: unsupported proxy scheme 'ftp', use http://, https://, socks5:// "
            "or socks5h://",
        ),
        # httpx reads every proxy variable, not only the request's scheme's.
        (
            {"http_proxy": "gopher://user:secret@proxy.example.invalid"},
            "http_proxy: unsupported proxy scheme 'gopher', use http://, https://, socks5:// "
            "or socks5h://",
        ),
        # Before: "internal error (ImportError: Using SOCKS proxy, but the 'socksio' …)".
        (
            {"ALL_PROXY": "socks5://user:secret@proxy.example.invalid:1080"},
            "ALL_PROXY: a socks5:// proxy needs the socksio package, which is not installed "
            "(pip install 'httpx[socks]')",
        ),
        # Before: "cannot reach …: Invalid port: 'secret…'" or a connection to another port.
        (
            {"HTTPS_PROXY": "http://user:secret@proxy.example.invalid:secret"},
            "HTTPS_PROXY has an invalid port, expected 1-65535",
        ),
        (
            {"HTTPS_PROXY": "http://user:secret@proxy.example.invalid:99999"},
            "HTTPS_PROXY has an invalid port, expected 1-65535",
        ),
        (
            {"https_proxy": "http://user:secret@[::1"},
            "https_proxy is not a valid URL: Invalid IPv6 URL",
        ),
        # Before: "cannot reach …: Invalid port: ':1]'", naming no variable.
        (
            {"HTTPS_PROXY": "http://proxy.example.invalid:3128", "NO_PROXY": "localhost,[::1]"},
            "NO_PROXY: '[::1]' cannot be read (Invalid port): an IPv6 address goes without "
            "brackets, as ::1",
        ),
        (
            {"no_proxy": "[2001:db8::1]:8443"},
            "no_proxy: '[2001:db8::1]:8443' cannot be read (Invalid port): an IPv6 address goes "
            "without brackets, as 2001:db8::1, or with a port as all://[2001:db8::1]:8443",
        ),
        (
            {"NO_PROXY": "example.invalid:port"},
            "NO_PROXY: 'example.invalid:port' cannot be read (Invalid port)",
        ),
        # An entry with a password is not echoed.
        (
            {"NO_PROXY": "http://user:secret@example.invalid:x"},
            "NO_PROXY: an entry with user info cannot be read (Invalid port)",
        ),
    ],
    ids=[
        "ftp",
        "other-scheme-variable",
        "socks-without-socksio",
        "port-text",
        "port-range",
        "ipv6-unclosed",
        "no-proxy-ipv6",
        "no-proxy-ipv6-port",
        "no-proxy-port",
        "no-proxy-user-info",
    ],
)
def test_a_proxy_setting_httpx_cannot_use_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variables: dict[str, str],
    line: str,
) -> None:
    # In-process (cheap): refused before any connection, so no proxy or server is needed.
    from certctl.cli.main import run

    for name in [n for n in os.environ if n.startswith("CERTCTL_") or n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CERTCTL_URL", "https://certctl.example.invalid:8443")
    monkeypatch.setenv("CERTCTL_API_KEY", KEY)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    # As where httpx[socks] is not installed (None in sys.modules: its import fails).
    monkeypatch.setitem(sys.modules, "socksio", None)
    code = run(["auth", "whoami"])
    out, err = capsys.readouterr()
    if "package" in line:
        # What this machine lacks to use a good setting: a failure, not a usage error.
        assert code == 1
        assert (out, err) == ("", f"certctl: error: {line}\n")
    else:
        # A value that does not parse: a usage error, as a bad option's (exit 2).
        assert code == 2
        assert (out, err) == ("", f"certctl: error: {line} (see 'certctl auth whoami --help')\n")
    assert "secret" not in err


# --- 4. answers that are not certctl's ---------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["services", "list"], "/api/v1/services"),
        (["services", "status"], "/api/v1/services"),
        (["certs", "list"], "/api/v1/certificates"),
        (["auth", "roles", "get", "r-x"], "/api/v1/auth/roles/r-x"),
    ],
    ids=["services-list", "services-status", "certs-list", "roles-get"],
)
def test_non_json_200(listener: Listener, argv: list[str], path: str) -> None:
    listener.answers[path] = Answer(200, "text/html; charset=utf-8", b"<html>login</html>")
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    assert_error(
        certctl(*argv, env=env),
        f"unexpected response from {listener.url}{path}: "
        "not JSON (HTTP 200, content-type text/html)",
        secrets=[KEY],
    )


def test_json_of_the_wrong_shape(listener: Listener) -> None:
    listener.answers["/api/v1/services"] = Answer(body=b"[1, 2]")
    listener.answers["/api/v1/services/web"] = Answer(body=b'"web"')
    env = {"CERTCTL_URL": listener.url}
    assert_error(
        certctl("services", "status", env=env),
        f"unexpected response from {listener.url}/api/v1/services: no list of TLSServices",
    )
    assert_error(
        certctl("services", "status", "web", env=env),
        f"unexpected response from {listener.url}/api/v1/services/web: not a TLSService",
    )


def test_a_table_of_an_answer_of_the_wrong_shape_is_one_line(listener: Listener) -> None:
    # Piped, the JSON is printed as it came (as before); a table needs a list of items.
    listener.answers["/api/v1/auth/roles"] = Answer(body=b'{"items": {"r-x": {}}}')
    env = {"CERTCTL_URL": listener.url}
    assert (
        certctl("auth", "roles", "list", env=env).stdout
        == '{\n  "items": {\n    "r-x": {}\n  }\n}\n'
    )
    assert_error(
        certctl("auth", "roles", "list", "-o", "table", env=env),
        f"unexpected response from {listener.url}/api/v1/auth/roles: no list of items",
    )


def test_auth_permissions_table_json_and_a_wrong_shape(listener: Listener) -> None:
    # Before there was no command: the names were in GET /api/v1/auth/permissions only.
    answer = {"items": ["cert.read", "cert.issue"]}
    listener.answers["/api/v1/auth/permissions"] = Answer(body=json.dumps(answer).encode())
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    table = certctl("auth", "permissions", "-o", "table", env=env)
    assert (table.returncode, table.stderr) == (0, "")
    assert table.stdout == "PERMISSION\ncert.read\ncert.issue\n"
    piped = certctl("auth", "permissions", env=env)
    assert json.loads(piped.stdout) == answer
    listener.answers["/api/v1/auth/permissions"] = Answer(body=b'{"items": [{"p": 1}, 2]}')
    assert_error(
        certctl("auth", "permissions", "-o", "table", env=env),
        f"unexpected response from {listener.url}/api/v1/auth/permissions: no list of items",
    )


def test_whoami_warns_of_mapped_roles_that_do_not_exist(listener: Listener) -> None:
    # `auth whoami` printed a mapping's typo (r-opertor) among the roles with no word that it
    # grants nothing: stdout stays the server's JSON, stderr names each such role.
    answer = {
        "actor_id": "cert:CN=ci",
        "roles": ["r-opertor", "r-viewer", "zz\x1b"],
        "permissions": ["cert.read"],
        "auth_method": "client_certificate",
        "missing_roles": ["r-opertor", "zz\x1b"],
    }
    listener.answers["/api/v1/auth/whoami"] = Answer(body=json.dumps(answer).encode())
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    proc = certctl("auth", "whoami", env=env)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == answer
    assert proc.stderr == (
        "certctl: warning: role r-opertor of this client certificate's mapping does not "
        "exist: it gives no permissions until a role of that name is created\n"
        "certctl: warning: role zz\\x1b of this client certificate's mapping does not "
        "exist: it gives no permissions until a role of that name is created\n"
    )
    # A wrong shape warns of nothing (not of each letter); one run: each costs ~1 s.
    listener.answers["/api/v1/auth/whoami"] = Answer(
        body=json.dumps(answer | {"missing_roles": "r-x"}).encode()
    )
    proc = certctl("auth", "whoami", env=env)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_a_list_whose_stdout_fails_ends_quietly_or_in_one_line(listener: Listener) -> None:
    # `certctl certs list -o table | head -0`: a table is one write, left in Python's buffer
    # for the interpreter's exit, which printed "Exception ignored … BrokenPipeError" with
    # status 120; a closed stdout (>&-) was an internal error (table) or status 0 with the
    # answer lost (JSON); a full disk printed "Exception ignored" too. Now a gone reader (or
    # none) ends quietly with status 1, as Typer and `certctl cert issue` do, and a failed
    # write is one line.
    listener.answers["/api/v1/certificates"] = Answer(
        body=json.dumps({"items": [{"id": "c1", "common_name": "web"}]}).encode()
    )
    # Unbuffered, every write would fail at once and the buffered case would not be tried.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CERTCTL_", "PYTHON"))}
    env = clean | {"CERTCTL_URL": listener.url}
    read_end, gone = os.pipe()
    os.close(read_end)
    full_line = "certctl: error: cannot write to stdout: No space left on device\n"
    expected: dict[tuple[str, str], tuple[int, str]] = {}
    runs = {}
    # Started together: five interpreters at once cost about the time of two.
    with open("/dev/full", "w") as full:
        for output, case, stdout, ends in (
            ("table", "gone", gone, (1, "")),
            ("table", "closed", None, (1, "")),
            ("json", "closed", None, (1, "")),
            ("table", "full", full, (1, full_line)),
            ("json", "full", full, (1, full_line)),
        ):
            argv = [str(CERTCTL), "certs", "list", "-o", output]
            if case == "closed":
                argv = ["sh", "-c", 'exec "$@" >&-', "sh", *argv]
            expected[output, case] = ends
            runs[output, case] = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
    os.close(gone)
    ended = {}
    with reaped(runs.values()):
        for key, run in runs.items():
            ended[key] = (run.wait(timeout=60), run.communicate()[1])
    assert ended == expected


def test_a_table_shows_control_characters_escaped(listener: Listener) -> None:
    # A common name is the requester's text: a terminal escape must not reach the terminal.
    item = {"id": "c1", "common_name": "\x1b[2Jevil\x07.example", "status": "active"}
    listener.answers["/api/v1/certificates"] = Answer(
        body=json.dumps({"items": [item], "next_cursor": None}).encode()
    )
    proc = certctl("certs", "list", "-o", "table", env={"CERTCTL_URL": listener.url})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout
    assert "\x07" not in proc.stdout
    assert "c1  \\x1b[2Jevil\\x07.example  active  -" in proc.stdout


def test_apikey_create_without_a_key_in_the_answer(listener: Listener, tmp_path: Path) -> None:
    listener.answers["/api/v1/auth/apikeys"] = Answer(body=b'{"id": "k1"}')
    proc = certctl(
        "auth",
        "apikeys",
        "create",
        "bot",
        "--out",
        "bot.key",
        env={"CERTCTL_URL": listener.url},
        cwd=tmp_path,
    )
    assert_error(proc, f"unexpected response from {listener.url}/api/v1/auth/apikeys: no key_value")
    assert list(tmp_path.iterdir()) == []


def test_html_error_page(listener: Listener) -> None:
    assert_error(
        certctl("certs", "get", "abc", env={"CERTCTL_URL": listener.url}),
        f"HTTP 404 Not Found from {listener.url}/api/v1/certificates/abc (content-type text/html)",
    )


def test_conflicts_and_busy_answers_are_one_line_with_the_delay_to_wait(
    listener: Listener,
) -> None:
    """A 409 is its problem detail; a 429 or 503 says how long Retry-After asks to wait.

    Before, a Retry-After given as an HTTP-date (RFC 9110 10.2.3 allows it; proxies send it)
    was dropped, and a text/plain body's trailing newline left "slow down )".
    """
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    conflict = (
        "actor bot already has a live API key named 'ci' (k1): give the new key another "
        "name (e.g. ci-2), and revoke the old one by its id once the new one is in use"
    )
    listener.answers["/api/v1/auth/apikeys"] = Answer(409, body=_problem(409, conflict))
    proc = certctl("auth", "apikeys", "create", "bot", "--name", "ci", env=env)
    assert_error(proc, f"HTTP 409: {conflict}", [KEY])

    busy = Answer(503, body=_problem(503, "storage is busy"))

    def two_minutes_from_now() -> None:
        # Counted from the answer's Date, not the client's clock (which may be off).
        busy.headers["Retry-After"] = email.utils.formatdate(time.time() + 120, usegmt=True)

    busy.side_effect = two_minutes_from_now
    listener.answers["/api/v1/services/q"] = busy
    proc = certctl("services", "get", "q", env=env)
    assert proc.stderr in {
        f"certctl: error: HTTP 503: storage is busy (Retry-After: {s} s)\n" for s in (119, 120)
    }, proc.stderr
    assert (proc.returncode, proc.stdout) == (1, "")

    listener.answers["/api/v1/services/q"] = Answer(
        429, "text/plain", b"slow down\n", headers={"Retry-After": "30"}
    )
    assert_error(
        certctl("services", "get", "q", env=env),
        f"HTTP 429 Too Many Requests from {listener.url}/api/v1/services/q (content-type "
        "text/plain: slow down) (Retry-After: 30 s)",
    )


def test_a_retry_after_that_is_no_delay_is_left_out_not_an_internal_error(
    listener: Listener,
) -> None:
    """Retry-After is ASCII digits (RFC 9110 delay-seconds) or an HTTP-date; else left out.

    Before, a value str.isdigit() accepts but int() does not (a superscript two, as a proxy
    writing Latin-1 may send) or past Python's 4300-digit limit replaced the 503's line with
    "internal error (ValueError: ...)"; another script's digits (Arabic-Indic three) were
    taken as a delay.
    """
    import httpx

    from certctl.cli._api import _retry_after_s

    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    listener.answers["/api/v1/services/q"] = Answer(
        503, body=_problem(503, "storage is busy"), headers={"Retry-After": "\u00b2"}
    )
    assert_error(certctl("services", "get", "q", env=env), "HTTP 503: storage is busy")
    for raw in ("\u00b2".encode(), "\u0663".encode(), b"9" * 5000, b"-1", b"1.5", b"0x10"):
        answer = httpx.Response(503, headers=[(b"retry-after", raw)])
        assert _retry_after_s(answer) is None, raw[:20]
    # A delay as large as digits say, and a date past, are still read.
    for raw, delay_s in ((b"9" * 30, int("9" * 30)), (b"Wed, 21 Oct 2015 07:28:00 GMT", 0)):
        assert _retry_after_s(httpx.Response(429, headers=[(b"retry-after", raw)])) == delay_s


def _problem(status: int, detail: str) -> bytes:
    body = {"type": "about:blank", "title": "x", "status": status, "detail": detail}
    return json.dumps(body).encode()


# --- 5. CERTCTL_CA_CERT ------------------------------------------------------------------


def test_ca_cert_file_problems(tmp_path: Path) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    (tmp_path / "adir").mkdir()
    for value, line in (
        ("garbage.pem", "CERTCTL_CA_CERT=garbage.pem: no PEM certificate in it"),
        ("adir", "CERTCTL_CA_CERT=adir: is a directory, expected a PEM CA certificate"),
        ("missing.pem", "CERTCTL_CA_CERT=missing.pem: file not found"),
    ):
        proc = certctl("certs", "list", env={"CERTCTL_CA_CERT": value}, cwd=tmp_path)
        assert_error(proc, line)


# --- 6. help and the TLS verification hint ---------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["certs"], ["auth"], ["auth", "apikeys"], ["issuers"], ["services"], ["apply"]],
    ids=["top", "certs", "auth", "auth-apikeys", "issuers", "services", "apply"],
)
def test_help_names_the_environment(argv: list[str]) -> None:
    proc = certctl(*argv, "--help", env={})
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # help is wrapped at 80 columns
    words = ("CERTCTL_URL", "CERTCTL_API_KEY", "CERTCTL_CA_CERT", DEFAULT_URL)
    for word in (*words, "CERTCTL_CLIENT_CERT", "CERTCTL_CLIENT_KEY", "CERTCTL_TIMEOUT"):
        assert word in text, (word, proc.stdout)
    # Every client command, apply included, and `certctl --help` (before, it named neither
    # this nor CERTCTL_TIMEOUT) say when http:// is refused.
    assert "http:// is refused beyond loopback unless CERTCTL_ALLOW_INSECURE=1" in text
    assert "unset: the system's trust store" in text


def test_issue_help_says_where_the_key_goes() -> None:
    text = " ".join(certctl("certs", "issue", "--help", env={}).stdout.split())
    assert "without --out it holds the generated private key (private_key_pem)" in text
    assert "Sign this CSR (PEM or DER)" in text
    assert "ec-p256, ec-p384, ed25519, rsa-2048, rsa-3072, rsa-4096" in text
    # --uri alone issues a certificate with an empty subject: --cn must not read as required.
    assert "Common name; may be left out when a SAN is given (the subject is then empty)" in text


def test_issuers_revoke_help_says_a_compromise_replaces_an_earlier_reason() -> None:
    text = " ".join(certctl("issuers", "revoke", "--help", env={}).stdout.split())
    assert (
        "Revoking it again is refused, except with --reason keyCompromise or cACompromise when "
        "it was revoked for a reason that was no compromise: the reason becomes that one (on "
        "the parent's next "
        "CRL too) and the revocation date stays." in text
    )
    assert (
        "keyCompromise or cACompromise also replaces an earlier revocation's reason that was "
        "no compromise" in text
    )


@pytest.mark.parametrize(
    "argv",
    [[], ["certs"], ["auth"], ["auth", "apikeys"], ["services", "clients"], ["ca"]],
    ids=["top", "certs", "auth", "auth-apikeys", "services-clients", "ca"],
)
def test_a_group_without_a_command_shows_its_help(argv: list[str]) -> None:
    # Before, the whole help was folded into one "certctl: error: Usage: …" line.
    proc = certctl(*argv, env={})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == certctl(*argv, "--help", env={}).stdout


def _command_sections(help_text: str) -> dict[str, list[str]]:
    """A --help page's command lists: heading -> the lines under it (options excluded)."""
    sections: dict[str, list[str]] = {}
    for block in help_text.split("\n\n"):
        heading, _, rest = block.partition("\n")
        if heading.endswith(":") and not heading.startswith(("Usage", "Options", "Arguments")):
            sections[heading[:-1]] = rest.splitlines()
    return sections


def test_top_level_command_list_marks_the_server_clients() -> None:
    proc = certctl("--help", env={})
    clients = _command_sections(proc.stdout)["Clients of a server"]
    described = {line.split()[0]: line for line in clients if line.strip()}
    names = ["auth", "certs", "issuers", "services", "apply", "audit", "acme"]
    assert list(described) == names
    for name in names:
        assert "CERTCTL_URL" in described[name], described[name]


def test_top_level_help_groups_the_commands_in_the_readmes_order() -> None:
    # Typer alone listed every plain command before every group: `http` came first, `ca`
    # after `apply`, and offline, server and client commands were mixed.
    sections = _command_sections(certctl("--help", env={}).stdout)
    names = {title: [line.split()[0] for line in lines] for title, lines in sections.items()}
    assert names == {
        "Offline PKI (files only)": ["ca", "cert", "csr", "crl", "http", "inspect", "verify"],
        "Server (on its host)": ["serve", "admin-key", "kek"],
        "Clients of a server": ["auth", "certs", "issuers", "services", "apply", "audit", "acme"],
    }
    # One column for the summaries, down the whole page.
    columns = {line.index(line.split()[1]) for lines in sections.values() for line in lines}
    assert len(columns) == 1, sections


def _command_groups() -> list[list[str]]:
    """Every command group of certctl, as argv: [], ["ca"], …, ["services", "clients"]."""
    from typer.main import get_command

    from certctl.cli._app import app

    found: list[list[str]] = []

    def walk(group: Any, path: list[str]) -> None:
        found.append(path)
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, [*path, name])

    walk(get_command(app), [])
    return found


@pytest.mark.parametrize("argv", _command_groups(), ids=lambda argv: " ".join(argv) or "top")
def test_command_summaries_are_not_cut_at_80_columns(argv: list[str]) -> None:
    # A summary too long for the line ended in "..." mid-sentence ("HTTPS with a
    # self-signed...", "Import an existing CA (PEM pair or PKCS#12) after checking key...").
    proc = certctl(*argv, "--help", env={})
    assert proc.returncode == 0, proc.stderr
    lines = [line for lines in _command_sections(proc.stdout).values() for line in lines]
    assert lines, proc.stdout
    for line in lines:
        assert not line.endswith("..."), line
        assert len(line) <= 80, line


# Prints the plain help of every group and command, each after a line "=== ARGV", in one
# process (64 processes took half a minute), as certctl prints it: TYPER_USE_RICH=0.
_EVERY_HELP = """
import sys
from typer.main import get_command
from certctl.cli.main import run
from certctl.cli._app import app

def walk(group, path):
    yield path
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from walk(command, [*path, name])
        else:
            yield [*path, name]

for argv in walk(get_command(app), []):
    print("===", " ".join(argv), flush=True)
    assert run([*argv, "--help"]) == 0, argv
    sys.stdout.flush()
"""


def test_help_never_breaks_a_line_after_a_hyphen() -> None:
    # Click's wrapper broke lines after hyphens: "--password-" ended a line and "file" began
    # the next (inspect, verify's "--crl-" "check"), and "<data-" "dir>", "admin-api-" "key",
    # "comma-" "separated", "client-" "trust" in a command list.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CERTCTL_", "TYPER_"))}
    proc = subprocess.run(
        [sys.executable, "-c", _EVERY_HELP],
        env=clean | {"COLUMNS": "80", "TYPER_USE_RICH": "0"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    pages = proc.stdout.split("=== ")[1:]
    assert len(pages) > 60, proc.stdout[:2000]  # every group and command
    for page in pages:
        argv, _, text = page.partition("\n")
        assert text.startswith(f"Usage: certctl {argv}".rstrip()), page
        broken = [line for line in text.splitlines() if re.search(r"\w-$", line.rstrip())]
        assert broken == [], page
        assert "\u2011" not in text, page  # the wrap's stand-in never reaches the page
        assert max(len(line) for line in text.splitlines()) <= 80, page


def test_untrusted_server_certificate_hint(tls_listener: Listener, pki: Path) -> None:
    tls_listener.answers["/api/v1/certificates"] = Answer(body=b'{"items": []}')
    env = {"CERTCTL_URL": tls_listener.url, "CERTCTL_API_KEY": KEY}
    assert_error(
        certctl("certs", "list", env=env),
        f"cannot reach {tls_listener.url}: TLS certificate verify failed: unable to get local "
        "issuer certificate (set CERTCTL_CA_CERT to the server's CA file, e.g. "
        "certctl-data/tls/ca.crt)",
        secrets=[KEY],
    )
    other = str(pki / "other-ca" / "ca.crt")
    assert_error(
        certctl("certs", "list", env=env | {"CERTCTL_CA_CERT": other}),
        f"cannot reach {tls_listener.url}: TLS certificate verify failed: unable to get local "
        f"issuer certificate (CERTCTL_CA_CERT={other} does not hold the CA of the server's "
        "certificate)",
        secrets=[KEY],
    )
    assert tls_listener.seen == []
    trusted = certctl("certs", "list", env=env | {"CERTCTL_CA_CERT": str(pki / "ca" / "ca.crt")})
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout) == {"items": []}
    assert [s.authorization for s in tls_listener.seen] == [f"Bearer {KEY}"]


# --- 7. option and argument names --------------------------------------------------------


@pytest.mark.parametrize("option", ["--query", "-q", "--q"])
def test_certs_list_query(listener: Listener, option: str) -> None:
    listener.answers["/api/v1/certificates"] = Answer(body=b'{"items": []}')
    proc = certctl("certs", "list", option, "web 1", env={"CERTCTL_URL": listener.url})
    assert proc.returncode == 0, proc.stderr
    assert [s.path for s in listener.seen] == ["/api/v1/certificates?q=web+1&limit=50"]


def test_certs_list_help_shows_query_not_q() -> None:
    proc = certctl("certs", "list", "--help", env={})
    assert "-q, --query" in proc.stdout
    assert "--q " not in proc.stdout
    text = " ".join(proc.stdout.split())
    assert "Substring, in either case (not a pattern), of the common name, subject, serial" in text


def _commands() -> list[tuple[list[str], Any]]:
    """Every command of certctl that runs (no group), as argv and its click command."""
    from typer.main import get_command

    from certctl.cli._app import app

    found: list[tuple[list[str], Any]] = []

    def walk(group: Any, path: list[str]) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, [*path, name])
            else:
                found.append(([*path, name], command))

    walk(get_command(app), [])
    return found


def test_usage_lines_name_arguments_as_click_does(capsys: pytest.CaptureFixture[str]) -> None:
    # Typer 0.29 wrote a required argument in braces: "certctl auth apikeys create [OPTIONS]
    # {ACTOR_ID}", where certctl's messages, its README and every other tool say ACTOR_ID.
    from typer.core import TyperArgument

    from certctl.cli.main import run

    commands = _commands()
    assert len(commands) > 40  # the walk reached the subcommands
    for argv, command in commands:
        assert run([*argv, "--help"]) == 0
        help_text = capsys.readouterr().out
        # The usage line, joined where a long one wraps (up to the blank line after it; Rich's
        # help, where this process has it, pads it with blank lines and spaces).
        usage = " ".join(re.split(r"\n\s*\n", help_text.strip())[0].split())
        # Click's "FILE..." for an argument taking several (certs import).
        names = {
            param: f"{param.display_name_raw}..." if param.nargs == -1 else param.display_name_raw
            for param in command.params
            if isinstance(param, TyperArgument)
        }
        arguments = [name if param.required else f"[{name}]" for param, name in names.items()]
        expected = " ".join(["Usage: certctl", *argv, "[OPTIONS]", *arguments])
        assert usage == expected, help_text
    assert run(["auth", "apikeys", "create", "--help"]) == 0
    usage = re.split(r"\n\s*\n", capsys.readouterr().out.strip())[0].strip()
    assert usage == "Usage: certctl auth apikeys create [OPTIONS] ACTOR_ID"


def test_upper_case_argument_metavars() -> None:
    proc = certctl("certs", "get", "--help", env={})
    assert proc.stdout.startswith("Usage: certctl certs get [OPTIONS] CERT_ID\n"), proc.stdout
    missing = certctl("certs", "revoke", env={})
    assert missing.returncode == 2
    assert missing.stderr == (
        "certctl: error: Missing argument 'CERT_ID'. (see 'certctl certs revoke --help')\n"
    )


# --- ids in request paths --------------------------------------------------------------


def test_ids_are_one_path_segment(listener: Listener) -> None:
    # An id with '/', '?' or a newline must not change the path or add a query.
    listener.answers["/api/v1/certificates/a%2Fb%3Fc%0A"] = Answer(body=b'{"id": "x"}')
    proc = certctl("certs", "get", "a/b?c\n", env={"CERTCTL_URL": listener.url})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"id": "x"}


def test_issue_from_a_csr_refuses_the_options_it_would_drop(
    listener: Listener, tmp_path: Path
) -> None:
    # The CSR carries the names and the key: --cn/--dns/--ip/--key-type beside it were
    # silently dropped (and the API now refuses those fields with a CSR).
    csr = tmp_path / "x.csr"
    csr.write_text("-----BEGIN CERTIFICATE REQUEST-----\n")
    proc = certctl(
        "certs",
        "issue",
        "--csr",
        str(csr),
        "--cn",
        "a",
        "--key-type",
        "rsa-2048",
        env={"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": "cctl_k"},
    )
    assert proc.returncode == 2
    assert "--cn, --key-type: not used with --csr" in proc.stderr
    assert listener.seen == []  # nothing was sent


def test_issue_sends_email_and_uri_sans(listener: Listener) -> None:
    # --email repeats or takes a comma-separated list as --dns does; --uri only repeats, as a
    # comma may be part of a URI.
    listener.answers["/api/v1/certificates"] = Answer(201, body=b'{"id": "c1"}')
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    proc = certctl(
        "certs", "issue", "--email", "alice@example.com,alice.ops@example.com",
        "--email", "a@example.org", "--uri", "spiffe://example.org/ns/x/sa/y",
        "--uri", "https://example.org/people/a,b", "--profile", "client", env=env,
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert json.loads(listener.seen[0].body) == {
        "issuer": "default",
        "profile": "client",
        "validity": "90D",
        "common_name": "",
        "dns_names": [],
        "ip_addresses": [],
        "email_addresses": ["alice@example.com", "alice.ops@example.com", "a@example.org"],
        "uris": ["spiffe://example.org/ns/x/sa/y", "https://example.org/people/a,b"],
        "key_type": "ec-p256",
    }
    # Without them the body is as before: a server that predates the fields refuses them.
    proc = certctl("certs", "issue", "--cn", "web.example", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not {"email_addresses", "uris"} & set(json.loads(listener.seen[1].body))


@pytest.mark.parametrize("option", ["--email", "--uri"])
def test_issue_from_a_csr_refuses_email_and_uri(
    listener: Listener, tmp_path: Path, option: str
) -> None:
    csr = tmp_path / "x.csr"
    csr.write_text("-----BEGIN CERTIFICATE REQUEST-----\n")
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    proc = certctl("certs", "issue", "--csr", str(csr), option, "urn:x", env=env)
    assert proc.returncode == 2
    assert f"{option}: not used with --csr" in proc.stderr
    assert listener.seen == []


def test_issue_into_an_existing_directory_is_refused_before_the_request(
    listener: Listener, tmp_path: Path
) -> None:
    # The generated key is returned once: an output refused after the POST left an issued
    # certificate whose key was gone (and the message offered a --force that did not exist).
    (tmp_path / "web-1").mkdir()
    (tmp_path / "web-1" / "tls.crt").write_text("old")
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": "cctl_k"}
    proc = certctl("certs", "issue", "--cn", "web-1", "--out", "web-1", env=env, cwd=tmp_path)
    assert_error(proc, "web-1/tls.crt already exists; use --force to overwrite")
    assert listener.seen == []  # nothing was issued

    issued = {"id": "c1", "certificate_pem": "LEAF\n", "chain_pem": "", "private_key_pem": "K\n"}
    listener.answers["/api/v1/certificates"] = Answer(201, body=json.dumps(issued).encode())
    listener.answers["/api/v1/issuers/default/ca.pem"] = Answer(content_type="x", body=_ca_pem())
    proc = certctl(
        "certs", "issue", "--cn", "web-1", "--out", "web-1", "--force", env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "web-1" / "tls.crt").read_text() == "LEAF\n"
    assert (tmp_path / "web-1" / "tls.key").read_text() == "K\n"
    assert (tmp_path / "web-1" / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "K\n" not in proc.stdout


def _ca_pem() -> bytes:
    """A real CA certificate: ``certs issue --out`` writes the root of ``ca.pem?chain=true``."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Fake CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM)


def test_issue_whose_output_fails_after_the_request_names_the_certificate(
    listener: Listener, tmp_path: Path
) -> None:
    issued = {"id": "c1", "certificate_pem": "LEAF\n", "chain_pem": "", "private_key_pem": "K\n"}
    # A file where the output directory should be, appearing while the request runs (the
    # checks before it found the place writable).
    listener.answers["/api/v1/certificates"] = Answer(
        201, body=json.dumps(issued).encode(), side_effect=(tmp_path / "file").touch
    )
    listener.answers["/api/v1/issuers/default/ca.pem"] = Answer(content_type="x", body=_ca_pem())
    proc = certctl(
        "certs",
        "issue",
        "--cn",
        "web-1",
        "--out",
        "file/web-1",
        env={"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": "cctl_k"},
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("certctl: error: cannot write file/web-1/tls.crt: ")
    assert proc.stderr.endswith(
        " (certificate c1 was issued but not saved: revoke it with 'certctl certs revoke c1')\n"
    )
    assert "K\n" not in proc.stderr


def test_issue_whose_ca_certificate_cannot_be_fetched_issues_nothing(
    listener: Listener, tmp_path: Path
) -> None:
    # ca.crt is fetched before the certificate is issued: a failure there leaves no issued
    # certificate whose generated key was never saved.
    issued = {"id": "c1", "certificate_pem": "LEAF\n", "chain_pem": "", "private_key_pem": "K\n"}
    listener.answers["/api/v1/certificates"] = Answer(201, body=json.dumps(issued).encode())
    listener.answers["/api/v1/issuers/default/ca.pem"] = Answer(502, "text/html", b"<p>down")
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": "cctl_k"}
    proc = certctl("certs", "issue", "--cn", "web-1", "--out", "web-1", env=env, cwd=tmp_path)
    assert_error(
        proc,
        f"HTTP 502 Bad Gateway from {listener.url}/api/v1/issuers/default/ca.pem "
        "(content-type text/html)",
    )
    assert [seen.method for seen in listener.seen] == ["GET"]
    assert not (tmp_path / "web-1").exists()
    # A 200 that is no PEM (another service at CERTCTL_URL): the line names the issuer's
    # path, not the route's template (before: /api/v1/issuers/{id}/ca.pem).
    listener.answers["/api/v1/issuers/default/ca.pem"] = Answer(200, "text/plain", b"hello\n")
    proc = certctl("certs", "issue", "--cn", "web-1", "--out", "web-1", env=env, cwd=tmp_path)
    assert_error(
        proc,
        f"unexpected response from {listener.url}/api/v1/issuers/default/ca.pem: "
        "no PEM certificate",
    )
    assert [seen.method for seen in listener.seen] == ["GET", "GET"]
    assert not (tmp_path / "web-1").exists()


def test_apikey_create_into_an_existing_file_is_refused_before_minting(
    listener: Listener, tmp_path: Path
) -> None:
    (tmp_path / "bot.key").write_text("old\n")
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": "cctl_k"}
    proc = certctl("auth", "apikeys", "create", "bot", "--out", "bot.key", env=env, cwd=tmp_path)
    assert_error(proc, "bot.key already exists; use --force to overwrite")
    assert listener.seen == []  # no key was minted

    minted = {"id": "k1", "key_value": "cctl_k1_newSECRET"}
    listener.answers["/api/v1/auth/apikeys"] = Answer(201, body=json.dumps(minted).encode())
    proc = certctl(
        "auth", "apikeys", "create", "bot", "--out", "bot.key", "--force", env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "bot.key").read_text() == "cctl_k1_newSECRET\n"
    assert "newSECRET" not in proc.stdout + proc.stderr


def test_apikey_create_out_dash_prints_only_the_key_on_stdout(
    listener: Listener, tmp_path: Path
) -> None:
    # "--out -" wrote the key into a file named "-" in the current directory.
    minted = {"id": "k1", "actor_id": "bot", "key_value": "cctl_k1_newSECRET"}
    listener.answers["/api/v1/auth/apikeys"] = Answer(201, body=json.dumps(minted).encode())
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": "cctl_k"}
    proc = certctl("auth", "apikeys", "create", "bot", "--out", "-", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "cctl_k1_newSECRET\n"  # what --out FILE holds, and nothing else
    assert json.loads(proc.stderr) == {"id": "k1", "actor_id": "bot"}  # the id revokes it
    assert list(tmp_path.iterdir()) == []
    # Twin: without --out, the whole answer, key included, is the JSON on stdout.
    plain = certctl("auth", "apikeys", "create", "bot", env=env, cwd=tmp_path)
    assert json.loads(plain.stdout) == minted
    assert plain.stderr == ""
    # "./-" is the file named "-", as for every Unix tool: the key goes there (0600), not to
    # stdout (Path("./-") is Path("-"): it was printed).
    to_file = certctl("auth", "apikeys", "create", "bot", "--out", "./-", env=env, cwd=tmp_path)
    assert to_file.returncode == 0, to_file.stderr
    assert "newSECRET" not in to_file.stdout + to_file.stderr
    assert json.loads(to_file.stdout)["key_value_file"] == "./-"
    assert (tmp_path / "-").read_text() == "cctl_k1_newSECRET\n"
    assert (tmp_path / "-").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("out", [None, "-"])
def test_a_key_that_cannot_reach_stdout_is_named_for_revocation(
    listener: Listener, tmp_path: Path, out: str | None
) -> None:
    # stdout on a full disk (here /dev/full) or closed: the key was minted and lost with
    # "No space left on device", and nothing said which key to revoke.
    minted = {"id": "k7", "actor_id": "bot", "key_value": "cctl_k7_fullSECRET"}
    listener.answers["/api/v1/auth/apikeys"] = Answer(201, body=json.dumps(minted).encode())
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env = clean | {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": "cctl_k"}
    args = [str(CERTCTL), "auth", "apikeys", "create", "bot"] + (["--out", out] if out else [])
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            args, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=full,
            stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert proc.returncode == 1
    # The last line (with --out -, the JSON without the key comes first, on stderr).
    assert proc.stderr.splitlines()[-1] == (
        "certctl: error: cannot write the API key to stdout: No space left on device "
        "(API key k7 was created but not saved: revoke it with "
        "'certctl auth apikeys revoke k7')"
    ), proc.stderr
    assert "fullSECRET" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Exception ignored" not in proc.stderr


def test_https_url_for_a_plain_http_server_says_so(listener: Listener) -> None:
    url = listener.url.replace("http://", "https://")
    proc = certctl("certs", "list", env={"CERTCTL_URL": url, "CERTCTL_API_KEY": KEY})
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"certctl: error: cannot reach {url}: [SSL: WRONG_VERSION")
    assert proc.stderr.endswith(
        " (the server is not speaking TLS: for plain HTTP use http:// in CERTCTL_URL)\n"
    )


def test_http_url_for_the_https_server_says_so(tls_listener: Listener) -> None:
    url = tls_listener.url.replace("https://", "http://")
    proc = certctl("certs", "list", env={"CERTCTL_URL": url, "CERTCTL_API_KEY": KEY})
    # This TLS server resets the connection (so did certctl serve, unanswered, before it
    # answered such requests with a 400 saying to use https://): the client adds the hint.
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"certctl: error: cannot reach {url}: ")
    assert proc.stderr.endswith(
        " (if the server speaks HTTPS, as certctl serve does by default, use https://)\n"
    )


# --- apply: a file of several documents --------------------------------------------------

OPENAPI = "/api/v1/openapi.json"


def _openapi(dry_run: bool) -> Answer:
    """The part of the server's OpenAPI description apply reads: the service PUT's query."""
    put = {"parameters": [{"name": "dry_run", "in": "query"}] if dry_run else []}
    return Answer(body=json.dumps({"paths": {"/api/v1/services/{name}": {"put": put}}}).encode())


def _services_file(tmp_path: Path, *names: str) -> Path:
    docs = [
        f"apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {{name: {n}}}\n" for n in names
    ]
    path = tmp_path / "services.yaml"
    path.write_text("---\n".join(docs))
    return path


def _service(name: str) -> Answer:
    return Answer(body=json.dumps({"name": name, "generation": 1}).encode())


@pytest.mark.parametrize("failure", ["refused", "unanswered"])
def test_apply_failing_after_its_dry_run_says_which_documents_went_in(
    listener: Listener, tmp_path: Path, failure: str
) -> None:
    # Every document passed the dry run; then the server changed (here: b's answer, as when
    # another client takes its target meanwhile). Before, a's line and one error: the user
    # could not tell that c was never sent.
    conflict = b'{"status": 409, "detail": "spec.targets.0: secret:x is already a target of y"}'
    if failure == "refused":
        later = Answer(409, "application/problem+json", conflict)
    else:
        later = Answer(side_effect=lambda: time.sleep(2))  # longer than CERTCTL_TIMEOUT
    calls = []

    def switch() -> None:
        calls.append(1)
        if len(calls) == 2:  # a's dry run done, and so every dry run
            listener.answers["/api/v1/services/b"] = later

    listener.answers |= {
        OPENAPI: _openapi(dry_run=True),
        "/api/v1/services/a": Answer(body=b'{"generation": 1}', side_effect=switch),
        "/api/v1/services/b": _service("b"),
        "/api/v1/services/c": _service("c"),
    }
    env = {"CERTCTL_URL": listener.url, "CERTCTL_TIMEOUT": "1"}
    proc = certctl("apply", "-f", str(_services_file(tmp_path, "a", "b", "c")), env=env)
    b_line, why = {
        "refused": ("not applied", "HTTP 409: spec.targets.0: secret:x is already a target of y"),
        "unanswered": (
            "unknown",
            f"no answer from {listener.url} within 1 s (PUT /api/v1/services/b was sent and "
            "may have taken effect: check first)",
        ),
    }[failure]
    assert proc.stdout == (
        f"tlsservice/a unchanged (generation 1)\ntlsservice/b {b_line}\ntlsservice/c not applied\n"
    )
    assert proc.stderr == (
        f"certctl: error: tlsservice/b: {why}; 1 of 3 document(s) applied (one line each above)\n"
    )
    assert proc.returncode == 1
    sent = [(s.method, s.path) for s in listener.seen]
    dry = [("PUT", f"/api/v1/services/{n}?dry_run=true") for n in "abc"]
    assert sent[:4] == [("GET", OPENAPI), *dry]
    assert ("PUT", "/api/v1/services/c") not in sent


def test_apply_refused_by_the_dry_run_applies_nothing(listener: Listener, tmp_path: Path) -> None:
    listener.answers |= {
        OPENAPI: _openapi(dry_run=True),
        "/api/v1/services/a": _service("a"),
        "/api/v1/services/b": Answer(403, "application/problem+json", b'{"detail": "no"}'),
    }
    proc = certctl(
        "apply", "-f", str(_services_file(tmp_path, "a", "b")), env={"CERTCTL_URL": listener.url}
    )
    assert_error(proc, "document 2 (tlsservice/b): HTTP 403: no; nothing was applied")
    assert all("dry_run=true" in s.path for s in listener.seen if s.method == "PUT")


def test_apply_to_a_server_without_dry_run_says_so(listener: Listener, tmp_path: Path) -> None:
    # An older server would ignore ?dry_run=true and store the document: not sent there.
    listener.answers |= {
        OPENAPI: _openapi(dry_run=False),
        "/api/v1/services/a": _service("a"),
        "/api/v1/services/b": _service("b"),
    }
    proc = certctl(
        "apply", "-f", str(_services_file(tmp_path, "a", "b")), env={"CERTCTL_URL": listener.url}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        "certctl: warning: the server offers no dry run (an older certctl): the documents were "
        "checked here only, and one it refuses leaves the ones before it applied\n"
    )
    assert proc.stdout.splitlines() == [f"tlsservice/{n} unchanged (generation 1)" for n in "ab"]
    assert not any("dry_run" in s.path for s in listener.seen)
    # One document is applied whole or not at all: no dry run, no warning.
    listener.seen.clear()
    proc = certctl(
        "apply", "-f", str(_services_file(tmp_path, "a")), env={"CERTCTL_URL": listener.url}
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert [(s.method, s.path) for s in listener.seen] == [
        ("GET", "/api/v1/services/a"),
        ("PUT", "/api/v1/services/a"),
    ]


def test_apply_names_the_file_whatever_is_wrong_in_it(
    listener: Listener,
    in_process: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A missing file was named ("nofile.yaml: services file not found"), one that did not
    # parse was not ("services file is not valid YAML at line 2"): which file, of several?
    Path("bad.yaml").write_text("apiVersion: certctl.io/v1\nkind: [TLSService\n")
    Path("unnamed.yaml").write_text("apiVersion: certctl.io/v1\nkind: TLSService\nspec: {}\n")
    for argv, line in [
        (["-f", "nofile.yaml"], "nofile.yaml: services file not found"),
        (
            ["-f", "bad.yaml"],
            "bad.yaml: services file is not valid YAML at line 3 (did not find expected ',' "
            "or ']')",
        ),
        (["-f", "unnamed.yaml"], "unnamed.yaml: document 1: metadata: Field required"),
    ]:
        assert in_process("apply", *argv) == 1
        assert capsys.readouterr() == ("", f"certctl: error: {line}\n")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"kind: [\n")))
    assert in_process("apply", "-f", "-") == 1
    assert capsys.readouterr().err == (
        "certctl: error: stdin: services file is not valid YAML at line 2 (did not find "
        "expected node content)\n"
    )
    # `<&-`: Python's sys.stdin is None. Before: "internal error (AttributeError: …)".
    monkeypatch.setattr("sys.stdin", None)
    assert in_process("apply", "-f", "-") == 1
    assert capsys.readouterr().err == (
        "certctl: error: stdin: standard input is closed: no services file to read\n"
    )
    assert listener.seen == []


def test_issue_without_a_name_is_a_usage_error(listener: Listener, tmp_path: Path) -> None:
    # Before, the request went out and the answer named the API's JSON fields: "HTTP 400:
    # give csr, or common_name/dns_names/ip_addresses", flags the CLI does not have.
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    for extra in ([], ["--out", str(tmp_path / "out")], ["--profile", "client"]):
        proc = certctl("certs", "issue", *extra, env=env)
        assert proc.returncode == 2
        assert proc.stderr == (
            "certctl: error: give --cn, --dns, --ip, --email or --uri "
            "(or --csr FILE) "
            "(see 'certctl certs issue --help')\n"
        )
        assert proc.stdout == ""
    assert listener.seen == []
    assert not (tmp_path / "out").exists()


def test_services_status_shows_control_characters_escaped(listener: Listener) -> None:
    # A Failed message quotes the spec's text (a passwordFile path is any absolute path): a
    # terminal escape in it must not reach the terminal of whoever runs services status.
    item = {
        "name": "web",
        "status": {
            "conditions": {
                "Failed": {"status": True, "message": "passwordFile /x/\x1b]0;pwned\x07 is empty"}
            },
            "serial": "0a\x1b[2J",
        },
    }
    listener.answers["/api/v1/services"] = Answer(
        body=json.dumps({"items": [item], "next_cursor": None}).encode()
    )
    proc = certctl("services", "status", env={"CERTCTL_URL": listener.url})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout
    assert "\x07" not in proc.stdout
    assert "passwordFile /x/\\x1b]0;pwned\\x07 is empty" in proc.stdout
    assert "0a\\x1b[2J" in proc.stdout


def test_services_status_says_until_when_a_replaced_ca_is_kept(listener: Listener) -> None:
    # ca.crt still trusting the CA a service's CA replaced was visible only in the JSON.
    item = {
        "name": "web",
        "status": {
            "conditions": {"Ready": {"status": True, "message": "serving"}},
            "retired_ca_until": "2026-12-05T21:00:00.123456+00:00",
        },
    }
    listener.answers["/api/v1/services"] = Answer(
        body=json.dumps({"items": [item, {"name": "api", "status": {}}]}).encode()
    )
    proc = certctl("services", "status", env={"CERTCTL_URL": listener.url})
    assert proc.returncode == 0, proc.stderr
    web, api = proc.stdout.splitlines()[1:]
    assert web.endswith(
        "serving; the replaced CA(s) stay in ca.crt until 2026-12-05T21:00:00Z at the latest"
    )
    assert "replaced CA" not in api


def test_services_status_with_no_services_says_so_as_services_list_does(
    listener: Listener, in_process: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    # An empty status printed only the header row: a user could not tell "none" from "broken".
    listener.answers["/api/v1/services"] = Answer(body=b'{"items": [], "next_cursor": null}')
    assert in_process("services", "status") == 0
    assert capsys.readouterr() == ("no services\n", "")
    assert in_process("services", "list", "-o", "table") == 0
    assert capsys.readouterr() == ("no services\n", "")
    # The JSON stays the server's answer as is.
    assert in_process("services", "status", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == {"items": [], "next_cursor": None}


def test_services_status_and_list_say_pending_before_the_first_pass(
    listener: Listener, in_process: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    # A service not reconciled yet showed Ready, Renewing and Failed all False, no message.
    pending = {"name": "web", "status": {"phase": "Pending", "conditions": {}, "serial": None}}
    ready = {
        "name": "api",
        "status": {"phase": "Ready", "conditions": {"Ready": {"status": True, "message": "ok"}}},
    }
    # A server from before status.phase: no condition stored is the same state.
    older = {"name": "old", "status": {"conditions": {}}}
    answer = json.dumps({"items": [pending, ready, older], "next_cursor": None}).encode()
    listener.answers["/api/v1/services"] = Answer(body=answer)
    listener.answers["/api/v1/services/web"] = Answer(body=json.dumps(pending).encode())
    assert in_process("services", "status") == 0
    header, *lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines}
    for name in ("web", "old"):
        assert rows[name].split()[1:4] == ["Pending", "-", "-"], rows[name]
        assert rows[name].endswith(" waiting for the first reconcile pass"), rows[name]
    assert rows["api"].split()[1:4] == ["True", "False", "False"]
    # The columns stay aligned: READY widened for "Pending".
    assert header.index("RENEWING") == rows["web"].index("-")
    assert in_process("services", "status", "web") == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.split()[1:4] == ["Pending", "-", "-"]
    assert in_process("services", "list", "-o", "table") == 0
    rows = {row.split()[0]: row for row in capsys.readouterr().out.splitlines()[1:]}
    assert rows["web"].split()[1:3] == ["Pending", "-"]
    assert rows["web"].endswith(" waiting for the first reconcile pass")
    # The JSON stays the server's answer, phase included.
    assert in_process("services", "status", "web", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["status"]["phase"] == "Pending"


def test_services_list_says_what_services_status_says_of_each_state(
    listener: Listener, in_process: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    # The list's MESSAGE was empty for a Ready service (status said "serving"), and so hid
    # a Ready pass's warnings and the replaced CAs ca.crt still trusts.
    def item(name: str, ready: tuple[bool, str], failed: tuple[bool, str]) -> dict[str, Any]:
        conditions = {
            "Ready": {"status": ready[0], "message": ready[1]},
            "Renewing": {"status": False, "message": ""},
            "Failed": {"status": failed[0], "message": failed[1]},
        }
        return {"name": name, "status": {"phase": "Ready", "conditions": conditions}}

    refused = "target /srv/tls/web: permission denied"
    items = [
        item("serving", (True, "serving"), (False, "")),
        item("plain", (True, "TLS disabled: plain HTTP"), (False, "")),
        item("warned", (True, "renewal request dropped"), (False, "")),
        item("failing", (True, "serving the last good certificate"), (True, refused)),
        item("broken", (False, refused), (True, refused)),
        {"name": "new", "status": {"phase": "Pending", "conditions": {}}},
    ]
    items[0]["status"]["retired_ca_until"] = "2026-12-05T21:00:00+00:00"
    answer = json.dumps({"items": items, "next_cursor": None}).encode()
    listener.answers["/api/v1/services"] = Answer(body=answer)
    expected = {
        "serving": "serving; the replaced CA(s) stay in ca.crt until 2026-12-05T21:00:00Z "
        "at the latest",
        "plain": "TLS disabled: plain HTTP",
        "warned": "renewal request dropped",
        "failing": refused,
        "broken": refused,
        "new": "waiting for the first reconcile pass",
    }
    assert in_process("services", "list", "-o", "table") == 0
    listed = capsys.readouterr().out.splitlines()
    assert in_process("services", "status") == 0
    status = capsys.readouterr().out.splitlines()
    for lines in (listed, status):
        rows = {line.split()[0]: line for line in lines[1:]}
        assert set(rows) == set(expected), lines
        for name, message in expected.items():
            assert rows[name].endswith(f" {message}"), rows[name]


_PUBLIC = "/api/v1/services/web/outputs/certs-public"
_LEAF_PEM = "-----BEGIN CERTIFICATE-----\nTEFG\n-----END CERTIFICATE-----\n"
_CA_PEM = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"


def _output_answer(files: dict[str, str], output: str = "certs-public") -> Answer:
    return Answer(body=json.dumps({"name": f"web-http-{output}", "data": files}).encode())


def test_services_outputs_writes_the_public_files_and_keeps_them_without_force(
    listener: Listener,
    in_process: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # Before, the public outputs were reached with curl and jq only.
    listener.answers[_PUBLIC] = _output_answer({"tls.crt": _LEAF_PEM, "ca.crt": _CA_PEM})
    assert in_process("services", "outputs", "web", "certs-public", "--out", "pub") == 0
    assert capsys.readouterr() == ("web-http-certs-public: wrote pub/ca.crt, pub/tls.crt\n", "")
    pub = tmp_path / "pub"
    assert (pub / "tls.crt").read_text() == _LEAF_PEM
    assert (pub / "ca.crt").read_text() == _CA_PEM
    assert {(pub / n).stat().st_mode & 0o777 for n in ("tls.crt", "ca.crt")} == {0o644}
    # Written over only with --force, as every --out of certctl.
    listener.answers[_PUBLIC] = _output_answer({"tls.crt": _CA_PEM})
    assert in_process("services", "outputs", "web", "certs-public", "--out", "pub") == 1
    assert capsys.readouterr().err == (
        "certctl: error: pub/tls.crt already exists; use --force to overwrite\n"
    )
    assert (pub / "tls.crt").read_text() == _LEAF_PEM
    # Served without a ca.crt now (a custom certificate): the old one, which would
    # contradict tls.crt, goes with --force.
    args = ("services", "outputs", "web", "certs-public", "--out", "pub", "--force")
    assert in_process(*args) == 0
    assert capsys.readouterr().out == "web-http-certs-public: wrote pub/tls.crt\n"
    assert sorted(p.name for p in pub.iterdir()) == ["tls.crt"]
    # Without --out, the server's answer as is (for jq).
    assert in_process("services", "outputs", "web", "certs-public") == 0
    assert json.loads(capsys.readouterr().out) == {
        "name": "web-http-certs-public",
        "data": {"tls.crt": _CA_PEM},
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["web", "certs-internal"],
            "Invalid value for 'OUTPUT': certs-internal: not served (it holds the service's "
            "key, which goes to its targets only); give certs-public or client-trust",
        ),
        (["web", "public"], "Invalid value for 'OUTPUT': public: give certs-public or "),
        (["web", "client-trust", "--out", "-"], "Invalid value for '--out': takes a directory"),
    ],
    ids=["key-output", "unknown-output", "stdout"],
)
def test_services_outputs_refuses_what_it_cannot_write_asking_nothing(
    listener: Listener,
    in_process: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert in_process("services", "outputs", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"certctl: error: {message}"), err
    assert listener.seen == []


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"tls.crt": "-----BEGIN PRIVATE KEY-----\nAA==\n"}, "holds a private key"),
        ({"../tls.crt": _LEAF_PEM}, "'../tls.crt' is not a file name"),
        ({}, "no files"),
    ],
    ids=["private-key", "path", "empty"],
)
def test_services_outputs_writes_nothing_of_an_odd_answer(
    listener: Listener,
    in_process: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    files: dict[str, str],
    why: str,
) -> None:
    # Whatever answers at CERTCTL_URL may not be certctl: no key lands 0644, nothing outside DIR.
    listener.answers[_PUBLIC] = _output_answer(files)
    assert in_process("services", "outputs", "web", "certs-public", "--out", "pub") == 1
    assert capsys.readouterr().err == (
        f"certctl: error: unexpected response from {listener.url}{_PUBLIC}: {why} "
        "(nothing was written)\n"
    )
    assert not (tmp_path / "pub").exists()
    assert not (tmp_path / "tls.crt").exists()


def test_server_text_on_stderr_shows_control_characters_escaped(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A problem detail quotes the request's names; a broken server or proxy may send anything:
    # a terminal escape must not act on the user's terminal, and the error stays one line.
    # In-process (main.run): the stderr lines are what this checks, not the process.
    from certctl.cli.main import run

    for name in [k for k in os.environ if k.startswith("CERTCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CERTCTL_URL", listener.url)
    detail = "name \x1b]0;pwned\x07web\x1b[2J\r\nis taken\x9b"
    listener.answers["/api/v1/certificates"] = Answer(
        409, "application/problem+json", json.dumps({"detail": detail}).encode()
    )
    assert run(["certs", "list"]) == 1
    assert capsys.readouterr() == (
        "",
        "certctl: error: HTTP 409: name \\x1b]0;pwned\\x07web\\x1b[2J is taken\\x9b\n",
    )
    listener.answers["/api/v1/auth/roles"] = Answer(502, "text/plain", b"down\x1b[31m")
    assert run(["auth", "roles", "list"]) == 1
    assert capsys.readouterr().err == (
        f"certctl: error: HTTP 502 Bad Gateway from {listener.url}/api/v1/auth/roles "
        "(content-type text/plain: down\\x1b[31m)\n"
    )
    # The answer's warnings go to stderr too.
    warned = {"id": "c1", "warnings": ["validity \x1b[8mclipped\nto 30 days"]}
    listener.answers["/api/v1/certificates"] = Answer(body=json.dumps(warned).encode())
    assert run(["certs", "issue", "--cn", "web.example"]) == 0
    assert capsys.readouterr().err == "certctl: warning: validity \\x1b[8mclipped to 30 days\n"


def test_certs_issue_takes_comma_separated_names_as_cert_issue_does(
    listener: Listener, in_process: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    # `cert issue --dns a,b` (offline, as elasticsearch-certutil) gives two names; the same
    # words to the server's `certs issue` sent one name "a,b" and got a 400.
    listener.answers["/api/v1/certificates"] = Answer(body=b'{"id": "c1", "warnings": []}')
    argv = ["--dns", "a.example,b.example", "--dns", "c.example", "--ip", "10.0.0.1,::1,"]
    assert in_process("certs", "issue", "--cn", "web.example", *argv) == 0
    assert capsys.readouterr().err == ""
    body = json.loads(listener.seen[-1].body)
    assert body["dns_names"] == ["a.example", "b.example", "c.example"]
    assert body["ip_addresses"] == ["10.0.0.1", "::1"]


# --- issuers -----------------------------------------------------------------------------


@pytest.fixture
def in_process(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., int]:
    """``main.run`` in this process against ``listener``, in ``tmp_path``: no interpreter to
    start per command (the subprocess cases above check what only a process shows)."""
    from certctl.cli.main import run

    for name in [k for k in os.environ if k.startswith("CERTCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CERTCTL_URL", listener.url)
    monkeypatch.setenv("CERTCTL_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    return lambda *argv: run(list(argv))


def _issuer(issuer_id: str, name: str) -> dict[str, Any]:
    return {
        "id": issuer_id,
        "name": name,
        "subject": f"CN={name}",
        "key_type": "ec-p256",
        "not_after": "2999-01-01T00:00:00+00:00",
        "status": "active",
        "certificate_pem": "-----BEGIN CERTIFICATE-----\n",
        "chain_pem": "",
    }


def test_issuers_list_table_and_json(
    listener: Listener, in_process: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {"items": [_issuer("ops", "Ops \x1b[2JCA")], "next_cursor": None}
    listener.answers["/api/v1/issuers"] = Answer(body=json.dumps(answer).encode())
    assert in_process("issuers", "list", "-o", "json") == 0
    assert capsys.readouterr().out == json.dumps(answer, indent=2) + "\n"
    assert in_process("issuers", "list", "-o", "table") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split("  ")[0] == "ID"
    assert [c.strip() for c in header.split("  ") if c.strip()] == [
        "ID", "STATUS", "NAME", "SUBJECT", "KEY TYPE", "NOT AFTER"
    ]  # fmt: skip
    assert row.startswith(
        "ops  active  Ops \\x1b[2JCA  CN=Ops \\x1b[2JCA  ec-p256   2999-01-01 (in "
    )
    assert "BEGIN CERTIFICATE" not in row
    listener.answers["/api/v1/issuers"] = Answer(body=b'{"items": [], "next_cursor": null}')
    assert in_process("issuers", "list", "-o", "table") == 0
    assert capsys.readouterr().out == "no issuers\n"
    assert [seen.path for seen in listener.seen] == ["/api/v1/issuers"] * 3


def test_certs_list_table_says_a_live_certificate_under_a_revoked_issuer(
    listener: Listener, in_process: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    # Its own status stays "active" (its issuer's CRL does not list it): the table says why
    # it no longer verifies; a revoked one needs nothing more.
    under = {"issuer": "mid", "revoked_at": "2026-01-01T00:00:00+00:00", "reason": "superseded"}
    items = [
        {"id": f"c{n}", "common_name": f"c{n}.example.com", "status": status,
         "not_after": "2999-01-01T00:00:00+00:00", "issuer": issuer, "profile": "server",
         "issuer_revoked": revoked}
        for n, (status, issuer, revoked) in enumerate(
            [("active", "low", under), ("revoked", "mid", under), ("active", "default", None)]
        )
    ]  # fmt: skip
    answer = {"items": items, "next_cursor": None}
    listener.answers["/api/v1/certificates"] = Answer(body=json.dumps(answer).encode())
    assert in_process("certs", "list", "-o", "table") == 0
    _, *rows = capsys.readouterr().out.splitlines()
    assert [[c.strip() for c in row.split("  ") if c.strip()][2] for row in rows] == [
        "active (issuer mid revoked)",
        "revoked",
        "active",
    ]
    # So does an issuer below a revoked one (it issues nothing more).
    low = _issuer("low", "Low CA") | {"issuer_revoked": under}
    answer = {"items": [low, _issuer("mid", "Mid CA") | {"status": "revoked"}]}
    listener.answers["/api/v1/issuers"] = Answer(body=json.dumps(answer).encode())
    assert in_process("issuers", "list", "-o", "table") == 0
    _, *rows = capsys.readouterr().out.splitlines()
    assert [row.split("  ")[1].strip() for row in rows] == [
        "active (issuer mid revoked)",
        "revoked",
    ]


def test_issuers_revoke_sends_the_reason_and_says_the_refusal_in_one_line(
    listener: Listener, in_process: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    revoked = _issuer("ops", "Ops CA") | {"status": "revoked", "revocation_reason": "keyCompromise"}
    listener.answers["/api/v1/issuers/ops/revoke"] = Answer(body=json.dumps(revoked).encode())
    assert in_process("issuers", "revoke", "ops", "--reason", "keyCompromise") == 0
    assert json.loads(capsys.readouterr().out) == revoked
    assert (listener.seen[-1].method, json.loads(listener.seen[-1].body)) == (
        "POST",
        {"reason": "keyCompromise"},
    )
    detail = "issuer default is a root CA (self-signed): no CRL above it can list it"
    problem = {"type": "about:blank", "title": "Conflict", "status": 409, "detail": detail}
    listener.answers["/api/v1/issuers/default/revoke"] = Answer(
        409, body=json.dumps(problem).encode(), content_type="application/problem+json"
    )
    assert in_process("issuers", "revoke", "default") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"certctl: error: HTTP 409: {problem['detail']}\n"
    assert json.loads(listener.seen[-1].body) == {"reason": None}


def test_issuers_create_sends_what_was_given_and_prints_the_warnings(
    listener: Listener, in_process: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    created = _issuer("ops", "Ops CA") | {"warnings": ["validity 1825D clipped\nto the parent"]}
    listener.answers["/api/v1/issuers"] = Answer(201, body=json.dumps(created).encode())
    argv = ["issuers", "create", "ops", "--parent", "default", "--cn", "Ops CA"]
    assert in_process(*argv, "--path-length", "0") == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == created
    assert err == "certctl: warning: validity 1825D clipped to the parent\n"
    # The server's defaults (key type aside) are left to it: no validity, subject or name.
    assert json.loads(listener.seen[-1].body) == {
        "id": "ops", "name": "", "key_type": "ec-p256", "common_name": "Ops CA",
        "parent": "default", "path_length": 0,
    }  # fmt: skip
    assert in_process("issuers", "create", "root2", "--subject", "CN=R,O=X", "--name", "R",
                      "--key-type", "rsa-3072", "--validity", "10Y") == 0  # fmt: skip
    capsys.readouterr()
    assert json.loads(listener.seen[-1].body) == {
        "id": "root2", "name": "R", "key_type": "rsa-3072", "subject": "CN=R,O=X",
        "validity": "10Y",
    }  # fmt: skip
    sent = len(listener.seen)
    for bad, line in (
        (["--cn", "A", "--subject", "CN=B"], "--cn and --subject exclude each "
         "other (put the CN in --subject) (see 'certctl issuers create --help')"),
        (["--path-length", "11"], "Invalid value for '--path-length': 11: must be at most 10 "
         "(see 'certctl issuers create --help')"),
        (["--parent", " "], "Invalid value for '--parent': must not be empty "
         "(see 'certctl issuers create --help')"),
    ):  # fmt: skip
        assert in_process("issuers", "create", "x", *bad) == 2
        assert capsys.readouterr() == ("", f"certctl: error: {line}\n")
    assert len(listener.seen) == sent  # nothing was sent


def test_issuers_import_decrypts_here_and_never_shows_the_key(
    listener: Listener,
    in_process: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    pki: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12

    listener.answers["/api/v1/issuers"] = Answer(201, body=b'{"id": "ext", "warnings": []}')
    key_pem = (pki / "ca" / "ca.key").read_bytes()
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # certctl's default key type
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "enc.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    # A certificate file with the key in it (ca.crt and ca.key concatenated, a common slip).
    both = tmp_path / "both.pem"
    both.write_bytes((pki / "ca" / "ca.crt").read_bytes() + key_pem)
    cert = str(pki / "ca" / "ca.crt")
    body_lines = key_pem.decode().splitlines()[1:-1]

    def shown(out: str, err: str) -> bool:
        return any(line in out + err for line in body_lines)

    for bad, line in (
        (["--cert", cert, "--key", "enc.key"],
         "enc.key: the private key is encrypted: give its password "
         "(--password-file or CERTCTL_PASSWORD)"),
        (["--cert", str(pki / "other-ca" / "ca.crt"), "--key", str(pki / "ca" / "ca.key")],
         f"{pki / 'ca' / 'ca.key'}: the private key does not match the CA certificate in "
         f"{pki / 'other-ca' / 'ca.crt'} (nothing was sent)"),
    ):  # fmt: skip
        assert in_process("issuers", "import", "ext", *bad) == 1
        out, err = capsys.readouterr()
        assert (out, err) == ("", f"certctl: error: {line}\n")
    assert in_process("issuers", "import", "ext", "--cert", cert) == 2
    assert "--cert needs --key" in capsys.readouterr().err
    assert listener.seen == []  # nothing was sent

    assert in_process("issuers", "import", "ext", "--cert", str(both), "--key", "enc.key",
                      "--password-file", "pw", "--name", "External") == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert json.loads(out) == {"id": "ext", "warnings": []}
    assert not shown(out, err)
    body = json.loads(listener.seen[-1].body)
    assert set(body) == {"id", "name", "certificate_pem", "private_key_pem"}
    assert (body["id"], body["name"]) == ("ext", "External")
    # Sent decrypted (the API takes no password), the certificates alone in certificate_pem.
    assert body["certificate_pem"] == (pki / "ca" / "ca.crt").read_text()
    sent_key = serialization.load_pem_private_key(body["private_key_pem"].encode(), None)
    assert isinstance(sent_key, ec.EllipticCurvePrivateKey)
    assert sent_key.private_numbers() == key.private_numbers()
    # A PKCS#12 file, its password from CERTCTL_PASSWORD, as `ca import` reads one.
    ca_cert = x509.load_pem_x509_certificate((pki / "ca" / "ca.crt").read_bytes())
    (tmp_path / "ca.p12").write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"ca", key, ca_cert, None,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )  # fmt: skip
    monkeypatch.setenv("CERTCTL_PASSWORD", "s3cret")
    assert in_process("issuers", "import", "ext", "--p12", "ca.p12") == 0
    assert not shown(*capsys.readouterr())
    assert json.loads(listener.seen[-1].body) == body | {"name": ""}


@pytest.mark.parametrize("command", ["ca", "crl"])
def test_issuers_ca_and_crl_keep_o_for_out_hidden_and_refuse_o_json(
    command: str,
    listener: Listener,
    in_process: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    pki: Path,
    tmp_path: Path,
) -> None:
    # In every other client command -o is --output table|json (`issuers list -o json`); here
    # it was --out, so `issuers ca ID -o json` wrote the CA certificate into a file named
    # "json". The help now shows --out alone; -o FILE still works for the scripts using it.
    listener.answers["/api/v1/issuers/ops/ca.pem"] = Answer(
        content_type="x", body=(pki / "ca" / "ca.crt").read_bytes()
    )
    listener.answers["/api/v1/issuers/ops/crl"] = Answer(content_type="x", body=_crl(pki))
    options = certctl("issuers", command, "--help", env={}).stdout.split("Options:")[1]
    assert "--out FILE" in options
    assert "-o" not in options.replace("--", "")
    for output in ("json", "table"):
        assert in_process("issuers", command, "ops", "-o", output) == 2
        assert capsys.readouterr() == (
            "",
            f"certctl: error: Invalid value for '-o': {output}: -o is --out (a file) here, "
            "not --output table|json: these print PEM or DER (a file named so: --out "
            f"./{output}) (see 'certctl issuers {command} --help')\n",
        )
    assert listener.seen == []
    assert list(tmp_path.iterdir()) == []
    assert in_process("issuers", command, "ops", "-o", "a", "--out", "b") == 2
    assert "give --out once" in capsys.readouterr().err
    assert in_process("issuers", command, "ops", "-o", "old-spelling") == 0
    assert (tmp_path / "old-spelling").stat().st_size > 0


def test_issuers_ca_and_crl_write_files_or_stdout(
    listener: Listener,
    in_process: Callable[..., int],
    capsys: pytest.CaptureFixture[str],
    pki: Path,
    tmp_path: Path,
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = (pki / "server" / "tls.crt").read_bytes()  # two certificates: a stand-in chain
    ca_pem = (pki / "ca" / "ca.crt").read_bytes()
    ca_der = x509.load_pem_x509_certificate(ca_pem).public_bytes(Encoding.DER)
    crl_der = _crl(pki)
    listener.answers["/api/v1/issuers/ops/ca.pem"] = Answer(content_type="x", body=chain)
    listener.answers["/api/v1/issuers/ops/ca.der"] = Answer(content_type="x", body=ca_der)
    listener.answers["/api/v1/issuers/ops/crl"] = Answer(content_type="x", body=crl_der)

    assert in_process("issuers", "ca", "ops", "--chain") == 0
    assert capsys.readouterr() == (chain.decode(), "")
    assert in_process("issuers", "ca", "ops", "--der", "-o", "ca.der") == 0
    assert (tmp_path / "ca.der").read_bytes() == ca_der
    assert in_process("issuers", "crl", "ops", "--out", "ops.crl") == 0
    assert (tmp_path / "ops.crl").read_bytes() == crl_der
    assert capsys.readouterr() == ("", "")
    assert [seen.path for seen in listener.seen] == [
        "/api/v1/issuers/ops/ca.pem?chain=true",
        "/api/v1/issuers/ops/ca.der",
        "/api/v1/issuers/ops/crl",
    ]
    # An existing file is refused before the request (a CRL costs the server a signature).
    assert in_process("issuers", "crl", "ops", "-o", "ops.crl", "--pem") == 1
    assert capsys.readouterr().err == (
        "certctl: error: ops.crl already exists; use --force to overwrite\n"
    )
    assert len(listener.seen) == 3
    # What answers at CERTCTL_URL is checked before it lands in a file: one line, no file.
    listener.answers["/api/v1/issuers/ops/crl"] = Answer(content_type="text/html", body=b"<p>")
    assert in_process("issuers", "crl", "ops", "-o", "ops.crl", "--pem", "--force") == 1
    assert capsys.readouterr().err == (
        f"certctl: error: unexpected response from {listener.url}/api/v1/issuers/{{id}}/crl: "
        "not a PEM CRL\n"
    )
    assert (tmp_path / "ops.crl").read_bytes() == crl_der
    listener.answers["/api/v1/issuers/ops/ca.pem"] = Answer(content_type="x", body=b"<p>login")
    assert in_process("issuers", "ca", "ops", "-o", "ca.pem") == 1
    assert capsys.readouterr().err == (
        f"certctl: error: unexpected response from {listener.url}/api/v1/issuers/{{id}}/ca.pem: "
        "no PEM certificate\n"
    )
    assert not (tmp_path / "ca.pem").exists()
    assert in_process("issuers", "ca", "ops", "--chain", "--der") == 2
    assert capsys.readouterr().err == (
        "certctl: error: --chain does not go with --der (ca.der is the one "
        "certificate; the chain is PEM) (see 'certctl issuers ca --help')\n"
    )
    assert in_process("issuers", "ca", "no-such") == 1
    assert capsys.readouterr().err == (
        f"certctl: error: HTTP 404 Not Found from {listener.url}/api/v1/issuers/no-such/ca.pem "
        "(content-type text/html)\n"
    )


def _crl(pki: Path) -> bytes:
    """A real (empty) CRL of the test CA, in DER, made by ``certctl crl create``."""
    out = pki / "empty.crl"
    if not out.exists():
        made = subprocess.run(
            [str(CERTCTL), "crl", "create", "--ca", str(pki / "ca"), "--der", "--out", str(out)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    return out.read_bytes()


def test_der_on_a_terminal_is_refused_before_the_request(listener: Listener) -> None:
    import pty

    master, terminal = pty.openpty()
    try:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
        proc = subprocess.run(
            [str(CERTCTL), "issuers", "crl", "ops"],
            env=clean | {"CERTCTL_URL": listener.url}, stdin=subprocess.DEVNULL,
            stdout=terminal, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(terminal)
        os.close(master)
    assert proc.returncode == 2
    assert proc.stderr == (
        "certctl: error: DER is binary, not for a terminal: give --out FILE, "
        "redirect stdout, or add --pem (see 'certctl issuers crl --help')\n"
    )
    assert listener.seen == []


def test_issuers_ca_whose_stdout_fails_ends_quietly_or_in_one_line(
    listener: Listener, pki: Path
) -> None:
    # As the list commands: a reader gone is no error to report (status 1, nothing said), a
    # full disk is one line naming stdout (it was "No space left on device" alone).
    listener.answers["/api/v1/issuers/ops/ca.pem"] = Answer(
        content_type="x",
        body=(pki / "ca" / "ca.crt").read_bytes() * 200,  # past any buffer
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    argv = [str(CERTCTL), "issuers", "ca", "ops"]
    read_end, gone = os.pipe()
    os.close(read_end)
    env = clean | {"CERTCTL_URL": listener.url}
    with open("/dev/full", "w") as full:
        runs = [
            subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE
            )
            for out in (gone, full)
        ]
    os.close(gone)
    with reaped(runs):
        ended = [(run.wait(timeout=60), run.communicate()[1]) for run in runs]
    assert ended == [
        (1, b""),
        (1, b"certctl: error: cannot write to stdout: No space left on device\n"),
    ]


def test_services_drop_retired_ca_asks_once_and_says_what_happens(
    listener: Listener, in_process: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    listener.answers["/api/v1/services/web/retired-ca"] = Answer(
        202, body=json.dumps({"name": "web", "status": {"retired_ca_until": None}}).encode()
    )
    assert in_process("services", "drop-retired-ca", "web") == 0
    assert capsys.readouterr().out == (
        "tlsservice/web: every replaced CA leaves ca.crt at the next pass\n"
    )
    assert [(s.method, s.path) for s in listener.seen] == [
        ("DELETE", "/api/v1/services/web/retired-ca")
    ]
    detail = "service api keeps no replaced CA in its ca.crt"
    listener.answers["/api/v1/services/api/retired-ca"] = Answer(
        409,
        body=json.dumps({"title": "Conflict", "status": 409, "detail": detail}).encode(),
        content_type="application/problem+json",
    )
    assert in_process("services", "drop-retired-ca", "api") == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"certctl: error: HTTP 409: {detail}\n")


def test_services_list_counts_the_targets_of_the_spec_document(listener: Listener) -> None:
    # GET /api/v1/services gives each service's whole TLSService document as "spec" (as
    # service_json does): its targets are under spec.spec. The table read spec.targets, so
    # TARGETS said "-" for every real service, targets or none.
    def item(name: str, targets: list[dict[str, str]] | None) -> dict[str, Any]:
        spec: dict[str, Any] = {"http": {"tls": {"selfSignedCertificate": {"disabled": False}}}}
        if targets is not None:
            spec["targets"] = targets
        return {
            "name": name,
            "spec": {"apiVersion": "certctl.io/v1", "kind": "TLSService",
                     "metadata": {"name": name}, "spec": spec},
            "generation": 1,
            # Reconciled: a pending service's MESSAGE would end the row instead of TARGETS.
            "status": {"phase": "Ready", "conditions": {"Ready": {"status": True}},
                       "serial": None, "not_after": None, "targets": {}},
        }  # fmt: skip

    two = [{"directory": "/srv/tls/a"}, {"secret": "b"}]
    answer = {"items": [item("two", two), item("none", None)], "next_cursor": None}
    listener.answers["/api/v1/services"] = Answer(body=json.dumps(answer).encode())
    proc = certctl("services", "list", "-o", "table", env={"CERTCTL_URL": listener.url})
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert rows[0] == ["NAME", "READY", "FAILED", "SERIAL", "NOT", "AFTER", "TARGETS", "MESSAGE"]
    assert {row[0]: row[-1] for row in rows[1:]} == {"two": "2", "none": "0"}


def test_permissions_and_roles_take_comma_separated_lists(listener: Listener) -> None:
    # `-p auth.role.create,auth.apikey.create` was sent as one name and refused as "unknown
    # permission(s): auth.role.create,auth.apikey.create; known: … auth.role.create …",
    # naming the very permissions given. No permission or role id holds a comma, so the list
    # is split as --dns and --email split theirs.
    for path in ("/api/v1/auth/roles", "/api/v1/auth/actors"):
        listener.answers[path] = Answer(201, body=b"{}")
    for path in ("/api/v1/auth/roles/r-x", "/api/v1/auth/actors/a-x"):
        listener.answers[path] = Answer(body=b"{}")
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    runs = [
        ("roles", "create", "r-x", "-p", "cert.read, cert.issue,", "--permission", "audit.read"),
        ("roles", "update", "r-x", "-p", "metrics.read,audit.read"),
        ("actors", "create", "a-x", "-r", "r-viewer,r-auditor", "-r", "r-x"),
        ("actors", "update", "a-x", "--role", "r-viewer,r-x"),
    ]
    for argv in runs:
        proc = certctl("auth", *argv, env=env)
        assert proc.returncode == 0, (argv, proc.stderr)
    sent = [json.loads(seen.body) for seen in listener.seen]
    assert [body.get("permissions", body.get("roles")) for body in sent] == [
        ["cert.read", "cert.issue", "audit.read"],
        ["metrics.read", "audit.read"],
        ["r-viewer", "r-auditor", "r-x"],
        ["r-viewer", "r-x"],
    ]


def _not_found(what: str) -> Answer:
    return Answer(404, "application/problem+json", json.dumps({"detail": what}).encode())


@pytest.mark.parametrize(
    ("argv", "path", "detail", "hint"),
    [
        (
            ["certs", "renew", "web-1"],
            "/api/v1/certificates/web-1/renew",
            "certificate web-1 not found",
            "CERT_ID is a certificate's id, as 'certctl certs list' shows it; "
            "'certctl certs list -q web-1' finds certificates by name",
        ),
        (
            ["auth", "apikeys", "revoke", "prometheus-v1"],
            "/api/v1/auth/apikeys/prometheus-v1",
            "API key prometheus-v1 not found",
            "KEY_ID is a key's id, as 'certctl auth apikeys list' shows it beside its name",
        ),
    ],
)
def test_a_name_given_for_an_id_is_told_where_the_id_is(
    listener: Listener, argv: list[str], path: str, detail: str, hint: str
) -> None:
    # `certs issue --out web-1`, then `certs renew web-1`; `apikeys create --name
    # prometheus-v1`, then `apikeys revoke prometheus-v1`: both said only "not found".
    listener.answers[path] = _not_found(detail)
    env = {"CERTCTL_URL": listener.url, "CERTCTL_API_KEY": KEY}
    assert_error(certctl(*argv, env=env), f"HTTP 404: {detail} ({hint})", [KEY])
    # An id of the right shape that the server does not hold: the 404 alone says it.
    listener.answers["/api/v1/certificates/18ee44d9f3390e0c3e18b778/revoke"] = _not_found("x")
    proc = certctl("certs", "revoke", "18ee44d9f3390e0c3e18b778", env=env)
    assert_error(proc, "HTTP 404: x", [KEY])
