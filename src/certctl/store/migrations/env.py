"""Alembic environment: runs on the connection certctl hands in (no alembic.ini)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo

from certctl.store.models import Base

connection = context.config.attributes["connection"]
# certctl logs one line for the whole upgrade (store.db.migrate): it needs what was applied.
applied: list[str] = context.config.attributes.setdefault("applied", [])


def _record(
    ctx: MigrationContext,
    step: MigrationInfo,
    heads: Collection[Any],
    run_args: Mapping[str, Any],
) -> None:
    applied.extend(step.up_revision_ids if step.is_upgrade else ())


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    on_version_apply=_record,
)
with context.begin_transaction():
    context.run_migrations()
