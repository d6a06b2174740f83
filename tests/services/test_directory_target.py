"""Directory target: atomic bundle swap, versions kept and pruned, modes, reload, PKCS#12."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from certctl.pki import keys_match, load_private_key
from certctl.services import service_clients, service_schedule, service_specs, service_status
from certctl.store.models import ManagedService
from certctl.targets.directory import BundleFile, DeliveryError, deliver_to_directory
from tests._tools import ok, run
from tests.services.conftest import Env, make_ca, make_leaf, service_doc, write_secret

MINUTE = timedelta(minutes=1)


def _versions(target: Path) -> list[str]:
    # Not ".service", the name of the service whose versions they are.
    versions = target.parent / f".{target.name}.certctl"
    return sorted(p.name for p in versions.iterdir() if p.name != ".service")


def _renew(env: Env, name: str) -> None:
    service_specs.request_renewal(env.services, env.admin, name)
    env.reconcile(name, env.now + MINUTE)


def test_bundle_swapped_atomically_previous_kept_older_pruned(env: Env) -> None:
    target = env.tmp / "etc" / "web" / "tls"
    target.parent.mkdir(parents=True)
    target.mkdir()  # an empty placeholder directory is taken over
    env.put(service_doc("web", client_auth=True, targets=[{"directory": str(target)}]))
    service_clients.add_client(
        env.services, env.admin, "web", make_ca("clients", env.now).cert_pem.decode()
    )
    env.reconcile("web")

    assert target.is_symlink()
    first = os.readlink(target)
    assert not os.path.isabs(first)  # relative: the tree can be moved or bind-mounted
    assert first.startswith(".tls.certctl/")
    assert sorted(p.name for p in target.iterdir()) == [
        "ca.crt", "client-trust.crt", "tls.crt", "tls.key"
    ]  # fmt: skip
    outputs = env.outputs("web")
    assert (target / "tls.crt").read_bytes() == outputs["certs-internal"]["tls.crt"]
    assert (target / "tls.key").read_bytes() == outputs["certs-internal"]["tls.key"]
    assert (target / "ca.crt").read_bytes() == outputs["certs-internal"]["ca.crt"]
    assert (target / "client-trust.crt").read_bytes() == outputs["client-trust"]["ca.crt"]
    assert stat.S_IMODE((target / "tls.key").stat().st_mode) == 0o600
    for public in ("tls.crt", "ca.crt", "client-trust.crt"):
        assert stat.S_IMODE((target / public).stat().st_mode) == 0o644
    first_files = {p.name: p.read_bytes() for p in target.iterdir()}

    _renew(env, "web")
    second = os.readlink(target)
    assert second != first
    assert _versions(target) == sorted([Path(first).name, Path(second).name])
    # The previous version is intact for readers that opened it just before the swap.
    old = target.parent / first
    assert {p.name: p.read_bytes() for p in old.iterdir()} == first_files

    _renew(env, "web")
    third = os.readlink(target)
    assert _versions(target) == sorted([Path(second).name, Path(third).name])  # first pruned
    assert not old.exists()
    leaf = x509.load_pem_x509_certificate((target / "tls.crt").read_bytes())
    assert keys_match(load_private_key((target / "tls.key").read_bytes()), leaf)

    # Nothing changed: nothing rewritten.
    env.reconcile("web", env.now + MINUTE)
    assert os.readlink(target) == third


def test_readers_never_see_a_mixed_or_partial_set(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    ca = make_ca("ca", now)
    leaves = [make_leaf(ca, f"v{i}", now) for i in range(4)]
    target = tmp_path / "tls"
    deliver_to_directory(
        target,
        {"tls.crt": BundleFile(leaves[0].cert_pem), "tls.key": BundleFile(leaves[0].key_pem, True)},
    )
    stop = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            # A consistent reader resolves the link once, then reads the whole set from it.
            version = Path(os.path.realpath(target))
            try:
                cert = x509.load_pem_x509_certificate((version / "tls.crt").read_bytes())
                key = load_private_key((version / "tls.key").read_bytes())
            except FileNotFoundError:
                continue  # pruned two swaps later: resolve again
            except Exception as exc:
                problems.append(f"{version.name}: {exc!r}")
                continue
            if not keys_match(key, cert):
                problems.append(f"{version.name}: key and certificate differ")
            seen.append(version.name)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            leaf = leaves[i % len(leaves)]
            deliver_to_directory(
                target,
                {"tls.crt": BundleFile(leaf.cert_pem), "tls.key": BundleFile(leaf.key_pem, True)},
            )
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not problems, problems[:5]
    assert len(set(seen)) > 1  # the reader did see several versions
    assert len(_versions(target)) == 2


def test_the_swap_is_synced_before_delivery_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The files and the version directory were synced, but not the versions directory
    # holding the new version's entry, nor the parent holding the swapped link: a power cut
    # after "delivered" (and the reload) could bring the host back with the old key, or a
    # link to a version that no longer exists.
    target = tmp_path / "tls"  # a first delivery: the link exists once swapped in
    synced: list[tuple[str, bool]] = []  # (what was synced, whether the link was there)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), target.is_symlink()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    deliver_to_directory(target, {"tls.key": BundleFile(b"key", True)})
    versions = str(tmp_path / ".tls.certctl")
    assert (versions, False) in synced  # the new version's entry, before the link names it
    assert synced[-1] == (str(tmp_path), True)  # the link itself, once swapped


def test_unmanaged_directory_is_refused_and_reported(env: Env) -> None:
    target = env.tmp / "tls"
    target.mkdir()
    (target / "tls.crt").write_bytes(b"hand-made\n")
    env.put(service_doc("web", targets=[{"directory": str(target)}]))
    row = env.reconcile("web")
    assert row.conditions["Failed"]["status"] is True
    assert (
        "is not managed by certctl (expected a symlink); move it away"
        in (row.conditions["Failed"]["message"])
    )
    assert (target / "tls.crt").read_bytes() == b"hand-made\n"
    assert row.next_attempt_at is not None
    with pytest.raises(DeliveryError, match="not managed by certctl"):
        deliver_to_directory(target, {"x": BundleFile(b"")})


def test_a_symlink_certctl_did_not_make_is_refused_and_kept(env: Env) -> None:
    theirs = env.tmp / "their-certs"
    theirs.mkdir()
    (theirs / "tls.crt").write_bytes(b"theirs\n")
    target = env.tmp / "tls"
    target.symlink_to(theirs)
    env.put(service_doc("web", targets=[{"directory": str(target)}]))
    row = env.reconcile("web")
    assert "is a symlink certctl did not make" in row.conditions["Failed"]["message"]
    assert os.readlink(target) == str(theirs)
    assert (target / "tls.crt").read_bytes() == b"theirs\n"
    # Disabling TLS removes only what certctl made: their link stays.
    env.put(service_doc("web", disabled=True, targets=[{"directory": str(target)}]))
    env.reconcile("web", env.now + MINUTE)
    assert os.readlink(target) == str(theirs)
    # Negative twin: a link certctl made is replaced on the next delivery.
    target.unlink()
    env.put(service_doc("web", targets=[{"directory": str(target)}]))
    row = env.reconcile("web", env.now + 2 * MINUTE)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    first = os.readlink(target)
    _renew(env, "web")
    assert os.readlink(target) != first


def test_key_owner_and_group(env: Env) -> None:
    nobody = pwd.getpwnam("nobody")
    if os.geteuid() != 0:
        pytest.fail("chown to another user needs root: run the suite as root", pytrace=False)
    target = env.tmp / "tls"
    env.put(
        service_doc(
            "web",
            targets=[{"directory": str(target), "owner": "nobody", "group": nobody.pw_gid}],
        )
    )
    env.reconcile("web")
    key = (target / "tls.key").stat()
    assert (key.st_uid, key.st_gid, stat.S_IMODE(key.st_mode)) == (
        nobody.pw_uid,
        nobody.pw_gid,
        0o640,  # given to a group: that group reads it
    )
    assert (target / "tls.crt").stat().st_uid == 0  # public files stay the writer's
    env.put(service_doc("bad", targets=[{"directory": str(env.tmp / "b"), "owner": "no-such-u"}]))
    row = env.reconcile("bad")
    assert "user 'no-such-u' does not exist on this host" in row.conditions["Failed"]["message"]


def _read_as(user: str, group: str, path: Path) -> bool:
    """Whether ``user`` with only ``group`` can read ``path`` (a real process, setpriv)."""
    result = run("setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups",
                 "cat", path)  # fmt: skip
    return result.returncode == 0


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="certctl-targets-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_key_given_to_a_group_is_readable_by_that_group_only(env: Env, public_dir: Path) -> None:
    # `group: ssl-cert` (Debian's root:ssl-cert 0640) or the service's own group: the key was
    # chowned to the group but left 0600, so nobody in that group could read it.
    if os.geteuid() != 0:
        pytest.fail("chown to another group needs root: run the suite as root", pytrace=False)
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    target = public_dir / "tls"
    doc = service_doc("web", targets=[{"directory": str(target), "group": group}])
    env.put(doc)
    env.reconcile("web")
    key = target / "tls.key"
    assert (key.stat().st_uid, key.stat().st_gid) == (0, nobody.pw_gid)
    assert stat.S_IMODE(key.stat().st_mode) == 0o640
    assert _read_as("nobody", group, key)
    # Without a group it stays the owner's alone.
    owned = public_dir / "owned"
    env.put(service_doc("own", targets=[{"directory": str(owned), "owner": "nobody"}]))
    env.reconcile("own")
    assert stat.S_IMODE((owned / "tls.key").stat().st_mode) == 0o600
    assert _read_as("nobody", group, owned / "tls.key")  # its owner
    assert not _read_as("daemon", "daemon", owned / "tls.key")

    # A target delivered before (0600, its digest without the key mode) is delivered again.
    os.chmod(key, 0o600)
    internal = env.outputs("web")["certs-internal"]
    files = {
        "tls.crt": internal["tls.crt"],
        "tls.key": internal["tls.key"],
        "ca.crt": internal["ca.crt"],
    }
    old = hashlib.sha256(b"".join(n.encode() + d for n, d in sorted(files.items())))
    old.update(f"\0settings\0pem\0None\0{group}".encode())
    with env.services.sessions.begin() as session:
        row = session.get(ManagedService, "web")
        assert row is not None
        row.delivered = {f"dir:{target}": old.hexdigest()}
    env.reconcile("web", env.now + service_schedule.RESYNC_INTERVAL)
    assert stat.S_IMODE(key.stat().st_mode) == 0o640
    assert _read_as("nobody", group, key)


def test_a_read_only_target_fails_with_the_same_message_on_each_retry(env: Env) -> None:
    # The file system under a target went read-only (remounted after an I/O error, a
    # read-only volume). The message named the version directory it could not make, a new
    # timestamp at each try: the status changed every retry, and so "failed" was sent again.
    if os.geteuid() != 0:
        pytest.fail("mounting a read-only tmpfs needs root: run the suite as root", pytrace=False)
    mount = env.tmp / "mnt"
    mount.mkdir()
    ok(run("mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", mount))
    try:
        target = mount / "tls"
        env.put(service_doc("web", targets=[{"directory": str(target)}]))
        assert env.reconcile("web").conditions["Ready"]["status"] is True
        ok(run("mount", "-o", "remount,ro", mount))
        _renew(env, "web")
        messages = [env.row("web").conditions["Failed"]["message"]]
        for _ in range(2):
            retry_at = env.row("web").next_attempt_at
            assert retry_at is not None
            messages.append(env.reconcile("web", retry_at).conditions["Failed"]["message"])
        assert env.row("web").attempts == 3
    finally:
        if run("umount", mount).returncode != 0:
            ok(run("umount", "-l", mount))
    expected = (
        f"dir:{target}: cannot write {target} (new version in .tls.certctl): Read-only file system"
    )
    assert messages == [expected] * 3
    assert [e.event for e in env.events("web")] == ["issued", "renewed", "failed"]


def test_a_failing_nginx_reload_fails_with_the_same_message_on_each_retry(env: Env) -> None:
    # nginx is down (crashed, stopped) and logs to stderr (`error_log stderr`, as in many
    # containers): `nginx -s reload` fails, and its last line carries nginx's time and pid.
    # That line is in the Failed message, which so changed at each retry, and each retry
    # sent "failed" again.
    from tests._tools import require

    work = env.tmp / "nginx"
    work.mkdir()
    conf = work / "nginx.conf"
    conf.write_text(f"pid {work}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{}}\n")
    reload = f"{require('nginx')} -c {conf} -p {work}/ -e stderr -s reload"
    target = env.tmp / "tls"
    env.put(service_doc("web", targets=[{"directory": str(target), "reload": reload}]))
    messages = [env.reconcile("web").conditions["Failed"]["message"]]
    for _ in range(2):
        retry_at = env.row("web").next_attempt_at
        assert retry_at is not None
        messages.append(env.reconcile("web", retry_at).conditions["Failed"]["message"])
    expected = (
        f"dir:{target}: reload command exited 1: [error] open() "
        f'"{work}/nginx.pid" failed (2: No such file or directory)'
    )
    assert messages == [expected] * 3
    assert [e.event for e in env.events("web")] == ["issued", "failed"]


def test_a_failing_nginx_config_test_names_what_nginx_refused(env: Env) -> None:
    # The README's reload, `nginx -t && nginx -s reload`, with a configuration nginx refuses
    # (here a certificate it cannot load, as once TLS is disabled and the target removed):
    # nginx says why, then ends with "configuration file … test failed". The status showed
    # that last line only, which names no reason.
    from tests._tools import require

    nginx = require("nginx")
    work = env.tmp / "nginx"
    work.mkdir()
    missing = work / "missing" / "tls.crt"
    conf = work / "nginx.conf"
    conf.write_text(
        f"pid {work}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{ server {{ "
        f"listen 127.0.0.1:1 ssl; ssl_certificate {missing}; ssl_certificate_key {missing}; }} }}\n"
    )
    flags = f"-c {conf} -p {work}/ -e stderr"
    reload = f"sh -c '{nginx} -t {flags} && {nginx} -s reload {flags}'"
    target = env.tmp / "tls"
    env.put(service_doc("web", targets=[{"directory": str(target), "reload": reload}]))
    messages = [env.reconcile("web").conditions["Failed"]["message"]]
    retry_at = env.row("web").next_attempt_at
    assert retry_at is not None
    messages.append(env.reconcile("web", retry_at).conditions["Failed"]["message"])
    expected = f'dir:{target}: reload command exited 1: [emerg] cannot load certificate "{missing}"'
    assert messages[0].startswith(expected), messages[0]
    assert "test failed" not in messages[0]
    assert messages[1] == messages[0]  # nginx's time and pid left out: the same failure
    assert [e.event for e in env.events("web")] == ["issued", "failed"]


@pytest.mark.parametrize(
    ("last", "shown"),
    [
        (
            "[ALERT]    ($$) : config : Fatal errors found in configuration.",
            "[ALERT] config : Fatal errors found in configuration.",
        ),
        (
            "[ALERT] 337/$(date +%H%M%S) ($$) : Error(s) found in configuration file",
            "[ALERT] Error(s) found in configuration file",
        ),
    ],
    ids=["haproxy-2", "haproxy-1"],
)
def test_a_failing_haproxy_check_fails_with_the_same_message_on_each_retry(
    env: Env, last: str, shown: str
) -> None:
    # `haproxy -c -f haproxy.cfg && …` as the reload: a config haproxy refuses ends with
    # "[ALERT]    (<pid>) : config : Fatal errors found in configuration." (haproxy 2.6 on
    # Debian 12, its pid new at each run); 1.x writes "[ALERT] <day>/<time> (<pid>) : …".
    # The pid made each retry a new Failed message, and each sent "failed" again. The script
    # writes those lines with its own pid (haproxy is not among the test tools).
    reload = _script(
        env.tmp / "haproxy-check.sh",
        f'echo "[NOTICE]   ($$) : haproxy version is 2.6.12-1+deb12u4" >&2\necho "{last}" >&2\n'
        "exit 1",
    )
    target = env.tmp / "tls"
    env.put(service_doc("web", targets=[{"directory": str(target), "reload": str(reload)}]))
    messages = [env.reconcile("web").conditions["Failed"]["message"]]
    for _ in range(2):
        retry_at = env.row("web").next_attempt_at
        assert retry_at is not None
        messages.append(env.reconcile("web", retry_at).conditions["Failed"]["message"])
    assert messages == [f"dir:{target}: reload command exited 1: {shown}"] * 3
    assert [e.event for e in env.events("web")] == ["issued", "failed"]


def test_tls_disabled_with_a_failing_reload_is_failed_not_renewing(env: Env) -> None:
    # The server still reads the removed files (nginx -t fails) until it is switched to
    # plain HTTP: Failed, as the README says, but Renewing read True, on a service with
    # no certificate, no serial and nothing to renew.
    target = env.tmp / "tls"
    reload = f"sh -c 'test -e {target}/tls.crt || {{ echo no certificate >&2; exit 1; }}'"
    env.put(service_doc("web", targets=[{"directory": str(target), "reload": reload}]))
    assert env.reconcile("web").conditions["Ready"]["status"] is True
    env.put(
        service_doc("web", disabled=True, targets=[{"directory": str(target), "reload": reload}])
    )
    row = env.reconcile("web", env.now + MINUTE)
    assert not target.exists()
    assert row.serial is None
    assert row.conditions["Failed"]["status"] is True
    assert (
        row.conditions["Failed"]["message"]
        == f"dir:{target}: reload command exited 1: no certificate"
    )
    assert row.conditions["Renewing"]["status"] is False
    retry_at = row.next_attempt_at
    assert retry_at is not None
    row = env.reconcile("web", retry_at)
    assert (row.conditions["Failed"]["status"], row.conditions["Renewing"]["status"]) == (
        True,
        False,
    )


def test_a_failing_reload_shows_the_first_error_line_else_the_last_line(env: Env) -> None:
    from certctl.targets.directory import run_reload

    haproxy = _script(
        env.tmp / "haproxy-c.sh",
        'echo "[NOTICE]   ($$) : haproxy version is 2.6.12-1+deb12u4" >&2\n'
        'echo "[ALERT]    ($$) : config : parsing [/etc/haproxy/haproxy.cfg:3] : unknown '
        "keyword 'bind2' in 'frontend' section\" >&2\n"
        'echo "[ALERT]    ($$) : config : Fatal errors found in configuration." >&2\nexit 1',
    )
    with pytest.raises(DeliveryError) as info:
        run_reload(str(haproxy), 5)
    assert info.value.detail == (
        "reload command exited 1: [ALERT] config : parsing [/etc/haproxy/haproxy.cfg:3] : "
        "unknown keyword 'bind2' in 'frontend' section"
    )
    # A warning is no error: without an error line the last line is shown, as before.
    warned = _script(
        env.tmp / "warned.sh",
        'echo "nginx: [warn] the \\"ssl\\" directive is deprecated" >&2\necho "boom" >&2\nexit 2',
    )
    with pytest.raises(DeliveryError) as info:
        run_reload(str(warned), 5)
    assert info.value.detail == "reload command exited 2: boom"
    # Over 4 KiB of output: certctl keeps the tail, whose first line is cut at a point that
    # moves with what came before; not taken as the error line, so each retry says the same.
    long = _script(
        env.tmp / "long.sh",
        "printf 'x%.0s' $(seq 300); echo ' [error] cut short'\n"
        "for i in $(seq 38); do printf 'y%.0s' $(seq 99); echo; done\necho boom; exit 1",
    )
    with pytest.raises(DeliveryError) as info:
        run_reload(str(long), 5)
    assert info.value.detail == "reload command exited 1: boom"


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_reload_runs_after_each_change_only(env: Env) -> None:
    log = env.tmp / "reloads.log"
    hook = _script(env.tmp / "reload.sh", f'echo "reloaded $1 $(readlink "$2")" >> {log}')
    target = env.tmp / "tls"
    reload = f"{hook} web {target}"
    env.put(service_doc("web", targets=[{"directory": str(target), "reload": reload}]))
    env.reconcile("web")
    lines = log.read_text().splitlines()
    # The hook runs after the swap: it already sees the new version.
    assert lines == [f"reloaded web {os.readlink(target)}"]
    env.reconcile("web", env.now + MINUTE)  # nothing changed
    assert len(log.read_text().splitlines()) == 1
    _renew(env, "web")
    assert log.read_text().splitlines()[1:] == [f"reloaded web {os.readlink(target)}"]


def test_reload_timeout_fails_and_retries_with_backoff(env: Env) -> None:
    target = env.tmp / "tls"
    slow = {"directory": str(target), "reload": "sleep 5", "reloadTimeout": "1s"}
    env.put(service_doc("web", targets=[slow]))
    row = env.reconcile("web")
    message = f"dir:{target}: reload command timed out after 1s"
    assert row.conditions["Failed"] == {
        "status": True,
        "message": message,
        "at": env.now.isoformat(),
    }
    assert row.conditions["Ready"]["status"] is False
    assert row.attempts == 1
    assert row.next_attempt_at is not None
    first_delay = row.next_attempt_at - env.now
    assert not service_schedule.due(row, row.next_attempt_at - timedelta(seconds=1))
    assert service_schedule.due(row, row.next_attempt_at)
    assert [e.event for e in env.events("web")] == ["issued", "failed"]
    assert env.events("web")[-1].payload["reason"] == message
    assert f"dir:{target}" not in row.delivered  # not recorded: redelivered next time

    assert row.conditions["Renewing"]["status"] is True  # issued, not delivered

    row = env.reconcile("web", row.next_attempt_at)
    assert row.attempts == 2
    assert row.next_attempt_at is not None
    assert row.next_attempt_at - env.now > first_delay
    assert row.conditions["Failed"]["message"] == message
    # Still issued and not delivered: Renewing stays (it used to drop at the first retry).
    assert row.conditions["Renewing"]["status"] is True

    # A wrapper that started a child: the timeout kills the child too (its process group),
    # so nothing lingers holding the output pipes or reloading late.
    pidfile = env.tmp / "child.pid"

    def times_out(reload: str) -> None:
        env.put(service_doc("web", targets=[{"directory": str(target), "reload": reload,
                                             "reloadTimeout": "1s"}]))  # fmt: skip
        started = time.monotonic()
        row = env.reconcile("web", env.now + MINUTE)
        assert time.monotonic() - started < 10
        assert row.conditions["Failed"]["message"] == message

    times_out(f"sh -c 'sleep 30 & echo $! > {pidfile}; wait'")
    child = Path(f"/proc/{int(pidfile.read_text())}/stat")
    # Gone, or a zombie waiting for a PID 1 that does not reap (as in some containers).
    assert not child.exists() or child.read_text().rpartition(")")[2].split()[0] == "Z"

    # One that escapes the group (setsid) and keeps the pipes: not waited for either.
    escaped = env.tmp / "escaped.pid"
    times_out(f"sh -c 'setsid sh -c \"echo \\$\\$ > {escaped}; exec sleep 30\" & sleep 30'")
    assert escaped.read_text().strip().isdigit()  # it did escape, and still holds the pipes
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(escaped.read_text()), 9)  # it lives on: outside what certctl may kill

    # A failing command: its exit status and last line of output are reported.
    failing = {"directory": str(target), "reload": "sh -c 'echo boom >&2; exit 3'"}
    env.put(service_doc("web", targets=[failing]))
    row = env.reconcile("web", env.now + MINUTE)
    assert row.conditions["Failed"]["message"] == f"dir:{target}: reload command exited 3: boom"

    # Fixed: delivered, reloaded, the failure clears and the back-off resets.
    log = env.tmp / "ok.log"
    good = {"directory": str(target), "reload": f"sh -c 'echo ok >> {log}'"}
    env.put(service_doc("web", targets=[good]))
    row = env.reconcile("web", env.now + MINUTE)
    assert row.conditions["Failed"]["status"] is False, row.conditions
    assert row.conditions["Renewing"]["status"] is False
    assert row.attempts == 0
    assert row.next_attempt_at is None
    assert log.read_text() == "ok\n"
    assert row.delivered[f"dir:{target}"]


def _p12_target(env: Env, password_text: str) -> tuple[Path, Path, dict[str, str]]:
    """A PKCS#12 directory target: (its password file holding ``password_text``, dir, spec)."""
    password = env.tmp / "p12-password"
    password.write_text(password_text)
    target = env.tmp / "p12"
    return (
        password,
        target,
        {"directory": str(target), "format": "pkcs12", "passwordFile": str(password)},
    )


