"""HPACK (RFC 7541) conformance of sidecar.h2.hpack_codec, with the `hpack` package as the oracle."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.h2.hpack_codec import CompressionError, Decoder, Encoder, HeaderListTooLarge

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROPERTY = settings(FUZZ, max_examples=150)

Triple = tuple[bytes, bytes, bool]


def oracle_view(headers: list) -> list[Triple]:
    """hpack.Decoder output as (name, value, never_indexed) triples."""
    return [(bytes(h[0]), bytes(h[1]), isinstance(h, hpack.NeverIndexedHeaderTuple)) for h in headers]


def entry_size(headers: list[Triple]) -> int:
    return sum(len(n) + len(v) + 32 for n, v, _ in headers)


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Fail instead of hanging if the body runs for longer than `seconds`."""

    def expired(signum: int, frame: object) -> None:
        raise AssertionError(f"did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# A request as a gRPC client sends it, plus headers that exercise every literal representation.
REQUEST: list[Triple] = [
    (b":method", b"POST", False),
    (b":scheme", b"https", False),
    (b":path", b"/mesh.users.v1.Users/GetUser", False),
    (b":authority", b"users.mesh.internal:8443", False),
    (b"content-type", b"application/grpc", False),
    (b"te", b"trailers", False),
    (b"grpc-timeout", b"998m", False),
    (b"user-agent", b"grpc-python/1.85.1 grpc-c/50.0.0 (linux; chttp2)", False),
    (b"authorization", b"Bearer eyJhbGciOiJFZERTQSJ9.e30.c2lnbmF0dXJl", True),
    (b"x-request-id", b"6c1f0a52-59a1-4a4e-9d39-0a9c1f3bd0a1", False),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
    (b"x-empty", b"", False),
    (b"x-binary-bin", bytes(range(256)), False),
]


# ---------------------------------------------------------------- our Decoder against hpack.Encoder


@pytest.mark.parametrize("huffman", [False, True], ids=["raw", "huffman"])
def test_decoder_reads_hpack_encoder_blocks_with_dynamic_table(huffman: bool) -> None:
    encoder = hpack.Encoder()
    ours = Decoder()
    oracle = hpack.Decoder()
    blocks = []
    for i in range(6):
        headers = [*REQUEST, (b"x-seq", str(i).encode(), False)]
        if i % 2:
            headers.append((b"cookie", b"session=" + bytes([0x61 + i]) * 40, False))
        blocks.append((headers, encoder.encode(headers, huffman=huffman)))
    # Later blocks are much shorter than the first: they index what the first one added.
    assert len(blocks[2][1]) < len(blocks[0][1]) // 2
    for headers, block in blocks:
        decoded = ours.decode(block)
        assert list(decoded) == headers
        assert list(decoded) == oracle_view(oracle.decode(block, raw=True))


def test_never_indexed_headers_stay_never_indexed() -> None:
    encoder = hpack.Encoder()
    ours = Decoder()
    headers = [
        (b"authorization", b"secret-token", True),
        (b":path", b"/a.B/C", True),  # a static name, never indexed
        (b"x-api-key", b"k" * 50, True),  # a new name, never indexed
        (b"x-plain", b"v", False),
    ]
    for huffman in (False, True):
        decoded = ours.decode(encoder.encode(headers, huffman=huffman))
        assert list(decoded) == headers
        assert [h[2] for h in decoded] == [True, True, True, False]


def test_never_indexed_literal_representations_by_hand() -> None:
    # 0001xxxx with a static name index and with a new name (RFC 7541 section 6.2.3).
    assert Decoder().decode(b"\x14\x03/ab") == ((b":path", b"/ab", True),)
    assert Decoder().decode(b"\x10\x01k\x01v") == ((b"k", b"v", True),)
    # 0000xxxx: without indexing, and not marked as never indexed.
    assert Decoder().decode(b"\x04\x03/ab") == ((b":path", b"/ab", False),)


def test_decoder_follows_table_size_updates_from_hpack_encoder() -> None:
    encoder = hpack.Encoder()
    ours = Decoder()
    oracle = hpack.Decoder()
    first = [(b"x-a", b"a" * 100, False), (b"x-b", b"b" * 100, False)]
    assert list(ours.decode(encoder.encode(first))) == first
    encoder.header_table_size = 150  # only one of the two entries fits now
    block = encoder.encode(first)
    assert block[0] & 0xE0 == 0x20, "the block starts with a dynamic table size update"
    assert list(ours.decode(block)) == first == oracle_view(oracle.decode(block, raw=True))
    encoder.header_table_size = 0
    block = encoder.encode(first)
    assert list(ours.decode(block)) == first
    # With a table of size 0 nothing is left to index: index 62 no longer exists.
    with pytest.raises(CompressionError):
        ours.decode(b"\xbe")


def test_multiple_size_updates_at_the_start_are_allowed() -> None:
    decoder = Decoder()
    # Shrink to 0, then grow to 4096 (0x3f 0xe1 0x1f), then an indexed header.
    assert decoder.decode(b"\x20\x3f\xe1\x1f\x82") == ((b":method", b"GET", False),)


# ---------------------------------------------------------------- our Encoder against hpack.Decoder


def test_encoder_output_decodes_with_hpack() -> None:
    block = Encoder().encode(REQUEST)
    assert oracle_view(hpack.Decoder().decode(block, raw=True)) == REQUEST


def test_encoder_table_size_zero_is_accepted_and_first() -> None:
    block = Encoder().encode(REQUEST[:3], table_size_zero=True)
    assert block[:1] == b"\x20"
    oracle = hpack.Decoder()
    assert oracle_view(oracle.decode(block, raw=True)) == REQUEST[:3]
    assert oracle.header_table_size == 0


def test_encoder_is_stateless_and_cached() -> None:
    encoder = Encoder()
    first = encoder.encode(REQUEST)
    again = encoder.encode(tuple(REQUEST))
    assert first == again
    # Stateless: the same block decodes the same on a fresh decoder and on a used one.
    oracle = hpack.Decoder()
    assert oracle_view(oracle.decode(first, raw=True)) == oracle_view(oracle.decode(again, raw=True))
    assert oracle.header_table.dynamic_entries == type(oracle.header_table.dynamic_entries)()


def test_encoder_output_decodes_with_our_decoder() -> None:
    assert list(Decoder().decode(Encoder().encode(REQUEST))) == REQUEST


# ---------------------------------------------------------------- memoisation


def test_memoised_result_is_identical() -> None:
    decoder = Decoder()
    block = Encoder().encode(REQUEST)  # no indexing: leaves the table unchanged
    first = decoder.decode(block)
    assert decoder.decode(block) is first
    assert decoder.decode(bytes(bytearray(block))) is first


def test_memo_invalidated_when_an_entry_is_added() -> None:
    decoder = Decoder()
    decoder.decode(b"\x40\x01x\x011")  # incremental indexing: x: 1 at index 62
    refer = b"\xbe"  # indexed header field 62
    assert decoder.decode(refer) == ((b"x", b"1", False),)
    assert decoder.decode(refer) == ((b"x", b"1", False),)  # served from the memo
    decoder.decode(b"\x40\x01y\x012")  # y: 2 is now 62, x: 1 is 63
    assert decoder.decode(refer) == ((b"y", b"2", False),)
    assert decoder.decode(b"\xbf") == ((b"x", b"1", False),)


def test_memo_invalidated_by_a_size_update() -> None:
    decoder = Decoder()
    decoder.decode(b"\x40\x01x\x011")
    assert decoder.decode(b"\xbe") == ((b"x", b"1", False),)
    decoder.decode(b"\x20")  # table size 0: evicts everything
    with pytest.raises(CompressionError):
        decoder.decode(b"\xbe")


def test_memo_invalidated_by_eviction_through_insertion() -> None:
    decoder = Decoder(max_table_size=100)
    decoder.decode(b"\x40\x01x\x011")  # 34 bytes
    assert decoder.decode(b"\xbe") == ((b"x", b"1", False),)
    decoder.decode(b"\x40\x01y" + b"\x3f" + b"v" * 63)  # 96 bytes: evicts x
    assert decoder.decode(b"\xbe") == ((b"y", b"v" * 63, False),)
    with pytest.raises(CompressionError):
        decoder.decode(b"\xbf")


def test_memo_invalidated_when_an_oversized_block_changed_the_table() -> None:
    decoder = Decoder(max_header_list_size=150)
    decoder.decode(b"\x40\x01x\x011")
    assert decoder.decode(b"\xbe") == ((b"x", b"1", False),)
    # Adds y: <80 bytes> (113 bytes) next to a 73-byte literal: the list is refused, but the table
    # change stands (the decoder must stay in step with the encoder, RFC 9113 section 4.3).
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(b"\x40\x01y\x50" + b"v" * 80 + b"\x00\x01z\x27" + b"w" * 39)
    assert decoder.decode(b"\xbe") == ((b"y", b"v" * 80, False),)


def test_same_block_under_different_table_states_matches_hpack() -> None:
    encoder = hpack.Encoder()
    ours = Decoder()
    oracle = hpack.Decoder()
    refer = b"\xbe\xbf"
    for i in range(4):
        block = encoder.encode([(b"x-n", str(i).encode()), (b"x-m", str(i * 7).encode())])
        assert list(ours.decode(block)) == oracle_view(oracle.decode(block, raw=True))
        assert list(ours.decode(refer)) == oracle_view(oracle.decode(refer, raw=True))


# ---------------------------------------------------------------- errors


def test_size_update_after_a_header_is_an_error() -> None:
    with pytest.raises(CompressionError):
        Decoder().decode(b"\x82\x20")
    with pytest.raises(CompressionError):
        Decoder().decode(b"\x82\x3f\xe1\x1f")


def test_size_update_above_the_advertised_maximum_is_an_error() -> None:
    Decoder(max_table_size=4096).decode(b"\x3f\xe1\x1f")  # 4096 exactly
    with pytest.raises(CompressionError):
        Decoder(max_table_size=4096).decode(b"\x3f\xe2\x1f")  # 4097
    with pytest.raises(CompressionError):
        Decoder(max_table_size=0).decode(b"\x21")


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"\x80", id="indexed-0"),
        pytest.param(b"\xbe", id="indexed-62-empty-table"),
        pytest.param(b"\xff\x80\x80\x80\x80\x01", id="indexed-huge"),
        pytest.param(b"\x4f\x2f\x01v", id="incremental-name-62"),
        pytest.param(b"\x0f\x2f\x01v", id="literal-name-62"),
        pytest.param(b"\x1f\x2f\x01v", id="never-name-62"),
    ],
)
def test_bad_index_is_an_error(block: bytes) -> None:
    with pytest.raises(CompressionError):
        Decoder().decode(block)


