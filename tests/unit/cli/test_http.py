"""``certctl http``: options, refusals, and the wizard on a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import ipaddress
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from certctl.cli.main import run
from certctl.errors import CertctlError
from certctl.pki import (
    SubjectAltNames,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    format_serial,
    generate_private_key,
    key_to_pem,
    keys_match,
    load_csr,
    load_material,
    verify_certificate,
)

PASSWORD = "s3cret pass"
UNENCRYPTED_CA_KEY = (
    "certctl: warning: ca/ca.key in {out} is not encrypted: whoever gets the zip can issue "
    "trusted certificates; give --ca-password-file FILE (or CERTCTL_CA_PASSWORD) to encrypt it"
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERTCTL_PASSWORD", raising=False)
    monkeypatch.delenv("CERTCTL_CA_PASSWORD", raising=False)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text(PASSWORD + "\n")
    return path


def _sans(cert: x509.Certificate) -> SubjectAltNames:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return SubjectAltNames.from_extension(ext.value)


def _now() -> datetime:
    return datetime.now(UTC)


def test_new_ca_p12(
    tmp_path: Path, password_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle.zip"
    code = run(
        [
            "http",
            "--non-interactive",
            "--out",
            str(out),
            "--node",
            "es1",
            "--node",
            "es2",
            "--dns",
            "es1=es1.example.com",
            "--ip",
            "es2=10.0.0.2",
            "--dns",
            "es.example.com",
            "--password-file",
            str(password_file),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # The default stays an unencrypted ca/ca.key (scripts rely on it), said in one line.
    assert captured.err == UNENCRYPTED_CA_KEY.format(out=out) + "\n"
    assert out.stat().st_mode & 0o777 == 0o600
    assert f"wrote {out}" in captured.out
    assert "elasticsearch/es1/" in captured.out
    assert "elasticsearch/es2/" in captured.out
    assert "next steps:" in captured.out
    archive = zipfile.ZipFile(out)
    ca_cert = x509.load_pem_x509_certificate(archive.read("kibana/elasticsearch-ca.pem"))
    assert archive.read("ca/ca.crt") == archive.read("kibana/elasticsearch-ca.pem")
    expected = {
        "es1": (["es1.example.com", "es.example.com"], []),
        "es2": (["es.example.com"], [ipaddress.ip_address("10.0.0.2")]),
    }
    for node, (dns, ips) in expected.items():
        _, cert, _ = pkcs12.load_key_and_certificates(
            archive.read(f"elasticsearch/{node}/http.p12"), PASSWORD.encode()
        )
        assert cert is not None
        assert list(_sans(cert).dns) == dns
        assert list(_sans(cert).ip) == ips
        verify_certificate(cert, trust=[ca_cert], hostname=dns[0], now=_now())
        readme = archive.read(f"elasticsearch/{node}/README.txt").decode()
        assert PASSWORD not in readme
        assert "the password in the file pw" in " ".join(readme.split())
        # cert issue writes tls.p12: the README says which name the samples expect.
        assert "--p12, saving its tls.p12 as http.p12." in " ".join(readme.split())


def test_pem_generic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "web.zip"
    code = run(
        [
            *("http", "--out", str(out), "--profile", "generic", "--pem", "--node", "web1"),
            *("--dns", "web1.example.com", "--ip", "192.0.2.10"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    archive = zipfile.ZipFile(out)
    assert "web1/sample-nginx.conf" in archive.namelist()
    assert archive.getinfo("web1/http.key").external_attr >> 16 == 0o100600
    assert archive.getinfo("ca/ca.key").external_attr >> 16 == 0o100600
    cert = x509.load_pem_x509_certificate(archive.read("web1/http.crt"))
    assert list(_sans(cert).dns) == ["web1.example.com"]
    ca_cert = x509.load_pem_x509_certificate(archive.read("client/ca.crt"))
    verify_certificate(cert, trust=[ca_cert], hostname="192.0.2.10", now=_now())
    assert (
        "curl --cacert ca.crt https://web1.example.com:443/"
        in archive.read("client/sample-curl.sh").decode()
    )


def test_next_steps_unzip_the_path_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `make demo` wrote certctl-demo/http-bundle.zip and then said `unzip http-bundle.zip`,
    # which fails from the directory the command ran in: the step names the path written.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my bundles").mkdir()
    code = run(["http", "--out", "my bundles/web.zip", "--pem", "--node", "web1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote my bundles/web.zip " in captured.out
    assert "  1. unzip 'my bundles/web.zip'; every folder has a README.txt" in captured.out


@pytest.mark.parametrize("existing", [False, True])
def test_a_directory_out_is_refused_naming_a_zip_in_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    existing: bool,
) -> None:
    # `--out bundle/`, as cert issue takes a directory, wrote a zip file named "bundle"; an
    # existing directory was refused as "bundle is a directory", saying nothing of a zip.
    monkeypatch.chdir(tmp_path)
    if existing:
        (tmp_path / "bundle").mkdir()
    code = run(["http", "--out", "bundle/", "--pem", "--node", "web1"])
    assert code == 2
    assert capsys.readouterr().err == (
        "certctl: error: Invalid value for '--out' / '-o': bundle/ is a directory: --out names "
        "the zip file to write, e.g. bundle/http-bundle.zip (see 'certctl http --help')\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == (["bundle"] if existing else [])
    if existing:
        assert not any((tmp_path / "bundle").iterdir())


def test_existing_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir = tmp_path / "ca"
    assert run(["ca", "create", "--out", str(ca_dir), "--cn", "Ops CA"]) == 0
    out = tmp_path / "b.zip"
    code = run(["http", "--out", str(out), "--ca", str(ca_dir), "--pem", "--node", "es1"])
    assert code == 0, capsys.readouterr().err
    archive = zipfile.ZipFile(out)
    assert not any(name.startswith("ca/") for name in archive.namelist())
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert archive.read("kibana/elasticsearch-ca.pem") == (ca_dir / "ca.crt").read_bytes()
    cert = x509.load_pem_x509_certificate(archive.read("elasticsearch/es1/http.crt"))
    assert cert.issuer == ca_cert.subject
    verify_certificate(cert, trust=[ca_cert], hostname="es1", now=_now())


def test_csr_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "csr.zip"
    code = run(["http", "--out", str(out), "--csr", "--node", "es1", "--ip", "es1=10.1.1.1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "to be signed" in captured.out
    archive = zipfile.ZipFile(out)
    assert not any(name.startswith("ca/") for name in archive.namelist())
    # No CA in this bundle, so the summary promises none (the external CA's is the users').
    assert not any(name.endswith((".pem", ".crt")) for name in archive.namelist())
    assert "kibana/" in captured.out
    assert "sample client settings (add your CA's certificate)" in captured.out
    assert "give clients the certificate of the CA that signed the CSRs" in captured.out
    assert "CA certificate in kibana" not in captured.out
    csr = load_csr(archive.read("elasticsearch/es1/http.csr"))
    assert csr.is_signature_valid
    key = load_material(archive.read("elasticsearch/es1/http.key")).private_key
    assert key is not None
    assert key.public_key() == csr.public_key()
    # The README's certctl steps, as written: signed/tls.crt is the http.crt to install.
    readme = archive.read("elasticsearch/es1/README.txt").decode()
    assert "--csr http.csr --profile server --out signed/" in readme
    assert "(cp signed/tls.crt http.crt)" in readme
    (tmp_path / "http.csr").write_bytes(archive.read("elasticsearch/es1/http.csr"))
    assert run(["ca", "create", "--out", str(tmp_path / "ca"), "--cn", "Ext CA"]) == 0
    signed = tmp_path / "signed"
    sign = ["--csr", str(tmp_path / "http.csr"), "--profile", "server", "--out", str(signed)]
    capsys.readouterr()
    assert run(["csr", "sign", "--ca", str(tmp_path / "ca"), *sign]) == 0
    http_crt = x509.load_pem_x509_certificate((signed / "tls.crt").read_bytes())
    # Its expiry said, as cert issue says it (before: "... for CN=es1" alone).
    assert capsys.readouterr().out.startswith(
        f"signed server certificate serial {format_serial(http_crt.serial_number)} for CN=es1, "
        f"valid until {http_crt.not_valid_after_utc:%Y-%m-%d}\n"
    )
    assert http_crt.public_key() == key.public_key()
    trusted = x509.load_pem_x509_certificate((signed / "ca.crt").read_bytes())
    verify_certificate(http_crt, trust=[trusted], hostname="10.1.1.1", now=_now())


def test_shared(tmp_path: Path, password_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shared.zip"
    code = run(
        [
            *("http", "--out", str(out), "--shared", "--node", "es1", "--node", "es2"),
            *("--ip", "10.0.0.9", "--password-file", str(password_file)),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # One folder for all of them: "each node folder on its node" had the user look for more.
    assert "  2. install elasticsearch/http/ on every Elasticsearch node;" in captured.out
    assert "each node folder" not in captured.out
    archive = zipfile.ZipFile(out)
    p12s = [n for n in archive.namelist() if n.endswith(".p12")]
    assert p12s == ["elasticsearch/http/http.p12"]
    _, cert, _ = pkcs12.load_key_and_certificates(archive.read(p12s[0]), PASSWORD.encode())
    assert cert is not None
    assert list(_sans(cert).dns) == ["es1", "es2"]
    assert list(_sans(cert).ip) == [ipaddress.ip_address("10.0.0.9")]
    # It said "Elasticsearch node http", the folder's name, as if a node were called so.
    sample = archive.read("elasticsearch/http/sample-elasticsearch.yml").decode()
    assert sample.startswith(
        "# Elasticsearch: HTTP TLS settings for elasticsearch.yml on every node "
        "(shared certificate http).\n"
    )


def test_shared_generic_nginx_sample_names_every_server(tmp_path: Path) -> None:
    out = tmp_path / "shared.zip"
    argv = ["http", "--out", str(out), "--shared", "--shared-name", "front", "--node", "w1"]
    assert run([*argv, "--node", "w2", "--profile", "generic", "--pem"]) == 0
    sample = zipfile.ZipFile(out).read("front/sample-nginx.conf").decode()
    assert sample.startswith(
        "# nginx: HTTPS for every server (shared certificate front). Copy the files to "
        "/etc/nginx/tls/.\n"
    )


def test_password_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CERTCTL_PASSWORD", "from-env")
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), "--node", "es1", "--p12-legacy"]) == 0
    archive = zipfile.ZipFile(out)
    key, _, _ = pkcs12.load_key_and_certificates(
        archive.read("elasticsearch/es1/http.p12"), b"from-env"
    )
    assert key is not None


@pytest.mark.parametrize("source", ["file", "environment"])
def test_new_ca_key_encrypted_with_the_ca_password(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    source: str,
) -> None:
    ca_password = "ca pass word"
    options = ["--pem", "--node", "es1"]
    if source == "file":
        (tmp_path / "ca-pw").write_text(ca_password + "\n")
        options += ["--ca-password-file", str(tmp_path / "ca-pw")]
        hint = "the password in the file ca-pw"
    else:
        monkeypatch.setenv("CERTCTL_CA_PASSWORD", ca_password)
        hint = "the password from the CERTCTL_CA_PASSWORD environment variable"
    out = tmp_path / "b.zip"
    code = run(["http", "--non-interactive", "--out", str(out), *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""  # no "not encrypted" warning
    assert "store ca/ca.key and ca/ca.p12 safely offline" in captured.out
    assert f"ca.key and ca.p12 encrypted with {hint}\n" in captured.out
    archive = zipfile.ZipFile(out)
    key_pem = archive.read("ca/ca.key")
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(CertctlError, match="password"):
        load_material(key_pem)
    ca_key = load_material(key_pem, ca_password.encode()).private_key
    ca_cert = x509.load_pem_x509_certificate(archive.read("ca/ca.crt"))
    assert ca_key is not None
    assert keys_match(ca_key, ca_cert)
    assert archive.getinfo("ca/ca.p12").external_attr >> 16 == 0o100600
    p12_key, p12_cert, _ = pkcs12.load_key_and_certificates(
        archive.read("ca/ca.p12"), ca_password.encode()
    )
    assert p12_cert == ca_cert
    assert p12_key is not None
    assert keys_match(p12_key, ca_cert)
    readme = " ".join(archive.read("ca/README.txt").decode().split())
    assert "encrypted with AES-256" in readme
    assert f"The password is {hint}" in readme
    assert "NOT encrypted" not in readme
    assert ca_password not in readme
    # The bundle's ca/ is a CA directory for the next bundle, with the same password.
    (tmp_path / "ca").mkdir()
    for name in ("ca.crt", "ca.key"):
        (tmp_path / "ca" / name).write_bytes(archive.read(f"ca/{name}"))
    again = tmp_path / "again.zip"
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", ca_password)
    code = run(
        ["http", "--out", str(again), "--ca", str(tmp_path / "ca"), "--pem", "--node", "es2"]
    )
    assert code == 0, capsys.readouterr().err
    cert = x509.load_pem_x509_certificate(zipfile.ZipFile(again).read("elasticsearch/es2/http.crt"))
    verify_certificate(cert, trust=[ca_cert], hostname="es2", now=_now())


def test_unencrypted_ca_key_readme_says_how_to_encrypt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), "--pem", "--node", "es1"]) == 0
    assert capsys.readouterr().err == UNENCRYPTED_CA_KEY.format(out=out) + "\n"
    archive = zipfile.ZipFile(out)
    assert "ca/ca.p12" not in archive.namelist()
    assert load_material(archive.read("ca/ca.key")).private_key is not None
    readme = archive.read("ca/README.txt").decode()
    assert "NOT encrypted" in readme
    assert "certctl ca import --cert ca.crt --key ca.key --key-password-file FILE" in readme


def test_short_validity_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.zip"
    code = run(
        [
            *("http", "--out", str(out), "--pem", "--node", "es1", "--node", "es2"),
            *("--validity", "30D", "--ca-validity", "60D"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.err.splitlines()
    assert "certctl: warning: CA lifetime 60D is under 90 days; plan its renewal" in lines
    assert "certctl: warning: certificate lifetime 30D is under 60 days; plan its renewal" in lines
    assert UNENCRYPTED_CA_KEY.format(out=out) in lines
    assert len(lines) == 3  # once per condition, not per node


def test_comma_lists_per_node_and_shared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As in `cert issue` and `csr create` (and certutil): NODE=a,b gives the node both names,
    # a plain a,b gives every certificate both (a comma is in no DNS name or IP address).
    out = tmp_path / "csr.zip"
    code = run(
        [
            *("http", "--out", str(out), "--csr", "--node", "es1", "--node", "es2"),
            *("--ip", "es1=10.0.0.1, 10.0.0.2", "--ip", "192.0.2.1,192.0.2.2"),
            *("--dns", "es2=a.example,b.example", "--dns", "all.example,"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    archive = zipfile.ZipFile(out)
    es1 = load_csr(archive.read("elasticsearch/es1/http.csr"))
    es2 = load_csr(archive.read("elasticsearch/es2/http.csr"))
    shared_ips = [ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")]
    sans = {
        name: SubjectAltNames.from_extension(
            csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
        for name, csr in (("es1", es1), ("es2", es2))
    }
    assert list(sans["es1"].ip) == [
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("10.0.0.2"),
        *shared_ips,
    ]
    assert list(sans["es1"].dns) == ["all.example"]
    assert list(sans["es2"].dns) == ["a.example", "b.example", "all.example"]
    assert list(sans["es2"].ip) == shared_ips


@pytest.mark.parametrize(
    ("args", "where"),
    [(["--ip", "es1=10.0.0.1,10.0.0.300"], "node es1: "), (["--ip", "10.0.0.1,10.0.0.300"], "")],
)
def test_comma_list_bad_item_named_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], where: str
) -> None:
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), "--csr", "--node", "es1", "--node", "es2", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"certctl: error: {where}10.0.0.300: not a valid IPv4 or IPv6"), err
    assert len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "where", "entry"),
    [
        (["--dns", "es1=a.example b.example"], "node es1: ", "a.example b.example"),
        (["--ip", "10.0.0.1 10.0.0.2"], "", "10.0.0.1 10.0.0.2"),
    ],
)
def test_a_space_separated_list_is_refused_naming_the_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], where: str, entry: str
) -> None:
    # Commas separate names, as certutil's; the message said "invalid DNS name (labels are …)"
    # of the whole entry (the wizard instead split it at the space, unannounced).
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), "--csr", "--node", "es1", "--node", "es2", *args]) == 2
    err = capsys.readouterr().err
    commas = ",".join(entry.split())
    assert err == (
        f"certctl: error: {where}{entry!r}: separate names and addresses with commas, not "
        f"spaces ({commas}) (see 'certctl http --help')\n"
    )
    assert not out.exists()


def test_wizard_asks_again_for_names_separated_by_spaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # "a.example b.example" was split at the space, where --dns "a.example b.example" is
    # refused: a name holding a space is no name, so the answer is refused and asked again.
    # Names come comma-separated or one per line (as certutil asks), up to an empty line.
    csr_node_web1 = ["generic", "y", "y", ""]  # profile, CSRs, per node, node name (web1)
    names = [
        # Refused (asked again), one per line (a line refused: the line asked again), done.
        *("a.example b.example", "a.example", "b.example c.example", "b.example", ""),
        *("10.0.0.1 10.0.0.2", "10.0.0.1, 10.0.0.2", ""),  # refused, a comma list, done
    ]
    answers = iter([*csr_node_web1, *names, "n", "", "y"])  # another node?, key type, write
    _script_wizard(monkeypatch, answers)
    out = tmp_path / "b.zip"
    code = run(["http", "--out", str(out), "--node", "web1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert next(answers, None) is None
    said = " ".join(captured.out.split())
    assert (
        "'a.example b.example': separate names and addresses with commas, not spaces "
        "(a.example,b.example)"
    ) in said
    assert "'10.0.0.1 10.0.0.2': separate names and addresses with commas" in said
    csr = load_csr(zipfile.ZipFile(out).read("web1/http.csr"))
    sans = SubjectAltNames.from_extension(
        csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    assert "'b.example c.example': separate names and addresses with commas" in said
    assert list(sans.dns) == ["a.example", "b.example"]
    assert list(sans.ip) == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")]


def test_wizard_names_typed_one_per_line_may_begin_with_the_offered_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # "web1" typed (the offered name) ended the list as Enter does: the next line,
    # "www.example", went to the IP question, was refused there and was in no certificate.
    csr_node_web1 = ["generic", "y", "y", ""]  # profile, CSRs, per node, node name (web1)
    names = ["web1", "www.example", "", "", ""]  # DNS one per line, done; IPs: none
    answers = iter([*csr_node_web1, *names, "n", "", "y"])  # another node?, key type, write
    _script_wizard(monkeypatch, answers)
    out = tmp_path / "b.zip"
    code = run(["http", "--out", str(out), "--node", "web1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert next(answers, None) is None
    assert "not a valid IPv4 or IPv6 address" not in captured.out
    csr = load_csr(zipfile.ZipFile(out).read("web1/http.csr"))
    sans = SubjectAltNames.from_extension(
        csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    assert (list(sans.dns), list(sans.ip)) == (["web1", "www.example"], [])


def test_existing_output_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.zip"
    out.write_bytes(b"keep me")
    args = ["http", "--out", str(out), "--pem", "--node", "es1"]
    assert run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("certctl: error: ")
    assert "already exists; use --force" in err
    assert len(err.splitlines()) == 1
    assert out.read_bytes() == b"keep me"
    assert run([*args, "--force"]) == 0
    assert zipfile.is_zipfile(out)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--ip", "es1=10.0.0.300"], 2, "10.0.0.300: not a valid IPv4 or IPv6 address"),
        (["--dns", "es1=bad_name"], 2, "bad_name: invalid DNS name"),
        (["--dns", "es9=x.example.com"], 2, "'es9' is not a --node"),
        (["--node", "es1"], 2, "es1: node given twice"),
        (["--node", "a/b"], 2, "'a/b': invalid node name"),
        (["--validity", "90X"], 2, "90X: unknown duration unit"),
        (["--key-type", "rsa-1024"], 2, "rsa-1024: key type not allowed"),
        (["--profile", "apache"], 2, "apache: choose elasticsearch or generic"),
        (["--csr", "--ca", "somewhere"], 2, "--csr and --ca exclude each other"),
        (["--ca", "no-such-dir"], 1, "no-such-dir: CA directory not found"),
        (
            ["--validity", "6Y"],
            2,
            "--validity 6Y outlives the new CA (--ca-validity 5Y, the default): a CA must "
            "outlive the certificates it signs; give --ca-validity 6Y or more (see 'certctl "
            "http --help')",
        ),
        (
            # It read "--validity 90D outlives …", a value the user had not given.
            ["--ca-validity", "60D"],
            2,
            "the default validity 90D outlives the new CA (--ca-validity 60D): a CA must "
            "outlive the certificates it signs; give --validity 60D or less, or --ca-validity "
            "90D or more (see 'certctl http --help')",
        ),
        (
            ["--validity", "90D", "--ca-validity", "60D"],
            2,
            "--validity 90D outlives the new CA (--ca-validity 60D): a CA must outlive the "
            "certificates it signs; give --ca-validity 90D or more (see",
        ),
        (
            ["--validity", "2Y", "--ca-validity", "400D"],
            2,
            "--validity 2Y outlives the new CA (--ca-validity 400D)",
        ),
    ],
)
def test_refusals(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), "--pem", "--node", "es1", *args]) == code
    err = capsys.readouterr().err
    assert message in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_p12_without_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), "--node", "es1"]) == 2
    assert "PKCS#12 output needs a password" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--non-interactive", "--pem"], ""),
        # No terminal, as in CI: the run that expected the wizard learns why it got none.
        (["--pem"], " (standard input is not a terminal: no wizard)"),
        (["--password", "pw"], " (standard input is not a terminal: no wizard)"),
    ],
)
def test_no_node(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    why: str,
) -> None:
    # A usage error naming the options; before: exit 1, "no nodes: give at least one node".
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"certctl: error: give --node NAME (repeatable) or --shared with "
        f"--dns/--ip{why} (see 'certctl http --help')\n"
    )
    assert not out.exists()


def test_no_prompt_without_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # stdin is not a TTY and --non-interactive is absent: behave as --non-interactive.
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), "--pem", "--node", "es1"]) == 0
    assert "?" not in capsys.readouterr().out


def test_closed_stdin_is_no_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `certctl http … <&-` (a service unit, some CI runners): Python's sys.stdin is None.
    # Before: "internal error (AttributeError: 'NoneType' object has no attribute 'isatty')".
    monkeypatch.setattr(sys, "stdin", None)
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), "--pem"]) == 2
    assert capsys.readouterr().err == (
        "certctl: error: give --node NAME (repeatable) or --shared with "
        "--dns/--ip (standard input is not a terminal: no wizard) (see 'certctl http --help')\n"
    )
    assert run(["http", "--out", str(out), "--pem", "--node", "es1"]) == 0
    assert zipfile.ZipFile(out).namelist()


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("option", ["--password-file", "--ca-password-file"])
def test_a_password_on_stdin_does_not_go_with_the_wizard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    # On a terminal the wizard reads its answers from stdin: a password there too would
    # take the first answer (or the wizard the password). Refused before anything is read.
    stdin = _FakeTTY("typed-password\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), "--node", "es1", option, "-"]) == 2
    assert capsys.readouterr().err == (
        f"certctl: error: {option} -: the wizard reads its answers from standard "
        "input; give the password in a file, pipe it in, or add --non-interactive "
        "(see 'certctl http --help')\n"
    )
    assert stdin.tell() == 0  # nothing read
    assert not out.exists()


def _script_wizard(monkeypatch: pytest.MonkeyPatch, answers: Iterator[str]) -> list[str]:
    """Answer the wizard's prompts from ``answers`` (through rich's input hook, on a fake TTY).

    Returns the list that collects the prompts asked with hidden input (passwords).
    """
    import rich.prompt

    secret_prompts: list[str] = []

    def fake_input(cls, console, prompt, password, stream=None):  # type: ignore[no-untyped-def]
        if password:
            secret_prompts.append(str(prompt))
        return next(answers)

    monkeypatch.setattr(rich.prompt.PromptBase, "get_input", classmethod(fake_input))
    monkeypatch.setattr(sys, "stdin", _FakeTTY(""))
    return secret_prompts


def test_wizard_in_process_shared_existing_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Drive the wizard through rich's input hook: encrypted existing CA, shared cert, PEM."""

    ca_dir = tmp_path / "ca"
    ca_pw = tmp_path / "ca-pw"
    ca_pw.write_text("ca secret\n")
    assert run(["ca", "create", "--out", str(ca_dir), "--key-password-file", str(ca_pw)]) == 0
    answers = iter(
        [
            "generic",  # profile
            "n",  # CSRs?
            "y",  # existing CA?
            str(tmp_path / "missing"),  # CA directory: refused, asked again
            str(ca_dir),
            "wrong",  # CA key password: refused, directory (offered) and password asked again
            "",
            "ca secret",
            "n",  # per node?
            "front",  # shared name
            "www.example.com, api.example.com",  # DNS
            "",  # more DNS names: none
            "",  # IPs
            "180D",  # validity
            "ec-p384",  # key type
            "pem",  # format
            "y",  # write?
        ]
    )
    secret_prompts = _script_wizard(monkeypatch, answers)
    out = tmp_path / "b.zip"
    code = run(["http", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert next(answers, None) is None
    output = " ".join(captured.out.split())
    assert "CA directory not found" in output
    # The answers after the names, shown before writing.
    said = f"certificates (180D, ec-p384, http.crt + http.key) signed by the CA in {ca_dir}:"
    # Without whitespace: a long temporary path is wrapped inside itself.
    assert "".join(said.split()) in "".join(output.split())
    assert "wrong password" in output
    assert len(secret_prompts) == 2
    assert all("ca.key" in p for p in secret_prompts)
    archive = zipfile.ZipFile(out)
    cert = x509.load_pem_x509_certificate(archive.read("front/http.crt"))
    assert list(_sans(cert).dns) == ["www.example.com", "api.example.com"]
    assert cert.issuer == x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes()).subject
    assert "front/sample-nginx.conf" in archive.namelist()


def test_wizard_new_ca_without_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty CA password keeps ca/ca.key unencrypted, said in the wizard and on stderr."""

    answers = iter(
        [
            "generic",  # profile
            "n",  # CSRs?
            "n",  # existing CA?
            "",  # CA common name
            "",  # CA validity
            "",  # CA password: none
            "y",  # per node?
            "",  # node name (web1)
            "",  # DNS (web1)
            "",  # IPs
            "n",  # another node?
            "",  # validity
            "",  # key type
            "pem",  # format
            "y",  # write?
        ]
    )
    secret_prompts = _script_wizard(monkeypatch, answers)
    out = tmp_path / "b.zip"
    code = run(["http", "--out", str(out), "--node", "web1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert next(answers, None) is None
    assert [p.startswith("Password for ca/ca.key") for p in secret_prompts] == [True]
    assert "ca/ca.key will NOT be encrypted" in captured.out
    assert captured.err == UNENCRYPTED_CA_KEY.format(out=out) + "\n"
    archive = zipfile.ZipFile(out)
    assert load_material(archive.read("ca/ca.key")).private_key is not None
    assert "ca/ca.p12" not in archive.namelist()


def test_wizard_refuses_a_validity_the_new_ca_does_not_outlive_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # It was taken, and every other question asked, before the end refused the plan.
    new_ca_node_web1 = ["generic", "n", "n", "", "1Y", "", "y", "", "", "", "n"]
    validity = ["2Y", "180D"]  # refused, then taken
    answers = iter([*new_ca_node_web1, *validity, "", "pem", "y"])
    _script_wizard(monkeypatch, answers)
    out = tmp_path / "b.zip"
    code = run(["http", "--out", str(out), "--node", "web1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert next(answers, None) is None
    assert (
        "2Y outlives the new CA, valid 1Y: a CA must outlive the certificates it signs (give a "
        "shorter validity, or start again with a longer one for the CA)"
    ) in " ".join(captured.out.split())
    cert = x509.load_pem_x509_certificate(zipfile.ZipFile(out).read("web1/http.crt"))
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 180


@pytest.mark.parametrize("encrypted", [True, False])
def test_wizard_existing_ca_when_the_given_ca_password_does_not_fit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    encrypted: bool,
) -> None:
    """CERTCTL_CA_PASSWORD (meant for a new CA, or stale) must not trap the wizard in a loop."""

    ca_dir = tmp_path / "ca"
    create = ["ca", "create", "--out", str(ca_dir)]
    if encrypted:
        (tmp_path / "ca-pw").write_text("ca secret\n")
        create += ["--key-password-file", str(tmp_path / "ca-pw")]
    assert run(create) == 0
    monkeypatch.setenv("CERTCTL_CA_PASSWORD", "not the CA's password")
    answers = [
        "generic",  # profile
        "n",  # CSRs?
        "y",  # existing CA?
        str(ca_dir),
    ]
    if encrypted:
        # The environment's password fails once, is reported, then the wizard asks.
        answers += [str(ca_dir), "ca secret"]
    answers += ["y", "", "", "", "n", "", "", "pem", "y"]  # node web1, PEM, write
    remaining = iter(answers)
    secret_prompts = _script_wizard(monkeypatch, remaining)
    out = tmp_path / "b.zip"
    code = run(["http", "--out", str(out), "--node", "web1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err + captured.out
    assert next(remaining, None) is None
    assert len(secret_prompts) == (1 if encrypted else 0)
    assert ("wrong password" in " ".join(captured.out.split())) is encrypted
    cert = x509.load_pem_x509_certificate(zipfile.ZipFile(out).read("web1/http.crt"))
    assert cert.issuer == x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes()).subject


def test_wizard_refuses_an_expired_ca_at_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expired CA is refused when its directory is given, not after every other question."""

    expired_dir = tmp_path / "old-ca"
    expired_dir.mkdir()
    key = generate_private_key()
    old = create_root_ca(
        key,
        common_name_dn("Old Root"),
        validity=timedelta(days=1),
        now=datetime(2020, 1, 1, tzinfo=UTC),
    ).certificate
    (expired_dir / "ca.crt").write_bytes(certs_to_pem([old]))
    (expired_dir / "ca.key").write_bytes(key_to_pem(key))
    ca_dir = tmp_path / "ca"
    assert run(["ca", "create", "--out", str(ca_dir)]) == 0
    capsys.readouterr()
    # profile, CSRs, existing CA, the expired one (refused), a current one, then node web1.
    answers = ["generic", "n", "y", str(expired_dir), str(ca_dir)]
    answers += ["y", "", "", "", "n", "", "", "pem", "y"]
    remaining = iter(answers)
    _script_wizard(monkeypatch, remaining)
    out = tmp_path / "b.zip"
    code = run(["http", "--out", str(out), "--node", "web1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err + captured.out
    assert next(remaining, None) is None
    # Compared without whitespace: the console wraps a long temporary path (xdist's
    # popen-gwN/ makes it longer than a line) inside the path itself.
    said = (
        f"{expired_dir}: the CA certificate expired on 2020-01-02 00:00Z: it can no longer "
        "sign certificates or CRLs (create a new CA with 'certctl ca create')"
    )
    assert "".join(said.split()) in "".join(captured.out.split())
    assert "using CA CN=Old Root" not in captured.out
    cert = x509.load_pem_x509_certificate(zipfile.ZipFile(out).read("web1/http.crt"))
    assert cert.issuer == x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes()).subject


def test_wizard_refuses_an_expired_encrypted_ca_before_asking_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The password of an expired CA's key was asked for, only to refuse the CA after it."""

    expired_dir = tmp_path / "old-ca"
    expired_dir.mkdir()
    key = generate_private_key()
    old = create_root_ca(
        key,
        common_name_dn("Old Root"),
        validity=timedelta(days=1),
        now=datetime(2020, 1, 1, tzinfo=UTC),
    ).certificate
    (expired_dir / "ca.crt").write_bytes(certs_to_pem([old]))
    (expired_dir / "ca.key").write_bytes(key_to_pem(key, b"old password"))
    ca_dir = tmp_path / "ca"
    assert run(["ca", "create", "--out", str(ca_dir)]) == 0
    capsys.readouterr()
    # profile, CSRs, existing CA, the expired one (refused, no password asked), a current
    # one, then node web1.
    answers = ["generic", "n", "y", str(expired_dir), str(ca_dir)]
    answers += ["y", "", "", "", "n", "", "", "pem", "y"]
    remaining = iter(answers)
    secret_prompts = _script_wizard(monkeypatch, remaining)
    out = tmp_path / "b.zip"
    code = run(["http", "--out", str(out), "--node", "web1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err + captured.out
    assert next(remaining, None) is None
    assert secret_prompts == []
    # Compared without whitespace: the console wraps a long temporary path (xdist's
    # popen-gwN/ makes it longer than a line) inside the path itself.
    said = (
        f"{expired_dir}: the CA certificate expired on 2020-01-02 00:00Z: it can no longer "
        "sign certificates or CRLs (create a new CA with 'certctl ca create')"
    )
    assert "".join(said.split()) in "".join(captured.out.split())


def test_wizard_given_a_file_for_the_ca_directory_asks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ca.crt itself, typed for the directory, is named as a file: no internal error."""

    ca_dir = tmp_path / "ca"
    assert run(["ca", "create", "--out", str(ca_dir)]) == 0
    capsys.readouterr()
    answers = ["generic", "n", "y", str(ca_dir / "ca.crt"), str(ca_dir)]
    answers += ["y", "", "", "", "n", "", "", "pem", "y"]
    remaining = iter(answers)
    _script_wizard(monkeypatch, remaining)
    code = run(["http", "--out", str(tmp_path / "b.zip"), "--node", "web1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err + captured.out
    assert next(remaining, None) is None
    said = f"{ca_dir / 'ca.crt'} is a file: --ca takes the CA directory"
    # Without whitespace: a long temporary path is wrapped inside itself (see above).
    assert "".join(said.split()) in "".join(captured.out.split())


def test_wizard_declined_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:

    # profile, CSRs: yes, per node, node name, DNS, IPs, another node, key type, write: no
    answers = iter(["", "y", "", "", "", "", "", "ed25519", "n"])

    _script_wizard(monkeypatch, answers)
    out = tmp_path / "b.zip"
    assert run(["http", "--out", str(out), "--node", "es1"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "certctl: error: aborted\n"
    assert "About to write ed25519 keys and CSRs for an external CA:" in captured.out
    assert not out.exists()


class _TerminalStderr(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_wizard_left_with_ctrl_c_says_so_on_a_line_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The terminal echoes ^C where the cursor is, behind the prompt: the error line ran on
    # after it, "CA common name (Elasticsearch HTTP CA): ^Ccertctl: error: interrupted".
    def answers() -> Iterator[str]:
        yield ""  # the profile
        raise KeyboardInterrupt

    _script_wizard(monkeypatch, answers())
    stderr = _TerminalStderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert run(["http", "--out", str(tmp_path / "b.zip"), "--node", "es1"]) == 130
    assert stderr.getvalue() == "\ncertctl: error: interrupted\n"
    assert not (tmp_path / "b.zip").exists()


def test_a_wizard_left_with_ctrl_d_says_so_on_a_line_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-D echoes nothing: the error line ran on after the prompt, "CA common name
    # (Elasticsearch HTTP CA): certctl: error: aborted".
    def answers() -> Iterator[str]:
        yield ""  # the profile
        raise EOFError

    _script_wizard(monkeypatch, answers())
    stderr = _TerminalStderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert run(["http", "--out", str(tmp_path / "b.zip"), "--node", "es1"]) == 1
    assert stderr.getvalue() == "\ncertctl: error: aborted\n"
    assert not (tmp_path / "b.zip").exists()


def test_a_wizard_declined_on_a_terminal_adds_no_blank_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "n" + Enter left the cursor at the start of a line: the error line follows directly.
    answers = iter(["", "y", "", "", "", "", "", "", "n"])
    _script_wizard(monkeypatch, answers)
    stderr = _TerminalStderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert run(["http", "--out", str(tmp_path / "b.zip"), "--node", "es1"]) == 1
    assert stderr.getvalue() == "certctl: error: aborted\n"


# --- the wizard on a real pseudo-terminal --------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")


class _Terminal:
    """A child process on a pty: wait for text, type answers (a tiny stdlib pexpect)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        # 200 columns: no prompt is wrapped in the middle of the text we wait for.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))

        def make_controlling_tty() -> None:
            # getpass reads passwords from /dev/tty: the pty must be the controlling terminal.
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=make_controlling_tty,
        )
        os.close(slave)
        self.master = master
        self.pending = ""
        self.log = ""

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], max(timeout, 0))
        if not ready:
            return True
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        text = _ANSI.sub("", data.decode("utf-8", "replace")).replace("\r", "")
        self.pending += text
        self.log += text
        return True

    def expect(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no {text!r} on the terminal; output so far:\n{self.log}")
        self.pending = self.pending[self.pending.index(text) + len(text) :]

    def send(self, line: str, *, secret: bool = False) -> None:
        if secret:
            # getpass switches echo off and flushes typed-ahead input: wait for it first.
            deadline = time.monotonic() + 30
            while termios.tcgetattr(self.master)[3] & termios.ECHO:
                assert time.monotonic() < deadline, "terminal echo never switched off"
                time.sleep(0.01)
        os.write(self.master, line.encode() + b"\n")

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
            pass
        try:
            return self.proc.wait(timeout=max(deadline - time.monotonic(), 1))
        finally:
            os.close(self.master)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


CA_PASSWORD = "root key pass"


@pytest.mark.timeout(120)
def test_wizard_on_a_pty(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env.update(TERM="xterm", NO_COLOR="1", COLUMNS="200", LINES="50")
    argv = [sys.executable, "-c", "from certctl.cli.main import main; main()"]
    term = _Terminal([*argv, "http", "--out", "w.zip", "--node", "es1"], tmp_path, env)
    try:
        # (text to wait for, answer to type or None, answer is a password)
        steps: list[tuple[str, str | None, bool]] = [
            ("Which server will use the certificates?", "", False),
            ("Generate CSRs for an external CA?", "n", False),
            ("Use an existing CA?", "n", False),
            ("CA common name (Elasticsearch HTTP CA):", "Wizard CA", False),
            ("CA validity (5Y):", "", False),
            ("Password for ca/ca.key (empty: not encrypted):", CA_PASSWORD, True),
            ("Repeat the password:", "typo", True),
            ("the passwords differ", None, False),
            ("Password for ca/ca.key (empty: not encrypted):", CA_PASSWORD, True),
            ("Repeat the password:", CA_PASSWORD, True),
            ("Generate a certificate per node?", "", False),
            ("Node #1 name (es1):", "", False),
            ("DNS names for es1, comma-separated or one per line (es1):", "es1.example.com", False),
            # One per line, as elasticsearch-certutil asks; an empty line ends the list.
            ("More DNS names for es1 (empty line: done):", "es1", False),
            ("More DNS names for es1 (empty line: done):", "", False),
            ("IP addresses for es1, comma-separated or one per line:", "10.0.0.1", False),
            ("More IP addresses for es1 (empty line: done):", "", False),
            ("Add another node?", "y", False),
            ("Node #2 name:", "es2", False),
            ("DNS names for es2, comma-separated or one per line (es2):", "", False),
            ("IP addresses for es2, comma-separated or one per line:", "not-an-ip", False),
            ("not-an-ip: not a valid IPv4 or IPv6 address", None, False),
            ("IP addresses for es2, comma-separated or one per line:", "10.0.0.2", False),
            ("More IP addresses for es2 (empty line: done):", "", False),
            ("Add another node?", "n", False),
            ("Certificate validity (90D):", "1Y", False),
            ("Key type [ec-p256/ec-p384/ed25519/rsa-2048/rsa-3072/rsa-4096] (ec-p256):", "", False),
            ("Output format [p12/pem] (p12):", "", False),
            ("Password for http.p12:", "first", True),
            ("Repeat the password:", "second", True),
            ("the passwords differ", None, False),
            ("Password for http.p12:", PASSWORD, True),
            ("Repeat the password:", PASSWORD, True),
            ("Use legacy PKCS#12 encryption?", "", False),
            ("and certificates (1Y, ec-p256, http.p12):", None, False),
            ("Write w.zip?", "y", False),
        ]
        for text, answer, secret in steps:
            term.expect(text)
            if answer is not None:
                term.send(answer, secret=secret)
        term.expect("wrote w.zip")
        assert term.wait() == 0, term.log
    finally:
        term.kill()
    assert "first" not in term.log
    assert PASSWORD not in term.log  # passwords are never echoed
    assert CA_PASSWORD not in term.log
    assert "not encrypted: whoever" not in term.log
    archive = zipfile.ZipFile(tmp_path / "w.zip")
    ca_cert = x509.load_pem_x509_certificate(archive.read("ca/ca.crt"))
    ca_key = load_material(archive.read("ca/ca.key"), CA_PASSWORD.encode()).private_key
    assert ca_key is not None
    assert keys_match(ca_key, ca_cert)
    assert "the CA password entered in the certctl http wizard" in " ".join(
        archive.read("ca/README.txt").decode().split()
    )
    assert ca_cert.subject.rfc4514_string() == "CN=Wizard CA"
    for node, host in (("es1", "es1.example.com"), ("es2", "10.0.0.2")):
        _, cert, _ = pkcs12.load_key_and_certificates(
            archive.read(f"elasticsearch/{node}/http.p12"), PASSWORD.encode()
        )
        assert cert is not None
        verify_certificate(cert, trust=[ca_cert], hostname=host, now=_now())
    _, cert, _ = pkcs12.load_key_and_certificates(
        archive.read("elasticsearch/es2/http.p12"), PASSWORD.encode()
    )
    assert cert is not None
    assert list(_sans(cert).dns) == ["es2"]
    _, cert, _ = pkcs12.load_key_and_certificates(
        archive.read("elasticsearch/es1/http.p12"), PASSWORD.encode()
    )
    assert cert is not None
    assert list(_sans(cert).dns) == ["es1.example.com", "es1"]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 365


def test_out_root_is_refused_naming_a_zip_in_it_with_one_slash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The example was built by stripping the trailing "/" and adding "/http-bundle.zip":
    # for the root it read "//http-bundle.zip".
    assert run(["http", "--out", "/", "--pem", "--node", "web1"]) == 2
    assert "e.g. /http-bundle.zip (see" in capsys.readouterr().err
