"""Render deploy/helm/certctl with a real Helm engine (helm-python-sdk embeds Helm v4).

Every tool is a dev dependency (``uv sync``); a missing one fails the test with the install
command instead of skipping it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certctl import yamlfile

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "certctl"
SCHEMA = Path(__file__).with_name("servicemonitor-v1.schema.json")
RELEASE = "certctl"
NAMESPACE = "certs"
KUBERNETES_VERSION = "1.30.0"
INSTALL = "install the dev dependencies with 'uv sync' (pip install helm-python-sdk "
INSTALL += "kubernetes-validate jsonschema)"

Rendered = dict[tuple[str, str], dict[str, Any]]


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        pytest.fail(f"{module} is missing: {INSTALL}", pytrace=False)


@pytest.fixture(scope="session")
def helm() -> Any:
    return _need("helm_python")


@pytest.fixture(scope="session")
def chart(helm: Any) -> Any:
    return helm.Chart.load(str(CHART))


@pytest.fixture(scope="session")
def render(chart: Any) -> Callable[..., Rendered]:
    """Render with ``values``; return {(kind, name): object} for every non-empty document.

    Objects outside the release namespace are keyed ``(kind, "namespace/name")``.
    """
    cache: dict[str, Rendered] = {}

    def _render(values: dict[str, Any] | None = None) -> Rendered:
        key = json.dumps(values or {}, sort_keys=True)
        if key not in cache:
            files = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
            objects: Rendered = {}
            for path, text in sorted(files.items()):
                if path.endswith("NOTES.txt"):
                    continue
                # Strict: a key rendered twice (a user label over the chart's) is a
                # manifest the API server's decoder refuses; PyYAML would keep the last.
                for doc in yamlfile.load_all(text):
                    if doc:
                        name, ns = doc["metadata"]["name"], doc["metadata"].get("namespace")
                        if ns not in (None, NAMESPACE):
                            name = f"{ns}/{name}"  # objects outside the release namespace
                        ident = (doc["kind"], name)
                        assert ident not in objects, f"{ident} rendered twice"
                        objects[ident] = doc
            cache[key] = objects
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def kubernetes_validate() -> Any:
    return _need("kubernetes_validate")


@pytest.fixture(scope="session")
def servicemonitor_validator() -> Any:
    jsonschema = _need("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)
