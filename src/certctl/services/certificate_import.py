"""Record certificates an issuer signed before certctl held it (a cfssl or openssl CA imported).

Such a certificate is stored as an issued one is (no key), so listing, the metrics counts,
revocation and its issuer's CRL see it; its ``profile`` is ``imported``: certctl did not issue
it under one of its profiles, and does not renew it (``certificates.renew_certificate``).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning
from sqlalchemy import Row, select, tuple_
from sqlalchemy.exc import IntegrityError

from certctl.errors import Conflict, InvalidRequest
from certctl.pki import format_serial
from certctl.pki.crl import is_crl_serial
from certctl.pki.issue import IssuedCertificate
from certctl.services.audit import event_values
from certctl.services.context import Principal, Services
from certctl.services.issuance import AUDIT_EVENTS, certctl_names_trusted, new_rows
from certctl.services.issuers import check_not_managed, signer_preference
from certctl.services.revocation import parsed_ca
from certctl.store.groupcommit import Insert, write_rows
from certctl.store.models import CertificateRecord, Issuer

__all__ = [
    "IMPORTED_PROFILE",
    "ImportedCertificate",
    "SkippedCertificate",
    "import_certificates",
]

# The profile column of an imported certificate: the marker renewal and the listing read.
IMPORTED_PROFILE = "imported"

_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")
# The store's column width (models.CertificateRecord): a longer name is refused by name,
# where PostgreSQL would fail the insert with a 500.
_MAX_COMMON_NAME = 200


@dataclass(frozen=True)
class ImportedCertificate:
    """One recorded certificate: its new id, the issuer whose key signed it, its serial."""

    id: str
    issuer_id: str
    serial: str


@dataclass(frozen=True)
class SkippedCertificate:
    """A certificate of the bundle recorded already (``skip_existing``): where it is."""

    number: int  # its place in the bundle, from 1
    id: str  # the certificate record that holds it
    issuer_id: str
    serial: str
    subject: str


def _blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, body) of each PEM block of ``data``, in order; text between them is skipped.

    Scanned once from start to end: a pattern matching BEGIN to its END read the rest of
    the body again for each BEGIN line lacking one (a 1 MB body of them: minutes of CPU).

    Raises:
        InvalidRequest: a BEGIN line without its END line (a bundle cut short), named.
    """
    blocks: list[tuple[bytes, bytes]] = []
    position = 0
    while (begin := _BEGIN.search(data, position)) is not None:
        label = begin.group(1)
        end = b"-----END " + label + b"-----"
        stop = data.find(end, begin.end())
        if stop < 0:
            # Refused rather than skipped: the rest of the bundle recorded without the
            # certificate cut short would look like a complete import.
            name = label.decode()
            raise InvalidRequest(
                f"block {len(blocks) + 1} ({name}) has no -----END {name}----- line: cut short?"
            )
        blocks.append((label, data[begin.end() : stop]))
        position = stop + len(end)
    return blocks


