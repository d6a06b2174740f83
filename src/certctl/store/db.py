"""Engine creation (SQLite WAL or PostgreSQL via psycopg 3) and Alembic migrations on start."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    Engine,
    SQLColumnExpression,
    String,
    and_,
    create_engine,
    event,
    literal,
    make_url,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import GenericFunction

from certctl.errors import CertctlError, Conflict, InvalidRequest, StorageUnavailable

__all__ = [
    "POOL_CONNECTIONS",
    "POOL_KEPT_OPEN",
    "POOL_MIN",
    "POOL_RETRY_AFTER_S",
    "POOL_TIMEOUT_S",
    "PoolTimeout",
    "checkpoint",
    "connection_reason",
    "constraint_conflict",
    "contains_pattern",
    "create_store_engine",
    "detached_session",
    "exempt_from_idle_session_timeout",
    "installation_id",
    "json_string_contains",
    "lock_issuer_rows",
    "migrate",
    "session_factory",
    "startup_lock",
    "storage_error",
    "unicode_lower",
    "value_refusal",
]

_MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("certctl.store")


class unicode_lower(GenericFunction[str]):  # a SQL function, named as one
    """``lower()`` that folds every letter, not ASCII alone, on every backend.

    SQLite's built-in lower() leaves non-ASCII letters as they are ("ÖBB" → "Öbb"), so a
    case-insensitive search compared against Python's ``str.lower`` found nothing on SQLite
    that PostgreSQL found; there it is Python's, registered on each connection.
    """

    type = String()
    name = "unicode_lower"
    inherit_cache = True


@compiles(unicode_lower)
def _unicode_lower_default(element: unicode_lower, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(unicode_lower, "sqlite")
def _unicode_lower_sqlite(element: unicode_lower, compiler: SQLCompiler, **kw: Any) -> str:
    return f"certctl_lower({compiler.process(element.clauses, **kw)})"


# PostgreSQL engines whose database has the ICU root collation (set on first connect).
_ICU_DIALECTS: weakref.WeakSet[Dialect] = weakref.WeakSet()


@compiles(unicode_lower, "postgresql")
def _unicode_lower_postgresql(element: unicode_lower, compiler: SQLCompiler, **kw: Any) -> str:
    # lower() folds by the database's LC_CTYPE: under "C" (initdb --locale=C, many managed
    # databases) ASCII letters only, so "ÉCOLE" stayed "École" and q=école found nothing
    # that SQLite found. ICU's root locale folds every letter as Python's str.lower does.
    arg = compiler.process(element.clauses, **kw)
    if compiler.dialect in _ICU_DIALECTS:
        return f'lower(({arg}) COLLATE "und-x-icu")'
    return f"lower({arg})"


def contains_pattern(text: str) -> str:
    r"""A LIKE pattern (``ESCAPE '\'``) matching ``text`` anywhere: "_" and "%" as themselves."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class _json_strings_like(GenericFunction[bool]):
    r"""A string of JSON ``arg0`` (any depth, not a key) contains a needle, in either case.

    ASCII letters fold: ``arg1`` is the needle's LIKE pattern (lower case, ``ESCAPE '\'``),
    ``arg2`` a jsonpath that finds it.
    """

    type = Boolean()
    name = "json_strings_like"
    inherit_cache = True


@compiles(_json_strings_like, "sqlite")
def _json_strings_like_sqlite(element: _json_strings_like, compiler: SQLCompiler, **kw: Any) -> str:
    document, pattern, _ = element.clauses
    # json_tree has a row for every value (keys are a column of their members' rows).
    return (
        f"EXISTS (SELECT 1 FROM json_tree({compiler.process(document, **kw)}) AS j "
        f"WHERE j.type = 'text' AND lower(j.value) LIKE {compiler.process(pattern, **kw)} "
        "ESCAPE '\\')"
    )


@compiles(_json_strings_like, "postgresql")
def _json_strings_like_postgresql(
    element: _json_strings_like, compiler: SQLCompiler, **kw: Any
) -> str:
    document, _, path = element.clauses
    # A scalar function, not a subquery over a set-returning one: the planner costed that at
    # 17 a row, and at 100,000 rows called in the JIT compiler (130 ms more a search).
    return (
        f"jsonb_path_exists(CAST({compiler.process(document, **kw)} AS JSONB), "
        f"CAST({compiler.process(path, **kw)} AS JSONPATH))"
    )


class _json_text_like(GenericFunction[bool]):
    """JSON ``arg0``'s text, less the strings ``arg2…``, is LIKE ``arg1``, in either case."""

    type = Boolean()
    name = "json_text_like"
    inherit_cache = True


def _json_text(document: str, removed: list[str]) -> str:
    for key in removed:
        document = f"replace({document}, {key}, '')"
    return document


@compiles(_json_text_like, "sqlite")
def _json_text_like_sqlite(element: _json_text_like, compiler: SQLCompiler, **kw: Any) -> str:
    document, pattern, *removed = (compiler.process(c, **kw) for c in element.clauses)
    # SQLite's LIKE folds ASCII letters itself: lower() on the whole document cost 20 %.
    return f"{_json_text(document, removed)} LIKE {pattern} ESCAPE '\\'"


@compiles(_json_text_like, "postgresql")
def _json_text_like_postgresql(element: _json_text_like, compiler: SQLCompiler, **kw: Any) -> str:
    document, pattern, *removed = (compiler.process(c, **kw) for c in element.clauses)
    # lower() in the "C" collation folds ASCII letters alone, and 4 times faster than ILIKE
    # or lower() in a UTF-8 locale did.
    text = _json_text(f"CAST({document} AS TEXT)", removed)
    return f"lower({text} COLLATE \"C\") LIKE {pattern} ESCAPE '\\'"


# A JSON string writes these characters as themselves ('/' too: Python's json module, which
# SQLAlchemy writes the column with, does not escape it) but for '"' and '\', which every
# JSON writer escapes as '\"' and '\\'.
_JSON_PRINTABLE = frozenset(map(chr, range(0x20, 0x7F)))


def json_string_contains(
    document: SQLColumnExpression[Any], needle: str, keys: Iterable[str] = ()
) -> ColumnElement[bool]:
    r"""A string value of JSON column ``document`` (not a key) contains ASCII ``needle``.

    Case-insensitive for ASCII letters; ``needle`` is lower case. Keys, quotes, brackets and
    commas are not in any value, so "dns" or '", "' match nothing they spell.

    Taking each value out of the JSON costs twice what comparing a column does: that is
    done only for the rows whose JSON text contains ``needle`` as written in JSON at all.
    Sound for printable ASCII, which JSON writes one character at a time: a value
    containing ``needle`` has it in the text so written. A needle in a key of ``keys`` and
    its colon ("mail" in '"email":', or ":") would pass every row: those keys are taken out
    of the text first. Only keys go: '"email":' in a value is written '"email":'.
    """
    # like_regex takes no variable: the needle is written into the path (a JSON string is a
    # jsonpath string), "q" for a literal, "i" for either case.
    path = f'$.** ? (@ like_regex {json.dumps(needle)} flag "iq")'
    exact = _json_strings_like(document, contains_pattern(needle), path)
    if not _JSON_PRINTABLE.issuperset(needle):
        return exact
    written = needle.replace("\\", "\\\\").replace('"', '\\"')
    removed = [literal(f'"{key}":') for key in keys if written in f'"{key.lower()}":']
    return and_(_json_text_like(document, contains_pattern(written), *removed), exact)


def _pg_case_folding(engine: Engine, dbapi_connection: Any) -> None:
    """Use ICU for ``unicode_lower`` when the database has it, or warn once where it falls short.

    Without ICU (a server built without it; Debian's, Red Hat's and the Docker images have
    it) or in a database that is not UTF-8 (ICU refuses SQL_ASCII), ``unicode_lower`` falls
    back to lower(): right under a UTF-8 LC_CTYPE, ASCII letters only under "C".
    """
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True  # no transaction left open on the pooled connection
    try:
        has_icu, ctype = dbapi_connection.execute(
            "SELECT EXISTS (SELECT FROM pg_collation WHERE collname = 'und-x-icu' "
            "AND collprovider = 'i') AND current_setting('server_encoding') = 'UTF8', "
            "current_setting('lc_ctype')"
        ).fetchone()
    finally:
        dbapi_connection.autocommit = autocommit
    if has_icu:
        _ICU_DIALECTS.add(engine.dialect)
    elif ctype in ("C", "POSIX"):
        log.warning(
            "PostgreSQL has no ICU collation und-x-icu in this database (LC_CTYPE %s): "
            "certificate search (q) folds the case of ASCII letters only",
            ctype,
        )


def _python_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


# Threads of one server process that may each hold a pooled connection at the same time:
# the event loop (1); the API's worker threads, each bounded by a limiter (api._common,
# api.issuer_routes, api.certificate_routes, api.authentication): the write routes (6), the
# CA-certificate and the CRL routes (4 each), listings and a service's outputs (2),
# authentication's reads (2) and failure audits (1), RSA issuance (2: its issuer's first
# load) and /readyz's ping (1); a separate metrics
# listener's app: its authentication (3) and /readyz (1); and the background work: the
# group commit, the scheduler's tick, the webhook dispatcher, the periodic metrics refresh,
# CA renewal and issuer-cache refresh (server.run), and the leader's advisory lock, held on
# a pooled connection (7). 34 (tests/api/test_event_loop.py adds them up). A pool smaller
# than that (PostgreSQL's held 20, SQLite's 30) let a burst that kept them all busy wait
# pool_timeout (30 s) for a connection, then fail with 503. ``database-pool-size`` may set a
# smaller pool (PostgreSQL's max_connections shared by many processes): a burst then waits.
POOL_CONNECTIONS = 34
# Kept open between uses; the others are opened under load and closed when returned.
POOL_KEPT_OPEN = 10
# The smallest pool that cannot starve: the leader's advisory lock holds one for the life of
# the process, the group commit needs one to answer any issuance, and requests and the other
# background work share the last. Below it, a leader's issuances could wait for ever.
POOL_MIN = 3
# How long a checkout waits for a free connection before the request answers 503 (with
# Retry-After: POOL_RETRY_AFTER_S). Only a pool smaller than the threads that may hold one
# (``database-pool-size`` below POOL_CONNECTIONS) ever waits; a client would rather retry
# than hang for SQLAlchemy's default 30 s.
POOL_TIMEOUT_S = 10.0
POOL_RETRY_AFTER_S = 2


def create_store_engine(url: str, pool_size: int = POOL_CONNECTIONS) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys.

    ``pool_size``: connections at most at once (``database-pool-size``), POOL_KEPT_OPEN of
    them (or all, if fewer) kept open between uses.

    ``hide_parameters``: a failed statement's error text (logged with its traceback) would
    otherwise quote its parameters: key hashes, wrapped keys, certificates.
    """
    if pool_size < POOL_MIN:
        raise ValueError(f"pool_size {pool_size} is below {POOL_MIN}")
    kept_open = min(POOL_KEPT_OPEN, pool_size)
    limits = {
        "pool_size": kept_open,
        "max_overflow": pool_size - kept_open,
        "pool_timeout": POOL_TIMEOUT_S,
    }
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        database = make_url(url).database
        # A SQLite connection is a file handle and at most its page cache: POOL_KEPT_OPEN
        # kept open (beyond them one is opened per use), up to pool_size at once. The one
        # returned last is handed out first (LIFO): SQLite drops a connection's whole page
        # cache when it finds that another connection has written since its last
        # transaction, so in turn (FIFO) every group commit started cold and read its B-tree
        # pages again (29 KB and 8 reads per issued certificate under load, 5 KB and 2 now).
        file = database not in (None, "", ":memory:")
        pool = {**limits, "pool_use_lifo": True} if file else {}
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            hide_parameters=True,
            **pool,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside the writer. FULL fsyncs the WAL at every commit, so
            # a 201 is only sent for a certificate that survives a power cut or a disk that
            # turns read-only after an I/O error (NORMAL survives a process crash only, and
            # lost the last seconds of issuances in tests/faults/test_storage.py); it costs
            # ~0.3 ms per commit (docs/reliability.md).
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            dbapi_connection.create_function("certctl_lower", 1, _python_lower, deterministic=True)

        return engine
    engine = create_engine(
        url,
        pool_pre_ping=True,
        **limits,
        hide_parameters=True,
        # UTF-8 whatever the database's encoding: a SQL_ASCII one (initdb's default under the
        # C locale, as in many containers) otherwise returned bytes for text, and the first
        # start failed with "internal error (TypeError …)". Not left to the URL: certctl's
        # names and subjects are Unicode, another client encoding would garble or refuse them.
        connect_args={**_pg_timeouts(make_url(url).query), "client_encoding": "utf8"},
    )

    @event.listens_for(engine, "first_connect")
    def _pg_first_connect(dbapi_connection: Any, _record: object) -> None:
        _pg_case_folding(engine, dbapi_connection)

    @event.listens_for(engine, "connect")
    def _pg_session_timeouts(dbapi_connection: Any, _record: object) -> None:
        # The server's side of the same cut: by default PostgreSQL notices a vanished client
        # only after two hours of silence, and its session keeps what it holds meanwhile:
        # the leader's advisory lock (no other replica takes over the reconciles and the CA
        # renewal) and the row and advisory locks of an open transaction.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            for name, value in PG_SERVER_TIMEOUTS.items():
                dbapi_connection.execute(f"SET {name} = {int(value)}")
        finally:
            dbapi_connection.autocommit = autocommit

    return engine


# libpq's defaults wait for ever: a database host that stops answering (a network cut, a host
# powered off, a firewall dropping packets) hung ``certctl serve`` at start and every request
# for the kernel's retransmission timeout (~15 minutes) instead of answering 503. Bounded:
# connecting (seconds), unacknowledged writes (ms), and idle connections (keepalive probes).
# Parameters given in the database URL win.
PG_TIMEOUTS: dict[str, int] = {
    "connect_timeout": 5,
    "tcp_user_timeout": 15_000,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


# The same bounds on PostgreSQL's side of each session (per-session settings, any user).
PG_SERVER_TIMEOUTS: dict[str, int] = {
    "tcp_keepalives_idle": 10,
    "tcp_keepalives_interval": 5,
    "tcp_keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


def _pg_timeouts(query: Mapping[str, object]) -> dict[str, int]:
    return {name: value for name, value in PG_TIMEOUTS.items() if name not in query}


# Keys of pg_advisory_xact_lock: one per kind of write that must not interleave.
SERVICE_SPECS_LOCK = 0x63657274_0001  # "cert", 1
# Role, actor and API-key changes whose checks read other rows (the last r-admin holder, the
# roles being assigned or deleted): checked and written by one replica at a time.
AUTH_LOCK = 0x63657274_0002  # "cert", 2
# Start-up (migrations, built-in roles, the default CA, the admin key): one replica at a time.
STARTUP_LOCK = 0x63657274_0003  # "cert", 3
# The scheduler's leadership (session-level, held by the replica that reconciles): "certctl".
LEADER_LOCK = int.from_bytes(b"certctl", "big")
# What migration 0016's triggers notify on PostgreSQL when a service changes, and the counter
# they bump on SQLite: the reconciling process listens or polls (server.service_changes).
SERVICE_CHANGES_CHANNEL = "certctl_services"
SERVICE_GENERATION_SQL = "SELECT value FROM service_generation WHERE id = 1"
# Revocations, of certificates and of issuers: a keyCompromise one revokes a whole renewal
# chain, or every issuer holding the key (and bumps each parent's CRL count), row by row, and
# another revocation over the same rows taking them in another order deadlocked with it.
# PostgreSQL's lock order for every write that locks more than one issuer or certificate row:
# this lock (revocations), then the issuer rows in ascending id (lock_issuer_rows), then the
# certificate rows.
REVOCATION_LOCK = 0x63657274_0004  # "cert", 4


def exempt_from_idle_session_timeout(connection: Connection) -> None:
    """PostgreSQL 14+: ``idle_session_timeout`` no longer ends this session.

    For the sessions that hold a session-level advisory lock (leadership, start-up, a KEK
    rotation): idle by design between their statements, for longer than a timeout set for
    the role or database may be, and the lock ends with the session. Only on a connection
    that is never returned to the pool: ``SET`` lasts as long as the session.
    """
    # PostgreSQL 14 added the setting; SET of an unknown one is an error before it.
    if (connection.dialect.server_version_info or (0,)) >= (14,):
        connection.execute(text("SET idle_session_timeout = 0"))


def detached_session(engine: Engine) -> Any:
    """A PostgreSQL driver connection of ``engine``'s, in autocommit, the pool never sees again.

    For the sessions held for the life of a process outside ``database-pool-size`` (the
    credential counter's, the leader's change listener): the engine's connect arguments and
    session timeouts (keepalives: a silent cut ends it within seconds), whatever the
    checkout's ping began rolled back. Idle by design, so exempt from an
    ``idle_session_timeout`` set for the role or database (PostgreSQL 14+), which would end
    it at each quiet spell. Closed here when any of that fails; the caller closes it after.
    """
    pooled = engine.raw_connection()
    connection: Any = pooled.driver_connection
    pooled.detach()  # the pool forgets it: never handed to another caller
    try:
        connection.rollback()
        connection.autocommit = True
        if (engine.dialect.server_version_info or (0,)) >= (14,):
            connection.execute("SET idle_session_timeout = 0")
    except Exception:
        with contextlib.suppress(Exception):
            connection.close()
        raise
    return connection


@contextlib.contextmanager
def startup_lock(engine: Engine) -> Iterator[None]:
    """Hold the start-up lock: replicas starting together migrate and bootstrap in turn.

    Two replicas started at once on an empty PostgreSQL database would otherwise both run
    the migrations (the second fails on ``CREATE TABLE``) and both create the default CA and
    the admin actor (the second fails on the primary key). PostgreSQL: a session-level
    advisory lock on a connection of its own, released when the block ends (or by the server
    when the process dies). SQLite needs none: its processes are the workers of one
    ``certctl serve``, which bootstraps before it forks them.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        try:
            # Idle while the migrations and the bootstrap run on other connections. Inside
            # the try: a session whose SET or lock failed must not go back to the pool either.
            exempt_from_idle_session_timeout(connection)
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": STARTUP_LOCK})
            yield
        finally:
            # Invalidated, not pooled: a session still holding the lock must not be reused.
            connection.invalidate()


def checkpoint(engine: Engine) -> None:
    """SQLite: copy every commit from ``certctl.db-wal`` into ``certctl.db`` and empty the log.

    Best effort, for a server on its way out: a failure (busy, read-only, full) only leaves
    the log, which SQLite replays at the next open. PostgreSQL: nothing to do.
    """
    if engine.dialect.name != "sqlite":
        return
    try:
        with engine.connect() as connection:
            # A transaction still open elsewhere (a scheduler pass cut by SIGTERM) would hold
            # the checkpoint for the whole 30 s busy timeout: past a Kubernetes pod's default
            # grace period, so the stop would end in SIGKILL. Two seconds, then leave the log.
            previous = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
            connection.exec_driver_sql("PRAGMA busy_timeout = 2000")
            try:
                busy = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").scalar()
            finally:
                connection.exec_driver_sql(f"PRAGMA busy_timeout = {int(previous or 0)}")
        if busy:
            log.debug("checkpoint left part of the log: another process is reading")
    except DBAPIError as exc:
        log.debug("checkpoint failed: %s", exc.orig)


def lock_for_write(session: Session, key: int) -> None:
    """Serialize this transaction with every other taking ``key``, before it reads.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: a write statement (matching no
    row) takes the database's write lock at once; pysqlite would otherwise run the reads
    that come first outside any transaction, and two processes could decide on the same
    stale state. Either way the lock ends with the transaction.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        session.execute(text("UPDATE managed_services SET name = name WHERE 0"))


_LOCK_ISSUER_ROWS = text(
    "SELECT id FROM issuers WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE"
)


def lock_issuer_rows(connection: Connection, ids: Iterable[str | None]) -> None:
    """PostgreSQL: lock the issuer rows ``ids`` (None left out) in ascending id, at once.

    For a transaction about to write several issuer rows, directly or through migration
    0020's triggers (a revoked certificate or intermediate bumps its issuer's or parent's
    CRL count): each UPDATE locked its rows when it ran, so two revocations over the same
    issuers (an intermediate, and a keyCompromise of its key's other certificate under the
    same parent) took them in different orders and PostgreSQL rolled one back as a
    deadlock. Taken in one order before the first write, one waits for the other instead.
    ``FOR NO KEY UPDATE``, the lock those UPDATEs take: issuance's foreign-key check (``FOR
    KEY SHARE``) does not wait for it. Rows already held are no new lock. SQLite: nothing,
    its writers run one at a time (the caller holds the write lock: ``lock_for_write``).
    """
    wanted = sorted({i for i in ids if i is not None})
    if wanted and connection.dialect.name == "postgresql":
        connection.execute(_LOCK_ISSUER_ROWS, {"ids": wanted})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def _head_revision() -> str:
    """The newest migration's revision id: file names start with it (``0003_….py``)."""
    names = (p.name for p in (_MIGRATIONS / "versions").glob("[0-9]*.py"))
    return max(name.split("_", 1)[0] for name in names)


