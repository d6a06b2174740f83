"""dns-01 (RFC 8555 8.4) against certbot's ``acme`` library, with a real BIND 9 holding the TXT.

The app and the client are test_acme.py's; the records are set in a zone of a ``named`` on
127.0.0.1 by TSIG-signed RFC 2136 updates, as DNS providers set them, and certctl resolves
them there (``acme.dns-resolvers``). Both stores, as every API test.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import josepy as jose
import pytest
from acme import challenges, client, crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certctl.services.acme_validation import dns01_digest
from certctl.store.models import AcmeChallenge
from tests._bind9 import Bind9, running_bind9
from tests._tools import ok, run
from tests.api.conftest import Api
from tests.api.test_acme import (
    ERR,
    ISSUER,
    Acme,
    Http01Server,
    _acme_app,
    _business,
    _poll_authz,
    serving,
)

ZONE = "test.example"
NAME = f"app.{ZONE}"


@dataclass
class Dns01(Acme):
    """test_acme's ``Acme`` with a zone its clients set dns-01 records in."""

    bind9: Bind9 | None = None

    def dns_challenge(self, authz: messages.AuthorizationResource) -> messages.ChallengeBody:
        return next(c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01))

    def answer_dns(
        self, acme_client: client.ClientV2, order: messages.OrderResource, value: str | None = None
    ) -> None:
        """Set each authorization's TXT record (the right one, or ``value``), answer dns-01.

        A wildcard and its base name share one record name: both values are set there.
        """
        assert self.bind9 is not None
        records: dict[str, list[str]] = {}
        answers = []
        for authz in order.authorizations:
            body = self.dns_challenge(authz)
            response, validation = body.response_and_validation(acme_client.net.key)
            record = body.chall.validation_domain_name(authz.body.identifier.value)
            records.setdefault(record, []).append(validation if value is None else value)
            answers.append((body, response))
        for record, values in records.items():
            self.bind9.set_txt(record, *values)
        for body, response in answers:
            acme_client.answer_challenge(body, response)

    def tried_without_record(self, name: str) -> messages.AuthorizationResource:
        """A new account orders ``name`` and answers its dns-01 with no record set; the
        authorization once validation is over."""
        acme_client = self.client()
        self.register(acme_client)
        order, _ = self.order(acme_client, [name])
        body = self.dns_challenge(order.authorizations[0])
        response, _ = body.response_and_validation(acme_client.net.key)
        acme_client.answer_challenge(body, response)
        return _poll_authz(acme_client, order.authorizations[0])


@pytest.fixture
def bind9(tmp_path: Path) -> Iterator[Bind9]:
    with running_bind9(tmp_path / "named", ZONE) as server:
        yield server


@contextlib.contextmanager
def dns01_on(
    api: Api, resolver_port: int | tuple[int, ...], bind9: Bind9 | None = None, **settings: Any
) -> Iterator[Dns01]:
    """The app with ACME on, resolving at 127.0.0.1:``resolver_port`` (each port in turn);
    issuer ISSUER made unless ``settings`` names another."""
    if "issuer_id" not in settings:
        body = {"id": ISSUER, "common_name": "ACME CA"}
        r = api.post("/api/v1/issuers", api.admin_key, json=body)
        assert r.status_code == 201, r.text
    ports = resolver_port if isinstance(resolver_port, tuple) else (resolver_port,)
    resolvers = tuple(("127.0.0.1", port) for port in ports)
    app, acme_settings = _acme_app(api, 80, dns_resolvers=resolvers, **settings)
    http01 = Http01Server()
    try:
        with serving(app) as base:
            yield Dns01(api, base, http01, acme_settings, bind9=bind9)
    finally:
        http01.close()


@pytest.fixture
def acme_dns(api: Api, bind9: Bind9) -> Iterator[Dns01]:
    with dns01_on(api, bind9.port, bind9) as acme_dns:
        yield acme_dns


