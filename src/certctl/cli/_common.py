"""Helpers shared by the CLI commands: reading inputs, passwords, CA directories, output."""

from __future__ import annotations

import itertools
import os
import sys
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from certctl.errors import CertctlError, InvalidRequest, NotFound, WrongPassword

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from cryptography import x509

    from certctl.pki import CertificateAuthority, Material

__all__ = [
    "KEY_TYPES",
    "KEY_TYPES_HELP",
    "PendingKey",
    "UsageProblem",
    "holds_another_key",
    "is_stdin",
    "load_ca_dir",
    "not_stdout",
    "option_value",
    "read_file",
    "read_material",
    "read_password",
    "refuse_expired_ca",
    "split_commas",
    "split_names",
    "utcnow",
    "warn",
]

# The --key-type values, as KeyType (not imported: it would load cryptography for --help) and
# its "choose one of" error list them: each named in full, so every command's help and the
# error read alike (some helps said "rsa-2048|3072|4096", others "rsa-2048, rsa-3072, …").
KEY_TYPES = ("ec-p256", "ec-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096")
KEY_TYPES_HELP = ", ".join(KEY_TYPES)
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_CHAIN = "ca-chain.crt"
# Inputs are read whole: a bound keeps `inspect /dev/zero` (or a mistyped huge file) from
# reading until MemoryError. 16 MiB holds any certificate bundle or CRL certctl meets.
MAX_INPUT_BYTES = 16 * 1024 * 1024
MAX_PASSWORD_BYTES = 4096
# Standard input as read by a password option ("-"), with the stream it came from: verify
# asks for the password once per file, and a stream can be read only once.
_stdin_password: list[tuple[object, bytes]] = []


class UsageProblem(Exception):
    """A bad command line: a value certctl refuses, options that do not go together.

    Exit status 2, as for the usage errors click finds itself (DESIGN.md: 0 success, 1
    failure, 2 usage error): a duration "9X" is as much a usage error as "--workers four".
    Typer-free, so that the fast ``cert issue`` route raises it too; every command's class
    (``_app``) reports it as click's ``BadParameter``, with the command's help hint.
    ``param_hint``: the option whose value is refused (``--validity``), named in the message.
    """

    def __init__(self, message: str, param_hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param_hint = param_hint


@contextmanager
def option_value(option: str | None = None) -> Iterator[None]:
    """Report an ``InvalidRequest`` raised in the block as a usage error of ``option``.

    For the parsing of a value typed on the command line, or in the variable standing for an
    option (``CERTCTL_URL``): the parsers (``parse_duration``, ``KeyType.parse``, ``parse_dn``
    …) raise ``InvalidRequest``, the API's 400, which the CLI reported as a failure (exit 1)
    like a file that does not verify. Only the parsing goes in the block: what the value
    names failing later (a file not found, a server's refusal) stays a failure. ``option``:
    None when the message already names the value and the options are several (--dns, --ip).
    """
    try:
        yield
    except InvalidRequest as exc:
        raise UsageProblem(exc.detail, param_hint=option) from None


def not_stdout(value: Path | None) -> Path | None:
    """An ``--out`` of an offline command, refused when it is ``-`` (a Typer callback).

    These commands write files (keys 0600, by atomic rename), not a stream: ``--out -`` made a
    directory or a file named ``-`` where the user expected standard output.
    """
    if value is not None and str(value) == "-":
        import typer

        raise typer.BadParameter(
            "'-' (standard output) is not supported: certctl writes files here; name a path "
            "(for one called '-', give its full path)"
        )
    return value


def split_commas(values: Sequence[str]) -> list[str]:
    """``--dns``/``--ip``/``--email`` values, comma-separated lists split as certutil does.

    ``--dns a.example,b.example`` is elasticsearch-certutil's way to give two names (a comma
    is in no DNS name, IP address or e-mail address certctl takes; ``--uri`` is not split, a
    comma may be part of a URI). Empty items (``a.example,``) are dropped; a value of commas alone
    is kept whole, to be refused as the empty name it is.
    """
    items: list[str] = []
    for value in values:
        parts = [part.strip() for part in value.split(",") if part.strip()]
        items += parts if parts and "," in value else [value]
    return items


def split_names(values: Sequence[str]) -> list[str]:
    """``--dns``/``--ip``/``--email`` values as ``split_commas`` splits them, none holding a space.

    Commas separate names, as in elasticsearch-certutil; a space is in no DNS name, IP or
    e-mail address, so ``"a.example b.example"`` is a list typed the wrong way, named as such
    rather than as "invalid DNS name" (or split silently, as the http wizard did). An item
    whose words are not all names (``"Alice <a@x.example>"``) is no list: it is left whole,
    for the caller's parser to refuse in its own words.

    Raises:
        InvalidRequest: an item is names separated by whitespace; the message names it and
            the list with commas.
    """
    items = split_commas(values)
    for item in items:
        words = item.split()
        if len(words) > 1 and all(map(_is_a_name, words)):
            raise InvalidRequest(
                f"{item!r}: separate names and addresses with commas, not spaces "
                f"({','.join(words)})"
            )
    return items


def _is_a_name(word: str) -> bool:
    """Whether ``word`` is a DNS name, an IP address or an e-mail address certctl takes."""
    from certctl.pki import SubjectAltNames

    for field in ("dns", "ip", "email"):
        try:
            SubjectAltNames.parse(**{field: [word]})
        except CertctlError:
            continue
        return True
    return False


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def warn(message: str) -> None:
    """Print ``message`` as a one-line warning on stderr, control characters escaped."""
    # A warning may quote a server's answer or a requester's name: as certctl: error: lines.
    from certctl.cli._listing import printable

    sys.stderr.write(f"certctl: warning: {printable(' '.join(message.split()))}\n")


def read_file(path: Path, what: str = "file", limit: int = MAX_INPUT_BYTES) -> bytes:
    """Read ``path`` (at most ``limit`` bytes) or raise a one-line error naming it."""
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)  # one byte more tells "too large" from "exactly full"
    except FileNotFoundError:
        raise NotFound(f"{path}: {what} not found") from None
    except IsADirectoryError:
        article = "an" if what[:1] in "aeiou" else "a"
        raise InvalidRequest(f"{path}: is a directory, expected {article} {what}") from None
    except PermissionError:
        raise InvalidRequest(f"{path}: permission denied") from None
    if len(data) > limit:
        size = f"{limit // 1048576} MiB" if limit >= 1048576 else f"{limit // 1024} KiB"
        raise InvalidRequest(f"{path}: {what} is larger than {size}")
    return data


