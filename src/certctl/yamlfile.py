"""YAML as certctl reads it: safe, and a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word, so a services file with two
``targets:`` lost the first list silently. Messages carry the line, counted from 1.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import yaml

__all__ = ["DuplicateKey", "load", "load_all", "syntax_error"]

# Line breaks as PyYAML's reader counts them for its marks.
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
# What a flow collection ([…], {…}) separates: candidates for an unquoted address.
_FLOW_TOKEN = re.compile(r"[^\s,\[\]{}]+")


def _base_loader() -> Any:
    """The YAML loader: the libyaml parser with PyYAML's Python composer, or pure Python.

    libyaml's own composer (``CSafeLoader``) recurses in C once per nesting level, with no
    limit: ``[[[[…`` 100,000 deep overflowed the C stack and killed certctl with SIGSEGV.
    PyYAML's composer recurses in Python, so the same input raises ``RecursionError``,
    which callers report as one line; the scanner and parser, the slow part, stay in C.
    """
    try:
        from yaml.cyaml import CParser  # type: ignore[attr-defined]
    except ImportError:  # PyYAML built without libyaml
        return yaml.SafeLoader
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.resolver import Resolver

    class _Loader(Composer, CParser, SafeConstructor, Resolver):
        # Composer first: its compose_* methods replace CParser's C ones; CParser still
        # provides the events (check_event, peek_event, get_event) they consume.
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    return _Loader


_Base: Any = _base_loader()


class DuplicateKey(yaml.YAMLError):
    """A mapping names one key twice."""

    def __init__(self, key: object, line: int) -> None:
        super().__init__(f"line {line}: key {key!r} appears twice in one mapping")
        self.line = line


class _StrictLoader(_Base):  # type: ignore[misc]
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<:" merges; the keys it brings may be overridden
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:
                continue  # unhashable; SafeConstructor reports it
            if repeated:
                raise DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def load(text: str) -> Any:
    """One YAML document.

    Raises:
        yaml.YAMLError: malformed YAML, or ``DuplicateKey``.
        RecursionError: nested deeper than the parser recurses.
    """
    return yaml.load(text, Loader=_StrictLoader)


def load_all(text: str) -> list[Any]:
    """Every document of a multi-document stream (same errors as ``load``)."""
    return list(yaml.load_all(text, Loader=_StrictLoader))


def syntax_error(text: str, exc: yaml.YAMLError) -> str:
    """What is wrong with ``text``, for one line of a message.

    ``not valid YAML at line N (what PyYAML found)``, and a hint where one helps. What PyYAML
    found ("found character that cannot start any token", "did not find expected key") names
    a character, a token kind, a tag or an alias, never a value; "not valid YAML at line 7"
    alone left a user looking for a tab they could not see.
    """
    if isinstance(exc, DuplicateKey):
        return str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    found = getattr(exc, "problem", None)
    what = f" ({found})" if isinstance(found, str) and found else ""
    hint = ""
    if mark is not None:
        lines = _LINE_BREAK.split(text)
        if mark.line < len(lines):
            line = lines[mark.line]
            hint = _tab_hint(line, mark.column) or _ipv6_hint(line)
    return f"not valid YAML{where}{what}{hint}"


def _tab_hint(line: str, column: int) -> str:
    """A hint when YAML stopped at a tab: it indents with spaces only, and a tab looks alike."""
    if line[column : column + 1] == "\t":
        return f"; a tab at column {column + 1}: YAML indents with spaces, not tabs"
    return ""


def _ipv6_hint(line: str) -> str:
    """A hint to quote IPv6 addresses when the line YAML failed on holds one unquoted, or "".

    Inside ``[…]`` or ``{…}`` a ``:`` is a key indicator, so ``ip: [::1]`` (or any address
    starting with ``::``) is a syntax error; the bare "not valid YAML at line N" did not
    say why, although the address in that line reads fine in block style.
    """
    for token in _FLOW_TOKEN.findall(line):
        if token[0] in "\"'" or token.count(":") < 2:
            continue
        try:
            ipaddress.IPv6Address(token)
        except ValueError:
            continue
        return f'; quote IPv6 addresses inside [...] and {{...}}: "{token}"'
    return ""
