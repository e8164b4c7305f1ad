"""Routing by VirtualService and DestinationRule (sidecar.traffic, filters/routes.py, balancer.py):
weighted splits, matches, load balancing, and a bad policy Nacked with the old snapshot kept."""

from __future__ import annotations

import random
import ssl
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from mesh.v1 import discovery_pb2, resources_pb2

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.spiffe import SpiffeId
from sidecar.app import Sidecar
from sidecar.balancer import Balancer
from sidecar.call import CallHead, Handler
from sidecar.config import Address, Endpoint, Policy, ServiceEntry, parse_config
from sidecar.discovery import DiscoveryClient, SnapshotRejected, from_proto
from sidecar.errors import NoRoute, status_for
from sidecar.filters.router import Router
from sidecar.filters.routes import Routes, RoutesConfig
from sidecar.grpc_wire import Code
from sidecar.h2.stream import Limits
from sidecar.pool import Pools
from sidecar.traffic import PolicyRejected, _block, compile_traffic

V1 = [
    Endpoint(Address("10.0.1.1", 15006), {"version": "v1"}),
    Endpoint(Address("10.0.1.2", 15006), {"version": "v1"}),
]
V2 = [Endpoint(Address("10.0.2.1", 15006), {"version": "v2"})]


def services(endpoints: list[Endpoint] | None = None) -> dict[str, ServiceEntry]:
    eps = tuple(V1 + V2 if endpoints is None else endpoints)
    return {"users": ServiceEntry("users", ("demo.v1.Users",), eps)}


def subsets_rule(lb: dict[str, Any] | None = None) -> Policy:
    spec: dict[str, Any] = {
        "host": "users",
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
    }
    if lb is not None:
        spec["trafficPolicy"] = {"loadBalancer": lb}
    return Policy("DestinationRule", "default", "users", spec)


def vs(*http: dict[str, Any]) -> Policy:
    return Policy("VirtualService", "default", "users", {"hosts": ["users"], "http": list(http)})


def to(subset: str, weight: int | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"destination": {"host": "users", "subset": subset}}
    if weight is not None:
        route["weight"] = weight
    return route


def split(v1: int, v2: int, **extra: Any) -> dict[str, Any]:
    return {"route": [to("v1", v1), to("v2", v2)], **extra}


def chain(
    policies: list[Policy], svc: dict[str, ServiceEntry] | None = None, seed: int = 7
) -> tuple[Handler, Pools]:
    svc = services() if svc is None else svc
    traffic = compile_traffic(policies, svc)
    pools = Pools(Limits(), ssl.create_default_context())
    rand = random.Random(seed)
    handler: Handler = Balancer(traffic, pools, rand)
    handler = Routes(handler, RoutesConfig(traffic, rand))
    return Router(handler, svc), pools


def call(
    handler: Handler, path: str = "/demo.v1.Users/GetUser", headers: dict[str, str] | None = None
) -> Address:
    metadata = tuple((k.encode(), v.encode(), False) for k, v in (headers or {}).items())
    return handler(CallHead(path, "users", metadata, None, None)).pool.address


def version(handler: Handler, **kwargs: Any) -> str:
    address = call(handler, **kwargs)
    return next(ep.labels["version"] for ep in V1 + V2 if ep.address == address)


def test_90_10_split_over_10000_calls_is_within_2_percent() -> None:
    handler, _ = chain([subsets_rule(), vs(split(90, 10))])
    counts = Counter(version(handler) for _ in range(10_000))
    assert abs(counts["v2"] / 10_000 - 0.10) <= 0.02
    assert counts["v1"] + counts["v2"] == 10_000


@pytest.mark.parametrize("v1, v2", [(100, 0), (0, 100)])
def test_weight_0_sends_nothing(v1: int, v2: int) -> None:
    handler, _ = chain([subsets_rule(), vs(split(v1, v2))])
    counts = Counter(version(handler) for _ in range(2_000))
    assert counts == Counter({"v1": 2_000} if v1 else {"v2": 2_000})


def test_header_match_sends_canaries_to_v2_always() -> None:
    canary = {"match": [{"headers": {"x-canary": {"exact": "true"}}}], "route": [to("v2")]}
    handler, _ = chain([subsets_rule(), vs(canary, split(100, 0))])
    assert {version(handler, headers={"x-canary": "true"}) for _ in range(500)} == {"v2"}
    assert {version(handler, headers={"x-canary": "false"}) for _ in range(500)} == {"v1"}
    assert {version(handler) for _ in range(100)} == {"v1"}


