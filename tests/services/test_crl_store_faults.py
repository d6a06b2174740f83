"""The CRL served last, while the store fails: never one leaving off a revocation for long.

Real PostgreSQL refusing this process's sessions (``ALLOW_CONNECTIONS false``, its backends
terminated: the database is up, as for the other replicas, and this one is cut off), and the
CRL read back with ``openssl crl``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from certctl.services import crls
from certctl.store.db import PoolTimeout
from tests._tools import require
from tests.services.conftest import Env, _make_env
from tests.services.test_scheduler_pool import _every_connection_taken

PROBLEM = "application/problem+json"


@pytest.fixture
def pg_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """A fresh store on PostgreSQL: the backend replicas share."""
    yield from _make_env(request, tmp_path, "postgresql")


def _superuser(env: Env, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
    url = make_url(env.services.engine.url)
    return psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname=database, autocommit=True
    )


@contextmanager
def _refused(env: Env) -> Iterator[None]:
    """PostgreSQL up but refusing this database's sessions, the pooled ones ended."""
    database = make_url(env.services.engine.url).database
    assert database is not None
    with _superuser(env) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
    try:
        yield
    finally:
        with _superuser(env) as conn:
            conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


def _listed(der: bytes, tmp_path: Path) -> set[int]:
    """The serials ``openssl crl`` reads in a DER CRL."""
    path = tmp_path / "fetched.crl"
    path.write_bytes(der)
    text = subprocess.run(
        [require("openssl"), "crl", "-inform", "DER", "-noout", "-text", "-in", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return {
        int(line.split(":", 1)[1].strip(), 16)
        for line in text.splitlines()
        if line.strip().startswith("Serial Number:")
    }


def _issued(env: Env, name: str) -> tuple[str, int]:
    """The id and serial of a certificate issued for ``name``."""
    with env.client() as client:
        r = client.post("/api/v1/certificates", json={"common_name": name})
    assert r.status_code == 201, r.text
    return r.json()["id"], int(r.json()["serial"], 16)


def test_a_busy_store_never_serves_a_crl_kept_from_before(any_env: Env) -> None:
    # A database that cannot be reached records no revocation, so the CRL served last is
    # served (tests/faults/test_storage.py). A busy one may just have committed one through
    # another process: a CRL kept from before would leave it off; the fetch gets its 503.
    served = crls.served_crl(any_env.services, "default")
    any_env.clock.advance(seconds=crls.CRL_REUSE.total_seconds() + 1)  # due to be signed again
    with _every_connection_taken(any_env.services.engine), pytest.raises(PoolTimeout):
        crls.served_crl(any_env.services, "default")
    again = crls.served_crl(any_env.services, "default")  # a connection free: a new one
    assert again.number > served.number


def test_a_revocation_made_here_before_the_store_fails_is_never_left_off(
    pg_env: Env, tmp_path: Path
) -> None:
    # CRLs are signed at a fetch, not at a revocation: the CRL served last, fetched before
    # the revocation, was served without it (for its 7 days) as soon as the store failed.
    with pg_env.client() as client:
        r = client.post("/api/v1/certificates", json={"common_name": "here.example.com"})
        assert r.status_code == 201, r.text
        cert = r.json()
        before = client.get("/api/v1/issuers/default/crl")
        assert before.status_code == 200, before.text
        revoked = client.post(f"/api/v1/certificates/{cert['id']}/revoke", json={})
        assert revoked.status_code == 200, revoked.text
        with _refused(pg_env):
            during = client.get("/api/v1/issuers/default/crl")
            assert during.status_code == 503, (
                during.status_code,
                _listed(during.content, tmp_path),
            )
            assert during.headers["content-type"].split(";")[0] == PROBLEM
            assert (
                during.json()["detail"] == "storage is unavailable: the database cannot be reached"
            )
            assert during.headers["retry-after"] == "5"  # a PostgreSQL restart's few seconds
        after = client.get("/api/v1/issuers/default/crl")
    assert after.status_code == 200, after.text
    assert _listed(after.content, tmp_path) == {int(cert["serial"], 16)}


def test_a_crl_kept_while_cut_off_is_served_as_long_as_a_cache_could_keep_it(
    pg_env: Env, tmp_path: Path
) -> None:
    # Another replica revokes, then this one is cut off (a partition, pg_hba, a password
    # rotated under it): it cannot know, so the CRL it served last is served only as long
    # as a CDN in front keeps a CRL anyway (CRL_REUSE after the store last showed it
    # current), where it was served for its 7 days without the revocation.
    cert_id, serial = _issued(pg_env, "other.example.com")
    with pg_env.client() as client:
        first = client.get("/api/v1/issuers/default/crl")
        assert first.status_code == 200, first.text
        pg_env.clock.advance(minutes=1)
        shown = client.get("/api/v1/issuers/default/crl")  # the store shows it current
        assert shown.content == first.content
        database = make_url(pg_env.services.engine.url).database
        assert database is not None
        with _superuser(pg_env, database) as conn:  # another replica, or a fix by hand
            updated = conn.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = now(), "
                "revocation_reason = 'keyCompromise' WHERE id = %s",
                (cert_id,),
            )
            assert updated.rowcount == 1
        with _refused(pg_env):
            pg_env.clock.advance(seconds=crls.CRL_REUSE.total_seconds() - 1)
            kept = client.get("/api/v1/issuers/default/crl")
            assert (kept.status_code, kept.content) == (200, first.content), kept.text
            # Signed 10 minutes ago: no cache in front keeps it longer than it would have.
            assert kept.headers["cache-control"] == "public, max-age=0"
            assert kept.headers["etag"] == first.headers["etag"]
            # Not ready meanwhile: a load balancer sends CRL fetches to the other replicas.
            assert client.get("/readyz").status_code == 503
            pg_env.clock.advance(seconds=1)
            ended = client.get("/api/v1/issuers/default/crl")
            assert ended.status_code == 503, (ended.status_code, _listed(ended.content, tmp_path))
        after = client.get("/api/v1/issuers/default/crl")
    assert after.status_code == 200, after.text
    assert _listed(after.content, tmp_path) == {serial}
    assert timedelta(minutes=10) == crls.CRL_REUSE  # as README says


def test_an_intermediate_revoked_here_before_the_store_fails_is_never_left_off(
    pg_env: Env, tmp_path: Path
) -> None:
    # As a certificate: an intermediate's revocation is listed on its parent's CRL.
    with pg_env.client() as client:
        made = client.post("/api/v1/issuers", json={"id": "ops", "parent": "default"})
        assert made.status_code == 201, made.text
        before = client.get("/api/v1/issuers/default/crl")
        assert before.status_code == 200, before.text
        revoked = client.post("/api/v1/issuers/ops/revoke", json={})
        assert revoked.status_code == 200, revoked.text
        with _refused(pg_env):
            during = client.get("/api/v1/issuers/default/crl")
            assert during.status_code == 503, (
                during.status_code,
                _listed(during.content, tmp_path),
            )
        after = client.get("/api/v1/issuers/default/crl")
    assert after.status_code == 200, after.text
    assert len(_listed(after.content, tmp_path)) == 1


@contextmanager
def _read_only(env: Env) -> Iterator[None]:
    """The database read-only for new sessions (``default_transaction_read_only``), the
    pooled ones ended; a superuser's session may still write (``SET … = off``)."""
    database = make_url(env.services.engine.url).database
    assert database is not None
    with _superuser(env) as conn:
        conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
    try:
        yield
    finally:
        with _superuser(env) as conn:
            conn.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
            conn.execute(  # sessions keep the default they started with
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )


def test_a_read_only_store_serves_the_kept_crl_while_it_shows_it_current(
    pg_env: Env, tmp_path: Path
) -> None:
    # Reads still work: each fetch asks the store whether the CRL kept is still the newest.
    # Served past 10 minutes while it is, and a 503 once a revocation shows (a role or
    # session the store still lets write: another replica), where it was served without it.
    cert_id, serial = _issued(pg_env, "ro.example.com")
    with pg_env.client() as client:
        first = client.get("/api/v1/issuers/default/crl")
        assert first.status_code == 200, first.text
        database = make_url(pg_env.services.engine.url).database
        assert database is not None
        with _read_only(pg_env):
            for _ in range(3):  # due to be signed anew each time: the write is refused
                pg_env.clock.advance(seconds=crls.CRL_REUSE.total_seconds())
                kept = client.get("/api/v1/issuers/default/crl")
                assert (kept.status_code, kept.content) == (200, first.content), kept.text
            with _superuser(pg_env, database) as conn:
                conn.execute("SET default_transaction_read_only = off")
                updated = conn.execute(
                    "UPDATE certificates SET status = 'revoked', revoked_at = now(), "
                    "revocation_reason = 'keyCompromise' WHERE id = %s",
                    (cert_id,),
                )
                assert updated.rowcount == 1
            ended = client.get("/api/v1/issuers/default/crl")
            assert ended.status_code == 503, (ended.status_code, _listed(ended.content, tmp_path))
            assert ended.json()["detail"] == "storage is read-only: writes are refused"
            assert ended.headers["retry-after"] == "5"
        after = client.get("/api/v1/issuers/default/crl")
    assert after.status_code == 200, after.text
    assert _listed(after.content, tmp_path) == {serial}
