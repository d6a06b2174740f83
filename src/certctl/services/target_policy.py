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
from dataclasses import dataclass, field
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
    # kubernetes.namespace as the server resolved it; None when unknown (no cluster).
    default_namespace: str | None = None
    # The delegated directories as written: a target spelled under /srv/tls must be
    # re-checked at delivery even when /srv is itself a symlink (to /data/srv).
    spelled: tuple[Path, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "spelled", tuple(map(Path, self.delegated_directories)))
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
        return self._own_real(_resolved(path) if resolve_last else _real(path))

    def _own_real(self, real: Path) -> Path | None:
        """The server's own path that the resolved ``real`` overlaps, if any."""
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
            PermissionDenied: a host effect that needs an administrator (every permission).
        """
        old = [t for t in (before.spec.targets if before else []) if isinstance(t, DirectoryTarget)]
        superuser = caller.permissions >= frozenset(PERMISSIONS)
        # A service an administrator aimed at the host (a reload, a directory elsewhere)
        # keeps its targets as the administrator set them: any target added (a directory or
        # a Secret) would receive its key, and one removed first would make it look like an
        # operator's service again.
        admin_made = [t for t in old if self._needs_admin(t) is not None]
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
            if superuser or target in old:
                continue  # unchanged targets stay whoever set them (operators edit SANs)
            reason = self._needs_admin(target)
            if reason is not None:
                changed = self._changed_field(target, old)
                raise PermissionDenied(f"{where}{changed}: {reason}; ask an administrator")
        if admin_made and not superuser and before is not None:
            was = {_canonical(t) for t in before.spec.targets}
            now = {_canonical(t) for t in spec.spec.targets}
            if was != now:
                raise PermissionDenied(
                    "spec.targets: the targets of a service an administrator aimed at the host "
                    f"({admin_made[0].directory}) are changed by an administrator only: added "
                    "ones would receive its key; ask an administrator"
                )

    def _needs_admin(self, target: DirectoryTarget) -> str | None:
        """Why only an administrator may set ``target``, or None."""
        if target.reload is not None:
            return "reload runs a command as the certctl server"
        allowed = ", ".join(map(str, self.spelled)) or "none configured"
        for key, path, resolve_last in (
            ("directory", target.directory, False),
            ("passwordFile", target.password_file, True),
        ):
            if path is None:
                continue
            root = self._spelled_root(path)
            if root is None or not self.delegated(path, resolve_last=resolve_last):
                where = (
                    f"resolves to {_resolved(path) if resolve_last else _real(path)}, not"
                    if root is not None
                    else "is not"
                )
                return (
                    f"{key} {path} {where} strictly inside services.target-directories ({allowed})"
                )
        return None

    @staticmethod
    def _changed_field(target: DirectoryTarget, old: list[DirectoryTarget]) -> str:
        # Name the field that made the difference, for a target edited in place.
        same_place = next((t for t in old if t.directory == target.directory), None)
        if same_place is None:
            return ""
        fields = [
            name
            for name in DirectoryTarget.model_fields
            if getattr(same_place, name) != getattr(target, name)
        ]
        aliases = {n: (DirectoryTarget.model_fields[n].alias or n) for n in fields}
        return f" ({', '.join(aliases[n] for n in fields)} changed)" if fields else ""

    def delivery_problem(self, target: DirectoryTarget) -> str | None:
        """Why ``target`` must not be written now, or None, judged on its paths as they are.

        ``resolved_problem`` judges a path already opened.
        """
        problem = self.resolved_problem(target.directory, _real(target.directory), "directory")
        if problem is None and target.password_file is not None:
            problem = self.resolved_problem(
                target.password_file, _resolved(target.password_file), "passwordFile"
            )
        return problem

    def resolved_problem(self, spelled: Path, real: Path, what: str) -> str | None:
        """Why the stored path ``spelled``, which is ``real`` now, must not be used, or None.

        The paths were checked when the spec was stored, but what they resolve to can have
        changed since (a parent swapped for a symlink): a path that reads as inside a
        delegated directory must still resolve there, and none may reach the server's own
        files.
        """
        own = self._own_real(real)
        if own is not None:
            return f"{what} {spelled} now resolves into the server's own files ({own}); not used"
        root = self._spelled_root(spelled)
        if root is not None and not any(r in real.parents for r in self.delegated_directories):
            return (
                f"{what} {spelled} no longer resolves inside {root} (it is {real}: a symlink "
                "on its path?); not used"
            )
        return None

    def _spelled_root(self, path: Path) -> Path | None:
        """The delegated directory ``path`` reads as inside, as written or resolved."""
        roots = (*self.spelled, *self.delegated_directories)
        return next((root for root in roots if root in path.parents), None)

    def target_identity(
        self, target: DirectoryTarget | SecretTarget
    ) -> tuple[str, str | None, str]:
        """``target_identity`` with a Secret's missing namespace resolved, when known."""
        kind, namespace, name = target_identity(target)
        return (kind, namespace or self.default_namespace, name)


def _canonical(target: DirectoryTarget | SecretTarget) -> str:
    return target.model_dump_json(by_alias=True)


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