def test_pkcs12_opens_with_openssl(env: Env) -> None:
    # A trailing newline in the password file is not part of the password.
    password, target, spec = _p12_target(env, "s3cret-pass\n")
    env.put(service_doc("web", dns=("web.example.internal",), targets=[spec]))
    row = env.reconcile("web")
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert sorted(p.name for p in target.iterdir()) == ["ca.crt", "tls.p12"]
    assert stat.S_IMODE((target / "tls.p12").stat().st_mode) == 0o600
    p12 = target / "tls.p12"
    info = ok(run("openssl", "pkcs12", "-info", "-in", p12, "-passin", f"file:{password}",
                  "-noenc"))  # fmt: skip
    assert "subject=CN = web" in info.stdout
    assert "-----BEGIN PRIVATE KEY-----" in info.stdout
    assert "issuer=OU = web, CN = web-http" in info.stdout
    leaf = x509.load_pem_x509_certificate(env.outputs("web")["certs-internal"]["tls.crt"])
    out = ok(run("openssl", "pkcs12", "-in", p12, "-passin", f"file:{password}", "-nokeys",
                 "-clcerts"))  # fmt: skip
    assert x509.load_pem_x509_certificates(out.stdout.encode())[0] == leaf
    # Negative twin: the wrong password does not open it.
    wrong = env.tmp / "wrong"
    wrong.write_text("not-it\n")
    refused = run("openssl", "pkcs12", "-info", "-in", p12, "-passin", f"file:{wrong}", "-noout")
    assert refused.returncode != 0
    assert "mac verify error" in refused.stderr.lower()


