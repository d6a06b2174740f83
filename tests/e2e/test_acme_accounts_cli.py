"""``certctl acme accounts list|get|deactivate`` against a real ``certctl serve`` with ACME on.

The accounts are made by certbot's ``acme`` library over the server's TLS listener; after the
operator's ``deactivate`` that client's next new-order is refused ``unauthorized``.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import josepy as jose
import pytest
from acme import client, crypto_util, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests._tools import failed, free_port, ok
from tests.e2e.conftest import CertctlServer, StartServer

pytestmark = pytest.mark.e2e

ISSUER = "acme-ca"


def _acme_server(start_server: StartServer) -> CertctlServer:
    first = start_server()
    with first.client(first.admin_key) as api:
        r = api.post("/api/v1/issuers", json={"id": ISSUER, "common_name": "ACME CA"})
        assert r.status_code == 201, r.text
    first.stop()
    acme = {"enabled": True, "issuer": ISSUER, "http-01-port": free_port()}
    return start_server(data_dir=first.data_dir, config={"acme": acme})


def _certctl(server: CertctlServer, *args: str) -> subprocess.CompletedProcess[str]:
    return server.cli(*args)


def _client(server: CertctlServer) -> tuple[client.ClientV2, str]:
    """A client with a new account, and the account's id."""
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    # verify_ssl is handed to requests as its verify: a CA file's path trusts the server's CA.
    net = client.ClientNetwork(key, alg=jose.ES256, verify_ssl=str(server.ca))  # type: ignore[arg-type]
    directory = client.ClientV2.get_directory(f"{server.url}/acme/directory", net)
    acme_client = client.ClientV2(directory, net)
    regr = acme_client.new_account(
        messages.NewRegistration.from_data(
            email="ops@example.internal", terms_of_service_agreed=True
        )
    )
    return acme_client, regr.uri.rsplit("/", 1)[1]


def _new_order(acme_client: client.ClientV2) -> Any:
    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return acme_client.new_order(crypto_util.make_csr(key_pem, ["localhost"]))


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stderr.startswith("certctl: error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_an_operator_lists_and_deactivates_an_account_with_the_cli(
    start_server: StartServer,
) -> None:
    server = _acme_server(start_server)
    assert json.loads(ok(_certctl(server, "acme", "accounts", "list")).stdout) == {
        "items": [],
        "next_cursor": None,
    }
    assert (
        "no ACME accounts" in ok(_certctl(server, "acme", "accounts", "list", "-o", "table")).stdout
    )
    (cut, cut_id), (kept, kept_id) = _client(server), _client(server)
    assert _new_order(cut).body.status == messages.STATUS_PENDING

    listed = json.loads(ok(_certctl(server, "acme", "accounts", "list")).stdout)
    assert [a["id"] for a in listed["items"]] == [kept_id, cut_id]
    table = ok(_certctl(server, "acme", "accounts", "list", "-o", "table")).stdout
    header, *rows = table.splitlines()
    assert header.split() == [
        "ID", "STATUS", "CONTACT", "EAB", "KEY", "ORDERS", "CERTIFICATES", "CREATED",
        "DEACTIVATED",
    ]  # fmt: skip
    assert rows[1].split()[:3] == [cut_id, "valid", "mailto:ops@example.internal"]
    assert rows[1].split()[-1] == "-"  # valid: not deactivated
    paged = ok(_certctl(server, "acme", "accounts", "list", "--limit", "1", "-o", "table"))
    assert f"acme accounts list --limit 1 -o table --cursor {kept_id}" in paged.stdout
    shown = json.loads(ok(_certctl(server, "acme", "accounts", "get", cut_id)).stdout)
    assert (shown["status"], shown["orders"], shown["certificates"]) == ("valid", 1, 0)

    done = ok(_certctl(server, "acme", "accounts", "deactivate", cut_id))
    assert json.loads(done.stdout)["status"] == "deactivated"
    assert f"ACME account {cut_id} is deactivated" in done.stderr
    with pytest.raises(messages.Error) as info:
        _new_order(cut)
    assert info.value.typ == "urn:ietf:params:acme:error:unauthorized", info.value
    assert _new_order(kept).body.status == messages.STATUS_PENDING
    again = ok(_certctl(server, "acme", "accounts", "deactivate", cut_id))
    assert json.loads(again.stdout) == json.loads(done.stdout)
    off = json.loads(
        ok(_certctl(server, "acme", "accounts", "list", "--status", "deactivated")).stdout
    )
    assert [a["id"] for a in off["items"]] == [cut_id]
    when = json.loads(done.stdout)["deactivated_at"]
    assert shown["deactivated_at"] is None
    assert when is not None
    off_table = ok(
        _certctl(server, "acme", "accounts", "list", "--status", "deactivated", "-o", "table")
    ).stdout.splitlines()
    # The time as the CREATED column shows it: 2026-12-06 01:45 UTC.
    assert off_table[1].split()[-3:] == [when[:10], when[11:16], "UTC"], off_table

    # Bad input: one line, exit 2 for usage, 1 for what the server refused.
    usage = _certctl(server, "acme", "accounts", "list", "--status", "deactivatd")
    assert usage.returncode == 2, usage.stderr
    assert "did you mean deactivated?" in usage.stderr
    empty = _certctl(server, "acme", "accounts", "list", "--status", "")
    assert empty.returncode == 2, empty.stderr
    missing = failed(_certctl(server, "acme", "accounts", "deactivate", "0" * 24))
    assert missing.returncode == 1
    assert "not found" in _one_line_error(missing)
    assert _certctl(server, "acme", "accounts", "get", " ").returncode == 2
    alone = _certctl(server, "acme", "accounts", "deactivate", kept_id, "--reason", "superseded")
    assert alone.returncode == 2, alone.stderr
    assert "--revoke-certificates" in alone.stderr
    assert (
        json.loads(ok(_certctl(server, "acme", "accounts", "get", kept_id)).stdout)["status"]
        == "valid"
    )
    with_certs = ok(
        _certctl(
            server, "acme", "accounts", "deactivate", kept_id, "--revoke-certificates",
            "--reason", "cessationOfOperation",
        )
    )  # fmt: skip
    assert json.loads(with_certs.stdout)["revoked_certificates"] == []
    assert "deactivated: its next request is refused; 0 certificate(s) revoked" in with_certs.stderr
    assert server.admin_key not in done.stdout + done.stderr + missing.stderr
