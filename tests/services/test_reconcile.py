"""Reconciling managed services with an injected clock: issue, outputs, renew, CA rollover."""

from __future__ import annotations

import ipaddress
import itertools
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from certctl.errors import NotFound
from certctl.pki import (
    PROFILES,
    SubjectAltNames,
    VerificationFailed,
    certs_to_pem,
    common_name_dn,
    format_serial,
    generate_private_key,
    keys_match,
    load_private_key,
    verify_certificate,
)
from certctl.pki.placeholder import PLACEHOLDER_CN_PREFIX
from certctl.services import (
    issuers,
    service_ca,
    service_clients,
    service_reconcile,
    service_schedule,
    service_specs,
    service_status,
)
from certctl.store.models import ManagedService
from tests._tools import ok, run
from tests.services.conftest import (
    SETTINGS,
    Env,
    make_ca,
    make_leaf,
    service_doc,
    write_secret,
)

ROTATE = SETTINGS["cert_rotate_before"]
JITTER = ROTATE * 0.1  # ServiceSettings.jitter = 10 %
MINUTE = timedelta(minutes=1)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem)[0]


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [
        str(a) for a in ext.get_values_for_type(x509.IPAddress)
    ]


def _ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def test_first_reconcile_issues_service_ca_and_leaf(any_env: Env) -> None:
    env = any_env
    env.put(service_doc("web", dns=("web.example.internal",), ip=("10.0.0.5",)))
    row = env.reconcile("web")
    conditions = row.conditions
    assert conditions["Ready"]["status"] is True, conditions
    assert conditions["Failed"]["status"] is False
    assert row.reconciled_generation == row.generation == 1

    outputs = env.outputs("web")
    assert set(outputs) == {"ca-internal", "certs-internal", "certs-public"}  # no client auth
    assert set(outputs["ca-internal"]) == {"ca.crt", "ca.key"}
    assert set(outputs["certs-internal"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert set(outputs["certs-public"]) == {"tls.crt", "ca.crt"}  # never the key

    ca = _cert(outputs["ca-internal"]["ca.crt"])
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web-http"
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "web"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert keys_match(load_private_key(outputs["ca-internal"]["ca.key"]), ca)
    assert outputs["certs-internal"]["ca.crt"] == outputs["ca-internal"]["ca.crt"]
    assert outputs["certs-public"]["ca.crt"] == outputs["ca-internal"]["ca.crt"]

    leaf = _cert(outputs["certs-internal"]["tls.crt"])
    assert outputs["certs-public"]["tls.crt"] == outputs["certs-internal"]["tls.crt"]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web"
    assert _sans(leaf) == (["web", "web.example.internal"], ["10.0.0.5"])
    assert keys_match(load_private_key(outputs["certs-internal"]["tls.key"]), leaf)
    assert leaf.not_valid_after_utc == env.now + SETTINGS["cert_validity"]
    assert row.not_after == leaf.not_valid_after_utc
    for name in ("web.example.internal", "10.0.0.5", "web"):
        verify_certificate(leaf, trust=[ca], hostname=name, now=env.now)
    # Negative twins: another CA, a name not asked for.
    with pytest.raises(VerificationFailed):
        verify_certificate(leaf, trust=[make_ca("other", env.now).certificate], now=env.now)
    with pytest.raises(VerificationFailed):
        verify_certificate(leaf, trust=[ca], hostname="other.example.internal", now=env.now)

    assert [(e.event, e.payload["serial"]) for e in env.events("web")] == [("issued", row.serial)]
    # A second reconcile with nothing due changes nothing.
    again = env.reconcile("web", env.now + MINUTE)
    assert again.serial == row.serial
    assert env.outputs("web") == outputs
    assert [e.event for e in env.events("web")] == ["issued"]


def test_a_missing_output_answers_why(env: Env) -> None:
    # Before: "service api has no client-trust output (yet)" whatever the cause, and the
    # "(yet)" had a user wait for an output that its spec never produces.
    from tests.api.conftest import assert_problem

    env.put(service_doc("api"))
    env.put(service_doc("off", disabled=True))
    with env.client() as client:
        pending = assert_problem(client.get("/api/v1/services/api/outputs/certs-public"), 404)
        assert pending["detail"] == (
            "service api has no certs-public output yet: waiting for the first reconcile pass"
        )
        env.reconcile("api")
        env.reconcile("off")
        trust = assert_problem(client.get("/api/v1/services/api/outputs/client-trust"), 404)
        assert trust["detail"] == (
            "service api has no client-trust output: its client authentication is off "
            "(spec.http.tls.client.authentication)"
        )
        off = assert_problem(client.get("/api/v1/services/off/outputs/certs-public"), 404)
        assert off["detail"] == (
            "service off has no certs-public output: its TLS is disabled "
            "(spec.http.tls.selfSignedCertificate.disabled)"
        )
        assert client.get("/api/v1/services/api/outputs/certs-public").status_code == 200


def test_an_output_of_a_service_whose_first_pass_failed_says_so(env: Env) -> None:
    # Before: "... yet: waiting for the first reconcile pass" after that pass had run and
    # failed (here: the custom certificate's secret is missing), every pass since.
    from tests.api.conftest import assert_problem

    env.put(service_doc("web", secret="nosuch"))
    row = env.reconcile("web")
    assert row.certificate_pem is None
    failed = row.conditions["Failed"]
    assert failed["status"] is True
    assert failed["message"].startswith("secret nosuch not found"), failed
    with env.client() as client:
        answer = assert_problem(client.get("/api/v1/services/web/outputs/certs-public"), 404)
    assert answer["detail"] == (
        f"service web has no certs-public output yet: its last reconcile pass failed: "
        f"{failed['message']}"
    )


def test_client_trust_output_only_with_client_authentication(env: Env) -> None:
    env.put(service_doc("api", client_auth=True))
    env.reconcile("api")
    # No client yet: a placeholder anchor (never an empty file), stable across reconciles.
    placeholder = env.outputs("api")["client-trust"]["ca.crt"]
    (anchor,) = x509.load_pem_x509_certificates(placeholder)
    assert anchor.subject.rfc4514_string() == f"CN={PLACEHOLDER_CN_PREFIX} (api)"
    env.reconcile("api", env.now + MINUTE)
    assert env.outputs("api")["client-trust"]["ca.crt"] == placeholder
    one, two = make_ca("client-ca-1", env.now), make_ca("client-ca-2", env.now)
    # Registered out of order and one twice: the bundle is sorted and deduplicated.
    added = service_clients.add_client(env.services, env.admin, "api", (two.cert_pem).decode())
    added += service_clients.add_client(
        env.services, env.admin, "api", (one.cert_pem + two.cert_pem).decode()
    )
    bundle = env.outputs("api")["client-trust"]["ca.crt"]
    assert bundle == b"".join(sorted([one.cert_pem, two.cert_pem]))
    assert len(x509.load_pem_x509_certificates(bundle)) == 2
    # Anything but certificates is refused.
    from certctl.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="private key"):
        service_clients.add_client(env.services, env.admin, "api", one.key_pem.decode())
    # A client certificate with its CA (a fullchain.pem) is refused whole: trusting the CA
    # would let in everything it issued. Each alone is fine.
    alice = make_leaf(one, "alice", env.now)
    before = env.outputs("api")["client-trust"]["ca.crt"]
    with pytest.raises(InvalidRequest, match="holds client certificates and CA certificates"):
        service_clients.add_client(
            env.services, env.admin, "api", (alice.cert_pem + one.cert_pem).decode()
        )
    assert env.outputs("api")["client-trust"]["ca.crt"] == before
    # Every client removed: the placeholder again.
    for fingerprint in {c.fingerprint for c in added}:
        service_clients.remove_client(env.services, env.admin, "api", fingerprint)
    assert env.outputs("api")["client-trust"]["ca.crt"] == placeholder
    # Turned off: no client-trust output at all.
    env.put(service_doc("api"))
    env.reconcile("api", env.now + MINUTE)
    assert "client-trust" not in env.outputs("api")


def test_a_short_cert_validity_is_no_renewal_advice_in_the_status(env: Env) -> None:
    # cert-validity 2h (SETTINGS): certctl renews it; "plan its renewal" told the user to.
    env.put(service_doc("web"))
    row = env.reconcile("web")
    assert row.conditions["Ready"]["message"] == "serving", row.conditions
    service_specs.request_renewal(env.services, env.admin, "web")
    row = env.reconcile("web", env.now + MINUTE)
    assert env.events("web")[-1].event == "renewed"
    assert row.conditions["Ready"]["message"] == "serving", row.conditions


def test_leaf_reissued_after_rotate_before_not_earlier(env: Env) -> None:
    t0 = env.now
    env.put(service_doc("web"))
    first = env.reconcile("web")
    not_after = first.not_after
    assert not_after is not None
    assert first.renew_at is not None
    # Renewal is cert-rotate-before ahead, pulled earlier by at most 10 % jitter.
    assert not_after - ROTATE - JITTER <= first.renew_at <= not_after - ROTATE
    assert (
        service_status.service_json(first)["status"]["next_renewal"] == first.renew_at.isoformat()
    )

    # Just before the earliest jittered time: not due, not reissued.
    early = not_after - ROTATE - JITTER - timedelta(seconds=1)
    assert not service_schedule.due(env.row("web"), early)
    assert env.reconcile("web", early).serial == first.serial
    # Just before its own renewal time: still not.
    before = first.renew_at - timedelta(seconds=1)
    assert not service_schedule.due(env.row("web"), before)
    assert env.reconcile("web", before).serial == first.serial
    # Past NotAfter - cert-rotate-before: due, reissued whatever the jitter.
    late = not_after - ROTATE + timedelta(seconds=1)
    assert service_schedule.due(env.row("web"), late)
    second = env.reconcile("web", late)
    assert second.serial != first.serial
    assert second.not_after == late + SETTINGS["cert_validity"]
    assert not service_schedule.due(env.row("web"), late + MINUTE)
    assert [e.event for e in env.events("web")] == ["issued", "renewed"]
    renewed = env.events("web")[-1].payload
    assert renewed["serial"] == second.serial
    assert renewed["reason"] == "due for renewal"
    assert late - t0 > timedelta(hours=1)


def test_a_raised_cert_rotate_before_applies_to_certificates_issued_before(
    env: Env, tmp_path: Path
) -> None:
    # An administrator raises cert-rotate-before (30m to 90m here; 24h to 720h in life):
    # certificates already issued are renewed by the new margin, as ECK judges each
    # certificate by the current one at every pass. They kept the renewal time of their
    # issue, and the service sent "expiring" for a certificate nothing renewed.
    target = tmp_path / "out" / "web"
    env.put(service_doc("web", targets=[{"directory": str(target)}]))
    first = env.reconcile("web")
    assert first.not_after is not None
    assert first.renew_at is not None
    wider = {"cert_rotate_before": timedelta(minutes=90)}

    # Not yet inside the new margin: kept, its next renewal brought forward to it.
    outside = first.not_after - timedelta(minutes=100)
    kept = env.reconcile("web", outside, **wider)
    assert kept.serial == first.serial
    assert kept.renew_at is not None
    assert (
        first.not_after - timedelta(minutes=99)
        <= kept.renew_at
        <= first.not_after - timedelta(minutes=90)
    )
    assert service_schedule.due(env.row("web"), kept.renew_at)

    # Inside it: renewed, delivered, and no "expiring" for the certificate replaced.
    inside = first.not_after - timedelta(minutes=60)
    renewed = env.reconcile("web", inside, **wider)
    assert renewed.serial != first.serial
    assert renewed.conditions["Ready"]["status"] is True, renewed.conditions
    served = _cert((target / "tls.crt").read_bytes())
    assert served.serial_number == int(renewed.serial, 16)
    assert served.not_valid_after_utc - inside > timedelta(minutes=90)
    events = env.events("web")
    assert [e.event for e in events] == ["issued", "renewed"]
    assert events[-1].payload["reason"] == "due for renewal"
    # And the new certificate is not renewed again at the next pass.
    assert env.reconcile("web", inside + MINUTE, **wider).serial == renewed.serial


def test_a_lifetime_just_over_the_margin_is_not_reissued_at_every_pass(env: Env) -> None:
    # cert-validity 25h, cert-rotate-before 24h: accepted, and a 10 % jitter (up to 2h24m)
    # put most renewals before the issue: those certificates were reissued, reloaded and
    # announced "renewed" at every pass. The jitter now stays within the hour left.
    short = {
        "cert_validity": timedelta(hours=25),
        "cert_rotate_before": timedelta(hours=24),
        "ca_validity": timedelta(days=30),
        "ca_rotate_before": timedelta(hours=24),
    }
    names = [f"svc-{i}" for i in range(12)]
    for name in names:
        env.put(service_doc(name))
    t0 = env.now
    first = {name: env.reconcile(name, t0, **short) for name in names}
    for step in range(1, 4):
        for name in names:
            row = env.reconcile(name, t0 + step * 10 * timedelta(seconds=1), **short)
            assert row.serial == first[name].serial, (name, step)
    for name, row in first.items():
        assert row.not_after is not None
        assert row.renew_at is not None
        assert row.not_after - timedelta(hours=24, minutes=30) <= row.renew_at
        assert row.renew_at <= row.not_after - timedelta(hours=24)
        assert [e.event for e in env.events(name)] == ["issued"]
    # Still renewed once its margin is reached, and then not again.
    last = max(row.not_after for row in first.values() if row.not_after is not None)
    late = last - timedelta(hours=24) + MINUTE
    renewed = {name: env.reconcile(name, late, **short).serial for name in names}
    assert all(renewed[name] != first[name].serial for name in names)
    for name in names:
        assert (
            env.reconcile(name, late + 10 * timedelta(seconds=1), **short).serial == renewed[name]
        )


def test_jitter_spreads_renewals_within_ten_percent(env: Env) -> None:
    renew_offsets = set()
    for i in range(8):
        env.put(service_doc(f"svc-{i}"))
        row = env.reconcile(f"svc-{i}")
        assert row.not_after is not None
        assert row.renew_at is not None
        offset = row.not_after - row.renew_at
        assert ROTATE <= offset <= ROTATE + JITTER
        renew_offsets.add(offset)
    assert len(renew_offsets) > 1  # not all at the same instant


def test_ca_renewed_ahead_with_same_key_and_ski_both_ways_trusted(
    any_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env = any_env
    t0 = env.now
    env.put(service_doc("web", dns=("web.example.internal",)))
    env.reconcile("web")
    old_ca = _cert(env.outputs("web")["ca-internal"]["ca.crt"])
    ca_not_after = old_ca.not_valid_after_utc
    ca_renew_at = ca_not_after - SETTINGS["ca_rotate_before"]
    assert env.row("web").ca_renew_at == ca_renew_at

    # Leaves keep rolling under the old CA; one issued 6 h in is valid across the CA renewal.
    row = env.reconcile("web", t0 + timedelta(hours=6))
    assert row.not_after is not None
    assert row.not_after > ca_renew_at + MINUTE
    old_leaf = _cert(env.outputs("web")["certs-internal"]["tls.crt"])
    assert _cert(env.outputs("web")["ca-internal"]["ca.crt"]) == old_ca

    # One second before ca-cert-rotate-before: the CA stays.
    assert not service_schedule.due(env.row("web"), ca_renew_at - timedelta(seconds=1))
    env.reconcile("web", ca_renew_at - timedelta(seconds=1))
    assert _cert(env.outputs("web")["ca-internal"]["ca.crt"]) == old_ca

    # Past it: renewed with the same key, subject and SKI; the leaf is not reissued.
    when = ca_renew_at + MINUTE
    assert service_schedule.due(env.row("web"), when)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="certctl.services"):
        row = env.reconcile("web", when)
    # The log says what happened: no certificate was issued (it said "certificate issued").
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("service web:")]
    assert said == [
        f"service web: renewed CA certificate delivered, certificate {row.serial} kept (CA renewed)"
    ]
    outputs = env.outputs("web")
    new_ca = _cert(outputs["ca-internal"]["ca.crt"])
    assert new_ca != old_ca
    assert new_ca.serial_number != old_ca.serial_number
    assert new_ca.not_valid_after_utc == when + SETTINGS["ca_validity"]
    assert new_ca.subject == old_ca.subject
    assert new_ca.public_key() == old_ca.public_key()
    assert _ski(new_ca) == _ski(old_ca)
    assert outputs["certs-internal"]["ca.crt"] == outputs["ca-internal"]["ca.crt"]
    assert _cert(outputs["certs-internal"]["tls.crt"]) == old_leaf
    assert row.ca_renew_at == new_ca.not_valid_after_utc - SETTINGS["ca_rotate_before"]
    assert not service_schedule.due(env.row("web"), when + MINUTE)
    # The old leaf verifies against the new CA certificate.
    verify_certificate(old_leaf, trust=[new_ca], now=when)

    # The next leaf comes from the new CA certificate and verifies against the old one.
    later = (row.renew_at or when) + MINUTE
    assert later < ca_not_after
    env.reconcile("web", later)
    new_leaf = _cert(env.outputs("web")["certs-internal"]["tls.crt"])
    assert new_leaf != old_leaf
    verify_certificate(new_leaf, trust=[old_ca], now=later)
    verify_certificate(new_leaf, trust=[new_ca], now=later)
    # Negative twin: a CA with the same name but another key trusts neither.
    impostor = make_ca("web-http", later).certificate
    for leaf in (old_leaf, new_leaf):
        with pytest.raises(VerificationFailed):
            verify_certificate(leaf, trust=[impostor], now=later)


