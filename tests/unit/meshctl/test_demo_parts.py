"""The demo's measuring and reporting pieces, without processes."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from control_plane.ca import WorkloadFiles
from meshctl.demo import mesh as demo_mesh

demo_mesh.ensure_stubs_importable()

from meshctl.demo import view  # noqa: E402
from meshctl.demo.loadgen import WINDOW, ServiceStats, percentile  # noqa: E402


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


def stats(users: tuple[int, int], orders: tuple[int, int]) -> dict[str, ServiceStats]:
    out = {}
    for name, (calls, errors) in (("users", users), ("orders", orders)):
        s = ServiceStats()
        for i in range(calls):
            s.record(float(i), 1.0, "UNAVAILABLE" if i < errors else "OK", "v1")
        out[name] = s
    return out


def test_pass_needs_calls_to_every_service_and_under_one_percent_errors() -> None:
    assert view.passed(stats((500, 0), (500, 9)))
    assert not view.passed(stats((500, 0), (500, 10)))
    assert not view.passed(stats((500, 0), (0, 0)))


def test_summary_lines_name_each_service_counts_and_failure_codes() -> None:
    lines = view.summary_lines(stats((100, 0), (50, 2)), 5.0, stopped_early=True)
    assert lines[0] == "summary (stopped early after 5.0s, measured by the client):"
    assert lines[1].startswith("  users   calls=100 errors=0 req/s=20.0 ")
    assert "versions=v1 100%" in lines[1]
    assert lines[2].startswith("  orders  calls=50 errors=2 ") and lines[2].endswith("(UNAVAILABLE x2)")
    assert lines[3] == "result: FAIL: 2 errors in 150 calls (1.33%, limit 1%)"


def serve_json(body: object) -> tuple[ThreadingHTTPServer, str]:
    payload = json.dumps(body).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/stats" else 404)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize("nested", [False, True])
def test_sidecar_stats_lines_show_the_sidecars_own_counts(nested: bool) -> None:
    calls = {
        "users": {
            "total": 7,
            "errors": 1,
            "by_status": {"0": 6, "14": 1},
            "latency_ms": {"p50": 1.25, "p99": 4},
        }
    }
    server, admin = serve_json({"calls": {"outbound": calls} if nested else calls, "counters": {}})
    try:
        assert view.sidecar_stats_lines(admin) == [
            "as counted by the load generator's sidecar (/stats):",
            "  users   total=7 errors=1 p50=1.2ms p99=4.0ms",
        ]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("body", [{"calls": {}}, {"other": 1}, ["not", "a", "dict"]])
def test_sidecar_stats_lines_are_empty_for_nothing_or_another_shape(body: object) -> None:
    server, admin = serve_json(body)
    try:
        assert view.sidecar_stats_lines(admin) == []
    finally:
        server.shutdown()
        server.server_close()


def test_sidecar_stats_lines_are_empty_when_nothing_answers() -> None:
    assert view.sidecar_stats_lines(f"127.0.0.1:{demo_mesh.free_port()}", timeout=0.5) == []


def test_sidecar_config_matches_the_static_contract(tmp_path: Path) -> None:
    tls = WorkloadFiles(cert=tmp_path / "o.pem", key=tmp_path / "o-key.pem", ca=tmp_path / "ca.pem")
    config = demo_mesh.sidecar_config(
        "orders", tls, app="127.0.0.1:5", upstreams={"users": ("demo.v1.Users", "127.0.0.1:7")}
    )
    assert config["service"] == "orders" and config["app"] == "127.0.0.1:5"
    assert config["listeners"] == {
        "outbound": "127.0.0.1:0",
        "inbound": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
    }
    assert config["services"]["users"] == {
        "grpc_services": ["demo.v1.Users"],
        "endpoints": [{"address": "127.0.0.1:7", "labels": {"version": "v1"}}],
    }
    client_only = demo_mesh.sidecar_config("loadgen", tls, app=None, upstreams={})
    assert "app" not in client_only
    assert client_only["listeners"] == {"outbound": "127.0.0.1:0", "admin": "127.0.0.1:0"}


def test_free_port_is_bindable_right_after() -> None:
    port = demo_mesh.free_port()
    assert port > 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
