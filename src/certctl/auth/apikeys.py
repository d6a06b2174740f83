"""API key format ``cctl_<key id>_<secret>``: minting, parsing and constant-time checking.

The ``cctl_`` prefix lets secret scanners find leaked keys. Only SHA-256 of the secret is
stored; the key id is the lookup handle, so verification is one primary-key read plus
``hmac.compare_digest``. A fast hash is right here: the secret has 256 bits of entropy, so
there is nothing for a slow KDF to protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["MintedKey", "hash_secret", "mint_key", "parse_key", "secret_matches"]

PREFIX = "cctl_"
_FORMAT = re.compile(r"^cctl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class MintedKey:
    """A new key: ``value`` is shown to the caller once; only ``secret_sha256`` is stored."""

    key_id: str
    value: str
    secret_sha256: bytes

    def __repr__(self) -> str:
        # Never let the secret reach a log through repr().
        return f"MintedKey(key_id={self.key_id!r}, value='cctl_…')"


def hash_secret(secret: str) -> bytes:
    """SHA-256 of the secret part."""
    return hashlib.sha256(secret.encode()).digest()


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


def secret_matches(secret: str, stored_sha256: bytes) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_sha256)
