"""Malformed CLI invocations: one line on stderr, exit 1 or 2, no file written."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certctl.cli.main import run
from certctl.pki import (
    PROFILES,
    CertificateAuthority,
    certs_to_pem,
    common_name_dn,
    create_crl,
    create_csr,
    create_root_ca,
    generate_private_key,
    key_to_pem,
    to_pkcs12,
)

PEM = serialization.Encoding.PEM
GOOD_INSTANCES = b"instances:\n  - name: node-1\n    dns: [node-1.example.com]\n"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    code: int
    message: str


def _c(case_id: str, argv: str | list[str], code: int, message: str) -> Case:
    args = argv.split() if isinstance(argv, str) else argv
    return Case(case_id, tuple(args), code, message)


CASES = [
    # --- ca create ---------------------------------------------------------------------
    _c(
        "ca-create-rsa-1024",
        "ca create --out new --key-type rsa-1024",
        2,
        "rsa-1024: key type not allowed",
    ),
    _c("ca-create-dsa", "ca create --out new --key-type dsa", 2, "dsa: key type not allowed"),
    _c("ca-create-foo", "ca create --out new --key-type foo", 2, "foo: unknown key type"),
    _c(
        "ca-create-validity-90X",
        "ca create --out new --validity 90X",
        2,
        "90X: unknown duration unit 'X'",
    ),
    _c(
        "ca-create-validity-0D",
        "ca create --out new --validity 0D",
        2,
        "0D: duration must be positive",
    ),
    _c("ca-create-existing", "ca create --out ca", 1, "already exists; use --force to overwrite"),
    _c(
        "ca-create-bad-subject",
        ["ca", "create", "--out", "new", "--subject", "CN"],
        2,
        "not a valid RFC 4514 distinguished name",
    ),
    _c(
        "ca-create-long-cn",
        ["ca", "create", "--out", "new", "--cn", "x" * 65],
        2,
        "common name is longer than 64 characters",
    ),
    _c(
        "ca-create-parent-missing",
        "ca create --out new --parent nowhere",
        1,
        "nowhere: CA directory not found",
    ),
    _c(
        "ca-create-parent-not-ca",
        "ca create --out new --parent notca",
        1,
        "not a CA (BasicConstraints CA:FALSE)",
    ),
    _c(
        "ca-create-parent-garbage-key",
        "ca create --out new --parent badkey",
        1,
        "badkey/ca.key: not a recognised PEM, DER or PKCS#12 file",
    ),
    _c(
        "ca-create-parent-pathlen",
        "ca create --out new --parent inter",
        1,
        "the issuer's path length is 0: it cannot sign CAs",
    ),
    _c(
        "ca-create-empty-key-password",
        "ca create --out new --key-password-file empty-pw.txt",
        1,
        "empty-pw.txt: password file is empty",
    ),
    _c(
        # openssl rand -base64 64 > pw: openssl -passin file: would use the first line only.
        "ca-create-two-line-key-password",
        "ca create --out new --key-password-file two-line-pw.txt",
        1,
        "certctl: error: two-line-pw.txt: password file holds more than one line (openssl and "
        "keytool read only the first); put the password on one line",
    ),
    _c("ca-create-missing-out", "ca create --cn x", 2, "Missing option '--out'"),
    _c(
        "ca-create-unknown-option",
        "ca create --out new --colour red",
        2,
        "No such option: --colour",
    ),
    # elasticsearch-certutil's options get certctl's equivalent; before, click's spelling
    # guess: "--days" -> "Possible options: --ca, --dns".
    _c(
        "issue-certutil-days",
        "cert issue --ca ca --cn web --days 365 --out o",
        2,
        "No such option: --days (certutil's --days N is --validity ND) "
        "(see 'certctl cert issue --help')",
    ),
    _c(
        "issue-certutil-ca-cert",
        "cert issue --ca-cert ca/ca.crt --ca-key ca/ca.key --cn web --out o",
        2,
        "No such option: --ca-cert (--ca takes the CA directory holding ca.crt and ca.key)",
    ),
    _c(
        "ca-create-certutil-ca-dn",
        "ca create --out new --ca-dn CN=x",
        2,
        "No such option: --ca-dn (certutil's --ca-dn DN is --subject DN)",
    ),
    # issuers create makes a CA too: its --subject is that CA's DN (click guessed --cn).
    _c(
        "issuers-create-certutil-ca-dn",
        "issuers create ops --ca-dn CN=x",
        2,
        "No such option: --ca-dn (certutil's --ca-dn DN is --subject DN) "
        "(see 'certctl issuers create --help')",
    ),
    # cert issue's --subject is the leaf's: certutil's --ca-dn (its new CA's DN) is not it.
    _c(
        "issue-certutil-ca-dn",
        "cert issue --ca ca --cn web --ca-dn CN=x --out o",
        2,
        "No such option: --ca-dn (certctl makes the CA first: certctl ca create --subject DN "
        "--out DIR, then --ca DIR) (see 'certctl cert issue --help')",
    ),
    _c(
        "http-certutil-ca-dn",
        "http --out b.zip --node n --ca-dn CN=x",
        2,
        "No such option: --ca-dn (--ca-cn NAME names the new CA; for a DN: certctl ca create "
        "--subject DN --out DIR, then --ca DIR)",
    ),
    # Click's guess by spelling was "Possible options: --in".
    _c(
        "issue-certutil-silent",
        "cert issue --ca ca --cn web --silent --out o",
        2,
        "No such option: --silent (this command never prompts: leave --silent out) "
        "(see 'certctl cert issue --help')",
    ),
    _c(
        "csr-sign-certutil-ca-pass",
        "csr sign --ca ca --csr good.csr --ca-pass x --out o",
        2,
        "No such option: --ca-pass (give the CA key's password in --ca-password-file FILE)",
    ),
    _c(
        # A command with no --validity keeps click's own words.
        "inspect-certutil-days",
        "inspect --days 3 leaf.crt",
        2,
        "No such option: --days (see 'certctl inspect --help')",
    ),
    # --- ca import ---------------------------------------------------------------------
    _c(
        "ca-import-key-mismatch",
        "ca import --cert ca/ca.crt --key other.key --out imp",
        1,
        "other.key: the private key does not match the CA certificate in ca/ca.crt",
    ),
    _c(
        "ca-import-p12-key-mismatch",
        "ca import --p12 mismatched.p12 --out imp",
        1,
        "mismatched.p12: the private key matches none of its certificates",
    ),
    _c(
        "ca-import-not-a-ca",
        "ca import --cert leaf.crt --key leaf.key --out imp",
        1,
        "leaf.crt: certificate is not a CA",
    ),
    _c(
        "ca-import-garbage-cert",
        "ca import --cert garbage.pem --key ca/ca.key --out imp",
        1,
        "garbage.pem: not a recognised PEM, DER or PKCS#12 file",
    ),
    _c(
        "ca-import-truncated-cert",
        "ca import --cert truncated.pem --key ca/ca.key --out imp",
        1,
        "truncated.pem: malformed PEM: no complete BEGIN/END block",
    ),
    _c(
        "ca-import-missing-cert",
        "ca import --cert missing.crt --key ca/ca.key --out imp",
        1,
        "missing.crt: CA certificate not found",
    ),
    _c(
        "ca-import-p12-wrong-password",
        "ca import --p12 ca.p12 --password wrong --out imp",
        1,
        "cannot open PKCS#12 file: wrong password",
    ),
    _c(
        "ca-import-p12-no-password",
        "ca import --p12 ca.p12 --out imp",
        1,
        "PKCS#12 file is password-protected",
    ),
    _c(
        "ca-import-p12-empty-password-file",
        "ca import --p12 ca.p12 --password-file empty-pw.txt --out imp",
        1,
        "password file is empty",
    ),
    _c(
        "ca-import-encrypted-key-no-password",
        "ca import --cert ca/ca.crt --key encrypted.key --out imp",
        1,
        "the private key is encrypted",
    ),
    _c(
        "ca-import-existing",
        "ca import --cert ca/ca.crt --key ca/ca.key --out ca",
        1,
        "already exists; use --force",
    ),
    _c(
        "ca-import-cert-without-key",
        "ca import --cert ca/ca.crt --out imp",
        2,
        "--cert needs --key",
    ),
    _c("ca-import-nothing", "ca import --out imp", 2, "give either --cert with --key, or --p12"),
    # --- cert issue --------------------------------------------------------------------
    _c(
        "issue-bad-ip",
        "cert issue --ca ca --cn web --ip 1.2.3.999 --out o",
        2,
        "1.2.3.999: not a valid IPv4 or IPv6 address",
    ),
    _c(
        "issue-empty-ip",
        ["cert", "issue", "--ca", "ca", "--cn", "web", "--ip", "", "--out", "o"],
        2,
        "certctl: error: '': empty IP address",
    ),
    _c(
        # A certutil-style list is split; the message names the bad item alone.
        "issue-bad-dns-in-list",
        "cert issue --ca ca --cn web --dns a.example,-bad-.example --out o",
        2,
        "certctl: error: -bad-.example: invalid DNS name",
    ),
    _c(
        "issue-email-with-a-space",
        [
            "cert",
            "issue",
            "--ca",
            "ca",
            "--cn",
            "web",
            "--out",
            "o",
            "--email",
            "a@x.example b@x.example",
        ],
        2,
        "'a@x.example b@x.example': separate names and addresses with commas, not spaces",
    ),
    _c(
        # A display name is no list: "separate … with commas (Alice,B,<a@x.example>)" told
        # the user to write three entries, none of them an address.
        "issue-email-with-a-display-name",
        [
            "cert",
            "issue",
            "--ca",
            "ca",
            "--cn",
            "web",
            "--out",
            "o",
            "--email",
            "Alice B <a@x.example>",
        ],
        2,
        "certctl: error: Alice B <a@x.example>: not a valid e-mail address",
    ),
    _c(
        "issue-bad-dns",
        "cert issue --ca ca --cn web --dns=-bad-.example --out o",
        2,
        "-bad-.example: invalid DNS name",
    ),
    _c(
        "issue-wildcard-middle",
        "cert issue --ca ca --cn web --dns a.*.example.com --out o",
        2,
        "a.*.example.com: invalid DNS name",
    ),
    _c(
        "issue-wildcard-tld",
        "cert issue --ca ca --cn web --dns *.com --out o",
        2,
        "a wildcard needs at least two labels",
    ),
    _c(
        "issue-bad-email",
        "cert issue --ca ca --cn web --email nobody --out o",
        2,
        "nobody: not a valid e-mail address",
    ),
    _c(
        "issue-bad-uri",
        "cert issue --ca ca --cn web --uri no-scheme --out o",
        2,
        "no-scheme: URI needs a scheme",
    ),
    _c(
        "issue-validity-90X",
        "cert issue --ca ca --cn web --validity 90X --out o",
        2,
        "90X: unknown duration unit",
    ),
    _c(
        "issue-validity-0D",
        "cert issue --ca ca --cn web --validity 0D --out o",
        2,
        "0D: duration must be positive",
    ),
    _c(
        "issue-validity-too-long",
        "cert issue --ca ca --cn web --validity 101Y --out o",
        2,
        "duration too long",
    ),
    _c(
        "issue-rsa-1024",
        "cert issue --ca ca --cn web --key-type rsa-1024 --out o",
        2,
        "rsa-1024: key type not allowed",
    ),
    _c(
        "issue-unknown-profile",
        "cert issue --ca ca --cn web --profile web --out o",
        2,
        "web: unknown profile",
    ),
    _c(
        "issue-ca-profile",
        "cert issue --ca ca --cn web --profile intermediate --out o",
        2,
        "use 'certctl ca create --parent'",
    ),
    _c(
        "issue-ca-missing",
        "cert issue --ca nowhere --cn web --out o",
        1,
        "nowhere: CA directory not found",
    ),
    _c(
        "issue-ca-dir-without-key",
        "cert issue --ca nokey --cn web --out o",
        1,
        "nokey/ca.key: CA key not found",
    ),
    _c(
        "issue-not-a-ca",
        "cert issue --ca notca --cn web --out o",
        1,
        "not a CA (BasicConstraints CA:FALSE)",
    ),
    _c(
        "issue-existing-output",
        "cert issue --ca ca --cn web --out existing",
        1,
        "existing/tls.crt already exists; use --force",
    ),
    _c("issue-no-name", "cert issue --ca ca --out o", 2, "give --cn or --subject"),
    # --ca-issuers-url: the --crl-url rules (every client may fetch it), named as given.
    _c(
        "issue-ca-issuers-url-no-scheme",
        "cert issue --ca ca --cn web --ca-issuers-url pki.example.com/ca.der --out o",
        2,
        "certctl: error: --ca-issuers-url pki.example.com/ca.der: expected an absolute "
        "http:// or https:// URL with a host",
    ),
    _c(
        "issue-batch-ca-issuers-url-password",
        "cert issue --ca ca --in instances.yml --pem --out o "
        "--ca-issuers-url http://u:s3cret@pki.example.com/ca.der",
        2,
        "has no user:password@",
    ),
    _c(
        "issue-bad-subject",
        ["cert", "issue", "--ca", "ca", "--subject", "CN=a,,O=b", "--out", "o"],
        2,
        "not a valid RFC 4514 distinguished name",
    ),
    _c(
        "issue-p12-no-password",
        "cert issue --ca ca --cn web --p12 --out o",
        2,
        "--p12 needs a password",
    ),
    _c(
        "issue-p12-empty-password-file",
        "cert issue --ca ca --cn web --p12 --password-file empty-pw.txt --out o",
        1,
        "empty-pw.txt: password file is empty",
    ),
    _c(
        "issue-p12-missing-password-file",
        "cert issue --ca ca --cn web --p12 --password-file nope.txt --out o",
        1,
        "nope.txt: password file not found",
    ),
    _c("issue-missing-ca-option", "cert issue --cn web --out o", 2, "Missing option '--ca'"),
    _c(
        "issue-unknown-option",
        "cert issue --ca ca --cn web --out o --hostname web",
        2,
        "No such option: --hostname",
    ),
    # --- cert issue --in ---------------------------------------------------------------
    _c(
        "batch-invalid-yaml",
        "cert issue --ca ca --in bad-yaml.yml --pem --out certs.zip",
        1,
        "bad-yaml.yml: instances file is not valid YAML at line 3",
    ),
    _c(
        "batch-unquoted-ipv6",
        "cert issue --ca ca --in ipv6.yml --pem --out certs.zip",
        1,
        "ipv6.yml: instances file is not valid YAML at line 3 (did not find expected node "
        'content); quote IPv6 addresses inside [...] and {...}: "::1"',
    ),
    _c(
        "batch-missing-name",
        "cert issue --ca ca --in no-name.yml --pem --out certs.zip",
        1,
        "no-name.yml: instance #1: 'name' is required",
    ),
    _c(
        "batch-duplicate-filename",
        "cert issue --ca ca --in duplicate.yml --pem --out certs.zip",
        1,
        "duplicate.yml: instance 'node-2': file name 'node-1' is used twice",
    ),
    _c(
        "batch-unsafe-filename",
        "cert issue --ca ca --in unsafe.yml --pem --out certs.zip",
        1,
        "unsafe.yml: instance 'node-1': '../x' is not a safe file name",
    ),
    _c(
        "batch-bad-ip",
        "cert issue --ca ca --in bad-ip.yml --pem --out certs.zip",
        1,
        "bad-ip.yml: instance 'node-1': 1.2.3.999: not a valid IPv4",
    ),
    _c(
        "batch-not-utf8",
        "cert issue --ca ca --in latin1.yml --pem --out certs.zip",
        1,
        "latin1.yml: not UTF-8 text",
    ),
    _c(
        "batch-missing-file",
        "cert issue --ca ca --in nope.yml --pem --out certs.zip",
        1,
        "nope.yml: instances file not found",
    ),
    _c(
        "batch-p12-no-password",
        "cert issue --ca ca --in instances.yml --out certs.zip",
        2,
        "PKCS#12 output needs a password",
    ),
    _c(
        "batch-with-cn",
        "cert issue --ca ca --in instances.yml --pem --cn x --out certs.zip",
        2,
        "--in takes names from the file",
    ),
    _c(
        "batch-existing-zip",
        "cert issue --ca ca --in instances.yml --pem --out existing.zip",
        1,
        "existing.zip already exists",
    ),
    _c(
        "batch-ca-missing",
        "cert issue --ca nowhere --in instances.yml --pem --out certs.zip",
        1,
        "nowhere: CA directory not found",
    ),
    # --- csr create / sign -------------------------------------------------------------
    _c(
        "csr-create-foo-key",
        "csr create --out o --cn web --key-type foo",
        2,
        "foo: unknown key type",
    ),
    _c(
        "csr-create-dsa-key",
        "csr create --out o --cn web --key-type dsa",
        2,
        "dsa: key type not allowed",
    ),
    _c(
        "csr-create-bad-ip",
        "csr create --out o --cn web --ip 1.2.3.999",
        2,
        "1.2.3.999: not a valid IPv4",
    ),
    _c(
        "csr-create-bad-dns",
        "csr create --out o --cn web --dns=-bad-.example",
        2,
        "-bad-.example: invalid DNS name",
    ),
    _c(
        "csr-create-dns-with-a-space",
        ["csr", "create", "--out", "o", "--cn", "web", "--dns", "a.example b.example"],
        2,
        "'a.example b.example': separate names and addresses with commas, not spaces "
        "(a.example,b.example)",
    ),
    _c("csr-create-no-name", "csr create --out o", 2, "give --cn or --subject"),
    _c(
        "csr-create-existing",
        "csr create --out existing --cn web",
        1,
        "existing/tls.csr already exists",
    ),
    _c(
        "csr-sign-tampered",
        "csr sign --ca ca --csr tampered.csr --out o",
        1,
        "signature does not verify",
    ),
    _c(
        "csr-sign-weak",
        "csr sign --ca ca --csr weak.csr --out o",
        1,
        "RSA keys must have at least 2048 bits",
    ),
    _c(
        "csr-sign-garbage",
        "csr sign --ca ca --csr garbage.pem --out o",
        1,
        "garbage.pem: not a valid PEM or DER certificate signing request",
    ),
    _c(
        "csr-sign-truncated",
        "csr sign --ca ca --csr truncated.csr --out o",
        1,
        "not a valid PEM or DER certificate signing request",
    ),
    _c(
        "csr-sign-certificate",
        "csr sign --ca ca --csr leaf.crt --out o",
        1,
        "leaf.crt: not a certificate signing request: a PEM CERTIFICATE block (a CSR is a "
        "CERTIFICATE REQUEST)",
    ),
    _c(
        "csr-sign-key",
        "csr sign --ca ca --csr leaf.key --out o",
        1,
        "leaf.key: not a certificate signing request: a PEM PRIVATE KEY block",
    ),
    _c("csr-sign-missing", "csr sign --ca ca --csr nope.csr --out o", 1, "nope.csr: CSR not found"),
    _c(
        "csr-sign-csr-is-directory",
        "csr sign --ca ca --csr ca --out o",
        1,
        "ca: is a directory, expected a CSR",
    ),
    _c(
        "csr-sign-bad-san",
        "csr sign --ca ca --csr bad-san.csr --out o",
        1,
        "-bad-.example: invalid DNS name",
    ),
    _c(
        "csr-sign-ca-issuers-url-fragment",
        "csr sign --ca ca --csr good.csr --ca-issuers-url http://pki.example.com/ca.der#x --out o",
        2,
        "certctl: error: --ca-issuers-url 'http://pki.example.com/ca.der#x': a URL clients "
        "fetch has no #fragment",
    ),
    _c(
        "csr-sign-root-profile",
        "csr sign --ca ca --csr good.csr --profile ca --out o",
        2,
        "a root CA is self-signed",
    ),
    _c(
        "csr-sign-unknown-profile",
        "csr sign --ca ca --csr good.csr --profile web --out o",
        2,
        "web: unknown profile",
    ),
    _c(
        "csr-sign-validity-0D",
        "csr sign --ca ca --csr good.csr --validity 0D --out o",
        2,
        "0D: duration must be positive",
    ),
    _c(
        "csr-sign-ca-missing",
        "csr sign --ca nowhere --csr good.csr --out o",
        1,
        "nowhere: CA directory not found",
    ),
    _c("csr-sign-not-a-ca", "csr sign --ca notca --csr good.csr --out o", 1, "not a CA"),
    _c(
        "csr-sign-existing",
        "csr sign --ca ca --csr good.csr --out existing",
        1,
        "existing/tls.crt already exists",
    ),
    _c("csr-sign-missing-csr-option", "csr sign --ca ca --out o", 2, "Missing option '--csr'"),
    # --- inspect -----------------------------------------------------------------------
    _c(
        "inspect-garbage",
        "inspect garbage.pem",
        1,
        "garbage.pem: not a recognised PEM, DER or PKCS#12 file",
    ),
    _c(
        "inspect-truncated",
        "inspect truncated.pem",
        1,
        "truncated.pem: malformed PEM: no complete BEGIN/END block",
    ),
    _c(
        "inspect-corrupted-body",
        "inspect corrupted.pem",
        1,
        "corrupted.pem: malformed PEM certificate block",
    ),
    _c(
        "inspect-empty-file",
        "inspect empty.pem",
        1,
        # Said as it is: "not a recognised PEM, DER or PKCS#12 file" before, for 0 bytes (a
        # redirect that failed, a copy that did not happen).
        "empty.pem: an empty file: no certificate, key, CSR or CRL in it",
    ),
    _c("inspect-p12-wrong-password", "inspect ca.p12 --password wrong", 1, "wrong password"),
    _c("inspect-p12-no-password", "inspect ca.p12", 1, "PKCS#12 file is password-protected"),
    # Cut short: before, "password-protected: give --password-file", which no password fixes.
    _c(
        "inspect-p12-truncated",
        "inspect truncated.p12",
        1,
        "truncated.p12: not a readable PKCS#12 file: truncated or corrupted",
    ),
    _c(
        "inspect-p12-empty-password-file",
        "inspect ca.p12 --password-file empty-pw.txt",
        1,
        "password file is empty",
    ),
    _c(
        "inspect-encrypted-key-wrong-password",
        "inspect encrypted.key --password-file pw.txt",
        1,
        "cannot decrypt the private key: wrong password",
    ),
    _c("inspect-missing", "inspect nope.pem", 1, "nope.pem: file not found"),
    # Upper case like every other argument (certs get CERT_ID), not 'file' / 'cert'.
    _c("inspect-no-argument", "inspect", 2, "Missing argument 'FILE'"),
    _c("verify-no-argument", "verify --ca ca.crt", 2, "Missing argument 'CERT'"),
    # --- verify ------------------------------------------------------------------------
    _c(
        "verify-garbage-ca",
        "verify leaf.crt --ca garbage.pem",
        1,
        "garbage.pem: not a recognised PEM",
    ),
    _c(
        "verify-garbage-cert",
        "verify garbage.pem --ca ca/ca.crt",
        1,
        "garbage.pem: not a recognised PEM",
    ),
    _c(
        "verify-key-not-cert", "verify leaf.key --ca ca/ca.crt", 1, "leaf.key: holds no certificate"
    ),
    _c("verify-wrong-ca", "verify leaf.crt --ca other-ca.crt", 1, "verification failed"),
    _c(
        "verify-wrong-hostname",
        "verify leaf.crt --ca ca/ca.crt --hostname other.example",
        1,
        "other.example is not in the certificate's SANs (it has DNS:",
    ),
    _c(
        "verify-bad-purpose",
        "verify leaf.crt --ca ca/ca.crt --purpose email",
        2,
        "email: choose server or client",
    ),
    _c(
        "verify-hostname-for-client",
        "verify leaf.crt --ca ca/ca.crt --purpose client --hostname x",
        2,
        "--hostname applies to --purpose server",
    ),
    _c("verify-missing-ca-option", "verify leaf.crt", 2, "Missing option '--ca'"),
    _c(
        "verify-missing-cert",
        "verify nope.crt --ca ca/ca.crt",
        1,
        "nope.crt: certificate not found",
    ),
    _c(
        "verify-garbage-crl",
        "verify leaf.crt --ca ca/ca.crt --crl garbage.pem",
        1,
        "garbage.pem: not a recognised PEM, DER or PKCS#12 file",
    ),
    _c(
        "verify-truncated-crl",
        "verify leaf.crt --ca ca/ca.crt --crl truncated.crl",
        1,
        "truncated.crl: malformed PEM: no complete BEGIN/END block",
    ),
    _c(
        "verify-corrupted-crl",
        "verify leaf.crt --ca ca/ca.crt --crl corrupted.crl",
        1,
        "corrupted.crl: malformed PEM x509 crl block",
    ),
    _c(
        "verify-certificate-as-crl",
        "verify leaf.crt --ca ca/ca.crt --crl leaf.crt",
        1,
        "leaf.crt: holds no CRL (--crl takes a PEM or DER CRL file)",
    ),
    _c("verify-missing-crl", "verify leaf.crt --ca ca/ca.crt --crl nope.crl", 1, "nope.crl: CRL"),
    _c(
        "verify-crl-check-all-without-crl",
        "verify leaf.crt --ca ca/ca.crt --crl-check-all",
        2,
        "--crl-check-all needs the CRLs to check with (--crl FILE, or X509 CRL blocks in the --ca "
        "bundle)",
    ),
    # --- crl create --------------------------------------------------------------------
    _c(
        "crl-bad-serial",
        "crl create --ca ca --out new.crl --revoked zz",
        2,
        "zz: not a serial number",
    ),
    _c(
        "crl-zero-serial",
        "crl create --ca ca --out new.crl --revoked 0",
        2,
        "serial numbers are positive",
    ),
    _c(
        "crl-unknown-reason",
        "crl create --ca ca --out new.crl --revoked 1f --reason bogus",
        2,
        "bogus: unknown reason",
    ),
    _c(
        # `--reason "$REASON"` with the variable unset: said so, not as ": unknown reason".
        "crl-empty-reason",
        ["crl", "create", "--ca", "ca", "--out", "new.crl", "--revoked", "1f", "--reason", ""],
        2,
        "an empty revocation reason: give one of unspecified, keyCompromise",
    ),
    # --- acme accounts deactivate: the reason checked before anything is sent (certs revoke)
    _c(
        "acme-accounts-deactivate-unknown-reason",
        "acme accounts deactivate 18ee7ed394a0b8132d35d24d --revoke-certificates --reason stolen",
        2,
        "Invalid value for --reason: stolen: unknown revocation reason",
    ),
    _c(
        "acme-accounts-deactivate-ca-reason",
        "acme accounts deactivate 18ee7ed394a0b8132d35d24d --revoke-certificates "
        "--reason cACompromise",
        2,
        "a certificate's compromised key is keyCompromise",
    ),
    _c(
        "crl-next-update-90X",
        "crl create --ca ca --out new.crl --next-update 90X",
        2,
        "90X: unknown duration unit",
    ),
    _c("crl-existing", "crl create --ca ca --out exists.crl", 1, "exists.crl already exists"),
    _c(
        "crl-ca-missing",
        "crl create --ca nowhere --out new.crl",
        1,
        "nowhere: CA directory not found",
    ),
    _c(
        "issue-stale-chain",
        "cert issue --ca stale --cn x --out new",
        1,
        "stale/ca-chain.crt: does not start with ca.crt; it belongs to another CA",
    ),
    _c(
        "crl-mixed-chain",
        "crl create --ca mixed --out new.crl",
        1,
        "mixed/ca-chain.crt: CN=Other Root did not issue CN=Bad Input Intermediate",
    ),
    _c("crl-not-a-ca", "crl create --ca notca --out new.crl", 1, "not a CA"),
    _c(
        # The directory `cert issue --ca` takes: the message names the file to give.
        "verify-ca-directory",
        "verify --ca ca leaf.crt",
        1,
        "certctl: error: ca is a CA directory: --ca takes the CA certificate here (--ca ca/ca.crt)",
    ),
    _c(
        # A chain file with the CA first: the CA was judged as the leaf ("leaf server
        # certificate has no subjectAltName" with --hostname).
        "verify-ca-first-in-chain-file",
        "verify --ca ca/ca.crt ca-first.pem --hostname web.example",
        1,
        "ca-first.pem: the first certificate, CN=Bad Input Root, is a CA certificate: put the "
        "leaf first (then its intermediates), as servers send them",
    ),
    _c(
        "verify-ca-as-server-with-hostname",
        "verify --ca ca/ca.crt inter/ca-chain.crt --hostname web.example",
        1,
        "is a CA certificate, not a server certificate",
    ),
    _c(
        "verify-ca-as-server",
        "verify --ca ca/ca.crt ca/ca.crt",
        1,
        "is a CA certificate, not a server certificate",
    ),
    _c("crl-out-is-directory", "crl create --ca ca --out ca", 1, "ca is a directory"),
    # Typer converts numbers with pydantic, which said "Input should be a valid integer,
    # unable to parse string as an integer" and "Input should be less than or equal to 10".
    _c(
        "ca-create-path-length-word",
        "ca create --out new --path-length two",
        2,
        "Invalid value for '--path-length': two: not a whole number",
    ),
    _c(
        "ca-create-path-length-11",
        "ca create --out new --path-length 11",
        2,
        "Invalid value for '--path-length': 11: must be at most 10",
    ),
    _c(
        "ca-create-path-length-negative",
        "ca create --out new --path-length -1",
        2,
        "Invalid value for '--path-length': -1: must be at least 0",
    ),
    _c(
        "serve-workers-word",
        "serve --data-dir data --workers four",
        2,
        "Invalid value for '--workers': four: not a whole number",
    ),
    _c("crl-missing-ca-option", "crl create --out new.crl", 2, "Missing option '--ca'"),
    # --- --out - (stdout) where stdout cannot take the output --------------------------
    # Both wrote into the current directory: a directory named "-", a file named "-".
    _c(
        "certs-issue-out-stdout",
        "certs issue --cn web --out -",
        2,
        "Invalid value for '--out': takes a directory, not - (without --out the answer",
    ),
    _c(
        "admin-key-out-stdout",
        "admin-key --data-dir data --out -",
        2,
        "--out -: the admin key is never printed; give a file",
    ),
    # --- top level ---------------------------------------------------------------------
    _c("unknown-command", "frobnicate", 2, "No such command 'frobnicate'"),
    _c("unknown-subcommand", "cert revoke", 2, "No such command 'revoke'"),
    # One level down: click suggested nothing, or a command spelt alike ('admin-key').
    _c(
        "command-of-a-group",
        "whoami",
        2,
        "No such command 'whoami': did you mean certctl auth whoami? (see 'certctl --help')",
    ),
    _c(
        "group-of-a-group",
        "apikeys",
        2,
        "No such command 'apikeys': did you mean certctl auth apikeys? (see 'certctl --help')",
    ),
    _c(
        "apikeys-rotate",
        "auth apikeys rotate k",
        2,
        "No such command 'rotate': mint the next key (certctl auth apikeys create ACTOR_ID "
        "--name NAME-v2), switch to it, then revoke the old one (certctl auth apikeys revoke "
        "KEY_ID)",
    ),
    # Not a leap year: a well-formed date of no day was "not an ISO 8601 date or time".
    _c(
        "apikeys-expires-no-leap-day",
        "auth apikeys create a --expires-at 2027-02-29",
        2,
        "Invalid value for '--expires-at': 2027-02-29: day is out of range for month (see",
    ),
    _c(
        "apikeys-expires-hour-25",
        "auth apikeys create a --expires-at 2099-01-01T25:00Z",
        2,
        "Invalid value for '--expires-at': 2099-01-01T25:00Z: hour must be in 0..23 (see",
    ),
    # Past datetime.max in UTC: the server's "expires_at: out of range", not the option's.
    _c(
        "apikeys-expires-past-datetime-max",
        ["auth", "apikeys", "create", "a", "--expires-at", "9999-12-31T23:59:59-14:00"],
        2,
        "Invalid value for '--expires-at': 9999-12-31T23:59:59-14:00: out of range (at most "
        "9999-12-31T23:59:59Z)",
    ),
    _c(
        "command-of-two-groups",
        "revoke x",
        2,
        "No such command 'revoke': did you mean certctl certs revoke or certctl issuers revoke?",
    ),
]


@pytest.fixture(scope="module")
def inputs() -> dict[str, bytes]:
    """Files every case starts from, built through certctl.pki."""
    now = datetime.now(UTC)
    ca_key = generate_private_key()
    ca_cert = create_root_ca(
        ca_key, common_name_dn("Bad Input Root"), validity=timedelta(days=3650), now=now
    ).certificate
    ca = CertificateAuthority(ca_cert, ca_key)
    inter_key = generate_private_key()
    inter_cert = ca.issue(
        inter_key.public_key(),
        common_name_dn("Bad Input Intermediate"),
        profile=PROFILES["intermediate"],
        validity=timedelta(days=365),
        now=now,
    ).certificate
    other_key = generate_private_key()
    other_cert = create_root_ca(
        other_key, common_name_dn("Other Root"), validity=timedelta(days=3650), now=now
    ).certificate
    leaf_key = generate_private_key()
    leaf_cert = ca.issue(
        leaf_key.public_key(),
        common_name_dn("leaf.example"),
        profile=PROFILES["server"],
        validity=timedelta(days=90),
        now=now,
    ).certificate
    good_csr = create_csr(generate_private_key(), common_name_dn("csr.example"))
    good_der = good_csr.public_bytes(serialization.Encoding.DER)
    tampered = x509.load_der_x509_csr(good_der.replace(b"csr.example", b"evil.exampl"))
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(common_name_dn("weak.example"))
        .sign(weak_key, hashes.SHA256())
    )
    bad_san_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(common_name_dn("bad-san"))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("-bad-.example")]), critical=False)
        .sign(generate_private_key(), hashes.SHA256())
    )
    ca_pem = certs_to_pem([ca_cert])
    leaf_pem = certs_to_pem([leaf_cert])
    good_csr_pem = good_csr.public_bytes(PEM)
    crl_pem = create_crl(ca, [], now=now).public_bytes(PEM)
    return {
        "ca/ca.crt": ca_pem,
        "ca/ca.key": key_to_pem(ca_key),
        "inter/ca.crt": certs_to_pem([inter_cert]),
        "inter/ca.key": key_to_pem(inter_key),
        "inter/ca-chain.crt": certs_to_pem([inter_cert, ca_cert]),
        # A root written over an intermediate by an older certctl kept its ca-chain.crt.
        "stale/ca.crt": ca_pem,
        "stale/ca.key": key_to_pem(ca_key),
        "stale/ca-chain.crt": certs_to_pem([inter_cert, ca_cert]),
        "mixed/ca.crt": certs_to_pem([inter_cert]),
        "mixed/ca.key": key_to_pem(inter_key),
        "mixed/ca-chain.crt": certs_to_pem([inter_cert, other_cert]),
        "notca/ca.crt": leaf_pem,
        "notca/ca.key": key_to_pem(leaf_key),
        "badkey/ca.crt": ca_pem,
        "badkey/ca.key": b"this is not a key\n",
        "nokey/ca.crt": ca_pem,
        "leaf.crt": leaf_pem,
        "ca-first.pem": ca_pem + leaf_pem,
        "leaf.key": key_to_pem(leaf_key),
        "other.key": key_to_pem(other_key),
        "other-ca.crt": certs_to_pem([other_cert]),
        "encrypted.key": key_to_pem(ca_key, b"right"),
        "ca.p12": to_pkcs12("ca", ca_key, ca_cert, [], b"changeit"),
        "truncated.p12": to_pkcs12("ca", ca_key, ca_cert, [], b"changeit")[:-100],
        # The other root's key beside this CA's certificate (as an extra one).
        "mismatched.p12": serialization.pkcs12.serialize_key_and_certificates(
            b"ca", other_key, None, [ca_cert], serialization.NoEncryption()
        ),
        "pw.txt": b"changeit\n",
        "empty-pw.txt": b"\n",
        "two-line-pw.txt": b"uD5mHk0yWQ2nFJ1p+Oq7cXvL3bA9sRtYeZ4iG8hK6wN0aMdCfEjBxUlVoSrT\nM3w=\n",
        "garbage.pem": b"this is not PEM, DER or PKCS#12\n",
        "empty.pem": b"",
        "truncated.pem": ca_pem[: len(ca_pem) // 2],
        "corrupted.pem": ca_pem[:100] + ca_pem[140:],
        "good.csr": good_csr_pem,
        "truncated.csr": good_csr_pem[: len(good_csr_pem) // 2],
        "tampered.csr": tampered.public_bytes(PEM),
        "weak.csr": weak_csr.public_bytes(PEM),
        "bad-san.csr": bad_san_csr.public_bytes(PEM),
        "instances.yml": GOOD_INSTANCES,
        "bad-yaml.yml": b"instances:\n  - name: [node-1\n",
        "ipv6.yml": b"instances:\n  - name: node-1\n    ip: [10.0.0.1, ::1]\n",
        "no-name.yml": b"instances:\n  - dns: [node-1.example.com]\n",
        "duplicate.yml": b"instances:\n  - name: node-1\n  - name: node-2\n    filename: node-1\n",
        "unsafe.yml": b"instances:\n  - name: node-1\n    filename: ../x\n",
        "bad-ip.yml": b"instances:\n  - name: node-1\n    ip: [1.2.3.999]\n",
        "latin1.yml": "instances:\n  - name: café\n".encode("latin-1"),
        "existing/tls.crt": b"old certificate\n",
        "existing/tls.csr": b"old request\n",
        "existing/tls.key": b"old key\n",
        "existing.zip": b"old zip\n",
        "exists.crl": b"old crl\n",
        "truncated.crl": crl_pem[: len(crl_pem) // 2],
        "corrupted.crl": crl_pem[:80] + crl_pem[120:],
    }


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inputs: dict[str, bytes]) -> Path:
    for name, data in inputs.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    monkeypatch.chdir(tmp_path)
    for var in ("CERTCTL_PASSWORD", "CERTCTL_CA_PASSWORD", "CERTCTL_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content ('dir' for directories)."""
    return {
        str(p.relative_to(root)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def _check_stderr(err: str, message: str) -> None:
    assert "Traceback" not in err
    assert err.endswith("\n"), err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("certctl: error: "), err
    assert "internal error" not in lines[0], err
    assert message in lines[0], err


def test_table_is_large_and_unique() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {" ".join(c.argv[:2]) for c in CASES}
    for command in (
        "ca create",
        "ca import",
        "cert issue",
        "csr create",
        "csr sign",
        "crl create",
    ):
        assert command in commands
    assert any(c.argv[0] == "inspect" for c in CASES)
    assert any(c.argv[0] == "verify" for c in CASES)
    assert any("--in" in c.argv for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(workdir)
    code = run(list(case.argv))
    _, err = capsys.readouterr()
    _check_stderr(err, case.message)
    assert code == case.code
    assert _snapshot(workdir) == before


SUBPROCESS_CASES = [
    c
    for c in CASES
    if c.id
    in {
        "issue-bad-ip",
        "csr-sign-tampered",
        "ca-create-unknown-option",
        "issue-certutil-days",
        "verify-corrupted-crl",
    }
]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=lambda c: c.id)
def test_console_script(case: Case, workdir: Path) -> None:
    script = Path(sys.executable).with_name("certctl")
    assert script.exists(), script
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env["COLUMNS"] = "80"
    before = _snapshot(workdir)
    proc = subprocess.run(
        [str(script), *case.argv],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _check_stderr(proc.stderr, case.message)
    assert proc.returncode == case.code
    assert proc.stdout == ""
    assert _snapshot(workdir) == before


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_password_on_stdin_is_read_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from certctl.cli._common import read_password

    # verify reads the password for each PKCS#12 input: the second read gets the same one,
    # not an empty stream.
    piped = io.StringIO("s3cret\n")
    monkeypatch.setattr(sys, "stdin", piped)
    assert read_password(Path("-")) == b"s3cret"
    assert read_password(Path("-")) == b"s3cret"
    # A terminal: the line typed (Enter ends it, as for openssl -passin stdin).
    typed = _Terminal("typed\nnot read\n")
    monkeypatch.setattr(sys, "stdin", typed)
    assert read_password(Path("-")) == b"typed"
    assert typed.read() == "not read\n"
    # A file called '-' is named by its full path.
    (tmp_path / "-").write_text("in-a-file\n")
    assert read_password(tmp_path / "-") == b"in-a-file"