def test_index_just_inside_and_outside_the_dynamic_table() -> None:
    decoder = Decoder()
    decoder.decode(b"\x40\x01a\x011\x40\x01b\x012")  # b: 2 at 62, a: 1 at 63
    assert decoder.decode(b"\xbf") == ((b"a", b"1", False),)
    with pytest.raises(CompressionError):
        decoder.decode(b"\xc0")  # 64


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"\xff", id="integer-continuation-missing"),
        pytest.param(b"\xff\x80", id="integer-continuation-unterminated"),
        pytest.param(b"\x00", id="literal-without-name"),
        pytest.param(b"\x00\x05ab", id="name-runs-past-end"),
        pytest.param(b"\x00\x01a", id="literal-without-value"),
        pytest.param(b"\x00\x01a\x7f", id="value-length-truncated"),
        pytest.param(b"\x04\x05abc", id="value-runs-past-end"),
        pytest.param(b"\x3f", id="size-update-truncated"),
        pytest.param(b"\x00\x01a\x81\x18", id="huffman-zero-padding"),
        pytest.param(b"\x00\x01a\x82\x1f\xff", id="huffman-padding-over-7-bits"),
        pytest.param(b"\x00\x01a\x84\xff\xff\xff\xff", id="huffman-eos"),
    ],
)
def test_truncated_or_malformed_input_is_an_error(block: bytes) -> None:
    with pytest.raises(CompressionError):
        Decoder().decode(block)


