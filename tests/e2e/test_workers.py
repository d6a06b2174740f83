"""``certctl serve --workers 2``: one parent, two serving processes, one set of metrics.

Checks what a user of several workers relies on: requests are served by both workers, a
scrape (whichever worker answers) counts every worker's issuances, a replaced custom
certificate reaches every worker, a crashed worker is replaced while the others serve, and
SIGTERM stops them all.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests._poll import wait_until
from tests.e2e.conftest import CertctlServer, StartServer, certctl_cli, peer_certificate
from tests.e2e.test_tls_reload import issue_localhost, replace_pair

pytestmark = pytest.mark.e2e

ISSUED = 40


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _server_socket_inode(server_port: int, client_port: int) -> str:
    """The inode of the server's end of the loopback connection from ``client_port``."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            return fields[9]
    raise AssertionError(f"no connection 127.0.0.1:{client_port} -> {server_port}")


def _serving_worker(server: CertctlServer, workers: list[int]) -> int:
    """Make one request on a new connection; the worker process holding its server end.

    Read from /proc (which process has the accepted socket open), not from CPU time: a busy
    machine gave a worker that did serve fewer ticks than a bound on them assumed.
    """
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=server.ssl_context(), timeout=30
    )
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert response.read() == b"ok", response.status
        # Answered, so accepted: the socket is in the worker's descriptor table until closed.
        target = f"socket:[{_server_socket_inode(server.port, connection.sock.getsockname()[1])}]"
        for pid in workers:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):  # closed while we looked
                    if os.readlink(fd) == target:
                        return pid
        raise AssertionError(f"no worker of {workers} holds {target}")
    finally:
        connection.close()


