"""A service's outputs (DESIGN §7) and their delivery to its targets."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from sqlalchemy import select

from certctl.errors import InvalidRequest, NotFound
from certctl.pki import (
    CertificateAuthority,
    load_material,
    load_private_key,
    to_pkcs12,
)
from certctl.pki.placeholder import no_client_trust_anchor
from certctl.services.context import Services
from certctl.services.service_ca import per_service_ca_id, retired_cas, with_retired
from certctl.services.service_certificates import served_material
from certctl.services.service_settings import ServiceSettings
from certctl.services.target_policy import TargetPolicy, target_identity
from certctl.services.tls_spec import DirectoryTarget, SecretTarget, TLSServiceSpec, parse_service
from certctl.store.models import ManagedService, ServiceClient
from certctl.targets.kubernetes import SecretValue

__all__ = ["OUTPUTS", "deliver", "outputs_for", "why_no_output"]

log = logging.getLogger("certctl.services")

OUTPUTS = ("ca-internal", "certs-internal", "certs-public", "client-trust")


def _client_trust(services: Services, name: str) -> bytes:
    with services.sessions() as session:
        pems = session.scalars(
            select(ServiceClient.certificate_pem).where(ServiceClient.service == name)
        ).all()
    if not pems:
        # Never an empty file (nginx will not start on one): a placeholder nobody chains to.
        seed = services.wrapper.derive(f"client-trust placeholder:{name}")
        return no_client_trust_anchor(seed, name)
    # Sorted and deduplicated (by content), so the bundle only changes when its set does.
    return "".join(sorted(set(pems))).encode()


def outputs_for(
    services: Services, row: ManagedService, spec: TLSServiceSpec | None = None
) -> dict[str, dict[str, bytes]]:
    """The service's outputs (DESIGN §7) as ``{output: {file name: bytes}}``."""
    spec = spec or parse_service(row.spec, stored=True)
    if spec.disabled or row.certificate_pem is None:
        return {}
    current = served_material(services, row)
    leaf = (current.certificate_pem or "").encode() + current.chain_pem.encode()
    # No ca.crt at all for a custom certificate whose CA is not given (as ECK's public
    # Secret): an empty file is refused by the servers and clients that read it.
    # Those whose overlap is over are left out: the API served them until the next pass.
    retired = [pem for pem, _ in retired_cas(row, services.clock())]
    ca_pem = with_retired(current.ca_pem, retired)
    ca = {"ca.crt": ca_pem.encode()} if ca_pem.strip() else {}
    outputs: dict[str, dict[str, bytes]] = {
        "certs-internal": {"tls.crt": leaf, "tls.key": current.key_pem or b"", **ca},
        "certs-public": {"tls.crt": leaf, **ca},
    }
    service_ca: CertificateAuthority | None = None
    if spec.tls.certificate is None:
        from certctl.services import issuers

        # Missing for a spec just switched from a custom certificate and not reconciled yet:
        # the row still holds that certificate, whose public outputs are still what is
        # served (they answered 404 "issuer svc.<name> not found" meanwhile).
        with contextlib.suppress(NotFound):
            service_ca = issuers.load_issuer(services, per_service_ca_id(spec.name))
    if service_ca is not None:
        outputs["ca-internal"] = {
            "ca.crt": service_ca.root_pem,
            "ca.key": service_ca.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        }
    if spec.tls.client.authentication:
        outputs["client-trust"] = {"ca.crt": _client_trust(services, spec.name)}
    return outputs


