"""Lifetimes, margins and hooks of managed TLS services (DESIGN §3): ``ServiceSettings``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from certctl.errors import InvalidRequest
from certctl.pki import (
    format_duration,
)
from certctl.services.target_policy import TargetPolicy
from certctl.services.tls_spec import SecretTarget
from certctl.targets.kubernetes import SecretValue

__all__ = ["MIN_RENEWAL_INTERVAL", "ServiceSettings"]


MIN_RENEWAL_INTERVAL = timedelta(seconds=5)


@dataclass(frozen=True)
class ServiceSettings:
    """Lifetimes and margins (DESIGN §3) and where custom-certificate secrets live."""

    ca_validity: timedelta = timedelta(hours=8760)
    ca_rotate_before: timedelta = timedelta(hours=24)
    cert_validity: timedelta = timedelta(hours=8760)
    cert_rotate_before: timedelta = timedelta(hours=24)
    secrets_dir: Path = Path("certctl-data/secrets")
    jitter: float = 0.1
    reload_runner: Callable[[str, float], None] | None = None
    # Writes a Secret target; True when it created or changed the Secret, False when the
    # Secret already held exactly this (the writer reads it first).
    secret_writer: Callable[[SecretTarget, dict[str, SecretValue]], bool] | None = None
    # Reads a Secret target's keystores.pkcs12.passwordSecretRef: (namespace or None for
    # kubernetes.namespace, Secret name, key) -> the value. Raises InvalidRequest (absent,
    # not labelled for certctl) or DeliveryError (the API unreachable).
    keystore_password_reader: Callable[[str | None, str, str], bytes] | None = None
    # Reads certificate.secretName from a Kubernetes Secret when secrets_dir has no such
    # directory: its tls.crt, tls.key, ca.crt, ca.key. Raises InvalidRequest (not found,
    # not labelled for certctl, no cluster configured).
    secret_reader: Callable[[str], dict[str, bytes]] | None = None
    # A secret_reader for one scheduler pass (``for_pass``): it may read every secret at its
    # first call (one LIST of the labelled Secrets) and answer the others from that, so a
    # pass over 1,000 services costs one request to the API server, not 1,000.
    secret_pass_reader: Callable[[], Callable[[str], dict[str, bytes]]] | None = None
    # Checked again at each delivery: what a stored path resolves to can change.
    target_policy: TargetPolicy | None = None

    def for_pass(self) -> ServiceSettings:
        """These settings for one scheduler pass: ``secret_pass_reader``'s reader, if any."""
        if self.secret_pass_reader is None:
            return self
        return replace(self, secret_reader=self.secret_pass_reader())

    def __post_init__(self) -> None:
        if self.cert_validity <= self.cert_rotate_before:
            raise InvalidRequest(
                f"cert-validity ({format_duration(self.cert_validity)}) must be longer than "
                f"cert-rotate-before ({format_duration(self.cert_rotate_before)})"
            )
        if self.ca_validity <= self.ca_rotate_before:
            raise InvalidRequest(
                f"ca-cert-validity ({format_duration(self.ca_validity)}) must be longer than "
                f"ca-cert-rotate-before ({format_duration(self.ca_rotate_before)})"
            )
        # A CA renews early enough that leaves clipped to it are not due at once (see
        # ca_renewal_time): a CA that short would be due again as soon as it is renewed.
        margin = self.ca_renewal_margin
        if self.ca_validity <= margin:
            raise InvalidRequest(
                f"ca-cert-validity ({format_duration(self.ca_validity)}) must be longer than "
                f"the CA renewal margin ({format_duration(margin)}: the longer of "
                "ca-cert-rotate-before and cert-rotate-before plus its 10 % jitter and 5 s)"
            )

    @property
    def ca_renewal_margin(self) -> timedelta:
        """How long before a CA's notAfter it is renewed (see ``ca_renewal_time``)."""
        leaf_margin = self.cert_rotate_before * (1 + self.jitter) + MIN_RENEWAL_INTERVAL
        return max(self.ca_rotate_before, leaf_margin)
