"""Writes that race with another worker or replica: a conflict (409), never a 500 or a lost update.

Each race is made deterministic with ``Api.concurrent_write``: the other replica's write is
committed on a connection of its own just before this app's statement runs, after the
service's own checks passed.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from sqlalchemy import Connection, delete, event, insert, select, text, update

from certctl.auth.permissions import PERMISSIONS
from certctl.errors import CertctlError, Conflict
from certctl.pki import certs_to_pem, get_profile, key_to_pem
from certctl.services import actors, certificates, issuers
from certctl.services.context import Principal
from certctl.store.db import REVOCATION_LOCK, lock_issuer_rows
from certctl.store.models import Actor, ApiKey, CertificateRecord, Issuer, Role
from tests.api.conftest import Api, PostgresCluster, assert_problem, running_app
from tests.api.test_certificates import _csr_pem

if TYPE_CHECKING:
    from pathlib import Path

    from httpx2 import Response

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# The unit of work may flush the audit row first: the race is lost at the first write.
_AUDIT = "INSERT INTO audit_events"
# Writes serialized by store.db.lock_for_write lose the race when they take the lock.
_LOCK = ("SELECT pg_advisory_xact_lock", "UPDATE managed_services SET name = name WHERE 0")


def _audited(api: Api, action: str, target: str) -> list[dict[str, object]]:
    return [e for e in api.audit() if e["action"] == action and e["target"] == target]


def test_role_created_by_another_replica_first_is_409(api: Api) -> None:
    def other_replica(conn: Connection) -> None:
        conn.execute(
            insert(Role).values(
                id="deployer",
                name="from the other replica",
                permissions=["cert.read"],
                builtin=False,
                created_at=NOW,
            )
        )

    with api.concurrent_write((_AUDIT, "INSERT INTO roles"), other_replica) as fired:
        r = api.post(
            "/api/v1/auth/roles", api.admin_key, json={"id": "deployer", "permissions": []}
        )
    assert fired
    assert "already exists" in assert_problem(r, 409)["detail"]
    # The other replica's role stands, and this request left no audit row claiming success.
    role = api.get("/api/v1/auth/roles/deployer", api.admin_key).json()
    assert role["name"] == "from the other replica"
    assert _audited(api, "role.create", "deployer") == []


def test_actor_created_by_another_replica_first_is_409(api: Api) -> None:
    def other_replica(conn: Connection) -> None:
        conn.execute(insert(Actor).values(id="ci", name="other", roles=[], created_at=NOW))

    with api.concurrent_write((*_LOCK, _AUDIT, "INSERT INTO actors"), other_replica) as fired:
        r = api.post("/api/v1/auth/actors", api.admin_key, json={"id": "ci", "roles": []})
    assert fired
    assert_problem(r, 409)
    assert api.get("/api/v1/auth/actors/ci", api.admin_key).json()["name"] == "other"


def test_issuer_created_by_another_replica_first_is_409(api: Api) -> None:
    def other_replica(conn: Connection) -> None:
        conn.execute(
            text(
                "INSERT INTO issuers (id, name, subject, certificate_pem, chain_pem, wrapped_key,"
                " key_type, not_after, created_at) SELECT 'team-ca', 'other', subject,"
                " certificate_pem, chain_pem, wrapped_key, key_type, not_after, created_at"
                " FROM issuers WHERE id = 'default'"
            )
        )

    with api.concurrent_write((_AUDIT, "INSERT INTO issuers"), other_replica) as fired:
        r = api.post("/api/v1/issuers", api.admin_key, json={"id": "team-ca"})
    assert fired
    assert_problem(r, 409)
    assert api.get("/api/v1/issuers/team-ca", api.admin_key).json()["name"] == "other"


def test_key_minted_for_an_actor_deleted_meanwhile_is_404(api: Api) -> None:
    # Minting takes the lock delete_actor takes: the deletion lands before the actor is read.
    api.create_actor("ci", [])

    def other_replica(conn: Connection) -> None:
        conn.execute(delete(ApiKey).where(ApiKey.actor_id == "ci"))
        conn.execute(delete(Actor).where(Actor.id == "ci"))

    before = api.counts()
    with api.concurrent_write((*_LOCK, _AUDIT, "INSERT INTO api_keys"), other_replica) as fired:
        r = api.post("/api/v1/auth/apikeys", api.admin_key, json={"actor_id": "ci"})
    assert fired
    assert assert_problem(r, 404)["detail"] == "actor ci not found"
    assert api.counts()["api_keys"] == before["api_keys"]


def test_key_named_as_one_another_replica_minted_meanwhile_is_409(api: Api) -> None:
    # Two mints of one name at once both found it free and both wrote a live key.
    api.create_actor("ci", [])

    def other_replica(conn: Connection) -> None:
        conn.execute(
            insert(ApiKey).values(
                id="0123456789abcdef",
                actor_id="ci",
                name="deploy",
                secret_sha256=b"\0" * 32,
                created_at=NOW,
            )
        )

    with api.concurrent_write((*_LOCK, _AUDIT, "INSERT INTO api_keys"), other_replica) as fired:
        body = {"actor_id": "ci", "name": "deploy"}
        r = api.post("/api/v1/auth/apikeys", api.admin_key, json=body)
    assert fired
    assert "(id 0123456789abcdef)" in assert_problem(r, 409)["detail"]
    assert [
        k["id"]
        for k in api.get("/api/v1/auth/apikeys", api.admin_key, params={"actor_id": "ci"}).json()[
            "items"
        ]
    ] == ["0123456789abcdef"]


def test_certificate_revoked_by_another_replica_meanwhile_is_409(api: Api) -> None:
    cert = api.issue()

    def other_replica(conn: Connection) -> None:
        conn.execute(
            update(CertificateRecord)
            .where(CertificateRecord.id == cert["id"])
            .values(status="revoked", revoked_at=NOW, revocation_reason="keyCompromise")
        )

    with api.concurrent_write((*_LOCK, _AUDIT, "UPDATE certificates"), other_replica) as fired:
        r = api.post(
            f"/api/v1/certificates/{cert['id']}/revoke",
            api.admin_key,
            json={"reason": "superseded"},
        )
    assert fired
    assert "already revoked" in assert_problem(r, 409)["detail"]
    # The first revocation stands: its reason and time are what the CRL carries.
    stored = api.get(f"/api/v1/certificates/{cert['id']}", api.admin_key).json()
    assert stored["revocation_reason"] == "keyCompromise"
    assert stored["revoked_at"] == NOW.isoformat()
    assert _audited(api, "certificate.revoke", cert["id"]) == []


def test_two_admins_demoting_each_other_at_once_leave_one_admin(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas each take r-admin from the other admin at the same moment.

    Each request checks that another actor still holds r-admin; without serializing the two,
    both checks pass before either commits and nobody is left to administer the system.
    """
    api.create_actor("admin2", ["r-admin"])
    everything = frozenset(PERMISSIONS)
    callers = {
        "admin": Principal("admin", ("r-admin",), everything, "api_key", "replica-1"),
        "admin2": Principal("admin2", ("r-admin",), everything, "api_key", "replica-2"),
    }
    both_checked = threading.Barrier(2)
    check = actors._check_admin_remains

    def check_then_wait(session: Any, losing: str) -> None:
        check(session, losing)
        # Give the other request every chance to run its own check before this one commits;
        # serialized, it cannot get there, and this wait runs out.
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait(timeout=2)

    monkeypatch.setattr(actors, "_check_admin_remains", check_then_wait)
    outcomes: dict[str, object] = {}

    def demote(caller: str, target: str) -> None:
        try:
            actors.update_actor(api.services, callers[caller], target, None, [])
            outcomes[caller] = "demoted"
        except CertctlError as exc:
            outcomes[caller] = exc

    threads = [
        threading.Thread(target=demote, args=("admin", "admin2")),
        threading.Thread(target=demote, args=("admin2", "admin")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(map(str, outcomes.values())).count("demoted") == 1, outcomes
    refused = next(o for o in outcomes.values() if o != "demoted")
    assert isinstance(refused, Conflict)
    assert "last actor holding r-admin" in refused.detail
    with api.services.sessions() as session:
        holders = [a.id for a in session.scalars(select(Actor)) if "r-admin" in a.roles]
    assert len(holders) == 1, holders


def _revoked_meanwhile(
    api: Api, reason: str, reason_meanwhile: str
) -> tuple[Response, dict[str, Any]]:
    """Revoke new intermediate ``sub`` for ``reason`` while another replica revokes it."""
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": "sub", "parent": "default"})
    assert r.status_code == 201, r.text

    def other_replica(conn: Connection) -> None:
        conn.execute(
            update(Issuer)
            .where(Issuer.id == "sub")
            .values(revoked_at=NOW, revocation_reason=reason_meanwhile, parent_id="default")
        )

    # A replica that takes no revocation lock (an older release): slipped in after this
    # request read the issuer, before it locks the rows it writes (PostgreSQL), or before
    # its write lock (SQLite, where it reads under that lock).
    slip_before = (_LOCK[1], "SELECT id FROM issuers WHERE id = ANY")
    with api.concurrent_write(slip_before, other_replica) as fired:
        r = api.post("/api/v1/issuers/sub/revoke", api.admin_key, json={"reason": reason})
    assert fired
    return r, api.get("/api/v1/issuers/sub", api.admin_key).json()


def test_issuer_revoked_by_another_replica_meanwhile_is_409(api: Api) -> None:
    r, stored = _revoked_meanwhile(api, "superseded", "keyCompromise")
    assert assert_problem(r, 409)["detail"] == (
        "issuer sub is already revoked (keyCompromise, on 2026-01-01 00:00Z): only "
        "keyCompromise or cACompromise can replace a revocation's reason, and it was revoked "
        "for a compromise already"
    )
    # The first revocation stands: its reason and time are what the parent's CRL carries.
    assert (stored["revocation_reason"], stored["revoked_at"]) == ("keyCompromise", NOW.isoformat())
    assert _audited(api, "issuer.revoke", "sub") == []


def test_issuer_revoked_by_another_replica_meanwhile_still_gets_key_compromise(api: Api) -> None:
    # Its reason replaced as if the other revocation had come first (it did): its date kept.
    r, stored = _revoked_meanwhile(api, "keyCompromise", "cessationOfOperation")
    assert r.status_code == 200, r.text
    assert r.json() == stored
    assert (stored["revocation_reason"], stored["revoked_at"]) == ("keyCompromise", NOW.isoformat())
    [event] = _audited(api, "issuer.revoke", "sub")
    assert (
        event["detail"] == "keyCompromise (reason was cessationOfOperation, revocation date kept)"
    )


def test_certificate_revoked_while_being_renewed_gets_no_successor(api: Api) -> None:
    cert = api.issue()
    before = api.counts()

    def other_replica(conn: Connection) -> None:
        conn.execute(
            update(CertificateRecord)
            .where(CertificateRecord.id == cert["id"])
            .values(status="revoked", revoked_at=NOW, revocation_reason="keyCompromise")
        )

    with api.concurrent_write(
        ("UPDATE certificates", "INSERT INTO certificates", _AUDIT), other_replica
    ) as fired:
        r = api.post(f"/api/v1/certificates/{cert['id']}/renew", api.admin_key)
    assert fired
    assert "revoked and cannot be renewed" in assert_problem(r, 409)["detail"]
    assert api.counts()["certificates"] == before["certificates"]


def test_role_edited_while_another_replica_deletes_it_is_404(api: Api) -> None:
    api.create_role("deployer", ["cert.read"])
    before = api.counts()

    def other_replica(conn: Connection) -> None:
        conn.execute(delete(Role).where(Role.id == "deployer"))

    # Before the fix the edit read the role, the other replica deleted it, and the UPDATE
    # matched no row: a StaleDataError, answered 500.
    with api.concurrent_write((*_LOCK, _AUDIT, "UPDATE roles"), other_replica) as fired:
        r = api.request(
            "PUT", "/api/v1/auth/roles/deployer", api.admin_key, json={"permissions": []}
        )
    assert fired
    assert "role deployer not found" in assert_problem(r, 404)["detail"]
    assert api.counts() == {**before, "roles": before["roles"] - 1}
    assert _audited(api, "role.edit", "deployer") == []


def test_key_revoked_while_another_replica_deletes_its_actor_is_404(api: Api) -> None:
    api.create_actor("ci", [])
    key = api.mint_key("ci")
    before = api.counts()

    def other_replica(conn: Connection) -> None:
        conn.execute(delete(ApiKey).where(ApiKey.actor_id == "ci"))
        conn.execute(delete(Actor).where(Actor.id == "ci"))

    # Before the fix the revocation read the key, the other replica deleted the actor and its
    # keys, and the UPDATE matched no row: a StaleDataError, answered 500.
    with api.concurrent_write((*_LOCK, _AUDIT, "UPDATE api_keys"), other_replica) as fired:
        r = api.request("DELETE", f"/api/v1/auth/apikeys/{key['id']}", api.admin_key)
    assert fired
    assert f"API key {key['id']} not found" in assert_problem(r, 404)["detail"]
    assert api.counts() == {
        **before,
        "actors": before["actors"] - 1,
        "api_keys": before["api_keys"] - 1,
    }
    assert _audited(api, "apikey.revoke", key["id"]) == []


def test_key_revoked_by_another_replica_meanwhile_keeps_the_first_time(api: Api) -> None:
    key = api.mint_key("admin")

    def other_replica(conn: Connection) -> None:
        conn.execute(update(ApiKey).where(ApiKey.id == key["id"]).values(revoked_at=NOW))

    with api.concurrent_write((*_LOCK, _AUDIT, "UPDATE api_keys"), other_replica) as fired:
        r = api.request("DELETE", f"/api/v1/auth/apikeys/{key['id']}", api.admin_key)
    assert fired
    assert r.status_code == 200, r.text
    assert r.json()["revoked_at"] == NOW.isoformat()
    assert api.get(f"/api/v1/auth/apikeys/{key['id']}", api.admin_key).json()["revoked_at"] == (
        NOW.isoformat()
    )


def test_key_compromise_revokes_a_renewal_committed_while_it_walked_the_chain(api: Api) -> None:
    """Another replica renews the chain's last link while keyCompromise is revoking the chain.

    The renewal commits after the revocation has listed the chain (A, B, C) but before it
    revokes C. On PostgreSQL the revocation then waits for C's row lock and revokes C; the
    successor D, certifying the compromised key, must go onto the CRL too. (On SQLite the
    revocation holds the write lock from its first write: the renewal can only land before.)
    """
    csr_pem, _key = _csr_pem("leaked.example.com")
    a = api.post("/api/v1/certificates", api.admin_key, json={"csr": csr_pem}).json()
    b = api.post(f"/api/v1/certificates/{a['id']}/renew", api.admin_key).json()
    c = api.post(f"/api/v1/certificates/{b['id']}/renew", api.admin_key).json()
    replica = Principal("admin", ("r-admin",), frozenset(PERMISSIONS), "api_key", "replica-2")
    renewed: list[str] = []

    def revokes_c(statement: str, parameters: Any) -> bool:
        if api.backend == "sqlite":
            # Its first write (the revocation lock): the only moment another writer can commit.
            return statement.lstrip().startswith(_LOCK)
        if not statement.lstrip().startswith("UPDATE certificates SET status"):
            return False
        values = parameters.values() if isinstance(parameters, dict) else parameters
        return c["id"] in list(values)

    def slip_in(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if renewed or not revokes_c(statement, parameters):
            return
        renewed.append(
            certificates.renew_certificate(api.services, replica, c["id"], None).record.id
        )

    event.listen(api.services.engine, "before_cursor_execute", slip_in)
    try:
        r = api.post(
            f"/api/v1/certificates/{a['id']}/revoke",
            api.admin_key,
            json={"reason": "keyCompromise"},
        )
    finally:
        event.remove(api.services.engine, "before_cursor_execute", slip_in)
    assert renewed
    assert r.status_code == 200, r.text
    assert sorted(r.json()["also_revoked"]) == sorted([b["id"], c["id"], renewed[0]])
    d = api.get(f"/api/v1/certificates/{renewed[0]}", api.admin_key).json()
    assert (d["status"], d["revocation_reason"]) == ("revoked", "keyCompromise")
    crl = x509.load_der_x509_crl(api.get("/api/v1/issuers/default/crl").content)
    assert int(d["serial"], 16) in {entry.serial_number for entry in crl}


def test_two_key_compromise_revocations_of_one_chain_at_once_leave_one_409(api: Api) -> None:
    """Two replicas revoke two links of one chain for keyCompromise at the same moment.

    Each had revoked its own link (and held its row lock, PostgreSQL) before it went on to
    the other's: unserialized, each waited for the other, PostgreSQL aborted one as a
    deadlock and its client got a 503 saying the database could not be reached.
    """
    csr_pem, _key = _csr_pem("leaked.example.com")
    a = api.post("/api/v1/certificates", api.admin_key, json={"csr": csr_pem}).json()
    b = api.post(f"/api/v1/certificates/{a['id']}/renew", api.admin_key).json()
    c = api.post(f"/api/v1/certificates/{b['id']}/renew", api.admin_key).json()
    both_revoked_their_own = threading.Barrier(2)
    writes: dict[int, int] = {}

    def hold_after_the_first_revocation(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if not statement.lstrip().startswith("UPDATE certificates SET status"):
            return
        me = threading.get_ident()
        writes[me] = writes.get(me, 0) + 1
        if writes[me] == 2:  # about to revoke the other's link
            # Serialized, the other request cannot have revoked its own yet: this runs out.
            with contextlib.suppress(threading.BrokenBarrierError):
                both_revoked_their_own.wait(timeout=2)

    replicas = {
        a["id"]: Principal("admin", ("r-admin",), frozenset(PERMISSIONS), "api_key", "replica-1"),
        c["id"]: Principal("admin", ("r-admin",), frozenset(PERMISSIONS), "api_key", "replica-2"),
    }
    outcomes: dict[str, object] = {}

    def revoke(cert_id: str) -> None:
        try:
            outcomes[cert_id] = certificates.revoke_certificate(
                api.services, replicas[cert_id], cert_id, "keyCompromise"
            )
        except Exception as exc:
            outcomes[cert_id] = exc

    event.listen(api.services.engine, "before_cursor_execute", hold_after_the_first_revocation)
    try:
        threads = [threading.Thread(target=revoke, args=(i,)) for i in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        event.remove(api.services.engine, "before_cursor_execute", hold_after_the_first_revocation)
    done = [o for o in outcomes.values() if isinstance(o, certificates.Revocation)]
    refused = [o for o in outcomes.values() if not isinstance(o, certificates.Revocation)]
    assert len(done) == 1, outcomes
    assert len(refused) == 1, outcomes
    assert isinstance(refused[0], Conflict), refused[0]
    assert "already revoked" in refused[0].detail
    for x in (a, b, c):
        got = api.get(f"/api/v1/certificates/{x['id']}", api.admin_key).json()
        assert (got["status"], got["revocation_reason"]) == ("revoked", "keyCompromise")


def test_no_free_database_connection_is_a_503_not_a_500(api: Api) -> None:
    # Every pooled connection busy (writes queued behind SQLite's write lock, now that every
    # mutating route runs in a thread; a slow PostgreSQL): SQLAlchemy's pool timeout is no
    # DB-API error, and the request was answered 500 "internal error" with a traceback.
    engine = api.services.engine
    pool: Any = engine.pool
    held = [engine.connect() for _ in range(pool.size() + pool._max_overflow)]
    saved, pool._timeout = pool._timeout, 0.05
    try:
        r = api.get("/api/v1/certificates", api.admin_key)
        body = assert_problem(r, 503)
        assert body["detail"] == "storage is busy: no database connection came free in time"
        # A burst passes: the client is told when to come back (database-pool-size smaller
        # than the threads that may hold a connection makes such bursts expected).
        assert r.headers["Retry-After"] == "2"
    finally:
        pool._timeout = saved
        for connection in held:
            connection.close()
    assert api.get("/api/v1/certificates", api.admin_key).status_code == 200


def _key_twins(api: Api, pair: int) -> tuple[str, str]:
    """Intermediate ``sub-N`` below ``default``, and ``twin-N``: ``default``'s second
    certificate of its key, imported (as an intermediate re-issued with its key)."""
    sub, twin = f"sub-{pair}", f"twin-{pair}"
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": sub, "parent": "default"})
    assert r.status_code == 201, r.text
    sub_ca = issuers.load_issuer(api.services, sub)
    default = issuers.load_issuer(api.services, "default")
    again = default.issue(
        sub_ca.private_key.public_key(),
        sub_ca.certificate.subject,
        profile=get_profile("intermediate"),
        validity=timedelta(days=30),
        now=api.clock(),
    ).certificate
    r = api.post(
        "/api/v1/issuers",
        api.admin_key,
        json={
            "id": twin,
            "certificate_pem": certs_to_pem([again, default.certificate]).decode(),
            "private_key_pem": key_to_pem(sub_ca.private_key).decode(),
        },
    )
    assert r.status_code == 201, r.text
    return sub, twin


@pytest.mark.parametrize("first_reason", ["superseded", "keyCompromise"])
def test_an_issuer_revocation_racing_a_key_compromise_of_its_twin_never_deadlocks(
    api: Api, first_reason: str
) -> None:
    """Two requests at once revoke ``sub`` and, for keyCompromise, ``twin`` (its key's other
    certificate, the same parent): the second revokes ``sub`` too.

    Each locked its own row, then the parent's (migration 0020's count), then the other's:
    PostgreSQL found each waiting for the other, rolled one back, and its client got 503
    'this write deadlocked' (most pairs of requests). Now each takes the issuer rows it
    writes in one order before the first write: one waits for the other, and is answered
    200 or 409 from what the first wrote. SQLite: writers queue on its lock, never busy.
    """
    pairs = [_key_twins(api, pair) for pair in range(20)]
    answers: list[tuple[str, int, str]] = []

    def revoke(issuer_id: str, reason: str, start: threading.Barrier) -> None:
        start.wait(timeout=10)
        r = api.post(f"/api/v1/issuers/{issuer_id}/revoke", api.admin_key, json={"reason": reason})
        answers.append((issuer_id, r.status_code, r.text))

    for sub, twin in pairs:
        start = threading.Barrier(2)
        threads = [
            threading.Thread(target=revoke, args=(sub, first_reason, start)),
            threading.Thread(target=revoke, args=(twin, "keyCompromise", start)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(answers) == 2 * len(pairs)
    busy = [a for a in answers if a[1] not in (200, 409)]
    assert busy == [], f"{len(busy)} of {len(answers)}: {busy[0]}"
    for sub, twin in pairs:
        # Whichever came first, the key is compromised under both ids. The twin's
        # keyCompromise always lands (revoking it, or upgrading a superseded sub); the
        # other is a 409 when the first had revoked what it asked already.
        statuses = {a[0]: a[1] for a in answers if a[0] in (sub, twin)}
        assert 200 in statuses.values(), answers
        if first_reason == "superseded":
            assert statuses[twin] == 200, answers
        for issuer_id in (sub, twin):
            got = api.get(f"/api/v1/issuers/{issuer_id}", api.admin_key).json()
            assert (got["status"], got["revocation_reason"]) == ("revoked", "keyCompromise")


@pytest.mark.parametrize("api", ["postgresql"], indirect=True)
def test_issuer_rows_a_revocation_locks_hold_up_crl_numbering_not_issuance(api: Api) -> None:
    """lock_issuer_rows takes what the revocation's UPDATEs take (FOR NO KEY UPDATE): a CRL
    numbered under the issuer waits for it; issuance's foreign-key check (FOR KEY SHARE) does
    not, as it did not wait for those UPDATEs. FOR UPDATE would hold up every issuance under
    the issuer, and deadlock with a group commit holding one issuer and wanting another."""
    done: dict[str, int] = {}

    def issue() -> None:
        done["issue"] = api.post(
            "/api/v1/certificates", api.admin_key, json={"common_name": "during.example.com"}
        ).status_code

    def crl() -> None:
        done["crl"] = api.get("/api/v1/issuers/default/crl").status_code

    with api.services.engine.connect() as holder, holder.begin():
        lock_issuer_rows(holder, ["default", None])
        issuing = threading.Thread(target=issue)
        numbering = threading.Thread(target=crl)
        issuing.start()
        numbering.start()
        issuing.join(10)
        assert done.get("issue") == 201, done
        numbering.join(0.5)
        assert "crl" not in done  # waits for the row
    numbering.join(10)
    assert done == {"issue": 201, "crl": 200}


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("lock_timeout", "waited for a lock held longer than the database's lock_timeout"),
        ("statement_timeout", "ran past the database's statement_timeout"),
    ],
)
def test_a_revocation_waiting_past_the_databases_timeout_is_busy_not_unreachable(
    postgres_cluster: PostgresCluster, tmp_path: Path, setting: str, words: str
) -> None:
    """Revocations run one at a time (REVOCATION_LOCK): an issuer revocation waits for a
    keyCompromise of a long renewal chain (~6 s at 10,000 certificates). A lock_timeout or
    statement_timeout set for the role or database (``ALTER ROLE … SET``) ends the wait:
    it answered 503 'the database cannot be reached', with no Retry-After, though the
    database answered. Now 'storage is busy', Retry-After 1, nothing of it written."""
    database = postgres_cluster.create_database()
    url = postgres_cluster.url(database)
    with running_app("postgresql", tmp_path / "data", url) as api:
        r = api.post("/api/v1/issuers", api.admin_key, json={"id": "sub", "parent": "default"})
        assert r.status_code == 201, r.text
        engine = api.services.engine
        with engine.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" SET {setting} = 300'))
            conn.commit()
        engine.dispose()  # the pool's next sessions start under the setting
        before = api.counts()
        # Another revocation in progress (another replica's long keyCompromise).
        with engine.connect() as holder, holder.begin():
            holder.execute(text(f"SET LOCAL {setting} = 0"))
            holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REVOCATION_LOCK})
            r = api.post("/api/v1/issuers/sub/revoke", api.admin_key, json={})
        problem = assert_problem(r, 503)
        assert problem["detail"].startswith("storage is busy: "), problem
        assert words in problem["detail"], problem
        assert r.headers["Retry-After"] == "1"
        assert api.counts() == before
        assert api.get("/api/v1/issuers/sub", api.admin_key).json()["status"] == "active"
        # Once the other revocation is done, the retry goes through.
        r = api.post("/api/v1/issuers/sub/revoke", api.admin_key, json={})
        assert r.status_code == 200, r.text
