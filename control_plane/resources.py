"""Policy resources as the control plane stores them, and the store's interface.

A resource is one validated YAML document (kind, namespace, name, spec). Every change gets the
store's next revision number, which becomes the resource's `resource_version` (one counter for
the whole store, as in etcd), so a version says both "which change" and "in what order".
Deleting keeps the history: the last revision is a tombstone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

KINDS = (
    "VirtualService",
    "DestinationRule",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "RateLimitPolicy",
)

Spec = Mapping[str, Any]  # JSON-compatible: dicts, lists, str, int, float, bool, None


def canonical_json(spec: Spec) -> str:
    """The one text form of a spec: equal specs give equal strings. Stores keep specs in this form
    and decide "unchanged" by it, and so does a dry run (where Python's ``True == 1 == 1.0`` would
    not agree)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True, order=True)
class ResourceKey:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Resource:
    key: ResourceKey
    spec: Spec
    resource_version: int
    update_time: datetime  # UTC


@dataclass(frozen=True, slots=True)
class Revision:
    """One entry of a resource's history; `spec` is None for a deletion."""

    key: ResourceKey
    resource_version: int
    time: datetime
    spec: Spec | None


@dataclass(frozen=True, slots=True)
class Change:
    """One write in an atomic batch. `spec` None deletes. `expected_version` None is an
    unconditional write; otherwise it must equal the current resource_version (0 = must not exist)."""

    key: ResourceKey
    spec: Spec | None
    expected_version: int | None = None


class StoreError(Exception):
    """The store could not do what was asked; nothing was written."""


class Conflict(StoreError):
    def __init__(self, key: ResourceKey, expected: int, actual: int) -> None:
        super().__init__(
            f"{key}: resourceVersion {expected} is stale (current is {actual})"
            if actual
            else f"{key}: resourceVersion {expected} given, but the resource does not exist"
        )
        self.key = key
        self.expected = expected
        self.actual = actual


class NotFound(StoreError):
    def __init__(self, key: ResourceKey) -> None:
        super().__init__(f"{key} not found")
        self.key = key


class Store(Protocol):
    """Where resources live. Writes are atomic and durable; implementations: SQLite (embedded,
    the default) and, later, Redis (several control-plane replicas)."""

    def get(self, key: ResourceKey) -> Resource | None: ...

    def list_resources(self, kind: str | None = None, namespace: str | None = None) -> list[Resource]:
        """Live resources (no tombstones), sorted by key."""

    def apply(self, changes: Sequence[Change], now: datetime) -> list[Resource | None]:
        """Write all changes atomically (all or none), each with the next revision. Returns, per
        change, the resource as stored (None for a deletion). A change whose spec equals the
        current spec writes nothing and returns the current resource. Raises Conflict or
        NotFound (deleting what does not exist) and then writes nothing."""

    def history(self, key: ResourceKey) -> list[Revision]:
        """Every revision of one resource, oldest first (empty if it never existed)."""

    def revision(self) -> int:
        """The store's latest revision (0 when empty)."""

    def close(self) -> None: ...
