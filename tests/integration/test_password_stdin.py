"""``--password-file -`` and its kin read the password from standard input, as openssl does.

The real ``certctl`` runs with the password piped in (``printf %s "$PW" | certctl …``);
openssl then opens what it wrote with that password, and refuses a wrong one.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests._tools import failed, ok, run
from tests.integration.conftest import Pki

pytestmark = pytest.mark.integration

PASSWORD = "piped s3cret"
CA_PASSWORD = "ca key s3cret"


def _opens_p12(p12: Path, password: str) -> bool:
    return (
        run("openssl", "pkcs12", "-in", p12, "-passin", f"pass:{password}", "-noout").returncode
        == 0
    )


def _opens_key(key: Path, password: str) -> bool:
    return (
        run("openssl", "pkey", "-in", key, "-passin", f"pass:{password}", "-noout").returncode == 0
    )


@pytest.mark.parametrize("piped", [PASSWORD, PASSWORD + "\n"], ids=["printf", "echo"])
def test_cert_issue_p12_password_from_stdin(pki: Pki, tmp_path: Path, piped: str) -> None:
    inter = pki.chain("ec-p256").inter
    out = tmp_path / "out"
    ok(run("certctl", "cert", "issue", "--ca", inter, "--cn", "p.example", "--p12",
           "--password-file", "-", "--out", out, input=piped))  # fmt: skip
    assert _opens_p12(out / "tls.p12", PASSWORD)
    assert not _opens_p12(out / "tls.p12", "wrong")  # negative twin
    # The password read once serves every PKCS#12 input of verify (two here).
    ok(run("certctl", "verify", out / "tls.p12", "--ca", inter / "ca.crt", "--untrusted",
           out / "tls.p12", "--hostname", "p.example", "--password-file", "-",
           input=piped))  # fmt: skip
    shown = ok(run("certctl", "inspect", out / "tls.p12", "--password-file", "-", input=piped))
    assert "p.example" in shown.stdout


def test_ca_key_password_from_stdin_encrypts_and_opens_the_ca_key(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    ok(run("certctl", "ca", "create", "--out", ca, "--cn", "Stdin CA",
           "--key-password-file", "-", input=CA_PASSWORD))  # fmt: skip
    assert _opens_key(ca / "ca.key", CA_PASSWORD)
    assert not _opens_key(ca / "ca.key", "wrong")
    leaf = tmp_path / "leaf"
    issued = run("certctl", "cert", "issue", "--ca", ca, "--ca-password-file", "-",
                 "--cn", "s.example", "--out", leaf, input=CA_PASSWORD + "\n")  # fmt: skip
    ok(issued)
    ok(run("openssl", "verify", "-CAfile", ca / "ca.crt", leaf / "tls.crt"))
    # A wrong CA password on stdin: refused, nothing written.
    refused = run("certctl", "cert", "issue", "--ca", ca, "--ca-password-file", "-",
                  "--cn", "s.example", "--out", tmp_path / "no", input="wrong")  # fmt: skip
    assert refused.returncode == 1
    assert "wrong password" in refused.stderr
    assert not (tmp_path / "no").exists()


def test_ca_import_of_a_p12_with_its_password_from_stdin(pki: Pki, tmp_path: Path) -> None:
    chain = pki.chain("ec-p256")
    p12 = tmp_path / "ca.p12"
    ok(run("openssl", "pkcs12", "-export", "-in", chain.inter / "ca.crt", "-inkey",
           chain.inter / "ca.key", "-certfile", chain.root / "ca.crt", "-passout",
           f"pass:{PASSWORD}", "-out", p12))  # fmt: skip
    key_pw = tmp_path / "key-pw"
    key_pw.write_text(CA_PASSWORD + "\n")
    wrong = run("certctl", "ca", "import", "--p12", p12, "--password-file", "-",
                "--key-password-file", key_pw, "--out", tmp_path / "ca", input="wrong")  # fmt: skip
    assert wrong.returncode == 1
    assert "password" in wrong.stderr
    assert not (tmp_path / "ca").exists()
    ok(run("certctl", "ca", "import", "--p12", p12, "--password-file", "-",
           "--key-password-file", key_pw, "--out", tmp_path / "ca", input=PASSWORD))  # fmt: skip
    assert _opens_key(tmp_path / "ca" / "ca.key", CA_PASSWORD)


def test_http_bundle_password_from_stdin(tmp_path: Path) -> None:
    out = tmp_path / "b.zip"
    ok(run("certctl", "http", "--non-interactive", "--node", "es1", "--password-file", "-",
           "--out", out, input=PASSWORD + "\n"))  # fmt: skip
    with zipfile.ZipFile(out) as archive:
        (tmp_path / "http.p12").write_bytes(archive.read("elasticsearch/es1/http.p12"))
        readme = " ".join(archive.read("elasticsearch/es1/README.txt").decode().split())
    assert _opens_p12(tmp_path / "http.p12", PASSWORD)
    assert not _opens_p12(tmp_path / "http.p12", "wrong")
    assert "the password given on standard input" in readme
    assert PASSWORD not in readme


@pytest.mark.parametrize(
    ("piped", "message"),
    [
        (
            "x" * 64 + "\nyz==\n",
            "standard input holds more than one line (openssl and keytool read only the "
            "first); put the password on one line",
        ),
        ("", "standard input is empty"),
        ("\n", "standard input is empty"),
    ],
    ids=["two-lines", "empty", "newline"],
)
def test_a_bad_password_on_stdin_is_refused(
    pki: Pki, tmp_path: Path, piped: str, message: str
) -> None:
    inter = pki.chain("ec-p256").inter
    refused = run("certctl", "cert", "issue", "--ca", inter, "--cn", "p.example", "--p12",
                  "--password-file", "-", "--out", tmp_path / "out", input=piped)  # fmt: skip
    assert (refused.returncode, refused.stderr) == (1, f"certctl: error: {message}\n")
    assert not (tmp_path / "out").exists()


# argv (CA and OUT filled in), the first option to say '-' and the second, refused.
TWICE = {
    "cert-issue": (
        "cert issue --ca CA --cn p.example --p12 --password-file - --ca-password-file - --out OUT",
        "--password-file",
        "--ca-password-file",
    ),
    "ca-create": (
        "ca create --out OUT --parent CA --key-password-file - --parent-password-file -",
        "--key-password-file",
        "--parent-password-file",
    ),
    "ca-import": (
        "ca import --p12 x.p12 --password-file - --key-password-file - --out OUT",
        "--password-file",
        "--key-password-file",
    ),
    "http": (
        "http --non-interactive --node es1 --ca-password-file - --password-file - --out OUT/b.zip",
        "--ca-password-file",
        "--password-file",
    ),
}


@pytest.mark.parametrize("case", list(TWICE))
def test_two_options_reading_stdin_are_a_usage_error(pki: Pki, tmp_path: Path, case: str) -> None:
    # Refused before anything is read or written, naming both options.
    argv, first, second = TWICE[case]
    inter = pki.chain("ec-p256").inter
    out = tmp_path / "out"
    args = [str(inter) if a == "CA" else a.replace("OUT", str(out)) for a in argv.split()]
    refused = failed(run("certctl", *args, input=PASSWORD))
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(
        f"certctl: error: Invalid value for '{second}': '-' (standard input) is already given "
        f"to {first}: standard input holds one password, give the other in a file (see '"
    ), refused.stderr
    assert not out.exists()
