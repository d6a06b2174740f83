"""Set-up shared by every test directory."""

from __future__ import annotations

import signal

import pytest

# The stores' session fixtures, registered here once so that every directory shares them: one
# PostgreSQL cluster, one migrated database on it and one SQLite template per process.
from tests._stores import postgres_cluster, postgres_url, sqlite_template  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    # A non-interactive shell starts a background job (`make test &`, a CI wrapper's
    # `cmd &`) with SIGINT ignored, and every program a test starts inherits that: the tests
    # that press Ctrl-C on certctl saw it do nothing and failed. A handler, unlike SIG_IGN,
    # is not inherited across exec, so each program gets Python's default again.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
