"""``auth.client-cert-mappings`` checked against ``tls.client-ca`` and the stored roles.

At start (and, for ``tls.client-ca``, at each reload): a mapping pinned to a CA the file does
not hold, one without a pin while the file holds several CA hierarchies, a subject written
broadest first, a role that does not exist. Kept apart from ``server.run``, which only calls
these in order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cryptography import x509

from certctl.api.authentication import ClientCertMapping
from certctl.errors import InvalidRequest
from certctl.server.config import ServerConfig
from certctl.services import roles
from certctl.services.context import Services
from certctl.spelling import did_you_mean

# The server's logger, as before these checks moved here: log filters and tests name it.
log = logging.getLogger("certctl.server")


def warn_reversed_mappings(config: ServerConfig) -> None:
    """Warn of each mapping subject written broadest first (``O=…,CN=…``, as openssl prints)."""
    for mapping in config.auth.client_cert_mappings:
        if ClientCertMapping(mapping.subject, tuple(mapping.roles)).pattern.looks_reversed:
            log.warning(
                "auth.client-cert-mappings subject %s is written broadest first, as openssl "
                "prints names; certctl compares RFC 4514 order, most specific first (CN=…,O=…), "
                "so it matches only certificates encoded in the reverse order",
                mapping.subject,
            )


# Most existing roles a warning lists when none is close to the unknown name.
_ROLES_LISTED = 30


def warn_unknown_mapped_roles(config: ServerConfig, services: Services) -> None:
    """Warn of each ``auth.client-cert-mappings`` role that is no role, with close names.

    Not refused: a custom role may be created through the API after the start, and applies
    from the next request on. Unwarned, a typo (``r-opertor``) silently gave the mapped
    certificates nothing from that role, and the user saw 403s only.
    """
    mappings = config.auth.client_cert_mappings
    if not mappings:
        return
    existing = roles.role_ids(services)
    known = set(existing)
    for index, mapping in enumerate(mappings):
        for role in dict.fromkeys(mapping.roles):
            if role in known:
                continue
            hint = did_you_mean(role, existing)
            if hint is None:
                more = len(existing) - _ROLES_LISTED
                hint = "roles: " + ", ".join(existing[:_ROLES_LISTED])
                hint += f" and {more} more" if more > 0 else ""
            log.warning(
                "auth.client-cert-mappings.%d (subject %r) names role %s, which does not exist "
                "(%s): certificates it maps get no permissions from it until a role of that "
                "name is created",
                index,
                mapping.subject[:200],
                role[:100],
                hint,
            )


def _may_issue(certificate: x509.Certificate) -> bool:
    """True unless the certificate says it signs none (CA:FALSE, no keyCertSign usage).

    The listener verifies without X509_STRICT, where OpenSSL also takes a v1 root, or one
    with keyCertSign but no basicConstraints, as an issuer: counted as one too.
    """
    extensions = certificate.extensions
    try:
        if not extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        return extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def _issuers_in(certificates: list[x509.Certificate]) -> list[x509.Certificate]:
    """The issuers among ``tls.client-ca``'s certificates, each once.

    One issuer is a subject and a key: a CA certificate renewed with the same key and
    subject (as certctl renews its CAs) next to the old one signs nothing the old could not,
    and a pin to either maps both (``ClientCertMapping.issued``).
    """
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    found = {
        (
            c.subject.public_bytes(),
            c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        ): c
        for c in certificates
        if _may_issue(c)
    }
    return list(found.values())


def _hierarchies(certificates: list[x509.Certificate]) -> int:
    """How many separate hierarchies the issuers in ``certificates`` form.

    A root and the intermediates it signed (a chain bundle) are one: the root alone already
    accepts every certificate such an intermediate signs, the client sending it in its chain,
    so the intermediate in the file lets no one else mint a subject. An intermediate signed
    by two roots (cross-signed) joins nothing: each root still counts.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    def identity(c: x509.Certificate) -> tuple[bytes, bytes]:
        spki = c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return c.subject.public_bytes(), spki

    # Every certificate that may issue, a renewed CA's older one too: any of them may be
    # the one a parent in the file signed.
    issuing = [c for c in certificates if _may_issue(c)]
    by_subject: dict[bytes, list[x509.Certificate]] = {}
    for c in issuing:
        by_subject.setdefault(c.subject.public_bytes(), []).append(c)
    Identity = tuple[bytes, bytes]
    parents: dict[Identity, set[Identity]] = {identity(c): set() for c in issuing}
    for c in issuing:
        own = identity(c)
        for parent in by_subject.get(c.issuer.public_bytes(), []):
            if identity(parent) == own:
                continue  # self-signed, or its own renewal
            try:
                c.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                continue
            parents[own].add(identity(parent))

    def above(start: Identity) -> set[Identity]:
        seen: set[Identity] = set()
        todo = list(parents[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(parents[node])
        return seen

    ancestors = {node: above(node) for node in parents}
    # A hierarchy's top: every issuer above it is also below it (itself, or CAs that signed
    # one another: they vouch for one another). Each group of such tops is one hierarchy.
    tops = {
        frozenset({node} | ancestors[node])
        for node in parents
        if all(node in ancestors[up] for up in ancestors[node])
    }
    return len(tops)


def refuse_unpinned_mappings(
    config: ServerConfig,
    certificates: list[x509.Certificate],
    unreadable: Sequence[bytes] = (),
) -> None:
    """Refuse a mapping without ``issuer-fingerprint`` when ``tls.client-ca`` has several CAs.

    Such a mapping matches the subject alone: every CA the handshake trusts could mint that
    subject and get its roles. With one CA (the usual case), or a root and intermediates it
    signed, that CA (the root) and those it chose are the only ones that can, and no pin is
    needed. Checked at start and at each reload of ``tls.client-ca``, so a CA
    added to the file later cannot widen the mapping either.

    ``unreadable``: the DER of certificates OpenSSL reads and ``cryptography`` cannot (an
    old CA encoding a default value, which DER forbids): each counted as a CA of its own.

    Raises:
        InvalidRequest: the first such mapping, the CAs and what to do, in one line.
    """
    import hashlib

    from cryptography.hazmat.primitives.hashes import SHA256

    # A CA past its notAfter verifies nothing (OpenSSL checks the trust anchor's validity
    # too) and never will again: an old root left in the file after a rotation is no CA.
    now = datetime.now(UTC)
    live = [c for c in certificates if c.not_valid_after_utc > now]
    unread = sorted({hashlib.sha256(der).hexdigest() for der in unreadable})
    if _hierarchies(live) + len(unread) < 2:
        return
    named_each = [
        f"{c.subject.rfc4514_string()[:100]} {c.fingerprint(SHA256()).hex()}"
        for c in _issuers_in(live)
    ] + [f"a certificate certctl cannot parse {fingerprint}" for fingerprint in unread]
    for index, mapping in enumerate(config.auth.client_cert_mappings):
        if mapping.issuer_fingerprint is None:
            named = "; ".join(named_each[:4])
            if len(named_each) > 4:
                named += f"; {len(named_each) - 4} more"
            raise InvalidRequest(
                f"auth.client-cert-mappings.{index} (subject {mapping.subject[:200]!r}) has no "
                f"issuer-fingerprint, and tls.client-ca {config.tls.client_ca} holds "
                f"{len(named_each)} CAs that could each issue that subject ({named}): pin the "
                "mapping to the CA that issues it (for several, one mapping per CA)"
            )


def read_certificates(pem: bytes) -> tuple[list[x509.Certificate], list[bytes]]:
    """The certificates of a PEM file, and the DER of those ``cryptography`` cannot parse.

    One at a time: OpenSSL, which verifies the handshakes, reads certificates that
    ``cryptography`` refuses (a real CA encoding a default value, which DER forbids), and
    one such CA in ``tls.client-ca`` must not refuse the file.
    """
    import base64
    import binascii

    found: list[x509.Certificate] = []
    unreadable: list[bytes] = []
    for block in _PEM_CERTIFICATE.finditer(pem):
        try:
            der = base64.b64decode(block.group(1))
        except (binascii.Error, ValueError):
            continue  # no certificate: OpenSSL skips it too (or refuses the file first)
        try:
            found.append(x509.load_der_x509_certificate(der))
        except ValueError:
            unreadable.append(der)
    return found, unreadable


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN (?:X509 )?CERTIFICATE-----(.*?)-----END (?:X509 )?CERTIFICATE-----", re.DOTALL
)


def client_ca_vet(config: ServerConfig) -> Callable[[bytes], None] | None:
    """What judges ``tls.client-ca`` at start and at each reload (``ServerTLS.vet_client_ca``).

    None while every mapping is pinned: nothing then depends on how many CAs the file holds,
    and a file ``cryptography`` cannot parse serves as it did.
    """
    if all(m.issuer_fingerprint is not None for m in config.auth.client_cert_mappings):
        return None

    def vet(pem: bytes) -> None:
        refuse_unpinned_mappings(config, *read_certificates(pem))

    return vet


def client_cert_mappings(config: ServerConfig) -> tuple[ClientCertMapping, ...]:
    """``auth.client-cert-mappings``, each ``issuer-fingerprint`` resolved in ``tls.client-ca``.

    Read at start: a mapping pinned to a CA maps certificates that CA's key signed, which
    needs the CA's certificate itself (a resumed TLS session keeps no chain to take it from).

    Raises:
        InvalidRequest: a fingerprint without ``tls.client-ca``, or of no CA certificate in it;
            a mapping without one while ``tls.client-ca`` holds several CAs.
    """
    mappings = config.auth.client_cert_mappings
    client_ca = config.tls.client_ca
    cas: dict[str, x509.Certificate] = {}
    if client_ca is not None and mappings:
        from cryptography.hazmat.primitives.hashes import SHA256

        try:
            found, unreadable = read_certificates(client_ca.read_bytes())
        except OSError as exc:
            raise InvalidRequest(f"tls.client-ca {client_ca}: {exc.strerror}") from None
        if not found and not unreadable:
            raise InvalidRequest(f"tls.client-ca {client_ca}: no PEM certificate in it")
        if any(m.issuer_fingerprint is None for m in mappings):
            refuse_unpinned_mappings(config, found, unreadable)
        cas = {c.fingerprint(SHA256()).hex(): c for c in found}
    resolved = []
    for index, m in enumerate(mappings):
        issuer = None
        if m.issuer_fingerprint is not None:
            key = f"auth.client-cert-mappings.{index}.issuer-fingerprint"
            if client_ca is None:
                raise InvalidRequest(f"{key} needs tls.client-ca, which holds that CA")
            issuer = cas.get(m.issuer_fingerprint)
            if issuer is None:
                raise InvalidRequest(
                    f"{key} {m.issuer_fingerprint}: no certificate in tls.client-ca "
                    f"{client_ca} has it"
                )
            if not _may_issue(issuer):
                raise InvalidRequest(
                    f"{key} {m.issuer_fingerprint}: {issuer.subject.rfc4514_string()[:200]} "
                    "is not a CA certificate"
                )
        resolved.append(ClientCertMapping(m.subject, tuple(m.roles), issuer))
    return tuple(resolved)
