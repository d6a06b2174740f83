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


# Tests that take a minute or so on a busy machine, started first: handed out in collection
# order they came near the end, and two cores waited on one of them for the run to finish.
_LONG_FIRST = ("tests/bench/", "tests/e2e/test_schemathesis.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the _LONG_FIRST tests to the front; the rest keep their order (a stable sort)."""
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG_FIRST))


# Test directories whose tests must run in one process, one after another: the reliability
# tests fill a ledger of every secret they used, which tests/reliability/test_secret_hygiene.py
# (ordered last) then looks for in their logs and databases.
_ONE_PROCESS = ("tests/reliability/",)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist's scheduler, with each of _ONE_PROCESS sent whole to one worker.

    Every other test is a unit of its own, handed to whichever worker is free, as xdist's
    default (``load``) does. ``xdist_group`` would say this, but pytest-xdist 3.8 groups by a
    node-id suffix that pytest 9 no longer keeps (every test of a group ran anywhere). The
    largest unit goes first (``loadscope`` orders units by size): the fuzzers do not start
    last and hold the run's end.
    """
    from xdist.scheduler import LoadScopeScheduling

    class OneProcessGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return next((group for group in _ONE_PROCESS if nodeid.startswith(group)), nodeid)

    return OneProcessGroups(config, log)  # type: ignore[arg-type]
