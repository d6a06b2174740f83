"""``certctl serve --workers 2``: one parent, two serving processes, one set of metrics.

Checks what a user of several workers relies on: requests are served by both workers, a
scrape (whichever worker answers) counts every worker's issuances, a replaced custom
certificate reaches every worker, a crashed worker is replaced while the others serve, and
SIGTERM stops them all.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests._poll import wait_until
from tests.e2e.conftest import CertctlServer, StartServer, certctl_cli, peer_certificate
from tests.e2e.test_tls_reload import issue_localhost, replace_pair

pytestmark = pytest.mark.e2e

ISSUED = 40


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _healthz_burst(server: CertctlServer) -> None:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        with server.client() as client:  # a new TLS connection each time
            assert client.get("/healthz").text == "ok"


def _issued_total(server: CertctlServer) -> float:
    with server.client(server.admin_key) as client:  # a new connection: any worker answers
        response = client.get("/api/v1/metrics/prometheus")
    assert response.status_code == 200, response.text
    return sum(
        s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name == "certctl_issuance_total" and s.labels.get("result") == "success"
    )


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    wait_until(predicate, what, timeout_s)


def test_two_workers_share_the_work_and_the_metrics(
    start_server: StartServer, tmp_path: Path
) -> None:
    ca = tmp_path / "ca"
    certctl_cli("ca", "create", "--out", ca, "--cn", "Workers Test CA")
    cert_dir = tmp_path / "certdir"
    first = issue_localhost(ca, cert_dir)
    server = start_server(
        config={"workers": 2, "tls": {"reload-interval": "1s"}},
        args=["--tls-mode", "custom", "--tls-cert-dir", cert_dir],
        ca=ca / "ca.crt",
    )
    workers = _children(server.proc.pid)
    assert len(workers) == 2, workers
    # The admin key comes from the data dir (custom mode prints no CA path).
    server.admin_key = (server.data_dir / "admin-api-key").read_text().strip()

    for n in range(ISSUED):  # one connection per request: the kernel spreads them
        with server.client(server.admin_key) as client:
            response = client.post(
                "/api/v1/certificates", json={"common_name": f"w{n}.example.com"}
            )
        assert response.status_code == 201, response.text
    # Under concurrent load both workers serve: each one's CPU time grows.
    before = {pid: _cpu_ticks(pid) for pid in workers}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: _healthz_burst(server), range(8)))
    grown = {pid: _cpu_ticks(pid) - before[pid] for pid in workers}
    print(f"worker CPU ticks during the burst: {grown}")
    assert all(ticks >= 5 for ticks in grown.values()), grown
    for _ in range(5):
        assert _issued_total(server) == ISSUED
    with server.client(server.admin_key) as client:
        listed = client.get("/api/v1/certificates", params={"limit": 100}).json()["items"]
    assert len(listed) == ISSUED

    # A new certificate reaches every worker: 20 new connections all see it.
    second = issue_localhost(ca, tmp_path / "second")
    replace_pair(
        cert_dir,
        (tmp_path / "second" / "tls.crt").read_bytes(),
        (tmp_path / "second" / "tls.key").read_bytes(),
    )
    _wait(
        lambda: all(
            peer_certificate(server.port, server.ca).serial_number == second.serial_number
            for _ in range(20)
        ),
        "both workers to serve the replaced certificate",
    )
    assert first.serial_number != second.serial_number

    # A crashed worker is replaced; the survivor keeps serving meanwhile.
    os.kill(workers[0], signal.SIGKILL)
    with server.client() as client:
        assert client.get("/healthz").text == "ok"
    _wait(
        lambda: (
            len(_children(server.proc.pid)) == 2 and workers[0] not in _children(server.proc.pid)
        ),
        "the parent to start a new worker",
    )
    _wait(lambda: _issued_total(server) == ISSUED, "the counters to survive the crash")
    _, err = server.logs()
    assert f"worker 0 (pid {workers[0]}) exited with status -9" in err

    # SIGTERM to the parent stops every worker, and the parent exits 0.
    replacement = _children(server.proc.pid)
    assert server.stop() == 0
    for pid in replacement:  # reaped by the parent before it exited
        assert not Path(f"/proc/{pid}").exists(), pid
