"""Checks shared by role, actor and API-key changes: ids, names, and the no-escalation rule."""

from __future__ import annotations

import re
from collections.abc import Sequence

from certctl.auth.apikeys import key_in_name
from certctl.errors import InvalidRequest, NotFound, PermissionDenied
from certctl.services.context import Principal
from certctl.spelling import unknown_names

__all__ = [
    "ACTOR_NAMED_BY",
    "ACTOR_READ",
    "check_id",
    "check_name",
    "granted",
    "may_act_on",
    "no_escalation",
    "unknown_names",
]

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")


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


def check_name(name: str | None) -> None:
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


def no_escalation(caller: Principal, permissions: frozenset[str] | set[str], what: str) -> None:
    """Refuse to ``what`` when it needs ``permissions`` the caller lacks (DESIGN §4)."""
    excess = sorted(set(permissions) - caller.permissions)
    if excess:
        raise PermissionDenied(
            f"cannot {what}: it needs permission(s) you lack: {', '.join(excess)}"
        )


def may_act_on(
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
    no_escalation(caller, held, action.format(f"this {kind}"))


# What shows an actor and what its roles grant (custom roles: GET /api/v1/auth/roles).
ACTOR_READ = "auth.actor.read"
ACTOR_NAMED_BY = ("auth.actor.read", "auth.role.read")


def granted(what: str, names: list[str]) -> str:
    """Audit detail of a grant: what an actor or role holds after the call, not before."""
    return f"{what}: {', '.join(names) or '(none)'}"
