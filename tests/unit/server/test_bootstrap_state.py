"""What a restart finds in the data dir and the database: never a second first start."""

from __future__ import annotations

import base64
import os
import re
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from certctl.errors import InvalidRequest
from certctl.server.bootstrap import Bootstrapped, bootstrap, mint_local_key
from certctl.server.config import ServerConfig
from certctl.store.models import Actor, ApiKey, Issuer
from tests._tools import run
from tests.unit.store.test_migration_head import downgrade_store


def _boot(data: Path) -> Bootstrapped:
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    booted.services.engine.dispose()
    return booted


def _issuers(data: Path) -> list[str]:
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    with booted.services.sessions() as session:
        ids = list(session.scalars(select(Issuer.id)))
    booted.services.engine.dispose()
    return ids


def test_a_lost_database_is_refused_and_nothing_is_overwritten(tmp_path: Path) -> None:
    # It made a new internal CA (orphaning every issued certificate) and a new admin key,
    # written over the one in admin-api-key.
    data = tmp_path / "data"
    _boot(data)
    key_before = (data / "admin-api-key").read_bytes()
    (data / "certctl.db").unlink()
    with pytest.raises(InvalidRequest) as caught:
        _boot(data)
    assert str(caught.value) == (
        f"{data / 'certctl.db'} is empty or missing, but {data} holds admin-api-key from an "
        f"earlier start: restore the database from a backup, or move {data} aside to start afresh"
    )
    assert (data / "admin-api-key").read_bytes() == key_before
    (data / "certctl.db").write_bytes(b"")  # emptied (a failed restore, a full disk)
    (data / "tls").mkdir()
    (data / "tls" / "ca.crt").write_text("the CA clients trust")
    with pytest.raises(
        InvalidRequest, match=r"holds admin-api-key and tls/ca\.crt from an earlier"
    ):
        _boot(data)
    assert (data / "admin-api-key").read_bytes() == key_before
    # Custom TLS files kept in <data-dir>/tls are no sign of an earlier start.
    custom = tmp_path / "custom"
    (custom / "tls").mkdir(parents=True)
    (custom / "tls" / "ca.crt").write_text("the operator's CA")
    config = {"data-dir": str(custom), "tls": {"mode": "custom", "cert-dir": str(custom / "tls")}}
    booted = bootstrap(ServerConfig.model_validate(config))
    booted.services.engine.dispose()
    assert booted.admin_key is not None
    # Negative twin: moved aside, the data dir starts afresh.
    (data / "admin-api-key").unlink()
    (data / "tls" / "ca.crt").unlink()
    assert _boot(data).admin_key is not None


def test_serve_on_a_lost_database_exits_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _boot(data)
    (data / "certctl.db").unlink()
    proc = run("certctl", "serve", "--data-dir", data, "--listen", "127.0.0.1:0", timeout=60)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"certctl: error: {data / 'certctl.db'} is empty or missing, but {data} holds "
        f"admin-api-key from an earlier start: restore the database from a backup, or move "
        f"{data} aside to start afresh"
    ]
    assert "Traceback" not in proc.stderr
    # The refused start left the data dir as it found it: no empty certctl.db for the next
    # start to migrate and take for a fresh store.
    assert not (data / "certctl.db").exists()
    assert not (data / "certctl.db-wal").exists()


def test_a_deleted_bootstrap_admin_stays_deleted(tmp_path: Path) -> None:
    # Each restart made it again, with a fresh all-powerful key printed to the log.
    data = tmp_path / "data"
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    with booted.services.sessions.begin() as session:
        session.add(
            Actor(id="alice", name="Alice", roles=["r-admin"], created_at=booted.services.clock())
        )
        session.execute(delete(ApiKey).where(ApiKey.actor_id == "admin"))
        session.execute(delete(Actor).where(Actor.id == "admin"))
    booted.services.engine.dispose()
    again = bootstrap(ServerConfig.model_validate({"data-dir": str(data)}))
    with again.services.sessions() as session:
        actors = list(session.scalars(select(Actor.id)))
        keys = list(session.scalars(select(ApiKey.actor_id)))
    again.services.engine.dispose()
    assert again.admin_key is None
    assert actors == ["alice"]
    assert keys == []


