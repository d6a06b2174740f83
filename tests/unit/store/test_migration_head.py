"""The start-up fast path's idea of the newest migration matches Alembic's."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text

from certctl.errors import CertctlError
from certctl.pki import (
    KeyType,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    format_serial,
    generate_private_key,
)
from certctl.services import crls, service_reconcile
from certctl.store import db


def test_head_revision_matches_alembic() -> None:
    heads = ScriptDirectory.from_config(_config()).get_heads()
    assert heads == [db._head_revision()]


def test_the_readmes_upgrading_section_names_the_newest_migration() -> None:
    # What an upgrade's log line says it applied, the README says it adds: its list stopped
    # at 0026 while the ACME migrations went on to 0032.
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme[readme.index("### Upgrading") :]
    section = section[: section.index("\n### ")]
    assert db._head_revision() in section


def _at_head(engine: Engine) -> bool:
    return db._stored_revisions(engine) == [db._head_revision()]


# A certificate row as every certctl writes it; certctl before 0005 knows no renewed_by.
CERTIFICATE_ROW = (
    "INSERT INTO certificates (id, issuer_id, serial, common_name, subject, sans, profile,"
    " status, not_before, not_after, certificate_pem, created_at, created_by, renewed_from)"
    " VALUES (:id, 'default', :id, 'x', 'CN=x', '{}', 'server', :status,"
    " '2026-01-01 00:00:00', '2027-01-01 00:00:00', 'pem', '2026-01-01 00:00:00', 'admin',"
    " :renewed_from)"
)
ISSUER_ROW = (
    "INSERT INTO issuers (id, name, subject, certificate_pem, chain_pem, wrapped_key,"
    " key_type, not_after, created_at) VALUES ('default', 'd', 'CN=d', 'pem', '',"
    " :key, 'ec-p256', '2027-01-01 00:00:00', '2026-01-01 00:00:00')"
)


def renewed_by(engine: Engine) -> dict[str, str | None]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, renewed_by FROM certificates"))
        return {row[0]: row[1] for row in rows}


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(db._MIGRATIONS))
    return config


def downgrade_store(engine: Engine, revision: str) -> None:
    """Take a store at head back to ``revision`` with the migrations' own downgrades."""
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _to_0004(engine: Engine) -> None:
    """Take a store at head back to revision 0004 (before certificates.renewed_by)."""
    downgrade_store(engine, "0004")