def _stored_revisions(engine: Engine) -> list[str]:
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError:
        return []  # a new database: no alembic_version table yet
    return [r[0] for r in rows]


def installation_id(engine: Engine) -> str:
    """This installation's id (migration 0017): the same for every replica of one database.

    Recorded on the Kubernetes Secrets certctl writes, so another installation delivering
    into the same namespace never overwrites them.

    Raises:
        CertctlError: the row is gone (deleted by hand): a new id would disown every Secret
            written so far, so none is made up.
    """
    with engine.connect() as connection:
        uid = connection.execute(text("SELECT uid FROM installation WHERE id = 1")).scalar()
    if not isinstance(uid, str) or not uid:
        raise CertctlError(
            "the database holds no installation id (table installation is empty); restore "
            "that row from a backup (the id is on the Secrets certctl wrote, annotation "
            "certctl.io/owner)"
        )
    return uid


def migrate(engine: Engine) -> None:
    """Apply Alembic migrations up to head in one transaction (idempotent; safe on every start).

    A store already at head is recognised with one query, without importing Alembic
    (a quarter of ``certctl serve``'s start-up time).

    Raises:
        CertctlError: the database was migrated by a newer certctl (a rollback after an
            upgrade), or carries a revision certctl never made; Alembic would only say it
            cannot locate the revision.
    """
    head = _head_revision()
    stored = _stored_revisions(engine)
    if stored == [head]:
        return
    known = {p.name.split("_", 1)[0] for p in (_MIGRATIONS / "versions").glob("[0-9]*.py")}
    unknown = sorted(set(stored) - known)
    if unknown and all(r.isdigit() and len(r) == len(head) and r > head for r in unknown):
        raise CertctlError(
            f"the database schema is at revision {', '.join(unknown)}, newer than this "
            f"certctl's {head}: it was upgraded by a newer certctl; run that version, or "
            "restore the database backed up before the upgrade"
        )
    if unknown:  # not a certctl revision: another application's Alembic, or edited by hand
        raise CertctlError(
            f"the database schema is at revision {', '.join(unknown)}, which no certctl "
            f"migration made (this certctl's newest is {head}): check database-url, or "
            "restore the database from a backup"
        )
    with _alembic_quiet():
        from alembic import command
        from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    for attempt in range(1, PG_MIGRATION_ATTEMPTS + 1):
        try:
            with engine.connect() as connection, _one_transaction(connection):
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(
                        f"SET LOCAL lock_timeout = {int(PG_MIGRATION_LOCK_TIMEOUT_MS)}"
                    )
                config.attributes["connection"] = connection
                applied: list[str] = []
                config.attributes["applied"] = applied
                started = time.monotonic()
                with _alembic_quiet():
                    command.upgrade(config, "head")
            _log_applied(stored, applied, time.monotonic() - started)
            return
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != _PG_LOCK_NOT_AVAILABLE:
                raise
            holders = _lock_holders(engine)
        if attempt < PG_MIGRATION_ATTEMPTS:
            log.warning("migration: a table is locked by another session%s; trying again", holders)
            time.sleep(PG_MIGRATION_PAUSE_S)
    raise CertctlError(
        f"cannot migrate the database: a table it changes stayed locked by another "
        f"session{holders} (a long transaction, pg_dump, an open psql); let it end, then "
        "start again"
    )


