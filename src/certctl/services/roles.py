"""Roles: the built-in ones, custom ones within the caller's permissions, what roles grant."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, bindparam, select

from certctl.auth.permissions import BUILTIN_ROLES, PERMISSIONS
from certctl.errors import Conflict, InvalidRequest
from certctl.pki.name_patterns import checked_pattern
from certctl.services.access_rules import (
    ACTOR_READ,
    check_id,
    check_name,
    granted,
    may_act_on,
    no_escalation,
    unknown_names,
)
from certctl.services.audit import record_call
from certctl.services.context import IssueLimit, Principal, Services
from certctl.services.issue_constraints import no_issue_escalation
from certctl.store.db import AUTH_LOCK, lock_for_write
from certctl.store.models import Actor, Role

__all__ = [
    "CONSTRAINT_AXES",
    "ISSUE",
    "check_constraints",
    "constrained",
    "create_role",
    "delete_role",
    "ensure_builtin_roles",
    "grants_of",
    "issue_limits",
    "permissions_of",
    "role_grants",
    "role_ids",
    "role_permissions",
    "role_union",
    "update_role",
]


def _check_permissions(permissions: list[str]) -> list[str]:
    unknown = sorted(set(permissions) - set(PERMISSIONS))
    if unknown:
        # The refusal says the names: the closest to a typo, else all of them (23, one line).
        raise unknown_names("permission", unknown, sorted(PERMISSIONS))
    return sorted(set(permissions))


ISSUE = "cert.issue"  # the permission a role's constraints limit
# What a role's constraints may limit (its cert.issue): the issuers and the names.
CONSTRAINT_AXES = ("issuers", "names")


def check_constraints(
    constraints: dict[str, list[str] | None] | None,
) -> dict[str, list[str] | None] | None:
    """``constraints`` as stored: each axis sorted and canonical, None when nothing is limited.

    Raises:
        InvalidRequest: an unknown key, an empty list (it would allow nothing: leave the axis
            out, or take ``cert.issue`` from the role), a bad issuer id or name pattern.
    """
    if constraints is None:
        return None
    unknown = sorted(set(constraints) - set(CONSTRAINT_AXES))
    if unknown:
        raise InvalidRequest(
            f"constraints: unknown key(s) {', '.join(unknown)}; known: issuers, names"
        )
    issuers, names = constraints.get("issuers"), constraints.get("names")
    for axis, values in (("issuers", issuers), ("names", names)):
        if values is not None and not values:
            raise InvalidRequest(
                f"constraints.{axis}: an empty list allows nothing; leave it out (or null) "
                "for no limit"
            )
    if issuers is None and names is None:
        return None
    checked_names = None
    if names is not None:
        checked_names = []
        for pattern in names:
            try:
                checked_names.append(checked_pattern(pattern))
            except ValueError as exc:
                raise InvalidRequest(f"constraints.names: {exc}") from None
        checked_names = sorted(set(checked_names))
    checked_issuers = None
    if issuers is not None:
        checked_issuers = sorted({check_id(i, "issuer") for i in issuers})
    return {"issuers": checked_issuers, "names": checked_names}


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
        return role_union(connection, role_ids)
    with services.engine.connect() as own:
        return role_union(own, role_ids)


# Core statements on the authentication path (a key not cached, stale, or whose last_used_at is
# due) and of the roles a client certificate maps to: no ORM identity map, unit of work or
# instance construction.
_ROLES = Role.__table__.c
_PERMISSIONS_OF = select(_ROLES.permissions).where(
    _ROLES.id.in_(bindparam("role_ids", expanding=True))
)
_GRANTS = select(_ROLES.id, _ROLES.permissions, _ROLES.constraints).where(
    _ROLES.id.in_(bindparam("role_ids", expanding=True))
)


def issue_limits(
    rows: Iterable[tuple[str, list[str], dict[str, list[str] | None] | None]],
) -> tuple[IssueLimit, ...] | None:
    """The constraints on cert.issue of roles ``(id, permissions, constraints)``.

    None (nothing to check) when one of them holds cert.issue unconstrained, or none holds
    it: the caller's roles holding it decide, and an unconstrained one allows everything.
    """
    limits = []
    for role_id, permissions, constraints in rows:
        if ISSUE not in permissions:
            continue
        if not constraints:
            return None
        issuers, names = constraints.get("issuers"), constraints.get("names")
        limits.append(
            IssueLimit(
                role_id,
                None if issuers is None else frozenset(issuers),
                None if names is None else tuple(names),
            )
        )
    return tuple(sorted(limits, key=lambda limit: limit.role)) or None


def role_grants(
    connection: Connection, role_ids: list[str]
) -> tuple[frozenset[str], tuple[IssueLimit, ...] | None, tuple[str, ...]]:
    """What the roles grant: permissions, cert.issue's limits, and the ids that are no role.

    The limits as ``issue_limits`` says; the ids: those of ``role_ids`` no role has.
    A client certificate mapping may name a role that does not exist (yet, or a typo): its
    403s name it (``Principal.missing_roles``). One read, as ``permissions_of``.
    """
    if not role_ids:
        return frozenset(), None, ()
    rows = connection.execute(_GRANTS, {"role_ids": list(role_ids)}).all()
    found = {row[0] for row in rows}
    missing = tuple(sorted(set(role_ids) - found))
    permissions = frozenset(p for row in rows for p in row[1])
    return permissions, issue_limits(rows) if ISSUE in permissions else None, missing


def grants_of(
    services: Services, role_ids: list[str]
) -> tuple[frozenset[str], tuple[IssueLimit, ...] | None]:
    """``role_grants``' permissions and limits, read on a pooled connection of its own."""
    if not role_ids:
        return frozenset(), None
    with services.engine.connect() as connection:
        permissions, limits, _ = role_grants(connection, role_ids)
    return permissions, limits


