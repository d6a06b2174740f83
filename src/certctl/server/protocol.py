"""uvicorn's httptools protocol with what certctl adds: the ASGI ``tls`` scope and head limits.

Why httptools and not h11: h11 parses in pure Python and was a quarter of the CPU of every
request (``docs/performance.md``); llhttp (through httptools) does the same work in C.

What uvicorn does not bound, this class does:

- **Time to send a head.** uvicorn bounds idle keep-alive connections (``timeout_keep_alive``)
  but not the time a client takes to send a request head: a client trickling one header byte
  every few seconds would hold its connection (and a file descriptor) forever. Here each
  complete request line and header block must arrive within ``header_timeout_s`` of the
  connection opening (after the TLS handshake) or of the head's first byte on a kept-alive
  connection; otherwise the connection is closed without a response.
- **Time to send a body, and to read a response.** uvicorn waits for the rest of a request body
  as long as bytes keep coming, and for a client to read a response as long as the connection
  is open: a client trickling its body, or never reading what it asked for, held a connection
  and a file descriptor forever. A body must arrive within ``body_timeout_s`` of the end of
  its head, and a response whose writes are paused (the client's TCP window is full) must
  start moving again within ``send_timeout_s``; otherwise the connection is dropped.
- **Malformed requests** get a problem+json ``400`` like every other error, not uvicorn's
  plain-text one, with a ``Date`` (RFC 9110 6.6.1). Behind pipelined requests, the ``400``
  (or ``431``) waits for their responses: uvicorn writes it at once and closes, so a client
  that pipelined a good request and then a bad one got the ``400`` as the answer to the good
  one, whose response was lost although it had run (a role created, a certificate issued).
- **Transfer codings other than chunked** (``gzip, chunked``) get a ``501`` (RFC 9112 6.1),
  refused as a malformed head is: llhttp undoes only chunked and passed the rest on as if it
  were the body.
- **Size of a head.** llhttp has no limit of its own (httptools buffers a header value until
  it is complete), so bytes received while a head is open are counted and a head over
  ``max_head_bytes`` gets ``431`` and a closed connection.

The ``tls`` extension (client certificate of a mutual-TLS connection) is computed once per
connection, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from certctl.server.handshake_failures import HandshakeFailures

__all__ = [
    "CoalescedWrites",
    "ConnectionGate",
    "HandshakeAlerts",
    "http_protocol",
    "listener_protocol",
]

log = logging.getLogger("certctl.server")

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"%scontent-type: application/problem+json\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"%scontent-type: application/problem+json\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


_NOT_IMPLEMENTED = (
    b"HTTP/1.1 501 Not Implemented\r\n"
    b"%scontent-type: application/problem+json\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


class _UnknownTransferCoding(Exception):
    """Raised in llhttp's headers-complete callback: the parser stops as on a bad head."""


