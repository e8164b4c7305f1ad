"""AuthorizationPolicy on the inbound side (sidecar.authz, filters/authorization.py): every matcher,
Istio's order (DENY first, no ALLOW allows, ALLOW without a match denies), the message naming the
policy, the denial counted and never forwarded, and a policy the sidecar cannot use NACKed."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from mesh.v1 import discovery_pb2, resources_pb2

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.spiffe import SpiffeId
from sidecar.authz import NO_AUTHZ, Authz, compile_authz, peer_of
from sidecar.call import CallHead, Target
from sidecar.chain import build_inbound
from sidecar.config import Policy, parse_config
from sidecar.discovery import SnapshotRejected, from_proto
from sidecar.errors import PermissionDenied, status_for
from sidecar.filters.authorization import Authorization, AuthorizationConfig
from sidecar.grpc_wire import Code
from sidecar.h2.stream import Limits
from sidecar.pool import Pools
from sidecar.stats import Stats
from sidecar.traffic import PolicyRejected

ORDERS = "spiffe://cluster.local/ns/default/sa/orders"
WEB = "spiffe://cluster.local/ns/default/sa/web"
BILLING = "spiffe://cluster.local/ns/billing/sa/payments"
GET_USER = "/demo.v1.Users/GetUser"
DELETE_USER = "/demo.v1.Users/DeleteUser"


def policy(name: str, *rules: dict[str, Any], action: str | None = None, ns: str = "default") -> Policy:
    spec: dict[str, Any] = {"rules": list(rules)}
    if action is not None:
        spec["action"] = action
    return Policy("AuthorizationPolicy", ns, name, spec)


def source(**fields: list[str]) -> dict[str, Any]:
    return {"from": [{"source": fields}]}


def operation(**fields: list[str]) -> dict[str, Any]:
    return {"to": [{"operation": fields}]}


def when(key: str, values: list[str] | None = None, not_values: list[str] | None = None) -> dict[str, Any]:
    condition: dict[str, Any] = {"key": key}
    if values is not None:
        condition["values"] = values
    if not_values is not None:
        condition["notValues"] = not_values
    return {"when": [condition]}


def head(peer: str | None = ORDERS, path: str = GET_USER, headers: dict[str, str] | None = None) -> CallHead:
    metadata = tuple((k.encode(), v.encode(), False) for k, v in (headers or {}).items())
    return CallHead(path, "users", metadata, peer, None)


def check(policies: list[Policy], **call: Any) -> str | None:
    return compile_authz(policies).check(head(**call))


def allows(policies: list[Policy], **call: Any) -> bool:
    return check(policies, **call) is None


# ---------------------------------------------------------------------------- matchers


@pytest.mark.parametrize(
    "pattern",
    [
        ORDERS,
        "cluster.local/ns/default/sa/orders",  # Istio's form, without spiffe://
        "*",
        "cluster.local/ns/default/*",
        "spiffe://cluster.local/ns/default/*",
        "*/sa/orders",
    ],
)
def test_principals_match_exact_istio_form_any_prefix_and_suffix(pattern: str) -> None:
    rules = [policy("p", source(principals=[pattern]))]
    assert allows(rules, peer=ORDERS)
    assert not allows(rules, peer=BILLING) or pattern == "*"


def test_principals_do_not_match_a_caller_without_a_spiffe_id_even_star() -> None:
    assert not allows([policy("p", source(principals=["*"]))], peer=None)


def test_not_principals() -> None:
    rules = [policy("p", source(notPrincipals=["cluster.local/ns/default/sa/web"]))]
    assert allows(rules, peer=ORDERS)
    assert not allows(rules, peer=WEB)
    assert allows(rules, peer=None)  # no principal: not web


def test_namespaces_and_not_namespaces_come_from_the_spiffe_id() -> None:
    rules = [policy("p", source(namespaces=["default"]))]
    assert allows(rules, peer=ORDERS)
    assert not allows(rules, peer=BILLING)
    assert not allows(rules, peer=None)
    prefixed = [policy("p", source(namespaces=["bill*"]))]
    assert allows(prefixed, peer=BILLING) and not allows(prefixed, peer=ORDERS)
    negated = [policy("p", source(notNamespaces=["billing"]))]
    assert allows(negated, peer=ORDERS) and not allows(negated, peer=BILLING)


def test_fields_of_one_source_are_anded_and_sources_ored() -> None:
    anded = [policy("p", source(namespaces=["default"], notPrincipals=[WEB]))]
    assert allows(anded, peer=ORDERS)
    assert not allows(anded, peer=WEB)
    assert not allows(anded, peer=BILLING)
    ored = [
        policy("p", {"from": [{"source": {"principals": [WEB]}}, {"source": {"namespaces": ["billing"]}}]})
    ]
    assert allows(ored, peer=WEB) and allows(ored, peer=BILLING) and not allows(ored, peer=ORDERS)


@pytest.mark.parametrize(
    ("pattern", "get", "other_service"),
    [
        (GET_USER, True, False),
        ("/demo.v1.Users/*", True, False),
        ("*", True, True),
        ("*/GetUser", True, True),
        ("/demo.v1.*", True, True),
        (DELETE_USER, False, False),
    ],
)
def test_paths(pattern: str, get: bool, other_service: bool) -> None:
    rules = [policy("p", operation(paths=[pattern]))]
    assert allows(rules, path=GET_USER) is get
    assert allows(rules, path="/demo.v1.Orders/GetUser") is other_service


def test_not_paths_and_methods() -> None:
    not_delete = [policy("p", operation(notPaths=[DELETE_USER]))]
    assert allows(not_delete, path=GET_USER) and not allows(not_delete, path=DELETE_USER)
    for method in ("POST", "*"):
        assert allows([policy("p", operation(methods=[method]))])
    assert not allows([policy("p", operation(methods=["GET"]))])  # every gRPC call is a POST
    both = [policy("p", operation(paths=["/demo.v1.Users/*"], notPaths=[DELETE_USER]))]
    assert allows(both, path=GET_USER) and not allows(both, path=DELETE_USER)


def test_from_to_and_when_of_one_rule_are_anded() -> None:
    rule = {
        **source(principals=[ORDERS]),
        **operation(paths=[GET_USER]),
        **when("source.namespace", ["default"]),
    }
    rules = [policy("p", rule)]
    assert allows(rules, peer=ORDERS, path=GET_USER)
    assert not allows(rules, peer=WEB, path=GET_USER)
    assert not allows(rules, peer=ORDERS, path=DELETE_USER)


def test_when_request_headers_values_and_not_values() -> None:
    rules = [policy("p", when("request.headers[x-tenant]", ["acme", "beta-*"]))]
    assert allows(rules, headers={"x-tenant": "acme"})
    assert allows(rules, headers={"x-tenant": "beta-2"})
    assert not allows(rules, headers={"x-tenant": "other"})
    assert not allows(rules)  # absent
    negated = [policy("p", when("request.headers[x-tenant]", not_values=["evil"]))]
    assert allows(negated, headers={"x-tenant": "acme"})
    assert allows(negated)  # absent: not "evil"
    assert not allows(negated, headers={"x-tenant": "evil"})


def test_when_source_principal_and_namespace() -> None:
    by_principal = [policy("p", when("source.principal", ["cluster.local/ns/default/sa/orders"]))]
    assert allows(by_principal, peer=ORDERS) and not allows(by_principal, peer=WEB)
    not_principal = [policy("p", when("source.principal", not_values=["*/sa/web"]))]
    assert allows(not_principal, peer=ORDERS) and not allows(not_principal, peer=WEB)
    by_namespace = [policy("p", when("source.namespace", ["billing"]))]
    assert allows(by_namespace, peer=BILLING) and not allows(by_namespace, peer=ORDERS)


def test_without_a_token_claims_values_never_match_and_not_values_always_do() -> None:
    claims = [policy("p", when("request.auth.claims[groups]", ["admins"]))]
    assert not allows(claims, headers={"authorization": "Bearer x"})
    not_claims = [policy("p", when("request.auth.claims[iss]", not_values=["evil"]))]
    assert allows(not_claims)
    request_principals = [policy("p", source(requestPrincipals=["*"]))]
    assert not allows(request_principals)
    require_token = [policy("deny-no-token", source(notRequestPrincipals=["*"]), action="DENY")]
    assert check(require_token) == "RBAC: denied by AuthorizationPolicy default/deny-no-token"


def test_peer_of_reads_the_namespace_from_the_spiffe_id() -> None:
    assert peer_of(ORDERS).namespace == "default"
    assert peer_of(ORDERS).bare == "cluster.local/ns/default/sa/orders"
    assert peer_of("spiffe://cluster.local/other").namespace == ""
    assert peer_of(None).spiffe_id == ""


# ---------------------------------------------------------------------------- Istio's order


def test_a_deny_match_wins_over_an_allow_match() -> None:
    policies = [
        policy("allow-orders", source(principals=["*"])),
        policy("deny-orders", source(principals=[ORDERS]), action="DENY"),
    ]
    assert check(policies, peer=ORDERS) == "RBAC: denied by AuthorizationPolicy default/deny-orders"
    assert allows(policies, peer=WEB)


def test_deny_by_method() -> None:
    policies = [policy("no-delete", operation(paths=[DELETE_USER]), action="DENY")]
    assert check(policies, path=DELETE_USER) == "RBAC: denied by AuthorizationPolicy default/no-delete"
    assert allows(policies, path=GET_USER)  # and no ALLOW policy: allowed


def test_no_policy_or_only_deny_policies_allow_what_is_not_denied() -> None:
    assert compile_authz([]) is NO_AUTHZ
    assert NO_AUTHZ.check(head()) is None
    assert allows([policy("d", source(principals=[WEB]), action="DENY")], peer=ORDERS)


def test_allow_policies_and_none_matches_denies_naming_them() -> None:
    policies = [policy("allow-orders", source(principals=["cluster.local/ns/default/sa/orders"]))]
    assert allows(policies, peer=ORDERS)
    assert check(policies, peer=WEB) == (
        "RBAC: denied: no ALLOW policy matched (AuthorizationPolicy default/allow-orders)"
    )
    two = [*policies, policy("allow-billing", source(namespaces=["billing"]), ns="mesh-system")]
    assert allows(two, peer=BILLING)
    message = check(two, peer=WEB)
    assert (
        message is not None and "default/allow-orders" in message and "mesh-system/allow-billing" in message
    )


def test_a_policy_without_rules_matches_nothing() -> None:
    assert not allows([policy("deny-all")])  # ALLOW, rules: []
    assert not allows([Policy("AuthorizationPolicy", "default", "deny-all", {})])  # no rules field
    assert allows([policy("nothing", action="DENY")])  # DENY without rules denies nothing
    assert allows([policy("allow-all", {})])  # one empty rule matches every call


# ---------------------------------------------------------------------------- the filter


class App:
    """The inbound terminal: records the calls that reached it."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def __call__(self, call: CallHead) -> Target:
        self.seen.append(call.peer)
        raise LookupError("forwarded")  # no real pool in a unit test


