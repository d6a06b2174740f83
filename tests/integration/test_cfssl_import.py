"""A PKI made with cfssl, taken over offline: ``certctl ca import``, ``crl create``, ``verify``.

Real cfssl (Debian's golang-cfssl) makes the CAs and leaves as teams that migrate have them;
openssl judges what certctl then signs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._tools import ok, run
from tests.integration.conftest import certctl, certctl_ok

pytestmark = pytest.mark.integration


def _cfssl(directory: Path, bare: str, *args: str) -> None:
    """``cfssl ARGS | cfssljson -bare BARE`` in ``directory``: BARE.pem, BARE-key.pem."""
    made = ok(run("cfssl", *args, cwd=directory))
    ok(run("cfssljson", "-bare", bare, input=made.stdout, cwd=directory))


@pytest.fixture(scope="module")
def cfssl_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ECDSA root from ``cfssl gencert -initca`` and two leaves it signed."""
    d = tmp_path_factory.mktemp("cfssl")
    key = {"algo": "ecdsa", "size": 256}
    (d / "ca-csr.json").write_text(json.dumps({"CN": "cfssl Root", "key": key}))
    (d / "config.json").write_text(
        json.dumps(
            {
                "signing": {
                    "default": {"expiry": "8760h"},
                    "profiles": {
                        "server": {
                            "usages": ["signing", "key encipherment", "server auth"],
                            "expiry": "8760h",
                        }
                    },
                }
            }
        )
    )
    _cfssl(d, "ca", "gencert", "-initca", "ca-csr.json")
    for name in ("old", "kept"):
        (d / f"{name}.json").write_text(
            json.dumps({"CN": f"{name}.example.com", "hosts": [f"{name}.example.com"], "key": key})
        )
        _cfssl(d, name, "gencert", "-ca", "ca.pem", "-ca-key", "ca-key.pem",
               "-config", "config.json", "-profile", "server", f"{name}.json")  # fmt: skip
    return d


def test_a_decimal_serial_as_cfssl_prints_it_is_refused_naming_its_dec_form(
    cfssl_pki: Path, tmp_path: Path
) -> None:
    """cfssl prints serials in decimal (its log, ``cfssl certinfo``); ``--revoked`` reads
    digits as hex, as openssl prints them. Before, the refusal said only "at most 20 octets"
    of a serial cfssl had just issued; now it names ``dec:``, which lists the certificate."""
    d = cfssl_pki
    certctl_ok("ca", "import", "--cert", d / "ca.pem", "--key", d / "ca-key.pem",
               "--out", tmp_path / "ca")  # fmt: skip
    info = json.loads(ok(run("cfssl", "certinfo", "-cert", d / "old.pem")).stdout)
    serial = info["serial_number"]
    assert serial.isdigit(), serial
    crl = tmp_path / "ca.crl"
    refused = certctl("crl", "create", "--ca", tmp_path / "ca", "--revoked", serial, "--out", crl)
    assert refused.code == 1
    assert refused.err.startswith(f"certctl: error: {serial}: serial numbers are positive")
    assert f"as cfssl prints serials, write dec:{serial}" in refused.err
    assert not crl.exists()

    certctl_ok("crl", "create", "--ca", tmp_path / "ca", "--revoked", f"dec:{serial}",
               "--reason", "superseded", "--out", crl)  # fmt: skip
    revoked = run("openssl", "verify", "-crl_check", "-CRLfile", crl, "-CAfile", d / "ca.pem",
                  d / "old.pem")  # fmt: skip
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr
    # The negative twin: cfssl's other leaf is not listed.
    ok(run("openssl", "verify", "-crl_check", "-CRLfile", crl, "-CAfile", d / "ca.pem",
           d / "kept.pem"))  # fmt: skip
