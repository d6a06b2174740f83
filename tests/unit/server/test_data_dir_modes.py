"""The data directory and the SQLite files are private, whatever the umask."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from certctl.errors import InvalidRequest
from certctl.server.bootstrap import bootstrap
from certctl.server.config import ServerConfig
from tests._tools import ok, require, run


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_fresh_data_dir_under_umask_000_is_private(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    old = os.umask(0)
    try:
        booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
        booted.services.engine.dispose()
    finally:
        os.umask(old)
    assert _mode(data) == 0o700
    for name in ("certctl.db", "kek", "admin-api-key"):
        assert _mode(data / name) == 0o600, name
    for extra in data.glob("certctl.db-*"):
        assert _mode(extra) == 0o600, extra


def test_an_open_data_dir_is_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "open"
    data.mkdir()
    os.chmod(data, 0o777)
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    assert _mode(data) == 0o750
    assert "was mode 0777; made it 0750" in caplog.text
    caplog.clear()
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))  # a restart
    booted.services.engine.dispose()
    assert "data directory" not in caplog.text  # negative twin: nothing more to say


def test_a_kek_readable_by_others_is_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "restored"
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    os.chmod(data / "kek", 0o644)  # as a careless restore leaves it
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    assert _mode(data / "kek") == 0o600
    assert "kek was mode 0644; made it 0600" in caplog.text


def test_an_admin_key_file_readable_by_others_is_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The kek was tightened after a careless restore; the admin key beside it stayed 0644,
    # readable by every local user.
    data = tmp_path / "restored"
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    os.chmod(data / "admin-api-key", 0o644)
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    assert _mode(data / "admin-api-key") == 0o600
    assert "admin-api-key was mode 0644; made it 0600" in caplog.text
    caplog.clear()
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))  # negative twin
    booted.services.engine.dispose()
    assert "admin-api-key" not in caplog.text


def test_a_database_readable_by_others_is_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The kek and the admin key beside it were tightened after a careless restore (cp, tar
    # under umask 022); certctl.db stayed 0644 and SQLite gave its -wal and -shm the same
    # mode: API key hashes, wrapped keys and the audit log readable by every local user.
    data = tmp_path / "restored"
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    os.chmod(data / "certctl.db", 0o644)
    (data / "certctl.db-wal").write_bytes(b"")  # as left by a server killed mid-write
    os.chmod(data / "certctl.db-wal", 0o644)
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    for name in ("certctl.db", "certctl.db-wal", "certctl.db-shm"):
        if (data / name).exists():
            assert _mode(data / name) == 0o600, name
    assert "certctl.db was mode 0644; made it 0600" in caplog.text
    assert "certctl.db-wal was mode 0644; made it 0600" in caplog.text
    caplog.clear()
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))  # negative twin
    booted.services.engine.dispose()
    assert "certctl.db" not in caplog.text


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in this venv's Python as uid/gid 65534, no capabilities (setpriv)."""
    argv = [require("setpriv"), "--reuid", "65534", "--regid", "65534", "--clear-groups",
            sys.executable, "-c", "import logging; logging.basicConfig(); " + code]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory uid 65534 can reach (pytest's tmp_path is under a 0700 dir)."""
    base = Path(tempfile.mkdtemp(prefix="certctl-nobody-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_files_the_server_does_not_own_never_stop_its_start(open_tmp: Path) -> None:
    tmp_path = open_tmp
    # A kek restored by root, readable by all, in a data dir the server (nobody) owns.
    data = tmp_path / "restored"
    data.mkdir()
    os.chown(data, 65534, 65534)
    (data / "kek").write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    os.chmod(data / "kek", 0o644)
    code = (
        "from pathlib import Path; from certctl.store.keywrap import load_or_create_kek; "
        f"load_or_create_kek(Path('{data}')); print('started')"
    )
    proc = _as_nobody(code)
    assert proc.stdout.strip() == "started", proc.stderr
    assert "kek is mode 0644 and cannot be made 0600 (Operation not permitted)" in proc.stderr
    # A Kubernetes volume: root's, setgid to the pod's group: nothing to warn about.
    volume = tmp_path / "volume"
    volume.mkdir()
    os.chown(volume, 0, 65534)
    os.chmod(volume, 0o2777)
    code = (
        "import logging; logging.getLogger().setLevel(logging.INFO); "
        "from pathlib import Path; from certctl.server.bootstrap import _private; "
        f"_private(Path('{volume}')); print('started')"
    )
    proc = _as_nobody(code)
    assert proc.stdout.strip() == "started", proc.stderr
    assert "data directory" not in proc.stderr
    # Negative twin: someone else's directory open to all users does get the warning.
    other = tmp_path / "other"
    other.mkdir()
    os.chmod(other, 0o777)
    proc = _as_nobody(code.replace(str(volume), str(other)))
    assert "is mode 0777: other users may read or replace what is in it" in proc.stderr


def test_a_data_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    # It said only "afile: File exists".
    (tmp_path / "afile").write_text("")
    with pytest.raises(InvalidRequest, match=r"^data-dir .*/afile: not a directory$"):
        bootstrap(ServerConfig.model_validate({"data-dir": str(tmp_path / "afile")}))
    # "afile/sub: Not a directory" left the user to find which part was the file.
    for below in ("sub", "sub/deeper"):
        data_dir = tmp_path / "afile" / below
        with pytest.raises(InvalidRequest) as refused:
            bootstrap(ServerConfig.model_validate({"data-dir": str(data_dir)}))
        assert (
            refused.value.detail == f"data-dir {data_dir}: {tmp_path / 'afile'} is not a directory"
        )
    # As the command says it: one line, exit 1, nothing made.
    argv = [sys.executable, "-c", "from certctl.cli.main import main; main()"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    result = subprocess.run(
        [*argv, "serve", "--data-dir", "afile/sub"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "certctl: error: data-dir afile/sub: afile is not a directory\n"
    assert (tmp_path / "afile").read_text() == ""


def test_database_files_of_another_user_are_named(open_tmp: Path) -> None:
    # The classic: a first start as root, then the service user. It said only "cannot start:
    # storage is unavailable: cannot open the database file".
    data = open_tmp / "data"
    _boot_as_root = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    _boot_as_root.services.engine.dispose()
    os.chown(data, 65534, 65534)
    for path in data.iterdir():
        if path.name != "certctl.db":
            os.chown(path, 65534, 65534)
    code = (
        "from certctl.server.bootstrap import bootstrap; "
        "from certctl.server.config import ServerConfig; from certctl.errors import CertctlError\n"
        f"try: bootstrap(ServerConfig.model_validate({{'data-dir': '{data}'}}))\n"
        "except CertctlError as exc: print(exc.detail)\n"
        "else: print('started')"
    )
    proc = _as_nobody(code)
    assert proc.stdout.strip() == (
        f"{data / 'certctl.db'}: permission denied to uid 65534 (the file belongs to uid 0): "
        "give the data dir and its files to the user the server runs as"
    ), proc.stderr
    # Negative twin: once it is the service user's, it starts.
    os.chown(data / "certctl.db", 65534, 65534)
    assert _as_nobody(code).stdout.strip() == "started"


def test_a_kek_rotated_as_root_stays_the_server_users(open_tmp: Path) -> None:
    # sudo certctl kek rotate left a kek of root's, 0600: the server, run as its own user,
    # died at its next start with "PermissionError: … kek". A certctl.lock it created was
    # root's too: the server could not open it and ran without the lock.
    data = open_tmp / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    code = (
        "from certctl.server.bootstrap import bootstrap; "
        "from certctl.server.config import ServerConfig\n"
        f"bootstrap(ServerConfig.model_validate({{'data-dir': '{data}'}}))"
        ".services.engine.dispose(); print('started')"
    )
    first = _as_nobody(code)
    assert first.stdout.strip() == "started", first.stderr
    old = (data / "kek").read_bytes()
    (data / "certctl.lock").unlink()  # a data dir of a certctl from before the lock file
    ok(run("certctl", "kek", "rotate", "--data-dir", data, env={"PATH": "/usr/bin:/bin"}))
    kek = (data / "kek").stat()
    assert (kek.st_uid, kek.st_gid, stat.S_IMODE(kek.st_mode)) == (65534, 65534, 0o600)
    assert (data / "kek").read_bytes() != old
    # The lock file the rotation made: the server's too, or it would run with no lock.
    lock = (data / "certctl.lock").stat()
    assert (lock.st_uid, lock.st_gid, stat.S_IMODE(lock.st_mode)) == (65534, 65534, 0o600)
    again = _as_nobody(code)
    assert again.stdout.strip() == "started", again.stderr
