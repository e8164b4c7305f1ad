"""The policy API's operations, once: both the REST API (`control_plane.rest`) and the gRPC API
(`control_plane.grpc_api`) are thin adapters over :class:`PolicyService`.

Every write goes the same way: validate (nothing invalid gets further), plan the changes
against the current state under a write lock, apply them to the store in one atomic batch
(a stale ``resourceVersion`` is a conflict and nothing is written), then tell discovery so the
change is pushed. A dry run does everything but the write and the push, and returns the same
results: the action and a unified diff of the spec as YAML.

Validation and store calls take time (a batch of large documents; SQLite with a synced commit),
so they run in a worker thread, never on the event loop: an apply reads, validates, plans and
writes there in one call. The notification runs back on the event loop. Documents arrive as
plain JSON values, as parsed: validation's size limits come first, so a document whose YAML
aliases expand it enormously is refused before anything walks it in full. Errors are
:mod:`control_plane.api_errors`; a store failure is logged and answered with a generic INTERNAL
(its text names the store's file).
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ParamSpec, Protocol, TypeVar

import yaml

from control_plane.api_errors import ConflictError, Internal, InvalidArgument, NotFoundError
from control_plane.auth import Clock, utc_now
from control_plane.policy import API_VERSIONS, ValidationError, parse_yaml, validate, validate_all
from control_plane.resources import (
    KINDS,
    Change,
    Conflict,
    NotFound,
    Resource,
    ResourceKey,
    Revision,
    Spec,
    Store,
    StoreError,
    canonical_json,
)

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"

T = TypeVar("T")
P = ParamSpec("P")


class Action(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one change did (or, in a dry run, would do).

    ``resource_version`` is the revision the change wrote (a deletion's tombstone included), or
    the current one when nothing was written; 0 in a dry run for a change that would be written.
    ``spec`` is the resource's spec afterwards (None once deleted).
    """

    key: ResourceKey
    action: Action
    diff: str
    spec: Spec | None
    resource_version: int
    update_time: datetime | None


class SidecarRegistry(Protocol):
    def sidecars(self) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class Sidecars:
    """The registry's sidecar records (the fields of mesh.v1.SidecarStatus) and the store's revision."""

    records: list[Any]
    store_revision: int


@dataclass(frozen=True, slots=True)
class _Planned:
    key: ResourceKey
    spec: Spec | None  # None deletes
    expected_version: int | None