@contextlib.contextmanager
def _alembic_quiet() -> Iterator[None]:
    """Only Alembic's warnings and errors pass.

    Its INFO lines ("Context impl SQLiteImpl.", one "Running upgrade" per revision, a line per
    plugin it imports) came before, and buried, the first start's banner with the admin key;
    ``_log_applied`` says in one line what was migrated.
    """
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        alembic_log.setLevel(level)


def _log_applied(stored: list[str], applied: list[str], seconds: float) -> None:
    # With its duration (commit included): a migration that runs ANALYZE (0014) or rewrites a
    # table takes a while on a large store, and the operator waiting for the start sees why.
    if not applied:
        return
    names = applied[0] if len(applied) == 1 else f"{applied[0]} to {applied[-1]}"
    if stored:
        log.info(
            "migrated the database schema from %s: applied %s in %.2f s", stored[0], names, seconds
        )
    else:
        log.info("created the database schema: applied %s in %.2f s", names, seconds)


# A migration's ALTER TABLE waits for every transaction that has read the table (pg_dump, a
# psql left in a transaction), and every query of the replicas still serving queues behind
# it: they hung as long as that transaction lasted. Bounded: the upgrade gives up after 2 s
# and tries again after a pause in which requests flow, for about a minute.
PG_MIGRATION_LOCK_TIMEOUT_MS = 2000
PG_MIGRATION_PAUSE_S = 3.0
PG_MIGRATION_ATTEMPTS = 12
_PG_LOCK_NOT_AVAILABLE = "55P03"


