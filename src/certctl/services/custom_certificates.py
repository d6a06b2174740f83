"""Custom certificates (``tls.certificate.secretName``): read, checked, watched for changes."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certctl.errors import InvalidRequest, PasswordRequired
from certctl.pki import (
    CertificateAuthority,
    Material,
    SubjectAltNames,
    asserts_ca,
    certs_to_pem,
    is_self_signed,
    issuer_chain,
    key_to_pem,
    keys_match,
    load_material,
)
from certctl.services.service_certificates import Desired, extended_key_usages
from certctl.services.service_rows import custom_secret_name
from certctl.services.service_settings import ServiceSettings
from certctl.services.tls_spec import TLSServiceSpec
from certctl.store.models import ManagedService

__all__ = ["SecretSeen", "custom_material", "custom_secret_unchanged", "read_custom_secret"]


_MAX_SECRET_FILE_BYTES = 1 << 20


def _read_secret(settings: ServiceSettings, secret: str) -> dict[str, bytes]:
    """``<secrets-dir>/<secret>/``, else the Kubernetes Secret ``secret`` (server with a cluster).

    The directory first, as before Secrets were read: a server that had one keeps serving it.
    """
    directory = settings.secrets_dir / secret
    if not directory.is_dir():
        if settings.secret_reader is None:
            raise InvalidRequest(
                f"secret {secret} not found (expected a directory {directory}; a Kubernetes "
                "Secret is read only by a server with a Kubernetes connection)"
            )
        return settings.secret_reader(secret)
    found = {}
    for name in ("tls.crt", "tls.key", "ca.crt", "ca.key"):
        data = _read_secret_file(secret, directory / name)
        if data is not None:
            found[name] = data
    return found


def _read_secret_file(secret: str, path: Path) -> bytes | None:
    """One file of a secret (links followed: a Kubernetes volume is links), None if missing.

    Read as _read_password reads: a FIFO there blocked the reconciler, and with it every
    service, for good; /dev/zero filled its memory. Only a regular file of at most 1 MiB.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidRequest(f"secret {secret}: cannot read {path.name}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidRequest(f"secret {secret}: {path.name} is not a regular file")
        chunks = []
        size = 0
        while size <= _MAX_SECRET_FILE_BYTES:
            chunk = os.read(fd, _MAX_SECRET_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > _MAX_SECRET_FILE_BYTES:
        raise InvalidRequest(f"secret {secret}: {path.name} is larger than 1 MiB")
    return b"".join(chunks)


def custom_material(
    settings: ServiceSettings, spec: TLSServiceSpec, now: datetime
) -> tuple[Desired | None, CertificateAuthority | None, tuple[x509.Certificate, ...], list[str]]:
    """Validate a custom certificate secret: a certificate to serve as is, or a CA to use.

    With a CA, also the certificates of its ``ca.crt`` outside its chain: more anchors for
    the targets' ``ca.crt`` (a trust bundle), never served after the leaf.
    """
    assert spec.tls.certificate is not None
    secret = spec.tls.certificate.secret_name
    files = _read_secret(settings, secret)
    warnings: list[str] = []
    if "tls.crt" in files and "tls.key" in files:
        certs = _secret_material(secret, "tls.crt", files["tls.crt"]).certificates
        key = _secret_material(secret, "tls.key", files["tls.key"]).private_key
        if not certs or key is None:
            raise InvalidRequest(f"secret {secret}: tls.crt or tls.key holds nothing usable")
        leaf = certs[0]
        if not keys_match(key, leaf):
            raise InvalidRequest(f"secret {secret}: tls.key does not match tls.crt")
        _check_server_certificate(secret, leaf)
        if now < leaf.not_valid_before_utc:
            raise InvalidRequest(
                f"secret {secret}: tls.crt is not valid before "
                f"{leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
            )
        if now > leaf.not_valid_after_utc:
            raise InvalidRequest(
                f"secret {secret}: tls.crt expired on {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
            )
        ca_pem = b""
        # An empty ca.crt is no ca.crt, as for ECK: cert-manager writes one for issuers
        # that do not know their CA, and `kubectl create secret generic` copies it as it is.
        if files.get("ca.crt", b"").strip():
            from certctl.pki import VerificationFailed, verify_certificate

            trust = _secret_material(secret, "ca.crt", files["ca.crt"]).certificates
            try:
                verify_certificate(
                    leaf, trust=trust, untrusted=certs[1:], now=now, hostname=None, purpose="server"
                )
            except VerificationFailed as exc:
                raise InvalidRequest(
                    f"secret {secret}: ca.crt does not verify tls.crt "
                    f"({exc.detail.removeprefix('verification failed: ')})"
                ) from None
            ca_pem = certs_to_pem(trust)
        elif is_self_signed(certs[-1]):
            ca_pem = certs_to_pem([certs[-1]])  # a self-signed tls.crt is its own trust anchor
        else:
            # Left out of the targets, not written empty: nginx, Java and Elasticsearch refuse
            # an empty CA file (ECK's issue 2243). Nor filled with the intermediates of
            # tls.crt: a client anchored there breaks when the issuer switches intermediates
            # (Let's Encrypt rotates them), and OpenSSL clients refuse a non-root anchor.
            warnings.append(
                f"secret {secret} has no ca.crt: targets get none, so clients must trust the "
                f"issuer of tls.crt ({certs[-1].issuer.rfc4514_string()}) some other way "
                "(fine for a public CA)"
            )
        missing = _uncovered_names(leaf, spec)
        if missing:
            warnings.append(f"secret {secret}: tls.crt does not cover {', '.join(missing)}")
        ekus = extended_key_usages(leaf)
        if spec.client_auth and ekus is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
            # Served all the same (the server side works), but the peers it connects to as a
            # client will refuse it: say so rather than leave it to a handshake error.
            warnings.append(
                f"secret {secret}: tls.crt lacks the clientAuth extended key usage that "
                "usages asks for: peers refuse it as a client certificate"
            )
        desired = Desired(
            certificate_pem=certs_to_pem([leaf]).decode(),
            chain_pem=certs_to_pem(certs[1:]).decode(),
            ca_pem=ca_pem.decode(),
            key_pem=key_to_pem(key),
        )
        return desired, None, (), warnings
    if "ca.crt" in files and "ca.key" in files:
        certs = _secret_material(secret, "ca.crt", files["ca.crt"]).certificates
        key = _secret_material(secret, "ca.key", files["ca.key"]).private_key
        if not certs or key is None:
            raise InvalidRequest(f"secret {secret}: ca.crt or ca.key holds nothing usable")
        # The CA is the certificate of the key, its chain the others that issue it in turn
        # (by name and signature, in any order, as `issuers import` takes a bundle); any
        # other certificate is one more anchor to trust. All taken for its chain in the
        # order given, a root kept for the clients (while moving from one root to another)
        # became "the root": targets got it alone as ca.crt, and the CA after the leaf.
        ca_cert = next((c for c in certs if keys_match(key, c)), None)
        if ca_cert is None:
            raise InvalidRequest(f"secret {secret}: ca.key does not match ca.crt")
        chain, anchors = issuer_chain(ca_cert, [c for c in certs if c is not ca_cert])
        try:
            ca = CertificateAuthority(ca_cert, key, chain)
        except InvalidRequest as exc:
            raise InvalidRequest(f"secret {secret}: ca.crt is not a CA ({exc.detail})") from None
        if now > ca.certificate.not_valid_after_utc:
            raise InvalidRequest(f"secret {secret}: ca.crt expired")
        if not is_self_signed(ca.root):
            # Served after the leaf (served_chain), but what targets get as ca.crt is no
            # anchor for nginx, Python and other OpenSSL clients without partial chains. The
            # chain is the CA's (issuer_chain), not ca.crt's order: another root listed last
            # is an anchor of its own, so "ca.crt ends with" would name the wrong one.
            warnings.append(
                f"secret {secret}: the CA's chain in ca.crt ends with "
                f"{ca.root.subject.rfc4514_string()}, which is not self-signed: targets get it "
                "as the CA's root in ca.crt, which OpenSSL clients refuse as a trust anchor; "
                f"add its issuer ({ca.root.issuer.rfc4514_string()}) and the rest of the chain "
                "up to the root to ca.crt (in any order)"
            )
        if ca.certificate.not_valid_after_utc - now <= settings.cert_rotate_before:
            warnings.append(
                f"secret {secret}: ca.crt expires on "
                f"{ca.certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ} and the certificate "
                "it issues ends with it: renew or replace the CA"
            )
        return None, ca, anchors, warnings
    raise InvalidRequest(f"secret {secret} holds neither tls.crt+tls.key nor ca.crt+ca.key")


def _secret_material(secret: str, name: str, data: bytes) -> Material:
    """One file of a custom secret, read; an error names the secret and the file.

    Raises:
        InvalidRequest: the file holds nothing readable, or an encrypted key.
    """
    try:
        return load_material(data)
    except PasswordRequired as exc:
        # By type: load_material's own advice (--password-file) names a CLI option: there is
        # none here, the reconciler needs the key in clear, as ECK does.
        opener = "pkcs12 -nodes" if exc.pkcs12 else "pkey"
        raise InvalidRequest(
            f"secret {secret}: {name} is encrypted; certctl reads only unencrypted keys "
            f"(openssl {opener} -in {name} -out {name}.clear)"
        ) from None
    except InvalidRequest as exc:
        raise InvalidRequest(f"secret {secret}: {name}: {exc.detail}") from None


def _check_server_certificate(secret: str, leaf: x509.Certificate) -> None:
    """Refuse a tls.crt that TLS clients would reject, or that hands the targets a CA key.

    Without a ca.crt nothing else checks it (verify_certificate checks the purpose only when
    there is a chain to verify), and a CA certificate served as is puts the CA's key in every
    target's tls.key. ``openssl req -x509`` marks its self-signed certificates CA:TRUE, so a
    self-signed one with subjectAltNames (made to be served, as in ECK's example) is accepted;
    an intermediate, or a root naming no host, is a CA.
    """
    from certctl.pki.purposes import eku_name

    try:
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names_hosts = True
    except x509.ExtensionNotFound:
        names_hosts = False
    if asserts_ca(leaf) and not (names_hosts and is_self_signed(leaf)):
        raise InvalidRequest(
            f"secret {secret}: tls.crt is a CA certificate, not a server certificate (to have "
            "certctl issue the service's certificate from this CA, name its files ca.crt and "
            "ca.key)"
        )
    ekus = extended_key_usages(leaf)
    if ekus is not None and ExtendedKeyUsageOID.SERVER_AUTH not in ekus:
        names = ", ".join(eku_name(oid) for oid in ekus) or "none"
        raise InvalidRequest(
            f"secret {secret}: tls.crt is not a server certificate (its extended key usage "
            f"lacks serverAuth; it has {names})"
        )


def _uncovered_names(leaf: x509.Certificate, spec: TLSServiceSpec) -> list[str]:
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = SubjectAltNames.from_extension(ext)
    except x509.ExtensionNotFound:
        have = SubjectAltNames()
    # As a TLS client matches: DNS names without regard to case, a wildcard SAN covering one
    # label, IP addresses as addresses (the spec's "0:0::1" is the certificate's "::1").
    # Compared as strings, a *.example.com certificate was reported as not covering
    # a.example.com.
    have_dns = {d.lower() for d in have.dns}
    have_ips = set(have.ip)
    missing = []
    for name in spec.dns_names():
        if name == spec.name:
            continue
        parent = name.partition(".")[2]
        if name not in have_dns and not (
            not name.startswith("*.") and parent and f"*.{parent}" in have_dns
        ):
            missing.append(name)
    missing += [a for a in spec.ip_addresses() if ipaddress.ip_address(a) not in have_ips]
    return missing


@dataclass(frozen=True)
class SecretSeen:
    """What a custom certificate's secret held when a scheduler pass read it.

    Kept by the scheduler for the pass that last reconciled the service: a secret whose
    bytes are the same, with no validity boundary passed since, would be reconciled to the
    same result. Reconciled anyway, 1,000 such services cost ~2 s of CPU every 10 s pass.
    """

    secret: str
    # SHA-256 of every file's name and bytes, links followed: a Kubernetes Secret volume
    # swapping its ``..data`` link changes no inode nor time of the names read, only this.
    digest: str
    # When time alone changes what the same bytes mean (not yet valid, expiring, expired,
    # a chain certificate or CA ending): each certificate's notBefore, notAfter and notAfter
    # less cert-rotate-before.
    boundaries: tuple[datetime, ...]
    at: datetime


def read_custom_secret(
    settings: ServiceSettings, row: ManagedService, now: datetime, previous: SecretSeen | None
) -> SecretSeen | None:
    """The custom certificate's secret of ``row`` as it is now.

    None when the service names none, or when the secret cannot be read: the reconcile then
    reads it again and reports why, as the service's ``Failed`` condition.
    """
    secret = custom_secret_name(row)
    if secret is None:
        return None
    try:
        files = _read_secret(settings, secret)
    except (InvalidRequest, OSError):
        return None
    digest = hashlib.sha256(secret.encode() + b"\0")
    for name in sorted(files):
        digest.update(b"%s\0%d\0" % (name.encode(), len(files[name])) + files[name])
    hexdigest = digest.hexdigest()
    if previous is not None and (previous.secret, previous.digest) == (secret, hexdigest):
        boundaries = previous.boundaries  # the same bytes: not parsed again
    else:
        boundaries = _validity_boundaries(settings, files)
    return SecretSeen(secret, hexdigest, boundaries, now)


def _validity_boundaries(
    settings: ServiceSettings, files: dict[str, bytes]
) -> tuple[datetime, ...]:
    times: set[datetime] = set()
    for name in ("tls.crt", "ca.crt"):
        try:
            certificates = load_material(files[name]).certificates if name in files else []
        except InvalidRequest:
            continue  # the reconcile fails on it, whatever the time
        for cert in certificates:
            end = cert.not_valid_after_utc
            times.update((cert.not_valid_before_utc, end, end - settings.cert_rotate_before))
    return tuple(sorted(times))


def custom_secret_unchanged(
    settings: ServiceSettings,
    row: ManagedService,
    previous: SecretSeen | None,
    current: SecretSeen | None,
) -> bool:
    """Whether ``current`` would reconcile as ``previous``, read for the last reconcile, did.

    The same secret, the same bytes, and no boundary at or between the two reads, where a
    check of ``now`` against it could answer otherwise.
    """
    if previous is None or current is None:
        return False
    if (previous.secret, previous.digest) != (current.secret, current.digest):
        return False
    times = list(current.boundaries)
    if row.not_after is not None:
        # The certificate served, whichever issued it: "expiring" is judged by it.
        times += [row.not_after, row.not_after - settings.cert_rotate_before]
    return not any(previous.at <= t <= current.at for t in times)