class PolicyService:
    def __init__(
        self,
        store: Store,
        *,
        registry: SidecarRegistry,
        notify: Callable[[], object],
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._registry = registry
        self._notify = notify
        self._clock = clock
        # Plan and write as one step, so the actions and diffs describe exactly what was written.
        self._write_lock = threading.Lock()

    # -- writes ---------------------------------------------------------------------------------

    async def apply(
        self, documents: Sequence[Mapping[str, Any]], *, dry_run: bool = False
    ) -> list[ApplyResult]:
        """Validate and store whole documents atomically: all of them or none."""
        results = await _in_thread(self._apply, documents, dry_run)
        self._after_write(results, dry_run)
        return results

    async def apply_yaml(self, text: str, *, dry_run: bool = False) -> list[ApplyResult]:
        """:meth:`apply` to the documents of a YAML stream (`control_plane.policy.parse_yaml`),
        parsed in the worker thread too."""
        results = await _in_thread(self._apply_yaml, text, dry_run)
        self._after_write(results, dry_run)
        return results

    def _apply_yaml(self, text: str, dry_run: bool) -> list[ApplyResult]:
        try:
            documents = parse_yaml(text)
        except ValidationError as exc:
            raise invalid_argument(exc) from None
        return self._apply(documents, dry_run)

    def _apply(self, documents: Sequence[Mapping[str, Any]], dry_run: bool) -> list[ApplyResult]:
        if not documents:
            raise InvalidArgument("no documents to apply")
        try:
            validated = validate_all(documents)
        except ValidationError as exc:
            raise invalid_argument(exc) from None
        planned = [
            _Planned(doc.key, None if doc.delete else doc.spec, doc.expected_version) for doc in validated
        ]
        return self._write(planned, dry_run)

    async def delete(
        self, key: ResourceKey, *, resource_version: int | None = None, dry_run: bool = False
    ) -> ApplyResult:
        """Delete one resource; with ``resource_version``, only if it is still at that version."""
        key = check_key(key)
        (result,) = await _in_thread(self._write, [_Planned(key, None, resource_version)], dry_run)
        self._after_write([result], dry_run)
        return result

    async def rollback(
        self,
        key: ResourceKey,
        to_version: int,
        *,
        resource_version: int | None = None,
        dry_run: bool = False,
    ) -> ApplyResult:
        """Make revision ``to_version``'s spec current again, as a new revision (a deletion deletes);
        with ``resource_version``, only if the resource is still at that version."""
        key = check_key(key)
        result = await _in_thread(self._rollback, key, to_version, resource_version, dry_run)
        self._after_write([result], dry_run)
        return result

    def _after_write(self, results: Sequence[ApplyResult], dry_run: bool) -> None:
        if not dry_run and any(result.action is not Action.UNCHANGED for result in results):
            self._notify()

    def _rollback(
        self, key: ResourceKey, to_version: int, expected_version: int | None, dry_run: bool
    ) -> ApplyResult:
        with self._write_lock:
            history = _store_call(self._store.history, key)
            if not history:
                raise NotFoundError(f"{key} not found")
            target = next((rev for rev in history if rev.resource_version == to_version), None)
            if target is None:
                versions = ", ".join(str(rev.resource_version) for rev in history)
                raise NotFoundError(f"{key} has no revision {to_version} (its revisions: {versions})")
            if target.spec is not None:
                _revalidate(key, target)
            current = _store_call(self._store.get, key)
            version = 0 if current is None else current.resource_version
            if expected_version is not None and expected_version != version:
                raise ConflictError(str(Conflict(key, expected_version, version)))
            if target.spec is None and current is None:
                # Rolling back to a deletion of something already deleted: nothing to do.
                return ApplyResult(key, Action.UNCHANGED, "", None, history[-1].resource_version, None)
            (result,) = self._write_locked([_Planned(key, target.spec, version)], dry_run)
            return result

    def _write(self, planned: Sequence[_Planned], dry_run: bool) -> list[ApplyResult]:
        with self._write_lock:
            return self._write_locked(planned, dry_run)

    def _write_locked(self, planned: Sequence[_Planned], dry_run: bool) -> list[ApplyResult]:
        before = {item.key: _store_call(self._store.get, item.key) for item in planned}
        for item in planned:
            _check_precondition(item, before[item.key])
        if dry_run:
            return [_dry_result(item, before[item.key]) for item in planned]
        changes = [Change(item.key, item.spec, item.expected_version) for item in planned]
        try:
            stored = self._store.apply(changes, self._clock())
        except Conflict as exc:
            raise ConflictError(str(exc)) from None
        except NotFound as exc:
            raise NotFoundError(str(exc)) from None
        except StoreError as exc:
            raise _internal("the store could not apply the change", exc) from None
        results = []
        for item, resource in zip(planned, stored, strict=True):
            old = before[item.key]
            if resource is None:
                tombstone = _store_call(self._store.history, item.key)[-1]
                diff = spec_diff(
                    item.key, old.spec if old else None, None, old.resource_version if old else 0
                )
                results.append(
                    ApplyResult(
                        item.key, Action.DELETED, diff, None, tombstone.resource_version, tombstone.time
                    )
                )
                continue
            if old is None:
                action = Action.CREATED
            elif old.resource_version == resource.resource_version:
                action = Action.UNCHANGED
            else:
                action = Action.UPDATED
            diff = (
                ""
                if action is Action.UNCHANGED
                else spec_diff(
                    item.key, old.spec if old else None, resource.spec, old.resource_version if old else 0
                )
            )
            results.append(
                ApplyResult(
                    item.key, action, diff, resource.spec, resource.resource_version, resource.update_time
                )
            )
        return results

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, key: ResourceKey) -> Resource:
        key = check_key(key)
        resource = await _read(self._store.get, key)
        if resource is None:
            raise NotFoundError(f"{key} not found")
        return resource

    async def list_resources(self, kind: str | None = None, namespace: str | None = None) -> list[Resource]:
        """Live resources, sorted by key; an empty or None filter matches everything."""
        if kind:
            check_kind(kind)
        return await _read(self._store.list_resources, kind or None, namespace or None)

    async def history(self, key: ResourceKey) -> list[Revision]:
        """Every revision of one resource, oldest first (deletions included)."""
        key = check_key(key)
        revisions = await _read(self._store.history, key)
        if not revisions:
            raise NotFoundError(f"{key} not found (it never existed)")
        return revisions

    async def revision(self) -> int:
        return await _read(self._store.revision)

    async def sidecars(self) -> Sidecars:
        # The revision first: a sidecar that ACKed it since is then correctly shown as up to date.
        revision = await self.revision()
        return Sidecars(list(self._registry.sidecars()), revision)


