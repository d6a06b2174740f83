"""Roles, actors and API keys, with the no-escalation rule, plus API-key authentication."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import mmap
import os
import re
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, event, or_, select, update
from sqlalchemy.exc import DBAPIError

from certctl.auth.apikeys import (
    KEY_ID,
    MintedKey,
    key_head,
    key_in_name,
    mint_key,
    parse_key,
    secret_matches,
)
from certctl.auth.permissions import BUILTIN_ROLES, PERMISSIONS
from certctl.errors import Conflict, InvalidRequest, NotFound, PermissionDenied, Unauthenticated
from certctl.services.audit import record, record_call
from certctl.services.context import Principal, Services, utcnow
from certctl.store.db import (
    AUTH_LOCK,
    PoolTimeout,
    detached_session,
    lock_for_write,
    storage_error,
)
from certctl.store.models import Actor, ApiKey, Role

__all__ = [
    "AuthFailure",
    "api_key_from_store",
    "authenticate_api_key",
    "cached_api_key",
    "check_id",
    "create_actor",
    "create_role",
    "credential_generation",
    "delete_actor",
    "delete_role",
    "ensure_builtin_roles",
    "mint_api_key",
    "permissions_of",
    "revoke_api_key",
    "role_ids",
    "roles_and_missing",
    "update_actor",
    "update_role",
]

log = logging.getLogger("certctl.services")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
LAST_USED_RESOLUTION = timedelta(minutes=1)
BOOTSTRAP_ADMIN = "admin"


class AuthFailure(Unauthenticated):
    """Authentication failed; ``reason`` is one of missing, invalid, expired, revoked."""

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


# The audit log's names for callers that are not actors: an actor of that name would make its
# own rows look like failed logins or like the server's own work (bootstrap key, CA renewal),
# and the reverse.
RESERVED_ACTORS = {
    "anonymous": "audit rows of unauthenticated requests",
    "system": "audit rows of the server's own work",
}


def check_id(value: str, what: str) -> str:
    """``value`` if it is a valid ``what`` (role, actor, issuer) id.

    Raises:
        InvalidRequest: not 1-64 lower-case letters, digits, '.', '_' or '-' (first a letter
            or digit).
    """
    if not _ID.match(value):
        raise InvalidRequest(
            f"{value!r}: {what} id must be 1-64 lower-case letters, digits, '.', '_' or '-'"
        )
    return value


def _check_name(name: str | None) -> None:
    """Refuse a display name holding an API key, a key pasted in the wrong field.

    Names are listed to every holder of the read permission (and stored for good): the key
    would be readable by all of them. The refusal names the key by its id only.
    """
    if name is None:
        return
    head = key_in_name(name)
    if head is not None:
        raise InvalidRequest(
            f"name holds an API key ({head}…): names are listed to other callers; revoke that key"
        )


# Unknown names of one request that get a "did you mean" (the others are named only):
# difflib is pure Python, and a 1 MB body of near-misses took seconds of CPU to refuse.
_SUGGESTED = 5
# Most names an "unknown …" refusal lists: every permission (23), and the roles of most
# deployments; past it the line would bury the name that was wrong.
_MAX_KNOWN_NAMED = 30


def _unknown_names(
    kind: str,
    unknown: list[str],
    known: Sequence[str],
    *,
    kind_as: str = "",
    known_as: str = "known",
    note: str = "",
) -> InvalidRequest:
    """The refusal of ``unknown`` names of ``kind``: the closest known name to each, else all.

    A typo gets its correction (the first _SUGGESTED names only); a name with none close
    (difflib, cutoff 0.8) gets the known names listed in the order given (``known_as: a, b
    …``, up to _MAX_KNOWN_NAMED, then ``note``), so the caller need not look them up elsewhere.
    ``kind_as`` replaces ``{kind}(s)`` after "unknown" when the names are not all unknown.
    """
    named, all_close = [], True
    for index, name in enumerate(unknown):
        close = (
            difflib.get_close_matches(name, known, n=1, cutoff=0.8) if index < _SUGGESTED else []
        )
        named.append(f"{name} (did you mean {close[0]}?)" if close else name)
        all_close = all_close and bool(close)
    hint = ""
    if not all_close:
        more = len(known) - _MAX_KNOWN_NAMED
        shown = ", ".join(known[:_MAX_KNOWN_NAMED]) + (f" and {more} more" if more > 0 else "")
        hint = f"; {known_as}: {shown}{note}"
    return InvalidRequest(f"unknown {kind_as or kind + '(s)'}: {', '.join(named)}{hint}")


def _check_permissions(permissions: list[str]) -> list[str]:
    unknown = sorted(set(permissions) - set(PERMISSIONS))
    if unknown:
        # The refusal says the names: the closest to a typo, else all of them (23, one line).
        raise _unknown_names("permission", unknown, sorted(PERMISSIONS))
    return sorted(set(permissions))


def ensure_builtin_roles(services: Services) -> None:
    """Create or correct the built-in roles (idempotent, on every start)."""
    now = services.clock()
    with services.sessions.begin() as session:
        for role_id, (name, perms) in BUILTIN_ROLES.items():
            role = session.get(Role, role_id)
            if role is None:
                session.add(
                    Role(
                        id=role_id,
                        name=name,
                        permissions=sorted(perms),
                        builtin=True,
                        created_at=now,
                    )
                )
            elif sorted(role.permissions) != sorted(perms) or not role.builtin:
                role.permissions, role.builtin = sorted(perms), True


def permissions_of(
    services: Services, role_ids: list[str], connection: Connection | None = None
) -> frozenset[str]:
    """The union of the roles' permissions (unknown roles contribute nothing).

    Read on ``connection`` if given, else on a pooled connection of its own.
    """
    if not role_ids:
        return frozenset()
    if connection is not None:
        return _role_union(connection, role_ids)
    with services.engine.connect() as own:
        return _role_union(own, role_ids)


# Core statements on the authentication path (a key not cached, stale, or whose last_used_at is
# due): no ORM identity map, unit of work or instance construction. A cached key is trusted only
# at the credential generation it was read at (_KeyCache), so a revocation, an expiry or a role
# change in any process applies to the very next request.
_ROLES = Role.__table__.c
_PERMISSIONS_OF = select(_ROLES.permissions).where(
    _ROLES.id.in_(bindparam("role_ids", expanding=True))
)
_ROLES_AND_PERMISSIONS = select(_ROLES.id, _ROLES.permissions).where(
    _ROLES.id.in_(bindparam("role_ids", expanding=True))
)
_KEYS = ApiKey.__table__.c
_ACTORS = Actor.__table__.c
_KEY_AND_ACTOR = (
    select(
        _KEYS.secret_sha256,
        _KEYS.revoked_at,
        _KEYS.expires_at,
        _KEYS.last_used_at,
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


def roles_and_missing(
    connection: Connection, role_ids: list[str]
) -> tuple[frozenset[str], tuple[str, ...]]:
    """The union of the roles' permissions, and the names of ``role_ids`` that are no role.

    A client certificate mapping may name a role that does not exist (yet, or a typo): its
    403s name it (``Principal.missing_roles``). One read, as ``permissions_of``.
    """
    if not role_ids:
        return frozenset(), ()
    rows = connection.execute(_ROLES_AND_PERMISSIONS, {"role_ids": list(role_ids)}).all()
    found = {role_id for role_id, _ in rows}
    missing = tuple(sorted(set(role_ids) - found))
    return frozenset(p for _, permissions in rows for p in permissions), missing


def role_ids(services: Services) -> list[str]:
    """Every role's id, sorted."""
    with services.engine.connect() as connection:
        return sorted(connection.scalars(select(_ROLES.id)))


