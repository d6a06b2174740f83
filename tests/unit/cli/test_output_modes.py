"""Offline outputs: directories never world-writable, dangling symlinks, signals while writing."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests._tools import ok, reaped, require, run


def _certctl_umask0(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("certctl"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0),
        check=False,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_output_directories_under_umask_000_are_0755(tmp_path: Path) -> None:
    ok(_certctl_umask0("ca", "create", "--out", tmp_path / "ca"))
    ok(_certctl_umask0("cert", "issue", "--ca", tmp_path / "ca", "--cn", "web", "--dns", "web",
                       "--out", tmp_path / "deep" / "web"))  # fmt: skip
    for directory in (tmp_path / "ca", tmp_path / "deep", tmp_path / "deep" / "web"):
        assert _mode(directory) == 0o755, directory
    assert _mode(tmp_path / "deep" / "web" / "tls.key") == 0o600
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600


def test_a_dangling_symlink_at_an_output_needs_force(tmp_path: Path) -> None:
    ok(_certctl_umask0("ca", "create", "--out", tmp_path / "ca"))
    out = tmp_path / "web"
    out.mkdir()
    (out / "tls.key").symlink_to(tmp_path / "nowhere")
    args = ("cert", "issue", "--ca", tmp_path / "ca", "--cn", "web", "--dns", "web", "--out", out)
    refused = _certctl_umask0(*args)
    assert refused.returncode == 1
    assert "tls.key already exists; use --force to overwrite" in refused.stderr
    assert (out / "tls.key").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["tls.key"]  # nothing written
    ok(_certctl_umask0(*args, "--force"))
    assert not (out / "tls.key").is_symlink()
    assert not (tmp_path / "nowhere").exists()  # replaced the link, wrote nothing through it


# Sends the process a real signal (SIGINT unless SIGNAL says) from inside its N-th rename
# (os.replace raises the "os.rename" audit event; without --force the files are linked into
# place, "os.link"): it lands at a chosen step of the commit.
_INTERRUPT_AT_RENAME = """
import os, signal, sys
renames = 0
def hook(event, args):
    global renames
    if event in ("os.rename", "os.link"):
        renames += 1
        if renames == int(os.environ["INTERRUPT_AT"]):
            os.kill(os.getpid(), getattr(signal, os.environ.get("SIGNAL", "SIGINT")))