def is_stdin(password_file: Path | None) -> bool:
    """Whether a password-file option says ``-``: the password comes on standard input."""
    return password_file is not None and str(password_file) == "-"


def read_password(
    password_file: Path | None, password: str | None = None, *, env: str = "CERTCTL_PASSWORD"
) -> bytes | None:
    """Return a password from ``--password-file``, ``--password`` or the environment.

    A trailing newline in the file is dropped (``echo secret > pw`` works); a file of more
    lines is refused. A ``password_file`` of ``-`` is standard input (as openssl's
    ``-passin stdin``), read once whatever the number of calls, under the same rule.
    """
    if password_file is not None:
        from certctl.pki.formats import password_file_line

        if is_stdin(password_file):
            raw, source = _read_stdin_password(), "standard input"
            label = source
        else:
            raw = read_file(password_file, "password file", MAX_PASSWORD_BYTES)
            source, label = str(password_file), f"{password_file}: password file"
        data = password_file_line(raw, label)
        if not data:
            raise InvalidRequest(f"{label} is empty")
        return _utf8_password(data, source)
    # From here the password was typed on the command line or exported: one it cannot be is a
    # usage error (exit 2), where a password file's content is the input's (exit 1).
    if password is not None:
        if not password:
            raise UsageProblem("--password is empty")
        # Argument bytes that are not UTF-8 arrive as lone surrogates (PEP 383):
        # surrogateescape gives back the bytes typed, checked below.
        with option_value():
            return _utf8_password(password.encode("utf-8", "surrogateescape"), "--password")
    value = os.environ.get(env)
    if not value:
        return None
    with option_value():
        return _utf8_password(value.encode("utf-8", "surrogateescape"), env)


def _read_stdin_password() -> bytes:
    # Once per stream: a command reading the password for each of its inputs (verify) gets
    # the same one each time, not an empty second read.
    stream = sys.stdin
    for seen, kept in _stdin_password:
        if seen is stream:
            return kept
    if stream is None:
        raise InvalidRequest("standard input is closed: no password to read")
    # A terminal: the line typed, as openssl -passin stdin reads it (Enter, not Ctrl-D, ends).
    # Otherwise all of it (bounded), so that a second line is refused, not silently dropped.
    source = getattr(stream, "buffer", stream)  # bytes; a text stream in tests has none
    reader = source.readline if stream.isatty() else source.read
    read = reader(MAX_PASSWORD_BYTES + 1)
    data = read.encode("utf-8", "surrogateescape") if isinstance(read, str) else bytes(read)
    if len(data) > MAX_PASSWORD_BYTES:
        raise InvalidRequest("standard input: the password is larger than 4 KiB")
    _stdin_password[:] = [(stream, data)]
    return data


def _utf8_password(data: bytes, source: str) -> bytes:
    # PKCS#12 passwords are UTF-8 (cryptography refuses others); one rule for every password.
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{source}: the password is not valid UTF-8") from None
    return data


