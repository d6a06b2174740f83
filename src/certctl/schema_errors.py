"""Readable words for pydantic validation errors shared by config, service specs and the API.

pydantic answers a misspelt key with "Extra inputs are not permitted", which leaves the user
to find the right spelling in the docs; ``unknown_key`` names the closest known key instead,
or lists the keys the section takes. Works on the user's spelling (aliases: ``cert-dir``,
``passwordFile``), list items (``targets.0``) and tagged unions (``DirectoryTarget``).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from certctl.spelling import did_you_mean


def key_of(model: type[BaseModel], name: str) -> str:
    """The spelling a field is given in (its alias), ``cert-dir`` for ``cert_dir``."""
    field = model.model_fields[name]
    return field.alias or name


def field_name(model: type[BaseModel], key: Any) -> str | None:
    """The attribute a key as given (alias or name) fills in ``model``."""
    return next(
        (n for n in model.model_fields if key in (key_of(model, n), n)),
        None,
    )


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation may hold: ``X``, ``X | None``, ``list[X]``, tagged unions."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for model in _models_in(arg):
            if model not in found:
                found.append(model)
    return found


def models_at(root: type[BaseModel], loc: Sequence[Any]) -> list[type[BaseModel]]:
    """The section models that may hold the keys under ``loc`` (``()``: ``root`` itself).

    Empty when ``loc`` leaves the models (a key under a plain value, or an unknown key).
    """
    models = [root]
    for part in loc:
        if isinstance(part, int) or str(part).isdigit():
            continue  # an item of a list of sections
        tagged = [m for m in models if m.__name__ == part]
        if tagged and len(models) > 1:
            models = tagged  # pydantic names the member of a tagged union in the location
            continue
        inner: list[type[BaseModel]] = []
        for model in models:
            name = field_name(model, part)
            if name is not None:
                inner += [m for m in _models_in(model.model_fields[name].annotation)]
        models = list(dict.fromkeys(inner))
        if not models:
            return []
    return models


def unknown_key(root: type[BaseModel], loc: Sequence[Any]) -> str:
    """``unknown key`` with the closest known key, or the keys known there.

    ``loc``: pydantic's location of an ``extra_forbidden`` error, the unknown key last.
    """
    models = models_at(root, loc[:-1])
    known = sorted({key_of(m, n) for m in models for n in m.model_fields})
    if not known:
        return "unknown key"
    hint = did_you_mean(str(loc[-1]), known)
    if hint:
        return f"unknown key ({hint})"
    return "unknown key (known here: " + ", ".join(known) + ")"


def message(root: type[BaseModel], error: Any, *, mapping: str = "a mapping") -> str:
    """Pydantic's message for ``error`` (one of ``ValidationError.errors()``), in our words.

    ``mapping``: what a section is called where it is written (YAML: a mapping; JSON: an
    object).
    """
    if error["type"] == "extra_forbidden":
        return unknown_key(root, error["loc"])
    if error["type"] in ("model_type", "dict_type"):
        # `tls: 5`: pydantic names its class ("instance of TLSConfig").
        return f"expected {mapping}"
    if error["type"] == "bool_type":
        # A strict boolean (a switch of the service spec or of the server config) given "yes"
        # or 1: pydantic's "Input should be a valid boolean" did not say that quoting made it
        # a string.
        value = error.get("input")
        if isinstance(value, str):
            return f"{value[:40]!r} is a string; give true or false (unquoted in YAML)"
        # As YAML and JSON spell it (null, [true], 1.5), not Python's repr (None, [True]).
        shown = json.dumps(value, default=str)[:40]
        return f"{shown} is not a boolean; give true or false"
    return str(error["msg"]).removeprefix("Value error, ")  # pydantic's, for ValueError
