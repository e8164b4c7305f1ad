"""Data-path tests that each need a mesh of their own: the first call over new connections, an
app that crashes mid-call, and a sidecar that is stopped mid-call."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support import h2_client
from tests.support.clients import ECHO, channel, control, server_state
from tests.support.holding_proxy import HoldingProxy
from tests.support.mesh import AppSpec, admin_stats, http_get, running_mesh, wait_for, warm_up

pytestmark = pytest.mark.integration

MiB = 1 << 20


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_request_queued_before_the_upstream_settings_is_not_stalled(tmp_path: Path) -> None:
    """The first call opens the server sidecar's connection to its app. A proxy in front of the app
    holds the app's first bytes (its SETTINGS) until the sidecar has sent a full default window
    (65,535 bytes), so the stream starts on HTTP/2's default window every time. When SETTINGS
    then raise the window, the rest of the 1 MiB request must follow."""
    body = bytes(range(256)) * (4 * 1024)  # 1 MiB
    with contextlib.ExitStack() as stack:

        def hold_settings(name: str, app: str) -> str:
            proxy = HoldingProxy(app, release_after=65_535)
            stack.callback(proxy.close)  # runs after the mesh has stopped
            return proxy.address

        mesh = stack.enter_context(
            running_mesh(tmp_path / "mesh", [AppSpec("echo", "echo")], app_front=hold_settings)
        )
        with channel(mesh.outbound) as ch:
            assert ch.unary_unary(ECHO + "Unary")(body, timeout=5) == body


@pytest.mark.parametrize("crashing", ["app", "sidecar"])
def test_upstream_crash_mid_call_is_unavailable_and_the_mesh_keeps_serving(
    tmp_path: Path, crashing: str
) -> None:
    """SIGKILL the called app, or its sidecar, while calls to it are in flight (a unary call waiting
    for its reply, a server stream between messages)."""
    apps = [AppSpec("victim", "echo"), AppSpec("healthy", "echo")]
    with running_mesh(tmp_path / "mesh", apps) as mesh:
        warm_up(mesh, "victim")
        warm_up(mesh, "healthy")
        victim = mesh.workloads["victim"]
        sleep_id, stream_id = f"sleep-{uuid.uuid4()}", f"stream-{uuid.uuid4()}"
        with channel(mesh.outbound, "victim") as ch:
            sleeping = ch.unary_unary(ECHO + "Sleep").future(
                control({"ms": 30_000, "id": sleep_id}), timeout=20
            )
            streaming = ch.unary_stream(ECHO + "ServerStream")(
                control({"count": 100_000, "size": 100, "interval_ms": 10, "id": stream_id}), timeout=20
            )
            assert next(streaming) == b"\x00" * 100  # response headers and a message are through
            wait_for(lambda: server_state(ch, sleep_id) == "started", 5, "the Sleep call to start")

            killed_at = time.monotonic()
            mesh.kill(victim.app if crashing == "app" else victim.sidecar)

            unary_error = sleeping.exception(timeout=10)
            assert isinstance(unary_error, grpc.RpcError), unary_error
            assert unary_error.code() == grpc.StatusCode.UNAVAILABLE, unary_error
            stream_error = rpc_error(lambda: list(streaming))
            assert stream_error.code() == grpc.StatusCode.UNAVAILABLE, stream_error
            assert time.monotonic() - killed_at < 5

            # New calls to the crashed service fail UNAVAILABLE, promptly.
            started = time.monotonic()
            again = rpc_error(lambda: ch.unary_unary(ECHO + "Unary")(b"x", timeout=10))
            assert again.code() == grpc.StatusCode.UNAVAILABLE, again
            assert time.monotonic() - started < 5

        # The sidecars still up are ready, and the client sidecar still carries calls to the other service.
        assert http_get(mesh.admin, "/ready")[0] == 200
        if crashing == "app":
            assert http_get(victim.admin, "/ready")[0] == 200
        with channel(mesh.outbound, "healthy") as ch:
            assert ch.unary_unary(ECHO + "Unary")(b"still serving", timeout=10) == b"still serving"
            assert list(
                ch.unary_stream(ECHO + "ServerStream")(control({"count": 3, "size": 10}), timeout=10)
            ) == [bytes([i]) * 10 for i in range(3)]
        victim_calls = admin_stats(mesh.admin)["calls"]["outbound"]["victim"]
        assert victim_calls["by_status"].get("14", 0) >= 3, victim_calls


def test_sigterm_drains_calls_in_flight_then_exits_0(tmp_path: Path) -> None:
    with running_mesh(tmp_path / "mesh", [AppSpec("echo", "echo")]) as mesh:
        warm_up(mesh, "echo")
        call_id = f"drain-{uuid.uuid4()}"
        with channel(mesh.outbound) as ch:
            started = time.monotonic()
            in_flight = ch.unary_unary(ECHO + "Sleep").future(
                control({"ms": 1000, "id": call_id}), timeout=10
            )
            with channel(mesh.workloads["echo"].app_address) as direct:
                wait_for(lambda: server_state(direct, call_id) == "started", 5, "the call to reach the app")
            os.kill(mesh.client.pid, signal.SIGTERM)

            # Draining: no longer ready, and not accepting new connections...
            wait_for(lambda: http_get(mesh.admin, "/ready")[0] == 503, 5, "the sidecar to report draining")
            assert not in_flight.done()
            with channel(mesh.outbound) as fresh:
                refused = rpc_error(lambda: fresh.unary_unary(ECHO + "Unary")(b"late", timeout=5))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            # ...while the call in flight completes normally.
            reply = json.loads(in_flight.result(timeout=10))
            assert reply["slept_ms"] == 1000
            assert time.monotonic() - started >= 1.0

        wait_for(mesh.client.has_exited, 10, "the drained sidecar to exit")
        assert mesh.group.stop(mesh.client) == 0


def test_sigterm_exits_promptly_after_a_refused_handshake(tmp_path: Path) -> None:
    """A connection whose TLS handshake failed never carried a call: there is nothing to drain,
    so a sidecar with nothing in flight exits at once, not after drain_seconds."""
    with running_mesh(tmp_path / "mesh", [AppSpec("echo", "echo")], drain_seconds=5.0) as mesh:
        server = mesh.workloads["echo"]
        assert not h2_client.speaks_h2(server.inbound)  # plaintext: the handshake fails
        started = time.monotonic()
        os.kill(server.sidecar.pid, signal.SIGTERM)
        wait_for(server.sidecar.has_exited, 10, "the sidecar to exit")
        elapsed = time.monotonic() - started
        assert mesh.group.stop(server.sidecar) == 0
        assert elapsed < 2.0, f"exited {elapsed:.1f}s after SIGTERM with nothing in flight (drain_seconds=5)"
