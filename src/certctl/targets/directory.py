"""Directory target: every file of a bundle changes together, then a reload command runs.

The configured path is a symlink to a versioned directory (as Kubernetes does with a Secret
volume's ``..data``). A new bundle is written into a fresh version directory and the symlink
is replaced with one ``rename()``, so a reader sees either the old set or the new set, never
``tls.crt`` from one and ``tls.key`` from the other.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from certctl.errors import CertctlError

__all__ = [
    "BundleFile",
    "DeliveryError",
    "deliver_to_directory",
    "directory_intact",
    "remove_directory_target",
    "run_reload",
]

KEEP_VERSIONS = 2


class DeliveryError(CertctlError):
    """A bundle could not be delivered (write, swap or reload failed)."""

    title = "Delivery failed"


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle; ``secret`` files are written 0600 (and chowned when asked)."""

    data: bytes
    secret: bool = False


def _versions_dir(path: Path) -> Path:
    return path.parent / f".{path.name}.certctl"


def _resolve_id(value: str | int | None, kind: str) -> int:
    if value is None:
        return -1
    if isinstance(value, int) or (value.isascii() and value.isdigit()):
        if not 0 <= int(value) < 2**32 - 1:  # specs stored before the API checked the range
            raise DeliveryError(f"{kind} id {value} is out of range")
        return int(value)
    try:
        if kind == "user":
            return pwd.getpwnam(value).pw_uid
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise DeliveryError(f"{kind} {value!r} does not exist on this host") from None


def deliver_to_directory(
    path: Path,
    files: Mapping[str, BundleFile],
    *,
    owner: str | int | None = None,
    group: str | int | None = None,
) -> str:
    """Write ``files`` as a new version and switch ``path`` to it atomically.

    Returns:
        The version directory's name.

    Raises:
        DeliveryError: the path is an unmanaged directory, or writing/swapping failed.
    """
    uid, gid = _resolve_id(owner, "user"), _resolve_id(group, "group")
    if path.is_symlink() and not _ours(path):
        # Someone else's link (/etc/ssl/certs, a Kubernetes ..data): replacing it would
        # break whatever it served, and its versions were never ours to prune.
        raise DeliveryError(
            f"{path} is a symlink certctl did not make (to {os.readlink(path)}); move it away"
        )
    if path.exists() and not path.is_symlink():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # an empty placeholder directory is ours to replace
        else:
            raise DeliveryError(
                f"{path} exists and is not managed by certctl (expected a symlink); move it away"
            )
    digest = hashlib.sha256(b"".join(n.encode() + f.data for n, f in sorted(files.items())))
    versions = _versions_dir(path)
    _check_versions_dir(versions)
    version = versions / f"{time.time_ns():x}-{digest.hexdigest()[:12]}"
    try:
        _make_dirs(path.parent)
        if not versions.is_dir():
            versions.mkdir(mode=0o755)
            os.chmod(versions, 0o755)  # not the umask's say: readers need to traverse it
        version.mkdir(mode=0o755)
        os.chmod(version, 0o755)  # tls.key inside stays 0600
        for name, item in sorted(files.items()):
            target = version / name
            mode = 0o600 if item.secret else 0o644
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            try:
                os.fchmod(fd, mode)
                view = memoryview(item.data)
                while view:
                    view = view[os.write(fd, view) :]
                if item.secret and (uid >= 0 or gid >= 0):
                    os.fchown(fd, uid, gid)
                os.fsync(fd)
            finally:
                os.close(fd)
        if uid >= 0 or gid >= 0:
            os.chown(version, uid, gid)
        dir_fd = os.open(version, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        link_tmp = path.parent / f".{path.name}.{os.getpid()}.link"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link_tmp)
        os.symlink(os.path.relpath(version, path.parent), link_tmp)
        os.replace(link_tmp, path)  # the commit point
    except OSError as exc:
        shutil.rmtree(version, ignore_errors=True)
        raise DeliveryError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from exc
    except BaseException:
        # Anything else (an id chown cannot take, an interrupt) must not leave a copy of the
        # private key behind in a version nobody links to.
        shutil.rmtree(version, ignore_errors=True)
        raise
    _prune(versions, keep=version)
    return version.name


