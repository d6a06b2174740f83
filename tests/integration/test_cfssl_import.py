"""A PKI made with cfssl, taken over offline: ``certctl ca import``, ``crl create``, ``verify``.

Real cfssl (Debian's golang-cfssl) makes the CAs and leaves as teams that migrate have them;
openssl judges what certctl then signs.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography import x509

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
    assert refused.code == 2  # a usage error
    assert refused.err.startswith(
        f"certctl: error: Invalid value for --revoked: {serial}: serial numbers are positive"
    )
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


@pytest.fixture(scope="module")
def openssl_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root (PKCS#1 RSA key) and a name-constrained intermediate made with openssl alone,
    the intermediate's key as SEC1 and as encrypted PKCS#8 (password in pw.txt)."""
    d = tmp_path_factory.mktemp("openssl")
    (d / "ext.cnf").write_text(
        "[root]\nbasicConstraints=critical,CA:TRUE,pathlen:1\n"
        "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
        "[inter]\nbasicConstraints=critical,CA:TRUE,pathlen:0\n"
        "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid:always\n"
        "nameConstraints=critical,permitted;DNS:.legacy.example\n"
    )
    ok(run("openssl", "genrsa", "-traditional", "-out", d / "root.key", "2048"))
    ok(run("openssl", "req", "-x509", "-new", "-key", d / "root.key", "-subj", "/CN=Legacy Root",
           "-days", "30", "-config", d / "ext.cnf", "-extensions", "root",
           "-out", d / "root.crt"))  # fmt: skip
    ok(run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
           "-out", d / "inter.key"))  # fmt: skip
    ok(run("openssl", "req", "-new", "-key", d / "inter.key", "-subj", "/CN=Legacy Inter",
           "-out", d / "inter.csr"))  # fmt: skip
    ok(run("openssl", "x509", "-req", "-in", d / "inter.csr", "-CA", d / "root.crt",
           "-CAkey", d / "root.key", "-CAcreateserial", "-days", "20",
           "-extfile", d / "ext.cnf", "-extensions", "inter", "-out", d / "inter.crt"))  # fmt: skip
    (d / "pw.txt").write_text("legacy password\n")
    ok(run("openssl", "pkcs8", "-topk8", "-in", d / "inter.key", "-v2", "aes-256-cbc",
           "-passout", f"file:{d / 'pw.txt'}", "-out", d / "inter-enc.key"))  # fmt: skip
    (d / "inter-chain.crt").write_text((d / "inter.crt").read_text() + (d / "root.crt").read_text())
    return d


