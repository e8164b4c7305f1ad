"""`meshctl control-plane` as a real process: ready file, grpcurl over reflection, a REST apply
with a token from `meshctl token create`, SIGTERM → exit 0, and a restart keeping every resource."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.policy_api import virtual_service

pytestmark = pytest.mark.integration

GRPCURL = Path(sys.executable).parent / "grpcurl"
REPO = Path(__file__).resolve().parents[2]
START_DEADLINE = 20.0
STOP_DEADLINE = 10.0


@contextmanager
def control_plane(data_dir: Path, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    ready = data_dir.parent / f"{data_dir.name}-ready.json"
    ready.unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "meshctl", "control-plane", "--data-dir", str(data_dir),
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--ready-file", str(ready),
        "--warmup-ms", "0",
    ]  # fmt: skip
    with log.open("ab") as log_file:
        process = subprocess.Popen(argv, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_DEADLINE
        while not ready.exists():
            if process.poll() is not None:
                pytest.fail(
                    f"control plane exited with {process.returncode} before ready:\n{log.read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"control plane not ready after {START_DEADLINE}s:\n{log.read_text()}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == process.pid
        yield process, info
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def terminate(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=STOP_DEADLINE)


def meshctl(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "meshctl", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def grpcurl(*args: str) -> str:
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def rest(address: str, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{address}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_control_plane_serves_both_apis_stops_on_sigterm_and_keeps_its_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "control-plane.log"
    with control_plane(data_dir, log) as (process, addresses):
        assert stat.S_IMODE((data_dir / "api-signing-key.pem").stat().st_mode) == 0o600
        services = grpcurl(addresses["grpc"], "list").split()
        assert {"mesh.v1.PolicyService", "mesh.v1.DiscoveryService", "grpc.health.v1.Health"} <= set(services)

        admin = meshctl("token", "create", "--role", "admin", "--data-dir", str(data_dir)).strip()
        status, body = rest(
            addresses["http"], "POST", "/api/v1/apply", admin, {"documents": [virtual_service()]}
        )
        assert status == 200, body
        assert body["results"][0]["action"] == "created"

        reader = meshctl(
            "token", "create", "--role", "read", "--data-dir", str(data_dir), "--ttl", "5m"
        ).strip()
        status, body = rest(
            addresses["http"], "POST", "/api/v1/apply", reader, {"documents": [virtual_service()]}
        )
        assert (status, body["error"]["code"]) == (403, "PERMISSION_DENIED")

        listed = json.loads(
            grpcurl(
                "-H",
                f"authorization: Bearer {reader}",
                addresses["grpc"],
                "mesh.v1.PolicyService/ListResources",
            )
        )
        # grpcurl prints the proto field names.
        assert [(r["kind"], r["name"], r["resource_version"]) for r in listed["resources"]] == [
            ("VirtualService", "users", "1")
        ]
        assert terminate(process) == 0
    assert "Traceback" not in log.read_text()

    with control_plane(data_dir, log) as (process, addresses):
        status, body = rest(addresses["http"], "GET", "/api/v1/resources/VirtualService/default/users", admin)
        assert status == 200, body  # the same key signs: the first run's token still works
        assert body["resource"]["resourceVersion"] == "1"
        assert body["resource"]["spec"] == virtual_service()["spec"]
        status, body = rest(
            addresses["http"], "GET", "/api/v1/resources/VirtualService/default/users/revisions", admin
        )
        assert [r["resourceVersion"] for r in body["revisions"]] == ["1"]
        assert terminate(process) == 0
    assert "Traceback" not in log.read_text()
