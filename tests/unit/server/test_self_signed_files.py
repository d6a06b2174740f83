"""The self-signed files in <data-dir>/tls are certctl's own: a damaged one is replaced."""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from certctl.errors import InvalidRequest
from certctl.pki import (
    CertificateAuthority,
    certs_to_pem,
    create_root_ca,
    generate_private_key,
    key_to_pem,
    keys_match,
    load_material,
    parse_dn,
)
from certctl.server.config import load_config
from certctl.server.run import self_signed_names
from certctl.server.tls import ServerTLS, ensure_self_signed
from tests._tools import failed, ok, run

NOW = datetime.now(UTC)


def _ensure(tls_dir: Path, ca: CertificateAuthority) -> bool:
    return ensure_self_signed(
        tls_dir,
        ca,
        extra_sans=[],
        validity=timedelta(days=30),
        rotate_before=timedelta(days=1),
        now=NOW,
    )


def _pair_matches(tls_dir: Path) -> bool:
    cert = load_material((tls_dir / "tls.crt").read_bytes()).certificates[0]
    key = load_material((tls_dir / "tls.key").read_bytes()).private_key
    assert key is not None
    return keys_match(key, cert)


@pytest.mark.parametrize(
    "damage",
    [b"junk\n", b"", key_to_pem(generate_private_key())],
    ids=["garbage", "empty", "another key"],
)
def test_a_damaged_tls_key_is_reissued_not_a_failed_start(
    tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # The pair was judged by tls.crt alone, so every start then failed at the listener
    # ("tls.key does not match tls.crt") until someone deleted the directory by hand.
    key = generate_private_key()
    root = create_root_ca(key, parse_dn("CN=test CA"), validity=timedelta(days=365), now=NOW)
    ca = CertificateAuthority(root.certificate, key)
    tls_dir = tmp_path / "tls"
    assert _ensure(tls_dir, ca)
    assert not _ensure(tls_dir, ca)  # negative twin: a sound pair is kept
    (tls_dir / "tls.key").write_bytes(damage)
    assert _ensure(tls_dir, ca)
    assert "unusable" in caplog.text
    assert _pair_matches(tls_dir)
    ServerTLS(tls_dir).load(NOW)  # what the listener does at start


def _ca(cn: str) -> CertificateAuthority:
    key = generate_private_key()
    root = create_root_ca(key, parse_dn(f"CN={cn}"), validity=timedelta(days=365), now=NOW)
    return CertificateAuthority(root.certificate, key)


def test_a_client_ca_change_during_a_certificate_reload_is_not_undone(tmp_path: Path) -> None:
    # In self-signed mode the renewal thread reloads the certificate while another thread
    # applies a changed tls.client-ca. The reload built its context around the old client
    # CAs outside the lock and swapped it in after: the removed CA was trusted again, and the
    # file, already marked as applied, was never read again.
    tls_dir = tmp_path / "tls"
    _ensure(tls_dir, _ca("server CA 1"))
    client_ca = tmp_path / "clients.crt"
    client_ca.write_bytes(certs_to_pem([_ca("old client CA").certificate]))
    tls = ServerTLS(tls_dir, client_auth="optional", client_ca=client_ca)
    tls.load(NOW)
    _ensure(tls_dir, _ca("server CA 2"))  # a renewed server certificate to reload
    real = tls._context_for
    building = threading.Event()

    def slow(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
        context = real(cert_pem, key_pem)
        building.set()
        time.sleep(0.5)  # the reload is slow: the client-ca change lands meanwhile
        return context

    tls._context_for = slow  # type: ignore[method-assign]
    reload = threading.Thread(target=tls.load, args=(NOW,))
    reload.start()
    assert building.wait(10)
    client_ca.write_bytes(certs_to_pem([_ca("new client CA").certificate]))
    assert tls.check_client_ca()
    reload.join(10)
    trusted = [dict(rdn[0] for rdn in ca["subject"]) for ca in tls.context.get_ca_certs()]
    assert trusted == [{"commonName": "new client CA"}]


def test_a_client_ca_file_caught_mid_write_is_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # cp truncates the file, then writes it: a poll in between read an empty file and
    # logged an ERROR (and counted a failed reload) for a change that was fine a second later.
    tls_dir = tmp_path / "tls"
    _ensure(tls_dir, _ca("server CA"))
    client_ca = tmp_path / "clients.crt"
    client_ca.write_bytes(certs_to_pem([_ca("old client CA").certificate]))
    tls = ServerTLS(tls_dir, client_auth="optional", client_ca=client_ca)
    tls.load(NOW)
    new = certs_to_pem([_ca("new client CA").certificate])
    client_ca.write_bytes(b"")
    assert not tls.check_client_ca()
    client_ca.write_bytes(new[: len(new) // 2])
    assert not tls.check_client_ca()
    client_ca.write_bytes(new)
    assert tls.check_client_ca()
    assert "cannot be used" not in caplog.text
    # Twin: a bad file still there at the next poll is refused, once.
    client_ca.write_bytes(b"not a certificate\n")
    for _ in range(3):
        assert not tls.check_client_ca()
    assert caplog.text.count("cannot be used") == 1
    trusted = [dict(rdn[0] for rdn in ca["subject"]) for ca in tls.context.get_ca_certs()]
    assert trusted == [{"commonName": "new client CA"}]


def _verify_ip(tls_dir: Path, address: str) -> subprocess.CompletedProcess[str]:
    """openssl verify of the served certificate for a client connecting to ``address``."""
    return run(
        "openssl",
        "verify",
        "-CAfile",
        tls_dir / "ca.crt",
        "-purpose",
        "sslserver",
        "-verify_ip",
        address,
        tls_dir / "tls.crt",
    )


def test_the_listen_addresses_are_in_the_self_signed_certificate(tmp_path: Path) -> None:
    # listen: 10.0.0.5:8443 served a certificate without 10.0.0.5: every verifying client,
    # the start banner's own curl line first, failed with a name mismatch.
    key = generate_private_key()
    root = create_root_ca(key, parse_dn("CN=test CA"), validity=timedelta(days=365), now=NOW)
    ca = CertificateAuthority(root.certificate, key)
    config = load_config(
        None, {"listen": "192.0.2.10:8443", "metrics.listen": "[2001:db8::5]:9443"}
    )
    tls_dir = tmp_path / "tls"
    ensure_self_signed(
        tls_dir,
        ca,
        extra_sans=self_signed_names(config),
        validity=timedelta(days=30),
        rotate_before=timedelta(days=1),
        now=NOW,
    )
    for address in ("192.0.2.10", "2001:db8::5", "127.0.0.1"):
        ok(_verify_ip(tls_dir, address))
    assert "IP address mismatch" in failed(_verify_ip(tls_dir, "192.0.2.11")).stderr
    # A wildcard is nowhere to connect to.
    for listen in ("0.0.0.0:8443", "[::]:8443"):
        assert self_signed_names(load_config(None, {"listen": listen})) == []
    named = load_config(None, {"listen": "certctl.example.internal:8443"})
    assert self_signed_names(named) == ["certctl.example.internal"]


def test_the_served_certificate_gauge_names_the_listener_as_the_other_tls_metrics(
    tmp_path: Path,
) -> None:
    # certctl_tls_certificate_not_after_timestamp_seconds said listener="api" while
    # certctl_tls_handshake_failures_total and certctl_http_connections_refused_total say
    # listener="main" (and "metrics"): a dashboard filtering or joining on listener found
    # nothing for one of them.
    from certctl.metrics.registry import REGISTRY

    tls_dir = tmp_path / "tls"
    assert _ensure(tls_dir, _ca("gauge CA"))
    ServerTLS(tls_dir).load(NOW)
    leaf = load_material((tls_dir / "tls.crt").read_bytes()).certificates[0]
    name = "certctl_tls_certificate_not_after_timestamp_seconds"
    served = REGISTRY.get_sample_value(name, {"listener": "main"})
    assert served == leaf.not_valid_after_utc.timestamp()


def test_a_client_ca_file_the_mappings_cannot_use_is_refused_at_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Start refuses a mapping without issuer-fingerprint when tls.client-ca holds several
    # CAs; a second CA added to the file afterwards was trusted at the next poll, and could
    # then mint that mapping's subject. The file is now refused as an unusable one is.
    from certctl.server.client_mappings import client_ca_vet

    tls_dir = tmp_path / "tls"
    _ensure(tls_dir, _ca("server CA"))
    client_ca = tmp_path / "clients.crt"
    team, rogue = _ca("team CA").certificate, _ca("rogue CA").certificate
    client_ca.write_bytes(certs_to_pem([team]))
    doc = {
        "tls": {"client-auth": "optional", "client-ca": str(client_ca)},
        "auth": {"client-cert-mappings": [{"subject": "CN=*", "roles": ["r-admin"]}]},
    }
    (tmp_path / "certctl.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(tmp_path / "certctl.yaml", {})
    tls = ServerTLS(
        tls_dir,
        client_auth="optional",
        client_ca=client_ca,
        vet_client_ca=client_ca_vet(config),
    )
    tls.load(NOW)
    client_ca.write_bytes(certs_to_pem([team, rogue]))
    for _ in range(3):
        assert not tls.check_client_ca()
    assert caplog.text.count("cannot be used") == 1
    assert "auth.client-cert-mappings.0 (subject 'CN=*') has no issuer-fingerprint" in caplog.text
    trusted = [dict(rdn[0] for rdn in ca["subject"]) for ca in tls.context.get_ca_certs()]
    assert trusted == [{"commonName": "team CA"}]
    # Twin: one CA again (the rogue one replacing the team's) is applied.
    client_ca.write_bytes(certs_to_pem([rogue]))
    assert tls.check_client_ca()


def unparsable_ca(cn: str) -> bytes:
    """A CA certificate (PEM) OpenSSL reads and ``cryptography`` cannot.

    Its country (a PrintableString) holds '@', which PrintableString does not allow: real
    CAs break DER rules OpenSSL tolerates (an email in a PrintableString, a default value
    encoded). Its signature no longer verifies; OpenSSL never checks a trust anchor's own.
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    der = _ca(f"{cn},C=FR").certificate.public_bytes(Encoding.DER)
    country = b"\x06\x03\x55\x04\x06\x13\x02"
    assert der.count(country + b"FR") == 2  # subject and issuer
    pem = ssl.DER_cert_to_PEM_cert(der.replace(country + b"FR", country + b"F@")).encode()
    with pytest.raises(ValueError, match="PrintableString"):
        x509.load_pem_x509_certificate(pem)
    return pem


def test_a_client_ca_cryptography_cannot_parse_serves_as_openssl_reads_it(tmp_path: Path) -> None:
    # Judging tls.client-ca for the mappings parsed it with cryptography, stricter than
    # OpenSSL: such a CA (no mapping at all, or one unpinned mapping and that CA alone) made
    # the start fail with "cannot read every certificate in it". It serves again.
    from certctl.server.client_mappings import client_ca_vet

    tls_dir = tmp_path / "tls"
    _ensure(tls_dir, _ca("server CA"))
    client_ca = tmp_path / "clients.crt"
    client_ca.write_bytes(unparsable_ca("Old CA"))
    for mappings in ([], [{"subject": "CN=*", "roles": ["r-viewer"]}]):
        doc = {
            "tls": {"client-auth": "optional", "client-ca": str(client_ca)},
            "auth": {"client-cert-mappings": mappings},
        }
        (tmp_path / "certctl.yaml").write_text(yaml.safe_dump(doc))
        config = load_config(tmp_path / "certctl.yaml", {})
        tls = ServerTLS(
            tls_dir,
            client_auth="optional",
            client_ca=client_ca,
            vet_client_ca=client_ca_vet(config),
        )
        tls.load(NOW)
        trusted = [dict(rdn[0] for rdn in ca["subject"]) for ca in tls.context.get_ca_certs()]
        assert trusted == [{"commonName": "Old CA", "countryName": "F@"}], mappings


def test_an_unparsable_ca_counts_as_a_ca_of_its_own_for_the_mappings(tmp_path: Path) -> None:
    # At start it read "no PEM certificate in it" when an unpinned mapping was configured.
    import hashlib

    from certctl.server.client_mappings import client_cert_mappings

    old = unparsable_ca("Old CA")
    client_ca = tmp_path / "clients.crt"
    client_ca.write_bytes(old)
    doc = {
        "tls": {"client-auth": "optional", "client-ca": str(client_ca)},
        "auth": {"client-cert-mappings": [{"subject": "CN=*", "roles": ["r-viewer"]}]},
    }
    (tmp_path / "certctl.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(tmp_path / "certctl.yaml", {})
    assert [m.issuer for m in client_cert_mappings(config)] == [None]
    # Beside another CA it may be a second one: refused, named by its fingerprint.
    client_ca.write_bytes(old + certs_to_pem([_ca("team CA").certificate]))
    with pytest.raises(InvalidRequest) as refused:
        client_cert_mappings(config)
    der = ssl.PEM_cert_to_DER_cert(old.decode())
    unread = f"a certificate certctl cannot parse {hashlib.sha256(der).hexdigest()}"
    assert "holds 2 CAs that could each issue that subject (CN=team CA " in refused.value.detail
    assert f"; {unread}): pin the mapping" in refused.value.detail
