"""``cert issue`` / ``csr sign`` ``--crl-url`` and ``--ca-issuers-url``: the URLs openssl shows,
and the CRL one it follows.

``openssl verify -crl_download`` fetches the CRL the certificate names over HTTP (a plain
``http.server`` here, as a static mirror would serve it) and reports the revocation that
``certctl crl create`` wrote there.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests._tools import (
    ok,
    openssl_ca_issuers_uris,
    openssl_crl_uris,
    openssl_req,
    openssl_verify,
    run,
)
from tests.integration.conftest import Pki, certctl_exe, certctl_ok

pytestmark = pytest.mark.integration


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over plain HTTP on 127.0.0.1: (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # shutdown() waits for the next poll: 0.5 s by default, at the teardown of each test.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_cert_issue_crl_url_is_followed_by_openssl_crl_download(
    pki: Pki, tmp_path: Path, mirror: tuple[Path, str]
) -> None:
    root, base = mirror
    ca = pki.root("crl-url-ca")
    url = f"{base}/ca.crl"
    out = tmp_path / "leaf"
    ok(
        certctl_exe(
            "cert", "issue", "--ca", ca, "--out", out, "--cn", "dl.example.com",
            "--crl-url", url, "--crl-url", "https://crl.example.com/ca.crl?format=der",
        )
    )  # fmt: skip
    assert openssl_crl_uris(out / "tls.crt") == [url, "https://crl.example.com/ca.crl?format=der"]

    def verdict() -> str:
        return openssl_verify(
            "-crl_check", "-crl_download", "-CAfile", ca / "ca.crt", out / "tls.crt"
        )

    assert verdict() == "unable to get certificate CRL"  # nothing at the URL yet
    certctl_ok("crl", "create", "--ca", ca, "--out", root / "ca.crl", "--der")
    assert verdict() == "OK"
    serial = ok(run("openssl", "x509", "-in", out / "tls.crt", "-noout", "-serial")).stdout
    certctl_ok(
        "crl", "create", "--ca", ca, "--out", root / "ca.crl", "--der", "--force",
        "--revoked", serial.strip().split("=", 1)[1],
    )  # fmt: skip
    assert verdict() == "certificate revoked"


def test_csr_sign_and_batch_issue_carry_the_crl_and_ca_issuers_urls(
    pki: Pki, tmp_path: Path
) -> None:
    ca = pki.root("crl-url-ca")
    key, csr = tmp_path / "req.key", tmp_path / "req.csr"
    openssl_req(key, csr, "/CN=signed.example.com")
    url = "http://pki.example.com/crl/ca.crl"
    issuers = ["http://pki.example.com/ca.der", "https://certctl.example.com/api/v1/ca.der"]
    aia = [arg for issuer in issuers for arg in ("--ca-issuers-url", issuer)]
    ok(
        certctl_exe(
            "csr", "sign", "--ca", ca, "--csr", csr, "--out", tmp_path / "s", "--crl-url", url,
            *aia,
        )
    )  # fmt: skip
    assert openssl_crl_uris(tmp_path / "s" / "tls.crt") == [url]
    assert openssl_ca_issuers_uris(tmp_path / "s" / "tls.crt") == issuers
    instances = tmp_path / "instances.yml"
    instances.write_text(
        "instances:\n  - name: a\n    dns: [a.example.com]\n  - name: b\n    dns: [b.example.com]\n"
    )
    batch = tmp_path / "batch"
    ok(
        certctl_exe(
            "cert", "issue", "--ca", ca, "--in", instances, "--pem", "--out", batch,
            "--crl-url", url, *aia,
        )
    )  # fmt: skip
    for name in ("a", "b"):
        assert openssl_crl_uris(batch / name / "tls.crt") == [url]
        assert openssl_ca_issuers_uris(batch / name / "tls.crt") == issuers
    # One certificate, and --ca-issuers-url alone (no CRL URL).
    ok(
        certctl_exe(
            "cert", "issue", "--ca", ca, "--cn", "one.example.com", "--out", tmp_path / "one",
            "--ca-issuers-url", issuers[0],
        )
    )  # fmt: skip
    assert openssl_ca_issuers_uris(tmp_path / "one" / "tls.crt") == issuers[:1]
    assert openssl_crl_uris(tmp_path / "one" / "tls.crt") == []
    # Without the options: no extension, as before.
    ok(certctl_exe("csr", "sign", "--ca", ca, "--csr", csr, "--out", tmp_path / "plain"))
    assert openssl_crl_uris(tmp_path / "plain" / "tls.crt") == []
    assert openssl_ca_issuers_uris(tmp_path / "plain" / "tls.crt") == []


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (
            "ftp://crl.example.com/ca.crl",
            "expected an absolute http:// or https:// URL with a host",
        ),
        ("crl.example.com/ca.crl", "expected an absolute http:// or https:// URL with a host"),
        ("http://crl.example.com/ca.crl#x", "a URL clients fetch has no #fragment"),
        ("http://crl.example.com:http/ca.crl", "not a URL (check the host and port)"),
        ("http://crl.example.com/é.crl", "expected an absolute http:// or https:// URL in ASCII"),
        ("http://crl:s3cret@crl.example.com/ca.crl", "has no user:password@"),
        # Not URI characters: pkilint calls such a certificate invalid_uri_syntax.
        ('http://crl.example.com/a"b.crl', "'\"' may not appear in a URL: percent-encode it (%22)"),
        ("http://crl.example.com\\ca.crl", "'\\' may not appear in a URL: percent-encode it (%5C)"),
        ("http://crl.example.com/{id}.crl", "'{' may not appear in a URL"),
        ("http://crl.example.com/100%.crl", "'%' that does not start a %XX escape"),
        # Typos no client resolves, carried by every certificate issued.
        ("http://crl..example.com/ca.crl", "crl..example.com: not a host name"),
        ("http://crl.example.com;/ca.crl", "crl.example.com;: not a host name"),
        ("http://crl.example.com:/ca.crl", "a ':' with no port after it"),
    ],
)
@pytest.mark.parametrize("command", ["cert issue", "csr sign"])
def test_a_bad_crl_url_is_one_line_and_writes_nothing(
    pki: Pki, tmp_path: Path, command: str, value: str, why: str
) -> None:
    ca = pki.root("crl-url-ca")
    out = tmp_path / "out"
    if command == "cert issue":
        args: list[str | Path] = ["cert", "issue", "--ca", ca, "--cn", "x.example.com"]
    else:
        csr = tmp_path / "req.csr"
        openssl_req(tmp_path / "req.key", csr, "/CN=x.example.com")
        args = ["csr", "sign", "--ca", ca, "--csr", csr]
    result = certctl_exe(*args, "--out", out, "--crl-url", value)
    assert result.returncode == 2, result.stdout + result.stderr  # a usage error
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("certctl: error: --crl-url "), lines[0]
    assert why in lines[0]
    assert not out.exists()
