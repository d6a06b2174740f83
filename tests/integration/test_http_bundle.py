"""``certctl http`` with a CA password: the new CA's ``ca/ca.key`` and ``ca/ca.p12`` read back
by ``openssl``, Java's ``keytool`` and certctl itself (the installed console script)."""

from __future__ import annotations

import socket
import zipfile
from pathlib import Path

import pytest

from tests._nginx import (
    loopback_listener,
    nginx_conf,
    port_of,
    running_nginx,
    start_nginx,
    wait_serving,
)
from tests._tools import failed, ok, run, stop
from tests.integration.conftest import certctl_exe

pytestmark = pytest.mark.integration

CA_PASSWORD = "Root-key pass 1"


@pytest.fixture(scope="module")
def bundle_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``ca/`` folder of a bundle made with ``--ca-password-file``, unpacked."""
    base = tmp_path_factory.mktemp("http-ca")
    (base / "ca-pw").write_text(CA_PASSWORD + "\n")
    result = ok(
        certctl_exe(
            "http",
            "--non-interactive",
            "--pem",
            "--node",
            "es1",
            "--out",
            base / "b.zip",
            "--ca-password-file",
            base / "ca-pw",
        )
    )
    assert result.stderr == ""  # no "ca/ca.key … is not encrypted" warning
    # unzip, as a user would: it applies the modes stored in the zip (0600 for keys).
    ok(run("unzip", "-q", base / "b.zip", "-d", base / "unpacked"))
    return base / "unpacked" / "ca"


@pytest.fixture(scope="module")
def password_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("http-ca-passwords")
    (base / "right").write_text(CA_PASSWORD + "\n")
    (base / "wrong").write_text("not the password\n")
    return base / "right", base / "wrong"


def test_openssl_reads_ca_key_with_the_password_only(
    bundle_ca: Path, password_files: tuple[Path, Path]
) -> None:
    right, wrong = password_files
    key = bundle_ca / "ca.key"
    assert key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    ok(run("openssl", "pkey", "-in", key, "-passin", f"file:{right}", "-noout"))
    failed(run("openssl", "pkey", "-in", key, "-passin", f"file:{wrong}", "-noout"))
    # The key belongs to ca.crt.
    from_key = ok(run("openssl", "pkey", "-in", key, "-passin", f"file:{right}", "-pubout"))
    from_cert = ok(run("openssl", "x509", "-in", bundle_ca / "ca.crt", "-noout", "-pubkey"))
    assert from_key.stdout == from_cert.stdout


def test_certctl_signs_with_the_bundle_ca(
    bundle_ca: Path, password_files: tuple[Path, Path], tmp_path: Path
) -> None:
    right, _ = password_files
    ok(
        certctl_exe(
            "cert",
            "issue",
            "--ca",
            bundle_ca,
            "--ca-password-file",
            right,
            "--cn",
            "app.example.com",
            "--dns",
            "app.example.com",
            "--out",
            tmp_path / "app",
        )
    )
    ok(
        certctl_exe(
            "http",
            "--non-interactive",
            "--pem",
            "--node",
            "es2",
            "--out",
            tmp_path / "2.zip",
            "--ca",
            bundle_ca,
            "--ca-password-file",
            right,
        )
    )
    zipfile.ZipFile(tmp_path / "2.zip").extractall(tmp_path / "2")
    for leaf in (tmp_path / "app" / "tls.crt", tmp_path / "2" / "elasticsearch/es2/http.crt"):
        result = ok(run("openssl", "verify", "-CAfile", bundle_ca / "ca.crt", leaf))
        assert result.stdout.strip().endswith(": OK")
    # Without the password certctl says which option it needs, in one line.
    result = failed(
        certctl_exe("cert", "issue", "--ca", bundle_ca, "--cn", "x", "--out", tmp_path / "x")
    )
    assert "--ca-password-file" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_keytool_lists_ca_p12_as_certutil_writes_it(
    bundle_ca: Path, password_files: tuple[Path, Path]
) -> None:
    store = bundle_ca / "ca.p12"
    assert store.stat().st_mode & 0o777 == 0o600
    assert (bundle_ca / "ca.key").stat().st_mode & 0o777 == 0o600
    result = ok(run("keytool", "-list", "-v", "-storetype", "PKCS12", "-keystore", store,
                    "-storepass", CA_PASSWORD))  # fmt: skip
    assert "Your keystore contains 1 entry" in result.stdout
    assert "Alias name: ca\n" in result.stdout
    assert "Entry type: PrivateKeyEntry" in result.stdout
    assert "Owner: CN=Elasticsearch HTTP CA" in result.stdout
    wrong = failed(run("keytool", "-list", "-storetype", "PKCS12", "-keystore", store,
                       "-storepass", "not the password"))  # fmt: skip
    assert "password was incorrect" in wrong.stdout + wrong.stderr
    # openssl opens it with the same password file as ca.key.
    right, _ = password_files
    ok(run("openssl", "pkcs12", "-in", store, "-passin", f"file:{right}", "-noout"))


def _nginx_from_sample(d: Path, sample: str, port: int, tls: Path) -> Path:
    """``d``/nginx.conf: the sample's server block as written, but on 127.0.0.1:``port``,
    its /etc/nginx/tls/ files in ``tls`` and a fixed answer for its location."""
    server = sample.split("server {", 1)[1].rsplit("}", 1)[0]
    server = server.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    server = server.replace("/etc/nginx/tls/", f"{tls}/")
    server = server.replace("root /usr/share/nginx/html;", 'return 200 "hello\\n";')
    conf = d / "nginx.conf"
    conf.write_text(nginx_conf(d, f"    server {{{server}}}\n"))
    return conf


@pytest.mark.parametrize("legacy", [False, True], ids=["aes", "p12-legacy"])
def test_generic_p12_sample_commands_feed_nginx(tmp_path: Path, legacy: bool) -> None:
    # The openssl lines of sample-nginx.conf, run as written (plus -passin, where a user
    # types the password), give nginx the files it serves; curl trusts them with the
    # bundle's client/ca.crt. They used -noenc and, for --p12-legacy, -legacy: options
    # OpenSSL 1.1.1 (RHEL 8, Ubuntu 20.04) refuses, and that 3.x does not need for 3DES.
    (tmp_path / "pw").write_text("Http-p12 pass\n")
    ok(certctl_exe("http", "--non-interactive", "--profile", "generic", "--node", "web",
                   "--dns", "web=localhost", "--password-file", tmp_path / "pw",
                   *(["--p12-legacy"] if legacy else []), "--out", tmp_path / "b.zip"))  # fmt: skip
    ok(run("unzip", "-q", tmp_path / "b.zip", "-d", tmp_path / "b"))
    web = tmp_path / "b" / "web"
    sample = (web / "sample-nginx.conf").read_text()
    commands = [
        line.removeprefix("#   ") for line in sample.splitlines() if line.startswith("#   ")
    ]
    assert commands[-1] == "chmod 600 http.key"
    for command in commands[:-1]:
        argv = command.split()
        assert argv[:2] == ["openssl", "pkcs12"], command
        assert not {"-noenc", "-legacy"} & set(argv), command  # 3.x only
        ok(run(*argv, "-passin", f"file:{tmp_path / 'pw'}", cwd=web))
    ok(run("chmod", "600", "http.key", cwd=web))
    listener = loopback_listener()  # held for nginx: see tests._nginx
    port = port_of(listener)
    conf = _nginx_from_sample(tmp_path, sample, port, web)
    with running_nginx(conf, tmp_path, listener):
        result = run("curl", "-sS", "--max-time", "10", "--cacert", tmp_path / "b/client/ca.crt",
                     f"https://localhost:{port}/", timeout=20)  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr


def test_generic_sample_mutual_tls_lines_work_as_their_comment_says(tmp_path: Path) -> None:
    # The commented mTLS lines named /etc/nginx/tls/ca.crt, a file the README's steps
    # never put there (they copy http.crt and http.key). Followed as the comment now says:
    # the client CA's certificate copied to the path, a client certificate from that CA.
    ok(certctl_exe("http", "--non-interactive", "--profile", "generic", "--pem", "--node",
                   "web", "--dns", "web=localhost", "--out", tmp_path / "b.zip"))  # fmt: skip
    ok(run("unzip", "-q", tmp_path / "b.zip", "-d", tmp_path / "b"))
    web, tls = tmp_path / "b" / "web", tmp_path / "tls"
    sample = (web / "sample-nginx.conf").read_text()
    assert "# ssl_client_certificate /etc/nginx/tls/client-ca.crt;" in sample
    assert "certctl cert issue --ca CA_DIR --profile client" in sample
    tls.mkdir()
    for name in ("http.crt", "http.key"):  # the README's step 1
        (tls / name).write_bytes((web / name).read_bytes())
    ok(certctl_exe("ca", "create", "--out", tmp_path / "clients", "--cn", "Clients CA"))
    (tls / "client-ca.crt").write_bytes((tmp_path / "clients/ca.crt").read_bytes())
    ok(certctl_exe("cert", "issue", "--ca", tmp_path / "clients", "--cn", "alice",
                   "--profile", "client", "--out", tmp_path / "alice"))  # fmt: skip
    listener = loopback_listener()  # held for nginx: see tests._nginx
    port = port_of(listener)
    uncommented = sample.replace("# ssl_client_certificate", "ssl_client_certificate")
    conf = _nginx_from_sample(
        tmp_path, uncommented.replace("# ssl_verify", "ssl_verify"), port, tls
    )
    curl = ["curl", "-sS", "--max-time", "10", "--cacert", tmp_path / "b/client/ca.crt"]
    url = f"https://localhost:{port}/"
    with running_nginx(conf, tmp_path, listener):
        alice = run(*curl, "--cert", tmp_path / "alice/tls.crt",
                    "--key", tmp_path / "alice/tls.key", url, timeout=20)  # fmt: skip
        anonymous = run(*curl, "-o", "/dev/null", "-w", "%{http_code}", url, timeout=20)
    assert (alice.returncode, alice.stdout) == (0, "hello\n"), alice.stderr
    assert anonymous.stdout == "400"  # nginx: no required SSL certificate was sent


def test_generic_sample_listens_on_ipv6_for_an_ipv6_name(tmp_path: Path) -> None:
    # The sample listened on IPv4 only: a client given the certificate's IPv6 address
    # (curl https://[2001:db8::5]/) reached no nginx. Here [::1] stands for that address.
    ok(certctl_exe("http", "--non-interactive", "--profile", "generic", "--pem", "--node", "web",
                   "--ip", "web=::1", "--out", tmp_path / "b.zip"))  # fmt: skip
    ok(run("unzip", "-q", tmp_path / "b.zip", "-d", tmp_path / "b"))
    web = tmp_path / "b" / "web"
    sample = (web / "sample-nginx.conf").read_text()
    assert "    listen 443 ssl;\n    listen [::]:443 ssl;\n" in sample
    listener = loopback_listener()  # held for nginx: see tests._nginx
    listener6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as nginx binds [::]
    listener6.bind(("::1", 0))
    listener6.listen(64)
    port, port6 = port_of(listener), port_of(listener6)
    conf = _nginx_from_sample(tmp_path, sample, port, web)
    conf.write_text(conf.read_text().replace("listen [::]:443 ssl;", f"listen [::1]:{port6} ssl;"))
    proc = start_nginx(conf, tmp_path, [listener, listener6])
    try:
        wait_serving(proc, tmp_path, port)
        result = run("curl", "-sS", "--max-time", "10", "--cacert", tmp_path / "b/client/ca.crt",
                     f"https://[::1]:{port6}/", timeout=20)  # fmt: skip
    finally:
        stop(proc)
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr
    # A certificate without an IPv6 address keeps the one IPv4 listen line (nginx fails to
    # start on [::] where IPv6 is off).
    ok(certctl_exe("http", "--non-interactive", "--profile", "generic", "--pem", "--node", "v4",
                   "--ip", "v4=10.0.0.5", "--out", tmp_path / "v4.zip"))  # fmt: skip
    ok(run("unzip", "-q", tmp_path / "v4.zip", "-d", tmp_path / "v4"))
    assert "[::]" not in (tmp_path / "v4" / "v4" / "sample-nginx.conf").read_text()
