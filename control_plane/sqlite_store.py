"""The control plane's default store: one SQLite file in its data dir, durable across kill -9.

Every change is a row of ``revisions`` (its number is the store-wide revision; a NULL spec marks a
deletion), and ``current`` maps each live resource to its latest revision. The store's revision is
the largest revision number; rows are never deleted, so it never goes back.

Specs are stored as canonical JSON (sorted keys, compact), which is also how "unchanged" is
decided, and they come back as plain dicts and lists, a fresh copy on every read.

Thread-safety: one connection, guarded by a lock, may be used from any thread (the asyncio
control plane calls it from its loop thread, or hands a call to a worker thread); calls are
short, so they simply take turns.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from control_plane.resources import (
    Change,
    Conflict,
    NotFound,
    Resource,
    ResourceKey,
    Revision,
    Spec,
    StoreError,
)
from control_plane.resources import canonical_json as canonical_json  # the form specs are stored in

# The file's name inside the control plane's data dir.
STORE_FILE = "store.sqlite3"

# Migrations[i] takes a file from schema version i to i + 1; PRAGMA user_version holds the version.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE revisions (
            revision  INTEGER PRIMARY KEY,
            kind      TEXT NOT NULL,
            namespace TEXT NOT NULL,
            name      TEXT NOT NULL,
            spec      TEXT,
            time      TEXT NOT NULL
        )
        """,
        "CREATE INDEX revisions_by_key ON revisions (kind, namespace, name, revision)",
        """
        CREATE TABLE current (
            kind      TEXT NOT NULL,
            namespace TEXT NOT NULL,
            name      TEXT NOT NULL,
            revision  INTEGER NOT NULL REFERENCES revisions (revision),
            PRIMARY KEY (kind, namespace, name)
        ) WITHOUT ROWID
        """,
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_LIVE = """
    SELECT c.kind, c.namespace, c.name, r.spec, r.revision, r.time
    FROM current c JOIN revisions r ON r.revision = c.revision
"""


@dataclass(slots=True)
class _Planned:
    """What a batch will leave at one key: its revision and spec text (None: absent or deleted)."""

    revision: int
    spec: str | None
    time: str