def test_openssl_legacy_keys_import_and_sign_under_their_constraints(
    openssl_pki: Path, tmp_path: Path
) -> None:
    """PKCS#1 and SEC1 keys import as they are; an encrypted PKCS#8 key's refusal names
    both password options at once (it named --password-file, then refused for want of
    --key-password-file); what the intermediate signs chains to the openssl root."""
    d = openssl_pki
    assert (d / "root.key").read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert (d / "inter.key").read_text().startswith("-----BEGIN EC PRIVATE KEY-----")
    certctl_ok("ca", "import", "--cert", d / "root.crt", "--key", d / "root.key",
               "--out", tmp_path / "root")  # fmt: skip
    inter = tmp_path / "inter"
    refused = certctl("ca", "import", "--cert", d / "inter-chain.crt",
                      "--key", d / "inter-enc.key", "--out", inter)  # fmt: skip
    assert refused.code == 1
    assert refused.err == (
        f"certctl: error: {d / 'inter-enc.key'}: the private key is encrypted: give its "
        "password (--password-file or CERTCTL_PASSWORD), and --key-password-file (or "
        "CERTCTL_CA_PASSWORD) to keep "
        "the imported ca.key encrypted (the same file will do)\n"
    )
    assert not inter.exists()
    pw = d / "pw.txt"
    certctl_ok("ca", "import", "--cert", d / "inter-chain.crt", "--key", d / "inter-enc.key",
               "--password-file", pw, "--key-password-file", pw, "--out", inter)  # fmt: skip
    assert (inter / "ca.key").read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    outside = certctl("cert", "issue", "--ca", inter, "--ca-password-file", pw,
                      "--cn", "app.other.example", "--out", tmp_path / "bad")  # fmt: skip
    assert outside.code == 1
    assert "outside the issuing CA's name constraints" in outside.err
    certctl_ok("cert", "issue", "--ca", inter, "--ca-password-file", pw,
               "--cn", "app.legacy.example", "--out", tmp_path / "app")  # fmt: skip
    leaf = tmp_path / "app" / "tls.crt"
    ok(run("openssl", "verify", "-CAfile", d / "root.crt", "-untrusted", leaf, leaf))
    # The negative twin: openssl itself signs the name certctl refused, and verify fails.
    other = "app.other.example"
    ok(run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", tmp_path / "o.key", "-subj", f"/CN={other}",
           "-addext", f"subjectAltName=DNS:{other}", "-out", tmp_path / "o.csr"))  # fmt: skip
    ok(run("openssl", "x509", "-req", "-in", tmp_path / "o.csr", "-CA", d / "inter.crt",
           "-CAkey", d / "inter.key", "-CAcreateserial", "-days", "5", "-copy_extensions",
           "copy", "-out", tmp_path / "o.crt"))  # fmt: skip
    bad = run("openssl", "verify", "-CAfile", d / "root.crt", "-untrusted", d / "inter.crt",
              tmp_path / "o.crt")  # fmt: skip
    assert bad.returncode != 0
    assert "permitted subtree violation" in bad.stdout + bad.stderr


def test_an_intermediate_signed_with_sha1_is_refused_naming_the_digest(
    openssl_pki: Path, tmp_path: Path
) -> None:
    """``openssl x509 -req -sha1``, as old CA scripts signed: cryptography checks no SHA-1
    signature, so the root given was "not an issuer in the chain" and then "not given",
    and the import went through; every certificate below it failed in TLS clients."""
    d = openssl_pki
    ok(run("openssl", "x509", "-req", "-in", d / "inter.csr", "-CA", d / "root.crt",
           "-CAkey", d / "root.key", "-CAcreateserial", "-sha1", "-days", "20",
           "-extfile", d / "ext.cnf", "-extensions", "inter",
           "-out", tmp_path / "sha1.crt"))  # fmt: skip
    bundle = tmp_path / "sha1-chain.crt"
    bundle.write_text((tmp_path / "sha1.crt").read_text() + (d / "root.crt").read_text())
    out = tmp_path / "sha1-ca"
    refused = certctl("ca", "import", "--cert", bundle, "--key", d / "inter.key", "--out", out)
    assert refused.code == 1
    assert refused.err == (
        "certctl: error: CA CN=Legacy Root signed CN=Legacy Inter with SHA-1, which OpenSSL 3 "
        "refuses from security level 1 on (openssl verify -auth_level 1): reissue it with "
        "SHA-256\n"
    )
    assert not out.exists()
    # openssl agrees at the security level Debian's TLS clients use.
    judged = run("openssl", "verify", "-auth_level", "1", "-CAfile", d / "root.crt",
                 tmp_path / "sha1.crt")  # fmt: skip
    assert judged.returncode != 0
    assert "digest algorithm too weak" in judged.stdout + judged.stderr
    # Its negative twin, the same key signed again with SHA-256, imports.
    certctl_ok("ca", "import", "--cert", d / "inter-chain.crt", "--key", d / "inter.key",
               "--out", out)  # fmt: skip