def test_the_filter_denies_with_permission_denied_counts_and_never_forwards() -> None:
    app = App()
    stats = Stats()
    authz = compile_authz([policy("allow-orders", source(principals=["cluster.local/ns/default/sa/orders"]))])
    handler = Authorization(app, AuthorizationConfig(authz, stats))
    with pytest.raises(PermissionDenied) as denied:
        handler(head(peer=WEB))
    code, message = status_for(denied.value)
    assert code == Code.PERMISSION_DENIED
    assert message == "RBAC: denied: no ALLOW policy matched (AuthorizationPolicy default/allow-orders)"
    assert app.seen == []
    assert stats.counters == {"inbound.authz_denied": 1}
    with pytest.raises(LookupError):  # allowed: it reached the app
        handler(head(peer=ORDERS))
    assert app.seen == [ORDERS]
    assert stats.counters == {"inbound.authz_denied": 1}


def test_build_inbound_puts_authorization_first_only_with_policies(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
    files = issue_workload_files(ca, SpiffeId("cluster.local", "default", "users"), tmp_path)
    config = parse_config(
        {
            "service": "users",
            "listeners": {"inbound": "127.0.0.1:0"},
            "app": "127.0.0.1:50051",
            "tls": {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)},
        }
    )
    pools = Pools(Limits(), ssl.create_default_context())
    assert not isinstance(build_inbound(config, pools), Authorization)
    authz: Authz = compile_authz([policy("p", source(principals=[ORDERS]))])
    stats = Stats()
    handler = build_inbound(config, pools, authz, stats)
    assert isinstance(handler, Authorization)
    with pytest.raises(PermissionDenied):
        handler(head(peer=WEB))
    assert stats.counters["inbound.authz_denied"] == 1


