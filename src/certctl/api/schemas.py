"""Request bodies (validated with Pydantic; unknown fields refused) and response shaping."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from certctl.auth.permissions import PERMISSIONS
from certctl.pki import display_dn_text
from certctl.pki.validity import DURATION_PATTERN
from certctl.services.revocation import ISSUER_REVOCATION_REASONS, REVOCATION_REASONS
from certctl.store.models import AcmeEabKey, ApiKey, AuditEvent, Issuer

if TYPE_CHECKING:
    from certctl.services.certificates import CertificateView
    from certctl.services.context import IssuerRevocation

__all__ = [
    "AcmeEabCreate",
    "ActorCreate",
    "ActorPatch",
    "ApiKeyCreate",
    "CertificateImport",
    "CertificateIssue",
    "CertificateRenew",
    "CertificateRevoke",
    "IssuerCreate",
    "IssuerRevoke",
    "RoleConstraints",
    "RoleCreate",
    "RoleUpdate",
    "apikey_json",
    "audit_json",
    "certificate_json",
    "eab_key_json",
    "issuer_json",
]


def _json_string(value: object) -> object:
    # A date-time is a JSON string (openapi.json: format date-time): lax mode took a number
    # as seconds since 1970 (1893456000 for 2030-01-01), which no client means by an expiry.
    if isinstance(value, datetime | str) or value is None:
        return value
    raise PydanticCustomError("string_type", "Input should be a string (an RFC 3339 date-time)")


# A body's date-time, as its JSON string only (not strict: strict refuses strings too).
_JsonDateTime = Annotated[datetime, BeforeValidator(_json_string)]


class _Body(BaseModel):
    # Booleans and numbers are Strict* field by field: pydantic's lax mode took "true", "yes"
    # and 1 for true and "3" or true for a number, which openapi.json does not allow (and a
    # client sending "false" as a string is better told than guessed). Not strict=True for
    # the model: that would refuse the JSON strings of datetime fields (expires_at).
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# A permission name as the document shows it: one of the catalogue. Only the schema says so;
# the handler refuses an unknown name itself (400 listing the known ones), which pydantic's
# enum error would not.
# Not stripped (the model strips every other string): " cert.read" is no name in the enum,
# and a server taking it would take what the document refuses.
_Permission = Annotated[
    str,
    StringConstraints(strip_whitespace=False),
    WithJsonSchema({"type": "string", "enum": list(PERMISSIONS)}),
]
# A role, actor or issuer id as the document shows it: what services.access_rules.check_id
# takes, once the body's blanks are stripped (pydantic strips Unicode White_Space, which the
# class lists). The pattern bounds the length: maxLength 64 would count the blanks too.
_BODY_SPACE = r"[\t-\r\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_Id = Annotated[
    str,
    Field(min_length=1, max_length=64),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": rf"^{_BODY_SPACE}*[a-z0-9][a-z0-9._-]{{0,63}}{_BODY_SPACE}*$",
            "description": "1-64 lower-case letters, digits, '.', '_' or '-', first a letter "
            "or digit",
        }
    ),
]
# A validity as the document shows it: the duration grammar (pydantic's own pattern check
# would replace the handler's 400, which gives examples, with a regex).
_DURATION: JsonDict = {"pattern": DURATION_PATTERN, "examples": ["90D", "8760h", "1Y6M"]}


class RoleConstraints(_Body):
    """What a role's ``cert.issue`` may issue; an axis left out or null: no limit on it."""

    issuers: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None,
        max_length=100,
        description="issuer ids the role issues from (not empty)",
    )
    names: list[Annotated[str, Field(max_length=260)]] | None = Field(
        default=None,
        max_length=100,
        description="name patterns every DNS/IP SAN and a name-like CN must match (not "
        "empty): app.example.internal, *.apps.example.internal (any name below, wildcards "
        "too), an IP address or a network (10.0.0.0/8, fd00::/8)",
    )

    def stored(self) -> dict[str, list[str] | None]:
        """The constraints as ``services.roles`` takes them."""
        return {"issuers": self.issuers, "names": self.names}


class RoleCreate(_Body):
    """``POST /api/v1/auth/roles``."""

    id: _Id
    name: str = Field(default="", max_length=200)
    permissions: list[_Permission] = Field(default_factory=list, max_length=100)
    constraints: RoleConstraints | None = None


class RoleUpdate(_Body):
    """``PUT /api/v1/auth/roles/{id}``; ``constraints`` left out: kept, null: taken away."""

    name: str | None = Field(default=None, max_length=200)
    permissions: list[_Permission] | None = Field(default=None, max_length=100)
    constraints: RoleConstraints | None = None


