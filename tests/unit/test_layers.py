"""Imports point downwards only (DESIGN §1): cli/api/server -> services -> store, ... -> pki."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "certctl"

# What each package may import of certctl's packages, besides itself and the top-level
# modules (errors, files, ...). pki imports neither the web nor the database layer, so the
# offline CLI starts fast and pki is usable as a library.
_BELOW_SERVICES = {"auth", "store", "targets", "metrics", "pki"}
ALLOWED: dict[str, set[str]] = {
    "pki": set(),
    "auth": _BELOW_SERVICES,
    "store": _BELOW_SERVICES,
    "targets": _BELOW_SERVICES,
    "metrics": _BELOW_SERVICES,
    "services": _BELOW_SERVICES,
    "api": {"services", *_BELOW_SERVICES},
    "server": {"api", "services", *_BELOW_SERVICES},
    "cli": {"server", "api", "services", *_BELOW_SERVICES},
}
# Third-party web and database packages pki must not import.
WEB_OR_DB = {
    "sqlalchemy",
    "alembic",
    "psycopg",
    "starlette",
    "uvicorn",
    "httpx",
    "prometheus_client",
}


# Import statements, top-level or inside a function: a regex, as parsing 1.4 MB of source
# with ast took 1.7 s of the suite.
_FROM = re.compile(r"^[ \t]*from[ \t]+([\w.]+)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w.]+(?:[ \t]*,[ \t]*[\w.]+)*)", re.M)


def _imports(path: Path) -> list[tuple[int, str]]:
    text = path.read_text()
    found = []
    for match in _FROM.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append((line, match.group(1)))
        if match.group(1) == "certctl":  # from certctl import pki
            listed = re.sub(r"#[^\n]*", "", match.group(2)).strip("()")
            names = [n.split()[0] for n in listed.split(",") if n.strip()]
            found += [(line, f"certctl.{name}") for name in names]
    for match in _IMPORT.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found += [(line, name.strip()) for name in match.group(1).split(",")]
    return found


def test_every_package_is_placed() -> None:
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)


def test_imports_point_downwards() -> None:
    upward = []
    for package, allowed in ALLOWED.items():
        for path in sorted((SRC / package).rglob("*.py")):
            for line, module in _imports(path):
                parts = module.split(".")
                where = f"{path.relative_to(SRC)}:{line}: {module}"
                if parts[0] == "certctl" and len(parts) > 1 and parts[1] in ALLOWED:
                    if parts[1] != package and parts[1] not in allowed:
                        upward.append(where)
                elif package == "pki" and parts[0] in WEB_OR_DB:
                    upward.append(where)
    assert not upward, "\n".join(upward)


def test_top_level_modules_import_no_package() -> None:
    # errors, files, hosts, ... are used by every layer, so they may use none of them.
    bad = [
        f"{path.name}:{line}: {module}"
        for path in sorted(SRC.glob("*.py"))
        for line, module in _imports(path)
        if module.split(".")[0] == "certctl"
        and len(module.split(".")) > 1
        and module.split(".")[1] in ALLOWED
    ]
    assert not bad, "\n".join(bad)


def _is_module(dotted: str) -> bool:
    path = SRC.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_no_private_name_is_used_across_modules() -> None:
    # A `_name` is the owning module's to change: one another module uses is public, under a
    # public name in the owner's __all__ (STYLE "Layout"). A `_module` may be imported whole.
    crossing = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(SRC)
        modules = set()  # local names bound to certctl modules: `from certctl.cli import _api`
        for match in _FROM.finditer(text):
            if not match.group(1).startswith("certctl"):
                continue
            line = text.count("\n", 0, match.start()) + 1
            listed = re.sub(r"#[^\n]*", "", match.group(2)).strip("()")
            for item in (n.split() for n in listed.split(",") if n.strip()):
                name, local = item[0], item[-1]
                if _is_module(f"{match.group(1)}.{name}"):
                    modules.add(local)
                elif name.startswith("_") and not name.startswith("__"):
                    crossing.append(f"{where}:{line}: from {match.group(1)} import {name}")
        # Comments may name another module's helper (`key_authentication._KeyCache`).
        code = re.sub(r"(?m)(^|\s)#[^\n]*", r"\1", text)
        for local in modules:
            for match in re.finditer(rf"(?<![\w.]){local}\.(_[A-Za-z]\w*)", code):
                line = code.count("\n", 0, match.start()) + 1
                crossing.append(f"{where}:{line}: {local}.{match.group(1)}")
    assert not crossing, "\n".join(crossing)
