"""The relay's request-head parser: what is a gRPC call, what is forwarded, what is malformed."""

from __future__ import annotations

import pytest

from sidecar.h2.hpack_codec import Header
from sidecar.relay import Malformed, ParsedRequest, parse_request

PSEUDO: tuple[Header, ...] = (
    (b":method", b"POST", False),
    (b":scheme", b"http", False),
    (b":path", b"/demo.v1.Users/GetUser", False),
    (b":authority", b"users:15001", False),
)
REGULAR: tuple[Header, ...] = (
    (b"content-type", b"application/grpc", False),
    (b"te", b"trailers", False),
    (b"user-agent", b"grpc-python/1.85.1", False),
)


def request(*extra: Header, pseudo: tuple[Header, ...] = PSEUDO) -> tuple[Header, ...]:
    return pseudo + REGULAR + extra


def test_valid_grpc_request() -> None:
    parsed = parse_request(request())

    assert parsed == ParsedRequest(
        path="/demo.v1.Users/GetUser",
        path_bytes=b"/demo.v1.Users/GetUser",
        authority="users:15001",
        timeout=None,
        grpc=True,
        forward=REGULAR,
    )


def test_pseudo_headers_are_not_forwarded() -> None:
    forward = parse_request(request()).forward
    assert not any(name.startswith(b":") for name, _, _ in forward)


def test_missing_authority_is_empty() -> None:
    parsed = parse_request(request(pseudo=PSEUDO[:3]))
    assert parsed.authority == ""
    assert parsed.grpc


@pytest.mark.parametrize(
    "name", [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"]
)
def test_hop_by_hop_headers_are_stripped(name: bytes) -> None:
    parsed = parse_request(request((name, b"whatever", False), (b"x-after", b"1", False)))
    assert parsed.forward == (*REGULAR, (b"x-after", b"1", False))


def test_te_trailers_is_kept() -> None:
    forward = parse_request(request()).forward
    assert (b"te", b"trailers", False) in forward


@pytest.mark.parametrize("value", [b"gzip", b"trailers, deflate", b"", b"TRAILERS"])
def test_other_te_values_are_dropped(value: bytes) -> None:
    headers = (*PSEUDO, (b"content-type", b"application/grpc", False), (b"te", value, False))
    assert parse_request(headers).forward == ((b"content-type", b"application/grpc", False),)


@pytest.mark.parametrize("value, seconds", [(b"5S", 5.0), (b"250m", 0.25), (b"1H", 3600.0), (b"100u", 1e-4)])
def test_grpc_timeout_is_parsed_and_not_forwarded(value: bytes, seconds: float) -> None:
    parsed = parse_request(request((b"grpc-timeout", value, False)))

    assert parsed.timeout == pytest.approx(seconds, rel=1e-12, abs=0)
    assert parsed.forward == REGULAR


@pytest.mark.parametrize("value", [b"5", b"123456789S", b"-1S", b"soon"])
def test_malformed_grpc_timeout_is_malformed(value: bytes) -> None:
    with pytest.raises(Malformed):
        parse_request(request((b"grpc-timeout", value, False)))


def test_pseudo_header_after_a_regular_header_is_malformed() -> None:
    headers = (*PSEUDO[:3], (b"content-type", b"application/grpc", False), PSEUDO[3])
    with pytest.raises(Malformed):
        parse_request(headers)


@pytest.mark.parametrize("name", [b":status", b":protocol", b":foo", b":PATH", b":"])
def test_unknown_pseudo_header_is_malformed(name: bytes) -> None:
    with pytest.raises(Malformed):
        parse_request((*PSEUDO, (name, b"x", False), *REGULAR))


@pytest.mark.parametrize("name", [b"Content-Type", b"X-Trace", b"CONNECTION", b"Te", b"grpc-Timeout"])
def test_upper_case_header_name_is_malformed(name: bytes) -> None:
    with pytest.raises(Malformed):
        parse_request(request((name, b"x", False)))


@pytest.mark.parametrize("missing", [b":path", b":method", b":scheme"])
def test_missing_required_pseudo_header_is_malformed(missing: bytes) -> None:
    pseudo = tuple(h for h in PSEUDO if h[0] != missing)
    with pytest.raises(Malformed):
        parse_request(request(pseudo=pseudo))


@pytest.mark.parametrize("path", [b"", b"*", b"demo.v1.Users/GetUser"])
def test_path_not_starting_with_slash_is_malformed(path: bytes) -> None:
    pseudo = (PSEUDO[0], PSEUDO[1], (b":path", path, False), PSEUDO[3])
    with pytest.raises(Malformed):
        parse_request(request(pseudo=pseudo))


@pytest.mark.parametrize(
    "duplicate", [(b":path", b"/demo.v1.Orders/Get", False), (b":method", b"GET", False)]
)
def test_repeated_pseudo_header_is_malformed(duplicate: Header) -> None:
    # RFC 9113 8.3: a pseudo-header field must not appear more than once.
    with pytest.raises(Malformed):
        parse_request(request(pseudo=(*PSEUDO, duplicate)))


@pytest.mark.parametrize("method", [b"GET", b"PUT", b"post", b"OPTIONS"])
def test_non_post_is_not_grpc(method: bytes) -> None:
    pseudo = ((b":method", method, False), *PSEUDO[1:])
    parsed = parse_request(request(pseudo=pseudo))
    assert parsed.grpc is False


@pytest.mark.parametrize(
    "content_type", [b"application/grpc", b"application/grpc+proto", b"application/grpc+json"]
)
def test_grpc_content_types(content_type: bytes) -> None:
    headers = (*PSEUDO, (b"content-type", content_type, False), (b"te", b"trailers", False))
    assert parse_request(headers).grpc is True


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/json",
        b"text/plain",
        b"application/grpc-web",
        b"application/grpc-web+proto",
        b"application/grpcx",
    ],
)
def test_non_grpc_content_type_is_not_grpc(content_type: bytes) -> None:
    headers = (*PSEUDO, (b"content-type", content_type, False), (b"te", b"trailers", False))
    parsed = parse_request(headers)
    assert parsed.grpc is False
    assert (b"content-type", content_type, False) in parsed.forward


