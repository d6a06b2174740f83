"""Abuse: key guessing is throttled per address, heads and bodies are bounded, slow clients and
thousands of idle connections cannot starve ``/healthz``. Real ``certctl serve``, loopback only.

The "other" client binds its socket to 127.0.0.2 (loopback range), so the server sees two
addresses without leaving the host.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._tools import free_port, run
from tests.e2e.conftest import tls_context
from tests.e2e.test_tls import s_client
from tests.faults.conftest import FaultServer, raise_nofile_limit

BAD_KEY = "cctl_0123456789abcdef_" + "A" * 43
FIGURES: dict[str, Any] = {}


def _client_from(server: FaultServer, address: str, key: str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=tls_context(server.ca), local_address=address)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, transport=transport, headers=headers, timeout=10)


def _metric(server: FaultServer, client: httpx.Client, reason: str) -> float:
    text = client.get("/api/v1/metrics/prometheus").text
    line = f'certctl_auth_failures_total{{reason="{reason}"}} '
    values = [float(row[len(line) :]) for row in text.splitlines() if row.startswith(line)]
    return values[0] if values else 0.0


def test_bad_keys_are_throttled_per_address(fault_server: FaultServer) -> None:
    fault_server.config = {"auth": {"failure-limit": 10, "failure-window": "3s"}}
    fault_server.start()
    key = fault_server.admin_key
    with (
        _client_from(fault_server, "127.0.0.1", BAD_KEY) as attacker,
        _client_from(fault_server, "127.0.0.1", key) as same_address,
        _client_from(fault_server, "127.0.0.2", key) as other,
        _client_from(fault_server, "127.0.0.3") as anonymous,
    ):
        # No credentials at all is not guessing: never throttled.
        for _ in range(15):
            assert anonymous.get("/api/v1/auth/whoami").status_code == 401
        statuses = [attacker.get("/api/v1/auth/whoami").status_code for _ in range(10)]
        assert statuses == [401] * 10
        blocked_at = time.monotonic()
        refused = attacker.get("/api/v1/auth/whoami")
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 3
        assert "too many failed authentications" in refused.json()["detail"]
        # The whole address is refused, a valid key too, before the key is looked at …
        assert same_address.get("/api/v1/auth/whoami").status_code == 429
        # A forged X-Forwarded-For does not make it another address (no proxy is trusted).
        forged = attacker.get("/api/v1/auth/whoami", headers={"X-Forwarded-For": "10.1.2.3"})
        assert forged.status_code == 429, forged.text
        # … but not its public routes (health checks, CA certificate, CRL).
        assert same_address.get("/healthz").status_code == 200
        assert same_address.get("/api/v1/issuers/default/ca.pem").status_code == 200
        # Another address is not affected, for reads and writes.
        assert other.get("/api/v1/auth/whoami").status_code == 200
        issued = other.post("/api/v1/certificates", json={"common_name": "ok.example.com"})
        assert issued.status_code == 201, issued.text
        assert _metric(fault_server, other, "ratelimited") == 3
        # Until the window has passed.
        waited = 0
        while same_address.get("/api/v1/auth/whoami").status_code == 429:
            waited += 1
            assert waited < 80, "still refused 8 s after the block"
            time.sleep(0.1)
        unblocked_s = time.monotonic() - blocked_at
        assert 2.5 <= unblocked_s <= retry_after + 1.0
        assert attacker.get("/api/v1/auth/whoami").status_code == 401  # counting again
    log = fault_server.log()
    assert "127.0.0.1: 10 authentication failures within 3 s; refused for 3 s" in log
    assert log.count("authentication failures within") == 1
    FIGURES["throttle"] = {
        "limit": 10,
        "window_s": 3,
        "failures_before_429": 10,
        "retry_after_s": retry_after,
        "unblocked_after_s": round(unblocked_s, 2),
        "other_address": "200/201",
        "missing_credentials_x15": "401, never 429",
    }
    print(f"auth throttle: {FIGURES['throttle']}")


# --- raw HTTP/1.1 over TLS ---------------------------------------------------------------


@contextmanager
def tls_socket(server: FaultServer, timeout: float = 10) -> Iterator[ssl.SSLSocket]:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    tls = tls_context(server.ca).wrap_socket(raw, server_hostname="localhost")
    try:
        yield tls
    finally:
        tls.close()


def read_all(sock: ssl.SSLSocket, limit_s: float = 10) -> bytes:
    """Read until the server closes the connection (bounded by ``limit_s``)."""
    sock.settimeout(limit_s)
    data = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def read_response(sock: ssl.SSLSocket) -> bytes:
    """One ``/healthz`` response (its body is ``ok``), whatever the TLS record boundaries."""
    sock.settimeout(5)
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def head(extra: bytes = b"") -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + extra + b"Connection: close\r\n\r\n"


def test_header_and_body_limits(fault_server: FaultServer) -> None:
    fault_server.start()
    # Over 16 KiB: 431 when the head arrives whole, 400 from h11 when it is still incomplete
    # past the limit; a 1 MiB head may even be cut off by a reset while it is being sent.
    refused = (b"HTTP/1.1 431", b"HTTP/1.1 400")
    cases: dict[str, tuple[bytes, tuple[bytes, ...]]] = {
        "8 KiB header": (head(b"X-Pad: " + b"a" * 8192 + b"\r\n"), (b"HTTP/1.1 200",)),
        "20 KiB header": (head(b"X-Pad: " + b"a" * 20_000 + b"\r\n"), refused),
        "300 headers": (
            head(b"".join(b"X-H%d: %s\r\n" % (n, b"b" * 60) for n in range(300))),
            refused,
        ),
        "1 MiB header": (head(b"X-Pad: " + b"a" * (1 << 20) + b"\r\n"), (*refused, b"")),
    }
    seen = {}
    for name, (request, expected) in cases.items():
        with tls_socket(fault_server) as sock:
            try:
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # refused while still sending: the answer is already waiting
            answer = read_all(sock)
        assert answer.startswith(expected) if answer else b"" in expected, (name, answer[:300])
        seen[name] = answer.split(b"\r\n", 1)[0].decode() or "connection reset"
    # Bodies: 1 MiB limit by Content-Length and by chunked transfer.
    with fault_server.client() as client:
        big = b"{" + b" " * (1 << 20) + b"}"
        r = client.post(
            "/api/v1/certificates", content=big, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413, r.text

        def chunks() -> Iterator[bytes]:
            for _ in range(20):
                yield b" " * 65536

        r = client.post(
            "/api/v1/certificates", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413, r.text
        assert client.get("/healthz").status_code == 200  # still serving
    assert fault_server.proc is not None
    assert fault_server.proc.poll() is None
    seen["1 MiB + 2 B body (Content-Length)"] = seen["1.25 MiB body (chunked)"] = "413"
    FIGURES["limits"] = seen
    print(f"size limits: {seen}")


def test_a_head_growing_past_16_kib_in_pieces_gets_431(fault_server: FaultServer) -> None:
    # The head arrives in 2 KiB TLS records with pauses, so it is never complete in one read:
    # the protocol counts the bytes of the open head and answers 431 itself, then closes.
    fault_server.start()
    with tls_socket(fault_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        sent = 0
        try:
            while sent < 24 * 1024:
                sock.sendall(b"X-Pad-%d: %s\r\n" % (sent, b"p" * 2000))
                sent += 2000
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # closed after the answer
        answer = read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), answer[:300]
    assert b"application/problem+json" in head
    assert json.loads(body)["status"] == 431
    # The server is still serving.
    with fault_server.client() as client:
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "bad",
    [b"Content-Length: abc\r\n", b"Content-Length: -1\r\n", b"X-Ctl: a\x01b\r\n"],
    ids=["length-abc", "length-negative", "control-byte"],
)
def test_a_malformed_request_gets_a_problem_400(fault_server: FaultServer, bad: bytes) -> None:
    fault_server.start()
    with tls_socket(fault_server) as sock:
        sock.sendall(b"POST /api/v1/certificates HTTP/1.1\r\nHost: localhost\r\n" + bad + b"\r\n")
        answer = read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"content-type: application/problem+json" in head
    assert json.loads(body)["detail"].startswith("malformed HTTP request")


def _closed_after(sock: ssl.SSLSocket, trickle: bytes, every_s: float, limit_s: float) -> float:
    """Send ``trickle`` one byte per ``every_s`` until the server closes; seconds it took."""
    started = time.monotonic()
    sock.settimeout(every_s)
    for n in range(int(limit_s / every_s)):
        try:
            if trickle:
                sock.sendall(trickle[n % len(trickle) : n % len(trickle) + 1])
            if sock.recv(1) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return time.monotonic() - started
    raise AssertionError(f"connection still open after {limit_s} s")


def test_slow_clients_time_out(fault_server: FaultServer) -> None:
    fault_server.config = {"http": {"header-timeout": "2s"}}
    fault_server.start()
    with tls_socket(fault_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        slowloris_s = _closed_after(sock, b"X-Slow: abcdefghijklmnop\r\n", 0.25, 8)
    with tls_socket(fault_server) as sock:
        silent_s = _closed_after(sock, b"", 0.25, 8)
    assert 1.8 <= slowloris_s <= 3.5, slowloris_s
    assert 1.8 <= silent_s <= 3.5, silent_s
    # The twins: a head that takes 1 s (under the deadline) is served; a kept-alive connection
    # may idle past the deadline between requests (timeout_keep_alive, 30 s, governs that).
    with tls_socket(fault_server) as sock:
        request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for n in range(0, len(request), 10):
            sock.sendall(request[n : n + 10])
            time.sleep(1.0 / (len(request) / 10))
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(2.5)
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
    FIGURES["slow"] = {
        "header_timeout_s": 2,
        "slowloris_closed_after_s": round(slowloris_s, 2),
        "silent_closed_after_s": round(silent_s, 2),
    }
    print(f"slow clients: {FIGURES['slow']}")


def _raw_closed_after(port: int, send: bytes, limit_s: float) -> float:
    """Open TCP, send ``send`` (maybe nothing), wait for the server to close; seconds it took."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as raw:
        started = time.monotonic()
        raw.sendall(send)
        try:
            while raw.recv(4096):
                pass  # a half ClientHello gets no answer, but read whatever comes
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"connection still open after {limit_s} s") from None
        return time.monotonic() - started


