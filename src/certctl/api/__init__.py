"""certctl.api."""
