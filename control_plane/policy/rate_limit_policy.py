"""RateLimitPolicy (mesh-native): token-bucket limits on the inbound calls of a workload.

```yaml
apiVersion: policy.grpc-mesh.io/v1alpha1
kind: RateLimitPolicy
spec:
  selector: {matchLabels: {app: users}}    # optional; without it, the whole namespace
  rules:                                    # every matching rule takes a token; any refusal refuses
  - name: writes                            # optional (default: the rule's index); unique
    match:                                  # optional; without it, every call
      paths: [/demo.v1.Users/CreateUser]    # gRPC methods: exact, /pkg.Service/*, * (as in authorization)
      principals: [cluster.local/ns/default/sa/web]   # callers' SPIFFE IDs, with or without spiffe://
    limit:
      tokensPerInterval: 100                # tokens added each interval (the sustained rate)
      interval: 1s
      burst: 200                            # the bucket's size (default: tokensPerInterval)
    key: RULE                               # one bucket for the rule (RULE, the default), per gRPC
                                            # METHOD, or per caller PRINCIPAL
    scope: LOCAL                            # LOCAL: per sidecar (default); GLOBAL: shared by every
                                            # sidecar of the service, in Redis
    failureMode: OPEN                       # GLOBAL only, when Redis is unreachable: OPEN enforces
                                            # the limit per sidecar (default), CLOSED refuses the calls
```

A call over a limit is refused with RESOURCE_EXHAUSTED naming the policy and the rule; with
``failureMode: CLOSED`` and Redis unreachable, with UNAVAILABLE. docs/rate-limits.md explains
the semantics.
"""

from __future__ import annotations

from typing import Any

# The method and caller patterns AuthorizationPolicy takes, so both kinds read the same way.
from control_plane.policy.authorization_policy import _method_path as method_path
from control_plane.policy.authorization_policy import _patterns as patterns
from control_plane.policy.fields import (
    INT32_MAX,
    Invalid,
    child,
    dns_label,
    duration,
    enum,
    fields,
    integer,
    item,
    list_of,
    quoted,
    selector,
)

KEYS = ("RULE", "METHOD", "PRINCIPAL")
SCOPES = ("LOCAL", "GLOBAL")
FAILURE_MODES = ("OPEN", "CLOSED")


def _match(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {
            "paths": list_of(method_path, min_items=1, empty_hint="omit the field instead"),
            "principals": patterns,
        },
        at_least_one=[("paths", "principals")],
        hints={"headers": "rules match gRPC methods (paths) and callers (principals)"},
    )


def _limit(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {
            "tokensPerInterval": integer(1, INT32_MAX),
            "interval": duration(),
            "burst": integer(1, INT32_MAX),
        },
        required=("tokensPerInterval", "interval"),
        hints={
            "maxTokens": "the bucket's size is burst",
            "tokensPerFill": "use tokensPerInterval",
            "fillInterval": "use interval",
        },
    )


def _rule(value: object, path: str) -> dict[str, Any]:
    rule = fields(
        value,
        path,
        {
            "name": dns_label,
            "match": _match,
            "limit": _limit,
            "key": enum(*KEYS),
            "scope": enum(*SCOPES),
            "failureMode": enum(*FAILURE_MODES),
        },
        required=("limit",),
    )
    if "failureMode" in rule and rule.get("scope", "LOCAL") != "GLOBAL":
        raise Invalid(
            child(path, "failureMode"),
            "only for scope GLOBAL (it says what to do while Redis is unreachable)",
        )
    return rule


def _rules(value: object, path: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = list_of(_rule, min_items=1, empty_hint="a policy needs a rule")(value, path)
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        name = rule.get("name", str(index))
        if name in seen:
            raise Invalid(
                child(item(path, index), "name"), f"duplicate rule name {quoted(name)} (also [{seen[name]}])"
            )
        seen[name] = index
    return rules


def validate_spec(value: object, path: str = "spec") -> dict[str, Any]:
    """The canonical RateLimitPolicy spec, or Invalid naming the first problem."""
    return fields(
        value,
        path,
        {"selector": selector, "rules": _rules},
        required=("rules",),
        hints={
            "targetRef": "select workloads with selector.matchLabels",
            "targetRefs": "select workloads with selector.matchLabels",
        },
    )
