"""gRPC wire details: grpc-timeout, grpc-message percent-encoding, status headers and codes."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.grpc_wire import (
    Code,
    decode_message,
    encode_message,
    format_timeout,
    parse_timeout,
    status_of,
    status_trailers,
    trailers_only,
)

# Deterministic: the same examples on every run, nothing written to a database.
PROPERTY = settings(max_examples=500, derandomize=True, database=None, deadline=None)

UNIT_SECONDS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


# ------------------------------------------------------------------ grpc-timeout


@pytest.mark.parametrize(
    "value, seconds",
    [
        (b"2H", 7200.0),
        (b"3M", 180.0),
        (b"4S", 4.0),
        (b"250m", 0.25),
        (b"1500u", 0.0015),
        (b"7n", 7e-9),
        (b"0S", 0.0),
        (b"00000001S", 1.0),
        (b"99999999S", 99_999_999.0),
        (b"99999999H", 99_999_999 * 3600.0),
    ],
)
def test_parse_timeout_every_unit(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds, rel=1e-12, abs=0)


@pytest.mark.parametrize(
    "value",
    [
        b"123456789S",  # 9 digits
        b"100",  # no unit
        b"",
        b"S",  # unit without digits
        b"-1S",
        b"+1S",
        b"abcS",
        b"1x",  # unknown unit
        b"1s",  # units are case-sensitive: 's' is not one
        b"1.5S",
        b" 1S",
        b"1 S",
        b"1S ",
        b"0x1S",
    ],
)
def test_parse_timeout_rejects_malformed_values(value: bytes) -> None:
    with pytest.raises(ValueError):
        parse_timeout(value)


def _split(formatted: bytes) -> tuple[bytes, bytes]:
    return formatted[:-1], formatted[-1:]


@PROPERTY
@given(st.floats(min_value=1e-6, max_value=1e7, allow_nan=False, allow_infinity=False))
@example(1e-6)
@example(3e-6)
@example(1.0000000005)
@example(99.999999)
@example(99.9999995)
@example(100.0)
@example(99_999.999)
@example(100_000.0)
@example(1e7)
def test_format_timeout_round_trip(seconds: float) -> None:
    formatted = format_timeout(seconds)
    digits, unit = _split(formatted)

    assert unit in UNIT_SECONDS
    assert digits.isdigit()
    assert 1 <= len(digits) <= 8
    parsed = parse_timeout(formatted)
    assert parsed > 0
    # Rounded up to the unit: never longer by more than one unit; never shorter beyond float noise
    # in the microsecond conversion (a thousandth of a microsecond).
    assert parsed >= seconds - 1e-9
    assert parsed - seconds <= UNIT_SECONDS[unit] * (1 + 1e-9)
    # The finest unit that fits: a coarser unit only when the finer one would need 9 digits.
    if unit != b"u":
        assert seconds / 1e-6 > 99_999_998
    if unit not in (b"u", b"m"):
        assert seconds / 1e-3 > 99_999_998


@pytest.mark.parametrize(
    "seconds, expected",
    [
        (1e-6, b"1u"),
        (1.5, b"1500000u"),
        (99.999999, b"99999999u"),
        (100.0, b"100000m"),
        (86_400.0, b"86400000m"),
        (1e6, b"1000000S"),
    ],
)
def test_format_timeout_picks_a_coarser_unit_for_large_values(seconds: float, expected: bytes) -> None:
    assert format_timeout(seconds) == expected


@pytest.mark.parametrize("seconds", [0.0, 1e-12, 4e-7])
def test_format_timeout_never_gives_zero(seconds: float) -> None:
    assert format_timeout(seconds) == b"1u"


@pytest.mark.parametrize("value", [b"99999999H", b"20000000H", b"99999999M"])
def test_format_timeout_never_shortens_a_parseable_timeout(value: bytes) -> None:
    # A relayed deadline may be rounded up, but never cut: whatever a caller can send, the
    # sidecar can forward.
    seconds = parse_timeout(value)
    formatted = format_timeout(seconds)
    assert len(formatted) <= 9
    assert parse_timeout(formatted) >= seconds


# ------------------------------------------------------------------ grpc-message


@PROPERTY
@given(st.text())
@example("")
@example("%")
@example("100%25 sure: %E2%9C%93")
@example("naïve ✓ 🚀 日本語")
@example("line\nbreak\ttab\x00nul\x7fdel")
def test_message_round_trips_and_encodes_to_printable_ascii(message: str) -> None:
    encoded = encode_message(message)

    assert encoded.isascii()
    assert all(0x20 <= b <= 0x7E for b in encoded)
    assert decode_message(encoded) == message


def test_encode_message_escapes_percent_and_non_ascii_only() -> None:
    assert encode_message("plain text: OK (42)!") == b"plain text: OK (42)!"
    assert encode_message("50%") == b"50%25"
    assert encode_message("é") == b"%C3%A9"
    assert encode_message("a\nb") == b"a%0Ab"


@pytest.mark.parametrize("value", [b"bad %zz escape", b"cut %E2%9C", b"%", b"raw \xff byte", b"%FF"])
def test_decode_message_never_fails_on_invalid_input(value: bytes) -> None:
    decoded = decode_message(value)
    assert isinstance(decoded, str)


def test_decode_message_keeps_invalid_escapes_readable() -> None:
    assert decode_message(b"bad %zz escape") == "bad %zz escape"


# ------------------------------------------------------------------ status headers


def test_trailers_only_shape() -> None:
    assert trailers_only(Code.UNAVAILABLE, "no route to service 'users'") == [
        (b":status", b"200", False),
        (b"content-type", b"application/grpc", False),
        (b"grpc-status", b"14", False),
        (b"grpc-message", b"no route to service 'users'", False),
    ]


def test_trailers_only_without_message() -> None:
    assert trailers_only(Code.OK, "") == [
        (b":status", b"200", False),
        (b"content-type", b"application/grpc", False),
        (b"grpc-status", b"0", False),
    ]


def test_trailers_only_encodes_the_message() -> None:
    headers = trailers_only(Code.INTERNAL, "100% ✓")
    assert headers[-1] == (b"grpc-message", b"100%25 %E2%9C%93", False)


def test_status_trailers_shape() -> None:
    assert status_trailers(Code.DEADLINE_EXCEEDED, "deadline exceeded") == [
        (b"grpc-status", b"4", False),
        (b"grpc-message", b"deadline exceeded", False),
    ]
    assert status_trailers(Code.OK, "") == [(b"grpc-status", b"0", False)]


@pytest.mark.parametrize("code", list(Code))
def test_status_headers_round_trip_through_status_of(code: Code) -> None:
    assert status_of(status_trailers(code, "x")) == code
    assert status_of(trailers_only(code, "")) == code


def test_status_of_reads_grpc_status_among_other_headers() -> None:
    headers = (
        (b"content-type", b"application/grpc", False),
        (b"grpc-status", b"5", False),
        (b"grpc-message", b"not found", False),
    )
    assert status_of(headers) == Code.NOT_FOUND


def test_status_of_without_grpc_status_is_unknown() -> None:
    assert status_of(()) == Code.UNKNOWN
    assert status_of([(b":status", b"200", False), (b"grpc-message", b"0", False)]) == Code.UNKNOWN


@pytest.mark.parametrize("value", [b"", b"abc", b"1.0", b"0x0", b"\xd9\xa3", b"+1", b"-1", b"1_0"])
def test_status_of_garbage_grpc_status_is_unknown(value: bytes) -> None:
    # grpc-status is 1*DIGIT; anything else is not a status the peer sent.
    assert status_of([(b"grpc-status", value, False)]) == Code.UNKNOWN
