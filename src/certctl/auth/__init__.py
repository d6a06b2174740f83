"""certctl.auth."""
