"""The server's TLS: self-signed bootstrap certificate, SSL context, hot reload, TLS scope.

Reload builds a new ``SSLContext`` around the new files and swaps it in: new handshakes get
the new certificate, connections already open keep theirs, nothing is dropped. Files are
compared by content hash on a short poll, which also catches Kubernetes Secret volumes
swapping their ``..data`` symlink (inode events alone miss that).

The context is also rebuilt around the same files every ``tls.ticket-key-rotation``: OpenSSL
makes a context's session-ticket key once and never changes it, and Python cannot set one.
A TLS 1.2 resumption has no key exchange of its own, so whoever reads that key (a memory
dump, a core file) can decrypt every TLS 1.2 session resumed under it for as long as the
process lives. A new context is a new key; a client holding an older ticket just makes a
full handshake. A changed ``tls.client-ca`` is applied the same way, from the next handshake.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from sqlalchemy.exc import DBAPIError

from certctl.errors import CertctlError, InvalidRequest, PasswordRequired
from certctl.files import OutputSet, in_memory_file
from certctl.metrics.registry import TLS_AUTO_RENEWED, TLS_NOT_AFTER, TLS_RELOADS
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    SubjectAltNames,
    certs_to_pem,
    common_name_dn,
    format_serial,
    generate_private_key,
    key_to_pem,
    keys_match,
    load_material,
)
from certctl.server.config import ServerConfig, split_host_port
from certctl.server.tls_listener import HandshakeAlerts
from certctl.services.issuance import SERVER_CN, served_chain
from certctl.store.db import PoolTimeout, storage_error

if TYPE_CHECKING:
    from certctl.pki import Material
    from certctl.services.context import Services

__all__ = [
    "SERVER_CN",
    "ServerTLS",
    "check_files",
    "client_certificate_extension",
    "ensure_self_signed",
    "listen_sans",
    "own_server_names",
    "self_signed_names",
    "serve_names_of",
    "server_sans",
    "tls_info",
    "warn_if_unprotected",
]

log = logging.getLogger("certctl.tls")
# Mozilla "intermediate": forward-secret AEAD suites only for TLS 1.2 (1.3 suites are fixed).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@functools.cache
def _host_name(hostname: str) -> str | None:
    """``hostname`` if it can be a DNS SAN; else None, said once per process."""
    if not hostname:
        return None
    try:
        SubjectAltNames.parse(dns=[hostname])
    except InvalidRequest as exc:
        # A host named build_agent_1 must not stop certctl from starting: it cannot be
        # reached by that name over verified TLS anyway.
        log.warning("host name left out of the server certificate: %s", exc.detail)
        return None
    return hostname


def server_sans(extra: list[str]) -> SubjectAltNames:
    """``certctl-server``, ``localhost``, ``127.0.0.1``, ``::1``, the host name and extras.

    The host name is left out (with a warning) when it is no valid DNS name.
    """
    dns = [SERVER_CN, "localhost"]
    hostname = _host_name(socket.gethostname())
    if hostname and hostname not in dns:
        dns.append(hostname)
    ips = ["127.0.0.1", "::1"]
    for item in extra:
        try:
            ipaddress.ip_address(item)
            ips.append(item)
        except ValueError:
            dns.append(item)
    return SubjectAltNames.parse(dns=dns, ip=ips)


def listen_sans(hosts: list[str]) -> list[str]:
    """The listen ``hosts`` a client can connect to by name or address, as SANs.

    A wildcard (``0.0.0.0``, ``::``) is no address to connect to, and a host that cannot be a
    SAN (a scoped IPv6 address) is left out rather than stop the start.
    """
    names = []
    for host in hosts:
        if host in ("0.0.0.0", "::"):
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            name = _host_name(host)
            if name is not None:
                names.append(name)
            continue
        try:
            SubjectAltNames.parse(ip=[host])
        except InvalidRequest:
            continue
        names.append(host)
    return names


def self_signed_names(config: ServerConfig) -> list[str]:
    """``tls.subject-alt-names`` and the hosts of ``listen`` and ``metrics.listen``.

    A client connects to the address certctl was told to listen on, and the start banner's
    curl line does: with ``listen: 10.0.0.5:8443`` and a certificate without 10.0.0.5, every
    verifying client (that curl line first) failed with a name mismatch.
    """
    hosts = [config.host_port[0]]
    if config.metrics.listen:
        hosts.append(split_host_port(config.metrics.listen, "metrics.listen")[0])
    return [*config.tls.subject_alt_names, *listen_sans(hosts)]


def own_server_names(config: ServerConfig) -> SubjectAltNames | None:
    """The names of the self-signed server certificate; None in the other ``tls.mode``s.

    Only a caller holding every permission is issued a server certificate for them under
    the internal CA (``Services.server_names``): clients trust it for certctl itself.
    """
    if config.tls.mode != "self-signed":
        return None
    return server_sans(self_signed_names(config))


def serve_names_of(services: Services) -> Callable[[tuple[x509.Certificate, ...]], None]:
    """``ServerTLS.on_serve`` for tls.mode custom: the served certificate's names guarded.

    Its SANs (its CN without any) become ``Services.server_names`` and the certificates
    ``Services.server_chain``: a server certificate for one of those names, under the root
    the served one chains to (a certctl issuer's, when the operator had certctl issue it),
    is then issued only to a caller holding every permission, as in self-signed mode. The
    chain is what tls.crt sends, completed from certctl's issuers (one store read per load,
    in a thread: ``ServerTLS.watch``), so a tls.crt sending its leaf alone guards its names
    under every issuer of its root; under a root certctl does not hold, nothing is refused.
    """

    def served(certs: tuple[x509.Certificate, ...]) -> None:
        leaf = certs[0]
        names = SubjectAltNames.served_by(leaf)
        try:
            chain = served_chain(services, certs)
        except (DBAPIError, PoolTimeout) as exc:
            fault = storage_error(exc)
            if fault is None:
                raise
            # The certificate serves either way; its names stay guarded under the CAs
            # tls.crt sends (and any issuer whose own path reaches them) until it changes.
            log.error(
                "cannot read certctl's issuers to complete tls.crt's chain: %s; its names "
                "are guarded only under the CAs it sends until it changes",
                fault.detail,
            )
            chain = certs
        # The chain first: a check seeing the new names sees the chain they belong to.
        services.server_chain = chain
        services.server_names = names

    return served


def ensure_self_signed(
    tls_dir: Path,
    ca: CertificateAuthority,
    *,
    extra_sans: list[str],
    validity: timedelta,
    rotate_before: timedelta,
    now: datetime,
) -> bool:
    """Write ``ca.crt``, ``tls.crt``, ``tls.key`` if absent, stale or for other names.

    Returns:
        True when a new certificate was written.
    """
    cert_path = tls_dir / "tls.crt"
    wanted = server_sans(extra_sans)
    ca_pem = certs_to_pem([ca.root])
    if cert_path.exists() and (tls_dir / "tls.key").exists():
        try:
            # The key too: a damaged or foreign tls.key (a partial restore) would fail every
            # start at the listener, though this file is ours to replace.
            current = _validate_pair(
                cert_path.read_bytes(), (tls_dir / "tls.key").read_bytes(), now
            )[0]
            sans = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            fresh = now < current.not_valid_after_utc - rotate_before
            same_names = SubjectAltNames.from_extension(sans) == wanted
            same_issuer = current.issuer == ca.certificate.subject
            if fresh and same_names and same_issuer and (tls_dir / "ca.crt").read_bytes() == ca_pem:
                return False
        except CertctlError as exc:
            log.warning(
                "server certificate in %s unusable (%s); issuing a new one", tls_dir, exc.detail
            )
        except (ValueError, IndexError, x509.ExtensionNotFound, OSError):
            log.warning("server certificate in %s unreadable; issuing a new one", tls_dir)
    key = generate_private_key()
    issued = ca.issue(
        key.public_key(),
        common_name_dn(SERVER_CN),
        profile=PROFILES["server"],
        validity=validity,
        now=now,
        sans=wanted,
    )
    out = OutputSet(force=True)
    out.add(tls_dir / "ca.crt", ca_pem)
    out.add(tls_dir / "tls.crt", certs_to_pem([issued.certificate, *ca.chain_below_root]))
    out.add(tls_dir / "tls.key", key_to_pem(key), secret=True)
    out.commit()
    log.info(
        "issued server certificate CN=%s valid until %s",
        SERVER_CN,
        issued.certificate.not_valid_after_utc.isoformat(),
    )
    return True


def check_files(cert_dir: Path | None, client_ca: Path | None, now: datetime) -> None:
    """What ``ServerTLS.load`` would refuse at start, checked before the data dir is made.

    Raises:
        InvalidRequest: ``cert_dir`` lacks a readable, matching, valid pair, or ``client_ca``
            holds no readable certificate.
    """
    if cert_dir is not None:
        try:
            cert_pem = (cert_dir / "tls.crt").read_bytes()
            key_pem = (cert_dir / "tls.key").read_bytes()
        except OSError as exc:
            raise InvalidRequest(
                f"tls.cert-dir {cert_dir}: cannot read {Path(exc.filename).name} ({exc.strerror})"
            ) from None
        try:
            _validate_pair(cert_pem, key_pem, now)
        except CertctlError as exc:
            raise InvalidRequest(f"tls.cert-dir {cert_dir}: {exc.detail}") from None
        warn_if_unprotected(cert_dir / "tls.key")  # here, once: not once per worker
    if client_ca is not None:
        try:
            ssl.create_default_context(cafile=str(client_ca))
        except ssl.SSLError:  # before OSError, its base class
            raise InvalidRequest(f"tls.client-ca {client_ca}: no PEM certificate in it") from None
        except OSError as exc:
            raise InvalidRequest(f"tls.client-ca {client_ca}: {exc.strerror}") from None


def warn_if_unprotected(key_path: Path) -> None:
    """Log one warning when ``key_path`` is readable or writable by every local user.

    A warning, not a refusal (as ssh's "UNPROTECTED PRIVATE KEY FILE" is): Kubernetes mounts
    Secret volumes 0644 unless told otherwise, and refusing would stop such a server.
    """
    try:
        mode = stat.S_IMODE(key_path.stat().st_mode)  # a Secret volume's symlink: its target
    except OSError:
        return  # reading it is what the caller reports on
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        log.warning(
            "UNPROTECTED PRIVATE KEY FILE: %s has mode %04o, open to every user of this "
            "machine; make it 0600 (0440 with a group of its own, e.g. a Kubernetes Secret "
            "volume with defaultMode: 0440 and an fsGroup)",
            key_path,
            mode,
        )


def _validate_pair(cert_pem: bytes, key_pem: bytes, now: datetime) -> tuple[x509.Certificate, ...]:
    """The certificates of ``tls.crt`` (leaf first) once the pair is usable now."""
    certs = _unencrypted(cert_pem, "tls.crt").certificates
    key = _unencrypted(key_pem, "tls.key").private_key
    if not certs:
        raise InvalidRequest("tls.crt holds no certificate")
    if key is None:
        raise InvalidRequest("tls.key holds no private key")
    if not keys_match(key, certs[0]):
        raise InvalidRequest("tls.key does not match tls.crt")
    if not certs[0].not_valid_before_utc <= now <= certs[0].not_valid_after_utc:
        raise InvalidRequest("tls.crt is expired or not yet valid")
    return tuple(certs)


def _unencrypted(data: bytes, name: str) -> Material:
    """``name`` (``tls.crt`` or ``tls.key`` of the cert dir), read; refused when encrypted.

    By type (PasswordRequired): the loader's advice names --password-file, which ``certctl
    serve`` does not take (a server starting unattended has nobody to ask), as the custom
    certificates of services are refused likewise.
    """
    try:
        return load_material(data)
    except PasswordRequired as exc:
        opener = "pkcs12 -nodes" if exc.pkcs12 else "pkey"
        raise InvalidRequest(
            f"{name} is encrypted; certctl serve reads only an unencrypted key "
            f"(openssl {opener} -in {name} -out {name}.clear)"
        ) from None


def _client_ca_text(path: Path, vet: Callable[[bytes], None] | None = None) -> str:
    """``tls.client-ca``'s certificates, read once: every context (a rotation too) gets these.

    The file is checked as OpenSSL reads a CA file. Its text (PEM certificates, and what
    OpenSSL skips around them: comments, other blocks) then becomes ``cadata``; bytes
    outside ASCII can only be in what is skipped, so they are dropped first. ``vet`` judges
    that text too (it raises InvalidRequest to refuse it).
    """
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    probe.load_verify_locations(cafile=str(path))
    text = path.read_bytes().decode("ascii", "ignore")
    again = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    again.load_verify_locations(cadata=text)
    if again.cert_store_stats()["x509"] != probe.cert_store_stats()["x509"]:
        raise InvalidRequest(f"tls.client-ca {path}: cannot read every certificate in it")
    if vet is not None:
        vet(text.encode())
    return text


@dataclass
class ServerTLS:
    """One listener's SSL context and the files it serves."""

    cert_dir: Path
    min_version: str = "1.2"
    client_auth: str = "none"
    client_ca: Path | None = None
    # As the other per-listener metrics name it (run.py, workers.py): "main".
    listener: str = "main"
    # certctl renews these files itself (tls.mode self-signed), or the operator does (custom).
    auto_renewed: bool = False
    ticket_key_rotation_s: float = 3600.0  # tls.ticket-key-rotation's default
    # Told each certificate (leaf first, then its chain) once it serves: at start and at
    # every reload (``serve_names_of``).
    on_serve: Callable[[tuple[x509.Certificate, ...]], None] | None = None
    # Judges tls.client-ca's text (PEM) at start and at each reload, raising InvalidRequest
    # to refuse it (client_mappings.client_ca_vet).
    vet_client_ca: Callable[[bytes], None] | None = None
    # The files now served, to rebuild the context around them (``rotate_ticket_key``).
    _served: tuple[bytes, bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._client_ca_pem: str | None = None
        self._client_ca_state = b""
        if self.client_auth != "none":
            if self.client_ca is None:
                raise InvalidRequest("tls.client-auth needs tls.client-ca")
            self._client_ca_pem = _client_ca_text(self.client_ca, self.vet_client_ca)
            self._client_ca_state = self._client_ca_digest()
        self._client_ca_refused = b""
        self._client_ca_pending = b""  # a bad content seen once, refused if seen again
        self.context = self._new_context()
        self._since = time.monotonic()
        # load() runs on the event loop (the poll) and in a thread (the self-signed renewal).
        self._lock = threading.Lock()
        self._digest = b""
        self._pending_bad = b""

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = (
            ssl.TLSVersion.TLSv1_3 if self.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        )
        context.set_ciphers(TLS12_CIPHERS)
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        context.set_alpn_protocols(["http/1.1"])
        # A failed handshake's alert reaches the client (the loop's SSL protocol drops it).
        context.sslobject_class = HandshakeAlerts
        if self._client_ca_pem is not None:
            context.load_verify_locations(cadata=self._client_ca_pem)
            context.verify_mode = (
                ssl.CERT_REQUIRED if self.client_auth == "required" else ssl.CERT_OPTIONAL
            )
        return context

    def _context_for(self, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
        """A new context serving these files (a new session-ticket key with it)."""
        context = self._new_context()
        # load_cert_chain wants paths: memory files, never a copy of the key on disk.
        with (
            in_memory_file(cert_pem, "certctl-tls-crt") as cert_file,
            in_memory_file(key_pem, "certctl-tls-key") as key_file,
        ):
            context.load_cert_chain(cert_file, key_file)
        return context

    def _serve(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Swap in a new context serving these files (hold ``_lock``)."""
        self.context = self._context_for(cert_pem, key_pem)
        self._served, self._since = (cert_pem, key_pem), time.monotonic()

    def current_context(self) -> ssl.SSLContext:
        """The context new connections get (it changes on reload and rotation)."""
        return self.context

    def rotate_ticket_key(self) -> bool:
        """Serve the same files from a new context once the current one is old enough.

        Returns:
            True when the context (and its session-ticket key) was replaced.
        """
        with self._lock:
            served = self._served
            if served is None or time.monotonic() - self._since < self.ticket_key_rotation_s:
                return False
            self._serve(*served)
        log.debug("TLS session-ticket key rotated (%s listener)", self.listener)
        return True

    def _client_ca_digest(self) -> bytes:
        try:
            return hashlib.sha256((self.client_ca or Path()).read_bytes()).digest()
        except OSError as exc:
            return f"unreadable {exc.errno}".encode()

    def check_client_ca(self) -> bool:
        """Trust a changed ``tls.client-ca`` from the next handshake; keep the old if it is bad.

        Before, the file was read at start only: a CA taken out of it (a compromised one)
        stayed trusted until a restart, without a word. Connections already open keep the
        verification they had.

        Returns:
            True when the new file now verifies client certificates.
        """
        if self.client_ca is None or self._client_ca_pem is None:
            return False
        state = self._client_ca_digest()
        if state in (self._client_ca_state, self._client_ca_refused):
            return False
        try:
            text = _client_ca_text(self.client_ca, self.vet_client_ca)
        except (CertctlError, ssl.SSLError, OSError) as exc:
            if state != self._client_ca_pending:
                # Caught mid-write (cp truncates, then writes): empty or cut short. Judge
                # it again on the next poll before an error line and an error count.
                self._client_ca_pending = state
                return False
            detail = exc.detail if isinstance(exc, CertctlError) else str(exc)
            self._client_ca_refused = state  # said once per bad content, not per poll
            log.error(
                "tls.client-ca %s changed but cannot be used (%s): the client CAs it held "
                "before stay trusted",
                self.client_ca,
                detail,
            )
            TLS_RELOADS.labels("error").inc()
            return False
        with self._lock:
            self._client_ca_pem = text
            if self._served is not None:
                self._serve(*self._served)
        self._client_ca_state = state
        TLS_RELOADS.labels("success").inc()
        log.info(
            "tls.client-ca %s reloaded: new connections are verified against it", self.client_ca
        )
        return True

    def _files(self) -> tuple[bytes, bytes]:
        return (self.cert_dir / "tls.crt").read_bytes(), (self.cert_dir / "tls.key").read_bytes()

    def load(self, now: datetime) -> bool:
        """(Re)load the certificate if the files changed; keep the old one if they are bad.

        Returns:
            True when a new certificate now serves.
        """
        try:
            cert_pem, key_pem = self._files()
        except OSError as exc:
            if not self._digest:
                raise InvalidRequest(f"{self.cert_dir}: cannot read tls.crt/tls.key") from exc
            name = Path(exc.filename).name if exc.filename else "tls.crt/tls.key"
            state = f"unreadable {name} {exc.errno}".encode()
            return self._refuse(state, f"cannot read {name} in {self.cert_dir} ({exc.strerror})")
        digest = hashlib.sha256(cert_pem + b"\0" + key_pem).digest()
        if digest == self._digest:
            return False
        try:
            served = _validate_pair(cert_pem, key_pem, now)
            leaf = served[0]
            # Built under the lock: check_client_ca (another thread in self-signed mode) may
            # swap the client CAs meanwhile, and a context built around the old ones and
            # swapped in after it would trust them again, the new file never applied.
            with self._lock:
                # A new context, swapped in only once it holds the whole pair: a
                # load_cert_chain that fails half-way (a chain certificate cut short, one
                # OpenSSL refuses) leaves the serving context as it was.
                self._serve(cert_pem, key_pem)
        except (CertctlError, ssl.SSLError, ValueError) as exc:
            detail = exc.detail if isinstance(exc, CertctlError) else str(exc)
            if not self._digest:
                raise InvalidRequest(f"{self.cert_dir}: {detail}") from exc
            return self._refuse(digest, detail)
        first = not self._digest
        self._digest = digest
        if self.on_serve is not None:
            self.on_serve(served)
        TLS_NOT_AFTER.labels(self.listener).set(leaf.not_valid_after_utc.timestamp())
        TLS_AUTO_RENEWED.labels(self.listener).set(1 if self.auto_renewed else 0)
        if not first:
            TLS_RELOADS.labels("success").inc()
            log.info(
                "TLS certificate reloaded: serial %s valid until %s",
                format_serial(leaf.serial_number),
                leaf.not_valid_after_utc.isoformat(),
            )
            # At start, check_files said it (once for all workers).
            warn_if_unprotected(self.cert_dir / "tls.key")
        return True

    def _refuse(self, state: bytes, detail: str) -> bool:
        """Keep the current certificate; log and count files in ``state`` once, not per poll."""
        if state == self._digest:
            return False  # already refused
        if state != self._pending_bad:
            # tls.crt and tls.key are often replaced by two renames (or removed, then written);
            # a poll between them sees a mismatched pair or a missing file. Judge the files
            # again on the next poll first.
            self._pending_bad = state
            return False
        log.error("TLS reload refused, still serving the previous certificate: %s", detail)
        TLS_RELOADS.labels("error").inc()
        self._digest = state
        return False

    async def watch(self, interval_s: float, clock: Any) -> None:
        """Poll the files forever, reloading on change."""
        while True:
            await asyncio.sleep(interval_s)
            # In a thread: on_serve reads the store (``serve_names_of``), which must not
            # stall the requests this loop serves.
            await asyncio.to_thread(self.load, clock())
            self.check_client_ca()


# --- ASGI TLS extension for uvicorn's h11 protocol -----------------------------------------


def _verified_cas(ssl_object: ssl.SSLObject) -> tuple[bytes, ...] | None:
    """The DER certificates above the peer's in the chain the handshake verified; None if unknown.

    ``SSLObject.get_verified_chain`` is public from Python 3.13 (DER bytes); 3.10 to 3.12 have
    it on the private ``_sslobj`` only (``_ssl.Certificate`` objects). Unknown for a resumed
    session too: OpenSSL keeps the peer's certificate in the session, not the chain.
    """
    import _ssl

    getter: Any = getattr(ssl_object, "get_verified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_verified_chain", None
    )
    if getter is None:
        return None
    try:
        chain = getter() or []
    except (ssl.SSLError, ValueError):
        return None
    if not chain:
        return None  # a resumed session
    der: Any = _ssl.ENCODING_DER
    return tuple(c if isinstance(c, bytes) else bytes(c.public_bytes(der)) for c in chain[1:])


def tls_info(ssl_object: ssl.SSLObject) -> dict[str, Any] | None:
    """The ASGI ``tls`` scope extension for a connection with a client certificate, or None."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return client_certificate_extension(der, _verified_cas(ssl_object))


def client_certificate_extension(der: bytes, cas: tuple[bytes, ...] | None) -> dict[str, Any]:
    """The ``tls`` extension for the verified client certificate ``der`` under ``cas``.

    ``cas``: the DER certificates above it in the chain the handshake verified, None when
    unknown (a resumed session).
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        cert = x509.load_der_x509_certificate(der)
        pem = cert.public_bytes(Encoding.PEM).decode()
        subject, issuer = cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
        serial, not_after = cert.serial_number, cert.not_valid_after_utc.timestamp()
    except (ValueError, x509.InvalidVersion) as exc:
        # OpenSSL verified it, but it is no DER X.509 v1-v3 certificate cryptography reads
        # (a tbsCertificate length in BER long form, version 4, a PrintableString holding
        # "_" or "@" ...): no name to map, so it authenticates nothing (a 401 naming why),
        # and the connection's other requests (an API key's) go on, not a 500 each.
        return {
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)],
            "client_cert_name": None,
            "client_cert_error": f"not a readable X.509 certificate ({str(exc)[:200]})",
            "tls_version": None,
            "cipher_suite": None,
            "server_cert": None,
        }
    return {
        "client_cert_chain": [pem],
        "client_cert_name": subject,
        # Not in the ASGI spec: what certctl needs to tell whether it revoked this one.
        "certctl.client_cert_issuer": issuer,
        "certctl.client_cert_serial": serial,
        # Checked per request: a kept-alive or resumed session outlives the handshake's check.
        "certctl.client_cert_not_after": not_after,
        # The CAs the handshake verified it under (DER, the leaf left out): a certctl issuer
        # among them that was revoked refuses it, whoever signed it with that CA's key.
        "certctl.client_cert_cas": cas,
        # When they are unknown (a resumed session): the certificate, to find its issuer.
        "certctl.client_cert_der": der,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
        "server_cert": None,
    }
