"""Fixtures for the ``crl-create-large`` row: a large CRL, and the same list for ``openssl ca``.

Both tools end with the same CRL: the ``n`` entries of the previous one plus one new serial,
reason keyCompromise, signed by the bench CA. certctl reads the entries from the CRL it
signed before (``crl create --from``, its only state); ``openssl ca -gencrl`` reads them
from its ``index.txt`` database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from _measure import BenchError
from _workloads import BenchCA
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

FIRST_SERIAL = 0x1000_0000


def new_serial(n: int) -> str:
    """The serial (hex) both tools add to the ``n`` already listed."""
    return f"0x{FIRST_SERIAL + n:X}"


def write_previous_crl(path: Path, ca: BenchCA, n: int) -> Path:
    """Sign (pyca directly, not certctl) a CRL listing ``n`` serials, revoked an hour ago."""
    revoked_at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    reason = x509.CRLReason(x509.ReasonFlags.key_compromise)
    revoked = [
        x509.RevokedCertificateBuilder()
        .serial_number(FIRST_SERIAL + i)
        .revocation_date(revoked_at)
        .add_extension(reason, critical=False)
        .build()
        for i in range(n)
    ]
    crl = (
        x509.CertificateRevocationListBuilder(revoked_certificates=revoked)
        .issuer_name(ca.certificate.subject)
        .last_update(revoked_at)
        .next_update(revoked_at + timedelta(days=7))
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(ca.aki, critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    path.write_bytes(crl.public_bytes(Encoding.PEM))
    return path


def write_openssl_ca(work: Path, ca: BenchCA, n: int) -> Path:
    """An ``openssl ca`` directory whose database lists the ``n`` serials and the new one.

    Returns its config file, for ``openssl ca -config FILE -gencrl -out CRL``.
    """
    work.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC) - timedelta(hours=1)
    expires = (now + timedelta(days=30)).strftime("%y%m%d%H%M%SZ")
    revoked = now.strftime("%y%m%d%H%M%SZ")
    with (work / "index.txt").open("w") as index:
        for i in range(n + 1):
            index.write(
                f"R\t{expires}\t{revoked},keyCompromise\t{FIRST_SERIAL + i:X}\tunknown\t/CN=h{i}\n"
            )
    (work / "index.txt.attr").write_text("unique_subject = no\n")
    (work / "crlnumber").write_text("1000\n")
    config = work / "openssl.cnf"
    config.write_text(
        "[ca]\ndefault_ca = bench\n"
        "[bench]\n"
        f"database = {work / 'index.txt'}\n"
        f"crlnumber = {work / 'crlnumber'}\n"
        f"certificate = {ca.directory / 'ca.crt'}\n"
        f"private_key = {ca.directory / 'ca.key'}\n"
        "default_md = sha256\ndefault_crl_days = 7\ncrl_extensions = crl_ext\n"
        "[crl_ext]\nauthorityKeyIdentifier = keyid:always\n"
    )
    return config


def check_crl(path: Path, ca: BenchCA, n: int) -> None:
    """The CRL at ``path`` is signed by the CA and lists all ``n`` + 1 serials."""
    data = path.read_bytes()
    crl = (
        x509.load_pem_x509_crl(data) if data.startswith(b"-----") else x509.load_der_x509_crl(data)
    )
    if not crl.is_signature_valid(ca.key.public_key()):
        raise BenchError(f"{path}: not signed by the bench CA")
    serials = {entry.serial_number for entry in crl}
    expected = set(range(FIRST_SERIAL, FIRST_SERIAL + n + 1))
    if serials != expected:
        raise BenchError(f"{path}: lists {len(serials)} serials, expected the {n + 1} written")