def _role_union(connection: Connection, role_ids: list[str]) -> frozenset[str]:
    rows = connection.execute(_PERMISSIONS_OF, {"role_ids": list(role_ids)})
    return frozenset(p for (permissions,) in rows for p in permissions)


def _role_permissions(services: Services, caller: Principal, role_ids: list[str]) -> frozenset[str]:
    """The union of the roles' permissions, refusing names that are not roles.

    A caller without ``auth.role.read`` learns nothing of the custom roles it may not assign:
    an unknown name and a custom role needing permissions it lacks get the same refusal,
    which names only the built-in roles (DESIGN §4 publishes them); a 403 listing the
    role's permissions would otherwise tell which names exist and what they grant.
    """
    with services.sessions() as session:
        found = {r.id: r for r in session.scalars(select(Role).where(Role.id.in_(role_ids)))}
        missing = sorted(set(role_ids) - set(found))
        builtin = sorted(BUILTIN_ROLES)
        if "auth.role.read" in caller.permissions:
            if not missing:
                return frozenset(p for r in found.values() for p in r.permissions)
            # The built-in roles first: past _MAX_KNOWN_NAMED the custom ones are cut.
            custom = session.scalars(select(Role.id).where(Role.builtin.is_(False)))
            raise _unknown_names("role", missing, [*builtin, *sorted(custom)])
        hidden = sorted(
            {
                *missing,
                *(
                    r.id
                    for r in found.values()
                    if not r.builtin and not set(r.permissions) <= caller.permissions
                ),
            }
        )
        if not hidden:
            return frozenset(p for r in found.values() for p in r.permissions)
    raise _unknown_names(
        "role",
        hidden,
        builtin,
        kind_as="role(s) or roles needing permissions you lack",
        known_as="built-in",
        note=" (custom roles are named to holders of auth.role.read)",
    )


