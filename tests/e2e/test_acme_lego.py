"""lego (the Go ACME client Traefik embeds) gets, renews and revokes a certificate.

A second real client next to certbot: lego's JWS, polling and finalize code are its own
(go-jose), so what certbot's ``acme`` library happens to tolerate is not all that is tested.
http-01 is answered by lego's own server on 127.0.0.1, for ``localhost`` (it resolves to
127.0.0.1 without touching /etc/hosts). The certificates come from issuer ``acme-ca``:
certctl's internal CA signs its own server names (``localhost`` among them) for nobody but
an administrator.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certctl.pki import format_serial
from tests._bind9 import TSIG_ALGORITHM, TSIG_NAME, running_bind9
from tests._tools import failed, free_port, ok, run
from tests.e2e.conftest import CertctlServer, StartServer

pytestmark = pytest.mark.e2e

ISSUER = "acme-ca"
ZONE = "test.example"


def _lego_run(
    server: CertctlServer,
    home: Path,
    port: int,
    *command: str,
    key_type: str = "ec256",
    eab: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEGO_CA_CERTIFICATES": str(server.ca)}
    # --key-type is the account key's type (the JWS alg) and the certificate key's.
    return run(
        "lego",
        "--path", home, "--server", f"{server.url}/acme/directory", "--accept-tos",
        "--key-type", key_type,
        "--email", "ops@example.internal", "--domains", "localhost",
        "--http", "--http.port", f"127.0.0.1:{port}",
        *eab,
        *command,
        env=env,
        timeout=120,
    )  # fmt: skip


def acme_server(
    start_server: StartServer, tmp_path: Path, acme: dict[str, object]
) -> tuple[CertctlServer, Path]:
    """A server with issuer ISSUER made, restarted with ``acme``; and the issuer's root file."""
    first = start_server()
    with first.client(first.admin_key) as api:
        r = api.post("/api/v1/issuers", json={"id": ISSUER, "common_name": "ACME CA"})
        assert r.status_code == 201, r.text
    first.stop()
    server = start_server(data_dir=first.data_dir, config={"acme": acme})
    root = tmp_path / "acme-ca.pem"
    with server.client(server.admin_key) as api:
        root.write_text(api.get(f"/api/v1/issuers/{ISSUER}/ca.pem").text)
    return server, root


def _lego(
    server: CertctlServer, home: Path, port: int, *command: str, key_type: str = "ec256"
) -> str:
    return ok(_lego_run(server, home, port, *command, key_type=key_type))


def test_lego_runs_renews_and_revokes_against_certctl(
    start_server: StartServer, tmp_path: Path
) -> None:
    http01 = free_port()
    acme = {"enabled": True, "issuer": ISSUER, "http-01-port": http01}
    server, root = acme_server(start_server, tmp_path, acme)
    # No acme.allowed-names: the start says which names that leaves, wildcards among them.
    said = "names: any DNS name, wildcard or IP address its challenge proves, "
    said += f"http-01 on port {http01}, "
    assert said + "dns-01 through the system resolver" in "".join(server.logs())
    home = tmp_path / "lego"

    _lego(server, home, http01, "run")
    crt = home / "certificates" / "localhost.crt"
    ok(run("openssl", "verify", "-CAfile", root, crt))
    first_leaf = x509.load_pem_x509_certificate(crt.read_bytes())
    assert first_leaf.subject.rfc4514_string() == "CN=localhost"

    # --days 365: renew now (the leaf has 90); no random sleep before it (lego's cron habit).
    _lego(server, home, http01, "renew", "--days", "365", "--no-random-sleep")
    ok(run("openssl", "verify", "-CAfile", root, crt))
    renewed = x509.load_pem_x509_certificate(crt.read_bytes())
    assert renewed.serial_number != first_leaf.serial_number

    _lego(server, home, http01, "revoke")
    with server.client(server.admin_key) as api:
        listed = api.get("/api/v1/certificates", params={"issuer": ISSUER}).json()
        crl = tmp_path / "acme-ca.crl"
        crl.write_text(api.get(f"/api/v1/issuers/{ISSUER}/crl", params={"format": "pem"}).text)
    states = {c["serial"]: c["status"] for c in listed["items"]}
    assert states[format_serial(renewed.serial_number)] == "revoked"
    assert states[format_serial(first_leaf.serial_number)] == "active"
    # lego moves a revoked certificate to archives/<unix time>.localhost.crt.
    [archived] = (home / "archives").glob("*.localhost.crt")
    assert x509.load_pem_x509_certificate(archived.read_bytes()) == renewed
    both = tmp_path / "root-and-crl.pem"
    both.write_text(root.read_text() + crl.read_text())
    refused = run("openssl", "verify", "-crl_check", "-CAfile", both, archived)
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr

    # An RSA account (RS256, as go-jose signs it) with an RSA certificate key, and ES384.
    for key_type, wanted in (("rsa2048", rsa.RSAPublicKey), ("ec384", ec.EllipticCurvePublicKey)):
        other = tmp_path / f"lego-{key_type}"
        _lego(server, other, http01, "run", key_type=key_type)
        got = other / "certificates" / "localhost.crt"
        ok(run("openssl", "verify", "-CAfile", root, got))
        assert isinstance(x509.load_pem_x509_certificate(got.read_bytes()).public_key(), wanted)


