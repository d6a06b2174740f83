"""``certctl cert issue --in``: the batch output, its Typer-free route, workers and zip writer."""

from __future__ import annotations

import io
import os
import signal
import stat
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certctl.cli import _forkpool, _issue, _storedzip, main
from certctl.cli.main import run
from tests._poll import wait_until
from tests._tools import ok
from tests._tools import run as run_tool


def _instances(path: Path, count: int, *, bad: int | None = None) -> Path:
    lines = ["instances:"]
    for i in range(count):
        # A 70-character name is a safe file name but too long for a CN (64).
        name = "n" * 70 if i == bad else f"node-{i:04d}"
        lines += [
            f"  - name: {name}",
            f"    dns: [node-{i:04d}.example.com]",
            f"    ip: [10.1.0.{i % 250}]",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca") / "ca"
    assert run(["ca", "create", "--out", str(directory), "--cn", "Batch Test CA"]) == 0
    return directory


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("CERTCTL_PASSWORD", "CERTCTL_CA_PASSWORD", "CERTCTL_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _typer_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_issue, "parse_fast_argv", lambda argv: None)


def _check_zip(path: Path, ca_dir: Path, count: int) -> zipfile.ZipFile:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    archive = zipfile.ZipFile(path)
    assert archive.testzip() is None
    names = archive.namelist()
    expected = [
        f"node-{i:04d}/{leaf}" for i in range(count) for leaf in ("tls.crt", "tls.key", "ca.crt")
    ]
    assert names == expected
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    for info in archive.infolist():
        assert info.compress_type == zipfile.ZIP_STORED
        mode = 0o600 if info.filename.endswith(".key") else 0o644
        assert info.external_attr >> 16 == stat.S_IFREG | mode
    leaf = x509.load_pem_x509_certificate(archive.read(f"node-{count - 1:04d}/tls.crt"))
    leaf.verify_directly_issued_by(ca_cert)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [f"node-{count - 1:04d}.example.com"]
    assert archive.read("node-0000/ca.crt") == (ca_dir / "ca.crt").read_bytes()
    return archive


@pytest.mark.parametrize("count", [3, 250])  # in-process, and forked workers (>= 200)
@pytest.mark.parametrize("route", ["fast", "typer"])
def test_zip_output(
    count: int,
    route: str,
    ca_dir: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if route == "typer":
        _typer_only(monkeypatch)
    instances = _instances(workdir / "in.yml", count)
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", str(instances), "--out", "c.zip"]
    assert run([*argv, "--pem"]) == 0
    out, err = capsys.readouterr()
    assert out == f"issued {count} certificates into zip c.zip\n"
    assert err == ""
    _check_zip(workdir / "c.zip", ca_dir, count)
    # Existing output: refused without --force, replaced with it.
    assert run([*argv, "--pem"]) == 1
    assert "c.zip already exists; use --force to overwrite" in capsys.readouterr().err
    assert run([*argv, "--force", "--pem"]) == 0


def test_one_instance_is_one_certificate(
    ca_dir: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    instances = _instances(workdir / "in.yml", 1)
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", str(instances), "--out", "certs"]
    assert run([*argv, "--pem"]) == 0
    assert capsys.readouterr().out == "issued 1 certificate into directory certs\n"


@pytest.mark.parametrize("count", [3, 250])
def test_directory_output(
    count: int, ca_dir: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    instances = _instances(workdir / "in.yml", count)
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", str(instances), "--out", "certs"]
    assert run([*argv, "--pem"]) == 0
    assert capsys.readouterr().out == f"issued {count} certificates into directory certs\n"
    folders = sorted(p.name for p in (workdir / "certs").iterdir())
    assert folders == [f"node-{i:04d}" for i in range(count)]
    for folder in (workdir / "certs").iterdir():
        assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
        assert stat.S_IMODE((folder / "tls.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((folder / "tls.crt").stat().st_mode) == 0o644


def test_directory_output_in_the_other_format_replaces_the_old_files(
    ca_dir: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, a batch re-run with --force as PKCS#12 over PEM folders (or back) left the old
    # tls.crt and tls.key beside each new node-N.p12, holding the replaced key.
    instances = _instances(workdir / "in.yml", 2)
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", str(instances), "--out", "certs"]
    assert run([*argv, "--pem"]) == 0
    capsys.readouterr()
    assert run([*argv, "--password", "s3cret-pw", "--force"]) == 0
    # Counted, as the files written are (before, the removal went without a word).
    assert capsys.readouterr().out == (
        "issued 2 certificates into directory certs\n"
        "  removed 4 PEM files of an earlier run (the other format)\n"
    )
    for i in range(2):
        folder = workdir / "certs" / f"node-{i:04d}"
        assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", f"node-{i:04d}.p12"]
    capsys.readouterr()
    before = {p: p.read_bytes() for p in (workdir / "certs").rglob("*") if p.is_file()}
    assert run([*argv, "--pem"]) == 1  # the keystores are in the way: --force, as to replace
    assert capsys.readouterr().err == (
        "certctl: error: certs/node-0000/node-0000.p12 already exists; use --force to overwrite\n"
    )
    assert {p: p.read_bytes() for p in (workdir / "certs").rglob("*") if p.is_file()} == before
    assert run([*argv, "--pem", "--force"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  removed 2 PKCS#12 files of an earlier run (the other format)"
    ]
    for i in range(2):
        folder = workdir / "certs" / f"node-{i:04d}"
        assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]


def test_distinguished_name_instance_as_openssl_reads_it(
    ca_dir: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The example of elasticsearch-certutil's documentation; the subject was
    # CN=CN=node5\\,OU=IT\\,DC=mydomain\\,DC=com before.
    (workdir / "in.yml").write_text(
        'instances:\n  - name: "CN=node5,OU=IT,DC=mydomain,DC=com"\n    filename: "node5"\n'
    )
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", "in.yml", "--out", "certs", "--pem"]
    assert run(argv) == 0, capsys.readouterr().err
    shown = ok(
        run_tool(
            "openssl",
            "x509",
            "-in",
            workdir / "certs/node5/tls.crt",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
            "-ext",
            "subjectAltName",
        )
    ).stdout
    assert "subject=CN=node5,OU=IT,DC=mydomain,DC=com\n" in shown
    assert "DNS:node5" in shown  # the CN of a server certificate without names, as before


def test_routes_agree_on_pkcs12(
    ca_dir: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    instances = _instances(workdir / "in.yml", 2)
    monkeypatch.setenv("CERTCTL_PASSWORD", "secret")
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", str(instances)]
    assert run([*argv, "--out", "fast.zip"]) == 0
    _typer_only(monkeypatch)
    assert run([*argv, "--out", "typer.zip"]) == 0
    listings = [
        [(i.filename, i.external_attr) for i in zipfile.ZipFile(workdir / name).infolist()]
        for name in ("fast.zip", "typer.zip")
    ]
    assert listings[0] == listings[1]
    assert listings[0][0] == ("node-0000/node-0000.p12", (stat.S_IFREG | 0o600) << 16)


def test_routes_agree_on_crl_and_ca_issuers_urls(
    ca_dir: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both the Typer-free route and Typer read the repeatable URL options, a repeat once.
    urls = ["http://pki.example.com/ca.der", "https://pki.example.com/ca.der"]
    argv = ["cert", "issue", "--ca", str(ca_dir), "--cn", "web.example.com"]
    argv += ["--crl-url", "http://pki.example.com/ca.crl"]
    argv += [arg for url in [*urls, urls[0]] for arg in ("--ca-issuers-url", url)]
    assert run([*argv, "--out", "fast"]) == 0
    _typer_only(monkeypatch)
    assert run([*argv, "--out", "typer"]) == 0
    capsys.readouterr()
    for name in ("fast", "typer"):
        cert = x509.load_pem_x509_certificate((workdir / name / "tls.crt").read_bytes())
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
        assert [d.access_location.value for d in aia.value] == urls, name
        assert cert.extensions.get_extension_for_class(x509.CRLDistributionPoints), name


def test_warnings_are_printed_once(
    ca_dir: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    instances = _instances(workdir / "in.yml", 220)
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", str(instances), "--out", "c.zip"]
    assert run([*argv, "--pem", "--validity", "30D"]) == 0
    err = capsys.readouterr().err
    assert err == "certctl: warning: certificate lifetime 30D is under 60 days; plan its renewal\n"


@pytest.mark.parametrize("count", [5, 300])
def test_worker_error_is_reported_and_nothing_written(
    count: int, ca_dir: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    instances = _instances(workdir / "in.yml", count, bad=count - 3)
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", str(instances), "--pem"]
    for out in ("c.zip", "certs"):
        assert run([*argv, "--out", out]) == 1
        err = capsys.readouterr().err
        assert err == f"certctl: error: {'n' * 70}: common name is longer than 64 characters\n"
        assert not (workdir / out).exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["cert", "issue", "--ca", "ca", "--in", "x.yml", "--out", "o.zip", "--pem"],
        ["cert", "issue", "--ca=ca", "--in=x.yml", "-o", "o.zip", "--pem", "--force"],
        [
            "cert",
            "issue",
            "--ca",
            "ca",
            "--cn",
            "web",
            "--dns",
            "a.example",
            "--dns",
            "b",
            "-o",
            "o",
        ],
    ],
)
def test_fast_route_reads_plain_options(argv: list[str]) -> None:
    options = _issue.parse_fast_argv(argv)
    assert options is not None
    assert options.ca_dir == Path("ca")


@pytest.mark.parametrize(
    "argv",
    [
        ["cert", "issue", "--help"],
        ["cert", "issue", "-h", "--ca", "ca", "--out", "o"],
        ["cert", "issue", "--ca", "ca"],  # no --out: Typer reports the missing option
        ["cert", "issue", "--ca", "ca", "--out", "o", "--out", "p"],
        ["cert", "issue", "--ca", "ca", "--out", "o", "--pem", "--pem"],
        ["cert", "issue", "--ca", "ca", "--out", "o", "--pem=yes"],
        ["cert", "issue", "--ca", "ca", "--out", "o", "--cn"],
        ["cert", "issue", "--ca", "ca", "--out", "o", "--cn", "--pem"],
        ["cert", "issue", "--ca", "ca", "--out", "o", "--cn", ""],
        ["cert", "issue", "--ca", "ca", "--out", "o", "--dns=-bad"],
        ["cert", "issue", "--ca", "ca", "-oo"],
        ["cert", "issue", "--ca", "ca", "--out", "o", "--", "x"],
        ["cert", "issue", "--ca", "ca", "--out", "o", "extra"],
        ["cert", "issue", "--ca", "ca", "--out", "o", "--hostname", "x"],
        ["--version"],
        ["cert", "--ca", "ca", "--out", "o"],
        ["csr", "issue", "--ca", "ca", "--out", "o"],
    ],
)
def test_fast_route_leaves_the_rest_to_typer(argv: list[str]) -> None:
    assert _issue.parse_fast_argv(argv) is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pem", "--cn", "x"], "--in takes names from the file"),
        ([], "PKCS#12 output needs a password"),
        (["--pem", "--profile", "intermediate"], "Invalid value for --profile: use 'certctl"),
    ],
)
def test_usage_problems_read_as_typer_words_them(
    extra: list[str],
    message: str,
    ca_dir: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    instances = _instances(workdir / "in.yml", 2)
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", str(instances), "--out", "c.zip"]
    results = []
    for route in ("fast", "typer"):
        if route == "typer":
            _typer_only(monkeypatch)
        code = run([*argv, *extra])
        results.append((code, capsys.readouterr().err))
    assert results[0] == results[1]
    code, err = results[0]
    assert code == 2
    assert err.startswith(f"certctl: error: {message}")
    assert err.endswith("(see 'certctl cert issue --help')\n")
    assert not (workdir / "c.zip").exists()


def test_console_script_batch(ca_dir: Path, workdir: Path) -> None:
    # The real entry point: the fast route ends with os._exit after flushing its output.
    script = Path(sys.executable).with_name("certctl")
    instances = _instances(workdir / "in.yml", 210)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", str(instances), "--out", "c.zip"]
    proc = subprocess.run(
        [str(script), *argv, "--pem", "--validity", "30D"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "issued 210 certificates into zip c.zip\n"
    assert proc.stderr == (
        "certctl: warning: certificate lifetime 30D is under 60 days; plan its renewal\n"
    )
    assert len(zipfile.ZipFile(workdir / "c.zip").namelist()) == 630


def test_app_is_still_reachable() -> None:
    assert main.app.info.name == "certctl"


# --- the worker pool ----------------------------------------------------------------------


def _square(index: int) -> int:
    return index * index


def _fail_at_7(index: int) -> int:
    if index == 7:
        raise ValueError("seven")
    return index


def _die_at_5(index: int) -> int:
    if index == 5:
        os._exit(3)
    return index


def test_fork_map_keeps_order() -> None:
    assert list(_forkpool.fork_map(_square, 50, 2)) == [i * i for i in range(50)]
    assert list(_forkpool.fork_map(_square, 0, 2)) == []


def test_fork_map_raises_after_the_results_before_it() -> None:
    results = _forkpool.fork_map(_fail_at_7, 20, 2)
    assert [next(results) for _ in range(7)] == list(range(7))
    with pytest.raises(ValueError, match="seven") as info:
        next(results)
    assert "_fail_at_7" in str(info.value.__cause__)  # the worker's traceback


def test_fork_map_reports_a_dead_worker() -> None:
    with pytest.raises(_forkpool.WorkerLost):
        list(_forkpool.fork_map(_die_at_5, 20, 2))


def test_fork_map_reaps_workers_when_closed_early(monkeypatch: pytest.MonkeyPatch) -> None:
    pids: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    results = _forkpool.fork_map(_square, 200, 2)
    assert next(results) == 0
    results.close()
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ChildProcessError):  # already reaped
            os.waitpid(pid, os.WNOHANG)


def _sleep(index: int) -> int:
    time.sleep(60)
    return index


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no longer does: an orphan may wait for a reaper)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_fork_map_workers_end_with_their_parent() -> None:
    # `kill PID` (SIGTERM) or the OOM killer ends the batch's process without its finally:
    # before, its workers went on signing the rest of their chunk, orphaned, minutes of CPU
    # with RSA-4096 keys. Here the parent dies by SIGKILL, which no handler can catch.
    read_end, write_end = os.pipe()
    parent = os.fork()
    if parent == 0:  # pragma: no cover - the stand-in for the batch's process
        try:
            os.close(read_end)
            real_fork = os.fork

            def fork() -> int:
                pid = real_fork()
                if pid:
                    os.write(write_end, struct.pack("<i", pid))
                return pid

            os.fork = fork  # type: ignore[assignment]
            list(_forkpool.fork_map(_sleep, 4, 2))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pids_pipe:
        workers = [struct.unpack("<i", pids_pipe.read(4))[0] for _ in range(2)]
    assert all(_running(pid) for pid in workers)
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    wait_until(lambda: not any(map(_running, workers)), "the workers to end with it", 5)


# --- the stored zip writer ----------------------------------------------------------------

_STAMP = (2026, 3, 14, 15, 9, 27)


def _files(count: int) -> Iterator[tuple[str, bytes, int]]:
    for i in range(count):
        mode = 0o100600 if i % 3 == 1 else 0o100644
        name = f"node-{i}/tls.{i % 3}" if i % 5 else f"nœud-{i}/clé"
        yield name, os.urandom(i % 7) * (i % 40), mode


def _with_zipfile(files: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data, mode in files:
            info = zipfile.ZipInfo(name, date_time=_STAMP)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def _with_storedzip(files: list[tuple[str, bytes, int]], per_blob: int) -> bytes:
    archive = _storedzip.StoredZip(_storedzip.dos_stamp(_STAMP))
    for start in range(0, len(files), per_blob):
        parts, entries, offset = [], [], 0
        for name, data, mode in files[start : start + per_blob]:
            blob, entry = _storedzip.local_entry(
                name, data, mode, _storedzip.dos_stamp(_STAMP), offset
            )
            parts.append(blob)
            entries.append(entry)
            offset += len(blob)
        archive.add(b"".join(parts), entries)
    return archive.getvalue()


@pytest.mark.parametrize("count", [0, 1, 40])
def test_stored_zip_is_what_zipfile_writes(count: int) -> None:
    files = list(_files(count))
    assert _with_storedzip(files, 7) == _with_zipfile(files)


def test_stored_zip_zip64_records_match_zipfile(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past 2 GiB of offsets or 65,535 entries zipfile switches to ZIP64 records; shrink both
    # limits (in both writers) to compare those records without writing gigabytes.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 3000)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 20)
    monkeypatch.setattr(_storedzip, "_ZIP64_LIMIT", 3000)
    monkeypatch.setattr(_storedzip, "_FILECOUNT_LIMIT", 20)
    files = [(f"f{i}", bytes(100), 0o100644) for i in range(40)]
    expected = _with_zipfile(files)
    assert b"PK\006\006" in expected
    assert _with_storedzip(files, 6) == expected
    assert zipfile.ZipFile(io.BytesIO(expected)).read("f39") == bytes(100)


def _children(pid: int) -> list[str]:
    """The pids of ``pid``'s child processes (Linux, /proc)."""
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def _maps_rust(pid: int) -> bool:
    """Whether cryptography's compiled module is loaded in process ``pid`` (Linux, /proc)."""
    return "_rust.abi3.so" in Path(f"/proc/{pid}/maps").read_text()


def test_console_script_batch_interrupted(ca_dir: Path, workdir: Path) -> None:
    # Ctrl-C on the Typer-free route: one line and status 130, as the Typer route gives
    # (before: status 130 and not a word); nothing is written.
    script = Path(sys.executable).with_name("certctl")
    instances = _instances(workdir / "in.yml", 400)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    argv = ["cert", "issue", "--ca", str(ca_dir), "--in", str(instances), "--out", "c.zip"]
    with subprocess.Popen(
        [str(script), *argv, "--pem", "--key-type", "rsa-4096"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        # In the middle of the batch (400 RSA-4096 keys take seconds): its forked workers
        # sign (from 200 certificates, on two cores or more), else, on one core, it signs
        # in-process once cryptography is loaded (inside the command, past its start-up).
        if (os.cpu_count() or 1) >= 2:
            wait_until(lambda: bool(_children(proc.pid)), "the batch's forked workers", 30)
        else:
            wait_until(lambda: _maps_rust(proc.pid), "cryptography loaded by the batch", 30)
        assert proc.poll() is None, "the batch ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (130, "", "certctl: error: interrupted\n")
    assert not (workdir / "c.zip").exists()
