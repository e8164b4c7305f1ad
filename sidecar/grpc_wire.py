"""gRPC-over-HTTP/2 details the relay needs: timeouts, status headers and the status codes."""

from __future__ import annotations

import enum
import urllib.parse

from sidecar.h2.hpack_codec import Header


class Code(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}


def parse_timeout(value: bytes) -> float:
    """grpc-timeout → seconds. ValueError if malformed (at most 8 digits and a unit)."""
    if not 2 <= len(value) <= 9 or value[-1] not in _UNITS or not value[:-1].isdigit():
        raise ValueError(f"malformed grpc-timeout {value!r}")
    return int(value[:-1]) * _UNITS[value[-1]]


def format_timeout(seconds: float) -> bytes:
    """Seconds → grpc-timeout, in the finest unit that fits 8 digits (rounded up, never 0)."""
    micros = max(int(seconds * 1e6 + 0.999), 1)
    if micros < 100_000_000:
        return b"%du" % micros
    millis = (micros + 999) // 1000
    if millis < 100_000_000:
        return b"%dm" % millis
    secs = (millis + 999) // 1000
    if secs < 100_000_000:
        return b"%dS" % secs
    minutes = (secs + 59) // 60
    if minutes < 100_000_000:
        return b"%dM" % minutes
    return b"%dH" % min((minutes + 59) // 60, 99_999_999)


# Percent-encoding of grpc-message: unreserved printable ASCII except '%' stays as is.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def encode_message(message: str) -> bytes:
    return urllib.parse.quote(message, safe=_SAFE).encode("ascii")


def decode_message(value: bytes) -> str:
    return urllib.parse.unquote(value.decode("ascii", "replace"), errors="replace")


def trailers_only(code: int, message: str) -> list[Header]:
    """A Trailers-Only response made by the sidecar."""
    headers: list[Header] = [
        (b":status", b"200", False),
        (b"content-type", b"application/grpc", False),
        (b"grpc-status", b"%d" % code, False),
    ]
    if message:
        headers.append((b"grpc-message", encode_message(message), False))
    return headers


def status_trailers(code: int, message: str) -> list[Header]:
    headers: list[Header] = [(b"grpc-status", b"%d" % code, False)]
    if message:
        headers.append((b"grpc-message", encode_message(message), False))
    return headers


def status_of(headers: tuple[Header, ...] | list[Header]) -> int:
    for name, value, _ in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() and len(value) <= 3 else Code.UNKNOWN
    return Code.UNKNOWN
