"""``certctl kek rotate``: every stored key re-encrypted under a new key-encryption key.

Start-up (:mod:`certctl.server.bootstrap`) settles a rotation that a crash interrupted; this
module makes the new key, re-wraps the store in one transaction and puts the key in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, bindparam, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from certctl.errors import InvalidRequest, StorageUnavailable
from certctl.files import SECRET_MODE, fsync_directory, write_atomic
from certctl.server.bootstrap import (
    check_kek,
    data_dir_lock,
    existing_store,
    hold_data_dir,
    kek_opens,
    refuse_in_memory,
    settled_kek,
)
from certctl.server.config import ServerConfig
from certctl.services import audit
from certctl.services.context import Services
from certctl.store.db import (
    AUTH_LOCK,
    LEADER_LOCK,
    exempt_from_idle_session_timeout,
    lock_for_write,
    startup_lock,
    storage_error,
)
from certctl.store.keywrap import MASTER_KEY_ENV, NEXT_KEK, KeyWrapper, encode_kek, kek_source
from certctl.store.models import AcmeEabKey, CertificateRecord, Issuer, ManagedService

__all__ = ["KekRotation", "RotationUnsettled", "rotate_kek"]


# Every wrapped key in the store: its table's key column and the context it is bound to.
# Rewritten in the order every other write locks these rows (PostgreSQL): a service before
# its CA's issuer row (a service's deletion, its CA's storing), issuer rows before
# certificate rows and each table by its key (revocations, store.db.REVOCATION_LOCK). In
# another order a request served meanwhile could hold one row this waits for while waiting
# for one this holds: a deadlock, the rotation or the request rolled back.
_WRAPPED_KEYS = tuple(
    (model.metadata.tables[model.__tablename__], key, prefix)
    for model, key, prefix in (
        (ManagedService, "name", "service:"),
        (Issuer, "id", "issuer:"),
        (CertificateRecord, "id", "certificate:"),
        (AcmeEabKey, "id", "acme-eab:"),  # locked by nothing else that takes these
    )
)


@dataclass(frozen=True)
class KekRotation:
    """What :func:`rotate_kek` did: keys re-encrypted, and where the new KEK is."""

    rewrapped: int
    kek_file: Path | None  # None: CERTCTL_MASTER_KEY, the new value was shown


def rotate_kek(config: ServerConfig, show_new_key: Callable[[str], None]) -> KekRotation:
    """Re-encrypt every stored key under a new KEK in one transaction, then put it in place.

    With ``<data-dir>/kek`` the new key goes to ``kek.next`` (0600, fsync-ed) before the
    transaction and is renamed over ``kek`` after the commit; a crash between the two is
    settled by the next start or rotation (:func:`settled_kek`). With ``CERTCTL_MASTER_KEY``
    the new value is passed to ``show_new_key`` before the commit: a committed key nobody
    was shown would open nothing. API keys (SHA-256 of their secret) do not depend on the KEK.

    Raises:
        InvalidRequest: a server runs on the data dir (or, PostgreSQL, holds the leader
            lock), no store there, or the KEK does not open it.
        CertctlError: a stored key does not open (named); nothing was changed.
        StorageUnavailable: the database cannot be opened or written.
    """
    refuse_in_memory(config.database_url)
    data_dir = config.data_dir
    if not data_dir.is_dir():
        raise InvalidRequest(f"data-dir {data_dir}: no such directory")
    lock = data_dir_lock(data_dir)
    if lock is not None:
        hold_data_dir(lock, data_dir, exclusive=True)
    with (
        existing_store(config) as (engine, sessions, default),
        startup_lock(engine),
        _no_leader(engine),
    ):
        # Only PostgreSQL's store has replicas to take a missing key from.
        old = settled_kek(data_dir, default, create=False, replicas=engine.dialect.name != "sqlite")
        services = Services(engine, sessions, KeyWrapper(old))
        check_kek(services, default, data_dir)
        new = os.urandom(32)
        in_file = kek_source(data_dir) != MASTER_KEY_ENV
        pending = data_dir / NEXT_KEK
        if in_file:
            write_atomic(pending, encode_kek(new), SECRET_MODE)
            _owned_like(pending, data_dir / "kek")
        try:
            if not in_file:
                show_new_key(encode_kek(new).decode().strip())
            count = _rewrap_all(services, KeyWrapper(new))
        except BaseException as exc:
            _after_failed_rewrap(sessions, default.id, new, pending if in_file else None, exc)
            raise
        if in_file:
            os.replace(pending, data_dir / "kek")
            fsync_directory(data_dir)
    return KekRotation(count, data_dir / "kek" if in_file else None)


def _owned_like(path: Path, model: Path) -> None:
    """Give the new KEK the owner and group of the one it replaces.

    Rotated as root (``sudo certctl kek rotate``), the new ``kek`` was root's, 0600, and the
    server, run as its own user, could no longer read it: it failed to start.

    Raises:
        InvalidRequest: it cannot be given them (nothing was changed; the file is deleted).
    """
    info = model.stat()
    if (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.chown(path, info.st_uid, info.st_gid)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise InvalidRequest(
            f"{model} belongs to uid {info.st_uid} (gid {info.st_gid}) and the new key cannot "
            f"be given to them ({exc.strerror}): run certctl kek rotate as that user"
        ) from None


class RotationUnsettled(StorageUnavailable):
    """The re-encryption failed in its commit: the store may hold keys under either KEK."""


def _after_failed_rewrap(
    sessions: sessionmaker[Session],
    issuer_id: str,
    new: bytes,
    pending: Path | None,
    exc: BaseException,
) -> None:
    """Delete ``kek.next`` only once the store is seen still under the old KEK.

    A failure in the commit itself (the connection lost once COMMIT was sent, Ctrl-C as it
    returned) can come after the database committed: deleting ``kek.next`` then, or telling
    the operator to keep the old ``CERTCTL_MASTER_KEY``, threw away the only key that opens
    the stored keys.

    Raises:
        RotationUnsettled: the store is under the new KEK, or cannot be read to tell.
    """
    try:
        with sessions() as session:
            issuer = session.get(Issuer, issuer_id)
    except DBAPIError:
        issuer = None
    if issuer is not None and not kek_opens(KeyWrapper(new), issuer):
        if pending is not None:
            pending.unlink(missing_ok=True)
        return  # rolled back: the old KEK is the one in use
    fault = storage_error(exc)
    reason = fault.detail if fault is not None else type(exc).__name__
    if pending is not None:
        keep = (
            f"{pending} is kept: the next certctl serve or certctl kek rotate puts whichever "
            "of kek and kek.next opens the stored keys in place; delete neither"
        )
    else:
        keep = (
            f"keep both the old {MASTER_KEY_ENV} and the value printed above: start with the "
            "old one and, if it is refused as not decrypting the keys, with the new one"
        )
    state = "could not be checked" if issuer is None else "was committed"
    raise RotationUnsettled(
        f"the re-encryption failed in its commit ({reason}) and {state}: {keep}"
    ) from None


def _rewrap_all(services: Services, new: KeyWrapper) -> int:
    """Unwrap each stored key with the current KEK and wrap it with ``new``: one transaction."""
    count = 0
    with services.sessions.begin() as session:
        lock_for_write(session, AUTH_LOCK)  # SQLite: the write lock before the reads
        connection = session.connection()
        for table, key, prefix in _WRAPPED_KEYS:
            column = table.c[key]
            rows = connection.execute(
                select(column, table.c.wrapped_key)
                .where(table.c.wrapped_key.is_not(None))
                .order_by(column)
            ).all()
            values = [
                {
                    "owner": owner,
                    "blob": new.wrap(
                        services.wrapper.unwrap(blob, context=f"{prefix}{owner}"),
                        context=f"{prefix}{owner}",
                    ),
                }
                for owner, blob in rows
            ]
            if values:
                connection.execute(
                    update(table)
                    .where(column == bindparam("owner"))
                    .values(wrapped_key=bindparam("blob")),
                    values,
                )
            count += len(values)
        audit.record(
            session,
            at=services.clock(),
            actor="system",
            action="kek.rotate",
            detail=f"{count} stored keys re-encrypted under a new key-encryption key",
        )
    return count


@contextlib.contextmanager
def _no_leader(engine: Engine) -> Iterator[None]:
    """PostgreSQL: refuse while a replica leads (it would go on wrapping with the old KEK).

    Held until the rotation ends, so no replica becomes leader meanwhile. Replicas on
    other hosts are not visible otherwise: the procedure (README) stops them all first.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        try:
            # Idle while the re-encryption runs on another connection (invalidated after, even
            # when the SET or the lock failed: the setting never reaches the pool).
            exempt_from_idle_session_timeout(connection)
            got = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK}
            ).scalar()
            if not got:
                raise InvalidRequest(
                    "a certctl serve replica is running on this database (it holds the "
                    "leader lock): stop every replica first"
                )
            yield
        finally:
            connection.invalidate()  # the lock ends with the session
