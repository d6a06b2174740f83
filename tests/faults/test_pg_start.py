"""Starting against the wrong PostgreSQL database: one line that says which, nothing written."""

from __future__ import annotations

import base64
import os
import re
import secrets
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certctl.errors import InvalidRequest, StorageUnavailable
from certctl.server.bootstrap import bootstrap, mint_local_key
from certctl.server.config import ServerConfig
from tests._tools import ok, run
from tests.api.conftest import PostgresCluster
from tests.faults.conftest import FaultServer


def _config(data: Path, url: str) -> ServerConfig:
    return ServerConfig.model_validate({"data-dir": str(data), "database-url": url})


def test_a_database_postgresql_refuses_is_named(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    # All of these said only "the database cannot be reached".
    url = postgres_cluster.url("no_such_database")
    with pytest.raises(StorageUnavailable) as caught:
        bootstrap(_config(tmp_path / "data", url))
    assert caught.value.detail == (
        "cannot start: storage is unavailable: the database cannot be reached "
        '(database "no_such_database" does not exist)'
    )
    url = postgres_cluster.url("postgres").replace("postgres@", "nobody:pw-not-shown@", 1)
    with pytest.raises(StorageUnavailable) as caught:
        bootstrap(_config(tmp_path / "data", url))
    assert caught.value.detail.endswith('(role "nobody" does not exist)')
    assert "pw-not-shown" not in caught.value.detail
    # No server there (a wrong port or host) said nothing more than "cannot be reached".
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: refused until closed
        port = unused.getsockname()[1]
        url = f"postgresql+psycopg://certctl:pw-not-shown@127.0.0.1:{port}/certctl"
        with pytest.raises(StorageUnavailable) as caught:
            bootstrap(_config(tmp_path / "data", url))
    assert caught.value.detail == (
        "cannot start: storage is unavailable: the database cannot be reached (connection to "
        f'server at "127.0.0.1", port {port} failed: Connection refused)'
    )
    url = "postgresql+psycopg://certctl:pw-not-shown@db.invalid/certctl"
    with pytest.raises(StorageUnavailable) as caught:
        bootstrap(_config(tmp_path / "data", url))
    assert caught.value.detail.startswith(
        "cannot start: storage is unavailable: the database cannot be reached (failed to "
        "resolve host 'db.invalid': "
    )
    assert "pw-not-shown" not in caught.value.detail


def test_a_url_parameter_libpq_refuses_is_named(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    # ?connect_timeout=abc and ?foo=bar said "internal error (ProgrammingError: …
    # (Background on this error at: https://sqlalche.me/…))"; ?sslmode=bogus and a port out
    # of range only "the database cannot be reached".
    base = postgres_cluster.url("postgres").replace("postgres@", "certctl:pw-not-shown@", 1)
    for query, said in [
        (
            "?connect_timeout=abc",
            "cannot start: database-url: bad value for connect_timeout: 'abc'",
        ),
        ("?foo=bar", 'cannot start: database-url: invalid connection option "foo"'),
    ]:
        with pytest.raises(InvalidRequest) as refused:
            bootstrap(_config(tmp_path / "data", base + query))
        assert str(refused.value) == said
        with pytest.raises(InvalidRequest) as refused:  # certctl admin-key and kek rotate
            mint_local_key(_config(tmp_path / "data", base + query), "admin")
        assert str(refused.value) == said.removeprefix("cannot start: ")
    with pytest.raises(StorageUnavailable) as caught:
        bootstrap(_config(tmp_path / "data", base + "?sslmode=bogus"))
    assert caught.value.detail == (
        "cannot start: storage is unavailable: the database cannot be reached (invalid sslmode "
        'value: "bogus")'
    )
    out_of_range = base.replace(f":{postgres_cluster.port}/", ":99999/")
    with pytest.raises(StorageUnavailable) as caught:
        bootstrap(_config(tmp_path / "data", out_of_range))
    assert caught.value.detail.endswith('(invalid port number: "99999")')
    assert not (tmp_path / "data" / "admin-api-key").exists()


@pytest.mark.parametrize("rest", ["@ZZb/YYc", "@ZZb?YYc", "@ZZb/YYc?XXd:WWe", "@ZZb?YYc=XXd"])
def test_no_part_of_a_password_holding_an_unencoded_at_is_ever_shown(
    tmp_path: Path, postgres_cluster: PostgresCluster, rest: str
) -> None:
    # An '@' then a '/' or '?' in the password: the host became "ZZb", the password's part
    # after its '@', and serve, admin-key and kek rotate said "failed to resolve host 'ZZb'".
    url = postgres_cluster.url("postgres").replace("postgres@", f"certctl:QQa{rest}@", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    for command in (["serve", "--listen", "127.0.0.1:0"], ["admin-key"], ["kek", "rotate"]):
        data = tmp_path / "-".join(command)
        for given in ({"CERTCTL_DATABASE_URL": url}, None):
            argv = [*command, "--data-dir", data]
            if given is None:
                argv += ["--database-url", url]
            refused = run("certctl", *argv, env={**env, **(given or {})}, timeout=30)
            said = refused.stdout + refused.stderr
            assert refused.returncode != 0, said
            for part in ("QQa", "ZZb", "YYc", "XXd", "WWe"):
                assert part not in said, said
            # A flag or variable the configuration refuses is a usage error (exit 2), its line
            # ending in the help hint.
            assert refused.returncode == 2, said
            last = re.sub(r" \(see 'certctl [a-z -]+ --help'\)$", "", said.strip().splitlines()[-1])
            assert last.endswith(
                "postgresql+psycopg://…: an '@' follows the password's end (in a user name or "
                "password, write @ as %40, : as %3A and / as %2F)"
            ), said
        assert not data.exists() or not any(data.iterdir())


def test_a_data_dir_pointed_at_another_empty_database_is_refused(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    # It made a second internal CA there and wrote its admin key over the first one's.
    data = tmp_path / "data"
    first = bootstrap(_config(data, postgres_cluster.url(postgres_cluster.create_database())))
    first.services.engine.dispose()
    key = (data / "admin-api-key").read_bytes()
    other = postgres_cluster.create_database()
    with pytest.raises(InvalidRequest) as caught:
        bootstrap(_config(data, postgres_cluster.url(other)))
    assert str(caught.value) == (
        f"the database (database-url) holds no certctl data, but {data} holds admin-api-key "
        f"from an earlier start: restore the database from a backup, or move {data} aside to "
        "start afresh"
    )
    assert (data / "admin-api-key").read_bytes() == key


def test_a_malformed_master_key_leaves_a_new_postgresql_database_without_tables(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    # The migrations ran before the key was read: the refused first start left certctl's
    # tables in the database, and the next start (with a good key) took them for its own.
    import psycopg

    database = postgres_cluster.create_database()
    url = postgres_cluster.url(database)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env |= {"CERTCTL_MASTER_KEY": base64.b64encode(os.urandom(16)).decode()}
    data = tmp_path / "data"
    argv = ["serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--database-url", url]
    refused = run("certctl", *argv, env=env, timeout=60)
    assert refused.returncode == 2, refused.stderr  # a bad variable: a usage error
    assert refused.stderr.startswith(
        "certctl: error: CERTCTL_MASTER_KEY decodes to 16 bytes, not 32: "
    ), refused.stderr
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert not data.exists()
    dsn = f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/{database}"
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert tables == []


def test_admin_key_names_the_database_postgresql_refuses_or_an_empty_one(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    # certctl admin-key said "the database cannot be reached" for a mistyped database, and
    # "internal error (ProgrammingError: … relation "issuers" does not exist …)" for an
    # existing database without certctl's tables.
    url = postgres_cluster.url("no_such_database")
    with pytest.raises(StorageUnavailable) as caught:
        mint_local_key(_config(tmp_path / "data", url), "admin")
    assert caught.value.detail == (
        "storage is unavailable: the database cannot be reached "
        '(database "no_such_database" does not exist)'
    )
    empty = postgres_cluster.url(postgres_cluster.create_database())
    with pytest.raises(InvalidRequest) as refused:
        mint_local_key(_config(tmp_path / "data", empty), "admin")
    assert str(refused.value) == "the database (database-url) holds no certctl data"
    assert not (tmp_path / "data").exists()


def test_a_replica_without_the_kek_is_told_to_take_the_others_key(
    tmp_path: Path, postgres_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second replica started without CERTCTL_MASTER_KEY was told only of a backup.
    url = postgres_cluster.url(postgres_cluster.create_database())
    first = bootstrap(_config(tmp_path / "first", url))
    first.services.engine.dispose()
    second = tmp_path / "second"
    second.mkdir()
    expected = (
        f"{second / 'kek'} is missing, but the database holds keys encrypted under it: set "
        "CERTCTL_MASTER_KEY as the replicas already running on it have it, or restore kek from "
        "a backup (or set CERTCTL_MASTER_KEY to its content); a new key would open none"
    )
    with pytest.raises(InvalidRequest) as caught:
        bootstrap(_config(second, url))
    assert str(caught.value) == expected
    # The refused start leaves the data dir as found: it held certctl.lock, and one made for
    # it was left behind.
    assert list(second.iterdir()) == []
    with pytest.raises(InvalidRequest) as caught:
        bootstrap(_config(tmp_path / "third", url))
    assert str(caught.value) == expected.replace(str(second), str(tmp_path / "third"))
    assert not (tmp_path / "third").exists()
    with pytest.raises(InvalidRequest) as caught:  # certctl admin-key
        mint_local_key(_config(second, url), "admin")
    assert str(caught.value) == expected
    assert not (second / "kek").exists()
    # Set, but to nothing (a Secret value that came out empty): "set CERTCTL_MASTER_KEY"
    # sent the operator to check what was set already.
    monkeypatch.setenv("CERTCTL_MASTER_KEY", "")
    with pytest.raises(InvalidRequest) as caught:
        mint_local_key(_config(second, url), "admin")
    assert str(caught.value) == (
        f"CERTCTL_MASTER_KEY is set but empty (a Secret key or variable with no value?) and "
        f"{second / 'kek'} is missing, but the database holds keys encrypted under it: set "
        "CERTCTL_MASTER_KEY to their key (the one of the replicas already running on it, or "
        "the content of a kek from a backup), or restore kek from a backup; a new key would "
        "open none"
    )


def _superuser(postgres_cluster: PostgresCluster) -> str:
    return f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres"


def _role(postgres_cluster: PostgresCluster, database: str, *, owner: bool) -> str:
    """A login role (trust auth, as every role of the cluster) that may connect to ``database``."""
    import psycopg

    role = f"walk_{secrets.token_hex(4)}"
    dsn = f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {role}')
        if owner:
            conn.execute(f'ALTER DATABASE "{database}" OWNER TO {role}')
    return role


def test_a_database_the_role_may_not_write_says_what_to_do(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    # A database made by a superuser (PostgreSQL 15: only its owner creates tables in
    # public), and a dump restored by a superuser, whose tables are then the superuser's,
    # both said "internal error (ProgrammingError: (psycopg.errors.InsufficientPrivilege) …
    # [SQL: …] (Background on this error at: https://sqlalche.me/…))".
    fresh = postgres_cluster.create_database()
    role = _role(postgres_cluster, fresh, owner=False)
    url = postgres_cluster.url(fresh).replace("postgres@", f"{role}:pw-not-shown@", 1)
    with pytest.raises(InvalidRequest) as caught:
        bootstrap(_config(tmp_path / "a", url))
    # It said only createdb -O, which fits a database still to be made, not this one.
    assert str(caught.value) == (
        f"cannot start: PostgreSQL denied the role {role} a privilege (permission denied for "
        f"schema public): the database and certctl's tables must belong to it (a new "
        f"database: createdb -O {role}; this one: ALTER DATABASE {fresh} OWNER TO {role}; a "
        f"restore: pg_restore --no-owner --role={role})"
    )
    assert "pw-not-shown" not in str(caught.value)
    # Done as said (by postgres), the same start goes through.
    import psycopg

    alter = re.search(r"this one: (ALTER DATABASE [^;]+);", str(caught.value))
    assert alter is not None
    with psycopg.connect(_superuser(postgres_cluster), autocommit=True) as conn:
        conn.execute(alter.group(1).encode())
    started = bootstrap(_config(tmp_path / "a", url))
    started.services.engine.dispose()
    assert started.admin_key is not None

    restored = postgres_cluster.create_database()
    superuser = bootstrap(_config(tmp_path / "b", postgres_cluster.url(restored)))
    superuser.services.engine.dispose()  # its tables belong to postgres, as a restore's
    role = _role(postgres_cluster, restored, owner=True)
    url = postgres_cluster.url(restored).replace("postgres@", f"{role}@", 1)
    with pytest.raises(InvalidRequest) as caught:
        bootstrap(_config(tmp_path / "c", url))
    assert str(caught.value).startswith(
        f"cannot start: PostgreSQL denied the role {role} a privilege (permission denied for "
        "table alembic_version): "
    )
    with pytest.raises(InvalidRequest) as refused:  # certctl admin-key and kek rotate
        mint_local_key(_config(tmp_path / "b", url), "admin")
    assert str(refused.value).startswith(
        f"PostgreSQL denied the role {role} a privilege (permission denied for table issuers): "
    )


def test_a_privilege_refusal_names_the_database_and_role_libpq_defaulted_to(
    tmp_path: Path, postgres_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A URL naming no database or role printed 'ALTER DATABASE "DATABASE" OWNER TO ROLE':
    # libpq took them from PGUSER (and the database from the role), and so does the hint.
    import psycopg

    role = _role(postgres_cluster, "postgres", owner=False)
    with psycopg.connect(_superuser(postgres_cluster), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {role} TEMPLATE template0")  # the superuser's
        conn.execute(f"GRANT CONNECT ON DATABASE {role} TO {role}")
    for name in ("PGDATABASE", "PGSERVICE", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGUSER", role)
    url = f"postgresql+psycopg://127.0.0.1:{postgres_cluster.port}"
    with pytest.raises(InvalidRequest) as caught:
        bootstrap(_config(tmp_path / "a", url))
    assert str(caught.value) == (
        f"cannot start: PostgreSQL denied the role {role} a privilege (permission denied for "
        f"schema public): the database and certctl's tables must belong to it (a new "
        f"database: createdb -O {role}; this one: ALTER DATABASE {role} OWNER TO {role}; a "
        f"restore: pg_restore --no-owner --role={role})"
    )
    # What it says to run is what lets the same start through.
    alter = re.search(r"this one: (ALTER DATABASE [^;]+);", str(caught.value))
    assert alter is not None
    with psycopg.connect(_superuser(postgres_cluster), autocommit=True) as conn:
        conn.execute(alter.group(1).encode())
    started = bootstrap(_config(tmp_path / "a", url))
    started.services.engine.dispose()
    assert started.admin_key is not None


def test_the_role_named_by_default_is_the_one_libpq_connects_as(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libpq's default role is the effective uid's passwd name, whatever $USER says (a
    # server started by runuser or su, or an image's ENV USER): the hint named $USER.
    from psycopg import pq
    from sqlalchemy import make_url

    from certctl.server.bootstrap import _libpq_names

    for name in ("PGUSER", "PGDATABASE", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "not-this-user")
    monkeypatch.setenv("LOGNAME", "not-this-user")
    defaults = {option.keyword: option.val for option in pq.Conninfo.get_defaults()}
    libpq_role = (defaults[b"user"] or b"").decode()
    assert libpq_role not in ("", "not-this-user")
    assert _libpq_names(make_url("postgresql+psycopg://db.example")) == (libpq_role, libpq_role)


def test_a_password_in_the_database_url_flag_is_warned_of_never_shown(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    # `--database-url postgresql+psycopg://certctl:PW@…` put the password in ps for every user
    # of the host, for as long as the server ran; only --help said so.
    data = tmp_path / "data"
    url = postgres_cluster.url(postgres_cluster.create_database())
    bootstrap(_config(data, url)).services.engine.dispose()
    with_password = url.replace("postgres@", "postgres:pw-in-the-flag@", 1)  # trust: accepted
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    argv = ["certctl", "admin-key", "--data-dir", data, "--force"]
    flag = ok(run(*argv, "--database-url", with_password, env=env))
    assert flag.stderr == (
        "certctl: warning: --database-url holds a password, which every user of this host can "
        "read in ps while the command runs: give the URL in CERTCTL_DATABASE_URL or the config "
        "file's database-url, or the password in ~/.pgpass or PGPASSWORD\n"
    )
    assert "pw-in-the-flag" not in flag.stdout + flag.stderr
    # As libpq's keyword in the query: no warning, the same password in ps.
    in_query = ok(run(*argv, "--database-url", f"{url}?password=pw-in-the-query", env=env))
    assert in_query.stderr == flag.stderr
    assert "pw-in-the-query" not in in_query.stdout + in_query.stderr
    # The same URL from the environment, or a flag without a password: nothing to warn of.
    quiet = ok(run(*argv, env={**env, "CERTCTL_DATABASE_URL": with_password}))
    assert quiet.stderr == ""
    bare = ok(run(*argv, "--database-url", url, env=env))
    assert bare.stderr == ""


def test_a_replica_without_admin_api_key_says_how_to_get_one(
    fault_server: FaultServer, postgres_cluster: PostgresCluster
) -> None:
    # A second replica (its data dir has no admin-api-key) said "`certctl admin-key
    # --data-dir D` mints a new one", which, run as printed, looked for SQLite in D and
    # failed with "D/certctl.db: no such database".
    url = postgres_cluster.url(postgres_cluster.create_database())
    fault_server.config = {"database-url": url}
    fault_server.env = {"CERTCTL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    fault_server.start()
    fault_server.stop()
    key_file = fault_server.data_dir / "admin-api-key"
    key_file.unlink()
    fault_server.start()
    data = fault_server.data_dir
    assert (
        f"Admin API key: {key_file} is missing; copy another replica's, or mint one with "
        f"`certctl admin-key --data-dir {data}` given this server's database-url (its "
        "--config, --database-url or CERTCTL_DATABASE_URL) and CERTCTL_MASTER_KEY\n"
    ) in fault_server.stdout(fault_server.runs).read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    alone = run("certctl", "admin-key", "--data-dir", data, env={**env, **fault_server.env})
    assert alone.returncode == 1
    assert alone.stderr == f"certctl: error: {data / 'certctl.db'}: no such database\n"
    given = {**env, **fault_server.env, "CERTCTL_DATABASE_URL": url}
    ok(run("certctl", "admin-key", "--data-dir", data, env=given))
    with fault_server.client(key_file.read_text().strip()) as client:
        assert client.get("/api/v1/auth/whoami").json()["actor_id"] == "admin"


def test_a_role_refused_under_a_running_server_is_named_in_its_log_not_to_clients(
    fault_server: FaultServer, postgres_cluster: PostgresCluster
) -> None:
    # A password rotated (or a role disabled) in PostgreSQL under running replicas: their log
    # said only "storage fault on GET …: the database cannot be reached (OperationalError)"
    # and "the database does not answer", which reads as a network fault.
    import psycopg

    database = postgres_cluster.create_database()
    role = _role(postgres_cluster, database, owner=True)
    fault_server.config = {
        "database-url": postgres_cluster.url(database).replace("postgres@", f"{role}@", 1)
    }
    fault_server.start()
    admin = f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres"
    refused = f'role "{role}" is not permitted to log in'
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {role} NOLOGIN")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
        with fault_server.client() as client:
            listed = client.get("/api/v1/certificates")
            assert listed.status_code == 503, listed.text
            # The client's 503 keeps the bare detail (DESIGN: no operational detail).
            assert listed.json()["detail"] == (
                "storage is unavailable: the database cannot be reached"
            )
            time.sleep(1.1)  # past the cached /readyz answer (READY_CHECK_TTL_S)
            assert client.get("/readyz").status_code == 503
        log = fault_server.log()
        assert (
            "storage fault on GET /api/v1/certificates: storage is unavailable: the database "
            f"cannot be reached ({refused}) (OperationalError)"
        ) in log, log
        assert f"the database does not answer ({refused}): /readyz reports not ready" in log
        said = (
            "metrics refresh failed: storage is unavailable: the database cannot be reached "
            f"({refused})"
        )
        deadline = time.monotonic() + 15  # the gauges are read from the store every 10 s
        while said not in fault_server.log():
            assert time.monotonic() < deadline, fault_server.log()
            time.sleep(0.2)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {role} LOGIN")


def test_a_sql_ascii_database_is_used_in_utf_8(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    # initdb under the C locale makes SQL_ASCII databases; reached without
    # ?client_encoding=utf8, psycopg returned bytes for text and the first start failed with
    # "internal error (TypeError: cannot use a string pattern on a bytes-like object)".
    import psycopg
    from sqlalchemy import select

    from certctl.store.models import Actor

    name = f"certctl_sql_ascii_{secrets.token_hex(4)}"
    admin = f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'SQL_ASCII'")
    url = postgres_cluster.url(name)
    booted = bootstrap(_config(tmp_path / "data", url))
    try:
        with booted.services.sessions.begin() as session:
            session.add(
                Actor(id="zoe", name="Zoë Ångström", roles=[], created_at=datetime.now(UTC))
            )
        with booted.services.sessions() as session:
            assert session.scalars(select(Actor.name).where(Actor.id == "zoe")).one() == (
                "Zoë Ångström"
            )
    finally:
        booted.services.engine.dispose()
    # A restart on the same database (migrations done, keys stored) reads it back as well.
    bootstrap(_config(tmp_path / "data", url)).services.engine.dispose()
