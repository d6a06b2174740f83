"""API key format ``cctl_<key id>_<secret>``: minting, parsing and constant-time checking.

The ``cctl_`` prefix lets secret scanners find leaked keys. Only SHA-256 of the secret is
stored; the key id is the lookup handle, so verification is one primary-key read plus
``hmac.compare_digest``. A fast hash is right here: the secret has 256 bits of entropy, so
there is nothing for a slow KDF to protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from certctl.errors import InvalidRequest

__all__ = [
    "KEY_ID",
    "MintedKey",
    "check_audit_credential",
    "hash_secret",
    "key_head",
    "key_in_name",
    "mint_key",
    "parse_key",
    "redact_keys",
    "secret_matches",
]

PREFIX = "cctl_"
_FORMAT = re.compile(r"^cctl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})\Z")
# Where the key id sits in a well-formed key: for a lookup among stored key ids whose hit is
# then confirmed with ``key_head`` and ``secret_matches`` (only the key's own secret hashes to
# the stored digest), so the lookup itself needs no format check.
KEY_ID = slice(len(PREFIX), len(PREFIX) + 16)


@dataclass(frozen=True)
class MintedKey:
    """A new key: ``value`` is shown to the caller once; only ``secret_sha256`` is stored."""

    key_id: str
    value: str
    secret_sha256: bytes

    def __repr__(self) -> str:
        # Never let the secret reach a log through repr().
        return f"MintedKey(key_id={self.key_id!r}, value='cctl_…')"


def _sha256_constructor() -> Callable[[bytes], hashlib._Hash]:
    """CPython's built-in SHA-256 (``_sha2``, ``_sha256`` before 3.12), else hashlib's.

    The same digest; hashlib's goes through OpenSSL 3, whose per-call algorithm fetch and
    context set-up cost more than hashing a 43-byte secret (~1.3 µs of a cached key check).
    """
    for name in ("_sha2", "_sha256"):
        try:
            return cast("Callable[[bytes], hashlib._Hash]", importlib.import_module(name).sha256)
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256


_SHA256 = _sha256_constructor()


def hash_secret(secret: str) -> bytes:
    """SHA-256 of the secret part."""
    return _SHA256(secret.encode()).digest()


def mint_key() -> MintedKey:
    """Create a fresh key id and 256-bit secret."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return MintedKey(key_id, f"{PREFIX}{key_id}_{secret}", hash_secret(secret))


def parse_key(value: str) -> tuple[str, str] | None:
    """Split a presented key into ``(key id, secret)``; None when malformed."""
    match = _FORMAT.match(value)
    if match is None:
        return None
    return match.group(1), match.group(2)


# Anything after a key id that could be (part of) a secret, e.g. a key pasted where its id
# belongs in a URL, or a key cut short; with its prefix dropped or its id cut short too, a
# hex run and a long secret-like run still are one.
_IN_TEXT = re.compile(r"(cctl_[0-9a-f]{16}_)[A-Za-z0-9_-]+")
# A secret is 43 characters (token_urlsafe(32)); 40 or more is one cut short at the end.
# Shorter runs are names people give things (20240101_production_certificates).
_BARE = re.compile(r"(?<![A-Za-z0-9])([0-9a-f]{6,16}_)[A-Za-z0-9_-]{40,}")


def redact_keys(text: str) -> str:
    """``text`` with the secret of every API key in it replaced (``<id>_…``)."""
    if "_" not in text:  # the common case (no route has one), at one substring search
        return text
    if PREFIX in text:
        text = _IN_TEXT.sub(r"\1…", text)
    return _BARE.sub(_bare_secret, text)


# A key in a display name: its prefix and id with anything after (a whole key, or one cut
# short), or a whole key without its prefix. Not redact_keys's looser bare form (6 hex digits,
# "_" and 40 characters with a capital): masking a log line that only looks like a key costs
# nothing, but refusing a name does, and "20241205_Quarterly-Rotation-Production-Scraper-Key"
# or "facade_…" are names people give things.
_IN_NAME = re.compile(
    r"(cctl_[0-9a-f]{16}_)[A-Za-z0-9_-]"
    r"|(?<![A-Za-z0-9_-])([0-9a-f]{16}_)[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"
)


def key_in_name(name: str) -> str | None:
    """The head (``cctl_<id>_`` or ``<id>_``) of an API key written in ``name``, or None."""
    match = _IN_NAME.search(name)
    return None if match is None else match.group(1) or match.group(2)


def _bare_secret(match: re.Match[str]) -> str:
    # A random 43-character secret has an upper-case letter but for 2 in 10^10 of them;
    # names people give things (web-frontend-tls-production-eu-west-1a) mostly do not.
    tail = match.group(0)[len(match.group(1)) :]
    return match.group(1) + "…" if any(c.isupper() for c in tail) else match.group(0)


def key_head(key_id: str) -> str:
    """What every key with this id starts with: the prefix, the id and the separator."""
    return f"{PREFIX}{key_id}_"


_COMPARE = hmac.compare_digest


def secret_matches(secret: str, stored_sha256: bytes) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    # hash_secret, inline: this runs on every authenticated request.
    return _COMPARE(_SHA256(secret.encode()).digest(), stored_sha256)


# The one form the audit log's credential field has. Exact match: a bare key id (what `certctl
# auth apikeys list` shows) or a whole key matched nothing, and an auditor read "no events" as
# the answer about a leaked key.
_AUDIT_CREDENTIAL = re.compile(r"apikey [0-9a-f]{16}\Z")
_BARE_KEY_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{16}(?![0-9a-f])")


def check_audit_credential(value: str, name: str = "credential=") -> str:
    """``value`` if it is a credential as the audit log writes one (``apikey <key id>``).

    The API's ``credential`` filter, and the CLI's ``--credential`` before it sends one.
    ``name``: how the refusal names the value (``credential=``, ``--credential ``).

    Raises:
        InvalidRequest: another form; a key id in it is offered, the key's secret redacted.
    """
    if _AUDIT_CREDENTIAL.match(value):
        return value
    found = _BARE_KEY_ID.search(value)
    meant = f": did you mean 'apikey {found.group()}'?" if found else ""
    # Redacted: the value may be a whole key, secret and all.
    raise InvalidRequest(
        f"{name}{redact_keys(value)[:60]}: not a credential as the audit log writes one "
        f"(apikey <key id>){meant}"
    )
