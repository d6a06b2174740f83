"""A value built from a file and built again when the file's content changes.

Files certctl trusts or signs with can be replaced while it runs: the kubelet rotates a
ServiceAccount's ``ca.crt`` in place, an operator renews a webhook receiver's CA. Each use
asks :meth:`ReloadedFromFile.current`, which reads the (small) file and rebuilds only when
its bytes differ from the last ones seen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from certctl.errors import InvalidRequest

if TYPE_CHECKING:
    import logging

__all__ = ["ReloadedFromFile"]

T = TypeVar("T")


class ReloadedFromFile(Generic[T]):
    """``build()``'s result, rebuilt when ``path``'s content changes.

    At construction a failing ``build`` raises (a bad file at start is an error). Later, a
    file that cannot be read for now (caught mid-rotation) keeps the value silently, and a
    new content ``build`` refuses (``InvalidRequest``: half-written, replaced by mistake)
    keeps it with one warning per content: ``"<detail>; <kept>"``. A content that builds
    is logged once: ``"<path> changed: <changed>"``.
    """

    def __init__(
        self,
        path: Path,
        build: Callable[[], T],
        *,
        log: logging.Logger,
        kept: str,
        changed: str,
    ) -> None:
        self._path = path
        self._build = build
        self._log = log
        self._kept = kept
        self._changed = changed
        self._lock = threading.Lock()
        self._seen = self._read()
        self._value = build()

    def _read(self) -> bytes | None:
        try:
            return self._path.read_bytes()
        except OSError:
            return None

    def current(self) -> T:
        """The value for the file as it is now (built again if its content changed)."""
        content = self._read()
        if content is None or content == self._seen:
            return self._value  # unreadable for now: keep what worked so far
        with self._lock:
            if content != self._seen:
                self._seen = content
                try:
                    self._value = self._build()
                except InvalidRequest as exc:
                    self._log.warning("%s; %s", exc.detail, self._kept)
                else:
                    self._log.info("%s changed: %s", self._path, self._changed)
            return self._value
