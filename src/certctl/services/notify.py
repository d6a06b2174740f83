"""Webhook notifications from the outbox: JSON POSTs signed with HMAC-SHA256, retried."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from certctl.services.context import Services
from certctl.store.models import OutboxEvent

__all__ = ["SIGNATURE_HEADER", "Webhook", "dispatch_pending", "sign"]

log = logging.getLogger("certctl.notify")
SIGNATURE_HEADER = "X-Certctl-Signature"
_MAX_BACKOFF = timedelta(minutes=10)


@dataclass(frozen=True)
class Webhook:
    """Where events go, the shared secret that signs them, and how they get there.

    ``proxy``: an HTTP(S) proxy URL the POSTs go through; None: straight to ``url``. Never
    taken from the environment (``HTTPS_PROXY`` and the like): a proxy set there for other
    programs would see every signed event, and a variable is easier to slip in than a
    setting in the configuration file.
    """

    url: str
    secret: bytes
    timeout_s: float = 10.0
    proxy: str | None = None


class _Deadline:
    """One time limit for a whole POST: connecting, sending and the status line and headers.

    httpx's timeout is per read: a receiver sending a byte every few seconds held the sender
    (and every event after it) for as long as it liked. When the time is up, the connection's
    socket is shut down, which ends the read in progress (httpx raises); ``expired`` says why.
    """

    def __init__(self, timeout_s: float) -> None:
        import threading

        self.timeout_s = timeout_s
        self.expired = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._armed = False
        self._timer: threading.Timer | None = None

    def trace(self, name: str, info: dict[str, Any]) -> None:
        """Keep the socket of each new connection (httpcore's ``trace`` extension).

        After TLS too: wrapping the socket detaches the plain one, which then has no descriptor.
        """
        if name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with self._lock:
                    self._socket = sock

    def __enter__(self) -> None:
        import threading

        with self._lock:
            self.expired, self._armed = False, True
        self._timer = threading.Timer(self.timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            # Disarmed under the lock: a timer firing just now finds nothing to do, and never
            # shuts down the (pooled) connection the next POST uses.
            self._armed = False
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self.expired = True
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    self._socket.shutdown(socket.SHUT_RDWR)


def sign(secret: bytes, body: bytes) -> str:
    """``sha256=<hex>`` HMAC over the exact body bytes (the receiver recomputes it)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def dispatch_pending(
    services: Services,
    webhook: Webhook,
    *,
    limit: int = 100,
    leading: Callable[[], bool] | None = None,
) -> int:
    """Send due events, oldest first; each is marked delivered once a 2xx comes back.

    A receiver that cannot be reached (refused, timed out) ends the pass after one attempt,
    so a hanging receiver costs one timeout per pass, not one per event. ``leading`` is asked
    before each event: the pass stops once this replica no longer leads. (Delivery is still
    at least once: an event sent just before the leadership moved may be sent again, with
    the same ``X-Certctl-Delivery`` id.)

    Returns:
        How many events were delivered.
    """
    import httpx

    now = services.clock()
    with services.sessions() as session:
        pending = list(
            session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.delivered_at.is_(None), OutboxEvent.next_attempt_at <= now)
                .order_by(OutboxEvent.id)
                .limit(limit)
            )
        )
    delivered = 0
    deadline = _Deadline(webhook.timeout_s)
    # trust_env off: no proxy, CA bundle or credentials from the environment, as kubeapi.
    with httpx.Client(timeout=webhook.timeout_s, trust_env=False, proxy=webhook.proxy) as client:
        for index, event in enumerate(pending):
            if leading is not None and not leading():
                # Another replica leads now and sends what is left: stop, or both would.
                break
            body = json.dumps({"id": event.id, **event.payload}, sort_keys=True).encode()
            error: str | None = None
            try:
                with (
                    deadline,
                    client.stream(
                        "POST",
                        webhook.url,
                        content=body,
                        headers={
                            "Content-Type": "application/json",
                            SIGNATURE_HEADER: sign(webhook.secret, body),
                            "X-Certctl-Event": event.event,
                            "X-Certctl-Delivery": str(event.id),
                        },
                        extensions={"trace": deadline.trace},
                    ) as response,
                ):
                    # The status is the answer; the body is never read (a receiver could
                    # send one without end, into memory).
                    if not 200 <= response.status_code < 300:
                        error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = "Timeout" if deadline.expired else type(exc).__name__
                unreachable = True
            else:
                unreachable = False
            with services.sessions.begin() as session:
                row = session.get(OutboxEvent, event.id, with_for_update=True)
                if row is None or row.delivered_at is not None:
                    continue
                if error is None:
                    row.delivered_at = services.clock()
                    delivered += 1
                else:
                    row.attempts += 1
                    row.last_error = error
                    delay = timedelta(seconds=2) * (2 ** min(row.attempts - 1, 12))
                    row.next_attempt_at = services.clock() + min(delay, _MAX_BACKOFF)
                    log.warning(
                        "webhook %s for %s failed (%s); retry %d",
                        event.event,
                        event.service,
                        error,
                        row.attempts,
                    )
            if unreachable:
                # Down or hanging: the rest would each wait a full timeout too. They stay
                # due (no attempt counted) and go first on the next pass.
                if index + 1 < len(pending):
                    log.warning(
                        "webhook receiver unreachable; %d more events wait for the next pass",
                        len(pending) - index - 1,
                    )
                break
    return delivered
