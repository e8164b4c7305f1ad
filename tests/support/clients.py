"""grpcio clients for the echo server through the mesh: channel options and small call helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

GRPCURL = Path(sys.executable).parent / "grpcurl"
ECHO = "/test.Echo/"
UNLIMITED = -1


def channel_options(authority: str) -> list[tuple[str, Any]]:
    """The caller names its destination with :authority; no client-side message limits or
    retries, so what a test sees is what the mesh did."""
    return [
        ("grpc.default_authority", authority),
        ("grpc.max_send_message_length", UNLIMITED),
        ("grpc.max_receive_message_length", UNLIMITED),
        ("grpc.max_metadata_size", 1 << 20),
        ("grpc.enable_retries", 0),
    ]


def channel(address: str, authority: str = "echo") -> Any:
    """A blocking grpcio channel to the client sidecar's outbound port."""
    return grpc.insecure_channel(address, options=channel_options(authority))


def aio_channel(address: str, authority: str = "echo") -> Any:
    return grpc.aio.insecure_channel(address, options=channel_options(authority))


def control(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def server_state(ch: Any, call_id: str) -> str | None:
    """What the echo server recorded for the Sleep / ServerStream call `call_id`."""
    reply = json.loads(ch.unary_unary(ECHO + "Stats")(control({"id": call_id}), timeout=5))
    state: str | None = reply["state"]
    return state


def grpcurl(*args: str, timeout: float = 30.0) -> str:
    """Run grpcurl (plaintext); its stdout, failing the test with stderr on a non-zero exit."""
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"grpcurl {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return result.stdout