def _check_admin_remains(session: Any, losing: str) -> None:
    """Refuse a change that would leave no actor holding r-admin (the system would be locked)."""
    holders = [a.id for a in session.scalars(select(Actor)) if "r-admin" in a.roles]
    if holders == [losing]:
        raise Conflict(f"{losing} is the last actor holding r-admin; give r-admin to another first")


def _no_escalation(caller: Principal, permissions: frozenset[str] | set[str], what: str) -> None:
    excess = sorted(set(permissions) - caller.permissions)
    if excess:
        raise PermissionDenied(
            f"cannot {what}: it needs permission(s) you lack: {', '.join(excess)}"
        )


def _may_act_on(
    caller: Principal,
    kind: str,
    target_id: str,
    held: frozenset[str] | None,
    action: str,
    *,
    shown_by: str,
    named_by: Sequence[str],
    holder: str = "it",
) -> None:
    """Refuse ``action`` on a target missing (``held`` None) or holding more than the caller.

    ``action`` has ``{}`` where the target goes ("delete {}"). Only a caller holding
    ``shown_by``, the permission that lists such targets, is told a missing one apart (404);
    to any other both get the same 403, which would otherwise tell it which ids exist. The
    permissions the caller lacks are named only to a caller holding ``named_by`` too (those
    that show what the target holds): the refusal must not tell what the caller could not
    read (DESIGN §4, no escalation).
    """
    if shown_by not in caller.permissions:
        if held is None or not held <= caller.permissions:
            raise PermissionDenied(
                f"cannot {action.format(f'{kind} {target_id}')}: no such {kind}, or {holder} "
                f"holds permission(s) you lack ({shown_by} tells which)"
            )
        return
    if held is None:
        raise NotFound(f"{kind} {target_id} not found")
    unread = [p for p in named_by if p not in caller.permissions]
    if unread and not held <= caller.permissions:
        raise PermissionDenied(
            f"cannot {action.format(f'{kind} {target_id}')}: {holder} holds permission(s) you "
            f"lack (named to holders of {' and '.join(unread)})"
        )
    _no_escalation(caller, held, action.format(f"this {kind}"))


# What shows an actor and what its roles grant (custom roles: GET /api/v1/auth/roles).
_ACTOR_READ = "auth.actor.read"
_ACTOR_NAMED_BY = ("auth.actor.read", "auth.role.read")
# What shows a custom role and what it grants.
_ROLE_READ = "auth.role.read"


def _held(role: Role | None) -> frozenset[str] | None:
    return None if role is None else frozenset(role.permissions)


def _granted(what: str, names: list[str]) -> str:
    """Audit detail of a grant: what an actor or role holds after the call, not before."""
    return f"{what}: {', '.join(names) or '(none)'}"