def test_migrate_skips_alembic_only_at_head(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    assert not _at_head(engine)  # empty database
    db.migrate(engine)
    assert _at_head(engine)
    _to_0004(engine)
    assert not _at_head(engine)
    db.migrate(engine)
    assert _at_head(engine)
    with engine.connect() as connection:
        indexes = connection.execute(
            text(
                "SELECT name FROM sqlite_master WHERE tbl_name = 'certificates' AND type = 'index'"
            )
        ).scalars()
        names = set(indexes)
    assert "ix_certificates_counts" in names
    assert "ix_certificates_issuer_status_not_after" not in names


def test_migrate_says_in_one_line_what_it_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    head = db._head_revision()
    with caplog.at_level(logging.DEBUG):
        db.migrate(engine)
        _to_0004(engine)
        caplog.clear()  # the downgrade's own Alembic lines
        db.migrate(engine)
        db.migrate(engine)  # at head: nothing to say
    [record] = caplog.records
    assert (record.name, record.levelno) == ("certctl.store", logging.INFO)
    # How long it took: a migration that runs ANALYZE (0014) or rewrites a table is slow on a
    # large store, and the operator waiting for the server to start needs to see it.
    assert re.fullmatch(
        rf"migrated the database schema from 0004: applied 0005 to {head} in \d+\.\d\d s",
        record.getMessage(),
    ), record.getMessage()


def test_migrate_from_an_empty_database_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    with caplog.at_level(logging.INFO):
        db.migrate(engine)
    [record] = caplog.records
    assert record.name == "certctl.store"
    assert re.fullmatch(
        rf"created the database schema: applied 0001 to {db._head_revision()} in \d+\.\d\d s",
        record.getMessage(),
    ), record.getMessage()
    assert logging.getLogger("alembic").level == logging.NOTSET  # put back as it was


def test_0005_back_fills_the_successor_of_each_renewed_certificate(tmp_path: Path) -> None:
    """Renewals made before 0005 are found: the latest live successor is recorded."""
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    _to_0004(engine)
    with engine.begin() as connection:
        connection.execute(text(ISSUER_ROW), {"key": b"\0"})
        for cert_id, status, renewed_from in (
            ("a1", "active", None),  # renewed twice: a3 is the latest
            ("a2", "active", "a1"),
            ("a3", "active", "a1"),
            ("b1", "active", None),  # its only successor was revoked: not renewed
            ("b2", "revoked", "b1"),
            ("c1", "active", None),  # never renewed
        ):
            connection.execute(
                text(CERTIFICATE_ROW),
                {"id": cert_id, "status": status, "renewed_from": renewed_from},
            )
    db.migrate(engine)
    assert renewed_by(engine) == {
        "a1": "a3",
        "a2": None,
        "a3": None,
        "b1": None,
        "b2": None,
        "c1": None,
    }


def test_a_store_migrated_by_the_first_0005_gets_the_renewed_from_index(tmp_path: Path) -> None:
    # 0005 as first released (0e27081) had no index on renewed_from; it was added to 0005
    # later, so such a store, already at 0005, never got it: revocations scanned the table.
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    downgrade_store(engine, "0005")
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_certificates_renewed_from"))
    db.migrate(engine)
    assert _at_head(engine)
    with engine.connect() as connection:
        plan = connection.execute(
            text("EXPLAIN QUERY PLAN SELECT id FROM certificates WHERE renewed_from = 'x'")
        ).all()
    assert "ix_certificates_renewed_from" in str(plan), plan


def test_a_renewal_written_by_an_older_replica_records_its_successor(tmp_path: Path) -> None:
    # A rolling update: a replica still running certctl from before 0005 renews after a new
    # one migrated the shared store. Its INSERT says nothing of renewed_by; before 0007 the
    # renewed certificate stayed 'expiring' until it expired.
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    with engine.begin() as connection:
        connection.execute(text(ISSUER_ROW), {"key": b"\0"})
        for cert_id, status, renewed_from in (
            ("a1", "active", None),
            ("a2", "active", "a1"),  # renewed by the old replica
            ("b1", "active", None),
            ("b2", "revoked", "b1"),  # a revoked row renews nothing
        ):
            connection.execute(
                text(CERTIFICATE_ROW),
                {"id": cert_id, "status": status, "renewed_from": renewed_from},
            )
    assert renewed_by(engine) == {"a1": "a2", "a2": None, "b1": None, "b2": None}


def test_0007_back_fills_renewals_older_replicas_wrote_after_0005(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    downgrade_store(engine, "0006")  # no trigger: what a store at 0005 or 0006 holds
    with engine.begin() as connection:
        connection.execute(text(ISSUER_ROW), {"key": b"\0"})
        for cert_id, renewed_from in (("a1", None), ("a2", "a1"), ("a3", "a1")):
            connection.execute(
                text(CERTIFICATE_ROW),
                {"id": cert_id, "status": "active", "renewed_from": renewed_from},
            )
    assert renewed_by(engine)["a1"] is None
    db.migrate(engine)
    assert renewed_by(engine) == {"a1": "a3", "a2": None, "a3": None}


def upgrade_from_0007_numbers_crls(engine: Engine) -> None:
    """A store at 0007 holding an issuer gets its CRL number counter (0008), which counts."""
    db.migrate(engine)
    downgrade_store(engine, "0007")
    with engine.begin() as connection:
        connection.execute(text(ISSUER_ROW), {"key": b"\0"})
    db.migrate(engine)
    assert _at_head(engine)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    floor = int(now.timestamp()) * 10**6
    with engine.begin() as connection:
        assert connection.execute(text("SELECT crl_number FROM issuers")).scalar() == 0
        numbers = [crls._next_crl_number(connection, "default", now) for _ in range(2)]
        # A clock stepped back an hour: the count goes on.
        numbers.append(crls._next_crl_number(connection, "default", now - timedelta(hours=1)))
    assert numbers == [floor, floor + 1, floor + 2]


def test_0008_adds_the_crl_number_counter_to_an_sqlite_store(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    upgrade_from_0007_numbers_crls(engine)


def test_0009_adds_the_expiring_serial_to_services_and_takes_it_back(tmp_path: Path) -> None:
    """Services stored before 0009 keep their row; one with a certificate is marked unknown.

    Whether "expiring" was sent for it depends on cert-rotate-before, which no column holds:
    its first pass decides (tests/services: test_an_upgrade_to_0009_tells_expiring_...).
    """
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    downgrade_store(engine, "0008")
    with engine.begin() as connection:
        for name, serial, not_after in (
            ("web", "ab", "2027-01-01 00:00:00"),
            ("off", None, None),  # TLS disabled: no certificate
        ):
            connection.execute(
                text(
                    "INSERT INTO managed_services (name, spec, generation, created_at,"
                    " updated_at, reconciled_generation, conditions, delivered, attempts,"
                    " serial, not_after) VALUES (:name, '{}', 1, '2026-01-01 00:00:00',"
                    " '2026-01-01 00:00:00', 1, '{}', '{}', 0, :serial, :not_after)"
                ),
                {"name": name, "serial": serial, "not_after": not_after},
            )
    db.migrate(engine)
    assert _at_head(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT name, serial, expiring_serial FROM managed_services ORDER BY name")
        )
        assert rows.all() == [
            ("off", None, None),
            ("web", "ab", service_reconcile.EXPIRING_UNKNOWN),
        ]
    downgrade_store(engine, "0008")
    with engine.connect() as connection:
        columns = connection.execute(text("PRAGMA table_info(managed_services)")).all()
    assert "expiring_serial" not in {c[1] for c in columns}
    assert {"name", "serial"} <= {c[1] for c in columns}  # negative twin: the table is read


def revocable_issuers_from_0009(engine: Engine) -> None:
    """Issuers stored before 0010 keep their row, start unrevoked, and lose the columns again."""
    db.migrate(engine)
    downgrade_store(engine, "0009")
    with engine.begin() as connection:
        connection.execute(text(ISSUER_ROW), {"key": b"\0"})
    db.migrate(engine)
    assert _at_head(engine)
    columns = "id, parent_id, revoked_at, revocation_reason"
    with engine.begin() as connection:
        rows = connection.execute(text(f"SELECT {columns} FROM issuers"))
        assert rows.all() == [("default", None, None, None)]
        connection.execute(
            text(
                "UPDATE issuers SET parent_id = 'root', revocation_reason = 'cACompromise',"
                " revoked_at = :at"
            ),
            {"at": datetime(2026, 6, 1, tzinfo=UTC)},
        )
    downgrade_store(engine, "0009")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id, not_after FROM issuers")).all()  # row kept
        columns_left = connection.execute(text("SELECT * FROM issuers")).keys()
    assert not {"parent_id", "revoked_at", "revocation_reason"} & set(columns_left)
    assert "crl_number" in columns_left  # negative twin: the table's columns are read
    db.migrate(engine)
    assert _at_head(engine)


def test_0010_adds_issuer_revocation_and_takes_it_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    revocable_issuers_from_0009(engine)


def test_0011_adds_the_retired_ca_to_services_and_takes_it_back(tmp_path: Path) -> None:
    """Services stored before 0011 keep their row, with no CA being retired."""
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    downgrade_store(engine, "0010")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO managed_services (name, spec, generation, created_at, updated_at,"
                " reconciled_generation, conditions, delivered, attempts, ca_pem) VALUES"
                " ('web', '{}', 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00', 1, '{}', '{}',"
                " 0, 'pem')"
            )
        )
    db.migrate(engine)
    assert _at_head(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT name, ca_pem, retired_ca_pem, retired_ca_until FROM managed_services")
        )
        assert rows.all() == [("web", "pem", None, None)]
    downgrade_store(engine, "0010")
    with engine.connect() as connection:
        columns = {c[1] for c in connection.execute(text("PRAGMA table_info(managed_services)"))}
    assert not columns & {"retired_ca_pem", "retired_ca_until"}
    assert {"name", "ca_pem"} <= columns


def test_0015_adds_the_earlier_retired_cas_to_services_and_takes_them_back(
    tmp_path: Path,
) -> None:
    """Services stored before 0015 keep their row and their one retired CA."""
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    downgrade_store(engine, "0014")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO managed_services (name, spec, generation, created_at, updated_at,"
                " reconciled_generation, conditions, delivered, attempts, ca_pem,"
                " retired_ca_pem, retired_ca_until) VALUES ('web', '{}', 1,"
                " '2026-01-01 00:00:00', '2026-01-01 00:00:00', 1, '{}', '{}', 0, 'pem',"
                " 'old', '2026-01-02 00:00:00')"
            )
        )
    db.migrate(engine)
    assert _at_head(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT name, retired_ca_pem, earlier_retired_cas FROM managed_services")
        )
        assert rows.all() == [("web", "old", None)]
    downgrade_store(engine, "0014")
    with engine.connect() as connection:
        columns = {c[1] for c in connection.execute(text("PRAGMA table_info(managed_services)"))}
    assert "earlier_retired_cas" not in columns
    assert {"name", "retired_ca_pem", "retired_ca_until"} <= columns


def test_0016_counts_service_changes_on_sqlite_and_takes_the_counter_back(
    tmp_path: Path,
) -> None:
    """Stores from before 0016 get the counter at 0; a service inserted bumps it."""
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    downgrade_store(engine, "0015")
    with engine.connect() as connection:
        names = {r[0] for r in connection.execute(text("SELECT name FROM sqlite_master"))}
    assert "service_generation" not in names
    assert not {n for n in names if n.startswith("service_generation_")}
    db.migrate(engine)
    assert _at_head(engine)
    with engine.begin() as connection:
        assert connection.execute(text(db.SERVICE_GENERATION_SQL)).scalar_one() == 0
        connection.execute(
            text(
                "INSERT INTO managed_services (name, spec, generation, created_at, updated_at,"
                " reconciled_generation, conditions, delivered, attempts) VALUES ('web', '{}',"
                " 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00', 0, '{}', '{}', 0)"
            )
        )
        assert connection.execute(text(db.SERVICE_GENERATION_SQL)).scalar_one() == 1


def _issuer_pem(name: str) -> tuple[str, str]:
    """A real CA certificate (PEM) and its serial as certctl prints it."""
    now = datetime.now(UTC)
    key = generate_private_key(KeyType.EC_P256)
    issued = create_root_ca(key, common_name_dn(name), validity=timedelta(days=30), now=now)
    return certs_to_pem([issued.certificate]).decode(), format_serial(
        issued.certificate.serial_number
    )


def _issuers_trigger(engine: Engine) -> str:
    """The definition of 0020's trigger counting the changes to a parent's CRL list."""
    name = "crl_revocations_issuers_update"
    query = (
        "SELECT sql FROM sqlite_master WHERE name = :name"
        if engine.dialect.name == "sqlite"
        else "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = :name"
    )
    with engine.connect() as connection:
        return str(connection.execute(text(query), {"name": name}).scalar_one())


def _revocations_of(engine: Engine, issuer_id: str) -> int:
    with engine.connect() as connection:
        query = text("SELECT revocations FROM issuers WHERE id = :id")
        return int(connection.execute(query, {"id": issuer_id}).scalar_one())


def issuer_serials_from_0024(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """0025 fills each issuer's serial from its PEM; one that cannot be read gets NULL (a
    warning naming it) and the migration goes on. The CRL counter watches the serial, and
    both are taken back as they were."""
    db.migrate(engine)
    downgrade_store(engine, "0024")
    at_0024 = _issuers_trigger(engine)
    root_pem, root_serial = _issuer_pem("root")
    child_pem, child_serial = _issuer_pem("child")
    row = (
        "INSERT INTO issuers (id, name, subject, certificate_pem, chain_pem, wrapped_key,"
        " key_type, not_after, created_at, parent_id, revoked_at, revocation_reason) VALUES"
        " (:id, :id, 'CN=x', :pem, '', :key, 'ec-p256', '2027-01-01 00:00:00',"
        " '2026-01-01 00:00:00', :parent, :revoked_at, :reason)"
    )
    revoked = {"revoked_at": datetime(2026, 6, 1, tzinfo=UTC), "reason": "cACompromise"}
    unrevoked = {"parent": None, "revoked_at": None, "reason": None}
    with engine.begin() as connection:
        for values in (
            {"id": "root", "pem": root_pem} | unrevoked,
            {"id": "child", "pem": child_pem, "parent": "root"} | revoked,
            {"id": "broken", "pem": child_pem[: len(child_pem) // 2], "parent": "root"} | revoked,
        ):
            connection.execute(text(row), values | {"key": b"\0"})
    counted = _revocations_of(engine, "root")
    with caplog.at_level(logging.WARNING, logger="certctl.store"):
        db.migrate(engine)
    assert _at_head(engine)
    with engine.connect() as connection:
        serials = dict(connection.execute(text("SELECT id, serial FROM issuers")).all())
    assert serials == {"root": root_serial, "child": child_serial, "broken": None}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "migration 0025: issuer broken: its stored certificate cannot be read (cut short or "
        "written over in the database outside certctl), so its serial is not stored; once it "
        "is revoked, its parent's CRL answers 409 until its certificate is restored from a "
        "backup"
    ]
    assert _revocations_of(engine, "root") == counted  # filling it changed no CRL's list
    with engine.begin() as connection:  # set by hand: the revoked one's parent CRL changes
        connection.execute(text("UPDATE issuers SET serial = '01' WHERE id = 'broken'"))
        connection.execute(text("UPDATE issuers SET serial = '02' WHERE id = 'root'"))
    assert _revocations_of(engine, "root") == counted + 1
    downgrade_store(engine, "0024")
    assert _issuers_trigger(engine) == at_0024
    with engine.connect() as connection:
        assert "serial" not in connection.execute(text("SELECT * FROM issuers")).keys()
        assert len(connection.execute(text("SELECT id FROM issuers")).all()) == 3
    with engine.begin() as connection:  # 0020's trigger counts a certificate changed still
        connection.execute(text("UPDATE issuers SET certificate_pem = 'x' WHERE id = 'child'"))
    assert _revocations_of(engine, "root") == counted + 2
    db.migrate(engine)
    assert _at_head(engine)


def test_0025_fills_the_issuer_serial_from_each_pem_and_takes_it_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    issuer_serials_from_0024(engine, caplog)


def test_a_database_from_a_newer_certctl_is_refused_with_what_to_do(tmp_path: Path) -> None:
    # A rollback after an upgrade: Alembic alone said "Can't locate revision '0099'".
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(CertctlError, match=r"^the database schema is at revision 0099, newer "):
        db.migrate(engine)
    with engine.connect() as connection:  # left as it was
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("0099",)
        ]


def test_a_revision_no_certctl_made_is_not_called_newer(tmp_path: Path) -> None:
    # Another application's Alembic history (or a hand edit): "newer" sent the operator
    # looking for a certctl version that does not exist.
    engine = create_engine(f"sqlite:///{tmp_path / 'certctl.db'}")
    db.migrate(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ae1027a6acf'"))
    with pytest.raises(
        CertctlError, match=r"^the database schema is at revision ae1027a6acf, which no certctl "
    ):
        db.migrate(engine)


def test_each_database_holds_one_installation_id_kept_across_starts(tmp_path: Path) -> None:
    """0017: the id every replica of one database records on its Kubernetes Secrets."""
    ids = []
    for name in ("a", "b"):
        engine = create_engine(f"sqlite:///{tmp_path / f'{name}.db'}")
        try:
            db.migrate(engine)
            first = db.installation_id(engine)
            assert str(uuid.UUID(first)) == first
            db.migrate(engine)  # the next start (or another replica) reads the same one
            assert db.installation_id(engine) == first
            ids.append(first)
            if name == "b":
                with engine.begin() as connection:
                    connection.execute(text("DELETE FROM installation"))
                with pytest.raises(CertctlError, match="holds no installation id"):
                    db.installation_id(engine)  # never made up anew: it owns Secrets
        finally:
            engine.dispose()
    assert ids[0] != ids[1]  # two installations, two ids