@pytest.mark.parametrize("text", ["", "\n", "\r\n"])
def test_an_empty_password_file_fails_the_service_and_delivers_nothing(env: Env, text: str) -> None:
    # As the CLI refuses an empty password file. Before, the service was Ready with a
    # keystore under the empty password: one any reader of the file could open.
    password, target, spec = _p12_target(env, text)
    env.put(service_doc("web", targets=[spec]))
    row = env.reconcile("web")
    assert row.conditions["Failed"]["status"] is True, row.conditions
    assert row.conditions["Failed"]["message"] == (
        f"dir:{target}: passwordFile {password} is empty; put the password on one line"
    )
    assert not target.exists()
    assert row.delivered == {}


def test_a_password_file_that_is_not_utf8_fails_the_service_and_delivers_nothing(
    env: Env,
) -> None:
    # `openssl rand 24 > pw`: PKCS#12 passwords are text, and cryptography's ValueError
    # escaped the reconciler. Refused in one line, as the CLI refuses such a password file.
    password, target, spec = _p12_target(env, "")
    password.write_bytes(b"\xff\xfe-s3cret\n")
    env.put(service_doc("web", targets=[spec]))
    row = env.reconcile("web")
    assert row.conditions["Failed"]["status"] is True, row.conditions
    assert row.conditions["Failed"]["message"] == (
        f"dir:{target}: passwordFile {password}: the password is not valid UTF-8"
    )
    assert "s3cret" not in str(row.conditions)
    assert not target.exists()
    assert row.delivered == {}


