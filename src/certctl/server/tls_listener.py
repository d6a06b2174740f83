"""A listener's connections before HTTP: plain HTTP or TLS, the handshake deadline and alerts.

Each accepted connection is admitted to the ``ConnectionGate``, told apart (TLS or a plain
HTTP request, answered with a 400) by its first byte, and given the loop's own SSL protocol
with what is left of ``http.handshake-timeout``; a failed handshake sends its alert and is
counted (``HandshakeFailures``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

from certctl.server.connection_gate import ConnectionGate
from certctl.server.handshake_failures import HandshakeFailures
from certctl.server.http_connection import plain_http_answer

__all__ = ["HandshakeAlerts", "listener_protocol"]


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
        answer = plain_http_answer()
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
