"""The ``acme.*`` keys: defaults, variables, and each refused value naming where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from certctl.errors import InvalidRequest
from certctl.server.config import load_config


def test_acme_is_off_by_default_with_the_documented_defaults() -> None:
    acme = load_config(None, {}).acme
    assert (acme.enabled, acme.issuer, acme.validity) == (False, "default", "90D")
    assert (acme.allowed_names, acme.http_01_port) == ([], 80)
    assert (acme.dns_resolvers, acme.resolvers) == ([], ())  # the system resolver


def test_the_variables_set_the_acme_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTCTL_ACME_ENABLED", "true")
    monkeypatch.setenv("CERTCTL_ACME_ISSUER", "acme-ca")
    monkeypatch.setenv("CERTCTL_ACME_VALIDITY", "30D")
    monkeypatch.setenv("CERTCTL_ACME_HTTP_01_PORT", "5002")
    acme = load_config(None, {}).acme
    assert (acme.enabled, acme.issuer, acme.validity, acme.http_01_port) == (
        True,
        "acme-ca",
        "30D",
        5002,
    )
    monkeypatch.setenv("CERTCTL_ACME_ENABLED", "false")
    assert load_config(None, {}).acme.enabled is False


def test_a_switch_variable_other_than_true_or_false_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CERTCTL_ACME_ENABLED", "yes please")
    with pytest.raises(InvalidRequest) as info:
        load_config(None, {})
    assert info.value.detail.startswith("CERTCTL_ACME_ENABLED='yes please': "), info.value.detail


def test_allowed_names_load_lower_case(tmp_path: Path) -> None:
    file = tmp_path / "certctl.yaml"
    file.write_text(yaml.safe_dump({"acme": {"allowed-names": ["Web.Example.Internal", "*.A.B"]}}))
    assert load_config(file, {}).acme.allowed_names == ["web.example.internal", "*.a.b"]


def test_allowed_names_take_addresses_and_networks_in_canonical_form(tmp_path: Path) -> None:
    file = tmp_path / "certctl.yaml"
    patterns = ["10.0.0.0/8", "FD00::/8", "192.0.2.7", "2001:DB8::0001", "198.51.100.9/32"]
    file.write_text(yaml.safe_dump({"acme": {"allowed-names": [*patterns, "1.example.internal"]}}))
    assert load_config(file, {}).acme.allowed_names == [
        "10.0.0.0/8",
        "fd00::/8",
        "192.0.2.7",
        "2001:db8::1",
        "198.51.100.9",
        "1.example.internal",
    ]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"allowed-names": ["a.*.example"]}, "{file}: acme.allowed-names: a.*.example: invalid"),
        ({"allowed-names": ["*.*.example"]}, "{file}: acme.allowed-names: *.example: wildcards"),
        ({"allowed-names": ["bad_name.example"]}, "{file}: acme.allowed-names: bad_name"),
        # An address pattern: a network with no host bits set, no leading zeros.
        ({"allowed-names": ["10.0.0.1/8"]}, "{file}: acme.allowed-names: 10.0.0.1/8: expected"),
        ({"allowed-names": ["fd00::/129"]}, "{file}: acme.allowed-names: fd00::/129: expected"),
        ({"allowed-names": ["010.0.0.1"]}, "{file}: acme.allowed-names: 010.0.0.1: not an IPv4"),
        ({"http-01-port": 0}, "{file}: acme.http-01-port: "),
        ({"dns-resolvers": ["dns.example"]}, "{file}: acme.dns-resolvers: dns.example: expected"),
        ({"dns-resolvers": ["192.0.2.1:0"]}, "{file}: acme.dns-resolvers: 192.0.2.1:0: expected"),
        ({"dns-resolvers": ["192.0.2.1:65536"]}, "{file}: acme.dns-resolvers: 192.0.2.1:6"),
        ({"dns-resolvers": ["[2001:db8::1"]}, "{file}: acme.dns-resolvers: [2001:db8::1: exp"),
        # A colon with no port after it, as 192.0.2.1: is, not port 53 taken for granted.
        ({"dns-resolvers": ["[2001:db8::1]:"]}, "{file}: acme.dns-resolvers: [2001:db8::1]:: "),
        ({"dns-resolvers": ["192.0.2.1:"]}, "{file}: acme.dns-resolvers: 192.0.2.1:: expected"),
        ({"dns-resolvers": "192.0.2.1"}, "{file}: acme.dns-resolvers: "),
        ({"http-01-port": 70000}, "{file}: acme.http-01-port: "),
        ({"validity": "90X"}, "{file}: acme.validity: 90X: unknown"),
        ({"enabled": "yes"}, "{file}: acme.enabled: "),
        ({"issuer-id": "x"}, "{file}: acme.issuer-id: "),
    ],
)
def test_refused_acme_values_name_the_key(
    tmp_path: Path, doc: dict[str, object], message: str
) -> None:
    file = tmp_path / "certctl.yaml"
    file.write_text(yaml.safe_dump({"acme": doc}))
    with pytest.raises(InvalidRequest) as info:
        load_config(file, {})
    assert info.value.detail.startswith(message.format(file=file)), info.value.detail


def test_external_account_required_is_off_by_default_and_set_by_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_config(None, {}).acme.external_account_required is False
    monkeypatch.setenv("CERTCTL_ACME_EXTERNAL_ACCOUNT_REQUIRED", "true")
    assert load_config(None, {}).acme.external_account_required is True
    monkeypatch.setenv("CERTCTL_ACME_EXTERNAL_ACCOUNT_REQUIRED", "yes please")
    with pytest.raises(InvalidRequest) as info:
        load_config(None, {})
    assert info.value.detail.startswith("CERTCTL_ACME_EXTERNAL_ACCOUNT_REQUIRED='yes please': ")


def test_external_account_required_is_read_from_yaml(tmp_path: Path) -> None:
    config = tmp_path / "certctl.yaml"
    config.write_text("acme:\n  external-account-required: true\n")
    assert load_config(config, {}).acme.external_account_required is True


def test_dns_resolvers_take_addresses_with_an_optional_port(tmp_path: Path) -> None:
    file = tmp_path / "certctl.yaml"
    given = ["192.0.2.53", "192.0.2.54:5353", "2001:db8::53", "[2001:DB8::54]:5300"]
    file.write_text(yaml.safe_dump({"acme": {"dns-resolvers": given}}))
    acme = load_config(file, {}).acme
    assert acme.dns_resolvers == given
    assert acme.resolvers == (
        ("192.0.2.53", 53),
        ("192.0.2.54", 5353),
        ("2001:db8::53", 53),
        ("2001:db8::54", 5300),
    )
