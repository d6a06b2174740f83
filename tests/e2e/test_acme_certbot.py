"""docs/acme.md's certbot walk-through, verbatim: the real certbot against a real server.

The page's ``sh`` blocks run as it says: the first (an issuer for ACME, the CA files) by the
operator in the repository directory, with the CLI's ``CERTCTL_*`` settings; the server is
then restarted on the page's YAML; the others (certbot certonly, renew, revoke with the
account's key and with the certificate's, the CRL fetched) in one shell as an ordinary user
(``nobody``), in a directory of its own. Only the ports differ from the
page's ``127.0.0.1:8443`` and ``8080``. certbot orders ``localhost``: it accepts the name (its
``certonly -d`` check needs no dot) and it resolves to 127.0.0.1 without touching /etc/hosts.
What the page says of the result is then checked: the certificates verify against the ACME
issuer, are in the inventory and the audit log, renewal makes another one, and the CRL lists
both once revoked, with the reasons given.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests._bind9 import TSIG_ALGORITHM, TSIG_NAME, running_bind9
from tests._tools import free_port, ok, require, run
from tests.e2e.conftest import StartServer
from tests.e2e.test_acme_ip import console_block
from tests.e2e.test_acme_lego import ISSUER as LEGO_ISSUER
from tests.e2e.test_acme_lego import acme_server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "acme.md"
DEFAULT_URL = "https://127.0.0.1:8443"
DEFAULT_HTTP_01_PORT = 8080
NAME = "localhost"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), re.S)


def _acme_config() -> dict[str, Any]:
    """The page's server configuration (its other YAML block is cert-manager's)."""
    configs = [doc for doc in map(yaml.safe_load, _blocks("yaml")) if "acme" in doc]
    assert len(configs) == 1, configs
    config: dict[str, Any] = configs[0]
    assert config["acme"]["http-01-port"] == DEFAULT_HTTP_01_PORT, config
    return config


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A directory of ``nobody``'s own, where that user can reach it (not under pytest's
    0700 base directory), beside a ``venv/bin`` with a certbot it can run."""
    with tempfile.TemporaryDirectory(prefix="certctl-acme-e2e-") as top:
        os.chmod(top, 0o755)
        base = Path(top)
        _certbot_for_others(base / "venv")
        home = base / "home"
        home.mkdir()
        nobody = pwd.getpwnam("nobody")
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        yield home  # nobody's files too are removed, as root, with the directory


