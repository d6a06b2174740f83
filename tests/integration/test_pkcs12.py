"""``cert issue --p12`` keystores opened by ``openssl pkcs12`` and Java's ``keytool``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from cryptography import x509

from tests._tools import failed, ok, run
from tests.integration.conftest import Pki, certctl_ok

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Passw0rd"
# (key type, --p12-legacy, encryption openssl reports for the key bag)
KEYSTORES = [
    ("ec-p256", False, "PBES2, PBKDF2, AES-256-CBC"),
    ("rsa-2048", False, "PBES2, PBKDF2, AES-256-CBC"),
    ("ec-p256", True, "pbeWithSHA1And3-KeyTripleDES-CBC"),
    ("rsa-2048", True, "pbeWithSHA1And3-KeyTripleDES-CBC"),
]


@pytest.fixture(scope="module")
def keystores(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    base = tmp_path_factory.mktemp("p12")
    password_file = base / "pw"
    password_file.write_text(PASSWORD + "\n")  # the trailing newline is not part of it
    inter = pki.chain("ec-p256").inter
    stores = {}
    for key_type, legacy, _ in KEYSTORES:
        out = base / f"{key_type}-{'legacy' if legacy else 'modern'}"
        certctl_ok(
            "cert", "issue", "--ca", inter, "--cn", "app-1.example.com", "--key-type", key_type,
            "--p12", "--password-file", password_file, "--out", out,
            *(["--p12-legacy"] if legacy else []),
        )  # fmt: skip
        stores[key_type, legacy] = out / "tls.p12"
    return stores


@pytest.fixture(scope="module")
def passwords(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("p12-passwords")
    (base / "right").write_text(PASSWORD + "\n")
    (base / "wrong").write_text("not-the-password\n")
    return base / "right", base / "wrong"


@pytest.mark.parametrize(("key_type", "legacy", "encryption"), KEYSTORES)
def test_openssl_pkcs12_opens_with_the_password(
    keystores: dict[tuple[str, bool], Path],
    passwords: tuple[Path, Path],
    key_type: str,
    legacy: bool,
    encryption: str,
) -> None:
    store, (right, _) = keystores[key_type, legacy], passwords
    passin = f"file:{right}"
    certs = ok(run("openssl", "pkcs12", "-info", "-in", store, "-passin", passin, "-nokeys"))
    output = certs.stdout + certs.stderr
    assert f"Shrouded Keybag: {encryption}" in output
    assert output.count("-----BEGIN CERTIFICATE-----") == 3  # leaf, intermediate, root
    assert "subject=CN = app-1.example.com" in output
    assert "PRIVATE KEY" not in output
    keys = ok(run("openssl", "pkcs12", "-info", "-in", store, "-passin", passin, "-noenc"))
    assert keys.stdout.count("-----BEGIN PRIVATE KEY-----") == 1


@pytest.mark.parametrize(("key_type", "legacy"), [(k, legacy) for k, legacy, _ in KEYSTORES])
def test_openssl_pkcs12_refuses_a_wrong_password(
    keystores: dict[tuple[str, bool], Path],
    passwords: tuple[Path, Path],
    key_type: str,
    legacy: bool,
) -> None:
    store, (_, wrong) = keystores[key_type, legacy], passwords
    result = failed(
        run("openssl", "pkcs12", "-info", "-in", store, "-passin", f"file:{wrong}", "-nokeys")
    )
    assert "Mac verify error" in result.stderr
    assert "BEGIN" not in result.stdout


def keytool_entries(listing: str) -> dict[str, str]:
    """``keytool -list -v`` output split by alias."""
    blocks = listing.split("Alias name: ")[1:]
    return {block.split("\n", 1)[0]: block for block in blocks}


@pytest.mark.parametrize("legacy", [False, True], ids=["aes", "legacy"])
def test_keytool_lists_a_private_key_entry_and_the_trusted_ca(
    pki: Pki, keystores: dict[tuple[str, bool], Path], legacy: bool
) -> None:
    store = keystores["rsa-2048", legacy]
    result = ok(run("keytool", "-list", "-v", "-storetype", "PKCS12", "-keystore", store,
                    "-storepass", PASSWORD))  # fmt: skip
    # As elasticsearch-certutil writes them: the key with its whole chain, and the root
    # as a trusted entry "ca" (Elasticsearch refuses a truststore.path without one).
    assert "Your keystore contains 2 entries" in result.stdout
    by_alias = keytool_entries(result.stdout)
    assert set(by_alias) == {"tls", "ca"}
    assert "Entry type: PrivateKeyEntry" in by_alias["tls"]
    assert "Certificate chain length: 3" in by_alias["tls"]
    assert "Entry type: trustedCertEntry" in by_alias["ca"]
    root = pki.chain("ec-p256").root / "ca.crt"
    root_subject = ok(run("openssl", "x509", "-in", root, "-noout", "-subject", "-nameopt",
                          "RFC2253")).stdout.split("=", 1)[1].strip()  # fmt: skip
    assert f"Owner: {root_subject}" in by_alias["ca"]


def test_keytool_refuses_a_wrong_password(keystores: dict[tuple[str, bool], Path]) -> None:
    store = keystores["ec-p256", False]
    result = failed(
        run("keytool", "-list", "-storetype", "PKCS12", "-keystore", store, "-storepass", "nope!!")
    )
    assert "password was incorrect" in result.stdout + result.stderr


JAVA_WARNING = "the PKCS#12 password has characters outside printable ASCII"


@pytest.mark.parametrize(
    ("password", "java_opens"),
    [("pässwörd€", False), ("tab\there", False), ("a b~!@#$%^&*()", True)],
    ids=["non-ascii", "control", "printable-ascii"],
)
def test_a_password_java_cannot_use_draws_a_warning(
    pki: Pki, tmp_path: Path, password: str, java_opens: bool
) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text(password + "\n")
    out = tmp_path / "leaf"
    result = certctl_ok(
        "cert", "issue", "--ca", pki.chain("ec-p256").inter, "--cn", "app-1.example.com",
        "--p12", "--password-file", password_file, "--out", out,
    )  # fmt: skip
    assert (JAVA_WARNING in result.err) is not java_opens
    store = out / "tls.p12"
    ok(run("openssl", "pkcs12", "-info", "-in", store, "-passin", f"file:{password_file}",
           "-nokeys"))  # fmt: skip
    listing = run("keytool", "-list", "-storetype", "PKCS12", "-keystore", store,
                  "-storepass:file", password_file)  # fmt: skip
    if java_opens:
        assert "Your keystore contains 2 entries" in ok(listing).stdout
    else:
        assert "password was incorrect" in failed(listing).stdout + listing.stderr


@pytest.mark.parametrize("signer", ["new-ca", "intermediate"])
def test_http_bundle_keystore_is_what_certutil_writes(
    pki: Pki, tmp_path: Path, signer: str
) -> None:
    # elasticsearch-certutil http: alias "http" with the key, the CA as trusted entry "ca".
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD + "\n")
    bundle = tmp_path / "bundle.zip"
    ca = ["--ca", pki.chain("ec-p256").inter] if signer == "intermediate" else []
    certctl_ok(
        "http", "--non-interactive", "--node", "es1", "--dns", "es1.example.com",
        "--password-file", password_file, "--out", bundle, *ca,
    )  # fmt: skip
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(tmp_path / "unzipped")
    store = tmp_path / "unzipped" / "elasticsearch" / "es1" / "http.p12"
    listing = ok(run("keytool", "-list", "-v", "-storetype", "PKCS12", "-keystore", store,
                     "-storepass", PASSWORD)).stdout  # fmt: skip
    entries = keytool_entries(listing)
    assert set(entries) == {"http", "ca"}
    assert "Entry type: PrivateKeyEntry" in entries["http"]
    length = 3 if signer == "intermediate" else 2
    assert f"Certificate chain length: {length}" in entries["http"]
    assert "Entry type: trustedCertEntry" in entries["ca"]
    client_ca = tmp_path / "unzipped" / "kibana" / "elasticsearch-ca.pem"
    trusted = ok(run("keytool", "-exportcert", "-rfc", "-alias", "ca", "-storetype", "PKCS12",
                     "-keystore", store, "-storepass", PASSWORD)).stdout  # fmt: skip
    assert x509.load_pem_x509_certificate(trusted.encode()) == x509.load_pem_x509_certificate(
        client_ca.read_bytes()
    )
    # OpenSSL checks the MAC over the joined contents and reads every certificate once.
    info = ok(run("openssl", "pkcs12", "-info", "-in", store, "-passin", f"file:{password_file}",
                  "-nokeys"))  # fmt: skip
    assert info.stdout.count("-----BEGIN CERTIFICATE-----") == length


def _fingerprint(cert: Path) -> str:
    return ok(run("openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256")).stdout


def test_reissue_in_the_other_format_replaces_the_old_files(pki: Pki, tmp_path: Path) -> None:
    # Before, `cert issue --p12 --force` over a PEM directory left the old tls.crt and
    # tls.key beside the new tls.p12 (and the other way round): nginx pointed at them kept
    # serving the certificate the command had just replaced.
    chain = pki.chain("ec-p256")
    out = tmp_path / "web"
    issue = ["cert", "issue", "--ca", chain.inter, "--cn", "web.example.com", "--out", out]
    certctl_ok(*issue)
    replaced = certctl_ok(*issue, "--p12", "--password", PASSWORD, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.p12"]
    # Each removed file is named, as each written one is (before, neither was).
    assert replaced.out.splitlines()[1:] == [
        f"  {out}/tls.p12", f"  {out}/ca.crt", f"  removed {out}/tls.crt",
        f"  removed {out}/tls.key",
    ]  # fmt: skip
    listed = ok(run("keytool", "-list", "-storetype", "PKCS12", "-keystore", out / "tls.p12",
                    "-storepass", PASSWORD)).stdout  # fmt: skip
    assert "tls, " in listed
    assert "PrivateKeyEntry" in listed
    in_p12 = tmp_path / "in-p12.crt"
    ok(run("openssl", "pkcs12", "-in", out / "tls.p12", "-passin", f"pass:{PASSWORD}",
           "-nokeys", "-clcerts", "-out", in_p12))  # fmt: skip
    # Back to PEM: without --force the keystore is an output in the way, as a file to replace.
    refused = run("certctl", *issue)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"certctl: error: {out}/tls.p12 already exists; use --force to overwrite\n"
    )
    back = certctl_ok(*issue, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert back.out.splitlines()[-1] == f"  removed {out}/tls.p12"
    # Nothing removed, nothing said.
    again = certctl_ok(*issue, "--force")
    assert "removed" not in again.out
    ok(run("openssl", "verify", "-CAfile", chain.root / "ca.crt", "-untrusted",
           chain.inter / "ca.crt", out / "tls.crt"))  # fmt: skip
    assert _fingerprint(out / "tls.crt") != _fingerprint(in_p12)


def test_password_file_is_read_as_openssl_reads_it(pki: Pki, tmp_path: Path) -> None:
    # openssl -passin file: takes the first line. A wrapped `openssl rand -base64 64` file
    # made a keystore from both lines that openssl then could not open: it is refused.
    inter = pki.chain("ec-p256").inter
    one_line, two_lines = tmp_path / "one", tmp_path / "two"
    one_line.write_text("x" * 64 + "\n")
    two_lines.write_text("x" * 64 + "\n" + "yz==\n")
    refused = run("certctl", "cert", "issue", "--ca", inter, "--cn", "p.example", "--p12",
                  "--password-file", two_lines, "--out", tmp_path / "refused")  # fmt: skip
    assert (refused.returncode, refused.stderr) == (
        1,
        f"certctl: error: {two_lines}: password file holds more than one line (openssl and "
        "keytool read only the first); put the password on one line\n",
    )
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "p12"
    certctl_ok("cert", "issue", "--ca", inter, "--cn", "p.example", "--p12",
               "--password-file", one_line, "--out", out)  # fmt: skip
    ok(run("openssl", "pkcs12", "-in", out / "tls.p12", "-passin", f"file:{one_line}",
           "-noout"))  # fmt: skip
