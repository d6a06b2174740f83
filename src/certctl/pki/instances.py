"""The ``elasticsearch-certutil`` instances file: ``instances: [{name, dns, ip, cn, filename}]``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from certctl.errors import InvalidRequest
from certctl.pki.distinguished_names import parse_dn
from certctl.pki.subject_alt_names import SubjectAltNames

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["Instance", "parse_instances"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_FIELDS = frozenset({"name", "dns", "ip", "cn", "filename"})


@dataclass(frozen=True)
class Instance:
    """One certificate to issue: its folder/file name, common name and SANs.

    ``subject``: the whole subject when ``name`` is a distinguished name (certutil's
    ``name: "CN=node5,OU=IT,DC=example,DC=com"``); else the subject is CN=``common_name``.
    """

    name: str
    common_name: str
    filename: str
    sans: SubjectAltNames
    subject: x509.Name | None = None


def _str_list(entry: dict[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key, [])
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    for item in values:
        # YAML 1.1 turns unquoted yes/no/on/off into booleans (dns: [on] became the name
        # "true") and 1:2:3:4:5:6:7:8 into a base-60 integer; neither is what was written.
        if isinstance(item, bool | int):
            kind = "boolean" if isinstance(item, bool) else "number"
            raise InvalidRequest(
                f"{where}: YAML read an entry of '{key}' as the {kind} {item}: quote it ('...')"
            )
        if not isinstance(item, str):
            raise InvalidRequest(f"{where}: '{key}' must be a string or a list of strings")
    return list(values)


def parse_instances(text: str) -> list[Instance]:
    """Parse and validate an instances file (YAML).

    Raises:
        InvalidRequest: the YAML is malformed, an entry lacks ``name``, a name is unsafe as a
            file name or repeated, or a DNS name or IP is invalid. Messages name the entry.
    """
    doc = _load_plain(text)
    if doc is None:
        doc = _load_yaml(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise InvalidRequest("instances file needs a top-level 'instances:' list")
    if not doc["instances"]:
        raise InvalidRequest("instances file lists no instance")
    seen: dict[str, str] = {}  # lower-cased file name -> file name
    result = []
    for index, entry in enumerate(doc["instances"], start=1):
        where = f"instance #{index}"
        if not isinstance(entry, dict):
            raise InvalidRequest(f"{where}: must be a mapping with at least 'name'")
        unknown = entry.keys() - _FIELDS
        if unknown:
            raise InvalidRequest(
                f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}"
            )
        name = entry.get("name")
        if name is None or name == "":
            raise InvalidRequest(f"{where}: 'name' is required")
        if not isinstance(name, str):
            raise InvalidRequest(f"{where}: 'name' must be a string (quote it)")
        where = f"instance {name!r}"
        filename = entry.get("filename") or name
        if not isinstance(filename, str) or not _SAFE_NAME.match(filename):
            # A name such as "Nœud 1" is a fine common name: only its folder needs another.
            hint = "" if entry.get("filename") else "; keep the name and add a 'filename:'"
            raise InvalidRequest(
                f"{where}: {filename!r} is not a safe file name "
                f"(letters, digits, '.', '_', '-'){hint}"
            )
        # Folders that differ only in case are one folder once unzipped on macOS or
        # Windows: the second instance's key would silently replace the first's.
        if filename.lower() in seen:
            earlier = seen[filename.lower()]
            also = "" if earlier == filename else f" (as {earlier!r}: case does not count)"
            raise InvalidRequest(f"{where}: file name {filename!r} is used twice{also}")
        seen[filename.lower()] = filename
        cn = entry.get("cn") or name
        if not isinstance(cn, str):
            # certutil's 'cn' is a list of names it puts in otherName SANs (for transport
            # trust restrictions); certctl's is the subject's common name.
            raise InvalidRequest(
                f"{where}: 'cn' must be a string, the certificate's common name (certctl "
                "does not write certutil's list of 'cn' names as otherName SANs)"
            )
        subject = _dn_name(name, entry, where)
        dns, ip = _str_list(entry, "dns", where), _str_list(entry, "ip", where)
        try:
            sans = SubjectAltNames.parse(dns=dns, ip=ip)
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}: {exc.detail}") from exc
        result.append(Instance(name, cn, filename, sans, subject))
    return result


def _dn_name(name: str, entry: dict[str, Any], where: str) -> x509.Name | None:
    # certutil reads a name holding '=' as the whole subject DN (its documented example is
    # "CN=node5,OU=IT,DC=mydomain,DC=com" with a filename); taken as a common name it gave
    # the subject CN=CN=node5\,OU=IT…, which no one meant.
    if "=" not in name:
        return None
    if entry.get("cn"):
        raise InvalidRequest(
            f"{where}: 'cn' sets the common name of a plain 'name'; this name is a "
            "distinguished name, so put the CN in it and drop 'cn'"
        )
    try:
        return parse_dn(name)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc.detail}") from exc


def _load_yaml(text: str) -> Any:
    import yaml

    from certctl import yamlfile

    try:
        # libyaml's C parser (yamlfile uses it) is ~5x faster than the pure-Python one.
        return yamlfile.load(text)
    except yamlfile.DuplicateKey as exc:
        raise InvalidRequest(f"instances file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"instances file is {yamlfile.syntax_error(text, exc)}") from exc
    except RecursionError:
        # The composer recurses per nesting level: "[[[[…" reaches Python's limit.
        raise InvalidRequest("instances file is nested too deeply") from None


# The plain layout of instances files, read without PyYAML: importing it and building 1,000
# entries took ~80 ms, the largest serial step of `certctl cert issue --in` after start-up.
# _load_plain accepts only lines of these shapes, each with one meaning in YAML, and returns
# None for anything else (tabs, CR, non-ASCII, flow mappings, anchors, '#' after a value,
# unknown keys, values YAML would read as numbers, booleans, null or dates…), which PyYAML
# then reads as before. tests/unit/pki/test_instances.py checks it against PyYAML.
#
#   instances:
#     - name: node-1              # a mapping per instance; its keys at one column
#       dns: [a.example, "b"]     # flow sequence of scalars
#       ip:                       # or a block sequence, indented deeper than its key
#         - 10.0.0.1
#
# A plain scalar is kept only when YAML 1.1 (PyYAML's resolver) must read it as a string:
# safe characters, not a boolean or null word, and a letter no number or date uses (g-z
# but x) or two dots (no float, int or date has two). Quoted scalars are kept without
# escapes: "..." without a backslash or quote, '...' without a quote.
_PLAIN = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_SCALAR = rf"""(?:"[^"\\]*"|'[^']*'|{_PLAIN})"""
_KEY_LINE = re.compile(r"( *)(- +)?([a-z]+):(?: +(.*))?")
_ITEM_LINE = re.compile(rf"( *)- +({_SCALAR})")
_FLOW = re.compile(rf"\[ *(?:{_SCALAR}(?:, *{_SCALAR})*)? *\]")
_FLOW_ITEM = re.compile(_SCALAR)
_WORDS = frozenset({"yes", "no", "true", "false", "on", "off", "null", "y", "n", "~"})
_STRING_LETTER = re.compile(r"[g-wyzG-WYZ]")
_PLAIN_FULL = re.compile(_PLAIN)
_SCALAR_FULL = re.compile(_SCALAR)