def test_method_match_sends_one_method_to_v2() -> None:
    method = {"match": [{"uri": {"exact": "/demo.v1.Users/CreateUser"}}], "route": [to("v2")]}
    handler, _ = chain([subsets_rule(), vs(method, {"route": [to("v1")]})])
    assert {version(handler, path="/demo.v1.Users/CreateUser") for _ in range(100)} == {"v2"}
    assert {version(handler, path="/demo.v1.Users/GetUser") for _ in range(100)} == {"v1"}
    assert {version(handler, path="/demo.v1.Users/CreateUserX") for _ in range(100)} == {"v1"}


def test_first_matching_route_wins_and_blocks_are_ored_conditions_anded() -> None:
    both = {
        "match": [
            {
                "uri": {"prefix": "/demo.v1.Users/"},
                "headers": {"x-a": {"exact": "1"}, "x-b": {"present": True}},
            },
            {"headers": {"x-c": {"prefix": "ye"}}},
        ],
        "route": [to("v2")],
    }
    everything_else = {"match": [{"uri": {"prefix": "/"}}], "route": [to("v1")]}
    later_v2 = {"match": [{"headers": {"x-a": {"exact": "1"}}}], "route": [to("v2")]}
    handler, _ = chain([subsets_rule(), vs(both, everything_else, later_v2)])
    assert version(handler, headers={"x-a": "1", "x-b": ""}) == "v2"  # block 1: all conditions
    assert version(handler, headers={"x-a": "1"}) == "v1"  # x-b missing; later_v2 never reached
    assert version(handler, headers={"x-c": "yes"}) == "v2"  # block 2
    assert version(handler, path="/other.Svc/M", headers={"x-a": "1", "x-b": "x"}) == "v1"


def test_a_bin_header_never_matches() -> None:
    # The policy API refuses matches on -bin keys; one the sidecar is given anyway never matches.
    for match in ({"present": True}, {"regex": ".*"}, {"exact": "AAAA"}):
        bin_route = {"match": [{"headers": {"x-token-bin": match}}], "route": [to("v2")]}
        handler, _ = chain([subsets_rule(), vs(bin_route, {"route": [to("v1")]})])
        assert version(handler, headers={"x-token-bin": "AAAA"}) == "v1"
    block = _block({"headers": {"x-token-bin": {"present": True}}})
    assert not block.headers[0].matches("")


def test_a_spec_stored_under_older_rules_is_routed_not_nacked() -> None:
    # Extra fields and a destination host that is no service: the sidecar routes what it can.
    legacy = {"legacy": True, "route": [{"destination": {"host": "bad host"}}]}
    handler, _ = chain([subsets_rule(), vs({"match": [{"uri": {"prefix": "/x."}}], **legacy}, split(0, 100))])
    assert version(handler) == "v2"
    with pytest.raises(NoRoute, match="no endpoints for service 'bad host'"):
        call(handler, path="/x.Y/Z")


@pytest.mark.parametrize(
    "http, field",
    [
        (
            {"route": [{"destination": {"host": "users"}}], "match": [{"uri": {"regex": "("}}]},
            "http[0].match[0].uri.regex",
        ),
        ({"route": [{"destination": {"host": "users"}, "weight": "ten"}]}, "http[0].route[0].weight"),
        ({"route": []}, "http[0].route"),
        ({"route": [{"destination": {"subset": "v1"}}]}, "http[0].route[0].destination.host"),
        ({"route": [to("v1", 0), to("v2", 0)]}, "http[0].route"),
        ({"route": [to("v1")], "match": [{"headers": {"x-a": {}}}]}, "http[0].match[0].headers.x-a"),
    ],
)
def test_a_route_the_sidecar_cannot_use_is_refused_naming_the_field(http: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyRejected) as caught:
        compile_traffic([subsets_rule(), vs(http)], services())
    assert caught.value.path == f"policies[1].spec.{field}"


def test_an_unknown_load_balancer_is_refused_naming_the_field() -> None:
    with pytest.raises(PolicyRejected) as caught:
        compile_traffic([subsets_rule({"simple": "LEAST_CONN"})], services())
    assert caught.value.path == "policies[0].spec.trafficPolicy.loadBalancer.simple"


