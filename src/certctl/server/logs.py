"""Log set-up of ``certctl serve``: text lines, or one JSON object per line (``log-format``)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", …}`` per record, for log shippers.

    Records may carry structured fields in ``extra={"fields": {...}}`` (the access log's
    method, path, status, actor, duration_ms, client): they become top-level keys, so a log
    store can filter on ``status`` without parsing the message.
    """

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object, on one line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: a control character or a lone surrogate from a request path stays an
        # escape inside the one line.
        return json.dumps(entry, default=str)


def configure_logging(log_format: str) -> None:
    """Send every logger (certctl, uvicorn, alembic) to stderr in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
