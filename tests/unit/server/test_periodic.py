"""Background passes (metrics refresh, CA renewal) during a database outage: two log lines.

Before, each failed pass logged a traceback: every 10 s per worker for the metrics refresh,
for as long as PostgreSQL was down.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from certctl.server.periodic import run_periodically


def _down() -> OperationalError:
    return OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))


def _run_passes(outcomes: list[BaseException | None]) -> None:
    """Run ``run_periodically`` until every outcome (raise it, or succeed on None) was played."""
    played = iter(outcomes)
    done = asyncio.Event()

    def work() -> None:
        try:
            outcome = next(played)
        except StopIteration:  # a pass after the last one: its log lines are all written
            loop.call_soon_threadsafe(done.set)
            return
        if outcome is not None:
            raise outcome

    async def run() -> None:
        task = asyncio.create_task(run_periodically(0.001, work, "metrics"))
        await asyncio.wait_for(done.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


def test_an_outage_is_one_warning_and_its_end_one_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="certctl.server")
    _run_passes([_down(), _down(), _down(), _down(), None])
    lines = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert lines == [
        (
            "WARNING",
            "metrics failed: storage is unavailable: the database cannot be reached; "
            "retrying every 0 s",
            None,
        ),
        ("INFO", "metrics works again", None),
    ]


def test_a_kubernetes_failure_is_one_line_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    """Before, the CA Secret pass logged a traceback every 60 s while the Kubernetes API
    refused it (RBAC not yet granted, a Secret someone else owns, an outage)."""
    from certctl.errors import Conflict
    from certctl.kubeapi import KubeApiError

    caplog.set_level(logging.INFO, logger="certctl.server")
    forbidden = KubeApiError("Secret certs/certctl-ca: Kubernetes API answered 403 Forbidden", 403)
    owned = Conflict("Secret certs/certctl-ca exists and is not managed by certctl")
    _run_passes([forbidden, forbidden, forbidden, owned, owned, None])
    lines = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert lines == [
        ("WARNING", f"metrics failed: {forbidden.detail}; retrying every 0 s", None),
        ("WARNING", f"metrics failed: {owned.detail}; retrying every 0 s", None),
        ("INFO", "metrics works again", None),
    ]


def test_a_bug_still_logs_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="certctl.server")
    bug = ProgrammingError("SELECT nope", {}, psycopg.ProgrammingError("no such column"))
    _run_passes([bug, None])
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["metrics failed; will retry"]
    assert errors[0].exc_info is not None


def test_no_free_pooled_connection_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A database-pool-size below the threads that may use the store: a pass that waited in
    vain for a connection is the store busy, not a bug (before: a traceback every pass)."""
    from certctl.store.db import PoolTimeout

    caplog.set_level(logging.INFO, logger="certctl.server")
    _run_passes([PoolTimeout("QueuePool limit"), PoolTimeout("QueuePool limit"), None])
    lines = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert lines == [
        (
            "WARNING",
            "metrics failed: storage is busy: no database connection came free in time; "
            "retrying every 0 s",
            None,
        ),
        ("INFO", "metrics works again", None),
    ]
