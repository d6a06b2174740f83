"""``certctl cert issue``: one certificate, or a batch from a certutil instances file."""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from certctl.cli._common import load_ca_dir, read_file, read_password, utcnow, warn

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
    from rich.progress import Progress

    from certctl.pki import CertificateAuthority, KeyType, Profile
    from certctl.pki.instances import Instance

__all__ = ["app", "leaf_files"]

app = typer.Typer(help="Issue certificates signed by a CA directory.", no_args_is_help=True)


def leaf_files(
    ca: CertificateAuthority,
    certificate: x509.Certificate,
    key: CertificateIssuerPrivateKeyTypes | None,
    *,
    p12_password: bytes | None = None,
    p12_legacy: bool = False,
    name: str = "tls",
) -> Iterator[tuple[str, bytes, bool]]:
    """Yield ``(file name, data, is_secret)`` for a leaf: PEM set, or PKCS#12 + ca.crt."""
    from certctl.pki import certs_to_pem, key_to_pem, to_pkcs12

    if p12_password is not None:
        yield (
            f"{name}.p12",
            to_pkcs12(
                name,
                key,
                certificate,
                [*ca.chain_below_root, ca.root],
                p12_password,
                legacy=p12_legacy,
            ),
            True,
        )
    else:
        yield f"{name}.crt", certs_to_pem([certificate]) + ca.chain_below_root_pem, False
        if key is not None:
            yield f"{name}.key", key_to_pem(key), True
    yield "ca.crt", ca.root_pem, False


