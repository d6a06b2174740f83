"""The permission catalogue and the immutable built-in roles (DESIGN §4)."""

from __future__ import annotations

__all__ = ["BUILTIN_ROLES", "PERMISSIONS", "is_known_permission"]

PERMISSIONS: tuple[str, ...] = (
    "cert.read",
    "cert.issue",
    "cert.revoke",
    "issuer.read",
    "issuer.create",
    "issuer.revoke",
    "service.read",
    "service.edit",
    "service.delete",
    "audit.read",
    "metrics.read",
    "auth.role.read",
    "auth.role.create",
    "auth.role.edit",
    "auth.role.delete",
    "auth.role.assign",
    "auth.actor.read",
    "auth.actor.create",
    "auth.actor.edit",
    "auth.actor.delete",
    "auth.apikey.read",
    "auth.apikey.create",
    "auth.apikey.revoke",
)

_OPERATOR_PREFIXES = ("cert.", "issuer.", "service.", "metrics.", "audit.")

BUILTIN_ROLES: dict[str, tuple[str, frozenset[str]]] = {
    "r-admin": ("Administrator", frozenset(PERMISSIONS)),
    "r-operator": (
        "Operator",
        frozenset(p for p in PERMISSIONS if p.startswith(_OPERATOR_PREFIXES)),
    ),
    "r-viewer": ("Viewer", frozenset(p for p in PERMISSIONS if p.endswith(".read"))),
    "r-auditor": ("Auditor", frozenset({"audit.read"})),
    "r-metrics-read": ("Metrics reader", frozenset({"metrics.read"})),
}


def is_known_permission(name: str) -> bool:
    """True when ``name`` is in the catalogue."""
    return name in PERMISSIONS
