"""Offline outputs: directories never world-writable, a dangling symlink is an existing output."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests._tools import ok, require


def _certctl_umask0(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("certctl"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0),
        check=False,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_output_directories_under_umask_000_are_0755(tmp_path: Path) -> None:
    ok(_certctl_umask0("ca", "create", "--out", tmp_path / "ca"))
    ok(_certctl_umask0("cert", "issue", "--ca", tmp_path / "ca", "--cn", "web", "--dns", "web",
                       "--out", tmp_path / "deep" / "web"))  # fmt: skip
    for directory in (tmp_path / "ca", tmp_path / "deep", tmp_path / "deep" / "web"):
        assert _mode(directory) == 0o755, directory
    assert _mode(tmp_path / "deep" / "web" / "tls.key") == 0o600
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600


def test_a_dangling_symlink_at_an_output_needs_force(tmp_path: Path) -> None:
    ok(_certctl_umask0("ca", "create", "--out", tmp_path / "ca"))
    out = tmp_path / "web"
    out.mkdir()
    (out / "tls.key").symlink_to(tmp_path / "nowhere")
    args = ("cert", "issue", "--ca", tmp_path / "ca", "--cn", "web", "--dns", "web", "--out", out)
    refused = _certctl_umask0(*args)
    assert refused.returncode != 0
    assert "tls.key already exists; use --force to overwrite" in refused.stderr
    assert (out / "tls.key").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["tls.key"]  # nothing written
    ok(_certctl_umask0(*args, "--force"))
    assert not (out / "tls.key").is_symlink()
    assert not (tmp_path / "nowhere").exists()  # replaced the link, wrote nothing through it