def test_every_truncation_of_a_block_is_an_error_or_a_prefix() -> None:
    headers = REQUEST
    for huffman in (False, True):
        block = hpack.Encoder().encode(headers, huffman=huffman)
        for cut in range(len(block)):
            try:
                decoded = Decoder().decode(block[:cut])
            except CompressionError:
                continue
            assert list(decoded) == headers[: len(decoded)]


def test_header_list_over_the_limit() -> None:
    block = Encoder().encode(REQUEST)
    size = entry_size(REQUEST)
    assert list(Decoder(max_header_list_size=size).decode(block)) == REQUEST
    decoder = Decoder(max_header_list_size=size - 1)
    with pytest.raises(HeaderListTooLarge) as info:
        decoder.decode(block)
    assert (info.value.size, info.value.limit) == (size, size - 1)
    # Not memoised: a second decode of the same bytes is refused too.
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(block)
    # And the decoder still works for a block within the limit.
    assert decoder.decode(b"\x82") == ((b":method", b"GET", False),)


# ---------------------------------------------------------------- properties

names = st.one_of(
    st.sampled_from([n for n, _ in hpack.table.HeaderTable.STATIC_TABLE]),
    st.binary(min_size=1, max_size=24).map(lambda b: b"x-" + bytes(0x61 + c % 26 for c in b)),
)
values = st.one_of(
    st.sampled_from([v for _, v in hpack.table.HeaderTable.STATIC_TABLE]),
    st.binary(max_size=80),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_./:; ", max_size=60).map(str.encode),
)
header_lists = st.lists(st.tuples(names, values, st.booleans()), max_size=12)


