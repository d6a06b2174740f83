"""All-or-nothing file output: stage every file, then move them into place together.

Private keys are created 0600 from the first byte (never chmod-ed after the fact), written
to a temporary name in the destination directory, fsync-ed, then renamed, so a reader never
sees a half-written key and a failed command leaves no partial output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from certctl.errors import CertctlError, Conflict

if TYPE_CHECKING:  # not imported at run time: `cert issue` starts without logging
    import logging

__all__ = [
    "SECRET_MODE",
    "OutputSet",
    "discard_stdout",
    "fsync_directory",
    "in_memory_file",
    "tighten_secret",
    "write_atomic",
]

SECRET_MODE = 0o600
_FSYNC_EACH_UP_TO = 16
PUBLIC_MODE = 0o644


class OutputError(CertctlError):
    """An output file could not be written (permissions, disk full, not a directory)."""


def write_atomic(path: Path, data: bytes, mode: int = PUBLIC_MODE, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` by temp file + fsync + rename, created with ``mode``.

    ``replace=False``: a hard link instead of the rename, which never replaces a file
    another process put there first (``FileExistsError``, that file left as it is).
    """
    import tempfile  # here, not above: batch issuance never needs it (~3 ms of start-up)

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_or_rename(tmp, path)
        fsync_directory(path.parent)  # the rename itself must survive a power cut
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _link_or_rename(tmp: str, path: Path | str) -> None:
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise  # EEXIST (FileExistsError) among them
        # A file system without hard links (some FUSE and SMB mounts): a plain rename.
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def tighten_secret(path: Path, log: logging.Logger) -> None:
    """Make a secret file that others may read 0600, with a warning; never fail for it.

    A file restored from a backup or copied by hand keeps whatever mode it got. One the
    process cannot chmod (not its own) is only warned about.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(path, SECRET_MODE)
    except OSError as exc:
        log.warning(
            "%s is mode %04o and cannot be made 0600 (%s): others may read it",
            path,
            mode,
            exc.strerror,
        )
    else:
        log.warning("%s was mode %04o; made it 0600", path, mode)


@contextlib.contextmanager
def in_memory_file(data: bytes, name: str) -> Iterator[str]:
    """A path to ``data`` for APIs that take only file names (``ssl.load_cert_chain``).

    An anonymous memory file (``memfd_create``): a private key handed over this way never
    touches a disk and is gone with the process, even one killed before any cleanup ran.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        _write_all(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make the renames and links in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems without dir fsync
            raise
    finally:
        os.close(fd)


@dataclass
class OutputSet:
    """Files to write together; nothing lands unless everything can.

    Example::

        out = OutputSet(force=False)
        out.add(Path("certs/tls.crt"), pem)
        out.add(Path("certs/tls.key"), key_pem, secret=True)
        out.commit()
    """

    force: bool = False
    _files: dict[Path, tuple[bytes, int]] = field(default_factory=dict)
    _removals: dict[Path, None] = field(default_factory=dict)
    _removed: list[Path] = field(default_factory=list)

    def add(self, path: Path, data: bytes, *, secret: bool = False) -> None:
        """Stage ``data`` for ``path``; ``secret`` files are created 0600."""
        self._removals.pop(path, None)
        self._files[path] = (data, SECRET_MODE if secret else PUBLIC_MODE)

    def remove(self, path: Path) -> None:
        """Stage the removal of ``path``, if it exists, together with the writes.

        For a file of an earlier output that would contradict the new one (an intermediate
        CA's ``ca-chain.crt`` next to the root written over it). Like an overwrite, removing
        an existing file needs ``force``; a failed commit puts it back.
        """
        if path not in self._files:
            self._removals[path] = None

    @property
    def paths(self) -> list[Path]:
        """The staged paths, in the order added."""
        return list(self._files)

    @property
    def removed(self) -> list[Path]:
        """The files :meth:`remove` staged that the last :meth:`commit` removed (they existed)."""
        return list(self._removed)

    def check(self) -> None:
        """Refuse, before anything is written, outputs that exist (unless ``force``).

        Also refuses a path whose directory cannot be made or written (a regular file on the
        way, no write permission): the API client commands check before they ask the server
        for a key that is returned once, and would otherwise lose it.

        Raises:
            Conflict: a file exists and ``force`` is off.
            OutputError: a path exists but is a directory, or its directory is not writable.
        """
        checked: set[Path] = set()  # a batch writes thousands of files into a few directories
        for path in (*self._files, *self._removals):
            if path.is_dir():
                raise OutputError(f"{path} is a directory")
            # lexists: a dangling symlink is an existing output too (it would be replaced).
            if os.path.lexists(path) and not self.force:
                raise Conflict(f"{path} already exists; use --force to overwrite")
            if path.parent not in checked:
                _check_directory(path)
                checked.add(path.parent)

    def commit(self) -> list[Path]:
        """Write every staged file, or none.

        Raises:
            Conflict: an output exists and ``force`` is off.
            OutputError: the files cannot be written; nothing is left behind.
        """
        self.check()
        with _signals_roll_back():
            return self._commit()

    def _commit(self) -> list[Path]:
        created_dirs: list[Path] = []
        staged: list[tuple[str, Path]] = []
        # Each staged file's (device, inode): the rollback knows it in its place by that, even
        # when its temp name is already gone (a signal just after the link or rename).
        made: dict[Path, tuple[int, int]] = {}
        backups: list[tuple[str, Path]] = []
        renamed: list[Path] = []
        current = Path()
        try:
            # Many files (batch issuance): write them all, then one sync() instead of an
            # fsync per file, which dominated large directory outputs.
            batch = len(self._files) > _FSYNC_EACH_UP_TO
            for index, (path, (data, mode)) in enumerate(self._files.items()):
                current = path
                if not path.parent.is_dir():
                    created_dirs += _make_parents(path.parent)
                tmp = f"{path.parent}/.{path.name}.{os.getpid()}.{index}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
                staged.append((tmp, path))
                try:
                    made[path] = _identity(os.fstat(fd))
                    os.fchmod(fd, mode)  # the umask must not loosen or tighten what we chose
                    _write_all(fd, data)
                    if not batch:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            if batch:
                os.sync()
            # Every byte is on disk. Existing files (--force) and those to remove are first
            # moved aside, so a failing rename below can put them back: all files change, or
            # none does.
            for path in [*(path for _, path in staged), *self._removals]:
                current = path
                if os.path.lexists(path):
                    if not self.force:
                        raise _AppearedMeanwhile
                    backup = f"{path.parent}/.{path.name}.{os.getpid()}.bak"
                    os.replace(path, backup)
                    backups.append((backup, path))
            for tmp, path in staged:
                current = path
                if self.force:
                    os.replace(tmp, path)
                else:
                    # A link, not a rename: never over a file another process (another
                    # certctl run on the same --out) put there since the check above.
                    try:
                        _link_or_rename(tmp, str(path))
                    except FileExistsError:
                        raise _AppearedMeanwhile from None
                renamed.append(path)
            # The renames, removals and new directories are entries of their directories:
            # without syncing those, a power cut after "issued …" could bring the machine
            # back without the files (or with the old ones), as write_atomic says.
            if batch:
                os.sync()
            else:
                changed = [*(p.parent for p in self._files), *(p.parent for p in self._removals)]
                for directory in dict.fromkeys([*(d.parent for d in created_dirs), *changed]):
                    current = directory
                    fsync_directory(directory)
        except BaseException as exc:
            # Ctrl-C (KeyboardInterrupt) too: it would otherwise leave the staged keys in
            # temp files and, with --force, the previous files moved aside under .bak names.
            _rollback(staged, made, renamed, backups, created_dirs)
            if isinstance(exc, _AppearedMeanwhile):
                raise Conflict(f"{current} already exists; use --force to overwrite") from None
            if isinstance(exc, OSError):
                raise OutputError(f"cannot write {current}: {exc.strerror or exc}") from exc
            raise
        for backup, _ in backups:
            with contextlib.suppress(OSError):
                os.unlink(backup)
        self._removed = [path for _, path in backups if path in self._removals]
        return list(self._files)


class _AppearedMeanwhile(Exception):
    """Without ``force``, an output appeared between the check and the rename."""


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while files were being committed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise _Terminated(signum)


@contextlib.contextmanager
def _signals_roll_back() -> Iterator[None]:
    """Have SIGTERM and SIGHUP roll a commit back, then end the process as they would have.

    By default they end the process at once: a ``timeout`` or a closed terminal left the new
    private keys in temp files and, with ``force``, the previous files under ``.bak`` names.
    Only signals nobody handles are taken (``certctl serve`` has its own), in the main thread.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = [
        sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) is signal.SIG_DFL
    ]
    for sig in taken:
        signal.signal(sig, _raise_terminated)
    try:
        yield
    except _Terminated as exc:
        for sig in taken:
            signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(exc.signum)  # the exit status a shell or a supervisor expects
        raise
    finally:
        for sig in taken:
            signal.signal(sig, signal.SIG_DFL)


def _check_directory(path: Path) -> None:
    """Refuse ``path`` when its nearest existing ancestor is no writable directory.

    A regular file on the way is named (:meth:`OutputSet.commit` would say "Not a directory").
    """
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        # Named: "Not a directory" alone left the user to find which part of the path.
        raise OutputError(f"cannot write {path}: {ancestor} is not a directory")
    # access() asks the kernel: a read-only mount counts too (root ignores modes only).
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: {ancestor} is not writable")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _rollback(
    staged: list[tuple[str, Path]],
    made: dict[Path, tuple[int, int]],
    renamed: list[Path],
    backups: list[tuple[str, Path]],
    created_dirs: list[Path],
) -> None:
    for path in renamed:
        with contextlib.suppress(OSError):
            os.unlink(path)
    done = set(renamed)
    for tmp, path in staged:
        with contextlib.suppress(OSError):
            if path not in done and made.get(path) == _identity(os.lstat(path)):
                # Linked or renamed into place, interrupted before it was counted (its temp
                # name may be gone already): ours, not a file another process put there.
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    for backup, path in backups:
        with contextlib.suppress(OSError):
            os.replace(backup, path)
    for directory in reversed(created_dirs):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _make_parents(directory: Path) -> list[Path]:
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=0o755)  # not 0777 under umask 000: nobody else may swap our files
    return list(reversed(missing))


def discard_stdout() -> None:
    """Point stdout's descriptor at /dev/null, once a write to it has failed.

    What is left in its buffer then goes nowhere: else each later flush (a worker's exit,
    the interpreter's own at exit) fails the same way and prints "Exception ignored".
    """
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # no stdout descriptor to point anywhere (closed, or a stand-in without one)
