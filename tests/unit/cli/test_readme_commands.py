"""The README's offline command docs against the commands: its examples run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import typer

from certctl.cli._app import app
from tests.unit.cli.test_http import _Terminal

README = Path(__file__).resolve().parents[3] / "README.md"
HTTP_SECTION = "### Elasticsearch / Kibana: `certctl http`"


def _http_section() -> str:
    text = README.read_text()
    section = text[text.index(HTTP_SECTION) :]
    return section[: section.index("\n## ")]


def _top_folders(path: Path) -> set[str]:
    return {name.split("/")[0] for name in zipfile.ZipFile(path).namelist()}


def test_the_http_example_runs_as_written_and_the_folders_are_those_it_names(
    tmp_path: Path,
) -> None:
    # The example used the password files pw and ca-pw without saying to create them: pasted
    # as it stood, it failed with "pw: password file not found".
    (block,) = re.findall(r"```sh\n(.*?)```", _http_section(), re.S)
    # The wizard line asks on a terminal; the rest is pasted as it is.
    script = "\n".join(line for line in block.splitlines() if "# interactive" not in line)
    generic = script.replace("--out es-http.zip", "--profile generic --out generic.zip")
    assert generic != script
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for each in (script, generic):
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", each],
            cwd=tmp_path,
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
    assert _top_folders(tmp_path / "es-http.zip") == {"ca", "elasticsearch", "kibana"}
    assert _top_folders(tmp_path / "generic.zip") == {"ca", "es-1", "es-2", "client"}
    # The README said only "nginx and curl samples instead", as if in elasticsearch/, kibana/.
    text = " ".join(_http_section().split())
    said = re.search(r"`--profile generic` writes ([^;]*);", text)
    assert said is not None
    assert "`<node>/`" in said.group(1)
    assert "`client/`" in said.group(1)


def test_the_http_wizard_line_starts_the_wizard(tmp_path: Path) -> None:
    # "certctl http   # interactive" was refused at once: Missing option '--out' / '-o'.
    (block,) = re.findall(r"```sh\n(.*?)```", _http_section(), re.S)
    (line,) = [line for line in block.splitlines() if "# interactive" in line]
    argv = shlex.split(line.split("#", 1)[0])
    assert argv[:2] == ["certctl", "http"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env.update(TERM="xterm", NO_COLOR="1", COLUMNS="200", LINES="50")
    command = [sys.executable, "-c", "from certctl.cli.main import main; main()", *argv[1:]]
    term = _Terminal(command, tmp_path, env)
    try:
        term.expect("Which server will use the certificates?")
    finally:
        term.kill()
        term.wait(5)


def test_the_crl_create_row_names_every_option() -> None:
    # The row left out --reason, --next-update, --der and --ca-password-file.
    (row,) = [line for line in README.read_text().splitlines() if "| `certctl crl create" in line]
    group = typer.main.get_command(app)
    command = group.commands["crl"].commands["create"]  # type: ignore[attr-defined]
    # --force is said once for every command that writes ("never overwritten without --force").
    options = {
        opt
        for param in command.params
        for opt in param.opts
        if opt.startswith("--") and opt not in ("--help", "--force")
    }
    assert sorted(options - set(re.findall(r"--[a-z-]+", row))) == []


def test_the_own_certificate_example_fills_the_secret_the_yaml_names(tmp_path: Path) -> None:
    # The README named certificate: {secretName: X} and <data-dir>/secrets/X/ but showed no
    # command filling it, nor where the key goes in the spec: its example now does both, and
    # the certificate it makes covers the names its YAML gives (else the status warns).
    import yaml
    from cryptography import x509

    text = README.read_text()
    section = text[text.index("**Your own certificate**") :]
    section = section[: section.index("\n`certificate: {secretName: X}`")]
    (script,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    (spec,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    tls = yaml.safe_load(spec)["tls"]
    secret = tmp_path / "certctl-data" / "secrets" / tls["certificate"]["secretName"]
    assert sorted(p.name for p in secret.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    assert (secret / "tls.key").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((secret / "tls.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have = {str(n.value) for n in sans}
    wanted = {
        str(v) for name in tls["selfSignedCertificate"]["subjectAltNames"] for v in name.values()
    }
    assert wanted <= have
