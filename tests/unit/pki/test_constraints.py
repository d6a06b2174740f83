"""Name constraints on e-mail addresses and URIs: RFC 5280 4.2.1.10's host rules, as OpenSSL.

For DNS names, "corp.example" covers the names below it too. For an e-mail address or a
URI, "corp.example" is that host alone and ".corp.example" every host below it: OpenSSL
refuses alice@sub.corp.example and spiffe://sub.corp.example/x under "corp.example".
"""

from __future__ import annotations

import pytest
from cryptography import x509

from certctl.errors import InvalidRequest
from certctl.pki.constraints import check_name_constraints
from certctl.pki.names import SubjectAltNames

NAME = x509.Name([])


def _constraint(
    permitted: list[x509.GeneralName], excluded: list[x509.GeneralName]
) -> tuple[x509.NameConstraints, ...]:
    return (x509.NameConstraints(permitted or None, excluded or None),)


@pytest.mark.parametrize(
    ("sans", "allowed"),
    [
        ({"email": ["alice@corp.example"]}, True),
        ({"email": ["alice@Corp.Example"]}, True),
        ({"email": ["alice@sub.corp.example"]}, False),  # a host below: ".corp.example"'s
        ({"uri": ["spiffe://corp.example/ns/a"]}, True),
        ({"uri": ["spiffe://sub.corp.example/ns/a"]}, False),
        ({"dns": ["sub.corp.example"]}, True),  # DNS: the names below count too
    ],
)
def test_a_host_constraint_permits_that_host_alone(
    sans: dict[str, list[str]], allowed: bool
) -> None:
    constraints = _constraint(
        [
            x509.RFC822Name("corp.example"),
            x509.UniformResourceIdentifier("corp.example"),
            x509.DNSName("corp.example"),
        ],
        [],
    )
    names = SubjectAltNames.parse(**sans)
    if allowed:
        check_name_constraints(constraints, NAME, names)
    else:
        with pytest.raises(InvalidRequest, match="outside the issuing CA's name constraints"):
            check_name_constraints(constraints, NAME, names)


@pytest.mark.parametrize(
    ("sans", "allowed"),
    [
        ({"email": ["alice@sub.corp.example"]}, True),
        ({"email": ["alice@corp.example"]}, False),
        ({"uri": ["https://sub.corp.example/"]}, True),
        ({"uri": ["https://corp.example/"]}, False),
    ],
)
def test_a_host_exclusion_excludes_that_host_alone(
    sans: dict[str, list[str]], allowed: bool
) -> None:
    constraints = _constraint(
        [], [x509.RFC822Name("corp.example"), x509.UniformResourceIdentifier("corp.example")]
    )
    names = SubjectAltNames.parse(**sans)
    if allowed:
        check_name_constraints(constraints, NAME, names)
    else:
        with pytest.raises(InvalidRequest, match="excluded by the issuing CA's name constraints"):
            check_name_constraints(constraints, NAME, names)


@pytest.mark.parametrize(
    ("email", "allowed"),
    [
        ("alice@corp.example", True),
        ("alice@CORP.example", True),  # the domain in either case
        ("Alice@corp.example", False),  # the local part as written: OpenSSL refuses it
        ("bob@corp.example", False),
    ],
)
def test_a_mailbox_constraint_compares_the_local_part_as_written(email: str, allowed: bool) -> None:
    constraints = _constraint([x509.RFC822Name("alice@corp.example")], [])
    names = SubjectAltNames.parse(email=[email])
    if allowed:
        check_name_constraints(constraints, NAME, names)
    else:
        with pytest.raises(InvalidRequest, match="outside the issuing CA's name constraints"):
            check_name_constraints(constraints, NAME, names)