def why_no_output(row: ManagedService, output: str) -> str:
    """Why ``outputs_for`` holds no ``output`` for the service, in the words of its 404.

    A plain "(yet)" had a user wait for an output that the spec never produces.
    """
    spec = parse_service(row.spec, stored=True)
    head = f"service {spec.name} has no {output} output"
    if spec.disabled:
        return f"{head}: its TLS is disabled (spec.http.tls.selfSignedCertificate.disabled)"
    if output == "client-trust" and not spec.tls.client.authentication:
        return f"{head}: its client authentication is off (spec.http.tls.client.authentication)"
    if row.certificate_pem is None:
        from certctl.services.service_status import stored_condition

        # A pass that ran and failed (a custom certificate's secret missing): "waiting for
        # the first pass" had a user wait for one that had come and gone.
        failed = stored_condition(row.conditions, "Failed")
        if failed.get("status"):
            return f"{head} yet: its last reconcile pass failed: {failed.get('message') or '?'}"
        return f"{head} yet: waiting for the first reconcile pass"
    return f"{head} (yet)"


def _target_key(target: DirectoryTarget | SecretTarget) -> str:
    if isinstance(target, DirectoryTarget):
        return f"dir:{target.directory}"
    if target.namespace is None:
        return f"secret:{target.secret}"  # in kubernetes.namespace
    return f"secret:{target.namespace}/{target.secret}"


def _target_files(
    target: DirectoryTarget | SecretTarget, bundle: dict[str, dict[str, bytes]]
) -> dict[str, tuple[bytes, bool]]:
    internal = bundle.get("certs-internal")
    if internal is None:
        return {}
    files = {
        "tls.crt": (internal["tls.crt"], False),
        "tls.key": (internal["tls.key"], True),
    }
    if "ca.crt" in internal:
        files["ca.crt"] = (internal["ca.crt"], False)
    if "client-trust" in bundle:
        files["client-trust.crt"] = (bundle["client-trust"]["ca.crt"], False)
    return files


