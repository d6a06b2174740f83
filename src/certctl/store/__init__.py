"""certctl.store."""
