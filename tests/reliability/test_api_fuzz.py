"""schemathesis against the live OpenAPI document of the in-process app, as admin and as viewer.

Every operation of ``/api/v1/openapi.json`` gets positive and negative generated requests
(hypothesis, derandomized: the same requests on every run). Each response must be below 500
and conform to the document: documented status code, documented content type, body valid
against the response schema, documented headers. The SQLite integrity check runs afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import bearer
from tests.reliability.conftest import RelApp, running_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Per operation and generation mode; operations without parameters exhaust sooner.
EXAMPLES = {"admin": 30, "viewer": 24}
MIN_REQUESTS = {"admin": 900, "viewer": 900}
MIN_TOTAL_REQUESTS = 2000


@dataclass
class Tally:
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: int = 0

    def add(self, status: int) -> None:
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500:
            self.server_errors += 1


TALLIES: dict[str, Tally] = {}


@dataclass
class FuzzWorld:
    app: RelApp
    keys: dict[str, str]  # role → key
    path_values: dict[str, dict[str, str]]  # path template → real path parameters


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[FuzzWorld]:
    data_dir = tmp_path_factory.mktemp("api-fuzz") / "data"
    with running_app(data_dir, sqlite_template) as app:
        keys = {"admin": app.admin_key}
        for role in ("viewer",):
            app.ok(
                "POST",
                "/api/v1/auth/actors",
                201,
                json={"id": f"fz-{role}", "roles": [f"r-{role}"]},
            )
            keys[role] = app.ok(
                "POST", "/api/v1/auth/apikeys", 201, json={"actor_id": f"fz-{role}"}
            )["key_value"]
        # Objects the generated requests can hit besides random (404) ones.
        app.ok(
            "POST", "/api/v1/auth/roles", 201, json={"id": "fz-role", "permissions": ["cert.read"]}
        )
        app.ok("POST", "/api/v1/auth/actors", 201, json={"id": "fz-actor", "roles": ["fz-role"]})
        key = app.ok("POST", "/api/v1/auth/apikeys", 201, json={"actor_id": "fz-actor"})
        cert = app.ok("POST", "/api/v1/certificates", 201, json={"common_name": "fz.example.com"})
        doc = {"apiVersion": "certctl.io/v1", "kind": "TLSService", "metadata": {"name": "fz-svc"}}
        app.ok("PUT", "/api/v1/services/fz-svc", 201, json=doc)
        client = app.ok(
            "POST",
            "/api/v1/services/fz-svc/clients",
            201,
            json={"certificate_pem": cert["certificate_pem"]},
        )["items"][0]
        service = {"name": "fz-svc"}
        path_values = {
            "/api/v1/auth/roles/{id}": {"id": "fz-role"},
            "/api/v1/auth/actors/{id}": {"id": "fz-actor"},
            "/api/v1/auth/apikeys/{id}": {"id": key["id"]},
            "/api/v1/issuers/{id}": {"id": "default"},
            "/api/v1/issuers/{id}/ca.pem": {"id": "default"},
            "/api/v1/issuers/{id}/ca.der": {"id": "default"},
            "/api/v1/issuers/{id}/crl": {"id": "default"},
            "/api/v1/issuers/{id}/revoke": {"id": "default"},
            "/api/v1/certificates/{id}": {"id": cert["id"]},
            "/api/v1/certificates/{id}/revoke": {"id": cert["id"]},
            "/api/v1/certificates/{id}/renew": {"id": cert["id"]},
            "/api/v1/services/{name}": service,
            "/api/v1/services/{name}/renew": service,
            "/api/v1/services/{name}/retired-ca": service,
            "/api/v1/services/{name}/clients": service,
            "/api/v1/services/{name}/clients/{fingerprint}": {
                **service,
                "fingerprint": client["fingerprint"],
            },
            "/api/v1/services/{name}/outputs/{output}": service,
        }
        yield FuzzWorld(app, keys, path_values)


def _strategy(operation: Any, mode: Any, path_values: dict[str, dict[str, str]]) -> Any:
    """Generated requests; half of them aimed at existing objects when the path names one."""
    generated = operation.as_strategy(generation_mode=mode)
    real = path_values.get(operation.path)
    if real is None:
        return generated
    return st.one_of(generated, operation.as_strategy(generation_mode=mode, path_parameters=real))


def _fuzz(
    operation: Any,
    mode: Any,
    path_values: dict[str, dict[str, str]],
    key: str,
    examples: int,
    tally: Tally,
    failures: list[str],
) -> None:
    """Send ``examples`` generated requests to ``operation``; collect failed checks."""

    @given(case=_strategy(operation, mode, path_values))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(headers=bearer(key))
        tally.add(response.status_code)
        try:
            case.validate_response(response, checks=CHECKS, headers=bearer(key))
        except FailureGroup as exc:  # collect them all, fail once
            failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")

    try:
        run()
    except Unsatisfiable:
        # Negative mode on an operation with no parameter and no body: nothing to break.
        assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label


@pytest.mark.parametrize("role", ["admin", "viewer"])
def test_schemathesis(role: str, world: FuzzWorld) -> None:
    key = world.keys[role]
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", world.app.app)
    # The key is ours to send; unauthenticated requests are the authorization matrix's job.
    schema.config.generation.update(with_security_parameters=False)
    tally = TALLIES.setdefault(role, Tally())
    failures: list[str] = []
    started = time.monotonic()
    # Ok or Err; .ok() raises on an operation schemathesis could not read.
    operations = [cast(Any, result).ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40
    # Deletions last, so the other operations still find the objects.
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _fuzz(operation, mode, world.path_values, key, EXAMPLES[role], tally, failures)
    elapsed = time.monotonic() - started
    print(f"\n{role}: {tally.requests} requests in {elapsed:.1f} s, statuses {tally.statuses}")
    assert not failures, f"{len(failures)} failing cases:\n" + "\n\n".join(failures[:10])
    assert tally.server_errors == 0
    assert tally.requests >= MIN_REQUESTS[role]
    if len(TALLIES) == 2:  # both roles ran in this session
        assert sum(t.requests for t in TALLIES.values()) >= MIN_TOTAL_REQUESTS
    assert world.app.integrity_check() == "ok"
