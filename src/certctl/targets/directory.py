"""Directory target: every file of a bundle changes together, then a reload command runs.

The configured path is a symlink to a versioned directory (as Kubernetes does with a Secret
volume's ``..data``). A new bundle is written into a fresh version directory and the symlink
is replaced with one ``rename()``, so a reader sees either the old set or the new set, never
``tls.crt`` from one and ``tls.key`` from the other.
"""

from __future__ import annotations

import contextlib
import errno
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
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


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle; ``secret`` files are written 0600, 0640 when given a group."""

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
    check: Callable[[Path], str | None] | None = None,
    service: str | None = None,
    keeps: Callable[[str, Path], bool] | None = None,
) -> str:
    """Write ``files`` as a new version and switch ``path`` to it atomically.

    The parent directory is opened once and everything happens relative to that handle:
    ``check`` judges the path it really is (``/proc/self/fd``), and a symlink swapped in on
    the way afterwards changes nothing. Only the key file is given to ``owner``/``group``;
    the directories stay the server's, so the owner cannot replace what it reads.
    ``service`` claims the versions directory for that service (see ``_claim``); ``keeps``
    says whether the service that claimed it still delivers to that real path.

    Returns:
        The version directory's name.

    Raises:
        DeliveryError: the path is an unmanaged directory, ``check`` refused it, or
            writing/swapping failed.
    """
    uid, gid = _resolve_id(owner, "user"), _resolve_id(group, "group")
    digest = hashlib.sha256(b"".join(n.encode() + f.data for n, f in sorted(files.items())))
    name, versions_name = path.name, _versions_dir(path).name
    version_name = f"{time.time_ns():x}-{digest.hexdigest()[:12]}"
    link_tmp = f".{name}.{os.getpid()}.link"
    try:
        parent = _open_parent(path, check)
    except OSError as exc:
        raise DeliveryError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from exc
    versions = version = -1
    committed = False
    try:
        _take_place(parent, name, path)
        versions = _open_versions(parent, versions_name, path)
        if service is not None:
            real = opened_path(parent, path.parent) / name
            _claim(versions, service, path, make=True, keeps=partial(_keeps, keeps, real))
        os.mkdir(version_name, 0o700, dir_fd=versions)
        version = os.open(version_name, _DIR_NOFOLLOW, dir_fd=versions)
        for file_name, item in sorted(files.items()):
            mode = _secret_mode(gid) if item.secret else 0o644
            fd = os.open(file_name, _NEW_FILE, mode, dir_fd=version)
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
        os.fchmod(version, 0o755)  # readable once complete; tls.key inside stays 0600/0640
        os.fsync(version)
        _fsync_directory(versions)  # the new version's entry, before a link names it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link_tmp, dir_fd=parent)
        os.symlink(f"{versions_name}/{version_name}", link_tmp, dir_fd=parent)
        os.replace(link_tmp, name, src_dir_fd=parent, dst_dir_fd=parent)  # the commit point
        committed = True
        # The swap itself: without it a power cut after "delivered" (and the reload) could
        # bring the host back serving the previous key.
        _fsync_directory(parent)
        with contextlib.suppress(OSError):
            _prune(versions, keep=version_name)  # best effort: the delivery is done
    except OSError as exc:
        if versions >= 0 and not committed:
            shutil.rmtree(version_name, dir_fd=versions, ignore_errors=True)
        # Relative to the opened directory, exc.filename alone would say "tls.key". The new
        # version's name (a timestamp) and the link's (a pid) are named for what they are:
        # they differ at each try, and a message that changes is a new failure to report.
        what = str(path)
        if exc.filename:
            where = str(exc.filename)
            if version_name in where:
                where = f"new version in {versions_name}"
            elif where == link_tmp:
                where = "new link"
            what = f"{path} ({where})"
        raise DeliveryError(f"cannot write {what}: {exc.strerror or exc}") from exc
    except BaseException:
        # Anything else (an id chown cannot take, an interrupt, a refusal) must not leave a
        # copy of the private key behind in a version nobody links to.
        if versions >= 0 and not committed:
            shutil.rmtree(version_name, dir_fd=versions, ignore_errors=True)
        raise
    finally:
        for fd in (version, versions, parent):
            if fd >= 0:
                os.close(fd)
    return version_name


def _fsync_directory(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems without dir fsync
            raise


def _secret_mode(gid: int) -> int:
    """The key file's mode: 0640 when it is given to a group, so that group can read it.

    A ``group`` names who must read the key (``root:ssl-cert 0640`` on Debian; a service
    running under its own group); kept 0600, the file was that group's but closed to it.
    """
    return 0o640 if gid >= 0 else 0o600


_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _take_place(parent: int, name: str, path: Path) -> None:
    """Refuse what is at ``name`` unless it is certctl's link (or an empty directory)."""
    try:
        info = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        link = os.readlink(name, dir_fd=parent)
        if not _ours_link(link, name):
            # Someone else's link (/etc/ssl/certs, a Kubernetes ..data): replacing it
            # would break whatever it served, and its versions were never ours to prune.
            raise DeliveryError(
                f"{path} is a symlink certctl did not make (to {link}); move it away"
            )
        return
    if stat.S_ISDIR(info.st_mode):
        fd = os.open(name, _DIR_NOFOLLOW, dir_fd=parent)
        try:
            empty = not os.listdir(fd)
        finally:
            os.close(fd)
        if empty:
            os.rmdir(name, dir_fd=parent)  # an empty placeholder directory is ours to replace
            return
    raise DeliveryError(
        f"{path} exists and is not managed by certctl (expected a symlink); move it away"
    )


