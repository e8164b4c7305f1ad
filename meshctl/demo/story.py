"""The demo's story: a canary rollout of users v2 told step by step while load runs, each step a
change made through the control plane's API (or a fault), then a measurement of its effect from
the calling sidecars' `/metrics`, checked against what the step should show.

1. all users traffic on v1 (a DestinationRule with subsets, a VirtualService 100/0);
2. 90/10 → the split moves live;
3. a header route: `x-canary: true` callers always reach v2;
4. a fault: one v1 instance's app hangs (SIGSTOP; its sidecar and its health stream stay up, so
   the control plane keeps it an endpoint): per-try timeouts and retries keep callers' calls
   succeeding, and outlier detection ejects it; the sidecars' counters show both. Resumed after;
5. promote to 50/50, then 100% v2; roll back one revision; `meshctl status`: every sidecar on one
   config version.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshctl import procs
from meshctl.api_client import ControlPlaneClient
from meshctl.cmd_status import wait_for_revision
from meshctl.demo import policies, scrape
from meshctl.demo.loadgen import LoadGenerator, ServiceStats, fresh_stats
from meshctl.demo.mesh import DemoMesh, child_env

SAMPLE_INTERVAL = 0.5
LIVE_WINDOW = 5.0  # seconds of samples behind the live rows
APPLY_TIMEOUT = 30.0
MIN_SUCCESS = 0.99
# Counters worth showing during the fault: whatever the sidecars count about retries and ejections.
RESILIENCE_WORDS = ("retr", "eject", "outlier", "fault", "circuit", "overflow")
HUNG_INSTANCE = "users-v1-b"
EJECTIONS = "grpc_mesh_outlier_ejections"
NAMESPACE = "default"


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during the story."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class StepResult:
    number: str
    title: str
    seconds: float = 0.0
    rows: list[scrape.Row] = field(default_factory=list)
    client: dict[str, ServiceStats] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.number,
            "title": self.title,
            "seconds": round(self.seconds, 3),
            "rows": [r.__dict__ for r in self.rows],
            "client": {
                name: {
                    "calls": s.calls,
                    "errors": s.errors,
                    "codes": dict(s.codes),
                    "versions": dict(s.versions),
                }
                for name, s in self.client.items()
            },
            "counters": self.counters,
            "notes": self.notes,
            "checks": [c.__dict__ for c in self.checks],
        }


def tolerance(p: float, n: int) -> float:
    """How far a measured share may sit from `p` over `n` calls: four standard deviations of a
    binomial share, and never under 3 points."""
    return max(0.03, 4 * math.sqrt(p * (1 - p) / max(n, 1)))


def share_check(rows: list[scrape.Row], version: str, expected: float) -> Check:
    measured, n = scrape.share(rows, "users", version)
    if n == 0:
        return Check(f"users {version} share", False, "no users calls measured")
    if expected in (0.0, 1.0):  # weight 0 sends nothing, weight 100 everything
        ok = measured == expected
        return Check(f"users {version} share", ok, f"{measured:.1%} of {n} calls (expected {expected:.0%})")
    tol = tolerance(expected, n)
    ok = abs(measured - expected) <= tol
    return Check(
        f"users {version} share", ok, f"{measured:.1%} of {n} calls (expected {expected:.0%} ± {tol:.1%})"
    )


def success_check(rows: list[scrape.Row], service: str = "users") -> Check:
    rate, n = scrape.success(rows, service)
    ok = n > 0 and rate >= MIN_SUCCESS
    return Check(f"{service} success", ok, f"{rate:.2%} of {n} calls (at least {MIN_SUCCESS:.0%})")


class Display:
    """Where the story shows itself: `say` prints lines; `live` shows the rows while a step runs."""

    def say(self, *lines: str) -> None:
        raise NotImplementedError

    def live(self, step: StepResult) -> LiveView:
        raise NotImplementedError

    def finished(self, step: StepResult) -> None:
        """A step is over: show what it measured and its checks."""
        raise NotImplementedError


class LiveView:
    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, elapsed: float, rows: list[scrape.Row], counters: Mapping[str, float]) -> None:
        raise NotImplementedError


Pause = Callable[[str], Awaitable[None]]


class Story:
    def __init__(
        self,
        mesh: DemoMesh,
        group: procs.ProcessGroup,
        client: ControlPlaneClient,
        generator: LoadGenerator,
        display: Display,
        stop: asyncio.Event,
        *,
        step_seconds: float,
        pause: Pause | None = None,
        meshctl_env: Mapping[str, str] | None = None,
    ) -> None:
        self.mesh = mesh
        self.group = group
        self.client = client
        self.generator = generator
        self.display = display
        self.stop = stop
        self.step_seconds = step_seconds
        self.pause = pause
        self.meshctl_env = dict(meshctl_env or {})
        self.results: list[StepResult] = []
        self.paused: list[procs.ManagedProcess] = []  # apps the fault step stopped (SIGSTOP)
        self._resilience_counters: set[str] = set()  # the retry/ejection counters the sidecars expose

    # -- the steps ----------------------------------------------------------------------------------

    async def baseline(self) -> list[str]:
        """STRICT mTLS, subsets for users, and all traffic on v1: the state the story starts from."""
        return await self.apply(
            policies.strict_mtls(),
            policies.destination_rule(),
            policies.virtual_service(100, 0, canary_route=False),
        )

    async def run(self) -> list[StepResult]:
        await self.step(
            "1",
            "all traffic on v1",
            [
                "PeerAuthentication default: STRICT (every sidecar-to-sidecar hop is mutual TLS).",
                "DestinationRule users: subsets v1 (version=v1) and v2 (version=v2), outlier detection.",
                "VirtualService users: 100% to v1, 0% to v2 (weight 0 sends nothing).",
            ],
            self.baseline,
            lambda r: [
                share_check(r.rows, "v2", 0.0),
                success_check(r.rows),
                success_check(r.rows, "orders"),
            ],
        )
        await self.step(
            "2",
            "canary: 90/10",
            ["VirtualService users: 90% v1, 10% v2, applied through the API; the split moves live."],
            lambda: self.apply(policies.virtual_service(90, 10, canary_route=False)),
            lambda r: [share_check(r.rows, "v2", 0.10), success_check(r.rows)],
        )
        await self.step(
            "3",
            "header route: x-canary: true → v2",
            [
                "A first route matches `x-canary: true`: those callers (the load generator's",
                f"'users x-canary' calls, {self.generator.canary_share:.0%} of its users calls) always "
                "reach v2; everyone else stays on 90/10.",
            ],
            lambda: self.apply(policies.virtual_service(90, 10, canary_route=True)),
            self._header_checks,
        )
        await self.step(
            "4",
            f"fault: {HUNG_INSTANCE}'s app hangs",
            [
                f"SIGSTOP to the app of {HUNG_INSTANCE}: it accepts calls and never answers; its sidecar and",
                "its health stream stay up, so the control plane keeps it an endpoint. Each attempt sent",
                f"there ends at the route's perTryTimeout ({policies.RETRIES['perTryTimeout']}) and is "
                "retried on the other v1 instance;",
                "outlier detection ejects it after 3 failures in a row. (The demo's sidecars let every call",
                "in flight retry: `retry_budget` in their config.) Measured from the hang on; resumed after.",
            ],
            self._hang_one_v1,
            self._fault_checks,
        )
        self.resume_paused()
        await self.step(
            "5a",
            "promote: 50/50",
            ["VirtualService users: 50% v1, 50% v2 for everyone (the testers' route is no longer needed)."],
            lambda: self.apply(policies.virtual_service(50, 50, canary_route=False)),
            lambda r: [share_check(r.rows, "v2", 0.5), success_check(r.rows)],
        )
        await self.step(
            "5b",
            "promote: 100% v2",
            ["VirtualService users: 0% v1, 100% v2."],
            lambda: self.apply(policies.virtual_service(0, 100, canary_route=False)),
            lambda r: [share_check(r.rows, "v2", 1.0), success_check(r.rows)],
        )
        await self.step(
            "5c",
            "roll back one revision",
            ["`meshctl rollback vs users`: the previous revision (50/50) is stored again and pushed."],
            self._rollback,
            self._rollback_checks,
        )
        await self._status()
        return self.results

    # -- what each step does ------------------------------------------------------------------------

    async def apply(self, *documents: dict[str, Any]) -> list[str]:
        results = await asyncio.to_thread(self.client.apply, list(documents))
        revision = max(r.resource.resource_version for r in results)
        lines = [
            f"applied {r.resource} ({r.action}, revision {r.resource.resource_version})" for r in results
        ]
        return [*lines, await self._wait_applied(revision)]

    async def _wait_applied(self, revision: int) -> str:
        outcome = await asyncio.to_thread(
            wait_for_revision,
            self.client,
            revision,
            timeout=APPLY_TIMEOUT,
            clock=time.monotonic,
            sleep=time.sleep,
            interval=0.05,
        )
        if not outcome.done:
            lagging = ", ".join(str(s) for s in outcome.rejected + outcome.lagging) or outcome.last_error
            raise procs.ProcessError(f"revision {revision} was not applied by every sidecar: {lagging}")
        return f"all {outcome.sidecars} sidecars applied revision {revision} in {outcome.elapsed:.2f}s"

    async def _hang_one_v1(self) -> list[str]:
        proc = self.mesh.app_procs[HUNG_INSTANCE]
        os.kill(proc.pid, signal.SIGSTOP)
        self.paused.append(proc)
        return [f"stopped {HUNG_INSTANCE} (pid {proc.pid}) with SIGSTOP"]

    def resume_paused(self) -> None:
        """SIGCONT every app the story stopped (also on the way out, so each can exit on SIGTERM)."""
        while self.paused:
            proc = self.paused.pop()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)

    async def _rollback(self) -> list[str]:
        revisions = await asyncio.to_thread(self.client.revisions, "VirtualService", NAMESPACE, "users")
        previous = revisions[-2]
        result = await asyncio.to_thread(
            self.client.rollback, "VirtualService", NAMESPACE, "users", previous.resource_version
        )
        self.rolled_back_to = previous
        self.rollback_result = result
        revision = result.resource.resource_version
        return [
            f"rolled back {result.resource} to revision {previous.resource_version} "
            f"(now revision {revision}, weights {policies.weights(result.resource.spec)})",
            await self._wait_applied(revision),
        ]

    # -- checks ------------------------------------------------------------------------------------

    def _header_checks(self, r: StepResult) -> list[Check]:
        canary = r.client["users x-canary"]
        others = r.client["users"]
        canary_ok = canary.calls > 0 and canary.versions.get("v2", 0) == canary.calls
        n = sum(others.versions.values())
        v2 = others.versions.get("v2", 0) / n if n else 0.0
        tol = tolerance(0.10, n)
        return [
            Check(
                "x-canary: true → v2",
                canary_ok,
                f"{canary.versions.get('v2', 0)} of {canary.calls} tester calls answered by v2 (client view)",
            ),
            Check(
                "other callers stay on 90/10",
                n > 0 and abs(v2 - 0.10) <= tol,
                f"{v2:.1%} of {n} calls answered by v2 (expected 10% ± {tol:.1%}, client view)",
            ),
            success_check(r.rows),
        ]

    def _fault_checks(self, r: StepResult) -> list[Check]:
        if r.counters:
            r.notes.append(
                "counted by the calling sidecars: "
                + ", ".join(f"{k} +{v:.0f}" for k, v in r.counters.items())
            )
        else:
            r.notes.append("no retry, ejection or overflow counted by the sidecars in this step")
        ejections = sum(v for k, v in r.counters.items() if k.startswith(EJECTIONS))
        retries = sum(v for k, v in r.counters.items() if k.startswith("grpc_mesh_retries"))
        return [
            success_check(r.rows),
            Check("the hung instance was ejected", ejections > 0, f"{ejections:.0f} ejections counted"),
            Check("calls to it were retried", retries > 0, f"{retries:.0f} retries counted"),
        ]

    def _rollback_checks(self, r: StepResult) -> list[Check]:
        restored = policies.weights(self.rollback_result.resource.spec)
        expected = policies.weights(self.rolled_back_to.spec or {})
        return [
            Check("rollback restores the weights", restored == expected, f"{restored} (expected {expected})"),
            share_check(r.rows, "v2", expected.get("v2", 0) / 100),
            success_check(r.rows),
        ]

    # -- running a step ----------------------------------------------------------------------------

    async def step(
        self,
        number: str,
        title: str,
        narration: list[str],
        act: Callable[[], Awaitable[list[str] | None]],
        checks: Callable[[StepResult], list[Check]],
    ) -> StepResult:
        if self.results and self.pause is not None:
            await self.pause(f"next: step {number}, {title}")
        self._raise_if_stopped()
        result = StepResult(number, title)
        self.display.say("", f"Step {number}: {title}", *(f"  {line}" for line in narration))
        for line in await act() or []:
            self.display.say(f"  {line}")
        await self.measure(result)
        result.checks = checks(result)
        self.display.finished(result)
        self.results.append(result)
        return result

    async def measure(self, result: StepResult) -> None:
        admins = [s.admin for s in self.mesh.callers()]
        first = await asyncio.to_thread(scrape.scrape, admins, time.monotonic())
        self.generator.stats = fresh_stats()
        window: deque[scrape.Sample] = deque([first])
        started = time.monotonic()
        end = started + self.step_seconds
        with self.display.live(result) as live:
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), min(SAMPLE_INTERVAL, end - now))
                self._raise_if_stopped()
                sample = await asyncio.to_thread(scrape.scrape, admins, time.monotonic())
                window.append(sample)
                while len(window) > 2 and sample.time - window[1].time >= LIVE_WINDOW:
                    window.popleft()
                live.update(
                    sample.time - started,
                    scrape.rows(window[0], sample),
                    scrape.counter_deltas(first, sample, RESILIENCE_WORDS),
                )
        last = window[-1]
        result.seconds = last.time - first.time
        result.rows = scrape.rows(first, last)
        result.client = self.generator.stats
        result.counters = scrape.counter_deltas(first, last, RESILIENCE_WORDS)
        self._resilience_counters = {
            name for name in last.counters if any(word in name for word in RESILIENCE_WORDS)
        }

    def _raise_if_stopped(self) -> None:
        if self.stop.is_set():
            raise Interrupted

    async def _status(self) -> None:
        """`meshctl status`, as an operator runs it, and the check that every sidecar is on one version."""
        self.display.say("", "Step 5d: meshctl status", "  $ meshctl status")
        done = await asyncio.to_thread(
            subprocess.run,
            procs.python_argv("-m", "meshctl", "status"),
            capture_output=True,
            text=True,
            env={**os.environ, **child_env(), **self.meshctl_env},
            timeout=60,
            check=False,
        )
        self.display.say(*(f"  {line}" for line in (done.stdout + done.stderr).rstrip().splitlines()))
        listing = await asyncio.to_thread(self.client.sidecars)
        connected = [s for s in listing.sidecars if s.connected]
        # A sidecar's applied version is "<store revision>-<hash of its own snapshot>": sidecars that
        # need different services differ in the hash, never in the revision.
        revisions = {s.applied_revision for s in connected}
        acked = all(s.state == "ACK" for s in connected)
        result = StepResult("5d", "meshctl status")
        result.checks = [
            Check("meshctl status", done.returncode == 0, f"exit code {done.returncode}"),
            Check(
                "every sidecar on one config version",
                len(connected) == len(self.mesh.sidecars) and revisions == {listing.store_revision} and acked,
                f"{len(connected)} of {len(self.mesh.sidecars)} sidecars connected, applied revisions "
                f"{sorted(revisions)} ({'all' if acked else 'not all'} ACK), store revision "
                f"{listing.store_revision}",
            ),
        ]
        self.display.finished(result)
        self.results.append(result)