def _lock_holders(engine: Engine) -> str:
    """``" (pid 42: psql, idle in transaction)"``: sessions in a transaction longer than the wait.

    Only what names the session: never its query text, which may carry secrets.
    """
    query = text(
        "SELECT pid, application_name, state FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND xact_start < now() - make_interval(secs => :secs) ORDER BY xact_start LIMIT 3"
    )
    try:
        with engine.connect() as connection:
            rows = connection.execute(query, {"secs": PG_MIGRATION_LOCK_TIMEOUT_MS / 1000}).all()
    except DBAPIError:
        return ""
    named = [f"pid {pid}: {app or 'no application_name'}, {state}" for pid, app, state in rows]
    return f" ({'; '.join(named)})" if named else ""


@contextlib.contextmanager
def _one_transaction(connection: Connection) -> Iterator[None]:
    """A transaction around the whole upgrade; on SQLite, holding the write lock from the start.

    pysqlite opens a transaction only before INSERT/UPDATE/DELETE: a migration's ALTER and
    CREATE ran in autocommit, so a start killed (or a disk filled) half-way left them applied
    under the old revision, and every later start failed on them ("duplicate column name").
    With the driver's own transaction handling off, BEGIN IMMEDIATE makes the upgrade one
    transaction (SQLite's DDL is transactional), and another process migrating the same file
    waits for it (busy_timeout), then finds the store at head.
    """
    if connection.dialect.name != "sqlite":
        with connection.begin():
            yield
        return
    driver: Any = connection.connection.driver_connection
    previous = driver.isolation_level
    driver.isolation_level = None
    try:
        with connection.begin():
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield
    finally:
        # Pooled again afterwards (an in-memory store has this one connection only).
        driver.isolation_level = previous


