"""docs/configuration.md against ServerConfig: every key, its default and its variable."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from certctl.server import config as config_module
from certctl.server.config import ServerConfig

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key as written in YAML, default) for every leaf key, sections expanded."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        annotation = field.annotation
        section = next(
            (
                t
                for t in (annotation, *getattr(annotation, "__args__", ()))
                if isinstance(t, type) and issubclass(t, BaseModel)
            ),
            None,
        )
        if section is not None and section.__name__ != "ClientCertMappingConfig":
            if field.default is None:  # an optional section: documented as a key of its own
                yield key, None
            yield from _keys(section, key + ".")
        elif field.is_required():
            yield key, None
        else:
            yield key, field.get_default(call_default_factory=True)


def _rows() -> dict[str, list[str]]:
    """Each row of the reference's key tables, by its key: [default, env var, meaning]."""
    rows: dict[str, list[str]] = {}
    in_key_table = False
    for line in REFERENCE.read_text().splitlines():
        if not line.startswith("|"):
            in_key_table = False
        elif line == "| key | default | env var | meaning |":
            in_key_table = True
        # Only rows of a key table count: a key's row pasted into another table (the flags
        # table) renders there as a flag that does not exist, its meaning cut off.
        match = re.match(r"\| `([a-z][a-z0-9.-]*)` \|(.*)\|$", line)
        if match and in_key_table:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    return rows


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list):
        return "[]"
    return str(default)


def test_every_key_is_documented_with_its_default() -> None:
    rows = _rows()
    keys = dict(_keys(ServerConfig))
    assert sorted(set(keys) - set(rows)) == [], "keys missing from docs/configuration.md"
    assert sorted(set(rows) - set(keys)) == [], "documented keys the server does not read"
    for key, default in keys.items():
        cell = rows[key][0]
        if default is None:
            assert cell.startswith(("unset", "required")), (key, cell)
        else:
            assert f"`{_shown(default)}`" in cell or f'`"{default}"`' in cell, (key, cell)


def test_every_environment_variable_is_documented_on_its_key() -> None:
    rows = _rows()
    env_keys = config_module._ENV_KEYS
    for variable, path in env_keys.items():
        assert rows[".".join(path)][1] == f"`{variable}`", variable
    with_env = {".".join(path) for path in env_keys.values()}
    for key, cells in rows.items():
        if key not in with_env:
            assert cells[1] == "—", f"{key}: the server reads no variable for it"


def test_serve_help_names_the_variable_of_each_flag() -> None:
    # README: `CERTCTL_LISTEN=127.0.0.1:9443 make run`; `certctl serve --help` named no
    # variable but CERTCTL_CONFIG, so a flag's variable was only found in the docs.
    from typer.main import get_command

    from certctl.cli._app import app

    serve = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    helps = {opt: " ".join((p.help or "").split()) for p in serve.params for opt in p.opts}
    flags = {
        "--data-dir": "data-dir",
        "--listen": "listen",
        "--database-url": "database-url",
        "--tls-mode": "tls.mode",
        "--tls-cert-dir": "tls.cert-dir",
        "--workers": "workers",
        "--public-url": "public-url",
    }
    assert set(flags) <= set(helps)
    variables = {".".join(path): name for name, path in config_module._ENV_KEYS.items()}
    for flag, key in flags.items():
        assert variables[key] in helps[flag], (flag, helps[flag])
    assert "flag wins over its CERTCTL_* environment variable" in " ".join(
        (serve.help or "").split()
    )


def test_the_example_configurations_load(tmp_path: Path) -> None:
    # What a new user copies first: the README's highlights and this reference's example.
    from certctl.server.config import load_config

    readme = (REFERENCE.parents[1] / "README.md").read_text()
    highlights = readme[readme.index("### Server configuration") :]
    examples = {
        "README": re.findall(r"```yaml\n(.*?)```", highlights, re.S)[0],
        "reference": re.findall(r"```yaml\n(.*?)```", REFERENCE.read_text(), re.S)[-1],
    }
    for name, text in examples.items():
        file = tmp_path / f"{name}.yaml"
        file.write_text(text)
        config = load_config(file, {})
        assert config.listen == "0.0.0.0:8443", name
        assert config.workers == 2, name
        assert config.tls.client_auth == "optional", name


# DESIGN §3's table: key -> default as the model holds it (None: unset, derived at start).
DESIGN_KEYS: dict[str, Any] = {
    "data-dir": Path("certctl-data"),  # ./certctl-data
    "database-url": None,
    "listen": "127.0.0.1:8443",
    "tls.mode": "self-signed",
    "tls.cert-dir": None,
    "tls.subject-alt-names": [],
    "tls.min-version": "1.2",
    "tls.client-auth": "none",
    "tls.client-ca": None,
    "ca-cert-validity": "8760h",
    "ca-cert-rotate-before": "24h",
    "cert-validity": "8760h",
    "cert-rotate-before": "24h",
    "metrics.listen": None,
    "metrics.secure": True,
    "auth.client-cert-mappings": [],
    "auth.kubernetes.enabled": False,
}


def test_design_keys_are_read_with_their_defaults(tmp_path: Path) -> None:
    keys = dict(_keys(ServerConfig))
    for key, default in DESIGN_KEYS.items():
        assert key in keys, key
        assert keys[key] == default, (key, keys[key])
    # The derived default DESIGN names: SQLite in the data dir.
    config = ServerConfig.model_validate({"data-dir": str(tmp_path)})
    assert config.effective_database_url == f"sqlite:///{tmp_path.resolve()}/certctl.db"
