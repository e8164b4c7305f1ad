"""An attempt cut at its perTryTimeout is retried whoever notices first: the sidecar's per-try
timer, or the upstream, which was given the per-try timeout as its `grpc-timeout` and answers
DEADLINE_EXCEEDED at the same moment (found by bench/resilience.py: on a busy loop the upstream's
answer was often read first and judged by `retryOn` alone). The relay now treats an answer read
when the per-try timer is due as that timer's expiry (`ProxyCall._per_try_due`).

Here the faulty server blocks the event loop (the sidecar's too) past the per-try timeout before
answering, so the upstream's DEADLINE_EXCEEDED is always read first.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support.flaky import Action, Ok, Sleep, flaky_mesh, route, virtual_service


def stall_past_the_per_try_timeout() -> Action:
    time.sleep(0.5)  # blocks the loop: the upstream's deadline (200 ms) fires in grpc's own threads
    return Sleep(2.0)


def test_an_attempt_cut_at_its_per_try_timeout_is_retried_whoever_notices_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        retries = {"attempts": 2, "retryOn": "unavailable", "perTryTimeout": "200ms"}
        async with flaky_mesh(tmp_path, [virtual_service(route(retries=retries))], endpoints=2) as mesh:
            slow, healthy = mesh.ports
            mesh.script.by_port[slow] = stall_past_the_per_try_timeout
            mesh.script.by_port[healthy] = Ok
            async with mesh.channel() as channel:
                for _ in range(4):
                    assert await mesh.call(channel) == [b"ping"]  # fails today: DEADLINE_EXCEEDED
            stalled = sum(seen.port == slow for seen in mesh.script.seen)
            assert stalled >= 1
            assert mesh.stat("outbound.retries") == stalled

    asyncio.run(scenario())
