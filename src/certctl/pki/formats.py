"""Reading and writing PEM, DER and PKCS#12 (and reading PKCS#7), with format auto-detection."""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import re
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from certctl.errors import InvalidRequest, PasswordRequired, WrongPassword

__all__ = [
    "Material",
    "certs_to_pem",
    "check_extensions",
    "format_serial",
    "is_bare_base64_der",
    "key_to_pem",
    "load_material",
    "load_private_key",
    "password_file_line",
    "pkcs12_holds",
    "pkcs12_password_warning",
    "to_pkcs12",
    "to_pkcs12_truststore",
]

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n")
_SIGNING_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)
_KEY_LABELS = {b"PRIVATE KEY", b"ENCRYPTED PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}
# ContentInfo of a .p7b: SEQUENCE { OID 1.2.840.113549.1.7.2 (signedData), ... }.
_PKCS7_SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")
# PBKDF2 iterations for PKCS#12: Java's keytool default since JDK 12 (OpenSSL 3 uses 2048);
# high enough to slow guessing, low enough to write thousands of keystores in a bundle.
P12_KDF_ROUNDS = 10_000


@dataclass
class Material:
    """Everything found in one file: certificates (in order), at most one key, CSRs."""

    certificates: list[x509.Certificate] = field(default_factory=list)
    private_key: CertificateIssuerPrivateKeyTypes | None = None
    csrs: list[x509.CertificateSigningRequest] = field(default_factory=list)
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    format: str = "pem"
    # The key was stored encrypted (PKCS#12: the file needed a non-empty password), so that
    # inspect can say so once the password has been used and the key is plain in memory.
    key_encrypted: bool = False


def format_serial(serial: int) -> str:
    """A serial number as certctl prints it everywhere: lower-case hex, an even number of digits.

    ``openssl x509 -serial`` prints whole octets, so a serial whose top nibble is zero keeps
    its leading ``0`` (``0dd0…``, not ``dd0…``) and compares equal to openssl's, ignoring case.
    Lower case because the API, its database and ``--q`` search already store it that way.
    """
    if serial < 0:  # RFC 5280 forbids them, but a parsed certificate may still hold one
        return f"-{format_serial(-serial)}"
    digits = f"{serial:x}"
    return digits.zfill(len(digits) + len(digits) % 2)


def _issuer_key(key: PrivateKeyTypes) -> CertificateIssuerPrivateKeyTypes:
    # Name the signing types positively: touching dh.* raises a deprecation warning.
    if isinstance(key, _SIGNING_KEY_TYPES):
        return key
    raise InvalidRequest(f"{type(key).__name__}: unsupported private key type")


def _looks_like_pkcs12(data: bytes) -> bool:
    # PFX ::= SEQUENCE { version INTEGER (3), ... }: after the outer SEQUENCE header comes 02 01 03.
    if len(data) < 8 or data[0] != 0x30:
        return False
    length_octets = data[1] - 0x80 if data[1] & 0x80 else 0
    start = 2 + length_octets
    return data[start : start + 3] == b"\x02\x01\x03"


def _looks_like_pkcs7(data: bytes) -> bool:
    # ContentInfo ::= SEQUENCE { contentType OID, ... }: the OID right after the header.
    if len(data) < 16 or data[0] != 0x30:
        return False
    start = 2 + (data[1] - 0x80 if data[1] & 0x80 else 0)
    return data[start : start + len(_PKCS7_SIGNED_DATA_OID)] == _PKCS7_SIGNED_DATA_OID


def load_material(
    data: bytes, password: bytes | None = None, *, password_optional: bool = False
) -> Material:
    """Read PEM (any number of blocks), DER or PKCS#12 bytes, detecting the format.

    ``password_optional``: the password is a default (CERTCTL_PASSWORD), not something the
    user asked for on this file, so a key or PKCS#12 file that needs none opens without it.

    Raises:
        InvalidRequest: nothing readable was found, a PKCS#12 file cannot be opened, or a
            certificate, CSR or CRL has malformed or repeated extensions.
        PasswordRequired: a key or PKCS#12 file is encrypted and no password was given.
        WrongPassword: it does not open with the password given.
    """
    material = _load_material(data, password, password_optional)
    for cert in material.certificates:
        check_extensions(cert, "certificate")
    for csr in material.csrs:
        check_extensions(csr, "CSR")
    for crl in material.crls:
        check_extensions(crl, "CRL")
        for entry in crl:
            check_extensions(entry, f"CRL entry {format_serial(entry.serial_number)}")
    return material


def check_extensions(
    item: x509.Certificate
    | x509.CertificateSigningRequest
    | x509.CertificateRevocationList
    | x509.RevokedCertificate,
    what: str,
) -> None:
    """Parse ``item``'s extensions now, refusing malformed or repeated ones.

    cryptography parses them on first use: a file with two subjectAltName extensions (which
    ``openssl req -addext`` writes) or a SAN whose IP is 5 octets went through loading and
    failed later, in whichever command touched them, as an internal error.

    Raises:
        InvalidRequest: the extensions cannot be parsed; the message names ``what`` and why.
    """
    try:
        item.extensions  # noqa: B018 -- parsed (and cached by cryptography) for the check
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        subject = getattr(item, "subject", None)
        name = f" {subject.rfc4514_string()}" if isinstance(subject, x509.Name) else ""
        raise InvalidRequest(f"{what}{name} has malformed extensions ({exc})") from exc


def _is_zip(data: bytes) -> bool:
    """A zip archive: its magic first, and it opens with an entry (or is the empty zip).

    The magic alone is not enough: text before a PEM block is ignored, and it may start so.
    """
    if data[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # a local file header, an empty zip
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return bool(archive.infolist()) or len(data) == _EMPTY_ZIP_SIZE
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError):
        return False


_EMPTY_ZIP_SIZE = 22  # its end-of-central-directory record alone


def _load_material(data: bytes, password: bytes | None, password_optional: bool) -> Material:
    if not data.strip():
        # 0 bytes (a redirect that failed, a copy that did not happen) read as "not a
        # recognised PEM, DER or PKCS#12 file", which sent the user looking at its format.
        raise InvalidRequest("an empty file: no certificate, key, CSR or CRL in it")
    if _is_zip(data):
        # Before the PEM check: a zip storing its PEM files uncompressed (cert issue --in
        # writes them so) was read as a PEM file holding every ca.crt in it.
        raise InvalidRequest(
            "a zip archive: unzip it and give one of the files inside (certctl http and "
            "cert issue --in write zips)"
        )
    if b"-----BEGIN" in data:
        return _load_pem(data, password, password_optional)
    if _looks_like_pkcs12(data):
        return _load_pkcs12(data, password, password_optional)
    if data[:4] in (b"\xfe\xed\xfe\xed", b"\xce\xce\xce\xce"):  # JKS, JCEKS magic
        raise InvalidRequest(
            "a Java keystore (JKS/JCEKS), which certctl does not read; convert it with: "
            "keytool -importkeystore -srckeystore FILE -destkeystore FILE.p12 "
            "-deststoretype PKCS12"
        )
    if is_bare_base64_der(data):
        # cfssl gencrl prints its CRL so (base64 DER, no BEGIN/END lines), and a Secret's
        # or keystore's field holds a certificate or PKCS#12 file so: read as DER it was
        # "not a recognised PEM, DER or PKCS#12 file", which named no way out.
        raise InvalidRequest(_bare_base64_hint(base64.b64decode(b"".join(data.split()))))
    if _looks_like_pkcs7(data):
        return Material(certificates=_load_pkcs7(data, pem=False), format="pkcs7")
    for loader, kind in (
        (x509.load_der_x509_certificate, "certificates"),
        (x509.load_der_x509_csr, "csrs"),
        (x509.load_der_x509_crl, "crls"),
    ):
        try:
            obj = loader(data)
        except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
            continue
        material = Material(format="der")
        getattr(material, kind).append(obj)
        return material
    try:
        key = serialization.load_der_private_key(data, password)
    except TypeError as exc:
        if password is None:
            raise _password_error(password) from exc
        # A password given to a plain key (the other TypeError; a wrong one is a ValueError):
        # load it without one, or say so as _load_pem_key does, not "wrong password".
        if not password_optional:
            raise InvalidRequest("the private key is not encrypted; drop the password") from exc
        return _load_material(data, None, False)
    except ValueError as exc:
        if password is not None and _looks_like_encrypted_pkcs8(data):
            raise _password_error(password) from exc
        raise InvalidRequest(
            "not a recognised PEM, DER or PKCS#12 file (certificate, key, CSR or CRL)"
        ) from exc
    except UnsupportedAlgorithm as exc:
        raise InvalidRequest(
            "not a recognised PEM, DER or PKCS#12 file (certificate, key, CSR or CRL)"
        ) from exc
    return Material(private_key=_issuer_key(key), format="der", key_encrypted=password is not None)


_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")


def _bare_base64_hint(der: bytes) -> str:
    """How to decode base64 DER without PEM's lines, naming what it holds.

    It said "as cfssl gencrl writes a CRL" of every such file, a base64 certificate or
    PKCS#12 file (from a Secret's data or a keystore export) too.
    """
    what, origin, suffix = "", "", "der"
    if _looks_like_pkcs12(der):
        what, suffix = "a PKCS#12 file", "p12"
    elif _looks_like_pkcs7(der):
        what, suffix = "a PKCS#7 chain", "p7b"
    else:
        for loader, name in (
            (x509.load_der_x509_certificate, "a certificate"),
            (x509.load_der_x509_csr, "a CSR"),
            (x509.load_der_x509_crl, "a CRL"),
        ):
            try:
                loader(der)
            except (ValueError, x509.InvalidVersion):
                continue
            what = name
            break
        else:
            if _looks_like_encrypted_pkcs8(der):
                what = "an encrypted private key"
            else:
                try:
                    serialization.load_der_private_key(der, None)
                    what = "a private key"
                except (ValueError, TypeError, UnsupportedAlgorithm):
                    pass
    if what == "a CRL":
        origin = ", as cfssl gencrl writes one"
    text = f"{what} in base64" if what else "base64"
    return (
        f"{text} without PEM's BEGIN/END lines{origin}: decode it with "
        f"'base64 -d FILE > FILE.{suffix}'"
    )


def is_bare_base64_der(data: bytes) -> bool:
    """Whether ``data`` is base64 text (line breaks allowed) of a DER SEQUENCE."""
    if not _BASE64_TEXT.fullmatch(data):
        return False
    try:
        der = base64.b64decode(b"".join(data.split()), validate=True)
    except binascii.Error:
        return False
    return len(der) > 2 and der[0] == 0x30


def _looks_like_encrypted_pkcs8(data: bytes) -> bool:
    # EncryptedPrivateKeyInfo starts with an AlgorithmIdentifier for PBES2 (1.2.840.113549.1.5.13)
    # or a PKCS#12 PBE scheme (1.2.840.113549.1.12.1.x).
    return b"\x2a\x86\x48\x86\xf7\x0d\x01\x05\x0d" in data[:40] or (
        b"\x2a\x86\x48\x86\xf7\x0d\x01\x0c\x01" in data[:40]
    )


def _password_error(password: bytes | None) -> InvalidRequest:
    if password is None:
        return PasswordRequired("the private key is encrypted: give its password (--password-file)")
    return WrongPassword("cannot decrypt the private key: wrong password")


# A JSON object whose strings hold PEM with its newlines escaped: "-----BEGIN …-----" and
# then a backslash and an n.
_CFSSL_JSON = re.compile(rb'\s*\{.*"-----BEGIN [A-Z0-9 ]+-----\\n', re.S)


# The members cfssljson (1.2) writes files from: what cfssl gencert, genkey and sign print.
_CFSSLJSON_MEMBERS = ("cert", "certificate", "key", "csr")
_JQ_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _json_pem_hint(data: bytes) -> str:
    """What to do with a JSON document holding PEM: cfssljson where it reads it, else jq.

    cfssljson reads only top-level members: of cfssl's API answer (``result.certificate``)
    or Vault's (``data.certificate``) it writes nothing and says nothing, so there the jq
    line that takes the first PEM out is named instead.
    """
    cfssl = (
        "a JSON document holding PEM, as cfssl prints it: write the PEM files with "
        "'cfssljson -f FILE -bare NAME' (NAME.pem, NAME-key.pem, NAME.csr)"
    )
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return cfssl
    if isinstance(document, dict) and any(
        isinstance(document.get(name), str) and "-----BEGIN" in document[name]
        for name in _CFSSLJSON_MEMBERS
    ):
        return cfssl
    # Breadth first, so the shallowest PEM is named; iterative, as the document may nest
    # as deep as json.loads allows.
    queue: list[tuple[str, object]] = [("", document)]
    for path, value in queue:
        if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
            where = path or "."
            if "'" in where:
                break
            return (
                f"a JSON document holding PEM at {where}, which cfssljson does not read: "
                f"write it out with \"jq -r '{where}' FILE > NAME.pem\""
            )
        if isinstance(value, dict):
            queue.extend(
                (f"{path}.{k}" if _JQ_NAME.fullmatch(k) else f"{path or '.'}[{json.dumps(k)}]", v)
                for k, v in value.items()
            )
        elif isinstance(value, list):
            queue.extend((f"{path or '.'}[{i}]", v) for i, v in enumerate(value))
    return "a JSON document holding PEM: take the PEM out of it (jq -r '.PATH' FILE > NAME.pem)"


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, block from its BEGIN line through its END line) of each PEM block, in order.

    One pass: a pattern from BEGIN to the matching END read the rest of the file again for
    each BEGIN line lacking its END (a 200 KB issuer import of them: 5 s of CPU). A label
    whose END is missing after one BEGIN is missing after every later one too, so it is
    looked for once. A BEGIN without its END is skipped, as text between blocks is.
    """
    blocks: list[tuple[bytes, bytes]] = []
    unended: set[bytes] = set()
    position = 0
    while (begin := _PEM_BEGIN.search(data, position)) is not None:
        label = begin.group(1)
        end = b"-----END " + label + b"-----"
        stop = -1 if label in unended else data.find(end, begin.end())
        if stop < 0:
            unended.add(label)
            position = begin.end()
            continue
        stop += len(end)
        stop += 2 if data.startswith(b"\r\n", stop) else data.startswith(b"\n", stop)
        blocks.append((label, data[begin.start() : stop]))
        position = stop
    return blocks


def _load_pem(data: bytes, password: bytes | None, password_optional: bool = False) -> Material:
    material = Material(format="pem")
    blocks = _pem_blocks(data)
    if not blocks:
        if _CFSSL_JSON.match(data):
            # What cfssl gencert/sign print: PEM with escaped newlines inside JSON, which
            # cfssljson writes out. Named, as "malformed PEM" of a file cfssl just made left
            # the reader to guess.
            raise InvalidRequest(_json_pem_hint(data))
        raise InvalidRequest("malformed PEM: no complete BEGIN/END block")
    for label, raw in blocks:
        try:
            if label == b"CERTIFICATE":
                material.certificates.append(x509.load_pem_x509_certificate(raw))
            elif label == b"X509 CERTIFICATE":  # an old label; cryptography takes only the new
                material.certificates.append(x509.load_der_x509_certificate(_pem_body(raw)))
            elif label == b"TRUSTED CERTIFICATE":
                # OpenSSL's x509 -trustout form: trust settings follow the certificate and
                # may reject or narrow its uses; reading past them would widen the trust
                # of verify --ca, so such a block is refused by name, not as "malformed".
                raise InvalidRequest(
                    "TRUSTED CERTIFICATE block (OpenSSL trust settings) is not read; convert "
                    "it with: openssl x509 -in FILE -out plain.pem"
                )
            elif label in (b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"):
                material.csrs.append(x509.load_pem_x509_csr(raw))
            elif label == b"PKCS7":
                material.certificates += _load_pkcs7(raw, pem=True)
                material.format = "pkcs7"
            elif label == b"X509 CRL":
                material.crls.append(x509.load_pem_x509_crl(raw))
            elif label in _KEY_LABELS:
                if material.private_key is not None:
                    raise InvalidRequest("more than one private key in one file")
                material.private_key = _load_pem_key(
                    raw, None if password_optional and b"ENCRYPTED" not in raw else password
                )
                material.key_encrypted = b"ENCRYPTED" in raw
            # Other blocks (parameters, public keys) are ignored on purpose.
        except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
            what = label.decode("ascii", "replace").lower()
            raise InvalidRequest(f"malformed PEM {what} block") from exc
    if not (material.certificates or material.private_key or material.csrs or material.crls):
        raise InvalidRequest("PEM file holds no certificate, key, CSR or CRL")
    return material


def _pem_body(block: bytes) -> bytes:
    """The base64-decoded body of one PEM block (header lines such as Proc-Type skipped)."""
    lines = block.strip().splitlines()[1:-1]
    body = b"".join(line.strip() for line in lines if b":" not in line)
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise ValueError("bad base64 in PEM block") from exc


def _load_pkcs7(data: bytes, *, pem: bool) -> list[x509.Certificate]:
    """The certificates of a PKCS#7 bundle (.p7b, .p7c): Windows and Java chain exports."""
    load = pkcs7.load_pem_pkcs7_certificates if pem else pkcs7.load_der_pkcs7_certificates
    with warnings.catch_warnings():
        # OpenSSL writes the certificate SET unsorted (BER, not DER); cryptography reads it
        # but warns on stderr, which would break the one-line output.
        warnings.simplefilter("ignore", UserWarning)
        try:
            return load(data)
        except ValueError as exc:
            if "no certificate" in str(exc):
                raise InvalidRequest("PKCS#7 file holds no certificate") from exc
            raise InvalidRequest("malformed PKCS#7 file") from exc


