"""An HTTP bundle's READMEs and client files: plain text, wrapped for a terminal."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from certctl.pki.bundle_layout import EXECUTABLE, PUBLIC, Layout
from certctl.pki.bundle_plan import BundleNode, HttpBundlePlan
from certctl.pki.distinguished_names import format_dn
from certctl.pki.formats import certs_to_pem, format_serial
from certctl.pki.issue import CertificateAuthority
from certctl.pki.subject_alt_names import SubjectAltNames
from certctl.pki.validity import format_duration

__all__ = ["ca_readme", "client_files", "node_readme"]


_WIDTH = 88  # README line width


def _names_line(sans: SubjectAltNames) -> str:
    return ", ".join([*(f"DNS:{d}" for d in sans.dns), *(f"IP:{a}" for a in sans.ip)])


def _validity_line(certificate: x509.Certificate) -> str:
    return f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"


def _title(text: str) -> list[str]:
    return [text, "=" * len(text), ""]


def _table(rows: Sequence[tuple[str, str]], indent: int = 2) -> list[str]:
    """Two aligned columns; long descriptions wrap under their own column."""
    width = max(len(left) for left, _ in rows) + 2
    lines: list[str] = []
    for left, right in rows:
        wrapped = textwrap.wrap(right, _WIDTH - indent - width) or [""]
        lines.append(" " * indent + left.ljust(width) + wrapped[0])
        lines += [" " * (indent + width) + more for more in wrapped[1:]]
    return lines


def _steps(steps: Sequence[str]) -> list[str]:
    """Numbered steps; a step's lines after the first that start with spaces stay verbatim."""
    lines: list[str] = []
    for number, step in enumerate(steps, 1):
        text, *verbatim = step.split("\n")
        wrapped = textwrap.wrap(text, _WIDTH - 5)
        lines.append(f"  {number}. {wrapped[0]}")
        lines += [f"     {more}" for more in wrapped[1:]]
        lines += [f"     {more}" for more in verbatim]
    return lines


