"""``certctl verify --crl`` agrees with ``openssl verify -crl_check`` (and ``-crl_check_all``).

CRLs come from certctl's own ``crl create`` and from ``openssl ca -gencrl`` / ``-revoke``
with a minimal ``openssl ca`` set-up over the CA directories certctl wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tests._tools import ok, openssl_req, run
from tests._tools import openssl_verify as openssl_verdict
from tests.integration.conftest import CliResult, Pki, certctl, certctl_ok

pytestmark = pytest.mark.integration

OPENSSL_CA_CONF = """\
[ ca ]
default_ca = CA_default

[ CA_default ]
dir = {dir}
database = $dir/index.txt
crlnumber = $dir/crlnumber
new_certs_dir = $dir
certificate = {cert}
private_key = {key}
default_md = sha256
default_crl_days = 1
policy = policy_any

[ policy_any ]
commonName = supplied

[ user_only ]
issuingDistributionPoint = critical, @idp_user
[ idp_user ]
onlyuser = TRUE

[ ca_only ]
issuingDistributionPoint = critical, @idp_ca
[ idp_ca ]
onlyCA = TRUE

[ dp_x ]
issuingDistributionPoint = critical, @idp_x
[ idp_x ]
fullname = URI:http://x.example/ca.crl

[ unknown_critical ]
1.2.3.4 = critical, ASN1:NULL
"""


@dataclass(frozen=True)
class Setup:
    """root -> intermediate -> leaves, each CA also run by ``openssl ca``; an unrelated root."""

    root: Path
    inter: Path
    good: Path  # leaf listed in no CRL
    gone: Path  # leaf revoked (keyCompromise)
    other: Path  # another root CA
    tmp: Path

    def openssl_ca(self, ca_dir: Path, *args: str | Path) -> None:
        """Run ``openssl ca`` for ``ca_dir``'s CA with its own index and CRL number."""
        state = self.tmp / f"openssl-{ca_dir.name}"
        if not state.exists():
            state.mkdir()
            (state / "index.txt").write_text("")
            (state / "crlnumber").write_text("1000\n")
            (state / "ca.cnf").write_text(
                OPENSSL_CA_CONF.format(dir=state, cert=ca_dir / "ca.crt", key=ca_dir / "ca.key")
            )
        ok(run("openssl", "ca", "-batch", "-config", state / "ca.cnf", *args))

    def openssl_crl(self, ca_dir: Path, name: str, *args: str) -> Path:
        """``openssl ca -gencrl`` for ``ca_dir`` into ``name``."""
        out = self.tmp / name
        self.openssl_ca(ca_dir, "-gencrl", "-out", out, *args)
        return out


def serial_of(cert: Path) -> int:
    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def hex_serial(cert: Path) -> str:
    """The serial as ``openssl x509 -serial`` prints it, in lower case as certctl does."""
    out = ok(run("openssl", "x509", "-in", cert, "-noout", "-serial")).stdout
    return out.strip().removeprefix("serial=").lower()


