"""The client commands (certs, auth, services, apply) against a real ``certctl serve``.

The trust hint, the key as a file gives it (trailing newline), ``--query``/``-q``/``--q``, no
key in any output; outputs refused before the server is asked; blank ids; warnings; what is
never sent (private keys); tables; URL and throttle hints; client certificates; Ctrl-C.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests._poll import wait_until
from tests._tools import ok, openssl_req, openssl_verify, require, run
from tests.e2e.conftest import CertctlServer, StartServer, secret_of

pytestmark = pytest.mark.e2e


def _certctl(server: CertctlServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    return run("certctl", *args, env=clean | {"CERTCTL_URL": server.url} | env)


def _assert_no_key(result: subprocess.CompletedProcess[str], key: str) -> None:
    assert key not in result.stdout + result.stderr


def test_self_signed_server_without_ca_cert_gets_a_hint(default_server: CertctlServer) -> None:
    result = _certctl(default_server, "certs", "list", CERTCTL_API_KEY=default_server.admin_key)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    prefix = f"certctl: error: cannot reach {default_server.url}: TLS certificate verify failed: "
    assert lines[0].startswith(prefix), lines[0]
    assert lines[0].endswith(
        "(set CERTCTL_CA_CERT to the server's CA file, e.g. certctl-data/tls/ca.crt)"
    ), lines[0]
    _assert_no_key(result, default_server.admin_key)


def test_issue_then_find_with_every_query_spelling(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # The key as `cat admin-api-key` or an env file gives it: with its newline.
    key_file = (default_server.data_dir / "admin-api-key").read_text()
    assert key_file.endswith("\n")
    env = {"CERTCTL_API_KEY": key_file, "CERTCTL_CA_CERT": str(default_server.ca)}
    name = "client-cli-query.example.internal"
    issued = ok(_certctl(default_server, "certs", "issue", "--cn", name, "--dns", name, **env))
    cert_id = json.loads(issued.stdout)["id"]
    for option in ("--query", "-q", "--q"):
        listed = ok(_certctl(default_server, "certs", "list", option, name, **env))
        assert [item["id"] for item in json.loads(listed.stdout)["items"]] == [cert_id], option
        _assert_no_key(listed, default_server.admin_key)
    shown = ok(_certctl(default_server, "certs", "get", cert_id, **env))
    assert json.loads(shown.stdout)["id"] == cert_id


def _san_line(cert: Path) -> str:
    text = ok(run("openssl", "x509", "-in", cert, "-noout", "-ext", "subjectAltName")).stdout
    return text.splitlines()[1].strip()


def test_issue_a_person_and_a_workload_certificate_and_renew_them(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # E-mail SANs for people, URI SANs (SPIFFE IDs) for workloads: before, `certs issue` had
    # neither option and the API neither field.
    env = _admin_env(default_server)
    spiffe = "spiffe://example.org/ns/payments/sa/api"
    ok(
        _certctl(default_server, "certs", "issue", "--cn", "Alice Example", "--email",
                 "alice@example.com,alice.ops@example.com", "--profile", "client",
                 "--out", str(tmp_path / "alice"), **env)
    )  # fmt: skip
    assert _san_line(tmp_path / "alice" / "tls.crt") == (
        "email:alice@example.com, email:alice.ops@example.com"
    )
    issued = ok(
        _certctl(default_server, "certs", "issue", "--uri", spiffe, "--profile", "server+client",
                 **env)
    )  # fmt: skip
    cert_id = json.loads(issued.stdout)["id"]
    shown = json.loads(ok(_certctl(default_server, "certs", "get", cert_id, **env)).stdout)
    assert (shown["subject"], shown["sans"]) == (
        "",
        {"dns": [], "ip": [], "email": [], "uri": [spiffe]},
    )
    ok(_certctl(default_server, "certs", "renew", cert_id, "--out", str(tmp_path / "w"), **env))
    assert _san_line(tmp_path / "w" / "tls.crt") == f"URI:{spiffe}"


def test_wrong_key_is_not_echoed(default_server: CertctlServer) -> None:
    wrong = "cctl_nokey_" + "s3cretPart" * 3
    result = _certctl(
        default_server,
        "certs",
        "list",
        CERTCTL_API_KEY=wrong,
        CERTCTL_CA_CERT=str(default_server.ca),
    )
    assert result.returncode == 1
    assert result.stderr.startswith("certctl: error: HTTP 401: "), result.stderr
    assert result.stderr.count("\n") == 1
    _assert_no_key(result, "s3cretPart")


def _admin_env(server: CertctlServer) -> dict[str, str]:
    return {"CERTCTL_API_KEY": server.admin_key, "CERTCTL_CA_CERT": str(server.ca)}


def test_revoke_with_an_empty_reason_is_refused_and_revokes_nothing(
    default_server: CertctlServer,
) -> None:
    # `--reason "$REASON"` with REASON unset revoked as unspecified, for good.
    env = _admin_env(default_server)
    issued = ok(_certctl(default_server, "certs", "issue", "--cn", "empty-reason.example", **env))
    cert_id = json.loads(issued.stdout)["id"]
    refused = _certctl(default_server, "certs", "revoke", cert_id, "--reason", "", **env)
    # Refused before it is sent, in the server's words: a usage error (exit 2).
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""
    assert refused.stderr.startswith(
        "certctl: error: Invalid value for --reason: an empty revocation reason: give one of "
        "affiliationChanged, "
    ), refused.stderr
    assert refused.stderr.endswith(
        ", or leave the reason out for unspecified (see 'certctl certs revoke --help')\n"
    )
    assert refused.stderr.count("\n") == 1, refused.stderr
    shown = json.loads(ok(_certctl(default_server, "certs", "get", cert_id, **env)).stdout)
    assert shown["status"] == "active"
    revoked = json.loads(ok(_certctl(default_server, "certs", "revoke", cert_id, **env)).stdout)
    assert (revoked["status"], revoked["revocation_reason"]) == ("revoked", "unspecified")


def test_issue_into_an_unwritable_place_asks_nothing_of_the_server(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # `--out` naming an existing file (or a path below one): the generated key is returned
    # once, so the command must fail before the certificate is issued, not after.
    env = _admin_env(default_server)
    afile = tmp_path / "server.pem"
    afile.write_text("not a directory\n")
    name = "unwritable-out.example.internal"
    for out in (afile, afile / "sub"):
        result = _certctl(default_server, "certs", "issue", "--cn", name, "--out", str(out), **env)
        assert result.returncode == 1
        assert result.stderr == (
            f"certctl: error: cannot write {out}/tls.crt: {afile} is not a directory\n"
        ), result.stderr
        assert result.stdout == ""
    listed = ok(_certctl(default_server, "certs", "list", "--query", name, **env))
    assert json.loads(listed.stdout)["items"] == []
    assert afile.read_text() == "not a directory\n"


def test_apikey_into_an_unwritable_place_mints_nothing(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    env = _admin_env(default_server)
    ok(
        _certctl(
            default_server, "auth", "actors", "create", "unwritable-out", "-r", "r-viewer", **env
        )
    )
    afile = tmp_path / "keys"
    afile.write_text("")
    out = afile / "prometheus.key"
    result = _certctl(
        default_server, "auth", "apikeys", "create", "unwritable-out", "--out", str(out), **env
    )
    assert result.returncode == 1
    assert result.stderr == f"certctl: error: cannot write {out}: {afile} is not a directory\n"
    listed = ok(
        _certctl(default_server, "auth", "apikeys", "list", "--actor", "unwritable-out", **env)
    )
    assert json.loads(listed.stdout)["items"] == []


def test_intermediate_created_fetched_and_issued_from_with_the_cli(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # Before, an intermediate on the server took a curl POST /api/v1/issuers.
    env = _admin_env(default_server)
    created = ok(
        _certctl(default_server, "issuers", "create", "cli-ops", "--parent", "default",
                 "--cn", "CLI Ops CA", "--name", "CLI Ops", **env)
    )  # fmt: skip
    issuer = json.loads(created.stdout)
    assert (issuer["id"], issuer["subject"]) == ("cli-ops", "CN=CLI Ops CA")
    # The default issuer lives 8760h: without --validity the intermediate ends with it, and
    # nothing warns (before, the 5Y default was clipped with a warning every time).
    assert created.stderr == ""
    parent = json.loads(ok(_certctl(default_server, "issuers", "get", "default", **env)).stdout)
    assert issuer["not_after"] == parent["not_after"]
    chain = tmp_path / "chain.pem"
    # Public: no API key needed for the CA certificates.
    ok(
        _certctl(default_server, "issuers", "ca", "cli-ops", "--chain", "-o", str(chain),
                 CERTCTL_CA_CERT=str(default_server.ca))
    )  # fmt: skip
    assert chain.read_text().count("BEGIN CERTIFICATE") == 2
    ok(_certctl(default_server, "certs", "issue", "--issuer", "cli-ops", "--cn", "cli-ops-leaf",
                "--out", str(tmp_path / "leaf"), **env))  # fmt: skip
    leaf = tmp_path / "leaf" / "tls.crt"
    assert openssl_verify("-CAfile", chain, leaf) == "OK"
    # Its negative twin: the root alone, without the intermediate (openssl reads the first
    # certificate of tls.crt only), does not make the chain.
    assert openssl_verify("-CAfile", default_server.ca, leaf) == (
        "unable to get local issuer certificate"
    )
    # Revoked (retired, then found compromised: keyCompromise replaces the reason, the date
    # stays): it issues nothing more, and the CLI says why in one line.
    retired = ok(_certctl(default_server, "issuers", "revoke", "cli-ops", "--reason",
                          "superseded", **env))  # fmt: skip
    revoked = ok(_certctl(default_server, "issuers", "revoke", "cli-ops", "--reason",
                          "keyCompromise", **env))  # fmt: skip
    assert json.loads(revoked.stdout) == json.loads(retired.stdout) | {
        "revocation_reason": "keyCompromise"
    }
    refused = _certctl(default_server, "certs", "issue", "--issuer", "cli-ops", "--cn", "late",
                       "--out", str(tmp_path / "late"), **env)  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("certctl: error: HTTP 409: issuer cli-ops was revoked on ")
    assert "(keyCompromise) and issues nothing more" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert not (tmp_path / "late").exists()
    again = _certctl(default_server, "issuers", "revoke", "cli-ops", "--reason", "keyCompromise",
                     **env)  # fmt: skip
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.startswith(
        "certctl: error: HTTP 409: issuer cli-ops is already revoked (keyCompromise, on "
    )
    assert again.stderr.endswith(
        "only keyCompromise or cACompromise can replace a revocation's reason, and it was "
        "revoked for a compromise already\n"
    )


@pytest.mark.parametrize(
    ("command", "args", "metavar"),
    [
        ("certs get", [""], "CERT_ID"),
        ("certs revoke", [""], "CERT_ID"),
        ("certs renew", [" "], "CERT_ID"),
        ("auth roles delete", [""], "ROLE_ID"),
        ("auth actors get", [""], "ACTOR_ID"),
        ("auth apikeys revoke", [""], "KEY_ID"),
        ("services delete", [""], "NAME"),
        ("services status", [""], "NAME"),
        ("services clients remove", ["web", ""], "FINGERPRINT"),
    ],
)
def test_blank_id_is_a_usage_error(
    default_server: CertctlServer, command: str, args: list[str], metavar: str
) -> None:
    # What `certctl certs get "$(… | jq -r .id)"` sends when jq found nothing. Before, the
    # request went to the collection's URL: a 307 reported as "not JSON", or a bare 404.
    result = _certctl(default_server, *command.split(), *args, **_admin_env(default_server))
    assert result.returncode == 2
    assert result.stderr == (
        f"certctl: error: Invalid value for '{metavar}': must not be empty "
        f"(see 'certctl {command} --help')\n"
    ), result.stderr
    assert result.stdout == ""


def test_a_host_cn_no_san_covers_is_warned_about_on_stderr(
    default_server: CertctlServer,
) -> None:
    # `--cn` with a URI SAN only: the CN is no DNS name, so clients refuse the certificate
    # for it; the server's warning reaches stderr, and the certificate is issued all the same.
    result = ok(
        _certctl(
            default_server,
            "certs",
            "issue",
            "--cn",
            "cn-left-out.example.com",
            "--uri",
            "spiffe://example.org/ns/x/sa/cn-left-out",
            **_admin_env(default_server),
        )
    )
    assert result.stderr == (
        "certctl: warning: common name cn-left-out.example.com is not among the certificate's "
        "DNS names: clients will not accept it for that name; add it to dns_names (certctl "
        "certs issue --dns)\n"
    )
    assert json.loads(result.stdout)["status"] == "active"


def test_server_warnings_reach_stderr(default_server: CertctlServer, tmp_path: Path) -> None:
    # The offline commands print their warnings; the server's were only inside the JSON.
    env = _admin_env(default_server)
    short = ok(
        _certctl(
            default_server, "certs", "issue", "--cn", "short.example", "--validity", "10D", **env
        )
    )
    line = "certctl: warning: certificate lifetime 10D is under 60 days; plan its renewal\n"
    assert short.stderr == line
    assert json.loads(short.stdout)["warnings"] == [line.split(": ", 2)[2].strip()]
    renewed = ok(
        _certctl(
            default_server,
            "certs",
            "renew",
            json.loads(short.stdout)["id"],
            "--validity",
            "10D",
            **env,
        )
    )
    assert renewed.stderr == line
    # A leaf outliving its issuer is clipped: with --out the JSON is the only other trace.
    long = ok(
        _certctl(
            default_server,
            "certs",
            "issue",
            "--cn",
            "long.example",
            "--validity",
            "100Y",
            "--out",
            str(tmp_path / "long"),
            **env,
        )
    )
    assert long.stderr.startswith("certctl: warning: validity 36500D clipped to the issuer's ")
    assert long.stderr.count("\n") == 1
    # A client certificate trusted without its CA: the warning names what OpenSSL servers need.
    ok(run("certctl", "ca", "create", "--out", tmp_path / "ca", "--cn", "Warn Clients CA"))
    ok(
        run(
            "certctl",
            "cert",
            "issue",
            "--ca",
            tmp_path / "ca",
            "--cn",
            "warn-client",
            "--profile",
            "client",
            "--out",
            tmp_path / "client",
        )
    )
    spec = tmp_path / "svc.yaml"
    spec.write_text(
        "apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {name: warn-clients}\n"
        "spec: {http: {tls: {client: {authentication: true}}}}\n"
    )
    ok(_certctl(default_server, "apply", "-f", str(spec), **env))
    added = ok(
        _certctl(
            default_server,
            "services",
            "clients",
            "add",
            "warn-clients",
            "--cert",
            str(tmp_path / "client" / "tls.crt"),
            **env,
        )
    )
    # Each warning of the answer on its own stderr line, and nothing else there.
    warnings = json.loads(added.stdout)["warnings"]
    assert warnings, added.stdout
    assert added.stderr == "".join(f"certctl: warning: {w}\n" for w in warnings), added.stderr


def test_clients_add_never_sends_a_private_key(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    env = _admin_env(default_server)
    spec = tmp_path / "svc.yaml"
    spec.write_text(
        "apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {name: keyless-clients}\n"
        "spec: {http: {tls: {client: {authentication: true}}}}\n"
    )
    ok(_certctl(default_server, "apply", "-f", str(spec), **env))
    ok(run("certctl", "ca", "create", "--out", tmp_path / "ca", "--cn", "Keyless Clients CA"))
    both = tmp_path / "ca-and-key.pem"  # a common slip: the CA directory's files concatenated
    both.write_bytes(
        (tmp_path / "ca" / "ca.crt").read_bytes() + (tmp_path / "ca" / "ca.key").read_bytes()
    )
    der = tmp_path / "ca.der"
    ok(run("openssl", "x509", "-in", tmp_path / "ca" / "ca.crt", "-outform", "DER", "-out", der))
    route = "/api/v1/services/keyless-clients/clients"
    for path, line in (
        (
            both,
            f"{both}: holds a private key; client trust takes certificates only (nothing was sent)",
        ),
    ):
        result = _certctl(
            default_server,
            "services",
            "clients",
            "add",
            "keyless-clients",
            "--cert",
            str(path),
            **env,
        )
        assert result.returncode == 1
        assert result.stderr == f"certctl: error: {line}\n"
    # The access log shows every request: none reached the route.
    assert route not in default_server.logs()[1]
    # The CA as DER (a Windows .cer) is sent as PEM (it was "convert DER … to PEM").
    ok(_certctl(default_server, "services", "clients", "add", "keyless-clients", "--cert",
                str(der), **env))  # fmt: skip
    assert f"POST {route} 201" in default_server.logs()[1]
    # The same CA again: nothing to add, said in one line beside the empty items (before:
    # '"items": []' alone, as if the file had been ignored).
    again = ok(
        _certctl(
            default_server,
            "services",
            "clients",
            "add",
            "keyless-clients",
            "--cert",
            str(tmp_path / "ca" / "ca.crt"),
            **env,
        )
    )
    assert json.loads(again.stdout)["items"] == []
    assert again.stderr == (
        f"note: keyless-clients already trusts every certificate in {tmp_path / 'ca' / 'ca.crt'}"
        "; nothing was added\n"
    )
    assert f"POST {route} 200" in default_server.logs()[1]


def test_services_status_columns_stay_aligned_with_long_names(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    env = _admin_env(default_server)
    long_name = "a-rather-long-service-name-of-the-maximum-53-chars-ok"
    assert len(long_name) == 53
    spec = tmp_path / "svc.yaml"
    spec.write_text(
        "".join(
            f"---\napiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {{name: {name}}}\n"
            "spec: {http: {tls: {selfSignedCertificate: {subjectAltNames: [{dns: x.example}]}}}}\n"
            for name in ("align-short", long_name)
        )
    )
    ok(_certctl(default_server, "apply", "-f", str(spec), **env))
    table = ok(_certctl(default_server, "services", "status", **env)).stdout.splitlines()
    header = table[0]
    rows = {line.split()[0]: line for line in table[1:]}
    assert {"align-short", long_name} <= set(rows)
    for column in ("READY", "RENEWING", "FAILED", "SERIAL", "NOT AFTER", "NEXT RENEWAL"):
        start = header.index(column)
        for name in ("align-short", long_name):
            assert rows[name][start - 1] == " ", (column, rows[name])
            assert rows[name][start] != " ", (column, rows[name])


def _service_doc(name: str, targets: str) -> str:
    """A TLSService document (YAML flow style) with a self-signed certificate and ``targets``."""
    return (
        f"apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {{name: {name}}}\n"
        f"spec: {{http: {{tls: {{selfSignedCertificate: {{}}}}}}, targets: {targets}}}\n"
    )


def test_apply_refused_by_the_server_for_a_later_document_applies_nothing(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # Before, apply-first was stored, then apply-second got the 409 and the command stopped:
    # half the file applied, and apply-third never sent.
    with default_server.client(default_server.admin_key) as api:
        holder = yaml.safe_load(_service_doc("apply-holder", "[{secret: apply-taken-tls}]"))
        taken = api.put("/api/v1/services/apply-holder", json=holder)
        assert taken.status_code == 201, taken.text
    spec = tmp_path / "services.yaml"
    spec.write_text(
        "---\n".join(
            (
                _service_doc("apply-first", "[]"),
                _service_doc("apply-second", "[{secret: apply-taken-tls}]"),
                _service_doc("apply-third", "[]"),
            )
        )
    )
    result = _certctl(default_server, "apply", "-f", str(spec), **_admin_env(default_server))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "certctl: error: document 2 (tlsservice/apply-second): HTTP 409: spec.targets.0: "
        "secret:apply-taken-tls is already a target of service apply-holder; nothing was applied\n"
    )
    with default_server.client(default_server.admin_key) as api:
        names = {item["name"] for item in api.get("/api/v1/services").json()["items"]}
    assert names.isdisjoint({"apply-first", "apply-second", "apply-third"})


def test_apply_failing_after_the_dry_run_says_which_documents_went_in(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # Two spellings of one directory (through a symlink): neither the file nor the dry run
    # (neither service stored yet) can tell, the server refuses the second once the first is
    # stored. Before, one error line, and nothing said that apply-sym-3 was never sent.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    spec = tmp_path / "services.yaml"
    spec.write_text(
        "---\n".join(
            f"apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {{name: {name}}}\n"
            f"spec: {{targets: {targets}}}\n"
            for name, targets in (
                ("apply-sym-1", f"[{{directory: {tmp_path}/link/tls}}]"),
                ("apply-sym-2", f"[{{directory: {tmp_path}/real/tls}}]"),
                ("apply-sym-3", "[]"),
            )
        )
    )
    result = _certctl(default_server, "apply", "-f", str(spec), **_admin_env(default_server))
    assert result.returncode == 1
    assert result.stdout == (
        "tlsservice/apply-sym-1 created (generation 1)\n"
        "tlsservice/apply-sym-2 not applied\n"
        "tlsservice/apply-sym-3 not applied\n"
    )
    assert result.stderr == (
        "certctl: error: tlsservice/apply-sym-2: HTTP 409: spec.targets.0: "
        f"dir:{tmp_path}/real/tls is already a target of service apply-sym-1; 1 of 3 "
        "document(s) applied (one line each above)\n"
    )
    with default_server.client(default_server.admin_key) as api:
        assert api.delete("/api/v1/services/apply-sym-1").status_code == 204


def test_apply_moving_a_target_between_two_services_of_the_file(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # The dry run checks each document against the services stored now: the Secret that
    # move-a gives up in document 1 was still move-a's when document 2 (move-b) was checked,
    # and the whole file was refused ("nothing was applied"), though applied in order it
    # went in (as it did before the dry run existed).
    with default_server.client(default_server.admin_key) as api:
        holder = yaml.safe_load(_service_doc("move-a", "[{secret: move-tls}]"))
        assert api.put("/api/v1/services/move-a", json=holder).status_code == 201
    env = _admin_env(default_server)
    freed, taken = _service_doc("move-a", "[]"), _service_doc("move-b", "[{secret: move-tls}]")
    # The twin: the document taking the target first cannot go in while move-a holds it,
    # so nothing is applied, and the error says which document to put first.
    backwards = tmp_path / "backwards.yaml"
    backwards.write_text("---\n".join((taken, freed)))
    result = _certctl(default_server, "apply", "-f", str(backwards), **env)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr == (
        "certctl: error: document 1 (tlsservice/move-b): HTTP 409: spec.targets.0: "
        "secret:move-tls is already a target of service move-a (document 2 changes move-a: "
        "put it first); nothing was applied\n"
    )
    spec = tmp_path / "services.yaml"
    spec.write_text("---\n".join((freed, taken)))
    result = _certctl(default_server, "apply", "-f", str(spec), **env)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout == (
        "tlsservice/move-a configured (generation 2)\ntlsservice/move-b created (generation 1)\n"
    )
    with default_server.client(default_server.admin_key) as api:
        for name in ("move-a", "move-b"):
            assert api.delete(f"/api/v1/services/{name}").status_code == 204


@pytest.mark.parametrize("path", ["/api/v1", "/api/v1/", "/certctl"])
def test_url_with_a_path_certctl_does_not_serve_says_so(
    default_server: CertctlServer, path: str
) -> None:
    # The API's own prefix copied into CERTCTL_URL: before, a bare "HTTP 404: Not Found".
    result = _certctl(
        default_server,
        "certs",
        "list",
        CERTCTL_URL=default_server.url + path,
        **_admin_env(default_server),
    )
    assert result.returncode == 1
    assert result.stderr == (
        "certctl: error: HTTP 404: Not Found (no such route: CERTCTL_URL should be the "
        f"server's base URL without {path.rstrip('/')}: {default_server.url})\n"
    )
    # An unknown id is the server's own 404 and says so: no hint about the URL there, one
    # about what an id is (a name given where the id goes: not shaped like one).
    missing = _certctl(default_server, "certs", "get", "no-such-id", **_admin_env(default_server))
    assert missing.stderr == (
        "certctl: error: HTTP 404: certificate no-such-id not found (CERT_ID is a "
        "certificate's id, as 'certctl certs list' shows it; 'certctl certs list -q "
        "no-such-id' finds certificates by name)\n"
    )


def test_issue_from_a_csr_sends_the_csr_only(default_server: CertctlServer, tmp_path: Path) -> None:
    env = _admin_env(default_server)
    name = "csr-only.example.internal"
    ok(run("certctl", "csr", "create", "--cn", name, "--dns", name, "--out", tmp_path / "req"))
    key, pem = tmp_path / "req" / "tls.key", tmp_path / "req" / "tls.csr"
    posts = default_server.logs()[1].count("POST /api/v1/certificates ")
    # tls.key for tls.csr, the slip the file names invite: before, the key was posted.
    result = _certctl(default_server, "certs", "issue", "--csr", str(key), **env)
    assert result.returncode == 1
    assert result.stderr == (
        f"certctl: error: {key}: holds a private key, not a CSR (nothing was sent)\n"
    )
    assert default_server.logs()[1].count("POST /api/v1/certificates ") == posts
    # DER, as `csr sign --csr` takes it: before, "request body contains a NUL character".
    der = tmp_path / "req" / "tls.der"
    ok(run("openssl", "req", "-in", pem, "-outform", "DER", "-out", der))
    # A file holding the key and the CSR: only the CSR goes.
    both = tmp_path / "req" / "both.pem"
    both.write_bytes(key.read_bytes() + pem.read_bytes())
    for source in (der, both):
        issued = ok(
            _certctl(
                default_server,
                "certs",
                "issue",
                "--csr",
                str(source),
                "--out",
                str(tmp_path / source.stem),
                **env,
            )
        )
        answer = json.loads(issued.stdout)
        assert answer["out"] == str(tmp_path / source.stem)
        # The files written, named (no tls.key: the CSR's key stays where it is).
        written = tmp_path / source.stem
        assert answer["files"] == [str(written / "tls.crt"), str(written / "ca.crt")]
        assert sorted(p.name for p in written.iterdir()) == ["ca.crt", "tls.crt"]
        # The certificate is for the CSR's key.
        cert_key = ok(
            run("openssl", "x509", "-in", tmp_path / source.stem / "tls.crt", "-pubkey", "-noout")
        )
        assert cert_key.stdout == ok(run("openssl", "pkey", "-in", key, "-pubout")).stdout


def test_throttled_client_is_told_how_long_to_wait(start_server: StartServer) -> None:
    # Its own server: the throttle blocks every key from 127.0.0.1 for the window.
    server = start_server(config={"auth": {"failure-limit": 1, "failure-window": "90s"}})
    env = _admin_env(server)
    wrong = _certctl(server, "certs", "list", **(env | {"CERTCTL_API_KEY": "cctl_x_" + "y" * 30}))
    assert wrong.stderr == (
        f"certctl: error: HTTP 401: malformed API key (CERTCTL_API_KEY is no key of the server "
        f"at {server.url}: give a whole key, as 'certctl auth apikeys create' printed it or "
        "admin-api-key holds it)\n"
    )
    blocked = _certctl(server, "certs", "list", **env)
    assert blocked.returncode == 1
    prefix = "certctl: error: HTTP 429: too many failed authentications from this address; "
    assert blocked.stderr.startswith(prefix + "retry later (Retry-After: "), blocked.stderr
    seconds = blocked.stderr.removeprefix(prefix + "retry later (Retry-After: ")
    assert seconds.endswith(" s)\n")
    assert 0 < int(seconds.removesuffix(" s)\n")) <= 90


def test_a_client_certificate_the_server_does_not_ask_for_is_named(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # tls.client-auth none: the certificate is never sent, and the 401 sent the user to
    # CERTCTL_API_KEY as if CERTCTL_CLIENT_CERT had not been set.
    ok(run("certctl", "ca", "create", "--out", tmp_path / "ca", "--cn", "Unasked Clients CA"))
    ok(run("certctl", "cert", "issue", "--ca", tmp_path / "ca", "--profile", "client",
           "--cn", "unasked", "--out", tmp_path / "unasked"))  # fmt: skip
    cert = tmp_path / "unasked" / "tls.crt"
    result = _certctl(
        default_server, "auth", "whoami", CERTCTL_CA_CERT=str(default_server.ca),
        CERTCTL_CLIENT_CERT=str(cert), CERTCTL_CLIENT_KEY=str(tmp_path / "unasked" / "tls.key"),
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "certctl: error: HTTP 401: authentication required: send 'Authorization: Bearer <api "
        f"key>' (the server did not ask for the certificate in CERTCTL_CLIENT_CERT={cert}: its "
        "tls.client-auth is none, or a proxy in front ends TLS; or set CERTCTL_API_KEY to an "
        "API key)\n"
    )


def test_client_certificate_from_the_environment(start_server: StartServer, tmp_path: Path) -> None:
    # A server with tls.client-auth: required let no client command in: they had no way to
    # present a certificate, so client-cert-mappings were out of the CLI's reach too.
    ok(run("certctl", "ca", "create", "--out", tmp_path / "clients", "--cn", "CLI Clients CA"))
    ok(run("certctl", "ca", "create", "--out", tmp_path / "rogue", "--cn", "CLI Clients CA"))
    for ca, name, subject in (
        ("clients", "alice", "CN=alice,OU=ops,O=Example"),
        ("rogue", "mallory", "CN=mallory,OU=ops,O=Example"),
        ("clients", "bob", "O=Example,OU=ops,CN=bob"),
    ):
        ok(
            run(
                "certctl", "cert", "issue", "--ca", tmp_path / ca, "--profile", "client",
                "--subject", subject, "--out", tmp_path / name,
            )
        )  # fmt: skip
    alice = (tmp_path / "alice" / "tls.crt", tmp_path / "alice" / "tls.key")
    server = start_server(
        config={
            "tls": {"client-auth": "required", "client-ca": str(tmp_path / "clients" / "ca.crt")},
            "auth": {
                "client-cert-mappings": [
                    {"subject": "CN=*,OU=ops,O=Example", "roles": ["r-operator"]}
                ]
            },
        },
        client_cert=alice,
    )
    trust = {"CERTCTL_CA_CERT": str(server.ca)}
    refused = _certctl(server, "certs", "list", **_admin_env(server))
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"certctl: error: cannot reach {server.url}: "), refused.stderr
    assert refused.stderr.endswith(
        " (if the server requires a client certificate, set CERTCTL_CLIENT_CERT and "
        "CERTCTL_CLIENT_KEY)\n"
    )
    # No API key: the mapping gives alice r-operator.
    pair = {"CERTCTL_CLIENT_CERT": str(alice[0]), "CERTCTL_CLIENT_KEY": str(alice[1])}
    issued = ok(_certctl(server, "certs", "issue", "--cn", "mtls-cli.example", **trust, **pair))
    assert json.loads(issued.stdout)["status"] == "active"
    forbidden = _certctl(server, "auth", "roles", "list", **trust, **pair)
    assert forbidden.stderr == "certctl: error: HTTP 403: missing permission auth.role.read\n"
    # Certificate and key in one file.
    both = tmp_path / "alice.pem"
    both.write_bytes(alice[0].read_bytes() + alice[1].read_bytes())
    ok(_certctl(server, "certs", "list", CERTCTL_CLIENT_CERT=str(both), **trust))
    mismatch = _certctl(
        server, "certs", "list", **trust,
        CERTCTL_CLIENT_CERT=str(alice[0]), CERTCTL_CLIENT_KEY=str(tmp_path / "mallory" / "tls.key"),
    )  # fmt: skip
    assert mismatch.stderr == (
        f"certctl: error: CERTCTL_CLIENT_CERT={alice[0]}, CERTCTL_CLIENT_KEY="
        f"{tmp_path / 'mallory' / 'tls.key'}: the key does not belong to the certificate\n"
    )
    rogue = _certctl(
        server, "certs", "list", **trust,
        CERTCTL_CLIENT_CERT=str(tmp_path / "mallory" / "tls.crt"),
        CERTCTL_CLIENT_KEY=str(tmp_path / "mallory" / "tls.key"),
    )  # fmt: skip
    assert rogue.returncode == 1
    assert rogue.stderr.endswith(
        " (the server may not trust the certificate in CERTCTL_CLIENT_CERT)\n"
    ), rogue.stderr
    # A server certificate of the trusted CA: the server's OpenSSL refuses its purpose with an
    # "unsupported certificate" alert, which the CLI took for a CA the server may not trust.
    server_only = tmp_path / "server-only"
    ok(run("certctl", "cert", "issue", "--ca", tmp_path / "clients", "--profile", "server",
           "--cn", "srv.example", "--out", server_only))  # fmt: skip
    wrong_purpose = _certctl(
        server, "certs", "list", **trust,
        CERTCTL_CLIENT_CERT=str(server_only / "tls.crt"),
        CERTCTL_CLIENT_KEY=str(server_only / "tls.key"),
    )  # fmt: skip
    assert wrong_purpose.returncode == 1
    assert "unsupported certificate" in wrong_purpose.stderr, wrong_purpose.stderr
    assert wrong_purpose.stderr.endswith(
        f" (the certificate in CERTCTL_CLIENT_CERT={server_only / 'tls.crt'} is no client "
        "certificate: its extendedKeyUsage lacks clientAuth; issue one with --profile client "
        "or server+client)\n"
    ), wrong_purpose.stderr
    # Encoded CN first, as `openssl req -subj /CN=bob/OU=ops/O=Example` does: the mapping
    # CN=*,OU=ops,O=Example does not match it. The refusal said "subject is not mapped" and
    # sent the user to CERTCTL_API_KEY; it names the subject as certctl compares it now.
    bob = _certctl(
        server, "auth", "whoami", **trust,
        CERTCTL_CLIENT_CERT=str(tmp_path / "bob" / "tls.crt"),
        CERTCTL_CLIENT_KEY=str(tmp_path / "bob" / "tls.key"),
    )  # fmt: skip
    assert (bob.returncode, bob.stdout) == (1, "")
    assert bob.stderr == (
        "certctl: error: HTTP 401: client certificate subject O=Example,OU=ops,CN=bob is not "
        "mapped to any role by auth.client-cert-mappings (a mapping's subject matches it only "
        "written in this order, RDN by RDN, '*' for any one value; or set CERTCTL_API_KEY to an "
        "API key)\n"
    )


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (
            "auth roles update r-admin",
            "nothing to change: give --permission, --no-permissions, --name, --allow-issuer, "
            "--allow-name or --no-constraints",
        ),
        (
            "auth actors update admin",
            "nothing to change: give --role, --no-roles or --name",
        ),
        # `-p "$PERM"` with PERM unset is not "no permissions": that has its own flag.
        (
            "auth roles update r-admin -p",
            "Invalid value for '--permission' / '-p': must not be empty "
            "(--no-permissions removes them all)",
        ),
        (
            "auth actors update admin -r",
            "Invalid value for '--role' / '-r': must not be empty (--no-roles removes them all)",
        ),
        (
            "auth roles create r-blank -p",
            "Invalid value for '--permission' / '-p': must not be empty",
        ),
        ("auth actors create blank -r", "Invalid value for '--role' / '-r': must not be empty"),
        (
            "auth roles update r-admin -p metrics.read --no-permissions",
            "--permission and --no-permissions contradict each other",
        ),
        (
            "auth actors update admin -r r-admin --no-roles",
            "--role and --no-roles contradict each other",
        ),
    ],
    ids=[
        "role-nothing",
        "actor-nothing",
        "blank-permission",
        "blank-role",
        "create-blank-permission",
        "create-blank-role",
        "role-both",
        "actor-both",
    ],
)
def test_update_without_a_clear_change_is_a_usage_error(
    default_server: CertctlServer, command: str, problem: str
) -> None:
    # Before, an empty PUT/PATCH went out and the unchanged object came back with status 0.
    argv = command.split()
    if argv[-1] in ("-p", "-r"):
        argv.append("")
    result = _certctl(default_server, *argv, **_admin_env(default_server))
    assert result.returncode == 2
    help_of = " ".join(command.split()[:3])
    assert result.stderr == f"certctl: error: {problem} (see 'certctl {help_of} --help')\n"
    assert result.stdout == ""


def test_a_role_and_an_actor_can_be_emptied_within_the_no_escalation_rules(
    default_server: CertctlServer,
) -> None:
    # Before, `--permission`/`--role` given no value was "nothing to change" and the CLI had no
    # way to send the [] the API accepts. Emptying is an edit like any other: whoever lacks
    # what the role or the actor holds now gets 403 (DESIGN §4, no escalation).
    editor_perms = ["auth.role.edit", "auth.actor.edit", "auth.role.assign"]
    with default_server.client(default_server.admin_key) as api:
        for path, body in (
            ("roles", {"id": "r-cli-emptied", "permissions": ["metrics.read"]}),
            ("roles", {"id": "r-cli-editor", "permissions": editor_perms}),
            ("actors", {"id": "cli-emptied", "roles": ["r-cli-emptied"]}),
            ("actors", {"id": "cli-editor", "roles": ["r-cli-editor"]}),
        ):
            assert api.post(f"/api/v1/auth/{path}", json=body).status_code == 201
        minted = api.post("/api/v1/auth/apikeys", json={"actor_id": "cli-editor"})
        editor_key = minted.json()["key_value"]
    editor = _admin_env(default_server) | {"CERTCTL_API_KEY": editor_key}
    admin = _admin_env(default_server)

    role = ("auth", "roles", "update", "r-cli-emptied", "--no-permissions")
    denied = _certctl(default_server, *role, **editor)
    assert (denied.returncode, denied.stdout) == (1, "")
    assert denied.stderr == (
        "certctl: error: HTTP 403: cannot edit role r-cli-emptied: no such role, or it holds "
        "permission(s) you lack (auth.role.read tells which)\n"
    )
    actor = ("auth", "actors", "update", "cli-emptied", "--no-roles")
    denied = _certctl(default_server, *actor, **editor)
    assert (denied.returncode, denied.stdout) == (1, "")
    assert denied.stderr == (
        "certctl: error: HTTP 403: cannot change actor cli-emptied's roles: no such actor, or "
        "it holds permission(s) you lack (auth.actor.read tells which)\n"
    )

    assert json.loads(ok(_certctl(default_server, *role, **admin)).stdout)["permissions"] == []
    assert json.loads(ok(_certctl(default_server, *actor, **admin)).stdout)["roles"] == []


def test_interrupted_request_says_so(default_server: CertctlServer) -> None:
    # Ctrl-C while waiting for a server that never answers (here: a TCP listener that never
    # speaks TLS). Before: status 130 and not a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
        env = clean | _admin_env(default_server) | {"CERTCTL_URL": f"https://127.0.0.1:{port}"}
        with subprocess.Popen(
            [require("certctl"), "certs", "list"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            # Once its connection is in (the TLS handshake now waits for an answer), well
            # inside the 30 s timeout; a fixed 2 s sleep before.
            silent.settimeout(20)
            waiting, _ = silent.accept()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            waiting.close()
    assert (proc.returncode, out, err) == (130, "", "certctl: error: interrupted\n")


def test_issue_from_an_intermediate_writes_the_root_as_ca_crt(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # ca.crt is what clients trust, as `cert issue` writes it: before, an intermediate
    # issuer's own certificate, which OpenSSL refuses as a CA file (error 2 at depth 1).
    env = _admin_env(default_server)
    issuer = f"sub-{os.getpid()}-{time.monotonic_ns()}"
    with default_server.client(default_server.admin_key) as admin:
        created = admin.post(
            "/api/v1/issuers",
            json={"id": issuer, "name": "Sub CA", "common_name": "Sub CA", "parent": "default"},
        )
        assert created.status_code == 201, created.text
        chain = admin.get(f"/api/v1/issuers/{issuer}/ca.pem", params={"chain": "true"})
        assert chain.text.count("BEGIN CERTIFICATE") == 2
        assert chain.text.endswith(default_server.ca.read_text())
        alone = admin.get(f"/api/v1/issuers/{issuer}/ca.pem")
        assert chain.text.startswith(alone.text)
        bad = admin.get(f"/api/v1/issuers/{issuer}/ca.pem", params={"chain": "yes"})
        assert bad.status_code == 400, bad.text
        assert bad.json()["detail"] == "chain=yes: must be true or false"
    out = tmp_path / "leaf"
    name = "via-sub.example.internal"
    ok(
        _certctl(
            default_server,
            "certs", "issue", "--issuer", issuer, "--cn", name, "--dns", name, "--out", str(out),
            **env,
        )
    )  # fmt: skip
    assert (out / "ca.crt").read_text() == default_server.ca.read_text()
    assert (out / "tls.crt").read_text().count("BEGIN CERTIFICATE") == 2  # leaf, Sub CA
    verify = ["openssl", "verify", "-x509_strict", "-purpose", "sslserver"]
    trust = ["-CAfile", out / "ca.crt", "-untrusted", out / "tls.crt"]
    assert ok(run(*verify, *trust, out / "tls.crt")).stdout == f"{out / 'tls.crt'}: OK\n"
    # The default issuer is a root: its ca.crt is the same file as before.
    root_out = tmp_path / "root-leaf"
    issued = ok(
        _certctl(default_server, "certs", "issue", "--cn", name, "--out", str(root_out), **env)
    )
    assert (root_out / "ca.crt").read_text() == default_server.ca.read_text()
    # The files it wrote, named as ca create and cert issue name theirs (in the JSON).
    assert json.loads(issued.stdout)["files"] == [
        str(root_out / "tls.crt"),
        str(root_out / "tls.key"),
        str(root_out / "ca.crt"),
    ]


def _public_key(path: Path) -> str:
    if path.name == "tls.crt":
        return ok(run("openssl", "x509", "-in", path, "-pubkey", "-noout")).stdout
    return ok(run("openssl", "pkey", "-in", path, "-pubout")).stdout


def test_renew_into_the_issue_directory(default_server: CertctlServer, tmp_path: Path) -> None:
    # Before, `certs renew` had no --out: the renewal's fresh key, returned once, came only
    # inside the JSON on stdout, where `certs issue --out web-1` had written tls.key 0600.
    env = _admin_env(default_server)
    out = tmp_path / "web"
    name = "renew-out.example.internal"
    issue = ("certs", "issue", "--cn", name, "--dns", name, "--out", str(out))
    issued = ok(_certctl(default_server, *issue, **env))
    cert_id = json.loads(issued.stdout)["id"]
    old_key = _public_key(out / "tls.key")
    # An existing tls.crt without --force: refused before the server renews anything.
    refused = _certctl(default_server, "certs", "renew", cert_id, "--out", str(out), **env)
    assert refused.returncode == 1
    assert (
        refused.stderr
        == f"certctl: error: {out}/tls.crt already exists; use --force to overwrite\n"
    )
    assert refused.stdout == ""
    first = ok(_certctl(default_server, "certs", "get", cert_id, **env))
    assert json.loads(first.stdout)["renewed_by"] is None

    renewed = ok(
        _certctl(default_server, "certs", "renew", cert_id, "--out", str(out), "--force", **env)
    )
    answer = json.loads(renewed.stdout)
    assert answer["out"] == str(out)
    assert answer["files"] == [str(out / n) for n in ("tls.crt", "tls.key", "ca.crt")]
    assert not any(k.endswith("_pem") for k in answer), answer
    assert "PRIVATE KEY" not in renewed.stdout + renewed.stderr
    assert (out / "tls.key").stat().st_mode & 0o777 == 0o600
    assert _public_key(out / "tls.key") == _public_key(out / "tls.crt") != old_key
    assert (out / "ca.crt").read_text() == default_server.ca.read_text()
    verify = ["openssl", "verify", "-purpose", "sslserver", "-CAfile", out / "ca.crt"]
    assert ok(run(*verify, out / "tls.crt")).stdout == f"{out / 'tls.crt'}: OK\n"
    now = ok(_certctl(default_server, "certs", "get", cert_id, **env))
    assert json.loads(now.stdout)["renewed_by"] == answer["id"]

    # A CSR-issued certificate keeps the requester's key: no tls.key is written.
    ok(run("certctl", "csr", "create", "--cn", name, "--out", tmp_path / "req"))
    csr = str(tmp_path / "req" / "tls.csr")
    from_csr = ok(_certctl(default_server, "certs", "issue", "--csr", csr, **env))
    again = tmp_path / "again"
    csr_id = json.loads(from_csr.stdout)["id"]
    ok(_certctl(default_server, "certs", "renew", csr_id, "--out", str(again), **env))
    assert sorted(p.name for p in again.iterdir()) == ["ca.crt", "tls.crt"]
    assert _public_key(again / "tls.crt") == _public_key(tmp_path / "req" / "tls.key")


def test_a_key_of_another_certificate_is_not_left_beside_the_new_one(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # Before, `certs issue --csr … --out web --force` over a directory of a server-keyed
    # certificate replaced tls.crt and left its tls.key: nginx refuses that pair.
    env = _admin_env(default_server)
    name = "stale-key.example.internal"
    web = tmp_path / "web"
    ok(
        _certctl(
            default_server, "certs", "issue", "--cn", name, "--dns", name, "--out", str(web), **env
        )
    )
    ok(run("certctl", "csr", "create", "--cn", name, "--dns", name, "--out", tmp_path / "req"))
    csr = str(tmp_path / "req" / "tls.csr")
    posts = default_server.logs()[1].count("POST /api/v1/certificates ")
    # A directory holding only that key: refused without --force, before anything is issued.
    (web / "tls.crt").unlink()
    (web / "ca.crt").unlink()
    refused = _certctl(default_server, "certs", "issue", "--csr", csr, "--out", str(web), **env)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"certctl: error: {web}/tls.key is the key of another certificate, not the CSR's: "
        "--force removes it with the certificate it went with\n"
    )
    assert default_server.logs()[1].count("POST /api/v1/certificates ") == posts
    forced = ok(
        _certctl(
            default_server, "certs", "issue", "--csr", csr, "--out", str(web), "--force", **env
        )
    )
    answer = json.loads(forced.stdout)
    assert answer["files"] == [str(web / "tls.crt"), str(web / "ca.crt")]
    assert answer["removed"] == [str(web / "tls.key")]
    assert sorted(p.name for p in web.iterdir()) == ["ca.crt", "tls.crt"]
    assert _public_key(web / "tls.crt") == _public_key(tmp_path / "req" / "tls.key")
    csr_id = answer["id"]

    # The CSR's own key (csr create, then issue into the same directory) stays: it matches.
    same = tmp_path / "same"
    ok(run("certctl", "csr", "create", "--cn", name, "--out", same))
    kept = ok(
        _certctl(
            default_server,
            "certs",
            "issue",
            "--csr",
            str(same / "tls.csr"),
            "--out",
            str(same),
            **env,
        )
    )
    kept_answer = json.loads(kept.stdout)
    assert "removed" not in kept_answer
    assert _public_key(same / "tls.key") == _public_key(same / "tls.crt")

    # Renewing the CSR's certificate into a server-keyed certificate's directory: the same.
    other = tmp_path / "other"
    ok(
        _certctl(
            default_server,
            "certs",
            "issue",
            "--cn",
            name,
            "--dns",
            name,
            "--out",
            str(other),
            **env,
        )
    )
    renewed = ok(
        _certctl(default_server, "certs", "renew", csr_id, "--out", str(other), "--force", **env)
    )
    answer = json.loads(renewed.stdout)
    assert answer["files"] == [str(other / "tls.crt"), str(other / "ca.crt")]
    assert answer["removed"] == [str(other / "tls.key")]
    assert sorted(p.name for p in other.iterdir()) == ["ca.crt", "tls.crt"]
    # Renewed into its own directory, beside its key: the key stays.
    again = ok(
        _certctl(
            default_server,
            "certs",
            "renew",
            kept_answer["id"],
            "--out",
            str(same),
            "--force",
            **env,
        )
    )
    assert "removed" not in json.loads(again.stdout)
    assert _public_key(same / "tls.key") == _public_key(same / "tls.crt")


def test_a_csr_key_waiting_for_its_certificate_is_never_removed(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # `csr create --out web --force` over a live directory (a new key and tls.csr beside the
    # old tls.crt), then `certs renew OLD --out web --force` by mistake for `certs issue
    # --csr web/tls.csr`: before, the new key was removed (or overwritten) with no way back.
    env = _admin_env(default_server)
    name = "pending-key.example.internal"
    ok(run("certctl", "csr", "create", "--cn", name, "--dns", name, "--out", tmp_path / "req"))
    other_csr = str(tmp_path / "req" / "tls.csr")
    from_csr = ok(_certctl(default_server, "certs", "issue", "--csr", other_csr, **env))
    server_keyed = ok(_certctl(default_server, "certs", "issue", "--cn", name, "--dns", name,
                               "--out", str(tmp_path / "web"), **env))  # fmt: skip
    web = tmp_path / "web"
    ok(run("certctl", "csr", "create", "--cn", name, "--dns", name, "--out", web, "--force"))
    before = {p.name: p.read_bytes() for p in web.iterdir()}
    posts = default_server.logs()[1].count("POST /api/v1/")
    expected = (
        f"certctl: error: {web}/tls.key is the key of {web}/tls.csr, which has no certificate "
        f"yet: writing another certificate into {web} would lose it (nothing was issued); "
        f"'certctl certs issue --csr {web}/tls.csr --out {web} --force' issues the CSR's, or "
        "give another --out\n"
    )
    for command in (
        ("certs", "renew", json.loads(from_csr.stdout)["id"]),  # tls.key would be removed
        ("certs", "renew", json.loads(server_keyed.stdout)["id"]),  # tls.key overwritten
        ("certs", "issue", "--csr", other_csr),
        ("certs", "issue", "--cn", name),
    ):
        for force in ((), ("--force",)):
            refused = _certctl(default_server, *command, "--out", str(web), *force, **env)
            assert (refused.returncode, refused.stdout) == (1, ""), (command, force)
            assert refused.stderr == expected, (command, force)
    assert default_server.logs()[1].count("POST /api/v1/") == posts
    assert {p.name: p.read_bytes() for p in web.iterdir()} == before

    # What the message says to run: the CSR's certificate goes beside its key.
    issued = ok(_certctl(default_server, "certs", "issue", "--csr", str(web / "tls.csr"),
                         "--out", str(web), "--force", **env))  # fmt: skip
    assert "removed" not in json.loads(issued.stdout)
    assert _public_key(web / "tls.crt") == _public_key(web / "tls.key")
    assert (web / "tls.key").read_bytes() == before["tls.key"]
    # Certified now: a renewal of another certificate into web is an ordinary overwrite.
    ok(_certctl(default_server, "certs", "renew", json.loads(server_keyed.stdout)["id"],
                "--out", str(web), "--force", **env))  # fmt: skip
    assert _public_key(web / "tls.crt") == _public_key(web / "tls.key")


def test_an_encrypted_key_beside_a_csr_waiting_for_its_certificate_is_never_removed(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # `openssl req` without -nodes over a live directory: an encrypted tls.key beside its
    # tls.csr. certs issue/renew take no password for it, so it could not be compared with
    # the CSR, and a renewal into the directory overwrote it, never certified.
    env = _admin_env(default_server)
    name = "encrypted-pending.example.internal"
    web = tmp_path / "web"
    issued = ok(_certctl(default_server, "certs", "issue", "--cn", name, "--dns", name,
                         "--out", str(web), **env))  # fmt: skip
    key, csr = web / "tls.key", web / "tls.csr"
    ok(run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-keyout", key, "-out", csr, "-subj", f"/CN={name}", "-addext",
           f"subjectAltName=DNS:{name}", "-passout", "pass:hunter2pw"))  # fmt: skip
    before = {p.name: p.read_bytes() for p in web.iterdir()}
    posts = default_server.logs()[1].count("POST /api/v1/")
    expected = (
        f"certctl: error: {key} is encrypted and {csr} beside it has no certificate yet: "
        f"taken for the CSR's key (not checked without its password), writing another "
        f"certificate into {web} would lose it (nothing was issued); 'certctl certs issue "
        f"--csr {csr} --out {web} --force' issues the CSR's, or give another --out (if {key} "
        f"is not the key of {csr}, move the CSR away)\n"
    )
    for command in (
        ("certs", "renew", json.loads(issued.stdout)["id"]),
        ("certs", "issue", "--cn", name),
    ):
        for force in ((), ("--force",)):
            refused = _certctl(default_server, *command, "--out", str(web), *force, **env)
            assert (refused.returncode, refused.stdout) == (1, ""), (command, force)
            assert refused.stderr == expected, (command, force)
    assert default_server.logs()[1].count("POST /api/v1/") == posts
    assert {p.name: p.read_bytes() for p in web.iterdir()} == before

    # What the message says to run: the CSR's certificate goes beside its key, kept.
    from_csr = ok(_certctl(default_server, "certs", "issue", "--csr", str(csr),
                           "--out", str(web), "--force", **env))  # fmt: skip
    assert "removed" not in json.loads(from_csr.stdout)
    assert (web / "tls.key").read_bytes() == before["tls.key"]
    opened = ok(run("openssl", "pkey", "-in", key, "-passin", "pass:hunter2pw", "-pubout"))
    assert _public_key(web / "tls.crt") == opened.stdout
    # Certified now: a renewal of another certificate into web is an ordinary overwrite.
    ok(_certctl(default_server, "certs", "renew", json.loads(issued.stdout)["id"],
                "--out", str(web), "--force", **env))  # fmt: skip
    assert _public_key(web / "tls.crt") == _public_key(web / "tls.key")


def test_whoami_checks_the_settings(default_server: CertctlServer) -> None:
    # `certctl auth whoami`: the README's first curl line, through the CLI's CERTCTL_*.
    env = _admin_env(default_server)
    me = json.loads(ok(_certctl(default_server, "auth", "whoami", **env)).stdout)
    assert (me["actor_id"], me["roles"], me["auth_method"]) == ("admin", ["r-admin"], "api_key")
    wrong = _certctl(default_server, "auth", "whoami", **(env | {"CERTCTL_API_KEY": "cctl_x_y"}))
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("certctl: error: HTTP 401: "), wrong.stderr
    assert len(wrong.stderr.splitlines()) == 1


# --- list commands: a table on a terminal, the server's JSON unchanged elsewhere ----------


def _api_json(server: CertctlServer, path: str, **params: str) -> str:
    """The server's answer as the list commands have always printed it (json.dumps, indent 2)."""
    with server.client(server.admin_key) as client:
        response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return json.dumps(response.json(), indent=2) + "\n"


