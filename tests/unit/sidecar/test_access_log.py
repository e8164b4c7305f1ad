"""The access log: one JSON line per call, off by default, written off the hot path, and never
blocking a call (a full buffer drops lines and counts them)."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar.access_log import AccessLog, trace_id_of
from sidecar.call import CallHead, Target
from sidecar.config import Address, ConfigError, parse_config
from sidecar.grpc_wire import Code
from sidecar.h2 import frames as F
from sidecar.h2.stream import Limits, Stream
from sidecar.relay import ProxyCall, Relay, parse_request
from sidecar.stats import Stats

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01".encode()
PEER = "spiffe://cluster.local/ns/default/sa/client"


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def sync(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return sync


@dataclass
class FakePool:
    address: Address


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _call(relay: Relay, clock: Clock, *, peer: str | None = None, traceparent: bool = True) -> ProxyCall:
    headers = [
        (b":method", b"POST", False),
        (b":scheme", b"http", False),
        (b":path", b"/demo.v1.Users/GetUser", False),
        (b":authority", b"users", False),
        (b"content-type", b"application/grpc", False),
    ]
    if traceparent:
        headers.append((b"traceparent", TRACEPARENT, False))
    parsed = parse_request(tuple(headers))
    head = CallHead(parsed.path, parsed.authority, parsed.forward, peer, None)
    call = ProxyCall(
        relay, Stream(None), head, parsed,
        Target("users", FakePool(Address("127.0.0.1", 4431)), b"users", b"http"),  # type: ignore[arg-type]
        clock(), "v1",
    )  # fmt: skip
    call.down.received = 12
    call.up.received = 34
    clock.now += 0.0125
    return call


async def _relay(
    tmp_path: Path, direction: str = "outbound", **kw: Any
) -> tuple[Relay, Clock, AccessLog, Path]:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), **kw)
    clock = Clock()
    relay = Relay(
        direction,
        lambda: None,  # type: ignore[arg-type,return-value]
        limits=Limits(),
        stats=Stats(),
        secure=direction == "inbound",
        clock=clock,
        access_log=log,
        source="client" if direction == "outbound" else "",
    )
    return relay, clock, log, path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@run
async def test_an_ok_call_is_one_json_line_with_every_field(tmp_path: Path) -> None:
    relay, clock, log, path = await _relay(tmp_path)
    before = time.time()
    _call(relay, clock)._finish(Code.OK)
    assert not path.exists() or path.read_text() == ""  # written off the hot path, not in the call
    await asyncio.sleep(0)
    [line] = _lines(path)
    assert set(line) == {
        "time", "trace_id", "direction", "source", "destination", "method", "grpc_status",
        "duration_ms", "request_bytes", "response_bytes", "upstream", "attempts", "flags",
    }  # fmt: skip
    assert line["attempts"] == 1
    assert line["time"].endswith("Z") and "T" in line["time"]
    from datetime import datetime

    stamp = datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()
    assert before - 1 <= stamp <= time.time() + 1
    assert line["trace_id"] == TRACE
    assert line["direction"] == "outbound"
    assert line["source"] == "client"
    assert line["destination"] == "users"
    assert line["method"] == "/demo.v1.Users/GetUser"
    assert line["grpc_status"] == 0
    assert line["duration_ms"] == pytest.approx(12.5)
    assert (line["request_bytes"], line["response_bytes"]) == (12, 34)
    assert line["upstream"] == "127.0.0.1:4431"
    assert line["flags"] == []
    assert log.written == 1 and log.dropped == 0
    log.close()


@run
async def test_an_error_status_from_upstream_and_an_inbound_source(tmp_path: Path) -> None:
    relay, clock, log, path = await _relay(tmp_path, "inbound")
    _call(relay, clock, peer=PEER, traceparent=False)._finish(Code.NOT_FOUND)
    log.flush()
    [line] = _lines(path)
    assert line["direction"] == "inbound"
    assert line["source"] == PEER
    assert line["grpc_status"] == Code.NOT_FOUND
    assert line["trace_id"] == ""
    assert line["flags"] == []
    log.close()


@run
async def test_statuses_the_sidecar_makes_are_flagged(tmp_path: Path) -> None:
    relay, clock, log, path = await _relay(tmp_path)
    _call(relay, clock).fail(Code.UNAVAILABLE, "upstream for 'users' is unavailable")
    _call(relay, clock).on_deadline()
    call = _call(relay, clock)
    call.on_reset(call.down, F.CANCEL)
    call = _call(relay, clock)
    call.on_reset(call.up, F.REFUSED_STREAM)
    log.flush()
    lines = _lines(path)
    assert [(line["grpc_status"], line["flags"]) for line in lines] == [
        (Code.UNAVAILABLE, ["refused"]),
        (Code.DEADLINE_EXCEEDED, ["deadline"]),
        (Code.CANCELLED, ["cancelled"]),
        (Code.UNAVAILABLE, ["upstream_reset"]),
    ]
    log.close()


@run
async def test_a_full_buffer_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    relay, clock, log, path = await _relay(tmp_path, max_pending=3)
    for _ in range(10):
        _call(relay, clock)._finish(Code.OK)
    assert len(log.pending) == 3
    assert log.dropped == 7
    await asyncio.sleep(0)
    assert len(_lines(path)) == 3
    _call(relay, clock)._finish(Code.OK)  # room again after the flush
    await asyncio.sleep(0)
    assert len(_lines(path)) == 4
    assert (log.written, log.dropped) == (4, 7)
    log.close()


@run
async def test_a_failing_write_never_fails_the_call(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "access.log"
    log = AccessLog(str(path))
    log.record((), "outbound", "client", "users", b"/a/B", 0, 1.0, 1, 1, "", "")
    await asyncio.sleep(0)
    assert log.dropped == 1 and log.written == 0
    log.close()


def test_trace_id_of_a_traceparent() -> None:
    assert trace_id_of(((b"traceparent", TRACEPARENT, False),)) == TRACE
    assert trace_id_of(((b"traceparent", b"garbage", False),)) == ""
    assert trace_id_of(((b"traceparent", b'00-"' + b"a" * 31 + b"-00f067aa0ba902b7-01", False),)) == ""
    assert trace_id_of(((b"x-other", b"1", False),)) == ""


def _raw(**extra: Any) -> dict[str, Any]:
    return {"service": "client", "listeners": {"outbound": "127.0.0.1:0"}, **extra}


def test_off_by_default_and_validated(tmp_path: Path) -> None:
    assert parse_config(_raw()).access_log is None
    assert parse_config(_raw(access_log={"path": "-"})).access_log == "-"
    assert parse_config(_raw(access_log={"path": "a.log"}), tmp_path).access_log == str(tmp_path / "a.log")
    for bad, field in [
        ({"path": ""}, "access_log.path"),
        ({}, "access_log.path"),
        ({"path": 3}, "access_log.path"),
        ({"path": "-", "format": "text"}, "access_log.format"),
        ("stdout", "access_log"),
        ({"path": str(tmp_path / "nope" / "a.log")}, "access_log.path"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config(_raw(access_log=bad), tmp_path)
        assert info.value.path == field, bad


@run
async def test_a_relay_without_an_access_log_logs_nothing(tmp_path: Path) -> None:
    clock = Clock()
    relay = Relay(
        "outbound",
        lambda: None,  # type: ignore[arg-type,return-value]
        limits=Limits(),
        stats=Stats(),
        secure=False,
        clock=clock,
    )
    assert relay.access_log is None
    _call(relay, clock)._finish(Code.OK)  # no error, nothing to write


def test_a_line_is_valid_json_whatever_the_caller_sent() -> None:
    from sidecar.access_log import format_line

    method = b'/a"\\/B\xff\n'
    line = format_line(
        (
            1.5,
            ((b"traceparent", b'00-"x-1-1', False),),
            "inbound",
            'spiffe://td/"x',
            "users",
            method,
            5,
            1.0,
            3,
            0,
            "",
            "",
            1,
        )
    )
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["time"] == "1970-01-01T00:00:01.500000Z"
    assert parsed["method"] == method.decode("ascii", "replace")
    assert parsed["source"] == 'spiffe://td/"x'
    assert parsed["trace_id"] == ""
