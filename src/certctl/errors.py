"""Exception hierarchy shared by every layer of certctl.

::

    CertctlError          500  exit 1
    ├── InvalidRequest    400  bad CSR, SAN, duration; profile rule broken
    │   ├── WeakKey             key type or size below policy
    │   ├── BlockedKey          key of a certificate or issuer revoked for a compromise
    │   ├── BadSignature        CSR or certificate signature does not verify
    │   ├── WrongPassword       a key or PKCS#12 file does not open with the password given
    │   └── PasswordRequired    a key or PKCS#12 file is encrypted and no password was given
    ├── Unauthenticated   401
    ├── PermissionDenied  403
    ├── NotFound          404  also: missing input file
    ├── Conflict          409  already revoked, name taken, output exists
    ├── TooManyRequests   429  too many failed authentications from one address
    ├── AcmeError         4xx  an ACME (RFC 8555) refusal: urn:ietf:params:acme:error:<type>
    └── Unavailable       503  a dependency (the Kubernetes API) is unreachable or failing
        └── StorageUnavailable  the database is full, read-only, failing or unreachable

Each class carries an HTTP ``status`` and the ``title`` of that status's problem type
(``api.problems.PROBLEM_TYPES``): a subclass keeps its parent's, as RFC 9457 fixes a title per
type. Instances carry a human ``detail``, which says what happened (a weak key, a storage
fault) and never contains key material, passwords or tokens.

``cause_chain`` and ``tls_verify_failure`` read a foreign error (httpx, ssl) where it enters,
for the one line certctl says about it.
"""

from __future__ import annotations

from typing import Self

__all__ = [
    "AcmeError",
    "BadSignature",
    "BlockedKey",
    "CertctlError",
    "Conflict",
    "InvalidRequest",
    "NotFound",
    "PasswordRequired",
    "PermissionDenied",
    "StorageUnavailable",
    "TooManyRequests",
    "Unauthenticated",
    "Unavailable",
    "WeakKey",
    "WrongPassword",
    "cause_chain",
    "tls_verify_failure",
]


class CertctlError(Exception):
    """Root of every error certctl raises on purpose."""

    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def with_detail(self, detail: str) -> Self:
        """This error, of its own class and attributes, saying ``detail`` instead.

        For a caller that rewords a message (names the file, the variable a password came
        from): ``type(exc)(detail)`` dropped the attributes a handler inspects
        (``PasswordRequired.pkcs12``, ``WrongPurpose.suits``) and failed for a class that
        takes more than the detail. Not ``__init__`` again: copied, as ``copy.copy`` would
        do, without the traceback and cause (``raise … from exc`` sets the new one's).
        """
        reworded = type(self).__new__(type(self), detail)  # BaseException.__new__ sets args
        reworded.__dict__.update(self.__dict__)
        if "__notes__" in self.__dict__:
            # add_note() on the copy must not add to the original's list (and back).
            reworded.__notes__ = list(self.__notes__)
        reworded.detail = detail
        return reworded


class InvalidRequest(CertctlError):
    """The input is malformed or breaks a rule (bad CSR, SAN, duration, profile)."""

    status = 400
    title = "Invalid request"


class WeakKey(InvalidRequest):
    """A key's algorithm or size is below policy (RSA < 2048, DSA, unknown curve)."""


class BlockedKey(InvalidRequest):
    """A key certctl certifies no more: a certificate or issuer of it was revoked for a compromise.

    Apart from ``WeakKey``: the ACME server answers it ``badPublicKey`` (RFC 8555 6.7), as
    Let's Encrypt's Boulder answers a key in its blockedKeys table, not ``badCSR``.
    """


class BadSignature(InvalidRequest):
    """A signature over a CSR or certificate does not verify."""


class WrongPassword(InvalidRequest):
    """An encrypted key or a PKCS#12 file does not open with the password that was given.

    By type, not by its words: a caller that tried a default password (CERTCTL_PASSWORD)
    says where it came from, and a message naming a path under ``passwords/`` is no such case.
    """


class PasswordRequired(InvalidRequest):
    """An encrypted key or a password-protected PKCS#12 file was given no password.

    By type, not by its words: the server takes no password, so it replaces the loader's
    advice (``--password-file``, a CLI option) with its own, and a message that merely holds
    the word "encrypted" (a subject in a malformed certificate's error) is no such case.
    ``pkcs12``: the file is a PKCS#12 file, not a key (``openssl pkcs12``, not ``pkey``,
    opens it).
    """

    def __init__(self, detail: str, *, pkcs12: bool = False) -> None:
        super().__init__(detail)
        self.pkcs12 = pkcs12


class AcmeError(CertctlError):
    """An ACME request refused (RFC 8555 6.7): ``acme_type`` is the error's last word.

    ``malformed``, ``badNonce``, ``badCSR`` …: the ACME routes answer it as
    ``urn:ietf:params:acme:error:<acme_type>`` with ``status``.
    """

    def __init__(
        self,
        detail: str,
        acme_type: str = "malformed",
        status: int = 400,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.acme_type = acme_type
        self.status = status
        self.retry_after = retry_after  # seconds, for a 429


class Unauthenticated(CertctlError):
    """The caller could not be authenticated."""

    status = 401
    title = "Unauthenticated"


class PermissionDenied(CertctlError):
    """The caller is authenticated but lacks a permission."""

    status = 403
    title = "Forbidden"


class NotFound(CertctlError):
    """A named object (or input file) does not exist."""

    status = 404
    title = "Not found"


class Conflict(CertctlError):
    """The request conflicts with existing state (already revoked, file exists)."""

    status = 409
    title = "Conflict"


class Unavailable(CertctlError):
    """A service certctl depends on (the Kubernetes API) is unreachable or failing."""

    status = 503
    title = "Service unavailable"


class StorageUnavailable(Unavailable):
    """The database refuses the operation: disk full, read-only, I/O error, unreachable.

    ``retry_after_s``: the delay a client is told to wait (``Retry-After``); every fault
    ``store.db.storage_error`` classifies has one (shorter for those that pass by themselves
    soon: no pooled connection came free in time, a rolled-back conflict).
    """

    def __init__(self, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class TooManyRequests(CertctlError):
    """The caller is throttled; ``retry_after_s`` says when to try again."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


def cause_chain(exc: BaseException) -> list[BaseException]:
    """``exc``, then what it was raised from (or while handling), and so on, each once.

    Each once: a chain that comes back on itself (``__cause__`` set by hand, a library
    re-raising what it caught) would otherwise be walked for ever.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def tls_verify_failure(exc: BaseException) -> str | None:
    """``TLS certificate verify failed: <why>`` when a certificate check caused ``exc``.

    "ConnectError" alone read like a network outage. The reason comes from OpenSSL, never
    from the request, so it holds no token or URL.
    """
    import ssl  # here: every command imports this module, few ever need ssl

    for cause in cause_chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or cause.reason or "not verified"
            return f"TLS certificate verify failed: {why}"
    return None