def test_a_p521_ca_from_cfssl_is_refused_naming_the_curves_taken(tmp_path: Path) -> None:
    """docs/migrating-from-cfssl.md: cfssl makes P-521 CAs ("size": 521); certctl signs
    with P-256 and P-384 only, and says so rather than importing a CA it cannot use."""
    (tmp_path / "csr.json").write_text(
        json.dumps({"CN": "P521 Root", "key": {"algo": "ecdsa", "size": 521}})
    )
    _cfssl(tmp_path, "p521", "gencert", "-initca", "csr.json")
    out = tmp_path / "ca"
    refused = certctl("ca", "import", "--cert", tmp_path / "p521.pem",
                      "--key", tmp_path / "p521-key.pem", "--out", out)  # fmt: skip
    assert refused.code == 1
    assert refused.err == (
        f"certctl: error: {tmp_path / 'p521.pem'}: ec-secp521r1: only P-256 and P-384 curves "
        "are allowed\n"
    )
    assert not out.exists()


def test_cfssl_json_output_is_named_with_the_cfssljson_line_that_splits_it(
    tmp_path: Path,
) -> None:
    """``cfssl gencert`` without ``| cfssljson`` prints JSON holding the PEM; given to
    certctl it was "malformed PEM: no complete BEGIN/END block"."""
    (tmp_path / "csr.json").write_text(
        json.dumps({"CN": "Raw Root", "key": {"algo": "ecdsa", "size": 256}})
    )
    raw = tmp_path / "raw.json"
    raw.write_text(ok(run("cfssl", "gencert", "-initca", tmp_path / "csr.json")).stdout)
    for args in (["inspect", raw], ["ca", "import", "--cert", raw, "--key", raw,
                                    "--out", tmp_path / "ca"]):  # fmt: skip
        refused = certctl(*args)
        assert refused.code == 1
        assert refused.err == (
            f"certctl: error: {raw}: a JSON document holding PEM, as cfssl prints it: write the "
            "PEM files with 'cfssljson -f FILE -bare NAME' (NAME.pem, NAME-key.pem, NAME.csr)\n"
        )
    ok(run("cfssljson", "-f", raw, "-bare", "root", cwd=tmp_path))
    certctl_ok("ca", "import", "--cert", tmp_path / "root.pem",
               "--key", tmp_path / "root-key.pem", "--out", tmp_path / "ca")  # fmt: skip


def test_leaves_of_a_cfssl_intermediate_imported_without_its_root_carry_it(
    cfssl_pki: Path, tmp_path: Path
) -> None:
    """cfssl keeps the intermediate in a file of its own; imported alone (with a warning),
    it was taken for the root: tls.crt held the leaf alone, and nginx serving it failed
    every client trusting the cfssl root."""
    d = cfssl_pki
    (tmp_path / "inter.json").write_text(
        json.dumps({"CN": "cfssl Inter", "key": {"algo": "ecdsa", "size": 256}})
    )
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "signing": {
                    "profiles": {
                        "intermediate": {
                            "usages": ["cert sign", "crl sign"],
                            "expiry": "8760h",
                            "ca_constraint": {"is_ca": True, "max_path_len": 0,
                                              "max_path_len_zero": True},
                        }
                    }
                }
            }
        )
    )  # fmt: skip
    _cfssl(tmp_path, "inter", "genkey", "inter.json")
    _cfssl(tmp_path, "inter", "sign", "-ca", d / "ca.pem", "-ca-key", d / "ca-key.pem",
           "-config", "config.json", "-profile", "intermediate", "inter.csr")  # fmt: skip
    imported = certctl_ok("ca", "import", "--cert", tmp_path / "inter.pem",
                          "--key", tmp_path / "inter-key.pem",
                          "--out", tmp_path / "ca")  # fmt: skip
    assert "CN=cfssl Root, the issuer of CN=cfssl Inter, was not given" in imported.err
    certctl_ok("cert", "issue", "--ca", tmp_path / "ca", "--cn", "new.example.com",
               "--out", tmp_path / "new")  # fmt: skip
    tls = tmp_path / "new" / "tls.crt"
    assert tls.read_text().count("BEGIN CERTIFICATE") == 2
    ok(run("openssl", "verify", "-CAfile", d / "ca.pem", "-untrusted", tls, tls))
    # The negative twin: the leaf alone, as tls.crt was.
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(
        tls.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )
    refused = run("openssl", "verify", "-CAfile", d / "ca.pem", leaf)
    assert "unable to get local issuer certificate" in refused.stdout + refused.stderr