def test_regex_uri_matches_the_whole_path() -> None:
    regex = {"match": [{"uri": {"regex": r"/demo\.v1\.Users/(Create|Delete)User"}}], "route": [to("v2")]}
    handler, _ = chain([subsets_rule(), vs(regex, {"route": [to("v1")]})])
    assert version(handler, path="/demo.v1.Users/DeleteUser") == "v2"
    assert version(handler, path="/demo.v1.Users/CreateUser") == "v2"
    assert version(handler, path="/demo.v1.Users/DeleteUserX") == "v1"  # full match, not search


def test_no_matching_route_is_unavailable_naming_service_and_path() -> None:
    only = {"match": [{"uri": {"exact": "/demo.v1.Users/CreateUser"}}], "route": [to("v2")]}
    handler, _ = chain([subsets_rule(), vs(only)])
    with pytest.raises(NoRoute) as caught:
        call(handler, path="/demo.v1.Users/GetUser")
    code, message = status_for(caught.value)
    assert code == Code.UNAVAILABLE
    assert "users" in message and "/demo.v1.Users/GetUser" in message


def test_no_virtual_service_keeps_every_endpoint_round_robin() -> None:
    handler, _ = chain([subsets_rule()])
    assert Counter(call(handler) for _ in range(30)) == Counter({ep.address: 10 for ep in V1 + V2})


def test_a_subset_selecting_no_endpoint_is_not_an_error_but_calls_to_it_are_unavailable() -> None:
    handler, _ = chain([subsets_rule(), vs({"route": [to("v2")]})], services(V1))
    with pytest.raises(NoRoute, match="subset 'v2'"):
        call(handler)


def test_a_route_to_an_undefined_subset_is_refused_naming_the_field() -> None:
    with pytest.raises(PolicyRejected) as caught:
        compile_traffic([subsets_rule(), vs(split(50, 50), {"route": [to("v3")]})], services())
    assert caught.value.path == "policies[1].spec.http[1].route[0].destination.subset"
    assert "v3" in caught.value.reason


# ---------------------------------------------------------------------------- load balancing

FIVE = [Endpoint(Address(f"10.0.3.{i}", 15006), {"version": "v1"}) for i in range(1, 6)]


def test_round_robin_is_even_within_1() -> None:
    handler, _ = chain([subsets_rule({"simple": "ROUND_ROBIN"})], services(FIVE))
    counts = Counter(call(handler) for _ in range(1_003))
    assert max(counts.values()) - min(counts.values()) <= 1
    assert len(counts) == 5


def test_random_spreads_calls() -> None:
    handler, _ = chain([subsets_rule({"simple": "RANDOM"})], services(FIVE))
    counts = Counter(call(handler) for _ in range(5_000))
    assert len(counts) == 5 and min(counts.values()) > 800


def test_least_request_favours_an_idle_endpoint() -> None:
    handler, pools = chain([subsets_rule({"simple": "LEAST_REQUEST"})], services(FIVE[:2]))
    busy = pools.get(FIVE[0].address, secure=True)
    busy._waiting.extend([object()] * 50)  # type: ignore[list-item]  # 50 calls in flight
    assert busy.in_flight() == 50
    counts = Counter(call(handler) for _ in range(1_000))
    assert counts[FIVE[1].address] == 1_000


def test_least_request_spreads_when_equal() -> None:
    handler, _ = chain([subsets_rule({"simple": "LEAST_REQUEST"})], services(FIVE))
    counts = Counter(call(handler) for _ in range(5_000))
    assert len(counts) == 5 and min(counts.values()) > 500


def hashing() -> Policy:
    return subsets_rule({"consistentHash": {"httpHeaderName": "x-user"}})


def test_consistent_hash_keeps_one_key_on_one_endpoint() -> None:
    handler, _ = chain([hashing()], services(FIVE))
    for user in ("alice", "bob", "carol"):
        assert len({call(handler, headers={"x-user": user}) for _ in range(1_000)}) == 1
    spread = {call(handler, headers={"x-user": f"user-{i}"}) for i in range(200)}
    assert len(spread) == 5


def test_consistent_hash_is_stable_when_an_endpoint_leaves() -> None:
    before, _ = chain([hashing()], services(FIVE))
    after, _ = chain([hashing()], services(FIVE[:2] + FIVE[3:]))
    keys = [f"user-{i}" for i in range(2_000)]
    kept = sum(call(before, headers={"x-user": k}) == call(after, headers={"x-user": k}) for k in keys)
    assert kept / len(keys) >= 0.75


