"""nghttp2's h2load as a real HTTP/2 peer of the sidecar: many pipelined calls on few connections.

h2load counts any HTTP 200 as a success, so the gRPC statuses are checked in the sidecars' own
counters: every call h2load completed must be an OK call on both sides.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.mesh import Mesh, admin_stats

pytestmark = pytest.mark.integration

CALLS = 3000


def _ok_calls(stats: dict[str, Any], direction: str, service: str) -> dict[str, int]:
    return dict(stats["calls"].get(direction, {}).get(service, {}).get("by_status", {}))


def test_h2load_pipelined_calls_through_the_mesh_all_succeed(mesh: Mesh, tmp_path: Path) -> None:
    h2load = shutil.which("h2load")
    assert h2load, "h2load is missing: `make tools` installs nghttp2-client"
    body = tmp_path / "request.bin"
    message = b"ping" * 8
    body.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
    server_admin = mesh.workloads["echo"].admin
    before_out = _ok_calls(admin_stats(mesh.admin), "outbound", "echo")
    before_in = _ok_calls(admin_stats(server_admin), "inbound", "echo")

    # The authority is the address h2load dialled, so the sidecar routes by the gRPC service.
    result = subprocess.run(
        [
            h2load,
            "-n",
            str(CALLS),
            "-c",
            "4",
            "-m",
            "16",
            "-t",
            "1",
            "-d",
            str(body),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://{mesh.outbound}/test.Echo/Unary",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    done = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", result.stdout
    )
    assert done, result.stdout
    assert (int(done[1]), int(done[2]), int(done[3])) == (CALLS, CALLS, 0), result.stdout
    after_out = _ok_calls(admin_stats(mesh.admin), "outbound", "echo")
    after_in = _ok_calls(admin_stats(server_admin), "inbound", "echo")
    assert {k: v - before_out.get(k, 0) for k, v in after_out.items() if v != before_out.get(k, 0)} == {
        "0": CALLS
    }
    assert {k: v - before_in.get(k, 0) for k, v in after_in.items() if v != before_in.get(k, 0)} == {
        "0": CALLS
    }
