"""certctl verify of a leaf sent without its intermediate: the failure says how to give it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from certctl.cli.main import run
from certctl.pki import certs_to_pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/, issuing/ (an intermediate under it) and node/ (a leaf from issuing/)."""
    base = tmp_path_factory.mktemp("verify-intermediates")
    assert run(["ca", "create", "--out", str(base / "root"), "--cn", "Root"]) == 0
    parent = ["--parent", str(base / "root")]
    assert run(["ca", "create", "--out", str(base / "issuing"), *parent, "--cn", "Issuing"]) == 0
    node = ["--cn", "node.example.com", "--out", str(base / "node")]
    assert run(["cert", "issue", "--ca", str(base / "issuing"), *node]) == 0
    leaf = x509.load_pem_x509_certificates((base / "node" / "tls.crt").read_bytes())[0]
    (base / "leaf.crt").write_bytes(certs_to_pem([leaf]))
    return base


def test_a_leaf_alone_is_told_to_give_its_intermediates(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: "… is neither in the trust bundle nor among the intermediates", which did not
    # say where intermediates come from (openssl: "unable to get local issuer certificate").
    capsys.readouterr()
    assert run(["verify", "--ca", str(pki / "root" / "ca.crt"), str(pki / "leaf.crt")]) == 1
    assert capsys.readouterr() == (
        "",
        "certctl: error: verification failed: CN=Issuing, the issuer of CN=node.example.com, "
        "is neither in the trust bundle nor among the intermediates; give an intermediate CA "
        f"with --untrusted FILE (or after the certificate in {pki / 'leaf.crt'}), a root in "
        "--ca\n",
    )
    untrusted = ["--untrusted", str(pki / "issuing" / "ca-chain.crt")]
    leaf = [*untrusted, str(pki / "leaf.crt")]
    assert run(["verify", "--ca", str(pki / "root" / "ca.crt"), *leaf]) == 0
    assert capsys.readouterr().out.endswith("CN=node.example.com <- CN=Issuing <- CN=Root\n")


def test_a_wrong_trust_bundle_is_told_where_the_root_goes(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The chain was given whole: what is missing is the root, which the same hint places.
    capsys.readouterr()
    other = pki / "other"
    assert run(["ca", "create", "--out", str(other), "--cn", "Other"]) == 0
    capsys.readouterr()
    tls = pki / "node" / "tls.crt"
    assert run(["verify", "--ca", str(other / "ca.crt"), str(tls)]) == 1
    assert capsys.readouterr().err == (
        "certctl: error: verification failed: CN=Root, the issuer of CN=Issuing, is neither in "
        "the trust bundle nor among the intermediates; give an intermediate CA with --untrusted "
        f"FILE (or after the certificate in {tls}), a root in --ca\n"
    )


def test_other_failures_get_no_such_hint(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The host name is checked first: a leaf without its intermediate fails for the name.
    capsys.readouterr()
    leaf = ["--hostname", "other.example.com", str(pki / "leaf.crt")]
    assert run(["verify", "--ca", str(pki / "root" / "ca.crt"), *leaf]) == 1
    err = capsys.readouterr().err
    assert "other.example.com is not in the certificate's SANs" in err
    assert "--untrusted" not in err