def _ours(link: Path) -> bool:
    target = Path(os.readlink(link))
    return not target.is_absolute() and target.parent == Path(_versions_dir(link).name)


def _check_versions_dir(versions: Path) -> None:
    # Planted as a symlink (by whoever can write the target's parent), it would have the
    # key written elsewhere and _prune delete that directory's contents.
    try:
        info = versions.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        raise DeliveryError(f"{versions} is not a directory certctl made; move it away")
    if info.st_uid != os.geteuid():
        raise DeliveryError(
            f"{versions} belongs to uid {info.st_uid}, not to certctl; move it away"
        )


def _make_dirs(path: Path) -> None:
    # Missing parents get 0755 whatever the umask (under umask 000 they were 0777: anyone
    # could have swapped the target link or planted the versions directory).
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o755)
            os.chmod(directory, 0o755)


_VERSION_NAME = re.compile(r"[0-9a-f]+-[0-9a-f]{12}\Z")


def _prune(versions: Path, keep: Path) -> None:
    # Keep the current and the previous version: a process that opened the old files by
    # path a moment before the swap can still read them. Only names certctl gives versions.
    existing = sorted(
        (
            p
            for p in versions.iterdir()
            if _VERSION_NAME.match(p.name) and p.is_dir() and not p.is_symlink()
        ),
        key=lambda p: p.name,
    )
    for old in existing[:-KEEP_VERSIONS]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def directory_intact(path: Path, expected: Mapping[str, bytes | None]) -> bool:
    """Whether ``path`` is still certctl's link holding ``expected`` (None: any content).

    With nothing expected (TLS disabled) intact means gone. A target deleted, replaced or
    edited by hand is delivered again at the next reconcile instead of at the next renewal.
    """
    if not expected:
        return not (path.is_symlink() and _ours(path))
    if not (path.is_symlink() and _ours(path)):
        return False
    for name, data in expected.items():
        try:
            if data is None:
                if not (path / name).is_file():
                    return False
            elif (path / name).read_bytes() != data:
                return False
        except OSError:
            return False
    return True


def remove_directory_target(path: Path) -> None:
    """Remove the symlink and every version (TLS disabled for the service)."""
    if path.is_symlink() and _ours(path):
        path.unlink()
    versions = _versions_dir(path)
    if versions.is_dir() and not versions.is_symlink():
        shutil.rmtree(versions, ignore_errors=True)


def run_reload(command: str, timeout_s: float) -> None:
    """Run a reload command (no shell) with a timeout.

    Raises:
        DeliveryError: the command is missing, timed out or exited non-zero; the message
            carries the exit status and the tail of its output.
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise DeliveryError(f"reload command cannot be parsed: {exc}") from None
    if not argv:
        return
    import tempfile

    # Output to a file, not pipes: waiting on pipes waits for whatever the command started
    # and left running (a daemon it launched, a child that escaped with setsid), and a
    # reload that started one and exited 0 would have counted as timed out.
    with tempfile.TemporaryFile() as output:
        try:
            # Its own session, so a timeout kills what it started too.
            process = subprocess.Popen(
                argv,
                # Not CERTCTL_MASTER_KEY (it decrypts every stored key) nor
                # CERTCTL_DATABASE_URL (its password): the command and whatever it starts
                # would read them in /proc/<pid>/environ, crash reports and env dumps.
                env={k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise DeliveryError(f"reload command not found: {argv[0]}") from None
        except PermissionError:
            raise DeliveryError(f"reload command not executable: {argv[0]}") from None
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise DeliveryError(f"reload command timed out after {timeout_s:g}s") from None
        if returncode == 0:
            return
        output.seek(max(0, output.seek(0, os.SEEK_END) - 4096))
        tail = output.read().decode(errors="replace").strip().splitlines()[-1:]
    raise DeliveryError(
        f"reload command exited {returncode}" + (f": {tail[0][:200]}" if tail else "")
    )
