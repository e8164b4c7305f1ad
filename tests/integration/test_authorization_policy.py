"""AuthorizationPolicy end to end with real processes: a control plane, the users app behind its
sidecar, and two client sidecars with different identities (services `orders` and `web`). A policy
in namespace default selecting `app: users` lets only `cluster.local/ns/default/sa/orders` call
`/demo.v1.Users/*`: orders' calls succeed; web's get PERMISSION_DENIED naming the policy, and the
users app never sees them (a user web tried to create does not exist, and the users sidecar counts
the denials)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import yaml
from demo.v1 import users_pb2, users_pb2_grpc

from control_plane.ca import CertificateAuthority
from meshctl import procs
from tests.support.control_plane_mesh import (
    TRUST_DOMAIN,
    ControlPlaneProcess,
    SidecarSpec,
    check_exit_codes,
    logs_note,
    start_sidecars,
    wait_all_ready,
)
from tests.support.mesh import http_get

TIMEOUT = 30.0
POLICY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "users-from-orders", "namespace": "default"},
    "spec": {
        "selector": {"matchLabels": {"app": "users"}},
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"principals": ["cluster.local/ns/default/sa/orders"]}}],
                "to": [{"operation": {"paths": ["/demo.v1.Users/*"]}}],
            }
        ],
    },
}


def test_only_the_allowed_principal_reaches_the_users_app(tmp_path: Path) -> None:
    root = tmp_path
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    specs = [
        SidecarSpec("users", {"app": "users", "version": "v1"}, dependencies=["users"], app_kind="users"),
        SidecarSpec("orders", dependencies=["users"]),
        SidecarSpec("web", dependencies=["users"]),
    ]
    with procs.ProcessGroup(grace=10.0, log_dir=root / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, root)
            control_plane.start(warmup_ms=0)
            users, orders, web = start_sidecars(group, root, ca, control_plane.grpc, specs, timeout=TIMEOUT)
            wait_all_ready([users, orders, web], TIMEOUT)
            path = root / "policy.yaml"
            path.write_text(yaml.safe_dump(POLICY, sort_keys=False))
            control_plane.ok("apply", "-f", str(path), "--wait", "--timeout", "30s")

            options = [("grpc.default_authority", "users")]
            with (
                grpc.insecure_channel(orders.outbound, options=options) as orders_channel,
                grpc.insecure_channel(web.outbound, options=options) as web_channel,
            ):
                as_orders = users_pb2_grpc.UsersStub(orders_channel)
                as_web = users_pb2_grpc.UsersStub(web_channel)

                created = as_orders.CreateUser(users_pb2.CreateUserRequest(name="Ada"), timeout=5)
                got = as_orders.GetUser(users_pb2.GetUserRequest(id=created.user.id), timeout=5)
                assert got.user.name == "Ada"

                for _ in range(3):
                    with pytest.raises(grpc.RpcError) as denied:
                        as_web.CreateUser(users_pb2.CreateUserRequest(id="from-web", name="Eve"), timeout=5)
                    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
                    assert "default/users-from-orders" in denied.value.details()  # type: ignore[attr-defined]

                # The app never saw web's calls: the user it tried to create does not exist.
                with pytest.raises(grpc.RpcError) as missing:
                    as_orders.GetUser(users_pb2.GetUserRequest(id="from-web"), timeout=5)
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]

            status, body = http_get(users.admin, "/stats")
            assert status == 200, body
            stats = json.loads(body)
            assert stats["counters"]["inbound.authz_denied"] == 3
            assert stats["calls"]["inbound"]["users"]["total"] == 3  # orders' calls only
        except BaseException as exc:
            exc.add_note(logs_note(root))
            raise
        codes = group.stop_all()
        check_exit_codes(codes)