def test_a_password_file_of_more_than_one_line_fails_the_service_and_delivers_nothing(
    env: Env,
) -> None:
    # As the CLI refuses it: openssl -passin file: and keytool's :file read the first line
    # only, so a keystore written with every line (a wrapped `openssl rand -base64 64`) did
    # not open in them. Before, the reconciler used every line and reported Ready.
    first, second = "x" * 64, "yz=="
    password, target, spec = _p12_target(env, f"{first}\n{second}\n")
    env.put(service_doc("web", targets=[spec]))
    row = env.reconcile("web")
    message = row.conditions["Failed"]["message"]
    assert row.conditions["Failed"]["status"] is True, row.conditions
    assert message == (
        f"dir:{target}: passwordFile {password} holds more than one line (openssl and keytool "
        "read only the first); put the password on one line"
    )
    assert first not in message
    assert second not in message
    assert not target.exists()
    assert row.delivered == {}

    # Fixed to one line: delivered, and opens with it.
    password.write_text(f"{first}\n")
    row = env.reconcile("web", env.now + MINUTE)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    opens = ("openssl", "pkcs12", "-in", target / "tls.p12", "-noout", "-passin")
    ok(run(*opens, f"pass:{first}"))
    delivered = os.readlink(target)

    # A second line added later: Failed again, and the keystore delivered stays as it was,
    # under the password that opens it.
    password.write_text(f"{first}\n{second}\n")
    row = env.reconcile("web", env.now + service_schedule.RESYNC_INTERVAL + MINUTE)
    assert row.conditions["Failed"]["status"] is True, row.conditions
    assert "holds more than one line" in row.conditions["Failed"]["message"]
    assert os.readlink(target) == delivered
    ok(run(*opens, f"pass:{first}"))