def _apply_service(server: CertctlServer, tmp_path: Path, name: str) -> None:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(
        f"apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {{name: {name}}}\n"
        "spec: {http: {tls: {selfSignedCertificate: {subjectAltNames: [{dns: x.example}]}}}}\n"
    )
    ok(_certctl(server, "apply", "-f", str(spec), **_admin_env(server)))


def _service_serial(server: CertctlServer, name: str) -> str | None:
    with server.client(server.admin_key) as client:
        serial = client.get(f"/api/v1/services/{name}").json()["status"]["serial"]
    return serial if isinstance(serial, str) else None


def test_list_commands_piped_or_with_o_json_print_the_json_they_always_did(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    env = _admin_env(default_server)
    for n in (1, 2):
        name = f"list-json-{n}.example.internal"
        ok(_certctl(default_server, "certs", "issue", "--cn", name, "--dns", name, **env))
    _apply_service(default_server, tmp_path, "list-json")
    wait_until(lambda: _service_serial(default_server, "list-json") is not None, "a serial", 30)
    cases = [
        (["certs", "list", "-q", "list-json-", "--limit", "1"], "/api/v1/certificates",
         {"q": "list-json-", "limit": "1"}),
        (["auth", "apikeys", "list"], "/api/v1/auth/apikeys", {}),
        (["auth", "roles", "list"], "/api/v1/auth/roles", {}),
        (["auth", "actors", "list"], "/api/v1/auth/actors", {}),
        (["services", "list"], "/api/v1/services", {}),
        (["services", "clients", "list", "list-json"], "/api/v1/services/list-json/clients", {}),
    ]  # fmt: skip

    def stable(text: str) -> str:
        # Times that move between two calls: the admin key's last_used_at (these very calls
        # use it; once a minute) and the services' condition times (each reconcile pass of
        # the shared server). Both differed across calls in CI runs; everything else is
        # compared byte for byte.
        return re.sub(r'"(last_used_at|at)": "[^"]*"', r'"\1": "…"', text)

    for argv, path, params in cases:
        piped = ok(_certctl(default_server, *argv, **env)).stdout
        assert stable(piped) == stable(_api_json(default_server, path, **params)), argv
        for option in ("-o", "--output"):
            for value in ("json", "JSON"):
                chosen = ok(_certctl(default_server, *argv, option, value, **env)).stdout
                assert stable(chosen) == stable(piped), (argv, option, value)
    assert json.loads(piped)["items"] == []
    bad = _certctl(default_server, "certs", "list", "-o", "yaml", **env)
    assert bad.returncode == 2
    assert bad.stderr.startswith(
        "certctl: error: Invalid value for '--output' / '-o': yaml: expected table or json"
    ), bad.stderr


def _rows(stdout: str) -> list[list[str]]:
    """A table's lines split into cells (two or more blanks apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()]


def test_certs_list_table_shows_the_useful_columns_and_the_next_page(
    default_server: CertctlServer,
) -> None:
    env = _admin_env(default_server)
    ids = []
    for n in (1, 2):
        name = f"list-table-{n}.example.internal"
        issued = ok(_certctl(default_server, "certs", "issue", "--cn", name, **env)).stdout
        ids.append(json.loads(issued)["id"])
    first = ok(
        _certctl(default_server, "certs", "list", "-q", "list-table-", "--limit", "1", "-o",
                 "table", **env)
    ).stdout  # fmt: skip
    header, row, more = _rows(first)
    assert header == ["ID", "COMMON NAME", "STATUS", "NOT AFTER", "ISSUER", "PROFILE"]
    # Newest first: the second certificate; 90 days from now is 89 days and some hours left.
    assert row[:3] == [ids[1], "list-table-2.example.internal", "active"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \(in 89 days\)", row[3]), row
    assert row[4:] == ["default", "server"]
    assert "BEGIN CERTIFICATE" not in first
    # The last line is the command for the next page, with the same filters.
    next_cursor = json.loads(_api_json(default_server, "/api/v1/certificates",
                                       q="list-table-", limit="1"))["next_cursor"]  # fmt: skip
    assert more == [
        f"more certificates: certctl certs list --query list-table- --limit 1 -o table "
        f"--cursor {next_cursor}"
    ]
    second = ok(_certctl(default_server, *shlex.split(more[0])[3:], **env)).stdout
    assert [row[:2] for row in _rows(second)[1:]] == [[ids[0], "list-table-1.example.internal"]]
    empty = ok(_certctl(default_server, "certs", "list", "-q", "no-such-cn", "-o", "table", **env))
    assert empty.stdout == "no certificates match\n"


def test_apikeys_roles_actors_and_services_tables(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    env = _admin_env(default_server)
    ok(_certctl(default_server, "auth", "actors", "create", "list-table", "-r", "r-viewer",
                "--name", "List Table", **env))  # fmt: skip
    created = ok(
        _certctl(default_server, "auth", "apikeys", "create", "list-table", "--name", "lt-v1",
                 "--expires-at", "2099-01-01T00:00:00Z", **env)
    ).stdout  # fmt: skip
    key = json.loads(created)
    listing = ["auth", "apikeys", "list", "--actor", "list-table", "-o", "table"]
    table = ok(_certctl(default_server, *listing, **env)).stdout
    _assert_no_key(ok(_certctl(default_server, *listing, **env)), secret_of(key["key_value"]))
    assert _rows(table)[0] == ["ID", "NAME", "ACTOR", "STATUS", "EXPIRES", "LAST USED"]
    [row] = _rows(table)[1:]
    assert row[:4] == [key["id"], "lt-v1", "list-table", "active"]
    assert re.fullmatch(r"2099-01-01 \(in \d+ days\)", row[4]), row
    assert row[5] == "never"
    whoami = _certctl(default_server, "auth", "whoami", CERTCTL_API_KEY=key["key_value"],
                      CERTCTL_CA_CERT=str(default_server.ca))  # fmt: skip
    ok(whoami)
    ok(_certctl(default_server, "auth", "apikeys", "revoke", key["id"], **env))
    [row] = _rows(ok(_certctl(default_server, *listing, **env)).stdout)[1:]
    assert row[3] == "revoked"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", row[5]), row
    ok(_certctl(default_server, "auth", "actors", "create", "list-table-nokeys", **env))
    nokeys = ["auth", "apikeys", "list", "--actor", "list-table-nokeys", "-o", "table"]
    assert ok(_certctl(default_server, *nokeys, **env)).stdout == "no API keys\n"

    roles = _rows(
        ok(_certctl(default_server, "auth", "roles", "list", "-o", "table", **env)).stdout
    )
    assert roles[0] == ["ID", "NAME", "BUILT IN", "PERMISSIONS", "CONSTRAINTS"]
    assert ["r-auditor", "Auditor", "yes", "audit.read", "-"] in roles
    # The catalogue `auth roles create -p` takes names from, as a table and as the API's JSON.
    api_json = _api_json(default_server, "/api/v1/auth/permissions")
    catalogue = json.loads(api_json)["items"]
    assert "metrics.read" in catalogue
    table = ok(_certctl(default_server, "auth", "permissions", "-o", "table", **env)).stdout
    assert _rows(table) == [["PERMISSION"], *([p] for p in catalogue)]
    assert ok(_certctl(default_server, "auth", "permissions", **env)).stdout == api_json
    actors = _rows(
        ok(_certctl(default_server, "auth", "actors", "list", "-o", "table", **env)).stdout
    )
    assert actors[0] == ["ID", "NAME", "ROLES", "CREATED"]
    [mine] = [row for row in actors if row[0] == "list-table"]
    assert mine[1:3] == ["List Table", "r-viewer"]

    _apply_service(default_server, tmp_path, "list-table")
    wait_until(lambda: _service_serial(default_server, "list-table") is not None, "a serial", 30)
    serial = _service_serial(default_server, "list-table")
    services = _rows(ok(_certctl(default_server, "services", "list", "-o", "table", **env)).stdout)
    assert services[0] == ["NAME", "READY", "FAILED", "SERIAL", "NOT AFTER", "TARGETS", "MESSAGE"]
    [service] = [row for row in services if row[0] == "list-table"]
    assert service[1:4] == ["True", "False", serial]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \(in 36[45] days\)", service[4]), service
    clients = ["services", "clients", "list", "list-table", "-o", "table"]
    assert ok(_certctl(default_server, *clients, **env)).stdout == (
        "no client certificates trusted by list-table\n"
    )


def test_services_status_shows_whole_serials_and_takes_o_json(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    env = _admin_env(default_server)
    _apply_service(default_server, tmp_path, "status-serial")
    wait_until(lambda: _service_serial(default_server, "status-serial") is not None, "a serial", 30)
    serial = _service_serial(default_server, "status-serial")
    assert serial is not None
    assert len(serial) > 16  # before, cut to 15 characters and an ellipsis
    # The table as it always was by default, piped too (scripts grep it), and with -o table.
    for argv in ([], ["-o", "table"], ["--output", "TABLE"], ["status-serial", "-o", "table"]):
        table = ok(_certctl(default_server, "services", "status", *argv, **env)).stdout
        header, *lines = table.splitlines()
        assert header.split()[:5] == ["NAME", "READY", "RENEWING", "FAILED", "SERIAL"], argv
        [row] = [line.split() for line in lines if line.split()[0] == "status-serial"]
        assert row[1:5] == ["True", "False", "False", serial], (argv, row)
        assert "…" not in table
        # The column fits the whole serial: NOT AFTER starts where its header does.
        line = next(line for line in lines if line.startswith("status-serial "))
        assert line[header.index("NOT AFTER") - 1 : header.index("NOT AFTER")] == " "
        assert line[header.index("NOT AFTER")].isdigit(), line
    # -o json: the server's answer as is, as the list commands print it.
    for argv, path in [
        (["-o", "json"], "/api/v1/services"),
        (["--output", "JSON"], "/api/v1/services"),
        (["status-serial", "-o", "json"], "/api/v1/services/status-serial"),
    ]:
        shown = ok(_certctl(default_server, "services", "status", *argv, **env)).stdout
        assert shown == _api_json(default_server, path), argv
    assert json.loads(shown)["status"]["serial"] == serial
    bad = _certctl(default_server, "services", "status", "-o", "yaml", **env)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.startswith(
        "certctl: error: Invalid value for '--output' / '-o': yaml: expected table or json"
    ), bad.stderr
    # `services outputs` writes what the service's clients trust (before: curl and jq only);
    # here, on a service already reconciled, rather than waiting for another one.
    out = tmp_path / "public"
    result = ok(
        _certctl(default_server, "services", "outputs", "status-serial", "certs-public",
                 "--out", str(out), **env)
    )  # fmt: skip
    assert result.stdout == f"status-serial-http-certs-public: wrote {out}/ca.crt, {out}/tls.crt\n"
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt"]
    assert openssl_verify("-CAfile", out / "ca.crt", out / "tls.crt") == "OK"
    # Its own CA, not the server's: the service certificate is not trusted through that one.
    assert openssl_verify("-CAfile", default_server.ca, out / "tls.crt") == (
        "unable to get local issuer certificate"
    )


def test_list_on_a_terminal_is_a_table_by_default(default_server: CertctlServer) -> None:
    # As gh does: a terminal gets the table without -o; the JSON is for pipes and files.
    master, terminal = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env = clean | _admin_env(default_server) | {"CERTCTL_URL": default_server.url}
    try:
        proc = subprocess.Popen(
            [require("certctl"), "auth", "roles", "list"],
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=subprocess.PIPE,
            env=env | {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
        )
    finally:
        os.close(terminal)
    output = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the program ended and closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    assert proc.wait(timeout=60) == 0
    assert proc.stderr is not None
    assert proc.stderr.read() == b""
    proc.stderr.close()
    text = re.sub(r"\x1b\[[0-9;]*m", "", output.decode().replace("\r\n", "\n"))
    assert _rows(text)[0] == ["ID", "NAME", "BUILT IN", "PERMISSIONS", "CONSTRAINTS"], text
    assert ["r-metrics-read", "Metrics reader", "yes", "metrics.read", "-"] in _rows(text)
    assert "{" not in text


def test_services_renew_says_a_custom_certificate_is_renewed_by_its_owner(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # "renewal requested", exit 0, and nothing happened: a tls.crt + tls.key served from
    # certificate.secretName is served as it is, and the request is dropped at the next pass.
    env = _admin_env(default_server)
    spec = tmp_path / "svc.yaml"
    spec.write_text(
        "apiVersion: certctl.io/v1\nkind: TLSService\nmetadata: {name: renew-own}\n"
        "spec: {http: {tls: {certificate: {secretName: renew-own-cert}}}}\n"
    )
    ok(_certctl(default_server, "apply", "-f", str(spec), **env))
    own = ok(_certctl(default_server, "services", "renew", "renew-own", **env))
    assert own.stdout == "tlsservice/renew-own renewal requested\n"
    assert "certctl: warning: service renew-own uses secret renew-own-cert" in own.stderr
    assert "tls.crt + tls.key there is served as it is" in own.stderr
    # The service's own certificate gets no warning: tests/services/test_reconcile.py.


def test_a_mistyped_issuer_id_is_answered_with_the_closest_one(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    # `--issuer client-ca` for clients-ca: a bare "issuer client-ca not found" left the user
    # to find `certctl issuers list` alone.
    env = _admin_env(default_server)
    ok(_certctl(default_server, "issuers", "create", "typo-clients-ca", **env))
    typo = "typo-client-ca"
    expected = (
        f"certctl: error: HTTP 404: issuer {typo} not found (did you mean typo-clients-ca?)\n"
    )
    for command in (
        ["certs", "issue", "--cn", "t", "--profile", "client", "--issuer", typo],
        ["certs", "issue", "--cn", "t", "--issuer", typo, "--out", str(tmp_path / "t")],
        ["issuers", "get", typo],
        ["issuers", "create", "typo-sub", "--parent", typo],
        ["issuers", "revoke", typo],
        ["issuers", "ca", typo],
        ["issuers", "crl", typo, "--pem"],
    ):
        result = _certctl(default_server, *command, **env)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", expected), command
    assert not (tmp_path / "t").exists()
    # Issuer ids are lower case: one typed in capitals is the one meant, however many issuers.
    shouted = _certctl(default_server, "issuers", "get", "TYPO-CLIENTS-CA", **env)
    assert shouted.stderr == (
        "certctl: error: HTTP 404: issuer TYPO-CLIENTS-CA not found (did you mean "
        "typo-clients-ca?)\n"
    )
    # A listing filtered by it printed "no certificates match" and nothing else, as for an
    # issuer without certificates; the listing is the same (piped scripts), with a warning.
    for output, shown in (("table", "no certificates match\n"), ("json", None)):
        listed = ok(_certctl(default_server, "certs", "list", "--issuer", typo, "-o", output,
                             **env))  # fmt: skip
        if shown is None:
            assert json.loads(listed.stdout) == {"items": [], "next_cursor": None}
        else:
            assert listed.stdout == shown
        assert listed.stderr == (
            f"certctl: warning: issuer {typo} not found (did you mean typo-clients-ca?): "
            f"--issuer {typo} matches nothing\n"
        )
    empty_issuer = ok(_certctl(default_server, "certs", "list", "--issuer", "typo-clients-ca",
                               "-o", "table", **env))  # fmt: skip
    assert (empty_issuer.stdout, empty_issuer.stderr) == ("no certificates match\n", "")
    # Only a caller that may list the issuers (issuer.read) is shown their ids.
    ok(_certctl(default_server, "auth", "roles", "create", "r-typo-issue", "-p", "cert.issue",
                **env))  # fmt: skip
    ok(_certctl(default_server, "auth", "actors", "create", "typo-issuer", "-r", "r-typo-issue",
                **env))  # fmt: skip
    key = ok(_certctl(default_server, "auth", "apikeys", "create", "typo-issuer", "--out", "-",
                      **env)).stdout.strip()  # fmt: skip
    forbidden_before = _forbidden_count(default_server)
    for credentials in ({"CERTCTL_API_KEY": key}, {}):  # none: `issuers crl` is public
        command = ["certs", "issue", "--cn", "t", "--issuer", typo] if credentials else []
        command = command or ["issuers", "crl", typo, "--pem"]
        result = _certctl(
            default_server, *command, CERTCTL_CA_CERT=str(default_server.ca), **credentials
        )
        assert result.stderr == (
            f"certctl: error: HTTP 404: issuer {typo} not found ('certctl issuers list' shows "
            "the issuer ids)\n"
        ), command
    # Nor did the hint ask for the list to see a 403: each such typo counted as a refused
    # permission (certctl_auth_failures_total{reason="forbidden"}), the escalation attempts an
    # operator alerts on.
    assert _forbidden_count(default_server) == forbidden_before


def _forbidden_count(server: CertctlServer) -> float:
    with server.client(server.admin_key) as admin:
        scrape = admin.get("/api/v1/metrics/prometheus").text
    (line,) = [x for x in scrape.splitlines() if x.startswith(
        'certctl_auth_failures_total{reason="forbidden"} ')]  # fmt: skip
    return float(line.split()[-1])


def test_apikey_expiry_is_checked_by_the_cli_and_a_date_is_utc(
    default_server: CertctlServer,
) -> None:
    # `--expires-at tomorrow` got the server's "expires_at: Input should be a valid datetime
    # or date, input is too short", and `--expires-at 2099-01-01` "expires_at: needs a time
    # zone": the JSON field's name in pydantic's words, never the option's.
    env = _admin_env(default_server)
    ok(_certctl(default_server, "auth", "actors", "create", "expiry-cli", **env))
    refused = _certctl(default_server, "auth", "apikeys", "create", "expiry-cli",
                       "--expires-at", "tomorrow", **env)  # fmt: skip
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        "certctl: error: Invalid value for '--expires-at': tomorrow: not an ISO 8601 date or "
        "time (e.g. 2027-01-01 or 2027-01-01T00:00:00Z) (see 'certctl auth apikeys create "
        "--help')\n"
    )
    past = _certctl(default_server, "auth", "apikeys", "create", "expiry-cli",
                    "--expires-at", "2020-01-01", **env)  # fmt: skip
    assert (past.returncode, past.stdout) == (2, "")
    assert past.stderr == (
        "certctl: error: Invalid value for '--expires-at': 2020-01-01: in the past; a key must "
        "expire in the future (see 'certctl auth apikeys create --help')\n"
    )
    created = ok(_certctl(default_server, "auth", "apikeys", "create", "expiry-cli",
                          "--expires-at", "2099-01-01", **env))  # fmt: skip
    assert json.loads(created.stdout)["expires_at"] == "2099-01-01T00:00:00+00:00"
    listing = _certctl(default_server, "auth", "apikeys", "list", "--actor", "expiry-cli", **env)
    listed = json.loads(ok(listing).stdout)
    assert [k["expires_at"] for k in listed["items"]] == ["2099-01-01T00:00:00+00:00"]
    # An offset with seconds, which Python reads and the API's parser did not: sent in UTC.
    seconds = ok(_certctl(default_server, "auth", "apikeys", "create", "expiry-cli", "--name",
                          "expiry-seconds", "--expires-at", "2099-01-01T12:00:00+05:30:30",
                          **env))  # fmt: skip
    assert json.loads(seconds.stdout)["expires_at"] == "2099-01-01T06:29:30+00:00"


def test_certs_issue_checks_the_profile_as_cert_issue_does(default_server: CertctlServer) -> None:
    # `--profile clien` got "HTTP 400: profile: Input should be 'server', 'client' or
    # 'server+client'" and `--profile Client`, which `cert issue` takes, the same.
    env = _admin_env(default_server)
    name = "profile-cli.example.internal"
    refused = _certctl(default_server, "certs", "issue", "--cn", name, "--profile", "clien", **env)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        "certctl: error: Invalid value for '--profile': clien: unknown profile (choose one of "
        "server, client, server+client) (see 'certctl certs issue --help')\n"
    )
    issued = ok(_certctl(default_server, "certs", "issue", "--cn", name, "--profile", "Client",
                         **env))  # fmt: skip
    shown = ok(_certctl(default_server, "certs", "get", json.loads(issued.stdout)["id"], **env))
    assert json.loads(shown.stdout)["profile"] == "client"


@pytest.mark.parametrize("on_path", [True, False], ids=["certctl-on-path", "venv-off-path"])
def test_the_start_banner_cli_line_works_as_printed(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_path: bool
) -> None:
    # The notice gave a curl line only: a new user found the CERTCTL_* settings, and the CA
    # file's path, in the README. A data directory with a space: the paths are quoted.
    # Off PATH (`make run` runs .venv/bin/certctl, a shell without the venv finds no certctl),
    # the line said `certctl auth whoami` too: "certctl: command not found" when pasted.
    certctl = require("certctl")
    system_path = "/usr/local/bin:/usr/bin:/bin"
    path = f"{Path(certctl).parent}:{system_path}" if on_path else system_path
    monkeypatch.setenv("PATH", path)  # the server's, and the shell's the line is pasted in
    server = start_server(data_dir=tmp_path / "data dir")
    out, _ = server.logs()
    (line,) = [x for x in out.splitlines() if x.startswith("CLI: export ")]
    ca, key_file = (shlex.quote(str(p.resolve())) for p in (server.ca, server.data_dir /
                    "admin-api-key"))  # fmt: skip
    assert "'" in ca
    command = "certctl" if on_path else shlex.quote(str(Path(certctl).resolve()))
    assert line == (
        f"CLI: export CERTCTL_URL={server.url} CERTCTL_CA_CERT={ca} "
        f'CERTCTL_API_KEY="$(cat {key_file})"; {command} auth whoami'
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    result = run("bash", "-c", line.removeprefix("CLI: "), env=clean | {"PATH": path})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["actor_id"] == "admin"
    # The curl line above it, pasted the same way: its paths were not quoted, so the space
    # split them ("curl: (77) error setting certificate file: /…/data").
    (curl,) = [x for x in out.splitlines() if x.startswith("Try: curl ")]
    result = run("bash", "-c", f"{curl.removeprefix('Try: ')} -sS --fail", env=clean)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["actor_id"] == "admin"


def test_an_auditor_reads_the_audit_log_with_certctl_audit_list(
    default_server: CertctlServer,
) -> None:
    # There was no `certctl audit`: an auditor had to find the route and page it with curl.
    admin = {"CERTCTL_API_KEY": default_server.admin_key, "CERTCTL_CA_CERT": str(default_server.ca)}
    ok(
        _certctl(
            default_server, "auth", "actors", "create", "cli-auditor", "-r", "r-auditor", **admin
        )
    )
    minted = ok(
        _certctl(default_server, "auth", "apikeys", "create", "cli-auditor", "--out", "-", **admin)
    )
    auditor = {**admin, "CERTCTL_API_KEY": minted.stdout.strip()}
    name = "audit-cli.example.internal"
    by_cli = json.loads(
        ok(_certctl(default_server, "certs", "issue", "--cn", name, "--dns", name, **admin)).stdout
    )
    curl = run(
        "curl", "-sS", "--cacert", default_server.ca,
        "-H", f"Authorization: Bearer {default_server.admin_key}",
        "-H", "Content-Type: application/json",
        "-d", json.dumps({"issuer": "default", "common_name": name, "dns_names": [name]}),
        f"{default_server.url}/api/v1/certificates",
    )  # fmt: skip
    by_curl = json.loads(ok(curl).stdout)

    listed = ok(
        _certctl(
            default_server, "audit", "list", "--target", by_cli["id"], "--actor", "admin",
            **auditor,
        )
    )  # fmt: skip
    (event,) = json.loads(listed.stdout)["items"]
    assert event["action"] == "certificate.issue"
    assert event["target"] == f"{by_cli['id']} serial {by_cli['serial']}"
    issued = json.loads(
        ok(
            _certctl(
                default_server, "audit", "list", "--action", "certificate.issue", "--limit", "2",
                **auditor,
            )
        ).stdout
    )  # fmt: skip
    # The CLI's call and curl's read the same, but for the certificate and the time.
    events = issued["items"]
    assert [e["target"].split()[0] for e in events] == [by_curl["id"], by_cli["id"]]
    fixed = [{k: v for k, v in e.items() if k not in ("id", "at", "target")} for e in events]
    assert (
        fixed[0]
        == fixed[1]
        == {
            "actor": "admin",
            "action": "certificate.issue",
            "outcome": "success",
            "source": "127.0.0.1",
            "detail": "",
            "credential": f"apikey {default_server.admin_key.split('_')[1]}",
        }
    )

    table = ok(
        _certctl(default_server, "audit", "list", "--actor", "admin", "--limit", "1", "-o", "table",
                 **auditor)
    )  # fmt: skip
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "TIME", "ACTOR", "KEY", "ACTION", "TARGET", "OUTCOME", "SOURCE", "DETAIL"
    ]  # fmt: skip
    # Which of admin's keys made the call: the table said only "admin".
    admin_key_id = default_server.admin_key.split("_")[1]
    assert re.search(
        rf" \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC +admin +{admin_key_id} +certificate\.issue ",
        lines[1],
    ), lines
    # --credential takes the id as the KEY column shows it, as the API's form too.
    for credential in (admin_key_id, f"apikey {admin_key_id}"):
        by_key = ok(
            _certctl(default_server, "audit", "list", "--credential", credential, "--action",
                     "certificate.issue", **auditor)
        )  # fmt: skip
        assert [e["target"] for e in json.loads(by_key.stdout)["items"]][:2] == [
            e["target"] for e in events
        ]
    assert lines[-1].startswith("more events: certctl audit list --actor admin --limit 1 -o table")

    refused = _certctl(default_server, "audit", "list", "--since", "yesterday", **auditor)
    assert refused.returncode == 2  # checked before the request: a usage error
    assert refused.stderr.startswith(
        "certctl: error: Invalid value for --since: yesterday: not an ISO 8601 time"
    )
    # The auditor reads, and changes nothing.
    denied = _certctl(default_server, "certs", "revoke", by_cli["id"], **auditor)
    assert denied.returncode == 1
    assert "missing permission cert.revoke" in denied.stderr


def test_certs_import_records_an_openssl_leaf_and_never_sends_a_key(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    """`certs import FILE…` prints what it recorded; a key file is refused before any request."""
    env = _admin_env(default_server)
    ca_key, ca_crt = tmp_path / "old-ca.key", tmp_path / "old-ca.crt"
    openssl_req(ca_key, ca_crt, "/CN=CLI Import Old CA", "-days", "365", x509=True)
    ok(_certctl(default_server, "issuers", "import", "cli-old-ca", "--cert", str(ca_crt),
                "--key", str(ca_key), **env))  # fmt: skip
    leaves = []
    for name in ("import-a.example.internal", "import-b.example.internal"):
        key, csr, crt = (tmp_path / f"{name}.{s}" for s in ("key", "csr", "crt"))
        openssl_req(key, csr, f"/CN={name}")
        ok(run("openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
               "-CAcreateserial", "-days", "30", "-out", crt))  # fmt: skip
        leaves.append(crt)
    key_file = tmp_path / "import-a.example.internal.key"
    refused = _certctl(default_server, "certs", "import", str(leaves[0]), str(key_file), **env)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"certctl: error: {key_file}: holds a private key; certs import takes certificates "
        "only (nothing was sent)\n"
    )
    assert json.loads(_api_json(default_server, "/api/v1/certificates", issuer="cli-old-ca")) == {
        "items": [],
        "next_cursor": None,
    }
    table = ok(_certctl(default_server, "certs", "import", *map(str, leaves), "-o", "table", **env))
    header, *rows = _rows(table.stdout)
    assert header == ["ID", "COMMON NAME", "STATUS", "NOT AFTER", "ISSUER", "PROFILE"]
    assert [(r[1], r[2], r[4], r[5]) for r in rows] == [
        ("import-a.example.internal", "expiring", "cli-old-ca", "imported"),
        ("import-b.example.internal", "expiring", "cli-old-ca", "imported"),
    ]
    again = _certctl(default_server, "certs", "import", str(leaves[1]), **env)
    assert again.returncode == 1
    assert "already recorded as certificate" in again.stderr
    assert len(again.stderr.splitlines()) == 1
    # A migration run again: what is new is recorded, what was is named on stderr.
    key, csr, crt = (tmp_path / f"import-c.example.internal.{s}" for s in ("key", "csr", "crt"))
    openssl_req(key, csr, "/CN=import-c.example.internal")
    ok(run("openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
           "-CAcreateserial", "-days", "30", "-out", crt))  # fmt: skip
    rerun = ok(_certctl(default_server, "certs", "import", "--skip-existing", str(leaves[1]),
                        str(crt), **env))  # fmt: skip
    assert [i["common_name"] for i in json.loads(rerun.stdout)["items"]] == [
        "import-c.example.internal"
    ]
    (skipped,) = rerun.stderr.splitlines()
    assert re.fullmatch(
        r"certctl: skipped certificate 1 \(CN=import-b\.example\.internal, serial [0-9a-f]+\): "
        rf"already recorded as {rows[1][0]} \(issuer cli-old-ca\)",
        skipped,
    ), skipped


def test_certs_import_reads_a_der_certificate_and_names_cfssl_json(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    """A DER .cer (as Windows exports it) is recorded; cfssl's JSON gets its cfssljson line."""
    require("cfssl")
    env = _admin_env(default_server)
    ca_key, ca_crt = tmp_path / "der-ca.key", tmp_path / "der-ca.crt"
    openssl_req(ca_key, ca_crt, "/CN=CLI DER Old CA", "-days", "365", x509=True)
    ok(_certctl(default_server, "issuers", "import", "cli-der-ca", "--cert", str(ca_crt),
                "--key", str(ca_key), **env))  # fmt: skip
    key, csr, der = tmp_path / "d.key", tmp_path / "d.csr", tmp_path / "d.cer"
    openssl_req(key, csr, "/CN=der.example.internal")
    ok(run("openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
           "-CAcreateserial", "-days", "30", "-outform", "DER", "-out", der))  # fmt: skip
    recorded = json.loads(ok(_certctl(default_server, "certs", "import", str(der), **env)).stdout)
    assert [i["common_name"] for i in recorded["items"]] == ["der.example.internal"]
    # What `cfssl sign` prints: the PEM inside JSON, its newlines escaped.
    signed = ok(run("cfssl", "sign", "-ca", ca_crt, "-ca-key", ca_key, csr)).stdout
    as_json = tmp_path / "signed.json"
    as_json.write_text(signed)
    refused = _certctl(default_server, "certs", "import", str(as_json), **env)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"certctl: error: {as_json}: a JSON document holding PEM")
    assert "cfssljson" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    # A PKCS#12 file holds the key too: refused before anything is sent, as a PEM key is.
    pem, p12 = tmp_path / "d.pem", tmp_path / "d.p12"
    ok(run("openssl", "x509", "-inform", "DER", "-in", der, "-out", pem))
    ok(run("openssl", "pkcs12", "-export", "-in", pem, "-inkey", key, "-out", p12,
           "-passout", "pass:"))  # fmt: skip
    refused = _certctl(default_server, "certs", "import", str(p12), **env)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"certctl: error: {p12}: holds a private key; certs import takes certificates only "
        "(nothing was sent)\n"
    )
    # Password-protected, as PKCS#12 files are as a rule: it said "give --password-file",
    # an option certs import does not have.
    ok(run("openssl", "pkcs12", "-export", "-in", pem, "-inkey", key, "-out", p12,
           "-passout", "pass:secret"))  # fmt: skip
    refused = _certctl(default_server, "certs", "import", str(p12), **env)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"certctl: error: {p12}: a password-protected PKCS#12 file (or a damaged one); certs "
        "import takes certificates only (nothing was sent): write them out with openssl "
        "pkcs12 -in FILE -nokeys -out certs.pem\n"
    )


