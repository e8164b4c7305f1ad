"""A real redis-server for tests, on a free loopback port, with nothing persisted.

    def test_x(redis_server: RedisServer) -> None:     # the fixture: started, stopped after
        client = redis_server.client()

redis-server cannot listen on port 0 (that turns TCP off), so a free port is found by binding
one and the server is started on it, trying another if it was taken in between. `stop()` and
`start()` again (on the same port) let a test take Redis away and bring it back. redis-server
comes from scripts/setup-tools.sh (`make test` installs it); any store or limiter test that needs
a Redis can take this fixture.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

START_TIMEOUT = 10.0
ATTEMPTS = 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on a free port (or, after `stop()`, on the port it had) and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make tools` (scripts/setup-tools.sh)")
        self.directory.mkdir(parents=True, exist_ok=True)
        fixed = self.port != 0
        for _ in range(1 if fixed else ATTEMPTS):
            port = self.port if fixed else _free_port()
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            argv += ["--dir", str(self.directory), "--protected-mode", "no"]
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _pings(port):
                    self.port = port
                    return
                time.sleep(0.01)
            self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start:\n{tail}")

    def stop(self) -> None:
        """Stop the server (SIGTERM; SIGKILL if it lingers). Its port is kept for `start()`."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
