"""``certctl inspect --help`` names the very keys ``--json`` prints, for each kind."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from certctl.cli.inspect import inspect_command, material_summaries
from certctl.pki import (
    CertificateAuthority,
    KeyType,
    RevokedEntry,
    common_name_dn,
    create_crl,
    create_root_ca,
    generate_private_key,
)
from certctl.pki.csr import create_csr
from certctl.pki.formats import Material

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _listed_keys(kind: str) -> set[str]:
    # The help says `"<kind>" (key, key, …)`: a script writer reads the names from there.
    text = " ".join((inspect_command.__doc__ or "").split())
    match = re.search(rf'"{kind}" object \(([^)]*)\)|"{kind}" \(([^)]*)\)', text)
    assert match is not None, kind
    listed = match.group(1) or match.group(2)
    return {name.split(":")[0].strip() for name in listed.split(",")}


def test_the_help_names_the_json_keys_of_each_kind() -> None:
    # It said "validity" and "key usages" for a certificate (the keys are not_before,
    # not_after, key_usage, extended_key_usage), "updates" and "revoked serials" for a CRL,
    # and left out key_type and public_key_fingerprint_sha256 of certificates and CSRs.
    key = generate_private_key(KeyType.EC_P256)
    root = create_root_ca(key, common_name_dn("Help CA"), validity=timedelta(days=30), now=NOW)
    ca = CertificateAuthority(root.certificate, key)
    crl = create_crl(ca, [RevokedEntry(0x1234, NOW)], now=NOW)
    materials = {
        "certificate": Material(certificates=[root.certificate]),
        "private-key": Material(private_key=key),
        "csr": Material(csrs=[create_csr(key, common_name_dn("csr"))]),
        "crl": Material(crls=[crl]),
    }
    for kind, material in materials.items():
        [item] = material_summaries(material)
        assert item["kind"] == kind
        assert _listed_keys(kind) == set(item) - {"kind", "format"}, kind
