"""API-key authentication: from a cache valid while no credential changed, else from the store."""

from __future__ import annotations

import logging
import sqlite3
import time
import weakref
from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy import Engine, bindparam, or_, select, update
from sqlalchemy.exc import DBAPIError

from certctl.auth.apikeys import KEY_ID, key_head, parse_key, secret_matches
from certctl.errors import Unauthenticated
from certctl.services.context import Principal, Services, utcnow
from certctl.services.credential_counter import (
    Generation,
    PostgresCounter,
    SQLiteCounter,
    wal_index,
)
from certctl.services.roles import role_grants
from certctl.store.db import storage_error
from certctl.store.models import Actor, ApiKey

__all__ = [
    "LAST_USED_RESOLUTION",
    "AuthFailure",
    "api_key_from_store",
    "authenticate_api_key",
    "cached_api_key",
    "credential_generation",
    "credential_generation_seen",
    "generation_counter",
]

log = logging.getLogger("certctl.services")
LAST_USED_RESOLUTION = timedelta(minutes=1)


class AuthFailure(Unauthenticated):
    """Authentication failed; ``reason`` is one of missing, invalid, expired, revoked.

    ``audited`` is what the audit row says: ``detail`` plus, for a key id the store knows,
    which key it was and whose. Only the audit log says that (readers holding
    ``audit.read``), not the 401: the caller must not learn whether an id exists.
    """

    def __init__(
        self, detail: str, reason: str, audited: str | None = None, credential: str = ""
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.audited = audited if audited is not None else detail
        # ``apikey <id>`` when the secret matched (a revoked or expired key still in use: its
        # holder has it), so ``?credential=`` finds those attempts; "" when it did not.
        self.credential = credential


# Core statements on the authentication path (a key not cached, stale, or whose last_used_at is
# due): no ORM identity map, unit of work or instance construction. A cached key is trusted only
# at the credential generation it was read at (_KeyCache), so a revocation, an expiry or a role
# change in any process applies to the very next request.
_KEYS = ApiKey.__table__.c
_ACTORS = Actor.__table__.c
_KEY_AND_ACTOR = (
    select(
        _KEYS.secret_sha256,
        _KEYS.revoked_at,
        _KEYS.expires_at,
        _KEYS.last_used_at,
        _KEYS.actor_id,
        _ACTORS.id,
        _ACTORS.roles,
    )
    .select_from(ApiKey.__table__.outerjoin(Actor.__table__, _ACTORS.id == _KEYS.actor_id))
    .where(_KEYS.id == bindparam("key_id"))
)
# Conditional: two requests that read the same key at once (worker threads, other processes)
# both find ``last_used_at`` due; only the first write within the minute changes it.
_TOUCH_KEY = (
    update(ApiKey)
    .where(
        ApiKey.id == bindparam("key_id"),
        or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= bindparam("due")),
    )
    .values(last_used_at=bindparam("now"))
)


def authenticate_api_key(services: Services, presented: str, source: str) -> Principal:
    """Resolve a presented bearer key to a principal: from the cache, else from the store.

    Raises:
        AuthFailure: malformed/unknown (``invalid``), ``expired`` or ``revoked``.
    """
    principal = cached_api_key(services, presented, source)
    if principal is None:
        principal = api_key_from_store(services, presented, source)
    return principal


def cached_api_key(services: Services, presented: str, source: str) -> Principal | None:
    """The principal of a presented key from memory alone; None when the store must be read.

    Reads nothing but the credential generation (the API server calls it on the event loop, on
    every request): on SQLite from memory while nothing was committed, on PostgreSQL one read
    (see ``_KeyCache``). None when the key is not cached, stale, or its ``last_used_at`` is
    due; then :func:`api_key_from_store` decides, off the loop.

    Raises:
        AuthFailure: a cached key that has expired, or a key that is not even well-formed.
    """
    clock = services.clock
    engine = services.engine
    last = _LAST_KEY_CACHE  # _key_cache's own first test, inline: this runs on every request
    cache = last[1] if last is not None and last[0]() is engine else _key_cache(engine)
    if cache is not None:
        # The default clock's instant without building an aware datetime (~1.5 µs).
        principal = cache.authenticate(
            presented, source, time.time() if clock is utcnow else clock().timestamp()
        )
        if principal is not None:
            return principal
    if parse_key(presented) is None:
        # Refused here: no store read (and no thread) for what cannot be any key.
        raise AuthFailure("malformed API key", "invalid")
    return None