def test_a_subset_traffic_policy_overrides_the_rules() -> None:
    rule = subsets_rule({"consistentHash": {"httpHeaderName": "x-user"}})
    rule.spec["subsets"][0]["trafficPolicy"] = {"loadBalancer": {"simple": "ROUND_ROBIN"}}
    handler, _ = chain([rule, vs({"route": [to("v1")]})])
    assert len({call(handler, headers={"x-user": "alice"}) for _ in range(10)}) == 2


# ---------------------------------------------------------------------------- NACK, old snapshot kept


def _snapshot(version: str, policies: list[Policy]) -> discovery_pb2.Snapshot:
    snapshot = discovery_pb2.Snapshot(version=version, store_revision=int(version.split("-")[0]))
    users = snapshot.services.add(name="users", namespace="default", grpc_services=["demo.v1.Users"])
    for ep in V1 + V2:
        users.endpoints.add(address=str(ep.address), labels=ep.labels)
    for policy in policies:
        spec = struct_pb2.Struct()
        spec.update(policy.spec)
        snapshot.policies.append(
            resources_pb2.Resource(kind=policy.kind, namespace=policy.namespace, name=policy.name, spec=spec)
        )
    return snapshot


def test_a_route_to_an_undefined_subset_is_nacked_and_the_old_snapshot_kept(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
    files = issue_workload_files(ca, SpiffeId("cluster.local", "default", "client"), tmp_path)
    config = parse_config(
        {
            "service": "client",
            "listeners": {"outbound": "127.0.0.1:0"},
            "control_plane": "127.0.0.1:15010",
            "tls": {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)},
        }
    )
    sidecar = Sidecar(config, node_id="client-1", rand=random.Random(3))
    client = DiscoveryClient("127.0.0.1:15010", discovery_pb2.Hello(), sidecar.apply)

    good = client._handle(_snapshot("3-aaa", [subsets_rule(), vs({"route": [to("v2")]})]))
    assert good.WhichOneof("message") == "ack"
    kept = sidecar.snapshot
    bad = _snapshot("4-bbb", [subsets_rule(), vs({"route": [to("v3")]})])
    with pytest.raises(
        SnapshotRejected, match=r"policies\[1\]\.spec\.http\[0\]\.route\[0\]\.destination\.subset"
    ):
        from_proto(bad)
    nack = client._handle(bad)
    assert nack.WhichOneof("message") == "nack"
    assert "policies[1].spec.http[0].route[0].destination.subset" in nack.nack.reason
    assert sidecar.snapshot is kept
    outbound = kept.outbound
    assert outbound is not None
    assert outbound(CallHead("/demo.v1.Users/GetUser", "users", (), None, None)).pool.address == V2[0].address


def test_remembered_route_decisions_follow_the_values_that_decide_them() -> None:
    canary = {"match": [{"headers": {"x-canary": {"exact": "true"}}}], "route": [to("v2")]}
    pair = {"match": [{"headers": {"x-pair": {"exact": "a,b"}}}], "route": [to("v2")]}
    handler, _ = chain([subsets_rule(), vs(canary, pair, split(100, 0))])
    shapes: list[tuple[tuple[tuple[bytes, bytes, bool], ...], str]] = [
        (((b"x-canary", b"true", False),), "v2"),
        (((b"x-canary", b"false", False),), "v1"),
        (((b"x-canary", b"true", False), (b"x-other", b"1", False)), "v2"),  # other keys: no part
        ((), "v1"),
        (((b"x-pair", b"a", False), (b"x-pair", b"b", False)), "v2"),  # values joined with ','
        (((b"x-pair", b"a", False),), "v1"),
    ]
    for _ in range(3):  # the same shapes again: now from the memo
        for metadata, expected in shapes:
            address = handler(CallHead("/demo.v1.Users/GetUser", "users", metadata, None, None)).pool.address
            assert next(ep.labels["version"] for ep in V1 + V2 if ep.address == address) == expected
    # High-cardinality values never grow the memo past its bound.
    for i in range(5_000):
        metadata = ((b"x-canary", f"user-{i}".encode(), False),)
        handler(CallHead("/demo.v1.Users/GetUser", "users", metadata, None, None))
    routes = handler.inner  # type: ignore[attr-defined]
    assert isinstance(routes, Routes) and len(routes._memo) <= 4096