def _load_pem_key(raw: bytes, password: bytes | None) -> CertificateIssuerPrivateKeyTypes:
    try:
        return _issuer_key(serialization.load_pem_private_key(raw, password))
    except TypeError as exc:
        if b"ENCRYPTED" in raw or b"Proc-Type: 4,ENCRYPTED" in raw:
            raise _password_error(password) from exc
        raise InvalidRequest("the private key is not encrypted; drop the password") from exc
    except UnsupportedAlgorithm as exc:
        raise InvalidRequest("private key uses an unsupported algorithm") from exc
    except ValueError as exc:
        if password is not None and b"ENCRYPTED" in raw:
            raise _password_error(password) from exc
        raise


def _load_pkcs12(data: bytes, password: bytes | None, password_optional: bool = False) -> Material:
    attempts: list[bytes | None] = [None, b""]
    if password is not None:
        attempts = [password, *attempts] if password_optional else [password]
    last: Exception | None = None
    for attempt in attempts:
        try:
            with warnings.catch_warnings():
                # A BER file (some Windows and Java exports): cryptography reads it but warns
                # on stderr, which would break the one-line output (as for PKCS#7 above).
                warnings.simplefilter("ignore", UserWarning)
                key, cert, extra = pkcs12.load_key_and_certificates(data, attempt)
        except ValueError as exc:
            last = exc
            continue
        certs = ([cert] if cert else []) + list(extra)
        return Material(
            certificates=certs,
            private_key=_issuer_key(key) if key is not None else None,
            format="pkcs12",
            key_encrypted=key is not None and bool(attempt),
        )
    # OpenSSL says "Invalid password or PKCS12 data" either way; the MAC tells them apart
    # (most of the time: see below).
    from certctl.pki._pkcs12 import mac_verifies

    try:
        # None and b"" are the same no-password attempt for the MAC (both forms tried).
        opened = any(mac_verifies(data, attempt) for attempt in {a or None for a in attempts})
    except ValueError:
        raise InvalidRequest("not a readable PKCS#12 file: truncated or corrupted") from last
    if opened:
        # The password was right, so it is not what is missing.
        raise InvalidRequest(
            "not a readable PKCS#12 file: its integrity check passes, but its contents do not "
            "load (corrupted, or encrypted with an algorithm this OpenSSL lacks)"
        ) from last
    # A MAC that fails without a password: one is needed, or a byte of the file changed,
    # which the MAC cannot tell apart. Both named.
    if password is None:
        raise PasswordRequired(
            "PKCS#12 file is password-protected (or damaged): give --password-file", pkcs12=True
        ) from last
    raise WrongPassword("cannot open PKCS#12 file: wrong password or corrupted file") from last


