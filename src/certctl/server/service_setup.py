"""Managed services' settings (DESIGN §3 keys) and the scheduler built from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from certctl.errors import InvalidRequest
from certctl.pki import parse_duration
from certctl.server.config import ServerConfig
from certctl.server.kubernetes import (
    CustomSecrets,
    default_namespace,
    keystore_password_reader,
    secret_target_writer,
)
from certctl.server.scheduler import Scheduler
from certctl.services.context import Services
from certctl.services.service_settings import ServiceSettings
from certctl.services.target_policy import TargetPolicy

if TYPE_CHECKING:  # imported where a webhook is configured
    from certctl.services.notify import Webhook

__all__ = ["build_scheduler", "load_webhook", "service_settings", "target_policy"]


def service_settings(config: ServerConfig, installation: str | None = None) -> ServiceSettings:
    """Lifetimes and margins (DESIGN §3) of the internal CA and the managed services.

    Secret targets are written for ``installation`` (``store.db.installation_id``); without
    one (the configuration checked before the store is opened) there is no Secret writer.

    Raises:
        InvalidRequest: a lifetime not longer than its renewal margin.
    """
    custom = CustomSecrets(config)
    return ServiceSettings(
        ca_validity=parse_duration(config.ca_cert_validity),
        ca_rotate_before=parse_duration(config.ca_cert_rotate_before),
        cert_validity=parse_duration(config.cert_validity),
        cert_rotate_before=parse_duration(config.cert_rotate_before),
        secrets_dir=config.effective_secrets_dir,
        secret_writer=None if installation is None else secret_target_writer(config, installation),
        keystore_password_reader=keystore_password_reader(config),
        secret_reader=custom.read,
        secret_pass_reader=custom.for_pass,
        target_policy=target_policy(config),
    )


def target_policy(config: ServerConfig) -> TargetPolicy:
    """Who may set which directory targets: ``services.target-directories``, never ours."""
    own = [config.data_dir, config.effective_secrets_dir]
    if config.tls.cert_dir is not None:
        own.append(config.tls.cert_dir)
    return TargetPolicy(
        delegated_directories=tuple(config.services.target_directories),
        protected=tuple(own),
        default_namespace=default_namespace(config),
    )


def build_scheduler(config: ServerConfig, services: Services, installation: str) -> Scheduler:
    """The managed-services reconciler configured from DESIGN §3 keys.

    ``installation`` is the store's ``store.db.installation_id``, read once at start.
    """
    settings = service_settings(config, installation)
    interval = parse_duration(config.reconcile_interval).total_seconds()
    return Scheduler(services, settings, interval, load_webhook(config), watch_changes=True)


def load_webhook(config: ServerConfig) -> Webhook | None:
    """``notifications.webhook``, its HMAC key read; None when not configured.

    The secret file holds the key, the whole file; ``previous-secret-file``, when set and
    there, the key being retired (its signature is sent too, so receivers switch when they
    like).

    Raises:
        InvalidRequest: the secret file is missing, unreadable or empty, the previous one
            unreadable or empty, or the ca-file cannot be read or holds no PEM certificate.
    """
    from certctl.services.notify import Webhook, load_keys

    hook = config.notifications.webhook
    if hook is None:
        return None
    if hook.secret_file is None:
        raise InvalidRequest("notifications.webhook needs a non-empty secret-file")
    keys = load_keys(hook.secret_file, hook.previous_secret_file)
    return Webhook(
        hook.url,
        keys[0],
        parse_duration(hook.timeout).total_seconds(),
        proxy=hook.proxy,
        ca_file=hook.ca_file,
        previous_secrets=keys[1:],
        secret_file=hook.secret_file,
        previous_secret_file=hook.previous_secret_file,
    )
