"""Policy documents: YAML of the Istio kinds the mesh supports → validated, canonical resources.

```python
docs = validate_all(parse_yaml(text))    # list[Document], or ValidationError for the first problem
```

Every problem is a :class:`ValidationError` naming the document (``VirtualService users``, or
``document 2`` when its kind or name is unknown), the field path (``spec.http[0].route``) and
the reason. A field the mesh does not support is an error that says so, never ignored.

A :class:`Document`'s ``spec`` is canonical: plain JSON (dicts, lists, strings, numbers, booleans)
with exactly the fields the user wrote, in their order, checked — defaults are not filled in,
durations stay the strings given (``"1.5s"``), nulls are dropped as absent. The envelope:

```yaml
apiVersion: networking.istio.io/v1    # v1, v1beta1, v1alpha3 (VirtualService, DestinationRule);
kind: VirtualService                  # security.istio.io/v1, v1beta1 for the security kinds;
                                      # policy.grpc-mesh.io/v1alpha1 for RateLimitPolicy
metadata:
  name: users                         # DNS-1123 label
  namespace: default                  # the default
  resourceVersion: "12"               # optional: apply only if the stored version is 12 (0: new)
  labels: {team: identity}            # optional, not part of the spec
  annotations: {owner: alice}         # optional, not part of the spec
spec: {...}
```

One module per kind holds its schema (its docstring shows what is supported); ``fields`` holds
the shared checks (durations, percentages, names, regexes).
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from control_plane.policy import (
    authorization_policy,
    destination_rule,
    peer_authentication,
    rate_limit_policy,
    request_authentication,
    virtual_service,
)
from control_plane.policy.fields import (
    Invalid,
    any_string,
    child,
    describe,
    dns_label,
    fields,
    label_key,
    labels,
    map_of,
    one_of_words,
    quoted,
)
from control_plane.resources import KINDS, ResourceKey

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = [
    "API_VERSIONS",
    "DEFAULT_NAMESPACE",
    "MAX_DEPTH",
    "MAX_DOCUMENTS",
    "MAX_DOCUMENT_BYTES",
    "MAX_YAML_BYTES",
    "Document",
    "ValidationError",
    "document_label",
    "parse_yaml",
    "validate",
    "validate_all",
]

MAX_DOCUMENT_BYTES = 256 * 1024
"""The largest document accepted, measured as compact JSON."""
MAX_DOCUMENTS = 500
"""The most documents in one batch (one parse_yaml text, one validate_all call)."""
MAX_YAML_BYTES = 4 * 1024 * 1024
"""The longest YAML text parse_yaml reads (in UTF-8 bytes)."""
MAX_DEPTH = 32
"""The deepest nesting of mappings and lists in a document (the supported kinds need under 10)."""
_MIB = MAX_YAML_BYTES // (1024 * 1024)

DEFAULT_NAMESPACE = "default"

_NETWORKING = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")
_SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")
_MESH_POLICY = ("policy.grpc-mesh.io/v1alpha1",)  # the mesh's own kinds, where Istio has none

API_VERSIONS: dict[str, tuple[str, ...]] = {
    "VirtualService": _NETWORKING,
    "DestinationRule": _NETWORKING,
    "PeerAuthentication": _SECURITY,
    "AuthorizationPolicy": _SECURITY,
    "RequestAuthentication": _SECURITY,
    "RateLimitPolicy": _MESH_POLICY,
}

_SPECS: dict[str, Callable[[object, str], dict[str, Any]]] = {
    "VirtualService": virtual_service.validate_spec,
    "DestinationRule": destination_rule.validate_spec,
    "PeerAuthentication": peer_authentication.validate_spec,
    "AuthorizationPolicy": authorization_policy.validate_spec,
    "RequestAuthentication": request_authentication.validate_spec,
    "RateLimitPolicy": rate_limit_policy.validate_spec,
}
assert set(_SPECS) == set(KINDS) == set(API_VERSIONS)


class ValidationError(Exception):
    """A document the mesh cannot accept: which document, which field, why.

    ``document`` is ``"<Kind> <name>"`` (``"<Kind> <namespace>/<name>"`` outside the default
    namespace), or ``"document N"`` (1-based) when the kind or name is unknown; ``"input"`` or
    ``"batch"`` for problems with the whole text or batch. ``path`` is empty when the problem is
    the document as a whole (and then ``str(err)`` leaves it out). For invalid YAML, ``line`` and
    ``column`` (1-based) say where in the text, as the reason does in words.
    """

    def __init__(
        self, document: str, path: str, reason: str, *, line: int | None = None, column: int | None = None
    ) -> None:
        super().__init__(document, path, reason)
        self.document = document
        self.path = path
        self.reason = reason
        self.line = line
        self.column = column

    def __str__(self) -> str:
        if self.path:
            return f"{self.document}: {self.path}: {self.reason}"
        return f"{self.document}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Document:
    """One validated document. ``expected_version`` is metadata.resourceVersion (None when not
    given): the store applies the change only if the resource is at that version (0: absent).
    ``delete`` marks a deletion (set by callers such as ``meshctl delete``; never by validate)."""

    key: ResourceKey
    spec: dict[str, Any]
    expected_version: int | None
    delete: bool = False


# ---------------------------------------------------------------------------------------------
# YAML


def _refuse_duplicate_keys(loader: yaml.SafeLoader | _BaseLoader, node: yaml.MappingNode) -> None:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: the base class says so
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)


class _Loader(_BaseLoader):
    """The safe loader (libyaml's when PyYAML has it), refusing duplicate keys in a mapping
    (PyYAML would silently keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        _refuse_duplicate_keys(self, node)
        return super().construct_mapping(node, deep=deep)


class _ExplainingLoader(yaml.SafeLoader):
    """The pure-Python loader: slower, but its messages name the offending character or alias,
    so it re-reads a text that _Loader refused, to explain why."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        _refuse_duplicate_keys(self, node)
        return super().construct_mapping(node, deep=deep)


def _read(text: str, loader_class: type[yaml.SafeLoader | _BaseLoader]) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    total = 0
    loader = loader_class(text)
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            data = loader.get_data()
            if data is None:
                continue
            # A list is a JSON array of documents, as `meshctl get -o json` prints.
            for item in data if isinstance(data, list) else [data]:
                index = len(documents)
                if not isinstance(item, dict):
                    raise ValidationError(
                        f"document {index + 1}",
                        "",
                        f"must be a mapping (apiVersion, kind, ...), got {describe(item)}",
                    )
                if index == MAX_DOCUMENTS:
                    raise ValidationError(
                        "input", "", f"more than {MAX_DOCUMENTS} documents; split the input"
                    )
                total += _check_read(item, index)
                if total > MAX_YAML_BYTES:
                    raise ValidationError(
                        "input", "", f"larger than {_MIB} MiB as JSON (with aliases expanded)"
                    )
                documents.append(item)
    except yaml.YAMLError as err:
        mark = err.problem_mark or err.context_mark if isinstance(err, yaml.MarkedYAMLError) else None
        raise ValidationError(
            f"document {len(documents) + 1}",
            "",
            _yaml_reason(err),
            line=None if mark is None else mark.line + 1,
            column=None if mark is None else mark.column + 1,
        ) from None
    except RecursionError:
        raise ValidationError(
            f"document {len(documents) + 1}", "", "invalid YAML: nested too deeply"
        ) from None
    finally:
        loader.dispose()
    return documents


def _check_read(document: dict[str, Any], index: int) -> int:
    """A document as read: its size as JSON, or ValidationError when it is too big or too deep (measured
    before anything else walks it, stopping at the limit, so YAML aliases cannot make it expensive) or
    holds a value JSON cannot carry."""
    size, problem = _measure(document)
    if problem is None:
        problem = _not_json(document, "")
    if problem is not None:
        raise ValidationError(document_label(document, index), *problem)
    return size


def _not_json(value: object, path: str) -> tuple[str, str] | None:
    """The first value JSON cannot carry, as (path, reason): YAML can say more than JSON (non-string
    keys: ``on:`` is the boolean true in YAML 1.1; dates; binary; NaN), and such values would change
    meaning on the way. Only called on a document _measure passed, so the walk is small."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                hint = ", as it does on/off/yes/no" if isinstance(key, bool) else ""
                return path, f"key {key!r} is not a string (YAML reads it as {describe(key)}{hint}; quote it)"
            found = _not_json(item, child(path, key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _not_json(item, f"{path}[{index}]")
            if found:
                return found
    elif isinstance(value, float):
        if not math.isfinite(value):
            return path, f"{value} is not a number JSON can carry"
    elif value is not None and not isinstance(value, str | int):
        what = _YAML_TYPES.get(type(value), type(value).__name__)
        return (
            path,
            f"YAML reads this value as {what}, which JSON cannot carry; quote it if it is meant as a string",
        )
    return None


_YAML_TYPES = {
    datetime.date: "a date",
    datetime.datetime: "a timestamp",
    bytes: "binary (!!binary)",
    set: "a set (!!set)",
    tuple: "a pair (!!pairs, !!omap)",
}


def _yaml_reason(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "syntax error"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"invalid YAML: {problem}{where}"
    return f"invalid YAML: {err}"


def parse_yaml(text: str) -> list[dict[str, Any]]:
    """The documents of a multi-document YAML (or JSON) text as JSON values, empty documents skipped
    and a document that is a list (a JSON array of documents) read as its items. The one YAML reader:
    the REST API's ``application/yaml`` bodies and ``meshctl apply`` both read with it.

    Raises ValidationError for invalid YAML (naming the line), duplicate keys, a document that is
    not a mapping, a value JSON cannot carry (a non-string key, a date, binary, NaN), a document
    over MAX_DOCUMENT_BYTES or MAX_DEPTH, more than MAX_DOCUMENTS documents, or documents over
    MAX_YAML_BYTES together (as JSON: YAML aliases can make a short text expand)."""
    if len(text) > MAX_YAML_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise ValidationError("input", "", f"larger than {_MIB} MiB")
    try:
        return _read(text, _Loader)
    except ValidationError as err:
        if not err.reason.startswith("invalid YAML"):
            raise
        try:  # the same text through the pure-Python parser, for a more precise message
            _read(text, _ExplainingLoader)
        except ValidationError as explained:
            if explained.document == err.document:
                raise explained from None
        raise


# ---------------------------------------------------------------------------------------------
# Documents

_SHOWN_NAME = re.compile(r"[\x21-\x7e]{1,253}")


def document_label(document: object, index: int = 0) -> str:
    """How errors name a document: ``VirtualService users``, ``VirtualService prod/users``, or
    ``document N`` (``index`` is 0-based, shown 1-based) when its kind or name is unknown."""
    if isinstance(document, Mapping):
        kind, metadata = document.get("kind"), document.get("metadata")
        if isinstance(kind, str) and kind in KINDS and isinstance(metadata, Mapping):
            name, namespace = metadata.get("name"), metadata.get("namespace")
            if isinstance(name, str) and _SHOWN_NAME.fullmatch(name):
                if (
                    isinstance(namespace, str)
                    and namespace != DEFAULT_NAMESPACE
                    and _SHOWN_NAME.fullmatch(namespace)
                ):
                    return f"{kind} {namespace}/{name}"
                return f"{kind} {name}"
    return f"document {index + 1}"


def _measure(document: object) -> tuple[int, tuple[str, str] | None]:
    """A document's size as compact JSON, and why it is too big or too deep (as a path and a
    reason) or None. Stops as soon as a limit is passed, so shared YAML aliases cannot make it
    expensive."""
    size = 0
    stack: list[tuple[object, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return size, ("", f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, str):
            size += (
                len(value) + 2
                if len(value) > MAX_DOCUMENT_BYTES
                else len(json.dumps(value, ensure_ascii=False))
            )
        elif isinstance(value, Mapping):
            size += 2 + 2 * len(value)
            for key, item in value.items():
                stack.append((key, depth + 1))
                stack.append((item, depth + 1))
        elif isinstance(value, list | tuple):
            size += 2 + len(value)
            stack.extend((item, depth + 1) for item in value)
        else:
            size += len(str(value))
        if size > MAX_DOCUMENT_BYTES:
            return size, (
                "",
                f"larger than {MAX_DOCUMENT_BYTES // 1024} KiB as JSON (the limit per document)",
            )
    return size, None


def _resource_version(value: object, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,18}", value):
        return int(value)
    raise Invalid(path, f"must be a non-negative integer (or a string of digits), got {describe(value)}")


_SERVER_SET = "it is set by the server; remove it"


def _metadata(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {
            "name": dns_label,
            "namespace": dns_label,
            "resourceVersion": _resource_version,
            "labels": labels(),
            "annotations": map_of(label_key, any_string),
        },
        required=("name",),
        hints={
            "uid": _SERVER_SET,
            "generation": _SERVER_SET,
            "creationTimestamp": _SERVER_SET,
            "managedFields": _SERVER_SET,
            "generateName": "give metadata.name",
        },
    )


def _validate(document: object) -> Document:
    if not isinstance(document, Mapping):
        raise Invalid("", f"must be a mapping (apiVersion, kind, metadata, spec), got {describe(document)}")
    _, problem = _measure(document)
    if problem:
        raise Invalid(*problem)
    for key in document:
        if key not in ("apiVersion", "kind", "metadata", "spec"):
            hint = "; status is set by the server, remove it" if key == "status" else ""
            raise Invalid(
                child("", key),
                f"field not supported{hint} (supported here: apiVersion, kind, metadata, spec)",
            )

    kind = document.get("kind")
    if kind is None:
        raise Invalid("kind", f"required; one of {one_of_words(KINDS)}")
    if not isinstance(kind, str) or kind not in KINDS:
        shown = quoted(kind) if isinstance(kind, str) else describe(kind)
        raise Invalid("kind", f"{shown} is not a supported kind; supported kinds: {', '.join(KINDS)}")

    versions = API_VERSIONS[kind]
    api_version = document.get("apiVersion")
    if api_version is None:
        raise Invalid("apiVersion", f"required; {kind} takes {one_of_words(versions)}")
    if api_version not in versions:
        shown = quoted(api_version) if isinstance(api_version, str) else describe(api_version)
        raise Invalid("apiVersion", f"{shown} is not an apiVersion of {kind}; use {one_of_words(versions)}")

    if document.get("metadata") is None:
        raise Invalid("metadata", "required (metadata.name names the resource)")
    metadata = _metadata(document["metadata"], "metadata")

    if document.get("spec") is None:
        raise Invalid("spec", "required")
    spec = _SPECS[kind](document["spec"], "spec")

    return Document(
        key=ResourceKey(kind, metadata.get("namespace", DEFAULT_NAMESPACE), metadata["name"]),
        spec=spec,
        expected_version=metadata.get("resourceVersion"),
    )


def validate(document: Mapping[str, Any], index: int = 0) -> Document:
    """Validate one document (``index``: its 0-based position, used to name it in errors when
    its kind or name is unknown). Raises ValidationError for the first problem found."""
    try:
        return _validate(document)
    except Invalid as err:
        raise ValidationError(document_label(document, index), err.path, err.reason) from None


def validate_all(documents: Sequence[Mapping[str, Any]]) -> list[Document]:
    """Validate a batch: every document, or ValidationError for the first problem. A batch may
    hold each resource (kind, namespace, name) once, and at most MAX_DOCUMENTS documents."""
    if len(documents) > MAX_DOCUMENTS:
        raise ValidationError(
            "batch", "", f"{len(documents)} documents; at most {MAX_DOCUMENTS} can be applied together"
        )
    result: list[Document] = []
    first_index: dict[ResourceKey, int] = {}
    for index, raw in enumerate(documents):
        document = validate(raw, index)
        if document.key in first_index:
            raise ValidationError(
                document_label(raw, index),
                "metadata.name",
                f"{document.key} is already in this batch (document {first_index[document.key] + 1}); "
                "give each resource once",
            )
        first_index[document.key] = index
        result.append(document)
    return result