def test_a_crl_from_cfssl_gencrl_is_named_and_carried_over_once_decoded(
    cfssl_pki: Path, tmp_path: Path
) -> None:
    """``cfssl gencrl`` prints base64 DER without PEM's lines: certctl said "not a
    recognised PEM, DER or PKCS#12 file" (inspect, verify --crl) and "not a PEM or DER
    certificate revocation list" (crl create --from); now it says how to decode it, and the
    decoded CRL's entries are carried over with their dates."""
    d = cfssl_pki
    certctl_ok("ca", "import", "--cert", d / "ca.pem", "--key", d / "ca-key.pem",
               "--out", tmp_path / "ca")  # fmt: skip
    serial = json.loads(ok(run("cfssl", "certinfo", "-cert", d / "old.pem")).stdout)
    (tmp_path / "serials.txt").write_text(serial["serial_number"] + "\n")
    made = ok(run("cfssl", "gencrl", tmp_path / "serials.txt", d / "ca.pem", d / "ca-key.pem"))
    crl = tmp_path / "cfssl.crl"
    crl.write_text(made.stdout)
    hint = (
        "a CRL in base64 without PEM's BEGIN/END lines, as cfssl gencrl writes one: decode it "
        "with 'base64 -d FILE > FILE.der'"
    )
    for args, prefix in (
        (["inspect", crl], f"{crl}"),
        (["crl", "create", "--ca", tmp_path / "ca", "--from", crl, "--out", tmp_path / "x.crl"],
         f"--from {crl}"),
    ):  # fmt: skip
        refused = certctl(*args)
        assert refused.code == 1
        assert refused.err == f"certctl: error: {prefix}: {hint}\n"
    der = tmp_path / "cfssl.der"
    der.write_bytes(base64.b64decode(crl.read_text()))
    new = tmp_path / "new.crl"
    certctl_ok("crl", "create", "--ca", tmp_path / "ca", "--from", der, "--out", new)
    kept = x509.load_pem_x509_crl(new.read_bytes())
    old = x509.load_der_x509_crl(der.read_bytes())
    assert [(e.serial_number, e.revocation_date_utc) for e in kept] == [
        (e.serial_number, e.revocation_date_utc) for e in old
    ]
    revoked = run("openssl", "verify", "-crl_check", "-CRLfile", new, "-CAfile", d / "ca.pem",
                  d / "old.pem")  # fmt: skip
    assert "certificate revoked" in revoked.stdout + revoked.stderr