def node_readme(
    plan: HttpBundlePlan,
    layout: Layout,
    name: str,
    sans: SubjectAltNames,
    certificate: x509.Certificate | None,
    now: datetime,
) -> str:
    """README.txt of node ``name``'s folder: its files, its certificate, how to install them."""
    where = "every node" if plan.shared else name
    sample = "sample-elasticsearch.yml" if layout.is_es else "sample-nginx.conf"
    clients = "../../kibana/" if layout.is_es else "../client/"
    if plan.shared:
        out = _title(f"certctl http bundle: {layout.product} certificate {name}, shared")
    else:
        out = _title(f"certctl http bundle: {layout.product} {layout.node_word} {name}")
    if certificate is None:
        out += textwrap.wrap(
            "This folder holds a private key and a certificate signing request (CSR) "
            f"for the names {_names_line(sans)}.",
            _WIDTH,
        )
        out += ["", "Files"]
        out += _table(
            [
                ("http.csr", "the request: send it to your certificate authority"),
                (
                    "http.key",
                    "the private key (PKCS#8 PEM, not encrypted): keep it secret, "
                    "never send it anywhere",
                ),
                (sample, "settings to add once the certificate is back"),
            ]
        )
        out += ["", "Getting it signed"]
        out += [
            "  Send http.csr to your CA and ask for a TLS server certificate (serverAuth)",
            "  with the names above. With a certctl CA directory:",
            "    certctl csr sign --ca CA_DIR --csr http.csr --profile server --out signed/",
            "  Save the certificate, then any intermediates, as http.crt (PEM); certctl",
            "  writes them so in signed/tls.crt (cp signed/tls.crt http.crt), and the CA",
            "  certificate clients trust in signed/ca.crt.",
            "",
            "Install",
        ]
        if layout.is_es:
            out += _steps(
                [
                    "Copy http.crt and http.key into the Elasticsearch configuration "
                    f"directory of {where} (/etc/elasticsearch for packages, config/ for "
                    "archives).",
                    f"Add the settings from {sample} to elasticsearch.yml, replacing "
                    "any xpack.security.http.ssl settings already there (Elasticsearch 8 "
                    "writes some at its first start; a setting given twice stops the node).",
                    f"Restart the node; give Kibana and clients your CA's certificate "
                    f"(see {clients}).",
                ]
            )
        else:
            out += _steps(
                [
                    "Copy http.crt and http.key to /etc/nginx/tls/ (http.key mode 0600).",
                    f"Include {sample} in your nginx configuration and reload nginx.",
                    f"Give clients your CA's certificate (see {clients}).",
                ]
            )
        return "\n".join(out) + "\n"
    p12 = plan.output_format == "p12"
    out += ["Files"]
    if p12:
        encryption = "3DES/SHA-1 legacy" if plan.p12_legacy else "AES-256"
        files = [
            (
                "http.p12",
                "PKCS#12 keystore with the private key, the certificate and the CA chain, "
                f"and the CA as trusted entry 'ca' ({encryption} encryption). Its password "
                f"is {plan.password_hint}; the password itself is not in this bundle.",
            )
        ]
    else:
        files = [
            ("http.crt", "the certificate, then any intermediate CA certificates (PEM)"),
            ("http.key", "the private key (PKCS#8 PEM, not encrypted): keep it secret, 0600"),
        ]
    out += _table([*files, (sample, "settings to add to the server configuration")])
    lifetime = format_duration(certificate.not_valid_after_utc - now)
    out += ["", "Certificate"]
    out += _table(
        [
            ("subject", format_dn(certificate.subject)),
            ("names", _names_line(sans)),
            ("issuer", format_dn(certificate.issuer)),
            ("serial", format_serial(certificate.serial_number)),
            ("valid until", f"{_validity_line(certificate)} ({lifetime})"),
        ]
    )
    out += ["", "Install"]
    if layout.is_es:
        steps = [
            f"Copy {'http.p12' if p12 else 'http.crt and http.key'} into the Elasticsearch "
            f"configuration directory of {where} (/etc/elasticsearch for packages, config/ "
            "for archives).",
            f"Add the settings from {sample} to elasticsearch.yml, replacing any "
            "xpack.security.http.ssl settings already there (Elasticsearch 8 writes some at "
            "its first start; a setting given twice stops the node).",
        ]
        if p12:
            steps.append(
                "Store the keystore password in the Elasticsearch keystore; enter "
                f"{plan.password_hint} (and overwrite the auto-configured one if asked):\n"
                "  bin/elasticsearch-keystore add "
                "xpack.security.http.ssl.keystore.secure_password"
            )
        steps.append(
            f"Restart the node. Kibana and other clients must trust the CA: see {clients}."
        )
    else:
        steps = []
        if p12:
            steps.append(
                "nginx reads PEM: extract http.crt and http.key from http.p12 with the "
                f"openssl commands at the top of {sample} (openssl asks for "
                f"{plan.password_hint})."
            )
        steps += [
            "Copy http.crt and http.key to /etc/nginx/tls/ (http.key mode 0600).",
            f"Include {sample} in your nginx configuration and reload nginx.",
            f"Give clients the CA certificate: see {clients}.",
        ]
    out += _steps(steps)
    out += [""]
    out += textwrap.wrap(
        f"Renew before {certificate.not_valid_after_utc:%Y-%m-%d}: run certctl http again "
        "with the same CA and replace the files, or run certctl cert issue --ca CA_DIR with "
        # cert issue names its files tls.*: replaced as they come, the samples found none.
        + (
            "the same names and --p12, saving its tls.p12 as http.p12."
            if p12
            else "the same names, saving its tls.crt and tls.key as http.crt and http.key."
        ),
        _WIDTH,
    )
    return "\n".join(out) + "\n"


def ca_readme(plan: HttpBundlePlan, certificate: x509.Certificate, layout: Layout) -> str:
    """ca/README.txt: the new CA's files, and how to keep and reuse them."""
    title = "certctl http bundle: the certificate authority"
    client = layout.client_folder.rstrip("/")
    rows = [
        (
            "ca.crt",
            "the CA certificate (PEM): give it to clients so they trust the servers "
            f"(a copy is in ../{client}/{layout.ca_pem})",
        )
    ]
    if plan.ca_password:
        rows += [
            (
                "ca.key",
                "the CA private key (PKCS#8 PEM, encrypted with AES-256): whoever holds it "
                "and its password can issue certificates your clients trust. The password is "
                f"{plan.ca_password_hint}; the password itself is not in this bundle.",
            ),
            (
                "ca.p12",
                "the same key and certificate as a PKCS#12 keystore (alias 'ca', same "
                "password, AES-256), as elasticsearch-certutil writes it: for its --ca "
                "option and Java tools",
            ),
        ]
        reuse = [
            "  certctl http --ca ca/ --ca-password-file FILE ...",
            "  certctl cert issue --ca ca/ --ca-password-file FILE ...",
            "(FILE holds the password; CERTCTL_CA_PASSWORD works too.)",
        ]
        delete = "Delete every other copy of ca.key and ca.p12 (including this zip) once stored."
        encrypt: list[str] = []
    else:
        rows.append(
            (
                "ca.key",
                "the CA private key (PKCS#8 PEM, NOT encrypted): whoever holds it can issue "
                "certificates your clients trust; encrypt it as shown below",
            )
        )
        reuse = ["  certctl http --ca ca/ ...      or      certctl cert issue --ca ca/ ..."]
        delete = "Delete every other copy of ca.key (including this zip) once it is stored."
        encrypt = [
            "",
            "To keep ca.key encrypted (the new password in the file FILE):",
            "  certctl ca import --cert ca.crt --key ca.key --key-password-file FILE --out DIR",
            "then use DIR with --ca-password-file FILE. 'certctl http --ca-password-file FILE'",
            "writes an encrypted ca.key (and a ca.p12) in the first place.",
        ]
    lines = [
        title,
        "=" * len(title),
        "",
        "This CA was created for this bundle and signed every certificate in it.",
        "",
        "Files",
        *_table(rows),
        "",
        "Certificate",
        f"  subject      {format_dn(certificate.subject)}",
        f"  serial       {format_serial(certificate.serial_number)}",
        f"  valid until  {_validity_line(certificate)}",
        "",
        "Keep ca.crt and ca.key together in a safe place, off the servers, to issue",
        "more certificates later:",
        *reuse,
        *textwrap.wrap(delete, _WIDTH),
        *encrypt,
    ]
    return "\n".join(lines) + "\n"