# sqlite3 extended result names (Python 3.11+: ``sqlite_errorname``) → what the caller is told.
# Prefixes cover the extended codes (SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED, …).
_SQLITE_FAULTS = (
    ("SQLITE_FULL", "storage is full: writes are refused until space is freed"),
    ("SQLITE_READONLY", "storage is read-only: writes are refused"),
    # Growing the -shm file failed: on Linux, no space left (a full disk at start said
    # "read-only or failing disk").
    ("SQLITE_IOERR_SHMSIZE", "storage is full: writes are refused until space is freed"),
    ("SQLITE_IOERR", "storage I/O error (read-only or failing disk): writes are refused"),
    ("SQLITE_CANTOPEN", "storage is unavailable: cannot open the database file"),
    # Replaced or damaged (a bad restore, a failing disk): said so, not "internal error".
    ("SQLITE_NOTADB", "storage is damaged: the database file is not an SQLite database"),
    ("SQLITE_CORRUPT", "storage is damaged: the database file is corrupt"),
    ("SQLITE_BUSY", "storage is busy: retry later"),
    ("SQLITE_LOCKED", "storage is busy: retry later"),
)
# PostgreSQL SQLSTATEs (psycopg ``sqlstate``) with a specific message.
_PG_FAULTS = {
    "53100": "storage is full: writes are refused until space is freed",  # disk_full
    "25006": "storage is read-only: writes are refused",  # read_only_sql_transaction
}

