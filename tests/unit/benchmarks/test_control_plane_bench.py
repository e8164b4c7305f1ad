"""The control-plane benchmark's parts that need no processes: the simulated fleet's Hellos, the
documents it applies, percentiles, the all-ACKed checks and the report."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench import control_plane as bench_cp
from bench.sim_sidecars import (
    INBOUND_EVERY,
    TARGET_SERVICE,
    Receipt,
    all_acked,
    all_acked_at,
    first_received_at,
    fleet_hellos,
    lagging,
    percentile,
    snapshots_between,
)
from control_plane.discovery import registration_of
from control_plane.policy import validate_all


def receipt(received: float, acked: float, revision: int) -> Receipt:
    return Receipt(received, acked, f"{revision}-abc", revision)


def test_percentile_is_nearest_rank_of_unsorted_values() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(v) for v in range(100, 0, -1)], 99) == 99.0
    assert percentile([0.5], 99) == 0.5
    assert percentile([], 50) == 0.0


def test_percentile_99_of_fifty_is_the_maximum() -> None:
    values = [float(v) for v in range(1, 51)]
    assert percentile(values, 99) == 50.0
    assert percentile(values, 50) == 25.0


def test_fleet_hellos_are_distinct_valid_and_all_depend_on_the_target() -> None:
    hellos = fleet_hellos(100)
    assert len({h.node_id for h in hellos}) == 100
    assert all(list(h.dependencies) == [TARGET_SERVICE] for h in hellos)
    with_inbound = [h for h in hellos if h.inbound_address]
    assert len(with_inbound) == 100 // INBOUND_EVERY
    assert all(h.service == TARGET_SERVICE for h in with_inbound)
    assert {h.labels["version"] for h in with_inbound} == {"v1", "v2"}
    assert len({h.inbound_address for h in with_inbound}) == len(with_inbound)
    for hello in hellos:
        registration_of(hello).validate()  # what the control plane checks; raises if refused


def test_documents_are_valid_and_every_apply_changes_the_weights() -> None:
    weights = [bench_cp.weight_of_apply(i) for i in range(6)]
    assert weights == [90, 10, 90, 10, 90, 10]
    assert weights[0] != bench_cp.INITIAL_WEIGHT
    validate_all([bench_cp.destination_rule(), bench_cp.virtual_service(bench_cp.INITIAL_WEIGHT)])
    for weight in (90, 10):
        validate_all([bench_cp.virtual_service(weight)])  # raises ValidationError if refused
    route = bench_cp.virtual_service(90)["spec"]["http"][0]["route"]
    assert [r["weight"] for r in route] == [90, 10]


def test_lagging_and_all_acked() -> None:
    acked = {"a": 5, "b": 4, "c": 7}
    assert lagging(acked, 5) == ["b"]
    assert not all_acked(acked, 5)
    assert all_acked(acked, 4)
    assert lagging(acked, 8) == ["a", "b", "c"]
    assert not all_acked({}, 1)


def test_all_acked_at_is_the_last_sidecars_first_ack_of_the_revision() -> None:
    receipts = {
        "a": [receipt(0.0, 0.1, 3), receipt(1.0, 1.1, 4), receipt(2.0, 2.1, 5)],
        "b": [receipt(0.0, 0.2, 3), receipt(1.2, 1.3, 5)],  # skipped 4: a later revision counts
    }
    assert all_acked_at(receipts, 4) == 1.3
    assert all_acked_at(receipts, 5) == 2.1
    assert all_acked_at(receipts, 3) == 0.2
    assert all_acked_at(receipts, 6) is None
    assert all_acked_at({"a": receipts["a"], "c": []}, 3) is None
    assert all_acked_at({}, 1) is None


def test_first_received_and_snapshot_counts() -> None:
    receipts = {
        "a": [receipt(0.0, 0.1, 3), receipt(1.0, 1.1, 4), receipt(1.5, 1.6, 4)],
        "b": [receipt(0.9, 0.95, 4)],
    }
    assert first_received_at(receipts, 4) == 0.9
    assert first_received_at(receipts, 9) is None
    assert snapshots_between(receipts, 3, 4) == 3
    assert snapshots_between(receipts, 2, 4) == 4
    assert snapshots_between(receipts, 4, 9) == 0


def test_applied_revision_reads_the_rest_answer() -> None:
    answer = {
        "results": [
            {"action": "updated", "resource": {"resourceVersion": "12"}},
            {"action": "created", "resource": {"resourceVersion": "12"}},
        ]
    }
    assert bench_cp.applied_revision(answer) == 12
    unchanged = {"action": "unchanged", "resource": {"resourceVersion": "3"}}
    with pytest.raises(ValueError, match="did not change"):
        bench_cp.applied_revision({"results": [unchanged]})
    with pytest.raises(ValueError, match="no results"):
        bench_cp.applied_revision({})


def test_control_plane_view_problems() -> None:
    good = {"nodeId": "a", "connected": True, "state": "ACK", "appliedRevision": "7"}
    behind = {"nodeId": "b", "connected": True, "state": "PENDING", "appliedRevision": "6"}
    assert bench_cp.control_plane_view_problems({"sidecars": [good]}, ["a"], 7) == []
    problems = bench_cp.control_plane_view_problems({"sidecars": [good, behind]}, ["a", "b", "c"], 7)
    assert len(problems) == 2
    assert "missing" in problems[0] and problems[1].startswith("b:")


def test_report_states_whether_the_goal_is_met() -> None:
    settings = bench_cp.Settings(2, 2, 30.0, 0.1, 0.5, None)
    info = bench_cp.RunInfo(datetime(2026, 1, 2, 3, 4, tzinfo=UTC), "2 cores", "Python", settings)
    samples = [
        bench_cp.ApplySample(1, 90, 3, 0.004, 0.03, 0.05, 2),
        bench_cp.ApplySample(2, 10, 4, 0.005, 0.03, 1.2, 2),
    ]
    usage = bench_cp.Usage(rss_start_kib=1024, applies_wall_s=2.0, cpu_applies_s=0.5)
    text = bench_cp.render(info, bench_cp.Outcome(samples, usage))
    assert "| apply → all 2 sidecars ACKed | 2 | 50.0 | 1200.0 | 1200.0 | 625.0 |" in text
    assert "misses the goal ≤ 1000 ms" in text
    assert "(0.25 cores), 250 ms per apply" in text
    text = bench_cp.render(info, bench_cp.Outcome(samples[:1], usage))
    assert "meets the goal" in text
    failed = bench_cp.render(info, bench_cp.Outcome([], usage, ["timed out"]))
    assert "No apply completed." in failed and "- timed out" in failed
