"""All-or-nothing file output."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from certctl.errors import Conflict
from certctl.files import SECRET_MODE, OutputError, OutputSet, write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(autouse=True)
def _loose_umask():  # type: ignore[no-untyped-def]
    # Modes must come from certctl, not from the umask of whoever runs the tests.
    old = os.umask(0)
    yield
    os.umask(old)


def test_commit_writes_everything_with_modes(tmp_path: Path) -> None:
    out = OutputSet()
    out.add(tmp_path / "certs" / "tls.crt", b"cert")
    out.add(tmp_path / "certs" / "tls.key", b"key", secret=True)
    out.add(tmp_path / "ca.crt", b"ca")
    written = out.commit()
    assert (
        written
        == out.paths
        == [
            tmp_path / "certs" / "tls.crt",
            tmp_path / "certs" / "tls.key",
            tmp_path / "ca.crt",
        ]
    )
    assert (tmp_path / "certs" / "tls.crt").read_bytes() == b"cert"
    assert (tmp_path / "certs" / "tls.key").read_bytes() == b"key"
    assert _mode(tmp_path / "certs" / "tls.crt") == 0o644
    assert _mode(tmp_path / "certs" / "tls.key") == SECRET_MODE == 0o600
    assert _mode(tmp_path / "ca.crt") == 0o644
    assert _tree(tmp_path) == ["ca.crt", "certs", "certs/tls.crt", "certs/tls.key"]


def test_nested_parents_are_created(tmp_path: Path) -> None:
    out = OutputSet()
    out.add(tmp_path / "a" / "b" / "c" / "tls.key", b"k", secret=True)
    out.commit()
    assert (tmp_path / "a" / "b" / "c" / "tls.key").read_bytes() == b"k"


def test_add_again_replaces_staged_data(tmp_path: Path) -> None:
    out = OutputSet()
    out.add(tmp_path / "x", b"placeholder")
    out.add(tmp_path / "x", b"real", secret=True)
    out.commit()
    assert (tmp_path / "x").read_bytes() == b"real"
    assert _mode(tmp_path / "x") == 0o600


def test_refuses_existing_without_force(tmp_path: Path) -> None:
    (tmp_path / "tls.key").write_bytes(b"old")
    out = OutputSet()
    out.add(tmp_path / "tls.crt", b"new cert")
    out.add(tmp_path / "tls.key", b"new key", secret=True)
    with pytest.raises(Conflict, match=r"tls\.key already exists; use --force to overwrite"):
        out.commit()
    # Nothing written: not even the file that did not exist.
    assert _tree(tmp_path) == ["tls.key"]
    assert (tmp_path / "tls.key").read_bytes() == b"old"


def test_check_refuses_before_writing(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_bytes(b"old")
    out = OutputSet()
    out.add(tmp_path / "tls.crt", b"")
    with pytest.raises(Conflict, match="already exists"):
        out.check()


@pytest.mark.parametrize("theirs", [("tls.crt", "tls.key"), ("tls.key",)])
def test_a_file_written_meanwhile_is_never_replaced_without_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, theirs: tuple[str, ...]
) -> None:
    # Two `certctl cert issue --out d` at once both passed the check, then both renamed
    # their files: the second replaced the first's without --force, and an interleaving
    # left tls.crt of one run beside tls.key of the other, both saying they succeeded.
    other = OutputSet()
    for name in theirs:
        other.add(tmp_path / name, f"their {name}".encode(), secret=name == "tls.key")
    mine = OutputSet()
    mine.add(tmp_path / "tls.crt", b"my cert")
    mine.add(tmp_path / "tls.key", b"my key", secret=True)
    real_check = OutputSet.check

    def check_then_the_other_commits(self: OutputSet) -> None:
        real_check(self)
        if self is mine:
            other.commit()  # the other run, between this one's check and its renames

    monkeypatch.setattr(OutputSet, "check", check_then_the_other_commits)
    with pytest.raises(Conflict, match=rf"{theirs[0]} already exists; use --force to overwrite"):
        mine.commit()
    assert _tree(tmp_path) == sorted(theirs)  # none of mine, not even tls.crt beside theirs
    for name in theirs:
        assert (tmp_path / name).read_bytes() == f"their {name}".encode()
    assert _mode(tmp_path / "tls.key") == 0o600


def test_force_overwrites_and_tightens_mode(tmp_path: Path) -> None:
    key = tmp_path / "tls.key"
    key.write_bytes(b"old")
    key.chmod(0o644)
    out = OutputSet(force=True)
    out.add(key, b"new", secret=True)
    out.commit()
    assert key.read_bytes() == b"new"
    assert _mode(key) == 0o600


@pytest.mark.parametrize("force", [False, True])
def test_refuses_directory_target(tmp_path: Path, force: bool) -> None:
    (tmp_path / "tls.crt").mkdir()
    out = OutputSet(force=force)
    out.add(tmp_path / "tls.crt", b"x")
    with pytest.raises(OutputError, match=r"tls\.crt is a directory"):
        out.commit()


def test_parent_is_a_regular_file_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    out = OutputSet()
    out.add(tmp_path / "new" / "dir" / "tls.crt", b"cert")
    out.add(tmp_path / "file" / "tls.key", b"key", secret=True)
    with pytest.raises(OutputError, match=r"cannot write .*: .*/file is not a directory"):
        out.commit()
    # The first file's temp copy and the directories made for it are gone too.
    assert _tree(tmp_path) == ["file"]


def test_grandparent_is_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    out = OutputSet()
    out.add(tmp_path / "file" / "sub" / "tls.crt", b"cert")
    with pytest.raises(
        OutputError, match=r"cannot write .*/file/sub/tls.crt: .*/file is not a directory$"
    ):
        out.commit()
    assert _tree(tmp_path) == ["file"]


def test_unwritable_directory_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores directory modes, so the refusal is injected where the OS would raise it.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = os.open

    def guarded_open(path: str, flags: int, mode: int = 0o777) -> int:
        if Path(path).parent == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", guarded_open)
    out = OutputSet()
    out.add(tmp_path / "ok.crt", b"cert")
    out.add(locked / "tls.key", b"key", secret=True)
    with pytest.raises(OutputError, match="Permission denied"):
        out.commit()
    assert _tree(tmp_path) == ["locked"]


def test_write_failure_cleans_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    out = OutputSet()
    out.add(tmp_path / "d" / "tls.crt", b"cert")
    out.add(tmp_path / "d" / "tls.key", b"key", secret=True)
    with pytest.raises(OutputError, match=r"cannot write .*tls.key: No space left on device"):
        out.commit()
    assert _tree(tmp_path) == []


def test_rename_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without --force the files are linked into place (never over one made meanwhile).
    calls = 0
    real_link = os.link

    def failing_link(src: str, dst: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(5, "Input/output error", str(dst))
        real_link(src, dst)

    monkeypatch.setattr(os, "link", failing_link)
    out = OutputSet()
    out.add(tmp_path / "tls.crt", b"cert")
    out.add(tmp_path / "tls.key", b"key", secret=True)
    with pytest.raises(OutputError, match=r"cannot write .*tls\.key: Input/output error"):
        out.commit()
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_an_interrupt_just_after_a_file_is_in_place_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    # Ctrl-C (or SIGTERM, raised as _Terminated) lands after tls.crt is in its place and its
    # temp name is gone, before the commit counted it: the rollback must still remove it, or
    # tls.crt of this run stays without its tls.key.
    real_unlink = os.unlink

    def no_link(src: str, dst: str) -> None:
        raise OSError(1, "Operation not permitted", str(dst))  # as some FUSE and SMB mounts

    def unlink(path: str) -> None:
        real_unlink(path)
        if str(path).endswith(".tmp"):  # the temp name of the file linked into place
            raise KeyboardInterrupt

    if not links:
        monkeypatch.setattr(os, "link", no_link)
        real_replace = os.replace

        def replace(src: str, dst: str) -> None:
            real_replace(src, dst)
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "replace", replace)
    else:
        monkeypatch.setattr(os, "unlink", unlink)
    out = OutputSet()
    out.add(tmp_path / "tls.crt", b"cert")
    out.add(tmp_path / "tls.key", b"key", secret=True)
    with pytest.raises(KeyboardInterrupt):
        out.commit()
    assert _tree(tmp_path) == []


def _fail_replace_call(monkeypatch: pytest.MonkeyPatch, failing: int) -> None:
    """Make the ``failing``-th ``os.replace`` call fail with EIO; the others go through."""
    calls = 0
    real_replace = os.replace

    def failing_replace(src: str, dst: Path) -> None:
        nonlocal calls
        calls += 1
        if calls == failing:
            raise OSError(5, "Input/output error", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)


def test_rename_failure_with_force_restores_old_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tls.crt").write_bytes(b"old cert")
    (tmp_path / "tls.key").write_bytes(b"old key")
    # Calls 1-2 move the old files aside, 3 renames tls.crt into place, 4 fails.
    _fail_replace_call(monkeypatch, 4)
    out = OutputSet(force=True)
    out.add(tmp_path / "tls.crt", b"new cert")
    out.add(tmp_path / "tls.key", b"new key", secret=True)
    with pytest.raises(OutputError):
        out.commit()
    assert _tree(tmp_path) == ["tls.crt", "tls.key"]
    assert (tmp_path / "tls.crt").read_bytes() == b"old cert"
    assert (tmp_path / "tls.key").read_bytes() == b"old key"


# --- remove: files of an earlier output that would contradict the new one -------------------


def test_remove_deletes_with_the_writes(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(b"old ca")
    (tmp_path / "ca-chain.crt").write_bytes(b"old chain")
    out = OutputSet(force=True)
    out.add(tmp_path / "ca.crt", b"new ca")
    out.remove(tmp_path / "ca-chain.crt")
    out.remove(tmp_path / "absent.crt")  # nothing to remove: fine
    assert out.removed == []
    assert out.commit() == [tmp_path / "ca.crt"]
    assert _tree(tmp_path) == ["ca.crt"]
    assert (tmp_path / "ca.crt").read_bytes() == b"new ca"
    # What was there and is gone, for the caller to name (absent.crt was not).
    assert out.removed == [tmp_path / "ca-chain.crt"]


def test_remove_needs_force(tmp_path: Path) -> None:
    (tmp_path / "ca-chain.crt").write_bytes(b"old chain")
    out = OutputSet()
    out.add(tmp_path / "ca.crt", b"new ca")
    out.remove(tmp_path / "ca-chain.crt")
    with pytest.raises(Conflict, match=r"ca-chain\.crt already exists; use --force"):
        out.check()
    assert _tree(tmp_path) == ["ca-chain.crt"]


def test_add_after_remove_writes_the_file(tmp_path: Path) -> None:
    out = OutputSet()
    out.remove(tmp_path / "ca-chain.crt")
    out.add(tmp_path / "ca-chain.crt", b"chain")
    out.remove(tmp_path / "ca-chain.crt")  # staged data wins over a later removal
    out.commit()
    assert (tmp_path / "ca-chain.crt").read_bytes() == b"chain"


def test_failed_commit_puts_a_removed_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ca.crt").write_bytes(b"old ca")
    (tmp_path / "ca-chain.crt").write_bytes(b"old chain")
    # Calls 1-2 move ca.crt and ca-chain.crt aside, 3 (the new ca.crt) fails.
    _fail_replace_call(monkeypatch, 3)
    out = OutputSet(force=True)
    out.add(tmp_path / "ca.crt", b"new ca")
    out.remove(tmp_path / "ca-chain.crt")
    with pytest.raises(OutputError):
        out.commit()
    assert _tree(tmp_path) == ["ca-chain.crt", "ca.crt"]
    assert (tmp_path / "ca.crt").read_bytes() == b"old ca"
    assert (tmp_path / "ca-chain.crt").read_bytes() == b"old chain"


# --- write_atomic ------------------------------------------------------------------------


def test_write_atomic(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"one")
    assert target.read_bytes() == b"one"
    assert _mode(target) == 0o644
    write_atomic(target, b"two", SECRET_MODE)
    assert target.read_bytes() == b"two"
    assert _mode(target) == 0o600
    assert _tree(tmp_path) == ["f"]


def test_write_atomic_failure_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "f", b"data")
    assert _tree(tmp_path) == []


def test_write_atomic_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "f", b"data")
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("count", [2, 40], ids=["fsync", "batch"])
def test_commit_syncs_the_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    # A file's fsync keeps its bytes, not its name: the rename into place is an entry of
    # the directory, synced after it. Before, no directory was synced, and a power cut
    # after "issued …" could bring the machine back without the files.
    synced: list[tuple[str, list[str]]] = []  # (what was synced, the outputs then in place)
    outputs = [tmp_path / "new" / "sub" / f"f{i}" for i in range(count)]

    def in_place() -> list[str]:
        return [p.name for p in outputs if p.exists()]

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), in_place()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "sync", lambda: synced.append(("sync", in_place())))
    out = OutputSet()
    for path in outputs:
        out.add(path, b"x", secret=True)
    out.commit()
    everything = [p.name for p in outputs]
    if count > 2:  # one sync() for the bytes, one for the names
        assert synced == [("sync", []), ("sync", everything)]
        return
    after = [what for what, present in synced if present == everything]
    assert after == [str(tmp_path), str(tmp_path / "new"), str(tmp_path / "new" / "sub")]
