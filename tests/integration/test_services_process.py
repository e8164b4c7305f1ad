"""The example services as real processes: ready file, grpcurl over reflection, graceful SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

GRPCURL = Path(sys.executable).parent / "grpcurl"
REPO = Path(__file__).resolve().parents[2]
START_DEADLINE = 20.0
STOP_DEADLINE = 10.0


class Service:
    def __init__(self, process: subprocess.Popen[bytes], address: str, log: Path) -> None:
        self.process = process
        self.address = address
        self.log = log

    def terminate(self) -> int:
        """SIGTERM, then wait for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_DEADLINE)


@contextmanager
def running(module: str, tmp_path: Path, *args: str) -> Iterator[Service]:
    """Start `python -m module`, wait (polling, with a deadline) for its ready file, stop it at the end."""
    name = module.rpartition(".")[2]
    ready = tmp_path / f"{name}-ready.json"
    log = tmp_path / f"{name}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--listen", "127.0.0.1:0", "--ready-file", str(ready), *args],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_DEADLINE
        while not ready.exists():
            if process.poll() is not None:
                pytest.fail(f"{module} exited with {process.returncode} before ready:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{module} not ready after {START_DEADLINE}s:\n{log.read_text()}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == process.pid
        yield Service(process, info["address"], log)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def grpcurl(*args: str) -> str:
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_users_process_serves_reflection_and_health_then_stops_on_sigterm(tmp_path: Path) -> None:
    with running("services.users", tmp_path, "--version", "v2", "--instance", "users-v2-a") as users:
        assert users.address.startswith("127.0.0.1:")
        services = grpcurl(users.address, "list").split()
        assert {"demo.v1.Users", "grpc.health.v1.Health"} <= set(services)

        health = grpcurl("-d", '{"service": "demo.v1.Users"}', users.address, "grpc.health.v1.Health/Check")
        assert json.loads(health) == {"status": "SERVING"}

        output = grpcurl("-v", "-d", '{"name": "Ada"}', users.address, "demo.v1.Users/CreateUser")
        assert "x-mesh-version: v2" in output
        assert "x-mesh-instance: users-v2-a" in output
        assert '"instance": "users-v2-a"' in output

        assert users.terminate() == 0
        assert "stopping" in users.log.read_text()


def test_orders_process_checks_users_through_its_target(tmp_path: Path) -> None:
    with running("services.users", tmp_path, "--instance", "users-v1-a") as users:
        grpcurl("-d", '{"id": "ada", "name": "Ada"}', users.address, "demo.v1.Users/CreateUser")
        with running(
            "services.orders", tmp_path, "--users-target", users.address, "--users-authority", "users"
        ) as orders:
            assert "demo.v1.Orders" in grpcurl(orders.address, "list").split()
            request = '{"user_id": "ada", "item": "book", "quantity": 1}'
            reply = json.loads(grpcurl("-d", request, orders.address, "demo.v1.Orders/CreateOrder"))
            assert reply["order"]["id"] == "order-1"
            assert reply["served_by"]["instance"] == f"orders-v1-{orders.process.pid}"
            assert reply["user_checked_by"]["instance"] == "users-v1-a"
            assert orders.terminate() == 0
        assert users.terminate() == 0


def test_taken_port_is_an_error_not_a_shared_listener(tmp_path: Path) -> None:
    with running("services.users", tmp_path) as users:
        result = subprocess.run(
            [sys.executable, "-m", "services.users", "--listen", users.address],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert f"cannot listen on {users.address}" in result.stderr
