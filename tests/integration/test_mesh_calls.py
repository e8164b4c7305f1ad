"""gRPC semantics through the mesh: grpcio client → client sidecar → mTLS → server sidecar → app.

All tests here share one mesh (the module-scoped `mesh` fixture) and leave it running.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.parse
import uuid
from typing import Any

import grpc
import pytest

from tests.integration.conftest import MAX_MESSAGE_BYTES
from tests.support import h2_client
from tests.support.clients import ECHO, aio_channel, channel, control, grpcurl, server_state
from tests.support.mesh import Mesh, admin_stats, connections_accepted_on, http_get, wait_for
from tests.support.rich_status import DETAILS_KEY, error_infos, parse_status, rich_status_bytes

pytestmark = pytest.mark.integration

MiB = 1 << 20


def unicode_message(code: int) -> str:
    # Non-ASCII in several scripts, an emoji (4-byte UTF-8), '%' and a tab: all must be
    # percent-encoded on the wire and come back exactly.
    return f"status {code}: héllo wörld ✓ 日本語 🚀 100% done\tend"


def status_names() -> list[str]:
    return [code.name for code in grpc.StatusCode]


def code_number(code: Any) -> int:
    number: int = code.value[0]
    return number


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def rpc_error(call: Any) -> grpc.RpcError:
    """Run `call()` and return the grpc.RpcError it raised."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ------------------------------------------------------------------------ the four RPC kinds


def test_unary_echoes_the_body(mesh: Mesh) -> None:
    body = pattern(100_000, 1)
    with channel(mesh.outbound) as ch:
        unary = ch.unary_unary(ECHO + "Unary")
        assert unary(body, timeout=10) == body
        assert unary(b"", timeout=10) == b""


def test_server_stream_delivers_every_message_in_order(mesh: Mesh) -> None:
    with channel(mesh.outbound) as ch:
        replies = list(
            ch.unary_stream(ECHO + "ServerStream")(control({"count": 200, "size": 3000}), timeout=10)
        )
    assert len(replies) == 200
    for i, reply in enumerate(replies):
        assert reply == bytes([i % 256]) * 3000


def test_client_stream_counts_every_byte(mesh: Mesh) -> None:
    messages = [pattern(size, size) for size in range(0, 200_000, 997)]
    with channel(mesh.outbound) as ch:
        reply = json.loads(ch.stream_unary(ECHO + "ClientStream")(iter(messages), timeout=10))
    assert reply == {"bytes": sum(map(len, messages)), "messages": len(messages)}


def test_bidi_ping_pong_interleaves_request_and_reply(mesh: Mesh) -> None:
    async def scenario() -> None:
        async with aio_channel(mesh.outbound) as ch:
            call = ch.stream_stream(ECHO + "Bidi")(timeout=10)
            for i in range(100):
                message = pattern(i * 101, i)
                await call.write(message)
                assert await call.read() == message  # each reply arrives before the next request
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK

    asyncio.run(scenario())


# ------------------------------------------------------------------------ metadata


def test_metadata_flows_both_ways_with_ascii_and_binary_values(mesh: Mesh) -> None:
    sent = (
        ("x-ascii", "hello, mesh / 1.0"),
        ("x-multi", "one"),
        ("x-multi", "two"),
        ("x-empty", ""),
        ("x-raw-bin", bytes(range(256))),
        ("x-utf8-bin", "é ✓ 🚀".encode()),
    )
    with channel(mesh.outbound) as ch:
        reply, call = ch.unary_unary(ECHO + "Unary").with_call(b"md", metadata=sent, timeout=10)
    assert reply == b"md"
    # The server echoes what it received as initial metadata (same keys) and as trailing
    # metadata ("t-" + key): both directions, headers and trailers, values in order.
    initial = [(m.key, m.value) for m in call.initial_metadata() if m.key.startswith("x-")]
    trailing = [(m.key, m.value) for m in call.trailing_metadata() if m.key.startswith("t-")]
    assert initial == list(sent)
    assert trailing == [("t-" + key, value) for key, value in sent]


