"""DESIGN.md section 6: exit 0 success, 1 failure, 2 usage error; errors are one line on stderr.

A usage error is a command line certctl cannot take: an unknown option, a value given on the
command line or in the variable standing for an option (CERTCTL_URL, CERTCTL_LISTEN …) that
does not parse, or options that do not go together. Before, click's own checks exited 2 and
certctl's (``--validity 9X``, ``--key-type``, a DN, an IP, ``CERTCTL_URL``) exited 1, as a
failure of the work does. The work failing (a file not found when read, a wrong password, a
certificate that does not verify, a server that cannot be reached, a config file with a bad
value) stays 1. Driven through the installed ``certctl``, as scripts see it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CERTCTL = Path(sys.executable).with_name("certctl")
# Nothing listens on the discard port: a client command that got as far as a request fails.
NOWHERE = "https://127.0.0.1:9"
CLIENT = {"CERTCTL_URL": NOWHERE, "CERTCTL_API_KEY": "ck_test"}

# (id, argv, extra environment)
USAGE_ERRORS: list[tuple[str, str | list[str], dict[str, str]]] = [
    # offline commands: values certctl parses itself
    ("ca-validity", "ca create --out new --validity 9X", {}),
    ("ca-key-type", "ca create --out new --key-type rsa-1024", {}),
    ("ca-subject", ["ca", "create", "--out", "new", "--subject", "CN=a,ZZ=b"], {}),
    ("ca-empty-cn", ["ca", "create", "--out", "new", "--cn", ""], {}),
    # cert issue runs without Typer when its options look plain: the same status that way
    ("issue-validity", "cert issue --ca ca --cn web --out new --validity 9X", {}),
    ("issue-profile", "cert issue --ca ca --cn web --out new --profile bogus", {}),
    ("issue-ip", "cert issue --ca ca --cn web --out new --ip 10.0.0.300", {}),
    (
        "issue-dns-spaces",
        [*"cert issue --ca ca --cn web --out new --dns".split(), "a.example b.example"],
        {},
    ),
    ("issue-crl-url", "cert issue --ca ca --cn web --out new --crl-url ftp://x/ca.crl", {}),
    ("issue-cn-and-subject", "cert issue --ca ca --cn a --subject CN=b --out new", {}),
    (
        "issue-empty-password",
        [*"cert issue --ca ca --cn w --out new --p12 --password".split(), ""],
        {},
    ),
    (
        "issue-password-variable",
        "cert issue --ca ca --cn w --out new --p12",
        {"CERTCTL_PASSWORD": "\udcff"},
    ),
    ("csr-key-type", "csr create --cn web --out new --key-type foo", {}),
    ("csr-email", "csr create --cn web --out new --email a@b@c", {}),
    # checked before the CSR file is looked for
    ("sign-validity", "csr sign --ca ca --csr missing.csr --out new --validity 9X", {}),
    ("crl-serial", "crl create --ca ca --out new.crl --revoked zz", {}),
    ("crl-next-update", "crl create --ca ca --out new.crl --next-update 9X", {}),
    ("http-dns", "http --non-interactive --out new.zip --pem --node es1 --dns es1=bad_name", {}),
    ("http-node", "http --non-interactive --out new.zip --pem --node a/b", {}),
    ("http-validity", "http --non-interactive --out new.zip --pem --node es1 --validity 9X", {}),
    ("verify-purpose", "verify --ca ca/ca.crt --purpose bogus ca/ca.crt", {}),
    ("verify-at", "verify --ca ca/ca.crt --at yesterday ca/ca.crt", {}),
    ("inspect-no-file", "inspect", {}),
    # client commands: checked before anything is sent (nothing listens at CERTCTL_URL)
    ("certs-limit", "certs list --limit 0", CLIENT),
    ("certs-status", "certs list --status bogus", CLIENT),
    ("certs-expiring", "certs list --expiring-within 9X", CLIENT),
    ("certs-issue-validity", "certs issue --cn web --validity 9X", CLIENT),
    ("certs-issue-ip", "certs issue --cn web --ip 1.2", CLIENT),
    ("certs-issue-key-type", "certs issue --cn web --key-type foo", CLIENT),
    ("certs-renew-validity", "certs renew c-1 --validity 9X", CLIENT),
    ("issuers-key-type", "issuers create ops --key-type foo", CLIENT),
    ("issuers-subject", "issuers create ops --subject garbage", CLIENT),
    ("revoke-reason", "certs revoke c-1 --reason cACompromise", CLIENT),
    ("issuer-revoke-reason", "issuers revoke ops --reason bogus", CLIENT),
    ("role-permission", "auth roles create r-ops -p cert.raed", CLIENT),
    ("audit-since", "audit list --since yesterday", CLIENT),
    ("audit-since-until", "audit list --since 2026-01-02 --until 2026-01-01", CLIENT),
    ("audit-limit", "audit list --limit 501", CLIENT),
    ("apikey-expiry", "auth apikeys create a1 --expires-at tomorrow", CLIENT),
    ("services-output", "services outputs s1 bogus", CLIENT),
    # the variables standing for options
    ("url", "certs list", CLIENT | {"CERTCTL_URL": "ftp://127.0.0.1"}),
    ("timeout", "certs list", CLIENT | {"CERTCTL_TIMEOUT": "soon"}),
    ("api-key", "auth whoami", CLIENT | {"CERTCTL_API_KEY": "Bearer ck_test"}),
    ("client-key-alone", "auth whoami", CLIENT | {"CERTCTL_CLIENT_KEY": "tls.key"}),
    # the server's flags and variables
    ("serve-listen", "serve --data-dir data --listen nonsense", {}),
    ("serve-workers", "serve --data-dir data --workers 0", {}),
    ("serve-variable", "serve --data-dir data", {"CERTCTL_LISTEN": "foo"}),
    ("serve-master-key", "serve --data-dir data", {"CERTCTL_MASTER_KEY": "not base64!"}),
    ("master-key-length", "admin-key --data-dir data", {"CERTCTL_MASTER_KEY": "c2hvcnQ="}),
    ("admin-key-out", "admin-key --data-dir data --out -", {}),
]

FAILURES: list[tuple[str, str | list[str], dict[str, str]]] = [
    ("inspect-missing", "inspect missing.pem", {}),
    ("sign-missing-csr", "csr sign --ca ca --csr missing.csr --out new", {}),
    ("issue-no-ca", "cert issue --ca nowhere --cn web --out new", {}),
    ("issue-out-exists", "cert issue --ca ca --cn web --out leaf", {}),
    ("verify-other-ca", "verify --ca other/ca.crt ca/ca.crt", {}),
    ("p12-wrong-password", "inspect leaf/tls.p12 --password-file wrong.pw", {}),
    # a password file's content is an input, not the command line
    (
        "password-file-empty",
        "cert issue --ca ca --cn w --out new --p12 --password-file empty.pw",
        {},
    ),
    ("server-unreachable", "certs list", CLIENT),
    ("ca-cert-missing", "certs list", CLIENT | {"CERTCTL_CA_CERT": "missing.pem"}),
    ("serve-config-value", "serve --data-dir data --config bad.yml", {}),
]


def _certctl(
    argv: str | list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    args = argv.split() if isinstance(argv, str) else argv
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    return subprocess.run(
        [str(CERTCTL), *args],
        cwd=cwd,
        env=clean | {"COLUMNS": "80"} | (env or {}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two CAs, a leaf in a PKCS#12 file, a wrong password, a config file with a bad value."""
    root = tmp_path_factory.mktemp("exit-status")
    (root / "right.pw").write_text("right horse battery\n")
    (root / "wrong.pw").write_text("wrong horse battery\n")
    (root / "empty.pw").write_text("")
    (root / "bad.yml").write_text("listen: foo\n")
    for argv in (
        "ca create --out ca --cn Exit-Status-CA",
        "ca create --out other --cn Other-CA",
        "cert issue --ca ca --cn web --out leaf --p12 --password-file right.pw",
    ):
        made = _certctl(argv, root)
        assert made.returncode == 0, made.stderr
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("certctl: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "env"), [c[1:] for c in USAGE_ERRORS], ids=[c[0] for c in USAGE_ERRORS]
)
def test_a_bad_command_line_is_a_usage_error(
    work: Path, argv: str | list[str], env: dict[str, str]
) -> None:
    before = _snapshot(work)
    proc = _certctl(argv, work, env)
    line = _one_error_line(proc)
    assert proc.returncode == 2, line
    assert "--help')" in line  # every usage error names the help to read, as click's own do
    assert _snapshot(work) == before  # refused before anything was written
    assert not (work / "data").exists()


