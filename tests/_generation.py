"""Counting the reads of the credential generation counter that the auth caches check."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from certctl.services import key_authentication


def count_generation_reads(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """Every value the engine's key cache reads from ``auth_generation`` from now on, in order.

    The cache must exist already (a key or certificate authenticated once).
    """
    cache = key_authentication._key_cache(engine)
    assert cache is not None
    reads: list[int | None] = []
    generation = cache._generation
    read = generation.read

    def counted() -> int | None:
        reads.append(read())
        return reads[-1]

    monkeypatch.setattr(generation, "read", counted)
    return reads
