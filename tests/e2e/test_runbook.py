"""The operator runbook verbatim (curl + jq), real Prometheus scraping, and secrets hygiene."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests._tools import require, run
from tests.e2e.conftest import CertctlServer, assert_no_secrets, key_traces, secret_of, stop_process

pytestmark = pytest.mark.e2e

METRICS = "/api/v1/metrics/prometheus"
PROMETHEUS_TARGETS_TIMEOUT_S = 25.0

RUNBOOK = textwrap.dedent(
    """\
    set -euo pipefail
    # 1. A role and an actor for Prometheus, then its first API key.
    curl -sS --fail-with-body -D role.headers --cacert "$CA" \\
      -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \\
      -X POST "$URL/api/v1/auth/roles" \\
      -d '{"id":"r-prometheus","name":"Prometheus","permissions":["metrics.read"]}' > role.json
    curl -sS --fail-with-body -D actor.headers --cacert "$CA" \\
      -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \\
      -X POST "$URL/api/v1/auth/actors" \\
      -d '{"id":"prometheus","name":"Prometheus","roles":["r-prometheus"]}' > actor.json
    curl -sS --fail-with-body -D apikey-v1.headers --cacert "$CA" \\
      -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \\
      -X POST "$URL/api/v1/auth/apikeys" \\
      -d '{"actor_id":"prometheus","name":"prometheus-v1"}' | tee apikey-v1.json
    jq -r '.key_value' apikey-v1.json > prometheus.key
    chmod 600 prometheus.key

    # 2. The key is listed without its value.
    curl -sS --fail-with-body --cacert "$CA" -H "Authorization: Bearer $ADMIN" \\
      "$URL/api/v1/auth/apikeys" > apikeys.json
    curl -sS --fail-with-body --cacert "$CA" -H "Authorization: Bearer $ADMIN" \\
      "$URL/api/v1/auth/apikeys/$(jq -r '.id' apikey-v1.json)" > apikey-v1-get.json

    # 3. Scrape with the key, without a key, and with a key lacking metrics.read.
    curl -sS --fail-with-body --cacert "$CA" -H "Authorization: Bearer $(cat prometheus.key)" \\
      "$URL/api/v1/metrics/prometheus" > metrics.txt
    curl -sS --cacert "$CA" -D nokey.headers -o nokey.json "$URL/api/v1/metrics/prometheus"
    curl -sS --fail-with-body --cacert "$CA" \\
      -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \\
      -X POST "$URL/api/v1/auth/actors" \\
      -d '{"id":"auditor","name":"Auditor","roles":["r-auditor"]}' > auditor.json
    curl -sS --fail-with-body --cacert "$CA" \\
      -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \\
      -X POST "$URL/api/v1/auth/apikeys" \\
      -d '{"actor_id":"auditor","name":"auditor-v1"}' > apikey-auditor.json
    curl -sS --cacert "$CA" -H "Authorization: Bearer $(jq -r '.key_value' apikey-auditor.json)" \\
      -D forbidden.headers -o forbidden.json "$URL/api/v1/metrics/prometheus"

    # 4. Rotation: mint v2, revoke v1; v1 fails on its very next request, v2 works.
    curl -sS --fail-with-body -D apikey-v2.headers --cacert "$CA" \\
      -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \\
      -X POST "$URL/api/v1/auth/apikeys" \\
      -d '{"actor_id":"prometheus","name":"prometheus-v2"}' | tee apikey-v2.json
    curl -sS --fail-with-body --cacert "$CA" -H "Authorization: Bearer $ADMIN" \\
      -X DELETE "$URL/api/v1/auth/apikeys/$(jq -r '.id' apikey-v1.json)" > revoke-v1.json
    curl -sS --cacert "$CA" -H "Authorization: Bearer $(cat prometheus.key)" \\
      -D v1-after.headers -o v1-after.json "$URL/api/v1/metrics/prometheus"
    jq -r '.key_value' apikey-v2.json > prometheus.key
    curl -sS --cacert "$CA" -H "Authorization: Bearer $(cat prometheus.key)" \\
      -D v2-after.headers -o v2-after.txt "$URL/api/v1/metrics/prometheus"
    """
)


@dataclass(frozen=True)
class Runbook:
    """The files the runbook left in its working directory."""

    dir: Path
    server: CertctlServer
    stdout: str

    def text(self, name: str) -> str:
        return (self.dir / name).read_text()

    def json(self, name: str) -> Any:
        return json.loads(self.text(name))

    def status(self, name: str) -> int:
        """The final HTTP status in a ``curl -D`` header dump."""
        lines = [ln for ln in self.text(name).splitlines() if ln.startswith("HTTP/")]
        return int(lines[-1].split()[1])

    def header(self, name: str, header: str) -> str | None:
        for line in self.text(name).splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == header.lower():
                return value.strip()
        return None

    def minted_keys(self) -> list[str]:
        return [
            self.json(f)["key_value"]
            for f in ("apikey-v1.json", "apikey-v2.json", "apikey-auditor.json")
        ]


@pytest.fixture(scope="module")
def runbook(default_server: CertctlServer, tmp_path_factory: pytest.TempPathFactory) -> Runbook:
    """Run the runbook script once against the shared server, as an operator would."""
    workdir = tmp_path_factory.mktemp("runbook")
    (workdir / "runbook.sh").write_text(RUNBOOK)
    require("curl")
    require("jq")
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "CA": str(default_server.ca),
        "ADMIN": default_server.admin_key,
        "URL": default_server.url,
    }
    result = run("bash", "runbook.sh", cwd=workdir, env=env, timeout=60)
    assert result.returncode == 0, f"runbook failed:\n{result.stdout}\n{result.stderr}"
    return Runbook(workdir, default_server, result.stdout)


def assert_problem(runbook: Runbook, body: str, headers: str, status: int) -> dict[str, Any]:
    assert runbook.status(headers) == status
    content_type = runbook.header(headers, "content-type") or ""
    assert content_type.split(";")[0] == "application/problem+json"
    problem: dict[str, Any] = runbook.json(body)
    assert set(problem) >= {"type", "title", "status", "detail"}, problem
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    return problem


def test_runbook_mints_a_key_shown_once(runbook: Runbook) -> None:
    assert runbook.status("role.headers") == 201
    assert runbook.json("role.json")["permissions"] == ["metrics.read"]
    assert runbook.status("actor.headers") == 201
    assert runbook.json("actor.json")["roles"] == ["r-prometheus"]
    for name in ("apikey-v1", "apikey-v2"):
        assert runbook.status(f"{name}.headers") == 201
        minted = runbook.json(f"{name}.json")
        assert set(minted) >= {"id", "actor_id", "name", "key_value", "created_at", "expires_at"}
        assert minted["actor_id"] == "prometheus"
        secret_of(minted["key_value"])
    v1 = runbook.json("apikey-v1.json")
    assert v1["name"] == "prometheus-v1"
    assert v1["key_value"] in runbook.stdout  # tee showed it to the operator

    listing = runbook.text("apikeys.json")
    items = json.loads(listing)["items"]
    assert v1["id"] in {item["id"] for item in items}
    assert all("key_value" not in item for item in items)
    single = runbook.json("apikey-v1-get.json")
    assert single["id"] == v1["id"]
    assert "key_value" not in single
    for body in (listing, runbook.text("apikey-v1-get.json")):
        assert v1["key_value"] not in body
        assert secret_of(v1["key_value"]) not in body
        assert secret_of(runbook.server.admin_key) not in body


def test_runbook_scrape_with_key_parses(runbook: Runbook) -> None:
    text = runbook.text("metrics.txt")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The parser strips _total from counter family names.
    for name in ("certctl_certificates", "certctl_build_info", "certctl_http_requests"):
        assert name in families, sorted(families)
    assert "certctl_http_requests_total{" in text
    assert families["certctl_http_requests"].type == "counter"
    build = families["certctl_build_info"].samples
    assert build
    assert build[0].labels.get("version")


def test_runbook_scrape_without_key_is_401(runbook: Runbook) -> None:
    assert_problem(runbook, "nokey.json", "nokey.headers", 401)
    assert runbook.header("nokey.headers", "www-authenticate") == 'Bearer realm="certctl"'


def test_runbook_scrape_without_permission_is_403(runbook: Runbook) -> None:
    problem = assert_problem(runbook, "forbidden.json", "forbidden.headers", 403)
    assert "metrics.read" in problem["detail"]
    assert runbook.header("forbidden.headers", "www-authenticate") is None


def test_runbook_rotation_revokes_v1_immediately(runbook: Runbook) -> None:
    assert runbook.json("revoke-v1.json")["revoked_at"]
    assert_problem(runbook, "v1-after.json", "v1-after.headers", 401)
    assert runbook.header("v1-after.headers", "www-authenticate") == 'Bearer realm="certctl"'
    assert runbook.status("v2-after.headers") == 200
    assert "certctl_build_info" in runbook.text("v2-after.txt")


def test_promtool_accepts_the_scrape(runbook: Runbook) -> None:
    result = run("promtool", "check", "metrics", input=runbook.text("metrics.txt"), timeout=30)
    # promtool exits 1 on a parse error and 3 on lint findings (naming advice: a counter
    # without _total, a unit not in the name). Both were accepted and the findings only
    # printed; the scrape has none, and a new metric should not bring one in unnoticed.
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result.stdout


def _prometheus_config(runbook: Runbook, storage: Path) -> str:
    server = runbook.server
    job = {
        "scheme": "https",
        "metrics_path": METRICS,
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "tls_config": {"ca_file": str(server.ca), "server_name": "certctl-server"},
        "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}],
    }
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "certctl",
                "authorization": {"credentials_file": str(runbook.dir / "prometheus.key")},
                **job,
            },
            {"job_name": "certctl-anonymous", **job},
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _targets(client: httpx.Client) -> dict[str, dict[str, Any]]:
    try:
        response = client.get("/api/v1/targets")
    except httpx.TransportError:
        return {}
    if response.status_code != 200:
        return {}
    return {t["labels"]["job"]: t for t in response.json()["data"]["activeTargets"]}


def _listening_port(proc: subprocess.Popen[bytes], log: Path) -> int:
    """The port Prometheus bound (``msg="Listening on" address=127.0.0.1:<port>``)."""
    deadline = time.monotonic() + PROMETHEUS_TARGETS_TIMEOUT_S
    while time.monotonic() < deadline:
        found = re.search(r'msg="Listening on" address=127\.0\.0\.1:(\d+)', log.read_text())
        if found:
            return int(found.group(1))
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"Prometheus did not listen:\n{log.read_text()[-3000:]}")


def _prometheus_targets(
    tmp_path: Path,
    config: str,
    done: Callable[[dict[str, dict[str, Any]]], bool],
    user: str | None = None,
) -> tuple[dict[str, dict[str, Any]], str]:
    """Run a real Prometheus on ``config`` until ``done(targets)``; (targets, its log).

    ``user``: run it as that user and its group alone, as the Debian package does; then
    ``tmp_path`` must be one it can traverse.
    """
    (tmp_path / "prometheus.yml").write_text(config)
    ok = run("promtool", "check", "config", tmp_path / "prometheus.yml", timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    log = tmp_path / "prometheus.log"
    argv = []
    if user is not None:
        entry = pwd.getpwnam(user)
        (tmp_path / "tsdb").mkdir()
        os.chown(tmp_path / "tsdb", entry.pw_uid, entry.pw_gid)
        argv = ["setpriv", f"--reuid={user}", f"--regid={entry.pw_gid}", "--clear-groups"]
    argv += [
        require("prometheus"),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        # Port 0, read back from its log: a port probed free and bound later by Prometheus
        # could be taken meanwhile by the other pytest-xdist worker.
        "--web.listen-address=127.0.0.1:0",
        "--log.level=info",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    targets: dict[str, dict[str, Any]] = {}
    try:
        port = _listening_port(proc, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + PROMETHEUS_TARGETS_TIMEOUT_S
            while time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                targets = _targets(client)
                if done(targets):
                    break
                time.sleep(0.5)
    finally:
        stop_process(proc)
    return targets, log.read_text()[-3000:]


def test_real_prometheus_scrapes_with_the_key(runbook: Runbook, tmp_path: Path) -> None:
    config = _prometheus_config(runbook, tmp_path)
    assert "insecure_skip_verify" not in config

    def done(targets: dict[str, dict[str, Any]]) -> bool:
        good, anon = targets.get("certctl", {}), targets.get("certctl-anonymous", {})
        return good.get("health") == "up" and "401" in anon.get("lastError", "")

    targets, log = _prometheus_targets(tmp_path, config, done)
    good, anon = targets.get("certctl", {}), targets.get("certctl-anonymous", {})
    context = f"targets: {json.dumps(targets, indent=1)}\nlog:\n{log}"
    assert good.get("health") == "up", context
    assert good.get("lastError") == "", context
    assert anon.get("health") == "down", context
    assert re.search(r"\b401\b", anon.get("lastError", "")), context


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is 0700): /etc/prometheus."""
    base = Path(tempfile.mkdtemp(prefix="certctl-prometheus-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _readme_scrape_job() -> tuple[str, str]:
    """The README's scrape job (YAML) and the commands that give Prometheus its files."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("```yaml\nscrape_configs:")
    job, install = re.findall(r"```(?:yaml|sh)\n(.*?)```", readme[start:], re.S)[:2]
    return job, install


def test_readme_scrape_job_is_up_as_the_prometheus_user(runbook: Runbook, public_dir: Path) -> None:
    """The README's scrape job, with the files installed as it says, in a Prometheus running
    as the Debian package's user. It used to stop at the scrape job: prometheus.key, 0600
    and the operator's, left that Prometheus with 'permission denied' at every scrape."""
    if os.geteuid() != 0:
        pytest.fail("installing files for another user needs root: run the suite as root",
                    pytrace=False)  # fmt: skip
    pwd.getpwnam("prometheus")  # the user the Debian package (`make test` installs it) adds
    job, install = _readme_scrape_job()
    etc = public_dir / "etc"
    etc.mkdir(mode=0o755)
    commands = install.replace("sudo ", "").replace("/etc/prometheus", str(etc))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "CERTCTL_CA_CERT": str(runbook.server.ca)}
    installed = run("bash", "-euc", commands, cwd=runbook.dir, env=env, timeout=30)
    assert installed.returncode == 0, installed.stderr
    config = yaml.safe_load(job.replace("/etc/prometheus", str(etc)))
    (scrape,) = config["scrape_configs"]
    scrape["static_configs"] = [{"targets": [f"127.0.0.1:{runbook.server.port}"]}]
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s"}

    targets, log = _prometheus_targets(
        public_dir,
        yaml.safe_dump(config),
        lambda t: t.get("certctl", {}).get("health") in ("up", "down"),
        user="prometheus",
    )
    target = targets.get("certctl", {})
    context = f"{json.dumps(targets, indent=1)}\n{log}"
    assert (target.get("health"), target.get("lastError")) == ("up", ""), context


def test_kubernetes_runbook_secret_works_as_prometheus_operator_passes_it(
    runbook: Runbook, tmp_path: Path
) -> None:
    """docs/kubernetes.md section 2 writes the key file the Secret is made from. Prometheus
    Operator copies a Secret's bytes into ``authorization.credentials`` as they are, and
    Prometheus sends them as they are: with 'jq -r' (the docs before) the key ended in a
    newline and every scrape failed with 'invalid header field value for "Authorization"'."""
    command = _kubernetes_key_command()
    made = run("bash", "-c", f"{command} apikey-v2.json", cwd=runbook.dir, timeout=30)
    assert made.returncode == 0, made.stderr
    secret_value = made.stdout  # the Secret's api-key, byte for byte
    server = runbook.server
    job = {
        "job_name": "servicemonitor",
        "scheme": "https",
        "metrics_path": METRICS,
        "tls_config": {"ca_file": str(server.ca), "server_name": "certctl-server"},
        "authorization": {"type": "Bearer", "credentials": secret_value},
        "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}],
    }
    config = yaml.safe_dump(
        {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [job]}
    )
    targets, log = _prometheus_targets(
        tmp_path, config, lambda t: t.get("servicemonitor", {}).get("health") == "up"
    )
    target = targets.get("servicemonitor", {})
    assert target.get("health") == "up", f"{json.dumps(targets, indent=1)}\n{log}"
    assert secret_value == runbook.json("apikey-v2.json")["key_value"]


def _kubernetes_key_command() -> str:
    """The jq command of docs/kubernetes.md section 2 that writes the key file."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md").read_text()
    (command,) = re.findall(r"\| (jq [^|>\n]*) > prometheus\.key", docs)
    return command


def test_kubernetes_runbook_key_file_is_never_a_refusal(runbook: Runbook) -> None:
    """Section 2 run again (prometheus.key lost, the guide followed twice) now gets a 409:
    the actor already has a live key of that name. `jq -j .key_value` wrote "null" into
    prometheus.key and printed nothing, and the Secret made from it failed every scrape
    with 401. The docs' command must say why and write no key."""
    server = runbook.server
    with server.client(server.admin_key) as client:
        refused = client.post(
            "/api/v1/auth/apikeys", json={"actor_id": "prometheus", "name": "prometheus-v2"}
        )
    assert refused.status_code == 409, refused.text
    made = subprocess.run(
        ["bash", "-c", _kubernetes_key_command()],
        input=refused.text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert made.returncode != 0
    assert made.stdout == ""  # nothing for the Secret
    assert "already has a live API key named 'prometheus-v2'" in made.stderr


def test_secrets_hygiene_after_runbook_and_issuance(runbook: Runbook) -> None:
    server = runbook.server
    key_pems, cert_lines = [], []
    with server.client(server.admin_key) as client:
        for n in range(3):
            response = client.post(
                "/api/v1/certificates",
                json={"issuer": "default", "common_name": f"hygiene-{n}.example.com"},
            )
            assert response.status_code == 201, response.text
            key_pems.append(response.json()["private_key_pem"])
            cert_lines.append(response.json()["certificate_pem"].splitlines()[-2])
    keys = [*runbook.minted_keys(), server.admin_key]
    secrets: list[str | bytes] = [*keys, *(secret_of(k) for k in keys)]
    secrets += [trace for pem in key_pems for trace in key_traces(pem)]
    assert_no_secrets(server, secrets, first_start=True, stored=cert_lines)
