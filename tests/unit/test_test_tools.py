"""tests/_tools.py: a tool the tests need and cannot find fails them saying how to install it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import _tools


# The venv's tools (pyproject's dev group) come with uv, not apt: schemathesis's hint was
# "apt-get install -y schemathesis", a package Debian does not have.
@pytest.mark.parametrize(
    ("tool", "hint"),
    [
        ("schemathesis", "uv sync --group dev"),
        ("lint_pkix_cert", "uv sync --group dev"),
        ("certctl", "uv sync"),
        ("openssl", "apt-get install -y openssl"),
    ],
)
def test_a_missing_tool_fails_with_how_to_install_it(
    tool: str, hint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_tools, "VENV_BIN", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as failed:
        _tools.require(tool)
    assert str(failed.value) == f"{tool} not found: install with '{hint}' (make system-deps)"
