"""``certctl http``'s choices: read from the options, checked, and made the bundle's plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from certctl.cli._common import KEY_TYPES, UsageProblem, is_stdin, option_value, split_names
from certctl.errors import InvalidRequest

if TYPE_CHECKING:
    from certctl.pki import CertificateAuthority
    from certctl.pki.bundle_plan import HttpBundlePlan

__all__ = [
    "KEY_TYPES",
    "PROFILES",
    "Choices",
    "bundle_plan",
    "check_combinations",
    "choices_from_options",
    "password_hint",
]


PROFILES = ("elasticsearch", "generic")


@dataclass
class Choices:
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


def check_combinations(
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


def choices_from_options(
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
) -> Choices:
    """Check every option on its own (cheap checks only: no key, no file read)."""
    from certctl.pki import KeyType, common_name_dn, parse_duration
    from certctl.pki.bundle_plan import validate_node_name

    if profile not in PROFILES:
        raise typer.BadParameter(
            f"{profile}: choose elasticsearch or generic", param_hint="--profile"
        )
    with option_value("--key-type"):
        KeyType.parse(key_type)
    if ca_key_type is not None:
        with option_value("--ca-key-type"):
            KeyType.parse(ca_key_type)
    with option_value("--validity"):
        parse_duration(validity)
    with option_value("--ca-validity"):
        parse_duration(ca_validity)
    if ca_cn is not None:
        with option_value("--ca-cn"):
            common_name_dn(ca_cn)
    with option_value("--shared-name"):
        validate_node_name(shared_name)
    seen: set[str] = set()
    for name in nodes:
        with option_value("--node"):
            validate_node_name(name)
        if name.lower() in seen:
            raise typer.BadParameter(f"{name}: node given twice", param_hint="--node")
        seen.add(name.lower())
    node_dns, common_dns = _split_by_node(dns, nodes, "--dns")
    node_ip, common_ip = _split_by_node(ip, nodes, "--ip")
    return Choices(
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
            with option_value():  # the message names the entry, as cert issue's does
                common += split_names([value])
            continue
        if target.strip() not in per_node:
            known = ", ".join(nodes) or "none; add --node NAME"
            raise typer.BadParameter(
                f"{value}: {target.strip()!r} is not a --node (nodes: {known})", param_hint=option
            )
        try:
            per_node[target.strip()] += split_names([item])
        except InvalidRequest as exc:
            # As the names' other errors read ("node es1: …", bundle_plan).
            raise UsageProblem(f"node {target.strip()}: {exc.detail}") from None
    if len(nodes) == 1:
        # One node: plain names are simply its names (not "every certificate" extras).
        per_node[nodes[0]] += common
        common = []
    return per_node, common


def password_hint(
    password_file: Path | None, password: str | None, *, env: str = "CERTCTL_PASSWORD"
) -> str:
    if is_stdin(password_file):
        return "the password given on standard input"
    if password_file is not None:
        return f"the password in the file {password_file.name}"
    if password is not None:
        return "the password given with --password"
    return f"the password from the {env} environment variable"


def bundle_plan(choices: Choices) -> HttpBundlePlan:
    from certctl.pki import KeyType, common_name_dn, parse_duration
    from certctl.pki.bundle_plan import HttpBundlePlan, NodeSpec

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
