"""Helpers for the policy validation tests: build documents, edit one field, expect an error."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from control_plane.policy import API_VERSIONS, Document, ValidationError, validate

DELETE = object()
"""edit(..., DELETE) removes the field."""

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def doc(kind: str, spec: Any, name: str = "users", **metadata: Any) -> dict[str, Any]:
    """A document of ``kind`` with the first apiVersion it accepts."""
    return {
        "apiVersion": API_VERSIONS[kind][0],
        "kind": kind,
        "metadata": {"name": name, **metadata},
        "spec": spec,
    }


def edit(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``document`` with the field at ``path`` (``spec.http[0].route``) set to
    ``value`` (or removed, for DELETE). Missing mappings on the way are created."""
    result = copy.deepcopy(document)
    tokens = [int(index) if index else key for key, index in _TOKEN.findall(path)]
    node: Any = result
    for token in tokens[:-1]:
        if isinstance(token, str) and token not in node:
            node[token] = {}
        node = node[token]
    last = tokens[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return result


def valid(document: dict[str, Any]) -> Document:
    return validate(document)


def invalid(document: Any, index: int = 0) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate(document, index)
    return info.value


def check_error(document: Any, path: str, reason: str, label: str = "") -> None:
    """``document`` is refused at ``path``; the reason contains ``reason`` (or equals it, when
    ``reason`` starts with '='); the document is named ``label`` when given."""
    err = invalid(document)
    assert err.path == path, str(err)
    if reason.startswith("="):
        assert err.reason == reason[1:], str(err)
    else:
        assert reason in err.reason, str(err)
    if label:
        assert err.document == label, str(err)
    assert str(err) == (
        f"{err.document}: {err.path}: {err.reason}" if err.path else f"{err.document}: {err.reason}"
    )
