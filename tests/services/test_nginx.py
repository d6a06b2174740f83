"""A real nginx fed by a directory target: SAN changes and client-certificate trust.

nginx reads ``tls.crt``/``tls.key``/``client-trust.crt`` through the target's symlink; the
target's reload hook is ``kill -HUP <nginx master pid>``. Probes are ``openssl`` and ``curl``
on 127.0.0.1.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certctl.services import service_specs
from tests._nginx import loopback_listener, nginx_conf, port_of, start_nginx, wait_serving
from tests._poll import wait_until
from tests._tools import ok, require, run, stop
from tests.services.conftest import Env, service_doc

pytestmark = pytest.mark.integration

# The inside of the http block; tests._nginx.nginx_conf adds the rest.
NGINX_SERVERS = """\
    ssl_certificate {tls}/tls.crt;
    ssl_certificate_key {tls}/tls.key;
    server {{
        listen 127.0.0.1:{port} ssl;
        location / {{ return 200 "hello\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{mtls_port} ssl;
        ssl_client_certificate {tls}/client-trust.crt;
        ssl_verify_client on;
        location / {{ return 200 "hello $ssl_client_s_dn\\n"; }}
    }}
"""
OLD, NEW = "old.example.test", "new.example.test"
STEP = timedelta(minutes=1)


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    # nginx applies a SIGHUP asynchronously; on a loaded 2-core machine that took > 10 s once.
    wait_until(predicate, what, timeout_s)


@dataclass
class Served:
    env: Env
    tls: Path  # the directory target
    port: int
    mtls_port: int
    pid: int
    directory: Path

    def curl(self, host: str, *args: str | Path, port: int | None = None) -> tuple[int, str]:
        """(curl exit code, HTTP status or '') for GET https://host:port/ via 127.0.0.1."""
        port = port or self.port
        result = run(
            "curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
            "--cacert", self.tls / "ca.crt", "--resolve", f"{host}:{port}:127.0.0.1",
            *args, f"https://{host}:{port}/",
            timeout=15,
        )  # fmt: skip
        return result.returncode, result.stdout

    def settled(self) -> bool:
        """True when nginx runs one worker only: after a reload, the old one has exited.

        A reload starts a new worker before the old one stops taking connections, so a
        client can see the new configuration and then the old one again.
        """
        workers = 0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue  # exited while we looked
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                    workers += 1
        return workers == 1

    def served_certificate(self, server_name: str) -> x509.Certificate:
        result = ok(
            run(
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{self.port}",
                "-servername",
                server_name,
                "-CAfile",
                self.tls / "ca.crt",
                "-verify_hostname",
                server_name,
                "-verify_return_error",
                timeout=15,
                input="",
            )
        )
        pem = re.search(
            r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", result.stdout, re.S
        )
        assert pem, result.stdout
        return x509.load_pem_x509_certificate(pem.group(0).encode())


def _spec(served_tls: Path, dns: str, reload: str | None) -> dict[str, Any]:
    target: dict[str, Any] = {"directory": str(served_tls)}
    if reload:
        target["reload"] = reload
        target["reloadTimeout"] = "5s"
    return service_doc("web", dns=(dns,), ip=("127.0.0.1",), client_auth=True, targets=[target])


def _cli_ca(base: Path, name: str) -> Path:
    ok(run("certctl", "ca", "create", "--out", base / name, "--cn", name))
    return base / name


def _cli_client(base: Path, ca: Path, cn: str) -> Path:
    ok(run("certctl", "cert", "issue", "--ca", ca, "--cn", cn, "--profile", "client",
           "--out", base / cn))  # fmt: skip
    return base / cn


def _client_args(leaf: Path) -> list[str | Path]:
    return ["--cert", leaf / "tls.crt", "--key", leaf / "tls.key"]


@pytest.fixture
def served(env: Env) -> Iterator[Served]:
    require("nginx")
    d = env.tmp / "nginx"
    d.mkdir()
    tls = env.tmp / "etc" / "tls"
    tls.parent.mkdir()
    # Client authentication needs at least one trusted client CA before nginx can start.
    bootstrap_ca = _cli_ca(env.tmp, "bootstrap-clients")
    env.put(_spec(tls, OLD, None))
    with env.client() as client:
        added = client.post(
            "/api/v1/services/web/clients",
            json={"certificate_pem": (bootstrap_ca / "ca.crt").read_text()},
        )
        assert added.status_code == 201, added.text
    env.reconcile("web")
    # Sockets bound here and handed to nginx: a port probed free and bound later by nginx
    # could be taken meanwhile by the other pytest-xdist worker.
    listener, mtls_listener = loopback_listener(), loopback_listener()
    port, mtls_port = port_of(listener), port_of(mtls_listener)
    conf = d / "nginx.conf"
    conf.write_text(nginx_conf(d, NGINX_SERVERS.format(tls=tls, port=port, mtls_port=mtls_port)))
    proc = start_nginx(conf, d, [listener, mtls_listener])
    try:
        wait_serving(proc, d, port)
        wait_serving(proc, d, mtls_port)
        # The reload hook signals this nginx's master process (it runs in the foreground).
        env.put(_spec(tls, OLD, f"{require('kill')} -HUP {proc.pid}"))
        env.reconcile("web", env.now + STEP)
        yield Served(env, tls, port, mtls_port, proc.pid, d)
    finally:
        stop(proc)


def test_san_change_reaches_nginx_after_the_reload_hook(served: Served) -> None:
    env = served.env
    assert served.curl(OLD) == (0, "200")
    assert served.curl("127.0.0.1")[1] == "200"
    code, _ = served.curl(NEW)
    assert code == 60  # negative twin: the name is not in the certificate yet
    old_cert = served.served_certificate(OLD)
    reloads_before = (served.directory / "error.log").read_text().count("reconfiguring")

    env.put(_spec(served.tls, NEW, f"{require('kill')} -HUP {served.pid}"))
    row = env.reconcile("web", env.now + STEP)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    text = ok(run("openssl", "x509", "-in", served.tls / "tls.crt", "-noout", "-text")).stdout
    assert f"DNS:{NEW}" in text
    assert f"DNS:{OLD}" not in text
    assert "IP Address:127.0.0.1" in text
    new_cert = x509.load_pem_x509_certificate((served.tls / "tls.crt").read_bytes())
    assert new_cert != old_cert

    _wait(
        lambda: served.curl(NEW) == (0, "200") and served.settled(),
        "nginx to serve the new certificate",
    )
    log = (served.directory / "error.log").read_text()
    assert log.count("reconfiguring") > reloads_before  # it was the hook's SIGHUP
    assert served.served_certificate(NEW) == new_cert
    code, _ = served.curl(OLD)
    assert code == 60  # the old name is gone


def test_client_trust_registration_and_deregistration(served: Served) -> None:
    env, base = served.env, served.env.tmp
    registered, other = _cli_ca(base, "clients-a"), _cli_ca(base, "unregistered")
    alice = _cli_client(base, registered, "alice")
    mallory = _cli_client(base, other, "mallory")
    with env.client() as client:
        response = client.post(
            "/api/v1/services/web/clients",
            json={"certificate_pem": (registered / "ca.crt").read_text()},
        )
        assert response.status_code == 201, response.text
        fingerprint = response.json()["items"][0]["fingerprint"]
        assert response.json()["warnings"] == []  # a CA: nothing to warn about
        # A client certificate alone, its CA not registered: registered, with a warning that
        # nginx needs the CA (alice's CA is registered: no warning about her).
        mallory_pem = (mallory / "tls.crt").read_text()
        leaf = client.post("/api/v1/services/web/clients", json={"certificate_pem": mallory_pem})
        assert leaf.status_code == 201, leaf.text
        (warning,) = leaf.json()["warnings"]
        assert "CN=mallory is registered without its issuer (CN=unregistered)" in warning
        gone = client.delete(
            f"/api/v1/services/web/clients/{leaf.json()['items'][0]['fingerprint']}"
        )
        assert gone.status_code == 204
    mtls = served.mtls_port
    # Not yet reconciled: nginx does not know the new CA.
    assert served.curl(OLD, *_client_args(alice), port=mtls) == (0, "400")

    env.reconcile("web", env.now + STEP)
    trust = x509.load_pem_x509_certificates((served.tls / "client-trust.crt").read_bytes())
    assert {c.subject.rfc4514_string() for c in trust} == {
        "CN=bootstrap-clients",
        "CN=clients-a",
    }
    _wait(
        lambda: (
            served.curl(OLD, *_client_args(alice), port=mtls) == (0, "200") and served.settled()
        ),
        "the registered client to be accepted",
    )
    # Negative twins: a client of an unregistered CA, and no client certificate at all.
    assert served.curl(OLD, *_client_args(mallory), port=mtls) == (0, "400")
    assert served.curl(OLD, port=mtls) == (0, "400")
    errors = (served.directory / "error.log").read_text()
    assert "client SSL certificate verify error" in errors

    with env.client() as client:
        assert client.delete(f"/api/v1/services/web/clients/{fingerprint}").status_code == 204
    # Deregistered, but still trusted until the next reconcile and reload.
    assert served.curl(OLD, *_client_args(alice), port=mtls) == (0, "200")
    env.reconcile("web", env.now + STEP)
    trust = x509.load_pem_x509_certificates((served.tls / "client-trust.crt").read_bytes())
    assert [c.subject.rfc4514_string() for c in trust] == ["CN=bootstrap-clients"]
    _wait(
        lambda: served.curl(OLD, *_client_args(alice), port=mtls) == (0, "400"),
        "the deregistered client to be refused",
    )
    # The server certificate was not touched by a trust change.
    assert served.curl(OLD) == (0, "200")

    # The last client removed: nginx gets the placeholder anchor (an empty file would stop
    # it at the reload) and keeps serving, refusing every client certificate.
    with env.client() as client:
        items = client.get("/api/v1/services/web/clients").json()["items"]
        for item in items:
            path = f"/api/v1/services/web/clients/{item['fingerprint']}"
            assert client.delete(path).status_code == 204
    reloads_before = (served.directory / "error.log").read_text().count("reconfiguring")
    env.reconcile("web", env.now + STEP)
    trust = x509.load_pem_x509_certificates((served.tls / "client-trust.crt").read_bytes())
    assert [c.subject.rfc4514_string() for c in trust] == ["CN=certctl: no client registered (web)"]
    _wait(
        lambda: (
            (served.directory / "error.log").read_text().count("reconfiguring") > reloads_before
        ),
        "nginx to reload the placeholder trust file",
    )
    bootstrap = _cli_client(base, base / "bootstrap-clients", "bootstrap-user")
    _wait(
        lambda: served.curl(OLD, *_client_args(bootstrap), port=mtls) == (0, "400"),
        "the last client CA to be refused",
    )
    assert served.curl(OLD, port=mtls) == (0, "400")
    assert served.curl(OLD) == (0, "200")
    assert "emerg" not in (served.directory / "error.log").read_text()


def test_a_client_of_another_ca_of_the_same_name_is_warned_about_and_refused(
    served: Served,
) -> None:
    # Two CAs made as the README does (`certctl ca create --out DIR`) share the default name
    # CN=certctl Root CA. The warning matched issuers by name: a client certificate of the
    # other CA, registered alone, got none, and nginx refused it all the same.
    env, base = served.env, served.env.tmp
    ours, theirs = base / "ours", base / "theirs"
    for ca in (ours, theirs):
        ok(run("certctl", "ca", "create", "--out", ca))
    names = {
        x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes()).subject
        for ca in (ours, theirs)
    }
    assert len(names) == 1  # the premise: one name, two keys
    alice, mallory = _cli_client(base, ours, "alice"), _cli_client(base, theirs, "mallory")
    with env.client() as client:
        url = "/api/v1/services/web/clients"
        ca = client.post(url, json={"certificate_pem": (ours / "ca.crt").read_text()})
        assert ca.status_code == 201, ca.text
        # alice alone: her CA is registered, nothing to warn about (negative twin).
        own = client.post(url, json={"certificate_pem": (alice / "tls.crt").read_text()})
        assert own.status_code == 201, own.text
        assert own.json()["warnings"] == []
        other = client.post(url, json={"certificate_pem": (mallory / "tls.crt").read_text()})
        assert other.status_code == 201, other.text
        (warning,) = other.json()["warnings"]
        assert (
            "client certificate CN=mallory is registered without its issuer (CN=certctl Root "
            "CA; the registered CA of that name did not sign it): nginx"
        ) in warning
    env.reconcile("web", env.now + STEP)
    mtls = served.mtls_port
    _wait(
        lambda: (
            served.curl(OLD, *_client_args(alice), port=mtls) == (0, "200") and served.settled()
        ),
        "the registered CA's client to be accepted",
    )
    # What the warning says: nginx refuses mallory, whose certificate is registered.
    assert served.curl(OLD, *_client_args(mallory), port=mtls) == (0, "400")


def test_a_client_of_its_ca_renewed_with_the_name_spelled_in_another_string_type_is_no_stranger(
    served: Served,
) -> None:
    # A CA first made with openssl's string_mask=default (its name a PrintableString) and
    # renewed with the same key by today's openssl (UTF8String): the clients it signed before
    # name it in the old encoding. OpenSSL compares names folded (X509_NAME_cmp), so nginx
    # accepts them under the renewed CA; the check that verified the signature with
    # pyca's verify_directly_issued_by (which wants the names encoded alike) said "the
    # registered CA of that name did not sign it" of a certificate it signed.
    env, base = served.env, served.env.tmp / "renamed"
    base.mkdir()
    (base / "old.cnf").write_text(
        "[req]\ndistinguished_name=dn\nstring_mask=default\nprompt=no\n[dn]\nCN=Clients CA\n"
        "[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n"
    )
    ca_key, old_ca, new_ca = base / "ca.key", base / "old.crt", base / "new.crt"
    ok(run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-out", ca_key))  # fmt: skip
    ok(run("openssl", "req", "-x509", "-config", base / "old.cnf", "-extensions", "v3",
           "-key", ca_key, "-days", "30", "-out", old_ca))  # fmt: skip
    ok(run("openssl", "req", "-x509", "-key", ca_key, "-subj", "/CN=Clients CA", "-days", "60",
           "-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", new_ca))  # fmt: skip
    alice = base / "alice"
    alice.mkdir()
    ok(run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", alice / "tls.key", "-subj", "/CN=alice",
           "-out", base / "alice.csr"))  # fmt: skip
    (base / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    ok(run("openssl", "x509", "-req", "-in", base / "alice.csr", "-CA", old_ca, "-CAkey", ca_key,
           "-days", "10", "-extfile", base / "client.ext", "-out", alice / "tls.crt"))  # fmt: skip
    # The premise: one name and key, in two string types, and OpenSSL links them.
    issuer_types = {
        re.search(r"(PRINTABLESTRING|UTF8STRING) *:Clients CA", ok(run(
            "openssl", "asn1parse", "-in", cert)).stdout).group(1)  # type: ignore[union-attr]
        for cert in (alice / "tls.crt", new_ca)
    }  # fmt: skip
    assert issuer_types == {"PRINTABLESTRING", "UTF8STRING"}
    assert ok(run("openssl", "verify", "-CAfile", new_ca, "-purpose", "sslclient",
                  alice / "tls.crt")).stdout.strip().endswith("OK")  # fmt: skip
    with env.client() as client:
        url = "/api/v1/services/web/clients"
        ca = client.post(url, json={"certificate_pem": new_ca.read_text()})
        assert ca.status_code == 201, ca.text
        added = client.post(url, json={"certificate_pem": (alice / "tls.crt").read_text()})
        assert added.status_code == 201, added.text
        assert added.json()["warnings"] == []
    env.reconcile("web", env.now + STEP)
    # What the empty warnings promise: nginx lets alice in.
    _wait(
        lambda: (
            served.curl(OLD, *_client_args(alice), port=served.mtls_port) == (0, "200")
            and served.settled()
        ),
        "the renewed CA's older client to be accepted",
    )


def test_a_client_of_its_ca_renewed_under_another_ski_is_warned_about_and_refused(
    served: Served,
) -> None:
    # The clients' CA renewed with its key and name under another subjectKeyIdentifier (Go
    # 1.25's truncated SHA-256, a fixed value): OpenSSL (X509_check_akid) takes it for no
    # issuer of the clients signed before, whose authorityKeyIdentifier names the old SKI.
    # Name and signature alone said nothing of them, and nginx refused them.
    env, base = served.env, served.env.tmp / "reski"
    base.mkdir()
    ca_key, old_ca, new_ca = base / "ca.key", base / "old.crt", base / "new.crt"
    ok(run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-out", ca_key))  # fmt: skip
    ca_ext = ("-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    ok(run("openssl", "req", "-x509", "-key", ca_key, "-subj", "/CN=Clients CA", "-days", "30",
           *ca_ext, "-out", old_ca))  # fmt: skip
    ski = "01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10:11:12:13:14"
    ok(run("openssl", "req", "-x509", "-key", ca_key, "-subj", "/CN=Clients CA", "-days", "60",
           *ca_ext, "-addext", f"subjectKeyIdentifier={ski}",
           "-addext", "authorityKeyIdentifier=none", "-out", new_ca))  # fmt: skip
    (base / "client.ext").write_text("extendedKeyUsage=clientAuth\nauthorityKeyIdentifier=keyid\n")
    clients = {}
    for cn, ca in (("alice", old_ca), ("bob", new_ca)):
        clients[cn] = base / cn
        clients[cn].mkdir()
        ok(run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-nodes", "-keyout", clients[cn] / "tls.key", "-subj", f"/CN={cn}",
               "-out", base / f"{cn}.csr"))  # fmt: skip
        ok(run("openssl", "x509", "-req", "-in", base / f"{cn}.csr", "-CA", ca, "-CAkey", ca_key,
               "-days", "10", "-extfile", base / "client.ext",
               "-out", clients[cn] / "tls.crt"))  # fmt: skip
    with env.client() as client:
        url = "/api/v1/services/web/clients"
        added = client.post(url, json={"certificate_pem": new_ca.read_text()})
        assert added.status_code == 201, added.text
        bob = client.post(url, json={"certificate_pem": (clients["bob"] / "tls.crt").read_text()})
        assert bob.status_code == 201, bob.text
        assert bob.json()["warnings"] == []  # signed under the renewed one: nothing to say
        alice = client.post(
            url, json={"certificate_pem": (clients["alice"] / "tls.crt").read_text()}
        )
        assert alice.status_code == 201, alice.text
        (warning,) = alice.json()["warnings"]
        assert warning.startswith(
            "client certificate CN=alice is registered without its issuer (CN=Clients CA; the "
            "registered CA of that name has its key under another subjectKeyIdentifier, which "
            "OpenSSL does not take for the certificate's authorityKeyIdentifier): nginx"
        ), warning
    env.reconcile("web", env.now + STEP)
    mtls = served.mtls_port
    _wait(
        lambda: (
            served.curl(OLD, *_client_args(clients["bob"]), port=mtls) == (0, "200")
            and served.settled()
        ),
        "the renewed CA's own client to be accepted",
    )
    # What the warning says: nginx refuses alice, whose certificate is registered.
    assert served.curl(OLD, *_client_args(clients["alice"]), port=mtls) == (0, "400")


def test_renewals_and_a_ca_rollover_under_load_lose_no_request(served: Served) -> None:
    # Clients hold the ca.crt of the start throughout: the service CA is renewed with the
    # same key, so it keeps verifying every certificate served after it.
    import shutil
    import threading

    env = served.env
    pinned = env.tmp / "pinned-ca.crt"
    shutil.copy(served.tls / "ca.crt", pinned)
    stop = threading.Event()
    results: list[tuple[int, str, str]] = []

    def load() -> None:
        while not stop.is_set():
            result = run(
                "curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}",
                "--cacert", pinned, "--resolve", f"{OLD}:{served.port}:127.0.0.1",
                f"https://{OLD}:{served.port}/",
                timeout=30,
            )  # fmt: skip
            results.append((result.returncode, result.stdout, result.stderr.strip()))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    serials = []
    try:
        # Steps of 20 s: issued certificates are back-dated 5 min, so each is valid now.
        step = timedelta(seconds=20)
        for _ in range(3):
            service_specs.request_renewal(env.services, env.admin, "web")
            serials.append(env.reconcile("web", env.now + step).serial)
            time.sleep(1)
        ca_before = (served.tls / "ca.crt").read_bytes()
        # Due for renewal now (10 h CA, renewed 9 h 59 min 30 s ahead): same key, new cert.
        rollover = env.reconcile(
            "web", env.now + step, ca_rotate_before=timedelta(hours=9, minutes=59, seconds=30)
        )
        assert rollover.conditions["Ready"]["status"] is True, rollover.conditions
        assert (served.tls / "ca.crt").read_bytes() != ca_before
        time.sleep(1)
        service_specs.request_renewal(env.services, env.admin, "web")
        serials.append(env.reconcile("web", env.now + step).serial)
        _wait(served.settled, "nginx to finish its last reload")
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert len(set(serials)) == 4
    assert served.served_certificate(OLD) == x509.load_pem_x509_certificate(
        (served.tls / "tls.crt").read_bytes()
    )
    ok(run("openssl", "verify", "-CAfile", pinned, served.tls / "tls.crt"))
    failed = [r for r in results if r[:2] != (0, "200")]
    assert len(results) > 20
    assert failed == [], failed[:3]