class ActorCreate(_Body):
    """``POST /api/v1/auth/actors``."""

    id: _Id
    name: str = Field(default="", max_length=200)
    roles: list[str] = Field(default_factory=list, max_length=50)


class ActorPatch(_Body):
    """``PATCH /api/v1/auth/actors/{id}``."""

    name: str | None = Field(default=None, max_length=200)
    roles: list[str] | None = Field(default=None, max_length=50)


class ApiKeyCreate(_Body):
    """``POST /api/v1/auth/apikeys``."""

    actor_id: str = Field(min_length=1, max_length=64)
    name: str = Field(default="", max_length=200)
    expires_at: _JsonDateTime | None = None


class AcmeEabCreate(_Body):
    """``POST /api/v1/acme/eab-keys``."""

    name: str = Field(min_length=1, max_length=200)
    expires_at: _JsonDateTime | None = None


class AcmeAccountDeactivate(_Body):
    """``POST /api/v1/acme/accounts/{id}/deactivate`` (the body may be left out)."""

    # Its certificates too, each as POST /api/v1/certificates/{id}/revoke would.
    revoke_certificates: StrictBool = False
    reason: str | None = Field(
        default=None,
        json_schema_extra={
            "enum": [*REVOCATION_REASONS, None],
            "description": "RFC 5280 CRLReason of the certificates (with revoke_certificates); "
            "none is unspecified",
        },
    )


class IssuerCreate(_Body):
    """``POST /api/v1/issuers``: a new root or intermediate CA, or an import (PEM)."""

    id: _Id
    name: str = Field(default="", max_length=200)
    common_name: str | None = Field(default=None, max_length=64)
    subject: str | None = Field(default=None, max_length=1000)
    key_type: str = "ec-p256"
    # Unset: 5Y for a root; for an intermediate, 5Y or what its parent has left if less.
    validity: str | None = Field(default=None, json_schema_extra=_DURATION)
    parent: str | None = None
    path_length: StrictInt | None = Field(default=None, ge=0, le=10)
    certificate_pem: str | None = Field(default=None, max_length=200_000)
    private_key_pem: str | None = Field(default=None, max_length=100_000)


class CertificateImport(_Body):
    """``POST /api/v1/certificates/import``: certificates an issuer held here signed before."""

    certificate_pem: str = Field(
        # The body limit (app.MAX_BODY_BYTES, 1 MiB) bounds it: a lower cap here refused a
        # bundle under that limit with a 400 on the field, never the 413 the CLI explains.
        max_length=1024 * 1024,
        description="one or more PEM certificates (a bundle), each signed by an issuer "
        "certctl holds; no key",
    )
    skip_existing: StrictBool = Field(
        default=False,
        description="pass over the certificates recorded already (same CA, same serial) and "
        "repeats of one earlier in the bundle, listed under skipped, instead of refusing the "
        "bundle (409, 400)",
    )


class CertificateIssue(_Body):
    """``POST /api/v1/certificates``: from a CSR, or with server-side key generation."""

    issuer: str = "default"
    csr: str | None = Field(default=None, max_length=100_000)
    common_name: str = Field(
        default="",
        max_length=64,
        description="may be left out when a SAN is given: an empty subject, the SAN extension "
        "critical; a server certificate given no SAN gets it as its DNS or IP SAN",
    )
    dns_names: list[str] = Field(
        default_factory=list, max_length=100, description="DNS SANs ('*.example.com' allowed)"
    )
    ip_addresses: list[str] = Field(
        default_factory=list, max_length=100, description="IP SANs, IPv4 or IPv6"
    )
    # Named as Go's x509.Certificate and cert-manager's Certificate name them: an e-mail SAN
    # for a person's client certificate, a URI SAN for a workload identity.
    email_addresses: list[str] = Field(
        default_factory=list, max_length=100, description="e-mail (rfc822Name) SANs"
    )
    uris: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="URI SANs, e.g. spiffe://trust-domain/ns/NAMESPACE/sa/ACCOUNT",
    )
    profile: Literal["server", "client", "server+client"] = "server"
    validity: str = Field(default="90D", json_schema_extra=_DURATION)
    key_type: str = "ec-p256"


class CertificateRevoke(_Body):
    """``POST /api/v1/certificates/{id}/revoke``."""

    # A str checked by the service (its 400 lists the reasons), described as the enum it is,
    # so the OpenAPI document does not promise that any string is taken.
    reason: str | None = Field(
        default=None,
        json_schema_extra={
            "enum": [*REVOCATION_REASONS, None],
            "description": "RFC 5280 CRLReason; none is unspecified",
        },
    )


