"""SQLAlchemy 2 models: issuers, certificates, RBAC (roles, actors, API keys) and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "AcmeAccount",
    "AcmeAuthorization",
    "AcmeChallenge",
    "AcmeNonce",
    "AcmeOrder",
    "Actor",
    "ApiKey",
    "AuditEvent",
    "Base",
    "BlockedKey",
    "CertificateRecord",
    "Issuer",
    "IssuerCrl",
    "ManagedService",
    "OutboxEvent",
    "Role",
    "ServiceClient",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base for certctl's tables."""


class Issuer(Base):
    """A CA that signs certificates; its key is stored wrapped (AES-256-GCM)."""

    __tablename__ = "issuers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(Text)
    certificate_pem: Mapped[str] = mapped_column(Text)
    # Its certificate's serial (hex, as certificates.serial), kept beside the PEM (migration
    # 0025): its parent's CRL lists it from here once it is revoked, so a PEM cut short or
    # written over in the database no longer blocks that CRL. None: stored before 0025 from a
    # PEM that could not be read, or by an older release (read from the PEM then). Text: an
    # imported CA's serial may be longer than RFC 5280's 20 octets.
    serial: Mapped[str | None] = mapped_column(Text, nullable=True)
    chain_pem: Mapped[str] = mapped_column(Text, default="")
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    key_type: Mapped[str] = mapped_column(String(20))
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The number of the last CRL signed for it (RFC 5280 5.2.3: increasing, per issuer);
    # kept here, not taken from a clock, so every process and replica continues the series.
    crl_number: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # The issuer that signed it, whose CRL lists it once revoked: set when an intermediate
    # is created below another issuer, found by signature when one without it is revoked
    # (an import, or an intermediate created before migration 0010). None for a root.
    parent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Revoked intermediates issue nothing more and are listed on their parent's CRL.
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revocation_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Counts each change to what its CRL lists (the triggers of migrations 0020 and 0021,
    # whichever process or tool made it): a CRL fetch compares it with the stored CRL's.
    revocations: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class IssuerCrl(Base):
    """The last CRL signed for an issuer, which every process serves while it is fresh.

    Replaced whole by the process that signs the next one (holding the issuer's CRL number,
    see ``services.crls``). A cache: without it the next fetch signs anew.
    """

    __tablename__ = "issuer_crls"

    issuer_id: Mapped[str] = mapped_column(
        ForeignKey("issuers.id", ondelete="CASCADE"), primary_key=True
    )
    crl_number: Mapped[int] = mapped_column(BigInteger)
    # thisUpdate + BACKDATE: when it was signed, by the signing process's clock.
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_update: Mapped[datetime] = mapped_column(UTCDateTime)
    # SHA-256 (hex) of what it was signed from: the CA's name and key, the revoked list.
    basis: Mapped[str] = mapped_column(String(64))
    # The issuer's ``revocations`` when its list was read, and SHA-256 (hex) of the signing
    # CA's name and key: what a fetch compares (None: stored by a release before 0020).
    revocations: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    signer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)


