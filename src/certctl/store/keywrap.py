"""Private keys at rest: AES-256-GCM under a key-encryption key (KEK).

The KEK comes from ``CERTCTL_MASTER_KEY`` (base64 of 32 bytes) or ``<data-dir>/kek`` (0600),
created on first start. Each wrapped blob is ``b"v1" + nonce(12) + ciphertext+tag`` and binds
its purpose and owner id as associated data, so a blob moved to another row fails to unwrap.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certctl.errors import CertctlError, InvalidRequest
from certctl.files import SECRET_MODE, tighten_secret, write_atomic

__all__ = [
    "NEXT_KEK",
    "KeyWrapper",
    "encode_kek",
    "kek_source",
    "load_or_create_kek",
    "master_key_from_env",
    "read_kek_file",
    "refuse_blank_master_key",
]

_VERSION = b"v1"
MASTER_KEY_ENV = "CERTCTL_MASTER_KEY"
# The new KEK of a rotation, written before the re-wrapping transaction and renamed over
# ``kek`` after it commits: whichever of the two opens the stored keys is the one in use.
NEXT_KEK = "kek.next"


class KeyWrapper:
    """Wraps and unwraps secrets with one KEK."""

    def __init__(self, kek: bytes) -> None:
        if len(kek) != 32:
            raise InvalidRequest("the key-encryption key must be 32 bytes")
        self._aead = AESGCM(kek)
        # Root of derive(): the KEK itself is kept only inside the AEAD object.
        self._derive_root = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"certctl derive root"
        ).derive(kek)

    def derive(self, purpose: str) -> bytes:
        """32 secret bytes for ``purpose``, stable for one KEK (HKDF-SHA256)."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
            self._derive_root
        )

    def wrap(self, plaintext: bytes, *, context: str) -> bytes:
        """Encrypt ``plaintext``, binding ``context`` (e.g. ``issuer:default``)."""
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def unwrap(self, blob: bytes, *, context: str) -> bytes:
        """Decrypt a blob made by :meth:`wrap` with the same ``context``.

        Raises:
            CertctlError: wrong KEK, tampered blob or wrong context (message names none of them).
        """
        if blob[:2] != _VERSION:
            raise CertctlError(f"{context}: unknown wrapped-key format")
        try:
            return self._aead.decrypt(blob[2:14], blob[14:], context.encode())
        except InvalidTag:
            raise CertctlError(
                f"{context}: cannot unwrap the stored key (wrong master key or corrupted data)"
            ) from None


def read_kek_file(path: Path) -> bytes:
    """The KEK in ``path`` (base64 of 32 bytes, as written by :func:`encode_kek`).

    Raises:
        InvalidRequest: not 32 bytes of base64, naming the file.
    """
    try:
        kek = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (binascii.Error, ValueError):
        kek = b""  # not base64: said as the wrong length below, with the file named
    if len(kek) != 32:
        raise InvalidRequest(f"{path}: key-encryption key must be 32 bytes (base64)")
    return kek


def encode_kek(kek: bytes) -> bytes:
    """The content of a kek file, and the value of ``CERTCTL_MASTER_KEY`` (with a newline)."""
    return base64.b64encode(kek) + b"\n"


def kek_source(data_dir: Path) -> str:
    """Where :func:`load_or_create_kek` takes the KEK from, for messages (never the key)."""
    return MASTER_KEY_ENV if os.environ.get(MASTER_KEY_ENV, "").strip() else str(data_dir / "kek")


def master_key_from_env() -> bytes | None:
    """The KEK in ``CERTCTL_MASTER_KEY``, or None when it is unset (or blank).

    Checked by ``certctl serve`` before it creates or migrates anything: a malformed value
    found only after the migrations left a refused first start's empty store behind.

    Raises:
        InvalidRequest: the value is not base64 of 32 bytes (never quoted).
    """
    # Stripped like the file: a Secret made from the kek file keeps its trailing newline.
    env = os.environ.get(MASTER_KEY_ENV, "").strip()
    if not env:
        return None
    # What to set instead, never the value: the stored keys' own key (the content of a
    # kek file), or for a database without keys yet a new one. "must decode to 32 bytes"
    # left an operator who pasted a password or a hex string to guess the format.
    remedy = (
        "give the key the stored keys were encrypted under (the content of a "
        "<data-dir>/kek), or for a new database a new one (head -c32 /dev/urandom | base64)"
    )
    try:
        kek = base64.b64decode(env, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            f"{MASTER_KEY_ENV} is not valid base64 of 32 bytes: {remedy}"
        ) from None
    if len(kek) != 32:
        raise InvalidRequest(f"{MASTER_KEY_ENV} decodes to {len(kek)} bytes, not 32: {remedy}")
    return kek


