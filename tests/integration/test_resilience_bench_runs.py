"""bench/resilience.py's runs on the real harness (tests/support/flaky.py: real mTLS servers
behind a real sidecar), small: what they count, never how long anything took."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import resilience as res

SMALL = res.Settings(rate=40, seconds=0.25, service=0.0)  # 10 calls


def run(variant: res.Variant, root: Path) -> res.Result:
    return asyncio.run(res.run_variant(variant, SMALL, root))


def amplification(name: str, config: dict[str, object]) -> res.Variant:
    return res.Variant(
        "amplification", name, res.route(retries=res.RETRY_MAX), config=config, fault=res.all_failing,
        fault_at=0.0,
    )  # fmt: skip


def test_with_the_budget_off_each_failing_call_makes_five_attempts(tmp_path: Path) -> None:
    result = run(amplification("budget off", res.BUDGET_OFF), tmp_path)
    assert (result.calls, result.ok) == (10, 0)
    assert result.attempts == 50  # gRFC A6's cap: 5 attempts a call
    assert result.amplification == 5.0
    assert result.counters["outbound.retries"] == 40
    assert result.counters["outbound.retry_exhausted"] == 10


def test_the_a6_throttle_allows_four_retries_from_ten_tokens_then_none(tmp_path: Path) -> None:
    result = run(amplification("throttle", {**res.BUDGET_OFF, **res.THROTTLE}), tmp_path)
    # Each failed attempt takes a token: 10 → 9, 8, 7, 6 allow a retry; at 5 (half) none.
    assert result.attempts == result.calls + 4
    assert result.counters["outbound.retries"] == 4
    assert result.counters["outbound.retry_denied_throttle"] == result.calls


def test_a_killed_server_gets_nothing_after_the_kill_and_retries_hide_it(tmp_path: Path) -> None:
    variant = res.Variant(
        "kill", "killed", res.route(retries=res.RETRY_ON_FAILURE), fault=res.kill_one, fault_at=0.5
    )
    result = run(variant, tmp_path)
    assert result.fault_started is not None
    assert result.attempts_on_faulty == []
    assert result.ok == result.calls == 10


def test_the_baseline_has_no_failure_and_one_attempt_per_call(tmp_path: Path) -> None:
    result = run(res.variants()["amplification"][0], tmp_path)
    assert result.ok == result.calls == result.attempts == 10
    assert res.baseline_problems({"amplification": [result]}) == []
