"""A storage fault fails a whole group at once; a bad row fails only its own request."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Table, create_engine, event
from sqlalchemy.exc import DBAPIError

from certctl.services.audit import event_values
from certctl.store.db import migrate, storage_error
from certctl.store.groupcommit import GroupCommit, Insert
from certctl.store.models import AuditEvent

REQUESTS = 20
# A declarative model's __table__ is typed as a FromClause; it is a Table.
EVENTS: Table = AuditEvent.__table__  # type: ignore[assignment]


def _rows(n: int) -> list[Insert]:
    values = event_values(at=datetime.now(UTC), actor="t", action="test", target=str(n))
    return [(EVENTS, values)]


async def _commit_all(commits: GroupCommit) -> list[BaseException | None]:
    results = await asyncio.gather(
        *(commits.add(_rows(n)) for n in range(REQUESTS)),
        return_exceptions=True,
    )
    return [r if isinstance(r, BaseException) else None for r in results]


def test_a_storage_fault_is_not_retried_request_by_request(tmp_path: Path) -> None:
    # Retrying each request of a group alone is for a row that breaks a constraint; for a
    # database that is full, read-only or unreachable it only repeats the failure, once per
    # request: with PostgreSQL unreachable, 5 s (connect_timeout) each, one after the other.
    database = tmp_path / "certctl.db"
    migrate(create_engine(f"sqlite:///{database}"))
    engine = create_engine(f"sqlite:///file:{database}?mode=ro&uri=true")
    attempts = []
    event.listen(engine, "begin", lambda _connection: attempts.append(1))
    results = asyncio.run(_commit_all(GroupCommit(engine)))
    assert all(isinstance(r, DBAPIError) and storage_error(r) is not None for r in results)
    # The first request alone (nothing in flight), then everyone who queued meanwhile.
    assert len(attempts) <= 2, len(attempts)


def test_a_bad_row_fails_only_its_own_request(tmp_path: Path) -> None:
    database = tmp_path / "certctl.db"
    engine = create_engine(f"sqlite:///{database}")
    migrate(engine)
    commits = GroupCommit(engine)

    async def main() -> list[BaseException | None]:
        first = asyncio.ensure_future(commits.add(_rows(0)))
        await asyncio.sleep(0)  # in flight: the rest queue behind it as one group
        bad = dict(_rows(1)[0][1], id=None, action=None)  # NOT NULL broken
        rest = [commits.add([(EVENTS, bad)])]
        rest += [commits.add(_rows(n)) for n in range(2, 6)]
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]

    results = asyncio.run(main())
    assert results[0] is None
    assert isinstance(results[1], DBAPIError)
    assert storage_error(results[1]) is None
    assert results[2:] == [None] * 4
