"""certctl.server."""