def api_key_from_store(services: Services, presented: str, source: str) -> Principal:
    """Resolve a presented bearer key from the store, writing its ``last_used_at`` when due.

    Blocking (a read, and on SQLite the write waits for the write lock): the API server runs
    it in a worker thread. A key found valid is cached for :func:`cached_api_key`.

    Raises:
        AuthFailure: malformed/unknown (``invalid``), ``expired`` or ``revoked``.
    """
    clock = services.clock
    cache = _key_cache(services.engine)
    version = cache.version() if cache is not None else None  # before the key is read
    now = clock()
    parsed = parse_key(presented)
    if parsed is None:
        raise AuthFailure("malformed API key", "invalid")
    key_id, secret = parsed
    with services.engine.connect() as connection:
        row = connection.execute(_KEY_AND_ACTOR, {"key_id": key_id}).first()
        if row is None:
            raise AuthFailure("unknown API key", "invalid", f"unknown API key: no key {key_id}")
        # The audit row names the key and its actor (an auditor asks which key was tried, and
        # whose it is); the 401 does not.
        which = f"key {key_id} (actor {row.actor_id})"
        if not secret_matches(secret, row.secret_sha256):
            raise AuthFailure(
                "unknown API key", "invalid", f"unknown API key: {which} with a wrong secret"
            )
        held = f"apikey {key_id}"  # the secret matched: whoever sent it holds this key
        if row.revoked_at is not None:
            raise AuthFailure("API key revoked", "revoked", f"API key revoked: {which}", held)
        if row.expires_at is not None and row.expires_at <= now:
            raise AuthFailure("API key expired", "expired", f"API key expired: {which}", held)
        if row.id is None:
            raise AuthFailure(
                "API key's actor no longer exists",
                "invalid",
                f"API key's actor no longer exists: {which}",
                held,
            )
        actor_id, roles = row.id, tuple(row.roles)
        permissions, limits, _ = role_grants(connection, list(roles))
        last_used = row.last_used_at
        if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
            try:
                connection.execute(
                    _TOUCH_KEY, {"key_id": key_id, "now": now, "due": now - LAST_USED_RESOLUTION}
                )
                connection.commit()
                last_used = now
            except DBAPIError as exc:
                # Bookkeeping only: a full or read-only store must not fail every read.
                fault = storage_error(exc)
                if fault is None:
                    raise
                connection.rollback()
                log.warning("API key %s: last_used_at not saved: %s", key_id, fault.detail)
    principal = Principal(
        actor_id,
        roles,
        permissions,
        "api_key",
        source,
        credential=f"apikey {key_id}",
        issue_limits=limits,
    )
    if cache is not None and version is not None and last_used is not None:
        cache.put(
            _CachedKey(
                version,
                key_id,
                key_head(key_id),
                row.secret_sha256,
                row.expires_at.timestamp() if row.expires_at is not None else None,
                (last_used + LAST_USED_RESOLUTION).timestamp(),
                principal,
            ),
        )
    return principal


def credential_generation(services: Services) -> int | None:
    """The credential generation now: what remembered authentication answers are valid at.

    Migration 0003's counter, bumped by triggers on every change of roles, actors, API keys
    and (0012) of what decides a client certificate's authentication. Read before whatever an
    answer is made of, so that a change committed in between makes the next request read
    again. The same check as a cached API key's (``_KeyCache.version``): SQLite from memory
    while nothing has been committed since it was last read, PostgreSQL one read on a
    connection of its own (blocking, short). None when it cannot be read (no caching then).
    """
    engine = services.engine
    last = _LAST_KEY_CACHE  # _key_cache's own first test, inline: this runs on every request
    cache = last[1] if last is not None and last[0]() is engine else _key_cache(engine)
    return cache.version() if cache is not None else None


def credential_generation_seen(services: Services) -> int | None:
    """The credential generation this process read last, reading nothing.

    Every authentication reads it (``credential_generation``), a database read each time on
    PostgreSQL. None when it was never read or cannot be.
    """
    cache = _key_cache(services.engine)
    return cache.last_version() if cache is not None else None


# --- the API-key cache -------------------------------------------------------------------


@dataclass(frozen=True)
class _CachedKey:
    version: int
    key_id: str
    head: str  # key_head(key_id)
    secret_sha256: bytes
    expires_ts: float | None  # POSIX timestamps, compared with the clock's
    touch_after_ts: float  # last_used_at + LAST_USED_RESOLUTION: then the slow path writes it
    # The key's actor, roles and permissions, with the source of the request that filled the
    # entry (another source gets a copy).
    principal: Principal