@pytest.mark.parametrize(("argv", "env"), [c[1:] for c in FAILURES], ids=[c[0] for c in FAILURES])
def test_a_failure_of_the_work_exits_1(
    work: Path, argv: str | list[str], env: dict[str, str]
) -> None:
    before = _snapshot(work)
    proc = _certctl(argv, work, env)
    line = _one_error_line(proc)
    assert proc.returncode == 1, line
    assert "--help')" not in line
    assert _snapshot(work) == before


# Checked before sending by the server's own rules, yet without the server's layers: those
# modules (SQLAlchemy, the services) doubled these client commands' start-up (~0.3 s).
_LOADED = (
    "import sys\n"
    "from certctl.cli.main import run\n"
    "code = run(sys.argv[1:])\n"
    "print(code, sorted(m for m in ('sqlalchemy', 'certctl.services', 'certctl.store')"
    " if m in sys.modules))\n"
)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        ("certs revoke c-1 --reason keyCompromise", 1),
        ("certs revoke c-1 --reason keycompromise", 2),
        ("issuers revoke ops --reason cACompromise", 1),
        ("issuers revoke ops --reason bogus", 2),
        ("auth roles create r-ops -p cert.read", 1),
        ("auth roles update r-ops -p cert.raed", 2),
    ],
)
def test_a_client_command_checks_its_values_without_the_server_layers(
    tmp_path: Path, argv: str, code: int
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED, *argv.split()],
        cwd=tmp_path,
        env=clean | CLIENT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Refused (2) before a request, or sent to nothing listening (1): checked either way.
    assert proc.stdout.strip() == f"{code} []", proc.stderr


