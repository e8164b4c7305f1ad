"""bench/routing.py's tables: valid policies, and the benchmarked call really tries every route
before the split (so the number measured is the worst case it claims to be)."""

from __future__ import annotations

import random
from collections import Counter

from bench import h2load, routing
from control_plane.policy import validate
from sidecar.filters.routes import Routes, RoutesConfig, first_match_in, metadata


def test_the_tables_pass_the_policy_api_validation() -> None:
    validate(routing.destination_rule())
    for routes in routing.TABLES.values():
        validate(routing.virtual_service(routes))
    spec = routing.virtual_service(routing.ROUTES)["spec"]
    assert len(spec["http"]) == routing.ROUTES
    assert sum("headers" in r["match"][0] for r in spec["http"][:-1]) == routing.HEADER_ROUTES


def test_the_benchmarked_call_falls_through_every_route_to_the_split() -> None:
    traffic = routing.compiled(routing.ROUTES)
    routes = traffic.routes["users"]
    head = routing._head()
    assert first_match_in(routes, head.path, metadata(head)) is routes[-1]  # the split, last
    # The call carries both headers the header routes read, so their matchers run (none matches).
    assert {name for name, _, _ in head.headers} >= {b"x-tenant", b"x-user"}
    picked: Counter[str | None] = Counter()

    def inner(h: object) -> object:
        picked[head.subset] += 1
        return h

    decide = Routes(inner, RoutesConfig(traffic, random.Random(3)))  # type: ignore[arg-type]
    for _ in range(10_000):
        head.service = "users"
        decide(head)
    assert abs(picked["v2"] / 10_000 - 0.10) <= 0.02


def test_h2load_takes_extra_request_headers() -> None:
    argv = h2load.command(
        "http://h/p", routing.RESULTS, h2load.Load(1, 1), 10, routing.RESULTS, routing.CALL_HEADERS
    )
    assert argv[-5:] == ["-H", "x-tenant: tenant-none", "-H", "x-user: u-17", "http://h/p"]


def test_per_call_cost_runs_for_every_table_and_shape() -> None:
    for routes in (None, *routing.TABLES.values()):
        for new_shapes in (False, True):
            assert 0 < routing.per_call_us(routes, 10, 1, new_shapes=new_shapes) < float("inf")


def test_new_shapes_differ_in_a_header_the_routes_match_on() -> None:
    heads = [routing._head(f"u-{i}") for i in range(2)]
    assert [dict((n, v) for n, v, _ in h.headers)[b"x-user"] for h in heads] == [b"u-0", b"u-1"]
