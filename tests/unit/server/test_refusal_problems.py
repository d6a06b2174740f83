"""The problems the listener writes itself (below the app) read as the app's own.

RFC 9457 3.1.3: a problem type's title does not change from occurrence to occurrence. The
431 the protocol wrote said "Request Header Fields Too Large" where the app's 431 says
"Request header fields too large", and its 400 "Bad request" where every other
``invalid-request`` says "Invalid request".
"""

from __future__ import annotations

import json
import socket

from starlette.types import Receive, Scope, Send

from certctl.api import problems
from certctl.errors import InvalidRequest
from tests.unit.server.test_send_deadline import _serving


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _answer(port: int, request: bytes) -> tuple[int, dict[str, object]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed while the rest was on its way: the answer was sent
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_the_listeners_own_problems_have_the_apps_titles() -> None:
    start = b"POST / HTTP/1.1\r\nHost: localhost\r\n"
    requests = {
        # A head still open past the limit (a whole one goes to the app, which answers it).
        431: start + b"X-Pad: " + b"a" * 70_000 + b"\r\n",
        400: start + b"Content-Length: abc\r\n\r\n",
        501: start + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    }
    with _serving(_ok, send_timeout_s=10.0) as (_, port):
        for status, request in requests.items():
            got, problem = _answer(port, request)
            assert (got, problem["status"]) == (status, status), problem
            app = json.loads(bytes(problems.problem(status, "x").body))
            assert (problem["type"], problem["title"]) == (app["type"], app["title"])
    invalid = json.loads(bytes(problems.problem(400, "x").body))
    assert invalid["title"] == InvalidRequest.title == "Invalid request"
    assert json.loads(bytes(problems.problem(431, "x").body))["title"] == (
        "Request header fields too large"
    )


def test_the_plain_http_refusal_has_the_apps_title() -> None:
    from certctl.server.http_connection import plain_http_answer

    head, _, body = plain_http_answer().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    problem = json.loads(body)
    assert (problem["type"], problem["title"]) == (
        "urn:certctl:problem:invalid-request",
        "Invalid request",
    )
    assert "use https://" in problem["detail"]
