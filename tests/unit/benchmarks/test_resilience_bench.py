"""The resilience benchmark's parts that need no servers: what a run's outcomes add up to, the
report's columns, the runs it makes and its arguments."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import grpc
import pytest

from bench import resilience as res
from control_plane.policy import validate_all

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED


def result(
    outcomes: list[res.Outcome],
    *,
    attempts: int = 0,
    counters: dict[str, int] | None = None,
    fault_started: float | None = None,
    on_faulty: list[float] | None = None,
) -> res.Result:
    variant = res.Variant("slow", "a run", res.route(), fault=res.slow_one if fault_started else None)
    return res.Result(variant, outcomes, attempts, Counter(counters or {}), fault_started, on_faulty or [])


def test_success_rate_failures_and_amplification_count_the_callers_calls() -> None:
    outcomes = [res.Outcome(i, 0.01, OK) for i in range(7)]
    outcomes += [
        res.Outcome(7, 1.0, DEADLINE),
        res.Outcome(8, 0.002, UNAVAILABLE),
        res.Outcome(9, 1.0, DEADLINE),
    ]
    r = result(outcomes, attempts=25)
    assert (r.calls, r.ok) == (10, 7)
    assert r.success_rate == 0.7
    assert r.failures() == "2 DEADLINE_EXCEEDED, 1 UNAVAILABLE"
    assert r.amplification == 2.5
    assert r.latency_ms(50) == 10.0
    assert r.latency_ms(99) == 1000.0
    assert result([res.Outcome(0, 0.01, OK)]).failures() == "—"
    cut = [
        res.Outcome(0, 0.1, UNAVAILABLE, "Cancelling all calls"),
        res.Outcome(1, 1.0, DEADLINE, "deadline"),
    ]
    assert result(cut + cut[:1]).messages() == [
        (2, "UNAVAILABLE", "Cancelling all calls"),
        (1, "DEADLINE_EXCEEDED", "deadline"),
    ]
    assert result([]).success_rate == 0.0
    assert result([]).amplification == 0.0


def test_retry_counters_show_only_those_that_moved() -> None:
    r = result([], counters={"outbound.retries": 12, "outbound.retry_denied_budget": 3, "inbound.retries": 9})
    assert res.retry_counts(r) == "retries 12, retry_denied_budget 3"
    assert res.retry_counts(result([])) == "—"


def test_how_fast_traffic_left_the_faulty_server() -> None:
    calls = [res.Outcome(10.0 + i * 0.1, 0.02, OK) for i in range(50)]  # the last starts at 14.9
    moved = result(calls, fault_started=11.0, on_faulty=[11.2, 11.5, 12.25])
    assert moved.moved_away_after() == 1.25
    table = res.table([moved], moved=True)
    assert table.splitlines()[-1].endswith("| +1.25 s (3 attempts) |")
    stayed = result(calls, fault_started=11.0, on_faulty=[11.2, 14.8])
    assert "never: still getting calls at the end (2 attempts)" in res.table([stayed], moved=True)
    untouched = result(calls, fault_started=11.0)
    assert untouched.moved_away_after() is None
    assert "no attempt after the fault" in res.table([untouched], moved=True)
    assert "| — |" in res.table([result(calls)], moved=True)  # the baseline has no fault


def test_a_baseline_with_a_failed_call_is_a_problem_a_faulty_run_is_not() -> None:
    failed = [res.Outcome(0, 0.01, OK), res.Outcome(1, 1.0, DEADLINE)]
    baseline, faulty = result(failed), result(failed, fault_started=0.5)
    assert res.baseline_problems({"slow": [baseline, faulty]}) == ["slow / a run: 1 DEADLINE_EXCEEDED"]
    assert res.baseline_problems({"slow": [result([res.Outcome(0, 0.01, OK)]), faulty]}) == []
    text = res.render(
        datetime(2026, 11, 22, tzinfo=UTC), res.Settings(100, 2, 0.01), {"slow": [baseline, faulty]}
    )
    assert f"## {res.TITLES['slow']}" in text
    assert "## Problems\n\n- slow / a run: 1 DEADLINE_EXCEEDED" in text
    assert '- slow / a run: 1x DEADLINE_EXCEEDED ""' in text  # under "Failures by message"


def test_every_scenario_starts_with_its_baseline_and_its_policies_are_valid() -> None:
    scenarios = res.variants()
    assert list(scenarios) == list(res.TITLES)
    for runs in scenarios.values():
        assert runs[0].fault is None
        assert all(run.fault is not None for run in runs[1:])
        for run in runs:
            documents = [
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": policy.kind,
                    "metadata": {"name": policy.name, "namespace": policy.namespace},
                    "spec": policy.spec,
                }
                for policy in run.policies()
            ]
            validate_all(documents)  # what `meshctl apply` checks; raises naming the field


def test_the_amplification_runs_cover_each_limit_under_both_failures() -> None:
    runs = res.variants()["amplification"][1:]
    assert {run.name.split(", ", 1)[0] for run in runs} == {"all fail 50%", "all fail 100%"}
    configs = [run.config for run in runs if run.name.startswith("all fail 100%")]
    assert configs == [res.BUDGET_DEFAULT, res.BUDGET_OFF, {**res.BUDGET_OFF, **res.THROTTLE}, res.THROTTLE]
    assert all(run.fault_at == 0.0 for run in runs)


def test_arguments_are_checked() -> None:
    args = res.parse_args(["--only", "kill,slow", "--rate", "50"])
    assert (args.only, args.rate, args.seconds) == ("kill,slow", 50.0, 6.0)
    with pytest.raises(SystemExit):
        res.parse_args(["--only", "kill,explode"])
    with pytest.raises(SystemExit):
        res.parse_args(["--rate", "0"])


def test_a_stalled_run_is_run_again_and_the_least_stalled_try_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stalls = iter([0.5, 0.3, 0.4, 0.1])
    variant = res.Variant("slow", "a run", res.route())

    async def fake_run(v: res.Variant, settings: res.Settings, root: object) -> res.Result:
        return res.Result(v, [], 0, Counter(), None, [], res.Load(1.0, 0.5, next(stalls)))

    monkeypatch.setattr(res, "run_variant", fake_run)
    monkeypatch.setattr(res, "variants", lambda: {"slow": [variant, variant]})
    settings = res.Settings(100, 1, 0.01, max_stall=0.2, redos=2)
    first, second = asyncio.run(res.run_all(settings, set()))["slow"]
    assert (first.load.worst_stall, first.tries) == (0.3, 3)  # 0.5, 0.3, 0.4: redone twice, no more
    assert (second.load.worst_stall, second.tries) == (0.1, 1)
    assert "| a run (least stalled of 3) |" in res.table([first])