def test_pkcs12_target_holds_the_service_ca_as_a_java_trusted_entry(env: Env) -> None:
    # As cert issue --p12 and elasticsearch-certutil write keystores: Java (keytool,
    # Elasticsearch's truststore.path) sees the CA only as a trustedCertEntry; before, the
    # file held one PrivateKeyEntry and Elasticsearch refused it as a truststore.
    _, target, spec = _p12_target(env, "s3cret-pass\n")
    env.put(service_doc("web", dns=("web.example.internal",), targets=[spec]))
    row = env.reconcile("web")
    assert row.conditions["Ready"]["status"] is True, row.conditions
    listing = ok(run("keytool", "-list", "-v", "-storetype", "PKCS12", "-keystore",
                     target / "tls.p12", "-storepass", "s3cret-pass")).stdout  # fmt: skip
    assert "Your keystore contains 2 entries" in listing
    entries = {b.split("\n", 1)[0]: b for b in listing.split("Alias name: ")[1:]}
    assert set(entries) == {"web", "ca"}
    assert "Entry type: PrivateKeyEntry" in entries["web"]
    assert "Certificate chain length: 2" in entries["web"]
    assert "Entry type: trustedCertEntry" in entries["ca"]
    assert "Owner: CN=web-http, OU=web" in entries["ca"]


