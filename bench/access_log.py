"""Microbenchmark: what the access log adds to finishing one relayed call (ProxyCall._finish),
writing to a file, with the buffered flush included.

    .venv/bin/python -m bench.access_log
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from sidecar.access_log import AccessLog
from sidecar.call import CallHead, Target
from sidecar.config import Address
from sidecar.h2.stream import Limits, Stream
from sidecar.relay import ProxyCall, Relay, parse_request
from sidecar.stats import Stats

N = 200_000
HEADERS = (
    (b":method", b"POST", False),
    (b":scheme", b"http", False),
    (b":path", b"/demo.v1.Users/GetUser", False),
    (b":authority", b"users", False),
    (b"content-type", b"application/grpc", False),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
)


class _Pool:
    address = Address("127.0.0.1", 15006)


async def _per_call(access_log: AccessLog | None) -> float:
    relay = Relay(
        "outbound",
        lambda: None,  # type: ignore[arg-type,return-value]
        limits=Limits(),
        stats=Stats(),
        secure=False,
        access_log=access_log,
        source="client",
    )
    parsed = parse_request(HEADERS)
    head = CallHead(parsed.path, parsed.authority, parsed.forward, None, None)
    calls = [
        ProxyCall(relay, Stream(None), head, parsed, Target("users", _Pool(), b"users", b"http"), 0.0, "v1")  # type: ignore[arg-type]
        for _ in range(N)
    ]
    start = time.perf_counter()
    for i, call in enumerate(calls):
        call._finish(0)
        if i % 64 == 63:
            await asyncio.sleep(0)  # let the flush run, as the loop would between reads
    await asyncio.sleep(0)
    return (time.perf_counter() - start) / N * 1e6


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        off = min([await _per_call(None) for _ in range(3)])
        log = AccessLog(str(Path(tmp) / "access.log"))
        on = min([await _per_call(log) for _ in range(3)])
        log.close()
        print(f"finish a call: access log off {off:.2f} µs, on {on:.2f} µs (+{on - off:.2f} µs per call)")
        print(f"lines written {log.written}, dropped {log.dropped}")


if __name__ == "__main__":
    asyncio.run(main())
