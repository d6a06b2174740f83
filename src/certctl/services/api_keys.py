"""API keys: minting one for an actor (one live key per name) and revoking it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select

from certctl.auth.apikeys import MintedKey, mint_key
from certctl.errors import Conflict, InvalidRequest, NotFound
from certctl.services.access_rules import ACTOR_NAMED_BY, ACTOR_READ, check_name, may_act_on
from certctl.services.audit import record, record_call
from certctl.services.context import Principal, Services
from certctl.services.issue_constraints import no_issue_escalation
from certctl.services.roles import ISSUE, grants_of, permissions_of
from certctl.store.db import AUTH_LOCK, lock_for_write
from certctl.store.models import Actor, ApiKey

__all__ = [
    "MintResult",
    "mint_api_key",
    "revoke_api_key",
]

# The name of a key minted without one; exempt from the one-live-key-per-name rule.
_UNNAMED_KEY = "key"


@dataclass(frozen=True)
class MintResult:
    """A minted key: the stored row and the value to show once."""

    row: ApiKey
    minted: MintedKey


def mint_api_key(
    services: Services,
    caller: Principal | None,
    actor_id: str,
    name: str,
    expires_at: datetime | None,
) -> MintResult:
    """Mint a key for ``actor_id``; ``caller=None`` only for the server's own keys.

    A name the caller gives is one live key of that actor: see ``_name_taken``.
    """
    now = services.clock()
    if caller is not None:
        caller.require("auth.apikey.create")
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest("expires_at must be in the future")
    check_name(name)
    minted = mint_key()
    with services.sessions.begin() as session:
        # One mint at a time: two of the same name at once would both find it free. And
        # delete_actor (which deletes the actor's keys) takes it too: a key minted meanwhile
        # for the actor being deleted is a 404 here, not a key left without its actor.
        lock_for_write(session, AUTH_LOCK)
        actor = session.get(Actor, actor_id)
        if caller is None:
            if actor is None:
                raise NotFound(f"actor {actor_id} not found")
        else:
            may_act_on(
                caller,
                "actor",
                actor_id,
                None if actor is None else permissions_of(services, actor.roles),
                "mint a key for {}",
                shown_by=ACTOR_READ,
                named_by=ACTOR_NAMED_BY,
            )
            if caller.issue_limits is not None and actor is not None:
                # A key issues what its actor's roles allow: no more than the caller's.
                permissions, limits = grants_of(services, actor.roles)
                no_issue_escalation(
                    caller, limits, ISSUE in permissions, f"mint a key for actor {actor_id}"
                )
            if name and name != _UNNAMED_KEY:
                _name_taken(session, caller, actor_id, name, now)
        row = ApiKey(
            id=minted.key_id,
            actor_id=actor_id,
            name=name or _UNNAMED_KEY,
            secret_sha256=minted.secret_sha256,
            created_at=now,
            expires_at=expires_at,
        )
        session.add(row)
        record(
            session,
            at=now,
            actor=caller.actor_id if caller else "system",
            action="apikey.create",
            target=f"{minted.key_id} ({actor_id})",
            source=caller.source if caller else "",
            credential=caller.credential if caller else "",
        )
    return MintResult(row, minted)


def _name_taken(session: Any, caller: Principal, actor_id: str, name: str, now: datetime) -> None:
    """Refuse a second live key (not revoked, not expired) of ``actor_id`` named ``name``.

    Rotation finds the key to retire by its name in the listing (mint ``prometheus-v2``,
    revoke v1's id): with two live keys of one name that is a guess, and revoking the wrong
    one leaves the key being retired valid. Unnamed keys (``key``) and the server's own
    (``bootstrap``, ``local``: the way back in must never be refused) are exempt. So is the
    name ``key`` given: stored alike, it cannot be told from an unnamed key, and checking it
    refused it for the actor's unnamed keys, which the rule leaves alone.
    """
    taken = session.scalars(
        select(ApiKey.id).where(
            ApiKey.actor_id == actor_id,
            ApiKey.name == name,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    ).first()
    if taken is None:
        return
    # The id is for holders of auth.apikey.read, who may list it anyway.
    readable = "auth.apikey.read" in caller.permissions
    which = f"id {taken}" if readable else "auth.apikey.read lists it"
    raise Conflict(
        f"actor {actor_id} already has a live API key named {name!r} ({which}): give the new "
        f"key another name (e.g. {_next_name(name)}), and revoke the old one by its id once the "
        "new one is in use"
    )


def _next_name(name: str) -> str:
    """``prometheus-v1`` → ``prometheus-v2``; any other name gets ``-v2``."""
    match = re.fullmatch(r"(.*?)(\d+)", name)
    if match is None:
        return f"{name}-v2"[:200]
    return f"{match.group(1)}{int(match.group(2)) + 1}"[:200]


def revoke_api_key(services: Services, caller: Principal, key_id: str) -> ApiKey:
    """Revoke a key; it fails with 401 on its very next use."""
    caller.require("auth.apikey.revoke")
    now = services.clock()
    with services.sessions.begin() as session:
        # delete_actor (which deletes the actor's keys) takes this lock too: a key deleted by
        # another worker or replica meanwhile is a 404, not a StaleDataError (500); and of two
        # revocations at once, the second sees the first's revoked_at and keeps it.
        lock_for_write(session, AUTH_LOCK)
        row = session.get(ApiKey, key_id)
        # delete_actor deletes an actor's keys with it: a key's actor exists.
        actor = None if row is None else session.get(Actor, row.actor_id)
        may_act_on(
            caller,
            "API key",
            key_id,
            None if actor is None else permissions_of(services, actor.roles),
            "revoke {}",
            shown_by="auth.apikey.read",
            named_by=("auth.apikey.read", *ACTOR_NAMED_BY),
            holder="its actor",
        )
        assert row is not None  # may_act_on refused a missing one
        # The target names the actor, as apikey.create's does; a second revocation (a no-op)
        # says so, or the log read as if the key had been live until then.
        detail = (
            "" if row.revoked_at is None else f"already revoked at {row.revoked_at.isoformat()}"
        )
        if row.revoked_at is None:
            row.revoked_at = now
        record_call(session, caller, now, "apikey.revoke", f"{key_id} ({row.actor_id})", detail)
    return row
