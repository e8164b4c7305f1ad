"""Traffic management under live traffic, with real processes (issue 5): a control plane, users v1
(two instances) and users v2 behind their own sidecars, and a client sidecar.

- A weight change applied while calls flow takes effect without a failed call: calls started after
  every sidecar acknowledged the change follow the new weights, and none fails across the switch.
- Endpoints are spread across upstream connections: a client holding one HTTP/2 connection to its
  sidecar still has its calls spread over both v1 instances (round robin, even within ±1).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import yaml
from demo.v1 import users_pb2, users_pb2_grpc

from control_plane.ca import CertificateAuthority
from meshctl import procs
from meshctl.demo import policies
from tests.support.control_plane_mesh import (
    TRUST_DOMAIN,
    ControlPlaneProcess,
    RunningSidecar,
    SidecarSpec,
    check_exit_codes,
    logs_note,
    start_sidecars,
    wait_all_ready,
    wait_for_endpoints,
)
from tests.support.mesh import connections_accepted_on

TIMEOUT = 30.0
WORKERS = 8  # concurrent callers on the one connection
PHASE_CALLS = 300  # calls started after a change was acknowledged, per phase


def rule() -> dict[str, Any]:
    return policies.destination_rule({"loadBalancer": {"simple": "ROUND_ROBIN"}})


def split(v1: int, v2: int) -> dict[str, Any]:
    return policies.users_virtual_service([policies.split_route(v1, v2, retries=False)])


@dataclass
class UsersMesh:
    root: Path
    control_plane: ControlPlaneProcess
    client: RunningSidecar
    applies: int = 0

    def apply(self, *documents: dict[str, Any]) -> None:
        """`meshctl apply --wait`: returns once every sidecar acknowledged the change."""
        self.applies += 1
        path = self.root / f"policy-{self.applies}.yaml"
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        self.control_plane.ok("apply", "-f", str(path), "--wait", "--timeout", "30s")


@pytest.fixture(scope="module")
def users_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UsersMesh]:
    root = tmp_path_factory.mktemp("traffic-live")
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    specs = [
        SidecarSpec("users", {"version": "v1"}, dependencies=["users"], app_kind="users"),
        SidecarSpec("users", {"version": "v1"}, dependencies=["users"], app_kind="users"),
        SidecarSpec("users", {"version": "v2"}, dependencies=["users"], app_kind="users"),
        SidecarSpec("client", dependencies=["users"]),
    ]
    with procs.ProcessGroup(grace=10.0, log_dir=root / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, root)
            control_plane.start(warmup_ms=0)
            sidecars = start_sidecars(group, root, ca, control_plane.grpc, specs, timeout=TIMEOUT)
            wait_all_ready(sidecars, TIMEOUT)
            client = sidecars[-1]

            wait_for_endpoints(client, "users", TIMEOUT, count=3)
            yield UsersMesh(root, control_plane, client)
        except BaseException as exc:
            exc.add_note(logs_note(root))
            raise
        check_exit_codes(group.stop_all())


@dataclass
class Outcome:
    started: float
    status: str
    version: str = ""
    instance: str = ""


@dataclass
class Traffic:
    """Calls from WORKERS concurrent callers over one channel (one HTTP/2 connection), each
    recording when it started, its status and who answered (`x-mesh-version`, `x-mesh-instance`)."""

    target: str
    outcomes: list[Outcome] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(
            self.target, options=[("grpc.default_authority", "users")]
        ) as ch:
            stub = users_pb2_grpc.UsersStub(ch)
            await asyncio.gather(*(self._worker(stub, stop, n) for n in range(WORKERS)))

    async def _worker(self, stub: Any, stop: asyncio.Event, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            started = time.monotonic()
            call = stub.CreateUser(users_pb2.CreateUserRequest(name=f"caller {n} call {i}"), timeout=10)
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                self.outcomes.append(Outcome(started, exc.code().name))
                continue
            metadata = dict(await call.initial_metadata())
            self.outcomes.append(
                Outcome(started, "OK", str(metadata["x-mesh-version"]), str(metadata["x-mesh-instance"]))
            )

    def since(self, moment: float, until: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if moment <= o.started < until]


async def _until(traffic: Traffic, moment: float, calls: int) -> None:
    """Until `calls` calls started after `moment` have finished."""
    deadline = time.monotonic() + TIMEOUT
    while len(traffic.since(moment)) < calls:
        assert time.monotonic() < deadline, f"only {len(traffic.since(moment))} calls after the change"
        await asyncio.sleep(0.01)


def test_a_weight_change_applied_mid_traffic_takes_effect_without_a_failed_call(
    users_mesh: UsersMesh,
) -> None:
    users_mesh.apply(rule(), split(90, 10))
    traffic = Traffic(users_mesh.client.outbound)

    async def scenario() -> list[tuple[float, float]]:
        """Each phase's window: from the change acknowledged to the next change asked for."""
        stop = asyncio.Event()
        load = asyncio.create_task(traffic.run(stop))
        windows = []
        acked = time.monotonic()
        for weights in ((0, 100), (100, 0), (50, 50), None):  # each change lands while calls flow
            await _until(traffic, acked, PHASE_CALLS)
            asked = time.monotonic()
            windows.append((acked, asked))
            if weights is not None:
                await asyncio.to_thread(users_mesh.apply, split(*weights))
                acked = time.monotonic()
        stop.set()
        await load
        return windows

    windows = asyncio.run(scenario())
    failed = Counter(o.status for o in traffic.outcomes if o.status != "OK")
    assert not failed, f"{sum(failed.values())} of {len(traffic.outcomes)} calls failed: {failed}"
    phases = [Counter(o.version for o in traffic.since(a, b)) for a, b in windows]
    assert 0 < phases[0]["v2"] < phases[0]["v1"], phases[0]  # 90/10
    assert phases[1] == Counter({"v2": sum(phases[1].values())}), phases[1]  # 0/100: v2 only
    assert phases[2] == Counter({"v1": sum(phases[2].values())}), phases[2]  # 100/0: v1 only
    assert phases[3]["v1"] > 0 and phases[3]["v2"] > 0, phases[3]  # 50/50
    assert len(traffic.outcomes) >= 4 * PHASE_CALLS


def test_calls_on_one_client_connection_spread_over_the_endpoints(users_mesh: UsersMesh) -> None:
    users_mesh.apply(rule(), split(100, 0))
    port = int(users_mesh.client.outbound.rpartition(":")[2])
    before = connections_accepted_on(port)

    async def scenario() -> tuple[Counter[str], int]:
        async with grpc.aio.insecure_channel(
            users_mesh.client.outbound, options=[("grpc.default_authority", "users")]
        ) as ch:
            stub = users_pb2_grpc.UsersStub(ch)
            instances: Counter[str] = Counter()
            for i in range(200):  # one at a time: round robin alternates exactly
                call = stub.CreateUser(users_pb2.CreateUserRequest(name=f"user {i}"), timeout=10)
                await call
                instances[str(dict(await call.initial_metadata())["x-mesh-instance"])] += 1
            return instances, connections_accepted_on(port) - before

    instances, connections = asyncio.run(scenario())
    assert connections == 1  # every call on the one HTTP/2 connection this client opened
    assert len(instances) == 2, instances  # both v1 instances answered, v2 none (weight 0)
    assert all(name.startswith("users-v1-") for name in instances), instances
    first, second = instances.values()
    assert abs(first - second) <= 1, instances
