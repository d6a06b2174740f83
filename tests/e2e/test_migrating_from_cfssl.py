"""docs/migrating-from-cfssl.md, verbatim, with real cfssl, openssl, nginx and curl.

The page's ``sh`` blocks run in order in one shell, as a user pastes them, in a directory
holding ``certctl-data`` of a running server; only the port differs from the page's
``127.0.0.1:8443``. What the page says of the result (the old cfssl root alone trusts what
certctl issued, nginx serving it; the CRLs list the revoked serials) is then checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from tests._nginx import loopback_listener, nginx_conf, port_of, running_nginx
from tests._tools import ok, require, run
from tests.e2e.conftest import StartServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "migrating-from-cfssl.md"
DEFAULT_URL = "https://127.0.0.1:8443"


def _blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", PAGE.read_text(), re.S)


def _user_env() -> dict[str, str]:
    """The user's shell: certctl on the PATH (the venv activated), no CERTCTL_* set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    for tool in ("cfssl", "cfssljson", "jq", "openssl"):
        require(tool)  # a missing one fails the test naming its package
    return ok(run("bash", "-euo", "pipefail", "-c", script, cwd=cwd, env=_user_env()))


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _curl(port: int, ca: Path) -> subprocess.CompletedProcess[str]:
    return run("curl", "-sS", "--max-time", "10", "--cacert", ca,
               "--resolve", f"app.example.internal:{port}:127.0.0.1",
               f"https://app.example.internal:{port}/")  # fmt: skip


def test_the_migration_page_works_verbatim(start_server: StartServer, tmp_path: Path) -> None:
    blocks = _blocks()
    assert len(blocks) == 6, blocks
    script = "\n".join(blocks)
    assert script.count(DEFAULT_URL) == 1, "the page should set CERTCTL_URL once"
    server = start_server()
    home = tmp_path / "pki"
    home.mkdir()
    (home / "certctl-data").symlink_to(server.data_dir)
    done = _sh(script.replace(DEFAULT_URL, server.url), home)
    out = done.stdout

    root = _certs(home / "root.pem")[0]
    inter = _certs(home / "intermediate.pem")[0]
    # Offline: the new leaf carries the cfssl intermediate, its ca.crt is the cfssl root.
    assert _certs(home / "web" / "tls.crt")[1:] == [inter]
    assert _certs(home / "web" / "ca.crt") == [root]
    assert (
        (home / "issuing-ca-enc" / "ca.key")
        .read_text()
        .startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    )
    assert "old-web.pem is revoked" in out
    old_serial = _certs(home / "old-web.pem")[0].serial_number
    offline_crl = x509.load_pem_x509_crl((home / "issuing-ca.crl").read_bytes())
    assert [e.serial_number for e in offline_crl] == [old_serial]

    # On the server: the CSR cfssl made, signed under the imported intermediate.
    app = _certs(home / "app" / "tls.crt")
    assert app[1:] == [inter]
    assert _certs(home / "app" / "ca.crt") == [root]
    server_crl = x509.load_pem_x509_crl((home / "example-issuing.crl.pem").read_bytes())
    # The leaf cfssl issued before, imported into the inventory and revoked through the server.
    assert {e.serial_number for e in server_crl} == {app[0].serial_number, old_serial}
    assert "the server's CRL revokes old-web.pem" in out
    assert "old-web.example.internal" in out  # what `certs import` printed it recorded
    # Run again with --skip-existing: nothing recorded twice, old-web.pem named as held.
    assert "certctl: skipped certificate 1 (CN=old-web.example.internal" in done.stderr
    assert "verify OK" in done.stderr  # openssl crl -CAfile intermediate.pem says it there
    # The intermediate the server made under the imported root follows its leaf.
    leaf_2, inter_2 = _certs(home / "web-2" / "tls.crt")
    assert (leaf_2.issuer, inter_2.issuer) == (inter_2.subject, root.subject)
    assert _certs(home / "web-2" / "ca.crt") == [root]

    # nginx serving app/tls.crt with the key cfssl made: a client trusting only the old
    # cfssl root accepts it; one trusting another root (certctl's own) does not.
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    listener = loopback_listener()
    port = port_of(listener)
    conf = nginx_dir / "nginx.conf"
    conf.write_text(
        nginx_conf(
            nginx_dir,
            f"    server {{\n        listen 127.0.0.1:{port} ssl;\n"
            f"        ssl_certificate {home / 'app' / 'tls.crt'};\n"
            f"        ssl_certificate_key {home / 'app-key.pem'};\n"
            "        location / { return 200 'migrated\\n'; }\n    }\n",
        )
    )
    with running_nginx(conf, nginx_dir, listener):
        assert ok(_curl(port, home / "root.pem")).stdout == "migrated\n"
        refused = _curl(port, server.ca)
        assert refused.returncode == 60, refused.stderr

    # "An intermediate imported alone, from its own file, after its root is given the chain
    # from the root the server holds."
    env = {
        "CERTCTL_URL": server.url,
        "CERTCTL_CA_CERT": str(server.ca),
        "CERTCTL_API_KEY": server.admin_key,
    }
    alone = ok(
        run("bash", "-c", "certctl issuers import alone --cert intermediate.pem "
            "--key intermediate-key.pem", cwd=home, env={**_user_env(), **env})
    )  # fmt: skip
    answer = json.loads(alone.stdout)
    assert answer["warnings"] == []
    assert x509.load_pem_x509_certificates(answer["chain_pem"].encode()) == [root]
