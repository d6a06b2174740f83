"""The no-client trust anchor: deterministic, per name and seed, and nothing chains to it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from certctl.pki.placeholder import PLACEHOLDER_CN_PREFIX, no_client_trust_anchor
from certctl.store.keywrap import KeyWrapper
from tests._tools import openssl_req


def test_stable_for_one_seed_and_name_and_distinct_otherwise() -> None:
    wrapper = KeyWrapper(os.urandom(32))
    seed = wrapper.derive("client-trust placeholder:web")
    first = no_client_trust_anchor(seed, "web")
    assert no_client_trust_anchor(seed, "web") == first
    other_seed = wrapper.derive("client-trust placeholder:api")
    assert other_seed != seed
    assert no_client_trust_anchor(other_seed, "api") != first
    # Another master key, another anchor: the key cannot be computed from public facts.
    assert KeyWrapper(os.urandom(32)).derive("client-trust placeholder:web") != seed
    cert = x509.load_pem_x509_certificate(first)
    assert cert.subject.rfc4514_string() == f"CN={PLACEHOLDER_CN_PREFIX} (web)"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_client_certificate_does_not_verify_against_it(tmp_path: Path) -> None:
    anchor = tmp_path / "trust.pem"
    anchor.write_bytes(no_client_trust_anchor(os.urandom(32), "web"))
    key, cert = tmp_path / "c.key", tmp_path / "c.crt"
    openssl_req(key, cert, "/CN=mallory", "-days", "1", x509=True)
    result = subprocess.run(
        ["openssl", "verify", "-purpose", "sslclient", "-CAfile", anchor, cert],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0, result.stdout
    # openssl accepts the file as a trust store (it is not empty or malformed).
    ok = subprocess.run(["openssl", "verify", "-CAfile", anchor, anchor], capture_output=True)
    assert ok.returncode == 0, ok.stderr


def test_seed_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        no_client_trust_anchor(b"short", "web")
