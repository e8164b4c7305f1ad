"""Rate limits end to end with real processes: a control plane, a redis-server, two instances of
users behind their sidecars and a client sidecar calling them round robin.

A RateLimitPolicy selecting `app: users` has a GLOBAL rule on CreateUser (20 an hour, shared by
both instances through Redis), a GLOBAL rule on GetUser (5 an hour) and a LOCAL per-caller rule on
ListUsers (3 an hour per instance). The shared limit holds across the two instances (within one
lease batch per sidecar); calls over it are RESOURCE_EXHAUSTED naming the rule and never reach the
app. Then Redis is stopped: the sidecars keep serving, decide GetUser by their own buckets (more
calls pass than the shared limit allowed), and /stats and /metrics say Redis is unreachable and
the rule is falling back. Redis restarted → they use the shared bucket again."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from demo.v1 import users_pb2, users_pb2_grpc

from control_plane.ca import CertificateAuthority
from meshctl import procs
from tests.support.control_plane_mesh import (
    TRUST_DOMAIN,
    ControlPlaneProcess,
    RunningSidecar,
    SidecarSpec,
    check_exit_codes,
    logs_note,
    start_sidecars,
    wait_all_ready,
)
from tests.support.mesh import http_get, wait_for
from tests.support.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
POLICY = {
    "apiVersion": "policy.grpc-mesh.io/v1alpha1",
    "kind": "RateLimitPolicy",
    "metadata": {"name": "users-limits", "namespace": "default"},
    "spec": {
        "selector": {"matchLabels": {"app": "users"}},
        "rules": [
            {
                "name": "creates",
                "match": {"paths": ["/demo.v1.Users/CreateUser"]},
                "limit": {"tokensPerInterval": 20, "interval": "1h"},
                "scope": "GLOBAL",
            },
            {
                "name": "gets",
                "match": {"paths": ["/demo.v1.Users/GetUser"]},
                "limit": {"tokensPerInterval": 5, "interval": "1h"},
                "scope": "GLOBAL",
                "failureMode": "OPEN",
            },
            {
                "name": "lists",
                "match": {"paths": ["/demo.v1.Users/ListUsers"]},
                "limit": {"tokensPerInterval": 3, "interval": "1h"},
                "key": "PRINCIPAL",
            },
        ],
    },
}


def stats(sidecar: RunningSidecar) -> dict[str, Any]:
    status, body = http_get(sidecar.admin, "/stats")
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def rule_stats(sidecar: RunningSidecar, name: str) -> dict[str, Any]:
    (found,) = [r for r in stats(sidecar)["rate_limits"]["rules"] if r["rule"] == name]
    return found


def outcome(call: Any, request: Any) -> str:
    try:
        call(request, timeout=5)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            return "ok"  # the app answered
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
            return "limited:" + exc.details()  # type: ignore[attr-defined]
        raise
    return "ok"


def test_a_global_limit_shared_by_two_instances_and_the_fallback_when_redis_stops(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    root = tmp_path
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    limits = {"rate_limits": {"redis": redis_server.address, "retry_seconds": 0.2}}
    users = {"app": "users", "version": "v1"}
    specs = [
        SidecarSpec("users", users, dependencies=["users"], app_kind="users", extra_config=limits),
        SidecarSpec("users", users, dependencies=["users"], app_kind="users", extra_config=limits),
        SidecarSpec("client", dependencies=["users"]),
    ]
    with procs.ProcessGroup(grace=10.0, log_dir=root / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, root)
            control_plane.start(warmup_ms=0)
            sidecars = start_sidecars(group, root, ca, control_plane.grpc, specs, timeout=TIMEOUT)
            wait_all_ready(sidecars, TIMEOUT)
            first, second, client = sidecars

            def both_instances_known() -> bool:
                services = client.config_dump()["config"]["services"]
                return len(services.get("users", {}).get("endpoints", [])) == 2

            wait_for(both_instances_known, TIMEOUT, "the client sidecar to know both users instances")
            path = root / "policy.yaml"
            path.write_text(yaml.safe_dump(POLICY, sort_keys=False))
            control_plane.ok("apply", "-f", str(path), "--wait", "--timeout", "30s")

            options = [("grpc.default_authority", "users")]
            with grpc.insecure_channel(client.outbound, options=options) as channel:
                stub = users_pb2_grpc.UsersStub(channel)

                def list_all(request: Any, timeout: float) -> list[Any]:
                    return list(stub.ListUsers(request, timeout=timeout))

                # GLOBAL: 20 creates between the two instances, whichever serves them.
                creates = Counter(
                    outcome(stub.CreateUser, users_pb2.CreateUserRequest(name="n")) for _ in range(40)
                )
                assert 20 <= creates["ok"] <= 22, creates  # at most one lease batch (1) over per sidecar
                limited = [o for o in creates if o != "ok"]
                assert limited == [
                    "limited:rate limited by RateLimitPolicy default/users-limits, rule creates "
                    "(20 per 3600s, burst 20)"
                ]
                served = [rule_stats(s, "creates")["allowed"] for s in (first, second)]
                assert sum(served) == creates["ok"] and min(served) >= 5, served
                # Each instance keeps its own users, and round robin sends these two lists one to
                # each: together the apps hold exactly what the sidecars let through.
                listed = [list(stub.ListUsers(users_pb2.ListUsersRequest(), timeout=5)) for _ in range(2)]
                assert sum(len(replies) for replies in listed) == creates["ok"]

                # LOCAL, per caller: 3 lists per instance (two used above, one on each).
                lists = Counter(outcome(list_all, users_pb2.ListUsersRequest()) for _ in range(10))
                assert lists["ok"] == 4, lists

                # Redis goes away: GetUser's shared bucket still had tokens, so the sidecars ask
                # Redis, find it gone and decide by their own buckets (5 each): more than the
                # shared 5 pass, nothing crashes.
                redis_server.stop()
                gets = Counter(
                    outcome(stub.GetUser, users_pb2.GetUserRequest(id="nobody")) for _ in range(30)
                )
                assert 10 <= gets["ok"] <= 12, gets
                for sidecar in (first, second):
                    shown = stats(sidecar)
                    assert shown["rate_limits"]["redis"]["state"] == "unreachable"
                    assert shown["rate_limits"]["redis"]["last_error"]
                    assert rule_stats(sidecar, "gets")["mode"] == "local fallback"
                    assert shown["counters"]["inbound.ratelimit_fallback"] > 0
                    status, metrics = http_get(sidecar.admin, "/metrics")
                    assert status == 200
                    assert b"grpc_mesh_ratelimit_redis_up 0.0" in metrics
                    assert b'grpc_mesh_ratelimit_fallback_total{direction="inbound"}' in metrics

                # Redis is back: a call after retry_seconds probes it, and the rule is global again.
                redis_server.start()

                def shared_again() -> bool:
                    outcome(stub.GetUser, users_pb2.GetUserRequest(id="nobody"))
                    return all(rule_stats(s, "gets")["mode"] == "global" for s in (first, second))

                wait_for(shared_again, TIMEOUT, "both sidecars to use Redis again")
        except BaseException as exc:
            exc.add_note(logs_note(root))
            raise
        codes = group.stop_all()
        check_exit_codes(codes)