# Transactions PostgreSQL ends for another's sake: nothing of them was written. The writes
# that lock several rows take them in one order (REVOCATION_LOCK), so none is expected; a
# safety net for one missed, or a replica of an older release during a rolling update.
_PG_CONFLICTS = {
    "40P01": "storage is busy: this write deadlocked with a concurrent one and was rolled back",
    "40001": "storage is busy: this write conflicted with a concurrent one and was rolled back",
}
# Statements PostgreSQL cancels at a limit set for the role or database (ALTER ROLE … SET):
# a wait for a lock another transaction holds (a revocation waits for the one in progress,
# a keyCompromise of a long renewal chain takes seconds) or a slow statement. The database
# answered; psycopg raises them as OperationalErrors, which said it cannot be reached.
_PG_TIMEOUTS = {
    "55P03": "storage is busy: this request waited for a lock held longer than the "
    "database's lock_timeout and was rolled back",
    "57014": "storage is busy: a statement of this request ran past the database's "
    "statement_timeout (or was cancelled) and was rolled back",
}
CONFLICT_RETRY_AFTER_S = 1
# Retry-After of every other storage 503 (full, read-only, I/O error, cannot be reached,
# damaged): without one a client had no pace to retry at but its own, and a fleet of them
# retried at once; a few seconds spans a PostgreSQL restart or failover, and the first write
# after space returns goes through (docs/reliability.md).
STORAGE_RETRY_AFTER_S = 5