def _scalar(token: str) -> str | None:
    if token[0] in "\"'":
        return token[1:-1]
    if token.lower() in _WORDS:
        return None
    if _STRING_LETTER.search(token) is None and token.count(".") < 2:
        return None
    return token


def _value(text: str) -> str | list[str] | None:
    if text.startswith("["):
        if _FLOW.fullmatch(text) is None:
            return None
        items = []
        for token in _FLOW_ITEM.findall(text[1:-1]):
            item = _scalar(token)
            if item is None:
                return None
            items.append(item)
        return items
    if _SCALAR_FULL.fullmatch(text) is None:
        return None
    return _scalar(text)


def _load_plain(text: str) -> dict[str, Any] | None:
    """Read the plain instances layout exactly as PyYAML would, or return None."""
    # '#' only opens whole-line comments at column 0.
    if not text.isascii() or "\t" in text or "\r" in text or "#" in f"\n{text}".replace("\n#", ""):
        return None
    if any(ch < " " or ch == "\x7f" for ch in set(text) - {"\n"}):
        return None
    lines = [line.rstrip(" ") for line in text.split("\n")]
    lines = [line for line in lines if line and not line.lstrip(" ").startswith("#")]
    if not lines or lines[0] != "instances:":
        return None
    instances: list[dict[str, Any]] = []
    item_col = key_col = list_col = -1
    current: dict[str, Any] = {}
    pending: str | None = None  # a key whose block sequence is being read
    for line in lines[1:]:
        if pending is not None:
            match = _ITEM_LINE.fullmatch(line)
            if match is not None and len(match.group(1)) > key_col:
                if list_col < 0:
                    list_col = len(match.group(1))
                item = _scalar(match.group(2))
                if len(match.group(1)) != list_col or item is None:
                    return None
                current[pending].append(item)
                continue
            if list_col < 0:
                return None  # "key:" with nothing after it: null, or a layout not read here
            pending, list_col = None, -1
        match = _KEY_LINE.fullmatch(line)
        if match is None:
            return None
        indent, dash, key, rest = match.groups()
        if dash is not None:
            if item_col < 0:
                item_col = len(indent)
            if len(indent) != item_col:
                return None
            key_col = item_col + len(dash)
            current = {}
            instances.append(current)
        elif key_col < 0 or len(indent) != key_col:
            return None
        if key not in _FIELDS or key in current:
            return None
        if rest is None:
            current[key] = []
            pending = key
            continue
        value = _value(rest)
        if value is None:
            return None
        current[key] = value
    if pending is not None and list_col < 0:
        return None
    return {"instances": instances} if instances else None