@app.command("issue")
def issue(
    ca_dir: Path = typer.Option(..., "--ca", help="CA directory (from 'certctl ca create')."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory, or a .zip with --in."),
    cn: str = typer.Option(None, "--cn", help="Common name (host or user name)."),
    subject: str = typer.Option(None, "--subject", help="Full RFC 4514 subject instead of --cn."),
    dns: list[str] = typer.Option(
        [], "--dns", metavar="DNS", help="DNS SAN (repeatable; '*.example.com' allowed)."
    ),
    ip: list[str] = typer.Option(
        [], "--ip", metavar="IP", help="IP SAN, IPv4 or IPv6 (repeatable)."
    ),
    email: list[str] = typer.Option(
        [], "--email", metavar="EMAIL", help="E-mail SAN (repeatable)."
    ),
    uri: list[str] = typer.Option(
        [], "--uri", metavar="URI", help="URI SAN, e.g. spiffe://… (repeatable)."
    ),
    profile: str = typer.Option("server", "--profile", help="server, client or server+client."),
    validity: str = typer.Option("90D", "--validity", help="Lifetime: 90D, 2160h, 1Y …"),
    key_type: str = typer.Option(
        "ec-p256", "--key-type", help="ec-p256, ec-p384, ed25519, rsa-2048|3072|4096."
    ),
    instances: Path = typer.Option(
        None, "--in", help="certutil instances.yml: issue one certificate per instance."
    ),
    pem: bool = typer.Option(False, "--pem", help="With --in: write PEM files instead of PKCS#12."),
    p12: bool = typer.Option(
        False, "--p12", help="Write a password-protected tls.p12 instead of PEM."
    ),
    p12_legacy: bool = typer.Option(
        False, "--p12-legacy", help="PKCS#12 with 3DES/SHA-1 for old Java and Windows."
    ),
    password_file: Path = typer.Option(
        None, "--password-file", help="PKCS#12 password file (or CERTCTL_PASSWORD)."
    ),
    password: str = typer.Option(
        None, "--password", help="PKCS#12 password on the command line (demos only)."
    ),
    ca_password_file: Path = typer.Option(
        None, "--ca-password-file", help="Password of an encrypted ca.key."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Issue a certificate and key (tls.crt, tls.key, ca.crt), or a batch with --in."""
    from certctl.files import OutputSet
    from certctl.pki import (
        KeyType,
        SubjectAltNames,
        common_name_dn,
        generate_private_key,
        get_profile,
        parse_dn,
        parse_duration,
    )

    prof = get_profile(profile)
    if prof.is_ca:
        raise typer.BadParameter(
            "use 'certctl ca create --parent' for CA certificates", param_hint="--profile"
        )
    kt = KeyType.parse(key_type)
    lifetime = parse_duration(validity)
    if instances is not None:
        if cn or subject or dns or ip or email or uri:
            raise typer.BadParameter(
                "--in takes names from the file; drop --cn/--subject/--dns/--ip"
            )
        p12_password = None if pem else read_password(password_file, password)
        if not pem and p12_password is None:
            raise typer.BadParameter(
                "PKCS#12 output needs a password: --password-file or CERTCTL_PASSWORD "
                "(or use --pem)"
            )
        _issue_batch(
            ca_dir,
            out,
            instances,
            prof,
            lifetime,
            kt,
            p12_password,
            p12_legacy,
            force,
            ca_password_file,
        )
        return
    if not (cn or subject):
        raise typer.BadParameter("give --cn or --subject (or --in for a batch)")
    name = parse_dn(subject) if subject else common_name_dn(cn)
    sans = SubjectAltNames.parse(dns=dns, ip=ip, email=email, uri=uri)
    p12_password = read_password(password_file, password) if p12 else None
    if p12 and p12_password is None:
        raise typer.BadParameter("--p12 needs a password: --password-file or CERTCTL_PASSWORD")
    outputs = OutputSet(force=force)
    outputs.add(out / ("tls.p12" if p12 else "tls.crt"), b"")
    outputs.check()
    ca = load_ca_dir(ca_dir, read_password(ca_password_file, env="CERTCTL_CA_PASSWORD"))
    key = generate_private_key(kt)
    issued = ca.issue(
        key.public_key(), name, profile=prof, validity=lifetime, now=utcnow(), sans=sans
    )
    for message in issued.warnings:
        warn(message)
    for filename, data, secret in leaf_files(
        ca, issued.certificate, key, p12_password=p12_password, p12_legacy=p12_legacy
    ):
        outputs.add(out / filename, data, secret=secret)
    outputs.commit()
    typer.echo(
        f"issued {prof.name} certificate serial {issued.certificate.serial_number:x} "
        f"valid until {issued.certificate.not_valid_after_utc:%Y-%m-%d}"
    )
    for path in outputs.paths:
        typer.echo(f"  {path}")


def _issue_batch(
    ca_dir: Path,
    out: Path,
    instances_path: Path,
    prof: Profile,
    lifetime: timedelta,
    kt: KeyType,
    p12_password: bytes | None,
    p12_legacy: bool,
    force: bool,
    ca_password_file: Path | None,
) -> None:
    from certctl.files import OutputSet
    from certctl.pki.instances import parse_instances

    try:
        todo = parse_instances(read_file(instances_path, "instances file").decode("utf-8"))
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{instances_path}: not UTF-8 text") from None
    as_zip = out.suffix.lower() == ".zip"
    outputs = OutputSet(force=force)
    if as_zip:
        outputs.add(out, b"")
    else:
        for inst in todo:
            outputs.add(
                out
                / inst.filename
                / ("tls.crt" if p12_password is None else f"{inst.filename}.p12"),
                b"",
            )
    outputs.check()
    outputs = OutputSet(force=force)
    ca = load_ca_dir(ca_dir, read_password(ca_password_file, env="CERTCTL_CA_PASSWORD"))
    now = utcnow()
    buffer = io.BytesIO()
    # Stored, not deflated: PEM barely compresses, and deflate took a third of the run time.
    archive = zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) if as_zip else None
    warned: set[str] = set()
    job = _BatchJob(ca, todo, prof, lifetime, kt, now, p12_password, p12_legacy)
    with _progress(len(todo)) as advance:
        for warnings, files in _run_batch(job):
            for message in warnings:
                if message not in warned:
                    warned.add(message)
                    warn(message)
            for relpath, data, secret in files:
                if archive is not None:
                    info = zipfile.ZipInfo(relpath, date_time=now.timetuple()[:6])
                    info.compress_type = zipfile.ZIP_STORED
                    info.external_attr = (0o100600 if secret else 0o100644) << 16
                    archive.writestr(info, data)
                else:
                    outputs.add(out / relpath, data, secret=secret)
            advance()
    if archive is not None:
        archive.close()
        # The archive holds private keys: the file itself is 0600.
        outputs.add(out, buffer.getvalue(), secret=True)
    outputs.commit()
    what = "zip" if as_zip else "directory"
    typer.echo(f"issued {len(todo)} certificates into {what} {out}")


@dataclass(frozen=True)
class _BatchJob:
    """Everything a worker needs; inherited through fork(), never pickled (it holds the key)."""

    ca: CertificateAuthority
    instances: list[Instance]
    profile: Profile
    validity: timedelta
    key_type: KeyType
    now: datetime
    p12_password: bytes | None
    p12_legacy: bool


_Result = tuple[tuple[str, ...], list[tuple[str, bytes, bool]]]
_JOB: _BatchJob | None = None
# Below this many certificates, forking workers costs more than it saves.
_PARALLEL_FROM = 200
_CHUNK = 64


def _issue_one(job: _BatchJob, index: int) -> _Result:
    from certctl.pki import generate_private_key

    inst = job.instances[index]
    key = generate_private_key(job.key_type)
    issued = job.ca.issue(
        key.public_key(),
        _cn_name(inst.common_name),
        profile=job.profile,
        validity=job.validity,
        now=job.now,
        sans=inst.sans,
    )
    name = "tls" if job.p12_password is None else inst.filename
    files = [
        (f"{inst.filename}/{filename}", data, secret)
        for filename, data, secret in leaf_files(
            job.ca,
            issued.certificate,
            key,
            p12_password=job.p12_password,
            p12_legacy=job.p12_legacy,
            name=name,
        )
    ]
    return issued.warnings, files


def _issue_chunk(bounds: tuple[int, int]) -> list[_Result]:
    assert _JOB is not None  # set by _run_batch before the pool forks
    return [_issue_one(_JOB, i) for i in range(*bounds)]


def _run_batch(job: _BatchJob) -> Iterator[_Result]:
    """Yield each instance's result in order; large batches use every core.

    Signing is CPU-bound and holds the GIL, so threads would not help; fork()ed workers
    inherit the loaded CA, so the CA key is never serialised or re-read.
    """
    global _JOB
    total = len(job.instances)
    workers = min(os.cpu_count() or 1, 8)
    if total < _PARALLEL_FROM or workers < 2 or "fork" not in mp.get_all_start_methods():
        for index in range(total):
            yield _issue_one(job, index)
        return
    _JOB = job
    try:
        bounds = [(start, min(start + _CHUNK, total)) for start in range(0, total, _CHUNK)]
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            for chunk in pool.map(_issue_chunk, bounds):
                yield from chunk
    finally:
        _JOB = None


def _cn_name(common_name: str) -> x509.Name:
    from certctl.pki import common_name_dn

    return common_name_dn(common_name)


class _progress:
    """A Rich progress bar on a terminal; silent otherwise (CI logs stay clean)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._bar: Progress | None = None

    def __enter__(self) -> Callable[[], None]:
        if not sys.stderr.isatty():
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar = progress
        progress.start()
        task = progress.add_task("issuing", total=self.total)
        return lambda: progress.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
