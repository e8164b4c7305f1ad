"""python -m tests.support.echo_server: a gRPC test server on raw bytes, for the data-path tests.

It serves `test.Echo` through generic handlers (no protos: requests and replies are bytes, control
requests are JSON), plus grpc.health.v1 and reflection so grpcurl can talk to it.

Methods of test.Echo:

- Unary: replies with the request body. Every request metadata key starting with "x-" comes back
  in the initial metadata unchanged and in the trailing metadata as "t-" + key (so "-bin" keys
  stay binary).
- ServerStream: {"count": N, "size": S, "interval_ms": I, "id": ID} → N replies of S bytes,
  reply i filled with byte i % 256, I ms apart. With "fail": {"code": C, "message": M} the call
  then ends with that status instead of OK (trailers after data).
- ClientStream: replies {"bytes": total, "messages": n} for the request messages it received.
- Bidi: echoes each request message as it arrives.
- Status: {"code": C, "message": M, "details": REASON?} → ends with status C and message M; with
  "details", the trailer grpc-status-details-bin carries a google.rpc.Status with one ErrorInfo
  (see tests.support.rich_status). C = 0 ends OK with M as the status message.
- Sleep: {"ms": N, "id": ID} → sleeps N ms, then replies {"slept_ms": N, "time_remaining": T},
  T the seconds left before the call's deadline as the server sees it (null without one).
- SlowReader: client stream, reads one message every "x-read-delay-ms" (request metadata) ms,
  replies like ClientStream.
- Stats: {"id": ID} → {"state": "started" | "completed" | "cancelled" | null} for the Sleep or
  ServerStream call with that id: how the test learns the server saw a cancellation.
- Fault: {"delay_ms": D, "code": C, "serving": S} → from now on every Unary call waits D ms,
  then (with C) ends with status C instead of echoing; with "serving": false, grpc.health.v1
  says NOT_SERVING for test.Echo (the server as a whole, "", stays SERVING, so its sidecar keeps
  it registered and only health checks asking about test.Echo see it). {} heals the server.
  Replies {} (chaos tests call it on one server directly, not through the mesh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tests.support.rich_status import DETAILS_KEY, rich_status_bytes

SERVICE = "test.Echo"
UNLIMITED = -1
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", UNLIMITED),
    ("grpc.max_send_message_length", UNLIMITED),
    ("grpc.max_metadata_size", 1 << 20),
    ("grpc.so_reuseport", 0),
]

log = logging.getLogger("echo_server")


def _json(body: bytes) -> dict[str, Any]:
    value = json.loads(body) if body else {}
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _metadata_value(context: Any, key: str) -> str | bytes | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            value: str | bytes = item.value
            return value
    return None


def _status_code(number: int) -> Any:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


class Echo:
    """The test.Echo handlers. `states` records Sleep and ServerStream calls by their id."""

    def __init__(self, health_servicer: Any = None) -> None:
        self.states: dict[str, str] = {}
        self.health = health_servicer  # grpc_health's aio HealthServicer, for Fault's "serving"
        self.delay = 0.0  # seconds every Unary call waits (Fault)
        self.fail_code = 0  # the status every Unary call ends with, when not 0 (Fault)

    def _mark(self, call_id: str | None, state: str) -> None:
        if call_id:
            self.states[call_id] = state
            log.info("call %s: %s", call_id, state)

    async def unary(self, request: bytes, context: Any) -> bytes:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_code:
            await context.abort(_status_code(self.fail_code), "fault set by the test (Fault)")
        echoed = [(m.key, m.value) for m in context.invocation_metadata() or () if m.key.startswith("x-")]
        await context.send_initial_metadata(echoed)
        context.set_trailing_metadata([("t-" + key, value) for key, value in echoed])
        return request

    async def server_stream(self, request: bytes, context: Any) -> None:
        spec = _json(request)
        count, size = int(spec.get("count", 1)), int(spec.get("size", 0))
        interval = float(spec.get("interval_ms", 0)) / 1000.0
        call_id = spec.get("id")
        self._mark(call_id, "started")
        try:
            for i in range(count):
                if i and interval:
                    await asyncio.sleep(interval)
                await context.write(bytes([i % 256]) * size)
        except asyncio.CancelledError:
            self._mark(call_id, "cancelled")
            raise
        self._mark(call_id, "completed")
        fail = spec.get("fail")
        if fail is not None:
            await context.abort(_status_code(int(fail["code"])), str(fail.get("message", "")))

    async def client_stream(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        total = messages = 0
        async for message in requests:
            total += len(message)
            messages += 1
        return json.dumps({"bytes": total, "messages": messages}).encode()

    async def bidi(self, requests: AsyncIterator[bytes], context: Any) -> None:
        async for message in requests:
            await context.write(message)

    async def status(self, request: bytes, context: Any) -> bytes:
        spec = _json(request)
        code = int(spec["code"])
        message = str(spec.get("message", ""))
        reason = spec.get("details")
        trailers: tuple[tuple[str, bytes], ...] = ()
        if reason is not None:
            trailers = ((DETAILS_KEY, rich_status_bytes(code, message, str(reason))),)
        status_code = _status_code(code)
        if status_code is grpc.StatusCode.OK:
            context.set_trailing_metadata(trailers)
            context.set_code(status_code)
            context.set_details(message)
            return b""
        await context.abort(status_code, message, trailing_metadata=trailers)
        raise AssertionError("abort returned")  # pragma: no cover

    async def sleep(self, request: bytes, context: Any) -> bytes:
        spec = _json(request)
        millis = float(spec.get("ms", 0))
        call_id = spec.get("id")
        self._mark(call_id, "started")
        try:
            await asyncio.sleep(millis / 1000.0)
        except asyncio.CancelledError:
            self._mark(call_id, "cancelled")
            raise
        self._mark(call_id, "completed")
        return json.dumps({"slept_ms": millis, "time_remaining": context.time_remaining()}).encode()

    async def slow_reader(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        delay = float(_metadata_value(context, "x-read-delay-ms") or 0) / 1000.0
        total = messages = 0
        async for message in requests:
            total += len(message)
            messages += 1
            await asyncio.sleep(delay)
        return json.dumps({"bytes": total, "messages": messages}).encode()

    async def stats(self, request: bytes, context: Any) -> bytes:
        call_id = _json(request).get("id")
        return json.dumps({"state": self.states.get(call_id) if call_id else None}).encode()

    async def fault(self, request: bytes, context: Any) -> bytes:
        spec = _json(request)
        self.delay = float(spec.get("delay_ms", 0)) / 1000.0
        self.fail_code = int(spec.get("code", 0))
        serving = bool(spec.get("serving", True))
        if self.health is not None:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await self.health.set(SERVICE, status)
        log.info("fault: delay %.3fs, status %d, serving %s", self.delay, self.fail_code, serving)
        return b"{}"

    def handler(self) -> Any:
        methods = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Status": grpc.unary_unary_rpc_method_handler(self.status),
            "Sleep": grpc.unary_unary_rpc_method_handler(self.sleep),
            "SlowReader": grpc.stream_unary_rpc_method_handler(self.slow_reader),
            "Stats": grpc.unary_unary_rpc_method_handler(self.stats),
            "Fault": grpc.unary_unary_rpc_method_handler(self.fault),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)


def _write_ready(path: Path, address: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"address": address, "pid": os.getpid()}))
    os.replace(tmp, path)


async def serve(listen: str, ready_file: Path | None) -> int:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    health_servicer = health.aio.HealthServicer()
    server.add_generic_rpc_handlers((Echo(health_servicer).handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        print(f"echo_server: cannot listen on {listen}: {exc}", file=sys.stderr)
        return 2
    await server.start()
    address = f"{listen.rpartition(':')[0]}:{port}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready_file is not None:
        _write_ready(ready_file, address)
    log.info("serving %s on %s", SERVICE, address)
    await stop.wait()
    log.info("stopping")
    await server.stop(2.0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.echo_server", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (default 127.0.0.1:0)")
    parser.add_argument(
        "--ready-file", type=Path, help='write {"address": ..., "pid": ...} here once serving'
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(args.listen, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