def test_lego_binds_its_account_with_an_eab_key_the_cli_minted(
    start_server: StartServer, tmp_path: Path
) -> None:
    first = start_server()
    with first.client(first.admin_key) as api:
        r = api.post("/api/v1/issuers", json={"id": ISSUER, "common_name": "ACME CA"})
        assert r.status_code == 201, r.text
    first.stop()
    http01 = free_port()
    acme = {"enabled": True, "issuer": ISSUER, "http-01-port": http01}
    server = start_server(
        data_dir=first.data_dir, config={"acme": {**acme, "external-account-required": True}}
    )
    # Without a binding lego stops: it reads meta.externalAccountRequired in the directory.
    refused = failed(_lego_run(server, tmp_path / "no-eab", http01, "run"))
    assert "Server requires External Account Binding" in refused.stderr

    cli_env = server.cli_env()
    minted = ok(run("certctl", "acme", "eab", "create", "--name", "lego", env=cli_env))
    data = json.loads(minted.stdout)
    kid, hmac_key = data["id"], data["hmac_key"]
    assert f"--eab-kid {kid} --eab-hmac-key={hmac_key}" in minted.stderr
    assert f"--eab --kid {kid} --hmac={hmac_key}" in minted.stderr
    eab = ("--eab", "--kid", kid, f"--hmac={hmac_key}")
    home = tmp_path / "lego"
    ok(_lego_run(server, home, http01, "run", eab=eab))
    root = tmp_path / "acme-ca.pem"
    with server.client(server.admin_key) as api:
        root.write_text(api.get(f"/api/v1/issuers/{ISSUER}/ca.pem").text)
    ok(run("openssl", "verify", "-CAfile", root, home / "certificates" / "localhost.crt"))

    listed = ok(run("certctl", "acme", "eab", "list", "-o", "json", env=cli_env))
    (row,) = json.loads(listed.stdout)["items"]
    assert row["id"] == kid
    assert row["account_id"]
    assert hmac_key not in listed.stdout
    # The same key for another lego account (its own account key): refused.
    again = failed(_lego_run(server, tmp_path / "lego-2", http01, "run", eab=eab))
    assert "already bound" in again.stdout + again.stderr
    revoked = ok(run("certctl", "acme", "eab", "revoke", kid, env=cli_env))
    account = row["account_id"]
    assert f"the ACME account it bound, {account}, is deactivated" in revoked.stderr
    # Revoked, the key binds nothing more, and the account it bound is cut off: lego's renewal
    # with its saved account is refused (lego wants the flags whenever the directory says EAB
    # is required).
    renew = ("renew", "--days", "365", "--no-random-sleep")
    cut = failed(_lego_run(server, home, http01, *renew, eab=eab))
    assert "urn:ietf:params:acme:error:unauthorized" in cut.stdout + cut.stderr
    shown = json.loads(ok(run("certctl", "acme", "accounts", "get", account, env=cli_env)).stdout)
    assert (shown["status"], shown["eab_key_id"], shown["certificates"]) == ("deactivated", kid, 1)
    gone = failed(run("certctl", "acme", "eab", "revoke", "nosuchkey", env=cli_env))
    assert gone.stderr.startswith("certctl: error: ")
    assert len(gone.stderr.strip().splitlines()) == 1


def test_lego_gets_a_wildcard_certificate_by_dns01_through_rfc2136_updates(
    start_server: StartServer, tmp_path: Path
) -> None:
    # docs/acme.md's dns-01 set-up: BIND 9 serves the zone and takes lego's TSIG-signed
    # updates (RFC 2136), certctl resolves _acme-challenge there (acme.dns-resolvers).
    with running_bind9(tmp_path / "named", ZONE, acme_only=True) as bind9:
        acme = {
            "enabled": True,
            "issuer": ISSUER,
            "allowed-names": [f"*.{ZONE}", ZONE],
            "dns-resolvers": [bind9.address],
        }
        server, root = acme_server(start_server, tmp_path, acme)
        home = tmp_path / "lego"
        env = {
            **os.environ,
            "LEGO_CA_CERTIFICATES": str(server.ca),
            "RFC2136_NAMESERVER": bind9.address,
            "RFC2136_TSIG_KEY": TSIG_NAME,
            "RFC2136_TSIG_ALGORITHM": f"{TSIG_ALGORITHM}.",
            "RFC2136_TSIG_SECRET": bind9.tsig_secret,
            "RFC2136_POLLING_INTERVAL": "1",
            "RFC2136_PROPAGATION_TIMEOUT": "30",
            "RFC2136_SEQUENCE_INTERVAL": "1",  # between the two names: 60 s by default
        }
        # --dns.resolvers: where lego finds the zone (its SOA) to update; --dns.disable-cp: no
        # wait for the zone's NS (ns.test.example, port 53) to show the record: it is named.
        lego = (
            "lego",
            "--path", home, "--server", f"{server.url}/acme/directory", "--accept-tos",
            "--email", "ops@example.internal",
            "--domains", f"*.{ZONE}", "--domains", ZONE,
            "--dns", "rfc2136", "--dns.resolvers", bind9.address, "--dns.disable-cp",
        )  # fmt: skip
        ok(run(*lego, "run", env=env, timeout=120))
        crt = home / "certificates" / f"_.{ZONE}.crt"
        ok(run("openssl", "verify", "-CAfile", root, crt))
        leaf = x509.load_pem_x509_certificate(crt.read_bytes())
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(sans.get_values_for_type(x509.DNSName)) == [f"*.{ZONE}", ZONE]
        # lego removed its records once done.
        assert bind9.txt(f"_acme-challenge.{ZONE}") == []
        # The key of docs/acme.md's update-policy changes nothing else in the zone.
        with pytest.raises(AssertionError, match="REFUSED"):
            bind9.set_txt(f"www.{ZONE}", "not the key's to set")