def storage_error(exc: BaseException) -> StorageUnavailable | None:
    """The typed 503 for a database error caused by the storage, else None (a bug: a 500).

    Also for SQLAlchemy's pool timeout (``PoolTimeout``, no DB-API error): no connection free.

    Storage faults are: SQLite full, read-only, I/O error, cannot open, busy; PostgreSQL disk
    full, read-only transaction, a deadlock, a lock_timeout or statement_timeout run out and
    every other DB-API ``OperationalError`` (connection lost, server shutting down, …).
    SQLite also reports SQL mistakes as ``OperationalError``, so SQLite is classified by its
    result code, never by the exception class.
    """
    if isinstance(exc, PoolTimeout):
        # Every pooled connection stayed busy for pool_timeout (writes queued behind SQLite's
        # write lock, a slow PostgreSQL): an overloaded store, not a bug: 503, to retry.
        return StorageUnavailable(
            "storage is busy: no database connection came free in time",
            retry_after_s=POOL_RETRY_AFTER_S,
        )
    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        for prefix, detail in _SQLITE_FAULTS:
            if name.startswith(prefix):
                # Busy: another writer held SQLite's lock past busy_timeout; it passes soon.
                busy = prefix in ("SQLITE_BUSY", "SQLITE_LOCKED")
                delay_s = CONFLICT_RETRY_AFTER_S if busy else STORAGE_RETRY_AFTER_S
                return StorageUnavailable(detail, retry_after_s=delay_s)
        return None
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in _PG_FAULTS:
        return StorageUnavailable(_PG_FAULTS[sqlstate], retry_after_s=STORAGE_RETRY_AFTER_S)
    if sqlstate in _PG_CONFLICTS:
        # An OperationalError too, which said "the database cannot be reached": PostgreSQL
        # ended this transaction (rolled back) for another's sake; the next try goes through.
        return StorageUnavailable(_PG_CONFLICTS[sqlstate], retry_after_s=CONFLICT_RETRY_AFTER_S)
    if sqlstate in _PG_TIMEOUTS:
        return StorageUnavailable(_PG_TIMEOUTS[sqlstate], retry_after_s=CONFLICT_RETRY_AFTER_S)
    if type(orig).__module__.startswith("psycopg") and _is_operational(orig):
        return StorageUnavailable(
            "storage is unavailable: the database cannot be reached",
            retry_after_s=STORAGE_RETRY_AFTER_S,
        )
    return None


