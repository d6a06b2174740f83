"""Strict YAML: a key given twice is an error naming its line, in every file certctl reads."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from certctl import yamlfile
from certctl.errors import InvalidRequest
from certctl.pki.instances import parse_instances
from certctl.server.config import load_config
from certctl.services.tls_spec import parse_service_documents

SERVICE = """\
apiVersion: certctl.io/v1
kind: TLSService
metadata: {name: web}
spec:
  targets: [{directory: /srv/a}]
  targets: [{directory: /srv/b}]
"""


def test_a_repeated_key_names_its_line() -> None:
    with pytest.raises(yamlfile.DuplicateKey, match="line 3: key 'b' appears twice"):
        yamlfile.load("a: 1\nb: 2\nb: 3\n")
    with pytest.raises(yamlfile.DuplicateKey, match="line 2: key 'x'"):
        yamlfile.load_all("---\n{x: 1, x: 2}\n")
    # Negative twins: equal keys in different mappings, merge keys, and plain documents.
    assert yamlfile.load("a: {x: 1}\nb: {x: 2}\n") == {"a": {"x": 1}, "b": {"x": 2}}
    assert yamlfile.load("base: &b {x: 1}\nc:\n  <<: *b\n  x: 2\n")["c"] == {"x": 2}
    assert yamlfile.load_all("a: 1\n---\na: 2\n") == [{"a": 1}, {"a": 2}]
    with pytest.raises(yaml.YAMLError):
        yamlfile.load("a: [")


def test_every_file_certctl_reads_refuses_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="services file: line 6: key 'targets' appears twice"):
        parse_service_documents(SERVICE)
    config = tmp_path / "certctl.yaml"
    config.write_text("listen: 127.0.0.1:1\ntls:\n  mode: disabled\nlisten: 127.0.0.1:2\n")
    with pytest.raises(InvalidRequest, match=r"certctl\.yaml: line 4: key 'listen' appears twice"):
        load_config(config, {})
    text = (
        "instances:\n  - name: a\n    dns: [a.example]\n    dns: [b.example]\n    ip: [10.0.0.1]\n"
    )
    with pytest.raises(InvalidRequest, match="instances file: line 4: key 'dns' appears twice"):
        parse_instances(text)


# libyaml's C composer recursed without limit: 100,000 levels overflowed the C stack (SIGSEGV).
DEEP_DOCUMENTS = {
    "flow": "instances: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "block": "instances:\n" + "- " * 60_000 + "x\n",
    "mapping": "instances: " + "{a: " * 60_000 + "1" + "}" * 60_000 + "\n",
}
# Each reader in a child process: a crash there fails this test instead of killing pytest.
READERS = """\
import sys
import subprocess
import sys
from pathlib import Path
from certctl.errors import InvalidRequest
from certctl.pki.instances import parse_instances
from certctl.server.config import load_config
from certctl.services.tls_spec import parse_service_documents
path = Path(sys.argv[1])
text = path.read_text()
for name, read in [
    ("instances", lambda: parse_instances(text)),
    ("services", lambda: parse_service_documents(text)),
    ("config", lambda: load_config(path, {})),
]:
    try:
        read()
    except InvalidRequest as exc:
        print(name, exc.detail)
"""


@pytest.mark.parametrize("shape", sorted(DEEP_DOCUMENTS))
def test_deep_nesting_is_one_error_line_not_a_crash(tmp_path: Path, shape: str) -> None:
    document = tmp_path / "deep.yaml"
    document.write_text(DEEP_DOCUMENTS[shape])
    result = subprocess.run(
        [sys.executable, "-c", READERS, str(document)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-500:]}"
    assert result.stdout.splitlines() == [
        "instances instances file is nested too deeply",
        "services services file is nested too deeply",
        f"config {document}: nested too deeply",
    ]


def test_the_loader_still_reads_yaml_as_pyyaml_does() -> None:
    text = (
        "base: &b {x: 1}\nc:\n  <<: *b\n  y: [1, 2.5, true, null, 2001-01-01, '3', 0x10]\n"
        "d: !!str 12\ne: |\n  two\n  lines\n"
    )
    assert yamlfile.load(text) == yaml.safe_load(text)
    shallow = "[" * 50 + "]" * 50
    assert yamlfile.load(shallow) == yaml.safe_load(shallow)


IPV6_HINT = '; quote IPv6 addresses inside [...] and {...}: "'
FOUND = " (did not find expected node content)"  # what libyaml says of it


@pytest.mark.parametrize(
    ("line", "address"),
    [
        ("    ip: [::1]", "::1"),
        ("    ip: [10.0.0.1, ::ffff:10.0.0.1]", "::ffff:10.0.0.1"),
        ('    ip: ["::1", ::2]', "::2"),
    ],
)
def test_an_unquoted_ipv6_address_in_flow_style_gets_a_hint(line: str, address: str) -> None:
    text = f"instances:\n  - name: n1\n{line}\n"
    with pytest.raises(InvalidRequest) as instances:
        parse_instances(text)
    assert instances.value.detail == (
        f'instances file is not valid YAML at line 3{FOUND}{IPV6_HINT}{address}"'
    )
    service = SERVICE.replace("  targets: [{directory: /srv/b}]\n", "").replace(
        "  targets:",
        f"  selfSignedCertificate:\n    subjectAltNames: [{{ip: {address}}}]\n  targets:",
    )
    with pytest.raises(InvalidRequest) as services:
        parse_service_documents(service)
    assert (
        services.value.detail
        == f'services file is not valid YAML at line 6{FOUND}{IPV6_HINT}{address}"'
    )
    # Quoted, the same address reads.
    (only,) = parse_instances(text.replace(address, f'"{address}"'))
    expected = ipaddress.ip_address(address)
    if isinstance(expected, ipaddress.IPv6Address) and expected.ipv4_mapped is not None:
        expected = expected.ipv4_mapped  # issued as the IPv4 address clients connect to
    assert only.sans.ip[-1] == expected


@pytest.mark.parametrize(
    "text",
    [
        "a: [",  # no address at all
        'a: ["::1"\n',  # quoted: something else is wrong
        "a: [2001:db8::1, 10.0.0.1\n",  # reads fine unquoted; the list is not closed
        "ip: ::1\nb: [\n",  # the address is on another line than the error
        "a: [x:y:z]]\n",  # two colons, no address
    ],
)
def test_no_ipv6_hint_without_an_unquoted_address_on_the_failing_line(text: str) -> None:
    with pytest.raises(yaml.YAMLError) as exc:
        yamlfile.load(text)
    assert "quote IPv6" not in yamlfile.syntax_error(text, exc.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "metadata:\n\tname: web\n",
            "line 2 (found character that cannot start any token); a tab at column 1",
        ),
        (
            "a: 1\nb:\n  - x\n  -\ty\n",
            "line 4 (found character that cannot start any token); a tab at column 4",
        ),
    ],
)
def test_a_tab_where_yaml_wants_spaces_is_named(text: str, line: str) -> None:
    # Before: "not valid YAML at line 2", and a tab looks like spaces in every editor.
    with pytest.raises(yaml.YAMLError) as exc:
        yamlfile.load(text)
    assert yamlfile.syntax_error(text, exc.value) == (
        f"not valid YAML at {line}: YAML indents with spaces, not tabs"
    )
