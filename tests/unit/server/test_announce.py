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


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        ({}, None),
        ({"metrics": {"listen": "0.0.0.0:9443"}}, "https://127.0.0.1:9443"),
        ({"metrics": {"listen": "127.0.0.1:9444", "secure": False}}, "http://127.0.0.1:9444"),
        ({"metrics": {"listen": "[::]:9443"}}, "https://[::1]:9443"),
        (
            {"metrics": {"listen": "127.0.0.1:9445"}, "tls": {"mode": "disabled"}},
            "http://127.0.0.1:9445",
        ),
    ],
    ids=["none", "wildcard", "plain", "ipv6", "tls-disabled"],
)
def test_the_notice_names_the_metrics_listener(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: dict[str, Any], line: str | None
) -> None:
    # With metrics.listen the notice said nothing of it: only uvicorn's "Started server
    # process" twice told that a second listener was up, and not where.
    key_file = tmp_path / "admin.key"
    key_file.write_text("k\n")
    boot = Bootstrapped(services=cast(Services, None), admin_key=None, admin_key_file=key_file)
    config = ServerConfig.model_validate({"data-dir": str(tmp_path), **settings})
    announce(boot, config, "https", None)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Metrics ")]
    expected = (
        []
        if line is None
        else [
            "Metrics listener (metrics.listen, health and metrics only): "
            f"{line}/api/v1/metrics/prometheus"
        ]
    )
    assert lines == expected
