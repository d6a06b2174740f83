"""sslyze against a real ``certctl serve``: protocols, suites, renegotiation, compression, chain.

sslyze pins ``cryptography<47``, so it lives in its own venv (``.venv-sslyze`` at the repo
root, created on first use and reused). Each scan connects to 127.0.0.1 with the host name
``certctl-server`` (sslyze's ``host{ip}`` target form), so the certificate check is the chain
to the server's CA *and* the name. Negative twins: the same chain under another name fails,
and the TLS-1.3-only server refuses TLS 1.2.

The default server also handles the secrets the hygiene scan looks for in its log and database:
API keys (minted, presented wrong), private keys (generated, imported) and a PKCS#12 password
(a managed service delivering ``tls.p12``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from certctl.pki import (
    KeyType,
    common_name_dn,
    create_root_ca,
    generate_private_key,
    key_to_pem,
    load_material,
)
from tests.e2e.conftest import CertctlServer, launch
from tests.reliability.conftest import LEDGER, Ledger

# Longer than the suite's 300 s: the first test builds sslyze's venv (two steps of up to
# 300 s each with pip, where uv is missing) before its own scans of up to 120 s.
pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
SSLYZE_VENV = REPO / ".venv-sslyze"
SSLYZE = SSLYZE_VENV / "bin" / "sslyze"
SERVER_NAME = "certctl-server"
PROTOCOLS = {
    "ssl_2_0_cipher_suites": "SSL 2.0",
    "ssl_3_0_cipher_suites": "SSL 3.0",
    "tls_1_0_cipher_suites": "TLS 1.0",
    "tls_1_1_cipher_suites": "TLS 1.1",
    "tls_1_2_cipher_suites": "TLS 1.2",
    "tls_1_3_cipher_suites": "TLS 1.3",
}
WEAK_SUITE_MARKERS = ("NULL", "EXPORT", "RC4", "3DES", "DES_CBC", "_anon_", "MD5")
PROTOCOL_FLAGS = ["--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3"]
FIGURES: dict[str, Any] = {}


def _uv() -> str | None:
    """uv where the Makefile finds it: on PATH, else the one it installs in .tools."""
    local = REPO / ".tools" / "bin" / "uv"
    return shutil.which("uv") or (str(local) if local.is_file() else None)


@pytest.fixture(scope="session")
def sslyze() -> Path:
    """sslyze in its own venv (it pins cryptography<47); built once, then reused.

    With uv (which ``make`` installs) the build takes ~2 s; venv + pip took 9-24 s (ensurepip,
    then pip's resolver and downloads), paid by every run of a clean clone (CI).
    """
    if not SSLYZE.is_file():
        python = getattr(sys, "_base_executable", sys.executable)
        requirement = "sslyze>=6.1,<7"
        uv = _uv()
        if uv is not None:
            shutil.rmtree(SSLYZE_VENV, ignore_errors=True)  # a build that failed half-way
            steps = [
                [uv, "venv", "--quiet", "--python", python, str(SSLYZE_VENV)],
                [uv, "pip", "install", "--quiet", "--python", str(SSLYZE_VENV), requirement],
            ]
        else:
            steps = [
                [python, "-m", "venv", str(SSLYZE_VENV)],
                [str(SSLYZE_VENV / "bin" / "pip"), "install", "--quiet", requirement],
            ]
        for argv in steps:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
            if proc.returncode != 0:
                pytest.fail(
                    f"{' '.join(argv[:3])} failed (python3-venv and PyPI needed):\n"
                    f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}",
                    pytrace=False,
                )
    return SSLYZE


def scan(
    sslyze: Path, server: CertctlServer, out: Path, *flags: str, name: str = SERVER_NAME
) -> Any:
    """Run sslyze with ``flags`` against ``server`` reached as ``name``; the one result."""
    argv = [str(sslyze), "--quiet", f"--json_out={out}", "--mozilla_config=disable", *flags]
    argv.append(f"{name}:{server.port}{{127.0.0.1}}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, f"sslyze exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out.read_text())["server_scan_results"][0]
    assert result["connectivity_status"] == "COMPLETED", result["connectivity_error_trace"]
    assert result["scan_status"] == "COMPLETED"
    for command, attempt in result["scan_result"].items():
        if attempt["status"] != "NOT_SCHEDULED":
            assert attempt["status"] == "COMPLETED", (command, attempt)
    return result["scan_result"]


def accepted(result: Any) -> dict[str, list[str]]:
    """Protocol → names of the accepted cipher suites (scanned protocols only)."""
    return {
        label: [s["cipher_suite"]["name"] for s in result[key]["result"]["accepted_cipher_suites"]]
        for key, label in PROTOCOLS.items()
        if result[key]["status"] == "COMPLETED"
    }


def _register_server(server: CertctlServer) -> None:
    LEDGER.api_key(server.admin_key, "admin key of a certctl serve")
    LEDGER.log_banners[server.stdout] = f"  {server.admin_key}\n"
    LEDGER.log_files += [server.stdout, server.stderr]
    LEDGER.sqlite_files.append(server.data_dir / "certctl.db")
    LEDGER.private_key((server.data_dir / "tls" / "tls.key").read_text(), "server TLS key")


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertctlServer]:
    with launch(tmp_path_factory.mktemp("tls-default")) as server:
        _register_server(server)
        yield server


@pytest.fixture(scope="module")
def tls13_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertctlServer]:
    with launch(
        tmp_path_factory.mktemp("tls-13"), config={"tls": {"min-version": "1.3"}}
    ) as server:
        _register_server(server)
        yield server


def test_default_server_offers_only_modern_tls(
    sslyze: Path, default_server: CertctlServer, tmp_path: Path
) -> None:
    flags = [*PROTOCOL_FLAGS, "--reneg", "--compression", "--certinfo"]
    ca = f"--certinfo_ca_file={default_server.ca}"
    result = scan(sslyze, default_server, tmp_path / "default.json", *flags, ca)
    suites = accepted(result)
    FIGURES["default"] = suites
    for old in ("SSL 2.0", "SSL 3.0", "TLS 1.0", "TLS 1.1"):
        assert suites[old] == [], f"{old} accepted: {suites[old]}"
    assert suites["TLS 1.2"], "TLS 1.2 refused by the default (min-version 1.2) server"
    assert suites["TLS 1.3"]
    for protocol, names in suites.items():
        weak = [n for n in names if any(m in n for m in WEAK_SUITE_MARKERS)]
        assert not weak, f"{protocol}: weak suites {weak}"
    # Mozilla "intermediate": forward secrecy and AEAD for every TLS 1.2 suite.
    assert all(n.startswith("TLS_ECDHE_") for n in suites["TLS 1.2"]), suites["TLS 1.2"]
    assert all(("GCM" in n or "CHACHA20" in n) for n in suites["TLS 1.2"]), suites["TLS 1.2"]
    reneg = result["session_renegotiation"]["result"]
    assert reneg["supports_secure_renegotiation"] is True  # RFC 5746: no insecure renegotiation
    assert reneg["is_vulnerable_to_client_renegotiation_dos"] is False
    assert result["tls_compression"]["result"]["supports_compression"] is False
    FIGURES["renegotiation"] = reneg
    info = result["certificate_info"]["result"]
    assert info["hostname_used_for_server_name_indication"] == SERVER_NAME
    deployment = info["certificate_deployments"][0]
    leaf = deployment["received_certificate_chain"][0]
    assert leaf["subject"]["rfc4514_string"] == f"CN={SERVER_NAME}"
    assert SERVER_NAME in leaf["subject_alternative_name"]["dns_names"]
    assert deployment["received_chain_has_valid_order"] is True
    supplied = [
        p
        for p in deployment["path_validation_results"]
        if p["trust_store"]["name"] == "Supplied CA file"
    ]
    assert len(supplied) == 1, deployment["path_validation_results"]
    assert supplied[0]["was_validation_successful"] is True, supplied[0]["validation_error"]
    # Chain: the leaf and the server CA (= the trust anchor in ca.crt).
    chain = supplied[0]["verified_certificate_chain"]
    anchor = default_server.ca.read_text().strip()
    assert chain[-1]["as_pem"].strip() == anchor
    FIGURES["chain"] = [c["subject"]["rfc4514_string"] for c in chain]


def test_the_chain_check_fails_for_another_name(
    sslyze: Path, default_server: CertctlServer, tmp_path: Path
) -> None:
    ca = f"--certinfo_ca_file={default_server.ca}"
    result = scan(
        sslyze, default_server, tmp_path / "other.json", "--certinfo", ca, name="other.example"
    )
    deployment = result["certificate_info"]["result"]["certificate_deployments"][0]
    supplied = [
        p
        for p in deployment["path_validation_results"]
        if p["trust_store"]["name"] == "Supplied CA file"
    ]
    assert supplied[0]["was_validation_successful"] is False


def test_tls13_only_mode_offers_nothing_else(
    sslyze: Path, tls13_server: CertctlServer, tmp_path: Path
) -> None:
    result = scan(sslyze, tls13_server, tmp_path / "tls13.json", *PROTOCOL_FLAGS, "--compression")
    suites = accepted(result)
    FIGURES["tls13"] = suites
    assert suites["TLS 1.3"], "TLS 1.3 refused"
    for protocol in ("SSL 2.0", "SSL 3.0", "TLS 1.0", "TLS 1.1", "TLS 1.2"):
        assert suites[protocol] == [], f"{protocol} accepted in 1.3-only mode: {suites[protocol]}"
    assert result["tls_compression"]["result"]["supports_compression"] is False


# --- secrets through a real server (scanned by test_secret_hygiene) ---------------------------


def _wait_for(predicate: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}", pytrace=False)


def _record_errors(ledger: Ledger, response: Any) -> None:
    if response.status_code >= 400:
        ledger.error_body(response.content)


def test_secrets_through_a_real_server(
    default_server: CertctlServer, tmp_path: Path, ledger: Ledger
) -> None:
    with default_server.client(default_server.admin_key) as admin:
        r = admin.post("/api/v1/auth/actors", json={"id": "hygiene", "roles": ["r-operator"]})
        assert r.status_code == 201, r.text
        r = admin.post("/api/v1/auth/apikeys", json={"actor_id": "hygiene"})
        assert r.status_code == 201, r.text
        key = r.json()["key_value"]
        ledger.api_key(key, "minted on a real server")
        # Near misses: the right key id with a wrong secret, and a key with a stray character.
        near_misses = [key[:-6] + "AAAAAA", key + "x"]
        for wrong in near_misses:
            ledger.secret(wrong, "near-miss key presented to a real server")
            with default_server.client(wrong) as client:
                r = client.get("/api/v1/auth/whoami")
            assert r.status_code == 401
            _record_errors(ledger, r)
        # Server-side key generation: the key is in this response only.
        with default_server.client(key) as client:
            r = client.post("/api/v1/certificates", json={"common_name": "hygiene.example.com"})
        assert r.status_code == 201, r.text
        ledger.private_key(r.json()["private_key_pem"], "generated on a real server")
        # An imported CA key, then a broken one (the error must not echo it).
        ca_key = generate_private_key(KeyType.EC_P256)
        issued = create_root_ca(
            ca_key, common_name_dn("Imported CA"), validity=_days(30), now=_now()
        )
        ca_pem = key_to_pem(ca_key).decode()
        ledger.private_key(ca_pem, "imported CA key")
        cert_pem = issued.certificate.public_bytes(serialization.Encoding.PEM).decode()
        r = admin.post(
            "/api/v1/issuers",
            json={"id": "imported", "certificate_pem": cert_pem, "private_key_pem": ca_pem},
        )
        assert r.status_code == 201, r.text
        lines = ca_pem.splitlines(keepends=True)
        broken = "".join(lines[:1] + lines[2:])  # a body line short: the DER is cut
        r = admin.post(
            "/api/v1/issuers",
            json={"id": "broken", "certificate_pem": cert_pem, "private_key_pem": broken},
        )
        assert r.status_code == 400, r.text
        _record_errors(ledger, r)
        # A managed service delivering PKCS#12 with a password from a file.
        password = "hygiene-p12-pw-4c1d9e"
        ledger.secret(password, "PKCS#12 password of a managed service")
        (tmp_path / "p12-password").write_text(password + "\n")
        out = tmp_path / "delivered"
        doc = {
            "apiVersion": "certctl.io/v1",
            "kind": "TLSService",
            "metadata": {"name": "hygiene"},
            "spec": {
                "targets": [
                    {
                        "directory": str(out),
                        "format": "pkcs12",
                        "passwordFile": str(tmp_path / "p12-password"),
                    }
                ]
            },
        }
        r = admin.put("/api/v1/services/hygiene", json=doc)
        assert r.status_code == 201, r.text
        _wait_for(lambda: (out / "tls.p12").is_file(), "the PKCS#12 delivery")
        material = load_material((out / "tls.p12").read_bytes(), password.encode())
        assert material.private_key is not None
        ledger.private_key(
            material.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "managed service key",
        )


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _days(n: int) -> Any:
    from datetime import timedelta

    return timedelta(days=n)