def test_certs_import_of_a_bundle_over_the_body_limit_says_to_split_it(
    default_server: CertctlServer, tmp_path: Path
) -> None:
    """The server's 413 came as a bare 'request body over 1048576 bytes', naming no way out."""
    env = _admin_env(default_server)
    ca_key, ca_crt = tmp_path / "big-ca.key", tmp_path / "big-ca.crt"
    openssl_req(ca_key, ca_crt, "/CN=CLI Big Bundle CA", "-days", "365", x509=True)
    key, csr, crt = tmp_path / "b.key", tmp_path / "b.csr", tmp_path / "b.crt"
    openssl_req(key, csr, "/CN=big.example.internal")
    ok(run("openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
           "-CAcreateserial", "-days", "30", "-out", crt))  # fmt: skip
    one = crt.read_text()
    count = 1024 * 1024 // len(one) + 50  # the same certificate: the size is refused first
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(one * count)
    before = _api_json(default_server, "/api/v1/certificates", q="big.example.internal")
    refused = _certctl(default_server, "certs", "import", str(bundle), **env)
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith("certctl: error: "), line
    assert "1 MiB" in line, line
    assert f"{count} certificates" in line, line
    assert "split them and run certctl certs import once per part" in line, line
    assert "Traceback" not in refused.stderr
    assert _api_json(default_server, "/api/v1/certificates", q="big.example.internal") == before


