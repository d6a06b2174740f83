"""issuer serial: each issuer's certificate serial, so its parent's CRL needs no PEM

A revoked intermediate is listed on its parent's CRL by its serial, which was read from its
stored PEM at each signing: a PEM cut short or written over in the database (a restore, a
hand edit) left no serial to list, and the parent's CRL answered 409 until it was restored
(a CRL leaving a revoked CA off would have clients accept what it signed). The serial is
now stored beside the PEM (hex, as ``certificates.serial``), filled here from each row's
PEM. A row whose PEM cannot be read already gets NULL, with a warning naming it: the
migration goes on (a failed one would keep the server from starting), and certctl reads
such a row's serial from its PEM, so it stays a 409 until the PEM is restored.

0020's trigger counting the changes to a parent's CRL list watches the new column too: the
CRL lists it now, so a serial set by hand (the NULL of an unreadable row) reaches it at its
next fetch, as a change of the certificate did.

Revision ID: 0025
Revises: 0024
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op
from cryptography import x509

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

log = logging.getLogger("certctl.store")

TRIGGER = "crl_revocations_issuers_update"  # 0020's, on issuers
LISTED = "{row}.revoked_at IS NOT NULL"
COLUMNS_0020 = "revoked_at, revocation_reason, parent_id, certificate_pem"
BUMP = "UPDATE issuers SET revocations = revocations + 1 WHERE id IN (OLD.parent_id, NEW.parent_id)"


def _hex(serial: int) -> str:
    """``serial`` as certctl stores serials (``pki.format_serial``, copied: a migration
    keeps what it wrote when the application's code changes later)."""
    if serial < 0:  # RFC 5280 forbids them, but an imported certificate may hold one
        return f"-{_hex(-serial)}"
    digits = f"{serial:x}"
    return digits.zfill(len(digits) + len(digits) % 2)


def _watch(columns: str) -> None:
    """Make 0020's trigger on issuers again, watching ``columns`` (a row trigger, as 0020's)."""
    dialect = op.get_bind().dialect.name
    distinct = "IS NOT" if dialect == "sqlite" else "IS DISTINCT FROM"
    changed = " OR ".join(f"OLD.{c} {distinct} NEW.{c}" for c in columns.split(", "))
    listed = f"({LISTED.format(row='OLD')} OR {LISTED.format(row='NEW')})"
    when = f"{listed} AND ({changed})"
    if dialect == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
        op.execute(
            f"CREATE TRIGGER {TRIGGER} AFTER UPDATE OF {columns} ON issuers WHEN {when} "
            f"BEGIN {BUMP}; END"
        )
    elif dialect == "postgresql":
        # 0020's function is kept (and the search_path 0021 gave it): only what fires it changes.
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON issuers")
        op.execute(
            f"CREATE TRIGGER {TRIGGER} AFTER UPDATE OF {columns} ON issuers FOR EACH ROW "
            f"WHEN ({when}) EXECUTE FUNCTION certctl_{TRIGGER}()"
        )


def upgrade() -> None:
    op.add_column("issuers", sa.Column("serial", sa.Text(), nullable=True))
    bind = op.get_bind()
    serials = []
    for issuer_id, pem in bind.execute(
        sa.text("SELECT id, certificate_pem FROM issuers ORDER BY id")
    ):
        try:
            certificate = x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            log.warning(
                "migration 0025: issuer %s: its stored certificate cannot be read (cut short "
                "or written over in the database outside certctl), so its serial is not "
                "stored; once it is revoked, its parent's CRL answers 409 until its certificate "
                "is restored from a backup",
                issuer_id,
            )
            continue
        serials.append({"id": issuer_id, "serial": _hex(certificate.serial_number)})
    # Before the trigger watches the column: filling it changes no CRL's list.
    if serials:
        bind.execute(sa.text("UPDATE issuers SET serial = :serial WHERE id = :id"), serials)
    _watch(f"{COLUMNS_0020}, serial")


def downgrade() -> None:
    # 0020's trigger first: neither SQLite nor PostgreSQL drops a column a trigger names.
    _watch(COLUMNS_0020)
    op.drop_column("issuers", "serial")