class SqliteStore:
    """A :class:`~control_plane.resources.Store` in one SQLite file (WAL, synchronous=FULL).

    Opening creates the file and its schema, or migrates an older schema; a file written by a
    newer version is refused. SQLite's own errors (I/O, disk full, ...) surface as StoreError, and
    a failed apply has written nothing. Usable as a context manager, which closes it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from exc
        try:
            _configure(conn, path)
            _migrate(conn, path)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r}{'' if self._conn else ', closed'})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # Reads: each is one statement, so it sees one consistent state of the file.

    def get(self, key: ResourceKey) -> Resource | None:
        with self._connection() as conn:
            row = conn.execute(
                _LIVE + " WHERE c.kind = ? AND c.namespace = ? AND c.name = ?",
                (key.kind, key.namespace, key.name),
            ).fetchone()
        return None if row is None else _resource(row)

    def list_resources(self, kind: str | None = None, namespace: str | None = None) -> list[Resource]:
        # ORDER BY compares UTF-8 bytes, which orders like Python compares str: by code point.
        with self._connection() as conn:
            rows = conn.execute(
                _LIVE + " WHERE (?1 IS NULL OR c.kind = ?1) AND (?2 IS NULL OR c.namespace = ?2)"
                " ORDER BY c.kind, c.namespace, c.name",
                (kind, namespace),
            ).fetchall()
        return [_resource(row) for row in rows]

    def history(self, key: ResourceKey) -> list[Revision]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT revision, time, spec FROM revisions WHERE kind = ? AND namespace = ? AND name = ?"
                " ORDER BY revision",
                (key.kind, key.namespace, key.name),
            ).fetchall()
        return [
            Revision(key, revision, _parse_time(time), None if spec is None else _load(spec))
            for revision, time, spec in rows
        ]

    def revision(self) -> int:
        with self._connection() as conn:
            return _max_revision(conn)

    # Writes

    def apply(self, changes: Sequence[Change], now: datetime) -> list[Resource | None]:
        time = _format_time(now)
        texts = [None if change.spec is None else _dump(change.key, change.spec) for change in changes]
        with self._connection() as conn, _immediate_transaction(conn):
            # Plan the whole batch against the current state (and its own earlier changes) first,
            # so that a Conflict or NotFound leaves nothing written.
            planned: dict[ResourceKey, _Planned | None] = {}
            writes: list[tuple[ResourceKey, _Planned]] = []
            results: list[_Planned | None] = []
            next_revision = _max_revision(conn) + 1
            for change, text in zip(changes, texts, strict=True):
                key = change.key
                if key not in planned:
                    planned[key] = _current(conn, key)
                at_key = planned[key]
                actual = 0 if at_key is None else at_key.revision
                if change.expected_version is not None and change.expected_version != actual:
                    raise Conflict(key, change.expected_version, actual)
                if text is None and at_key is None:
                    raise NotFound(key)
                if at_key is not None and text == at_key.spec:
                    results.append(at_key)
                    continue
                entry = _Planned(next_revision, text, time)
                next_revision += 1
                writes.append((key, entry))
                planned[key] = None if text is None else entry
                results.append(planned[key])
            for key, entry in writes:
                conn.execute(
                    "INSERT INTO revisions (revision, kind, namespace, name, spec, time)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (entry.revision, key.kind, key.namespace, key.name, entry.spec, entry.time),
                )
            for key in dict.fromkeys(key for key, _ in writes):
                final = planned[key]
                if final is None:
                    conn.execute(
                        "DELETE FROM current WHERE kind = ? AND namespace = ? AND name = ?",
                        (key.kind, key.namespace, key.name),
                    )
                else:
                    conn.execute(
                        "INSERT INTO current (kind, namespace, name, revision) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (kind, namespace, name) DO UPDATE SET revision = excluded.revision",
                        (key.kind, key.namespace, key.name, final.revision),
                    )
        return [
            None if result is None or result.spec is None else _as_resource(change.key, result)
            for change, result in zip(changes, results, strict=True)
        ]

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreError(f"store {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:  # disk full, I/O error, locked by another process too long
                raise StoreError(f"{self.path}: {exc}") from exc


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    # Another process (meshctl reading the file, say) may hold the write lock for a moment.
    conn.execute("PRAGMA busy_timeout = 5000")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise StoreError(f"{path}: cannot use a write-ahead log (journal mode is {mode})")
    # FULL: a commit is on disk (the WAL fsynced) before apply() returns, even across a power cut.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    with _immediate_transaction(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {version} is newer than this control plane's ({SCHEMA_VERSION})"
            )
        for migration in _MIGRATIONS[version:]:
            for statement in migration:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            # PRAGMA takes no parameters; SCHEMA_VERSION is our own int.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


@contextmanager
def _immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE takes the write lock up front, so the batch's reads and writes see one state."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT may leave it open
            conn.execute("ROLLBACK")
        raise


def _current(conn: sqlite3.Connection, key: ResourceKey) -> _Planned | None:
    row = conn.execute(
        "SELECT r.revision, r.spec, r.time FROM current c JOIN revisions r ON r.revision = c.revision"
        " WHERE c.kind = ? AND c.namespace = ? AND c.name = ?",
        (key.kind, key.namespace, key.name),
    ).fetchone()
    return None if row is None else _Planned(*row)


def _max_revision(conn: sqlite3.Connection) -> int:
    (revision,) = conn.execute("SELECT coalesce(max(revision), 0) FROM revisions").fetchone()
    return int(revision)


def _resource(row: tuple[Any, ...]) -> Resource:
    kind, namespace, name, spec, revision, time = row
    return Resource(ResourceKey(kind, namespace, name), _load(spec), revision, _parse_time(time))


def _as_resource(key: ResourceKey, entry: _Planned) -> Resource:
    assert entry.spec is not None
    return Resource(key, _load(entry.spec), entry.revision, _parse_time(entry.time))


def _dump(key: ResourceKey, spec: Spec) -> str:
    try:
        return canonical_json(spec)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{key}: spec is not JSON: {exc}") from exc


def _load(text: str) -> Any:
    return json.loads(text)


def _format_time(now: datetime) -> str:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).isoformat()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)
