"""Group commits from several processes on one SQLite file queue on the commit lock."""

from __future__ import annotations

import asyncio
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, func, select

from certctl.services.audit import event_values
from certctl.store.db import migrate
from certctl.store.groupcommit import GroupCommit
from certctl.store.models import AuditEvent

PER_PROCESS = 60


def _commit_events(url: str, tag: str) -> None:
    engine = create_engine(url)
    commits = GroupCommit(engine)
    table = AuditEvent.__table__

    async def one(n: int) -> None:
        values = event_values(at=datetime.now(UTC), actor=tag, action="test", target=str(n))
        await commits.add([(table, values)])

    async def main() -> None:
        await asyncio.gather(*(one(n) for n in range(PER_PROCESS)))

    asyncio.run(main())
    engine.dispose()


def test_two_processes_commit_everything_through_the_lock(tmp_path: Path) -> None:
    database = tmp_path / "certctl.db"
    url = f"sqlite:///{database}"
    migrate(create_engine(url))
    pids = []
    for tag in ("a", "b"):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _commit_events(url, tag)
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    engine = create_engine(url)
    with engine.connect() as connection:
        for tag in ("a", "b"):
            count = connection.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.actor == tag)
            )
            assert count == PER_PROCESS, tag
    lock = Path(f"{database}.commit-lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_an_unopenable_lock_file_does_not_block_commits(tmp_path: Path) -> None:
    database = tmp_path / "certctl.db"
    url = f"sqlite:///{database}"
    migrate(create_engine(url))
    Path(f"{database}.commit-lock").mkdir()  # open() fails: a directory
    _commit_events(url, "c")
    with create_engine(url).connect() as connection:
        total = connection.scalar(select(func.count()).select_from(AuditEvent))
    assert total == PER_PROCESS
