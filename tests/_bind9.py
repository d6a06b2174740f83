"""BIND 9 as an authoritative DNS server on 127.0.0.1, for dns-01: a real zone, real updates.

One ``named`` process in the test's own directory (config, zone, journal, pid), on a free
loopback port (UDP and TCP), serving one zone whose records a TSIG key may change by RFC 2136
updates: what an ACME client's ``rfc2136`` DNS provider (lego, certbot-dns-rfc2136,
cert-manager) does, and what the tests do through dnspython. certctl is pointed at it by
``acme.dns-resolvers``; it answers authoritatively, no recursion.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests._tools import free_port, require, stop

__all__ = ["Bind9", "running_bind9"]

TSIG_NAME = "certctl-test."
TSIG_ALGORITHM = "hmac-sha256"
START_TIMEOUT_S = 20.0


@dataclass
class Bind9:
    """A running named: its port, zone, and the TSIG key allowed to update the zone."""

    port: int
    zone: str
    tsig_secret: str  # base64, as named.conf and the clients' settings take it
    directory: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _update(self, change: object) -> None:
        import dns.query
        import dns.rcode

        answer = dns.query.tcp(change, "127.0.0.1", port=self.port, timeout=5)  # type: ignore[arg-type]
        assert answer.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(answer.rcode())

    def _new_update(self) -> object:
        import dns.tsigkeyring
        import dns.update

        keyring = dns.tsigkeyring.from_text({TSIG_NAME: (TSIG_ALGORITHM, self.tsig_secret)})
        return dns.update.UpdateMessage(self.zone, keyring=keyring, keyalgorithm=TSIG_ALGORITHM)

    def set_txt(self, name: str, *values: str) -> None:
        """Make ``values`` the TXT records of ``name`` (fully qualified, no final dot)."""
        change = self._new_update()
        change.replace(f"{name}.", 60, "TXT", *(f'"{v}"' for v in values))  # type: ignore[attr-defined]
        self._update(change)

    def set_cname(self, name: str, target: str) -> None:
        """Make ``name`` a CNAME to ``target`` (both fully qualified, no final dot)."""
        change = self._new_update()
        change.replace(f"{name}.", 60, "CNAME", f"{target}.")  # type: ignore[attr-defined]
        self._update(change)

    def delete(self, name: str) -> None:
        change = self._new_update()
        change.delete(f"{name}.")  # type: ignore[attr-defined]
        self._update(change)

    def txt(self, name: str) -> list[str]:
        """The TXT values of ``name`` as named answers them now (empty: none)."""
        import dns.message
        import dns.query
        import dns.rdatatype

        query = dns.message.make_query(f"{name}.", "TXT")
        answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=5)
        return [
            b"".join(rdata.strings).decode()
            for rrset in answer.answer
            if rrset.rdtype == dns.rdatatype.TXT
            for rdata in rrset
        ]


def _config(directory: Path, port: int, zone: str, secret: str, acme_only: bool) -> str:
    # acme_only: docs/acme.md's update-policy, the key limited to _acme-challenge.ZONE TXT.
    policy = (
        f"update-policy {{ grant {TSIG_NAME} name _acme-challenge.{zone}. TXT; }};"
        if acme_only
        else f'allow-update {{ key "{TSIG_NAME}"; }};'
    )
    return f"""
key "{TSIG_NAME}" {{ algorithm {TSIG_ALGORITHM}; secret "{secret}"; }};
controls {{ }};
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ 127.0.0.1; }};
    notify no;
    dnssec-validation no;
}};
zone "{zone}" {{
    type primary;
    file "{directory}/{zone}.zone";
    {policy}
}};
"""


def _zone(zone: str) -> str:
    return f"""$TTL 60
@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60
@ IN NS ns.{zone}.
ns IN A 127.0.0.1
"""


def _answers(port: int, zone: str) -> bool:
    """Whether named answers the zone's SOA over UDP and TCP on ``port`` (1 s each at most)."""
    import dns.exception
    import dns.message
    import dns.query

    query = dns.message.make_query(f"{zone}.", "SOA")
    try:
        # Not listening yet: refused at once over TCP, where a UDP query waits its timeout.
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return all(
            bool(send(query, "127.0.0.1", port=port, timeout=1).answer)
            for send in (dns.query.udp, dns.query.tcp)
        )
    except (dns.exception.DNSException, OSError):
        return False


@contextlib.contextmanager
def running_bind9(
    directory: Path, zone: str = "test.example", *, acme_only: bool = False
) -> Iterator[Bind9]:
    """named serving ``zone`` from ``directory`` until the block ends (stopped by its PID).

    ``acme_only``: the TSIG key may change the TXT records of ``_acme-challenge.ZONE`` alone
    (docs/acme.md's ``update-policy``), not any record of the zone.
    """
    named = require("named")
    directory.mkdir(parents=True, exist_ok=True)
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    (directory / f"{zone}.zone").write_text(_zone(zone))
    conf = directory / "named.conf"
    last = ""
    # The port is free when probed; another process may take it (its TCP or its UDP side)
    # before named binds it: a start that fails so is tried again on another port.
    for _attempt in range(3):
        port = free_port()
        conf.write_text(_config(directory, port, zone, secret, acme_only))
        log = directory / "named.log"
        with log.open("w") as out:
            # -g: in the foreground, logging to stderr; -c: this config, nothing of /etc.
            proc = subprocess.Popen(
                [named, "-g", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        server = Bind9(port, zone, secret, directory)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            # Ready when it answers: its log says "running as: named …" before it loaded the
            # zone or bound a socket, and an address in use makes it exit after that.
            ready = False
            while proc.poll() is None and time.monotonic() < deadline and not ready:
                ready = _answers(port, zone)
                if not ready:
                    time.sleep(0.05)
            if ready:
                try:
                    yield server
                finally:
                    stop(proc)
                return
            last = log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                stop(proc)
    raise AssertionError(f"named did not start:\n{last}")