class _KeyCache:
    """Resolved API keys, trusted only while the database reports no credential change.

    The ``auth_generation`` counter (migration 0003) is bumped by database triggers whenever a
    role, an actor or an API key's credentials change (and, 0012, what decides a client
    certificate's authentication), from this process or any other; the cache's counter
    reads it on a connection of its own. The generation is read *before* the key
    (``api_key_from_store``), so a change landing between the two makes the next request
    read the database again: any revocation, deletion, role or key change invalidates every
    entry, while issuing certificates (the common write) does not. Expiry is checked against
    the cached expiry time; an entry whose ``last_used_at`` is a minute old takes the slow
    path, which writes it. Revoked, expired or unknown keys are never cached. A counter seen
    to go back (a restore, a failover) trusts nothing remembered before (``Generation``).

    PostgreSQL: one read of the counter per request (``PostgresCounter``). SQLite: that read
    costs ~4 µs and two ``fcntl`` calls in a loop, several times that between requests
    (``PRAGMA data_version`` costs the same, and changes at every commit), so it is skipped
    while nothing has been committed since the last one: before reading the counter, the
    cache copies the 48-byte WAL-index header from a read-only map of the ``-shm`` file (no
    system call), and while the header is unchanged the counter cannot have moved. Any commit
    (an issued certificate too) changes the header and costs one counter read.
    """

    MAX_ENTRIES = 1024

    def __init__(
        self, counter: SQLiteCounter | PostgresCounter, database: str | None = None
    ) -> None:
        self._counter = counter
        self._entries: dict[str, _CachedKey] = {}
        self._generation = Generation(
            counter,
            name="credential generation",
            forgotten="remembered keys and client certificates",
        )
        if database is not None and isinstance(counter, SQLiteCounter) and counter.wal:
            # After a read in WAL mode: the file exists and the counter's connection holds
            # it open.
            self._generation.read()
            self._generation.wal_index = wal_index(database)

    @property
    def counter(self) -> SQLiteCounter | PostgresCounter:
        return self._counter

    @property
    def has_wal_index(self) -> bool:
        return self._generation.wal_index is not None

    def version(self) -> int | None:
        """The credential generation, or None when it cannot be read (no caching then)."""
        return self._generation.version()

    def last_version(self) -> int | None:
        """The credential generation read last, reading nothing."""
        return self._generation.last_version()

    def authenticate(self, presented: str, source: str, timestamp: float) -> Principal | None:
        """The principal of a presented key cached at the current generation, else None.

        None when the key is not cached, stale or does not match, or its ``last_used_at`` is
        due: the caller then reads the database.

        Raises:
            AuthFailure: the key matches and has expired.
        """
        entry = self._entries.get(presented[KEY_ID])
        if entry is None:
            return None
        if (
            entry.version != self._generation.version()
            or not presented.startswith(entry.head)
            or not secret_matches(presented[len(entry.head) :], entry.secret_sha256)
        ):
            return None
        if entry.expires_ts is not None and entry.expires_ts <= timestamp:
            which = f"key {entry.key_id} (actor {entry.principal.actor_id})"
            raise AuthFailure(
                "API key expired", "expired", f"API key expired: {which}", f"apikey {entry.key_id}"
            )
        if timestamp >= entry.touch_after_ts:
            return None
        principal = entry.principal
        return principal if principal.source == source else replace(principal, source=source)

    def put(self, entry: _CachedKey) -> None:
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[entry.key_id] = entry


_KEY_CACHES: weakref.WeakKeyDictionary[Engine, _KeyCache | None] = weakref.WeakKeyDictionary()
# The last engine asked about (a server has one): found without WeakKeyDictionary's lookup.
_LAST_KEY_CACHE: tuple[weakref.ref[Engine], _KeyCache | None] | None = None


def generation_counter(engine: Engine) -> tuple[SQLiteCounter | PostgresCounter, str | None] | None:
    """The connection the credential generation is read on, for another one-row counter.

    With the SQLite database's path when its WAL index can tell that nothing was committed
    since a read (``wal_index``); None when the engine has no such connection (no caching).
    """
    cache = _key_cache(engine)
    if cache is None:
        return None
    counter = cache.counter
    database = engine.url.database if cache.has_wal_index else None
    return counter, database


def _key_cache(engine: Engine) -> _KeyCache | None:
    """The engine's key cache: SQLite database files and PostgreSQL."""
    global _LAST_KEY_CACHE
    last = _LAST_KEY_CACHE
    if last is not None and last[0]() is engine:
        return last[1]
    try:
        cache = _KEY_CACHES[engine]
    except KeyError:
        cache = _new_key_cache(engine)
        _KEY_CACHES[engine] = cache
    _LAST_KEY_CACHE = (weakref.ref(engine), cache)
    return cache


def _new_key_cache(engine: Engine) -> _KeyCache | None:
    database = engine.url.database
    if engine.dialect.name == "postgresql":
        # Connects at its first read: a database down now must not disable caching for good.
        return _KeyCache(PostgresCounter(engine))
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        try:
            return _KeyCache(SQLiteCounter(database), database)
        except sqlite3.Error:
            return None
    return None
