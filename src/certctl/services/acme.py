"""ACME (RFC 8555) use cases: nonces, accounts, orders, validation results, finalize, revocation.

The HTTP side (JWS envelope, URLs, status codes) is ``api.acme_routes``; the http-01 fetch and
the dns-01 lookup are ``services.acme_validation``. Everything here is synchronous and
store-backed, so any replica of a PostgreSQL store answers any step. Certificates are issued
by ``issuance`` (the API's CSR path, with its key and name policy) and revoked by
``certificates.revoke_certificate``, so they are listed, counted, audited and put on the CRL
as every other certificate.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from certctl.errors import (
    AcmeError,
    BlockedKey,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from certctl.hosts import is_ip
from certctl.metrics.registry import RENEWALS
from certctl.pki.dns_names import validate_dns_name
from certctl.pki.jose import JwsPublicKey, jwk_of, load_jwk, thumbprint
from certctl.pki.name_patterns import name_allowed
from certctl.services.acme_accounts import cut_off, hold_valid
from certctl.services.acme_eab import bind, checked_binding
from certctl.services.acme_renewal_info import (
    cert_id_of,
    check_not_replaced,
    replaced_certificate,
)
from certctl.services.audit import record
from certctl.services.certificates import record_renewal, revoke_certificate
from certctl.services.context import Principal, Services
from certctl.services.issuance import MAX_NAMES_PER_TYPE, new_id, prepare_from_csr
from certctl.services.issuers import check_not_managed, load_issuer, load_issuer_certificates
from certctl.store.groupcommit import write_rows
from certctl.store.models import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeChallenge,
    AcmeEabKey,
    AcmeNonce,
    AcmeOrder,
    CertificateRecord,
)

__all__ = [
    "ACME_PROFILE",
    "CHALLENGE_TYPES",
    "AcmeSettings",
    "AuthorizationView",
    "ChallengeView",
    "OrderView",
    "account_actor",
    "account_orders",
    "authorization_view",
    "certificate_chain",
    "challenge_view",
    "change_key",
    "check_issuer",
    "consume_nonce",
    "create_account",
    "deactivate_authorization",
    "finalize_order",
    "find_account",
    "mint_nonce",
    "new_order",
    "order_view",
    "record_validation",
    "restart_stale_validation",
    "revoke",
    "start_challenge",
    "update_account",
]

log = logging.getLogger("certctl.services.acme")

# Leaves issued through ACME are TLS server certificates: the profile http-01 can vouch for.
ACME_PROFILE = "server"
# The challenges an authorization of a name offers, in the order listed: http-01 first, as
# before dns-01 was offered (clients that take the first one they support are unchanged).
CHALLENGE_TYPES = ("http-01", "dns-01")
# An IP address has no DNS zone to prove it by: http-01 only (RFC 8738 7; no tls-alpn-01 here).
IP_CHALLENGE_TYPES = ("http-01",)
NONCE_LIFETIME = timedelta(hours=1)
ORDER_LIFETIME = timedelta(days=7)
PENDING_AUTHZ_LIFETIME = timedelta(days=1)
# A challenge processing for longer than this lost its validation (the server stopped or was
# killed mid-fetch: the task lived in that process only). The next read of it or of its
# authorization starts it again, instead of leaving the order pending until the authorization
# expires a day later. Well above one fetch (10 s) plus a wait for a validation slot.
STALE_VALIDATION = timedelta(minutes=1)
MAX_CONTACTS = 10
# Pending (unexpired) authorizations an account may hold: each order makes up to 100, with a
# challenge each, kept in the store; unbounded, one account could fill it by the thousand a
# second. Let's Encrypt has the same kind of limit; validated ones do not count.
MAX_PENDING_AUTHORIZATIONS = 1000
# How far one replica's clock may be ahead of another's (10 minutes, as CRL signing tolerates
# between replicas): a nonce issued up to this far in the future is accepted, and its use is
# kept this much longer than its hour, so a replica sweeping it that runs ahead of one still
# accepting it sweeps none too early (a replay let through unseen). One minute refused the
# nonces of a replica ahead by more; certbot's acme library takes no nonce from the badNonce,
# asks new-nonce again, possibly of the same replica, and its one retry failed as well.
NONCE_CLOCK_SKEW = timedelta(minutes=10)
_NONCE_MAC = 16  # bytes of HMAC-SHA256 kept: forging one is a 2**-128 guess
# base64url of 8 + 16 + 16 bytes, unpadded: 54 characters (consume_nonce takes up to 64)
_NONCE_SHAPE = re.compile(r"[A-Za-z0-9_-]{54}")
# Expired uses are swept by the use that finds this many made since the last sweep.
_SWEEP_EVERY = 256
_consumed = [0]

_REASONS = {
    0: "unspecified",
    1: "keyCompromise",
    3: "affiliationChanged",
    4: "superseded",
    5: "cessationOfOperation",
    6: "certificateHold",
    9: "privilegeWithdrawn",
}


@dataclass(frozen=True)
class AcmeSettings:
    """The ``acme.*`` configuration, checked."""

    issuer_id: str
    validity: timedelta
    allowed_names: tuple[str, ...] = ()
    http_01_port: int = 80
    external_account_required: bool = False
    # dns-01's resolvers, (address, port); empty: the system resolver (/etc/resolv.conf).
    dns_resolvers: tuple[tuple[str, int], ...] = ()


def account_actor(account_id: str) -> str:
    """The actor an account's audited actions are recorded under."""
    return f"acme:{account_id}"


def _principal(account_id: str, source: str, permission: str) -> Principal:
    # What the issuance and revocation services check: the ACME account holds exactly the
    # permission of the one step it takes, and nothing of certctl's own names (issuance).
    return Principal(account_actor(account_id), (), frozenset({permission}), "acme", source)


def check_issuer(services: Services, settings: AcmeSettings) -> None:
    """Refuse a start with ``acme.issuer`` naming no issuer, or a managed service's CA.

    A clear line at start-up, not a failed finalize for every order: a managed service's CA
    issues for its reconciler only.

    Raises:
        InvalidRequest: no such issuer, or a managed one.
    """
    try:
        check_not_managed(settings.issuer_id)
        load_issuer_certificates(services, settings.issuer_id)
    except NotFound:
        raise InvalidRequest(
            f"acme.issuer {settings.issuer_id}: no such issuer; create it "
            "(POST /api/v1/issuers) or name an existing one (certctl issuers list)"
        ) from None
    except Conflict as exc:
        raise InvalidRequest(f"acme.issuer {settings.issuer_id}: {exc.detail}") from None


# --- nonces -------------------------------------------------------------------------------


def _nonce_key(services: Services) -> bytes:
    # Derived from the KEK: every replica and worker of one store holds it (they unwrap the
    # issuer keys with it), nothing public leads to it, and it costs no stored row or read.
    # A KEK rotation refuses the nonces handed out before it once (badNonce: clients retry
    # with a fresh one). Derived per call: HKDF costs a few microseconds.
    return services.wrapper.derive("acme nonce: mac")