def refuse_blank_master_key(data_dir: Path) -> None:
    """Refuse a ``CERTCTL_MASTER_KEY`` set to nothing where a new key would be made.

    A blank value counts as unset (a kek file beside it is used), but with no kek file a
    start made a new key in the data dir: in a pod whose Secret value came out empty, that
    is an emptyDir lost at the next restart, with every key stored under it.

    Raises:
        InvalidRequest: the variable is set, blank, and ``<data-dir>/kek`` does not exist.
    """
    if os.environ.get(MASTER_KEY_ENV, "x").strip() or (data_dir / "kek").exists():
        return
    # Checked before the database is opened: it may hold keys already (a kek moved into a
    # Secret that came out empty, a new replica), where a new key would open none of them.
    raise InvalidRequest(
        f"{MASTER_KEY_ENV} is set but empty (a Secret key or variable with no value?) and "
        f"{data_dir / 'kek'} does not exist: set it to the key the stored keys are encrypted "
        f"under (the content of a kek from a backup, the {MASTER_KEY_ENV} of the replicas), "
        f"or for a new database to a new one (head -c32 /dev/urandom | base64); unset, a "
        f"first start keeps a new key in {data_dir / 'kek'}"
    )


def load_or_create_kek(data_dir: Path, *, create: bool = True, replicas: bool = False) -> bytes:
    """Return the KEK from the environment, or ``<data-dir>/kek``, creating it (0600) if absent.

    ``replicas``: the store may be shared by other servers (PostgreSQL), whose key the
    refusal of a missing one then names; an SQLite file has no replicas to take it from.

    Raises:
        InvalidRequest: the key is malformed, or absent while ``create`` is false (the store
            already holds keys wrapped under it: a new one would open none of them).
    """
    env_kek = master_key_from_env()
    if env_kek is not None:
        return env_kek
    path = data_dir / "kek"
    if path.exists():
        # Restored from a backup or copied by hand: readable by others, it would let them
        # decrypt every stored key.
        tighten_secret(path, logging.getLogger("certctl.store"))
        return read_kek_file(path)
    if not create:
        if MASTER_KEY_ENV in os.environ:
            # Blank counts as unset, so the kek file was looked for; "set CERTCTL_MASTER_KEY"
            # alone sent an operator whose Secret value came out empty to check it was set.
            replicas_key = "the one of the replicas already running on it, or " if replicas else ""
            raise InvalidRequest(
                f"{MASTER_KEY_ENV} is set but empty (a Secret key or variable with no value?) "
                f"and {path} is missing, but the database holds keys encrypted under it: set "
                f"{MASTER_KEY_ENV} to their key ({replicas_key}the content of a kek from a "
                f"backup), or restore {path.name} from a backup; a new key would open none"
            )
        from_replicas = (
            f"set {MASTER_KEY_ENV} as the replicas already running on it have it, or "
            if replicas
            else ""
        )
        raise InvalidRequest(
            f"{path} is missing, but the database holds keys encrypted under it: "
            f"{from_replicas}restore {path.name} from a backup (or set {MASTER_KEY_ENV} to its "
            f"content); a new key would open none"
        )
    refuse_blank_master_key(data_dir)
    kek = os.urandom(32)
    try:
        # Never over a key another process created meanwhile (one whose keys may already be
        # stored): both then use the first one written.
        write_atomic(path, encode_kek(kek), SECRET_MODE, replace=False)
    except FileExistsError:
        return load_or_create_kek(data_dir, create=False, replicas=replicas)
    return kek