@pytest.fixture(scope="module")
def setup(pki: Pki, other_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    tmp = tmp_path_factory.mktemp("verify-crl")
    root = pki.root("crl-root", cn="CRL Test Root")
    inter = tmp / "inter"
    certctl_ok("ca", "create", "--out", inter, "--parent", root, "--cn", "CRL Test Issuing CA")
    good = pki.issue(inter, "crl-good", dns=["good.example.com"]) / "tls.crt"
    gone = pki.issue(inter, "crl-gone", dns=["gone.example.com"]) / "tls.crt"
    setup = Setup(root, inter, good, gone, other_root, tmp)
    # openssl ca revokes what it never issued too: it adds the certificate to its index.
    setup.openssl_ca(inter, "-revoke", gone, "-crl_reason", "keyCompromise")
    return setup


def openssl_verify(
    s: Setup, cert: Path, crls: list[Path], *, check_all: bool = False, at: datetime | None = None
) -> str:
    """openssl's verdict: "OK" or its error string ("certificate revoked", …)."""
    args: list[str | Path] = ["-crl_check_all" if check_all else "-crl_check"]
    if at is not None:
        args += ["-attime", str(int(at.timestamp()))]
    for crl in crls:
        args += ["-CRLfile", crl]
    return openssl_verdict(
        *args, "-CAfile", s.root / "ca.crt", "-untrusted", s.inter / "ca.crt", cert
    )


def certctl_verify(
    s: Setup, cert: Path, crls: list[Path], *, check_all: bool = False, at: datetime | None = None
) -> tuple[int, str, str]:
    """certctl's exit code, its stdout and its stderr for the same check."""
    args: list[str | Path] = ["verify", "--ca", s.root / "ca.crt", cert]
    if at is not None:
        args += ["--at", f"{at:%Y-%m-%dT%H:%M:%SZ}"]
    args += ["--untrusted", s.inter / "ca.crt"]
    for crl in crls:
        args += ["--crl", crl]
    if check_all:
        args.append("--crl-check-all")
    result = certctl(*args)
    assert "Traceback" not in result.err
    return result.code, result.out, result.err


def agree(
    s: Setup, cert: Path, crls: list[Path], *, check_all: bool = False, at: datetime | None = None
) -> tuple[str, str]:
    """Both verdicts, asserting they agree; returns (openssl's error or OK, certctl's stderr)."""
    verdict = openssl_verify(s, cert, crls, check_all=check_all, at=at)
    code, out, err = certctl_verify(s, cert, crls, check_all=check_all, at=at)
    if verdict == "OK":
        assert code == 0, err
        assert "OK (server" in out
    else:
        assert code == 1, out
        assert err.splitlines()[-1].startswith("certctl: error: verification failed: "), err
    return verdict, err


@pytest.mark.parametrize("maker", ["certctl", "openssl"])
def test_a_leaf_in_no_crl_verifies(setup: Setup, maker: str) -> None:
    s = setup
    if maker == "certctl":
        crl = s.tmp / "certctl-inter.crl"
        certctl_ok("crl", "create", "--ca", s.inter, "--out", crl, "--revoked", "0x1234")
    else:
        crl = s.openssl_crl(s.inter, "openssl-inter.crl")
    verdict, err = agree(s, s.good, [crl])
    assert verdict == "OK"
    assert err == ""
    _, out, _ = certctl_verify(s, s.good, [crl])
    assert "not revoked" in out


@pytest.mark.parametrize("maker", ["certctl", "openssl"])
def test_a_revoked_leaf_fails_naming_serial_date_and_reason(setup: Setup, maker: str) -> None:
    s = setup
    serial = serial_of(s.gone)
    if maker == "certctl":
        crl = s.tmp / "certctl-revoked.crl"
        certctl_ok(
            "crl", "create", "--ca", s.inter, "--out", crl, "--revoked", f"{serial:x}",
            "--reason", "keyCompromise", "--der",
        )  # fmt: skip
    else:
        crl = s.openssl_crl(s.inter, "openssl-revoked.crl")
    verdict, err = agree(s, s.gone, [crl])
    assert verdict == "certificate revoked"
    (entry,) = [e for e in _load_crl(crl) if e.serial_number == serial]
    assert f"(serial {hex_serial(s.gone)})" in err
    assert f"revoked on {entry.revocation_date_utc:%Y-%m-%dT%H:%M:%SZ}" in err
    assert "reason keyCompromise" in err
    assert str(crl) in err
    assert len(err.splitlines()) == 1
    # The other leaf of that CA is not in the list.
    assert agree(s, s.good, [crl])[0] == "OK"


def test_a_crl_of_another_ca_does_not_count(setup: Setup) -> None:
    s = setup
    foreign = s.tmp / "foreign.crl"
    certctl_ok("crl", "create", "--ca", s.other, "--out", foreign)
    verdict, err = agree(s, s.good, [foreign])
    assert verdict == "unable to get certificate CRL"
    warning, error = err.splitlines()
    assert warning.startswith(f"certctl: warning: {foreign}: CRL ignored: issued by CN=")
    assert "no CRL from CN=CRL Test Issuing CA" in error
    # Beside the right one it is only ignored.
    right = s.openssl_crl(s.inter, "right.crl")
    assert agree(s, s.good, [foreign, right])[0] == "OK"


def test_a_crl_with_the_issuers_name_but_another_key_does_not_count(setup: Setup, pki: Pki) -> None:
    s = setup
    impostor = pki.root("crl-impostor", cn="CRL Test Issuing CA")
    crl = s.tmp / "impostor.crl"
    certctl_ok("crl", "create", "--ca", impostor, "--out", crl)
    verdict, err = agree(s, s.good, [crl])
    assert verdict in ("unable to get certificate CRL", "CRL signature failure")
    assert "its signature does not verify with the key of CN=CRL Test Issuing CA" in err
    assert "no CRL from CN=CRL Test Issuing CA" in err


def test_an_expired_crl_fails_naming_its_next_update(setup: Setup) -> None:
    s = setup
    crl = s.openssl_crl(
        s.inter, "expired.crl", "-crl_lastupdate", "20200101000000Z",
        "-crl_nextupdate", "20200102000000Z",
    )  # fmt: skip
    verdict, err = agree(s, s.good, [crl])
    assert verdict == "CRL has expired"
    assert f"{crl}: CRL has expired: nextUpdate 2020-01-02T00:00:00Z" in err
    # A current CRL beside it is used instead (openssl prefers one in its window too).
    current = s.openssl_crl(s.inter, "current.crl")
    assert agree(s, s.good, [crl, current])[0] == "OK"


def test_a_crl_from_the_future_fails_naming_its_this_update(setup: Setup) -> None:
    s = setup
    crl = s.openssl_crl(
        s.inter, "future.crl", "-crl_lastupdate", "20990101000000Z",
        "-crl_nextupdate", "20990102000000Z",
    )  # fmt: skip
    verdict, err = agree(s, s.good, [crl])
    assert verdict == "CRL is not yet valid"
    assert f"{crl}: CRL is not valid yet: thisUpdate 2099-01-01T00:00:00Z" in err


def test_crl_windows_are_judged_at_the_time_given(setup: Setup) -> None:
    """--at moves the CRL checks as openssl's -attime does: thisUpdate and nextUpdate."""
    s = setup
    now = datetime.now(UTC).replace(microsecond=0)
    crl = s.tmp / "week.crl"
    certctl_ok("crl", "create", "--ca", s.inter, "--out", crl)  # nextUpdate in 7 days
    assert agree(s, s.good, [crl], at=now + timedelta(days=6))[0] == "OK"
    verdict, err = agree(s, s.good, [crl], at=now + timedelta(days=8))
    assert verdict == "CRL has expired"
    assert f"{crl}: CRL has expired: nextUpdate " in err
    # A CRL signed for tomorrow: not yet valid now, current the day after.
    tomorrow = s.openssl_crl(
        s.inter, "tomorrow.crl", "-crl_lastupdate", f"{now + timedelta(days=1):%Y%m%d%H%M%SZ}",
        "-crl_nextupdate", f"{now + timedelta(days=8):%Y%m%d%H%M%SZ}",
    )  # fmt: skip
    assert agree(s, s.good, [tomorrow])[0] == "CRL is not yet valid"
    assert agree(s, s.good, [tomorrow], at=now + timedelta(days=2))[0] == "OK"


@pytest.mark.parametrize("maker", ["certctl", "openssl"])
def test_a_revoked_intermediate_fails_with_crl_check_all(setup: Setup, maker: str) -> None:
    s = setup
    inter_cert = s.inter / "ca.crt"
    serial = serial_of(inter_cert)
    leaf_crl = s.openssl_crl(s.inter, f"leaf-{maker}.crl")
    if maker == "certctl":
        root_crl = s.tmp / "certctl-root.crl"
        certctl_ok(
            "crl", "create", "--ca", s.root, "--out", root_crl, "--revoked", f"{serial:x}",
            "--reason", "cACompromise",
        )  # fmt: skip
    else:
        s.openssl_ca(s.root, "-revoke", inter_cert, "-crl_reason", "CACompromise")
        root_crl = s.openssl_crl(s.root, "openssl-root.crl")
    verdict, err = agree(s, s.good, [leaf_crl, root_crl], check_all=True)
    assert verdict == "certificate revoked"
    assert f"CA certificate CN=CRL Test Issuing CA (serial {hex_serial(inter_cert)})" in err
    assert "reason cACompromise" in err
    # Without --crl-check-all only the leaf is checked, by both; certctl says so.
    verdict, err = agree(s, s.good, [leaf_crl, root_crl])
    assert verdict == "OK"
    assert err == (
        f"certctl: warning: {root_crl}: CRL ignored: issued by CN=CRL Test Root, not the "
        "leaf's issuer (--crl-check-all checks CAs too)\n"
    )
    # With --crl-check-all and no CRL from the root, both refuse.
    verdict, err = agree(s, s.good, [leaf_crl], check_all=True)
    assert verdict == "unable to get certificate CRL"
    assert "no CRL from CN=CRL Test Root to check the CA certificate CN=CRL Test Issuing CA" in err


def test_one_pem_file_may_hold_several_crls(setup: Setup) -> None:
    s = setup
    leaf_crl = s.openssl_crl(s.inter, "several-leaf.crl")
    root_crl = s.tmp / "several-root.crl"
    certctl_ok("crl", "create", "--ca", s.root, "--out", root_crl)
    both = s.tmp / "both.pem"
    both.write_bytes(leaf_crl.read_bytes() + root_crl.read_bytes())
    assert agree(s, s.good, [both], check_all=True)[0] == "OK"
    # Checking the leaf only, the root's CRL is of no use: said, not an error.
    code, _, err = certctl_verify(s, s.good, [both])
    assert code == 0
    assert f"{both} (CRL 2 of 2): CRL ignored: issued by CN=CRL Test Root" in err


def test_crls_in_the_ca_bundle_are_used_as_openssl_reads_them_from_the_cafile(
    setup: Setup,
) -> None:
    """``openssl verify -crl_check -CAfile F`` takes the X509 CRL blocks of F; so does --ca."""
    s = setup
    leaf_crl = s.openssl_crl(s.inter, "in-bundle-leaf.crl")  # lists s.gone
    root_crl = s.tmp / "in-bundle-root.crl"
    certctl_ok("crl", "create", "--ca", s.root, "--out", root_crl)
    bundle = s.tmp / "bundle-with-crls.pem"
    bundle.write_bytes((s.root / "ca.crt").read_bytes() + leaf_crl.read_bytes())

    def both(cert: Path, ca: Path, *flags: str) -> tuple[str, CliResult]:
        openssl_flags = [
            f.replace("--crl-check", "-crl_check").replace("-all", "_all") for f in flags
        ]
        result = run(
            "openssl", "verify", *openssl_flags, "-CAfile", ca, "-untrusted", s.inter / "ca.crt",
            cert,
        )  # fmt: skip
        found = re.search(r"error \d+ at \d+ depth lookup: (.*)", result.stdout + result.stderr)
        verdict = "OK" if result.returncode == 0 else found[1].strip() if found else "?"
        mine = certctl("verify", "--ca", ca, "--untrusted", s.inter / "ca.crt", *flags, cert)
        assert "Traceback" not in mine.err
        assert (mine.code == 0) == (verdict == "OK"), (verdict, mine)
        return verdict, mine

    verdict, mine = both(s.gone, bundle, "--crl-check")
    assert verdict == "certificate revoked"
    (line,) = mine.err.splitlines()
    assert line.startswith("certctl: error: verification failed: certificate CN=gone.example.com")
    assert f"reason keyCompromise ({bundle})" in line
    verdict, mine = both(s.good, bundle, "--crl-check")
    assert verdict == "OK"
    assert "OK (server, not revoked)" in mine.out
    # Negative twin: no CRL check asked, none made, by either.
    verdict, mine = both(s.gone, bundle)
    assert verdict == "OK"
    assert "revoked" not in mine.out
    # Every certificate of the chain, each CA's CRL from the bundle.
    bundle.write_bytes(bundle.read_bytes() + root_crl.read_bytes())
    verdict, mine = both(s.good, bundle, "--crl-check-all")
    assert verdict == "OK"
    assert "OK (server, none revoked)" in mine.out
    # No CRL anywhere: openssl fails the check, certctl says what is missing.
    verdict, mine = both(s.good, s.root / "ca.crt", "--crl-check")
    assert verdict == "unable to get certificate CRL"
    assert mine.code == 2
    (line,) = mine.err.splitlines()
    assert "--crl-check needs the CRLs to check with (--crl FILE, or X509 CRL blocks in" in line


def test_crls_of_other_cas_in_the_ca_bundle_are_skipped_silently_as_by_openssl(
    setup: Setup,
) -> None:
    """A shared trust bundle holds the CRLs of many CAs: one warning each flooded stderr."""
    s = setup
    other_crl = s.tmp / "silent-other.crl"
    certctl_ok("crl", "create", "--ca", s.other, "--out", other_crl)
    root_crl = s.tmp / "silent-root.crl"  # of the chain, but only the leaf is checked
    certctl_ok("crl", "create", "--ca", s.root, "--out", root_crl)
    leaf_crl = s.openssl_crl(s.inter, "silent-leaf.crl")  # lists s.gone
    bundle = s.tmp / "shared-bundle.pem"
    bundle.write_bytes(
        b"".join(p.read_bytes() for p in (s.root / "ca.crt", other_crl, root_crl, leaf_crl))
    )
    for cert, openssl_says in ((s.good, "OK"), (s.gone, "certificate revoked")):
        assert (
            openssl_verdict("-crl_check", "-CAfile", bundle, "-untrusted", s.inter / "ca.crt", cert)
            == openssl_says
        )
        mine = certctl(
            "verify", "--ca", bundle, "--untrusted", s.inter / "ca.crt", "--crl-check", cert
        )
        assert (mine.code == 0) == (openssl_says == "OK"), mine
        # No warning: at most the one error line.
        assert len(mine.err.splitlines()) == (0 if openssl_says == "OK" else 1), mine.err
        assert "CRL ignored" not in mine.err
    # The same CRL given with --crl applies to nothing here: that is still said.
    mine = certctl(
        "verify", "--ca", bundle, "--untrusted", s.inter / "ca.crt", "--crl", other_crl, s.good
    )
    assert mine.code == 0
    assert mine.err.startswith(f"certctl: warning: {other_crl}: CRL ignored: issued by CN=")


@pytest.mark.parametrize("outform", ["PEM", "DER"])
def test_crls_inside_a_pkcs7_file_are_said_to_be_unread(setup: Setup, outform: str) -> None:
    """cryptography reads only the certificates of a PKCS#7 file: its CRLs are not skipped
    in silence (a CRL revoking the leaf would go unseen) but named, with openssl's way out."""
    s = setup
    leaf_crl = s.openssl_crl(s.inter, f"p7-leaf-{outform}.crl")  # lists s.gone
    p7 = s.tmp / f"with-crl-{outform}.p7b"
    ok(run("openssl", "crl2pkcs7", "-in", leaf_crl, "-certfile", s.root / "ca.crt",
           "-outform", outform, "-out", p7))  # fmt: skip
    crl_only = s.tmp / f"crl-only-{outform}.p7b"
    ok(run("openssl", "crl2pkcs7", "-in", leaf_crl, "-outform", outform, "-out", crl_only))
    inter = ("--untrusted", s.inter / "ca.crt")
    unread = "certctl does not read the CRLs inside a PKCS#7 file"
    # --ca: the certificates are read; without any other CRL the check cannot run.
    mine = certctl("verify", "--ca", p7, *inter, "--crl-check", s.gone)
    assert mine.code == 2
    (line,) = mine.err.splitlines()
    assert "--crl-check needs the CRLs to check with" in line
    assert f"{p7}: {unread}" in line
    # With a CRL given, the check runs, and the unread ones are warned about.
    mine = certctl("verify", "--ca", p7, *inter, "--crl", leaf_crl, s.gone)
    assert mine.code == 1
    warning, error = mine.err.splitlines()
    assert warning.startswith(f"certctl: warning: {p7}: {unread}")
    assert error.startswith("certctl: error: verification failed: certificate CN=gone.")
    # --crl: a PKCS#7 file, with certificates or without, is refused naming why.
    for given in (p7, crl_only):
        mine = certctl("verify", "--ca", s.root / "ca.crt", *inter, "--crl", given, s.good)
        assert mine.code == 1
        (line,) = mine.err.splitlines()
        assert f"{given}: {unread}" in line, line
    if outform == "PEM":  # X509 CRL blocks beside a PKCS7 block are read, with the warning
        mixed = s.tmp / "mixed.pem"
        mixed.write_bytes(p7.read_bytes() + leaf_crl.read_bytes())
        mine = certctl("verify", "--ca", s.root / "ca.crt", *inter, "--crl", mixed, s.good)
        assert mine.code == 0, mine
        (line,) = mine.err.splitlines()
        assert line.startswith(f"certctl: warning: {mixed}: {unread}")
    # The way out it names works: openssl pkcs7 -print_certs writes the CRLs as PEM.
    extracted = s.tmp / f"extracted-{outform}.pem"
    ok(run("openssl", "pkcs7", "-inform", outform, "-in", p7, "-print_certs", "-out", extracted))
    assert agree(s, s.gone, [extracted])[0] == "certificate revoked"
    assert agree(s, s.good, [extracted])[0] == "OK"


@pytest.mark.parametrize(
    ("issuer", "openssl_says"),
    [
        ("crl test issuing ca", "OK"),
        ("  CRL  Test\tIssuing CA ", "OK"),
        ("CRL Test Issuing CAs", "unable to get certificate CRL"),
    ],
)
def test_a_crl_issuer_name_is_compared_as_openssl_compares_it(
    setup: Setup, issuer: str, openssl_says: str
) -> None:
    """openssl matches a CRL to its CA after folding case and spacing (RFC 5280 7.1)."""
    s = setup
    key = serialization.load_pem_private_key((s.inter / "ca.key").read_bytes(), None)
    now = datetime.now(UTC)
    crl = s.tmp / f"folded-{len(issuer)}.crl"
    crl.write_bytes(
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .last_update(now - timedelta(hours=1))
        .next_update(now + timedelta(days=1))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        .public_bytes(serialization.Encoding.PEM)
    )
    verdict, err = agree(s, s.good, [crl])
    assert verdict == openssl_says
    if verdict != "OK":
        assert "no CRL from CN=CRL Test Issuing CA" in err


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    data = path.read_bytes()
    if data.startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def openssl_leaf(s: Setup, name: str, extensions: str) -> Path:
    """A leaf signed by the intermediate with ``openssl x509 -req`` and ``extensions``."""
    key, csr, cert = s.tmp / f"{name}.key", s.tmp / f"{name}.csr", s.tmp / f"{name}.crt"
    openssl_req(key, csr, f"/CN={name}.example.com")
    ext = s.tmp / f"{name}.ext"
    ext.write_text(
        f"subjectAltName=DNS:{name}.example.com\nextendedKeyUsage=serverAuth\n{extensions}"
    )
    ok(
        run(
            "openssl", "x509", "-req", "-in", csr, "-CA", s.inter / "ca.crt",
            "-CAkey", s.inter / "ca.key", "-out", cert, "-days", "1", "-extfile", ext,
        )
    )  # fmt: skip
    return cert


@pytest.mark.parametrize(
    ("leaf", "section", "openssl_says", "certctl_says"),
    [
        ("certctl", "user_only", "OK", ""),
        ("certctl", "ca_only", "different CRL scope", "lists CA certificates only"),
        ("certctl", "dp_x", "different CRL scope", "a distribution point the certificate does"),
        ("dp-x", "dp_x", "OK", ""),
        ("dp-y", "dp_x", "different CRL scope", "is for another distribution point than"),
        ("dp-x", "user_only", "OK", ""),
        (
            "certctl",
            "unknown_critical",
            "unhandled critical CRL extension",
            "critical extension certctl does not handle (1.2.3.4)",
        ),
    ],
)
def test_the_scope_of_a_crl_is_honoured_as_openssl_does(
    setup: Setup, leaf: str, section: str, openssl_says: str, certctl_says: str
) -> None:
    """issuingDistributionPoint (RFC 5280 5.2.5) and unknown critical extensions."""
    s = setup
    crl = s.openssl_crl(s.inter, f"{section}.crl", "-crlexts", section)
    cert = s.good
    if leaf.startswith("dp-"):
        host = leaf.removeprefix("dp-")
        cert = openssl_leaf(s, leaf, f"crlDistributionPoints=URI:http://{host}.example/ca.crl\n")
    verdict, err = agree(s, cert, [crl])
    assert verdict == openssl_says
    assert certctl_says in err
