"""Policy documents on the client side: kind names and their aliases, reading YAML files into
JSON-ready documents (with errors that name the file and line), and turning a stored resource
back into the document form that `meshctl apply` takes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from meshctl.api_client import Resource

# Kind → the apiVersion its documents carry (Istio's, since these are Istio's kinds).
API_VERSIONS: dict[str, str] = {
    "VirtualService": "networking.istio.io/v1",
    "DestinationRule": "networking.istio.io/v1",
    "PeerAuthentication": "security.istio.io/v1",
    "AuthorizationPolicy": "security.istio.io/v1",
    "RequestAuthentication": "security.istio.io/v1",
}

_SHORT_NAMES = {
    "VirtualService": ("vs",),
    "DestinationRule": ("dr",),
    "PeerAuthentication": ("pa",),
    "AuthorizationPolicy": ("ap",),
    "RequestAuthentication": ("ra",),
}


def _plural(kind: str) -> str:
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


KIND_ALIASES: dict[str, str] = {
    alias: kind for kind, shorts in _SHORT_NAMES.items() for alias in (kind.lower(), _plural(kind), *shorts)
}

YAML_SUFFIXES = (".yaml", ".yml", ".json")
_BOOLEAN_HINT = ", as it does on/off/yes/no"


class InputError(ValueError):
    """Bad input from the user (a file, a kind name): a usage error, exit code 2."""


def resolve_kind(text: str) -> str:
    """`vs`, `VirtualServices`, `virtualservice` → `VirtualService`."""
    kind = KIND_ALIASES.get(text.strip().lower())
    if kind is None:
        known = ", ".join(f"{k} ({'/'.join(_SHORT_NAMES[k])})" for k in API_VERSIONS)
        raise InputError(f"unknown kind {text!r}; known kinds: {known}")
    return kind


@dataclass(frozen=True, slots=True)
class SourcedDocument:
    """One document and where it came from, for messages ("users.yaml:12 (document 2)")."""

    origin: str
    document: dict[str, Any]


def load_documents(paths: Sequence[str], stdin: TextIO | None = None) -> list[SourcedDocument]:
    """Read every document from every path ("-" is stdin; a directory means its *.yaml, *.yml and
    *.json files). Raises InputError for unreadable files, invalid YAML or a document that is not
    a JSON-compatible mapping; nothing is returned unless every document is good."""
    if list(paths).count("-") > 1:
        raise InputError("'-' (standard input) can be given only once")
    documents: list[SourcedDocument] = []
    for path in paths:
        for label, text in _read_sources(path, stdin):
            documents.extend(_parse(label, text))
    if not documents:
        raise InputError(f"no documents in {', '.join('<stdin>' if p == '-' else p for p in paths)}")
    return documents


def _read_sources(path: str, stdin: TextIO | None) -> Iterator[tuple[str, str]]:
    if path == "-":
        yield "<stdin>", (stdin or sys.stdin).read()
        return
    target = Path(path)
    files = (
        sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in YAML_SUFFIXES)
        if target.is_dir()
        else [target]
    )
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise InputError(f"cannot read {file}: {exc.strerror or exc}") from None
        yield str(file), text


def _parse(label: str, text: str) -> list[SourcedDocument]:
    loader = yaml.SafeLoader(text)
    found: list[SourcedDocument] = []
    try:
        number = 0
        while loader.check_node():
            number += 1
            line = loader.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
            data = loader.get_data()
            origin = f"{label}:{line} (document {number})"
            found.extend(_documents_in(origin, data))
    except yaml.MarkedYAMLError as exc:
        raise InputError(_describe_yaml_error(label, exc)) from None
    except yaml.YAMLError as exc:
        raise InputError(f"{label}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return found


def _describe_yaml_error(label: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark is not None else label
    problem = exc.problem or "invalid YAML"
    context = ""
    if exc.context:
        started = exc.context_mark
        moved = started is not None and (mark is None or started.line != mark.line)
        at = f" at line {started.line + 1}" if started is not None and moved else ""
        context = f" ({exc.context}{at})"
    return f"{where}: invalid YAML: {problem}{context}"


def _documents_in(origin: str, data: Any) -> Iterator[SourcedDocument]:
    if data is None:  # an empty document, e.g. a trailing '---'
        return
    if isinstance(data, list):  # a JSON array of documents, as `meshctl get -o json` prints
        for index, item in enumerate(data):
            yield from _documents_in(f"{origin}, item {index + 1}", item)
        return
    if not isinstance(data, dict):
        raise InputError(
            f"{origin}: expected a mapping (apiVersion, kind, metadata, spec), got {_type(data)}"
        )
    _check_json_compatible(origin, data, "")
    yield SourcedDocument(origin, data)


def _type(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _check_json_compatible(origin: str, value: Any, path: str) -> None:
    """YAML can say things JSON cannot: non-string keys (`on:` is the boolean true in YAML 1.1),
    dates, binary, NaN. Refuse them here rather than let them change meaning on the way."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                hint = _BOOLEAN_HINT if isinstance(key, bool) else ""
                raise InputError(
                    f"{origin}: key {key!r} at {path or 'the top level'} is not a string "
                    f"(YAML reads it as {_type(key)}{hint}; quote it)"
                )
            _check_json_compatible(origin, item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_compatible(origin, item, f"{path}[{index}]")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(f"{origin}: {path}: {value} is not a number JSON can carry")
    elif value is not None and not isinstance(value, str | int | bool):
        raise InputError(
            f"{origin}: {path}: YAML reads this value as {_type(value)}, which JSON cannot carry; "
            "quote it if it is meant as a string"
        )


def describe(document: Mapping[str, Any]) -> str:
    """`VirtualService default/users`, as far as the document says."""
    metadata = document.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    kind = document.get("kind") or "(no kind)"
    name = metadata.get("name") or "(no name)"
    namespace = metadata.get("namespace") or "default"
    return f"{kind} {namespace}/{name}"


def to_document(resource: Resource) -> dict[str, Any]:
    """The document form of a stored resource: what `meshctl apply` takes back unchanged."""
    metadata: dict[str, Any] = {"name": resource.name, "namespace": resource.namespace}
    if resource.resource_version:
        metadata["resourceVersion"] = str(resource.resource_version)
    return {
        "apiVersion": API_VERSIONS.get(resource.kind, "mesh.v1"),
        "kind": resource.kind,
        "metadata": metadata,
        "spec": resource.spec,
    }


def dump_yaml(documents: Sequence[Mapping[str, Any]]) -> str:
    """Documents as a YAML stream, `---` between them."""
    return "---\n".join(
        yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False, allow_unicode=True)
        for doc in documents
    )


def changed_paths(old: Any, new: Any, path: str = "") -> list[str]:
    """The paths (`http[0].timeout`) where two JSON values differ, in document order."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths: list[str] = []
        for key in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                paths.append(sub)
            else:
                paths.extend(changed_paths(old[key], new[key], sub))
        return paths
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        pairs = enumerate(zip(old, new, strict=True))
        return [p for i, (a, b) in pairs for p in changed_paths(a, b, f"{path}[{i}]")]
    return [] if old == new else [path or "(whole spec)"]
