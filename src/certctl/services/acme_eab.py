"""ACME External Account Binding (RFC 8555 7.3.4): keys minted over the API, checked at new-account.

A caller of certctl's API mints a key (an id, the EAB "kid", and 32 random bytes for HMAC)
and hands both to an ACME client; the client's new-account request carries a JWS over its
account key, MACed with them. The account is then bound to the key, and so to the certctl
actor who minted it: that is how ``acme.external-account-required`` ties ACME to certctl's
RBAC. The HMAC key is stored wrapped under the KEK (the server must recompute the MAC, so a
hash would not do), shown once when minted, and never logged or quoted in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from certctl.errors import AcmeError, InvalidRequest, NotFound, PermissionDenied
from certctl.pki.jose import b64url_decode, b64url_encode, load_jwk, thumbprint
from certctl.services.access_rules import check_name
from certctl.services.acme_accounts import cut_off
from certctl.services.audit import record_call
from certctl.services.context import Principal, Services
from certctl.services.issuance import new_id
from certctl.store.models import AcmeAccount, AcmeEabKey

__all__ = [
    "EAB_ALGORITHMS",
    "MintedEab",
    "bind",
    "checked_binding",
    "eab_context",
    "list_eab_keys",
    "mint_eab_key",
    "revoke_eab_key",
]

# RFC 8555 7.3.4: "MUST indicate an integrity algorithm based on HMAC"; RFC 7518 3.2.
EAB_ALGORITHMS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_KEY_BYTES = 32
_ID_MAX = 32  # acme_eab_keys.id's width


def eab_context(key_id: str) -> str:
    """The KEK wrapping context of an EAB key: its id (a blob moved to another row fails)."""
    return f"acme-eab:{key_id}"


@dataclass(frozen=True)
class MintedEab:
    """A key just minted: its row, and the HMAC key (base64url) to show this once."""

    row: AcmeEabKey
    hmac_key: str


def mint_eab_key(
    services: Services, caller: Principal, name: str, expires_at: datetime | None
) -> MintedEab:
    """Mint an EAB key for ``caller`` (who the account it binds will answer to)."""
    caller.require("cert.issue")
    if caller.issue_limits is not None:
        # The account a key binds orders under acme.allowed-names, not the minter's roles:
        # a key limited to team A's names would mint its way out of them.
        roles = ", ".join(sorted({limit.role for limit in caller.issue_limits}))
        whose = f"role(s) {roles}" if roles else "the actor that had your certificate issued"
        raise PermissionDenied(
            "cannot mint an EAB key: an ACME account's orders are limited by "
            f"acme.allowed-names, not by roles' constraints, and {whose} constrain your "
            "cert.issue; a caller whose cert.issue is not constrained mints it"
        )
    now = services.clock()
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest("expires_at must be in the future")
    check_name(name)
    secret = secrets.token_bytes(_KEY_BYTES)
    key_id = new_id()
    row = AcmeEabKey(
        id=key_id,
        name=name,
        wrapped_key=services.wrapper.wrap(secret, context=eab_context(key_id)),
        actor_id=caller.actor_id,
        created_at=now,
        expires_at=expires_at,
    )
    with services.sessions.begin() as session:
        session.add(row)
        record_call(session, caller, now, "acme.eab.create", key_id, f"name {name!r}")
    return MintedEab(row, b64url_encode(secret))


def list_eab_keys(session: Session) -> list[AcmeEabKey]:
    """Every EAB key, oldest first (ids sort by creation time)."""
    return list(session.scalars(select(AcmeEabKey).order_by(AcmeEabKey.id)))


def revoke_eab_key(services: Services, caller: Principal, key_id: str) -> AcmeEabKey:
    """Revoke an EAB key: it binds no account from now on, and the account it bound is cut off.

    Whoever holds the key's account key ordered under the minter's name; revoking the key is
    what an operator does when that key leaks, so the account it bound is deactivated in the
    same transaction (``acme_accounts.cut_off``, audited as ``acme.account.deactivate``),
    whose next request is refused. Revoking a key again deactivates its account too, should
    it be valid still (a key revoked before revocation cut accounts off).
    """
    caller.require("cert.revoke")
    now = services.clock()
    with services.sessions.begin() as session:
        row = session.get(AcmeEabKey, key_id, with_for_update=True)
        if row is None:
            raise NotFound(f"EAB key {key_id[:64]} not found")
        detail = (
            "" if row.revoked_at is None else f"already revoked at {row.revoked_at.isoformat()}"
        )
        if row.revoked_at is None:
            row.revoked_at = now
        record_call(session, caller, now, "acme.eab.revoke", key_id, detail)
        bound = session.scalar(
            select(AcmeAccount)
            .where(AcmeAccount.eab_key_id == key_id, AcmeAccount.status == "valid")
            .with_for_update()
        )
        if bound is not None:
            cancelled = cut_off(session, bound, now)
            record_call(
                session,
                caller,
                now,
                "acme.account.deactivate",
                bound.id,
                f"its EAB key {key_id} was revoked; {cancelled}",
            )
    return row


def bind(session: Session, key: AcmeEabKey, account_id: str, now: datetime) -> None:
    """Record in ``session`` that ``key`` bound ``account_id``; refused if it is no longer free.

    Raises:
        AcmeError: unauthorized when a concurrent new-account used or revoked it meanwhile.
    """
    done = session.execute(
        update(AcmeEabKey)
        .where(
            AcmeEabKey.id == key.id,
            AcmeEabKey.account_id.is_(None),
            AcmeEabKey.revoked_at.is_(None),
        )
        .values(account_id=account_id, used_at=now)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise _refused(f"EAB key {key.id} was used or revoked meanwhile")


def _refused(detail: str) -> AcmeError:
    # 403: the JWS is authenticated; what it carries does not authorize an account.
    return AcmeError(detail, "unauthorized", 403)


def _json_part(value: object, what: str) -> dict[str, Any]:
    raw = b64url_decode(value, what)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AcmeError(f"{what}: not JSON") from None
    if not isinstance(data, dict):
        raise AcmeError(f"{what}: not a JSON object")
    return data


def checked_binding(
    services: Services, binding: object, account_thumbprint: str, url: str
) -> AcmeEabKey:
    """The EAB key that ``binding`` (new-account's ``externalAccountBinding``) proves.

    ``binding`` must be a flattened JWS: protected ``{alg: HS256|HS384|HS512, kid, url}``,
    payload the account's JWK (the same key: ``account_thumbprint``), MACed with the key.
    Whether the key is still free is checked again when it is bound (a concurrent use).

    Raises:
        AcmeError: malformed for a JWS that is not one; unauthorized (403) for an unknown,
            revoked, expired or used key, a wrong MAC, URL or payload key.
    """
    if not isinstance(binding, dict):
        raise AcmeError("externalAccountBinding: not a JSON object (a flattened JWS)")
    parts = {name: binding.get(name) for name in ("protected", "payload", "signature")}
    if not all(isinstance(v, str) for v in parts.values()):
        raise AcmeError("externalAccountBinding: needs protected, payload and signature strings")
    protected = _json_part(parts["protected"], "externalAccountBinding protected header")
    alg = protected.get("alg")
    digest = EAB_ALGORITHMS.get(alg) if isinstance(alg, str) else None
    if digest is None:
        raise AcmeError(
            f"externalAccountBinding alg {str(alg)[:20]}: must be HS256, HS384 or HS512",
            "badSignatureAlgorithm",
        )
    if "nonce" in protected:
        raise AcmeError("externalAccountBinding: the protected header must not hold a nonce")
    if protected.get("url") != url:
        raise _refused(f"externalAccountBinding url is not this request's URL {url}")
    kid = protected.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AcmeError("externalAccountBinding: the protected header needs a kid")
    payload = _json_part(parts["payload"], "externalAccountBinding payload")
    if thumbprint(load_jwk(payload)) != account_thumbprint:
        raise _refused("externalAccountBinding payload is not this request's account key")
    mac = b64url_decode(parts["signature"], "externalAccountBinding signature")
    shown = kid[:64]
    if len(kid) > _ID_MAX or not kid.isprintable():
        # No key has such an id; looked up, a NUL was a 500 on PostgreSQL (no NUL in text).
        raise _refused(f"EAB key {shown!r}: no such key")
    with services.sessions() as session:
        row = session.get(AcmeEabKey, kid)
    if row is None:
        raise _refused(f"EAB key {shown}: no such key")
    secret = services.wrapper.unwrap(row.wrapped_key, context=eab_context(row.id))
    signing_input = f"{parts['protected']}.{parts['payload']}".encode()
    expected = hmac.new(secret, signing_input, digest).digest()
    # The MAC first: what follows tells the state of a key only to whoever holds it.
    if not hmac.compare_digest(mac, expected):
        raise _refused(f"EAB key {shown}: the MAC does not verify")
    if row.revoked_at is not None:
        raise _refused(f"EAB key {shown} was revoked")
    if row.expires_at is not None and row.expires_at <= services.clock():
        raise _refused(f"EAB key {shown} expired")
    if row.account_id is not None:
        raise _refused(f"EAB key {shown} already bound an account")
    return row