def test_large_metadata_spans_continuation_frames_both_ways(mesh: Mesh) -> None:
    # 40 KiB of random letters: even Huffman-coded, the header block is larger than one 16 KiB
    # frame, so each hop must send (and parse) HEADERS + CONTINUATION.
    rng = random.Random(7)
    value = "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(40_000)
    )
    with channel(mesh.outbound) as ch:
        _, call = ch.unary_unary(ECHO + "Unary").with_call(b"", metadata=(("x-large", value),), timeout=10)
    assert [(m.key, m.value) for m in call.initial_metadata() if m.key == "x-large"] == [("x-large", value)]
    assert [(m.key, m.value) for m in call.trailing_metadata() if m.key == "t-x-large"] == [
        ("t-x-large", value)
    ]


# ------------------------------------------------------------------------ status codes


@pytest.mark.parametrize("name", status_names())
def test_status_code_and_unicode_message_round_trip(mesh: Mesh, name: str) -> None:
    code = grpc.StatusCode[name]
    number = code_number(code)
    message = unicode_message(number)
    status = mesh_channel_status(mesh, number, message)
    assert status == (code, message if code is not grpc.StatusCode.OK else "")


def mesh_channel_status(mesh: Mesh, number: int, message: str) -> tuple[Any, str]:
    with channel(mesh.outbound) as ch:
        method = ch.unary_unary(ECHO + "Status")
        try:
            _, call = method.with_call(control({"code": number, "message": message}), timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return call.code(), call.details()  # grpcio does not show the message of an OK status


def test_status_trailers_arrive_byte_for_byte_for_every_code(mesh: Mesh) -> None:
    """Below grpcio: the grpc-status and grpc-message the app sent are what the client reads,
    OK included (whose message grpcio hides), and the same as calling the app directly."""
    app = mesh.workloads["echo"].app_address
    for number in range(17):
        message = unicode_message(number)
        body = control({"code": number, "message": message})
        through = h2_client.call(mesh.outbound, ECHO + "Status", body, authority="echo")
        direct = h2_client.call(app, ECHO + "Status", body, authority="echo")
        assert through.reset_code is None, f"code {number}: stream reset {through.reset_code}"
        assert through.trailer("grpc-status") == str(number)
        raw_message = through.trailer("grpc-message")
        assert raw_message is not None, f"code {number}: no grpc-message in {through}"
        assert urllib.parse.unquote(raw_message, errors="strict") == message
        assert raw_message == direct.trailer("grpc-message")


@pytest.mark.parametrize("name", ["INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "UNAVAILABLE"])
def test_rich_error_details_arrive_intact(mesh: Mesh, name: str) -> None:
    code = grpc.StatusCode[name]
    number = code_number(code)
    message = unicode_message(number)
    reason = f"REASON_{name}"
    with channel(mesh.outbound) as ch:
        method = ch.unary_unary(ECHO + "Status")
        error = rpc_error(
            lambda: method(control({"code": number, "message": message, "details": reason}), timeout=10)
        )
    assert error.code() == code
    assert error.details() == message
    details = [m.value for m in error.trailing_metadata() if m.key == DETAILS_KEY]
    assert details == [rich_status_bytes(number, message, reason)]
    status = parse_status(details[0])
    assert (status.code, status.message) == (number, message)
    assert [(info.reason, info.domain) for info in error_infos(status)] == [(reason, "echo.test.grpc-mesh")]


def test_error_status_after_streamed_messages_arrives_after_them(mesh: Mesh) -> None:
    """Trailers that follow data (not Trailers-Only): the messages still queued in the sidecars go
    first, then the status."""
    message = unicode_message(10)
    request = control({"count": 8, "size": 256 * 1024, "fail": {"code": 10, "message": message}})
    received: list[bytes] = []
    with channel(mesh.outbound) as ch:
        stream = ch.unary_stream(ECHO + "ServerStream")(request, timeout=10)
        error = rpc_error(lambda: received.extend(stream))
    assert received == [bytes([i]) * (256 * 1024) for i in range(8)]
    assert (error.code(), error.details()) == (grpc.StatusCode.ABORTED, message)


# ------------------------------------------------------------------------ message sizes


def test_16_mib_messages_both_ways(mesh: Mesh) -> None:
    body = pattern(16 * MiB, 16)
    with channel(mesh.outbound) as ch:
        assert ch.unary_unary(ECHO + "Unary")(body, timeout=30) == body
        replies = list(
            ch.unary_stream(ECHO + "ServerStream")(control({"count": 1, "size": 16 * MiB}), timeout=30)
        )
    assert replies == [b"\x00" * (16 * MiB)]


def test_compressed_messages_are_relayed_untouched(mesh: Mesh) -> None:
    body = b"compressible " * 100_000
    with channel(mesh.outbound) as ch:
        unary = ch.unary_unary(ECHO + "Unary")
        assert unary(body, compression=grpc.Compression.Gzip, timeout=10) == body


def test_concurrent_large_calls_share_the_connection_window(mesh: Mesh) -> None:
    """48 calls of 1 MiB each way at once: more than a connection's flow-control window, so
    streams take turns as WINDOW_UPDATEs arrive, and every byte still lands on its own stream."""

    async def scenario() -> None:
        async with aio_channel(mesh.outbound) as ch:
            unary = ch.unary_unary(ECHO + "Unary")
            bodies = [pattern(MiB, 1000 + i) for i in range(48)]
            replies = await asyncio.gather(*(unary(body, timeout=60) for body in bodies))
            assert [r == b for r, b in zip(replies, bodies, strict=True)] == [True] * len(bodies)

    asyncio.run(scenario())


def test_message_of_exactly_the_limit_passes(mesh: Mesh) -> None:
    body = pattern(MAX_MESSAGE_BYTES, 20)
    with channel(mesh.outbound) as ch:
        assert ch.unary_unary(ECHO + "Unary")(body, timeout=30) == body


def test_request_message_over_the_limit_is_resource_exhausted(mesh: Mesh) -> None:
    with channel(mesh.outbound) as ch:
        unary = ch.unary_unary(ECHO + "Unary")
        error = rpc_error(lambda: unary(b"\x01" * (MAX_MESSAGE_BYTES + 1), timeout=30))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert str(MAX_MESSAGE_BYTES + 1) in error.details()
        # The caller's connection is still good.
        assert unary(b"after", timeout=10) == b"after"


def test_response_message_over_the_limit_is_resource_exhausted(mesh: Mesh) -> None:
    request = control({"count": 1, "size": MAX_MESSAGE_BYTES + 1})
    with channel(mesh.outbound) as ch:
        stream = ch.unary_stream(ECHO + "ServerStream")
        error = rpc_error(lambda: list(stream(request, timeout=30)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert ch.unary_unary(ECHO + "Unary")(b"after", timeout=10) == b"after"


# ------------------------------------------------------------------------ routing


def test_unknown_authority_is_unavailable_naming_it(mesh: Mesh) -> None:
    with channel(mesh.outbound, authority="nope") as ch:
        error = rpc_error(lambda: ch.unary_unary("/nope.Missing/Call")(b"x", timeout=10))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "'nope'" in error.details()


def test_unknown_authority_is_not_rerouted_by_the_grpc_service_name(mesh: Mesh) -> None:
    """The caller named a destination that does not exist: the call fails, naming it, rather than
    going to whichever service happens to serve test.Echo."""
    with channel(mesh.outbound, authority="nope") as ch:
        error = rpc_error(lambda: ch.unary_unary(ECHO + "Unary")(b"x", timeout=10))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "'nope'" in error.details()


def test_a_client_dialing_the_address_is_routed_by_grpc_service_name(mesh: Mesh) -> None:
    with channel(mesh.outbound, authority=mesh.outbound) as ch:
        assert ch.unary_unary(ECHO + "Unary")(b"by path", timeout=10) == b"by path"


def test_unknown_method_is_the_apps_unimplemented(mesh: Mesh) -> None:
    with channel(mesh.outbound) as ch:
        error = rpc_error(lambda: ch.unary_unary(ECHO + "NoSuchMethod")(b"x", timeout=10))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


# ------------------------------------------------------------------------ concurrency


def test_a_thousand_concurrent_streams_on_one_connection(mesh: Mesh) -> None:
    streams = 1000
    port = int(mesh.outbound.rpartition(":")[2])

    async def scenario() -> None:
        async with aio_channel(mesh.outbound) as ch:
            bidi = ch.stream_stream(ECHO + "Bidi")
            calls = [bidi(timeout=60) for _ in range(streams)]

            async def exchange(i: int, call: Any, label: bytes) -> bytes:
                await call.write(label + b"-%d" % i)
                reply: bytes = await call.read()
                return reply

            firsts = await asyncio.gather(*(exchange(i, c, b"first") for i, c in enumerate(calls)))
            assert firsts == [b"first-%d" % i for i in range(streams)]
            # Every stream has answered and none has ended: all 1000 are open at once, on one connection.
            assert connections_accepted_on(port) == 1
            seconds = await asyncio.gather(*(exchange(i, c, b"second") for i, c in enumerate(calls)))
            assert seconds == [b"second-%d" % i for i in range(streams)]
            for call in calls:
                await call.done_writing()
            codes = await asyncio.gather(*(call.code() for call in calls))
            assert codes == [grpc.StatusCode.OK] * streams

    asyncio.run(scenario())


# ------------------------------------------------------------------------ deadlines and cancellation


def test_deadline_is_propagated_to_the_server(mesh: Mesh) -> None:
    with channel(mesh.outbound) as ch:
        reply = json.loads(ch.unary_unary(ECHO + "Sleep")(control({"ms": 0}), timeout=5))
    # grpc-timeout is rounded up to a coarser unit on the way, by grpcio as by the sidecars, so the
    # server may see a few milliseconds more than 5 s (it does without the mesh too).
    assert reply["time_remaining"] is not None, reply
    assert 1.0 < reply["time_remaining"] <= 5.1, reply


def test_the_sidecar_enforces_the_deadline_for_a_client_that_does_not(mesh: Mesh) -> None:
    """A bare HTTP/2 client sends grpc-timeout 200m and then just waits: the status must still
    come back DEADLINE_EXCEEDED in time, and the server must be told."""
    call_id = f"raw-deadline-{uuid.uuid4()}"
    body = control({"ms": 1000, "id": call_id})
    started = time.monotonic()
    response = h2_client.call(
        mesh.outbound, ECHO + "Sleep", body, authority="echo", metadata=[("grpc-timeout", "200m")]
    )
    elapsed = time.monotonic() - started
    assert response.trailer("grpc-status") == str(code_number(grpc.StatusCode.DEADLINE_EXCEEDED)), response
    assert elapsed < 0.4, f"DEADLINE_EXCEEDED after {elapsed:.3f}s"
    with channel(mesh.outbound) as ch:
        wait_for(
            lambda: server_state(ch, call_id) == "cancelled", 5, f"the server to see {call_id} cancelled"
        )


def test_deadline_exceeded_reaches_client_in_time_and_server_sees_the_cancel(mesh: Mesh) -> None:
    call_id = f"deadline-{uuid.uuid4()}"
    with channel(mesh.outbound) as ch:
        sleep = ch.unary_unary(ECHO + "Sleep")
        started = time.monotonic()
        error = rpc_error(lambda: sleep(control({"ms": 1000, "id": call_id}), timeout=0.2))
        elapsed = time.monotonic() - started
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 0.4, f"DEADLINE_EXCEEDED after {elapsed:.3f}s"
        wait_for(
            lambda: server_state(ch, call_id) == "cancelled", 5, f"the server to see {call_id} cancelled"
        )


def test_client_cancel_of_a_unary_call_reaches_the_server(mesh: Mesh) -> None:
    call_id = f"cancel-unary-{uuid.uuid4()}"
    with channel(mesh.outbound) as ch:
        future = ch.unary_unary(ECHO + "Sleep").future(control({"ms": 30_000, "id": call_id}))  # no deadline
        wait_for(lambda: server_state(ch, call_id) == "started", 5, f"{call_id} to start")
        assert future.cancel()
        wait_for(
            lambda: server_state(ch, call_id) == "cancelled", 5, f"the server to see {call_id} cancelled"
        )


def test_client_cancel_mid_stream_reaches_the_server(mesh: Mesh) -> None:
    call_id = f"cancel-stream-{uuid.uuid4()}"
    request = control({"count": 10_000, "size": 100, "interval_ms": 10, "id": call_id})
    with channel(mesh.outbound) as ch:
        replies = ch.unary_stream(ECHO + "ServerStream")(request)  # no deadline
        assert next(replies) == b"\x00" * 100
        assert next(replies) == b"\x01" * 100
        replies.cancel()
        wait_for(
            lambda: server_state(ch, call_id) == "cancelled", 5, f"the server to see {call_id} cancelled"
        )


def test_a_client_that_hangs_up_mid_call_cancels_it_at_the_server(mesh: Mesh) -> None:
    call_id = f"hang-up-{uuid.uuid4()}"
    request = control({"ms": 30_000, "id": call_id})  # no deadline
    with channel(mesh.outbound) as ch:
        with h2_client.hung_up_after(mesh.outbound, ECHO + "Sleep", request, authority="echo"):
            wait_for(lambda: server_state(ch, call_id) == "started", 5, f"{call_id} to start")
        wait_for(
            lambda: server_state(ch, call_id) == "cancelled", 5, f"the server to see {call_id} cancelled"
        )


# ------------------------------------------------------------------------ admin


def test_admin_ready_and_stats_count_calls_on_both_sides(mesh: Mesh) -> None:
    server_admin = mesh.workloads["echo"].admin
    assert http_get(mesh.admin, "/ready") == (200, b"ready\n")
    assert http_get(server_admin, "/ready") == (200, b"ready\n")

    def totals() -> tuple[int, int]:
        out = admin_stats(mesh.admin)["calls"].get("outbound", {}).get("echo", {}).get("total", 0)
        inb = admin_stats(server_admin)["calls"].get("inbound", {}).get("echo", {}).get("total", 0)
        return int(out), int(inb)

    before = totals()
    with channel(mesh.outbound) as ch:
        unary = ch.unary_unary(ECHO + "Unary")
        for _ in range(5):
            unary(b"count me", timeout=10)
    wait_for(lambda: totals() == (before[0] + 5, before[1] + 5), 5, "both sidecars to count 5 more calls")


# ------------------------------------------------------------------------ grpcurl


def test_grpcurl_lists_and_describes_services_through_the_mesh(mesh: Mesh) -> None:
    listed = grpcurl("-authority", "users", mesh.outbound, "list").split()
    assert {"demo.v1.Users", "grpc.health.v1.Health"} <= set(listed)
    described = grpcurl("-authority", "users", mesh.outbound, "describe", "demo.v1.Users")
    assert "demo.v1.Users is a service" in described
    assert (
        "rpc CreateUser ( .demo.v1.CreateUserRequest ) returns ( .demo.v1.CreateUserResponse );" in described
    )
    assert (
        "rpc ListUsers ( .demo.v1.ListUsersRequest ) returns ( stream .demo.v1.ListUsersResponse );"
        in described
    )
    message = grpcurl("-authority", "users", mesh.outbound, "describe", "demo.v1.CreateUserRequest")
    assert "string name = 2;" in message
    assert "grpc.health.v1.Health" in grpcurl("-authority", "echo", mesh.outbound, "list").split()


def test_grpcurl_invokes_unary_and_server_streaming_methods(mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [f"grpcurl-{tag}-{i}" for i in range(3)]
    for i, user_id in enumerate(ids):
        created = json.loads(grpcurl(
            "-authority", "users", "-d", json.dumps({"id": user_id, "name": f"User {i}"}),
            mesh.outbound, "demo.v1.Users/CreateUser",
        ))  # fmt: skip
        assert created["user"] == {"id": user_id, "name": f"User {i}"}
        assert created["served_by"] == {"service": "users", "version": "v1", "instance": "users-1"}
    streamed = grpcurl("-authority", "users", "-d", "{}", mesh.outbound, "demo.v1.Users/ListUsers")
    decoder = json.JSONDecoder()
    replies, pos = [], 0
    text = streamed.strip()
    while pos < len(text):
        reply, pos = decoder.raw_decode(text, pos)
        replies.append(reply)
        pos = len(text) - len(text[pos:].lstrip())
    listed = [r["user"]["id"] for r in replies if r["user"]["id"].startswith(f"grpcurl-{tag}-")]
    assert listed == ids
    health = grpcurl(
        "-authority", "echo", "-d", '{"service": "test.Echo"}', mesh.outbound, "grpc.health.v1.Health/Check"
    )
    assert json.loads(health) == {"status": "SERVING"}