# --- roles -------------------------------------------------------------------------------


def create_role(
    services: Services, caller: Principal, role_id: str, name: str, permissions: list[str]
) -> Role:
    """Create a custom role holding only permissions the caller holds."""
    caller.require("auth.role.create")
    check_id(role_id, "role")
    _check_name(name)
    perms = _check_permissions(permissions)
    _no_escalation(caller, set(perms), "create this role")
    now = services.clock()
    with services.sessions.begin() as session:
        if session.get(Role, role_id) is not None:
            raise Conflict(f"role {role_id} already exists")
        role = Role(
            id=role_id, name=name or role_id, permissions=perms, builtin=False, created_at=now
        )
        session.add(role)
        record_call(session, caller, now, "role.create", role_id, _granted("permissions", perms))
    return role


def update_role(
    services: Services,
    caller: Principal,
    role_id: str,
    name: str | None,
    permissions: list[str] | None,
) -> Role:
    """Change a custom role; built-in roles are immutable."""
    caller.require("auth.role.edit")
    _check_name(name)
    now = services.clock()
    with services.sessions.begin() as session:
        # delete_role takes this lock too: a role deleted by another worker or replica
        # between this read and the UPDATE is a 404 here, not a StaleDataError (500).
        lock_for_write(session, AUTH_LOCK)
        role = session.get(Role, role_id)
        if role is not None and role.builtin:  # public (DESIGN §4)
            raise Conflict(f"role {role_id} is built in and cannot be changed")
        # DESIGN §4: only a role whose permissions the caller holds may be edited, renamed too.
        _may_act_on(
            caller,
            "role",
            role_id,
            _held(role),
            "edit {}",
            shown_by=_ROLE_READ,
            named_by=(_ROLE_READ,),
        )
        assert role is not None  # _may_act_on refused a missing one
        changes = []
        if permissions is not None:
            perms = _check_permissions(permissions)
            _no_escalation(caller, set(perms), "edit this role")
            role.permissions = perms
            changes.append(_granted("permissions", perms))
        if name is not None:
            role.name = name
            changes.append("renamed")
        record_call(session, caller, now, "role.edit", role_id, "; ".join(changes))
    return role


def delete_role(services: Services, caller: Principal, role_id: str) -> None:
    """Delete a custom role no actor holds."""
    caller.require("auth.role.delete")
    now = services.clock()
    with services.sessions.begin() as session:
        # No actor may be given the role between the holders check and the delete.
        lock_for_write(session, AUTH_LOCK)
        role = session.get(Role, role_id)
        if role is not None and role.builtin:  # public (DESIGN §4)
            raise Conflict(f"role {role_id} is built in and cannot be deleted")
        _may_act_on(
            caller,
            "role",
            role_id,
            _held(role),
            "delete {}",
            shown_by=_ROLE_READ,
            named_by=(_ROLE_READ,),
        )
        assert role is not None  # _may_act_on refused a missing one
        holders = [a.id for a in session.scalars(select(Actor)) if role_id in a.roles]
        if holders and _ACTOR_READ not in caller.permissions:
            # The actor ids are for holders of auth.actor.read (GET /api/v1/auth/actors).
            raise Conflict(
                f"role {role_id} is held by {len(holders)} actor(s) ({_ACTOR_READ} names "
                "them); take it from them first"
            )
        if holders:
            raise Conflict(f"role {role_id} is held by {', '.join(holders[:5])}")
        session.delete(role)
        record_call(session, caller, now, "role.delete", role_id)


# --- actors ------------------------------------------------------------------------------


