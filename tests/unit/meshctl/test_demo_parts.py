"""The demo's measuring and reporting pieces, without processes."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from meshctl.demo import mesh as demo_mesh

demo_mesh.ensure_stubs_importable()

from control_plane.policy import validate  # noqa: E402
from meshctl.demo import policies, scrape, story, view  # noqa: E402
from meshctl.demo.loadgen import WINDOW, ServiceStats, percentile  # noqa: E402
from sidecar.config import parse_config  # noqa: E402


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


def test_service_stats_totals_and_sliding_window() -> None:
    s = ServiceStats()
    s.record(0.0, 100.0, "OK", "v1")
    s.record(WINDOW + 1, 10.0, "UNAVAILABLE", None)
    s.record(WINDOW + 2, 20.0, "OK", "v2")
    assert (s.calls, s.errors, dict(s.codes)) == (3, 1, {"UNAVAILABLE": 1})
    assert dict(s.versions) == {"v1": 1, "v2": 1}
    rate, p50, p99 = s.window(WINDOW + 2, started=0.0)
    assert rate == pytest.approx(2 / WINDOW)  # the first call fell out of the window
    assert (p50, p99) == (10.0, 20.0)
    assert s.overall() == (20.0, 100.0)


def _labels(reporter: str, version: str, status: str, le: str = "") -> str:
    text = (
        f'reporter="{reporter}",destination_service="users",destination_version="{version}",'
        f'grpc_response_status="{status}"'
    )
    return "{" + text + (f',le="{le}"' if le else "") + "}"


DURATION = "istio_request_duration_milliseconds"
METRICS = "\n".join(
    [
        "# TYPE istio_requests_total counter",
        f"istio_requests_total{_labels('source', 'v1', '0')} 90",
        f"istio_requests_total{_labels('source', 'v1', '14')} 10",
        f"istio_requests_total{_labels('source', 'v2', '0')} 100",
        f"istio_requests_total{_labels('destination', 'v2', '0')} 999",
        f"# TYPE {DURATION} histogram",
        *(
            f"{DURATION}_bucket{_labels('source', 'v2', '0', le)} {n}"
            for le, n in (("1.0", 0), ("5.0", 50), ("10.0", 100), ("+Inf", 100))
        ),
        f"{DURATION}_sum{_labels('source', 'v2', '0')} 500",
        f"{DURATION}_count{_labels('source', 'v2', '0')} 100",
        "# TYPE grpc_mesh_retries_total counter",
        'grpc_mesh_retries_total{direction="outbound"} 7',
        "# TYPE grpc_mesh_not_grpc_total counter",
        'grpc_mesh_not_grpc_total{direction="outbound"} 3',
        "",
    ]
)


def test_a_sample_keeps_each_sidecars_caller_counts_and_sums_mesh_counters() -> None:
    sample = scrape.Sample(0.0)
    scrape.read("a:1", METRICS, sample)
    scrape.read("b:2", METRICS, sample)  # a second sidecar
    v1 = sample.counts["a:1"][("users", "v1")]
    assert (v1.requests, v1.successes) == (100, 90)
    assert sample.counts["b:2"][("users", "v2")].requests == 100  # the destination-reported 999 is not
    assert sample.counters == {"grpc_mesh_retries{outbound}": 14, "grpc_mesh_not_grpc{outbound}": 6}


def test_rows_are_the_difference_between_two_samples() -> None:
    older, newer = scrape.Sample(10.0), scrape.Sample(12.0)
    scrape.read("a:1", METRICS, newer)
    rows = {(r.service, r.version): r for r in scrape.rows(older, newer)}
    v1, v2 = rows[("users", "v1")], rows[("users", "v2")]
    assert (v1.calls, v1.rate, v1.success, v1.share) == (100, 50.0, 0.9, 0.5)
    assert (v2.calls, v2.success, v2.p50) == (100, 1.0, 5.0)
    assert scrape.share(rows.values(), "users", "v2") == (0.5, 200)
    assert scrape.success(rows.values(), "users") == (0.95, 200)
    assert scrape.rows(newer, newer) == []  # nothing happened in between
    assert scrape.counter_deltas(older, newer, ("retr",)) == {"grpc_mesh_retries{outbound}": 7}


def test_share_check_tolerance_follows_the_sample_size() -> None:
    rows = [
        scrape.Row("users", "v1", 880, 1, 1, 1, 1, 0.88),
        scrape.Row("users", "v2", 120, 1, 1, 1, 1, 0.12),
    ]
    assert story.share_check(rows, "v2", 0.10).ok  # 12% of 1000 calls: within 4 sigma (3.8 points)
    assert not story.share_check(rows, "v2", 0.05).ok
    assert not story.share_check(rows, "v2", 0.0).ok  # weight 0 sends nothing, exactly
    assert story.tolerance(0.5, 10_000) == 0.03  # never tighter than 3 points
    assert story.success_check(rows).ok
    assert not story.success_check([]).ok  # no calls proves nothing


def test_the_story_policies_pass_the_policy_api_validation() -> None:
    for document in (
        policies.strict_mtls(),
        policies.destination_rule(),
        policies.virtual_service(100, 0, canary_route=False),
        policies.virtual_service(90, 10, canary_route=True),
    ):
        validate(document)
    spec = policies.virtual_service(90, 10, canary_route=True)["spec"]
    assert policies.weights(spec) == {"v1": 90, "v2": 10}
    assert spec["http"][0]["match"] == [{"headers": {"x-canary": {"exact": "true"}}}]


def test_summary_names_the_failed_checks() -> None:
    ok = story.StepResult("1", "all traffic on v1", checks=[story.Check("a", True, "")])
    bad = story.StepResult("2", "canary: 90/10", checks=[story.Check("users v2 share", False, "")])
    lines = view.summary_lines([ok, bad])
    assert lines[-3].split() == ["step", "1", "all", "traffic", "on", "v1", "ok"]
    assert lines[-2].endswith("FAIL (users v2 share)")
    assert lines[-1] == "result: FAIL: 2 steps"


def test_sidecar_configs_are_ones_the_sidecar_accepts(tmp_path: Path) -> None:
    tls = tmp_path / "join.token"
    tls.write_text("a token")  # the config checks that it can be read; the sidecar shows it to the CA
    orders = demo_mesh.sidecar_config(
        "orders", tls, control_plane="127.0.0.1:15010", app="127.0.0.1:5", grpc_services=["demo.v1.Orders"],
        outbound="127.0.0.1:0", dependencies=["users"],
    )  # fmt: skip
    parsed = parse_config(orders)
    assert parsed.app is not None and parsed.outbound is not None and parsed.inbound is not None
    assert parsed.grpc_services == ("demo.v1.Orders",) and parsed.dependencies == ("users",)
    client_only = parse_config(
        demo_mesh.sidecar_config(
            "loadgen", tls, control_plane="127.0.0.1:15010", app=None, outbound="127.0.0.1:0"
        )
    )
    assert client_only.inbound is None and client_only.app is None
    users_v2 = parse_config(
        demo_mesh.sidecar_config(
            "users",
            tls,
            control_plane="127.0.0.1:15010",
            version="v2",
            app="127.0.0.1:6",
            grpc_services=["demo.v1.Users"],
        )
    )
    assert users_v2.labels == {"version": "v2"} and users_v2.outbound is None


def test_a_fixed_port_in_use_is_named_before_anything_starts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(
            demo_mesh.PortInUse, match=re.escape(f"127.0.0.1:{port} (the control plane's REST API) is in use")
        ):
            demo_mesh.Ports(0, port, 0).check_free()
    demo_mesh.Ports.any().check_free()  # port 0 is never in use


def test_free_port_is_bindable_right_after() -> None:
    port = demo_mesh.free_port()
    assert port > 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