def test_pkcs12_of_a_custom_certificate_without_ca_crt(env: Env) -> None:
    # Served with a warning (an unnamed, e.g. public, CA: ca.crt is empty), it failed every
    # PKCS#12 delivery: "not a recognised PEM, DER or PKCS#12 file".
    ca = make_ca("public-ca", env.now)
    leaf = make_leaf(ca, "web", env.now, dns=("web",))
    write_secret(env.secrets_dir, "custom", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem})
    password, target, spec = _p12_target(env, "s3cret-pass\n")
    env.put(service_doc("web", secret="custom", targets=[spec]))
    row = env.reconcile("web")
    assert row.conditions["Failed"]["status"] is False, row.conditions
    assert row.conditions["Ready"]["message"].startswith("secret custom has no ca.crt")
    out = ok(run("openssl", "pkcs12", "-in", target / "tls.p12", "-passin", f"file:{password}",
                 "-nokeys"))  # fmt: skip
    assert x509.load_pem_x509_certificates(out.stdout.encode()) == [leaf.certificate]
    # No ca.crt rather than an empty one, which Java and nginx refuse to load.
    assert sorted(p.name for p in target.iterdir()) == ["tls.p12"]


def test_a_failure_outside_os_errors_leaves_no_key_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel refusing a uid surfaces as OverflowError, not OSError: the half-written
    # version (with its private key) must go all the same.
    def refuse(fd: int, uid: int, gid: int) -> None:
        raise OverflowError("uid is greater than maximum")

    monkeypatch.setattr(os, "fchown", refuse)
    target = tmp_path / "tls"
    files = {"tls.key": BundleFile(b"key", secret=True), "tls.crt": BundleFile(b"crt")}
    with pytest.raises(OverflowError):
        deliver_to_directory(target, files, owner=0)
    assert not target.exists()
    assert _versions(target) == []


def test_an_out_of_range_id_stored_earlier_fails_the_delivery(tmp_path: Path) -> None:
    target = tmp_path / "tls"
    with pytest.raises(DeliveryError, match=f"user id {2**70} is out of range"):
        deliver_to_directory(target, {"tls.key": BundleFile(b"k", secret=True)}, owner=2**70)
    assert not target.exists()


def test_a_changed_format_or_password_or_a_deleted_target_is_delivered_again(env: Env) -> None:
    from certctl.server.scheduler import Scheduler

    target = env.tmp / "tls"
    password = env.tmp / "pw"
    password.write_text("first-password\n")
    env.put(service_doc("web", targets=[{"directory": str(target)}]))
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 1
    assert sorted(p.name for p in target.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]

    # PEM to PKCS#12: the same certificate, other files. Before, the bundle's digest alone
    # decided, so nothing was written.
    p12 = {"directory": str(target), "format": "pkcs12", "passwordFile": str(password)}
    env.put(service_doc("web", targets=[p12]))
    env.at(env.now + MINUTE)
    assert scheduler.tick() == 1
    assert sorted(p.name for p in target.iterdir()) == ["ca.crt", "tls.p12"]
    opens = ("openssl", "pkcs12", "-in", target / "tls.p12", "-noout", "-passin")
    ok(run(*opens, f"file:{password}"))

    # A new password (same spec): written again at the next resync, under the new one.
    password.write_text("second-password\n")
    first = os.readlink(target)
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    assert scheduler.tick() == 1
    assert os.readlink(target) != first
    ok(run(*opens, f"file:{password}"))
    assert str(env.row("web").delivered).find("second-password") == -1  # never stored

    # Deleted by hand: back at the next resync, not at the next renewal.
    link = os.readlink(target)
    target.unlink()
    env.at(env.now + MINUTE)
    assert scheduler.tick() == 0  # negative twin: not due before the resync interval
    assert not target.exists()
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    assert scheduler.tick() == 1
    assert sorted(p.name for p in target.iterdir()) == ["ca.crt", "tls.p12"]
    assert os.readlink(target) != link
    # Nothing changed: a resync writes nothing.
    link = os.readlink(target)
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    assert scheduler.tick() == 1
    assert os.readlink(target) == link