def _certificates(pem: str) -> list[x509.Certificate]:
    """The certificates of a PEM bundle; any other block (a key, a CSR) is refused by number."""
    blocks = _blocks(pem.encode())
    if not blocks:
        raise InvalidRequest("no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
    certs: list[x509.Certificate] = []
    for number, (label, body) in enumerate(blocks, 1):
        kind = label.decode()
        if kind != "CERTIFICATE":
            # Named by its label only: a key's content never reaches an error or a log.
            raise InvalidRequest(
                f"block {number} is a {kind}, not a CERTIFICATE: give certificates only "
                "(certctl records no key for them)"
            )
        with warnings.catch_warnings():
            # A serial of zero or below (warned about at each read): refused just below.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            try:
                cert = x509.load_pem_x509_certificate(
                    b"-----BEGIN CERTIFICATE-----" + body + b"-----END CERTIFICATE-----"
                )
            except ValueError:
                raise InvalidRequest(
                    f"certificate {number}: not a readable X.509 certificate"
                ) from None
            serial = cert.serial_number
        if not is_crl_serial(serial):
            # OpenSSL signs such serials, but no CRL entry can carry one: revoked here, it
            # would be shown as revoked while its issuer's CRL left it off (crls.py).
            subject = cert.subject.rfc4514_string()[:200]
            raise InvalidRequest(
                f"certificate {number} ({subject}, serial {format_serial(serial)}): its serial "
                "is no positive number of at most 20 octets (RFC 5280 4.1.2.2), so no CRL can "
                "list it: revoked here, clients would still accept it"
            )
        certs.append(cert)
    return certs


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    # Another key type, another signature, an algorithm this OpenSSL does not verify.
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _label(number: int, cert: x509.Certificate) -> str:
    subject = cert.subject.rfc4514_string()[:200]
    return f"certificate {number} ({subject}, serial {format_serial(cert.serial_number)})"


def import_certificates(
    services: Services, caller: Principal, pem: str, *, skip_existing: bool = False
) -> tuple[list[ImportedCertificate], list[SkippedCertificate]]:
    """Record each certificate of ``pem`` under the held issuer whose key signed it.

    All or nothing: the first certificate that cannot be recorded is named in the error and
    none is stored. Expired certificates are recorded (they count as ``expired``; one can
    still be revoked); CA certificates are refused (they are issuers, not leaves).
    ``skip_existing``: one recorded already (that serial under any id of its CA), or the
    very same certificate again later in the bundle, is passed over and returned as skipped
    instead of refusing the bundle, so a migration run again records only what it had not.

    Returns:
        The certificates recorded, and those skipped (``skip_existing``), in bundle order.

    Raises:
        InvalidRequest: not PEM certificates, a CA certificate, one no held issuer signed,
            the same certificate twice (unless ``skip_existing``), two certificates with one
            serial of one issuer.
        Conflict: a serial already recorded for that issuer (unless ``skip_existing``), a
            managed service's CA, or certctl's own server certificate.
    """
    caller.require("cert.issue")
    certs = _certificates(pem)
    with services.sessions() as session:
        stored = session.execute(
            select(Issuer.id, Issuer.certificate_pem, Issuer.chain_pem, Issuer.revoked_at).order_by(
                Issuer.id
            )
        ).all()
    # (id, revoked, its certificate then its stored chain), in id order.
    held: list[tuple[str, bool, tuple[x509.Certificate, ...]]] = []
    for held_id, certificate_pem, chain_pem, revoked_at in stored:
        try:
            ca = parsed_ca(certificate_pem)[0]
        except ValueError:
            continue  # a PEM written over in the store signs nothing here (its routes say so)
        try:
            chain = tuple(x509.load_pem_x509_certificates(chain_pem.encode())) if chain_pem else ()
        except ValueError:
            chain = ()  # its own routes name the unreadable chain; it still says who signed
        held.append((held_id, revoked_at is not None, (ca, *chain)))
    now = services.clock()
    found: list[tuple[str, x509.Certificate]] = []
    seen: dict[tuple[str, str], int] = {}
    copies: dict[int, int] = {}  # a repeated certificate's number -> its first copy's
    # (issuer, serial) under every held id of the signing CA: the same CA imported twice
    # (two ids, one key) has a certificate recorded under either, issued by certctl too.
    recorded_as: dict[tuple[str, str], int] = {}
    paths: dict[int, tuple[x509.Certificate, ...]] = {}  # the signer's path, by number
    for number, cert in enumerate(certs, 1):
        label = _label(number, cert)
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        except ValueError:
            raise InvalidRequest(f"{label}: its extensions cannot be read") from None
        if constraints is not None and constraints.ca:
            raise InvalidRequest(
                f"{label}: a CA certificate; import a CA as an issuer "
                "(POST /api/v1/issuers, certctl issuers import)"
            )
        # The signature decides, not the name: another CA may carry the same subject.
        signers = [(i, revoked, path) for i, revoked, path in held if _signed_by(cert, path[0])]
        if not signers:
            named = cert.issuer.rfc4514_string()[:200]
            raise InvalidRequest(
                f"{label}: signed by no issuer certctl holds (issuer {named}); "
                "import its CA first (certctl issuers import)"
            )
        # Of several ids holding the signing key (a CA renewed on it, imported again), the
        # one an issuer import would take as this certificate's parent: the first by id
        # could be revoked or expired while another is fine.
        best = min(signers, key=lambda s: signer_preference(s[1], s[2], cert, now))
        issuer_id = check_not_managed(best[0])
        serial = format_serial(cert.serial_number)
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if cns and len(str(cns[0].value).replace("\0", "\\00")) > _MAX_COMMON_NAME:
            raise InvalidRequest(f"{label}: common name longer than {_MAX_COMMON_NAME} characters")
        if (issuer_id, serial) in seen:
            first_number = seen[issuer_id, serial]
            if not (skip_existing and cert == certs[first_number - 1]):
                raise InvalidRequest(f"{label}: the same serial as certificate {first_number}")
            # The very same certificate again (files concatenated with overlaps): a run meant
            # to record only what is new passes it over as recorded by its first copy. A
            # different certificate under the same serial stays refused: a CA fault to show.
            copies[number] = first_number
            found.append((issuer_id, cert))
            continue
        seen[issuer_id, serial] = number
        paths[number] = best[2]
        for signer, _, _ in signers:
            recorded_as.setdefault((signer, serial), number)
        found.append((issuer_id, cert))
    taken = _recorded(services, recorded_as)
    if taken and not skip_existing:
        number = min(taken)
        first = taken[number]
        raise Conflict(
            f"{_label(number, certs[number - 1])}: issuer {first.issuer_id}'s serial "
            f"{first.serial} is already recorded as certificate {first.id}; nothing imported"
        )
    for number, path in paths.items():
        if number in taken:
            continue  # recorded already (an administrator had certctl issue it): no news
        cert = certs[number - 1]
        if own := certctl_names_trusted(services, cert, path):
            # certctl's tls.crt (issued at start by the internal CA, of this replica or
            # another, kept out of the certificates table) or its like: recorded, any
            # cert.revoke holder could put it on the CRL, and every client checking that
            # CRL would stop trusting certctl itself.
            raise Conflict(
                f"{_label(number, cert)}: certctl's own server certificate (for "
                f"{', '.join(own)}, under the CA its clients trust); recorded, it could be "
                "revoked and cut off the clients that check the CRL; nothing imported"
            )
    # Where each certificate of the bundle is held: recorded before, or by this import.
    held_as: dict[int, tuple[str, str, str]] = {
        number: (row.id, row.issuer_id, row.serial) for number, row in taken.items()
    }
    rows: list[Insert] = []
    imported: list[ImportedCertificate] = []
    for number, (issuer_id, cert) in enumerate(found, 1):
        if number in taken or number in copies:
            continue
        record, (cert_row, _issue_audit) = new_rows(
            services, caller, issuer_id, IssuedCertificate(cert), IMPORTED_PROFILE, None
        )
        # A NUL (a null-prefix certificate, www.bank.example\0.evil.example) as RFC 4514
        # writes it, as the subject column holds it: PostgreSQL stores no NUL in text (a 500),
        # and such a certificate is one to keep on record, to revoke.
        values = cert_row[1]
        values["common_name"] = values["common_name"].replace("\0", "\\00")
        rows.append(cert_row)
        rows.append(
            (
                AUDIT_EVENTS,
                event_values(
                    at=cert_row[1]["created_at"],
                    actor=caller.actor_id,
                    action="certificate.import",
                    target=f"{record.id} serial {record.serial} issuer {issuer_id}",
                    source=caller.source,
                    credential=caller.credential,
                ),
            )
        )
        imported.append(ImportedCertificate(record.id, issuer_id, record.serial))
        held_as[number] = (record.id, issuer_id, record.serial)
    for number, first_number in copies.items():
        held_as[number] = held_as[first_number]
    skipped = [
        SkippedCertificate(
            number,
            *held_as[number],
            certs[number - 1].subject.rfc4514_string().replace("\0", "\\00")[:200],
        )
        for number in sorted((*taken, *copies))
    ]
    try:
        with services.engine.begin() as connection:
            write_rows(connection, rows)
    except IntegrityError:
        # Another request recorded one of these serials since the check: nothing is stored.
        raise Conflict(
            "a certificate of this bundle was recorded meanwhile; nothing imported"
        ) from None
    return imported, skipped


def _recorded(
    services: Services, seen: dict[tuple[str, str], int]
) -> dict[int, Row[str, str, str]]:
    """The record already holding each certificate, by the certificate's number in the bundle.

    ``seen`` maps each (issuer, serial) a certificate could be recorded as to its number.
    """
    with services.sessions() as session:
        taken = session.execute(
            select(
                CertificateRecord.issuer_id, CertificateRecord.serial, CertificateRecord.id
            ).where(tuple_(CertificateRecord.issuer_id, CertificateRecord.serial).in_(list(seen)))
        ).all()
    found: dict[int, Row[str, str, str]] = {}
    for row in sorted(taken, key=lambda row: (row.issuer_id, row.id)):
        found.setdefault(seen[row.issuer_id, row.serial], row)
    return found
