"""``certctl http``: the ``elasticsearch-certutil http`` bundle, as a wizard or from options."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from certctl.cli._common import (
    KEY_TYPES_HELP,
    is_stdin,
    load_ca_dir,
    not_stdout,
    option_value,
    read_password,
    utcnow,
    warn,
)
from certctl.cli._stdin import STDIN_HELP, password_file_option

__all__ = ["http_command"]


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
    ctx: typer.Context,
    out_arg: str = typer.Option(
        ...,
        "--out",
        "-o",
        callback=_zip_out,
        metavar="FILE",
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
    key_type: str = typer.Option("ec-p256", "--key-type", help=f"Key type: {KEY_TYPES_HELP}."),
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
    from certctl.cli._http_choices import (
        bundle_plan,
        check_combinations,
        choices_from_options,
        password_hint,
    )
    from certctl.cli._http_summary import print_summary
    from certctl.cli._http_wizard import Wizard
    from certctl.files import OutputSet
    from certctl.pki.bundle import build_http_bundle

    if csr and ca_dir is not None:
        raise typer.BadParameter("--csr and --ca exclude each other (a CSR has no CA)")
    check_combinations(
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
    choices = choices_from_options(
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
    choices.ca_password_hint = password_hint(ca_password_file, None, env="CERTCTL_CA_PASSWORD")
    choices.password = read_password(password_file, password)
    choices.password_hint = password_hint(password_file, password)
    # Refuse an existing zip before asking anything or generating keys.
    outputs = OutputSet(force=force)
    outputs.add(out, b"", secret=True)
    outputs.check()
    if wizard:
        choices = Wizard(out).run(choices)
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
        if choices.mode == "new-ca":
            _check_new_ca_outlives(
                choices.validity,
                choices.ca_validity,
                validity_given=_given(ctx, "validity"),
                ca_validity_given=ca_validity is not None,
            )
        if choices.mode == "existing-ca" and choices.ca_dir is not None:
            choices.ca = load_ca_dir(
                choices.ca_dir, choices.ca_password, password_from_env=ca_password_file is None
            )
    plan = bundle_plan(choices)
    if not wizard:
        from certctl.pki.bundle_plan import plan_certificates

        # Every choice came from the options (the wizard checks each answer as it is
        # given): a name or node the plan refuses is a usage error, before any key is made.
        with option_value():
            plan_certificates(plan)
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
    print_summary(out, plan, result)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given, not left at its default."""
    from typer._click.core import ParameterSource

    return ctx.get_parameter_source(name) is not ParameterSource.DEFAULT


def _check_new_ca_outlives(
    validity: str, ca_validity: str, *, validity_given: bool, ca_validity_given: bool
) -> None:
    """Name both options (the bundle's "CA validity 1825D is shorter …" named neither).

    A value left at its default is called one, with the option that changes it: `--ca-validity
    60D` alone was refused as if the user had given "--validity 90D".
    """
    from certctl.errors import CertctlError
    from certctl.pki import parse_duration

    try:
        longer = parse_duration(validity) > parse_duration(ca_validity)
    except CertctlError:
        return  # a bad duration is named when the plan is made, as before
    if not longer:
        return
    leaf = f"--validity {validity}" if validity_given else f"the default validity {validity}"
    ca = f"--ca-validity {ca_validity}" + ("" if ca_validity_given else ", the default")
    fix = f"give --ca-validity {validity} or more"
    if not validity_given:
        fix = f"give --validity {ca_validity} or less, or --ca-validity {validity} or more"
    raise typer.BadParameter(
        f"{leaf} outlives the new CA ({ca}): a CA must outlive the certificates it signs; {fix}"
    )