@pytest.mark.parametrize(
    ("status", "words"),
    [
        # As the server's 400 said it before the check moved to the CLI: the one meant first.
        ("Revoked", "Revoked: unknown status (did you mean revoked? active, expiring, "),
        ("expird", "expird: unknown status (did you mean expired? active, "),
        # `--status "$STATUS"` with the variable unset: said so, not ": unknown status".
        ("", "--status: empty (leave it out for no filter)"),
    ],
)
def test_an_unknown_status_names_the_one_meant(work: Path, status: str, words: str) -> None:
    proc = _certctl(["certs", "list", "--status", status], work, CLIENT)
    line = _one_error_line(proc)
    assert proc.returncode == 2, line
    assert words in line


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("certs list", "--expiring-within"),
        ("certs list", "--issuer"),
        *(
            ("audit list", option)
            for option in (
                "--actor",
                "--credential",
                "--action",
                "--outcome",
                "--target",
                "--since",
                "--until",
            )
        ),
    ],
)
def test_an_empty_filter_is_a_usage_error_as_an_empty_status(
    work: Path, command: str, option: str
) -> None:
    # `--actor "$WHO"` with the variable unset. Left to the server, it was its 400 (exit 1)
    # where --status "" was refused here (exit 2).
    proc = _certctl([*command.split(), option, ""], work, CLIENT)
    line = _one_error_line(proc)
    assert proc.returncode == 2, line
    assert f"{option}: empty (leave it out for no filter)" in line


@pytest.mark.parametrize(
    ("credential", "words"),
    [
        ("admin", "--credential admin: not a credential as the audit log writes one "),
        # A whole key pasted: its id named, its secret not shown.
        (
            "cctl_043f5b2d112743b8_CZnuDUPKOKDdDRSjZNOj2ZPOh5mwZ5WydGNiPXvtpXI",
            ": did you mean 'apikey 043f5b2d112743b8'?",
        ),
    ],
)
def test_a_credential_the_audit_log_never_writes_is_a_usage_error(
    work: Path, credential: str, words: str
) -> None:
    # The server's 400 said it (exit 1) after a request; the form is known here.
    proc = _certctl(["audit", "list", "--credential", credential], work, CLIENT)
    line = _one_error_line(proc)
    assert proc.returncode == 2, line
    assert words in line
    assert "CZnuDUPKOKDdDRSj" not in line
