"""Fixtures and workloads: a P-256 CA, instances files, raw cryptography and openssl references."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import shutil
import subprocess
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _measure import BenchError, time_command
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "BenchCA",
    "Host",
    "certctl_issue_inprocess",
    "certctl_issue_subprocess",
    "check_certctl_zip",
    "check_openssl_output",
    "hosts",
    "make_ca",
    "openssl_loop",
    "raw_files",
    "raw_issue",
    "write_bundle",
    "write_instances",
    "write_openssl_script",
]

LEAF_VALIDITY = timedelta(days=90)
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True)
class Host:
    """One instance: the same names go to certctl (YAML), raw cryptography and openssl."""

    name: str
    dns: tuple[str, ...]
    ip: ipaddress.IPv4Address


def hosts(n: int) -> list[Host]:
    """``n`` instances with a CN, two DNS SANs and one IP SAN each."""
    return [
        Host(
            f"node-{i:05d}",
            (f"node-{i:05d}.example.com", f"node-{i:05d}.internal"),
            ipaddress.IPv4Address(0x0A000000 + i + 1),
        )
        for i in range(n)
    ]


def write_instances(path: Path, items: list[Host]) -> Path:
    """Write an ``elasticsearch-certutil`` instances file for ``items``."""
    lines = ["instances:"]
    for h in items:
        lines.append(f"  - name: {h.name}")
        lines.append(f"    dns: [{', '.join(h.dns)}]")
        lines.append(f"    ip: [{h.ip}]")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class BenchCA:
    """A P-256 root CA on disk (``ca.crt``, ``ca.key``) and pre-loaded in memory."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    aki: x509.AuthorityKeyIdentifier


