"""curl (libidn2) reaches a server under an internationalised name given to ``--dns``.

curl, like browsers, turns ``straße.example`` into its IDNA 2008 A-label
``xn--strae-oqa.example``; IDNA 2003 (Python's ``idna`` codec) gives ``strasse.example``,
another host. The certificate must name the host curl asks for.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._tools import free_port, require, run, stop
from tests.integration.conftest import Pki, wait_for_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[tuple[int, Path]]:
    """``openssl s_server -www`` with a leaf for ``straße.example``: (port, root CA file)."""
    chain = pki.chain("ec-p256")
    leaf = pki.issue(chain.inter, "idn-strasse", dns=["straße.example"])
    port = free_port()
    proc = subprocess.Popen(
        [
            require("openssl"), "s_server", "-quiet", "-www",
            "-accept", f"127.0.0.1:{port}",
            "-cert", leaf / "tls.crt", "-cert_chain", leaf / "tls.crt", "-key", leaf / "tls.key",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, alive=lambda: proc.poll() is None)
        yield port, chain.root / "ca.crt"
    finally:
        stop(proc)


def curl(port: int, ca: Path, host: str, a_label: str) -> subprocess.CompletedProcess[str]:
    return run(
        "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
        "--cacert", ca, "--resolve", f"{a_label}:{port}:127.0.0.1", f"https://{host}:{port}/",
        timeout=20,
    )  # fmt: skip


def test_curl_accepts_the_idna_2008_name(server: tuple[int, Path]) -> None:
    port, ca = server
    result = curl(port, ca, "straße.example", "xn--strae-oqa.example")
    assert (result.returncode, result.stdout) == (0, "200"), result.stderr


def test_curl_refuses_the_idna_2003_name(server: tuple[int, Path]) -> None:
    # The negative twin: strasse.example is another host, not in the certificate.
    port, ca = server
    result = curl(port, ca, "strasse.example", "strasse.example")
    assert result.returncode == 60, result.stderr
    assert "strasse.example" in result.stderr