def test_missing_content_type_is_not_grpc() -> None:
    assert parse_request((*PSEUDO, (b"te", b"trailers", False))).grpc is False


def test_never_indexed_flag_is_preserved() -> None:
    secret = (b"authorization", b"Bearer abc.def.ghi", True)
    cookie = (b"cookie", b"session=1", True)
    parsed = parse_request(request(secret, (b"x-plain", b"1", False), cookie))

    assert parsed.forward == (*REGULAR, secret, (b"x-plain", b"1", False), cookie)


def test_binary_headers_are_forwarded_untouched() -> None:
    raw = bytes(range(256))
    bin_headers = (
        (b"x-trace-bin", raw, False),
        (b"grpc-tags-bin", b"AAEC/w==", False),
        (b"x-secret-bin", b"\x00\xff\x00", True),
    )
    parsed = parse_request(request(*bin_headers))

    assert parsed.forward == REGULAR + bin_headers
    assert parsed.forward[-3][1] is raw


def test_header_order_is_kept() -> None:
    extra = tuple((b"x-%d" % i, b"%d" % i, False) for i in range(10))
    parsed = parse_request(request(*extra))
    assert parsed.forward == REGULAR + extra


def test_non_ascii_path_is_decoded_with_replacement() -> None:
    pseudo = (PSEUDO[0], PSEUDO[1], (b":path", b"/demo.v1.Users/G\xffet", False), PSEUDO[3])
    parsed = parse_request(request(pseudo=pseudo))
    assert parsed.path_bytes == b"/demo.v1.Users/G\xffet"
    assert parsed.path == "/demo.v1.Users/G\ufffdet"