def test_a_planted_versions_symlink_is_refused_and_its_target_untouched(env: Env) -> None:
    victim = env.tmp / "victim"
    for name in ("a", "b", "c", "d"):
        (victim / name).mkdir(parents=True)
    (victim / "a" / "important").write_text("keep me\n")
    (env.tmp / ".web-tls.certctl").symlink_to(victim)
    target = env.tmp / "web-tls"
    env.put(service_doc("web", targets=[{"directory": str(target)}]))
    row = env.reconcile("web")
    assert "is not a directory certctl made; move it away" in row.conditions["Failed"]["message"]
    assert sorted(p.name for p in victim.iterdir()) == ["a", "b", "c", "d"]
    assert (victim / "a" / "important").read_text() == "keep me\n"
    assert not target.exists()
    # Only version directories are pruned: something else in the versions dir stays.
    (env.tmp / ".web-tls.certctl").unlink()
    (env.tmp / ".web-tls.certctl").mkdir()
    (env.tmp / ".web-tls.certctl" / "notes").mkdir()
    env.reconcile("web", env.now + MINUTE)
    for _ in range(3):
        _renew(env, "web")
    assert (env.tmp / ".web-tls.certctl" / "notes").is_dir()
    assert len(_versions(target)) == 3  # two versions and the notes


def test_reload_commands_get_no_certctl_secrets_and_parents_are_not_world_writable(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERTCTL_MASTER_KEY", "c2VjcmV0LW1hc3Rlci1rZXktbWF0ZXJpYWwtMzJieXRlcw==")
    monkeypatch.setenv("CERTCTL_DATABASE_URL", "postgresql+psycopg://u:hunter2@db/x")
    dump = env.tmp / "env.txt"
    target = env.tmp / "new" / "parent" / "tls"
    old_umask = os.umask(0)
    try:
        reload = f"sh -c 'env > {dump}'"
        env.put(service_doc("web", targets=[{"directory": str(target), "reload": reload}]))
        row = env.reconcile("web")
    finally:
        os.umask(old_umask)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    seen = dump.read_text()
    assert "PATH=" in seen  # negative twin: the environment is there, minus certctl's own
    assert "CERTCTL_" not in seen
    assert "hunter2" not in seen
    for directory in (env.tmp / "new", target.parent, target.parent / ".tls.certctl"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory
    assert stat.S_IMODE((target / "tls.key").stat().st_mode) == 0o600


def test_a_file_edited_by_hand_is_restored_at_the_next_resync(env: Env) -> None:
    from certctl.server.scheduler import Scheduler

    target = env.tmp / "tls"
    env.put(service_doc("web", targets=[{"directory": str(target)}]))
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 1
    good = (target / "ca.crt").read_bytes()
    link = os.readlink(target)
    (target / "ca.crt").write_bytes(b"overwritten by hand\n")
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    assert scheduler.tick() == 1
    assert (target / "ca.crt").read_bytes() == good
    assert os.readlink(target) != link  # a new version, swapped in whole


def test_a_reload_that_starts_a_daemon_and_exits_0_succeeds_at_once(env: Env) -> None:
    pidfile = env.tmp / "daemon.pid"
    target = env.tmp / "tls"
    # As `nginx` (without -g 'daemon off;') does: forks the server and returns.
    script = _script(
        env.tmp / "daemonize.sh", f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 30' &\nexit 0"
    )
    reload = str(script)
    env.put(service_doc("web", targets=[{"directory": str(target), "reload": reload}]))
    started = time.monotonic()
    row = env.reconcile("web")
    elapsed = time.monotonic() - started
    try:
        assert row.conditions["Ready"]["status"] is True, row.conditions
        assert elapsed < 5  # not waiting for the daemon's end (nor the 30 s timeout)
    finally:
        for _ in range(50):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), 9)


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_password_file_that_is_no_small_regular_file_is_refused_at_once(
    env: Env, kind: str
) -> None:
    password = env.tmp / "pw"
    if kind == "fifo":
        os.mkfifo(password)  # reading it would block the reconciler forever
    elif kind == "device":
        password = Path("/dev/zero")  # reading it would fill memory
    else:
        password.write_bytes(b"x" * 5000)
    target = {"directory": str(env.tmp / "p12"), "format": "pkcs12", "passwordFile": str(password)}
    env.put(service_doc("web", targets=[target]))
    started = time.monotonic()
    row = env.reconcile("web")
    assert time.monotonic() - started < 5
    message = row.conditions["Failed"]["message"]
    expected = "larger than 4 KiB" if kind == "huge" else "is not a regular file"
    assert expected in message, message
    assert not (env.tmp / "p12").exists()


def test_files_go_where_the_checked_parent_is_even_if_the_path_is_swapped_after(
    tmp_path: Path,
) -> None:
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    link = tmp_path / "link"
    link.symlink_to(inside)
    seen: list[Path] = []

    def check(real: Path) -> str | None:
        seen.append(real)
        link.unlink()
        link.symlink_to(outside)  # swapped right after the check, as an attacker would
        return None

    deliver_to_directory(link / "tls", {"tls.key": BundleFile(b"key", secret=True)}, check=check)
    assert seen == [inside / "tls"]  # judged on the directory as opened
    assert (inside / "tls" / "tls.key").read_bytes() == b"key"
    assert list(outside.iterdir()) == []
    # A refusal writes nothing at all.
    link.unlink()
    link.symlink_to(inside)
    with pytest.raises(DeliveryError, match="no thanks"):
        deliver_to_directory(link / "web", {"tls.key": BundleFile(b"k", secret=True)},
                             check=lambda real: "no thanks")  # fmt: skip
    assert not (inside / "web").exists()
    assert not (inside / ".web.certctl").exists()


