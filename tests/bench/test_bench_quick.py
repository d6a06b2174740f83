"""``bench/run.py --quick`` runs end to end and writes every row (it asserts no speed)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "bench" / "run.py"

OFFLINE_ROWS = {
    "issue-zip",
    "issue-dir",
    "issue-dir-vs-files",
    "issue-inproc",
    "help",
    "issue-zip-large",
    "issue-dir-large",
    "issue-dir-large-vs-files",
    "issue-zip-large-vs-openssl",
    "inspect-bundle",
    "inspect-bundle-json",
    "crl-create-large",
}
OPENSSL_ROWS = {
    "issue-zip-large-vs-openssl",
    "inspect-bundle",
    "inspect-bundle-json",
    "crl-create-large",
}
# ``certctl serve`` rows (bench/_server_bench.py); --quick's stores hold 200/1,000/2,000 rows.
ASGI_ROWS = {
    "asgi-handshake-uvicorn-vs-granian",
    "asgi-get-uvicorn-vs-granian",
    "asgi-get-cpu-uvicorn-vs-granian",
}
SERVER_ROWS = {
    "api-issue-csr",
    "api-issue-csr-cpu",
    "api-issue-csr-vs-certdb",
    "api-issue-keygen",
    "api-auth-get-cpu",
    "api-get-cert-cpu",
    "metrics-scrape-1k",
    "metrics-scrape-2k",
    "api-list-2k-p99",
    "rss-2k",
    "metrics-refresh-2k",
    "tls-handshake-cpu",
    "tls-mtls-handshake-cpu",
    "startup-ready",
    "workers-2",
    "workers-2-postgresql",
    "procs-2-sqlite",
    *ASGI_ROWS,
}
ROWS = OFFLINE_ROWS | SERVER_ROWS
GRANIAN = ROOT / "bench" / ".venv-granian" / "bin" / "granian"
NUMBERS = ("value", "reference_value", "ratio", "ratio_min", "ratio_max")


# 35-45 s alone; it runs beside the other parallel tests (make test), so the deadlines
# leave room for a machine twice as busy.
@pytest.mark.timeout(330)
def test_quick_run_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    rows = {row["id"]: row for row in report["rows"]}
    assert set(rows) == ROWS
    for row_id, row in rows.items():
        if "skipped" in row:
            # The openssl reference only when openssl is missing; granian only when its venv
            # (made by ``make bench``) is.
            if row_id in OPENSSL_ROWS:
                assert shutil.which("openssl") is None
            else:
                assert row_id in ASGI_ROWS, row
                assert not GRANIAN.exists()
            continue
        for key in NUMBERS:
            value = row[key]
            assert isinstance(value, float), (row_id, key, value)
            assert math.isfinite(value), (row_id, key)
            assert value > 0, (row_id, key)
        assert row["rounds"] >= 3, row_id
        samples = row["samples"]
        assert len(samples["value"]) == len(samples["reference"]) == row["rounds"], row_id
        assert row["target"] is None or row["meets_target"] in (True, False), row_id
        assert row_id in proc.stdout
        if row_id in SERVER_ROWS and "metrics" in row:
            for name, metric in row["metrics"].items():
                assert metric["value"] > 0, (row_id, name)
                assert metric["reference"] > 0, (row_id, name)
