"""The ``elasticsearch-certutil`` instances file: ``instances: [{name, dns, ip, cn, filename}]``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from certctl.errors import InvalidRequest
from certctl.pki.names import SubjectAltNames

__all__ = ["Instance", "parse_instances"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Instance:
    """One certificate to issue: its folder/file name, common name and SANs."""

    name: str
    common_name: str
    filename: str
    sans: SubjectAltNames


def _str_list(entry: dict[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key, [])
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise InvalidRequest(f"{where}: '{key}' must be a string or a list of strings")
    return [str(v) for v in value]


def parse_instances(text: str) -> list[Instance]:
    """Parse and validate an instances file (YAML).

    Raises:
        InvalidRequest: the YAML is malformed, an entry lacks ``name``, a name is unsafe as a
            file name or repeated, or a DNS name or IP is invalid. Messages name the entry.
    """
    import yaml

    try:
        # libyaml's C loader is ~5x faster than the pure-Python one on large instance files.
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidRequest(f"instances file is not valid YAML{where}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise InvalidRequest("instances file needs a top-level 'instances:' list")
    if not doc["instances"]:
        raise InvalidRequest("instances file lists no instance")
    seen: set[str] = set()
    result = []
    for index, entry in enumerate(doc["instances"], start=1):
        where = f"instance #{index}"
        if not isinstance(entry, dict):
            raise InvalidRequest(f"{where}: must be a mapping with at least 'name'")
        unknown = set(entry) - {"name", "dns", "ip", "cn", "filename"}
        if unknown:
            raise InvalidRequest(
                f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}"
            )
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}: 'name' is required")
        where = f"instance {name!r}"
        filename = entry.get("filename") or name
        if not isinstance(filename, str) or not _SAFE_NAME.match(filename):
            raise InvalidRequest(
                f"{where}: {filename!r} is not a safe file name (letters, digits, '.', '_', '-')"
            )
        if filename in seen:
            raise InvalidRequest(f"{where}: file name {filename!r} is used twice")
        seen.add(filename)
        cn = entry.get("cn") or name
        if not isinstance(cn, str):
            raise InvalidRequest(f"{where}: 'cn' must be a string")
        try:
            sans = SubjectAltNames.parse(
                dns=_str_list(entry, "dns", where), ip=_str_list(entry, "ip", where)
            )
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}: {exc.detail}") from exc
        result.append(Instance(name, cn, filename, sans))
    return result
