"""Stored certificates remembered per process while the certificate generation stays put."""

from __future__ import annotations

import logging
import weakref
from typing import Any

from sqlalchemy import Engine

from certctl.services.context import IssuerRevocation
from certctl.services.credential_counter import (
    Generation,
    PostgresCounter,
    SQLiteCounter,
    wal_index,
)
from certctl.services.key_authentication import generation_counter

__all__ = ["CERTIFICATE_GENERATION_SQL", "CertificateCache", "certificate_cache"]

log = logging.getLogger("certctl.services")

CERTIFICATE_GENERATION_SQL = "SELECT value FROM certificate_generation WHERE id = 1"


class CertificateCache:
    """Certificate rows (and their issuer's revocation) as read at a certificate generation.

    Migration 0022's counter is bumped by triggers on every change to what a certificate's
    GET shows (its row, its issuer's revocation or any issuer's), from any process or
    replica, or by hand; an issuance is not one. It is read *before* the row, so that a
    change committed in between makes the next request read again: a revocation, a renewal
    or an issuer revoked shows on the very next GET in every process. Read as the credential
    generation is, on the same connection (``key_authentication._KeyCache``): SQLite only
    when the WAL-index header shows a commit since the last read, PostgreSQL once per
    request. A counter seen to go back (a restore) trusts nothing read before. Bounded: the
    oldest entry goes first (a row with its PEM is ~2 KB).
    """

    MAX_ENTRIES = 1024

    def __init__(self, counter: SQLiteCounter | PostgresCounter, database: str | None) -> None:
        self._entries: dict[str, tuple[int, Any, IssuerRevocation | None]] = {}
        self._generation = Generation(
            counter,
            sql=CERTIFICATE_GENERATION_SQL,
            name="certificate generation",
            forgotten="remembered certificates",
        )
        self._generation.wal_index = wal_index(database) if database else None

    def version(self) -> int | None:
        """The certificate generation, or None when it cannot be read (no caching then)."""
        return self._generation.version()

    def get(self, cert_id: str, version: int) -> tuple[Any, IssuerRevocation | None] | None:
        """The row and issuer revocation read at ``version``, else None."""
        entry = self._entries.get(cert_id)
        if entry is None or entry[0] != version:
            return None
        return entry[1], entry[2]

    def put(self, cert_id: str, version: int, row: Any, revoked: IssuerRevocation | None) -> None:
        """Remember ``row`` and its issuer's revocation as read at ``version``."""
        entries = self._entries
        if cert_id not in entries and len(entries) >= self.MAX_ENTRIES:
            try:
                del entries[next(iter(entries))]
            except (KeyError, RuntimeError, StopIteration):  # another thread took it first
                pass
        entries[cert_id] = (version, row, revoked)


_CACHES: weakref.WeakKeyDictionary[Engine, CertificateCache | None] = weakref.WeakKeyDictionary()
# The last engine asked about (a server has one): found without WeakKeyDictionary's lookup.
_LAST: tuple[weakref.ref[Engine], CertificateCache | None] | None = None


def certificate_cache(engine: Engine) -> CertificateCache | None:
    """The engine's certificate cache: where the credential generation is cached too."""
    global _LAST
    last = _LAST
    if last is not None and last[0]() is engine:
        return last[1]
    try:
        cache = _CACHES[engine]
    except KeyError:
        found = generation_counter(engine)
        cache = CertificateCache(*found) if found is not None else None
        _CACHES[engine] = cache
    _LAST = (weakref.ref(engine), cache)
    return cache
