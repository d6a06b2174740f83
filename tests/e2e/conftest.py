"""End-to-end fixtures: ``certctl serve`` as a real subprocess, driven by real clients.

Each server gets its own data directory, a free port on 127.0.0.1 and log files; it is stopped
by PID (SIGTERM, then SIGKILL after 30 s). Missing tools fail the test, never skip it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests._tools import free_port, ok, require, run

READY_TIMEOUT_S = 60.0
READY_BANNER = "Admin API key"
# A deadline, not a wait: a server stops in well under a second when the machine is idle, but
# two workers and their parent took more than 5 s on a loaded 2-core machine, and the SIGKILL
# turned a clean stop (exit 0, which test_workers checks) into -9.
STOP_TIMEOUT_S = 30.0


def stop_process(proc: subprocess.Popen[Any]) -> int:
    """SIGTERM ``proc`` by PID, SIGKILL it after 30 s; return its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
    return proc.returncode


def tls_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context trusting ``ca`` only, optionally presenting a client certificate."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def peer_certificate(port: int, ca: Path, server_name: str = "localhost") -> x509.Certificate:
    """The certificate a new TLS connection to 127.0.0.1:``port`` is served (verified)."""
    ctx = tls_context(ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def secret_of(key_value: str) -> str:
    """The secret part of an API key ``cctl_<key id>_<secret>``."""
    prefix, key_id, secret = key_value.split("_", 2)
    assert prefix == "cctl", key_value[:5]
    assert key_id
    assert len(secret) >= 20
    return secret


@dataclass
class CertctlServer:
    """A running ``certctl serve`` process and what its first start produced."""

    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    ca: Path
    stdout: Path
    stderr: Path
    config: Path | None
    client_cert: tuple[Path, Path] | None = None
    admin_key: str = ""
    exit_code: int | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        """Trust the server's CA (and present the start-up client certificate, if any)."""
        cert, key = self.client_cert or (None, None)
        return tls_context(self.ca, cert, key)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        """An httpx client for this server, bearing ``key`` when given."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(
            base_url=self.url, verify=self.ssl_context(), headers=headers, timeout=30, **kwargs
        )

    def cli_env(self) -> dict[str, str]:
        """The environment of a CLI command acting as ``admin`` on this server (the
        caller's own CERTCTL_ variables left out)."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
        return clean | {
            "CERTCTL_URL": self.url,
            "CERTCTL_CA_CERT": str(self.ca),
            "CERTCTL_API_KEY": self.admin_key,
        }

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """``certctl ARGS`` as ``admin`` on this server (the result, checked by the caller)."""
        return run("certctl", *args, env=self.cli_env())

    def configured_port(self, key: str) -> int:
        """The port of listener ``key`` in the configuration it started on."""
        assert self.config is not None, "started without a configuration"
        value: Any = yaml.safe_load(self.config.read_text())
        for part in key.split("."):
            value = value[part]
        return int(str(value).rsplit(":", 1)[1])

    def logs(self) -> tuple[str, str]:
        """(stdout, stderr) so far."""
        return self.stdout.read_text(errors="replace"), self.stderr.read_text(errors="replace")

    def stop(self) -> int:
        """Stop by PID; idempotent. Returns the exit code."""
        if self.exit_code is None:
            self.exit_code = stop_process(self.proc)
        return self.exit_code


# A configuration, or a function making one: called again for each start, it can pick new
# free ports for listeners other than the main one (metrics.listen).
Config = dict[str, Any] | Callable[[], dict[str, Any]]


class StartServer(Protocol):
    def __call__(
        self,
        *,
        data_dir: Path | None = None,
        config: Config | None = None,
        args: Sequence[str | Path] = (),
        ca: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
    ) -> CertctlServer: ...


_IN_USE = re.compile(r"cannot listen on 127\.0\.0\.1:(\d+): Address already in use")


def _lost_the_port(server: CertctlServer, other_ports_picked: bool) -> bool:
    """True when the server exited because another process took a port the test picked first.

    ``free_port`` only says the port was free a moment ago: with the e2e tests on both cores
    (pytest-xdist), another worker's server or client may bind it before this one does. The
    main port is always picked again; another listener's only when the configuration is a
    function (``other_ports_picked``), which picks its ports anew for each start.
    """
    if server.proc.poll() is None:
        return False
    lost = _IN_USE.search(server.logs()[1])
    return lost is not None and (int(lost.group(1)) == server.port or other_ports_picked)


def _wait_ready(
    server: CertctlServer, *, may_retry: bool = False, other_ports_picked: bool = False
) -> bool:
    """Wait for ``/readyz``; False (to retry on another port) if the port was taken."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: object = "no attempt"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            if may_retry and _lost_the_port(server, other_ports_picked):
                server.stop()
                return False
            break
        if server.ca.is_file():
            try:
                with server.client() as client:
                    response = client.get("/readyz", timeout=2)
                # The banner on stdout is written before the listener starts.
                if response.status_code == 200 and READY_BANNER in server.logs()[0]:
                    return True
                last = f"HTTP {response.status_code}"
            except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
                last = repr(exc)
        time.sleep(0.1)
    code = server.stop()
    out, err = server.logs()
    pytest.fail(
        f"certctl serve not ready on {server.url} after {READY_TIMEOUT_S} s "
        f"(exit {code}, last: {last})\nstdout:\n{out}\nstderr:\n{err[-4000:]}",
        pytrace=False,
    )


_PORT_ATTEMPTS = 3


def _spawn(
    base: Path,
    data_dir: Path,
    config: Config | None,
    args: Sequence[str | Path],
    ca: Path | None,
    client_cert: tuple[Path, Path] | None,
) -> CertctlServer:
    """Start ``certctl serve`` on a free port, its output in ``base/serve-<n>.std*``.

    ``{port}`` in a configuration value or an argument is replaced by that port.
    """
    run_no = len(list(base.glob("serve-*.stdout"))) + 1
    stdout, stderr = base / f"serve-{run_no}.stdout", base / f"serve-{run_no}.stderr"
    config_file = None
    port = free_port()
    if config is not None:
        config_file = base / f"certctl-{run_no}.yaml"
        text = yaml.safe_dump(config() if callable(config) else config)
        # "{port}" in a value is the main port, picked just now (public-url names it).
        config_file.write_text(text.replace("{port}", str(port)))
    argv = [require("certctl"), "serve", "--data-dir", str(data_dir)]
    argv += ["--listen", f"127.0.0.1:{port}", *(str(a).replace("{port}", str(port)) for a in args)]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env["PYTHONUNBUFFERED"] = "1"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
    return CertctlServer(
        proc=proc,
        port=port,
        data_dir=data_dir,
        ca=ca or data_dir / "tls" / "ca.crt",
        stdout=stdout,
        stderr=stderr,
        config=config_file,
        client_cert=client_cert,
    )


@contextmanager
def launch(
    base: Path,
    *,
    data_dir: Path | None = None,
    config: Config | None = None,
    args: Sequence[str | Path] = (),
    ca: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
) -> Iterator[CertctlServer]:
    """Start ``certctl serve`` under ``base``, wait for ``/readyz``, stop it on exit.

    ``ca`` defaults to ``<data-dir>/tls/ca.crt`` (the self-signed mode's CA); ``client_cert``
    is presented while polling ``/readyz`` (needed with ``tls.client-auth: required``).
    ``config`` given as a function is called for each start: a listener port it takes from
    ``free_port()`` and loses to another process is picked again, as the main port is.
    """
    base.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or base / "data"
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        server = _spawn(base, data_dir, config, args, ca, client_cert)
        retry = attempt < _PORT_ATTEMPTS
        if _wait_ready(server, may_retry=retry, other_ports_picked=callable(config)):
            break
    try:
        key_file = data_dir / "admin-api-key"
        if key_file.is_file():
            server.admin_key = key_file.read_text().strip()
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Factory: start a server (own data dir unless given); every one is stopped at teardown."""
    with ExitStack() as stack:
        count = 0

        def start(**kwargs: Any) -> CertctlServer:
            nonlocal count
            count += 1
            return stack.enter_context(launch(tmp_path / f"server-{count}", **kwargs))

        yield start


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertctlServer]:
    """One server with the defaults (self-signed TLS), shared by the runbook and TLS tests."""
    with launch(tmp_path_factory.mktemp("default-server")) as server:
        yield server


PRIVATE_KEY_MARKERS = (
    b"-----BEGIN PRIVATE KEY-----",
    b"BEGIN EC PRIVATE KEY",
    b"BEGIN RSA PRIVATE",
)


def key_traces(private_key_pem: str) -> list[bytes]:
    """What of a private key must never be logged or stored: a PEM body line, the raw scalar."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), None)
    # PKCS#8 P-256: the first body line ends with 12 bytes of the private scalar.
    traces = [private_key_pem.strip().splitlines()[1].encode()]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        traces.append(key.private_numbers().private_value.to_bytes(size, "big"))
    return traces


def _found(blob: bytes, secrets: Sequence[str | bytes]) -> list[str]:
    found = []
    for secret in secrets:
        raw = secret.encode() if isinstance(secret, str) else secret
        if raw in blob:
            found.append(f"{raw[:8]!r}…")
    return found + [m.decode() for m in PRIVATE_KEY_MARKERS if m in blob]


def assert_no_secrets(
    server: CertctlServer,
    secrets: Sequence[str | bytes],
    *,
    first_start: bool,
    stored: Sequence[str] = (),
) -> None:
    """No secret and no private key block in the logs or in the SQLite files.

    On a first start the admin key is printed once, on its own indented stdout line: intended.
    ``stored`` are public values that must be found in the database files (the negative twin:
    the scan does see the data, wherever SQLite keeps it).
    """
    out, err = server.logs()
    if first_start:
        banner = f"  {server.admin_key}\n"
        assert out.count(banner) == 1, out
        out = out.replace(banner, "", 1)
    for name, blob in (("stdout", out.encode()), ("stderr", err.encode())):
        assert not _found(blob, secrets), f"{name}: {_found(blob, secrets)}"
    db_files = sorted(server.data_dir.glob("certctl.db*"))
    assert db_files, list(server.data_dir.iterdir())
    everything = b""
    for path in db_files:
        blob = path.read_bytes()
        found = _found(blob, secrets)
        assert not found, f"{path.name}: {found}"
        everything += blob
    for value in stored:
        assert value.encode() in everything, f"{value[:20]}… not in {db_files}"


def certctl_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed offline ``certctl`` CLI and assert it succeeded."""
    return ok(run("certctl", *args, cwd=cwd))
