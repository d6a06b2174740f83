"""The offline commands refuse contradictory options and odd values in one exact line.

Each case runs the installed ``certctl`` script, as a user would, and checks the exit
status, the whole of stderr and that no file was written or changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certctl.pki import (
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    generate_private_key,
    key_to_pem,
    to_pkcs12,
)
from tests._tools import openssl_req
from tests._tools import run as run_tool
from tests.unit.cli.test_bad_input import _snapshot

SCRIPT = Path(sys.executable).with_name("certctl")
PEM = serialization.Encoding.PEM
LONG_UTF8_CN = "é" * 40  # 40 characters, 80 bytes of UTF-8


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    code: int
    stderr: str
    env: tuple[tuple[str, str], ...] = ()


def _usage(command: str, message: str) -> str:
    # Not "Invalid value: --p12 needs a password": click's words for a value, and these refuse
    # a combination of options.
    return f"certctl: error: {message} (see 'certctl {command} --help')"


def _c(case_id: str, argv: str | list[str], code: int, stderr: str, **env: str) -> Case:
    args = argv.split() if isinstance(argv, str) else argv
    return Case(case_id, tuple(args), code, stderr, tuple(env.items()))


_ISSUE = "cert issue --ca ca1 -o out"
_HTTP = "http -o b.zip --node n1 --non-interactive"

CASES = [
    _c(
        "issue-p12-without-a-password",
        f"{_ISSUE} --cn x --p12",
        2,
        _usage("cert issue", "--p12 needs a password: --password-file or CERTCTL_PASSWORD"),
    ),
    _c(
        # Only a batch is zipped: this made a directory called out.zip.
        "issue-one-certificate-into-a-zip",
        "cert issue --ca ca1 -o out.zip --cn x --pem",
        2,
        _usage(
            "cert issue",
            "--out out.zip: only --in (a batch) writes a zip; one certificate goes into a "
            "directory, e.g. --out out",
        ),
    ),
    # --- cert issue: options that would be dropped without a word ----------------------
    _c(
        "issue-password-without-p12",
        f"{_ISSUE} --cn x --password Sup3rSecret",
        2,
        _usage("cert issue", "--password needs --p12 (PEM keys are written unencrypted)"),
    ),
    _c(
        "issue-password-file-without-p12",
        f"{_ISSUE} --cn x --password-file pw",
        2,
        _usage("cert issue", "--password-file needs --p12 (PEM keys are written unencrypted)"),
    ),
    _c(
        "issue-p12-legacy-without-p12",
        f"{_ISSUE} --cn x --p12-legacy",
        2,
        _usage("cert issue", "--p12-legacy needs --p12 (it picks the PKCS#12 encryption)"),
    ),
    _c(
        "issue-p12-and-pem",
        f"{_ISSUE} --cn x --p12 --pem --password a",
        2,
        _usage("cert issue", "--p12 and --pem exclude each other"),
    ),
    _c(
        "issue-two-passwords",
        f"{_ISSUE} --cn x --p12 --password a --password-file pw",
        2,
        _usage("cert issue", "--password and --password-file exclude each other"),
    ),
    _c(
        "issue-cn-and-subject",
        f"{_ISSUE} --subject CN=a --cn b",
        2,
        _usage("cert issue", "--cn and --subject exclude each other (put the CN in --subject)"),
    ),
    _c(
        "batch-pem-with-password",
        "cert issue --ca ca1 -o out.zip --in instances.yml --pem --password a",
        2,
        _usage(
            "cert issue", "--password does not go with --pem (PEM keys are written unencrypted)"
        ),
    ),
    _c(
        "batch-with-empty-cn",
        [
            "cert",
            "issue",
            "--ca",
            "ca1",
            "-o",
            "out.zip",
            "--in",
            "instances.yml",
            "--pem",
            "--cn",
            "",
        ],
        2,
        _usage("cert issue", "--in takes names from the file; drop --cn"),
    ),
    _c(
        "issue-in-with-email-and-uri",
        [
            *"cert issue --ca ca1 -o out.zip --in instances.yml --pem".split(),
            *"--email a@example.com --uri spiffe://example.org/x".split(),
        ],
        2,
        _usage("cert issue", "--in takes names from the file; drop --email/--uri"),
    ),
    # --- cert issue: values ------------------------------------------------------------
    _c(
        "issue-email-two-at",
        [*_ISSUE.split(), "--cn", "x", "--email", "a@b@c"],
        2,
        _usage("cert issue", "a@b@c: not a valid e-mail address"),
    ),
    _c(
        "issue-bad-a-label",
        f"{_ISSUE} --cn x --dns xn--zz.example",
        2,
        _usage("cert issue", "xn--zz.example: xn--zz is not a valid IDNA A-label (punycode)"),
    ),
    _c(
        "issue-blank-cn",
        [*_ISSUE.split(), "--cn", "   "],
        2,
        # main._fail folds runs of whitespace into one space.
        _usage("cert issue", "Invalid value for --cn: ' ': blank common name"),
    ),
    _c(
        "issue-empty-cn",
        [*_ISSUE.split(), "--cn", ""],
        2,
        _usage("cert issue", "Invalid value for --cn: empty common name"),
    ),
    _c(
        "issue-cn-utf8-too-long",
        [*_ISSUE.split(), "--cn", LONG_UTF8_CN],
        2,
        _usage(
            "cert issue",
            f"Invalid value for --cn: {LONG_UTF8_CN}: common name is longer than 64 bytes as UTF-8",
        ),
    ),
    _c(
        "issue-cn-not-utf8",
        # A byte that is not UTF-8 reaches certctl as a lone surrogate (PEP 383).
        [*_ISSUE.split(), "--cn", os.fsdecode(b"\xff")],
        2,
        _usage("cert issue", "Invalid value for --cn: '\\udcff': common name is not valid UTF-8"),
    ),
    _c(
        "issue-password-not-utf8",
        [*_ISSUE.split(), "--cn", "x", "--p12", "--password", os.fsdecode(b"\xffpw")],
        2,
        _usage("cert issue", "--password: the password is not valid UTF-8"),
    ),
    _c(
        "issue-password-file-not-utf8",
        f"{_ISSUE} --cn x --p12 --password-file latin1.yml",
        1,
        "certctl: error: latin1.yml: the password is not valid UTF-8",
    ),
    _c(
        "issue-ca-is-a-file",
        "cert issue --ca ca1/ca.crt -o out --cn x",
        1,
        "certctl: error: ca1/ca.crt is a file: --ca takes the CA directory "
        "(with ca.crt and ca.key; 'certctl ca import' makes one from a PKCS#12 file or a "
        "PEM pair)",
    ),
    _c(
        # certutil's cert --ca elastic-stack-ca.p12: the message names the way to a directory.
        "issue-ca-is-a-p12",
        "cert issue --ca plain-ca.p12 -o out --cn x",
        1,
        "certctl: error: plain-ca.p12 is a file: --ca takes the CA directory (with ca.crt and "
        "ca.key; 'certctl ca import' makes one from a PKCS#12 file or a PEM pair)",
    ),
    _c(
        "http-ca-is-a-p12",
        "http --non-interactive --pem --node n1 --ca plain-ca.p12 -o b.zip",
        1,
        "certctl: error: plain-ca.p12 is a file: --ca takes the CA directory (with ca.crt and "
        "ca.key; 'certctl ca import' makes one from a PKCS#12 file or a PEM pair)",
    ),
    _c(
        "issue-unknown-profile",
        f"{_ISSUE} --cn x --profile bogus",
        2,
        _usage(
            "cert issue",
            "Invalid value for --profile: bogus: unknown profile (choose one of server, client, "
            "server+client)",
        ),
    ),
    _c(
        # A password file given for a plain key is a mistake to report; CERTCTL_CA_PASSWORD
        # alone is a default and is ignored for it (test_ca_password_env.py).
        "issue-ca-password-file-plain-key",
        f"{_ISSUE} --cn x --ca-password-file pw",
        1,
        "certctl: error: ca1/ca.key: the private key is not encrypted; drop the password "
        "(--ca-password-file or CERTCTL_CA_PASSWORD)",
    ),
    _c(
        "batch-in-directory",
        "cert issue --ca ca1 -o out.zip --in adir --pem",
        1,
        "certctl: error: adir: is a directory, expected an instances file",
    ),
    # --- ca create ---------------------------------------------------------------------
    _c(
        "ca-create-parent-encrypted",
        "ca create -o new --parent encca",
        1,
        "certctl: error: encca/ca.key: the private key is encrypted: give its password "
        "(--parent-password-file or CERTCTL_CA_PASSWORD)",
    ),
    _c(
        "ca-create-parent-is-a-file",
        "ca create -o new --parent ca1/ca.crt",
        1,
        "certctl: error: ca1/ca.crt is a file: --parent takes the CA directory "
        "(with ca.crt and ca.key; 'certctl ca import' makes one from a PKCS#12 file or a "
        "PEM pair)",
    ),
    _c(
        "ca-create-huge-path-length",
        "ca create -o new --path-length 99999999999999999999",
        2,
        "certctl: error: Invalid value for '--path-length': 99999999999999999999: must be at "
        "most 10 "
        "(see 'certctl ca create --help')",
    ),
    _c(
        "ca-create-empty-cn",
        ["ca", "create", "-o", "new", "--cn", ""],
        2,
        _usage("ca create", "Invalid value for --cn: empty common name"),
    ),
    _c(
        "ca-create-cn-and-subject",
        "ca create -o new --cn a --subject CN=b",
        2,
        _usage("ca create", "--cn and --subject exclude each other (put the CN in --subject)"),
    ),
    _c(
        "ca-create-parent-password-without-parent",
        "ca create -o new --parent-password-file pw",
        2,
        _usage(
            "ca create",
            "--parent-password-file needs --parent (a root CA is signed by its own new key)",
        ),
    ),
    # --- ca import ---------------------------------------------------------------------
    _c(
        "ca-import-encrypted-key-kept-plain",
        "ca import -o imp --cert encca/ca.crt --key encca/ca.key --password-file pw",
        2,
        _usage(
            "ca import",
            "the input is password-protected: give --key-password-file (or "
            "CERTCTL_CA_PASSWORD) to keep the imported ca.key encrypted (the --password-file "
            "file will do)",
        ),
    ),
    _c(
        # Both options named at once: naming --password-file alone led to the refusal above.
        "ca-import-encrypted-key-without-passwords",
        "ca import -o imp --cert encca/ca.crt --key encca/ca.key",
        1,
        "certctl: error: encca/ca.key: the private key is encrypted: give its password "
        "(--password-file or CERTCTL_PASSWORD), and --key-password-file (or CERTCTL_CA_PASSWORD) "
        "to keep the "
        "imported ca.key encrypted (the same file will do)",
    ),
    _c(
        "ca-import-p12-kept-plain",
        "ca import -o imp --p12 ca.p12 --password-file pw",
        2,
        _usage(
            "ca import",
            "the input is password-protected: give --key-password-file (or "
            "CERTCTL_CA_PASSWORD) to keep the imported ca.key encrypted (the --password-file "
            "file will do)",
        ),
    ),
    _c(
        # There is no --password-file to reuse: it said "(the --password-file file will do)".
        "ca-import-p12-with-password-kept-plain",
        "ca import -o imp --p12 ca.p12 --password hunter2pw",
        2,
        _usage(
            "ca import",
            "the input is password-protected: give --key-password-file (or "
            "CERTCTL_CA_PASSWORD) to keep the imported ca.key encrypted (a file holding the "
            "--password value will do)",
        ),
    ),
    _c(
        "ca-import-key-and-p12",
        "ca import -o imp --p12 ca.p12 --key encca/ca.key --password-file pw",
        2,
        _usage("ca import", "--key and --p12 exclude each other (the key is in the PKCS#12)"),
    ),
    _c(
        "ca-import-two-passwords",
        "ca import -o imp --p12 ca.p12 --password a --password-file pw",
        2,
        _usage("ca import", "--password and --password-file exclude each other"),
    ),
    # --- csr create / sign -------------------------------------------------------------
    _c(
        "csr-create-email-two-at",
        "csr create -o new --cn x --email a@b@c",
        2,
        _usage("csr create", "a@b@c: not a valid e-mail address"),
    ),
    _c(
        "csr-create-cn-and-subject",
        "csr create -o new --cn x --subject CN=y",
        2,
        _usage("csr create", "--cn and --subject exclude each other (put the CN in --subject)"),
    ),
    _c(
        "csr-sign-long-cn",
        "csr sign --ca ca1 --csr long.csr -o new",
        1,
        f"certctl: error: CN={'x' * 200}: CN is longer than 64 characters",
    ),
    _c(
        "csr-sign-email-two-at",
        "csr sign --ca ca1 --csr bad-email.csr -o new",
        1,
        "certctl: error: a@b@c: not a valid e-mail address",
    ),
    _c(
        "csr-sign-directory",
        "csr sign --ca ca1 --csr adir -o new",
        1,
        "certctl: error: adir: is a directory, expected a CSR",
    ),
    _c(
        "csr-sign-unknown-profile",
        "csr sign --ca ca1 --csr long.csr -o new --profile bogus",
        2,
        _usage(
            "csr sign",
            "Invalid value for --profile: bogus: unknown profile "
            "(choose one of server, client, server+client, intermediate)",
        ),
    ),
    # --- crl create --------------------------------------------------------------------
    _c(
        "crl-reason-without-revoked",
        "crl create --ca ca1 -o new.crl --reason keyCompromise",
        2,
        _usage("crl create", "--reason needs --revoked (it is the reason of each entry)"),
    ),
    _c(
        "crl-remove-from-crl",
        "crl create --ca ca1 -o new.crl --revoked 1f --reason removeFromCRL",
        2,
        _usage(
            "crl create",
            "removeFromCRL: a reason for delta CRLs only (RFC 5280 5.3.1); this is a full "
            "CRL, where a serial no longer revoked is simply left out",
        ),
    ),
    # --- an expired CA: every command that signs with a CA directory ----------------------
    *(
        _c(
            f"{name}-expired-ca",
            argv,
            1,
            "certctl: error: expired: the CA certificate expired on 2020-01-02 00:00Z: it can "
            "no longer sign certificates or CRLs (create a new CA with 'certctl ca create')",
        )
        for name, argv in (
            ("crl", "crl create --ca expired -o new.crl"),
            ("issue", "cert issue --ca expired -o out --cn x"),
            ("batch", "cert issue --ca expired -o out.zip --in instances.yml --pem"),
            ("csr-sign", "csr sign --ca expired --csr long.csr -o out"),
            ("intermediate", "ca create --parent expired -o sub"),
            ("http", "http -o b.zip --node n1 --non-interactive --pem --ca expired"),
        )
    ),
    # Said before the key's password is asked for: finding the password of a CA that can
    # no longer sign, only to be told so then, wasted the user's time.
    *(
        _c(
            f"{name}-expired-encrypted-ca",
            argv,
            1,
            "certctl: error: expired-enc: the CA certificate expired on 2020-01-02 00:00Z: it "
            "can no longer sign certificates or CRLs (create a new CA with 'certctl ca create')",
        )
        for name, argv in (
            ("issue-without-password", "cert issue --ca expired-enc -o out --cn x"),
            ("crl-without-password", "crl create --ca expired-enc -o new.crl"),
        )
    ),
    _c(
        "issue-expired-encrypted-ca-wrong-password",
        "cert issue --ca expired-enc -o out --cn x",
        1,
        "certctl: error: expired-enc: the CA certificate expired on 2020-01-02 00:00Z: it can "
        "no longer sign certificates or CRLs (create a new CA with 'certctl ca create')",
        CERTCTL_CA_PASSWORD="not-the-password",
    ),
    # --- http --------------------------------------------------------------------------
    _c(
        "http-ca-and-ca-cn",
        f"{_HTTP} --ca ca1 --ca-cn X --pem",
        2,
        _usage("http", "--ca-cn describes a new CA; --ca signs with an existing one"),
    ),
    _c(
        "http-p12-legacy-and-pem",
        f"{_HTTP} --p12-legacy --pem",
        2,
        _usage("http", "--p12-legacy does not go with --pem (it applies to http.p12 only)"),
    ),
    _c(
        "http-pem-with-password",
        f"{_HTTP} --pem --password a",
        2,
        _usage("http", "--password does not go with --pem (it applies to http.p12 only)"),
    ),
    _c(
        "http-two-passwords",
        f"{_HTTP} --password a --password-file pw",
        2,
        _usage("http", "--password and --password-file exclude each other"),
    ),
    _c(
        "http-csr-with-password",
        f"{_HTTP} --csr --password a",
        2,
        _usage("http", "--password does not go with --csr (the keys of CSRs are not encrypted)"),
    ),
    # Without --ca, --ca-password-file encrypts the new CA's key; a CSR bundle has no CA.
    _c(
        "http-ca-password-with-csr",
        f"{_HTTP} --csr --ca-password-file pw",
        2,
        _usage("http", "--ca-password-file does not go with --csr (it makes no CA)"),
    ),
    # --- --out -: these commands write files, never a stream -----------------------------
    # It made a directory (or a file) named '-' where the user expected standard output.
    *(
        _c(
            f"out-dash-{command.replace(' ', '-')}",
            f"{command} {extra} --out -",
            2,
            f"certctl: error: Invalid value for '--out' / '-o': '-' (standard output) is not "
            f"supported: certctl writes files here; name a path (for one called '-', give its "
            f"full path) (see 'certctl {command} --help')",
        )
        for command, extra in (
            ("ca create", "--cn x"),
            ("ca import", "--p12 ca.p12"),
            ("cert issue", "--ca ca1 --cn x"),
            ("csr create", "--cn x"),
            ("csr sign", "--ca ca1 --csr long.csr"),
            ("crl create", "--ca ca1"),
            ("http", "--node n1 --non-interactive"),
        )
    ),
    # --- apply -------------------------------------------------------------------------
    _c("apply-not-utf8", "apply -f latin1.yml", 1, "certctl: error: latin1.yml: not UTF-8 text"),
]


def _run(
    workdir: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    base["COLUMNS"] = "200"
    return subprocess.run(
        [str(SCRIPT), *argv],
        cwd=workdir,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _long_cn_csr() -> bytes:
    # cryptography builds such a name only unvalidated: a client could send one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x" * 200, _validate=False)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    return builder.sign(generate_private_key(), hashes.SHA256()).public_bytes(PEM)


def _bad_email_csr() -> bytes:
    san = x509.SubjectAlternativeName([x509.RFC822Name._init_without_validation("a@b@c")])
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(common_name_dn("x"))
        .add_extension(san, critical=False)
    )
    return builder.sign(generate_private_key(), hashes.SHA256()).public_bytes(PEM)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("offline")
    (root / "pw").write_bytes(b"hunter2pw\n")
    for argv in (
        ["ca", "create", "-o", "ca1"],
        ["ca", "create", "-o", "encca", "--key-password-file", "pw"],
    ):
        proc = _run(root, *argv)
        assert proc.returncode == 0, proc.stderr
    old = datetime(2020, 1, 1, tzinfo=UTC)
    expired_key = generate_private_key()
    expired = create_root_ca(
        expired_key, common_name_dn("Expired Root"), validity=timedelta(days=1), now=old
    ).certificate
    current_key = generate_private_key()
    current = create_root_ca(
        current_key,
        common_name_dn("Plain Root"),
        validity=timedelta(days=365),
        now=datetime.now(UTC),
    ).certificate
    files = {
        "expired/ca.crt": certs_to_pem([expired]),
        "expired/ca.key": key_to_pem(expired_key),
        "expired-enc/ca.crt": certs_to_pem([expired]),
        "expired-enc/ca.key": key_to_pem(expired_key, b"hunter2pw"),
        "ca.p12": to_pkcs12("ca", expired_key, expired, [], b"hunter2pw"),
        "plain-ca.p12": pkcs12.serialize_key_and_certificates(
            b"ca", current_key, current, None, serialization.NoEncryption()
        ),
        "long.csr": _long_cn_csr(),
        "bad-email.csr": _bad_email_csr(),
        "instances.yml": b"instances:\n  - name: node-1\n",
        "latin1.yml": "kind: café\n".encode("latin-1"),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(data)
    (root / "adir").mkdir()
    return root


@pytest.fixture
def workdir(base: Path, tmp_path: Path) -> Path:
    work = tmp_path / "w"
    shutil.copytree(base, work)
    return work


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(case: Case, workdir: Path) -> None:
    before = _snapshot(workdir)
    proc = _run(workdir, *case.argv, env=dict(case.env))
    assert proc.stderr == case.stderr + "\n"
    assert proc.returncode == case.code
    assert proc.stdout == ""
    assert _snapshot(workdir) == before


def test_import_keeps_the_key_encrypted(workdir: Path) -> None:
    proc = _run(
        workdir,
        *"ca import -o imp --cert encca/ca.crt --key encca/ca.key --password-file pw".split(),
        "--key-password-file",
        "pw",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    key = workdir / "imp" / "ca.key"
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert key.stat().st_mode & 0o777 == 0o600
    opened = run_tool("openssl", "pkey", "-in", key, "-passin", f"file:{workdir / 'pw'}", "-noout")
    assert opened.returncode == 0, opened.stderr
    # The imported CA signs with the same password, as a created one does.
    issued = _run(workdir, *"cert issue --ca imp -o leaf --cn x --ca-password-file pw".split())
    assert issued.returncode == 0, issued.stderr


@pytest.mark.parametrize(
    "source",
    ["--cert ca1/ca.crt --key ca1/ca.key", "--p12 plain-ca.p12"],
    ids=["pem", "p12-without-password"],
)
def test_import_ignores_certctl_password_for_an_unprotected_input(
    workdir: Path, source: str
) -> None:
    # CERTCTL_PASSWORD is a default, often exported for cert issue --p12: an input that
    # needs no password opens without it ("not encrypted; drop the password" before).
    proc = _run(
        workdir, "ca", "import", "-o", "imp", *source.split(),
        env={"CERTCTL_PASSWORD": "exported-for-other-commands"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    key = workdir / "imp" / "ca.key"
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_import_with_a_wrong_certctl_password_says_where_it_came_from(workdir: Path) -> None:
    proc = _run(
        workdir, *"ca import -o imp --p12 ca.p12".split(), env={"CERTCTL_PASSWORD": "wrong"}
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        "certctl: error: ca.p12: cannot open PKCS#12 file: wrong password or corrupted file "
        "(the password came from CERTCTL_PASSWORD)\n"
    )
    # The right one from the environment opens it, and asks to keep the key encrypted.
    proc = _run(
        workdir, *"ca import -o imp --p12 ca.p12".split(), env={"CERTCTL_PASSWORD": "hunter2pw"}
    )
    assert proc.returncode == 2
    assert "(a file holding CERTCTL_PASSWORD will do)" in proc.stderr
    assert not (workdir / "imp").exists()


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        ("--p12 ca.p12", "ca.p12: PKCS#12 file is password-protected (or damaged): give "
                         "--password-file or CERTCTL_PASSWORD"),
        ("--cert encca/ca.crt --key encca/ca.key", "encca/ca.key: the private key is "
                                                   "encrypted: give its password "
                                                   "(--password-file or CERTCTL_PASSWORD)"),
    ],
    ids=["p12", "pem"],
)  # fmt: skip
def test_import_of_a_protected_input_without_a_password_names_certctl_password(
    workdir: Path, source: str, refusal: str
) -> None:
    # The refusal named --password-file alone, though CERTCTL_PASSWORD opens the input too
    # (DESIGN.md: passwords come from --password-file or CERTCTL_PASSWORD), as inspect says.
    proc = _run(workdir, "ca", "import", "-o", "imp", *source.split())
    assert proc.returncode == 1
    # …and, in the same line, the password to keep the imported ca.key encrypted under.
    assert proc.stderr == (
        f"certctl: error: {refusal}, and --key-password-file (or CERTCTL_CA_PASSWORD) to "
        "keep the imported ca.key encrypted (the same file will do)\n"
    )
    assert not (workdir / "imp").exists()


def test_import_of_expired_ca_warns(workdir: Path) -> None:
    proc = _run(workdir, *"ca import -o imp --cert expired/ca.crt --key expired/ca.key".split())
    assert proc.returncode == 0
    assert proc.stderr == (
        "certctl: warning: the CA certificate expired on 2020-01-02 00:00Z: "
        "it can no longer sign certificates or CRLs\n"
    )
    assert (workdir / "imp" / "ca.key").exists()


def test_import_below_an_expired_parent_warns_that_its_leaves_will_not_verify(
    workdir: Path,
) -> None:
    # The chain given ends with a root that has expired (the intermediate was signed under
    # the root's renewed certificate, same key): imported without a word, then every
    # certificate issued from it failed verification ("certificate has expired").
    from certctl.pki import PROFILES, CertificateAuthority

    now = datetime.now(UTC)
    root_key, inter_key = generate_private_key(), generate_private_key()
    stale, renewed = (
        create_root_ca(
            root_key, common_name_dn("Stale Root"), validity=days, now=now - timedelta(days=2)
        ).certificate
        for days in (timedelta(days=1), timedelta(days=3650))
    )
    inter = (
        CertificateAuthority(renewed, root_key)
        .issue(
            inter_key.public_key(),
            common_name_dn("Inter"),
            profile=PROFILES["intermediate"],
            validity=timedelta(days=30),
            now=now,
        )
        .certificate
    )
    (workdir / "bundle.pem").write_bytes(certs_to_pem([inter, stale]))
    (workdir / "inter.key").write_bytes(key_to_pem(inter_key))
    proc = _run(workdir, *"ca import -o imp --cert bundle.pem --key inter.key".split())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        f"certctl: warning: CN=Stale Root, above it, expired on "
        f"{stale.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: certificates this CA signs will "
        "not verify until that CA is renewed\n"
    )
    assert certs_to_pem([inter, stale]) == (workdir / "imp" / "ca-chain.crt").read_bytes()


def test_crl_reason_takes_spaces_around_it_as_it_takes_any_case(workdir: Path) -> None:
    # "KeyCompromise" was taken and "keycompromise " (pasted with its space) was "unknown".
    proc = _run(workdir, "crl", "create", "--ca", "ca1", "-o", "r.crl", "--revoked", "1f",
                "--reason", " keycompromise ")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    shown = run_tool("openssl", "crl", "-in", workdir / "r.crl", "-noout", "-text")
    assert shown.returncode == 0, shown.stderr
    assert "Serial Number: 1F\n        Revocation Date:" in shown.stdout
    assert "X509v3 CRL Reason Code: \n                Key Compromise" in shown.stdout


def test_crl_next_update_clipped_to_ca(workdir: Path) -> None:
    proc = _run(workdir, *"crl create --ca ca1 -o c.crl --next-update 50Y".split())
    assert proc.returncode == 0, proc.stderr
    ca = x509.load_pem_x509_certificate((workdir / "ca1" / "ca.crt").read_bytes())
    end = ca.not_valid_after_utc
    # Both intervals in days (the CA was made seconds ago: its whole 5Y, rounded to a tenth).
    assert proc.stderr == (
        f"certctl: warning: next update 50Y clipped to the CA's notAfter {end:%Y-%m-%dT%H:%M:%SZ}"
        ": 1825 days instead of 18250 days\n"
    )
    shown = run_tool("openssl", "crl", "-in", workdir / "c.crl", "-noout", "-nextupdate")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"nextUpdate={end:%b %e %H:%M:%S %Y} GMT"
    # Clipped by the seconds since the CA was made, which days do not show: no warning (it
    # read "1825 days instead of 1825 days"), the CRL still ends with the CA.
    proc = _run(workdir, *"crl create --ca ca1 -o d.crl --next-update 1825D".split())
    assert (proc.returncode, proc.stderr) == (0, "")
    shown = run_tool("openssl", "crl", "-in", workdir / "d.crl", "-noout", "-nextupdate")
    assert shown.stdout.strip() == f"nextUpdate={end:%b %e %H:%M:%S %Y} GMT"


def test_rsa_pss_ca_key_is_refused_in_one_line(workdir: Path) -> None:
    # An openssl CA whose key is id-RSASSA-PSS may make PSS signatures only; certctl signs
    # with PKCS#1 v1.5, and openssl verify then found no issuer for what it signed (error
    # 20). Import and every command that signs now refuse it and write nothing.
    (workdir / "pss").mkdir()
    made = run_tool("openssl", "req", "-x509", "-newkey", "rsa-pss", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-nodes", "-keyout", "pss/ca.key", "-out", "pss/ca.crt",
                    "-subj", "/CN=PSS Root", "-days", "30", cwd=workdir)  # fmt: skip
    assert made.returncode == 0, made.stderr
    message = (
        "CA key is an RSA-PSS key (id-RSASSA-PSS), which certctl cannot sign with: "
        "use an RSA (rsaEncryption), EC or Ed25519 CA key"
    )
    before = _snapshot(workdir)
    for argv, prefix in (
        ("ca import -o imp --cert pss/ca.crt --key pss/ca.key", "pss/ca.crt: "),
        ("cert issue --ca pss -o leaf --cn a.example --dns a.example", "pss: "),
        ("ca create --parent pss -o inter --cn Inter", "pss: "),
        ("crl create --ca pss -o c.crl", "pss: "),
    ):
        proc = _run(workdir, *argv.split())
        assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
        assert proc.stderr == f"certctl: error: {prefix}{message}\n"
        assert _snapshot(workdir) == before


def test_import_of_an_intermediate_without_its_root_warns(workdir: Path) -> None:
    # An intermediate imported alone makes itself the ca.crt of what it issues, which
    # openssl verify (and Python's ssl) refuse as a CA file: before, not a word was said.
    (workdir / "v3.ext").write_text(
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    openssl_req("root.key", "root.crt", "/CN=Corp Root", "-days", "30",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", x509=True,
                cwd=workdir)  # fmt: skip
    openssl_req("int.key", "int.csr", "/CN=Corp Issuing", cwd=workdir)
    made = run_tool("openssl", "x509", "-req", "-in", "int.csr", "-CA", "root.crt",
                    "-CAkey", "root.key", "-days", "20", "-extfile", "v3.ext",
                    "-out", "int.crt", cwd=workdir)  # fmt: skip
    assert made.returncode == 0, made.stderr
    proc = _run(workdir, *"ca import -o alone --cert int.crt --key int.key".split())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        "certctl: warning: CN=Corp Root, the issuer of CN=Corp Issuing, was not given: "
        "certificates issued from this CA get CN=Corp Issuing as ca.crt, which openssl verify "
        "and Python refuse (unable to get issuer certificate); give the chain up to the root "
        "in --cert (or in the PKCS#12)\n"
    )
    issued = _run(workdir, *"cert issue --ca alone -o leaf --cn a.example --dns a.example".split())
    assert issued.returncode == 0, issued.stderr
    # tls.crt holds the leaf and the intermediate, as nginx serves them.
    refused = run_tool("openssl", "verify", "-CAfile", "leaf/ca.crt", "-untrusted",
                       "leaf/tls.crt", "leaf/tls.crt", cwd=workdir)  # fmt: skip
    assert "unable to get issuer certificate" in refused.stdout + refused.stderr
    # Its twin with the chain: no warning, the root as ca.crt, and openssl verify agrees.
    (workdir / "chain.crt").write_text(
        (workdir / "int.crt").read_text() + (workdir / "root.crt").read_text()
    )
    proc = _run(workdir, *"ca import -o full --cert chain.crt --key int.key".split())
    assert (proc.returncode, proc.stderr) == (0, "")
    issued = _run(workdir, *"cert issue --ca full -o leaf2 --cn a.example --dns a.example".split())
    assert issued.returncode == 0, issued.stderr
    verified = run_tool("openssl", "verify", "-x509_strict", "-CAfile", "leaf2/ca.crt",
                        "-untrusted", "leaf2/tls.crt", "leaf2/tls.crt", cwd=workdir)  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_crl_from_help_says_the_same_file_needs_force(workdir: Path) -> None:
    # The help said "--from … (it may be the --out file)", and that run was refused with
    # "already exists; use --force": the help now says so, and both behave as it says.
    helped = " ".join(_run(workdir, "crl", "create", "--help").stdout.split())
    assert "(it may be the --out file, with --force)" in helped
    assert _run(workdir, *"crl create --ca ca1 -o c.crl --revoked 0x12".split()).returncode == 0
    again = "crl create --ca ca1 -o c.crl --from c.crl --revoked 0x34".split()
    refused = _run(workdir, *again)
    assert (refused.returncode, refused.stderr) == (
        1,
        "certctl: error: c.crl already exists; use --force to overwrite\n",
    )
    done = _run(workdir, *again, "--force")
    assert done.returncode == 0, done.stderr
    assert "2 revoked serials (1 kept from c.crl, 1 new)" in done.stdout


@pytest.mark.parametrize(
    ("revoked", "said"), [([], "0 revoked serials"), (["--revoked", "0x12"], "1 revoked serial")]
)
def test_crl_create_counts_serials_in_words(workdir: Path, revoked: list[str], said: str) -> None:
    # It said "1 revoked serial(s)".
    done = _run(workdir, *"crl create --ca ca1 -o c.crl".split(), *revoked)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote CRL with {said} to c.crl, next update ")


def test_the_clis_rewording_keeps_what_password_required_says_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # read_material names the file, inspect names the variables: rebuilt as type(exc)(…),
    # the error said pkcs12=False of a PKCS#12 file, and a caller choosing between
    # `openssl pkcs12` and `openssl pkey` (as the services do) chose wrong.
    from certctl.cli._common import read_material
    from certctl.cli.inspect import read_protected
    from certctl.errors import PasswordRequired

    for name in ("CERTCTL_PASSWORD", "CERTCTL_CA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    key = generate_private_key()
    root = create_root_ca(
        key, common_name_dn("P12 Root"), validity=timedelta(days=30), now=datetime.now(UTC)
    ).certificate
    p12 = tmp_path / "ca.p12"
    p12.write_bytes(to_pkcs12("ca", key, root, [], b"hunter2pw"))
    pem = tmp_path / "ca.key"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"hunter2pw"),
        )
    )
    for path, is_pkcs12 in ((p12, True), (pem, False)):
        with pytest.raises(PasswordRequired) as material:
            read_material(path)
        with pytest.raises(PasswordRequired) as protected:
            read_protected(path, None, None)
        for caught in (material, protected):
            assert caught.value.detail.startswith(f"{path}: "), caught.value.detail
            assert caught.value.pkcs12 is is_pkcs12, (path, caught.value.detail)
