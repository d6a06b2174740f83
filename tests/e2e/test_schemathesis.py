"""The schemathesis CLI against a real ``certctl serve``: generated requests, checked responses.

``schemathesis run`` loads ``/api/v1/openapi.json`` over HTTPS (verified against the server's
CA) and sends, per operation, schema-valid and schema-violating requests (coverage and
fuzzing phases, fixed seed) as an administrator, as a caller
holding only ``cert.read`` and without credentials on SQLite, as the administrator again on
PostgreSQL. Every response must be below 500 and be what the document says: a documented
status, content type, headers and body. A traceback in the server's log fails the test too,
and so does a damaged SQLite file afterwards.

tests/reliability/test_api_fuzz.py fuzzes the in-process app (no TLS, no uvicorn); this one
goes through everything a client goes through. The stateful phase and the checks of what a
request should be accepted or refused for are left out: see docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests._stores import PostgresCluster
from tests._tools import require, run
from tests.e2e.conftest import CertctlServer, StartServer

pytestmark = pytest.mark.e2e

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
SEED = 1
# Revoking a key may revoke the administrator's own (the listed keys name it): that operation
# runs alone, after everything else.
SELF_REVOKING = "delete_revoke_apikey"


def _statuses(report: Path) -> Counter[int]:
    """The status of every response in a schemathesis NDJSON report."""
    found: Counter[int] = Counter()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            status = node.get("status_code")
            if isinstance(status, int) and "headers" in node:
                found[status] += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for line in report.read_text().splitlines():
        walk(json.loads(line))
    return found


def _schemathesis(
    server: CertctlServer, work: Path, name: str, key: str | None, examples: int, *args: str
) -> Counter[int]:
    """One bounded ``schemathesis run`` as ``key``; assert it found nothing."""
    report = work / f"{name}.ndjson"
    argv = [
        require("schemathesis"),
        "run",
        f"{server.url}/api/v1/openapi.json",
        "--tls-verify",
        str(server.ca),
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "coverage,fuzzing",
        "--max-examples",
        str(examples),
        "--seed",
        str(SEED),
        # No example database: only the seed decides what is generated. Not every request:
        # ids the server answered with (random) are reused, so paths and counts vary a little
        # between runs. Left on: without them the runs reach existing resources half as often
        # and missed the PostgreSQL cursor 500 (docs/reliability.md).
        "--generation-database",
        "none",
        # One worker: the operations run one after another in the same order on every run,
        # so the server's state (what earlier requests created or deleted) is nearly the same.
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        "--output-truncate",
        "true",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        *args,
    ]
    if key is not None:
        argv += ["--header", f"Authorization: Bearer {key}"]
    # Nothing but the server: no proxy from the environment for 127.0.0.1.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    result = run(*argv, cwd=work, timeout=120, env=env | {"NO_PROXY": "127.0.0.1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis as {name}:\n{output[-12000:]}"
    statuses = _statuses(report)
    print(f"\n{name}: {sum(statuses.values())} responses {dict(sorted(statuses.items()))}")
    return statuses


def _with_reader(server: CertctlServer) -> str:
    """A certificate to find, and the key of an actor holding only ``cert.read``."""
    with server.client(server.admin_key) as admin:
        for path, body in (
            ("/api/v1/auth/roles", {"id": "cert-reader", "permissions": ["cert.read"]}),
            ("/api/v1/auth/actors", {"id": "reader", "roles": ["cert-reader"]}),
            ("/api/v1/certificates", {"common_name": "fuzz.example.com"}),
        ):
            assert admin.post(path, json=body).status_code == 201
        reader = admin.post("/api/v1/auth/apikeys", json={"actor_id": "reader"})
        assert reader.status_code == 201, reader.text
    key: str = reader.json()["key_value"]
    return key


def _as_admin(server: CertctlServer, work: Path) -> Counter[int]:
    """The administrator's runs; they delete what they find, so they come last."""
    seen = _schemathesis(
        server, work, "admin", server.admin_key, 30, "--exclude-operation-id", SELF_REVOKING
    )
    # The runs reached the handlers: successes, refusals of each kind, not only 4xx.
    assert sum(seen.values()) >= 1500, seen
    assert {200, 201, 400, 404, 409} <= set(seen), seen
    revoking = _schemathesis(
        server, work, "admin-revoke", server.admin_key, 25, "--include-operation-id", SELF_REVOKING
    )
    assert sum(revoking.values()) > 0, revoking
    return seen + revoking


def _stopped_cleanly(server: CertctlServer) -> None:
    assert server.stop() == 0
    _, stderr = server.logs()
    assert "Traceback" not in stderr, stderr[-8000:]


# Requests without a key or with a wrong one are part of the runs: the throttle of failed
# authentications (auth.failure-limit) would answer 429 to the rest of them.
# With the OCSP responder on, so that its routes are fuzzed past their 404.
NO_THROTTLE = {"auth": {"failure-limit": 0}, "ocsp": {"enabled": True}}


def test_schemathesis_finds_no_server_error_nor_undocumented_response(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(config=NO_THROTTLE)
    reader = _with_reader(server)
    work = tmp_path / "schemathesis"
    work.mkdir()

    reader_seen = _schemathesis(server, work, "reader", reader, 8)
    assert reader_seen[403] >= 500, reader_seen
    assert reader_seen[200] > 0, reader_seen  # its own certificate reads, the public routes
    anonymous_seen = _schemathesis(server, work, "anonymous", None, 4)
    assert anonymous_seen[401] >= 500, anonymous_seen
    assert anonymous_seen[200] > 0, anonymous_seen
    admin_seen = _as_admin(server, work)
    everything = admin_seen + reader_seen + anonymous_seen
    assert not [s for s in everything if s >= 500], everything

    _stopped_cleanly(server)
    with sqlite3.connect(server.data_dir / "certctl.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_schemathesis_as_admin_on_postgresql(
    start_server: StartServer, tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    """The administrator's runs on PostgreSQL, whose types are narrower than SQLite's.

    They found ``GET /api/v1/audit?cursor=975541824920628737`` answering 500 there (32-bit
    ids), 200 on SQLite. Authentication and refusals before the store are the same on both:
    the other callers run on SQLite only.
    """
    url = postgres_cluster.url(postgres_cluster.create_database())
    server = start_server(config={**NO_THROTTLE, "database-url": url})
    _with_reader(server)
    work = tmp_path / "schemathesis"
    work.mkdir()
    seen = _as_admin(server, work)
    assert not [s for s in seen if s >= 500], seen
    _stopped_cleanly(server)