def deliver(
    services: Services,
    settings: ServiceSettings,
    row: ManagedService,
    spec: TLSServiceSpec,
    bundle: dict[str, dict[str, bytes]],
    warnings: list[str],
) -> list[str]:
    """Deliver ``bundle`` to every target; return the failures, append to ``warnings``."""
    from certctl.metrics.registry import DELIVERIES
    from certctl.pki.formats import pkcs12_password_warning
    from certctl.targets.directory import (
        BundleFile,
        DeliveryError,
        deliver_to_directory,
        directory_intact,
        remove_directory_target,
        run_reload,
    )

    failures: list[str] = []
    # Only the spec's targets: one taken out of it is no longer kept current, so listing it
    # (with a digest that soon no longer matches the service) would say otherwise.
    keys = {_target_key(t) for t in spec.spec.targets}
    delivered = {k: v for k, v in row.delivered.items() if k in keys}
    for target in spec.spec.targets:
        key = _target_key(target)
        files = _target_files(target, bundle)
        try:
            if isinstance(target, DirectoryTarget) and settings.target_policy is not None:
                problem = settings.target_policy.delivery_problem(target)
                if problem is not None:
                    raise DeliveryError(problem)
            password = None
            if isinstance(target, DirectoryTarget) and target.format == "pkcs12" and files:
                assert target.password_file is not None
                password = _read_password(target.password_file, settings.target_policy)
            elif isinstance(target, SecretTarget) and target.pkcs12 is not None and files:
                password = _secret_password(target, settings)
            if password is not None:
                # Delivered all the same (OpenSSL reads it), but the Java services this
                # format is for answer "keystore password was incorrect": say so in the
                # status, as cert issue --p12 warns.
                java = pkcs12_password_warning(password)
                if java is not None:
                    warnings.append(f"{key}: {java}")
            digest = _delivery_digest(services, target, files, password)
            already = delivered.get(key) == digest
            if (
                already
                and isinstance(target, DirectoryTarget)
                and directory_intact(target.directory, _expected_files(target, files))
            ):
                continue
            if isinstance(target, DirectoryTarget):
                policy = settings.target_policy
                # Judged on the parent as opened, so nothing swapped in after the check
                # changes where the files go (or which are removed).
                check = (
                    None
                    if policy is None
                    else partial(policy.resolved_problem, target.directory, what="directory")
                )
                keeps = partial(_still_delivers_to, services)
                if not files:
                    remove_directory_target(
                        target.directory, check=check, service=spec.name, keeps=keeps
                    )
                else:
                    if password is not None:
                        entry = _KeyEntry.of(spec.name, files)
                        files = {
                            "tls.p12": (entry.pkcs12(password), True),
                            **{n: files[n] for n in ("ca.crt", "client-trust.crt") if n in files},
                        }
                    deliver_to_directory(
                        target.directory,
                        {n: BundleFile(d, s) for n, (d, s) in files.items()},
                        owner=target.owner,
                        group=target.group,
                        check=check,
                        service=spec.name,
                        keeps=keeps,
                    )
                if target.reload:
                    from certctl.pki import parse_duration

                    runner = settings.reload_runner or run_reload
                    runner(target.reload, parse_duration(target.reload_timeout).total_seconds())
            else:
                if not files:
                    # TLS disabled: the Secret keeps what it holds (certctl is not allowed to
                    # delete Secrets, and a pod may still mount it). Said in the status; it
                    # was a Failed service, alerting and retried for good, for a choice made.
                    warnings.append(
                        f"{key}: TLS disabled; the Secret keeps the last certificate "
                        "delivered (delete it when no pod mounts it)"
                    )
                    delivered.pop(key, None)
                    continue
                if settings.secret_writer is None:
                    raise DeliveryError("Kubernetes Secret targets need auth.kubernetes set up")
                # Written even when this bundle was delivered before: the writer reads the
                # Secret and changes it only if it differs, so one deleted or edited by hand
                # (or with changed labels) is restored at the next reconcile or resync.
                data: dict[str, SecretValue] = {n: d for n, (d, _) in files.items()}
                if password is not None:
                    data.update(_KeyEntry.of(spec.name, files).secret_keystores(password))
                changed = settings.secret_writer(target, data)
                if already:
                    if not changed:
                        continue
                    log.warning(
                        "service %s: %s was deleted or changed outside certctl; restored",
                        spec.name,
                        key,
                    )
            delivered[key] = digest
            DELIVERIES.labels("success").inc()
        except (DeliveryError, InvalidRequest, OSError) as exc:
            DELIVERIES.labels("error").inc()
            detail = exc.detail if isinstance(exc, DeliveryError | InvalidRequest) else str(exc)
            failures.append(f"{key}: {detail}")
            log.error("service %s: delivery to %s failed: %s", spec.name, key, detail)
    row.delivered = delivered
    return failures


_MAX_PASSWORD_BYTES = 4096


def _still_delivers_to(services: Services, name: str, real: Path) -> bool:
    """Whether service ``name`` exists and has a directory target at ``real`` (resolved).

    Asked only when a target's files were claimed by another service: one deleted or aimed
    elsewhere since gives them up; a spec that no longer parses keeps them (not judged).
    """
    with services.sessions() as session:
        row = session.get(ManagedService, name)
    if row is None:
        return False
    try:
        targets = parse_service(row.spec, stored=True).spec.targets
    except InvalidRequest:
        return True
    return any(
        target_identity(t) == ("dir", None, str(real))
        for t in targets
        if isinstance(t, DirectoryTarget)
    )