def make_ca(directory: Path) -> BenchCA:
    """Create a root CA as ``certctl ca create`` would lay it out (unencrypted PKCS#8 key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certctl bench Root CA")])
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / "ca.key"
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return BenchCA(directory, key, cert, aki)


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_SERVER_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])


def _raw_leaf(
    ca: BenchCA,
    issuer: x509.Name,
    h: Host,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
) -> x509.Certificate:
    """``h``'s server leaf as the raw reference makes it, signed by ``ca``'s key."""
    sans = x509.SubjectAlternativeName([*(x509.DNSName(d) for d in h.dns), x509.IPAddress(h.ip)])
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, h.name)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + LEAF_VALIDITY)
        .add_extension(_LEAF_CONSTRAINTS, critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_SERVER_EKU, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(ca.aki, critical=False)
        .add_extension(sans, critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def raw_issue(ca: BenchCA, items: list[Host]) -> float:
    """The reference: the minimal in-process cryptography work per certificate; wall seconds.

    Per certificate: a P-256 key, a leaf with BasicConstraints, KeyUsage, EKU, SKI, AKI and SAN
    signed by the pre-loaded CA key, and the certificate and key serialised to PEM.
    """
    issuer = ca.certificate.subject
    start = time.perf_counter()
    now = datetime.now(UTC)
    total = 0
    for h in items:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _raw_leaf(ca, issuer, h, key.public_key(), now)
        total += len(cert.public_bytes(serialization.Encoding.PEM))
        total += len(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    elapsed = time.perf_counter() - start
    if total <= 0:
        raise BenchError("raw reference produced no output")
    return elapsed


def raw_files(items: list[Host], out: Path) -> float:
    """The file-system floor of ``--out DIR``: the same folders and files, no crypto; seconds.

    Per instance a folder with ``tls.crt``, ``tls.key`` (0600) and ``ca.crt`` of typical PEM
    sizes, written with plain ``open``/``write`` (no temporary names, no renames, no sync):
    less than certctl does, so it bounds from below what any directory output costs here.
    """
    if out.exists():
        shutil.rmtree(out)
    cert, key, ca = b"C" * 900, b"K" * 241, b"A" * 650
    start = time.perf_counter()
    out.mkdir()
    for h in items:
        folder = out / h.name
        folder.mkdir()
        (folder / "tls.crt").write_bytes(cert)
        fd = os.open(folder / "tls.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        (folder / "ca.crt").write_bytes(ca)
    return time.perf_counter() - start


def _issue_argv(ca: BenchCA, instances: Path, out: Path) -> list[str]:
    ca_dir = str(ca.directory)
    return ["cert", "issue", "--ca", ca_dir, "--in", str(instances), "--out", str(out), "--pem"]


def certctl_issue_subprocess(
    certctl: Path, ca: BenchCA, instances: Path, out: Path, *, timeout_s: float
) -> float:
    """``certctl cert issue --in … --out … --pem`` as users run it; wall seconds incl. start-up.

    ``out`` is a ``.zip`` path or a directory; it is removed after timing.
    """
    argv = [str(certctl), *_issue_argv(ca, instances, out)]
    try:
        return time_command(argv, timeout_s=timeout_s)
    finally:
        _remove(out)


def certctl_issue_inprocess(ca: BenchCA, instances: Path, out: Path) -> float:
    """The same command through ``certctl.cli.main.run`` in this process (no start-up)."""
    from certctl.cli.main import run

    argv = _issue_argv(ca, instances, out)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run(argv)
        elapsed = time.perf_counter() - start
    finally:
        _remove(out)
    if code != 0:
        raise BenchError(f"certctl.cli.main.run: exit {code}\n{stderr.getvalue()[-2000:]}")
    return elapsed


def check_certctl_zip(certctl: Path, ca: BenchCA, instances: Path, out: Path, count: int) -> None:
    """Run certctl once into a zip and prove it holds ``count`` leaves signed by the CA."""
    argv = [str(certctl), *_issue_argv(ca, instances, out)]
    try:
        time_command(argv, timeout_s=120)
        with zipfile.ZipFile(out) as archive:
            crts = [n for n in archive.namelist() if n.endswith("/tls.crt")]
            keys = [n for n in archive.namelist() if n.endswith("/tls.key")]
            if len(crts) != count or len(keys) != count:
                raise BenchError(f"certctl zip holds {len(crts)} certificates, expected {count}")
            leaf = x509.load_pem_x509_certificate(archive.read(crts[0]))
        leaf.verify_directly_issued_by(ca.certificate)
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    finally:
        _remove(out)


def write_openssl_script(work: Path, ca: BenchCA, items: list[Host]) -> Path:
    """A bash loop issuing ``items`` with two openssl processes per certificate.

    The extension files are written here (untimed), as certctl's instances file is.
    """
    ext_dir = work / "ext"
    ext_dir.mkdir(parents=True, exist_ok=True)
    for h in items:
        sans = ",".join([*(f"DNS:{d}" for d in h.dns), f"IP:{h.ip}"])
        (ext_dir / f"{h.name}.cnf").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
            f"subjectAltName={sans}\n"
        )
    names = " ".join(h.name for h in items)
    script = work / "openssl-loop.sh"
    script.write_text(
        "set -euo pipefail\n"
        'out="$1"\n'
        'mkdir -p "$out"\n'
        f"for name in {names}; do\n"
        "  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\\n"
        '      -keyout "$out/$name.key" -subj "/CN=$name" 2>/dev/null \\\n'
        f"    | openssl x509 -req -CA {ca.directory}/ca.crt -CAkey {ca.directory}/ca.key \\\n"
        '      -CAserial "$out/ca.srl" -CAcreateserial -days 90 -sha256 \\\n'
        f'      -extfile {ext_dir}/"$name".cnf -out "$out/$name.crt" 2>/dev/null\n'
        "done\n"
    )
    return script


def openssl_loop(script: Path, out: Path, *, timeout_s: float) -> float:
    """Run the openssl loop script into ``out``; wall seconds (``out`` removed afterwards)."""
    try:
        return time_command(["bash", str(script), str(out)], timeout_s=timeout_s)
    finally:
        _remove(out)


def check_openssl_output(script: Path, out: Path, ca: BenchCA, count: int) -> None:
    """Run the loop once and prove it made ``count`` leaves that openssl verifies."""
    subprocess.run(["bash", str(script), str(out)], check=True, timeout=120)
    try:
        crts = sorted(out.glob("*.crt"))
        if len(crts) != count:
            raise BenchError(f"openssl loop made {len(crts)} certificates, expected {count}")
        subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca.directory / "ca.crt"), str(crts[0])],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=30,
        )
    finally:
        _remove(out)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_bundle(path: Path, ca: BenchCA, items: list[Host]) -> Path:
    """One PEM file of a leaf per instance, as ``raw_issue`` makes them (the inspect rows).

    Eight keys serve all the leaves: what is timed is reading and printing certificates,
    and making 10,000 keys would only slow the set-up.
    """
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
    now = datetime.now(UTC)
    with path.open("wb") as out:
        for index, h in enumerate(items):
            public_key = keys[index % len(keys)].public_key()
            cert = _raw_leaf(ca, ca.certificate.subject, h, public_key, now)
            out.write(cert.public_bytes(serialization.Encoding.PEM))
    return path
