"""README "From `make run` to a first certificate and a first scrape", verbatim, on a real server.

The block is copied from the README as a user pastes it into a second terminal, in a directory
holding ``certctl-data`` and ``.venv``; only the port differs (the README's
``CERTCTL_LISTEN=…`` override, since 8443 may be taken on a test machine).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests._tools import ok, run
from tests.e2e.conftest import CertctlServer, StartServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## From `make run` to a first certificate and a first scrape"
DEFAULT_URL = "https://127.0.0.1:8443"


def _section() -> str:
    text = README.read_text()
    section = text[text.index(SECTION) :]
    return section[: section.index("\n### ")]


def _user_dir(tmp_path: Path, server: CertctlServer) -> Path:
    """The repository directory as the README's user sees it: certctl-data and .venv."""
    home = tmp_path / "repo"
    home.mkdir()
    (home / "certctl-data").symlink_to(server.data_dir)
    (home / ".venv").symlink_to(ROOT / ".venv")
    return home


def _run_as_user(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    return ok(run("bash", "-euo", "pipefail", "-c", script, cwd=cwd, env=env))


def test_readme_first_certificate_and_scrape_work_verbatim(
    start_server: StartServer, tmp_path: Path
) -> None:
    # The block giving Prometheus its files needs root and a prometheus user: test_runbook
    # runs it. The walk-through itself is the other one.
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", _section(), re.S) if "sudo " not in b]
    assert len(blocks) == 1, blocks
    block = blocks[0]
    assert block.count(DEFAULT_URL) == 1, "the README should set CERTCTL_URL once"
    server = start_server()
    # What make run promises: the key once, the CA file and a curl line that works.
    banner = server.logs()[0]
    assert banner.count(server.admin_key) == 1, banner
    assert f"CA certificate: {server.data_dir / 'tls' / 'ca.crt'}" in banner
    try_line = re.search(r"^Try: (curl .*)$", banner, re.M)
    assert try_line is not None, banner
    whoami = json.loads(_run_as_user(try_line.group(1), tmp_path).stdout)
    assert whoami["actor_id"] == "admin"

    home = _user_dir(tmp_path, server)
    result = _run_as_user(block.replace(DEFAULT_URL, server.url), home)
    out = result.stdout
    # whoami by curl and by `certctl auth whoami`, then certs issue's JSON, then the empty
    # --expiring-within page …
    decoder = json.JSONDecoder()
    first, end = decoder.raw_decode(out)
    assert first["actor_id"] == "admin"
    assert first["auth_method"] == "api_key"
    second, _ = decoder.raw_decode(out[end:].lstrip())
    assert second == first
    assert '"items": []' in out
    assert '"out": "web-1"' in out, out
    # … and the scrape with the key minted for the metrics.read role.
    assert 'certctl_issuance_total{issuer="default",result="success"} 1.0' in out
    assert (home / "prometheus.key").read_text().startswith("cctl_")
    for secret in ("prometheus.key", "apikey-v1.json", "web-1/tls.key"):
        assert ((home / secret).stat().st_mode & 0o777) == 0o600, secret
    assert sorted(p.name for p in (home / "web-1").iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    # "plain `certs list` shows it"
    listed = _run_as_user(
        f"CERTCTL_URL={server.url} CERTCTL_CA_CERT=certctl-data/tls/ca.crt "
        "CERTCTL_API_KEY=$(cat certctl-data/admin-api-key) .venv/bin/certctl certs list",
        home,
    )
    [item] = json.loads(listed.stdout)["items"]
    assert item["common_name"] == "web-1.example.internal"


def test_readme_cli_steps_mint_a_working_prometheus_key(
    start_server: StartServer, tmp_path: Path
) -> None:
    """ "The same three steps with the CLI", each command as the README writes it."""
    paragraph = _section()
    paragraph = paragraph[paragraph.index("The same three steps with the CLI") :]
    commands = re.findall(r"`(\.venv/bin/certctl auth [^`]+)`", paragraph)
    assert len(commands) == 3, commands
    server = start_server()
    home = _user_dir(tmp_path, server)
    setup = (
        f"umask 077; export CERTCTL_URL={server.url}"
        " CERTCTL_CA_CERT=$PWD/certctl-data/tls/ca.crt"
        " CERTCTL_API_KEY=$(cat certctl-data/admin-api-key)\n"
    )
    _run_as_user(setup + "\n".join(commands), home)
    key_file = home / "prometheus.key"
    assert (key_file.stat().st_mode & 0o777) == 0o600
    with server.client(key_file.read_text().strip()) as client:
        assert client.get("/api/v1/metrics/prometheus").status_code == 200
        assert client.get("/api/v1/certificates").status_code == 403

    # "To rotate, mint prometheus-v2, switch Prometheus to it, then `certctl auth apikeys
    # revoke <v1 id>` … `certctl auth apikeys list` shows the ids".
    section = " ".join(_section().split())
    [revoke] = re.findall(r"`(certctl auth apikeys revoke <v1 id>)`", section)
    assert "`certctl auth apikeys list` shows the ids" in section
    mint_v2 = (
        commands[2]
        .replace("prometheus-v1", "prometheus-v2")
        .replace("prometheus.key", "prometheus-v2.key")
    )
    _run_as_user(setup + mint_v2, home)
    listed = _run_as_user(setup + ".venv/bin/certctl auth apikeys list", home)
    [v1] = [k["id"] for k in json.loads(listed.stdout)["items"] if k["name"] == "prometheus-v1"]
    _run_as_user(setup + ".venv/bin/" + revoke.replace("<v1 id>", v1), home)
    with server.client(key_file.read_text().strip()) as client:
        assert client.get("/api/v1/metrics/prometheus").status_code == 401
    with server.client((home / "prometheus-v2.key").read_text().strip()) as client:
        assert client.get("/api/v1/metrics/prometheus").status_code == 200


def test_readme_names_every_built_in_role(start_server: StartServer, tmp_path: Path) -> None:
    """ "Five roles are built in …": the README's list is the server's."""
    section = " ".join(_section().split())
    sentence = section[section.index("Five roles are built in") :]
    sentence = sentence[: sentence.index("own).")]
    named = set(re.findall(r"`(r-[a-z-]+)` \(", sentence))
    server = start_server()
    home = _user_dir(tmp_path, server)
    listed = _run_as_user(
        f"CERTCTL_URL={server.url} CERTCTL_CA_CERT=certctl-data/tls/ca.crt "
        "CERTCTL_API_KEY=$(cat certctl-data/admin-api-key) .venv/bin/certctl auth roles list",
        home,
    )
    roles = {r["id"]: r for r in json.loads(listed.stdout)["items"] if r["builtin"]}
    assert named == set(roles), (named, set(roles))
    assert "`r-metrics-read` (`metrics.read`" in sentence
    assert roles["r-metrics-read"]["permissions"] == ["metrics.read"]
    assert roles["r-auditor"]["permissions"] == ["audit.read"]
    assert all(p.endswith(".read") for p in roles["r-viewer"]["permissions"])


def test_readme_issuers_walk_through_works_verbatim(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    """ "Issuers on the server", as pasted with `.venv/bin` on the PATH, on the shared server.

    The issuer is renamed (ops-ca is another test's name on the shared server); nothing else.
    """
    text = README.read_text()
    section = text[text.index("### Issuers on the server") :]
    [block] = re.findall(r"```sh\n(.*?)```", section[: section.index("\n### ")], re.S)
    env = _client_env(default_server)
    script = block.replace("ops-ca", "readme-ops")
    result = ok(run("bash", "-euo", "pipefail", "-c", script, cwd=tmp_path, env=env))
    assert "web-2/tls.crt: OK" in result.stdout
    assert (tmp_path / "ops-chain.pem").read_text().count("BEGIN CERTIFICATE") == 2
    # `issuers crl … --out` wrote the DER CRL, and the revocation went through.
    assert (tmp_path / "readme-ops.crl").read_bytes()[:1] == b"\x30"
    assert '"status": "revoked"' in result.stdout


def test_readme_email_and_uri_certificates_work_verbatim(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    """ "Certificates for people and workloads": both CLI examples, then `-q` finds the URI."""
    section = " ".join(_section().split())
    section = section[section.index("Certificates for people and workloads") :]
    commands = re.findall(r"`(certctl certs issue [^`]+)`", section)[:2]
    assert [c.split()[3] for c in commands] == ["--cn", "--uri"], commands
    env = _client_env(default_server)
    ids = [
        json.loads(ok(run("bash", "-c", c, cwd=tmp_path, env=env)).stdout)["id"] for c in commands
    ]
    alice = ok(
        run(
            "openssl",
            "x509",
            "-in",
            str(tmp_path / "alice" / "tls.crt"),
            "-noout",
            "-ext",
            "subjectAltName",
        )
    )
    assert "email:alice@example.com" in alice.stdout
    api = ok(
        run(
            "openssl",
            "x509",
            "-in",
            str(tmp_path / "api" / "tls.crt"),
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
        )
    )
    assert "Subject Alternative Name: critical" in api.stdout
    assert "URI:spiffe://example.org/ns/payments/sa/api" in api.stdout
    # "`-q spiffe://example.org/ns/payments` the workloads that have no subject"
    assert "`-q spiffe://example.org/ns/payments`" in " ".join(_section().split())
    found = ok(
        run(
            "bash",
            "-c",
            "certctl certs list -q spiffe://example.org/ns/payments",
            cwd=tmp_path,
            env=env,
        )
    )
    assert ids[1] in [c["id"] for c in json.loads(found.stdout)["items"]]


def test_readme_audit_log_commands_work_verbatim(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    """ "The audit log": the auditor's key and reads, then the role with lookups, as pasted with
    `.venv/bin` on the PATH, on the shared server (the actor and role renamed: unique there)."""
    text = README.read_text()
    section = text[text.index("### The audit log") :]
    blocks = re.findall(r"```sh\n(.*?)```", section[: section.index("\n### ")], re.S)
    assert len(blocks) == 2, blocks
    script = re.sub(r"(?<![-\w])auditor(?![-\w.])", "readme-auditor", "\n".join(blocks))
    script = script.replace("r-audit-lookup", "r-readme-audit-lookup")
    assert script.count("readme-auditor") == 2, script  # the actor, and its key's owner
    # Something of actor ci's to find (the shared server may hold none yet): a refusal, which
    # is recorded under the caller.
    with default_server.client(default_server.admin_key) as api:
        r = api.post("/api/v1/auth/actors", json={"id": "ci", "name": "CI", "roles": []})
        assert r.status_code in (201, 409), r.text
        r = api.post("/api/v1/auth/apikeys", json={"actor_id": "ci", "name": "readme-audit"})
        assert r.status_code == 201, r.text
    with default_server.client(r.json()["key_value"]) as ci:
        refused = ci.post("/api/v1/certificates", json={"common_name": "ci.example.internal"})
        assert refused.status_code == 403, refused.text
    env = _client_env(default_server)
    result = ok(run("bash", "-euo", "pipefail", "-c", script, cwd=tmp_path, env=env))
    key = tmp_path / "auditor.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    # What the commands print, JSON after JSON: the actor, its key (its file named), the page
    # `certctl audit list` prints (JSON when piped), curl's page as JSON lines, the role.
    decoder, printed, rest = json.JSONDecoder(), [], result.stdout.lstrip()
    while rest:
        value, end = decoder.raw_decode(rest)
        printed.append(value)
        rest = rest[end:].lstrip()
    actor, minted, page, *lines, role = printed
    assert (actor["id"], minted["key_value_file"]) == ("readme-auditor", "auditor.key")
    assert page["items"], page
    assert {event["actor"] for event in page["items"]} == {"ci"}, page
    # curl asked for 500 a page, certctl for its default 50: the same events, newest first.
    shown = [event["id"] for event in page["items"]]
    assert [event["id"] for event in lines][: len(shown)] == shown
    assert role["permissions"] == [
        "audit.read", "auth.actor.read", "auth.apikey.read", "auth.role.read",
    ]  # fmt: skip


TOUR = "## Five-minute tour"


def test_readme_five_minute_tour_works_verbatim(tmp_path: Path) -> None:
    """The tour's block as pasted with `.venv/bin` on the PATH (`source .venv/bin/activate`)."""
    text = README.read_text()
    tour = text[text.index(TOUR) :]
    [block] = re.findall(r"```sh\n(.*?)```", tour[: tour.index("\n### ")], re.S)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    result = ok(run("bash", "-euo", "pipefail", "-c", block, cwd=tmp_path, env=env))
    assert "node-1/tls.crt: OK (server for 10.0.0.5)" in result.stdout
    # openssl's own check, as a user makes it: `openssl verify -CAfile node-1/ca.crt
    # node-1/tls.crt` alone fails (it reads the leaf only, not the intermediate after it).
    assert "\nnode-1/tls.crt: OK\n" in result.stdout
    assert "subject         CN=node-1.example.com" in result.stdout
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [
        "ca/ca.crt", "ca/ca.key",
        "node-1/ca.crt", "node-1/tls.crt", "node-1/tls.key",
        "ops-ca/ca-chain.crt", "ops-ca/ca.crt", "ops-ca/ca.key",
        "prom-client/ca.crt", "prom-client/tls.crt", "prom-client/tls.key",
    ]  # fmt: skip
    for name in written:
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == (0o600 if name.endswith(".key") else 0o644), name


def test_what_the_readme_writes_into_the_repository_is_ignored_by_git() -> None:
    # The README's commands run in the repository directory: before, the tour's CA keys,
    # the backups and kek-backup/kek showed up as untracked files, one `git add -A` from a
    # commit; and so did the audit log's key, certbot's keys (docs/acme.md) and cfssl's
    # (docs/migrating-from-cfssl.md), whose pages run there too.
    written = [
        "certctl-data/kek", "web-1/tls.key", "apikey-v1.json", "prometheus.key",
        "ca/ca.key", "ops-ca/ca.key", "node-1/tls.key", "prom-client/tls.key",
        "clients-ca/ca.key", "services.yaml", "certctl-demo/ca/ca.key",
        "backup/20270101T000000Z/certctl.db", "kek-backup/kek", "new-master-key",
        # the issuers walk-through, the key rotation, certutil http, the password on stdin,
        # the PostgreSQL backup
        "web-2/tls.key", "ops-chain.pem", "ops-ca.crl", "prometheus-v2.key",
        "es-http.zip", "pw", "ca-pw", "app/tls.p12", "certctl.dump",
        # the audit log's key, the e-mail/URI, mTLS, managed-service and custom-certificate
        # examples
        "auditor.key", "alice/tls.key", "api/tls.key", "ci-runner/tls.key",
        "quickstart-public/ca.crt", "quickstart-trust/ca.crt", "quickstart-ca.crt",
        "web-ca/ca.key",
        # docs/acme.md (certbot's and lego's keys, the TSIG secret) and
        # docs/migrating-from-cfssl.md (cfssl's keys, the imported CAs, the CA key's password)
        "acme-ca.pem", "certctl-ca.crt", "certctl.yaml", "acme.crl", "rfc2136.ini",
        "certbot/config/live/localhost/privkey.pem", "lego/certificates/localhost.key",
        "root-csr.json", "intermediate-csr.json", "config.json", "old-web.json", "app-csr.json",
        "root-key.pem", "intermediate-key.enc.pem", "old-web.csr", "issuing-ca.crl",
        "example-issuing.crl.pem", "root-ca/ca.key", "issuing-ca/ca.key",
        "issuing-ca-enc/ca.key", "web/tls.key", "ca-pw.txt",
    ]  # fmt: skip
    checked = run(
        "git", "-C", ROOT, "check-ignore", "--no-index", "--verbose", "--non-matching", *written
    )
    missing = [line for line in checked.stdout.splitlines() if line.startswith("::")]
    assert missing == [], missing


def _client_env(server: CertctlServer) -> dict[str, str]:
    """The environment the README's client examples assume: `.venv/bin` on the PATH and the
    three CERTCTL_ variables naming ``server`` (the caller's own CERTCTL_ ones left out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    return env | {
        "PATH": f"{ROOT / '.venv' / 'bin'}:{env['PATH']}",
        "CERTCTL_URL": server.url,
        "CERTCTL_CA_CERT": str(server.ca),
        "CERTCTL_API_KEY": server.admin_key,
    }
