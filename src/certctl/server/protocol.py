"""uvicorn's h11 protocol with certctl's limits: a deadline for each request head.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and the head's size
(``h11_max_incomplete_event_size``) but not the time a client takes to send a head: a client
trickling one header byte every few seconds would hold its connection (and a file descriptor)
forever. Here a connection must deliver each complete request line and header block within
``header_timeout_s`` of opening (after the TLS handshake) or of the head's first byte on a
kept-alive connection; otherwise it is closed without a response.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["http_protocol"]


def http_protocol(header_timeout_s: float) -> type:
    """The listener's protocol class: ASGI ``tls`` extension plus the request-head deadline."""
    import h11

    from certctl.server.tls import tls_scope_protocol

    base: Any = tls_scope_protocol()

    class CertctlProtocol(base):  # type: ignore[misc]
        """``tls_scope_protocol()`` plus a deadline for each request head."""

        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the head is complete (or the connection failed)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_deadline = self.loop.call_later(header_timeout_s, self._head_expired)

        def _disarm(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_expired(self) -> None:
            self._head_deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return CertctlProtocol