def test_changed_sans_reissue(env: Env) -> None:
    env.put(service_doc("web", dns=("a.example.internal",)))
    first = env.reconcile("web")
    doc = service_doc("web", dns=("a.example.internal", "b.example.internal"), ip=("10.1.2.3",))
    assert env.put(doc).generation == 2
    assert service_schedule.due(env.row("web"), env.now)
    second = env.reconcile("web", env.now + MINUTE)
    assert second.serial != first.serial
    leaf = _cert(env.outputs("web")["certs-internal"]["tls.crt"])
    assert _sans(leaf) == (["web", "a.example.internal", "b.example.internal"], ["10.1.2.3"])
    assert env.events("web")[-1].payload["reason"] == "subject alternative names changed"
    # Putting the same document again is no change: no new generation, nothing reissued.
    assert env.put(doc).generation == 2
    assert env.reconcile("web", env.now + MINUTE).serial == second.serial
    # The same names in another order: a new generation, but the same certificate (it used
    # to be reissued, delivered and reloaded).
    reordered = service_doc(
        "web", dns=("b.example.internal", "a.example.internal"), ip=("10.1.2.3",)
    )
    assert env.put(reordered).generation == 3
    assert env.reconcile("web", env.now + MINUTE).serial == second.serial
    # One name less: reissued.
    env.put(service_doc("web", dns=("b.example.internal",), ip=("10.1.2.3",)))
    assert env.reconcile("web", env.now + MINUTE).serial != second.serial