def connection_reason(exc: BaseException) -> str:
    """Why PostgreSQL or libpq refused the session, as `` (reason)``; else "".

    For the operator (a start, the log), never for API clients (their 503 keeps the bare
    detail). PostgreSQL's FATAL line (a wrong password or role, no such database), or libpq's
    first line naming the address and why (refused, a host that does not resolve, a URL
    parameter it refuses): a password rotated in PostgreSQL under running replicas read only
    as "the database cannot be reached". libpq never puts the password in these lines.
    """
    orig = getattr(exc, "orig", None)
    if orig is None or not type(orig).__module__.startswith("psycopg"):
        return ""
    lines = str(orig).splitlines()
    for line in lines:
        _, fatal, reason = line.partition("FATAL:")
        if fatal and reason.strip():
            return f" ({reason.strip()})"
    # No session at all: libpq's first line names the address and why (refused, timed out, a
    # host name that does not resolve), where a wrong port or host said nothing more.
    first = lines[0].strip() if lines else ""
    for prefix in ("connection failed:", "connection is bad:"):
        first = first.removeprefix(prefix).strip()
    # "invalid sslmode value", "invalid port number": a parameter of the URL libpq refused.
    if first.startswith(("connection to server", "failed to resolve host", "invalid ")):
        return f" ({first})"
    if first == "connection timeout expired":  # psycopg's, naming no address
        return " (no answer within connect_timeout, 5 s unless database-url sets it)"
    return ""


def _is_operational(orig: object) -> bool:
    import psycopg

    return isinstance(orig, psycopg.OperationalError)


# Constraint violations that mean "another request got there first", not a bug: a primary key
# or unique value inserted by a concurrent request (two replicas creating role ``x`` at once),
# or a row referred to that a concurrent request deleted. SQLite extended result names and
# PostgreSQL SQLSTATEs.
_SQLITE_UNIQUE = ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE")
_SQLITE_FOREIGN_KEY = "SQLITE_CONSTRAINT_FOREIGNKEY"
_PG_UNIQUE = "23505"  # unique_violation
_PG_FOREIGN_KEY = "23503"  # foreign_key_violation


def constraint_conflict(exc: BaseException) -> Conflict | None:
    """The 409 for a write that lost a race with a concurrent request, else None.

    The services check that an id is free (or that what a row refers to exists) before they
    write; between the check and the commit another replica or worker can create (or delete)
    the same row. The database's constraint then refuses the write: that is a conflict the
    client may retry, not an internal error. Other constraint failures (NOT NULL, CHECK)
    stay bugs.
    """
    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    code = getattr(orig, "sqlite_errorname", None)
    if not isinstance(code, str):
        code = getattr(orig, "sqlstate", None)
    if code in _SQLITE_UNIQUE or code == _PG_UNIQUE:
        return Conflict("a concurrent request created the same record first: it already exists")
    if code in (_SQLITE_FOREIGN_KEY, _PG_FOREIGN_KEY):
        return Conflict("a record this request refers to was deleted by a concurrent request")
    return None


# Values a PostgreSQL database refuses whatever the request's validation said: in a SQL_ASCII
# database (initdb's default under the C locale) a VARCHAR(200) holds 200 bytes, not
# characters; in a LATIN1 (or other single-byte) one, a character it has no byte for.
_PG_TOO_LONG = "22001"  # string_data_right_truncation
_PG_UNTRANSLATABLE = ("22P05", "22021")  # untranslatable_character, character_not_in_repertoire
_PG_ENCODING = re.compile(r'encoding "([^"]+)"\s*$')


def value_refusal(exc: BaseException) -> InvalidRequest | None:
    """The 400 for a value the PostgreSQL database cannot store as it is, else None.

    A name of 200 characters beyond ASCII in a SQL_ASCII database, or of characters a LATIN1
    database has no byte for, answered 500 (an internal error) though nothing was written
    and the same request succeeds with other characters. Never quotes the value.
    """
    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    code = getattr(orig, "sqlstate", None)
    if code == _PG_TOO_LONG:
        return InvalidRequest(
            "a value is longer than the database holds (a SQL_ASCII PostgreSQL database counts "
            "bytes, 2 to 4 for each character beyond ASCII, where a UTF8 one counts "
            "characters): give a shorter one"
        )
    if code in _PG_UNTRANSLATABLE:
        found = _PG_ENCODING.search(str(orig).splitlines()[0] if str(orig) else "")
        encoding = f" ({found.group(1)})" if found else ""
        return InvalidRequest(
            f"a value holds a character the database's encoding{encoding} cannot store: "
            "use other characters, or keep certctl's data in a UTF8 database, which stores "
            "them all"
        )
    return None
