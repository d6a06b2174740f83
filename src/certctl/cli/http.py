"""``certctl http``: the ``elasticsearch-certutil http`` bundle, as a wizard or from options."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from certctl.cli._common import (
    CA_KEY,
    is_stdin,
    load_ca_dir,
    not_stdout,
    read_password,
    split_commas,
    utcnow,
    warn,
)
from certctl.cli._stdin import STDIN_HELP, password_file_option

if TYPE_CHECKING:
    from rich.console import Console

    from certctl.pki import CertificateAuthority
    from certctl.pki.bundle import BundleResult, HttpBundlePlan

__all__ = ["http_command"]

KEY_TYPES = ("ec-p256", "ec-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096")
PROFILES = ("elasticsearch", "generic")


@dataclass
class _Choices:
    """Every answer of the wizard; filled from the options first, then edited by the wizard."""

    mode: str
    profile: str
    ca_dir: Path | None
    ca_password: bytes | None = field(repr=False)
    ca_password_hint: str
    ca_cn: str | None
    ca_validity: str
    ca_key_type: str | None
    nodes: list[str]
    node_dns: dict[str, list[str]]
    node_ip: dict[str, list[str]]
    common_dns: list[str]
    common_ip: list[str]
    shared: bool
    shared_name: str
    validity: str
    key_type: str
    pem: bool
    password: bytes | None = field(repr=False)
    password_hint: str
    p12_legacy: bool
    ca: CertificateAuthority | None = field(default=None, repr=False)


def _zip_out(value: str) -> str:
    """``--out``: refused when it is ``-`` or names a directory (a Typer callback).

    Typed ``str``, not ``Path``, so that a trailing ``/`` survives to be seen: ``--out
    bundle/``, as ``cert issue --out`` takes a directory, wrote a zip file called ``bundle``.
    """
    not_stdout(Path(value))
    if value.endswith(("/", os.sep)) or Path(value).is_dir():
        # str(Path(...)) drops the trailing separator, and the root stays "/" (not "//").
        example = str(Path(value) / "http-bundle.zip")
        raise typer.BadParameter(
            f"{value} is a directory: --out names the zip file to write, e.g. {example}"
        )
    return value


def http_command(
    out_arg: str = typer.Option(
        ...,
        "--out",
        "-o",
        callback=_zip_out,
        metavar="<path>",
        help="Zip file to write (it holds private keys: written 0600).",
    ),
    non_interactive: bool = typer.Option(
        False,
        "--non-interactive",
        help="Never prompt; take every choice from the options "
        "(the default when stdin is not a terminal).",
    ),
    csr: bool = typer.Option(
        False, "--csr", help="Keys and CSRs for an external CA instead of certificates."
    ),
    ca_dir: Path | None = typer.Option(
        None, "--ca", help="Sign with this CA directory (ca.crt, ca.key) instead of a new CA."
    ),
    ca_password_file: Path | None = typer.Option(
        None,
        "--ca-password-file",
        callback=password_file_option,
        help="With --ca: the password of its encrypted ca.key. Without: encrypt the new CA's "
        "ca/ca.key with this password and add ca/ca.p12 (or CERTCTL_CA_PASSWORD; "
        "without either, ca/ca.key is not encrypted)." + STDIN_HELP,
    ),
    ca_cn: str | None = typer.Option(
        None,
        "--ca-cn",
        help="Common name of the new CA (default: Elasticsearch HTTP CA or certctl HTTP CA).",
    ),
    ca_validity: str | None = typer.Option(
        None, "--ca-validity", help="Lifetime of the new CA (default: 5Y)."
    ),
    ca_key_type: str | None = typer.Option(
        None, "--ca-key-type", help="Key type of the new CA (default: as --key-type)."
    ),
    node: list[str] = typer.Option(
        [],
        "--node",
        metavar="NODE",
        help="Node name: a folder and a certificate each (repeatable).",
    ),
    dns: list[str] = typer.Option(
        [],
        "--dns",
        metavar="DNS",
        help="DNS name: NODE=NAME for one node, plain NAME for every certificate (repeatable; "
        "NODE=A,B or A,B gives several). A node given no names of its own gets its node name.",
    ),
    ip: list[str] = typer.Option(
        [],
        "--ip",
        metavar="IP",
        help="IP address: NODE=ADDR for one node, plain ADDR for every certificate (repeatable; "
        "NODE=A,B or A,B gives several).",
    ),
    shared: bool = typer.Option(
        False, "--shared", help="One certificate holding the names of every node."
    ),
    shared_name: str = typer.Option(
        "http", "--shared-name", help="Folder and common name of the shared certificate."
    ),
    validity: str = typer.Option("90D", "--validity", help="Certificate lifetime: 90D, 1Y …"),
    key_type: str = typer.Option(
        "ec-p256", "--key-type", help="ec-p256, ec-p384, ed25519, rsa-2048|3072|4096."
    ),
    pem: bool = typer.Option(
        False, "--pem", help="Write http.crt + http.key instead of a PKCS#12 http.p12."
    ),
    password_file: Path | None = typer.Option(
        None,
        "--password-file",
        callback=password_file_option,
        help="http.p12 password file (or CERTCTL_PASSWORD)." + STDIN_HELP,
    ),
    password: str | None = typer.Option(
        None, "--password", help="http.p12 password on the command line (demos only)."
    ),
    p12_legacy: bool = typer.Option(
        False, "--p12-legacy", help="PKCS#12 with 3DES/SHA-1 for old Java and Windows."
    ),
    profile: str = typer.Option(
        "elasticsearch",
        "--profile",
        help="elasticsearch (Elasticsearch + Kibana samples) or generic (nginx + curl samples).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing zip."),
) -> None:
    """Build a zip of HTTPS certificates, CA and sample configs (like elasticsearch-certutil http).

    On a terminal a wizard asks each question, offering the options' values as defaults.
    """
    out = Path(out_arg)  # a str until here: the callback saw a trailing "/"
    from certctl.files import OutputSet
    from certctl.pki.bundle import build_http_bundle

    if csr and ca_dir is not None:
        raise typer.BadParameter("--csr and --ca exclude each other (a CSR has no CA)")
    _check_combinations(
        csr=csr,
        ca_dir=ca_dir,
        ca_password_file=ca_password_file,
        ca_cn=ca_cn,
        ca_validity=ca_validity,
        ca_key_type=ca_key_type,
        pem=pem,
        password_file=password_file,
        password=password,
        p12_legacy=p12_legacy,
    )
    choices = _choices_from_options(
        csr=csr,
        ca_dir=ca_dir,
        ca_cn=ca_cn,
        ca_validity=ca_validity or "5Y",
        ca_key_type=ca_key_type,
        nodes=node,
        dns=dns,
        ip=ip,
        shared=shared,
        shared_name=shared_name,
        validity=validity,
        key_type=key_type,
        pem=pem,
        p12_legacy=p12_legacy,
        profile=profile,
    )
    # sys.stdin is None when the descriptor is closed (`<&-`, some service managers).
    wizard = not non_interactive and sys.stdin is not None and sys.stdin.isatty()
    for option, value in (
        ("--ca-password-file", ca_password_file),
        ("--password-file", password_file),
    ):
        if wizard and is_stdin(value):
            # Checked before anything is read: the wizard's answers and the password would
            # both come from the terminal.
            raise typer.BadParameter(
                f"{option} -: the wizard reads its answers from standard input; give the "
                "password in a file, pipe it in, or add --non-interactive"
            )
    choices.ca_password = read_password(ca_password_file, env="CERTCTL_CA_PASSWORD")
    choices.ca_password_hint = _password_hint(ca_password_file, None, env="CERTCTL_CA_PASSWORD")
    choices.password = read_password(password_file, password)
    choices.password_hint = _password_hint(password_file, password)
    # Refuse an existing zip before asking anything or generating keys.
    outputs = OutputSet(force=force)
    outputs.add(out, b"", secret=True)
    outputs.check()
    if wizard:
        choices = _Wizard(out).run(choices)
    else:
        if not choices.nodes and not choices.shared:
            # Checked here, where the options can be named (the bundle says only "no nodes"),
            # and before the password, the question a wizard would have asked first.
            no_wizard = "" if non_interactive else " (standard input is not a terminal: no wizard)"
            raise typer.BadParameter(
                f"give --node NAME (repeatable) or --shared with --dns/--ip{no_wizard}"
            )
        if choices.mode != "csr" and not choices.pem and choices.password is None:
            raise typer.BadParameter(
                "PKCS#12 output needs a password: --password-file or CERTCTL_PASSWORD "
                "(or use --pem)"
            )
        if choices.mode == "existing-ca" and choices.ca_dir is not None:
            choices.ca = load_ca_dir(
                choices.ca_dir, choices.ca_password, password_from_env=ca_password_file is None
            )
    plan = _plan(choices)
    result = build_http_bundle(plan, now=utcnow())
    for message in result.warnings:
        warn(message)
    if plan.mode == "new-ca" and plan.ca_password is None:
        # Scripts rely on the unencrypted default; say once what it means for the zip.
        warn(
            f"ca/ca.key in {out} is not encrypted: whoever gets the zip can issue trusted "
            "certificates; give --ca-password-file FILE (or CERTCTL_CA_PASSWORD) to encrypt it"
        )
    outputs = OutputSet(force=force)
    outputs.add(out, result.data, secret=True)
    outputs.commit()
    _print_summary(out, plan, result)


def _check_combinations(
    *,
    csr: bool,
    ca_dir: Path | None,
    ca_password_file: Path | None,
    ca_cn: str | None,
    ca_validity: str | None,
    ca_key_type: str | None,
    pem: bool,
    password_file: Path | None,
    password: str | None,
    p12_legacy: bool,
) -> None:
    """Refuse options that contradict each other or would be ignored without a word."""
    new_ca = [
        option
        for option, value in (
            ("--ca-cn", ca_cn),
            ("--ca-validity", ca_validity),
            ("--ca-key-type", ca_key_type),
        )
        if value is not None
    ]
    if new_ca and ca_dir is not None:
        raise typer.BadParameter(f"{new_ca[0]} describes a new CA; --ca signs with an existing one")
    if new_ca and csr:
        raise typer.BadParameter(f"{new_ca[0]} describes a new CA; --csr makes no CA")
    if csr and ca_password_file is not None:
        raise typer.BadParameter("--ca-password-file does not go with --csr (it makes no CA)")
    if password is not None and password_file is not None:
        raise typer.BadParameter("--password and --password-file exclude each other")
    keystore = [
        option
        for option, given in (
            ("--password", password is not None),
            ("--password-file", password_file is not None),
            ("--p12-legacy", p12_legacy),
        )
        if given
    ]
    # These options only shape http.p12; a PEM or CSR bundle would hold the keys unencrypted
    # although a password was given.
    if keystore and pem:
        raise typer.BadParameter(
            f"{keystore[0]} does not go with --pem (it applies to http.p12 only)"
        )
    if keystore and csr:
        raise typer.BadParameter(
            f"{keystore[0]} does not go with --csr (the keys of CSRs are not encrypted)"
        )


def _choices_from_options(
    *,
    csr: bool,
    ca_dir: Path | None,
    ca_cn: str | None,
    ca_validity: str,
    ca_key_type: str | None,
    nodes: list[str],
    dns: list[str],
    ip: list[str],
    shared: bool,
    shared_name: str,
    validity: str,
    key_type: str,
    pem: bool,
    p12_legacy: bool,
    profile: str,
) -> _Choices:
    """Check every option on its own (cheap checks only: no key, no file read)."""
    from certctl.pki import KeyType, common_name_dn, parse_duration
    from certctl.pki.bundle import validate_node_name

    if profile not in PROFILES:
        raise typer.BadParameter(
            f"{profile}: choose elasticsearch or generic", param_hint="--profile"
        )
    KeyType.parse(key_type)
    if ca_key_type is not None:
        KeyType.parse(ca_key_type)
    parse_duration(validity)
    parse_duration(ca_validity)
    if ca_cn is not None:
        common_name_dn(ca_cn)
    validate_node_name(shared_name)
    seen: set[str] = set()
    for name in nodes:
        validate_node_name(name)
        if name.lower() in seen:
            raise typer.BadParameter(f"{name}: node given twice", param_hint="--node")
        seen.add(name.lower())
    node_dns, common_dns = _split_by_node(dns, nodes, "--dns")
    node_ip, common_ip = _split_by_node(ip, nodes, "--ip")
    return _Choices(
        mode="csr" if csr else ("existing-ca" if ca_dir is not None else "new-ca"),
        profile=profile,
        ca_dir=ca_dir,
        ca_password=None,
        ca_password_hint="",
        ca_cn=ca_cn,
        ca_validity=ca_validity,
        ca_key_type=ca_key_type,
        nodes=list(nodes),
        node_dns=node_dns,
        node_ip=node_ip,
        common_dns=common_dns,
        common_ip=common_ip,
        shared=shared,
        shared_name=shared_name,
        validity=validity,
        key_type=key_type,
        pem=pem,
        password=None,
        password_hint="",
        p12_legacy=p12_legacy,
    )


def _split_by_node(
    values: list[str], nodes: list[str], option: str
) -> tuple[dict[str, list[str]], list[str]]:
    """Sort ``NODE=VALUE`` into per-node lists and plain ``VALUE`` into the common list.

    ``VALUE`` may be a comma-separated list (``NODE=a,b``, ``a,b``), split as ``cert issue``
    splits ``--dns``/``--ip``, so each item is checked, and named when bad, on its own.
    """
    per_node: dict[str, list[str]] = {name: [] for name in nodes}
    common: list[str] = []
    for value in values:
        target, sep, item = value.partition("=")
        if not sep:
            common += split_commas([value])
            continue
        if target.strip() not in per_node:
            known = ", ".join(nodes) or "none; add --node NAME"
            raise typer.BadParameter(
                f"{value}: {target.strip()!r} is not a --node (nodes: {known})", param_hint=option
            )
        per_node[target.strip()] += split_commas([item])
    if len(nodes) == 1:
        # One node: plain names are simply its names (not "every certificate" extras).
        per_node[nodes[0]] += common
        common = []
    return per_node, common


def _password_hint(
    password_file: Path | None, password: str | None, *, env: str = "CERTCTL_PASSWORD"
) -> str:
    if is_stdin(password_file):
        return "the password given on standard input"
    if password_file is not None:
        return f"the password in the file {password_file.name}"
    if password is not None:
        return "the password given with --password"
    return f"the password from the {env} environment variable"


def _plan(choices: _Choices) -> HttpBundlePlan:
    from certctl.pki import KeyType, common_name_dn, parse_duration
    from certctl.pki.bundle import HttpBundlePlan, NodeSpec

    key_type = KeyType.parse(choices.key_type)
    nodes = tuple(
        NodeSpec(
            name,
            tuple(choices.node_dns.get(name, ())),
            tuple(choices.node_ip.get(name, ())),
        )
        for name in choices.nodes
    )
    return HttpBundlePlan(
        mode=choices.mode,  # type: ignore[arg-type]  # one of BUNDLE_MODES, set above
        nodes=nodes,
        shared=choices.shared,
        shared_name=choices.shared_name,
        common_dns=tuple(choices.common_dns),
        common_ip=tuple(choices.common_ip),
        validity=parse_duration(choices.validity),
        key_type=key_type,
        output_format="pem" if choices.pem else "p12",
        password=choices.password,
        password_hint=choices.password_hint,
        p12_legacy=choices.p12_legacy,
        profile=choices.profile,  # type: ignore[arg-type]  # checked against PROFILES
        ca=choices.ca,
        ca_subject=common_name_dn(choices.ca_cn) if choices.ca_cn else None,
        ca_validity=parse_duration(choices.ca_validity),
        ca_key_type=KeyType.parse(choices.ca_key_type) if choices.ca_key_type else key_type,
        # An existing CA's password only opened its key (choices.ca), above.
        ca_password=choices.ca_password if choices.mode == "new-ca" else None,
        ca_password_hint=choices.ca_password_hint,
    )


def _starts_encrypted(key_path: Path) -> bool:
    # The PEM label is in the first line: read that much, not a whole (possibly huge) file.
    with key_path.open("rb") as fh:
        return b"ENCRYPTED" in fh.read(4096)


def _print_summary(out: Path, plan: HttpBundlePlan, result: BundleResult) -> None:
    from certctl.pki import display_dn

    echo = typer.echo
    what = "CSRs and keys" if plan.mode == "csr" else "certificates and keys"
    echo(f"wrote {out} (mode 0600, {len(result.entries)} files): {what}")
    if result.ca_folder and result.ca_certificate is not None:
        ca_cert = result.ca_certificate
        echo(
            f"  {result.ca_folder:<28} new CA {display_dn(ca_cert.subject)}, "
            f"valid until {ca_cert.not_valid_after_utc:%Y-%m-%d}"
        )
        if plan.ca_password:
            # CERTCTL_CA_PASSWORD alone encrypts: say so, or the key's password is a surprise.
            echo(f"  {'':<28} ca.key and ca.p12 encrypted with {plan.ca_password_hint}")
    for node in result.nodes:
        names = ", ".join([*node.sans.dns, *(str(a) for a in node.sans.ip)])
        if node.certificate is not None:
            until = f", valid until {node.certificate.not_valid_after_utc:%Y-%m-%d}"
        else:
            until = ", to be signed"
        files = next(f for f in node.files if f.startswith("http."))
        echo(f"  {node.folder:<28} {files}: {names}{until}")
    if plan.mode == "csr":  # no CA here: the external one signs, and its certificate is theirs
        echo(f"  {result.client_folder:<28} sample client settings (add your CA's certificate)")
    else:
        echo(f"  {result.client_folder:<28} CA certificate and sample client settings")
    echo("next steps:")
    # The path as written (quoted for a shell): its bare name failed from another directory.
    echo(
        f"  1. unzip {shlex.quote(str(out))}; every folder has a README.txt saying what goes where"
    )
    step = 2
    if plan.mode == "csr":
        echo(f"  {step}. have your CA sign each http.csr and save the result as http.crt")
        step += 1
    server = "Elasticsearch node" if plan.profile == "elasticsearch" else "server"
    if plan.shared:  # one folder holds the certificate every node serves
        echo(
            f"  {step}. install {result.nodes[0].folder} on every {server}; add the sample settings"
        )
    else:
        echo(f"  {step}. install each node folder on its {server}; add the sample settings")
    if plan.mode == "csr":
        echo(f"  {step + 1}. give clients the certificate of the CA that signed the CSRs")
    else:
        echo(f"  {step + 1}. give clients the CA certificate in {result.client_folder}")
    if result.ca_folder:
        what = "ca/ca.key and ca/ca.p12" if plan.ca_password else "ca/ca.key"
        echo(f"  {step + 2}. store {what} safely offline, then delete the zip")


class _Wizard:
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

    def run(self, c: _Choices) -> _Choices:
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
            c.validity = self._ask_valid("Certificate validity", c.validity, _check_duration)
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

    def _ask_existing_ca(self, c: _Choices) -> None:
        from certctl.errors import CertctlError

        # The password from --ca-password-file or CERTCTL_CA_PASSWORD is tried once, on an
        # encrypted key only (it may be meant for a new CA): reused after failing, it
        # trapped the wizard asking for the directory again and again.
        given = c.ca_password
        while True:
            answer = self.ask("CA directory", str(c.ca_dir) if c.ca_dir else "")
            if not answer:
                self.error("give the directory holding ca.crt and ca.key")
                continue
            directory = Path(answer).expanduser()
            key_path = directory / CA_KEY
            encrypted = key_path.is_file() and _starts_encrypted(key_path)
            password = given if encrypted else None
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

    def _ask_new_ca(self, c: _Choices) -> None:
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
        from certctl.errors import CertctlError
        from certctl.pki import SubjectAltNames

        while True:
            dns_answer = _split(self.ask(f"DNS names for {what} (comma-separated)", ",".join(dns)))
            try:
                SubjectAltNames.parse(dns=dns_answer)
            except CertctlError as exc:
                self.error(exc.detail)
                continue
            break
        while True:
            ip_answer = _split(
                self.ask(f"IP addresses for {what} (comma-separated)", ",".join(ips))
            )
            try:
                SubjectAltNames.parse(ip=ip_answer)
            except CertctlError as exc:
                self.error(exc.detail)
                continue
            break
        return dns_answer, ip_answer

    def _ask_shared(self, c: _Choices) -> None:
        from certctl.pki.bundle import validate_node_name

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

    def _ask_nodes(self, c: _Choices) -> None:
        from certctl.errors import CertctlError
        from certctl.pki.bundle import validate_node_name

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

    def _ask_format(self, c: _Choices) -> None:
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

    def _confirm_plan(self, c: _Choices) -> _Choices:
        from certctl.pki.bundle import plan_certificates

        targets = plan_certificates(_plan(c))
        self.console.print()
        what = {
            "csr": "keys and CSRs for an external CA",
            "new-ca": f"a new CA ({c.ca_cn}, {c.ca_validity}) and certificates",
            "existing-ca": f"certificates signed by the CA in {c.ca_dir}",
        }[c.mode]
        self.console.print(f"About to write {what}:", markup=False)
        for target in targets:
            names = ", ".join([*target.sans.dns, *(str(a) for a in target.sans.ip)])
            self.console.print(f"  {target.name}: {names}", markup=False)
        if not self.confirm(f"Write {self.out}?", True):
            raise typer.Abort()
        return c


def _check_duration(text: str) -> timedelta:
    from certctl.pki import parse_duration

    return parse_duration(text)


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.replace(" ", ",").split(",") if item.strip()]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _is_dns_name(name: str) -> bool:
    from certctl.errors import InvalidRequest
    from certctl.pki.names import validate_dns_name

    try:
        validate_dns_name(name, allow_wildcard=False)
    except InvalidRequest:
        return False
    return True