def _unknown_transfer_coding(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether ``Transfer-Encoding`` names a coding other than chunked, ahead of a final chunked.

    With chunked not last, llhttp itself refuses the request (400: its length is unknown,
    RFC 9112 6.3). With it last, llhttp undoes chunked and passes on a body still in the
    other coding (gzip …), which the app read as if it were not.
    """
    codings = [
        coding.strip().lower()
        for name, value in headers
        if name == b"transfer-encoding"
        for coding in value.split(b",")
    ]
    codings = [coding for coding in codings if coding]
    return codings[-1:] == [b"chunked"] and any(c != b"chunked" for c in codings[:-1])


class CoalescedWrites:
    """A response's head held until its body is written, so both leave in one TLS record.

    uvicorn writes the status line and headers, then the body, as two ``transport.write``
    calls: two TLS records and two ``send`` system calls per response, where one does
    (``/healthz`` costs ~10 % less server CPU this way). A write with nothing after it in the
    same loop iteration (a head without body, the last chunk of a stream) goes out on the
    next iteration, or at once when the cycle closes the transport; order never changes.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        """Hold ``data`` if nothing is held, else write what is held and ``data`` as one."""
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        """Write what is held, then close the transport."""
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, abort …: the transport's own.
        return getattr(self._transport, name)


def http_protocol(
    header_timeout_s: float,
    max_head_bytes: int,
    body_timeout_s: float = 60.0,
    send_timeout_s: float = 60.0,
) -> type:
    """The listener's protocol class (pass as ``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    # The app's problem type and title for each status (DESIGN §4): one wording, not two.
    from certctl.api.problems import problem_json
    from certctl.server.tls import tls_info

    body = problem_json(431, f"request line and headers over {max_head_bytes} bytes")
    too_large = (_TOO_LARGE, len(body), body)
    bad_body = problem_json(
        400, "malformed HTTP request (request line, a header or the body framing)"
    )
    bad_request = (_BAD_REQUEST, len(bad_body), bad_body)
    coding_body = problem_json(
        501,
        "transfer coding not supported: send the body with Transfer-Encoding: chunked alone, "
        "or with a Content-Length",
    )
    not_implemented = (_NOT_IMPLEMENTED, len(coding_body), coding_body)

    base: Any = HttpToolsProtocol

    class CertctlProtocol(base):  # type: ignore[misc]
        """httptools protocol + ``tls`` scope extension + request-head deadline and size."""

        _head_deadline: asyncio.TimerHandle | None = None
        _in_head = True  # between two requests or inside a head (not in a body)
        _head_bytes = 0
        # A refusal (400/431) waiting for the responses to the requests pipelined before it.
        _refusal: tuple[bytes, int, bytes] | None = None
        _body_deadline: asyncio.TimerHandle | None = None
        _send_deadline: asyncio.TimerHandle | None = None
        _running: Any = None  # the request whose application task was started last
        _unknown_coding = False  # Transfer-Encoding named a coding besides chunked (501)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.context.verify_mode != ssl.CERT_NONE:
                # Client certificates are possible: read the peer's on the first request,
                # not in the handshake path (a connection may close without one).
                inner: Any = getattr(self, "app")  # noqa: B009  # the base is untyped
                info: list[dict[str, Any] | None] = []

                async def with_tls(scope: Any, receive: Any, send: Any) -> None:
                    if not info:
                        info.append(tls_info(ssl_object))
                    if info[0] is not None:
                        scope.setdefault("extensions", {})["tls"] = info[0]
                    await inner(scope, receive, send)

                self.app = with_tls
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refusal is not None:
                return  # the stream is already refused: nothing after the bad request counts
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head:
                if self._head_bytes > max_head_bytes:
                    self._refuse(too_large)
            else:
                # A body still incomplete after the read that ended its head (most arrive in
                # that read, and never arm a timer): it has body_timeout_s to arrive.
                self._arm_body_deadline()

        def _arm_body_deadline(self) -> None:
            if (
                self._body_deadline is None
                and self._refusal is None
                # Queued behind another request, reading is paused (uvicorn's pipelining):
                # the clock starts when its turn comes (on_response_complete), not before.
                and not self.pipeline
                and not self.transport.is_closing()
            ):
                self._body_deadline = self.loop.call_later(body_timeout_s, self._drop)

        def _cancel_body_deadline(self) -> None:
            if self._body_deadline is not None:
                self._body_deadline.cancel()
                self._body_deadline = None

        def send_400_response(self, msg: str) -> None:
            # llhttp refused the request (a Content-Length of "abc", a control byte in a
            # header): the problem+json every other error has, not uvicorn's text/plain.
            # Or on_headers_complete did, for a transfer coding it does not know: RFC 9112
            # 6.1 says 501 (what nginx answers too).
            self._refuse(not_implemented if self._unknown_coding else bad_request)

        def _refuse(self, answer: tuple[bytes, int, bytes]) -> None:
            """Answer ``answer`` and close, once the requests before this one are answered."""
            if self._refusal is not None or self.transport.is_closing():
                return
            pipeline = self.pipeline
            cycle = self.cycle
            if not self._in_head and pipeline and pipeline[0][0] is cycle:
                # The refused request's own body was bad while it waited its turn: it never runs.
                pipeline.popleft()
                waiting = True  # it waited behind a request that is still being answered
            else:
                # A bad head: ``cycle`` is the last request before it. A bad body of a request
                # already running: its own response, if any, is all there is before the 400.
                waiting = bool(pipeline) or (
                    self._in_head and cycle is not None and not cycle.response_complete
                )
            if not waiting:
                self._write_refusal(answer)
                return
            self._refusal = answer
            # Neither the refused head's deadline nor its body's may cut the earlier responses.
            self._disarm()
            self._cancel_body_deadline()
            self.flow.pause_reading()

        def _write_refusal(self, answer: tuple[bytes, int, bytes]) -> None:
            template, length, body = answer
            date = b"".join(
                name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
            )
            # Through the last cycle's writer, which may still hold the end of a response.
            cycle = self.cycle
            out = cycle.transport if cycle is not None else self.transport
            out.write(template % (date, length, body))
            out.close()

        def on_response_complete(self) -> None:
            last = not self.pipeline  # no request queued behind the one just answered
            super().on_response_complete()
            if last and self._refusal is not None and not self.transport.is_closing():
                self._write_refusal(self._refusal)
            elif not last and not self._in_head:
                self._arm_body_deadline()  # the request now started is still receiving its body

        def on_message_begin(self) -> None:
            if self._head_deadline is None:
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            if _unknown_transfer_coding(self.headers):
                # Refused as a bad head is, before its request exists: llhttp stops parsing
                # and uvicorn calls send_400_response, which answers 501 for this.
                self._unknown_coding = True
                raise _UnknownTransferCoding
            self._in_head = False
            self._head_bytes = 0
            self._disarm()
            super().on_headers_complete()
            cycle = getattr(self, "cycle", None)
            # Only a cycle uvicorn just made writes to the bare transport (an upgrade makes
            # none, and the previous request's cycle is already wrapped).
            if cycle is not None and cycle.transport is self.transport:
                cycle.transport = CoalescedWrites(cycle.transport, self.loop)

        def on_message_complete(self) -> None:
            self._in_head = True
            self._cancel_body_deadline()
            super().on_message_complete()

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_deadline is None:
                self._send_deadline = self.loop.call_later(send_timeout_s, self._drop)

        def resume_writing(self) -> None:
            if self._send_deadline is not None:
                self._send_deadline.cancel()
                self._send_deadline = None
            super().resume_writing()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            self._running = cycle
            super()._start_asgi_task(cycle, app)

        def connection_lost(self, exc: Exception | None) -> None:
            # uvicorn marks only its latest request (``cycle``) disconnected. Behind pipelined
            # ones, the request being answered is an earlier one: it wrote on into the closed
            # transport, which uvloop refuses with an exception (a traceback and a 500 logged
            # for every pipelined connection a client or a deadline ended).
            running = self._running
            if running is not None and not running.response_complete:
                running.disconnected = True
                running.message_event.set()
            self._disarm()
            for timer in (self._body_deadline, self._send_deadline):
                if timer is not None:
                    timer.cancel()
            self._body_deadline = self._send_deadline = None
            super().connection_lost(exc)

        def _drop(self) -> None:
            # abort, not close: close would wait to flush what a client that stopped reading
            # will never read. The app sees a disconnect (a 499 in the access log). Also when
            # the transport is already closing (Connection: close, HTTP/1.0, a refusal): that
            # close is the one waiting for the flush. A lost connection cancelled this timer.
            for timer in (self._body_deadline, self._send_deadline):
                if timer is not None:
                    timer.cancel()  # the other deadline, if armed: nothing left to time
            self._body_deadline = self._send_deadline = None
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0: the close is a reset, so the kernel frees at once the megabytes of
                # unsent response a non-reading client left queued (else an orphan socket keeps
                # them in FIN-WAIT-1 for minutes of zero-window probes).
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

        def _arm(self) -> None:
            self._disarm()
            self._head_deadline = self.loop.call_later(header_timeout_s, self._head_expired)

        def _disarm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_expired(self) -> None:
            self._head_deadline = None
            if self._in_head and not self.transport.is_closing():
                self.transport.close()

    return CertctlProtocol


class ConnectionGate:
    """The open connections of one process, at most ``limit`` (``http.max-connections``).

    Without a bound, a client opening thousands of idle connections used up the process's
    file descriptors (``RLIMIT_NOFILE``): accept() then failed for everyone, Prometheus
    included, and so did every file the server opens (SQLite, certificates), silently. Counted
    from accept, before the TLS handshake, since a descriptor is held from then on; beyond
    the limit a connection is closed at once, before any TLS work (a refusal costs microseconds,
    a handshake a millisecond of CPU), logged at most once a minute and counted in
    ``certctl_http_connections_refused_total{listener}``. One gate serves every listener of
    the process; a listener may be given ``headroom`` above the limit (the metrics listener,
    so that Prometheus still gets in while the main listener is full).
    """

    LOG_EVERY_S = 60.0

    def __init__(self, limit: int, refused: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.open = 0
        self._refused = refused
        self._unlogged = 0
        self._logged_at: float | None = None
        # Writes the count of refusals not logged yet once the minute is over, so a burst
        # that ends is still reported (not only when the next refusal comes, maybe never).
        self._summary: asyncio.TimerHandle | None = None

    def admit(self, listener: str, headroom: int = 0) -> bool:
        """Count one more open connection, or refuse it: False when ``limit`` are open."""
        if self.open < self.limit + headroom:
            self.open += 1
            return True
        if self._refused is not None:
            self._refused(listener)
        self._unlogged += 1
        now = time.monotonic()
        quiet = self._logged_at is None or now - self._logged_at >= self.LOG_EVERY_S
        if quiet and self._unlogged == 1:  # the first refusal of a burst
            log.warning(
                "refusing new connections: %d open, http.max-connections is %d "
                "(this line at most once a minute)",
                self.open,
                self.limit,
            )
            self._logged_at = now
            self._unlogged = 0
        elif quiet:
            self._log_summary()
        elif self._summary is None and self._logged_at is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next refusal logs
                self._summary = asyncio.get_running_loop().call_later(
                    self.LOG_EVERY_S - (now - self._logged_at), self._log_summary
                )
        return False

    def _log_summary(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if not self._unlogged or self._logged_at is None:
            return
        now = time.monotonic()
        log.warning(
            "refused %d new connections in the last %.0f s: %d open, http.max-connections is %d",
            self._unlogged,
            now - self._logged_at,
            self.open,
            self.limit,
        )
        self._logged_at = now
        self._unlogged = 0

    def release(self) -> None:
        """One counted connection closed."""
        self.open -= 1


def listener_protocol(
    protocol_class: Callable[..., asyncio.BaseProtocol],
    context: Callable[[], ssl.SSLContext] | None,
    handshake_timeout_s: float,
    gate: ConnectionGate | None = None,
    listener: str = "main",
    headroom: int = 0,
    on_plain_http: Callable[[bytes, str], None] | None = None,
    failures: HandshakeFailures | None = None,
) -> Callable[..., asyncio.BaseProtocol]:
    """A protocol factory (``uvicorn.Config(http=...)``): TLS with a deadline, a connection cap.

    ``context()`` is asked for the SSL context at each connection's first bytes: the server
    replaces it on reload and to rotate the session-ticket key (``ServerTLS``).

    uvicorn hands its SSL context to ``loop.create_server`` without ``ssl_handshake_timeout``,
    so a client that connected and sent nothing, or half a ClientHello, held its connection
    and a file descriptor for the loop's default 60 s before ``http.header-timeout`` (which
    starts at ``connection_made``, after the handshake) even began. Here the listener is
    plain TCP and each accepted connection gets the loop's own SSL protocol, as
    ``create_server(ssl=...)`` would build it, with ``handshake_timeout_s``. The protocol
    closes the transport itself when the handshake fails or times out, so no waiter is
    needed. ``handshake_timeout_s`` also bounds the TLS close: when certctl ends a connection
    it sends close_notify and waits for the client's, 30 s by the loop's default, so a client
    that ignored everything after its handshake held its socket ``header_timeout_s`` + 30 s.
    (A server need not wait for the peer's close_notify at all, RFC 8446 6.1; the wait also
    covers flushing what is still queued, which the send deadline bounds while it is paused.)

    The SSL protocol starts at the connection's first bytes, not at accept (``_FirstBytes``):
    a client that sent plain HTTP gets a 400 saying to use https:// instead of a closed
    connection, and what is left of the handshake deadline goes to the SSL protocol.
    ``on_plain_http(first_bytes, client_address)`` is called for each such request (the access
    log and the request count, which the app never sees it reach). ``failures`` is told how
    each TLS connection ended (a failed handshake is counted and logged there).

    With a ``gate``, each connection is admitted (``ConnectionGate``) when the loop calls
    ``connection_made`` on the outermost protocol, right after accept, and released by the
    ``connection_lost`` of the protocol that has the transport then (``_FirstBytes``, or the
    SSL protocol once TLS started): the loop calls the one whenever it called the other, which
    the HTTP protocol cannot rely on (a failed handshake never reaches it). uvicorn's own
    ``limit_concurrency`` is no substitute: it counts only connections past the handshake,
    per listener, acts only once a request head has arrived (an idle connection is never
    refused) and answers a plain-text 503.
    """
    if context is None:
        return protocol_class if gate is None else _gated(protocol_class, gate, listener, headroom)
    made: list[type] = []

    def make(**kwargs: Any) -> asyncio.BaseProtocol:
        app_protocol = protocol_class(**kwargs)
        loop = asyncio.get_running_loop()
        if not made:
            tls_class = _ssl_protocol_class(loop)
            if failures is not None:
                tls_class = _observed(tls_class, failures, listener)
            made.append(tls_class if gate is None else _releasing(tls_class, gate))
        tls_class = made[0]

        def start_tls(handshake_left_s: float, transport: Any) -> asyncio.BaseProtocol:
            tls = tls_class(
                loop,
                app_protocol,
                _ConnectionContext(context(), transport),
                None,
                server_side=True,
                ssl_handshake_timeout=handshake_left_s,
                ssl_shutdown_timeout=handshake_timeout_s,
            )
            if failures is not None:
                tls._certctl_transport = transport  # its peer, asked only if it fails
                _forget_transport_at_handshake(app_protocol, tls)
            return cast("asyncio.BaseProtocol", tls)

        return _FirstBytes(
            loop, start_tls, handshake_timeout_s, gate, listener, headroom, on_plain_http
        )

    return make


class HandshakeAlerts(ssl.SSLObject):
    """An ``SSLObject`` that sends the alert of a failed handshake before the connection ends.

    Set as a server context's ``sslobject_class`` (``ServerTLS``). When OpenSSL fails a
    handshake (no client certificate with ``tls.client-auth: required``, one from a CA not in
    ``tls.client-ca``) it writes the alert saying why into the outgoing memory BIO, then
    raises. The loop's SSL protocol (uvloop's, and asyncio's in Python 3.11) closes the
    transport on that exception without sending what the BIO still holds: the client got a
    bare end of stream (curl: "Empty reply from server", openssl: "unexpected eof while
    reading") instead of "alert certificate required" or "alert unknown ca". Here the
    pending bytes go to the TCP transport first, before the protocol closes it; a write of a
    few bytes to an idle socket is sent at once, so the close that follows does not lose it.

    The BIO and the transport come from ``_ConnectionContext.wrap_bio``; they are dropped
    once the handshake is over, so nothing outlives it.
    """

    _certctl_link: tuple[ssl.MemoryBIO, Any] | None = None

    def do_handshake(self) -> None:
        """``SSLObject.do_handshake``; on a failure, the pending alert goes out first."""
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # more bytes to come: the handshake goes on
        except ssl.SSLError:
            link, self._certctl_link = self._certctl_link, None
            if link is not None:
                outgoing, transport = link
                alert = outgoing.read()
                if alert and not transport.is_closing():
                    transport.write(alert)
            raise
        self._certctl_link = None


class _ConnectionContext:
    """One connection's handle on its listener's ``SSLContext``, as the SSL protocol takes it.

    The protocol asks it for the connection's ``SSLObject`` (``wrap_bio``); a
    ``HandshakeAlerts`` is told the BIO it writes into and the connection's TCP transport,
    to send a failed handshake's alert. Everything else is the context's own.
    """

    __slots__ = ("_context", "_transport")

    def __init__(self, context: ssl.SSLContext, transport: Any) -> None:
        self._context = context
        self._transport = transport

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        ssl_object = self._context.wrap_bio(
            incoming, outgoing, server_side, server_hostname, session
        )
        if isinstance(ssl_object, HandshakeAlerts):
            ssl_object._certctl_link = (outgoing, self._transport)
        self._transport = None  # one SSLObject per connection: no reference kept past it
        return ssl_object

    def __getattr__(self, name: str) -> Any:
        # verify_mode, get_ca_certs …: the context's own (``get_extra_info("sslcontext")``).
        return getattr(self._context, name)


def _plain_http_answer() -> bytes:
    """The 400 to a plain-HTTP request on a TLS listener (``_FirstBytes``)."""
    from email.utils import formatdate

    from certctl.api.problems import problem_json

    body = problem_json(
        400, "plain HTTP request sent to an HTTPS port: use https:// instead of http://"
    )
    date = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
    return _BAD_REQUEST % (date, len(body), body)


class _FirstBytes(asyncio.Protocol):
    """A new connection of a TLS listener until its first bytes arrive: TLS, or plain HTTP?

    A client that forgot the ``s`` of ``https://`` sent its request line into the TLS
    handshake, which failed, and the connection was closed without a word (curl: "Empty reply
    from server"). A TLS connection starts with a handshake record (0x16; SSL 2 with a byte
    over 0x7f), an HTTP request with its method, an ASCII letter: that one byte decides. Plain
    HTTP gets a 400 saying to use https:// (as nginx does), TLS gets the loop's SSL protocol,
    which takes the transport over with the bytes read so far. What that costs a TLS client
    is this object and one more call per connection, before its handshake.

    From accept to the first byte, this object keeps ``http.handshake-timeout`` (the SSL
    protocol is then given what is left of it) and the connection count: it admits the
    connection to the ``gate`` and releases it if the connection ends before TLS starts; once
    it has, the SSL protocol (``_releasing``) releases it.
    """

    __slots__ = (
        "_admitted",
        "_answered",
        "_deadline",
        "_gate",
        "_headroom",
        "_listener",
        "_loop",
        "_on_plain_http",
        "_opened",
        "_start_tls",
        "_timeout_s",
        "_transport",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        start_tls: Callable[[float, Any], asyncio.BaseProtocol],
        timeout_s: float,
        gate: ConnectionGate | None,
        listener: str,
        headroom: int,
        on_plain_http: Callable[[bytes, str], None] | None = None,
    ) -> None:
        self._loop = loop
        self._on_plain_http = on_plain_http
        self._start_tls = start_tls
        self._timeout_s = timeout_s
        self._gate = gate
        self._listener = listener
        self._headroom = headroom
        self._admitted = False
        self._answered = False
        self._opened = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self._gate
        if gate is not None:
            if not gate.admit(self._listener, self._headroom):
                transport.abort()  # type: ignore[attr-defined]  # closed at once, before TLS
                return
            self._admitted = True
        self._transport = transport
        self._opened = self._loop.time()
        self._deadline = self._loop.call_later(self._timeout_s, self._expired)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # the rest of a plain-HTTP request: read, and dropped
        transport = self._transport
        if data[:1].isalpha():
            self._answer_plain_http(transport, head_only=data.startswith(b"HEAD "))
            if self._on_plain_http is not None:
                peer = transport.get_extra_info("peername")
                self._on_plain_http(data, str(peer[0]) if peer else "-")
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        # The handshake deadline counts from accept, not from the first byte.
        left_s = max(self._timeout_s - (self._loop.time() - self._opened), 0.001)
        tls: Any = self._start_tls(left_s, transport)
        self._admitted = False  # the SSL protocol releases the connection from now on
        transport.set_protocol(tls)
        tls.connection_made(transport)
        view = memoryview(data)
        while view and not transport.is_closing():
            buffer = tls.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            tls.buffer_updated(size)
            view = view[size:]

    def _answer_plain_http(self, transport: Any, *, head_only: bool = False) -> None:
        self._answered = True
        answer = _plain_http_answer()
        if head_only:
            # RFC 9110 9.3.2: the answer to HEAD has the same header fields and no content (a
            # client would read the body as the start of the next answer).
            answer = answer[: answer.index(b"\r\n\r\n") + 4]
        transport.write(answer)
        # The request may still be arriving: closing with unread bytes would send a reset that
        # can destroy the answer before the client reads it. So only the sending side is shut,
        # and what comes is read and dropped until the client closes (eof_received) or the
        # handshake deadline, still running, ends the connection.
        transport.write_eof()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def _expired(self) -> None:
        self._deadline = None
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._transport = None
        if self._admitted and self._gate is not None:
            self._admitted = False
            self._gate.release()


def _releasing(base: Any, gate: ConnectionGate) -> type:
    """``base`` (a TLS protocol) that releases a connection ``_FirstBytes`` admitted to ``gate``."""

    class Releasing(base):  # type: ignore[misc]
        _certctl_admitted = True

        def connection_lost(self, exc: Exception | None) -> None:
            if self._certctl_admitted:
                self._certctl_admitted = False
                gate.release()
            super().connection_lost(exc)

    return Releasing


def _observed(base: Any, failures: HandshakeFailures, listener: str) -> type:
    """``base`` (a TLS protocol) that tells ``failures`` how its handshake failed.

    Only while its handshake is under way (``_certctl_transport`` set, cleared by
    :func:`_forget_transport_at_handshake`): an SSL error after it (a record that does not
    decrypt) is no failed handshake, and was counted and logged as one.
    """

    class Observed(base):  # type: ignore[misc]
        _certctl_transport: Any = None
        _certctl_app: Any = None

        def connection_lost(self, exc: Exception | None) -> None:
            transport, app = self._certctl_transport, self._certctl_app
            if exc is not None and transport is not None:
                peer = transport.get_extra_info("peername")
                failures.record(listener, exc, str(peer[0]) if peer else "-")
            if app is not None:  # the handshake never completed: its hook goes
                vars(app).pop("connection_made", None)
            self._certctl_transport = self._certctl_app = None
            super().connection_lost(exc)

    return Observed


def _forget_transport_at_handshake(app_protocol: Any, tls: Any) -> None:
    """Clear ``tls._certctl_transport`` when the handshake completes.

    The SSL protocol hands the application protocol its transport (``connection_made``)
    once the handshake is done, and only then; the Cython one has no other sign of it that
    Python can read. The class's own ``connection_made`` is put back then, or when the
    connection is lost first (no reference cycle left through the hook).
    """
    made = app_protocol.connection_made

    def handshake_done(app_transport: Any) -> None:
        tls._certctl_transport = tls._certctl_app = None
        del app_protocol.connection_made
        made(app_transport)

    tls._certctl_app = app_protocol

    app_protocol.connection_made = handshake_done


def _gated(base: Any, gate: ConnectionGate, listener: str, headroom: int) -> type:
    """``base`` (a TLS or an HTTP protocol) admitted by ``gate`` when the connection opens."""

    class Gated(base):  # type: ignore[misc]
        # A name of its own: asyncio's SSLProtocol is a Python class with many fields.
        _certctl_admitted = False

        def connection_made(self, transport: Any) -> None:
            if not gate.admit(listener, headroom):
                transport.abort()  # closed at once; the loop still calls connection_lost
                return
            self._certctl_admitted = True
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._certctl_admitted:
                return  # refused: nothing was started, nothing to stop
            self._certctl_admitted = False
            gate.release()
            super().connection_lost(exc)

    return Gated


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> type:
    # uvloop's transports take only uvloop's SSLProtocol (its Cython TLS, half the cost of
    # asyncio's per handshake); asyncio's own loops (tests) take asyncio's.
    try:
        import uvloop
    except ImportError:  # pragma: no cover  # a dependency of certctl
        pass
    else:
        if isinstance(loop, uvloop.Loop):
            import uvloop.loop

            # The Cython class is missing from uvloop's stubs.
            ssl_protocol: type = uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
            return ssl_protocol
    from asyncio import sslproto

    return sslproto.SSLProtocol