def _nonce_mac(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256")[:_NONCE_MAC]


def mint_nonce(services: Services) -> str:
    """A new nonce, valid for an hour, accepted once by any replica; nothing is written.

    Issued-at seconds (8 bytes), 16 random bytes and an HMAC-SHA256 of both under the
    store's nonce key (16 bytes), base64url: 54 characters. Every ACME answer carries one,
    errors and anonymous ones too, so handing one out must cost no commit: a stored nonce
    made each anonymous request a durable write. Its one use is what is stored.
    """
    body = int(services.clock().timestamp()).to_bytes(8, "big") + secrets.token_bytes(16)
    raw = body + _nonce_mac(_nonce_key(services), body)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def consume_nonce(services: Services, value: object) -> None:
    """Accept ``value`` once: made here (its MAC), under an hour old, never used before.

    The use is a row of ``acme_nonces`` kept until the nonce is too old to be accepted: the
    primary key refuses a second one, on any replica, and of two requests racing with one
    nonce exactly one commits. A refused nonce writes nothing.

    Raises:
        AcmeError: badNonce (missing, malformed, not made by this store, expired, from the
            future, or used already).
    """
    if not isinstance(value, str) or not value or len(value) > 64:
        raise AcmeError("the protected header holds no usable nonce", "badNonce")
    now = services.clock()
    issued = _nonce_issued(services, value)
    if issued is None:
        raise AcmeError("nonce not issued by this server; get a fresh one", "badNonce")
    age = now.timestamp() - issued
    if age >= NONCE_LIFETIME.total_seconds() or age < -NONCE_CLOCK_SKEW.total_seconds():
        raise AcmeError(
            "nonce expired (or issued ahead of this clock); get a fresh one", "badNonce"
        )
    # Kept until no replica accepts the nonce any more: its hour, plus how far the clock of
    # the replica sweeping may run ahead of one still accepting it.
    expires = datetime.fromtimestamp(issued, UTC) + NONCE_LIFETIME + NONCE_CLOCK_SKEW
    _consumed[0] += 1
    try:
        with services.sessions.begin() as session:
            session.add(AcmeNonce(value=value, expires=expires))
            session.flush()
            if _consumed[0] % _SWEEP_EVERY == 0:
                session.execute(delete(AcmeNonce).where(AcmeNonce.expires <= now))
    except IntegrityError:
        raise AcmeError("nonce used already; get a fresh one", "badNonce") from None


def _nonce_issued(services: Services, value: str) -> int | None:
    # The issued-at seconds of a nonce mint_nonce made with this store's key, else None.
    # Only the one spelling mint_nonce gives is accepted: base64url's last character holds
    # 4 unused bits, and an alias decoding to the same bytes would be another row, a
    # second use.
    if _NONCE_SHAPE.fullmatch(value) is None:
        return None
    raw = base64.urlsafe_b64decode(value + "==")
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != value:
        return None
    body, mac = raw[:-_NONCE_MAC], raw[-_NONCE_MAC:]
    if not hmac.compare_digest(mac, _nonce_mac(_nonce_key(services), body)):
        return None
    return int.from_bytes(body[:8], "big")


# --- accounts -----------------------------------------------------------------------------


def find_account(services: Services, account_id: str, eab_required: bool = False) -> AcmeAccount:
    """The account ``account_id`` (a kid's last segment).

    ``eab_required`` (``acme.external-account-required``): an account no External Account
    Binding bound is refused, as new-account refuses to make one.

    Raises:
        AcmeError: accountDoesNotExist, or unauthorized for a deactivated account or an
            unbound one while a binding is required.
    """
    # No account has an id with a NUL: looked up, it was a 500 on PostgreSQL (no NUL in text).
    account = None
    if "\x00" not in account_id:
        with services.sessions() as session:
            account = session.get(AcmeAccount, account_id)
    if account is None:
        raise AcmeError(f"account {account_id[:40]!r} does not exist", "accountDoesNotExist")
    if account.status != "valid":
        raise AcmeError(f"account {account_id} is {account.status}", "unauthorized", 401)
    if eab_required and account.eab_key_id is None:
        raise _unbound(account)
    return account


def _unbound(account: AcmeAccount) -> AcmeError:
    # An account made while anyone could make one, before the operator turned the setting
    # on: left working, it would be the way around the binding (whoever made one then keeps
    # ordering). Its holder binds it with new-account and a key (create_account).
    return AcmeError(
        f"account {account.id} was made without an External Account Binding, which this "
        "server now requires: send new-account again with one (an EAB key id and HMAC key "
        "from the operator: certctl acme eab create)",
        "unauthorized",
        403,
    )


# Orders an account's order list shows (RFC 8555 7.1.2.1 allows paging; certctl lists the
# newest only).
MAX_LISTED_ORDERS = 1000


def account_orders(services: Services, account: AcmeAccount) -> list[str]:
    """The ids of ``account``'s orders, newest first (at most ``MAX_LISTED_ORDERS``)."""
    with services.sessions() as session:
        return list(
            session.scalars(
                select(AcmeOrder.id)
                .where(AcmeOrder.account_id == account.id)
                .order_by(AcmeOrder.id.desc())
                .limit(MAX_LISTED_ORDERS)
            )
        )


def account_key(account: AcmeAccount) -> JwsPublicKey:
    """The public key an account's requests are signed with."""
    return load_jwk(account.jwk)


def _checked_contact(contact: object) -> list[str]:
    if contact is None:
        return []
    if not isinstance(contact, list) or not all(isinstance(c, str) for c in contact):
        raise AcmeError("contact: expected a list of mailto: URLs")
    if len(contact) > MAX_CONTACTS:
        raise AcmeError(f"contact: {len(contact)} entries; at most {MAX_CONTACTS}")
    for item in contact:
        if not item.lower().startswith("mailto:"):
            raise AcmeError(f"{item[:60]}: only mailto: contacts", "unsupportedContact")
        address = item[7:]
        if (
            "@" not in address
            or len(address) > 254
            or any(c in address for c in ",?<> \t\r\n")
            or not address.isprintable()
        ):
            raise AcmeError(f"{item[:60]}: not one e-mail address", "invalidContact")
    return list(contact)


def create_account(
    services: Services,
    jwk: dict[str, Any],
    payload: dict[str, Any],
    source: str,
    wait_s: float = 0.0,
    url: str = "",
    eab_required: bool = False,
) -> tuple[AcmeAccount, bool]:
    """The account of ``jwk``'s key, made now unless it exists (RFC 8555 7.3); and whether new.

    ``wait_s``: how long ``source`` is to wait before it may make another account (0: now).
    ``url``: the new-account URL an External Account Binding must name (RFC 8555 7.3.4);
    a binding given is checked and recorded, and with ``eab_required`` one is needed.

    Raises:
        AcmeError: accountDoesNotExist for ``onlyReturnExisting`` without one; malformed,
            unsupportedContact or invalidContact for a bad ``contact``; rateLimited (429)
            for a new account while ``wait_s``; externalAccountRequired (403) without a
            binding when one is required, unauthorized (403) for a binding that does not hold.
    """
    key = load_jwk(jwk)
    print_ = thumbprint(key)
    existing = _account_of_key(services, print_)
    if existing is not None:
        if eab_required and existing.eab_key_id is None:
            return _bind_existing(services, existing, payload, print_, url, source), False
        return existing, False
    if payload.get("onlyReturnExisting") is True:
        raise AcmeError("no account for this key", "accountDoesNotExist")
    if wait_s > 0:
        seconds = int(wait_s) + 1
        raise AcmeError(
            f"too many accounts made from {source} lately; try again in {seconds} s",
            "rateLimited",
            429,
            retry_after=seconds,
        )
    contact = _checked_contact(payload.get("contact"))
    binding = payload.get("externalAccountBinding")
    eab: AcmeEabKey | None = None
    if binding is not None:
        eab = checked_binding(services, binding, print_, url)
    elif eab_required:
        raise AcmeError(
            "this server makes accounts only with an External Account Binding "
            "(an EAB key id and HMAC key from the operator: certctl acme eab create)",
            "externalAccountRequired",
            403,
        )
    now = services.clock()
    account = AcmeAccount(
        id=new_id(),
        thumbprint=print_,
        jwk=jwk_of(key),
        status="valid",
        contact=contact,
        created_at=now,
        eab_key_id=None if eab is None else eab.id,
    )
    detail = f"thumbprint {print_}"
    if eab is not None:
        # The certctl actor the account answers to: whoever minted the key that bound it.
        detail += f"; bound by EAB key {eab.id} of {eab.actor_id}"
    try:
        with services.sessions.begin() as session:
            session.add(account)
            if eab is not None:
                session.flush()  # the key's account_id references the account row
                bind(session, eab, account.id, now)
            record(
                session,
                at=now,
                actor=account_actor(account.id),
                action="acme.account.create",
                target=account.id,
                source=source,
                detail=detail,
            )
    except IntegrityError:
        # A concurrent request (a retry, two issuers sharing the key) registered the key
        # first: the thumbprint is unique. Its account is this key's, as when found above.
        existing = _account_of_key(services, print_)
        if existing is None:
            raise
        return existing, False
    return account, True


def _bind_existing(
    services: Services,
    account: AcmeAccount,
    payload: dict[str, Any],
    print_: str,
    url: str,
    source: str,
) -> AcmeAccount:
    """Bind ``account``, made before a binding was required, with the one ``payload`` holds.

    Raises:
        AcmeError: externalAccountRequired (403) without a binding, unauthorized (403) for one
            that does not hold, or for the account bound meanwhile by another key.
    """
    binding = payload.get("externalAccountBinding")
    if binding is None:
        raise AcmeError(
            f"account {account.id} was made without an External Account Binding, which this "
            "server now requires (an EAB key id and HMAC key from the operator: certctl acme "
            "eab create)",
            "externalAccountRequired",
            403,
        )
    eab = checked_binding(services, binding, print_, url)
    now = services.clock()
    with services.sessions.begin() as session:
        bound = session.execute(
            update(AcmeAccount)
            .where(AcmeAccount.id == account.id, AcmeAccount.eab_key_id.is_(None))
            .values(eab_key_id=eab.id)
        )
        if bound.rowcount != 1:  # type: ignore[attr-defined]
            raise AcmeError(f"account {account.id} was bound meanwhile", "unauthorized", 403)
        bind(session, eab, account.id, now)
        record(
            session,
            at=now,
            actor=account_actor(account.id),
            action="acme.account.bind",
            target=account.id,
            source=source,
            detail=f"bound by EAB key {eab.id} of {eab.actor_id}",
        )
    account.eab_key_id = eab.id
    return account


def _account_of_key(services: Services, print_: str) -> AcmeAccount | None:
    """The account of the key with thumbprint ``print_``, None when there is none.

    Raises:
        AcmeError: unauthorized for a deactivated account's key.
    """
    with services.sessions() as session:
        existing = session.scalar(select(AcmeAccount).where(AcmeAccount.thumbprint == print_))
    if existing is not None and existing.status != "valid":
        # RFC 8555 7.3.6: a deactivated account's key authorizes nothing more.
        raise AcmeError(f"account {existing.id} is {existing.status}", "unauthorized", 401)
    return existing


def update_account(
    services: Services, account: AcmeAccount, payload: dict[str, Any], source: str
) -> AcmeAccount:
    """Apply an account update (RFC 8555 7.3.2, 7.3.6): ``contact``, ``status: deactivated``.

    An empty payload (``{}`` or POST-as-GET) changes nothing.

    Raises:
        AcmeError: malformed (another status), or a bad contact.
    """
    status = payload.get("status")
    if status == "valid":
        status = None  # a client sending the account back as it is (acme's update_registration)
    if status is not None and status != "deactivated":
        raise AcmeError(f"status: {str(status)[:20]!r}; a client may set deactivated only")
    contact = _checked_contact(payload["contact"]) if "contact" in payload else None
    if status is None and contact is None:
        return account
    now = services.clock()
    with services.sessions.begin() as session:
        # A write first (hold_valid), not SELECT … FOR UPDATE, which SQLite ignores: an
        # operator's deactivation committed after this request read the account was missed.
        if not hold_valid(session, account.id):
            raise AcmeError(f"account {account.id} is deactivated", "unauthorized", 401)
        row = session.get(AcmeAccount, account.id, populate_existing=True)
        assert row is not None  # held above
        if contact is not None:
            row.contact = contact
        cancelled = "" if status is None else cut_off(session, row, now)
        record(
            session,
            at=now,
            actor=account_actor(account.id),
            action="acme.account.deactivate" if status else "acme.account.update",
            target=account.id,
            source=source,
            detail=cancelled,
        )
    return row


def change_key(
    services: Services, account: AcmeAccount, new_key: JwsPublicKey, source: str
) -> AcmeAccount:
    """Give ``account`` another key (RFC 8555 7.3.5), checked by the caller's nested JWS.

    Raises:
        AcmeError: conflict (409) when another account holds the new key.
    """
    print_ = thumbprint(new_key)
    now = services.clock()
    with services.sessions.begin() as session:
        # The account held first (a write: SQLite ignores FOR UPDATE): a deactivation
        # committed after this request read the account was missed, and the cut-off account
        # took the new key.
        if not hold_valid(session, account.id):
            raise AcmeError(f"account {account.id} is deactivated", "unauthorized", 401)
        holder = session.scalar(select(AcmeAccount.id).where(AcmeAccount.thumbprint == print_))
        if holder is not None:
            raise AcmeError(f"the new key is account {holder}'s already", "conflict", 409)
        row = session.get(AcmeAccount, account.id, populate_existing=True)
        assert row is not None  # held above
        old = row.thumbprint
        row.thumbprint = print_
        row.jwk = jwk_of(new_key)
        record(
            session,
            at=now,
            actor=account_actor(account.id),
            action="acme.account.key-change",
            target=account.id,
            source=source,
            detail=f"thumbprint {old} -> {print_}",
        )
    return row


# --- orders -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChallengeView:
    """A challenge as the client sees it."""

    id: str
    authorization_id: str
    type: str
    token: str
    status: str
    validated: datetime | None  # the validation's time when valid, when it began if processing
    error: dict[str, Any] | None

    def stale(self, now: datetime) -> bool:
        """Processing for longer than a validation takes: its task is gone."""
        return self.status == "processing" and (
            self.validated is None or self.validated <= now - STALE_VALIDATION
        )


@dataclass(frozen=True)
class AuthorizationView:
    """An authorization as the client sees it (status after expiry)."""

    id: str
    order_id: str
    identifier: str  # of a wildcard, its base name (RFC 8555 7.1.4)
    status: str
    expires: datetime
    challenges: tuple[ChallengeView, ...]
    wildcard: bool = False
    identifier_type: str = "dns"  # or "ip" (RFC 8738)


@dataclass(frozen=True)
class OrderView:
    """An order as the client sees it (status after expiry)."""

    id: str
    account_id: str
    status: str
    expires: datetime
    identifiers: tuple[str, ...]
    authorizations: tuple[str, ...]
    certificate_id: str | None
    error: dict[str, Any] | None
    # Those of ``identifiers`` that are IP addresses (RFC 8738); the others are DNS names.
    ip_identifiers: frozenset[str] = frozenset()
    # The certID (RFC 9773 4.1) of the certificate the order replaces: reflected in every
    # view of the order, as RFC 9773 5 requires of a server that took ``replaces``.
    replaces: str | None = None


def _checked_ip(value: str) -> str:
    """``value`` when it is an IP address as RFC 8738 3 writes one, else the refusal."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise AcmeError(
            f"{value[:60]}: not an IP address as RFC 8738 writes one (IPv4 dotted decimal "
            "without leading zeros, IPv6 as RFC 5952: lower-case, zeros compressed)",
            "rejectedIdentifier",
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise AcmeError(
            f"{value[:60]}: an IPv6 scope (%zone) is no part of an address", "rejectedIdentifier"
        )
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise AcmeError(
            f"{value[:60]}: an IPv4-mapped address; give the IPv4 address ({address.ipv4_mapped})",
            "rejectedIdentifier",
        )
    if address.is_unspecified or address.is_multicast:
        raise AcmeError(
            f"{value[:60]}: not the address of one host (unspecified or multicast)",
            "rejectedIdentifier",
        )
    if str(address) != value:
        # RFC 8738 3 and RFC 8555 7.1.4: the value as a client would find it in the
        # certificate, one spelling per address (as DNS names are given lower-case).
        raise AcmeError(
            f"{value[:60]}: give IP addresses in their canonical text form ({address})",
            "rejectedIdentifier",
        )
    return value


def _checked_identifiers(payload: dict[str, Any], settings: AcmeSettings) -> list[tuple[str, str]]:
    identifiers = payload.get("identifiers")
    if not isinstance(identifiers, list) or not identifiers:
        raise AcmeError("identifiers: expected a non-empty list")
    if len(identifiers) > MAX_NAMES_PER_TYPE:
        raise AcmeError(f"identifiers: {len(identifiers)}; at most {MAX_NAMES_PER_TYPE}")
    names: list[tuple[str, str]] = []
    shape = 'identifiers: each is {"type": "dns", "value": NAME} or {"type": "ip", "value": IP}'
    for item in identifiers:
        if not isinstance(item, dict) or set(item) != {"type", "value"}:
            raise AcmeError(shape)
        kind, value = item["type"], item["value"]
        if not isinstance(kind, str) or not isinstance(value, str):
            raise AcmeError(shape)
        if kind == "ip":
            address = _checked_ip(value)
            if not name_allowed(address, settings.allowed_names, ip=True):
                raise AcmeError(
                    f"{address}: not among the addresses this server issues for "
                    "(acme.allowed-names: add the address or a network holding it)",
                    "rejectedIdentifier",
                )
            if ("ip", address) not in names:
                names.append(("ip", address))
            continue
        if kind != "dns":
            raise AcmeError(f"identifier type {kind[:20]!r} not supported", "unsupportedIdentifier")
        if is_ip(value):
            # What to send instead, canonical (RFC 8738 3): the spelling sent may be refused.
            canonical = str(ipaddress.ip_address(value))[:60]
            raise AcmeError(
                f"{value[:60]}: an IP address; order it as "
                f'{{"type": "ip", "value": "{canonical}"}} (RFC 8738: a client that sends '
                "addresses as DNS names, as lego 4.9 does, cannot order them)",
                "rejectedIdentifier",
            )
        try:
            # "*." and a name of two labels or more (RFC 6125 6.4.3): proved by dns-01 alone.
            name = validate_dns_name(value, allow_wildcard=True)
        except InvalidRequest as exc:
            raise AcmeError(exc.detail, "rejectedIdentifier") from None
        if name != value:
            # RFC 8555 7.1.4: the value as a client would find it in the certificate.
            raise AcmeError(
                f"{value[:60]}: give DNS names lower-case, as A-labels, without a final dot"
                f" ({name})",
                "rejectedIdentifier",
            )
        if not name_allowed(name, settings.allowed_names):
            raise AcmeError(
                f"{name}: not among the names this server issues for (acme.allowed-names)",
                "rejectedIdentifier",
            )
        if ("dns", name) not in names:
            names.append(("dns", name))
    return names


def new_order(
    services: Services,
    settings: AcmeSettings,
    account: AcmeAccount,
    payload: dict[str, Any],
    source: str,
) -> OrderView:
    """Make an order, with one pending authorization (http-01 and dns-01 challenges) per name.

    A wildcard ``*.NAME`` gets an authorization of NAME marked wildcard, with dns-01 alone; an
    IP address (RFC 8738) one with http-01 alone.

    Raises:
        AcmeError: malformed (no identifiers, notBefore/notAfter), rejectedIdentifier (a name
            or address outside acme.allowed-names, an address not in canonical form),
            unsupportedIdentifier; for ``replaces`` (RFC 9773 5) unauthorized (another
            account's certificate) and alreadyReplaced.
    """
    unknown = set(payload) - {"identifiers", "notBefore", "notAfter", "replaces"}
    if unknown:
        raise AcmeError(f"unknown member(s) {', '.join(sorted(unknown))[:80]} in the order")
    if "notBefore" in payload or "notAfter" in payload:
        raise AcmeError(
            "notBefore and notAfter are not supported: every certificate is valid from its "
            f"issuance for acme.validity ({settings.validity.days} days)"
        )
    names = _checked_identifiers(payload, settings)
    replaced = None
    # RFC 9773 5: the certificate this order renews. A null is no replaces, as a client
    # serializing an unset optional field sends it (RFC 9773 defines a string or nothing).
    if payload.get("replaces") is not None:
        replaced = replaced_certificate(
            services, account.id, payload["replaces"], [name for _, name in names]
        )
    now = services.clock()
    order = AcmeOrder(
        id=new_id(),
        account_id=account.id,
        status="pending",
        identifiers=[{"type": kind, "value": n} for kind, n in names],
        expires=now + ORDER_LIFETIME,
        certificate_id=None,
        error=None,
        created_at=now,
        replaces=replaced.id if replaced is not None else None,
    )
    with services.sessions.begin() as session:
        if not hold_valid(session, account.id):  # deactivated since this request read it
            raise AcmeError(f"account {account.id} is deactivated", "unauthorized", 401)
        if replaced is not None:
            check_not_replaced(session, replaced, now)
        pending = session.scalar(
            select(func.count(AcmeAuthorization.id))
            .join(AcmeOrder, AcmeOrder.id == AcmeAuthorization.order_id)
            .where(
                AcmeOrder.account_id == account.id,
                AcmeAuthorization.status == "pending",
                AcmeAuthorization.expires > now,
            )
        )
        if (pending or 0) + len(names) > MAX_PENDING_AUTHORIZATIONS:
            raise AcmeError(
                f"this account holds {pending} pending authorizations and may hold "
                f"{MAX_PENDING_AUTHORIZATIONS}: answer or deactivate them, or wait for them "
                f"to expire ({PENDING_AUTHZ_LIFETIME.days} day after their order)",
                "rateLimited",
                429,
            )
        session.add(order)
        session.flush()  # the order before its authorizations (PostgreSQL checks the FK)
        for identifier_type, name in names:
            # RFC 8555 7.1.4: a wildcard's authorization names its base and says wildcard;
            # only dns-01 proves it (control of the zone, not of one host in it).
            wildcard = name.startswith("*.")
            authz = AcmeAuthorization(
                id=new_id(),
                order_id=order.id,
                identifier=name[2:] if wildcard else name,
                identifier_type=identifier_type,
                status="pending",
                expires=now + PENDING_AUTHZ_LIFETIME,
                wildcard=wildcard,
            )
            session.add(authz)
            session.flush()
            kinds = ("dns-01",) if wildcard else CHALLENGE_TYPES
            for kind in IP_CHALLENGE_TYPES if identifier_type == "ip" else kinds:
                # A token of its own each: one challenge's token tells nothing of another's.
                session.add(
                    AcmeChallenge(
                        id=new_id(),
                        authorization_id=authz.id,
                        type=kind,
                        token=secrets.token_urlsafe(32),
                        status="pending",
                        validated_at=None,
                        error=None,
                    )
                )
        record(
            session,
            at=now,
            actor=account_actor(account.id),
            action="acme.order.create",
            target=order.id,
            source=source,
            detail=", ".join(name for _, name in names)[:400]
            if replaced is None
            else f"{', '.join(name for _, name in names)[:350]} replacing {replaced.id}",
        )
    return order_view(services, account, order.id)


def _owned_order(session: Any, account: AcmeAccount, order_id: str) -> AcmeOrder:
    order = session.get(AcmeOrder, order_id)
    if order is None or order.account_id != account.id:
        # Another account's order is no more visible than one that does not exist.
        raise AcmeError(f"order {order_id[:40]} not found", "malformed", 404)
    assert isinstance(order, AcmeOrder)
    return order


def _authz_status(authz: AcmeAuthorization, now: datetime) -> str:
    if authz.status == "pending" and authz.expires <= now:
        return "expired"
    return authz.status


def _order_status(order: AcmeOrder, authzs: list[AcmeAuthorization], now: datetime) -> str:
    if order.status in ("pending", "ready") and order.expires <= now:
        return "invalid"  # RFC 8555 7.1.6: an expired order is invalid
    if order.status == "pending" and any(_authz_status(a, now) == "expired" for a in authzs):
        return "invalid"
    return order.status


def order_view(services: Services, account: AcmeAccount, order_id: str) -> OrderView:
    """The order ``order_id`` of ``account``, its status as of now.

    Raises:
        AcmeError: 404 malformed for an order of another account or none.
    """
    now = services.clock()
    with services.sessions() as session:
        order = _owned_order(session, account, order_id)
        authzs = list(
            session.scalars(
                select(AcmeAuthorization)
                .where(AcmeAuthorization.order_id == order.id)
                .order_by(AcmeAuthorization.id)
            )
        )
        replaced_pem = (
            session.scalar(
                select(CertificateRecord.certificate_pem).where(
                    CertificateRecord.id == order.replaces
                )
            )
            if order.replaces is not None
            else None
        )
    return OrderView(
        id=order.id,
        account_id=order.account_id,
        status=_order_status(order, authzs, now),
        expires=order.expires,
        identifiers=tuple(i["value"] for i in order.identifiers),
        authorizations=tuple(a.id for a in authzs),
        certificate_id=order.certificate_id,
        error=order.error,
        ip_identifiers=frozenset(i["value"] for i in order.identifiers if i["type"] == "ip"),
        replaces=cert_id_of(replaced_pem) if replaced_pem is not None else None,
    )


def _challenge_view(challenge: AcmeChallenge, authz_status: str) -> ChallengeView:
    status = challenge.status
    if authz_status == "expired" and status in ("pending", "processing"):
        status = "invalid"
    return ChallengeView(
        id=challenge.id,
        authorization_id=challenge.authorization_id,
        type=challenge.type,
        token=challenge.token,
        status=status,
        validated=challenge.validated_at,
        error=challenge.error,
    )


def _challenge_rank(challenge: AcmeChallenge) -> int:
    return CHALLENGE_TYPES.index(challenge.type) if challenge.type in CHALLENGE_TYPES else 99


def _owned_authz(session: Any, account: AcmeAccount, authz_id: str) -> AcmeAuthorization:
    authz = session.get(AcmeAuthorization, authz_id)
    if authz is not None:
        order = session.get(AcmeOrder, authz.order_id)
        if order is not None and order.account_id == account.id:
            assert isinstance(authz, AcmeAuthorization)
            return authz
    raise AcmeError(f"authorization {authz_id[:40]} not found", "malformed", 404)


def authorization_view(
    services: Services, account: AcmeAccount, authz_id: str
) -> AuthorizationView:
    """The authorization ``authz_id`` of one of ``account``'s orders, as of now.

    Raises:
        AcmeError: 404 malformed for another account's or none.
    """
    now = services.clock()
    with services.sessions() as session:
        authz = _owned_authz(session, account, authz_id)
        challenges = sorted(
            session.scalars(
                select(AcmeChallenge).where(AcmeChallenge.authorization_id == authz.id)
            ),
            key=_challenge_rank,
        )
    status = _authz_status(authz, now)
    return AuthorizationView(
        id=authz.id,
        order_id=authz.order_id,
        identifier=authz.identifier,
        status=status,
        expires=authz.expires,
        challenges=tuple(_challenge_view(c, status) for c in challenges),
        wildcard=authz.wildcard,
        identifier_type=authz.identifier_type,
    )


def deactivate_authorization(
    services: Services, account: AcmeAccount, authz_id: str, payload: dict[str, Any], source: str
) -> AuthorizationView:
    """Deactivate a pending or valid authorization (RFC 8555 7.5.2); its order turns invalid.

    certbot deactivates the valid ones of an order that failed, so that they are not reused.

    Raises:
        AcmeError: malformed (another payload, an authorization that is neither pending nor
            valid), 404 malformed for another account's or none.
    """
    if payload != {"status": "deactivated"}:
        raise AcmeError('an authorization takes {"status": "deactivated"} or POST-as-GET')
    now = services.clock()
    with services.sessions.begin() as session:
        authz = _owned_authz(session, account, authz_id)
        if _authz_status(authz, now) not in ("pending", "valid"):
            raise AcmeError(f"authorization {authz_id} is {_authz_status(authz, now)}")
        authz.status = "deactivated"
        order = session.get(AcmeOrder, authz.order_id, with_for_update=True)
        if order is not None and order.status in ("pending", "ready"):
            order.status = "invalid"  # RFC 8555 7.1.6: an authorization of it is deactivated
        record(
            session,
            at=now,
            actor=account_actor(account.id),
            action="acme.authorization.deactivate",
            target=f"{authz.id} {'*.' if authz.wildcard else ''}{authz.identifier}",
            source=source,
        )
    return authorization_view(services, account, authz_id)


def challenge_view(
    services: Services, account: AcmeAccount, challenge_id: str
) -> tuple[ChallengeView, str]:
    """The challenge ``challenge_id`` and its identifier (the name to validate).

    Raises:
        AcmeError: 404 malformed for another account's or none.
    """
    now = services.clock()
    with services.sessions() as session:
        challenge = session.get(AcmeChallenge, challenge_id)
        if challenge is None:
            raise AcmeError(f"challenge {challenge_id[:40]} not found", "malformed", 404)
        authz = _owned_authz(session, account, challenge.authorization_id)
    return _challenge_view(challenge, _authz_status(authz, now)), authz.identifier


def start_challenge(
    services: Services, account: AcmeAccount, challenge_id: str
) -> tuple[ChallengeView, str | None]:
    """Mark a pending challenge ``processing`` (RFC 8555 7.5.1).

    Returns:
        The challenge as now, and the name to validate when this request started it (None
        when it was started before, or is over: answered as it is).

    Raises:
        AcmeError: 404 malformed for another account's or none.
    """
    view, name = challenge_view(services, account, challenge_id)
    if view.status != "pending":
        return view, None
    with services.sessions.begin() as session:
        # The authorization locked before anything is read: of two challenges of it answered
        # at once (http-01 and dns-01), one is validated; the other stays pending, answered
        # as it is. One failed try makes the authorization invalid (RFC 8555 7.1.6), one more
        # try after it would let a client guess on. An UPDATE, not SELECT … FOR UPDATE: it
        # locks the row on PostgreSQL and the database on SQLite, which has no FOR UPDATE
        # (with it both challenges were started there).
        locked = session.execute(
            update(AcmeAuthorization)
            .where(
                AcmeAuthorization.id == view.authorization_id,
                AcmeAuthorization.status == "pending",
            )
            .values(status="pending")
        )
        authz = session.get(AcmeAuthorization, view.authorization_id, populate_existing=True)
        tried = session.scalar(
            select(func.count(AcmeChallenge.id)).where(
                AcmeChallenge.authorization_id == view.authorization_id,
                AcmeChallenge.status != "pending",
            )
        )
        if locked.rowcount != 1 or authz is None or tried:  # type: ignore[attr-defined]
            return challenge_view(services, account, challenge_id)[0], None
        if authz.wildcard and view.type != "dns-01":
            # None is made (new_order); one in the store anyway does not prove a wildcard.
            return view, None
        if authz.identifier_type == "ip" and view.type not in IP_CHALLENGE_TYPES:
            return view, None  # none is made: an address has no zone (RFC 8738 7)
        started = session.execute(
            update(AcmeChallenge)
            .where(AcmeChallenge.id == challenge_id, AcmeChallenge.status == "pending")
            .values(status="processing", validated_at=services.clock())
        )
    if started.rowcount != 1:  # type: ignore[attr-defined]  # another request started it
        return challenge_view(services, account, challenge_id)[0], None
    return challenge_view(services, account, challenge_id)[0], name


def restart_stale_validation(
    services: Services, account: AcmeAccount, challenge_id: str
) -> tuple[ChallengeView, str] | None:
    """Claim a challenge whose validation was lost (``ChallengeView.stale``) to run it again.

    Returns:
        The challenge and the name to validate when this request claimed it; None when it is
        not stale (any more: another request or replica claimed it first, or it finished).

    Raises:
        AcmeError: 404 malformed for another account's or none.
    """
    view, name = challenge_view(services, account, challenge_id)
    now = services.clock()
    if not view.stale(now):
        return None
    with services.sessions.begin() as session:
        # Conditional on the time read: of concurrent polls (any replica), one claims it.
        claimed = session.execute(
            update(AcmeChallenge)
            .where(
                AcmeChallenge.id == challenge_id,
                AcmeChallenge.status == "processing",
                AcmeChallenge.validated_at.is_(None)
                if view.validated is None
                else AcmeChallenge.validated_at == view.validated,
            )
            .values(validated_at=now)
        )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    log.warning(
        "ACME challenge %s (%s) was processing since %s with no validation running "
        "(a restart?): validating it again",
        challenge_id,
        name,
        view.validated.isoformat() if view.validated else "unknown",
    )
    return challenge_view(services, account, challenge_id)[0], name


def record_validation(
    services: Services, challenge_id: str, error: dict[str, Any] | None, source: str
) -> None:
    """Record a validation's result: challenge and authorization valid or invalid, the order.

    The order becomes ``ready`` once every authorization is valid, ``invalid`` at the first
    invalid one (RFC 8555 7.1.6).
    """
    now = services.clock()
    with services.sessions.begin() as session:
        # A write first, then the reads: on SQLite, which has no FOR UPDATE, only a write
        # locks (the database); a deactivation committed between the reads and the writes
        # was overwritten, the authorization valid again and its order ready.
        claimed = session.execute(
            update(AcmeChallenge)
            .where(AcmeChallenge.id == challenge_id, AcmeChallenge.status == "processing")
            .values(status="processing")
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]  # recorded, or none
            return
        challenge = session.get(AcmeChallenge, challenge_id, populate_existing=True)
        assert challenge is not None
        authz = session.get(AcmeAuthorization, challenge.authorization_id, with_for_update=True)
        assert authz is not None  # the foreign key
        order = session.get(AcmeOrder, authz.order_id, with_for_update=True)
        assert order is not None
        if error is None and authz.status == "deactivated":
            # Deactivated while this challenge was processing (by its holder, RFC 8555 7.5.2,
            # or with its account): its success counts for nothing, and a valid challenge of
            # a deactivated authorization (one 7.1.6 never makes) told the client otherwise.
            error = {
                "type": "urn:ietf:params:acme:error:unauthorized",
                "detail": f"authorization {authz.id} was deactivated before this validation "
                "finished: its success does not count",
                "status": 403,
            }
        elif error is None and authz.status == "pending" and authz.expires <= now:
            # Its day ran out while the fetch or lookup was under way: an expired
            # authorization is final (RFC 8555 7.1.6), not made valid, with a fresh expiry,
            # by a proof that came too late.
            error = {
                "type": "urn:ietf:params:acme:error:unauthorized",
                "detail": f"authorization {authz.id} expired before this validation finished: "
                "order the name again",
                "status": 403,
            }
        challenge.status = "invalid" if error else "valid"
        challenge.error = error
        if error is None:
            challenge.validated_at = now
        # Only a pending authorization changes: another challenge of it may have settled it
        # first, and one deactivated while its challenge was processing (by its holder, RFC
        # 8555 7.5.2, or with its account) stays so: deactivation is final, and a late success
        # must not hand a cut-off account, or a client that gave it up, a valid one.
        if authz.status == "pending":
            authz.status = "invalid" if error else "valid"
            if error is None:
                authz.expires = order.expires
        session.flush()
        if order.status == "pending":
            statuses = list(
                session.scalars(
                    select(AcmeAuthorization.status).where(AcmeAuthorization.order_id == order.id)
                )
            )
            if "invalid" in statuses:
                order.status = "invalid"
                order.error = error
            elif all(s == "valid" for s in statuses):
                order.status = "ready"
        account_id = order.account_id
        record(
            session,
            at=now,
            actor=account_actor(account_id),
            action="acme.challenge.validate",
            target=f"{challenge.id} {'*.' if authz.wildcard else ''}{authz.identifier}",
            outcome="failure" if error else "success",
            source=source,
            detail=str(error.get("detail", ""))[:400] if error else "",
        )


# --- finalize, download, revoke -----------------------------------------------------------


def _csr_names(csr: x509.CertificateSigningRequest) -> tuple[set[str], set[str]]:
    """The CSR's DNS names (SAN and CN) and IP addresses (SAN), apart.

    Kept apart so that a DNS SAN spelling an address never stands for an IP identifier.

    Raises:
        AcmeError: badCSR, a SAN of another type, or an address as the CN but not a SAN.
    """
    names: set[str] = set()
    ips: set[str] = set()
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        san = None
    except ValueError as exc:
        raise AcmeError(f"CSR extensions unreadable ({exc})", "badCSR") from None
    else:
        san = ext.value
    if san is not None:
        for general in san:
            if isinstance(general, x509.IPAddress):
                if not isinstance(general.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                    raise AcmeError(
                        f"CSR names the network {general.value}; an order holds addresses",
                        "badCSR",
                    )
                ips.add(str(general.value))
                continue
            if not isinstance(general, x509.DNSName):
                raise AcmeError(
                    f"CSR names {type(general).__name__} {str(general.value)[:60]}; an order "
                    "holds DNS names and IP addresses only",
                    "badCSR",
                )
            names.add(general.value.lower())
    for attr in csr.subject:
        if attr.oid != x509.NameOID.COMMON_NAME:
            continue
        value = attr.value if isinstance(attr.value, str) else attr.value.decode(errors="replace")
        # lego puts its first identifier in the CN, an address too: it stands for that
        # address, named in the SAN as well, for the CN is left out of the certificate
        # (_proved_subject): an address in the CN alone would be in no field of it.
        if is_ip(value):
            if str(ipaddress.ip_address(value)) not in ips:  # ips: the SAN's, so far
                raise AcmeError(
                    f"the CSR names {value[:60]} as its CN alone; an address is issued as an "
                    "IP SAN: add it to the subjectAltName",
                    "badCSR",
                )
        else:
            names.add(value.lower())
    return names, ips


def _proved_subject(csr: x509.CertificateSigningRequest) -> x509.Name:
    """The CSR's CN alone (lower-case: the order's name it matched), or an empty subject.

    http-01 proves DNS names and nothing of O, OU, C …, which relying parties may authorize
    on: those are not copied from the CSR, as Let's Encrypt copies none. A CN that is an IP
    address is left out too, as Let's Encrypt does (the address is in the SAN, where RFC
    6125 and browsers look).
    """
    for attr in csr.subject:
        if attr.oid == x509.NameOID.COMMON_NAME:
            value = attr.value
            if not isinstance(value, str):
                value = value.decode(errors="replace")
            if is_ip(value):
                return x509.Name([])
            return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, value.lower())])
    return x509.Name([])


def _check_not_an_account_key(services: Services, csr: x509.CertificateSigningRequest) -> None:
    """Refuse a CSR for the key of an account, this one's or another's (RFC 8555 11.1).

    Whoever holds a certificate's key (every server it is deployed on) would hold that ACME
    account too. An account's own key by mistake, or another's: refused alike.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = csr.public_key()
    except ValueError:
        return  # unreadable: issuance refuses it, saying why
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            return  # no account key can be on another curve (jose.load_jwk)
    elif not isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        return
    print_ = thumbprint(key)
    with services.sessions() as session:
        taken = session.scalar(select(AcmeAccount.id).where(AcmeAccount.thumbprint == print_))
    if taken is not None:
        raise AcmeError(
            "the CSR's public key is an ACME account key; a certificate needs a key of its own",
            "badCSR",
        )


