"""bench/authz.py on a few calls: every scenario decides as it says, and the report renders."""

from __future__ import annotations

from bench import authz


def test_the_authz_bench_runs_and_reports() -> None:
    results, verify = authz.measure(calls=200, reps=1)
    assert [r.scenario for r in results][:2] == ["50 policies x 1 rule", "1 policy x 50 rules"]
    assert all(r.uncached_us > 0 for r in results)
    assert set(verify) == {"RS256", "ES256"}
    text = authz.render(results, verify, 200, 1)
    assert "| 50 policies x 1 rule |" in text
    assert "the goal** (< 7 µs)" in text
