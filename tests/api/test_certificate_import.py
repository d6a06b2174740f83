"""POST /api/v1/certificates/import: certificates an imported (openssl) CA issued before."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import NameOID
from sqlalchemy import Connection, insert, update

from certctl.pki import (
    CertificateAuthority,
    KeyType,
    SubjectAltNames,
    certs_to_pem,
    common_name_dn,
    create_root_ca,
    format_serial,
    generate_private_key,
    get_profile,
    key_to_pem,
)
from certctl.server.periodic import refresh_metrics
from certctl.services import certificates
from certctl.store.models import CertificateRecord, Issuer
from tests._tools import ok, openssl_req, openssl_verify, run
from tests.api.conftest import Api, assert_problem

IMPORT = "/api/v1/certificates/import"
CA_EXTENSIONS = (
    "basicConstraints=critical,CA:TRUE\n"
    "keyUsage=critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid\n"
)


class OpensslCa:
    """A CA kept by openssl as cfssl/openssl users keep theirs: ``NAME.crt``, ``NAME.key``."""

    def __init__(self, folder: Path, name: str, subject: str, parent: OpensslCa | None = None):
        self.folder, self.name = folder, name
        self.crt, self.key = folder / f"{name}.crt", folder / f"{name}.key"
        if parent is None:
            openssl_req(self.key, self.crt, subject, "-days", "3650", x509=True)
        else:
            csr = folder / f"{name}.csr"
            openssl_req(self.key, csr, subject)
            parent.sign(csr, self.crt, CA_EXTENSIONS, days=1825)

    def sign(
        self, csr: Path, out: Path, extensions: str, days: int = 90, serial: int | None = None
    ) -> None:
        ext = out.with_suffix(".ext")
        serial_hex = f"{serial:x}" if serial is not None else os.urandom(8).hex()
        ext.write_text(extensions)
        ok(
            run(
                "openssl", "x509", "-req", "-in", csr, "-CA", self.crt, "-CAkey", self.key,
                "-set_serial", f"0x{serial_hex}",
                "-days", str(days), "-extfile", ext, "-out", out,
            )
        )  # fmt: skip

    def leaf(
        self,
        cn: str,
        eku: str = "serverAuth",
        serial: int | None = None,
        also: tuple[str, ...] = (),
    ) -> Path:
        """A leaf for ``cn`` (its CN and first DNS SAN) and the DNS names ``also``."""
        key, csr, crt = (self.folder / f"{cn}.{s}" for s in ("key", "csr", "crt"))
        openssl_req(key, csr, f"/CN={cn}")
        sans = ",".join(f"DNS:{name}" for name in (cn, *also))
        self.sign(
            csr,
            crt,
            f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={eku}\nsubjectAltName={sans}\n"
            "authorityKeyIdentifier=keyid\n",
            serial=serial,
        )
        return crt


@pytest.fixture
def old_pki(tmp_path: Path) -> tuple[OpensslCa, OpensslCa]:
    root = OpensslCa(tmp_path, "old-root", "/O=Example/CN=Old Root")
    return root, OpensslCa(tmp_path, "old-inter", "/O=Example/CN=Old Intermediate", root)


def _import_ca(api: Api, issuer_id: str, ca: OpensslCa) -> None:
    r = api.post(
        "/api/v1/issuers",
        api.admin_key,
        json={
            "id": issuer_id,
            "certificate_pem": ca.crt.read_text(),
            "private_key_pem": ca.key.read_text(),
        },
    )
    assert r.status_code == 201, r.text


def _serial(crt: Path) -> int:
    return x509.load_pem_x509_certificate(crt.read_bytes()).serial_number


def _import(api: Api, *crts: Path, key: str | None = None) -> Any:
    pem = "".join(c.read_text() for c in crts)
    return api.post(IMPORT, key or api.admin_key, json={"certificate_pem": pem})


def test_an_imported_leaf_is_listed_counted_revoked_and_on_its_issuers_crl(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa], tmp_path: Path
) -> None:
    root, inter = old_pki
    _import_ca(api, "old-root", root)
    _import_ca(api, "old-inter", inter)
    web, mail = inter.leaf("web.example.com"), inter.leaf("mail.example.com", "clientAuth")
    r = _import(api, web, mail)
    assert r.status_code == 201, r.text
    items = r.json()["items"]
    assert [i["common_name"] for i in items] == ["web.example.com", "mail.example.com"]
    assert [i["serial"] for i in items] == [format_serial(_serial(c)) for c in (web, mail)]
    for item, crt in zip(items, (web, mail), strict=True):
        assert item["issuer"] == "old-inter"  # by the signature: the intermediate, not its root
        assert item["profile"] == "imported"
        assert item["status"] == "active"
        assert item["created_by"] == "admin"
        assert item["certificate_pem"] == crt.read_text()
        assert item["sans"]["dns"] == [item["common_name"]]
    web_id, mail_id = items[0]["id"], items[1]["id"]
    listed = api.get("/api/v1/certificates", api.admin_key, params={"issuer": "old-inter"}).json()
    assert {i["id"] for i in listed["items"]} == {web_id, mail_id}
    assert api.get(f"/api/v1/certificates/{web_id}", api.admin_key).json() == items[0]
    imports = [e for e in api.audit() if e["action"] == "certificate.import"]
    assert sorted(e["target"].split()[0] for e in imports) == sorted([web_id, mail_id])
    assert {e["actor"] for e in imports} == {"admin"}
    # Counted by the metrics refresh, as issued certificates are (a scrape reads its snapshot).
    counts, _ = certificates.certificate_counts(api.services)
    assert counts[("old-inter", "active")] == 2

    r = api.post(
        f"/api/v1/certificates/{web_id}/revoke", api.admin_key, json={"reason": "superseded"}
    )
    assert r.status_code == 200, r.text
    assert api.openssl_crl_serials("old-inter", tmp_path) == {_serial(web)}
    chain = tmp_path / "chain.pem"
    chain.write_text(root.crt.read_text() + inter.crt.read_text())
    crl = tmp_path / "old-inter.crl"  # written by openssl_crl_serials
    args = ("-crl_check", "-CAfile", chain, "-CRLfile", crl)
    assert openssl_verify(*args, web) == "certificate revoked"
    assert openssl_verify(*args, mail) == "OK"
    counts, _ = certificates.certificate_counts(api.services)
    assert counts[("old-inter", "revoked")] == 1
    assert counts[("old-inter", "active")] == 1
    refresh_metrics(api.services)
    scraped = api.get("/api/v1/metrics/prometheus", api.admin_key).text
    assert 'certctl_certificates{issuer="old-inter",status="revoked"} 1.0' in scraped

    # Not renewed: no certctl profile says what its successor would carry.
    before = api.counts()
    detail = assert_problem(api.post(f"/api/v1/certificates/{mail_id}/renew", api.admin_key), 409)
    assert "was imported" in detail["detail"]
    assert "POST /api/v1/certificates" in detail["detail"]
    assert api.counts()["certificates"] == before["certificates"]


def test_bad_imports_are_refused_naming_the_certificate_and_store_nothing(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa], tmp_path: Path
) -> None:
    root, inter = old_pki
    _import_ca(api, "old-inter", inter)  # its root is not held
    good = inter.leaf("good.example.com")
    assert _import(api, good).status_code == 201
    # Another CA with the intermediate's very name: the name alone would take its leaves.
    (tmp_path / "other").mkdir()
    impostor = OpensslCa(tmp_path / "other", "impostor", "/O=Example/CN=Old Intermediate", root)
    forged = impostor.leaf("forged.example.com")
    stranger = OpensslCa(tmp_path / "other", "stranger", "/CN=Stranger CA").leaf("s.example.com")
    fresh = inter.leaf("fresh.example.com")
    before = api.counts()

    def refused(status: int, body: Any, *needles: str) -> None:
        r = api.post(IMPORT, api.admin_key, json=body)
        detail = assert_problem(r, status)["detail"]
        for needle in needles:
            assert needle in detail, detail
        after = api.counts()
        assert after["certificates"] == before["certificates"]

    refused(400, {"certificate_pem": "not a certificate"}, "no PEM certificate")
    key_pem = (tmp_path / "good.example.com.key").read_text()
    refused(400, {"certificate_pem": key_pem}, "block 1 is a PRIVATE KEY")
    r = api.post(IMPORT, api.admin_key, json={"certificate_pem": key_pem})
    assert key_pem.splitlines()[1] not in r.text  # the key is never echoed
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    refused(400, {"certificate_pem": fresh.read_text() + broken}, "certificate 2: not a readable")
    refused(
        400,
        {"certificate_pem": stranger.read_text()},
        "certificate 1 (CN=s.example.com",
        "signed by no issuer",
    )
    refused(400, {"certificate_pem": forged.read_text()}, "signed by no issuer")
    refused(400, {"certificate_pem": inter.crt.read_text()}, "a CA certificate", "/api/v1/issuers")
    # All or nothing: the fresh leaf first, then one recorded already.
    refused(
        409,
        {"certificate_pem": fresh.read_text() + good.read_text()},
        "certificate 2 (CN=good.example.com",
        "already recorded",
    )
    refused(
        400,
        {"certificate_pem": fresh.read_text() * 2},
        "certificate 2",
        "same serial as certificate 1",
    )
    refused(400, {}, "certificate_pem")
    viewer = api.key_with_permissions("viewer", ["cert.read"])
    assert_problem(_import(api, fresh, key=viewer), 403)
    assert api.counts()["certificates"] == before["certificates"]
    # Nothing half-done: the fresh leaf is still to be recorded.
    assert _import(api, fresh).status_code == 201


def test_import_needs_cert_issue_only(api: Api, old_pki: tuple[OpensslCa, OpensslCa]) -> None:
    _, inter = old_pki
    _import_ca(api, "old-inter", inter)
    issuer = api.key_with_permissions("importer", ["cert.issue"])
    r = _import(api, inter.leaf("a.example.com"), key=issuer)
    assert r.status_code == 201, r.text
    assert r.json()["items"][0]["created_by"] == "importer"


def test_a_serial_recorded_by_another_replica_meanwhile_is_409_and_stores_nothing(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa]
) -> None:
    _, inter = old_pki
    _import_ca(api, "old-inter", inter)
    first, taken = inter.leaf("first.example.com"), inter.leaf("taken.example.com")
    cert = x509.load_pem_x509_certificate(taken.read_bytes())

    def other_replica(conn: Connection) -> None:
        conn.execute(
            insert(CertificateRecord).values(
                id="0" * 24,
                issuer_id="old-inter",
                serial=format_serial(cert.serial_number),
                subject="CN=taken.example.com",
                sans={},
                profile="imported",
                status="active",
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                certificate_pem=taken.read_text(),
                created_at=api.clock(),
                created_by="other",
            )
        )

    with api.concurrent_write(
        ("INSERT INTO certificates", "INSERT INTO audit_events"), other_replica
    ) as fired:
        r = _import(api, first, taken)
    assert fired
    assert "recorded meanwhile; nothing imported" in assert_problem(r, 409)["detail"]
    listed = api.get("/api/v1/certificates", api.admin_key, params={"issuer": "old-inter"})
    assert [i["id"] for i in listed.json()["items"]] == ["0" * 24]  # not first.example.com
    assert not [e for e in api.audit() if e["action"] == "certificate.import"]


def test_an_expired_certificate_is_recorded_as_expired(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa]
) -> None:
    _, inter = old_pki
    _import_ca(api, "old-inter", inter)
    leaf = inter.leaf("gone.example.com")  # 90 days
    api.clock.advance(days=91)
    r = _import(api, leaf)
    assert r.status_code == 201, r.text
    assert r.json()["items"][0]["status"] == "expired"
    counts, _ = certificates.certificate_counts(api.services)
    assert counts[("old-inter", "expired")] == 1


def test_an_issuer_whose_stored_pem_is_unreadable_is_passed_over(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa]
) -> None:
    """An issuer PEM written over in the store (a restore, a hand edit) stops no import."""
    _, inter = old_pki
    _import_ca(api, "old-inter", inter)
    with api.services.engine.begin() as conn:
        conn.execute(update(Issuer).where(Issuer.id == "default").values(certificate_pem="x"))
    r = _import(api, inter.leaf("still.example.com"))
    assert r.status_code == 201, r.text
    assert r.json()["items"][0]["issuer"] == "old-inter"


@pytest.mark.parametrize(
    "serial", ["0", "-5", "0x80" + "00" * 19], ids=["zero", "negative", "160-bit"]
)
def test_a_serial_no_crl_can_list_is_refused_as_its_revocation_would_not_reach_clients(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa], tmp_path: Path, serial: str
) -> None:
    """OpenSSL signs such serials; the CRL leaves them off, so "revoked" would fail open."""
    _, inter = old_pki
    _import_ca(api, "old-inter", inter)
    key, csr, crt = tmp_path / "odd.key", tmp_path / "odd.csr", tmp_path / "odd.crt"
    openssl_req(key, csr, "/CN=odd.example.com")
    ok(
        run(
            "openssl", "x509", "-req", "-in", csr, "-CA", inter.crt, "-CAkey", inter.key,
            "-set_serial", serial, "-days", "30", "-out", crt,
        )
    )  # fmt: skip
    before = api.counts()
    detail = assert_problem(_import(api, crt), 400)["detail"]
    assert "certificate 1 (CN=odd.example.com" in detail
    assert "no CRL can list it" in detail
    assert api.counts() == before


def test_a_certificate_recorded_under_another_id_of_its_ca_is_409_not_recorded_twice(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa]
) -> None:
    """The same CA held under two ids: a certificate either recorded is the same certificate."""
    _, inter = old_pki
    _import_ca(api, "old-inter", inter)
    old = inter.leaf("old.example.com")
    assert _import(api, old).json()["items"][0]["issuer"] == "old-inter"
    issued = api.issue(issuer="old-inter", common_name="new.example.com", profile="server")
    _import_ca(api, "a-copy", inter)  # sorts first: the signer an import records under
    before = api.counts()
    for pem in (old.read_text(), issued["certificate_pem"]):  # imported, issued by certctl
        detail = assert_problem(api.post(IMPORT, api.admin_key, json={"certificate_pem": pem}), 409)
        assert "issuer old-inter's serial" in detail["detail"]
        assert "already recorded" in detail["detail"]
    assert api.counts() == before
    counts, _ = certificates.certificate_counts(api.services)
    assert counts[("a-copy", "active")] == 0


def test_a_bundle_of_unterminated_blocks_is_refused_at_once_and_a_cut_short_one_named(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa]
) -> None:
    """BEGIN lines without END: each one was matched against the rest of the body (~minutes)."""
    _, inter = old_pki
    _import_ca(api, "old-inter", inter)
    before = api.counts()
    started = time.monotonic()
    r = api.post(IMPORT, api.admin_key, json={"certificate_pem": "-----BEGIN A-----" * 58_000})
    assert time.monotonic() - started < 10
    assert "block 1 (A) has no -----END A----- line" in assert_problem(r, 400)["detail"]
    # The last certificate of a bundle cut short is named, not left out of the import.
    whole = inter.leaf("whole.example.com").read_text()
    cut = inter.leaf("cut.example.com").read_text()
    r = api.post(IMPORT, api.admin_key, json={"certificate_pem": whole + cut[: len(cut) // 2]})
    detail = assert_problem(r, 400)["detail"]
    assert "block 2 (CERTIFICATE) has no -----END CERTIFICATE----- line" in detail
    assert api.counts() == before


def test_a_null_prefix_certificate_is_recorded_its_nul_escaped_and_revocable(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa], tmp_path: Path
) -> None:
    """CN=www.bank.example\\0.evil.example (a null-prefix attack): PostgreSQL stores no NUL."""
    _, inter = old_pki
    _import_ca(api, "old-inter", inter)
    ca = x509.load_pem_x509_certificate(inter.crt.read_bytes())
    key = load_pem_private_key(inter.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = api.clock()
    forged = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.bank.example\0.evil.example")])
        )
        .issuer_name(ca.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    crt = tmp_path / "forged.crt"
    crt.write_bytes(forged.public_bytes(Encoding.PEM))
    r = _import(api, crt)
    assert r.status_code == 201, r.text
    item = r.json()["items"][0]
    assert item["common_name"] == "www.bank.example\\00.evil.example"  # as subject shows it
    assert item["subject"] == "CN=www.bank.example\\00.evil.example"
    r = api.post(f"/api/v1/certificates/{item['id']}/revoke", api.admin_key, json={})
    assert r.status_code == 200, r.text
    assert api.openssl_crl_serials("old-inter", tmp_path) == {forged.serial_number}


def _post_issuer(api: Api, issuer_id: str, pem: str, key_pem: str) -> None:
    r = api.post(
        "/api/v1/issuers",
        api.admin_key,
        json={"id": issuer_id, "certificate_pem": pem, "private_key_pem": key_pem},
    )
    assert r.status_code == 201, r.text


def test_a_ca_held_under_several_certificates_records_under_one_fine_for_the_certificate(
    api: Api,
) -> None:
    """One key held under several ids (renewed, superseded, re-imported): the first by id,
    expired or revoked, took every certificate, which then sat under an issuer that issues
    nothing more and whose chain clients refuse, though a fine one of the same key was held.
    The rule is the issuer import's for a parent (issuers.signer_preference)."""
    now = api.clock()
    root_key, key = generate_private_key(KeyType.EC_P256), generate_private_key(KeyType.EC_P256)
    root = CertificateAuthority(
        create_root_ca(
            root_key, common_name_dn("Held Root"), validity=timedelta(days=365), now=now
        ).certificate,
        root_key,
    )
    root_pem = certs_to_pem([root.certificate]).decode()
    _post_issuer(api, "root", root_pem, key_to_pem(root_key).decode())
    key_pem = key_to_pem(key).decode()

    def ca_cert(days: int, at: Any) -> x509.Certificate:
        return root.issue(
            key.public_key(),
            common_name_dn("Held Twice"),
            profile=get_profile("intermediate"),
            validity=timedelta(days=days),
            now=at,
        ).certificate

    short, superseded, renewed = ca_cert(10, now), ca_cert(200, now), ca_cert(300, now)
    for issuer_id, cert in (("a-short", short), ("b-superseded", superseded), ("c-new", renewed)):
        _post_issuer(api, issuer_id, certs_to_pem([cert]).decode() + root_pem, key_pem)
    r = api.post(
        "/api/v1/issuers/b-superseded/revoke", api.admin_key, json={"reason": "superseded"}
    )
    assert r.status_code == 200, r.text

    def leaf(cn: str, at: Any) -> str:
        issued = CertificateAuthority(renewed, key, (root.certificate,)).issue(
            generate_private_key(KeyType.EC_P256).public_key(),
            common_name_dn(cn),
            profile=get_profile("server"),
            validity=timedelta(days=60),
            now=at,
        )
        return certs_to_pem([issued.certificate]).decode()

    before = leaf("before.example.com", now)
    later = api.clock.advance(days=20)  # a-short has expired
    # Renewed again: current, but not yet valid when before.example.com was signed.
    _post_issuer(api, "a-later", certs_to_pem([ca_cert(100, later)]).decode() + root_pem, key_pem)
    after = leaf("after.example.com", later)
    r = api.post(IMPORT, api.admin_key, json={"certificate_pem": before + after})
    assert r.status_code == 201, r.text
    assert [i["issuer"] for i in r.json()["items"]] == ["c-new", "a-later"]


