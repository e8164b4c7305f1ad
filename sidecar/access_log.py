"""The access log: one JSON line per call, written off the hot path.

A finished call appends one tuple of raw fields to a bounded deque (no formatting, no I/O); the
first append after a flush schedules one flush with loop.call_soon, which formats the lines and
writes them in one go. A full deque drops the call's line and counts it (`dropped`); a failing
write drops the batch and counts it too. Neither ever fails or delays a call.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import IO

from sidecar.h2.hpack_codec import Header

MAX_PENDING = 8192  # lines waiting for the next flush; past it, lines are dropped and counted

# (time, trace id source headers, direction, source, destination, method, status, millis,
#  request bytes, response bytes, upstream, flags, attempts)
_Entry = tuple[float, tuple[Header, ...], str, str, str, bytes, int, float, int, int, str, str, int]


_HEX_DIGITS = b"0123456789abcdef"


def trace_id_of(headers: tuple[Header, ...]) -> str:
    """The trace id of a W3C `traceparent` request header (`00-TRACEID-SPANID-FLAGS`), else ""."""
    for name, value, _ in headers:
        if name == b"traceparent":
            parts = value.split(b"-")
            trace = parts[1] if len(parts) >= 4 else b""
            if len(trace) == 32 and not trace.strip(_HEX_DIGITS):
                return trace.decode("ascii")
            return ""
    return ""


_quote = json.encoder.encode_basestring  # a str → its JSON string


def _stamp(when: float) -> str:
    """RFC 3339 UTC with microseconds: 2026-11-22T13:45:01.123456Z."""
    seconds = int(when)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((when - seconds) * 1e6):06d}Z"


def format_line(entry: _Entry) -> str:
    """One JSON object on one line (built by hand: json.dumps of a dict cost twice as much)."""
    (
        when,
        headers,
        direction,
        source,
        destination,
        method,
        status,
        millis,
        sent,
        received,
        upstream,
        flags,
        attempts,
    ) = entry
    flag_list = ",".join(f'"{flag}"' for flag in flags.split(",")) if flags else ""
    return (
        f'{{"time":"{_stamp(when)}","trace_id":{_quote(trace_id_of(headers))},"direction":"{direction}",'
        f'"source":{_quote(source)},"destination":{_quote(destination)},'
        f'"method":{_quote(method.decode("ascii", "replace"))},"grpc_status":{int(status)},'
        f'"duration_ms":{round(millis, 3)},"request_bytes":{int(sent)},"response_bytes":{int(received)},'
        f'"upstream":{_quote(upstream)},"attempts":{int(attempts)},"flags":[{flag_list}]}}'
    )


class AccessLog:
    """Where a sidecar's calls are logged: `path` "-" is stdout, anything else a file (appended)."""

    def __init__(
        self,
        path: str,
        *,
        max_pending: int = MAX_PENDING,
        loop: asyncio.AbstractEventLoop | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_pending = max_pending
        self.loop = loop
        self.wall_clock = wall_clock
        self.pending: deque[_Entry] = deque()
        self.dropped = 0  # lines lost to a full buffer or a failed write
        self.written = 0
        self._scheduled = False
        self._file: IO[str] | None = None

    def record(
        self,
        headers: tuple[Header, ...],
        direction: str,
        source: str,
        destination: str,
        method: bytes,
        status: int,
        millis: float,
        request_bytes: int,
        response_bytes: int,
        upstream: str,
        flags: str,
        attempts: int = 1,
    ) -> None:
        pending = self.pending
        if len(pending) >= self.max_pending:
            self.dropped += 1
            return
        pending.append(
            (
                self.wall_clock(),
                headers,
                direction,
                source,
                destination,
                method,
                status,
                millis,
                request_bytes,
                response_bytes,
                upstream,
                flags,
                attempts,
            )
        )
        if not self._scheduled:
            self._scheduled = True
            loop = self.loop
            if loop is None:
                loop = self.loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Format and write every pending line (run by the loop soon after a call is recorded)."""
        self._scheduled = False
        pending = self.pending
        if not pending:
            return
        entries = list(pending)
        pending.clear()
        try:
            text = "".join(format_line(entry) + "\n" for entry in entries)
            out = self._out()
            out.write(text)
            out.flush()
        except (OSError, ValueError):
            self.dropped += len(entries)
            return
        self.written += len(entries)

    def _out(self) -> IO[str]:
        if self.path == "-":
            return sys.stdout
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        return self._file

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
