"""A stored service row: locked before it is written, its spec read without parsing it."""

from __future__ import annotations

from typing import Any

from certctl.errors import NotFound
from certctl.store.db import SERVICE_SPECS_LOCK, lock_for_write
from certctl.store.models import ManagedService

__all__ = [
    "MALFORMED",
    "custom_secret_name",
    "lock_service_row",
    "locked_service",
    "service_still_there",
    "stored_certificate",
    "stored_tls",
]


def locked_service(session: Any, name: str) -> ManagedService:
    """Service ``name``, locked for this transaction (as every writer of it locks it)."""
    lock_service_row(session)
    row: ManagedService | None = session.get(ManagedService, name, with_for_update=True)
    if row is None:
        raise NotFound(f"service {name} not found")
    return row


def lock_service_row(session: Any) -> None:
    """Before a transaction reads the service row it then writes: no DELETE in between.

    PostgreSQL's FOR UPDATE does that alone; SQLite ignores it and pysqlite reads outside any
    transaction, so a DELETE could commit before the write, which then matched no row (a
    StaleDataError: a reconcile backed off as a crash, a 500) or broke a foreign key. The
    SQLite write lock, taken first, makes the DELETE wait for this transaction instead.
    """
    if session.get_bind().dialect.name == "sqlite":
        lock_for_write(session, SERVICE_SPECS_LOCK)  # the lock key is PostgreSQL's only


def service_still_there(name: str, session: Any) -> None:
    """Refuse to store the CA of a service deleted since this reconcile read it.

    In the CA's own transaction, after the lock delete_service takes too: the DELETE either
    committed before (the service is gone: no CA, which nothing would ever delete or renew),
    or waits for this transaction and then deletes the CA with the service.

    Raises:
        NotFound: the service was deleted.
    """
    lock_for_write(session, SERVICE_SPECS_LOCK)
    if session.get(ManagedService, name) is None:
        raise NotFound(f"service {name} was deleted")


# What stored_certificate returns for a spec one of whose levels is not a mapping.
MALFORMED = object()


def stored_tls(row: ManagedService) -> Any:
    """``spec.http.tls`` of a stored spec, read without parsing it; ``{}`` if absent.

    Every pass reads it for every service, outside the reconcile that parses (and reports)
    the spec: a level that is not a mapping (a hand edit) is ``MALFORMED``, never an error.
    """
    node: Any = row.spec
    for key in ("spec", "http", "tls"):
        if not isinstance(node, dict):
            return MALFORMED
        node = node.get(key, {})
    return node if isinstance(node, dict) else MALFORMED


def stored_certificate(row: ManagedService) -> Any:
    """``spec.http.tls.certificate`` of a stored spec (no parse), None if absent, or MALFORMED."""
    tls = stored_tls(row)
    return tls.get("certificate") if isinstance(tls, dict) else MALFORMED


def custom_secret_name(row: ManagedService) -> str | None:
    """The ``certificate.secretName`` of a stored spec, read as ``due`` reads it (no parse)."""
    certificate = stored_certificate(row)
    name = certificate.get("secretName") if isinstance(certificate, dict) else None
    return name if isinstance(name, str) and name else None