def _mutations(block: bytes, data: st.DataObject) -> bytes:
    raw = bytearray(block)
    for _ in range(data.draw(st.integers(0, 4))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    return bytes(raw)


@FUZZ
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_arbitrary_bytes_raise_only_hpack_errors(blocks: list[bytes]) -> None:
    decoder = Decoder(max_header_list_size=256)
    with watchdog(5):
        for block in blocks:
            try:
                decoded = decoder.decode(block)
            except (CompressionError, HeaderListTooLarge):
                continue
            assert all(
                isinstance(n, bytes) and isinstance(v, bytes) and isinstance(nv, bool) for n, v, nv in decoded
            )


@FUZZ
@given(header_lists, st.booleans(), st.data())
def test_mutated_valid_blocks_raise_only_hpack_errors(headers: list[Triple], huffman: bool, data) -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = 256
    decoder = Decoder(max_header_list_size=1024)
    with watchdog(5):
        for _ in range(2):
            block = _mutations(encoder.encode(headers, huffman=huffman), data)
            with contextlib.suppress(CompressionError, HeaderListTooLarge):
                decoder.decode(block)


@PROPERTY
@given(
    st.lists(st.tuples(header_lists, st.booleans()), min_size=1, max_size=5), st.sampled_from([0, 128, 4096])
)
def test_round_trip_through_hpack_encoder(blocks: list[tuple[list[Triple], bool]], table_size: int) -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = table_size
    ours = Decoder()
    oracle = hpack.Decoder()
    for headers, huffman in blocks:
        block = encoder.encode(headers, huffman=huffman)
        expected = oracle_view(oracle.decode(block, raw=True))
        assert [(n, v) for n, v, _ in expected] == [(n, v) for n, v, _ in headers]
        assert list(ours.decode(block)) == expected


@PROPERTY
@given(st.lists(header_lists, min_size=1, max_size=4))
def test_round_trip_through_our_encoder(blocks: list[list[Triple]]) -> None:
    encoder = Encoder()
    oracle = hpack.Decoder()
    ours = Decoder()
    for i, headers in enumerate(blocks):
        block = encoder.encode(headers, table_size_zero=i == 0)
        assert oracle_view(oracle.decode(block, raw=True)) == headers
        assert list(ours.decode(block)) == headers