def role_ids(services: Services) -> list[str]:
    """Every role's id, sorted."""
    with services.engine.connect() as connection:
        return sorted(connection.scalars(select(_ROLES.id)))


def role_union(connection: Connection, role_ids: list[str]) -> frozenset[str]:
    """The union of the roles' permissions, read on ``connection``."""
    rows = connection.execute(_PERMISSIONS_OF, {"role_ids": list(role_ids)})
    return frozenset(p for (permissions,) in rows for p in permissions)


def role_permissions(services: Services, caller: Principal, role_ids: list[str]) -> frozenset[str]:
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
            # The built-in roles first: past access_rules._MAX_KNOWN_NAMED the custom ones are cut.
            custom = session.scalars(select(Role.id).where(Role.builtin.is_(False)))
            raise unknown_names("role", missing, [*builtin, *sorted(custom)])
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
    raise unknown_names(
        "role",
        hidden,
        builtin,
        kind_as="role(s) or roles needing permissions you lack",
        known_as="built-in",
        note=" (custom roles are named to holders of auth.role.read)",
    )


# What shows a custom role and what it grants.
_ROLE_READ = "auth.role.read"


def _held(role: Role | None) -> frozenset[str] | None:
    return None if role is None else frozenset(role.permissions)


def create_role(
    services: Services,
    caller: Principal,
    role_id: str,
    name: str,
    permissions: list[str],
    constraints: dict[str, list[str] | None] | None = None,
) -> Role:
    """Create a custom role holding only permissions the caller holds."""
    caller.require("auth.role.create")
    check_id(role_id, "role")
    check_name(name)
    perms = _check_permissions(permissions)
    limits = check_constraints(constraints)
    no_escalation(caller, set(perms), "create this role")
    no_issue_escalation(
        caller, issue_limits([(role_id, perms, limits)]), ISSUE in perms, "create this role"
    )
    now = services.clock()
    with services.sessions.begin() as session:
        if session.get(Role, role_id) is not None:
            raise Conflict(f"role {role_id} already exists")
        role = Role(
            id=role_id,
            name=name or role_id,
            permissions=perms,
            builtin=False,
            created_at=now,
            constraints=limits,
        )
        session.add(role)
        detail = granted("permissions", perms)
        if limits is not None:
            detail += f"; {constrained(limits)}"
        record_call(session, caller, now, "role.create", role_id, detail)
    return role


def constrained(limits: dict[str, list[str] | None] | None) -> str:
    """Audit detail of a role's constraints."""
    if limits is None:
        return "constraints: none"
    shown = [
        f"{axis} {', '.join(values)}" for axis in CONSTRAINT_AXES if (values := limits.get(axis))
    ]
    return f"constraints: {'; '.join(shown)}"


def update_role(
    services: Services,
    caller: Principal,
    role_id: str,
    name: str | None,
    permissions: list[str] | None,
    constraints: dict[str, list[str] | None] | None = None,
    *,
    set_constraints: bool = False,
) -> Role:
    """Change a custom role; built-in roles are immutable.

    ``set_constraints``: replace the role's constraints with ``constraints`` (None: take them
    away); otherwise they stay as they are.
    """
    caller.require("auth.role.edit")
    check_name(name)
    limits = check_constraints(constraints) if set_constraints else None
    now = services.clock()
    with services.sessions.begin() as session:
        # delete_role takes this lock too: a role deleted by another worker or replica
        # between this read and the UPDATE is a 404 here, not a StaleDataError (500).
        lock_for_write(session, AUTH_LOCK)
        role = session.get(Role, role_id)
        if role is not None and role.builtin:  # public (DESIGN §4)
            raise Conflict(f"role {role_id} is built in and cannot be changed")
        # DESIGN §4: only a role whose permissions the caller holds may be edited, renamed too.
        may_act_on(
            caller,
            "role",
            role_id,
            _held(role),
            "edit {}",
            shown_by=_ROLE_READ,
            named_by=(_ROLE_READ,),
        )
        assert role is not None  # may_act_on refused a missing one
        # As for its permissions: a role whose cert.issue allows more than the caller's is
        # not the caller's to edit, and the edit must leave it within the caller's.
        held = [(role_id, role.permissions, role.constraints)]
        no_issue_escalation(caller, issue_limits(held), ISSUE in role.permissions, "edit this role")
        changes = []
        if permissions is not None:
            perms = _check_permissions(permissions)
            no_escalation(caller, set(perms), "edit this role")
            role.permissions = perms
            changes.append(granted("permissions", perms))
        if set_constraints:
            role.constraints = limits
            changes.append(constrained(limits))
        after = [(role_id, role.permissions, role.constraints)]
        no_issue_escalation(
            caller, issue_limits(after), ISSUE in role.permissions, "edit this role"
        )
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
        may_act_on(
            caller,
            "role",
            role_id,
            _held(role),
            "delete {}",
            shown_by=_ROLE_READ,
            named_by=(_ROLE_READ,),
        )
        assert role is not None  # may_act_on refused a missing one
        holders = [a.id for a in session.scalars(select(Actor)) if role_id in a.roles]
        if holders and ACTOR_READ not in caller.permissions:
            # The actor ids are for holders of auth.actor.read (GET /api/v1/auth/actors).
            raise Conflict(
                f"role {role_id} is held by {len(holders)} actor(s) ({ACTOR_READ} names "
                "them); take it from them first"
            )
        if holders:
            raise Conflict(f"role {role_id} is held by {', '.join(holders[:5])}")
        session.delete(role)
        record_call(session, caller, now, "role.delete", role_id)