def test_skip_existing_records_what_is_new_and_names_what_was_recorded_already(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa]
) -> None:
    """A migration run again: without skip_existing its bundle is refused whole (409)."""
    _, inter = old_pki
    _import_ca(api, "old-inter", inter)
    old, new, newer = (inter.leaf(f"{n}.example.com") for n in ("old", "new", "newer"))
    first = _import(api, old).json()["items"][0]
    _import_ca(api, "a-copy", inter)  # the same CA under an id sorting first
    bundle = "".join(c.read_text() for c in (new, old))
    before = api.counts()
    assert_problem(api.post(IMPORT, api.admin_key, json={"certificate_pem": bundle}), 409)
    assert api.counts() == before
    r = api.post(IMPORT, api.admin_key, json={"certificate_pem": bundle, "skip_existing": True})
    assert r.status_code == 201, r.text
    assert [i["common_name"] for i in r.json()["items"]] == ["new.example.com"]
    assert r.json()["skipped"] == [
        {
            "certificate": 2,
            "id": first["id"],
            "issuer": "old-inter",
            "serial": first["serial"],
            "subject": "CN=old.example.com",
        }
    ]
    assert api.counts()["certificates"] == before["certificates"] + 1
    imports = [e for e in api.audit() if e["action"] == "certificate.import"]
    assert len(imports) == 2  # old's first import, then new's: nothing for the skipped one
    # Everything held already: nothing recorded, every one named.
    r = api.post(IMPORT, api.admin_key, json={"certificate_pem": bundle, "skip_existing": True})
    assert r.status_code == 201, r.text
    assert r.json()["items"] == []
    assert [s["certificate"] for s in r.json()["skipped"]] == [1, 2]
    # Without it, as before: a plain import answers skipped [] and refuses what is held.
    r = _import(api, newer)
    assert (r.status_code, r.json()["skipped"]) == (201, [])
    # Files concatenated with overlaps: the very same certificate again is passed over as
    # held by its first copy, whether that copy is recorded now or was before.
    newest = inter.leaf("newest.example.com")
    twice = newest.read_text() + newer.read_text() + newest.read_text()
    r = api.post(IMPORT, api.admin_key, json={"certificate_pem": twice, "skip_existing": True})
    assert r.status_code == 201, r.text
    (recorded,) = r.json()["items"]
    assert recorded["common_name"] == "newest.example.com"
    held_newer = api.get("/api/v1/certificates?q=newer.example.com", api.admin_key).json()
    assert [(s["certificate"], s["id"]) for s in r.json()["skipped"]] == [
        (2, held_newer["items"][0]["id"]),
        (3, recorded["id"]),
    ]
    assert r.json()["skipped"][1]["subject"] == "CN=newest.example.com"
    # The bundle's own mistakes are still refused with it: another certificate under a serial
    # the bundle already holds (a CA fault), and without skip_existing any repeat.
    before = api.counts()
    serial = x509.load_pem_x509_certificate(newest.read_bytes()).serial_number
    other = inter.leaf("other.example.com", serial=serial)
    r = api.post(
        IMPORT,
        api.admin_key,
        json={"certificate_pem": other.read_text() + newest.read_text(), "skip_existing": True},
    )
    assert "same serial as certificate 1" in assert_problem(r, 400)["detail"]
    r = api.post(IMPORT, api.admin_key, json={"certificate_pem": newest.read_text() * 2})
    assert "same serial as certificate 1" in assert_problem(r, 400)["detail"]
    assert api.counts() == before


