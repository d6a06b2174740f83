"""Command-line interface: offline PKI commands (and, later, the server and API client)."""

from __future__ import annotations

__all__: list[str] = []
