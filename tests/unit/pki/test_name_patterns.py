"""Name patterns (acme.allowed-names, a role's constraints.names): matching and nesting."""

from __future__ import annotations

import pytest

from certctl.pki.name_patterns import checked_pattern, name_allowed, pattern_within


@pytest.mark.parametrize(
    ("inner", "outer", "within"),
    [
        ("a.example.com", "a.example.com", True),
        ("a.example.com", "*.example.com", True),
        ("*.a.example.com", "*.example.com", True),
        ("*.example.com", "*.example.com", True),
        ("example.com", "*.example.com", False),  # the base is no name below it
        ("*.example.com", "a.example.com", False),
        ("*.example.com", "*.a.example.com", False),
        ("a.badexample.com", "*.example.com", False),
        ("10.1.0.0/16", "10.0.0.0/8", True),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("10.0.0.0/8", "10.1.0.0/16", False),
        ("10.1.2.3", "10.1.2.3", True),
        ("fd00:1::/32", "fd00::/8", True),
        ("10.1.2.3", "fd00::/8", False),
        ("10.1.2.3", "*.example.com", False),
        ("web1", "10.0.0.0/8", False),  # a name ending in a digit is no address
    ],
)
def test_pattern_within(inner: str, outer: str, within: bool) -> None:
    assert pattern_within(checked_pattern(inner), checked_pattern(outer)) is within


def test_name_allowed_keeps_the_acme_allowed_names_language() -> None:
    patterns = ("*.example.com", "app.example.org", "10.0.0.0/8")
    assert name_allowed("a.b.example.com", patterns)
    assert name_allowed("*.b.example.com", patterns)
    assert not name_allowed("example.com", patterns)
    assert not name_allowed("*.example.org", patterns)
    assert name_allowed("10.9.9.9", patterns, ip=True)
    assert not name_allowed("11.0.0.1", patterns, ip=True)
    assert name_allowed("anything.example.net", ())
