"""Real programs for the tests: find them (a missing one fails the test, never skips it), run
them with a timeout, check how they exited; and free loopback ports.

One copy for every suite that drives real tools (e2e, integration, services, soak, faults).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "EC_P256",
    "INSTALL",
    "VENV_BIN",
    "failed",
    "free_port",
    "ok",
    "openssl_req",
    "require",
    "run",
]

VENV_BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 60.0

# How to install each tool the tests run (``make system-deps`` does all of it).
INSTALL = {
    "prometheus": "apt-get install -y prometheus",
    "promtool": "apt-get install -y prometheus",
    "openssl": "apt-get install -y openssl",
    "curl": "apt-get install -y curl",
    "jq": "apt-get install -y jq",
    "bash": "apt-get install -y bash",
    "nginx": "apt-get install -y nginx-light",
    "keytool": "apt-get install -y openjdk-17-jre-headless",
    "kill": "apt-get install -y procps",
    "lint_pkix_cert": "uv sync --group dev",
    "lint_crl": "uv sync --group dev",
    "lint_ocsp_response": "uv sync --group dev",
    "lint_pkix_signer_signee_cert_chain": "uv sync --group dev",
    "schemathesis": "uv sync --group dev",
    "certctl": "uv sync",
    "cfssl": "apt-get install -y golang-cfssl",
    "cfssljson": "apt-get install -y golang-cfssl",
    "lego": "apt-get install -y lego",
    "named": "apt-get install -y bind9",
    "certbot": "uv sync --group dev",
    "setpriv": "apt-get install -y util-linux",
}


def require(tool: str) -> str:
    """Path of ``tool``: the project venv first (certctl, pkilint), then PATH, then /usr/sbin
    and /sbin (nginx lives there, off a normal user's PATH). Fails the test when missing."""
    if (VENV_BIN / tool).is_file():
        return str(VENV_BIN / tool)
    path = shutil.which(tool)
    if path is not None:
        return path
    for folder in (Path("/usr/sbin"), Path("/sbin")):
        if (folder / tool).is_file():
            return str(folder / tool)
    hint = INSTALL.get(tool, f"apt-get install -y {tool}")
    pytest.fail(f"{tool} not found: install with '{hint}' (make system-deps)", pytrace=False)


def run(
    *args: str | Path,
    timeout: float = RUN_TIMEOUT_S,
    input: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a real program (found with :func:`require`) with a timeout; capture its text
    output, do not check it. Without ``input`` its stdin is /dev/null: CI has no terminal."""
    argv = [require(str(args[0])), *(str(a) for a in args[1:])]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        cwd=cwd,
        env=env,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert that ``result`` exited 0, showing its output otherwise."""
    assert result.returncode == 0, (
        f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result


def failed(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert that ``result`` exited non-zero."""
    assert result.returncode != 0, (
        f"{' '.join(map(str, result.args))} unexpectedly succeeded\nstdout: {result.stdout}"
    )
    return result


# `openssl req`'s options for a new P-256 key, as the openssl and Elastic docs spell it.
EC_P256 = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")


def openssl_req(
    key: str | Path,
    out: str | Path,
    subject: str,
    *options: str | Path,
    x509: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``openssl req`` with a new unencrypted P-256 key written to ``key``: a CSR at ``out``,
    or with ``x509`` a self-signed certificate (openssl.cnf's v3_ca: CA:TRUE unless
    ``options`` say otherwise). ``options`` (-addext, -days, -config …) are passed on; the
    test fails if openssl does."""
    return ok(
        run(
            "openssl", "req", "-x509" if x509 else "-new", *EC_P256, "-nodes",
            "-keyout", key, "-out", out, "-subj", subject, *options, cwd=cwd,
        )
    )  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Terminate a program started by a test; kill it if it does not exit within ``timeout``."""
    proc.terminate()
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=timeout)


@contextlib.contextmanager
def reaped(procs: Iterable[subprocess.Popen[Any]]) -> Iterator[None]:
    """Kill and reap whichever of ``procs`` still runs when the block ends.

    For programs a test starts together and then waits for one by one: when one wait times
    out (or an assertion fails first), the others ran on after the test, holding ports, files
    and a CPU of the next tests.
    """
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def openssl_crl_uris(cert: Path) -> list[str]:
    """The URIs under X509v3 CRL Distribution Points in ``openssl x509 -text`` of ``cert``."""
    text = ok(run("openssl", "x509", "-in", cert, "-noout", "-text")).stdout
    if "X509v3 CRL Distribution Points" not in text:
        return []
    section = text.split("X509v3 CRL Distribution Points:", 1)[1]
    # Up to the next extension (openssl names AIA without "X509v3") or the signature.
    section = re.split(
        r"\n\s*(?:X509v3 |Authority Information Access|Signature Algorithm)", section, maxsplit=1
    )[0]
    return re.findall(r"URI:(\S+)", section)


def openssl_ca_issuers_uris(cert: Path) -> list[str]:
    """The URIs ``openssl x509 -text`` of ``cert`` shows as ``CA Issuers - URI:``."""
    text = ok(run("openssl", "x509", "-in", cert, "-noout", "-text")).stdout
    return re.findall(r"CA Issuers - URI:(\S+)", text)


def openssl_verify(*args: str | Path) -> str:
    """``openssl verify ARGS``'s verdict: "OK" or its error string ("certificate revoked", …)."""
    result = run("openssl", "verify", *args)
    if result.returncode == 0:
        return "OK"
    match = re.search(r"error \d+ at \d+ depth lookup: (.*)", result.stdout + result.stderr)
    assert match is not None, result.stdout + result.stderr
    return match[1].strip()
