"""AuthorizationPolicy: ALLOW and DENY rules on principals, namespaces, gRPC methods and conditions."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.policy import validate
from tests.support.policy_docs import DELETE, check_error, doc, edit

ALLOW: dict[str, Any] = {
    "selector": {"matchLabels": {"app": "orders"}},
    "action": "ALLOW",
    "rules": [
        {
            "from": [
                {
                    "source": {
                        "principals": ["cluster.local/ns/default/sa/users", "cluster.local/ns/batch/*"],
                        "notPrincipals": ["*/sa/legacy"],
                        "namespaces": ["default", "team-*"],
                        "notNamespaces": ["sandbox"],
                        "requestPrincipals": ["https://auth.example.com/*"],
                    }
                }
            ],
            "to": [
                {
                    "operation": {
                        "paths": ["/demo.v1.Orders/GetOrder", "/demo.v1.Orders/*", "*/Check"],
                        "notPaths": ["/demo.v1.Orders/CreateOrder"],
                        "methods": ["POST"],
                    }
                }
            ],
            "when": [
                {"key": "request.headers[x-tenant]", "values": ["acme", "acme-*"]},
                {"key": "request.auth.claims[groups]", "values": ["admins"]},
                {"key": "request.auth.claims[realm_access][roles]", "notValues": ["guest"]},
                {"key": "source.principal", "values": ["*"]},
                {"key": "source.namespace", "notValues": ["kube-system"]},
            ],
        }
    ],
}

BASE = doc("AuthorizationPolicy", ALLOW, name="orders")


def test_allow_policy_is_valid() -> None:
    assert validate(BASE).spec == ALLOW


@pytest.mark.parametrize(
    "spec",
    [
        {},  # ALLOW with no rules: allows nothing
        {"rules": []},
        {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/demo.v1.Orders/CreateOrder"]}}]}]},
        {"action": "DENY", "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]},
        {"rules": [{}]},  # one empty rule: matches every call
        {"rules": [{"to": [{"operation": {"paths": ["*"]}}]}]},
        {"rules": [{"to": [{"operation": {"paths": ["/demo.*"]}}]}]},
    ],
)
def test_valid_variants(spec: dict[str, Any]) -> None:
    assert validate(doc("AuthorizationPolicy", spec)).spec == spec


SRC = "spec.rules[0].from[0].source"
OP = "spec.rules[0].to[0].operation"
WHEN = "spec.rules[0].when"

BAD: list[tuple[str, Any, str, str]] = [
    ("spec.action", "AUDIT", "spec.action", 'must be one of ALLOW or DENY, got "AUDIT"; audit policies'),
    ("spec.action", "CUSTOM", "spec.action", "external authorizers are not supported"),
    ("spec.action", "allow", "spec.action", "must be one of ALLOW or DENY"),
    ("spec.provider", {"name": "opa"}, "spec.provider", "field not supported"),
    ("spec.rules", {}, "spec.rules", "must be a list"),
    ("spec.rules[0].from", [], "spec.rules[0].from", "must not be empty"),
    ("spec.rules[0].from[0]", {}, "spec.rules[0].from[0].source", "=required"),
    ("spec.rules[0].from[0].source", {}, SRC, "needs at least one of principals, notPrincipals"),
    (f"{SRC}.principals", [], f"{SRC}.principals", "must not be empty (omit the field instead)"),
    (f"{SRC}.principals", "cluster.local/ns/default/sa/users", f"{SRC}.principals", "must be a list"),
    (
        f"{SRC}.principals[0]",
        "cluster.local/*/sa/users",
        f"{SRC}.principals[0]",
        "'*' may only be the whole value",
    ),
    (f"{SRC}.principals[0]", "**", f"{SRC}.principals[0]", "'*' may only be"),
    (f"{SRC}.principals[0]", "*a*", f"{SRC}.principals[0]", "'*' may only be"),
    (f"{SRC}.principals[0]", "", f"{SRC}.principals[0]", "must not be empty"),
    (f"{SRC}.notPrincipals[0]", "a*b", f"{SRC}.notPrincipals[0]", "'*' may only be"),
    (f"{SRC}.namespaces[0]", 3, f"{SRC}.namespaces[0]", "must be a string"),
    (f"{SRC}.notNamespaces[0]", "x*y", f"{SRC}.notNamespaces[0]", "'*' may only be"),
    (f"{SRC}.requestPrincipals[0]", "a*b*", f"{SRC}.requestPrincipals[0]", "'*' may only be"),
    (f"{SRC}.ipBlocks", ["10.0.0.0/8"], f"{SRC}.ipBlocks", "by identity"),
    (f"{SRC}.remoteIpBlocks", ["10.0.0.0/8"], f"{SRC}.remoteIpBlocks", "field not supported"),
    ("spec.rules[0].to[0]", {}, "spec.rules[0].to[0].operation", "=required"),
    ("spec.rules[0].to[0].operation", {}, OP, "needs at least one of paths, notPaths or methods"),
    (f"{OP}.paths[0]", "demo.v1.Orders/GetOrder", f"{OP}.paths[0]", "is not a gRPC method path"),
    (f"{OP}.paths[0]", "/demo.v1.Orders", f"{OP}.paths[0]", "is not a gRPC method path"),
    (f"{OP}.paths[0]", "/demo.v1.Orders/Get/Order", f"{OP}.paths[0]", "is not a gRPC method path"),
    (f"{OP}.paths[0]", "/demo.v1.*/GetOrder", f"{OP}.paths[0]", "'*' may only be"),
    (f"{OP}.paths[0]", "demo.*", f"{OP}.paths[0]", "is not a gRPC method path"),
    (f"{OP}.notPaths[0]", "GetOrder", f"{OP}.notPaths[0]", "is not a gRPC method path"),
    (f"{OP}.methods[0]", "GET", f"{OP}.methods[0]", "every gRPC call is a POST"),
    (f"{OP}.methods[0]", "GetOrder", f"{OP}.methods[0]", "match gRPC methods with paths"),
    (f"{OP}.hosts", ["orders"], f"{OP}.hosts", "field not supported"),
    (f"{OP}.ports", ["50051"], f"{OP}.ports", "field not supported"),
    (f"{OP}.notMethods", ["GET"], f"{OP}.notMethods", "field not supported"),
    (WHEN, [], WHEN, "must not be empty"),
    (f"{WHEN}[0].key", DELETE, f"{WHEN}[0].key", "=required"),
    (
        f"{WHEN}[0].key",
        "source.ip",
        f"{WHEN}[0].key",
        '"source.ip" is not a supported key; use one of request.headers',
    ),
    (f"{WHEN}[0].key", "request.headers[X-Tenant]", f"{WHEN}[0].key", "must be lower-case"),
    (f"{WHEN}[0].key", "request.headers[]", f"{WHEN}[0].key", "must not be empty"),
    (f"{WHEN}[0].key", "request.headers[x]extra", f"{WHEN}[0].key", "not a supported key"),
    (f"{WHEN}[0].key", "request.auth.claims[]", f"{WHEN}[0].key", "not a supported key"),
    (f"{WHEN}[0].key", "request.auth.claims", f"{WHEN}[0].key", "not a supported key"),
    (f"{WHEN}[0]", {"key": "source.principal"}, f"{WHEN}[0]", "needs at least one of values or notValues"),
    (f"{WHEN}[0].values", [], f"{WHEN}[0].values", "must not be empty"),
    (f"{WHEN}[0].values[0]", "a*b", f"{WHEN}[0].values[0]", "'*' may only be"),
    (
        "spec.rules[0].unless",
        [],
        "spec.rules[0].unless",
        "field not supported (supported here: from, to, when)",
    ),
    ("spec.selector.matchLabels", {}, "spec.selector.matchLabels", "must not be empty"),
]


@pytest.mark.parametrize(
    ("field", "value", "path", "reason"), BAD, ids=[f"{c[0]}={c[1]!r}"[:80] for c in BAD]
)
def test_invalid(field: str, value: Any, path: str, reason: str) -> None:
    check_error(edit(BASE, field, value), path, reason, label="AuthorizationPolicy orders")