def test_a_bundle_under_the_body_limit_is_imported_and_one_over_it_is_413(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa]
) -> None:
    """certificate_pem stopped at 1,000,000 characters, under the 1 MiB body limit: a bundle
    in between got a 400 on the field's length, never the 413 'certctl certs import' turns
    into how many certificates to import per command."""
    from certctl.api.app import MAX_BODY_BYTES

    _, inter = old_pki
    _import_ca(api, "old-inter", inter)
    ca = x509.load_pem_x509_certificate(inter.crt.read_bytes())
    ca_key = load_pem_private_key(inter.key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = api.clock()
    names = [x509.DNSName(f"host-{n:04}.big-bundle.example.internal") for n in range(400)]
    leaf_key = ec.generate_private_key(ec.SECP256R1())

    def leaf(number: int) -> str:
        cn = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"big-{number}.example.internal")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(cn)
            .issuer_name(ca.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(Encoding.PEM).decode()

    bundle = ""
    while len(bundle) <= 1_000_000:
        bundle += leaf(len(bundle))
    body = {"certificate_pem": bundle}
    assert len(json.dumps(body)) < MAX_BODY_BYTES  # in between
    r = api.post(IMPORT, api.admin_key, json=body)
    assert r.status_code == 201, r.text[:300]
    assert len(r.json()["items"]) == bundle.count("-----BEGIN CERTIFICATE-----")
    before = api.counts()
    while len(json.dumps(body)) <= MAX_BODY_BYTES:
        body["certificate_pem"] += leaf(len(body["certificate_pem"]))
    detail = assert_problem(api.post(IMPORT, api.admin_key, json=body), 413)["detail"]
    assert detail == f"request body over {MAX_BODY_BYTES} bytes"
    assert api.counts() == before


def test_the_self_signed_modes_server_certificate_is_refused(api: Api, tmp_path: Path) -> None:
    """tls.crt as certctl serve issues it (the internal CA, no row in the certificates table).

    Recorded, any cert.revoke holder could put it on the default CA's CRL: every client of
    certctl checking that CRL would refuse certctl itself.
    """
    from certctl.server.tls import ensure_self_signed
    from certctl.services.issuers import load_issuer_state

    ca, _ = load_issuer_state(api.services, "default")
    now = api.clock()
    assert ensure_self_signed(
        tmp_path, ca, extra_sans=[], validity=timedelta(days=30),
        rotate_before=timedelta(days=1), now=now,
    )  # fmt: skip
    before = api.counts()
    r = api.post(
        IMPORT, api.admin_key, json={"certificate_pem": (tmp_path / "tls.crt").read_text()}
    )
    detail = assert_problem(r, 409)["detail"]
    assert detail.startswith("certificate 1 (CN=certctl-server, serial "), detail
    assert "certctl's own server certificate (for certctl-server, localhost" in detail
    assert api.counts() == before
    # A leaf of the internal CA for other names, issued outside the table, is still recorded.
    key = generate_private_key(KeyType.parse("ec-p256"))
    leaf = ca.issue(
        key.public_key(), common_name_dn("web.example.com"), profile=get_profile("server"),
        validity=timedelta(days=30), now=now,
    )  # fmt: skip
    pem = certs_to_pem([leaf.certificate]).decode()
    assert api.post(IMPORT, api.admin_key, json={"certificate_pem": pem}).status_code == 201
    # One that names localhost too is another server's (a developer's), not certctl's: it was
    # refused as certctl's own, and a bundle holding it imported nothing.
    shared = ca.issue(
        key.public_key(), common_name_dn("dev.example.com"), profile=get_profile("server"),
        validity=timedelta(days=30), now=now,
        sans=SubjectAltNames.parse(dns=["dev.example.com", "localhost"], ip=["127.0.0.1"]),
    )  # fmt: skip
    pem = certs_to_pem([shared.certificate]).decode()
    r = api.post(IMPORT, api.admin_key, json={"certificate_pem": pem})
    assert r.status_code == 201, r.text
    # Another replica's tls.crt (its own host name and listen address in it) stays refused.
    replica = tmp_path / "replica"
    assert ensure_self_signed(
        replica, ca, extra_sans=["certctl-1.certctl.internal", "10.0.0.6"],
        validity=timedelta(days=30), rotate_before=timedelta(days=1), now=now,
    )  # fmt: skip
    before = api.counts()
    r = api.post(IMPORT, api.admin_key, json={"certificate_pem": (replica / "tls.crt").read_text()})
    assert "certctl's own server certificate" in assert_problem(r, 409)["detail"]
    assert api.counts() == before


def test_the_served_certificate_of_tls_mode_custom_is_refused_under_its_root(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa], tmp_path: Path
) -> None:
    """tls.crt issued by a CA certctl holds now (imported, so its CRL is certctl's).

    Recorded, any cert.revoke holder could put it on that CRL and cut off certctl's clients
    that check it. A leaf for other names, and the same names under another root, are fine.
    """
    from certctl.server.tls import ServerTLS, serve_names_of

    root, inter = old_pki
    _import_ca(api, "old-root", root)
    _import_ca(api, "old-inter", inter)
    api.services.server_names = None  # as bootstrap leaves it in tls.mode custom
    served = inter.leaf("certctl.corp.example")
    served_dir = tmp_path / "served"
    served_dir.mkdir()
    (served_dir / "tls.crt").write_bytes(served.read_bytes())  # the leaf alone
    (served_dir / "tls.key").write_bytes(served.with_suffix(".key").read_bytes())
    # Real time: openssl's notBefore is now, past the frozen api.clock at times.
    now = datetime.now(UTC)
    assert ServerTLS(served_dir, on_serve=serve_names_of(api.services)).load(now)
    other = inter.leaf("www.corp.example")
    (tmp_path / "else").mkdir()
    elsewhere = OpensslCa(tmp_path / "else", "else", "/CN=Elsewhere")
    _import_ca(api, "elsewhere", elsewhere)
    same_name_elsewhere = elsewhere.leaf("certctl.corp.example")
    before = api.counts()
    detail = assert_problem(_import(api, other, served), 409)["detail"]
    assert detail.startswith("certificate 2 (CN=certctl.corp.example, serial "), detail
    assert "certctl's own server certificate (for certctl.corp.example," in detail
    assert detail.endswith("nothing imported")
    assert api.counts() == before
    r = _import(api, other, same_name_elsewhere)
    assert r.status_code == 201, r.text
    # A certificate that names certctl's host among others (a shared host's), or a wildcard
    # over it (a load balancer's), is not the one certctl serves: revoked, no client of
    # certctl notices. They were refused as certctl's own, a migration's bundle with them
    # imported nothing.
    shared = inter.leaf("vault.corp.example", also=("certctl.corp.example",))
    wildcard = inter.leaf("*.corp.example")
    r = _import(api, shared, wildcard)
    assert r.status_code == 201, r.text
    assert len(r.json()["items"]) == 2


