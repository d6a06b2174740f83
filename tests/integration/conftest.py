"""Integration fixtures: real tools (missing ones fail loudly), CA material built by the CLI."""

from __future__ import annotations

import io
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from certctl.cli.main import run as certctl_run
from tests._tools import RUN_TIMEOUT_S, ok, openssl_req, run

KEY_TYPES = ("ec-p256", "ec-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096")
LEAF_PROFILES = ("server", "client", "server+client")
# One FQDN per profile: pkilint reports single-label names such as "localhost" as ERRORs.
LEAF_NAMES = {
    "server": "node-1.example.com",
    "client": "client-1.example.com",
    "server+client": "peer-1.example.com",
}
LEAF_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class CliResult:
    """Exit code and output of an in-process ``certctl`` run."""

    code: int
    out: str
    err: str


def certctl(*args: str | Path) -> CliResult:
    """Run ``certctl ARGS`` in-process (the console script's code path, without the start-up)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = certctl_run([str(a) for a in args])
    return CliResult(code, out.getvalue(), err.getvalue())


def certctl_ok(*args: str | Path) -> CliResult:
    """Run ``certctl ARGS`` in-process and assert it succeeded."""
    result = certctl(*args)
    assert result.code == 0, f"certctl {' '.join(map(str, args))}: {result.err}"
    return result


def openssl_server_certificate(ca_dir: Path, out: Path) -> Path:
    """``out``/c.pem: web.example.com (serverAuth) signed by ``ca_dir``'s CA with openssl itself.

    The negative twin of a certctl refusal: what certctl will not sign, openssl signs, and
    ``openssl verify`` then refuses.
    """
    key, csr, crt = out / "k.pem", out / "r.csr", out / "c.pem"
    openssl_req(key, csr, "/CN=web.example.com")
    extensions = out / "ext.cnf"
    extensions.write_text("subjectAltName=DNS:web.example.com\nextendedKeyUsage=serverAuth\n")
    ok(
        run(
            "openssl", "x509", "-req", "-in", csr, "-CA", ca_dir / "ca.crt",
            "-CAkey", ca_dir / "ca.key", "-out", crt, "-days", "1", "-extfile", extensions,
        )
    )  # fmt: skip
    return crt


def openssl_root_and_leaf(
    tmp_path: Path,
    key: Sequence[str],
    ca_extensions: str,
    leaf_subject: str,
    leaf_extensions: str,
) -> tuple[Path, Path]:
    """``tmp_path``/ca.crt, a root with ``ca_extensions``, and tls.crt it signs, by openssl.

    ``key`` is ``openssl req -newkey``'s argument (``("ed25519",)``, ``("ec", "-pkeyopt",
    "ec_paramgen_curve:P-256")``); the extension texts are openssl.cnf lines (more sections
    may follow), basicConstraints CA:TRUE added to the root's.
    """
    config = tmp_path / "ext.cnf"
    config.write_text(
        "[req]\ndistinguished_name = dn\n[dn]\n[leaf]\n"
        f"{leaf_extensions}\n[ca]\nbasicConstraints = critical,CA:TRUE\n{ca_extensions}\n"
    )
    ca, leaf = tmp_path / "ca.crt", tmp_path / "tls.crt"
    for command in (
        ("req", "-x509", "-newkey", *key, "-nodes", "-keyout", tmp_path / "ca.key", "-out", ca,
         "-subj", "/O=Example Corp/CN=Constrained Root", "-days", "30", "-config", config,
         "-extensions", "ca"),
        ("req", "-new", "-newkey", *key, "-nodes", "-keyout", tmp_path / "tls.key",
         "-out", tmp_path / "tls.csr", "-subj", leaf_subject, "-config", config),
        ("x509", "-req", "-in", tmp_path / "tls.csr", "-CA", ca, "-CAkey", tmp_path / "ca.key",
         "-days", "10", "-extfile", config, "-extensions", "leaf", "-out", leaf),
    ):  # fmt: skip
        ok(run("openssl", *command))
    return ca, leaf


def certctl_exe(
    *args: str | Path, timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``certctl`` console script, exactly as a user would."""
    return run("certctl", *args, timeout=timeout)


def wait_for_port(
    port: int, alive: Callable[[], bool] | None = None, timeout: float = 10.0
) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections (``alive()`` False aborts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise AssertionError(f"server for port {port} exited before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass(frozen=True)
class Chain:
    """root CA -> intermediate CA (``ca create --parent``) -> one leaf per profile."""

    key_type: str
    root: Path
    inter: Path
    leaves: dict[str, Path]

    def leaf(self, profile: str) -> Path:
        """The leaf certificate file (leaf + intermediate, as ``cert issue`` writes it)."""
        return self.leaves[profile] / "tls.crt"


@dataclass
class Pki:
    """CA material built once per session through the CLI, under one temporary directory."""

    base: Path
    _chains: dict[str, Chain] = field(default_factory=dict)
    _roots: dict[str, Path] = field(default_factory=dict)

    def root(self, name: str, key_type: str = "ec-p256", cn: str | None = None) -> Path:
        """A root CA directory called ``name`` (created on first use)."""
        if name not in self._roots:
            out = self.base / name
            args = ["ca", "create", "--out", out, "--key-type", key_type]
            if cn:
                args += ["--cn", cn]
            certctl_ok(*args)
            self._roots[name] = out
        return self._roots[name]

    def issue(
        self,
        ca: Path,
        name: str,
        *,
        profile: str = "server",
        key_type: str = "ec-p256",
        dns: Sequence[str] = (),
        ip: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> Path:
        """Issue a leaf with ``certctl cert issue`` into a new directory; return it."""
        out = self.base / "leaves" / name
        args: list[str | Path] = ["cert", "issue", "--ca", ca, "--out", out]
        args += ["--cn", dns[0] if dns else name, "--profile", profile, "--key-type", key_type]
        for value in dns:
            args += ["--dns", value]
        for value in ip:
            args += ["--ip", value]
        certctl_ok(*args, *extra)
        return out

    def chain(self, key_type: str) -> Chain:
        """The root -> intermediate -> leaves chain for ``key_type`` (every key the same type)."""
        if key_type not in self._chains:
            root = self.root(f"root-{key_type}", key_type, cn=f"Integration Root CA {key_type}")
            inter = self.base / f"inter-{key_type}"
            certctl_ok(
                "ca", "create", "--out", inter, "--parent", root, "--key-type", key_type,
                "--cn", f"Integration Intermediate CA {key_type}",
            )  # fmt: skip
            leaves = {
                profile: self.issue(
                    inter,
                    f"{key_type}-{profile}",
                    profile=profile,
                    key_type=key_type,
                    dns=[LEAF_NAMES[profile]],
                    ip=LEAF_IPS,
                )
                for profile in LEAF_PROFILES
            }
            self._chains[key_type] = Chain(key_type, root, inter, leaves)
        return self._chains[key_type]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Session-wide CA material; each chain is built on first use (RSA-4096 keygen is slow)."""
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_root(pki: Pki) -> Path:
    """An unrelated root CA (different name and key): the "wrong CA" of negative twins."""
    return pki.root("other-root", cn="Unrelated Root CA")


@pytest.fixture(scope="session")
def impostor_root(pki: Pki) -> Path:
    """A root with the same name as the ec-p256 chain's root but another key."""
    return pki.root("impostor-root", cn="Integration Root CA ec-p256")
