"""AuthorizationPolicy: which callers may call which gRPC methods of a workload.

```yaml
spec:
  selector: {matchLabels: {app: orders}}   # optional; without it, the whole namespace
  action: ALLOW                             # ALLOW (the default) | DENY
  rules:                                    # a rule matches when all its parts match
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/users]   # '*' alone, as prefix or as suffix
        # notPrincipals, namespaces, notNamespaces, requestPrincipals, notRequestPrincipals
        # (requestPrincipals are "<issuer>/<subject>" of a validated JWT; [*]: any token)
    to:
    - operation:
        paths: [/demo.v1.Orders/GetOrder, /demo.v1.Orders/*]   # gRPC methods, or *
        # notPaths; methods: [POST] (every gRPC call is a POST)
    when:
    - key: request.headers[x-tenant]        # or request.auth.claims[...], request.auth.principal,
      values: [acme]                        # request.auth.audiences, request.auth.presenter,
                                            # source.principal, source.namespace;
                                            # values and/or notValues
```

Semantics (enforced by the sidecar): a DENY match denies; with no ALLOW policy a call is allowed;
with ALLOW policies a call matching none is denied. ``rules: []`` (or none) matches nothing.
"""

from __future__ import annotations

import re
from typing import Any

from control_plane.policy.fields import (
    Invalid,
    enum,
    fields,
    header_name,
    list_of,
    quoted,
    selector,
    string,
    wildcard,
)

ACTIONS = ("ALLOW", "DENY")

AUTH_KEYS = ("request.auth.principal", "request.auth.audiences", "request.auth.presenter")
CONDITION_KEYS = (
    "request.headers[<name>]",
    "request.auth.claims[<claim>]",
    *AUTH_KEYS,
    "source.principal",
    "source.namespace",
)

_HEADER_KEY = re.compile(r"request\.headers\[([^\[\]]*)\]")
_CLAIM_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")
_METHOD_PATH = re.compile(r"/[^/*\s]+/[^/*\s]+")


def _patterns(value: object, path: str) -> list[str]:
    result: list[str] = list_of(wildcard, min_items=1, empty_hint="omit the field instead")(value, path)
    return result


def _method_path(value: object, path: str) -> str:
    text = wildcard(value, path)
    if text.startswith("*"):  # "*" or "*/Method": any service
        return text
    if text.endswith("*") and text.startswith("/"):  # "/pkg.Service/*" or "/pkg.*"
        return text
    if _METHOD_PATH.fullmatch(text) is None:
        raise Invalid(
            path, f"{quoted(text)} is not a gRPC method path; write /pkg.Service/Method, /pkg.Service/* or *"
        )
    return text


def _http_method(value: object, path: str) -> str:
    text = string(value, path)
    if text not in ("POST", "*"):
        raise Invalid(
            path,
            f"{quoted(text)} never matches a gRPC call (every gRPC call is a POST); "
            "match gRPC methods with paths, e.g. /pkg.Service/Method",
        )
    return text


def _condition_key(value: object, path: str) -> str:
    text = string(value, path)
    if text in ("source.principal", "source.namespace", *AUTH_KEYS) or _CLAIM_KEY.fullmatch(text):
        return text
    header = _HEADER_KEY.fullmatch(text)
    if header:
        try:
            header_name(header.group(1), path)
        except Invalid as err:
            raise Invalid(path, f"in {quoted(text)}: {err.reason}") from None
        return text
    raise Invalid(path, f"{quoted(text)} is not a supported key; use one of {', '.join(CONDITION_KEYS)}")


_SOURCE_FIELDS = (
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "requestPrincipals",
    "notRequestPrincipals",
)
_IP_HINT = "the mesh authorizes by identity (principals, namespaces), not by address"


def _source(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {name: _patterns for name in _SOURCE_FIELDS},
        at_least_one=[_SOURCE_FIELDS],
        hints={
            "ipBlocks": _IP_HINT,
            "notIpBlocks": _IP_HINT,
            "remoteIpBlocks": _IP_HINT,
            "notRemoteIpBlocks": _IP_HINT,
        },
    )


def _operation(value: object, path: str) -> dict[str, Any]:
    paths = list_of(_method_path, min_items=1, empty_hint="omit the field instead")
    return fields(
        value,
        path,
        {
            "paths": paths,
            "notPaths": paths,
            "methods": list_of(_http_method, min_items=1, empty_hint="omit the field instead"),
        },
        at_least_one=[("paths", "notPaths", "methods")],
        hints={
            "hosts": "a policy applies to the workloads it selects",
            "notHosts": "a policy applies to the workloads it selects",
            "ports": "match gRPC methods with paths",
            "notPorts": "match gRPC methods with paths",
            "notMethods": "every gRPC call is a POST; use notPaths",
        },
    )


def _condition(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {"key": _condition_key, "values": _patterns, "notValues": _patterns},
        required=("key",),
        at_least_one=[("values", "notValues")],
    )


def _rule(value: object, path: str) -> dict[str, Any]:
    nonempty = "omit the field instead"
    return fields(
        value,
        path,
        {
            "from": list_of(
                lambda v, p: fields(v, p, {"source": _source}, required=("source",)),
                min_items=1,
                empty_hint=nonempty,
            ),
            "to": list_of(
                lambda v, p: fields(v, p, {"operation": _operation}, required=("operation",)),
                min_items=1,
                empty_hint=nonempty,
            ),
            "when": list_of(_condition, min_items=1, empty_hint=nonempty),
        },
    )


def validate_spec(value: object, path: str = "spec") -> dict[str, Any]:
    """The canonical AuthorizationPolicy spec, or Invalid naming the first problem."""
    return fields(
        value,
        path,
        {
            "selector": selector,
            "action": enum(
                *ACTIONS,
                hints={
                    "AUDIT": "audit policies are not supported",
                    "CUSTOM": "external authorizers are not supported",
                },
            ),
            "rules": list_of(_rule),
        },
        hints={
            "provider": "external authorizers are not supported",
            "targetRef": "select workloads with selector.matchLabels",
            "targetRefs": "select workloads with selector.matchLabels",
        },
    )
