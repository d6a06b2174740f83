"""The start-up notice on stdout: advice, never a reason for the server not to start."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from certctl.server.bootstrap import Bootstrapped
from certctl.server.config import ServerConfig
from certctl.server.startup_notice import announce
from certctl.services.context import Services


def test_a_stdout_nobody_reads_is_warned_about_and_the_server_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # `certctl serve >&-` (main() gives a closed stdout a pipe nobody reads) or a reader that
    # left: the notice's write failed, and the server exited 1 without a word, even in the
    # log. The key is saved 0600 in its file: say where, and serve.
    key_file = tmp_path / "admin.key"
    key_file.write_text("k\n")
    boot = Bootstrapped(services=cast(Services, None), admin_key=None, admin_key_file=key_file)
    config = ServerConfig.model_validate({"data-dir": str(tmp_path)})
    read_end, write_end = os.pipe()
    os.close(read_end)
    gone: Any = open(write_end, "w", encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", gone)
    try:
        with caplog.at_level(logging.WARNING, logger="certctl.server"):
            announce(boot, config, "https", None)
        # Nothing left for the interpreter's last flush to fail on ("Exception ignored").
        gone.flush()
    finally:
        monkeypatch.undo()
        with contextlib.suppress(OSError):  # failing here would hide the failure above
            gone.close()
    assert [r.getMessage() for r in caplog.records] == [
        "cannot print the start-up notice on stdout (Broken pipe); the admin API key is in "
        f"{key_file}"
    ]
