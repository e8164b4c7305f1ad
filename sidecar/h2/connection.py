"""One HTTP/2 connection, either side, as an asyncio.Protocol that relays streams.

The connection parses frames, keeps HPACK and flow-control state, and hands each stream's
events to that stream's handler (the relay). DATA is not interpreted: it goes straight to the
paired stream on the other connection, and the sender is credited (WINDOW_UPDATE) only once the
bytes have left on that other connection, so flow control holds end to end and a slow reader
holds back its writer. Writes are coalesced per event-loop turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sidecar.h2 import frames as F
from sidecar.h2.hpack_codec import CompressionError, Decoder, Encoder, Header, HeaderList, HeaderListTooLarge
from sidecar.h2.stream import Limits, Stream

__all__ = ["ConnectionError_", "H2Connection", "Limits", "Stream"]

log = logging.getLogger(__name__)


class ConnectionError_(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


_FLOOD_LIMIT = 10_000  # replies (PING/SETTINGS ACKs) owed to a peer that is not reading

RequestCallback = Callable[["Stream", HeaderList, bool], None]


class H2Connection(asyncio.Protocol):
    """Server side (accepts streams, calls on_request) or client side (opens streams)."""

    def __init__(
        self,
        *,
        client: bool,
        limits: Limits,
        on_request: RequestCallback | None = None,
        on_closed: Callable[[H2Connection], None] | None = None,
        on_ready: Callable[[H2Connection], None] | None = None,
        on_capacity: Callable[[H2Connection], None] | None = None,
        on_made: Callable[[H2Connection], None] | None = None,
    ) -> None:
        self.client = client
        self.limits = limits
        self.on_request = on_request
        self.on_closed = on_closed
        self.on_ready = on_ready
        self.on_capacity = on_capacity
        self.on_made = on_made
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.streams: dict[int, Stream] = {}
        self.decoder = Decoder(max_header_list_size=limits.max_header_list_size)
        self.encoder = Encoder()
        self.closed = False
        self.peer_identity: str | None = None  # the peer's SPIFFE ID, set by the TLS layer
        self._buf = bytearray()
        self._preface_pending = not client
        self._settings_seen = False
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._write_paused = False
        self._replies_while_paused = 0
        self._blocked: dict[Stream, None] = {}  # streams with data waiting for window or buffer
        # Peer's settings.
        self.peer_initial_window = F.DEFAULT_WINDOW
        self.peer_max_frame = F.DEFAULT_MAX_FRAME_SIZE
        self.peer_max_concurrent = 2**31 - 1
        self._table_size_zero = False
        # Flow control.
        self.conn_send_window = F.DEFAULT_WINDOW
        self.conn_recv_window = limits.connection_window
        self._conn_unacked = 0
        self._conn_threshold = limits.connection_window // 4
        self._stream_threshold = max(limits.initial_window // 4, 1)
        # Stream ids.
        self.next_sid = 1
        self.last_remote_sid = 0
        self.goaway_sent = False
        self.goaway_received_last: int | None = None
        self._continuation: tuple[int, int, bytearray] | None = None  # (sid, flags, block)
        self.drained: asyncio.Future[None] = self.loop.create_future()

    # ----------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        settings = {
            F.SETTINGS_MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
            F.SETTINGS_INITIAL_WINDOW_SIZE: self.limits.initial_window,
            F.SETTINGS_MAX_HEADER_LIST_SIZE: self.limits.max_header_list_size,
        }
        if self.limits.max_frame_size != F.DEFAULT_MAX_FRAME_SIZE:
            settings[F.SETTINGS_MAX_FRAME_SIZE] = self.limits.max_frame_size
        if self.client:
            settings[F.SETTINGS_ENABLE_PUSH] = 0
            self._write(F.PREFACE)
        self._write(F.settings(settings))
        if self.limits.connection_window > F.DEFAULT_WINDOW:
            self._write(F.window_update(0, self.limits.connection_window - F.DEFAULT_WINDOW))
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        try:
            if self._preface_pending:
                if len(buf) < len(F.PREFACE):
                    if not F.PREFACE.startswith(bytes(buf)):
                        raise ConnectionError_(F.PROTOCOL_ERROR, "invalid connection preface")
                    return
                if buf[: len(F.PREFACE)] != F.PREFACE:
                    raise ConnectionError_(F.PROTOCOL_ERROR, "invalid connection preface")
                self._preface_pending = False
                del buf[: len(F.PREFACE)]
            self._parse(buf)
        except ConnectionError_ as exc:
            self.connection_error(exc.code, str(exc))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._replies_while_paused = 0
        self._unblock()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            self._drop_pending(stream)
            if stream.handler is not None:
                stream.handler.on_reset(stream, F.CONNECT_ERROR)
        if not self.drained.done():
            self.drained.set_result(None)
        if self.on_closed is not None:
            self.on_closed(self)

    # ----------------------------------------------------------------- parsing

    def _parse(self, buf: bytearray) -> None:
        pos = 0
        end = len(buf)
        max_frame = self.limits.max_frame_size
        view = memoryview(buf)
        try:
            while end - pos >= F.FRAME_HEADER_SIZE:
                length, ftype, flags, sid = F.parse_header(buf, pos)
                if length > max_frame:
                    raise ConnectionError_(F.FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
                if end - pos - F.FRAME_HEADER_SIZE < length:
                    break
                start = pos + F.FRAME_HEADER_SIZE
                pos = start + length
                payload = bytes(view[start:pos])
                if not self._settings_seen and ftype != F.SETTINGS:
                    raise ConnectionError_(F.PROTOCOL_ERROR, "first frame must be SETTINGS")
                if self._continuation is not None and ftype != F.CONTINUATION:
                    raise ConnectionError_(F.PROTOCOL_ERROR, "expected CONTINUATION")
                if ftype == F.DATA:
                    self._on_data(flags, sid, payload)
                elif ftype == F.HEADERS:
                    self._on_headers_frame(flags, sid, payload)
                elif ftype == F.CONTINUATION:
                    self._on_continuation(flags, sid, payload)
                elif ftype == F.WINDOW_UPDATE:
                    self._on_window_update(sid, payload)
                elif ftype == F.RST_STREAM:
                    self._on_rst(sid, payload)
                elif ftype == F.SETTINGS:
                    self._on_settings(flags, sid, payload)
                elif ftype == F.PING:
                    self._on_ping(flags, sid, payload)
                elif ftype == F.GOAWAY:
                    self._on_goaway(sid, payload)
                elif ftype == F.PRIORITY:
                    self._on_priority(sid, payload)
                elif ftype == F.PUSH_PROMISE:
                    raise ConnectionError_(F.PROTOCOL_ERROR, "PUSH_PROMISE is not allowed")
                # Unknown frame types are ignored (RFC 9113 section 4.1).
                if self.transport is None or self.transport.is_closing():
                    return
        finally:
            view.release()
            del buf[:pos]

    @staticmethod
    def _strip_padding(flags: int, payload: bytes) -> bytes:
        if flags & F.FLAG_PADDED:
            if not payload:
                raise ConnectionError_(F.FRAME_SIZE_ERROR, "padded frame without pad length")
            pad = payload[0]
            if pad >= len(payload):
                raise ConnectionError_(F.PROTOCOL_ERROR, "padding exceeds the frame payload")
            return payload[1 : len(payload) - pad]
        return payload

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        if flow > self.conn_recv_window:
            raise ConnectionError_(F.FLOW_CONTROL_ERROR, "connection flow-control window exceeded")
        self.conn_recv_window -= flow
        data = self._strip_padding(flags, payload)
        stream = self.streams.get(sid)
        if stream is None or stream.recv_closed:
            if stream is None and self._is_idle(sid):
                raise ConnectionError_(F.PROTOCOL_ERROR, "DATA on an idle stream")
            self.credit(None, flow)
            if stream is not None:
                self._reset_and_notify(stream, F.STREAM_CLOSED)
            return
        if flow > stream.recv_window:
            self.credit(None, flow)
            self._reset(stream, F.FLOW_CONTROL_ERROR)
            if stream.handler is not None:
                stream.handler.on_reset(stream, F.FLOW_CONTROL_ERROR)
            return
        stream.recv_window -= flow
        end = bool(flags & F.FLAG_END_STREAM)
        if end:
            stream.recv_closed = True
        padding = flow - len(data)
        if padding:
            self.credit(stream, padding)
        if data:
            stream.received += len(data)
            oversized = stream.scan_messages(data, self.limits.max_message_bytes)
            if oversized >= 0:
                self.credit(stream, len(data))
                if stream.handler is not None:
                    stream.handler.on_oversized(stream, oversized)
                if end:
                    self._maybe_close(stream)
                return
        if stream.tap is not None:
            stream.tap(data, end)
        peer = stream.peer
        if peer is None or peer.send_closed or peer.end_queued or peer.tail is not None:
            self.credit(stream, len(data))
        else:
            peer_conn = peer.conn
            if peer_conn is None:  # upstream stream still waiting for its connection
                if data:
                    peer.pending.append(data)
                    peer.pending_bytes += len(data)
                if end:
                    peer.end_queued = True
            else:
                peer_conn.send_data(peer, data, end)
        if end:
            self._maybe_close(stream)

    def _is_idle(self, sid: int) -> bool:
        """A stream id neither side has used yet."""
        remote_parity = 0 if self.client else 1
        if sid & 1 == remote_parity:
            return sid > self.last_remote_sid
        return sid >= self.next_sid

    def _on_headers_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & F.FLAG_PADDED and flags & F.FLAG_PRIORITY and payload and payload[0] > len(payload) - 6:
            raise ConnectionError_(F.PROTOCOL_ERROR, "padding exceeds the header block fragment")
        block = self._strip_padding(flags, payload)
        if flags & F.FLAG_PRIORITY:
            if len(block) < 5:
                raise ConnectionError_(F.FRAME_SIZE_ERROR, "HEADERS priority field truncated")
            if F.u32(block) & 0x7FFFFFFF == sid:
                raise ConnectionError_(F.PROTOCOL_ERROR, "stream depends on itself")
            block = block[5:]
        if flags & F.FLAG_END_HEADERS:
            self._on_header_block(sid, flags, block)
        else:
            self._continuation = (sid, flags, bytearray(block))

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != sid:
            raise ConnectionError_(F.PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, first_flags, block = self._continuation
        block += payload
        if len(block) > 4 * self.limits.max_header_list_size:
            raise ConnectionError_(F.ENHANCE_YOUR_CALM, "header block too large")
        if flags & F.FLAG_END_HEADERS:
            self._continuation = None
            self._on_header_block(sid, first_flags, bytes(block))

    def _on_header_block(self, sid: int, flags: int, block: bytes) -> None:
        end = bool(flags & F.FLAG_END_STREAM)
        stream = self.streams.get(sid)
        too_large: HeaderListTooLarge | None = None
        try:
            headers = self.decoder.decode(block)
        except CompressionError as exc:
            raise ConnectionError_(F.COMPRESSION_ERROR, f"header block: {exc}") from None
        except HeaderListTooLarge as exc:
            headers, too_large = (), exc
        if stream is None:
            if self.client or sid <= self.last_remote_sid:
                if self._is_idle(sid):
                    raise ConnectionError_(F.PROTOCOL_ERROR, "HEADERS on an idle stream")
                return  # a stream we already closed or reset: ignore
            if sid % 2 == 0:
                raise ConnectionError_(F.PROTOCOL_ERROR, "client stream ids must be odd")
            self.last_remote_sid = sid
            if self.goaway_sent:
                self._write(F.rst_stream(sid, F.REFUSED_STREAM))
                return
            if len(self.streams) >= self.limits.max_concurrent_streams:
                self._write(F.rst_stream(sid, F.REFUSED_STREAM))
                return
            stream = Stream(None)
            self._attach(stream, sid)
            stream.recv_closed = end
            if too_large is not None or self.on_request is None:
                self._reset(stream, F.PROTOCOL_ERROR if too_large is None else F.REFUSED_STREAM)
                return
            self.on_request(stream, headers, end)
            return
        if stream.recv_closed:
            self._reset(stream, F.STREAM_CLOSED)
            if stream.handler is not None:
                stream.handler.on_reset(stream, F.STREAM_CLOSED)
            return
        if end:
            stream.recv_closed = True
        if too_large is not None:
            self._reset(stream, F.PROTOCOL_ERROR)
            if stream.handler is not None:
                stream.handler.on_reset(stream, F.PROTOCOL_ERROR)
            return
        if stream.handler is not None:
            stream.handler.on_headers(stream, headers, end)
        if end:
            self._maybe_close(stream)

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(F.FRAME_SIZE_ERROR, "WINDOW_UPDATE must be 4 bytes")
        increment = F.u32(payload) & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise ConnectionError_(F.PROTOCOL_ERROR, "WINDOW_UPDATE increment of 0")
            self.conn_send_window += increment
            if self.conn_send_window > F.MAX_WINDOW:
                raise ConnectionError_(F.FLOW_CONTROL_ERROR, "connection window overflow")
            self._unblock()
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self._is_idle(sid):
                raise ConnectionError_(F.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self._reset_and_notify(stream, F.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > F.MAX_WINDOW:
            self._reset_and_notify(stream, F.FLOW_CONTROL_ERROR)
            return
        if stream.pending or stream.tail is not None or stream.end_queued:
            self._flush_stream(stream)

    def _on_rst(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(F.FRAME_SIZE_ERROR, "RST_STREAM must be 4 bytes")
        if sid == 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        stream = self.streams.get(sid)
        if stream is None:
            if self._is_idle(sid):
                raise ConnectionError_(F.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return
        self._close(stream)
        if stream.handler is not None:
            stream.handler.on_reset(stream, F.u32(payload))

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & F.FLAG_ACK:
            if payload:
                raise ConnectionError_(F.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(F.FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
        first = not self._settings_seen
        self._settings_seen = True
        for key, value in F.parse_settings(payload):
            if key == F.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > F.MAX_WINDOW:
                    raise ConnectionError_(F.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > F.MAX_WINDOW:
                        raise ConnectionError_(F.FLOW_CONTROL_ERROR, "stream window overflow")
            elif key == F.SETTINGS_MAX_FRAME_SIZE:
                if not F.DEFAULT_MAX_FRAME_SIZE <= value <= F.MAX_FRAME_SIZE_LIMIT:
                    raise ConnectionError_(F.PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == F.SETTINGS_MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent = value
            elif key == F.SETTINGS_ENABLE_PUSH:
                if value > 1:
                    raise ConnectionError_(F.PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH")
            elif key == F.SETTINGS_HEADER_TABLE_SIZE:
                self._table_size_zero = True
        self._check_flood()
        self._write(F.SETTINGS_ACK)
        for stream in list(self.streams.values()):
            if stream.send_window > 0 and (stream.pending or stream.tail is not None or stream.end_queued):
                self._blocked[stream] = None
        self._unblock()
        if first and self.on_ready is not None:
            self.on_ready(self)

    def _on_ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(F.FRAME_SIZE_ERROR, "PING must be 8 bytes")
        if not flags & F.FLAG_ACK:
            self._check_flood()
            self._write(F.frame(F.PING, F.FLAG_ACK, 0, payload))

    def _check_flood(self) -> None:
        """A peer that keeps asking for replies while it does not read them is cut off. Only the
        replies count: relayed DATA in the buffer is bounded by flow control already."""
        if self._write_paused:
            self._replies_while_paused += 1
            if self._replies_while_paused > _FLOOD_LIMIT:
                raise ConnectionError_(F.ENHANCE_YOUR_CALM, "control frames flood while not reading")

    def _on_goaway(self, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionError_(F.FRAME_SIZE_ERROR, "GOAWAY too short")
        last, code = F.parse_goaway(payload)
        self.goaway_received_last = last
        if code != F.NO_ERROR:
            log.info("peer sent GOAWAY code=%d", code)
        if self.client:
            # Streams the peer never saw were not processed: the caller may safely retry them.
            for stream in [s for s in self.streams.values() if s.sid > last]:
                self._close(stream)
                if stream.handler is not None:
                    stream.handler.on_reset(stream, F.REFUSED_STREAM)
        if not self.streams:
            self._close_transport()

    def _on_priority(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            stream = self.streams.get(sid)
            if stream is not None:
                self._reset_and_notify(stream, F.FRAME_SIZE_ERROR)
            else:
                self._write(F.rst_stream(sid, F.FRAME_SIZE_ERROR))
            return
        if F.u32(payload) & 0x7FFFFFFF == sid:
            stream = self.streams.get(sid)
            if stream is not None:
                self._reset_and_notify(stream, F.PROTOCOL_ERROR)
            else:
                self._write(F.rst_stream(sid, F.PROTOCOL_ERROR))

    # ----------------------------------------------------------------- sending

    @property
    def can_open_stream(self) -> bool:
        return (
            not self.closed
            and not self.goaway_sent
            and self.goaway_received_last is None
            and len(self.streams) < self.peer_max_concurrent
            and self.next_sid < 2**31 - 1
        )

    def _attach(self, stream: Stream, sid: int) -> None:
        stream.sid = sid
        stream.conn = self
        stream.send_window = self.peer_initial_window
        stream.recv_window = self.limits.initial_window
        self.streams[sid] = stream

    def open_stream(self, stream: Stream, headers: list[Header]) -> None:
        """Client side: start a stream whose request data may already be queued on it."""
        self._attach(stream, self.next_sid)
        self.next_sid += 2
        self.send_headers(stream, headers, stream.end_queued and not stream.pending and stream.tail is None)
        if stream.pending or stream.tail is not None:
            self._flush_stream(stream)

    def send_headers(self, stream: Stream, headers: list[Header] | HeaderList, end_stream: bool) -> None:
        block = self.encoder.encode(headers, self._table_size_zero)
        self._table_size_zero = False
        self._write(F.headers_frames(stream.sid, block, end_stream, self.peer_max_frame))
        stream.headers_sent = True
        if end_stream:
            stream.send_closed = True
            self._maybe_close(stream)

    def send_trailers(self, stream: Stream, headers: list[Header] | HeaderList) -> None:
        """Trailers go after any data still queued on the stream."""
        if stream.send_closed:
            return
        if stream.pending:
            stream.tail = headers  # encoded when written, so a table size update lands in order
            return
        block = self.encoder.encode(headers, self._table_size_zero)
        self._table_size_zero = False
        self._write(F.headers_frames(stream.sid, block, True, self.peer_max_frame))
        stream.send_closed = True
        self._maybe_close(stream)

    def send_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if data:
            stream.pending.append(data)
            stream.pending_bytes += len(data)
        if end_stream:
            stream.end_queued = True
        self._flush_stream(stream)

    def _flush_stream(self, stream: Stream) -> None:
        if stream.send_closed or stream.conn is not self:
            return
        pending = stream.pending
        peer = stream.peer
        sent = 0
        max_frame = self.peer_max_frame
        while pending:
            if self._write_paused:
                self._blocked[stream] = None
                break
            allowed = min(stream.send_window, self.conn_send_window, max_frame)
            if allowed <= 0:
                if stream.send_window > 0:
                    self._blocked[stream] = None
                break
            chunk = pending[0]
            if len(chunk) > allowed:
                pending[0] = chunk[allowed:]
                chunk = chunk[:allowed]
            else:
                pending.popleft()
            n = len(chunk)
            stream.pending_bytes -= n
            stream.send_window -= n
            self.conn_send_window -= n
            sent += n
            last = not pending and stream.end_queued and stream.tail is None
            self._write(F.frame_header(F.DATA, F.FLAG_END_STREAM if last else 0, stream.sid, n))
            self._write(chunk)
            if last:
                stream.send_closed = True
        if sent and stream.uncredited:
            skip = min(sent, stream.uncredited)
            stream.uncredited -= skip
            sent -= skip
        if sent and peer is not None and peer.conn is not None:
            peer.conn.credit(peer, sent)
        if not pending and not stream.send_closed:
            if stream.tail is not None:
                tail, stream.tail = stream.tail, None
                block = self.encoder.encode(tail, self._table_size_zero)
                self._table_size_zero = False
                self._write(F.headers_frames(stream.sid, block, True, max_frame))
                stream.send_closed = True
            elif stream.end_queued:
                self._write(F.frame(F.DATA, F.FLAG_END_STREAM, stream.sid))
                stream.send_closed = True
        if stream.send_closed:
            self._maybe_close(stream)

    def _unblock(self) -> None:
        if not self._blocked:
            return
        blocked = list(self._blocked)
        self._blocked.clear()
        for stream in blocked:
            self._flush_stream(stream)

    def credit(self, stream: Stream | None, n: int) -> None:
        """n bytes received on this connection have been consumed: let the peer send more."""
        if self.transport is None:
            return
        self._conn_unacked += n
        if self._conn_unacked >= self._conn_threshold:
            self._write(F.window_update(0, self._conn_unacked))
            self.conn_recv_window += self._conn_unacked
            self._conn_unacked = 0
        if stream is not None and not stream.recv_closed and stream.conn is self:
            stream.unacked += n
            if stream.unacked >= self._stream_threshold:
                self._write(F.window_update(stream.sid, stream.unacked))
                stream.recv_window += stream.unacked
                stream.unacked = 0

    def reset(self, stream: Stream, code: int) -> None:
        """Abort a stream from our side (RST_STREAM to the peer)."""
        if stream.conn is self and stream.sid in self.streams:
            self._reset(stream, code)

    def _reset(self, stream: Stream, code: int) -> None:
        self._write(F.rst_stream(stream.sid, code))
        self._close(stream)

    def _reset_and_notify(self, stream: Stream, code: int) -> None:
        self._reset(stream, code)
        if stream.handler is not None:
            stream.handler.on_reset(stream, code)

    def _drop_pending(self, stream: Stream) -> None:
        """Discarded data must still be credited to the stream and connection it came from (but
        not the part of a replayed request credited before)."""
        dropped = stream.pending_bytes - stream.uncredited
        stream.pending.clear()
        stream.pending_bytes = 0
        stream.uncredited = 0
        stream.tail = None
        peer = stream.peer
        if dropped > 0 and peer is not None and peer.conn is not None:
            peer.conn.credit(peer, dropped)

    def _close(self, stream: Stream) -> None:
        stream.send_closed = stream.recv_closed = True
        self._drop_pending(stream)
        self._blocked.pop(stream, None)
        if self.streams.pop(stream.sid, None) is not None:
            self._stream_closed()

    def _maybe_close(self, stream: Stream) -> None:
        if stream.send_closed and stream.recv_closed and self.streams.pop(stream.sid, None) is not None:
            self._blocked.pop(stream, None)
            self._stream_closed()

    def _stream_closed(self) -> None:
        if not self.streams and (self.goaway_sent or self.goaway_received_last is not None):
            self._close_transport()
        elif self.on_capacity is not None:
            self.on_capacity(self)

    # ----------------------------------------------------------------- connection lifecycle

    def drain(self) -> asyncio.Future[None]:
        """Graceful shutdown: GOAWAY, let streams in flight finish, then close."""
        if self.transport is None and not self.drained.done():
            self.drained.set_result(None)  # never opened (e.g. a refused TLS handshake) or already gone
        if not self.goaway_sent and self.transport is not None:
            self.goaway_sent = True
            self._write(F.goaway(self.last_remote_sid, F.NO_ERROR))
            if not self.streams:
                self._close_transport()
        return self.drained

    def connection_error(self, code: int, reason: str) -> None:
        log.info("HTTP/2 connection error %d: %s", code, reason)
        if self.transport is None:
            return
        self.goaway_sent = True
        self._write(F.goaway(self.last_remote_sid, code))
        self._close_transport()

    def _close_transport(self) -> None:
        transport = self.transport
        if transport is None:
            return
        self._flush()
        transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out:
            out = self._out
            self._out = []
            if self.transport is not None and not self.transport.is_closing():
                # One write, not writelines: a TLS transport makes a record per buffer it is given.
                self.transport.write(b"".join(out) if len(out) > 1 else out[0])
