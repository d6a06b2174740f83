"""certbot gets certificates for IP addresses (RFC 8738) by http-01, as docs/acme.md says;
lego 4.9 is told why it cannot.

Real clients, as root (their state under tmp_path; the http-01 port is a free high one):
certbot ``--ip-address`` (127.0.0.1 alone, as the page's commands run verbatim but for the
address, URL and port; with a DNS name in the same certificate; and ::1). Each certificate is
checked with openssl (it verifies under the ACME issuer, ``openssl x509 -text`` shows the
iPAddress SAN) and with cryptography (the SANs exactly, no IP in the CN). lego 4.9.1
``--domains 127.0.0.1`` (and ``::1``) sends the address as a DNS name, which is refused saying
so.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from cryptography import x509

from tests._tools import failed, free_port, ok, run
from tests.e2e.conftest import CertctlServer, StartServer
from tests.e2e.test_acme_lego import ISSUER, acme_server

pytestmark = pytest.mark.e2e

PAGE = Path(__file__).resolve().parents[2] / "docs" / "acme.md"
ALLOWED = ["127.0.0.0/8", "::1", "localhost"]


def _checked(cert: Path, root: Path, dns: list[str], ips: list[str]) -> x509.Certificate:
    """``cert`` verifies under ``root`` and names exactly ``dns`` and ``ips``; no IP as CN."""
    ok(run("openssl", "verify", "-CAfile", root, cert))
    text = ok(run("openssl", "x509", "-in", cert, "-noout", "-text")).stdout
    for ip in ips:
        # openssl spells IPv6 in full, upper-case: 0:0:0:0:0:0:0:1
        shown = ip if ":" not in ip else ipaddress.IPv6Address(ip).exploded.upper()
        shown = re.sub(r"(^|:)0+(?=[0-9A-F])", r"\1", shown)
        assert f"IP Address:{shown}" in text, text
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(dns)
    assert sorted(str(ip) for ip in san.get_values_for_type(x509.IPAddress)) == sorted(ips)
    cns = [a.value for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    # certbot's CSR has no CN: none, or a DNS name (lego's), never an address.
    assert cns in ([], dns[:1]), cns
    return leaf


DOC_URL = "https://127.0.0.1:8443"
DOC_ADDRESS = "10.0.0.5"


def console_block(heading: str, after: str = "") -> tuple[list[str], str]:
    """The commands (``$ `` lines, continued by ``\\``) of the one console block of the page's
    section ``heading`` (past the text ``after`` in it), and what it shows they print."""
    text = PAGE.read_text()
    section = text[text.index(f"\n{heading}\n") :]
    section = section[: section.index("\n## ", 1)]
    section = section[section.index(after) :]
    blocks = re.findall(r"```console\n(.*?)```", section, re.S)
    assert len(blocks) == 1, blocks
    commands: list[str] = []
    shown: list[str] = []
    continued = False
    for line in blocks[0].splitlines():
        if continued:
            commands[-1] += "\n" + line
        elif line.startswith("$ "):
            commands.append(line[2:])
        else:
            shown.append(line + "\n")
        continued = line.endswith("\\")
    return commands, "".join(shown)


def _certbot(
    server: CertctlServer, state: Path, port: int, *names: str, listen: str = "127.0.0.1"
) -> str:
    dirs = [f"--{kind}-dir={state / kind}" for kind in ("config", "work", "logs")]
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(server.ca)}
    certbot = (
        "certbot", "certonly", "--standalone", "--non-interactive", "--agree-tos",
        "--email", "ops@example.internal", "--server", f"{server.url}/acme/directory",
        "--http-01-address", listen, "--http-01-port", str(port),
    )  # fmt: skip
    return ok(run(*certbot, *dirs, *names, env=env, timeout=120)).stderr


def _lego(server: CertctlServer, home: Path, listen: str, domain: str) -> str:
    env = {**os.environ, "LEGO_CA_CERTIFICATES": str(server.ca)}
    lego = (
        "lego", "--path", home, "--server", f"{server.url}/acme/directory", "--accept-tos",
        "--email", "ops@example.internal", "--domains", domain,
        "--http", "--http.port", listen, "run",
    )  # fmt: skip
    return failed(run(*lego, env=env, timeout=120)).stderr


def test_certbot_gets_ip_address_certificates_and_lego_4_9_is_told_why_not(
    start_server: StartServer, tmp_path: Path
) -> None:
    port = free_port()
    acme = {"enabled": True, "issuer": ISSUER, "http-01-port": port, "allowed-names": ALLOWED}
    server, root = acme_server(start_server, tmp_path, acme)
    page = " ".join(PAGE.read_text().split())
    # docs/acme.md's "IP addresses" section: lego's refusal, quoted.
    quoted = 'rejectedIdentifier :: 10.0.0.5: an IP address; order it as {"type": "ip", "value":'
    assert quoted in page

    # Its certbot commands, verbatim but for the address, URL and port, in the directory of
    # the page's certbot walk-through (certctl-ca.crt there); openssl shows what it says.
    commands, shown = console_block("## IP addresses")
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(server.ca, user / "certctl-ca.crt")
    substitutions = ((DOC_URL, server.url), ("8080", str(port)), (DOC_ADDRESS, "127.0.0.1"))
    for written, _ in substitutions:
        assert written in "\n".join(commands), written
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for command in commands:
        for written, here in substitutions:
            command = command.replace(written, here)
        said = ok(run("bash", "-euo", "pipefail", "-c", command, cwd=user, env=env, timeout=120))
    # The last command, openssl, prints exactly what the page shows.
    assert said.stdout == shown.replace(DOC_ADDRESS, "127.0.0.1"), said.stdout
    certbot = user / "certbot"
    _checked(certbot / "config" / "live" / "ip" / "cert.pem", root, [], ["127.0.0.1"])
    # A DNS name and an address in one certificate: one authorization each, both http-01.
    _certbot(server, certbot, port, "--cert-name", "both", "-d", "localhost",
             "--ip-address", "127.0.0.1")  # fmt: skip
    both = certbot / "config" / "live" / "both" / "cert.pem"
    _checked(both, root, ["localhost"], ["127.0.0.1"])
    # IPv6: certctl fetches http://[::1]:PORT/.well-known/acme-challenge/TOKEN.
    _certbot(server, certbot, port, "--cert-name", "v6", "--ip-address", "::1", listen="::1")
    _checked(certbot / "config" / "live" / "v6" / "cert.pem", root, [], ["::1"])

    # lego 4.9 sends an address as a DNS identifier ({"type": "dns", "value": "127.0.0.1"}),
    # which RFC 8738 does not allow and certctl refuses (as Let's Encrypt does), saying why;
    # IPv6 alike. Nothing is ordered.
    for listen, address in ((f"127.0.0.1:{port}", "127.0.0.1"), (f"[::1]:{port}", "::1")):
        said = _lego(server, tmp_path / f"lego-{address}", listen, address)
        reason = (
            f"rejectedIdentifier :: {address}: an IP address; order it as "
            f'{{"type": "ip", "value": "{address}"}}'
        )
        assert reason in said, said
        assert "as lego 4.9 does" in said, said

    # What the audit log and the inventory say: the address is named.
    with server.client(server.admin_key) as api:
        orders = api.get("/api/v1/audit", params={"action": "acme.order.create"}).json()
        listed = api.get("/api/v1/certificates", params={"issuer": ISSUER}).json()["items"]
    details = sorted(event["detail"] for event in orders["items"])
    assert details == ["127.0.0.1", "::1", "localhost, 127.0.0.1"], details
    sans = sorted((item["sans"]["dns"], item["sans"]["ip"]) for item in listed)
    assert sans == [([], ["127.0.0.1"]), ([], ["::1"]), (["localhost"], ["127.0.0.1"])], sans
