"""Failed TLS handshakes: counted, and said in the log with what to do about them.

A client that fails the handshake never reaches the HTTP layer, so nothing of it showed: no
access-log line, no counter, no log line (the loop logs SSL errors only in debug mode). Its
user saw curl's "Empty reply from server" and the operator nothing at all, the usual way a
mutual-TLS rollout goes wrong (a client certificate from a CA ``tls.client-ca`` does not hold,
or one without the clientAuth usage) and a client not given ``ca.crt`` fails the same way
from the other side. nginx logs these at ``info``; here each kind is a WARNING at most once a
minute per listener (a scanner must not flood the log), with the number left out since the
line before, and every one is counted in ``certctl_tls_handshake_failures_total``.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable

__all__ = ["REASONS", "HandshakeFailures", "handshake_failure"]

log = logging.getLogger("certctl.server")

# The values of the counter's ``reason`` label: a fixed set, whatever OpenSSL says.
REASONS = (
    "client_certificate_missing",
    "client_certificate_rejected",
    "server_certificate_rejected",
    "protocol_mismatch",
    "timeout",
    "other",
)

# OpenSSL reasons of a client and server with no TLS version or cipher suite in common.
_PROTOCOL = frozenset(
    {
        "UNSUPPORTED_PROTOCOL",
        "VERSION_TOO_LOW",
        "WRONG_VERSION_NUMBER",
        "NO_PROTOCOLS_AVAILABLE",
        "NO_SHARED_CIPHER",
        "NO_SHARED_SIGNATURE_ALGORITHMS",
        "NO_SUITABLE_SIGNATURE_ALGORITHM",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "TLSV1_ALERT_INSUFFICIENT_SECURITY",
    }
)

# Alerts a client sends when it does not accept the server's certificate.
_CLIENT_REFUSED_OURS = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)

# What the usual verification failures of a client certificate mean in certctl's terms.
_CLIENT_HINTS = {
    "unable to get local issuer certificate": "its CA is not in tls.client-ca",
    "self-signed certificate": "a self-signed certificate that tls.client-ca does not hold",
    "self-signed certificate in certificate chain": "its root is not in tls.client-ca",
    "unsuitable certificate purpose": "it lacks the clientAuth extended key usage",
    "certificate has expired": "it expired",
    "certificate is not yet valid": "it is not valid yet (clock skew?)",
}


def handshake_failure(exc: BaseException | None) -> tuple[str, str] | None:
    """``(reason, what happened)`` for a TLS connection that ended this way, or None.

    None for a connection that closed cleanly or was reset or dropped by its client (not a
    handshake that failed: nothing for an operator to fix).
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or "not verified"
        hint = _CLIENT_HINTS.get(why)
        return (
            "client_certificate_rejected",
            f"client certificate refused: {why}" + (f" ({hint})" if hint else ""),
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return (
                "client_certificate_missing",
                "the client sent no certificate, and tls.client-auth is required",
            )
        if reason in _CLIENT_REFUSED_OURS:
            alert = reason.split("_ALERT_", 1)[-1].replace("_", " ").lower()
            return (
                "server_certificate_rejected",
                f"the client refused this server's certificate (alert: {alert}); give it the "
                "CA certificate (tls/ca.crt in the data directory, or the custom ca.crt) and "
                "make it connect by a name the certificate holds",
            )
        if reason in _PROTOCOL:
            return (
                "protocol_mismatch",
                f"no TLS version or cipher suite in common with the client ({reason}); see "
                "tls.min-version",
            )
        return "other", f"TLS error: {reason or exc}"
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc):
        # The loop's own deadline (listener_protocol's ssl_handshake_timeout).
        return "timeout", "the handshake did not finish within http.handshake-timeout"
    return None


class HandshakeFailures:
    """Counts failed handshakes (``counted(listener, reason)``) and logs them, throttled.

    One per process, shared by its listeners; used on the event loop only.
    """

    LOG_EVERY_S = 60.0

    def __init__(self, counted: Callable[[str, str], None] | None = None) -> None:
        self._counted = counted
        # (listener, reason) → [when its last line was logged, failures since, not logged]
        self._logged: dict[tuple[str, str], list[float]] = {}

    def record(self, listener: str, exc: BaseException | None, peer: str) -> None:
        """Count and maybe log how a TLS connection from ``peer`` ended (``exc``)."""
        found = handshake_failure(exc)
        if found is None:
            return
        reason, detail = found
        if self._counted is not None:
            self._counted(listener, reason)
        now = time.monotonic()
        last = self._logged.get((listener, reason))
        if last is not None and now - last[0] < self.LOG_EVERY_S:
            last[1] += 1
            return
        since = f"; {int(last[1])} more like it since the last such line" if last else ""
        log.warning(
            "TLS handshake from %s failed on the %s listener: %s%s "
            "(each kind at most once a minute; all counted in "
            "certctl_tls_handshake_failures_total)",
            peer,
            listener,
            detail,
            since,
        )
        self._logged[(listener, reason)] = [now, 0]
