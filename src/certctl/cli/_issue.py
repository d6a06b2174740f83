"""``certctl cert issue`` itself, free of Typer, and the argv route that skips Typer for it.

Issuing 1,000 certificates takes ~0.3 s of work; importing Typer, click and pydantic and
building the parameter adapters took another ~0.15 s before the first certificate. The
command's work lives here, with no Typer import: ``cert.py`` declares the Typer command
(help, completion, usage errors) and calls :func:`issue`; ``main.run`` first offers argv
to :func:`parse_fast_argv`, which accepts only plain, well-formed ``cert issue`` options
and otherwise returns None so that Typer handles the command exactly as before. A usage
error (:class:`UsageProblem`) found on the fast route is also handed back to Typer, which
reports it in its own words.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from certctl.cli._common import (
    UsageProblem,
    open_ca_dir,
    option_value,
    pending_csr_key,
    read_file,
    read_password,
    split_names,
    utcnow,
    warn,
)

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
    from rich.progress import Progress

    from certctl.cli._storedzip import Entry
    from certctl.files import OutputSet
    from certctl.pki import CertificateAuthority, KeyType, Profile
    from certctl.pki.instances import Instance

__all__ = [
    "IssueOptions",
    "UsageProblem",
    "checked_urls",
    "issue",
    "leaf_files",
    "parse_fast_argv",
]


@dataclass(frozen=True)
class IssueOptions:
    """The options of ``certctl cert issue``, as Typer or :func:`parse_fast_argv` read them."""

    ca_dir: Path
    out: Path
    cn: str | None = None
    subject: str | None = None
    dns: Sequence[str] = ()
    ip: Sequence[str] = ()
    email: Sequence[str] = ()
    uri: Sequence[str] = ()
    crl_url: Sequence[str] = ()
    ca_issuers_url: Sequence[str] = ()
    profile: str = "server"
    validity: str = "90D"
    key_type: str = "ec-p256"
    instances: Path | None = None
    pem: bool = False
    p12: bool = False
    p12_legacy: bool = False
    password_file: Path | None = None
    password: str | None = None
    ca_password_file: Path | None = None
    force: bool = False


# The fast route's grammar: option -> IssueOptions field. Anything else (--help, short
# option clusters, '--', positional arguments) is left to Typer.
_VALUES = {
    "--ca": "ca_dir",
    "--out": "out",
    "-o": "out",
    "--cn": "cn",
    "--subject": "subject",
    "--profile": "profile",
    "--validity": "validity",
    "--key-type": "key_type",
    "--in": "instances",
    "--password-file": "password_file",
    "--password": "password",
    "--ca-password-file": "ca_password_file",
}
_PATHS = {"ca_dir", "out", "instances", "password_file", "ca_password_file"}
_LISTS = {
    "--dns": "dns",
    "--ip": "ip",
    "--email": "email",
    "--uri": "uri",
    "--crl-url": "crl_url",
    "--ca-issuers-url": "ca_issuers_url",
}
_FLAGS = {"--pem": "pem", "--p12": "p12", "--p12-legacy": "p12_legacy", "--force": "force"}


def parse_fast_argv(argv: Sequence[str]) -> IssueOptions | None:
    """Read ``cert issue …`` argv the way Typer would, or return None to let Typer do it.

    Only ``--opt value``, ``--opt=value`` and ``-o value`` forms of the command's own options
    are accepted, each at most once (list options repeatable), with values that are
    non-empty and do not start with ``-``; ``--ca`` and ``--out`` must be present.
    """
    if len(argv) < 2 or argv[0] != "cert" or argv[1] != "issue":
        return None
    values: dict[str, object] = {}
    lists: dict[str, list[str]] = {}
    index = 2
    while index < len(argv):
        token = argv[index]
        index += 1
        if token.startswith("--"):
            name, equals, inline = token.partition("=")
        else:
            name, equals, inline = token, "", ""
        if name in _FLAGS and not equals:
            if _FLAGS[name] in values:
                return None
            values[_FLAGS[name]] = True
            continue
        if name not in _VALUES and name not in _LISTS:
            return None
        if equals:
            value = inline
        elif index < len(argv):
            value = argv[index]
            index += 1
        else:
            return None
        if not value or value.startswith("-"):
            return None
        if name in _LISTS:
            lists.setdefault(_LISTS[name], []).append(value)
            continue
        key = _VALUES[name]
        if key in values:
            return None
        values[key] = Path(value) if key in _PATHS else value
    if "ca_dir" not in values or "out" not in values:
        return None
    return IssueOptions(**values, **lists)  # type: ignore[arg-type]


def echo(line: str) -> None:
    """Print one line on stdout and flush, as ``typer.echo`` does for plain text."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


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
    from certctl.pki.formats import certs_to_pem, key_to_pem, to_pkcs12

    if p12_password is not None:
        yield (
            f"{name}.p12",
            to_pkcs12(
                name,
                key,
                certificate,
                ca.chain_below_root,
                p12_password,
                legacy=p12_legacy,
                trusted=[ca.root],
            ),
            True,
        )
    else:
        yield f"{name}.crt", certs_to_pem([certificate]) + ca.chain_below_root_pem, False
        if key is not None:
            yield f"{name}.key", key_to_pem(key), True
    yield "ca.crt", ca.root_pem, False