def _open_versions(parent: int, versions_name: str, path: Path) -> int:
    """The versions directory, made if missing; refused unless a real directory of ours.

    Planted as a symlink (by whoever can write the target's parent), it would have the key
    written elsewhere and _prune delete that directory's contents.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(versions_name, 0o755, dir_fd=parent)
    where = path.parent / versions_name
    try:
        fd = os.open(versions_name, _DIR_NOFOLLOW, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise DeliveryError(f"{where} is not a directory certctl made; move it away") from None
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise DeliveryError(
                f"{where} belongs to uid {info.st_uid}, not to certctl; move it away"
            )
        if stat.S_IMODE(info.st_mode) != 0o755:
            os.fchmod(fd, 0o755)  # not the umask's say: readers need to traverse it
    except BaseException:
        os.close(fd)  # never leaked, even on a read-only file system (EROFS each pass)
        raise
    return fd


_OWNER_FILE = ".service"


def _keeps(keeps: Callable[[str, Path], bool] | None, real: Path, owner: str) -> bool:
    return True if keeps is None else keeps(owner, real)


def _claim(
    versions: int, service: str, path: Path, *, make: bool, keeps: Callable[[str], bool]
) -> None:
    """Refuse a versions directory another service's deliveries made, and still makes.

    Two services never name one target (checked when a spec is stored), but a parent
    swapped for a link later can make two paths one: a service would replace the other's
    files (and prune its versions). The directory says whose it is; one made before this
    file existed, or by a service deleted or aimed elsewhere since (``keeps`` says), is
    claimed by the next delivery.

    Raises:
        DeliveryError: the directory belongs to another service.
    """
    try:
        fd = os.open(_OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=versions)
    except FileNotFoundError:
        owner = None
    else:
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            owner = os.read(fd, 256).decode(errors="replace") if regular else ""
        finally:
            os.close(fd)
    if owner is not None and owner != service and keeps(owner):
        raise DeliveryError(f"{path} is the target of service {owner[:63]}; not used")
    if make and owner != service:
        tmp = f"{_OWNER_FILE}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=versions)
        fd = os.open(tmp, _NEW_FILE, 0o644, dir_fd=versions)
        try:
            os.write(fd, service.encode())
        finally:
            os.close(fd)
        os.replace(tmp, _OWNER_FILE, src_dir_fd=versions, dst_dir_fd=versions)


def opened_path(fd: int, path: Path) -> Path:
    """The real path of ``fd``, opened from ``path``: what a policy must judge.

    ``/proc/self/fd`` says it; without /proc (some containers) the resolved ``path`` is used
    if it is still the very same directory or file (device and inode), else it is refused.

    Raises:
        DeliveryError: ``path`` was swapped between the open and this check.
    """
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
    real = Path(os.path.realpath(path))
    # Walked again without following any link (the resolved path has none): a part swapped
    # for a symlink since then fails the walk or leads to another inode, and is refused.
    try:
        walk = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in real.parts[1:-1]:
                step = os.open(part, _DIR_NOFOLLOW, dir_fd=walk)
                os.close(walk)
                walk = step
            now = os.stat(real.name, dir_fd=walk, follow_symlinks=False) if real.name else None
        finally:
            os.close(walk)
    except OSError:
        now = None
    opened = os.fstat(fd)
    if now is None or (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino):
        raise DeliveryError(f"{path} changed while it was being checked; not used")
    return real


def _ours_link(link: str, name: str) -> bool:
    target = Path(link)
    return not target.is_absolute() and target.parent == Path(f".{name}.certctl")


def _ours(link: Path) -> bool:
    return _ours_link(os.readlink(link), link.name)


def _open_parent(path: Path, check: Callable[[Path], str | None] | None) -> int:
    """Open ``path``'s parent, making the missing directories, once ``check`` accepts it.

    The deepest existing ancestor is opened and judged as opened (``check`` sees where the
    target will really be); only then are the missing directories made, each relative to
    the one before and opened without following a link. A parent swapped for a symlink
    after the policy's check cannot have even an empty directory made where it leads.
    Missing parents get 0755 whatever the umask (under umask 000 they were 0777: anyone
    could have swapped the target link or planted the versions directory).

    Raises:
        DeliveryError: ``check`` refused the path.
        OSError: a directory could not be opened or made.
    """
    ancestor, missing = path.parent, []
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        missing.append(ancestor.name)
        ancestor = ancestor.parent
    fd = os.open(ancestor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if check is not None:
            problem = check(opened_path(fd, ancestor).joinpath(*reversed(missing), path.name))
            if problem is not None:
                raise DeliveryError(problem)
        for part in reversed(missing):
            made = True
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                made = False  # made meanwhile (another delivery): used if a real directory
            step = os.open(part, _DIR_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = step
            if made:
                os.fchmod(fd, 0o755)
    except BaseException:
        os.close(fd)
        raise
    return fd


_VERSION_NAME = re.compile(r"[0-9a-f]+-[0-9a-f]{12}\Z")


def _prune(versions: int, keep: str) -> None:
    # Keep the current and the previous version: a process that opened the old files by
    # path a moment before the swap can still read them. Only names certctl gives versions.
    existing = sorted(
        n
        for n in os.listdir(versions)
        if _VERSION_NAME.match(n) and stat.S_ISDIR(os.lstat(n, dir_fd=versions).st_mode)
    )
    for old in existing[:-KEEP_VERSIONS]:
        if old != keep:
            shutil.rmtree(old, dir_fd=versions, ignore_errors=True)


def directory_intact(path: Path, expected: Mapping[str, bytes | None]) -> bool:
    """Whether ``path`` is still certctl's link holding ``expected`` (None: any content).

    With nothing expected (TLS disabled) intact means gone. A target deleted, replaced or
    edited by hand is delivered again at the next reconcile instead of at the next renewal.
    Each file is read only if it is a regular file (never through a link, never blocking),
    and no further than the expected content: a FIFO or /dev/zero put there cannot hang
    or exhaust the reconciler.
    """
    if not expected:
        return not (path.is_symlink() and _ours(path))
    if not (path.is_symlink() and _ours(path)):
        return False
    for name, data in expected.items():
        try:
            fd = os.open(path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            if data is not None and os.read(fd, len(data) + 1) != data:
                return False
        except OSError:
            return False
        finally:
            os.close(fd)
    return True


def remove_directory_target(
    path: Path,
    *,
    check: Callable[[Path], str | None] | None = None,
    service: str | None = None,
    keeps: Callable[[str, Path], bool] | None = None,
) -> None:
    """Remove the symlink and every version (TLS disabled for the service).

    As ``deliver_to_directory`` writes: relative to the parent opened once, ``check`` judging
    the path it really is, so a parent swapped for a symlink after the policy's check cannot
    have another directory's link and versions removed. The versions directory is removed
    only if it is the server's own (a directory of someone else's is left as it is).

    Raises:
        DeliveryError: ``check`` refused the path as opened.
    """
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # nothing was ever delivered there
    except OSError as exc:
        raise DeliveryError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    try:
        if check is not None:
            problem = check(opened_path(parent, path.parent) / path.name)
            if problem is not None:
                raise DeliveryError(problem)
        name, versions_name = path.name, _versions_dir(path).name
        if service is not None:
            real = opened_path(parent, path.parent) / name
            keep = partial(_keeps, keeps, real)
            _claimed_by_another(parent, versions_name, service, path, keep)
        try:
            link = os.readlink(name, dir_fd=parent)
        except OSError:
            link = None  # missing, or not a link: not certctl's to remove
        if link is not None and _ours_link(link, name):
            os.unlink(name, dir_fd=parent)
        try:
            info = os.lstat(versions_name, dir_fd=parent)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            shutil.rmtree(versions_name, dir_fd=parent, ignore_errors=True)
    finally:
        os.close(parent)


def _claimed_by_another(
    parent: int, versions_name: str, service: str, path: Path, keeps: Callable[[str], bool]
) -> None:
    try:
        versions = os.open(versions_name, _DIR_NOFOLLOW, dir_fd=parent)
    except OSError:
        return  # none, or not a directory: nothing of another service's to keep
    try:
        _claim(versions, service, path, make=False, keeps=keeps)
    finally:
        os.close(versions)


# A log line's own time and process id, as nginx writes them to stderr ("2026/12/03 14:41:01
# [error] 25260#25260: open() ... failed"), also in ISO 8601: they differ at each try, and the
# reload's last line is part of the service's Failed message, so every retry read as a new
# failure (and sent "failed" again). The level and the text stay.
_LOG_STAMP = re.compile(
    r"\A\d{4}[-/]\d{2}[-/]\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})? +"
    r"(\[\w+\] +)?(?:\d+#\d+: +)?"
)
# HAProxy's prefix, its level and pid ("[ALERT]    (25260) : config : Fatal errors found in
# configuration." from 2.x, "[ALERT] 337/143512 (25260) : ..." from 1.x, time and pid): a
# failing `haproxy -c` in a reload command changed the message at each try just the same.
_HAPROXY_STAMP = re.compile(r"\A(\[[A-Z]+\]) +(?:\d{3}/\d{6} +)?\(\d+\) : ")
# A line at error level or worse: nginx's "[emerg]", "[alert]", "[crit]" and "[error]"
# (prefixed "nginx: " or by its time and pid), HAProxy's "[ALERT]"; not a warning or notice.
_TAIL_BYTES = 4096  # of a reload's output kept, for its failure message
_ERROR_LEVEL = re.compile(r"(?:\A|\s)\[(?:emerg|alert|crit|error)\]", re.IGNORECASE)


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
    try:
        # Its own session, so a timeout kills what it started too.
        process = subprocess.Popen(
            argv,
            # Not CERTCTL_MASTER_KEY (it decrypts every stored key) nor CERTCTL_DATABASE_URL
            # (its password): the command and whatever it starts would read them in
            # /proc/<pid>/environ, crash reports and env dumps.
            env={k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise DeliveryError(f"reload command not found: {argv[0]}") from None
    except PermissionError:
        raise DeliveryError(f"reload command not executable: {argv[0]}") from None
    assert process.stdout is not None
    try:
        returncode, tail = _wait_draining(process, process.stdout.fileno(), timeout_s)
    finally:
        # Closed as soon as the command itself is done: a daemon it started that still
        # writes there gets EPIPE, instead of certctl keeping (or buffering) its output.
        process.stdout.close()
    if returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise DeliveryError(f"reload command timed out after {timeout_s:g}s")
    if returncode == 0:
        return
    lines = tail.decode(errors="replace").strip().splitlines()
    if len(tail) >= _TAIL_BYTES and len(lines) > 1:
        # Output cut to its tail: the first line is a part, which differs with the length
        # of what came before, and so would the message of each retry.
        lines = lines[1:]
    # The first error a server named, else the last line: `nginx -t && nginx -s reload`
    # (the README's reload) ends with "configuration file … test failed" and HAProxy with
    # "Fatal errors found in configuration.", after the line saying what is wrong.
    chosen = next((x for x in lines if _ERROR_LEVEL.search(x)), lines[-1] if lines else "")
    line = _HAPROXY_STAMP.sub(r"\1 ", _LOG_STAMP.sub(r"\1", chosen))
    detail = _printable(line)[:200]
    raise DeliveryError(f"reload command exited {returncode}" + (f": {detail}" if detail else ""))


def _wait_draining(
    process: subprocess.Popen[bytes], fd: int, timeout_s: float
) -> tuple[int | None, bytes]:
    """Wait for ``process`` (not for what it left running), keeping its last 4 KiB of output.

    Returns:
        Its exit status (None on timeout) and the tail of its output.
    """
    import select

    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout_s
    tail = b""
    while True:
        returncode = process.poll()
        ready, _, _ = select.select([fd], [], [], 0 if returncode is not None else 0.05)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                chunk = b""
            tail = (tail + chunk)[-_TAIL_BYTES:]
            if not chunk and returncode is None:
                # End of output (closed by everyone holding it) but still running: the
                # pipe stays "readable" for ever, so stop polling it and just wait.
                try:
                    return process.wait(max(0.0, deadline - time.monotonic())), tail
                except subprocess.TimeoutExpired:
                    return None, tail
        if returncode is not None:
            # One last read above, no more: a daemon it started may write there forever.
            return returncode, tail
        if time.monotonic() >= deadline:
            return None, tail


def _printable(text: str) -> str:
    # One readable line for a status message and a log: no escape sequences, no control
    # characters, and no API key a script happened to print.
    from certctl.auth.apikeys import redact_keys

    cleaned = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return redact_keys(cleaned)
