"""PKCS#12 with Java trusted-certificate entries next to a key entry.

Java (keytool, Elasticsearch, Tomcat) lists a certificate of a PKCS#12 file as a
``trustedCertEntry`` only when its bag carries Oracle's trusted-key-usage attribute;
Elasticsearch refuses a ``truststore.path`` without one ("does not contain any trusted
certificate entries"), and ``elasticsearch-certutil`` puts the CA there, alias ``ca``.
cryptography writes that attribute only in ``serialize_java_truststore``, which takes no
key. So :func:`merge_authenticated_safes` joins the contents of two PKCS#12 files made
with the same password — the key store and the trust store — into one, and recomputes the
integrity MAC over the joined contents (RFC 7292: PFX → authSafe → AuthenticatedSafe).
Nothing is decrypted or re-encrypted: each ContentInfo keeps its own salt and cipher.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["mac_verifies", "merge_authenticated_safes"]

_SEQUENCE, _INTEGER, _OCTET_STRING, _OID, _CONTEXT_0 = 0x30, 0x02, 0x04, 0x06, 0xA0
# OID 1.2.840.113549.1.7.1 (id-data), DER-encoded with its tag and length.
_ID_DATA = bytes.fromhex("06092a864886f70d010701")
# MAC digest algorithms cryptography writes: (hashlib name, block size in bytes).
_MAC_HASHES = {
    bytes.fromhex("06052b0e03021a"): ("sha1", 64),
    bytes.fromhex("0609608648016503040201"): ("sha256", 64),
    bytes.fromhex("0609608648016503040202"): ("sha384", 128),
    bytes.fromhex("0609608648016503040203"): ("sha512", 128),
}
_MAC_KEY_ID = 3  # RFC 7292 B.3: the KDF's ID byte for MAC keys
# More MAC iterations than this in a file being diagnosed (mac_verifies) are not computed:
# the loop is Python's, and a damaged count could ask for billions. OpenSSL writes 2048.
_MAX_CHECKED_ITERATIONS = 100_000


class _IndefiniteLength(ValueError):
    """A BER element of indefinite length (``30 80``): valid, but not read here."""


def _read(data: bytes, offset: int, tag: int) -> tuple[bytes, int]:
    """The content of the DER element of ``tag`` at ``offset``, and the offset after it."""
    if offset + 2 > len(data) or data[offset] != tag:
        raise ValueError(f"PKCS#12: expected tag {tag:#04x} at {offset}")
    length, start = data[offset + 1], offset + 2
    if length == 0x80:
        # OpenSSL reads BER PKCS#12 (NSS pk12util writes it); a damaged DER file has none.
        raise _IndefiniteLength("PKCS#12: BER indefinite length")
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(data[start : start + count], "big"), start + count
    end = start + length
    if end > len(data):
        raise ValueError("PKCS#12: truncated element")
    return data[start:end], end


def _element(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def _split(pfx: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(AuthenticatedSafe, its contents, MAC digest algorithm, MacData) of a PFX."""
    body, _ = _read(pfx, 0, _SEQUENCE)
    _, offset = _read(body, 0, _INTEGER)  # version 3
    auth_safe, offset = _read(body, offset, _SEQUENCE)
    if not auth_safe.startswith(_ID_DATA):
        raise ValueError("PKCS#12: authSafe is not id-data (public-key integrity mode)")
    explicit, _ = _read(auth_safe, len(_ID_DATA), _CONTEXT_0)
    octets, _ = _read(explicit, 0, _OCTET_STRING)
    safes, _ = _read(octets, 0, _SEQUENCE)
    mac_data, _ = _read(body, offset, _SEQUENCE)
    digest_info, _ = _read(mac_data, 0, _SEQUENCE)
    algorithm, _ = _read(digest_info, 0, _SEQUENCE)
    return octets, safes, algorithm, mac_data


def _mac_parameters(mac_data: bytes) -> tuple[bytes, bytes, int]:
    """(MAC digest, salt, iterations) of a MacData."""
    digest_info, offset = _read(mac_data, 0, _SEQUENCE)
    _, digest_offset = _read(digest_info, 0, _SEQUENCE)
    digest, _ = _read(digest_info, digest_offset, _OCTET_STRING)
    salt, offset = _read(mac_data, offset, _OCTET_STRING)
    iterations = 1
    if offset < len(mac_data):
        raw, _ = _read(mac_data, offset, _INTEGER)
        iterations = int.from_bytes(raw, "big")
    return digest, salt, iterations