sys.addaudithook(hook)
from certctl.cli.main import main
sys.argv[0] = "certctl"
main()
"""


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca") / "ca"
    ok(_certctl_umask0("ca", "create", "--out", directory))
    return directory


@pytest.mark.parametrize("at", [2, 4, 5])
def test_ctrl_c_while_committing_leaves_the_old_output(ca: Path, tmp_path: Path, at: int) -> None:
    # Three files over an existing output: three renames move the old files aside, three move
    # the new ones in. Before, Ctrl-C in between left the new private key in a .tmp file, the
    # old ones under .bak names, and tls.crt/tls.key missing (2, 4) or from two issues (5).
    out = tmp_path / "web"
    args = ("cert", "issue", "--ca", ca, "--cn", "web", "--dns", "web", "--out", out)
    ok(_certctl_umask0(*args))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    interrupted = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_AT_RENAME, *map(str, args), "--force"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "INTERRUPT_AT": str(at)},
        check=False,
    )
    assert (interrupted.returncode, interrupted.stderr) == (130, "certctl: error: interrupted\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGHUP", -1)])
def test_a_signal_while_committing_a_new_output_leaves_nothing(
    ca: Path, tmp_path: Path, name: str, status: int
) -> None:
    interrupted = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_AT_RENAME, "cert", "issue", "--ca", str(ca),
         "--cn", "web", "--dns", "web", "--out", str(tmp_path / "web")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "INTERRUPT_AT": "2", "SIGNAL": name}, check=False,
    )  # fmt: skip
    assert interrupted.returncode == status, interrupted.stderr
    assert list(tmp_path.iterdir()) == []  # no web/ and no .tmp file holding the new key


def test_sigterm_while_committing_rolls_back_then_ends_the_process(
    ca: Path, tmp_path: Path
) -> None:
    # `timeout`, systemd and CI runners stop a command with SIGTERM, which ended it at once:
    # before, the new key stayed in a .tmp file and the old files under .bak names, with
    # tls.crt and tls.key gone. Now the commit is rolled back and SIGTERM still ends it.
    out = tmp_path / "web"
    args = ("cert", "issue", "--ca", ca, "--cn", "web", "--dns", "web", "--out", out)
    ok(_certctl_umask0(*args))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    terminated = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_AT_RENAME, *map(str, args), "--force"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "INTERRUPT_AT": "4", "SIGNAL": "SIGTERM"},
        check=False,
    )
    assert terminated.returncode == -15, terminated.stderr  # killed by SIGTERM, as before
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_full_stdout_is_named_also_when_python_is_unbuffered(tmp_path: Path) -> None:
    # PYTHONUNBUFFERED=1 (common in container images) gave stdout no buffer: the failed write
    # left nothing to retry, the error could not be told from a file's, and `> /dev/full`
    # printed a bare "certctl: error: No space left on device".
    runs = []
    with open("/dev/full", "w") as full:
        for unbuffered in ("1", None):
            env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
            if unbuffered:
                env["PYTHONUNBUFFERED"] = unbuffered
            for args in (["--help"], ["ca", "create", "--out", str(tmp_path / f"ca{len(runs)}")]):
                argv = [require("certctl"), *args]
                runs.append(
                    subprocess.Popen(argv, env=env, stdout=full, stderr=subprocess.PIPE, text=True)
                )
    with reaped(runs):
        for proc in runs:
            _, err = proc.communicate(timeout=60)
            assert (proc.returncode, err) == (
                1,
                "certctl: error: cannot write to stdout: No space left on device\n",
            ), proc.args


def test_a_closed_stderr_changes_nothing_but_where_messages_go(ca: Path, tmp_path: Path) -> None:
    # `certctl … 2>&-` (a cron line, a daemon's child): Python's sys.stderr is None. Before,
    # a warning (a short validity) or a batch's progress check was an AttributeError, and
    # the error that reported it failed too: exit 1, nothing issued, nothing said. Now the
    # messages go nowhere, as with 2>/dev/null, and the exit status tells what happened.
    (tmp_path / "instances.yml").write_text("instances:\n  - name: n1\n    dns: [n1.example]\n")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "tls.crt").write_text("kept")
    issue = ("cert", "issue", "--ca", str(ca))
    cases = {
        "short": ((*issue, "--cn", "web", "--validity", "1D", "--out", "short"), 0),
        "batch": ((*issue, "--in", "instances.yml", "--pem", "--out", "b.zip"), 0),
        "exists": ((*issue, "--cn", "web", "--out", "taken"), 1),
    }
    runs = {
        name: subprocess.Popen(
            ["sh", "-c", 'exec "$@" 2>&-', "sh", require("certctl"), *argv],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        for name, (argv, _) in cases.items()
    }
    with reaped(runs.values()):
        ended = {name: run.wait(timeout=60) for name, run in runs.items()}
    assert ended == {name: code for name, (_, code) in cases.items()}
    assert sorted(p.name for p in (tmp_path / "short").iterdir()) == [
        "ca.crt",
        "tls.crt",
        "tls.key",
    ]
    assert (tmp_path / "b.zip").is_file()
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["tls.crt"]


def test_a_directory_called_zip_made_before_is_still_written_into(ca: Path, tmp_path: Path) -> None:
    # `cert issue --out app.zip` is refused now (only --in writes a zip); the app.zip
    # directory it made before is still written into, as scripts reissue into it.
    made = tmp_path / "app.zip"
    made.mkdir()
    ok(_certctl_umask0("cert", "issue", "--ca", ca, "--cn", "app", "--out", made))
    assert sorted(p.name for p in made.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    fresh = tmp_path / "new.zip"
    refused = _certctl_umask0("cert", "issue", "--ca", ca, "--cn", "app", "--out", fresh)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"certctl: error: --out {fresh}: only --in (a batch)")
    assert not fresh.exists()


def test_cert_issue_force_never_overwrites_a_key_waiting_for_its_csr(
    ca: Path, tmp_path: Path
) -> None:
    # `csr create --out web --force` over a live directory, then `cert issue --out web
    # --force` (for `csr sign`): the new key, never certified, was overwritten by another.
    web = tmp_path / "web"
    ok(_certctl_umask0("cert", "issue", "--ca", ca, "--cn", "web", "--out", web))
    ok(_certctl_umask0("csr", "create", "--cn", "web", "--out", web, "--force"))
    waiting = (web / "tls.key").read_bytes()
    refused = _certctl_umask0("cert", "issue", "--ca", ca, "--cn", "web", "--out", web, "--force")
    assert refused.returncode == 1
    sign = f"certctl csr sign --ca {ca} --csr {web / 'tls.csr'} --out {web} --force"
    assert refused.stderr.endswith(
        f"certctl: error: {web / 'tls.key'} is the key of {web / 'tls.csr'}, which has no "
        f"certificate yet: a new key and certificate in {web} would lose it (nothing was "
        f"written); '{sign}' signs the CSR, or give another --out\n"
    )
    assert (web / "tls.key").read_bytes() == waiting
    # The advice works; once signed, the key is no longer waiting and --force replaces it.
    ok(_certctl_umask0(*sign.split()[1:]))
    assert (web / "tls.key").read_bytes() == waiting
    ok(_certctl_umask0("cert", "issue", "--ca", ca, "--cn", "web", "--out", web, "--force"))
    assert (web / "tls.key").read_bytes() != waiting


@pytest.mark.parametrize("traditional", [False, True], ids=["pkcs8", "traditional"])
def test_cert_issue_force_never_overwrites_an_encrypted_key_beside_a_csr(
    ca: Path, tmp_path: Path, traditional: bool
) -> None:
    # `openssl req` without -nodes over a live directory writes an encrypted tls.key beside
    # its tls.csr. No password for it reaches cert issue (--password-file is tls.p12's), so
    # the key could not be compared with the CSR and --force overwrote it, never certified.
    web = tmp_path / "web"
    ok(_certctl_umask0("cert", "issue", "--ca", ca, "--cn", "web", "--out", web))
    key, csr = web / "tls.key", web / "tls.csr"
    ok(run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-keyout", key, "-out", csr, "-subj", "/CN=web",
           "-passout", "pass:hunter2pw"))  # fmt: skip
    if traditional:  # "Proc-Type: 4,ENCRYPTED", as `openssl ec -aes256` and older tools write
        ok(run("openssl", "pkey", "-in", key, "-passin", "pass:hunter2pw", "-traditional",
               "-aes256", "-passout", "pass:hunter2pw", "-out", tmp_path / "old.key"))  # fmt: skip
        (tmp_path / "old.key").replace(key)
        assert b"Proc-Type: 4,ENCRYPTED" in key.read_bytes()
    else:
        assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    waiting = key.read_bytes()
    sign = f"certctl csr sign --ca {ca} --csr {csr} --out {web} --force"
    for force in ((), ("--force",)):
        refused = _certctl_umask0("cert", "issue", "--ca", ca, "--cn", "web", "--out", web, *force)
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr == (
            f"certctl: error: {key} is encrypted and {csr} beside it has no certificate yet: "
            "taken for the CSR's key (not checked without its password), a new key and "
            f"certificate in {web} would lose it (nothing was written); '{sign}' signs the "
            f"CSR, or give another --out (if {key} is not the key of {csr}, move the CSR away)\n"
        )
        assert key.read_bytes() == waiting
    # The advice works; once signed, the key is no longer waiting and --force replaces it.
    ok(_certctl_umask0(*sign.split()[1:]))
    assert key.read_bytes() == waiting
    ok(_certctl_umask0("cert", "issue", "--ca", ca, "--cn", "web", "--out", web, "--force"))
    assert key.read_bytes() != waiting
    # A stale CSR beside the encrypted key of tls.crt: refused too, until the CSR is moved.
    ok(_certctl_umask0("csr", "create", "--cn", "old", "--out", tmp_path / "old"))
    (tmp_path / "old" / "tls.csr").rename(csr)
    ok(run("openssl", "pkey", "-in", key, "-aes256", "-passout", "pass:hunter2pw",
           "-out", tmp_path / "encrypted.key"))  # fmt: skip
    (tmp_path / "encrypted.key").replace(key)
    assert _certctl_umask0("cert", "issue", "--ca", ca, "--cn", "web", "--out", web,
                           "--force").returncode == 1  # fmt: skip
    csr.rename(tmp_path / "stale.csr")
    ok(_certctl_umask0("cert", "issue", "--ca", ca, "--cn", "web", "--out", web, "--force"))