def test_a_missing_kek_is_not_replaced_while_keys_are_stored(tmp_path: Path) -> None:
    # A new random KEK was written, and the start then failed on 'wrong master key'.
    data = tmp_path / "data"
    _boot(data)
    (data / "kek").unlink()
    with pytest.raises(InvalidRequest) as caught:
        _boot(data)
    # An SQLite file has no replicas to take the key from: it named "the replicas already
    # running on it" all the same (tests/faults/test_pg_start.py: PostgreSQL's do).
    assert str(caught.value) == (
        f"{data / 'kek'} is missing, but the database holds keys encrypted under it: restore "
        "kek from a backup (or set CERTCTL_MASTER_KEY to its content); a new key would open none"
    )
    assert not (data / "kek").exists()
    with pytest.raises(InvalidRequest) as caught:  # certctl admin-key says the same
        mint_local_key(ServerConfig.model_validate({"data-dir": str(data)}), "admin")
    assert "replicas" not in str(caught.value)
    assert str(caught.value).startswith(f"{data / 'kek'} is missing, but the database holds")


def test_a_missing_kek_with_a_blank_master_key_says_it_is_set_but_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "set CERTCTL_MASTER_KEY": it was set, to nothing (a Secret whose value came out empty).
    data = tmp_path / "data"
    _boot(data)
    (data / "kek").unlink()
    monkeypatch.setenv("CERTCTL_MASTER_KEY", " \n")
    with pytest.raises(InvalidRequest) as caught:
        mint_local_key(ServerConfig.model_validate({"data-dir": str(data)}), "admin")
    assert str(caught.value) == (
        f"CERTCTL_MASTER_KEY is set but empty (a Secret key or variable with no value?) and "
        f"{data / 'kek'} is missing, but the database holds keys encrypted under it: set "
        "CERTCTL_MASTER_KEY to their key (the content of a kek from a backup), or restore kek "
        "from a backup; a new key would open none"
    )
    assert not (data / "kek").exists()


def test_a_wrong_kek_is_named_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    _boot(data)
    kek = (data / "kek").read_text().strip()
    wrong = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("CERTCTL_MASTER_KEY", wrong)
    with pytest.raises(InvalidRequest) as caught:
        _boot(data)
    message = str(caught.value)
    # An SQLite file has no replicas (tests/faults/test_pg_start.py shows PostgreSQL's
    # message naming them): the key this server ran with.
    assert message == (
        "the key-encryption key from CERTCTL_MASTER_KEY does not decrypt the keys in the "
        "database: start with the one they were encrypted under (the CERTCTL_MASTER_KEY it ran "
        "with before, the value the last `certctl kek rotate` printed, or "
        f"{data / 'kek'} from a backup)"
    )
    assert wrong not in message
    assert kek not in message
    # Moving the key from the file to the environment is the documented way: it works.
    monkeypatch.setenv("CERTCTL_MASTER_KEY", kek)
    (data / "kek").rename(tmp_path / "kek.bak")
    assert _issuers(data) == ["default"]
    assert not (data / "kek").exists()
    monkeypatch.delenv("CERTCTL_MASTER_KEY")
    (data / "kek").write_text(wrong + "\n")
    with pytest.raises(
        InvalidRequest, match=re.escape(f"key-encryption key from {data / 'kek'} does not")
    ):
        _boot(data)


@pytest.mark.parametrize("content", [b"not base64 at all!!\n", b"", b"c2hvcnQ=\n"])
def test_a_damaged_kek_file_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    # Text that is not base64 gave 'internal error (Error: Incorrect padding)'.
    data = tmp_path / "data"
    _boot(data)
    (data / "kek").write_bytes(content)
    with pytest.raises(InvalidRequest) as caught:
        _boot(data)
    assert str(caught.value) == f"{data / 'kek'}: key-encryption key must be 32 bytes (base64)"