def _kdf(
    password: bytes,
    salt: bytes,
    iterations: int,
    hash_name: str,
    block: int,
    *,
    terminated: bool = True,
) -> bytes:
    """RFC 7292 appendix B.2 key derivation of a MAC key (one digest long).

    ``terminated`` False: OpenSSL's NULL password (no BMPString at all), not ``""``.
    """
    # The password as a BMPString with a terminating NUL, as OpenSSL and cryptography use.
    bmp = password.decode("utf-8").encode("utf-16-be") + (b"\x00\x00" if terminated else b"")

    def fill(data: bytes) -> bytes:  # repeated to a whole number of blocks
        size = block * -(-len(data) // block)
        return (data * (size // len(data) + 1))[:size] if data else b""

    digest = bytes([_MAC_KEY_ID]) * block + fill(salt) + fill(bmp)
    new = getattr(hashlib, hash_name)  # the named constructor: faster than hashlib.new
    for _ in range(iterations):
        digest = new(digest).digest()
    # One digest is the whole MAC key (n = u): the loop of B.2 step 6 runs once.
    return digest


def _mac_key(
    password: bytes, mac_data: bytes, algorithm: bytes, *, terminated: bool = True
) -> tuple[bytes, str]:
    oid, _ = _read(algorithm, 0, _OID)
    hash_name, block = _MAC_HASHES[_element(_OID, oid)]
    _, salt, iterations = _mac_parameters(mac_data)
    key = _kdf(password, salt, iterations, hash_name, block, terminated=terminated)
    return key, hash_name


def mac_verifies(pfx: bytes, password: bytes | None) -> bool | None:
    """Whether the integrity MAC of ``pfx`` checks out with ``password``.

    For telling a damaged file from one that wants a password, after OpenSSL opened neither:
    the MAC covers every byte of the contents, so one that verifies with the password tried
    means that password was right. None (OpenSSL's two forms of no password, NULL and "")
    is tried both ways.

    Returns:
        None when there is no password MAC to check: public-key integrity mode, no MacData
        (``openssl pkcs12 -nomac``), a digest not known here, too many iterations, BER
        indefinite lengths (which ``_read`` does not follow).

    Raises:
        ValueError: ``pfx`` is not a DER PFX: truncated, or its structure is damaged.
    """
    try:
        return _mac_verifies(pfx, password)
    except _IndefiniteLength:  # BER: not damaged, not checked
        return None


def _mac_verifies(pfx: bytes, password: bytes | None) -> bool | None:
    body, _ = _read(pfx, 0, _SEQUENCE)
    _, offset = _read(body, 0, _INTEGER)  # version 3
    auth_safe, offset = _read(body, offset, _SEQUENCE)
    if not auth_safe.startswith(_ID_DATA):
        _read(auth_safe, 0, _OID)  # another content type: a signature, not a MAC, protects it
        return None
    explicit, _ = _read(auth_safe, len(_ID_DATA), _CONTEXT_0)
    signed, _ = _read(explicit, 0, _OCTET_STRING)
    _read(signed, 0, _SEQUENCE)  # the AuthenticatedSafe
    if offset == len(body):
        return None
    mac_data, _ = _read(body, offset, _SEQUENCE)
    digest_info, _ = _read(mac_data, 0, _SEQUENCE)
    algorithm, _ = _read(digest_info, 0, _SEQUENCE)
    oid, _ = _read(algorithm, 0, _OID)
    digest, _, iterations = _mac_parameters(mac_data)
    if _element(_OID, oid) not in _MAC_HASHES or not 0 < iterations <= _MAX_CHECKED_ITERATIONS:
        return None
    forms = [(password, True)] if password else [(b"", True), (b"", False)]
    for secret, terminated in forms:
        try:
            key, hash_name = _mac_key(secret, mac_data, algorithm, terminated=terminated)
        except UnicodeDecodeError:  # not UTF-8: OpenSSL would not take it either
            return None
        if hmac.compare_digest(hmac.new(key, signed, hash_name).digest(), digest):
            return True
    return False


def merge_authenticated_safes(first: bytes, second: bytes, password: bytes) -> bytes:
    """One PFX with the contents of ``first`` then ``second``, MAC'd like ``first``.

    Both must use ``password`` and password integrity (every PKCS#12 cryptography writes).

    Raises:
        ValueError: an input is not such a PFX, or the MAC of ``first`` does not check
            out with ``password`` (the key derivation here would then be wrong).
    """
    signed, safes_1, algorithm, mac_data = _split(first)
    _, safes_2, _, _ = _split(second)
    digest, salt, iterations = _mac_parameters(mac_data)
    # One key derivation (the slow part: thousands of hashes) serves both MACs, since the
    # new MAC keeps the salt and iteration count of the first file.
    key, hash_name = _mac_key(password, mac_data, algorithm)
    if not hmac.compare_digest(hmac.new(key, signed, hash_name).digest(), digest):
        raise ValueError("PKCS#12: the MAC does not verify with this password")
    contents = _element(_SEQUENCE, safes_1 + safes_2)
    mac = hmac.new(key, contents, hash_name).digest()
    new_mac_data = _element(
        _SEQUENCE,
        _element(_SEQUENCE, _element(_SEQUENCE, algorithm) + _element(_OCTET_STRING, mac))
        + _element(_OCTET_STRING, salt)
        + _element(_INTEGER, iterations.to_bytes((iterations.bit_length() + 8) // 8, "big")),
    )
    auth_safe = _element(
        _SEQUENCE, _ID_DATA + _element(_CONTEXT_0, _element(_OCTET_STRING, contents))
    )
    return _element(_SEQUENCE, _element(_INTEGER, b"\x03") + auth_safe + new_mac_data)
