"""Transfer codings a request may name (RFC 9112 6), as curl sends them to ``certctl serve``."""

from __future__ import annotations

import json
import socket

import pytest

from tests._tools import run
from tests.e2e.conftest import CertctlServer, tls_context

pytestmark = pytest.mark.e2e

ROLES = "/api/v1/auth/roles"


def test_a_transfer_coding_certctl_does_not_know_gets_501(default_server: CertctlServer) -> None:
    # RFC 9112 6.1: a server SHOULD answer 501 to a transfer coding it does not understand.
    # gzip before chunked: the body is framed (chunked is last) but still compressed; certctl
    # read it as it came and answered as if its JSON were malformed, or ran the request.
    def post(transfer_encoding: str) -> tuple[str, str]:
        result = run("curl", "-sS", "-i", "--cacert", default_server.ca,
                     "-H", f"Transfer-Encoding: {transfer_encoding}",
                     "-H", "Content-Type: application/json", "--data-binary", "@-",
                     default_server.url + ROLES, input='{"id": "r-x"}', timeout=20)  # fmt: skip
        assert result.returncode == 0, result.stderr
        head, _, body = result.stdout.partition("\n\n")  # text mode: \r\n read as \n
        return head.lower(), body

    head, body = post("gzip, chunked")
    assert head.startswith("http/1.1 501 not implemented\n"), head
    assert "content-type: application/problem+json" in head
    assert "connection: close" in head
    assert "\ndate: " in head
    problem = json.loads(body)
    assert problem["status"] == 501
    assert problem["detail"].startswith("transfer coding not supported"), problem
    # The twin: chunked alone is understood, and the request reaches the app (no key: 401).
    head, _ = post("chunked")
    assert head.startswith("http/1.1 401 "), head


def test_a_body_whose_last_coding_is_not_chunked_is_a_400(default_server: CertctlServer) -> None:
    # RFC 9112 6.3: with chunked not the last coding, the body's length is unknown, and the
    # server MUST answer 400 and close (not 501: it cannot tell where the next request starts).
    raw = socket.create_connection(("127.0.0.1", default_server.port), timeout=10)
    with tls_context(default_server.ca).wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(
            b"POST " + ROLES.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
            b"Transfer-Encoding: gzip\r\n\r\nabc"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == 400
