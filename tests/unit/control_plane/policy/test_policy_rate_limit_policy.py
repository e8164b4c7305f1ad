"""RateLimitPolicy: rules with a match, a token-bucket limit, a bucket key, a scope and a failure
mode; every bad field refused naming it."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.policy import validate
from tests.support.policy_docs import DELETE, check_error, doc, edit

RULE: dict[str, Any] = {"limit": {"tokensPerInterval": 10, "interval": "1s"}}
BASE = doc("RateLimitPolicy", {"rules": [RULE]}, name="limits")


def test_the_smallest_policy_is_one_limit() -> None:
    document = validate(BASE)
    assert str(document.key) == "RateLimitPolicy default/limits"
    assert document.spec == {"rules": [RULE]}


def test_every_field() -> None:
    spec = {
        "selector": {"matchLabels": {"app": "users"}},
        "rules": [
            {
                "name": "creates",
                "match": {
                    "paths": ["/demo.v1.Users/CreateUser", "/demo.v1.Orders/*"],
                    "principals": ["cluster.local/ns/default/sa/web", "spiffe://cluster.local/ns/ops/*"],
                },
                "limit": {"tokensPerInterval": 20, "interval": "1s", "burst": 40},
                "key": "PRINCIPAL",
                "scope": "GLOBAL",
                "failureMode": "CLOSED",
            },
            {"name": "all", "limit": {"tokensPerInterval": 1000, "interval": "1m"}, "key": "METHOD"},
        ],
    }
    assert validate(doc("RateLimitPolicy", spec, name="limits", namespace="shop")).spec == spec


BAD: list[tuple[str, Any, str, str]] = [
    ("spec.rules", DELETE, "spec.rules", "=required"),
    ("spec.rules", [], "spec.rules", "must not be empty"),
    ("spec.rules[0].limit", DELETE, "spec.rules[0].limit", "=required"),
    ("spec.rules[0].limit.tokensPerInterval", DELETE, "spec.rules[0].limit.tokensPerInterval", "=required"),
    ("spec.rules[0].limit.tokensPerInterval", 0, "spec.rules[0].limit.tokensPerInterval", "at least 1"),
    ("spec.rules[0].limit.tokensPerInterval", 1.5, "spec.rules[0].limit.tokensPerInterval", "an integer"),
    ("spec.rules[0].limit.tokensPerInterval", "10", "spec.rules[0].limit.tokensPerInterval", "an integer"),
    ("spec.rules[0].limit.interval", DELETE, "spec.rules[0].limit.interval", "=required"),
    ("spec.rules[0].limit.interval", "soon", "spec.rules[0].limit.interval", "is not a duration"),
    ("spec.rules[0].limit.interval", "0s", "spec.rules[0].limit.interval", "at least 1ms"),
    ("spec.rules[0].limit.interval", 1, "spec.rules[0].limit.interval", "a duration string"),
    ("spec.rules[0].limit.burst", 0, "spec.rules[0].limit.burst", "at least 1"),
    ("spec.rules[0].limit.burst", -3, "spec.rules[0].limit.burst", "at least 1"),
    ("spec.rules[0].limit.maxTokens", 5, "spec.rules[0].limit.maxTokens", "the bucket's size is burst"),
    ("spec.rules[0].key", "IP", "spec.rules[0].key", "must be one of RULE, METHOD or PRINCIPAL"),
    ("spec.rules[0].scope", "CLUSTER", "spec.rules[0].scope", "must be one of LOCAL or GLOBAL"),
    ("spec.rules[0].failureMode", "OPEN", "spec.rules[0].failureMode", "only for scope GLOBAL"),
    ("spec.rules[0].match", {}, "spec.rules[0].match", "needs at least one of paths or principals"),
    ("spec.rules[0].match.paths", [], "spec.rules[0].match.paths", "must not be empty"),
    ("spec.rules[0].match.paths", ["Users/Get"], "spec.rules[0].match.paths[0]", "not a gRPC method path"),
    ("spec.rules[0].match.principals", ["a*b"], "spec.rules[0].match.principals[0]", "'*' may only be"),
    ("spec.rules[0].match.headers", {}, "spec.rules[0].match.headers", "field not supported"),
    ("spec.rules[0].name", "Writes!", "spec.rules[0].name", "is not a valid name"),
    ("spec.rules[0].per", "RULE", "spec.rules[0].per", "field not supported"),
    ("spec.selector", {"matchLabels": {}}, "spec.selector.matchLabels", "omit selector"),
    ("spec.targetRef", {}, "spec.targetRef", "field not supported; select workloads"),
]


@pytest.mark.parametrize(
    ("field", "value", "path", "reason"), BAD, ids=[f"{c[0]}={c[1]!r}"[:80] for c in BAD]
)
def test_invalid(field: str, value: Any, path: str, reason: str) -> None:
    check_error(edit(BASE, field, value), path, reason, label="RateLimitPolicy limits")


def test_failure_mode_with_scope_global_is_accepted() -> None:
    rule = {**RULE, "scope": "GLOBAL", "failureMode": "OPEN"}
    assert validate(edit(BASE, "spec.rules[0]", rule)).spec["rules"][0] == rule


def test_rule_names_are_unique_including_the_default_index_names() -> None:
    named = {**RULE, "name": "a"}
    check_error(
        edit(BASE, "spec.rules", [named, dict(named)]), "spec.rules[1].name", 'duplicate rule name "a"'
    )
    # An unnamed rule is named by its index: a rule named "1" clashes with the second rule.
    check_error(
        edit(BASE, "spec.rules", [{**RULE, "name": "1"}, RULE]),
        "spec.rules[1].name",
        'duplicate rule name "1"',
    )


def test_the_api_version_is_the_mesh_s_own() -> None:
    check_error(
        edit(BASE, "apiVersion", "networking.istio.io/v1"),
        "apiVersion",
        "use policy.grpc-mesh.io/v1alpha1",
    )