def _proved_names(services: Services, order_id: str) -> set[str]:
    """The names the valid authorizations of ``order_id`` prove (``*.NAME`` for a wildcard's)."""
    with services.sessions() as session:
        rows = session.execute(
            select(AcmeAuthorization.identifier, AcmeAuthorization.wildcard).where(
                AcmeAuthorization.order_id == order_id, AcmeAuthorization.status == "valid"
            )
        ).all()
    return {f"*.{name}" if wildcard else name for name, wildcard in rows}


def finalize_order(
    services: Services,
    settings: AcmeSettings,
    account: AcmeAccount,
    order_id: str,
    payload: dict[str, Any],
    source: str,
) -> OrderView:
    """Issue the order's certificate from the CSR (RFC 8555 7.4), synchronously.

    The CSR's names (its SAN DNS names and its CN, which may be left out) must be the
    order's DNS names, and its SAN IP addresses the order's IP addresses (RFC 8738), no more
    and no fewer. Issuance is the API's CSR path (signature, key policy,
    certctl's own names), by the account as ``acme:<id>`` holding ``cert.issue``. An order
    replacing a certificate (``replaces``) renews it: the new certificate's ``renewed_from``
    names it, and the replaced one's ``renewed_by`` the new one (the latest renewal wins).

    Raises:
        AcmeError: orderNotReady, badCSR, badPublicKey (a key revoked for keyCompromise), 404
            malformed for another account's order.
    """
    from certctl.pki.jose import b64url_decode

    view = order_view(services, account, order_id)
    if view.status != "ready":
        raise AcmeError(
            f"order {order_id} is {view.status}; finalize it once every authorization is valid",
            "orderNotReady",
            403,
        )
    if set(payload) != {"csr"}:
        raise AcmeError('finalize takes {"csr": base64url DER}')
    refused = [
        n
        for n in view.identifiers
        if not name_allowed(n, settings.allowed_names, ip=n in view.ip_identifiers)
    ]
    if refused:
        # acme.allowed-names narrowed since the order was made: it holds at issuance too.
        raise AcmeError(
            f"{', '.join(refused)[:200]}: no longer among the names this server issues for "
            "(acme.allowed-names)",
            "rejectedIdentifier",
        )
    der = b64url_decode(payload["csr"], "csr")
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError:
        raise AcmeError("csr: not a DER certificate signing request", "badCSR") from None
    names, ips = _csr_names(csr)
    wanted = set(view.identifiers) - view.ip_identifiers
    unproved = set(view.identifiers) - _proved_names(services, order_id)
    if unproved:
        # The order is ready only once each authorization is valid; said again here, by name,
        # so that a wildcard SAN is issued only on its own (dns-01) wildcard authorization.
        raise AcmeError(
            f"{', '.join(sorted(unproved))[:200]}: no valid authorization of this order",
            "unauthorized",
            403,
        )
    if names != wanted or ips != view.ip_identifiers:
        extra = sorted(names - wanted) + sorted(ips - view.ip_identifiers)
        missing = sorted(wanted - names) + sorted(view.ip_identifiers - ips)
        said = [f"names {', '.join(extra)[:200]} not in the order"] if extra else []
        said += [f"leaves out {', '.join(missing)[:200]}"] if missing else []
        raise AcmeError(f"the CSR {' and '.join(said)}", "badCSR")
    _check_not_an_account_key(services, csr)
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    principal = _principal(account.id, source, "cert.issue")
    with services.sessions() as session:  # set at new-order, never changed
        replaces = session.scalar(select(AcmeOrder.replaces).where(AcmeOrder.id == order_id))
    try:
        pending = prepare_from_csr(
            services,
            principal,
            issuer_id=settings.issuer_id,
            csr_pem=pem,
            profile=ACME_PROFILE,
            validity=settings.validity,
            subject=_proved_subject(csr),
            renewed_from=replaces,
        )
    except PermissionDenied as exc:  # certctl's own server names under its CA
        raise AcmeError(exc.detail, "rejectedIdentifier", 403) from None
    except BlockedKey as exc:
        # RFC 8555 6.7's badPublicKey, as Boulder answers a key of its blockedKeys; the
        # order stays ready, as for a bad CSR: finalize again with a CSR of a new key.
        raise AcmeError(exc.detail, "badPublicKey") from None
    except InvalidRequest as exc:  # the signature, a weak key, a name the profile refuses
        raise AcmeError(exc.detail, "badCSR") from None
    except Conflict as exc:  # the issuer expired or was revoked: nothing the client can fix
        raise AcmeError(exc.detail, "serverInternal", 500) from None
    with services.engine.begin() as connection:
        if replaces is not None:
            # RFC 9773: the certificate this one renews is renewed, as by the renew route
            # (no longer expiring), in this transaction. Revoked or expired meanwhile, it is
            # linked all the same: ARI asks for exactly that renewal. Nothing is revoked.
            record_renewal(connection, replaces, pending.record.id, revoked_too=True)
        write_rows(connection, pending.rows)
        done = connection.execute(
            update(AcmeOrder)
            .where(AcmeOrder.id == order_id, AcmeOrder.status == "ready")
            .values(status="valid", certificate_id=pending.record.id)
        )
        if done.rowcount != 1:
            # Finalized by a concurrent request, or cancelled meanwhile (the account or an
            # authorization deactivated): this transaction (its certificate) rolls back.
            now_status = connection.scalar(select(AcmeOrder.status).where(AcmeOrder.id == order_id))
            happened = "was finalized already" if now_status == "valid" else "is invalid now"
            raise AcmeError(f"order {order_id} {happened}", "orderNotReady", 403)
    result = pending.finish()
    if replaces is not None:
        RENEWALS.labels("success").inc()  # a renewal, as the renew route's is counted
    for warning in result.warnings:
        if "clipped" in warning and services.logged.first(("acme-clipped", settings.issuer_id)):
            log.warning("acme.validity: %s (said once)", warning)
    return order_view(services, account, order_id)