def issue(opts: IssueOptions, out: Callable[[str], None] = echo) -> None:
    """Issue a certificate and key (tls.crt, tls.key, ca.crt), or a batch with ``--in``.

    Raises:
        UsageProblem: options that do not go together, or a value given that does not parse
            (a name, key type, duration: exit status 2 via Typer).
        CertctlError: the CA directory, the instances file, password files or outputs
            (exit status 1).
    """
    from certctl.files import OutputSet
    from certctl.pki.distinguished_names import common_name_dn, parse_dn
    from certctl.pki.issue import NameHint
    from certctl.pki.keys import KeyType, generate_private_key
    from certctl.pki.profiles import LEAF_PROFILES, get_profile
    from certctl.pki.subject_alt_names import SubjectAltNames
    from certctl.pki.validity import parse_duration

    _check_combinations(opts)
    with option_value("--profile"):
        prof = get_profile(opts.profile, LEAF_PROFILES)
    if prof.is_ca:
        raise UsageProblem(
            "use 'certctl ca create --parent' for CA certificates", param_hint="--profile"
        )
    with option_value("--key-type"):
        kt = KeyType.parse(opts.key_type)
    with option_value("--validity"):
        lifetime = parse_duration(opts.validity)
    crl_urls = checked_urls(opts.crl_url, "--crl-url")
    ca_issuers_urls = checked_urls(opts.ca_issuers_url, "--ca-issuers-url")
    if opts.instances is not None:
        given = [
            flag
            for flag, value in (
                ("--cn", opts.cn is not None),  # an empty one too
                ("--subject", opts.subject is not None),
                ("--dns", opts.dns),
                ("--ip", opts.ip),
                ("--email", opts.email),
                ("--uri", opts.uri),
            )
            if value
        ]
        if given:
            # The ones given, not a fixed list: one naming --cn to a command line with --email
            # alone sent the reader looking for what was not there.
            raise UsageProblem(f"--in takes names from the file; drop {'/'.join(given)}")
        p12_password = None if opts.pem else read_password(opts.password_file, opts.password)
        if not opts.pem and p12_password is None:
            raise UsageProblem(
                "PKCS#12 output needs a password: --password-file or CERTCTL_PASSWORD "
                "(or use --pem)"
            )
        _warn_about_password(p12_password)
        _issue_batch(
            opts,
            opts.instances,
            prof,
            lifetime,
            kt,
            p12_password,
            out,
            crl_urls,
            ca_issuers_urls,
        )
        return
    if opts.out.suffix.lower() == ".zip" and not opts.out.is_dir():
        # Only a batch is zipped: `--out app.zip` made a directory called app.zip, which a
        # script then tried to unzip. As `certctl http --out` refuses a directory for its
        # zip, the other way round; an app.zip directory made before is still written into.
        raise UsageProblem(
            f"--out {opts.out}: only --in (a batch) writes a zip; one certificate goes into "
            f"a directory, e.g. --out {opts.out.with_suffix('')}"
        )
    if opts.cn is None and opts.subject is None:
        raise UsageProblem("give --cn or --subject (or --in for a batch)")
    # An empty --cn or --subject is refused by the parsers, not taken for a missing one.
    with option_value("--subject" if opts.subject is not None else "--cn"):
        name = parse_dn(opts.subject) if opts.subject is not None else common_name_dn(opts.cn or "")
    with option_value():  # the message names the value, of --dns, --ip, --email or --uri
        sans = SubjectAltNames.parse(
            dns=split_names(opts.dns),
            ip=split_names(opts.ip),
            email=split_names(opts.email),
            uri=opts.uri,  # not split: a comma may be part of a URI
        )
    p12_password = read_password(opts.password_file, opts.password) if opts.p12 else None
    if opts.p12 and p12_password is None:
        raise UsageProblem("--p12 needs a password: --password-file or CERTCTL_PASSWORD")
    _warn_about_password(p12_password)
    if (pending := pending_csr_key(opts.out)) is not None:
        # --force too: a key that `csr create` made and no certificate was issued for yet
        # would be overwritten by the new one, and nothing could bring it back.
        import shlex

        from certctl.errors import Conflict

        where, csr = opts.out, opts.out / "tls.csr"
        sign = ["certctl", "csr", "sign", "--ca", str(opts.ca_dir), "--csr", str(csr)]
        sign += ["--out", str(where)]
        # --force for the tls.crt (and ca.crt) of an old certificate, still there.
        sign += ["--force"] if (where / "tls.crt").exists() or (where / "ca.crt").exists() else []
        lose = f"a new key and certificate in {where} would lose it (nothing was written)"
        raise Conflict(
            f"{pending.refusal(where, lose)}; '{shlex.join(sign)}' signs the CSR, or give "
            f"another --out{pending.way_out(where)}"
        )
    outputs = OutputSet(force=opts.force)
    outputs.add(opts.out / ("tls.p12" if opts.p12 else "tls.crt"), b"")
    _remove_other_format(outputs, opts.out, p12=opts.p12)
    outputs.check()
    ca = open_ca_dir(opts.ca_dir, opts.ca_password_file)
    key = generate_private_key(kt)
    issued = ca.issue(
        key.public_key(),
        name,
        profile=prof,
        validity=lifetime,
        now=utcnow(),
        sans=sans,
        crl_urls=crl_urls,
        ca_issuers_urls=ca_issuers_urls,
        # The flags that add the name: the pki warning names them.
        name_hint=NameHint("add --dns {name}", "add --ip {name}"),
    )
    for message in issued.warnings:
        warn(message)
    for filename, data, secret in leaf_files(
        ca, issued.certificate, key, p12_password=p12_password, p12_legacy=opts.p12_legacy
    ):
        outputs.add(opts.out / filename, data, secret=secret)
    outputs.commit()
    from certctl.pki.formats import format_serial

    out(
        f"issued {prof.name} certificate serial {format_serial(issued.certificate.serial_number)} "
        f"valid until {issued.certificate.not_valid_after_utc:%Y-%m-%d}"
    )
    for path in outputs.paths:
        out(f"  {path}")
    # The other format's files --force removed: before, the user learnt it from ls.
    for path in outputs.removed:
        out(f"  removed {path}")


