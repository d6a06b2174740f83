"""``certctl serve`` rows: certctl against cfssl, nginx, granian and itself, in the same run.

Every server runs pinned to core 0 (``taskset -c 0``), the load generator to core 1. Each group
of variants is interleaved (A, B, A, B …, order rotating) and every row reports the median of
the per-round ratios. Loads: wrk (keep-alive TLS, fixed seconds) and ``openssl s_time -new``
(full handshakes) by default; ``--quick`` uses ``_servers.pyload`` (a fixed request count).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from _measure import BenchError, Variant, interleave, median
from _servers import (
    WRK_LUA,
    Load,
    Server,
    free_port,
    handshakes,
    load_json,
    postgres_database,
    pyload,
    wrk,
    wrk_split,
)
from _workloads import BenchCA, make_ca
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SERVER_PLANS", "ServerPlan", "bench_servers"]

BENCH_DIR = Path(__file__).resolve().parent
SCRIPTS = Path(sysconfig.get_path("scripts"))
CERTCTL = SCRIPTS / "certctl"
GRANIAN_VENV = BENCH_DIR / ".venv-granian"
GRANIAN = GRANIAN_VENV / "bin" / "granian"
# The workers-2 row: enough connections for the kernel's per-socket hash to balance them.
WORKERS_CONNECTIONS = 32


@dataclass(frozen=True)
class ServerPlan:
    """Sample lengths, rounds and database sizes of the server rows for one mode."""

    load_s: float  # wrk / s_time seconds per sample (0: pyload with ``quick_requests``)
    rounds: int
    sizes: tuple[int, int, int]  # certificates stored: small (reference), medium, large
    connections: int = 8
    quick_requests: int = 0
    install_granian: bool = True


SERVER_PLANS = {
    "quick": ServerPlan(0, 3, (200, 1_000, 2_000), quick_requests=40, install_granian=False),
    "default": ServerPlan(2, 5, (1_000, 10_000, 100_000)),
    "full": ServerPlan(3, 7, (1_000, 10_000, 100_000)),
}

# --- rows --------------------------------------------------------------------------------

METRIC_UNITS = {
    "req_per_s": "req/s",
    "cpu_us_per_req": "µs CPU/req",
    "p50_ms": "ms p50",
    "p99_ms": "ms p99",
    "rss_mb": "MB RSS",
}


def load_row(
    row_id: str,
    title: str,
    samples: dict[str, list[Load]],
    value: str,
    reference: str,
    *,
    metric: str,
    op: str | None,
    target: float | None,
    scale: float = 1.0,
    unit: str | None = None,
    limit: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """A row over ``metric`` of ``value`` vs ``reference`` (paired per round, median ratio).

    ``target`` is a ratio target (``op`` ``>=``, ``<=`` or ``<``); ``limit`` an absolute one on
    the certctl value (``("<", 10.0)``: under 10 units). Every other metric of both sides is
    reported too, under ``metrics``.
    """
    values = [s.as_dict()[metric] * scale for s in samples[value]]
    refs = [s.as_dict()[metric] * scale for s in samples[reference]]
    ratios = [v / r for v, r in zip(values, refs, strict=True)]
    ratio = median(ratios)
    meets: bool | None = None
    target_doc: dict[str, Any] | None = None
    if target is not None and op is not None:
        target_doc = {"op": op, "ratio": target}
        meets = _compare(ratio, op, target)
    if limit is not None:
        limit_op, limit_value = limit
        target_doc = {**(target_doc or {}), "limit_op": limit_op, "limit": limit_value}
        ok = _compare(median(values), limit_op, limit_value)
        meets = ok if meets is None else (meets and ok)
    metrics: dict[str, Any] = {}
    for name in METRIC_UNITS:
        v = median([s.as_dict()[name] for s in samples[value]])
        r = median([s.as_dict()[name] for s in samples[reference]])
        metrics[name] = {"value": v, "reference": r, "ratio": v / r if r else None}
    return {
        "id": row_id,
        "title": title,
        "n": int(median([s.requests for s in samples[value]])),
        "unit": unit or METRIC_UNITS[metric],
        "measured": value,
        "reference": reference,
        "value": median(values),
        "reference_value": median(refs),
        "ratio": ratio,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rounds": len(ratios),
        "target": target_doc,
        "meets_target": meets,
        "samples": {"value": values, "reference": refs, "ratio": ratios},
        "metrics": metrics,
    }


def _compare(value: float, op: str, bound: float) -> bool:
    if op == ">=":
        return value >= bound
    if op == "<=":
        return value <= bound
    return value < bound


# --- fixtures ----------------------------------------------------------------------------


def _csr_pem(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(cn), x509.DNSName("node-1.internal")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _leaf(
    ca: BenchCA, cn: str, eku: x509.ObjectIdentifier, directory: Path, name: str
) -> tuple[Path, Path]:
    """A P-256 leaf signed by ``ca``: ``name.crt``, ``name.key`` (PKCS#8) in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(cn), x509.DNSName("localhost"), x509.IPAddress(_LOOPBACK)]
            ),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    crt, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return crt, key_path


_LOOPBACK = __import__("ipaddress").IPv4Address("127.0.0.1")