def client_files(
    plan: HttpBundlePlan,
    layout: Layout,
    ca: CertificateAuthority | None,
    nodes: Sequence[BundleNode],
) -> list[tuple[str, bytes, int]]:
    """The client folder's files: the CA certificate, README.txt and sample client settings."""
    folder = layout.client_folder
    hosts = list(dict.fromkeys(h for node in nodes for h in node.hosts))
    files: list[tuple[str, bytes, int]] = []
    if ca is not None:
        files.append((folder + layout.ca_pem, certs_to_pem([ca.root]), PUBLIC))
        where = (
            f"{layout.ca_pem} is the CA certificate that signed the server certificates."
            if ca.root == ca.certificate
            else f"{layout.ca_pem} is the root CA certificate above the intermediate CA that "
            "signed the server certificates (the servers send the intermediate themselves)."
        )
        ca_row = "the CA certificate (PEM)"
    else:
        where = (
            f"Your CA signs the CSRs: save its certificate (PEM) here as {layout.ca_pem};"
            " this bundle cannot include it."
        )
        ca_row = "your CA's certificate (PEM): add it yourself"
    if layout.is_es:
        title = "certctl http bundle: Kibana and other Elasticsearch clients"
        urls = ", ".join(f'"https://{h}:9200"' for h in hosts)
        sample = "\n".join(
            [
                "# Kibana: connect to Elasticsearch over HTTPS, trusting its CA.",
                "# Use an absolute path to elasticsearch-ca.pem (shown for package installs).",
                f"elasticsearch.hosts: [ {urls} ]",
                'elasticsearch.ssl.certificateAuthorities: [ "/etc/kibana/elasticsearch-ca.pem" ]',
                "",
            ]
        )
        body = [
            *textwrap.wrap(where, _WIDTH),
            "",
            "Files",
            *_table([(layout.ca_pem, ca_row), ("sample-kibana.yml", "settings for kibana.yml")]),
            "",
            "Install",
            "  1. Copy elasticsearch-ca.pem into the Kibana configuration directory",
            "     (/etc/kibana for packages, config/ for archives).",
            "  2. Add the settings from sample-kibana.yml to kibana.yml; fix the path.",
            "  3. Other clients use the same file, e.g.:",
            f"       curl --cacert elasticsearch-ca.pem -u elastic https://{hosts[0]}:9200/",
        ]
        sample_name, mode = "sample-kibana.yml", PUBLIC
    else:
        title = "certctl http bundle: clients"
        sample = "\n".join(
            [
                "#!/bin/sh",
                "# Check the HTTPS servers with the CA certificate from this folder.",
                "set -e",
                'cd "$(dirname "$0")"',
                *(f"curl --cacert {layout.ca_pem} https://{h}:443/" for h in hosts),
                "",
            ]
        )
        body = [
            *textwrap.wrap(where, _WIDTH),
            "",
            "Files",
            *_table([(layout.ca_pem, ca_row), ("sample-curl.sh", "checks each server with curl")]),
            "",
            "Install",
            "  Add ca.crt to the trust store of each client, or point the client at it",
            "  (curl --cacert, Python requests verify=, Java keytool -importcert,",
            "  /usr/local/share/ca-certificates/ + update-ca-certificates on Debian).",
        ]
        sample_name, mode = "sample-curl.sh", EXECUTABLE
    readme = "\n".join([title, "=" * len(title), "", *body]) + "\n"
    files += [
        (folder + "README.txt", readme.encode(), PUBLIC),
        (folder + sample_name, sample.encode(), mode),
    ]
    return files