def test_a_role_limited_with_the_cli_issues_its_names_only(default_server: CertctlServer) -> None:
    # `--allow-issuer`/`--allow-name`: a Vault PKI role's allowed_domains, shown by list
    # and get; update replaces the axis given and keeps the other.
    env = _admin_env(default_server)
    create = ["auth", "roles", "create", "r-cli-team-a", "-p", "cert.issue,cert.read"]
    create += ["--allow-issuer", "default", "--allow-name", "*.team-a.example.internal"]
    created = json.loads(ok(_certctl(default_server, *create, **env)).stdout)
    assert created["constraints"] == {
        "issuers": ["default"],
        "names": ["*.team-a.example.internal"],
    }
    table = ["auth", "roles", "list", "-o", "table"]
    [row] = [
        r
        for r in _rows(ok(_certctl(default_server, *table, **env)).stdout)
        if r[0] == "r-cli-team-a"
    ]
    assert row[4] == "issuers default; names *.team-a.example.internal"
    update = [
        "auth",
        "roles",
        "update",
        "r-cli-team-a",
        "--allow-name",
        "*.team-a.example.internal,10.1.0.0/16",
    ]
    updated = json.loads(ok(_certctl(default_server, *update, **env)).stdout)
    assert updated["constraints"] == {
        "issuers": ["default"],
        "names": ["*.team-a.example.internal", "10.1.0.0/16"],
    }
    got = json.loads(
        ok(_certctl(default_server, "auth", "roles", "get", "r-cli-team-a", **env)).stdout
    )
    assert got == updated
    ok(
        _certctl(
            default_server, "auth", "actors", "create", "cli-team-a", "-r", "r-cli-team-a", **env
        )
    )
    minted = json.loads(
        ok(_certctl(default_server, "auth", "apikeys", "create", "cli-team-a", **env)).stdout
    )
    team = env | {"CERTCTL_API_KEY": minted["key_value"]}
    issue = ["certs", "issue", "--cn", "db.team-b.example.internal"]
    refused = _certctl(default_server, *issue, **team)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        "certctl: error: HTTP 403: db.team-b.example.internal: not allowed by the constraints "
        "of role(s) r-cli-team-a (those of your roles holding cert.issue; one of them must "
        "allow the issuer and every name)\n"
    )
    cleared = ["auth", "roles", "update", "r-cli-team-a", "--no-constraints"]
    assert json.loads(ok(_certctl(default_server, *cleared, **env)).stdout)["constraints"] is None