def certificate_chain(services: Services, account: AcmeAccount, cert_id: str) -> str:
    """The leaf and the chain below the root (as the API's ``chain_pem``), else the root; PEM.

    Raises:
        AcmeError: 404 malformed for a certificate no order of ``account`` holds.
    """
    with services.sessions() as session:
        owned = session.scalar(
            select(AcmeOrder.id).where(
                AcmeOrder.certificate_id == cert_id, AcmeOrder.account_id == account.id
            )
        )
        row = session.get(CertificateRecord, cert_id) if owned else None
    if row is None:
        raise AcmeError(f"certificate {cert_id[:40]} not found", "malformed", 404)
    ca = load_issuer(services, row.issuer_id)
    chain = ca.chain_below_root_pem
    if not chain:
        # A root issuer: its chain below the root is empty, and certbot refuses a fullchain
        # of fewer than two certificates (cert_and_chain_from_fullchain). The root then.
        chain = ca.root.public_bytes(serialization.Encoding.PEM)
    return row.certificate_pem + chain.decode()


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _holds_authorizations(services: Services, account: AcmeAccount, cert: x509.Certificate) -> bool:
    """Whether ``account`` holds a valid, unexpired authorization for each of ``cert``'s names.

    RFC 8555 7.6: such an account may revoke the certificate, whoever ordered it (a client
    that lost its account key proves control of the names again, then revokes).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    names = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    if not names | ips or len(san) != len(names) + len(ips):
        return False  # a name no authorization can cover (an e-mail, a network ...)
    now = services.clock()
    bases = sorted({name.removeprefix("*.") for name in names} | ips)
    with services.sessions() as session:
        rows = session.execute(
            select(
                AcmeAuthorization.identifier,
                AcmeAuthorization.wildcard,
                AcmeAuthorization.identifier_type,
            )
            .join(AcmeOrder, AcmeOrder.id == AcmeAuthorization.order_id)
            .where(
                AcmeOrder.account_id == account.id,
                AcmeAuthorization.status == "valid",
                AcmeAuthorization.expires > now,
                AcmeAuthorization.identifier.in_(bases),
            )
        ).all()
    # A wildcard SAN is covered by a wildcard authorization only, as at finalize.
    held = {f"*.{name}" if wildcard else name for name, wildcard, kind in rows if kind == "dns"}
    held_ips = {name for name, _, kind in rows if kind == "ip"}
    return names <= held and ips <= held_ips


def revoke(
    services: Services,
    account: AcmeAccount | None,
    key: JwsPublicKey | None,
    payload: dict[str, Any],
    source: str,
) -> None:
    """Revoke a certificate (RFC 8555 7.6) through the revocation service (CRL, audit).

    For a certificate issued through ACME only: allowed to the account whose order holds it
    or one holding valid authorizations for all of its names (``account``), or to a request
    signed by the certificate's own key (``key``, a jwk request). keyCompromise, which blocks
    the key, not to an account holding authorizations only.

    Raises:
        AcmeError: malformed (the body, a certificate certctl did not issue), badRevocationReason
            (keyCompromise from authorizations alone too), unauthorized (another account's,
            another key), alreadyRevoked.
    """
    from certctl.pki import format_serial
    from certctl.pki.jose import b64url_decode

    unknown = set(payload) - {"certificate", "reason"}
    if unknown or "certificate" not in payload:
        raise AcmeError('revoke-cert takes {"certificate": base64url DER, "reason"?: code}')
    reason_code = payload.get("reason", 0)
    if isinstance(reason_code, bool) or not isinstance(reason_code, int):
        raise AcmeError("reason: expected an RFC 5280 reason code", "badRevocationReason")
    if reason_code not in _REASONS:
        raise AcmeError(f"reason {reason_code}: not a reason certctl takes", "badRevocationReason")
    der = b64url_decode(payload["certificate"], "certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise AcmeError("certificate: not a DER certificate") from None
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    with services.sessions() as session:
        row = session.scalar(
            select(CertificateRecord).where(
                CertificateRecord.serial == format_serial(cert.serial_number),
                CertificateRecord.certificate_pem == pem,
            )
        )
        orders = (
            list(
                session.scalars(
                    select(AcmeOrder.account_id).where(AcmeOrder.certificate_id == row.id)
                )
            )
            if row is not None
            else []
        )
    if row is None:
        raise AcmeError("certificate: not one this server issued", "malformed", 404)
    if account is not None:
        # Authorizations stand in for the ordering account only on certificates ACME issued:
        # one the API, a managed service or certctl's listener got is revoked by a caller
        # holding cert.revoke, not by whoever can answer http-01 for its names.
        if account.id not in orders and not (
            orders and _holds_authorizations(services, account, cert)
        ):
            raise AcmeError(
                "this account neither ordered that certificate nor holds valid "
                "authorizations for all of its names"
                + (
                    "; sign with the certificate's key instead"
                    if orders
                    else "; it was not issued through ACME: revoke it through certctl's API "
                    "(cert.revoke)"
                ),
                "unauthorized",
                403,
            )
        if account.id not in orders and _REASONS[reason_code] == "keyCompromise":
            # Authorizations prove the names, not the key: keyCompromise blocks the key for
            # every certificate of it, whatever their names (blocked_keys), so a new holder of
            # the names (a domain sold, a shared host) would refuse the key's holder its other
            # certificates. As Let's Encrypt, keyCompromise takes the key's own signature.
            raise AcmeError(
                "reason 1 (keyCompromise): this account holds authorizations for the "
                "certificate's names, not its key; sign the request with the certificate's "
                "key (a jwk request), or give another reason",
                "badRevocationReason",
            )
        actor = account.id
    else:
        assert key is not None
        if _spki(key) != _spki(cert.public_key()):
            raise AcmeError("the JWS is not signed by the certificate's key", "unauthorized", 403)
        if not orders:
            # Issued by the API, for a managed service or certctl's own listener: revoked
            # there, by a caller holding cert.revoke, not by whoever holds the key.
            raise AcmeError(
                "that certificate was not issued through ACME; revoke it through certctl's "
                "API (cert.revoke)",
                "unauthorized",
                403,
            )
        # The key's holder acted, not (necessarily) the account that ordered the certificate:
        # a stolen key revoking must not be audited as that account's doing.
        actor = f"key-{thumbprint(key)[:16]}"
    principal = _principal(actor, source, "cert.revoke")
    try:
        revoke_certificate(services, principal, row.id, _REASONS[reason_code])
    except Conflict as exc:
        raise AcmeError(exc.detail, "alreadyRevoked") from None
