"""Policy documents on the client side: kind names and their aliases, reading YAML files into
JSON-ready documents (with the control plane's own reader, `control_plane.policy.parse_yaml`, so
what meshctl sends is what the server would read: duplicate keys refused, values JSON cannot carry
refused, errors naming the file, the document and the line), and turning a stored resource back
into the document form that `meshctl apply` takes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from control_plane.policy import ValidationError, document_label, parse_yaml
from meshctl.api_client import Resource

# Kind → the apiVersion its documents carry (Istio's, since these are Istio's kinds).
API_VERSIONS: dict[str, str] = {
    "VirtualService": "networking.istio.io/v1",
    "DestinationRule": "networking.istio.io/v1",
    "PeerAuthentication": "security.istio.io/v1",
    "AuthorizationPolicy": "security.istio.io/v1",
    "RequestAuthentication": "security.istio.io/v1",
    "RateLimitPolicy": "policy.grpc-mesh.io/v1alpha1",
}

_SHORT_NAMES = {
    "VirtualService": ("vs",),
    "DestinationRule": ("dr",),
    "PeerAuthentication": ("pa",),
    "AuthorizationPolicy": ("ap",),
    "RequestAuthentication": ("ra",),
    "RateLimitPolicy": ("rl",),
}


def _plural(kind: str) -> str:
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


KIND_ALIASES: dict[str, str] = {
    alias: kind for kind, shorts in _SHORT_NAMES.items() for alias in (kind.lower(), _plural(kind), *shorts)
}

YAML_SUFFIXES = (".yaml", ".yml", ".json")


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
    """One document and where it came from, for messages ("users.yaml (VirtualService users)")."""

    origin: str
    document: dict[str, Any]


def load_documents(paths: Sequence[str], stdin: TextIO | None = None) -> list[SourcedDocument]:
    """Read every document from every path ("-" is stdin; a directory means its *.yaml, *.yml and
    *.json files; a JSON array is read as its documents). Raises InputError for unreadable files
    and whatever parse_yaml refuses (invalid YAML, duplicate keys, a document that is not a mapping
    or holds a value JSON cannot carry, too big); nothing is returned unless every document is good."""
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
    try:
        documents = parse_yaml(text)
    except ValidationError as exc:
        if exc.line is not None:  # invalid YAML: file:line:column, as editors read it
            where = f" at line {exc.line}, column {exc.column}"
            raise InputError(f"{label}:{exc.line}:{exc.column}: {exc.reason.removesuffix(where)}") from None
        raise InputError(f"{label}: {exc}") from None
    return [
        SourcedDocument(f"{label} ({document_label(document, index)})", document)
        for index, document in enumerate(documents)
    ]


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