# ---------------------------------------------------------------------------- refused policies


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        (
            source(principals=["cluster.*.local/ns/default/sa/orders"]),
            "rules[0].from[0].source.principals[0]",
        ),
        (source(namespaces=["**"]), "rules[0].from[0].source.namespaces[0]"),
        (source(principals=[""]), "rules[0].from[0].source.principals[0]"),
        (source(principals="orders"), "rules[0].from[0].source.principals"),  # type: ignore[arg-type]
        (operation(paths=["/demo.*.Users/*"]), "rules[0].to[0].operation.paths[0]"),
        (when("request.body", ["x"]), "rules[0].when[0].key"),
        (when("request.headers[x-id-bin]", ["x"]), "rules[0].when[0].key"),
        ({"when": [{"key": "source.namespace"}]}, "rules[0].when[0]"),
        ({"from": [{}]}, "rules[0].from[0].source"),
    ],
)
def test_a_policy_the_sidecar_cannot_use_is_refused_naming_the_field(
    rule: dict[str, Any], field: str
) -> None:
    with pytest.raises(PolicyRejected) as refused:
        compile_authz([policy("p", rule)])
    assert refused.value.path == f"policies[0].spec.{field}"


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(PolicyRejected, match=r"policies\[0\]\.spec\.action"):
        compile_authz([policy("p", action="AUDIT")])


