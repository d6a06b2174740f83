"""``certctl serve``: bootstrap, TLS, background tasks and the uvicorn listener."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from cryptography import x509

from certctl.api.app import create_app
from certctl.api.metrics_routes import METRICS_PATHS
from certctl.api.throttle import AuthFailureLimiter
from certctl.auth.kubernetes import TokenReviewAuthenticator
from certctl.errors import CertctlError, InvalidRequest
from certctl.hosts import is_loopback
from certctl.metrics.registry import HTTP_CONNECTIONS_REFUSED, TLS_HANDSHAKE_FAILURES
from certctl.pki import parse_duration
from certctl.server.bootstrap import Bootstrapped, bootstrap
from certctl.server.client_mappings import (
    client_ca_vet,
    client_cert_mappings,
    warn_reversed_mappings,
    warn_unknown_mapped_roles,
)
from certctl.server.config import ServerConfig, split_host_port
from certctl.server.handshake_failures import REASONS as HANDSHAKE_FAILURE_REASONS
from certctl.server.handshake_failures import HandshakeFailures
from certctl.server.kubernetes import kube_connection, kubernetes_features
from certctl.server.logs import configure_logging
from certctl.server.periodic import refresh_metrics, run_periodically
from certctl.server.scheduler import Scheduler
from certctl.server.service_setup import (
    build_scheduler,
    load_webhook,
    service_settings,
    target_policy,
)
from certctl.server.startup_notice import announce, store_admin_key
from certctl.server.tls import (
    ServerTLS,
    check_files,
    ensure_self_signed,
    self_signed_names,
    serve_names_of,
)
from certctl.services import issuers
from certctl.services.acme import AcmeSettings, check_issuer
from certctl.services.context import IssuerRevocation, Services
from certctl.services.service_ca import ca_renewal_time
from certctl.store.db import checkpoint, installation_id

__all__ = ["serve"]

log = logging.getLogger("certctl.server")
METRICS_REFRESH_S = 10.0
CA_SECRET_REFRESH_S = 60.0
# How often each process compares its cached issuers with the store (renewals elsewhere).
ISSUER_CACHE_CHECK_S = 60.0
# File descriptors kept back from client connections: listeners, the event loop, log files,
# SQLite (three per pooled connection) or PostgreSQL, certificate reloads, webhooks, reload
# commands. About 25 are open at rest.
FD_RESERVE = 100
# Connections the metrics listener may open beyond http.max-connections (out of FD_RESERVE):
# Prometheus still gets in while the main listener is full.
METRICS_HEADROOM = 16


def _check_integrations(config: ServerConfig) -> None:
    """Refuse a webhook or Kubernetes setting that cannot work, before the data dir exists.

    The same checks run again where these are built; here they only come first, so a typo
    in the configuration does not leave a new CA and admin key behind.
    """
    load_webhook(config)
    if config.tls.publish_ca_secret and config.tls.mode != "self-signed":
        raise InvalidRequest("tls.publish-ca-secret needs tls.mode=self-signed")
    if config.auth.kubernetes.enabled or config.tls.publish_ca_secret:
        kube_connection(config)


def connection_limit(config: ServerConfig) -> int:
    """Open connections per process: ``http.max-connections``, or what ``ulimit -n`` leaves.

    The default is the soft RLIMIT_NOFILE less ``FD_RESERVE`` (at least half of it); the soft
    limit is not raised for it. It is the budget the operator set (``ulimit -n``, systemd's
    ``LimitNOFILE=``, the container runtime), and systemd keeps it at 1024 on purpose: code
    that still calls select() fails on descriptors above 1023. An explicit value above the
    default raises the soft limit as far as the hard one allows, since then it was asked for.

    Raises:
        InvalidRequest: ``http.max-connections`` needs more than the hard limit allows.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = config.http.max_connections
    if wanted is None:
        return max(soft - FD_RESERVE, soft // 2)
    needed = wanted + FD_RESERVE
    if needed > soft:
        if hard != resource.RLIM_INFINITY and needed > hard:
            raise InvalidRequest(
                f"http.max-connections={wanted} needs an open-file limit of {needed} "
                f"(ulimit -n); the hard limit is {hard}"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return wanted


def _set_state(asgi: Any, name: str, value: object) -> None:
    # create_app wraps the Starlette app in the access-log middleware: set state inside.
    inner = getattr(asgi, "app", asgi)
    setattr(inner.state, name, value)


@dataclass
class _Prepared:
    """What the parent process settles before serving: store, admin key, TLS files."""

    config: ServerConfig
    boot: Bootstrapped
    mode: str
    tls_dir: Path
    ca_path: str | None
    rotate_before: timedelta
    validity: timedelta
    # Built once here (they read files and config); worker 0 runs the scheduler and publisher.
    scheduler: Scheduler | None = None
    kube_auth: TokenReviewAuthenticator | None = None
    publish_ca: Callable[[], None] | None = None
    max_connections: int = 1
    acme: AcmeSettings | None = None  # acme.enabled: the ACME endpoint's settings


def _no_core_dumps() -> None:
    """Turn core dumps off for this process, its workers and what they start.

    The server holds the key-encryption key (also in ``CERTCTL_MASTER_KEY``), every CA key it
    has opened and the admin API key in memory: a crash under a core limit above 0 (systemd's
    default) wrote them all to disk, a key-encryption key kept off the host included.
    """
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


def _refuse_plain_http_beyond_loopback(config: ServerConfig) -> None:
    """Refuse a plain-HTTP listener beyond loopback unless ``allow-insecure`` is set.

    Raises:
        InvalidRequest: the listener and why it is plain HTTP, in one line.
    """
    host, _port = config.host_port
    mode = config.tls.mode
    if mode == "disabled" and not is_loopback(host) and not config.allow_insecure:
        raise InvalidRequest(
            f"tls.mode=disabled on {host}: plain HTTP beyond loopback needs --allow-insecure"
        )
    if config.metrics.listen:
        m_host, _ = split_host_port(config.metrics.listen, "metrics.listen")
        # With tls.mode=disabled the metrics listener is plain HTTP whatever metrics.secure says.
        plain = not config.metrics.secure or mode == "disabled"
        if plain and not is_loopback(m_host) and not config.allow_insecure:
            why = "metrics.secure=false" if not config.metrics.secure else "tls.mode=disabled"
            raise InvalidRequest(
                f"{why}: plain HTTP metrics on {m_host} (beyond loopback) needs --allow-insecure"
            )


def serve(config: ServerConfig) -> None:
    """Run the server until interrupted (``workers`` processes when above 1)."""
    _no_core_dumps()
    configure_logging(config.log_format)
    # The access log writes a line per request; these record attributes are never printed
    # (logging docs, "Optimization"): not collecting them saves a stack walk per line.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    # httpx logs every Kubernetes API call (TokenReview, Secret writes) at INFO. (Webhook
    # POSTs are logged by receiver alone whatever this level: services/notify.py.)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _refuse_plain_http_beyond_loopback(config)
    mode = config.tls.mode
    if mode == "custom" and config.tls.cert_dir is None:
        raise InvalidRequest("tls.mode=custom needs tls.cert-dir")
    service_settings(config)  # lifetimes checked before the data directory is touched
    _check_integrations(config)
    warn_reversed_mappings(config)  # once, here: not once per worker
    client_cert_mappings(config)  # a pin of no CA in tls.client-ca: refused before any file
    max_connections = connection_limit(config)  # inherited by the workers, as is the limit
    if mode != "disabled":
        check_files(
            config.tls.cert_dir if mode == "custom" else None,
            config.tls.client_ca,
            datetime.now(UTC),
        )
    from certctl.server.workers import Supervisor, bind_listeners

    # An address in use fails here, before the first start creates the CA and the admin key.
    sockets = bind_listeners(config, config.workers)
    boot = bootstrap(config)
    warn_unknown_mapped_roles(config, boot.services)  # after bootstrap: the roles are stored
    acme = acme_settings(config, boot.services)
    tls_dir = config.data_dir / "tls"
    prepared = _Prepared(
        config,
        boot,
        mode,
        tls_dir,
        None,
        parse_duration(config.cert_rotate_before),
        parse_duration(config.cert_validity),
        max_connections=max_connections,
        acme=acme,
    )
    installation = installation_id(boot.services.engine)
    # Built before the key is announced, so their configuration errors surface first.
    prepared.scheduler = build_scheduler(config, boot.services, installation)
    _renew_internal_ca(prepared, None)
    if mode == "custom" and config.tls.cert_dir is not None:
        ca_file = config.tls.cert_dir / "ca.crt"
        # Absolute, links not followed: in a Kubernetes Secret volume ca.crt is a link
        # through ..data into a directory the kubelet deletes at the Secret's next update,
        # and the printed lines must keep working after it.
        prepared.ca_path = os.path.abspath(ca_file) if ca_file.exists() else None
    elif mode == "self-signed":
        prepared.ca_path = str((tls_dir / "ca.crt").resolve())
    # Once per start (not per worker): the id is otherwise only in the database, and telling
    # two installations' Secrets apart needs it (docs/kubernetes.md).
    log.info(
        "installation id %s (annotation certctl.io/owner on the Kubernetes Secrets it writes)",
        installation,
    )
    prepared.kube_auth, prepared.publish_ca = kubernetes_features(
        config, tls_dir / "ca.crt", installation
    )
    scheme = "https" if mode != "disabled" else "http"
    stored_in = store_admin_key(boot, config, installation)
    if config.workers == 1:
        # Printed before the listener opens, so whoever sees /readyz succeed can read the key.
        announce(boot, config, scheme, prepared.ca_path, stored_in)
        _serve_process(prepared, 0, sockets[0])
        return
    announce(boot, config, scheme, prepared.ca_path, stored_in)
    log.info("starting %d worker processes", config.workers)
    # The SQLite/PostgreSQL connections of the parent must not be used by the children.
    boot.services.engine.dispose()
    code = Supervisor(
        config.workers, lambda index: _serve_process(prepared, index, sockets[index])
    ).run()
    if code:
        raise SystemExit(code)


def acme_settings(config: ServerConfig, services: Services) -> AcmeSettings | None:
    """The ACME endpoint's settings with ``acme.enabled``, its issuer checked; else None.

    Raises:
        InvalidRequest: ``acme.issuer`` names no issuer.
    """
    if not config.acme.enabled:
        return None
    settings = AcmeSettings(
        issuer_id=config.acme.issuer,
        validity=parse_duration(config.acme.validity),
        allowed_names=tuple(config.acme.allowed_names),
        http_01_port=config.acme.http_01_port,
        external_account_required=config.acme.external_account_required,
        dns_resolvers=config.acme.resolvers,
    )
    check_issuer(services, settings)
    names = ", ".join(settings.allowed_names) or (
        "any DNS name, wildcard or IP address its challenge proves"
    )
    log.info(
        "ACME endpoint on at /acme/directory: issuer %s, validity %s, names: %s, "
        "http-01 on port %d, dns-01 through %s",
        settings.issuer_id,
        config.acme.validity,
        names,
        settings.http_01_port,
        ", ".join(config.acme.dns_resolvers) or "the system resolver",
    )
    return settings


def _renew_internal_ca(prepared: _Prepared, tls: ServerTLS | None) -> None:
    """Renew the internal CA (issuer ``default``) when due, then the self-signed files.

    The CA is re-signed with its own key ``ca-cert-rotate-before`` ahead of its notAfter (and
    before the server certificate would be clipped to it and come due at once): certificates
    issued under the old CA certificate, and clients still holding the old ``ca.crt``, keep
    verifying. The self-signed server certificate follows, since ``ca.crt`` changed.
    """
    services = prepared.boot.services
    assert prepared.scheduler is not None  # built first in serve()
    settings = prepared.scheduler.settings
    ca, revoked = issuers.load_issuer_state(services, issuers.DEFAULT_ISSUER)
    if revoked is not None:
        _refuse_internal_ca(prepared, revoked)
        return
    renewed, wrote = ca, False
    if services.clock() >= ca_renewal_time(settings, ca):
        renewed, wrote = issuers.renew_root_issuer(
            services,
            issuers.DEFAULT_ISSUER,
            ca,
            validity=settings.ca_validity,
            now=services.clock(),
        )
    if wrote:
        log.info(
            "renewed the internal CA (issuer 'default', same key) until %s",
            renewed.certificate.not_valid_after_utc.isoformat(),
        )
    if prepared.mode == "self-signed":
        _renew_self_signed(prepared, tls)


def refresh_issuers(prepared: _Prepared, tls: ServerTLS | None, *, leader: bool) -> None:
    """Drop cached CAs renewed elsewhere; the leader then follows with its own files.

    Another replica renewing the internal CA would otherwise reach this one's ``ca.crt`` and
    server certificate only at its next renewal check (up to an hour with the defaults).
    """
    stale = issuers.refresh_cached_issuers(prepared.boot.services)
    if leader and prepared.mode == "self-signed" and issuers.DEFAULT_ISSUER in stale:
        log.info("the internal CA was renewed by another replica; following it")
        _renew_self_signed(prepared, tls)


def _renewal_check_s(prepared: _Prepared) -> float:
    """A tenth of the shorter renewal margin, between 1 s and an hour."""
    assert prepared.scheduler is not None
    margin = min(prepared.rotate_before, prepared.scheduler.settings.ca_rotate_before)
    return min(3600.0, max(1.0, margin.total_seconds() / 10))


def _refuse_internal_ca(prepared: _Prepared, revoked: IssuerRevocation) -> None:
    """Say (at every renewal check) that the internal CA renews nothing, and what is kept.

    As the API refuses to issue from it (409): its key was revoked for a compromise under
    another certificate, or it is that of a revoked issuer. The files written before keep
    serving until they expire; a new certificate from the compromised key would be trusted
    by every client of ``ca.crt`` all the same.
    """
    kept = "ca.crt is kept"
    if prepared.mode == "self-signed":
        try:
            served = x509.load_pem_x509_certificate((prepared.tls_dir / "tls.crt").read_bytes())
            kept = (
                f"the server certificate in {prepared.tls_dir} (until "
                f"{served.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}) and ca.crt are kept"
            )
        except (OSError, ValueError):
            kept = f"no usable server certificate in {prepared.tls_dir} is replaced"
    advice = "serve a certificate from another CA (tls.mode=custom, tls.cert-dir)"
    log.error(
        "internal CA not renewed, nor the server certificate: %s; %s",
        issuers.revocation_refusal(revoked, issuers.DEFAULT_ISSUER, advice),
        kept,
    )


def _renew_self_signed(prepared: _Prepared, tls: ServerTLS | None) -> None:
    services = prepared.boot.services
    ca, revoked = issuers.load_issuer_state(services, issuers.DEFAULT_ISSUER)
    if revoked is not None:
        _refuse_internal_ca(prepared, revoked)
        return
    if (
        ensure_self_signed(
            prepared.tls_dir,
            ca,
            extra_sans=self_signed_names(prepared.config),
            validity=prepared.validity,
            rotate_before=prepared.rotate_before,
            now=services.clock(),
        )
        and tls is not None
    ):
        tls.load(services.clock())


def _not_a_cancelled_request(record: logging.LogRecord) -> bool:
    """Drop uvicorn's "Exception in ASGI application" for a request cancelled by a stop.

    Only a stop cancels a request (http.shutdown-timeout passed, a second SIGTERM or Ctrl-C,
    the loop's end): uvicorn logged its CancelledError as a crash, with a traceback, after
    its own line (or certctl's) saying it would not wait for it.
    """
    exc = record.exc_info
    return not (exc and exc[0] is not None and issubclass(exc[0], asyncio.CancelledError))


# Which listener the running task serves: set in each listener's own task (a copy of the
# context), so the lines below, which uvicorn logs once per listener, are kept for the main one.
_SERVING: contextvars.ContextVar[str] = contextvars.ContextVar("certctl_listener", default="main")
# uvicorn's lines about the process, not the listener: with metrics.listen each came twice
# ("Started server process [6563]" two times, as if two processes had started).
_PROCESS_LINES = frozenset(
    {"Started server process [%d]", "Shutting down", "Finished server process [%d]"}
)


def _said_once_per_process(record: logging.LogRecord) -> bool:
    """Drop uvicorn's process lines when a listener other than the main one logs them."""
    return _SERVING.get() == "main" or record.msg not in _PROCESS_LINES


async def _serve_listener(server: Any, name: str, sockets: list[socket.socket]) -> None:
    _SERVING.set(name)  # this task's context only
    await server.serve(sockets=sockets)


def _serve_process(
    prepared: _Prepared, index: int, sockets: dict[str, list[socket.socket]]
) -> None:
    """Serve the listeners in this process (the only one, or worker ``index``).

    Worker 0 also runs the background work (scheduler, self-signed renewal, CA Secret);
    every worker refreshes its own metrics snapshot.
    """
    import uvicorn

    from certctl.api.access_log import plain_http_request
    from certctl.api.app import MAX_HEADER_BYTES
    from certctl.server.connection_gate import ConnectionGate
    from certctl.server.http_connection import http_protocol
    from certctl.server.tls_listener import listener_protocol

    config, services, mode = prepared.config, prepared.boot.services, prepared.mode
    leader = index == 0
    several = config.workers > 1
    # A worker restarted by the supervisor is forked from the parent, whose cached CAs date
    # from start-up: one renewed since then is reloaded now, not at the first periodic check.
    issuers.refresh_cached_issuers(services)
    tls: ServerTLS | None = None
    ticket_s = parse_duration(config.tls.ticket_key_rotation).total_seconds()
    cert_dir = prepared.tls_dir if mode == "self-signed" else config.tls.cert_dir
    if mode != "disabled" and cert_dir is not None:
        tls = ServerTLS(
            cert_dir,
            config.tls.min_version,
            config.tls.client_auth,
            config.tls.client_ca,
            auto_renewed=mode == "self-signed",
            ticket_key_rotation_s=ticket_s,
            vet_client_ca=client_ca_vet(config),
            # The served certificate's names are certctl's own (self-signed: from the config,
            # at bootstrap), in every worker: each has its Services and its reloads.
            on_serve=serve_names_of(services) if mode == "custom" else None,
        )
    if tls is not None:
        tls.load(services.clock())
    refresh_metrics(services)
    kube_auth = prepared.kube_auth
    publish_ca = prepared.publish_ca if leader else None
    if publish_ca is not None:
        try:
            publish_ca()
        except CertctlError as exc:  # RBAC may lag the pod; retried every minute
            log.error("cannot publish the CA certificate: %s", exc.detail)

    # One throttle for every listener of this process: failures on the metrics port count too.
    limiter = None
    if config.auth.failure_limit > 0:
        limiter = AuthFailureLimiter(
            config.auth.failure_limit,
            parse_duration(config.auth.failure_window).total_seconds(),
        )
    protocol = http_protocol(
        parse_duration(config.http.header_timeout).total_seconds(),
        MAX_HEADER_BYTES,
        body_timeout_s=parse_duration(config.http.body_timeout).total_seconds(),
        send_timeout_s=parse_duration(config.http.send_timeout).total_seconds(),
    )
    mappings = client_cert_mappings(config)
    acme = prepared.acme
    app = create_app(
        services,
        client_cert_mappings=mappings,
        json_logs=config.log_format == "json",
        kubernetes_authenticator=kube_auth,
        auth_failure_limiter=limiter,
        service_policy=target_policy(config),
        acme=acme,
    )
    host, port = config.host_port
    handshake_timeout_s = parse_duration(config.http.handshake_timeout).total_seconds()
    # One count for every listener of this process: they share its file descriptors.
    gate = ConnectionGate(
        prepared.max_connections,
        refused=lambda name: HTTP_CONNECTIONS_REFUSED.labels(name).inc(),
    )

    # One for every listener of this process: each kind of failure logged once a minute.
    failures = HandshakeFailures(
        counted=lambda name, reason: TLS_HANDSHAKE_FAILURES.labels(name, reason).inc()
    )

    def plain_http(first_bytes: bytes, client: str) -> None:
        plain_http_request(first_bytes, client, json_logs=config.log_format == "json")

    logging.getLogger("uvicorn.error").addFilter(_not_a_cancelled_request)
    logging.getLogger("uvicorn.error").addFilter(_said_once_per_process)
    # How long a stop waits for open requests (http.shutdown-timeout) before cancelling them.
    shutdown_s = math.ceil(parse_duration(config.http.shutdown_timeout).total_seconds())

    class Listener(uvicorn.Server):
        """uvicorn's server, without its own signal handlers: ``stop`` (below) stops them all.

        uvicorn installs a handler per listener, each replacing the one before, and passes a
        signal on to the handler it replaced only once it has drained its own connections.
        With metrics.listen the first SIGTERM or Ctrl-C reached the metrics listener alone
        (installed last), and the main one went on accepting API requests until metrics had
        drained (up to http.shutdown-timeout).
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    def listener(
        asgi: Any, bind_host: str, bind_port: int, secure: bool, name: str = "main"
    ) -> uvicorn.Server:
        context = tls.current_context if (tls is not None and secure) else None
        HTTP_CONNECTIONS_REFUSED.labels(name)  # a 0 from the start, not a series appearing
        headroom = METRICS_HEADROOM if name == "metrics" else 0
        if context is not None:
            for reason in HANDSHAKE_FAILURE_REASONS:  # 0s from the start
                TLS_HANDSHAKE_FAILURES.labels(name, reason)
        factory = listener_protocol(
            protocol, context, handshake_timeout_s, gate, name, headroom, plain_http, failures
        )
        return Listener(
            uvicorn.Config(
                asgi,
                host=bind_host,
                port=bind_port,
                # TLS is run by the protocol factory, not by uvicorn, which sets no handshake
                # deadline, and it counts connections (listener_protocol). uvicorn only calls
                # what it gets here, so a factory function does, though its annotation asks
                # for a protocol class.
                http=cast("type[asyncio.Protocol]", factory),
                lifespan="off",
                access_log=False,
                log_config=None,
                server_header=False,
                # certctl is not run behind a proxy by default: trusting X-Forwarded-For (from
                # 127.0.0.1, uvicorn's default) would let a local client pick the address the
                # auth throttle and the audit log see.
                proxy_headers=False,
                timeout_keep_alive=30,
                # Unset, a stop waited for open requests as long as they took (a client
                # sending its body slowly: up to http.body-timeout, 60 s, each read).
                timeout_graceful_shutdown=shutdown_s,
            )
        )

    servers = [(listener(app, host, port, secure=True), "main")]
    if config.metrics.listen:
        m_host, m_port = split_host_port(config.metrics.listen, "metrics.listen")
        metrics_app = create_app(
            services,
            client_cert_mappings=mappings,
            json_logs=config.log_format == "json",
            only_paths=METRICS_PATHS,
            kubernetes_authenticator=kube_auth,
            auth_failure_limiter=limiter,
        )
        servers.append(
            (
                listener(metrics_app, m_host, m_port, secure=config.metrics.secure, name="metrics"),
                "metrics",
            )
        )
    reload_s = parse_duration(config.tls.reload_interval).total_seconds()
    scheduler = prepared.scheduler if leader else None
    if scheduler is not None:
        _set_state(app, "scheduler", scheduler)

    async def main() -> None:
        running.append(asyncio.get_running_loop())
        tasks = [
            asyncio.create_task(
                run_periodically(
                    METRICS_REFRESH_S, lambda: refresh_metrics(services), "metrics refresh"
                )
            )
        ]
        # Several workers: only the leader renews the self-signed files; the others see the
        # new files through the same poll that custom certificates use.
        if tls is not None and (mode == "custom" or (several and not leader)):
            tasks.append(asyncio.create_task(tls.watch(reload_s, services.clock)))
        elif tls is not None and config.tls.client_auth != "none":
            # No file watch here, but a changed tls.client-ca must still be applied (watch does).
            tasks.append(
                asyncio.create_task(
                    run_periodically(reload_s, tls.check_client_ca, "tls.client-ca check")
                )
            )
        if tls is not None:
            tasks.append(
                asyncio.create_task(
                    run_periodically(
                        min(max(ticket_s / 4, 0.5), 60.0),
                        tls.rotate_ticket_key,
                        "TLS session-ticket key rotation",
                    )
                )
            )
        if leader:
            tasks.append(
                asyncio.create_task(
                    run_periodically(
                        _renewal_check_s(prepared),
                        lambda: _renew_internal_ca(prepared, tls),
                        "CA and TLS renewal",
                    )
                )
            )
        # A CA renewed by the leader (or another replica) replaces this process's cached copy.
        tasks.append(
            asyncio.create_task(
                run_periodically(
                    min(ISSUER_CACHE_CHECK_S, _renewal_check_s(prepared)),
                    lambda: refresh_issuers(prepared, tls if leader else None, leader=leader),
                    "issuer cache refresh",
                )
            )
        )
        scheduler_task = None
        if scheduler is not None:
            scheduler_task = asyncio.create_task(scheduler.run())
            tasks.append(scheduler_task)
        if publish_ca is not None:
            tasks.append(
                asyncio.create_task(run_periodically(CA_SECRET_REFRESH_S, publish_ca, "CA Secret"))
            )
        try:
            runs = [
                asyncio.create_task(_serve_listener(s, name, sockets[name])) for s, name in servers
            ]
            await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
            for other, _ in servers:  # one stopped (signal or error): stop the rest
                other.should_exit = True
            if scheduler is not None:
                scheduler.stop()  # as a signal does (stop() below)
            await asyncio.gather(*runs, return_exceptions=True)
            listeners_stopped.append(True)
        finally:
            # All ended before any is waited for: the scheduler's task waits for its
            # reconcile in progress (then gives up the leadership), the others need not.
            # The scheduler is stopped, not cancelled: stopped at the first signal, it is
            # often still giving up (closing its listening connection, waiting for a webhook
            # event) when the listeners end, and a cancel there left the lock (and its log
            # line) to the process's end. Its waits are bounded; a second signal ends them.
            if scheduler is not None:
                scheduler.stop()
            for task in tasks:
                if task is not scheduler_task:
                    task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # The one handler of SIGTERM and SIGINT while the server runs (Listener installs none):
    # the first stops every listener at once, each draining its open requests. uvicorn's
    # own handlers re-raised the signal to the handler they found once drained, and the
    # default ones ended the process by SIGTERM (no `finally`: the last commits stayed only
    # in certctl.db-wal, as the API-key cache keeps its own connection open and SQLite never
    # checkpoints on close) or printed "certctl: error: interrupted" with status 130, and
    # `make run` added "*** [run] Terminated/Interrupt". A stop asked for is the normal end
    # of a server: this one stops the listeners (any not yet serving, too), and the process
    # returns through the `finally` below, which checkpoints, with status 0, as the --workers
    # supervisor (workers.py) already ends. Raising SystemExit here instead would leave it in
    # uvicorn's task: "Task exception was never retrieved" in the log.
    # While the listeners drain, a second Ctrl-C or SIGTERM ends that wait (below;
    # http.shutdown-timeout bounds it anyway). Once the listeners stopped, what is left is
    # the work in progress (a delivery's reload command, up to its reloadTimeout; a
    # Kubernetes call), which the loop's shutdown waits for: a Ctrl-C then is the operator
    # who will not wait, and is obeyed at once, without the checkpoint (the WAL is replayed
    # at the next start). So is a SIGTERM then, ending the process with the status a stop
    # has (0): before, it was ignored, and only SIGKILL ended a server waiting for a reload
    # command (up to 10 minutes). Not in a worker of --workers: there a SIGTERM may be a
    # duplicate of the one stop (the parent forwards it on top of systemd's to the whole
    # control group); a second one to the parent ends the workers (workers.Supervisor).
    listeners_stopped: list[bool] = []
    stop_asked: list[bool] = []
    running: list[asyncio.AbstractEventLoop] = []  # main()'s, once it runs

    def stop(signum: int, _frame: object) -> None:
        if signum == signal.SIGINT and listeners_stopped:
            log.warning(
                "second Ctrl-C: exiting without waiting for the work in progress (a reload "
                "command, a delivery)"
            )
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.raise_signal(signal.SIGINT)
        if signum == signal.SIGTERM and listeners_stopped and not several:
            log.warning(
                "SIGTERM during shutdown: exiting without waiting for the work in progress "
                "(a reload command, a delivery)"
            )
            sys.stdout.flush()
            sys.stderr.flush()
            # Not SystemExit: the interpreter's exit joins the executor's threads, the very
            # wait this ends.
            os._exit(0)
        if stop_asked and not listeners_stopped and not all(s.force_exit for s, _ in servers):
            # A second signal while the listeners drain open requests: no more waiting for
            # them. uvicorn forced only on a second SIGINT, but a supervisor that escalates
            # with SIGTERM (systemd, docker stop, a script) waited for a slow client up to
            # http.shutdown-timeout. Not a SIGTERM in a worker of --workers: there it may be
            # a duplicate of the one stop (the parent forwards it on top of systemd's to the
            # whole control group); a second one to the parent ends the workers
            # (workers.Supervisor).
            if signum == signal.SIGINT or (signum == signal.SIGTERM and not several):
                if signum == signal.SIGTERM:
                    log.warning(
                        "SIGTERM while open requests drain: not waiting for them (%d connections)",
                        sum(len(s.server_state.connections) for s, _ in servers),
                    )
                for server, _name in servers:
                    server.force_exit = True
        stop_asked.append(True)
        for server, _name in servers:
            server.should_exit = True
        # The scheduler stops at once, not once the listeners drained (http.shutdown-timeout):
        # its leadership goes to another replica while this one still answers open requests.
        # Through the loop: stop() sets the loop's own event, and this handler may have
        # interrupted the loop anywhere.
        if scheduler is not None and running:
            with contextlib.suppress(RuntimeError):  # the loop closed already: nothing runs
                running[0].call_soon_threadsafe(scheduler.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    # uvloop: its event loop and TLS transport cost about half of asyncio's per request and
    # per handshake (docs/performance.md).
    import uvloop

    try:
        uvloop.run(main())
    finally:  # a stop (SIGTERM, Ctrl-C) or a listener that failed
        checkpoint(services.engine)