def test_a_served_certificate_with_no_subject_alt_names_is_refused_by_its_cn(
    api: Api, old_pki: tuple[OpensslCa, OpensslCa], tmp_path: Path
) -> None:
    """tls.mode custom with a legacy tls.crt, its host name in its CN only.

    certctl guards that CN as its name (serve_names_of), but the import looked at SANs only:
    the served certificate was recorded, and a revocation could cut off certctl's clients.
    """
    from certctl.server.tls import ServerTLS, serve_names_of

    root, inter = old_pki
    _import_ca(api, "old-root", root)
    _import_ca(api, "old-inter", inter)
    api.services.server_names = None  # as bootstrap leaves it in tls.mode custom
    served_dir = tmp_path / "served"
    served_dir.mkdir()
    key, csr, crt = (served_dir / name for name in ("tls.key", "tls.csr", "tls.crt"))
    openssl_req(key, csr, "/CN=legacy.corp.example")
    inter.sign(
        csr,
        crt,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n",
    )
    assert ServerTLS(served_dir, on_serve=serve_names_of(api.services)).load(datetime.now(UTC))
    before = api.counts()
    detail = assert_problem(_import(api, crt), 409)["detail"]
    assert "certctl's own server certificate (for legacy.corp.example," in detail, detail
    assert api.counts() == before
    # Another CN-only leaf of that CA is not certctl's.
    other_csr, other = tmp_path / "other.csr", tmp_path / "other.crt"
    openssl_req(tmp_path / "other.key", other_csr, "/CN=old.corp.example")
    inter.sign(other_csr, other, "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    r = _import(api, other)
    assert r.status_code == 201, r.text
