"""Custom certificates (``certificate.secretName``): each error has one clear message, the last
good material stays deployed; ``ca.crt`` + ``ca.key`` make that CA the issuer.

The unit cases reconcile in-process; one test drives ``certctl apply`` and
``certctl services status`` against a live ``certctl serve``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    VerificationFailed,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    generate_private_key,
    verify_certificate,
)
from certctl.services import issuers, service_schedule, service_specs, service_status
from certctl.services.context import Principal
from certctl.store.models import Issuer
from tests._tools import ok, openssl_req, openssl_verify, run
from tests.e2e.conftest import launch
from tests.services.conftest import (
    SETTINGS,
    Env,
    Leaf,
    make_ca,
    make_leaf,
    service_doc,
    snapshot,
    write_secret,
)

NAMES = ("web.example.internal",)


def good_files(now: datetime, cn: str = "web") -> tuple[Leaf, dict[str, bytes]]:
    """A custom CA and a leaf covering ``cn`` and NAMES, as tls.crt + tls.key + ca.crt."""
    ca = make_ca(f"{cn}-custom-ca", now)
    leaf = make_leaf(ca, cn, now, dns=(cn, *NAMES))
    return ca, {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}


def good_ca_files(now: datetime, cn: str = "web") -> tuple[Leaf, dict[str, bytes]]:
    ca = make_ca(f"{cn}-issuing-ca", now)
    return ca, {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem}


def bad_files(case: str, now: datetime, cn: str = "web") -> dict[str, bytes]:
    """Secret contents for one error case (each otherwise well-formed)."""
    ca, files = good_files(now, cn)
    other = make_ca("someone-else", now)
    if case == "key mismatch":
        return {**files, "tls.key": make_leaf(ca, cn, now).key_pem}
    if case == "expired":
        old = make_leaf(ca, cn, now - timedelta(days=40), dns=(cn, *NAMES))
        return {**files, "tls.crt": old.cert_pem, "tls.key": old.key_pem}
    if case == "not yet valid":
        future = make_leaf(ca, cn, now + timedelta(days=2), dns=(cn, *NAMES))
        return {**files, "tls.crt": future.cert_pem, "tls.key": future.key_pem}
    if case == "ca does not verify":
        return {**files, "ca.crt": other.cert_pem}
    if case == "ca not a CA":
        leaf = make_leaf(ca, cn, now)
        return {"ca.crt": leaf.cert_pem, "ca.key": leaf.key_pem}
    if case == "ca key mismatch":
        return {"ca.crt": ca.cert_pem, "ca.key": other.key_pem}
    if case == "ca expired":
        expired = make_ca("expired-ca", now - timedelta(days=400), validity=timedelta(days=365))
        return {"ca.crt": expired.cert_pem, "ca.key": expired.key_pem}
    if case == "sans do not cover":
        leaf = make_leaf(ca, cn, now, dns=(cn,))
        return {**files, "tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}
    if case == "empty secret":
        return {"README": b"nothing here\n"}
    if case == "encrypted key":
        leaf = make_leaf(ca, cn, now, dns=(cn, *NAMES))
        encrypted = leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
        return {**files, "tls.crt": leaf.cert_pem, "tls.key": encrypted}
    if case == "password-protected PKCS#12 tls.key":
        # The loader's refusal of this file named --password-file, and the server passed it
        # on: its type, not the word "encrypted", picks the server's own advice.
        with tempfile.TemporaryDirectory() as tmp:
            leaf_file = Path(tmp, "leaf.pem")
            leaf_file.write_bytes(files["tls.key"] + files["tls.crt"])
            p12 = Path(tmp, "tls.p12")
            ok(run("openssl", "pkcs12", "-export", "-in", leaf_file, "-out", p12,
                   "-passout", "pass:secret"))  # fmt: skip
            return {**files, "tls.key": p12.read_bytes()}
    if case == "malformed tls.crt of an 'encrypted' host":
        # Its subject is in the error: the word "encrypted" there made the server call the
        # certificate an encrypted key. A SAN iPAddress of 2 octets, as openssl signs it.
        with tempfile.TemporaryDirectory() as tmp:
            openssl_req(Path(tmp, "k.pem"), Path(tmp, "c.pem"), "/CN=encrypted.example",
                        "-addext", "2.5.29.17=DER:30078705010203040A", x509=True)  # fmt: skip
            return {**files, "tls.crt": Path(tmp, "c.pem").read_bytes()}
    if case == "garbage tls.crt":
        return {**files, "tls.crt": b"-----BEGIN CERTIFICATE-----\nnope\n"}
    if case == "tls.crt a CA":  # served as is, its key would go to every target
        return {"tls.crt": other.cert_pem, "tls.key": other.key_pem}
    if case == "tls.crt for clients":  # without ca.crt, so no chain check sees its purpose
        client = make_leaf(ca, cn, now, dns=(cn, *NAMES), profile="client")
        return {"tls.crt": client.cert_pem, "tls.key": client.key_pem}
    raise AssertionError(case)


# case -> (message in the Failed condition, or the Ready warning)
ERRORS = {
    "key mismatch": "secret {s}: tls.key does not match tls.crt",
    "expired": "secret {s}: tls.crt expired on ",
    "not yet valid": "secret {s}: tls.crt is not valid before ",
    "ca does not verify": "secret {s}: ca.crt does not verify tls.crt",
    "ca not a CA": "secret {s}: ca.crt is not a CA",
    "ca key mismatch": "secret {s}: ca.key does not match ca.crt",
    "ca expired": "secret {s}: ca.crt expired",
    "empty secret": "secret {s} holds neither tls.crt+tls.key nor ca.crt+ca.key",
    # Named by secret and file; the key's advice is not load_material's --password-file.
    "encrypted key": "secret {s}: tls.key is encrypted; certctl reads only unencrypted keys "
    "(openssl pkey -in tls.key -out tls.key.clear)",
    "password-protected PKCS#12 tls.key": "secret {s}: tls.key is encrypted; certctl reads "
    "only unencrypted keys (openssl pkcs12 -nodes -in tls.key -out tls.key.clear)",
    "malformed tls.crt of an 'encrypted' host": "secret {s}: tls.crt: certificate "
    "CN=encrypted.example has malformed extensions",
    "garbage tls.crt": "secret {s}: tls.crt: malformed PEM",
    "tls.crt a CA": "secret {s}: tls.crt is a CA certificate, not a server certificate",
    "tls.crt for clients": "secret {s}: tls.crt is not a server certificate (its extended key "
    "usage lacks serverAuth; it has clientAuth)",
}
WARNING = "secret {s}: tls.crt does not cover web.example.internal"


def _deploy_good(env: Env, case: str) -> tuple[Path, dict[str, object]]:
    target = env.tmp / "out" / "web"
    target.parent.mkdir(exist_ok=True)
    mode_ca = case.startswith("ca ") and case != "ca does not verify"
    _, files = good_ca_files(env.now) if mode_ca else good_files(env.now)
    write_secret(env.secrets_dir, "custom", files)
    env.put(service_doc("web", dns=NAMES, secret="custom", targets=[{"directory": str(target)}]))
    row = env.reconcile("web")
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert row.conditions["Failed"]["status"] is False, row.conditions
    return target, snapshot(target)


@pytest.mark.parametrize("case", ERRORS)
def test_custom_error_fails_keeping_deployed_files(env: Env, case: str) -> None:
    target, before = _deploy_good(env, case)
    serial = env.row("web").serial
    write_secret(env.secrets_dir, "custom", bad_files(case, env.now))
    row = env.reconcile("web", env.now + timedelta(minutes=1))
    message = ERRORS[case].format(s="custom")
    assert row.conditions["Failed"]["status"] is True
    assert row.conditions["Failed"]["message"].startswith(message), row.conditions
    # Still serving the last good certificate: nothing rewritten, nothing re-linked.
    assert row.conditions["Ready"] == {
        "status": True,
        "message": "serving the last good certificate",
        "at": env.now.isoformat(),
    }
    assert row.serial == serial
    assert snapshot(target) == before
    assert env.events("web")[-1].event == "failed"
    assert message in env.events("web")[-1].payload["reason"]
    # The status formatting of `certctl services status` shows it.
    from certctl.cli.services import _status_line

    line = _status_line(service_status.service_json(row))
    assert line.split()[:4] == ["web", "True", "False", "True"]
    assert message in line


def test_custom_sans_not_covering_is_a_warning(env: Env) -> None:
    target, before = _deploy_good(env, "sans do not cover")
    write_secret(env.secrets_dir, "custom", bad_files("sans do not cover", env.now))
    row = env.reconcile("web", env.now + timedelta(minutes=1))
    assert row.conditions["Failed"]["status"] is False
    assert row.conditions["Ready"]["status"] is True
    assert row.conditions["Ready"]["message"] == WARNING.format(s="custom")
    after = snapshot(target)
    assert after != before  # a warning: the new certificate is served
    assert after["files"]["tls.crt"] == (env.secrets_dir / "custom" / "tls.crt").read_bytes()
    assert env.events("web")[-1].payload["reason"] == "custom certificate changed"


def test_a_wildcard_or_an_address_spelt_otherwise_covers_the_spec_names(env: Env) -> None:
    # Compared as strings, each of these used to be warned about as not covered.
    ca = make_ca("wild-ca", env.now)
    leaf = make_leaf(ca, "web", env.now, dns=("web", "*.example.internal"), ip=("::1",))
    files = {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}
    write_secret(env.secrets_dir, "custom", files)
    env.put(service_doc("web", dns=NAMES, ip=("0:0::1",), secret="custom"))
    row = env.reconcile("web")
    assert row.conditions["Ready"]["message"] == "serving", row.conditions
    # One label only, as TLS clients match it: a.b.example.internal is not covered.
    deeper = ("a.b.example.internal", "example.internal")
    env.put(service_doc("web", dns=(*NAMES, *deeper), ip=("0:0::1",), secret="custom"))
    row = env.reconcile("web", env.now + timedelta(minutes=1))
    assert row.conditions["Ready"]["message"] == (
        "secret custom: tls.crt does not cover a.b.example.internal, example.internal"
    )


def test_a_renewed_intermediate_under_the_same_leaf_is_delivered(env: Env) -> None:
    root = make_ca("custom-root", env.now)
    key = generate_private_key()

    def intermediate(days: int) -> x509.Certificate:
        return (
            CertificateAuthority(root.certificate, root.key)
            .issue(key.public_key(), common_name_dn("custom-intermediate"),
                   profile=PROFILES["intermediate"], validity=timedelta(days=days), now=env.now)
            .certificate
        )  # fmt: skip

    first = intermediate(30)
    leaf = make_leaf(
        Leaf(first, key), "web", env.now, dns=("web", *NAMES), validity=timedelta(days=20)
    )
    files = {"tls.crt": leaf.cert_pem + certs_to_pem([first]), "tls.key": leaf.key_pem,
             "ca.crt": root.cert_pem}  # fmt: skip
    write_secret(env.secrets_dir, "custom", files)
    target = env.tmp / "out" / "web"
    env.put(service_doc("web", dns=NAMES, secret="custom", targets=[{"directory": str(target)}]))
    env.reconcile("web")
    assert (target / "tls.crt").read_bytes() == files["tls.crt"]

    # Its owner renews the intermediate (same key) and puts it after the same leaf: it used
    # to be ignored (only the leaf and ca.crt were compared), the old one served until it
    # expired.
    second = intermediate(90)
    write_secret(
        env.secrets_dir, "custom", {**files, "tls.crt": leaf.cert_pem + certs_to_pem([second])}
    )
    row = env.reconcile("web", env.now + timedelta(minutes=1))
    assert (target / "tls.crt").read_bytes() == leaf.cert_pem + certs_to_pem([second])
    assert row.conditions["Ready"]["message"] == "serving", row.conditions
    assert env.events("web")[-1].payload["reason"] == "custom certificate changed"


def test_custom_certificate_served_as_is(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    _ca, files = good_files(env.now)
    write_secret(env.secrets_dir, "custom", files)
    env.put(service_doc("web", dns=NAMES, secret="custom"))
    row = env.reconcile("web")
    assert row.conditions["Ready"] == {
        "status": True,
        "message": "serving",
        "at": row.conditions["Ready"]["at"],
    }
    outputs = env.outputs("web")
    assert outputs["certs-internal"] == {
        "tls.crt": files["tls.crt"],
        "tls.key": files["tls.key"],
        "ca.crt": files["ca.crt"],
    }
    assert "ca-internal" not in outputs  # no per-service CA for a custom certificate
    with env.services.sessions() as session:
        assert session.get(Issuer, "svc.web") is None
    assert row.renew_at is None  # its owner renews it
    # Replaced by its owner: picked up on the next pass, as a renewal.
    _, newer = good_files(env.now)
    write_secret(env.secrets_dir, "custom", newer)
    assert service_schedule.due(env.row("web"), env.now)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="certctl.services"):
        row = env.reconcile("web", env.now + timedelta(minutes=1))
    assert env.outputs("web")["certs-internal"]["tls.crt"] == newer["tls.crt"]
    assert [e.event for e in env.events("web")] == ["issued", "renewed"]
    # certctl issued nothing: the log said "certificate issued (custom certificate changed)".
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("service web:")]
    assert said == [
        f"service web: custom certificate {row.serial} served as it is (custom certificate changed)"
    ]


def test_custom_ca_issues_the_leaf(env: Env) -> None:
    ca, files = good_ca_files(env.now)
    write_secret(env.secrets_dir, "issuer", files)
    env.put(service_doc("web", dns=NAMES, ip=("10.0.0.7",), secret="issuer"))
    row = env.reconcile("web")
    assert row.conditions["Ready"]["status"] is True, row.conditions
    outputs = env.outputs("web")
    leaf = x509.load_pem_x509_certificate(outputs["certs-internal"]["tls.crt"])
    assert leaf.issuer == ca.certificate.subject
    assert outputs["certs-internal"]["ca.crt"] == ca.cert_pem
    assert "ca-internal" not in outputs
    for name in ("web", "web.example.internal", "10.0.0.7"):
        verify_certificate(leaf, trust=[ca.certificate], hostname=name, now=env.now)
    with pytest.raises(VerificationFailed):
        verify_certificate(leaf, trust=[make_ca("web-http", env.now).certificate], now=env.now)
    with env.services.sessions() as session:
        assert session.get(Issuer, "svc.web") is None
    assert row.renew_at is not None  # certctl issued it, so certctl renews it

    # Nothing changed: no reissue. Another CA in the secret: reissued from it.
    assert env.reconcile("web", env.now + timedelta(minutes=1)).serial == row.serial
    other, other_files = good_ca_files(env.now, "other")
    write_secret(env.secrets_dir, "issuer", other_files)
    row = env.reconcile("web", env.now + timedelta(minutes=1))
    leaf = x509.load_pem_x509_certificate(env.outputs("web")["certs-internal"]["tls.crt"])
    verify_certificate(leaf, trust=[other.certificate], now=env.now)
    assert env.events("web")[-1].payload["reason"] == "issuer changed"
    # Same CA name, another key: reissued too.
    same_name, same_name_files = good_ca_files(env.now, "other")
    write_secret(env.secrets_dir, "issuer", same_name_files)
    env.reconcile("web", env.now + timedelta(minutes=1))
    leaf = x509.load_pem_x509_certificate(env.outputs("web")["certs-internal"]["tls.crt"])
    verify_certificate(leaf, trust=[same_name.certificate], now=env.now)
    assert env.events("web")[-1].payload["reason"] == "issuer key changed"


def test_a_replaced_custom_ca_stays_in_ca_crt_for_the_overlap(env: Env) -> None:
    """A custom CA replaced by another (new key) is trusted along with it for a while.

    The targets got the new CA alone as ca.crt with the new leaf: a server not yet reloaded
    (another node, a failed reload) still presented a leaf under the old CA, which peers
    holding the new ca.crt refused at once. A renewed service CA keeps its key, so leaves
    under its previous certificate verify for as long as that certificate is valid: the CA
    renewal margin; a replaced custom CA stays in ca.crt as long, or until the leaf certctl
    issued under it expires.
    """
    settings = {"cert_validity": timedelta(hours=8)}  # the margin (3 h) ends the overlap
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    old_ca, old_files = good_ca_files(env.now)
    write_secret(env.secrets_dir, "issuer", old_files)
    env.put(service_doc("web", dns=NAMES, secret="issuer", targets=[{"directory": str(target)}]))
    env.reconcile("web", **settings)
    old_leaf = env.tmp / "old-leaf.crt"
    old_leaf.write_bytes((target / "tls.crt").read_bytes())  # a node not reloaded yet

    new_ca, new_files = good_ca_files(env.now, "web-next")  # another name, another key
    write_secret(env.secrets_dir, "issuer", new_files)
    swap = env.now + timedelta(minutes=1)
    row = env.reconcile("web", swap, **settings)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    new_leaf = target / "tls.crt"
    bundle = target / "ca.crt"
    assert bundle.read_bytes() == new_ca.cert_pem + old_ca.cert_pem  # the new CA first
    assert env.outputs("web")["certs-public"]["ca.crt"] == bundle.read_bytes()
    at = ("-attime", str(int(swap.timestamp())))
    assert openssl_verify(*at, "-CAfile", bundle, new_leaf) == "OK"
    assert openssl_verify(*at, "-CAfile", bundle, old_leaf) == "OK"
    # What this cannot help: a client holding only the old ca.crt refuses the new leaf.
    old_ca_file = env.tmp / "old-ca.crt"
    old_ca_file.write_bytes(old_ca.cert_pem)
    assert openssl_verify(*at, "-CAfile", old_ca_file, new_leaf) != "OK"

    until = swap + env.settings_with(**settings).ca_renewal_margin
    env.reconcile("web", until - timedelta(seconds=1), **settings)
    assert bundle.read_bytes() == new_ca.cert_pem + old_ca.cert_pem
    # The outputs API follows the services clock, not the last pass: from the end of the
    # overlap, before any pass has cleared it, ca.crt no longer holds the old CA (it did
    # until the next pass, up to its interval later).
    with env.client() as client:
        public = "/api/v1/services/web/outputs/certs-public"
        served = client.get(public).json()["data"]["ca.crt"]
        assert served == (new_ca.cert_pem + old_ca.cert_pem).decode()  # the twin: not yet
        env.at(until)
        served = client.get(public).json()["data"]["ca.crt"]
        assert served == new_ca.cert_pem.decode()
    assert env.outputs("web")["certs-internal"]["ca.crt"] == new_ca.cert_pem
    env.reconcile("web", until, **settings)
    assert bundle.read_bytes() == new_ca.cert_pem
    at = ("-attime", str(int(until.timestamp())))
    assert openssl_verify(*at, "-CAfile", bundle, new_leaf) == "OK"
    no_issuer = "unable to get local issuer certificate"
    assert openssl_verify(*at, "-CAfile", bundle, old_leaf) == no_issuer
    assert [e.event for e in env.events("web")] == ["issued", "renewed"]  # nothing more


def test_a_ca_replaced_twice_in_the_overlap_keeps_each_old_one_for_its_own(env: Env) -> None:
    # A (served) -> B -> C within a day: a node that reloaded neither still presents the leaf
    # under A. The second swap kept only B, so A left ca.crt at once, hours before the
    # retired_ca_until the first swap promised, and peers refused that node.
    settings = {"cert_validity": timedelta(hours=8)}  # margin 3 h, under the leaves' ends
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    a_ca, a_files = good_ca_files(env.now, "web-a")
    write_secret(env.secrets_dir, "issuer", a_files)
    env.put(service_doc("web", dns=NAMES, secret="issuer", targets=[{"directory": str(target)}]))
    env.reconcile("web", **settings)
    a_leaf = env.tmp / "a-leaf.crt"
    a_leaf.write_bytes((target / "tls.crt").read_bytes())  # a node not reloaded since
    margin = env.settings_with(**settings).ca_renewal_margin

    b_ca, b_files = good_ca_files(env.now, "web-b")
    write_secret(env.secrets_dir, "issuer", b_files)
    first = env.now + timedelta(minutes=1)
    env.reconcile("web", first, **settings)
    b_leaf = env.tmp / "b-leaf.crt"
    b_leaf.write_bytes((target / "tls.crt").read_bytes())
    c_ca, c_files = good_ca_files(env.now, "web-c")
    write_secret(env.secrets_dir, "issuer", c_files)
    second = first + timedelta(hours=1)
    env.reconcile("web", second, **settings)
    bundle = target / "ca.crt"
    assert bundle.read_bytes() == c_ca.cert_pem + b_ca.cert_pem + a_ca.cert_pem
    at = ("-attime", str(int(second.timestamp())))
    for leaf in (a_leaf, b_leaf, target / "tls.crt"):
        assert openssl_verify(*at, "-CAfile", bundle, leaf) == "OK"
    status = service_status.service_json(env.row("web"))["status"]
    assert status["retired_ca_until"] == (second + margin).isoformat()  # the last one kept

    # A leaves at the end of its own overlap (a pass is due then), B at the end of its own.
    row = env.row("web")
    assert not service_schedule.due(
        row, first + margin - timedelta(seconds=1), secret_unchanged=True
    )
    assert service_schedule.due(row, first + margin, secret_unchanged=True)
    env.reconcile("web", first + margin, **settings)
    assert bundle.read_bytes() == c_ca.cert_pem + b_ca.cert_pem
    env.reconcile("web", second + margin, **settings)
    assert bundle.read_bytes() == c_ca.cert_pem
    assert service_status.service_json(env.row("web"))["status"]["retired_ca_until"] is None


def test_dropping_the_retired_cas_drops_every_one(env: Env) -> None:
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    a_ca, a_files = good_ca_files(env.now, "web-a")
    write_secret(env.secrets_dir, "issuer", a_files)
    env.put(service_doc("web", dns=NAMES, secret="issuer", targets=[{"directory": str(target)}]))
    settings = {"cert_validity": timedelta(hours=8)}
    env.reconcile("web", **settings)
    cas = [a_ca]
    for cn in ("web-b", "web-c"):
        ca, files = good_ca_files(env.now, cn)
        cas.insert(0, ca)
        write_secret(env.secrets_dir, "issuer", files)
        env.reconcile("web", env.now + timedelta(minutes=1), **settings)
    assert (target / "ca.crt").read_bytes() == b"".join(ca.cert_pem for ca in cas)
    env.at(env.now + timedelta(minutes=1))
    service_specs.drop_retired_ca(env.services, env.admin, "web")
    assert service_schedule.due(env.row("web"), env.now)
    env.reconcile("web", env.now, **settings)
    assert (target / "ca.crt").read_bytes() == cas[0].cert_pem
    assert service_status.service_json(env.row("web"))["status"]["retired_ca_until"] is None


def test_a_ca_swapped_back_is_current_and_at_most_four_are_kept(env: Env) -> None:
    settings = {"cert_validity": timedelta(hours=8)}
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    cas = {cn: good_ca_files(env.now, cn) for cn in ("a", "b", "c", "d", "e", "f", "g")}

    def swap(cn: str) -> bytes:
        write_secret(env.secrets_dir, "issuer", cas[cn][1])
        env.reconcile("web", env.now + timedelta(minutes=1), **settings)
        return (target / "ca.crt").read_bytes()

    def pems(*cns: str) -> bytes:
        return b"".join(cas[cn][0].cert_pem for cn in cns)

    write_secret(env.secrets_dir, "issuer", cas["a"][1])
    env.put(service_doc("web", dns=NAMES, secret="issuer", targets=[{"directory": str(target)}]))
    env.reconcile("web", **settings)
    swap("b")
    assert swap("c") == pems("c", "b", "a")
    # Back to A: current again, so no longer among those retired (once only in ca.crt).
    assert swap("a") == pems("a", "c", "b")
    # A CA swapped every minute: ca.crt keeps the current one and the 4 replaced last.
    for cn in ("d", "e", "f"):
        swap(cn)
    assert swap("g") == pems("g", "f", "e", "d", "a")


def test_the_overlap_of_a_replaced_ca_can_be_ended_at_once(env: Env) -> None:
    # Replaced because its key leaked, the old CA must not stay trusted for a day: the
    # operator ends the overlap (DELETE /api/v1/services/{name}/retired-ca), the next pass
    # delivers ca.crt without it, and the status says until when it was kept before.
    from certctl.errors import Conflict, NotFound, PermissionDenied

    settings = {"cert_validity": timedelta(hours=8)}
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    old_ca, old_files = good_ca_files(env.now)
    write_secret(env.secrets_dir, "issuer", old_files)
    env.put(service_doc("web", dns=NAMES, secret="issuer", targets=[{"directory": str(target)}]))
    env.reconcile("web", **settings)
    with pytest.raises(Conflict, match=r"^service web keeps no replaced CA in its ca\.crt$"):
        service_specs.drop_retired_ca(env.services, env.admin, "web")
    with pytest.raises(NotFound, match=r"^service nope not found$"):
        service_specs.drop_retired_ca(env.services, env.admin, "nope")
    new_ca, new_files = good_ca_files(env.now, "web-next")
    write_secret(env.secrets_dir, "issuer", new_files)
    swap = env.now + timedelta(minutes=1)
    env.reconcile("web", swap, **settings)
    bundle = target / "ca.crt"
    assert bundle.read_bytes() == new_ca.cert_pem + old_ca.cert_pem
    until = swap + env.settings_with(**settings).ca_renewal_margin
    status = service_status.service_json(env.row("web"))["status"]
    assert status["retired_ca_until"] == until.isoformat()

    env.at(swap + timedelta(minutes=1))
    row = service_specs.drop_retired_ca(env.services, env.admin, "web")
    assert row.retired_ca_until == env.now
    assert service_schedule.due(env.row("web"), env.now)  # the pass that drops it is due now
    env.reconcile("web", env.now, **settings)
    assert bundle.read_bytes() == new_ca.cert_pem
    assert env.outputs("web")["certs-public"]["ca.crt"] == new_ca.cert_pem
    assert service_status.service_json(env.row("web"))["status"]["retired_ca_until"] is None
    with pytest.raises(Conflict):
        service_specs.drop_retired_ca(env.services, env.admin, "web")
    viewer = Principal("v", ("r-viewer",), frozenset({"service.read"}), "test")
    with pytest.raises(PermissionDenied, match=r"service\.edit"):
        service_specs.drop_retired_ca(env.services, viewer, "web")


def test_a_switch_from_a_custom_ca_to_the_service_ca_keeps_the_old_one_until_its_leaf_ends(
    env: Env,
) -> None:
    old_ca, old_files = good_ca_files(env.now)
    write_secret(env.secrets_dir, "issuer", old_files)
    env.put(service_doc("web", dns=NAMES, secret="issuer"))
    old_end = env.reconcile("web").not_after
    assert old_end is not None
    env.put(service_doc("web", dns=NAMES))  # self-signed: the service's own CA
    longer = {"cert_validity": timedelta(hours=8)}  # the new leaf is not due meanwhile
    env.reconcile("web", env.now + timedelta(minutes=1), **longer)
    service_ca = env.outputs("web")["ca-internal"]["ca.crt"]
    assert env.outputs("web")["certs-internal"]["ca.crt"] == service_ca + old_ca.cert_pem
    # Here the leaf issued under the old CA (2 h) ends before the renewal margin (3 h).
    assert env.row("web").retired_ca_until == old_end
    assert not service_schedule.due(env.row("web"), old_end - timedelta(seconds=1))
    assert service_schedule.due(env.row("web"), old_end)  # its end is work to do: redelivery
    env.reconcile("web", old_end, **longer)
    assert env.outputs("web")["certs-internal"]["ca.crt"] == service_ca
    assert not service_schedule.due(env.row("web"), old_end + timedelta(minutes=1))


def test_a_custom_ca_renewed_with_its_key_under_another_ski_reissues_and_keeps_the_old_one(
    env: Env,
) -> None:
    # The owner renews the CA of the secret with the same key and name, by a tool that
    # computes its subjectKeyIdentifier otherwise (Go 1.25's truncated SHA-256, a fixed
    # value): OpenSSL takes a CA whose SKI is not the leaf's authorityKeyIdentifier for no
    # issuer of it. Judged by name and signature alone, it was a "CA renewed": the leaf kept,
    # ca.crt the new CA alone, and peers refused the certificate served (and a node not
    # reloaded) with "unable to get local issuer certificate".
    settings = {"cert_validity": timedelta(hours=8)}
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    ca, files = good_ca_files(env.now)
    write_secret(env.secrets_dir, "issuer", files)
    env.put(service_doc("web", dns=NAMES, secret="issuer", targets=[{"directory": str(target)}]))
    first = env.reconcile("web", **settings)
    old_leaf = env.tmp / "old-leaf.crt"
    old_leaf.write_bytes((target / "tls.crt").read_bytes())

    key = env.tmp / "ca.key"
    key.write_bytes(files["ca.key"])
    renewed = env.tmp / "renewed.crt"
    ski = "01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10:11:12:13:14"
    ok(run("openssl", "req", "-x509", "-key", key, "-subj", "/CN=web-issuing-ca",
           "-days", "400", "-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,keyCertSign,cRLSign",
           "-addext", f"subjectKeyIdentifier={ski}", "-addext", "authorityKeyIdentifier=none",
           "-out", renewed))  # fmt: skip
    new_ca = x509.load_pem_x509_certificate(renewed.read_bytes())
    assert (new_ca.subject, new_ca.public_key()) == (ca.certificate.subject, ca.key.public_key())
    write_secret(
        env.secrets_dir, "issuer", {"ca.crt": renewed.read_bytes(), "ca.key": files["ca.key"]}
    )
    at_swap = env.now + timedelta(minutes=1)
    at = ("-attime", str(int(at_swap.timestamp())))
    renewed_only = env.tmp / "renewed-only.crt"
    renewed_only.write_bytes(renewed.read_bytes())
    assert openssl_verify(*at, "-CAfile", renewed_only, old_leaf) != "OK"  # the premise

    row = env.reconcile("web", at_swap, **settings)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert row.serial != first.serial
    assert env.events("web")[-1].payload["reason"] == "issuer key identifier changed"
    bundle = target / "ca.crt"
    assert bundle.read_bytes() == renewed.read_bytes() + ca.cert_pem  # the old one kept
    assert openssl_verify(*at, "-CAfile", bundle, target / "tls.crt") == "OK"
    assert openssl_verify(*at, "-CAfile", bundle, old_leaf) == "OK"
    assert openssl_verify(*at, "-CAfile", renewed_only, target / "tls.crt") == "OK"


def test_a_switch_back_to_the_service_ca_renewed_meanwhile_keeps_no_copy_of_it_as_replaced(
    env: Env,
) -> None:
    # Service CA -> a custom CA (the service CA kept for the overlap) -> back, after the
    # service CA was renewed (same key, name and SKI) meanwhile: its previous certificate
    # was compared by its PEM, not by what it is, so ca.crt held the service CA twice and
    # the status said a replaced CA was kept (the service's own) until the overlap's end.
    t0 = env.now
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    dirs = [{"directory": str(target)}]
    env.put(service_doc("web", dns=NAMES, targets=dirs))
    env.reconcile("web", t0)
    # A leaf issued 6 h in (cert-validity 2 h) runs past the CA's renewal (7 h in).
    env.reconcile("web", t0 + timedelta(hours=6))
    s_old = issuers.load_issuer(env.services, "svc.web").root_pem
    s_leaf = env.tmp / "s-leaf.crt"
    s_leaf.write_bytes((target / "tls.crt").read_bytes())  # a node not reloaded since
    custom, files = good_ca_files(env.now, "custom")
    write_secret(env.secrets_dir, "issuer", files)
    env.put(service_doc("web", dns=NAMES, secret="issuer", targets=dirs))
    switched = env.reconcile("web", t0 + timedelta(hours=6, minutes=1))
    assert (target / "ca.crt").read_bytes() == custom.cert_pem + s_old  # the overlap
    env.reconcile("web", t0 + timedelta(hours=7, minutes=1))  # the service CA renewed
    s_new = issuers.load_issuer(env.services, "svc.web").root_pem
    assert s_new != s_old
    assert (target / "ca.crt").read_bytes() == custom.cert_pem + s_old

    env.put(service_doc("web", dns=NAMES, targets=dirs))
    back = t0 + timedelta(hours=7, minutes=2)
    row = env.reconcile("web", back)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    # The service CA once (its current certificate), then the custom CA, kept for its overlap.
    assert (target / "ca.crt").read_bytes() == s_new + custom.cert_pem
    status = service_status.service_json(row)["status"]
    assert status["retired_ca_until"] == switched.not_after.isoformat()  # the custom leaf's end
    # The leaf served under the previous certificate still verifies: same name, key and SKI.
    at = ("-attime", str(int(back.timestamp())))
    for leaf in (s_leaf, target / "tls.crt"):
        assert openssl_verify(*at, "-CAfile", target / "ca.crt", leaf) == "OK"


@pytest.mark.parametrize("to", ["service CA", "custom CA"])
def test_a_ca_switch_applied_with_new_sans_keeps_the_old_ca_as_a_switch_alone_does(
    env: Env, to: str
) -> None:
    # One apply that switches the CA and adds a name (certctl's own CA -> a custom one, or
    # back) reissued for "subject alternative names changed", checked before the issuer, and
    # only "issuer changed" kept the old CA: ca.crt lost it at once, and a node not reloaded
    # yet, still presenting its leaf under that CA, was refused by its peers.
    settings = {"cert_validity": timedelta(hours=8)}  # the new leaf is not due meanwhile
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    custom_ca, files = good_ca_files(env.now)
    write_secret(env.secrets_dir, "issuer", files)
    before = "issuer" if to == "service CA" else None
    after = None if to == "service CA" else "issuer"
    dirs = [{"directory": str(target)}]
    env.put(service_doc("web", dns=NAMES, secret=before, targets=dirs))
    env.reconcile("web", **settings)
    old_leaf = env.tmp / "old-leaf.crt"
    old_leaf.write_bytes((target / "tls.crt").read_bytes())  # a node not reloaded yet
    old_ca = (target / "ca.crt").read_bytes()

    more = (*NAMES, "web2.example.internal")
    env.put(service_doc("web", dns=more, secret=after, targets=dirs))
    swap = env.now + timedelta(minutes=1)
    row = env.reconcile("web", swap, **settings)
    assert row.conditions["Ready"]["status"] is True, row.conditions
    new_ca = env.outputs("web")["ca-internal"]["ca.crt"] if to == "service CA" else None
    new_ca = new_ca or custom_ca.cert_pem
    assert new_ca != old_ca
    assert (target / "ca.crt").read_bytes() == new_ca + old_ca  # the new CA first
    assert row.retired_ca_until is not None
    at = ("-attime", str(int(swap.timestamp())))
    bundle = target / "ca.crt"
    assert openssl_verify(*at, "-CAfile", bundle, target / "tls.crt") == "OK"
    assert openssl_verify(*at, "-CAfile", bundle, old_leaf) == "OK"


def test_a_secret_file_that_is_no_small_regular_file_fails_at_once(env: Env) -> None:
    # A FIFO used to block the reconciler (and so every service) for good, /dev/zero to fill
    # its memory, a directory to crash the pass with a traceback.
    import threading

    target, before = _deploy_good(env, "key mismatch")
    _, files = good_files(env.now)
    secret = write_secret(env.secrets_dir, "custom", files)
    cases = {
        "tls.crt": (lambda p: os.mkfifo(p), "tls.crt is not a regular file"),
        "ca.crt": (lambda p: p.symlink_to("/dev/zero"), "ca.crt is not a regular file"),
        "tls.key": (lambda p: p.mkdir(), "tls.key is not a regular file"),
        "tls.crt ": (lambda p: p.write_bytes(b"#" * (2 << 20)), "tls.crt is larger than 1 MiB"),
    }
    for name, (make, message) in cases.items():
        path = secret / name.strip()
        path.unlink()
        make(path)
        done: list[Any] = []
        worker = threading.Thread(
            target=lambda out, when: out.append(env.reconcile("web", when)),
            args=(done, env.now + timedelta(minutes=1)),
            daemon=True,
        )
        worker.start()
        worker.join(20)
        if not done:
            with contextlib.suppress(OSError):  # let a reader blocked on the FIFO go
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail(f"{name}: the reconcile did not return")
        row = done[0]
        assert row.conditions["Failed"]["message"] == f"secret custom: {message}", row.conditions
        assert row.conditions["Ready"]["message"] == "serving the last good certificate"
        assert snapshot(target) == before
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
        path.write_bytes(files[name.strip()])


def test_a_custom_certificate_left_to_expire_is_not_ready(env: Env) -> None:
    from prometheus_client import generate_latest

    from certctl.metrics.registry import REGISTRY
    from certctl.server.periodic import refresh_metrics

    ca = make_ca("web-custom-ca", env.now)
    leaf = make_leaf(ca, "web", env.now, dns=("web", *NAMES), validity=timedelta(hours=1))
    files = {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}
    write_secret(env.secrets_dir, "custom", files)
    env.put(service_doc("web", dns=NAMES, secret="custom"))
    assert env.reconcile("web").conditions["Ready"]["status"] is True
    # Its owner never renewed it: it used to stay Ready, "serving the last good certificate",
    # that certificate being the expired one, so certctl_service_ready never alerted.
    row = env.reconcile("web", env.now + timedelta(hours=2))
    assert row.conditions["Failed"]["message"].startswith("secret custom: tls.crt expired on ")
    expired = f"{leaf.certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    assert row.conditions["Ready"] == {
        "status": False,
        "message": f"the last good certificate expired on {expired}",
        "at": env.now.isoformat(),
    }
    refresh_metrics(env.services)
    assert 'certctl_service_ready{service="web"} 0.0' in generate_latest(REGISTRY).decode()


def test_expiring_is_sent_once_per_certificate(env: Env) -> None:
    # A custom certificate is reconciled on every pass (10 s): each one used to queue another
    # "expiring" webhook for as long as it was within cert-rotate-before (24 h by default).
    ca = make_ca("web-custom-ca", env.now)
    soon = make_leaf(ca, "web", env.now, dns=("web", *NAMES), validity=timedelta(minutes=20))
    files = {"tls.crt": soon.cert_pem, "tls.key": soon.key_pem, "ca.crt": ca.cert_pem}
    write_secret(env.secrets_dir, "custom", files)
    env.put(service_doc("web", dns=NAMES, secret="custom"))
    for _ in range(6):
        env.reconcile("web", env.now + timedelta(seconds=10))
    events = env.events("web")
    assert [e.event for e in events] == ["issued", "expiring"]
    assert events[1].payload["not_after"] == soon.certificate.not_valid_after_utc.isoformat()

    # Replaced by another that expires soon too: told once about that one.
    other = make_leaf(ca, "web", env.now, dns=("web", *NAMES), validity=timedelta(minutes=25))
    write_secret(env.secrets_dir, "custom", {**files, "tls.crt": other.cert_pem,
                                             "tls.key": other.key_pem})  # fmt: skip
    for _ in range(3):
        env.reconcile("web", env.now + timedelta(seconds=10))
    assert [e.event for e in env.events("web")] == ["issued", "expiring", "renewed", "expiring"]


def _as_before_0009(env: Env, name: str, last_pass: datetime, failed: bool = False) -> None:
    """Take the store back to 0008 with ``name`` as certctl before 0009 left it, then upgrade.

    certctl before 0009 stamped every condition with each pass's time and judged "expiring
    already sent" by it: the Ready time of the pass before, inside the window, meant sent.
    """
    from sqlalchemy import text

    from certctl.store import db
    from tests.unit.store.test_migration_head import downgrade_store

    row = env.row(name)
    conditions = {
        c: {**v, "at": last_pass.isoformat()} for c, v in row.conditions.items() if c != "Failed"
    }
    message = "dir:/srv/tls: permission denied" if failed else ""
    conditions["Failed"] = {"status": failed, "message": message, "at": last_pass.isoformat()}
    engine = env.services.engine
    downgrade_store(engine, "0008")
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE managed_services SET conditions = :c WHERE name = :n"),
            {"c": json.dumps(conditions), "n": name},
        )
    db.migrate(engine)


@pytest.mark.parametrize(
    ("last_pass", "failed", "told_again"),
    [
        (timedelta(seconds=-10), False, False),  # inside the window: sent before the upgrade
        (timedelta(minutes=-30), False, True),  # before the window: not yet sent
        (timedelta(seconds=-10), True, True),  # a failed pass sends "failed", not "expiring"
    ],
)
def test_an_upgrade_to_0009_tells_expiring_only_if_not_told_before(
    env: Env, last_pass: timedelta, failed: bool, told_again: bool
) -> None:
    # expiring_serial started NULL for every stored service: one already told about its
    # certificate before the upgrade was told again at the first pass after it.
    ca = make_ca("web-custom-ca", env.now)
    soon = make_leaf(ca, "web", env.now, dns=("web", *NAMES), validity=timedelta(minutes=50))
    files = {"tls.crt": soon.cert_pem, "tls.key": soon.key_pem, "ca.crt": ca.cert_pem}
    write_secret(env.secrets_dir, "custom", files)
    env.put(service_doc("web", dns=NAMES, secret="custom"))
    env.reconcile("web")  # issued; 50 min left, the window (cert-rotate-before) is 30 min
    window = soon.certificate.not_valid_after_utc - SETTINGS["cert_rotate_before"]
    env.at(window + timedelta(minutes=5))
    _as_before_0009(env, "web", env.now + last_pass, failed)
    for _ in range(3):
        env.reconcile("web", env.now + timedelta(seconds=10))
    expiring = [e for e in env.events("web") if e.event == "expiring"]
    assert len(expiring) == (1 if told_again else 0), [e.event for e in env.events("web")]
    assert env.row("web").expiring_serial == env.row("web").serial  # told, now or before


def test_a_custom_ca_about_to_expire_is_not_reissued_from_on_every_pass(env: Env) -> None:
    # The CA ends within cert-rotate-before (30 min here): every certificate it issues ends
    # with it, so reissuing gains nothing. It used to issue, deliver and reload on each pass.
    key_ca = make_ca("web-issuing-ca", env.now, validity=timedelta(minutes=20))
    write_secret(env.secrets_dir, "issuer", {"ca.crt": key_ca.cert_pem, "ca.key": key_ca.key_pem})
    target = env.tmp / "out" / "web"
    env.put(service_doc("web", secret="issuer", targets=[{"directory": str(target)}]))
    reloads: list[str] = []
    first = env.reconcile("web", reload_runner=lambda command, _: reloads.append(command))
    assert first.not_after == key_ca.certificate.not_valid_after_utc
    assert first.renew_at is None  # nothing to gain; `certctl services status` shows "-"
    assert "ca.crt expires on " in first.conditions["Ready"]["message"]
    for _ in range(5):
        row = env.reconcile("web", env.now + timedelta(seconds=10))
        assert row.serial == first.serial
        assert row.conditions["Ready"]["status"] is True, row.conditions
    assert [e.event for e in env.events("web") if e.event != "expiring"] == ["issued"]

    # Its owner renews the CA (same key, same name): the new ca.crt is delivered with a
    # certificate that runs longer, and both verify with openssl.
    renewed = create_root_ca(
        key_ca.key, key_ca.certificate.subject, validity=timedelta(hours=10), now=env.now
    )
    write_secret(
        env.secrets_dir,
        "issuer",
        {"ca.crt": certs_to_pem([renewed.certificate]), "ca.key": key_ca.key_pem},
    )
    row = env.reconcile("web", env.now + timedelta(seconds=10))
    assert row.serial != first.serial
    assert row.not_after == env.now + SETTINGS["cert_validity"]
    assert row.renew_at is not None
    assert (target / "ca.crt").read_bytes() == certs_to_pem([renewed.certificate])
    ok(run("openssl", "verify", "-CAfile", target / "ca.crt", target / "tls.crt"))
    assert env.events("web")[-1].event == "renewed"
    assert "ca.crt expires" not in row.conditions["Ready"]["message"]
    assert env.reconcile("web", env.now + timedelta(seconds=10)).serial == row.serial


def test_a_served_certificate_whose_ca_takes_its_place_is_reissued_and_renewed(env: Env) -> None:
    # The secret held tls.crt + tls.key from a CA, then that CA's ca.crt + ca.key. The leaf
    # matched the spec and verified under it, so it was kept, with no renewal date: served
    # past its notAfter, Ready, for good.
    ca = make_ca("web-issuing-ca", env.now)
    leaf = make_leaf(ca, "web", env.now, dns=("web", *NAMES), validity=timedelta(hours=1))
    files = {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}
    write_secret(env.secrets_dir, "custom", files)
    env.put(service_doc("web", dns=NAMES, secret="custom"))
    served = env.reconcile("web")
    write_secret(env.secrets_dir, "custom", {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem})
    row = env.reconcile("web", env.now + timedelta(minutes=1))
    assert row.serial != served.serial
    assert env.events("web")[-1].payload["reason"] == "not renewed by certctl yet"
    assert row.renew_at is not None
    assert row.not_after == env.now + SETTINGS["cert_validity"]


# --- a live server, the real CLI ------------------------------------------------------------

LIVE_CASES = ("key mismatch", "expired", "not yet valid", "ca does not verify", "ca not a CA",
              "ca key mismatch")  # fmt: skip


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = False
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def test_cli_status_shows_each_error_from_a_live_server(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    out = tmp_path / "out"
    out.mkdir()
    now = datetime.now(UTC)
    names = {case: f"c{i}" for i, case in enumerate([*LIVE_CASES, "sans do not cover", "camode"])}
    docs = []
    for case, name in names.items():
        mode_ca = (case.startswith("ca ") and case != "ca does not verify") or case == "camode"
        _, files = good_ca_files(now, name) if mode_ca else good_files(now, name)
        write_secret(secrets, name, files)
        docs.append(
            service_doc(name, dns=NAMES, secret=name, targets=[{"directory": str(out / name)}])
        )
    services_yaml = tmp_path / "services.yaml"
    services_yaml.write_text(yaml.safe_dump_all(docs))
    config = {"secrets-dir": str(secrets), "reconcile-interval": "1s"}
    with launch(tmp_path / "server", config=config) as server:
        env = dict(os.environ)
        env.update(
            CERTCTL_URL=server.url, CERTCTL_API_KEY=server.admin_key, CERTCTL_CA_CERT=str(server.ca)
        )
        applied = ok(run("certctl", "apply", "-f", services_yaml, env=env))
        assert applied.stdout.splitlines() == [
            f"tlsservice/{n} created (generation 1)" for n in names.values()
        ]
        # Again, as is: kubectl's "unchanged"; then one edited: "configured".
        again = ok(run("certctl", "apply", "-f", services_yaml, env=env))
        assert again.stdout.splitlines() == [
            f"tlsservice/{n} unchanged (generation 1)" for n in names.values()
        ]
        first = docs[0]["metadata"]["name"]
        edited = tmp_path / "edited.yaml"
        targets = docs[0]["spec"]["targets"]
        doc = service_doc(first, dns=("other.example",), secret=first, targets=targets)
        edited.write_text(yaml.safe_dump(doc))
        assert ok(run("certctl", "apply", "-f", edited, env=env)).stdout == (
            f"tlsservice/{first} configured (generation 2)\n"
        )
        ok(run("certctl", "apply", "-f", services_yaml, env=env))  # back as it was (generation 3)

        def items() -> dict[str, dict[str, Any]]:
            with server.client(server.admin_key) as client:
                response = client.get("/api/v1/services")
            assert response.status_code == 200, response.text
            return {i["name"]: i["status"] for i in response.json()["items"]}

        def all_ready() -> bool:
            return all(
                s["conditions"].get("Ready", {}).get("status")
                and s["observed_generation"] == (3 if name == first else 1)
                for name, s in items().items()
            )

        _wait(all_ready, "every service Ready")
        before = {name: snapshot(out / name) for name in names.values()}
        camode_leaf = x509.load_pem_x509_certificate((out / "c7" / "tls.crt").read_bytes())
        camode_ca = x509.load_pem_x509_certificate((secrets / "c7" / "ca.crt").read_bytes())
        assert camode_leaf.issuer == camode_ca.subject
        verify_certificate(camode_leaf, trust=[camode_ca], now=now)

        for case in [*LIVE_CASES, "sans do not cover"]:
            write_secret(secrets, names[case], bad_files(case, now, names[case]))

        expected = {names[c]: ERRORS[c].format(s=names[c]) for c in LIVE_CASES}
        expected[names["sans do not cover"]] = WARNING.format(s=names["sans do not cover"])

        def settled() -> bool:
            # Wait for the final messages: a pass may catch a secret half-rewritten.
            status = items()
            return all(
                message in (status[name]["conditions"]["Failed"]["message"] or "")
                or message in status[name]["conditions"]["Ready"]["message"]
                for name, message in expected.items()
            )

        _wait(settled, "every broken secret reported")
        result = ok(run("certctl", "services", "status", env=env))
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert result.stdout.splitlines()[0].split() == [
        "NAME", "READY", "RENEWING", "FAILED", "SERIAL", "NOT", "AFTER", "NEXT", "RENEWAL",
        "MESSAGE",
    ]  # fmt: skip
    c7 = lines["c7"].split()
    assert c7[5].endswith("Z"), c7  # NOT AFTER, in UTC
    assert c7[5][:4].isdigit(), c7
    for case in LIVE_CASES:
        name = names[case]
        line = lines[name]
        assert line.split()[1:4] == ["True", "False", "True"], line
        assert ERRORS[case].format(s=name) in line, line
        assert snapshot(out / name) == before[name], case
    warned = lines[names["sans do not cover"]]
    assert warned.split()[1:4] == ["True", "False", "False"], warned
    assert WARNING.format(s=names["sans do not cover"]) in warned
    assert lines["c7"].split()[1:4] == ["True", "False", "False"]
    assert snapshot(out / "c7") == before["c7"]


def test_custom_certificate_without_ca_crt(env: Env, tmp_path: Path) -> None:
    # ECK's own example: a self-signed tls.crt, no ca.crt. It is its own trust anchor.
    key = tmp_path / "tls.key"
    crt = tmp_path / "tls.crt"
    sans = "subjectAltName=DNS:web,DNS:web.example.internal"
    openssl_req(key, crt, "/CN=web", "-days", "30", "-addext", sans, x509=True)
    write_secret(
        env.secrets_dir, "custom", {"tls.crt": crt.read_bytes(), "tls.key": key.read_bytes()}
    )
    env.put(service_doc("web", dns=NAMES, secret="custom"))
    row = env.reconcile("web", datetime.now(UTC))
    assert row.conditions["Ready"]["message"] == "serving", row.conditions
    assert env.outputs("web")["certs-internal"]["ca.crt"] == crt.read_bytes()
    # Issued by a CA that is not given: served, with a warning naming that CA, and no
    # ca.crt in the outputs (it was an empty one, which nginx and Java refuse to load).
    _ca, files = good_files(env.now)
    del files["ca.crt"]
    write_secret(env.secrets_dir, "custom", files)
    row = env.reconcile("web", env.now + timedelta(minutes=1))
    assert row.conditions["Ready"]["status"] is True
    assert (
        "secret custom has no ca.crt: targets get none, so clients must trust the issuer of "
        "tls.crt (CN=web-custom-ca) some other way" in row.conditions["Ready"]["message"]
    )
    assert set(env.outputs("web")["certs-internal"]) == {"tls.crt", "tls.key"}
    assert set(env.outputs("web")["certs-public"]) == {"tls.crt"}
    # An empty ca.crt (cert-manager writes one when its issuer does not know the CA) is no
    # ca.crt, as for ECK; it was refused with "not a recognised PEM", naming no file.
    write_secret(env.secrets_dir, "custom", {**files, "ca.crt": b"\n"})
    row = env.reconcile("web", env.now + timedelta(minutes=1))
    assert row.conditions["Failed"]["status"] is False, row.conditions
    assert "secret custom has no ca.crt" in row.conditions["Ready"]["message"]


def _openssl_pki(tmp: Path, root_config: str, leaf_ext: str) -> dict[str, bytes]:
    """A root, an intermediate and a leaf made with the openssl commands users copy.

    ``root_config``: the root's x509_extensions section; ``leaf_ext``: the leaf's -extfile.
    """
    conf = tmp / "root.cnf"
    conf.write_text(f"[req]\ndistinguished_name=dn\nx509_extensions=v3\n[dn]\n[v3]\n{root_config}")
    (tmp / "int.ext").write_text(
        "basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
    )
    (tmp / "leaf.ext").write_text(leaf_ext)
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=My Root",
         "-config", conf, "-keyout", tmp / "root.key", "-out", tmp / "root.crt"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=My Issuing CA",
         "-keyout", tmp / "int.key", "-out", tmp / "int.csr"],
        ["x509", "-req", "-in", tmp / "int.csr", "-CA", tmp / "root.crt", "-CAkey",
         tmp / "root.key", "-set_serial", "2", "-days", "20", "-extfile", tmp / "int.ext",
         "-out", tmp / "int.crt"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=web",
         "-keyout", tmp / "tls.key", "-out", tmp / "leaf.csr"],
        ["x509", "-req", "-in", tmp / "leaf.csr", "-CA", tmp / "int.crt", "-CAkey",
         tmp / "int.key", "-set_serial", "3", "-days", "10", "-extfile", tmp / "leaf.ext",
         "-out", tmp / "leaf.crt"],
    ):  # fmt: skip
        ok(run("openssl", *args))
    return {
        "tls.crt": (tmp / "leaf.crt").read_bytes() + (tmp / "int.crt").read_bytes(),
        "tls.key": (tmp / "tls.key").read_bytes(),
        "ca.crt": (tmp / "root.crt").read_bytes(),
    }


@pytest.mark.parametrize(
    ("root_config", "leaf_ext"),
    [
        # openssl.cnf's v3_ca, what `openssl req -x509` gives: no keyUsage.
        (
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always,issuer\n"
            "basicConstraints=critical,CA:true\n",
            "subjectAltName=DNS:web,DNS:web.example.internal\n",
        ),
        # basicConstraints not critical, and a leaf without authorityKeyIdentifier.
        (
            "basicConstraints=CA:true\nkeyUsage=keyCertSign,cRLSign\n",
            "subjectAltName=DNS:web,DNS:web.example.internal\n"
            "authorityKeyIdentifier=none\nsubjectKeyIdentifier=none\n",
        ),
    ],
    ids=["root-without-keyUsage", "lax-criticality-no-aki"],
)
def test_a_custom_certificate_openssl_verifies_is_served(
    env: Env, tmp_path: Path, root_config: str, leaf_ext: str
) -> None:
    # ECK serves what the secret holds; certctl checks that ca.crt verifies tls.crt, and
    # refused these chains with "invalid extension: 2.5.29.15: Certificate is missing
    # required extension", rules of the web PKI that openssl, Java and Go do not apply.
    files = _openssl_pki(tmp_path, root_config, leaf_ext)
    write_secret(env.secrets_dir, "custom", files)
    env.put(service_doc("web", dns=NAMES, secret="custom"))
    row = env.reconcile("web", datetime.now(UTC))
    assert row.conditions["Ready"]["message"] == "serving", row.conditions
    served = env.outputs("web")["certs-internal"]
    for name, data in served.items():
        (tmp_path / f"served-{name}").write_bytes(data)
    ok(run("openssl", "verify", "-CAfile", tmp_path / "served-ca.crt", "-untrusted",
           tmp_path / "served-tls.crt", "-verify_hostname", "web.example.internal",
           tmp_path / "served-tls.crt"))  # fmt: skip
    # A chain openssl refuses is still refused: the leaf without its intermediate.
    write_secret(
        env.secrets_dir, "custom", {**files, "tls.crt": (tmp_path / "leaf.crt").read_bytes()}
    )
    row = env.reconcile("web", env.now + timedelta(minutes=1))
    assert "ca.crt does not verify tls.crt (CN=My Issuing CA" in row.conditions["Failed"]["message"]


def test_public_outputs_answer_while_a_switch_to_self_signed_waits_for_its_reconcile(
    env: Env,
) -> None:
    # Until the next pass the row holds the custom certificate, still served: its outputs.
    _, files = good_files(env.now)
    write_secret(env.secrets_dir, "custom", files)
    env.put(service_doc("web", dns=NAMES, secret="custom"))
    env.reconcile("web")
    env.put(service_doc("web", dns=NAMES))
    with env.client() as client:
        response = client.get("/api/v1/services/web/outputs/certs-public")
        assert response.status_code == 200, response.text  # was 404 "issuer svc.web not found"
        assert response.json()["data"] == {
            "tls.crt": files["tls.crt"].decode(),
            "ca.crt": files["ca.crt"].decode(),
        }
        env.reconcile("web", env.now + timedelta(minutes=1))
        switched = client.get("/api/v1/services/web/outputs/certs-public").json()["data"]
    assert switched["tls.crt"] != files["tls.crt"].decode()
    # The custom certificate's CA after the service's own, while servers not reloaded yet
    # may still present that certificate (test_a_replaced_custom_ca_stays_in_ca_crt_...).
    service_ca = env.outputs("web")["ca-internal"]["ca.crt"]
    assert switched["ca.crt"] == (service_ca + files["ca.crt"]).decode()


def test_a_chain_without_ca_crt_reaches_a_directory_without_ca_crt(
    env: Env, tmp_path: Path
) -> None:
    # cert-manager with a public issuer: tls.crt is leaf + intermediate, no ca.crt. The target
    # gets no ca.crt (not an empty one, nor the intermediate as a would-be anchor); a client
    # trusting the root it already has verifies what is served.
    files = _openssl_pki(tmp_path, "basicConstraints=critical,CA:true\n",
                         "subjectAltName=DNS:web,DNS:web.example.internal\n")  # fmt: skip
    root = files.pop("ca.crt")
    write_secret(env.secrets_dir, "custom", files)
    target = tmp_path / "target"
    env.put(service_doc("web", dns=NAMES, secret="custom", targets=[{"directory": str(target)}]))
    row = env.reconcile("web", datetime.now(UTC))
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert "issuer of tls.crt (CN=My Root)" in row.conditions["Ready"]["message"]
    assert sorted(p.name for p in target.iterdir()) == ["tls.crt", "tls.key"]
    (tmp_path / "root.pem").write_bytes(root)
    ok(run("openssl", "verify", "-CAfile", tmp_path / "root.pem", "-untrusted",
           target / "tls.crt", "-verify_hostname", "web.example.internal", "-purpose",
           "sslserver", target / "tls.crt"))  # fmt: skip


def test_a_custom_ca_given_without_its_root_is_served_with_the_leaf(
    env: Env, tmp_path: Path
) -> None:
    # ca.crt + ca.key holding an intermediate and not its root: targets got tls.crt = the
    # leaf alone, so a client trusting the root (what it has) could not build the chain, and
    # the ca.crt they got (the intermediate) is no anchor OpenSSL clients accept. As ECK
    # (its tls.crt is the leaf and its CA) the intermediate is now served after the leaf,
    # and the status says that ca.crt lacks the root.
    files = _openssl_pki(tmp_path, "basicConstraints=critical,CA:true\n",
                         "subjectAltName=DNS:web\n")  # fmt: skip
    intermediate, root = (tmp_path / "int.crt").read_bytes(), files["ca.crt"]
    issuer = {"ca.crt": intermediate, "ca.key": (tmp_path / "int.key").read_bytes()}
    write_secret(env.secrets_dir, "issuer", issuer)
    target = tmp_path / "target"
    env.put(service_doc("web", dns=NAMES, secret="issuer", targets=[{"directory": str(target)}]))
    row = env.reconcile("web", datetime.now(UTC))
    assert row.conditions["Ready"]["status"] is True, row.conditions
    assert (
        "secret issuer: the CA's chain in ca.crt ends with CN=My Issuing CA, which is not "
        "self-signed" in row.conditions["Ready"]["message"]
    )
    (tmp_path / "root.pem").write_bytes(root)
    verify = ("openssl", "verify", "-CAfile", tmp_path / "root.pem", "-untrusted",
              target / "tls.crt", "-verify_hostname", "web.example.internal", "-purpose",
              "sslserver", target / "tls.crt")  # fmt: skip
    ok(run(*verify))
    # Its negative twin: the root of another PKI verifies nothing here.
    other = make_ca("My Root", env.now)
    (tmp_path / "other.pem").write_bytes(other.cert_pem)
    refused = run(*verify[:3], tmp_path / "other.pem", *verify[4:])
    assert refused.returncode != 0, refused.stdout
    # The intermediate's issuer is not found: the other root has the same name, not the key.
    assert "error 20 at 1 depth lookup: unable to get local issuer certificate" in refused.stderr

    # The root added after the intermediate: ca.crt becomes the root, the leaf stays.
    write_secret(env.secrets_dir, "issuer", {**issuer, "ca.crt": intermediate + root})
    again = env.reconcile("web", env.now + timedelta(minutes=1))
    assert again.serial == row.serial
    assert again.conditions["Ready"]["message"] == "serving", again.conditions
    assert (target / "ca.crt").read_bytes() == certs_to_pem(x509.load_pem_x509_certificates(root))
    ok(run("openssl", "verify", "-CAfile", target / "ca.crt", "-untrusted", target / "tls.crt",
           "-verify_hostname", "web.example.internal", target / "tls.crt"))  # fmt: skip
    assert env.reconcile("web", env.now + timedelta(minutes=1)).serial == row.serial
    # Its owner renews the intermediate (same key): served from the next pass, leaf kept.
    ok(run("openssl", "x509", "-req", "-in", tmp_path / "int.csr", "-CA", tmp_path / "root.crt",
           "-CAkey", tmp_path / "root.key", "-set_serial", "4", "-days", "25", "-extfile",
           tmp_path / "int.ext", "-out", tmp_path / "int2.crt"))  # fmt: skip
    renewed = (tmp_path / "int2.crt").read_bytes()
    write_secret(env.secrets_dir, "issuer", {**issuer, "ca.crt": renewed + root})
    assert env.reconcile("web", env.now + timedelta(minutes=1)).serial == row.serial
    served = x509.load_pem_x509_certificates((target / "tls.crt").read_bytes())
    assert served[1:] == x509.load_pem_x509_certificates(renewed)


def test_a_ca_crt_with_more_roots_is_a_trust_bundle_not_a_chain(env: Env) -> None:
    # ca.crt + ca.key where ca.crt is the CA, then another root clients are to keep
    # trusting (a bundle, as while moving from one root to another). The certificates after
    # the CA were all taken for its chain: the other root became "the root", targets got it
    # alone as ca.crt and the CA itself after the leaf, so nothing verified the leaf.
    target = env.tmp / "out" / "web"
    target.parent.mkdir()
    ca, files = good_ca_files(env.now)
    other = make_ca("web-previous-root", env.now)
    write_secret(env.secrets_dir, "issuer", {**files, "ca.crt": ca.cert_pem + other.cert_pem})
    env.put(service_doc("web", dns=NAMES, secret="issuer", targets=[{"directory": str(target)}]))
    row = env.reconcile("web")
    assert row.conditions["Ready"]["message"] == "serving", row.conditions
    assert (target / "ca.crt").read_bytes() == ca.cert_pem + other.cert_pem  # the bundle
    assert (target / "tls.crt").read_bytes() == row.certificate_pem.encode()  # leaf alone
    at = ("-attime", str(int(env.now.timestamp())))
    assert openssl_verify(*at, "-CAfile", target / "ca.crt", target / "tls.crt") == "OK"
    # Unchanged at the next pass; the extra root taken out: ca.crt follows, same leaf.
    assert env.reconcile("web", env.now + timedelta(minutes=1)).serial == row.serial
    write_secret(env.secrets_dir, "issuer", files)
    assert env.reconcile("web", env.now + timedelta(minutes=1)).serial == row.serial
    assert (target / "ca.crt").read_bytes() == ca.cert_pem
    # The CA is the certificate of ca.key wherever ca.crt has it (it was refused unless first).
    write_secret(env.secrets_dir, "issuer", {**files, "ca.crt": other.cert_pem + ca.cert_pem})
    assert env.reconcile("web", env.now + timedelta(minutes=1)).serial == row.serial
    assert (target / "ca.crt").read_bytes() == ca.cert_pem + other.cert_pem

    # A served certificate's ca.crt (tls.crt + tls.key) was a bundle already: every
    # certificate in it is an anchor, in verification and in what targets get.
    leaf = make_leaf(ca, "web", env.now, dns=("web", *NAMES))
    bundle = other.cert_pem + ca.cert_pem
    write_secret(env.secrets_dir, "own", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem,
                                          "ca.crt": bundle})  # fmt: skip
    env.put(service_doc("web", dns=NAMES, secret="own", targets=[{"directory": str(target)}]))
    env.reconcile("web", env.now + timedelta(minutes=1))
    assert (target / "ca.crt").read_bytes() == bundle
    assert openssl_verify(*at, "-CAfile", target / "ca.crt", target / "tls.crt") == "OK"


def test_a_pass_that_changes_nothing_writes_nothing_and_keeps_the_condition_times(
    env: Env,
) -> None:
    # A custom certificate's secret is read on every scheduler pass (10 s). The conditions'
    # "at" was rewritten by each, one UPDATE per pass per such service, and no longer said
    # when a condition changed: it is now when its status or message last changed. And a
    # secret that did not change is not reconciled again: each used to cost ~2 ms of CPU and
    # five statements a pass, 20 % of a core for 1,000 such services.
    from sqlalchemy import event

    from certctl.server.scheduler import Scheduler

    _ca, files = good_files(env.now)
    write_secret(env.secrets_dir, "custom", files)
    env.put(service_doc("web", dns=NAMES, secret="custom"))
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 1
    first = env.row("web")
    assert first.conditions["Ready"]["at"] == env.now.isoformat()
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(env.services.engine, "before_cursor_execute", record)
    try:
        for _ in range(2):
            env.at(env.now + timedelta(seconds=10))
            assert scheduler.tick() == 0  # the secret is read, unchanged: no reconcile
    finally:
        event.remove(env.services.engine, "before_cursor_execute", record)
    # One statement a pass: the list of services. No write, not even the write lock.
    assert len(statements) == 2, statements
    assert all(s.startswith("SELECT managed_services.") for s in statements), statements
    assert env.row("web").conditions == first.conditions

    # A change moves the time of the conditions that changed, and only theirs.
    del files["ca.crt"]
    write_secret(env.secrets_dir, "custom", files)
    later = env.at(env.now + timedelta(seconds=10))
    assert scheduler.tick() == 1
    conditions = env.row("web").conditions
    assert conditions["Ready"]["message"].startswith("secret custom has no ca.crt")
    assert conditions["Ready"]["at"] == later.isoformat()
    assert conditions["Failed"] == first.conditions["Failed"]
    assert conditions["Renewing"] == first.conditions["Renewing"]


def _k8s_volume_version(secret: Path, version: str, files: dict[str, bytes]) -> None:
    """Publish ``files`` as a Kubernetes Secret volume does.

    A new ``..<version>`` directory, then ``..data`` swapped to it by a rename; the names read
    stay links into ``..data``: neither they nor the secret directory change.
    """
    directory = secret / f"..{version}"
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
        os.utime(directory / name, (0, 0))  # same times each version: only the bytes differ
    (secret / "..data_tmp").symlink_to(directory.name)
    os.replace(secret / "..data_tmp", secret / "..data")
    for name in files:
        if not (secret / name).is_symlink():
            (secret / name).symlink_to(f"..data/{name}")


def test_a_custom_secret_is_reconciled_again_only_when_it_or_the_time_says_so(env: Env) -> None:
    from certctl.server.scheduler import Scheduler

    ca = make_ca("web-custom-ca", env.now)
    leaf = make_leaf(ca, "web", env.now, dns=("web", *NAMES), validity=timedelta(hours=2))
    secret = env.secrets_dir / "custom"
    _k8s_volume_version(
        secret, "v1", {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}
    )
    target = env.tmp / "out"
    reloaded = {"directory": str(target), "reload": "true"}
    env.put(service_doc("web", dns=NAMES, secret="custom", targets=[reloaded]))
    during_reload: list[dict[str, bytes]] = []  # what the next reload publishes

    def reload(_command: str, _timeout: float) -> None:
        if during_reload:
            _k8s_volume_version(secret, "v6", during_reload.pop())

    settings = env.settings_with(reload_runner=reload)
    scheduler = Scheduler(env.services, settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 1
    serial = env.row("web").serial
    step = timedelta(seconds=10)
    env.at(env.now + step)
    assert scheduler.tick() == 0  # unchanged

    # The `..data` swap of a Kubernetes Secret volume: picked up at the next pass.
    renewed = make_leaf(ca, "web", env.now, dns=("web", *NAMES), validity=timedelta(hours=2))
    files = {"tls.crt": renewed.cert_pem, "tls.key": renewed.key_pem, "ca.crt": ca.cert_pem}
    _k8s_volume_version(secret, "v2", files)
    env.at(env.now + step)
    assert scheduler.tick() == 1
    assert (target / "tls.crt").read_bytes() == renewed.cert_pem
    assert env.row("web").serial != serial
    env.at(env.now + step)
    assert scheduler.tick() == 0

    # Unreadable: reported at the next pass, as before; fixed, served again after the back-off.
    _k8s_volume_version(secret, "v3", {"tls.key": renewed.key_pem, "ca.crt": ca.cert_pem})
    os.mkfifo(secret / "..v3" / "tls.crt")
    env.at(env.now + step)
    assert scheduler.tick() == 1
    failed = env.row("web").conditions["Failed"]
    assert failed["message"] == "secret custom: tls.crt is not a regular file", failed
    _k8s_volume_version(secret, "v4", files)
    env.at(env.now + step)
    assert scheduler.tick() == 1
    assert env.row("web").conditions["Ready"]["message"] == "serving"
    env.at(env.now + step)
    assert scheduler.tick() == 0

    # Changed while its reconcile runs (here by the target's reload, after a first change):
    # the secret was read before that reconcile, so the next pass sees the second change.
    fresh = make_leaf(ca, "web", env.now, dns=("web", *NAMES), validity=timedelta(hours=2))
    during_reload.append({"tls.crt": fresh.cert_pem, "tls.key": fresh.key_pem})
    renewed = make_leaf(ca, "web", env.now, dns=("web", *NAMES), validity=timedelta(hours=2))
    files = {"tls.crt": renewed.cert_pem, "tls.key": renewed.key_pem, "ca.crt": ca.cert_pem}
    _k8s_volume_version(secret, "v5", files)
    env.at(env.now + step)
    assert scheduler.tick() == 1
    assert not during_reload  # published during that reconcile
    env.at(env.now + step)
    assert scheduler.tick() == 1
    assert (target / "tls.crt").read_bytes() == fresh.cert_pem
    env.at(env.now + step)
    assert scheduler.tick() == 0

    # A target deleted by hand: back at the resync, as for every other service.
    target.unlink()  # the link to the files delivered
    env.at(env.now + step)
    assert scheduler.tick() == 0
    assert not target.exists()
    env.at(env.now + service_schedule.RESYNC_INTERVAL)
    assert scheduler.tick() == 1
    assert (target / "tls.crt").read_bytes() == fresh.cert_pem

    # Time alone changes what the same secret means: within cert-rotate-before (30 min)
    # "expiring" is sent, past its notAfter the service fails; each at the first pass after.
    not_after = fresh.certificate.not_valid_after_utc
    for boundary in (not_after - SETTINGS["cert_rotate_before"], not_after):
        env.at(boundary - timedelta(minutes=5))
        scheduler.tick()  # a resync (over 10 minutes since the last pass), to start from
        env.at(boundary - step / 2)
        assert scheduler.tick() == 0
        assert env.row("web").conditions["Failed"]["status"] is False
        if boundary < not_after:
            assert "expiring" not in [e.event for e in env.events("web")]
        env.at(boundary + step / 2)
        assert scheduler.tick() == 1
    assert [e.event for e in env.events("web")].count("expiring") == 1
    failed = env.row("web").conditions["Failed"]
    assert failed["message"].startswith("secret custom: tls.crt expired on "), failed


def test_a_new_leader_reads_every_custom_secret_then_spreads_their_resyncs(env: Env) -> None:
    # It has no memory of what the secrets held: each is reconciled in its first pass. Their
    # resyncs, counted from that pass, then all fell in one pass every 10 minutes (1,000
    # services: 2 s of CPU in one pass); they spread over the interval as other services'.
    from certctl.server.scheduler import Scheduler

    _ca, files = good_files(env.now)
    write_secret(env.secrets_dir, "custom", files)
    names = [f"web-{i:02}" for i in range(12)]
    for name in names:
        env.put(service_doc(name, secret="custom"))
    assert Scheduler(env.services, env.settings, 10, clock=lambda: env.now).tick() == 12
    start = env.at(env.now + timedelta(hours=1))
    scheduler = Scheduler(env.services, env.settings, 10, clock=lambda: env.now)
    assert scheduler.tick() == 12
    env.at(env.now + timedelta(seconds=10))
    assert scheduler.tick() == 0
    per_tick = []
    end = start + service_schedule.RESYNC_INTERVAL
    while env.now < end:
        env.at(min(env.now + timedelta(seconds=30), end))
        per_tick.append(scheduler.tick())
    assert sum(per_tick) == 12, per_tick  # each resynced once within the interval
    assert max(per_tick) <= 4, per_tick
    assert set(scheduler._passes) == set(names)
