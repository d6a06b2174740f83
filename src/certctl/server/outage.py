"""How a periodic pass reports failing: once per reason, and once when it works again.

A database outage (or a Kubernetes API that refuses) fails every pass of every worker; a
traceback every interval would bury the one line that says why.
"""

from __future__ import annotations

import logging

__all__ = ["OutageLog"]


class OutageLog:
    """One WARNING when passes start failing (or their reason changes), one INFO when one works.

    ``what`` names the pass in the warning (``"<what> failed: <reason>; retrying every N s"``);
    ``recovered`` is the line logged when a pass works again after failing.
    """

    def __init__(self, log: logging.Logger, what: str, interval_s: float, recovered: str) -> None:
        self._log = log
        self._what = what
        self._interval_s = interval_s
        self._recovered = recovered
        self._reason: str | None = None

    def failed(self, reason: str) -> None:
        """A pass failed for ``reason`` (a message naming no secret)."""
        if reason != self._reason:
            self._log.warning(
                "%s failed: %s; retrying every %.0f s", self._what, reason, self._interval_s
            )
            self._reason = reason

    def worked(self) -> None:
        """A pass worked: the recovery line, if passes were failing."""
        if self._reason is not None:
            self._log.info("%s", self._recovered)
            self._reason = None