def read_material(
    path: Path,
    password: bytes | None = None,
    what: str = "file",
    *,
    password_optional: bool = False,
) -> Material:
    """Load PEM/DER/PKCS#12 content from ``path``; errors name the file.

    ``password_optional``: see :func:`certctl.pki.load_material`.
    """
    from certctl.pki import load_material

    data = read_file(path, what)
    try:
        return load_material(data, password, password_optional=password_optional)
    except InvalidRequest as exc:
        raise exc.with_detail(f"{path}: {exc.detail}") from exc


def open_ca_dir(
    directory: Path,
    password_file: Path | None,
    *,
    option: str = "--ca",
    password_option: str = "--ca-password-file",
) -> CertificateAuthority:
    """``load_ca_dir`` with the key's password from ``password_file``, else CERTCTL_CA_PASSWORD.

    The variable is a default: an unencrypted ``ca.key`` opens without it.
    """
    return load_ca_dir(
        directory,
        read_password(password_file, env="CERTCTL_CA_PASSWORD"),
        option=option,
        password_option=password_option,
        password_from_env=password_file is None,
    )


def load_ca_dir(
    directory: Path,
    password: bytes | None = None,
    *,
    option: str = "--ca",
    password_option: str = "--ca-password-file",
    password_from_env: bool = False,
) -> CertificateAuthority:
    """Load a CA directory written by ``certctl ca create`` (``ca.crt``, ``ca.key``[, chain]).

    The key is loaded once here and reused for every certificate the command signs.
    ``option`` and ``password_option`` are the running command's options for the directory
    and the key's password file, named in messages (``ca create`` has ``--parent``).
    ``password_from_env``: the password is ``CERTCTL_CA_PASSWORD``, a default exported for
    the CAs that need one, so an unencrypted ``ca.key`` opens without it (as
    ``CERTCTL_PASSWORD`` is for other inputs); a password given with the option for an
    unencrypted key is still refused, since the user meant something else.
    """
    from certctl.pki import CertificateAuthority, display_dn

    if directory.is_file():
        # elasticsearch-certutil's --ca takes a PKCS#12 file (elastic-stack-ca.p12): say how
        # to turn one (or a hand-made PEM pair) into the directory.
        raise InvalidRequest(
            f"{directory} is a file: {option} takes the CA directory (with {CA_CERT} and "
            f"{CA_KEY}; 'certctl ca import' makes one from a PKCS#12 file or a PEM pair)"
        )
    if not directory.is_dir():
        raise NotFound(f"{directory}: CA directory not found (create one with 'certctl ca create')")
    certs = read_material(directory / CA_CERT, what="CA certificate").certificates
    if not certs:
        raise InvalidRequest(f"{directory / CA_CERT}: holds no certificate")
    refuse_expired_ca(directory, certs[0])
    try:
        key = read_material(
            directory / CA_KEY, password, what="CA key", password_optional=password_from_env
        ).private_key
    except InvalidRequest as exc:
        # A CA key's password comes from the command's own option or CERTCTL_CA_PASSWORD
        # (every caller reads that variable), not from --password-file.
        sources = f"{password_option} or CERTCTL_CA_PASSWORD"
        detail = exc.detail.replace("(--password-file)", f"({sources})")
        detail = detail.replace("drop the password", f"drop the password ({sources})")
        if password_from_env and isinstance(exc, WrongPassword):
            # Exported for another CA, perhaps: the user gave no password to this command.
            detail += " (the password came from CERTCTL_CA_PASSWORD)"
        raise exc.with_detail(detail) from exc
    if key is None:
        raise InvalidRequest(f"{directory / CA_KEY}: holds no private key")
    chain: list[x509.Certificate] = []
    chain_path = directory / CA_CHAIN
    if chain_path.exists():
        listed = read_material(chain_path, what="CA chain").certificates
        # The chain file repeats ca.crt, then its issuers in order. One of another CA (an
        # older intermediate's, a hand-copied ca.crt) would put the wrong certificates
        # under every certificate issued and the wrong root in their ca.crt.
        if not listed or listed[0] != certs[0]:
            raise InvalidRequest(
                f"{chain_path}: does not start with {CA_CERT}; it belongs to another CA "
                f"(delete it for a root CA, or re-create the CA)"
            )
        for child, parent in itertools.pairwise(listed):
            if child.issuer != parent.subject:
                raise InvalidRequest(
                    f"{chain_path}: {display_dn(parent.subject)} did not issue "
                    f"{display_dn(child.subject)}: the chain is out of order or mixed"
                )
        chain = listed[1:]
    try:
        return CertificateAuthority(certs[0], key, tuple(chain))
    except InvalidRequest as exc:
        raise InvalidRequest(f"{directory}: {exc.detail}") from exc


