"""Flow control end to end: a slow reader holds back its writer through both sidecars, whose
memory stays bounded while 64 MiB go through. Each test runs a mesh of its own, so one test's
heap does not hide another's growth."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import ECHO, channel, control, server_state
from tests.support.mesh import AppSpec, Mesh, running_mesh, vm_rss_kib, warm_up

pytestmark = pytest.mark.integration

MiB = 1 << 20
MESSAGE = 1 * MiB
MESSAGES = 64  # 64 MiB in all
READ_PAUSE = 0.04  # the slow side takes one message every 40 ms: about 25 MiB/s
# A sidecar holds at most about one stream window (1 MiB) per direction; a sidecar that credits
# data before passing it on would hold most of the 64 MiB.
RSS_GROWTH_LIMIT_KIB = 16 * 1024


class RssSampler:
    """Samples the VmRSS of some processes in a background thread; keeps each one's peak."""

    def __init__(self, pids: dict[str, int], interval: float = 0.01) -> None:
        self.pids = pids
        self.interval = interval
        self.baseline = {name: vm_rss_kib(pid) for name, pid in pids.items()}
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], vm_rss_kib(pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def growth_kib(self) -> dict[str, int]:
        return {name: self.peak[name] - self.baseline[name] for name in self.pids}


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with running_mesh(tmp_path / "mesh", [AppSpec("echo", "echo")]) as running:
        warm_up(running, "echo")
        yield running


def sidecar_pids(mesh: Mesh) -> dict[str, int]:
    return {"client sidecar": mesh.client.pid, "server sidecar": mesh.workloads["echo"].sidecar.pid}


def test_slow_client_reader_holds_back_the_server_and_sidecar_memory_stays_bounded(mesh: Mesh) -> None:
    call_id = f"slow-client-{uuid.uuid4()}"
    request = control({"count": MESSAGES, "size": MESSAGE, "id": call_id})
    with channel(mesh.outbound) as ch, RssSampler(sidecar_pids(mesh)) as rss:
        replies = ch.unary_stream(ECHO + "ServerStream")(request, timeout=60)
        states = []
        for i, reply in enumerate(replies):
            assert reply == bytes([i % 256]) * MESSAGE, f"message {i}"
            if i == MESSAGES // 4:
                states.append(server_state(ch, call_id))
            time.sleep(READ_PAUSE)  # pacing: this is the slow reader
        assert i == MESSAGES - 1
    # A quarter of the way in, the server was still writing: nothing along the path had
    # soaked up the other 48 MiB.
    assert states == ["started"]
    growth = rss.growth_kib()
    assert all(kib < RSS_GROWTH_LIMIT_KIB for kib in growth.values()), f"RSS growth (KiB): {growth}"


def test_slow_server_reader_holds_back_the_client_and_sidecar_memory_stays_bounded(mesh: Mesh) -> None:
    sent_at: list[float] = []

    def messages() -> Iterator[bytes]:
        for i in range(MESSAGES):
            sent_at.append(time.monotonic())
            yield bytes([i % 256]) * MESSAGE

    with channel(mesh.outbound) as ch, RssSampler(sidecar_pids(mesh)) as rss:
        started = time.monotonic()
        reply = ch.stream_unary(ECHO + "SlowReader")(
            messages(), metadata=(("x-read-delay-ms", str(int(READ_PAUSE * 1000))),), timeout=60
        )
    assert json.loads(reply) == {"bytes": MESSAGES * MESSAGE, "messages": MESSAGES}
    # The client could hand over its last message only once the server had read most of the
    # others: it was held back, not buffered for.
    assert sent_at[-1] - started > (MESSAGES // 2) * READ_PAUSE
    growth = rss.growth_kib()
    assert all(kib < RSS_GROWTH_LIMIT_KIB for kib in growth.values()), f"RSS growth (KiB): {growth}"