def test_reload_output_is_one_clean_line_and_a_chatty_daemon_is_not_kept(env: Env) -> None:
    from certctl.auth.apikeys import mint_key
    from certctl.targets.directory import run_reload

    key = mint_key().value
    noisy = _script(
        env.tmp / "noisy.sh", f"printf 'x\\033[31mred\\033[0m\\tA\\001 {key}\\n'; exit 3"
    )
    with pytest.raises(DeliveryError) as info:
        run_reload(str(noisy), 5)
    detail = info.value.detail
    assert detail.startswith("reload command exited 3: x")
    for control in ("\x1b", "\x01", "\t"):
        assert control not in detail
    assert key.split("_", 2)[2][:20] not in detail  # the key's secret is cut out
    # A daemon that keeps writing after the command exited 0: done at once, nothing kept.
    daemon = _script(env.tmp / "chatty.sh", "(yes daemonlog &) ; exit 0")
    started = time.monotonic()
    run_reload(str(daemon), 10)
    assert time.monotonic() - started < 3
    # (yes dies of SIGPIPE once certctl closed its end: nothing left to clean up.)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_failures_leak_no_descriptor_and_a_failure_after_the_swap_keeps_the_new_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from certctl.targets import directory

    target = tmp_path / "tls"
    deliver_to_directory(target, {"tls.crt": BundleFile(b"one")})
    real_fchmod = os.fchmod

    def read_only(fd: int, mode: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(directory.os, "fchmod", read_only)
    (tmp_path / ".tls.certctl").chmod(0o700)  # so the versions dir needs its fchmod
    before = _open_fds()
    for _ in range(5):
        with pytest.raises(DeliveryError, match="Read-only file system"):
            deliver_to_directory(target, {"tls.crt": BundleFile(b"two")})
    assert _open_fds() == before
    monkeypatch.setattr(directory.os, "fchmod", real_fchmod)

    def prune_fails(versions: int, keep: str) -> None:
        raise FileNotFoundError(errno.ENOENT, "raced with another pruner")

    monkeypatch.setattr(directory, "_prune", prune_fails)
    deliver_to_directory(target, {"tls.crt": BundleFile(b"three")})  # done, pruning aside
    assert (target / "tls.crt").read_bytes() == b"three"


def test_without_proc_the_opened_path_is_its_resolved_path_if_still_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certctl.targets import directory

    real_readlink = os.readlink

    def no_proc(path: str, *args: object, **kwargs: object) -> str:
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_readlink(path, *args, **kwargs)  # type: ignore[arg-type]

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    monkeypatch.setattr(directory.os, "readlink", no_proc)
    fd = os.open(tmp_path / "link", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert directory.opened_path(fd, tmp_path / "link") == tmp_path / "a"
        (tmp_path / "link").unlink()
        (tmp_path / "link").symlink_to(tmp_path / "b")  # swapped after the open
        with pytest.raises(DeliveryError, match="changed while it was being checked"):
            directory.opened_path(fd, tmp_path / "link")
    finally:
        os.close(fd)
    seen: list[Path] = []
    deliver_to_directory(tmp_path / "link" / "tls", {"x": BundleFile(b"x")},
                         check=lambda real: seen.append(real))  # type: ignore[func-returns-value]  # fmt: skip
    assert seen == [tmp_path / "b" / "tls"]


def test_a_reload_that_closes_its_output_does_not_spin(env: Env) -> None:
    import resource

    from certctl.targets.directory import run_reload

    quiet = _script(env.tmp / "quiet.sh", "exec >&- 2>&-\nsleep 2")
    before = resource.getrusage(resource.RUSAGE_SELF)
    run_reload(str(quiet), 10)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 0.5, cpu  # waited, not polled a pipe at end of file for 2 s


def test_a_target_taken_out_of_the_spec_leaves_the_status(env: Env) -> None:
    old, new = env.tmp / "old" / "tls", env.tmp / "new" / "tls"
    env.put(service_doc("web", targets=[{"directory": str(old)}]))
    env.reconcile("web")
    env.put(service_doc("web", targets=[{"directory": str(new)}]))
    row = env.reconcile("web", env.now + MINUTE)
    # It used to stay in status.targets for good, with a digest no longer kept current.
    assert list(service_status.service_json(row)["status"]["targets"]) == [f"dir:{new}"]
    assert (old / "tls.crt").read_bytes() == (new / "tls.crt").read_bytes()  # files stay
    env.put(service_doc("web", targets=[{"directory": str(old)}, {"directory": str(new)}]))
    row = env.reconcile("web", env.now + MINUTE)
    assert sorted(row.delivered) == sorted([f"dir:{old}", f"dir:{new}"])


def test_a_password_java_cannot_use_is_delivered_with_a_warning_in_the_status(env: Env) -> None:
    # keytool and every JVM answer "keystore password was incorrect" for a password outside
    # printable ASCII; the service showed Ready "serving" with no hint of it.
    password, target, spec = _p12_target(env, "pässwörd\n")
    env.put(service_doc("web", dns=("web.example.internal",), targets=[spec]))
    row = env.reconcile("web")
    assert row.conditions["Ready"]["status"] is True, row.conditions
    warning = (
        f"dir:{target}: the PKCS#12 password has characters outside printable ASCII: OpenSSL "
        "opens the file, but Java (keytool, Elasticsearch, Tomcat …) cannot"
    )
    assert warning in row.conditions["Ready"]["message"], row.conditions
    refused = run("keytool", "-list", "-storetype", "PKCS12", "-keystore", target / "tls.p12",
                  "-storepass", "pässwörd")  # fmt: skip
    assert "keystore password was incorrect" in refused.stdout + refused.stderr
    # A password Java takes clears the warning at the next pass.
    password.write_text("s3cret-pass\n")
    row = env.reconcile("web", env.now + MINUTE)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert "PKCS#12" not in row.conditions["Ready"]["message"], row.conditions