def refuse_expired_ca(directory: Path, certificate: x509.Certificate | None = None) -> None:
    """Refuse the CA of ``directory`` once its certificate (else its ``ca.crt``) has expired.

    Every caller signs with the CA, and no client accepts what an expired one signs. Refused
    naming the directory ("issuing CA expired" named neither it nor a way out), before the
    key's password is asked for or read (its owner went looking for the password of a CA
    that could no longer sign), and before the wizard asks its other questions or a batch
    makes keys. Without a readable ``ca.crt`` nothing is said: loading it says why.
    """
    if certificate is None:
        if not (directory / CA_CERT).is_file():
            return  # a file given for the directory, or no ca.crt: loading it says so
        try:
            listed = read_material(directory / CA_CERT, what="CA certificate").certificates
        except CertctlError:
            return
        if not listed:
            return
        certificate = listed[0]
    end = certificate.not_valid_after_utc
    if end <= utcnow():
        raise InvalidRequest(
            f"{directory}: the CA certificate expired on {end:%Y-%m-%d %H:%M}Z: it can no "
            "longer sign certificates or CRLs (create a new CA with 'certctl ca create')"
        )


def holds_another_key(path: Path, public_key: object) -> bool:
    """Whether ``path`` is a certificate or unencrypted key of another key than ``public_key``.

    False when it cannot tell (no such file, an encrypted key, something else).
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    theirs: object
    try:
        data = path.read_bytes()
        if path.suffix == ".crt":
            theirs = x509.load_pem_x509_certificate(data).public_key()
        else:
            theirs = serialization.load_pem_private_key(data, None).public_key()
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return theirs != public_key


class PendingKey(NamedTuple):
    """``out/tls.key`` waiting for the certificate of ``out/tls.csr`` (``pending_csr_key``).

    ``public_key``: the CSR's. ``encrypted``: the key could not be read without its
    password, so it was taken for the CSR's key, not checked.
    """

    public_key: object
    encrypted: bool

    def refusal(self, out: Path, consequence: str) -> str:
        """The refusal's words up to the command that certifies the CSR.

        ``consequence``: what writing into ``out`` would do (``writing another certificate
        into web would lose it (nothing was issued)``).
        """
        key, csr = out / "tls.key", out / "tls.csr"
        if not self.encrypted:
            return f"{key} is the key of {csr}, which has no certificate yet: {consequence}"
        return (
            f"{key} is encrypted and {csr} beside it has no certificate yet: taken for the "
            f"CSR's key (not checked without its password), {consequence}"
        )

    def way_out(self, out: Path) -> str:
        """What the refusal says after its alternatives, when the key was not checked."""
        if not self.encrypted:
            return ""
        return f" (if {out / 'tls.key'} is not the key of {out / 'tls.csr'}, move the CSR away)"


def pending_csr_key(out: Path) -> PendingKey | None:
    """``out/tls.key`` when it waits for its certificate, else None.

    Waiting: ``out/tls.csr`` is a request of that key and ``out/tls.crt`` is not its
    certificate (``csr create --out web --force`` over a live directory leaves the old one).
    An encrypted key (``openssl req`` without ``-nodes`` writes one beside its CSR) cannot be
    compared without its password, which none of the commands writing into ``out`` is given
    (their passwords are a PKCS#12 output's or a CA key's): it is taken for the CSR's, so
    that it is never lost, rather than for nobody's. None when there is no readable CSR or
    no such key (a missing, unreadable or other file).
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    from certctl.pki import load_csr

    try:
        requested = load_csr((out / "tls.csr").read_bytes()).public_key()
        data = (out / "tls.key").read_bytes()
    except (OSError, ValueError, CertctlError):
        return None
    try:
        key = serialization.load_pem_private_key(data, None)
    except TypeError:
        # cryptography's "Password was not given but private key is encrypted": PKCS#8
        # "ENCRYPTED PRIVATE KEY" or a traditional one with "Proc-Type: 4,ENCRYPTED".
        encrypted = True
    except (ValueError, UnsupportedAlgorithm):
        return None
    else:
        if key.public_key() != requested:
            return None
        encrypted = False
    try:
        held = (out / "tls.crt").read_bytes()
        # PEM as certctl writes it, or DER as some CAs return one (a Windows CA's .cer): the
        # DER certificate of the key was taken for none, and the key for one still waiting.
        load = (
            x509.load_pem_x509_certificate
            if b"-----BEGIN" in held
            else x509.load_der_x509_certificate
        )
        certified = load(held)
    except (OSError, ValueError):
        # None yet, or not one that could go with the key.
        return PendingKey(requested, encrypted)
    return None if certified.public_key() == requested else PendingKey(requested, encrypted)
