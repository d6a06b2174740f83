"""Webhook notifications from the outbox: JSON POSTs signed with HMAC-SHA256, retried.

Each POST carries v1 (``X-Certctl-Signature``) over the body, and v2
(``X-Certctl-Signature-V2``) over ``X-Certctl-Timestamp``, a dot and the body. While a key is
rotated, v2 lists one signature per key (``sha256=<current>, sha256=<previous>``, as Stripe
lists its ``v1=``), so receivers switch keys when they like; v1 stays the current key's alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import select

from certctl.errors import InvalidRequest, tls_verify_failure
from certctl.reloaded_file import ReloadedFromFile
from certctl.services.context import Services
from certctl.store.models import OutboxEvent

__all__ = [
    "SIGNATURE_HEADER",
    "SIGNATURE_V2_HEADER",
    "TIMESTAMP_HEADER",
    "Webhook",
    "dispatch_pending",
    "load_keys",
    "receiver_trust",
    "sign",
    "sign_timestamped",
]

log = logging.getLogger("certctl.notify")
# v1, over the body alone: kept because receivers were told to check it; a captured delivery
# stays valid under it forever, so new receivers check v2 and the timestamp.
SIGNATURE_HEADER = "X-Certctl-Signature"
# v2, over "<timestamp>.<body>" (as Stripe and Standard Webhooks sign): the receiver refuses
# a timestamp too far from its clock, so a captured delivery can be replayed only that long.
SIGNATURE_V2_HEADER = "X-Certctl-Signature-V2"
TIMESTAMP_HEADER = "X-Certctl-Timestamp"
_MAX_BACKOFF = timedelta(minutes=10)
_SECRET = "notifications.webhook.secret-file"
_PREVIOUS = "notifications.webhook.previous-secret-file"


def load_keys(secret_file: Path, previous_secret_file: Path | None = None) -> tuple[bytes, ...]:
    """The HMAC keys to sign with: ``secret_file``'s, then ``previous_secret_file``'s if any.

    Each file is one key, its whole content with surrounding whitespace removed: newlines
    inside are part of it (``openssl rand -base64 64`` wraps its output), as they were before
    rotation came in. A ``previous_secret_file`` that does not exist holds no key, so the
    setting can stay while no key is being retired.

    Raises:
        InvalidRequest: a file cannot be read or is empty (``secret_file`` also missing).
    """
    try:
        current = secret_file.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"{_SECRET}: cannot read {secret_file}") from exc
    previous = None
    if previous_secret_file is not None:
        try:
            previous = previous_secret_file.read_bytes()
        except FileNotFoundError:
            pass  # no key being retired
        except OSError as exc:
            raise InvalidRequest(f"{_PREVIOUS}: cannot read {previous_secret_file}") from exc
    return _parse_keys(current, previous_secret_file, previous)


def _parse_keys(
    current: bytes, previous_secret_file: Path | None, previous: bytes | None
) -> tuple[bytes, ...]:
    # Messages never quote the content: it is key material.
    key = current.strip()
    if not key:
        raise InvalidRequest("notifications.webhook needs a non-empty secret-file")
    if previous is None:
        return (key,)
    old = previous.strip()
    if not old:
        # Refused rather than read as "none": a file emptied by hand or caught half-written
        # would drop the old key while receivers may still hold only that one.
        raise InvalidRequest(
            f"{_PREVIOUS} {previous_secret_file} is empty: delete it when no key is being retired"
        )
    return (key,) if old == key else (key, old)


def receiver_trust(ca_file: Path) -> ssl.SSLContext:
    """A client context trusting exactly the CAs in ``ca_file`` (PEM), for the receiver.

    Raises:
        InvalidRequest: the file cannot be read or holds no PEM certificate.
    """
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError:  # before OSError, its base class
        raise InvalidRequest(
            f"notifications.webhook.ca-file {ca_file}: no PEM certificate in it"
        ) from None
    except OSError as exc:
        raise InvalidRequest(f"notifications.webhook.ca-file {ca_file}: {exc.strerror}") from None


class _Keys:
    """``secret-file`` and ``previous-secret-file``, read again at each pass.

    So a rotation's steps apply without a restart, on every replica: none left behind can
    lead and sign with the old key alone. A file that cannot be used (empty) keeps the keys
    read so far, with one warning per content; one that cannot be read keeps them silently,
    as ``ca-file`` does. A ``previous-secret-file`` removed means no key is being retired.
    """

    def __init__(
        self, secret_file: Path, previous_secret_file: Path | None, keys: tuple[bytes, ...]
    ) -> None:
        self._secret_file = secret_file
        self._previous_secret_file = previous_secret_file
        self._lock = threading.Lock()
        # Both contents, read at the first pass; logged only if the keys differ.
        self._seen: tuple[bytes, bytes | None] | None = None
        self._keys = keys

    def current(self) -> tuple[bytes, ...]:
        try:
            content = self._secret_file.read_bytes()
            previous = None
            if self._previous_secret_file is not None:
                try:
                    previous = self._previous_secret_file.read_bytes()
                except FileNotFoundError:
                    pass  # removed (rotation's last step): no key being retired
        except OSError:
            return self._keys
        with self._lock:
            seen, self._seen = self._seen, (content, previous)
            if seen == self._seen:
                return self._keys
            try:
                keys = _parse_keys(content, self._previous_secret_file, previous)
            except InvalidRequest as exc:
                log.warning("%s; the keys read before still sign", exc.detail)
                return self._keys
            if keys != self._keys:
                changed = [
                    str(path)
                    for path, differs in (
                        (self._secret_file, keys[0] != self._keys[0]),
                        (self._previous_secret_file, keys[1:] != self._keys[1:]),
                    )
                    if differs and path is not None
                ]
                self._keys = keys
                log.info(
                    "%s changed: webhook POSTs are now signed with %d key%s",
                    " and ".join(changed),
                    len(keys),
                    "s" if len(keys) > 1 else "",
                )
            return self._keys


@dataclass(frozen=True)
class Webhook:
    """Where events go, the shared secret that signs them, and how they get there.

    ``proxy``: an HTTP(S) proxy URL the POSTs go through; None: straight to ``url``. Never
    taken from the environment (``HTTPS_PROXY`` and the like): a proxy set there for other
    programs would see every signed event, and a variable is easier to slip in than a
    setting in the configuration file.

    ``ca_file``: PEM CAs an ``https://`` receiver's certificate must chain to, instead of the
    public CAs certctl ships with (certifi); for a receiver under a private CA.

    ``previous_secrets``: keys being retired; v2 is signed with each of them too, after
    ``secret``, so a receiver still holding one accepts the POST during a rotation.

    ``secret_file``, ``previous_secret_file``: where ``secret`` and ``previous_secrets`` were
    read (``load_keys``); read again at each pass, their keys replace them once they change.

    Raises:
        InvalidRequest: ``ca_file`` cannot be read or holds no PEM certificate.
    """

    # Out of repr: the URL's path or query may hold a token (Slack's /services/T…/B…/<secret>),
    # the proxy a user:password@. Log lines name ``receiver`` instead.
    url: str = field(repr=False)
    secret: bytes = field(repr=False)
    timeout_s: float = 10.0
    proxy: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    previous_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    secret_file: Path | None = None
    previous_secret_file: Path | None = None
    _trust: ReloadedFromFile[ssl.SSLContext] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _keys: _Keys | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ca_file is not None:
            ca_file = self.ca_file
            # Read again at each pass: a receiver's renewed CA applies without a restart.
            trust = ReloadedFromFile(
                ca_file,
                lambda: receiver_trust(ca_file),
                log=log,
                kept="the CAs it held before are still trusted",
                changed="webhook POSTs now trust it",
            )
            object.__setattr__(self, "_trust", trust)
        if self.secret_file is not None:
            keys = (self.secret, *self.previous_secrets)
            keyring = _Keys(self.secret_file, self.previous_secret_file, keys)
            object.__setattr__(self, "_keys", keyring)

    def keys(self) -> tuple[bytes, ...]:
        """The HMAC keys to sign with now, the current one first."""
        if self._keys is None:
            return (self.secret, *self.previous_secrets)
        return self._keys.current()

    @property
    def receiver(self) -> str:
        """``scheme://host:port`` of ``url``, all that log lines show of it."""
        parts = urlsplit(self.url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # not checked here (the configuration checks it at load)
            port = 0
        host = parts.hostname or ""
        return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx verifies the receiver with: ``ca-file``'s CAs, or its default bundle."""
        return True if self._trust is None else self._trust.current()


def _transport_error(exc: BaseException) -> str:
    """The error's class name; a certificate the receiver's CA does not verify, named so.

    Never the error's text: httpx may quote the URL, whose path can hold a token (Slack's
    ``/services/T…/B…/<secret>``).
    """
    return tls_verify_failure(exc) or type(exc).__name__


def sign(secret: bytes, body: bytes) -> str:
    """``sha256=<hex>`` HMAC over the exact body bytes (the receiver recomputes it)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def sign_timestamped(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` HMAC over ``<timestamp>.<body>``: the v2 signature."""
    return sign(secret, str(timestamp).encode() + b"." + body)


def _signatures_v2(keys: tuple[bytes, ...], timestamp: int, body: bytes) -> str:
    # A comma-separated list (RFC 9110 5.6.1), the current key's first.
    return ", ".join(sign_timestamped(key, timestamp, body) for key in keys)


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
    the same ``X-Certctl-Delivery`` id.) Blocking: call it from a thread without an event
    loop of its own (the scheduler's).

    Returns:
        How many events were delivered.
    """
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
    if not pending:
        return 0  # no client (nor CA bundle loaded) every reconcile-interval for nothing
    # An event loop of this pass's own, closed without waiting for its resolver threads:
    # asyncio.run would wait for a getaddrinfo the deadline gave up on, as long as the
    # resolver takes. Such a thread ends when the resolver answers or gives up.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_send(services, webhook, pending, leading))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


if TYPE_CHECKING:  # httpx is imported where a request is made: it is slow to import
    import httpx


def _url_hidden_from_log(inner: httpx.AsyncBaseTransport, shown: str) -> httpx.AsyncBaseTransport:
    """``inner``, leaving each request's URL as ``shown`` once the answer's headers are in.

    httpx logs every request's whole URL at INFO right after its transport returns, and
    the URL's path or query may hold the receiver's token (Slack's ``/services/T…/B…/<secret>``):
    this way the line names the receiver alone, whatever level a logging configuration gives
    the ``httpx`` logger (certctl serve sets WARNING; another caller or the user may not).
    """
    import httpx

    class UrlHidden(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await inner.handle_async_request(request)
            # Sent already: the request is not used again but for httpx's log line (and its
            # cookie jar, which this client never sends from).
            request.url = httpx.URL(shown)
            return response

        async def aclose(self) -> None:
            await inner.aclose()

    return UrlHidden()


async def _send(
    services: Services,
    webhook: Webhook,
    pending: list[OutboxEvent],
    leading: Callable[[], bool] | None,
) -> int:
    import anyio
    import httpx

    delivered = 0
    keys = webhook.keys()  # once a pass, as the CAs: every event of it signed alike
    # trust_env off: no proxy, CA bundle or credentials from the environment, as kubeapi.
    transport = httpx.AsyncHTTPTransport(
        verify=webhook.verify(), trust_env=False, proxy=webhook.proxy
    )
    async with httpx.AsyncClient(
        timeout=webhook.timeout_s,
        trust_env=False,
        transport=_url_hidden_from_log(transport, webhook.receiver),
    ) as client:
        for index, event in enumerate(pending):
            if leading is not None and not leading():
                # Another replica leads now and sends what is left: stop, or both would.
                break
            body = json.dumps({"id": event.id, **event.payload}, sort_keys=True).encode()
            # This attempt's time: a retry is stamped (and signed) anew, same delivery id.
            timestamp = int(services.clock().timestamp())
            error: str | None = None
            unreachable = False
            try:
                # One deadline for the whole POST: the name lookup (getaddrinfo, in a
                # thread; given up on, not waited for), connecting, TLS, sending, and the
                # status line and headers however slowly they come. httpx's own timeout is
                # per step and per read: a receiver sending a byte every few seconds held
                # the sender (and every event after it) as long as it liked.
                with anyio.fail_after(webhook.timeout_s):
                    async with client.stream(
                        "POST",
                        webhook.url,
                        content=body,
                        headers={
                            "Content-Type": "application/json",
                            SIGNATURE_HEADER: sign(keys[0], body),
                            TIMESTAMP_HEADER: str(timestamp),
                            SIGNATURE_V2_HEADER: _signatures_v2(keys, timestamp, body),
                            "X-Certctl-Event": event.event,
                            "X-Certctl-Delivery": str(event.id),
                        },
                    ) as response:
                        # The status is the answer; the body is never read (a receiver could
                        # send one without end, into memory).
                        if not 200 <= response.status_code < 300:
                            error = f"HTTP {response.status_code}"
            except TimeoutError:
                error, unreachable = "Timeout", True
            except httpx.HTTPError as exc:
                error, unreachable = _transport_error(exc), True
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
                        "webhook %s for %s to %s failed (%s); retry %d",
                        event.event,
                        event.service,
                        webhook.receiver,
                        error,
                        row.attempts,
                    )
            if unreachable:
                # Down or hanging: the rest would each wait a full timeout too. They stay
                # due (no attempt counted) and go first on the next pass.
                if index + 1 < len(pending):
                    log.warning(
                        "webhook receiver %s unreachable; %d more events wait for the next pass",
                        webhook.receiver,
                        len(pending) - index - 1,
                    )
                break
    return delivered
