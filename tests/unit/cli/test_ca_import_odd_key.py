"""'certctl ca import' / 'issuers import' of a bundle holding a key cryptography cannot load.

A CA on a curve OpenSSL signs with but cryptography lacks (prime239v1): before, a bundle
listing such a root before the CA failed the command with "internal error
(UnsupportedAlgorithm: ...)" while the key was matched to a certificate; the API refuses the
same bundle with a 400 naming it (tests/api/test_issuers.py), and the CLI now says as much.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from certctl.cli.main import run
from tests._tools import ok
from tests._tools import run as run_tool


def _odd_root_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """(root-first bundle, intermediate key): the root on prime239v1, made by openssl."""
    root_key, inter_key = tmp_path / "root.key", tmp_path / "inter.key"
    root, inter = tmp_path / "root.pem", tmp_path / "inter.pem"
    for curve, key in (("prime239v1", root_key), ("prime256v1", inter_key)):
        ok(run_tool("openssl", "ecparam", "-name", curve, "-genkey", "-noout", "-out", key))
    ok(run_tool("openssl", "req", "-x509", "-key", root_key, "-subj", "/CN=Odd Curve Root",
                "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
                "-out", root))  # fmt: skip
    ok(run_tool("openssl", "req", "-x509", "-key", inter_key, "-subj", "/CN=Odd Curve Inter",
                "-days", "1", "-CA", root, "-CAkey", root_key,
                "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                "-out", inter))  # fmt: skip
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(root.read_text() + inter.read_text())
    return bundle, inter_key


def test_ca_import_of_a_bundle_with_a_key_cryptography_cannot_load_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle, key = _odd_root_bundle(tmp_path)
    out = tmp_path / "imported"
    assert run(["ca", "import", "--out", str(out), "--cert", str(bundle), "--key", str(key)]) == 1
    err = capsys.readouterr().err
    refusal = (
        "certctl: error: CN=Odd Curve Root in the input holds a key certctl cannot read (Curve "
        "1.2.840.10045.3.1.4 is not supported)"
    )
    assert err == f"{refusal}\n", err
    assert not out.exists()
    # issuers import reads the files as ca import does, before any request.
    argv = ["issuers", "import", "odd", "--cert", str(bundle), "--key", str(key)]
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert err == f"{refusal} (nothing was sent)\n", err
