"""Custom TLS certificates are reloaded without dropping keep-alive connections."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from certctl.pki import format_serial
from tests._tools import run
from tests.e2e.conftest import CertctlServer, StartServer, certctl_cli, peer_certificate

pytestmark = pytest.mark.e2e

RELOAD_DEADLINE_S = 15.0
# The file poll of these servers: short, so that each reload the tests wait for lands within
# a fraction of a second (it was 1 s: ~0.5 s of waiting per reload, 3 s for "three polls").
RELOAD_INTERVAL = "250ms"
POLL_S = 0.25


def issue_localhost(ca: Path, out: Path) -> x509.Certificate:
    certctl_cli("cert", "issue", "--ca", ca, "--cn", "localhost", "--dns", "localhost",
                "--ip", "127.0.0.1", "--out", out)  # fmt: skip
    return x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())


def replace_pair(cert_dir: Path, cert_pem: bytes, key_pem: bytes, key_mode: int = 0o600) -> None:
    """Write both files under temporary names, then rename each over the live one."""
    tmp_crt, tmp_key = cert_dir / ".tls.crt.new", cert_dir / ".tls.key.new"
    tmp_crt.write_bytes(cert_pem)
    tmp_key.touch(mode=0o600)
    tmp_key.chmod(key_mode)  # before the rename: the server may read it the moment it lands
    tmp_key.write_bytes(key_pem)
    os.replace(tmp_key, cert_dir / "tls.key")
    os.replace(tmp_crt, cert_dir / "tls.crt")


class KeepAliveClient(threading.Thread):
    """GET /healthz every 100 ms on one keep-alive connection, counting errors."""

    def __init__(self, server: CertctlServer) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPSConnection(
            "localhost", server.port, context=server.ssl_context(), timeout=5
        )
        self.requests = 0
        self.errors: list[str] = []
        self.sockets: set[int] = set()
        self.serials: set[int] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.conn.request("GET", "/healthz")
                response = self.conn.getresponse()
                body = response.read()
                if response.status != 200 or body != b"ok":
                    self.errors.append(f"HTTP {response.status} {body[:80]!r}")
                sock = self.conn.sock
                assert sock is not None
                self.sockets.add(id(sock))
                assert isinstance(sock, ssl.SSLSocket)
                der = sock.getpeercert(binary_form=True)
                assert der is not None
                self.serials.add(x509.load_der_x509_certificate(der).serial_number)
                self.requests += 1
            except Exception as exc:
                self.errors.append(repr(exc))
            self._halt.wait(0.1)

    def finish(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self.conn.close()


def wait_for_serial(server: CertctlServer, ca: Path, serial: int) -> float:
    started = time.monotonic()
    seen = None
    while time.monotonic() - started < RELOAD_DEADLINE_S:
        seen = peer_certificate(server.port, ca).serial_number
        if seen == serial:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"still serving serial {seen:x}, want {serial:x}")


def scrape(server: CertctlServer) -> dict[str, float]:
    with server.client(server.admin_key) as client:
        response = client.get("/api/v1/metrics/prometheus")
    assert response.status_code == 200, response.text
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name == "certctl_tls_reloads_total"
    }


def test_custom_certificate_reload(start_server: StartServer, tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    certctl_cli("ca", "create", "--out", ca, "--cn", "Reload Test CA")
    cert_dir = tmp_path / "certdir"
    first = issue_localhost(ca, cert_dir)
    server = start_server(
        config={"tls": {"reload-interval": RELOAD_INTERVAL}},
        args=["--tls-mode", "custom", "--tls-cert-dir", cert_dir],
        ca=ca / "ca.crt",
    )
    assert peer_certificate(server.port, server.ca).serial_number == first.serial_number

    client = KeepAliveClient(server)
    client.start()
    try:
        time.sleep(0.5)
        second = issue_localhost(ca, tmp_path / "second")
        replace_pair(
            cert_dir,
            (tmp_path / "second" / "tls.crt").read_bytes(),
            (tmp_path / "second" / "tls.key").read_bytes(),
        )
        wait_for_serial(server, server.ca, second.serial_number)
        time.sleep(0.5)
    finally:
        client.finish()
    assert client.errors == [], client.errors
    assert client.requests >= 5
    # One connection throughout, still on the certificate it was opened with.
    assert len(client.sockets) == 1
    assert client.serials == {first.serial_number}
    _, err = server.logs()
    assert re.search(
        rf"TLS certificate reloaded: serial {format_serial(second.serial_number)}\b", err
    ), err

    # A broken replacement (key of another certificate) is refused; the last good one stays.
    third = issue_localhost(ca, tmp_path / "third")
    replace_pair(
        cert_dir,
        (tmp_path / "third" / "tls.crt").read_bytes(),
        (tmp_path / "second" / "tls.key").read_bytes(),
    )
    deadline = time.monotonic() + RELOAD_DEADLINE_S
    while time.monotonic() < deadline and "tls.key does not match" not in server.logs()[1]:
        time.sleep(0.2)
    _, err = server.logs()
    errors = [ln for ln in err.splitlines() if " ERROR certctl.tls: " in ln]
    assert any("tls.key does not match tls.crt" in ln for ln in errors), err
    assert all("PRIVATE KEY" not in ln for ln in errors)
    served = peer_certificate(server.port, server.ca).serial_number
    assert served == second.serial_number != third.serial_number
    reloads = scrape(server)
    assert reloads.get("certctl_tls_reloads_total[('result', 'error')]", 0) >= 1, reloads
    assert reloads.get("certctl_tls_reloads_total[('result', 'success')]", 0) >= 1, reloads
    assert server.proc.poll() is None


def s_client_serial(server: CertctlServer, ca: Path) -> int:
    """The serial ``openssl s_client`` is served, failing on any handshake or verify error."""
    result = run("openssl", "s_client", "-connect", f"127.0.0.1:{server.port}",
                 "-servername", "localhost", "-CAfile", ca, "-verify_return_error",
                 "-verify_hostname", "localhost", timeout=10)  # fmt: skip
    assert result.returncode == 0, result.stdout[-500:] + result.stderr[-500:]
    pem = result.stdout[result.stdout.index("-----BEGIN CERTIFICATE-----") :]
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def wait_for_log(server: CertctlServer, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + RELOAD_DEADLINE_S
    while time.monotonic() < deadline and server.logs()[1].count(text) < count:
        time.sleep(0.2)
    assert server.logs()[1].count(text) >= count, server.logs()[1][-3000:]


def test_a_bad_chain_or_a_missing_file_keeps_the_last_good_certificate(
    start_server: StartServer, tmp_path: Path
) -> None:
    ca = tmp_path / "ca"
    certctl_cli("ca", "create", "--out", ca, "--cn", "Reload Root")
    certctl_cli("ca", "create", "--out", tmp_path / "inter", "--cn", "Reload Intermediate",
                "--parent", ca)  # fmt: skip
    cert_dir = tmp_path / "certdir"
    first = issue_localhost(tmp_path / "inter", cert_dir)
    server = start_server(
        config={"tls": {"reload-interval": RELOAD_INTERVAL}},
        args=["--tls-mode", "custom", "--tls-cert-dir", cert_dir],
        ca=ca / "ca.crt",
    )
    assert s_client_serial(server, server.ca) == first.serial_number

    # A new pair whose tls.crt was cut short inside the intermediate (a half-written file,
    # a full disk): the leaf and key match, OpenSSL refuses the chain. That failed load
    # used to leave the new leaf without its key in the live context: every handshake
    # failed ("no shared cipher") while the log said the previous certificate still served.
    issue_localhost(tmp_path / "inter", tmp_path / "second")
    chain = (tmp_path / "second" / "tls.crt").read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 2
    replace_pair(cert_dir, chain[:-120], (tmp_path / "second" / "tls.key").read_bytes())
    wait_for_log(server, "TLS reload refused, still serving the previous certificate")
    assert "BAD_END_LINE" in server.logs()[1] or "bad end line" in server.logs()[1]
    for _ in range(3):
        assert s_client_serial(server, server.ca) == first.serial_number
    assert scrape(server).get("certctl_tls_reloads_total[('result', 'error')]") == 1

    # A missing tls.key (removed, not yet written again) is one error, not one per poll.
    (cert_dir / "tls.key").unlink()
    wait_for_log(server, "cannot read tls.key")
    time.sleep(4 * POLL_S)  # three more polls at least
    _, err = server.logs()
    assert err.count("cannot read tls.key") == 1, err[-2000:]
    assert s_client_serial(server, server.ca) == first.serial_number
    assert scrape(server).get("certctl_tls_reloads_total[('result', 'error')]") == 2

    # Good files again: served at once, nothing dropped on the way.
    third = issue_localhost(tmp_path / "inter", tmp_path / "third")
    replace_pair(
        cert_dir,
        (tmp_path / "third" / "tls.crt").read_bytes(),
        (tmp_path / "third" / "tls.key").read_bytes(),
    )
    wait_for_serial(server, server.ca, third.serial_number)
    assert s_client_serial(server, server.ca) == third.serial_number


def test_a_world_readable_tls_key_is_warned_about_at_start_and_at_each_reload(
    start_server: StartServer, tmp_path: Path
) -> None:
    # A custom tls.key of mode 0644 (any local user can read the server's private key) was
    # served without a word. A warning, not a refusal: Secret volumes mount 0644 by default.
    ca = tmp_path / "ca"
    certctl_cli("ca", "create", "--out", ca, "--cn", "Key Mode CA")
    cert_dir = tmp_path / "certdir"
    issue_localhost(ca, cert_dir)
    key = cert_dir / "tls.key"
    key.chmod(0o644)
    server = start_server(
        config={"tls": {"reload-interval": RELOAD_INTERVAL}},
        args=["--tls-mode", "custom", "--tls-cert-dir", cert_dir],
        ca=ca / "ca.crt",
    )
    warning = (
        f" WARNING certctl.tls: UNPROTECTED PRIVATE KEY FILE: {key} has mode 0644, open to "
        "every user of this machine; make it 0600"
    )
    assert server.logs()[1].count(warning) == 1, server.logs()[1][-3000:]
    # Twin: a reload to a 0600 key says nothing more …
    for name, mode in (("second", 0o600), ("third", 0o604)):
        issue_localhost(ca, tmp_path / name)
        replace_pair(
            cert_dir,
            (tmp_path / name / "tls.crt").read_bytes(),
            (tmp_path / name / "tls.key").read_bytes(),
            key_mode=mode,
        )
        wait_for_log(server, "TLS certificate reloaded", 1 if name == "second" else 2)
        if name == "second":
            assert server.logs()[1].count(warning) == 1
    # … a reload to a world-readable one says it again, with the file's mode.
    assert server.logs()[1].count(warning.replace("0644", "0604")) == 1, server.logs()[1][-3000:]
    assert server.proc.poll() is None


def test_the_start_banner_names_a_secret_volumes_ca_crt_by_its_link(
    start_server: StartServer, tmp_path: Path
) -> None:
    # A Kubernetes Secret volume: tls.crt, tls.key and ca.crt are links through ..data to a
    # timestamped directory the kubelet deletes once an update swapped ..data. The banner
    # named the CA file with the links followed (…/..2026_01_01_v1/ca.crt), so its curl and
    # CLI lines failed after the Secret's first update (curl: (77) error setting certificate).
    ca = tmp_path / "ca"
    certctl_cli("ca", "create", "--out", ca, "--cn", "Secret Volume CA")
    volume = tmp_path / "secret-volume"
    first = issue_localhost(ca, volume / "..2026_01_01_v1")
    (volume / "..data").symlink_to("..2026_01_01_v1")
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (volume / name).symlink_to(f"..data/{name}")
    server = start_server(
        config={"tls": {"reload-interval": RELOAD_INTERVAL}},
        args=["--tls-mode", "custom", "--tls-cert-dir", volume],
        ca=volume / "ca.crt",
    )
    assert peer_certificate(server.port, server.ca).serial_number == first.serial_number
    out, _ = server.logs()
    assert f"CA certificate: {volume / 'ca.crt'}\n" in out, out

    # The kubelet's update: a new directory, ..data swapped to it, the old one deleted.
    second = issue_localhost(ca, volume / "..2026_02_01_v2")
    (volume / "..data_tmp").symlink_to("..2026_02_01_v2")
    os.replace(volume / "..data_tmp", volume / "..data")
    shutil.rmtree(volume / "..2026_01_01_v1")
    wait_for_serial(server, server.ca, second.serial_number)

    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    (curl,) = [x for x in out.splitlines() if x.startswith("Try: curl ")]
    result = run("bash", "-c", f"{curl.removeprefix('Try: ')} -sS --fail", env=clean)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["actor_id"] == "admin"
    (cli,) = [x for x in out.splitlines() if x.startswith("CLI: export ")]
    result = run("bash", "-c", cli.removeprefix("CLI: "), env=clean)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["actor_id"] == "admin"
