"""certctl.metrics."""
