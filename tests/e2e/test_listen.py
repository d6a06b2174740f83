"""An address already in use: one clear line, and no first start for a server that can't listen.

Before the fix, ``certctl serve`` created the CA, minted and printed the admin key (shown once)
and only then failed in uvicorn with two tracebacks; with several workers, ``SO_REUSEPORT``
let a second certctl silently share the port of the first.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests._tools import failed, free_port, run
from tests.e2e import conftest
from tests.e2e.conftest import StartServer, launch

pytestmark = pytest.mark.e2e


def _serve(data_dir: Path, port: int, workers: int) -> tuple[int, str, str]:
    result = failed(
        run(
            "certctl",
            "serve",
            "--data-dir",
            data_dir,
            "--listen",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            timeout=60,
        )
    )
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_address_in_use_fails_before_the_first_start(tmp_path: Path, workers: int) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, out, err = _serve(tmp_path / "data", port, workers)
    assert code == 1
    assert err.strip() == (
        f"certctl: error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(is another server running there? choose an address with --listen or CERTCTL_LISTEN)"
    )
    assert "Admin API key" not in out
    assert not (tmp_path / "data").exists()


def test_a_second_server_with_workers_cannot_share_the_port(
    start_server: StartServer, tmp_path: Path
) -> None:
    first = start_server(args=["--workers", "2"])
    code, _out, err = _serve(tmp_path / "second", first.port, 2)
    assert code == 1
    assert "Address already in use" in err
    assert "Traceback" not in err
    assert not (tmp_path / "second").exists()
    with first.client(first.admin_key) as client:  # the first one still serves
        assert client.get("/api/v1/auth/whoami").status_code == 200


def test_a_busy_metrics_port_names_its_own_setting(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "certctl.yaml"
        config.write_text(f"metrics: {{listen: '127.0.0.1:{port}'}}\n")
        result = failed(
            run(
                "certctl",
                "serve",
                "--config",
                config,
                "--data-dir",
                tmp_path / "data",
                "--listen",
                "127.0.0.1:0",
                timeout=60,
            )
        )
    assert result.stderr.strip().endswith(
        "choose an address with metrics.listen or CERTCTL_METRICS_LISTEN)"
    )
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "data").exists()


def test_a_test_server_whose_port_was_taken_meanwhile_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The e2e tests run on both cores: between free_port() and the server's bind, another
    # worker's server (or client) may take the port. The test then failed, not the server.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr(conftest, "free_port", lambda: next(picks, 0) or free_port())
        with launch(tmp_path / "server") as server:
            assert server.port != taken
            with server.client(server.admin_key) as client:
                assert client.get("/api/v1/auth/whoami").status_code == 200
    lost = (tmp_path / "server" / "serve-1.stderr").read_text()
    assert f"cannot listen on 127.0.0.1:{taken}: Address already in use" in lost


def test_a_test_server_whose_metrics_port_was_taken_meanwhile_starts_on_another(
    tmp_path: Path,
) -> None:
    # The same race for metrics.listen: a configuration given as a function picks its port
    # again. A fixed one failed the start with no retry (tests/e2e/test_tls.py had one).
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        picks = iter([taken])

        def config() -> dict[str, object]:
            return {"metrics": {"listen": f"127.0.0.1:{next(picks, 0) or free_port()}"}}

        with launch(tmp_path / "server", config=config) as server:
            metrics_port = server.configured_port("metrics.listen")
            assert metrics_port != taken
            with server.client(server.admin_key) as client:
                scraped = client.get(f"https://127.0.0.1:{metrics_port}/api/v1/metrics/prometheus")
            assert scraped.status_code == 200, scraped.text
    lost = (tmp_path / "server" / "serve-1.stderr").read_text()
    assert f"cannot listen on 127.0.0.1:{taken}: Address already in use" in lost


def test_a_server_with_a_metrics_listener_says_once_that_its_process_started_and_finished(
    tmp_path: Path,
) -> None:
    # uvicorn logs these once per listener: with metrics.listen the log said "Started server
    # process [N]" twice (and "Shutting down", "Finished server process [N]"), as if two
    # processes had started.
    config = {"metrics": {"listen": f"127.0.0.1:{free_port()}"}}
    with launch(tmp_path / "server", config=config) as server:
        metrics_port = server.configured_port("metrics.listen")
        with server.client(server.admin_key) as client:
            scraped = client.get(f"https://127.0.0.1:{metrics_port}/api/v1/metrics/prometheus")
        assert scraped.status_code == 200, scraped.text
        assert server.stop() == 0
        stderr = server.logs()[1]
    pid = server.proc.pid
    for line in (
        f"Started server process [{pid}]",
        "Shutting down",
        f"Finished server process [{pid}]",
    ):
        assert stderr.count(line) == 1, stderr