def populate(data_dir: Path, n: int) -> None:
    """Bootstrap a data dir in-process and insert ``n`` realistic certificate rows directly.

    Rows go through ``certctl.store.models.CertificateRecord`` (Core executemany, 5,000 a
    transaction); their PEMs are 64 real leaves of the data dir's own CA, reused round robin
    with unique ids, serials and names. Statuses: 2 % revoked, 2 % expired, 10 % expiring.
    """
    from sqlalchemy import Table, insert

    from certctl.pki import PROFILES, SubjectAltNames, common_name_dn, generate_private_key
    from certctl.pki import certs_to_pem as to_pem
    from certctl.server.bootstrap import bootstrap
    from certctl.server.config import load_config
    from certctl.services import issuers
    from certctl.store.models import CertificateRecord

    boot = bootstrap(load_config(None, {"data-dir": str(data_dir)}))
    services = boot.services
    try:
        ca = issuers.load_issuer(services, issuers.DEFAULT_ISSUER)
        now = datetime.now(UTC)
        pems = []
        for i in range(64):
            issued = ca.issue(
                generate_private_key().public_key(),
                common_name_dn(f"seed-{i}.example.com"),
                profile=PROFILES["server"],
                validity=timedelta(days=90),
                now=now,
                sans=SubjectAltNames.parse(dns=[f"seed-{i}.example.com"], ip=[]),
            )
            pems.append(to_pem([issued.certificate]).decode())
        base = time.time_ns() - n * 1_000
        table: Table = CertificateRecord.__table__  # type: ignore[assignment]
        batch: list[dict[str, Any]] = []
        for i in range(n):
            cn = f"host-{i:06d}.example.com"
            revoked = i % 50 == 0
            if i % 50 == 1:
                not_after = now - timedelta(days=1 + i % 30)
            elif i % 10 == 2:
                not_after = now + timedelta(days=1 + i % 29)
            else:
                not_after = now + timedelta(days=31 + i % 300)
            batch.append(
                {
                    "id": f"{base + i * 1_000:016x}{i:08x}",
                    "issuer_id": issuers.DEFAULT_ISSUER,
                    "serial": f"{0x4000000000000000 + i:x}",
                    "common_name": cn,
                    "subject": f"CN={cn}",
                    "sans": {"dns": [cn], "ip": []},
                    "profile": "server",
                    "status": "revoked" if revoked else "active",
                    "not_before": not_after - timedelta(days=90),
                    "not_after": not_after,
                    "certificate_pem": pems[i % len(pems)],
                    "wrapped_key": None,
                    "created_at": now - timedelta(seconds=n - i),
                    "created_by": "admin",
                    "revoked_at": now if revoked else None,
                    "revocation_reason": "keyCompromise" if revoked else None,
                    "renewed_from": None,
                }
            )
            if len(batch) == 5_000 or i == n - 1:
                with services.engine.begin() as conn:
                    conn.execute(insert(table), batch)
                batch = []
    finally:
        services.engine.dispose()


def refresh_cost_s(data_dir: Path) -> Callable[[], float]:
    """A callable timing one ``refresh_metrics`` (CPU seconds) against ``data_dir``'s store."""
    from certctl.server.bootstrap import bootstrap
    from certctl.server.config import load_config
    from certctl.server.periodic import refresh_metrics

    services = bootstrap(load_config(None, {"data-dir": str(data_dir)})).services

    def run() -> float:
        started = time.process_time()
        refresh_metrics(services)
        return time.process_time() - started

    return run


@dataclass
class Certctl:
    """One ``certctl serve`` and what a client needs to call it."""

    server: Server
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def key(self) -> str:
        return (self.data_dir / "admin-api-key").read_text().strip()

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"


def certctl_server(
    work: Path, name: str, data_dir: Path, extra: dict[str, Any] | None = None
) -> Certctl:
    """``certctl serve -c name.yml`` on a free loopback port (not started)."""
    port = free_port()
    config: dict[str, Any] = {"data-dir": str(data_dir), "listen": f"127.0.0.1:{port}"}
    config.update(extra or {})
    path = work / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    server = Server(
        name,
        [str(CERTCTL), "serve", "-c", str(path)],
        f"https://127.0.0.1:{port}/readyz",
        work / f"{name}.log",
        cafile=data_dir / "tls" / "ca.crt",
    )
    return Certctl(server, port, data_dir)


# cfssl's certificate store (certdb/sqlite migrations): what ``-db-config`` writes to.
CFSSL_CERTDB_SCHEMA = """
CREATE TABLE certificates (
  serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, ca_label blob,
  status blob NOT NULL, reason int, expiry timestamp, revoked_at timestamp, pem blob NOT NULL,
  issued_at timestamp, not_before timestamp, metadata text, sans text, common_name text,
  PRIMARY KEY (serial_number, authority_key_identifier));
CREATE TABLE ocsp_responses (
  serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, body blob NOT NULL,
  expiry timestamp, PRIMARY KEY (serial_number, authority_key_identifier));
"""


def cfssl_certdb_count(work: Path) -> int:
    """Certificates ``cfssl-certdb`` has stored so far."""
    with contextlib.closing(sqlite3.connect(work / "cfssl-certdb" / "certs.db")) as db:
        return int(db.execute("SELECT count(*) FROM certificates").fetchone()[0])


