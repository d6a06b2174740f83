"""Parser fuzz targets (atheris harness ``run.py``; hypothesis tests in tests/reliability)."""
