"""Strict YAML: a key given twice is an error naming its line, in every file certctl reads."""

from __future__ import annotations

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