@pytest.fixture(scope="module")
def sha1_root_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An old openssl root signed on itself with SHA-1 (``openssl req -x509 -sha1``), and an
    intermediate it signed with SHA-256 (inter.crt; inter-chain.crt with the root)."""
    d = tmp_path_factory.mktemp("sha1-root")
    (d / "ext.cnf").write_text(
        "[root]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n"
        "[inter]\nbasicConstraints=critical,CA:TRUE,pathlen:0\n"
        "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid:always\n"
    )
    ok(run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha1",
           "-keyout", d / "root.key", "-subj", "/CN=Old SHA-1 Root", "-days", "30",
           "-config", d / "ext.cnf", "-extensions", "root", "-out", d / "root.crt"))  # fmt: skip
    ok(run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", d / "inter.key", "-subj", "/CN=Under Old Root",
           "-out", d / "inter.csr"))  # fmt: skip
    ok(run("openssl", "x509", "-req", "-in", d / "inter.csr", "-CA", d / "root.crt",
           "-CAkey", d / "root.key", "-CAcreateserial", "-sha256", "-days", "20",
           "-extfile", d / "ext.cnf", "-extensions", "inter", "-out", d / "inter.crt"))  # fmt: skip
    (d / "inter-chain.crt").write_text((d / "inter.crt").read_text() + (d / "root.crt").read_text())
    return d


def test_a_root_signed_on_itself_with_sha1_stays_out_of_tls_crt(
    sha1_root_pki: Path, tmp_path: Path
) -> None:
    """OpenSSL checks no trust anchor's signature on itself, so such a root (old openssl CA
    scripts) is a root to it; cryptography checks no SHA-1 signature, so certctl took it
    for an intermediate and put it in tls.crt after every leaf of the CA below it."""
    d = sha1_root_pki
    certctl_ok("ca", "import", "--cert", d / "inter-chain.crt", "--key", d / "inter.key",
               "--out", tmp_path / "ca")  # fmt: skip
    certctl_ok("cert", "issue", "--ca", tmp_path / "ca", "--cn", "web.example.com",
               "--out", tmp_path / "web")  # fmt: skip
    tls = tmp_path / "web" / "tls.crt"
    served = x509.load_pem_x509_certificates(tls.read_bytes())
    assert served[1:] == x509.load_pem_x509_certificates((d / "inter.crt").read_bytes())
    assert (tmp_path / "web" / "ca.crt").read_bytes() == (d / "root.crt").read_bytes()
    # What TLS clients at Debian's default level make of it: the root's SHA-1 is no fault.
    ok(run("openssl", "verify", "-auth_level", "2", "-CAfile", d / "root.crt",
           "-untrusted", tls, tls))  # fmt: skip


def test_a_root_signed_on_itself_with_sha1_given_twice_is_no_weak_link(
    sha1_root_pki: Path, tmp_path: Path
) -> None:
    """A bundle holding the root twice (``cat``-ed files) left a copy over, which certctl
    took for the root's issuer: "CA CN=Old SHA-1 Root signed CN=Old SHA-1 Root with SHA-1
    … reissue it", though no client checks a root's signature on itself."""
    d = sha1_root_pki
    bundle = tmp_path / "twice.crt"
    bundle.write_text((d / "inter-chain.crt").read_text() + (d / "root.crt").read_text())
    imported = certctl_ok("ca", "import", "--cert", bundle, "--key", d / "inter.key",
                          "--out", tmp_path / "ca")  # fmt: skip
    assert "with SHA-1" not in imported.err
    assert (tmp_path / "ca" / "ca-chain.crt").read_text() == (d / "inter-chain.crt").read_text()


def test_an_intermediate_signed_with_sha1_under_rsassa_pss_is_refused_too(
    openssl_pki: Path, tmp_path: Path
) -> None:
    """``openssl x509 -req -sha1 -sigopt rsa_padding_mode:pss``: cryptography checks such a
    signature (not a PKCS#1 one over SHA-1), so the root given took it into the chain and
    the import went through in silence; OpenSSL 3 refuses the link as the PKCS#1 one."""
    d = openssl_pki
    ok(run("openssl", "x509", "-req", "-in", d / "inter.csr", "-CA", d / "root.crt",
           "-CAkey", d / "root.key", "-CAcreateserial", "-sha1",
           "-sigopt", "rsa_padding_mode:pss", "-days", "20",
           "-extfile", d / "ext.cnf", "-extensions", "inter",
           "-out", tmp_path / "pss.crt"))  # fmt: skip
    judged = run("openssl", "verify", "-auth_level", "1", "-CAfile", d / "root.crt",
                 tmp_path / "pss.crt")  # fmt: skip
    assert "digest algorithm too weak" in judged.stdout + judged.stderr
    bundle = tmp_path / "pss-chain.crt"
    bundle.write_text((tmp_path / "pss.crt").read_text() + (d / "root.crt").read_text())
    out = tmp_path / "pss-ca"
    refused = certctl("ca", "import", "--cert", bundle, "--key", d / "inter.key", "--out", out)
    assert refused.code == 1
    assert refused.err == (
        "certctl: error: CA CN=Legacy Root signed CN=Legacy Inter with SHA-1 (RSASSA-PSS), "
        "which OpenSSL 3 refuses from security level 1 on (openssl verify -auth_level 1): "
        "reissue it with SHA-256\n"
    )
    assert not out.exists()


