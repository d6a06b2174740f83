"""A server certificate whose host-name CN none of its DNS/IP SANs covers is warned about.

Without SANs the CN becomes the DNS name; with any SAN (an e-mail or URI one too) it does
not, and TLS clients match SANs only (RFC 6125, CA/B BR), so ``--cn api.example.com --uri
spiffe://…`` makes a certificate ``curl https://api.example.com`` refuses. One rule in pki
says so for ``cert issue`` and ``csr sign`` alike, naming what to add; it is issued all the
same.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._tools import ok, run

SPIFFE = "spiffe://example.org/ns/x/sa/y"


def _left_out(cn: str, kind: str, fix: str) -> str:
    return (
        f"certctl: warning: common name {cn} is not among the certificate's {kind}: clients "
        f"will not accept it for that name; {fix}"
    )


CASES = {
    "host CN left out": (
        ["--cn", "localhost", "--ip", "127.0.0.1"],
        _left_out("localhost", "DNS names", "add --dns localhost"),
    ),
    "address CN left out": (
        ["--cn", "10.0.0.1", "--dns", "a.example"],
        _left_out("10.0.0.1", "IP addresses", "add --ip 10.0.0.1"),
    ),
    "URI SAN only": (
        ["--cn", "api.example.com", "--uri", SPIFFE],
        _left_out("api.example.com", "DNS names", "add --dns api.example.com"),
    ),
    "e-mail SAN only": (
        ["--cn", "api.example.com", "--email", "ops@example.com"],
        _left_out("api.example.com", "DNS names", "add --dns api.example.com"),
    ),
    "a wildcard one label too shallow": (
        ["--cn", "a.b.example.com", "--dns", "*.example.com"],
        _left_out("a.b.example.com", "DNS names", "add --dns a.b.example.com"),
    ),
    # Twins: nothing to say.
    "CN among the SANs": (["--cn", "Web.Example", "--dns", "web.example"], None),
    "address CN among the SANs": (["--cn", "10.0.0.1", "--ip", "10.0.0.1"], None),
    "a wildcard covers it": (["--cn", "API.example.com", "--dns", "*.example.com"], None),
    "no SANs: the CN is the DNS name": (["--cn", "web.example"], None),
    "a label, not a host": (["--cn", "node-1", "--dns", "node-1.example.com"], None),
    "not a host name": (["--cn", "Web frontend v2.1", "--uri", SPIFFE], None),
    "a client certificate": (
        ["--cn", "api.example.com", "--uri", SPIFFE, "--profile", "client"],
        None,
    ),
}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cn-warning") / "ca"
    ok(run("certctl", "ca", "create", "--out", path))
    return path


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("certctl: warn")]


@pytest.mark.parametrize(("args", "warning"), CASES.values(), ids=CASES.keys())
def test_a_host_cn_the_sans_leave_out_is_warned_about(
    ca: Path, tmp_path: Path, args: list[str], warning: str | None
) -> None:
    result = ok(
        run("certctl", "cert", "issue", "--ca", ca, "--pem", "--out", tmp_path / "o", *args)
    )
    assert _warnings(result.stderr) == ([warning] if warning else []), result.stderr
    assert (tmp_path / "o" / "tls.crt").exists()  # issued all the same


def test_a_nameless_server_certificate_is_warned_about_once(ca: Path, tmp_path: Path) -> None:
    # No SAN and a CN that is no host name: the older warning says it, the new one stays out.
    result = ok(
        run("certctl", "cert", "issue", "--ca", ca, "--pem", "--out", tmp_path, "--cn", "Web app")
    )
    assert _warnings(result.stderr) == [
        "certctl: warning: server certificate without a DNS or IP name: TLS clients match "
        "hosts against SANs only, and the common name is not a host name"
    ]


def test_a_csr_whose_cn_its_sans_leave_out_is_warned_about(ca: Path, tmp_path: Path) -> None:
    csr = tmp_path / "req.csr"
    ok(
        run(
            "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", tmp_path / "req.key", "-out", csr,
            "-subj", "/CN=api.example.com", "-addext", f"subjectAltName=URI:{SPIFFE}",
        )
    )  # fmt: skip
    result = ok(run("certctl", "csr", "sign", "--csr", csr, "--ca", ca, "--out", tmp_path / "o"))
    assert _warnings(result.stderr) == [
        _left_out(
            "api.example.com", "DNS names", "add DNS:api.example.com to the CSR's subjectAltName"
        )
    ], result.stderr
    assert (tmp_path / "o" / "tls.crt").exists()