class CertificateRecord(Base):
    """An issued certificate. ``id`` sorts by creation time, which keyset pagination relies on."""

    __tablename__ = "certificates"
    __table_args__ = (
        UniqueConstraint("issuer_id", "serial", name="uq_certificates_issuer_serial"),
        Index("ix_certificates_not_after", "not_after"),
        # Covers the metrics counts (issuer, status, expiry, renewed or not): index-only.
        Index("ix_certificates_counts", "issuer_id", "status", "not_after", "renewed_by"),
        # A revocation looks up the revoked certificate's predecessors' other successors.
        # Partial: the many certificates that renew nothing cost issuance no index entry.
        Index(
            "ix_certificates_renewed_from",
            "renewed_from",
            sqlite_where=text("renewed_from IS NOT NULL"),
            postgresql_where=text("renewed_from IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    issuer_id: Mapped[str] = mapped_column(ForeignKey("issuers.id"))
    serial: Mapped[str] = mapped_column(String(42))
    common_name: Mapped[str] = mapped_column(String(200), default="")
    subject: Mapped[str] = mapped_column(Text)
    sans: Mapped[dict[str, list[str]]] = mapped_column(JSON)
    profile: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(10), default="active")
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    certificate_pem: Mapped[str] = mapped_column(Text)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Text: a client certificate's actor is cert:<subject>, longer than 64 (migration 0023).
    created_by: Mapped[str] = mapped_column(Text)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revocation_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    renewed_from: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The latest successor, set by its renewal (cleared if that successor is revoked): a
    # renewed certificate is not "expiring", whatever its notAfter.
    renewed_by: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Role(Base):
    """A named set of permissions; built-in roles are immutable."""

    __tablename__ = "roles"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    permissions: Mapped[list[str]] = mapped_column(JSON)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What its cert.issue may issue (0034): {"issuers": [ids] | None, "names": [patterns] |
    # None}, None on an axis or as a whole: unrestricted.
    constraints: Mapped[dict[str, list[str] | None] | None] = mapped_column(JSON, nullable=True)


class Actor(Base):
    """A user or machine identity holding roles."""

    __tablename__ = "actors"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """An API key: only the SHA-256 of its secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    actor_id: Mapped[str] = mapped_column(ForeignKey("actors.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEvent(Base):
    """One audited action: every mutation and every authentication failure."""

    __tablename__ = "audit_events"
    # The exact filters of GET /api/v1/audit, each with id: a filtered page is read in the
    # listing's order (id DESC) and stops (migration 0026). The actor's first 200 characters
    # only: a PostgreSQL B-tree entry cannot pass 2,704 bytes (services.audit._actor_prefix).
    __table_args__ = (
        Index("ix_audit_events_actor", text("substr(actor, 1, 200)"), "id"),
        Index("ix_audit_events_credential", "credential", "id"),
        Index("ix_audit_events_action", "action", "id"),
        Index("ix_audit_events_outcome", "outcome", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(Text)  # cert:<subject> and the like (migration 0023)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200), default="")
    outcome: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    # apikey <key id>: which of the actor's keys made the call (migration 0024).
    credential: Mapped[str] = mapped_column(String(64), default="", server_default="")


class ManagedService(Base):
    """A ``TLSService``: its spec and the state the reconciler keeps for it."""

    __tablename__ = "managed_services"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reconciled_generation: Mapped[int] = mapped_column(Integer, default=0)
    certificate_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    chain_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    ca_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    serial: Mapped[str | None] = mapped_column(String(42), nullable=True)
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    renew_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ca_renew_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    conditions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    delivered: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The serial of the certificate the "expiring" event was sent for: once per certificate
    # (service_reconcile.EXPIRING_UNKNOWN: stored before 0009, judged at the next pass).
    expiring_serial: Mapped[str | None] = mapped_column(String(42), nullable=True)
    # A CA replaced by another (new key): still trusted in ca.crt, after the new one, until
    # retired_ca_until, as servers not yet reloaded present leaves under it (Alembic 0011).
    retired_ca_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    retired_ca_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # CAs replaced before that one and still in their own overlap (a CA replaced twice
    # within a day): [{"pem": ..., "until": ISO 8601}], newest first (Alembic 0015).
    earlier_retired_cas: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)


class ServiceClient(Base):
    """A client certificate or CA trusted by a service with client authentication."""

    __tablename__ = "service_clients"

    service: Mapped[str] = mapped_column(
        ForeignKey("managed_services.name", ondelete="CASCADE"), primary_key=True
    )
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(Text)
    certificate_pem: Mapped[str] = mapped_column(Text)
    is_ca: Mapped[bool] = mapped_column(Boolean, default=False)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboxEvent(Base):
    """A notification waiting for (or done with) webhook delivery."""

    __tablename__ = "outbox_events"
    __table_args__ = (Index("ix_outbox_pending", "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    event: Mapped[str] = mapped_column(String(32))
    service: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class AcmeAccount(Base):
    """An ACME account (RFC 8555 7.1.2): one per key, found by its JWK thumbprint."""

    __tablename__ = "acme_accounts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # RFC 7638 SHA-256 thumbprint, base64url (43 characters): one account per key.
    thumbprint: Mapped[str] = mapped_column(String(64), unique=True)
    jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # valid | deactivated
    contact: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The External Account Binding key that bound it (None: made without one).
    eab_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    # When it was deactivated (None while valid; migration 0032 took it from the audit log
    # for those deactivated before, None where that event is gone).
    deactivated_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, nullable=True, default=None
    )


class AcmeOrder(Base):
    """An ACME order: the DNS names asked for, and the certificate once finalized."""

    __tablename__ = "acme_orders"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("acme_accounts.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | ready | valid | invalid
    identifiers: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    expires: Mapped[datetime] = mapped_column(UTCDateTime)
    # No foreign key: ``certificates`` stays a table an operator may empty by hand
    # (``TRUNCATE certificates``, which a reference would refuse); an order whose row is gone
    # serves no certificate.
    certificate_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The certificate (its id) this order renews, from new-order's ``replaces`` (RFC 9773 5,
    # migration 0031): one order at a time may replace a certificate. No foreign key, as
    # certificate_id.
    replaces: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)


class AcmeAuthorization(Base):
    """One identifier of an order to prove control of (one per order and name)."""

    __tablename__ = "acme_authorizations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    order_id: Mapped[str] = mapped_column(
        ForeignKey("acme_orders.id", ondelete="CASCADE"), index=True
    )
    # a DNS name, lower-case A-labels; or an IP address in RFC 8738's text form
    identifier: Mapped[str] = mapped_column(String(253))
    # "dns" or "ip" (migration 0030): which of the two ``identifier`` is.
    identifier_type: Mapped[str] = mapped_column(String(8), default="dns")
    status: Mapped[str] = mapped_column(String(16))  # pending | valid | invalid
    expires: Mapped[datetime] = mapped_column(UTCDateTime)
    # Of the order's "*.<identifier>" (migration 0029): dns-01 only, and the one authorization
    # that lets a certificate carry that wildcard.
    wildcard: Mapped[bool] = mapped_column(Boolean, default=False)


class AcmeChallenge(Base):
    """An http-01 or dns-01 challenge of an authorization."""

    __tablename__ = "acme_challenges"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    authorization_id: Mapped[str] = mapped_column(
        ForeignKey("acme_authorizations.id", ondelete="CASCADE"), index=True
    )
    type: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | processing | valid | invalid
    # When it was validated (valid); while processing, when its validation began, which tells
    # a validation lost to a restart (services.acme.STALE_VALIDATION) from one under way.
    validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class AcmeNonce(Base):
    """A used anti-replay nonce (RFC 8555 6.5): its row refuses a second use on any replica.

    Nonces are handed out unstored (an HMAC proves them, ``services.acme.mint_nonce``); a
    row is kept until ``expires``, when the nonce is too old to be accepted anyway.
    """

    __tablename__ = "acme_nonces"

    value: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AcmeEabKey(Base):
    """An ACME External Account Binding key (RFC 8555 7.3.4): binds one account to its minter."""

    __tablename__ = "acme_eab_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the EAB "kid"
    name: Mapped[str] = mapped_column(String(200))
    # The 32-byte HMAC key, wrapped under the KEK (context "acme-eab:<id>"): the server must
    # recompute the MAC, so a hash would not do.
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    # Who minted it (no foreign key: an mTLS or Kubernetes caller has no actors row).
    actor_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    account_id: Mapped[str | None] = mapped_column(
        ForeignKey("acme_accounts.id"), nullable=True, unique=True
    )
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BlockedKey(Base):
    """A public key certctl certifies no more (migration 0033), as Let's Encrypt's blockedKeys.

    Added by every revocation that says the key is compromised, in its transaction: a
    certificate's keyCompromise, an issuer's keyCompromise or cACompromise. Revoking the
    certificates of a key leaves the key itself free to be certified again (a CSR of it
    submitted anew, a renewal of another certificate of it); this row refuses that.
    """

    __tablename__ = "blocked_keys"

    # SHA-256 of the SubjectPublicKeyInfo DER, in hex: what
    # ``openssl pkey -pubin -outform DER | sha256sum`` prints, for an operator's query.
    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    blocked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(String(40))
    # What was revoked: one of the two (the first revocation of the key; later ones add none).
    certificate_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    issuer_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    blocked_by: Mapped[str] = mapped_column(Text)  # the revoking actor, as audit_events.actor