def test_an_ipv4_mapped_address_is_issued_as_the_ipv4_address_clients_match(
    env: Env, tmp_path: Path
) -> None:
    # ECK writes ::ffff:10.0.0.5 as 10.0.0.5; issued as a 16-byte SAN, it matched no client
    # connecting to 10.0.0.5 (openssl: "IP address mismatch").
    env.put(service_doc("web", ip=("::ffff:10.0.0.5", "fd00::5")))
    assert env.row("web").spec["spec"]["http"]["tls"]["selfSignedCertificate"][
        "subjectAltNames"
    ] == [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]
    env.reconcile("web", datetime.now(UTC))
    internal = env.outputs("web")["certs-internal"]
    assert _sans(_cert(internal["tls.crt"]))[1] == ["10.0.0.5", "fd00::5"]
    (tmp_path / "tls.crt").write_bytes(internal["tls.crt"])
    (tmp_path / "ca.crt").write_bytes(internal["ca.crt"])
    for address in ("10.0.0.5", "fd00::5"):
        ok(run("openssl", "verify", "-CAfile", tmp_path / "ca.crt", "-verify_ip", address,
               tmp_path / "tls.crt"))  # fmt: skip
    # Stored before: the mapped form in the spec and in the certificate, issued by the
    # service CA. Reissued once, for the address clients match.
    ca = issuers.load_issuer(env.services, "svc.web")
    old = ca.issue(
        generate_private_key().public_key(),
        common_name_dn("web"),
        profile=PROFILES["server"],
        validity=timedelta(hours=1),
        now=env.now,
        # Built directly: parse() itself now writes the IPv4 form.
        sans=SubjectAltNames(dns=("web",), ip=(ipaddress.ip_address("::ffff:10.0.0.5"),)),
    )
    assert _sans(old.certificate)[1] == ["::ffff:a00:5"]
    with env.services.sessions.begin() as session:
        row = session.get(ManagedService, "web")
        assert row is not None
        row.certificate_pem = certs_to_pem([old.certificate]).decode()
        row.spec = service_doc("web", ip=("::ffff:10.0.0.5",))
    row = env.reconcile("web", env.now + MINUTE)
    assert env.events("web")[-1].payload["reason"] == "subject alternative names changed"
    assert _sans(_cert(env.outputs("web")["certs-internal"]["tls.crt"]))[1] == ["10.0.0.5"]


def test_disabled_removes_certificates_and_reports_plain_http(env: Env) -> None:
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    targets = [{"directory": str(target)}]
    env.put(service_doc("web", targets=targets))
    env.reconcile("web")
    assert (target / "tls.crt").is_file()

    env.put(service_doc("web", disabled=True, targets=targets))
    row = env.reconcile("web", env.now + MINUTE)
    assert env.outputs("web") == {}
    assert row.certificate_pem is None
    assert row.wrapped_key is None
    assert row.serial is None
    assert row.not_after is None
    assert row.renew_at is None
    assert not target.exists()
    assert not target.is_symlink()
    assert row.conditions["Ready"] == {
        "status": True,
        "message": "TLS disabled: plain HTTP",
        "at": env.now.isoformat(),
    }
    status = service_status.service_json(row)["status"]
    assert status["not_after"] is None
    assert status["next_renewal"] is None
    # Only its CA's renewal makes it due while disabled (kept current, as ECK does).
    ca_renew_at = row.ca_renew_at
    assert ca_renew_at is not None
    assert not service_schedule.due(env.row("web"), ca_renew_at - timedelta(seconds=1))

    # A service that starts disabled never issues anything, nor has a CA to renew.
    env.put(service_doc("plain", disabled=True))
    row = env.reconcile("plain")
    assert row.certificate_pem is None
    assert row.ca_renew_at is None
    assert not service_schedule.due(env.row("plain"), env.now + timedelta(days=400))
    assert row.conditions["Ready"]["message"] == "TLS disabled: plain HTTP"
    assert [e.event for e in env.events("plain")] == []

    # Enabled again: a certificate is issued and delivered.
    env.put(service_doc("web", targets=targets))
    assert env.reconcile("web", env.now + MINUTE).certificate_pem is not None
    assert (target / "tls.crt").is_file()


def test_due_semantics(env: Env) -> None:
    row = env.put(service_doc("web"))
    assert service_schedule.due(row, env.now)  # new spec
    row = env.reconcile("web")
    assert row.renew_at is not None
    assert row.ca_renew_at is not None
    assert not service_schedule.due(row, env.now)
    assert not service_schedule.due(row, row.renew_at - timedelta(seconds=1))
    assert service_schedule.due(row, row.renew_at)
    assert row.ca_renew_at > row.renew_at
    env.put(service_doc("web", dns=("x.example.internal",)))
    assert service_schedule.due(env.row("web"), env.now)  # changed spec

    # Forced renewal (POST …/renew): due at once and reissued.
    row = env.reconcile("web", env.now + MINUTE)
    service_specs.request_renewal(env.services, env.admin, "web")
    assert service_schedule.due(env.row("web"), env.now)
    assert env.reconcile("web").serial != row.serial

    # A custom certificate is re-read on every pass (its owner may replace it any time).
    ca = make_ca("custom-ca", env.now)
    leaf = make_leaf(ca, "custom", env.now, dns=("custom",))
    (env.secrets_dir / "custom").mkdir()
    (env.secrets_dir / "custom" / "tls.crt").write_bytes(leaf.cert_pem)
    (env.secrets_dir / "custom" / "tls.key").write_bytes(leaf.key_pem)
    env.put(service_doc("custom", secret="custom"))
    row = env.reconcile("custom")
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert row.renew_at is None
    assert service_schedule.due(row, env.now)


def test_a_renewal_no_pass_can_do_is_refused_or_dropped(env: Env) -> None:
    http = env.client()
    # TLS disabled: nothing to renew. It used to be accepted (202) and stay due for good,
    # reconciled on every pass, its past request shown as the next renewal.
    env.put(service_doc("plain", disabled=True))
    env.reconcile("plain")
    answer = http.post("/api/v1/services/plain/renew")
    assert answer.status_code == 409, answer.text
    assert "has TLS disabled: there is no certificate to renew" in answer.json()["detail"]
    assert not service_schedule.due(env.row("plain"), env.now + MINUTE, resync=timedelta(hours=1))

    # A custom certificate served as is: only its owner renews it; the request is dropped at
    # the next pass instead of showing as the next renewal, in the past, for good.
    ca = make_ca("custom-ca", env.now)
    leaf = make_leaf(ca, "custom", env.now, dns=("custom",))
    (env.secrets_dir / "custom").mkdir()
    (env.secrets_dir / "custom" / "tls.crt").write_bytes(leaf.cert_pem)
    (env.secrets_dir / "custom" / "tls.key").write_bytes(leaf.key_pem)
    env.put(service_doc("custom", secret="custom"))
    serial = env.reconcile("custom").serial
    answer = http.post("/api/v1/services/custom/renew")
    assert answer.status_code == 202
    # Said with the 202, so `services renew` does not just print "renewal requested".
    (warning,) = answer.json()["warnings"]
    assert "a tls.crt + tls.key there is served as it is" in warning
    assert "this request is dropped" in warning
    row = env.reconcile("custom", env.now + MINUTE)
    assert row.serial == serial
    assert service_status.service_json(row)["status"]["next_renewal"] is None

    # A certificate certctl issues is renewed: no warning, and no "warnings" key at all.
    env.put(service_doc("own"))
    env.reconcile("own")
    answer = http.post("/api/v1/services/own/renew")
    assert answer.status_code == 202
    assert "warnings" not in answer.json()


