"""IP address identifiers (RFC 8738) against certbot's ``acme`` library, on both stores.

The app and the http-01 responder (on 127.0.0.1) are test_acme.py's: an order for 127.0.0.1
is validated by a GET to ``http://127.0.0.1:PORT/.well-known/acme-challenge/TOKEN``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from acme import challenges, client, crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests._tools import ok, run
from tests.api.conftest import Api
from tests.api.test_acme import (
    ERR,
    ISSUER,
    NAME,
    Acme,
    Http01Server,
    Raw,
    _acme_app,
    _assert_acme_problem,
    _business,
    _poll_authz,
    serving,
)
from tests.api.test_acme import acme_on as acme_on  # the fixture, shared

IP = "127.0.0.1"
LOOPBACK = ipaddress.IPv4Address(IP)


def _key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ip_order(
    acme_on: Acme, acme_client: client.ClientV2, names: list[str], ips: list[str]
) -> tuple[messages.OrderResource, bytes]:
    pem = _key_pem()
    addresses = [ipaddress.ip_address(ip) for ip in ips]
    csr = crypto_util.make_csr(pem, names, ipaddrs=addresses)
    return acme_client.new_order(csr), pem


def _raw_order(raw: Raw, identifiers: list[dict[str, str]]) -> Any:
    url = f"{raw.acme.base}/acme/new-order"
    return raw.post("new-order", raw.jws(url, {"identifiers": identifiers}))


def _ready(acme_on: Acme, acme_client: client.ClientV2, order: messages.OrderResource) -> None:
    acme_on.answer(acme_client, order)
    for authz in order.authorizations:
        assert _poll_authz(acme_client, authz).body.status == messages.STATUS_VALID


def test_an_ip_address_is_proved_by_http01_alone_and_issued_as_an_ip_san(
    acme_on: Acme, tmp_path: Path
) -> None:
    api = acme_on.api
    acme_client = acme_on.client()
    regr = acme_on.register(acme_client)
    account = regr.uri.rsplit("/", 1)[1]
    order, _ = _ip_order(acme_on, acme_client, [NAME], [IP])
    identifiers = {(i.typ.name, i.value) for i in order.body.identifiers}
    assert identifiers == {("dns", NAME), ("ip", IP)}
    by_type = {a.body.identifier.typ.name: a.body for a in order.authorizations}
    assert by_type["ip"].identifier.value == IP
    # dns-01 is not defined for an address (RFC 8738 7): http-01 only; the name has both.
    assert [type(c.chall) for c in by_type["ip"].challenges] == [challenges.HTTP01]
    assert [type(c.chall) for c in by_type["dns"].challenges] == [
        challenges.HTTP01,
        challenges.DNS01,
    ]
    _ready(acme_on, acme_client, order)
    done = acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [LOOPBACK]
    assert san.get_values_for_type(x509.DNSName) == [NAME]
    ca = tmp_path / "ca.pem"
    ca.write_text(api.get(f"/api/v1/issuers/{ISSUER}/ca.pem").text)
    cert = tmp_path / "leaf.pem"
    cert.write_text(done.fullchain_pem)
    ok(run("openssl", "verify", "-CAfile", ca, cert))
    assert f"IP Address:{IP}" in ok(run("openssl", "x509", "-in", cert, "-noout", "-text")).stdout
    # The audit log names the address: the order, and its authorization's validation.
    events = [e for e in api.audit() if e["actor"] == f"acme:{account}"]
    (created,) = [e for e in events if e["action"] == "acme.order.create"]
    assert created["detail"] == f"{NAME}, {IP}"
    validated = [e["target"] for e in events if e["action"] == "acme.challenge.validate"]
    assert any(target.endswith(f" {IP}") for target in validated), validated
    listed = api.get("/api/v1/certificates", api.admin_key, params={"issuer": ISSUER}).json()
    assert [c["sans"]["ip"] for c in listed["items"]] == [[IP]]
    # Another account proving the address (and the name) may revoke it (RFC 8555 7.6).
    other = acme_on.client()
    acme_on.register(other)
    again, _ = _ip_order(acme_on, other, [NAME], [IP])
    _ready(acme_on, other, again)
    other.revoke(leaf, 5)  # cessationOfOperation: keyCompromise takes the key (blocked keys)
    assert leaf.serial_number in api.openssl_crl_serials(ISSUER, tmp_path)


def test_an_ip_order_is_refused_dns01_and_a_csr_naming_the_address_as_cn_gets_no_cn(
    acme_on: Acme,
) -> None:
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, _ = _ip_order(acme_on, acme_client, [], [IP])
    _ready(acme_on, acme_client, order)
    # lego's CSR: the first identifier as CN, the address too. It stands for the address and
    # is left out of the certificate (an address is no name).
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, IP)]))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    order = order.update(csr_pem=csr.public_bytes(serialization.Encoding.PEM))
    done = acme_client.finalize_order(order, datetime.now() + timedelta(seconds=30))
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.IPAddress(LOOPBACK)]


def test_an_address_only_in_the_csrs_cn_is_a_bad_csr(acme_on: Acme) -> None:
    # The CN is left out of the certificate (an address is no name): an address named there
    # alone would be in no field of it, the order valid all the same.
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, _ = _ip_order(acme_on, acme_client, [NAME], [IP])
    _ready(acme_on, acme_client, order)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, IP)])
    san = x509.SubjectAlternativeName([x509.DNSName(NAME)])
    deadline = datetime.now() + timedelta(seconds=5)
    for extensions in ([san], []):
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        csr = builder.sign(key, hashes.SHA256())
        before = acme_on.api.counts()
        wrong = order.update(csr_pem=csr.public_bytes(serialization.Encoding.PEM))
        with pytest.raises(messages.Error) as info:
            acme_client.finalize_order(wrong, deadline)
        assert info.value.typ == ERR + "badCSR"
        assert info.value.detail == (
            f"the CSR names {IP} as its CN alone; an address is issued as an IP SAN: add it "
            "to the subjectAltName"
        ), info.value.detail
        assert _business(acme_on.api.counts()) == _business(before)
    assert acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))


def test_a_csr_with_an_extra_or_a_missing_ip_san_is_a_bad_csr(acme_on: Acme) -> None:
    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, pem = _ip_order(acme_on, acme_client, [NAME], [IP])
    _ready(acme_on, acme_client, order)
    deadline = datetime.now() + timedelta(seconds=5)
    extra = [ipaddress.ip_address(IP), ipaddress.ip_address("10.0.0.5")]
    cases = [
        ([NAME], extra, "names 10.0.0.5 not in the order"),
        ([NAME], [], f"leaves out {IP}"),
        # The address as a DNS SAN is no IP SAN: the name is extra, the address left out.
        ([NAME, IP], [], f"names {IP} not in the order and leaves out {IP}"),
    ]
    for names, ips, said in cases:
        before = acme_on.api.counts()
        wrong = order.update(csr_pem=crypto_util.make_csr(pem, names, ipaddrs=ips))
        with pytest.raises(messages.Error) as info:
            acme_client.finalize_order(wrong, deadline)
        assert info.value.typ == ERR + "badCSR"
        assert info.value.detail == f"the CSR {said}", info.value.detail
        assert _business(acme_on.api.counts()) == _business(before)
    right = order.update(csr_pem=crypto_util.make_csr(pem, [NAME], ipaddrs=extra[:1]))
    assert acme_client.finalize_order(right, datetime.now() + timedelta(seconds=30)).fullchain_pem


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("010.0.0.1", "010.0.0.1: not an IP address as RFC 8738 writes one"),
        ("10.0.0.1.", "10.0.0.1.: not an IP address as RFC 8738 writes one"),
        ("10.0.0.0/8", "10.0.0.0/8: not an IP address as RFC 8738 writes one"),
        ("FD00::1", "FD00::1: give IP addresses in their canonical text form (fd00::1)"),
        ("fd00:0::0001", "fd00:0::0001: give IP addresses in their canonical text form (fd00::1)"),
        (
            "0:0:0:0:0:0:0:1",
            "0:0:0:0:0:0:0:1: give IP addresses in their canonical text form (::1)",
        ),
        ("fe80::1%eth0", "fe80::1%eth0: an IPv6 scope (%zone) is no part of an address"),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1: an IPv4-mapped address; give the IPv4 address "),
        ("0.0.0.0", "0.0.0.0: not the address of one host"),
        ("ff02::1", "ff02::1: not the address of one host"),
    ],
)
def test_an_ip_identifier_not_in_canonical_form_is_refused(
    acme_on: Acme, value: str, said: str
) -> None:
    raw = Raw(acme_on)
    raw.register()
    before = acme_on.api.counts()
    refused = _raw_order(raw, [{"type": "ip", "value": value}])
    detail = _assert_acme_problem(refused, 400, "rejectedIdentifier")["detail"]
    assert detail.startswith(said), detail
    assert _business(acme_on.api.counts()) == _business(before)


def test_an_address_in_a_dns_identifier_is_refused_saying_to_order_it_as_ip(
    acme_on: Acme,
) -> None:
    # As before IP identifiers were taken (rejectedIdentifier), now saying what to send.
    raw = Raw(acme_on)
    raw.register()
    before = acme_on.api.counts()
    # The identifier to send instead is given as it would be taken: canonical (RFC 8738 3).
    for value, canonical in (("10.0.0.1", "10.0.0.1"), ("::1", "::1"), ("FD00:0::5", "fd00::5")):
        refused = _raw_order(raw, [{"type": "dns", "value": value}])
        detail = _assert_acme_problem(refused, 400, "rejectedIdentifier")["detail"]
        assert detail.startswith(
            f'{value}: an IP address; order it as {{"type": "ip", "value": "{canonical}"}}'
        ), detail
    assert _business(acme_on.api.counts()) == _business(before)


def test_allowed_names_allow_addresses_by_network_and_names_by_pattern_never_across(
    api: Api,
) -> None:
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    allowed = ("10.0.0.0/8", "fd00::/8", "192.0.2.7", "*.example.internal")
    app, settings = _acme_app(api, 80, allowed_names=allowed)
    with serving(app) as base:
        raw = Raw(Acme(api, base, Http01Server(), settings))
        try:
            raw.register()
            for ip in ("10.1.2.3", "fd00::5", "192.0.2.7"):
                made = _raw_order(raw, [{"type": "ip", "value": ip}])
                assert made.status_code == 201, made.text
                assert made.json()["identifiers"] == [{"type": "ip", "value": ip}]
            mixed = [
                {"type": "ip", "value": "10.0.0.5"},
                {"type": "dns", "value": "a.example.internal"},
            ]
            made = _raw_order(raw, mixed)
            assert made.status_code == 201, made.text
            assert made.json()["identifiers"] == mixed
            before = api.counts()
            for ip in ("192.0.2.8", "11.0.0.1", "fe80::1", "::ffff:a00:1"):
                refused = _raw_order(raw, [{"type": "ip", "value": ip}])
                detail = _assert_acme_problem(refused, 400, "rejectedIdentifier")["detail"]
                if ip.startswith("::ffff"):
                    continue  # refused as IPv4-mapped, before the patterns
                assert detail == (
                    f"{ip}: not among the addresses this server issues for (acme.allowed-names: "
                    "add the address or a network holding it)"
                ), detail
            assert _business(api.counts()) == _business(before)
        finally:
            raw.acme.http01.close()
    # Names only: no address is allowed, whatever the names.
    app, settings = _acme_app(api, 80, allowed_names=("*.example.internal", "localhost"))
    with serving(app) as base:
        raw = Raw(Acme(api, base, Http01Server(), settings))
        try:
            raw.register()
            refused = _raw_order(raw, [{"type": "ip", "value": IP}])
            detail = _assert_acme_problem(refused, 400, "rejectedIdentifier")["detail"]
            assert "acme.allowed-names" in detail
        finally:
            raw.acme.http01.close()


def test_an_address_dropped_from_allowed_names_is_refused_at_finalize(api: Api) -> None:
    # acme.allowed-names narrowed (and the server restarted) after an order of an address was
    # validated: it holds at finalize too, as for names.
    r = api.post("/api/v1/issuers", api.admin_key, json={"id": ISSUER})
    assert r.status_code == 201, r.text
    http01 = Http01Server()
    app, settings = _acme_app(api, http01.port, allowed_names=("127.0.0.0/8",))
    try:
        with serving(app) as base:
            acme_on = Acme(api, base, http01, settings)
            acme_client = acme_on.client()
            acme_on.register(acme_client)
            order, _ = _ip_order(acme_on, acme_client, [], [IP])
            _ready(acme_on, acme_client, order)
            app.app.state.acme = replace(settings, allowed_names=("10.0.0.0/8", NAME))
            before = api.counts()["certificates"]
            with pytest.raises(messages.Error) as info:
                acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
            assert info.value.typ == ERR + "rejectedIdentifier"
            assert info.value.detail.startswith(f"{IP}: no longer among"), info.value.detail
            assert api.counts()["certificates"] == before
    finally:
        http01.close()


def test_an_order_of_an_address_may_replace_the_certificate_of_that_address(
    acme_on: Acme,
) -> None:
    # RFC 9773 5 with RFC 8738: the certificate of 127.0.0.1 alone shares its address with
    # the order, as a name's shares its name.
    from tests.api.test_acme_renewal_info import cert_id

    acme_client = acme_on.client()
    acme_on.register(acme_client)
    order, _ = _ip_order(acme_on, acme_client, [], [IP])
    _ready(acme_on, acme_client, order)
    done = acme_client.poll_and_finalize(order, datetime.now() + timedelta(seconds=30))
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    raw = Raw(acme_on, key=acme_client.net.key)
    raw.kid = acme_client.net.account.uri
    payload = {"identifiers": [{"type": "ip", "value": IP}], "replaces": cert_id(leaf)}
    r = raw.post("new-order", raw.jws(f"{acme_on.base}/acme/new-order", payload))
    assert r.status_code == 201, r.text
    # Another address shares nothing with it.
    payload["identifiers"] = [{"type": "ip", "value": "127.0.0.2"}]
    r = raw.post("new-order", raw.jws(f"{acme_on.base}/acme/new-order", payload))
    assert "no name in common" in _assert_acme_problem(r, 400, "malformed")["detail"]
