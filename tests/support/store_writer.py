"""python -m tests.support.store_writer DB: writes to a SqliteStore until killed, for the kill -9 test.

Batch i creates two resources, ``VirtualService writer/a-<i>`` and ``VirtualService writer/b-<i>``,
both with spec ``{"batch": i}``, in one apply. After each apply returns, it prints the batch number
and the revision of its last change, as ``<i> <revision>``, and flushes: a line on stdout means that
batch is committed.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from control_plane.resources import Change, ResourceKey
from control_plane.sqlite_store import SqliteStore

NAMESPACE = "writer"
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def batch_keys(i: int) -> tuple[ResourceKey, ResourceKey]:
    return (
        ResourceKey("VirtualService", NAMESPACE, f"a-{i}"),
        ResourceKey("VirtualService", NAMESPACE, f"b-{i}"),
    )


def main() -> None:
    with SqliteStore(Path(sys.argv[1])) as store:
        i = store.revision() // 2
        while True:
            spec = {"batch": i, "hosts": [f"host-{i}"]}
            written = store.apply([Change(key, spec, expected_version=0) for key in batch_keys(i)], NOW)
            last = written[-1]
            assert last is not None
            print(i, last.resource_version, flush=True)
            i += 1


if __name__ == "__main__":
    main()