def test_a_ca_below_a_parent_of_path_length_0_is_imported_with_a_warning(
    openssl_pki: Path, tmp_path: Path
) -> None:
    """openssl signs a CA below its pathlen:0 intermediate as asked; imported, it was taken
    in silence, and every certificate it signed failed ("path length constraint
    exceeded"). Kept, as an expired CA is, but said at once."""
    d = openssl_pki
    (tmp_path / "sub.cnf").write_text(
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
    )
    ok(run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", tmp_path / "sub.key", "-subj", "/CN=Below Legacy Inter",
           "-out", tmp_path / "sub.csr"))  # fmt: skip
    ok(run("openssl", "x509", "-req", "-in", tmp_path / "sub.csr", "-CA", d / "inter.crt",
           "-CAkey", d / "inter.key", "-CAcreateserial", "-days", "10",
           "-extfile", tmp_path / "sub.cnf", "-out", tmp_path / "sub.crt"))  # fmt: skip
    bundle = tmp_path / "sub-chain.crt"
    bundle.write_text((tmp_path / "sub.crt").read_text() + (d / "inter-chain.crt").read_text())
    imported = certctl_ok("ca", "import", "--cert", bundle, "--key", tmp_path / "sub.key",
                          "--out", tmp_path / "sub")  # fmt: skip
    assert imported.err == (
        "certctl: warning: CN=Legacy Inter, above it, allows 0 CA certificates below it "
        "(pathlen:0) and 1 follow: certificates this CA signs would not verify (path length "
        "constraint exceeded)\n"
    )
    certctl_ok("cert", "issue", "--ca", tmp_path / "sub", "--cn", "app.legacy.example",
               "--out", tmp_path / "app")  # fmt: skip
    tls = tmp_path / "app" / "tls.crt"
    failed = run("openssl", "verify", "-CAfile", d / "root.crt", "-untrusted", tls, tls)
    assert "path length constraint exceeded" in failed.stdout + failed.stderr
    # Its negative twin: the intermediate itself, below a root of pathlen:1, is no warning.
    kept = certctl_ok("ca", "import", "--cert", d / "inter-chain.crt", "--key", d / "inter.key",
                      "--out", tmp_path / "inter")  # fmt: skip
    assert kept.err == ""


def test_cfssl_api_json_is_named_with_the_jq_line_cfssljson_cannot_replace(
    tmp_path: Path,
) -> None:
    """cfssl serve answers ``{"success": true, "result": {"certificate": …}}`` (Vault
    ``{"data": {"certificate": …}}``): cfssljson reads top-level members only, so the
    ``cfssljson -f FILE -bare NAME`` certctl named wrote nothing and said nothing."""
    (tmp_path / "csr.json").write_text(
        json.dumps({"CN": "Api Root", "key": {"algo": "ecdsa", "size": 256}})
    )
    made = json.loads(ok(run("cfssl", "gencert", "-initca", tmp_path / "csr.json")).stdout)
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"success": True, "result": {"certificate": made["cert"]}}))
    ok(run("cfssljson", "-f", answer, "-bare", "api", cwd=tmp_path))
    assert not (tmp_path / "api.pem").exists()  # what the old hint led to
    refused = certctl("inspect", answer)
    assert refused.code == 1
    assert refused.err == (
        f"certctl: error: {answer}: a JSON document holding PEM at .result.certificate, which "
        "cfssljson does not read: write it out with \"jq -r '.result.certificate' FILE > "
        'NAME.pem"\n'
    )
    pem = ok(run("jq", "-r", ".result.certificate", answer)).stdout
    (tmp_path / "api.pem").write_text(pem)
    assert "CN=Api Root" in certctl_ok("inspect", tmp_path / "api.pem").out