def test_a_master_key_with_the_kek_files_newline_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `kubectl create secret generic … --from-file=master-key=<data-dir>/kek` keeps the
    # file's trailing newline; it was refused as "CERTCTL_MASTER_KEY is not valid base64".
    data = tmp_path / "data"
    _boot(data)
    monkeypatch.setenv("CERTCTL_MASTER_KEY", (data / "kek").read_text())
    (data / "kek").unlink()
    assert _issuers(data) == ["default"]
    monkeypatch.setenv("CERTCTL_MASTER_KEY", "not base64!\n")  # negative twin
    remedy = (
        "give the key the stored keys were encrypted under (the content of a <data-dir>/kek), "
        "or for a new database a new one (head -c32 /dev/urandom | base64)"
    )
    with pytest.raises(InvalidRequest) as caught:
        _boot(data)
    assert str(caught.value) == f"CERTCTL_MASTER_KEY is not valid base64 of 32 bytes: {remedy}"
    # A hex key or a 16-byte one said "must decode to 32 bytes", naming no way to make one.
    monkeypatch.setenv("CERTCTL_MASTER_KEY", base64.b64encode(b"k" * 16).decode())
    with pytest.raises(InvalidRequest) as caught:
        _boot(data)
    assert str(caught.value) == f"CERTCTL_MASTER_KEY decodes to 16 bytes, not 32: {remedy}"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("not base64!", "CERTCTL_MASTER_KEY is not valid base64 of 32 bytes: "),
        (base64.b64encode(b"k" * 16).decode(), "CERTCTL_MASTER_KEY decodes to 16 bytes, not 32: "),
    ],
)
def test_a_malformed_master_key_refuses_a_first_start_before_anything_is_made(
    tmp_path: Path, value: str, says: str
) -> None:
    # It was read only after the migrations: the refused start left a data dir with a
    # migrated, empty certctl.db (and the lock file) that the next start took for its own.
    data = tmp_path / "data"
    env = {**os.environ, "CERTCTL_MASTER_KEY": value}
    proc = run(
        "certctl", "serve", "--data-dir", data, "--listen", "127.0.0.1:0", env=env, timeout=60
    )
    assert proc.returncode == 2, proc.stderr  # a bad variable: a usage error (DESIGN §6)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"certctl: error: {says}give the key the stored keys"), errors
    assert value not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not data.exists()
    # An existing data dir stays empty: no certctl.db, no lock file.
    data.mkdir(mode=0o700)
    proc = run(
        "certctl", "serve", "--data-dir", data, "--listen", "127.0.0.1:0", env=env, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert list(data.iterdir()) == []


def test_a_malformed_master_key_leaves_an_older_store_unmigrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The migrations ran first: an upgrade refused for its key was applied all the same.
    data = tmp_path / "data"
    booted = _boot(data)
    downgrade_store(booted.services.engine, "0023")
    booted.services.engine.dispose()
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    monkeypatch.setenv("CERTCTL_MASTER_KEY", "not base64!")
    with pytest.raises(InvalidRequest, match="CERTCTL_MASTER_KEY is not valid base64"):
        _boot(data)
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == before
    connection = sqlite3.connect(data / "certctl.db")
    try:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        connection.close()
    assert revision == ("0023",)
    # Negative twin: the key it was made with (the kek file's, in the variable) migrates it.
    monkeypatch.setenv("CERTCTL_MASTER_KEY", (data / "kek").read_text())
    assert _issuers(data) == ["default"]
    connection = sqlite3.connect(data / "certctl.db")
    try:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        connection.close()
    assert revision != ("0023",)


def test_a_blank_master_key_is_refused_where_a_new_key_would_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A blank value counts as unset, so a first start made a new kek in the data dir: in a
    # pod whose master-key Secret came out empty that is an emptyDir, lost at the next
    # restart with every key stored under it.
    data = tmp_path / "data"
    monkeypatch.setenv("CERTCTL_MASTER_KEY", " \n")
    with pytest.raises(InvalidRequest) as caught:
        _boot(data)
    assert str(caught.value) == (
        "CERTCTL_MASTER_KEY is set but empty (a Secret key or variable with no value?) and "
        f"{data / 'kek'} does not exist: set it to the key the stored keys are encrypted under "
        "(the content of a kek from a backup, the CERTCTL_MASTER_KEY of the replicas), or for "
        "a new database to a new one (head -c32 /dev/urandom | base64); unset, a first start "
        f"keeps a new key in {data / 'kek'}"
    )
    assert not data.exists()
    # Where the kek file is there, blank still means "use the file", as before.
    monkeypatch.delenv("CERTCTL_MASTER_KEY")
    _boot(data)
    monkeypatch.setenv("CERTCTL_MASTER_KEY", "")
    assert _issuers(data) == ["default"]


def test_a_blank_master_key_over_stored_keys_names_their_key_not_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kek moved into a Secret whose value then came out empty: refused before the store
    # is opened, the refusal said only to make a new key (which opens none of the stored
    # ones) or to unset the variable (then refused for the missing kek).
    data = tmp_path / "data"
    _boot(data)
    kek = (data / "kek").read_text()
    (data / "kek").unlink()
    monkeypatch.setenv("CERTCTL_MASTER_KEY", "")
    with pytest.raises(InvalidRequest) as caught:
        _boot(data)
    assert "set it to the key the stored keys are encrypted under" in str(caught.value)
    monkeypatch.setenv("CERTCTL_MASTER_KEY", kek)
    _boot(data)
