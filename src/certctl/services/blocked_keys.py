"""Keys certctl certifies no more: those of certificates and issuers revoked for a compromise.

As Let's Encrypt's Boulder keeps its blockedKeys table: revoking a certificate for
keyCompromise revokes what was issued, but the same key could be certified again at once (a
CSR of it submitted anew, an ACME order finalized with it, a renewal of another certificate
of it). Every such revocation adds the key here in its own transaction (``block_key``); the
issuance paths that certify a key they did not make refuse one found here
(``check_key_unblocked``). Server-generated keys are fresh and are not looked up.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, Table, insert, select

from certctl.errors import BlockedKey
from certctl.services.key_authentication import (
    credential_generation,
    credential_generation_seen,
)
from certctl.store.models import BlockedKey as BlockedKeyRow

if TYPE_CHECKING:
    from certctl.services.context import Services

__all__ = [
    "BLOCKED_KEYS",
    "block_key",
    "blocked_keys_current",
    "check_key_unblocked",
    "key_sha256",
    "refresh_blocked_keys",
]

BLOCKED_KEYS: Table = BlockedKeyRow.__table__  # type: ignore[assignment]

# Keys held in each process's memory at most: beyond, each issuance asks the database for its
# key (one indexed read) rather than the set costing ~100 bytes a key in every worker.
MAX_CACHED = 100_000


def key_sha256(spki_der: bytes) -> str:
    """The blocked-key id of a key: SHA-256 of its SubjectPublicKeyInfo DER, hex."""
    return hashlib.sha256(spki_der).hexdigest()


def block_key(
    connection: Connection,
    spki_der: bytes,
    *,
    at: datetime,
    reason: str,
    actor: str,
    certificate_id: str | None = None,
    issuer_id: str | None = None,
) -> bool:
    """Block the key ``spki_der`` in the caller's transaction; False if it was blocked already.

    Called under ``store.db.REVOCATION_LOCK`` (every revocation holds it): no other
    revocation adds a key between the read and the insert, so the first one's row stands.
    """
    digest = key_sha256(spki_der)
    found = connection.execute(
        select(BLOCKED_KEYS.c.key_sha256).where(BLOCKED_KEYS.c.key_sha256 == digest)
    ).first()
    if found is not None:
        return False
    connection.execute(
        insert(BLOCKED_KEYS).values(
            key_sha256=digest,
            blocked_at=at,
            reason=reason,
            certificate_id=certificate_id,
            issuer_id=issuer_id,
            blocked_by=actor,
        )
    )
    return True


@dataclass(frozen=True)
class _Known:
    """The blocked keys as read at credential ``generation``; None: too many to hold."""

    generation: int
    keys: frozenset[str] | None


_KNOWN: weakref.WeakKeyDictionary[Engine, _Known] = weakref.WeakKeyDictionary()


def check_key_unblocked(services: Services, spki_der: bytes) -> None:
    """Refuse a key whose certificate or issuer was revoked for a compromise.

    From memory while the credential counter stays put (migration 0033's triggers bump it at
    every change of the table, from any process or replica): the issuance path reads that
    counter already for its API key, so a key not blocked costs a hash and a set lookup (~1 µs;
    within the noise of an API issuance from a CSR, ~600 µs of CPU on SQLite), not a database
    read: a session's read of the key on each issuance added ~440 µs (+74 %) there.

    Raises:
        BlockedKey: the key is blocked; the detail says why (the reason, the date, the
            issuer or that a certificate of it was revoked), nothing secret.
    """
    digest = key_sha256(spki_der)
    generation, known = _refreshed(services)
    if generation is not None and known is not None and known.keys is not None:
        if digest not in known.keys:
            return
    with services.sessions() as session:
        row = session.get(BlockedKeyRow, digest)
        if row is None:
            return
        raise BlockedKey(_refusal(row))


def blocked_keys_current(services: Services) -> bool:
    """Whether ``check_key_unblocked`` would answer from memory, reading no store.

    The API's CSR issuance runs on the event loop: when this is False (the credential
    counter moved: a role, a key, a revocation), it reads them first in a thread
    (``refresh_blocked_keys``), so the loop never waits on the store for them.
    """
    # The generation the request's authentication read just now, not another read of it (a
    # database read each on PostgreSQL): check_key_unblocked reads it anyway, and reads the
    # keys itself in the rare case the counter moved in between.
    generation = credential_generation_seen(services)
    known = _KNOWN.get(services.engine)
    return generation is None or (known is not None and known.generation == generation)


def refresh_blocked_keys(services: Services) -> None:
    """Read the blocked keys into this process's memory if the credential counter moved."""
    _refreshed(services)


def _refreshed(services: Services) -> tuple[int | None, _Known | None]:
    """(the credential generation now, the blocked keys as read at it, read again if stale)."""
    engine = services.engine
    generation = credential_generation(services)  # before the read it vouches for
    known = _KNOWN.get(engine)
    if generation is not None and (known is None or known.generation != generation):
        if known is not None and known.keys is None:
            known = _Known(generation, None)  # too many before: rows are hardly ever deleted
        else:
            known = _Known(generation, _read_all(services))
        _KNOWN[engine] = known
    return generation, known


def _read_all(services: Services) -> frozenset[str] | None:
    with services.sessions() as session:
        keys = list(session.scalars(select(BLOCKED_KEYS.c.key_sha256).limit(MAX_CACHED + 1)))
    return frozenset(keys) if len(keys) <= MAX_CACHED else None


def _refusal(row: BlockedKeyRow) -> str:
    # The certificate's id is left out: it may be another requester's (an ACME client learns
    # only that its key was revoked). An issuer's id is public (its CA and CRL routes).
    when = row.blocked_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if row.issuer_id is not None:
        what = f"issuer {row.issuer_id}, which holds this key, was revoked for {row.reason}"
    elif row.certificate_id is not None:
        what = f"a certificate of this key was revoked for {row.reason}"
    else:
        # A row no revocation wrote (those name what they revoked): an operator's, for a key
        # leaked elsewhere. Saying a certificate of it was revoked sent its holder looking
        # for one that does not exist.
        what = f"an operator blocked it for {row.reason}"
    return f"the public key is blocked: {what} on {when}; generate a new key"
