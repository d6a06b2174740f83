"""An HTTP bundle's layout per profile: folder names, file modes, the server's sample settings."""

from __future__ import annotations

from certctl.pki.bundle_plan import HttpBundlePlan
from certctl.pki.subject_alt_names import SubjectAltNames

__all__ = ["EXECUTABLE", "PUBLIC", "SECRET", "Layout"]


SECRET = 0o100600
PUBLIC = 0o100644
EXECUTABLE = 0o100755


class Layout:
    """Folder and file names of one profile."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.is_es = profile == "elasticsearch"
        self.client_folder = "kibana/" if self.is_es else "client/"
        self.ca_pem = "elasticsearch-ca.pem" if self.is_es else "ca.crt"
        self.default_ca_cn = "Elasticsearch HTTP CA" if self.is_es else "certctl HTTP CA"
        self.product = "Elasticsearch" if self.is_es else "HTTPS"
        self.node_word = "node" if self.is_es else "server"

    def node_folder(self, name: str) -> str:
        """The folder of node ``name``'s files in the zip."""
        return f"elasticsearch/{name}/" if self.is_es else f"{name}/"

    def server_sample(
        self, plan: HttpBundlePlan, name: str, sans: SubjectAltNames
    ) -> tuple[str, str]:
        """The server's sample settings for node ``name``: the file name and its text."""
        pem = plan.mode == "csr" or plan.output_format == "pem"
        # A shared certificate's folder name is no node's ("Elasticsearch node http").
        who = f"every {self.node_word} (shared certificate {name})" if plan.shared else name
        if self.is_es:
            lines = [
                f"# Elasticsearch: HTTP TLS settings for elasticsearch.yml on {who}."
                if plan.shared
                else f"# Elasticsearch node {name}: HTTP TLS settings for elasticsearch.yml.",
                "# Paths are relative to the Elasticsearch configuration directory.",
                "# Elasticsearch 8 writes an 'xpack.security.http.ssl:' block at its first",
                "# start (security auto-configuration): replace that block with these lines;",
                "# a setting given twice stops the node from starting.",
                "xpack.security.http.ssl.enabled: true",
            ]
            if pem:
                if plan.mode == "csr":
                    lines.append("# http.crt: the certificate your CA returns for http.csr.")
                lines += [
                    "xpack.security.http.ssl.certificate: http.crt",
                    "xpack.security.http.ssl.key: http.key",
                ]
            else:
                lines += [
                    "xpack.security.http.ssl.keystore.path: http.p12",
                    "# Keystore password, kept out of this file:",
                    "#   bin/elasticsearch-keystore add "
                    "xpack.security.http.ssl.keystore.secure_password",
                ]
            return "sample-elasticsearch.yml", "\n".join(lines) + "\n"
        lines = [f"# nginx: HTTPS for {who}. Copy the files to /etc/nginx/tls/."]
        if not pem:
            # Options both OpenSSL 1.1.1 and 3.x take: 1.1.1 (RHEL 8, Ubuntu 20.04) knows
            # neither -noenc nor -legacy, and 3.x reads 3DES (--p12-legacy) without -legacy.
            lines += [
                "# nginx reads PEM, not PKCS#12; extract the files first:",
                "#   openssl pkcs12 -in http.p12 -nokeys -out http.crt",
                "#   openssl pkcs12 -in http.p12 -nocerts -nodes -out http.key",
                "#   chmod 600 http.key",
            ]
        elif plan.mode == "csr":
            lines.append("# http.crt: the certificate your CA returns for http.csr.")
        server_names = " ".join(sans.dns) or "_"
        # A client given an IPv6 address of the certificate reaches nginx on an IPv6 socket
        # only; not always there, as nginx does not start where IPv6 is off.
        v6 = ["    listen [::]:443 ssl;"] if any(a.version == 6 for a in sans.ip) else []
        lines += [
            "server {",
            "    listen 443 ssl;",
            *v6,
            f"    server_name {server_names};",
            "",
            "    ssl_certificate     /etc/nginx/tls/http.crt;",
            "    ssl_certificate_key /etc/nginx/tls/http.key;",
            "    ssl_protocols       TLSv1.2 TLSv1.3;",
            "",
            "    # Optional mutual TLS: require client certificates. Copy the certificate of",
            "    # the CA that signs them to this path first (this folder has none); a certctl",
            "    # CA signs them with: certctl cert issue --ca CA_DIR --profile client ...",
            "    # ssl_client_certificate /etc/nginx/tls/client-ca.crt;",
            "    # ssl_verify_client on;",
            "",
            "    location / {",
            "        root /usr/share/nginx/html;",
            "    }",
            "}",
        ]
        return "sample-nginx.conf", "\n".join(lines) + "\n"
