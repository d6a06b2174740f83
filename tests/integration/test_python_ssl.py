"""Python's ``ssl`` (OpenSSL underneath) as client and server with certctl certificates."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import KEY_TYPES, Pki

pytestmark = pytest.mark.integration

GREETING = b"hello over TLS\n"


class TlsServer:
    """A thread answering each TLS connection on 127.0.0.1 with :data:`GREETING`."""

    def __init__(self, cert_chain: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_chain, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(GREETING)
                except (ssl.SSLError, OSError) as exc:  # the client refused our certificate
                    self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def fetch(port: int, ca: Path, server_hostname: str) -> bytes:
    """Connect to 127.0.0.1:``port`` trusting ``ca``, checking ``server_hostname``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    context.load_verify_locations(ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(len(GREETING))


@pytest.fixture(scope="module")
def server_for(pki: Pki) -> Iterator[Callable[[str], TlsServer]]:
    """``server_for(key_type)``: a TLS server with a localhost leaf of that key type."""
    servers: dict[str, TlsServer] = {}

    def start(key_type: str) -> TlsServer:
        if key_type not in servers:
            leaf = pki.issue(
                pki.chain(key_type).inter,
                f"python-ssl-{key_type}",
                key_type=key_type,
                dns=["localhost"],
                ip=["127.0.0.1", "::1"],
            )
            servers[key_type] = TlsServer(leaf / "tls.crt", leaf / "tls.key")
        return servers[key_type]

    try:
        yield start
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1", "::1"])
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_client_verifies_server(
    pki: Pki, server_for: Callable[[str], TlsServer], key_type: str, server_hostname: str
) -> None:
    server = server_for(key_type)
    root = pki.chain(key_type).root / "ca.crt"
    assert fetch(server.port, root, server_hostname) == GREETING


@pytest.mark.parametrize("server_hostname", ["wrong.example.com", "127.0.0.2", "node-1"])
def test_client_refuses_a_name_not_in_the_sans(
    pki: Pki, server_for: Callable[[str], TlsServer], server_hostname: str
) -> None:
    server = server_for("ec-p256")
    root = pki.chain("ec-p256").root / "ca.crt"
    with pytest.raises(ssl.SSLCertVerificationError, match=r"(Hostname|IP address) mismatch"):
        fetch(server.port, root, server_hostname)


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_client_refuses_another_ca(
    server_for: Callable[[str], TlsServer], other_root: Path, key_type: str
) -> None:
    server = server_for(key_type)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        fetch(server.port, other_root / "ca.crt", "localhost")


def test_client_refuses_a_same_name_root(
    server_for: Callable[[str], TlsServer], impostor_root: Path
) -> None:
    server = server_for("ec-p256")
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch(server.port, impostor_root / "ca.crt", "localhost")
