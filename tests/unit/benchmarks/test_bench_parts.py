"""The benchmark harness's parts that need no processes: h2load parsing, percentiles, the request
body, nginx configs, /proc readings and the report's medians and ratios."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from bench import grpc_check, h2load, nginx, procstat, report
from bench.measure import Sample
from bench.topology import Proxy, Row
from control_plane.ca import WorkloadFiles

H2LOAD_OUTPUT = """starting benchmark...
spawning thread #0: 2 total client(s). 200 total requests
Application protocol: h2c
progress: 100% done

finished in 96.01ms, 2083.12 req/s, 493.29KB/s
requests: 200 total, 200 started, 198 done, 197 succeeded, 3 failed, 1 errored, 0 timeout
status codes: 197 2xx, 0 3xx, 0 4xx, 1 5xx
traffic: 47.36KB (48498) total, 21.88KB (22400) headers (space savings 7.44%), 14.26KB (14600) data
"""


def test_parse_summary_reads_rate_counts_and_statuses() -> None:
    s = h2load.parse_summary(H2LOAD_OUTPUT)
    assert s.seconds == pytest.approx(0.09601)
    assert s.req_per_s == pytest.approx(2083.12)
    assert (s.total, s.done, s.succeeded, s.failed, s.errored, s.timeout) == (200, 198, 197, 3, 1, 0)
    assert (s.status_2xx, s.status_other) == (197, 1)


def test_parse_summary_rejects_output_without_a_report() -> None:
    with pytest.raises(ValueError, match="lacks"):
        h2load.parse_summary("starting benchmark...\n")


def test_parse_log_keeps_completed_requests_sorted() -> None:
    log = "1795349189665686\t200\t18291\n1795349189665687\t-1\t5\n1795349189665688\t200\t4748\n"
    assert h2load.parse_log(log) == [4748, 18291]


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert h2load.percentile(values, 50) == 50
    assert h2load.percentile(values, 99) == 99
    assert h2load.percentile(values, 100) == 100
    assert h2load.percentile([7], 99) == 7
    assert h2load.percentile([], 50) == 0.0


def test_command_sends_the_grpc_headers_and_body(tmp_path: Path) -> None:
    argv = h2load.command("http://127.0.0.1:1/x", tmp_path / "b", h2load.Load(4, 10), 1000, tmp_path / "l")
    assert argv[:2] == ["h2load", "-t"]
    assert argv[3:9] == ["-c", "4", "-m", "10", "-n", "1000"]
    assert "content-type: application/grpc" in argv and "te: trailers" in argv
    assert argv[argv.index("-d") + 1] == str(tmp_path / "b")


def test_framed_request_is_one_length_prefixed_message() -> None:
    framed = grpc_check.framed_request()
    assert framed[0] == 0
    (length,) = struct.unpack(">I", framed[1:5])
    assert length == len(framed) - 5
    assert grpc_check.USER_ID.encode() in framed[5:]


def test_nginx_tls_server_requires_client_certificates(tmp_path: Path) -> None:
    files = WorkloadFiles(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem")
    conf = nginx.render_config(nginx.NginxSite("in", 8443, "127.0.0.1:9000", listen_tls=files), tmp_path)
    assert "listen 127.0.0.1:8443 ssl http2;" in conf
    assert "ssl_verify_client on;" in conf
    assert "ssl_protocols TLSv1.3;" in conf
    assert "grpc_pass grpc://next_hop;" in conf
    assert "master_process off;" in conf and "daemon off;" in conf
    assert str(tmp_path / "nginx.pid") in conf


def test_nginx_tls_client_presents_a_certificate(tmp_path: Path) -> None:
    files = WorkloadFiles(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem")
    conf = nginx.render_config(nginx.NginxSite("out", 8080, "127.0.0.1:8443", upstream_tls=files), tmp_path)
    assert "listen 127.0.0.1:8080 http2;" in conf
    assert "grpc_pass grpcs://next_hop;" in conf
    assert f"grpc_ssl_certificate {tmp_path / 'c.pem'};" in conf
    assert "keepalive 64;" in conf


def test_procstat_reads_this_process() -> None:
    assert procstat.cpu_seconds(os.getpid()) > 0
    assert procstat.rss_bytes(os.getpid()) > 1 << 20
    before = procstat.MachineTimes.read()
    assert procstat.MachineTimes.read().busy_seconds_since(before) >= 0


def _sample(row: str, rep: int, rate: float, cpu: dict[str, float]) -> Sample:
    return Sample(
        row=row, rep=rep, command="h2load ...", requests=1000, req_per_s=rate, p50_ms=1.0, p99_ms=2.0,
        cpu_us_per_req=cpu, rss_bytes={k: 50 << 20 for k in cpu}, app_cpu_us_per_req=150.0,
        h2load_cpu_us_per_req=20.0, other_cpu_share=0.0,
    )  # fmt: skip


ROWS = [
    Row("1", "direct", "client → app", "127.0.0.1:1", ()),
    Row("3", "mesh", "client → A → B → app", "127.0.0.1:3",
        (Proxy("sidecar A", "sidecar", 1), Proxy("sidecar B", "sidecar", 2))),
    Row("5", "nginx", "client → n1 → n2 → app", "127.0.0.1:5",
        (Proxy("nginx 1", "nginx", 3), Proxy("nginx 2", "nginx", 4))),
]  # fmt: skip


def test_summaries_take_medians_of_measured_runs_only() -> None:
    samples = [
        _sample("3", 0, 10.0, {"sidecar A": 999.0, "sidecar B": 999.0}),  # warm-up: ignored
        _sample("3", 1, 3000.0, {"sidecar A": 100.0, "sidecar B": 80.0}),
        _sample("3", 2, 3200.0, {"sidecar A": 110.0, "sidecar B": 90.0}),
        _sample("3", 3, 2900.0, {"sidecar A": 120.0, "sidecar B": 70.0}),
        _sample("3", 3, 100.0, {"sidecar A": 500.0, "sidecar B": 500.0}),
    ]
    samples[-1].discarded = True  # run again because the machine was busy: not in the medians
    summary = report.summarize(ROWS[1], samples)
    assert summary.reps == 3
    assert summary.req_per_s == 3000.0
    assert summary.req_per_s_range == (2900.0, 3200.0)
    assert summary.cpu_us == {"sidecar A": 110.0, "sidecar B": 80.0}
    assert summary.cpu_per_hop_us == 95.0
    assert summary.rss_mib["sidecar A"] == 50.0


def test_ratios_compare_mesh_with_nginx_and_direct() -> None:
    samples = [
        _sample("1", 1, 5000.0, {}),
        _sample("3", 1, 3500.0, {"sidecar A": 100.0, "sidecar B": 80.0}),
        _sample("5", 1, 4500.0, {"nginx 1": 40.0, "nginx 2": 50.0}),
    ]
    ratios = report.ratios([report.summarize(row, samples) for row in ROWS])
    assert ratios.cpu_per_hop == pytest.approx(2.0)
    assert ratios.throughput == pytest.approx(0.7)
    assert ratios.nginx_throughput == pytest.approx(0.9)
    lines = "\n".join(ratios.lines())
    assert "**2.00x** (meets the target ≤ 2.5x)" in lines
    assert "**0.70x** (meets the target ≥ 0.6x)" in lines


def test_table_shows_per_hop_only_for_rows_of_one_proxy_kind() -> None:
    mixed = Row("2a", "mixed", "client → A → nginx → app", "127.0.0.1:2",
                (Proxy("sidecar A", "sidecar", 1), Proxy("nginx", "nginx", 3)))  # fmt: skip
    samples = [_sample("2a", 1, 3000.0, {"sidecar A": 100.0, "nginx": 40.0})]
    text = report.table([report.summarize(mixed, samples)])
    assert "| sidecar A 100, nginx 40 | — |" in text


def test_observability_report_shows_what_each_variant_adds_over_bare() -> None:
    from bench import observability

    pair = (Proxy("sidecar A", "sidecar", 1), Proxy("sidecar B", "sidecar", 2))
    rows = [Row(key, key, "client → A → B → app", "127.0.0.1:1", pair) for key in ("bare", "metrics", "all")]
    samples = [
        _sample("bare", 1, 3000.0, {"sidecar A": 70.0, "sidecar B": 70.0}),
        _sample("metrics", 1, 3000.0, {"sidecar A": 73.0, "sidecar B": 73.0}),
        _sample("all", 1, 3000.0, {"sidecar A": 80.0, "sidecar B": 82.0}),
    ]
    text = observability.render("info", [report.summarize(r, samples) for r in rows], 40, 2000, 1000)
    assert "| metrics: metrics | 3000 | 1.00 | 2.00 | 73.0 | 73.0 | 73.0 | +3.0 µs (+4.3%) |" in text
    assert "adds **+15.7%** relay CPU per call per hop over bare (misses the goal ≤ 15%)" in text
    assert "40 for 1000 calls" in text
