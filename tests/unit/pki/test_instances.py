"""The elasticsearch-certutil instances file."""

from __future__ import annotations

import ipaddress
import re
from typing import TypeVar

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from certctl.errors import InvalidRequest
from certctl.pki.instances import Instance, _load_plain, parse_instances
from certctl.pki.names import SubjectAltNames


def test_full_file() -> None:
    text = """
instances:
  - name: node-1
    dns: [node-1.example.com, Node-1.Local]
    ip: ["10.0.0.1", "::1"]
  - name: node-2
    dns: node-2.example.com
    ip: 10.0.0.2
    cn: Node Two
    filename: second
  - name: kibana
"""
    result = parse_instances(text)
    assert result == [
        Instance(
            name="node-1",
            common_name="node-1",
            filename="node-1",
            sans=SubjectAltNames(
                dns=("node-1.example.com", "node-1.local"),
                ip=(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")),
            ),
        ),
        Instance(
            name="node-2",
            common_name="Node Two",
            filename="second",
            sans=SubjectAltNames(
                dns=("node-2.example.com",), ip=(ipaddress.ip_address("10.0.0.2"),)
            ),
        ),
        Instance(name="kibana", common_name="kibana", filename="kibana", sans=SubjectAltNames()),
    ]


def test_distinguished_name_is_the_subject() -> None:
    # certutil's documented example: a name holding '=' is the whole subject.
    text = 'instances:\n  - name: "CN=node5,OU=IT,DC=mydomain,DC=com"\n    filename: node5\n'
    (only,) = parse_instances(text)
    assert only.filename == "node5"
    assert only.subject is not None
    assert only.subject.rfc4514_string() == "CN=node5,OU=IT,DC=mydomain,DC=com"
    (plain,) = parse_instances("instances:\n  - name: node-1\n")
    assert plain.subject is None


def test_null_lists_are_empty() -> None:
    (only,) = parse_instances("instances:\n  - name: a\n    dns:\n    ip: ~\n")
    assert only.sans == SubjectAltNames()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("instances: [", "instances file is not valid YAML at line "),
        ("instances:\n  - name: a\n   bad: [", "instances file is not valid YAML"),
        ("", "instances file needs a top-level 'instances:' list"),
        ("- name: a\n", "instances file needs a top-level 'instances:' list"),
        ("instances: node-1\n", "instances file needs a top-level 'instances:' list"),
        ("instances: []\n", "instances file lists no instance"),
        ("instances:\n  - node-1\n", "instance #1: must be a mapping with at least 'name'"),
        ("instances:\n  - dns: [a.example]\n", "instance #1: 'name' is required"),
        ("instances:\n  - name: ''\n", "instance #1: 'name' is required"),
        ("instances:\n  - name: 5\n", "instance #1: 'name' must be a string (quote it)"),
        (
            "instances:\n  - name: a\n  - dns: [b.example]\n",
            "instance #2: 'name' is required",
        ),
        (
            "instances:\n  - name: a\n    dnz: [a.example]\n    zip: 1\n",
            "instance #1: unknown field(s) dnz, zip",
        ),
        (
            "instances:\n  - name: ../x\n",
            "instance '../x': '../x' is not a safe file name (letters, digits, '.', '_', '-')",
        ),
        ("instances:\n  - name: a\n    filename: ../x\n", "'../x' is not a safe file name"),
        ("instances:\n  - name: a\n    filename: a/b\n", "'a/b' is not a safe file name"),
        ("instances:\n  - name: .hidden\n", "'.hidden' is not a safe file name"),
        ("instances:\n  - name: a b\n", "'a b' is not a safe file name"),
        (
            "instances:\n  - name: Nœud 1\n",
            "instance 'Nœud 1': 'Nœud 1' is not a safe file name (letters, digits, '.', '_', "
            "'-'); keep the name and add a 'filename:'",
        ),
        ("instances:\n  - name: " + "a" * 129 + "\n", "is not a safe file name"),
        (
            "instances:\n  - name: a\n  - name: a\n",
            "instance 'a': file name 'a' is used twice",
        ),
        (
            "instances:\n  - name: a\n  - name: b\n    filename: a\n",
            "instance 'b': file name 'a' is used twice",
        ),
        (
            "instances:\n  - name: node-1\n  - name: Node-1\n",
            "instance 'Node-1': file name 'Node-1' is used twice "
            "(as 'node-1': case does not count)",
        ),
        (
            "instances:\n  - name: a\n  - name: B\n    filename: A\n",
            "instance 'B': file name 'A' is used twice (as 'a': case does not count)",
        ),
        (
            "instances:\n  - name: a\n    cn: [x]\n",
            "instance 'a': 'cn' must be a string, the certificate's common name (certctl does "
            "not write certutil's list of 'cn' names as otherName SANs)",
        ),
        (
            'instances:\n  - name: "CN=a,O=Example"\n    filename: a\n    cn: b\n',
            "instance 'CN=a,O=Example': 'cn' sets the common name of a plain 'name'; this name "
            "is a distinguished name, so put the CN in it and drop 'cn'",
        ),
        (
            'instances:\n  - name: "CN=a,,O=Example"\n    filename: a\n',
            "instance 'CN=a,,O=Example': CN=a,,O=Example: not a valid RFC 4514 distinguished name",
        ),
        (
            "instances:\n  - name: a\n    dns: {x: 1}\n",
            "instance 'a': 'dns' must be a string or a list of strings",
        ),
        (
            "instances:\n  - name: a\n    ip: [[1]]\n",
            "instance 'a': 'ip' must be a string or a list of strings",
        ),
        (
            "instances:\n  - name: a\n    dns: [-bad-.example]\n",
            "instance 'a': -bad-.example: invalid DNS name",
        ),
        (
            "instances:\n  - name: a\n    dns: [a.*.example.com]\n",
            "instance 'a': a.*.example.com: invalid DNS name",
        ),
        (
            "instances:\n  - name: a\n    ip: [1.2.3.999]\n",
            "instance 'a': 1.2.3.999: not a valid IPv4 or IPv6 address",
        ),
        # YAML 1.1 scalars that are not what was written: refused with "quote it" instead
        # of a certificate for "true", or a number in an address message.
        (
            "instances:\n  - name: a\n    dns: [on]\n",
            "instance 'a': YAML read an entry of 'dns' as the boolean True: quote it ('...')",
        ),
        (
            "instances:\n  - name: a\n    dns: yes\n",
            "instance 'a': YAML read an entry of 'dns' as the boolean True: quote it ('...')",
        ),
        (
            "instances:\n  - name: a\n    ip: [1:2:3:4:5:6:7:8]\n",
            "instance 'a': YAML read an entry of 'ip' as the number 2895057742028: quote it",
        ),
        (
            "instances:\n  - name: a\n    ip: 2001:0:0:0:0:0:0:1\n",
            "instance 'a': YAML read an entry of 'ip' as the number 5601519360000001: quote it",
        ),
    ],
)
def test_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)) as info:
        parse_instances(text)
    # The entry is named once: "instance 'a': instance 'a': …" was printed for a bad 'dns'.
    assert "': instance " not in info.value.detail


