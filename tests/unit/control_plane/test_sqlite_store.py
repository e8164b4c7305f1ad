"""The Store contract, run against every implementation, then what only SqliteStore promises.

The contract tests take ``open_store``: a factory opening a store on one shared backing (one file
for SQLite), so reopening and several stores side by side are part of the contract too. Another
implementation joins by adding a param to the ``open_store`` fixture.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from control_plane.resources import (
    Change,
    Conflict,
    NotFound,
    Resource,
    ResourceKey,
    Revision,
    Store,
    StoreError,
)
from control_plane.sqlite_store import SCHEMA_VERSION, STORE_FILE, SqliteStore, canonical_json
from tests.support.store_writer import NAMESPACE as WRITER_NAMESPACE
from tests.support.store_writer import batch_keys

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2030, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
LATER = NOW + timedelta(minutes=1)

USERS = ResourceKey("VirtualService", "default", "users")
ORDERS = ResourceKey("VirtualService", "default", "orders")
USERS_DR = ResourceKey("DestinationRule", "default", "users")
SHOP_USERS = ResourceKey("VirtualService", "shop", "users")

SPEC_V1: dict[str, Any] = {"hosts": ["users"], "http": [{"route": [{"destination": {"host": "users"}}]}]}
SPEC_V2: dict[str, Any] = {"hosts": ["users"], "http": [{"timeout": "2s"}]}
SPEC_V3: dict[str, Any] = {"hosts": ["users"], "http": [{"timeout": "3s"}]}

OpenStore = Callable[[], Store]


@pytest.fixture(params=["sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    opened: list[Store] = []

    def open_one() -> Store:
        if request.param == "sqlite":
            store: Store = SqliteStore(tmp_path / STORE_FILE)
        else:  # pragma: no cover
            raise AssertionError(request.param)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> Store:
    return open_store()


def put(
    store: Store, key: ResourceKey, spec: dict[str, Any] | None, *, now: datetime = NOW
) -> Resource | None:
    (result,) = store.apply([Change(key, spec)], now)
    return result


def state(store: Store, *keys: ResourceKey) -> tuple[int, list[Resource], dict[ResourceKey, list[Revision]]]:
    """Everything a reader can see, for before/after comparisons."""
    return store.revision(), store.list_resources(), {key: store.history(key) for key in keys}


# The contract


def test_an_empty_store_has_nothing(store: Store) -> None:
    assert store.revision() == 0
    assert store.get(USERS) is None
    assert store.list_resources() == []
    assert store.history(USERS) == []


def test_create_then_get(store: Store) -> None:
    created = put(store, USERS, SPEC_V1)

    assert created == Resource(USERS, SPEC_V1, 1, NOW)
    assert store.get(USERS) == created
    assert store.revision() == 1
    assert store.get(ORDERS) is None


def test_specs_come_back_as_plain_json_and_fresh_each_time(store: Store) -> None:
    created = put(store, USERS, {"b": (1, 2), "a": {"z": None, "y": 1.5, "x": True}})

    assert created is not None
    assert created.spec == {"a": {"x": True, "y": 1.5, "z": None}, "b": [1, 2]}
    got = store.get(USERS)
    assert got is not None and type(got.spec) is dict and type(got.spec["b"]) is list
    got.spec["b"].append(3)
    again = store.get(USERS)
    assert again is not None and again.spec["b"] == [1, 2]


def test_times_are_stored_as_utc(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    created = put(store, USERS, SPEC_V1, now=NOW.astimezone(plus_two))

    assert (
        created is not None and created.update_time == NOW and created.update_time.utcoffset() == timedelta(0)
    )
    got = store.get(USERS)
    assert got is not None and got.update_time == NOW and got.update_time.utcoffset() == timedelta(0)


def test_a_naive_time_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone"):
        put(store, USERS, SPEC_V1, now=NOW.replace(tzinfo=None))
    assert store.revision() == 0


def test_list_filters_by_kind_and_namespace_and_sorts_by_key(store: Store) -> None:
    for key in (SHOP_USERS, USERS_DR, USERS, ORDERS):
        put(store, key, SPEC_V1)

    def keys(**filters: str) -> list[ResourceKey]:
        return [resource.key for resource in store.list_resources(**filters)]

    assert keys() == [USERS_DR, ORDERS, USERS, SHOP_USERS]
    assert keys(kind="VirtualService") == [ORDERS, USERS, SHOP_USERS]
    assert keys(namespace="default") == [USERS_DR, ORDERS, USERS]
    assert keys(kind="VirtualService", namespace="shop") == [SHOP_USERS]
    assert keys(kind="PeerAuthentication") == []
    assert keys() == sorted(keys())


def test_an_update_takes_the_next_global_revision(store: Store) -> None:
    put(store, USERS, SPEC_V1)
    put(store, ORDERS, SPEC_V1)

    updated = put(store, USERS, SPEC_V2, now=LATER)

    assert updated == Resource(USERS, SPEC_V2, 3, LATER)
    assert store.get(USERS) == updated
    assert store.revision() == 3


def test_an_unchanged_spec_writes_nothing(store: Store) -> None:
    created = put(store, USERS, {"hosts": ["users"], "http": []})

    same = put(store, USERS, {"http": [], "hosts": ["users"]}, now=LATER)  # key order does not matter

    assert same == created
    assert store.revision() == 1
    assert [revision.resource_version for revision in store.history(USERS)] == [1]


def test_delete_leaves_a_tombstone_and_removes_from_list(store: Store) -> None:
    put(store, USERS, SPEC_V1)
    put(store, ORDERS, SPEC_V1)

    deleted = put(store, USERS, None, now=LATER)

    assert deleted is None
    assert store.get(USERS) is None
    assert [resource.key for resource in store.list_resources()] == [ORDERS]
    assert store.revision() == 3
    assert store.history(USERS) == [Revision(USERS, 1, NOW, SPEC_V1), Revision(USERS, 3, LATER, None)]


def test_a_deleted_resource_can_be_created_again(store: Store) -> None:
    put(store, USERS, SPEC_V1)
    put(store, USERS, None)

    again = put(store, USERS, SPEC_V1, now=LATER)

    assert again == Resource(USERS, SPEC_V1, 3, LATER)
    assert [revision.spec for revision in store.history(USERS)] == [SPEC_V1, None, SPEC_V1]


def test_delete_of_a_missing_resource_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as raised:
        put(store, USERS, None)
    assert raised.value.key == USERS
    assert str(raised.value) == "VirtualService default/users not found"

    put(store, USERS, SPEC_V1)
    put(store, USERS, None)
    with pytest.raises(NotFound):
        put(store, USERS, None)  # already a tombstone
    assert store.revision() == 2


def test_history_is_oldest_first_with_specs_and_only_for_its_key(store: Store) -> None:
    put(store, USERS, SPEC_V1, now=NOW)
    put(store, ORDERS, SPEC_V1, now=NOW)
    put(store, USERS, SPEC_V2, now=NOW + timedelta(seconds=1))
    put(store, USERS, SPEC_V3, now=NOW + timedelta(seconds=2))

    assert store.history(USERS) == [
        Revision(USERS, 1, NOW, SPEC_V1),
        Revision(USERS, 3, NOW + timedelta(seconds=1), SPEC_V2),
        Revision(USERS, 4, NOW + timedelta(seconds=2), SPEC_V3),
    ]
    assert store.history(ORDERS) == [Revision(ORDERS, 2, NOW, SPEC_V1)]
    assert store.history(USERS_DR) == []


def test_a_write_expecting_the_current_version_succeeds(store: Store) -> None:
    put(store, USERS, SPEC_V1)
    put(store, ORDERS, SPEC_V1)

    (updated,) = store.apply([Change(USERS, SPEC_V2, expected_version=1)], LATER)

    assert updated == Resource(USERS, SPEC_V2, 3, LATER)
    (deleted,) = store.apply([Change(USERS, None, expected_version=3)], LATER)
    assert deleted is None and store.get(USERS) is None


def test_a_stale_version_is_a_conflict_naming_both_versions(store: Store) -> None:
    put(store, USERS, SPEC_V1)
    put(store, USERS, SPEC_V2)
    before = state(store, USERS)

    with pytest.raises(Conflict) as raised:
        store.apply([Change(USERS, SPEC_V3, expected_version=1)], LATER)

    assert (raised.value.key, raised.value.expected, raised.value.actual) == (USERS, 1, 2)
    assert "resourceVersion 1 is stale (current is 2)" in str(raised.value)
    assert state(store, USERS) == before


def test_a_stale_version_conflicts_even_when_the_spec_is_unchanged(store: Store) -> None:
    put(store, USERS, SPEC_V1)
    put(store, USERS, SPEC_V2)

    with pytest.raises(Conflict):
        store.apply([Change(USERS, SPEC_V2, expected_version=1)], LATER)


def test_a_stale_delete_is_a_conflict(store: Store) -> None:
    put(store, USERS, SPEC_V1)
    put(store, USERS, SPEC_V2)

    with pytest.raises(Conflict) as raised:
        store.apply([Change(USERS, None, expected_version=1)], LATER)

    assert (raised.value.expected, raised.value.actual) == (1, 2)
    assert store.get(USERS) is not None


def test_expected_version_zero_means_must_not_exist(store: Store) -> None:
    (created,) = store.apply([Change(USERS, SPEC_V1, expected_version=0)], NOW)
    assert created is not None and created.resource_version == 1

    with pytest.raises(Conflict) as raised:
        store.apply([Change(USERS, SPEC_V2, expected_version=0)], LATER)
    assert (raised.value.expected, raised.value.actual) == (0, 1)

    put(store, USERS, None)  # a tombstone counts as not existing
    (again,) = store.apply([Change(USERS, SPEC_V2, expected_version=0)], LATER)
    assert again is not None and again.resource_version == 3


def test_expecting_a_version_of_a_missing_resource_is_a_conflict(store: Store) -> None:
    with pytest.raises(Conflict) as raised:
        store.apply([Change(USERS, SPEC_V1, expected_version=7)], NOW)

    assert (raised.value.expected, raised.value.actual) == (7, 0)
    assert "does not exist" in str(raised.value)
    assert store.revision() == 0


def test_a_batch_takes_consecutive_revisions_and_returns_one_result_per_change(store: Store) -> None:
    put(store, USERS_DR, SPEC_V1)
    put(store, SHOP_USERS, SPEC_V1)

    results = store.apply(
        [
            Change(USERS, SPEC_V1),
            Change(USERS_DR, None),
            Change(SHOP_USERS, SPEC_V1),  # unchanged: no revision
            Change(ORDERS, SPEC_V2, expected_version=0),
        ],
        LATER,
    )

    assert results == [
        Resource(USERS, SPEC_V1, 3, LATER),
        None,
        Resource(SHOP_USERS, SPEC_V1, 2, NOW),
        Resource(ORDERS, SPEC_V2, 5, LATER),
    ]
    assert store.revision() == 5
    assert store.history(USERS_DR)[-1] == Revision(USERS_DR, 4, LATER, None)


def test_later_changes_in_a_batch_see_earlier_ones(store: Store) -> None:
    results = store.apply(
        [
            Change(USERS, SPEC_V1, expected_version=0),
            Change(USERS, SPEC_V2, expected_version=1),
            Change(USERS, SPEC_V2),  # unchanged from the change before it
            Change(USERS, None, expected_version=2),
            Change(USERS, SPEC_V3, expected_version=0),
        ],
        NOW,
    )

    assert [None if r is None else r.resource_version for r in results] == [1, 2, 2, None, 4]
    assert [revision.spec for revision in store.history(USERS)] == [SPEC_V1, SPEC_V2, None, SPEC_V3]
    assert store.get(USERS) == Resource(USERS, SPEC_V3, 4, NOW)


def test_an_empty_batch_does_nothing(store: Store) -> None:
    assert store.apply([], NOW) == []
    assert store.revision() == 0


@pytest.mark.parametrize(
    "failing",
    [
        pytest.param(Change(ORDERS, SPEC_V3, expected_version=9), id="conflict"),
        pytest.param(Change(USERS_DR, None), id="not-found"),
        pytest.param(Change(ORDERS, {"bad": {1, 2}}), id="not-json"),
        pytest.param(Change(ORDERS, {"bad": float("nan")}), id="nan"),
    ],
)
def test_a_batch_with_one_bad_change_stores_nothing(store: Store, failing: Change) -> None:
    put(store, USERS, SPEC_V1)
    put(store, ORDERS, SPEC_V1)
    before = state(store, USERS, ORDERS, USERS_DR, SHOP_USERS)

    with pytest.raises(StoreError):
        store.apply(
            [Change(USERS, SPEC_V2), Change(SHOP_USERS, SPEC_V1), failing, Change(USERS, None)], LATER
        )

    assert state(store, USERS, ORDERS, USERS_DR, SHOP_USERS) == before
    # ... and the store still works.
    assert put(store, SHOP_USERS, SPEC_V1) == Resource(SHOP_USERS, SPEC_V1, 3, NOW)


def test_revision_only_moves_forward_by_one_per_write(store: Store) -> None:
    seen = [store.revision()]
    steps: list[Callable[[], object]] = [
        lambda: put(store, USERS, SPEC_V1),
        lambda: put(store, USERS, SPEC_V1),  # unchanged
        lambda: store.apply([Change(ORDERS, SPEC_V1), Change(USERS_DR, SPEC_V1)], NOW),
        lambda: put(store, USERS, None),
        lambda: store.apply([Change(ORDERS, SPEC_V2, expected_version=1)], NOW),  # conflict
        lambda: put(store, USERS, SPEC_V2),
    ]
    for step in steps:
        with contextlib.suppress(StoreError):
            step()
        seen.append(store.revision())

    assert seen == [0, 1, 1, 3, 4, 4, 5]


def test_everything_is_still_there_after_reopening(open_store: OpenStore) -> None:
    first = open_store()
    put(first, USERS, SPEC_V1)
    first.apply([Change(ORDERS, SPEC_V2), Change(USERS_DR, SPEC_V3)], NOW)
    put(first, USERS, SPEC_V2, now=LATER)
    put(first, ORDERS, None, now=LATER)
    before = state(first, USERS, ORDERS, USERS_DR)
    first.close()

    second = open_store()

    assert state(second, USERS, ORDERS, USERS_DR) == before
    assert second.get(USERS) == Resource(USERS, SPEC_V2, 4, LATER)
    assert put(second, SHOP_USERS, SPEC_V1) == Resource(SHOP_USERS, SPEC_V1, 6, NOW)


def test_stores_sharing_a_backing_see_each_others_writes_and_conflict(open_store: OpenStore) -> None:
    one, two = open_store(), open_store()
    put(one, USERS, SPEC_V1)
    seen_by_two = two.get(USERS)
    assert seen_by_two is not None

    one.apply([Change(USERS, SPEC_V2, expected_version=seen_by_two.resource_version)], LATER)
    with pytest.raises(Conflict) as raised:
        two.apply([Change(USERS, SPEC_V3, expected_version=seen_by_two.resource_version)], LATER)

    assert (raised.value.expected, raised.value.actual) == (1, 2)
    assert two.revision() == 2


def test_concurrent_writers_each_get_their_own_revisions(store: Store) -> None:
    writers, per_writer = 4, 25
    versions: list[int] = []
    lock = threading.Lock()

    def write(n: int) -> None:
        for i in range(per_writer):
            (resource,) = store.apply([Change(ResourceKey("VirtualService", "t", f"w{n}-{i}"), SPEC_V1)], NOW)
            assert resource is not None
            with lock:
                versions.append(resource.resource_version)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(versions) == list(range(1, writers * per_writer + 1))
    assert len(store.list_resources(namespace="t")) == writers * per_writer


def test_a_closed_store_refuses_calls(store: Store) -> None:
    store.close()
    store.close()  # twice is fine

    with pytest.raises(StoreError, match="closed"):
        store.get(USERS)
    with pytest.raises(StoreError, match="closed"):
        put(store, USERS, SPEC_V1)


# SqliteStore only


def raw(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path))


def test_sqlite_store_is_a_context_manager(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / STORE_FILE) as store:
        put(store, USERS, SPEC_V1)
        assert repr(store) == f"SqliteStore({str(tmp_path / STORE_FILE)!r})"
    assert repr(store) == f"SqliteStore({str(tmp_path / STORE_FILE)!r}, closed)"
    with pytest.raises(StoreError):
        store.revision()


def test_sqlite_file_has_the_schema_version_and_a_write_ahead_log(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    SqliteStore(path).close()

    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_sqlite_stores_canonical_json(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    with SqliteStore(path) as store:
        put(store, USERS, {"hosts": ["usérs"], "a": {"d": 1, "c": [True, None]}})

    with raw(path) as conn:
        (text,) = conn.execute("SELECT spec FROM revisions").fetchone()
    assert text == '{"a":{"c":[true,null],"d":1},"hosts":["usérs"]}'
    assert canonical_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'


def test_sqlite_refuses_a_file_from_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    with raw(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        SqliteStore(path)


def test_sqlite_errors_are_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unable to open"):
        SqliteStore(tmp_path / "missing-dir" / STORE_FILE)
    (tmp_path / "not-a-db").write_bytes(b"not a database, just some bytes" * 100)
    with pytest.raises(StoreError, match="not a database"):
        SqliteStore(tmp_path / "not-a-db")


def write_until_killed(path: Path, batches: int, delay: float) -> list[tuple[int, int]]:
    """Runs the writer until it has reported `batches` commits, waits `delay` s, kills it with -9."""
    reported: list[tuple[int, int]] = []
    with subprocess.Popen(
        [sys.executable, "-m", "tests.support.store_writer", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdout is not None and writer.stderr is not None
        try:
            while len(reported) < batches:
                line = writer.stdout.readline()
                assert line.endswith("\n"), f"writer stopped: {writer.stderr.read()}"
                batch, revision = map(int, line.split())
                reported.append((batch, revision))
            time.sleep(delay)
            assert writer.poll() is None, "the writer must still be writing when it is killed"
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        assert writer.returncode == -signal.SIGKILL
    return reported


def check_whole_batches(store: Store) -> int:
    """The writer's batches 0..n-1 are all there, both halves each, and nothing else; returns n."""
    stored = store.list_resources(namespace=WRITER_NAMESPACE)
    batches = len(stored) // 2
    assert sorted(resource.key for resource in stored) == sorted(
        key for i in range(batches) for key in batch_keys(i)
    )
    for resource in stored:
        i = int(resource.key.name.split("-")[1])
        assert resource.spec == {"batch": i, "hosts": [f"host-{i}"]}
        assert resource.resource_version == 2 * i + (1 if resource.key.name.startswith("a-") else 2)
    assert store.revision() == 2 * batches
    return batches


def test_sqlite_keeps_every_committed_batch_through_kill_9(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    # Several rounds, each killed a little later after its last report, to land in different places
    # of the next batch; each round's writer carries on from where the file says the last one stopped.
    for delay in (0, 0.0002, 0.0005, 0.001, 0.002):
        reported = write_until_killed(path, 20, delay)

        first = reported[0][0]
        assert [batch for batch, _ in reported] == list(range(first, first + len(reported)))
        with raw(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with SqliteStore(path) as store:
            for batch, revision in reported:
                a, b = batch_keys(batch)
                assert [r.resource_version for r in store.history(a)] == [revision - 1]
                assert [r.resource_version for r in store.history(b)] == [revision]
            batches = check_whole_batches(store)
            assert batches > reported[-1][0]

    with SqliteStore(path) as store:
        (more,) = store.apply([Change(batch_keys(batches)[0], SPEC_V1, expected_version=0)], LATER)
        assert more is not None and more.resource_version == 2 * batches + 1
