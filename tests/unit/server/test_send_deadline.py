"""The send deadline of ``http_protocol`` over a real loopback socket and uvloop.

An in-process uvicorn server with certctl's protocol class and a tiny app whose answer is
larger than every kernel buffer, so the last bytes of a response wait in the transport.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
import uvloop
from starlette.types import Receive, Scope, Send

from certctl.server.protocol import http_protocol
from tests._tools import free_port

BIG = 32 * 1024 * 1024  # more than the server's send buffer and the client's receive buffer


async def _big_answer(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(BIG).encode())],
        }
    )
    await send({"type": "http.response.body", "body": b"x" * BIG})


@contextlib.contextmanager
def _serving(app: Any, send_timeout_s: float) -> Iterator[tuple[uvicorn.Server, int]]:
    """uvicorn + uvloop + certctl's protocol on a free loopback port, in a thread."""
    port = free_port()
    protocol = http_protocol(10.0, 65536, body_timeout_s=10.0, send_timeout_s=send_timeout_s)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=protocol,
        lifespan="off",
        access_log=False,
        log_config=None,
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: uvloop.run(srv.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield srv, port
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture
def server() -> Iterator[tuple[uvicorn.Server, int]]:
    with _serving(_big_answer, send_timeout_s=2.0) as served:
        yield served


def _connections(srv: uvicorn.Server) -> int:
    return len(srv.server_state.connections)


@pytest.mark.parametrize("last", [b"Connection: close\r\n", b""], ids=["close", "keep-alive"])
def test_an_unread_answer_is_dropped_even_when_it_ends_the_connection(
    server: tuple[uvicorn.Server, int], last: bytes
) -> None:
    # Before: the deadline fired but skipped a transport already closing (Connection: close,
    # HTTP/1.0, the 400 after a pipelined request): its unsent megabytes and its descriptor
    # were held for as long as the client kept the connection open without reading.
    srv, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n" + last + b"\r\n")
        deadline = time.monotonic() + 5
        while not _connections(srv):  # accepted, answering
            assert time.monotonic() < deadline, "the server did not take the connection"
            time.sleep(0.02)
        started = time.monotonic()
        while _connections(srv) and time.monotonic() < started + 8:
            time.sleep(0.1)
        assert _connections(srv) == 0, "the server still holds the connection"
        assert time.monotonic() - started > 1.5  # after the 2 s deadline, not at once


def test_a_client_that_reads_gets_the_whole_answer(server: tuple[uvicorn.Server, int]) -> None:
    # The twin: a client reading at its pace is never cut, closing connection or not.
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        received = 0
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    head = 200  # status line and headers, well under this
    assert BIG < received < BIG + head, received


async def _small_answer(scope: Scope, receive: Receive, send: Send) -> None:
    body = b"y" * 100_000
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def test_a_dropped_pipeline_ends_its_answers_quietly(caplog: pytest.LogCaptureFixture) -> None:
    # The request being answered when the deadline drops the connection is not uvicorn's
    # latest (``cycle``), so uvicorn did not mark it disconnected: it wrote on, uvloop raised
    # "the handler is closed", and each drop logged a traceback and a 500 (certctl's access
    # log and certctl_http_requests_total counted a server error for a client's behaviour).
    with _serving(_small_answer, send_timeout_s=1.0) as (srv, port):
        with caplog.at_level(logging.ERROR):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" * 200)
                deadline = time.monotonic() + 8
                while _connections(srv) or time.monotonic() < deadline - 6:
                    assert time.monotonic() < deadline, "not dropped"
                    time.sleep(0.1)
            time.sleep(0.5)  # the answer that was being written ends
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