def load_private_key(
    data: bytes, password: bytes | None = None
) -> CertificateIssuerPrivateKeyTypes:
    """Load exactly one private key from PEM, DER or PKCS#12 bytes.

    Raises:
        InvalidRequest: no key found, or it cannot be decrypted.
    """
    material = load_material(data, password)
    if material.private_key is None:
        raise InvalidRequest("no private key found")
    return material.private_key


def certs_to_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    """Concatenate certificates as PEM, in the order given."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def key_to_pem(key: CertificateIssuerPrivateKeyTypes, password: bytes | None = None) -> bytes:
    """Serialise a private key as PKCS#8 PEM, encrypted (PBES2, AES-256) when given a password."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def password_file_line(data: bytes, source: str) -> bytes:
    """The password a password file holds: its one line, trailing newline dropped.

    ``echo secret > pw`` works. A file of more lines is refused: ``openssl rand -base64 64``
    wraps at 64 characters, and openssl's ``-passin file:`` and keytool's ``:file`` read the
    first line only, so a key or keystore written with all of it did not open in them. The
    CLI's password files and a managed service's ``passwordFile`` follow this one rule.

    Args:
        data: the file's bytes.
        source: what the message names, e.g. ``"pw.txt: password file"``.

    Returns:
        The password (possibly empty: each caller has its own rule for that).

    Raises:
        InvalidRequest: more than one line; the message names ``source``, never the password.
    """
    data = data.rstrip(b"\r\n")
    if b"\n" in data:
        raise InvalidRequest(
            f"{source} holds more than one line (openssl and keytool read only the first); "
            "put the password on one line"
        )
    return data