def _snapshot(policies: list[Policy]) -> discovery_pb2.Snapshot:
    snapshot = discovery_pb2.Snapshot(version="3-abc", store_revision=3)
    for p in policies:
        spec = struct_pb2.Struct()
        spec.update(p.spec)
        snapshot.policies.append(
            resources_pb2.Resource(kind=p.kind, namespace=p.namespace, name=p.name, spec=spec)
        )
    return snapshot


def test_from_proto_compiles_the_policies_and_nacks_a_malformed_one_naming_the_field() -> None:
    good = from_proto(_snapshot([policy("allow-orders", source(principals=[ORDERS]))]))
    assert [p.ref for p in good.authz.allow] == ["default/allow-orders"]
    assert good.authz.check(head(peer=WEB)) is not None
    bad = _snapshot([policy("ok"), policy("bad", source(principals=["a*b"]))])
    with pytest.raises(
        SnapshotRejected, match=r"policies\[1\]\.spec\.rules\[0\]\.from\[0\]\.source\.principals\[0\]"
    ):
        from_proto(bad)


def test_the_filter_caches_decisions_by_everything_the_rules_read() -> None:
    app = App()
    stats = Stats()
    rule = source(principals=[ORDERS]) | when("request.headers[x-tenant]", ["acme"])
    policies = [policy("acme-orders", rule)]
    authz = compile_authz(policies)
    assert authz.header_names == {b"x-tenant"} and not authz.reads_auth
    handler = Authorization(app, AuthorizationConfig(authz, stats))
    for _ in range(2):  # the second round is answered from the cache: the same decisions
        with pytest.raises(LookupError):
            handler(head(peer=ORDERS, headers={"x-tenant": "acme", "x-request-id": "1"}))
        with pytest.raises(PermissionDenied):
            handler(head(peer=ORDERS, headers={"x-tenant": "other"}))
        with pytest.raises(PermissionDenied):
            handler(head(peer=WEB, headers={"x-tenant": "acme"}))
        with pytest.raises(PermissionDenied):
            handler(head(peer=ORDERS))  # no x-tenant
    assert stats.counters == {"inbound.authz_denied": 6}
    # Headers no rule reads do not split the cache.
    assert authz.key(head(headers={"x-tenant": "acme", "x-request-id": "1"})) == authz.key(
        head(headers={"x-tenant": "acme", "x-request-id": "2"})
    )
