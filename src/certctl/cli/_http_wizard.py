"""``certctl http``'s wizard: each question explained, the options' values as defaults."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from certctl.cli._common import CA_KEY, load_ca_dir, refuse_expired_ca, split_names
from certctl.cli._http_choices import KEY_TYPES, PROFILES, Choices, bundle_plan

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Wizard"]


def _starts_encrypted(key_path: Path) -> bool:
    # The PEM label is in the first line: read that much, not a whole (possibly huge) file.
    with key_path.open("rb") as fh:
        return b"ENCRYPTED" in fh.read(4096)


class _Offered(str):
    """A prompt's default, told apart by identity from the same text typed (``ask_or_take``)."""

    __slots__ = ()


class Wizard:
    """The interactive questions, each with a short explanation, defaults from the options."""

    def __init__(self, out: Path) -> None:
        from rich.console import Console

        self.out = out
        self.console: Console = Console(highlight=False)

    def explain(self, text: str) -> None:
        self.console.print()
        # Short lines read better than full-width paragraphs on wide terminals.
        self.console.print(text, style="dim", width=min(self.console.width, 88))

    def ask(self, question: str, default: str, *, choices: list[str] | None = None) -> str:
        from rich.prompt import Prompt

        try:
            if default:
                return Prompt.ask(
                    question, default=default, choices=choices, console=self.console
                ).strip()
            return Prompt.ask(
                question, default="", show_default=False, choices=choices, console=self.console
            ).strip()
        except EOFError:
            raise typer.Abort() from None

    def ask_or_take(self, question: str, offered: str) -> str | None:
        """``ask``, but None when Enter took ``offered``, told apart from the same text typed."""
        from rich.prompt import Prompt

        # Rich returns the default object itself for an empty line: a str of our own class is
        # recognised by identity, where "es1" typed and Enter on "(es1)" compare equal.
        marker = _Offered(offered)
        try:
            answer = Prompt.ask(
                question, default=marker, show_default=bool(offered), console=self.console
            )
        except EOFError:
            raise typer.Abort() from None
        return None if answer is marker else answer.strip()

    def confirm(self, question: str, default: bool) -> bool:
        from rich.prompt import Confirm

        try:
            return Confirm.ask(question, default=default, console=self.console)
        except EOFError:
            raise typer.Abort() from None

    def secret(self, question: str) -> str:
        from rich.prompt import Prompt

        try:
            return Prompt.ask(question, password=True, console=self.console)
        except EOFError:
            raise typer.Abort() from None

    def error(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[red]{escape(message)}[/red]")

    def run(self, c: Choices) -> Choices:
        from rich.markup import escape

        self.console.print(
            "[bold]certctl http[/bold]: a zip with everything HTTPS needs - a certificate and key "
            "per node (or CSRs for your own CA), the CA certificate for clients, READMEs and "
            f"sample configurations. It will be written to [bold]{escape(str(self.out))}[/bold]."
        )
        self.explain(
            "elasticsearch: files and samples for Elasticsearch's HTTP layer and Kibana, as "
            "elasticsearch-certutil http makes them. generic: any HTTPS server, with nginx and "
            "curl samples."
        )
        c.profile = self.ask(
            "Which server will use the certificates?", c.profile, choices=[*PROFILES]
        )
        self.explain(
            "Answer yes if an external or corporate CA must sign the certificates: the zip then "
            "holds a private key and a certificate signing request (CSR) per node, and no CA. "
            "Answer no to sign them here with a new or an existing certctl CA."
        )
        c.mode = "csr" if self.confirm("Generate CSRs for an external CA?", c.mode == "csr") else ""
        if c.mode != "csr":
            self.explain(
                "A new CA is simplest: it is created now and included under ca/ in the zip. "
                "Use an existing CA directory (ca.crt + ca.key from 'certctl ca create' or an "
                "earlier bundle's ca/) when your clients already trust it."
            )
            if self.confirm("Use an existing CA?", c.mode == "existing-ca"):
                c.mode = "existing-ca"
                self._ask_existing_ca(c)
            else:
                c.mode = "new-ca"
                c.ca_dir, c.ca = None, None
                self._ask_new_ca(c)
        self.explain(
            "One certificate per node is safer (a stolen key exposes one node) and names only "
            "that node. One shared certificate holding every name is simpler, e.g. behind a "
            "load balancer."
        )
        c.shared = not self.confirm("Generate a certificate per node?", not c.shared)
        if c.shared:
            self._ask_shared(c)
        else:
            self._ask_nodes(c)
        if c.mode != "csr":
            self.explain(
                "How long the certificates stay valid: 90D, 1Y, 2160h … Short lifetimes limit the "
                "damage of a leaked key but need renewal; under 60 days draws a warning."
            )
            check: Callable[[str], object] = _check_duration
            if c.mode == "new-ca":  # refused here, not after the passwords, at the end
                check = functools.partial(_check_within, ca_validity=c.ca_validity)
            c.validity = self._ask_valid("Certificate validity", c.validity, check)
        self.explain(
            "ec-p256 is fast and accepted by every current TLS client; rsa-2048 or rsa-3072 suit "
            "very old clients; browsers refuse ed25519 certificates."
        )
        c.key_type = self.ask("Key type", c.key_type, choices=[*KEY_TYPES])
        if c.mode != "csr":
            self._ask_format(c)
        return self._confirm_plan(c)

    def _ask_valid(self, question: str, default: str, check: Callable[[str], object]) -> str:
        from certctl.errors import CertctlError

        while True:
            answer = self.ask(question, default)
            try:
                check(answer)
            except CertctlError as exc:
                self.error(exc.detail)
                continue
            return answer

    def _ask_existing_ca(self, c: Choices) -> None:
        from certctl.errors import CertctlError

        # The password from --ca-password-file or CERTCTL_CA_PASSWORD is tried once, on an
        # encrypted key only (it may be meant for a new CA): reused after failing, it
        # trapped the wizard asking for the directory again and again.
        given = c.ca_password
        last = str(c.ca_dir) if c.ca_dir else ""
        while True:
            # A refused directory is offered again: after a mistyped password, Enter retries.
            answer = last = self.ask("CA directory", last)
            if not answer:
                self.error("give the directory holding ca.crt and ca.key")
                continue
            directory = Path(answer).expanduser()
            key_path = directory / CA_KEY
            encrypted = key_path.is_file() and _starts_encrypted(key_path)
            password = given if encrypted else None
            try:
                # Before its key's password is asked for (or the given one is spent on it):
                # the CA could not sign anyway.
                refuse_expired_ca(directory)
            except CertctlError as exc:
                self.error(exc.detail)
                continue
            if encrypted and password is None:
                password = self.secret(f"Password of {key_path}").encode() or None
            try:
                c.ca = load_ca_dir(directory, password)
            except CertctlError as exc:
                self.error(exc.detail)
                if password is given:
                    given = None
                continue
            c.ca_dir, c.ca_password = directory, password
            from certctl.pki import display_dn

            self.console.print(
                f"using CA {display_dn(c.ca.certificate.subject)}, valid until "
                f"{c.ca.certificate.not_valid_after_utc:%Y-%m-%d}"
            )
            return

    def _ask_new_ca(self, c: Choices) -> None:
        from certctl.pki import common_name_dn

        default_cn = "Elasticsearch HTTP CA" if c.profile == "elasticsearch" else "certctl HTTP CA"
        self.explain("The CA's name, shown to users inspecting the certificates.")
        c.ca_cn = self._ask_valid("CA common name", c.ca_cn or default_cn, common_name_dn)
        self.explain(
            "The CA must outlive the certificates it signs; renewing it means every client "
            "must trust the new one. 5Y is a common choice."
        )
        c.ca_validity = self._ask_valid("CA validity", c.ca_validity, _check_duration)
        if c.ca_password is not None:
            self.console.print(f"ca/ca.key will be encrypted with {c.ca_password_hint}.")
            return
        self.explain(
            "A password encrypts the CA's private key ca/ca.key (and protects ca/ca.p12, "
            "which elasticsearch-certutil reads); it is not stored in the zip. Without one, "
            "whoever gets the zip can issue certificates your clients trust."
        )
        while True:
            first = self.secret("Password for ca/ca.key (empty: not encrypted)")
            if not first:
                self.error("ca/ca.key will NOT be encrypted")
                return
            if self.secret("Repeat the password") != first:
                self.error("the passwords differ; try again")
                continue
            c.ca_password = first.encode()
            c.ca_password_hint = "the CA password entered in the certctl http wizard"
            return

    def _ask_names(self, what: str, dns: list[str], ips: list[str]) -> tuple[list[str], list[str]]:
        return self._ask_list("DNS names", what, dns), self._ask_list("IP addresses", what, ips)

    def _ask_list(self, kind: str, what: str, default: list[str]) -> list[str]:
        """DNS names or IP addresses: comma-separated, or one per line up to an empty line.

        elasticsearch-certutil http asks for one name per line: a list typed (or pasted) that
        way went, after its first line, into the next questions. The default taken as offered
        (Enter) ends the list at once, as does a first answer left empty.
        """
        from certctl.errors import CertctlError
        from certctl.pki import SubjectAltNames

        field = "dns" if kind == "DNS names" else "ip"
        offered = ",".join(default)
        question = f"{kind} for {what}, comma-separated or one per line"
        items: list[str] = []
        # None: Enter on the offered list. The same list typed may be the first of several
        # lines ("es1", then "es1.example.com"): only Enter ends the list at once.
        answer = self.ask_or_take(question, offered)
        while True:
            try:
                line = _names(offered if answer is None else answer)
                SubjectAltNames.parse(**{field: [*items, *line]})
            except CertctlError as exc:
                self.error(exc.detail)  # this line only: the lines before it stay
                if not items:
                    answer = self.ask_or_take(question, offered)
                    continue
            else:
                if not items and (not line or answer is None):
                    return line  # nothing, or the offered list taken: no more lines asked
                items += line
            answer = self.ask(f"More {kind} for {what} (empty line: done)", "")
            if not answer:
                return items

    def _ask_shared(self, c: Choices) -> None:
        from certctl.pki.bundle_plan import validate_node_name

        self.explain("The shared certificate's name: its folder in the zip and its common name.")
        c.shared_name = self._ask_valid("Certificate name", c.shared_name, validate_node_name)
        dns = [*c.common_dns]
        ips = [*c.common_ip]
        for name in c.nodes:
            dns += c.node_dns.get(name) or ([] if c.node_ip.get(name) else [name])
            ips += c.node_ip.get(name, [])
        self.explain(
            "Every host name and IP address clients use to reach the servers; a client checks "
            "the name in its URL against this list."
        )
        while True:
            dns_list, ip_list = self._ask_names("the certificate", _unique(dns), _unique(ips))
            if dns_list or ip_list:
                break
            self.error("give at least one DNS name or IP address")
        c.nodes, c.node_dns, c.node_ip = [], {}, {}
        c.common_dns, c.common_ip = dns_list, ip_list

    def _ask_nodes(self, c: Choices) -> None:
        from certctl.errors import CertctlError
        from certctl.pki.bundle_plan import validate_node_name

        self.explain(
            "Each node gets a folder and a certificate. Give the host names and IP addresses "
            "clients use to reach it; a client checks the name in its URL against them."
        )
        old_nodes = list(c.nodes)
        nodes: list[str] = []
        node_dns: dict[str, list[str]] = {}
        node_ip: dict[str, list[str]] = {}
        index = 0
        while True:
            default = old_nodes[index] if index < len(old_nodes) else ""
            name = self.ask(f"Node #{index + 1} name", default or ("node-1" if index == 0 else ""))
            try:
                validate_node_name(name)
            except CertctlError as exc:
                self.error(exc.detail)
                continue
            if name.lower() in {n.lower() for n in nodes}:
                self.error(f"{name}: node given twice")
                continue
            own_dns = c.node_dns.get(name, [])
            own_ip = c.node_ip.get(name, [])
            if not own_dns and not own_ip and _is_dns_name(name):
                own_dns = [name]
            dns_list, ip_list = self._ask_names(name, own_dns, own_ip)
            if not dns_list and not ip_list and not (c.common_dns or c.common_ip):
                self.error(f"{name}: give at least one DNS name or IP address")
                continue
            nodes.append(name)
            node_dns[name], node_ip[name] = dns_list, ip_list
            index += 1
            if not self.confirm("Add another node?", index < len(old_nodes)):
                break
        c.nodes, c.node_dns, c.node_ip = nodes, node_dns, node_ip
        if c.common_dns or c.common_ip:
            self.explain("Names added to every node's certificate (from --dns/--ip without NODE=).")
            c.common_dns, c.common_ip = self._ask_names("every node", c.common_dns, c.common_ip)

    def _ask_format(self, c: Choices) -> None:
        self.explain(
            "p12: one password-protected http.p12 with key, certificate and CA chain "
            "(Elasticsearch and Java read it directly). pem: http.crt + http.key files "
            "(nginx, Apache, HAProxy, Go, Node)."
        )
        default = "pem" if c.pem or c.profile == "generic" else "p12"
        c.pem = self.ask("Output format", default, choices=["p12", "pem"]) == "pem"
        if c.pem:
            return
        if c.password is None:
            self.explain("The password protects http.p12; it is not stored in the zip.")
            while True:
                first = self.secret("Password for http.p12")
                if not first:
                    self.error("the password must not be empty")
                    continue
                if self.secret("Repeat the password") != first:
                    self.error("the passwords differ; try again")
                    continue
                c.password = first.encode()
                c.password_hint = "the password entered in the certctl http wizard"
                break
        else:
            self.console.print(f"http.p12 is protected by {c.password_hint}.")
        self.explain(
            "Legacy encryption (3DES, SHA-1) is only for Java before 8u301/11.0.12 and old "
            "Windows; everything else reads the default AES-256 keystores."
        )
        c.p12_legacy = self.confirm("Use legacy PKCS#12 encryption?", c.p12_legacy)

    def _confirm_plan(self, c: Choices) -> Choices:
        from certctl.pki.bundle_plan import plan_certificates

        targets = plan_certificates(bundle_plan(c))
        self.console.print()
        # The answers given since the names, so that a mistyped validity shows before writing.
        files = (
            "http.crt + http.key" if c.pem else "legacy http.p12" if c.p12_legacy else "http.p12"
        )
        each = f"{c.validity}, {c.key_type}, {files}"
        what = {
            "csr": f"{c.key_type} keys and CSRs for an external CA",
            "new-ca": f"a new CA ({c.ca_cn}, {c.ca_validity}) and certificates ({each})",
            "existing-ca": f"certificates ({each}) signed by the CA in {c.ca_dir}",
        }[c.mode]
        self.console.print(f"About to write {what}:", markup=False)
        for target in targets:
            names = ", ".join([*target.sans.dns, *(str(a) for a in target.sans.ip)])
            self.console.print(f"  {target.name}: {names}", markup=False)
        if not self.confirm(f"Write {self.out}?", True):
            raise typer.Abort()
        return c


def _check_within(text: str, ca_validity: str) -> timedelta:
    """A certificate lifetime a new CA of ``ca_validity`` outlives (else refused at the end)."""
    from certctl.errors import InvalidRequest

    lifetime = _check_duration(text)
    if lifetime > _check_duration(ca_validity):
        raise InvalidRequest(
            f"{text} outlives the new CA, valid {ca_validity}: a CA must outlive the "
            "certificates it signs (give a shorter validity, or start again with a longer one "
            "for the CA)"
        )
    return lifetime


def _check_duration(text: str) -> timedelta:
    from certctl.pki import parse_duration

    return parse_duration(text)


def _names(answer: str) -> list[str]:
    # Commas separate names, as in --dns a,b; a space is refused naming the entry (it split
    # names silently before, where --dns "a b" was refused). An empty answer is no names.
    return split_names([answer]) if answer.strip() else []


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _is_dns_name(name: str) -> bool:
    from certctl.errors import InvalidRequest
    from certctl.pki.dns_names import validate_dns_name

    try:
        validate_dns_name(name, allow_wildcard=False)
    except InvalidRequest:
        return False
    return True
