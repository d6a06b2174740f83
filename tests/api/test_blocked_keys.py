"""A key revoked for a compromise is certified no more (blocked_keys, as Boulder's blockedKeys).

Through the API on both stores: issuance from a CSR and a renewal that keeps the key are
refused once a certificate of the key was revoked for keyCompromise, or an issuer holding it
for keyCompromise or cACompromise; another reason blocks nothing. ACME: test_acme_blocked_keys.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from certctl.cli.main import run as run_cli
from certctl.pki import (
    CertificateAuthority,
    KeyType,
    SubjectAltNames,
    common_name_dn,
    create_csr,
    create_root_ca,
    generate_private_key,
    get_profile,
    key_to_pem,
)
from certctl.services.certificates import revoke_certificate
from certctl.services.context import Principal, Services
from certctl.store.db import create_store_engine, session_factory
from certctl.store.models import BlockedKey
from tests._tools import ok, run
from tests.api.conftest import Api, assert_problem

CERTS = "/api/v1/certificates"
ISSUERS = "/api/v1/issuers"
BLOCKED = "the public key is blocked"


def _csr(key: Any, cn: str = "blocked.example.com") -> str:
    csr = create_csr(key, common_name_dn(cn), SubjectAltNames.parse(dns=[cn]))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _issue_csr(api: Api, key: Any, issuer: str = "default") -> Any:
    return api.post(CERTS, api.admin_key, json={"issuer": issuer, "csr": _csr(key)})


def _key_sha256(key: Any) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _import(api: Api, issuer_id: str, cert: x509.Certificate, key: Any) -> None:
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": issuer_id,
            "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "private_key_pem": key_to_pem(key).decode(),
        },
    )
    assert r.status_code == 201, r.text


def _blocked(api: Api) -> dict[str, BlockedKey]:
    with api.services.sessions() as session:
        rows = list(session.scalars(select(BlockedKey)))
        session.expunge_all()
    return {row.key_sha256: row for row in rows}


def test_a_key_revoked_for_key_compromise_is_refused_from_a_csr_and_in_a_renewal(
    api: Api,
) -> None:
    key = generate_private_key(KeyType.EC_P256)
    first = _issue_csr(api, key)
    assert first.status_code == 201, first.text
    # The same CSR again, outside any renewal chain: a keyCompromise revocation of the first
    # does not revoke it (certctl does not index certificates by key) and it stays valid.
    second = _issue_csr(api, key)
    assert second.status_code == 201, second.text
    r = api.post(
        f"{CERTS}/{first.json()['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"}
    )
    assert r.status_code == 200, r.text
    (row,) = _blocked(api).values()
    assert row.key_sha256 == _key_sha256(key)
    assert (row.reason, row.certificate_id, row.issuer_id, row.blocked_by) == (
        "keyCompromise",
        first.json()["id"],
        None,
        "admin",
    )
    assert row.blocked_at == api.clock()

    before = api.counts()
    refused = assert_problem(_issue_csr(api, key), 400)
    assert refused["detail"].startswith(f"{BLOCKED}: a certificate of this key was revoked for ")
    assert "keyCompromise" in refused["detail"]
    assert first.json()["id"] not in refused["detail"]  # it may be another requester's
    # The other certificate of the key renews with a new certificate of that key: refused,
    # 409 as a revoked certificate's renewal (the request is right, the key's state is not).
    renewal = api.post(f"{CERTS}/{second.json()['id']}/renew", api.admin_key, json={})
    detail = assert_problem(renewal, 409)["detail"]
    assert detail.startswith(f"certificate {second.json()['id']} cannot be renewed with its key")
    assert BLOCKED in detail
    assert api.counts() == before  # nothing stored, nothing audited

    # Server-generated keys are fresh, and another CSR's key is not blocked.
    api.issue(common_name="fresh.example.com")
    assert _issue_csr(api, generate_private_key(KeyType.EC_P256)).status_code == 201


def test_another_reason_blocks_nothing_until_it_becomes_key_compromise(api: Api) -> None:
    key = generate_private_key(KeyType.RSA_2048)
    first = _issue_csr(api, key)
    second = _issue_csr(api, key)
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    cert_id = first.json()["id"]
    r = api.post(f"{CERTS}/{cert_id}/revoke", api.admin_key, json={"reason": "superseded"})
    assert r.status_code == 200, r.text
    assert _blocked(api) == {}
    assert _issue_csr(api, key).status_code == 201
    renewed = api.post(f"{CERTS}/{second.json()['id']}/renew", api.admin_key, json={})
    assert renewed.status_code == 201, renewed.text
    # Its reason later becomes keyCompromise (revocation date kept): the key is blocked now.
    r = api.post(f"{CERTS}/{cert_id}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert list(_blocked(api)) == [_key_sha256(key)]
    assert_problem(_issue_csr(api, key), 400)


def test_a_key_is_blocked_once_whoever_revokes_it_again(api: Api) -> None:
    key = generate_private_key(KeyType.EC_P256)
    ids = [_issue_csr(api, key).json()["id"] for _ in range(2)]
    for cert_id in ids:
        r = api.post(f"{CERTS}/{cert_id}/revoke", api.admin_key, json={"reason": "keyCompromise"})
        assert r.status_code == 200, r.text
        api.clock.advance(minutes=1)
    (row,) = _blocked(api).values()
    assert row.certificate_id == ids[0]  # the first revocation's row stands


def test_an_issuer_revoked_for_a_compromise_blocks_its_key(api: Api) -> None:
    now = api.clock()
    root_key = generate_private_key(KeyType.EC_P256)
    root = CertificateAuthority(
        create_root_ca(
            root_key, common_name_dn("Block Root"), validity=timedelta(days=90), now=now
        ).certificate,
        root_key,
    )
    _import(api, "block-root", root.certificate, root_key)
    keys = {}
    for name in ("inter-key", "inter-ca", "inter-other"):
        keys[name] = generate_private_key(KeyType.EC_P256)
        inter = root.issue(
            keys[name].public_key(),
            common_name_dn(name),
            profile=get_profile("intermediate"),
            validity=timedelta(days=30),
            now=now,
        ).certificate
        _import(api, name, inter, keys[name])
    for issuer_id, reason in (
        ("inter-key", "keyCompromise"),
        ("inter-ca", "cACompromise"),
        ("inter-other", "superseded"),
    ):
        r = api.post(f"{ISSUERS}/{issuer_id}/revoke", api.admin_key, json={"reason": reason})
        assert r.status_code == 200, r.text
    blocked = _blocked(api)
    assert {k: (r.issuer_id, r.reason, r.certificate_id) for k, r in blocked.items()} == {
        _key_sha256(keys["inter-key"]): ("inter-key", "keyCompromise", None),
        _key_sha256(keys["inter-ca"]): ("inter-ca", "cACompromise", None),
    }
    for issuer_id in ("inter-key", "inter-ca"):
        detail = assert_problem(_issue_csr(api, keys[issuer_id], "block-root"), 400)["detail"]
        assert detail.startswith(f"{BLOCKED}: issuer {issuer_id}, which holds this key, was ")
    assert _issue_csr(api, keys["inter-other"], "block-root").status_code == 201
    # Its reason later becomes keyCompromise (its revocation date kept): blocked from then on.
    api.clock.advance(minutes=5)
    r = api.post(f"{ISSUERS}/inter-other/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    row = _blocked(api)[_key_sha256(keys["inter-other"])]
    assert (row.issuer_id, row.reason, row.blocked_at) == (
        "inter-other",
        "keyCompromise",
        api.clock(),
    )
    assert_problem(_issue_csr(api, keys["inter-other"], "block-root"), 400)


def test_a_key_blocked_by_another_replica_is_refused_here_at_once(api: Api) -> None:
    """Each process holds the blocked keys while the credential counter stays put.

    This app reads them (none) at its first issuance; a second app on the same store (its
    own engine and Services, as another worker or replica) blocks the key; the next issuance
    here reads them again and refuses it.
    """
    key = generate_private_key(KeyType.EC_P256)
    cert_id = _issue_csr(api, key).json()["id"]  # this process has read them: none
    engine = create_store_engine(api.services.engine.url.render_as_string(hide_password=False))
    try:
        other = Services(engine, session_factory(engine), api.services.wrapper)
        other.clock = api.services.clock
        caller = Principal("admin", ("r-admin",), frozenset({"cert.revoke"}), "apikey")
        revoke_certificate(other, caller, cert_id, "keyCompromise")
    finally:
        engine.dispose()
    assert BLOCKED in assert_problem(_issue_csr(api, key), 400)["detail"]
    # And a row added by hand (an operator blocking a key leaked elsewhere) too.
    leaked = generate_private_key(KeyType.EC_P256)
    assert _issue_csr(api, leaked).status_code == 201
    with api.services.engine.begin() as connection:
        connection.execute(
            BlockedKey.__table__.insert().values(
                key_sha256=_key_sha256(leaked),
                blocked_at=api.clock(),
                reason="keyCompromise",
                blocked_by="operator",
            )
        )
    # Worded as what it is: no certificate of it was revoked here.
    detail = assert_problem(_issue_csr(api, leaked), 400)["detail"]
    assert detail == (
        f"{BLOCKED}: an operator blocked it for keyCompromise on "
        f"{api.clock():%Y-%m-%dT%H:%M:%SZ}; generate a new key"
    )


def test_a_blocked_key_is_found_by_the_hash_openssl_prints(api: Api, tmp_path: Path) -> None:
    """The row's id is what the README tells an operator to compute with openssl."""
    key = generate_private_key(KeyType.EC_P384)
    cert_id = _issue_csr(api, key).json()["id"]
    r = api.post(f"{CERTS}/{cert_id}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    pem = tmp_path / "cert.pem"
    pem.write_text(api.get(f"{CERTS}/{cert_id}", api.admin_key).json()["certificate_pem"])
    public = tmp_path / "public.pem"
    ok(run("openssl", "x509", "-in", pem, "-pubkey", "-noout", "-out", public))
    der = tmp_path / "public.der"
    ok(run("openssl", "pkey", "-pubin", "-in", public, "-outform", "DER", "-out", der))
    digest = ok(run("openssl", "dgst", "-sha256", "-r", der)).stdout.split()[0]
    (row,) = _blocked(api).values()
    assert row.key_sha256 == digest == _key_sha256(key)


def test_an_imported_certificate_of_a_key_cryptography_cannot_read_is_revoked_all_the_same(
    api: Api, tmp_path: Path
) -> None:
    """An SM2 key (imported, signed by an openssl CA): nothing to block, no 500 either.

    cryptography raises UnsupportedAlgorithm for its curve, where the revocation read the key
    to block it; certctl certifies no such key anyway (a CSR of it is refused).
    """
    ca_key, ca_crt = tmp_path / "ca.key", tmp_path / "ca.crt"
    ok(
        run(
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", ca_key, "-out", ca_crt, "-subj", "/CN=Old SM2 CA", "-days", "30",
            "-addext", "basicConstraints=critical,CA:true",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )
    )  # fmt: skip
    sm2_key, sm2_pub, sm2_crt = tmp_path / "sm2.key", tmp_path / "sm2.pub", tmp_path / "sm2.crt"
    ok(run("openssl", "genpkey", "-algorithm", "SM2", "-out", sm2_key))
    ok(run("openssl", "pkey", "-in", sm2_key, "-pubout", "-out", sm2_pub))
    ok(
        run(
            "openssl", "x509", "-new", "-force_pubkey", sm2_pub, "-subj", "/CN=sm2.example.com",
            "-CA", ca_crt, "-CAkey", ca_key, "-days", "10", "-out", sm2_crt,
        )
    )  # fmt: skip
    r = api.post(
        ISSUERS,
        api.admin_key,
        json={
            "id": "old-sm2",
            "certificate_pem": ca_crt.read_text(),
            "private_key_pem": ca_key.read_text(),
        },
    )
    assert r.status_code == 201, r.text
    r = api.post(f"{CERTS}/import", api.admin_key, json={"certificate_pem": sm2_crt.read_text()})
    assert r.status_code == 201, r.text
    (item,) = r.json()["items"]
    r = api.post(f"{CERTS}/{item['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["revocation_reason"]) == ("revoked", "keyCompromise")
    assert _blocked(api) == {}


def test_a_blocked_key_is_refused_in_either_ec_point_form(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hash is of the key re-encoded, not of the CSR's bytes: a compressed point matches.

    openssl writes a CSR's EC point compressed for a key converted with -conv_form; the
    certificate certctl signs carries it uncompressed, as does the blocked row's hash.
    """
    plain, compressed = tmp_path / "plain.key", tmp_path / "compressed.key"
    ok(run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", plain))
    ok(run("openssl", "ec", "-in", plain, "-conv_form", "compressed", "-out", compressed))
    csrs = {}
    for form, key in (("plain", plain), ("compressed", compressed)):
        out = tmp_path / f"{form}.csr"
        ok(
            run(
                "openssl", "req", "-new", "-key", key, "-subj", "/CN=point.example.com",
                "-addext", "subjectAltName=DNS:point.example.com", "-out", out,
            )
        )  # fmt: skip
        csrs[form] = out.read_text()
    # The SubjectPublicKeyInfo each CSR carries, as openssl wrote it: a point of 65 bytes
    # (91 in all) against one of 33 (59).
    for form, size in (("plain", 91), ("compressed", 59)):
        ok(run("openssl", "req", "-in", tmp_path / f"{form}.csr", "-pubkey", "-noout", "-out",
               tmp_path / f"{form}.pub"))  # fmt: skip
        ok(run("openssl", "asn1parse", "-in", tmp_path / f"{form}.pub", "-out",
               tmp_path / f"{form}.der", "-noout"))  # fmt: skip
        assert len((tmp_path / f"{form}.der").read_bytes()) == size, form

    first = api.post(CERTS, api.admin_key, json={"csr": csrs["compressed"]})
    assert first.status_code == 201, first.text
    r = api.post(
        f"{CERTS}/{first.json()['id']}/revoke", api.admin_key, json={"reason": "keyCompromise"}
    )
    assert r.status_code == 200, r.text
    for form in ("plain", "compressed"):
        refused = api.post(CERTS, api.admin_key, json={"csr": csrs[form]})
        assert BLOCKED in assert_problem(refused, 400)["detail"], form

    # The row's id, as the README tells an operator to find it: certctl inspect's public
    # SHA-256 of either CSR. openssl's pipeline keeps the point compressed, so its hash of
    # that CSR is another one, which a row added by hand would never match.
    (row,) = _blocked(api).values()
    for form in ("plain", "compressed"):
        assert run_cli(["inspect", "--json", str(tmp_path / f"{form}.csr")]) == 0
        (shown,) = json.loads(capsys.readouterr().out)
        assert shown["public_key_fingerprint_sha256"].replace(":", "").lower() == row.key_sha256
    digest = ok(run("openssl", "dgst", "-sha256", "-r", tmp_path / "compressed.der")).stdout
    assert digest.split()[0] != row.key_sha256
