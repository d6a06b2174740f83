"""Webhook notifications: each event delivered once, HMAC-signed, retried with back-off."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import shutil
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from certctl.server.bootstrap import bootstrap
from certctl.server.config import ServerConfig
from certctl.server.scheduler import Scheduler
from certctl.server.service_setup import load_webhook
from certctl.services import service_specs
from certctl.services.notify import (
    SIGNATURE_HEADER,
    SIGNATURE_V2_HEADER,
    TIMESTAMP_HEADER,
    Webhook,
    dispatch_pending,
    sign,
    sign_timestamped,
)
from certctl.services.service_settings import ServiceSettings
from certctl.store.models import OutboxEvent
from tests.api.conftest import PostgresCluster
from tests.services.conftest import SETTINGS, Env, make_ca, make_leaf, service_doc

SECRET = b"webhook-shared-secret"
NEW_SECRET = b"webhook-shared-secret-2"


@dataclass
class Received:
    status: int
    headers: dict[str, str]
    body: bytes
    path: str = "/hook"  # a proxy is sent the absolute URL


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    fail_first: int = 0  # answer this many requests with 500 first

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if r.status == 200]


@contextlib.contextmanager
def _receiving(context: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """An in-process receiver on 127.0.0.1; HTTPS with ``context`` (its server certificate)."""
    state = Receiver(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                status = 500 if state.fail_first > 0 else 200
                state.fail_first -= status == 500
                state.requests.append(Received(status, dict(self.headers.items()), body, self.path))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if context is not None:
        # Handshakes happen in accept(); one the client refuses is dropped there (OSError).
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with _receiving() as state:
        yield state


def _check_signature(request: Received, secret: bytes = SECRET) -> bool:
    header = request.headers[SIGNATURE_HEADER]
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", header), header
    expected = "sha256=" + hmac.new(secret, request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header, expected)


def _check_timestamped(request: Received, secret: bytes = SECRET) -> bool:
    """The v2 signature: HMAC-SHA256 over ``<X-Certctl-Timestamp>.<body>``."""
    timestamp = request.headers[TIMESTAMP_HEADER]
    assert timestamp.isdigit(), timestamp
    header = request.headers[SIGNATURE_V2_HEADER]
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", header), header
    signed = timestamp.encode() + b"." + request.body
    expected = "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header, expected)


def _outbox(env: Env) -> list[OutboxEvent]:
    with env.services.sessions() as session:
        return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))


def test_each_event_once_signed_retried_after_500(env: Env, receiver: Receiver) -> None:
    webhook = Webhook(receiver.url, SECRET, timeout_s=5)
    scheduler = Scheduler(env.services, env.settings, 60, webhook)

    env.put(service_doc("web"))
    env.put(service_doc("broken", secret="missing"))
    receiver.fail_first = 1
    assert scheduler.tick() == 2  # reconciles both (by name), then sends what is due
    # The first event was answered 500; the second went through.
    assert [r.status for r in receiver.requests] == [500, 200]
    rows = _outbox(env)
    assert [(e.event, e.service) for e in rows] == [("failed", "broken"), ("issued", "web")]
    first = rows[0]
    assert first.delivered_at is None
    assert first.attempts == 1
    assert first.last_error == "HTTP 500"
    assert first.next_attempt_at > env.now

    # Not due yet: nothing is sent again, however often the dispatcher runs.
    assert dispatch_pending(env.services, webhook) == 0
    assert len(receiver.requests) == 2
    # After the back-off it is delivered, once.
    env.clock.advance(seconds=(first.next_attempt_at - env.now).total_seconds())
    assert dispatch_pending(env.services, webhook) == 1
    assert dispatch_pending(env.services, webhook) == 0

    # Renewal (time travel past the renewal date) is an event too; the retried failure,
    # failing as before, is not (sent when the service became Failed).
    web = env.row("web")
    assert web.renew_at is not None
    env.at(web.renew_at + timedelta(seconds=1))
    scheduler.tick()
    assert dispatch_pending(env.services, webhook) == 0

    events = _outbox(env)
    kinds = [(e.event, e.service) for e in events]
    assert kinds == [("failed", "broken"), ("issued", "web"), ("renewed", "web")]
    assert env.row("broken").attempts == 2  # retried all the same
    assert all(e.delivered_at is not None for e in events)

    delivered = receiver.delivered()
    bodies = [json.loads(r.body) for r in delivered]
    # Each event exactly once (the 500 answer does not count as a delivery).
    assert sorted(b["id"] for b in bodies) == [e.id for e in events]
    assert len(receiver.requests) == len(events) + 1
    assert json.loads(receiver.requests[0].body) == json.loads(
        next(r.body for r in delivered if json.loads(r.body)["id"] == events[0].id)
    )  # the retry resent the same event
    for request, body in zip(delivered, bodies, strict=True):
        assert _check_signature(request), request.headers
        assert not _check_signature(request, b"another-secret")  # negative twin
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Certctl-Event"] == body["event"]
        assert request.headers["X-Certctl-Delivery"] == str(body["id"])
        event = next(e for e in events if e.id == body["id"])
        assert body == {"id": event.id, **event.payload}
        assert body["service"] == event.service
    by_event = {b["event"]: b for b in bodies}
    assert by_event["issued"]["serial"]
    assert by_event["issued"]["not_after"]
    assert by_event["renewed"]["reason"] == "due for renewal"
    assert "secret missing not found" in by_event["failed"]["reason"]
    # A tampered body no longer matches its signature.
    tampered = Received(200, delivered[0].headers, delivered[0].body.replace(b"web", b"bew"))
    assert not _check_signature(tampered)


def test_each_attempt_carries_a_signed_timestamp(env: Env, receiver: Receiver) -> None:
    """Before: the signature covered the body alone, so a delivery captured once (a proxy's
    log, a receiver's request dump) could be replayed, still valid, forever."""
    env.put(service_doc("web"))
    env.reconcile("web")
    webhook = Webhook(receiver.url, SECRET, timeout_s=5)
    receiver.fail_first = 1
    assert dispatch_pending(env.services, webhook) == 0
    (event,) = _outbox(env)
    env.at(event.next_attempt_at + timedelta(seconds=1.5))  # a fractional second: cut off
    assert dispatch_pending(env.services, webhook) == 1
    first, retry = receiver.requests
    # Each attempt is stamped with its own time (Unix seconds) and signed with it; the
    # delivery id, which is also in the signed body, stays the same.
    assert first.headers[TIMESTAMP_HEADER] == str(int(event.at.timestamp()))
    assert retry.headers[TIMESTAMP_HEADER] == str(int(env.now.timestamp()))
    assert first.headers["X-Certctl-Delivery"] == retry.headers["X-Certctl-Delivery"]
    for request in (first, retry):
        assert _check_timestamped(request)
        assert not _check_timestamped(request, b"another-secret")
        assert _check_signature(request)  # the v1 header, as documented before, still there
    # Another timestamp (a replay passed off as new) no longer matches the signature.
    moved = dict(retry.headers, **{TIMESTAMP_HEADER: first.headers[TIMESTAMP_HEADER]})
    assert not _check_timestamped(Received(200, moved, retry.body))


def test_the_documented_receiver_check(env: Env, receiver: Receiver) -> None:
    """The verification code docs/configuration.md gives receivers, run as written."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    sample = re.search(r"<!-- webhook-verify -->\n```python\n(.*?)```", text, re.S)
    assert sample is not None
    scope: dict[str, Any] = {}
    exec(sample.group(1), scope)
    verify = scope["verify"]
    env.put(service_doc("web"))
    env.reconcile("web")
    assert dispatch_pending(env.services, Webhook(receiver.url, SECRET, timeout_s=5)) == 1
    (request,) = receiver.requests
    sent_at = int(request.headers[TIMESTAMP_HEADER])
    # Any header spelling: receivers' frameworks differ (lower case in ASGI, Go's canonical).
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert verify(SECRET, headers, request.body, now=sent_at + 5)
    assert verify(SECRET, headers, request.body, now=sent_at - 5)  # its clock a bit behind
    assert not verify(b"another-secret", headers, request.body, now=sent_at)
    assert not verify(SECRET, headers, request.body + b" ", now=sent_at)
    # Replayed after the tolerance (5 minutes): refused, although the signature matches.
    assert not verify(SECRET, headers, request.body, now=sent_at + 301)
    # Replayed with a fresh timestamp: the signature no longer matches.
    fresh = dict(headers, **{"x-certctl-timestamp": str(sent_at + 400)})
    assert not verify(SECRET, fresh, request.body, now=sent_at + 400)
    # Without the new headers (a sender older than them): refused, not an error.
    old = {k: v for k, v in headers.items() if k == "x-certctl-signature"}
    assert not verify(SECRET, old, request.body, now=sent_at)

    # A key being rotated as documented (the old key in previous-secret-file): certctl signs
    # with both, a receiver holding either accepts.
    env.put(service_doc("api"))
    env.reconcile("api")
    (env.tmp / "webhook-secret").write_bytes(NEW_SECRET + b"\n")
    (env.tmp / "webhook-secret.previous").write_bytes(SECRET + b"\n")
    hook = {
        "url": receiver.url,
        "secret-file": str(env.tmp / "webhook-secret"),
        "previous-secret-file": str(env.tmp / "webhook-secret.previous"),
    }
    rotating = load_webhook(ServerConfig.model_validate({"notifications": {"webhook": hook}}))
    assert rotating is not None
    assert dispatch_pending(env.services, rotating) == 1
    request = receiver.requests[-1]
    headers = {k.lower(): v for k, v in request.headers.items()}
    sent_at = int(headers["x-certctl-timestamp"])
    assert verify(SECRET, headers, request.body, now=sent_at)  # the receiver not updated yet
    assert verify(NEW_SECRET, headers, request.body, now=sent_at)  # the receiver updated
    assert not verify(b"another-secret", headers, request.body, now=sent_at)
    assert not verify(NEW_SECRET, headers, request.body + b" ", now=sent_at)


def test_a_rotated_key_signs_beside_the_current_one(env: Env, receiver: Receiver) -> None:
    """Before: one key, so the sender and every receiver had to change it at the same moment
    (deliveries in between were refused, retried until both matched)."""
    env.put(service_doc("web"))
    env.reconcile("web")
    webhook = Webhook(receiver.url, NEW_SECRET, timeout_s=5, previous_secrets=(SECRET,))
    assert dispatch_pending(env.services, webhook) == 1
    (request,) = receiver.requests
    listed = request.headers[SIGNATURE_V2_HEADER]
    assert re.fullmatch(r"sha256=[0-9a-f]{64}, sha256=[0-9a-f]{64}", listed), listed
    current, previous = listed.split(", ")
    for signature, secret in ((current, NEW_SECRET), (previous, SECRET)):
        alone = dict(request.headers, **{SIGNATURE_V2_HEADER: signature})
        assert _check_timestamped(Received(200, alone, request.body), secret)
    # v1, which a receiver compares whole, carries the current key's signature alone.
    assert _check_signature(request, NEW_SECRET)
    assert not _check_signature(request, SECRET)


def test_the_url_path_and_query_are_never_logged_nor_stored(
    env: Env, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver URL may hold a token (Slack's ``/services/T…/B…/<secret>``, a ``?token=``):
    log lines and ``last_error`` name the receiver as scheme://host:port only."""
    for name in ("a", "b"):
        env.put(service_doc(name))
        env.reconcile(name)
    origin = receiver.url.removesuffix("/hook")
    secret_url = "/services/T0/B0/s3cr3tpath?token=qu3ry"
    webhook = Webhook(origin + secret_url, SECRET, timeout_s=5)
    down = Webhook("http://127.0.0.1:9" + secret_url, SECRET, timeout_s=2)
    receiver.fail_first = 1
    # Every logger at DEBUG, httpx's and httpcore's too, as a logging configuration of the
    # user's may set them. Before: httpx's INFO line quoted the whole URL, hidden only by
    # certctl serve setting that logger to WARNING.
    with (
        caplog.at_level(logging.DEBUG),
        caplog.at_level(logging.DEBUG, "httpx"),
        caplog.at_level(logging.DEBUG, "httpcore"),
    ):
        assert dispatch_pending(env.services, webhook) == 1  # a: HTTP 500, b: delivered
        env.clock.advance(seconds=60)
        env.put(service_doc("c"))
        env.reconcile("c")
        assert dispatch_pending(env.services, down) == 0  # a: refused, c waits
    assert receiver.requests[0].path == secret_url  # the receiver does get it
    stored = [e.last_error or "" for e in _outbox(env)]
    assert stored == ["ConnectError", "", ""], stored
    logged = caplog.text + repr(webhook) + repr(down)
    for part in ("s3cr3tpath", "qu3ry", "/services", SECRET.decode()):
        assert part not in logged, logged
    # The receiver is named all the same: which one failed is what an operator asks first.
    assert f"to {origin} failed (HTTP 500)" in caplog.text
    # httpx's own line is still there, naming the receiver alone.
    assert f'HTTP Request: POST {origin} "HTTP/1.0 200 OK"' in caplog.text, caplog.text
    assert "to http://127.0.0.1:9 failed (ConnectError)" in caplog.text
    assert "webhook receiver http://127.0.0.1:9 unreachable; 1 more events wait" in caplog.text


def test_a_key_wrapped_over_lines_is_one_key(env: Env, receiver: Receiver) -> None:
    """Before: secret-file was read as one key per line, so a key ``openssl rand -base64 64``
    wrapped over two lines became two keys and v1 was signed with its first line: every
    receiver holding the key refused every delivery, and certctl said nothing."""
    key_file = env.tmp / "webhook-secret"
    content = b"  wrapped-key-part-1\nwrapped-key-part-2\n\n"
    key_file.write_bytes(content)
    hook = {"url": receiver.url, "secret-file": str(key_file), "timeout": "5s"}
    webhook = load_webhook(ServerConfig.model_validate({"notifications": {"webhook": hook}}))
    assert webhook is not None
    env.put(service_doc("web"))
    env.reconcile("web")
    assert dispatch_pending(env.services, webhook) == 1  # the file read again at this pass
    (request,) = receiver.requests
    key = content.strip()  # the whole file, its inner newline part of the key
    assert request.headers[SIGNATURE_HEADER] == sign(key, request.body)
    assert _check_timestamped(request, key)  # one v2 signature, with the same key


def test_a_changed_key_file_signs_from_the_next_pass_without_a_restart(
    env: Env, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the key was read at start, so each step of a rotation needed a restart of
    every replica (one left behind, once leader, signed with the old key alone)."""
    key_file = env.tmp / "webhook-secret"
    previous_file = env.tmp / "webhook-secret.previous"
    key_file.write_bytes(SECRET + b"\n")
    webhook = Webhook(
        receiver.url,
        SECRET,
        timeout_s=5,
        secret_file=key_file,
        previous_secret_file=previous_file,  # not there yet: no key being retired
    )

    def send(name: str) -> Received:
        env.put(service_doc(name))
        env.reconcile(name)
        assert dispatch_pending(env.services, webhook) == 1
        return receiver.requests[-1]

    assert _check_timestamped(send("a"), SECRET)  # one signature
    previous_file.write_bytes(SECRET + b"\n")  # step 1: the old key kept aside, then
    key_file.write_bytes(NEW_SECRET + b"\n")  # the new one in its place
    with caplog.at_level(logging.INFO, "certctl.notify"):
        request = send("b")
    listed = request.headers[SIGNATURE_V2_HEADER].split(", ")
    timestamp = int(request.headers[TIMESTAMP_HEADER])
    assert listed == [sign_timestamped(k, timestamp, request.body) for k in (NEW_SECRET, SECRET)]
    assert _check_signature(request, NEW_SECRET)
    changed = f"{key_file} and {previous_file} changed: webhook POSTs are now signed with 2 keys"
    assert changed in caplog.text
    # A file that cannot be used (emptied) keeps the keys read before, with one warning.
    previous_file.write_bytes(b"\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, "certctl.notify"):
        for name in ("c", "d"):
            request = send(name)
            assert request.headers[SIGNATURE_V2_HEADER].count("sha256=") == 2
            assert _check_signature(request, NEW_SECRET)
    assert caplog.text.count(f"previous-secret-file {previous_file} is empty") == 1
    for key in (SECRET, NEW_SECRET):
        assert key.decode() not in caplog.text
    previous_file.unlink()  # step 3
    with caplog.at_level(logging.INFO, "certctl.notify"):
        request = send("e")
    assert _check_timestamped(request, NEW_SECRET)  # one signature, the new key's
    assert f"{previous_file} changed: webhook POSTs are now signed with 1 key" in caplog.text


def test_unreachable_receiver_backs_off_and_delivers_later(env: Env, receiver: Receiver) -> None:
    env.put(service_doc("web"))
    env.reconcile("web")
    down = Webhook("http://127.0.0.1:9/unreachable", SECRET, timeout_s=2)
    delays = []
    for _ in range(3):
        assert dispatch_pending(env.services, down) == 0
        (event,) = _outbox(env)
        assert event.last_error == "ConnectError"
        delays.append(event.next_attempt_at - env.now)
        env.at(event.next_attempt_at)
    assert delays[0] < delays[1] < delays[2], delays
    assert dispatch_pending(env.services, Webhook(receiver.url, SECRET)) == 1
    assert len(receiver.requests) == 1
    assert _check_signature(receiver.requests[0])


def test_a_hanging_receiver_costs_one_timeout_per_pass_and_never_delays_reconciles(
    env: Env, receiver: Receiver
) -> None:
    import socket
    import time

    # Accepts connections (the kernel's backlog) and never answers: a hung receiver.
    hung = socket.create_server(("127.0.0.1", 0), backlog=16)
    try:
        webhook = Webhook(f"http://127.0.0.1:{hung.getsockname()[1]}/hook", SECRET, timeout_s=1)
        for name in ("a", "b", "c"):
            env.put(service_doc(name))
            env.reconcile(name)
        started = time.monotonic()
        assert dispatch_pending(env.services, webhook) == 0
        assert time.monotonic() - started < 2.5  # one timeout, not three
        attempts = [e.attempts for e in _outbox(env)]
        assert attempts == [1, 0, 0], attempts  # the others wait, no attempt counted

        # The server's loop sends in the background: the pass returns at once.
        scheduler = Scheduler(env.services, env.settings, 60, webhook, clock=lambda: env.now)
        env.put(service_doc("d"))
        started = time.monotonic()
        assert scheduler.tick(dispatch_in_background=True) == 1
        assert time.monotonic() - started < 0.9
        assert scheduler._leading.is_set()  # what the background sender asks before each event
        assert scheduler._dispatcher is not None
        scheduler._dispatcher.join(timeout=10)
    finally:
        hung.close()
    # Reachable again: everything still pending goes out, each event once.
    env.clock.advance(seconds=60)
    assert dispatch_pending(env.services, Webhook(receiver.url, SECRET)) == 4
    assert sorted(json.loads(r.body)["service"] for r in receiver.requests) == ["a", "b", "c", "d"]


def test_proxy_variables_in_the_environment_are_not_used(
    env: Env, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: HTTP_PROXY / ALL_PROXY set in certctl's environment (for something else, or by
    # whoever could set them) sent every notification, secret-signed, through that proxy:
    # here a closed port, so nothing was delivered (ConnectError).
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    env.put(service_doc("web"))
    env.reconcile("web")
    assert dispatch_pending(env.services, Webhook(receiver.url, SECRET, timeout_s=5)) == 1
    (request,) = receiver.requests
    assert request.path == "/hook"  # straight to the receiver
    assert _check_signature(request)


def test_an_explicit_proxy_carries_the_posts(env: Env, receiver: Receiver) -> None:
    # The receiver stands in for the proxy: a proxy is sent the absolute URL, and resolves
    # the receiver's name itself (.invalid never resolves here).
    env.put(service_doc("web"))
    env.reconcile("web")
    proxy = receiver.url.removesuffix("/hook")
    webhook = Webhook("http://hooks.invalid/certctl", SECRET, timeout_s=5, proxy=proxy)
    assert dispatch_pending(env.services, webhook) == 1
    (request,) = receiver.requests
    assert request.path == "http://hooks.invalid/certctl"
    assert _check_signature(request)


def test_a_receiver_under_a_private_ca_is_trusted_through_ca_file(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: no setting for the receiver's CA; only the bundled public CAs were trusted
    # (or SSL_CERT_FILE, for every HTTPS client of the process).
    now = datetime.now(UTC)  # the TLS client checks validity against the real clock
    ca = make_ca("Webhook receiver CA", now - timedelta(minutes=1))
    leaf = make_leaf(ca, "localhost", now - timedelta(minutes=1), ip=("127.0.0.1",))
    (tmp_path / "tls.pem").write_bytes(leaf.cert_pem + leaf.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.pem")
    ca_file = tmp_path / "receiver-ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(make_ca("Another CA", now - timedelta(minutes=1)).cert_pem)
    env.put(service_doc("web"))
    env.reconcile("web")
    with _receiving(context) as receiver:
        for trusted in (None, other_ca):
            webhook = Webhook(receiver.url, SECRET, timeout_s=5, ca_file=trusted)
            assert dispatch_pending(env.services, webhook) == 0
            (event,) = _outbox(env)
            # Named as what it is, not "ConnectError" (which reads like a network outage).
            assert event.last_error == (
                "TLS certificate verify failed: unable to get local issuer certificate"
            )
            env.at(event.next_attempt_at)
        assert receiver.requests == []
        webhook = Webhook(receiver.url, SECRET, timeout_s=5, ca_file=ca_file)
        assert dispatch_pending(env.services, webhook) == 1
        (request,) = receiver.requests
        assert _check_signature(request)

        # Read again at each pass: a file caught half-written keeps the CAs trusted so far...
        ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
        env.put(service_doc("api"))
        env.reconcile("api")
        with caplog.at_level(logging.WARNING, "certctl.notify"):
            assert dispatch_pending(env.services, webhook) == 1
        assert f"notifications.webhook.ca-file {ca_file}: no PEM certificate in it" in caplog.text
        # ...and another CA replaces them, without a restart.
        ca_file.write_bytes(other_ca.read_bytes())
        env.put(service_doc("db"))
        env.reconcile("db")
        assert dispatch_pending(env.services, webhook) == 0
    assert len(receiver.requests) == 2


def test_a_name_lookup_that_does_not_answer_costs_one_timeout(
    env: Env, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``timeout`` bounds the POST from its first step, the receiver's name lookup.

    Before: the lookup (getaddrinfo, blocking) ran before the deadline had a socket to shut
    down, so a resolver that did not answer held the pass (and every event after it) for as
    long as the resolver took, then the POST went out anyway, late.
    """
    import socket
    import time

    # A resolver that does not answer for this one name (until the test ends): getaddrinfo
    # itself, slowed, whichever thread calls it.
    answer = threading.Event()
    real = socket.getaddrinfo

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("slow-dns.test", b"slow-dns.test"):  # anyio passes it encoded
            answer.wait(10)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    env.put(service_doc("web"))
    env.reconcile("web")
    port = receiver.url.split(":")[2].split("/")[0]
    webhook = Webhook(f"http://slow-dns.test:{port}/hook", SECRET, timeout_s=0.5)
    started = time.monotonic()
    try:
        assert dispatch_pending(env.services, webhook) == 0
        took = time.monotonic() - started
    finally:
        answer.set()
    assert took < 1.5, took  # the timeout, not the resolver's 10 s
    (event,) = _outbox(env)
    assert event.last_error == "Timeout"
    assert event.attempts == 1
    time.sleep(0.2)  # the lookup given up on, answered now, sends nothing late
    assert receiver.requests == []


def test_a_replica_that_stops_leading_stops_sending(env: Env, receiver: Receiver) -> None:
    for name in ("a", "b", "c"):
        env.put(service_doc(name))
        env.reconcile(name)
    leads = iter([True, False])  # leads for the first event, then the lock moves on
    sent = dispatch_pending(
        env.services, Webhook(receiver.url, SECRET), leading=lambda: next(leads)
    )
    assert sent == 1
    assert len(receiver.requests) == 1
    assert [e.delivered_at is not None for e in _outbox(env)] == [True, False, False]
    assert all(e.attempts == 0 for e in _outbox(env)[1:])  # not attempted, not backed off


def test_a_leader_whose_lock_session_ends_stops_sending_at_once(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    """The lock session of the leader ends while an event is being sent (a network cut,
    ``pg_terminate_backend``): no further event leaves this replica, whose successor sends
    them (was: the rest of the pass, up to 100 events, until the next reconcile tick)."""
    url = postgres_cluster.url(postgres_cluster.create_database())  # no other leader in it
    booted = bootstrap(
        ServerConfig.model_validate({"data-dir": str(tmp_path / "data"), "database-url": url})
    )
    services = booted.services
    now = services.clock()
    with services.sessions.begin() as session:
        for n in range(5):
            session.add(
                OutboxEvent(
                    at=now,
                    event="issued",
                    service=f"svc-{n}",
                    payload={"service": f"svc-{n}"},
                    attempts=0,
                    next_attempt_at=now,
                )
            )
    first_arrived, go_on = threading.Event(), threading.Event()
    sent: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            sent.append(self.rfile.read(int(self.headers["Content-Length"])))
            first_arrived.set()
            go_on.wait(10)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    webhook = Webhook(f"http://127.0.0.1:{server.server_address[1]}/hook", SECRET, timeout_s=10)
    settings = ServiceSettings(
        ca_validity=SETTINGS["ca_validity"],
        ca_rotate_before=SETTINGS["ca_rotate_before"],
        cert_validity=SETTINGS["cert_validity"],
        cert_rotate_before=SETTINGS["cert_rotate_before"],
        secrets_dir=tmp_path / "secrets",
    )
    scheduler = Scheduler(services, settings, 60, webhook)
    try:
        scheduler.tick(dispatch_in_background=True)
        assert first_arrived.wait(10)
        with services.engine.connect() as connection:
            ended = connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                )
            ).all()
        assert ended == [(True,)]  # the leader's lock session
        go_on.set()
        assert scheduler._dispatcher is not None
        scheduler._dispatcher.join(15)
        assert not scheduler._dispatcher.is_alive()
    finally:
        go_on.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        if scheduler.leadership is not None:
            scheduler.leadership.release()
        services.engine.dispose()
    assert len(sent) == 1  # the event in flight; none after the lock was gone


def test_failed_is_sent_when_a_service_becomes_failed_not_on_each_retry(
    env: Env, receiver: Receiver
) -> None:
    # A target that stays broken is retried every back-off period (at most 5 min): each retry
    # used to send "failed" again, up to ~288 pages a day per service.
    target = env.tmp / "tls"
    target.mkdir()
    (target / "server.pem").write_text("someone else's\n")  # not certctl's: refused
    env.put(service_doc("web", targets=[{"directory": str(target)}]))
    webhook = Webhook(receiver.url, SECRET, timeout_s=5)

    def retry(scheduler: Scheduler, times: int) -> None:
        for _ in range(times):
            row = env.row("web")
            assert row.next_attempt_at is not None
            env.at(row.next_attempt_at)
            assert scheduler.tick() == 1

    def received() -> list[tuple[str, str]]:
        bodies = [json.loads(r.body) for r in receiver.delivered()]
        return [(b["event"], b.get("reason", "")) for b in bodies]

    scheduler = Scheduler(env.services, env.settings, 60, webhook, clock=lambda: env.now)
    assert scheduler.tick() == 1
    retry(scheduler, 5)
    unmanaged = f"dir:{target}: {target} exists and is not managed by certctl"
    assert [e for e, _ in received()] == ["issued", "failed"]
    assert received()[1][1].startswith(unmanaged)
    assert env.row("web").attempts == 6  # retried all the same

    # A restart (another scheduler, as another replica would be) does not send it again:
    # what was sent is in the stored status.
    retry(Scheduler(env.services, env.settings, 60, webhook, clock=lambda: env.now), 2)
    assert len(received()) == 2

    # Another reason is another failure: told once.
    shutil.rmtree(target)
    target.symlink_to(env.tmp)
    retry(scheduler, 3)
    assert len(received()) == 3
    assert "is a symlink certctl did not make" in received()[2][1]

    # Recovered, then failing again (as at first): told again.
    target.unlink()
    retry(scheduler, 1)
    assert env.row("web").conditions["Ready"]["status"] is True
    assert env.row("web").next_attempt_at is None
    assert target.is_symlink()  # delivered
    target.unlink()
    target.mkdir()
    (target / "server.pem").write_text("someone else's again\n")
    service_specs.request_renewal(env.services, env.admin, "web")
    assert scheduler.tick() == 1
    retry(scheduler, 3)
    assert [e for e, _ in received()] == ["issued", "failed", "failed", "renewed", "failed"]
    assert received()[4][1].startswith(unmanaged)
    # Every attempt failed and was recorded; only the transitions were sent.
    assert [e.event for e in env.events("web")].count("failed") == 3


def _dribbling_receiver(answer: bytes, piece: bytes, every_s: float, for_s: float) -> Any:
    """A receiver that sends ``answer``, then ``piece`` every ``every_s`` for ``for_s``."""
    import socket
    import time

    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            try:
                conn.sendall(answer)
                until = time.monotonic() + for_s
                while time.monotonic() < until:
                    conn.sendall(piece)
                    time.sleep(every_s)
            except OSError:
                pass  # the sender gave up: what a deadline should do

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize(
    ("answer", "piece", "delivered"),
    [
        # Each header byte comes within the timeout: httpx's timeout is per read.
        (b"HTTP/1.1 200 OK\r\n", b"X", False),
        # A 200 whose body never ends (chunks within the timeout): read into memory whole.
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"10000\r\n" + b"x" * 0x10000 + b"\r\n",
            True,
        ),
    ],
    ids=["dribbled-headers", "endless-body"],
)
def test_a_dribbling_receiver_costs_one_timeout_not_as_long_as_it_likes(
    env: Env, answer: bytes, piece: bytes, delivered: bool
) -> None:
    import time

    env.put(service_doc("web"))
    env.reconcile("web")
    server, thread = _dribbling_receiver(answer, piece, every_s=0.1, for_s=4)
    try:
        webhook = Webhook(f"http://127.0.0.1:{server.getsockname()[1]}/hook", SECRET, 0.5)
        started = time.monotonic()
        sent = dispatch_pending(env.services, webhook)
        took = time.monotonic() - started
    finally:
        server.close()
    assert took < 1.5, took  # the timeout, not the 4 s the receiver dribbles for
    (event,) = _outbox(env)
    if delivered:
        # The status is all certctl needs: the body is never read.
        assert sent == 1
        assert event.delivered_at is not None
    else:
        assert sent == 0
        assert event.attempts == 1
        assert event.last_error == "Timeout"
    thread.join(timeout=10)
