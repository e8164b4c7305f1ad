"""Steady unary echo calls through a sidecar's outbound port, on a thread of their own, counting
every failure: what "no call failed while X happened" tests run in the background."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc

from tests.support.clients import ECHO, channel
from tests.support.mesh import wait_for

CALLS_PER_SECOND = 20
CALL_TIMEOUT = 5.0


@dataclass
class Traffic:
    """Unary echo calls through sidecar A at a steady rate, on a thread of their own."""

    outbound: str
    calls: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop calling (idempotent); returns once the call in flight, if any, has ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CALL_TIMEOUT + 5)
            assert not self._thread.is_alive()

    def count(self) -> int:
        with self._lock:
            return self.calls

    def failed(self) -> list[str]:
        with self._lock:
            return list(self.failures)

    def wait_for_calls(self, total: int, timeout: float) -> None:
        wait_for(lambda: self.count() >= total, timeout, f"{total} calls A→B")

    def _run(self) -> None:
        interval = 1 / CALLS_PER_SECOND
        next_call = time.monotonic()
        with channel(self.outbound, "echo") as ch:
            unary = ch.unary_unary(ECHO + "Unary")
            while not self._stop.is_set():
                body = f"call {self.calls}".encode()
                started = time.monotonic()
                try:
                    reply = unary(body, timeout=CALL_TIMEOUT)
                    failure = None if reply == body else f"wrong reply {reply!r} to {body!r}"
                except grpc.RpcError as exc:
                    failure = f"{exc.code().name}: {exc.details()}"
                with self._lock:
                    self.calls += 1
                    if failure is not None:
                        self.failures.append(f"call at {started:.3f} ({body.decode()}): {failure}")
                # A steady rate: the pause before the next call, cut short by stop().
                next_call = max(next_call + interval, time.monotonic())
                self._stop.wait(next_call - time.monotonic())
