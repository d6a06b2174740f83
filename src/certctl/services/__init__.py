"""certctl.services."""
