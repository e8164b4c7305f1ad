"""The demo's load generator: calls users and orders through a sidecar's outbound port at
a steady rate and measures what a client sees (status, latency, `x-mesh-version`).

The users instances keep users in memory, each its own, so the load only reads users every
instance holds: `seed_users` stores the same users in each one first (straight to the app, not
through the mesh). A share of the users calls are canary testers: they carry `x-canary: true`
and are counted apart ("users x-canary"), so a header route's effect shows on its own."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from array import array
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from demo.v1 import orders_pb2, orders_pb2_grpc, users_pb2, users_pb2_grpc

CALL_TIMEOUT = 5.0
WINDOW = 5.0  # seconds of history behind the live req/s and percentiles
SEED_USERS = 20
CANARY_HEADER = ("x-canary", "true")
SERVICES = ("users", "users x-canary", "orders")


def seeded_user_ids(count: int = SEED_USERS) -> list[str]:
    return [f"user-{n}" for n in range(1, count + 1)]


async def seed_users(app: str, count: int = SEED_USERS) -> None:
    """Store the demo's users (`seeded_user_ids`) in the users app at `app`, directly."""
    async with grpc.aio.insecure_channel(app) as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        requests = (
            users_pb2.ImportUsersRequest(
                user=users_pb2.User(id=user_id, name=f"demo user {user_id}", email=f"{user_id}@example.test")
            )
            for user_id in seeded_user_ids(count)
        )
        await stub.ImportUsers(requests, timeout=CALL_TIMEOUT)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = min(max(1, math.ceil(q / 100 * len(sorted_values))), len(sorted_values))
    return sorted_values[rank - 1]


@dataclass
class ServiceStats:
    """Client-side view of one service: totals for the summary, a short window for the live view."""

    calls: int = 0
    errors: int = 0
    codes: Counter[str] = field(default_factory=Counter)  # non-OK outcomes: status code names
    versions: Counter[str] = field(default_factory=Counter)
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (monotonic time, latency ms)

    def record(self, now: float, latency_ms: float, status: str, version: str | None) -> None:
        self.calls += 1
        if status != "OK":
            self.errors += 1
            self.codes[status] += 1
        if version:
            self.versions[version] += 1
        self.latencies_ms.append(latency_ms)
        self.recent.append((now, latency_ms))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self.recent and self.recent[0][0] < now - WINDOW:
            self.recent.popleft()

    def window(self, now: float, started: float) -> tuple[float, float, float]:
        """(req/s, p50 ms, p99 ms) over the last WINDOW seconds."""
        self._trim(now)
        span = min(WINDOW, max(now - started, 1e-3))
        values = sorted(latency for _, latency in self.recent)
        return len(values) / span, percentile(values, 50), percentile(values, 99)

    def overall(self) -> tuple[float, float]:
        """(p50 ms, p99 ms) over the whole run."""
        values = sorted(self.latencies_ms)
        return percentile(values, 50), percentile(values, 99)


def _version(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "x-mesh-version":
            return str(value)
    return None


def fresh_stats() -> dict[str, ServiceStats]:
    return {service: ServiceStats() for service in SERVICES}


class LoadGenerator:
    """Open-loop load at `rate` calls/s (at most `concurrency` in flight) through `target`;
    `canary_share` of the users calls carry `x-canary: true`."""

    def __init__(
        self,
        target: str,
        *,
        rate: float = 50.0,
        concurrency: int = 32,
        seed: int = 0,
        canary_share: float = 0.1,
        user_ids: list[str] | None = None,
    ) -> None:
        if rate <= 0 or concurrency <= 0:
            raise ValueError("rate and concurrency must be positive")
        if not 0 <= canary_share <= 1:
            raise ValueError("canary_share must be within 0..1")
        self.target = target
        self.rate = rate
        self.concurrency = concurrency
        self.canary_share = canary_share
        self.stats = fresh_stats()
        self.started = time.monotonic()
        self._random = random.Random(seed)
        self._user_ids: list[str] = list(user_ids) if user_ids else seeded_user_ids()
        self._order_ids: list[str] = []

    async def run(self, stop: asyncio.Event, duration: float = math.inf) -> None:
        """Drive load until `stop` is set or `duration` seconds have passed."""
        users_channel = grpc.aio.insecure_channel(self.target, options=[("grpc.default_authority", "users")])
        orders_channel = grpc.aio.insecure_channel(
            self.target, options=[("grpc.default_authority", "orders")]
        )
        self._users = users_pb2_grpc.UsersStub(users_channel)
        self._orders = orders_pb2_grpc.OrdersStub(orders_channel)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            self.started = time.monotonic()
            deadline = self.started + duration
            slots = asyncio.Semaphore(self.concurrency)
            next_at = time.monotonic()
            while not stop.is_set() and next_at < deadline:
                now = time.monotonic()
                if next_at > now:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), next_at - now)
                    if stop.is_set():
                        break
                next_at += 1 / self.rate
                await slots.acquire()
                task = asyncio.create_task(self._one(slots))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(in_flight, timeout=CALL_TIMEOUT + 1)
        finally:
            for task in list(in_flight):
                task.cancel()
            await users_channel.close()
            await orders_channel.close()

    async def _one(self, slots: asyncio.Semaphore) -> None:
        try:
            pick = self._random.random()
            if pick < 0.6:
                canary = self._random.random() < self.canary_share
                metadata = (CANARY_HEADER,) if canary else ()
                op = self._get_user if pick < 0.45 else self._list_users
                await self._call("users x-canary" if canary else "users", lambda: op(metadata))
            elif pick < 0.85:
                await self._call("orders", self._create_order)
            else:
                await self._call("orders", self._get_order)
        finally:
            slots.release()

    async def _call(self, service: str, op: Callable[[], Awaitable[str | None]]) -> None:
        started = time.monotonic()
        try:
            version, status = await op(), "OK"
        except grpc.aio.AioRpcError as err:
            version, status = _version(err.initial_metadata()), err.code().name
        except Exception as err:  # a bug here must show up as errors, not vanish with its task
            version, status = None, type(err).__name__
        now = time.monotonic()
        self.stats[service].record(now, (now - started) * 1000, status, version)

    async def _get_user(self, metadata: tuple[tuple[str, str], ...]) -> str | None:
        call = self._users.GetUser(
            users_pb2.GetUserRequest(id=self._random.choice(self._user_ids)),
            timeout=CALL_TIMEOUT,
            metadata=metadata,
        )
        await call
        return _version(await call.initial_metadata())

    async def _list_users(self, metadata: tuple[tuple[str, str], ...]) -> str | None:
        request = users_pb2.ListUsersRequest(limit=5)
        call = self._users.ListUsers(request, timeout=CALL_TIMEOUT, metadata=metadata)
        async for _ in call:
            pass
        return _version(await call.initial_metadata())

    async def _create_order(self) -> str | None:
        request = orders_pb2.CreateOrderRequest(
            user_id=self._random.choice(self._user_ids),
            item="coffee beans",
            quantity=self._random.randint(1, 3),
        )
        call = self._orders.CreateOrder(request, timeout=CALL_TIMEOUT)
        reply = await call
        self._order_ids.append(reply.order.id)
        return _version(await call.initial_metadata())

    async def _get_order(self) -> str | None:
        if not self._order_ids:
            return await self._create_order()
        call = self._orders.GetOrder(
            orders_pb2.GetOrderRequest(id=self._random.choice(self._order_ids)), timeout=CALL_TIMEOUT
        )
        await call
        return _version(await call.initial_metadata())