# -- helpers -----------------------------------------------------------------------------------


async def _in_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await asyncio.to_thread(function, *args, **kwargs)


def _internal(what: str, error: StoreError) -> Internal:
    """A store failure: logged in full, answered without the detail (it names the store's file)."""
    log.error("%s: %s", what, error)
    return Internal(f"{what} (see the control plane's log)")


def _store_call(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A store read; a store failure is the server's problem (INTERNAL), not the caller's."""
    try:
        return function(*args, **kwargs)
    except StoreError as exc:
        raise _internal("the store failed", exc) from None


async def _read(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    def call() -> T:
        return _store_call(function, *args, **kwargs)

    return await asyncio.to_thread(call)


def invalid_argument(error: ValidationError) -> InvalidArgument:
    return InvalidArgument(str(error), document=error.document, field=error.path or None, reason=error.reason)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidArgument(
            f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}", field="kind", reason="unknown kind"
        )
    return kind


def check_key(key: ResourceKey) -> ResourceKey:
    """The key as the API takes it: a known kind, a name, and the default namespace if none is given."""
    check_kind(key.kind)
    if not key.name:
        raise InvalidArgument(f"{key.kind}: a name is required", field="name", reason="required")
    if not key.namespace:
        return ResourceKey(key.kind, DEFAULT_NAMESPACE, key.name)
    return key


def _revalidate(key: ResourceKey, revision: Revision) -> None:
    """An old revision is validated again before it becomes current: the rules may have changed."""
    document = {
        "apiVersion": API_VERSIONS[key.kind][0],
        "kind": key.kind,
        "metadata": {"name": key.name, "namespace": key.namespace},
        "spec": revision.spec,
    }
    try:
        validate(document)
    except ValidationError as exc:
        raise InvalidArgument(
            f"cannot roll back to revision {revision.resource_version}: it is no longer valid: {exc}",
            document=exc.document,
            field=exc.path or None,
            reason=exc.reason,
        ) from None


def _check_precondition(item: _Planned, current: Resource | None) -> None:
    """What the store would refuse, checked before a dry run so it reports the same errors."""
    actual = 0 if current is None else current.resource_version
    if item.expected_version is not None and item.expected_version != actual:
        raise ConflictError(str(Conflict(item.key, item.expected_version, actual)))
    if item.spec is None and current is None:
        raise NotFoundError(str(NotFound(item.key)))


def _dry_result(item: _Planned, current: Resource | None) -> ApplyResult:
    old_spec = None if current is None else current.spec
    old_version = 0 if current is None else current.resource_version
    if item.spec is None:
        action = Action.DELETED
    elif current is None:
        action = Action.CREATED
    elif canonical_json(current.spec) == canonical_json(item.spec):  # as the store decides
        return ApplyResult(item.key, Action.UNCHANGED, "", current.spec, old_version, current.update_time)
    else:
        action = Action.UPDATED
    return ApplyResult(
        item.key, action, spec_diff(item.key, old_spec, item.spec, old_version), item.spec, 0, None
    )


def spec_yaml(spec: Spec) -> str:
    return yaml.safe_dump(dict(spec), sort_keys=True, default_flow_style=False, allow_unicode=True)


def spec_diff(key: ResourceKey, old: Spec | None, new: Spec | None, old_version: int) -> str:
    """A unified diff of two specs as YAML; /dev/null stands for a side that does not exist."""
    path = f"{key.kind}/{key.namespace}/{key.name}"
    before = "" if old is None else spec_yaml(old)
    after = "" if new is None else spec_yaml(new)
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile="/dev/null" if old is None else f"{path} (resourceVersion {old_version})",
            tofile="/dev/null" if new is None else path,
        )
    )
