"""Who may aim a managed service at the host: checked at the PUT, and again at delivery.

A reload command runs, and a directory target writes, as the server's own user, which can
read the key-encryption key and the admin API key: whoever sets them holds every permission
in effect. So (DESIGN §4's no-escalation rule, applied to the host) a new or changed
``reload``, or a ``directory``/``passwordFile`` outside the delegated directories
(``services.target-directories``), needs a caller holding every permission, and no caller
may aim a target at the server's own files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from certctl.auth.permissions import PERMISSIONS
from certctl.errors import InvalidRequest, PermissionDenied
from certctl.services.context import Principal
from certctl.services.tls_spec import DirectoryTarget, SecretTarget, TLSServiceSpec

__all__ = ["TargetPolicy", "same_target", "target_identity"]


def _real(path: Path) -> Path:
    # The target itself is a symlink certctl replaces, so resolve its parent only: a parent
    # that is a symlink out of an allowed directory must not count as inside it.
    return Path(os.path.realpath(path.parent)) / path.name


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _overlap(path: Path, other: Path) -> bool:
    return path == other or other in path.parents or path in other.parents


@dataclass(frozen=True)
class TargetPolicy:
    """Delegated directories, and the server's own paths no target may overlap.

    A service editor may deliver strictly inside a delegated directory.
    """

    delegated_directories: tuple[Path, ...] = ()
    protected: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "delegated_directories", tuple(map(_resolved, self.delegated_directories))
        )
        object.__setattr__(self, "protected", tuple(map(_resolved, self.protected)))

    def delegated(self, path: Path, *, resolve_last: bool = False) -> bool:
        """Whether ``path`` lies strictly inside a delegated directory, once resolved.

        The directory itself does not count: a target there would replace it.
        """
        real = _resolved(path) if resolve_last else _real(path)
        return any(root in real.parents for root in self.delegated_directories)

    def _own(self, path: Path, *, resolve_last: bool = False) -> Path | None:
        real = _resolved(path) if resolve_last else _real(path)
        return next((own for own in self.protected if _overlap(real, own)), None)

    def check(
        self,
        caller: Principal,
        spec: TLSServiceSpec,
        before: TLSServiceSpec | None,
    ) -> None:
        """Refuse a spec the caller may not store.

        Raises:
            InvalidRequest: a target overlapping the server's own files.
            PermissionDenied: a host effect the caller does not hold every permission for.
        """
        kept = [
            t for t in (before.spec.targets if before else []) if isinstance(t, DirectoryTarget)
        ]
        superuser = caller.permissions >= frozenset(PERMISSIONS)
        for i, target in enumerate(spec.spec.targets):
            if not isinstance(target, DirectoryTarget):
                continue
            where = f"spec.targets.{i}"
            own = self._own(target.directory)
            if own is not None:
                raise InvalidRequest(
                    f"{where}.directory: {target.directory} overlaps the server's own files "
                    f"({own}); deliver somewhere else"
                )
            if target.password_file is not None:
                own = self._own(target.password_file, resolve_last=True)
                if own is not None:
                    raise InvalidRequest(
                        f"{where}.passwordFile: {target.password_file} is among the server's "
                        f"own files ({own})"
                    )
            if superuser or target in kept:
                continue  # unchanged targets stay whoever set them (operators edit SANs)
            if target.reload is not None:
                raise PermissionDenied(
                    f"{where}.reload runs a command as the certctl server: setting it needs "
                    "every permission (an administrator)"
                )
            if not self.delegated(target.directory):
                raise PermissionDenied(
                    f"{where}.directory: {target.directory} is not inside "
                    "services.target-directories; only a caller holding every permission "
                    "may use it"
                )
            if target.password_file is not None and not self.delegated(
                target.password_file, resolve_last=True
            ):
                raise PermissionDenied(
                    f"{where}.passwordFile: {target.password_file} is not inside "
                    "services.target-directories; only a caller holding every permission "
                    "may use it"
                )

    def delivery_problem(self, target: DirectoryTarget) -> str | None:
        """Why ``target`` must not be written now, or None.

        The paths were checked when the spec was stored, but what they resolve to can have
        changed since (a parent swapped for a symlink): a path that reads as inside a
        delegated directory must still resolve there, and none may reach the server's own
        files.
        """
        own = self._own(target.directory)
        if own is not None:
            return f"{target.directory} now resolves into the server's own files ({own})"
        literal = [root for root in self.delegated_directories if root in target.directory.parents]
        if literal and not self.delegated(target.directory):
            return (
                f"{target.directory} no longer resolves inside {literal[0]} "
                "(a symlink on its path?); not written"
            )
        return None


def target_identity(target: DirectoryTarget | SecretTarget) -> tuple[str, str | None, str]:
    """What a target writes to: ``("dir", None, path)`` or ``("secret", namespace, name)``.

    The path has its parent resolved; a Secret's namespace is None when not given.
    """
    if isinstance(target, DirectoryTarget):
        return ("dir", None, str(_real(target.directory)))
    return ("secret", target.namespace, target.secret)


def same_target(a: tuple[str, str | None, str], b: tuple[str, str | None, str]) -> bool:
    """Whether two identities may name one place.

    A Secret without a namespace is in the server's (``kubernetes.namespace``), which may be
    any: it may be the one the other names.
    """
    if a[0] != b[0] or a[2] != b[2]:
        return False
    return a[1] == b[1] or a[1] is None or b[1] is None