def test_dns01_gets_a_certificate_from_the_txt_record_in_the_zone(
    acme_dns: Dns01, tmp_path: Path
) -> None:
    acme_client = acme_dns.client()
    regr = acme_dns.register(acme_client)
    order, _ = acme_dns.order(acme_client, [NAME])
    (authz,) = order.authorizations
    # Each name offers both, http-01 first (clients that take the first they know as before).
    assert [c.chall.typ for c in authz.body.challenges] == ["http-01", "dns-01"]
    tokens = [c.chall.encode("token") for c in authz.body.challenges]
    assert len(set(tokens)) == 2
    acme_dns.answer_dns(acme_client, order)
    done = acme_client.poll_and_finalize(order)
    assert acme_dns.http01.hits == []  # dns-01 alone proved the name
    ca = tmp_path / "ca.pem"
    ca.write_text(acme_dns.api.get(f"/api/v1/issuers/{ISSUER}/ca.pem").text)
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(done.fullchain_pem)
    assert "OK" in ok(run("openssl", "verify", "-CAfile", ca, leaf)).stdout
    polled = _poll_authz(acme_client, authz)
    statuses = {c.chall.typ: c.status for c in polled.body.challenges}
    assert statuses == {"http-01": messages.STATUS_PENDING, "dns-01": messages.STATUS_VALID}
    account = f"acme:{regr.uri.rsplit('/', 1)[1]}"
    validated = [
        e
        for e in acme_dns.api.audit()
        if (e["actor"], e["action"]) == (account, "acme.challenge.validate")
    ]
    assert [(e["outcome"], e["target"].split()[1]) for e in validated] == [("success", NAME)]


def test_a_wrong_txt_value_makes_the_authorization_invalid_saying_what_was_found(
    acme_dns: Dns01,
) -> None:
    acme_client = acme_dns.client()
    acme_dns.register(acme_client)
    order, _ = acme_dns.order(acme_client, [NAME])
    stale = dns01_digest("another-token.another-thumbprint")
    acme_dns.answer_dns(acme_client, order, value=stale)
    authz = _poll_authz(acme_client, order.authorizations[0])
    assert authz.body.status == messages.STATUS_INVALID
    dns = acme_dns.dns_challenge(authz)
    assert dns.status == messages.STATUS_INVALID
    assert dns.error.typ == ERR + "incorrectResponse"
    _, expected = dns.response_and_validation(acme_client.net.key)
    assert dns.error.detail == (
        f"TXT _acme-challenge.{NAME} holds 1 record ({stale!r}), not {expected!r} "
        "(base64url of SHA-256 of the key authorization)"
    )
    # One try per authorization: its http-01 is not validated after the failed dns-01.
    http = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
    response, validation = http.response_and_validation(acme_client.net.key)
    acme_dns.http01.answers[http.chall.encode("token")] = validation.encode()
    answered = acme_client.answer_challenge(http, response)
    assert answered.body.status == messages.STATUS_PENDING
    assert _poll_authz(acme_client, order.authorizations[0]).body.status == messages.STATUS_INVALID
    assert acme_dns.http01.hits == []
    raw = acme_client._post_as_get(order.uri).json()
    assert (raw["status"], raw["error"]["type"]) == ("invalid", ERR + "incorrectResponse")


def test_a_txt_value_that_is_no_digest_is_counted_not_quoted(acme_dns: Dns01) -> None:
    # The lookup follows the CNAMEs the name's owner set: what another name holds is not read
    # back to the account, only what looks like a dns-01 value.
    acme_client = acme_dns.client()
    acme_dns.register(acme_client)
    order, _ = acme_dns.order(acme_client, [NAME])
    acme_dns.answer_dns(acme_client, order, value="v=spf1 include:internal.example -all")
    error = acme_dns.dns_challenge(_poll_authz(acme_client, order.authorizations[0])).error
    assert error.typ == ERR + "incorrectResponse"
    assert "(1 that is no dns-01 value)" in error.detail
    assert "spf1" not in error.detail


