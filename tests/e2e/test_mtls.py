"""Client-certificate authentication: handshake policy and DN-pattern role mappings."""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from tests._poll import wait_until
from tests._tools import openssl_req, require, run
from tests.e2e.conftest import CertctlServer, certctl_cli, launch, tls_context

pytestmark = pytest.mark.e2e

WHOAMI = "/api/v1/auth/whoami"
ISSUERS = "/api/v1/issuers"


def client_cert(ca: Path, subject: str, out: Path) -> tuple[Path, Path]:
    certctl_cli("cert", "issue", "--ca", ca, "--subject", subject, "--profile", "client",
                "--out", out)  # fmt: skip
    return out / "tls.crt", out / "tls.key"


def curl(
    server: CertctlServer, path: str, cert: tuple[Path, Path] | None = None
) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = ["-sS", "--cacert", server.ca, "-w", "\n%{http_code}", "-D", "-"]
    if cert is not None:
        args += ["--cert", cert[0], "--key", cert[1]]
    return run("curl", *args, server.url + path, timeout=20)


def refused_in_handshake(result: subprocess.CompletedProcess[str], alert: str) -> None:
    """Assert that curl failed because the server refused its certificate with TLS ``alert``.

    Not any failure: a server that is down or crashed also makes curl exit non-zero (7,
    "Couldn't connect"), and those tests passed on it as on a refusal.
    """
    assert "HTTP/" not in result.stdout, result.stdout
    # 35: the alert came during curl's handshake (TLS 1.2). 56: at its first read, after its
    # side of a TLS 1.3 handshake was over. An end of stream without the alert (52, "Empty
    # reply from server") or a reset (56, "Connection reset by peer") is no refusal a user can
    # read: certctl dropped the alert, as it did until its SSLObject sent it.
    assert result.returncode in (35, 56), (result.returncode, result.stderr)
    assert f"alert {alert}" in result.stderr, result.stderr