def create_actor(
    services: Services, caller: Principal, actor_id: str, name: str, roles: list[str]
) -> Actor:
    """Create an actor; giving it roles also needs ``auth.role.assign`` and no escalation."""
    caller.require("auth.actor.create")
    check_id(actor_id, "actor")
    _check_name(name)
    if actor_id in RESERVED_ACTORS:
        raise InvalidRequest(f"{actor_id!r} is reserved ({RESERVED_ACTORS[actor_id]})")
    roles = sorted(set(roles))
    if roles:
        caller.require("auth.role.assign")
    now = services.clock()
    with services.sessions.begin() as session:
        # The roles must still exist when the actor is written: delete_role takes this lock.
        lock_for_write(session, AUTH_LOCK)
        if roles:
            _no_escalation(caller, _role_permissions(services, caller, roles), "assign these roles")
        if session.get(Actor, actor_id) is not None:
            raise Conflict(f"actor {actor_id} already exists")
        actor = Actor(id=actor_id, name=name or actor_id, roles=roles, created_at=now)
        session.add(actor)
        record_call(session, caller, now, "actor.create", actor_id, _granted("roles", roles))
    return actor


def update_actor(
    services: Services, caller: Principal, actor_id: str, name: str | None, roles: list[str] | None
) -> Actor:
    """Rename an actor or change its roles (role changes need ``auth.role.assign``)."""
    caller.require("auth.actor.edit")
    _check_name(name)
    now = services.clock()
    new_perms: frozenset[str] | None = None
    if roles is not None:
        caller.require("auth.role.assign")
        roles = sorted(set(roles))
    with services.sessions.begin() as session:
        # One role change at a time across workers and replicas: two admins taking r-admin
        # from each other at once would each still see the other holding it.
        lock_for_write(session, AUTH_LOCK)
        if roles is not None:
            new_perms = _role_permissions(services, caller, roles)
        actor = session.get(Actor, actor_id)
        # As for deleting it or revoking its keys: a display name is what the audit log and
        # whoami show, so renaming `admin` to someone else's name needs its power; and even
        # an empty edit answers the actor's roles.
        action = "rename {}" if name is not None else "change {}'s roles"
        _may_act_on(
            caller,
            "actor",
            actor_id,
            None if actor is None else permissions_of(services, actor.roles),
            action if name is not None or roles is not None else "edit {}",
            shown_by=_ACTOR_READ,
            named_by=_ACTOR_NAMED_BY,
        )
        assert actor is not None  # _may_act_on refused a missing one
        changes = []
        if roles is not None and new_perms is not None:
            # The roles the caller names: built-in (public) or custom ones it may read or
            # holds all of (_role_permissions), so the missing permissions may be named.
            _no_escalation(caller, new_perms, "change this actor's roles")
            if "r-admin" in actor.roles and "r-admin" not in roles:
                _check_admin_remains(session, actor_id)
            actor.roles = roles
            changes.append(_granted("roles", roles))
        if name is not None:
            actor.name = name
            changes.append("renamed")
        record_call(session, caller, now, "actor.edit", actor_id, "; ".join(changes))
    return actor


def delete_actor(services: Services, caller: Principal, actor_id: str) -> None:
    """Delete an actor and revoke its keys."""
    caller.require("auth.actor.delete")
    if actor_id == caller.actor_id:
        raise Conflict("you cannot delete yourself")
    now = services.clock()
    with services.sessions.begin() as session:
        lock_for_write(session, AUTH_LOCK)  # see update_actor: the last r-admin holder
        actor = session.get(Actor, actor_id)
        _may_act_on(
            caller,
            "actor",
            actor_id,
            None if actor is None else permissions_of(services, actor.roles),
            "delete {}",
            shown_by=_ACTOR_READ,
            named_by=_ACTOR_NAMED_BY,
        )
        assert actor is not None  # _may_act_on refused a missing one
        if "r-admin" in actor.roles:
            _check_admin_remains(session, actor_id)
        for key in session.scalars(select(ApiKey).where(ApiKey.actor_id == actor_id)):
            session.delete(key)
        # No relationship() links the two mappers, so the unit of work does not order these
        # DELETEs by the api_keys.actor_id foreign key: flush the keys first.
        session.flush()
        session.delete(actor)
        record_call(session, caller, now, "actor.delete", actor_id)


