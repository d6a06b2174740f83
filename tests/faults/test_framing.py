"""HTTP/1.1 framing as a strict client sees it: pipelining, refusals, unread bodies.

Raw bytes over TLS to a real ``certctl serve`` on loopback, so the server's own parser and
protocol class are what answers (the ASGI test client would bypass both).
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.e2e.conftest import tls_context
from tests.faults.conftest import FaultServer
from tests.faults.test_abuse import read_all, tls_socket


def _responses(stream: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each response in ``stream`` (bodies framed by Content-Length)."""
    out = []
    while stream:
        head, sep, rest = stream.partition(b"\r\n\r\n")
        assert sep, stream[:300]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if head.startswith(b"HTTP/1.1 1"):  # an interim 100 Continue: no body
            length = 0
        out.append((head, rest[:length]))
        stream = rest[length:]
    return out


@pytest.mark.parametrize(
    "bad",
    [
        b"GET /x\x01 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        # Its head is fine (it queues behind the first request), its chunked body is not.
        b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["bad-head", "bad-body"],
)
def test_a_bad_request_pipelined_after_a_good_one_is_refused_after_its_answer(
    fault_server: FaultServer, bad: bytes
) -> None:
    # The good request (a mutation) runs; before the fix its 201 was lost and the client read
    # the 400 meant for the next request as the answer to it.
    fault_server.start()
    body = json.dumps({"id": "r-piped", "name": "piped", "permissions": ["cert.read"]}).encode()
    good = (
        b"POST /api/v1/auth/roles HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Bearer " + fault_server.admin_key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with tls_socket(fault_server) as sock:
        sock.sendall(good + bad)
        answers = _responses(read_all(sock))
    assert [h.split(b"\r\n", 1)[0] for h, _ in answers] == [
        b"HTTP/1.1 201 Created",
        b"HTTP/1.1 400 Bad Request",
    ]
    assert json.loads(answers[0][1])["id"] == "r-piped"
    refusal_head, refusal_body = answers[1]
    assert b"content-type: application/problem+json" in refusal_head
    assert b"\r\ndate: " in refusal_head  # RFC 9110 6.6.1: every 4xx of a server with a clock
    assert json.loads(refusal_body)["status"] == 400
    with fault_server.client() as client:
        assert client.get("/api/v1/auth/roles/r-piped").status_code == 200


def test_a_bad_head_alone_gets_a_dated_problem(fault_server: FaultServer) -> None:
    fault_server.start()
    with tls_socket(fault_server) as sock:
        sock.sendall(b"GET /x\x01 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        ((head, body),) = _responses(read_all(sock))
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"\r\ndate: " in head
    assert b"\r\nx-content-type-options: nosniff" in head  # as on every other answer
    assert json.loads(body)["status"] == 400


def test_an_answer_before_the_body_is_read_closes_the_connection(
    fault_server: FaultServer,
) -> None:
    # The 401 comes before the body is read. Kept alive, the connection stayed open for as long
    # as the client trickled body bytes (no deadline covered them), and a client that sent
    # ``Expect: 100-continue`` and so never sends the body had its next request taken as it.
    fault_server.start()
    with tls_socket(fault_server) as sock:
        sock.sendall(
            b"POST /api/v1/auth/roles HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: 60\r\n\r\n"
        )
        started = time.monotonic()
        ((head, body),) = _responses(read_all(sock, limit_s=5))
        closed_after_s = time.monotonic() - started
    assert head.startswith(b"HTTP/1.1 401"), head
    assert b"\r\nconnection: close" in head
    assert closed_after_s < 3, closed_after_s  # closed by the server, not by read_all's limit
    with tls_socket(fault_server) as sock:
        sock.sendall(
            b"POST /api/v1/certificates HTTP/1.1\r\nHost: localhost\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
        )
        started = time.monotonic()
        ((head, body),) = _responses(read_all(sock, limit_s=5))
        closed_after_s = time.monotonic() - started
    assert head.startswith(b"HTTP/1.1 401"), head
    assert closed_after_s < 3, closed_after_s  # the rest of the body is not waited for
    # The twin: a body the handler read to its end keeps the connection for the next request.
    body = json.dumps({"id": "r-kept", "name": "kept", "permissions": ["cert.read"]}).encode()
    with tls_socket(fault_server) as sock:
        sock.sendall(
            b"POST /api/v1/auth/roles HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: Bearer " + fault_server.admin_key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
            + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        answers = _responses(read_all(sock))
    assert [h.split(b" ", 2)[1] for h, _ in answers] == [b"201", b"200"]
    assert b"connection: close" not in answers[0][0]


def test_host_is_required_once_in_http_1_1(fault_server: FaultServer) -> None:
    # RFC 9112 3.2: 400 for an HTTP/1.1 request without Host or with two (a proxy in front may
    # route by one and certctl see the other); HTTP/1.0 may omit it.
    fault_server.start()
    cases = {
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n": b"400",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n": b"400",
        b"GET /healthz HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n": b"400",
        b"GET /healthz HTTP/2.0\r\nConnection: close\r\n\r\n": b"400",
        b"GET /healthz HTTP/1.0\r\n\r\n": b"200",
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n": b"200",
    }
    for request, status in cases.items():
        with tls_socket(fault_server) as sock:
            sock.sendall(request)
            head, body = _responses(read_all(sock, limit_s=2))[0]
        assert head.split(b" ", 2)[1] == status, (request, head)
        if status == b"400":
            assert b"content-type: application/problem+json" in head
            problem = json.loads(body)
            assert problem["detail"] == "an HTTP/1.1 request needs exactly one Host header"
            # Titled as every invalid-request is: it said "Bad request".
            assert problem["title"] == "Invalid request"


def test_a_slow_body_and_an_unread_response_are_dropped(fault_server: FaultServer) -> None:
    # Before: an authorised client trickling its body, or any client never reading the answer
    # it asked for, held its connection (and a file descriptor) for as long as it liked.
    fault_server.config = {"http": {"body-timeout": "2s", "send-timeout": "2s"}}
    fault_server.start()
    body = json.dumps({"id": "r-slow", "name": "slow", "permissions": ["cert.read"]}).encode()
    head = (
        b"POST /api/v1/auth/roles HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Bearer " + fault_server.admin_key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with tls_socket(fault_server) as sock:
        sock.sendall(head + body[:10])
        started = time.monotonic()
        assert read_all(sock, limit_s=8) == b""  # dropped without an answer
        dropped_s = time.monotonic() - started
    assert 1.8 <= dropped_s <= 4, dropped_s
    # The twin: a body that takes 1 s in two parts is served.
    with tls_socket(fault_server) as sock:
        sock.sendall(head + body[:10])
        time.sleep(1)
        sock.sendall(
            body[10:] + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        answers = _responses(read_all(sock))
    assert [h.split(b" ", 2)[1] for h, _ in answers] == [b"201", b"200"]
    # A client that asks for 3,000 OpenAPI documents (~230 MB) and reads none: once the
    # server's writes have been paused for 2 s, the connection is reset.
    raw = socket.create_connection(("127.0.0.1", fault_server.port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with tls_context(fault_server.ca).wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n" * 3000)
        time.sleep(5)
        started = time.monotonic()
        received = len(read_all(sock, limit_s=10))
        ended_s = time.monotonic() - started
    assert ended_s < 5, (ended_s, received)  # not still streaming the answers
    assert received < 50_000_000, received
    with fault_server.client() as client:  # and the server is fine
        assert client.get("/healthz").status_code == 200


def test_a_queued_body_is_not_timed_while_the_server_is_not_reading(
    fault_server: FaultServer,
) -> None:
    # Behind a pipelined request still being answered, uvicorn stops reading: the rest of the
    # next request's body waits in the socket. Its body-timeout clock must not run meanwhile,
    # or the connection (and the earlier answers) would be dropped for the server's own pause.
    fault_server.config = {"http": {"body-timeout": "1s", "send-timeout": "30s"}}
    fault_server.start()
    body = json.dumps({"id": "r-queued", "name": "queued", "permissions": ["cert.read"]}).encode()
    queued = (
        b"POST /api/v1/auth/roles HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Authorization: Bearer " + fault_server.admin_key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    gets = 100  # ~7.7 MB of answers the client does not read for 2 s: more than the buffers
    raw = socket.create_connection(("127.0.0.1", fault_server.port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the server's buffer fills
    with tls_context(fault_server.ca).wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(
            b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n" * gets
            + queued
            + body[:10]
        )
        time.sleep(2)
        sock.sendall(body[10:])
        answers = _responses(read_all(sock, limit_s=20))
    statuses = [h.split(b" ", 2)[1] for h, _ in answers]
    assert statuses == [b"200"] * gets + [b"201"], (len(statuses), statuses[-3:])