def _get_in(
    server: CertctlServer, path: str, workers: list[int], headers: dict[str, str] | None = None
) -> tuple[int, bytes, int]:
    """GET ``path`` on a new connection: (status, body, the worker that answered)."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=server.ssl_context(), timeout=30
    )
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        target = f"socket:[{_server_socket_inode(server.port, connection.sock.getsockname()[1])}]"
        for pid in workers:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):  # closed while we looked
                    if os.readlink(fd) == target:
                        return response.status, body, pid
        raise AssertionError(f"no worker of {workers} holds {target}")
    finally:
        connection.close()


def _whoami_in(server: CertctlServer, key: str, workers: list[int]) -> tuple[int, int]:
    """GET whoami with ``key`` on a new connection: (status, the worker that answered)."""
    headers = {"Authorization": f"Bearer {key}"}
    status, _, pid = _get_in(server, "/api/v1/auth/whoami", workers, headers)
    return status, pid


def _crls_in_turn(server: CertctlServer, workers: list[int], times: int) -> list[tuple[int, bytes]]:
    """The default CRL on new connections until each worker answered ``times`` times.

    (worker, DER) in the order fetched, as a client load-balanced over the workers sees them.
    """
    fetched: list[tuple[int, bytes]] = []
    for _ in range(200):
        status, body, pid = _get_in(server, "/api/v1/issuers/default/crl", workers)
        assert status == 200, body
        fetched.append((pid, body))
        if all(sum(p == w for p, _ in fetched) >= times for w in workers):
            return fetched
    raise AssertionError(f"a worker never answered {times} times: {[p for p, _ in fetched]}")


def _answers_per_worker(
    server: CertctlServer, key: str, workers: list[int], times: int
) -> dict[int, Counter[int]]:
    """Whoami with ``key`` until every worker answered it ``times`` times: statuses by worker."""
    seen: dict[int, Counter[int]] = {pid: Counter() for pid in workers}
    for _ in range(200):
        status, pid = _whoami_in(server, key, workers)
        seen[pid][status] += 1
        if all(sum(c.values()) >= times for c in seen.values()):
            return seen
    raise AssertionError(f"a worker never answered {times} times: {seen}")


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


def _service_delivery_delays(server: CertctlServer, targets: Path) -> list[float]:
    """PUT services one connection each (the kernel spreads them); seconds until delivered.

    Six: all of them answered by worker 0 (which wakes its own scheduler) has a probability
    of 1/64.
    """
    delays = []
    for n in range(6):
        target = targets / f"svc{n}"
        doc = {
            "apiVersion": "certctl.io/v1",
            "kind": "TLSService",
            "metadata": {"name": f"svc{n}"},
            "spec": {"targets": [{"directory": str(target)}]},
        }
        with server.client(server.admin_key) as client:
            response = client.put(f"/api/v1/services/svc{n}", json=doc)
        assert response.status_code == 201, response.text
        start = time.monotonic()
        done = target / "tls.crt"
        _wait(done.is_file, f"service svc{n} delivered", 5.0)
        delays.append(round(time.monotonic() - start, 2))
    return delays


def test_two_workers_share_the_work_and_the_metrics(
    start_server: StartServer, tmp_path: Path
) -> None:
    ca = tmp_path / "ca"
    certctl_cli("ca", "create", "--out", ca, "--cn", "Workers Test CA")
    cert_dir = tmp_path / "certdir"
    first = issue_localhost(ca, cert_dir)
    server = start_server(
        # No periodic reconcile pass during the test: a service delivered was woken. No
        # failed-authentication throttle: the revoked keys below are tried until each worker
        # answered, as often as the kernel's spread takes (one run: 10 failures from
        # 127.0.0.1 in one worker, and the admin's next request got 429).
        config={
            "workers": 2,
            "tls": {"reload-interval": "1s"},
            "reconcile-interval": "1h",
            "auth": {"failure-limit": 0},
        },
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
    # Under concurrent load both workers serve. 40 connections spread by the kernel's hash: a
    # worker gets fewer than 5 of them with a probability of 2e-7 (binomial, p = 1/2).
    with ThreadPoolExecutor(8) as pool:
        served = Counter(pool.map(lambda _: _serving_worker(server, workers), range(40)))
    print(f"connections served per worker: {dict(served)}")
    assert all(served[pid] >= 5 for pid in workers), served
    for _ in range(5):
        assert _issued_total(server) == ISSUED
    with server.client(server.admin_key) as client:
        listed = client.get("/api/v1/certificates", params={"limit": 100}).json()["items"]
    assert len(listed) == ISSUED

    # A managed service created through either worker is delivered by worker 0 (which
    # reconciles) within seconds: a request worker 1 answered used to wake only worker 1,
    # and worker 0 saw it at its next pass (reconcile-interval).
    delays = _service_delivery_delays(server, tmp_path / "targets")
    print(f"service created -> files delivered, s: {delays}")

    # A key each worker remembers (answered from its memory after the first use) fails in
    # both on the very next request once another worker revokes it; so does a key whose actor
    # another worker deletes.
    with server.client(server.admin_key) as client:
        client.post("/api/v1/auth/actors", json={"id": "w-bot", "roles": ["r-viewer"]})
        keys = [
            client.post("/api/v1/auth/apikeys", json={"actor_id": actor}).json()
            for actor in ("w-bot", "w-bot")
        ]
    for key in keys:
        seen = _answers_per_worker(server, key["key_value"], workers, 3)
        assert all(set(c) == {200} for c in seen.values()), seen
    with server.client(server.admin_key) as client:
        assert client.delete(f"/api/v1/auth/apikeys/{keys[0]['id']}").status_code == 200
    seen = _answers_per_worker(server, keys[0]["key_value"], workers, 2)
    assert all(set(c) == {401} for c in seen.values()), seen
    with server.client(server.admin_key) as client:
        assert client.delete("/api/v1/auth/actors/w-bot").status_code == 204
    seen = _answers_per_worker(server, keys[1]["key_value"], workers, 2)
    assert all(set(c) == {401} for c in seen.values()), seen

    # Both workers serve the newest CRL either signed: one CRL while nothing changes (each
    # served its own, and a client saw the number go down and up), and a revocation through
    # either shows in both at once.
    fetched = _crls_in_turn(server, workers, 2)
    assert len({der for _, der in fetched}) == 1, [p for p, _ in fetched]
    with server.client(server.admin_key) as client:
        revoked = client.post(f"/api/v1/certificates/{listed[0]['id']}/revoke", json={})
    assert revoked.status_code == 200, revoked.text
    after = _crls_in_turn(server, workers, 2)
    assert len({der for _, der in after}) == 1, [p for p, _ in after]
    crls = [x509.load_der_x509_crl(der) for der in (fetched[0][1], after[0][1])]
    assert [e.serial_number for e in crls[1]] == [int(listed[0]["serial"], 16)]
    numbers = [c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number for c in crls]
    assert numbers[1] > numbers[0], numbers

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


SERVICE_DOC = {
    "apiVersion": "certctl.io/v1",
    "kind": "TLSService",
    "metadata": {"name": "web"},
    "spec": {"http": {"tls": {"selfSignedCertificate": {"subjectAltNames": []}}}},
}


def test_every_worker_serves_a_service_ca_made_again_at_once(start_server: StartServer) -> None:
    """A managed service deleted and applied again has a new CA under svc.<name>: the worker
    that had served the old one's ca.pem served it from its cache for up to a minute more.
    """
    server = start_server(config={"workers": 2, "reconcile-interval": "1s"})
    workers = _children(server.proc.pid)
    assert len(workers) == 2
    path = "/api/v1/issuers/svc.web/ca.pem"

    def stored() -> str | None:
        with server.client(server.admin_key) as c:
            r = c.get("/api/v1/issuers/svc.web")
            return r.json()["certificate_pem"] if r.status_code == 200 else None

    def from_both() -> dict[int, bytes]:
        seen: dict[int, bytes] = {}
        for _ in range(200):
            status, body, pid = _get_in(server, path, workers)
            assert status == 200, body
            seen[pid] = body
            if len(seen) == 2:
                return seen
        raise AssertionError(seen)

    with server.client(server.admin_key) as c:
        assert c.put("/api/v1/services/web", json=SERVICE_DOC).status_code == 201
    deadline = time.monotonic() + 30
    while (old := stored()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert set(from_both().values()) == {old.encode()}
    with server.client(server.admin_key) as c:
        assert c.delete("/api/v1/services/web").status_code == 204
        assert c.put("/api/v1/services/web", json=SERVICE_DOC).status_code == 201
    deadline = time.monotonic() + 30
    while (new := stored()) in (None, old):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    served = from_both()
    assert set(served.values()) == {new.encode()}, {
        pid: ("new" if b == new.encode() else "old" if b == old.encode() else "?")
        for pid, b in served.items()
    }
