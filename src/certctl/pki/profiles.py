"""Certificate profiles as data: which extensions each kind of certificate carries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certctl.errors import InvalidRequest

__all__ = ["LEAF_PROFILES", "PROFILES", "Profile", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """What a certificate may be used for. The profile alone decides every extension."""

    name: str
    is_ca: bool
    extended_key_usage: tuple[x509.ObjectIdentifier, ...] = ()
    path_length: int | None = None
    allows_sans: bool = True

    @property
    def is_server(self) -> bool:
        """True when the profile carries serverAuth."""
        return ExtendedKeyUsageOID.SERVER_AUTH in self.extended_key_usage

    @property
    def is_client(self) -> bool:
        """True when the profile carries clientAuth."""
        return ExtendedKeyUsageOID.CLIENT_AUTH in self.extended_key_usage

    def with_path_length(self, path_length: int | None) -> Profile:
        """Return a CA profile with another pathLenConstraint."""
        if not self.is_ca:
            raise InvalidRequest(f"{self.name}: path length applies to CA profiles only")
        if path_length is not None and path_length < 0:
            raise InvalidRequest(f"{path_length}: path length must be 0 or more")
        return Profile(self.name, True, (), path_length, self.allows_sans)

    def key_usage(self, public_key: object) -> x509.KeyUsage:
        """Return the KeyUsage for a certificate of this profile holding ``public_key``."""
        return self.key_usage_for(rsa_key=isinstance(public_key, rsa.RSAPublicKey))

    def key_usage_for(self, *, rsa_key: bool) -> x509.KeyUsage:
        """The KeyUsage of this profile for an RSA (``rsa_key``) or another subject key."""
        if self.is_ca:
            return x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            )
        # RSA key transport (TLS 1.2 RSA kx) needs keyEncipherment on server certificates;
        # EC and EdDSA keys only sign.
        return x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=rsa_key and self.is_server,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )


_SERVER = ExtendedKeyUsageOID.SERVER_AUTH
_CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH

PROFILES: dict[str, Profile] = {
    # A root: no path length limit, no SANs.
    "ca": Profile("ca", is_ca=True, allows_sans=False),
    # An intermediate may only sign leaves unless a longer path is asked for.
    "intermediate": Profile("intermediate", is_ca=True, path_length=0, allows_sans=False),
    "server": Profile("server", is_ca=False, extended_key_usage=(_SERVER,)),
    "client": Profile("client", is_ca=False, extended_key_usage=(_CLIENT,)),
    "server+client": Profile("server+client", is_ca=False, extended_key_usage=(_SERVER, _CLIENT)),
}

LEAF_PROFILES = ("server", "client", "server+client")
# Most CA levels below a CA: the API's limit too (schemas.py), and far beyond real PKIs.
MAX_PATH_LENGTH = 10


def get_profile(name: str, choices: Sequence[str] | None = None) -> Profile:
    """Return the profile called ``name``.

    ``choices`` are the names the caller takes, listed when ``name`` is unknown (default:
    every profile); the caller refuses a known profile outside them in its own words.

    Raises:
        InvalidRequest: no such profile.
    """
    try:
        return PROFILES[name.strip().lower()]
    except KeyError:
        listed = ", ".join(PROFILES if choices is None else choices)
        raise InvalidRequest(f"{name}: unknown profile (choose one of {listed})") from None