def checked_urls(values: Sequence[str], option: str) -> tuple[str, ...]:
    """The values of ``option`` (``--crl-url``, ``--ca-issuers-url``), each checked.

    Both are URLs every client that sees the certificate may fetch, so one rule set
    (``distribution.check_certificate_url``); repeated values are given once.

    Raises:
        UsageProblem: ``OPTION VALUE: why`` for the first bad one (exit status 2, before
            any file is written).
    """
    import shlex

    from certctl.errors import InvalidRequest
    from certctl.pki.distribution import check_certificate_url

    checked: list[str] = []
    for value in values:
        try:
            url = check_certificate_url(value)
        except InvalidRequest as exc:
            shown = ascii(value)[1:-1] if not value.isprintable() else value
            raise UsageProblem(f"{option} {shlex.quote(shown)}: {exc.detail}") from None
        if url not in checked:
            checked.append(url)
    return tuple(checked)


def _remove_other_format(
    outputs: OutputSet, directory: Path, *, p12: bool, p12_name: str = "tls"
) -> None:
    """Stage the removal of the files of the format not written (they need ``--force``).

    PEM output is ``tls.crt`` and ``tls.key``; PKCS#12 output is ``<p12_name>.p12``.

    A certificate re-issued with --force as PKCS#12 over PEM files (or the other way round)
    left the old tls.crt and tls.key beside the new tls.p12: a server reading them kept the
    certificate and key the command had just replaced.
    """
    for stale in ("tls.crt", "tls.key") if p12 else (f"{p12_name}.p12",):
        outputs.remove(directory / stale)


def _warn_about_password(p12_password: bytes | None) -> None:
    from certctl.pki.formats import pkcs12_password_warning

    if p12_password is not None and (message := pkcs12_password_warning(p12_password)):
        warn(message)


