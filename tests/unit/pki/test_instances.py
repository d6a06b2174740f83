"""The elasticsearch-certutil instances file."""

from __future__ import annotations

import ipaddress
import re

import pytest

from certctl.errors import InvalidRequest
from certctl.pki.instances import Instance, parse_instances
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
        ("instances:\n  - name: 5\n", "instance #1: 'name' is required"),
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
        ("instances:\n  - name: " + "a" * 129 + "\n", "is not a safe file name"),
        (
            "instances:\n  - name: a\n  - name: a\n",
            "instance 'a': file name 'a' is used twice",
        ),
        (
            "instances:\n  - name: a\n  - name: b\n    filename: a\n",
            "instance 'b': file name 'a' is used twice",
        ),
        ("instances:\n  - name: a\n    cn: [x]\n", "instance 'a': 'cn' must be a string"),
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
    ],
)
def test_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        parse_instances(text)


def test_yaml_tags_are_not_executed() -> None:
    text = "instances:\n  - name: !!python/object/apply:os.system ['true']\n"
    with pytest.raises(InvalidRequest, match="instances file is not valid YAML"):
        parse_instances(text)
