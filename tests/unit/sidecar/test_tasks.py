"""sidecar.tasks.cancel_all: every task is cancelled and has ended when it returns."""

from __future__ import annotations

import asyncio

from sidecar.tasks import cancel_all


def test_cancel_all_cancels_and_waits_for_every_task() -> None:
    async def scenario() -> None:
        ended: list[str] = []

        async def forever(name: str) -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                await asyncio.sleep(0)  # cleanup that takes a loop turn
                ended.append(name)

        tasks = [asyncio.create_task(forever(n)) for n in "ab"]
        await asyncio.sleep(0)
        await cancel_all([*tasks, None])
        assert sorted(ended) == ["a", "b"]
        assert all(task.cancelled() for task in tasks)
        await cancel_all([])  # nothing to do

    asyncio.run(scenario())
