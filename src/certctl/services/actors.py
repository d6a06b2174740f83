"""Actors: who holds which roles, never leaving the system without an r-admin holder."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from certctl.errors import Conflict, InvalidRequest
from certctl.services.access_rules import (
    ACTOR_NAMED_BY,
    ACTOR_READ,
    check_id,
    check_name,
    granted,
    may_act_on,
    no_escalation,
)
from certctl.services.audit import record_call
from certctl.services.context import Principal, Services
from certctl.services.issue_constraints import no_issue_escalation
from certctl.services.roles import ISSUE, grants_of, permissions_of, role_permissions
from certctl.store.db import AUTH_LOCK, lock_for_write
from certctl.store.models import Actor, ApiKey

__all__ = [
    "BOOTSTRAP_ADMIN",
    "RESERVED_ACTORS",
    "create_actor",
    "delete_actor",
    "update_actor",
]

BOOTSTRAP_ADMIN = "admin"


# The audit log's names for callers that are not actors: an actor of that name would make its
# own rows look like failed logins or like the server's own work (bootstrap key, CA renewal),
# and the reverse.
RESERVED_ACTORS = {
    "anonymous": "audit rows of unauthenticated requests",
    "system": "audit rows of the server's own work",
}


def _check_admin_remains(session: Any, losing: str) -> None:
    """Refuse a change that would leave no actor holding r-admin (the system would be locked)."""
    holders = [a.id for a in session.scalars(select(Actor)) if "r-admin" in a.roles]
    if holders == [losing]:
        raise Conflict(f"{losing} is the last actor holding r-admin; give r-admin to another first")


def create_actor(
    services: Services, caller: Principal, actor_id: str, name: str, roles: list[str]
) -> Actor:
    """Create an actor; giving it roles also needs ``auth.role.assign`` and no escalation."""
    caller.require("auth.actor.create")
    check_id(actor_id, "actor")
    check_name(name)
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
            no_escalation(caller, role_permissions(services, caller, roles), "assign these roles")
            _no_issue_escalation(services, caller, roles, "assign these roles")
        if session.get(Actor, actor_id) is not None:
            raise Conflict(f"actor {actor_id} already exists")
        actor = Actor(id=actor_id, name=name or actor_id, roles=roles, created_at=now)
        session.add(actor)
        record_call(session, caller, now, "actor.create", actor_id, granted("roles", roles))
    return actor


def update_actor(
    services: Services, caller: Principal, actor_id: str, name: str | None, roles: list[str] | None
) -> Actor:
    """Rename an actor or change its roles (role changes need ``auth.role.assign``)."""
    caller.require("auth.actor.edit")
    check_name(name)
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
            new_perms = role_permissions(services, caller, roles)
        actor = session.get(Actor, actor_id)
        # As for deleting it or revoking its keys: a display name is what the audit log and
        # whoami show, so renaming `admin` to someone else's name needs its power; and even
        # an empty edit answers the actor's roles.
        action = "rename {}" if name is not None else "change {}'s roles"
        may_act_on(
            caller,
            "actor",
            actor_id,
            None if actor is None else permissions_of(services, actor.roles),
            action if name is not None or roles is not None else "edit {}",
            shown_by=ACTOR_READ,
            named_by=ACTOR_NAMED_BY,
        )
        assert actor is not None  # may_act_on refused a missing one
        changes = []
        if roles is not None and new_perms is not None:
            # The roles the caller names: built-in (public) or custom ones it may read or
            # holds all of (role_permissions), so the missing permissions may be named.
            no_escalation(caller, new_perms, "change this actor's roles")
            _no_issue_escalation(services, caller, roles, "change this actor's roles")
            if "r-admin" in actor.roles and "r-admin" not in roles:
                _check_admin_remains(session, actor_id)
            actor.roles = roles
            changes.append(granted("roles", roles))
        if name is not None:
            actor.name = name
            changes.append("renamed")
        record_call(session, caller, now, "actor.edit", actor_id, "; ".join(changes))
    return actor


def _no_issue_escalation(
    services: Services, caller: Principal, roles: list[str], what: str
) -> None:
    """``no_issue_escalation`` for ``roles``: what they let their holder issue together."""
    if caller.issue_limits is None:
        return  # nothing the caller's cert.issue does not allow (or it has none: no_escalation)
    permissions, limits = grants_of(services, roles)
    no_issue_escalation(caller, limits, ISSUE in permissions, what)


def delete_actor(services: Services, caller: Principal, actor_id: str) -> None:
    """Delete an actor and revoke its keys."""
    caller.require("auth.actor.delete")
    if actor_id == caller.actor_id:
        raise Conflict("you cannot delete yourself")
    now = services.clock()
    with services.sessions.begin() as session:
        lock_for_write(session, AUTH_LOCK)  # see update_actor: the last r-admin holder
        actor = session.get(Actor, actor_id)
        may_act_on(
            caller,
            "actor",
            actor_id,
            None if actor is None else permissions_of(services, actor.roles),
            "delete {}",
            shown_by=ACTOR_READ,
            named_by=ACTOR_NAMED_BY,
        )
        assert actor is not None  # may_act_on refused a missing one
        if "r-admin" in actor.roles:
            _check_admin_remains(session, actor_id)
        deleted = []
        for key in session.scalars(select(ApiKey).where(ApiKey.actor_id == actor_id)):
            deleted.append(key.id)
            session.delete(key)
        # No relationship() links the two mappers, so the unit of work does not order these
        # DELETEs by the api_keys.actor_id foreign key: flush the keys first.
        session.flush()
        session.delete(actor)
        # The keys' rows go with it: the audit row is what is left to say which keys ended.
        detail = f"API keys deleted: {', '.join(sorted(deleted))}" if deleted else ""
        record_call(session, caller, now, "actor.delete", actor_id, detail)
