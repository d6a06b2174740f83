"""A CA directory holds one CA and its own chain, upwards: after --force, and after an import."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certctl.cli.main import run


def _ok(*args: str | Path) -> None:
    assert run([str(a) for a in args]) == 0


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.fixture
def intermediate_dir(tmp_path: Path) -> Path:
    """``inter/``: an intermediate (ca.crt, ca.key, ca-chain.crt) under ``root/``."""
    _ok("ca", "create", "--out", tmp_path / "root", "--cn", "Old Root")
    _ok("ca", "create", "--out", tmp_path / "inter", "--parent", tmp_path / "root")
    assert (tmp_path / "inter" / "ca-chain.crt").exists()
    return tmp_path / "inter"


def _issue_and_verify(ca: Path, out: Path) -> None:
    _ok("cert", "issue", "--ca", ca, "--cn", "web.example", "--out", out)
    assert [c.subject.rfc4514_string() for c in _certs(out / "tls.crt")] == ["CN=web.example"]
    assert _certs(out / "ca.crt") == _certs(ca / "ca.crt")
    _ok("verify", "--ca", out / "ca.crt", out / "tls.crt", "--hostname", "web.example")


def test_root_created_over_an_intermediate_drops_its_chain(
    intermediate_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["ca", "create", "--out", str(intermediate_dir), "--cn", "New Root"]) == 1
    assert "inter/ca.crt already exists; use --force" in capsys.readouterr().err
    _ok("ca", "create", "--out", intermediate_dir, "--cn", "New Root", "--force")
    assert sorted(p.name for p in intermediate_dir.iterdir()) == ["ca.crt", "ca.key"]
    # Named as the files written are: before, the chain went without a word.
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"  {intermediate_dir / 'ca.crt'}",
        f"  {intermediate_dir / 'ca.key'}",
        f"  removed {intermediate_dir / 'ca-chain.crt'}",
    ]
    _ok("ca", "create", "--out", intermediate_dir, "--cn", "New Root", "--force")
    assert "removed" not in capsys.readouterr().out  # nothing left to remove
    _issue_and_verify(intermediate_dir, tmp_path / "leaf")


def test_root_imported_over_an_intermediate_drops_its_chain(
    intermediate_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ok("ca", "create", "--out", tmp_path / "other", "--cn", "Other Root")
    other = tmp_path / "other"
    capsys.readouterr()
    _ok("ca", "import", "--cert", other / "ca.crt", "--key", other / "ca.key",
        "--out", intermediate_dir, "--force")  # fmt: skip
    assert sorted(p.name for p in intermediate_dir.iterdir()) == ["ca.crt", "ca.key"]
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"  {intermediate_dir / 'ca.crt'}",
        f"  {intermediate_dir / 'ca.key'}",
        f"  removed {intermediate_dir / 'ca-chain.crt'}",
    ]
    _issue_and_verify(intermediate_dir, tmp_path / "leaf")


def test_a_lone_chain_file_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ca"
    out.mkdir()
    (out / "ca-chain.crt").write_bytes(b"left over\n")
    assert run(["ca", "create", "--out", str(out)]) == 1
    assert "ca/ca-chain.crt already exists; use --force" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["ca-chain.crt"]


def test_import_orders_a_root_first_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bundles often list the root first; the chain written must still go upwards, or the
    # root lands among the intermediates of tls.crt and an intermediate becomes ca.crt.
    _ok("ca", "create", "--out", tmp_path / "root", "--cn", "Root", "--path-length", "2")
    _ok("ca", "create", "--out", tmp_path / "i1", "--parent", tmp_path / "root",
        "--cn", "I1", "--path-length", "1")  # fmt: skip
    _ok("ca", "create", "--out", tmp_path / "i2", "--parent", tmp_path / "i1", "--cn", "I2")
    _ok("ca", "create", "--out", tmp_path / "stray", "--cn", "Stray Root")
    upwards = (tmp_path / "i2" / "ca-chain.crt").read_bytes()
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        b"".join(
            c.public_bytes(serialization.Encoding.PEM)
            for c in reversed(x509.load_pem_x509_certificates(upwards))
        )
        + (tmp_path / "stray" / "ca.crt").read_bytes()
    )
    capsys.readouterr()
    _ok("ca", "import", "--cert", bundle, "--key", tmp_path / "i2" / "ca.key",
        "--out", tmp_path / "imported")  # fmt: skip
    assert capsys.readouterr().err == (
        "certctl: warning: CN=Stray Root: not an issuer in the chain of CN=I2; "
        "left out of ca-chain.crt\n"
    )
    assert (tmp_path / "imported" / "ca-chain.crt").read_bytes() == upwards
    _ok("cert", "issue", "--ca", tmp_path / "imported", "--cn", "web.example",
        "--out", tmp_path / "leaf")  # fmt: skip
    names = [c.subject.rfc4514_string() for c in _certs(tmp_path / "leaf" / "tls.crt")]
    assert names == ["CN=web.example", "CN=I2", "CN=I1"]
    assert _certs(tmp_path / "leaf" / "ca.crt") == _certs(tmp_path / "root" / "ca.crt")
    _ok("verify", "--ca", tmp_path / "leaf" / "ca.crt", tmp_path / "leaf" / "tls.crt")


def test_help_gives_the_default_name_of_an_intermediate(
    intermediate_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --help said "default: 'certctl Root CA'" alone, for an intermediate too.
    name = _certs(intermediate_dir / "ca.crt")[0].subject.rfc4514_string()
    capsys.readouterr()
    assert run(["ca", "create", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    helped = text.split("--cn TEXT ", 1)[1].split(" --subject", 1)[0]
    assert helped == (
        f"Common name (default: 'certctl Root CA'; with --parent, '{name.removeprefix('CN=')}')."
    )
    assert name == "CN=certctl Intermediate CA"


def test_ca_import_lists_the_files_it_wrote_as_ca_create_does(
    intermediate_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ca create named every file it wrote; ca import said only the directory.
    out = tmp_path / "imported"
    capsys.readouterr()
    _ok("ca", "import", "--cert", intermediate_dir / "ca-chain.crt",
        "--key", intermediate_dir / "ca.key", "--out", out)  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [f"  {out / 'ca.crt'}", f"  {out / 'ca.key'}", f"  {out / 'ca-chain.crt'}"]
