"""One HTTP connection: uvicorn's httptools protocol with certctl's ``tls`` scope and limits.

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
import socket
import ssl
import struct
from typing import Any

__all__ = ["CoalescedWrites", "http_protocol", "plain_http_answer"]

# At a stop, how long an idle TLS connection's client has to answer certctl's close_notify
# before the connection is dropped (see CertctlProtocol.shutdown).
_CLOSE_NOTIFY_WAIT_S = 0.5

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
        _lost = False  # connection_lost was called

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

        def shutdown(self) -> None:
            # The server is stopping: uvicorn closes an idle kept-alive connection here. Over
            # TLS that close sends close_notify and then waits for the client's, up to the
            # TLS shutdown timeout (http.handshake-timeout, 10 s): a client idle between
            # requests (Prometheus between scrapes, a CLI's pooled connection) never sends
            # it, and each stop waited those 10 s. The close_notify is sent; the client's is
            # not needed (RFC 8446 6.1), so after a moment for a client that reads, drop it.
            idle = self.cycle is None or self.cycle.response_complete
            super().shutdown()
            if idle and self.transport.get_extra_info("ssl_object") is not None:
                self.loop.call_later(_CLOSE_NOTIFY_WAIT_S, self._abort_if_open)

        def _abort_if_open(self) -> None:
            if not self._lost:
                self.transport.abort()

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
            self._lost = True
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


def plain_http_answer() -> bytes:
    """The 400 to a plain-HTTP request on a TLS listener (``tls_listener``), as the others are."""
    from email.utils import formatdate

    from certctl.api.problems import problem_json

    body = problem_json(
        400, "plain HTTP request sent to an HTTPS port: use https:// instead of http://"
    )
    date = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
    return _BAD_REQUEST % (date, len(body), body)