def cfssl_setup(work: Path, tls_dir: Path, *, certdb: bool = False) -> tuple[Server, int]:
    """``cfssl serve`` with a fresh P-256 CA (``cfssl gencert -initca``), HTTPS with certctl's
    own server certificate (same key type, same chain: the same handshake work).

    ``certdb``: cfssl also stores every certificate it signs (``-db-config``, SQLite in WAL
    mode with ``synchronous=FULL``, as certctl's store), the like-for-like reference for
    issuance that has to survive a restart.
    """
    if shutil.which("cfssl") is None:
        raise BenchError("cfssl not found: apt-get install -y golang-cfssl (make bench does)")
    directory = work / ("cfssl-certdb" if certdb else "cfssl")
    directory.mkdir()
    db_args: list[str] = []
    if certdb:
        database = directory / "certs.db"
        with contextlib.closing(sqlite3.connect(database)) as db:
            db.executescript(CFSSL_CERTDB_SCHEMA)
        source = f"file:{database}?_journal_mode=WAL&_synchronous=FULL"
        (directory / "db.json").write_text(json.dumps({"driver": "sqlite3", "data_source": source}))
        db_args = ["-db-config", str(directory / "db.json")]
    (directory / "ca-csr.json").write_text(
        json.dumps({"CN": "bench cfssl CA", "key": {"algo": "ecdsa", "size": 256}})
    )
    proc = subprocess.run(
        ["cfssl", "gencert", "-initca", str(directory / "ca-csr.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"cfssl gencert -initca: {proc.stderr[-500:]}")
    made = json.loads(proc.stdout)
    (directory / "ca.pem").write_text(made["cert"])
    (directory / "ca-key.pem").write_text(made["key"])
    (directory / "config.json").write_text(
        json.dumps(
            {
                "signing": {
                    "default": {
                        "expiry": "2160h",
                        "usages": ["signing", "digital signature", "server auth"],
                    }
                }
            }
        )
    )
    port = free_port()
    server = Server(
        directory.name,
        [
            "cfssl",
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            str(port),
            "-ca",
            str(directory / "ca.pem"),
            "-ca-key",
            str(directory / "ca-key.pem"),
            "-config",
            str(directory / "config.json"),
            "-tls-cert",
            str(tls_dir / "tls.crt"),
            "-tls-key",
            str(tls_dir / "tls.key"),
            *db_args,
        ],
        f"https://127.0.0.1:{port}/",
        work / f"{directory.name}.log",
        ready_status=None,
    )
    return server, port


def nginx_setup(work: Path, tls_dir: Path, client_ca: Path) -> tuple[Server, int, int]:
    """nginx (one process) with certctl's server certificate: a TLS port and an mTLS port."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise BenchError("nginx not found: apt-get install -y nginx-light (make bench does)")
    directory = work / "nginx"
    directory.mkdir()
    plain, mutual = free_port(), free_port()
    temps = "\n".join(
        f"  {kind}_temp_path {directory}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    tls = (
        f"ssl_certificate {tls_dir}/tls.crt; ssl_certificate_key {tls_dir}/tls.key;\n"
        "    ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;"
    )
    (directory / "nginx.conf").write_text(
        f"""worker_processes 1;
master_process off;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temps}
  server {{
    listen 127.0.0.1:{plain} ssl;
    {tls}
    location / {{ return 200 "ok\\n"; }}
  }}
  server {{
    listen 127.0.0.1:{mutual} ssl;
    {tls}
    ssl_client_certificate {client_ca}; ssl_verify_client on;
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""
    )
    server = Server(
        "nginx",
        [
            nginx,
            "-c",
            str(directory / "nginx.conf"),
            "-p",
            f"{directory}/",
            "-e",
            str(directory / "error.log"),
        ],
        f"https://127.0.0.1:{plain}/",
        work / "nginx.log",
    )
    return server, plain, mutual


def ensure_granian(install: bool) -> Path | None:
    """``bench/.venv-granian`` (never the project venv); created with pip when ``install``."""
    if GRANIAN.exists():
        return GRANIAN
    if not install:
        return None
    # The system python3, not this venv's: granian never enters the project's environment.
    python = shutil.which("python3") or "/usr/bin/python3"
    subprocess.run([python, "-m", "venv", str(GRANIAN_VENV)], check=True, timeout=120)
    proc = subprocess.run(
        [str(GRANIAN_VENV / "bin" / "pip"), "install", "--quiet", "granian"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0 or not GRANIAN.exists():
        raise BenchError(f"pip install granian into {GRANIAN_VENV}: {proc.stderr[-800:]}")
    return GRANIAN


def granian_server(
    work: Path, name: str, cert: Path, key: Path, extra: list[str] | None = None
) -> tuple[Server, int]:
    port = free_port()
    argv = [
        str(GRANIAN),
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--ssl-certificate",
        str(cert),
        "--ssl-keyfile",
        str(key),
        "--ssl-protocol-min",
        "tls1.2",
        "--no-ws",
        "--log-level",
        "warning",
        "--working-dir",
        str(BENCH_DIR),
        *(extra or []),
        "_asgi_hello:app",
    ]
    return Server(name, argv, f"https://127.0.0.1:{port}/", work / f"{name}.log"), port


def uvicorn_server(work: Path, cert: Path, key: Path) -> tuple[Server, int]:
    """Plain uvicorn (httptools, uvloop, Python ssl: what certctl runs) serving the same app."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(BENCH_DIR),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
        "_asgi_hello:app",
    ]
    return Server("uvicorn", argv, f"https://127.0.0.1:{port}/", work / "uvicorn.log"), port


# --- the load of one sample --------------------------------------------------------------


@dataclass(frozen=True)
class Loader:
    """Runs one sample: wrk / s_time for ``load_s`` seconds, or pyload in ``--quick``."""

    plan: ServerPlan
    lua: Path

    def http(
        self,
        server: Server,
        port: int,
        path: str,
        *,
        connections: int | None = None,
        method: str = "GET",
        body: Path | None = None,
        bearer: str | None = None,
    ) -> Callable[[], Load]:
        if self.plan.load_s <= 0:
            return lambda: pyload(
                server,
                f"127.0.0.1:{port}",
                path,
                requests=self.plan.quick_requests,
                method=method,
                body=body,
                bearer=bearer,
            )
        return lambda: wrk(
            server,
            f"https://127.0.0.1:{port}{path}",
            self.lua,
            seconds=self.plan.load_s,
            connections=connections or self.plan.connections,
            method=method,
            body=body,
            bearer=bearer,
        )

    def handshake(
        self, server: Server, port: int, cert: Path | None = None, key: Path | None = None
    ) -> Callable[[], Load]:
        if self.plan.load_s <= 0:
            return lambda: pyload(
                server,
                f"127.0.0.1:{port}",
                "/healthz",
                requests=self.plan.quick_requests // 2,
                new_connections=True,
                cert=cert,
                key=key,
            )
        return lambda: handshakes(
            server, f"127.0.0.1:{port}", seconds=self.plan.load_s, cert=cert, key=key
        )


def _split(
    loader: Loader,
    targets: list[Certctl],
    path: str,
    *,
    body: Path,
    bearer: str,
    connections: int | None = None,
) -> Callable[[], Load]:
    """POSTs spread over ``targets`` at once (several processes, one store)."""
    if loader.plan.load_s <= 0:

        def quick() -> Load:
            loads = [
                pyload(
                    c.server,
                    f"127.0.0.1:{c.port}",
                    path,
                    requests=loader.plan.quick_requests,
                    method="POST",
                    body=body,
                    bearer=bearer,
                )
                for c in targets
            ]
            return Load(
                sum(x.requests for x in loads),
                sum(x.seconds for x in loads),
                sum(x.cpu_s for x in loads),
                max(x.p50_us for x in loads),
                max(x.p99_us for x in loads),
                sum(x.rss_bytes for x in loads),
            )

        return quick
    return lambda: wrk_split(
        [(c.server, f"{c.url}{path}") for c in targets],
        loader.lua,
        seconds=loader.plan.load_s,
        connections=connections or loader.plan.connections,
        method="POST",
        body=body,
        bearer=bearer,
    )


def _group(
    loader: Loader, variants: dict[str, Callable[[], Load]], rounds: int
) -> dict[str, list[Load]]:
    group = [Variant(name, 1, run) for name, run in variants.items()]
    return interleave(group, rounds, warmup=group)


# --- the rows ----------------------------------------------------------------------------


def bench_servers(work: Path, plan: ServerPlan) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every server row; returns the rows and facts that are not ratios (ASGI-server checks)."""
    work = work / "servers"
    work.mkdir()
    lua = work / "report.lua"
    lua.write_text(WRK_LUA)
    loader = Loader(plan, lua)
    rows: list[dict[str, Any]] = []
    facts: dict[str, Any] = {}
    small, medium, large = plan.sizes
    with contextlib.ExitStack() as stack:

        def running(server: Server) -> Server:
            stack.callback(server.stop)
            return server

        # Fixtures: three stores with certificates inserted directly, one fresh for issuance.
        data = {size: work / f"data-{size}" for size in plan.sizes}
        started = time.perf_counter()
        for size, directory in data.items():
            populate(directory, size)
        facts["populate_s"] = time.perf_counter() - started
        client_ca = make_ca(work / "client-ca")
        client_crt, client_key = _leaf(
            client_ca, "bench-client", ExtendedKeyUsageOID.CLIENT_AUTH, work, "client"
        )

        issue = certctl_server(work, "certctl", work / "data-issue")
        mtls = certctl_server(
            work,
            "certctl-mtls",
            work / "data-issue",
            {"tls": {"client-auth": "required", "client-ca": str(client_ca.directory / "ca.crt")}},
        )
        mtls.server.client_cert = (client_crt, client_key)
        stores = {size: certctl_server(work, f"certctl-{size}", d) for size, d in data.items()}
        # The issuance store is bootstrapped by its first server; the others start beside it.
        running(issue.server).start()
        for c in [mtls, *stores.values()]:
            running(c.server).launch()
        for c in [mtls, *stores.values()]:
            c.server.wait_ready()
        cfssl, cfssl_port = cfssl_setup(work, issue.tls_dir)
        running(cfssl).start()
        cfssl_db, cfssl_db_port = cfssl_setup(work, issue.tls_dir, certdb=True)
        running(cfssl_db).start()
        nginx, nginx_port, nginx_mtls_port = nginx_setup(
            work, issue.tls_dir, client_ca.directory / "ca.crt"
        )
        running(nginx).start()

        # 1 + 2: issuance from a CSR and with server-side key generation vs cfssl.
        cn = "node-1.example.com"
        csr = _csr_pem(cn)
        bodies = {
            "certctl-csr": {"issuer": "default", "csr": csr},
            "cfssl-sign": {"certificate_request": csr},
            "certctl-keygen": {"issuer": "default", "common_name": cn, "dns_names": [cn]},
            "cfssl-newcert": {
                "request": {"CN": cn, "hosts": [cn], "key": {"algo": "ecdsa", "size": 256}}
            },
        }
        paths = {}
        for name, body in bodies.items():
            paths[name] = work / f"{name}.json"
            paths[name].write_bytes(load_json(body))
        _check_issuance(issue, cfssl_port, paths)
        _check_issuance(issue, cfssl_db_port, paths, only=("cfssl-sign",))
        if cfssl_certdb_count(work) != 1:
            raise BenchError("cfssl -db-config did not store the certificate it signed")
        s = _group(
            loader,
            {
                "certctl-csr": loader.http(
                    issue.server,
                    issue.port,
                    "/api/v1/certificates",
                    method="POST",
                    body=paths["certctl-csr"],
                    bearer=issue.key,
                ),
                "cfssl-sign": loader.http(
                    cfssl,
                    cfssl_port,
                    "/api/v1/cfssl/sign",
                    method="POST",
                    body=paths["cfssl-sign"],
                ),
                "cfssl-sign-certdb": loader.http(
                    cfssl_db,
                    cfssl_db_port,
                    "/api/v1/cfssl/sign",
                    method="POST",
                    body=paths["cfssl-sign"],
                ),
                "certctl-keygen": loader.http(
                    issue.server,
                    issue.port,
                    "/api/v1/certificates",
                    method="POST",
                    body=paths["certctl-keygen"],
                    bearer=issue.key,
                ),
                "cfssl-newcert": loader.http(
                    cfssl,
                    cfssl_port,
                    "/api/v1/cfssl/newcert",
                    method="POST",
                    body=paths["cfssl-newcert"],
                ),
            },
            plan.rounds,
        )
        rows.append(
            load_row(
                "api-issue-csr",
                "POST /api/v1/certificates {csr} (API key, persisted, P-256) vs cfssl /sign, req/s "
                "(issue 4: >= 0.8)",
                s,
                "certctl-csr",
                "cfssl-sign",
                metric="req_per_s",
                op=">=",
                target=1.0,
            )
        )
        rows.append(
            load_row(
                "api-issue-csr-cpu",
                "same, server CPU per request vs cfssl /sign",
                s,
                "certctl-csr",
                "cfssl-sign",
                metric="cpu_us_per_req",
                op="<=",
                target=1.0,
            )
        )
        stored = cfssl_certdb_count(work)
        if stored < sum(load.requests for load in s["cfssl-sign-certdb"]):
            raise BenchError(f"cfssl -db-config stored {stored} certificates, fewer than it signed")
        rows.append(
            load_row(
                "api-issue-csr-vs-certdb",
                "same, vs cfssl /sign storing each certificate (-db-config: SQLite WAL, "
                "synchronous FULL; certctl's store), req/s",
                s,
                "certctl-csr",
                "cfssl-sign-certdb",
                metric="req_per_s",
                op=None,
                target=None,
            )
        )
        rows.append(
            load_row(
                "api-issue-keygen",
                "POST /api/v1/certificates {common_name, dns_names} (server-side P-256 key) vs "
                "cfssl /newcert, req/s",
                s,
                "certctl-keygen",
                "cfssl-newcert",
                metric="req_per_s",
                op=">=",
                target=1.5,
            )
        )

        # 8: no --workers; what two processes on one SQLite WAL store give at best.
        second = certctl_server(work, "certctl-b", work / "data-issue")
        second.server.core = 1
        running(second.server).start()
        s = _group(
            loader,
            {
                "1-process": _split(
                    loader,
                    [issue],
                    "/api/v1/certificates",
                    body=paths["certctl-csr"],
                    bearer=issue.key,
                ),
                "2-processes": _split(
                    loader,
                    [issue, second],
                    "/api/v1/certificates",
                    body=paths["certctl-csr"],
                    bearer=issue.key,
                ),
            },
            plan.rounds,
        )
        second.server.stop()
        rows.append(
            load_row(
                "procs-2-sqlite",
                "POST /api/v1/certificates {csr}, req/s: two certctl serve processes (cores 0 "
                "and 1) on one SQLite WAL store vs one (core 0); load generators not pinned",
                s,
                "2-processes",
                "1-process",
                metric="req_per_s",
                op=None,
                target=None,
            )
        )

        # 3: authenticated GETs vs /healthz, server CPU per request.
        cert_id = _issued_id(issue)
        s = _group(
            loader,
            {
                "healthz": loader.http(issue.server, issue.port, "/healthz"),
                "whoami": loader.http(
                    issue.server, issue.port, "/api/v1/auth/whoami", bearer=issue.key
                ),
                "get-cert": loader.http(
                    issue.server, issue.port, f"/api/v1/certificates/{cert_id}", bearer=issue.key
                ),
            },
            plan.rounds,
        )
        rows.append(
            load_row(
                "api-auth-get-cpu",
                "GET /api/v1/auth/whoami (API key) vs GET /healthz, server CPU per request",
                s,
                "whoami",
                "healthz",
                metric="cpu_us_per_req",
                op="<=",
                target=1.10,
            )
        )
        rows.append(
            load_row(
                "api-get-cert-cpu",
                "GET /api/v1/certificates/{id} (API key) vs GET /healthz, server CPU per request",
                s,
                "get-cert",
                "healthz",
                metric="cpu_us_per_req",
                op=None,
                target=None,
            )
        )

        # 4: scrapes; 5: list p99; 7: RSS — one group over the three stores.
        variants: dict[str, Callable[[], Load]] = {}
        for size, c in stores.items():
            variants[f"scrape-{size}"] = loader.http(
                c.server, c.port, "/api/v1/metrics/prometheus", connections=1, bearer=c.key
            )
        for size in (small, large):
            c = stores[size]
            variants[f"list-{size}"] = loader.http(
                c.server, c.port, "/api/v1/certificates?limit=100", connections=1, bearer=c.key
            )
        s = _group(loader, variants, plan.rounds)
        for size, limit in ((medium, 10.0), (large, 5.0)):
            rows.append(
                load_row(
                    f"metrics-scrape-{size // 1000}k",
                    f"GET /api/v1/metrics/prometheus, {size:,} certificates stored, server CPU per "
                    f"scrape (ms) vs the same scrape at {small:,}",
                    s,
                    f"scrape-{size}",
                    f"scrape-{small}",
                    metric="cpu_us_per_req",
                    op=None,
                    target=None,
                    scale=1e-3,
                    unit="ms CPU/scrape",
                    limit=("<=" if size == large else "<", limit),
                )
            )
        rows.append(
            load_row(
                f"api-list-{large // 1000}k-p99",
                f"GET /api/v1/certificates?limit=100 p99 latency (1 client), {large:,} vs "
                f"{small:,} certificates",
                s,
                f"list-{large}",
                f"list-{small}",
                metric="p99_ms",
                op="<=",
                target=1.5,
            )
        )
        rows.append(
            load_row(
                f"rss-{large // 1000}k",
                f"RSS of certctl serve with {large:,} certificates (after list and scrape load) vs "
                f"{small:,}",
                s,
                f"list-{large}",
                f"list-{small}",
                metric="rss_mb",
                op=None,
                target=None,
                limit=("<=", 150.0),
            )
        )

        # The background aggregate behind the scrape (every 10 s), timed in this process.
        refresh = {size: refresh_cost_s(data[size]) for size in (small, large)}
        timed = interleave(
            [Variant(f"refresh-{size}", 1, run) for size, run in refresh.items()],
            plan.rounds,
            warmup=[Variant(f"refresh-{size}", 1, run) for size, run in refresh.items()],
        )
        row = _time_row(
            f"metrics-refresh-{large // 1000}k",
            f"background certificate-count refresh (every 10 s), {large:,} vs {small:,} "
            "certificates, CPU per refresh",
            timed,
            f"refresh-{large}",
            f"refresh-{small}",
        )
        row["cpu_share_of_core"] = row["value"] / 10.0
        rows.append(row)

        # 6: full and mutual TLS handshakes vs nginx, same certificate.
        mtls_port = mtls.port
        s = _group(
            loader,
            {
                "certctl": loader.handshake(issue.server, issue.port),
                "nginx": loader.handshake(nginx, nginx_port),
                "certctl-mtls": loader.handshake(mtls.server, mtls_port, client_crt, client_key),
                "nginx-mtls": loader.handshake(nginx, nginx_mtls_port, client_crt, client_key),
            },
            plan.rounds,
        )
        rows.append(
            load_row(
                "tls-handshake-cpu",
                "full TLS handshake (openssl s_time -new, P-256 certificate), server CPU per "
                "handshake vs nginx",
                s,
                "certctl",
                "nginx",
                metric="cpu_us_per_req",
                op="<=",
                target=1.2,
                unit="µs CPU/handshake",
            )
        )
        rows.append(
            load_row(
                "tls-mtls-handshake-cpu",
                "mutual TLS handshake (client certificate verified), server CPU per handshake vs "
                "nginx",
                s,
                "certctl-mtls",
                "nginx-mtls",
                metric="cpu_us_per_req",
                op="<=",
                target=1.2,
                unit="µs CPU/handshake",
            )
        )

        # 7: start-up to ready with the largest store vs cfssl serve's.
        rows.append(_startup_row(work, data[large], issue.tls_dir, plan))

        # ASGI servers: uvicorn (what certctl runs) vs granian, a trivial app on both.
        granian = ensure_granian(plan.install_granian)
        if granian is None:
            reason = f"{GRANIAN_VENV} missing (make bench installs it)"
            rows += [{"id": i, "skipped": reason} for i in ASGI_ROWS]
        else:
            cert, key = issue.tls_dir / "tls.crt", issue.tls_dir / "tls.key"
            uvi, uvi_port = uvicorn_server(work, cert, key)
            gra, gra_port = granian_server(work, "granian", cert, key)
            running(uvi).start()
            running(gra).start()
            s = _group(
                loader,
                {
                    "uvicorn-hs": loader.handshake(uvi, uvi_port),
                    "granian-hs": loader.handshake(gra, gra_port),
                    "uvicorn-get": loader.http(uvi, uvi_port, "/"),
                    "granian-get": loader.http(gra, gra_port, "/"),
                },
                plan.rounds,
            )
            rows.append(
                load_row(
                    "asgi-handshake-uvicorn-vs-granian",
                    "full TLS handshake, server CPU: uvicorn (Python ssl) vs granian (rustls), "
                    "trivial ASGI app",
                    s,
                    "uvicorn-hs",
                    "granian-hs",
                    metric="cpu_us_per_req",
                    op=None,
                    target=None,
                    unit="µs CPU/handshake",
                )
            )
            rows.append(
                load_row(
                    "asgi-get-uvicorn-vs-granian",
                    "keep-alive GET of a trivial ASGI app, req/s: uvicorn (httptools, uvloop) vs "
                    "granian",
                    s,
                    "uvicorn-get",
                    "granian-get",
                    metric="req_per_s",
                    op=None,
                    target=None,
                )
            )
            rows.append(
                load_row(
                    "asgi-get-cpu-uvicorn-vs-granian",
                    "same, server CPU per request",
                    s,
                    "uvicorn-get",
                    "granian-get",
                    metric="cpu_us_per_req",
                    op=None,
                    target=None,
                )
            )
            uvi.stop()
            gra.stop()
            facts["granian"] = granian_checks(work, client_ca, client_crt, client_key, cert, key)

        # 9: --workers 2 vs --workers 1, the same store and the same CSR issuance; servers and
        # load generator unpinned (two workers need both cores, wrk takes what is left).
        # 32 connections: the kernel spreads connections over the workers' sockets by hash,
        # and 8 kept-alive connections split 5/3 or 6/2 as often as 4/4.
        def workers_row(
            row_id: str, store: str, data_dir: Path, extra: dict[str, Any]
        ) -> dict[str, Any]:
            # The 1-worker server starts first: on a fresh store it bootstraps it (migrations,
            # admin key, KEK in data_dir), then both serve the same store.
            servers = [
                certctl_server(work, f"{row_id}-{n}", data_dir, {"workers": n, **extra})
                for n in (1, 2)
            ]
            for c in servers:
                c.server.core = None
                running(c.server).start()
            key = servers[0].key
            samples = _group(
                loader,
                {
                    f"workers-{n}": _split(
                        loader,
                        [c],
                        "/api/v1/certificates",
                        body=paths["certctl-csr"],
                        bearer=key,
                        connections=WORKERS_CONNECTIONS,
                    )
                    for n, c in zip((1, 2), servers, strict=True)
                },
                plan.rounds,
            )
            for c in servers:
                c.server.stop()
            return load_row(
                row_id,
                "POST /api/v1/certificates {csr}, req/s: certctl serve --workers 2 vs --workers 1 "
                f"({store}, nothing pinned, {WORKERS_CONNECTIONS} connections)",
                samples,
                "workers-2",
                "workers-1",
                metric="req_per_s",
                op=">=",
                target=1.7,
            )

        rows.append(workers_row("workers-2", "one SQLite WAL store", work / "data-issue", {}))
        # 9b: the same on PostgreSQL (durable settings: fsync on), a fresh database.
        with postgres_database(work) as url:
            rows.append(
                workers_row(
                    "workers-2-postgresql",
                    "one PostgreSQL 15 database",
                    work / "data-pg",
                    {"database-url": url},
                )
            )
    return rows, facts


ASGI_ROWS = (
    "asgi-handshake-uvicorn-vs-granian",
    "asgi-get-uvicorn-vs-granian",
    "asgi-get-cpu-uvicorn-vs-granian",
)


def _time_row(
    row_id: str, title: str, samples: dict[str, list[float]], value: str, reference: str
) -> dict[str, Any]:
    values, refs = samples[value], samples[reference]
    values = [max(v, 1e-4) for v in values]
    refs = [max(r, 1e-4) for r in refs]
    ratios = [v / r for v, r in zip(values, refs, strict=True)]
    return {
        "id": row_id,
        "title": title,
        "n": 1,
        "unit": "s",
        "measured": value,
        "reference": reference,
        "value": median(values),
        "reference_value": median(refs),
        "ratio": median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rounds": len(ratios),
        "target": None,
        "meets_target": None,
        "samples": {"value": values, "reference": refs, "ratio": ratios},
    }


def _startup_row(work: Path, data_dir: Path, tls_dir: Path, plan: ServerPlan) -> dict[str, Any]:
    """``certctl serve`` launch → /readyz 200 (largest store) vs ``cfssl serve`` → first reply."""
    certctl = certctl_server(work, "certctl-startup", data_dir)
    ref_dir = work / "startup-cfssl"
    ref_dir.mkdir()
    cf, _port = cfssl_setup(ref_dir, tls_dir)

    def once(server: Server) -> float:
        try:
            server.start()
            return server.launch_to_ready_s
        finally:
            server.stop()

    samples = interleave(
        [
            Variant("certctl", 1, lambda: once(certctl.server)),
            Variant("cfssl", 1, lambda: once(cf)),
        ],
        plan.rounds,
        warmup=[Variant("certctl", 1, lambda: once(certctl.server))],
    )
    row = _time_row(
        "startup-ready",
        f"certctl serve launch -> /readyz 200 ({plan.sizes[2]:,} certificates stored) vs cfssl "
        "serve launch -> first HTTPS reply",
        samples,
        "certctl",
        "cfssl",
    )
    row["target"] = {"limit_op": "<=", "limit": 1.0}
    row["meets_target"] = row["value"] <= 1.0
    return row


def _check_issuance(
    issue: Certctl, cfssl_port: int, paths: dict[str, Path], only: tuple[str, ...] = ()
) -> None:
    """One request of each kind (or of the kinds in ``only``), checked, before any timing."""
    ctx = ssl.create_default_context(cafile=str(issue.tls_dir / "ca.crt"))
    ctx.check_hostname = False
    auth = {"Authorization": f"Bearer {issue.key}"}
    for name, port, path, headers in (
        ("certctl-csr", issue.port, "/api/v1/certificates", auth),
        ("certctl-keygen", issue.port, "/api/v1/certificates", auth),
        ("cfssl-sign", cfssl_port, "/api/v1/cfssl/sign", {}),
        ("cfssl-newcert", cfssl_port, "/api/v1/cfssl/newcert", {}),
    ):
        if only and name not in only:
            continue
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        try:
            conn.request(
                "POST",
                path,
                body=paths[name].read_bytes(),
                headers={"Content-Type": "application/json", **headers},
            )
            response = conn.getresponse()
            data = json.loads(response.read())
        finally:
            conn.close()
        if response.status >= 300:
            raise BenchError(f"{name}: HTTP {response.status}: {data}")
        pem = data.get("certificate_pem") or data.get("result", {}).get("certificate")
        if not pem:
            raise BenchError(f"{name}: no certificate in the response")
        leaf = x509.load_pem_x509_certificate(pem.encode())
        if leaf.public_key().curve.name != "secp256r1":  # type: ignore[union-attr]
            raise BenchError(f"{name}: not a P-256 certificate")


def _issued_id(issue: Certctl) -> str:
    ctx = ssl.create_default_context(cafile=str(issue.tls_dir / "ca.crt"))
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", issue.port, context=ctx, timeout=30)
    try:
        conn.request(
            "GET", "/api/v1/certificates?limit=1", headers={"Authorization": f"Bearer {issue.key}"}
        )
        items = json.loads(conn.getresponse().read())["items"]
    finally:
        conn.close()
    if not items:
        raise BenchError("no certificate issued yet")
    cert_id: str = items[0]["id"]
    return cert_id


# --- granian: client certificates and reload ----------------------------------------------


def _peer_der(port: int, *, cert: Path | None = None, key: Path | None = None) -> bytes | None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw) as tls:
                return tls.getpeercert(binary_form=True)
    except OSError:
        return None


def granian_checks(
    work: Path, client_ca: BenchCA, client_crt: Path, client_key: Path, cert: Path, key: Path
) -> dict[str, Any]:
    """Does granian hand the client certificate to the app, and reload certificates live?"""
    facts: dict[str, Any] = {}
    # 1. mTLS: --ssl-ca + --ssl-client-verify, then ask the app what its scope holds.
    server, port = granian_server(
        work,
        "granian-mtls",
        cert,
        key,
        ["--ssl-ca", str(client_ca.directory / "ca.crt"), "--ssl-client-verify"],
    )
    server.ready_status = None
    server.ready_url = f"https://127.0.0.1:{port}/"
    try:
        server.launch()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(client_crt), str(client_key))
        deadline = time.perf_counter() + 20
        extensions: Any = None
        while time.perf_counter() < deadline and extensions is None:
            server.check_alive()
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
                conn.request("GET", "/tls")
                extensions = json.loads(conn.getresponse().read())
                conn.close()
            except (OSError, ValueError):
                time.sleep(0.05)
        facts["mtls_handshake_ok"] = extensions is not None
        facts["scope_extensions"] = extensions
        facts["exposes_client_cert"] = bool(extensions and "tls" in extensions)
        facts["rejects_client_without_cert"] = not _answers_without_cert(port)
    finally:
        server.stop()
    # 2. reload: replace the files, SIGHUP (granian's reload signal), watch both connections.
    directory = work / "granian-reload"
    directory.mkdir()
    shutil.copy(cert, directory / "tls.crt")
    shutil.copy(key, directory / "tls.key")
    server, port = granian_server(
        work, "granian-reload", directory / "tls.crt", directory / "tls.key"
    )
    try:
        server.start()
        before = _peer_der(port)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        keep = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        keep.request("GET", "/")
        keep.getresponse().read()
        new_crt, new_key = _leaf(
            client_ca, "reloaded", ExtendedKeyUsageOID.SERVER_AUTH, directory, "new"
        )
        os.replace(new_crt, directory / "tls.crt")
        os.replace(new_key, directory / "tls.key")
        time.sleep(1)
        facts["new_cert_without_signal"] = _peer_der(port) not in (before, None)
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.perf_counter() + 15
        after = before
        while time.perf_counter() < deadline and after in (before, None):
            time.sleep(0.2)
            after = _peer_der(port)
        facts["new_cert_after_sighup"] = after not in (before, None)
        # The old worker is stopped after the new one is up: ask on the kept-alive
        # connection right away and again once the old worker has had time to exit.
        facts["keepalive_survives_sighup"] = True
        for wait_s in (0.0, 3.0):
            time.sleep(wait_s)
            try:
                keep.request("GET", "/")
                keep.getresponse().read()
            except (OSError, http.client.HTTPException):
                facts["keepalive_survives_sighup"] = False
                break
        keep.close()
    finally:
        server.stop()
    return facts


def _answers_without_cert(port: int) -> bool:
    """True when a client without a certificate gets an HTTP answer."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        conn.request("GET", "/")
        conn.getresponse().read()
        conn.close()
        return True
    except (OSError, http.client.HTTPException):
        return False
