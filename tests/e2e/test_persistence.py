"""Everything survives a restart on the same data directory; the admin key is shown once."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import StartServer, assert_no_secrets, key_traces, secret_of

pytestmark = pytest.mark.e2e

COUNT = 100


def list_all(client: httpx.Client, limit: int = 30) -> list[dict[str, Any]]:
    """Every certificate, following ``next_cursor``."""
    items: list[dict[str, Any]] = []
    params: dict[str, str | int] = {"limit": limit}
    for _ in range(COUNT // limit + 5):
        response = client.get("/api/v1/certificates", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]
    raise AssertionError(f"pagination did not end after {len(items)} items")


def test_restart_keeps_certificates_and_admin_key(start_server: StartServer) -> None:
    first = start_server()
    admin_key = first.admin_key
    assert admin_key
    assert f"  {admin_key}\n" in first.logs()[0]
    issued: dict[str, str] = {}
    key_pems: list[str] = []
    with first.client(admin_key) as client:
        for n in range(COUNT):
            response = client.post(
                "/api/v1/certificates",
                json={
                    "issuer": "default",
                    "common_name": f"svc-{n}.example.com",
                    "dns_names": [f"svc-{n}.example.com"],
                    "validity": "30D",
                },
            )
            assert response.status_code == 201, response.text
            body = response.json()
            issued[body["id"]] = body["serial"]
            key_pems.append(body["private_key_pem"])
        before = list_all(client)
    assert len(issued) == COUNT
    assert {c["id"]: c["serial"] for c in before} == issued
    assert all("private_key_pem" not in c for c in before)
    # A graceful stop is the normal end of a server: exit 0, as with --workers above 1. Before,
    # one process died of the SIGTERM uvicorn re-raises (-15): `make run` said "Terminated".
    assert first.stop() == 0
    assert "Finished server process" in first.logs()[1]

    second = start_server(data_dir=first.data_dir)
    out, _ = second.logs()
    assert secret_of(admin_key) not in out
    assert "admin-api-key" in out
    assert second.admin_key == admin_key  # the file is unchanged
    with second.client(admin_key) as client:
        whoami = client.get("/api/v1/auth/whoami")
        assert whoami.status_code == 200, whoami.text
        assert whoami.json()["actor_id"] == "admin"
        after = list_all(client)
    assert {c["id"]: c["serial"] for c in after} == issued
    assert len(after) == COUNT

    secrets: list[str | bytes] = [admin_key, secret_of(admin_key)]
    secrets += [trace for pem in key_pems for trace in key_traces(pem)]
    stored = [c["serial"] for c in after]
    # Ctrl-C too (SIGINT): before, "certctl: error: interrupted" and exit 130.
    second.proc.send_signal(signal.SIGINT)
    second.exit_code = second.proc.wait(timeout=30)
    assert second.exit_code == 0
    assert "Finished server process" in second.logs()[1]
    assert "certctl: error" not in second.logs()[1]
    assert_no_secrets(first, secrets, first_start=True, stored=stored)
    assert_no_secrets(second, secrets, first_start=False, stored=stored)
