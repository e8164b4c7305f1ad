"""A tiny in-memory Store (control_plane.resources.Store) for tests of what reads the store."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime

from control_plane.resources import Change, Conflict, NotFound, Resource, ResourceKey, Revision, Spec

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class MemoryStore:
    def __init__(self) -> None:
        self._live: dict[ResourceKey, Resource] = {}
        self._history: dict[ResourceKey, list[Revision]] = {}
        self._revision = 0

    def get(self, key: ResourceKey) -> Resource | None:
        return self._live.get(key)

    def list_resources(self, kind: str | None = None, namespace: str | None = None) -> list[Resource]:
        return [
            r
            for key, r in sorted(self._live.items())
            if (kind is None or key.kind == kind) and (namespace is None or key.namespace == namespace)
        ]

    def apply(self, changes: Sequence[Change], now: datetime) -> list[Resource | None]:
        for change in changes:
            current = self._live.get(change.key)
            actual = current.resource_version if current is not None else 0
            if change.expected_version is not None and change.expected_version != actual:
                raise Conflict(change.key, change.expected_version, actual)
            if change.spec is None and current is None:
                raise NotFound(change.key)
        results: list[Resource | None] = []
        for change in changes:
            current = self._live.get(change.key)
            if change.spec is not None and current is not None and current.spec == change.spec:
                results.append(current)
                continue
            self._revision += 1
            spec: Spec | None = copy.deepcopy(dict(change.spec)) if change.spec is not None else None
            self._history.setdefault(change.key, []).append(Revision(change.key, self._revision, now, spec))
            if spec is None:
                del self._live[change.key]
                results.append(None)
            else:
                resource = Resource(change.key, spec, self._revision, now)
                self._live[change.key] = resource
                results.append(resource)
        return results

    def put(self, kind: str, namespace: str, name: str, spec: Spec) -> Resource:
        """Test shorthand: an unconditional write of one resource."""
        resource = self.apply([Change(ResourceKey(kind, namespace, name), spec)], EPOCH)[0]
        assert resource is not None
        return resource

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.apply([Change(ResourceKey(kind, namespace, name), None)], EPOCH)

    def history(self, key: ResourceKey) -> list[Revision]:
        return list(self._history.get(key, []))

    def revision(self) -> int:
        return self._revision

    def close(self) -> None:
        pass