def test_quoted_twins_of_yaml_numbers_and_booleans_read() -> None:
    text = 'instances:\n  - name: a\n    dns: ["on", yes.example]\n    ip: ["1:2:3:4:5:6:7:8"]\n'
    (only,) = parse_instances(text)
    assert only.sans.dns == ("on", "yes.example")
    assert [str(a) for a in only.sans.ip] == ["1:2:3:4:5:6:7:8"]


def test_yaml_tags_are_not_executed() -> None:
    text = "instances:\n  - name: !!python/object/apply:os.system ['true']\n"
    with pytest.raises(InvalidRequest, match="instances file is not valid YAML"):
        parse_instances(text)


T = TypeVar("T")

# --- the plain layout, read without PyYAML ------------------------------------------------
# _load_plain must return exactly what PyYAML's safe loader returns, or None (PyYAML then
# reads the file). These documents mix the accepted layout with what it must refuse.

_TOKENS = [
    "node-1",
    "node-00001.example.com",
    "10.0.0.1",
    "192.168.1.1",
    "1.2",
    "1.2.3",
    "12",
    "0x1f",
    "0b101",
    "1_000",
    "1e5",
    "2001-12-14",
    "yes",
    "No",
    "ON",
    "off",
    "true",
    "null",
    "Null",
    "~",
    "y",
    "n",
    "nan",
    ".nan",
    ".inf",
    "-1",
    "-bad-.example",
    "*.example.com",
    "::1",
    "fd00::1",
    "a:b",
    "a b",
    "es_01",
    "deadbeef.cafe",
    "Node Two",
    '"quoted"',
    '"with, comma"',
    '"a # b"',
    '"esc\\"aped"',
    "'single'",
    "'it''s'",
    '""',
    "''",
    "&anchor x",
    "*alias",
    "!!str 5",
    "x # comment",
    "|",
    ">",
    "@x",
    "%x",
    "`x",
    "{a: 1}",
]


_GOOD = [
    "node-1",
    "node-00001.example.com",
    "es_01.internal",
    "10.0.0.1",
    "192.168.1.1",
    '"quoted"',
    '"with, comma"',
    '"Node Two"',
    "'single'",
    "'10.0.0.3'",
]


def _noisy(draw: st.DrawFn, noise: int) -> bool:
    """True ``noise`` times in 100: how often a document strays from the plain layout."""
    return draw(st.integers(0, 99)) < noise


def _pick(draw: st.DrawFn, noise: int, common: T, *rare: T) -> T:
    return draw(st.sampled_from(rare)) if rare and _noisy(draw, noise) else common