def test_failures_back_off_and_carry_the_message(env: Env) -> None:
    env.put(service_doc("web", secret="missing"))
    now = env.now
    delays = []
    for attempt in range(1, 5):
        row = env.reconcile("web", now)
        assert row.attempts == attempt
        assert row.next_attempt_at is not None
        delays.append(row.next_attempt_at - now)
        failed = row.conditions["Failed"]
        assert failed["status"] is True
        assert "secret missing not found" in failed["message"]
        assert row.conditions["Ready"]["status"] is False
        assert not service_schedule.due(row, row.next_attempt_at - timedelta(seconds=1))
        assert service_schedule.due(row, row.next_attempt_at)
        now = row.next_attempt_at
    assert delays == sorted(delays), delays
    assert len(set(delays)) == 4, delays
    assert delays[0] > timedelta(0)
    failed_events = [e for e in env.events("web") if e.event == "failed"]
    assert len(failed_events) == 1  # when it became Failed, not on each retry
    assert "secret missing not found" in failed_events[0].payload["reason"]

    # Fixed: the next attempt succeeds, the back-off resets, the condition clears.
    ca = make_ca("custom-ca", env.now)
    leaf = make_leaf(ca, "web", env.now)
    (env.secrets_dir / "missing").mkdir()
    (env.secrets_dir / "missing" / "tls.crt").write_bytes(leaf.cert_pem)
    (env.secrets_dir / "missing" / "tls.key").write_bytes(leaf.key_pem)
    row = env.reconcile("web", now)
    assert row.attempts == 0
    assert row.next_attempt_at is None
    assert row.conditions["Failed"] == {"status": False, "message": "", "at": now.isoformat()}
    assert row.conditions["Ready"]["status"] is True
    assert [e.event for e in env.events("web")][-1] == "issued"
    assert service_status.service_json(row)["status"]["conditions"] == row.conditions


def test_the_status_phase_is_pending_until_the_first_pass_then_ready_or_failed(
    env: Env,
) -> None:
    # Before its first pass a service showed Ready, Renewing and Failed all False and no
    # message: read as "broken", not as "not looked at yet".
    env.put(service_doc("web"))
    env.put(service_doc("broken", secret="missing"))
    with env.client() as http:
        dry = http.put("/api/v1/services/new?dry_run=true", json=service_doc("new"))
        assert dry.json()["status"]["phase"] == "Pending", dry.json()
        for name in ("web", "broken"):
            status = http.get(f"/api/v1/services/{name}").json()["status"]
            assert (status["phase"], status["conditions"]) == ("Pending", {})
        env.reconcile("web")
        env.reconcile("broken")
        items = http.get("/api/v1/services").json()["items"]
    assert {item["name"]: item["status"]["phase"] for item in items} == {
        "web": "Ready",
        "broken": "Failed",
    }


def test_outputs_keys_are_pkcs8_pem(env: Env) -> None:
    env.put(service_doc("web"))
    env.reconcile("web")
    outputs = env.outputs("web")
    for data in (outputs["ca-internal"]["ca.key"], outputs["certs-internal"]["tls.key"]):
        assert data.startswith(b"-----BEGIN PRIVATE KEY-----")
        serialization.load_pem_private_key(data, None)
    # The API view never carries key material.
    assert b"PRIVATE KEY" not in repr(service_status.service_json(env.row("web"))).encode()


