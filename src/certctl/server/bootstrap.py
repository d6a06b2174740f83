"""First start and every start: data dir, KEK, migrations, built-in roles, CA, admin key.

The store and KEK checks here are shared with :mod:`certctl.server.kek_rotation`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL, Engine, inspect, make_url, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from certctl.errors import CertctlError, InvalidRequest, StorageUnavailable
from certctl.files import SECRET_MODE, fsync_directory, tighten_secret, write_atomic
from certctl.pki import parse_duration
from certctl.server.config import ServerConfig
from certctl.server.tls import own_server_names
from certctl.services import actors, api_keys, issuers, roles
from certctl.services.context import Services
from certctl.store.db import (
    connection_reason,
    create_store_engine,
    migrate,
    session_factory,
    startup_lock,
    storage_error,
)
from certctl.store.keywrap import (
    MASTER_KEY_ENV,
    NEXT_KEK,
    KeyWrapper,
    kek_source,
    load_or_create_kek,
    master_key_from_env,
    read_kek_file,
    refuse_blank_master_key,
)
from certctl.store.models import Actor, Issuer

__all__ = [
    "Bootstrapped",
    "bootstrap",
    "check_kek",
    "data_dir_lock",
    "existing_store",
    "hold_data_dir",
    "kek_opens",
    "mint_local_key",
    "refuse_in_memory",
    "settled_kek",
]

log = logging.getLogger("certctl.server")


@dataclass(frozen=True)
class Bootstrapped:
    """What start-up produced; ``admin_key`` is set only on the very first start."""

    services: Services
    admin_key: str | None
    admin_key_file: Path


def bootstrap(config: ServerConfig) -> Bootstrapped:
    """Prepare the store and the internal CA; idempotent across restarts and replicas.

    Raises:
        InvalidRequest: an in-memory SQLite ``database-url``, a malformed
            ``CERTCTL_MASTER_KEY`` (refused before anything is created), a data dir that is
            not one, …
        StorageUnavailable: the database cannot be opened or written (read-only, full, down).
    """
    refuse_in_memory(config.database_url)
    # Before the data dir, the database file or a migration: a malformed key found after
    # them left a refused first start's migrated, empty store (and an upgraded one) behind.
    master_key_from_env()
    refuse_blank_master_key(config.data_dir)
    try:
        _refuse_missing_kek(config)
        return _bootstrap(config)
    except DBAPIError as exc:
        fault = storage_error(exc)
        if fault is None:
            refused = _option_refusal(exc) or _privilege_refusal(exc, config.effective_database_url)
            if refused is None:
                raise
            raise InvalidRequest(f"cannot start: {refused}") from None
        raise StorageUnavailable(f"cannot start: {fault.detail}{_refusal(exc)}") from None


def _refuse_missing_kek(config: ServerConfig) -> None:
    """Refuse, before the data dir is touched, a replica without the key of a keyed store.

    A new PostgreSQL replica started without ``CERTCTL_MASTER_KEY`` was refused only once
    its data dir (made for it) held ``certctl.lock``: a refused start should leave the data
    dir as it found it, as the malformed-key check above does. The check under the start-up
    lock (``settled_kek``) stays: a store may get its first keys between the two. SQLite's
    store lives in the data dir, which is there already, and opening it would make its
    -wal and -shm files before they are tightened: it is checked under the lock only.
    """
    data_dir = config.data_dir
    url = config.effective_database_url
    if url.lower().startswith("sqlite") or master_key_from_env() is not None:
        return
    if (data_dir / "kek").exists():
        return
    engine = create_store_engine(url, config.database_pool_size)
    try:
        # A database that cannot be reached is refused here, as the start below would
        # refuse it: passed over, a host that never answers was waited for twice (two
        # connect_timeouts before the one line).
        with engine.connect() as connection:
            try:
                if not inspect(connection).has_table(Issuer.__tablename__):
                    return  # a new database: the first start makes the key
                keyed = connection.scalar(select(Issuer.id).limit(1)) is not None
            except DBAPIError:
                # A role that may not read it: refused below as before, in the words of
                # the step that needs it (the migrations' table, not this query's).
                return
    finally:
        engine.dispose()
    if keyed:
        load_or_create_kek(data_dir, create=False, replicas=True)  # raises, naming the key


def refuse_in_memory(url: str | None) -> None:
    """Refuse ``sqlite://`` (or ``:memory:``): a store that vanishes with the process.

    Each pooled connection (and each worker) would get its own empty database: the start
    failed with "no such table", and the CA, the admin key and every certificate would be
    gone at the next start while ``admin-api-key`` and ``tls/ca.crt`` stayed in the data dir.
    """
    if url is None or not url.lower().startswith("sqlite"):
        return
    parsed = make_url(url)
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise InvalidRequest(
            "database-url: an in-memory SQLite database is lost when the server stops; give "
            "a file (sqlite:////var/lib/certctl/certctl.db) or leave database-url unset for "
            "<data-dir>/certctl.db"
        )


def _refusal(exc: DBAPIError) -> str:
    """PostgreSQL's own reason for refusing the session, e.g. ``(database "x" does not exist)``.

    At start, for the operator: a wrong role, password, database name, host or port
    otherwise read as "cannot be reached" (see ``connection_reason``).
    """
    return connection_reason(exc)


def _option_refusal(exc: DBAPIError) -> str | None:
    """The reason libpq refused a URL parameter for, before connecting; else None.

    ``?connect_timeout=abc`` or ``?foo=bar`` raised psycopg's ProgrammingError (no SQLSTATE:
    no server answered), which said "internal error (ProgrammingError: …)". libpq's line
    quotes the parameter and its value, never the password (which it does not check).
    """
    orig = exc.orig
    if exc.statement is not None or getattr(orig, "sqlstate", None) is not None:
        return None
    if type(orig).__name__ != "ProgrammingError" or not type(orig).__module__.startswith("psycopg"):
        return None
    first = str(orig).strip().split("\n")[0].strip()
    return f"database-url: {first}" if first else None


def _privilege_refusal(exc: DBAPIError, url: str) -> str | None:
    """What to do when PostgreSQL denied the role a privilege (SQLSTATE 42501), else None.

    Two set-ups end there: a database the role does not own (PostgreSQL 15 lets only the
    owner create tables in ``public``), and a ``pg_restore`` run as a superuser, whose tables
    belong to it. Both said "internal error (ProgrammingError: … InsufficientPrivilege …)".
    Only the role is named, never the URL (it may hold the password).
    """
    orig = exc.orig
    if getattr(orig, "sqlstate", None) != "42501":
        return None

    role, database_name = _libpq_names(make_url(url))
    database = _identifier(database_name)
    diag = getattr(orig, "diag", None)
    reason = getattr(diag, "message_primary", None) or "permission denied"
    # createdb -O fits a database still to be made; the one refused already exists (made by
    # postgres, say), and ALTER DATABASE gives it to the role (PostgreSQL 15's public
    # schema belongs to the database's owner).
    return (
        f"PostgreSQL denied the role {role} a privilege ({reason}): the database and "
        f"certctl's tables must belong to it (a new database: createdb -O {role}; this one: "
        f"ALTER DATABASE {database} OWNER TO {_identifier(role)}; a restore: pg_restore "
        f"--no-owner --role={role})"
    )


def _libpq_names(parsed: URL) -> tuple[str, str]:
    """The role and database libpq connected to for ``parsed``, as libpq picks them.

    A URL naming neither (``postgresql+psycopg://db.example``) printed ``ALTER DATABASE
    "DATABASE" OWNER TO …``, for the operator to guess what to put there. libpq takes them
    from the URL (its path and user, or ``?user=``/``?dbname=``), else ``PGUSER`` and
    ``PGDATABASE``, the role defaulting to the OS user and the database to the role. A
    service file (``?service=``, ``PGSERVICE``) may name them too, unread here: then
    ``<role>`` and ``<database>``, which no one would paste as they are.
    """
    import pwd

    def query(name: str) -> str | None:
        value = parsed.query.get(name)
        return (value[-1] if isinstance(value, tuple) else value) or None

    service = query("service") or os.environ.get("PGSERVICE")
    role = parsed.username or query("user") or os.environ.get("PGUSER")
    if role is None and not service:
        # The effective uid's passwd name, as libpq takes it: not $USER or $LOGNAME
        # (getpass's), which a server started by runuser, su or a container image may
        # carry over from another user.
        with contextlib.suppress(KeyError):  # a uid without a passwd entry
            role = pwd.getpwuid(os.geteuid()).pw_name
    database = parsed.database or query("dbname") or os.environ.get("PGDATABASE")
    if database is None and not service:
        database = role
    return role or "<role>", database or "<database>"


def _identifier(name: str) -> str:
    """``name`` as an SQL identifier to paste: quoted unless plain lower case (folded else)."""
    if name in ("<role>", "<database>") or re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _private(data_dir: Path) -> None:
    # Ours alone: it holds the KEK, the admin key and the database. A directory others may
    # enter or write (made by hand, or under umask 000) is tightened, and said so.
    # (Group read stays: a Kubernetes volume with fsGroup is group-owned, and not ours.)
    info = data_dir.stat()
    mode = stat.S_IMODE(info.st_mode)
    wanted = mode & ~0o027
    if mode == wanted:
        return
    try:
        if info.st_uid != os.geteuid():
            raise PermissionError
        os.chmod(data_dir, wanted)
    except OSError:
        # Root's (a kubelet volume), group-shared with us: not another user's to swap.
        ours = info.st_uid == 0 and (info.st_gid == os.getegid() or info.st_gid in os.getgroups())
        if ours and (not mode & 0o007 or mode & 0o2000):
            # A Kubernetes volume: root's, setgid to the pod's fsGroup (2775, or 2777 for
            # an emptyDir). Nothing to do about it, nobody else in the pod: no warning.
            log.debug("data directory %s is mode %04o (a volume's)", data_dir, mode)
            return
        log.warning(
            "data directory %s is mode %04o: other users may read or replace what is in it; "
            "make it 0700",
            data_dir,
            mode,
        )
        return
    log.warning("data directory %s was mode %04o; made it %04o", data_dir, mode, wanted)


def _why_not_made(data_dir: Path, exc: OSError) -> str:
    """Why ``data_dir`` could not be made: a file in its place or on its way is named.

    As ``cert issue --out`` names one: ``"Not a directory"`` alone left the user to find
    which part of ``afile/sub`` was the file.
    """
    if data_dir.exists():
        return "not a directory"
    ancestor = data_dir.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if os.path.lexists(ancestor) and not ancestor.is_dir():
        return f"{ancestor} is not a directory"
    return exc.strerror or str(exc)


def _bootstrap(config: ServerConfig) -> Bootstrapped:
    data_dir = config.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:  # a file of that name ("File exists"), no permission, read-only
        raise InvalidRequest(f"data-dir {data_dir}: {_why_not_made(data_dir, exc)}") from None
    _private(data_dir)
    lock = data_dir_lock(data_dir)
    if lock is not None:
        hold_data_dir(lock, data_dir, exclusive=False)  # until this process ends
    with _starting(lock):
        return _bootstrap_store(config)


def _bootstrap_store(config: ServerConfig) -> Bootstrapped:
    data_dir = config.data_dir
    if config.database_url is None:
        # SQLite creates its file (and the -wal/-shm beside it, with the same mode) 0644:
        # readable by anyone, with key hashes, wrapped keys and the audit log in it.
        db = data_dir / "certctl.db"
        if not db.exists():
            # Before SQLite makes the file: a refused start must leave the data dir as found,
            # not with an empty database that the next start would take for a fresh one.
            _refuse_lost_database(config)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE))
        sqlite_files = (db, Path(f"{db}-wal"), Path(f"{db}-shm"))
        _check_owned(*sqlite_files)
        for path in sqlite_files:
            # A restored copy (cp, tar under umask 022) keeps 0644, and SQLite gives the
            # -wal and -shm it makes the database's mode: tightened as the kek beside it is.
            with contextlib.suppress(FileNotFoundError):
                tighten_secret(path, log)
    engine = create_store_engine(config.effective_database_url, config.database_pool_size)
    try:
        with startup_lock(engine):
            return _prepare_store(config, engine)
    except BaseException:
        engine.dispose()  # a refused start leaves no connection (nor SQLite lock) behind
        raise


# <data-dir>/certctl.lock: POSIX record locks on two bytes, dropped by the kernel with the
# process that held them (a crash or SIGKILL leaves nothing to clean up).
LOCK_FILE = "certctl.lock"
_SERVING = 0  # shared by each server on the data dir for its life; exclusive: certctl kek rotate
_STARTING = 1  # exclusive while one process bootstraps (the first creates the KEK and the CA)
_LOCK_FDS: dict[Path, int] = {}


def data_dir_lock(data_dir: Path) -> int | None:
    """The descriptor of ``<data-dir>/certctl.lock``, opened once per process.

    Once: closing any descriptor of a file drops every record lock the process holds on it.
    None where it cannot be created (a read-only data dir, which serves reads only).
    """
    key = data_dir.resolve()
    fd = _LOCK_FDS.get(key)
    if fd is None:
        try:
            fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, SECRET_MODE)
        except OSError as exc:
            log.debug("no lock file in %s: %s", data_dir, exc.strerror)
            return None
        _LOCK_FDS[key] = fd
        owner = key.stat()
        if os.geteuid() == 0 != owner.st_uid and os.fstat(fd).st_uid == 0:
            # Made by root (sudo certctl kek rotate, admin-key) in the server user's data dir:
            # 0600 and root's, the server could not open it and ran without any lock.
            with contextlib.suppress(OSError):
                os.fchown(fd, owner.st_uid, owner.st_gid)
    return fd


def hold_data_dir(fd: int, data_dir: Path, *, exclusive: bool) -> None:
    """Take the serving lock: shared for ``certctl serve``, exclusive for ``kek rotate``.

    Raises:
        InvalidRequest: the other kind holds it (a server runs, or a rotation does).
    """
    import fcntl

    try:
        fcntl.lockf(
            fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB, 1, _SERVING
        )
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            log.debug("cannot lock %s: %s", data_dir / LOCK_FILE, exc.strerror)
            return  # a file system without record locks: nothing to detect with
        if exclusive:
            raise InvalidRequest(
                f"a certctl serve is running on {data_dir}: stop it (every replica of it) first"
            ) from None
        raise InvalidRequest(
            f"{data_dir}: a key-encryption key rotation (certctl kek rotate) is running; "
            "try again once it has ended"
        ) from None


@contextlib.contextmanager
def _starting(fd: int | None) -> Iterator[None]:
    """One start at a time per data dir: two first starts at once made two KEKs and CAs."""
    if fd is None:
        yield
        return
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, _STARTING)
    except OSError as exc:  # no record locks here: unserialized, as before
        log.debug("cannot lock %s: %s", LOCK_FILE, exc.strerror)
        yield
        return
    try:
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _STARTING)


def _check_owned(*paths: Path) -> None:
    """Refuse SQLite files this user may not write (a first start run as root, say).

    SQLite would only say "cannot open the database file". A read-only file system is not
    refused here: the server then starts, serves reads and answers 503 to writes.

    Raises:
        InvalidRequest: naming the file, its owner and this user.
    """
    for path in paths:
        # access(2), not open(2): closing a descriptor of a file SQLite has open in this
        # process would drop its POSIX locks.
        if not path.exists() or os.access(path, os.R_OK | os.W_OK, effective_ids=True):
            continue
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            continue  # a read-only file system: SQLite says what it can do
        raise InvalidRequest(
            f"{path}: permission denied to uid {os.geteuid()} (the file belongs to uid "
            f"{path.stat().st_uid}): give the data dir and its files to the user the server "
            "runs as"
        )


def _prepare_store(config: ServerConfig, engine: Engine) -> Bootstrapped:
    """Migrate, then create what a first start creates (under the start-up lock)."""
    data_dir = config.data_dir
    migrate(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        default = session.get(Issuer, issuers.DEFAULT_ISSUER)
        has_issuers = session.scalar(select(Issuer.id).limit(1)) is not None
        # The bootstrap admin is the first actor: created once, on a store without any. One
        # deleted since (other administrators took over) stays deleted.
        has_actors = session.scalar(select(Actor.id).limit(1)) is not None
    if default is None:
        _refuse_lost_database(config)
    # Keys are stored: a missing KEK file is an error, never replaced by a new, useless one.
    kek = settled_kek(data_dir, default, create=not has_issuers, replicas=_replicas(engine))
    services = Services(
        engine,
        sessions,
        KeyWrapper(kek),
        public_url=config.public_url,
        server_names=own_server_names(config),
        ocsp_validity=parse_duration(config.ocsp.validity) if config.ocsp.enabled else None,
    )
    if default is not None:
        check_kek(services, default, data_dir)
    roles.ensure_builtin_roles(services)
    if default is None:
        issuers.create_issuer(
            services,
            None,
            issuer_id=issuers.DEFAULT_ISSUER,
            name="certctl internal CA",
            subject=None,
            common_name="certctl internal CA",
            key_type="ec-p256",
            validity=parse_duration(config.ca_cert_validity),
        )
        log.info("created the internal CA (issuer 'default')")
    key_file = data_dir / "admin-api-key"
    admin_key = None
    if not has_actors:
        with services.sessions.begin() as session:
            session.add(
                Actor(
                    id=actors.BOOTSTRAP_ADMIN,
                    name="Bootstrap administrator",
                    roles=["r-admin"],
                    created_at=services.clock(),
                )
            )
        minted = api_keys.mint_api_key(services, None, actors.BOOTSTRAP_ADMIN, "bootstrap", None)
        admin_key = minted.minted.value
        write_atomic(key_file, (admin_key + "\n").encode(), SECRET_MODE)
    elif key_file.is_file():
        tighten_secret(key_file, log)  # a restored copy readable by all is an admin's key
    return Bootstrapped(services, admin_key, key_file)


def _refuse_lost_database(config: ServerConfig) -> None:
    """Refuse a first start over a data dir that an earlier start filled.

    ``admin-api-key`` is written at the end of a first start and ``tls/ca.crt`` after it, so
    either one beside a store without the internal CA means the database was lost, replaced
    or mistyped (a deleted or emptied ``certctl.db``, another ``database-url``). Going on
    would make a new CA (every issued certificate orphaned) and overwrite the admin key and
    ``ca.crt`` that clients trust.

    Raises:
        InvalidRequest: such files are there.
    """
    data_dir = config.data_dir
    # tls/ is certctl's own only in self-signed mode (custom files may live there).
    markers = ["admin-api-key"] + (["tls/ca.crt"] if config.tls.mode == "self-signed" else [])
    found = [name for name in markers if (data_dir / name).is_file()]
    if not found:
        return
    where = (
        f"{data_dir / 'certctl.db'} is empty or missing"
        if config.database_url is None
        else "the database (database-url) holds no certctl data"
    )
    raise InvalidRequest(
        f"{where}, but {data_dir} holds {' and '.join(found)} from an earlier start: restore "
        f"the database from a backup, or move {data_dir} aside to start afresh"
    )


def check_kek(services: Services, default: Issuer, data_dir: Path) -> None:
    """Refuse a KEK that does not open the stored keys, naming where it came from."""
    if not kek_opens(services.wrapper, default):
        # Replicas share a PostgreSQL store only: an SQLite file has one server (the data
        # dir's lock), so there it is the key that server ran with.
        before = (
            f"the {MASTER_KEY_ENV} of the replicas already running on it"
            if _replicas(services.engine)
            else f"the {MASTER_KEY_ENV} it ran with before"
        )
        raise InvalidRequest(
            f"the key-encryption key from {kek_source(data_dir)} does not decrypt the keys "
            f"in the database: start with the one they were encrypted under ({before}, the "
            f"value the last `certctl kek rotate` printed, or {data_dir / 'kek'} from a backup)"
        )


def mint_local_key(config: ServerConfig, actor_id: str) -> api_keys.MintResult:
    """A new API key for ``actor_id``, minted in the store without the API.

    The way back in for administrators whose keys are lost (``admin-api-key`` deleted): it
    needs what ``certctl serve`` needs, the database and the key-encryption key, and works
    while the server runs. Audited as ``apikey.create`` by ``system``. Nothing is migrated
    or created: a data dir without a database is refused.

    Raises:
        InvalidRequest: no certctl database there, or a KEK that does not open it.
        NotFound: no actor ``actor_id``.
        StorageUnavailable: the database cannot be opened or written.
    """
    with existing_store(config) as (engine, sessions, default):
        # Taken once the store is known (a refusal leaves the data dir as found): beside a
        # running server, not beside a rotation (which this would race to settle).
        lock = data_dir_lock(config.data_dir) if config.data_dir.is_dir() else None
        if lock is not None:
            hold_data_dir(lock, config.data_dir, exclusive=False)
        kek = settled_kek(config.data_dir, default, create=False, replicas=_replicas(engine))
        services = Services(engine, sessions, KeyWrapper(kek))
        check_kek(services, default, config.data_dir)
        return api_keys.mint_api_key(services, None, actor_id, "local", None)


@contextlib.contextmanager
def existing_store(
    config: ServerConfig,
) -> Iterator[tuple[Engine, sessionmaker[Session], Issuer]]:
    """The engine, sessions and internal CA of a store a first start made; disposed after.

    Raises:
        InvalidRequest: no certctl database there.
        StorageUnavailable: the database cannot be opened or written.
    """
    data_dir = config.data_dir
    if config.database_url is None and not (data_dir / "certctl.db").is_file():
        # SQLite would create an empty file (readable by all) rather than fail.
        raise InvalidRequest(f"{data_dir / 'certctl.db'}: no such database")
    where = data_dir / "certctl.db" if config.database_url is None else "database-url"
    engine = create_store_engine(config.effective_database_url, config.database_pool_size)
    try:
        # An empty certctl.db or another database: without the tables the query below
        # failed as "internal error (… no such table: issuers …)".
        if not inspect(engine).has_table(Issuer.__tablename__):
            raise InvalidRequest(f"the database ({where}) holds no certctl data")
        sessions = session_factory(engine)
        with sessions() as session:
            default = session.get(Issuer, issuers.DEFAULT_ISSUER)
        if default is None:
            raise InvalidRequest(f"the database ({where}) holds no certctl data")
        yield engine, sessions, default
    except DBAPIError as exc:
        fault = storage_error(exc)
        if fault is None:
            refused = _option_refusal(exc) or _privilege_refusal(exc, config.effective_database_url)
            if refused is None:
                raise
            raise InvalidRequest(refused) from None
        # PostgreSQL's reason (no such database or role), as certctl serve says it.
        raise StorageUnavailable(f"{fault.detail}{_refusal(exc)}") from None
    finally:
        engine.dispose()


def _replicas(engine: Engine) -> bool:
    """Whether other servers may share this store: PostgreSQL's, not an SQLite file."""
    return engine.dialect.name != "sqlite"


def kek_opens(wrapper: KeyWrapper, default: Issuer) -> bool:
    """Whether ``wrapper``'s KEK opens the stored keys (the internal CA's stands for all)."""
    try:
        wrapper.unwrap(default.wrapped_key, context=f"issuer:{default.id}")
    except CertctlError:
        return False
    return True


def settled_kek(
    data_dir: Path, default: Issuer | None, *, create: bool, replicas: bool = False
) -> bytes:
    """The KEK, after settling a rotation interrupted between its commit and its rename.

    ``kek.next`` beside ``kek``: if ``kek`` still opens the stored keys the rotation never
    committed, and ``kek.next`` (a key that opens nothing) is deleted; if ``kek.next`` opens
    them, the crash came after the commit, and the rename is done now. ``replicas``: see
    :func:`~certctl.store.keywrap.load_or_create_kek` (true but on SQLite).
    """
    kek = load_or_create_kek(data_dir, create=create, replicas=replicas)
    pending = data_dir / NEXT_KEK
    if kek_source(data_dir) == MASTER_KEY_ENV or not pending.is_file():
        return kek
    if default is None or kek_opens(KeyWrapper(kek), default):
        pending.unlink()
        log.warning("deleted %s, left by a key rotation that did not complete", pending)
        return kek
    new = read_kek_file(pending)
    if not kek_opens(KeyWrapper(new), default):
        return kek  # neither opens them: refused by check_kek, naming kek
    os.replace(pending, data_dir / "kek")
    fsync_directory(data_dir)
    log.warning("completed an interrupted key rotation: %s is now the new key", data_dir / "kek")
    return new
