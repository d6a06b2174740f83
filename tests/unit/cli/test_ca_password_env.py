"""``CERTCTL_CA_PASSWORD`` encrypts the ca.key that ``ca create`` and ``ca import`` write.

Every command that loads a CA reads the variable, and refuses a password for an unencrypted
key: a CA written in clear while it was exported could not be used until it was unset.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from certctl.cli.main import run

PASSWORD = "env-secret-7"


def _ok(*args: str | Path) -> None:
    assert run([str(a) for a in args]) == 0


def test_ca_create_encrypts_with_the_variable_and_the_same_variable_opens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", PASSWORD)
    _ok("ca", "create", "--out", tmp_path / "ca", "--cn", "Env CA")
    out = capsys.readouterr().out
    assert "is encrypted with the password from CERTCTL_CA_PASSWORD" in out
    assert PASSWORD not in out
    key_pem = (tmp_path / "ca" / "ca.key").read_bytes()
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    load_pem_private_key(key_pem, PASSWORD.encode())
    # The same environment issues from it (before: "the private key is not encrypted").
    _ok("cert", "issue", "--ca", tmp_path / "ca", "--cn", "a.example", "--pem",
        "--out", tmp_path / "a")  # fmt: skip
    assert (tmp_path / "a" / "tls.crt").is_file()
    # An intermediate below it: the parent opens and the new key is encrypted too.
    _ok("ca", "create", "--out", tmp_path / "inter", "--parent", tmp_path / "ca")
    inter_key = (tmp_path / "inter" / "ca.key").read_bytes()
    assert inter_key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def test_without_the_variable_ca_create_writes_the_key_in_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CERTCTL_CA_PASSWORD", raising=False)
    _ok("ca", "create", "--out", tmp_path / "ca")
    assert "encrypted" not in capsys.readouterr().out
    assert (tmp_path / "ca" / "ca.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_ca_import_encrypts_with_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CERTCTL_CA_PASSWORD", raising=False)
    _ok("ca", "create", "--out", tmp_path / "plain")
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", PASSWORD)
    plain = tmp_path / "plain"
    _ok("ca", "import", "--out", tmp_path / "imported",
        "--cert", plain / "ca.crt", "--key", plain / "ca.key")  # fmt: skip
    out = capsys.readouterr().out
    assert "encrypted with the password from CERTCTL_CA_PASSWORD" in out
    assert PASSWORD not in out
    load_pem_private_key((tmp_path / "imported" / "ca.key").read_bytes(), PASSWORD.encode())


def test_the_variable_is_a_default_an_unencrypted_ca_opens_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CA made before the variable was exported stays usable while it is (as for
    CERTCTL_PASSWORD); before, cert issue, csr sign and crl create refused it with "the
    private key is not encrypted; drop the password"."""
    monkeypatch.delenv("CERTCTL_CA_PASSWORD", raising=False)
    _ok("ca", "create", "--out", tmp_path / "plain", "--cn", "Plain CA")
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", PASSWORD)
    _ok("cert", "issue", "--ca", tmp_path / "plain", "--cn", "b.example", "--pem",
        "--out", tmp_path / "b")  # fmt: skip
    _ok("csr", "create", "--cn", "c.example", "--out", tmp_path / "c")
    _ok("csr", "sign", "--csr", tmp_path / "c" / "tls.csr", "--ca", tmp_path / "plain",
        "--out", tmp_path / "c-signed")  # fmt: skip
    _ok("crl", "create", "--ca", tmp_path / "plain", "--out", tmp_path / "ca.crl")
    # An intermediate under the plain CA: the parent opens, and the new key is encrypted.
    _ok("ca", "create", "--out", tmp_path / "inter", "--parent", tmp_path / "plain")
    inter_key = (tmp_path / "inter" / "ca.key").read_bytes()
    assert inter_key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def test_a_wrong_password_from_the_variable_says_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Exported for another CA: before, "wrong password" left the user, who gave none to
    # this command, to guess which one was tried.
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    monkeypatch.delenv("CERTCTL_CA_PASSWORD", raising=False)
    _ok("ca", "create", "--out", tmp_path / "ca", "--key-password-file", tmp_path / "pw")
    capsys.readouterr()
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", "for-another-ca")
    wrong = f"certctl: error: {tmp_path / 'ca' / 'ca.key'}: cannot decrypt the private key: "
    wrong += "wrong password"
    for argv in (
        ["cert", "issue", "--ca", tmp_path / "ca", "--cn", "a.example", "--out", tmp_path / "a"],
        ["crl", "create", "--ca", tmp_path / "ca", "--out", tmp_path / "c.crl"],
        ["http", "--non-interactive", "--pem", "--ca", tmp_path / "ca", "--node", "n1",
         "--out", tmp_path / "b.zip"],
    ):  # fmt: skip
        assert run([str(a) for a in argv]) == 1
        err = capsys.readouterr().err
        assert err == f"{wrong} (the password came from CERTCTL_CA_PASSWORD)\n", argv
    # The same wrong password given with the option is the user's own: no such remark.
    (tmp_path / "bad").write_text("for-another-ca\n")
    argv = ["cert", "issue", "--ca", tmp_path / "ca", "--ca-password-file", tmp_path / "bad",
            "--cn", "a.example", "--out", tmp_path / "a"]  # fmt: skip
    assert run([str(a) for a in argv]) == 1
    assert capsys.readouterr().err == f"{wrong}\n"
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b.zip").exists()


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("cert issue", "--ca-password-file"),
        ("csr sign", "--ca-password-file"),
        ("crl create", "--ca-password-file"),
        ("ca create", "--parent-password-file"),
    ],
)
def test_help_names_the_variable_as_the_default(
    command: str, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each of them reads CERTCTL_CA_PASSWORD; their --help said only "Password of an
    # encrypted ca.key", so the variable was found in the README or not at all.
    assert run([*command.split(), "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    helped = text.split(option, 1)[1].split(" --", 1)[0]
    assert "(default: $CERTCTL_CA_PASSWORD)" in helped


def test_inspect_opens_a_ca_key_with_either_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CA commands read CERTCTL_CA_PASSWORD; inspect read only CERTCTL_PASSWORD, so the
    # ca.key they had just written "is encrypted: give its password" in the same shell.
    monkeypatch.delenv("CERTCTL_PASSWORD", raising=False)
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", PASSWORD)
    _ok("ca", "create", "--out", tmp_path / "ca", "--cn", "Env CA")
    key = tmp_path / "ca" / "ca.key"
    capsys.readouterr()
    _ok("inspect", key)
    assert "encrypted       yes" in capsys.readouterr().out
    # CERTCTL_PASSWORD is tried first; exported for a PKCS#12 it does not stop the other.
    monkeypatch.setenv("CERTCTL_PASSWORD", "for-the-p12")
    _ok("inspect", key)
    # Both wrong: the error names both variables tried, never a password.
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", "for-another-ca")
    assert run(["inspect", str(key)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"certctl: error: {key}: cannot decrypt the private key: wrong password "
        "(the passwords came from CERTCTL_PASSWORD and CERTCTL_CA_PASSWORD)\n"
    )
    # Neither set: the hint names both.
    monkeypatch.delenv("CERTCTL_PASSWORD")
    monkeypatch.delenv("CERTCTL_CA_PASSWORD")
    assert run(["inspect", str(key)]) == 1
    assert capsys.readouterr().err == (
        f"certctl: error: {key}: the private key is encrypted: give its password "
        "(--password-file, or CERTCTL_PASSWORD or CERTCTL_CA_PASSWORD)\n"
    )


def test_inspect_and_verify_open_a_pkcs12_with_the_ca_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A PKCS#12 file whose password is CERTCTL_CA_PASSWORD's (the ca.p12 of certctl http)
    # opened in the shell that exported it; before, only CERTCTL_PASSWORD was read.
    monkeypatch.delenv("CERTCTL_PASSWORD", raising=False)
    monkeypatch.delenv("CERTCTL_CA_PASSWORD", raising=False)
    _ok("ca", "create", "--out", tmp_path / "ca")
    _ok("cert", "issue", "--ca", tmp_path / "ca", "--cn", "a.example", "--pem",
        "--out", tmp_path / "a")  # fmt: skip
    p12 = tmp_path / "a.p12"
    crt, key = tmp_path / "a" / "tls.crt", tmp_path / "a" / "tls.key"
    export = ["openssl", "pkcs12", "-export", "-in", str(crt), "-inkey", str(key)]
    subprocess.run([*export, "-out", str(p12), "-passout", f"pass:{PASSWORD}"], check=True)
    capsys.readouterr()
    # Neither variable: the hint names the option and both variables.
    assert run(["inspect", str(p12)]) == 1
    assert capsys.readouterr().err == (
        f"certctl: error: {p12}: PKCS#12 file is password-protected (or damaged): give "
        "--password-file, "
        "or CERTCTL_PASSWORD or CERTCTL_CA_PASSWORD\n"
    )
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", PASSWORD)
    _ok("inspect", p12)
    assert "subject         CN=a.example" in capsys.readouterr().out
    _ok("verify", "--ca", tmp_path / "ca" / "ca.crt", p12)


def test_only_a_password_that_does_not_open_the_file_is_blamed_on_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, any refusal whose text held "password" was taken for a wrong password: a
    # malformed file under ~/passwords/ got "(the password came from CERTCTL_PASSWORD)".
    monkeypatch.setenv("CERTCTL_PASSWORD", "for-the-p12")
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", "for-the-ca")
    folder = tmp_path / "passwords"
    folder.mkdir()
    bad = folder / "x.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    malformed = f"certctl: error: {bad}: malformed PEM certificate block\n"
    assert run(["inspect", str(bad)]) == 1
    assert capsys.readouterr().err == malformed
    assert run(["verify", "--ca", str(bad), str(bad)]) == 1
    assert capsys.readouterr().err == malformed
    assert run(["ca", "import", "--cert", str(bad), "--key", str(bad), "--out",
                str(tmp_path / "imported")]) == 1  # fmt: skip
    assert capsys.readouterr().err == malformed
    # A CA directory under such a path: a ca.key that is no key is not a wrong password.
    monkeypatch.delenv("CERTCTL_CA_PASSWORD")
    ca = tmp_path / "wrong password" / "ca"
    _ok("ca", "create", "--out", ca)
    (ca / "ca.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", "for-the-ca")
    capsys.readouterr()
    assert run(["cert", "issue", "--ca", str(ca), "--cn", "a", "--out", str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err == (
        f"certctl: error: {ca / 'ca.key'}: malformed PEM private key block\n"
    )


def test_both_variables_holding_the_same_wrong_password_are_both_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The second was skipped as already tried, and only CERTCTL_PASSWORD was named: the
    # user who had changed CERTCTL_CA_PASSWORD was told nothing of it.
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", PASSWORD)
    _ok("ca", "create", "--out", tmp_path / "ca")
    key = tmp_path / "ca" / "ca.key"
    capsys.readouterr()
    monkeypatch.setenv("CERTCTL_PASSWORD", "same-wrong")
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", "same-wrong")
    assert run(["inspect", str(key)]) == 1
    assert capsys.readouterr().err == (
        f"certctl: error: {key}: cannot decrypt the private key: wrong password "
        "(the passwords came from CERTCTL_PASSWORD and CERTCTL_CA_PASSWORD)\n"
    )