def test_no_txt_record_is_unauthorized_naming_the_name_looked_up(acme_dns: Dns01) -> None:
    authz = acme_dns.tried_without_record(NAME)
    assert authz.body.status == messages.STATUS_INVALID
    error = acme_dns.dns_challenge(authz).error
    assert error.typ == ERR + "unauthorized"
    assert acme_dns.bind9 is not None
    assert acme_dns.bind9.address in error.detail
    assert error.detail.startswith(f"no TXT record at _acme-challenge.{NAME} (")


def test_a_cname_the_resolver_does_not_follow_is_named_in_the_problem(acme_dns: Dns01) -> None:
    # _acme-challenge delegated by a CNAME to a zone kept for ACME (acme-dns): the test's
    # named, authoritative for test.example alone, answers the CNAME and no TXT record.
    target = "app.acme-dns.other.example"
    assert acme_dns.bind9 is not None
    acme_dns.bind9.set_cname(f"_acme-challenge.{NAME}", target)
    error = acme_dns.dns_challenge(acme_dns.tried_without_record(NAME)).error
    assert (error.typ, error.detail) == (
        ERR + "unauthorized",
        f"no TXT record at _acme-challenge.{NAME} ({acme_dns.bind9.address}: a CNAME to "
        f"{target}, no TXT record there; a server that does not recurse follows no CNAME out "
        "of its own zones)",
    )


def test_a_name_the_resolver_refuses_is_a_dns_problem_naming_the_rcode(acme_dns: Dns01) -> None:
    # The test's named serves test.example only, without recursion: it refuses other names.
    outside = "app.other.example"
    error = acme_dns.dns_challenge(acme_dns.tried_without_record(outside)).error
    assert acme_dns.bind9 is not None
    assert (error.typ, error.detail) == (
        ERR + "dns",
        f"TXT _acme-challenge.{outside}: {acme_dns.bind9.address} gave no answer (REFUSED)",
    )


def test_a_resolver_that_never_answers_is_a_dns_problem_within_seconds(api: Api) -> None:
    # A UDP socket that reads nothing: the lookup gives up after its timeout (5 s in all).
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    try:
        with dns01_on(api, port) as acme_dns:
            authz = acme_dns.tried_without_record(NAME)
    finally:
        silent.close()
    error = acme_dns.dns_challenge(authz).error
    assert error.typ == ERR + "dns"
    assert error.detail == (
        f"TXT _acme-challenge.{NAME}: no answer from 127.0.0.1:{port} within 5 s"
    )


def test_a_resolver_that_never_answers_leaves_time_to_ask_the_next(api: Api, bind9: Bind9) -> None:
    # acme.dns-resolvers tried in turn: the first one silent (down, or dropping queries)
    # costs its share of the 5 s, not all of it, and the second one's record proves the name.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        ports = (silent.getsockname()[1], bind9.port)
        with dns01_on(api, ports, bind9) as acme_dns:
            acme_client = acme_dns.client()
            acme_dns.register(acme_client)
            order, _ = acme_dns.order(acme_client, [NAME])
            acme_dns.answer_dns(acme_client, order)
            authz = _poll_authz(acme_client, order.authorizations[0])
    finally:
        silent.close()
    dns = acme_dns.dns_challenge(authz)
    assert (authz.body.status, dns.error) == (messages.STATUS_VALID, None)


@contextlib.contextmanager
def held_resolver(bind9: Bind9) -> Iterator[tuple[int, threading.Event, threading.Event]]:
    """A UDP port that passes one query on to ``bind9`` once ``release`` is set: the lookup
    of a validation held under way. Yields the port, ``asked`` (the query came) and
    ``release``."""
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(("127.0.0.1", 0))
    asked, release = threading.Event(), threading.Event()

    def forward() -> None:
        query, client_address = front.recvfrom(4096)
        asked.set()
        if not release.wait(4):  # within the lookup's 5 s
            return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as back:
            back.settimeout(2)
            back.sendto(query, ("127.0.0.1", bind9.port))
            front.sendto(back.recv(4096), client_address)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        yield front.getsockname()[1], asked, release
    finally:
        release.set()
        thread.join(5)
        front.close()


