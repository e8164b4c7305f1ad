"""One HTTP/2 stream's state, what a connection needs to know of the relay, and the limits it enforces.

A Stream lives on one connection; `peer` is the stream on the other connection it is relayed to.
Its send side holds the data waiting for flow-control window, its receive side the credit owed to
the sender. It also follows the gRPC message framing through the relayed bytes (for the message
size limit and to know whether a failure cuts a message in half).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sidecar.h2 import frames as F
from sidecar.h2.hpack_codec import Header, HeaderList

if TYPE_CHECKING:
    from sidecar.h2.connection import H2Connection


@dataclass(frozen=True)
class Limits:
    """What a connection advertises and enforces."""

    initial_window: int = 1 << 20
    connection_window: int = 16 << 20
    max_concurrent_streams: int = 4096
    max_header_list_size: int = 64 << 10
    max_frame_size: int = F.DEFAULT_MAX_FRAME_SIZE
    max_message_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if not 0 < self.initial_window <= F.MAX_WINDOW:
            raise ValueError(f"initial_window must be in 1..{F.MAX_WINDOW}, got {self.initial_window}")
        if not F.DEFAULT_WINDOW <= self.connection_window <= F.MAX_WINDOW:
            raise ValueError(f"connection_window must be in 65535..{F.MAX_WINDOW}")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if not F.DEFAULT_MAX_FRAME_SIZE <= self.max_frame_size <= F.MAX_FRAME_SIZE_LIMIT:
            raise ValueError("max_frame_size must be in 16384..16777215")


class StreamHandler(Protocol):
    """What a stream reports to the relay. Both methods run on the event loop, never concurrently."""

    def on_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None: ...

    def on_reset(self, stream: Stream, code: int) -> None:
        """The stream ended abnormally: RST_STREAM from the peer, or the connection was lost."""

    def on_oversized(self, stream: Stream, length: int) -> None:
        """A gRPC message on this stream is longer than the configured limit."""


class Stream:
    """One stream on one connection; `peer` is the stream it is relayed to."""

    __slots__ = (
        "conn",
        "end_queued",
        "handler",
        "headers_sent",
        "msg_left",
        "peer",
        "pending",
        "pending_bytes",
        "prefix",
        "received",
        "recv_closed",
        "recv_window",
        "send_closed",
        "send_window",
        "sid",
        "tail",
        "tap",
        "unacked",
        "uncredited",
    )

    def __init__(self, handler: StreamHandler | None) -> None:
        self.sid = 0
        self.conn: H2Connection | None = None
        self.peer: Stream | None = None
        self.handler = handler
        self.send_window = 0
        self.recv_window = 0
        self.unacked = 0
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.tail: list[Header] | HeaderList | None = None  # trailers to send after the pending data
        self.end_queued = False  # END_STREAM goes after the pending data
        self.recv_closed = False
        self.send_closed = False
        self.headers_sent = False
        self.msg_left = 0  # bytes left in the current gRPC message
        self.prefix = b""  # partial 5-byte gRPC message prefix
        self.received = 0  # DATA payload bytes received (padding excluded), for the metrics
        # Told of each DATA payload received before it is relayed (the relay's retry buffer, mirror).
        self.tap: Callable[[bytes, bool], None] | None = None
        # Bytes at the front of `pending` already credited to the peer's sender (a replayed request).
        self.uncredited = 0

    @property
    def at_message_boundary(self) -> bool:
        return self.msg_left == 0 and not self.prefix

    def scan_messages(self, data: bytes, limit: int) -> int:
        """Track gRPC message framing through data; return an oversized length, or -1."""
        pos = 0
        n = len(data)
        left = self.msg_left
        while True:
            if left >= n - pos:
                self.msg_left = left - (n - pos)
                return -1
            pos += left
            prefix = self.prefix + data[pos : pos + 5 - len(self.prefix)]
            pos += len(prefix) - len(self.prefix)
            if len(prefix) < 5:
                self.prefix = prefix
                self.msg_left = 0
                return -1
            self.prefix = b""
            left = int.from_bytes(prefix[1:5], "big")
            if left > limit:
                self.msg_left = 0
                return left

    def __repr__(self) -> str:
        return f"<Stream {self.sid} pending={self.pending_bytes} window={self.send_window}>"