def pkcs12_password_warning(password: bytes) -> str | None:
    """A warning when Java could not open a PKCS#12 file protected by ``password``.

    Java's PBE keys take printable ASCII only (SunJCE ``PBEKey``: U+0020 to U+007E), so
    keytool, Elasticsearch and every JVM server report "keystore password was incorrect"
    for any other character, whoever wrote the file; OpenSSL reads it.
    """
    if all(0x20 <= byte <= 0x7E for byte in password):
        return None
    return (
        "the PKCS#12 password has characters outside printable ASCII: OpenSSL opens the file, "
        "but Java (keytool, Elasticsearch, Tomcat …) cannot"
    )


def to_pkcs12(
    name: str,
    key: CertificateIssuerPrivateKeyTypes | None,
    certificate: x509.Certificate | None,
    cas: Sequence[x509.Certificate],
    password: bytes,
    *,
    legacy: bool = False,
    trusted: Sequence[x509.Certificate] = (),
) -> bytes:
    """Serialise a keystore protected by ``password``.

    The default is PBES2 with AES-256-CBC and an HMAC-SHA256 MAC, which OpenSSL 3 and
    Java 11.0.12+/17 read. ``legacy=True`` uses 3DES and SHA-1 for old Java and Windows.

    ``trusted`` certificates become Java trusted-certificate entries (aliases ``ca``,
    ``ca-2`` …), as ``elasticsearch-certutil`` stores its CA: Java builds the key entry's
    chain from them too, and Elasticsearch accepts the file as a ``truststore.path``.
    They are public, so they are stored unencrypted (under the file's MAC).
    """
    if key is not None and not isinstance(key, _SIGNING_KEY_TYPES):
        raise InvalidRequest(f"{type(key).__name__}: key type cannot be stored in PKCS#12")
    store = pkcs12.serialize_key_and_certificates(
        name.encode(), key, certificate, list(cas) or None, _encryption(password, legacy=legacy)
    )
    if not trusted:
        return store
    from certctl.pki._pkcs12 import merge_authenticated_safes

    return merge_authenticated_safes(store, _java_trust_store(tuple(trusted)), password)