class IssuerRevoke(_Body):
    """``POST /api/v1/issuers/{id}/revoke``: a certificate's reasons, and cACompromise."""

    reason: str | None = Field(
        default=None,
        json_schema_extra={
            "enum": [*ISSUER_REVOCATION_REASONS, None],
            "description": "RFC 5280 CRLReason; none is unspecified",
        },
    )


class CertificateRenew(_Body):
    """``POST /api/v1/certificates/{id}/renew``."""

    validity: str | None = Field(default=None, json_schema_extra=_DURATION)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def certificate_json(
    row: CertificateView, status: str, issuer_revoked: IssuerRevocation | None
) -> dict[str, Any]:
    """The public view of a certificate record (never its key).

    ``issuer_revoked``: the revocation of its issuer, or of a CA above it. Its own status
    stays (its issuer's CRL does not list it), but clients checking the CRLs of the whole
    chain refuse it.
    """
    return {
        "id": row.id,
        "issuer": row.issuer_id,
        "serial": row.serial,
        "status": status,
        "common_name": row.common_name,
        # Stored as rfc4514_string() writes it (issuers are matched by it); shown with the
        # attribute names openssl prints (emailAddress=, not 1.2.840.113549.1.9.1=).
        "subject": display_dn_text(row.subject),
        "sans": row.sans,
        "profile": row.profile,
        "not_before": _iso(row.not_before),
        "not_after": _iso(row.not_after),
        "created_at": _iso(row.created_at),
        "created_by": row.created_by,
        "revoked_at": _iso(row.revoked_at),
        "revocation_reason": row.revocation_reason,
        "renewed_from": row.renewed_from,
        "renewed_by": row.renewed_by,
        "issuer_revoked": _revocation_json(issuer_revoked),
        "certificate_pem": row.certificate_pem,
    }


def _revocation_json(revoked: IssuerRevocation | None) -> dict[str, Any] | None:
    if revoked is None:
        return None
    return {"issuer": revoked.by, "revoked_at": _iso(revoked.revoked_at), "reason": revoked.reason}


def issuer_json(row: Issuer, now: datetime, revoked: IssuerRevocation | None) -> dict[str, Any]:
    """The public view of an issuer (never its key).

    ``revoked``: the revocation that leaves it signing nothing (revocations_by_issuer); shown
    as ``issuer_revoked`` when it is another issuer's (a CA above it, or a twin): its own is
    its status, revoked_at and revocation_reason.
    """
    return {
        "id": row.id,
        "name": row.name,
        "subject": display_dn_text(row.subject),
        "key_type": row.key_type,
        "not_after": _iso(row.not_after),
        "created_at": _iso(row.created_at),
        "certificate_pem": row.certificate_pem,
        "chain_pem": row.chain_pem,
        "status": issuer_status(row, now),
        "revoked_at": _iso(row.revoked_at),
        "revocation_reason": row.revocation_reason,
        "issuer_revoked": _revocation_json(
            None if revoked is None or revoked.by == row.id else revoked
        ),
    }


def issuer_status(row: Issuer, now: datetime) -> str:
    """``revoked``, ``expired`` (past its notAfter) or ``active``."""
    if row.revoked_at is not None:
        return "revoked"
    return "expired" if row.not_after <= now else "active"


def apikey_json(row: ApiKey) -> dict[str, Any]:
    """A listed API key: everything but the secret."""
    return {
        "id": row.id,
        "actor_id": row.actor_id,
        "name": row.name,
        "created_at": _iso(row.created_at),
        "expires_at": _iso(row.expires_at),
        "last_used_at": _iso(row.last_used_at),
        "revoked_at": _iso(row.revoked_at),
    }


def eab_key_json(row: AcmeEabKey) -> dict[str, Any]:
    """A listed ACME EAB key: everything but the HMAC key."""
    return {
        "id": row.id,
        "name": row.name,
        "actor_id": row.actor_id,
        "created_at": _iso(row.created_at),
        "expires_at": _iso(row.expires_at),
        "account_id": row.account_id,
        "used_at": _iso(row.used_at),
        "revoked_at": _iso(row.revoked_at),
    }


def audit_json(row: AuditEvent) -> dict[str, Any]:
    """An audit event."""
    return {
        "id": row.id,
        "at": _iso(row.at),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "outcome": row.outcome,
        "source": row.source,
        "detail": row.detail,
        "credential": row.credential,
    }
