"""The access-log line of a plain-HTTP request, which the TLS listener answers itself."""

from __future__ import annotations

import logging

import pytest

from certctl.api.access_log import plain_http_request, write_line
from certctl.metrics.registry import HTTP_REQUESTS


def _line(first_bytes: bytes, caplog: pytest.LogCaptureFixture) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="certctl.access"):
        plain_http_request(first_bytes, "192.0.2.7", json_logs=False)
    [record] = [r for r in caplog.records if r.name == "certctl.access"]
    return record.getMessage()


@pytest.mark.parametrize(
    ("first_bytes", "expected"),
    [
        (b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", "192.0.2.7 GET /healthz 400 actor=- "),
        # Only the first bytes arrived: what is missing is "-", nothing is guessed.
        (b"G", "192.0.2.7 - - 400 actor=- "),
        (b"POST /api/v1/certificates", "192.0.2.7 POST - 400 actor=- "),
        # A method no API client sends is not a metric label; a path cannot forge a line.
        (b"BREW /pot HTTP/1.1\r\n", "192.0.2.7 - /pot 400 actor=- "),
        (b"GET /a%0a1.2.3.4%20GET%20/x HTTP/1.1\r\n", "192.0.2.7 GET /a\\n1.2.3.4%20GET%20/x 400"),
        (b"GET http://example.org/ HTTP/1.1\r\n", "192.0.2.7 GET - 400 actor=- "),
    ],
)
def test_plain_http_request_line(
    first_bytes: bytes, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert _line(first_bytes, caplog).startswith(expected)


def test_plain_http_request_key_in_path_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    key = "cctl_0123456789abcdef_" + "s" * 43
    line = _line(f"DELETE /api/v1/auth/apikeys/{key} HTTP/1.1\r\n".encode(), caplog)
    assert "s" * 43 not in line
    assert line.startswith("192.0.2.7 DELETE /api/v1/auth/apikeys/cctl_0123456789abcdef_")


def test_plain_http_request_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    series = HTTP_REQUESTS.labels("PUT", "unmatched", "400")
    before = series._value.get()
    _line(b"PUT /x HTTP/1.1\r\n", caplog)
    assert series._value.get() == before + 1


@pytest.mark.parametrize(
    ("actor", "shown"),
    [
        # A client certificate's subject from a CA in tls.client-ca (certctl's own issuers
        # refuse control characters): the actor of its requests.
        (
            "cert:CN=x\n192.0.2.9 DELETE /api/v1/auth/apikeys/k 200 actor=admin 1.0ms",
            "cert:CN=x\\n192.0.2.9%20DELETE%20/api/v1/auth/apikeys/k%20200%20actor=admin%201.0ms",
        ),
        ("cert:CN=Alice Example,O=Example", "cert:CN=Alice%20Example,O=Example"),
        ("kubernetes:system:serviceaccount:monitoring:prometheus", None),
    ],
)
def test_an_actor_cannot_forge_a_line_nor_a_field(
    actor: str, shown: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="certctl.access"):
        write_line("GET", "/api/v1/auth/whoami", 200, actor, 0.001, "192.0.2.7", json_logs=False)
    [record] = [r for r in caplog.records if r.name == "certctl.access"]
    line = record.getMessage()
    assert line == f"192.0.2.7 GET /api/v1/auth/whoami 200 actor={shown or actor} 1.0ms"
    assert len(line.split(" ")) == 6