def _encryption(password: bytes, *, legacy: bool) -> serialization.KeySerializationEncryption:
    if not password:
        raise InvalidRequest("a PKCS#12 file needs a non-empty password")
    builder = serialization.PrivateFormat.PKCS12.encryption_builder()
    if legacy:
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(
            hashes.SHA1()
        )
    else:
        builder = (
            builder.kdf_rounds(P12_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
        )
    return builder.build(password)


def to_pkcs12_truststore(certificates: Sequence[x509.Certificate], password: bytes) -> bytes:
    """A PKCS#12 trust store: ``certificates`` as Java trusted entries (``ca``, ``ca-2`` …).

    cert-manager's ``truststore.p12``: no key, under ``password`` with ``to_pkcs12``'s
    settings (keytool and Java before 18 refuse a PKCS#12 file without a password).
    """
    entries = [
        pkcs12.PKCS12Certificate(cert, b"ca" if index == 1 else f"ca-{index}".encode())
        for index, cert in enumerate(certificates, start=1)
    ]
    return pkcs12.serialize_java_truststore(entries, _encryption(password, legacy=False))


def pkcs12_holds(
    data: bytes,
    password: bytes,
    *,
    name: str | None = None,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    certificate: x509.Certificate | None = None,
    others: Sequence[x509.Certificate] = (),
) -> bool:
    """Whether ``data`` opens with ``password`` and holds exactly these entries.

    ``others``: the certificates beside the key entry's (its chain and trusted entries),
    in any order. A PKCS#12 file is encrypted under a random salt and IV, so two written
    from the same inputs differ: this is how a writer tells one it may keep. False for
    anything that does not open (another password, a file damaged or edited by hand).
    """
    from certctl.pki._pkcs12 import encryption_within, mac_verifies

    try:
        # The MAC first, here, where its iteration count is bounded: a file planted with
        # billions of them (by whoever may edit a Secret) held OpenSSL's loop, and every
        # other service's delivery behind it. Only one made with the password gets past;
        # and as whoever knows the password can ask for billions of key iterations too,
        # those are bounded before OpenSSL derives them.
        if mac_verifies(data, password) is not True or not encryption_within(data, password):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a BER file: see _load_pkcs12
            found = pkcs12.load_pkcs12(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    if (found.key is None) != (key is None) or (found.cert is None) != (certificate is None):
        return False
    if key is not None and found.key is not None:
        der = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8
        plain = serialization.NoEncryption()
        if found.key.private_bytes(*der, plain) != key.private_bytes(*der, plain):
            return False
    if certificate is not None and found.cert is not None:
        if found.cert.certificate != certificate:
            return False
        if name is not None and found.cert.friendly_name != name.encode():
            return False
    der_of = serialization.Encoding.DER
    held = sorted(c.certificate.public_bytes(der_of) for c in found.additional_certs)
    return held == sorted(c.public_bytes(der_of) for c in others)


@functools.lru_cache(maxsize=8)
def _java_trust_store(certificates: tuple[x509.Certificate, ...]) -> bytes:
    # Only its contents are kept (its MAC is replaced), so a batch of keystores for one CA
    # can share it.
    entries = [
        pkcs12.PKCS12Certificate(cert, b"ca" if index == 1 else f"ca-{index}".encode())
        for index, cert in enumerate(certificates, start=1)
    ]
    return pkcs12.serialize_java_truststore(entries, serialization.NoEncryption())