# --- API keys ----------------------------------------------------------------------------


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
    _check_name(name)
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
            _may_act_on(
                caller,
                "actor",
                actor_id,
                None if actor is None else permissions_of(services, actor.roles),
                "mint a key for {}",
                shown_by=_ACTOR_READ,
                named_by=_ACTOR_NAMED_BY,
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
        _may_act_on(
            caller,
            "API key",
            key_id,
            None if actor is None else permissions_of(services, actor.roles),
            "revoke {}",
            shown_by="auth.apikey.read",
            named_by=("auth.apikey.read", *_ACTOR_NAMED_BY),
            holder="its actor",
        )
        assert row is not None  # _may_act_on refused a missing one
        if row.revoked_at is None:
            row.revoked_at = now
        record_call(session, caller, now, "apikey.revoke", key_id)
    return row


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
        if row is None or not secret_matches(secret, row.secret_sha256):
            raise AuthFailure("unknown API key", "invalid")
        if row.revoked_at is not None:
            raise AuthFailure("API key revoked", "revoked")
        if row.expires_at is not None and row.expires_at <= now:
            raise AuthFailure("API key expired", "expired")
        if row.id is None:
            raise AuthFailure("API key's actor no longer exists", "invalid")
        actor_id, roles = row.id, tuple(row.roles)
        permissions = _role_union(connection, list(roles)) if roles else frozenset()
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
    principal = Principal(actor_id, roles, permissions, "api_key", source)
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


# The WAL-index header (https://sqlite.org/walformat.html, "The WAL-Index Header"): the first
# 48 bytes of the ``-shm`` file, which SQLite rewrites at every commit, whichever process or
# connection makes it; its change counter (iChange) grows by one per commit, so equal bytes
# mean that nothing was committed in between.
_WAL_INDEX_HEADER = 48
_WAL_INDEX_VERSION = 3007000  # iVersion, in native byte order; isInit (byte 12) is 1
# Read-only maps of WAL-index files by (device, inode), made once and never closed, nor their
# descriptors: closing any descriptor of a file drops every POSIX lock this process holds on
# it, including the locks SQLite's own connections hold on the ``-shm`` file (and a map keeps
# a descriptor of its own). A server has one database; past _WAL_INDEX_MAX (a test run opens
# many), a database's cache reads the counter on every request instead.
_WAL_INDEX_MAPS: dict[tuple[int, int], mmap.mmap | None] = {}
_WAL_INDEX_MAX = 64
_WAL_INDEX_FDS: list[int] = []
_WAL_INDEX_LOCK = threading.Lock()


def _wal_index(database: str) -> mmap.mmap | None:
    """A read-only map of the database's WAL-index header; None when there is none."""
    # SQLite names the file after the database path with symbolic links resolved.
    path = os.path.realpath(database) + "-shm"
    with _WAL_INDEX_LOCK:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        if key not in _WAL_INDEX_MAPS:
            if len(_WAL_INDEX_MAPS) >= _WAL_INDEX_MAX:
                return None
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return None
            _WAL_INDEX_FDS.append(fd)
            try:
                _WAL_INDEX_MAPS[key] = mmap.mmap(fd, _WAL_INDEX_HEADER, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # ValueError: the file is shorter than a header
                _WAL_INDEX_MAPS[key] = None
        view = _WAL_INDEX_MAPS[key]
    if view is None:
        return None
    header = view[:_WAL_INDEX_HEADER]
    if int.from_bytes(header[:4], sys.byteorder) != _WAL_INDEX_VERSION or header[12] != 1:
        return None  # not an initialised WAL index: the counter is read on every request
    return view


class _SQLiteCounter:
    """The ``auth_generation`` counter of a SQLite database, on a connection that never writes.

    The connection keeps the database open in WAL mode, which holds a shared lock on the
    database and on the ``-shm`` file: while it lives, no other process can leave WAL mode,
    delete the file or truncate it (SQLite maps the same file itself, see ``_KeyCache``).
    """

    def __init__(self, database: str) -> None:
        self._connection = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        mode = self._connection.execute("PRAGMA journal_mode").fetchone()
        self.wal = mode is not None and str(mode[0]).lower() == "wal"

    def read(self) -> int | None:
        try:
            with self._lock:
                found = self._connection.execute(_GENERATION_SQL).fetchone()
        except sqlite3.Error:
            return None
        return int(found[0]) if found else None


class _PostgresCounter:
    """The ``auth_generation`` counter of a PostgreSQL database, on a connection of its own.

    In autocommit, one round trip per read (psycopg prepares the statement after a few):
    ~25 µs CPU in-process, against ~200 µs through the pool (a checkout's ping, BEGIN, the
    read, the ROLLBACK of the return). Each read is a statement of its own, so it sees every
    transaction committed before it, from any replica; the key read after it sees at least
    those. Taken from the engine's pool and detached (its connect arguments and session
    settings: the timeouts of ``store.db``), so a process holds one connection more than its
    pool. Closed with the engine's pool (``Engine.dispose``) and opened again when next read.
    Any failure (a restart, a cut) closes it and answers None, so that the caller reads the
    store through the pool, which reports the outage. It is opened again a second later, and
    each failure to open it doubles that wait, up to RETRY_MAX. Opening it waits as long as
    a pooled connection does (up to ``connect_timeout``, 5 s, against a database that does
    not answer): asked on the event loop, it is opened in a thread of its own and the reads
    meanwhile answer None (before, the request that reopened it after an outage stalled
    every other request of the process that long). A worker thread opens it itself.
    """

    RETRY_AFTER = 1.0
    RETRY_MAX = 30.0

    def __init__(self, engine: Engine) -> None:
        # Weak: the cache is the value of a WeakKeyDictionary keyed by the engine.
        self._engine = weakref.ref(engine)
        self._lock = threading.Lock()
        self._connection: Any = None
        self._cursor: Any = None
        self._retry_at = 0.0
        self._retry_after = self.RETRY_AFTER
        self._failed = False
        self._opening = False  # a thread is opening the connection
        self._disposals = 0  # a connection opened before a disposal is not kept
        # What a connection that fails raises: the driver's own errors, SQLAlchemy's wrapped,
        # and (opening it) no pooled connection free in time (database-pool-size).
        self._errors: tuple[type[Exception], ...] = (
            DBAPIError,
            PoolTimeout,
            engine.dialect.loaded_dbapi.Error,
        )
        event.listen(engine, "engine_disposed", self._disposed)

    def read(self) -> int | None:
        with self._lock:
            try:
                cursor = self._cursor
                if cursor is None:
                    cursor = self._connect()
                    if cursor is None:
                        return None
                cursor.execute(_GENERATION_SQL)
                found = cursor.fetchone()
            except self._errors as exc:
                self._failure(exc, reopening=self._connection is None)
                return None
            self._failed, self._retry_after = False, self.RETRY_AFTER
        return int(found[0]) if found else None

    def _failure(self, exc: Exception, *, reopening: bool) -> None:
        """Under ``_lock``: close, and try again after a while (longer if opening failed)."""
        self._close()
        self._retry_at = time.monotonic() + self._retry_after
        if reopening:
            self._retry_after = min(2 * self._retry_after, self.RETRY_MAX)
        if not self._failed:  # once per outage, not once per request
            self._failed = True
            log.warning("credential generation not read (no caching meanwhile): %s", exc)

    def _connect(self) -> Any:
        """Under ``_lock``: the cursor, opened here, or None (opening in a thread, or later)."""
        engine = self._engine()
        if engine is None or self._opening or time.monotonic() < self._retry_at:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: it may wait for the connection
            self._connection = self._open(engine)
            self._cursor = self._connection.cursor()
            return self._cursor
        self._opening = True
        threading.Thread(
            target=self._open_aside,
            args=(engine, self._disposals),
            name="certctl-credential-counter",
            daemon=True,  # bounded by connect_timeout; nothing to finish at exit
        ).start()
        return None

    def _open_aside(self, engine: Engine, disposals: int) -> None:
        try:
            connection = self._open(engine)
        except Exception as exc:
            with self._lock:
                self._opening = False
                if isinstance(exc, self._errors):
                    self._failure(exc, reopening=True)
                    return
            log.exception("credential generation connection not opened")
            return
        with self._lock:
            self._opening = False
            if disposals == self._disposals and self._connection is None:
                self._connection, self._cursor = connection, connection.cursor()
                return
        with contextlib.suppress(Exception):  # the engine was disposed meanwhile
            connection.close()

    @staticmethod
    def _open(engine: Engine) -> Any:
        # Held for the life of the process, idle whenever no request comes.
        return detached_session(engine)

    def _close(self) -> None:
        connection, self._connection, self._cursor = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                connection.close()

    def _disposed(self, _engine: Engine) -> None:
        with self._lock:
            self._disposals += 1
            self._close()

    def __del__(self) -> None:
        self._close()


_GENERATION_SQL = "SELECT value FROM auth_generation WHERE id = 1"


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
    to go back (a restore, a failover) trusts nothing remembered before (``_read_generation``).

    PostgreSQL: one read of the counter per request (``_PostgresCounter``). SQLite: that read
    costs ~4 µs and two ``fcntl`` calls in a loop, several times that between requests
    (``PRAGMA data_version`` costs the same, and changes at every commit), so it is skipped
    while nothing has been committed since the last one: before reading the counter, the
    cache copies the 48-byte WAL-index header from a read-only map of the ``-shm`` file (no
    system call), and while the header is unchanged the counter cannot have moved. Any commit
    (an issued certificate too) changes the header and costs one counter read.
    """

    MAX_ENTRIES = 1024

    def __init__(
        self, counter: _SQLiteCounter | _PostgresCounter, database: str | None = None
    ) -> None:
        self._counter = counter
        self._entries: dict[str, _CachedKey] = {}
        # What version() hands out: the counter plus _offset, which grows whenever the counter
        # is seen to go back (_read_generation). Versions never decrease, so the last one
        # handed out, _last_raw + _offset, is also the largest.
        self._generation_lock = threading.Lock()
        self._last_raw = -1
        self._offset = 0
        # (WAL-index header, generation read after it) at the last read of the counter.
        self._seen: tuple[bytes, int] | None = None
        self._wal_index: mmap.mmap | None = None
        if database is not None and isinstance(counter, _SQLiteCounter) and counter.wal:
            # After a read in WAL mode: the file exists and the counter's connection holds
            # it open.
            self._read_generation()
            self._wal_index = _wal_index(database)

    def version(self) -> int | None:
        """The credential generation, or None when it cannot be read (no caching then)."""
        header = None
        if self._wal_index is not None:
            header = self._wal_index[:_WAL_INDEX_HEADER]
            seen = self._seen
            if seen is not None and header == seen[0]:
                return seen[1]
        generation = self._read_generation()
        if generation is not None and header is not None:
            # The header was copied before the counter was read: a commit in between
            # changes the header again, so the pair never vouches for a stale generation.
            self._seen = (header, generation)
        return generation

    def _read_generation(self) -> int | None:
        raw = self._counter.read()
        if raw is None:
            return None
        with self._generation_lock:
            if raw < self._last_raw:
                # The counter went back: a database restored from a backup, a failover to a
                # standby that lagged, migration 0003 undone and applied again. The rows at a
                # value it reaches again need not be those an entry was read from, so every
                # version handed out from now on is above any handed out before (entries and
                # remembered client certificates compare versions for equality).
                self._offset += self._last_raw + 1 - raw
                log.warning(
                    "credential generation went back (%d -> %d): remembered keys and client "
                    "certificates are read again",
                    self._last_raw,
                    raw,
                )
            self._last_raw = raw
            return raw + self._offset

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
        # version()'s first test, inline: nothing committed since the counter was last read.
        seen = self._seen
        wal_index = self._wal_index
        if seen is not None and wal_index is not None and wal_index[:_WAL_INDEX_HEADER] == seen[0]:
            version: int | None = seen[1]
        else:
            version = self.version()
        if (
            entry.version != version
            or not presented.startswith(entry.head)
            or not secret_matches(presented[len(entry.head) :], entry.secret_sha256)
        ):
            return None
        if entry.expires_ts is not None and entry.expires_ts <= timestamp:
            raise AuthFailure("API key expired", "expired")
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
        return _KeyCache(_PostgresCounter(engine))
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        try:
            return _KeyCache(_SQLiteCounter(database), database)
        except sqlite3.Error:
            return None
    return None
