"""HPACK (RFC 7541) for the relay: a decoder with per-connection state and a stateless encoder.

The decoder keeps the dynamic table and memoises header blocks that leave it unchanged, so a
client sending the same request headers over and over costs one dict lookup per call. The
encoder never indexes: what the sidecar emits is literal or static-indexed, so its output does
not depend on connection state and can be cached per header.
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

# (name, value, never_indexed)
Header = tuple[bytes, bytes, bool]
HeaderList = tuple[Header, ...]

_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_STATIC_LEN = len(_STATIC)
_ENTRY_OVERHEAD = 32
_MEMO_LIMIT = 512


class CompressionError(Exception):
    """The header block cannot be decoded: a connection error (COMPRESSION_ERROR)."""


class HeaderListTooLarge(Exception):
    """The decoded header list exceeds the advertised limit: a stream error."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"header list of {size} bytes exceeds the limit of {limit}")
        self.size = size
        self.limit = limit


def _integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    mask = (1 << prefix_bits) - 1
    if pos >= len(data):
        raise CompressionError("truncated integer")
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    for _ in range(5):  # 2**35 is far beyond any length or index we accept
        if pos >= len(data):
            raise CompressionError("truncated integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
    raise CompressionError("integer too large")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise CompressionError("truncated string")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise CompressionError("string runs past the header block")
    raw = data[pos:end]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except Exception as exc:  # hpack raises its own error types for bad padding/EOS
            raise CompressionError(f"invalid Huffman string: {exc}") from None
    return raw, end


class Decoder:
    """Per-connection HPACK decoder state."""

    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 65536) -> None:
        self.max_table_size = max_table_size  # what we advertised in SETTINGS_HEADER_TABLE_SIZE
        self.max_header_list_size = max_header_list_size
        self._table_limit = max_table_size
        self._entries: deque[tuple[bytes, bytes]] = deque()
        self._size = 0
        self._memo: dict[bytes, HeaderList] = {}

    def decode(self, block: bytes) -> HeaderList:
        memo = self._memo.get(block)
        if memo is not None:
            return memo
        changed, headers = self._decode(block)
        if changed:
            self._memo.clear()
        size = 0
        for name, value, _ in headers:
            size += len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self.max_header_list_size:
            raise HeaderListTooLarge(size, self.max_header_list_size)
        if not changed and len(self._memo) < _MEMO_LIMIT:
            self._memo[bytes(block)] = headers
        return headers

    def _lookup(self, index: int) -> tuple[bytes, bytes]:
        if index == 0:
            raise CompressionError("index 0 is not valid")
        if index <= _STATIC_LEN:
            return _STATIC[index - 1]
        dyn = index - _STATIC_LEN - 1
        if dyn >= len(self._entries):
            raise CompressionError(f"index {index} is outside the header table")
        return self._entries[dyn]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self._table_limit:
            self._entries.clear()
            self._size = 0
            return
        self._entries.appendleft((name, value))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._table_limit:
            name, value = self._entries.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD

    def _decode(self, data: bytes) -> tuple[bool, HeaderList]:
        headers: list[Header] = []
        changed = False
        pos = 0
        n = len(data)
        while pos < n:
            byte = data[pos]
            if byte & 0x80:
                index, pos = _integer(data, pos, 7)
                name, value = self._lookup(index)
                headers.append((name, value, False))
                continue
            if byte & 0xC0 == 0x40:
                index, pos = _integer(data, pos, 6)
                indexed, never = True, False
            elif byte & 0xE0 == 0x20:
                if headers:
                    raise CompressionError("dynamic table size update after the first header")
                size, pos = _integer(data, pos, 5)
                if size > self.max_table_size:
                    raise CompressionError(f"table size {size} exceeds the advertised {self.max_table_size}")
                self._table_limit = size
                self._evict()
                changed = True
                continue
            else:
                index, pos = _integer(data, pos, 4)
                indexed, never = False, bool(byte & 0x10)
            if index:
                name = self._lookup(index)[0]
            else:
                name, pos = _string(data, pos)
            value, pos = _string(data, pos)
            if indexed:
                self._add(name, value)
                changed = True
            headers.append((name, value, never))
        return changed, tuple(headers)


_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(_STATIC, start=1):
    _STATIC_FULL.setdefault((_n, _v), _i)
    _STATIC_NAME.setdefault(_n, _i)


def _encode_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_header(name: bytes, value: bytes, never: bool) -> bytes:
    if not never:
        full = _STATIC_FULL.get((name, value))
        if full is not None:
            return bytes((0x80 | full,))
    first = 0x10 if never else 0x00
    index = _STATIC_NAME.get(name)
    if index is not None:
        head = _encode_int(index, 4, first)
    else:
        head = _encode_int(0, 4, first) + _encode_int(len(name), 7, 0) + name
    return head + _encode_int(len(value), 7, 0) + value


class Encoder:
    """Stateless HPACK encoder (no dynamic table), with a bounded cache per header."""

    def __init__(self) -> None:
        self._cache: dict[Header, bytes] = {}

    def encode(self, headers: list[Header] | HeaderList, table_size_zero: bool = False) -> bytes:
        cache = self._cache
        parts = [b"\x20"] if table_size_zero else []
        for header in headers:
            encoded = cache.get(header)
            if encoded is None:
                encoded = _encode_header(*header)
                if len(cache) >= 4096:
                    cache.clear()
                cache[header] = encoded
            parts.append(encoded)
        return b"".join(parts)