def _token(draw: st.DrawFn, noise: int) -> str:
    if not _noisy(draw, noise):
        return draw(st.sampled_from(_GOOD))
    return draw(
        st.one_of(
            st.sampled_from(_TOKENS),
            st.text(alphabet="abgxyzEe019._-:#'\" [],~*&!", min_size=1, max_size=8),
        )
    )


def _value_text(draw: st.DrawFn, noise: int, key_col: int) -> list[str]:
    """The text after 'key:' plus the block lines that may follow it."""
    kind = _pick(draw, noise, draw(st.sampled_from(["scalar", "flow", "block"])), "empty")
    if kind == "scalar":
        return [" " * _pick(draw, noise, 1, 2) + _token(draw, noise)]
    if kind == "flow":
        items = [_token(draw, noise) for _ in range(draw(st.integers(0, 3)))]
        sep = _pick(draw, noise, ", ", ",", " , ", ",  ")
        pad = _pick(draw, noise, "", " ")
        return [f" [{pad}{sep.join(items)}{pad}]"]
    if kind == "block":
        col = key_col + _pick(draw, noise, 2, 1, 4, 0, -1)
        lines = [""]
        for _ in range(draw(st.integers(1, 3))):
            jitter = _pick(draw, noise, 0, 1, -1)
            dash = "-" + " " * _pick(draw, noise, 1, 2, 0)
            lines.append(" " * max(col + jitter, 0) + dash + _token(draw, noise))
        return lines
    return [""]


@st.composite
def _document(draw: st.DrawFn) -> str:
    noise = draw(st.sampled_from([0, 1, 3, 10, 30]))
    lines = [_pick(draw, noise, "instances:", "instances: ", "Instances:", "instances :")]
    item_col = draw(st.integers(0, 4))
    for _ in range(draw(st.integers(0, 3))):
        gap = draw(st.integers(1, 3))
        key_col = item_col + 1 + gap
        keys = draw(
            st.lists(
                st.sampled_from(["name", "dns", "ip", "cn", "filename"]),
                min_size=1,
                max_size=4,
                unique=True,
            )
        )
        keys += _pick(draw, noise, [], ["zip"], ["on"], [keys[0]])
        for position, key in enumerate(keys):
            value = _value_text(draw, noise, key_col)
            if position == 0:
                prefix = " " * item_col + "-" + " " * gap
            else:
                prefix = " " * (key_col + _pick(draw, noise, 0, 1, -1))
            lines.append(prefix + key + ":" + value[0])
            lines += value[1:]
        lines += _pick(draw, noise, [], [""], ["# note"], ["  # note"], ["   "])
    return "\n".join(lines) + _pick(draw, noise, "\n", "", "\n\n", "\r\n", "\t\n")


@settings(max_examples=1500, deadline=None)
@given(_document())
def test_plain_reader_agrees_with_pyyaml(text: str) -> None:
    plain = _load_plain(text)
    if plain is None:
        return
    assert yaml.load(text, Loader=yaml.CSafeLoader) == plain


def test_plain_reader_reads_common_layouts() -> None:
    bench = (
        "instances:\n"
        "  - name: node-00001\n"
        "    dns: [node-00001.example.com, node-00001.internal]\n"
        "    ip: [10.0.0.2]\n"
    )
    certutil = (
        "# from the elasticsearch-certutil docs\n"
        "instances:\n"
        '  - name: "node1"\n'
        "    ip:\n"
        '      - "192.0.2.1"\n'
        "    dns:\n"
        '      - "node1.mydomain.com"\n'
        "  - name: 'node2'\n"
        "    dns:\n"
        "      - node2.mydomain.com\n"
        "      - node2.internal\n"
        "    filename: second\n"
    )
    for text in (bench, certutil):
        plain = _load_plain(text)
        assert plain is not None
        assert plain == yaml.load(text, Loader=yaml.CSafeLoader)
    assert parse_instances(certutil)[1].sans.dns == ("node2.mydomain.com", "node2.internal")


@pytest.mark.parametrize(
    "text",
    [
        "instances:\n  - name: 5\n",  # an int: PyYAML decides
        "instances:\n  - name: yes\n",  # a boolean
        "instances:\n  - name: a\n    dns:\n",  # null
        "instances:\n  - name: a\n    dns: [a.example]  # comment\n",
        "instances:\n  - name: a\n    name: b\n",  # duplicate key: PyYAML keeps the last
        "instances:\n  - name: a\n    ip: [::1]\n",
        "instances:\n  - name: a\n    dns:\n    - a.example\n",  # sequence at the key's column
        "instances:\r\n  - name: a\r\n",
        "\ufeffinstances:\n  - name: a\n",
    ],
)
def test_plain_reader_leaves_the_rest_to_pyyaml(text: str) -> None:
    assert _load_plain(text) is None
