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

__all__ = ["encryption_within", "mac_verifies", "merge_authenticated_safes"]

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


# The one password-based encryption certctl writes (to_pkcs12, to_pkcs12_truststore):
# PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC; DER of the OIDs, without tag and length.
_ID_ENCRYPTED_DATA = bytes.fromhex("2a864886f70d010706")
_PBES2 = bytes.fromhex("2a864886f70d01050d")
_PBKDF2 = bytes.fromhex("2a864886f70d01050c")
_HMAC_SHA256 = bytes.fromhex("2a864886f70d0209")
_AES_256_CBC = bytes.fromhex("60864801650304012a")
_CERT_BAG = bytes.fromhex("2a864886f70d010c0a0103")
_SHROUDED_KEY_BAG = bytes.fromhex("2a864886f70d010c0a0102")
# PBKDF2 iterations of a whole file, every encrypted part together, that encryption_within
# accepts: cryptography writes 10,000 for the certificates and as many for the key.
_MAX_KEY_ITERATIONS = 100_000


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


def encryption_within(pfx: bytes, password: bytes) -> bool:
    """Whether each encrypted part of ``pfx`` is as certctl writes it, at a bounded cost.

    OpenSSL derives the key of each encrypted part (certificates, each key bag) with as many
    PBKDF2 iterations as that part asks, and only a MAC that verifies proves nothing here:
    whoever knows the password can ask for billions. So, before OpenSSL opens a file certctl
    did not just write: PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) only, at most
    _MAX_KEY_ITERATIONS iterations in all, and only certificate and shrouded-key bags; the
    encrypted contents are decrypted here (within that bound) to see the bags inside.

    Raises:
        ValueError: ``pfx`` is not a DER PFX, or its structure is damaged.
    """
    _, safes, _, _ = _split(pfx)
    budget = [_MAX_KEY_ITERATIONS]
    offset = 0
    while offset < len(safes):
        info, offset = _read(safes, offset, _SEQUENCE)
        content_type, after = _read(info, 0, _OID)
        explicit, _ = _read(info, after, _CONTEXT_0)
        if content_type == _ID_DATA[2:]:
            contents, _ = _read(explicit, 0, _OCTET_STRING)
        elif content_type == _ID_ENCRYPTED_DATA:
            encrypted_data, _ = _read(explicit, 0, _SEQUENCE)
            _, after = _read(encrypted_data, 0, _INTEGER)  # version
            encrypted_info, _ = _read(encrypted_data, after, _SEQUENCE)
            _, after = _read(encrypted_info, 0, _OID)  # id-data
            algorithm, after = _read(encrypted_info, after, _SEQUENCE)
            ciphertext, _ = _read(encrypted_info, after, 0x80)  # [0] IMPLICIT OCTET STRING
            plain = _pbes2_decrypt(algorithm, ciphertext, password, budget)
            if plain is None:
                return False
            contents = plain
        else:
            return False
        if not _bags_within(contents, budget):
            return False
    return True


def _bags_within(contents: bytes, budget: list[int]) -> bool:
    """Whether a SafeContents holds certificate and shrouded-key bags only, within budget."""
    bags, end = _read(contents, 0, _SEQUENCE)
    if end != len(contents):
        return False
    offset = 0
    while offset < len(bags):
        bag, offset = _read(bags, offset, _SEQUENCE)
        bag_id, after = _read(bag, 0, _OID)
        if bag_id == _SHROUDED_KEY_BAG:
            value, _ = _read(bag, after, _CONTEXT_0)
            key_info, _ = _read(value, 0, _SEQUENCE)  # EncryptedPrivateKeyInfo
            algorithm, _ = _read(key_info, 0, _SEQUENCE)
            if _pbes2_parameters(algorithm, budget) is None:
                return False
        elif bag_id != _CERT_BAG:
            return False  # a key bag, a nested SafeContents …: not what certctl writes
    return True


def _pbes2_parameters(algorithm: bytes, budget: list[int]) -> tuple[bytes, int, bytes] | None:
    """(salt, iterations, IV) of a PBES2 AlgorithmIdentifier as certctl writes it, or None.

    None too when its iterations exceed what is left of ``budget``; else they are taken off.
    """
    oid, after = _read(algorithm, 0, _OID)
    if oid != _PBES2:
        return None
    parameters, _ = _read(algorithm, after, _SEQUENCE)
    kdf, after = _read(parameters, 0, _SEQUENCE)
    scheme, _ = _read(parameters, after, _SEQUENCE)
    kdf_oid, kdf_after = _read(kdf, 0, _OID)
    cipher, cipher_after = _read(scheme, 0, _OID)
    if kdf_oid != _PBKDF2 or cipher != _AES_256_CBC:
        return None
    iv, _ = _read(scheme, cipher_after, _OCTET_STRING)
    kdf_parameters, _ = _read(kdf, kdf_after, _SEQUENCE)
    salt, offset = _read(kdf_parameters, 0, _OCTET_STRING)
    raw, offset = _read(kdf_parameters, offset, _INTEGER)
    if offset < len(kdf_parameters) and kdf_parameters[offset] == _INTEGER:
        _, offset = _read(kdf_parameters, offset, _INTEGER)  # keyLength: AES-256's own
    if offset == len(kdf_parameters):
        return None  # no prf: HMAC-SHA1, which certctl does not write
    prf, _ = _read(kdf_parameters, offset, _SEQUENCE)
    prf_oid, _ = _read(prf, 0, _OID)
    iterations = int.from_bytes(raw, "big", signed=True)
    if prf_oid != _HMAC_SHA256 or len(iv) != 16 or not 0 < iterations <= budget[0]:
        return None
    budget[0] -= iterations
    return salt, iterations, iv


def _pbes2_decrypt(
    algorithm: bytes, ciphertext: bytes, password: bytes, budget: list[int]
) -> bytes | None:
    """The plaintext of PBES2-encrypted content (RFC 8018), None if not certctl's or wrong."""
    from cryptography.hazmat.primitives import hashes, padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    parameters = _pbes2_parameters(algorithm, budget)
    if parameters is None or not ciphertext or len(ciphertext) % 16:
        return None
    salt, iterations, iv = parameters
    # PBES2 in PKCS#12 takes the password's bytes as they are (OpenSSL: no BMPString).
    key = PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive(password)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:  # a wrong password or damaged content: not one certctl wrote
        return None
