"""OpenAPI 3.1 document generated from the route table and the Pydantic body models."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from certctl import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

    from certctl.api.app import ApiRoute

__all__ = ["build_openapi"]

_PROBLEM = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}


def build_openapi(routes: Sequence[ApiRoute]) -> dict[str, Any]:
    """Describe every route with its permission, body schema and error responses."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Problem": _PROBLEM}
    for route in routes:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.handler.__name__}",
            "responses": {str(route.success): {"description": "success"}},
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        if params:
            op["parameters"] = params
        if route.permission != "public":
            op["security"] = [{"bearer": []}]
            op["x-certctl-permission"] = route.permission
            for status in ("401", "403"):
                op["responses"][status] = _problem_ref(status)
        if route.body is not None:
            name = route.body.__name__
            schemas[name] = route.body.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            op["requestBody"] = {
                "required": route.success == 201
                and route.method == "POST"
                and name not in ("CertificateRenew",),
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}
                },
            }
            op["responses"]["400"] = _problem_ref("400")
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "certctl", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _problem_ref(status: str) -> dict[str, Any]:
    return {
        "description": "problem",
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
