"""PolicyService, the one implementation behind the REST and gRPC APIs: on a real SqliteStore
and a real Registry, with a counting stand-in for discovery's notify_changed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane import policy_service
from control_plane.api_errors import ConflictError, Internal, InvalidArgument, NotFoundError
from control_plane.policy_service import Action, ApplyResult, spec_diff
from control_plane.resources import Change, ResourceKey, StoreError
from control_plane.sqlite_store import STORE_FILE
from tests.support.policy_api import (
    NOW,
    USERS,
    Harness,
    destination_rule,
    harness,
    register_sidecar,
    virtual_service,
)

RULE = ResourceKey("DestinationRule", "default", "users")


def run(body: Any) -> Any:
    return asyncio.run(body)


def apply(h: Harness, *documents: dict[str, Any], dry_run: bool = False) -> list[ApplyResult]:
    results: list[ApplyResult] = run(h.service.apply(list(documents), dry_run=dry_run))
    return results


def test_apply_creates_then_updates_then_leaves_unchanged(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        created = apply(h, virtual_service(), destination_rule())
        assert [(r.key, r.action, r.resource_version) for r in created] == [
            (USERS, Action.CREATED, 1),
            (RULE, Action.CREATED, 2),
        ]
        assert created[0].update_time == NOW
        assert created[0].diff.startswith("--- /dev/null\n+++ VirtualService/default/users\n")
        assert "+  - destination:\n" in created[0].diff
        assert h.notifier.calls == 1

        h.clock.advance(timedelta(minutes=1))
        (updated,) = apply(h, virtual_service(weights=(80, 20)))
        assert (updated.action, updated.resource_version, updated.update_time) == (
            Action.UPDATED,
            3,
            NOW + timedelta(minutes=1),
        )
        assert updated.diff.splitlines()[:2] == [
            "--- VirtualService/default/users (resourceVersion 1)",
            "+++ VirtualService/default/users",
        ]
        assert "-    weight: 90\n" in updated.diff and "+    weight: 80\n" in updated.diff
        assert updated.spec == h.store.get(USERS).spec  # type: ignore[union-attr]
        assert h.notifier.calls == 2

        (same,) = apply(h, virtual_service(weights=(80, 20)))
        assert (same.action, same.diff, same.resource_version) == (Action.UNCHANGED, "", 3)
        assert h.notifier.calls == 2  # nothing changed: nothing to push
        assert h.store.revision() == 3


def test_an_alias_bomb_is_refused_quickly_as_too_large(tmp_path: Path) -> None:
    # What YAML aliases build: each level shares one list ten times, 10**7 strings in all.
    spec: Any = ["x"] * 10
    for _ in range(6):
        spec = [spec] * 10
    document = {**virtual_service(), "spec": {"hosts": ["users"], "http": spec}}
    with harness(tmp_path) as h:
        started = time.monotonic()
        with pytest.raises(InvalidArgument) as info:
            apply(h, document)
        assert time.monotonic() - started < 1.0
        assert str(info.value) == "VirtualService users: larger than 256 KiB as JSON (the limit per document)"
        assert h.store.revision() == 0


def test_validation_and_yaml_parsing_run_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []

    def recording(function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            threads.append(threading.current_thread().name)
            return function(*args)

        return wrapper

    monkeypatch.setattr(policy_service, "validate_all", recording(policy_service.validate_all))
    monkeypatch.setattr(policy_service, "parse_yaml", recording(policy_service.parse_yaml))
    with harness(tmp_path) as h:
        apply(h, virtual_service())
        run(h.service.apply_yaml(yaml.safe_dump(destination_rule())))
        assert len(threads) == 3
        assert threading.main_thread().name not in threads


def test_apply_yaml_reads_with_parse_yaml(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        text = yaml.safe_dump_all([virtual_service(), destination_rule()])
        results = run(h.service.apply_yaml(text, dry_run=True))
        assert [r.action for r in results] == [Action.CREATED, Action.CREATED]
        with pytest.raises(InvalidArgument, match="found duplicate key 'host'"):
            run(h.service.apply_yaml("kind: DestinationRule\nspec: {host: a, host: b}\n"))
        with pytest.raises(InvalidArgument, match="no documents"):
            run(h.service.apply_yaml("---\n"))
        assert h.store.revision() == 0


def test_dry_run_reports_what_would_happen_and_writes_nothing(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service())
        before = h.fingerprint()
        results = apply(h, virtual_service(weights=(50, 50)), destination_rule(), dry_run=True)
        assert [(r.action, r.resource_version, r.update_time) for r in results] == [
            (Action.UPDATED, 0, None),
            (Action.CREATED, 0, None),
        ]
        assert "+    weight: 50\n" in results[0].diff
        current = h.store.get(USERS)
        assert current is not None
        assert results[0].diff == spec_diff(USERS, current.spec, results[0].spec, 1)
        (unchanged,) = apply(h, virtual_service(), dry_run=True)
        assert (unchanged.action, unchanged.resource_version, unchanged.diff) == (Action.UNCHANGED, 1, "")
        deletion = run(h.service.delete(USERS, dry_run=True))
        assert (deletion.action, deletion.spec) == (Action.DELETED, None)
        assert deletion.diff.splitlines()[1] == "+++ /dev/null"
        assert h.fingerprint() == before
        assert h.notifier.calls == 1


def test_dry_run_reports_conflicts_and_missing_resources_like_a_real_apply(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service())
        with pytest.raises(ConflictError, match="resourceVersion 7 is stale"):
            apply(h, virtual_service(resource_version=7), dry_run=True)
        with pytest.raises(NotFoundError):
            run(h.service.delete(RULE, dry_run=True))


def test_dry_run_decides_unchanged_as_the_store_does(tmp_path: Path) -> None:
    def with_fault(value: float) -> dict[str, Any]:
        document = virtual_service()
        document["spec"]["http"][0]["fault"] = {"abort": {"grpcStatus": 14, "percentage": {"value": value}}}
        return document

    with harness(tmp_path) as h:
        apply(h, with_fault(10))
        # 10.0 == 10 in Python, but the store keeps canonical JSON, where "10.0" is not "10".
        (dry,) = apply(h, with_fault(10.0), dry_run=True)
        (real,) = apply(h, with_fault(10.0))
        assert dry.action is real.action is Action.UPDATED
        (dry,) = apply(h, with_fault(10.0), dry_run=True)
        (real,) = apply(h, with_fault(10.0))
        assert dry.action is real.action is Action.UNCHANGED


BAD_DOCUMENTS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "bad weights",
        virtual_service(weights=(80, 10)),
        "VirtualService users",
        "spec.http[0].route",
    ),
    (
        "unknown field",
        virtual_service(extra_spec={"gateways": ["mesh"]}),
        "VirtualService users",
        "spec.gateways",
    ),
    (
        "unknown kind",
        {**virtual_service(), "kind": "Gateway"},
        "document 2",
        "kind",
    ),
    (
        "not a mapping",
        ["a", "list"],  # type: ignore[list-item]
        "document 2",
        "",
    ),
]


@pytest.mark.parametrize(
    ("case", "document", "label", "field"), BAD_DOCUMENTS, ids=[c[0] for c in BAD_DOCUMENTS]
)
def test_an_invalid_document_stores_and_pushes_nothing(
    tmp_path: Path, case: str, document: dict[str, Any], label: str, field: str
) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service())
        before, pushes = h.fingerprint(), h.notifier.calls
        for dry_run in (False, True):
            with pytest.raises(InvalidArgument) as info:
                # A valid document first: the batch is all or nothing.
                apply(h, destination_rule(), document, dry_run=dry_run)
            error = info.value
            assert error.document == label
            assert error.field == (field or None)
            assert error.reason and error.message.startswith(label)
        assert h.fingerprint() == before
        assert h.notifier.calls == pushes


def test_the_weights_error_reads_as_the_issue_asks(tmp_path: Path) -> None:
    with harness(tmp_path) as h, pytest.raises(InvalidArgument) as info:
        apply(h, virtual_service(weights=(80, 10)))
    assert info.value.to_json() == {
        "code": "INVALID_ARGUMENT",
        "message": "VirtualService users: spec.http[0].route: weights sum to 90, must be 100",
        "document": "VirtualService users",
        "field": "spec.http[0].route",
        "reason": "weights sum to 90, must be 100",
    }


def test_an_empty_batch_and_a_duplicate_resource_are_invalid(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        with pytest.raises(InvalidArgument, match="no documents"):
            apply(h)
        with pytest.raises(InvalidArgument, match="already in this batch"):
            apply(h, virtual_service(), virtual_service(weights=(50, 50)))
        assert h.store.revision() == 0


def test_resource_version_is_optimistic_concurrency(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        with pytest.raises(ConflictError, match="does not exist"):
            apply(h, virtual_service(resource_version=3))
        (created,) = apply(h, virtual_service(resource_version=0))
        assert created.action is Action.CREATED
        with pytest.raises(ConflictError, match="resourceVersion 0 is stale"):
            apply(h, virtual_service(resource_version=0))
        (updated,) = apply(h, virtual_service(weights=(70, 30), resource_version="1"))
        assert updated.resource_version == 2
        before = h.fingerprint()
        with pytest.raises(ConflictError, match=r"resourceVersion 1 is stale \(current is 2\)"):
            apply(h, destination_rule(), virtual_service(weights=(60, 40), resource_version=1))
        assert h.fingerprint() == before


def test_concurrent_applies_with_the_same_version_one_wins_the_other_conflicts(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service())
        pushes = h.notifier.calls

        async def both() -> list[Any]:
            return await asyncio.gather(  # type: ignore[return-value]
                h.service.apply([virtual_service(weights=(60, 40), resource_version=1)]),
                h.service.apply([virtual_service(weights=(40, 60), resource_version=1)]),
                return_exceptions=True,
            )

        outcomes = run(both())
        wins = [o for o in outcomes if isinstance(o, list)]
        conflicts = [o for o in outcomes if isinstance(o, ConflictError)]
        assert len(wins) == 1 and len(conflicts) == 1, outcomes
        assert wins[0][0].resource_version == 2
        assert h.store.get(USERS).spec == wins[0][0].spec  # type: ignore[union-attr]
        assert [r.resource_version for r in h.store.history(USERS)] == [1, 2]
        assert h.notifier.calls == pushes + 1


def test_delete_keeps_history_and_checks_the_version(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service())
        apply(h, virtual_service(weights=(50, 50)))
        with pytest.raises(ConflictError):
            run(h.service.delete(USERS, resource_version=1))
        h.clock.advance(timedelta(seconds=5))
        deleted = run(h.service.delete(USERS, resource_version=2))
        assert (deleted.action, deleted.resource_version, deleted.spec) == (Action.DELETED, 3, None)
        assert deleted.update_time == NOW + timedelta(seconds=5)
        assert "-    weight: 50\n" in deleted.diff
        assert h.notifier.calls == 3
        with pytest.raises(NotFoundError, match="not found"):
            run(h.service.get(USERS))
        with pytest.raises(NotFoundError):
            run(h.service.delete(USERS))
        revisions = run(h.service.history(USERS))
        assert [(r.resource_version, r.spec is None) for r in revisions] == [
            (1, False),
            (2, False),
            (3, True),
        ]


def test_rollback_makes_an_old_spec_current_as_a_new_revision(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service())  # 1
        apply(h, virtual_service(weights=(50, 50)))  # 2
        dry = run(h.service.rollback(USERS, 1, dry_run=True))
        assert (dry.action, dry.resource_version) == (Action.UPDATED, 0)
        assert h.store.revision() == 2
        rolled = run(h.service.rollback(USERS, 1))
        assert (rolled.action, rolled.resource_version) == (Action.UPDATED, 3)
        assert rolled.spec == h.store.history(USERS)[0].spec
        assert "+    weight: 90\n" in rolled.diff
        again = run(h.service.rollback(USERS, 1))
        assert (again.action, again.resource_version) == (Action.UNCHANGED, 3)


def test_rollback_to_a_deletion_deletes_and_back_again_recreates(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service())  # 1
        run(h.service.delete(USERS))  # 2
        recreated = run(h.service.rollback(USERS, 1))
        assert (recreated.action, recreated.resource_version) == (Action.CREATED, 3)
        deleted = run(h.service.rollback(USERS, 2))
        assert (deleted.action, deleted.resource_version) == (Action.DELETED, 4)
        nothing = run(h.service.rollback(USERS, 2))
        assert nothing.action is Action.UNCHANGED
        assert h.store.revision() == 4


def test_rollback_to_an_unknown_revision_or_resource_is_not_found(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        with pytest.raises(NotFoundError, match="not found"):
            run(h.service.rollback(USERS, 1))
        apply(h, virtual_service())
        with pytest.raises(NotFoundError, match=r"has no revision 9 \(its revisions: 1\)"):
            run(h.service.rollback(USERS, 9))


def test_rollback_with_a_resource_version_is_optimistic_concurrency(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service())  # 1
        apply(h, virtual_service(weights=(50, 50)))  # 2
        before = h.fingerprint()
        for dry_run in (True, False):
            with pytest.raises(ConflictError, match=r"resourceVersion 1 is stale \(current is 2\)"):
                run(h.service.rollback(USERS, 1, resource_version=1, dry_run=dry_run))
        assert h.fingerprint() == before
        rolled = run(h.service.rollback(USERS, 1, resource_version=2))
        assert (rolled.action, rolled.resource_version) == (Action.UPDATED, 3)
        run(h.service.delete(USERS))  # 4
        with pytest.raises(ConflictError, match="given, but the resource does not exist"):
            run(h.service.rollback(USERS, 4, resource_version=3))
        with pytest.raises(ConflictError, match="does not exist"):
            run(h.service.rollback(USERS, 1, resource_version=3))
        assert run(h.service.rollback(USERS, 1)).action is Action.CREATED


def test_rollback_revalidates_the_old_spec(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service())
        # A revision written under older rules (straight into the store, as a past version would).
        h.store.apply([Change(USERS, {"hosts": ["users"], "http": [], "legacy": True})], NOW)
        apply(h, virtual_service())
        with pytest.raises(InvalidArgument, match="cannot roll back to revision 2: it is no longer valid"):
            run(h.service.rollback(USERS, 2))


def test_get_list_and_keys(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service(), destination_rule(), virtual_service("orders", namespace="shop"))
        assert run(h.service.get(ResourceKey("VirtualService", "", "users"))).resource_version == 1
        listed = run(h.service.list_resources())
        assert [str(r.key) for r in listed] == [
            "DestinationRule default/users",
            "VirtualService default/users",
            "VirtualService shop/orders",
        ]
        assert [r.key.name for r in run(h.service.list_resources("VirtualService", "shop"))] == ["orders"]
        assert run(h.service.list_resources("", "default")) == run(h.service.list_resources(None, "default"))
        with pytest.raises(InvalidArgument, match="unknown kind 'Gateway'"):
            run(h.service.list_resources("Gateway"))
        with pytest.raises(InvalidArgument, match="unknown kind"):
            run(h.service.get(ResourceKey("virtualservice", "default", "users")))
        with pytest.raises(InvalidArgument, match="a name is required"):
            run(h.service.history(ResourceKey("VirtualService", "default", "")))
        with pytest.raises(NotFoundError, match="never existed"):
            run(h.service.history(ResourceKey("VirtualService", "default", "nope")))


def test_sidecars_come_from_the_registry_with_the_store_revision(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        apply(h, virtual_service())
        register_sidecar(h.registry)
        sidecars = run(h.service.sidecars())
        assert sidecars.store_revision == 1
        (record,) = sidecars.records
        assert (record.node_id, record.applied_version, record.applied_revision) == (
            "users-v1-a",
            "3-abcdef012345",
            3,
        )


def test_a_failing_store_is_an_internal_error_whose_detail_goes_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with harness(tmp_path) as h:
        h.store.close()
        for call in (h.service.apply([virtual_service()]), h.service.list_resources()):
            with pytest.raises(Internal) as info:
                run(call)
            assert info.value.message == "the store failed (see the control plane's log)"
            assert str(tmp_path) not in str(info.value.to_json())
        assert h.notifier.calls == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"the store failed: store {tmp_path / STORE_FILE} is closed"
    ] * 2


def test_a_failing_write_is_an_internal_error_whose_detail_goes_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with harness(tmp_path) as h:

        def disk_full(changes: Any, now: Any) -> Any:
            raise StoreError(f"{tmp_path / STORE_FILE}: database or disk is full")

        monkeypatch.setattr(h.store, "apply", disk_full)
        with pytest.raises(Internal) as info:
            apply(h, virtual_service())
        assert info.value.message == "the store could not apply the change (see the control plane's log)"
    assert caplog.records[-1].getMessage() == (
        f"the store could not apply the change: {tmp_path / STORE_FILE}: database or disk is full"
    )