def split_response(result: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """(status, headers, body) from ``curl -D - -w '\\n%{http_code}'``."""
    assert result.returncode == 0, result.stderr
    text, _, status = result.stdout.rpartition("\n")
    headers, _, body = text.partition("\n\n")  # text mode turned CRLF into LF
    return int(status), headers.lower(), body


def s_client_get(
    server: CertctlServer, path: str, cert: tuple[Path, Path], session: Path, *, resume: bool
) -> tuple[bool, int]:
    """GET ``path`` over one TLS 1.2 ``openssl s_client`` connection presenting ``cert``.

    The session is written to ``session``, or resumed from it (``resume``): a resumed
    session sends no certificate, the server takes the one of the session. Returns
    (resumed, HTTP status).
    """
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    result = run("openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_2",
                 "-CAfile", server.ca, "-cert", cert[0], "-key", cert[1], "-cert_chain", cert[0],
                 "-sess_in" if resume else "-sess_out", session, "-ign_eof",
                 input=request, timeout=20)  # fmt: skip
    status = re.search(r"^HTTP/1\.1 (\d{3}) ", result.stdout, re.M)
    assert result.returncode == 0, result.stdout + result.stderr
    assert status, result.stdout
    return re.search(r"^Reused, TLSv1\.2,", result.stdout, re.M) is not None, int(status[1])


def import_team_issuer(server: CertctlServer, ca_dir: Path) -> None:
    """Import the CA in ``ca_dir`` (ca.crt, ca.key) as issuer ``team``."""
    with server.client(server.admin_key) as admin:
        imported = admin.post(
            "/api/v1/issuers",
            json={
                "id": "team",
                "certificate_pem": (ca_dir / "ca.crt").read_text(),
                "private_key_pem": (ca_dir / "ca.key").read_text(),
            },
        )
    assert imported.status_code == 201, imported.text


def operator_key(server: CertctlServer) -> str:
    """The API key of a new actor ``op`` holding ``r-operator``."""
    with server.client(server.admin_key) as admin:
        created = admin.post("/api/v1/auth/actors", json={"id": "op", "roles": ["r-operator"]})
        assert created.status_code == 201, created.text
        minted = admin.post("/api/v1/auth/apikeys", json={"actor_id": "op"})
    assert minted.status_code == 201, minted.text
    key: str = minted.json()["key_value"]
    return key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("mtls-pki")
    certctl_cli("ca", "create", "--out", base / "client-ca", "--cn", "Client CA")
    certctl_cli("ca", "create", "--out", base / "rogue-ca", "--cn", "Client CA")
    return {
        "ca": (base / "client-ca" / "ca.crt", base / "client-ca" / "ca.key"),
        "alice": client_cert(base / "client-ca", "CN=alice,OU=ops,O=Example", base / "alice"),
        "bob": client_cert(base / "client-ca", "CN=bob,OU=dev,O=Example", base / "bob"),
        "mallory": client_cert(base / "rogue-ca", "CN=mallory,OU=ops,O=Example", base / "mal"),
        # Subject CN "x,OU=ops" + O=Example: no OU at all. RFC 4514 writes it CN=x\,OU=ops,…
        "forger": client_cert(base / "client-ca", r"CN=x\,OU=ops,O=Example", base / "forger"),
        "smith": client_cert(base / "client-ca", r"CN=Smith\, John,O=Example", base / "smith"),
    }


@pytest.fixture(scope="module")
def mtls_server(
    pki: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CertctlServer]:
    config = {
        "tls": {"client-auth": "required", "client-ca": str(pki["ca"][0])},
        "auth": {
            "client-cert-mappings": [
                {"subject": "CN=*,OU=ops,O=Example", "roles": ["r-operator"]},
                {"subject": r"CN=Smith\, John,O=Example", "roles": ["r-viewer"]},
            ]
        },
    }
    with launch(
        tmp_path_factory.mktemp("mtls-server"), config=config, client_cert=pki["alice"]
    ) as server:
        yield server


def test_client_certificate_subject_order(pki: dict[str, tuple[Path, Path]]) -> None:
    # RFC 4514 order (most specific first) is what the server matches against.
    out = run(
        "openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", pki["alice"][0]
    )
    assert out.stdout.strip() == "subject=CN=alice,OU=ops,O=Example", out.stdout


def test_no_client_certificate_fails_the_handshake(mtls_server: CertctlServer) -> None:
    refused_in_handshake(curl(mtls_server, WHOAMI), "certificate required")


def test_certificate_from_another_ca_fails_the_handshake(
    mtls_server: CertctlServer, pki: dict[str, tuple[Path, Path]]
) -> None:
    refused_in_handshake(curl(mtls_server, WHOAMI, pki["mallory"]), "unknown ca")


# What OpenSSL's server sends for each refusal: TLS 1.2 has no "certificate required" alert
# (RFC 8446 added it), a missing certificate is a plain handshake failure there.
REFUSALS = [
    ("-tls1_2", None, "sslv3 alert handshake failure"),
    ("-tls1_2", "mallory", "tlsv1 alert unknown ca"),
    ("-tls1_3", None, "tlsv13 alert certificate required"),
    ("-tls1_3", "mallory", "tlsv1 alert unknown ca"),
]


@pytest.mark.parametrize(("version", "who", "alert"), REFUSALS)
def test_a_refused_client_gets_the_tls_alert_saying_why(
    mtls_server: CertctlServer,
    pki: dict[str, tuple[Path, Path]],
    version: str,
    who: str | None,
    alert: str,
) -> None:
    # Before: the connection closed without the alert OpenSSL had written ("unexpected eof
    # while reading", curl: "Empty reply from server"), nothing for a user to go on.
    cert = ["-cert", pki[who][0], "-key", pki[who][1]] if who else []
    # A request, and -ign_eof: with TLS 1.3 the client's handshake is over before the server
    # has read its certificate, and the alert comes at its first read.
    result = run("openssl", "s_client", "-connect", f"127.0.0.1:{mtls_server.port}", version,
                 "-CAfile", mtls_server.ca, *cert, "-ign_eof",
                 input="GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                 timeout=20)  # fmt: skip
    assert "HTTP/1.1" not in result.stdout, result.stdout
    assert alert in result.stderr, result.stdout + result.stderr


def _handshake_failures(server: CertctlServer) -> dict[str, float]:
    """certctl_tls_handshake_failures_total of the main listener, by reason."""
    from prometheus_client.parser import text_string_to_metric_families

    with server.client(server.admin_key) as admin:
        scraped = admin.get("/api/v1/metrics/prometheus")
    assert scraped.status_code == 200, scraped.text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(scraped.text)
        if family.name == "certctl_tls_handshake_failures"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["listener"] == "main"
    }


def test_failed_handshakes_are_counted_and_logged_with_what_to_do(
    mtls_server: CertctlServer, pki: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    # Before: nothing at all showed a failed handshake (no log line, no counter), so a client
    # certificate from the wrong CA was invisible to the operator.
    before = _handshake_failures(mtls_server)
    assert set(before) >= {"client_certificate_missing", "client_certificate_rejected"}
    refused_in_handshake(curl(mtls_server, WHOAMI), "certificate required")
    refused_in_handshake(curl(mtls_server, WHOAMI, pki["mallory"]), "unknown ca")
    server_only = client_cert_with_profile(pki, "CN=srv,OU=ops,O=Example", tmp_path, "server")
    refused_in_handshake(curl(mtls_server, WHOAMI, server_only), "unsupported certificate")
    # A client not trusting the server's CA: its alert is the server's failure too.
    untrusting = run("curl", "-sS", "--cacert", pki["ca"][0], "--cert", pki["alice"][0],
                     "--key", pki["alice"][1], mtls_server.url + WHOAMI, timeout=20)  # fmt: skip
    assert untrusting.returncode == 60, untrusting.stderr  # curl: peer certificate not verified
    rejected = before.get("server_certificate_rejected", 0)
    wait_until(  # counted as the server closes, maybe just after curl gave up
        lambda: _handshake_failures(mtls_server)["server_certificate_rejected"] > rejected,
        "the untrusting client's failure to be counted",
        10,
    )
    after = _handshake_failures(mtls_server)
    assert after["client_certificate_missing"] == before["client_certificate_missing"] + 1
    assert after["client_certificate_rejected"] == before["client_certificate_rejected"] + 2
    assert after["server_certificate_rejected"] == before["server_certificate_rejected"] + 1
    log = "".join(mtls_server.logs())
    assert re.search(
        r"TLS handshake from 127\.0\.0\.1 failed on the main listener: the client sent no "
        r"certificate, and tls.client-auth is required",
        log,
    ), log[-3000:]
    assert (
        "client certificate refused: unable to get local issuer certificate (its CA is not in "
        "tls.client-ca)" in log
    ), log[-3000:]
    assert "the client refused this server's certificate (alert: unknown ca)" in log, log[-3000:]
    # Once a minute per kind: the second rejected client certificate was counted, not logged.
    assert log.count("client certificate refused:") == 1, log[-3000:]


def client_cert_with_profile(
    pki: dict[str, tuple[Path, Path]], subject: str, out: Path, profile: str
) -> tuple[Path, Path]:
    certctl_cli("cert", "issue", "--ca", pki["ca"][0].parent, "--subject", subject,
                "--profile", profile, "--out", out / profile)  # fmt: skip
    return out / profile / "tls.crt", out / profile / "tls.key"


def test_mapped_subject_gets_the_mapped_roles(
    mtls_server: CertctlServer, pki: dict[str, tuple[Path, Path]]
) -> None:
    status, _, body = split_response(curl(mtls_server, WHOAMI, pki["alice"]))
    assert status == 200, body
    whoami = json.loads(body)
    assert whoami["roles"] == ["r-operator"]
    assert whoami["auth_method"] == "client_certificate"
    assert "CN=alice,OU=ops,O=Example" in whoami["actor_id"]
    assert "metrics.read" in whoami["permissions"]
    assert "auth.role.create" not in whoami["permissions"]


def test_unmapped_subject_is_401(
    mtls_server: CertctlServer, pki: dict[str, tuple[Path, Path]]
) -> None:
    status, headers, body = split_response(curl(mtls_server, WHOAMI, pki["bob"]))
    assert status == 401, body
    assert 'www-authenticate: bearer realm="certctl"' in headers
    assert "content-type: application/problem+json" in headers
    assert json.loads(body)["status"] == 401


def test_api_key_still_works_over_mtls(
    mtls_server: CertctlServer, pki: dict[str, tuple[Path, Path]]
) -> None:
    # A bearer key takes precedence over the (mapped) certificate on the same connection.
    with mtls_server.client(mtls_server.admin_key) as client:
        whoami = client.get(WHOAMI).json()
    assert whoami["actor_id"] == "admin"
    assert whoami["auth_method"] == "api_key"


def test_a_comma_in_the_cn_does_not_forge_an_ou(
    mtls_server: CertctlServer, pki: dict[str, tuple[Path, Path]]
) -> None:
    out = run(
        "openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", pki["forger"][0]
    )
    assert out.stdout.strip() == r"subject=CN=x\,OU=ops,O=Example", out.stdout
    # Split on every comma, this read as CN=x\ / OU=ops / O=Example and got r-operator.
    status, _, body = split_response(curl(mtls_server, WHOAMI, pki["forger"]))
    assert status == 401, body
    assert json.loads(body)["detail"] == (
        r"client certificate subject CN=x\,OU=ops,O=Example is not mapped to any role by "
        "auth.client-cert-mappings"
    )


def test_an_escaped_comma_in_a_mapping_matches_that_cn(
    mtls_server: CertctlServer, pki: dict[str, tuple[Path, Path]]
) -> None:
    status, _, body = split_response(curl(mtls_server, WHOAMI, pki["smith"]))
    assert status == 200, body
    assert json.loads(body)["roles"] == ["r-viewer"]


def test_a_client_certificate_revoked_through_the_api_stops_authenticating(
    tmp_path: Path,
) -> None:
    """Revocation reaches mTLS on the next request, as it does for an API key.

    The handshake checks ``tls.client-ca`` only: before, a client certificate certctl had
    revoked (keyCompromise) kept its roles until it expired.
    """
    certctl_cli("ca", "create", "--out", tmp_path / "team-ca", "--cn", "Team CA")
    config = {
        "tls": {"client-auth": "optional", "client-ca": str(tmp_path / "team-ca" / "ca.crt")},
        "auth": {"client-cert-mappings": [{"subject": "CN=*", "roles": ["r-viewer"]}]},
    }
    with launch(tmp_path / "server", config=config) as server:
        import_team_issuer(server, tmp_path / "team-ca")
        with server.client(server.admin_key) as admin:
            certs: dict[str, tuple[Path, Path]] = {}
            ids: dict[str, str] = {}
            for name in ("carol", "dave"):
                issued = admin.post(
                    "/api/v1/certificates",
                    json={"issuer": "team", "common_name": name, "profile": "client"},
                )
                assert issued.status_code == 201, issued.text
                (tmp_path / f"{name}.crt").write_text(issued.json()["certificate_pem"])
                (tmp_path / f"{name}.key").write_text(issued.json()["private_key_pem"])
                certs[name] = (tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
                ids[name] = issued.json()["id"]
        status, _, body = split_response(curl(server, WHOAMI, certs["carol"]))
        assert status == 200, body
        assert json.loads(body)["actor_id"] == "cert:CN=carol"

        with server.client(server.admin_key) as admin:
            revoked = admin.post(
                f"/api/v1/certificates/{ids['carol']}/revoke",
                json={"reason": "keyCompromise"},
            )
            assert revoked.status_code == 200, revoked.text
        status, _, body = split_response(curl(server, WHOAMI, certs["carol"]))
        assert status == 401, body
        assert json.loads(body)["detail"] == "client certificate revoked"
        # The CLI sent its user to CERTCTL_API_KEY, as if no certificate had been given.
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
        cli = run("certctl", "auth", "whoami", env=clean | {
            "CERTCTL_URL": server.url, "CERTCTL_CA_CERT": str(server.ca),
            "CERTCTL_CLIENT_CERT": str(certs["carol"][0]),
            "CERTCTL_CLIENT_KEY": str(certs["carol"][1]),
        })  # fmt: skip
        assert (cli.returncode, cli.stdout) == (1, "")
        assert cli.stderr == (
            "certctl: error: HTTP 401: client certificate revoked (the certificate in "
            f"CERTCTL_CLIENT_CERT={certs['carol'][0]}: use another one, or set CERTCTL_API_KEY "
            "to an API key)\n"
        )
        # Twin: a certificate of the same CA that was not revoked keeps working.
        status, _, body = split_response(curl(server, WHOAMI, certs["dave"]))
        assert status == 200, body
        with server.client(server.admin_key) as admin:
            scrape = admin.get("/api/v1/metrics/prometheus").text
        assert 'certctl_auth_failures_total{reason="revoked"} 2.0' in scrape  # curl, the CLI

        # An intermediate revoked for keyCompromise: a certificate whoever holds its key
        # signed (unknown to certctl, its chain sent by the client) authenticated still.
        sub = tmp_path / "team-sub"
        certctl_cli("ca", "create", "--parent", tmp_path / "team-ca", "--cn", "Team Sub CA",
                    "--path-length", "1", "--out", sub)  # fmt: skip
        with server.client(server.admin_key) as admin:
            imported = admin.post(
                ISSUERS,
                json={
                    "id": "team-sub",
                    "certificate_pem": (sub / "ca.crt").read_text()
                    + (tmp_path / "team-ca" / "ca.crt").read_text(),
                    "private_key_pem": (sub / "ca.key").read_text(),
                },
            )
            assert imported.status_code == 201, imported.text
            # And one more level: a certificate two levels below the intermediate revoked.
            created = admin.post(ISSUERS, json={"id": "team-deeper", "parent": "team-sub"})
            assert created.status_code == 201, created.text
            issued = admin.post(
                "/api/v1/certificates",
                json={"issuer": "team-deeper", "common_name": "trudy", "profile": "client"},
            )
            assert issued.status_code == 201, issued.text
        (tmp_path / "trudy.crt").write_text(
            issued.json()["certificate_pem"] + issued.json()["chain_pem"]  # + deeper, sub
        )
        (tmp_path / "trudy.key").write_text(issued.json()["private_key_pem"])
        deep = (tmp_path / "trudy.crt", tmp_path / "trudy.key")
        minted = client_cert(sub, "CN=mallory", tmp_path / "mallory")  # tls.crt: leaf + sub
        status, _, body = split_response(curl(server, WHOAMI, minted))
        assert status == 200, body
        # TLS sessions to resume after the revocation: they have no verified chain to read.
        session = tmp_path / "mallory.session"
        assert s_client_get(server, WHOAMI, minted, session, resume=False) == (False, 200)
        deep_session = tmp_path / "trudy.session"
        assert s_client_get(server, WHOAMI, deep, deep_session, resume=False) == (False, 200)
        with server.client(server.admin_key) as admin:
            revoked = admin.post(
                "/api/v1/issuers/team-sub/revoke", json={"reason": "keyCompromise"}
            )
            assert revoked.status_code == 200, revoked.text
        status, _, body = split_response(curl(server, WHOAMI, minted))
        assert status == 401, body
        assert json.loads(body)["detail"] == "client certificate revoked: a CA above it was revoked"
        # Resumed, the session still carries the certificate: refused too (was 200 until a
        # full handshake), matched by its authorityKeyIdentifier.
        assert s_client_get(server, WHOAMI, minted, session, resume=True) == (True, 401)
        # Two levels below it (signed by team-deeper, which team-sub signed): found by walking
        # up certctl's issuers from the certificate (was 200 until a full handshake).
        assert s_client_get(server, WHOAMI, deep, deep_session, resume=True) == (True, 401)
        status, _, body = split_response(curl(server, WHOAMI, certs["dave"]))  # its root's
        assert status == 200, body


def test_a_client_certificate_certctl_issued_carries_no_more_than_its_requester(
    tmp_path: Path,
) -> None:
    """An operator cannot mint itself an administrator's mapped subject.

    With ``tls.client-ca`` trusting one of certctl's issuers, an ``r-operator`` key had that
    issuer sign ``CN=ci-admin`` (mapped to r-admin) and then created roles with it.
    """
    certctl_cli("ca", "create", "--out", tmp_path / "team-ca", "--cn", "Team CA")
    config = {
        "tls": {"client-auth": "optional", "client-ca": str(tmp_path / "team-ca" / "ca.crt")},
        "auth": {"client-cert-mappings": [{"subject": "CN=ci-admin", "roles": ["r-admin"]}]},
    }

    def issue(key: str, name: str) -> tuple[Path, Path]:
        with server.client(key) as client:
            issued = client.post(
                "/api/v1/certificates",
                json={"issuer": "team", "common_name": "ci-admin", "profile": "client"},
            )
        assert issued.status_code == 201, issued.text
        (tmp_path / f"{name}.crt").write_text(issued.json()["certificate_pem"])
        (tmp_path / f"{name}.key").write_text(issued.json()["private_key_pem"])
        return tmp_path / f"{name}.crt", tmp_path / f"{name}.key"

    def whoami(cert: tuple[Path, Path]) -> dict[str, object]:
        status, _, body = split_response(curl(server, WHOAMI, cert))
        assert status == 200, body
        answer: dict[str, object] = json.loads(body)
        return answer

    with launch(tmp_path / "server", config=config) as server:
        import_team_issuer(server, tmp_path / "team-ca")
        operators = issue(operator_key(server), "by-operator")
        admins = issue(server.admin_key, "by-admin")
        # The operator's certificate has the mapped role, and only what the operator holds.
        mine = whoami(operators)
        assert mine["roles"] == ["r-admin"]
        assert "auth.role.create" not in mine["permissions"]  # type: ignore[operator]
        assert "cert.issue" in mine["permissions"]  # type: ignore[operator]
        with tmp_path.joinpath("role.json").open("w") as out:
            json.dump({"id": "mine", "permissions": ["cert.read"]}, out)
        created = run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                      server.ca, "--cert", operators[0], "--key", operators[1], "-H",
                      "Content-Type: application/json", "--data-binary",
                      f"@{tmp_path / 'role.json'}", f"{server.url}/api/v1/auth/roles",
                      timeout=20)  # fmt: skip
        assert created.stdout == "403", created.stdout + created.stderr
        # Twin: the same subject, issued at the administrator's request, is an administrator.
        assert "auth.role.create" in whoami(admins)["permissions"]  # type: ignore[operator]
        # The operator deleted: what it had issued carries nothing any more.
        with server.client(server.admin_key) as admin:
            assert admin.delete("/api/v1/auth/actors/op").status_code == 204
        assert whoami(operators)["permissions"] == []


def test_an_administrator_renewing_an_operators_csr_certificate_does_not_raise_its_key(
    tmp_path: Path,
) -> None:
    """A renewal keeps a CSR's key, so it carries no more than the key's first requester.

    Before, an operator's ``CN=ci-admin`` (capped to r-operator) renewed by an administrator
    (a bulk renewal of what expires) authenticated the operator's own key as an administrator.
    """
    certctl_cli("ca", "create", "--out", tmp_path / "team-ca", "--cn", "Team CA")
    config = {
        "tls": {"client-auth": "optional", "client-ca": str(tmp_path / "team-ca" / "ca.crt")},
        "auth": {"client-cert-mappings": [{"subject": "CN=ci-admin", "roles": ["r-admin"]}]},
    }
    openssl_req(tmp_path / "ci.key", tmp_path / "ci.csr", "/CN=ci-admin")
    csr = (tmp_path / "ci.csr").read_text()

    def permissions(cert_pem: str) -> object:
        (tmp_path / "ci.crt").write_text(cert_pem)
        status, _, body = split_response(
            curl(server, WHOAMI, (tmp_path / "ci.crt", tmp_path / "ci.key"))
        )
        assert status == 200, body
        return json.loads(body)["permissions"]

    with launch(tmp_path / "server", config=config) as server:
        import_team_issuer(server, tmp_path / "team-ca")
        key = operator_key(server)
        with server.client(server.admin_key) as admin:
            request = {"issuer": "team", "csr": csr, "profile": "client"}
            with server.client(key) as operator:
                by_operator = operator.post("/api/v1/certificates", json=request)
            assert by_operator.status_code == 201, by_operator.text
            assert "auth.role.create" not in permissions(by_operator.json()["certificate_pem"])  # type: ignore[operator]
            renewed = admin.post(f"/api/v1/certificates/{by_operator.json()['id']}/renew", json={})
            assert renewed.status_code == 201, renewed.text
            # The same key, renewed by the administrator: still no more than the operator.
            held = permissions(renewed.json()["certificate_pem"])
            assert "auth.role.create" not in held  # type: ignore[operator]
            assert "cert.issue" in held  # type: ignore[operator]
            # Twin: the administrator's own CSR certificate, renewed by it, stays an admin's.
            by_admin = admin.post("/api/v1/certificates", json=request)
            assert by_admin.status_code == 201, by_admin.text
            again = admin.post(f"/api/v1/certificates/{by_admin.json()['id']}/renew", json={})
            assert again.status_code == 201, again.text
            assert "auth.role.create" in permissions(again.json()["certificate_pem"])  # type: ignore[operator]


def test_a_client_certificate_that_expires_on_a_kept_alive_connection_stops_authenticating(
    tmp_path: Path,
) -> None:
    """Expiry is checked per request: a connection (or a resumed session) outlives its handshake.

    Before, a client certificate that expired after the handshake kept its roles for as long
    as the connection stayed open, or for the 2 h a TLS session may be resumed.
    """
    certctl_cli("ca", "create", "--out", tmp_path / "ca", "--cn", "Team CA")
    config = {
        "tls": {"client-auth": "optional", "client-ca": str(tmp_path / "ca" / "ca.crt")},
        "auth": {"client-cert-mappings": [{"subject": "CN=brief", "roles": ["r-viewer"]}]},
    }
    with launch(tmp_path / "server", config=config) as server:
        connection, not_after = _first_request_before_expiry(server, tmp_path)
        try:
            sock = connection.sock
            # The server's clock is this machine's: once past notAfter here, it is past there.
            wait = (not_after - datetime.now(UTC)).total_seconds() + 1.5
            time.sleep(max(wait, 0))
            connection.request("GET", WHOAMI)
            later = connection.getresponse()
            body = json.loads(later.read())
            assert connection.sock is sock  # the same connection: its handshake is long past
            assert later.status == 401, body
            assert body["detail"] == "client certificate expired"
        finally:
            connection.close()


# Lifetimes tried for the brief certificate. The connection then idles for about as long:
# the longest stays under the server's 30 s keep-alive timeout.
BRIEF_LIFETIMES_S = (5, 10, 20)


def _first_request_before_expiry(
    server: CertctlServer, tmp_path: Path
) -> tuple[http.client.HTTPSConnection, datetime]:
    """A connection whose first request, with a brief client certificate, got its 200.

    The twin the test needs: the same certificate authenticated on the same connection. Its
    lifetime must outlast issuing it (a CLI start) and the first request, which took more
    than 5 s on a busy machine. A 401 whose answer came after notAfter says only that: the
    lifetime doubles. A 401 answered before notAfter is a failure, so an expiry check that
    refused a valid certificate cannot pass unnoticed.
    """
    for lifetime in BRIEF_LIFETIMES_S:
        out = tmp_path / f"brief-{lifetime}s"
        certctl_cli(
            "cert", "issue", "--ca", tmp_path / "ca", "--subject", "CN=brief",
            "--profile", "client", "--validity", f"{lifetime}s", "--pem", "--out", out,
        )  # fmt: skip
        leaf = out / "tls.crt"
        not_after = x509.load_pem_x509_certificate(leaf.read_bytes()).not_valid_after_utc
        context = tls_context(server.ca, leaf, out / "tls.key")
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context)
        try:
            connection.request("GET", WHOAMI)
            first = connection.getresponse()
            status, body = first.status, first.read()
        except (ssl.SSLError, ConnectionError) as exc:  # expired by the handshake already
            status, body = 0, repr(exc).encode()
        if status == 200:
            return connection, not_after
        connection.close()
        answered = datetime.now(UTC)
        assert answered >= not_after, (status, body, not_after)  # refused while still valid
        assert status in (0, 401), body
        if status == 401:
            assert json.loads(body)["detail"] == "client certificate expired", body
    pytest.fail(f"no first request within {BRIEF_LIFETIMES_S[-1]} s of issuing", pytrace=False)


def test_the_start_banner_cli_line_works_with_a_client_certificate(
    mtls_server: CertctlServer, pki: dict[str, tuple[Path, Path]]
) -> None:
    # The notice gave a curl line only: the CLI's CERTCTL_* settings were in the README.
    out, _ = mtls_server.logs()
    (line,) = [x for x in out.splitlines() if x.startswith("CLI: export ")]
    assert " CERTCTL_CLIENT_CERT=client.crt CERTCTL_CLIENT_KEY=client.key; " in line
    cert, key = pki["alice"]
    command = line.removeprefix("CLI: ").replace("client.crt", str(cert))
    command = command.replace("client.key", str(key))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    path = f"{Path(require('certctl')).parent}:{clean.get('PATH', '')}"
    result = run("bash", "-c", command, env=clean | {"PATH": path})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["actor_id"] == "admin"


def test_the_start_banner_curl_line_works_with_a_client_certificate(
    mtls_server: CertctlServer, pki: dict[str, tuple[Path, Path]]
) -> None:
    # The "Try: curl" line printed at start had no --cert: with client-auth required it
    # failed in the handshake, the first thing a new user tries.
    out, _ = mtls_server.logs()
    (line,) = [x for x in out.splitlines() if x.startswith("Try: curl ")]
    assert "--cert client.crt --key client.key " in line
    cert, key = pki["alice"]
    command = line.removeprefix("Try: ").replace("client.crt", str(cert))
    command = command.replace("client.key", str(key))
    result = run("bash", "-c", f"{command} -sS --fail")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["actor_id"] == "admin"


def test_a_changed_client_ca_file_applies_to_new_connections(
    pki: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    # tls.client-ca was read at start only: a CA taken out of the file (a compromised one)
    # stayed trusted until a restart, without a word in the log.
    client_ca = tmp_path / "clients.crt"
    client_ca.write_bytes(pki["ca"][0].read_bytes())
    config = {
        # Polled every 250 ms: each reload the test waits for lands within a fraction of a second.
        "tls": {"client-auth": "required", "client-ca": str(client_ca), "reload-interval": "250ms"},
        "auth": {
            "client-cert-mappings": [{"subject": "CN=*,OU=ops,O=Example", "roles": ["r-viewer"]}]
        },
    }
    with launch(tmp_path / "server", config=config, client_cert=pki["alice"]) as server:
        assert split_response(curl(server, WHOAMI, pki["alice"]))[0] == 200
        refused_in_handshake(curl(server, WHOAMI, pki["mallory"]), "unknown ca")
        # The rogue CA replaces the old one: alice's CA is no longer trusted, mallory's is.
        client_ca.write_bytes((pki["mallory"][0].parent / "ca.crt").read_bytes())
        reloaded = f"tls.client-ca {client_ca} reloaded"
        wait_until(lambda: reloaded in server.logs()[1], "the tls.client-ca reload", 15.0)
        refused_in_handshake(curl(server, WHOAMI, pki["alice"]), "unknown ca")
        assert split_response(curl(server, WHOAMI, pki["mallory"]))[0] == 200
        # A broken file is refused once, and the CAs it would replace stay trusted.
        client_ca.write_text("not a certificate\n")
        refused = f"tls.client-ca {client_ca} changed but cannot be used"
        wait_until(lambda: refused in server.logs()[1], "the tls.client-ca refusal", 15.0)
        time.sleep(1.0)  # three more polls of the same content at least: no second line
        assert server.logs()[1].count(refused) == 1
        assert split_response(curl(server, WHOAMI, pki["mallory"]))[0] == 200
        # A second CA next to mallory's would let either mint the unpinned mapping's subject.
        client_ca.write_bytes(
            (pki["mallory"][0].parent / "ca.crt").read_bytes() + pki["ca"][0].read_bytes()
        )
        unpinned = "auth.client-cert-mappings.0 (subject 'CN=*,OU=ops,O=Example') has no"
        wait_until(lambda: unpinned in server.logs()[1], "the two-CA refusal", 15.0)
        refused_in_handshake(curl(server, WHOAMI, pki["alice"]), "unknown ca")