def _read_password(path: Path, policy: TargetPolicy | None) -> bytes:
    """A PKCS#12 password file: a regular file of at most 4 KiB, one line, newline dropped.

    A FIFO would block the reconciler and /dev/zero fill its memory; both are refused.
    A file of more lines is refused as the CLI refuses it (openssl and keytool read the
    first line only, so a keystore written with every line did not open in them).

    Raises:
        DeliveryError: not a regular file, too large, or unreadable.
        InvalidRequest: empty, more than one line, or not UTF-8.
    """
    import stat

    from certctl.pki.formats import password_file_line
    from certctl.targets.directory import DeliveryError, opened_path

    # Located first (O_PATH: nothing is opened for reading), judged, and only then opened:
    # opening a device can act by itself (/dev/watchdog starts a timer that reboots the
    # host, a tape rewinds), so a path swapped for a link after the policy's check must not
    # get that far.
    where = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        real = opened_path(where, path)
        if policy is not None:
            # The file as located, not the path as checked a moment ago.
            problem = policy.resolved_problem(path, real, "passwordFile")
            if problem is not None:
                raise DeliveryError(problem)
        located = os.fstat(where)
        if not stat.S_ISREG(located.st_mode):
            raise DeliveryError(f"passwordFile {path} is not a regular file")
        try:
            fd = os.open(f"/proc/self/fd/{where}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            # No /proc (some containers): the real path, checked again to be the same file.
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (located.st_dev, located.st_ino):
                raise DeliveryError(f"passwordFile {path} changed while it was being read")
            data = os.read(fd, _MAX_PASSWORD_BYTES + 1)
        finally:
            os.close(fd)
    finally:
        os.close(where)
    if len(data) > _MAX_PASSWORD_BYTES:
        raise DeliveryError(f"passwordFile {path} is larger than 4 KiB")
    password = password_file_line(data, f"passwordFile {path}")
    if not password:
        # As the CLI refuses an empty password file: most often a Secret not filled in yet,
        # and a keystore under the empty password is readable by anyone who gets the file.
        raise InvalidRequest(f"passwordFile {path} is empty; put the password on one line")
    return _utf8_password(password, f"passwordFile {path}")


def _utf8_password(password: bytes, where: str) -> bytes:
    """``password`` if it is UTF-8, as PKCS#12 needs (cryptography raises ValueError).

    Raises:
        InvalidRequest: it is not (``openssl rand 24 > pw``), in the CLI's words.
    """
    try:
        password.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{where}: the password is not valid UTF-8") from None
    return password


@dataclass(frozen=True)
class _KeyEntry:
    """What a PKCS#12 target's keystore holds: the key entry and the CA as trusted entries."""

    name: str
    key: CertificateIssuerPrivateKeyTypes
    certificates: Sequence[x509.Certificate]  # the leaf, then its chain
    # Empty for a custom certificate from an unnamed (public) CA.
    anchors: Sequence[x509.Certificate]

    @classmethod
    def of(cls, name: str, files: dict[str, tuple[bytes, bool]]) -> _KeyEntry:
        ca_pem = files["ca.crt"][0] if "ca.crt" in files else b""
        return cls(
            name,
            load_private_key(files["tls.key"][0]),
            load_material(files["tls.crt"][0]).certificates,
            load_material(ca_pem).certificates if ca_pem else [],
        )

    def pkcs12(self, password: bytes) -> bytes:
        # The CA as a Java trusted entry ("ca"), as cert issue --p12 and
        # elasticsearch-certutil write it: Java also builds the key entry's chain from it,
        # and a truststore.path needs one.
        leaf, *chain = self.certificates
        return to_pkcs12(self.name, self.key, leaf, chain, password, trusted=self.anchors)

    def secret_keystores(self, password: bytes) -> dict[str, SecretValue]:
        """cert-manager's ``keystore.p12`` and (with a CA) ``truststore.p12``.

        Each is the Secret's current one when that still opens with ``password`` and holds
        exactly these entries, else written anew: built at every resync, a keystore (random
        salt and IV) differed from the last, and the Secret and every pod mounting it
        changed for nothing.
        """
        from certctl.pki.formats import pkcs12_holds, to_pkcs12_truststore

        leaf, *chain = self.certificates

        def keystore(current: bytes | None) -> bytes:
            if current is not None and pkcs12_holds(
                current,
                password,
                name=self.name,
                key=self.key,
                certificate=leaf,
                others=[*chain, *self.anchors],
            ):
                return current
            return self.pkcs12(password)

        values: dict[str, SecretValue] = {"keystore.p12": keystore}
        if self.anchors:

            def truststore(current: bytes | None) -> bytes:
                if current is not None and pkcs12_holds(current, password, others=self.anchors):
                    return current
                return to_pkcs12_truststore(self.anchors, password)

            values["truststore.p12"] = truststore
        return values


def _secret_password(target: SecretTarget, settings: ServiceSettings) -> bytes:
    """A Secret target's ``keystores.pkcs12.passwordSecretRef`` value, as a passwordFile's.

    Raises:
        DeliveryError: no Kubernetes connection, or the API unreachable.
        InvalidRequest: the Secret is absent, not labelled, or its value empty, of more
            than one line or not UTF-8.
    """
    from certctl.pki.formats import password_file_line
    from certctl.targets.directory import DeliveryError

    p12 = target.pkcs12
    assert p12 is not None
    assert p12.password_secret_ref is not None
    ref = p12.password_secret_ref
    if settings.keystore_password_reader is None:
        raise DeliveryError("Kubernetes Secret targets need auth.kubernetes set up")
    raw = settings.keystore_password_reader(target.namespace, ref.name, ref.key)
    where = f"keystore password {ref.name}/{ref.key}"
    # One line, final newline dropped, as a passwordFile: `kubectl create secret generic
    # --from-file` keeps the newline `echo pw > f` wrote, which keytool's -storepass lacks.
    password = password_file_line(raw, where)
    if not password:
        # As cert-manager refuses it: a keystore under the empty password is no protection.
        raise InvalidRequest(f"{where} is empty; put the password there")
    return _utf8_password(password, where)


def _delivery_digest(
    services: Services,
    target: DirectoryTarget | SecretTarget,
    files: dict[str, tuple[bytes, bool]],
    password: bytes | None,
) -> str:
    """What was delivered: the bundle and every setting that changes the files on disk.

    The PKCS#12 password enters as an HMAC under a key derived from the KEK: a plain hash
    of a short password, stored in the database, could be reversed by guessing.
    """
    digest = hashlib.sha256(b"".join(n.encode() + d for n, (d, _) in sorted(files.items())))
    if (
        isinstance(target, DirectoryTarget)
        and files
        # Left out for plain PEM targets: digests stored before settings counted stay equal,
        # so an upgrade does not redeliver (and reload) every service once.
        and (target.format, target.owner, target.group) != ("pem", None, None)
    ):
        settings = f"{target.format}\0{target.owner}\0{target.group}".encode()
        if target.group is not None:
            # Key files given to a group became 0640 (they were 0600, closed to that group):
            # a new digest delivers them again once, so targets written before get the mode.
            settings += b"\0key-mode 0640"
        if password is not None:
            secret = services.wrapper.derive("delivery digest: pkcs12 password")
            settings += b"\0" + hmac.new(secret, password, hashlib.sha256).digest()
        digest.update(b"\0settings\0" + settings)
    elif isinstance(target, SecretTarget) and password is not None:
        # The inputs of the keystores, never their bytes (random salt and IV each time they
        # are written). PEM-only Secret targets add nothing: their digests stay as stored.
        secret = services.wrapper.derive("delivery digest: pkcs12 password")
        keyed = hmac.new(secret, password, hashlib.sha256).digest()
        digest.update(b"\0settings\0keystores.pkcs12\0" + keyed)
    return digest.hexdigest()


def _expected_files(
    target: DirectoryTarget, files: dict[str, tuple[bytes, bool]]
) -> dict[str, bytes | None]:
    # A PKCS#12 file differs at each write (random salt and IV): only its presence counts.
    if not files:
        return {}
    expected: dict[str, bytes | None] = {n: d for n, (d, _) in files.items()}
    if target.format == "pkcs12":
        expected = {n: d for n, d in expected.items() if n in ("ca.crt", "client-trust.crt")}
        expected["tls.p12"] = None
    return expected