def test_an_authorization_deactivated_during_its_validation_stays_deactivated(
    api: Api, bind9: Bind9
) -> None:
    # RFC 8555 7.5.2: deactivated is final. The right record found after it changes neither
    # the authorization nor its order (invalid since the deactivation) back.
    with held_resolver(bind9) as (port, asked, release), dns01_on(api, port, bind9) as acme_dns:
        acme_client = acme_dns.client()
        acme_dns.register(acme_client)
        order, _ = acme_dns.order(acme_client, [NAME])
        acme_dns.answer_dns(acme_client, order)
        assert asked.wait(5)
        gone = acme_client.deactivate_authorization(order.authorizations[0])
        assert gone.body.status == messages.STATUS_DEACTIVATED
        release.set()
        dns = acme_dns.dns_challenge(order.authorizations[0])
        deadline = time.monotonic() + 10
        while acme_client._post_as_get(dns.uri).json()["status"] == "processing":
            assert time.monotonic() < deadline, "the validation never finished"
            time.sleep(0.1)
        polled, _ = acme_client.poll(order.authorizations[0])
        assert polled.body.status == messages.STATUS_DEACTIVATED
        assert acme_client._post_as_get(order.uri).json()["status"] == "invalid"


def test_of_both_challenges_answered_at_once_one_is_tried(acme_dns: Dns01) -> None:
    # Two clients of one account key answer http-01 and dns-01 of one authorization at the
    # same instant: one is validated (its authorization settled by it), the other stays
    # pending. Either may win; the record is right and port 80 of the name serves nothing.
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    first, second = acme_dns.client(key), acme_dns.client(key)
    second.net.account = acme_dns.register(first)  # the one account, its kid
    order, _ = acme_dns.order(first, [NAME])
    (authz,) = order.authorizations
    assert acme_dns.bind9 is not None
    dns = acme_dns.dns_challenge(authz)
    acme_dns.bind9.set_txt(f"_acme-challenge.{NAME}", dns.response_and_validation(first.net.key)[1])
    http = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
    barrier = threading.Barrier(2)
    statuses: list[Any] = []

    def answer(acme_client: client.ClientV2, body: messages.ChallengeBody) -> None:
        response = body.response(acme_client.net.key)
        barrier.wait()
        statuses.append(acme_client.answer_challenge(body, response).body.status)

    threads = [
        threading.Thread(target=answer, args=(first, dns)),
        threading.Thread(target=answer, args=(second, http)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # The one tried is answered once tried, when that is quick (as here): its outcome.
    names = [s.name for s in statuses]
    assert len(names) == 2, statuses
    assert names.count("pending") == 1, statuses
    names.remove("pending")
    assert names[0] in ("processing", "valid", "invalid"), statuses
    polled = _poll_authz(first, authz)
    tried = {c.chall.typ: c.status for c in polled.body.challenges}
    assert sorted(s.name for s in tried.values()) == sorted(["pending", polled.body.status.name])
    assert polled.body.status in (messages.STATUS_VALID, messages.STATUS_INVALID)
    assert (tried["dns-01"] == messages.STATUS_VALID) == (
        polled.body.status == messages.STATUS_VALID
    )


def _lookup_under_way(acme_dns: Dns01) -> tuple[Any, Any, Any, str]:
    """A new account's order of NAME whose dns-01 lookup is under way (challenge processing):
    (client, order, authorization, challenge id), for recording its result by hand."""
    from sqlalchemy import update

    acme_client = acme_dns.client()
    acme_dns.register(acme_client)
    order, _ = acme_dns.order(acme_client, [NAME])
    (authz,) = order.authorizations
    challenge_id = acme_dns.dns_challenge(authz).uri.rsplit("/", 1)[1]
    services = acme_dns.api.services
    with services.sessions.begin() as session:
        session.execute(
            update(AcmeChallenge)
            .where(AcmeChallenge.id == challenge_id)
            .values(status="processing", validated_at=services.clock())
        )
    return acme_client, order, authz, challenge_id


def test_a_deactivation_committed_as_a_validation_is_recorded_is_kept(acme_dns: Dns01) -> None:
    # Another worker or replica deactivates the authorization just as this one records its
    # dns-01 lookup found the record: the deactivation stands (RFC 8555 7.5.2), on SQLite
    # too, where nothing but a write locks what the recording read.
    from sqlalchemy import text

    from certctl.services import acme

    acme_client, order, authz, challenge_id = _lookup_under_way(acme_dns)
    authz_id, order_id = authz.uri.rsplit("/", 1)[1], order.uri.rsplit("/", 1)[1]
    services = acme_dns.api.services

    def deactivate(connection: Any) -> None:
        connection.execute(
            text("UPDATE acme_authorizations SET status = 'deactivated' WHERE id = :id"),
            {"id": authz_id},
        )
        connection.execute(
            text("UPDATE acme_orders SET status = 'invalid' WHERE id = :id"), {"id": order_id}
        )

    writes = ("UPDATE acme_authorizations", "UPDATE acme_challenges", "UPDATE acme_orders")
    with acme_dns.api.concurrent_write(writes, deactivate) as fired:
        acme.record_validation(services, challenge_id, None, "127.0.0.1")
    assert fired
    assert acme_client.poll(authz)[0].body.status == messages.STATUS_DEACTIVATED
    assert acme_client._post_as_get(order.uri).json()["status"] == "invalid"


def test_a_validation_that_finishes_after_its_authorization_expired_does_not_make_it_valid(
    acme_dns: Dns01,
) -> None:
    # The lookup found the record, but the authorization's day ran out meanwhile: it stays
    # final (RFC 8555 7.1.6), not valid with a fresh expiry taken from its order.
    from certctl.services import acme

    acme_client, order, authz, challenge_id = _lookup_under_way(acme_dns)
    services = acme_dns.api.services
    acme_dns.api.clock.advance(days=1, seconds=1)
    acme.record_validation(services, challenge_id, None, "127.0.0.1")
    body = acme_client._post_as_get(authz.uri).json()
    assert body["status"] == "invalid", body
    (challenge,) = [c for c in body["challenges"] if c["url"].endswith(challenge_id)]
    assert challenge["status"] == "invalid"
    assert challenge["error"]["type"] == "urn:ietf:params:acme:error:unauthorized"
    assert "expired before this validation finished" in challenge["error"]["detail"]
    assert acme_client._post_as_get(order.uri).json()["status"] == "invalid"


# --- wildcards ------------------------------------------------------------------------------

WILDCARD = f"*.{ZONE}"


def _csr(names: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return crypto_util.make_csr(pem, names)


def _deadline() -> datetime:
    return datetime.now() + timedelta(seconds=30)


def test_a_wildcard_and_its_base_name_get_one_certificate_by_dns01(
    acme_dns: Dns01, tmp_path: Path
) -> None:
    acme_client = acme_dns.client()
    acme_dns.register(acme_client)
    order, _ = acme_dns.order(acme_client, [WILDCARD, ZONE])
    raw = acme_client._post_as_get(order.uri).json()
    assert raw["identifiers"] == [
        {"type": "dns", "value": WILDCARD},
        {"type": "dns", "value": ZONE},
    ]
    # RFC 8555 7.1.4: the wildcard's authorization names its base, says wildcard, and offers
    # dns-01 alone; the base name's offers both.
    shown = {
        (a.body.identifier.value, a.body.wildcard): [c.chall.typ for c in a.body.challenges]
        for a in order.authorizations
    }
    assert shown == {(ZONE, True): ["dns-01"], (ZONE, None): ["http-01", "dns-01"]}
    acme_dns.answer_dns(acme_client, order)
    done = acme_client.poll_and_finalize(order, _deadline())
    leaf = x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == [WILDCARD, ZONE]
    ca = tmp_path / "ca.pem"
    ca.write_text(acme_dns.api.get(f"/api/v1/issuers/{ISSUER}/ca.pem").text)
    chain = tmp_path / "leaf.pem"
    chain.write_text(done.fullchain_pem)
    assert "OK" in ok(run("openssl", "verify", "-CAfile", ca, chain)).stdout
    # RFC 8555 7.6: an account holding valid authorizations of both (a wildcard one for the
    # wildcard) may revoke it.
    other = acme_dns.client()
    acme_dns.register(other)
    again, _ = acme_dns.order(other, [WILDCARD, ZONE])
    acme_dns.answer_dns(other, again)
    for authz in again.authorizations:
        assert _poll_authz(other, authz).body.status == messages.STATUS_VALID
    other.revoke(leaf, 5)  # cessationOfOperation: keyCompromise takes the key (blocked keys)
    assert leaf.serial_number in acme_dns.api.openssl_crl_serials(ISSUER, tmp_path)


def test_a_wildcard_authorization_deactivated_is_audited_as_the_wildcard(acme_dns: Dns01) -> None:
    acme_client = acme_dns.client()
    regr = acme_dns.register(acme_client)
    order, _ = acme_dns.order(acme_client, [WILDCARD, ZONE])
    for authz in order.authorizations:
        acme_client.deactivate_authorization(authz)
    account = f"acme:{regr.uri.rsplit('/', 1)[1]}"
    targets = [
        e["target"].split()[1]
        for e in acme_dns.api.audit()
        if (e["actor"], e["action"]) == (account, "acme.authorization.deactivate")
    ]
    # Which of the two authorizations of test.example went: the wildcard's says so.
    assert sorted(targets) == [WILDCARD, ZONE]


def test_a_wildcard_outside_allowed_names_is_a_rejected_identifier(api: Api, bind9: Bind9) -> None:
    # app.test.example names one host: it allows no wildcard below it.
    with dns01_on(api, bind9.port, bind9, allowed_names=(NAME, f"*.api.{ZONE}")) as acme_dns:
        acme_client = acme_dns.client()
        acme_dns.register(acme_client)
        before = api.counts()
        with pytest.raises(messages.Error) as info:
            acme_client.new_order(_csr([f"*.{NAME}"]))
        assert info.value.typ == ERR + "rejectedIdentifier"
        assert info.value.detail == (
            f"*.{NAME}: not among the names this server issues for (acme.allowed-names)"
        )
        assert _business(api.counts()) == _business(before)
        # "*.api.test.example" allows that wildcard itself.
        order = acme_client.new_order(_csr([f"*.api.{ZONE}"]))
        assert [a.body.wildcard for a in order.authorizations] == [True]


def test_http01_proves_no_wildcard(acme_dns: Dns01) -> None:
    acme_client = acme_dns.client()
    acme_dns.register(acme_client)
    order, _ = acme_dns.order(acme_client, [WILDCARD, ZONE])
    by_wildcard = {bool(a.body.wildcard): a for a in order.authorizations}
    token = secrets.token_urlsafe(32)
    # An http-01 challenge on the wildcard's authorization, as a store written by hand or a
    # bug might hold: answered, it is not validated (nothing fetched, still pending).
    with acme_dns.api.services.sessions.begin() as session:
        session.add(
            AcmeChallenge(
                id="planted-http01",
                authorization_id=by_wildcard[True].uri.rsplit("/", 1)[1],
                type="http-01",
                token=token,
                status="pending",
                validated_at=None,
                error=None,
            )
        )
    wildcard_authz, _ = acme_client.poll(by_wildcard[True])
    planted = next(c for c in wildcard_authz.body.challenges if c.chall.typ == "http-01")
    response, validation = planted.response_and_validation(acme_client.net.key)
    acme_dns.http01.answers[token] = validation.encode()
    assert acme_client.answer_challenge(planted, response).body.status == messages.STATUS_PENDING
    assert acme_dns.http01.hits == []
    # The base name proved (dns-01 here: only localhost reaches the test's http-01 server):
    # the order still waits for the wildcard's own dns-01.
    assert acme_dns.bind9 is not None
    base = acme_dns.dns_challenge(by_wildcard[False])
    response, validation = base.response_and_validation(acme_client.net.key)
    acme_dns.bind9.set_txt(f"_acme-challenge.{ZONE}", validation)
    acme_client.answer_challenge(base, response)
    assert _poll_authz(acme_client, by_wildcard[False]).body.status == messages.STATUS_VALID
    assert acme_client.poll(by_wildcard[True])[0].body.status == messages.STATUS_PENDING
    assert acme_client._post_as_get(order.uri).json()["status"] == "pending"
    request = messages.CertificateRequest(csr=x509.load_pem_x509_csr(_csr([WILDCARD, ZONE])))
    with pytest.raises(messages.Error) as info:
        acme_client._post(order.body.finalize, request)
    assert info.value.typ == ERR + "orderNotReady"


def test_a_wildcard_san_needs_a_wildcard_authorization_at_finalize(acme_dns: Dns01) -> None:
    acme_client = acme_dns.client()
    acme_dns.register(acme_client)
    order, _ = acme_dns.order(acme_client, [NAME])
    acme_dns.answer_dns(acme_client, order)
    assert _poll_authz(acme_client, order.authorizations[0]).body.status == messages.STATUS_VALID
    before = acme_dns.api.counts()
    for names, said in (
        ([NAME, f"*.{NAME}"], f"names *.{NAME} not in the order"),
        ([f"*.{NAME}"], f"names *.{NAME} not in the order and leaves out {NAME}"),
    ):
        request = messages.CertificateRequest(csr=x509.load_pem_x509_csr(_csr(names)))
        with pytest.raises(messages.Error) as info:
            acme_client._post(order.body.finalize, request)
        assert (info.value.typ, info.value.detail) == (ERR + "badCSR", f"the CSR {said}")
    assert acme_dns.api.counts()["certificates"] == before["certificates"]
    assert acme_client._post_as_get(order.uri).json()["status"] == "ready"


def test_a_wildcard_covering_certctls_own_name_under_its_internal_ca_is_refused(
    api: Api, bind9: Bind9
) -> None:
    # The issuance policy's own-name check sees through the wildcard: *.test.example under
    # the CA certctl's clients trust would let its holder pose as certctl.test.example.
    from certctl.pki import SubjectAltNames

    saved = api.services.server_names
    api.services.server_names = SubjectAltNames(dns=(f"certctl.{ZONE}",))
    try:
        with dns01_on(api, bind9.port, bind9, issuer_id="default") as acme_dns:
            acme_client = acme_dns.client()
            acme_dns.register(acme_client)
            order, _ = acme_dns.order(acme_client, [WILDCARD])
            acme_dns.answer_dns(acme_client, order)
            polled = _poll_authz(acme_client, order.authorizations[0]).body
            assert polled.status == messages.STATUS_VALID, polled.challenges
            with pytest.raises(messages.Error) as info:
                acme_client.finalize_order(order, _deadline())
    finally:
        api.services.server_names = saved
    assert info.value.typ == ERR + "rejectedIdentifier"
    assert "certctl's own server name" in info.value.detail
    assert f"certctl.{ZONE}" in info.value.detail