def _check_combinations(opts: IssueOptions) -> None:
    """Refuse options that contradict each other or would be ignored without a word."""
    if opts.cn is not None and opts.subject is not None:
        raise UsageProblem("--cn and --subject exclude each other (put the CN in --subject)")
    if opts.password is not None and opts.password_file is not None:
        raise UsageProblem("--password and --password-file exclude each other")
    if opts.p12 and opts.pem:
        raise UsageProblem("--p12 and --pem exclude each other")
    keystore_options = [
        option
        for option, given in (
            ("--password", opts.password is not None),
            ("--password-file", opts.password_file is not None),
            ("--p12-legacy", opts.p12_legacy),
        )
        if given
    ]
    if not keystore_options:
        return
    # These options only shape a PKCS#12 file; PEM output would write the key unencrypted
    # although a password was given.
    option = keystore_options[0]
    why = (
        "it picks the PKCS#12 encryption"
        if option == "--p12-legacy"
        else "PEM keys are written unencrypted"
    )
    if opts.instances is None and not opts.p12:
        raise UsageProblem(f"{option} needs --p12 ({why})")
    if opts.instances is not None and opts.pem:
        raise UsageProblem(f"{option} does not go with --pem ({why})")


def _issue_batch(
    opts: IssueOptions,
    instances_path: Path,
    prof: Profile,
    lifetime: timedelta,
    kt: KeyType,
    p12_password: bytes | None,
    out: Callable[[str], None],
    crl_urls: tuple[str, ...] = (),
    ca_issuers_urls: tuple[str, ...] = (),
) -> None:
    from certctl.cli._storedzip import StoredZip, dos_stamp
    from certctl.errors import InvalidRequest
    from certctl.files import OutputSet
    from certctl.pki.instances import parse_instances

    try:
        text = read_file(instances_path, "instances file").decode("utf-8")
    except UnicodeDecodeError:
        # The file's content, not the command line: a failure (exit 1), as `apply -f` says it.
        raise InvalidRequest(f"{instances_path}: not UTF-8 text") from None
    try:
        todo = parse_instances(text)
    except InvalidRequest as exc:
        # Named as a missing or unreadable file is, and as `apply -f FILE` names its file.
        raise InvalidRequest(f"{instances_path}: {exc.detail}") from None
    as_zip = opts.out.suffix.lower() == ".zip"
    outputs = OutputSet(force=opts.force)
    if as_zip:
        outputs.add(opts.out, b"")
    else:
        for inst in todo:
            outputs.add(
                opts.out
                / inst.filename
                / ("tls.crt" if p12_password is None else f"{inst.filename}.p12"),
                b"",
            )
    outputs.check()
    outputs = OutputSet(force=opts.force)
    if not as_zip:
        for inst in todo:
            _remove_other_format(
                outputs,
                opts.out / inst.filename,
                p12=p12_password is not None,
                p12_name=inst.filename,
            )
        outputs.check()  # an output of the other format needs --force too, as one to replace
    ca = open_ca_dir(opts.ca_dir, opts.ca_password_file)
    now = utcnow()
    stamp = dos_stamp(now.timetuple()[:6]) if as_zip else None
    archive = StoredZip(stamp) if stamp is not None else None
    job = _BatchJob(
        ca,
        todo,
        prof,
        lifetime,
        kt,
        now,
        p12_password,
        opts.p12_legacy,
        stamp=stamp,
        # Keep the chunk count within what the worker pool takes at once.
        chunk=max(_CHUNK, -(-len(todo) // _MAX_CHUNKS)),
        crl_urls=crl_urls,
        ca_issuers_urls=ca_issuers_urls,
    )
    warned: set[str] = set()
    chunks = _run_batch(job)
    try:
        # The progress bar (a thread) starts only after the workers are forked.
        first = next(chunks, None)
        with _progress(len(todo)) as advance:
            chunk = first
            while chunk is not None:
                for message in chunk.warnings:
                    if message not in warned:
                        warned.add(message)
                        warn(message)
                if archive is not None:
                    archive.add(chunk.blob, chunk.entries)
                else:
                    for relpath, data, secret in chunk.files:
                        outputs.add(opts.out / relpath, data, secret=secret)
                advance(chunk.count)
                chunk = next(chunks, None)
    finally:
        chunks.close()
    if archive is not None:
        # The archive holds private keys: the file itself is 0600.
        outputs.add(opts.out, archive.getvalue(), secret=True)
    outputs.commit()
    what = "zip" if as_zip else "directory"
    noun = "certificate" if len(todo) == 1 else "certificates"
    out(f"issued {len(todo)} {noun} into {what} {opts.out}")
    if removed := len(outputs.removed):
        # A count, as the files written are: one line per file would be thousands.
        kind = "PEM" if p12_password is not None else "PKCS#12"
        files = "file" if removed == 1 else "files"
        out(f"  removed {removed} {kind} {files} of an earlier run (the other format)")


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
    # Set for zip output: workers then return ready-made zip entries.
    stamp: tuple[int, int] | None = None
    chunk: int = 32
    crl_urls: tuple[str, ...] = ()
    ca_issuers_urls: tuple[str, ...] = ()


@dataclass
class _Chunk:
    """What a worker sends back for a run of consecutive instances (pickled once)."""

    count: int
    # Warnings in order of first appearance within the chunk.
    warnings: list[str]
    # Zip output: local entries back to back, and the central directory fields.
    blob: bytes = b""
    entries: list[Entry] = field(default_factory=list)
    # Directory output: (path relative to --out, data, is_secret).
    files: list[tuple[str, bytes, bool]] = field(default_factory=list)


# Below this many certificates, forking workers costs more than it saves.
_PARALLEL_FROM = 200
# Smaller chunks balance two cores better at the end of a batch; 32 certificates are ~5 ms.
_CHUNK = 32
_MAX_CHUNKS = 4096  # _forkpool.MAX_TASKS, without importing the pool for small batches
_SECRET_ZIP_MODE = 0o100600
_PUBLIC_ZIP_MODE = 0o100644


def _issue_chunk(job: _BatchJob, number: int) -> _Chunk:
    from certctl.cli._storedzip import local_entry
    from certctl.pki.distinguished_names import common_name_dn
    from certctl.pki.issue import NameHint
    from certctl.pki.keys import generate_private_key

    start = number * job.chunk
    stop = min(start + job.chunk, len(job.instances))
    warnings: dict[str, None] = {}
    parts: list[bytes] = []
    entries: list[Entry] = []
    files: list[tuple[str, bytes, bool]] = []
    offset = 0
    ca, stamp = job.ca, job.stamp
    # The names come from the instances file: its dns and ip lists take the missing one.
    hint = NameHint("add it to the instance's dns list", "add it to the instance's ip list")
    for inst in job.instances[start:stop]:
        key = generate_private_key(job.key_type)
        issued = ca.issue(
            key.public_key(),
            inst.subject if inst.subject is not None else common_name_dn(inst.common_name),
            profile=job.profile,
            validity=job.validity,
            now=job.now,
            sans=inst.sans,
            crl_urls=job.crl_urls,
            ca_issuers_urls=job.ca_issuers_urls,
            name_hint=hint,
        )
        warnings.update(dict.fromkeys(issued.warnings))
        name = "tls" if job.p12_password is None else inst.filename
        for filename, data, secret in leaf_files(
            ca,
            issued.certificate,
            key,
            p12_password=job.p12_password,
            p12_legacy=job.p12_legacy,
            name=name,
        ):
            relpath = f"{inst.filename}/{filename}"
            if stamp is None:
                files.append((relpath, data, secret))
                continue
            mode = _SECRET_ZIP_MODE if secret else _PUBLIC_ZIP_MODE
            blob, entry = local_entry(relpath, data, mode, stamp, offset)
            parts.append(blob)
            entries.append(entry)
            offset += len(blob)
    return _Chunk(stop - start, list(warnings), b"".join(parts), entries, files)


def _run_batch(job: _BatchJob) -> Generator[_Chunk, None, None]:
    """Yield the chunks of the batch in order; large batches use every core.

    Signing is CPU-bound and holds the GIL, so threads would not help; fork()ed workers
    inherit the loaded CA, so the CA key is never serialised or re-read.
    """
    total = len(job.instances)
    count = -(-total // job.chunk)
    workers = min(os.cpu_count() or 1, 8)
    if total < _PARALLEL_FROM or workers < 2 or not hasattr(os, "fork"):
        for number in range(count):
            yield _issue_chunk(job, number)
        return
    from certctl.cli._forkpool import fork_map

    yield from fork_map(lambda number: _issue_chunk(job, number), count, workers)


class _progress:
    """A Rich progress bar on a terminal; silent otherwise (CI logs stay clean)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._bar: Progress | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not sys.stderr.isatty():
            return lambda n: None
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
        return lambda n: progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