def test_a_silent_tls_client_is_dropped_at_the_handshake_deadline(
    fault_server: FaultServer,
) -> None:
    # The handshake had no deadline of its own but the loop's 60 s, and http.header-timeout
    # starts only once it is done: a client that connected and sent nothing held a file
    # descriptor for a minute.
    fault_server.config = {"http": {"handshake-timeout": "1s", "header-timeout": "5s"}}
    fault_server.start()
    silent_s = _raw_closed_after(fault_server.port, b"", 8)
    # Half a ClientHello: a record header announcing 512 bytes, and 6 of them.
    half_s = _raw_closed_after(
        fault_server.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 8
    )
    assert 0.9 <= silent_s <= 2.5, silent_s
    assert 0.9 <= half_s <= 2.5, half_s
    # The twins: real clients still shake hands and are answered, and a completed handshake
    # is then governed by header-timeout (5 s here), not by the handshake's deadline.
    curl = run(
        "curl", "-sS", "--cacert", str(fault_server.ca), f"{fault_server.url}/healthz", timeout=20
    )
    assert curl.stdout == "ok", curl.stderr
    handshake = s_client(fault_server.port, "-CAfile", fault_server.ca)
    assert "Verify return code: 0 (ok)" in handshake.stdout, handshake.stdout + handshake.stderr
    with tls_socket(fault_server) as sock:
        time.sleep(1.5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
    FIGURES["handshake"] = {
        "handshake_timeout_s": 1,
        "silent_closed_after_s": round(silent_s, 2),
        "half_client_hello_closed_after_s": round(half_s, 2),
    }
    print(f"handshake deadline: {FIGURES['handshake']}")


def test_a_client_that_ignores_the_tls_close_is_let_go_within_the_handshake_timeout(
    fault_server: FaultServer,
) -> None:
    # When certctl ends a TLS connection (here: no head within header-timeout) it sends
    # close_notify and waited up to the loop's default 30 s for the client's: a client that
    # completed a handshake and then ignored everything held the server's socket (and a file
    # descriptor) header-timeout + 30 s. Now that wait is http.handshake-timeout.
    fault_server.config = {"http": {"handshake-timeout": "1s", "header-timeout": "1s"}}
    fault_server.start()
    time.sleep(0.5)  # the readiness probe's connection is gone
    baseline = _server_sockets(fault_server.pid)
    with tls_socket(fault_server):  # handshake done; then never read, never close
        opened = time.monotonic()
        assert _server_sockets(fault_server.pid) == baseline + 1
        while _server_sockets(fault_server.pid) > baseline:
            assert time.monotonic() - opened < 8, "the server still holds the connection"
            time.sleep(0.1)
        held_s = time.monotonic() - opened
    assert 1.8 <= held_s <= 3.5, held_s  # 1 s for a head, then 1 s for the TLS close
    FIGURES["tls_close"] = {"header_plus_close_s": round(held_s, 2)}
    print(f"TLS close of a silent client: {FIGURES['tls_close']}")


def _until_eof(sock: socket.socket) -> bytes:
    """What a plain-TCP ``sock`` receives until the server shuts its side (bounded: 5 s)."""
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_plain_http_clients_keep_the_handshake_deadline_and_the_connection_cap(
    fault_server: FaultServer,
) -> None:
    # A plain-HTTP request on the TLS port is answered 400 (tests/e2e/test_tls.py) by a protocol
    # that runs before TLS: it must neither hold a connection past http.handshake-timeout nor
    # leave it counted against http.max-connections once it is gone.
    fault_server.config = {"http": {"handshake-timeout": "1s", "max-connections": 3}}
    fault_server.start()
    time.sleep(0.5)  # the readiness probe's connection is gone
    baseline = _server_sockets(fault_server.pid)
    # Half a request line, answered at once, then never another byte and never a close.
    with socket.create_connection(("127.0.0.1", fault_server.port), timeout=5) as lingering:
        opened = time.monotonic()
        lingering.sendall(b"GET /healthz HT")
        assert _until_eof(lingering).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        while _server_sockets(fault_server.pid) > baseline:
            assert time.monotonic() - opened < 5, "the server still holds the connection"
            time.sleep(0.1)
        held_s = time.monotonic() - opened
    assert 0.8 <= held_s <= 2.5, held_s
    # Ten times the cap in plain-HTTP requests, one after the other: each is released.
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", fault_server.port), timeout=5) as plain:
            plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert _until_eof(plain).startswith(b"HTTP/1.1 400")
    time.sleep(0.3)
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with ExitStack() as stack:
        for _ in range(3):  # the whole cap, over TLS
            sock = stack.enter_context(tls_socket(fault_server))
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
    assert "refusing new connections" not in fault_server.log()


def _refused_at_once(port: int, context: ssl.SSLContext) -> float:
    """Seconds until a new TLS connection is closed by the server, before its handshake ends."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            context.wrap_socket(raw, server_hostname="localhost")
    return time.monotonic() - started


def _scrape(url: str, ca: Path, key: str) -> dict[str, float]:
    with httpx.Client(verify=tls_context(ca), timeout=5) as client:
        text = client.get(
            f"{url}/api/v1/metrics/prometheus", headers={"Authorization": f"Bearer {key}"}
        ).text
    prefix = "certctl_http_connections_refused_total"
    return {
        row.split(" ")[0][len(prefix) :]: float(row.split(" ")[1])
        for row in text.splitlines()
        if row.startswith(prefix)
    }


def test_connections_beyond_max_connections_are_refused_until_some_close(
    fault_server: FaultServer,
) -> None:
    # Nothing bounded open connections: thousands of idle ones used up RLIMIT_NOFILE, and
    # accept() then failed for everyone, Prometheus included, with nothing logged.
    metrics_port = free_port()
    fault_server.config = {
        "http": {"max-connections": 5},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
    }
    fault_server.start()
    metrics_url = f"https://127.0.0.1:{metrics_port}"
    context = tls_context(fault_server.ca)
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with ExitStack() as stack:
        held = []
        for _ in range(4):
            sock = stack.enter_context(tls_socket(fault_server))
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            held.append(sock)
        # A connection counts from accept: one still in its handshake (silent) is the fifth.
        silent = stack.enter_context(socket.create_connection(("127.0.0.1", fault_server.port)))
        time.sleep(0.2)
        refused_s = [_refused_at_once(fault_server.port, context) for _ in range(3)]
        assert max(refused_s) < 1.0, refused_s
        # The connections already open keep working …
        for sock in held:
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        # … and Prometheus gets in through the metrics listener, which has room of its own.
        assert _scrape(metrics_url, fault_server.ca, fault_server.admin_key) == {
            '{listener="main"}': 3.0,
            '{listener="metrics"}': 0.0,
        }
        # Once one closes, a new connection is accepted again.
        silent.close()
        deadline = time.monotonic() + 5
        while True:
            try:
                with tls_socket(fault_server, timeout=5) as sock:
                    sock.sendall(request)
                    assert read_response(sock).startswith(b"HTTP/1.1 200")
                break
            except (ssl.SSLError, ConnectionResetError):
                assert time.monotonic() < deadline, "still refused after a connection closed"
                time.sleep(0.05)
    log = fault_server.log()
    assert log.count("refusing new connections: 5 open, http.max-connections is 5") == 1, log
    assert "refused 2 new connections" not in log  # once a minute, not once per refusal
    FIGURES["max_connections"] = {
        "max_connections": 5,
        "refused_after_ms": [round(t * 1000, 1) for t in refused_s],
    }
    print(f"connection cap: {FIGURES['max_connections']}")


IDLE_CONNECTIONS = 2000


def _healthz_latency(server: FaultServer, rounds: int) -> list[float]:
    """Seconds per ``GET /healthz`` on a new TLS connection each time (handshake included)."""
    timings = []
    for _ in range(rounds):
        started = time.monotonic()
        with httpx.Client(verify=tls_context(server.ca), timeout=5) as client:
            assert client.get(f"{server.url}/healthz").text == "ok"
        timings.append(time.monotonic() - started)
    return timings


def _server_sockets(pid: int) -> int:
    fd_dir = f"/proc/{pid}/fd"
    count = 0
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{name}").startswith("socket:"):
                count += 1
        except FileNotFoundError:
            continue
    return count


def test_thousands_of_idle_connections(fault_server: FaultServer) -> None:
    nofile = raise_nofile_limit()  # inherited by the server
    assert nofile >= 2 * IDLE_CONNECTIONS + 100, f"ulimit -n is {nofile}"
    fault_server.config = {"http": {"header-timeout": "60s"}}
    fault_server.start()
    baseline = _healthz_latency(fault_server, 10)
    context = tls_context(fault_server.ca)
    opened = time.monotonic()
    with ExitStack() as stack:
        for _ in range(IDLE_CONNECTIONS):
            raw = socket.create_connection(("127.0.0.1", fault_server.port), timeout=10)
            stack.callback(raw.close)
            tls = context.wrap_socket(raw, server_hostname="localhost")  # handshake done
            stack.callback(tls.close)
            assert time.monotonic() - opened < 50, "opening idle connections took too long"
        open_s = time.monotonic() - opened
        held = _server_sockets(fault_server.pid)
        assert held >= IDLE_CONNECTIONS, held
        loaded = _healthz_latency(fault_server, 20)
        with fault_server.client() as client:  # and a real request beside them
            r = client.post("/api/v1/certificates", json={"common_name": "busy.example.com"})
            assert r.status_code == 201, r.text
    assert max(loaded) < 1.0, loaded
    assert fault_server.proc is not None
    assert fault_server.proc.poll() is None
    FIGURES["idle"] = {
        "idle_tls_connections": IDLE_CONNECTIONS,
        "server_sockets": held,
        "open_s": round(open_s, 2),
        "healthz_ms_baseline_median": round(statistics.median(baseline) * 1000, 1),
        "healthz_ms_loaded_median": round(statistics.median(loaded) * 1000, 1),
        "healthz_ms_loaded_max": round(max(loaded) * 1000, 1),
        "nofile": nofile,
    }
    print(f"idle connections: {FIGURES['idle']}")