def test_a_service_whose_reconcile_crashes_is_backed_off(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from certctl.server.scheduler import Scheduler

    env.put(service_doc("web"))
    calls: list[datetime] = []

    def crash(services: object, settings: object, name: str, now: datetime) -> None:
        calls.append(now)
        raise RuntimeError("a bug")

    monkeypatch.setattr(service_reconcile, "reconcile_service", crash)
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    start = env.now
    for seconds in (0, 1, 4):  # inside the first 5 s backoff: tried once
        env.at(start + timedelta(seconds=seconds))
        scheduler.tick()
    env.at(start + timedelta(seconds=6))
    scheduler.tick()  # due again: second failure, next in 10 s
    env.at(start + timedelta(seconds=12))
    scheduler.tick()
    assert calls == [start, start + timedelta(seconds=6)]
    env.at(start + timedelta(seconds=13))
    env.put(service_doc("web", dns=("web.example.internal",)))  # a fix: tried at once
    scheduler.tick()
    assert calls[-1] == start + timedelta(seconds=13)
    assert len(calls) == 3
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2  # the first failure of each spec only; then one line each
    assert any("failed again (RuntimeError: a bug)" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    env.at(start + timedelta(seconds=19))
    assert scheduler.tick() == 1  # fixed: reconciled at the next try, and forgotten
    assert scheduler._crashed == {}


@pytest.mark.parametrize(
    "spec",
    [
        ["not", "a", "mapping"],
        {"apiVersion": "certctl.io/v1", "kind": "TLSService", "spec": ["x"]},
        {"spec": {"http": "x", "targets": []}},
        {"spec": {"http": {"tls": 5}, "targets": []}},
        {"spec": {"http": {"tls": {"certificate": ["own"]}}, "targets": []}},
    ],
    ids=["list", "spec-list", "http-str", "tls-int", "certificate-list"],
)
def test_a_malformed_stored_spec_fails_only_its_service(env: Env, spec: Any) -> None:
    # Edited by hand in the database: the scheduler read it with .get() outside the
    # per-service try, and the AttributeError failed every pass, for every service.
    from certctl.server.scheduler import Scheduler

    env.put(service_doc("bad"))
    env.put(service_doc("good"))
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 2
    with env.services.sessions.begin() as session:
        row = session.get(ManagedService, "bad")
        assert row is not None
        row.spec = spec  # the generation unchanged: as a hand edit leaves it
    env.put(service_doc("good", dns=("good.example.internal",)))  # work to do for the other
    env.at(env.now + MINUTE)
    assert scheduler.tick() == 2
    good = env.row("good")
    assert good.reconciled_generation == good.generation
    assert good.conditions["Failed"]["status"] is False
    failed = env.row("bad").conditions["Failed"]
    assert failed["status"] is True
    assert failed["message"].startswith("stored spec no longer valid: "), failed
    # Backed off as other failures, and still not in the way of the others.
    env.at(env.now + timedelta(seconds=1))
    assert scheduler.tick() == 0
    # Asking for its renewal is no 500 either: it is due, and fails again, backed off.
    renewed = service_specs.request_renewal(env.services, env.admin, "bad")
    assert renewed.renew_at == env.now
    assert scheduler.tick() == 1
    assert env.row("bad").conditions["Failed"]["status"] is True
    env.at(env.now + timedelta(minutes=5))
    env.put(service_doc("good"))
    assert scheduler.tick() == 2


def test_a_stored_spec_that_no_longer_parses_is_a_failed_condition(env: Env) -> None:
    from certctl.store.models import ManagedService

    env.put(service_doc("web"))
    env.reconcile("web")
    with env.services.sessions.begin() as session:  # as rows written before a rule existed
        row = session.get(ManagedService, "web")
        assert row is not None
        spec = dict(row.spec)
        spec["spec"] = {**spec["spec"], "targets": [{"directory": "/srv/tls", "owner": -5}]}
        row.spec = spec
        row.generation += 1
    row = env.reconcile("web", env.now + timedelta(minutes=1))
    failed = row.conditions["Failed"]
    assert failed["status"] is True
    assert failed["message"].startswith("stored spec no longer valid: spec: spec.targets.0.owner")
    assert row.conditions["Ready"]["status"] is True  # the last good certificate still serves


def test_client_changes_reach_the_targets_at_the_next_scheduler_pass(env: Env) -> None:
    from certctl.server.scheduler import Scheduler

    target = env.tmp / "api-tls"
    env.put(service_doc("api", client_auth=True, targets=[{"directory": str(target)}]))
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 1
    placeholder = (target / "client-trust.crt").read_bytes()
    env.at(env.now + MINUTE)
    assert scheduler.tick() == 0  # nothing due: the negative twin of what follows

    client_ca = make_ca("client-ca", env.now)
    (added,) = service_clients.add_client(
        env.services, env.admin, "api", client_ca.cert_pem.decode()
    )
    assert scheduler.tick() == 1  # due at once, not at the next renewal
    assert (target / "client-trust.crt").read_bytes() == client_ca.cert_pem
    assert scheduler.tick() == 0

    service_clients.remove_client(env.services, env.admin, "api", added.fingerprint)
    assert scheduler.tick() == 1  # a removed client stops being trusted now
    assert (target / "client-trust.crt").read_bytes() == placeholder
    assert env.row("api").conditions["Ready"]["status"] is True


def test_the_resync_clock_is_the_last_pass_not_the_condition_times(env: Env) -> None:
    """Conditions keep the time they changed; the scheduler resyncs from its last pass."""
    from certctl.server.scheduler import Scheduler

    env.put(service_doc("web", targets=[{"directory": str(env.tmp / "tls")}]))
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 1
    ready = env.row("web").conditions["Ready"]
    for _ in range(2):
        env.at(env.now + service_schedule.RESYNC_INTERVAL)
        assert scheduler.tick() == 1  # resynced
        env.at(env.now + MINUTE)
        assert scheduler.tick() == 0  # and not again at once, though "at" did not move
    assert env.row("web").conditions["Ready"] == ready
    # A scheduler that has not reconciled the service (a new leader) goes by the conditions'
    # time, the latest a pass left: overdue, so resynced within the interval from its start
    # (spread, see test_a_new_leader_spreads_...), and not only at its renewal.
    leader = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    end = env.now + service_schedule.RESYNC_INTERVAL
    while "web" not in leader._passes and env.now < end:
        leader.tick()
        env.at(env.now + timedelta(seconds=10))
    assert env.now < end
    assert service_schedule.due(env.row("web"), env.now, resync=service_schedule.RESYNC_INTERVAL)
    assert not service_schedule.due(env.row("web"), env.now,
                                    resync=service_schedule.RESYNC_INTERVAL,
                                    last_pass=env.now - MINUTE)  # fmt: skip


def test_services_created_together_keep_their_resyncs_spread(env: Env) -> None:
    # Created (so reconciled) in one pass, they were all resynced in one pass every 10
    # minutes for good: the spread applied only to a new scheduler's first resyncs. Each
    # service resyncs at its own fixed point of the interval, and never less often.
    from certctl.server.scheduler import Scheduler

    names = [f"web-{i:02}" for i in range(12)]
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 0
    start = env.at(env.now + timedelta(seconds=10))
    for name in names:
        env.put(service_doc(name))
    assert scheduler.tick() == 12  # work to do: at once, all of them
    passes: dict[str, list[datetime]] = {n: [start] for n in names}
    per_tick = []
    end = start + 3 * service_schedule.RESYNC_INTERVAL
    while env.now < end:
        env.at(env.now + timedelta(seconds=10))
        per_tick.append(scheduler.tick())
        for name in names:
            if scheduler._passes[name] == env.now:
                passes[name].append(env.now)
    resyncs = per_tick[len(per_tick) // 3 :]  # the last two intervals, past the first resync
    # Where a name's hash lands is fixed: nine points an interval, four names in the last.
    assert max(resyncs) <= 4, [n for n in resyncs if n]
    assert len([n for n in resyncs if n]) >= 12, resyncs  # was 2 passes of 12
    for name, times in passes.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(gaps) >= 3, (name, times)
        assert max(gaps) <= service_schedule.RESYNC_INTERVAL, (name, gaps)
        assert min(gaps[1:]) == service_schedule.RESYNC_INTERVAL, (name, gaps)  # steady

    # Work is never held for the spread: a changed spec is reconciled at the next pass.
    env.put(service_doc("web-05", dns=("web-05.example.internal",)))
    env.at(env.now + timedelta(seconds=10))
    before = scheduler._passes["web-05"]
    scheduler.tick()
    assert scheduler._passes["web-05"] == env.now > before


def test_a_new_leader_spreads_the_first_resyncs_and_does_the_needed_work_at_once(
    env: Env,
) -> None:
    """After a restart (or a change of leader) the resyncs are spread over the interval.

    Every service's conditions were older than the resync interval, so the first pass of a
    new scheduler reconciled all of them at once (a thousand services: a thousand reloads).
    """
    from certctl.server.scheduler import Scheduler

    names = [f"web-{i:02}" for i in range(12)]
    for name in names:
        env.put(service_doc(name))
    assert Scheduler(env.services, env.settings, 10, clock=lambda: env.now).tick() == 12
    start = env.at(env.now + timedelta(hours=1))  # every resync is overdue
    service_specs.request_renewal(env.services, env.admin, "web-03")  # work to do
    env.put(service_doc("web-07", dns=("web-07.example.internal",)))  # a changed spec

    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 2  # only the services that need work
    assert set(scheduler._passes) == {"web-03", "web-07"}
    per_tick = []
    end = start + service_schedule.RESYNC_INTERVAL - timedelta(seconds=1)
    while env.now < end:
        env.at(min(env.now + timedelta(seconds=30), end))
        per_tick.append(scheduler.tick())
    # Each is resynced once within the interval, in small groups: the ten overdue ones, and
    # 03 and 07 too, at their own points (which keep them apart from the others' for good).
    assert sum(per_tick) == 12, per_tick
    assert set(scheduler._passes) == set(names)
    assert all(scheduler._passes[n] > start for n in ("web-03", "web-07"))
    # Where a name's hash lands is fixed: never more than four of them in one tick.
    assert max(per_tick) <= 4, per_tick
    assert len([n for n in per_tick if n]) >= 5, per_tick
    # The same service at the same point of the interval after another restart.
    first = {n: t - start for n, t in scheduler._passes.items() if n not in ("web-03", "web-07")}
    assert all(t > timedelta(0) for t in first.values()), first
    later = timedelta(minutes=15)  # before any certificate here is due for renewal
    env.at(start + later)
    again = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    assert again.tick() == 0
    while env.now < end + later:
        env.at(min(env.now + timedelta(seconds=30), end + later))
        again.tick()
    assert {n: t - start - later for n, t in again._passes.items() if n in first} == first


def test_a_service_deleted_during_its_reconcile_is_one_info_line(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    from certctl.server.scheduler import Scheduler

    def delete_while_reloading(command: str, timeout_s: float) -> None:
        service_specs.delete_service(env.services, env.admin, "web")

    target = {"directory": str(env.tmp / "tls"), "reload": "true"}
    env.put(service_doc("web", targets=[target]))
    settings = env.settings_with(reload_runner=delete_while_reloading)
    scheduler = Scheduler(env.services, settings, 10, clock=lambda: env.now)
    caplog.set_level("INFO", logger="certctl")
    assert scheduler.tick() == 0
    assert not [r for r in caplog.records if r.exc_info]  # no traceback
    assert "service web was deleted during its reconcile" in caplog.text
    assert scheduler._crashed == {}
    assert scheduler.tick() == 0


def test_specs_stored_before_the_reload_limits_keep_working(env: Env) -> None:
    from certctl.errors import InvalidRequest
    from certctl.store.models import ManagedService

    log = env.tmp / "reloaded"
    target = {"directory": str(env.tmp / "tls"), "reload": f"touch {log}", "reloadTimeout": "15m"}
    env.put(service_doc("web"))
    with env.services.sessions.begin() as session:  # as an earlier version stored it
        row = session.get(ManagedService, "web")
        assert row is not None
        row.spec = {**row.spec, "spec": {**row.spec["spec"], "targets": [target]}}
    row = env.reconcile("web")
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert log.exists()
    # Sent again as it is, the limit applies: the PUT says what to change.
    with pytest.raises(InvalidRequest, match="reload timeouts are 1s to 10m"):
        env.put(service_doc("web", targets=[target]))


def test_a_client_removed_during_a_reconcile_is_dropped_at_the_next_pass(env: Env) -> None:
    from certctl.server.scheduler import Scheduler

    target = env.tmp / "api-tls"
    env.put(service_doc("api", client_auth=True, targets=[{"directory": str(target)}]))
    client_ca = make_ca("client-ca", env.now)
    (added,) = service_clients.add_client(
        env.services, env.admin, "api", client_ca.cert_pem.decode()
    )

    removed = []

    def slow_reload(command: str, timeout_s: float) -> None:
        # The bundle with the client is already written; the client goes away now.
        if not removed:
            env.at(env.now + timedelta(seconds=1))
            service_clients.remove_client(env.services, env.admin, "api", added.fingerprint)
            removed.append(True)

    env.put(service_doc("api", client_auth=True,
                        targets=[{"directory": str(target), "reload": "true"}]))  # fmt: skip
    settings = env.settings_with(reload_runner=slow_reload)
    scheduler = Scheduler(env.services, settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 1
    assert client_ca.cert_pem in (target / "client-trust.crt").read_bytes()
    assert service_schedule.due(env.row("api"), env.now)  # the removal asked for another pass
    assert scheduler.tick() == 1
    assert client_ca.cert_pem not in (target / "client-trust.crt").read_bytes()


def test_deleting_a_service_deletes_its_ca_and_its_issuer_series(env: Env) -> None:
    from prometheus_client import generate_latest

    from certctl.metrics.registry import REGISTRY
    from certctl.server.periodic import refresh_metrics

    target = env.tmp / "tls"
    env.put(service_doc("web", targets=[{"directory": str(target)}]))
    env.reconcile("web")
    old_ca = _cert(env.outputs("web")["ca-internal"]["ca.crt"])
    http = env.client()
    assert http.get("/api/v1/issuers/svc.web").status_code == 200

    assert http.delete("/api/v1/services/web").status_code == 204
    # Nothing renews it any more: it would have stayed with its key, and its notAfter series
    # (the issuer-expiry alert the README advises) would have fired for a deleted service.
    assert http.get("/api/v1/issuers/svc.web").status_code == 404
    refresh_metrics(env.services)
    assert 'issuer="svc.web"' not in generate_latest(REGISTRY).decode()
    assert (target / "tls.crt").is_file()  # delivered files stay: they may still be serving

    # Applied again: a new CA, which the old ca.crt does not trust.
    env.put(service_doc("web", targets=[{"directory": str(target)}]))
    env.reconcile("web", env.now + MINUTE)
    leaf = _cert((target / "tls.crt").read_bytes())
    new_ca = _cert((target / "ca.crt").read_bytes())
    assert new_ca.public_key() != old_ca.public_key()
    verify_certificate(leaf, trust=[new_ca], now=env.now)
    with pytest.raises(VerificationFailed):
        verify_certificate(leaf, trust=[old_ca], now=env.now)


def test_registering_clients_for_a_service_without_client_authentication_warns(
    env: Env,
) -> None:
    # Before: 201 and no word, and the service's targets never got the clients.
    http = env.client()
    env.put(service_doc("web"))
    ca = make_ca("clients", env.now)
    added = http.post(
        "/api/v1/services/web/clients", json={"certificate_pem": ca.cert_pem.decode()}
    )
    assert added.status_code == 201, added.text
    assert added.json()["warnings"] == [
        "service web has client authentication off (spec.http.tls.client.authentication): "
        "its targets get no client-trust bundle until it is on"
    ]
    env.put(service_doc("web", client_auth=True))
    again = http.post(
        "/api/v1/services/web/clients", json={"certificate_pem": ca.cert_pem.decode()}
    )
    # The same CA again: nothing new (200, not 201), and no warning now that it is on.
    assert (again.status_code, again.json()["warnings"]) == (200, [])


def test_an_empty_client_certificate_field_is_refused_as_a_field_not_a_file(env: Env) -> None:
    # Before: 400 "an empty file: no certificate, key, CSR or CRL in it", the loader's words
    # for the CLI's files, to an API caller who sent no file.
    from tests.api.conftest import assert_problem

    http = env.client()
    env.put(service_doc("web", client_auth=True))
    for empty in (" ", "\n\n"):  # "" is the body schema's (minLength 1)
        refused = http.post("/api/v1/services/web/clients", json={"certificate_pem": empty})
        assert assert_problem(refused, 400)["detail"] == (
            "certificate_pem is empty: send one or more PEM certificates"
        )
    assert http.get("/api/v1/services/web/clients").json()["items"] == []


def test_client_subjects_are_named_as_certificate_subjects_are(env: Env) -> None:
    # Listed as "1.2.840.113549.1.9.1=ops@example.com,CN=clients" while certificates and
    # issuers show emailAddress= (openssl -nameopt RFC2253).
    from certctl.pki import KeyType, create_root_ca

    http = env.client()
    env.put(service_doc("web", client_auth=True))
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "clients"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.com"),
        ]
    )
    key = generate_private_key(KeyType.EC_P256)
    ca = create_root_ca(key, name, validity=timedelta(days=365), now=env.now).certificate
    added = http.post(
        "/api/v1/services/web/clients", json={"certificate_pem": certs_to_pem([ca]).decode()}
    )
    assert added.status_code == 201, added.text
    listed = http.get("/api/v1/services/web/clients").json()["items"]
    shown = "emailAddress=ops@example.com,CN=clients"
    assert [c["subject"] for c in added.json()["items"]] == [c["subject"] for c in listed]
    assert [c["subject"] for c in listed] == [shown]


def test_registering_clients_servers_will_refuse_warns(env: Env) -> None:
    from tests._tools import run

    http = env.client()
    env.put(service_doc("web", client_auth=True))
    old = make_ca("old-clients", env.now - timedelta(days=400), validity=timedelta(days=365))
    added = http.post(
        "/api/v1/services/web/clients", json={"certificate_pem": old.cert_pem.decode()}
    )
    assert added.status_code == 201, added.text
    expired = f"{old.certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    assert added.json()["warnings"] == [
        f"CA CN=old-clients expired on {expired}: servers refuse every client certificate "
        "that chains to it"
    ]

    # A server certificate registered as a client one (its CA registered too): openssl, as
    # nginx, refuses it for a client.
    ca = make_ca("clients", env.now)
    server = make_leaf(ca, "not-a-client", env.now, profile="server")
    assert (
        http.post(
            "/api/v1/services/web/clients", json={"certificate_pem": ca.cert_pem.decode()}
        ).status_code
        == 201
    )
    added = http.post(
        "/api/v1/services/web/clients", json={"certificate_pem": server.cert_pem.decode()}
    )
    assert added.status_code == 201, added.text
    assert (
        "client certificate CN=not-a-client lacks the clientAuth extended key usage: servers "
        "refuse it as a client certificate"
    ) in added.json()["warnings"]
    (env.tmp / "ca.pem").write_bytes(ca.cert_pem)
    (env.tmp / "leaf.pem").write_bytes(server.cert_pem)
    refused = run("openssl", "verify", "-purpose", "sslclient", "-CAfile", env.tmp / "ca.pem",
                  env.tmp / "leaf.pem")  # fmt: skip
    assert refused.returncode != 0
    assert "error 26 at 0 depth lookup: unsuitable certificate purpose" in refused.stderr


def _service_ca_rows(env: Env) -> list[str]:
    from sqlalchemy import select

    from certctl.store.models import Issuer

    with env.services.sessions() as session:
        return list(session.scalars(select(Issuer.id).where(Issuer.id.like("svc.%"))))


def test_a_service_deleted_before_its_reconcile_stores_the_ca_leaves_no_ca(
    any_env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The reconcile read the service, then the DELETE committed, then the reconcile stored the
    # service's new CA: an orphaned svc.web, key and all, that nothing deletes or renews.
    from certctl.server.scheduler import Scheduler

    env = any_env
    env.put(service_doc("web"))
    http = env.client()
    real_create_root_ca = service_ca.create_root_ca

    def delete_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # Between the reconcile's read of the service and its write of the CA.
        assert http.delete("/api/v1/services/web").status_code == 204
        return real_create_root_ca(*args, **kwargs)

    monkeypatch.setattr(service_ca, "create_root_ca", delete_meanwhile)
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    caplog.set_level("INFO", logger="certctl")
    try:
        assert scheduler.tick() == 0
        assert "service web was deleted during its reconcile" in caplog.text
        assert not [r for r in caplog.records if r.exc_info]
        assert _service_ca_rows(env) == []
        assert http.get("/api/v1/issuers/svc.web").status_code == 404
        assert http.get("/api/v1/services/web").status_code == 404

        # Negative twin: applied again, the service gets its CA as usual.
        monkeypatch.setattr(service_ca, "create_root_ca", real_create_root_ca)
        env.put(service_doc("web"))
        assert scheduler.tick() == 1
        assert _service_ca_rows(env) == ["svc.web"]
    finally:
        if scheduler.leadership is not None:
            scheduler.leadership.release()  # its lock session (PostgreSQL)


def test_a_delete_during_the_ca_write_deletes_that_ca(
    any_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The DELETE arrives while the reconcile's CA transaction is open: it used to find no CA
    # yet, delete the service and commit; the CA committed after it was an orphan.
    import threading

    from certctl.services import issuers

    env = any_env
    env.put(service_doc("web"))
    real_record = issuers.record
    in_write, go_on = threading.Event(), threading.Event()

    def held(session: Any, **kwargs: Any) -> None:
        real_record(session, **kwargs)
        if kwargs.get("action") == "service.ca":
            in_write.set()  # inside the transaction that stores svc.web
            assert go_on.wait(10)

    monkeypatch.setattr(issuers, "record", held)
    outcome: list[BaseException | None] = []

    def reconcile() -> None:
        try:
            env.reconcile("web")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reconciler = threading.Thread(target=reconcile)
    reconciler.start()
    try:
        assert in_write.wait(10)
        deleter = threading.Thread(
            target=service_specs.delete_service, args=(env.services, env.admin, "web")
        )
        deleter.start()
        # The DELETE waits for the CA transaction (before: it was done by now).
        deleter.join(0.5)
        assert deleter.is_alive()
    finally:
        go_on.set()
        reconciler.join(10)
    deleter.join(30)
    assert not deleter.is_alive()
    # The reconcile stored the CA, the DELETE then took it (and the service) away.
    assert _service_ca_rows(env) == []
    assert env.client().get("/api/v1/services/web").status_code == 404
    assert len(outcome) == 1
    assert outcome[0] is None or isinstance(outcome[0], NotFound), outcome


def test_a_delete_during_the_reconciles_last_write_waits_for_it(
    any_env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The DELETE commits between the reconcile's read of the row in its last transaction and
    # that transaction's UPDATE: on SQLite (where FOR UPDATE locks nothing) the UPDATE matched
    # no row, and the pass crashed with a StaleDataError traceback, backed off as a bug.
    import threading

    from certctl.server.scheduler import Scheduler

    env = any_env
    env.put(service_doc("web"))
    real = service_reconcile.service_ca_renew_at
    deleters: list[threading.Thread] = []

    def delete_meanwhile(*args: Any) -> Any:
        # Inside the last transaction, after the row was read.
        deleter = threading.Thread(
            target=service_specs.delete_service, args=(env.services, env.admin, "web")
        )
        deleter.start()
        deleter.join(0.5)  # before: done by now, on SQLite
        deleters.append(deleter)
        return real(*args)

    monkeypatch.setattr(service_reconcile, "service_ca_renew_at", delete_meanwhile)
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    caplog.set_level("INFO", logger="certctl")
    try:
        scheduler.tick()
        (deleter,) = deleters
        deleter.join(30)
        assert not deleter.is_alive()
        assert not [r for r in caplog.records if r.exc_info], caplog.text
        assert scheduler._crashed == {}
        # The pass committed first; the DELETE then took the service and its CA.
        assert env.client().get("/api/v1/services/web").status_code == 404
        assert _service_ca_rows(env) == []
    finally:
        if scheduler.leadership is not None:
            scheduler.leadership.release()


def test_a_service_deleted_and_applied_again_through_another_worker_gets_a_new_ca(
    env: Env,
) -> None:
    # The DELETE and the new PUT are served by another worker (or replica): the leader's
    # cache still held the old svc.web, key included, and issued the new service's
    # certificate from that deleted CA (stored nowhere) until its periodic cache check.
    from sqlalchemy import select

    from certctl.services.context import Services
    from certctl.store.models import Issuer

    leader = env.services
    worker = Services(leader.engine, leader.sessions, leader.wrapper, clock=env.clock)
    env.put(service_doc("web"))
    env.reconcile("web")
    old_ca = _cert(env.outputs("web")["ca-internal"]["ca.crt"])

    service_specs.delete_service(worker, env.admin, "web")
    service_specs.put_service(worker, env.admin, "web", service_doc("web"))
    env.reconcile("web", env.now + MINUTE)  # the leader, at once
    with leader.sessions() as session:
        stored = session.scalar(select(Issuer.certificate_pem).where(Issuer.id == "svc.web"))
    assert stored is not None  # the CA it serves from is the stored one
    new_ca = _cert(stored.encode())
    assert new_ca.public_key() != old_ca.public_key()
    assert _cert(env.outputs("web")["ca-internal"]["ca.crt"]) == new_ca
    leaf = _cert(env.outputs("web")["certs-internal"]["tls.crt"])
    verify_certificate(leaf, trust=[new_ca], now=env.now)
    with pytest.raises(VerificationFailed):
        verify_certificate(leaf, trust=[old_ca], now=env.now)


@pytest.mark.parametrize("change", ["add client", "remove client", "renew"])
def test_a_delete_racing_a_service_change_waits_for_it(
    any_env: Env, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    # The DELETE commits between the change's read of the service and its write: on SQLite
    # (FOR UPDATE locks nothing) the client INSERT broke the foreign key and the renewal's
    # UPDATE matched no row: a 500 for a request that had been accepted.
    import threading

    from certctl.services import audit

    env = any_env
    env.put(service_doc("web", client_auth=True))
    client_ca = make_ca("client-ca", env.now)
    http = env.client()
    fingerprint = ""
    if change == "remove client":
        (added,) = service_clients.add_client(
            env.services, env.admin, "web", client_ca.cert_pem.decode()
        )
        fingerprint = added.fingerprint
    action = {"add client": "service.client.add", "remove client": "service.client.remove",
              "renew": "service.renew"}[change]  # fmt: skip
    deleters: list[threading.Thread] = []

    def hooked(real: Any) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            if action in (kwargs.get("action"), *args[2:4]):
                # Inside the change's transaction, after it read the service.
                deleter = threading.Thread(
                    target=service_specs.delete_service, args=(env.services, env.admin, "web")
                )
                deleter.start()
                deleter.join(0.5)  # before: done by now, on SQLite
                deleters.append(deleter)
            return result

        return record

    for owner in (service_clients, service_specs):  # client changes; renew
        monkeypatch.setattr(owner, "record", hooked(audit.record))
        monkeypatch.setattr(owner, "record_call", hooked(audit.record_call))
    if change == "add client":
        response = http.post(
            "/api/v1/services/web/clients", json={"certificate_pem": client_ca.cert_pem.decode()}
        )
    elif change == "remove client":
        response = http.delete(f"/api/v1/services/web/clients/{fingerprint}")
    else:
        response = http.post("/api/v1/services/web/renew")
    (deleter,) = deleters
    deleter.join(30)
    assert not deleter.is_alive()
    # Done before the DELETE, which then removed the service and every client.
    want = {"add client": 201, "remove client": 204, "renew": 202}[change]
    assert response.status_code == want, response.text
    assert http.get("/api/v1/services/web").status_code == 404
    with env.services.sessions() as session:
        from sqlalchemy import func, select

        from certctl.store.models import ServiceClient

        assert session.scalar(select(func.count()).select_from(ServiceClient)) == 0


def _verifies_at(ca_pem: bytes, leaf_pem: bytes, when: datetime, tmp: Path) -> bool:
    """Whether openssl verifies ``leaf_pem`` under ``ca_pem`` as a server at ``when``."""
    (tmp / "ca.pem").write_bytes(ca_pem)
    (tmp / "leaf.pem").write_bytes(leaf_pem)
    at = str(int(when.timestamp()))
    result = run("openssl", "verify", "-attime", at, "-purpose", "sslserver",
                 "-CAfile", tmp / "ca.pem", tmp / "leaf.pem")  # fmt: skip
    return result.returncode == 0


@pytest.mark.parametrize("mode", ["disabled", "custom"])
def test_the_ca_of_a_service_not_issuing_from_it_is_kept_current(
    env: Env, tmp_path: Path, mode: str
) -> None:
    # As ECK, which reconciles a resource's CA whatever its TLS spec. Before, the CA of a
    # service switched to plain HTTP or to its own certificate was never renewed: it sat
    # expired in the issuer list (the issuer-expiry alert firing for nothing), and a switch
    # back issued from a CA no client's copy of ca.crt was still valid for.
    names = ("web.example.internal",)
    t0 = env.now
    env.put(service_doc("web", dns=names))
    env.reconcile("web")
    first = env.outputs("web")["ca-internal"]["ca.crt"]
    if mode == "custom":
        leaf = make_leaf(make_ca("own-ca", t0), "web", t0, dns=("web", *names))
        write_secret(env.secrets_dir, "own", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem})
        env.put(service_doc("web", dns=names, secret="own"))
    else:
        env.put(service_doc("web", disabled=True))
    row = env.reconcile("web", t0 + MINUTE)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    renew_at = _cert(first).not_valid_after_utc - SETTINGS["ca_rotate_before"]
    assert row.ca_renew_at == renew_at
    if mode == "disabled":  # a custom certificate is read on every pass anyway
        assert not service_schedule.due(row, renew_at - timedelta(seconds=1))
    assert service_schedule.due(row, renew_at + MINUTE)
    row = env.reconcile("web", renew_at + MINUTE)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    renewed = issuers.load_issuer(env.services, "svc.web").certificate
    assert renewed.not_valid_after_utc == renew_at + MINUTE + SETTINGS["ca_validity"]
    assert renewed.public_key() == _cert(first).public_key()  # the same key: old copies verify
    assert row.ca_renew_at == renewed.not_valid_after_utc - SETTINGS["ca_rotate_before"]

    # Switched back after the first CA certificate expired: the leaf comes from the renewed
    # one, and openssl verifies it there (not under the expired first copy).
    back = env.at(_cert(first).not_valid_after_utc + timedelta(hours=1))
    env.put(service_doc("web", dns=names))
    row = env.reconcile("web", back)
    assert row.conditions["Ready"]["message"] == "serving", row.conditions
    outputs = env.outputs("web")
    assert _cert(outputs["ca-internal"]["ca.crt"]) == renewed
    leaf_pem = outputs["certs-internal"]["tls.crt"]
    assert _verifies_at(outputs["certs-internal"]["ca.crt"], leaf_pem, back, tmp_path)
    assert not _verifies_at(first, leaf_pem, back, tmp_path)


def _purposes(pem: bytes, ca_pem: bytes, tmp: Path) -> dict[str, bool]:
    """Which of sslserver and sslclient openssl verifies the leaf ``pem`` for."""
    (tmp / "ca.pem").write_bytes(ca_pem)
    (tmp / "leaf.pem").write_bytes(pem)
    return {
        purpose: run(
            "openssl", "verify", "-purpose", purpose, "-CAfile", tmp / "ca.pem", tmp / "leaf.pem"
        ).returncode
        == 0
        for purpose in ("sslserver", "sslclient")
    }


def test_usages_client_auth_gives_a_certificate_peers_accept_as_a_client(
    env: Env, tmp_path: Path
) -> None:
    # Nodes of a cluster (Elasticsearch transport, any mutual TLS mesh) present the service's
    # certificate as clients too. Before, it was serverAuth only, refused by every peer with
    # "unsupported certificate purpose", with no way to ask for clientAuth.
    names = ("web.example.internal",)
    env.put(service_doc("web", dns=names))
    env.reconcile("web")
    out = env.outputs("web")["certs-internal"]
    assert _purposes(out["tls.crt"], out["ca.crt"], tmp_path) == {
        "sslserver": True,
        "sslclient": False,
    }
    doc = service_doc("web", dns=names)
    doc["spec"]["http"]["tls"]["selfSignedCertificate"]["usages"] = ["server auth", "client auth"]
    env.put(doc)
    row = env.reconcile("web", env.now + MINUTE)
    assert [e.payload["reason"] for e in env.events("web")][-1] == "usages changed"
    assert row.conditions["Ready"]["message"] == "serving", row.conditions
    out = env.outputs("web")["certs-internal"]
    assert _purposes(out["tls.crt"], out["ca.crt"], tmp_path) == {
        "sslserver": True,
        "sslclient": True,
    }
    # Reconciled again: the same certificate (it has the usages asked for).
    serial = row.serial
    assert env.reconcile("web", env.now + MINUTE).serial == serial

    # A custom certificate without clientAuth is served, with a warning that peers refuse it.
    leaf = make_leaf(make_ca("own-ca", env.now), "web", env.now, dns=("web", *names))
    write_secret(env.secrets_dir, "own", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem})
    doc["spec"]["http"]["tls"]["certificate"] = {"secretName": "own"}
    env.put(doc)
    row = env.reconcile("web", env.now + MINUTE)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert (
        "secret own: tls.crt lacks the clientAuth extended key usage that usages asks for"
        in row.conditions["Ready"]["message"]
    )


@pytest.mark.parametrize("stored", [["Ready"], {"Ready": "yes", "Renewing": 1, "Failed": None}])
def test_conditions_edited_into_another_shape_are_written_anew(env: Env, stored: Any) -> None:
    # Only a hand-edited row holds this; each pass failed on .get (AttributeError) and the
    # service was backed off for good, instead of its conditions being written again.
    env.put(service_doc("web"))
    env.reconcile("web")
    with env.services.sessions.begin() as session:
        session.get(ManagedService, "web").conditions = stored
    assert service_schedule.due(env.row("web"), env.now, resync=timedelta(minutes=10))
    row = env.reconcile("web", env.now + MINUTE)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert row.conditions["Failed"]["status"] is False, row.conditions
    assert {c["at"] for c in row.conditions.values()} <= {
        env.now.isoformat(),
        (env.now + MINUTE).isoformat(),
    }


def test_a_service_ca_whose_stored_certificate_is_not_its_keys_fails_the_service(
    env: Env,
) -> None:
    """The store's 409 (a CA certificate swapped outside certctl) is the service's Failed.

    Before, the reconcile caught only InvalidRequest: the Conflict went up to the scheduler
    as a crash of the pass (a traceback, then crash back-off), and the service's status
    still said Ready while it could not be issued.
    """
    from sqlalchemy import update

    from certctl.store.models import Issuer

    env.put(service_doc("web", dns=("web.example.internal",)))
    env.put(service_doc("other", dns=("other.example.internal",)))
    assert env.reconcile("web").conditions["Ready"]["status"] is True
    assert env.reconcile("other").conditions["Ready"]["status"] is True
    foreign = env.outputs("other")["ca-internal"]["ca.crt"].decode()
    with env.services.engine.begin() as connection:
        connection.execute(
            update(Issuer).where(Issuer.id == "svc.web").values(certificate_pem=foreign)
        )
    env.services.forget_issuer("svc.web")
    env.put(service_doc("web", dns=("web.example.internal", "www.example.internal")))
    row = env.reconcile("web", env.now + MINUTE)  # a new SAN: the leaf must be issued again
    failed = row.conditions["Failed"]
    assert failed["status"] is True, row.conditions
    assert "issuer svc.web: its key does not match its certificate" in failed["message"]


def test_a_stored_certificate_that_no_longer_parses_is_replaced_by_services_renew(
    env: Env,
) -> None:
    # Edited by hand in the database (or a mangled restore): `services renew` reissued it
    # ("due for renewal" is told before the stored certificate is read). Whether the CA was
    # replaced is told from that certificate since d7c5592, and the ValueError crashed every
    # pass of the service instead, with a traceback, the renewal never done.
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    env.put(service_doc("web", dns=("web.example.internal",), targets=[{"directory": str(target)}]))
    first = env.reconcile("web")
    with env.services.sessions.begin() as session:
        row = session.get(ManagedService, "web")
        assert row is not None
        row.certificate_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    env.at(env.now + MINUTE)
    service_specs.request_renewal(env.services, env.admin, "web")
    row = env.reconcile("web", env.now)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert row.serial != first.serial
    assert env.events("web")[-1].payload["reason"] == "due for renewal"
    served = _cert((target / "tls.crt").read_bytes())
    assert format_serial(served.serial_number) == row.serial
    # Nothing is kept as a replaced CA: the same CA issues it.
    assert row.retired_ca_until is None
    assert (target / "ca.crt").read_bytes() == env.outputs("web")["ca-internal"]["ca.crt"]


def test_a_client_ca_on_a_curve_cryptography_lacks_is_registered_with_a_warning_not_a_400(
    env: Env,
) -> None:
    # A CA on prime239v1 (OpenSSL, so nginx, verifies its clients; pyca cannot load the
    # key): the trust check raised "cannot check the signature", so POST .../clients
    # answered 400 after storing the CA, and every registration for the service after it
    # answered 400 too, each stored all the same.
    from tests._tools import run

    base = env.tmp / "odd"
    base.mkdir()
    ok(run("openssl", "ecparam", "-name", "prime239v1", "-genkey", "-noout",
           "-out", base / "ca.key"))  # fmt: skip
    ok(run("openssl", "req", "-x509", "-key", base / "ca.key", "-subj", "/CN=odd clients CA",
           "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,keyCertSign,cRLSign",
           "-out", base / "ca.crt"))  # fmt: skip
    ok(run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", base / "alice.key", "-subj", "/CN=alice",
           "-out", base / "alice.csr"))  # fmt: skip
    (base / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    ok(run("openssl", "x509", "-req", "-in", base / "alice.csr", "-CA", base / "ca.crt",
           "-CAkey", base / "ca.key", "-days", "10", "-extfile", base / "client.ext",
           "-out", base / "alice.crt"))  # fmt: skip
    verified = ok(run("openssl", "verify", "-CAfile", base / "ca.crt", "-purpose", "sslclient",
                      base / "alice.crt"))  # fmt: skip
    assert verified.stdout.strip().endswith(": OK")  # what nginx will do with her
    # openssl signed her at the real clock's second: the frozen one, set when the test began,
    # may be a second behind on a slow machine (then she read "not valid before").
    env.at(datetime.now(UTC) + timedelta(seconds=1))

    env.put(service_doc("web", client_auth=True))
    url = "/api/v1/services/web/clients"
    note = (
        "CA CN=odd clients CA has a key certctl cannot check signatures with (Curve "
        "1.2.840.10045.3.1.4 is not supported): whether servers accept it and the clients it "
        "signed is not checked here"
    )
    with env.client() as http:
        added = http.post(url, json={"certificate_pem": (base / "ca.crt").read_text()})
        assert added.status_code == 201, added.text
        assert added.json()["warnings"] == [note]
        # Her issuer is registered, though not checkable here: not "without its issuer".
        alice = http.post(url, json={"certificate_pem": (base / "alice.crt").read_text()})
        assert alice.status_code == 201, alice.text
        assert alice.json()["warnings"] == [note]
        other = make_ca("clients", env.now)
        added = http.post(url, json={"certificate_pem": other.cert_pem.decode()})
        assert added.status_code == 201, added.text
        listed = http.get(url).json()["items"]
    assert sorted(item["subject"] for item in listed) == [
        "CN=alice",
        "CN=clients",
        "CN=odd clients CA",
    ]


def test_each_certificate_a_service_is_given_is_audited_by_system(any_env: Env) -> None:
    # A service's certificates were issued and renewed with no audit row: the CA signed
    # them on its own, and only the webhook's outbox said so.
    from sqlalchemy import select

    from certctl.store.models import AuditEvent

    env = any_env
    env.put(service_doc("web"))
    first = env.reconcile("web")
    assert first.not_after is not None
    late = first.not_after - ROTATE + timedelta(seconds=1)
    second = env.reconcile("web", late)
    env.reconcile("web", late + MINUTE)  # nothing due: nothing issued, nothing audited
    with env.services.sessions() as session:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action == "service.certificate")
            .order_by(AuditEvent.id)
        ).all()
    assert [(r.actor, r.target, r.detail, r.source) for r in rows] == [
        ("system", f"web serial {first.serial}", "certificate issued (no certificate yet)", ""),
        ("system", f"web serial {second.serial}", "certificate issued (due for renewal)", ""),
    ]
    assert rows[1].at == late