def _certbot_for_others(venv: Path) -> None:
    """A venv of the system Python that sees the project venv's packages (certbot among them).

    The project venv's interpreter may live under /root (pyenv, uv), which another user cannot
    run (/work/shared/TEST-TOOLS.md); the system Python is the same minor version on the
    Debian 12 this project targets, so the project's wheels load in it unchanged.
    """
    require("certbot")  # missing: fails naming `uv sync --group dev`
    version = ok(run(SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])")).stdout
    assert version.strip() == str(sys.version_info[:2]), (
        f"{SYSTEM_PYTHON} is {version.strip()}, the project venv {sys.version_info[:2]}: "
        "the test runs certbot as nobody through the system Python"
    )
    ok(run(SYSTEM_PYTHON, "-m", "venv", "--without-pip", venv))
    site = ok(run(venv / "bin" / "python", "-c", "import sysconfig; "
                  "print(sysconfig.get_paths()['purelib'])")).stdout.strip()  # fmt: skip
    (Path(site) / "certctl-project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    launcher = venv / "bin" / "certbot"
    body = "import sys\nfrom certbot.main import main\nsys.exit(main())\n"
    launcher.write_text(f"#!{venv / 'bin' / 'python'}\n{body}")
    launcher.chmod(0o755)


def _operator_env(url: str, ca: Path, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    return {**env, "CERTCTL_URL": url, "CERTCTL_CA_CERT": str(ca), "CERTCTL_API_KEY": key}


def _as_nobody(script: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in bash as ``nobody`` (its own group only) in ``home``, certbot on the PATH."""
    nobody = pwd.getpwnam("nobody")
    path = f"{home.parent / 'venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8"}
    for tool in ("bash", "openssl", "curl"):
        require(tool)
    setpriv = ("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups")
    return run(*setpriv, "bash", "-euo", "pipefail", "-c", script, cwd=home, env=env, timeout=300)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_certbot_walkthrough_works_verbatim(start_server: StartServer, user_dir: Path) -> None:
    sh = _blocks("sh")
    assert len(sh) == 6, sh
    operator, certbot = sh[0], "\n".join(sh[1:])
    assert certbot.count(DEFAULT_URL) == 3, "certbot's --server (twice) and the CRL's curl"
    assert certbot.count(f"--http-01-port {DEFAULT_HTTP_01_PORT}") == 1
    home = user_dir

    # The operator, with ACME off: the issuer ACME will use, the two CA files.
    first = start_server()
    (home / "certctl-data").symlink_to(first.data_dir)
    (home / ".venv").symlink_to(ROOT / ".venv")
    env = _operator_env(first.url, first.ca, first.admin_key)
    ok(run("bash", "-euo", "pipefail", "-c", operator, cwd=home, env=env))
    acme_ca = _cert(home / "acme-ca.pem")
    assert acme_ca.subject == acme_ca.issuer  # a root of its own, not under `default`
    assert (home / "certctl-ca.crt").read_bytes() == first.ca.read_bytes()
    first.stop()

    # The page's configuration, but on a free port for http-01 (8080 may be taken).
    port = free_port()
    config = _acme_config()
    config["acme"]["http-01-port"] = port
    server = start_server(data_dir=first.data_dir, config=config)

    script = certbot.replace(DEFAULT_URL, server.url)
    script = script.replace(f"--http-01-port {DEFAULT_HTTP_01_PORT}", f"--http-01-port {port}")
    done = ok(_as_nobody(script, home))

    live = home / "certbot" / "config" / "live" / NAME
    archive = home / "certbot" / "config" / "archive" / NAME
    issued, renewed = _cert(archive / "cert1.pem"), _cert(archive / "cert2.pem")
    assert _cert(live / "cert.pem") == renewed
    assert issued.serial_number != renewed.serial_number
    for leaf in (issued, renewed):
        assert leaf.issuer == acme_ca.subject
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [NAME]
    # Both verify against the ACME issuer, as the page's openssl lines said (twice).
    assert done.stdout.count(f"certbot/config/live/{NAME}/cert.pem: OK") == 2, done.stdout
    # fullchain.pem is the leaf, then what certctl sent after it.
    chain = x509.load_pem_x509_certificates((live / "fullchain.pem").read_bytes())
    assert chain[0] == renewed
    assert chain[1:], "certbot takes a chain of 2 certificates or more"
    # The key stayed with certbot, which made it (P-256, as the page says) and owns it.
    public_key = renewed.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    key = live / "privkey.pem"
    assert key.resolve().stat().st_uid == pwd.getpwnam("nobody").pw_uid

    # The inventory holds both, under the ACME issuer, made by certbot's one account; the
    # audit log has that account's creation, both issuances and the revocation.
    with server.client(server.admin_key) as client:
        listed = client.get("/api/v1/certificates", params={"issuer": "acme"}).json()["items"]
        by_serial = {int(item["serial"], 16): item for item in listed}
        assert set(by_serial) == {issued.serial_number, renewed.serial_number}, listed
        first_row, renewed_row = by_serial[issued.serial_number], by_serial[renewed.serial_number]
        actor = first_row["created_by"]
        assert actor.startswith("acme:"), first_row
        assert renewed_row["created_by"] == actor
        assert (first_row["status"], renewed_row["status"]) == ("revoked", "revoked")
        assert renewed_row["revocation_reason"] == "superseded"
        assert first_row["revocation_reason"] == "keyCompromise"
        events = client.get("/api/v1/audit", params={"actor": actor, "limit": 200}).json()
        revoked = client.get(
            "/api/v1/audit", params={"action": "certificate.revoke", "limit": 200}
        ).json()
    actions = [event["action"] for event in events["items"]]
    # The account ordered both and revoked the renewed one; the revocation signed by the
    # first certificate's own key is its key holder's doing (acme:key-<thumbprint>), not
    # necessarily the account's.
    expected = {"acme.account.create": 1, "certificate.issue": 2, "certificate.revoke": 1}
    assert {action: actions.count(action) for action in expected} == expected, actions
    revokers = sorted(event["actor"] for event in revoked["items"])
    assert len(revokers) == 2, revokers
    assert actor in revokers, revokers
    assert next(r for r in revokers if r != actor).startswith("acme:key-"), revokers

    # The CRL the page fetched lists both, for the reasons certbot gave.
    crl = x509.load_der_x509_crl((home / "acme.crl").read_bytes())
    assert crl.is_signature_valid(acme_ca.public_key())  # type: ignore[arg-type]
    reasons = {
        entry.serial_number: entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        for entry in crl
    }
    assert reasons == {
        issued.serial_number: x509.ReasonFlags.key_compromise,
        renewed.serial_number: x509.ReasonFlags.superseded,
    }
    # The page's `openssl x509 -serial` lines, then `openssl crl -text` listing them.
    shown = [int(s, 16) for s in re.findall(r"^serial=([0-9A-F]+)$", done.stdout, re.M)]
    assert shown == [issued.serial_number, renewed.serial_number], done.stdout
    listed_by_openssl = re.findall(r"Serial Number: ([0-9A-F]+)", done.stdout)
    assert sorted(int(s, 16) for s in listed_by_openssl) == sorted(shown), done.stdout
    # A name outside acme.allowed-names: certbot exits 1 with the server's reason, on one
    # line, and nothing more is issued.
    outside = "app.example.internal"
    refused = _as_nobody(
        "REQUESTS_CA_BUNDLE=$PWD/certctl-ca.crt certbot certonly --standalone --non-interactive"
        f" --server {server.url}/acme/directory --config-dir certbot/config"
        " --work-dir certbot/work --logs-dir certbot/logs --http-01-address 127.0.0.1"
        f" --http-01-port {port} -d {outside}",
        home,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    reason = f"{outside}: not among the names this server issues for (acme.allowed-names)"
    assert f"\nRejected identifier :: {reason}\n" in refused.stderr, refused.stderr
    assert f"Rejected identifier :: {reason}" in " ".join(PAGE.read_text().split())  # quoted
    with server.client(server.admin_key) as client:
        after = client.get("/api/v1/certificates", params={"issuer": "acme"}).json()["items"]
    assert len(after) == 2, after
    # openssl agrees: with the CRL, both are refused as revoked.
    crl_pem = home.parent / "acme-crl.pem"
    ok(run("openssl", "crl", "-inform", "DER", "-in", home / "acme.crl", "-out", crl_pem))
    for leaf_file in (archive / "cert1.pem", archive / "cert2.pem"):
        refused = run("openssl", "verify", "-crl_check", "-CAfile", home / "acme-ca.pem",
                      "-CRLfile", crl_pem, leaf_file)  # fmt: skip
        assert refused.returncode != 0
        assert "certificate revoked" in refused.stdout + refused.stderr


def test_certbot_registers_with_an_eab_key_when_the_server_requires_one(
    start_server: StartServer, user_dir: Path
) -> None:
    first = start_server()
    with first.client(first.admin_key) as client:
        r = client.post("/api/v1/issuers", json={"id": "acme", "common_name": "ACME CA"})
        assert r.status_code == 201, r.text
    first.stop()
    acme = {"enabled": True, "issuer": "acme", "external-account-required": True}
    server = start_server(data_dir=first.data_dir, config={"acme": acme})
    home = user_dir
    (home / "certctl-ca.crt").write_bytes(server.ca.read_bytes())
    register = (
        "REQUESTS_CA_BUNDLE=$PWD/certctl-ca.crt certbot register --non-interactive --agree-tos"
        f" --email ops@example.internal --server {server.url}/acme/directory"
        " --config-dir certbot/config --work-dir certbot/work --logs-dir certbot/logs"
    )
    refused = _as_nobody(register, home)
    assert refused.returncode != 0
    assert "requires external account binding" in refused.stderr.lower(), refused.stderr

    env = _operator_env(server.url, server.ca, server.admin_key)
    minted = ok(run("certctl", "acme", "eab", "create", "--name", "certbot", env=env))
    data = json.loads(minted.stdout)
    flags = f"--eab-kid {data['id']} --eab-hmac-key={data['hmac_key']}"
    assert flags in minted.stderr  # the line certctl prints for certbot, used as printed
    ok(_as_nobody(f"{register} {flags}", home))
    with server.client(server.admin_key) as client:
        (key,) = client.get("/api/v1/acme/eab-keys").json()["items"]
        events = client.get("/api/v1/audit", params={"action": "acme.account.create"}).json()
    assert key["account_id"], key
    (event,) = events["items"]
    assert event["actor"] == f"acme:{key['account_id']}"
    assert event["detail"].endswith(f"bound by EAB key {data['id']} of {key['actor_id']}")


def test_certbot_dns_rfc2136_gets_a_wildcard_certificate_by_dns01(
    start_server: StartServer, tmp_path: Path
) -> None:
    # certbot's RFC 2136 plugin (certbot-dns-rfc2136) sets the TXT records in BIND 9 with
    # the TSIG key; certctl reads them there (acme.dns-resolvers). As root: no port to bind.
    require("certbot")
    zone = "test.example"
    with running_bind9(tmp_path / "named", zone, acme_only=True) as bind9:
        acme = {
            "enabled": True,
            "issuer": LEGO_ISSUER,
            "allowed-names": [f"*.{zone}"],
            "dns-resolvers": [bind9.address],
        }
        server, root = acme_server(start_server, tmp_path, acme)
        credentials = tmp_path / "rfc2136.ini"
        credentials.write_text(
            f"dns_rfc2136_server = 127.0.0.1\n"
            f"dns_rfc2136_port = {bind9.port}\n"
            f"dns_rfc2136_name = {TSIG_NAME}\n"
            f"dns_rfc2136_secret = {bind9.tsig_secret}\n"
            f"dns_rfc2136_algorithm = {TSIG_ALGORITHM.upper()}\n"
        )
        credentials.chmod(0o600)  # certbot warns about a credentials file others can read
        state = tmp_path / "certbot"
        dirs = [f"--{kind}-dir={state / kind}" for kind in ("config", "work", "logs")]
        env = {**os.environ, "REQUESTS_CA_BUNDLE": str(server.ca)}
        certbot = (
            "certbot", "certonly", "--non-interactive", "--agree-tos",
            "--email", "ops@example.internal", "--server", f"{server.url}/acme/directory",
            "--authenticator", "dns-rfc2136", "--dns-rfc2136-credentials", credentials,
            "--dns-rfc2136-propagation-seconds", "1",
        )  # fmt: skip
        ok(run(*certbot, *dirs, "-d", f"*.{zone}", env=env, timeout=120))
        live = state / "config" / "live" / zone
        ok(run("openssl", "verify", "-CAfile", root, live / "cert.pem"))
        sans = _cert(live / "cert.pem").extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert sans.value.get_values_for_type(x509.DNSName) == [f"*.{zone}"]
        assert bind9.txt(f"_acme-challenge.{zone}") == []  # certbot's cleanup


def test_certbot_renew_renews_a_revoked_certificate_at_once_by_ari_and_leaves_a_live_one(
    start_server: StartServer, tmp_path: Path
) -> None:
    # Two lineages of one name: "live" and "revoked". The operator revokes the second's
    # certificate through certctl's API; one plain `certbot renew` (no --force-renewal) then
    # asks renewalInfo for each (certbot 4.1+: RFC 9773) and renews the revoked one only.
    # certbot's other reasons to renew are out of the way: both are minutes old (its default
    # is two thirds of 90 days), and certctl's certificates name no OCSP responder (certbot's
    # OCSP check finds none to ask).
    require("certbot")
    http01 = free_port()
    acme = {"enabled": True, "issuer": LEGO_ISSUER, "http-01-port": http01}
    server, _ = acme_server(start_server, tmp_path, acme)
    state = tmp_path / "certbot"
    dirs = [f"--{kind}-dir={state / kind}" for kind in ("config", "work", "logs")]
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(server.ca)}
    directory = f"{server.url}/acme/directory"
    for lineage in ("live", "revoked"):
        certbot = (
            "certbot", "certonly", "--standalone", "--non-interactive", "--agree-tos",
            "--email", "ops@example.internal", "--server", directory,
            "--http-01-address", "127.0.0.1", "--http-01-port", str(http01),
            "--cert-name", lineage, "-d", NAME,
        )  # fmt: skip
        ok(run(*certbot, *dirs, env=env, timeout=120))
    archive = state / "config" / "archive"
    live, revoked = _cert(archive / "live" / "cert1.pem"), _cert(archive / "revoked" / "cert1.pem")
    for leaf in (live, revoked):
        with pytest.raises(x509.ExtensionNotFound):
            leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    with server.client(server.admin_key) as client:
        listed = client.get("/api/v1/certificates", params={"issuer": LEGO_ISSUER}).json()
        by_serial = {int(item["serial"], 16): item for item in listed["items"]}
        row = by_serial[revoked.serial_number]
        r = client.post(
            f"/api/v1/certificates/{row['id']}/revoke", json={"reason": "keyCompromise"}
        )
        assert r.status_code == 200, r.text

    log = state / "logs" / "letsencrypt.log"
    log.unlink()  # certonly's lines: the renew's alone are read below
    renew = ("certbot", "renew", "--no-random-sleep-on-renew", "--non-interactive")
    done = ok(run(*renew, *dirs, env=env, timeout=180))
    said = done.stdout + done.stderr
    assert "Certificate not yet due for renewal" in said, said
    assert "live/fullchain.pem expires on" in said.split("not due for renewal yet:")[1], said
    assert "live/revoked/fullchain.pem (success)" in said, said
    # The revoked lineage has a second certificate, the live one none.
    assert sorted(p.name for p in (archive / "revoked").glob("cert*.pem")) == [
        "cert1.pem",
        "cert2.pem",
    ]
    assert sorted(p.name for p in (archive / "live").glob("cert*.pem")) == ["cert1.pem"]
    renewed = _cert(archive / "revoked" / "cert2.pem")
    assert renewed.serial_number not in (live.serial_number, revoked.serial_number)
    # certbot asked renewalInfo for both, by their certIDs, and was answered (200).
    text = log.read_text()
    renewal_info = f"{server.url}/acme/renewal-info/"
    asked = re.findall(rf"Sending GET request to {re.escape(renewal_info)}(\S+)\.\n", text)
    assert sorted(asked) == sorted([_cert_id(live), _cert_id(revoked)]), text
    assert text.count('"suggestedWindow"') == 2, text
    assert "An error occurred requesting ACME Renewal Information" not in text
    assert text.count("Certificate is due for renewal, auto-renewing...") == 1, text
    # It keeps certctl's Retry-After (6 hours) as the time to ask again.
    conf = (state / "config" / "renewal" / "live.conf").read_text()
    found = re.search(r"^\[acme_renewal_info\]\nari_retry_after = (\S+)$", conf, re.M)
    assert found, conf
    wait = datetime.fromisoformat(found.group(1)) - datetime.now()  # certbot's: naive, local
    assert timedelta(hours=5, minutes=50) < wait <= timedelta(hours=6), conf
    with server.client(server.admin_key) as client:
        listed = client.get("/api/v1/certificates", params={"issuer": LEGO_ISSUER}).json()
    states = {int(item["serial"], 16): item["status"] for item in listed["items"]}
    assert states == {
        live.serial_number: "active",
        revoked.serial_number: "revoked",
        renewed.serial_number: "active",
    }


def _cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 4.1's certID: base64url(AKI keyIdentifier) "." base64url(serial's DER value)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    serial = cert.serial_number.to_bytes(cert.serial_number.bit_length() // 8 + 1, "big")
    return ".".join(
        base64.urlsafe_b64encode(part).rstrip(b"=").decode()
        for part in (aki.key_identifier, serial)
    )


def test_certbot_starts_over_with_a_new_account_as_the_page_says_after_a_deactivation(
    start_server: StartServer, tmp_path: Path
) -> None:
    # "Operating the ACME server": the operator deactivates the account (its key leaked) and
    # revokes its certificate; certbot, which keeps that account, then orders the lineage
    # again by the page's commands (only the ports differ) under a new account, which its
    # renewal file names from then on.
    require("certbot")
    http01 = free_port()
    acme = {"enabled": True, "issuer": LEGO_ISSUER, "http-01-port": http01}
    server, _ = acme_server(start_server, tmp_path, acme)
    home = tmp_path / "user"
    (home / "certbot").mkdir(parents=True)
    (home / "certctl-ca.crt").write_bytes(server.ca.read_bytes())
    commands, shown = console_block(
        "## Operating the ACME server", after="The holder of an account an operator deactivated"
    )
    assert shown == "", shown
    host_port = server.url.removeprefix("https://")
    script = "\n".join(commands).replace("127.0.0.1:8443", host_port)
    assert script.count(host_port) == 2, script  # the account's directory and --server
    script = script.replace(f"--http-01-port {DEFAULT_HTTP_01_PORT}", f"--http-01-port {http01}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # The first certificate: the same certonly, before any of this (no account to delete).
    first, order = script.split("\n", 1)
    assert first.startswith("rm -r "), first
    ok(run("bash", "-euo", "pipefail", "-c", order, cwd=home, env=env, timeout=120))
    renewal = home / "certbot" / "config" / "renewal" / f"{NAME}.conf"
    old_account = re.findall(r"^account = (\S+)$", renewal.read_text(), re.M)
    with server.client(server.admin_key) as client:
        [row] = client.get("/api/v1/certificates", params={"issuer": LEGO_ISSUER}).json()["items"]
    account_id = row["created_by"].removeprefix("acme:")
    ok(server.cli("acme", "accounts", "deactivate", account_id, "--revoke-certificates",
                  "--reason", "keyCompromise"))  # fmt: skip

    ok(run("bash", "-euo", "pipefail", "-c", script, cwd=home, env=env, timeout=120))
    live = _cert(home / "certbot" / "config" / "live" / NAME / "cert.pem")
    assert live.serial_number != int(row["serial"], 16)
    new_account = re.findall(r"^account = (\S+)$", renewal.read_text(), re.M)
    assert new_account != old_account, renewal.read_text()
    with server.client(server.admin_key) as client:
        accounts = client.get("/api/v1/acme/accounts").json()["items"]
        listed = client.get("/api/v1/certificates", params={"issuer": LEGO_ISSUER}).json()
    assert sorted(a["status"] for a in accounts) == ["deactivated", "valid"], accounts
    [valid] = [a for a in accounts if a["status"] == "valid"]
    states = {int(i["serial"], 16): (i["status"], i["created_by"]) for i in listed["items"]}
    assert states[live.serial_number] == ("active", f"acme:{valid['id']}"), states
