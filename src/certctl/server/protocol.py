"""The listener's protocols, where callers have always imported them from.

http_connection (one HTTP connection: httptools with certctl's limits and ``tls`` scope),
connection_gate (``http.max-connections``) and tls_listener (plain HTTP or TLS, the handshake
deadline and alerts).
"""

from __future__ import annotations

from certctl.server.connection_gate import ConnectionGate
from certctl.server.http_connection import CoalescedWrites, http_protocol
from certctl.server.tls_listener import HandshakeAlerts, listener_protocol

__all__ = [
    "CoalescedWrites",
    "ConnectionGate",
    "HandshakeAlerts",
    "http_protocol",
    "listener_protocol",
]
